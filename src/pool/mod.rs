//! The container pool: a warm set of idle, scrubbed sandboxes, handed out in O(1) with no
//! Docker call, scrubbed and verified on release before anyone can lease them again, and kept
//! in line with Docker's own list.
//!
//! Every container moves through one state at a time, all held under one mutex that is never
//! held across an `.await`:
//! `creating → idle → leased → scrubbing → idle` (or `→ destroying` when the scrub or the
//! verification fails, the container died, or it passed its maximum uses or age).
//! `idle + leased + creating + scrubbing + destroying` never exceeds `max`.
//!
//! This module knows nothing of sessions or sockets, and nothing of bollard: it talks to
//! Docker only through [`DockerGate`].
//!
//! Why this file is long (about 1,450 lines): it still holds the state, leasing, recycling,
//! upkeep (refill, events, reconcile, adoption) and lifecycle together. Splitting it into one
//! room per concern, with the state's transitions as the only code that mutates it, is the
//! next step of the open correctness-and-shape issue; the supervisor link (`supervisor.rs`),
//! the waiting line (`queue.rs`) and the scrub (`scrub.rs`) are already rooms of their own.

mod queue;
mod scrub;
pub mod supervisor;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, PoolConfig};
use crate::docker::{BreakerState, DockerError, DockerGate, SandboxSpec};
pub use queue::Place;
use queue::{Demand, Waiter};
pub use sandpool_supervisor::proto::FileRequest;
pub use scrub::Verdict;
use supervisor::SupervisorLink;
pub use supervisor::{CommandOutput, CommandSpec, OutputChunk, OutputStream, SupervisorError};

/// How long a fresh (or adopted) supervisor has to answer its first ping.
const SUPERVISOR_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one file operation may take before the supervisor counts as hung.
const FILE_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a pool operation failed. Each variant names the phase.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No container became free before the acquire deadline, and the pool is at its maximum.
    #[error("no sandbox free within {waited_ms} ms: the pool is at its maximum of {max}")]
    Exhausted { waited_ms: u64, max: usize },
    /// The pool is shutting down.
    #[error("the pool is shut down")]
    Closed,
    /// Too many callers already wait for a sandbox.
    #[error("{waiting} callers already wait for a sandbox (the queue's bound)")]
    QueueFull { waiting: usize },
    /// The container is not leased (never was, or already released).
    #[error("container {0} is not leased")]
    NotLeased(String),
    /// Creating a container for this caller failed.
    #[error("creating a sandbox failed: {0}")]
    Create(#[source] DockerError),
    /// The sandbox's supervisor failed the request, or is gone (then so is the sandbox).
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// A Docker call for this caller failed (the breaker is open, the gate is overloaded, an
    /// exec failed).
    #[error(transparent)]
    Docker(#[from] DockerError),
}

impl PoolError {
    /// The Docker error behind this one, if any.
    pub fn docker(&self) -> Option<&DockerError> {
        match self {
            PoolError::Create(e) | PoolError::Docker(e) => Some(e),
            _ => None,
        }
    }
}

/// A leased sandbox.
#[derive(Debug, Clone)]
pub struct Lease {
    pub container_id: String,
    pub container_name: String,
    /// How many leases this container has served, this one included.
    pub uses: u32,
    /// How long `acquire` took.
    pub waited: Duration,
}

/// What happened to a released container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecycleOutcome {
    /// Scrubbed, verified clean, and idle again.
    Recycled,
    /// Destroyed: the reason says why (dirty after scrub, died, too old, too many uses,
    /// pool closed).
    Destroyed(String),
}

impl RecycleOutcome {
    /// A label value for metrics, from a small fixed set.
    pub fn label(&self) -> &'static str {
        match self {
            RecycleOutcome::Recycled => "recycled",
            RecycleOutcome::Destroyed(_) => "destroyed",
        }
    }
}

/// Something that happened to a container the pool cannot hide from its holder.
#[derive(Debug, Clone)]
pub enum PoolEvent {
    /// A leased container died (killed from outside, out of memory). Its holder should end
    /// the session or release it; the release destroys it.
    LeaseLost { container_id: String },
}

/// Counts for `/api/pool` and the gauges.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStatus {
    pub idle: usize,
    pub leased: usize,
    pub creating: usize,
    pub scrubbing: usize,
    pub destroying: usize,
    pub total: usize,
    pub min_idle: usize,
    /// Idle sandboxes the refill keeps now: `min_idle` raised to cover recent arrivals.
    pub idle_target: usize,
    /// Callers queued for a sandbox.
    pub waiting: usize,
    pub max: usize,
    pub image: String,
    pub instance: String,
    pub breaker: BreakerState,
    pub closed: bool,
}

/// Hooks through which the pool reports what it does, so that it need not know the metrics.
pub trait PoolObserver: Send + Sync + 'static {
    /// An `acquire` ended; `outcome` is `ok`, `exhausted`, `closed` or `error`.
    fn acquired(&self, _took: Duration, _outcome: &'static str) {}
    /// A release ended in `outcome` after `took` (scrub and verify included).
    fn recycled(&self, _took: Duration, _outcome: &RecycleOutcome) {}
    /// A container create (and start) ended.
    fn created(&self, _took: Duration, _ok: bool) {}
}

