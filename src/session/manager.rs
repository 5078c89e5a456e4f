//! The session manager: sessions of this instance and their sandboxes: start and recovery,
//! touch, detach, end, commands, shutdown. Opening and resuming are in `open.rs`, the
//! background loops in `upkeep.rs`, moves between replicas in `handover.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::calls::PendingCall;
use super::error::{EndReason, SessionError};
use super::model::{Session, SessionState, now_ms};
use super::store::{Cutoffs, InstanceClaim, SessionStore, Sweep};
use crate::config::SessionConfig;
use crate::pool::{
    CommandOutput, CommandSpec, ContainerPool, Lease, LeaseRef, OutputChunk, PoolError, PoolStatus,
    Startup,
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
    /// hold more sandboxes than this. (Below it, a detached session still yields its sandbox
    /// to a new session queued at the pool's maximum.)
    pub max_detached: usize,
    /// Commands one session may run at once, over all its connections.
    pub max_commands_per_session: usize,
    /// Where other replicas reach this one (its internal URL), written with the heartbeat;
    /// `None`: not written (a single replica).
    pub advertise: Option<String>,
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
            max_commands_per_session: 5,
            advertise: None,
        }
    }
}

impl SessionSettings {
    /// How long this instance serves its sessions after its last renewed heartbeat: two
    /// thirds of the TTL, so that it stops (self-fences) well before another replica may take
    /// them over, even if it froze in between.
    pub fn self_fence_after(&self) -> Duration {
        self.heartbeat_ttl * 2 / 3
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self::from_config(&SessionConfig::default())
    }
}

/// How long a stopping replica waits, after withdrawing its heartbeat, before it counts its
/// live peers: replicas stopped at the same moment withdraw theirs meanwhile.
const DRAIN_SETTLE: Duration = Duration::from_millis(500);

