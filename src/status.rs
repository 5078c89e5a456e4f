//! `sandpool status`: a running deployment's state, one line per replica (alive, engine,
//! pool idle/leased/max, breaker, sessions), read from a replica's `GET /api/replicas` (any
//! replica answers for all: each writes its status to the shared store with its heartbeat)
//! or straight from the store in Redis when no replica is asked. This file also owns that
//! route's JSON, so that what the service sends and what the CLI reads are written once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::session::{RedisStore, Replica, ReplicaStatus, read_replicas};

/// Where the status is read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A replica's HTTP address (`http://host:port`, nginx's included).
    Http(String),
    /// The deployment's Redis and key prefix.
    Redis { url: String, prefix: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Http(url) => write!(f, "{url}"),
            Source::Redis { url, .. } => write!(f, "the store at {url}"),
        }
    }
}

/// Why no status could be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no sandpool answers at {at}: {why}")]
    Unreachable { at: String, why: String },
    #[error("{at} answered with something that is not sandpool's status: {why}")]
    Malformed { at: String, why: String },
}

/// One replica on the wire (`GET /api/replicas`).
#[derive(Debug, Serialize, Deserialize)]
struct WireReplica {
    instance: String,
    alive: bool,
    status: Option<ReplicaStatus>,
}

/// The body of `GET /api/replicas`.
pub fn replicas_json(replicas: &[Replica]) -> Value {
    let list: Vec<WireReplica> = replicas
        .iter()
        .map(|r| WireReplica {
            instance: r.instance.clone(),
            alive: r.alive,
            status: r.status.clone(),
        })
        .collect();
    json!({ "replicas": list })
}

/// Reads every replica's status from `source`.
pub async fn gather(source: &Source) -> Result<Vec<Replica>, StatusError> {
    let unreachable = |why: String| StatusError::Unreachable {
        at: source.to_string(),
        why,
    };
    match source {
        Source::Http(base) => {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| unreachable(e.to_string()))?;
            let url = format!("{}/api/replicas", base.trim_end_matches('/'));
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            if !response.status().is_success() {
                return Err(StatusError::Malformed {
                    at: source.to_string(),
                    why: format!("HTTP {}", response.status()),
                });
            }
            #[derive(Deserialize)]
            struct Body {
                replicas: Vec<WireReplica>,
            }
            let body: Body = response.json().await.map_err(|e| StatusError::Malformed {
                at: source.to_string(),
                why: e.to_string(),
            })?;
            Ok(body
                .replicas
                .into_iter()
                .map(|r| Replica {
                    instance: r.instance,
                    alive: r.alive,
                    status: r.status,
                })
                .collect())
        }
        Source::Redis { url, prefix } => {
            let store =
                tokio::time::timeout(Duration::from_secs(5), RedisStore::connect(url, prefix))
                    .await
                    .map_err(|_| unreachable("no answer within 5 s".into()))?
                    .map_err(|e| unreachable(e.to_string()))?;
            read_replicas(&store)
                .await
                .map_err(|e| unreachable(e.to_string()))
        }
    }
}

/// The human-readable table.
pub fn render(replicas: &[Replica], source: &Source) -> String {
    let mut out = format!("sandpool status, from {source}\n");
    if replicas.is_empty() {
        out.push_str("no replica has heartbeated here\n");
        return out;
    }
    out.push_str(&format!(
        "{:<28} {:<6} {:<14} {:>5} {:>6} {:>5} {:>7}  {:<9} {}\n",
        "REPLICA", "ALIVE", "ENGINE", "IDLE", "LEASED", "MAX", "WAITING", "BREAKER", "SESSIONS"
    ));
    let (mut alive, mut sessions) = (0, 0);
    for r in replicas {
        alive += usize::from(r.alive);
        let yes = if r.alive { "yes" } else { "no" };
        match &r.status {
            Some(s) => {
                let engine: String = if s.engine.is_empty() {
                    "?".into()
                } else {
                    s.engine.chars().take(14).collect()
                };
                let n: usize = s.sessions.values().sum();
                if r.alive {
                    sessions += n;
                }
                let by_state = s
                    .sessions
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                out.push_str(&format!(
                    "{:<28} {:<6} {:<14} {:>5} {:>6} {:>5} {:>7}  {:<9} {}\n",
                    r.instance,
                    yes,
                    engine,
                    s.idle,
                    s.leased,
                    s.max,
                    s.waiting,
                    s.breaker,
                    if by_state.is_empty() {
                        "0".into()
                    } else {
                        by_state
                    }
                ));
            }
            None => out.push_str(&format!(
                "{:<28} {:<6} (no status: it stopped, or predates `sandpool status`)\n",
                r.instance, yes
            )),
        }
    }
    out.push_str(&format!(
        "{alive} of {} replicas alive, {sessions} sessions\n",
        replicas.len()
    ));
    out
}
