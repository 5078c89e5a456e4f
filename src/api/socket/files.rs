//! The workspace events: `fs:list`, `fs:read`, `fs:write`, `fs:delete` and `tool:undo`, each
//! validating its payload and answering in its ack. File content travels as Socket.IO binary
//! attachments (`fs:write` takes a string too), at most [`SOCKET_CHUNK_BYTES`] per event.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::handlers::Refusal;
use super::workspace::{Before, SOCKET_CHUNK_BYTES, hex_sha256, workspace_path};
use super::*;
use crate::audit::Origin;
use crate::session::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FsList {
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FsRead {
    path: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    length: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FsWrite {
    path: String,
    /// Binary (an attachment) or a string (its UTF-8 bytes).
    content: Content,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
}

/// File content in an event: a binary attachment, or a string taken as its UTF-8 bytes.
pub(super) struct Content(Bytes);

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("binary content or a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content(Bytes::copy_from_slice(v.as_bytes())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content(Bytes::from(v)))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Content, E> {
                Ok(Content(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Content, E> {
                Ok(Content(Bytes::from(v)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FsDelete {
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Undo {
    call_id: String,
}

/// The ack of `fs:read`: the content as a binary attachment.
#[derive(Serialize)]
struct ReadAck {
    ok: bool,
    content: Bytes,
    bytes: usize,
    size: u64,
    sha256: String,
    truncated: bool,
}

fn parse<T>(data: Result<T, impl std::fmt::Display>, event: &str) -> Result<T, ApiError> {
    data.map_err(|e| ApiError::bad_request(format!("bad {event} payload: {e}")))
}

fn check_mode(mode: Option<u32>) -> Result<Option<u32>, ApiError> {
    match mode {
        Some(m) if m > 0o7777 => Err(ApiError::bad_request(format!(
            "mode {m:#o} is not a permission mode (at most 0o7777)"
        ))),
        other => Ok(other),
    }
}

pub(super) async fn on_fs_list(
    socket: SocketRef,
    TryData(data): TryData<FsList>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result = async {
        let conn = api.active_conn(&socket).await?;
        let rel = workspace_path(&parse(data, "fs:list")?.path)?;
        api.list_dir(&conn.session_id, &rel).await
    }
    .await;
    api.answer(&socket, reply, result.map_err(Refusal::from));
}

pub(super) async fn on_fs_read(
    socket: SocketRef,
    TryData(data): TryData<FsRead>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result = async {
        let conn = api.active_conn(&socket).await?;
        let req = parse(data, "fs:read")?;
        let rel = workspace_path(&req.path)?;
        let max = SOCKET_CHUNK_BYTES.min(api.limits.file_max_bytes);
        let offset = req.offset.unwrap_or(0);
        // Without `length`, the whole file, if it fits in one event.
        let len = req.length.map_or(max, |len| (len as usize).min(max));
        let (size, content) = api.read_range(&conn.session_id, &rel, offset, len).await?;
        if req.length.is_none() && size.saturating_sub(offset) > max as u64 {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!(
                    "{rel} is {size} bytes: one event carries at most {max}; read it in slices (offset, length) or with GET /api/sessions/{{id}}/files/{{path}}"
                ),
            ));
        }
        Ok(ReadAck {
            ok: true,
            bytes: content.len(),
            sha256: hex_sha256(Sha256::digest(&content)),
            truncated: offset + (content.len() as u64) < size,
            size,
            content: Bytes::from(content),
        })
    }
    .await;
    match result {
        Ok(ack) => reply.send(&ack),
        Err(e) => api.fail(&socket, Some(reply), e, None),
    }
}

pub(super) async fn on_fs_write(
    socket: SocketRef,
    TryData(data): TryData<FsWrite>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result: Result<Value, Refusal> = async {
        let conn = api.active_conn(&socket).await?;
        let mut req = parse(data, "fs:write")?;
        let content = std::mem::take(&mut req.content.0);
        let rel = workspace_path(&req.path)?;
        let mode = check_mode(req.mode)?;
        let max = SOCKET_CHUNK_BYTES.min(api.limits.file_max_bytes);
        if content.len() > max {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("one fs:write carries at most {max} bytes; write in slices (offset) or with PUT /api/sessions/{{id}}/files/{{path}}"),
            )
            .into());
        }
        let end = req.offset.unwrap_or(0) + content.len() as u64;
        if end > api.limits.file_max_bytes as u64 {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("the file would be over SANDPOOL_FILE_MAX_BYTES ({} bytes)", api.limits.file_max_bytes),
            )
            .into());
        }
        let call_id = new_call_id();
        let sha256 = hex_sha256(Sha256::digest(&content));
        let bytes = content.len();
        let started_ms = now_ms();
        // A slice past the start of a file (`offset` > 0) continues a write whose first
        // slice took the checkpoint: undoing that one takes the whole file back. A checkpoint
        // per slice would store every partial version of the file.
        let before = match req.offset {
            Some(offset) if offset > 0 => Before::Off,
            _ => api.checkpoint_before(&conn.session_id, &call_id).await,
        };
        let written = match req.offset {
            Some(offset) => api
                .write_at(&conn.session_id, &rel, offset, content, mode)
                .await,
            None => {
                let body = futures_util::stream::iter([Ok::<_, Infallible>(content)]);
                api.upload(&conn.session_id, &rel, mode, body).await.map(|_| ())
            }
        };
        api.audit_file(
            &conn.session_id,
            Origin::Socket,
            "fs:write",
            json!({"path": rel, "bytes": bytes, "offset": req.offset}),
            started_ms,
            written.is_ok(),
        );
        let mut body = json!({"ok": true, "path": rel, "bytes": bytes, "sha256": sha256, "callId": call_id});
        api.checkpoint_after(&conn.session_id, &call_id, before, &mut body)
            .await;
        written.map(|()| body).map_err(|e| Refusal::for_call(e, &call_id))
    }
    .await;
    api.answer(&socket, reply, result);
}

pub(super) async fn on_fs_delete(
    socket: SocketRef,
    TryData(data): TryData<FsDelete>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result: Result<Value, Refusal> = async {
        let conn = api.active_conn(&socket).await?;
        let req = parse(data, "fs:delete")?;
        let rel = workspace_path(&req.path)?;
        if rel.is_empty() {
            return Err(ApiError::bad_request("the workspace itself cannot be deleted").into());
        }
        let call_id = new_call_id();
        let started_ms = now_ms();
        let before = api.checkpoint_before(&conn.session_id, &call_id).await;
        let deleted = api.delete(&conn.session_id, &rel, req.recursive).await;
        api.audit_file(
            &conn.session_id,
            Origin::Socket,
            "fs:delete",
            json!({"path": rel, "recursive": req.recursive}),
            started_ms,
            deleted.is_ok(),
        );
        let mut body = json!({"ok": true, "path": rel, "callId": call_id});
        api.checkpoint_after(&conn.session_id, &call_id, before, &mut body)
            .await;
        deleted
            .map(|()| body)
            .map_err(|e| Refusal::for_call(e, &call_id))
    }
    .await;
    api.answer(&socket, reply, result);
}

pub(super) async fn on_undo(
    socket: SocketRef,
    TryData(data): TryData<Undo>,
    reply: Reply,
    State(api): State<Arc<SocketApi>>,
) {
    let result: Result<Value, Refusal> = async {
        let conn = api.active_conn(&socket).await?;
        let req = parse(data, "tool:undo")?;
        api.undo(&conn.session_id, &req.call_id, Origin::Socket, None)
            .await
            .map_err(|e| Refusal::for_call(e, &req.call_id))
    }
    .await;
    api.answer(&socket, reply, result);
}
