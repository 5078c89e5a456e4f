//! `MemoryStore`: session records and their indexes.

use super::*;

#[async_trait]
impl SessionRecords for MemoryStore {
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

    async fn detach(&self, id: &str, owner: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.update(id, |s| {
            if s.state != SessionState::Active || s.owner != owner {
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

    async fn set_approval(
        &self,
        id: &str,
        owner: &str,
        policy: ApprovalPolicy,
    ) -> Result<bool, StoreError> {
        Ok(self.update(id, |s| {
            if s.owner != owner {
                return false;
            }
            s.approval = policy;
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
        if s.state == SessionState::Ending
            && s.claimed_at_ms > now_ms - crate::session::STALE_CLAIM_MS
        {
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

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.lock().sessions.len())
    }
}
