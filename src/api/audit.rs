//! The api's use of the audit trail (`crate::audit`): one entry per tool call from any origin
//! (the browser's `exec`, a chat proposal, an agent's MCP call), appended off the call's path
//! (a spawned task: the command's answer never waits for the store), and the route that reads
//! a session's trail, `GET /api/sessions/{id}/audit`, for the session's workspace token or
//! the operator's token (`SANDPOOL_ADMIN_TOKEN`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::audit::{AuditLog, AuditRecord, Decision, Origin, digest};
use crate::session::{SessionError, SessionManager, now_ms};

/// Appends audit entries without holding up the calls they describe.
#[derive(Clone)]
pub struct AuditTrail {
    log: Arc<dyn AuditLog>,
}

/// One finished (or refused) call, as the api knows it.
pub(crate) struct CallRecord<'a> {
    pub(crate) session_id: &'a str,
    pub(crate) origin: Origin,
    pub(crate) client: Option<String>,
    pub(crate) tool: &'a str,
    pub(crate) args: Value,
    pub(crate) decision: Decision,
    pub(crate) decided_by: &'a str,
    pub(crate) started_ms: i64,
    pub(crate) status: &'a str,
    pub(crate) exit_code: Option<i32>,
    pub(crate) stdout: &'a [u8],
    pub(crate) stderr: &'a [u8],
}

impl AuditTrail {
    pub fn new(log: Arc<dyn AuditLog>) -> Self {
        Self { log }
    }

    pub fn log(&self) -> &Arc<dyn AuditLog> {
        &self.log
    }

    /// Appends `call` in the background. A failed append is logged (with the session, never
    /// the arguments): the call itself has happened and is not undone.
    pub(crate) fn record(&self, sessions: &SessionManager, call: CallRecord<'_>) {
        let subject = sessions
            .local_session(call.session_id)
            .map(|s| s.subject)
            .unwrap_or_default();
        let (stdout_bytes, stdout_sha256) = digest(call.stdout);
        let (stderr_bytes, stderr_sha256) = digest(call.stderr);
        let record = AuditRecord {
            session_id: call.session_id.to_string(),
            subject,
            origin: call.origin,
            client: call.client,
            tool: call.tool.to_string(),
            args: call.args,
            decision: call.decision,
            decided_by: call.decided_by.to_string(),
            started_ms: call.started_ms,
            ended_ms: now_ms(),
            status: call.status.to_string(),
            exit_code: call.exit_code.map(i64::from),
            stdout_bytes,
            stdout_sha256,
            stderr_bytes,
            stderr_sha256,
        };
        let log = self.log.clone();
        tokio::spawn(async move {
            let session_id = record.session_id.clone();
            if let Err(error) = log.append(record).await {
                tracing::warn!(%session_id, %error, "appending to the audit trail failed");
            }
        });
    }
}

/// What the audit route needs.
#[derive(Clone)]
pub struct AuditRoute {
    pub trail: AuditTrail,
    pub sessions: SessionManager,
    /// The operator's token (`SANDPOOL_ADMIN_TOKEN`): reads every session's trail.
    pub admin_token: Option<String>,
}

/// `GET /api/sessions/{id}/audit`: the session's entries, oldest first, with whether the
/// chain verifies.
pub async fn read_audit(
    State(route): State<AuditRoute>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send a workspace or operator token as Authorization: Bearer <token>",
        );
    };
    let admin = route
        .admin_token
        .as_deref()
        .is_some_and(|a| bool::from(a.as_bytes().ct_eq(token.as_bytes())));
    if !admin {
        match route.sessions.workspace(token).await {
            Ok(s) if s.id == id => {}
            Ok(_) | Err(SessionError::BadToken(_) | SessionError::Expired(_)) => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "the token does not open this session's trail",
                );
            }
            Err(_) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the session store cannot be reached; try again",
                );
            }
        }
    }
    match route.trail.log.read(&id).await {
        Ok(entries) => {
            let verified = crate::audit::verify(&entries);
            Json(json!({
                "sessionId": id,
                "entries": entries,
                "intact": verified.is_ok(),
                "break": verified.err().map(|b| b.to_string()),
            }))
            .into_response()
        }
        Err(error) => {
            tracing::warn!(session_id = %id, %error, "reading an audit trail failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit trail cannot be read now; try again",
            )
        }
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let code = if status == StatusCode::UNAUTHORIZED {
        "unauthorized"
    } else {
        "unavailable"
    };
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
