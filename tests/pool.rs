//! The pool against the real Docker engine: pre-warm, exclusive leases under concurrency,
//! a hot path without Docker calls, scrubbing that survives attempts to leak, replacement of
//! dirty and dead containers, crash leftovers, shutdown.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sandpool::pool::{ContainerPool, LeaseRef, NoopObserver, PoolError, RecycleOutcome};

async fn recycle(pool: &ContainerPool, id: &LeaseRef) -> RecycleOutcome {
    let rx = pool.release(id).expect("lease is held");
    within(30, "recycle", rx).await.expect("recycle outcome")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_reaches_min_idle_with_hardened_labeled_containers() {
    let instance = unique_instance("prewarm");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 3;
    config.pool.max = 5;
    let pool = warm_pool(&config, &cleanup).await;
    let status = pool.status();
    assert_eq!(status.idle, 3);
    assert!(status.total <= 5);
    let ids = labeled_containers(&instance);
    assert_eq!(ids.len(), 3, "docker sees exactly the warm containers");

    let inspect = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{.HostConfig.CapAdd}}|{{.HostConfig.LogConfig.Type}}|{{.HostConfig.SecurityOpt}}|{{.HostConfig.PidsLimit}}|{{.HostConfig.Memory}}|{{.HostConfig.NanoCpus}}|{{.HostConfig.NetworkMode}}|{{.HostConfig.Init}}|{{.Config.User}}|{{.Config.OpenStdin}}|{{.Config.StdinOnce}}|{{.Config.Tty}}|{{index .Config.Labels \"sandpool.role\"}}|{{.State.Running}}",
        &ids[0],
    ]);
    // The supervisor runs as root under init with only the capabilities it needs (its
    // commands run as 1000:1000 with none: see tests/supervisor.rs); its stdin stays open for
    // the host's link, and nothing it prints is logged.
    assert_eq!(
        inspect,
        format!(
            "true|[ALL]|[CHOWN DAC_OVERRIDE FOWNER KILL SETUID SETGID SETPCAP]|none|[no-new-privileges:true]|128|{}|1000000000|none|true|0:0|true|false|false|sandbox|true",
            128 << 20
        )
    );

    // Inside: the sandbox user, a writable /workspace, a read-only root, no network.
    let lease = pool.acquire().await.expect("acquire");
    let out = sh(
        &pool,
        &lease.lease_ref(),
        "id -u; pwd; touch /workspace/ok && echo ws-ok; touch /etc/x 2>/dev/null || echo root-ro; ls /sys/class/net",
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec!["1000", "/workspace", "ws-ok", "root-ro", "lo"],
        "{stdout}"
    );
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_acquires_are_exclusive_and_bounded() {
    let instance = unique_instance("concurrent");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 2;
    config.pool.max = 5;
    config.pool.max_idle = 5;
    let pool = warm_pool(&config, &cleanup).await;

    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let max_seen_total = Arc::new(Mutex::new(0usize));
    let sampler = {
        let (pool, max_seen_total, instance) =
            (pool.clone(), max_seen_total.clone(), instance.clone());
        tokio::spawn(async move {
            loop {
                let total = pool.status().total.max(labeled_containers(&instance).len());
                {
                    let mut m = max_seen_total.lock().unwrap();
                    *m = (*m).max(total);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (pool, held, seen) = (pool.clone(), held.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let lease = pool.acquire().await.expect("acquire within the deadline");
            assert!(
                held.lock().unwrap().insert(lease.container_id.clone()),
                "container {} handed to two holders",
                lease.container_id
            );
            seen.lock().unwrap().insert(lease.container_id.clone());
            tokio::time::sleep(Duration::from_millis(20)).await;
            held.lock().unwrap().remove(&lease.container_id);
            let outcome = pool
                .release(&lease.lease_ref())
                .expect("release")
                .await
                .expect("outcome");
            assert_eq!(outcome, RecycleOutcome::Recycled);
        }));
    }
    for t in tasks {
        within(120, "concurrent acquire", t).await.expect("task ok");
    }
    sampler.abort();
    let max_total = *max_seen_total.lock().unwrap();
    assert!(
        max_total <= 5,
        "never more than max containers: saw {max_total}"
    );
    assert!(seen.lock().unwrap().len() <= 5);
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_from_warm_pool_makes_no_docker_call() {
    let instance = unique_instance("hotpath");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    // No background call may land in the measured window: no periodic reconcile, and more
    // idle containers than the refill target, so that the acquire does not start a create.
    config.pool.reconcile_interval = Duration::from_millis(600_000);
    config.pool.min_idle = 1;
    config.pool.max_idle = 3;
    config.pool.max = 3;
    let pool = warm_pool(&config, &cleanup).await;
    let (a, b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    for l in [&a, &b] {
        assert_eq!(
            recycle(&pool, &l.lease_ref()).await,
            RecycleOutcome::Recycled
        );
    }
    assert!(pool.wait_idle(2, Duration::from_secs(60)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        let before = pool.status().gate.calls_total;
        let lease = pool.acquire().await.expect("acquire");
        let after = pool.status().gate.calls_total;
        assert_eq!(before, after, "acquire from a warm pool called Docker");
        assert!(
            lease.waited < Duration::from_millis(50),
            "waited {:?}",
            lease.waited
        );
        // Release without waiting: the scrub is the release's business, not the acquire's.
        drop(pool.release(&lease.lease_ref()).unwrap());
        assert!(pool.wait_idle(2, Duration::from_secs(60)).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.shutdown(Duration::from_secs(20)).await;
}

/// Everything a session might try to leave behind for the next holder.
const LEAK_SCRIPT: &str = r#"
echo secret-ws > /workspace/secret.txt
mkdir -p /workspace/deep/er && echo x > /workspace/deep/er/file && chmod 000 /workspace/deep
echo dot > /workspace/.hidden; echo dotdot > /workspace/..odd
echo secret-tmp > /tmp/secret; echo secret-home > /home/sandbox/.bashrc
echo secret-shm > /dev/shm/secret; touch /dev/mqueue/q1
ln -s /workspace/secret.txt /tmp/link
chmod 700 /workspace /home/sandbox
nohup sleep 1001 >/dev/null 2>&1 &
setsid sleep 1002 >/dev/null 2>&1 &
sh -c '(sleep 1003 &) &'
sh -c 'trap "" TERM HUP INT; while :; do sleep 1; done' >/dev/null 2>&1 &
export LEAKED_ENV=yes
sleep 0.2
ps -o args | grep -c '^sleep 100[123]'
"#;

const PROBE_SCRIPT: &str = r#"
ls -A /workspace /tmp /home/sandbox /dev/shm /dev/mqueue 2>&1
ps -o user,args
echo "env:${LEAKED_ENV:-none}"
stat -c '%a' /workspace /home/sandbox /tmp
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wipes_files_and_kills_processes_before_the_next_holder() {
    let instance = unique_instance("scrub");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max = 1;
    let pool = warm_pool(&config, &cleanup).await;

    let first = pool.acquire().await.expect("acquire");
    let planted = sh(&pool, &first.lease_ref(), LEAK_SCRIPT).await;
    assert_eq!(
        text(&planted.stdout).trim(),
        "3",
        "background processes started: {planted:?}"
    );
    let before = sh(&pool, &first.lease_ref(), PROBE_SCRIPT).await;
    let planted_view = text(&before.stdout);
    for item in [
        "secret.txt",
        ".hidden",
        "..odd",
        "deep",
        ".bashrc",
        "link",
        "q1",
        "sleep 1001",
        "sleep 1002",
        "sleep 1003",
        "while",
    ] {
        assert!(
            planted_view.contains(item),
            "{item:?} was not planted:\n{planted_view}"
        );
    }

    assert_eq!(
        recycle(&pool, &first.lease_ref()).await,
        RecycleOutcome::Recycled
    );

    let second = pool.acquire().await.expect("acquire again");
    assert_eq!(
        second.container_id, first.container_id,
        "max 1: the same container comes back"
    );
    assert_eq!(second.uses, 2);
    let after = sh(&pool, &second.lease_ref(), PROBE_SCRIPT).await;
    let seen = text(&after.stdout);
    for leak in [
        "secret",
        ".hidden",
        "..odd",
        "deep",
        ".bashrc",
        "link",
        "q1",
        "sleep 100",
        "while",
    ] {
        assert!(!seen.contains(leak), "{leak:?} survived the scrub:\n{seen}");
    }
    assert!(seen.contains("env:none"), "{seen}");
    // Only this probe runs as the tenant (init and the supervisor are root); none of the last
    // session's processes remain.
    let procs: Vec<&str> = seen
        .lines()
        .filter(|l| l.starts_with("1000 ") || l.starts_with("sandbox "))
        .collect();
    assert!(
        procs
            .iter()
            .all(|l| l.contains("ps -o") || l.contains("sh -c")),
        "{procs:?}"
    );
    assert!(seen.contains("755\n755\n1777"), "modes restored: {seen}");
    shutdown_leaves_nothing(&pool, &instance).await;
}

/// A static x86-64 program that creates a System V shared memory segment and exits. Such a
/// segment outlives every process, and nothing in the sandbox can remove it, so the container
/// must fail verification.
#[cfg(target_arch = "x86_64")]
fn shm_maker_base64() -> String {
    static_program_base64("shm", SHM_MAKER_C)
}

#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_failing_verification_is_destroyed_not_handed_out() {
    let instance = unique_instance("dirty");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max = 2;
    let pool = warm_pool(&config, &cleanup).await;

    let lease = pool.acquire().await.expect("acquire");
    let b64 = shm_maker_base64();
    let out = sh(
        &pool,
        &lease.lease_ref(),
        &format!("echo {b64} | base64 -d > /workspace/mkshm && chmod +x /workspace/mkshm && /workspace/mkshm && echo made; wc -l < /proc/sysvipc/shm"),
    )
    .await;
    assert_eq!(
        text(&out.stdout).trim(),
        "made\n2",
        "segment created: {out:?}"
    );

    let outcome = recycle(&pool, &lease.lease_ref()).await;
    match &outcome {
        RecycleOutcome::Destroyed(reason) => assert!(reason.contains("ipc:shm"), "{reason}"),
        other => panic!("a dirty container was recycled: {other:?}"),
    }
    assert!(
        !labeled_containers(&instance).contains(&lease.container_id),
        "the dirty container is removed from docker"
    );
    // Every later lease gets another container, and the pool refills.
    for _ in 0..3 {
        let next = pool.acquire().await.expect("acquire");
        assert_ne!(next.container_id, lease.container_id);
        assert_eq!(
            recycle(&pool, &next.lease_ref()).await,
            RecycleOutcome::Recycled
        );
    }
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_killed_from_outside_are_replaced() {
    let instance = unique_instance("killed");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 2;
    config.pool.max = 4;
    let pool = warm_pool(&config, &cleanup).await;
    let mut lost = pool.watch_lost();

    // An idle one: dropped from the idle set and replaced.
    let victim = labeled_containers(&instance)[0].clone();
    docker(&["kill", &victim]);
    within(30, "idle replacement", async {
        loop {
            let ids = labeled_containers(&instance);
            if !ids.contains(&victim) && pool.status().idle == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    // A leased one: the holder hears of it, and its release destroys it.
    let lease = pool.acquire().await.expect("acquire");
    assert_ne!(lease.container_id, victim);
    docker(&["kill", &lease.container_id]);
    within(30, "lease lost", async {
        while pool.lost_leases().is_empty() {
            lost.changed().await.expect("the pool is alive");
        }
    })
    .await;
    assert_eq!(pool.lost_leases(), vec![lease.lease_ref()]);
    match recycle(&pool, &lease.lease_ref()).await {
        RecycleOutcome::Destroyed(reason) => assert!(reason.contains("died"), "{reason}"),
        other => panic!("a dead container was recycled: {other:?}"),
    }
    assert!(pool.wait_idle(2, Duration::from_secs(30)).await);
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_a_new_pool_adopts_or_removes_every_leftover() {
    let instance = unique_instance("crash");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 2;
    config.pool.max = 4;

    // The "crashed" run: a pool whose process died without shutting down. Its containers are
    // left running, one of them dirty, plus a stopped one and one of another image.
    let crashed = warm_pool(&config, &cleanup).await;
    let lease = crashed.acquire().await.expect("acquire");
    sh(
        &crashed,
        &lease.lease_ref(),
        "echo left > /workspace/left-behind; sleep 1000 >/dev/null 2>&1 &",
    )
    .await;
    // Stop its tasks without removing anything; `tests/service.rs` kills the real binary.
    crashed.abandon().await;
    let stopped = docker(&[
        "create",
        "--label",
        &format!("sandpool.instance={instance}"),
        "--label",
        "sandpool.role=sandbox",
        "sandpool/sandbox:latest",
        "sleep",
        "1",
    ]);
    let leftovers = labeled_containers(&instance);
    assert!(leftovers.len() >= 3, "{leftovers:?}");

    let gate = real_gate(&config).await;
    let fresh = ContainerPool::start(
        gate,
        &config,
        Arc::new(NoopObserver),
        sandpool::pool::Startup::default(),
    )
    .await
    .expect("new pool");
    cleanup.watch(&fresh);
    // The dirty leftover was scrubbed when adopted: whoever gets it sees nothing.
    let mut checked = false;
    for _ in 0..config.pool.max {
        let l = match fresh.acquire().await {
            Ok(l) => l,
            Err(PoolError::Exhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        };
        if l.container_id == lease.container_id {
            let out = sh(
                &fresh,
                &l.lease_ref(),
                "ls -A /workspace; ps -o args | grep -c '^sleep 1000'; true",
            )
            .await;
            assert_eq!(
                text(&out.stdout).trim(),
                "0",
                "scrubbed on adoption: {out:?}"
            );
            checked = true;
        }
        if checked {
            break;
        }
    }
    assert!(checked, "the running leftover was adopted");
    // Its removal runs in the background (with retries), so it may finish just after the
    // acquires above.
    within(30, "the stopped leftover is removed", async {
        while labeled_containers(&instance).contains(&stopped) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    shutdown_leaves_nothing(&fresh, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_does_not_leave_the_idle_set_large() {
    let instance = unique_instance("idlecap");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max_idle = 2;
    config.pool.max = 5;
    let pool = warm_pool(&config, &cleanup).await;
    let mut leases = Vec::new();
    for _ in 0..4 {
        leases.push(pool.acquire().await.expect("acquire"));
    }
    let mut outcomes = Vec::new();
    for lease in &leases {
        outcomes.push(recycle(&pool, &lease.lease_ref()).await);
    }
    let destroyed: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, RecycleOutcome::Destroyed(r) if r.contains("idle set full")))
        .collect();
    assert!(!destroyed.is_empty(), "{outcomes:?}");
    within(30, "idle back within its cap", async {
        loop {
            let s = pool.status();
            // A refill create may be under way too; wait for it, then count.
            if s.idle <= 2 && s.destroying == 0 && s.scrubbing == 0 && s.creating == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(labeled_containers(&instance).len() <= 2);
    pool.shutdown(Duration::from_secs(20)).await;
}

/// Counts creates that failed.
#[derive(Default)]
struct CreateFailures(std::sync::atomic::AtomicUsize);

impl sandpool::pool::PoolObserver for CreateFailures {
    fn created(&self, _took: Duration, ok: bool) {
        if !ok {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The reconcile loop removes containers of this instance that the pool does not know once
/// they are older than the grace; a create still in flight (created, not yet started,
/// attached and answered) is known by name and never taken for one, however slow it is. Here
/// the grace is 0 and reconcile runs every 50 ms while eight creates run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_never_removes_a_container_that_is_still_being_created() {
    let instance = unique_instance("inflight");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 8;
    config.pool.max = 8;
    config.pool.create_parallelism = 8;
    config.pool.reconcile_interval = Duration::from_millis(50);
    config.pool.reconcile_grace = Duration::from_millis(0);
    let gate = real_gate(&config).await;
    let failures = Arc::new(CreateFailures::default());
    let pool = ContainerPool::start(
        gate,
        &config,
        failures.clone(),
        sandpool::pool::Startup::default(),
    )
    .await
    .unwrap();
    cleanup.watch(&pool);
    assert!(
        pool.wait_idle(8, Duration::from_secs(60)).await,
        "the pool warms: {:?}",
        pool.status()
    );
    let failed = failures.0.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        failed, 0,
        "creates failed (reconcile removed them mid-way?)"
    );
    // And the warm ones stay: known containers are never strays.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.status().idle, 8);
    assert_eq!(labeled_containers(&instance).len(), 8);
    shutdown_leaves_nothing(&pool, &instance).await;
}
