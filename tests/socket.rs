//! The Socket.IO API, driven by the official socket.io client (Node, `tests/js/scenarios.js`)
//! against the real `sandpool` binary on the real Docker engine.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// `node_modules` holding socket.io-client: `SANDPOOL_NODE_TOOLS`, else where `scripts/test`
/// unpacks `../shared/tools/artillery-*.tar.zst`.
fn node_modules() -> PathBuf {
    let dir = std::env::var("SANDPOOL_NODE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/node-tools/node_modules")
        });
    assert!(
        dir.join("socket.io-client").is_dir(),
        "socket.io-client not found in {} (run scripts/test, which unpacks ../shared/tools, or set SANDPOOL_NODE_TOOLS)",
        dir.display()
    );
    dir
}

/// Runs one scenario; `on_step` answers its `{"step": …}` lines. Returns its final JSON.
fn run_scenario(
    name: &str,
    addr: std::net::SocketAddr,
    env: &[(&str, &str)],
    mut on_step: impl FnMut(&str),
) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/scenarios.js");
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .arg(name)
        .arg(format!("http://{addr}"))
        .env("NODE_PATH", node_modules())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("node runs (Debian package nodejs)");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut last = serde_json::Value::Null;
    for line in stdout.lines() {
        let line = line.unwrap();
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(step) = value.get("step").and_then(|s| s.as_str()) {
            on_step(step);
            writeln!(stdin, "go").unwrap();
            stdin.flush().unwrap();
        } else {
            last = value;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scenario {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last["ok"], true, "scenario {name} did not finish: {last}");
    last
}

async fn scenario(name: &str, service_env: &[(&str, &str)]) -> serde_json::Value {
    let instance = unique_instance(&format!("sock-{}", name.replace('_', "-")));
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, service_env).await;
    let addr = service.addr;
    let name2 = name.to_string();
    let result = tokio::task::spawn_blocking(move || run_scenario(&name2, addr, &[], |_| {}))
        .await
        .expect("scenario thread");
    let status = sigterm_and_wait(service);
    assert!(status.success(), "service exit: {status:?}");
    assert!(
        labeled_containers(&instance).is_empty(),
        "no container left"
    );
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_exec_chat_approve_reject_errors_and_end() {
    scenario("basics", &[]).await;
}

/// Issue 10, defect 8: a lone UTF-16 surrogate in an event name (text or binary event) used to
/// close the connection; the scenario checks the raw packet the official client sends, the
/// typed error, a command with a lone surrogate, and that the same socket still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_surrogates_and_escaped_event_names_get_typed_errors_and_keep_the_socket() {
    scenario("odd_events", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_cannot_approve() {
    scenario("cross_session", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_the_token_and_refusal_without_it() {
    scenario("resume", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_session_leaves_nothing_for_the_next_one() {
    scenario(
        "end_then_next",
        &[("SANDPOOL_POOL_MIN_IDLE", "1"), ("SANDPOOL_POOL_MAX", "1")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_slow_execs_gets_too_many_requests() {
    scenario("flood", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_command_has_its_process_tree_killed() {
    scenario("timeout", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_session_gets_pool_exhausted() {
    scenario(
        "exhausted",
        &[
            ("SANDPOOL_POOL_MIN_IDLE", "1"),
            ("SANDPOOL_POOL_MAX", "1"),
            ("SANDPOOL_POOL_ACQUIRE_TIMEOUT_MS", "500"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_is_expired_and_told() {
    scenario(
        "idle_expiry",
        &[
            ("SANDPOOL_SESSION_IDLE_TTL_SECS", "1"),
            ("SANDPOOL_JANITOR_INTERVAL_SECS", "1"),
        ],
    )
    .await;
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_of_output_keep_server_memory_bounded() {
    let instance = unique_instance("sock-big");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_POOL_MIN_IDLE", "1")]).await;
    let (addr, pid) = (service.addr, service.child.id());
    let result = tokio::task::spawn_blocking(move || {
        let mut before = 0;
        let mut peak_growth = 0;
        run_scenario("big_output", addr, &[], |step| match step {
            "measure-before" => before = status_kib(pid, "VmRSS:"),
            "measure-after" => peak_growth = status_kib(pid, "VmHWM:").saturating_sub(before),
            other => panic!("unknown step {other}"),
        });
        peak_growth
    })
    .await
    .unwrap();
    eprintln!("server peak RSS growth during 100 MB of output: {result} KiB");
    assert!(
        result < 48 * 1024,
        "the server's memory grew by {result} KiB for 100 MB of output"
    );
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_working_through_docker_faults_and_creates_get_typed_errors() {
    let instance = unique_instance("sock-faults");
    let _cleanup = Cleanup::new(&instance);
    let endpoint = FaultyDocker::start(FaultMode::Proxy).await;
    let host = endpoint.host();
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_DOCKER_HOST", host.as_str()),
            ("SANDPOOL_POOL_MIN_IDLE", "1"),
            ("SANDPOOL_POOL_MAX", "3"),
            ("SANDPOOL_POOL_RECONCILE_INTERVAL_MS", "600000"),
            ("SANDPOOL_DOCKER_MAX_CONCURRENT", "1"),
            ("SANDPOOL_DOCKER_MAX_QUEUE", "0"),
            ("SANDPOOL_DOCKER_CALL_TIMEOUT_MS", "2000"),
            ("SANDPOOL_DOCKER_BREAKER_FAILURES", "2"),
            // Long enough that the breaker is still open at SIGTERM below.
            ("SANDPOOL_DOCKER_BREAKER_COOLDOWN_MS", "120000"),
            ("SANDPOOL_DOCKER_RETRY_ATTEMPTS", "1"),
        ],
    )
    .await;
    let addr = service.addr;
    let endpoint = std::sync::Arc::new(endpoint);
    let ep = endpoint.clone();
    tokio::task::spawn_blocking(move || {
        run_scenario("faults", addr, &[], |step| match step {
            "hang" => ep.set_mode(FaultMode::Hang),
            "fail" => ep.set_mode(FaultMode::Fail),
            other => panic!("unknown step {other}"),
        })
    })
    .await
    .unwrap();
    // Docker comes back while the breaker is still open: shutdown is not a client call, so
    // its listing and removals pass the open breaker and remove everything.
    endpoint.set_mode(FaultMode::Proxy);
    let (_, body) = http_get(addr, "/api/pool").await;
    assert_eq!(json_body(&body)["breaker"], "open", "{body}");
    assert!(sigterm_and_wait(service).success());
    assert!(
        labeled_containers(&instance).is_empty(),
        "shutdown removed every container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waits_in_line_and_hears_its_place() {
    let instance = unique_instance("sock-queue");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[("SANDPOOL_POOL_MIN_IDLE", "1"), ("SANDPOOL_POOL_MAX", "1")],
    )
    .await;
    let addr = service.addr;
    let result = tokio::task::spawn_blocking(move || run_scenario("queue", addr, &[], |_| {}))
        .await
        .unwrap();
    eprintln!("queue: {result}");
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_connect_at_once() {
    let instance = unique_instance("sock-many");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_POOL_MIN_IDLE", "200"),
            ("SANDPOOL_POOL_MAX", "210"),
            ("SANDPOOL_POOL_CREATE_PARALLELISM", "8"),
            ("SANDPOOL_SANDBOX_MEMORY_BYTES", "67108864"),
            ("SANDPOOL_SHUTDOWN_TIMEOUT_SECS", "120"),
            // The clients close when the scenario ends: their sessions stay detached, all 200
            // (the cap on detached sessions is tested on its own).
            ("SANDPOOL_SESSION_MAX_DETACHED", "200"),
        ],
    )
    .await;
    let addr = service.addr;
    within(300, "pool warm with 200", async {
        loop {
            let (_, body) = http_get(addr, "/api/pool").await;
            if json_body(&body)["idle"].as_u64().unwrap_or(0) >= 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let result = tokio::task::spawn_blocking(move || {
        run_scenario("many", addr, &[("SESSIONS", "200")], |_| {})
    })
    .await
    .unwrap();
    eprintln!("200 concurrent connects: {result}");
    let (_, body) = http_get(addr, "/api/pool").await;
    assert_eq!(json_body(&body)["leased"], 200, "{body}");
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// A token minted with `secret`.
fn jwt(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Authentication through the real client: missing, empty, expired, forged, `alg: none` and
/// unexpiring tokens are refused with `unauthorized` and hold no sandbox; a valid token opens
/// a session; a subject holds at most its limit of sessions; a session resumes only with its
/// subject's token; and connect-and-drop clients hold at most the detached cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_subjects_limited_and_floods_bounded() {
    const SECRET: &str = "the-test-secret-of-at-least-32-bytes";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + 600;
    let tokens = [
        (
            "TOKEN_ALICE",
            jwt(serde_json::json!({"sub": "alice", "exp": exp}), SECRET),
        ),
        (
            "TOKEN_BOB",
            jwt(serde_json::json!({"sub": "bob", "exp": exp}), SECRET),
        ),
        ("TOKEN_NO_SUB", jwt(serde_json::json!({"exp": exp}), SECRET)),
        (
            "TOKEN_EXPIRED",
            jwt(serde_json::json!({"sub": "alice", "exp": now - 60}), SECRET),
        ),
        (
            "TOKEN_FORGED",
            jwt(
                serde_json::json!({"sub": "alice", "exp": exp}),
                "some-other-secret-of-at-least-32-bytes",
            ),
        ),
        (
            "TOKEN_NO_EXP",
            jwt(serde_json::json!({"sub": "alice"}), SECRET),
        ),
        (
            "TOKEN_NONE_ALG",
            // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (no signature)
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0."
                .to_string(),
        ),
    ];
    let instance = unique_instance("sock-auth");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_AUTH_HS256_SECRET", SECRET),
            ("SANDPOOL_AUTH_MAX_SESSIONS_PER_SUBJECT", "2"),
            ("SANDPOOL_SESSION_MAX_DETACHED", "3"),
            ("SANDPOOL_RECONNECT_GRACE_SECS", "300"),
            ("SANDPOOL_POOL_MIN_IDLE", "4"),
            ("SANDPOOL_POOL_MAX", "20"),
        ],
    )
    .await;
    let addr = service.addr;
    let env: Vec<(String, String)> = tokens
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let scenario = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_scenario("auth", addr, &env, |step| {
            assert_eq!(step, "flooded");
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
        })
    });
    within(120, "flood step", async {
        while rx.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Twelve sessions opened and dropped: at most three stay detached (and hold a sandbox).
    within(30, "detached sessions bounded", async {
        loop {
            let (_, body) = http_get(addr, "/api/pool").await;
            let pool = json_body(&body);
            let detached = pool["sessions"]["local"]["detached"].as_u64().unwrap_or(99);
            let active = pool["sessions"]["local"]["active"].as_u64().unwrap_or(99);
            if detached <= 3 && active == 0 && pool["leased"].as_u64().unwrap_or(99) <= 3 {
                assert_eq!(detached, 3, "{pool}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    done_tx.send(()).unwrap();
    scenario.await.unwrap();
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}
