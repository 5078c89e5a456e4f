//! The Docker gate against endpoints that misbehave: one that never answers (to fill the slots
//! and the queue) and one that answers errors (to open the breaker), both real unix sockets,
//! with the real engine behind the proxy for recovery.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use sandpool::docker::{BreakerState, DockerError, DockerGate};
use sandpool::pool::{ContainerPool, NoopObserver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_answers_overloaded_past_its_queue_bound() {
    let endpoint = FaultyDocker::start(FaultMode::Hang).await;
    let mut config = test_config("unused");
    config.gate.max_concurrent = 2;
    config.gate.max_queue = 3;
    config.gate.call_timeout = Duration::from_millis(10_000);
    config.gate.retry_attempts = 1;
    let gate = DockerGate::connect(&endpoint.host(), &config.gate)
        .await
        .expect("connect");

    // 2 calls in flight and 3 waiting, all stuck on the silent endpoint.
    let mut stuck = Vec::new();
    for _ in 0..5 {
        let gate = gate.clone();
        stuck.push(tokio::spawn(async move { gate.ping().await }));
    }
    within(5, "slots and queue fill", async {
        loop {
            let s = gate.status();
            if s.in_flight == 2 && s.waiting == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let started = std::time::Instant::now();
    let err = gate.ping().await.expect_err("the sixth call is refused");
    assert!(
        matches!(err, DockerError::Overloaded { waiting: 3 }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(gate.status().overloaded_total, 1);
    for t in stuck {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_failures_fails_fast_and_closes_after_cooldown() {
    let endpoint = FaultyDocker::start(FaultMode::Fail).await;
    let mut config = test_config("unused");
    config.gate.breaker_failures = 3;
    config.gate.breaker_cooldown = Duration::from_millis(400);
    config.gate.retry_attempts = 3;
    config.gate.retry_base = Duration::from_millis(5);
    let gate = DockerGate::connect(&endpoint.host(), &config.gate)
        .await
        .expect("connect");
    assert_eq!(gate.breaker_state(), BreakerState::Closed);

    // One idempotent call retries: three attempts, three failures, and the breaker opens.
    let before = endpoint.connections.load(Ordering::SeqCst);
    let err = gate.ping().await.expect_err("endpoint fails");
    assert!(
        matches!(
            err,
            DockerError::Api { status: 500, .. } | DockerError::Unavailable
        ),
        "{err:?}"
    );
    assert_eq!(
        endpoint.connections.load(Ordering::SeqCst) - before,
        3,
        "retried 3 times in all"
    );
    assert_eq!(gate.breaker_state(), BreakerState::Open);

    // Open: fail fast, without touching the endpoint.
    let before = endpoint.connections.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert!(matches!(gate.ping().await, Err(DockerError::Unavailable)));
    }
    assert_eq!(
        endpoint.connections.load(Ordering::SeqCst),
        before,
        "no call while open"
    );

    // After the cooldown a failing probe opens it again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(gate.breaker_state(), BreakerState::HalfOpen);
    assert!(gate.ping().await.is_err());
    assert_eq!(gate.breaker_state(), BreakerState::Open);

    // Docker recovers: the next probe succeeds and the breaker closes.
    endpoint.set_mode(FaultMode::Proxy);
    tokio::time::sleep(Duration::from_millis(450)).await;
    gate.ping().await.expect("probe reaches the real engine");
    assert_eq!(gate.breaker_state(), BreakerState::Closed);
    gate.ping().await.expect("closed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_stops_refill_but_idle_containers_are_still_handed_out() {
    let instance = unique_instance("breaker");
    let cleanup = Cleanup::new(&instance);
    let endpoint = FaultyDocker::start(FaultMode::Proxy).await;
    let mut config = test_config(&instance);
    config.docker_host = endpoint.host();
    config.pool.min_idle = 2;
    config.pool.max = 4;
    config.gate.breaker_failures = 2;
    config.gate.breaker_cooldown = Duration::from_millis(60_000);
    config.gate.retry_attempts = 1;
    real_gate(&test_config(&instance)).await; // the image, through the real socket
    let gate = DockerGate::connect(&endpoint.host(), &config.gate)
        .await
        .expect("connect");
    let pool = ContainerPool::start(
        gate.clone(),
        &config,
        Arc::new(NoopObserver),
        sandpool::pool::Startup::default(),
    )
    .await
    .expect("pool");
    cleanup.watch(&pool);
    assert!(pool.wait_idle(2, Duration::from_secs(60)).await);

    endpoint.set_mode(FaultMode::Fail);
    for _ in 0..2 {
        let _ = gate.ping().await;
    }
    assert_eq!(gate.breaker_state(), BreakerState::Open);
    assert_eq!(pool.status().gate.breaker, BreakerState::Open);
    assert!(
        pool.is_ready().is_err(),
        "not ready while the breaker is open"
    );

    // Idle containers are still handed out; no create is attempted to refill.
    let a = pool.acquire().await.expect("idle one");
    let b = pool.acquire().await.expect("idle two");
    assert_ne!(a.container_id, b.container_id);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = pool.status();
    assert_eq!(
        (status.idle, status.creating),
        (0, 0),
        "no refill while open: {status:?}"
    );
    // With none idle, an acquire fails fast with the breaker's error rather than waiting.
    let err = pool
        .acquire()
        .await
        .expect_err("nothing idle, breaker open");
    assert!(
        matches!(err.docker(), Some(DockerError::Unavailable)),
        "{err:?}"
    );

    // Shut down through the real socket (the faulty one would refuse), so nothing is left.
    endpoint.set_mode(FaultMode::Proxy);
    pool.abandon().await;
    let real = start_pool(&{
        let mut c = test_config(&instance);
        c.pool.min_idle = 0;
        c
    })
    .await;
    cleanup.watch(&real);
    real.shutdown(Duration::from_secs(20)).await;
    assert!(labeled_containers(&instance).is_empty());
}
