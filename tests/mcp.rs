//! The agents' door, black-box: the real service, the official socket.io client as the
//! browser (tests/js/browser_driver.js), and rmcp's own client as the agent. Every tool, each
//! approval policy, approved, rejected and timed-out calls, a browser that comes back to
//! pending requests, tokens of other sessions, forged and ended tokens, and path escapes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, Implementation};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// A browser's side of one session (the official socket.io client, driven line by line).
struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    events: mpsc::UnboundedReceiver<Value>,
    /// Events heard but not yet asked for.
    heard: Vec<Value>,
    session: Value,
}

impl Browser {
    async fn open(addr: std::net::SocketAddr, approval: Option<&str>) -> Browser {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/browser_driver.js");
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(script)
            .arg(format!("http://{addr}"))
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
    async fn expect(&mut self, ev: &str, pred: impl Fn(&Value) -> bool) -> Value {
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

    async fn send(&mut self, cmd: Value) {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn answer(&mut self, call_id: &str, approved: bool) -> Value {
        self.send(json!({"do": "approve", "callId": call_id, "approved": approved}))
            .await;
        self.expect("ack", |_| true).await
    }

    fn token(&self) -> String {
        self.session["mcp"]["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

type Agent = RunningService<RoleClient, ClientConfig>;

async fn agent(url: &str, token: &str) -> Result<Agent, String> {
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

async fn call(agent: &rmcp::Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    let params = CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().unwrap().clone());
    within(60, &format!("tool {tool}"), agent.call_tool(params))
        .await
        .expect("the call is answered")
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_error(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}

/// A raw POST to `/mcp`: its status (for the token checks, before any MCP).
async fn post_status(url: &str, auth: Option<&str>) -> u16 {
    let client = reqwest::Client::new();
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mcp_tools_run_in_the_tokens_session_as_the_user_approves() {
    let instance = unique_instance("mcp");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_APPROVAL_TIMEOUT_MS", "3000")]).await;
    let mut alice = Browser::open(service.addr, None).await;
    let url = alice.session["mcp"]["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("http://{}/mcp", service.addr));
    assert_eq!(alice.session["approval"], "writes", "the default policy");
    let token = alice.token();
    assert!(token.len() > 64, "a 256-bit capability");

    // No token, a forged one, a well-formed one for another session: 401, nothing touched.
    assert_eq!(post_status(&url, None).await, 401);
    assert_eq!(post_status(&url, Some("Bearer nope")).await, 401);
    let forged = format!("{}{}", &token[..token.len() - 4], "0000");
    assert_eq!(
        post_status(&url, Some(&format!("Bearer {forged}"))).await,
        401
    );
    assert!(agent(&url, &forged).await.is_err());

    let a = agent(&url, &token).await.expect("the agent connects");
    let tools = a.list_all_tools().await.unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        ["delete_path", "exec", "list_dir", "read_file", "write_file"]
    );
    for t in &tools {
        let read_only = t.annotations.as_ref().and_then(|a| a.read_only_hint);
        let expected = matches!(&*t.name, "read_file" | "list_dir");
        assert_eq!(read_only, Some(expected), "{}", t.name);
        assert!(
            t.input_schema.get("properties").is_some(),
            "{} has a schema",
            t.name
        );
    }

    // `writes`: a write waits for the user; the browser sees who asks.
    let pending = {
        let a = a.peer().clone();
        tokio::spawn(async move {
            call(
                &a,
                "write_file",
                json!({"path": "notes/a.txt", "content": "from the agent\n"}),
            )
            .await
        })
    };
    let req = alice.expect("tool:request", |_| true).await;
    assert_eq!(req["tool"], "write_file");
    assert_eq!(req["origin"], "mcp");
    assert_eq!(req["client"], "sandpool-test-agent/1.2.3");
    assert_eq!(req["args"]["path"], "notes/a.txt");
    let ack = alice.answer(req["callId"].as_str().unwrap(), true).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let written = pending.await.unwrap();
    assert!(!is_error(&written), "{}", text(&written));

    // Reads run at once under `writes`, and see what the write did (parents created).
    let read = call(&a, "read_file", json!({"path": "notes/a.txt"})).await;
    assert_eq!(text(&read), "from the agent\n");
    let b64 = call(
        &a,
        "read_file",
        json!({"path": "/workspace/notes/a.txt", "encoding": "base64"}),
    )
    .await;
    assert_eq!(text(&b64), "ZnJvbSB0aGUgYWdlbnQK");
    let listing = call(&a, "list_dir", json!({"path": "notes"})).await;
    assert!(text(&listing).contains("\"a.txt\""), "{}", text(&listing));

    // A rejected exec is an error result the agent can read; nothing ran.
    let pending = {
        let a = a.peer().clone();
        tokio::spawn(async move {
            call(&a, "exec", json!({"command": "touch /workspace/rejected"})).await
        })
    };
    let req = alice.expect("tool:request", |r| r["tool"] == "exec").await;
    assert_eq!(req["args"]["command"], "touch /workspace/rejected");
    alice.answer(req["callId"].as_str().unwrap(), false).await;
    let rejected = pending.await.unwrap();
    assert!(is_error(&rejected));
    assert_eq!(text(&rejected), "rejected by the user");

    // Unanswered: `no approval within …`, and the request is withdrawn.
    let timed_out = call(&a, "exec", json!({"command": "true"})).await;
    assert!(is_error(&timed_out));
    assert_eq!(text(&timed_out), "no approval within 3000 ms");
    let req = alice.expect("tool:request", |r| r["tool"] == "exec").await;
    let late = alice.answer(req["callId"].as_str().unwrap(), true).await;
    assert_eq!(late["error"]["code"], "not_found", "{late}");

    // `none`: nothing waits; exec's output reaches the browser as it runs.
    alice
        .send(json!({"do": "policy", "approval": "none"}))
        .await;
    let ack = alice.expect("ack", |_| true).await;
    assert_eq!(ack["approval"], "none", "{ack}");
    let ran = call(
        &a,
        "exec",
        json!({"command": "ls /workspace; echo \"$GREETING\" from $(pwd); test ! -e /workspace/rejected", "cwd": "notes", "env": {"GREETING": "hello"}}),
    )
    .await;
    assert!(!is_error(&ran), "{}", text(&ran));
    let out: Value = serde_json::from_str(&text(&ran)).unwrap();
    assert_eq!(out["exitCode"], 0, "{out}");
    assert_eq!(out["stdout"], "notes\nhello from /workspace/notes\n");
    alice
        .expect("tool:output", |o| {
            o["data"].as_str().is_some_and(|d| d.contains("hello from"))
        })
        .await;
    alice
        .expect("tool:result", |r| {
            r["origin"] == "mcp" && r["exitCode"] == 0
        })
        .await;

    // Paths stay in /workspace.
    for (tool, args) in [
        ("read_file", json!({"path": "../etc/passwd"})),
        ("read_file", json!({"path": "/etc/passwd"})),
        (
            "write_file",
            json!({"path": "a/../../../tmp/x", "content": "x"}),
        ),
        ("list_dir", json!({"path": "/"})),
        ("delete_path", json!({"path": "/workspace/.."})),
        ("exec", json!({"command": "true", "cwd": "../.."})),
    ] {
        let r = call(&a, tool, args.clone()).await;
        assert!(is_error(&r), "{tool} {args} must be refused");
        assert!(text(&r).contains("outside /workspace"), "{}", text(&r));
    }
    let missing = call(&a, "read_file", json!({"path": "nothing-here"})).await;
    assert!(is_error(&missing), "{}", text(&missing));

    // Another session's token reaches only its own sandbox.
    let bob = Browser::open(service.addr, Some("none")).await;
    assert_eq!(bob.session["approval"], "none");
    let b = agent(&url, &bob.token()).await.unwrap();
    let theirs = call(&b, "read_file", json!({"path": "notes/a.txt"})).await;
    assert!(
        is_error(&theirs),
        "bob reads alice's file: {}",
        text(&theirs)
    );
    let deleted = call(&a, "delete_path", json!({"path": "notes"})).await;
    assert!(!is_error(&deleted), "{}", text(&deleted));
    let gone = call(&a, "list_dir", json!({"path": ""})).await;
    assert_eq!(text(&gone), r#"{"entries":[]}"#);

    // `all`: reads wait too; a request made while the browser is away is replayed when it
    // comes back.
    alice.send(json!({"do": "policy", "approval": "all"})).await;
    alice.expect("ack", |a| a["approval"] == "all").await;
    alice.send(json!({"do": "leave"})).await;
    alice.expect("disconnect", |_| true).await;
    let pending = {
        let a = a.peer().clone();
        tokio::spawn(async move { call(&a, "list_dir", json!({"path": "."})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send(json!({"do": "resume"})).await;
    let resumed = alice.expect("session", |s| s["resumed"] == true).await;
    assert!(
        resumed["mcp"]["token"].is_null(),
        "a resume does not send the token again"
    );
    assert_eq!(resumed["approval"], "all");
    let req = alice
        .expect("tool:request", |r| r["tool"] == "list_dir")
        .await;
    alice.answer(req["callId"].as_str().unwrap(), true).await;
    assert!(!is_error(&pending.await.unwrap()));
    // The token survives the resume.
    alice
        .send(json!({"do": "policy", "approval": "none"}))
        .await;
    alice.expect("ack", |a| a["approval"] == "none").await;
    assert!(!is_error(
        &call(&a, "exec", json!({"command": "true"})).await
    ));

    // Every origin is in the session's audit trail, chained; another session's token does
    // not read it.
    alice
        .send(json!({"do": "exec", "command": "echo direct"}))
        .await;
    assert_eq!(alice.expect("ack", |_| true).await["exitCode"], 0);
    alice
        .send(json!({"do": "message", "text": "echo from chat"}))
        .await;
    alice.expect("ack", |a| a["ok"] == true).await;
    let req = alice
        .expect("tool:request", |r| r["origin"] == "chat")
        .await;
    alice.answer(req["callId"].as_str().unwrap(), true).await;
    alice
        .expect("tool:result", |r| {
            r["exitCode"] == 0 && r["origin"].is_null()
        })
        .await;
    let sid = alice.session["sessionId"].as_str().unwrap().to_string();
    let audit_url = format!("http://{}/api/sessions/{sid}/audit", service.addr);
    let trail = within(30, "the audit trail has every call", async {
        loop {
            let t: Value = reqwest::Client::new()
                .get(&audit_url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let has = |origin: &str, decision: &str| {
                t["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["origin"] == origin && e["decision"] == decision)
            };
            if has("socket", "approved") && has("chat", "approved") && has("mcp", "automatic") {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(trail["intact"], true, "{trail}");
    let entries = trail["entries"].as_array().unwrap();
    for decision in ["approved", "rejected", "timed_out", "automatic"] {
        assert!(
            entries
                .iter()
                .any(|e| e["origin"] == "mcp" && e["decision"] == decision),
            "an mcp call {decision} is in the trail"
        );
    }
    let direct = entries.iter().find(|e| e["origin"] == "socket").unwrap();
    assert_eq!(direct["stdoutBytes"], 7, "{direct}");
    assert_eq!(direct["client"], Value::Null);
    let foreign = reqwest::Client::new()
        .get(&audit_url)
        .bearer_auth(bob.token())
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 401);

    // Ended: the token opens nothing any more.
    alice.send(json!({"do": "end"})).await;
    alice.expect("ack", |a| a["ok"] == true).await;
    assert_eq!(
        post_status(&url, Some(&format!("Bearer {token}"))).await,
        401
    );
    let after = within(30, "a call after the end", async {
        let params = CallToolRequestParams::new("exec")
            .with_arguments(json!({"command": "true"}).as_object().unwrap().clone());
        a.call_tool(params).await
    })
    .await;
    assert!(
        after.is_err(),
        "a call with an ended session's token must fail: {after:?}"
    );
    drop(bob);
    let _ = sigterm_and_wait(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_decides_which_policies_a_browser_may_choose() {
    let instance = unique_instance("mcpp");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_APPROVAL_POLICIES", "all")]).await;
    // The default is the strictest allowed; a forbidden choice is refused, typed.
    let mut browser = Browser::open(service.addr, Some("none")).await;
    assert_eq!(browser.session["approval"], "all");
    let refused = browser.expect("sandpool:error", |_| true).await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    browser
        .send(json!({"do": "policy", "approval": "writes"}))
        .await;
    let ack = browser.expect("ack", |_| true).await;
    assert_eq!(ack["error"]["code"], "unauthorized", "{ack}");
    browser
        .send(json!({"do": "policy", "approval": "sometimes"}))
        .await;
    let ack = browser.expect("ack", |_| true).await;
    assert_eq!(ack["error"]["code"], "bad_request", "{ack}");
    let _ = sigterm_and_wait(service);
}

/// The Python interpreter of the virtualenv `scripts/test` makes (`SANDPOOL_PYTHON`, else
/// `target/venv/bin/python`), with the official `mcp` SDK pinned in tests/python.
fn venv_python() -> std::path::PathBuf {
    let python = std::env::var("SANDPOOL_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} not found (scripts/test makes it: python3 -m venv target/venv && target/venv/bin/pip install -r tests/python/requirements.txt)",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_python_agent_runs_a_command_the_browser_approves() {
    let instance = unique_instance("mcpy");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[]).await;
    let mut browser = Browser::open(service.addr, None).await;
    let url = browser.session["mcp"]["url"].as_str().unwrap().to_string();
    let agent = tokio::process::Command::new(venv_python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/agent.py"))
        .arg(&url)
        .arg(browser.token())
        .arg("echo hello from $(whoami) in $(pwd)")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let req = browser.expect("tool:request", |_| true).await;
    assert_eq!(req["tool"], "exec");
    assert_eq!(req["origin"], "mcp");
    assert!(
        req["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{req}"
    );
    browser.answer(req["callId"].as_str().unwrap(), true).await;
    let out = within(60, "the python agent", agent.wait_with_output())
        .await
        .unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["isError"], false, "{printed}");
    let result: Value = serde_json::from_str(printed["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        result["stdout"], "hello from sandbox in /workspace\n",
        "{result}"
    );
    let _ = sigterm_and_wait(service);
}
