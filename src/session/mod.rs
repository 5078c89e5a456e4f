//! Sessions: each one owns one sandbox from the pool. State lives in a [`SessionStore`]
//! (Redis, shared by replicas and surviving restarts; or in process), and the
//! [`SessionManager`] ties it to the pool: open, resume, touch, detach, end, the expiry
//! janitor, the instance heartbeat and the take-over of sessions whose owner died.
//!
//! This module knows nothing of sockets: it reports ends through [`SessionHooks`].

mod calls;
mod error;
mod handover;
mod manager;
mod memory_store;
mod model;
mod open;
mod redis_scripts;
mod redis_store;
mod replicas;
mod store;
mod upkeep;
mod workspace;

/// The parts of the pool that are part of the session interface: the layers above speak of
/// these through this module, never to the pool itself.
pub use crate::pool::{
    CommandOutput, CommandSpec, Failure, FileRequest, LeaseRef, OutputChunk, OutputStream, Place,
    PoolError, PoolStatus, Startup,
};
pub use calls::{CallOrigin, PendingCall, PendingView};
pub use error::{EndReason, SessionError};
pub use manager::{JanitorReport, Opened, Recovery, SessionHooks, SessionManager, SessionSettings};
pub use memory_store::MemoryStore;
pub use model::{
    ApprovalPolicy, Session, SessionState, hash_token, new_resume_token, new_workspace_token,
    now_ms, token_matches, workspace_token_session,
};
pub use redis_store::RedisStore;
pub use replicas::{Replica, ReplicaStatus, read_replicas};
pub use store::{
    Bus, BusMessage, Cutoffs, InstanceClaim, Liveness, Ownership, Quotas, SandboxOwner,
    SessionRecords, SessionStore, StoreError, Sweep,
};
pub use workspace::{Changes, Restored, Taken};

/// A claim older than this belongs to a claimer that died before it finished; the session
/// may be claimed again (ms).
pub const STALE_CLAIM_MS: i64 = 60_000;
