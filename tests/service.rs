//! The real `sandpool` binary: status routes, SIGTERM leaves nothing, and a kill -9 followed
//! by a restart with the same instance id leaves no orphan.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_routes_and_sigterm_leaves_zero_containers() {
    let instance = unique_instance("svc");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[]).await;
    let addr = service.addr;

    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    let (status, body) = http_get(addr, "/api/pool").await;
    assert_eq!(status, 200);
    let pool = json_body(&body);
    assert_eq!(pool["idle"], 3, "{pool}");
    for field in [
        "idle",
        "leased",
        "creating",
        "scrubbing",
        "max",
        "image",
        "breaker",
    ] {
        assert!(pool.get(field).is_some(), "/api/pool lacks {field}: {pool}");
    }
    assert_eq!(pool["breaker"], "closed");
    assert_eq!(pool["max"], 6);
    assert_eq!(pool["image"], "sandpool/sandbox:latest");

    let (status, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "sandpool_pool_containers{state=\"idle\"} 3",
        "sandpool_docker_queue_depth",
        "sandpool_docker_breaker_state{state=\"closed\"} 1",
        "sandpool_pool_create_seconds_count",
        "sandpool_docker_calls_total",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    assert_eq!(labeled_containers(&instance).len(), 3);

    let status = sigterm_and_wait(service);
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        labeled_containers(&instance).is_empty(),
        "SIGTERM leaves no container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_leaves_no_orphan() {
    let instance = unique_instance("kill9");
    let _cleanup = Cleanup::new(&instance);
    let mut service = spawn_service(&instance, &[]).await;
    let before = labeled_containers(&instance);
    assert_eq!(before.len(), 3);
    // Dirty one of them from outside, as a session would have.
    docker(&[
        "exec",
        "-u",
        "1000:1000",
        &before[0],
        "sh",
        "-c",
        "echo x > /workspace/left; sleep 1000 >/dev/null 2>&1 &",
    ]);
    service.child.kill().unwrap(); // SIGKILL: no shutdown runs
    service.child.wait().unwrap();
    assert_eq!(
        labeled_containers(&instance).len(),
        3,
        "a crash leaves its containers"
    );

    let service = spawn_service(&instance, &[]).await;
    let (_, body) = http_get(service.addr, "/api/pool").await;
    let pool = json_body(&body);
    assert_eq!(pool["idle"], 3, "leftovers adopted: {pool}");
    let after = labeled_containers(&instance);
    assert_eq!(after.len(), 3, "no extra containers: {after:?}");
    let dirty = docker(&[
        "exec",
        &before[0],
        "sh",
        "-c",
        "ls -A /workspace; ps -o args | grep -c '^sleep 1000'; true",
    ]);
    assert_eq!(dirty, "0", "adopted leftover was scrubbed");

    let status = sigterm_and_wait(service);
    assert!(status.success());
    assert!(labeled_containers(&instance).is_empty(), "no orphans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_setting_stops_startup_naming_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_sandpool"))
        .arg("serve")
        .env("SANDPOOL_POOL_MIN_IDLE", "many")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SANDPOOL_POOL_MIN_IDLE"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_with_redis_and_survives_a_redis_restart() {
    let mut redis = RedisServer::start().await;
    let instance = unique_instance("svc-redis");
    let _cleanup = Cleanup::new(&instance);
    let url = redis.url();
    let service = spawn_service(&instance, &[("SANDPOOL_REDIS_URL", url.as_str())]).await;
    let (_, body) = http_get(service.addr, "/api/pool").await;
    let pool = json_body(&body);
    assert_eq!(pool["sessions"]["store"], "redis", "{pool}");
    let heartbeat = redis.cli(&["EXISTS", &format!("sandpool:heartbeat:{instance}")]);
    assert_eq!(heartbeat, "1", "the instance heartbeats");

    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        http_get(service.addr, "/healthz").await.0,
        200,
        "keeps serving without redis"
    );
    assert_eq!(http_get(service.addr, "/api/pool").await.0, 200);
    redis.restart().await;
    within(30, "heartbeat written again", async {
        while redis.cli(&["EXISTS", &format!("sandpool:heartbeat:{instance}")]) != "1" {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;

    let status = sigterm_and_wait(service);
    assert!(status.success());
    assert_eq!(
        redis.cli(&["EXISTS", &format!("sandpool:heartbeat:{instance}")]),
        "0",
        "heartbeat withdrawn"
    );
    assert!(labeled_containers(&instance).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_stops_startup_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_sandpool"))
        .arg("serve")
        .env("SANDPOOL_INSTANCE_ID", unique_instance("noredis"))
        .env("SANDPOOL_LISTEN", "127.0.0.1:0")
        .env("SANDPOOL_POOL_MIN_IDLE", "0")
        .env("SANDPOOL_REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SANDPOOL_REDIS_URL"), "{stderr}");
}
