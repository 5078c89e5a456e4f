//! The container pool: a warm set of idle, scrubbed sandboxes, handed out in O(1) with no
//! Docker call, scrubbed and verified on release before anyone can lease them again, and kept
//! in line with Docker's own list.
//!
//! Every container moves through one place at a time:
//! `creating → idle → leased → scrubbing → idle` (or `→ destroying` when the scrub or the
//! verification fails, the container died, or it passed its maximum uses or age).
//!
//! Rooms, one job each:
//! - `state.rs`: where every container is, and the only code that changes it (named
//!   transitions that check the invariant: one place per container, at most `max`);
//! - `lease.rs`: acquire (idle set, create for the caller, or the queue), release, and the
//!   calls into a leased sandbox (commands, files, verification);
//! - `recycle.rs`: a released sandbox scrubbed and verified, back to the queue or the idle
//!   set, or destroyed;
//! - `upkeep.rs`: creates, the refill, Docker's events, reconcile, adoption of what an
//!   earlier run or a stopped instance left, removals;
//! - `lifecycle.rs`: close, abandon, shutdown;
//! - `queue.rs` (the waiting line and the demand), `scrub.rs` (the scrub's protocol and
//!   verdict), `supervisor.rs` (the link to the in-sandbox supervisor).
//!
//! This module knows nothing of sessions or sockets, and nothing of bollard: it talks to
//! Docker only through [`DockerGate`].

mod adopt;
mod lease;
mod lifecycle;
mod queue;
mod recycle;
mod scrub;
mod state;
pub mod supervisor;
mod upkeep;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, PoolConfig};
use crate::docker::{BreakerState, DockerError, DockerGate, GateStatus};

pub use queue::Place;
pub use recycle::wait_recycled;
pub use sandpool_supervisor::proto::FileRequest;
pub use sandpool_supervisor::proto::Pong;
pub use scrub::Verdict;
pub use supervisor::{CommandOutput, CommandSpec, OutputChunk, OutputStream, SupervisorError};

use state::State;

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
    /// The lease named is not the container's current one: the container was released and
    /// leased again, or taken over by another holder. A stale holder must not touch it.
    #[error("lease {lease} is stale: the sandbox is no longer held under it")]
    Stale { lease: LeaseRef },
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

    /// What this error means for the caller, without the Docker details behind it: the
    /// layers above map this to what their clients see.
    pub fn failure(&self) -> Failure {
        match self {
            PoolError::Exhausted { .. } => Failure::Exhausted,
            PoolError::QueueFull { .. } => Failure::QueueFull,
            PoolError::Closed => Failure::Closed,
            PoolError::NotLeased(_) => Failure::NotLeased,
            PoolError::Stale { .. } | PoolError::Supervisor(SupervisorError::Fenced(_)) => {
                Failure::Stale
            }
            PoolError::Create(d) | PoolError::Docker(d) => match d {
                DockerError::Overloaded { .. } => Failure::DockerOverloaded,
                DockerError::Unavailable => Failure::DockerUnavailable,
                _ => Failure::DockerFailed,
            },
            PoolError::Supervisor(SupervisorError::Failed { code, message }) => Failure::Refused {
                code: code.clone(),
                message: message.clone(),
            },
            PoolError::Supervisor(_) => Failure::SandboxDied,
        }
    }
}

/// What a [`PoolError`] means for the caller (see [`PoolError::failure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No sandbox free within the acquire deadline.
    Exhausted,
    /// The queue for sandboxes is full.
    QueueFull,
    /// The pool is shutting down.
    Closed,
    /// The container is not leased (any more).
    NotLeased,
    /// The lease is stale: another holder has the sandbox now (fenced).
    Stale,
    /// The Docker gate refused the call: too many callers wait.
    DockerOverloaded,
    /// Docker's circuit breaker is open.
    DockerUnavailable,
    /// A Docker call failed (logged where it failed).
    DockerFailed,
    /// The supervisor refused the request: its code (`not_found`, `busy`, ...) and message.
    Refused { code: String, message: String },
    /// The sandbox's supervisor is gone, and so is the sandbox.
    SandboxDied,
}

/// Names a held sandbox across a boundary: which container, and under which lease. The
/// `fence` is a fencing token that is never reused, and a later holder of the same container
/// always holds a larger one (see ARCHITECTURE.md, "Ownership and fencing"). Every operation
/// on a leased sandbox names one; the pool refuses a stale one, and the sandbox's supervisor
/// refuses requests of an older generation than the newest it has served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    pub container_id: String,
    pub fence: u64,
}

