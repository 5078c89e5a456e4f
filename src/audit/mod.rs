//! The audit trail: one append-only, hash-chained log of tool calls per session.
//!
//! Every tool call a session runs (an `exec` from the browser, an approved or automatic chat
//! proposal, an MCP call) is appended as an [`AuditRecord`]; the log seals it into an
//! [`AuditEntry`] with a per-session sequence number, the append time and a SHA-256 link to
//! the previous entry (see `chain.rs` for exactly what is hashed), so that [`verify`] finds an
//! edited, deleted or reordered entry. What is kept is bounded and holds no secrets: the
//! arguments are cut to a digest past [`MAX_ARGS_BYTES`], and outputs are kept only as byte
//! counts and SHA-256 digests ([`digest`]).
//!
//! Three logs implement [`AuditLog`] (chosen by [`open`]): a Redis stream per session with
//! the chain's tail checked and extended in one Lua script (`redis.rs`), an append-only
//! JSON-lines file per session (`file.rs`), and a bounded in-process log (`memory.rs`).
//!
//! This module is a leaf: it must not import `api`, `session`, `pool` or `docker` (it reads
//! only its settings from `config`). The `api` layer calls it after each tool call.

mod chain;
pub mod file;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::chain::{BreakReason, ChainBreak, GENESIS, verify};
pub use self::file::FileAuditLog;
pub use self::memory::{DisabledAuditLog, MemoryAuditLog};
pub use self::redis::RedisAuditLog;
pub use crate::config::AuditSettings;

/// Arguments whose compact JSON is longer than this, in bytes, are stored as a digest and a
/// prefix instead (see [`bound_args`]).
pub const MAX_ARGS_BYTES: usize = 4096;

/// Characters of the arguments' JSON kept in the `prefix` of truncated arguments.
pub const ARGS_PREFIX_CHARS: usize = 1024;

/// Entries [`AuditLog::read`] returns at most: the oldest ones, so that a read is bounded and
/// what it returns is still a chain that starts at genesis.
pub const MAX_READ_ENTRIES: usize = 10_000;

/// Where a tool call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A command sent directly from the browser (`exec` on the socket).
    Socket,
    /// A call the chat agent proposed.
    Chat,
    /// A call from an MCP client.
    Mcp,
}

/// Who let a tool call run, or that it did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A person approved it.
    Approved,
    /// A person rejected it; it did not run.
    Rejected,
    /// A policy let it run without asking.
    Automatic,
    /// Nobody answered in time; it did not run.
    TimedOut,
}

/// One tool call, as a caller appends it. The log adds the sequence number, the time and the
/// chain links ([`AuditEntry`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// The session the call ran in; its chain is the one extended. Letters, digits, `-`
    /// and `_` (session ids are UUIDs), 1 to 128 characters.
    pub session_id: String,
    /// The token subject (`sub`) of the session's owner; empty when anonymous.
    pub subject: String,
    /// Where the call came from.
    pub origin: Origin,
    /// The client that sent it, e.g. an MCP client's `name/version`.
    pub client: Option<String>,
    /// The tool: `exec`, `read_file`, `write_file`, `list_dir`, `delete_path`.
    pub tool: String,
    /// The tool's arguments; bounded by the log (see [`bound_args`]).
    pub args: serde_json::Value,
    /// Who let it run, or that it did not.
    pub decision: Decision,
    /// Who decided: `user`, `policy:writes`, `policy:none`, ...
    pub decided_by: String,
    /// When the call started, in milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// When it ended, in milliseconds since the Unix epoch.
    pub ended_ms: i64,
    /// How it ended: `ok`, `timeout`, `error`, `rejected`, ...
    pub status: String,
    /// The command's exit code, when it ran to an exit.
    pub exit_code: Option<i64>,
    /// Bytes of standard output (the output itself is never stored).
    pub stdout_bytes: u64,
    /// SHA-256 (hex) of the standard output.
    pub stdout_sha256: String,
    /// Bytes of standard error.
    pub stderr_bytes: u64,
    /// SHA-256 (hex) of the standard error.
    pub stderr_sha256: String,
}

/// A sealed record: the record, its place in the session's chain and the chain's hashes.
/// The JSON form (camelCase, the record's fields inline) is what the logs store and what the
/// HTTP API returns (`docs/API.md`, "Audit trail").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// The appended record (serialized inline).
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Position in the session's chain, from 1.
    pub seq: u64,
    /// When the log appended it, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// `hash` of the previous entry of the session; [`GENESIS`] (64 zeros) for the first.
    pub prev: String,
    /// SHA-256 (hex) of `prev` and every other field (see `chain.rs`).
    pub hash: String,
}

/// Why an audit log could not append or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The backing store (Redis) did not answer or refused.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// What the log holds cannot be read as entries.
    #[error("audit log of session {session_id} is corrupt: {detail}")]
    Corrupt { session_id: String, detail: String },
    /// A file of the log could not be read or written.
    #[error("audit log i/o failed on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The session id is not one the log accepts (it names a file or a key).
    #[error("invalid session id {0:?}: 1 to 128 letters, digits, '-' or '_'")]
    InvalidSession(String),
    /// Other writers kept extending the chain while this append retried.
    #[error("audit append for session {session_id} lost {attempts} races for the chain's tail")]
    Contended { session_id: String, attempts: usize },
    /// The in-process log holds as many entries of the session as it may.
    #[error("in-memory audit log of session {session_id} is full ({max} entries)")]
    Full { session_id: String, max: usize },
}

