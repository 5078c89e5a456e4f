//! The in-process session store: the default when no Redis URL is set. Same semantics as the
//! Redis store (one mutex makes every operation atomic), but nothing survives a restart and
//! nothing is shared between replicas.

mod bus;
mod liveness;
mod ownership;
mod quotas;
mod records;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::session::model::{ApprovalPolicy, Session, SessionState};
use crate::session::store::{
    Bus, BusMessage, Cutoffs, InstanceClaim, Liveness, Ownership, Quotas, SandboxOwner,
    SessionRecords, SessionStore, StoreError, Sweep,
};

#[derive(Default)]
struct Mem {
    sessions: HashMap<String, Session>,
    by_active: BTreeSet<(i64, String)>,
    detached: BTreeSet<(i64, String)>,
    ending: BTreeSet<(i64, String)>,
    owners: HashMap<String, HashSet<String>>,
    /// Until when, and held by which incarnation.
    heartbeats: HashMap<String, (Instant, String)>,
    /// Instance → its internal URL (`Liveness::set_address`).
    addresses: HashMap<String, String>,
    /// Instance → its status JSON (`Liveness::set_status`).
    statuses: HashMap<String, String>,
    /// Who serves each sandbox (see `SessionStore::sandbox_owner`).
    sandboxes: HashMap<String, SandboxOwner>,
    /// The last epoch handed out.
    epoch: u64,
    /// Listeners of the bus, by instance.
    listeners: HashMap<String, tokio::sync::mpsc::Sender<BusMessage>>,
    handed: HashMap<String, HashSet<String>>,
    /// Every instance that ever heartbeated.
    known: HashSet<String>,
    /// Live sessions (no expiry) and reservations (an expiry) per token subject.
    subjects: HashMap<String, HashMap<String, Option<Instant>>>,
}

impl Mem {
    fn unindex(&mut self, s: &Session) {
        self.by_active.remove(&(s.last_active_ms, s.id.clone()));
        self.detached.remove(&(s.detached_at_ms, s.id.clone()));
        self.ending.remove(&(s.claimed_at_ms, s.id.clone()));
        if let Some(set) = self.owners.get_mut(&s.owner) {
            set.remove(&s.id);
        }
    }

    fn index(&mut self, s: &Session) {
        self.by_active.insert((s.last_active_ms, s.id.clone()));
        match s.state {
            SessionState::Detached => {
                self.detached.insert((s.detached_at_ms, s.id.clone()));
            }
            SessionState::Ending => {
                self.ending.insert((s.claimed_at_ms, s.id.clone()));
            }
            SessionState::Active => {}
        }
        self.owners
            .entry(s.owner.clone())
            .or_default()
            .insert(s.id.clone());
    }

    /// Replaces a session and its index entries.
    fn replace(&mut self, s: Session) {
        if let Some(old) = self.sessions.remove(&s.id) {
            self.unindex(&old);
        }
        self.index(&s);
        self.sessions.insert(s.id.clone(), s);
    }

    fn alive(&self, instance: &str) -> bool {
        self.heartbeats
            .get(instance)
            .is_some_and(|(until, _)| Instant::now() < *until)
    }

    /// Writes a session and its sandbox's owner.
    fn write(&mut self, session: &Session) {
        if !session.subject.is_empty() {
            // A recorded session holds its subject's slot until it is deleted.
            self.subjects
                .entry(session.subject.clone())
                .or_default()
                .insert(session.id.clone(), None);
        }
        self.own_sandbox(session);
        self.replace(session.clone());
    }

    fn own_sandbox(&mut self, s: &Session) {
        self.sandboxes.insert(
            s.container_id.clone(),
            SandboxOwner {
                owner: s.owner.clone(),
                session_id: s.id.clone(),
                fence: s.fence,
            },
        );
    }
}

/// Sessions in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    mem: Mutex<Mem>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        // Each operation leaves `Mem` consistent before it can panic, so a poisoned lock is
        // still usable.
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to a copy of the session and writes it back with its index entries.
    fn update(&self, id: &str, f: impl FnOnce(&mut Session) -> bool) -> bool {
        let mut mem = self.lock();
        let Some(mut s) = mem.sessions.get(id).cloned() else {
            return false;
        };
        if !f(&mut s) {
            return false;
        }
        mem.replace(s);
        true
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
