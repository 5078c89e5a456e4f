//! `cargo bench --bench sandpool` (or `scripts/bench`): sandpool's figures on this machine,
//! against the real Docker engine and a real Redis, with a cold `docker create + start +
//! first exec` of the same image measured in the same run as the baseline. Prints a table,
//! writes `bench-results/results.json`, and draws latency CDFs (`bench/plot.py`).
//!
//! `cargo bench --bench sandpool -- files` (or `scripts/bench files`) runs only the files and
//! undo figures (`figures/files.rs`) and writes `bench-results/files.json`; `-- files quick`
//! runs them once in a reduced form, to check that they work.
//!
//! `cargo bench --bench sandpool -- gvisor` (or `scripts/bench gvisor`, which starts the
//! engine it needs) runs runc and gVisor side by side (`figures/gvisor.rs`) and writes
//! `bench-results/gvisor.json`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "figures/files.rs"]
mod files_figures;
#[path = "figures/gvisor.rs"]
mod gvisor_figures;
#[path = "figures/mcp.rs"]
mod mcp_figures;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sandpool::docker::SandboxSpec;
use sandpool::pool::{ContainerPool, NoopObserver};
use serde_json::{Value, json};

/// Percentiles of a sample, in milliseconds.
fn summary(samples: &[f64]) -> Value {
    let mut v: Vec<f64> = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
        v[i.min(v.len() - 1)]
    };
    json!({
        "n": v.len(),
        "p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0),
        "max": v.last().copied().unwrap_or(f64::NAN),
        "mean": if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 },
        "samples": v,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn node_modules() -> PathBuf {
    std::env::var("SANDPOOL_NODE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/node-tools/node_modules")
        })
}

fn node(args: &[&str]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/socket-bench.js");
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .env("NODE_PATH", node_modules())
        .stderr(Stdio::inherit())
        .output()
        .expect("node runs");
    assert!(out.status.success(), "socket-bench {args:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("null")).expect("socket-bench JSON")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn pool_field(addr: std::net::SocketAddr, field: &str) -> u64 {
    let (_, body) = http_get(addr, "/api/pool").await;
    json_body(&body)[field].as_u64().unwrap_or(0)
}

/// The cumulative buckets of the server's handout histogram (connect handler start → `session`
/// emitted), in seconds.
async fn handout_buckets(addr: std::net::SocketAddr) -> Vec<(f64, f64)> {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with("sandpool_session_handout_seconds_bucket{le=\""))
        .filter_map(|l| {
            let le = l.split('"').nth(1)?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, n))
        })
        .collect()
}

/// Server-side handout between two bucket snapshots: the bucket bounds (ms) under which 50 %
/// and 99 % of the handouts fell.
fn server_handout(before: &[(f64, f64)], after: &[(f64, f64)]) -> Value {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - before
                    .iter()
                    .find(|(b, _)| b == le)
                    .map(|(_, m)| *m)
                    .unwrap_or(0.0),
            )
        })
        .collect();
    let total = diff.last().map(|(_, n)| *n).unwrap_or(0.0);
    let bound = |q: f64| {
        diff.iter()
            .find(|(_, n)| *n >= q * total)
            .map(|(le, _)| le * 1000.0)
            .unwrap_or(f64::NAN)
    };
    json!({"n": total, "p50_at_most_ms": bound(0.5), "p99_at_most_ms": bound(0.99)})
}

