//! `RedisStore`: the hand-over bus between instances.

use super::*;

#[async_trait]
impl Bus for RedisStore {
    async fn listen(&self, instance: &str) -> Result<mpsc::Receiver<BusMessage>, StoreError> {
        // Its own connection: a subscribed connection can do nothing else. When it drops (a
        // Redis restart), it is subscribed again with backoff; meanwhile senders see nobody
        // listening and `bus_up` says so (in /readyz and the metrics). Messages sent while it
        // was down are lost (pub/sub): an asker times out and its client retries.
        let channel = self.bus_channel(instance);
        let first = subscribe(&self.client, &channel).await?;
        let (tx, rx) = mpsc::channel(256);
        let (client, up) = (self.client.clone(), self.bus_up.clone());
        up.store(true, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut pubsub = Some(first);
            let mut backoff = BUS_RETRY_MIN;
            loop {
                let subscribed = match pubsub.take() {
                    Some(p) => p,
                    None => {
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        match subscribe(&client, &channel).await {
                            Ok(p) => {
                                up.store(true, Ordering::Relaxed);
                                backoff = BUS_RETRY_MIN;
                                tracing::info!("hand-over bus subscribed again");
                                p
                            }
                            Err(error) => {
                                backoff = (backoff * 2).min(BUS_RETRY_MAX);
                                tracing::debug!(%error, "subscribing to the hand-over bus failed; retrying");
                                continue;
                            }
                        }
                    }
                };
                let mut messages = subscribed.into_on_message();
                loop {
                    // When the listener goes (the instance stops), the subscription goes with
                    // it, so that senders see nobody listening.
                    let msg = tokio::select! {
                        _ = tx.closed() => return,
                        msg = futures_util::StreamExt::next(&mut messages) => msg,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str::<BusMessage>(&payload) {
                        Ok(message) => {
                            if tx.send(message).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => tracing::warn!(%error, "malformed bus message ignored"),
                    }
                }
                up.store(false, Ordering::Relaxed);
                tracing::warn!("the hand-over bus connection dropped; subscribing again");
            }
        });
        Ok(rx)
    }

    fn bus_up(&self) -> bool {
        self.bus_up.load(Ordering::Relaxed)
    }

    async fn send(&self, instance: &str, message: &BusMessage) -> Result<bool, StoreError> {
        let payload = serde_json::to_string(message)
            .map_err(|e| StoreError::Unavailable(format!("encoding a bus message: {e}")))?;
        let receivers: i64 = self
            .conn
            .clone()
            .publish(self.bus_channel(instance), payload)
            .await
            .map_err(unavailable)?;
        Ok(receivers > 0)
    }
}
