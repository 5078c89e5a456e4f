//! Why a session ended, and why a session operation failed.

use super::store::StoreError;
use crate::pool::PoolError;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Idle longer than the idle TTL.
    Idle,
    /// Its socket dropped and it was not resumed within the grace.
    Disconnected,
    /// The client ended it.
    Ended,
    /// The service is shutting down.
    Shutdown,
    /// Its sandbox died.
    SandboxLost,
    /// A claimer died half-way through ending it; finished by another.
    Abandoned,
    /// Resumed on another replica: this one gave it up (it goes on there).
    Moved,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::Disconnected => "disconnected",
            EndReason::Ended => "ended",
            EndReason::Shutdown => "shutdown",
            EndReason::SandboxLost => "sandbox_lost",
            EndReason::Abandoned => "abandoned",
            EndReason::Moved => "moved",
        }
    }
}

/// Why a session operation failed. The API maps each to a stable error code.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no sandbox for a new session: {0}")]
    Pool(#[from] PoolError),
    #[error("session store: {0}")]
    Store(#[from] StoreError),
    /// Unknown, expired or ended.
    #[error("session {0} has expired or does not exist")]
    Expired(String),
    /// The resume token does not match.
    #[error("resume token does not match session {0}")]
    BadToken(String),
    /// Another live instance holds the session.
    #[error("session {id} is held by instance {owner}")]
    Elsewhere { id: String, owner: String },
    #[error("no randomness for a resume token: {0}")]
    Random(String),
    /// The session belongs to another token subject.
    #[error("session {0} belongs to another subject")]
    Unauthorized(String),
    /// The token's subject holds its maximum of live sessions.
    #[error("subject {subject} already holds its maximum of {limit} live sessions")]
    TooManySessions { subject: String, limit: usize },
    /// This instance could not renew its heartbeat in time (or another process took its
    /// instance id): it has stopped serving its sessions before another replica may take
    /// them over. The client should reconnect (any replica can resume it).
    #[error("this replica has stopped serving sessions: {0}")]
    SelfFenced(&'static str),
    /// This instance does not serve the session (any more): resume it.
    #[error("session {0} is not served by this replica")]
    NotHere(String),
    /// The session already runs its maximum of commands at once.
    #[error("session {id} already runs its maximum of {limit} commands at once")]
    Busy { id: String, limit: usize },
    /// Another live process uses this instance id.
    #[error(
        "instance id {instance} is in use by another live process (its heartbeat was renewed while this one waited); give every replica its own SANDPOOL_INSTANCE_ID"
    )]
    InstanceInUse { instance: String },
}