/// An observer that ignores everything.
pub struct NoopObserver;
impl PoolObserver for NoopObserver {}

#[derive(Debug)]
struct Sandbox {
    id: String,
    name: String,
    created_unix: i64,
    uses: u32,
    /// Docker reported it dead while leased; its release destroys it.
    dead: bool,
    /// Adopted from another (stopped) instance with a session it held: labeled for that
    /// instance, so it is destroyed on release rather than kept in this pool.
    foreign: bool,
    /// The link to its supervisor: every command, file operation and scrub goes through it.
    /// `None` only for a leased container whose supervisor could not be reached (then it is
    /// also `dead`).
    link: Option<Arc<SupervisorLink>>,
}

#[derive(Default)]
struct State {
    idle: VecDeque<Sandbox>,
    leased: HashMap<String, Sandbox>,
    creating: usize,
    scrubbing: HashSet<String>,
    destroying: HashSet<String>,
    /// Execs in flight per leased container, so that a release waits for them before the
    /// scrub (an exec must never start in a container that is already clean).
    execs: HashMap<String, usize>,
    /// Callers waiting for a sandbox, in arrival order; a free sandbox goes to the head first.
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// Containers of this instance (by label) that another instance took over with their
    /// session: no longer this pool's to scrub, reconcile or remove.
    handed_over: HashSet<String>,
    /// Names of the containers being created right now (create, start, attach, first ping),
    /// so that the reconcile loop never takes one for a stray, however slow it is.
    creating_names: HashSet<String>,
    demand: Demand,
    closed: bool,
}

impl State {
    fn total(&self) -> usize {
        self.idle.len()
            + self.leased.len()
            + self.creating
            + self.scrubbing.len()
            + self.destroying.len()
    }
    /// Leases `sandbox` to a caller who waited `waited`.
    fn lease(&mut self, mut sandbox: Sandbox, waited: Duration) -> Lease {
        sandbox.uses += 1;
        let lease = Lease {
            container_id: sandbox.id.clone(),
            container_name: sandbox.name.clone(),
            uses: sandbox.uses,
            waited,
        };
        self.leased.insert(sandbox.id.clone(), sandbox);
        lease
    }

    /// Hands a clean container to the first caller still waiting for one; else puts it in
    /// the idle set while the pool is open and the set is below `cap`; otherwise moves it to
    /// `destroying` and returns its id, for the caller to destroy.
    fn park(&mut self, mut sandbox: Sandbox, cap: usize) -> Option<String> {
        while !self.closed
            && let Some(waiter) = self.waiters.pop_front()
        {
            let lease = self.lease(sandbox, waiter.started.elapsed());
            match waiter.tx.send(lease) {
                Ok(()) => {
                    self.demand.handout(Instant::now());
                    self.renumber();
                    return None;
                }
                // That caller left: take it back and try the next.
                Err(lease) => match self.leased.remove(&lease.container_id) {
                    Some(mut back) => {
                        back.uses -= 1;
                        sandbox = back;
                    }
                    None => return None,
                },
            }
        }
        self.renumber();
        if !self.closed && self.idle.len() < cap {
            self.idle.push_back(sandbox);
            return None;
        }
        self.destroying.insert(sandbox.id.clone());
        Some(sandbox.id)
    }

    /// Tells every waiter its place.
    fn renumber(&mut self) {
        let now = Instant::now();
        let per_place = self.demand.estimate_ms(now, 1);
        for (i, waiter) in self.waiters.iter().enumerate() {
            let place = Place {
                position: i + 1,
                estimate_ms: per_place * (i as u64 + 1),
            };
            waiter.place.send_if_modified(|p| {
                let changed = *p != place;
                *p = place;
                changed
            });
        }
    }

    fn knows(&self, id: &str) -> bool {
        self.handed_over.contains(id)
            || self.leased.contains_key(id)
            || self.scrubbing.contains(id)
            || self.destroying.contains(id)
            || self.idle.iter().any(|s| s.id == id)
    }
}

