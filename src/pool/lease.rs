//! Leasing: acquire (an idle sandbox, a create of one's own, or a place in the queue),
//! release, and the calls a holder makes into its leased sandbox through the supervisor.
//!
//! Everything a caller holds is a guard: a place in the queue ([`Queued`]) leaves the queue
//! when dropped, and a sandbox handed to it meanwhile goes to the next caller; a call in
//! flight ([`InFlight`]) is counted until dropped, so that a release waits for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::state::Take;
use super::supervisor::{SupervisorError, SupervisorLink};
use super::{
    CommandOutput, CommandSpec, ContainerPool, FileRequest, Lease, LeaseRef, OutputChunk, Place,
    PoolError, RecycleOutcome, Verdict, scrub,
};
use crate::docker::BreakerState;

/// How long a leased sandbox's supervisor has to answer a health check.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one file operation may take before the supervisor counts as hung.
const FILE_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a checkpoint request may take: well past the supervisor's own walk deadline
/// (10 s) and a restore of a whole bounded store.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(60);

impl ContainerPool {
    /// Leases a container. From a warm pool this takes one lock and makes no Docker call.
    /// With none idle it creates one (under the maximum) or waits in the queue until the
    /// acquire deadline.
    pub async fn acquire(&self) -> Result<Lease, PoolError> {
        self.acquire_queued(&mut |_| {}).await
    }

