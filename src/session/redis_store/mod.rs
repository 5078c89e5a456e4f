//! The Redis session store.
//!
//! Keys (all under the configured prefix `P`, default `sandpool:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P session:<id>` | hash | `id`, `owner`, `container`, `fence` (the lease's fencing token, 20 digits), `token_hash`, `created_ms`, `last_active_ms`, `state`, `detached_at_ms`, `claimed_by`, `claimed_at_ms`, `subject` (absent in records of older versions: anonymous) |
//! | `P subject:<sub>` | set | the live sessions (and reservations) of a token subject: `PUT` adds a session with a subject, `DELETE` removes it |
//! | `P reserve:<id>` | string with a TTL | a subject's slot held for a session being opened (TTL: the acquire timeout + 60 s) |
//! | `P idx:active` | sorted set | every session, scored by last-active time (ms) |
//! | `P idx:detached` | sorted set | detached sessions, scored by when the socket dropped |
//! | `P idx:ending` | sorted set | ending sessions, scored by claim time |
//! | `P owner:<instance>` | set | ids of the sessions an instance holds |
//! | `P heartbeat:<instance>` | string with a TTL | the incarnation (a random id of the process) that holds the instance id; present while it is alive |
//! | `P sandbox:<container>` | hash | `owner`, `session`, `fence`: who serves the sandbox under which lease; written with the session record at every open, transfer and takeover, deleted with the session |
//! | `P epoch` | string | the last epoch of fencing tokens handed out (never below the clock in seconds) |
//! | `P instances` | set | every instance that ever heartbeated here |
//! | `P addr:<instance>` | string with a TTL | the instance's internal URL (`SANDPOOL_INTERNAL_URL`), renewed with its heartbeat |
//! | `P status:<instance>` | string with a TTL | the instance's `ReplicaStatus` (JSON: engine, pool, breaker, sessions), renewed with its heartbeat |
//! | `P handed:<instance>` | set | containers labeled with the instance that it handed to another instance with their session |
//! | `P bus:<instance>` | pub/sub channel | hand-over messages to the instance (JSON `BusMessage`) |
//!
//! Every write that touches several keys is one Lua script, so Redis applies it whole or not
//! at all: a writer killed mid-way cannot leave a hash without its index entries. The scripts
//! name some keys they build from the prefix, so this store is for a single Redis node (or a
//! primary with replicas), not Redis Cluster. No `KEYS` command is ever sent; listing uses
//! `SSCAN` and the expiry query is `ZRANGEBYSCORE … LIMIT`.
//!
//! The store's concerns are traits of their own (`store.rs`), each implemented in its own
//! file here: `records.rs`, `ownership.rs`, `liveness.rs`, `bus.rs`, `quotas.rs`; the Lua
//! scripts live in `redis_scripts.rs`.

mod bus;
mod liveness;
mod ownership;
mod quotas;
mod records;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::sync::mpsc;

use crate::session::model::{ApprovalPolicy, Session, SessionState};
use crate::session::redis_scripts::*;
use crate::session::store::{
    Bus, BusMessage, Cutoffs, InstanceClaim, Liveness, Ownership, Quotas, SandboxOwner,
    SessionRecords, SessionStore, StoreError, Sweep,
};

struct Scripts {
    put: Script,
    touch: Script,
    detach: Script,
    reattach: Script,
    claim: Script,
    delete: Script,
    transfer: Script,
    reserve: Script,
    next_epoch: Script,
    heartbeat: Script,
    remove_heartbeat: Script,
    set_approval: Script,
}

/// The bus's first retry after its connection dropped, and the longest wait between tries.
const BUS_RETRY_MIN: Duration = Duration::from_millis(100);
const BUS_RETRY_MAX: Duration = Duration::from_secs(2);

/// A subscribed connection to `channel`.
async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSub, StoreError> {
    let mut pubsub = client.get_async_pubsub().await.map_err(unavailable)?;
    pubsub.subscribe(channel).await.map_err(unavailable)?;
    Ok(pubsub)
}

