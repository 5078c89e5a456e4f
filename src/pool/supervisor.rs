//! The host side of a sandbox's supervisor: one long-lived, multiplexed link per container
//! over its attach stream (see `supervisor/src/lib.rs` for the frames). Requests carry ids, so
//! several commands and file operations of a session run at once; command output flows within
//! a per-command credit window, so one slow reader never stalls the others and memory stays
//! bounded.
//!
//! A link that ends (the container stopped, the attach broke), sends a malformed frame, or
//! does not answer within its deadline is dead for good: its container is treated as dead by
//! the pool (destroyed, never handed out again). This module knows nothing of the pool's
//! state; it reports death through the callback it is given. (A little over 400 lines: one
//! type and its two tasks; the frame format itself lives in the supervisor crate.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sandpool_supervisor::proto::{self, ExecRequest, ExitStatus, Failure, Frame, Kind, RequestId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::docker::spec::{SANDBOX_HOME, SANDBOX_PATH, WORKSPACE};
use crate::docker::{AttachChunk, Attached};

/// Extra time past a command's own timeout before a silent supervisor counts as hung: the
/// supervisor kills at the timeout and reports at once, so this only covers scheduling.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Extra time for a command with a checkpoint: the supervisor's walk before it and after it
/// each give up after 10 s.
const CHECKPOINT_GRACE: Duration = Duration::from_secs(25);

/// Why a supervisor request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    /// The link is dead: the container stopped, the attach stream broke, or the supervisor
    /// misbehaved. The container is dead too.
    #[error("the sandbox's supervisor is gone: {0}")]
    Lost(String),
    /// No answer within the deadline: the link is now dead.
    #[error("the sandbox's supervisor did not answer within {0:?}")]
    Unresponsive(Duration),
    /// The supervisor refused or could not do it (a missing file, a bad path...).
    #[error("{code}: {message}")]
    Failed { code: String, message: String },
    /// The supervisor has served a newer generation than the request's: another holder has
    /// the sandbox now, and this one must let it go (not scrub, not remove it).
    #[error("fenced: {0}")]
    Fenced(String),
}

impl SupervisorError {
    /// Whether the container is unusable after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            SupervisorError::Failed { .. } | SupervisorError::Fenced(_)
        )
    }
}

/// Which stream a chunk of command output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A chunk of command output, for callers that stream it on.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub data: Bytes,
}

/// A command for the supervisor to run as the tenant.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    /// `NAME=value`: the whole environment.
    pub env: Vec<String>,
    pub cwd: String,
    pub timeout: Duration,
    /// Bytes kept per stream; the rest is read and dropped, and `truncated` is set.
    pub output_limit: usize,
    /// Whether the output is kept in the `CommandOutput` too (else only streamed to the
    /// sink: an archive of the whole workspace must not sit in the host's memory).
    pub retain_output: bool,
    /// Written to the command's stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// A checkpoint of the workspace the supervisor takes right before the command starts
    /// (reported, with the command's changes, in `CommandOutput::checkpoint`).
    pub checkpoint: Option<proto::ExecCheckpoint>,
}

impl CommandSpec {
    /// `sh -c command` as the tenant in the workspace, with the tenant's plain environment.
    pub fn shell(command: &str, timeout: Duration, output_limit: usize) -> CommandSpec {
        CommandSpec {
            argv: vec!["sh".into(), "-c".into(), command.into()],
            env: vec![
                format!("HOME={SANDBOX_HOME}"),
                format!("PATH={SANDBOX_PATH}"),
            ],
            cwd: WORKSPACE.into(),
            timeout,
            output_limit,
            retain_output: true,
            stdin: Vec::new(),
            checkpoint: None,
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    /// `None` when it did not exit by itself (killed, timed out).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub timed_out: bool,
    /// What became of the checkpoint the spec asked for.
    pub checkpoint: Option<proto::CheckpointReport>,
}

/// Called once when a link dies while in use: `(container_id, why)`.
type OnDead = Box<dyn Fn(&str, &str) + Send + Sync>;

/// State shared by the link handle and its reader task.
struct Shared {
    container_id: String,
    /// Where each request's frames go, by id.
    pending: Mutex<HashMap<RequestId, mpsc::UnboundedSender<Frame>>>,
    /// Cancelled when the link dies; the reason is in `lost`.
    dead: CancellationToken,
    lost: Mutex<Option<String>>,
    on_dead: OnDead,
}

impl Shared {
    /// The link dies: requests fail, the container is reported dead (once).
    fn kill(&self, why: &str) {
        if self.end(why) {
            (self.on_dead)(&self.container_id, why);
        }
    }

    /// Ends the link without counting it as the container's death: no `on_dead`.
    fn close(&self, why: &str) {
        self.end(why);
    }

    /// Marks the link lost and ends every waiting request; `false` when it already was.
    fn end(&self, why: &str) -> bool {
        {
            let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
            if lost.is_some() {
                return false;
            }
            *lost = Some(why.to_string());
        }
        self.dead.cancel();
        // Dropping the senders ends every waiting request.
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        true
    }

    fn lost_error(&self) -> SupervisorError {
        let why = self
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "link closed".to_string());
        SupervisorError::Lost(why)
    }
}

/// A link to one sandbox's supervisor. Dropping the last handle closes it.
pub struct SupervisorLink {
    shared: Arc<Shared>,
    /// Encoded frames for the writer task (host frames are small and few per request).
    outbox: mpsc::UnboundedSender<Vec<u8>>,
    /// Starts at a random value: ids of two links to one supervisor (a frozen replica's and
    /// its successor's, or a restarted one's and its crashed predecessor's) never collide.
    next_id: AtomicU64,
    /// `proto::holder_of` of this instance, sent with every request.
    holder: u64,
}

impl std::fmt::Debug for SupervisorLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorLink")
            .field("container_id", &self.shared.container_id)
            .field("dead", &self.is_dead())
            .finish()
    }
}

