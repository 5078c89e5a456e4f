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
    pub max: usize,
    pub image: String,
    pub instance: String,
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
    /// Every container's place; changed only through `State`'s transitions.
    state: Mutex<State>,
    /// Woken when the refill task should look again (a lease, a removal, a hand-over).
    refill: Notify,
    /// Woken when a call into a leased container ends, for a release waiting for them.
    call_done: Notify,
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
    /// background tasks that pre-warm and refill it. Containers in `keep_leased` are adopted
    /// as leased, untouched: a session store knows they belong to live sessions.
    pub async fn start(
        gate: Arc<DockerGate>,
        config: &Config,
        observer: Arc<dyn PoolObserver>,
        keep_leased: &HashSet<String>,
    ) -> Result<Self, PoolError> {
        Self::start_leaving(gate, config, observer, keep_leased, &HashSet::new()).await
    }

    /// `start`, leaving alone the containers in `handed`: this instance gave them to another
    /// with their sessions (they carry its label but are not its own).
    pub async fn start_leaving(
        gate: Arc<DockerGate>,
        config: &Config,
        observer: Arc<dyn PoolObserver>,
        keep_leased: &HashSet<String>,
        handed: &HashSet<String>,
    ) -> Result<Self, PoolError> {
        let c = &config.pool;
        let pool = Self {
            inner: Arc::new(Inner {
                gate,
                config: c.clone(),
                image: config.image.image.clone(),
                instance_id: config.instance_id.clone(),
                state: Mutex::new(State::new(c.max, c.min_idle, c.idle_cap())),
                refill: Notify::new(),
                call_done: Notify::new(),
                observer,
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        pool.adopt_leftovers(keep_leased, handed).await?;
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

    /// Leased containers that died and are not released yet.
    pub fn lost_leases(&self) -> Vec<String> {
        self.state().lost_leases()
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
            max: self.inner.config.max,
            image: self.inner.image.clone(),
            instance: self.inner.instance_id.clone(),
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
