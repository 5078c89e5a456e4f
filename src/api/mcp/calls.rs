//! What every MCP tool call goes through besides its own work: admission (the token's
//! session, the session's policy, and the user's approval when it holds the call), the
//! command's spec (timeout, working directory, environment), file operations under the
//! session's lease, the result told to the browser, the audit entry, and keeping paths in
//! `/workspace`.

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde_json::{Value, json};

use super::Workspace;
use super::tools::{Encoding, ExecArgs, Tools};
use crate::api::audit::CallRecord;
use crate::api::socket::MAX_PENDING_PER_SESSION;
use crate::api::socket::payload::new_call_id;
use crate::api::{ApiError, ErrorCode};
use crate::audit::{Decision, Origin};
use crate::session::{CommandSpec, FileRequest, PendingCall, now_ms};
use sandpool_supervisor::layout::WORKSPACE;

/// An admitted call: its session and id, and what its audit entry says of it.
pub(super) struct Call {
    pub(super) session_id: String,
    pub(super) call_id: String,
    tool: &'static str,
    args: Value,
    pub(super) client: Option<String>,
    decision: Decision,
    decided_by: String,
    started_ms: i64,
    /// Its place among the session's running commands, held until the call is answered.
    permit: Option<OwnedSemaphorePermit>,
}

impl Tools {
    /// The call's session (from the token check), and the user's approval when the
    /// session's policy holds the call: `Err` is the tool result to answer with instead.
    pub(super) async fn admit(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &'static str,
        shown: Value,
        read_only: bool,
    ) -> Result<Call, CallToolResult> {
        let mut call = self.approve(ctx, tool, shown, read_only).await?;
        // A place among the session's running commands, as for the browser's own: an agent
        // cannot run more at once than the session may.
        let sessions = self.api.sessions();
        match sessions.command_permit(&call.session_id) {
            Ok(permit) => call.permit = Some(permit),
            Err(e) => {
                let e = ApiError::from(&e);
                self.tell_result(&call, error_result(&e));
                self.audit(&call, "error", None, &[], &[]);
                return Err(failed(&e));
            }
        }
        // An agent at work keeps its session alive, as a browser's commands do.
        sessions.touch(&call.session_id).await;
        Ok(call)
    }