    /// `acquire`, telling `on_place` the caller's place in the queue whenever it changes
    /// while it waits (never when a sandbox is free at once).
    pub async fn acquire_queued(
        &self,
        on_place: &mut (dyn FnMut(Place) + Send),
    ) -> Result<Lease, PoolError> {
        let started = Instant::now();
        let result = self.acquire_inner(started, on_place).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(PoolError::Exhausted { .. }) => "exhausted",
            Err(PoolError::QueueFull { .. }) => "queue_full",
            Err(PoolError::Closed) => "closed",
            Err(_) => "error",
        };
        self.inner.observer.acquired(started.elapsed(), outcome);
        result
    }

    async fn acquire_inner(
        &self,
        started: Instant,
        on_place: &mut (dyn FnMut(Place) + Send),
    ) -> Result<Lease, PoolError> {
        let deadline = started + self.inner.config.acquire_timeout;
        let may_create = self.inner.gate.breaker_state() != BreakerState::Open;
        let take = self
            .state()
            .take(started, may_create, self.inner.config.max_waiters, || {
                self.new_name()
            })?;
        let (id, rx, mut place) = match take {
            Take::Leased(lease) => {
                self.inner.refill.notify_one();
                return Ok(lease);
            }
            Take::Create(name) => return self.create_for_caller(name, started).await,
            Take::Queued(id, rx, place) => (id, rx, place),
        };
        // The refill creates for the queue too, when there is room.
        self.inner.refill.notify_one();
        let mut queued = Queued {
            pool: self,
            id,
            rx: Some(rx),
        };
        on_place(*place.borrow_and_update());
        loop {
            let Some(rx) = queued.rx.as_mut() else {
                return Err(PoolError::Closed);
            };
            tokio::select! {
                lease = rx => {
                    queued.rx = None;
                    // A dropped sender: the pool closed with this caller queued.
                    return lease.map_err(|_| PoolError::Closed);
                }
                changed = place.changed() => {
                    if changed.is_ok() {
                        on_place(*place.borrow_and_update());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    // Served at the last moment? Then it is this caller's.
                    if let Some(lease) = queued.leave() {
                        return Ok(lease);
                    }
                    return Err(PoolError::Exhausted {
                        waited_ms: started.elapsed().as_millis() as u64,
                        max: self.inner.config.max,
                    });
                }
            }
        }
    }

    /// Creates a container for a caller. The create runs in a tracked task, so that a caller
    /// who goes away mid-way does not lose the container: it then goes to the next caller or
    /// the idle set.
    async fn create_for_caller(&self, name: String, started: Instant) -> Result<Lease, PoolError> {
        let (tx, rx) = oneshot::channel();
        let pool = self.clone();
        self.inner.tasks.spawn(async move {
            // The refill counts creates in flight towards the idle target; once this one is
            // leased, it must look again.
            let _wake = WakeRefill(&pool);
            let sandbox = match pool.create_one(&name).await {
                Ok(sandbox) => sandbox,
                Err(e) => {
                    pool.state().create_failed(&name);
                    let e = match e {
                        PoolError::Docker(e) => PoolError::Create(e),
                        other => other,
                    };
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let leased = pool.state().created_for_caller(sandbox, started.elapsed());
            match leased {
                Ok(lease) => {
                    let id = lease.container_id.clone();
                    if tx.send(Ok(lease)).is_err() {
                        // The caller left: a fresh, never-used container is clean.
                        let surplus = pool.state().unlease_unused(&id);
                        if let Some(id) = surplus {
                            pool.destroy(id).await;
                        }
                    }
                }
                Err(id) => {
                    pool.destroy(id).await;
                    let _ = tx.send(Err(PoolError::Closed));
                }
            }
        });
        rx.await.unwrap_or(Err(PoolError::Closed))
    }

    /// Gives a leased container back. It is scrubbed and verified before it is idle again,
    /// or destroyed (and replaced by the refill task). The returned receiver says which, once
    /// it is done; dropping it is fine.
    ///
    /// Refused (`Stale`) when `lease` is not the container's current lease: a stale record
    /// cannot release a sandbox someone else holds now.
    pub fn release(
        &self,
        lease: &LeaseRef,
    ) -> Result<oneshot::Receiver<RecycleOutcome>, PoolError> {
        let sandbox = self
            .state()
            .begin_release(lease)
            .map_err(|e| self.refused(e))?;
        let (tx, rx) = oneshot::channel();
        let pool = self.clone();
        self.inner.tasks.spawn(async move {
            let outcome = pool.recycle(sandbox).await;
            let _ = tx.send(outcome);
        });
        Ok(rx)
    }

    /// Gives up a leased container whose session another instance took over: it leaves this
    /// pool untouched (no scrub, no removal), its link is closed so that only the new holder
    /// speaks to its supervisor, and its place is free again. Reconcile and shutdown leave it
    /// alone although it carries this instance's label.
    pub fn hand_over(&self, lease: &LeaseRef) -> bool {
        let handed = self.state().hand_over(lease);
        let Ok(sandbox) = handed.map_err(|e| self.refused(e)) else {
            return false;
        };
        if let Some(link) = &sandbox.link {
            link.close();
        }
        tracing::info!(%lease, "sandbox handed over to the instance that took its session");
        self.inner.refill.notify_one();
        true
    }

    /// Whether `container_id` is leased from this pool.
    pub fn is_leased(&self, container_id: &str) -> bool {
        self.state().is_leased(container_id)
    }

    /// The supervisor link of a leased container, counted as one call in flight until the
    /// returned guard goes. Refused for a container that is not leased, so that nothing can
    /// run in a container that is being scrubbed or is idle.
    ///
    /// A supervisor that answers `fenced` (a newer generation has been served: another
    /// holder took the sandbox) makes the pool let go of it at once, untouched, as after a
    /// hand-over: it is not this pool's to scrub or remove.
    fn leased_link(
        &self,
        lease: &LeaseRef,
    ) -> Result<(Arc<SupervisorLink>, InFlight<'_>), PoolError> {
        let link = self
            .state()
            .begin_call(lease)
            .map_err(|e| self.refused(e))?;
        Ok((
            link,
            InFlight {
                pool: self,
                container_id: lease.container_id.clone(),
            },
        ))
    }

    /// Counts a refusal of a stale lease (for the metrics) and passes the error on.
    fn refused(&self, e: PoolError) -> PoolError {
        if let PoolError::Stale { lease } = &e {
            self.inner
                .stale_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%lease, "refused an operation under a stale lease");
        }
        e
    }

    /// What a call's result means for the lease: a `fenced` answer gives the sandbox up.
    fn fenced<T>(
        &self,
        lease: &LeaseRef,
        result: Result<T, SupervisorError>,
    ) -> Result<T, PoolError> {
        if let Err(SupervisorError::Fenced(why)) = &result {
            self.inner
                .stale_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%lease, why, "the sandbox's supervisor serves a newer holder; letting it go");
            self.hand_over(lease);
        }
        Ok(result?)
    }

    /// Runs a command as the tenant in a leased container, through its supervisor: no Docker
    /// call. Output is streamed to `sink` as it comes (a full sink slows the command down).
    /// Dropping the future kills the command's process tree.
    pub async fn run(
        &self,
        lease: &LeaseRef,
        spec: &CommandSpec,
        sink: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<CommandOutput, PoolError> {
        let (link, in_flight) = self.leased_link(lease)?;
        let result = link.run(lease.fence, spec, sink).await;
        drop(in_flight);
        self.fenced(lease, result)
    }

    /// A file operation as the tenant in a leased container, through its supervisor: the
    /// reply's head as `T` and its body (file contents for a read).
    pub async fn file<T: serde::de::DeserializeOwned>(
        &self,
        lease: &LeaseRef,
        request: &FileRequest,
        body: Vec<u8>,
    ) -> Result<(T, Vec<u8>), PoolError> {
        let (link, in_flight) = self.leased_link(lease)?;
        let result = link
            .call(
                lease.fence,
                sandpool_supervisor::proto::Kind::File,
                request,
                body,
                FILE_OP_TIMEOUT,
            )
            .await;
        drop(in_flight);
        self.fenced(lease, result)
    }

    /// A checkpoint request (take, changes, restore) in a leased container, done by its
    /// supervisor: the reply's head as `T`.
    pub async fn checkpoint<T: serde::de::DeserializeOwned>(
        &self,
        lease: &LeaseRef,
        request: &sandpool_supervisor::proto::CheckpointRequest,
    ) -> Result<T, PoolError> {
        let (link, in_flight) = self.leased_link(lease)?;
        let result = link
            .call(
                lease.fence,
                sandpool_supervisor::proto::Kind::Checkpoint,
                request,
                Vec::new(),
                CHECKPOINT_TIMEOUT,
            )
            .await;
        drop(in_flight);
        self.fenced(lease, result).map(|(head, _)| head)
    }

    /// Runs only the verification pass of the scrub in a container (idle or leased), as a
    /// check from outside: what the next session would find. No Docker call.
    pub async fn verify(&self, container_id: &str) -> Result<Verdict, PoolError> {
        let (link, generation) = self
            .state()
            .link_of(container_id)
            .ok_or_else(|| PoolError::NotLeased(container_id.to_string()))?;
        Ok(scrub::verify(&link, generation, self.inner.config.scrub_timeout).await?)
    }

    /// Asks a leased container's supervisor whether it is there (a health check; the pool
    /// does not need it, since a dead link is noticed at once): the generation it serves and
    /// who holds it.
    pub async fn ping(
        &self,
        lease: &LeaseRef,
    ) -> Result<sandpool_supervisor::proto::Pong, PoolError> {
        let (link, _in_flight) = self.leased_link(lease)?;
        Ok(link.ping(PING_TIMEOUT).await?)
    }
}

/// A caller's place in the queue. Dropped (the caller gave up or went away), it leaves the
/// queue, and a sandbox handed over in the meantime goes to the next caller.
struct Queued<'a> {
    pool: &'a ContainerPool,
    id: u64,
    rx: Option<oneshot::Receiver<Lease>>,
}

impl Queued<'_> {
    /// Leaves the queue; returns the lease if one was handed over before.
    fn leave(&mut self) -> Option<Lease> {
        let mut rx = self.rx.take()?;
        self.pool.state().leave_queue(self.id);
        rx.try_recv().ok()
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.leave() {
            // Handed over to a caller who is gone: never used, so it goes straight on.
            let surplus = self.pool.state().unlease_unused(&lease.container_id);
            if let Some(id) = surplus {
                self.pool.spawn_destroy(id);
            }
        }
    }
}

/// Wakes the refill when dropped.
struct WakeRefill<'a>(&'a ContainerPool);

impl Drop for WakeRefill<'_> {
    fn drop(&mut self) {
        self.0.inner.refill.notify_one();
    }
}

/// One supervisor call in flight in a leased container; a release waits for these.
struct InFlight<'a> {
    pool: &'a ContainerPool,
    container_id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.pool.state().end_call(&self.container_id);
        self.pool.inner.call_done.notify_waiters();
    }
}
