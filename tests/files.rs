//! Issue 16, black-box: files in and out of a sandbox and undo of every tool call, against the
//! real binary and the real Docker engine. The Socket.IO side runs in the official client
//! (`tests/js/files.js`); what needs HTTP (uploads and downloads with the workspace token, the
//! archive, refused tokens) or Docker (was the sandbox OOM-killed) runs here, when the
//! scenario asks for it with a step. Every await is bounded; every test ends with SIGTERM and
//! no container left.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::mcp::*;
use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const MIB: usize = 1 << 20;

/// A service for one test (one small pool: one idle sandbox, at most two), stopped with
/// SIGTERM by [`Harness::stop`]; its containers are removed even when the test fails.
struct Harness {
    instance: String,
    /// Killed first when dropped (fields drop in order), then `_cleanup` removes containers.
    service: Option<Service>,
    _cleanup: Cleanup,
}

impl Harness {
    async fn start(name: &str, env: &[(&str, &str)]) -> Harness {
        let instance = unique_instance(&format!("files-{name}"));
        let cleanup = Cleanup::new(&instance);
        let mut all = vec![("SANDPOOL_POOL_MIN_IDLE", "1"), ("SANDPOOL_POOL_MAX", "2")];
        all.extend_from_slice(env);
        let service = spawn_service(&instance, &all).await;
        Harness {
            instance,
            service: Some(service),
            _cleanup: cleanup,
        }
    }

    fn service(&self) -> &Service {
        self.service.as_ref().expect("the service runs")
    }

    fn base(&self) -> String {
        format!("http://{}", self.service().addr)
    }

    /// Runs scenario `name` of files.js; `on_step` answers each step it asks for.
    async fn scenario(
        &self,
        name: &str,
        mut on_step: impl AsyncFnMut(&str, &Value) -> Value,
    ) -> Value {
        let mut scenario = Scenario::start(name, self.service().addr);
        while let Some(step) = scenario.step().await {
            let which = step["step"].as_str().unwrap_or_default().to_string();
            let answer = on_step(&which, &step).await;
            scenario.reply(&answer).await;
        }
        let result = scenario.finish().await;
        eprintln!("scenario {name}: {result}");
        result
    }

    /// The sandbox's container as Docker sees it: OOM-killed or not, and its memory use.
    fn sandbox(&self, workspace_id: &str) -> Value {
        let id = labeled_containers(&self.instance)
            .into_iter()
            .find(|id| id.starts_with(workspace_id))
            .unwrap_or_else(|| panic!("a container {workspace_id} of {}", self.instance));
        let state = docker(&[
            "inspect",
            "-f",
            "{{.State.OOMKilled}} {{.State.Running}} {{.RestartCount}}",
            &id,
        ]);
        let usage = docker(&["stats", "--no-stream", "--format", "{{.MemUsage}}", &id]);
        let mut parts = state.split_whitespace();
        json!({
            "oomKilled": parts.next() == Some("true"),
            "running": parts.next() == Some("true"),
            "restarts": parts.next(),
            "memUsage": usage,
        })
    }

    /// SIGTERM: a clean exit and no container left.
    fn stop(mut self) {
        let status = sigterm_and_wait(self.service.take().expect("the service runs"));
        assert!(status.success(), "service exit: {status:?}");
        let left = labeled_containers(&self.instance);
        assert!(left.is_empty(), "containers left: {left:?}");
    }
}

/// One run of a scenario of `tests/js/files.js`: its steps one by one, then its result.
struct Scenario {
    name: String,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    last: Value,
}

/// The longest a scenario may stay silent (its own awaits are bounded well below).
const SILENCE_SECS: u64 = 900;

impl Scenario {
    fn start(name: &str, addr: SocketAddr) -> Scenario {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/files.js");
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .arg(name)
            .arg(format!("http://{addr}"))
            .env("NODE_PATH", node_modules())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (Debian package nodejs)");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
        let (sink, label) = (stderr.clone(), name.to_string());
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                eprintln!("[{label}] {line}");
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Scenario {
            name: name.to_string(),
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            stderr,
            last: Value::Null,
        }
    }

    /// The next step the scenario asks for, or `None` once it has ended.
    async fn step(&mut self) -> Option<Value> {
        loop {
            let what = format!("scenario {} goes on", self.name);
            let line = within(SILENCE_SECS, &what, self.lines.next_line())
                .await
                .expect("node's stdout")?;
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value.get("step").is_some() {
                return Some(value);
            }
            self.last = value;
        }
    }

