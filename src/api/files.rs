//! Files over HTTP, for large files and archives, behind the workspace-token door (`door`):
//!
//! - `GET /api/sessions/{id}/files/{*path}`: the file, streamed (`application/octet-stream`);
//! - `PUT /api/sessions/{id}/files/{*path}`: the body, streamed into a new file that replaces
//!   the old one only once whole (`?mode=0755` sets a new file's mode);
//! - `GET /api/sessions/{id}/archive`: a tar of the whole workspace, streamed.
//!
//! Neither direction holds a file whole in memory: pieces of 1 MiB go to and from the
//! sandbox's supervisor, several in flight. Errors are JSON `{"error": {"code", "message"}}`
//! with the code's HTTP status.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::door::{self, Workspace};
use super::error::{ApiError, ErrorCode};
use super::socket::SocketApi;
use super::socket::workspace::workspace_path;
use crate::audit::Origin;
use crate::session::now_ms;
use sandpool_supervisor::proto::FileKind;

/// How long a refused upload's remaining body is read (and dropped) before the answer.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The file routes, behind the token check.
pub fn router(api: Arc<SocketApi>) -> Router {
    let routes = Router::new()
        .route(
            "/api/sessions/{id}/files/{*path}",
            get(download).put(upload),
        )
        .route("/api/sessions/{id}/archive", get(archive))
        .with_state(Arc::clone(&api));
    door::guard(routes, api)
}

/// The HTTP status of an error code.
fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Busy => StatusCode::CONFLICT,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::SessionExpired => StatusCode::GONE,
        ErrorCode::TooManyRequests | ErrorCode::TooManySessions => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Fenced
        | ErrorCode::Unavailable
        | ErrorCode::Overloaded
        | ErrorCode::PoolExhausted
        | ErrorCode::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An error as a JSON response.
struct Failed(ApiError);

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed(e)
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.0.code.as_str(), "message": self.0.message}});
        (status(self.0.code), axum::Json(body)).into_response()
    }
}

/// The session named in the path, which must be the token's.
fn session_of(workspace: &Workspace, id: &str) -> Result<String, Failed> {
    if workspace.session_id != id {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the workspace token is for another session",
        )
        .into());
    }
    Ok(workspace.session_id.clone())
}

async fn download(
    State(api): State<Arc<SocketApi>>,
    Extension(workspace): Extension<Workspace>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, Failed> {
    let session_id = session_of(&workspace, &id)?;
    let rel = workspace_path(&path)?;
    let st = api.stat(&session_id, &rel).await?;
    match st.kind {
        FileKind::File => {}
        FileKind::Dir => {
            return Err(ApiError::bad_request(format!(
                "{rel} is a directory: GET /api/sessions/{{id}}/archive for a tar of the workspace"
            ))
            .into());
        }
        // A symlink: the file it leads to (within the workspace).
        FileKind::Symlink | FileKind::Other => {}
    }
    let size = if st.kind == FileKind::Symlink {
        // The link's own size is its target's length: ask the file it names.
        let (size, _) = api.read_range(&session_id, &rel, 0, 0).await?;
        size
    } else {
        st.size
    };
    if size > api.file_max_bytes() as u64 {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("{rel} is {size} bytes, over SANDPOOL_FILE_MAX_BYTES"),
        )
        .into());
    }
    let stream = api.download(&session_id, &rel, size);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// Octal permission bits of a new file, e.g. `0755`.
    mode: Option<String>,
}

async fn upload(
    State(api): State<Arc<SocketApi>>,
    Extension(workspace): Extension<Workspace>,
    Path((id, path)): Path<(String, String)>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, Failed> {
    let session_id = session_of(&workspace, &id)?;
    let rel = workspace_path(&path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    let mode = match query.mode.as_deref() {
        None => None,
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o7777 => Some(mode),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "mode {m:?} is not octal permission bits like 0644"
                ))
                .into());
            }
        },
    };
    // A declared length over the limit is refused before a byte is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > api.file_max_bytes() as u64) {
        // Nothing of it is kept, but it is read (as a refusal half-way is, below): a client
        // that writes its whole body before it reads would otherwise see a broken pipe.
        drain(body.into_data_stream()).await;
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "the file is over SANDPOOL_FILE_MAX_BYTES ({} bytes)",
                api.file_max_bytes()
            ),
        )
        .into());
    }
    let started_ms = now_ms();
    let mut data = body.into_data_stream();
    let result = api.upload(&session_id, &rel, mode, &mut data).await;
    if result.is_err() {
        // Read what the client still sends before answering: a client that writes its whole
        // body before it reads (most do) would otherwise see a reset, not the error.
        drain(data).await;
    }
    api.audit_file(
        &session_id,
        Origin::Socket,
        "upload",
        json!({"path": rel, "bytes": result.as_ref().map(|r| r.0).ok()}),
        started_ms,
        result.is_ok(),
    );
    let (bytes, sha256) = result?;
    Ok((
        StatusCode::OK,
        axum::Json(json!({"ok": true, "path": rel, "bytes": bytes, "sha256": sha256})),
    )
        .into_response())
}

async fn archive(
    State(api): State<Arc<SocketApi>>,
    Extension(workspace): Extension<Workspace>,
    Path(id): Path<String>,
) -> Result<Response, Failed> {
    let session_id = session_of(&workspace, &id)?;
    let stream = api.archive(&session_id)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"workspace.tar\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Reads and drops what is left of a request body, for at most `DRAIN_LIMIT`.
async fn drain(mut data: axum::body::BodyDataStream) {
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, data.next()).await {}
}
