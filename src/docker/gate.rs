//! The Docker gate: the one door every Docker call goes through.
//!
//! A call first asks the circuit breaker (fail fast with `Unavailable` while it is open), then
//! takes a slot of a semaphore (at most `max_concurrent` calls in flight; at most `max_queue`
//! callers waiting, one more fails at once with `Overloaded`), then runs under the gate's
//! timeout. Idempotent calls are retried with exponential backoff and jitter on transient
//! errors; a create is never retried blindly.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, timeout, timeout_at};

use super::breaker::{Breaker, BreakerState};
use super::error::DockerError;
use super::spec::{LABEL_APP, LABEL_INSTANCE, LABEL_ROLE, ROLE_SANDBOX, SandboxSpec};
use crate::config::GateConfig;

/// The gate. Cheap to share behind an `Arc`.
pub struct DockerGate {
    docker: Docker,
    /// Slots for calls in flight; its size is `max_concurrent`.
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    /// `Request` callers waiting for a slot right now, bounded by `max_queue`.
    waiting: AtomicUsize,
    /// `Upkeep` callers waiting for a slot right now (not bounded; reported).
    waiting_upkeep: AtomicUsize,
    max_queue: usize,
    breaker: Breaker,
    call_timeout: Duration,
    retry_attempts: usize,
    retry_base: Duration,
    /// Requests sent to Docker, attempts included. Tests read it to prove that a path makes
    /// no Docker call; the metrics export it.
    calls_total: AtomicU64,
    /// Calls that failed with a transient error (what the breaker counts).
    failures_total: AtomicU64,
    /// Calls refused with `Overloaded`.
    overloaded_total: AtomicU64,
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

/// What Docker says of one sandbox container.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub id: String,
    /// The container's name, without Docker's leading `/`.
    pub name: String,
    pub running: bool,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: i64,
    pub image: String,
    /// Labeled as a sandpool sandbox (of any instance).
    pub is_sandbox: bool,
}

/// A container event from Docker's event stream, for containers of one instance.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub id: String,
    pub action: String,
}

/// A piece of what a container's main process wrote.
#[derive(Debug, Clone)]
pub enum AttachChunk {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
}

/// The two directions of an attach: the container's output, and its stdin.
pub struct Attached {
    pub output: Pin<Box<dyn Stream<Item = Result<AttachChunk, DockerError>> + Send>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
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

/// A command to run in a container.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    /// `uid:gid` to run as.
    pub user: String,
    pub working_dir: Option<String>,
    pub env: Vec<String>,
    /// Upper bound on the whole exec, streamed output included.
    pub timeout: Duration,
    /// Bytes kept per stream; the rest is read and dropped, and `truncated` is set.
    pub output_limit: usize,
    /// A client's command (`Request`) or the pool's own (`Upkeep`: scrub, kill).
    pub admission: Admission,
}

/// Which stream a chunk of exec output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A chunk of exec output, for callers that stream it on.
#[derive(Debug, Clone)]
pub struct ExecChunk {
    pub stream: OutputStream,
    pub data: bytes::Bytes,
}

/// What an exec produced.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// `None` when the command was still running at the timeout.
    pub exit_code: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub timed_out: bool,
}

