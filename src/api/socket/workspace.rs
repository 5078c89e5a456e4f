//! The workspace operations every door shares (the `fs:*` and `tool:undo` events, the HTTP
//! file routes, the MCP tools): paths confined to the workspace; files read and written in
//! pieces that fit the supervisor's frames, several in flight, never whole in memory; the
//! checkpoint taken before a call that can change the workspace and the changes reported
//! after it; and undo.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::SocketApi;
use crate::api::audit::CallRecord;
use crate::api::error::{ApiError, ErrorCode};
use crate::audit::{Decision, Origin};
use crate::session::{CommandSpec, FileRequest, OutputStream, now_ms};
use sandpool_supervisor::layout::{HOME, PATH, WORKSPACE};
use sandpool_supervisor::proto::{Done, FileData, FileKind, FileStat, Listing, Written};

/// File content per supervisor request: well under its 4 MiB frame.
pub(crate) const PIECE_BYTES: usize = 1 << 20;
/// Pieces of one transfer in flight at once.
const PIPELINE: usize = 4;
/// The most file content one Socket.IO event carries (`fs:read`, `fs:write`); bigger files
/// go in slices (`offset`) or over HTTP.
pub(crate) const SOCKET_CHUNK_BYTES: usize = 4 << 20;
/// Longest path accepted, in bytes (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;
/// How long an archive's `tar` may run.
const ARCHIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// `path` as a path relative to the workspace (`""` for the workspace itself): `a/b`,
/// `./a/b` and `/workspace/a/b` are the same path. `..`, another absolute path and a NUL
/// byte are refused; a symlink that leads out is refused where the path is resolved.
pub(crate) fn workspace_path(path: &str) -> Result<String, ApiError> {
    if path.contains('\0') {
        return Err(ApiError::bad_request("path contains a NUL byte"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(ApiError::bad_request(format!(
            "path is over {MAX_PATH_BYTES} bytes"
        )));
    }
    let rest = if path == WORKSPACE {
        ""
    } else if let Some(rest) = path
        .strip_prefix(WORKSPACE)
        .and_then(|r| r.strip_prefix('/'))
    {
        rest
    } else if path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "{path:?} is outside {WORKSPACE}: paths are relative to it"
        )));
    } else {
        path
    };
    let mut parts = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ApiError::bad_request(format!(
                    "{path:?} leads outside {WORKSPACE} ('..' is not allowed in a workspace path)"
                )));
            }
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// What was done before a call that can change the workspace.
pub(crate) enum Before {
    /// Checkpoints are off (`SANDPOOL_CHECKPOINT_BYTES=0`).
    Off,
    Taken,
    /// No checkpoint (too big to fit, say): the call runs anyway, without undo.
    Failed(ApiError),
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

/// A call's changes as the wire has them.
fn changes_json(c: &crate::session::Changes) -> Value {
    json!({
        "added": c.added,
        "modified": c.modified,
        "removed": c.removed,
        "truncated": c.truncated,
    })
}

/// Hex of a SHA-256.
pub(crate) fn hex_sha256(hash: impl AsRef<[u8]>) -> String {
    hex::encode(hash)
}

impl SocketApi {
    /// The largest file the file API moves (`SANDPOOL_FILE_MAX_BYTES`).
    pub(crate) fn file_max_bytes(&self) -> usize {
        self.limits.file_max_bytes
    }

    /// Takes checkpoint `call_id` of the session's workspace before the call runs.
    pub(crate) async fn checkpoint_before(&self, session_id: &str, call_id: &str) -> Before {
        let max = self.limits.checkpoint_bytes;
        if max == 0 {
            return Before::Off;
        }
        let started = std::time::Instant::now();
        let result = self.sessions.checkpoint(session_id, call_id, max).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match ApiError::from(e).code {
                ErrorCode::TooLarge => "too_large",
                ErrorCode::Busy => "busy",
                _ => "error",
            },
        };
        self.metrics.checkpoint_done(outcome, started.elapsed());
        match result {
            Ok(taken) => {
                tracing::debug!(%session_id, call_id, entries = taken.entries, read_bytes = taken.read_bytes, store_bytes = taken.store_bytes, "checkpoint taken");
                Before::Taken
            }
            Err(e) => {
                let error = ApiError::from(&e);
                tracing::info!(%session_id, call_id, error = %e, "no checkpoint before the call");
                Before::Failed(error)
            }
        }
    }

