//! The agents' door, black-box: the real service, the official socket.io client as the
//! browser (tests/js/browser_driver.js), and rmcp's own client as the agent. Every tool, each
//! approval policy, approved, rejected and timed-out calls, a browser that comes back to
//! pending requests, tokens of other sessions, forged and ended tokens, and path escapes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::mcp::*;
use common::*;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

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
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_APPROVAL_TIMEOUT_MS", "3000"),
            ("SANDPOOL_ADMIN_TOKEN", "operator-secret-for-the-test"),
        ],
    )
    .await;
    let mut alice = Browser::open(&format!("http://{}", service.addr), None).await;
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
        [
            "delete_path",
            "exec",
            "list_dir",
            "read_file",
            "undo",
            "write_file"
        ]
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
    assert!(!is_error(&written), "{}", result_text(&written));

    // Reads run at once under `writes`, and see what the write did (parents created).
    let read = call(&a, "read_file", json!({"path": "notes/a.txt"})).await;
    assert_eq!(result_text(&read), "from the agent\n");
    let b64 = call(
        &a,
        "read_file",
        json!({"path": "/workspace/notes/a.txt", "encoding": "base64"}),
    )
    .await;
    assert_eq!(result_text(&b64), "ZnJvbSB0aGUgYWdlbnQK");
    let listing = call(&a, "list_dir", json!({"path": "notes"})).await;
    assert!(
        result_text(&listing).contains("\"a.txt\""),
        "{}",
        result_text(&listing)
    );

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
    assert_eq!(result_text(&rejected), "rejected by the user");

    // Unanswered: `no approval within …`, and the request is withdrawn.
    let timed_out = call(&a, "exec", json!({"command": "true"})).await;
    assert!(is_error(&timed_out));
    assert_eq!(result_text(&timed_out), "no approval within 3000 ms");
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
    assert!(!is_error(&ran), "{}", result_text(&ran));
    let out: Value = serde_json::from_str(&result_text(&ran)).unwrap();
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

    // An agent that asks for progress hears the output as it comes.
    let (listener, mut progress) = progress_agent(&url, &token).await;
    let streamed = call(
        &listener,
        "exec",
        json!({"command": "echo first; sleep 0.3; echo second"}),
    )
    .await;
    assert!(!is_error(&streamed), "{}", result_text(&streamed));
    let heard = within(10, "progress messages", async {
        let mut heard = String::new();
        while !heard.contains("second") {
            heard.push_str(&progress.recv().await.unwrap());
        }
        heard
    })
    .await;
    assert_eq!(heard, "first\nsecond\n", "progress messages");

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
        assert!(
            result_text(&r).contains("outside /workspace"),
            "{}",
            result_text(&r)
        );
    }
    let missing = call(&a, "read_file", json!({"path": "nothing-here"})).await;
    assert!(is_error(&missing), "{}", result_text(&missing));

    // Another session's token reaches only its own sandbox.
    let bob = Browser::open(&format!("http://{}", service.addr), Some("none")).await;
    assert_eq!(bob.session["approval"], "none");
    let b = agent(&url, &bob.token()).await.unwrap();
    let theirs = call(&b, "read_file", json!({"path": "notes/a.txt"})).await;
    assert!(
        is_error(&theirs),
        "bob reads alice's file: {}",
        result_text(&theirs)
    );
    let deleted = call(&a, "delete_path", json!({"path": "notes"})).await;
    assert!(!is_error(&deleted), "{}", result_text(&deleted));
    let gone = call(&a, "list_dir", json!({"path": ""})).await;
    assert_eq!(result_text(&gone), r#"{"entries":[]}"#);

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
            let t = audit_trail(&format!("http://{}", service.addr), &sid, &token).await;
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
    // The trail outlives the session: the operator still reads it, the ended token not.
    let ended = reqwest::Client::new()
        .get(&audit_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status().as_u16(), 401);
    let kept: Value = reqwest::Client::new()
        .get(&audit_url)
        .bearer_auth("operator-secret-for-the-test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kept["intact"], true, "{kept}");
    assert!(kept["entries"].as_array().unwrap().len() >= entries.len());
    drop(bob);
    let _ = sigterm_and_wait(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_decides_which_policies_a_browser_may_choose() {
    let instance = unique_instance("mcpp");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_APPROVAL_POLICIES", "all")]).await;
    // The default is the strictest allowed; a forbidden choice is refused, typed.
    let mut browser = Browser::open(&format!("http://{}", service.addr), Some("none")).await;
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
    let mut browser = Browser::open(&format!("http://{}", service.addr), None).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_replica_answers_and_the_sessions_replica_runs_the_call() {
    let redis = RedisServer::start().await;
    let (ia, ib) = (unique_instance("mcpa"), unique_instance("mcpb"));
    let (_ca, _cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let env = [
        ("SANDPOOL_REDIS_URL", redis.url()),
        ("SANDPOOL_POOL_MIN_IDLE", "2".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = spawn_service(&ia, &env).await;
    let b = spawn_service(&ib, &env).await;
    let mut browser = Browser::open(&format!("http://{}", a.addr), None).await;
    assert_eq!(browser.session["instance"], ia.as_str());
    let token = browser.token();
    // The agent talks to the replica that does not hold the session.
    let url_b = format!("http://{}/mcp", b.addr);
    assert_eq!(post_status(&url_b, Some("Bearer spw_x_0")).await, 401);
    let agent_b = agent(&url_b, &token)
        .await
        .expect("the agent connects through B");
    let pending = {
        let p = agent_b.peer().clone();
        tokio::spawn(async move {
            call(
                &p,
                "write_file",
                json!({"path": "via-b.txt", "content": "written through B"}),
            )
            .await
        })
    };
    // The approval is asked on the user's socket, which stays on A.
    let req = browser
        .expect("tool:request", |r| r["tool"] == "write_file")
        .await;
    browser.answer(req["callId"].as_str().unwrap(), true).await;
    assert!(!is_error(&pending.await.unwrap()));
    let read = call(&agent_b, "read_file", json!({"path": "via-b.txt"})).await;
    assert_eq!(result_text(&read), "written through B");
    // It is the session's sandbox on A: the browser's own exec sees the file.
    browser
        .send(json!({"do": "exec", "command": "cat /workspace/via-b.txt"}))
        .await;
    let ack = browser.expect("ack", |_| true).await;
    assert_eq!(ack["stdout"], "written through B", "{ack}");
    assert_eq!(
        browser.session["instance"],
        ia.as_str(),
        "the session did not move"
    );
    drop(browser);
    let _ = sigterm_and_wait(b);
    let _ = sigterm_and_wait(a);
}
