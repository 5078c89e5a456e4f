//! The browser's and the agent's side of MCP tests: the official socket.io client driven
//! line by line (tests/js/browser_driver.js), and rmcp's own client.

use std::process::Stdio;

use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, Implementation};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::{node_modules, within};

/// A browser's side of one session (the official socket.io client, driven line by line).
pub struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    events: mpsc::UnboundedReceiver<Value>,
    /// Events heard but not yet asked for.
    heard: Vec<Value>,
    pub session: Value,
}

impl Browser {
    pub async fn open(url: &str, approval: Option<&str>) -> Browser {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/browser_driver.js");
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(script)
            .arg(url)
            .env("NODE_PATH", node_modules())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(a) = approval {
            cmd.arg(a);
        }
        let mut child = cmd.spawn().expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut b = Browser {
            child,
            stdin,
            events,
            heard: Vec::new(),
            session: Value::Null,
        };
        b.session = b.expect("session", |_| true).await;
        b
    }

    /// The first event `ev` heard (before or from now on) whose data passes `pred`; it is
    /// taken, the others are kept for later.
    pub async fn expect(&mut self, ev: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let matches = |v: &Value| v["ev"] == ev && pred(&v["data"]);
        if let Some(i) = self.heard.iter().position(matches) {
            return self.heard.remove(i)["data"].clone();
        }
        within(30, &format!("browser hears {ev}"), async {
            loop {
                let v = self.events.recv().await.expect("browser driver runs");
                if matches(&v) {
                    return v["data"].clone();
                }
                self.heard.push(v);
            }
        })
        .await
    }

    pub async fn send(&mut self, cmd: Value) {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
    }

    pub async fn answer(&mut self, call_id: &str, approved: bool) -> Value {
        self.send(json!({"do": "approve", "callId": call_id, "approved": approved}))
            .await;
        self.expect("ack", |_| true).await
    }

    pub fn token(&self) -> String {
        self.session["mcp"]["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub type Agent = RunningService<RoleClient, ClientConfig>;

pub async fn agent(url: &str, token: &str) -> Result<Agent, String> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_string())
            .auth_header(token.to_string()),
    );
    let info = ClientConfig::new(
        Default::default(),
        Implementation::new("sandpool-test-agent", "1.2.3"),
    );
    info.serve(transport).await.map_err(|e| e.to_string())
}

pub async fn call(agent: &rmcp::Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    let params = CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().unwrap().clone());
    within(60, &format!("tool {tool}"), agent.call_tool(params))
        .await
        .expect("the call is answered")
}

pub fn result_text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn is_error(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}

/// An agent that also hears progress notifications (an `exec`'s output as it runs).
#[derive(Clone)]
pub struct ProgressAgent {
    info: ClientConfig,
    heard: mpsc::UnboundedSender<String>,
}

impl rmcp::ClientHandler for ProgressAgent {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        let _ = self.heard.send(params.message.unwrap_or_default());
    }
}

/// Connects a [`ProgressAgent`]; the receiver yields each progress message.
pub async fn progress_agent(
    url: &str,
    token: &str,
) -> (
    RunningService<RoleClient, ProgressAgent>,
    mpsc::UnboundedReceiver<String>,
) {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_string())
            .auth_header(token.to_string()),
    );
    let (heard, rx) = mpsc::unbounded_channel();
    let handler = ProgressAgent {
        info: ClientConfig::new(
            Default::default(),
            Implementation::new("progress-agent", "1.0"),
        ),
        heard,
    };
    (
        handler.serve(transport).await.expect("the agent connects"),
        rx,
    )
}

/// `GET /api/sessions/{id}/audit` of the service at `base` (`http://host:port`), with `token`.
pub async fn audit_trail(base: &str, session_id: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/api/sessions/{session_id}/audit"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
