//! The Docker calls the rest of the crate makes, each through the gate's `call` (admission,
//! breaker, timeout, retries): images, sandbox containers (create, start, attach, inspect,
//! list, remove), the event stream, and `exec`; with the plain types they return.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use bollard::container::LogOutput;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, timeout_at};

use super::error::DockerError;
use super::gate::{Admission, DockerGate};
use super::spec::{LABEL_APP, LABEL_INSTANCE, LABEL_ROLE, ROLE_SANDBOX, SandboxSpec};

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
    /// The instance it is labeled with (empty when unknown).
    pub instance: String,
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

impl DockerGate {
    /// Asks Docker whether it is there.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.call("ping", true, Admission::Request, || self.docker.ping())
            .await
            .map(|_| ())
    }

    /// The engine's own id (Docker's daemon ID, stable across its restarts): which engine
    /// a replica's sandboxes live on.
    pub async fn engine_id(&self) -> Result<String, DockerError> {
        self.call("info", true, Admission::Request, || self.docker.info())
            .await
            .map(|info| info.id.unwrap_or_default())
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
                instance: c
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(LABEL_INSTANCE).cloned())
                    .unwrap_or_default(),
                image: c.config.and_then(|c| c.image).unwrap_or_default(),
            })),
            Err(DockerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the replica whose instance id is `instance` runs, when that replica is a
    /// container on this engine whose host name is its instance id (the scaled-out stack):
    /// `Some(running)`; `None` when no such container is known (an instance outside a
    /// container, or one on another engine), so that nobody takes it for dead.
    pub async fn replica_running(&self, instance: &str) -> Result<Option<bool>, DockerError> {
        match self
            .call("inspect_container", true, Admission::Upkeep, || {
                self.docker.inspect_container(instance, None)
            })
            .await
        {
            Ok(c) => {
                let id_matches = c.id.as_deref().is_some_and(|id| id.starts_with(instance));
                let host_matches = c
                    .config
                    .as_ref()
                    .and_then(|c| c.hostname.as_deref())
                    .is_some_and(|h| h == instance);
                if !(id_matches && host_matches) {
                    return Ok(None);
                }
                Ok(Some(c.state.and_then(|s| s.running).unwrap_or(false)))
            }
            Err(DockerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every sandbox container of `instance_id`, running or not.
    pub async fn list_sandboxes(&self, instance_id: &str) -> Result<Vec<SandboxInfo>, DockerError> {
        self.list_sandboxes_as(Some(instance_id), Admission::Upkeep)
            .await
    }

    /// `list_sandboxes` for shutdown: passes an open breaker.
    pub async fn list_sandboxes_at_shutdown(
        &self,
        instance_id: &str,
    ) -> Result<Vec<SandboxInfo>, DockerError> {
        self.list_sandboxes_as(Some(instance_id), Admission::Shutdown)
            .await
    }

    /// Every sandpool sandbox on the engine, of every instance.
    pub async fn list_all_sandboxes(&self) -> Result<Vec<SandboxInfo>, DockerError> {
        self.list_sandboxes_as(None, Admission::Upkeep).await
    }

    async fn list_sandboxes_as(
        &self,
        instance_id: Option<&str>,
        admission: Admission,
    ) -> Result<Vec<SandboxInfo>, DockerError> {
        let mut labels = vec![
            format!("{LABEL_APP}=sandpool"),
            format!("{LABEL_ROLE}={ROLE_SANDBOX}"),
        ];
        if let Some(instance_id) = instance_id {
            labels.push(format!("{LABEL_INSTANCE}={instance_id}"));
        }
        let filters = HashMap::from([("label".to_string(), labels)]);
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
                    instance: c
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_INSTANCE).cloned())
                        .unwrap_or_default(),
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
