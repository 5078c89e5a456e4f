//! `docker exec`: a command run in a container through Docker, output streamed and bounded.
//! Sessions no longer use it (their commands go to the in-sandbox supervisor); it is the
//! baseline the benchmarks measure the supervisor against.

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant, timeout_at};

use super::error::DockerError;
use super::gate::{Admission, DockerGate};

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
