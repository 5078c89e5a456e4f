//! The agents' door, measured (issue 15's targets): the MCP `exec true` round trip with policy
//! `none` (rmcp's client) beside the Socket.IO round trip of the same service in the same run;
//! the same call when a connected browser approves each at once; the audit trail's append
//! (Redis); and the Socket.IO command round trip with the audit trail on and off.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::mcp::{Browser, agent, call, is_error};
use super::common::*;
use super::{ms, node, summary};
use sandpool::audit::{AuditLog, AuditRecord, Decision, Origin, RedisAuditLog, digest};

/// Calls measured per MCP figure (after 20 unmeasured).
const CALLS: usize = 300;

pub async fn mcp_figures(redis_url: &str) -> Value {
    let instance = unique_instance("bench-mcp");
    let _cleanup = Cleanup::new(&instance);
    let env = [
        ("SANDPOOL_POOL_MIN_IDLE", "2"),
        ("SANDPOOL_REDIS_URL", redis_url),
        ("RUST_LOG", "warn"),
    ];
    let service = spawn_service(&instance, &env).await;
    let url = format!("http://{}", service.addr);
    let mut browser = Browser::open(&url, Some("none")).await;
    let mcp = agent(&format!("{url}/mcp"), &browser.token())
        .await
        .expect("the bench agent connects");
    let exec_true = json!({"command": "true"});
    let measure = async |n: usize| -> Vec<f64> {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n + 20 {
            let t = Instant::now();
            let r = call(&mcp, "exec", exec_true.clone()).await;
            assert!(!is_error(&r), "exec true failed");
            if i >= 20 {
                samples.push(ms(t.elapsed()));
            }
        }
        samples
    };
    let none = measure(CALLS).await;
    let socket = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || node(&["rtt", &url, &CALLS.to_string()]))
            .await
            .unwrap()
    };
    // Every call waits for the browser, which approves each as it hears it.
    browser
        .send(json!({"do": "policy", "approval": "all"}))
        .await;
    browser.expect("ack", |a| a["approval"] == "all").await;
    browser.send(json!({"do": "autoapprove"})).await;
    browser.expect("autoapprove", |_| true).await;
    let approved = measure(CALLS).await;
    drop(browser);
    let _ = sigterm_and_wait(service);

    let audit_append = audit_appends(redis_url, 2000).await;
    let audit_rtt = audit_on_off(redis_url).await;
    let socket_rtt: Vec<f64> = socket["rttMs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    json!({
        "conditions": format!("sandpool serve (release, redis store, pool min idle 2); rmcp {} client over loopback, one MCP session, sequential calls, {CALLS} measured after 20", "3.11"),
        "mcp_exec_true_policy_none": summary(&none),
        "socket_exec_true_same_service": summary(&socket_rtt),
        "mcp_exec_true_approved_by_browser": summary(&approved),
        "audit_append_redis": audit_append,
        "audit_rtt": audit_rtt,
    })
}

/// `n` appends to one session's chain in Redis, one after another.
async fn audit_appends(redis_url: &str, n: usize) -> Value {
    let prefix = format!("bench-audit-{}:", uuid::Uuid::new_v4().simple());
    let log = RedisAuditLog::connect(redis_url, &prefix, Duration::from_secs(600))
        .await
        .expect("audit log");
    let session = uuid::Uuid::new_v4().to_string();
    let (bytes, sha) = digest(b"");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let record = AuditRecord {
            session_id: session.clone(),
            subject: String::new(),
            origin: Origin::Mcp,
            client: Some("bench/1".into()),
            tool: "exec".into(),
            args: json!({"command": "true"}),
            decision: Decision::Automatic,
            decided_by: "policy:none".into(),
            started_ms: 0,
            ended_ms: 1,
            status: "ok".into(),
            exit_code: Some(0),
            stdout_bytes: bytes,
            stdout_sha256: sha.clone(),
            stderr_bytes: bytes,
            stderr_sha256: sha.clone(),
        };
        let t = Instant::now();
        log.append(record).await.expect("append");
        if i >= 50 {
            samples.push(ms(t.elapsed()));
        }
    }
    let chain = log.read(&session).await.expect("read back");
    assert_eq!(sandpool::audit::verify(&chain).ok(), Some(n + 50));
    summary(&samples)
}

/// The Socket.IO `exec true` round trip of two services alike but for the audit trail,
/// measured alternately (three rounds each) so that drift hits both.
async fn audit_on_off(redis_url: &str) -> Value {
    let mut services = Vec::new();
    let mut cleanups = Vec::new();
    for enabled in ["true", "false"] {
        let instance = unique_instance(&format!("bench-aud-{enabled}"));
        cleanups.push(Cleanup::new(&instance));
        let env = [
            ("SANDPOOL_POOL_MIN_IDLE", "2"),
            ("SANDPOOL_REDIS_URL", redis_url),
            ("SANDPOOL_AUDIT_ENABLED", enabled),
            ("RUST_LOG", "warn"),
        ];
        services.push(spawn_service(&instance, &env).await);
    }
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..3 {
        for (i, service) in services.iter().enumerate() {
            let url = format!("http://{}", service.addr);
            let r = tokio::task::spawn_blocking(move || node(&["rtt", &url, "200"]))
                .await
                .unwrap();
            let samples = r["rttMs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<_>>())
                .unwrap_or_default();
            if i == 0 {
                on.extend(samples)
            } else {
                off.extend(samples)
            }
        }
    }
    for service in services {
        let _ = sigterm_and_wait(service);
    }
    let (on, off) = (summary(&on), summary(&off));
    let ratio = on["p50"].as_f64().unwrap_or(f64::NAN) / off["p50"].as_f64().unwrap_or(f64::NAN);
    json!({"audit_on": on, "audit_off": off, "ratio_p50_on_over_off": ratio})
}