    /// The `checkpoint` fields of a command's result from the supervisor's report of the
    /// checkpoint it took before the command (see `checkpoint_after`).
    pub(crate) fn checkpoint_fields(
        &self,
        call_id: &str,
        report: Option<&sandpool_supervisor::proto::CheckpointReport>,
    ) -> serde_json::Map<String, Value> {
        let mut fields = serde_json::Map::new();
        let Some(report) = report else {
            fields.insert("checkpoint".into(), Value::Null);
            return fields;
        };
        let took = std::time::Duration::from_micros(report.take_micros);
        match &report.error {
            Some(failure) => {
                let outcome = match failure.code.as_str() {
                    "too_large" => "too_large",
                    "busy" => "busy",
                    _ => "error",
                };
                self.metrics.checkpoint_done(outcome, took);
                fields.insert("checkpoint".into(), Value::Null);
                fields.insert(
                    "checkpointError".into(),
                    json!({"code": failure.code, "message": failure.message}),
                );
            }
            None => {
                self.metrics.checkpoint_done("ok", took);
                let changes = report.changes.as_ref().map_or(Value::Null, changes_json);
                fields.insert(
                    "checkpoint".into(),
                    json!({"id": call_id, "changes": changes}),
                );
            }
        }
        fields
    }

    /// Puts the `checkpoint` of a finished call into its result `body` (an object): its id and
    /// what the call changed, or `null` (with `checkpointError` when one could not be taken).
    pub(crate) async fn checkpoint_after(
        &self,
        session_id: &str,
        call_id: &str,
        before: Before,
        body: &mut Value,
    ) {
        match before {
            Before::Off => body["checkpoint"] = Value::Null,
            Before::Failed(e) => {
                body["checkpoint"] = Value::Null;
                body["checkpointError"] = json!({"code": e.code.as_str(), "message": e.message});
            }
            Before::Taken => {
                let changes = match self.sessions.changes(session_id, call_id).await {
                    Ok(c) => changes_json(&c),
                    Err(e) => {
                        tracing::info!(%session_id, call_id, error = %e, "the call's changes are unknown");
                        Value::Null
                    }
                };
                body["checkpoint"] = json!({"id": call_id, "changes": changes});
            }
        }
    }