    async fn reply(&mut self, answer: &Value) {
        // A scenario that failed meanwhile has closed its stdin; `finish` says why.
        let _ = self.stdin.write_all(format!("{answer}\n").as_bytes()).await;
        let _ = self.stdin.flush().await;
    }

    async fn finish(mut self) -> Value {
        let status = within(30, "node exits", self.child.wait())
            .await
            .expect("node ran");
        // Let the stderr reader catch up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert!(status.success(), "scenario {} failed:\n{stderr}", self.name);
        assert_eq!(
            self.last["ok"], true,
            "scenario {} did not finish: {}",
            self.name, self.last
        );
        self.last
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic bytes (xorshift64), made chunk by chunk, so that 100 MiB can be streamed
/// without being held.
struct Pattern {
    state: u64,
    left: usize,
}

impl Pattern {
    fn new(seed: u64, len: usize) -> Pattern {
        Pattern {
            state: seed | 1,
            left: len,
        }
    }

    fn chunk(&mut self, max: usize) -> Option<Vec<u8>> {
        if self.left == 0 {
            return None;
        }
        let n = self.left.min(max);
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            out.extend_from_slice(&self.state.to_le_bytes());
        }
        out.truncate(n);
        self.left -= n;
        Some(out)
    }

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        Pattern::new(seed, len).chunk(len).unwrap_or_default()
    }

    fn sha(seed: u64, len: usize) -> String {
        let mut p = Pattern::new(seed, len);
        let mut h = Sha256::new();
        while let Some(c) = p.chunk(256 << 10) {
            h.update(&c);
        }
        hex::encode(h.finalize())
    }

    /// An upload body streamed from the generator (chunked transfer, no length).
    fn body(seed: u64, len: usize) -> reqwest::Body {
        let stream = futures_util::stream::unfold(Pattern::new(seed, len), |mut p| async move {
            p.chunk(256 << 10)
                .map(|c| (Ok::<_, std::io::Error>(Bytes::from(c)), p))
        });
        reqwest::Body::wrap_stream(stream)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .no_proxy()
        .build()
        .unwrap()
}

/// The fields of a step that name the session and its token.
struct Target {
    base: String,
    session_id: String,
    token: String,
}

impl Target {
    fn of(step: &Value) -> Target {
        let s = |k: &str| {
            step[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} in {step}"))
                .to_string()
        };
        Target {
            base: s("base"),
            session_id: s("sessionId"),
            token: s("token"),
        }
    }

    fn file(&self, path: &str) -> String {
        format!(
            "{}/api/sessions/{}/files/{path}",
            self.base, self.session_id
        )
    }