/// An append-only, hash-chained log of tool calls, one chain per session.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Seals `record` as the next entry of its session's chain (arguments bounded, sequence
    /// number, time, links) and stores it; returns the entry as stored.
    async fn append(&self, record: AuditRecord) -> Result<AuditEntry, AuditError>;

    /// The session's chain, oldest first, at most [`MAX_READ_ENTRIES`] entries; empty for
    /// an unknown session.
    async fn read(&self, session_id: &str) -> Result<Vec<AuditEntry>, AuditError>;

    /// Which log this is: `redis`, `file`, `memory` or `disabled`.
    fn kind(&self) -> &'static str;
}

/// The audit log the settings ask for: nothing is recorded when `settings.enabled` is false;
/// else Redis when `redis_url` is given (keys under `redis_prefix`), else files under
/// `settings.data_dir` when set (pruned of expired files here), else in process, bounded.
pub async fn open(
    settings: &AuditSettings,
    redis_url: Option<&str>,
    redis_prefix: &str,
) -> Result<Arc<dyn AuditLog>, AuditError> {
    if !settings.enabled {
        return Ok(Arc::new(DisabledAuditLog));
    }
    if let Some(url) = redis_url {
        let log = RedisAuditLog::connect(url, redis_prefix, settings.retention).await?;
        return Ok(Arc::new(log));
    }
    if let Some(dir) = &settings.data_dir {
        let log = FileAuditLog::open(dir, settings.retention)?;
        let pruned = log.prune()?;
        if pruned > 0 {
            tracing::info!(pruned, "audit files past their retention removed");
        }
        return Ok(Arc::new(log));
    }
    Ok(Arc::new(MemoryAuditLog::new()))
}

/// The length and the SHA-256 (hex) of `bytes`: how an output is recorded.
pub fn digest(bytes: &[u8]) -> (u64, String) {
    (bytes.len() as u64, hex::encode(Sha256::digest(bytes)))
}

/// `args` as stored: unchanged when its compact JSON is at most [`MAX_ARGS_BYTES`] bytes,
/// else `{"truncated": true, "sha256": <hex of the full JSON>, "bytes": <its length>,
/// "prefix": <its first ARGS_PREFIX_CHARS characters>}`.
pub fn bound_args(args: serde_json::Value) -> serde_json::Value {
    let json = args.to_string();
    if json.len() <= MAX_ARGS_BYTES {
        return args;
    }
    let (bytes, sha256) = digest(json.as_bytes());
    let prefix: String = json.chars().take(ARGS_PREFIX_CHARS).collect();
    serde_json::json!({
        "truncated": true,
        "sha256": sha256,
        "bytes": bytes,
        "prefix": prefix,
    })
}

/// Checks that `session_id` may name a file or a key: 1 to 128 ASCII letters, digits, `-`
/// or `_` (no `/`, no `.`: no path traversal).
pub fn check_session_id(session_id: &str) -> Result<(), AuditError> {
    let ok = !session_id.is_empty()
        && session_id.len() <= 128
        && session_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AuditError::InvalidSession(session_id.to_string()))
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The retention as Redis's `PEXPIRE` milliseconds (at least 1).
fn retention_ms(retention: Duration) -> i64 {
    i64::try_from(retention.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_args_are_kept_as_they_are() {
        let args = serde_json::json!({"command": "ls -la", "timeoutMs": 1000});
        assert_eq!(bound_args(args.clone()), args);
    }

    #[test]
    fn large_args_become_a_digest_and_a_prefix() {
        let content = "é".repeat(3000); // 6000 bytes, 3000 characters
        let args = serde_json::json!({"path": "/workspace/a", "content": content});
        let json = args.to_string();
        let bounded = bound_args(args);
        assert_eq!(bounded["truncated"], true);
        assert_eq!(bounded["bytes"], json.len() as u64);
        assert_eq!(bounded["sha256"], digest(json.as_bytes()).1);
        let prefix = bounded["prefix"].as_str().unwrap();
        assert_eq!(prefix.chars().count(), ARGS_PREFIX_CHARS);
        assert!(json.starts_with(prefix));
        assert!(bounded.to_string().len() <= MAX_ARGS_BYTES);
    }

    #[test]
    fn digest_is_length_and_sha256() {
        let (n, hex) = digest(b"abc");
        assert_eq!(n, 3);
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn session_ids_cannot_traverse_paths() {
        assert!(check_session_id("3f2b8c1e-0d5a-4c7e-9b1a-2e6f7a8b9c0d").is_ok());
        for bad in ["", "../etc/passwd", "a/b", "a.b", "a b", &"x".repeat(129)] {
            assert!(check_session_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn enums_serialize_as_documented() {
        let json = serde_json::to_string(&[Origin::Socket, Origin::Chat, Origin::Mcp]).unwrap();
        assert_eq!(json, r#"["socket","chat","mcp"]"#);
        let json = serde_json::to_string(&[
            Decision::Approved,
            Decision::Rejected,
            Decision::Automatic,
            Decision::TimedOut,
        ])
        .unwrap();
        assert_eq!(json, r#"["approved","rejected","automatic","timed_out"]"#);
    }
}
