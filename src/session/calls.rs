//! Tool calls of a local session besides plain commands: calls waiting for the user's
//! approval (chat proposals and an agent's MCP calls, one mechanism), the session's approval
//! policy, its workspace token (the agent's credential), and file operations in its sandbox.
//!
//! The waiting calls are the session's (its `Local` entry), not a connection's: a call made
//! while the browser was away is replayed to it when it comes back, and they go with the
//! session when it ends (an agent waiting on one hears that no answer will come).

use serde_json::Value;
use tokio::sync::oneshot;

use super::SessionError;
use super::manager::SessionManager;
use super::model::{ApprovalPolicy, Session, SessionState, token_matches, workspace_token_session};
use crate::pool::FileRequest;

/// Who made a call that waits for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOrigin {
    /// Proposed by the chat agent from a message of the user.
    Chat,
    /// An agent's call through the MCP endpoint.
    Mcp,
}

impl CallOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Mcp => "mcp",
        }
    }
}

/// A tool call waiting for the user's approval.
#[derive(Debug)]
pub struct PendingCall {
    pub tool: String,
    /// The call's arguments, as they are shown to the user.
    pub args: Value,
    pub origin: CallOrigin,
    /// The calling client's name and version (an MCP client's), when it said.
    pub client: Option<String>,
    /// The caller waiting for the decision (an MCP call); `None` for a chat proposal, which
    /// the approving handler runs itself.
    waiter: Option<oneshot::Sender<bool>>,
}

/// What a waiting call looks like to a browser that (re)connects.
#[derive(Debug, Clone)]
pub struct PendingView {
    pub call_id: String,
    pub tool: String,
    pub args: Value,
    pub origin: CallOrigin,
    pub client: Option<String>,
}

impl PendingCall {
    /// A chat proposal: the approving handler runs it.
    pub fn proposal(tool: &str, args: Value) -> Self {
        Self {
            tool: tool.to_string(),
            args,
            origin: CallOrigin::Chat,
            client: None,
            waiter: None,
        }
    }

    /// An agent's call: its caller waits on the receiver for the user's decision (`true`:
    /// approved). A receiver that errs means the call was dropped unanswered (the session
    /// ended, or moved to another replica).
    pub fn agent(
        tool: &str,
        args: Value,
        client: Option<String>,
    ) -> (Self, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let call = Self {
            tool: tool.to_string(),
            args,
            origin: CallOrigin::Mcp,
            client,
            waiter: Some(tx),
        };
        (call, rx)
    }

    /// Hands the user's decision to a waiting caller. `Err(self)` for a chat proposal, which
    /// nobody waits for: the caller of `decide` runs (or drops) it.
    pub fn decide(self, approved: bool) -> Result<(), Self> {
        match self.waiter {
            Some(tx) => {
                let _ = tx.send(approved);
                Ok(())
            }
            None => Err(self),
        }
    }

    /// What the browser is shown of this call, waiting as `call_id`.
    pub fn view(&self, call_id: &str) -> PendingView {
        PendingView {
            call_id: call_id.to_string(),
            tool: self.tool.clone(),
            args: self.args.clone(),
            origin: self.origin,
            client: self.client.clone(),
        }
    }

    /// The command of a proposed `exec` call.
    pub fn command(&self) -> Option<&str> {
        self.args.get("command").and_then(Value::as_str)
    }
}

impl SessionManager {
    /// Records a tool call of local session `session_id` as waiting for approval; `false`
    /// when `max` already wait (or the session is not served here).
    pub fn propose(&self, session_id: &str, call_id: &str, call: PendingCall, max: usize) -> bool {
        let mut local = self.local();
        let Some(l) = local.get_mut(session_id) else {
            return false;
        };
        if l.proposals.len() >= max {
            return false;
        }
        l.proposals.insert(call_id.to_string(), call);
        true
    }

    /// Takes a waiting call of the session (each is taken once).
    pub fn take_proposal(&self, session_id: &str, call_id: &str) -> Option<PendingCall> {
        self.local()
            .get_mut(session_id)
            .and_then(|l| l.proposals.remove(call_id))
    }

    /// Puts back a call that was taken but not run (the session was busy).
    pub fn return_proposal(&self, session_id: &str, call_id: &str, call: PendingCall) {
        if let Some(l) = self.local().get_mut(session_id) {
            l.proposals.insert(call_id.to_string(), call);
        }
    }

    /// The session's waiting calls, to show a browser that (re)connects.
    pub fn pending_calls(&self, session_id: &str) -> Vec<PendingView> {
        let local = self.local();
        let Some(l) = local.get(session_id) else {
            return Vec::new();
        };
        let mut views: Vec<PendingView> = l.proposals.iter().map(|(id, c)| c.view(id)).collect();
        views.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        views
    }

    /// The approval policy of local session `session_id`.
    pub fn approval(&self, session_id: &str) -> Result<ApprovalPolicy, SessionError> {
        self.local()
            .get(session_id)
            .map(|l| l.session.approval)
            .ok_or_else(|| SessionError::NotHere(session_id.to_string()))
    }

    /// Sets the approval policy of local session `session_id`, here and in the store (so that
    /// it follows the session to another replica).
    pub async fn set_approval(
        &self,
        session_id: &str,
        policy: ApprovalPolicy,
    ) -> Result<(), SessionError> {
        if self.local_session(session_id).is_none() {
            return Err(SessionError::NotHere(session_id.to_string()));
        }
        // The store first: a policy this replica applies is one a peer resuming the session
        // would read.
        if !self
            .store()
            .set_approval(session_id, self.instance(), policy)
            .await?
        {
            return Err(SessionError::NotHere(session_id.to_string()));
        }
        let mut local = self.local();
        let l = local
            .get_mut(session_id)
            .ok_or_else(|| SessionError::NotHere(session_id.to_string()))?;
        l.session.approval = policy;
        Ok(())
    }

    /// The session a workspace token opens: this instance's record when it serves the
    /// session, else the store's (its `owner` says which replica serves it). A token that
    /// names no live session, or does not match its hash, is refused alike.
    pub async fn workspace(&self, token: &str) -> Result<Session, SessionError> {
        let id = workspace_token_session(token)
            .ok_or_else(|| SessionError::BadToken("(none)".into()))?;
        let local = self.local_session(id);
        let session = match local {
            Some(s) => s,
            None => self
                .store()
                .get(id)
                .await?
                .ok_or_else(|| SessionError::Expired(id.to_string()))?,
        };
        if session.mcp_hash.is_empty() || !token_matches(token, &session.mcp_hash) {
            return Err(SessionError::BadToken(id.to_string()));
        }
        if session.state == SessionState::Ending {
            return Err(SessionError::Expired(id.to_string()));
        }
        Ok(session)
    }

    /// A file operation as the tenant in local session `session_id`'s sandbox, under its
    /// lease: the reply's head and body.
    pub async fn file<T: serde::de::DeserializeOwned>(
        &self,
        session_id: &str,
        request: &FileRequest,
        body: Vec<u8>,
    ) -> Result<(T, Vec<u8>), SessionError> {
        let lease = self.serving_lease(session_id)?;
        Ok(self.pool().file(&lease, request, body).await?)
    }
}
