//! `sandpool status` against a running deployment: two real `sandpool serve` replicas on one
//! real Redis and the real engine, read through a replica's HTTP API and straight from the
//! store; a replica killed shows as not alive; nothing answering is a clear error, exit 1.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs `sandpool status ARGS` with `env`; returns (exit code, stdout, stderr).
fn status(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(sandpool_bin());
    cmd.arg("status")
        .args(args)
        .env_remove("SANDPOOL_REDIS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn replica<'a>(body: &'a Value, instance: &str) -> &'a Value {
    body["replicas"]
        .as_array()
        .expect("a list of replicas")
        .iter()
        .find(|r| r["instance"] == instance)
        .unwrap_or_else(|| panic!("{instance} is not listed: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_every_replica_from_http_and_from_the_store() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a_id, b_id) = (unique_instance("st-a"), unique_instance("st-b"));
    let (_ca, _cb) = (Cleanup::new(&a_id), Cleanup::new(&b_id));
    let settings = [
        ("SANDPOOL_REDIS_URL", url.as_str()),
        ("SANDPOOL_HEARTBEAT_TTL_SECS", "2"),
        ("SANDPOOL_POOL_MIN_IDLE", "2"),
        ("SANDPOOL_POOL_MAX", "5"),
    ];
    let a = spawn_service(&a_id, &settings).await;
    let mut b = spawn_service(&b_id, &settings).await;
    let engine = docker(&["info", "--format", "{{.ID}}"]);
    // A session on A, held by the official client until its stdin closes.
    let mut holder = Command::new("node")
        .arg("-e")
        .arg(HOLD_SESSION)
        .arg(format!("http://{}", a.addr))
        .env("NODE_PATH", node_modules())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("the client reports");
    assert!(line.starts_with("session "), "{line}");
    // Each has heartbeated with its status at least once since (every third of the TTL).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // From the store, as JSON.
    let (code, out, err) = status(&["--json"], &[("SANDPOOL_REDIS_URL", &url)]);
    assert_eq!(code, 0, "{err}");
    let body: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    for (id, sessions) in [(&a_id, 1), (&b_id, 0)] {
        let r = replica(&body, id);
        assert_eq!(r["alive"], true, "{r}");
        let s = &r["status"];
        assert_eq!(s["engine"], engine.as_str(), "{s}");
        assert_eq!(s["max"], 5, "{s}");
        assert_eq!(s["breaker"], "closed", "{s}");
        assert!(s["idle"].as_u64().unwrap() <= 5, "{s}");
        assert_eq!(s["sessions"]["active"], sessions, "{s}");
        assert_eq!(s["leased"], sessions, "{s}");
    }

    // From a replica's HTTP API, as the table: both replicas, whichever one is asked.
    let (code, table, err) = status(&["--url", &format!("http://{}", a.addr)], &[]);
    assert_eq!(code, 0, "{err}");
    eprintln!("{table}");
    assert!(table.contains(&a_id) && table.contains(&b_id), "{table}");
    assert!(
        table.contains("2 of 2 replicas alive, 1 sessions"),
        "{table}"
    );
    assert!(table.contains("1 active"), "{table}");
    assert!(table.contains(&engine[..12.min(engine.len())]), "{table}");
    let (_, body) = http_get(a.addr, "/api/replicas").await;
    let body = json_body(&body);
    let pool = json_body(&http_get(a.addr, "/api/pool").await.1);
    let mine = &replica(&body, &a_id)["status"];
    assert_eq!(mine["max"], pool["max"]);
    assert_eq!(mine["engine"], pool["engine"]);

    // B dies without a word: once its heartbeat lapses it is listed as not alive.
    b.child.kill().expect("kill -9");
    let _ = b.child.wait();
    within(20, "B's heartbeat lapses", async {
        loop {
            let (_, out, _) = status(&["--json"], &[("SANDPOOL_REDIS_URL", &url)]);
            if let Ok(body) = serde_json::from_str::<Value>(&out)
                && replica(&body, &b_id)["alive"] == false
            {
                assert_eq!(replica(&body, &a_id)["alive"], true);
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    let (code, table, _) = status(&["--url", &format!("http://{}", a.addr)], &[]);
    assert_eq!(code, 0);
    assert!(table.contains("1 of 2 replicas alive"), "{table}");

    // Nothing there: a clear message and exit 1, over HTTP and over Redis.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = status(&["--url", &nowhere], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no sandpool answers at"), "{err}");
    let (code, _, err) = status(
        &[],
        &[(
            "SANDPOOL_REDIS_URL",
            &format!("redis://127.0.0.1:{}", free_port()),
        )],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no sandpool answers at the store"), "{err}");
    drop(holder.stdin.take());
    let _ = holder.wait();
    drop(a);
}

/// Connects with the official socket.io client, prints `session <id>` and holds the session
/// until stdin closes.
const HOLD_SESSION: &str = r#"
const { io } = require("socket.io-client");
const s = io(process.argv[1], { transports: ["websocket"], reconnection: false });
s.on("session", (x) => console.log("session " + x.sessionId));
s.on("sandpool:error", (e) => console.log("error " + JSON.stringify(e)));
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
"#;