impl DockerGate {
    /// Connects to the Docker endpoint `host` (`unix:///path`) and negotiates the API version.
    /// An endpoint that does not answer is not an error here: the calls will fail through the
    /// breaker, which is how the service reports it.
    pub async fn connect(host: &str, config: &GateConfig) -> Result<Arc<Self>, DockerError> {
        let path = host.strip_prefix("unix://").unwrap_or(host);
        // bollard's own timeout covers only the response headers; ours covers whole calls.
        // Keep bollard's a little longer so that ours is the one that fires.
        let bollard_timeout = config.call_timeout.as_secs() + 5;
        let docker = Docker::connect_with_unix(path, bollard_timeout, bollard::API_DEFAULT_VERSION)
            .map_err(|e| DockerError::from_bollard("connect", e))?;
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
                Docker::connect_with_unix(
                    path,
                    bollard_timeout,
                    &bollard::ClientVersion {
                        major_version: 1,
                        minor_version: 41,
                    },
                )
                .map_err(|e| DockerError::from_bollard("connect", e))?
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
    async fn admit(
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
    async fn attempt<T, F, Fut>(
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
    async fn call<T, F, Fut>(
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

    /// Asks Docker whether it is there.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.call("ping", true, Admission::Request, || self.docker.ping())
            .await
            .map(|_| ())
    }

    /// The labels of the image `tag`, or `None` when Docker does not have it.
    pub async fn image_labels(
        &self,
        tag: &str,
    ) -> Result<Option<HashMap<String, String>>, DockerError> {
        match self
            .call("inspect_image", true, Admission::Upkeep, || {
                self.docker.inspect_image(tag)
            })
            .await
        {
            Ok(image) => Ok(Some(
                image.config.and_then(|c| c.labels).unwrap_or_default(),
            )),
            Err(DockerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Builds an image from a tar build context with the classic builder, which needs no
    /// registry for `FROM scratch`. Returns the build log.
    pub async fn build_image(
        &self,
        tag: &str,
        context_tar: bytes::Bytes,
        build_args: &HashMap<String, String>,
        labels: &HashMap<String, String>,
    ) -> Result<String, DockerError> {
        let op = "build_image";
        let _permit = self.admit(op, Admission::Upkeep).await?;
        let ticket = self.breaker.try_pass().ok_or(DockerError::Unavailable)?;
        self.calls_total.fetch_add(1, Ordering::Relaxed);
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .buildargs(build_args)
            .labels(labels)
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(context_tar)));
        let mut log = String::new();
        // Building is slow next to other calls; give it ten call timeouts.
        let deadline = Instant::now() + self.call_timeout * 10;
        loop {
            match timeout_at(deadline, stream.next()).await {
                Err(_) => {
                    ticket.failure();
                    return Err(DockerError::Timeout {
                        op,
                        after: self.call_timeout * 10,
                    });
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let e = DockerError::from_bollard(op, e);
                    if e.is_transient() {
                        ticket.failure();
                    } else {
                        ticket.neutral();
                    }
                    return Err(e);
                }
                Ok(Some(Ok(info))) => {
                    if let Some(s) = info.stream {
                        log.push_str(&s);
                    }
                    if let Some(detail) = info.error_detail {
                        ticket.neutral();
                        return Err(DockerError::Api {
                            op,
                            status: 400,
                            message: detail.message.unwrap_or_default(),
                        });
                    }
                }
            }
        }
        ticket.success();
        Ok(log)
    }

    /// Creates a sandbox container (not started). Never retried: a create that failed after
    /// Docker made the container would otherwise make two; the reconcile loop removes any
    /// container a failed create left behind.
    pub async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<String, DockerError> {
        let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let body = spec.to_create_body();
        let created = self
            .call("create_container", false, Admission::Upkeep, || {
                self.docker
                    .create_container(Some(options.clone()), body.clone())
            })
            .await?;
        Ok(created.id)
    }

    /// Attaches to a running sandbox's stdin and stdout/stderr: the long-lived link to its
    /// supervisor. The connection is Docker's own (an upgraded HTTP connection), so it works
    /// wherever the Docker API reaches; it holds a gate slot only while it is being set up.
    /// Without a TTY Docker copies stdin verbatim (no detach-key scanning), so binary frames
    /// pass untouched.
    pub async fn attach(&self, id: &str) -> Result<Attached, DockerError> {
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .call("attach_container", true, Admission::Upkeep, || {
                self.docker.attach_container(id, Some(options.clone()))
            })
            .await?;
        let output = attached.output.filter_map(|item| async move {
            match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(Ok(AttachChunk::Stdout(message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(AttachChunk::Stderr(message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(DockerError::from_bollard("attach_output", e))),
            }
        });
        Ok(Attached {
            output: Box::pin(output),
            input: attached.input,
        })
    }

    /// Starts a created container (idempotent: starting a running container is a no-op).
    pub async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        self.call("start_container", true, Admission::Upkeep, || {
            self.docker.start_container(id, None)
        })
        .await
    }

    /// Removes a container, killing it first. A container that is already gone is success.
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        self.remove_container_as(id, Admission::Upkeep).await
    }

    /// `remove_container` for shutdown: passes an open breaker.
    pub async fn remove_container_at_shutdown(&self, id: &str) -> Result<(), DockerError> {
        self.remove_container_as(id, Admission::Shutdown).await
    }

    async fn remove_container_as(&self, id: &str, admission: Admission) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self
            .call("remove_container", true, admission, || {
                self.docker.remove_container(id, Some(options.clone()))
            })
            .await
        {
            Ok(()) | Err(DockerError::NotFound { .. }) => Ok(()),
            // 409: removal already in progress; it will be gone shortly.
            Err(DockerError::Api { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What Docker says of one container; `None` when it does not exist.
    pub async fn inspect_sandbox(&self, id: &str) -> Result<Option<SandboxInfo>, DockerError> {
        match self
            .call("inspect_container", true, Admission::Upkeep, || {
                self.docker.inspect_container(id, None)
            })
            .await
        {
            Ok(c) => Ok(Some(SandboxInfo {
                is_sandbox: c
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .is_some_and(|l| {
                        l.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_SANDBOX)
                            && l.get(LABEL_APP).map(String::as_str) == Some("sandpool")
                    }),
                name: c
                    .name
                    .as_deref()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                id: c.id.unwrap_or_else(|| id.to_string()),
                running: c.state.and_then(|s| s.running).unwrap_or(false),
                created_unix: c
                    .created
                    .as_deref()
                    .and_then(parse_rfc3339_seconds)
                    .unwrap_or(0),
                image: c.config.and_then(|c| c.image).unwrap_or_default(),
            })),
            Err(DockerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every sandbox container of `instance_id`, running or not.
    pub async fn list_sandboxes(&self, instance_id: &str) -> Result<Vec<SandboxInfo>, DockerError> {
        self.list_sandboxes_as(instance_id, Admission::Upkeep).await
    }

    /// `list_sandboxes` for shutdown: passes an open breaker.
    pub async fn list_sandboxes_at_shutdown(
        &self,
        instance_id: &str,
    ) -> Result<Vec<SandboxInfo>, DockerError> {
        self.list_sandboxes_as(instance_id, Admission::Shutdown)
            .await
    }

    async fn list_sandboxes_as(
        &self,
        instance_id: &str,
        admission: Admission,
    ) -> Result<Vec<SandboxInfo>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_INSTANCE}={instance_id}"),
                format!("{LABEL_ROLE}={ROLE_SANDBOX}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .call("list_containers", true, admission, || {
                self.docker.list_containers(Some(options.clone()))
            })
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(SandboxInfo {
                    name: c
                        .names
                        .as_ref()
                        .and_then(|n| n.first())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    id: c.id?,
                    running: c.state.map(|s| s.to_string() == "running").unwrap_or(false),
                    created_unix: c.created.unwrap_or(0),
                    image: c.image.unwrap_or_default(),
                    is_sandbox: true,
                })
            })
            .collect())
    }

    /// Docker's event stream for the containers of `instance_id`. This is the one long-lived
    /// stream of the gate: it does not hold a slot (it would hold it forever) and it does not
    /// count as a call. The caller reconnects when it ends.
    pub fn container_events(
        &self,
        instance_id: &str,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + use<> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("{LABEL_INSTANCE}={instance_id}")],
            ),
            (
                "event".to_string(),
                // Not `oom`: the kernel killing a tenant process for memory leaves the
                // container (and its supervisor) alive; a container that dies says `die`.
                vec!["die".to_string(), "destroy".to_string()],
            ),
        ]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        self.docker
            .events(Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(msg) => {
                        let id = msg.actor.and_then(|a| a.id)?;
                        Some(Ok(ContainerEvent {
                            id,
                            action: msg.action.unwrap_or_default(),
                        }))
                    }
                    Err(e) => Some(Err(DockerError::from_bollard("events", e))),
                }
            })
    }

    /// Runs a command in a container and collects its output, keeping at most
    /// `spec.output_limit` bytes per stream. Chunks are also sent to `sink` when one is given
    /// (bounded channel: a slow reader slows the exec down instead of growing memory).
    ///
    /// The slot is held while Docker creates and starts the exec; the output is read outside
    /// it (a long command must not starve the pool) but within `spec.timeout`. On timeout the
    /// output so far is returned with `timed_out` set; killing the command is the caller's
    /// business, since only it knows which processes are the command's.
    pub async fn exec(
        &self,
        container_id: &str,
        spec: &ExecSpec,
        sink: Option<&mpsc::Sender<ExecChunk>>,
    ) -> Result<ExecOutput, DockerError> {
        let deadline = Instant::now() + spec.timeout;
        let options = CreateExecOptions {
            cmd: Some(spec.cmd.clone()),
            user: Some(spec.user.clone()),
            working_dir: spec.working_dir.clone(),
            env: Some(spec.env.clone()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            tty: Some(false),
            ..Default::default()
        };
        let (exec_id, started) = {
            let permit = self.admit("exec", spec.admission).await?;
            let created = self
                .attempt("create_exec", spec.admission, &|| {
                    self.docker.create_exec(container_id, options.clone())
                })
                .await?;
            let started = self
                .attempt("start_exec", spec.admission, &|| {
                    self.docker.start_exec(
                        &created.id,
                        Some(StartExecOptions {
                            detach: false,
                            tty: false,
                            output_capacity: Some(64 * 1024),
                        }),
                    )
                })
                .await?;
            drop(permit);
            (created.id, started)
        };
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(DockerError::Api {
                op: "start_exec",
                status: 500,
                message: "exec started detached".into(),
            });
        };
        let mut result = ExecOutput::default();
        loop {
            let item = match timeout_at(deadline, output.next()).await {
                Err(_) => {
                    result.timed_out = true;
                    return Ok(result);
                }
                Ok(None) => break,
                Ok(Some(item)) => item,
            };
            let (stream, data) = match item {
                Ok(LogOutput::StdOut { message }) => (OutputStream::Stdout, message),
                Ok(LogOutput::StdErr { message }) => (OutputStream::Stderr, message),
                Ok(LogOutput::Console { message }) => (OutputStream::Stdout, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) => return Err(DockerError::from_bollard("exec_output", e)),
            };
            let kept = match stream {
                OutputStream::Stdout => &mut result.stdout,
                OutputStream::Stderr => &mut result.stderr,
            };
            let room = spec.output_limit.saturating_sub(kept.len());
            let take = room.min(data.len());
            if take < data.len() {
                result.truncated = true;
            }
            if take == 0 {
                continue;
            }
            kept.extend_from_slice(&data[..take]);
            if let Some(sink) = sink {
                let chunk = ExecChunk {
                    stream,
                    data: data.slice(..take),
                };
                if timeout_at(deadline, sink.send(chunk)).await.is_err() {
                    result.timed_out = true;
                    return Ok(result);
                }
            }
        }
        let inspected = self
            // The command has run: its result must not be refused as overload now.
            .call("inspect_exec", true, Admission::Upkeep, || {
                self.docker.inspect_exec(&exec_id)
            })
            .await?;
        result.exit_code = inspected.exit_code;
        Ok(result)
    }
}

struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Seconds since the epoch of an RFC 3339 time such as `2026-11-22T04:37:01.123Z`;
/// `None` when it does not parse.
fn parse_rfc3339_seconds(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339_seconds;

    #[test]
    fn parses_docker_timestamps() {
        assert_eq!(parse_rfc3339_seconds("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(
            parse_rfc3339_seconds("1970-01-02T00:00:01.123456789Z"),
            Some(86_401)
        );
        assert_eq!(parse_rfc3339_seconds("nonsense"), None);
    }
}
