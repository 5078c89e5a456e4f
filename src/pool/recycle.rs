//! Recycling: a released sandbox has its commands stopped, is scrubbed and verified through
//! its supervisor, and goes to the first queued caller or the idle set; or it is destroyed
//! (dead, dirty, too old, too many uses, pool closed) and the refill replaces it.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, timeout, timeout_at};

use super::state::Sandbox;
use super::{ContainerPool, PoolError, RecycleOutcome, SupervisorError, Verdict, now_unix, scrub};

impl ContainerPool {
    pub(super) async fn recycle(&self, sandbox: Sandbox) -> RecycleOutcome {
        let started = Instant::now();
        let id = sandbox.id.clone();
        let c = &self.inner.config;
        let age = now_unix() - sandbox.created_unix;
        let reason = if sandbox.dead {
            Some("container died".to_string())
        } else if self.state().is_closed() {
            // No scrub for a pool that is going away.
            Some("pool closed".to_string())
        } else if sandbox.foreign {
            Some("adopted from another instance".to_string())
        } else if sandbox.uses as usize >= c.max_uses {
            Some(format!("served its maximum of {} leases", c.max_uses))
        } else if age >= c.max_age.as_secs() as i64 {
            Some(format!("older than {} s", c.max_age.as_secs()))
        } else if !self.stop_commands(&sandbox).await {
            Some("commands still running at release".to_string())
        } else {
            match self.scrub(&sandbox).await {
                Ok(Verdict::Clean) => None,
                Ok(Verdict::Dirty(found)) => Some(format!("dirty after scrub: {found}")),
                Err(error) => Some(format!("scrub failed: {error}")),
            }
        };
        // Clean: to the first queued caller, else the idle set (within its cap).
        let destroyed = self.state().end_recycle(sandbox, reason);
        let outcome = match destroyed {
            None => {
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox recycled"
                );
                RecycleOutcome::Recycled
            }
            Some(reason) => {
                tracing::info!(%reason, "sandbox destroyed instead of recycled");
                // Its id is in `destroying`, so it still counts towards the maximum.
                self.destroy(id).await;
                RecycleOutcome::Destroyed(reason)
            }
        };
        self.inner.observer.recycled(started.elapsed(), &outcome);
        outcome
    }

    /// Scrubs a sandbox through its supervisor: every tenant process killed, every writable
    /// path emptied and restored, then a separate verification pass. No Docker call.
    pub(super) async fn scrub(&self, sandbox: &Sandbox) -> Result<Verdict, PoolError> {
        let link = sandbox
            .link
            .as_ref()
            .ok_or_else(|| SupervisorError::Lost("never connected".into()))?;
        let verdict = scrub::scrub(link, sandbox.fence, self.inner.config.scrub_timeout).await?;
        if verdict != Verdict::Clean {
            // A container that is not clean is never trusted again, its supervisor included.
            link.mark_dead("dirty after scrub");
        }
        Ok(verdict)
    }

    /// Kills the commands still running in a released container and waits until their calls
    /// have ended, so that nothing started for the session runs after its scrub.
    async fn stop_commands(&self, sandbox: &Sandbox) -> bool {
        if let Some(link) = &sandbox.link {
            link.kill_commands(sandbox.fence);
        }
        let deadline = Instant::now() + self.inner.config.scrub_timeout;
        loop {
            let notified = self.inner.call_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().calls(&sandbox.id) == 0 {
                return true;
            }
            if timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

/// Waits for a recycle outcome with a bound, for callers that want to know.
pub async fn wait_recycled(
    rx: oneshot::Receiver<RecycleOutcome>,
    within: Duration,
) -> Option<RecycleOutcome> {
    timeout(within, rx).await.ok().and_then(|r| r.ok())
}
