//! The `SessionStore` trait: what the session layer needs from its storage, with the same
//! semantics in Redis (`redis_store.rs`) and in process (`memory_store.rs`).

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::model::{ApprovalPolicy, Session};

/// A message between replicas about a session changing hands (see `handover.rs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusMessage {
    /// `from` holds a resume for `session_id`, which the receiver owns: give it up, and
    /// write `fence` (the asker's new lease on the sandbox) with the move. `request` is the
    /// asker's id for this ask, never reused: the answer names it.
    Release {
        request: String,
        session_id: String,
        from: String,
        fence: u64,
    },
    /// The answer to the ask `request`: `released` says whether the session is now the
    /// asker's (the record moved to it under its fence, the sandbox is free to attach).
    Released {
        request: String,
        session_id: String,
        released: bool,
    },
}

/// Who serves a sandbox, as the store says: written with the session record at every open,
/// transfer and takeover, in the same atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOwner {
    pub owner: String,
    pub session_id: String,
    pub fence: u64,
}

/// What claiming an instance id at start found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceClaim {
    /// The id is this incarnation's now.
    Claimed,
    /// Another incarnation's heartbeat holds it, for `ttl_left` more unless renewed.
    Held {
        incarnation: String,
        ttl_left: Duration,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached (Redis down, connection lost); worth retrying later.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// A record could not be read back (a field missing or malformed).
    #[error("session store holds a malformed record for {id}: {what}")]
    Corrupt { id: String, what: String },
}

/// Which sessions a janitor may end now.
#[derive(Debug, Clone, Copy)]
pub struct Cutoffs {
    /// Sessions last active at or before this (ms since the epoch) have expired.
    pub idle_before_ms: i64,
    /// Detached sessions whose socket dropped at or before this have passed their grace.
    pub detached_before_ms: i64,
    /// `ending` sessions claimed at or before this were claimed by someone who died mid-way;
    /// they may be claimed again.
    pub claimed_before_ms: i64,
}

/// The three sweeps of a janitor pass, each over its own index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// By last-active time.
    Idle,
    /// By the time the socket dropped.
    Detached,
    /// By claim time, for claims whose claimer died.
    StaleClaim,
}

/// Session storage. Every write that touches several keys is atomic: no crash leaves a
/// session without its index entries or the reverse.
/// Session records and their indexes: open, activity, detach and resume, the janitor's
/// queries and claims, ends.
#[async_trait]
pub trait SessionRecords: Send + Sync {
    /// Writes a new session with its index entries, its subject's included, and the
    /// sandbox's owner (`sandbox_owner`), in one atomic write.
    async fn put(&self, session: &Session) -> Result<(), StoreError>;

    /// Writes a session again after the store lost it (catch-up): like `put`, but only when
    /// the session is absent and its sandbox is not recorded for another session or a newer
    /// lease. `false` when it was not written.
    async fn restore(&self, session: &Session) -> Result<bool, StoreError>;

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError>;

