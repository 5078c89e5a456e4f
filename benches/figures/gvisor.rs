//! gVisor next to runc (`scripts/bench gvisor`, issue 17): the same figures for sandboxes of
//! both runtimes, measured in one run on one engine (a second dockerd started by scripts/bench
//! with Debian's `runsc` registered, `--platform=ptrace --network=none`, vfs storage), so
//! that only the runtime differs: the cold create (create + start + first `docker exec`),
//! the command round trip through the supervisor, the recycle (scrub + verify), and a
//! pool-level churn of sessions (acquire, run `true`, release) with 4 callers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::*;

/// The figures for the runtime `test_config` picks (`SANDPOOL_TEST_SANDBOX_RUNTIME`).
pub async fn runtime_figures() -> Value {
    eprintln!("bench gvisor: cold create…");
    let cold = super::cold_baseline(20).await;
    eprintln!("bench gvisor: command round trip…");
    let rtt = super::command_rtt(200).await;
    eprintln!("bench gvisor: recycle…");
    let recycle = super::recycle(50).await;
    eprintln!("bench gvisor: churn…");
    let churn = churn(Duration::from_secs(20), 4).await;
    json!({"cold": cold, "rtt": rtt, "recycle": recycle, "churn": churn})
}

/// Sessions per second at the pool: `callers` loops of acquire, `true`, release (not waiting
/// for the recycle) for `length`, on a pool of 8.
async fn churn(length: Duration, callers: usize) -> Value {
    let instance = unique_instance("bench-gvchurn");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 8;
    config.pool.max = 8;
    let pool = start_pool(&config).await;
    cleanup.watch(&pool);
    assert!(pool.wait_idle(8, Duration::from_secs(300)).await);
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (pool, done, failed) = (pool.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                while started.elapsed() < length {
                    let Ok(lease) = pool.acquire().await else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let spec =
                        sandpool::pool::CommandSpec::shell("true", Duration::from_secs(20), 1024);
                    match pool.run(&lease.lease_ref(), &spec, None).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    let _ = pool.release(&lease.lease_ref());
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    pool.shutdown(Duration::from_secs(120)).await;
    let n = done.load(Ordering::Relaxed);
    json!({"sessions": n, "failed": failed.load(Ordering::Relaxed), "seconds": secs, "per_second": n as f64 / secs, "callers": callers, "pool": 8})
}

/// The table of `report` (`{"runc": …, "runsc": …}`).
pub fn print(report: &Value) {
    let (a, b) = (&report["runc"], &report["runsc"]);
    let p = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "{:<52} {:>14} {:>14} {:>8}",
        "figure", "runc", "runsc (gVisor)", "ratio"
    );
    let line = |name: &str, x: f64, y: f64| {
        println!("{name:<52} {x:>14.2} {y:>14.2} {:>7.2}x", y / x);
    };
    line(
        "cold create + start + first exec, p50 ms",
        p(&a["cold"], "p50"),
        p(&b["cold"], "p50"),
    );
    line(
        "command round trip (supervisor), p50 ms",
        p(&a["rtt"]["supervisor"], "p50"),
        p(&b["rtt"]["supervisor"], "p50"),
    );
    line(
        "command round trip (supervisor), p99 ms",
        p(&a["rtt"]["supervisor"], "p99"),
        p(&b["rtt"]["supervisor"], "p99"),
    );
    line(
        "command through docker exec, p50 ms",
        p(&a["rtt"]["docker_exec"], "p50"),
        p(&b["rtt"]["docker_exec"], "p50"),
    );
    line(
        "recycle (scrub + verify), p50 ms",
        p(&a["recycle"], "p50"),
        p(&b["recycle"], "p50"),
    );
    line(
        "recycle (scrub + verify), p99 ms",
        p(&a["recycle"], "p99"),
        p(&b["recycle"], "p99"),
    );
    line(
        "churn at the pool, sessions/s (4 callers, pool 8)",
        p(&a["churn"], "per_second"),
        p(&b["churn"], "per_second"),
    );
    println!(
        "failed: churn {} / {}, recycles destroyed {} / {}",
        a["churn"]["failed"],
        b["churn"]["failed"],
        a["recycle"]["destroyed"],
        b["recycle"]["destroyed"]
    );
}