/// Activity is written to the store at most once per session per this.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// A new session, with the token the client needs to resume it (only ever returned here).
#[derive(Debug, Clone)]
pub struct Opened {
    pub session: Session,
    pub resume_token: String,
    /// The session's workspace token (the agent's credential, see `SessionManager::workspace`).
    pub workspace_token: String,
    pub lease: Lease,
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

pub(super) struct Local {
    /// The record as this instance last wrote it, to write again if the store lost it.
    pub(super) session: Session,
    /// When activity was last written to the store (ms), for throttling.
    pub(super) last_touch_ms: i64,
    /// The session's commands running now: the bound is the session's, whatever connection
    /// (or resume) runs them.
    pub(super) commands: Arc<Semaphore>,
    /// Tool calls waiting for the user's approval, by call id. The session's, so that a call
    /// proposed before a reconnect can be approved after it.
    pub(super) proposals: HashMap<String, PendingCall>,
}

impl Local {
    pub(super) fn new(session: Session, last_touch_ms: i64, settings: &SessionSettings) -> Self {
        Self {
            session,
            last_touch_ms,
            commands: Arc::new(Semaphore::new(settings.max_commands_per_session)),
            proposals: HashMap::new(),
        }
    }
}

/// Sessions that changed hands through this instance (counters for the metrics).
#[derive(Debug, Default)]
pub(super) struct Moves {
    /// Given to a live replica that asked (a hand-over out).
    pub(super) handed_out: std::sync::atomic::AtomicU64,
    /// Received from a live replica that released it (a hand-over in).
    pub(super) handed_in: std::sync::atomic::AtomicU64,
    /// Taken over from a dead (or draining) replica.
    pub(super) taken_over: std::sync::atomic::AtomicU64,
    /// Left for a peer to resume when this instance stopped (drain).
    pub(super) drained: std::sync::atomic::AtomicU64,
}

impl Moves {
    pub(super) fn count(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What an instance needs from the store before its pool starts (see
/// [`SessionManager::recover`]).
#[derive(Debug, Clone)]
pub struct Recovery {
    /// This process's incarnation: a random id that holds the instance id's heartbeat.
    pub incarnation: String,
    /// Sessions this instance held when it last ran (a crash, a restart).
    pub sessions: Vec<Session>,
    /// For the pool: those sessions' leases, what this instance handed over, and the epoch
    /// its fencing tokens start at.
    pub startup: Startup,
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) pool: ContainerPool,
    pub(super) instance: String,
    /// This process's incarnation, which holds the instance id's heartbeat.
    pub(super) incarnation: String,
    pub(super) settings: SessionSettings,
    /// Until when this instance may serve its sessions: a bit before its heartbeat could
    /// lapse (renewed with every heartbeat). `None`: never again (another process took the
    /// instance id).
    pub(super) serving_until: Mutex<Option<Instant>>,
    /// Sessions this instance holds.
    pub(super) local: Mutex<HashMap<String, Local>>,
    /// Sessions that changed hands through this instance, since start.
    pub(super) moves: Moves,
    /// Who hears of ended sessions (the socket layer). Weak: that layer holds this manager,
    /// and the manager must not keep it alive in turn.
    pub(super) hooks: RwLock<Option<Weak<dyn SessionHooks>>>,
    /// Releases this instance asked of other replicas, by session id: where the answer goes.
    pub(super) pending_releases: Mutex<HashMap<String, oneshot::Sender<bool>>>,
    pub(super) cancel: CancellationToken,
    pub(super) tasks: TaskTracker,
}

/// Sessions of this instance. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    pub(super) inner: Arc<Inner>,
}

impl SessionManager {
    /// Claims `instance` for this process and reads what it needs before its pool starts:
    /// the sessions it held when it last ran (their sandboxes are adopted as leased, not
    /// scrubbed), the sandboxes it handed to others (left alone), and a new epoch for its
    /// fencing tokens. A crashed predecessor's heartbeat is waited out (up to its TTL); a
    /// heartbeat that another live process renews meanwhile refuses the start
    /// (`InstanceInUse`): two processes never share an instance id.
    pub async fn recover(
        store: &dyn SessionStore,
        instance: &str,
        settings: &SessionSettings,
    ) -> Result<Recovery, SessionError> {
        let incarnation = uuid::Uuid::new_v4().to_string();
        let ttl = settings.heartbeat_ttl;
        let mut waited_for: Option<String> = None;
        loop {
            match store.claim_instance(instance, &incarnation, ttl).await? {
                InstanceClaim::Claimed => break,
                InstanceClaim::Held {
                    incarnation: held,
                    ttl_left,
                } => {
                    if waited_for.is_some() {
                        // It was renewed (or taken anew) while this one waited: it is alive.
                        return Err(SessionError::InstanceInUse {
                            instance: instance.to_string(),
                        });
                    }
                    tracing::warn!(
                        instance,
                        wait_ms = ttl_left.as_millis() as u64,
                        "another incarnation's heartbeat holds this instance id (a crash before this start?); waiting it out"
                    );
                    waited_for = Some(held);
                    tokio::time::sleep(ttl_left + Duration::from_millis(50)).await;
                }
            }
        }
        let mut sessions = Vec::new();
        for id in store.owned_by(instance).await? {
            if let Some(s) = store.get(&id).await? {
                sessions.push(s);
            }
        }
        let startup = Startup {
            keep_leased: sessions
                .iter()
                .filter(|s| s.state != SessionState::Ending)
                .map(Session::lease)
                .collect(),
            handed: store.handed(instance).await?.into_iter().collect(),
            epoch: store.next_epoch(0).await?,
        };
        Ok(Recovery {
            incarnation,
            sessions,
            startup,
        })
    }