/// Sessions in Redis, over one multiplexed connection that reconnects by itself.
pub struct RedisStore {
    /// For the bus's own subscribed connection.
    client: redis::Client,
    /// Whether the bus's subscribed connection is up (false before `listen`).
    bus_up: Arc<AtomicBool>,
    conn: ConnectionManager,
    prefix: String,
    scripts: Scripts,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`). Fails when Redis does not answer within
    /// a few seconds; once connected, lost connections are re-established in the background.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let (client, conn) = crate::redis_conn::connect(url)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(Self {
            client,
            bus_up: Arc::new(AtomicBool::new(false)),
            conn,
            prefix: prefix.to_string(),
            scripts: Scripts {
                put: Script::new(PUT),
                touch: Script::new(TOUCH),
                detach: Script::new(DETACH),
                reattach: Script::new(REATTACH),
                claim: Script::new(CLAIM),
                delete: Script::new(DELETE),
                transfer: Script::new(TRANSFER),
                reserve: Script::new(RESERVE),
                next_epoch: Script::new(NEXT_EPOCH),
                heartbeat: Script::new(HEARTBEAT),
                remove_heartbeat: Script::new(REMOVE_HEARTBEAT),
                set_approval: Script::new(SET_APPROVAL),
            },
        })
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }
    fn idx(&self, name: &str) -> String {
        format!("{}idx:{name}", self.prefix)
    }
    fn owner_prefix(&self) -> String {
        format!("{}owner:", self.prefix)
    }
    fn subject_prefix(&self) -> String {
        format!("{}subject:", self.prefix)
    }
    fn heartbeat_key(&self, instance: &str) -> String {
        format!("{}heartbeat:{instance}", self.prefix)
    }
    fn sandbox_prefix(&self) -> String {
        format!("{}sandbox:", self.prefix)
    }
    fn handed_key(&self, instance: &str) -> String {
        format!("{}handed:{instance}", self.prefix)
    }
    fn bus_channel(&self, instance: &str) -> String {
        format!("{}bus:{instance}", self.prefix)
    }

    /// Runs `PUT` in `mode` (`put`, or `restore` for a catch-up write); `true` when written.
    async fn write(&self, s: &Session, mode: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .put
            .key(self.session_key(&s.id))
            .key(self.idx("active"))
            .key(self.idx("detached"))
            .key(self.idx("ending"))
            .arg(&s.id)
            .arg(&s.owner)
            .arg(&s.container_id)
            .arg(&s.token_hash)
            .arg(s.created_ms)
            .arg(s.last_active_ms)
            .arg(s.state.as_str())
            .arg(s.detached_at_ms)
            .arg(&s.claimed_by)
            .arg(s.claimed_at_ms)
            .arg(self.owner_prefix())
            .arg(&s.subject)
            .arg(self.subject_prefix())
            .arg(fence_field(s.fence))
            .arg(self.sandbox_prefix())
            .arg(mode)
            .arg(&s.mcp_hash)
            .arg(s.approval.as_str())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    /// Runs one of the state-change scripts (touch, detach, reattach), which all take their
    /// keys, then `now_ms` and the id, and answer 1 when the change applied.
    async fn transition(
        &self,
        script: &Script,
        keys: &[String],
        id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        let n: i64 = invocation
            .arg(now_ms)
            .arg(id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn claim_script(
        &self,
        ids: &[String],
        cutoffs: &Cutoffs,
        claimer: &str,
        now_ms: i64,
        mode: &str,
    ) -> Result<Vec<Session>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.idx("detached"))
            .key(self.idx("ending"))
            .arg(format!("{}session:", self.prefix))
            .arg(format!("{}heartbeat:", self.prefix))
            .arg(cutoffs.idle_before_ms)
            .arg(cutoffs.detached_before_ms)
            .arg(cutoffs.claimed_before_ms)
            .arg(claimer)
            .arg(now_ms)
            .arg(mode);
        for id in ids {
            invocation.arg(id);
        }
        let rows: Vec<HashMap<String, String>> = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        rows.into_iter().map(session_from_fields).collect()
    }
}

/// A fence as the store keeps it: 20 digits, so that Lua compares two as strings exactly
/// (a fence does not fit Lua's doubles).
fn fence_field(fence: u64) -> String {
    format!("{fence:020}")
}

fn session_from_fields(mut f: HashMap<String, String>) -> Result<Session, StoreError> {
    let id = f.remove("id").unwrap_or_default();
    let num = |f: &HashMap<String, String>, k: &str| -> Result<i64, StoreError> {
        f.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StoreError::Corrupt {
                id: id.clone(),
                what: format!("field {k}"),
            })
    };
    let state = f
        .get("state")
        .and_then(|s| SessionState::parse(s))
        .ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            what: "field state".into(),
        })?;
    Ok(Session {
        created_ms: num(&f, "created_ms")?,
        last_active_ms: num(&f, "last_active_ms")?,
        detached_at_ms: num(&f, "detached_at_ms")?,
        claimed_at_ms: num(&f, "claimed_at_ms")?,
        owner: f.remove("owner").unwrap_or_default(),
        container_id: f.remove("container").unwrap_or_default(),
        token_hash: f.remove("token_hash").unwrap_or_default(),
        claimed_by: f.remove("claimed_by").unwrap_or_default(),
        subject: f.remove("subject").unwrap_or_default(),
        mcp_hash: f.remove("mcp_hash").unwrap_or_default(),
        approval: f
            .get("approval")
            .and_then(|p| ApprovalPolicy::parse(p))
            .unwrap_or_default(),
        // Records of older versions carry none: 0 is older than every real lease.
        fence: f.get("fence").and_then(|v| v.parse().ok()).unwrap_or(0),
        state,
        id,
    })
}

#[async_trait]
impl SessionStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
