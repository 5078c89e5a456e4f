//! The Redis audit log: one stream per session, `{prefix}audit:{session_id}`.
//!
//! Each stream entry has three fields: `seq` (the entry's sequence number), `hash` (its
//! chain hash) and `e` (the entry's JSON, as in `docs/API.md`). Stream ids are Redis's own
//! (`*`); the chain's order is `seq`, and `read` returns the stream in stream order, so
//! [`verify`](super::verify) sees any reordering.
//!
//! An append is one `EVALSHA` of [`APPEND`]: the script reads the stream's last entry and
//! adds the new one only if that last entry is the tail the entry was sealed against
//! (compare-and-set), then sets the key's life to the retention. When another writer (another
//! replica during a hand-over) extended the chain meanwhile, the script answers with the
//! actual tail, and the append seals the record again against it and retries, at most
//! [`MAX_APPEND_ATTEMPTS`] times. Each log caches the tail of the sessions it appended to
//! (at most [`TAIL_CACHE_MAX`], the cache cleared when full), so the common case is one round
//! trip. The stream's key expires after the retention since the session's last append: a
//! session's whole trail goes at once, never its start alone.
//!
//! Turns: a bare compare-and-set starves a writer that keeps losing, since the winner's next
//! append reaches Redis before the loser's retry (its answer came first). So a writer that
//! loses leaves the append's id in `{prefix}audit-wait:{session_id}` (for [`WAIT_TTL_MS`]), and the
//! script makes every other writer yield while that key names someone else; the loser's next
//! attempt, against the tail it was just told, goes through and removes the key. A yielding
//! writer waits a little (doubling from [`YIELD_MIN`]) and tries again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Script};

use super::chain::{Tail, seal};
use super::{
    AuditEntry, AuditError, AuditLog, AuditRecord, MAX_READ_ENTRIES, bound_args, check_session_id,
    now_ms, retention_ms,
};

/// Appends an entry if the stream's tail is the expected one and no other writer's turn is
/// pending.
///
/// KEYS[1] the stream, KEYS[2] the turn key; ARGV: expected tail seq (0: empty), expected
/// tail hash, the entry's seq, hash and JSON, the retention in ms, the genesis hash, this
/// writer's id, the turn key's life in ms. Returns `{1, "", ""}` when appended, `{0, seq,
/// hash}` (the actual tail; `"0"` and the genesis hash for an empty stream) when the tail
/// moved (the turn is then this writer's), `{2, seq, hash}` when another writer's turn is
/// pending.
pub const APPEND: &str = r#"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seq, hash = '0', ARGV[7]
if #last > 0 then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'seq' then seq = fields[i + 1] end
    if fields[i] == 'hash' then hash = fields[i + 1] end
  end
end
local turn = redis.call('GET', KEYS[2])
if turn and turn ~= ARGV[8] then
  return {2, seq, hash}
end
if seq ~= ARGV[1] or hash ~= ARGV[2] then
  redis.call('SET', KEYS[2], ARGV[8], 'PX', ARGV[9])
  return {0, seq, hash}
