//! The audit trail, black-box: chains appended through the Redis log (a real
//! `redis-server`) and the file log, read back and verified, then tampered with behind the
//! log's back and checked with the real `sandpool audit verify`; two logs racing on one
//! session (two replicas during a hand-over); one round trip per warm append; the choice of
//! log, retention and bounds.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use sandpool::audit::{
    self, AuditLog, AuditRecord, AuditSettings, Decision, FileAuditLog, MemoryAuditLog, Origin,
    RedisAuditLog,
};

const PREFIX: &str = "sp-audit-test:";
const RETENTION: Duration = Duration::from_secs(3600);

fn record(session_id: &str, i: usize) -> AuditRecord {
    let (stdout_bytes, stdout_sha256) = audit::digest(format!("out {i}\n").as_bytes());
    let (stderr_bytes, stderr_sha256) = audit::digest(b"");
    AuditRecord {
        session_id: session_id.to_string(),
        subject: "alice".into(),
        origin: if i.is_multiple_of(2) {
            Origin::Mcp
        } else {
            Origin::Socket
        },
        client: (i.is_multiple_of(2)).then(|| "inspector/0.1".to_string()),
        tool: "exec".into(),
        args: serde_json::json!({"command": format!("echo {i}")}),
        decision: Decision::Automatic,
        decided_by: "policy:none".into(),
        started_ms: 1_700_000_000_000 + i as i64,
        ended_ms: 1_700_000_000_005 + i as i64,
        status: "ok".into(),
        exit_code: Some(0),
        stdout_bytes,
        stdout_sha256,
        stderr_bytes,
        stderr_sha256,
    }
}

fn session_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn append_n(log: &dyn AuditLog, session: &str, range: std::ops::Range<usize>) {
    for i in range {
        within(5, "append", log.append(record(session, i)))
            .await
            .expect("append");
    }
}

/// `sandpool audit <args>` with only `envs` set; its exit code and stdout.
async fn cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut command = tokio::process::Command::new(sandpool_bin());
    command
        .arg("audit")
        .args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied());
    let out = within(30, "sandpool audit", command.output())
        .await
        .expect("sandpool runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("sandpool audit {args:?}: {stdout}{stderr}");
    (out.status.code().unwrap_or(-1), stdout)
}

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    within(
        5,
        "raw connection",
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap()
}

/// The stream's entries: ids and their `e` field.
async fn stream(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<(String, String)> {
    let reply: redis::streams::StreamRangeReply =
        within(5, "xrange", conn.xrange_all(key)).await.unwrap();
    reply
        .ids
        .iter()
        .map(|item| (item.id.clone(), item.get::<String>("e").unwrap()))
        .collect()
}

#[tokio::test]
async fn redis_chain_verifies_and_the_cli_finds_a_deleted_entry() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let log = RedisAuditLog::connect(&url, PREFIX, RETENTION)
        .await
        .unwrap();
    let session = session_id();
    append_n(&log, &session, 0..20).await;

    let entries = log.read(&session).await.unwrap();
    assert_eq!(entries.len(), 20);
    assert_eq!(audit::verify(&entries), Ok(20));
    assert_eq!(entries[0].record, record(&session, 0));
    assert_eq!(entries[0].prev, audit::GENESIS);
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());

    // The key lives for the retention after the last append.
    let key = log.key(&session);
    let pttl: i64 = redis.cli(&["PTTL", &key]).parse().unwrap();
    assert!(pttl > 0 && pttl <= RETENTION.as_millis() as i64, "{pttl}");

    let envs = [
        ("SANDPOOL_REDIS_URL", url.as_str()),
        ("SANDPOOL_REDIS_PREFIX", PREFIX),
    ];
    let (code, out) = cli(&["verify", "--session", &session], &envs).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 20 entries, chain intact"), "{out}");

    let (code, out) = cli(&["show", "--session", &session], &envs).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 20);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["sessionId"], session.as_str());
    assert_eq!(first["origin"], "mcp");
    assert_eq!(first["decision"], "automatic");

    // Delete the tenth entry behind the log's back.
    let mut conn = raw(&redis).await;
    let ids = stream(&mut conn, &key).await;
    let _: i64 = conn.xdel(&key, &[&ids[9].0]).await.unwrap();
    let (code, out) = cli(&["verify", "--session", &session], &envs).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seq 10"), "{out}");
    assert!(out.contains("missing"), "{out}");
}