struct Inner {
    gate: Arc<DockerGate>,
    config: PoolConfig,
    image: String,
    instance_id: String,
    state: Mutex<State>,
    /// Woken when a container becomes idle or capacity is freed: wakes `acquire` waiters.
    available: Notify,
    /// Woken when the refill task should look again.
    refill: Notify,
    /// Woken when an exec ends, for a release waiting for a container's execs to finish.
    exec_done: Notify,
    observer: Arc<dyn PoolObserver>,
    events: broadcast::Sender<PoolEvent>,
    /// Stops the background tasks.
    cancel: CancellationToken,
    /// Every task the pool spawns (refill, watchers, recycles, destroys), so that shutdown
    /// can wait for them.
    tasks: TaskTracker,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct ContainerPool {
    inner: Arc<Inner>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ContainerPool {
    /// Creates the pool, reconciles with what Docker has for this instance (containers an
    /// earlier run left behind are scrubbed and adopted, or removed), and starts the
    /// background tasks that pre-warm and refill it. Containers in `keep_leased` are adopted
    /// as leased, untouched: a session store knows they belong to live sessions.
    pub async fn start(
        gate: Arc<DockerGate>,
        config: &Config,
        observer: Arc<dyn PoolObserver>,
        keep_leased: &HashSet<String>,
    ) -> Result<Self, PoolError> {
        let (events, _) = broadcast::channel(256);
        let pool = Self {
            inner: Arc::new(Inner {
                gate,
                config: config.pool.clone(),
                image: config.image.image.clone(),
                instance_id: config.instance_id.clone(),
                state: Mutex::new(State::default()),
                available: Notify::new(),
                refill: Notify::new(),
                exec_done: Notify::new(),
                observer,
                events,
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        pool.adopt_leftovers(keep_leased).await?;
        let p = pool.clone();
        pool.inner.tasks.spawn(async move { p.refill_loop().await });
        let p = pool.clone();
        pool.inner
            .tasks
            .spawn(async move { p.watch_events().await });
        let p = pool.clone();
        pool.inner
            .tasks
            .spawn(async move { p.reconcile_loop().await });
        Ok(pool)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section is a handful of collection operations that cannot panic
        // half-way in a way that breaks the invariants, so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn gate(&self) -> &Arc<DockerGate> {
        &self.inner.gate
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Events about leased containers (see [`PoolEvent`]).
    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.inner.events.subscribe()
    }

    pub fn status(&self) -> PoolStatus {
        let mut s = self.state();
        PoolStatus {
            idle: s.idle.len(),
            leased: s.leased.len(),
            creating: s.creating,
            scrubbing: s.scrubbing.len(),
            destroying: s.destroying.len(),
            total: s.total(),
            min_idle: self.inner.config.min_idle,
            idle_target: s.demand.idle_target(
                Instant::now(),
                self.inner.config.min_idle,
                self.inner.config.idle_cap(),
            ),
            waiting: s.waiters.len(),
            max: self.inner.config.max,
            image: self.inner.image.clone(),
            instance: self.inner.instance_id.clone(),
            breaker: self.inner.gate.breaker_state(),
            closed: s.closed,
        }
    }

    /// Whether an `acquire` can be served now: a container is idle (or none is wanted idle)
    /// and the breaker is not open.
    pub fn is_ready(&self) -> Result<(), &'static str> {
        let s = self.state();
        if s.closed {
            return Err("pool is shutting down");
        }
        if self.inner.gate.breaker_state() == BreakerState::Open {
            return Err("docker circuit breaker is open");
        }
        if s.idle.is_empty() && self.inner.config.min_idle > 0 {
            return Err("no idle sandbox yet");
        }
        Ok(())
    }

    /// Waits until at least `n` containers are idle, or the timeout passes.
    pub async fn wait_idle(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.state().idle.len() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Leases a container. From a warm pool this takes one lock and makes no Docker call.
    /// With none idle it creates one (under the maximum) or waits for a release until the
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
        let deadline = started + Duration::from_millis(self.inner.config.acquire_timeout_ms);
        enum Next {
            Leased(Lease),
            Create,
            Queued(u64, oneshot::Receiver<Lease>, watch::Receiver<Place>),
        }
        let next = {
            let mut s = self.state();
            if s.closed {
                return Err(PoolError::Closed);
            }
            s.demand.arrival(Instant::now());
            // Nobody queued: the idle set, else a create of one's own.
            let free = s.waiters.is_empty();
            let popped = if free { s.idle.pop_front() } else { None };
            if let Some(sandbox) = popped {
                Next::Leased(s.lease(sandbox, started.elapsed()))
            } else if free && s.total() < self.inner.config.max {
                if self.inner.gate.breaker_state() == BreakerState::Open {
                    return Err(PoolError::Docker(DockerError::Unavailable));
                }
                s.creating += 1;
                Next::Create
            } else if s.waiters.len() >= self.inner.config.max_waiters {
                return Err(PoolError::QueueFull {
                    waiting: s.waiters.len(),
                });
            } else {
                let id = s.next_waiter;
                s.next_waiter += 1;
                let (tx, rx) = oneshot::channel();
                let (place_tx, place_rx) = watch::channel(Place::default());
                s.waiters.push_back(Waiter {
                    id,
                    tx,
                    place: place_tx,
                    started,
                });
                s.renumber();
                Next::Queued(id, rx, place_rx)
            }
        };
        let (id, rx, mut place) = match next {
            Next::Leased(lease) => {
                self.inner.refill.notify_one();
                return Ok(lease);
            }
            Next::Create => return self.create_for_caller(started).await,
            Next::Queued(id, rx, place) => (id, rx, place),
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

    /// Creates a container for a waiting caller. The create runs in a tracked task, so that a
    /// caller who goes away mid-way does not lose the container: it then goes to the idle set.
    async fn create_for_caller(&self, started: Instant) -> Result<Lease, PoolError> {
        let (tx, rx) = oneshot::channel();
        let pool = self.clone();
        self.inner.tasks.spawn(async move {
            let created = pool.create_one().await;
            // Decide under the lock, act after it.
            let leased = {
                let mut s = pool.state();
                s.creating -= 1;
                if let Ok(sandbox) = &created {
                    s.creating_names.remove(&sandbox.name);
                }
                match created {
                    Ok(sandbox) if !s.closed => Ok(s.lease(sandbox, started.elapsed())),
                    Ok(sandbox) => {
                        s.destroying.insert(sandbox.id.clone());
                        Err(sandbox.id)
                    }
                    Err(e) => {
                        pool.inner.available.notify_one();
                        let e = match e {
                            PoolError::Docker(e) => PoolError::Create(e),
                            other => other,
                        };
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            };
            match leased {
                Ok(lease) => {
                    let id = lease.container_id.clone();
                    if tx.send(Ok(lease)).is_err() {
                        // The caller left: a fresh, never-used container is clean.
                        let surplus = {
                            let mut s = pool.state();
                            let cap = pool.inner.config.idle_cap();
                            s.leased.remove(&id).and_then(|mut sandbox| {
                                sandbox.uses = 0;
                                s.park(sandbox, cap)
                            })
                        };
                        if let Some(id) = surplus {
                            pool.destroy(id).await;
                        }
                        pool.inner.available.notify_one();
                    }
                }
                Err(id) => {
                    pool.destroy(id).await;
                    let _ = tx.send(Err(PoolError::Closed));
                }
            }
        });
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(PoolError::Closed),
        }
    }

    /// Attaches to a running container's supervisor and waits for its first answer. A link
    /// that dies later marks the container gone (destroyed, never handed out again).
    async fn connect(&self, id: &str) -> Result<Arc<SupervisorLink>, PoolError> {
        let attached = self.inner.gate.attach(id).await?;
        let pool: Weak<Inner> = Arc::downgrade(&self.inner);
        let link = SupervisorLink::start(id, attached, move |container_id, why| {
            if let Some(inner) = pool.upgrade() {
                ContainerPool { inner }.container_gone(container_id, why);
            }
        });
        link.ping(SUPERVISOR_READY_TIMEOUT).await?;
        Ok(link)
    }

    /// Creates and starts one container. The caller has counted it in `creating`.
    async fn create_one(&self) -> Result<Sandbox, PoolError> {
        let started = Instant::now();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("sandpool-{}-{}", self.inner.instance_id, &suffix[..12]);
        // Known by name before Docker hears of it; the caller forgets the name when it records
        // the container, in the same critical section, so there is no moment in between.
        self.state().creating_names.insert(name.clone());
        let c = &self.inner.config;
        let spec = SandboxSpec {
            name: name.clone(),
            image: self.inner.image.clone(),
            instance_id: self.inner.instance_id.clone(),
            memory_bytes: c.memory_bytes as i64,
            nano_cpus: (c.cpus * 1e9) as i64,
            pids_limit: c.pids_limit as i64,
            tmpfs_bytes: c.tmpfs_bytes as u64,
            network: c.network.clone(),
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
                name: name.clone(),
                created_unix: now_unix(),
                uses: 0,
                dead: false,
                foreign: false,
                link: Some(link),
            })
        }
        .await;
        self.inner
            .observer
            .created(started.elapsed(), result.is_ok());
        if result.is_ok() {
            self.state().demand.created(started.elapsed());
        }
        if let Err(error) = &result {
            // Removed already, or left for the reconcile loop, which may now take it.
            self.state().creating_names.remove(&name);
            tracing::warn!(%error, "creating a sandbox failed");
        }
        result
    }

    /// Gives a leased container back. It is scrubbed and verified before it is idle again,
    /// or destroyed (and replaced by the refill task). The returned receiver says which, once
    /// it is done; dropping it is fine.
    pub fn release(
        &self,
        container_id: &str,
    ) -> Result<oneshot::Receiver<RecycleOutcome>, PoolError> {
        let sandbox = {
            let mut s = self.state();
            let sandbox = s
                .leased
                .remove(container_id)
                .ok_or_else(|| PoolError::NotLeased(container_id.to_string()))?;
            s.scrubbing.insert(sandbox.id.clone());
            sandbox
        };
        let (tx, rx) = oneshot::channel();
        let pool = self.clone();
        self.inner.tasks.spawn(async move {
            let outcome = pool.recycle(sandbox).await;
            let _ = tx.send(outcome);
        });
        Ok(rx)
    }

    async fn recycle(&self, sandbox: Sandbox) -> RecycleOutcome {
        let started = Instant::now();
        let id = sandbox.id.clone();
        let c = &self.inner.config;
        let age = now_unix() - sandbox.created_unix;
        let reason = if sandbox.dead {
            Some("container died".to_string())
        } else if self.state().closed {
            // No scrub for a pool that is going away.
            Some("pool closed".to_string())
        } else if sandbox.foreign {
            Some("adopted from another instance".to_string())
        } else if sandbox.uses as usize >= c.max_uses {
            Some(format!("served its maximum of {} leases", c.max_uses))
        } else if age >= c.max_age_secs as i64 {
            Some(format!("older than {} s", c.max_age_secs))
        } else if !self.stop_commands(&sandbox).await {
            Some("execs still running at release".to_string())
        } else {
            match self.scrub(&sandbox).await {
                Ok(Verdict::Clean) => None,
                Ok(Verdict::Dirty(found)) => Some(format!("dirty after scrub: {found}")),
                Err(error) => Some(format!("scrub failed: {error}")),
            }
        };
        let outcome = {
            let mut s = self.state();
            s.scrubbing.remove(&sandbox.id);
            s.execs.remove(&sandbox.id);
            let idle = s.idle.len();
            let reason = reason.or_else(|| s.closed.then(|| "pool closed".to_string()));
            // Clean: to the first queued caller, else the idle set (within its cap).
            let reason = match reason {
                None => s
                    .park(sandbox, self.inner.config.idle_cap())
                    .map(|_| format!("idle set full ({idle} idle)")),
                Some(reason) => {
                    s.destroying.insert(sandbox.id.clone());
                    Some(reason)
                }
            };
            match reason {
                None => RecycleOutcome::Recycled,
                // Its id is in `destroying` already (`park` or above).
                Some(reason) => RecycleOutcome::Destroyed(reason),
            }
        };
        match &outcome {
            RecycleOutcome::Recycled => {
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox recycled"
                );
                self.inner.available.notify_one();
            }
            RecycleOutcome::Destroyed(reason) => {
                tracing::info!(%reason, "sandbox destroyed instead of recycled");
                // The id is in `destroying`, so it still counts towards the maximum.
                self.destroy(id).await;
            }
        }
        self.inner.observer.recycled(started.elapsed(), &outcome);
        outcome
    }

    /// Scrubs a sandbox through its supervisor: every tenant process killed, every writable
    /// path emptied and restored, then a separate verification pass. No Docker call.
    async fn scrub(&self, sandbox: &Sandbox) -> Result<Verdict, PoolError> {
        let link = sandbox
            .link
            .as_ref()
            .ok_or_else(|| SupervisorError::Lost("never connected".into()))?;
        let within = Duration::from_millis(self.inner.config.scrub_timeout_ms as u64);
        let verdict = scrub::scrub(link, within).await?;
        if verdict != Verdict::Clean {
            // A container that is not clean is never trusted again, its supervisor included.
            link.kill("dirty after scrub");
        }
        Ok(verdict)
    }

    /// Kills the commands still running in a released container and waits until their calls
    /// have ended, so that nothing started for the session runs after its scrub.
    async fn stop_commands(&self, sandbox: &Sandbox) -> bool {
        if let Some(link) = &sandbox.link {
            link.kill_all();
        }
        self.wait_execs_done(&sandbox.id).await
    }

    async fn wait_execs_done(&self, id: &str) -> bool {
        let deadline =
            Instant::now() + Duration::from_millis(self.inner.config.scrub_timeout_ms as u64);
        loop {
            let notified = self.inner.exec_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().execs.get(id).copied().unwrap_or(0) == 0 {
                return true;
            }
            if timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Gives up a leased container whose session another instance took over: it leaves this
    /// pool untouched (no scrub, no removal), its link is closed so that only the new holder
    /// speaks to its supervisor, and its place is free again. Reconcile and shutdown leave it
    /// alone although it carries this instance's label.
    pub fn hand_over(&self, container_id: &str) -> bool {
        let handed = {
            let mut s = self.state();
            let handed = s.leased.remove(container_id).is_some();
            if handed {
                s.execs.remove(container_id);
                s.handed_over.insert(container_id.to_string());
            }
            handed
        };
        if handed {
            tracing::info!(%container_id, "sandbox handed over to the instance that took its session");
            self.inner.available.notify_one();
            self.inner.refill.notify_one();
        }
        handed
    }

    /// Whether the leased container `container_id` died (or its supervisor link did): what
    /// a `PoolEvent::LeaseLost` said, for a subscriber that missed events.
    pub fn lease_lost(&self, container_id: &str) -> bool {
        self.state()
            .leased
            .get(container_id)
            .is_some_and(|sb| sb.dead || sb.link.as_ref().is_none_or(|link| link.is_dead()))
    }

    /// Whether `container_id` is leased from this pool.
    pub fn is_leased(&self, container_id: &str) -> bool {
        self.state().leased.contains_key(container_id)
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
        let mut s = self.state();
        if s.closed {
            return Err(PoolError::Closed);
        }
        if s.total() >= self.inner.config.max {
            return Err(PoolError::Exhausted {
                waited_ms: 0,
                max: self.inner.config.max,
            });
        }
        s.leased.insert(
            info.id.clone(),
            Sandbox {
                name: info.id.chars().take(12).collect(),
                id: info.id,
                created_unix: info.created_unix,
                uses: 1,
                dead: false,
                foreign: true,
                link: Some(link),
            },
        );
        Ok(())
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

    /// The supervisor link of a leased container, counted as one call in flight until the
    /// returned guard goes. Refused for a container that is not leased, so that nothing can
    /// run in a container that is being scrubbed or is idle.
    fn leased_link(
        &self,
        container_id: &str,
    ) -> Result<(Arc<SupervisorLink>, InFlight<'_>), PoolError> {
        let mut s = self.state();
        let sandbox = s
            .leased
            .get(container_id)
            .ok_or_else(|| PoolError::NotLeased(container_id.to_string()))?;
        let link = match &sandbox.link {
            Some(link) if !sandbox.dead && !link.is_dead() => link.clone(),
            _ => return Err(SupervisorError::Lost("the sandbox died".into()).into()),
        };
        *s.execs.entry(container_id.to_string()).or_insert(0) += 1;
        Ok((
            link,
            InFlight {
                pool: self,
                container_id: container_id.to_string(),
            },
        ))
    }

    /// Runs a command as the tenant in a leased container, through its supervisor: no Docker
    /// call. Output is streamed to `sink` as it comes (a full sink slows the command down).
    /// Dropping the future kills the command's process tree.
    pub async fn run(
        &self,
        container_id: &str,
        spec: &CommandSpec,
        sink: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<CommandOutput, PoolError> {
        let (link, _in_flight) = self.leased_link(container_id)?;
        Ok(link.run(spec, sink).await?)
    }

    /// A file operation as the tenant in a leased container, through its supervisor: the
    /// reply's head as `T` and its body (file contents for a read).
    pub async fn file<T: serde::de::DeserializeOwned>(
        &self,
        container_id: &str,
        request: &FileRequest,
        body: Vec<u8>,
    ) -> Result<(T, Vec<u8>), PoolError> {
        let (link, _in_flight) = self.leased_link(container_id)?;
        Ok(link
            .call(
                sandpool_supervisor::proto::Kind::File,
                request,
                body,
                FILE_OP_TIMEOUT,
            )
            .await?)
    }

    /// Runs only the verification pass of the scrub in a container (idle or leased), as a
    /// check from outside: what the next session would find. No Docker call.
    pub async fn verify(&self, container_id: &str) -> Result<Verdict, PoolError> {
        let link = {
            let s = self.state();
            s.idle
                .iter()
                .find(|sb| sb.id == container_id)
                .or_else(|| s.leased.get(container_id))
                .and_then(|sb| sb.link.clone())
                .ok_or_else(|| PoolError::NotLeased(container_id.to_string()))?
        };
        let within = Duration::from_millis(self.inner.config.scrub_timeout_ms as u64);
        Ok(scrub::verify(&link, within).await?)
    }

    /// Asks a leased container's supervisor whether it is there (a health check; the pool
    /// does not need it, since a dead link is noticed at once).
    pub async fn ping(&self, container_id: &str) -> Result<(), PoolError> {
        let (link, _in_flight) = self.leased_link(container_id)?;
        link.ping(SUPERVISOR_READY_TIMEOUT).await?;
        Ok(())
    }

    /// Removes a container and frees its place. The caller has put its id in `destroying`,
    /// where it stays (counted towards the maximum) while removal is retried with backoff; a
    /// container Docker will not remove for long is left to the reconcile loop, which removes
    /// containers of this instance that the pool does not know.
    async fn destroy(&self, id: String) {
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
        self.state().destroying.remove(&id);
        self.inner.available.notify_one();
        self.inner.refill.notify_one();
    }

    fn spawn_destroy(&self, id: String) {
        let pool = self.clone();
        self.inner
            .tasks
            .spawn(async move { pool.destroy(id).await });
    }

    /// A container died or vanished: drop it from the idle set (and replace it), or mark its
    /// lease lost.
    fn container_gone(&self, id: &str, why: &str) {
        let mut s = self.state();
        if let Some(pos) = s.idle.iter().position(|sb| sb.id == id) {
            if let Some(sandbox) = s.idle.remove(pos) {
                s.destroying.insert(sandbox.id.clone());
                drop(s);
                tracing::warn!(container_id = %id, why, "idle sandbox died, replacing it");
                self.spawn_destroy(sandbox.id);
            }
        } else if let Some(sandbox) = s.leased.get_mut(id)
            && !sandbox.dead
        {
            sandbox.dead = true;
            drop(s);
            tracing::warn!(container_id = %id, why, "leased sandbox died");
            let _ = self.inner.events.send(PoolEvent::LeaseLost {
                container_id: id.to_string(),
            });
        }
    }

    async fn adopt_leftovers(&self, keep_leased: &HashSet<String>) -> Result<(), PoolError> {
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
        {
            let mut s = self.state();
            for info in found {
                let sandbox = Sandbox {
                    id: info.id.clone(),
                    name: info.id.chars().take(12).collect(),
                    created_unix: info.created_unix,
                    uses: 0,
                    dead: !info.running,
                    foreign: false,
                    link: None,
                };
                let fits = s.total() < self.inner.config.max;
                if keep_leased.contains(&info.id) && fits {
                    if info.running {
                        kept.push(info.id.clone());
                    }
                    s.leased.insert(info.id, sandbox);
                } else if info.running && info.image == self.inner.image && fits {
                    s.scrubbing.insert(info.id);
                    to_scrub.push(sandbox);
                } else {
                    s.destroying.insert(info.id.clone());
                    self.spawn_destroy(info.id);
                }
            }
        }
        // Sessions' containers get their link back untouched; a supervisor that does not
        // answer makes its container dead (the session sees it lost).
        join_all(kept.into_iter().map(|id| async move {
            let link = self.connect(&id).await;
            let mut s = self.state();
            if let Some(sandbox) = s.leased.get_mut(&id) {
                match link {
                    Ok(link) => sandbox.link = Some(link),
                    Err(error) => {
                        tracing::warn!(container_id = %id, %error, "a kept sandbox's supervisor does not answer");
                        sandbox.dead = true;
                    }
                }
            }
        }))
        .await;
        let results = join_all(to_scrub.into_iter().map(|mut sb| async move {
            let verdict = match self.connect(&sb.id).await {
                Ok(link) => {
                    sb.link = Some(link);
                    self.scrub(&sb).await
                }
                Err(e) => Err(e),
            };
            (sb, verdict)
        }))
        .await;
        let mut adopted = 0;
        for (sandbox, verdict) in results {
            let mut s = self.state();
            s.scrubbing.remove(&sandbox.id);
            let surplus = if matches!(verdict, Ok(Verdict::Clean)) {
                s.park(sandbox, self.inner.config.idle_cap())
            } else {
                s.destroying.insert(sandbox.id.clone());
                Some(sandbox.id)
            };
            drop(s);
            match surplus {
                None => adopted += 1,
                Some(id) => {
                    tracing::info!(container_id = %id, ?verdict, "left-over container not adopted (not clean, or the idle set is full), removing it");
                    self.spawn_destroy(id);
                }
            }
        }
        tracing::info!(adopted, "reconciled containers from an earlier run");
        Ok(())
    }

    /// Keeps `min_idle` containers idle (within `max`), creating up to `create_parallelism`
    /// at once. Stops refilling while the breaker is open.
    async fn refill_loop(&self) {
        let c = self.inner.config.clone();
        let cap = c.idle_cap();
        let mut warm_logged = false;
        loop {
            let want = {
                let mut s = self.state();
                if s.closed {
                    return;
                }
                let have = s.idle.len() + s.creating;
                let room = c.max.saturating_sub(s.total());
                // Idle enough for the demand, plus one for every caller already queued.
                let target = s.demand.idle_target(Instant::now(), c.min_idle, cap);
                let want = (target + s.waiters.len())
                    .saturating_sub(have)
                    .min(room)
                    .min(c.create_parallelism);
                let breaker_open = self.inner.gate.breaker_state() == BreakerState::Open;
                if want > 0 && !breaker_open {
                    s.creating += want;
                    want
                } else {
                    0
                }
            };
            if want > 0 {
                let results = join_all((0..want).map(|_| self.create_one())).await;
                let mut failed = false;
                let idle_now;
                {
                    let mut s = self.state();
                    for result in results {
                        s.creating -= 1;
                        if let Ok(sandbox) = &result {
                            s.creating_names.remove(&sandbox.name);
                        }
                        match result {
                            // Recycles may have filled the idle set while this was created.
                            Ok(sandbox) => {
                                if let Some(id) = s.park(sandbox, cap) {
                                    self.spawn_destroy(id);
                                }
                            }
                            Err(_) => failed = true,
                        }
                    }
                    idle_now = s.idle.len();
                }
                self.inner.available.notify_waiters();
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
                if !failed {
                    continue;
                }
                // Back off a little after a failed create; the breaker does the rest.
                tokio::select! {
                    _ = self.inner.cancel.cancelled() => return,
                    _ = sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = self.inner.refill.notified() => {}
                _ = sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Follows Docker's event stream for this instance's containers, so that a container
    /// killed from outside is noticed at once. Reconnects when the stream ends.
    async fn watch_events(&self) {
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
                _ = sleep(Duration::from_secs(1)) => {}
            }
            // Events may have been missed while the stream was down.
            self.reconcile_once().await;
        }
    }

    async fn reconcile_loop(&self) {
        let period = Duration::from_millis(self.inner.config.reconcile_interval_ms as u64);
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
    /// does not know (and that are not fresh creates) are removed.
    pub async fn reconcile_once(&self) {
        // Only containers the pool knew before asking Docker can be judged by its answer: one
        // created while the list was on its way is simply not in it yet.
        // Foreign (adopted) containers carry another instance's label: they are not in this
        // instance's list, so each is inspected instead.
        let (known_before, foreign): (HashSet<String>, Vec<String>) = {
            let s = self.state();
            let known = s
                .idle
                .iter()
                .map(|sb| sb.id.clone())
                .chain(
                    s.leased
                        .values()
                        .filter(|sb| !sb.foreign)
                        .map(|sb| sb.id.clone()),
                )
                .collect();
            let foreign = s
                .leased
                .values()
                .filter(|sb| sb.foreign)
                .map(|sb| sb.id.clone())
                .collect();
            (known, foreign)
        };
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
        let running: HashSet<&str> = listed
            .iter()
            .filter(|c| c.running)
            .map(|c| c.id.as_str())
            .collect();
        let (gone, strays) = {
            let s = self.state();
            let gone: Vec<String> = s
                .idle
                .iter()
                .map(|sb| sb.id.clone())
                .chain(s.leased.keys().cloned())
                .filter(|id| known_before.contains(id) && !running.contains(id.as_str()))
                .collect();
            let now = now_unix();
            let grace_ms = self.inner.config.reconcile_grace_ms as i64;
            let strays: Vec<String> = listed
                .iter()
                .filter(|c| {
                    !s.knows(&c.id)
                        && !s.creating_names.contains(&c.name)
                        && (now - c.created_unix) * 1000 >= grace_ms
                })
                .map(|c| c.id.clone())
                .collect();
            (gone, strays)
        };
        for id in gone {
            self.container_gone(&id, "missing from docker's list");
        }
        for id in strays {
            tracing::warn!(container_id = %id, "removing a container of this instance the pool does not know");
            self.state().destroying.insert(id.clone());
            self.spawn_destroy(id);
        }
    }

    /// Stops handing out and stops the background tasks, at once and without waiting.
    /// Creates and recycles in flight destroy their containers when they finish. `shutdown`
    /// and `abandon` begin with this; on its own it serves code that cannot await (a drop
    /// guard).
    pub fn close(&self) {
        {
            let mut s = self.state();
            s.closed = true;
            // Queued callers hear `Closed` (their sender is dropped).
            s.waiters.clear();
        }
        self.inner.cancel.cancel();
        self.inner.available.notify_waiters();
        self.inner.tasks.close();
    }

    /// Stops the pool's background tasks and forgets its containers without removing them:
    /// they stay on the engine, labeled with this instance, for the next pool started with the
    /// same instance id to adopt or remove. This is what a crash leaves behind, done on
    /// purpose (a hand-over to a new process; the crash tests).
    pub async fn abandon(&self) {
        self.close();
        self.inner.tasks.wait().await;
        let mut s = self.state();
        s.idle.clear();
        s.leased.clear();
    }

    /// Stops the pool: no more leases, background tasks stopped, and every container of this
    /// instance removed, within `within`. Returns how many containers were removed.
    pub async fn shutdown(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        self.close();
        let known: Vec<String> = {
            let s = self.state();
            s.idle
                .iter()
                .map(|sb| sb.id.clone())
                .chain(s.leased.keys().cloned())
                .chain(s.scrubbing.iter().cloned())
                .collect()
        };
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
        for id in &self.state().handed_over {
            ids.remove(id);
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
            if left.is_empty() || Instant::now() + Duration::from_millis(250) >= deadline {
                break;
            }
            sleep(Duration::from_millis(250)).await;
        }
        let removed = total - left.len();
        if !left.is_empty() {
            tracing::warn!(
                left = left.len(),
                "shutdown: some containers could not be removed; the next start with this instance id removes them"
            );
        }
        let mut s = self.state();
        s.idle.clear();
        s.leased.clear();
        s.scrubbing.clear();
        tracing::info!(removed, "pool shut down");
        removed
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
        let mut s = self.pool.state();
        if let Some(pos) = s.waiters.iter().position(|w| w.id == self.id) {
            s.waiters.remove(pos);
            s.renumber();
        }
        drop(s);
        rx.try_recv().ok()
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.leave() {
            // Handed over to a caller who is gone: never used, so it goes straight on.
            let cap = self.pool.inner.config.idle_cap();
            let surplus = {
                let mut s = self.pool.state();
                s.leased
                    .remove(&lease.container_id)
                    .and_then(|mut sandbox| {
                        sandbox.uses = sandbox.uses.saturating_sub(1);
                        s.park(sandbox, cap)
                    })
            };
            if let Some(id) = surplus {
                self.pool.spawn_destroy(id);
            }
        }
    }
}

/// One supervisor call in flight in a leased container; a release waits for these.
struct InFlight<'a> {
    pool: &'a ContainerPool,
    container_id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = self.pool.state();
        if let Some(n) = s.execs.get_mut(&self.container_id) {
            *n = n.saturating_sub(1);
        }
        drop(s);
        self.pool.inner.exec_done.notify_waiters();
    }
}

/// Waits for a recycle outcome with a bound, for callers that want to know.
pub async fn wait_recycled(
    rx: oneshot::Receiver<RecycleOutcome>,
    within: Duration,
) -> Option<RecycleOutcome> {
    timeout(within, rx).await.ok().and_then(|r| r.ok())
}