    fn archive(&self) -> String {
        format!("{}/api/sessions/{}/archive", self.base, self.session_id)
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let what = format!("PUT {path}");
        within(
            300,
            &what,
            client()
                .put(self.file(path))
                .bearer_auth(&self.token)
                .body(body)
                .send(),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: no response, the request failed: {e:?}"))
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let what = format!("GET {path}");
        within(
            300,
            &what,
            client()
                .get(self.file(path))
                .bearer_auth(&self.token)
                .send(),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// GET, hashing the body as it streams: (status, content type, bytes, SHA-256).
    async fn download(&self, path: &str) -> (u16, String, usize, String) {
        let mut resp = self.get(path).await;
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut hasher = Sha256::new();
        let mut n = 0;
        while let Some(chunk) = within(300, "a chunk of the download", resp.chunk())
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        {
            n += chunk.len();
            hasher.update(&chunk);
        }
        (status, ctype, n, hex::encode(hasher.finalize()))
    }
}

/// An accepted upload: 200 or 201 with `{ok, path, bytes, sha256}`.
async fn uploaded(resp: reqwest::Response, bytes: usize, sha: &str, what: &str) -> Value {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert!(
        status == 200 || status == 201,
        "{what}: status {status}: {body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: JSON: {body}"));
    assert_eq!(v["ok"], true, "{what}: {v}");
    assert_eq!(v["bytes"], bytes, "{what}: {v}");
    assert_eq!(v["sha256"], sha, "{what}: {v}");
    assert!(v["path"].is_string(), "{what}: {v}");
    v
}

/// A refusal: `status` with `{"error":{"code","message"}}`.
async fn refused(resp: reqwest::Response, status: u16, code: &str, what: &str) -> String {
    let got = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "{what}: {body}");
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("{what}: a JSON error body, got {body:?}"));
    assert_eq!(v["error"]["code"], code, "{what}: {body}");
    assert!(v["error"]["message"].is_string(), "{what}: {body}");
    body
}

/// A raw HTTP/1.1 request (for paths a URL library would normalize): status and body bytes.
async fn raw(addr: &str, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    within(60, &format!("raw {head}"), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, buf)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_round_trips_text_and_binary_files_checked_by_sha256() {
    let h = Harness::start("roundtrip", &[]).await;
    h.scenario("roundtrip", async |s, _| panic!("unexpected step {s}"))
        .await;
    h.stop();
}

/// 1 MiB and 100 MiB through HTTP with the workspace token (the 100 MiB streamed from a
/// generator both ways, the server's memory bounded), the tokens that must be refused, and
/// an aborted upload that must leave the file as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_round_trips_with_the_workspace_token() {
    let h = Harness::start("http", &[]).await;
    let pid = h.service().child.id();
    h.scenario("http", async |name, step| {
        assert_eq!(name, "http");
        http_round_trips(step, pid).await
    })
    .await;
    h.stop();
}

async fn http_round_trips(step: &Value, pid: u32) -> Value {
    let a = Target::of(step);
    let other_token = step["otherToken"].as_str().unwrap().to_string();
    let other_sid = step["otherSessionId"].as_str().unwrap().to_string();

    // 1 MiB with a length.
    let one = Pattern::bytes(7, MIB);
    let sha1m = sha_hex(&one);
    uploaded(
        a.put("up/one.bin", one.clone()).await,
        MIB,
        &sha1m,
        "PUT 1 MiB",
    )
    .await;
    let (status, ctype, n, sha) = a.download("up/one.bin").await;
    assert_eq!(
        (status, n, sha.as_str()),
        (200, MIB, sha1m.as_str()),
        "GET 1 MiB"
    );
    assert!(ctype.starts_with("application/octet-stream"), "{ctype}");
    // What the socket wrote, read over HTTP.
    let (status, _, _, sha) = a.download("dir/in/side.txt").await;
    assert_eq!((status, sha), (200, sha_hex(b"inside")));

    // Refused: 404 for a missing file, 400 for a directory.
    refused(
        a.get("up/missing.bin").await,
        404,
        "not_found",
        "GET a missing file",
    )
    .await;
    refused(a.get("dir").await, 400, "bad_request", "GET a directory").await;
    refused(
        a.put("dir", "x").await,
        400,
        "bad_request",
        "PUT over a directory",
    )
    .await;

    // Mode, replace, parents.
    let resp = within(60, "PUT ?mode", async {
        client()
            .put(format!("{}?mode=0755", a.file("up/exe.sh")))
            .bearer_auth(&a.token)
            .body("#!/bin/sh\n")
            .send()
            .await
            .unwrap()
    })
    .await;
    uploaded(resp, 10, &sha_hex(b"#!/bin/sh\n"), "PUT ?mode=0755").await;
    let resp = within(60, "PUT ?mode=bad", async {
        client()
            .put(format!("{}?mode=banana", a.file("up/bad-mode.sh")))
            .bearer_auth(&a.token)
            .body("x")
            .send()
            .await
            .unwrap()
    })
    .await;
    refused(resp, 400, "bad_request", "PUT ?mode=banana").await;
    let first = b"first, and longer than the second".to_vec();
    uploaded(
        a.put("up/replaced.bin", first.clone()).await,
        first.len(),
        &sha_hex(&first),
        "PUT",
    )
    .await;
    uploaded(
        a.put("up/replaced.bin", "second").await,
        6,
        &sha_hex(b"second"),
        "PUT over it",
    )
    .await;

    // Tokens: none, forged, another session's, another scheme, no scheme; a token on another
    // session's id; an unknown session. Reads, writes and the archive alike; nothing written.
    let forged = format!("{}0000", &a.token[..a.token.len() - 4]);
    let auths: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("a forged token", Some(format!("Bearer {forged}"))),
        (
            "another session's token",
            Some(format!("Bearer {other_token}")),
        ),
        ("the Basic scheme", Some(format!("Basic {}", a.token))),
        ("the token without a scheme", Some(a.token.clone())),
        ("an empty Bearer", Some("Bearer ".to_string())),
    ];
    for (i, (what, auth)) in auths.iter().enumerate() {
        let with = |req: reqwest::RequestBuilder| match auth {
            Some(v) => req.header("authorization", v),
            None => req,
        };
        let c = client();
        let r = within(30, what, with(c.get(a.file("up/one.bin"))).send())
            .await
            .unwrap();
        refused(r, 401, "unauthorized", &format!("GET with {what}")).await;
        let r = within(
            30,
            what,
            with(c.put(a.file(&format!("unauth-{i}.bin"))))
                .body("pwned")
                .send(),
        )
        .await
        .unwrap();
        refused(r, 401, "unauthorized", &format!("PUT with {what}")).await;
        let r = within(30, what, with(c.get(a.archive())).send())
            .await
            .unwrap();
        refused(r, 401, "unauthorized", &format!("archive with {what}")).await;
    }
    let b_file = |p: &str| format!("{}/api/sessions/{other_sid}/files/{p}", a.base);
    let c = client();
    let r = within(
        30,
        "A's token on B",
        c.put(b_file("unauth-b.bin"))
            .bearer_auth(&a.token)
            .body("pwned")
            .send(),
    )
    .await
    .unwrap();
    refused(
        r,
        401,
        "unauthorized",
        "PUT to another session with this session's token",
    )
    .await;
    let unknown = format!("{}/api/sessions/{}/files/x", a.base, uuid::Uuid::new_v4());
    let r = within(
        30,
        "unknown session",
        c.get(unknown).bearer_auth(&a.token).send(),
    )
    .await
    .unwrap();
    refused(r, 401, "unauthorized", "an unknown session").await;

