//! Fenced ownership (issue 14): one sandbox, one holder, across replicas, crashes, freezes
//! and restarts. Real parts only: real `sandpool serve` processes sharing a real Redis, the
//! official socket.io client, the real engine. Each test tries to break ownership and fails
//! if it can.

mod common;

use std::time::Duration;

use common::*;
use sandpool::pool::{PoolError, SupervisorError};
use sandpool::session::{InstanceClaim, Liveness, RedisStore};

fn replica_env(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("SANDPOOL_REDIS_URL", redis.url()),
        ("SANDPOOL_HEARTBEAT_TTL_SECS", "3".into()),
        ("SANDPOOL_JANITOR_INTERVAL_SECS", "1".into()),
        ("SANDPOOL_POOL_MIN_IDLE", "2".into()),
        ("SANDPOOL_POOL_MAX", "6".into()),
    ]
}

async fn replica(instance: &str, env: &[(&'static str, String)]) -> Service {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_service(instance, &env).await
}

/// The scenario of issue 14, run exactly as written: A is killed, alice resumes through B
/// once A's heartbeat lapses, A starts again with the same instance id. Before the fix, A's
/// start-up scrubbed alice's sandbox and handed it to a newcomer on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_leaves_a_taken_over_sandbox_alone() {
    let redis = RedisServer::start().await;
    let (ia, ib) = (unique_instance("own-a"), unique_instance("own-b"));
    let (_ca, _cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let env = replica_env(&redis);
    let a = replica(&ia, &env).await;
    let b = replica(&ib, &env).await;
    let url_b = format!("http://{}", b.addr);
    let a_addr = a.addr;
    let mut a = Some(a);
    let mut restarted: Option<Service> = None;
    let alice_container = std::sync::Mutex::new(String::new());
    let out = tokio::task::block_in_place(|| {
        run_scenario(
            "stale_owner",
            a_addr,
            &[("URL_B", &url_b)],
            |step| match step {
                "kill_a" => {
                    // SIGKILL: nothing of A's shutdown runs; its sandboxes stay labeled with it.
                    let mut service = a.take().expect("A runs");
                    service.child.kill().expect("kill -9 A");
                    service.child.wait().expect("A reaped");
                }
                "restart_a" => {
                    // Same instance id, same port: what a restart policy does. The new A waits
                    // out its predecessor's heartbeat (it lapsed already) and reconciles.
                    let mut cmd_env = env.clone();
                    cmd_env.push(("SANDPOOL_LISTEN", a_addr.to_string()));
                    let rt = tokio::runtime::Handle::current();
                    restarted = Some(rt.block_on(async {
                        let env: Vec<(&str, &str)> =
                            cmd_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        spawn_service_at(&ia, a_addr, &env).await
                    }));
                    *alice_container.lock().unwrap() = labeled_containers(&ia).join(" ");
                }
                "a_reconciled" => {
                    // A's reconcile runs every 500 ms and its janitor every 500 ms: give both a
                    // few rounds before alice looks again.
                    std::thread::sleep(Duration::from_secs(3));
                }
                other => panic!("unknown step {other}"),
            },
        )
    });
    assert_eq!(out["newcomers"], 4);
    // Alice's sandbox still carries A's label and runs: nobody removed it either.
    let containers_after = labeled_containers(&ia);
    assert!(
        !alice_container.lock().unwrap().is_empty() && !containers_after.is_empty(),
        "A's label is on alice's sandbox and A's own pool"
    );
    drop(restarted);
    drop(b);
}

/// Like `spawn_service`, on a given address (a restart on the same port).
async fn spawn_service_at(
    instance: &str,
    addr: std::net::SocketAddr,
    env: &[(&str, &str)],
) -> Service {
    let mut cmd = std::process::Command::new(sandpool_bin());
    cmd.arg("serve")
        .env("SANDPOOL_INSTANCE_ID", instance)
        .env("SANDPOOL_POOL_RECONCILE_INTERVAL_MS", "500")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("SANDPOOL_LISTEN", addr.to_string());
    let child = cmd.spawn().expect("binary starts");
    let mut service = Service { child, addr };
    within(90, "restarted service ready", async {
        loop {
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!("sandpool exited while starting again: {status}");
            }
            if try_http_get(addr, "/readyz")
                .await
                .is_some_and(|(s, _)| s == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    service
}

/// Two live processes never share an instance id: the second refuses to start, with a
/// message that names the id, while the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_instance_id_refuses_to_start() {
    let redis = RedisServer::start().await;
    let ia = unique_instance("own-dup");
    let _ca = Cleanup::new(&ia);
    let env = replica_env(&redis);
    let first = replica(&ia, &env).await;
    let mut cmd = std::process::Command::new(sandpool_bin());
    cmd.arg("serve")
        .env("SANDPOOL_INSTANCE_ID", &ia)
        .env("SANDPOOL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let second = cmd.spawn().expect("binary starts");
    let out = tokio::task::block_in_place(|| second.wait_with_output()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second process must not serve");
    assert!(
        stderr.contains("in use by another live process") && stderr.contains(&ia),
        "a clear message naming the id: {stderr}"
    );
    let (status, _) = http_get(first.addr, "/readyz").await;
    assert_eq!(status, 200, "the first process still serves");
    // And the store says so too: the first incarnation holds the id.
    let store = RedisStore::connect(&redis.url(), "sandpool:")
        .await
        .unwrap();
    assert!(matches!(
        store
            .claim_instance(&ia, "someone-else", Duration::from_secs(3))
            .await
            .unwrap(),
        InstanceClaim::Held { .. }
    ));
}

/// A lease is a value: once released, or leased again, the old lease touches nothing, in
/// the pool (typed `Stale`) or in the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_is_refused_and_touches_nothing() {
    let instance = unique_instance("own-stale");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max = 1;
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let first = within(30, "acquire", pool.acquire()).await.unwrap();
    let old = first.lease_ref();
    sh(&pool, &old, "echo one > /workspace/mine").await;
    let rx = pool.release(&old).expect("released under its own lease");
    within(60, "recycled", rx).await.unwrap();
    let second = within(30, "acquire", pool.acquire()).await.unwrap();
    assert_eq!(second.container_id, first.container_id, "one container");
    assert!(
        second.fence > first.fence,
        "a later lease has a larger token"
    );
    let new = second.lease_ref();
    sh(&pool, &new, "echo two > /workspace/theirs").await;
    // The old holder tries every door.
    let spec =
        sandpool::pool::CommandSpec::shell("rm -f /workspace/theirs", Duration::from_secs(5), 1024);
    assert!(matches!(
        pool.run(&old, &spec, None).await,
        Err(PoolError::Stale { .. })
    ));
    assert!(matches!(pool.release(&old), Err(PoolError::Stale { .. })));
    assert!(
        !pool.hand_over(&old),
        "a stale lease cannot give the sandbox away"
    );
    assert!(matches!(
        pool.ping(&old).await,
        Err(PoolError::Stale { .. })
    ));
    let out = sh(&pool, &new, "cat /workspace/theirs").await;
    assert_eq!(
        text(&out.stdout),
        "two\n",
        "the new holder's file is intact"
    );
    assert!(pool.is_leased(&new.container_id));
    shutdown_leaves_nothing(&pool, &instance).await;
}

/// The sandbox's supervisor is fenced too: when another instance takes the sandbox over
/// under a newer lease (a frozen replica's session taken by a live one), the old holder's
/// next request is refused as `fenced` by the supervisor itself (the old pool still
/// believes it holds the lease), its running command is killed, and the old pool lets the
/// sandbox go without scrubbing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_serves_only_the_newest_holder() {
    let (ia, ib) = (unique_instance("own-fa"), unique_instance("own-fb"));
    let (ca, cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let mut config_a = test_config(&ia);
    config_a.pool.min_idle = 1;
    config_a.pool.max = 2;
    let mut config_b = test_config(&ib);
    config_b.pool.min_idle = 0;
    config_b.pool.max = 2;
    let a = within(90, "warm pool a", warm_pool(&config_a, &ca)).await;
    let b = within(90, "pool b", warm_pool(&config_b, &cb)).await;
    let lease = within(30, "acquire", a.acquire()).await.unwrap();
    let old = lease.lease_ref();
    sh(&a, &old, "echo kept > /workspace/f").await;
    // A long command of the old holder, running when the sandbox changes hands.
    let spec =
        sandpool::pool::CommandSpec::shell("sleep 30; echo late", Duration::from_secs(40), 1024);
    let running = {
        let (a, old) = (a.clone(), old.clone());
        tokio::spawn(async move { a.run(&old, &spec, None).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // B takes over under a token of a later epoch (as a takeover does, after the store's
    // next epoch): larger than anything A minted.
    b.advance_epoch((old.fence >> 32) + 1);
    let fence = b.mint_fence();
    let taken = within(30, "take over", b.take_over(&old.container_id, fence))
        .await
        .expect("b takes the sandbox over");
    let killed = within(20, "old command ends", running).await.unwrap();
    match killed {
        Ok(out) => assert_eq!(out.exit_code, None, "killed, not finished: {out:?}"),
        Err(e) => panic!("the old holder's command should end as killed: {e:?}"),
    }
    // A still thinks it holds the lease; the supervisor says otherwise.
    let quick =
        sandpool::pool::CommandSpec::shell("rm -f /workspace/f", Duration::from_secs(5), 1024);
    match within(30, "old holder's command", a.run(&old, &quick, None)).await {
        Err(PoolError::Supervisor(SupervisorError::Fenced(_))) => {}
        other => panic!("the old holder must be fenced out: {other:?}"),
    }
    assert!(!a.is_leased(&old.container_id), "a let the sandbox go");
    assert!(a.is_handed_over(&old.container_id));
    let out = sh(&b, &taken, "cat /workspace/f").await;
    assert_eq!(
        text(&out.stdout),
        "kept\n",
        "nothing of the new holder's was touched"
    );
    // A's shutdown leaves the handed-over sandbox to B; B's removes it.
    a.shutdown(Duration::from_secs(20)).await;
    assert!(
        labeled_containers(&ia).contains(&old.container_id),
        "a does not remove a sandbox another holder serves"
    );
    b.release(&taken).unwrap();
    b.shutdown(Duration::from_secs(20)).await;
}

/// A rolling restart loses no session and no file: a replica stopped with SIGTERM while a
/// peer lives hands its sessions over (the client hears `moved` and resumes on the peer, same
/// sandbox). The last replica, with no peer left, ends its sessions and leaves no container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_live_peer_hands_sessions_over_and_the_last_leaves_nothing() {
    let redis = RedisServer::start().await;
    let (ia, ib) = (unique_instance("own-da"), unique_instance("own-db"));
    let (_ca, _cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let env = replica_env(&redis);
    let a = replica(&ia, &env).await;
    let b = replica(&ib, &env).await;
    let url_b = format!("http://{}", b.addr);
    let a_addr = a.addr;
    let mut a = Some(a);
    tokio::task::block_in_place(|| {
        run_scenario("drain", a_addr, &[("URL_B", &url_b)], |step| match step {
            "term_a" => {
                let status = sigterm_and_wait(a.take().expect("A runs"));
                assert!(status.success(), "A stops cleanly: {status}");
            }
            other => panic!("unknown step {other}"),
        })
    });
    // B holds alice's sandbox (labeled with A) and the rest of its pool; stopping B, the
    // last replica, ends everything and removes every sandbox of both labels.
    let status = tokio::task::block_in_place(|| sigterm_and_wait(b));
    assert!(status.success(), "B stops cleanly: {status}");
    let left: Vec<String> = labeled_containers(&ia)
        .into_iter()
        .chain(labeled_containers(&ib))
        .collect();
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

/// Waits until the replica's `/readyz` reports its hand-over bus `up`.
async fn bus_up(addr: std::net::SocketAddr) {
    within(30, "bus subscribed again", async {
        loop {
            if let Some((_, body)) = try_http_get(addr, "/readyz").await
                && body.contains("\"bus\":\"up\"")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// The hand-over bus is subscribed again after Redis restarts (with its data lost): a live
/// owner still answers, and a resume through another replica is handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_comes_back_after_redis_restarts() {
    let mut redis = RedisServer::start().await;
    let (ia, ib) = (unique_instance("own-ba"), unique_instance("own-bb"));
    let (_ca, _cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let env = replica_env(&redis);
    let a = replica(&ia, &env).await;
    let b = replica(&ib, &env).await;
    let url_b = format!("http://{}", b.addr);
    let (a_addr, b_addr) = (a.addr, b.addr);
    let out = tokio::task::block_in_place(|| {
        run_scenario(
            "bus_restart",
            a_addr,
            &[("URL_B", &url_b)],
            |step| match step {
                "restart_redis" => {
                    let rt = tokio::runtime::Handle::current();
                    rt.block_on(async {
                        redis.restart().await;
                        bus_up(a_addr).await;
                        bus_up(b_addr).await;
                    });
                }
                other => panic!("unknown step {other}"),
            },
        )
    });
    assert_eq!(out["instance"], ib.as_str(), "handed over to B");
    drop((a, b));
}

/// Self-fencing: with Redis frozen, the replica stops serving its sessions within two
/// thirds of the heartbeat TTL (a typed `unavailable`, nothing run), and serves again once its
/// heartbeat is renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_renew_its_heartbeat_stops_serving() {
    let redis = RedisServer::start().await;
    let ia = unique_instance("own-sf");
    let _ca = Cleanup::new(&ia);
    let env = replica_env(&redis);
    let a = replica(&ia, &env).await;
    let a_addr = a.addr;
    tokio::task::block_in_place(|| {
        run_scenario("self_fence", a_addr, &[], |step| match step {
            "freeze_redis" => {
                redis.freeze(true);
                // Past two thirds of the 3 s TTL since the last renewal.
                std::thread::sleep(Duration::from_millis(3200));
            }
            "thaw_redis" => redis.freeze(false),
            other => panic!("unknown step {other}"),
        })
    });
    drop(a);
}

/// The command bound follows the session across connections: a resume does not get a fresh
/// set of places while the first connection's commands still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_bound_is_the_sessions_not_the_connections() {
    let ia = unique_instance("own-bound");
    let _ca = Cleanup::new(&ia);
    let a = spawn_service(&ia, &[]).await;
    tokio::task::block_in_place(|| {
        run_scenario("bound_follows_session", a.addr, &[], |step| {
            panic!("unknown step {step}")
        })
    });
}

/// A replica that took a session over, killed and started again with its id, takes that
/// session's sandbox back although it carries the other replica's label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_sessions_the_replica_had_taken_over() {
    let redis = RedisServer::start().await;
    let (ia, ib) = (unique_instance("own-ra"), unique_instance("own-rb"));
    let (_ca, _cb) = (Cleanup::new(&ia), Cleanup::new(&ib));
    let env = replica_env(&redis);
    let a = replica(&ia, &env).await;
    let b = replica(&ib, &env).await;
    let url_b = format!("http://{}", b.addr);
    let (a_addr, b_addr) = (a.addr, b.addr);
    let mut a = Some(a);
    let mut b = Some(b);
    let mut b_again: Option<Service> = None;
    tokio::task::block_in_place(|| {
        run_scenario("readopt", a_addr, &[("URL_B", &url_b)], |step| match step {
            "kill_a" => {
                let mut service = a.take().expect("A runs");
                service.child.kill().expect("kill -9 A");
                service.child.wait().expect("A reaped");
            }
            "restart_b" => {
                let mut service = b.take().expect("B runs");
                service.child.kill().expect("kill -9 B");
                service.child.wait().expect("B reaped");
                let rt = tokio::runtime::Handle::current();
                b_again = Some(rt.block_on(async {
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    spawn_service_at(&ib, b_addr, &env).await
                }));
            }
            other => panic!("unknown step {other}"),
        })
    });
    drop(b_again);
}
