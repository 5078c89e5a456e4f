//! The Socket.IO API's wire types: what the server emits, and every request payload with
//! its parser (one typed shape per event; a `bad_request` naming what was expected).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::error::ApiError;
use crate::config::ApiConfig;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionPayload<'a> {
    pub(super) session_id: &'a str,
    pub(super) resume_token: &'a str,
    pub(super) workspace_id: &'a str,
    pub(super) acquire_ms: u64,
    pub(super) resumed: bool,
    /// The replica serving the session (its instance id).
    pub(super) instance: &'a str,
    /// The agents' door to this session: the MCP endpoint and, for a new session only, its
    /// workspace token.
    pub(super) mcp: McpPayload<'a>,
    /// The session's approval policy.
    pub(super) approval: &'static str,
}

#[derive(Serialize)]
pub(super) struct McpPayload<'a> {
    pub(super) url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) token: Option<&'a str>,
}

/// `session:policy`: the approval policy the browser chooses.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyPayload {
    approval: String,
}

pub(super) fn parse_policy(
    data: Result<Value, impl std::fmt::Display>,
) -> Result<String, ApiError> {
    let policy: PolicyPayload = payload(
        data,
        "session:policy",
        "an object {approval: \"all\" | \"writes\" | \"none\"}",
    )?;
    Ok(policy.approval)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct QueuePayload {
    pub(super) position: usize,
    pub(super) estimate_ms: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OutputPayload<'a> {
    pub(super) call_id: &'a str,
    pub(super) stream: &'static str,
    pub(super) data: String,
}

/// What a finished command reports.
pub(crate) struct RunOutcome {
    pub(crate) status: &'static str,
    pub(crate) exit_code: Option<i32>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) truncated: bool,
    pub(crate) duration_ms: u64,
    /// `checkpoint` (and `checkpointError`): see `SocketApi::checkpoint_fields`.
    pub(crate) checkpoint: serde_json::Map<String, Value>,
}

impl RunOutcome {
    /// The command's status, exit code, output (lossy UTF-8) and timing, as the `exec` ack
    /// and an MCP `exec` result both carry them.
    pub(crate) fn to_json(&self) -> Value {
        let mut body = serde_json::json!({
            "status": self.status,
            "exitCode": self.exit_code,
            "stdout": String::from_utf8_lossy(&self.stdout),
            "stderr": String::from_utf8_lossy(&self.stderr),
            "truncated": self.truncated,
            "durationMs": self.duration_ms,
        });
        self.add_checkpoint(&mut body);
        body
    }

    /// Puts the call's `checkpoint` (and `checkpointError`) into `body`, an object.
    pub(crate) fn add_checkpoint(&self, body: &mut Value) {
        if let Some(body) = body.as_object_mut() {
            body.extend(self.checkpoint.clone());
        }
    }
}

/// A validated `exec` request.
pub(super) struct ExecRequest {
    pub(super) command: String,
    pub(super) timeout: Duration,
}

pub(crate) fn new_call_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The handshake's `auth`: empty, or a resume.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuthPayload {
    pub(super) session_id: Option<String>,
    pub(super) resume_token: Option<String>,
    /// The JWT (see `auth.rs`); read before the rest.
    #[allow(dead_code)]
    pub(super) token: Option<String>,
}

/// `exec`'s payload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExecPayload {
    pub(super) command: String,
    pub(super) timeout_ms: Option<u64>,
}

/// `message`'s payload: a string, or `{text}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum MessagePayload {
    Text(String),
    Object { text: String },
}

/// `tool:approval`'s payload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ApprovalPayload {
    pub(super) call_id: String,
    pub(super) approved: bool,
}

/// Parses an event's payload into its type, or a `bad_request` naming what was expected.
pub(super) fn payload<T: serde::de::DeserializeOwned>(
    data: Result<Value, impl std::fmt::Display>,
    event: &str,
    shape: &str,
) -> Result<T, ApiError> {
    let data =
        data.map_err(|e| ApiError::bad_request(format!("{event} payload is not JSON: {e}")))?;
    serde_json::from_value(data)
        .map_err(|e| ApiError::bad_request(format!("{event} takes {shape}: {e}")))
}

pub(super) fn parse_resume(auth: &Value) -> Result<Option<(String, String)>, ApiError> {
    let shape = "auth.sessionId and auth.resumeToken must both be non-empty strings";
    let auth: AuthPayload = payload(
        Ok::<_, String>(auth.clone()),
        "auth",
        "{sessionId, resumeToken}",
    )?;
    match (auth.session_id, auth.resume_token) {
        (None, None) => Ok(None),
        (Some(id), Some(token)) if !id.is_empty() && !token.is_empty() => Ok(Some((id, token))),
        _ => Err(ApiError::bad_request(shape)),
    }
}

pub(super) fn parse_exec(
    data: Result<Value, impl std::fmt::Display>,
    limits: &ApiConfig,
) -> Result<ExecRequest, ApiError> {
    let exec: ExecPayload = payload(
        data,
        "exec",
        "an object {command: string, timeoutMs?: integer}",
    )?;
    let command = check_command(&exec.command, limits)?;
    let timeout_ms = match exec.timeout_ms {
        None => limits.exec_default_timeout.as_millis() as u64,
        Some(ms) if ms > 0 && ms <= limits.exec_max_timeout.as_millis() as u64 => ms,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "timeoutMs must be a whole number from 1 to {}",
                limits.exec_max_timeout.as_millis()
            )));
        }
    };
    Ok(ExecRequest {
        command,
        timeout: Duration::from_millis(timeout_ms),
    })
}

pub(super) fn check_command(command: &str, limits: &ApiConfig) -> Result<String, ApiError> {
    if command.trim().is_empty() {
        return Err(ApiError::bad_request("command is empty"));
    }
    if command.len() > limits.max_command_bytes {
        return Err(ApiError::bad_request(format!(
            "command is {} bytes; the limit is {}",
            command.len(),
            limits.max_command_bytes
        )));
    }
    Ok(command.to_string())
}

pub(super) fn parse_message(
    data: Result<Value, impl std::fmt::Display>,
    limits: &ApiConfig,
) -> Result<String, ApiError> {
    let message: MessagePayload = payload(data, "message", "a string or {text: string}")?;
    let (MessagePayload::Text(text) | MessagePayload::Object { text }) = message;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("message is empty"));
    }
    check_command(&text, limits)
}

pub(super) fn parse_approval(
    data: Result<Value, impl std::fmt::Display>,
) -> Result<(String, bool), ApiError> {
    let approval: ApprovalPayload = payload(
        data,
        "tool:approval",
        "an object {callId: string, approved: boolean}",
    )?;
    if approval.call_id.is_empty() {
        return Err(ApiError::bad_request("callId must be a non-empty string"));
    }
    Ok((approval.call_id, approval.approved))
}
