//! The scaled-out stack (`docker-compose.scale.yml` through `scripts/scale`), on the real
//! engine, through real nginx and Redis, driven by the official socket.io client and
//! artillery: sessions spread over the replicas, a resume on a live non-owner replica moves
//! the session, a killed replica's session resumes elsewhere with its files, the smoke load
//! passes through nginx with no failed user, and `scripts/scale down` leaves nothing behind.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One stack, under its own compose project and ports; `scripts/scale down --volumes` when
/// dropped, whatever the test did.
struct Stack {
    project: String,
    port: u16,
    prometheus_port: u16,
}

impl Stack {
    fn env(&self, cmd: &mut Command) {
        cmd.current_dir(repo())
            .env("SANDPOOL_SCALE_PROJECT", &self.project)
            .env("SANDPOOL_SCALE_PORT", self.port.to_string())
            .env("SANDPOOL_PROMETHEUS_PORT", self.prometheus_port.to_string())
            .env("SANDPOOL_SCALE_PROFILE", "debug")
            .env("SANDPOOL_REPLICAS", "3")
            .env("SANDPOOL_SCALE_MIN_IDLE", "3")
            .env("SANDPOOL_SCALE_MAX", "30");
    }

    fn scale(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(repo().join("scripts/scale"));
        cmd.args(args);
        self.env(&mut cmd);
        cmd.output().expect("scripts/scale runs")
    }

    /// Containers of the stack (replicas, nginx, Redis, Prometheus), running or not.
    fn containers(&self) -> Vec<String> {
        lines(&docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
        ]))
    }

    /// Instance ids of the replicas (their host names: the first 12 characters of their ids).
    fn replicas(&self) -> Vec<String> {
        lines(&docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            "label=com.docker.compose.service=sandpool",
        ]))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.scale(&["down", "--volumes"]);
    }
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn sandboxes_of(instances: &[String]) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=sandpool.app=sandpool",
        "--format",
        "{{.ID}} {{.Label \"sandpool.instance\"}}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, inst)| instances.iter().any(|i| i == inst))
        .map(|(id, _)| id.to_string())
        .collect()
}

fn run_artillery(target: &str, scenario: &Path) -> serde_json::Value {
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(node_modules().join(".bin/artillery"))
        .args(["run", "--target", target, "--output"])
        .arg(report.path())
        .arg(scenario)
        .env("ARTILLERY_DISABLE_TELEMETRY", "true")
        .output()
        .expect("artillery runs");
    assert!(
        out.status.success(),
        "artillery failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    report["aggregate"]["counters"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaled_out_stack_spreads_moves_fails_over_and_cleans_up() {
    let stack = Stack {
        project: format!(
            "t-scale-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        port: free_port(),
        prometheus_port: free_port(),
    };
    let up = tokio::task::block_in_place(|| stack.scale(&["up"]));
    assert!(
        up.status.success(),
        "scripts/scale up failed:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let url = String::from_utf8_lossy(&up.stdout).trim().to_string();
    assert_eq!(url, format!("http://127.0.0.1:{}", stack.port));
    let replicas: Vec<String> = stack
        .replicas()
        .into_iter()
        .map(|id| id[..12].to_string())
        .collect();
    assert_eq!(replicas.len(), 3, "{replicas:?}");

    // An agent through nginx: its requests land on any replica (nginx spreads requests
    // without a `sid`), and each is forwarded to the replica that holds the session. The
    // rmcp client's own MCP session (initialize, then every call) lives on that replica, so
    // without forwarding most of these would fail.
    {
        let mut browser = mcp::Browser::open(&url, Some("none")).await;
        let owner = browser.session["instance"].as_str().unwrap().to_string();
        let agent = mcp::agent(&format!("{url}/mcp"), &browser.token())
            .await
            .expect("the agent connects through nginx");
        for i in 0..6 {
            let r = mcp::call(
                &agent,
                "exec",
                serde_json::json!({"command": format!("echo {i} >> calls; hostname")}),
            )
            .await;
            assert!(!mcp::is_error(&r), "call {i}: {}", mcp::result_text(&r));
        }
        let calls = mcp::call(&agent, "read_file", serde_json::json!({"path": "calls"})).await;
        assert_eq!(mcp::result_text(&calls), "0\n1\n2\n3\n4\n5\n");
        // Whichever replica answered, the calls ran in the session's one sandbox, on the
        // replica that holds it (the appends above are in order, in one file).
        assert!(!owner.is_empty());
        browser.send(serde_json::json!({"do": "end"})).await;
        browser.expect("ack", |_| true).await;
    }

    // The socket.io scenario: spread, live hand-over, kill and failover.
    let result = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new("node")
                .arg(repo().join("tests/js/scale.js"))
                .arg(&url)
                .env("NODE_PATH", node_modules())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("node runs");
            let mut stdin = child.stdin.take().unwrap();
            let mut last = serde_json::Value::Null;
            for line in BufReader::new(child.stdout.take().unwrap()).lines() {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
                    continue;
                };
                if value["step"] == "kill" {
                    let instance = value["instance"].as_str().unwrap().to_string();
                    docker(&["kill", &instance]);
                    writeln!(stdin, "go").unwrap();
                    stdin.flush().unwrap();
                } else {
                    last = value;
                }
            }
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "scale scenario failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            last
        })
        .await
        .expect("scenario thread")
    };
    assert_eq!(result["ok"], true, "{result}");
    eprintln!("scale scenario: {result}");
    let victim = result["victim"].as_str().unwrap().to_string();
    assert!(
        replicas.contains(&victim),
        "{victim} is one of {replicas:?}"
    );

    // The artillery smoke scenario through nginx, with a replica down: 0 failed users.
    let counters = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || run_artillery(&url, &repo().join("loadtest/smoke.yml")))
            .await
            .unwrap()
    };
    eprintln!("artillery through nginx: {counters}");
    assert_eq!(
        counters["vusers.failed"].as_u64().unwrap_or(1),
        0,
        "{counters}"
    );
    assert!(
        counters["vusers.created"].as_u64().unwrap_or(0) >= 40,
        "{counters}"
    );

    // Down: nothing of the stack is left, not even the killed replica's sandboxes.
    let down = tokio::task::block_in_place(|| stack.scale(&["down", "--volumes"]));
    assert!(
        down.status.success(),
        "scripts/scale down failed:\n{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(stack.containers().is_empty(), "containers left");
    assert!(
        sandboxes_of(&replicas).is_empty(),
        "sandboxes left: {:?}",
        sandboxes_of(&replicas)
    );
    let networks = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name={}_default", stack.project),
    ]);
    assert!(networks.trim().is_empty(), "network left");
    let volumes = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={}_", stack.project),
    ]);
    assert!(volumes.trim().is_empty(), "volumes left: {volumes}");
}