async fn wait_idle(addr: std::net::SocketAddr, n: u64) {
    within(600, "pool idle", async {
        while pool_field(addr, "idle").await < n {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// `docker create` + `start` + a first exec, the way a pool-less service hands out a sandbox.
async fn cold_baseline(runs: usize) -> Value {
    let instance = unique_instance("bench-cold");
    let _cleanup = Cleanup::new(&instance);
    let config = test_config(&instance);
    let gate = real_gate(&config).await;
    let docker = bench_docker();
    let mut samples = Vec::new();
    for i in 0..runs {
        let spec = SandboxSpec {
            name: format!("sandpool-{instance}-{i}"),
            image: config.image.image.clone(),
            instance_id: instance.clone(),
            memory_bytes: config.pool.memory_bytes as i64,
            nano_cpus: 1_000_000_000,
            pids_limit: 128,
            tmpfs_bytes: config.pool.tmpfs_bytes as u64,
            network: "none".into(),
            runtime: (!config.pool.runtime.is_empty()).then(|| config.pool.runtime.clone()),
        };
        let t = Instant::now();
        let id = gate.create_sandbox(&spec).await.expect("create");
        gate.start_container(&id).await.expect("start");
        docker_exec_true(&docker, &id).await;
        samples.push(ms(t.elapsed()));
        gate.remove_container(&id).await.expect("remove");
    }
    summary(&samples)
}

/// Containers created per second by the refill task, from empty to `n` idle.
async fn refill_rate(n: usize) -> Value {
    let instance = unique_instance("bench-refill");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = n;
    config.pool.max = n;
    let gate = real_gate(&config).await;
    let t = Instant::now();
    let pool = ContainerPool::start(
        gate,
        &config,
        Arc::new(NoopObserver),
        sandpool::pool::Startup::default(),
    )
    .await
    .unwrap();
    cleanup.watch(&pool);
    assert!(pool.wait_idle(n, Duration::from_secs(600)).await);
    let secs = t.elapsed().as_secs_f64();
    pool.shutdown(Duration::from_secs(120)).await;
    json!({"containers": n, "seconds": secs, "per_second": n as f64 / secs, "parallelism": config.pool.create_parallelism})
}

/// Release → back in the idle set (scrubbed and verified), after a session that wrote files
/// and left a background process.
async fn recycle(cycles: usize) -> Value {
    let instance = unique_instance("bench-recycle");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 4;
    config.pool.max = 4;
    let pool = start_pool(&config).await;
    cleanup.watch(&pool);
    assert!(pool.wait_idle(4, Duration::from_secs(120)).await);
    let mut samples = Vec::new();
    let mut destroyed = 0;
    for _ in 0..cycles {
        let lease = pool.acquire().await.unwrap();
        sh(
            &pool,
            &lease.lease_ref(),
            "echo x > /workspace/f; mkdir -p /tmp/d; sleep 100 >/dev/null 2>&1 &",
        )
        .await;
        let t = Instant::now();
        let rx = pool.release(&lease.lease_ref()).unwrap();
        match rx.await.unwrap() {
            sandpool::pool::RecycleOutcome::Recycled => samples.push(ms(t.elapsed())),
            sandpool::pool::RecycleOutcome::Destroyed(_) => destroyed += 1,
        }
    }
    pool.shutdown(Duration::from_secs(60)).await;
    let mut s = summary(&samples);
    s["destroyed"] = json!(destroyed);
    s
}

/// A command's round trip in a leased sandbox: `true` through the supervisor (what sessions
/// use) and, as the baseline measured in the same run on the same container, through a
/// `docker exec` (what every command cost before the supervisor).
async fn command_rtt(runs: usize) -> Value {
    let instance = unique_instance("bench-rtt");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max = 1;
    let pool = start_pool(&config).await;
    cleanup.watch(&pool);
    assert!(pool.wait_idle(1, Duration::from_secs(120)).await);
    let lease = pool.acquire().await.unwrap();
    let id = lease.lease_ref();
    let spec = sandpool::pool::CommandSpec {
        argv: vec!["true".into()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        cwd: "/workspace".into(),
        timeout: Duration::from_secs(30),
        output_limit: 1024,
        retain_output: true,
        stdin: Vec::new(),
        checkpoint: None,
    };
    let mut supervisor = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = pool.run(&id, &spec, None).await.expect("run");
        supervisor.push(ms(t.elapsed()));
        assert_eq!(out.exit_code, Some(0));
    }
    let docker = bench_docker();
    let mut docker_exec = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        docker_exec_true(&docker, &id.container_id).await;
        docker_exec.push(ms(t.elapsed()));
    }
    let _ = pool.release(&id);
    pool.shutdown(Duration::from_secs(60)).await;
    json!({"supervisor": summary(&supervisor), "docker_exec": summary(&docker_exec)})
}

/// One artillery run of `scenario` against a fresh server with a pool of `min_idle`/`max` and
/// Redis; returns artillery's counters and the server's error counts by code.
async fn artillery_run(
    scenario: &str,
    redis_url: &str,
    min_idle: &str,
    max: &str,
    max_waiters: &str,
) -> Value {
    let instance = unique_instance("bench-load");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_POOL_MIN_IDLE", min_idle),
            ("SANDPOOL_POOL_MAX_IDLE", max),
            ("SANDPOOL_POOL_MAX", max),
            ("SANDPOOL_POOL_MAX_WAITERS", max_waiters),
            ("SANDPOOL_POOL_CREATE_PARALLELISM", "8"),
            ("SANDPOOL_REDIS_URL", redis_url),
            ("SANDPOOL_SHUTDOWN_TIMEOUT_SECS", "120"),
            ("SANDPOOL_RECONNECT_GRACE_SECS", "2"),
            ("RUST_LOG", "warn"),
        ],
    )
    .await;
    let addr = service.addr;
    wait_idle(addr, min_idle.parse().unwrap()).await;
    let calls_before = gate_calls(addr).await;
    let report = tempfile::NamedTempFile::new().unwrap();
    let artillery = node_modules().join(".bin/artillery");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(scenario);
    let (target, report_path) = (format!("http://{addr}"), report.path().to_path_buf());
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let waiting = pool_field(addr, "waiting").await;
                peak.fetch_max(waiting, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&artillery)
            .args(["run", "--target", &target, "--output"])
            .arg(&report_path)
            .arg(&path)
            .env("ARTILLERY_DISABLE_TELEMETRY", "true")
            .output()
            .expect("artillery runs")
    })
    .await
    .unwrap();
    sampler.abort();
    let seconds = t.elapsed().as_secs_f64();
    let crashed = String::from_utf8_lossy(&out.stderr).contains("Callback was already called");
    let report: Value = std::fs::read(report.path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let counters = &report["aggregate"]["counters"];
    let (_, metrics) = http_get(addr, "/metrics").await;
    let errors: serde_json::Map<String, Value> = metrics
        .lines()
        .filter(|l| l.starts_with("sandpool_api_errors_total{code=\""))
        .filter_map(|l| {
            let code = l.split('"').nth(1)?.to_string();
            let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
            (n > 0.0).then(|| (code, json!(n)))
        })
        .collect();
    let calls = gate_calls(addr).await - calls_before;
    let created = counters["vusers.created"].as_u64().unwrap_or(0);
    assert!(sigterm_and_wait(service).success());
    json!({
        "scenario": scenario,
        "seconds": seconds,
        "exit_ok": out.status.success(),
        "artillery_crashed": crashed,
        "vusers_created": created,
        "vusers_completed": counters["vusers.completed"].as_u64().unwrap_or(0),
        "vusers_failed": counters["vusers.failed"].as_u64().unwrap_or(0),
        "server_errors_by_code": errors,
        "peak_waiting": peak.load(std::sync::atomic::Ordering::Relaxed),
        "docker_calls": calls,
        "docker_calls_per_user": if created > 0 { calls as f64 / created as f64 } else { f64::NAN },
        "pool": format!("min idle {min_idle}, max {max}, max waiters {max_waiters}"),
    })
}

