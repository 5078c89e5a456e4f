//! The nemesis test of issue 14, in the Jepsen spirit: three real `sandpool serve` replicas
//! share one real Redis and the real engine; six clients (the official socket.io client, in
//! `tests/js/nemesis.js`) open sessions, write a marker file unique to their session, run
//! commands that print it with a fresh nonce, drop and resume on random replicas, and end;
//! meanwhile a nemesis, driven by a seeded generator, `kill -9`s replicas (restarted with the
//! same id at once or after a pause), restarts them, freezes them past the heartbeat TTL,
//! restarts Redis with its data lost, and SIGTERMs them. Every operation and every nemesis
//! action is one JSON line of a history; after the run a checker reads the whole history
//! and fails on anything that must never happen:
//!
//! - two sessions observing the same sandbox at overlapping times (each session's observation
//!   interval runs from its first to its last successful command there; only overlaps that
//!   are certain whatever the commands' latencies count);
//! - a command whose output is not exactly its own session's marker and its own nonce
//!   (another command's output, another session's files, a new session's sandbox not empty);
//! - a session whose marker is gone while its client holds it, without a typed
//!   `session:expired` or `session_expired` first;
//! - a resumed session in another sandbox than before;
//! - at the end, once every replica has been stopped with SIGTERM and has finished its
//!   shutdown, any container labeled with one of the three instance ids.
//!
//! It also fails when the run did too little to mean anything (too few successful commands,
//! resumes, sessions or nemesis actions). The seed is printed at the start and comes from
//! `SANDPOOL_NEMESIS_SEED` when set; the duration from `SANDPOOL_NEMESIS_SECS` (default 90).
//! `scripts/soak [SECONDS] [SEED]` runs it for longer. The history and each replica's log are
//! kept under `target/tmp/nemesis-<seed>-<time>/`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};
use tokio::time::Instant;

const REPLICAS: usize = 3;
const CLIENTS: usize = 6;
const HEARTBEAT_TTL_SECS: u64 = 3;
const DEFAULT_SECS: u64 = 90;

/// What a run must at least have done, so that it cannot pass by doing nothing.
const MIN_OK_COMMANDS: usize = 150;
const MIN_SESSIONS: usize = 10;
const MIN_RESUMES: usize = 8;
const MIN_CROSS_REPLICA_RESUMES: usize = 3;
const MIN_FAULTS: usize = 5;

/// splitmix64: small, seeded, and the same on every machine, so that a seed replays the
/// nemesis's choices (the timing of real processes does not replay, the choices do).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Milliseconds since the epoch, as the node clients write them.
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// The history file: the clients append their operations, the nemesis its actions; one JSON
/// object per line, each written with a single `write` on a file opened for appending.
struct History {
    path: PathBuf,
    file: Mutex<File>,
}

impl History {
    fn create(path: PathBuf) -> Self {
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .expect("history file");
        Self {
            path,
            file: Mutex::new(file),
        }
    }

    fn record(&self, mut entry: Value) {
        entry["t"] = json!(now_ms());
        let line = format!("{entry}\n");
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes()).expect("history write");
        eprintln!("nemesis: {entry}");
    }

    fn read(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.path)
            .expect("history readable")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Up,
    Frozen,
    Down,
}