    // An upload cut off half-way: the old file stays as it was, no temporary file is left
    // (checked over the socket afterwards).
    uploaded(
        a.put("abort.bin", "old").await,
        3,
        &sha_hex(b"old"),
        "PUT abort.bin",
    )
    .await;
    within(30, "an aborted upload", async {
        let mut stream = tokio::net::TcpStream::connect(a.addr()).await.unwrap();
        let head = format!(
            "PUT /api/sessions/{}/files/abort.bin HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            a.session_id,
            a.addr(),
            a.token,
            10 * MIB
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&Pattern::bytes(9, MIB)).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _, sha) = a.download("abort.bin").await;
    assert_eq!(
        (status, sha),
        (200, sha_hex(b"old")),
        "an aborted upload replaced the file"
    );

    // 100 MiB streamed both ways; the server's memory does not hold it.
    let big = 100 * MIB;
    let sha100m = Pattern::sha(11, big);
    let before = status_kib(pid, "VmRSS:");
    let t = Instant::now();
    uploaded(
        a.put("big.bin", Pattern::body(11, big)).await,
        big,
        &sha100m,
        "PUT 100 MiB streamed",
    )
    .await;
    let up = t.elapsed();
    let t = Instant::now();
    let (status, ctype, n, sha) = a.download("big.bin").await;
    let down = t.elapsed();
    assert_eq!((status, n), (200, big), "GET 100 MiB");
    assert_eq!(sha, sha100m, "GET 100 MiB: sha256");
    assert!(ctype.starts_with("application/octet-stream"), "{ctype}");
    let growth = status_kib(pid, "VmHWM:").saturating_sub(before);
    let mibs = |d: Duration| 100.0 / d.as_secs_f64();
    eprintln!(
        "100 MiB over HTTP: up {:.0} MiB/s, down {:.0} MiB/s; server peak RSS growth {growth} KiB",
        mibs(up),
        mibs(down)
    );
    assert!(
        growth < 64 * 1024,
        "the server's memory grew by {growth} KiB for 100 MiB up and down"
    );
    json!({"sha1m": sha1m, "sha100m": sha100m})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_holds_what_was_written() {
    let h = Harness::start("archive", &[]).await;
    h.scenario("archive", async |name, step| {
        assert_eq!(name, "archive");
        check_archive(step).await
    })
    .await;
    h.stop();
}

async fn check_archive(step: &Value) -> Value {
    let a = Target::of(step);
    let c = client();
    for (what, auth) in [
        ("no token", None),
        ("another session's token", step["otherToken"].as_str()),
    ] {
        let mut req = c.get(a.archive());
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = within(30, what, req.send()).await.unwrap();
        refused(r, 401, "unauthorized", &format!("archive with {what}")).await;
    }
    let resp = within(
        60,
        "GET archive",
        c.get(a.archive()).bearer_auth(&a.token).send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "GET archive");
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ctype.starts_with("application/x-tar"),
        "content type {ctype}"
    );
    let tar_bytes = within(120, "the archive's body", resp.bytes())
        .await
        .unwrap();

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut files: std::collections::BTreeMap<String, Vec<u8>> = step["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), b64.decode(v.as_str().unwrap()).unwrap()))
        .collect();
    let mut dirs: std::collections::BTreeSet<String> = step["dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    let mut links: std::collections::BTreeMap<String, String> = step["links"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let fifo = step["fifo"].as_str().unwrap();
    let mut fifo_entry = false;

    let mut archive = tar::Archive::new(std::io::Cursor::new(tar_bytes.to_vec()));
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().expect("an entry path").to_path_buf();
        assert!(!path.is_absolute(), "an absolute entry: {path:?}");
        assert!(
            !path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir)),
            "an entry with ..: {path:?}"
        );
        let name = path
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if name.is_empty() || name == "." {
            continue;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap() & 0o7777;
        if kind.is_dir() {
            assert!(dirs.remove(&name), "an unexpected directory {name:?}");
        } else if kind.is_symlink() {
            let target = links
                .remove(&name)
                .unwrap_or_else(|| panic!("an unexpected symlink {name:?}"));
            let link = entry
                .link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .to_string();
            assert_eq!(link, target, "symlink {name}");
        } else if kind.is_file() {
            let expected = files
                .remove(&name)
                .unwrap_or_else(|| panic!("an unexpected file {name:?} in the archive"));
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            assert_eq!(
                sha_hex(&content),
                sha_hex(&expected),
                "{name}: the archive's content ({} bytes, expected {})",
                content.len(),
                expected.len()
            );
            if let Some(m) = step["modes"][name.as_str()].as_u64() {
                assert_eq!(mode as u64, m, "{name}: mode {mode:o}");
            }
        } else if kind.is_fifo() && name == fifo {
            fifo_entry = true;
        } else {
            panic!("an unexpected entry {name:?} of type {kind:?}");
        }
    }
    assert!(
        files.is_empty(),
        "files missing from the archive: {:?}",
        files.keys()
    );
    assert!(
        dirs.is_empty(),
        "directories missing from the archive: {dirs:?}"
    );
    assert!(
        links.is_empty(),
        "symlinks missing from the archive: {links:?}"
    );
    eprintln!(
        "archive: {} bytes; the fifo is {}",
        tar_bytes.len(),
        if fifo_entry { "an entry" } else { "left out" }
    );
    json!({"checked": true})
}

/// SANDPOOL_FILE_MAX_BYTES=65536: too_large over the socket and over HTTP (413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_limit_is_too_large() {
    let h = Harness::start("too-large", &[("SANDPOOL_FILE_MAX_BYTES", "65536")]).await;
    h.scenario("too_large", async |name, step| {
        assert_eq!(name, "http");
        let a = Target::of(step);
        let max = Pattern::bytes(3, 65536);
        uploaded(
            a.put("http-max.bin", max.clone()).await,
            65536,
            &sha_hex(&max),
            "PUT exactly the limit",
        )
        .await;
        refused(
            a.put("http-over.bin", Pattern::bytes(4, 65537)).await,
            413,
            "too_large",
            "PUT one byte over",
        )
        .await;
        refused(
            a.put("max.bin", Pattern::body(6, 2 * 65536)).await,
            413,
            "too_large",
            "PUT over an existing file",
        )
        .await;
        refused(
            a.put("http-big.bin", Pattern::bytes(5, 16 * MIB)).await,
            413,
            "too_large",
            "PUT 16 MiB with a Content-Length",
        )
        .await;
        // Streamed, with no length: the server learns it is too large half-way; the client
        // must still get the 413, not a reset connection.
        refused(
            a.put("http-stream.bin", Pattern::body(5, 16 * MIB)).await,
            413,
            "too_large",
            "PUT 16 MiB streamed",
        )
        .await;
        json!({"shaMax": sha_hex(&max)})
    })
    .await;
    h.stop();
}

