//! The MCP tools: `exec`, `read_file`, `write_file`, `list_dir`, `delete_path`, each on the
//! token's session's sandbox, as the tenant, through its supervisor. A call that the
//! session's approval policy holds waits for the user's answer in the browser (`tool:request`
//! there, answered with `tool:approval`); a rejected or unanswered call is a tool result with
//! `isError: true`, so the agent can tell its user why. What every call goes through
//! (admission, approval, audit, paths) is in `calls.rs`.
//!
//! Paths are relative to `/workspace` and stay inside it: `..` that would climb out, and
//! absolute paths elsewhere, are refused here; what the path then reaches is opened with the
//! tenant's own file credentials by the supervisor, so a symlink can reach nothing the tenant
//! could not.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::calls::{encoding_name, error_result, failed};
use crate::api::ApiError;
use crate::api::error::ErrorCode;
use crate::api::socket::SocketApi;
use crate::api::socket::workspace::workspace_path;
use crate::session::{FileRequest, OutputChunk};
use sandpool_supervisor::layout::WORKSPACE;
use sandpool_supervisor::proto::Listing;

/// How much of a `write_file`'s content the user sees when asked to approve it.
const PREVIEW_CHARS: usize = 2000;

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
/// Arguments of `undo`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UndoArgs {
    /// The `callId` of the tool call to undo (with every later one), as its result gave it.
    pub call_id: String,
}

pub struct Tools {
    pub(super) api: Arc<SocketApi>,
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
        // Checked before the user is asked: an approval of a call that cannot run is wasted.
        let spec = match self.exec_spec(&args) {
            Ok(spec) => spec,
            Err(e) => return Ok(failed(&e)),
        };
        let call = match self.admit(&ctx, "exec", shown, false).await {
            Ok(call) => call,
            Err(refusal) => return Ok(refusal),
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
                let mut body = error_result(&e);
                body["checkpoint"] = Value::Null;
                self.tell_result(&call, body);
                self.audit(&call, "error", None, &[], &[]);
                return Ok(failed(&e));
            }
        };
        self.audit(&call, out.status, out.exit_code, &out.stdout, &out.stderr);
        let mut told =
            json!({"status": out.status, "exitCode": out.exit_code, "durationMs": out.duration_ms});
        out.add_checkpoint(&mut told);
        self.tell_result(&call, told);
        let mut result = out.to_json();
        result["callId"] = json!(call.call_id);
        let text = ContentBlock::text(result.to_string());
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
            let path = workspace_path(&args.path)?;
            let (size, body) = self
                .api
                .read_range(&call.session_id, &path, 0, READ_MAX_BYTES as usize)
                .await?;
            if size > READ_MAX_BYTES {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the file has {size} bytes; read_file returns at most {READ_MAX_BYTES}"
                    ),
                ));
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
        // What the user approves: the path, and the content (its start, for a long one).
        let preview: String = args.content.chars().take(PREVIEW_CHARS).collect();
        let shown = json!({
            "path": args.path,
            "bytes": args.content.len(),
            "encoding": encoding_name(args.encoding),
            "content": preview,
            "contentCut": args.content.chars().count() > PREVIEW_CHARS,
        });
        let call = match self.admit(&ctx, "write_file", shown, false).await {
            Ok(call) => call,
            Err(refusal) => return Ok(refusal),
        };
        let path = workspace_path(&args.path);
        let bytes = match args.encoding {
            Encoding::Utf8 => Ok(args.content.into_bytes()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(args.content.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("content is not base64: {e}"))),
        };
        let (path, bytes) = match (path, bytes) {
            (Ok(path), Ok(bytes)) => (path, bytes),
            (Err(e), _) | (_, Err(e)) => return self.finish(&call, Err(e)),
        };
        let before = self
            .api
            .checkpoint_before(&call.session_id, &call.call_id)
            .await;
        let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            bytes::Bytes::from(bytes),
        )]);
        let result = self
            .api
            .upload(&call.session_id, &path, None, body)
            .await
            .map(|(n, _)| format!("wrote {n} bytes to {WORKSPACE}/{path}"));
        self.finish_changed(&call, before, result).await
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
            let path = workspace_path(&args.path)?;
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
        let path = match workspace_path(&args.path) {
            Ok(path) => path,
            Err(e) => return self.finish(&call, Err(e)),
        };
        let before = self
            .api
            .checkpoint_before(&call.session_id, &call.call_id)
            .await;
        let result = self
            .api
            .delete(&call.session_id, &path, true)
            .await
            .map(|()| format!("deleted {WORKSPACE}/{path}"));
        self.finish_changed(&call, before, result).await
    }

    /// Restores the session's workspace to its state right before an earlier tool call (its
    /// `callId`, from that call's result): that call and every later one are undone.
    #[tool(annotations(
        title = "Undo tool calls",
        read_only_hint = false,
        destructive_hint = true
    ))]
    async fn undo(
        &self,
        Parameters(args): Parameters<UndoArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let shown = json!({"callId": args.call_id});
        let call = match self.admit(&ctx, "undo", shown, false).await {
            Ok(call) => call,
            Err(refusal) => return Ok(refusal),
        };
        // The undo is its own audit entry (written by `SocketApi::undo`).
        let result = self
            .api
            .undo(
                &call.session_id,
                &args.call_id,
                crate::audit::Origin::Mcp,
                call.client.clone(),
            )
            .await;
        match result {
            Ok(body) => {
                self.tell_result(&call, json!({"status": "ok", "undone": args.call_id}));
                Ok(CallToolResult::success(vec![ContentBlock::text(
                    body.to_string(),
                )]))
            }
            Err(e) => {
                self.tell_result(&call, error_result(&e));
                Ok(failed(&e))
            }
        }
    }
}

#[tool_handler(router = self.tool_router, name = "sandpool")]
impl ServerHandler for Tools {}
