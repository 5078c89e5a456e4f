//! `RedisStore`: per-subject session limits.

use super::*;

#[async_trait]
impl Quotas for RedisStore {
    async fn reserve_subject(
        &self,
        subject: &str,
        session_id: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .reserve
            .key(format!("{}{subject}", self.subject_prefix()))
            .arg(session_id)
            .arg(limit)
            .arg(format!("{}session:", self.prefix))
            .arg(format!("{}reserve:", self.prefix))
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn unreserve_subject(&self, subject: &str, session_id: &str) -> Result<(), StoreError> {
        let _: () = redis::pipe()
            .atomic()
            .srem(format!("{}{subject}", self.subject_prefix()), session_id)
            .ignore()
            .del(format!("{}reserve:{session_id}", self.prefix))
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