/// SANDPOOL_SANDBOX_TMPFS_BYTES=8 MiB: no_space over the socket and HTTP (507); an undo that
/// needs the room later calls took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_workspace_is_no_space() {
    let h = Harness::start("no-space", &[("SANDPOOL_SANDBOX_TMPFS_BYTES", "8388608")]).await;
    h.scenario("no_space", async |name, step| {
        assert_eq!(name, "http");
        let a = Target::of(step);
        let body = refused(
            a.put("http-fill", Pattern::body(8, 16 * MIB)).await,
            507,
            "no_space",
            "PUT 16 MiB into 8",
        )
        .await;
        refused(
            a.put("fill1", Pattern::body(9, 3 * MIB)).await,
            507,
            "no_space",
            "PUT over fill1 with no room for the copy",
        )
        .await;
        eprintln!("no_space over HTTP: {body}");
        json!({"status": 507})
    })
    .await;
    h.stop();
}

/// Bad paths and payloads are bad_request; symlinks (to /etc, /, /tmp, procfs) and `..`
/// never lead out of the workspace, over the socket or HTTP, and a symlink flipping under
/// concurrent writes never lets one through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_stay_in_the_workspace() {
    let h = Harness::start("escapes", &[]).await;
    h.scenario("escapes", async |name, step| {
        assert_eq!(name, "http");
        http_escapes(step).await
    })
    .await;
    h.stop();
}

