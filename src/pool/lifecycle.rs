//! The pool's end: close (stop handing out), abandon (leave every container for the next run
//! with this instance id, as a crash would), and shutdown (remove every container of this
//! instance within one deadline).

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::{Instant, sleep, timeout_at};

use super::ContainerPool;

/// Pause between rounds of removals that Docker refused at shutdown.
const SHUTDOWN_RETRY_PAUSE: Duration = Duration::from_millis(250);

impl ContainerPool {
    /// Stops handing out and stops the background tasks, at once and without waiting.
    /// Creates and recycles in flight destroy their containers when they finish. `shutdown`
    /// and `abandon` begin with this; on its own it serves code that cannot await (a drop
    /// guard).
    pub fn close(&self) {
        self.state().close();
        self.inner.cancel.cancel();
        self.inner.tasks.close();
    }

    /// Stops the pool's background tasks and forgets its containers without removing them:
    /// they stay on the engine, labeled with this instance, for the next pool started with the
    /// same instance id to adopt or remove. This is what a crash leaves behind, done on
    /// purpose (a hand-over to a new process; the crash tests).
    pub async fn abandon(&self) {
        self.close();
        self.inner.tasks.wait().await;
        self.state().forget_all();
    }

    /// Stops the pool: no more leases, background tasks stopped, and every container of this
    /// instance removed, within `within` (one deadline for every stage). Returns how many
    /// containers were removed.
    pub async fn shutdown(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        self.close();
        let known = self.state().held_ids();
        // Recycles and creates in flight see `closed` and destroy their containers.
        let _ = timeout_at(deadline, self.inner.tasks.wait()).await;
        let mut ids: HashSet<String> = known.into_iter().collect();
        match timeout_at(
            deadline,
            self.inner
                .gate
                .list_sandboxes_at_shutdown(&self.inner.instance_id),
        )
        .await
        {
            Ok(Ok(listed)) => ids.extend(listed.into_iter().map(|c| c.id)),
            _ => tracing::warn!("shutdown: could not list containers, removing the known ones"),
        }
        // Another instance's sessions live in these now.
        {
            let s = self.state();
            ids.retain(|id| !s.is_handed_over(id));
        }
        // Remove them all; a removal refused by the breaker or a transient error is tried
        // again until the deadline.
        let gate = &self.inner.gate;
        let mut left: Vec<String> = ids.into_iter().collect();
        let total = left.len();
        while !left.is_empty() {
            let results = join_all(left.iter().map(|id| async move {
                (
                    id.clone(),
                    gate.remove_container_at_shutdown(id).await.is_ok(),
                )
            }));
            let Ok(results) = timeout_at(deadline, results).await else {
                break;
            };
            left = results
                .into_iter()
                .filter_map(|(id, ok)| if ok { None } else { Some(id) })
                .collect();
            if left.is_empty() || Instant::now() + SHUTDOWN_RETRY_PAUSE >= deadline {
                break;
            }
            sleep(SHUTDOWN_RETRY_PAUSE).await;
        }
        let removed = total - left.len();
        if !left.is_empty() {
            tracing::warn!(
                left = left.len(),
                "shutdown: some containers could not be removed; the next start with this instance id removes them"
            );
        }
        self.state().forget_all();
        tracing::info!(removed, "pool shut down");
        removed
    }
}
