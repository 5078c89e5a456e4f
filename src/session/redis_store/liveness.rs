//! `RedisStore`: instance heartbeats, one incarnation per instance id.

use super::*;

#[async_trait]
impl Liveness for RedisStore {
    async fn claim_instance(
        &self,
        instance: &str,
        incarnation: &str,
        ttl: Duration,
    ) -> Result<InstanceClaim, StoreError> {
        if self.heartbeat(instance, incarnation, ttl).await? {
            return Ok(InstanceClaim::Claimed);
        }
        let key = self.heartbeat_key(instance);
        let (held, ttl_ms): (Option<String>, i64) = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(InstanceClaim::Held {
            incarnation: held.unwrap_or_default(),
            ttl_left: Duration::from_millis(ttl_ms.max(0) as u64),
        })
    }

    async fn heartbeat(
        &self,
        instance: &str,
        incarnation: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .scripts
            .heartbeat
            .key(self.heartbeat_key(instance))
            .key(format!("{}instances", self.prefix))
            .arg(incarnation)
            .arg(ttl.as_millis() as u64)
            .arg(instance)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn known_instances(&self) -> Result<Vec<String>, StoreError> {
        self.conn
            .clone()
            .smembers(format!("{}instances", self.prefix))
            .await
            .map_err(unavailable)
    }

    async fn is_alive(&self, instance: &str) -> Result<bool, StoreError> {
        self.conn
            .clone()
            .exists(self.heartbeat_key(instance))
            .await
            .map_err(unavailable)
    }

    async fn set_address(
        &self,
        instance: &str,
        url: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_expiring(&format!("{}addr:{instance}", self.prefix), url, ttl)
            .await
    }

    async fn address(&self, instance: &str) -> Result<Option<String>, StoreError> {
        self.get_string(&format!("{}addr:{instance}", self.prefix))
            .await
    }

    async fn set_status(
        &self,
        instance: &str,
        status: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_expiring(&format!("{}status:{instance}", self.prefix), status, ttl)
            .await
    }

    async fn status_of(&self, instance: &str) -> Result<Option<String>, StoreError> {
        self.get_string(&format!("{}status:{instance}", self.prefix))
            .await
    }

    async fn remove_heartbeat(&self, instance: &str, incarnation: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .remove_heartbeat
            .key(self.heartbeat_key(instance))
            .arg(incarnation)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

impl RedisStore {
    /// `key = value` for `ttl` (renewed by whoever writes it again).
    async fn put_expiring(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let _: () = self
            .conn
            .clone()
            .pset_ex(key, value, ttl.as_millis() as u64)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_string(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn.clone().get(key).await.map_err(unavailable)
    }
}