impl Drop for SupervisorLink {
    fn drop(&mut self) {
        // Stops the reader and writer tasks; not a death of the container.
        self.shared.dead.cancel();
    }
}

impl SupervisorLink {
    /// Wraps an attach stream. `on_dead(container_id, why)` runs once if the link dies while
    /// it is in use (not when it is dropped).
    pub fn start(
        container_id: &str,
        attached: Attached,
        holder: u64,
        on_dead: impl Fn(&str, &str) + Send + Sync + 'static,
    ) -> Arc<SupervisorLink> {
        let shared = Arc::new(Shared {
            container_id: container_id.to_string(),
            pending: Mutex::new(HashMap::new()),
            dead: CancellationToken::new(),
            lost: Mutex::new(None),
            on_dead: Box::new(on_dead),
        });
        let (outbox, mut queued) = mpsc::unbounded_channel::<Vec<u8>>();
        let Attached {
            mut output,
            mut input,
        } = attached;
        let writer = shared.clone();
        tokio::spawn(async move {
            loop {
                let bytes = tokio::select! {
                    _ = writer.dead.cancelled() => break,
                    bytes = queued.recv() => bytes,
                };
                let Some(bytes) = bytes else { break };
                let written = async {
                    input.write_all(&bytes).await?;
                    input.flush().await
                };
                if let Err(error) = written.await {
                    writer.kill(&format!("writing to the attach stream failed: {error}"));
                    break;
                }
            }
            let _ = input.shutdown().await;
        });
        let reader = shared.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            let why = loop {
                let next = tokio::select! {
                    _ = reader.dead.cancelled() => return,
                    next = output.next() => next,
                };
                match next {
                    Some(Ok(AttachChunk::Stdout(bytes))) => {
                        buf.extend_from_slice(&bytes);
                        match dispatch(&reader, &mut buf) {
                            Ok(()) => {}
                            Err(why) => break why,
                        }
                    }
                    Some(Ok(AttachChunk::Stderr(bytes))) => {
                        tracing::debug!(
                            container_id = %reader.container_id,
                            line = %String::from_utf8_lossy(&bytes).trim_end(),
                            "supervisor says"
                        );
                    }
                    Some(Err(error)) => break format!("attach stream failed: {error}"),
                    None => break "attach stream ended (the container stopped)".to_string(),
                }
            };
            tracing::warn!(container_id = %reader.container_id, why, "supervisor link lost");
            reader.kill(&why);
        });
        let mut base = [0u8; 8];
        // Without randomness (never seen on Linux), the clock still makes collisions unlikely.
        if getrandom::fill(&mut base).is_err() {
            base = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1))
            .to_be_bytes();
        }
        Arc::new(SupervisorLink {
            shared,
            outbox,
            // Half the id space above the base stays free, so the counter never wraps.
            next_id: AtomicU64::new(u64::from_be_bytes(base) >> 1),
            holder,
        })
    }

    /// Whether the link has died.
    pub fn is_dead(&self) -> bool {
        self.shared
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Marks the link dead (and so its container), e.g. after a dirty verdict it cannot be
    /// trusted with again.
    pub fn mark_dead(&self, why: &str) {
        self.shared.kill(why);
    }

    /// Closes the link at once, although other handles may still hold it (a hand-over: from
    /// now on only the new holder speaks to the supervisor). Requests in flight fail; this
    /// is not the container's death.
    pub fn close(&self) {
        self.shared
            .close("link closed: the sandbox was handed over");
    }

    /// Kills every command running through this link (a release: the session is over).
    pub fn kill_commands(&self, generation: u64) {
        let ids: Vec<RequestId> = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for id in ids {
            // The supervisor ignores a kill for an id that is not a running command.
            let _ = self.send(&Frame::new(Kind::Kill, id), generation);
        }
    }

    fn register(&self) -> Result<(RequestId, mpsc::UnboundedReceiver<Frame>), SupervisorError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        if self.is_dead() {
            return Err(self.shared.lost_error());
        }
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        Ok((id, rx))
    }

    fn unregister(&self, id: RequestId) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Sends `frame` under `generation` (the fencing token of the lease it is for).
    /// A frame over the supervisor's limit is refused here (`too_large`): sent, it would make
    /// the supervisor take the link for broken and exit, killing the sandbox.
    fn send(&self, frame: &Frame, generation: u64) -> Result<(), SupervisorError> {
        let bytes = frame.clone().fenced(generation, self.holder).encode();
        if bytes.len() > 4 + proto::MAX_FRAME_BYTES {
            return Err(SupervisorError::Failed {
                code: "too_large".into(),
                message: format!(
                    "a request of {} bytes is over the supervisor's frame limit of {} bytes",
                    bytes.len(),
                    proto::MAX_FRAME_BYTES
                ),
            });
        }
        self.outbox
            .send(bytes)
            .map_err(|_| self.shared.lost_error())
    }

    /// Waits for the next frame of a request, within `deadline`; a missed deadline kills the
    /// link (a supervisor that stops answering makes its container dead).
    async fn next_frame(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Frame>,
        deadline: Instant,
        budget: Duration,
    ) -> Result<Frame, SupervisorError> {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(self.shared.lost_error()),
            Err(_) => {
                self.shared
                    .kill(&format!("no answer within {} ms", budget.as_millis()));
                Err(SupervisorError::Unresponsive(budget))
            }
        }
    }

    /// Sends one request and waits for its single reply (`Result` or `Error`): the reply's
    /// head parsed as `T`, and its body.
    pub async fn call<T: DeserializeOwned>(
        &self,
        generation: u64,
        kind: Kind,
        head: &impl Serialize,
        body: Vec<u8>,
        within: Duration,
    ) -> Result<(T, Vec<u8>), SupervisorError> {
        let (id, mut rx) = self.register()?;
        let _done = Unregister { link: self, id };
        self.send(&Frame::with_head(kind, id, head).body(body), generation)?;
        let frame = self
            .next_frame(&mut rx, Instant::now() + within, within)
            .await?;
        self.reply(frame)
    }

    fn reply<T: DeserializeOwned>(&self, frame: Frame) -> Result<(T, Vec<u8>), SupervisorError> {
        match frame.kind {
            Kind::Result => match frame.head::<T>() {
                Ok(head) => Ok((head, frame.body)),
                Err(error) => Err(self.protocol_error(&format!("bad reply head: {error}"))),
            },
            Kind::Error => {
                let failure: Failure = frame
                    .head()
                    .map_err(|e| self.protocol_error(&format!("bad error head: {e}")))?;
                if failure.code == "fenced" {
                    return Err(SupervisorError::Fenced(failure.message));
                }
                Err(SupervisorError::Failed {
                    code: failure.code,
                    message: failure.message,
                })
            }
            other => Err(self.protocol_error(&format!("unexpected {other:?} frame"))),
        }
    }

    fn protocol_error(&self, why: &str) -> SupervisorError {
        self.shared.kill(why);
        SupervisorError::Lost(why.to_string())
    }

    /// Asks the supervisor whether it is there, and which generation and holder it serves.
    /// A ping is read-only: the supervisor answers it whatever its generation.
    pub async fn ping(&self, within: Duration) -> Result<proto::Pong, SupervisorError> {
        self.claim(0, within).await
    }

    /// A ping under `generation` (not 0): the supervisor serves it as the newest generation
    /// from now on (killing older generations' commands) or refuses it as `fenced`. A holder
    /// that takes a sandbox over claims it at once, before its first command.
    pub async fn claim(
        &self,
        generation: u64,
        within: Duration,
    ) -> Result<proto::Pong, SupervisorError> {
        self.call(
            generation,
            Kind::Ping,
            &serde_json::json!({}),
            Vec::new(),
            within,
        )
        .await
        .map(|(pong, _)| pong)
    }

    /// Runs a command as the tenant, streaming its output to `sink` (if any) as it comes;
    /// a full `sink` slows the command down (its window is refilled only as chunks are taken).
    /// Dropping the future kills the command's whole process tree.
    pub async fn run(
        &self,
        generation: u64,
        spec: &CommandSpec,
        sink: Option<&mpsc::Sender<OutputChunk>>,
    ) -> Result<CommandOutput, SupervisorError> {
        let (id, mut rx) = self.register()?;
        let mut guard = KillOnDrop {
            link: self,
            id,
            generation,
            armed: true,
        };
        let request = ExecRequest {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            timeout_ms: spec.timeout.as_millis() as u64,
            window: proto::DEFAULT_WINDOW_BYTES,
            checkpoint: spec.checkpoint.clone(),
        };
        self.send(
            &Frame::with_head(Kind::Exec, id, &request).body(spec.stdin.clone()),
            generation,
        )?;
        // A checkpoint's two walks (before and after) each stop at the supervisor's deadline.
        let walks = if spec.checkpoint.is_some() {
            CHECKPOINT_GRACE
        } else {
            Duration::ZERO
        };
        let budget = spec.timeout + EXIT_GRACE + walks;
        let started = Instant::now();
        let deadline = started + budget;
        // A sink still full at the command's own timeout is given up on, so that the grace
        // stays for the supervisor's `Exit`.
        let sink_deadline = started + spec.timeout + walks / 2;
        let mut sink = sink;
        let mut out = CommandOutput::default();
        // Bytes taken of each stream so far (stdout, stderr), kept or only streamed.
        let mut taken = [0usize; 2];
        loop {
            let frame = self.next_frame(&mut rx, deadline, budget).await?;
            let stream = match frame.kind {
                Kind::Started => continue,
                Kind::Stdout => OutputStream::Stdout,
                Kind::Stderr => OutputStream::Stderr,
                Kind::Exit => {
                    let status: ExitStatus = frame
                        .head()
                        .map_err(|e| self.protocol_error(&format!("bad exit head: {e}")))?;
                    guard.armed = false;
                    out.exit_code = status.code;
                    out.signal = status.signal;
                    out.timed_out = status.timed_out;
                    out.checkpoint = status.checkpoint;
                    return Ok(out);
                }
                Kind::Error => {
                    guard.armed = false;
                    return self.reply::<serde_json::Value>(frame).map(|_| out);
                }
                other => return Err(self.protocol_error(&format!("unexpected {other:?} frame"))),
            };
            let len = frame.body.len();
            let (kept, taken) = match stream {
                OutputStream::Stdout => (&mut out.stdout, &mut taken[0]),
                OutputStream::Stderr => (&mut out.stderr, &mut taken[1]),
            };
            let take = spec.output_limit.saturating_sub(*taken).min(len);
            *taken += take;
            if take < len {
                out.truncated = true;
            }
            if take > 0 {
                if spec.retain_output {
                    kept.extend_from_slice(&frame.body[..take]);
                }
                if let Some(to) = sink {
                    let chunk = OutputChunk {
                        stream,
                        data: Bytes::copy_from_slice(&frame.body[..take]),
                    };
                    // A sink that is gone or stuck just stops being fed; the command goes on
                    // and its output is still kept.
                    if !matches!(timeout_at(sink_deadline, to.send(chunk)).await, Ok(Ok(()))) {
                        sink = None;
                    }
                }
            }
            // The chunk is consumed: the supervisor may send as much again.
            self.send(
                &Frame::new(Kind::Credit, id).body((len as u32).to_be_bytes().to_vec()),
                generation,
            )?;
        }
    }
}

/// Takes frames off the front of `buf` and hands each to its request.
fn dispatch(shared: &Shared, buf: &mut Vec<u8>) -> Result<(), String> {
    loop {
        match Frame::decode(buf) {
            Ok(Some(frame)) => {
                let pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                // A frame for a request nobody waits for any more (it was cancelled) is dropped.
                if let Some(tx) = pending.get(&frame.id) {
                    let _ = tx.send(frame);
                }
            }
            Ok(None) => return Ok(()),
            Err(error) => return Err(format!("malformed frame from the supervisor: {error}")),
        }
    }
}

/// Forgets a request when its caller is done or gone.
struct Unregister<'a> {
    link: &'a SupervisorLink,
    id: RequestId,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.link.unregister(self.id);
    }
}

/// Kills a command whose caller went away before it ended, and forgets the request.
struct KillOnDrop<'a> {
    link: &'a SupervisorLink,
    id: RequestId,
    generation: u64,
    armed: bool,
}

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self
                .link
                .send(&Frame::new(Kind::Kill, self.id), self.generation);
        }
        self.link.unregister(self.id);
    }
}
