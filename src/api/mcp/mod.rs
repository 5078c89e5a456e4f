//! The agents' door: an MCP endpoint (Streamable HTTP, `rmcp`) at `/mcp`, in the same axum
//! server as the Socket.IO API. A caller names its session by the session's workspace token
//! (`Authorization: Bearer <token>`, handed to the browser in the `session` event), and its
//! tools act on that session's sandbox only. Calls wait for the user's approval in the
//! browser as the session's policy says (`tools.rs`).
//!
//! What it must not do: reach any sandbox but the token's session's, act before the token is
//! checked (a missing, forged or ended token gets 401 before `rmcp` sees the request), or
//! log a token.

mod calls;
mod tools;

use std::sync::Arc;

use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::door;
pub(crate) use super::door::Workspace;
use super::socket::SocketApi;
use crate::config::McpConfig;

/// The `/mcp` route: the token check, then `rmcp`'s service with the deployment's host and
/// origin checks and body limit. `cancel` ends its streams at shutdown.
pub fn router(api: Arc<SocketApi>, config: &McpConfig, cancel: CancellationToken) -> Router {
    let mut server = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(config.max_body_bytes)
        .with_cancellation_token(cancel);
    server = if config.allowed_hosts.contains("*") {
        server.disable_allowed_hosts()
    } else {
        server.with_allowed_hosts(config.allowed_hosts.0.clone())
    };
    if !config.allowed_origins.0.is_empty() {
        server = server.with_allowed_origins(config.allowed_origins.0.clone());
    }
    let tools_api = api.clone();
    let service = StreamableHttpService::new(
        move || Ok(tools::Tools::new(tools_api.clone())),
        Arc::new(LocalSessionManager::default()),
        server,
    );
    door::guard(Router::new().nest_service("/mcp", service), api)
}
