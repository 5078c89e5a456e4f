//! Who may open a session, and what connections can hold (issue 10, security part): JWTs in
//! the handshake (`auth.token`), the per-subject limit over replicas sharing Redis, resumes
//! bound to their subject, and the bound on what connect-and-drop clients hold. Driven with
//! the official socket.io client (`tests/js/scenarios.js`) against the real binary on the
//! real Docker engine and a real `redis-server`; tokens are minted here with `jsonwebtoken`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use sandpool::session::{
    LeaseRef, MemoryStore, RedisStore, Session, SessionStore, hash_token, now_ms,
};
use serde_json::{Value, json};

const SECRET: &str = "the-test-secret-of-at-least-32-bytes";

/// A P-256 key pair made for these tests only (`openssl ecparam -name prime256v1`): the
/// private half signs ES256 tokens, the public half is the service's key file.
const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgM54pwCheY+B6Othq
khmiN5zXMlNtJgeNYYXaI2DyHiKhRANCAAQA/S1U7Qdtk2Qv+sVYR/WrhCsczA44
Iv7i12WOAtMfV88cq6UH5zyR0EFkJKEcKsVCuFSZbflHMCZ54hEu99Ik
-----END PRIVATE KEY-----
";
const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAP0tVO0HbZNkL/rFWEf1q4QrHMwO
OCL+4tdljgLTH1fPHKulB+c8kdBBZCShHCrFQrhUmW35RzAmeeIRLvfSJA==
-----END PUBLIC KEY-----
";

fn now_secs() -> i64 {
    now_ms() / 1000
}

/// An HS256 token with `claims`, signed with `secret`.
fn hs256(claims: Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A valid token of `sub` (none when `None`) for the test secret.
fn token_of(sub: Option<&str>) -> String {
    let mut claims = json!({"exp": now_secs() + 600});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    hs256(claims, SECRET.as_bytes())
}

/// A JWT part: base64url of the JSON, unpadded.
fn part(v: &Value) -> String {
    b64(v.to_string().as_bytes())
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string()
}

/// An unsigned token (`alg: none`) with these claims, made by hand: no library signs one.
fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        part(&json!({"alg": "none", "typ": "JWT"})),
        part(claims)
    )
}

/// Runs a scenario in a blocking thread; `on_step` may block on async work with the handle.
async fn scenario(
    name: &str,
    addr: std::net::SocketAddr,
    env: Vec<(String, String)>,
    mut on_step: impl FnMut(&str, &tokio::runtime::Handle) + Send + 'static,
) -> Value {
    let name = name.to_string();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_scenario(&name, addr, &env, |step| on_step(step, &handle))
    })
    .await
    .expect("scenario thread")
}

/// The service's pool and local session counts.
async fn pool(addr: std::net::SocketAddr) -> Value {
    json_body(&http_get(addr, "/api/pool").await.1)
}

