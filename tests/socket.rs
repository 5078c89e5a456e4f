//! The Socket.IO API, driven by the official socket.io client (Node, `tests/js/scenarios.js`)
//! against the real `sandpool` binary on the real Docker engine.

mod common;

use std::time::Duration;

use common::*;

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