/// One `sandpool serve` process slot: an instance id and an address kept across restarts.
/// Dropping it kills the process (`SIGKILL` also ends a stopped one).
struct Replica {
    index: usize,
    id: String,
    addr: SocketAddr,
    child: Option<Child>,
    health: Health,
    /// When the nemesis heals it (thaws a frozen one, starts a stopped one).
    heal_at: Option<Instant>,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Replica {
    fn pid(&self) -> String {
        self.child.as_ref().expect("a process").id().to_string()
    }

    fn spawn(&mut self, env: &[(String, String)]) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("replica log");
        // The service logs to stdout; panics go to stderr. Both into the replica's log.
        let err = log.try_clone().expect("replica log");
        let mut cmd = Command::new(sandpool_bin());
        cmd.arg("serve")
            .env("SANDPOOL_INSTANCE_ID", &self.id)
            .env("SANDPOOL_LISTEN", self.addr.to_string())
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("sandpool starts"));
    }

    /// Starts the process and waits until it serves HTTP as this instance (after its
    /// recovery: it may wait out its predecessor's heartbeat). `Err` when it exits first.
    async fn start(&mut self, env: &[(String, String)]) -> Result<(), String> {
        self.spawn(env);
        let ours = format!("\"instance\":\"{}\"", self.id);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                return Err(format!("{} exited while starting: {status}", self.id));
            }
            if try_http_get(self.addr, "/api/pool")
                .await
                .is_some_and(|(s, body)| s == 200 && body.contains(&ours))
            {
                self.health = Health::Up;
                self.heal_at = None;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not serve within 90 s", self.id));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.pid()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{signal} {}", self.id);
    }

    /// Waits for the process to exit (bounded) and forgets it.
    async fn reap(&mut self, bound: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + bound;
        loop {
            let child = self.child.as_mut().expect("a process");
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                self.child = None;
                self.health = Health::Down;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not exit within {bound:?}", self.id));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn replica_env(redis: &RedisServer) -> Vec<(String, String)> {
    [
        ("SANDPOOL_REDIS_URL", redis.url()),
        (
            "SANDPOOL_HEARTBEAT_TTL_SECS",
            HEARTBEAT_TTL_SECS.to_string(),
        ),
        ("SANDPOOL_JANITOR_INTERVAL_SECS", "1".into()),
        ("SANDPOOL_RECONNECT_GRACE_SECS", "15".into()),
        ("SANDPOOL_POOL_MIN_IDLE", "2".into()),
        ("SANDPOOL_POOL_MAX", "6".into()),
        ("SANDPOOL_POOL_ACQUIRE_TIMEOUT_MS", "10000".into()),
        ("SANDPOOL_POOL_RECONCILE_INTERVAL_MS", "1000".into()),
        ("SANDPOOL_SANDBOX_MEMORY_BYTES", (128u64 << 20).to_string()),
        ("SANDPOOL_SANDBOX_TMPFS_BYTES", (16u64 << 20).to_string()),
        ("SANDPOOL_SANDBOX_PIDS_LIMIT", "64".into()),
        ("SANDPOOL_SHUTDOWN_TIMEOUT_SECS", "20".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The faults the nemesis picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    /// `kill -9` of a replica; started again with the same id at once or after a pause.
    Kill,
    /// SIGTERM of a replica, waited for, and started again with the same id at once.
    Restart,
    /// SIGSTOP of a replica past the heartbeat TTL, then SIGCONT.
    Freeze,
    /// Redis stopped, its data lost (it keeps none), and started again empty.
    RedisWipe,
    /// SIGTERM of a replica, started again with the same id after a pause.
    Term,
}

const FAULTS: [Fault; 5] = [
    Fault::Kill,
    Fault::Restart,
    Fault::Freeze,
    Fault::RedisWipe,
    Fault::Term,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill9",
            Fault::Restart => "restart",
            Fault::Freeze => "freeze",
            Fault::RedisWipe => "redis_wipe",
            Fault::Term => "sigterm",
        }
    }
    /// Weights of the random picks once each fault has run once.
    fn weight(self) -> usize {
        match self {
            Fault::Kill => 3,
            Fault::Restart => 2,
            Fault::Freeze => 3,
            Fault::RedisWipe => 1,
            Fault::Term => 2,
        }
    }
}

struct Nemesis<'a> {
    rng: Rng,
    replicas: Vec<Replica>,
    redis: &'a mut RedisServer,
    env: Vec<(String, String)>,
    history: &'a History,
    /// Each fault once first, in a random order, so that every run covers them all.
    first: Vec<Fault>,
    done: BTreeMap<&'static str, usize>,
}

