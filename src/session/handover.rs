//! Sessions changing hands between live replicas, and the takeover of a dead one's.
//!
//! A resume can reach any replica (nginx spreads connections). When it reaches one that does
//! not own the session:
//! - the owner is alive (its heartbeat is there): the resuming replica sends it `Release`
//!   over the store's bus; the owner tells its socket (`session:expired`, reason `moved`),
//!   gives the sandbox up without a scrub (`pool.hand_over`: its supervisor link is closed
//!   before anyone else attaches), records the container as handed over (so a restart of the
//!   owner leaves it alone), moves the record to the resuming replica, and answers
//!   `Released`. The resuming replica then attaches to the sandbox.
//! - nobody listens on the owner's channel, or it does not answer in time: if Docker says the
//!   owner's container is down (a replica killed), the session is taken over at once;
//!   otherwise the resume is refused as held elsewhere (retry), and the heartbeat decides.
//! - the owner's heartbeat has lapsed: taken over (as before).
//!
//! And the idle sandboxes of a replica that died and did not come back (nobody would remove
//! them otherwise): every janitor pass, sandboxes labeled with an instance whose heartbeat is
//! gone, older than twice the heartbeat TTL, and neither held by one of its sessions nor
//! handed over by it, are removed. Sessions' sandboxes go with their sessions (resumed or
//! expired by the janitors).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::error::EndReason;
use super::manager::{Moves, SessionManager};
use super::model::{Session, now_ms};
use super::store::{BusMessage, StoreError};

/// How long a resuming replica waits for the owner to release a session.
pub(super) const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// What asking an owner to release a session gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// The owner gave it up: the record is this instance's now.
    Released,
    /// The owner does not hold it (any more) or could not move it.
    Refused,
    /// Nobody listens on the owner's channel, or no answer came in time.
    Silent,
}

impl SessionManager {
    /// Asks the live owner of `s` to release it to this instance under lease `fence`. The
    /// ask has an id of its own (never reused), and only the answer naming it counts: a late
    /// answer to an earlier ask is dropped (a retried resume finds the record naming this
    /// instance and adopts the sandbox then).
    pub(super) async fn ask_release(&self, s: &Session, fence: u64) -> Result<Asked, StoreError> {
        let (tx, rx) = oneshot::channel();
        let request = uuid::Uuid::new_v4().to_string();
        self.pending_releases().insert(request.clone(), tx);
        let sent = self
            .store()
            .send(
                &s.owner,
                &BusMessage::Release {
                    request: request.clone(),
                    session_id: s.id.clone(),
                    from: self.instance().to_string(),
                    fence,
                },
            )
            .await;
        let asked = match sent {
            Ok(true) => match tokio::time::timeout(RELEASE_TIMEOUT, rx).await {
                Ok(Ok(true)) => Asked::Released,
                Ok(Ok(false)) => Asked::Refused,
                _ => Asked::Silent,
            },
            Ok(false) => Asked::Silent,
            Err(e) => {
                self.pending_releases().remove(&request);
                return Err(e);
            }
        };
        self.pending_releases().remove(&request);
        Ok(asked)
    }

    /// Serves the bus: releases asked of this instance, and answers to its own asks.
    pub(super) async fn bus_loop(&self, mut rx: mpsc::Receiver<BusMessage>) {
        loop {
            let message = tokio::select! {
                _ = self.cancelled() => return,
                message = rx.recv() => message,
            };
            let Some(message) = message else {
                tracing::warn!(
                    "the hand-over bus closed; other replicas will see this one as silent"
                );
                return;
            };
            match message {
                BusMessage::Release {
                    request,
                    session_id,
                    from,
                    fence,
                } => {
                    let released = self.release_to(&session_id, &from, fence).await;
                    let answer = BusMessage::Released {
                        request,
                        session_id,
                        released,
                    };
                    if let Err(error) = self.store().send(&from, &answer).await {
                        tracing::warn!(%error, to = %from, "answering a release failed");
                    }
                }
                BusMessage::Released {
                    request, released, ..
                } => {
                    if let Some(tx) = self.pending_releases().remove(&request) {
                        let _ = tx.send(released);
                    }
                }
            }
        }
    }

    /// Gives the local session `session_id` to instance `to`: its socket is told, the
    /// sandbox is handed over untouched, and the record moves. `false` when this instance does
    /// not hold it.
    ///
    /// The record moves first (with the new lease `fence`, the handed-set entry and the
    /// sandbox's owner, in one atomic write): if it cannot move, this instance keeps the
    /// session and its sandbox as they were, and nothing is in limbo. Only then is the
    /// sandbox given up here: its link closed, so that this instance never speaks to the
    /// supervisor again (and the new holder's claim fences it out anyway).
    async fn release_to(&self, session_id: &str, to: &str, fence: u64) -> bool {
        let Some(s) = self.local_session(session_id) else {
            return false;
        };
        match self
            .store()
            .transfer(session_id, self.instance(), to, fence)
            .await
        {
            Ok(true) => {}
            Ok(false) => return false,
            Err(error) => {
                tracing::warn!(session_id, %error, "moving a released session's record failed; keeping it");
                return false;
            }
        }
        self.take_local(session_id);
        self.tell_ended(&s, EndReason::Moved);
        self.pool().hand_over(&s.lease());
        Moves::count(&self.inner.moves.handed_out);
        tracing::info!(session_id, to, "session released to another replica");
        true
    }

    /// Removes the left-over sandboxes of replicas that are gone (see the module doc).
    pub(super) async fn sweep_dead_instances(&self) {
        let others = match self.pool().others_sandboxes().await {
            Ok(others) => others,
            Err(error) => {
                tracing::debug!(%error, "listing other instances' sandboxes failed");
                return;
            }
        };
        let min_age_secs = 2 * self.settings().heartbeat_ttl.as_secs() as i64;
        let now_secs = now_ms() / 1000;
        // Only the replicas of this deployment (this store): other deployments and test runs
        // may share the engine.
        let Ok(known) = self.store().known_instances().await else {
            return;
        };
        let known: HashSet<String> = known.into_iter().collect();
        let mut by_instance: HashMap<String, Vec<String>> = HashMap::new();
        for (id, instance, created) in others {
            if known.contains(&instance) && now_secs - created >= min_age_secs {
                by_instance.entry(instance).or_default().push(id);
            }
        }
        for (instance, containers) in by_instance {
            match self.store().is_alive(&instance).await {
                Ok(false) => {}
                _ => continue,
            }
            if self.pool().instance_down(&instance).await == Some(false) {
                continue; // its container runs: it is starting again
            }
            let Ok(held) = self.containers_held_by(&instance).await else {
                continue;
            };
            for id in containers.into_iter().filter(|id| !held.contains(id)) {
                // A sandbox the store says someone serves (taken over with its session) is
                // that holder's, whatever its label.
                if !matches!(self.store().sandbox_owner(&id).await, Ok(None)) {
                    continue;
                }
                tracing::info!(container_id = %id, %instance, "removing a sandbox a gone replica left");
                self.pool().remove_foreign(&id).await;
            }
        }
    }

    /// Containers still in use by `instance`'s sessions or handed over by it.
    async fn containers_held_by(&self, instance: &str) -> Result<HashSet<String>, StoreError> {
        let mut held: HashSet<String> = self.store().handed(instance).await?.into_iter().collect();
        for id in self.store().owned_by(instance).await? {
            if let Some(s) = self.store().get(&id).await? {
                held.insert(s.container_id);
            }
        }
        Ok(held)
    }
}