    /// Moves last-active forward (never back) of a session that is not ending. `false` when
    /// the session is gone or ending.
    async fn touch(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Marks an active session detached at `now_ms` (its socket dropped), if `owner` still owns
    /// it: a replica that lost the session meanwhile (frozen, then taken over) touches nothing.
    async fn detach(&self, id: &str, owner: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Marks a detached session active again (resumed) and touches it.
    async fn reattach(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Sets the approval policy of a session `owner` owns. `false` when the session is gone
    /// or another instance owns it.
    async fn set_approval(
        &self,
        id: &str,
        owner: &str,
        policy: ApprovalPolicy,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` ids from one sweep's index whose score is at or before its cutoff,
    /// skipping the first `offset` (candidates a pass could not claim stay in the index).
    async fn candidates(
        &self,
        sweep: Sweep,
        cutoffs: &Cutoffs,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Claims, atomically and each at most once, those of `ids` that are still past a
    /// cutoff (last-active is checked again: a session touched since the query survives) and
    /// whose owner is `claimer` or no longer heartbeating. Claimed sessions are `ending`.
    async fn claim_expired(
        &self,
        ids: &[String],
        cutoffs: &Cutoffs,
        claimer: &str,
        now_ms: i64,
    ) -> Result<Vec<Session>, StoreError>;

    /// Claims one session to end it now, whatever its times (an explicit end, or the owner
    /// ending it). `None` when it is gone or someone else already claimed it.
    async fn claim(
        &self,
        id: &str,
        claimer: &str,
        now_ms: i64,
    ) -> Result<Option<Session>, StoreError>;

    /// Deletes a session and its index entries.
    async fn delete(&self, id: &str) -> Result<(), StoreError>;

    /// Ids of the sessions `owner` holds.
    async fn owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError>;

    /// Counts: (sessions, by state) for status pages; may scan, so not for hot paths.
    async fn count(&self) -> Result<usize, StoreError>;
}

/// Who serves which sandbox under which lease, the epochs of fencing tokens, and the moves
/// of sessions between instances (see ARCHITECTURE.md, "Ownership and fencing").
#[async_trait]
pub trait Ownership: Send + Sync {
    /// Who serves `container_id`, if the store knows.
    async fn sandbox_owner(&self, container_id: &str) -> Result<Option<SandboxOwner>, StoreError>;

    /// A new epoch for fencing tokens: larger than every epoch this store gave before, larger
    /// than `above`, and never below the clock in seconds. A taker names the epoch of the
    /// lease it takes over as `above`: the counter alone cannot promise a larger one, since a
    /// store that lost its data starts again at the clock, and epochs are taken faster than
    /// one a second (every resume on another replica takes one), so tokens in use run ahead
    /// of the clock.
    async fn next_epoch(&self, above: u64) -> Result<u64, StoreError>;

    /// Moves a session from owner `from` to `to` under lease `fence` (the sandbox's owner
    /// too), if `from` still owns it and it is not ending.
    async fn transfer(
        &self,
        id: &str,
        from: &str,
        to: &str,
        fence: u64,
    ) -> Result<bool, StoreError>;

    /// Records that `owner` handed `container_id` (labeled with `owner`) to another instance
    /// with its session: a restart of `owner` must leave it alone. Kept until `owner` forgets
    /// it at a start where the container is gone.
    async fn mark_handed(&self, owner: &str, container_id: &str) -> Result<(), StoreError>;

    /// The containers `owner` handed over (see `mark_handed`).
    async fn handed(&self, owner: &str) -> Result<Vec<String>, StoreError>;

    /// Forgets handed-over containers of `owner` that no longer exist.
    async fn forget_handed(&self, owner: &str, container_ids: &[String]) -> Result<(), StoreError>;
}

/// Instances: the heartbeat that proves one alive, held by one incarnation at a time.
#[async_trait]
pub trait Liveness: Send + Sync {
    /// Takes `instance`'s heartbeat for `incarnation` (a random id of this process) if no
    /// other incarnation holds it: two live processes never share an instance id.
    async fn claim_instance(
        &self,
        instance: &str,
        incarnation: &str,
        ttl: Duration,
    ) -> Result<InstanceClaim, StoreError>;

    /// Says that `instance` (as `incarnation`) is alive for `ttl`. `false` when another
    /// incarnation holds the heartbeat: this process must stop serving.
    async fn heartbeat(
        &self,
        instance: &str,
        incarnation: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Every instance that ever heartbeated in this store (alive or not): the replicas of one
    /// deployment, as opposed to other deployments sharing the Docker engine.
    async fn known_instances(&self) -> Result<Vec<String>, StoreError>;

    /// Whether `instance` has heartbeated within its ttl.
    async fn is_alive(&self, instance: &str) -> Result<bool, StoreError>;

    /// Withdraws `instance`'s heartbeat if `incarnation` holds it (it is shutting down).
    async fn remove_heartbeat(&self, instance: &str, incarnation: &str) -> Result<(), StoreError>;

    /// Records where other replicas reach `instance` (its internal URL), for `ttl`: renewed
    /// with the heartbeat, gone when it lapses.
    async fn set_address(&self, instance: &str, url: &str, ttl: Duration)
    -> Result<(), StoreError>;

    /// Where other replicas reach `instance`, if it said so within its ttl.
    async fn address(&self, instance: &str) -> Result<Option<String>, StoreError>;

    /// Records `instance`'s status (a [`super::ReplicaStatus`] as JSON) for `ttl`: renewed
    /// with the heartbeat, for `sandpool status` and `GET /api/replicas`.
    async fn set_status(
        &self,
        instance: &str,
        status: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// `instance`'s status, if it wrote one within its ttl.
    async fn status_of(&self, instance: &str) -> Result<Option<String>, StoreError>;
}

/// Messages between instances about sessions changing hands (see `handover.rs`).
#[async_trait]
pub trait Bus: Send + Sync {
    /// Starts receiving the messages sent to `instance` (one listener per instance).
    async fn listen(&self, instance: &str) -> Result<mpsc::Receiver<BusMessage>, StoreError>;

    /// Whether this instance's bus subscription is up (always, in process).
    fn bus_up(&self) -> bool {
        true
    }

    /// Sends `message` to `instance`; `false` when nobody listens there (it is gone).
    async fn send(&self, instance: &str, message: &BusMessage) -> Result<bool, StoreError>;
}

/// Per-subject limits of live sessions.
#[async_trait]
pub trait Quotas: Send + Sync {
    /// Holds one of `subject`'s at most `limit` live-session slots for `session_id` (being
    /// opened); `false` when all are taken. Every session written with a subject (`put`)
    /// holds one of its slots until it is deleted; a reservation holds one until the session
    /// is written, `unreserve_subject` frees it, or `ttl` passes (an opener that crashed).
    async fn reserve_subject(
        &self,
        subject: &str,
        session_id: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Frees the slot `reserve_subject` held for a session that was not opened after all.
    async fn unreserve_subject(&self, subject: &str, session_id: &str) -> Result<(), StoreError>;
}

#[async_trait]
pub trait SessionStore: SessionRecords + Ownership + Liveness + Bus + Quotas + 'static {
    /// A short name for logs and `/api/pool`: `redis` or `memory`.
    fn kind(&self) -> &'static str;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
