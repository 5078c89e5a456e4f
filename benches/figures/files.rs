//! Files in and out, and undo, measured (issue 16's targets):
//! - upload and download throughput of a 100 MiB file through HTTP (`PUT`/`GET
//!   /api/sessions/{id}/files/{path}`, Bearer token) and through Socket.IO (`fs:write` /
//!   `fs:read` in 4 MiB chunks, the official socket.io client), against `docker exec -i … tar`
//!   of the same bytes into and out of the same sandbox in the same run;
//! - the cost of a checkpoint (the supervisor's `Checkpoint` `take`, at the pool level like the
//!   in-process command round trip) of a workspace of 1,000 files / 50 MiB, with nothing
//!   changed and with 1 MiB changed since the last one;
//! - the time of an undo (`restore`) that puts back all 1,000 files after `rm -rf`;
//! - the Socket.IO `exec true` round trip of two services alike but for
//!   `SANDPOOL_CHECKPOINT_BYTES` (default against 0 = off), as a ratio.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::common::mcp::Browser;
use super::common::*;
use super::{fmt_lat, ms, node, row, summary};
use sandpool::pool::{CommandSpec, ContainerPool, LeaseRef};
use sandpool_supervisor::proto::{CheckpointRequest, Restored, Taken};

const MIB: usize = 1 << 20;
/// The transferred file.
const TRANSFER_MIB: usize = 100;
/// Socket.IO chunk (one `fs:write` / `fs:read`): the most one message carries.
const SOCKET_CHUNK_MIB: usize = 4;
/// The checkpointed workspace: `DIRS` directories of `FILES_PER_DIR` files of `FILE_BYTES`.
const DIRS: usize = 10;
const FILES_PER_DIR: usize = 100;
const FILE_BYTES: usize = 52_429;
/// Files rewritten before each "1 MiB changed" checkpoint: 20 × 52,429 bytes = 1 MiB.
const CHANGED_FILES: usize = 20;
/// The checkpoint store's bound in the pool-level figures (the service's default).
const STORE_BYTES: u64 = 128 << 20;
/// Sandboxes of these figures: room for a 100 MiB file twice over in /workspace, and for the
/// checkpoint store, whose memory counts against the sandbox.
const SANDBOX_MEMORY: &str = "1073741824";
const SANDBOX_TMPFS: &str = "536870912";

/// How many of each: the full run, or `quick` (a check that the figures work).
struct Counts {
    transfer_rounds: usize,
    takes: usize,
    undos: usize,
    rtt_rounds: usize,
    rtt_per_round: usize,
}

impl Counts {
    fn new(quick: bool) -> Counts {
        if quick {
            Counts {
                transfer_rounds: 1,
                takes: 20,
                undos: 3,
                rtt_rounds: 1,
                rtt_per_round: 100,
            }
        } else {
            Counts {
                transfer_rounds: 3,
                takes: 50,
                undos: 10,
                rtt_rounds: 3,
                rtt_per_round: 200,
            }
        }
    }
}