#[tokio::test]
async fn the_cli_finds_an_edited_or_forged_redis_entry() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let log = RedisAuditLog::connect(&url, PREFIX, RETENTION)
        .await
        .unwrap();
    let session = session_id();
    append_n(&log, &session, 0..12).await;
    let key = log.key(&session);
    let envs = [
        ("SANDPOOL_REDIS_URL", url.as_str()),
        ("SANDPOOL_REDIS_PREFIX", PREFIX),
    ];

    // Rewrite the stream with entry 5's status changed (a stream entry cannot be edited in
    // place: the forger writes it again, same ids).
    let mut conn = raw(&redis).await;
    let ids = stream(&mut conn, &key).await;
    let _: i64 = conn.del(&key).await.unwrap();
    for (i, (id, e)) in ids.iter().enumerate() {
        let e = if i == 4 {
            e.replace(r#""status":"ok""#, r#""status":"error""#)
        } else {
            e.clone()
        };
        let _: String = conn.xadd(&key, id, &[("e", e)]).await.unwrap();
    }
    let (code, out) = cli(&["verify", "--session", &session], &envs).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seq 5") && out.contains("edited"), "{out}");

    // Put the original back, then append a copy of entry 3 at the end (a replay).
    let _: i64 = conn.del(&key).await.unwrap();
    for (id, e) in &ids {
        let _: String = conn.xadd(&key, id, &[("e", e)]).await.unwrap();
    }
    assert_eq!(cli(&["verify", "--session", &session], &envs).await.0, 0);
    let _: String = conn.xadd(&key, "*", &[("e", &ids[2].1)]).await.unwrap();
    let (code, out) = cli(&["verify", "--session", &session], &envs).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("seq 13") && out.contains("out of order"),
        "{out}"
    );
}

#[tokio::test]
async fn two_logs_racing_on_one_session_make_one_chain() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let a = Arc::new(
        RedisAuditLog::connect(&url, PREFIX, RETENTION)
            .await
            .unwrap(),
    );
    let b = Arc::new(
        RedisAuditLog::connect(&url, PREFIX, RETENTION)
            .await
            .unwrap(),
    );
    let session = session_id();
    // Both logs cache a tail, then race in tight loops, three writers each: every append of
    // one makes the others' tails stale.
    append_n(a.as_ref(), &session, 0..1).await;
    append_n(b.as_ref(), &session, 1..2).await;
    let mut tasks = Vec::new();
    for (n, log) in [
        a.clone(),
        a.clone(),
        a.clone(),
        b.clone(),
        b.clone(),
        b.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        let session = session.clone();
        let range = 100 * (n + 1)..100 * (n + 1) + 30;
        tasks.push(tokio::spawn(async move {
            append_n(log.as_ref(), &session, range).await
        }));
    }
    for task in tasks {
        within(60, "racing appends", task).await.unwrap();
    }
    let entries = b.read(&session).await.unwrap();
    assert_eq!(entries.len(), 182);
    assert_eq!(audit::verify(&entries), Ok(182));
    // Each writer's entries are all there, in its own order.
    for n in 1..=6 {
        let mine: Vec<i64> = entries
            .iter()
            .map(|e| e.record.started_ms - 1_700_000_000_000)
            .filter(|i| *i / 100 == n)
            .collect();
        assert_eq!(mine, (100 * n..100 * n + 30).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_warm_append_is_one_round_trip() {
    let redis = RedisServer::start().await;
    let log = RedisAuditLog::connect(&redis.url(), PREFIX, RETENTION)
        .await
        .unwrap();
    let session = session_id();
    append_n(&log, &session, 0..2).await; // loads the script, caches the tail
    let calls = |name: &str| -> u64 {
        let stats = redis.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map(|n| n.parse().unwrap())
            .unwrap_or(0)
    };
    let (evalsha, eval, xrange) = (calls("evalsha"), calls("eval"), calls("xrange"));
    append_n(&log, &session, 2..12).await;
    assert_eq!(calls("evalsha") - evalsha, 10);
    assert_eq!(calls("eval"), eval);
    assert_eq!(calls("xrange"), xrange);
}

#[tokio::test]
async fn file_chain_continues_after_a_restart_and_the_cli_finds_an_edited_line() {
    let dir = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        data_dir: Some(dir.path().to_path_buf()),
        ..AuditSettings::default()
    };
    let session = session_id();
    {
        let log = audit::open(&settings, None, PREFIX).await.unwrap();
        assert_eq!(log.kind(), "file");
        append_n(log.as_ref(), &session, 0..12).await;
    }
    // A new log (a restarted service) recovers the tail from the file's last line.
    let log = audit::open(&settings, None, PREFIX).await.unwrap();
    append_n(log.as_ref(), &session, 12..20).await;
    let entries = log.read(&session).await.unwrap();
    assert_eq!(audit::verify(&entries), Ok(20));

    let path = dir.path().join("audit").join(format!("{session}.jsonl"));
    let path_arg = path.to_str().unwrap();
    let (code, out) = cli(&["verify", "--session", &session, "--file", path_arg], &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 20 entries, chain intact"), "{out}");
    let data_dir = dir.path().to_str().unwrap();
    let envs = [("SANDPOOL_DATA_DIR", data_dir)];
    let (code, out) = cli(&["verify", "--session", &session], &envs).await;
    assert_eq!(code, 0, "{out}");

    // Edit line 7.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[6] = lines[6].replace(r#""exitCode":0"#, r#""exitCode":1"#);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let (code, out) = cli(&["verify", "--session", &session], &envs).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seq 7") && out.contains("edited"), "{out}");
}

#[tokio::test]
async fn prune_removes_only_files_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileAuditLog::open(dir.path(), RETENTION).unwrap();
    let (old, fresh) = (session_id(), session_id());
    append_n(&log, &old, 0..3).await;
    append_n(&log, &fresh, 0..3).await;
    let old_path = log.path(&old).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old_path)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    assert_eq!(log.prune().unwrap(), 1);
    assert!(!old_path.exists());
    assert_eq!(log.read(&fresh).await.unwrap().len(), 3);
    // The pruned session starts a new chain, in a new file.
    append_n(&log, &old, 3..4).await;
    let entries = log.read(&old).await.unwrap();
    assert_eq!((entries.len(), entries[0].seq), (1, 1));
}

