//! Adoption: what an earlier run of this instance left on the engine (taken back at start:
//! kept for its live session, scrubbed into the idle set, or removed), and the sandboxes of
//! a stopped instance whose sessions this one takes over.

use std::collections::HashSet;

use futures_util::future::join_all;

use super::state::{Leftover, Sandbox};
use super::{ContainerPool, PoolError, Verdict};

impl ContainerPool {
    /// Takes in what an earlier run of this instance left. Containers in `keep_leased` hold
    /// live sessions: leased again, untouched. Running ones of the current image are scrubbed
    /// and verified into the idle set; the rest are removed.
    pub(super) async fn adopt_leftovers(
        &self,
        keep_leased: &HashSet<String>,
        handed: &HashSet<String>,
    ) -> Result<(), PoolError> {
        let found = self
            .inner
            .gate
            .list_sandboxes(&self.inner.instance_id)
            .await?;
        if found.is_empty() {
            return Ok(());
        }
        tracing::info!(
            count = found.len(),
            "found containers of this instance from an earlier run"
        );
        let mut to_scrub = Vec::new();
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        {
            let mut s = self.state();
            for info in found {
                if handed.contains(&info.id) {
                    // Another instance serves its session now.
                    s.note_handed_over(&info.id);
                    continue;
                }
                let sandbox = Sandbox {
                    id: info.id.clone(),
                    name: info.name.clone(),
                    created_unix: info.created_unix,
                    uses: 0,
                    dead: !info.running,
                    foreign: false,
                    link: None,
                };
                let keep = keep_leased.contains(&info.id);
                let reusable = info.running && info.image == self.inner.image;
                match s.take_leftover(sandbox, keep, reusable) {
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
        // answer makes its container dead (the session sees it lost).
        join_all(kept.into_iter().map(|id| async move {
            let link = match self.connect(&id).await {
                Ok(link) => Some(link),
                Err(error) => {
                    tracing::warn!(container_id = %id, %error, "a kept sandbox's supervisor does not answer");
                    None
                }
            };
            self.state().reconnected(&id, link);
        }))
        .await;
        let results = join_all(to_scrub.into_iter().map(|info| async move {
            let mut sandbox = Sandbox {
                id: info.id,
                name: info.name,
                created_unix: info.created_unix,
                uses: 0,
                dead: false,
                foreign: false,
                link: None,
            };
            let verdict = match self.connect(&sandbox.id).await {
                Ok(link) => {
                    sandbox.link = Some(link);
                    self.scrub(&sandbox).await
                }
                Err(e) => Err(e),
            };
            (sandbox, verdict)
        }))
        .await;
        let mut adopted = 0;
        for (sandbox, verdict) in results {
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

    /// Takes a running sandbox of another (stopped) instance into this pool as leased, for a
    /// session taken over from it. Its release destroys it.
    pub async fn adopt_leased(&self, container_id: &str) -> Result<(), PoolError> {
        if self.is_leased(container_id) {
            return Ok(());
        }
        let info = self
            .inner
            .gate
            .inspect_sandbox(container_id)
            .await?
            .filter(|i| i.running && i.is_sandbox)
            .ok_or_else(|| PoolError::NotLeased(container_id.to_string()))?;
        let link = self.connect(&info.id).await?;
        self.state().adopt_leased(Sandbox {
            name: info.name,
            id: info.id,
            created_unix: info.created_unix,
            uses: 1,
            dead: false,
            foreign: true,
            link: Some(link),
        })
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