async fn http_escapes(step: &Value) -> Value {
    let a = Target::of(step);
    let leaked = |body: &[u8]| String::from_utf8_lossy(body).contains("root:x:0:0");
    // Encoded: the route's parameter decodes to a path that leaves.
    for p in [
        "..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "a%2F..%2F..%2Fetc%2Fpasswd",
        "sub%2F..%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2Fetc%2Fpasswd",
        "sub%00x",
        "escape/passwd",
        "root/etc/passwd",
        "up/etc/passwd",
        "rel",
        "abs",
        "tmplink/keep",
        "homelink/keep",
        "procroot/etc/passwd",
        "p1root/etc/passwd",
        "env",
        "in",
        "mem",
        "cwd/sub/file.txt",
    ] {
        let resp = a.get(p).await;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        assert!(!leaked(&body), "GET {p} leaked /etc/passwd");
        assert_eq!(status, 400, "GET {p}: {}", String::from_utf8_lossy(&body));
    }
    for p in [
        "..%2Fx",
        "%2Ftmp%2Fx",
        "escape/x",
        "tmplink/x",
        "homelink/x",
        "up/x",
        "root/tmp/x",
        "p1root/tmp/x",
        "tmplink/new/x",
    ] {
        refused(
            a.put(p, "pwned").await,
            400,
            "bad_request",
            &format!("PUT {p}"),
        )
        .await;
    }
    // Literal `..` and `//` in the request line, as a URL library would never send them.
    let auth = format!(
        "Host: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n",
        a.addr(),
        a.token
    );
    let sid = &a.session_id;
    for target in [
        format!("/api/sessions/{sid}/files/../../../../etc/passwd"),
        format!("/api/sessions/{sid}/files/sub/../../../etc/passwd"),
        format!("/api/sessions/{sid}/files//etc/passwd"),
        format!("/api/sessions/{sid}/files/./../etc/passwd"),
    ] {
        let (status, body) = raw(
            &a.addr(),
            &format!("GET {target} HTTP/1.1\r\n{auth}\r\n"),
            b"",
        )
        .await;
        assert!(!leaked(&body), "GET {target} leaked /etc/passwd");
        assert_eq!(
            status,
            400,
            "GET {target}: {}",
            String::from_utf8_lossy(&body)
        );
        let head = format!("PUT {target} HTTP/1.1\r\n{auth}Content-Length: 5\r\n\r\n");
        let (status, body) = raw(&a.addr(), &head, b"pwned").await;
        assert_eq!(
            status,
            400,
            "PUT {target}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    for target in [
        format!("/api/sessions/{sid}/files/../x"),
        format!("/api/sessions/{sid}/files/tmplink/../../x"),
    ] {
        let head = format!("PUT {target} HTTP/1.1\r\n{auth}Content-Length: 5\r\n\r\n");
        let (status, body) = raw(&a.addr(), &head, b"pwned").await;
        assert_eq!(
            status,
            400,
            "PUT {target}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    json!({"checked": true})
}

/// Undo is refused `busy` while a command runs, `not_found` for unknown, rejected and other
/// sessions' calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_is_refused_while_a_command_runs_and_for_unknown_calls() {
    let h = Harness::start("undo-refusals", &[]).await;
    h.scenario("undo_refusals", async |s, _| panic!("unexpected step {s}"))
        .await;
    h.stop();
}

/// Undo of an exec that creates, modifies, deletes, chmods, renames and relinks; of a chat
/// proposal; of fs:write and fs:delete; of several calls; of a timed-out command; of a change
/// only ctime shows; after a resume. The workspace is compared path by path (type, mode,
/// size, SHA-256, symlink target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_restores_the_workspace_exactly() {
    let h = Harness::start("undo", &[]).await;
    h.scenario("undo_exec", async |s, _| panic!("unexpected step {s}"))
        .await;
    h.stop();
}

/// The tenant's attacks on the checkpoint store (SANDPOOL_CHECKPOINT_BYTES=16 MiB): symlinks
/// out (to /etc, /proc/1, /tmp, the supervisor's fd 0), directories swapped for such links,
/// hard links, a store shared with the workspace, fifos (one with an endless writer), odd and
/// device-like names, a racer during undo, reading the store, an unreadable file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_withstand_what_the_tenant_plants() {
    let h = Harness::start("attacks", &[("SANDPOOL_CHECKPOINT_BYTES", "16777216")]).await;
    h.scenario("attacks", async |name, step| {
        assert_eq!(name, "sandbox");
        h.sandbox(step["workspaceId"].as_str().unwrap())
    })
    .await;
    h.stop();
}

