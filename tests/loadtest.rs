//! The artillery smoke load test (`loadtest/smoke.yml`, about 20 s of the chat flow on the
//! `socketio` engine) against a freshly started server: it must end with 0 failed users.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artillery_smoke_has_no_failed_virtual_users() {
    let node_modules = std::env::var("SANDPOOL_NODE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/node-tools/node_modules")
        });
    let artillery = node_modules.join(".bin/artillery");
    assert!(
        artillery.exists(),
        "artillery not found at {} (run scripts/test)",
        artillery.display()
    );

    let instance = unique_instance("artillery");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_POOL_MIN_IDLE", "40"),
            ("SANDPOOL_POOL_MAX", "100"),
        ],
    )
    .await;
    // Start from a warm pool, as a deployed service would be.
    within(120, "pool warm", async {
        loop {
            let (_, body) = http_get(service.addr, "/api/pool").await;
            if json_body(&body)["idle"].as_u64().unwrap_or(0) >= 40 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let report = tempfile::NamedTempFile::new().unwrap();
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("loadtest/smoke.yml");
    let target = format!("http://{}", service.addr);
    let report_path = report.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&artillery)
            .args(["run", "--target", &target, "--output"])
            .arg(&report_path)
            .arg(&scenario)
            .env("ARTILLERY_DISABLE_TELEMETRY", "true")
            .output()
            .expect("artillery runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "artillery failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    let counters = &report["aggregate"]["counters"];
    let created = counters["vusers.created"].as_u64().unwrap_or(0);
    let completed = counters["vusers.completed"].as_u64().unwrap_or(0);
    let failed = counters["vusers.failed"].as_u64().unwrap_or(0);
    eprintln!("artillery smoke: {created} created, {completed} completed, {failed} failed");
    assert_eq!(failed, 0, "{counters}");
    assert!(created >= 40, "{counters}");
    assert_eq!(completed, created, "{counters}");
    assert!(
        stdout.contains("ok: vusers.failed == 0"),
        "the ensure check ran:\n{stdout}"
    );

    let (_, body) = http_get(service.addr, "/api/pool").await;
    let pool = json_body(&body);
    assert_eq!(
        pool["leased"], 0,
        "every session ended and its sandbox came back: {pool}"
    );
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}
