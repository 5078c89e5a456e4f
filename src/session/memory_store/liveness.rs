//! `MemoryStore`: instance heartbeats, one incarnation per instance id.

use super::*;

#[async_trait]
impl Liveness for MemoryStore {
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

    async fn set_address(
        &self,
        instance: &str,
        url: &str,
        _ttl: Duration,
    ) -> Result<(), StoreError> {
        self.lock()
            .addresses
            .insert(instance.to_string(), url.to_string());
        Ok(())
    }

    /// One process shares this store: only its own address is ever here.
    async fn address(&self, instance: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().addresses.get(instance).cloned())
    }

    async fn set_status(
        &self,
        instance: &str,
        status: &str,
        _ttl: Duration,
    ) -> Result<(), StoreError> {
        self.lock()
            .statuses
            .insert(instance.to_string(), status.to_string());
        Ok(())
    }

    async fn status_of(&self, instance: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().statuses.get(instance).cloned())
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
}
