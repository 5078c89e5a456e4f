//! The MCP tools: `exec`, `read_file`, `write_file`, `list_dir`, `delete_path`, each on the
//! token's session's sandbox, as the tenant, through its supervisor. A call that the
//! session's approval policy holds waits for the user's answer in the browser (`tool:request`
//! there, answered with `tool:approval`); a rejected or unanswered call is a tool result with
//! `isError: true`, so the agent can tell its user why.
//!
//! Paths are relative to `/workspace` and stay inside it: `..` that would climb out, and
//! absolute paths elsewhere, are refused here; what the path then reaches is opened with the
//! tenant's own file credentials by the supervisor, so a symlink can reach nothing the tenant
//! could not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Workspace;
use crate::api::audit::CallRecord;
use crate::api::socket::payload::new_call_id;
use crate::api::socket::{MAX_PENDING_PER_SESSION, SocketApi};
use crate::api::{ApiError, ErrorCode};
use crate::audit::{Decision, Origin};
use crate::session::now_ms;
use crate::session::{CommandSpec, FileRequest, OutputChunk, PendingCall, PendingView};
use sandpool_supervisor::layout::WORKSPACE;
use sandpool_supervisor::proto::{Done, FileData, Listing, Written};

/// Largest file `read_file` returns, in bytes.
const READ_MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecArgs {
    /// The shell command (`sh -c`), run as the sandbox's user.
    pub command: String,
    /// Kill it after this long, in milliseconds (default and maximum: the service's).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Working directory, relative to /workspace (default /workspace).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment variables added to the sandbox user's.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadArgs {
    /// File path, relative to /workspace.
    pub path: String,
    /// How the content is returned: utf8 (default) or base64.
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    /// File path, relative to /workspace; missing parent directories are created.
    pub path: String,
    /// The file's new content.
    pub content: String,
    /// How `content` is encoded: utf8 (default) or base64.
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// Path, relative to /workspace.
    pub path: String,
}

/// One MCP request's view of the service (made per request by `rmcp`: cheap).
#[derive(Clone)]
pub struct Tools {
    api: Arc<SocketApi>,
    tool_router: ToolRouter<Tools>,
}

#[tool_router]
impl Tools {
    pub fn new(api: Arc<SocketApi>) -> Self {
        Self {
            api,
            tool_router: Self::tool_router(),
        }
    }

