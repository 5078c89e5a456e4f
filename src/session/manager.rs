//! The session manager: sessions of this instance, their sandboxes, and the background loops
//! (janitor, heartbeat, catch-up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handover::Asked;
use super::model::{Session, SessionState, new_resume_token, now_ms, token_matches};
use super::store::{Cutoffs, SessionStore, StoreError, Sweep};
use crate::config::SessionConfig;
use crate::pool::{
    CommandOutput, CommandSpec, ContainerPool, Lease, OutputChunk, Place, PoolError, PoolStatus,
};

/// Timing of sessions and of the loops that look after them.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// A session idle longer than this is ended by the janitor.
    pub idle_ttl: Duration,
    /// How long a session whose socket dropped waits for a resume.
    pub reconnect_grace: Duration,
    /// Period of the janitor.
    pub janitor_interval: Duration,
    /// Sessions a janitor query fetches and claims at once.
    pub janitor_batch: usize,
    /// Life of the instance heartbeat key; it is renewed every third of it.
    pub heartbeat_ttl: Duration,
    /// At most one store write per session per this, for activity.
    pub touch_every: Duration,
    /// Live sessions one token subject may hold over every replica; 0: no limit.
    pub max_sessions_per_subject: usize,
    /// Sessions this instance keeps detached (waiting for a resume) at most; past it the
    /// longest-detached is ended at once, so that a flood of connect-and-drop clients cannot
    /// hold more sandboxes than this.
    pub max_detached: usize,
}

impl SessionSettings {
    /// The settings of the configuration (its defaults are written there, once).
    pub fn from_config(config: &SessionConfig) -> Self {
        Self {
            idle_ttl: config.idle_ttl,
            reconnect_grace: config.reconnect_grace,
            janitor_interval: config.janitor_interval,
            janitor_batch: config.janitor_batch,
            heartbeat_ttl: config.heartbeat_ttl,
            touch_every: TOUCH_EVERY,
            max_sessions_per_subject: 0,
            max_detached: config.max_detached,
        }
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self::from_config(&SessionConfig::default())
    }
}

/// Activity is written to the store at most once per session per this.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Idle longer than the idle TTL.
    Idle,
    /// Its socket dropped and it was not resumed within the grace.
    Disconnected,
    /// The client ended it.
    Ended,
    /// The service is shutting down.
    Shutdown,
    /// Its sandbox died.
    SandboxLost,
    /// A claimer died half-way through ending it; finished by another.
    Abandoned,
    /// Resumed on another replica: this one gave it up (it goes on there).
    Moved,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::Disconnected => "disconnected",
            EndReason::Ended => "ended",
            EndReason::Shutdown => "shutdown",
            EndReason::SandboxLost => "sandbox_lost",
            EndReason::Abandoned => "abandoned",
            EndReason::Moved => "moved",
        }
    }
}

/// Why a session operation failed. The API maps each to a stable error code.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no sandbox for a new session: {0}")]
    Pool(#[from] PoolError),
    #[error("session store: {0}")]
    Store(#[from] StoreError),
    /// Unknown, expired or ended.
    #[error("session {0} has expired or does not exist")]
    Expired(String),
    /// The resume token does not match.
    #[error("resume token does not match session {0}")]
    BadToken(String),
    /// Another live instance holds the session.
    #[error("session {id} is held by instance {owner}")]
    Elsewhere { id: String, owner: String },
    #[error("no randomness for a resume token: {0}")]
    Random(String),
    /// The session belongs to another token subject.
    #[error("session {0} belongs to another subject")]
    Unauthorized(String),
    /// The token's subject holds its maximum of live sessions.
    #[error("subject {subject} already holds its maximum of {limit} live sessions")]
    TooManySessions { subject: String, limit: usize },
}

/// A new session, with the token the client needs to resume it (only ever returned here).
#[derive(Debug, Clone)]
pub struct Opened {
    pub session: Session,
    pub resume_token: String,
    pub lease: Lease,
}

/// A subject's slot held for a session being opened: freed when dropped unless kept (the
/// session was recorded; deleting it frees the slot then).
struct SubjectSlot {
    store: Arc<dyn SessionStore>,
    subject: String,
    session_id: Option<String>,
}

impl SubjectSlot {
    fn keep(mut self) {
        self.session_id = None;
    }
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        if let Some(id) = self.session_id.take() {
            let (store, subject) = (self.store.clone(), std::mem::take(&mut self.subject));
            // Not awaited here (a drop); if this fails, the reservation expires by itself.
            tokio::spawn(async move {
                if let Err(error) = store.unreserve_subject(&subject, &id).await {
                    tracing::debug!(%error, "freeing a subject's slot failed; it expires");
                }
            });
        }
    }
}