    /// Restores the session's workspace to its state right before call `call_id`: that call
    /// and every later one are undone. The browser hears of it (`tool:undone`), and the audit
    /// trail records it.
    pub(crate) async fn undo(
        &self,
        session_id: &str,
        call_id: &str,
        origin: Origin,
        client: Option<String>,
    ) -> Result<Value, ApiError> {
        if self.limits.checkpoint_bytes == 0 {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "checkpoints are off on this service (SANDPOOL_CHECKPOINT_BYTES=0)",
            ));
        }
        let started_ms = now_ms();
        let started = std::time::Instant::now();
        let result = self
            .sessions
            .undo(session_id, call_id)
            .await
            .map_err(|e| ApiError::from(&e));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => match e.code {
                ErrorCode::Busy => "busy",
                ErrorCode::NotFound => "not_found",
                _ => "error",
            },
        };
        self.metrics.undo_done(outcome, started.elapsed());
        let (decision, decided_by) = match origin {
            Origin::Mcp => (Decision::Automatic, "agent"),
            _ => (Decision::Approved, "user"),
        };
        self.audit(CallRecord {
            session_id,
            origin,
            client,
            tool: "undo",
            args: json!({"callId": call_id}),
            decision,
            decided_by,
            started_ms,
            status: if result.is_ok() { "ok" } else { "error" },
            exit_code: None,
            stdout: &[],
            stderr: &[],
        });
        let restored = result?;
        let body = json!({
            "ok": true,
            "callId": call_id,
            "restored": {"written": restored.written, "removed": restored.removed},
            "dropped": restored.dropped,
        });
        self.emit_to_session(session_id, "tool:undone", &body);
        Ok(body)
    }

    /// Appends a file call (a write, a delete, an upload) to the audit trail.
    pub(crate) fn audit_file(
        &self,
        session_id: &str,
        origin: Origin,
        tool: &str,
        args: Value,
        started_ms: i64,
        ok: bool,
    ) {
        self.audit(CallRecord {
            session_id,
            origin,
            client: None,
            tool,
            args,
            decision: Decision::Approved,
            decided_by: "user",
            started_ms,
            status: if ok { "ok" } else { "error" },
            exit_code: None,
            stdout: &[],
            stderr: &[],
        });
    }

    async fn file<T: serde::de::DeserializeOwned>(
        &self,
        session_id: &str,
        request: FileRequest,
        body: Vec<u8>,
    ) -> Result<(T, Vec<u8>), ApiError> {
        self.sessions
            .file(session_id, &request, body)
            .await
            .map_err(|e| ApiError::from(&e))
    }

    /// The entries of directory `rel`.
    pub(crate) async fn list_dir(&self, session_id: &str, rel: &str) -> Result<Value, ApiError> {
        let request = FileRequest::List { path: rel.into() };
        let (listing, _) = self
            .file::<Listing>(session_id, request, Vec::new())
            .await?;
        let entries: Vec<Value> = listing
            .entries
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "type": kind_name(e.kind),
                    "size": e.size,
                    "mode": e.mode,
                    "mtimeMs": e.modified_unix.saturating_mul(1000),
                })
            })
            .collect();
        Ok(json!({"ok": true, "path": rel, "entries": entries}))
    }

    /// What `rel` is (of a symlink: the link itself).
    pub(crate) async fn stat(&self, session_id: &str, rel: &str) -> Result<FileStat, ApiError> {
        let request = FileRequest::Stat { path: rel.into() };
        Ok(self
            .file::<FileStat>(session_id, request, Vec::new())
            .await?
            .0)
    }

    /// Up to `len` bytes of file `rel` from `offset`, and the file's size.
    pub(crate) async fn read_range(
        &self,
        session_id: &str,
        rel: &str,
        offset: u64,
        len: usize,
    ) -> Result<(u64, Vec<u8>), ApiError> {
        let mut out = Vec::new();
        loop {
            let want = (len - out.len()).min(PIECE_BYTES);
            let request = FileRequest::Read {
                path: rel.into(),
                offset: offset + out.len() as u64,
                max_bytes: want as u64,
            };
            let (head, data) = self
                .file::<FileData>(session_id, request, Vec::new())
                .await?;
            let got = data.len();
            out.extend_from_slice(&data);
            if got < want || out.len() >= len {
                return Ok((head.size.max(out.len() as u64), out));
            }
        }
    }

    /// Writes `data` into file `rel` at `offset` (without truncating), in pieces; missing
    /// parent directories are made.
    pub(crate) async fn write_at(
        &self,
        session_id: &str,
        rel: &str,
        offset: u64,
        data: Bytes,
        mode: Option<u32>,
    ) -> Result<(), ApiError> {
        let mut at = 0;
        loop {
            let end = (at + PIECE_BYTES).min(data.len());
            let request = FileRequest::Write {
                path: rel.into(),
                append: false,
                mode,
                offset: Some(offset + at as u64),
                parents: at == 0,
            };
            self.file::<Written>(session_id, request, data[at..end].to_vec())
                .await?;
            at = end;
            if at >= data.len() {
                return Ok(());
            }
        }
    }

    /// Replaces file `rel` with the bytes of `body`, all or nothing: they go to a new file
    /// beside it, several pieces in flight, which is renamed over `rel` once whole. Missing
    /// parent directories are made. Returns the size and the SHA-256 (hex).
    pub(crate) async fn upload<S, E>(
        &self,
        session_id: &str,
        rel: &str,
        mode: Option<u32>,
        mut body: S,
    ) -> Result<(u64, String), ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if rel.is_empty() {
            return Err(ApiError::bad_request("the workspace itself is not a file"));
        }
        let max = self.limits.file_max_bytes as u64;
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let mut tag = [0u8; 6];
        let _ = getrandom::fill(&mut tag);
        let temp = format!(
            "{}{}.{name}.sandpool-upload-{}",
            dir,
            if dir.is_empty() { "" } else { "/" },
            hex::encode(tag)
        );
        let result = async {
            let mut hasher = Sha256::new();
            let mut buf = BytesMut::new();
            let (mut total, mut offset) = (0u64, 0u64);
            let mut in_flight = FuturesUnordered::new();
            let mut ended = false;
            // The first piece makes the file (and its parents) before any other is sent.
            let mut first = true;
            loop {
                // Send every whole piece there is room for (the rest of the body at its end).
                while in_flight.len() < PIPELINE
                    && (buf.len() >= PIECE_BYTES || (ended && (!buf.is_empty() || first)))
                {
                    let piece = buf.split_to(buf.len().min(PIECE_BYTES)).to_vec();
                    let request = FileRequest::Write {
                        path: temp.clone(),
                        append: false,
                        mode,
                        offset: Some(offset),
                        parents: first,
                    };
                    offset += piece.len() as u64;
                    if first {
                        first = false;
                        self.file::<Written>(session_id, request, piece).await?;
                    } else {
                        in_flight.push(self.file::<Written>(session_id, request, piece));
                    }
                }
                if ended && buf.is_empty() && !first {
                    break;
                }
                // Pieces in flight complete while the body is read.
                tokio::select! {
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                        done?;
                    }
                    chunk = body.next(), if !ended && buf.len() < 2 * PIECE_BYTES => match chunk {
                        Some(Ok(chunk)) => {
                            total += chunk.len() as u64;
                            if total > max {
                                return Err(ApiError::new(
                                    ErrorCode::TooLarge,
                                    format!("the file is over SANDPOOL_FILE_MAX_BYTES ({max} bytes)"),
                                ));
                            }
                            hasher.update(&chunk);
                            buf.extend_from_slice(&chunk);
                        }
                        Some(Err(e)) => {
                            return Err(ApiError::bad_request(format!("the upload broke off: {e}")));
                        }
                        None => ended = true,
                    },
                }
            }
            while let Some(done) = in_flight.next().await {
                done?;
            }
            let rename = FileRequest::Rename {
                from: temp.clone(),
                to: rel.into(),
            };
            self.file::<Done>(session_id, rename, Vec::new()).await?;
            self.metrics.file_bytes("upload", total);
            Ok((total, hex_sha256(hasher.finalize())))
        }
        .await;
        if result.is_err() {
            let delete = FileRequest::Delete {
                path: temp,
                recursive: false,
            };
            let _ = self.file::<Done>(session_id, delete, Vec::new()).await;
        }
        result
    }

    /// Removes `rel` (a directory only with `recursive`).
    pub(crate) async fn delete(
        &self,
        session_id: &str,
        rel: &str,
        recursive: bool,
    ) -> Result<(), ApiError> {
        if rel.is_empty() {
            return Err(ApiError::bad_request(
                "the workspace itself cannot be deleted",
            ));
        }
        let request = FileRequest::Delete {
            path: rel.into(),
            recursive,
        };
        self.file::<Done>(session_id, request, Vec::new()).await?;
        Ok(())
    }

    /// File `rel` of `size` bytes as a stream of pieces, several read ahead. A file that
    /// shrinks meanwhile ends the stream with an error (the client sees a cut transfer, never
    /// a short file passed off as whole).
    pub(crate) fn download(
        self: &Arc<Self>,
        session_id: &str,
        rel: &str,
        size: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let pieces = size.div_ceil(PIECE_BYTES as u64);
        let (api, session_id, rel) = (Arc::clone(self), session_id.to_string(), rel.to_string());
        futures_util::stream::iter(0..pieces)
            .map(move |i| {
                let (api, session_id, rel) = (Arc::clone(&api), session_id.clone(), rel.clone());
                async move {
                    let offset = i * PIECE_BYTES as u64;
                    let want = (size - offset).min(PIECE_BYTES as u64) as usize;
                    let request = FileRequest::Read {
                        path: rel,
                        offset,
                        max_bytes: want as u64,
                    };
                    let (_, data) = api
                        .file::<FileData>(&session_id, request, Vec::new())
                        .await
                        .map_err(|e| std::io::Error::other(e.message))?;
                    if data.len() != want {
                        return Err(std::io::Error::other("the file changed while it was read"));
                    }
                    api.metrics.file_bytes("download", want as u64);
                    Ok(Bytes::from(data))
                }
            })
            .buffered(PIPELINE)
    }

    /// A tar of the whole workspace, streamed as `tar` in the sandbox writes it (as the
    /// tenant: what the tenant can read). The command takes one of the session's command
    /// places. A `tar` that fails ends the stream with an error.
    pub(crate) fn archive(
        self: &Arc<Self>,
        session_id: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, ApiError> {
        let permit = self
            .sessions
            .command_permit(session_id)
            .map_err(|e| ApiError::from(&e))?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let (api, session_id) = (Arc::clone(self), session_id.to_string());
        tokio::spawn(async move {
            let spec = CommandSpec {
                argv: ["tar", "-C", WORKSPACE, "-cf", "-", "."]
                    .map(String::from)
                    .to_vec(),
                env: vec![format!("HOME={HOME}"), format!("PATH={PATH}")],
                cwd: WORKSPACE.into(),
                timeout: ARCHIVE_TIMEOUT,
                output_limit: usize::MAX,
                retain_output: false,
                stdin: Vec::new(),
                checkpoint: None,
            };
            let (chunks_tx, mut chunks) = mpsc::channel::<crate::session::OutputChunk>(16);
            let run = {
                let api = Arc::clone(&api);
                async move {
                    let result = api
                        .sessions
                        .run_spec(&session_id, &spec, Some(&chunks_tx))
                        .await;
                    drop(chunks_tx);
                    result
                }
            };
            let forward = async {
                let mut client_gone = false;
                while let Some(chunk) = chunks.recv().await {
                    // A client that left stops being fed; the output is drained so that
                    // the command ends by itself.
                    if !client_gone
                        && chunk.stream == OutputStream::Stdout
                        && tx.send(Ok(chunk.data)).await.is_err()
                    {
                        client_gone = true;
                    }
                }
            };
            let (result, ()) = tokio::join!(run, forward);
            drop(permit);
            let failure = match result {
                Ok(out) if out.exit_code == Some(0) => None,
                Ok(out) => Some(format!(
                    "tar failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = failure {
                let _ = tx.send(Err(std::io::Error::other(why))).await;
            }
        });
        Ok(tokio_stream_from(rx))
    }
}

/// A stream of what a channel receives.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_paths() {
        assert_eq!(workspace_path("a.txt").unwrap(), "a.txt");
        assert_eq!(workspace_path("./d//b").unwrap(), "d/b");
        assert_eq!(workspace_path("").unwrap(), "");
        assert_eq!(workspace_path("/workspace").unwrap(), "");
        assert_eq!(workspace_path("/workspace/x/y").unwrap(), "x/y");
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../x",
            "/workspacex/y",
            "a\0b",
            "x/..",
        ] {
            assert!(workspace_path(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(workspace_path(&"a/".repeat(3000)).is_err());
    }
}
