//! Every metric of the service, in one place, under the `sandpool_` prefix.
//!
//! Label values come from small fixed sets (container states, outcomes, breaker states); never
//! a container or session id. Gauges that mirror a snapshot (pool counts, gate queue, breaker)
//! are set at scrape time from `status()`; histograms are fed by the [`PoolObserver`] hooks.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::docker::{BreakerState, DockerGate};
use crate::pool::{PoolObserver, RecycleOutcome};
use crate::session::SessionManager;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The registry and the metrics the code feeds.
pub struct Metrics {
    registry: Registry,
    pool_containers: Family<StateLabel, Gauge>,
    pool_idle_target: Gauge,
    pool_waiting: Gauge,
    sessions: Family<StateLabel, Gauge>,
    docker_in_flight: Gauge,
    docker_queue_depth: Gauge,
    docker_breaker_state: Family<StateLabel, Gauge>,
    acquire_seconds: Family<OutcomeLabel, Histogram>,
    recycle_seconds: Family<OutcomeLabel, Histogram>,
    create_seconds: Family<OutcomeLabel, Histogram>,
    handout_seconds: Histogram,
    exec_seconds: Family<OutcomeLabel, Histogram>,
    api_errors: Family<CodeLabel, Counter>,
    ownership_events: Family<EventLabel, Counter>,
    bus_up: Gauge,
    checkpoint_seconds: Family<OutcomeLabel, Histogram>,
    undo_seconds: Family<OutcomeLabel, Histogram>,
    file_bytes: Family<EventLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// A latency histogram per outcome.
fn outcome_histograms() -> Family<OutcomeLabel, Histogram> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

impl Metrics {
    pub fn new(gate: Arc<DockerGate>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("sandpool");
        let pool_containers = Family::<StateLabel, Gauge>::default();
        registry.register(
            "pool_containers",
            "Containers of this instance by state",
            pool_containers.clone(),
        );
        let sessions = Family::<StateLabel, Gauge>::default();
        registry.register(
            "sessions",
            "Sessions this instance holds, by state",
            sessions.clone(),
        );
        let pool_idle_target = Gauge::default();
        registry.register(
            "pool_idle_target",
            "Idle sandboxes the refill keeps now: the floor raised to cover recent arrivals",
            pool_idle_target.clone(),
        );
        let pool_waiting = Gauge::default();
        registry.register(
            "pool_waiting",
            "Callers queued for a sandbox",
            pool_waiting.clone(),
        );
        let docker_in_flight = Gauge::default();
        registry.register(
            "docker_in_flight",
            "Docker calls in flight in the gate",
            docker_in_flight.clone(),
        );
        let docker_queue_depth = Gauge::default();
        registry.register(
            "docker_queue_depth",
            "Callers waiting for a Docker gate slot",
            docker_queue_depth.clone(),
        );
        let docker_breaker_state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "docker_breaker_state",
            "1 for the circuit breaker's current state, 0 for the others",
            docker_breaker_state.clone(),
        );
        let acquire_seconds = outcome_histograms();
        registry.register(
            "pool_acquire_seconds",
            "Time to lease a sandbox, by outcome",
            acquire_seconds.clone(),
        );
        let recycle_seconds = outcome_histograms();
        registry.register(
            "pool_recycle_seconds",
            "Time from release to idle again (scrub and verify) or destroyed, by outcome",
            recycle_seconds.clone(),
        );
        let create_seconds = outcome_histograms();
        registry.register(
            "pool_create_seconds",
            "Time to create and start a sandbox, by outcome",
            create_seconds.clone(),
        );
        let handout_seconds = latency_histogram();
        registry.register(
            "session_handout_seconds",
            "Time from a socket connecting to its `session` event",
            handout_seconds.clone(),
        );
        let exec_seconds = outcome_histograms();
        registry.register(
            "exec_seconds",
            "Commands run for sessions (exec and approved tool calls), by outcome: ok, timeout, error, rejected",
            exec_seconds.clone(),
        );
        let api_errors = Family::<CodeLabel, Counter>::default();
        registry.register(
            "api_errors",
            "Errors sent to clients, by code",
            api_errors.clone(),
        );
        let ownership_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "ownership_events",
            "Sessions that changed hands through this replica (handed_out, handed_in, taken_over, drained) and operations refused under a stale lease (stale_refused)",
            ownership_events.clone(),
        );
        let bus_up = Gauge::default();
        registry.register(
            "bus_up",
            "1 while this replica's hand-over bus subscription is up",
            bus_up.clone(),
        );
        let checkpoint_seconds = outcome_histograms();
        registry.register(
            "checkpoint_seconds",
            "Checkpoints of a workspace before a tool call, by outcome: ok, too_large, busy, error",
            checkpoint_seconds.clone(),
        );
        let undo_seconds = outcome_histograms();
        registry.register(
            "undo_seconds",
            "Undos (restores of a checkpoint), by outcome: ok, busy, not_found, error",
            undo_seconds.clone(),
        );
        let file_bytes = Family::<EventLabel, Counter>::default();
        registry.register(
            "file_bytes",
            "File bytes moved through the file API, by event: upload (written) and download (read)",
            file_bytes.clone(),
        );
        registry.register_collector(Box::new(GateCounters { gate }));
        Arc::new(Self {
            registry,
            pool_containers,
            pool_idle_target,
            pool_waiting,
            sessions,
            docker_in_flight,
            docker_queue_depth,
            docker_breaker_state,
            acquire_seconds,
            recycle_seconds,
            create_seconds,
            handout_seconds,
            exec_seconds,
            api_errors,
            ownership_events,
            bus_up,
            checkpoint_seconds,
            undo_seconds,
            file_bytes,
        })
    }

    /// A checkpoint was taken (`ok`) or not (its error code) in `took`.
    pub fn checkpoint_done(&self, outcome: &'static str, took: Duration) {
        self.checkpoint_seconds
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }

    /// An undo ended with `outcome` (`ok` or its error code) after `took`.
    pub fn undo_done(&self, outcome: &'static str, took: Duration) {
        self.undo_seconds
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }

    /// `bytes` of file content moved: `event` is `upload` or `download`.
    pub fn file_bytes(&self, event: &'static str, bytes: u64) {
        self.file_bytes
            .get_or_create(&EventLabel { event })
            .inc_by(bytes);
    }

    /// A socket got its `session` after `took`.
    pub fn handout(&self, took: Duration) {
        self.handout_seconds.observe(took.as_secs_f64());
    }

    /// A command ended with `outcome` (ok, timeout, error, rejected).
    pub fn exec_done(&self, outcome: &'static str, took: Duration) {
        self.exec_seconds
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }

    /// An error with `code` was sent to a client.
    pub fn api_error(&self, code: &'static str) {
        self.api_errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// The Prometheus text exposition, with the snapshot gauges refreshed from `pool`.
    pub fn render(&self, sessions: &SessionManager) -> String {
        for (state, n) in sessions.local_counts() {
            self.sessions
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        let status = sessions.pool_status();
        for (state, n) in [
            ("idle", status.idle),
            ("leased", status.leased),
            ("creating", status.creating),
            ("scrubbing", status.scrubbing),
            ("destroying", status.destroying),
        ] {
            self.pool_containers
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        self.pool_idle_target.set(status.idle_target as i64);
        self.pool_waiting.set(status.waiting as i64);
        let gate = &status.gate;
        self.docker_in_flight.set(gate.in_flight as i64);
        self.docker_queue_depth.set(gate.waiting as i64);
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            self.docker_breaker_state
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(i64::from(state == gate.breaker));
        }
        // The session layer keeps these as plain totals; the counters catch up to them.
        for (event, total) in sessions.ownership_counts() {
            let counter = self.ownership_events.get_or_create(&EventLabel { event });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.bus_up.set(i64::from(sessions.bus_up()));
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        out
    }
}

impl PoolObserver for Metrics {
    fn acquired(&self, took: Duration, outcome: &'static str) {
        self.acquire_seconds
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }
    fn recycled(&self, took: Duration, outcome: &RecycleOutcome) {
        self.recycle_seconds
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .observe(took.as_secs_f64());
    }
    fn created(&self, took: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.create_seconds
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }
}

/// The gate's own counters, read at scrape time.
struct GateCounters {
    gate: Arc<DockerGate>,
}

impl std::fmt::Debug for GateCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateCounters")
    }
}

impl Collector for GateCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.gate.status();
        for (name, help, value) in [
            (
                "docker_calls",
                "Requests sent to Docker, retries included",
                status.calls_total,
            ),
            (
                "docker_failures",
                "Docker calls that failed with a transient error",
                status.failures_total,
            ),
            (
                "docker_overloaded",
                "Docker calls refused because the gate's queue was full",
                status.overloaded_total,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
