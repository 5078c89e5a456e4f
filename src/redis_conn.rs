//! The one way sandpool connects to Redis (the session store and the audit trail alike): a
//! multiplexed, self-reconnecting connection with short timeouts, and a first connect that
//! gives up when Redis does not answer within a few seconds. A leaf: it knows only `redis`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Connects to `url` (`redis://host:port[/db]`). Fails (with a message naming the address)
/// when Redis does not answer within a few seconds; once connected, lost connections are
/// re-established in the background.
pub async fn connect(url: &str) -> Result<(redis::Client, ConnectionManager), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| format!("no answer from {url}"))?
    .map_err(|e| e.to_string())?;
    Ok((client, conn))
}
