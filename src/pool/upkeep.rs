//! Upkeep: creating sandboxes (for a caller or for the idle set), the refill that keeps the
//! idle set at its target, removals, and keeping the pool in line with Docker (its event
//! stream, and a periodic reconcile against its list).

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::time::{Instant, sleep};

use super::state::{Gone, Sandbox};
use super::supervisor::SupervisorLink;
use super::{ContainerPool, Inner, PoolError, now_unix};
use crate::docker::SandboxSpec;
use sandpool_supervisor::proto::Pong;

/// How long a fresh (or adopted) supervisor has to answer its first ping.
const SUPERVISOR_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause of the refill after a failed create (the breaker does the rest).
const CREATE_FAILED_PAUSE: Duration = Duration::from_millis(500);
/// Pause before the event stream is opened again after it failed.
const EVENTS_RECONNECT_PAUSE: Duration = Duration::from_secs(1);

impl ContainerPool {
    /// A fresh container name of this instance.
    pub(super) fn new_name(&self) -> String {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("sandpool-{}-{}", self.inner.instance_id, &suffix[..12])
    }

    /// Attaches to a running container's supervisor and waits for its first answer. A link
    /// that dies later marks the container gone (destroyed, never handed out again).
    pub(super) async fn connect(&self, id: &str) -> Result<Arc<SupervisorLink>, PoolError> {
        Ok(self.connect_and_ask(id).await?.0)
    }

    /// `connect`, with the supervisor's first answer: the generation it serves and who
    /// holds it.
    pub(super) async fn connect_and_ask(
        &self,
        id: &str,
    ) -> Result<(Arc<SupervisorLink>, Pong), PoolError> {
        let attached = self.inner.gate.attach(id).await?;
        let pool: Weak<Inner> = Arc::downgrade(&self.inner);
        let link =
            SupervisorLink::start(id, attached, self.inner.holder, move |container_id, why| {
                if let Some(inner) = pool.upgrade() {
                    ContainerPool { inner }.container_gone(container_id, why);
                }
            });
        let pong = link.ping(SUPERVISOR_READY_TIMEOUT).await?;
        Ok((link, pong))
    }

    /// Whether a supervisor's answer says another instance claimed the sandbox last.
    pub(super) fn claimed_by_another(&self, pong: &Pong) -> bool {
        pong.generation != 0 && pong.holder != self.inner.holder
    }

    /// Creates and starts one container named `name`, which the state counts as creating
    /// (known by name before Docker hears of it, so that reconcile never takes it for a
    /// stray). On failure the container is removed (or left to reconcile) and the caller
    /// frees the name.
    pub(super) async fn create_one(&self, name: &str) -> Result<Sandbox, PoolError> {
        let started = Instant::now();
        let c = &self.inner.config;
        let spec = SandboxSpec {
            name: name.to_string(),
            image: self.inner.image.clone(),
            instance_id: self.inner.instance_id.clone(),
            memory_bytes: c.memory_bytes as i64,
            nano_cpus: (c.cpus * 1e9) as i64,
            pids_limit: c.pids_limit as i64,
            tmpfs_bytes: c.tmpfs_bytes as u64,
            network: c.network.clone(),
            runtime: (!c.runtime.is_empty()).then(|| c.runtime.clone()),
        };
        let result = async {
            let id = self.inner.gate.create_sandbox(&spec).await?;
            let link = match self.inner.gate.start_container(&id).await {
                Ok(()) => self.connect(&id).await,
                Err(e) => Err(PoolError::Docker(e)),
            };
            let link = match link {
                Ok(link) => link,
                Err(e) => {
                    if let Err(error) = self.inner.gate.remove_container(&id).await {
                        tracing::warn!(container_id = %id, %error, "removing a container that failed to start failed; the reconcile loop will retry");
                    }
                    return Err(e);
                }
            };
            Ok(Sandbox {
                id,
                name: name.to_string(),
                created_unix: now_unix(),
                uses: 0,
                dead: false,
                foreign: false,
                fence: 0,
                link: Some(link),
            })
        }
        .await;
        self.inner
            .observer
            .created(started.elapsed(), result.is_ok());
        match &result {
            Ok(_) => self.state().create_took(started.elapsed()),
            Err(error) => tracing::warn!(%error, "creating a sandbox failed"),
        }
        result
    }

    /// Keeps the idle set at its target (within `max`), creating up to `create_parallelism`
    /// at once. Sleeps until something changes: a lease, a removal, a hand-over (all wake
    /// `refill`), or the end of an open breaker's cooldown.
    pub(super) async fn refill_loop(&self) {
        let c = self.inner.config.clone();
        let mut warm_logged = false;
        loop {
            let breaker_until = self.inner.gate.breaker_open_until();
            let want = if breaker_until.is_some() {
                0
            } else {
                self.state().refill_wanted(c.create_parallelism)
            };
            if want > 0 {
                let names = (0..want).map(|_| self.new_name()).collect();
                let names = self.state().start_creates(names);
                let results = join_all(names.iter().map(|name| self.create_one(name))).await;
                let mut failed = false;
                let mut surplus = Vec::new();
                let idle_now = {
                    let mut s = self.state();
                    for (name, result) in names.iter().zip(results) {
                        match result {
                            // Recycles may have filled the idle set while this was created.
                            Ok(sandbox) => surplus.extend(s.created_for_idle(sandbox)),
                            Err(_) => {
                                s.create_failed(name);
                                failed = true;
                            }
                        }
                    }
                    s.idle_len()
                };
                for id in surplus {
                    self.spawn_destroy(id);
                }
                if !warm_logged {
                    tracing::info!(
                        idle = idle_now,
                        target = c.min_idle,
                        "pre-warming sandboxes"
                    );
                    if idle_now >= c.min_idle {
                        tracing::info!(idle = idle_now, "pool warm");
                        warm_logged = true;
                    }
                }
                if failed {
                    tokio::select! {
                        _ = self.inner.cancel.cancelled() => return,
                        _ = sleep(CREATE_FAILED_PAUSE) => {}
                    }
                }
                continue;
            }
            if self.state().is_closed() {
                return;
            }
            let cooldown = async {
                match breaker_until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = self.inner.refill.notified() => {}
                _ = cooldown => {}
            }
        }
    }

