//! The in-process session store: the default when no Redis URL is set. Same semantics as the
//! Redis store (one mutex makes every operation atomic), but nothing survives a restart and
//! nothing is shared between replicas.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::model::{Session, SessionState};
use super::store::{
    BusMessage, Cutoffs, InstanceClaim, SandboxOwner, SessionStore, StoreError, Sweep,
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

    async fn put(&self, session: &Session) -> Result<(), StoreError> {
        self.lock().write(session);
        Ok(())
    }

    async fn restore(&self, session: &Session) -> Result<bool, StoreError> {
        let mut mem = self.lock();
        if mem.sessions.contains_key(&session.id) {
            return Ok(false);
        }
        if let Some(owner) = mem.sandboxes.get(&session.container_id)
            && owner.session_id != session.id
            && owner.fence >= session.fence
        {
            return Ok(false);
        }
        mem.write(session);
        Ok(true)
    }

    async fn sandbox_owner(&self, container_id: &str) -> Result<Option<SandboxOwner>, StoreError> {
        Ok(self.lock().sandboxes.get(container_id).cloned())
    }

    async fn next_epoch(&self, above: u64) -> Result<u64, StoreError> {
        let mut mem = self.lock();
        let floor = ((super::model::now_ms() / 1000) as u64).max(above);
        mem.epoch = mem.epoch.max(floor) + 1;
        Ok(mem.epoch)
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        Ok(self.lock().sessions.get(id).cloned())
    }

    async fn touch(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.update(id, |s| {
            if s.state == SessionState::Ending {
                return false;
            }
            s.last_active_ms = s.last_active_ms.max(now_ms);
            true
        }))
    }

    async fn detach(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.update(id, |s| {
            if s.state != SessionState::Active {
                return false;
            }
            s.state = SessionState::Detached;
            s.detached_at_ms = now_ms;
            true
        }))
    }

    async fn reattach(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.update(id, |s| {
            if s.state == SessionState::Ending {
                return false;
            }
            s.state = SessionState::Active;
            s.detached_at_ms = 0;
            s.last_active_ms = s.last_active_ms.max(now_ms);
            true
        }))
    }

    async fn candidates(
        &self,
        sweep: Sweep,
        cutoffs: &Cutoffs,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mem = self.lock();
        let (index, cutoff) = match sweep {
            Sweep::Idle => (&mem.by_active, cutoffs.idle_before_ms),
            Sweep::Detached => (&mem.detached, cutoffs.detached_before_ms),
            Sweep::StaleClaim => (&mem.ending, cutoffs.claimed_before_ms),
        };
        Ok(index
            .iter()
            .take_while(|(score, _)| *score <= cutoff)
            .skip(offset)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect())
    }

    async fn claim_expired(
        &self,
        ids: &[String],
        cutoffs: &Cutoffs,
        claimer: &str,
        now_ms: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let mut mem = self.lock();
        let mut claimed = Vec::new();
        for id in ids {
            let Some(s) = mem.sessions.get(id).cloned() else {
                continue;
            };
            let eligible = match s.state {
                SessionState::Ending => s.claimed_at_ms <= cutoffs.claimed_before_ms,
                SessionState::Detached => {
                    s.last_active_ms <= cutoffs.idle_before_ms
                        || s.detached_at_ms <= cutoffs.detached_before_ms
                }
                SessionState::Active => s.last_active_ms <= cutoffs.idle_before_ms,
            };
            if eligible && (s.owner == claimer || !mem.alive(&s.owner)) {
                let mut s = s;
                s.state = SessionState::Ending;
                s.claimed_by = claimer.to_string();
                s.claimed_at_ms = now_ms;
                mem.replace(s.clone());
                claimed.push(s);
            }
        }
        Ok(claimed)
    }

    async fn claim(
        &self,
        id: &str,
        claimer: &str,
        now_ms: i64,
    ) -> Result<Option<Session>, StoreError> {
        let mut mem = self.lock();
        let Some(mut s) = mem.sessions.get(id).cloned() else {
            return Ok(None);
        };
        if s.state == SessionState::Ending && s.claimed_at_ms > now_ms - super::STALE_CLAIM_MS {
            return Ok(None);
        }
        if s.owner != claimer && mem.alive(&s.owner) {
            return Ok(None);
        }
        s.state = SessionState::Ending;
        s.claimed_by = claimer.to_string();
        s.claimed_at_ms = now_ms;
        mem.replace(s.clone());
        Ok(Some(s))
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let mut mem = self.lock();
        if let Some(s) = mem.sessions.remove(id) {
            mem.unindex(&s);
            if mem
                .sandboxes
                .get(&s.container_id)
                .is_some_and(|o| o.session_id == s.id)
            {
                mem.sandboxes.remove(&s.container_id);
            }
            if let Some(set) = mem.subjects.get_mut(&s.subject) {
                set.remove(id);
            }
        }
        Ok(())
    }

    async fn reserve_subject(
        &self,
        subject: &str,
        session_id: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut mem = self.lock();
        let now = Instant::now();
        let sessions: HashSet<String> = mem.sessions.keys().cloned().collect();
        let set = mem.subjects.entry(subject.to_string()).or_default();
        // A session that was put holds its slot; a reservation holds it until it expires.
        set.retain(|id, until| sessions.contains(id) || until.is_some_and(|t| t > now));
        if set.len() >= limit {
            return Ok(false);
        }
        set.insert(session_id.to_string(), Some(now + ttl));
        Ok(true)
    }

    async fn unreserve_subject(&self, subject: &str, session_id: &str) -> Result<(), StoreError> {
        if let Some(set) = self.lock().subjects.get_mut(subject) {
            set.remove(session_id);
        }
        Ok(())
    }

    async fn owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        let mem = self.lock();
        let mut ids: Vec<String> = mem
            .owners
            .get(owner)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        Ok(ids)
    }

    async fn transfer(
        &self,
        id: &str,
        from: &str,
        to: &str,
        fence: u64,
    ) -> Result<bool, StoreError> {
        let mut mem = self.lock();
        let Some(mut s) = mem.sessions.get(id).cloned() else {
            return Ok(false);
        };
        if s.owner != from || s.state == SessionState::Ending {
            return Ok(false);
        }
        s.owner = to.to_string();
        s.fence = fence;
        mem.own_sandbox(&s);
        mem.handed
            .entry(from.to_string())
            .or_default()
            .insert(s.container_id.clone());
        if let Some(set) = mem.handed.get_mut(to) {
            set.remove(&s.container_id);
        }
        mem.replace(s);
        Ok(true)
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
        let mem = self.lock();
        let (until, held) = mem
            .heartbeats
            .get(instance)
            .cloned()
            .unwrap_or_else(|| (Instant::now(), String::new()));
        Ok(InstanceClaim::Held {
            incarnation: held,
            ttl_left: until.saturating_duration_since(Instant::now()),
        })
    }

    async fn heartbeat(
        &self,
        instance: &str,
        incarnation: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut mem = self.lock();
        if mem.alive(instance)
            && mem
                .heartbeats
                .get(instance)
                .is_some_and(|(_, held)| held != incarnation)
        {
            return Ok(false);
        }
        mem.heartbeats.insert(
            instance.to_string(),
            (Instant::now() + ttl, incarnation.to_string()),
        );
        mem.known.insert(instance.to_string());
        Ok(true)
    }

    async fn known_instances(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().known.iter().cloned().collect())
    }

    async fn is_alive(&self, instance: &str) -> Result<bool, StoreError> {
        Ok(self.lock().alive(instance))
    }

    async fn remove_heartbeat(&self, instance: &str, incarnation: &str) -> Result<(), StoreError> {
        let mut mem = self.lock();
        if mem
            .heartbeats
            .get(instance)
            .is_some_and(|(_, held)| held == incarnation)
        {
            mem.heartbeats.remove(instance);
        }
        Ok(())
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.lock().sessions.len())
    }

    async fn listen(
        &self,
        instance: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<BusMessage>, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        self.lock().listeners.insert(instance.to_string(), tx);
        Ok(rx)
    }

    async fn send(&self, instance: &str, message: &BusMessage) -> Result<bool, StoreError> {
        let tx = self.lock().listeners.get(instance).cloned();
        Ok(match tx {
            Some(tx) => tx.try_send(message.clone()).is_ok(),
            None => false,
        })
    }

    async fn mark_handed(&self, owner: &str, container_id: &str) -> Result<(), StoreError> {
        self.lock()
            .handed
            .entry(owner.to_string())
            .or_default()
            .insert(container_id.to_string());
        Ok(())
    }

    async fn handed(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()
            .handed
            .get(owner)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn forget_handed(&self, owner: &str, container_ids: &[String]) -> Result<(), StoreError> {
        if let Some(set) = self.lock().handed.get_mut(owner) {
            for id in container_ids {
                set.remove(id);
            }
        }
        Ok(())
    }
}
