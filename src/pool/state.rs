//! The pool's state: which container is where, and the only code that changes it.
//!
//! Every container of the pool is in exactly one place at a time (`creating` by name, then by
//! id in `idle`, `leased`, `scrubbing` or `destroying`), and those places together never hold
//! more than `max`. Every change is one of the named transitions below, made under the pool's
//! one mutex (never held across an `.await`); each ends by checking the invariant in debug
//! builds. Containers the pool only removes (strays, left-overs that do not fit) and
//! containers handed over to another instance are outside the count. Callers ask for a
//! transition; none of them touches the collections.
//!
//! Why this file is over 400 lines: it is one room on purpose. Every transition and the
//! invariant check live together, so that one file shows every way a container can move and
//! nothing outside it can move one; the queries beside them only read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::queue::{Demand, Place, Waiter};
use super::supervisor::{SupervisorError, SupervisorLink};
use super::{Lease, LeaseRef, PoolError};

/// One container the pool holds.
#[derive(Debug)]
pub(super) struct Sandbox {
    pub id: String,
    pub name: String,
    pub created_unix: i64,
    /// Leases served, the current one included.
    pub uses: u32,
    /// Docker (or its supervisor link) reported it dead while leased; its release destroys it.
    pub dead: bool,
    /// Adopted from another (stopped) instance with a session it held: labeled for that
    /// instance, so it is destroyed on release rather than kept in this pool.
    pub foreign: bool,
    /// The newest generation this pool has used with its supervisor: the current lease's
    /// fencing token while leased, that token + 1 for the scrub after it.
    pub fence: u64,
    /// The link to its supervisor: every command, file operation and scrub goes through it.
    /// `None` only while a left-over is being reconnected, or for a leased container whose
    /// supervisor could not be reached (then it is also `dead`).
    pub link: Option<Arc<SupervisorLink>>,
}

/// What the acquire path got from the state.
pub(super) enum Take {
    /// An idle container, leased now.
    Leased(Lease),
    /// Room to create one for this caller, under this name (counted as creating already).
    Create(String),
    /// The caller joined the queue: its id, where its lease will come, and its place.
    Queued(u64, oneshot::Receiver<Lease>, watch::Receiver<Place>),
}

/// What a container's death means for the pool.
pub(super) enum Gone {
    /// It was idle: it is `destroying` now; remove it (and the refill replaces it).
    Idle,
    /// It was leased: marked dead; its holder must hear of it.
    Leased,
    /// Nothing to do (unknown, or already known dead).
    Nothing,
}

/// The counts behind `PoolStatus`.
pub(super) struct Counts {
    pub idle: usize,
    pub leased: usize,
    pub creating: usize,
    pub scrubbing: usize,
    pub destroying: usize,
    pub waiting: usize,
    pub idle_target: usize,
    pub closed: bool,
}

pub(super) struct State {
    idle: VecDeque<Sandbox>,
    leased: HashMap<String, Sandbox>,
    /// Names of the containers being created now (create, start, attach, first ping), so that
    /// the reconcile loop never takes one for a stray however slow it is.
    creating: HashSet<String>,
    scrubbing: HashSet<String>,
    destroying: HashSet<String>,
    /// Containers being removed that the pool never counted: strays of this instance and
    /// left-overs that did not fit. Known, so that reconcile does not remove them twice.
    strays: HashSet<String>,
    /// Supervisor calls in flight per leased container, so that a release waits for them
    /// before the scrub (a command must never start in a container that is already clean).
    calls: HashMap<String, usize>,
    /// Callers waiting for a sandbox, in arrival order; a free sandbox goes to the head first.
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// Containers of this instance (by label) that another instance took over with their
    /// session: no longer this pool's to scrub, reconcile or remove.
    handed_over: HashSet<String>,
    demand: Demand,
    closed: bool,
    max: usize,
    min_idle: usize,
    idle_cap: usize,
    /// The idle count, for callers that wait for the pool to warm up.
    idle_count: watch::Sender<usize>,
    /// Bumped whenever a leased container dies: holders wait on it, then read which leases
    /// are lost. A state, not a stream of events, so that a slow holder cannot miss one.
    lost: watch::Sender<u64>,
    /// The next fencing token to mint, and the first of the current epoch.
    next_fence: u64,
    epoch_base: u64,
}