    /// Runs a shell command in the session's sandbox and returns its exit code and output.
    /// Output also streams as progress notifications when the request asks for them.
    #[tool(annotations(
        title = "Run a command",
        read_only_hint = false,
        destructive_hint = true
    ))]
    async fn exec(
        &self,
        Parameters(args): Parameters<ExecArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let shown = json!({"command": args.command, "timeoutMs": args.timeout_ms, "cwd": args.cwd, "env": args.env});
        let call = match self.admit(&ctx, "exec", shown, false).await {
            Ok(call) => call,
            Err(refusal) => return Ok(refusal),
        };
        let spec = match self.exec_spec(&args) {
            Ok(spec) => spec,
            Err(e) => {
                self.audit(&call, "error", None, &[], &[]);
                return Ok(failed(&e));
            }
        };
        let progress = ctx.meta.get_progress_token().map(|token| {
            let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
            let peer = ctx.peer.clone();
            let task = tokio::spawn(async move {
                let mut sent = 0usize;
                while let Some(chunk) = rx.recv().await {
                    sent += chunk.data.len();
                    let text = String::from_utf8_lossy(&chunk.data).into_owned();
                    let note = ProgressNotificationParam::new(token.clone(), sent as f64)
                        .with_message(text);
                    if peer.notify_progress(note).await.is_err() {
                        return;
                    }
                }
            });
            (tx, task)
        });
        let (also, task) = match progress {
            Some((tx, task)) => (Some(tx), Some(task)),
            None => (None, None),
        };
        let socket = self.api.socket_of(&call.session_id);
        let result = self
            .api
            .run_spec(socket, &call.session_id, &call.call_id, &spec, also)
            .await;
        if let Some(task) = task {
            let _ = task.await;
        }
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                self.tell_result(&call, json!({"status": "error", "error": {"code": e.code.as_str(), "message": e.message}}));
                self.audit(&call, "error", None, &[], &[]);
                return Ok(failed(&e));
            }
        };
        self.audit(&call, out.status, out.exit_code, &out.stdout, &out.stderr);
        self.tell_result(
            &call,
            json!({"status": out.status, "exitCode": out.exit_code, "durationMs": out.duration_ms}),
        );
        let body = json!({
            "status": out.status,
            "exitCode": out.exit_code,
            "stdout": String::from_utf8_lossy(&out.stdout),
            "stderr": String::from_utf8_lossy(&out.stderr),
            "truncated": out.truncated,
            "durationMs": out.duration_ms,
        });
        let text = ContentBlock::text(body.to_string());
        Ok(if out.status == "timeout" {
            CallToolResult::error(vec![text])
        } else {
            CallToolResult::success(vec![text])
        })
    }

    /// Reads a file of the session's workspace.
    #[tool(annotations(title = "Read a file", read_only_hint = true, destructive_hint = false))]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let shown = json!({"path": args.path, "encoding": encoding_name(args.encoding)});
        let call = match self.admit(&ctx, "read_file", shown, true).await {
            Ok(call) => call,
            Err(refusal) => return Ok(refusal),
        };
        let result = async {
            let path = confine(&args.path)?;
            let (head, body): (FileData, Vec<u8>) = self
                .file(
                    &call,
                    FileRequest::Read {
                        path,
                        offset: 0,
                        max_bytes: READ_MAX_BYTES,
                    },
                    Vec::new(),
                )
                .await?;
            if head.truncated {
                return Err(ApiError::bad_request(format!(
                    "the file has {} bytes; read_file returns at most {READ_MAX_BYTES}",
                    head.size
                )));
            }
            match args.encoding {
                Encoding::Base64 => Ok(base64::engine::general_purpose::STANDARD.encode(&body)),
                Encoding::Utf8 => String::from_utf8(body).map_err(|_| {
                    ApiError::bad_request(
                        "the file is not UTF-8 text; read it with encoding base64",
                    )
                }),
            }
        }
        .await;
        self.finish(&call, result.map(|text| vec![ContentBlock::text(text)]))
    }

    /// Writes a file of the session's workspace (created, or replaced), creating missing
    /// parent directories.
    #[tool(annotations(
        title = "Write a file",
        read_only_hint = false,
        destructive_hint = true
    ))]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let shown = json!({"path": args.path, "bytes": args.content.len(), "encoding": encoding_name(args.encoding)});
        let call = match self.admit(&ctx, "write_file", shown, false).await {
            Ok(call) => call,
            Err(refusal) => return Ok(refusal),
        };
        let result = async {
            let path = confine(&args.path)?;
            let bytes = match args.encoding {
                Encoding::Utf8 => args.content.into_bytes(),
                Encoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(args.content.as_bytes())
                    .map_err(|e| ApiError::bad_request(format!("content is not base64: {e}")))?,
            };
            if let Some((parent, _)) = path.rsplit_once('/')
                && parent != WORKSPACE
            {
                let mkdir = FileRequest::Mkdir {
                    path: parent.to_string(),
                    parents: true,
                };
                let _: (Done, Vec<u8>) = self.file(&call, mkdir, Vec::new()).await?;
            }
            let write = FileRequest::Write {
                path: path.clone(),
                append: false,
                mode: None,
            };
            let (written, _): (Written, Vec<u8>) = self.file(&call, write, bytes).await?;
            Ok(format!("wrote {} bytes to {path}", written.bytes))
        }
        .await;
        self.finish(&call, result.map(|text| vec![ContentBlock::text(text)]))
    }

    /// Lists a directory of the session's workspace: each entry's name, kind, size, mode and
    /// modification time.
    #[tool(annotations(
        title = "List a directory",
        read_only_hint = true,
        destructive_hint = false
    ))]
    async fn list_dir(
        &self,
        Parameters(args): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let shown = json!({"path": args.path});
        let call = match self.admit(&ctx, "list_dir", shown, true).await {
            Ok(call) => call,
            Err(refusal) => return Ok(refusal),
        };
        let result = async {
            let path = confine(&args.path)?;
            let (listing, _): (Listing, Vec<u8>) =
                self.file(&call, FileRequest::List { path }, Vec::new()).await?;
            let entries: Vec<Value> = listing
                .entries
                .iter()
                .map(|e| json!({"name": e.name, "kind": e.kind, "size": e.size, "mode": e.mode, "modifiedUnix": e.modified_unix}))
                .collect();
            Ok(json!({"entries": entries}).to_string())
        }
        .await;
        self.finish(&call, result.map(|text| vec![ContentBlock::text(text)]))
    }

    /// Deletes a file, a symlink or a directory (with everything in it) of the session's
    /// workspace.
    #[tool(annotations(
        title = "Delete a path",
        read_only_hint = false,
        destructive_hint = true
    ))]
    async fn delete_path(
        &self,
        Parameters(args): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let shown = json!({"path": args.path});
        let call = match self.admit(&ctx, "delete_path", shown, false).await {
            Ok(call) => call,
            Err(refusal) => return Ok(refusal),
        };
        let result = async {
            let path = confine(&args.path)?;
            if path == WORKSPACE {
                return Err(ApiError::bad_request(
                    "the workspace itself cannot be deleted",
                ));
            }
            let delete = FileRequest::Delete {
                path: path.clone(),
                recursive: true,
            };
            let _: (Done, Vec<u8>) = self.file(&call, delete, Vec::new()).await?;
            Ok(format!("deleted {path}"))
        }
        .await;
        self.finish(&call, result.map(|text| vec![ContentBlock::text(text)]))
    }
}

