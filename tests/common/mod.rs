//! Helpers shared by the integration tests: unique instance ids, a drop guard that removes
//! every container a test created (even when it fails), fast test settings, the image, a
//! tiny HTTP client and a fault-injecting Docker endpoint.
#![allow(dead_code)]

pub mod mcp;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use sandpool::config::Config;
use sandpool::docker::DockerGate;
use sandpool::pool::{CommandOutput, CommandSpec, LeaseRef};
use sandpool::pool::{ContainerPool, NoopObserver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::OnceCell;

/// The engine the tests drive: `DOCKER_HOST` when it names a unix socket (scripts/test points
/// the isolation suite at a second engine with gVisor that way; the docker CLI the tests call
/// follows the same variable), else the default socket.
pub fn docker_host() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => host,
        _ => "unix:///var/run/docker.sock".to_string(),
    }
}

/// The path of [`docker_host`]'s socket.
pub fn docker_sock() -> PathBuf {
    PathBuf::from(docker_host().trim_start_matches("unix://"))
}

/// A fresh instance id, so that tests never see each other's containers.
pub fn unique_instance(name: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{name}-{}", &id[..8])
}

/// Removes every container labeled with the instance when dropped, whatever the test did.
/// Pools it watches are closed first, so that a test that fails half-way does not leave a
/// refill task creating containers after the guard has run.
pub struct Cleanup(pub String, pub std::sync::Mutex<Vec<ContainerPool>>);