/// A 100 GiB sparse file: the next mutating call is prompt, its checkpoint refused too_large
/// (or taken, and then undone exactly); the sandbox lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_sparse_file_neither_blocks_nor_breaks_the_bound() {
    let h = Harness::start("sparse", &[("SANDPOOL_CHECKPOINT_BYTES", "16777216")]).await;
    h.scenario("sparse", async |name, step| {
        assert_eq!(name, "sandbox");
        h.sandbox(step["workspaceId"].as_str().unwrap())
    })
    .await;
    h.stop();
}

/// 200,000 small files: the next mutating call completes, its checkpoint taken or refused
/// too_large, never hangs; the sandbox is not OOM-killed and still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_files_neither_hang_nor_kill_the_sandbox() {
    let h = Harness::start("many", &[("SANDPOOL_CHECKPOINT_BYTES", "16777216")]).await;
    h.scenario("many", async |name, step| {
        assert_eq!(name, "sandbox");
        h.sandbox(step["workspaceId"].as_str().unwrap())
    })
    .await;
    h.stop();
}

/// A directory 25,000 levels deep: its paths together are far over the bound. The next call
/// completes, the checkpoint taken or refused; the sandbox is not OOM-killed and still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_deep_tree_neither_hangs_nor_kills_the_sandbox() {
    let h = Harness::start("deep", &[("SANDPOOL_CHECKPOINT_BYTES", "16777216")]).await;
    h.scenario("deep", async |name, step| {
        assert_eq!(name, "sandbox");
        h.sandbox(step["workspaceId"].as_str().unwrap())
    })
    .await;
    h.stop();
}

/// SANDPOOL_CHECKPOINT_BYTES=16 MiB: the oldest checkpoints make room; a file bigger than the
/// whole store is too_large and drops nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_its_bound_dropping_the_oldest() {
    let h = Harness::start("store-bound", &[("SANDPOOL_CHECKPOINT_BYTES", "16777216")]).await;
    h.scenario("store_bound", async |s, _| panic!("unexpected step {s}"))
        .await;
    h.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_off_take_none() {
    let h = Harness::start("ckpt-off", &[("SANDPOOL_CHECKPOINT_BYTES", "0")]).await;
    h.scenario("checkpoints_off", async |s, _| {
        panic!("unexpected step {s}")
    })
    .await;
    h.stop();
}

/// A pool of one: the next session on the same sandbox gets not_found for the last one's
/// checkpoints and starts from an empty workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_session_finds_no_checkpoint_of_the_last() {
    let h = Harness::start(
        "next",
        &[("SANDPOOL_POOL_MIN_IDLE", "1"), ("SANDPOOL_POOL_MAX", "1")],
    )
    .await;
    h.scenario("next_session", async |s, _| panic!("unexpected step {s}"))
        .await;
    h.stop();
}

