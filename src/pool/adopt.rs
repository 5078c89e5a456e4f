//! Adoption: what an earlier run of this instance left on the engine (taken back at start:
//! kept for its live session, scrubbed into the idle set, or removed), and the sandboxes of
//! a stopped instance whose sessions this one takes over.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;

use super::state::{Leftover, Sandbox};
use super::{ContainerPool, LeaseRef, PoolError, Verdict};

/// How long a supervisor has to answer a takeover's claim.
const SUPERVISOR_CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

impl ContainerPool {
    /// Takes in what an earlier run of this instance left. Containers of `keep_leased` hold
    /// live sessions: leased again under those leases, untouched (whatever their label: a
    /// session this instance had taken over from another keeps its sandbox too). Those in
    /// `handed`, and those whose supervisor says another instance claimed them last, are
    /// another instance's: left alone. Running ones of the current image are scrubbed and
    /// verified into the idle set; the rest are removed.
    pub(super) async fn adopt_leftovers(
        &self,
        keep_leased: &[LeaseRef],
        handed: &HashSet<String>,
    ) -> Result<(), PoolError> {
        let found = self
            .inner
            .gate
            .list_sandboxes(&self.inner.instance_id)
            .await?;
        let keep: HashMap<&str, u64> = keep_leased
            .iter()
            .map(|l| (l.container_id.as_str(), l.fence))
            .collect();
        if !found.is_empty() {
            tracing::info!(
                count = found.len(),
                "found containers of this instance from an earlier run"
            );
        }
        let mut to_scrub = Vec::new();
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        let mut labeled = HashSet::new();
        {
            let mut s = self.state();
            for info in found {
                labeled.insert(info.id.clone());
                if handed.contains(&info.id) {
                    // Another instance serves its session now.
                    s.note_handed_over(&info.id);
                    continue;
                }
                let fence = keep.get(info.id.as_str()).copied();
                let sandbox = Sandbox {
                    id: info.id.clone(),
                    name: info.name.clone(),
                    created_unix: info.created_unix,
                    uses: 0,
                    dead: !info.running,
                    foreign: false,
                    fence: fence.unwrap_or_else(|| s.mint_fence()),
                    link: None,
                };
                let reusable = info.running && info.image == self.inner.image;
                match s.take_leftover(sandbox, fence.is_some(), reusable) {
                    Leftover::Kept if info.running => kept.push(info.id),
                    Leftover::Kept => {}
                    Leftover::Scrub => to_scrub.push(info),
                    Leftover::Remove => removed.push(info.id),
                }
            }
        }
        for id in removed {
            self.spawn_destroy(id);
        }
        // Sessions' containers get their link back untouched; a supervisor that does not
        // answer makes its container dead (the session sees it lost). One that another
        // instance claimed since is that instance's.
        join_all(kept.into_iter().map(|id| async move {
            let link = match self.connect_and_ask(&id).await {
                Ok((_, pong)) if self.claimed_by_another(&pong) => {
                    tracing::warn!(container_id = %id, "a kept sandbox was claimed by another instance; leaving it alone");
                    self.state().leave_alone(&id);
                    return;
                }
                Ok((link, _)) => Some(link),
                Err(error) => {
                    tracing::warn!(container_id = %id, %error, "a kept sandbox's supervisor does not answer");
                    None
                }
            };
            self.state().reconnected(&id, link);
        }))
        .await;
        // Sessions this instance had taken over from others: their sandboxes carry another
        // label, and are adopted as they were at the takeover.
        for lease in keep_leased
            .iter()
            .filter(|l| !labeled.contains(&l.container_id))
        {
            if let Err(error) = self.adopt(&lease.container_id, lease.fence, false).await {
                tracing::warn!(%lease, %error, "a taken-over sandbox of a live session is gone");
            }
        }
        let results = join_all(to_scrub.into_iter().map(|info| async move {
            let fence = self.state().mint_fence();
            let mut sandbox = Sandbox {
                id: info.id,
                name: info.name,
                created_unix: info.created_unix,
                uses: 0,
                dead: false,
                foreign: false,
                fence,
                link: None,
            };
            let verdict = match self.connect_and_ask(&sandbox.id).await {
                Ok((_, pong)) if self.claimed_by_another(&pong) => {
                    return (sandbox, None);
                }
                Ok((link, _)) => {
                    sandbox.link = Some(link);
                    self.scrub(&sandbox).await
                }
                Err(e) => Err(e),
            };
            (sandbox, Some(verdict))
        }))
        .await;
        let mut adopted = 0;
        for (sandbox, verdict) in results {
            let Some(verdict) = verdict else {
                // Labeled with this instance, but its supervisor serves another holder now
                // (a takeover the store forgot): not this pool's to scrub or remove.
                tracing::warn!(container_id = %sandbox.id, "a left-over sandbox was claimed by another instance; leaving it alone");
                self.state().leave_alone(&sandbox.id);
                continue;
            };
            let clean = matches!(verdict, Ok(Verdict::Clean));
            let reason = (!clean).then(|| format!("{verdict:?}"));
            let id = sandbox.id.clone();
            match self.state().end_recycle(sandbox, reason) {
                None => adopted += 1,
                Some(why) => {
                    tracing::info!(container_id = %id, why, "left-over container not adopted (not clean, or the idle set is full), removing it");
                    self.spawn_destroy(id);
                }
            }
        }
        tracing::info!(adopted, "reconciled containers from an earlier run");
        Ok(())
    }

