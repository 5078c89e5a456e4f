//! A session's workspace history: checkpoints taken before the tool calls that can change the
//! workspace, what a call changed, and undo. The checkpoints themselves live in the sandbox's
//! supervisor (root's memory, out of the tenant's reach), named by the call's id, so they
//! follow the sandbox through a hand-over to another replica and go with its scrub.

use sandpool_supervisor::proto::CheckpointRequest;
pub use sandpool_supervisor::proto::{Changes, Restored, Taken};

use super::{SessionError, SessionManager};

impl SessionManager {
    /// Records local session `session_id`'s workspace as checkpoint `call_id`, within a
    /// store of `max_bytes` (the oldest checkpoints dropped first).
    pub async fn checkpoint(
        &self,
        session_id: &str,
        call_id: &str,
        max_bytes: u64,
    ) -> Result<Taken, SessionError> {
        let lease = self.serving_lease(session_id)?;
        let request = CheckpointRequest::Take {
            label: call_id.to_string(),
            max_bytes,
        };
        Ok(self.pool().checkpoint(&lease, &request).await?)
    }

    /// What changed in the workspace since checkpoint `call_id`.
    pub async fn changes(&self, session_id: &str, call_id: &str) -> Result<Changes, SessionError> {
        let lease = self.serving_lease(session_id)?;
        let request = CheckpointRequest::Changes {
            label: call_id.to_string(),
        };
        Ok(self.pool().checkpoint(&lease, &request).await?)
    }

    /// Restores the workspace to checkpoint `call_id` (undoing that call and every later one,
    /// whose checkpoints are dropped). The supervisor refuses it (`busy`) while a command of
    /// the session runs, and with `not_found` when the checkpoint is gone.
    pub async fn undo(&self, session_id: &str, call_id: &str) -> Result<Restored, SessionError> {
        let lease = self.serving_lease(session_id)?;
        let request = CheckpointRequest::Restore {
            label: call_id.to_string(),
        };
        Ok(self.pool().checkpoint(&lease, &request).await?)
    }
}
