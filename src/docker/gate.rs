//! The Docker gate: the one door every Docker call goes through.
//!
//! A call first asks the circuit breaker (fail fast with `Unavailable` while it is open), then
//! takes a slot of a semaphore (at most `max_concurrent` calls in flight; at most `max_queue`
//! callers waiting, one more fails at once with `Overloaded`), then runs under the gate's
//! timeout. Idempotent calls are retried with exponential backoff and jitter on transient
//! errors; a create is never retried blindly.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bollard::Docker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use super::breaker::{Breaker, BreakerState};
use super::error::DockerError;
use crate::config::GateConfig;

/// The gate. Cheap to share behind an `Arc`.
pub struct DockerGate {
    pub(super) docker: Docker,
    /// Slots for calls in flight; its size is `max_concurrent`.
    pub(super) permits: Arc<Semaphore>,
    pub(super) max_concurrent: usize,
    /// `Request` callers waiting for a slot right now, bounded by `max_queue`.
    pub(super) waiting: AtomicUsize,
    /// `Upkeep` callers waiting for a slot right now (not bounded; reported).
    pub(super) waiting_upkeep: AtomicUsize,
    pub(super) max_queue: usize,
    pub(super) breaker: Breaker,
    pub(super) call_timeout: Duration,
    pub(super) retry_attempts: usize,
    pub(super) retry_base: Duration,
    /// Requests sent to Docker, attempts included. Tests read it to prove that a path makes
    /// no Docker call; the metrics export it.
    pub(super) calls_total: AtomicU64,
    /// Calls that failed with a transient error (what the breaker counts).
    pub(super) failures_total: AtomicU64,
    /// Calls refused with `Overloaded`.
    pub(super) overloaded_total: AtomicU64,
}

/// A snapshot for `/api/pool`, `/readyz` and the metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateStatus {
    pub in_flight: usize,
    pub waiting: usize,
    pub max_concurrent: usize,
    pub max_queue: usize,
    pub breaker: BreakerState,
    pub calls_total: u64,
    pub failures_total: u64,
    pub overloaded_total: u64,
}

/// How a call waits for a slot when all are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Work a client is waiting for (its commands): it waits in the bounded queue, and
    /// past `max_queue` waiters it is refused at once with `Overloaded`.
    Request,
    /// The pool's own upkeep (create, start, scrub, remove, list, inspect): it waits for a slot
    /// without a queue bound, since refusing it would only leak or waste containers; its
    /// number is bounded by the pool's maximum. It still holds a slot while Docker works.
    Upkeep,
    /// Shutdown's listing and removal of the instance's containers: like `Upkeep`, and it
    /// also passes an open breaker (without probing it), since shutdown is not a client call
    /// and leaving containers behind is worse than one more try at a struggling Docker.
    Shutdown,
}