    /// Takes a running sandbox of another instance into this pool as leased, for a session
    /// taken over from it, under `fence` (minted by [`ContainerPool::mint_fence`] after the
    /// store's new epoch, and written to the session record): the sandbox's supervisor is
    /// claimed under it at once, so the previous holder is fenced out before this one's first
    /// command. Its release destroys it.
    pub async fn take_over(&self, container_id: &str, fence: u64) -> Result<LeaseRef, PoolError> {
        self.adopt(container_id, fence, true).await
    }

    /// A fresh fencing token for a takeover (call [`ContainerPool::advance_epoch`] with a new
    /// epoch from the store first, so that it is larger than the previous holder's).
    pub fn mint_fence(&self) -> u64 {
        self.state().mint_fence()
    }

    async fn adopt(
        &self,
        container_id: &str,
        fence: u64,
        claim: bool,
    ) -> Result<LeaseRef, PoolError> {
        let lease = LeaseRef {
            container_id: container_id.to_string(),
            fence,
        };
        let held = self.state().lease_of(container_id);
        if let Some(held) = held {
            // Already held here (a retried resume): under the newest of the two leases.
            if held.fence >= fence {
                return Ok(held);
            }
            let link = self.state().refence(container_id, fence);
            if let Some(link) = link {
                if claim {
                    link.claim(fence, SUPERVISOR_CLAIM_TIMEOUT).await?;
                }
                return Ok(lease);
            }
        }
        let info = self
            .inner
            .gate
            .inspect_sandbox(container_id)
            .await?
            .filter(|i| i.running && i.is_sandbox)
            .ok_or_else(|| PoolError::NotLeased(container_id.to_string()))?;
        let link = self.connect(&info.id).await?;
        if claim {
            link.claim(fence, SUPERVISOR_CLAIM_TIMEOUT).await?;
        }
        self.state().adopt_leased(Sandbox {
            name: info.name,
            id: info.id,
            created_unix: info.created_unix,
            uses: 1,
            dead: false,
            foreign: true,
            fence,
            link: Some(link),
        })?;
        Ok(lease)
    }

    /// Removes a sandbox that belongs to no pool any more (its instance stopped), after
    /// checking that it is a sandpool sandbox.
    pub async fn remove_foreign(&self, container_id: &str) {
        if self.state().knows(container_id) {
            return;
        }
        match self.inner.gate.inspect_sandbox(container_id).await {
            Ok(Some(info)) if info.is_sandbox => {
                if let Err(error) = self.inner.gate.remove_container(container_id).await {
                    tracing::warn!(%container_id, %error, "removing a stopped instance's sandbox failed");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%container_id, %error, "inspecting a stopped instance's sandbox failed")
            }
        }
    }

    /// The last replica out of a deployment (no live peer left to serve anything) removes the
    /// sandboxes it handed over, whatever their label: their sessions were ended (or lost
    /// with the store's data), and no pool holds them, so nobody else ever would. The pool's
    /// own shutdown then removes the rest of this instance's containers.
    pub async fn remove_handed_over(&self) {
        let handed = self.state().take_handed_over();
        if !handed.is_empty() {
            tracing::info!(
                count = handed.len(),
                "last replica out: removing the sandboxes it had handed over"
            );
        }
        join_all(handed.iter().map(|id| self.remove_foreign(id))).await;
    }

    /// Removes the sandbox of a session that ended here, which the store names as that
    /// session's under its lease, but which this pool does not hold: a hand-over or takeover
    /// that did not complete (the previous holder let the sandbox go, then the new one could
    /// not take it in: full, refused by the sandbox's supervisor, or stopped first). Nobody
    /// holds it, and every instance leaves it alone (handed over, or recorded as someone's),
    /// so it is removed here or never. A mark that this pool handed it over is dropped (that
    /// hand-over is over); nothing happens if this pool holds the container in any other way.
    pub async fn remove_stranded(&self, container_id: &str) {
        if !self.state().unhand(container_id) {
            return;
        }
        match self.inner.gate.inspect_sandbox(container_id).await {
            Ok(Some(info)) if info.is_sandbox => {
                tracing::info!(%container_id, "removing an ended session's sandbox that no pool holds");
                if let Err(error) = self.inner.gate.remove_container(container_id).await {
                    tracing::warn!(%container_id, %error, "removing a stranded sandbox failed");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%container_id, %error, "inspecting a stranded sandbox failed")
            }
        }
    }

    /// Whether another instance is down, as far as Docker can tell: `Some(true)` when it is
    /// a replica container on this engine that no longer runs (killed, crashed), `Some(false)`
    /// when it runs, `None` when Docker cannot tell (see `DockerGate::replica_running`).
    pub async fn instance_down(&self, instance: &str) -> Option<bool> {
        match self.inner.gate.replica_running(instance).await {
            Ok(running) => running.map(|r| !r),
            Err(error) => {
                tracing::debug!(instance, %error, "cannot ask docker whether an instance runs");
                None
            }
        }
    }

    /// Sandboxes on the engine labeled with instances other than this one: `(id, instance,
    /// created, seconds since the epoch)`, for the sweep of dead replicas' left-overs.
    pub async fn others_sandboxes(&self) -> Result<Vec<(String, String, i64)>, PoolError> {
        Ok(self
            .inner
            .gate
            .list_all_sandboxes()
            .await?
            .into_iter()
            .filter(|c| c.instance != self.inner.instance_id && !c.instance.is_empty())
            .map(|c| (c.id, c.instance, c.created_unix))
            .collect())
    }
}
