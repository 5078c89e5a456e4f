//! `MemoryStore`: per-subject session limits.

use super::*;

#[async_trait]
impl Quotas for MemoryStore {
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
}
