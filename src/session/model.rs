//! The session record and resume tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::pool::LeaseRef;
use subtle::ConstantTimeEq;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// A socket is connected (or was, and its instance has not noticed the drop yet).
    Active,
    /// The socket dropped; the session and its sandbox wait `reconnect grace` for a resume.
    Detached,
    /// Claimed by a janitor or an explicit end; its sandbox is being released.
    Ending,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Detached => "detached",
            SessionState::Ending => "ending",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(SessionState::Active),
            "detached" => Some(SessionState::Detached),
            "ending" => Some(SessionState::Ending),
            _ => None,
        }
    }
}

/// One session: a client and the sandbox it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// Instance id of the replica that holds the sandbox's lease.
    pub owner: String,
    pub container_id: String,
    /// The fencing token of the lease this session holds its sandbox under: every operation
    /// on the sandbox names it, and the pool refuses it once stale (see `pool::LeaseRef`).
    pub fence: u64,
    /// SHA-256 (hex) of the resume token; the token itself is never stored.
    pub token_hash: String,
    pub created_ms: i64,
    pub last_active_ms: i64,
    pub state: SessionState,
    /// When the socket dropped (state `detached`), else 0.
    pub detached_at_ms: i64,
    /// Who claimed it and when (state `ending`), else empty and 0.
    pub claimed_by: String,
    pub claimed_at_ms: i64,
    /// The `sub` of the token that opened it; empty when anonymous. A resume needs a token
    /// with the same subject.
    pub subject: String,
    /// SHA-256 (hex) of the session's workspace token (the MCP credential); the token itself
    /// is never stored. Empty: none (a record of an older version).
    pub mcp_hash: String,
    /// Which tool calls wait for the user's approval.
    pub approval: ApprovalPolicy,
}

/// Which tool calls of an agent (MCP) wait for the user's approval in the browser. Chat
/// proposals always wait; the browser's own `exec` is the user's and never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApprovalPolicy {
    /// Every call waits.
    All,
    /// Read-only tools run at once; the rest wait (the default).
    #[default]
    Writes,
    /// Nothing waits.
    None,
}

impl ApprovalPolicy {
    pub const ALL: [ApprovalPolicy; 3] = [Self::All, Self::Writes, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Writes => "writes",
            Self::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether a call of a tool (read-only or not) waits for approval under this policy.
    pub fn needs_approval(self, read_only: bool) -> bool {
        match self {
            Self::All => true,
            Self::Writes => !read_only,
            Self::None => false,
        }
    }
}

impl Session {
    /// A new active session holding its sandbox under `lease`.
    pub fn new(owner: &str, lease: &LeaseRef, token_hash: String, now_ms: i64) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            owner: owner.to_string(),
            container_id: lease.container_id.clone(),
            fence: lease.fence,
            token_hash,
            created_ms: now_ms,
            last_active_ms: now_ms,
            state: SessionState::Active,
            detached_at_ms: 0,
            claimed_by: String::new(),
            claimed_at_ms: 0,
            subject: String::new(),
            mcp_hash: String::new(),
            approval: ApprovalPolicy::default(),
        }
    }
}

impl Session {
    /// The lease this session holds its sandbox under.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef {
            container_id: self.container_id.clone(),
            fence: self.fence,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh resume token: 256 random bits, hex. Returns the token and its hash.
pub fn new_resume_token() -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let token = hex::encode(bytes);
    let hash = hash_token(&token);
    Ok((token, hash))
}

/// A fresh workspace token for session `session_id`: `spw_<session id>_<256 random bits,
/// hex>`, and its hash. The session id in it lets the token be checked against one record.
pub fn new_workspace_token(session_id: &str) -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let token = format!(
        "{WORKSPACE_TOKEN_PREFIX}{session_id}_{}",
        hex::encode(bytes)
    );
    let hash = hash_token(&token);
    Ok((token, hash))
}

const WORKSPACE_TOKEN_PREFIX: &str = "spw_";

/// The session id a workspace token names (not yet checked against its hash).
pub fn workspace_token_session(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(WORKSPACE_TOKEN_PREFIX)?;
    let (id, secret) = rest.rsplit_once('_')?;
    (secret.len() == 64 && !id.is_empty() && id.len() <= 64).then_some(id)
}

/// SHA-256 of a token, hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` hashes to `stored_hash`, compared in constant time.
pub fn token_matches(token: &str, stored_hash: &str) -> bool {
    let candidate = hash_token(token);
    candidate.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_verify_by_hash() {
        let (t1, h1) = new_resume_token().unwrap();
        let (t2, _) = new_resume_token().unwrap();
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 64, "256 bits in hex");
        assert!(token_matches(&t1, &h1));
        assert!(!token_matches(&t2, &h1));
        assert!(!token_matches("", &h1));
        assert_ne!(t1, h1, "the hash is not the token");
    }

    #[test]
    fn workspace_tokens_name_their_session() {
        let (t, h) = new_workspace_token("abc-1").unwrap();
        assert_eq!(workspace_token_session(&t), Some("abc-1"));
        assert!(token_matches(&t, &h));
        assert_eq!(workspace_token_session("spw_abc_short"), None);
        assert_eq!(workspace_token_session("nope"), None);
        let forged = format!("spw_other_{}", &t[t.len() - 64..]);
        assert_eq!(workspace_token_session(&forged), Some("other"));
        assert!(!token_matches(&forged, &h));
    }

    #[test]
    fn policies_parse_and_decide() {
        for p in ApprovalPolicy::ALL {
            assert_eq!(ApprovalPolicy::parse(p.as_str()), Some(p));
        }
        assert_eq!(ApprovalPolicy::parse("sometimes"), None);
        assert!(ApprovalPolicy::All.needs_approval(true));
        assert!(!ApprovalPolicy::Writes.needs_approval(true));
        assert!(ApprovalPolicy::Writes.needs_approval(false));
        assert!(!ApprovalPolicy::None.needs_approval(false));
    }
}