pub async fn files_figures(quick: bool) -> Value {
    let n = Counts::new(quick);
    eprintln!("bench: checkpoints and undo at the pool level…");
    let checkpoint = checkpoint_figures(&n).await;

    eprintln!("bench: file transfer (HTTP, Socket.IO, docker exec tar) and checkpoints on/off…");
    let mut services = Vec::new();
    let mut cleanups = Vec::new();
    for bytes in [None, Some("0")] {
        let instance = unique_instance(if bytes.is_some() {
            "bench-ckpt-off"
        } else {
            "bench-ckpt-on"
        });
        cleanups.push(Cleanup::new(&instance));
        let mut env = vec![
            ("SANDPOOL_POOL_MIN_IDLE", "2"),
            ("SANDPOOL_POOL_MAX", "4"),
            ("SANDPOOL_SANDBOX_MEMORY_BYTES", SANDBOX_MEMORY),
            ("SANDPOOL_SANDBOX_TMPFS_BYTES", SANDBOX_TMPFS),
            ("RUST_LOG", "warn"),
        ];
        if let Some(b) = bytes {
            env.push(("SANDPOOL_CHECKPOINT_BYTES", b));
        }
        services.push((instance.clone(), spawn_service(&instance, &env).await));
    }
    let on_url = format!("http://{}", services[0].1.addr);
    let off_url = format!("http://{}", services[1].1.addr);
    let transfer = transfer_figures(&on_url, &services[0].0, &n).await;
    let socket_off = socket_transfer(&off_url, n.transfer_rounds).await;
    let rtt = rtt_on_off(&on_url, &off_url, &n).await;
    for (_, service) in services {
        let _ = sigterm_and_wait(service);
    }
    drop(cleanups);

    json!({
        "conditions": format!(
            "sandpool serve (release, in-memory session store, pool min idle 2), sandboxes with {} MiB of memory and {} MiB tmpfs; \
             transfers of {TRANSFER_MIB} MiB of random bytes held in the client's memory, {} round(s) each, \
             one after another; checkpoints at the pool level (the supervisor's Checkpoint frame over the attach stream, in process), \
             store bound {} MiB; exec round trips from the official socket.io client {} × {} alternated per service",
            SANDBOX_MEMORY.parse::<u64>().unwrap() >> 20,
            SANDBOX_TMPFS.parse::<u64>().unwrap() >> 20,
            n.transfer_rounds,
            STORE_BYTES >> 20,
            n.rtt_rounds,
            n.rtt_per_round,
        ),
        "quick": quick,
        "transfer": transfer,
        "socket_transfer_checkpoints_off": socket_off,
        "checkpoint": checkpoint,
        "exec_rtt_checkpoints": rtt,
    })
}

// ---------------------------------------------------------------------------------------
// Transfer.

/// A throughput summary (MiB/s, median over rounds) of `samples` in ms for `mib` MiB each.
fn rate(mib: usize, samples_ms: &[f64]) -> Value {
    let mut per_s: Vec<f64> = samples_ms
        .iter()
        .map(|t| mib as f64 / (t / 1000.0))
        .collect();
    per_s.sort_by(|a, b| a.total_cmp(b));
    let median = if per_s.is_empty() {
        f64::NAN
    } else {
        per_s[per_s.len() / 2]
    };
    json!({
        "mib_per_s": median,
        "min_mib_per_s": per_s.first().copied().unwrap_or(f64::NAN),
        "max_mib_per_s": per_s.last().copied().unwrap_or(f64::NAN),
        "ms": samples_ms,
    })
}