    /// Starts the manager: takes back `recovered` sessions (those whose sandbox the pool
    /// adopted wait for a resume; the others are ended), and starts the janitor, the
    /// heartbeat and the catch-up loop.
    pub async fn start(
        store: Arc<dyn SessionStore>,
        pool: ContainerPool,
        instance: &str,
        settings: SessionSettings,
        recovery: Recovery,
    ) -> Self {
        let recovered = recovery.sessions;
        let serving_until = Instant::now() + settings.self_fence_after();
        let manager = Self {
            inner: Arc::new(Inner {
                store,
                pool,
                instance: instance.to_string(),
                incarnation: recovery.incarnation,
                serving_until: Mutex::new(Some(serving_until)),
                settings,
                local: Mutex::new(HashMap::new()),
                moves: Moves::default(),
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
            if s.state != SessionState::Ending
                && manager.inner.pool.lease_of(&s.container_id) == Some(s.lease())
            {
                // Its socket is gone with the old process: the grace starts now.
                let _ = manager.inner.store.detach(&s.id, instance, now).await;
                let mut s = s;
                if s.state == SessionState::Active {
                    s.state = SessionState::Detached;
                    s.detached_at_ms = now;
                }
                let local = Local::new(s, now, &manager.inner.settings);
                manager.local().insert(local.session.id.clone(), local);
            } else if s.state != SessionState::Ending {
                // Its sandbox is gone: the session cannot go on.
                if let Ok(Some(claimed)) = manager.inner.store.claim(&s.id, instance, now).await {
                    manager
                        .finish_claimed(claimed, EndReason::SandboxLost)
                        .await;
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

    pub(super) fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
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

    /// Sessions that changed hands through this instance since start, by kind
    /// (`handed_out`, `handed_in`, `taken_over`, `drained`), and the operations refused
    /// under a stale lease (`stale_refused`): what the ownership metrics show.
    pub fn ownership_counts(&self) -> [(&'static str, u64); 5] {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.inner.moves;
        [
            ("handed_out", m.handed_out.load(Relaxed)),
            ("handed_in", m.handed_in.load(Relaxed)),
            ("taken_over", m.taken_over.load(Relaxed)),
            ("drained", m.drained.load(Relaxed)),
            ("stale_refused", self.inner.pool.status().stale_refusals),
        ]
    }

    /// Whether the store's bus (hand-overs between replicas) is subscribed.
    pub fn bus_up(&self) -> bool {
        self.inner.store.bus_up()
    }

    /// The record of a session this instance holds.
    pub fn local_session(&self, id: &str) -> Option<Session> {
        self.local().get(id).map(|l| l.session.clone())
    }

    /// Runs `command` with `sh -c` as the tenant in the sandbox of local session
    /// `session_id`, under its lease, streaming its output to `sink`. The sandbox's
    /// supervisor enforces `timeout` (killing the command's whole process tree); dropping the
    /// future kills it too. No Docker call and no store round trip: the lease is the one this
    /// instance holds, checked by the pool, and a self-fenced instance refuses at once.
    pub async fn run_command(
        &self,
        session_id: &str,
        command: &str,
        timeout: Duration,
        output_limit: usize,
        sink: Option<&tokio::sync::mpsc::Sender<OutputChunk>>,
    ) -> Result<CommandOutput, SessionError> {
        let spec = CommandSpec::shell(command, timeout, output_limit);
        self.run_spec(session_id, &spec, sink).await
    }

    /// Runs `spec` as the tenant in the sandbox of local session `session_id` (see
    /// [`SessionManager::run_command`]).
    pub async fn run_spec(
        &self,
        session_id: &str,
        spec: &CommandSpec,
        sink: Option<&tokio::sync::mpsc::Sender<OutputChunk>>,
    ) -> Result<CommandOutput, SessionError> {
        let lease = self.serving_lease(session_id)?;
        Ok(self.inner.pool.run(&lease, spec, sink).await?)
    }

    /// The lease of a local session, if this instance may serve it now.
    pub(super) fn serving_lease(&self, session_id: &str) -> Result<LeaseRef, SessionError> {
        self.check_serving()?;
        self.local()
            .get(session_id)
            .filter(|l| l.session.state != SessionState::Ending)
            .map(|l| l.session.lease())
            .ok_or_else(|| SessionError::NotHere(session_id.to_string()))
    }

    /// Refuses when this instance has self-fenced (see [`SessionSettings::self_fence_after`]).
    pub fn check_serving(&self) -> Result<(), SessionError> {
        match *self
            .inner
            .serving_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(until) if Instant::now() < until => Ok(()),
            Some(_) => Err(SessionError::SelfFenced(
                "its heartbeat could not be renewed in time",
            )),
            None => Err(SessionError::SelfFenced(
                "another process took its instance id",
            )),
        }
    }

    /// A place among the session's running commands (at most
    /// `max_commands_per_session` at once, over all its connections), held until dropped.
    pub fn command_permit(&self, session_id: &str) -> Result<OwnedSemaphorePermit, SessionError> {
        let commands = self
            .local()
            .get(session_id)
            .map(|l| l.commands.clone())
            .ok_or_else(|| SessionError::NotHere(session_id.to_string()))?;
        commands
            .try_acquire_owned()
            .map_err(|_| SessionError::Busy {
                id: session_id.to_string(),
                limit: self.inner.settings.max_commands_per_session,
            })
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
        if let Err(error) = self.inner.store.detach(id, &self.inner.instance, now).await {
            tracing::warn!(session_id = %id, %error, "marking a session detached failed; the catch-up loop will retry");
        }
        // Bound what dropped connections hold: past the cap, the longest-detached go now.
        let cap = self.inner.settings.max_detached;
        for id in self.pick_longest_detached(|detached| detached.saturating_sub(cap)) {
            self.end_detached_early(&id, "too many detached sessions")
                .await;
        }
    }

    /// A new session waits in the pool's queue with the pool at its maximum: the sandbox of
    /// this instance's longest-detached session (if any) goes to it, so that dropped
    /// connections never keep a live client waiting; the sandbox is scrubbed and goes to the
    /// head of the queue. All the work is in a tracked task: this is called from the queue's
    /// place callback, which runs while the pool's place watch is borrowed.
    pub(super) fn yield_a_detached_sandbox(&self) {
        let m = self.clone();
        self.inner.tasks.spawn(async move {
            let status = m.inner.pool.status();
            if status.total < status.max {
                return; // the refill creates one for the queue
            }
            for id in m.pick_longest_detached(|detached| detached.min(1)) {
                m.end_detached_early(&id, "a live client waits for its sandbox")
                    .await;
            }
        });
    }

    /// The ids of the `how_many(detached count)` longest-detached local sessions, marked
    /// `ending` here at once so that no other caller picks them too.
    fn pick_longest_detached(&self, how_many: impl FnOnce(usize) -> usize) -> Vec<String> {
        let mut local = self.local();
        let mut detached: Vec<(i64, String)> = local
            .iter()
            .filter(|(_, l)| l.session.state == SessionState::Detached)
            .map(|(id, l)| (l.session.detached_at_ms, id.clone()))
            .collect();
        let n = how_many(detached.len());
        detached.sort();
        detached.truncate(n);
        for (_, id) in &detached {
            if let Some(l) = local.get_mut(id) {
                l.session.state = SessionState::Ending;
            }
        }
        detached.into_iter().map(|(_, id)| id).collect()
    }

    /// Ends a detached session before its grace is over (`why`: for the log).
    async fn end_detached_early(&self, id: &str, why: &'static str) {
        tracing::info!(session_id = %id, why, "ending a detached session early");
        if let Err(error) = self.end(id, EndReason::Disconnected).await {
            tracing::warn!(session_id = %id, %error, "ending a detached session failed");
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
                self.finish_claimed(s, reason).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Ends a claimed session: tells its socket, gives the sandbox back (or removes a dead
    /// instance's), deletes the record.
    pub(super) async fn finish_claimed(&self, s: Session, reason: EndReason) {
        self.local().remove(&s.id);
        self.tell_ended(&s, reason);
        if s.owner == self.inner.instance {
            // Under the record's lease: a stale record (its sandbox released and leased again,
            // or taken over since) touches nothing.
            match self.inner.pool.release(&s.lease()) {
                Ok(_) => {}
                Err(PoolError::NotLeased(_)) => self.remove_stranded(&s).await,
                Err(error) => {
                    tracing::warn!(session_id = %s.id, %error, "releasing a sandbox failed")
                }
            }
        } else {
            // A stopped instance's session: its container is not in our pool. Removed only if
            // the store does not name another session or a newer lease for it.
            match self.inner.store.sandbox_owner(&s.container_id).await {
                Ok(Some(owner)) if owner.session_id != s.id || owner.fence != s.fence => {
                    tracing::info!(session_id = %s.id, container_id = %s.container_id, "not removing a sandbox another session holds now");
                }
                // The store names this session's lease: nobody holds the sandbox but the
                // session ending here. This pool may have handed it over to the stopped
                // instance before (it moved there, and that instance stopped before it took
                // it in, or restarted without room for it): that mark is stale now, and the
                // sandbox goes whatever it says.
                Ok(Some(_)) => self.inner.pool.remove_stranded(&s.container_id).await,
                Ok(None) => self.inner.pool.remove_foreign(&s.container_id).await,
                Err(error) => {
                    tracing::warn!(session_id = %s.id, %error, "cannot tell who holds a stopped instance's sandbox; leaving it to the sweep")
                }
            }
        }
        if let Err(error) = self.inner.store.delete(&s.id).await {
            tracing::warn!(session_id = %s.id, %error, "deleting an ended session failed; the stale-claim sweep will finish it");
        }
        tracing::info!(session_id = %s.id, reason = reason.as_str(), "session ended");
    }

    /// Other instances of this store whose heartbeat is alive; `None` when the store cannot
    /// tell (down), which is not the same as none.
    async fn live_peers(&self) -> Option<usize> {
        let known = self.inner.store.known_instances().await.ok()?;
        let mut live = 0;
        for instance in known.iter().filter(|i| **i != self.inner.instance) {
            if self.inner.store.is_alive(instance).await.ok()? {
                live += 1;
            }
        }
        Some(live)
    }

    /// Leaves every local session for a peer to resume (see [`SessionManager::shutdown`]):
    /// each is marked detached, its socket hears `moved`, and its sandbox is given up (link
    /// closed, left running). This instance has stopped serving and withdrawn its heartbeat
    /// before, so no command runs here once a peer may take a session over.
    async fn drain(&self) {
        let now = now_ms();
        let sessions: Vec<Session> = self
            .local()
            .values()
            .filter(|l| l.session.state != SessionState::Ending)
            .map(|l| l.session.clone())
            .collect();
        for s in sessions {
            if let Err(error) = self
                .inner
                .store
                .detach(&s.id, &self.inner.instance, now)
                .await
            {
                tracing::warn!(session_id = %s.id, %error, "marking a drained session detached failed");
            }
            self.tell_ended(&s, EndReason::Moved);
            self.local().remove(&s.id);
            self.inner.pool.hand_over(&s.lease());
            Moves::count(&self.inner.moves.drained);
            tracing::info!(session_id = %s.id, "session left for a peer to resume");
        }
    }

    /// The last replica out (no live peer) ends every session no live instance serves: its
    /// own, and those that replicas stopping or dying before it left for a peer. Nobody is
    /// left to resume them, so their sandboxes are removed now rather than outliving the
    /// deployment. Each is claimed atomically (its owner must be this instance or dead), as
    /// the janitor does.
    async fn end_unserved(&self) {
        let now = now_ms();
        let cutoffs = Cutoffs {
            idle_before_ms: i64::MAX,
            detached_before_ms: i64::MAX,
            claimed_before_ms: now - super::STALE_CLAIM_MS,
        };
        let batch = self.inner.settings.janitor_batch;
        let mut offset = 0;
        loop {
            let ids = match self
                .inner
                .store
                .candidates(Sweep::Idle, &cutoffs, offset, batch)
                .await
            {
                Ok(ids) if !ids.is_empty() => ids,
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "shutdown: listing sessions failed; the janitors of the next start end them");
                    return;
                }
            };
            let claimed = match self
                .inner
                .store
                .claim_expired(&ids, &cutoffs, &self.inner.instance, now)
                .await
            {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "shutdown: claiming sessions failed");
                    return;
                }
            };
            offset += ids.len() - claimed.len();
            join_all(
                claimed
                    .into_iter()
                    .map(|s| self.finish_claimed(s, EndReason::Shutdown)),
            )
            .await;
            if ids.len() < batch {
                return;
            }
        }
    }

    /// An ended session of this instance whose sandbox the pool does not hold. Usually the
    /// sandbox died or was released already; but when a hand-over or takeover to this
    /// instance moved the record and the previous holder let the sandbox go, and this pool
    /// then could not take it in (full, or refused by the supervisor), the sandbox belongs to
    /// nobody: the previous holder counts it as handed over and every janitor as held, so
    /// without this it would outlive every replica. It is removed if the store still names
    /// this session's lease for it (a stale record, whose sandbox has another session or a
    /// newer lease, touches nothing).
    async fn remove_stranded(&self, s: &Session) {
        match self.inner.store.sandbox_owner(&s.container_id).await {
            Ok(Some(holder))
                if holder.owner == self.inner.instance
                    && holder.session_id == s.id
                    && holder.fence == s.fence =>
            {
                self.inner.pool.remove_stranded(&s.container_id).await;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(session_id = %s.id, %error, "cannot tell whether an ended session's sandbox is stranded; leaving it")
            }
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

    /// Stops the loops and this instance's serving, withdraws its heartbeat, and, after a
    /// short settle, when other live replicas share the store, **drains**: every session is
    /// left to be resumed on a peer (their sockets hear `moved`; the sandboxes stay running,
    /// files and processes intact, for whoever takes them over; a session nobody resumes ends
    /// on a peer's janitor after the reconnect grace). Without live peers (the last one out)
    /// it ends every session no live instance serves, its own and those others left (their
    /// sockets hear `shutdown`), and removes the sandboxes it had handed over. The pool is shut
    /// down after this (it leaves the drained and handed-over sandboxes alone).
    pub async fn shutdown(&self, within: Duration) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        let deadline = tokio::time::Instant::now() + within;
        // Sessions the store names as this instance's although it does not serve them: a
        // hand-over to it that the owner answered after this instance's ask had given up (the
        // answer late, or lost with a Redis restart) moved the record here, and the sandbox was
        // never taken in. Ending them removes that sandbox (`remove_stranded`); nothing else
        // would before their idle TTL. Found before a drain, which leaves its own sessions
        // recorded here for the peers to take.
        let stranded: Vec<String> = match tokio::time::timeout_at(
            deadline,
            self.inner.store.owned_by(&self.inner.instance),
        )
        .await
        {
            Ok(Ok(owned)) => {
                let local = self.local();
                owned
                    .into_iter()
                    .filter(|id| !local.contains_key(id))
                    .collect()
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "shutdown: cannot list this instance's sessions in the store; ending the local ones");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!("shutdown: listing this instance's sessions timed out");
                Vec::new()
            }
        };
        // Stop serving and withdraw the heartbeat first: from now on no command runs here,
        // and peers may take this instance's sessions over at once. Replicas stopped at the
        // same moment (a whole stack going down) do the same; after a short settle they are
        // no longer counted as peers, so they do not leave sessions to each other.
        *self
            .inner
            .serving_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        if let Err(error) = self
            .inner
            .store
            .remove_heartbeat(&self.inner.instance, &self.inner.incarnation)
            .await
        {
            tracing::warn!(%error, "withdrawing the heartbeat failed; it lapses by itself");
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + DRAIN_SETTLE)).await;
        let peers = tokio::time::timeout_at(deadline, self.live_peers())
            .await
            .ok()
            .flatten();
        if let Some(peers) = peers.filter(|p| *p > 0) {
            tracing::info!(
                peers,
                "live peers share the store: handing this replica's sessions to them"
            );
            if tokio::time::timeout_at(deadline, self.drain())
                .await
                .is_err()
            {
                tracing::warn!("draining sessions at shutdown timed out");
            }
        }
        let mut ids: Vec<String> = self.local().keys().cloned().collect();
        ids.extend(stranded);
        let ends = join_all(ids.iter().map(|id| self.end(id, EndReason::Shutdown)));
        if tokio::time::timeout_at(deadline, ends).await.is_err() {
            tracing::warn!("ending sessions at shutdown timed out");
        }
        // The last one out. Only when the store says so: a store that cannot answer says
        // nothing about peers, which may be serving what this instance handed them.
        if peers == Some(0) {
            if tokio::time::timeout_at(deadline, self.end_unserved())
                .await
                .is_err()
            {
                tracing::warn!("ending unserved sessions at shutdown timed out");
            }
            // What it handed over is nobody's now: a session moved on whose record the store
            // lost (a Redis restart) before its new holder took the sandbox in is ended by no
            // janitor and held by no pool.
            if tokio::time::timeout_at(deadline, self.inner.pool.remove_handed_over())
                .await
                .is_err()
            {
                tracing::warn!("removing handed-over sandboxes at shutdown timed out");
            }
        }
        let _ = tokio::time::timeout_at(deadline, self.inner.tasks.wait()).await;
    }
}
