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
//! | `P handed:<instance>` | set | containers labeled with the instance that it handed to another instance with their session |
//! | `P bus:<instance>` | pub/sub channel | hand-over messages to the instance (JSON `BusMessage`) |
//!
//! Every write that touches several keys is one Lua script, so Redis applies it whole or not
//! at all: a writer killed mid-way cannot leave a hash without its index entries. The scripts
//! name some keys they build from the prefix, so this store is for a single Redis node (or a
//! primary with replicas), not Redis Cluster. No `KEYS` command is ever sent; listing uses
//! `SSCAN` and the expiry query is `ZRANGEBYSCORE … LIMIT`.
//!
//! Why this file is over 400 lines: it is the one `SessionStore` implementation for Redis,
//! a method per trait method, and a trait's implementation cannot be split across files; the
//! scripts live in `redis_scripts.rs`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::mpsc;

use super::model::{Session, SessionState};
use super::redis_scripts::*;
use super::store::{
    BusMessage, Cutoffs, InstanceClaim, SandboxOwner, SessionStore, StoreError, Sweep,
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
}

/// Sessions in Redis, over one multiplexed connection that reconnects by itself.
pub struct RedisStore {
    /// For the bus's own subscribed connection.
    client: redis::Client,
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
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StoreError::Unavailable(format!("no answer from {url}")))?
        .map_err(unavailable)?;
        Ok(Self {
            client,
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

    async fn put(&self, s: &Session) -> Result<(), StoreError> {
        self.write(s, "put").await.map(|_| ())
    }

    async fn restore(&self, s: &Session) -> Result<bool, StoreError> {
        self.write(s, "restore").await
    }

    async fn sandbox_owner(&self, container_id: &str) -> Result<Option<SandboxOwner>, StoreError> {
        let f: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(format!("{}{container_id}", self.sandbox_prefix()))
            .await
            .map_err(unavailable)?;
        Ok(match (f.get("owner"), f.get("session"), f.get("fence")) {
            (Some(owner), Some(session), Some(fence)) => Some(SandboxOwner {
                owner: owner.clone(),
                session_id: session.clone(),
                fence: fence.parse().unwrap_or(0),
            }),
            _ => None,
        })
    }

    async fn next_epoch(&self, above: u64) -> Result<u64, StoreError> {
        let now_secs = (super::model::now_ms() / 1000) as u64;
        self.scripts
            .next_epoch
            .key(format!("{}epoch", self.prefix))
            .arg(now_secs.max(above))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let fields: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(self.session_key(id))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        session_from_fields(fields).map(Some)
    }

    async fn touch(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let keys = [self.session_key(id), self.idx("active")];
        self.transition(&self.scripts.touch, &keys, id, now_ms)
            .await
    }

    async fn detach(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let keys = [self.session_key(id), self.idx("detached")];
        self.transition(&self.scripts.detach, &keys, id, now_ms)
            .await
    }

    async fn reattach(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let keys = [
            self.session_key(id),
            self.idx("active"),
            self.idx("detached"),
        ];
        self.transition(&self.scripts.reattach, &keys, id, now_ms)
            .await
    }

    async fn candidates(
        &self,
        sweep: Sweep,
        cutoffs: &Cutoffs,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (index, cutoff) = match sweep {
            Sweep::Idle => (self.idx("active"), cutoffs.idle_before_ms),
            Sweep::Detached => (self.idx("detached"), cutoffs.detached_before_ms),
            Sweep::StaleClaim => (self.idx("ending"), cutoffs.claimed_before_ms),
        };
        self.conn
            .clone()
            .zrangebyscore_limit(index, "-inf", cutoff, offset as isize, limit as isize)
            .await
            .map_err(unavailable)
    }

    async fn claim_expired(
        &self,
        ids: &[String],
        cutoffs: &Cutoffs,
        claimer: &str,
        now_ms: i64,
    ) -> Result<Vec<Session>, StoreError> {
        self.claim_script(ids, cutoffs, claimer, now_ms, "expired")
            .await
    }

    async fn claim(
        &self,
        id: &str,
        claimer: &str,
        now_ms: i64,
    ) -> Result<Option<Session>, StoreError> {
        let cutoffs = Cutoffs {
            idle_before_ms: i64::MIN,
            detached_before_ms: i64::MIN,
            claimed_before_ms: now_ms - super::STALE_CLAIM_MS,
        };
        let mut claimed = self
            .claim_script(&[id.to_string()], &cutoffs, claimer, now_ms, "any")
            .await?;
        Ok(claimed.pop())
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .delete
            .key(self.session_key(id))
            .key(self.idx("active"))
            .key(self.idx("detached"))
            .key(self.idx("ending"))
            .arg(id)
            .arg(self.owner_prefix())
            .arg(self.subject_prefix())
            .arg(self.sandbox_prefix())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn reserve_subject(
        &self,
        subject: &str,
        session_id: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .reserve
            .key(format!("{}{subject}", self.subject_prefix()))
            .arg(session_id)
            .arg(limit)
            .arg(format!("{}session:", self.prefix))
            .arg(format!("{}reserve:", self.prefix))
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn unreserve_subject(&self, subject: &str, session_id: &str) -> Result<(), StoreError> {
        let _: () = redis::pipe()
            .atomic()
            .srem(format!("{}{subject}", self.subject_prefix()), session_id)
            .ignore()
            .del(format!("{}reserve:{session_id}", self.prefix))
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        let key = format!("{}{owner}", self.owner_prefix());
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut ids = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            ids.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn transfer(
        &self,
        id: &str,
        from: &str,
        to: &str,
        fence: u64,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .transfer
            .key(self.session_key(id))
            .arg(from)
            .arg(to)
            .arg(id)
            .arg(self.owner_prefix())
            .arg(fence_field(fence))
            .arg(self.sandbox_prefix())
            .arg(format!("{}handed:", self.prefix))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn claim_instance(
        &self,
        instance: &str,
        incarnation: &str,
        ttl: Duration,
    ) -> Result<InstanceClaim, StoreError> {
        if self.heartbeat(instance, incarnation, ttl).await? {
            return Ok(InstanceClaim::Claimed);
        }
        let key = self.heartbeat_key(instance);
        let (held, ttl_ms): (Option<String>, i64) = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(InstanceClaim::Held {
            incarnation: held.unwrap_or_default(),
            ttl_left: Duration::from_millis(ttl_ms.max(0) as u64),
        })
    }

    async fn heartbeat(
        &self,
        instance: &str,
        incarnation: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .heartbeat
            .key(self.heartbeat_key(instance))
            .key(format!("{}instances", self.prefix))
            .arg(incarnation)
            .arg(ttl.as_millis() as u64)
            .arg(instance)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn known_instances(&self) -> Result<Vec<String>, StoreError> {
        self.conn
            .clone()
            .smembers(format!("{}instances", self.prefix))
            .await
            .map_err(unavailable)
    }

    async fn is_alive(&self, instance: &str) -> Result<bool, StoreError> {
        self.conn
            .clone()
            .exists(self.heartbeat_key(instance))
            .await
            .map_err(unavailable)
    }

    async fn remove_heartbeat(&self, instance: &str, incarnation: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .remove_heartbeat
            .key(self.heartbeat_key(instance))
            .arg(incarnation)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn count(&self) -> Result<usize, StoreError> {
        self.conn
            .clone()
            .zcard(self.idx("active"))
            .await
            .map_err(unavailable)
    }

    async fn listen(&self, instance: &str) -> Result<mpsc::Receiver<BusMessage>, StoreError> {
        // Its own connection: a subscribed connection can do nothing else. It is not
        // re-established if it drops; senders then see nobody listening (as for a dead
        // instance) until this instance restarts, which errs on the side of a takeover only
        // after Docker confirms the instance is down (see the manager).
        let mut pubsub = self.client.get_async_pubsub().await.map_err(unavailable)?;
        pubsub
            .subscribe(self.bus_channel(instance))
            .await
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            loop {
                // When the listener goes (the instance stops), the subscription goes with it,
                // so that senders see nobody listening.
                let msg = tokio::select! {
                    _ = tx.closed() => return,
                    msg = futures_util::StreamExt::next(&mut messages) => msg,
                };
                let Some(msg) = msg else { return };
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                match serde_json::from_str::<BusMessage>(&payload) {
                    Ok(message) => {
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "malformed bus message ignored"),
                }
            }
        });
        Ok(rx)
    }

    async fn send(&self, instance: &str, message: &BusMessage) -> Result<bool, StoreError> {
        let payload = serde_json::to_string(message)
            .map_err(|e| StoreError::Unavailable(format!("encoding a bus message: {e}")))?;
        let receivers: i64 = self
            .conn
            .clone()
            .publish(self.bus_channel(instance), payload)
            .await
            .map_err(unavailable)?;
        Ok(receivers > 0)
    }

    async fn mark_handed(&self, owner: &str, container_id: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .conn
            .clone()
            .sadd(self.handed_key(owner), container_id)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn handed(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        self.conn
            .clone()
            .smembers(self.handed_key(owner))
            .await
            .map_err(unavailable)
    }

    async fn forget_handed(&self, owner: &str, container_ids: &[String]) -> Result<(), StoreError> {
        if container_ids.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .conn
            .clone()
            .srem(self.handed_key(owner), container_ids)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