/// Bytes that do not compress, quickly (xorshift).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ uuid::Uuid::new_v4().as_u64_pair().0;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The container of the session: the one of `instance` whose workspace holds `path`.
fn container_with(instance: &str, path: &str) -> String {
    labeled_containers(instance)
        .into_iter()
        .find(|id| {
            std::process::Command::new("docker")
                .args(["exec", id, "test", "-f", path])
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|| panic!("no sandbox of {instance} holds {path}"))
}

async fn docker_sh(cid: &str, script: &str) -> String {
    let out = tokio::process::Command::new("docker")
        .args(["exec", "-u", "1000:1000", cid, "sh", "-c", script])
        .output()
        .await
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "docker exec {script:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// HTTP and `docker exec … tar` on the same session's sandbox, alternated round by round,
/// then Socket.IO in a session of its own on the same service.
async fn transfer_figures(url: &str, instance: &str, n: &Counts) -> Value {
    let data = random_bytes(TRANSFER_MIB * MIB);
    let want = sha256_hex(&data);
    let body = Bytes::from(data);
    // The baseline's tar stream, made beforehand like the HTTP body.
    let tar_stream = {
        let mut builder = tar::Builder::new(Vec::with_capacity(body.len() + 4096));
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "base.bin", &body[..])
            .unwrap();
        builder.into_inner().unwrap()
    };

    let browser = Browser::open(url, None).await;
    let session_id = browser.session["sessionId"]
        .as_str()
        .expect("the session event carries sessionId")
        .to_string();
    let token = browser.token();
    let file_url = format!("{url}/api/sessions/{session_id}/files/bench/http.bin");
    let client = reqwest::Client::new();

    let (mut http_up, mut http_down, mut tar_up, mut tar_down) = (vec![], vec![], vec![], vec![]);
    let mut cid = None;
    for round in 0..n.transfer_rounds {
        // Upload through HTTP.
        let t = Instant::now();
        let resp = client
            .put(&file_url)
            .bearer_auth(&token)
            .body(body.clone())
            .send()
            .await
            .expect("PUT sent");
        let status = resp.status();
        let reply: Value = resp.json().await.unwrap_or(Value::Null);
        http_up.push(ms(t.elapsed()));
        assert!(status.is_success(), "PUT answered {status}: {reply}");
        assert_eq!(reply["bytes"].as_u64(), Some(body.len() as u64), "{reply}");
        assert_eq!(reply["sha256"].as_str(), Some(want.as_str()), "{reply}");

        // Download through HTTP, into memory.
        let t = Instant::now();
        let resp = client
            .get(&file_url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET sent");
        assert!(resp.status().is_success(), "GET answered {}", resp.status());
        let mut got = Vec::with_capacity(body.len());
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.expect("GET body"));
        }
        http_down.push(ms(t.elapsed()));
        assert_eq!(got.len(), body.len());
        assert_eq!(sha256_hex(&got), want, "GET returned other bytes");
        drop(got);

        let cid = cid
            .get_or_insert_with(|| container_with(instance, "/workspace/bench/http.bin"))
            .clone();

        // Upload, the baseline: the tar stream into `docker exec -i … tar -x`.
        let t = Instant::now();
        let mut child = tokio::process::Command::new("docker")
            .args([
                "exec",
                "-i",
                "-u",
                "1000:1000",
                &cid,
                "tar",
                "-xf",
                "-",
                "-C",
                "/workspace",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("docker CLI runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&tar_stream).await.expect("tar stream sent");
        drop(stdin);
        assert!(child.wait().await.unwrap().success(), "docker exec tar -x");
        tar_up.push(ms(t.elapsed()));
        let sum = docker_sh(&cid, "sha256sum /workspace/base.bin").await;
        assert!(
            sum.starts_with(&want),
            "docker exec tar -x wrote other bytes"
        );

        // Download, the baseline: `docker exec … tar -c` read into memory.
        let t = Instant::now();
        let out = tokio::process::Command::new("docker")
            .args([
                "exec",
                "-u",
                "1000:1000",
                &cid,
                "tar",
                "-cf",
                "-",
                "-C",
                "/workspace",
                "base.bin",
            ])
            .stderr(Stdio::inherit())
            .output()
            .await
            .expect("docker CLI runs");
        tar_down.push(ms(t.elapsed()));
        assert!(out.status.success(), "docker exec tar -c");
        let mut archive = tar::Archive::new(&out.stdout[..]);
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        let mut got = Vec::with_capacity(body.len());
        std::io::copy(&mut entry, &mut got).unwrap();
        assert_eq!(
            sha256_hex(&got),
            want,
            "docker exec tar -c returned other bytes"
        );

        // A clean workspace for the next round (not timed).
        docker_sh(&cid, "rm -f /workspace/bench/http.bin /workspace/base.bin").await;
        eprintln!("bench: transfer round {} done", round + 1);
    }
    drop(browser);

    let socket = socket_transfer(url, n.transfer_rounds).await;
    json!({
        "bytes": body.len(),
        "http_upload": rate(TRANSFER_MIB, &http_up),
        "http_download": rate(TRANSFER_MIB, &http_down),
        "docker_exec_tar_upload": rate(TRANSFER_MIB, &tar_up),
        "docker_exec_tar_download": rate(TRANSFER_MIB, &tar_down),
        "socket": socket,
    })
}

/// `fs:write` / `fs:read` of the file in chunks through the official socket.io client.
async fn socket_transfer(url: &str, rounds: usize) -> Value {
    let url = url.to_string();
    let r = tokio::task::spawn_blocking(move || {
        node(&[
            "fsio",
            &url,
            &TRANSFER_MIB.to_string(),
            &SOCKET_CHUNK_MIB.to_string(),
            &rounds.to_string(),
        ])
    })
    .await
    .unwrap();
    let samples = |k: &str| -> Vec<f64> {
        r[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    json!({
        "chunk_bytes": r["chunkBytes"],
        "upload": rate(TRANSFER_MIB, &samples("uploadMs")),
        "download": rate(TRANSFER_MIB, &samples("downloadMs")),
        "checkpoints": r["checkpoints"],
    })
}

// ---------------------------------------------------------------------------------------
// Checkpoints and undo, at the pool level.

async fn sh_ok(pool: &ContainerPool, lease: &LeaseRef, script: &str) -> String {
    let spec = CommandSpec::shell(script, Duration::from_secs(120), 1 << 20);
    let out = pool.run(lease, &spec, None).await.expect("command runs");
    assert_eq!(out.exit_code, Some(0), "{script:?}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// One `Checkpoint` request through the pool, timed.
async fn checkpoint<T: serde::de::DeserializeOwned>(
    pool: &ContainerPool,
    lease: &LeaseRef,
    request: CheckpointRequest,
) -> (T, f64) {
    let t = Instant::now();
    let reply = pool
        .checkpoint(lease, &request)
        .await
        .unwrap_or_else(|e| panic!("checkpoint {request:?}: {e}"));
    (reply, ms(t.elapsed()))
}

fn take(label: String) -> CheckpointRequest {
    CheckpointRequest::Take {
        label,
        max_bytes: STORE_BYTES,
    }
}

/// The workspace: `DIRS` × `FILES_PER_DIR` files of `FILE_BYTES` random bytes under `w/`.
fn populate_script() -> String {
    format!(
        "set -e; for d in $(seq 0 {}); do mkdir -p w/d$d; i=0; while [ $i -lt {FILES_PER_DIR} ]; do \
         head -c {FILE_BYTES} /dev/urandom > w/d$d/f$i; i=$((i+1)); done; done",
        DIRS - 1
    )
}

async fn checkpoint_figures(n: &Counts) -> Value {
    let instance = unique_instance("bench-ckpt");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max = 1;
    config.pool.memory_bytes = SANDBOX_MEMORY.parse().unwrap();
    config.pool.tmpfs_bytes = SANDBOX_TMPFS.parse().unwrap();
    let pool = start_pool(&config).await;
    cleanup.watch(&pool);
    assert!(pool.wait_idle(1, Duration::from_secs(120)).await);
    let lease = pool.acquire().await.unwrap();
    let id = lease.lease_ref();

    sh_ok(&pool, &id, &populate_script()).await;
    let files: usize = sh_ok(&pool, &id, "find w -type f | wc -l")
        .await
        .parse()
        .unwrap();
    let bytes: u64 = sh_ok(&pool, &id, "cat $(find w -type f) | wc -c")
        .await
        .parse()
        .unwrap();
    assert_eq!(files, DIRS * FILES_PER_DIR);

    // The first checkpoint reads every file.
    let (first, first_ms): (Taken, f64) = checkpoint(&pool, &id, take("first".into())).await;

    // Nothing changed since the last checkpoint.
    let mut unchanged = Vec::new();
    let mut unchanged_read = 0;
    for i in 0..n.takes + 5 {
        let (taken, t): (Taken, f64) = checkpoint(&pool, &id, take(format!("same-{i}"))).await;
        if i >= 5 {
            unchanged.push(t);
            unchanged_read += taken.read_bytes;
        }
    }

    // 1 MiB changed: CHANGED_FILES files rewritten (not timed) before each checkpoint.
    let mut changed = Vec::new();
    let mut changed_read = Vec::new();
    for i in 0..n.takes {
        let (d, first_file) = (i % DIRS, (i / DIRS * CHANGED_FILES) % FILES_PER_DIR);
        sh_ok(
            &pool,
            &id,
            &format!(
                "for i in $(seq {first_file} {}); do head -c {FILE_BYTES} /dev/urandom > w/d{d}/f$i; done",
                first_file + CHANGED_FILES - 1
            ),
        )
        .await;
        let (taken, t): (Taken, f64) = checkpoint(&pool, &id, take(format!("mib-{i}"))).await;
        changed.push(t);
        changed_read.push(taken.read_bytes as f64);
    }

    // Undo: a checkpoint, every file removed, then the restore (timed).
    let mut undo = Vec::new();
    let mut restored = Vec::new();
    for i in 0..n.undos {
        let label = format!("undo-{i}");
        let _: (Taken, f64) = checkpoint(&pool, &id, take(label.clone())).await;
        sh_ok(&pool, &id, "rm -rf w").await;
        let (r, t): (Restored, f64) =
            checkpoint(&pool, &id, CheckpointRequest::Restore { label }).await;
        undo.push(t);
        let back: usize = sh_ok(&pool, &id, "find w -type f | wc -l")
            .await
            .parse()
            .unwrap();
        assert_eq!(back, files, "the restore put back every file");
        restored.push(json!({"written": r.written, "removed": r.removed}));
    }
    let _: (sandpool_supervisor::proto::Done, f64) =
        checkpoint(&pool, &id, CheckpointRequest::Clear {}).await;

    let _ = pool.release(&id);
    pool.shutdown(Duration::from_secs(60)).await;
    let mean_changed_read = changed_read.iter().sum::<f64>() / changed_read.len().max(1) as f64;
    json!({
        "workspace": {"files": files, "dirs": DIRS, "bytes": bytes},
        "first_take_ms": first_ms,
        "first_take": {"entries": first.entries, "read_bytes": first.read_bytes, "store_bytes": first.store_bytes},
        "unchanged_ms": summary(&unchanged),
        "unchanged_read_bytes_total": unchanged_read,
        "changed_1mib_ms": summary(&changed),
        "changed_1mib": {"files_rewritten": CHANGED_FILES, "bytes_rewritten": CHANGED_FILES * FILE_BYTES, "mean_read_bytes": mean_changed_read},
        "undo_ms": summary(&undo),
        "undo_restored": restored,
    })
}

// ---------------------------------------------------------------------------------------
// The command round trip with checkpoints on and off.

/// Socket.IO `exec true`, alternated between the two services round by round so that drift
/// hits both: in an empty workspace (the figure with a target) and in one of 1,000 files /
/// 50 MiB made by the session first.
async fn rtt_on_off(on_url: &str, off_url: &str, n: &Counts) -> Value {
    let mut out = serde_json::Map::new();
    for (name, setup) in [
        ("empty_workspace", None),
        ("workspace_1000_files", Some(populate_script())),
    ] {
        let mut samples: HashMap<&str, Vec<f64>> = HashMap::new();
        for _ in 0..n.rtt_rounds {
            for (side, url) in [("on", on_url), ("off", off_url)] {
                let (url, count, setup) =
                    (url.to_string(), n.rtt_per_round.to_string(), setup.clone());
                let r = tokio::task::spawn_blocking(move || {
                    let mut args = vec!["rtt", url.as_str(), count.as_str()];
                    if let Some(s) = &setup {
                        args.push(s.as_str());
                    }
                    node(&args)
                })
                .await
                .unwrap();
                samples.entry(side).or_default().extend(
                    r["rttMs"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<_>>())
                        .unwrap_or_default(),
                );
            }
        }
        let (on, off) = (summary(&samples["on"]), summary(&samples["off"]));
        let ratio =
            on["p50"].as_f64().unwrap_or(f64::NAN) / off["p50"].as_f64().unwrap_or(f64::NAN);
        out.insert(
            name.into(),
            json!({"checkpoints_on": on, "checkpoints_off": off, "ratio_p50_on_over_off": ratio}),
        );
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------
// The table.

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn mark(met: bool) -> &'static str {
    if met { "✓" } else { "miss" }
}

pub fn print(r: &Value) {
    let t = &r["transfer"];
    for (way, http, base) in [
        ("upload", "http_upload", "docker_exec_tar_upload"),
        ("download", "http_download", "docker_exec_tar_download"),
    ] {
        let (h, b) = (f(&t[http]["mib_per_s"]), f(&t[base]["mib_per_s"]));
        row(
            &format!("HTTP {way}, {TRANSFER_MIB} MiB"),
            format!("{h:.1} MiB/s"),
            &format!(
                "median of {} (min {:.1}); target ≥ 100 MiB/s and > baseline: {}",
                t[http]["ms"].as_array().map_or(0, Vec::len),
                f(&t[http]["min_mib_per_s"]),
                mark(h >= 100.0 && h > b)
            ),
        );
        row(
            &format!("  baseline: docker exec tar {way}"),
            format!("{b:.1} MiB/s"),
            "same bytes, same sandbox, same run (docker exec -i -u 1000:1000 … tar)",
        );
    }
    for (side, s) in [
        ("on", &t["socket"]),
        ("off", &r["socket_transfer_checkpoints_off"]),
    ] {
        row(
            &format!("Socket.IO write / read, checkpoints {side}"),
            format!(
                "{:.1} / {:.1} MiB/s",
                f(&s["upload"]["mib_per_s"]),
                f(&s["download"]["mib_per_s"])
            ),
            &format!(
                "fs:write / fs:read of {TRANSFER_MIB} MiB in {} MiB chunks with offset; {} fs:write took a checkpoint, {} none; no target",
                f(&s["chunk_bytes"]) / MIB as f64,
                s["checkpoints"]["taken"],
                s["checkpoints"]["none"]
            ),
        );
    }
    let c = &r["checkpoint"];
    let conditions = format!(
        "{} files / {:.1} MiB, pool level",
        c["workspace"]["files"],
        f(&c["workspace"]["bytes"]) / MIB as f64
    );
    row(
        "checkpoint, first (reads every file)",
        format!("{:.1} ms", f(&c["first_take_ms"])),
        &format!("{conditions}; {}", c["first_take"]),
    );
    let p50 = f(&c["unchanged_ms"]["p50"]);
    row(
        "checkpoint, nothing changed",
        fmt_lat(&c["unchanged_ms"]),
        &format!(
            "{conditions}, {} sequential; read {} bytes in all; target p50 ≤ 3 ms: {}",
            c["unchanged_ms"]["n"],
            c["unchanged_read_bytes_total"],
            mark(p50 <= 3.0)
        ),
    );
    let p50 = f(&c["changed_1mib_ms"]["p50"]);
    row(
        "checkpoint, 1 MiB changed",
        fmt_lat(&c["changed_1mib_ms"]),
        &format!(
            "{conditions}, {} files rewritten before each, {} sequential; target p50 ≤ 10 ms: {}",
            CHANGED_FILES,
            c["changed_1mib_ms"]["n"],
            mark(p50 <= 10.0)
        ),
    );
    let p50 = f(&c["undo_ms"]["p50"]);
    row(
        "undo restoring 1,000 files",
        fmt_lat(&c["undo_ms"]),
        &format!(
            "restore after rm -rf of all, {} times; {}; target ≤ 100 ms (p50): {}",
            c["undo_ms"]["n"],
            c["undo_restored"][0],
            mark(p50 <= 100.0)
        ),
    );
    for (name, what, workspace) in [
        ("empty_workspace", "empty", "an empty workspace"),
        (
            "workspace_1000_files",
            "1,000 files",
            "a workspace of 1,000 files / 50 MiB (made by the session first)",
        ),
    ] {
        let x = &r["exec_rtt_checkpoints"][name];
        let ratio = f(&x["ratio_p50_on_over_off"]);
        row(
            &format!("exec true, checkpoints on / off, {what}"),
            format!(
                "{ratio:.3}× (p50 {:.2} / {:.2} ms)",
                f(&x["checkpoints_on"]["p50"]),
                f(&x["checkpoints_off"]["p50"])
            ),
            &format!(
                "Socket.IO round trip in {workspace}, two services alike but for SANDPOOL_CHECKPOINT_BYTES=0, n {} / {}; p99 {:.1} / {:.1} ms; target ≤ 1.25×: {}",
                x["checkpoints_on"]["n"],
                x["checkpoints_off"]["n"],
                f(&x["checkpoints_on"]["p99"]),
                f(&x["checkpoints_off"]["p99"]),
                mark(ratio <= 1.25)
            ),
        );
    }
}
