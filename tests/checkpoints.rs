//! Checkpoints and frame sizes at the pool level, on the real engine: a request over the
//! supervisor's frame limit is refused on the host and the sandbox lives on; a checkpoint is
//! root's (the tenant cannot reach it), shows in a verification from outside while held, and
//! is gone after the scrub, so the next holder cannot restore the last one's files.

mod common;

use std::time::Duration;

use common::*;
use sandpool::pool::{
    CommandSpec, ContainerPool, FileRequest, LeaseRef, PoolError, RecycleOutcome, SupervisorError,
    Verdict,
};
use sandpool_supervisor::proto::{CheckpointRequest, Restored, Taken, Written};

async fn leased(name: &str) -> (String, Cleanup, ContainerPool, LeaseRef) {
    let instance = unique_instance(name);
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max = 1;
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    (instance, cleanup, pool, lease.lease_ref())
}

async fn sh(pool: &ContainerPool, id: &LeaseRef, script: &str) -> String {
    let spec = CommandSpec::shell(script, Duration::from_secs(30), 1 << 20);
    let out = within(60, "command", pool.run(id, &spec, None))
        .await
        .expect("command runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn code<T: std::fmt::Debug>(result: Result<T, PoolError>) -> String {
    match result {
        Err(PoolError::Supervisor(SupervisorError::Failed { code, .. })) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_and_the_sandbox_lives_on() {
    let (_instance, _cleanup, pool, id) = leased("ck-frame").await;
    let write = FileRequest::Write {
        path: "big".into(),
        append: false,
        mode: None,
        offset: None,
        parents: false,
    };
    let huge = vec![7u8; 5 << 20];
    let refused = within(
        30,
        "oversized write",
        pool.file::<Written>(&id, &write, huge),
    )
    .await;
    assert_eq!(code(refused), "too_large");
    // The link and the sandbox are fine: the next request is served.
    let (w, _) = within(30, "write", pool.file::<Written>(&id, &write, vec![1; 10]))
        .await
        .expect("a write after the refusal");
    assert_eq!(w.bytes, 10);
    assert_eq!(sh(&pool, &id, "wc -c < big").await.trim(), "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_out_of_reach_and_gone_after_the_scrub() {
    let (instance, _cleanup, pool, id) = leased("ck-scrub").await;
    sh(&pool, &id, "echo secret > s.txt && mkdir d && echo x > d/y").await;
    let take = CheckpointRequest::Take {
        label: "call-1".into(),
        max_bytes: 1 << 20,
    };
    let taken: Taken = within(30, "take", pool.checkpoint(&id, &take))
        .await
        .expect("take");
    assert_eq!(taken.entries, 4, "{taken:?}");
    // The tenant finds nothing of it anywhere it can look: the store is root's memory.
    let found = sh(
        &pool,
        &id,
        "grep -rl secret /tmp /home /run /dev/shm /workspace 2>/dev/null | grep -v '^/workspace/s.txt$'; \
         for p in /proc/[0-9]*; do grep -q sandpool-supervisor $p/cmdline 2>/dev/null && \
         { cat $p/mem $p/maps 2>&1 | head -c 300; echo; }; done",
    )
    .await;
    assert!(!found.contains("secret"), "{found}");
    assert!(
        found.contains("Permission denied"),
        "the supervisor's memory: {found}"
    );
    // Held: a verification from outside sees it.
    match within(30, "verify", pool.verify(&id.container_id)).await {
        Ok(Verdict::Dirty(found)) => assert!(found.contains("checkpoint:call-1"), "{found}"),
        other => panic!("a held checkpoint must show: {other:?}"),
    }
    // Undo works while held.
    sh(&pool, &id, "rm -rf s.txt d; echo new > n").await;
    let restore = CheckpointRequest::Restore {
        label: "call-1".into(),
    };
    let restored: Restored = within(30, "restore", pool.checkpoint(&id, &restore))
        .await
        .expect("restore");
    assert_eq!((restored.written, restored.removed), (3, 1), "{restored:?}");
    assert_eq!(
        sh(&pool, &id, "cat s.txt d/y; ls").await,
        "secret\nx\nd\ns.txt\n"
    );
    // Released and scrubbed: the next holder (the same container) has no checkpoint.
    let rx = pool.release(&id).expect("held");
    assert_eq!(
        within(60, "recycle", rx).await.expect("outcome"),
        RecycleOutcome::Recycled
    );
    let next = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire")
        .lease_ref();
    assert_eq!(next.container_id, id.container_id);
    let again = within(30, "restore", pool.checkpoint::<Restored>(&next, &restore)).await;
    assert_eq!(code(again), "not_found");
    assert_eq!(sh(&pool, &next, "ls -A /workspace").await, "");
    assert_eq!(
        within(30, "verify", pool.verify(&next.container_id))
            .await
            .expect("verify"),
        Verdict::Clean
    );
    shutdown_leaves_nothing(&pool, &instance).await;
}
