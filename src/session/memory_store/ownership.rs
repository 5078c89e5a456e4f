//! `MemoryStore`: who serves which sandbox under which lease, fencing epochs, moves between instances.

use super::*;

#[async_trait]
impl Ownership for MemoryStore {
    async fn sandbox_owner(&self, container_id: &str) -> Result<Option<SandboxOwner>, StoreError> {
        Ok(self.lock().sandboxes.get(container_id).cloned())
    }

    async fn next_epoch(&self, above: u64) -> Result<u64, StoreError> {
        let mut mem = self.lock();
        let floor = ((crate::session::now_ms() / 1000) as u64).max(above);
        mem.epoch = mem.epoch.max(floor) + 1;
        Ok(mem.epoch)
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