impl DockerGate {
    /// Connects to the Docker endpoint `host` (`unix:///path`) and negotiates the API version.
    /// An endpoint that does not answer is not an error here: the calls will fail through the
    /// breaker, which is how the service reports it.
    pub async fn connect(host: &str, config: &GateConfig) -> Result<Arc<Self>, DockerError> {
        // bollard's own timeout covers only the response headers; ours covers whole calls.
        // Keep bollard's a little longer so that ours is the one that fires.
        let bollard_timeout = config.call_timeout.as_secs() + 5;
        let docker = open_engine(
            host,
            config.tls_dir.as_deref(),
            bollard_timeout,
            bollard::API_DEFAULT_VERSION,
        )?;
        let docker = match timeout(Duration::from_secs(5), docker.clone().negotiate_version()).await
        {
            Ok(Ok(d)) => d,
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                // 1.41 (Docker 20.10) has every call sandpool makes.
                tracing::warn!(%error, "docker version negotiation failed, using API 1.41");
                open_engine(
                    host,
                    config.tls_dir.as_deref(),
                    bollard_timeout,
                    &bollard::ClientVersion {
                        major_version: 1,
                        minor_version: 41,
                    },
                )?
            }
        };
        Ok(Arc::new(Self {
            docker,
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            max_concurrent: config.max_concurrent,
            waiting: AtomicUsize::new(0),
            waiting_upkeep: AtomicUsize::new(0),
            max_queue: config.max_queue,
            breaker: Breaker::new(config.breaker_failures, config.breaker_cooldown),
            call_timeout: config.call_timeout,
            retry_attempts: config.retry_attempts,
            retry_base: config.retry_base,
            calls_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            overloaded_total: AtomicU64::new(0),
        }))
    }

    pub fn status(&self) -> GateStatus {
        GateStatus {
            in_flight: self.max_concurrent - self.permits.available_permits(),
            waiting: self.waiting.load(Ordering::Relaxed)
                + self.waiting_upkeep.load(Ordering::Relaxed),
            max_concurrent: self.max_concurrent,
            max_queue: self.max_queue,
            breaker: self.breaker.state(),
            calls_total: self.calls_total.load(Ordering::Relaxed),
            failures_total: self.failures_total.load(Ordering::Relaxed),
            overloaded_total: self.overloaded_total.load(Ordering::Relaxed),
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// While the breaker is open: when its cooldown ends and a call may probe Docker again.
    pub fn breaker_open_until(&self) -> Option<tokio::time::Instant> {
        self.breaker.open_until()
    }

    /// Takes a slot, waiting when none is free: `Request` callers in the bounded queue,
    /// `Upkeep` callers without a bound.
    pub(super) async fn admit(
        &self,
        op: &'static str,
        admission: Admission,
    ) -> Result<OwnedSemaphorePermit, DockerError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let counter = match admission {
            Admission::Request => &self.waiting,
            Admission::Upkeep | Admission::Shutdown => &self.waiting_upkeep,
        };
        let already = counter.fetch_add(1, Ordering::AcqRel);
        let _leave = DecrementOnDrop(counter);
        if admission == Admission::Request && already >= self.max_queue {
            self.overloaded_total.fetch_add(1, Ordering::Relaxed);
            return Err(DockerError::Overloaded { waiting: already });
        }
        // Upkeep may wait behind a long queue; give it more time than one call.
        let wait = match admission {
            Admission::Request => self.call_timeout,
            Admission::Upkeep | Admission::Shutdown => self.call_timeout * 4,
        };
        match timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout if it ever is.
            Ok(Err(_)) | Err(_) => Err(DockerError::Timeout { op, after: wait }),
        }
    }

    /// One attempt of a call, reported to the breaker.
    pub(super) async fn attempt<T, F, Fut>(
        &self,
        op: &'static str,
        admission: Admission,
        f: &F,
    ) -> Result<T, DockerError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>>,
    {
        let ticket = match admission {
            Admission::Shutdown => None,
            _ => Some(self.breaker.try_pass().ok_or(DockerError::Unavailable)?),
        };
        self.calls_total.fetch_add(1, Ordering::Relaxed);
        let result = match timeout(self.call_timeout, f()).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(DockerError::from_bollard(op, e)),
            Err(_) => Err(DockerError::Timeout {
                op,
                after: self.call_timeout,
            }),
        };
        match (&result, ticket) {
            (_, None) => {}
            (Ok(_), Some(ticket)) => ticket.success(),
            (Err(e), Some(ticket)) if e.is_transient() => {
                self.failures_total.fetch_add(1, Ordering::Relaxed);
                ticket.failure()
            }
            (Err(_), Some(ticket)) => ticket.neutral(),
        }
        result
    }

    /// Runs one Docker call through the gate. `idempotent` calls are retried on transient
    /// errors; others run once.
    pub(super) async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        idempotent: bool,
        admission: Admission,
        f: F,
    ) -> Result<T, DockerError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>>,
    {
        if self.breaker.state() == BreakerState::Open && admission != Admission::Shutdown {
            return Err(DockerError::Unavailable);
        }
        let _permit = self.admit(op, admission).await?;
        if !idempotent || self.retry_attempts <= 1 {
            return self.attempt(op, admission, &f).await;
        }
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry_base)
            .with_max_delay(self.retry_base * 16)
            .with_max_times(self.retry_attempts - 1)
            .with_jitter();
        (|| self.attempt(op, admission, &f))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(DockerError::is_transient)
            .notify(|error, delay| {
                tracing::debug!(op, %error, delay_ms = delay.as_millis() as u64, "retrying docker call")
            })
            .await
    }
}

/// A client for the engine at `host`: `unix:///path/to/docker.sock` (or a bare path), or
/// `tcp://host:port` (TLS with the client key, certificate and CA in `tls_dir`, as
/// `key.pem`, `cert.pem`, `ca.pem` like `DOCKER_CERT_PATH`; plain HTTP without it, for an
/// engine on a private network only).
fn open_engine(
    host: &str,
    tls_dir: Option<&std::path::Path>,
    timeout_secs: u64,
    version: &bollard::ClientVersion,
) -> Result<Docker, DockerError> {
    let connected = if host.starts_with("tcp://") || host.starts_with("https://") {
        match tls_dir {
            Some(dir) => Docker::connect_with_ssl(
                host,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                timeout_secs,
                version,
            ),
            None => Docker::connect_with_http(host, timeout_secs, version),
        }
    } else if host.starts_with("http://") {
        Docker::connect_with_http(host, timeout_secs, version)
    } else {
        let path = host.strip_prefix("unix://").unwrap_or(host);
        Docker::connect_with_unix(path, timeout_secs, version)
    };
    connected.map_err(|e| DockerError::from_bollard("connect", e))
}

struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