/// A sandbox acquired for a session that is not recorded yet: released when dropped unless
/// the session took it. When the record may have been written (the write was under way), it
/// is deleted first, so that no record ever points at a sandbox another session holds.
struct HeldLease {
    pool: ContainerPool,
    store: Arc<dyn SessionStore>,
    container_id: Option<String>,
    session_id: Option<String>,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(container_id) = self.container_id.take() else {
            return;
        };
        match self.session_id.take() {
            None => {
                let _ = self.pool.release(&container_id);
            }
            Some(session_id) => {
                let (pool, store) = (self.pool.clone(), self.store.clone());
                tokio::spawn(async move {
                    match store.delete(&session_id).await {
                        Ok(_) => {
                            let _ = pool.release(&container_id);
                        }
                        // The record stays and keeps the sandbox: the janitor ends it (and
                        // releases the sandbox) once it expires.
                        Err(error) => {
                            tracing::warn!(%session_id, %error, "deleting an abandoned session record failed")
                        }
                    }
                });
            }
        }
    }
}

/// What a janitor pass did.
#[derive(Debug, Clone, Default)]
pub struct JanitorReport {
    pub examined: usize,
    pub ended: usize,
}

/// Told when a session of this instance ends, so that its socket can hear of it.
pub trait SessionHooks: Send + Sync + 'static {
    fn ended(&self, session: &Session, reason: EndReason);
}

struct Local {
    /// The record as this instance last wrote it, to write again if the store lost it.
    session: Session,
    /// When activity was last written to the store (ms), for throttling.
    last_touch_ms: i64,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    pool: ContainerPool,
    instance: String,
    settings: SessionSettings,
    /// Sessions this instance holds.
    local: Mutex<HashMap<String, Local>>,
    /// Who hears of ended sessions (the socket layer). Weak: that layer holds this manager,
    /// and the manager must not keep it alive in turn.
    hooks: RwLock<Option<Weak<dyn SessionHooks>>>,
    /// Releases this instance asked of other replicas, by session id: where the answer goes.
    pending_releases: Mutex<HashMap<String, oneshot::Sender<bool>>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// Sessions of this instance. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

impl SessionManager {
    /// Sessions `instance` held when it last ran (a crash, a restart): their containers must
    /// be adopted as leased by the pool, not scrubbed. Call before starting the pool.
    pub async fn recover(
        store: &dyn SessionStore,
        instance: &str,
    ) -> Result<Vec<Session>, StoreError> {
        let mut sessions = Vec::new();
        for id in store.owned_by(instance).await? {
            if let Some(s) = store.get(&id).await? {
                sessions.push(s);
            }
        }
        Ok(sessions)
    }

