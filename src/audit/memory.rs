//! The in-process audit log, for a service with neither Redis nor a data directory, and the
//! disabled log.
//!
//! The in-process log is bounded: at most [`MAX_SESSIONS`] sessions (the session whose chain
//! was started first is dropped to make room) and [`MAX_ENTRIES_PER_SESSION`] entries each (an
//! append past it fails with [`AuditError::Full`] rather than dropping the chain's start, so
//! what is kept still verifies). Nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::chain::{Tail, seal};
use super::{
    AuditEntry, AuditError, AuditLog, AuditRecord, MAX_READ_ENTRIES, bound_args, check_session_id,
    now_ms,
};

/// Sessions whose chains the in-process log keeps at most.
pub const MAX_SESSIONS: usize = 256;

/// Entries of one session the in-process log keeps at most.
pub const MAX_ENTRIES_PER_SESSION: usize = 1_000;

/// Chains in this process's memory, bounded.
pub struct MemoryAuditLog {
    state: Mutex<MemoryState>,
    max_sessions: usize,
    max_entries: usize,
}

#[derive(Default)]
struct MemoryState {
    chains: HashMap<String, Vec<AuditEntry>>,
    /// Session ids in the order their chains were started: the front is dropped first.
    order: VecDeque<String>,
}

impl MemoryAuditLog {
    /// An empty log with the default bounds.
    pub fn new() -> Self {
        Self::with_bounds(MAX_SESSIONS, MAX_ENTRIES_PER_SESSION)
    }

    /// An empty log keeping at most `max_sessions` chains of `max_entries` entries each.
    pub fn with_bounds(max_sessions: usize, max_entries: usize) -> Self {
        Self {
            state: Mutex::new(MemoryState::default()),
            max_sessions: max_sessions.max(1),
            max_entries: max_entries.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock leaves whole chains (each push is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryAuditLog {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl AuditLog for MemoryAuditLog {
    async fn append(&self, mut record: AuditRecord) -> Result<AuditEntry, AuditError> {
        check_session_id(&record.session_id)?;
        record.args = bound_args(record.args);
        let mut state = self.state();
        if !state.chains.contains_key(&record.session_id) {
            while state.chains.len() >= self.max_sessions {
                let Some(oldest) = state.order.pop_front() else {
                    break;
                };
                state.chains.remove(&oldest);
            }
            state.order.push_back(record.session_id.clone());
        }
        let session_id = record.session_id.clone();
        let chain = state.chains.entry(session_id.clone()).or_default();
        if chain.len() >= self.max_entries {
            return Err(AuditError::Full {
                session_id,
                max: self.max_entries,
            });
        }
        let tail = chain.last().map(Tail::of).unwrap_or_else(Tail::genesis);
        let entry = seal(record, &tail, now_ms());
        chain.push(entry.clone());
        Ok(entry)
    }

    async fn read(&self, session_id: &str) -> Result<Vec<AuditEntry>, AuditError> {
        check_session_id(session_id)?;
        let state = self.state();
        Ok(state
            .chains
            .get(session_id)
            .map(|chain| chain.iter().take(MAX_READ_ENTRIES).cloned().collect())
            .unwrap_or_default())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// The log of a service with `SANDPOOL_AUDIT_ENABLED=false`: nothing is recorded. `append`
/// returns the record with `seq` 0 and empty `prev` and `hash` (not part of any chain);
/// `read` returns nothing.
pub struct DisabledAuditLog;

#[async_trait]
impl AuditLog for DisabledAuditLog {
    async fn append(&self, record: AuditRecord) -> Result<AuditEntry, AuditError> {
        Ok(AuditEntry {
            record,
            seq: 0,
            ts_ms: 0,
            prev: String::new(),
            hash: String::new(),
        })
    }

    async fn read(&self, _session_id: &str) -> Result<Vec<AuditEntry>, AuditError> {
        Ok(Vec::new())
    }

    fn kind(&self) -> &'static str {
        "disabled"
    }
}
