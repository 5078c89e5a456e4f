//! `RedisStore`: who serves which sandbox under which lease, fencing epochs, moves between instances.

use super::*;

#[async_trait]
impl Ownership for RedisStore {
    async fn sandbox_owner(&self, container_id: &str) -> Result<Option<SandboxOwner>, StoreError> {
        let f: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(format!("{}{container_id}", self.sandbox_prefix()))
            .await
            .map_err(unavailable)?;
        Ok(match (f.get("owner"), f.get("session"), f.get("fence")) {
            (Some(owner), Some(session), Some(fence)) => Some(SandboxOwner {
                owner: owner.clone(),
                session_id: session.clone(),
                fence: fence.parse().unwrap_or(0),
            }),
            _ => None,
        })
    }

    async fn next_epoch(&self, above: u64) -> Result<u64, StoreError> {
        let now_secs = (crate::session::now_ms() / 1000) as u64;
        self.scripts
            .next_epoch
            .key(format!("{}epoch", self.prefix))
            .arg(now_secs.max(above))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn transfer(
        &self,
        id: &str,
        from: &str,
        to: &str,
        fence: u64,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .transfer
            .key(self.session_key(id))
            .arg(from)
            .arg(to)
            .arg(id)
            .arg(self.owner_prefix())
            .arg(fence_field(fence))
            .arg(self.sandbox_prefix())
            .arg(format!("{}handed:", self.prefix))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn mark_handed(&self, owner: &str, container_id: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .conn
            .clone()
            .sadd(self.handed_key(owner), container_id)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn handed(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        self.conn
            .clone()
            .smembers(self.handed_key(owner))
            .await
            .map_err(unavailable)
    }

    async fn forget_handed(&self, owner: &str, container_ids: &[String]) -> Result<(), StoreError> {
        if container_ids.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .conn
            .clone()
            .srem(self.handed_key(owner), container_ids)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