impl std::fmt::Display for LeaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short: String = self.container_id.chars().take(12).collect();
        write!(f, "{short}#{:x}", self.fence)
    }
}

/// The first fencing token of `epoch`: tokens are `epoch << 32 | n`, and epochs come from the
/// session store (a counter every replica shares, never below the clock in seconds), so a
/// later epoch's tokens are larger than any earlier one's.
pub fn epoch_base(epoch: u64) -> u64 {
    epoch << 32
}

/// The epoch a fencing token was minted in.
pub fn epoch_of(fence: u64) -> u64 {
    fence >> 32
}

/// A leased sandbox.
#[derive(Debug, Clone)]
pub struct Lease {
    pub container_id: String,
    /// This lease's fencing token (see [`LeaseRef`]).
    pub fence: u64,
    pub container_name: String,
    /// How many leases this container has served, this one included.
    pub uses: u32,
    /// How long `acquire` took.
    pub waited: Duration,
}

impl Lease {
    /// The name of this lease for operations on its sandbox.
    pub fn lease_ref(&self) -> LeaseRef {
        LeaseRef {
            container_id: self.container_id.clone(),
            fence: self.fence,
        }
    }
}

/// How a pool starts: what the session store says about the containers it may find, and
/// where its fencing tokens begin.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    /// Leases of live sessions this instance holds (a restart after a crash): their
    /// containers are adopted as leased under these leases, untouched, whatever their label.
    pub keep_leased: Vec<LeaseRef>,
    /// Containers labeled with this instance that another instance serves now (handed over
    /// or taken over, as the store or the sandbox's own supervisor says): left alone.
    pub handed: HashSet<String>,
    /// This incarnation's epoch (from the store); 0: the clock in seconds (no shared store).
    pub epoch: u64,
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

/// Counts for the status routes and the gauges (the routes build their own wire types).
#[derive(Debug, Clone)]
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
    /// Operations refused because they named a stale lease, or that the sandbox's supervisor
    /// fenced out (another holder served a newer generation), since start.
    pub stale_refusals: u64,
    pub max: usize,
    pub image: String,
    pub instance: String,
    /// The engine the sandboxes live on (Docker's daemon ID; empty if it did not say).
    pub engine: String,
    pub closed: bool,
    /// The Docker gate under the pool.
    pub gate: GateStatus,
}

/// Hooks through which the pool reports what it does, so that it need not know the metrics.
pub trait PoolObserver: Send + Sync + 'static {
    /// An `acquire` ended; `outcome` is `ok`, `exhausted`, `queue_full`, `closed` or `error`.
    fn acquired(&self, _took: Duration, _outcome: &'static str) {}
    /// A release ended in `outcome` after `took` (scrub and verify included).
    fn recycled(&self, _took: Duration, _outcome: &RecycleOutcome) {}
    /// A container create (and start) ended.
    fn created(&self, _took: Duration, _ok: bool) {}
}

/// An observer that ignores everything.
pub struct NoopObserver;
impl PoolObserver for NoopObserver {}

