//! sandpool: a pre-warmed pool of hardened Docker sandboxes, one per chat session.
//!
//! # Layout
//! - [`config`]: the one `Config`, from flags and `SANDPOOL_*` variables.
//! - [`docker`]: the only code that talks to Docker (bollard): the gate with its semaphore,
//!   queue bound, circuit breaker, retries and timeouts; the sandbox spec; the image build.
//! - [`pool`]: the warm pool: acquire, release with scrub and verify, refill, reconcile.
//! - [`session`]: sessions in a store (Redis or in process), the janitor, ownership.
//! - [`api`]: HTTP routes (status, readiness, metrics).
//! - [`metrics`]: every metric name.
//! - [`audit`]: the append-only, hash-chained trail of tool calls per session (Redis
//!   streams, JSON-lines files or memory); a leaf that `api` uses.
//! - [`redis_conn`]: the one Redis connect (timeouts, reconnects) the store and the audit
//!   trail share.
//!
//! Dependencies point one way: `api → session → pool → docker`.

pub mod agent;
pub mod api;
pub mod audit;
pub mod config;
pub mod docker;
pub mod metrics;
pub mod pool;
pub mod redis_conn;
pub mod session;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::docker::DockerGate;
use crate::docker::image::ImageError;
use crate::metrics::Metrics;
use crate::pool::{ContainerPool, PoolError};
use crate::session::{MemoryStore, RedisStore, SessionManager, SessionStore};

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot connect to docker at {host}: {source}")]
    Docker {
        host: String,
        #[source]
        source: docker::DockerError,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot start the pool: {0}")]
    Pool(#[from] PoolError),
    #[error("cannot reach the session store at SANDPOOL_REDIS_URL: {0}")]
    Store(#[from] session::StoreError),
    #[error("cannot start: {0}")]
    Session(#[from] session::SessionError),
    #[error("http server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error(transparent)]
    Auth(#[from] api::auth::AuthSetupError),
    #[error("cannot open the audit trail: {0}")]
    Audit(#[source] audit::AuditError),
}

/// Where other replicas reach this one: `SANDPOOL_INTERNAL_URL`, else `http://` and the
/// listen address (this host's name in place of an unspecified address).
fn internal_url(config: &Config, listener: &TcpListener) -> String {
    if let Some(url) = &config.mcp.internal_url {
        return url.trim_end_matches('/').to_string();
    }
    let addr = listener.local_addr().unwrap_or(config.listen);
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("http://{host}:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// Runs the service on `listener` until `shutdown` completes, then drains: the server stops
/// accepting, and every container of this instance is removed within the shutdown timeout.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // A bad key is a startup error, before anything is started.
    let authenticator = api::auth::Authenticator::from_config(&config.auth)?;
    if !authenticator.enabled() {
        tracing::warn!(
            "authentication is off: anyone who reaches this port gets a sandbox (set SANDPOOL_AUTH_HS256_SECRET or SANDPOOL_AUTH_PUBLIC_KEY_FILE in production)"
        );
    }
    let gate = DockerGate::connect(&config.docker_host, &config.gate)
        .await
        .map_err(|source| RunError::Docker {
            host: config.docker_host.clone(),
            source,
        })?;
    docker::image::ensure_image(&gate, &config.image).await?;
    let store: Arc<dyn SessionStore> = match &config.session.redis_url {
        Some(url) => Arc::new(RedisStore::connect(url, &config.session.redis_prefix).await?),
        None => Arc::new(MemoryStore::new()),
    };
    let settings = session::SessionSettings {
        max_sessions_per_subject: config.auth.max_sessions_per_subject,
        max_commands_per_session: config.api.max_inflight_per_session,
        advertise: Some(internal_url(&config, &listener)),
        ..session::SessionSettings::from_config(&config.session)
    };
    // This process claims its instance id (two live processes never share one), and reads
    // what the pool needs: the sessions this instance held before a crash keep their
    // sandboxes, the sandboxes it handed to other replicas are left alone although they carry
    // its label, and its fencing tokens start at a new epoch.
    let recovery = SessionManager::recover(store.as_ref(), &config.instance_id, &settings).await?;
    let handed = recovery.startup.handed.clone();
    let metrics = Metrics::new(gate.clone());
    let pool =
        ContainerPool::start(gate, &config, metrics.clone(), recovery.startup.clone()).await?;
    let gone: Vec<String> = handed
        .iter()
        .filter(|id| !pool.is_handed_over(id))
        .cloned()
        .collect();
    if let Err(error) = store.forget_handed(&config.instance_id, &gone).await {
        tracing::debug!(%error, "forgetting removed hand-overs failed; tried again next start");
    }
    let sessions =
        SessionManager::start(store, pool.clone(), &config.instance_id, settings, recovery).await;
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        instance = %config.instance_id,
        image = %config.image.image,
        sessions = sessions.store().kind(),
        min_idle = config.pool.min_idle,
        max = config.pool.max,
        "sandpool serving"
    );
    let audit_log = audit::open(
        &config.audit,
        config.session.redis_url.as_deref(),
        &config.session.redis_prefix,
    )
    .await
    .map_err(RunError::Audit)?;
    tracing::info!(log = audit_log.kind(), "audit trail");
    let audit_trail = api::audit::AuditTrail::new(audit_log);
    let socket_api = api::SocketApi::new(
        sessions.clone(),
        authenticator,
        Arc::new(agent::ShellAgent),
        config.api.clone(),
        config.mcp.clone(),
        audit_trail.clone(),
        metrics.clone(),
    );
    let (socket_layer, io) = socket_api.layer();
    let audit_route = api::audit::AuditRoute {
        trail: audit_trail,
        sessions: sessions.clone(),
        admin_token: config.mcp.admin_token.clone(),
    };
    // Cancelled at shutdown: the MCP endpoint's open streams end, so the server can drain.
    let mcp_streams = tokio_util::sync::CancellationToken::new();
    let app = api::router(api::AppState {
        sessions: sessions.clone(),
        metrics: Arc::clone(&metrics),
    })
    .merge(
        axum::Router::new()
            .route(
                "/api/sessions/{id}/audit",
                axum::routing::get(api::audit::read_audit),
            )
            .with_state(audit_route),
    )
    .merge(api::mcp::router(
        socket_api.clone(),
        &config.mcp,
        mcp_streams.clone(),
    ))
    .merge(api::files::router(socket_api.clone()))
    .layer(socket_layer);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        // Small socket.io frames must not wait for delayed ACKs (Nagle): ~40 ms otherwise.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .await
    });
    // Run until asked to stop, or until the server fails by itself.
    let early = tokio::select! {
        _ = shutdown => None,
        result = &mut server => Some(result),
    };
    tracing::info!("shutting down: ending sessions and removing this instance's containers");
    // One deadline for the whole shutdown; each stage takes what is left of it.
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    // The pool stops handing out first, so that the sessions' sandboxes are removed rather
    // than scrubbed for a pool that is going away.
    pool.close();
    // Sessions next: their sockets hear `session:expired` (reason `shutdown`) and are
    // disconnected, so the HTTP server can drain.
    sessions.shutdown(left()).await;
    mcp_streams.cancel();
    if tokio::time::timeout_at(deadline, io.close()).await.is_err() {
        tracing::warn!("closing socket.io connections did not finish in time");
    }
    let _ = stop_http.send(());
    let joined = match early {
        Some(result) => Ok(result),
        None => tokio::time::timeout_at(deadline, server).await,
    };
    let served = match joined {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join.to_string())),
        Err(_) => {
            tracing::warn!("http server did not drain in time");
            Ok(())
        }
    };
    // Removal gets at least a few seconds even when the stages before used up the deadline:
    // containers left behind are the one thing shutdown must not do.
    pool.shutdown(left().max(std::time::Duration::from_secs(5)))
        .await;
    served.map_err(RunError::Http)
}