#[tokio::test]
async fn session_ids_that_are_not_file_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileAuditLog::open(dir.path(), RETENTION).unwrap();
    for bad in ["../escape", "a/b", "", "..", "x.jsonl"] {
        let err = log.append(record(bad, 0)).await.unwrap_err();
        assert!(matches!(err, audit::AuditError::InvalidSession(_)), "{err}");
    }
    assert!(!dir.path().join("escape.jsonl").exists());
    assert_eq!(count_files(dir.path()), 1); // the `audit` directory alone
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn open_picks_redis_then_files_then_memory_or_nothing() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let with_dir = AuditSettings {
        data_dir: Some(dir.path().to_path_buf()),
        ..AuditSettings::default()
    };
    let url = redis.url();
    let kind = |log: Arc<dyn AuditLog>| log.kind();
    assert_eq!(
        kind(audit::open(&with_dir, Some(&url), PREFIX).await.unwrap()),
        "redis"
    );
    assert_eq!(
        kind(audit::open(&with_dir, None, PREFIX).await.unwrap()),
        "file"
    );
    let default = AuditSettings::default();
    let memory = audit::open(&default, None, PREFIX).await.unwrap();
    assert_eq!(memory.kind(), "memory");
    let session = session_id();
    append_n(memory.as_ref(), &session, 0..5).await;
    assert_eq!(audit::verify(&memory.read(&session).await.unwrap()), Ok(5));

    let off = AuditSettings {
        enabled: false,
        ..with_dir
    };
    let disabled = audit::open(&off, Some(&url), PREFIX).await.unwrap();
    assert_eq!(disabled.kind(), "disabled");
    append_n(disabled.as_ref(), &session, 0..5).await;
    assert!(disabled.read(&session).await.unwrap().is_empty());
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
}

#[tokio::test]
async fn the_memory_log_is_bounded() {
    let log = MemoryAuditLog::with_bounds(2, 3);
    let (s1, s2, s3) = (session_id(), session_id(), session_id());
    append_n(&log, &s1, 0..3).await;
    let err = log.append(record(&s1, 3)).await.unwrap_err();
    assert!(
        matches!(err, audit::AuditError::Full { max: 3, .. }),
        "{err}"
    );
    append_n(&log, &s2, 0..1).await;
    append_n(&log, &s3, 0..1).await; // drops s1, the oldest chain
    assert!(log.read(&s1).await.unwrap().is_empty());
    assert_eq!(log.read(&s2).await.unwrap().len(), 1);
    assert_eq!(log.read(&s3).await.unwrap().len(), 1);
}

#[tokio::test]
async fn large_arguments_are_stored_as_a_digest() {
    let redis = RedisServer::start().await;
    let log = RedisAuditLog::connect(&redis.url(), PREFIX, RETENTION)
        .await
        .unwrap();
    let session = session_id();
    let mut big = record(&session, 0);
    big.tool = "write_file".into();
    big.args = serde_json::json!({"path": "/workspace/x", "content": "A".repeat(100_000)});
    let full = big.args.to_string();
    let entry = log.append(big).await.unwrap();
    assert_eq!(entry.record.args["truncated"], true);
    assert_eq!(entry.record.args["bytes"], full.len() as u64);
    assert_eq!(
        entry.record.args["sha256"],
        audit::digest(full.as_bytes()).1
    );
    let stored = redis.cli(&["XRANGE", &log.key(&session), "-", "+"]);
    assert!(stored.len() < 8192, "{} bytes stored", stored.len());
    assert_eq!(audit::verify(&log.read(&session).await.unwrap()), Ok(1));
}