    /// Starts the manager: takes back `recovered` sessions (those whose sandbox the pool
    /// adopted wait for a resume; the others are ended), and starts the janitor, the
    /// heartbeat and the catch-up loop.
    pub async fn start(
        store: Arc<dyn SessionStore>,
        pool: ContainerPool,
        instance: &str,
        settings: SessionSettings,
        recovered: Vec<Session>,
    ) -> Self {
        let manager = Self {
            inner: Arc::new(Inner {
                store,
                pool,
                instance: instance.to_string(),
                settings,
                local: Mutex::new(HashMap::new()),
                hooks: RwLock::new(None),
                pending_releases: Mutex::new(HashMap::new()),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        if let Err(error) = manager.beat().await {
            tracing::warn!(%error, "first heartbeat failed; retrying in the background");
        }
        let now = now_ms();
        for s in recovered {
            if s.state != SessionState::Ending && manager.inner.pool.is_leased(&s.container_id) {
                // Its socket is gone with the old process: the grace starts now.
                let _ = manager.inner.store.detach(&s.id, now).await;
                let mut s = s;
                if s.state == SessionState::Active {
                    s.state = SessionState::Detached;
                    s.detached_at_ms = now;
                }
                manager.local().insert(
                    s.id.clone(),
                    Local {
                        session: s,
                        last_touch_ms: now,
                    },
                );
            } else if s.state != SessionState::Ending {
                // Its sandbox is gone: the session cannot go on.
                if let Ok(Some(claimed)) = manager.inner.store.claim(&s.id, instance, now).await {
                    manager.finish(claimed, EndReason::SandboxLost).await;
                }
            }
            // Ending ones are finished by the janitor's stale-claim sweep.
        }
        let m = manager.clone();
        manager
            .inner
            .tasks
            .spawn(async move { m.janitor_loop().await });
        let m = manager.clone();
        manager
            .inner
            .tasks
            .spawn(async move { m.heartbeat_loop().await });
        let m = manager.clone();
        manager
            .inner
            .tasks
            .spawn(async move { m.watch_pool().await });
        match manager.inner.store.listen(instance).await {
            Ok(rx) => {
                let m = manager.clone();
                manager
                    .inner
                    .tasks
                    .spawn(async move { m.bus_loop(rx).await });
            }
            Err(error) => tracing::warn!(
                %error,
                "cannot listen for hand-overs; other replicas will take this one's sessions only once its heartbeat lapses"
            ),
        }
        manager
    }

    pub(super) fn pending_releases(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<bool>>> {
        self.inner
            .pending_releases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.inner.cancel.cancelled()
    }

    pub(super) fn pool(&self) -> &ContainerPool {
        &self.inner.pool
    }

    /// Removes a local session from this instance's map (it is no longer served here).
    pub(super) fn take_local(&self, id: &str) -> Option<Session> {
        self.local().remove(id).map(|l| l.session)
    }

    /// Tells the hooks (the socket layer) that `s` ended here.
    pub(super) fn tell_ended(&self, s: &Session, reason: EndReason) {
        let hooks = self
            .inner
            .hooks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade);
        if let Some(hooks) = hooks {
            hooks.ended(s, reason);
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.inner.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets who hears of ended sessions. Held weakly: the hooks' owner outlives its use.
    pub fn set_hooks(&self, hooks: Weak<dyn SessionHooks>) {
        *self.inner.hooks.write().unwrap_or_else(|p| p.into_inner()) = Some(hooks);
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// The pool's counts and its Docker gate's, for the status routes and the gauges.
    pub fn pool_status(&self) -> PoolStatus {
        self.inner.pool.status()
    }

    /// Whether a new session can be served now; else why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        self.inner.pool.is_ready()
    }

    /// The longest a new session may wait for its sandbox (in the pool's queue).
    pub fn acquire_timeout(&self) -> Duration {
        self.inner.pool.config().acquire_timeout
    }

    /// The pool under this manager, for tests and benchmarks that drive both layers. The
    /// layers above (`api`) never use it: they see the pool only through this manager.
    #[doc(hidden)]
    pub fn pool_for_tests(&self) -> &ContainerPool {
        &self.inner.pool
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Sessions this instance holds, by state.
    pub fn local_counts(&self) -> HashMap<&'static str, usize> {
        let mut counts = HashMap::from([("active", 0), ("detached", 0), ("ending", 0)]);
        for l in self.local().values() {
            *counts.entry(l.session.state.as_str()).or_default() += 1;
        }
        counts
    }

    /// The record of a session this instance holds.
    pub fn local_session(&self, id: &str) -> Option<Session> {
        self.local().get(id).map(|l| l.session.clone())
    }

    /// Runs `command` with `sh -c` as the tenant in the session's sandbox, streaming its output
    /// to `sink`. The sandbox's supervisor enforces `timeout` (killing the command's whole
    /// process tree); dropping the future kills it too. No Docker call.
    pub async fn run_command(
        &self,
        container_id: &str,
        command: &str,
        timeout: Duration,
        output_limit: usize,
        sink: Option<&tokio::sync::mpsc::Sender<OutputChunk>>,
    ) -> Result<CommandOutput, SessionError> {
        let spec = CommandSpec::shell(command, timeout, output_limit);
        Ok(self.inner.pool.run(container_id, &spec, sink).await?)
    }

    /// Opens a new session with a sandbox from the pool.
    pub async fn open(&self) -> Result<Opened, SessionError> {
        self.open_queued(&mut |_| {}).await
    }

    /// `open_queued` for a token `subject` (`None`: anonymous): refused with
    /// `TooManySessions`, before any sandbox is taken, when the subject holds its maximum of
    /// live sessions over every replica.
    pub async fn open_as(
        &self,
        on_place: &mut (dyn FnMut(Place) + Send),
        subject: Option<&str>,
    ) -> Result<Opened, SessionError> {
        let limit = self.inner.settings.max_sessions_per_subject;
        let (Some(subject), true) = (subject, limit > 0) else {
            let mut opened = self.open_queued(on_place).await?;
            if let Some(subject) = subject {
                opened.session.subject = subject.to_string();
                self.record_subject(&opened.session).await?;
            }
            return Ok(opened);
        };
        let id = uuid::Uuid::new_v4().to_string();
        if !self
            .inner
            .store
            .reserve_subject(subject, &id, limit)
            .await?
        {
            return Err(SessionError::TooManySessions {
                subject: subject.to_string(),
                limit,
            });
        }
        let slot = SubjectSlot {
            store: self.inner.store.clone(),
            subject: subject.to_string(),
            session_id: Some(id.clone()),
        };
        let opened = self.open_inner(on_place, Some((id, subject))).await;
        if opened.is_ok() {
            slot.keep();
        }
        opened
    }

    /// Writes a session's subject (opened anonymously by `open_queued`, no limit to keep).
    async fn record_subject(&self, s: &Session) -> Result<(), SessionError> {
        if let Some(l) = self.local().get_mut(&s.id) {
            l.session.subject = s.subject.clone();
        }
        self.inner.store.put(s).await?;
        Ok(())
    }

    /// `open`, telling `on_place` the caller's place whenever it changes while it waits in
    /// the pool's queue. Cancel-safe: dropped at any point, it leaks neither the sandbox nor
    /// a session record.
    pub async fn open_queued(
        &self,
        on_place: &mut (dyn FnMut(Place) + Send),
    ) -> Result<Opened, SessionError> {
        self.open_inner(on_place, None).await
    }

    /// The open itself; `named` gives the session's id and subject (already reserved).
    async fn open_inner(
        &self,
        on_place: &mut (dyn FnMut(Place) + Send),
        named: Option<(String, &str)>,
    ) -> Result<Opened, SessionError> {
        let lease = self.inner.pool.acquire_queued(on_place).await?;
        // Until the session is recorded, the sandbox goes back if this future is dropped or
        // fails.
        let mut held = HeldLease {
            pool: self.inner.pool.clone(),
            store: self.inner.store.clone(),
            container_id: Some(lease.container_id.clone()),
            session_id: None,
        };
        let (token, hash) = new_resume_token().map_err(|e| SessionError::Random(e.to_string()))?;
        let mut session = Session::new(&self.inner.instance, &lease.container_id, hash, now_ms());
        if let Some((id, subject)) = named {
            session.id = id;
            session.subject = subject.to_string();
        }
        // From here a record may exist: it goes before the sandbox does.
        held.session_id = Some(session.id.clone());
        if let Err(e) = self.inner.store.put(&session).await {
            // The store refused the record: no session, and the sandbox goes back at once
            // (a put that might have landed is only the cancelled case above).
            held.session_id = None;
            return Err(e.into());
        }
        self.local().insert(
            session.id.clone(),
            Local {
                session: session.clone(),
                last_touch_ms: session.last_active_ms,
            },
        );
        held.container_id = None;
        Ok(Opened {
            session,
            resume_token: token,
            lease,
        })
    }

    /// Resumes a session with its token: same sandbox. A session held by an instance that
    /// stopped heartbeating is taken over (its container adopted, not recreated).
    pub async fn resume(&self, id: &str, token: &str) -> Result<Session, SessionError> {
        self.resume_as(id, token, None).await
    }

    /// `resume` for a token `subject`: a session opened with a subject resumes only with
    /// that subject.
    pub async fn resume_as(
        &self,
        id: &str,
        token: &str,
        subject: Option<&str>,
    ) -> Result<Session, SessionError> {
        let store = &self.inner.store;
        let mut s = store
            .get(id)
            .await?
            .ok_or_else(|| SessionError::Expired(id.to_string()))?;
        if !token_matches(token, &s.token_hash) {
            return Err(SessionError::BadToken(id.to_string()));
        }
        if !s.subject.is_empty() && subject != Some(s.subject.as_str()) {
            return Err(SessionError::Unauthorized(id.to_string()));
        }
        if s.state == SessionState::Ending {
            return Err(SessionError::Expired(id.to_string()));
        }
        let me = &self.inner.instance;
        if &s.owner != me {
            // Live owner: an orderly hand-over; dead owner (heartbeat lapsed, or Docker says
            // its container is down): a takeover (handover.rs).
            let released = if store.is_alive(&s.owner).await? {
                match self.ask_release(&s).await? {
                    Asked::Released => true,
                    Asked::Refused => return Err(SessionError::Expired(id.to_string())),
                    Asked::Silent
                        if self.inner.pool.instance_down(&s.owner).await == Some(true) =>
                    {
                        false
                    }
                    Asked::Silent => {
                        return Err(SessionError::Elsewhere {
                            id: id.to_string(),
                            owner: s.owner.clone(),
                        });
                    }
                }
            } else {
                false
            };
            if !released && !store.transfer(id, &s.owner, me).await? {
                return Err(SessionError::Expired(id.to_string()));
            }
            if let Err(e) = self.inner.pool.adopt_leased(&s.container_id).await {
                tracing::warn!(session_id = %id, error = %e, "taking over a session whose sandbox is gone");
                if let Ok(Some(claimed)) = store.claim(id, me, now_ms()).await {
                    self.finish(claimed, EndReason::SandboxLost).await;
                }
                return Err(SessionError::Expired(id.to_string()));
            }
            if released {
                tracing::info!(session_id = %id, from = %s.owner, "a live replica handed its session over");
            } else {
                tracing::info!(session_id = %id, from = %s.owner, "took over a session from a stopped instance");
            }
            s.owner = me.clone();
        }
        let now = now_ms();
        if !store.reattach(id, now).await? {
            return Err(SessionError::Expired(id.to_string()));
        }
        s.state = SessionState::Active;
        s.detached_at_ms = 0;
        s.last_active_ms = s.last_active_ms.max(now);
        self.local().insert(
            id.to_string(),
            Local {
                session: s.clone(),
                last_touch_ms: now,
            },
        );
        Ok(s)
    }

    /// Records activity, writing to the store at most once per `touch_every`.
    pub async fn touch(&self, id: &str) {
        let now = now_ms();
        let due = {
            let mut local = self.local();
            match local.get_mut(id) {
                Some(l)
                    if now - l.last_touch_ms
                        >= self.inner.settings.touch_every.as_millis() as i64 =>
                {
                    l.last_touch_ms = now;
                    l.session.last_active_ms = now;
                    true
                }
                _ => false,
            }
        };
        if due && let Err(error) = self.inner.store.touch(id, now).await {
            tracing::debug!(session_id = %id, %error, "recording activity failed");
        }
    }

    /// The session's socket dropped: it keeps its sandbox for the reconnect grace.
    pub async fn detach(&self, id: &str) {
        let now = now_ms();
        if let Some(l) = self.local().get_mut(id) {
            l.session.state = SessionState::Detached;
            l.session.detached_at_ms = now;
        } else {
            return;
        }
        if let Err(error) = self.inner.store.detach(id, now).await {
            tracing::warn!(session_id = %id, %error, "marking a session detached failed; the catch-up loop will retry");
        }
        // Bound what dropped connections hold: past the cap, the longest-detached go now.
        let excess: Vec<String> = {
            let local = self.local();
            let mut detached: Vec<(i64, &String)> = local
                .iter()
                .filter(|(_, l)| l.session.state == SessionState::Detached)
                .map(|(id, l)| (l.session.detached_at_ms, id))
                .collect();
            let over = detached
                .len()
                .saturating_sub(self.inner.settings.max_detached);
            detached.sort();
            detached
                .into_iter()
                .take(over)
                .map(|(_, id)| id.clone())
                .collect()
        };
        for id in excess {
            tracing::info!(session_id = %id, "too many detached sessions; ending the longest-detached");
            if let Err(error) = self.end(&id, EndReason::Disconnected).await {
                tracing::warn!(session_id = %id, %error, "ending a detached session failed");
            }
        }
    }

    /// Ends a session now. `false` when it was already ending or gone.
    pub async fn end(&self, id: &str, reason: EndReason) -> Result<bool, SessionError> {
        match self
            .inner
            .store
            .claim(id, &self.inner.instance, now_ms())
            .await?
        {
            Some(s) => {
                self.finish(s, reason).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Ends a claimed session: tells its socket, gives the sandbox back (or removes a dead
    /// instance's), deletes the record.
    async fn finish(&self, s: Session, reason: EndReason) {
        self.local().remove(&s.id);
        self.tell_ended(&s, reason);
        if s.owner == self.inner.instance {
            match self.inner.pool.release(&s.container_id) {
                Ok(_) | Err(PoolError::NotLeased(_)) => {}
                Err(error) => {
                    tracing::warn!(session_id = %s.id, %error, "releasing a sandbox failed")
                }
            }
        } else {
            // A stopped instance's session: its container is not in our pool.
            self.inner.pool.remove_foreign(&s.container_id).await;
        }
        if let Err(error) = self.inner.store.delete(&s.id).await {
            tracing::warn!(session_id = %s.id, %error, "deleting an ended session failed; the stale-claim sweep will finish it");
        }
        tracing::info!(session_id = %s.id, reason = reason.as_str(), "session ended");
    }

    /// One janitor pass: ends every session past its idle TTL or its reconnect grace, and
    /// finishes ends that a dead claimer left half-done. Bounded batches; each session is
    /// claimed atomically, so two janitors never end the same one.
    pub async fn janitor_pass(&self) -> Result<JanitorReport, StoreError> {
        let now = now_ms();
        let st = &self.inner.settings;
        let cutoffs = Cutoffs {
            idle_before_ms: now - st.idle_ttl.as_millis() as i64,
            detached_before_ms: now - st.reconnect_grace.as_millis() as i64,
            claimed_before_ms: now - super::STALE_CLAIM_MS,
        };
        let mut report = JanitorReport::default();
        for sweep in [Sweep::Idle, Sweep::Detached, Sweep::StaleClaim] {
            let mut offset = 0;
            loop {
                let ids = self
                    .inner
                    .store
                    .candidates(sweep, &cutoffs, offset, st.janitor_batch)
                    .await?;
                if ids.is_empty() {
                    break;
                }
                report.examined += ids.len();
                let claimed = self
                    .inner
                    .store
                    .claim_expired(&ids, &cutoffs, &self.inner.instance, now)
                    .await?;
                offset += ids.len() - claimed.len();
                report.ended += claimed.len();
                join_all(claimed.into_iter().map(|s| {
                    let reason = match sweep {
                        Sweep::StaleClaim => EndReason::Abandoned,
                        _ if s.detached_at_ms > 0
                            && s.detached_at_ms <= cutoffs.detached_before_ms =>
                        {
                            EndReason::Disconnected
                        }
                        _ => EndReason::Idle,
                    };
                    self.finish(s, reason)
                }))
                .await;
                if ids.len() < st.janitor_batch {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(report)
    }

    async fn janitor_loop(&self) {
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(self.inner.settings.janitor_interval) => {}
            }
            match self.janitor_pass().await {
                Ok(report) if report.ended > 0 => {
                    tracing::info!(
                        ended = report.ended,
                        examined = report.examined,
                        "janitor pass"
                    )
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "janitor pass failed; next pass retries"),
            }
            self.catch_up().await;
            self.sweep_dead_instances().await;
        }
    }

    pub(super) fn settings(&self) -> &SessionSettings {
        &self.inner.settings
    }

    /// Writes again any session of this instance that the store lost (a Redis restart
    /// without persistence), and forgets sessions another instance took over.
    pub async fn catch_up(&self) {
        let mine: Vec<Session> = self.local().values().map(|l| l.session.clone()).collect();
        for s in mine {
            match self.inner.store.get(&s.id).await {
                Ok(None) => {
                    if let Err(error) = self.inner.store.put(&s).await {
                        tracing::debug!(session_id = %s.id, %error, "catch-up write failed");
                    } else {
                        tracing::info!(session_id = %s.id, "session written again after the store lost it");
                    }
                }
                Ok(Some(stored)) if stored.owner != self.inner.instance => {
                    // Taken over while this instance's heartbeat lapsed: the sandbox is the
                    // new owner's now. Give up the lease (no scrub, no removal), or its place
                    // in the pool would stay taken for good.
                    self.local().remove(&s.id);
                    self.inner.pool.hand_over(&s.container_id);
                }
                Ok(Some(stored))
                    if stored.state == SessionState::Active
                        && s.state == SessionState::Detached =>
                {
                    let _ = self.inner.store.detach(&s.id, s.detached_at_ms).await;
                }
                Ok(Some(_)) => {}
                Err(_) => return, // the store is down; try next time
            }
        }
    }

    async fn beat(&self) -> Result<(), StoreError> {
        self.inner
            .store
            .heartbeat(&self.inner.instance, self.inner.settings.heartbeat_ttl)
            .await
    }

    async fn heartbeat_loop(&self) {
        let every = self.inner.settings.heartbeat_ttl / 3;
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.beat().await {
                tracing::warn!(%error, "heartbeat failed");
            }
        }
    }

    /// Ends sessions whose sandbox died. A receiver that lagged behind has missed events, so
    /// it asks the pool about every local session's sandbox instead of skipping them.
    async fn watch_pool(&self) {
        // The pool publishes which leases are lost as a state that changes, not as events:
        // however long this loop is busy ending sessions, it cannot miss a death.
        let mut lost = self.inner.pool.watch_lost();
        loop {
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                changed = lost.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            for container_id in self.inner.pool.lost_leases() {
                self.end_lost(&container_id).await;
            }
        }
    }

    /// Ends the local session whose sandbox is `container_id`, which died.
    async fn end_lost(&self, container_id: &str) {
        let id = self
            .local()
            .iter()
            .find(|(_, l)| l.session.container_id == container_id)
            .map(|(id, _)| id.clone());
        if let Some(id) = id
            && let Err(error) = self.end(&id, EndReason::SandboxLost).await
        {
            tracing::warn!(session_id = %id, %error, "ending a session whose sandbox died failed");
        }
    }

    /// Stops the loops without ending anything or withdrawing the heartbeat, as a crash
    /// would: the sessions stay in the store for a restart (or another instance, once the
    /// heartbeat lapses) to take back.
    pub async fn abandon(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.local().clear();
    }

    /// Stops the loops and ends every session of this instance (their sockets hear
    /// `shutdown`), then withdraws the heartbeat. The pool is shut down after this.
    pub async fn shutdown(&self, within: Duration) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        let ids: Vec<String> = self.local().keys().cloned().collect();
        let deadline = tokio::time::Instant::now() + within;
        let ends = join_all(ids.iter().map(|id| self.end(id, EndReason::Shutdown)));
        if tokio::time::timeout_at(deadline, ends).await.is_err() {
            tracing::warn!("ending sessions at shutdown timed out");
        }
        let _ = tokio::time::timeout_at(deadline, self.inner.tasks.wait()).await;
        if let Err(error) = self
            .inner
            .store
            .remove_heartbeat(&self.inner.instance)
            .await
        {
            tracing::debug!(%error, "withdrawing the heartbeat failed; it expires by itself");
        }
    }
}