#[tool_handler(router = self.tool_router, name = "sandpool")]
impl ServerHandler for Tools {}

/// An admitted call: its session and id, and what its audit entry says of it.
struct Call {
    session_id: String,
    call_id: String,
    tool: &'static str,
    args: Value,
    client: Option<String>,
    decision: Decision,
    decided_by: String,
    started_ms: i64,
}

impl Tools {
    /// The call's session (from the token check), and the user's approval when the
    /// session's policy holds the call: `Err` is the tool result to answer with instead.
    async fn admit(
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
        };
        if !policy.needs_approval(read_only) {
            return Ok(call);
        }
        call.decided_by = "user".into();
        let (pending, decision) = PendingCall::agent(tool, shown.clone(), client.clone());
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
        let view = PendingView {
            call_id: call.call_id.clone(),
            tool: tool.to_string(),
            args: shown,
            origin: crate::session::CallOrigin::Mcp,
            client,
        };
        // No browser attached: the call waits for one (its resume replays the request).
        self.api.request_approval(&call.session_id, &view);
        let timeout = self.api.approval_timeout();
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout, decision) => answer,
            () = ctx.ct.cancelled() => {
                sessions.take_proposal(&call.session_id, &call.call_id);
                return Err(rejected("the call was cancelled by its client"));
            }
        };
        match answer {
            Ok(Ok(true)) => {
                call.decision = Decision::Approved;
                call.started_ms = now_ms();
                Ok(call)
            }
            Ok(Ok(false)) => {
                call.decision = Decision::Rejected;
                self.tell_result(&call, json!({"status": "rejected"}));
                self.audit(&call, "rejected", None, &[], &[]);
                Err(rejected("rejected by the user"))
            }
            Ok(Err(_)) => Err(rejected(
                "the session ended or moved before the user answered",
            )),
            Err(_) => {
                sessions.take_proposal(&call.session_id, &call.call_id);
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
    fn exec_spec(&self, args: &ExecArgs) -> Result<CommandSpec, ApiError> {
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

    async fn file<T: serde::de::DeserializeOwned>(
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
    fn finish(
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
                self.tell_result(call, json!({"status": "error", "error": {"code": e.code.as_str(), "message": e.message}}));
                self.audit(call, "error", None, &[], &[]);
                Ok(failed(&e))
            }
        }
    }

    /// The call's entry in the session's audit trail.
    fn audit(
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
    fn tell_result(&self, call: &Call, mut body: Value) {
        body["callId"] = json!(call.call_id);
        body["origin"] = json!("mcp");
        self.api
            .emit_to_session(&call.session_id, "tool:result", &body);
    }
}

/// A path of the workspace, absolute: relative paths start at /workspace, and none may
/// leave it (`..` past it, or an absolute path elsewhere).
fn confine(path: &str) -> Result<String, ApiError> {
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

fn encoding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Utf8 => "utf8",
        Encoding::Base64 => "base64",
    }
}

/// A refused or failed call, as a tool result the agent can read.
fn failed(e: &ApiError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "{}: {}",
        e.code.as_str(),
        e.message
    ))])
}

fn rejected(why: &str) -> CallToolResult {
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
