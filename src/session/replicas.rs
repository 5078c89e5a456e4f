//! What each replica of a deployment is doing, for operators (`sandpool status`,
//! `GET /api/replicas`): every replica writes a [`ReplicaStatus`] to the store with each
//! heartbeat, under the heartbeat's TTL, and any replica (or the CLI, from the store itself)
//! reads them all back. A replica whose heartbeat lapsed is listed as not alive, with the
//! last status it wrote while that is still in the store.

use serde::{Deserialize, Serialize};

use super::manager::SessionManager;
use super::store::{SessionStore, StoreError};

/// One replica's status, as it wrote it with its last heartbeat. This is the store's format
/// (JSON under `P status:<instance>`), so that the CLI can read it without a replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub instance: String,
    /// The engine its sandboxes live on (Docker's daemon ID).
    pub engine: String,
    /// Where other replicas reach it, if it said.
    pub url: Option<String>,
    pub version: String,
    pub idle: usize,
    pub leased: usize,
    pub creating: usize,
    pub max: usize,
    pub waiting: usize,
    /// The Docker gate's breaker: `closed`, `open` or `half_open`.
    pub breaker: String,
    /// This replica's sessions by state (`active`, `detached`, `ending`).
    pub sessions: std::collections::BTreeMap<String, usize>,
    /// When it was written (ms since the epoch).
    pub at_ms: i64,
}

/// A replica the store knows of.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub instance: String,
    /// Its heartbeat is there.
    pub alive: bool,
    /// The last status it wrote, while the store keeps it.
    pub status: Option<ReplicaStatus>,
}

impl SessionManager {
    /// This replica's status now.
    pub fn replica_status(&self) -> ReplicaStatus {
        let pool = self.pool_status();
        ReplicaStatus {
            instance: pool.instance.clone(),
            engine: pool.engine.clone(),
            url: self.settings().advertise.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            idle: pool.idle,
            leased: pool.leased,
            creating: pool.creating,
            max: pool.max,
            waiting: pool.waiting,
            breaker: pool.gate.breaker.as_str().to_string(),
            sessions: self
                .local_counts()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            at_ms: super::now_ms(),
        }
    }

    /// Every replica of this deployment, this one's status fresh, the others' as they last
    /// wrote it.
    pub async fn replicas(&self) -> Result<Vec<Replica>, StoreError> {
        let mine = self.replica_status();
        let mut all = read_replicas(self.store().as_ref()).await?;
        match all.iter_mut().find(|r| r.instance == mine.instance) {
            Some(r) => {
                r.alive = true;
                r.status = Some(mine);
            }
            None => all.push(Replica {
                instance: mine.instance.clone(),
                alive: true,
                status: Some(mine),
            }),
        }
        all.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(all)
    }
}

/// Every replica `store` knows of, with its liveness and last status (what `sandpool status`
/// reads from Redis when no replica is asked).
pub async fn read_replicas(store: &dyn SessionStore) -> Result<Vec<Replica>, StoreError> {
    let mut all = Vec::new();
    for instance in store.known_instances().await? {
        let alive = store.is_alive(&instance).await?;
        let status = store
            .status_of(&instance)
            .await?
            .and_then(|json| serde_json::from_str(&json).ok());
        all.push(Replica {
            instance,
            alive,
            status,
        });
    }
    all.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(all)
}