impl State {
    pub fn new(max: usize, min_idle: usize, idle_cap: usize, first_fence: u64) -> Self {
        Self {
            idle: VecDeque::new(),
            leased: HashMap::new(),
            creating: HashSet::new(),
            scrubbing: HashSet::new(),
            destroying: HashSet::new(),
            strays: HashSet::new(),
            calls: HashMap::new(),
            waiters: VecDeque::new(),
            next_waiter: 0,
            handed_over: HashSet::new(),
            demand: Demand::default(),
            closed: false,
            max,
            min_idle,
            idle_cap,
            idle_count: watch::channel(0).0,
            lost: watch::channel(0).0,
            next_fence: first_fence,
            epoch_base: first_fence,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Reading.

    pub fn total(&self) -> usize {
        self.idle.len()
            + self.leased.len()
            + self.creating.len()
            + self.scrubbing.len()
            + self.destroying.len()
    }

    pub fn has_room(&self) -> bool {
        self.total() < self.max
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn idle_len(&self) -> usize {
        self.idle.len()
    }

    pub fn watch_idle(&self) -> watch::Receiver<usize> {
        self.idle_count.subscribe()
    }

    pub fn watch_lost(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }

    /// Leases whose container died (or whose supervisor link did).
    pub fn lost_leases(&self) -> Vec<LeaseRef> {
        self.leased
            .values()
            .filter(|sb| sb.dead || sb.link.as_ref().is_none_or(|link| link.is_dead()))
            .map(|sb| LeaseRef {
                container_id: sb.id.clone(),
                fence: sb.fence,
            })
            .collect()
    }

    /// Tokens minted in the current epoch.
    pub fn fences_minted(&self) -> u64 {
        self.next_fence - self.epoch_base
    }

    /// The leased sandbox `lease` names, if it is still held under that lease.
    fn held(&self, lease: &LeaseRef) -> Result<&Sandbox, PoolError> {
        match self.leased.get(&lease.container_id) {
            Some(sb) if sb.fence == lease.fence => Ok(sb),
            Some(_) => Err(PoolError::Stale {
                lease: lease.clone(),
            }),
            None => Err(PoolError::NotLeased(lease.container_id.clone())),
        }
    }

    pub fn counts(&mut self) -> Counts {
        Counts {
            idle: self.idle.len(),
            leased: self.leased.len(),
            creating: self.creating.len(),
            scrubbing: self.scrubbing.len(),
            destroying: self.destroying.len(),
            waiting: self.waiters.len(),
            idle_target: self.idle_target(),
            closed: self.closed,
        }
    }

    fn idle_target(&mut self) -> usize {
        self.demand
            .idle_target(Instant::now(), self.min_idle, self.idle_cap)
    }

    /// Whether `id` is the pool's (in any place) or was handed over: not a stray.
    pub fn knows(&self, id: &str) -> bool {
        self.handed_over.contains(id)
            || self.leased.contains_key(id)
            || self.scrubbing.contains(id)
            || self.destroying.contains(id)
            || self.strays.contains(id)
            || self.idle.iter().any(|s| s.id == id)
    }

    pub fn is_creating(&self, name: &str) -> bool {
        self.creating.contains(name)
    }

    pub fn is_leased(&self, id: &str) -> bool {
        self.leased.contains_key(id)
    }

    /// The current lease of leased `id`.
    pub fn lease_of(&self, id: &str) -> Option<LeaseRef> {
        self.leased.get(id).map(|sb| LeaseRef {
            container_id: sb.id.clone(),
            fence: sb.fence,
        })
    }

    /// The supervisor link of an idle or leased container, and the generation to use on it.
    pub fn link_of(&self, id: &str) -> Option<(Arc<SupervisorLink>, u64)> {
        self.idle
            .iter()
            .find(|sb| sb.id == id)
            .or_else(|| self.leased.get(id))
            .and_then(|sb| Some((sb.link.clone()?, sb.fence)))
    }

    /// Supervisor calls in flight in `id`.
    pub fn calls(&self, id: &str) -> usize {
        self.calls.get(id).copied().unwrap_or(0)
    }

    /// Idle and leased containers of this instance (not the adopted ones), and the adopted
    /// ones, for the reconcile loop.
    pub fn reconcilable(&self) -> (HashSet<String>, Vec<String>) {
        let own = self
            .idle
            .iter()
            .map(|sb| sb.id.clone())
            .chain(
                self.leased
                    .values()
                    .filter(|sb| !sb.foreign)
                    .map(|sb| sb.id.clone()),
            )
            .collect();
        let foreign = self
            .leased
            .values()
            .filter(|sb| sb.foreign)
            .map(|sb| sb.id.clone())
            .collect();
        (own, foreign)
    }

    /// Idle and leased containers, those of `known_before` only.
    pub fn idle_or_leased_among(&self, known_before: &HashSet<String>) -> Vec<String> {
        self.idle
            .iter()
            .map(|sb| sb.id.clone())
            .chain(self.leased.keys().cloned())
            .filter(|id| known_before.contains(id))
            .collect()
    }

    /// Every container the pool holds (not those being created), for shutdown.
    pub fn held_ids(&self) -> Vec<String> {
        self.idle
            .iter()
            .map(|sb| sb.id.clone())
            .chain(self.leased.keys().cloned())
            .chain(self.scrubbing.iter().cloned())
            .chain(self.destroying.iter().cloned())
            .collect()
    }

    pub fn is_handed_over(&self, id: &str) -> bool {
        self.handed_over.contains(id)
    }

    /// How many containers the refill should start creating now, at most `parallelism`.
    pub fn refill_wanted(&mut self, parallelism: usize) -> usize {
        if self.closed {
            return 0;
        }
        let have = self.idle.len() + self.creating.len();
        let room = self.max.saturating_sub(self.total());
        // Idle enough for the demand, plus one for every caller already queued.
        (self.idle_target() + self.waiters.len())
            .saturating_sub(have)
            .min(room)
            .min(parallelism)
    }

    // ---------------------------------------------------------------------------------------
    // Transitions. Each one ends with `checked()`.

    /// An acquire: an idle container when nobody is queued, else room to create one, else a
    /// place in the queue (bounded by `max_waiters`).
    pub fn take(
        &mut self,
        started: Instant,
        may_create: bool,
        max_waiters: usize,
        new_name: impl FnOnce() -> String,
    ) -> Result<Take, PoolError> {
        if self.closed {
            return Err(PoolError::Closed);
        }
        self.demand.arrival(Instant::now());
        let free = self.waiters.is_empty();
        let take = if let Some(sandbox) = free.then(|| self.idle.pop_front()).flatten() {
            Take::Leased(self.lease(sandbox, started.elapsed()))
        } else if free && self.has_room() {
            if !may_create {
                return Err(PoolError::Docker(crate::docker::DockerError::Unavailable));
            }
            let name = new_name();
            self.creating.insert(name.clone());
            Take::Create(name)
        } else if self.waiters.len() >= max_waiters {
            return Err(PoolError::QueueFull {
                waiting: self.waiters.len(),
            });
        } else {
            let id = self.next_waiter;
            self.next_waiter += 1;
            let (tx, rx) = oneshot::channel();
            let (place_tx, place_rx) = watch::channel(Place::default());
            self.waiters.push_back(Waiter {
                id,
                tx,
                place: place_tx,
                started,
            });
            self.renumber();
            Take::Queued(id, rx, place_rx)
        };
        self.checked();
        Ok(take)
    }

    /// The refill starts creating containers under these names (within the room left).
    pub fn start_creates(&mut self, names: Vec<String>) -> Vec<String> {
        let room = self.max.saturating_sub(self.total());
        let names: Vec<String> = names.into_iter().take(room).collect();
        self.creating.extend(names.iter().cloned());
        self.checked();
        names
    }

    /// A create ended in failure: its place is free.
    pub fn create_failed(&mut self, name: &str) {
        self.creating.remove(name);
        self.checked();
    }

    /// A create for a waiting caller ended: leased to it, or (pool closed) `destroying` and
    /// its id returned for removal.
    pub fn created_for_caller(
        &mut self,
        sandbox: Sandbox,
        waited: Duration,
    ) -> Result<Lease, String> {
        self.creating.remove(&sandbox.name);
        let result = if self.closed {
            self.destroying.insert(sandbox.id.clone());
            Err(sandbox.id)
        } else {
            Ok(self.lease(sandbox, waited))
        };
        self.checked();
        result
    }

    /// A create of the refill ended: to the queue or the idle set; beyond the idle cap (or
    /// closed) `destroying`, and its id returned.
    pub fn created_for_idle(&mut self, sandbox: Sandbox) -> Option<String> {
        self.creating.remove(&sandbox.name);
        let surplus = self.park(sandbox);
        self.checked();
        surplus
    }

    /// A create took `took` (the demand's create time; the queue's estimates).
    pub fn create_took(&mut self, took: Duration) {
        self.demand.created(took);
    }

    /// A lease its caller never saw (it left first): the container was never used, so it
    /// goes straight to the next caller or the idle set. Returns an id to remove, if any.
    pub fn unlease_unused(&mut self, id: &str) -> Option<String> {
        let surplus = self.leased.remove(id).and_then(|mut sandbox| {
            sandbox.uses = sandbox.uses.saturating_sub(1);
            self.calls.remove(id);
            self.park(sandbox)
        });
        self.checked();
        surplus
    }

    /// A queued caller leaves the queue.
    pub fn leave_queue(&mut self, waiter: u64) {
        if let Some(pos) = self.waiters.iter().position(|w| w.id == waiter) {
            self.waiters.remove(pos);
            self.renumber();
        }
        self.checked();
    }

    /// A release of `lease`: leased → scrubbing. The sandbox goes to the recycle, whose
    /// scrub runs under the next generation (the released lease's commands are fenced out).
    pub fn begin_release(&mut self, lease: &LeaseRef) -> Result<Sandbox, PoolError> {
        self.held(lease)?;
        let mut sandbox = self
            .leased
            .remove(&lease.container_id)
            .ok_or_else(|| PoolError::NotLeased(lease.container_id.clone()))?;
        sandbox.fence += 1;
        self.scrubbing.insert(sandbox.id.clone());
        self.checked();
        Ok(sandbox)
    }

    /// A recycle ended: clean (`reason` is `None`) to the queue or the idle set, else (or
    /// beyond the idle cap, or closed) `destroying`. Returns why it is destroyed, if it is.
    pub fn end_recycle(&mut self, sandbox: Sandbox, reason: Option<String>) -> Option<String> {
        self.scrubbing.remove(&sandbox.id);
        self.calls.remove(&sandbox.id);
        let idle = self.idle.len();
        let reason = reason.or_else(|| self.closed.then(|| "pool closed".to_string()));
        let destroyed = match reason {
            None => self
                .park(sandbox)
                .map(|_| format!("idle set full ({idle} idle)")),
            Some(reason) => {
                self.destroying.insert(sandbox.id);
                Some(reason)
            }
        };
        self.checked();
        destroyed
    }

    /// Another instance took the session of `lease`: the sandbox leaves the pool untouched
    /// and is remembered as handed over.
    pub fn hand_over(&mut self, lease: &LeaseRef) -> Result<Sandbox, PoolError> {
        self.held(lease)?;
        let id = &lease.container_id;
        let sandbox = self
            .leased
            .remove(id)
            .ok_or_else(|| PoolError::NotLeased(id.clone()))?;
        self.calls.remove(id);
        self.handed_over.insert(id.clone());
        self.checked();
        Ok(sandbox)
    }

    /// `id`, taken in at start, turns out to be served by another instance (its supervisor
    /// says so): it leaves the pool untouched and is remembered as handed over.
    pub fn leave_alone(&mut self, id: &str) {
        self.leased.remove(id);
        self.scrubbing.remove(id);
        self.calls.remove(id);
        self.handed_over.insert(id.to_string());
        self.checked();
    }

    /// `id`, found at start, was handed over to another instance by an earlier run.
    pub fn note_handed_over(&mut self, id: &str) {
        self.handed_over.insert(id.to_string());
        self.checked();
    }

    /// Forgets every hand-over mark and returns the containers they named: the last replica
    /// out (no live peer) knows nobody serves them any more.
    pub fn take_handed_over(&mut self) -> Vec<String> {
        let handed: Vec<String> = self.handed_over.drain().collect();
        self.checked();
        handed
    }

    /// `id` came back to this instance with its session (the store says so) but this pool
    /// could not take it in: it is no longer handed over. `true` when the pool holds it in no
    /// other way either (idle, leased, scrubbing, destroying, stray), so that nobody but the
    /// caller will ever remove it.
    pub fn unhand(&mut self, id: &str) -> bool {
        self.handed_over.remove(id);
        self.checked();
        !self.knows(id)
    }

    /// `id` died or vanished.
    pub fn gone(&mut self, id: &str) -> Gone {
        let gone = if let Some(pos) = self.idle.iter().position(|sb| sb.id == id) {
            if let Some(sandbox) = self.idle.remove(pos) {
                self.destroying.insert(sandbox.id);
            }
            Gone::Idle
        } else if let Some(sandbox) = self.leased.get_mut(id)
            && !sandbox.dead
        {
            sandbox.dead = true;
            self.lost.send_modify(|n| *n += 1);
            Gone::Leased
        } else {
            Gone::Nothing
        };
        self.checked();
        gone
    }

    /// A removal ended (or was given up): `id` leaves `destroying` or the strays.
    pub fn destroyed(&mut self, id: &str) {
        self.destroying.remove(id);
        self.strays.remove(id);
        self.checked();
    }

    /// `id` is a stray of this instance, to be removed outside the count. `false` when it is
    /// known after all.
    pub fn mark_stray(&mut self, id: &str) -> bool {
        let stray = !self.knows(id);
        if stray {
            self.strays.insert(id.to_string());
        }
        self.checked();
        stray
    }

    /// A running sandbox of another instance, taken in as leased for a session taken over.
    pub fn adopt_leased(&mut self, sandbox: Sandbox) -> Result<(), PoolError> {
        if self.closed {
            return Err(PoolError::Closed);
        }
        if !self.has_room() {
            return Err(PoolError::Exhausted {
                waited_ms: 0,
                max: self.max,
            });
        }
        // Handed over before and now back (its session returned to this instance).
        self.handed_over.remove(&sandbox.id);
        self.leased.insert(sandbox.id.clone(), sandbox);
        self.checked();
        Ok(())
    }

    /// A container an earlier run of this instance left, found at start: kept leased (its
    /// session lives on), to be scrubbed for the idle set, or a stray to remove. Returns
    /// which, as the place it went.
    pub fn take_leftover(&mut self, sandbox: Sandbox, keep: bool, reusable: bool) -> Leftover {
        let leftover = if !self.has_room() {
            self.strays.insert(sandbox.id);
            Leftover::Remove
        } else if keep {
            self.leased.insert(sandbox.id.clone(), sandbox);
            Leftover::Kept
        } else if reusable {
            self.scrubbing.insert(sandbox.id);
            Leftover::Scrub
        } else {
            self.strays.insert(sandbox.id);
            Leftover::Remove
        };
        self.checked();
        leftover
    }

    /// A kept left-over's supervisor answered (`Some`) or not (`None`: it is dead).
    pub fn reconnected(&mut self, id: &str, link: Option<Arc<SupervisorLink>>) {
        if let Some(sandbox) = self.leased.get_mut(id) {
            sandbox.dead = link.is_none();
            sandbox.link = link;
            if sandbox.dead {
                self.lost.send_modify(|n| *n += 1);
            }
        }
        self.checked();
    }

    /// A call under `lease` starts: its link, counted until [`State::end_call`]. Refused for
    /// a stale lease.
    pub fn begin_call(&mut self, lease: &LeaseRef) -> Result<Arc<SupervisorLink>, PoolError> {
        let sandbox = self.held(lease)?;
        let link = match &sandbox.link {
            Some(link) if !sandbox.dead && !link.is_dead() => link.clone(),
            _ => return Err(SupervisorError::Lost("the sandbox died".into()).into()),
        };
        *self.calls.entry(lease.container_id.clone()).or_insert(0) += 1;
        self.checked();
        Ok(link)
    }

    /// Leased `id` is held under the newer lease `fence` from now on (a session recorded
    /// under it came back): its link, to claim the supervisor with.
    pub fn refence(&mut self, id: &str, fence: u64) -> Option<Arc<SupervisorLink>> {
        let sandbox = self.leased.get_mut(id).filter(|sb| sb.fence < fence)?;
        sandbox.fence = fence;
        sandbox.link.clone()
    }

    /// A fresh fencing token, larger than every one minted before by this pool.
    pub fn mint_fence(&mut self) -> u64 {
        let fence = self.next_fence;
        self.next_fence += 1;
        fence
    }

    /// The next tokens start at `base` (a new epoch's) unless they are past it already.
    pub fn advance_fences(&mut self, base: u64) {
        if base > self.next_fence {
            self.next_fence = base;
            self.epoch_base = base;
        }
    }

    pub fn end_call(&mut self, id: &str) {
        if let Some(n) = self.calls.get_mut(id) {
            *n = n.saturating_sub(1);
        }
        self.checked();
    }

    /// No more leases: queued callers hear `Closed` (their senders are dropped).
    pub fn close(&mut self) {
        self.closed = true;
        self.waiters.clear();
        self.checked();
    }

    /// Forgets every container (they stay on the engine, or were removed by the caller).
    pub fn forget_all(&mut self) {
        self.idle.clear();
        self.leased.clear();
        self.scrubbing.clear();
        self.calls.clear();
        self.checked();
    }

    // ---------------------------------------------------------------------------------------
    // Helpers of the transitions.

    fn lease(&mut self, mut sandbox: Sandbox, waited: Duration) -> Lease {
        sandbox.uses += 1;
        sandbox.fence = self.mint_fence();
        let lease = Lease {
            container_id: sandbox.id.clone(),
            fence: sandbox.fence,
            container_name: sandbox.name.clone(),
            uses: sandbox.uses,
            waited,
        };
        self.leased.insert(sandbox.id.clone(), sandbox);
        lease
    }

    /// Hands a clean container to the first caller still waiting for one; else puts it in
    /// the idle set while the pool is open and the set is below its cap; otherwise moves it
    /// to `destroying` and returns its id, for the caller to remove.
    fn park(&mut self, mut sandbox: Sandbox) -> Option<String> {
        while !self.closed
            && let Some(waiter) = self.waiters.pop_front()
        {
            let lease = self.lease(sandbox, waiter.started.elapsed());
            match waiter.tx.send(lease) {
                Ok(()) => {
                    self.demand.handout(Instant::now());
                    self.renumber();
                    return None;
                }
                // That caller left: take it back and try the next.
                Err(lease) => match self.leased.remove(&lease.container_id) {
                    Some(mut back) => {
                        back.uses -= 1;
                        sandbox = back;
                    }
                    None => return None,
                },
            }
        }
        self.renumber();
        if !self.closed && self.idle.len() < self.idle_cap {
            self.idle.push_back(sandbox);
            return None;
        }
        self.destroying.insert(sandbox.id.clone());
        Some(sandbox.id)
    }

    /// Tells every waiter its place.
    fn renumber(&mut self) {
        let per_place = self.demand.estimate_ms(Instant::now(), 1);
        for (i, waiter) in self.waiters.iter().enumerate() {
            let place = Place {
                position: i + 1,
                estimate_ms: per_place * (i as u64 + 1),
            };
            waiter.place.send_if_modified(|p| {
                let changed = *p != place;
                *p = place;
                changed
            });
        }
    }

    /// Publishes the idle count and, in debug builds, checks the invariant: every container
    /// in one place, and at most `max` of them.
    fn checked(&mut self) {
        let idle = self.idle.len();
        self.idle_count.send_if_modified(|n| {
            let changed = *n != idle;
            *n = idle;
            changed
        });
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.total() <= self.max,
                "pool holds {} containers, more than its maximum of {}",
                self.total(),
                self.max
            );
            let mut seen = HashSet::new();
            let ids = self
                .idle
                .iter()
                .map(|sb| sb.id.as_str())
                .chain(self.leased.keys().map(String::as_str))
                .chain(self.scrubbing.iter().map(String::as_str))
                .chain(self.destroying.iter().map(String::as_str));
            for id in ids {
                debug_assert!(seen.insert(id), "container {id} is in two places at once");
            }
        }
    }
}

/// Where a left-over went (see [`State::take_leftover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leftover {
    Kept,
    Scrub,
    Remove,
}
