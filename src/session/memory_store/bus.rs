//! `MemoryStore`: the hand-over bus between instances.

use super::*;

#[async_trait]
impl Bus for MemoryStore {
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
}