    /// Removes a container and frees its place. The caller has put its id in `destroying`
    /// (or the strays), where it stays while removal is retried with backoff; a container
    /// Docker will not remove for long is left to the reconcile loop, which removes
    /// containers of this instance that the pool does not know.
    pub(super) async fn destroy(&self, id: String) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(7);
        let removed = (|| self.inner.gate.remove_container(&id))
            .retry(backoff)
            .sleep(sleep)
            .when(|_| !self.inner.cancel.is_cancelled())
            .await;
        if let Err(error) = removed {
            tracing::warn!(container_id = %id, %error, "removing a sandbox failed; the reconcile loop will retry");
        }
        self.state().destroyed(&id);
        self.inner.refill.notify_one();
    }

    pub(super) fn spawn_destroy(&self, id: String) {
        let pool = self.clone();
        self.inner
            .tasks
            .spawn(async move { pool.destroy(id).await });
    }

    /// A container died or vanished: drop it from the idle set (and replace it), or mark its
    /// lease lost and tell its holder.
    pub(super) fn container_gone(&self, id: &str, why: &str) {
        let gone = self.state().gone(id);
        match gone {
            Gone::Idle => {
                tracing::warn!(container_id = %id, why, "idle sandbox died, replacing it");
                self.spawn_destroy(id.to_string());
            }
            Gone::Leased => {
                // Its holder hears of it through `watch_lost`.
                tracing::warn!(container_id = %id, why, "leased sandbox died");
            }
            Gone::Nothing => {}
        }
    }

    /// Follows Docker's event stream for this instance's containers, so that a container
    /// killed from outside is noticed at once. Reconnects when the stream ends.
    pub(super) async fn watch_events(&self) {
        loop {
            let mut events = Box::pin(self.inner.gate.container_events(&self.inner.instance_id));
            loop {
                let next = tokio::select! {
                    _ = self.inner.cancel.cancelled() => return,
                    next = events.next() => next,
                };
                match next {
                    Some(Ok(event)) => self.container_gone(&event.id, &event.action),
                    Some(Err(error)) => {
                        tracing::debug!(%error, "docker event stream failed, reconnecting");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = sleep(EVENTS_RECONNECT_PAUSE) => {}
            }
            // Events may have been missed while the stream was down.
            self.reconcile_once().await;
        }
    }

    pub(super) async fn reconcile_loop(&self) {
        let period = self.inner.config.reconcile_interval;
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = sleep(period) => {}
            }
            self.reconcile_once().await;
        }
    }

    /// Compares the pool with Docker's list: idle containers that are gone or stopped are
    /// replaced, leased ones are marked lost, and containers of this instance that the pool
    /// does not know (and that are not being created) are removed once past the grace.
    pub async fn reconcile_once(&self) {
        // Only containers the pool knew before asking Docker can be judged by its answer: one
        // created while the list was on its way is simply not in it yet.
        // Adopted containers carry another instance's label: they are not in this instance's
        // list, so each is inspected instead.
        let (known_before, foreign) = self.state().reconcilable();
        for id in foreign {
            if let Ok(found) = self.inner.gate.inspect_sandbox(&id).await
                && !found.is_some_and(|info| info.running)
            {
                self.container_gone(&id, "adopted container stopped");
            }
        }
        let listed = match self
            .inner
            .gate
            .list_sandboxes(&self.inner.instance_id)
            .await
        {
            Ok(listed) => listed,
            Err(error) => {
                tracing::debug!(%error, "reconcile: listing containers failed");
                return;
            }
        };
        let now = now_unix();
        let grace_ms = self.inner.config.reconcile_grace.as_millis() as i64;
        let running: HashSet<&str> = listed
            .iter()
            .filter(|c| c.running)
            .map(|c| c.id.as_str())
            .collect();
        let (gone, strays) = {
            let mut s = self.state();
            let gone: Vec<String> = s
                .idle_or_leased_among(&known_before)
                .into_iter()
                .filter(|id| !running.contains(id.as_str()))
                .collect();
            let candidates: Vec<String> = listed
                .iter()
                .filter(|c| !s.is_creating(&c.name) && (now - c.created_unix) * 1000 >= grace_ms)
                .map(|c| c.id.clone())
                .collect();
            let strays: Vec<String> = candidates
                .into_iter()
                .filter(|id| s.mark_stray(id))
                .collect();
            (gone, strays)
        };
        for id in gone {
            self.container_gone(&id, "missing from docker's list");
        }
        for id in strays {
            tracing::warn!(container_id = %id, "removing a container of this instance the pool does not know");
            self.spawn_destroy(id);
        }
    }
}
