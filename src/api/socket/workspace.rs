//! The workspace operations every door shares (the `fs:*` and `tool:undo` events, the HTTP
//! file routes, the MCP tools): paths confined to the workspace; listing, stat and delete;
//! the checkpoint taken before a call that can change the workspace and the changes reported
//! after it; and undo. Moving file content is `transfer.rs`.

use serde_json::{Value, json};

use super::SocketApi;
use crate::api::audit::CallRecord;
use crate::api::error::{ApiError, ErrorCode};
use crate::audit::{Decision, Origin};
use crate::session::{FileRequest, now_ms};
use sandpool_supervisor::layout::WORKSPACE;
use sandpool_supervisor::proto::{FileKind, FileStat, Listing};

/// The most file content one Socket.IO event carries (`fs:read`, `fs:write`); bigger files
/// go in slices (`offset`) or over HTTP.
pub(crate) const SOCKET_CHUNK_BYTES: usize = 4 << 20;
/// Longest path accepted, in bytes (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

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

    pub(super) async fn file<T: serde::de::DeserializeOwned>(
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