end
redis.call('XADD', KEYS[1], '*', 'seq', ARGV[3], 'hash', ARGV[4], 'e', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if turn then
  redis.call('DEL', KEYS[2])
end
return {1, '', ''}
"#;

/// Life of a turn key, in milliseconds: how long other writers yield to a writer that lost a
/// race (it needs one round trip; a writer that died meanwhile holds the others this long).
pub const WAIT_TTL_MS: u64 = 200;

/// The first wait of a writer that yields; it doubles on each further yield, up to
/// [`YIELD_MAX`].
pub const YIELD_MIN: Duration = Duration::from_micros(500);

/// The longest wait of a writer that yields.
pub const YIELD_MAX: Duration = Duration::from_millis(50);

/// Attempts of one append (lost races and yields) before it gives up with
/// [`AuditError::Contended`]. A lost race is retried at once, with the tail the script
/// answered (the freshest there is, and the turn is this writer's).
pub const MAX_APPEND_ATTEMPTS: usize = 16;

/// Sessions whose tails one log caches at most; the cache is cleared when full (a miss costs
/// one more round trip, never correctness: the script checks every tail).
pub const TAIL_CACHE_MAX: usize = 4096;

/// Audit chains in Redis streams, over one multiplexed connection that reconnects by itself.
pub struct RedisAuditLog {
    conn: ConnectionManager,
    prefix: String,
    retention_ms: i64,
    append: Script,
    /// This log's random id: an append's id in turn keys is this id and a number.
    writer: String,
    /// Appends started by this log, numbering them: each append is a writer of its own, so
    /// that concurrent appends of one log take turns too.
    appends: AtomicU64,
    /// The last tail this log saw per session: a guess the script checks, never trusted.
    tails: Mutex<HashMap<String, Tail>>,
}

fn unavailable(e: redis::RedisError) -> AuditError {
    AuditError::Unavailable(e.to_string())
}

impl RedisAuditLog {
    /// Connects to `url` (`redis://host:port[/db]`); keys are `{prefix}audit:{session_id}`
    /// and live `retention` after their last append. Fails when Redis does not answer within
    /// a few seconds; lost connections are re-established in the background afterwards.
    pub async fn connect(url: &str, prefix: &str, retention: Duration) -> Result<Self, AuditError> {
        let (_, conn) = crate::redis_conn::connect(url)
            .await
            .map_err(AuditError::Unavailable)?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            retention_ms: retention_ms(retention),
            append: Script::new(APPEND),
            writer: uuid::Uuid::new_v4().to_string(),
            appends: AtomicU64::new(0),
            tails: Mutex::new(HashMap::new()),
        })
    }

    /// The stream key of a session.
    pub fn key(&self, session_id: &str) -> String {
        format!("{}audit:{session_id}", self.prefix)
    }

    fn turn_key(&self, session_id: &str) -> String {
        format!("{}audit-wait:{session_id}", self.prefix)
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tail>> {
        // The map holds guesses only; a poisoned one is as good as any.
        self.tails.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached_tail(&self, session_id: &str) -> Tail {
        self.tails()
            .get(session_id)
            .cloned()
            .unwrap_or_else(Tail::genesis)
    }

    fn remember_tail(&self, session_id: &str, tail: Tail) {
        let mut tails = self.tails();
        if tails.len() >= TAIL_CACHE_MAX && !tails.contains_key(session_id) {
            tails.clear();
        }
        tails.insert(session_id.to_string(), tail);
    }
}

#[async_trait]
impl AuditLog for RedisAuditLog {
    #[tracing::instrument(skip_all, fields(session_id = %record.session_id))]
    async fn append(&self, mut record: AuditRecord) -> Result<AuditEntry, AuditError> {
        check_session_id(&record.session_id)?;
        record.args = bound_args(record.args);
        let session_id = record.session_id.clone();
        let key = self.key(&session_id);
        let ts_ms = now_ms();
        let turn_key = self.turn_key(&session_id);
        let writer = format!(
            "{}:{}",
            self.writer,
            self.appends.fetch_add(1, Ordering::Relaxed)
        );
        let mut tail = self.cached_tail(&session_id);
        let mut pause = YIELD_MIN;
        for _ in 0..MAX_APPEND_ATTEMPTS {
            let entry = seal(record.clone(), &tail, ts_ms);
            let json = serde_json::to_string(&entry).map_err(|e| AuditError::Corrupt {
                session_id: session_id.clone(),
                detail: format!("entry does not serialize: {e}"),
            })?;
            let (outcome, seq, hash): (i64, String, String) = self
                .append
                .key(&key)
                .key(&turn_key)
                .arg(tail.seq)
                .arg(&tail.hash)
                .arg(entry.seq)
                .arg(&entry.hash)
                .arg(&json)
                .arg(self.retention_ms)
                .arg(super::GENESIS)
                .arg(&writer)
                .arg(WAIT_TTL_MS)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            if outcome == 1 {
                self.remember_tail(&session_id, Tail::of(&entry));
                return Ok(entry);
            }
            let seq = seq.parse::<u64>().map_err(|_| AuditError::Corrupt {
                session_id: session_id.clone(),
                detail: format!("last stream entry has seq {seq:?}"),
            })?;
            if seq < tail.seq {
                // Only a deletion makes a chain shorter, and cutting entries from the end is
                // the one change a hash chain cannot show: say so.
                tracing::warn!(
                    cached_seq = tail.seq,
                    stored_seq = seq,
                    "audit chain's tail moved backwards: entries were deleted or the key expired"
                );
            }
            tail = Tail { seq, hash };
            if outcome == 2 {
                // Another writer lost a race and goes first.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(YIELD_MAX);
            }
        }
        Err(AuditError::Contended {
            session_id,
            attempts: MAX_APPEND_ATTEMPTS,
        })
    }

    async fn read(&self, session_id: &str) -> Result<Vec<AuditEntry>, AuditError> {
        check_session_id(session_id)?;
        let reply: StreamRangeReply = self
            .conn
            .clone()
            .xrange_count(self.key(session_id), "-", "+", MAX_READ_ENTRIES)
            .await
            .map_err(unavailable)?;
        reply
            .ids
            .iter()
            .map(|item| {
                let corrupt = |detail: String| AuditError::Corrupt {
                    session_id: session_id.to_string(),
                    detail: format!("stream entry {}: {detail}", item.id),
                };
                let json: String = item
                    .get("e")
                    .ok_or_else(|| corrupt("no field `e`".into()))?;
                serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))
            })
            .collect()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