impl Nemesis<'_> {
    fn log(&self, action: &str, replica: Option<usize>, extra: Value) {
        let mut entry = json!({"op": "nemesis", "action": action});
        if let Some(i) = replica {
            entry["replica"] = json!(i);
            entry["instance"] = json!(self.replicas[i].id);
        }
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                entry[k] = v;
            }
        }
        self.history.record(entry);
    }

    fn up(&self) -> Vec<usize> {
        (0..REPLICAS)
            .filter(|&i| self.replicas[i].health == Health::Up)
            .collect()
    }

    /// A replica the fault may hit while another one stays up.
    fn target(&mut self, fault: Fault) -> Option<usize> {
        let up = self.up();
        let candidates: Vec<usize> = (0..REPLICAS)
            .filter(|&i| match (fault, self.replicas[i].health) {
                (Fault::Kill, Health::Up | Health::Frozen) => up.iter().any(|&u| u != i),
                (Fault::Restart | Fault::Freeze | Fault::Term, Health::Up) => up.len() >= 2,
                _ => false,
            })
            .collect();
        if candidates.is_empty() {
            None
        } else {
            Some(candidates[self.rng.below(candidates.len())])
        }
    }

    fn applicable(&mut self, fault: Fault) -> bool {
        fault == Fault::RedisWipe || self.target(fault).is_some()
    }

    fn pick(&mut self) -> Option<Fault> {
        if let Some(pos) = (0..self.first.len()).find(|&p| {
            let f = self.first[p];
            self.applicable(f)
        }) {
            return Some(self.first.remove(pos));
        }
        if !self.first.is_empty() {
            return None; // wait until one of the first round applies
        }
        let choices: Vec<Fault> = FAULTS
            .iter()
            .copied()
            .filter(|&f| self.applicable(f))
            .flat_map(|f| std::iter::repeat_n(f, f.weight()))
            .collect();
        if choices.is_empty() {
            None
        } else {
            Some(choices[self.rng.below(choices.len())])
        }
    }

    async fn start(&mut self, i: usize, why: &str) {
        self.log("start", Some(i), json!({"phase": "begin", "why": why}));
        // The port was free a moment ago; another test on this machine may take it between a
        // stop and a start. Then the replica cannot come back on its address, which the
        // clients know: say so plainly.
        let env = self.env.clone();
        let mut result = Ok(());
        for _ in 0..3 {
            result = self.replicas[i].start(&env).await;
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if let Err(e) = result {
            panic!(
                "replica {i} could not start again on {}: {e} (see {})",
                self.replicas[i].addr,
                self.replicas[i].log.display()
            );
        }
        self.log("start", Some(i), json!({"phase": "end"}));
    }

    async fn heal(&mut self, i: usize) {
        match self.replicas[i].health {
            Health::Frozen => {
                self.replicas[i].signal("CONT");
                self.replicas[i].health = Health::Up;
                self.replicas[i].heal_at = None;
                self.log("thaw", Some(i), json!({}));
            }
            Health::Down => self.start(i, "heal").await,
            Health::Up => self.replicas[i].heal_at = None,
        }
    }

    async fn stop(&mut self, i: usize, signal: &str) -> String {
        self.replicas[i].signal(signal);
        match self.replicas[i].reap(Duration::from_secs(60)).await {
            Ok(status) => status.to_string(),
            Err(e) => panic!("{e} (see {})", self.replicas[i].log.display()),
        }
    }

    async fn inject(&mut self, fault: Fault) {
        *self.done.entry(fault.name()).or_default() += 1;
        if fault == Fault::RedisWipe {
            let pause = self.rng.millis(0, 1500);
            self.log(
                fault.name(),
                None,
                json!({"phase": "begin", "pause_ms": pause.as_millis() as u64}),
            );
            self.redis.stop();
            tokio::time::sleep(pause).await;
            self.redis.start_again().await;
            self.log(fault.name(), None, json!({"phase": "end"}));
            return;
        }
        let i = self
            .target(fault)
            .expect("an applicable fault has a target");
        match fault {
            Fault::Kill => {
                let at_once = self.rng.chance(0.5);
                let pause = self.rng.millis(1000, 6000);
                self.log(
                    fault.name(),
                    Some(i),
                    json!({"phase": "begin", "was": format!("{:?}", self.replicas[i].health),
                           "restart": if at_once { "at once".to_string() } else { format!("after {} ms", pause.as_millis()) }}),
                );
                let status = self.stop(i, "KILL").await;
                self.log(
                    fault.name(),
                    Some(i),
                    json!({"phase": "end", "exit": status}),
                );
                if at_once {
                    self.start(i, "after kill -9").await;
                } else {
                    self.replicas[i].heal_at = Some(Instant::now() + pause);
                }
            }
            Fault::Restart => {
                self.log(fault.name(), Some(i), json!({"phase": "begin"}));
                let status = self.stop(i, "TERM").await;
                self.log(
                    fault.name(),
                    Some(i),
                    json!({"phase": "stopped", "exit": status}),
                );
                self.start(i, "restart").await;
            }
            Fault::Term => {
                let pause = self.rng.millis(1000, 6000);
                self.log(
                    fault.name(),
                    Some(i),
                    json!({"phase": "begin", "down_ms": pause.as_millis() as u64}),
                );
                let status = self.stop(i, "TERM").await;
                self.log(
                    fault.name(),
                    Some(i),
                    json!({"phase": "end", "exit": status}),
                );
                self.replicas[i].heal_at = Some(Instant::now() + pause);
            }
            Fault::Freeze => {
                let past = self.rng.millis(500, 3000);
                let frozen = Duration::from_secs(HEARTBEAT_TTL_SECS) + past;
                self.log(
                    fault.name(),
                    Some(i),
                    json!({"phase": "begin", "frozen_ms": frozen.as_millis() as u64}),
                );
                self.replicas[i].signal("STOP");
                self.replicas[i].health = Health::Frozen;
                self.replicas[i].heal_at = Some(Instant::now() + frozen);
            }
            Fault::RedisWipe => unreachable!(),
        }
    }

    /// Injects faults at random intervals until `until`, healing what is due meanwhile.
    async fn run(&mut self, until: Instant) {
        let mut next_fault = Instant::now() + self.rng.millis(2000, 5000);
        while Instant::now() < until {
            for i in 0..REPLICAS {
                if self.replicas[i]
                    .heal_at
                    .is_some_and(|at| at <= Instant::now())
                {
                    self.heal(i).await;
                }
            }
            if Instant::now() >= next_fault {
                if let Some(fault) = self.pick() {
                    self.inject(fault).await;
                    next_fault = Instant::now() + self.rng.millis(3000, 8000);
                } else {
                    next_fault = Instant::now() + Duration::from_millis(500);
                }
            }
            let mut wake = next_fault.min(until);
            for r in &self.replicas {
                if let Some(at) = r.heal_at {
                    wake = wake.min(at);
                }
            }
            tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(10))).await;
        }
        self.log("stop", None, json!({"faults": self.done}));
    }

    /// Brings every replica back (thawed, started).
    async fn heal_all(&mut self) {
        for i in 0..REPLICAS {
            if self.replicas[i].health != Health::Up {
                self.heal(i).await;
            }
        }
    }
}