fn local(pool: &Value, state: &str) -> u64 {
    pool["sessions"]["local"][state]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Nothing is leased and no session exists on the service: the refusals held nothing.
async fn holds_nothing(addr: std::net::SocketAddr) {
    let p = pool(addr).await;
    assert_eq!(p["leased"], 0, "{p}");
    for state in ["active", "detached", "ending"] {
        assert_eq!(local(&p, state), 0, "{state}: {p}");
    }
}

/// A service with the test secret (and `extra`), the scenario's refusals, then nothing held.
async fn refusals(name: &str, cases: Vec<(&str, Value)>) -> Value {
    let instance = unique_instance(name);
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_AUTH_HS256_SECRET", SECRET)]).await;
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(what, auth)| json!({"what": what, "auth": auth}))
        .collect();
    let env = vec![("REFUSALS".to_string(), Value::from(cases).to_string())];
    let out = scenario("auth_refused", service.addr, env, |_, _| {}).await;
    holds_nothing(service.addr).await;
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
    out["messages"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_is_refused_with_unauthorized_and_holds_no_sandbox() {
    let messages = refusals(
        "auth-missing",
        vec![
            ("no auth", Value::Null),
            ("empty auth", json!({})),
            ("empty token", json!({"token": ""})),
            ("token not a string", json!({"token": 42})),
        ],
    )
    .await;
    assert_eq!(
        messages["no auth"], "this service needs a token: pass a JWT as auth.token",
        "{messages}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let expired = hs256(
        json!({"sub": "alice", "exp": now_secs() - 60}),
        SECRET.as_bytes(),
    );
    let no_exp = hs256(json!({"sub": "alice"}), SECRET.as_bytes());
    let messages = refusals(
        "auth-expired",
        vec![
            ("expired", json!({"token": expired})),
            ("no exp", json!({"token": no_exp})),
        ],
    )
    .await;
    assert_eq!(messages["expired"], "the token has expired", "{messages}");
    assert_eq!(
        messages["no exp"], "the token has no exp claim",
        "{messages}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused() {
    let claims = json!({"sub": "alice", "exp": now_secs() + 600});
    let wrong_secret = hs256(claims.clone(), b"another-secret-of-at-least-32-bytes!");
    let other_alg = encode(
        &Header::new(Algorithm::HS384),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // The right signature on other claims: the payload was changed after signing.
    let valid = token_of(Some("alice"));
    let mut parts: Vec<&str> = valid.split('.').collect();
    let bob_payload = part(&json!({"sub": "bob", "exp": now_secs() + 600}));
    parts[1] = &bob_payload;
    let tampered = parts.join(".");
    let messages = refusals(
        "auth-forged",
        vec![
            ("wrong secret", json!({"token": wrong_secret})),
            ("alg none", json!({"token": unsigned(&claims)})),
            ("HS384", json!({"token": other_alg})),
            ("tampered payload", json!({"token": tampered})),
            ("not a JWT", json!({"token": "not.a.jwt"})),
        ],
    )
    .await;
    assert_eq!(
        messages["wrong secret"], "the token's signature is not valid",
        "{messages}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_opens_a_session_that_runs_commands() {
    let instance = unique_instance("auth-valid");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_AUTH_HS256_SECRET", SECRET)]).await;
    let env = vec![("TOKEN_ALICE".to_string(), token_of(Some("alice")))];
    scenario("auth_valid", service.addr, env, |_, _| {}).await;
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// The public-key variant: ES256 tokens signed with the private half verify; an HS256 token
/// whose "secret" is the public key (the classic algorithm confusion) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_key_verifies_es256_tokens_and_refuses_the_hmac_confusion() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("auth.pub.pem");
    std::fs::write(&key_file, EC_PUBLIC_PEM).unwrap();
    let instance = unique_instance("auth-es256");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[("SANDPOOL_AUTH_PUBLIC_KEY_FILE", key_file.to_str().unwrap())],
    )
    .await;
    let claims = json!({"sub": "alice", "exp": now_secs() + 600});
    let es256 = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap(),
    )
    .unwrap();
    let env = vec![("TOKEN_ALICE".to_string(), es256)];
    scenario("auth_valid", service.addr, env, |_, _| {}).await;
    let confused = hs256(claims, EC_PUBLIC_PEM.as_bytes());
    let cases = json!([
        {"what": "HS256 signed with the public key", "auth": {"token": confused}},
        {"what": "an HS256 token of the right shape", "auth": {"token": token_of(Some("alice"))}},
    ]);
    let env = vec![("REFUSALS".to_string(), cases.to_string())];
    let out = scenario("auth_refused", service.addr, env, |_, _| {}).await;
    assert_eq!(
        out["messages"]["HS256 signed with the public key"],
        "the token's algorithm is not the one configured"
    );
    holds_nothing(service.addr).await;
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// A bad key setting stops the service at startup with a message naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_settings_stop_startup_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(
        &not_a_key,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("SANDPOOL_AUTH_HS256_SECRET", "too-short")],
            "SANDPOOL_AUTH_HS256_SECRET must be at least 32 bytes",
        ),
        (
            &[("SANDPOOL_AUTH_PUBLIC_KEY_FILE", missing.to_str().unwrap())],
            "SANDPOOL_AUTH_PUBLIC_KEY_FILE: cannot read",
        ),
        (
            &[("SANDPOOL_AUTH_PUBLIC_KEY_FILE", not_a_key.to_str().unwrap())],
            "SANDPOOL_AUTH_PUBLIC_KEY_FILE: ",
        ),
        (
            &[
                ("SANDPOOL_AUTH_HS256_SECRET", SECRET),
                ("SANDPOOL_AUTH_PUBLIC_KEY_FILE", not_a_key.to_str().unwrap()),
            ],
            "both set",
        ),
    ];
    for (env, expected) in cases {
        let mut cmd = std::process::Command::new(sandpool_bin());
        cmd.arg("serve")
            .env("SANDPOOL_LISTEN", "127.0.0.1:0")
            .env("SANDPOOL_INSTANCE_ID", unique_instance("auth-bad-key"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let out = within(30, "the service refuses to start", async {
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap()
        })
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} started");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    }
}

/// Tokens for alice, bob and one without a subject.
fn subject_tokens() -> Vec<(String, String)> {
    vec![
        ("TOKEN_ALICE".into(), token_of(Some("alice"))),
        ("TOKEN_BOB".into(), token_of(Some("bob"))),
        ("TOKEN_NO_SUB".into(), token_of(None)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_needs_a_token_of_the_sessions_subject() {
    let instance = unique_instance("auth-resume");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(&instance, &[("SANDPOOL_AUTH_HS256_SECRET", SECRET)]).await;
    scenario("auth_resume", service.addr, subject_tokens(), |_, _| {}).await;
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// Two replicas share one Redis: alice's limit (2) holds over both, bob is counted apart, and
/// an end frees a slot for either replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_holds_at_most_its_limit_over_every_replica_and_an_end_frees_a_slot() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (one, two) = (
        unique_instance("auth-limit-a"),
        unique_instance("auth-limit-b"),
    );
    let (_c1, _c2) = (Cleanup::new(&one), Cleanup::new(&two));
    let env = [
        ("SANDPOOL_AUTH_HS256_SECRET", SECRET),
        ("SANDPOOL_AUTH_MAX_SESSIONS_PER_SUBJECT", "2"),
        ("SANDPOOL_REDIS_URL", url.as_str()),
        ("SANDPOOL_POOL_MIN_IDLE", "2"),
    ];
    let first = spawn_service(&one, &env).await;
    let second = spawn_service(&two, &env).await;
    let mut tokens = subject_tokens();
    tokens.push(("URL2".into(), format!("http://{}", second.addr)));
    let out = scenario("auth_limit", first.addr, tokens, |_, _| {}).await;
    assert_eq!(
        out["message"], "subject alice already holds its maximum of 2 live sessions",
        "{out}"
    );
    // Every session ended: no slot is left taken.
    assert_eq!(redis.cli(&["SCARD", "sandpool:subject:alice"]), "0");
    assert!(sigterm_and_wait(first).success());
    assert!(sigterm_and_wait(second).success());
    assert!(labeled_containers(&one).is_empty() && labeled_containers(&two).is_empty());
}

/// A subject's slot comes back after a failed open and after the janitor ends its dropped
/// session, and stays taken when Redis loses its data under a live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subjects_slots_are_freed_by_failed_opens_and_expiry_and_survive_store_loss() {
    let redis = Arc::new(tokio::sync::Mutex::new(RedisServer::start().await));
    let url = redis.lock().await.url();
    let instance = unique_instance("auth-freed");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_AUTH_HS256_SECRET", SECRET),
            ("SANDPOOL_AUTH_MAX_SESSIONS_PER_SUBJECT", "1"),
            ("SANDPOOL_REDIS_URL", url.as_str()),
            ("SANDPOOL_POOL_MIN_IDLE", "1"),
            ("SANDPOOL_POOL_MAX", "1"),
            ("SANDPOOL_POOL_ACQUIRE_TIMEOUT_MS", "3000"),
            ("SANDPOOL_RECONNECT_GRACE_SECS", "1"),
            ("SANDPOOL_JANITOR_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let tokens = vec![
        ("TOKEN_ALICE".to_string(), token_of(Some("alice"))),
        ("TOKEN_ANON".to_string(), token_of(None)),
    ];
    let server = redis.clone();
    scenario("auth_freed", service.addr, tokens, move |step, handle| {
        assert_eq!(step, "lose-store");
        handle.block_on(async {
            let mut redis = server.lock().await;
            redis.restart().await;
            // The catch-up writes alice's live session again, with its subject's slot.
            within(30, "alice's slot written again", async {
                while redis.cli(&["SCARD", "sandpool:subject:alice"]) != "1" {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
        });
    })
    .await;
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// Without authentication, a flood of connect-and-drop clients (scaled down from 200: 30
/// clients, a cap of 5) leaves at most the cap of sessions, and of sandboxes, held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_and_drop_flood_holds_at_most_the_detached_cap() {
    const CAP: u64 = 5;
    let instance = unique_instance("auth-flood");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_SESSION_MAX_DETACHED", "5"),
            ("SANDPOOL_RECONNECT_GRACE_SECS", "300"),
            ("SANDPOOL_POOL_MIN_IDLE", "4"),
            // Room for every client at once: nobody queues, so only the cap ends sessions.
            ("SANDPOOL_POOL_MAX", "36"),
            ("SANDPOOL_POOL_ACQUIRE_TIMEOUT_MS", "60000"),
        ],
    )
    .await;
    let addr = service.addr;
    let env = vec![("FLOOD".to_string(), "30".to_string())];
    scenario("flood_detached", addr, env, move |step, handle| {
        assert_eq!(step, "flooded");
        handle.block_on(within(60, "the flood settles under the cap", async {
            loop {
                let p = pool(addr).await;
                if local(&p, "active") == 0
                    && local(&p, "ending") == 0
                    && local(&p, "detached") <= CAP
                    && p["leased"].as_u64().unwrap_or(u64::MAX) <= CAP
                {
                    // The cap ends the surplus only: the last five still wait for a resume.
                    assert_eq!(local(&p, "detached"), CAP, "{p}");
                    assert_eq!(p["leased"], CAP, "{p}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    })
    .await;
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// Every sandbox is held by a dropped connection far inside its grace: a live client queued
/// at the pool's maximum gets one of theirs instead of waiting for the grace (or timing out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_gets_the_sandbox_of_a_detached_session() {
    let instance = unique_instance("auth-yield");
    let _cleanup = Cleanup::new(&instance);
    let service = spawn_service(
        &instance,
        &[
            ("SANDPOOL_POOL_MIN_IDLE", "2"),
            ("SANDPOOL_POOL_MAX", "2"),
            ("SANDPOOL_RECONNECT_GRACE_SECS", "300"),
            ("SANDPOOL_POOL_ACQUIRE_TIMEOUT_MS", "15000"),
        ],
    )
    .await;
    let addr = service.addr;
    let out = scenario("detached_yield", addr, vec![], move |step, handle| {
        handle.block_on(async {
            match step {
                "dropped" => {
                    within(30, "both sessions detached", async {
                        while local(&pool(addr).await, "detached") != 2 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    })
                    .await
                }
                "served" => {
                    // One detached session gave its sandbox; the other still waits for its
                    // resume.
                    let p = pool(addr).await;
                    assert_eq!(local(&p, "detached"), 1, "{p}");
                    assert_eq!(local(&p, "active"), 1, "{p}");
                }
                other => panic!("unknown step {other}"),
            }
        })
    })
    .await;
    eprintln!("a live client waited {} ms", out["waitedMs"]);
    assert!(sigterm_and_wait(service).success());
    assert!(labeled_containers(&instance).is_empty());
}

/// The stores' side of the subject count, on both stores: a recorded session holds a slot
/// whether or not it was reserved (a record written again after data loss), deleting it
/// frees the slot, and a reservation is freed by `unreserve_subject` or by its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_count_a_subjects_sessions_and_reservations() {
    let redis = RedisServer::start().await;
    let stores: [Arc<dyn SessionStore>; 2] = [
        Arc::new(MemoryStore::new()),
        Arc::new(RedisStore::connect(&redis.url(), "sp-auth:").await.unwrap()),
    ];
    let long = Duration::from_secs(60);
    for store in stores {
        let kind = store.kind();
        let mut s = Session::new(
            "a",
            &LeaseRef {
                container_id: "container-1".into(),
                fence: 1,
            },
            hash_token("t"),
            now_ms(),
        );
        s.subject = "alice".into();
        // Written without a reservation, as the catch-up does: it still counts.
        store.put(&s).await.unwrap();
        assert!(
            !store.reserve_subject("alice", "r1", 1, long).await.unwrap(),
            "{kind}: the recorded session holds alice's only slot"
        );
        assert!(
            store.reserve_subject("bob", "r1", 1, long).await.unwrap(),
            "{kind}: bob is counted apart"
        );
        store.delete(&s.id).await.unwrap();
        assert!(
            store.reserve_subject("alice", "r2", 1, long).await.unwrap(),
            "{kind}: deleting the session freed its slot"
        );
        store.unreserve_subject("alice", "r2").await.unwrap();
        assert!(
            store
                .reserve_subject("alice", "r3", 1, Duration::from_millis(200))
                .await
                .unwrap(),
            "{kind}: unreserve freed the slot"
        );
        assert!(!store.reserve_subject("alice", "r4", 1, long).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            store.reserve_subject("alice", "r4", 1, long).await.unwrap(),
            "{kind}: an opener that never wrote its session lost the slot when it expired"
        );
    }
}