struct Inner {
    gate: Arc<DockerGate>,
    config: PoolConfig,
    image: String,
    instance_id: String,
    /// Docker's daemon ID of the engine (see `PoolStatus::engine`), asked once at start.
    engine_id: String,
    /// `proto::holder_of(instance_id)`: sent with every supervisor request, so a sandbox can
    /// say which instance holds its newest generation.
    holder: u64,
    /// Every container's place; changed only through `State`'s transitions.
    state: Mutex<State>,
    /// Woken when the refill task should look again (a lease, a removal, a hand-over).
    refill: Notify,
    /// Woken when a call into a leased container ends, for a release waiting for them.
    call_done: Notify,
    /// See `PoolStatus::stale_refusals`.
    stale_refusals: std::sync::atomic::AtomicU64,
    observer: Arc<dyn PoolObserver>,
    /// Stops the background tasks.
    cancel: CancellationToken,
    /// Every task the pool spawns (refill, watchers, recycles, removals), so that shutdown
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
    /// background tasks that pre-warm and refill it. `startup` says which containers belong
    /// to live sessions (adopted as leased, untouched) and which another instance serves
    /// (left alone), and where the fencing tokens begin.
    pub async fn start(
        gate: Arc<DockerGate>,
        config: &Config,
        observer: Arc<dyn PoolObserver>,
        startup: Startup,
    ) -> Result<Self, PoolError> {
        let c = &config.pool;
        let epoch = match startup.epoch {
            0 => now_unix().max(1) as u64,
            epoch => epoch,
        };
        let engine_id = match gate.engine_id().await {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(%error, "the engine did not say its id");
                String::new()
            }
        };
        let pool = Self {
            inner: Arc::new(Inner {
                gate,
                engine_id,
                config: c.clone(),
                image: config.image.image.clone(),
                instance_id: config.instance_id.clone(),
                holder: sandpool_supervisor::proto::holder_of(&config.instance_id),
                state: Mutex::new(State::new(
                    c.max,
                    c.min_idle,
                    c.idle_cap(),
                    epoch_base(epoch),
                )),
                refill: Notify::new(),
                call_done: Notify::new(),
                stale_refusals: Default::default(),
                observer,
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        pool.adopt_leftovers(&startup.keep_leased, &startup.handed)
            .await?;
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
        // Every transition checks its invariant before it returns and none can panic half-way
        // through in release builds, so a poisoned lock is still consistent.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Changes whenever a leased container dies (killed from outside, its supervisor gone):
    /// wait on it, then read [`ContainerPool::lost_leases`]. Its holder should end the
    /// session or release it; the release destroys it. A state rather than events, so that
    /// a holder that is slow to look misses nothing.
    pub fn watch_lost(&self) -> watch::Receiver<u64> {
        self.state().watch_lost()
    }

    /// Leases whose container died and that are not released yet.
    pub fn lost_leases(&self) -> Vec<LeaseRef> {
        self.state().lost_leases()
    }

    /// Moves the fencing tokens on to a new epoch from the store (taken before a takeover,
    /// and when this epoch's tokens run low), so that the next ones are larger than any token
    /// minted under an earlier epoch by any instance.
    pub fn advance_epoch(&self, epoch: u64) {
        self.state().advance_fences(epoch_base(epoch));
    }

    /// How many fencing tokens this epoch has minted (a new epoch is due past 2^31).
    pub fn fences_minted(&self) -> u64 {
        self.state().fences_minted()
    }

    pub fn status(&self) -> PoolStatus {
        let (counts, total) = {
            let mut s = self.state();
            (s.counts(), s.total())
        };
        PoolStatus {
            idle: counts.idle,
            leased: counts.leased,
            creating: counts.creating,
            scrubbing: counts.scrubbing,
            destroying: counts.destroying,
            total,
            min_idle: self.inner.config.min_idle,
            idle_target: counts.idle_target,
            waiting: counts.waiting,
            stale_refusals: self
                .inner
                .stale_refusals
                .load(std::sync::atomic::Ordering::Relaxed),
            max: self.inner.config.max,
            image: self.inner.image.clone(),
            instance: self.inner.instance_id.clone(),
            engine: self.inner.engine_id.clone(),
            closed: counts.closed,
            gate: self.inner.gate.status(),
        }
    }

    /// Whether an `acquire` can be served now: a container is idle (or none is wanted idle)
    /// and the breaker is not open.
    pub fn is_ready(&self) -> Result<(), &'static str> {
        let s = self.state();
        if s.is_closed() {
            return Err("pool is shutting down");
        }
        if self.inner.gate.breaker_state() == BreakerState::Open {
            return Err("docker circuit breaker is open");
        }
        if s.idle_len() == 0 && self.inner.config.min_idle > 0 {
            return Err("no idle sandbox yet");
        }
        Ok(())
    }

    /// The instance id this pool labels its containers with.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The current lease of a leased container (the session layer names it in its records).
    pub fn lease_of(&self, container_id: &str) -> Option<LeaseRef> {
        self.state().lease_of(container_id)
    }

    /// Whether `container_id` was handed over to another instance with its session.
    pub fn is_handed_over(&self, container_id: &str) -> bool {
        self.state().is_handed_over(container_id)
    }

    /// Waits until at least `n` containers are idle, or the timeout passes.
    pub async fn wait_idle(&self, n: usize, within: Duration) -> bool {
        let mut idle = self.state().watch_idle();
        tokio::time::timeout(within, idle.wait_for(|idle| *idle >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