/// What the checker found: violations fail the test; anomalies are reported.
#[derive(Default)]
struct Report {
    violations: Vec<String>,
    anomalies: Vec<String>,
    counts: BTreeMap<String, usize>,
}

impl Report {
    fn count(&mut self, key: impl Into<String>) {
        *self.counts.entry(key.into()).or_default() += 1;
    }
    fn get(&self, key: &str) -> usize {
        self.counts.get(key).copied().unwrap_or(0)
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The nemesis actions around `t` (ms), for a violation's excerpt.
fn nemesis_near(history: &[Value], t: f64, window_ms: f64) -> String {
    history
        .iter()
        .filter(|e| s(e, "op") == "nemesis" && (f(e, "t") - t).abs() <= window_ms)
        .map(|e| format!("    {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every history line about session `sid`, in order, at most `max` of them.
fn session_lines(history: &[Value], sid: &str, max: usize) -> String {
    let lines: Vec<String> = history
        .iter()
        .filter(|e| s(e, "sid") == sid || s(e, "newSid") == sid)
        .map(|e| format!("    {e}"))
        .collect();
    let skip = lines.len().saturating_sub(max);
    let mut out = if skip > 0 {
        format!("    ... {skip} earlier lines\n")
    } else {
        String::new()
    };
    out.push_str(&lines[skip..].join("\n"));
    out
}

/// One session's observations of one sandbox: its successful commands there.
struct Observed<'a> {
    first: &'a Value,
    last: &'a Value,
    count: usize,
}

/// Reads the whole history and judges it (see the module doc).
fn check(history: &[Value]) -> Report {
    let mut report = Report::default();
    let nonce_re = |text: &str| -> Vec<String> {
        text.split(|c: char| c.is_whitespace())
            .filter(|w| w.starts_with('n') && w.matches('-').count() == 2 && w.len() > 6)
            .map(str::to_string)
            .collect()
    };
    let is_sid = |w: &str| w.len() == 36 && w.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    // When a client was told (typed) that a session ended or is gone.
    let mut told: HashMap<&str, f64> = HashMap::new();
    for e in history {
        let t = match s(e, "op") {
            "expired" => f(e, "t"),
            "error" if s(e, "code") == "session_expired" => f(e, "t"),
            "cmd" if s(e, "code") == "session_expired" => f(e, "t1"),
            "resume"
                if e["codes"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == "session_expired")) =>
            {
                f(e, "t0")
            }
            _ => continue,
        };
        let first = told.entry(s(e, "sid")).or_insert(t);
        *first = first.min(t);
    }
    let mut observed: BTreeMap<&str, BTreeMap<&str, Observed>> = BTreeMap::new();
    let mut sessions: HashSet<&str> = HashSet::new();
    for e in history {
        let op = s(e, "op");
        report.count(format!("op {op}"));
        match op {
            "open" => {
                if e["ok"] == true {
                    sessions.insert(s(e, "sid"));
                } else {
                    let why = e["codes"]
                        .as_array()
                        .and_then(|c| c.first())
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| s(e, "reason").to_string());
                    report.count(format!("open refused: {why}"));
                }
            }
            "resume" => {
                let outcome = s(e, "outcome");
                report.count(format!("resume {outcome}"));
                for code in e["codes"].as_array().into_iter().flatten() {
                    report.count(format!("resume heard {}", code.as_str().unwrap_or("?")));
                }
                if outcome == "resumed" {
                    if s(e, "inst") != s(e, "fromInst") {
                        report.count("resume resumed on another replica");
                    }
                    if s(e, "ws") != s(e, "fromWs") {
                        report.violations.push(format!(
                            "session {} resumed into another sandbox ({} → {}):\n{}",
                            s(e, "sid"),
                            s(e, "fromWs"),
                            s(e, "ws"),
                            session_lines(history, s(e, "sid"), 12)
                        ));
                    }
                }
                if outcome == "new" {
                    sessions.insert(s(e, "newSid"));
                }
            }
            "expired" => report.count(format!("expired: {}", s(e, "reason"))),
            "error" => report.count(format!("error event: {}", s(e, "code"))),
            "nemesis"
                if !s(e, "action").is_empty() && e.get("phase").is_none_or(|p| p == "begin") =>
            {
                report.count(format!("nemesis {}", s(e, "action")));
            }
            "cmd" => {
                if e["ok"] != true {
                    report.count(format!("cmd failed: {}", s(e, "code")));
                    continue;
                }
                if s(e, "status") != "ok" {
                    report.count(format!("cmd status {}", s(e, "status")));
                    report
                        .anomalies
                        .push(format!("a command did not finish: {e}"));
                    continue;
                }
                report.count("cmd ok");
                let (sid, ws, nonce) = (s(e, "sid"), s(e, "ws"), s(e, "nonce"));
                let entry = observed
                    .entry(ws)
                    .or_default()
                    .entry(sid)
                    .or_insert(Observed {
                        first: e,
                        last: e,
                        count: 0,
                    });
                entry.last = e;
                entry.count += 1;
                let (stdout, stderr) = (s(e, "stdout"), s(e, "stderr"));
                let expected = format!("{sid}\n{nonce}\n");
                if stdout == expected && stderr.is_empty() && e["exit"] == 0 {
                    report.count("cmd ok and exact");
                    continue;
                }
                let words: Vec<&str> = stdout.split_whitespace().collect();
                let foreign_nonces: Vec<String> = nonce_re(stdout)
                    .into_iter()
                    .filter(|n| n != nonce)
                    .collect();
                let foreign_sids: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| is_sid(w) && *w != sid)
                    .collect();
                let what = if !foreign_nonces.is_empty() {
                    format!("a command answered with another command's output {foreign_nonces:?}")
                } else if !foreign_sids.is_empty() {
                    format!("a command saw another session's files {foreign_sids:?}")
                } else if s(e, "kind") == "fresh" && words.len() > 2 {
                    "a new session's sandbox was not empty".to_string()
                } else if !words.contains(&sid) {
                    if told.get(sid).is_some_and(|&t| t < f(e, "t0")) {
                        report.count("marker gone after a typed expiry");
                        continue;
                    }
                    "the session's marker file is gone while its client holds it, with no typed session:expired or session_expired first".to_string()
                } else {
                    "unexpected output".to_string()
                };
                report.violations.push(format!(
                    "{what}: client {} session {sid} sandbox {ws} on {}:\n    {e}\n  the session's history:\n{}\n  nemesis around it:\n{}",
                    e["client"],
                    s(e, "inst"),
                    session_lines(history, sid, 12),
                    nemesis_near(history, f(e, "t0"), 15_000.0)
                ));
            }
            _ => {}
        }
    }
    report.counts.insert("sessions".into(), sessions.len());
    report
        .counts
        .insert("sandboxes observed".into(), observed.len());
    // Two sessions in one sandbox at once: certain only if each one's first observation
    // answered before the other's last one was sent.
    for (ws, by_session) in &observed {
        let list: Vec<(&&str, &Observed)> = by_session.iter().collect();
        if list.len() > 1 {
            report.count("sandboxes reused by later sessions");
        }
        for (a, (sa, oa)) in list.iter().enumerate() {
            for (sb, ob) in list.iter().skip(a + 1) {
                let a_before_b_ends = f(oa.first, "t1") < f(ob.last, "t0");
                let b_before_a_ends = f(ob.first, "t1") < f(oa.last, "t0");
                if a_before_b_ends && b_before_a_ends {
                    report.violations.push(format!(
                        "two sessions observed sandbox {ws} at overlapping times: {sa} ({} commands, {:.0}..{:.0}) and {sb} ({} commands, {:.0}..{:.0})\n  {sa}:\n{}\n  {sb}:\n{}\n  nemesis around it:\n{}",
                        oa.count,
                        f(oa.first, "t0"),
                        f(oa.last, "t1"),
                        ob.count,
                        f(ob.first, "t0"),
                        f(ob.last, "t1"),
                        session_lines(history, sa, 10),
                        session_lines(history, sb, 10),
                        nemesis_near(history, f(ob.first, "t0"), 15_000.0)
                    ));
                }
            }
        }
    }
    // A connection the client holds hearing that its session ended as `disconnected` (not
    // resumed within the grace) contradicts itself. Reported, not failed: the client was told.
    for e in history {
        if s(e, "op") == "expired" && s(e, "reason") == "disconnected" {
            report.anomalies.push(format!(
                "a connected client heard its session expire as `disconnected`: {e}\n{}\n  nemesis around it:\n{}",
                session_lines(history, s(e, "sid"), 12),
                nemesis_near(history, f(e, "t"), 20_000.0)
            ));
        }
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis() {
    let seed: u64 = std::env::var("SANDPOOL_NEMESIS_SEED")
        .ok()
        .map(|s| s.parse().expect("SANDPOOL_NEMESIS_SEED is a number"))
        .unwrap_or_else(|| now_ms() as u64 % 1_000_000);
    let secs: u64 = std::env::var("SANDPOOL_NEMESIS_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("SANDPOOL_NEMESIS_SECS is a number of seconds")
        })
        .unwrap_or(DEFAULT_SECS);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("nemesis-{seed}-{}", now_ms() as u64 / 1000));
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!(
        "nemesis seed {seed}, {secs} s (replay: scripts/soak {secs} {seed}); history and logs in {}",
        dir.display()
    );
    let node_modules = node_modules();
    let mut rng = Rng(seed);
    let history = History::create(dir.join("history.jsonl"));
    history.record(json!({"op": "nemesis", "action": "setup", "seed": seed, "secs": secs}));

    let mut redis = RedisServer::start().await;
    let env = replica_env(&redis);
    let ids: Vec<String> = (0..REPLICAS)
        .map(|i| unique_instance(&format!("nem{i}")))
        .collect();
    let _cleanups: Vec<Cleanup> = ids.iter().map(|id| Cleanup::new(id)).collect();
    let mut replicas = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let mut replica = Replica {
            index,
            id: id.clone(),
            addr: "127.0.0.1:1".parse().unwrap(),
            child: None,
            health: Health::Down,
            heal_at: None,
            log: dir.join(format!("replica-{index}.log")),
        };
        // A port another test took between `free_port` and the bind: try another.
        let mut started = Err(String::new());
        for _ in 0..3 {
            replica.addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            started = within(100, "replica starts", replica.start(&env)).await;
            if started.is_ok() {
                break;
            }
        }
        started.unwrap_or_else(|e| panic!("{e} (see {})", replica.log.display()));
        replicas.push(replica);
    }
    for r in &replicas {
        history.record(json!({"op": "nemesis", "action": "replica", "replica": r.index, "instance": r.id, "url": format!("http://{}", r.addr)}));
    }
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("http://{}", r.addr))
        .collect();

    // The clients.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/nemesis.js");
    let mut workload = tokio::process::Command::new("node")
        .arg(&script)
        .env("NODE_PATH", &node_modules)
        .env("URLS", urls.join(","))
        .env("CLIENTS", CLIENTS.to_string())
        .env("SECS", secs.to_string())
        .env("SEED", seed.to_string())
        .env("HISTORY", &history.path)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Debian package nodejs)");

    // The nemesis, for as long as the clients run.
    let mut first = FAULTS.to_vec();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i + 1));
    }
    let mut nemesis = Nemesis {
        rng,
        replicas,
        redis: &mut redis,
        env: env.clone(),
        history: &history,
        first,
        done: BTreeMap::new(),
    };
    let until = Instant::now() + Duration::from_secs(secs);
    within(secs + 300, "the nemesis", nemesis.run(until)).await;
    // Everything back, so that the clients' last resumes can land and the final shutdown
    // is every replica's own.
    within(300, "healing every replica", nemesis.heal_all()).await;
    let status = within(secs + 120, "the clients finish", workload.wait())
        .await
        .expect("node ran");
    assert!(status.success(), "the client workload failed: {status}");

    // The end: every replica stopped with SIGTERM, all at once, each shutdown finished.
    tokio::time::sleep(Duration::from_secs(2)).await;
    history.record(json!({"op": "nemesis", "action": "final_sigterm", "phase": "begin"}));
    for r in &nemesis.replicas {
        r.signal("TERM");
    }
    let mut exits = Vec::new();
    for r in &mut nemesis.replicas {
        exits.push(
            r.reap(Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("{e} (see {})", r.log.display())),
        );
    }
    history.record(
        json!({"op": "nemesis", "action": "final_sigterm", "phase": "end",
                          "exits": exits.iter().map(|s| s.to_string()).collect::<Vec<_>>()}),
    );
    let mut left: Vec<(String, Vec<String>)> = Vec::new();
    for _ in 0..2 {
        for id in &ids {
            let ids = labeled_containers(id);
            if !ids.is_empty() && !left.iter().any(|(i, _)| i == id) {
                left.push((id.clone(), ids));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // The checker.
    let all = history.read();
    let mut report = check(&all);
    for (r, status) in nemesis.replicas.iter().zip(&exits) {
        if !status.success() {
            report.violations.push(format!(
                "replica {} ({}) did not shut down cleanly on SIGTERM: {status} (see {})",
                r.index,
                r.id,
                r.log.display()
            ));
        }
    }
    for (id, containers) in &left {
        report.violations.push(format!(
            "containers of {id} left after every replica's shutdown (leaked or orphaned): {containers:?}"
        ));
    }
    eprintln!("\n== nemesis seed {seed}, {secs} s: counts ==");
    for (k, v) in &report.counts {
        eprintln!("  {k:<45} {v}");
    }
    for a in &report.anomalies {
        eprintln!("\n-- anomaly (reported, not failed): {a}");
    }
    for v in &report.violations {
        eprintln!("\n!! VIOLATION: {v}");
    }
    eprintln!("\nhistory: {}", history.path.display());
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {} violation(s) of the ownership invariants (above); replay with scripts/soak {secs} {seed}",
        report.violations.len()
    );
    // Not vacuous: the run did real work under real faults.
    let faults: usize = FAULTS
        .iter()
        .map(|f| report.get(&format!("nemesis {}", f.name())))
        .sum();
    for (what, got, min) in [
        ("successful commands", report.get("cmd ok"), MIN_OK_COMMANDS),
        ("sessions", report.get("sessions"), MIN_SESSIONS),
        ("resumes", report.get("resume resumed"), MIN_RESUMES),
        (
            "resumes on another replica",
            report.get("resume resumed on another replica"),
            MIN_CROSS_REPLICA_RESUMES,
        ),
        ("nemesis faults", faults, MIN_FAULTS),
    ] {
        assert!(
            got >= min,
            "seed {seed}: only {got} {what} (at least {min}): the run proves too little"
        );
    }
    for fault in FAULTS {
        assert!(
            report.get(&format!("nemesis {}", fault.name())) > 0,
            "seed {seed}: the nemesis never ran {}",
            fault.name()
        );
    }
}

/// The checker itself, on small made-up histories: it flags what must never happen and
/// nothing else (a sandbox reused after its session ended, files lost after a typed expiry).
#[test]
fn the_checker_flags_exactly_the_forbidden_histories() {
    const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
    let cmd = |client: u32, sid: &str, ws: &str, t0: f64, nonce: &str, stdout: &str| {
        json!({"op": "cmd", "client": client, "kind": "read", "sid": sid, "ws": ws, "inst": "r0",
               "nonce": nonce, "t0": t0, "t1": t0 + 5.0, "ok": true, "status": "ok", "exit": 0,
               "stdout": stdout, "stderr": ""})
    };
    let ok = |client, sid: &str, ws, t0, nonce: &str| {
        cmd(client, sid, ws, t0, nonce, &format!("{sid}\n{nonce}\n"))
    };
    let violations = |history: Vec<Value>| check(&history).violations;

    // One sandbox, two sessions one after the other: fine.
    let sequential = vec![
        ok(0, A, "w1", 0.0, "n0-1-00000000"),
        ok(0, A, "w1", 100.0, "n0-2-00000000"),
        ok(1, B, "w1", 200.0, "n1-1-00000000"),
        ok(1, B, "w1", 300.0, "n1-2-00000000"),
    ];
    assert!(violations(sequential).is_empty());

    // One sandbox, two sessions at once: flagged.
    let overlapping = vec![
        ok(0, A, "w1", 0.0, "n0-1-00000000"),
        ok(1, B, "w1", 50.0, "n1-1-00000000"),
        ok(0, A, "w1", 100.0, "n0-2-00000000"),
        ok(1, B, "w1", 150.0, "n1-2-00000000"),
    ];
    let found = violations(overlapping);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("overlapping"), "{found:?}");

    // Another command's output, another session's marker, a lost marker: flagged.
    let crossed = vec![cmd(
        0,
        A,
        "w1",
        0.0,
        "n0-1-00000000",
        &format!("{A}\nn1-7-00000000\n"),
    )];
    assert!(violations(crossed)[0].contains("another command's output"));
    let foreign = vec![cmd(
        0,
        A,
        "w1",
        0.0,
        "n0-1-00000000",
        &format!("{B}\nn0-1-00000000\n"),
    )];
    assert!(violations(foreign)[0].contains("another session's files"));
    let lost = vec![cmd(0, A, "w1", 10.0, "n0-1-00000000", "n0-1-00000000\n")];
    assert!(violations(lost)[0].contains("marker file is gone"));

    // The same loss after a typed expiry: allowed.
    let told = vec![
        json!({"op": "expired", "client": 0, "sid": A, "reason": "sandbox_lost", "t": 5.0}),
        cmd(0, A, "w1", 10.0, "n0-1-00000000", "n0-1-00000000\n"),
    ];
    assert!(violations(told).is_empty());

    // A resume into another sandbox: flagged.
    let moved = vec![
        json!({"op": "resume", "client": 0, "sid": A, "outcome": "resumed",
                            "fromWs": "w1", "ws": "w2", "fromInst": "r0", "inst": "r1",
                            "t0": 0.0, "t1": 1.0, "codes": []}),
    ];
    assert!(violations(moved)[0].contains("another sandbox"));
}
