//! `RedisStore`: session records and their indexes.

use super::*;

#[async_trait]
impl SessionRecords for RedisStore {
    async fn put(&self, s: &Session) -> Result<(), StoreError> {
        self.write(s, "put").await.map(|_| ())
    }

    async fn restore(&self, s: &Session) -> Result<bool, StoreError> {
        self.write(s, "restore").await
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let fields: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(self.session_key(id))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        session_from_fields(fields).map(Some)
    }

    async fn touch(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let keys = [self.session_key(id), self.idx("active")];
        self.transition(&self.scripts.touch, &keys, id, now_ms)
            .await
    }

    async fn set_approval(
        &self,
        id: &str,
        owner: &str,
        policy: ApprovalPolicy,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .set_approval
            .key(self.session_key(id))
            .arg(policy.as_str())
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn detach(&self, id: &str, owner: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .detach
            .key(self.session_key(id))
            .key(self.idx("detached"))
            .arg(now_ms)
            .arg(id)
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn reattach(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let keys = [
            self.session_key(id),
            self.idx("active"),
            self.idx("detached"),
        ];
        self.transition(&self.scripts.reattach, &keys, id, now_ms)
            .await
    }

    async fn candidates(
        &self,
        sweep: Sweep,
        cutoffs: &Cutoffs,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (index, cutoff) = match sweep {
            Sweep::Idle => (self.idx("active"), cutoffs.idle_before_ms),
            Sweep::Detached => (self.idx("detached"), cutoffs.detached_before_ms),
            Sweep::StaleClaim => (self.idx("ending"), cutoffs.claimed_before_ms),
        };
        self.conn
            .clone()
            .zrangebyscore_limit(index, "-inf", cutoff, offset as isize, limit as isize)
            .await
            .map_err(unavailable)
    }

    async fn claim_expired(
        &self,
        ids: &[String],
        cutoffs: &Cutoffs,
        claimer: &str,
        now_ms: i64,
    ) -> Result<Vec<Session>, StoreError> {
        self.claim_script(ids, cutoffs, claimer, now_ms, "expired")
            .await
    }

    async fn claim(
        &self,
        id: &str,
        claimer: &str,
        now_ms: i64,
    ) -> Result<Option<Session>, StoreError> {
        let cutoffs = Cutoffs {
            idle_before_ms: i64::MIN,
            detached_before_ms: i64::MIN,
            claimed_before_ms: now_ms - crate::session::STALE_CLAIM_MS,
        };
        let mut claimed = self
            .claim_script(&[id.to_string()], &cutoffs, claimer, now_ms, "any")
            .await?;
        Ok(claimed.pop())
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .delete
            .key(self.session_key(id))
            .key(self.idx("active"))
            .key(self.idx("detached"))
            .key(self.idx("ending"))
            .arg(id)
            .arg(self.owner_prefix())
            .arg(self.subject_prefix())
            .arg(self.sandbox_prefix())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        let key = format!("{}{owner}", self.owner_prefix());
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut ids = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            ids.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        self.conn
            .clone()
            .zcard(self.idx("active"))
            .await
            .map_err(unavailable)
    }
}