/// Docker calls the server's gate has made so far.
async fn gate_calls(addr: std::net::SocketAddr) -> u64 {
    let (_, body) = http_get(addr, "/api/pool").await;
    json_body(&body)["gate"]["calls_total"]
        .as_u64()
        .unwrap_or(0)
}

fn row(name: &str, value: String, conditions: &str) {
    println!("{name:<44} {value:<34} {conditions}");
}

fn fmt_lat(v: &Value) -> String {
    format!(
        "{:.1}/{:.1}/{:.1}/{:.1} ms",
        v["p50"].as_f64().unwrap_or(f64::NAN),
        v["p90"].as_f64().unwrap_or(f64::NAN),
        v["p99"].as_f64().unwrap_or(f64::NAN),
        v["max"].as_f64().unwrap_or(f64::NAN)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; `files` (and `quick`) after `--` select the files
    // figures alone.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&out_dir).unwrap();
    let image = "sandpool/sandbox:latest";
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let docker_version = docker(&["version", "--format", "{{.Server.Version}}"]);
    if args.iter().any(|a| a == "gvisor") {
        let mut report = serde_json::Map::new();
        for runtime in ["runc", "runsc"] {
            // SAFETY: set before the figures start any task that reads the environment.
            unsafe { std::env::set_var("SANDPOOL_TEST_SANDBOX_RUNTIME", runtime) };
            report.insert(runtime.into(), gvisor_figures::runtime_figures().await);
        }
        let report = json!({
            "conditions": {
                "machine": format!("{cores} cores"),
                "docker": docker_version,
                "engine": "a second dockerd, vfs storage; runsc --platform=ptrace --network=none",
                "image": image,
                "build": "release",
            },
            "runc": report["runc"],
            "runsc": report["runsc"],
        });
        let path = out_dir.join("gvisor.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        println!();
        println!(
            "sandpool benchmark, runc and gVisor on one engine — {cores} cores, Docker {docker_version}, release build"
        );
        gvisor_figures::print(&report);
        println!("JSON: {}", path.display());
        return;
    }
    if args.iter().any(|a| a == "files") {
        let quick = args.iter().any(|a| a == "quick");
        let files = files_figures::files_figures(quick).await;
        let report = json!({
            "conditions": {
                "machine": format!("{cores} cores"),
                "docker": docker_version,
                "image": image,
                "build": "release",
            },
            "files": files,
        });
        let path = out_dir.join("files.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        println!();
        println!(
            "sandpool benchmark, files and undo — {cores} cores, Docker {docker_version}, image {image}, release build{}",
            if quick {
                ", quick (reduced counts)"
            } else {
                ""
            }
        );
        println!("{}", "-".repeat(110));
        row("figure", "value".into(), "conditions");
        files_figures::print(&report["files"]);
        println!("{}", "-".repeat(110));
        println!("JSON: {}", path.display());
        return;
    }
    eprintln!("bench: cold baseline…");
    let cold = cold_baseline(30).await;
    eprintln!("bench: refill rate…");
    let refill = refill_rate(30).await;
    eprintln!("bench: recycle…");
    let recycled = recycle(100).await;
    eprintln!("bench: command round trip (supervisor vs docker exec)…");
    let rtt_engine = command_rtt(300).await;

    eprintln!("bench: socket-level figures (release binary, redis store)…");
    let redis = RedisServer::start().await;
    let instance = unique_instance("bench-svc");
    let _cleanup = Cleanup::new(&instance);
    let redis_url = redis.url();
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_POOL_MIN_IDLE", "110"),
            // Room for the 1,000 sessions of the memory figure.
            ("SANDPOOL_POOL_MAX", "1100"),
            ("SANDPOOL_POOL_CREATE_PARALLELISM", "8"),
            ("SANDPOOL_REDIS_URL", redis_url.as_str()),
            ("SANDPOOL_SHUTDOWN_TIMEOUT_SECS", "300"),
            ("SANDPOOL_POOL_ACQUIRE_TIMEOUT_MS", "60000"),
            ("SANDPOOL_RECONNECT_GRACE_SECS", "1"),
            ("SANDPOOL_JANITOR_INTERVAL_SECS", "1"),
            ("RUST_LOG", "warn"),
        ],
    )
    .await;
    let (addr, pid) = (service.addr, service.child.id());
    let url = format!("http://{addr}");
    wait_idle(addr, 110).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_rest = rss_kib(pid);

    let mut handout = serde_json::Map::new();
    for (n, c) in [(100, 1), (200, 20), (200, 100)] {
        let run = |mode: &'static str| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || node(&[mode, &url, &n.to_string(), &c.to_string()]))
        };
        let before = handout_buckets(addr).await;
        let pure = run("handout").await.unwrap();
        let after = handout_buckets(addr).await;
        let with_exec = run("firstexec").await.unwrap();
        let samples = |r: &Value, k: &str| -> Vec<f64> {
            r[k].as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x.as_f64())
                .collect()
        };
        handout.insert(
            format!("c{c}"),
            json!({
                "concurrency": c,
                "sessions": n,
                "failures": pure["failures"].as_u64().unwrap_or(0) + with_exec["failures"].as_u64().unwrap_or(0),
                "handout": summary(&samples(&pure, "handoutMs")),
                "first_exec": summary(&samples(&with_exec, "firstExecMs")),
                "server_acquire": summary(&samples(&pure, "acquireMs")),
                "server_handout": server_handout(&before, &after),
            }),
        );
    }

    wait_idle(addr, 110).await;
    let samples_of = |r: &Value, k: &str| -> Vec<f64> {
        r[k].as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    };
    let rtt_socket = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || node(&["rtt", &url, "500"]))
            .await
            .unwrap()
    };
    let rtt_socket = json!({
        "rtt": summary(&samples_of(&rtt_socket, "rttMs")),
        "failures": rtt_socket["failures"],
    });
    wait_idle(addr, 110).await;
    let cycle = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || node(&["cycle", &url, "200"]))
            .await
            .unwrap()
    };
    let cycle = json!({
        "cycle": summary(&samples_of(&cycle, "cycleMs")),
        "failures": cycle["failures"],
    });
    wait_idle(addr, 110).await;
    let churn_workers = 8;
    let churn_calls_before = gate_calls(addr).await;
    let peak_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak_total.clone();
        tokio::spawn(async move {
            loop {
                let total = pool_field(addr, "total").await;
                peak.fetch_max(total, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let churn = tokio::task::spawn_blocking({
        let url = url.clone();
        move || node(&["churn", &url, "60", &churn_workers.to_string()])
    })
    .await
    .unwrap();
    sampler.abort();
    let churn_calls = gate_calls(addr).await - churn_calls_before;
    let churn_sessions = churn["sessions"].as_u64().unwrap_or(0);
    let churn_calls_per_session = if churn_sessions > 0 {
        churn_calls as f64 / churn_sessions as f64
    } else {
        f64::NAN
    };

    // Memory: the server's RSS with 100 and 500 sessions connected.
    let mut memory = json!({"rss_rest_kib": rss_rest});
    for n in [100u64, 500, 1000] {
        wait_idle(addr, 100).await;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/socket-bench.js");
        let mut child = Command::new("node")
            .arg(&script)
            .args(["hold", &url, &n.to_string()])
            .env("NODE_PATH", node_modules())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let held = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        if !held.contains(&format!("\"held\":{n}")) {
            eprintln!("bench: holding {n} sessions failed ({held:?}); no memory figure for it");
            memory[format!("hold_{n}_failed")] = json!(true);
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib(pid);
        memory[format!("rss_{n}_sessions_kib")] = json!(rss);
        memory[format!("per_session_bytes_at_{n}")] =
            json!((rss.saturating_sub(rss_rest) * 1024) as f64 / n as f64);
        drop(child.stdin.take());
        child.wait().unwrap();
        // Their sessions are detached now; the janitor ends them after the (short) grace.
        within(120, "held sessions ended", async {
            while pool_field(addr, "leased").await > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await;
    }
    let status = sigterm_and_wait(service);
    assert!(status.success());

    eprintln!("bench: the reference load test (loadtest/chat.yml, 6 minutes)…");
    let load_reference = artillery_run("loadtest/chat.yml", &redis_url, "220", "300", "1000").await;
    eprintln!("bench: twice its arrival rate (loadtest/chat-2x.yml)…");
    let load_double = artillery_run("loadtest/chat-2x.yml", &redis_url, "220", "300", "60").await;
    eprintln!("bench: the MCP endpoint and the audit trail…");
    let mcp = mcp_figures::mcp_figures(&redis_url).await;
    eprintln!("bench: files in and out, checkpoints and undo…");
    let files = files_figures::files_figures(false).await;

    let cold_p50 = cold["p50"].as_f64().unwrap_or(f64::NAN);
    let warm20 = &handout["c20"];
    let ratio_handout = cold_p50 / warm20["handout"]["p50"].as_f64().unwrap_or(f64::NAN);
    let ratio_first_exec = cold_p50 / warm20["first_exec"]["p50"].as_f64().unwrap_or(f64::NAN);
    let ratio_handout_c1 = cold_p50 / handout["c1"]["handout"]["p50"].as_f64().unwrap_or(f64::NAN);
    let ratio_server = cold_p50
        / warm20["server_handout"]["p50_at_most_ms"]
            .as_f64()
            .unwrap_or(f64::NAN);
    let report = json!({
        "conditions": {
            "machine": format!("{cores} cores"),
            "docker": docker_version,
            "image": image,
            "build": "release",
            "socket_server": "sandpool serve, pool min idle 110 / max 1100, create parallelism 8, redis session store, reconnect grace 1 s, official socket.io client 4.8 (websocket) on loopback",
            "cold_baseline": "docker create + start + exec `true` through the gate, sequential, same image and hardening",
        },
        "cold_baseline_ms": cold,
        "handout": handout,
        "ratio_cold_over_warm_handout_p50_c20": ratio_handout,
        "ratio_cold_over_warm_handout_p50_c1": ratio_handout_c1,
        "ratio_cold_over_server_handout_p50_bound_c20": ratio_server,
        "ratio_cold_over_warm_first_exec_p50_c20": ratio_first_exec,
        "recycle_ms": recycled,
        "command_rtt_engine_ms": rtt_engine,
        "command_rtt_socket_ms": rtt_socket,
        "session_cycle_ms": cycle,
        "load_reference": load_reference,
        "load_double": load_double,
        "refill": refill,
        "churn": {"result": churn, "workers": churn_workers, "peak_pool_total": peak_total.load(std::sync::atomic::Ordering::Relaxed), "docker_calls": churn_calls, "docker_calls_per_session": churn_calls_per_session},
        "memory": memory,
        "mcp": mcp,
        "files": files,
    });
    let path = out_dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();

    println!();
    println!(
        "sandpool benchmark — {cores} cores, Docker {docker_version}, image {image}, release build"
    );
    println!("{}", "-".repeat(110));
    row("figure", "value".into(), "conditions");
    row(
        "cold create+start+first exec p50/p90/p99/max",
        fmt_lat(&cold),
        "30 sequential, through the gate",
    );
    for c in ["c1", "c20", "c100"] {
        let h = &handout[c];
        let conc = h["concurrency"].as_u64().unwrap_or(0);
        row(
            &format!("handout connect→session, {conc} concurrent"),
            fmt_lat(&h["handout"]),
            &format!(
                "{} sessions, warm pool, {} failures",
                h["sessions"], h["failures"]
            ),
        );
        row(
            &format!("  server side of it, {conc} concurrent"),
            format!(
                "p50 ≤ {} ms, p99 ≤ {} ms",
                h["server_handout"]["p50_at_most_ms"], h["server_handout"]["p99_at_most_ms"]
            ),
            "connect handler → `session` emitted (histogram bucket bounds)",
        );
        row(
            &format!("first exec connect→ack, {conc} concurrent"),
            fmt_lat(&h["first_exec"]),
            &format!("exec `true` in each of {conc} new sessions at once"),
        );
    }
    row(
        "cold / warm handout p50 (20 concurrent)",
        format!("{ratio_handout:.0}×"),
        "client-observed; target ≥ 50×",
    );
    row(
        "cold / warm handout p50 (1 at a time)",
        format!("{ratio_handout_c1:.0}×"),
        "client-observed",
    );
    row(
        "cold / server-side handout p50 (20 concurrent)",
        format!("≥ {ratio_server:.0}×"),
        "against the p50 bucket bound",
    );
    row(
        "cold / warm first exec p50 (20 concurrent)",
        format!("{ratio_first_exec:.1}×"),
        "both include a first exec",
    );
    row(
        "recycle release→idle p50/p90/p99/max",
        fmt_lat(&recycled),
        &format!(
            "{} cycles, scrub + verify, {} destroyed",
            recycled["n"], recycled["destroyed"]
        ),
    );
    row(
        "command round trip, supervisor p50/p90/p99/max",
        fmt_lat(&rtt_engine["supervisor"]),
        &format!(
            "exec `true`, in process, {} sequential",
            rtt_engine["supervisor"]["n"]
        ),
    );
    row(
        "  baseline: docker exec p50/p90/p99/max",
        fmt_lat(&rtt_engine["docker_exec"]),
        "same container, same run",
    );
    row(
        "command round trip, client-observed",
        fmt_lat(&rtt_socket["rtt"]),
        &format!(
            "exec `true` acked, one session, {} sequential, {} failures",
            rtt_socket["rtt"]["n"], rtt_socket["failures"]
        ),
    );
    row(
        "MCP exec true round trip, policy none",
        fmt_lat(&mcp["mcp_exec_true_policy_none"]),
        "rmcp client, sequential; target p50 ≤ 3 ms",
    );
    row(
        "  Socket.IO exec true, same service",
        fmt_lat(&mcp["socket_exec_true_same_service"]),
        "official socket.io client, same run",
    );
    row(
        "MCP exec true, approved by the browser",
        fmt_lat(&mcp["mcp_exec_true_approved_by_browser"]),
        "policy all, socket.io client approves at once; target p50 ≤ 6 ms",
    );
    row(
        "audit append (Redis stream)",
        fmt_lat(&mcp["audit_append_redis"]),
        "one session's chain, sequential; target p99 ≤ 1 ms",
    );
    row(
        "command round trip, audit on / off",
        format!(
            "{:.3}× (p50 {:.2} / {:.2} ms)",
            mcp["audit_rtt"]["ratio_p50_on_over_off"]
                .as_f64()
                .unwrap_or(f64::NAN),
            mcp["audit_rtt"]["audit_on"]["p50"]
                .as_f64()
                .unwrap_or(f64::NAN),
            mcp["audit_rtt"]["audit_off"]["p50"]
                .as_f64()
                .unwrap_or(f64::NAN)
        ),
        "socket.io exec true, two services alternated 3×200; target ≤ 1.05×",
    );
    files_figures::print(&report["files"]);
    row(
        "session cycle connect→exec→end",
        fmt_lat(&cycle["cycle"]),
        &format!(
            "{} sessions one at a time, {} failures",
            cycle["cycle"]["n"], cycle["failures"]
        ),
    );
    row(
        "refill rate",
        format!(
            "{:.1} containers/s",
            refill["per_second"].as_f64().unwrap_or(0.0)
        ),
        &format!(
            "empty → {} idle, parallelism {}",
            refill["containers"], refill["parallelism"]
        ),
    );
    row(
        "churn",
        format!(
            "{:.1} sessions/s",
            churn["perSecond"].as_f64().unwrap_or(0.0)
        ),
        &format!(
            "{} s, {churn_workers} workers, {} failures, peak pool {}",
            churn["seconds"].as_f64().unwrap_or(0.0).round(),
            churn["failures"],
            report["churn"]["peak_pool_total"]
        ),
    );
    row(
        "  docker calls per churned session",
        format!("{churn_calls_per_session:.2}"),
        &format!("{churn_calls} calls for {churn_sessions} sessions"),
    );
    row(
        "server RSS at rest",
        format!("{:.1} MiB", rss_rest as f64 / 1024.0),
        "110 idle sandboxes, redis store",
    );
    for load in [&load_reference, &load_double] {
        row(
            &format!("load test {}", load["scenario"].as_str().unwrap_or("")),
            format!(
                "{} failed / {} users",
                load["vusers_failed"], load["vusers_created"]
            ),
            &format!(
                "{}; artillery crashed: {}; server errors {}; peak queue {}; {:.2} docker calls/user",
                load["pool"].as_str().unwrap_or(""),
                load["artillery_crashed"],
                load["server_errors_by_code"],
                load["peak_waiting"],
                load["docker_calls_per_user"].as_f64().unwrap_or(f64::NAN)
            ),
        );
    }
    for n in [100, 500, 1000] {
        row(
            &format!("server RSS per session at {n}"),
            format!(
                "{:.1} KiB",
                memory[format!("per_session_bytes_at_{n}")]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1024.0
            ),
            &format!("RSS {} KiB", memory[format!("rss_{n}_sessions_kib")]),
        );
    }
    println!("{}", "-".repeat(110));
    println!("JSON: {}", path.display());

    let plot = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/plot.py");
    match Command::new("python3")
        .arg(&plot)
        .arg(&path)
        .arg(&out_dir)
        .status()
    {
        Ok(s) if s.success() => println!("plots: {}/*.png", out_dir.display()),
        _ => eprintln!(
            "plots not drawn: python3 with matplotlib is needed (scripts/bench installs it)"
        ),
    }
}

/// The baseline: `true` through `docker exec` as the tenant (create, start, wait for the end,
/// inspect the exit code), what every command cost before the supervisor. Straight through
/// bollard: the service itself no longer runs `docker exec` at all.
async fn docker_exec_true(docker: &bollard::Docker, container_id: &str) {
    use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
    use futures_util::StreamExt;
    let created = docker
        .create_exec(
            container_id,
            CreateExecOptions {
                cmd: Some(vec!["true".to_string()]),
                user: Some("1000:1000".to_string()),
                working_dir: Some("/workspace".to_string()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    let started = docker
        .start_exec(&created.id, Some(StartExecOptions::default()))
        .await
        .expect("start exec");
    if let StartExecResults::Attached { mut output, .. } = started {
        while output.next().await.is_some() {}
    }
    let inspected = docker
        .inspect_exec(&created.id)
        .await
        .expect("inspect exec");
    assert_eq!(inspected.exit_code, Some(0), "docker exec true failed");
}

/// A Docker client for the engine the figures use (`DOCKER_HOST` when it names a socket).
fn bench_docker() -> bollard::Docker {
    bollard::Docker::connect_with_unix(&docker_host(), 120, bollard::API_DEFAULT_VERSION)
        .expect("docker client")
}