/// The agent's door: an `undo` tool; the browser sees every MCP call that changed files with
/// its checkpoint in `tool:result` and can undo it; the undo is in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mcp_calls_carry_checkpoints_and_undo_is_a_tool() {
    let h = Harness::start("mcp", &[]).await;
    let mut browser = Browser::open(&h.base(), Some("none")).await;
    let url = browser.session["mcp"]["url"].as_str().unwrap().to_string();
    let token = browser.token();
    let agent = agent(&url, &token).await.expect("the agent connects");
    let tools = within(30, "tools", agent.list_all_tools()).await.unwrap();
    assert!(
        tools.iter().any(|t| t.name == "undo"),
        "an undo tool: {:?}",
        tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>()
    );

    let w = call(
        &agent,
        "write_file",
        json!({"path": "m.txt", "content": "mcp\n"}),
    )
    .await;
    assert!(!is_error(&w), "{}", result_text(&w));
    let res = browser
        .expect("tool:result", |r| {
            r["origin"] == "mcp" && r["tool"] != "read_file" && r["checkpoint"].is_object()
        })
        .await;
    let write_id = res["callId"].as_str().unwrap().to_string();
    assert_eq!(res["checkpoint"]["id"], write_id.as_str(), "{res}");
    // The agent learns the same callId (for its undo) from its own result.
    let told: Value = w
        .content
        .iter()
        .filter_map(|c| c.as_text())
        .find_map(|t| serde_json::from_str::<Value>(&t.text).ok())
        .unwrap_or_else(|| panic!("the checkpoint in the agent's result: {}", result_text(&w)));
    assert_eq!(told["callId"], write_id.as_str(), "{told}");
    assert_eq!(told["checkpoint"]["id"], write_id.as_str(), "{told}");
    assert_eq!(
        res["checkpoint"]["changes"]["added"],
        json!(["m.txt"]),
        "{res}"
    );

    let r = call(&agent, "read_file", json!({"path": "m.txt"})).await;
    assert_eq!(result_text(&r), "mcp\n");
    let e = call(&agent, "exec", json!({"command": "echo more >> m.txt"})).await;
    assert!(!is_error(&e), "{}", result_text(&e));
    let res = browser
        .expect("tool:result", |r| {
            r["origin"] == "mcp" && r["checkpoint"].is_object() && r["callId"] != write_id.as_str()
        })
        .await;
    assert_eq!(
        res["checkpoint"]["changes"]["modified"],
        json!(["m.txt"]),
        "{res}"
    );
    let exec_id = res["callId"].as_str().unwrap().to_string();

    // The browser undoes the agent's exec.
    browser
        .send(json!({"do": "emit", "event": "tool:undo", "data": {"callId": exec_id}}))
        .await;
    let ack = browser.expect("ack", |_| true).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let r = call(&agent, "read_file", json!({"path": "m.txt"})).await;
    assert_eq!(
        result_text(&r),
        "mcp\n",
        "the browser undid the agent's exec"
    );

    // The agent undoes its write.
    let u = call(&agent, "undo", json!({"callId": write_id})).await;
    assert!(!is_error(&u), "{}", result_text(&u));
    let body: Value = serde_json::from_str(&result_text(&u)).expect("undo answers JSON");
    assert_eq!(body["callId"], write_id.as_str(), "{body}");
    assert!(
        body["restored"]["written"].is_u64() && body["restored"]["removed"].is_u64(),
        "{body}"
    );
    let r = call(&agent, "read_file", json!({"path": "m.txt"})).await;
    assert!(is_error(&r), "the write is undone: {}", result_text(&r));
    let u = call(&agent, "undo", json!({"callId": "no-such-call"})).await;
    assert!(is_error(&u));
    assert!(result_text(&u).contains("not_found"), "{}", result_text(&u));

    // The undo is in the audit trail.
    let sid = browser.session["sessionId"].as_str().unwrap().to_string();
    within(30, "the undo in the audit trail", async {
        loop {
            let trail = audit_trail(&h.base(), &sid, &token).await;
            let entries = trail["entries"].as_array().cloned().unwrap_or_default();
            if entries.iter().any(|e| e["tool"] == "undo") {
                assert_eq!(trail["intact"], true, "{trail}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    drop(agent);
    browser.send(json!({"do": "end"})).await;
    browser.expect("ack", |_| true).await;
    h.stop();
}