    /// The call's session and the decision on it: at once by the policy, or the user's.
    async fn approve(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &'static str,
        shown: Value,
        read_only: bool,
    ) -> Result<Call, CallToolResult> {
        let workspace = ctx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Workspace>())
            .cloned()
            .ok_or_else(|| {
                failed(&ApiError::new(
                    ErrorCode::Unauthorized,
                    "the request carries no workspace",
                ))
            })?;
        let sessions = self.api.sessions();
        let client = ctx
            .client_info()
            .map(|info| format!("{}/{}", info.name, info.version));
        let policy = sessions
            .approval(&workspace.session_id)
            .map_err(|e| failed(&ApiError::from(&e)))?;
        let mut call = Call {
            session_id: workspace.session_id,
            call_id: new_call_id(),
            tool,
            args: shown.clone(),
            client: client.clone(),
            decision: Decision::Automatic,
            decided_by: format!("policy:{}", policy.as_str()),
            started_ms: now_ms(),
            permit: None,
        };
        if !policy.needs_approval(read_only) {
            return Ok(call);
        }
        call.decided_by = "user".into();
        let (pending, decision) = PendingCall::agent(tool, shown, client);
        let view = pending.view(&call.call_id);
        if !sessions.propose(
            &call.session_id,
            &call.call_id,
            pending,
            MAX_PENDING_PER_SESSION,
        ) {
            return Err(failed(&ApiError::new(
                ErrorCode::TooManyRequests,
                format!("at most {MAX_PENDING_PER_SESSION} tool calls may wait for approval"),
            )));
        }
        // No browser attached: the call waits for one (its resume replays the request).
        self.api.request_approval(&call.session_id, &view);
        let timeout = self.api.approval_timeout();
        let mut decision = decision;
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout, &mut decision) => match answer {
                Ok(Ok(approved)) => Some(approved),
                Ok(Err(_)) => {
                    // Dropped unanswered: the session ended or moved. Said to the browser
                    // (if one is still bound here) and in the trail.
                    call.decision = Decision::TimedOut;
                    call.decided_by = "session ended".into();
                    self.tell_result(&call, json!({"status": "cancelled"}));
                    self.audit(&call, "cancelled", None, &[], &[]);
                    return Err(rejected("the session ended or moved before the user answered"));
                }
                // Timed out, unless the user's answer landed just now (the call was taken).
                Err(_) => match sessions.take_proposal(&call.session_id, &call.call_id) {
                    Some(_) => None,
                    None => decision.try_recv().ok(),
                },
            },
            () = ctx.ct.cancelled() => {
                sessions.take_proposal(&call.session_id, &call.call_id);
                call.decision = Decision::Rejected;
                call.decided_by = "client".into();
                self.tell_result(&call, json!({"status": "cancelled"}));
                self.audit(&call, "cancelled", None, &[], &[]);
                return Err(rejected("the call was cancelled by its client"));
            }
        };
        match answer {
            Some(true) => {
                call.decision = Decision::Approved;
                call.started_ms = now_ms();
                Ok(call)
            }
            Some(false) => {
                call.decision = Decision::Rejected;
                self.tell_result(&call, json!({"status": "rejected"}));
                self.audit(&call, "rejected", None, &[], &[]);
                Err(rejected("rejected by the user"))
            }
            None => {
                call.decision = Decision::TimedOut;
                call.decided_by = "timeout".into();
                self.tell_result(&call, json!({"status": "timed_out"}));
                self.audit(&call, "timed_out", None, &[], &[]);
                Err(rejected(&format!(
                    "no approval within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }

    /// `sh -c` with the call's timeout, working directory and environment.
    pub(super) fn exec_spec(&self, args: &ExecArgs) -> Result<CommandSpec, ApiError> {
        let limits = self.api.limits();
        if args.command.trim().is_empty() {
            return Err(ApiError::bad_request("command is empty"));
        }
        if args.command.len() > limits.max_command_bytes {
            return Err(ApiError::bad_request(format!(
                "command is longer than {} bytes",
                limits.max_command_bytes
            )));
        }
        let timeout = match args.timeout_ms {
            None => limits.exec_default_timeout,
            Some(0) => return Err(ApiError::bad_request("timeoutMs must be at least 1")),
            Some(ms) => Duration::from_millis(ms).min(limits.exec_max_timeout),
        };
        let mut spec = CommandSpec::shell(&args.command, timeout, limits.exec_output_limit_bytes);
        if let Some(cwd) = &args.cwd {
            spec.cwd = confine(cwd)?;
        }
        for (name, value) in args.env.iter().flatten() {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid || value.contains('\0') {
                return Err(ApiError::bad_request(format!(
                    "env: {name:?} is not a valid variable name (letters, digits, _)"
                )));
            }
            spec.env.retain(|kv| !kv.starts_with(&format!("{name}=")));
            spec.env.push(format!("{name}={value}"));
        }
        Ok(spec)
    }

    pub(super) async fn file<T: serde::de::DeserializeOwned>(
        &self,
        call: &Call,
        request: FileRequest,
        body: Vec<u8>,
    ) -> Result<(T, Vec<u8>), ApiError> {
        self.api
            .sessions()
            .file(&call.session_id, &request, body)
            .await
            .map_err(|e| ApiError::from(&e))
    }

    /// The tool result of a file call, told to the browser too.
    pub(super) fn finish(
        &self,
        call: &Call,
        result: Result<Vec<ContentBlock>, ApiError>,
    ) -> Result<CallToolResult, ErrorData> {
        match result {
            Ok(content) => {
                self.tell_result(call, json!({"status": "ok"}));
                self.audit(call, "ok", None, &[], &[]);
                Ok(CallToolResult::success(content))
            }
            Err(e) => {
                self.tell_result(call, error_result(&e));
                self.audit(call, "error", None, &[], &[]);
                Ok(failed(&e))
            }
        }
    }

    /// The tool result of a call that could change the workspace: as [`Self::finish`], with
    /// the call's checkpoint (its id for `undo`, and what it changed) told to the browser and
    /// given to the agent.
    pub(super) async fn finish_changed(
        &self,
        call: &Call,
        before: crate::api::socket::workspace::Before,
        result: Result<String, ApiError>,
    ) -> Result<CallToolResult, ErrorData> {
        let mut checkpoint = json!({});
        self.api
            .checkpoint_after(&call.session_id, &call.call_id, before, &mut checkpoint)
            .await;
        let (mut told, status) = match &result {
            Ok(_) => (json!({"status": "ok"}), "ok"),
            Err(e) => (error_result(e), "error"),
        };
        for (k, v) in checkpoint.as_object().into_iter().flatten() {
            told[k] = v.clone();
        }
        self.tell_result(call, told);
        self.audit(call, status, None, &[], &[]);
        match result {
            Ok(text) => {
                checkpoint["callId"] = json!(call.call_id);
                Ok(CallToolResult::success(vec![
                    ContentBlock::text(text),
                    ContentBlock::text(checkpoint.to_string()),
                ]))
            }
            Err(e) => Ok(failed(&e)),
        }
    }

    /// The call's entry in the session's audit trail.
    pub(super) fn audit(
        &self,
        call: &Call,
        status: &str,
        exit_code: Option<i32>,
        stdout: &[u8],
        stderr: &[u8],
    ) {
        self.api.audit(CallRecord {
            session_id: &call.session_id,
            origin: Origin::Mcp,
            client: call.client.clone(),
            tool: call.tool,
            args: call.args.clone(),
            decision: call.decision,
            decided_by: &call.decided_by,
            started_ms: call.started_ms,
            status,
            exit_code,
            stdout,
            stderr,
        });
    }

    /// `tool:result` to the session's browser, for an agent's call.
    pub(super) fn tell_result(&self, call: &Call, mut body: Value) {
        body["callId"] = json!(call.call_id);
        body["origin"] = json!("mcp");
        self.api
            .emit_to_session(&call.session_id, "tool:result", &body);
    }
}

/// A path of the workspace, absolute: relative paths start at /workspace, and none may
/// leave it (`..` past it, or an absolute path elsewhere).
pub(super) fn confine(path: &str) -> Result<String, ApiError> {
    if path.contains('\0') {
        return Err(ApiError::bad_request("path contains a NUL byte"));
    }
    let relative = match path.strip_prefix(WORKSPACE) {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => rest,
        _ if path.starts_with('/') => {
            return Err(ApiError::bad_request(format!(
                "path {path:?} is outside /workspace"
            )));
        }
        _ => path,
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ApiError::bad_request(format!(
                        "path {path:?} is outside /workspace"
                    )));
                }
            }
            name => parts.push(name),
        }
    }
    Ok(if parts.is_empty() {
        WORKSPACE.to_string()
    } else {
        format!("{WORKSPACE}/{}", parts.join("/"))
    })
}

pub(super) fn encoding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Utf8 => "utf8",
        Encoding::Base64 => "base64",
    }
}

/// `tool:result`'s body for a call that failed with `e`.
pub(super) fn error_result(e: &ApiError) -> Value {
    json!({"status": "error", "error": {"code": e.code.as_str(), "message": e.message}})
}

/// A refused or failed call, as a tool result the agent can read.
pub(super) fn failed(e: &ApiError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{}: {}",
        e.code.as_str(),
        e.message
    ))])
}

pub(super) fn rejected(why: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(why.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_workspace() {
        assert_eq!(confine("a.txt").unwrap(), "/workspace/a.txt");
        assert_eq!(confine("./d/../b").unwrap(), "/workspace/b");
        assert_eq!(confine("").unwrap(), "/workspace");
        assert_eq!(confine("/workspace").unwrap(), "/workspace");
        assert_eq!(confine("/workspace/x/y").unwrap(), "/workspace/x/y");
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../x",
            "/workspacex/a",
            "/workspace/../etc",
            "a\0b",
        ] {
            assert!(confine(bad).is_err(), "{bad} must be refused");
        }
    }
}