impl Cleanup {
    pub fn new(instance: &str) -> Self {
        Self(instance.to_string(), Default::default())
    }
    pub fn watch(&self, pool: &ContainerPool) {
        self.1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pool.clone());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pool in self.1.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            pool.close();
        }
        // Removes until the list stays empty: a create already sent to Docker may land late.
        let mut quiet_rounds = 0;
        for _ in 0..50 {
            let ids = labeled_containers(&self.0);
            if ids.is_empty() {
                quiet_rounds += 1;
                if quiet_rounds == 3 {
                    return;
                }
            } else {
                quiet_rounds = 0;
                for id in ids {
                    let _ = Command::new("docker")
                        .args(["rm", "-f", "-v", &id])
                        .output();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Ids of every container (running or not) labeled with `instance`, from the docker CLI, so
/// that the tests count with something other than the code under test.
pub fn labeled_containers(instance: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=sandpool.instance={instance}"),
        ])
        .output()
        .expect("docker CLI runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs the docker CLI and returns stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Settings for tests: small pools, fast loops.
pub fn test_config(instance: &str) -> Config {
    let mut config = Config::with_instance(instance);
    config.docker_host = docker_host();
    // The OCI runtime of the sandboxes (`runsc` for the gVisor run of scripts/test).
    if let Ok(runtime) = std::env::var("SANDPOOL_TEST_SANDBOX_RUNTIME") {
        config.pool.runtime = runtime;
    }
    config.pool.min_idle = 2;
    config.pool.max = 4;
    config.pool.reconcile_interval = Duration::from_millis(500);
    config.pool.acquire_timeout = Duration::from_millis(20_000);
    config.pool.memory_bytes = 128 << 20;
    config.pool.tmpfs_bytes = 32 << 20;
    config.pool.pids_limit = 128;
    if gvisor_run() {
        // gVisor's own threads (its Go runtime, a stub process per tenant process under
        // --platform=ptrace) count against the container's pids limit: about 50 at rest.
        config.pool.pids_limit = 1024;
    }
    config.gate.call_timeout = Duration::from_millis(20_000);
    config.shutdown_timeout = Duration::from_secs(20);
    config
}

/// Whether this test run's sandboxes run under gVisor (`SANDPOOL_TEST_SANDBOX_RUNTIME=runsc`,
/// the gVisor run of scripts/test), where a few things are known to differ (the README's
/// gVisor section lists them; the tests say where).
pub fn gvisor_run() -> bool {
    std::env::var("SANDPOOL_TEST_SANDBOX_RUNTIME").is_ok_and(|r| r == "runsc")
}

static IMAGE: OnceCell<()> = OnceCell::const_new();

/// A gate on the real engine, with the sandbox image built if Docker lacks it.
pub async fn real_gate(config: &Config) -> Arc<DockerGate> {
    let gate = DockerGate::connect(&config.docker_host, &config.gate)
        .await
        .expect("docker reachable");
    IMAGE
        .get_or_init(|| async {
            sandpool::docker::image::ensure_image(&gate, &config.image)
                .await
                .expect("sandbox image builds");
        })
        .await;
    gate
}

/// A started pool on the real engine.
pub async fn start_pool(config: &Config) -> ContainerPool {
    let gate = real_gate(config).await;
    ContainerPool::start(
        gate,
        config,
        Arc::new(NoopObserver),
        sandpool::pool::Startup::default(),
    )
    .await
    .expect("pool starts")
}

/// A started pool, watched by `cleanup`, with at least `min_idle` idle containers; fails the
/// test if it does not warm within a minute.
pub async fn warm_pool(config: &Config, cleanup: &Cleanup) -> ContainerPool {
    let pool = start_pool(config).await;
    cleanup.watch(&pool);
    assert!(
        pool.wait_idle(config.pool.min_idle, Duration::from_secs(60))
            .await,
        "pool warms to {} idle",
        config.pool.min_idle
    );
    pool
}

/// Shuts `pool` down and checks that Docker has no container of `instance` left.
pub async fn shutdown_leaves_nothing(pool: &ContainerPool, instance: &str) {
    pool.shutdown(Duration::from_secs(20)).await;
    let left = labeled_containers(instance);
    assert!(left.is_empty(), "shutdown left containers: {left:?}");
}

/// Runs `script` with `sh -c` as the sandbox user in `/workspace`, through the sandbox's
/// supervisor.
pub async fn sh(pool: &ContainerPool, lease: &LeaseRef, script: &str) -> CommandOutput {
    let spec = CommandSpec::shell(script, Duration::from_secs(20), 1 << 20);
    pool.run(lease, &spec, None).await.expect("command runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Bounds every await of a test, so that a hang fails instead of freezing CI.
pub async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s: {what}"))
}

/// A minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Bodies may be chunked; the tests only search them for substrings and JSON objects.
    (status, body)
}

/// Extracts the first JSON object of a (possibly chunked) HTTP body.
pub fn json_body(body: &str) -> serde_json::Value {
    let start = body.find('{').expect("a JSON object in the body");
    let end = body.rfind('}').expect("a JSON object in the body");
    serde_json::from_str(&body[start..=end]).expect("valid JSON")
}

/// What the fault endpoint does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultMode {
    /// Forward bytes to the real Docker socket.
    Proxy = 0,
    /// Answer every request with HTTP 500.
    Fail = 1,
    /// Accept the connection and never answer.
    Hang = 2,
}

/// A Docker endpoint on a unix socket that forwards to the real engine, or injects a fault,
/// as the test says. This is the fault seam: the real engine cannot be told to fail on demand.
pub struct FaultyDocker {
    pub path: PathBuf,
    mode: Arc<AtomicU8>,
    pub connections: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyDocker {
    pub async fn start(mode: FaultMode) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).expect("bind fault socket");
        let mode_cell = Arc::new(AtomicU8::new(mode as u8));
        let connections = Arc::new(AtomicUsize::new(0));
        let (m, c) = (mode_cell.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let mode = m.load(Ordering::SeqCst);
                tokio::spawn(serve_fault(conn, mode));
            }
        });
        Self {
            path,
            mode: mode_cell,
            connections,
            _dir: dir,
            task,
        }
    }

    pub fn set_mode(&self, mode: FaultMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for FaultyDocker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_fault(mut conn: UnixStream, mode: u8) {
    match mode {
        0 => {
            if let Ok(mut upstream) = UnixStream::connect(docker_sock()).await {
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
            }
        }
        1 => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let body = r#"{"message":"injected fault"}"#;
            let resp = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
        _ => {
            // Hold the connection open without answering.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(conn);
        }
    }
}

/// A real `redis-server` on a free port, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (Debian package redis-server)");
        self.child = Some(child);
        within(10, "redis-server ready", async {
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is lost: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: requests in flight hang, as with a
    /// server stuck on a slow disk, and are answered once it is thawed.
    pub fn freeze(&self, frozen: bool) {
        let pid = self
            .child
            .as_ref()
            .expect("server running")
            .id()
            .to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    /// Starts a stopped server again on the same port, empty (it keeps no data).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is stopped");
        self.launch().await;
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Records every command the server receives (`MONITOR`), until the returned guard is
    /// read with [`Monitor::finish`].
    pub fn monitor(&self) -> Monitor {
        let child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-cli monitor");
        Monitor { child: Some(child) }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Monitor {
    child: Option<std::process::Child>,
}

impl Monitor {
    /// Stops monitoring and returns every command line seen.
    pub fn finish(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `sandpool` binary cargo built for these tests.
pub fn sandpool_bin() -> std::path::PathBuf {
    // CARGO_BIN_EXE_<name> is set for integration tests of a package with that binary.
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_sandpool"))
}

/// A `sandpool serve` process for a test; killed when dropped.
pub struct Service {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` that reports a refused or reset connection as `None` instead of panicking
/// (for polling a server that is still starting).
pub async fn try_http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Starts `sandpool serve` for a test and waits until it is ready. The port comes from
/// `free_port`, which another test may take between its check and the server's bind; a server
/// that exits early is started again on another port.
pub async fn spawn_service(instance: &str, extra: &[(&str, &str)]) -> Service {
    for _ in 0..3 {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(sandpool_bin());
        cmd.arg("serve")
            .env("SANDPOOL_LISTEN", addr.to_string())
            .env("SANDPOOL_INSTANCE_ID", instance)
            .env("SANDPOOL_POOL_MIN_IDLE", "3")
            .env("SANDPOOL_POOL_MAX", "6")
            .env("SANDPOOL_POOL_RECONCILE_INTERVAL_MS", "500")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("binary starts");
        let mut service = Service { child, addr };
        let ready = within(90, "service ready", async {
            loop {
                if let Ok(Some(status)) = service.child.try_wait() {
                    eprintln!("sandpool exited while starting ({status}); trying another port");
                    return false;
                }
                // Ready, and ours: another test's server may hold this port.
                let ours = format!("\"instance\":\"{instance}\"");
                if try_http_get(addr, "/readyz")
                    .await
                    .is_some_and(|(s, _)| s == 200)
                    && try_http_get(addr, "/api/pool")
                        .await
                        .is_some_and(|(_, body)| body.contains(&ours))
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if ready {
            return service;
        }
    }
    panic!("sandpool did not start in three tries")
}

pub fn sigterm_and_wait(mut service: Service) -> std::process::ExitStatus {
    let pid = service.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "service did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Standard base64 (with padding), for bytes carried inside a shell command.
pub fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = match chunk.len() {
            3 => (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8 | chunk[2] as u32,
            2 => (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8,
            _ => (chunk[0] as u32) << 16,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A C program with no libc (`_start` and raw syscalls) that creates a System V shared memory
/// segment and exits: the segment outlives every process.
pub const SHM_MAKER_C: &str = r#"
static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
void _start(void) {
    long id = sys3(29, 0, 4096, 01000 | 0600); /* shmget(IPC_PRIVATE, 4096, IPC_CREAT|0600) */
    sys3(60, id < 0 ? 1 : 0, 0, 0);            /* exit */
}
"#;

/// A C program with no libc that forks in a loop forever, in every process it makes.
pub const FORK_BOMB_C: &str = r#"
void _start(void) {
    for (;;) {
        long r;
        __asm__ volatile ("syscall" : "=a"(r) : "a"(57L) : "rcx", "r11", "memory"); /* fork */
    }
}
"#;

/// A C program with no libc for the tenant's side of the xattr test. `xa set` puts two
/// `user.*` xattrs, a POSIX access and default ACL (`system.posix_acl_*`) and chosen times
/// (atime 111111111, mtime 222222222) on `/workspace`, `/tmp` and `/home/sandbox`, then lists;
/// `xa list` only lists every xattr of those roots (names, value lengths, `user.*` values).
/// Both unlink their own file first, so that it leaves no file behind. One line per call:
/// `<what> <root> <name> <return value or -errno>`.
pub const XATTR_TOOL_C: &str = r#"
static long sys6(long n, long a, long b, long c, long d, long e) {
    long r;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                      : "rcx", "r11", "memory");
    return r;
}
#define SYS_WRITE 1
#define SYS_UNLINK 87
#define SYS_SETXATTR 188
#define SYS_LGETXATTR 192
#define SYS_LLISTXATTR 195
#define SYS_EXIT 60
#define SYS_UTIMENSAT 280

static const char *const roots[3] = {"/workspace", "/tmp", "/home/sandbox"};
static char names[4096];
static char value[4096];
static char digits[24];
/* version 2; USER_OBJ rwx, USER 1001 r--, GROUP_OBJ r-x, MASK r-x, OTHER r-x */
static const unsigned char acl[44] = {
    2, 0, 0, 0,
    0x01, 0, 7, 0, 0xff, 0xff, 0xff, 0xff,
    0x02, 0, 4, 0, 0xe9, 0x03, 0, 0,
    0x04, 0, 5, 0, 0xff, 0xff, 0xff, 0xff,
    0x10, 0, 5, 0, 0xff, 0xff, 0xff, 0xff,
    0x20, 0, 5, 0, 0xff, 0xff, 0xff, 0xff,
};
/* atime, then mtime: { seconds, nanoseconds } each */
static const long times[4] = {111111111, 0, 222222222, 0};

/* volatile: else gcc turns the loop into a call to strlen, which is not there */
static long len(const volatile char *s) { long n = 0; while (s[n]) n++; return n; }
static void out(const char *s) { sys6(SYS_WRITE, 1, (long)s, len(s), 0, 0); }
static void num(long v) {
    int i = sizeof digits - 1;
    int neg = v < 0;
    unsigned long u = neg ? -(unsigned long)v : (unsigned long)v;
    digits[i] = 0;
    do { digits[--i] = '0' + u % 10; u /= 10; } while (u);
    if (neg) digits[--i] = '-';
    out(digits + i);
}
static int same(const char *a, const char *b) {
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}
static void say(const char *what, const char *root, const char *name, long ret) {
    out(what); out(" "); out(root); out(" "); out(name); out(" "); num(ret); out("\n");
}

static void set(const char *root) {
    static const char *const keys[2] = {"user.leak", "user.note"};
    for (int k = 0; k < 2; k++) {
        const char *v = k ? "a note for the next tenant" : root;
        say("set", root, keys[k], sys6(SYS_SETXATTR, (long)root, (long)keys[k], (long)v, len(v), 0));
    }
    say("acl", root, "system.posix_acl_access",
        sys6(SYS_SETXATTR, (long)root, (long)"system.posix_acl_access", (long)acl, sizeof acl, 0));
    say("acl", root, "system.posix_acl_default",
        sys6(SYS_SETXATTR, (long)root, (long)"system.posix_acl_default", (long)acl, sizeof acl, 0));
}

static void times_of(const char *root) {
    /* AT_FDCWD, AT_SYMLINK_NOFOLLOW */
    say("times", root, "-", sys6(SYS_UTIMENSAT, -100, (long)root, (long)times, 0x100, 0));
}

static void list(const char *root) {
    long n = sys6(SYS_LLISTXATTR, (long)root, (long)names, sizeof names, 0, 0);
    say("list", root, "-", n);
    for (long i = 0; i < n; i += len(names + i) + 1) {
        long v = sys6(SYS_LGETXATTR, (long)root, (long)(names + i), (long)value, sizeof value - 1, 0);
        say("xattr", root, names + i, v);
        if (v >= 0 && names[i] == 'u') { value[v] = 0; out("value "); out(value); out("\n"); }
    }
}

void start(long *sp) {
    char **argv = (char **)(sp + 1);
    sys6(SYS_UNLINK, (long)argv[0], 0, 0, 0, 0);
    int setting = sp[0] > 1 && same(argv[1], "set");
    for (int r = 0; r < 3; r++) {
        if (setting) { set(roots[r]); times_of(roots[r]); }
        list(roots[r]);
    }
    sys6(SYS_EXIT, 0, 0, 0, 0, 0);
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start\n\thlt\n");
"#;

/// Compiles `source` (no libc, `_start`) into a static x86-64 program with gcc and returns it
/// base64-encoded, ready to be written into a sandbox by a command.
pub fn static_program_base64(name: &str, source: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let bin = dir.path().join(name);
    let out = Command::new("gcc")
        .args(["-static", "-nostdlib", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc runs");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    b64(&std::fs::read(&bin).unwrap())
}

/// `node_modules` holding socket.io-client: `SANDPOOL_NODE_TOOLS`, else where `scripts/test`
/// unpacks `../shared/tools/artillery-*.tar.zst`.
pub fn node_modules() -> PathBuf {
    let dir = std::env::var("SANDPOOL_NODE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/node-tools/node_modules")
        });
    assert!(
        dir.join("socket.io-client").is_dir(),
        "socket.io-client not found in {} (run scripts/test, which unpacks ../shared/tools, or set SANDPOOL_NODE_TOOLS)",
        dir.display()
    );
    dir
}

/// Runs one scenario of `tests/js/scenarios.js` with the official socket.io client against
/// `addr`; `on_step` answers its `{"step": …}` lines. Returns its final JSON.
pub fn run_scenario(
    name: &str,
    addr: std::net::SocketAddr,
    env: &[(&str, &str)],
    mut on_step: impl FnMut(&str),
) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/scenarios.js");
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .arg(name)
        .arg(format!("http://{addr}"))
        .env("NODE_PATH", node_modules())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("node runs (Debian package nodejs)");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut last = serde_json::Value::Null;
    for line in stdout.lines() {
        let line = line.unwrap();
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(step) = value.get("step").and_then(|s| s.as_str()) {
            on_step(step);
            writeln!(stdin, "go").unwrap();
            stdin.flush().unwrap();
        } else {
            last = value;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "scenario {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last["ok"], true, "scenario {name} did not finish: {last}");
    last
}

/// A `kB` field (`VmRSS`, `VmHWM`...) of process `pid`'s `/proc/<pid>/status`.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}
