//! Sessions: one suite over both stores (a real `redis-server` and the in-process store), and
//! the manager on the real Docker engine: expiry, grace, resume tokens, two janitors, takeover,
//! a Redis restart under a running manager, a writer killed mid-way, no `KEYS`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sandpool::config::Config;
use sandpool::session::{
    Cutoffs, EndReason, InstanceClaim, LeaseRef, MemoryStore, RedisStore, Session, SessionError,
    SessionHooks, SessionManager, SessionRecords, SessionSettings, SessionState, SessionStore,
    Sweep, hash_token, now_ms,
};

const PREFIX: &str = "sp-test:";

async fn redis_store(server: &RedisServer) -> Arc<dyn SessionStore> {
    Arc::new(
        RedisStore::connect(&server.url(), PREFIX)
            .await
            .expect("redis store"),
    )
}

/// The Redis store on `server`, or the in-process one.
async fn store_of(redis: bool, server: &RedisServer) -> Arc<dyn SessionStore> {
    if redis {
        redis_store(server).await
    } else {
        Arc::new(MemoryStore::new())
    }
}

/// Ends every session of `m` and removes its pool's containers.
async fn stop(m: &SessionManager) {
    m.shutdown(Duration::from_secs(10)).await;
    m.pool_for_tests().shutdown(Duration::from_secs(20)).await;
}

/// The lease under which `pool` holds `container` now (it changes as the session moves).
fn held(pool: &sandpool::pool::ContainerPool, container: &str) -> LeaseRef {
    pool.lease_of(container)
        .expect("the pool holds the sandbox")
}

fn session(owner: &str, last_active_ms: i64) -> Session {
    let mut s = Session::new(
        owner,
        &LeaseRef {
            container_id: format!("container-{}", uuid::Uuid::new_v4()),
            fence: 5 << 32,
        },
        hash_token("t"),
        last_active_ms,
    );
    s.created_ms = last_active_ms - 1;
    s
}

fn cutoffs(idle_before_ms: i64) -> Cutoffs {
    Cutoffs {
        idle_before_ms,
        detached_before_ms: idle_before_ms,
        claimed_before_ms: idle_before_ms - 60_000,
    }
}

/// Runs a store scenario against both stores, each on its own `redis-server`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(Arc::new(MemoryStore::new())).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let server = RedisServer::start().await;
                super::$name(redis_store(&server).await).await;
            }
        }
    )*};
}

both_stores!(
    create_touch_get_end,
    touched_between_query_and_claim_survives,
    two_claimers_never_claim_one_session_twice,
    ownership_and_heartbeats,
);

async fn create_touch_get_end(store: Arc<dyn SessionStore>) {
    let now = now_ms();
    let s = session("a", now);
    store.put(&s).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap().as_ref(), Some(&s));
    assert_eq!(store.count().await.unwrap(), 1);

    assert!(store.touch(&s.id, now + 500).await.unwrap());
    assert!(
        store.touch(&s.id, now + 100).await.unwrap(),
        "an older touch is accepted"
    );
    assert_eq!(
        store.get(&s.id).await.unwrap().unwrap().last_active_ms,
        now + 500,
        "never moves back"
    );

    assert!(
        !store
            .detach(&s.id, "not-the-owner", now + 600)
            .await
            .unwrap(),
        "only its owner detaches a session (a replica that lost it must not)"
    );
    assert!(store.detach(&s.id, "a", now + 600).await.unwrap());
    let d = store.get(&s.id).await.unwrap().unwrap();
    assert_eq!(
        (d.state, d.detached_at_ms),
        (SessionState::Detached, now + 600)
    );
    assert!(
        !store.detach(&s.id, "a", now + 700).await.unwrap(),
        "only an active session detaches"
    );
    assert!(store.reattach(&s.id, now + 800).await.unwrap());
    let r = store.get(&s.id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.last_active_ms),
        (SessionState::Active, now + 800)
    );

    let claimed = store
        .claim(&s.id, "a", now + 900)
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(
        (claimed.state, claimed.claimed_by.as_str()),
        (SessionState::Ending, "a")
    );
    assert!(
        store.claim(&s.id, "a", now + 901).await.unwrap().is_none(),
        "claimed once"
    );
    assert!(
        !store.touch(&s.id, now + 950).await.unwrap(),
        "an ending session is not touched"
    );

    store.delete(&s.id).await.unwrap();
    assert!(store.get(&s.id).await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 0);
    assert!(store.owned_by("a").await.unwrap().is_empty());
    for sweep in [Sweep::Idle, Sweep::Detached, Sweep::StaleClaim] {
        assert!(
            store
                .candidates(sweep, &cutoffs(i64::MAX), 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(store.claim("missing", "a", now).await.unwrap().is_none());
}

async fn touched_between_query_and_claim_survives(store: Arc<dyn SessionStore>) {
    let now = now_ms();
    let old = session("a", now - 10_000);
    let stale = session("a", now - 10_000);
    store.put(&old).await.unwrap();
    store.put(&stale).await.unwrap();
    let cut = cutoffs(now - 5_000);
    let mut ids = store.candidates(Sweep::Idle, &cut, 0, 10).await.unwrap();
    ids.sort();
    let mut want = vec![old.id.clone(), stale.id.clone()];
    want.sort();
    assert_eq!(ids, want, "both are candidates");

    // The client comes back between the query and the claim.
    assert!(store.touch(&old.id, now).await.unwrap());
    let claimed = store.claim_expired(&ids, &cut, "a", now).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, stale.id);
    assert_eq!(
        store.get(&old.id).await.unwrap().unwrap().state,
        SessionState::Active,
        "touched one survives"
    );
    // A claimed session is not claimed again by a later pass.
    assert!(
        store
            .claim_expired(&ids, &cut, "a", now)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn two_claimers_never_claim_one_session_twice(store: Arc<dyn SessionStore>) {
    let now = now_ms();
    let mut ids = Vec::new();
    for _ in 0..300 {
        let s = session("ghost", now - 10_000); // an owner with no heartbeat
        ids.push(s.id.clone());
        store.put(&s).await.unwrap();
    }
    let cut = cutoffs(now - 1_000);
    let claims = |claimer: &'static str| {
        let (store, ids) = (store.clone(), ids.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for chunk in ids.chunks(7) {
                for s in store
                    .claim_expired(chunk, &cut, claimer, now)
                    .await
                    .unwrap()
                {
                    mine.push(s.id);
                }
            }
            mine
        })
    };
    let (b, c) = (claims("b"), claims("c"));
    let (b, c) = (b.await.unwrap(), c.await.unwrap());
    let b: HashSet<_> = b.into_iter().collect();
    let c: HashSet<_> = c.into_iter().collect();
    assert!(b.is_disjoint(&c), "a session claimed by both");
    assert_eq!(b.len() + c.len(), 300, "every expired session claimed once");
}

async fn ownership_and_heartbeats(store: Arc<dyn SessionStore>) {
    let now = now_ms();
    let s = session("a", now - 10_000);
    store.put(&s).await.unwrap();
    assert_eq!(store.owned_by("a").await.unwrap(), vec![s.id.clone()]);

    // A live owner keeps its expired sessions from other janitors.
    assert!(
        store
            .heartbeat("a", "inc-a", Duration::from_millis(400))
            .await
            .unwrap()
    );
    assert!(
        !store
            .heartbeat("a", "inc-other", Duration::from_millis(400))
            .await
            .unwrap(),
        "a live instance id is not taken by another incarnation"
    );
    assert!(matches!(
        store
            .claim_instance("a", "inc-other", Duration::from_millis(400))
            .await
            .unwrap(),
        InstanceClaim::Held { incarnation, .. } if incarnation == "inc-a"
    ));
    assert!(store.is_alive("a").await.unwrap());
    let cut = cutoffs(now);
    assert!(
        store
            .claim_expired(std::slice::from_ref(&s.id), &cut, "b", now)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.claim(&s.id, "b", now).await.unwrap().is_none());

    // Once its heartbeat lapses, another instance may take the session over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!store.is_alive("a").await.unwrap());
    let owner = store.sandbox_owner(&s.container_id).await.unwrap().unwrap();
    assert_eq!((owner.owner.as_str(), owner.fence), ("a", s.fence));
    assert!(
        !store.transfer(&s.id, "x", "b", 9 << 32).await.unwrap(),
        "only from the current owner"
    );
    assert!(store.transfer(&s.id, "a", "b", 9 << 32).await.unwrap());
    assert!(store.owned_by("a").await.unwrap().is_empty());
    assert_eq!(store.owned_by("b").await.unwrap(), vec![s.id.clone()]);
    let moved = store.get(&s.id).await.unwrap().unwrap();
    assert_eq!((moved.owner.as_str(), moved.fence), ("b", 9 << 32));
    // The takeover is recorded with the record, in the same write: who serves the sandbox
    // now, and that "a" must leave it alone although it carries a's label.
    let owner = store.sandbox_owner(&s.container_id).await.unwrap().unwrap();
    assert_eq!((owner.owner.as_str(), owner.fence), ("b", 9 << 32));
    assert!(store.handed("a").await.unwrap().contains(&s.container_id));
    // A stale copy written back (a catch-up racing an end) does not replace the new one.
    assert!(!store.restore(&s).await.unwrap(), "the record exists");
    store.delete(&s.id).await.unwrap();
    assert!(
        store
            .sandbox_owner(&s.container_id)
            .await
            .unwrap()
            .is_none()
    );
    let mut other = session("c", now);
    other.container_id = s.container_id.clone();
    other.fence = 10 << 32;
    store.put(&other).await.unwrap();
    assert!(
        !store.restore(&s).await.unwrap(),
        "its sandbox is another session's under a newer lease"
    );
    // Epochs only rise, and never below the clock in seconds nor at or below the epoch a
    // taker names (the lease it takes over may be ahead of the counter after data loss).
    let e1 = store.next_epoch(0).await.unwrap();
    let e2 = store.next_epoch(0).await.unwrap();
    assert!(e2 > e1 && e1 >= (now / 1000) as u64);
    let ahead = e2 + 1000;
    let e3 = store.next_epoch(ahead).await.unwrap();
    assert!(e3 > ahead);
    assert!(store.next_epoch(0).await.unwrap() > e3);

    assert!(
        store
            .heartbeat("b", "inc-b", Duration::from_secs(10))
            .await
            .unwrap()
    );
    store.remove_heartbeat("b", "inc-other").await.unwrap();
    assert!(
        store.is_alive("b").await.unwrap(),
        "only its holder withdraws a heartbeat"
    );
    store.remove_heartbeat("b", "inc-b").await.unwrap();
    assert!(!store.is_alive("b").await.unwrap());
}

// ---------------------------------------------------------------------------------------
// The manager, with a real pool on the real engine.

/// Counts the ends it is told of, per session.
#[derive(Default)]
struct CountingHooks {
    ends: Mutex<HashMap<String, Vec<EndReason>>>,
}

impl SessionHooks for CountingHooks {
    fn ended(&self, session: &Session, reason: EndReason) {
        self.ends
            .lock()
            .unwrap()
            .entry(session.id.clone())
            .or_default()
            .push(reason);
    }
}

fn fast_settings() -> SessionSettings {
    SessionSettings {
        idle_ttl: Duration::from_secs(3600),
        reconnect_grace: Duration::from_millis(300),
        janitor_interval: Duration::from_secs(3600), // passes are run by hand unless a test says
        janitor_batch: 50,
        heartbeat_ttl: Duration::from_secs(3),
        touch_every: Duration::from_millis(0),
        ..SessionSettings::default()
    }
}

fn manager_config(instance: &str, min_idle: usize, max: usize) -> Config {
    let mut config = test_config(instance);
    config.pool.min_idle = min_idle;
    config.pool.max = max;
    config
}

async fn manager(
    store: Arc<dyn SessionStore>,
    config: &Config,
    settings: SessionSettings,
    cleanup: &Cleanup,
) -> (SessionManager, Arc<CountingHooks>) {
    let recovery = SessionManager::recover(store.as_ref(), &config.instance_id, &settings)
        .await
        .unwrap();
    let gate = real_gate(config).await;
    let pool = sandpool::pool::ContainerPool::start(
        gate,
        config,
        Arc::new(sandpool::pool::NoopObserver),
        recovery.startup.clone(),
    )
    .await
    .unwrap();
    cleanup.watch(&pool);
    let m = SessionManager::start(store, pool, &config.instance_id, settings, recovery).await;
    let hooks = Arc::new(CountingHooks::default());
    let weak: std::sync::Weak<CountingHooks> = Arc::downgrade(&hooks);
    m.set_hooks(weak);
    (m, hooks)
}

async fn wait_recycled(m: &SessionManager, container: &str) {
    within(30, "sandbox back in the pool", async {
        loop {
            let st = m.pool_for_tests().status();
            if !m.pool_for_tests().is_leased(container) && st.scrubbing == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_needs_the_token_and_keeps_the_sandbox() {
    let server = RedisServer::start().await;
    let instance = unique_instance("resume");
    let cleanup = Cleanup::new(&instance);
    let (m, _) = manager(
        redis_store(&server).await,
        &manager_config(&instance, 1, 2),
        fast_settings(),
        &cleanup,
    )
    .await;
    let opened = within(30, "open", m.open()).await.expect("open");
    assert_eq!(opened.resume_token.len(), 64);
    let stored = m.store().get(&opened.session.id).await.unwrap().unwrap();
    assert_ne!(
        stored.token_hash, opened.resume_token,
        "only the hash is stored"
    );
    assert!(
        !server
            .cli(&["HGETALL", &format!("{PREFIX}session:{}", opened.session.id)])
            .contains(&opened.resume_token)
    );
    sh(
        m.pool_for_tests(),
        &opened.lease.lease_ref(),
        "echo kept > /workspace/f",
    )
    .await;

    m.detach(&opened.session.id).await;
    let wrong = m.resume(&opened.session.id, &"0".repeat(64)).await;
    assert!(matches!(wrong, Err(SessionError::BadToken(_))), "{wrong:?}");
    let unknown = m.resume("no-such-session", &opened.resume_token).await;
    assert!(
        matches!(unknown, Err(SessionError::Expired(_))),
        "{unknown:?}"
    );

    let resumed = m
        .resume(&opened.session.id, &opened.resume_token)
        .await
        .expect("resume");
    assert_eq!(
        resumed.container_id, opened.lease.container_id,
        "same sandbox"
    );
    assert_eq!(resumed.state, SessionState::Active);
    let out = sh(m.pool_for_tests(), &resumed.lease(), "cat /workspace/f").await;
    assert_eq!(text(&out.stdout).trim(), "kept", "files intact");

    assert!(m.end(&opened.session.id, EndReason::Ended).await.unwrap());
    assert!(m.store().get(&opened.session.id).await.unwrap().is_none());
    let after = m.resume(&opened.session.id, &opened.resume_token).await;
    assert!(
        matches!(after, Err(SessionError::Expired(_))),
        "an ended session cannot be resumed"
    );
    stop(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_ends_idle_and_disconnected_sessions_and_releases_their_sandboxes() {
    for redis in [false, true] {
        let server = RedisServer::start().await;
        let store = store_of(redis, &server).await;
        let instance = unique_instance("janitor");
        let cleanup = Cleanup::new(&instance);
        let mut settings = fast_settings();
        // The idle TTL is well above the grace, so that a slow machine cannot make the dropped
        // session idle-expire before its grace ends.
        settings.idle_ttl = Duration::from_millis(2500);
        settings.janitor_interval = Duration::from_millis(100);
        let (m, hooks) = manager(store, &manager_config(&instance, 2, 3), settings, &cleanup).await;

        let dropped = m.open().await.expect("open");
        let idle = m.open().await.expect("open");
        let busy = m.open().await.expect("open");
        // The clocks start now, however long the opens took.
        for s in [&dropped, &idle, &busy] {
            m.touch(&s.session.id).await;
        }
        m.detach(&dropped.session.id).await;

        // Within the grace and the idle TTL everything survives; `busy` keeps being touched.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            m.store().get(&dropped.session.id).await.unwrap().is_some(),
            "within grace"
        );
        within(20, "disconnected session ends after grace", async {
            while m.store().get(&dropped.session.id).await.unwrap().is_some() {
                m.touch(&busy.session.id).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        within(20, "idle session ends after the idle ttl", async {
            while m.store().get(&idle.session.id).await.unwrap().is_some() {
                m.touch(&busy.session.id).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            m.store().get(&busy.session.id).await.unwrap().is_some(),
            "an active session survives ({redis})"
        );
        wait_recycled(&m, &dropped.lease.container_id).await;
        wait_recycled(&m, &idle.lease.container_id).await;
        let ends = hooks.ends.lock().unwrap().clone();
        assert_eq!(
            ends.get(&dropped.session.id),
            Some(&vec![EndReason::Disconnected])
        );
        assert_eq!(ends.get(&idle.session.id), Some(&vec![EndReason::Idle]));
        assert!(!ends.contains_key(&busy.session.id));
        assert_eq!(
            m.pool_for_tests().status().leased,
            1,
            "only busy's sandbox is still leased"
        );
        m.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            hooks.ends.lock().unwrap().get(&busy.session.id),
            Some(&vec![EndReason::Shutdown])
        );
        assert_eq!(
            m.store().count().await.unwrap(),
            0,
            "shutdown ends every session"
        );
        m.pool_for_tests().shutdown(Duration::from_secs(20)).await;
        assert!(labeled_containers(&instance).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_janitors_on_one_redis_end_each_session_once() {
    let server = RedisServer::start().await;
    let (ib, ic) = (unique_instance("jb"), unique_instance("jc"));
    let (cb, cc) = (Cleanup::new(&ib), Cleanup::new(&ic));
    let (b, hb) = manager(
        redis_store(&server).await,
        &manager_config(&ib, 0, 1),
        fast_settings(),
        &cb,
    )
    .await;
    let (c, hc) = manager(
        redis_store(&server).await,
        &manager_config(&ic, 0, 1),
        fast_settings(),
        &cc,
    )
    .await;
    // Sessions of an instance that died (no heartbeat): both janitors may end them.
    let store = b.store().clone();
    let old = now_ms() - 2 * 3600 * 1000;
    let mut ids = HashSet::new();
    for _ in 0..400 {
        let s = session("dead-instance", old);
        ids.insert(s.id.clone());
        store.put(&s).await.unwrap();
    }
    // Concurrent passes; a pass may skip what the other one deleted under its cursor, so
    // they run until neither finds anything (the janitor loop does the same, pass after pass).
    let mut total = 0;
    for _ in 0..20 {
        let (rb, rc) = tokio::join!(b.janitor_pass(), c.janitor_pass());
        let (rb, rc) = (rb.unwrap(), rc.unwrap());
        total += rb.ended + rc.ended;
        if rb.ended + rc.ended == 0 {
            break;
        }
    }
    assert_eq!(total, 400);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for hooks in [&hb, &hc] {
        for (id, reasons) in hooks.ends.lock().unwrap().iter() {
            *seen.entry(id.clone()).or_default() += reasons.len();
        }
    }
    assert_eq!(seen.len(), 400);
    assert!(seen.values().all(|n| *n == 1), "a session ended twice");
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), ids);
    assert_eq!(store.count().await.unwrap(), 0);
    for m in [b, c] {
        stop(&m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_ten_thousand_sessions_blocks_nothing_else() {
    for redis in [false, true] {
        let server = RedisServer::start().await;
        let store = store_of(redis, &server).await;
        let instance = unique_instance("tenk");
        let cleanup = Cleanup::new(&instance);
        let mut settings = fast_settings();
        settings.janitor_batch = 100;
        let (m, _) = manager(
            store.clone(),
            &manager_config(&instance, 0, 1),
            settings,
            &cleanup,
        )
        .await;
        let old = now_ms() - 2 * 3600 * 1000;
        let keeper = session(&instance, now_ms());
        store.put(&keeper).await.unwrap();
        let writes = (0..10_000).map(|_| {
            let store = store.clone();
            let s = session(&instance, old);
            async move { store.put(&s).await.unwrap() }
        });
        futures_util::future::join_all(writes).await;
        assert_eq!(store.count().await.unwrap(), 10_001);

        // Another client keeps reading while the pass runs; its reads must interleave.
        let done = Arc::new(AtomicBool::new(false));
        let reads_during = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (store, done, reads, id) = (
                store.clone(),
                done.clone(),
                reads_during.clone(),
                keeper.id.clone(),
            );
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    assert!(store.get(&id).await.unwrap().is_some());
                    reads.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            })
        };
        let report = within(120, "janitor pass", m.janitor_pass()).await.unwrap();
        done.store(true, Ordering::SeqCst);
        reader.await.unwrap();
        assert_eq!(report.ended, 10_000);
        assert_eq!(
            store.count().await.unwrap(),
            1,
            "only the fresh session is left"
        );
        let reads = reads_during.load(Ordering::SeqCst);
        assert!(
            reads >= 10,
            "other requests were starved during the pass: {reads} reads ({redis})"
        );
        stop(&m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instances_session_is_taken_over_with_its_container() {
    let server = RedisServer::start().await;
    let (ia, ib) = (unique_instance("owner-a"), unique_instance("owner-b"));
    let (ca, cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let mut settings = fast_settings();
    settings.heartbeat_ttl = Duration::from_millis(900);
    let (a, _) = manager(
        redis_store(&server).await,
        &manager_config(&ia, 1, 2),
        settings.clone(),
        &ca,
    )
    .await;
    let (b, _) = manager(
        redis_store(&server).await,
        &manager_config(&ib, 0, 2),
        settings,
        &cb,
    )
    .await;
    let opened = a.open().await.expect("open on a");
    sh(
        a.pool_for_tests(),
        &opened.lease.lease_ref(),
        "echo from-a > /workspace/note",
    )
    .await;
    a.detach(&opened.session.id).await;

    // a stops without ending anything (its heartbeat lapses); its container stays.
    a.abandon().await;
    a.pool_for_tests().abandon().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let taken = within(
        30,
        "take over",
        b.resume(&opened.session.id, &opened.resume_token),
    )
    .await
    .expect("take over");
    assert_eq!(taken.owner, ib);
    assert_eq!(
        taken.container_id, opened.lease.container_id,
        "adopted, not recreated"
    );
    // Let b's reconcile loop run a few times: the adopted container, labeled for a, must
    // not be mistaken for a dead one of b's.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        b.pool_for_tests().is_leased(&taken.container_id),
        "still leased after reconciles"
    );
    let out = sh(b.pool_for_tests(), &taken.lease(), "cat /workspace/note").await;
    assert_eq!(text(&out.stdout).trim(), "from-a");
    assert_eq!(
        b.store().owned_by(&ib).await.unwrap(),
        vec![opened.session.id.clone()]
    );

    // Ending it on b removes the foreign container instead of pooling it.
    assert!(b.end(&opened.session.id, EndReason::Ended).await.unwrap());
    within(30, "foreign container removed", async {
        while docker_exists(&opened.lease.container_id) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    stop(&b).await;
    drop(ca); // removes what a left (its idle containers)
    assert!(labeled_containers(&ia).is_empty());
}

fn docker_exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_a_running_manager() {
    let mut server = RedisServer::start().await;
    let instance = unique_instance("restart");
    let cleanup = Cleanup::new(&instance);
    let (m, _) = manager(
        redis_store(&server).await,
        &manager_config(&instance, 1, 3),
        fast_settings(),
        &cleanup,
    )
    .await;
    let opened = m.open().await.expect("open");

    server.stop();
    // Down: a new session gets a typed error, the janitor reports, nothing panics or hangs.
    let err = within(30, "open while redis is down", m.open())
        .await
        .expect_err("no store");
    assert!(matches!(err, SessionError::Store(_)), "{err:?}");
    assert_eq!(
        m.pool_for_tests().status().leased,
        1,
        "the failed open gave its sandbox back"
    );
    assert!(
        within(30, "janitor while down", m.janitor_pass())
            .await
            .is_err()
    );
    m.touch(&opened.session.id).await;

    server.restart().await; // empty: no persistence
    within(30, "store answers again", async {
        while m.store().ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    m.catch_up().await;
    let back = m
        .store()
        .get(&opened.session.id)
        .await
        .unwrap()
        .expect("written again");
    assert_eq!(back.container_id, opened.lease.container_id);
    assert_eq!(
        m.store().owned_by(&instance).await.unwrap(),
        vec![opened.session.id.clone()]
    );
    let again = within(30, "open after restart", m.open())
        .await
        .expect("open works again");
    m.janitor_pass().await.expect("janitor works again");
    // Down longer than the self-fence, the manager stopped serving its sessions; it serves
    // again once its next heartbeat lands (within a third of the TTL).
    within(30, "serving again after the outage", async {
        while m.check_serving().is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let resumed = m.resume(&opened.session.id, &opened.resume_token).await;
    assert!(resumed.is_ok(), "{resumed:?}");
    for id in [&opened.session.id, &again.session.id] {
        assert!(m.end(id, EndReason::Ended).await.unwrap());
    }
    stop(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keys_command_is_ever_sent() {
    let server = RedisServer::start().await;
    let monitor = server.monitor();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let instance = unique_instance("nokeys");
    let cleanup = Cleanup::new(&instance);
    let (m, _) = manager(
        redis_store(&server).await,
        &manager_config(&instance, 1, 2),
        fast_settings(),
        &cleanup,
    )
    .await;
    let opened = m.open().await.unwrap();
    m.touch(&opened.session.id).await;
    m.detach(&opened.session.id).await;
    m.resume(&opened.session.id, &opened.resume_token)
        .await
        .unwrap();
    m.janitor_pass().await.unwrap();
    m.catch_up().await;
    m.store().owned_by(&instance).await.unwrap();
    m.end(&opened.session.id, EndReason::Ended).await.unwrap();
    stop(&m).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = monitor.finish();
    assert!(
        seen.contains("\"EVALSHA\"") || seen.contains("\"EVAL\""),
        "monitor saw the traffic:\n{seen}"
    );
    assert!(
        seen.contains("\"ZRANGEBYSCORE\"") && seen.contains("\"SSCAN\""),
        "{seen}"
    );
    let keys: Vec<&str> = seen
        .lines()
        .filter(|l| l.to_ascii_uppercase().contains("\"KEYS\""))
        .collect();
    assert!(keys.is_empty(), "KEYS was sent: {keys:?}");
}

/// With `SANDPOOL_TEST_WRITER_URL` set, this writes sessions until it is killed (it is the
/// child of `writer_killed_mid_way_leaves_hash_and_index_consistent`); without it, it
/// writes a few and checks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_writer_child() {
    let mut own_server = None;
    let (url, endless) = match std::env::var("SANDPOOL_TEST_WRITER_URL") {
        Ok(url) => (url, true),
        Err(_) => {
            let server = RedisServer::start().await;
            let url = server.url();
            own_server = Some(server);
            (url, false)
        }
    };
    let store = RedisStore::connect(&url, PREFIX).await.unwrap();
    let mut written = 0;
    loop {
        let mut s = session("writer", now_ms());
        s.state = if written % 3 == 0 {
            SessionState::Detached
        } else {
            SessionState::Active
        };
        s.detached_at_ms = if s.state == SessionState::Detached {
            now_ms()
        } else {
            0
        };
        store.put(&s).await.unwrap();
        if written % 2 == 0 {
            store.touch(&s.id, now_ms() + 1).await.unwrap();
        }
        if written % 5 == 0 {
            store.delete(&s.id).await.unwrap();
        }
        written += 1;
        if !endless && written == 50 {
            break;
        }
    }
    let owned = store.owned_by("writer").await.unwrap();
    assert_eq!(owned.len(), 40, "50 written, 10 deleted");
    if let Some(server) = &own_server {
        assert_consistent(server);
    }
}

/// Every hash has its index entries and every index entry its hash.
fn assert_consistent(server: &RedisServer) {
    let lines = |cmd: &[&str]| -> HashSet<String> {
        server
            .cli(cmd)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut hashes = HashSet::new();
    let mut cursor = "0".to_string();
    loop {
        let out = server.cli(&[
            "SCAN",
            &cursor,
            "MATCH",
            &format!("{PREFIX}session:*"),
            "COUNT",
            "1000",
        ]);
        let mut it = out.lines();
        cursor = it.next().unwrap_or("0").to_string();
        hashes.extend(it.map(|k| {
            k.trim_start_matches(&format!("{PREFIX}session:"))
                .to_string()
        }));
        if cursor == "0" {
            break;
        }
    }
    let active = lines(&["ZRANGE", &format!("{PREFIX}idx:active"), "0", "-1"]);
    let detached = lines(&["ZRANGE", &format!("{PREFIX}idx:detached"), "0", "-1"]);
    let owned = lines(&["SMEMBERS", &format!("{PREFIX}owner:writer")]);
    assert!(!hashes.is_empty());
    assert_eq!(hashes, active, "hash ⇔ active index");
    assert_eq!(hashes, owned, "hash ⇔ owner set");
    for id in &detached {
        assert!(
            hashes.contains(id),
            "detached index entry without a hash: {id}"
        );
        let state = server.cli(&["HGET", &format!("{PREFIX}session:{id}"), "state"]);
        assert_eq!(state, "detached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_way_leaves_hash_and_index_consistent() {
    let server = RedisServer::start().await;
    for round in 0..5 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "session_writer_child", "--nocapture"])
            .env("SANDPOOL_TEST_WRITER_URL", server.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it write for a while, then kill -9 it wherever it is.
        tokio::time::sleep(Duration::from_millis(300 + 97 * round)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_consistent(&server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_after_end_scrubs_before_the_next_session() {
    let instance = unique_instance("endscrub");
    let cleanup = Cleanup::new(&instance);
    let (m, _) = manager(
        Arc::new(MemoryStore::new()),
        &manager_config(&instance, 1, 1),
        fast_settings(),
        &cleanup,
    )
    .await;
    let first = m.open().await.unwrap();
    sh(
        m.pool_for_tests(),
        &first.lease.lease_ref(),
        "echo private > /workspace/p; sleep 500 >/dev/null 2>&1 &",
    )
    .await;
    let rx_container = first.lease.container_id.clone();
    m.end(&first.session.id, EndReason::Ended).await.unwrap();
    let second = within(30, "open again", m.open()).await.unwrap();
    assert_eq!(
        second.lease.container_id, rx_container,
        "pool of one: same container"
    );
    let out = sh(
        m.pool_for_tests(),
        &second.lease.lease_ref(),
        "ls -A /workspace; ps -o args | grep -c '^sleep 500'; true",
    )
    .await;
    assert_eq!(text(&out.stdout).trim(), "0");
    stop(&m).await;
}

/// An `open` dropped while its session record is being written (a client gone, a handler
/// cancelled) leaks neither the sandbox nor the record: the record, if it landed, is deleted
/// and then the sandbox goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_dropped_while_writing_its_record_leaks_nothing() {
    let server = RedisServer::start().await;
    let instance = unique_instance("open-drop");
    let cleanup = Cleanup::new(&instance);
    let store = redis_store(&server).await;
    let (m, _) = manager(
        store.clone(),
        &manager_config(&instance, 1, 2),
        fast_settings(),
        &cleanup,
    )
    .await;
    // Warm first, so that the open leases at once and the time runs out in the write (not in
    // a create of its own, which a loaded machine can make longer than the timeout).
    assert!(
        m.pool_for_tests()
            .wait_idle(1, Duration::from_secs(60))
            .await
    );
    server.freeze(true);
    // The write of the record hangs; the caller gives up.
    let dropped = tokio::time::timeout(Duration::from_millis(500), m.open()).await;
    assert!(dropped.is_err(), "open finished although Redis was frozen");
    assert_eq!(
        m.pool_for_tests().status().leased,
        1,
        "the sandbox is held until the store answers"
    );
    server.freeze(false);
    within(30, "the sandbox goes back", async {
        while m.pool_for_tests().status().leased != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        store.count().await.unwrap(),
        0,
        "no orphaned session record"
    );
    // And the pool still serves.
    let opened = within(30, "open after", m.open()).await.expect("open");
    assert!(m.end(&opened.session.id, EndReason::Ended).await.unwrap());
    stop(&m).await;
}

/// An instance whose heartbeat lapsed while it was alive finds, at its next catch-up, that
/// another instance took over one of its sessions: it gives up that lease (its pool slot is
/// free again) and never scrubs or removes the container, which it still labels as its own,
/// not even at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instance_hands_over_a_session_taken_while_its_heartbeat_lapsed() {
    let server = RedisServer::start().await;
    let (ia, ib) = (unique_instance("lapse-a"), unique_instance("lapse-b"));
    let (ca, cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let mut settings = fast_settings();
    // Long enough that a's heartbeat loop does not write the key again during the test.
    settings.heartbeat_ttl = Duration::from_secs(120);
    let (a, _) = manager(
        redis_store(&server).await,
        &manager_config(&ia, 1, 2),
        settings.clone(),
        &ca,
    )
    .await;
    let (b, _) = manager(
        redis_store(&server).await,
        &manager_config(&ib, 0, 2),
        settings,
        &cb,
    )
    .await;
    let opened = a.open().await.expect("open on a");
    let container = opened.lease.container_id.clone();
    sh(
        a.pool_for_tests(),
        &held(a.pool_for_tests(), &container),
        "echo kept > /workspace/note",
    )
    .await;
    a.detach(&opened.session.id).await;

    // a's heartbeat lapses although a is alive (a network partition, a long pause).
    server.cli(&["DEL", &format!("{PREFIX}heartbeat:{ia}")]);
    let taken = within(
        30,
        "take over",
        b.resume(&opened.session.id, &opened.resume_token),
    )
    .await
    .expect("take over");
    assert_eq!(taken.owner, ib);

    // a catches up: the session is b's, and so is the sandbox.
    a.catch_up().await;
    assert!(a.local_session(&opened.session.id).is_none());
    assert!(
        !a.pool_for_tests().is_leased(&container),
        "a gave up the lease of the container b now serves"
    );
    assert_eq!(
        a.pool_for_tests().status().leased,
        0,
        "a's pool slot is free again"
    );
    // a's reconcile runs (it lists its label, which the container still carries) and a shuts
    // down: neither touches b's sandbox.
    a.pool_for_tests().reconcile_once().await;
    stop(&a).await;
    let out = sh(
        b.pool_for_tests(),
        &held(b.pool_for_tests(), &container),
        "cat /workspace/note",
    )
    .await;
    assert_eq!(
        text(&out.stdout).trim(),
        "kept",
        "b's session keeps its files"
    );
    assert!(b.end(&opened.session.id, EndReason::Ended).await.unwrap());
    stop(&b).await;
    drop(ca);
    assert!(labeled_containers(&ia).is_empty());
}

/// Sandboxes that die together end every one of their sessions, at once and once each:
/// however busy the manager is ending one, it cannot miss another's death (issue 10, defect
/// 3: lost-lease news used to be a bounded event stream whose lagging receiver skipped
/// events; it is now a state the manager reads after each change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_that_die_together_end_every_session() {
    const N: usize = 6;
    let instance = unique_instance("die-together");
    let cleanup = Cleanup::new(&instance);
    let (m, hooks) = manager(
        Arc::new(MemoryStore::new()),
        &manager_config(&instance, N, N),
        fast_settings(),
        &cleanup,
    )
    .await;
    assert!(
        m.pool_for_tests()
            .wait_idle(N, Duration::from_secs(120))
            .await
    );
    let mut opened = Vec::new();
    for _ in 0..N {
        opened.push(within(30, "open", m.open()).await.unwrap());
    }
    // One `docker kill` for all of them: their deaths arrive in one burst.
    let mut args = vec!["kill"];
    args.extend(opened.iter().map(|o| o.lease.container_id.as_str()));
    docker(&args);
    within(20, "every session ends as sandbox_lost", async {
        loop {
            let ended = {
                let ends = hooks.ends.lock().unwrap();
                opened
                    .iter()
                    .filter(|o| {
                        ends.get(&o.session.id)
                            .is_some_and(|r| r.contains(&EndReason::SandboxLost))
                    })
                    .count()
            };
            if ended == N {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let ends = hooks.ends.lock().unwrap().clone();
    for o in &opened {
        assert_eq!(
            ends[&o.session.id],
            vec![EndReason::SandboxLost],
            "each session ends exactly once"
        );
        assert!(m.local_session(&o.session.id).is_none());
    }
    stop(&m).await;
}

/// A resume that reaches a live replica other than the owner moves the session there at once
/// (no heartbeat to wait for): the owner tells its socket `moved`, gives the sandbox up
/// without a scrub and records it as handed over; the new owner attaches to the same sandbox,
/// files and processes included. And back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_owner_hands_a_resumed_session_over_at_once() {
    let server = RedisServer::start().await;
    let (ia, ib) = (unique_instance("live-a"), unique_instance("live-b"));
    let (ca, cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let (a, hooks_a) = manager(
        redis_store(&server).await,
        &manager_config(&ia, 1, 2),
        fast_settings(),
        &ca,
    )
    .await;
    let (b, _) = manager(
        redis_store(&server).await,
        &manager_config(&ib, 0, 2),
        fast_settings(),
        &cb,
    )
    .await;
    let opened = within(60, "open on a", a.open()).await.expect("open on a");
    let container = opened.lease.container_id.clone();
    sh(
        a.pool_for_tests(),
        &held(a.pool_for_tests(), &container),
        "echo from-a > /workspace/note; sleep 600 >/dev/null 2>&1 &",
    )
    .await;

    // The client is still connected to a (not even detached) when it resumes on b.
    let started = std::time::Instant::now();
    let moved = within(
        10,
        "resume on b",
        b.resume(&opened.session.id, &opened.resume_token),
    )
    .await
    .expect("a live owner hands over");
    let took = started.elapsed();
    assert_eq!(moved.owner, ib);
    assert_eq!(moved.container_id, container, "the same sandbox");
    assert!(took < Duration::from_secs(2), "hand-over took {took:?}");
    assert_eq!(
        hooks_a.ends.lock().unwrap()[&opened.session.id],
        vec![EndReason::Moved],
        "a told its socket"
    );
    assert!(a.local_session(&opened.session.id).is_none());
    assert!(!a.pool_for_tests().is_leased(&container));
    assert!(a.pool_for_tests().is_handed_over(&container));
    assert_eq!(a.pool_for_tests().status().leased, 0, "a's slot is free");
    assert_eq!(
        a.store().handed(&ia).await.unwrap(),
        vec![container.clone()],
        "recorded, so that a restart of a leaves it alone"
    );
    let out = sh(
        b.pool_for_tests(),
        &held(b.pool_for_tests(), &container),
        "cat /workspace/note; ps -o args | grep -c '^sleep 600'",
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "from-a\n1\n",
        "files and processes came along"
    );
    // a's reconcile must not take it for a stray although it carries a's label.
    a.pool_for_tests().reconcile_once().await;
    assert!(docker_exists(&container));

    // And back to a.
    let back = within(
        10,
        "resume on a",
        a.resume(&opened.session.id, &opened.resume_token),
    )
    .await
    .expect("b hands back");
    assert_eq!(back.owner, ia);
    assert!(a.pool_for_tests().is_leased(&container));
    assert!(!b.pool_for_tests().is_leased(&container));
    let out = sh(
        a.pool_for_tests(),
        &held(a.pool_for_tests(), &container),
        "cat /workspace/note",
    )
    .await;
    assert_eq!(text(&out.stdout).trim(), "from-a");

    // Ended on a: the sandbox is removed (it was adopted, so it is never pooled again).
    assert!(a.end(&opened.session.id, EndReason::Ended).await.unwrap());
    within(30, "sandbox removed", async {
        while docker_exists(&container) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    stop(&a).await;
    stop(&b).await;
}

/// The janitors of two live replicas, running together over the sessions a dead replica
/// left, end each session exactly once, remove its sandbox, and (with the dead replica gone
/// for good) remove its idle sandboxes too: nothing of it is left, nothing is ended twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_janitors_end_a_dead_replicas_sessions_once_each() {
    const N: usize = 6;
    let server = RedisServer::start().await;
    let (ia, ib, ic) = (
        unique_instance("jan-a"),
        unique_instance("jan-b"),
        unique_instance("jan-c"),
    );
    let (ca, cb, cc) = (Cleanup::new(&ia), Cleanup::new(&ib), Cleanup::new(&ic));
    let mut settings = fast_settings();
    settings.heartbeat_ttl = Duration::from_millis(900);
    let (a, _) = manager(
        redis_store(&server).await,
        &manager_config(&ia, 2, N + 2),
        settings.clone(),
        &ca,
    )
    .await;
    let mut opened = Vec::new();
    for _ in 0..N {
        let o = within(60, "open on a", a.open()).await.unwrap();
        a.detach(&o.session.id).await;
        opened.push(o);
    }
    let warm = a
        .pool_for_tests()
        .wait_idle(2, Duration::from_secs(60))
        .await;
    assert!(warm, "{:?}", a.pool_for_tests().status());
    // a dies: nothing ended, its heartbeat lapses, its containers stay.
    a.abandon().await;
    a.pool_for_tests().abandon().await;
    assert!(labeled_containers(&ia).len() >= N + 2);

    let mut janitors = settings.clone();
    janitors.janitor_interval = Duration::from_millis(100);
    let (b, hooks_b) = manager(
        redis_store(&server).await,
        &manager_config(&ib, 0, 2),
        janitors.clone(),
        &cb,
    )
    .await;
    let (c, hooks_c) = manager(
        redis_store(&server).await,
        &manager_config(&ic, 0, 2),
        janitors,
        &cc,
    )
    .await;
    within(60, "every session ended", async {
        while b.store().count().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut ends: HashMap<String, Vec<EndReason>> = HashMap::new();
    for hooks in [&hooks_b, &hooks_c] {
        for (id, reasons) in hooks.ends.lock().unwrap().iter() {
            ends.entry(id.clone()).or_default().extend(reasons);
        }
    }
    for o in &opened {
        assert_eq!(
            ends.get(&o.session.id),
            Some(&vec![EndReason::Disconnected]),
            "ended exactly once, by one of the two janitors"
        );
    }
    assert_eq!(ends.len(), N);
    // The dead replica's sandboxes: its sessions' go with them, its idle ones are swept.
    within(60, "nothing of a is left", async {
        while !labeled_containers(&ia).is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    stop(&b).await;
    stop(&c).await;
}

/// A stale record (a catch-up that raced an end, a failed delete swept later) names a sandbox
/// that another session holds now: ending it must touch nothing. Before leases were fenced,
/// the janitor released that sandbox by its container id: the other session's files were
/// wiped and its next command ran in a sandbox handed to a third caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_record_cannot_release_a_sandbox_another_session_holds() {
    let server = RedisServer::start().await;
    let instance = unique_instance("stale-record");
    let cleanup = Cleanup::new(&instance);
    // One sandbox: the second session gets the first one's.
    let (m, _) = manager(
        redis_store(&server).await,
        &manager_config(&instance, 1, 1),
        fast_settings(),
        &cleanup,
    )
    .await;
    let first = within(30, "open", m.open()).await.expect("open");
    let stale = m.store().get(&first.session.id).await.unwrap().unwrap();
    assert!(m.end(&first.session.id, EndReason::Ended).await.unwrap());
    wait_recycled(&m, &first.lease.container_id).await;
    let second = within(30, "open", m.open()).await.expect("open");
    assert_eq!(second.lease.container_id, first.lease.container_id);
    assert!(second.lease.fence > first.lease.fence);
    sh(
        m.pool_for_tests(),
        &second.lease.lease_ref(),
        "echo mine > /workspace/f",
    )
    .await;
    // The old record comes back, long idle: what an unconditional catch-up wrote after the
    // end had deleted it. The janitor claims and ends it.
    let mut resurrected = stale.clone();
    resurrected.last_active_ms = now_ms() - 10 * 3600 * 1000;
    m.store().put(&resurrected).await.unwrap();
    let report = within(60, "janitor pass", m.janitor_pass()).await.unwrap();
    assert!(report.ended >= 1, "the stale record was ended: {report:?}");
    assert!(m.store().get(&first.session.id).await.unwrap().is_none());
    // The second session's sandbox is untouched, still leased to it, its file there.
    assert!(
        m.pool_for_tests().lease_of(&second.lease.container_id) == Some(second.lease.lease_ref())
    );
    let out = within(
        30,
        "command",
        m.run_command(
            &second.session.id,
            "cat /workspace/f",
            Duration::from_secs(10),
            1024,
            None,
        ),
    )
    .await
    .expect("the second session still runs commands");
    assert_eq!(text(&out.stdout), "mine\n");
    stop(&m).await;
}
