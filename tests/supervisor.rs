//! The in-sandbox supervisor against the real Docker engine, attacked as a hostile tenant
//! (uid 1000) would: what the tenant's commands are (user, capabilities, descriptors,
//! session), concurrency and bounded output, process trees killed on timeout and on drop,
//! file operations done as the tenant (no confused deputy), signals and writes aimed at the
//! supervisor and at the host link, fake protocol frames, a fork bomb, memory exhaustion, a
//! supervisor that dies or hangs, xattrs, ACLs and times left on the tenant's roots, and a
//! session cycle that never calls Docker. Every attack
//! ends with the same question: is the next session's sandbox clean and the link intact?

mod common;

use std::time::{Duration, Instant};

use common::*;
use sandpool::pool::{
    CommandOutput, CommandSpec, ContainerPool, FileRequest, LeaseRef, OutputChunk, PoolError,
    RecycleOutcome, SupervisorError, Verdict,
};
use sandpool_supervisor::proto::{
    Done, ExitStatus, FileData, FileKind, FileStat, Frame, Kind, Listing, Pong, Verdict as Report,
    Written,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn recycle(pool: &ContainerPool, id: &LeaseRef) -> RecycleOutcome {
    let rx = pool.release(id).expect("lease is held");
    within(60, "recycle", rx).await.expect("recycle outcome")
}

/// `sh -c script` as the tenant, bounded.
async fn run_sh(pool: &ContainerPool, id: &LeaseRef, script: &str) -> CommandOutput {
    within(60, "command", sh(pool, id, script)).await
}

/// `spec` as the tenant, bounded; the error is the test's to judge.
async fn run_spec(
    pool: &ContainerPool,
    id: &LeaseRef,
    spec: &CommandSpec,
) -> Result<CommandOutput, PoolError> {
    within(
        spec.timeout.as_secs() + 30,
        "command",
        pool.run(id, spec, None),
    )
    .await
}

fn shell(script: &str, timeout: Duration) -> CommandSpec {
    CommandSpec::shell(script, timeout, 1 << 20)
}

fn argv(args: &[&str], timeout: Duration) -> CommandSpec {
    let mut spec = CommandSpec::shell("", timeout, 1 << 20);
    spec.argv = args.iter().map(|a| a.to_string()).collect();
    spec
}

async fn ping(pool: &ContainerPool, id: &LeaseRef) -> Result<Pong, PoolError> {
    within(30, "ping", pool.ping(id)).await
}

async fn verify(pool: &ContainerPool, id: &LeaseRef) -> Verdict {
    within(30, "verify", pool.verify(&id.container_id))
        .await
        .expect("verify answers")
}

async fn file<T: serde::de::DeserializeOwned>(
    pool: &ContainerPool,
    id: &LeaseRef,
    request: FileRequest,
    body: &[u8],
) -> Result<(T, Vec<u8>), PoolError> {
    within(
        40,
        "file operation",
        pool.file::<T>(id, &request, body.to_vec()),
    )
    .await
}

/// The code of a `Failed` supervisor error; panics on anything else.
fn failed_code<T: std::fmt::Debug>(result: Result<T, PoolError>, what: &str) -> String {
    match result {
        Err(PoolError::Supervisor(SupervisorError::Failed { code, .. })) => code,
        other => panic!("{what}: expected a Failed supervisor error, got {other:?}"),
    }
}

fn read_req(path: &str) -> FileRequest {
    FileRequest::Read {
        path: path.into(),
        offset: 0,
        max_bytes: 1 << 20,
    }
}

fn write_req(path: &str) -> FileRequest {
    FileRequest::Write {
        path: path.into(),
        append: false,
        mode: None,
        offset: None,
        parents: false,
    }
}

/// Real supervisor frames saying "clean, nothing found" for every id in `ids`: what a tenant
/// would print to pass a dirty sandbox off as clean, if its bytes reached the host link.
fn fake_clean_verdicts(ids: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    ids.flat_map(|id| {
        Frame::with_head(
            Kind::Result,
            id,
            &Report {
                clean: true,
                found: vec![],
                killed: 0,
            },
        )
        .encode()
    })
    .collect()
}

/// A mix of frames the host would act on (verdicts, exits, pongs, output), then a header
/// the host's decoder would reject outright (a length past the maximum).
fn fake_frame_mix(ids: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut out = fake_clean_verdicts(ids.clone());
    for id in ids {
        out.extend(
            Frame::with_head(
                Kind::Exit,
                id,
                &ExitStatus {
                    code: Some(0),
                    signal: None,
                    timed_out: false,
                    killed: false,
                    checkpoint: None,
                },
            )
            .encode(),
        );
        out.extend(
            Frame::with_head(
                Kind::Result,
                id,
                &Pong {
                    pid: 1,
                    version: "fake".into(),
                    running: 0,
                    generation: u64::MAX,
                    holder: 1,
                },
            )
            .encode(),
        );
        out.extend(
            Frame::new(Kind::Stdout, id)
                .body(b"INJECTED".to_vec())
                .encode(),
        );
    }
    out.extend([0xff, 0xff, 0xff, 0xff, 0x01, 0x02, 0x03]);
    out
}

/// One process as the tenant sees it in `/proc`.
#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    uid: String,
    state: String,
    ppid: i32,
    sid: i32,
    name: String,
}

/// Lists every process from `/proc` with shell builtins only, so that the probe is the only
/// tenant process it adds. Prints `SELF <pid>` then `P pid uid state ppid pgrp sid name`.
const PROC_TABLE: &str = r#"
echo "SELF $$"
for d in /proc/[0-9]*; do
  { read -r line < "$d/stat"; } 2>/dev/null || continue
  name=; uid=
  { while read -r k v rest; do
      case "$k" in Name:) name=$v ;; Uid:) uid=$v ;; esac
    done < "$d/status"; } 2>/dev/null
  rest=${line##*[)]}
  set -- $rest
  echo "P ${d#/proc/} ${uid:-?} $1 $2 $3 $4 $name"
done
"#;

/// Every process in the sandbox, and the probe's own pid.
async fn process_table(pool: &ContainerPool, id: &LeaseRef) -> (i32, Vec<Proc>) {
    let out = run_sh(pool, id, PROC_TABLE).await;
    assert_eq!(out.exit_code, Some(0), "process table probe: {out:?}");
    let stdout = text(&out.stdout);
    let mut me = 0;
    let mut procs = Vec::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["SELF", pid] => me = pid.parse().unwrap(),
            ["P", pid, uid, state, ppid, _pgrp, sid, name @ ..] => procs.push(Proc {
                pid: pid.parse().unwrap(),
                uid: uid.to_string(),
                state: state.to_string(),
                ppid: ppid.parse().unwrap_or(-1),
                sid: sid.parse().unwrap_or(-1),
                name: name.join(" "),
            }),
            _ => {}
        }
    }
    assert!(me > 0, "probe printed its pid: {stdout}");
    (me, procs)
}

/// The supervisor's pid, from the tenant's view of `/proc` (comm is cut to 15 characters).
async fn supervisor_pid(pool: &ContainerPool, id: &LeaseRef) -> i32 {
    let (_, procs) = process_table(pool, id).await;
    let sup: Vec<&Proc> = procs
        .iter()
        .filter(|p| p.name == "sandpool-superv" && p.ppid == 1)
        .collect();
    assert_eq!(
        sup.len(),
        1,
        "exactly one supervisor under init: {procs:#?}"
    );
    assert_eq!(sup[0].uid, "0", "the supervisor runs as root: {procs:#?}");
    sup[0].pid
}

/// Asserts that the sandbox holds init, the supervisor and the probe, and nothing else.
async fn assert_only_init_supervisor_and_probe(pool: &ContainerPool, id: &LeaseRef) {
    let (me, procs) = process_table(pool, id).await;
    let strays: Vec<&Proc> = procs
        .iter()
        .filter(|p| {
            let init = p.pid == 1;
            let supervisor = p.name == "sandpool-superv" && p.uid == "0" && p.ppid == 1;
            let probe = p.pid == me || (p.uid == "1000" && p.sid == me && p.state != "Z");
            !(init || supervisor || probe)
        })
        .collect();
    assert!(
        strays.is_empty(),
        "processes other than init, the supervisor and the probe: {strays:#?}\nall: {procs:#?}"
    );
}

/// Processes whose command line contains `needle`; the needle is split so that the probe's
/// own command line never matches.
async fn procs_with(pool: &ContainerPool, id: &LeaseRef, needle: &str) -> Vec<String> {
    let (a, b) = needle.split_at(needle.len() / 2);
    let script = format!(
        r#"n1='{a}'; n2='{b}'; n="$n1$n2"
for d in /proc/[0-9]*; do
  c=$( {{ tr '\0' ' ' < "$d/cmdline"; }} 2>/dev/null )
  case "$c" in *"$n"*) echo "${{d#/proc/}} $c" ;; esac
done
true"#
    );
    let out = run_sh(pool, id, &script).await;
    text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits until no process's command line contains `needle`; returns what is left at the end.
async fn wait_gone(
    pool: &ContainerPool,
    id: &LeaseRef,
    needle: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = procs_with(pool, id, needle).await;
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `docker exec` as root in the container (with the container's capabilities), for looking
/// from outside the tenant's reach.
fn docker_root(id: &str, script: &str) -> String {
    docker(&["exec", "--user", "0", id, "sh", "-c", script])
}

/// `docker exec` as root, for a command that may take the container down with it: started
/// detached (an exec that waits for a command that took its gVisor sandbox down never
/// returns), its exit status not judged.
fn docker_root_unchecked(id: &str, script: &str) {
    let out = std::process::Command::new("docker")
        .args(["exec", "--detach", "--user", "0", id, "sh", "-c", script])
        .output()
        .expect("docker CLI runs");
    eprintln!(
        "docker exec {script:?}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `(state, start time)` of a process, read from outside through `docker exec`.
fn outside_stat(id: &str, pid: i32) -> (String, String) {
    let stat = docker_root(id, &format!("cat /proc/{pid}/stat"));
    let rest = stat.rsplit_once(')').expect("a stat line").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3 of the line, start time field 22.
    (f[0].to_string(), f[19].to_string())
}

/// The container's `pids.current` from the host's cgroup tree, where this host has it.
fn host_pids_current(id: &str) -> Option<u64> {
    [
        format!("/sys/fs/cgroup/pids/docker/{id}/pids.current"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/pids.current"),
        format!("/sys/fs/cgroup/docker/{id}/pids.current"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse().ok())
}

/// Waits until Docker no longer lists `id` for `instance`.
async fn wait_removed(instance: &str, id: &str, secs: u64) {
    within(secs, "container removed from docker", async {
        while labeled_containers(instance).iter().any(|c| c == id) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// A static x86-64 program that creates a System V shared memory segment and exits.
#[cfg(target_arch = "x86_64")]
fn shm_maker_base64() -> String {
    static_program_base64("shm", SHM_MAKER_C)
}

/// A static x86-64 program that calls fork(2) in a loop forever, in every process it makes:
/// unlike a shell fork bomb (busybox sh exits when a fork fails), it keeps the pids limit
/// pinned for as long as it is left alive.
#[cfg(target_arch = "x86_64")]
fn fork_bomb_base64() -> String {
    static_program_base64("bomb", FORK_BOMB_C)
}

/// The tenant's tool that marks and lists the xattrs, ACLs and times of the tenant's roots
/// (busybox has no setfattr or getfattr).
#[cfg(target_arch = "x86_64")]
fn xattr_tool_base64() -> String {
    static_program_base64("xa", XATTR_TOOL_C)
}

/// Under gVisor a tenant that exhausts its sandbox's pids or memory takes gVisor's own kernel
/// with it (the sentry cannot make a thread, or is the one the OOM killer picks). Then the
/// sandbox must be lost, destroyed and removed, and the next lease another, clean one.
async fn sandbox_died_and_was_replaced(pool: &ContainerPool, instance: &str, id: &LeaseRef) {
    assert!(gvisor_run(), "only gVisor may lose a sandbox to its tenant");
    match recycle(pool, id).await {
        RecycleOutcome::Destroyed(reason) => {
            eprintln!("the sandbox died and was destroyed: {reason}")
        }
        RecycleOutcome::Recycled => panic!("a sandbox whose kernel died was recycled"),
    }
    wait_removed(instance, &id.container_id, 20).await;
    let next = within(60, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert_ne!(next.container_id, id.container_id);
    assert_eq!(verify(pool, &next.lease_ref()).await, Verdict::Clean);
    shutdown_leaves_nothing(pool, instance).await;
}

/// A warm pool (min idle 1, max 2) of a fresh instance, and one sandbox leased from it.
async fn leased_sandbox(name: &str) -> (String, Cleanup, ContainerPool, LeaseRef) {
    let instance = unique_instance(name);
    let cleanup = Cleanup::new(&instance);
    let config = small_config(&instance, 1, 2);
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    (instance, cleanup, pool, lease.lease_ref())
}

fn small_config(instance: &str, min_idle: usize, max: usize) -> sandpool::config::Config {
    let mut config = test_config(instance);
    config.pool.min_idle = min_idle;
    config.pool.max = max;
    config
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_as_the_tenant_with_no_capabilities() {
    let (instance, _cleanup, pool, id) = leased_sandbox("sv-tenant").await;

    let out = run_sh(&pool, &id, "id -u; id -g; id -G").await;
    assert_eq!(
        text(&out.stdout).lines().collect::<Vec<_>>(),
        vec!["1000", "1000", "1000"],
        "uid, gid and groups are the tenant's alone (no group of root kept): {out:?}"
    );

    let out = run_sh(
        &pool,
        &id,
        "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status",
    )
    .await;
    let status = text(&out.stdout);
    let caps: Vec<&str> = status.lines().filter(|l| l.starts_with("Cap")).collect();
    // gVisor has no ambient set, so no CapAmb line.
    let sets = if gvisor_run() { 4 } else { 5 };
    assert_eq!(caps.len(), sets, "{status}");
    for line in &caps {
        assert!(
            line.ends_with("0000000000000000"),
            "a tenant capability set is not empty: {line}\n{status}"
        );
    }
    // gVisor's status file has no NoNewPrivs line (the seccomp filter below needs it set).
    assert!(
        gvisor_run() || status.contains("NoNewPrivs:\t1"),
        "{status}"
    );
    assert!(
        status.contains("Seccomp:\t2"),
        "seccomp filter kept: {status}"
    );

    let out = run_sh(&pool, &id, "cat /proc/self/oom_score_adj").await;
    assert_eq!(text(&out.stdout).trim(), "1000", "{out:?}");

    // Its own session and process group: the shell leads both.
    let out = run_sh(
        &pool,
        &id,
        r#"read -r line < /proc/$$/stat; rest=${line##*[)]}; set -- $rest; echo "$$ $3 $4""#,
    )
    .await;
    let f: Vec<String> = text(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(f.len(), 3, "{out:?}");
    assert_eq!(f[0], f[1], "the command leads its process group: {f:?}");
    assert_eq!(f[0], f[2], "the command leads its own session: {f:?}");

    // Exactly the environment and working directory it was given.
    let mut spec = shell("env; pwd", Duration::from_secs(20));
    spec.env.push("SANDPOOL_PROBE=42".into());
    spec.cwd = "/tmp".into();
    let out = run_spec(&pool, &id, &spec).await.expect("command runs");
    let seen = text(&out.stdout);
    assert!(seen.contains("SANDPOOL_PROBE=42"), "{seen}");
    assert!(seen.lines().last() == Some("/tmp"), "cwd: {seen}");
    for line in seen.lines().filter(|l| l.contains('=')) {
        let key = line.split('=').next().unwrap();
        assert!(
            [
                "HOME",
                "PATH",
                "SANDPOOL_PROBE",
                "PWD",
                "SHLVL",
                "OLDPWD",
                "_"
            ]
            .contains(&key),
            "variable {key:?} not given by the host leaked into the command: {seen}"
        );
    }

    // Descriptors: only stdin/stdout/stderr (pipes or /dev/null) and the one `ls` opens on
    // the directory it lists. None of the host link's descriptors.
    let out = run_sh(&pool, &id, "ls -l /proc/self/fd").await;
    let listing = text(&out.stdout);
    let mut fds = Vec::new();
    for line in listing.lines().filter(|l| l.contains(" -> ")) {
        let (left, target) = line.split_once(" -> ").unwrap();
        let fd: u32 = left
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .expect("fd number");
        fds.push((fd, target.to_string()));
    }
    assert!(fds.len() >= 3, "{listing}");
    for (fd, target) in &fds {
        match fd {
            0 => assert!(
                target.starts_with("pipe:") || target == "/dev/null",
                "stdin is {target}: {listing}"
            ),
            1 | 2 => assert!(
                target.starts_with("pipe:"),
                "fd {fd} is {target}: {listing}"
            ),
            3 => assert!(
                target.starts_with("/proc/") && target.ends_with("/fd"),
                "fd 3 is {target}: {listing}"
            ),
            _ => panic!("fd {fd} -> {target} leaked into the tenant's command:\n{listing}"),
        }
    }
    // The host link's descriptors, as init (and the supervisor, where root can see them)
    // hold them: none of them may be one of the tenant's.
    let sup = supervisor_pid(&pool, &id).await;
    let host_side = docker_root(
        &id.container_id,
        &format!(
            "for p in 1 {sup}; do for f in 0 1 2; do readlink /proc/$p/fd/$f; done; done 2>/dev/null; true"
        ),
    );
    assert!(
        !host_side.trim().is_empty(),
        "init's descriptors are readable from outside"
    );
    for link in host_side.lines().filter(|l| !l.is_empty()) {
        for (fd, target) in &fds {
            assert_ne!(
                target, link,
                "the tenant's fd {fd} is the host link's {link}"
            );
        }
    }

    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_can_open_its_own_stdio_by_name() {
    let (instance, _cleanup, pool, id) = leased_sandbox("sv-stdio").await;

    // A command's own stdio can be opened by name, as with any process: `docker exec` gave
    // the tenant its pipes, and `echo msg > /dev/stderr` is a common idiom.
    let out = run_sh(
        &pool,
        &id,
        "echo out > /dev/stdout; echo err > /dev/stderr; echo also-out | cat > /proc/self/fd/1",
    )
    .await;
    if gvisor_run() {
        // gVisor keeps a pipe's owner from its creator (the supervisor, root) whatever the
        // fchown: reopening one's own stdio by name is refused there (a known difference).
        assert_eq!(text(&out.stdout), "", "{out:?}");
        assert_eq!(
            text(&out.stderr).matches("Permission denied").count(),
            3,
            "{out:?}"
        );
    } else {
        assert_eq!(
            (text(&out.stdout), text(&out.stderr)),
            ("out\nalso-out\n".to_string(), "err\n".to_string()),
            "/dev/stdout and /dev/stderr are not usable by the tenant: {out:?}"
        );
    }
    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_commands_of_one_session_run_at_once_and_output_is_bounded() {
    let (instance, _cleanup, pool, id) = leased_sandbox("sv-concur").await;

    // Four one-second commands at once take about one second, not four.
    let started = Instant::now();
    let specs: Vec<CommandSpec> = (0..4)
        .map(|n| shell(&format!("sleep 1; echo {n}"), Duration::from_secs(20)))
        .collect();
    let outs = within(
        30,
        "concurrent commands",
        futures_util::future::join_all(specs.iter().map(|s| pool.run(&id, s, None))),
    )
    .await;
    let took = started.elapsed();
    for (n, out) in outs.into_iter().enumerate() {
        let out = out.expect("command runs");
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        assert_eq!(text(&out.stdout), format!("{n}\n"));
    }
    assert!(
        took < Duration::from_secs(3),
        "4 x `sleep 1` took {took:?}: the commands did not run at once"
    );

    // A command whose output sink is stuck does not hold up another one.
    let (stuck_tx, _stuck_rx) = tokio::sync::mpsc::channel::<OutputChunk>(1);
    let flood = argv(
        &["head", "-c", "5000000", "/dev/zero"],
        Duration::from_secs(5),
    );
    let quick = shell("echo quick", Duration::from_secs(20));
    let flood_run = pool.run(&id, &flood, Some(&stuck_tx));
    let quick_run = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let out = pool.run(&id, &quick, None).await;
        (out, t.elapsed())
    };
    let (flood_out, (quick_out, quick_took)) =
        within(40, "stuck sink and a quick command", async {
            tokio::join!(flood_run, quick_run)
        })
        .await;
    assert_eq!(text(&quick_out.expect("quick runs").stdout), "quick\n");
    assert!(
        quick_took < Duration::from_secs(2),
        "a command waited {quick_took:?} behind another's stuck output"
    );
    let flood_out = flood_out.expect("the flooding command ends");
    assert!(
        flood_out.stdout.len() <= 1 << 20,
        "{}",
        flood_out.stdout.len()
    );

    // 3 MB of output with a 1 MiB limit: cut, flagged, and the command still exits 0.
    let big = CommandSpec::shell(
        "head -c 3000000 /dev/zero | tr '\\0' a",
        Duration::from_secs(30),
        1 << 20,
    );
    let out = run_spec(&pool, &id, &big).await.expect("command runs");
    assert_eq!(out.exit_code, Some(0), "{:?}", out.stderr);
    assert!(out.truncated, "3 MB of output was not flagged truncated");
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout.iter().all(|&b| b == b'a'));

    // Stdin reaches the command, byte for byte, even past the pipe buffer and the window.
    let mut spec = argv(&["cat"], Duration::from_secs(20));
    spec.stdin = b"hello from stdin\n".to_vec();
    let out = run_spec(&pool, &id, &spec).await.expect("cat runs");
    assert_eq!(out.stdout, b"hello from stdin\n");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    spec.stdin = data.clone();
    let out = run_spec(&pool, &id, &spec).await.expect("cat runs");
    assert_eq!(out.exit_code, Some(0));
    assert!(
        out.stdout == data,
        "300 kB of stdin came back as {} bytes",
        out.stdout.len()
    );

    // Output that looks like protocol frames is output, nothing more.
    let fake = fake_frame_mix(1..=50);
    let script = format!(
        "echo {b} | base64 -d; echo {b} | base64 -d >&2; echo after",
        b = b64(&fake)
    );
    let out = run_spec(&pool, &id, &shell(&script, Duration::from_secs(20)))
        .await
        .expect("command runs");
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    let mut expected = fake.clone();
    expected.extend_from_slice(b"after\n");
    assert!(
        out.stdout == expected,
        "stdout was not the printed bytes ({} vs {} bytes)",
        out.stdout.len(),
        expected.len()
    );
    assert!(out.stderr == fake, "stderr was not the printed bytes");
    ping(&pool, &id)
        .await
        .expect("the link survives fake frames");
    let out = run_sh(&pool, &id, "echo still-here").await;
    assert_eq!(text(&out.stdout), "still-here\n");

    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_drop_kill_the_whole_tree() {
    let instance = unique_instance("sv-tree");
    let cleanup = Cleanup::new(&instance);
    // One container, so that the next holder is the same sandbox.
    let config = small_config(&instance, 1, 1);
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let id = lease.lease_ref();

    // The timeout kills the command and everything it started, setsid included.
    let started = Instant::now();
    let spec = shell(
        "sleep 1000 & setsid sleep 1001 & sleep 1002",
        Duration::from_millis(500),
    );
    let out = run_spec(&pool, &id, &spec).await.expect("command runs");
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, None, "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout took {:?}",
        started.elapsed()
    );
    let left = wait_gone(&pool, &id, "sleep 100", Duration::from_secs(2)).await;
    assert!(left.is_empty(), "survived the timeout: {left:?}");

    // Dropping the call kills the command.
    let spec = shell("sleep 1003; echo never", Duration::from_secs(60));
    let dropped =
        tokio::time::timeout(Duration::from_millis(300), pool.run(&id, &spec, None)).await;
    assert!(dropped.is_err(), "the command ended by itself: {dropped:?}");
    let left = wait_gone(&pool, &id, "sleep 1003", Duration::from_secs(2)).await;
    assert!(left.is_empty(), "survived the dropped call: {left:?}");
    ping(&pool, &id).await.expect("the link is fine");

    // A release kills what is still running, and the next holder finds nothing of it.
    let runner = {
        let (pool, id) = (pool.clone(), id.clone());
        tokio::spawn(async move {
            let spec = shell("sleep 1005 & sleep 1004", Duration::from_secs(60));
            pool.run(&id, &spec, None).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    let ran = within(10, "the released command ends", runner)
        .await
        .expect("task");
    let ran = ran.expect("a command killed by the release ends with its exit");
    assert_eq!(ran.exit_code, None, "{ran:?}");
    let next = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert_eq!(next.container_id, id.container_id);
    // The same container, under its new lease.
    let id = next.lease_ref();
    let left = procs_with(&pool, &id, "sleep 100").await;
    assert!(left.is_empty(), "the next holder sees {left:?}");
    assert_eq!(verify(&pool, &id).await, Verdict::Clean);
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_operations_act_as_the_tenant() {
    let (instance, _cleanup, pool, id) = leased_sandbox("sv-files").await;

    // Write, read back, append, partial read.
    let (w, _) = file::<Written>(&pool, &id, write_req("/workspace/a.txt"), b"hello")
        .await
        .expect("write");
    assert_eq!(w.bytes, 5);
    let (d, body) = file::<FileData>(&pool, &id, read_req("/workspace/a.txt"), b"")
        .await
        .expect("read");
    assert_eq!(
        (d.size, d.truncated, body.as_slice()),
        (5, false, &b"hello"[..])
    );
    let append = FileRequest::Write {
        path: "/workspace/a.txt".into(),
        append: true,
        mode: None,
        offset: None,
        parents: false,
    };
    file::<Written>(&pool, &id, append, b" world")
        .await
        .expect("append");
    let part = FileRequest::Read {
        path: "/workspace/a.txt".into(),
        offset: 6,
        max_bytes: 3,
    };
    let (d, body) = file::<FileData>(&pool, &id, part, b"").await.expect("read");
    assert_eq!(
        (d.size, d.truncated, body.as_slice()),
        (11, true, &b"wor"[..])
    );

    // A relative path is in the workspace; a new file's mode is honoured.
    let rel = FileRequest::Write {
        path: "rel.bin".into(),
        append: false,
        mode: Some(0o600),
        offset: None,
        parents: false,
    };
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    file::<Written>(&pool, &id, rel, &binary)
        .await
        .expect("write relative");
    let (_, body) = file::<FileData>(&pool, &id, read_req("/workspace/rel.bin"), b"")
        .await
        .expect("read");
    assert!(body == binary, "binary round trip");

    // Files are the tenant's.
    let out = run_sh(
        &pool,
        &id,
        "stat -c '%n %u:%g %a' /workspace/a.txt /workspace/rel.bin",
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "/workspace/a.txt 1000:1000 644\n/workspace/rel.bin 1000:1000 600\n",
        "{out:?}"
    );

    // mkdir -p, stat, list, delete.
    let mkdir = FileRequest::Mkdir {
        path: "/workspace/d1/d2/d3".into(),
        parents: true,
    };
    file::<Done>(&pool, &id, mkdir, b"")
        .await
        .expect("mkdir -p");
    let again = FileRequest::Mkdir {
        path: "/workspace/d1".into(),
        parents: false,
    };
    assert_eq!(
        failed_code(file::<Done>(&pool, &id, again, b"").await, "mkdir existing"),
        "already_exists"
    );
    let out = run_sh(
        &pool,
        &id,
        "stat -c '%u:%g' /workspace/d1 /workspace/d1/d2 /workspace/d1/d2/d3",
    )
    .await;
    assert_eq!(text(&out.stdout), "1000:1000\n1000:1000\n1000:1000\n");
    file::<Written>(&pool, &id, write_req("/workspace/d1/d2/f"), b"x")
        .await
        .expect("write nested");
    let (st, _) = file::<FileStat>(
        &pool,
        &id,
        FileRequest::Stat {
            path: "/workspace/d1".into(),
        },
        b"",
    )
    .await
    .expect("stat");
    assert_eq!(st.kind, FileKind::Dir);
    let (st, _) = file::<FileStat>(
        &pool,
        &id,
        FileRequest::Stat {
            path: "a.txt".into(),
        },
        b"",
    )
    .await
    .expect("stat");
    assert_eq!((st.kind, st.size, st.mode), (FileKind::File, 11, 0o644));
    let (listing, _) = file::<Listing>(
        &pool,
        &id,
        FileRequest::List {
            path: "/workspace".into(),
        },
        b"",
    )
    .await
    .expect("list");
    let mut names: Vec<(String, FileKind)> = listing
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.kind))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            ("a.txt".to_string(), FileKind::File),
            ("d1".to_string(), FileKind::Dir),
            ("rel.bin".to_string(), FileKind::File),
        ]
    );
    let shallow = FileRequest::Delete {
        path: "/workspace/d1".into(),
        recursive: false,
    };
    assert_eq!(
        failed_code(
            file::<Done>(&pool, &id, shallow, b"").await,
            "delete non-empty"
        ),
        "not_empty"
    );
    let deep = FileRequest::Delete {
        path: "/workspace/d1".into(),
        recursive: true,
    };
    file::<Done>(&pool, &id, deep, b"")
        .await
        .expect("delete -r");
    let out = run_sh(&pool, &id, "ls -A /workspace").await;
    assert_eq!(text(&out.stdout), "a.txt\nrel.bin\n");

    // Errors with their codes.
    assert_eq!(
        failed_code(
            file::<FileData>(&pool, &id, read_req("/workspace/missing"), b"").await,
            "missing file"
        ),
        "not_found"
    );
    assert_eq!(
        failed_code(
            file::<FileData>(&pool, &id, read_req("/workspace"), b"").await,
            "read a directory"
        ),
        "is_directory"
    );
    assert_eq!(
        failed_code(
            file::<Written>(&pool, &id, write_req("/workspace/no/such/dir/f"), b"x").await,
            "write under a missing directory"
        ),
        "not_found"
    );

    // A file in /tmp (a tmpfs `docker cp` cannot see) is readable.
    run_sh(&pool, &id, "printf tmpdata > /tmp/t.txt").await;
    let (_, body) = file::<FileData>(&pool, &id, read_req("/tmp/t.txt"), b"")
        .await
        .expect("read /tmp");
    assert_eq!(body, b"tmpdata");

    // The tenant's symlinks lead nowhere the tenant could not go itself.
    let sup = supervisor_pid(&pool, &id).await;
    let out = run_sh(
        &pool,
        &id,
        &format!(
            "ln -s /proc/1/environ /workspace/peek && ln -s /proc/{sup}/environ /workspace/peek2 \
             && ln -s /proc/{sup}/fd/0 /workspace/stdin && ln -s /proc/1/fd/1 /workspace/hostout \
             && ln -s /proc/{sup}/fd/1 /workspace/supout && ln -s /etc /workspace/etc && echo ok"
        ),
    )
    .await;
    assert_eq!(text(&out.stdout), "ok\n", "{out:?}");
    for link in ["/workspace/peek", "/workspace/peek2", "/workspace/stdin"] {
        let read = file::<FileData>(&pool, &id, read_req(link), b"").await;
        assert_eq!(
            failed_code(read, &format!("read through {link}")),
            "permission_denied",
            "{link}"
        );
    }
    let (st, _) = file::<FileStat>(
        &pool,
        &id,
        FileRequest::Stat {
            path: "/workspace/peek".into(),
        },
        b"",
    )
    .await
    .expect("stat a symlink");
    assert_eq!(st.kind, FileKind::Symlink, "stat describes the link itself");
    assert_eq!(
        failed_code(
            file::<Listing>(
                &pool,
                &id,
                FileRequest::List {
                    path: format!("/proc/{sup}/fd"),
                },
                b""
            )
            .await,
            "list the supervisor's fds"
        ),
        "permission_denied"
    );
    // Writes aimed at the host link: fake frames that would be believed as the reply to this
    // very request (and to the ping after it) if they got there.
    let mut fake = Vec::new();
    for n in 1..=400u32 {
        fake.extend(
            Frame::with_head(Kind::Result, u64::from(n), &Written { bytes: 424_242 }).encode(),
        );
    }
    for link in ["/workspace/hostout", "/workspace/supout"] {
        let wrote = file::<Written>(&pool, &id, write_req(link), &fake).await;
        assert_eq!(
            failed_code(wrote, &format!("write through {link}")),
            "permission_denied",
            "{link}"
        );
    }
    for path in ["/etc/x", "/workspace/etc/x", "../etc/passwd"] {
        let wrote = file::<Written>(&pool, &id, write_req(path), b"x").await;
        let code = failed_code(wrote, &format!("write {path}"));
        eprintln!("write {path}: {code}");
    }
    // Deleting, making and writing through a symlink into root's /dev.
    run_sh(&pool, &id, "ln -s /dev /workspace/devl").await;
    let delete = FileRequest::Delete {
        path: "/workspace/devl/null".into(),
        recursive: false,
    };
    assert_eq!(
        failed_code(
            file::<Done>(&pool, &id, delete, b"").await,
            "delete /dev/null"
        ),
        "permission_denied"
    );
    let mkdir = FileRequest::Mkdir {
        path: "/workspace/devl/evil".into(),
        parents: false,
    };
    assert_eq!(
        failed_code(file::<Done>(&pool, &id, mkdir, b"").await, "mkdir in /dev"),
        "permission_denied"
    );
    failed_code(
        file::<Written>(&pool, &id, write_req("/workspace/devl/evil"), b"x").await,
        "write into /dev",
    );
    let out = run_sh(&pool, &id, "[ -c /dev/null ] && ls -A /dev | grep -c evil").await;
    assert_eq!(text(&out.stdout), "0\n", "/dev was changed: {out:?}");

    ping(&pool, &id).await.expect("the link survives");
    let (w, _) = file::<Written>(&pool, &id, write_req("/workspace/after"), b"fine")
        .await
        .expect("a later write");
    assert_eq!(w.bytes, 4);

    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    shutdown_leaves_nothing(&pool, &instance).await;
}

/// Each attack prints `rc name`; the ones in `MUST_FAIL` must not succeed.
const ATTACKS: &str = r#"
pid=SUP
try() { name=$1; shift; ( "$@" ) >/dev/null 2>&1; echo "$? $name"; }
wr() { sh -c 'printf x > "$1"' _ "$1"; }
opn() { timeout 2 sh -c 'exec 3<>"$1"' _ "$1"; }
try kill9 kill -9 $pid
try stop kill -STOP $pid
try kill9-init kill -9 1
try stop-init kill -STOP 1
try environ cat /proc/$pid/environ
try mem head -c1 /proc/$pid/mem
try maps cat /proc/$pid/maps
try fd-list ls /proc/$pid/fd
try fd-list-init ls /proc/1/fd
try root ls /proc/$pid/root/
try write-fd0 wr /proc/$pid/fd/0
try write-fd1 wr /proc/$pid/fd/1
try write-fd2 wr /proc/$pid/fd/2
try write-init-fd0 wr /proc/1/fd/0
try write-init-fd1 wr /proc/1/fd/1
try open-fd0 opn /proc/$pid/fd/0
try open-init-fd0 opn /proc/1/fd/0
try userns unshare -r true
try setuid-root su -c true root
"#;

const MUST_FAIL: [&str; 18] = [
    "kill9",
    "stop",
    "kill9-init",
    "stop-init",
    "environ",
    "mem",
    "maps",
    "fd-list",
    "fd-list-init",
    "root",
    "write-fd0",
    "write-fd1",
    "write-fd2",
    "write-init-fd0",
    "write-init-fd1",
    "open-fd0",
    "open-init-fd0",
    "setuid-root",
];

/// Writes the fake frames in `/workspace/.fake` into every descriptor the tenant can open,
/// and into its own stdout and stderr.
const SPRAY: &str = r#"
: > /workspace/.wrote
for f in /proc/[0-9]*/fd/* /proc/1/fd/0 /proc/1/fd/1 /proc/1/fd/2 /proc/SUP/fd/0 /proc/SUP/fd/1 /proc/SUP/fd/2 /dev/stdout /dev/stderr /dev/tty /dev/console; do
  timeout 2 sh -c 'cat /workspace/.fake > "$1"' _ "$f" 2>/dev/null && echo "$f" >> /workspace/.wrote
done
cat /workspace/.fake
cat /workspace/.fake >&2
echo
echo "=== WROTE"
cat /workspace/.wrote
echo "=== END"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_cannot_touch_the_supervisor() {
    let (instance, _cleanup, pool, id) = leased_sandbox("sv-attack").await;

    let sup = supervisor_pid(&pool, &id).await;
    let (state_before, start_before) = outside_stat(&id.container_id, sup);
    assert_ne!(state_before, "T");

    // A tenant process that would die to `kill -9 -1`, to show that it did run.
    let out = run_sh(&pool, &id, "nohup sleep 1010 >/dev/null 2>&1 & echo bg").await;
    assert_eq!(text(&out.stdout), "bg\n");

    let out = run_spec(
        &pool,
        &id,
        &shell(
            &ATTACKS.replace("SUP", &sup.to_string()),
            Duration::from_secs(60),
        ),
    )
    .await
    .expect("attacks run");
    let report = text(&out.stdout);
    eprintln!("attacks (rc name):\n{report}");
    // gVisor lets any process read another's environment and memory map and list its
    // descriptor numbers (not open them, nor read or write the memory): the environment is
    // checked for what it shows instead.
    let gvisor = gvisor_run();
    let shown_under_gvisor = ["environ", "maps", "fd-list", "fd-list-init"];
    for name in MUST_FAIL {
        let line = report
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("attack {name} did not report: {report}"));
        if gvisor && shown_under_gvisor.contains(&name) {
            continue;
        }
        assert!(!line.starts_with("0 "), "attack {name} succeeded: {report}");
    }
    if gvisor {
        let env = run_sh(
            &pool,
            &id,
            &format!("tr '\\0' '\\n' < /proc/{sup}/environ | cut -d= -f1 | sort"),
        )
        .await;
        assert_eq!(
            text(&env.stdout),
            "HOME\nHOSTNAME\nPATH\n",
            "the supervisor's environment holds nothing but these: {env:?}"
        );
    }

    // Fake frames into every descriptor the tenant can open.
    let fake = fake_frame_mix(1..=50);
    let mut spec = shell("cat > /workspace/.fake", Duration::from_secs(20));
    spec.stdin = fake.clone();
    run_spec(&pool, &id, &spec).await.expect("fake written");
    let out = run_spec(
        &pool,
        &id,
        &shell(
            &SPRAY.replace("SUP", &sup.to_string()),
            Duration::from_secs(120),
        ),
    )
    .await
    .expect("spray runs");
    let stdout = text(&out.stdout);
    let wrote: Vec<&str> = stdout
        .rsplit_once("=== WROTE\n")
        .and_then(|(_, rest)| rest.split_once("=== END"))
        .map(|(list, _)| list.lines().collect())
        .unwrap_or_else(|| panic!("the spray did not finish: {out:?}"));
    eprintln!("the spray could write into: {wrote:?}");
    for path in &wrote {
        assert!(
            !path.starts_with(&format!("/proc/{sup}/"))
                && !path.starts_with("/proc/1/")
                && *path != "/dev/console"
                && *path != "/dev/tty",
            "the tenant wrote into {path}: {wrote:?}"
        );
    }
    // What it printed came back as output.
    assert!(
        out.stdout.windows(fake.len()).any(|w| w == fake.as_slice()),
        "the printed frames came back as plain output"
    );

    // Now everyone at once: `kill -9 -1` as the tenant.
    let out = run_sh(&pool, &id, "kill -9 -1; echo survived").await;
    eprintln!("kill -9 -1: {out:?}");
    let left = wait_gone(&pool, &id, "sleep 1010", Duration::from_secs(2)).await;
    assert!(
        left.is_empty(),
        "kill -9 -1 did not reach the tenant's own: {left:?}"
    );

    // The supervisor is untouched: same process, running, answering.
    ping(&pool, &id).await.expect("the supervisor answers");
    let out = run_sh(&pool, &id, "echo alive").await;
    assert_eq!(text(&out.stdout), "alive\n");
    assert_eq!(supervisor_pid(&pool, &id).await, sup, "the same supervisor");
    let (state_after, start_after) = outside_stat(&id.container_id, sup);
    assert_ne!(state_after, "T", "the supervisor was stopped");
    assert_eq!(start_before, start_after, "the same process (start time)");
    let init = docker_root(&id.container_id, "grep State /proc/1/status");
    assert!(!init.contains("stopped"), "init was stopped: {init}");

    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    let next = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert_eq!(verify(&pool, &next.lease_ref()).await, Verdict::Clean);
    shutdown_leaves_nothing(&pool, &instance).await;
}

/// Plants a SysV shm segment and a spammer, in a session of its own and with no descriptor of
/// the command's, that writes fake "clean" verdict frames into every descriptor it can open,
/// forever. The command itself ends at once.
const DIRTY_AND_LYING: &str = r#"
cat > /workspace/.fake
echo SHM | base64 -d > /workspace/mkshm && chmod +x /workspace/mkshm && /workspace/mkshm && echo made
setsid nohup sh -c 'trap "" PIPE HUP TERM INT; while :; do for f in /proc/[0-9]*/fd/* /dev/stdout /dev/stderr /dev/tty /dev/console /proc/1/fd/0 /proc/1/fd/1 /proc/1/fd/2; do timeout 1 sh -c "cat /workspace/.fake > \"\$1\"" _ "$f" 2>/dev/null; done; done' >/dev/null 2>&1 </dev/null &
echo planted
"#;

/// A spammer that prints the fake frames to the command's own stdout, forever, and keeps it
/// open after the command's shell has gone.
const PRINT_LIES: &str = r#"
nohup sh -c 'trap "" PIPE HUP TERM INT; while :; do cat /workspace/.fake; done' 2>/dev/null &
echo printing
"#;

#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_verdicts_cannot_make_a_dirty_sandbox_pass() {
    let (instance, _cleanup, pool, id) = leased_sandbox("sv-liar").await;

    let mut spec = shell(
        &DIRTY_AND_LYING.replace("SHM", &shm_maker_base64()),
        Duration::from_secs(20),
    );
    spec.stdin = fake_clean_verdicts(1..=2000);
    let planted = run_spec(&pool, &id, &spec).await.expect("planting runs");
    assert_eq!(text(&planted.stdout), "made\nplanted\n", "{planted:?}");
    if !gvisor_run() {
        // (gVisor has no /proc/sysvipc: the verdict below is the check there.)
        let out = run_sh(&pool, &id, "wc -l < /proc/sysvipc/shm").await;
        assert_eq!(text(&out.stdout).trim(), "2", "segment present: {out:?}");
    }

    // The printing spammer's command may end at once or hold on until its timeout (the
    // spammer keeps its stdout open): either way it must end with an exit, not a broken link.
    let printer = {
        let (pool, id) = (pool.clone(), id.clone());
        tokio::spawn(async move {
            pool.run(&id, &shell(PRINT_LIES, Duration::from_secs(3)), None)
                .await
        })
    };
    let printed = within(30, "printing spammer", printer)
        .await
        .expect("task")
        .expect("the printing command ends with an exit");
    assert!(printed.stdout.starts_with(b"printing\n") || printed.stdout.len() > 1000);
    eprintln!(
        "printing spammer: {} bytes, timed out: {}",
        printed.stdout.len(),
        printed.timed_out
    );
    let spammers = procs_with(&pool, &id, "trap \"\" PIPE HUP TERM INT").await;
    eprintln!("spammers alive before release: {spammers:?}");
    assert!(!spammers.is_empty(), "the detached spammer runs");
    ping(&pool, &id)
        .await
        .expect("the link survives the spammers");
    tokio::time::sleep(Duration::from_secs(1)).await;

    match recycle(&pool, &id).await {
        RecycleOutcome::Destroyed(reason) => {
            assert!(
                reason.contains("ipc"),
                "destroyed, but not for ipc: {reason}"
            )
        }
        RecycleOutcome::Recycled => panic!("a sandbox holding an shm segment was recycled"),
    }
    wait_removed(&instance, &id.container_id, 10).await;

    let next = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert_ne!(next.container_id, id.container_id);
    assert_eq!(verify(&pool, &next.lease_ref()).await, Verdict::Clean);
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_against_the_pids_limit_is_scrubbed() {
    let instance = unique_instance("sv-bomb");
    let cleanup = Cleanup::new(&instance);
    let mut config = small_config(&instance, 1, 1);
    // Under gVisor its own ~50 threads count too.
    config.pool.pids_limit = if gvisor_run() { 160 } else { 64 };
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let id = lease.lease_ref();

    // Written and made executable first, so that no fork of the launch itself races the bomb.
    let script = format!(
        "echo {} | base64 -d > /workspace/bomb && chmod +x /workspace/bomb \
         && {{ /workspace/bomb >/dev/null 2>&1 </dev/null & }} && echo started",
        fork_bomb_base64()
    );
    let launched = run_spec(&pool, &id, &shell(&script, Duration::from_secs(20))).await;
    if gvisor_run() && (launched.is_err() || ping(&pool, &id).await.is_err()) {
        return sandbox_died_and_was_replaced(&pool, &instance, &id).await;
    }
    let out = launched.expect("bomb launched");
    assert!(text(&out.stdout).contains("started"), "{out:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    if gvisor_run() && ping(&pool, &id).await.is_err() {
        return sandbox_died_and_was_replaced(&pool, &instance, &id).await;
    }

    match host_pids_current(&id.container_id) {
        Some(n) => {
            eprintln!("pids.current during the bomb: {n}");
            let limit = config.pool.pids_limit as u64;
            assert!(
                n >= limit * 7 / 8,
                "the bomb did not reach the pids limit: {n}"
            );
        }
        None => eprintln!("the host's cgroup tree has no pids.current for {id}; going on"),
    }
    // The supervisor answers during the bomb; a command may not be able to start, but that
    // is a plain failure, not a dead link.
    ping(&pool, &id)
        .await
        .expect("the supervisor answers during the bomb");
    match run_spec(
        &pool,
        &id,
        &shell(
            "cat /sys/fs/cgroup/pids/pids.current",
            Duration::from_secs(5),
        ),
    )
    .await
    {
        Ok(out) => eprintln!("a command during the bomb: {out:?}"),
        Err(PoolError::Supervisor(e)) if !e.is_fatal() => {
            eprintln!("a command during the bomb failed as it may: {e}")
        }
        Err(e) => panic!("a command during the bomb broke the sandbox: {e}"),
    }

    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    let next = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert_eq!(
        next.container_id, id.container_id,
        "one container: the same one comes back"
    );
    // The same container, under its new lease.
    let id = next.lease_ref();
    assert_eq!(verify(&pool, &id).await, Verdict::Clean);
    ping(&pool, &id).await.expect("ping");
    assert_only_init_supervisor_and_probe(&pool, &id).await;
    eprintln!(
        "pids.current after the scrub: {:?}",
        host_pids_current(&id.container_id)
    );
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_memory_kills_the_tenant_not_the_supervisor() {
    let instance = unique_instance("sv-oom");
    let cleanup = Cleanup::new(&instance);
    let mut config = small_config(&instance, 1, 1);
    config.pool.memory_bytes = 64 << 20;
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let id = lease.lease_ref();
    let sup = supervisor_pid(&pool, &id).await;

    // busybox tail keeps everything of a file with no newline.
    let hog = run_spec(
        &pool,
        &id,
        &argv(&["tail", "/dev/zero"], Duration::from_secs(60)),
    )
    .await;
    if gvisor_run() && hog.is_err() {
        return sandbox_died_and_was_replaced(&pool, &instance, &id).await;
    }
    let out = hog.expect("the command ends with an exit");
    assert!(!out.timed_out, "{out:?}");
    assert!(
        out.signal == Some(9) || out.exit_code == Some(137),
        "the memory hog was not killed by the OOM killer: {out:?}"
    );
    // The sandbox lives on: the OOM killer took a tenant process, not the container. (Docker
    // reports an `oom` event for the container all the same.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        pool.lost_leases().is_empty(),
        "the pool declared the sandbox lost after a tenant process was OOM-killed"
    );
    // In a pipeline, with three processes mapping busybox, the cgroup can also thrash at its
    // limit (file pages evicted and read back) long enough for the command's deadline to
    // come first; then the supervisor kills it. Either way the tenant dies and the
    // supervisor lives, which is what this checks (seen on a loaded machine).
    let piped = run_spec(
        &pool,
        &id,
        &shell(
            "head -c 200000000 /dev/zero | tail; echo rc=$?",
            Duration::from_secs(30),
        ),
    )
    .await;
    if gvisor_run() && piped.is_err() {
        return sandbox_died_and_was_replaced(&pool, &instance, &id).await;
    }
    let out = piped.expect("the command ends with an exit");
    let oom_killed = text(&out.stdout).contains("rc=137");
    let deadline_killed = out.timed_out && out.signal == Some(9);
    assert!(
        oom_killed || deadline_killed,
        "tail in a pipeline was killed: {out:?}"
    );

    ping(&pool, &id).await.expect("the supervisor survived");
    assert_eq!(supervisor_pid(&pool, &id).await, sup, "the same supervisor");
    let out = run_sh(&pool, &id, "echo ok").await;
    assert_eq!(text(&out.stdout), "ok\n");

    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    let next = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert_eq!(next.container_id, id.container_id);
    // The same container, under its new lease.
    let id = next.lease_ref();
    assert_eq!(verify(&pool, &id).await, Verdict::Clean);
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_tmpfs_past_the_memory_limit_never_yields_a_dirty_sandbox() {
    let instance = unique_instance("sv-tmpfs");
    let cleanup = Cleanup::new(&instance);
    let mut config = small_config(&instance, 1, 2);
    config.pool.memory_bytes = 64 << 20;
    config.pool.tmpfs_bytes = 48 << 20;
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let id = lease.lease_ref();

    // tmpfs pages are charged to the sandbox's memory and cannot be reclaimed without swap:
    // 48 + 48 + 48 + 64 MiB of tmpfs against a 64 MiB limit.
    let filled = within(
        90,
        "filling tmpfs",
        pool.run(
            &id,
            &shell(
                "for d in /workspace /tmp /home/sandbox /dev/shm; do head -c 70000000 /dev/zero > $d/fill; done; echo done",
                Duration::from_secs(60),
            ),
            None,
        ),
    )
    .await;
    eprintln!("filling: {filled:?}");
    let alive = ping(&pool, &id).await;
    eprintln!("ping after filling: {alive:?}");
    let running = docker(&[
        "inspect",
        "--format",
        "{{.State.Running}} {{.State.OOMKilled}}",
        &id.container_id,
    ]);
    let procs = std::process::Command::new("docker")
        .args(["top", &id.container_id])
        .output()
        .map(|o| text(&o.stdout) + &text(&o.stderr))
        .unwrap_or_default();
    eprintln!("after filling, running/oom-killed: {running}; processes:\n{procs}");
    match recycle(&pool, &id).await {
        RecycleOutcome::Recycled => {
            assert!(
                alive.is_ok(),
                "recycled though its supervisor did not answer"
            );
            let next = within(30, "acquire", pool.acquire())
                .await
                .expect("acquire");
            if next.container_id == id.container_id {
                let id = next.lease_ref();
                let out = run_sh(&pool, &id, "ls -A /workspace /tmp /home/sandbox /dev/shm").await;
                assert!(!text(&out.stdout).contains("fill"), "{out:?}");
            }
            assert_eq!(verify(&pool, &next.lease_ref()).await, Verdict::Clean);
        }
        RecycleOutcome::Destroyed(reason) => {
            eprintln!("destroyed: {reason}");
            wait_removed(&instance, &id.container_id, 10).await;
            let next = within(30, "acquire", pool.acquire())
                .await
                .expect("acquire");
            assert_ne!(next.container_id, id.container_id);
            assert_eq!(verify(&pool, &next.lease_ref()).await, Verdict::Clean);
        }
    }
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_that_dies_or_hangs_makes_its_container_dead() {
    let instance = unique_instance("sv-dead");
    let cleanup = Cleanup::new(&instance);
    let mut config = small_config(&instance, 1, 2);
    config.pool.scrub_timeout = Duration::from_millis(2000);
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let mut lost = pool.watch_lost();

    // (a) Killed: tini exits with its child, the container stops, the holder hears of it.
    let first = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let a = first.lease_ref();
    let sup = supervisor_pid(&pool, &a).await;
    docker_root_unchecked(&a.container_id, &format!("kill -9 {sup}"));
    within(10, "lease lost", async {
        while !pool.lost_leases().contains(&a) {
            lost.changed().await.expect("the pool is alive");
        }
    })
    .await;
    let running = within(20, "container stops", async {
        loop {
            let r = docker(&["inspect", "--format", "{{.State.Running}}", &a.container_id]);
            if r == "false" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(running, "false");
    match within(
        30,
        "run on a dead sandbox",
        pool.run(&a, &shell("true", Duration::from_secs(5)), None),
    )
    .await
    {
        Err(PoolError::Supervisor(e)) => assert!(e.is_fatal(), "{e:?}"),
        other => panic!("a command ran in a dead sandbox: {other:?}"),
    }
    match recycle(&pool, &a).await {
        RecycleOutcome::Destroyed(_) => {}
        other => panic!("a dead sandbox was recycled: {other:?}"),
    }
    wait_removed(&instance, &a.container_id, 10).await;

    // (b) Hung: a stopped supervisor cannot answer the scrub within its bound.
    let second = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let b = second.lease_ref();
    assert_ne!(b, a);
    assert_eq!(verify(&pool, &b).await, Verdict::Clean);
    let sup = supervisor_pid(&pool, &b).await;
    docker_root(&b.container_id, &format!("kill -STOP {sup}"));
    let started = Instant::now();
    match recycle(&pool, &b).await {
        RecycleOutcome::Destroyed(reason) => {
            assert!(reason.contains("scrub"), "{reason}")
        }
        other => panic!("a hung sandbox was recycled: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the release took {:?}",
        started.elapsed()
    );
    wait_removed(&instance, &b.container_id, 10).await;

    // The pool refills; the next lease is another, clean container.
    let third = within(60, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert!(third.container_id != a.container_id && third.container_id != b.container_id);
    assert_eq!(verify(&pool, &third.lease_ref()).await, Verdict::Clean);
    ping(&pool, &third.lease_ref()).await.expect("ping");
    assert_eq!(
        recycle(&pool, &third.lease_ref()).await,
        RecycleOutcome::Recycled
    );
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cycle_makes_no_docker_call() {
    let instance = unique_instance("sv-nocall");
    let cleanup = Cleanup::new(&instance);
    let mut config = small_config(&instance, 1, 2);
    // No periodic reconcile, and two idle containers for a refill target of one, so that no
    // acquire starts a create.
    config.pool.reconcile_interval = Duration::from_millis(600_000);
    config.pool.max_idle = 2;
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let (a, b) = (
        within(30, "acquire", pool.acquire()).await.unwrap(),
        within(30, "acquire", pool.acquire()).await.unwrap(),
    );
    for l in [&a, &b] {
        assert_eq!(
            recycle(&pool, &l.lease_ref()).await,
            RecycleOutcome::Recycled
        );
    }
    assert!(pool.wait_idle(2, Duration::from_secs(60)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = pool.status().gate.calls_total;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let id = lease.lease_ref();
    let out = run_sh(&pool, &id, "echo hi; echo err >&2").await;
    assert_eq!(text(&out.stdout), "hi\n");
    file::<Written>(&pool, &id, write_req("/workspace/n.txt"), b"note")
        .await
        .expect("write");
    let (_, body) = file::<FileData>(&pool, &id, read_req("/workspace/n.txt"), b"")
        .await
        .expect("read");
    assert_eq!(body, b"note");
    ping(&pool, &id).await.expect("ping");
    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    let again = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let after = pool.status().gate.calls_total;
    assert_eq!(
        before, after,
        "a session cycle (acquire, run, file, release, acquire) called Docker"
    );
    drop(again);
    shutdown_leaves_nothing(&pool, &instance).await;
}

/// Symlinks, odd names, locked directories and special files in every writable path, aimed
/// at the scrub (which runs as root): it must empty the writable paths without following
/// anything out of them.
const BOOBY_TRAPS: &str = r#"
for d in /workspace /tmp /home/sandbox /dev/shm; do
  ln -s /dev "$d/devlink"
  ln -s /dev/null "$d/nulllink"
  ln -s /proc/1 "$d/initlink"
  ln -s / "$d/rootlink"
  mkdir -p "$d/locked/inner" && echo x > "$d/locked/inner/f" && chmod 000 "$d/locked/inner" "$d/locked"
  touch "$d/-rf" "$d/with
newline" "$d/ spaced "
  mkfifo "$d/fifo"
done
ln -s /workspace /tmp/wslink
ln -s /home/sandbox /workspace/homelink
p=/workspace/deep; i=0; while [ $i -lt 100 ]; do p=$p/d; i=$((i+1)); done; mkdir -p "$p" && echo deep > "$p/f"
ls /dev | wc -l
"#;

/// What `/dev` holds: names, and the kind and device numbers of the usual devices.
const DEV_VIEW: &str = "ls -A /dev; stat -c '%n %F %t:%T' /dev/null /dev/zero /dev/full /dev/random /dev/urandom 2>&1; true";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_does_not_follow_tenant_symlinks_out_of_the_writable_paths() {
    let instance = unique_instance("sv-traps");
    let cleanup = Cleanup::new(&instance);
    let config = small_config(&instance, 1, 1);
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let id = lease.lease_ref();
    let dev_before = docker_root(&id.container_id, DEV_VIEW);

    let out = run_sh(&pool, &id, BOOBY_TRAPS).await;
    assert_eq!(out.exit_code, Some(0), "{out:?}");

    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    let next = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert_eq!(next.container_id, id.container_id);
    // The same container, under its new lease.
    let id = next.lease_ref();
    let out = run_sh(
        &pool,
        &id,
        "ls -A /workspace /tmp /home/sandbox /dev/shm /dev/mqueue; [ -c /dev/null ] && echo null-ok; \
         stat -c '%a %u' /workspace /tmp /home/sandbox /dev/shm",
    )
    .await;
    let seen = text(&out.stdout);
    for leftover in ["link", "locked", "fifo", "-rf", "spaced", "newline", "deep"] {
        assert!(!seen.contains(leftover), "{leftover:?} survived:\n{seen}");
    }
    assert!(seen.contains("null-ok"), "/dev/null is gone:\n{seen}");
    assert!(
        seen.contains("755 1000\n1777 1000\n755 1000\n1777 0"),
        "modes and owners restored:\n{seen}"
    );
    let dev_after = docker_root(&id.container_id, DEV_VIEW);
    assert_eq!(dev_before, dev_after, "/dev changed under the scrub");
    assert_eq!(verify(&pool, &id).await, Verdict::Clean);
    shutdown_leaves_nothing(&pool, &instance).await;
}

/// The tenant-owned roots: the scrub empties them and keeps the directories themselves.
const TENANT_ROOTS: [&str; 3] = ["/workspace", "/tmp", "/home/sandbox"];

/// Uploads the xattr tool into `/workspace` and runs it as the tenant with `mode` (it unlinks
/// itself first); returns its lines.
#[cfg(target_arch = "x86_64")]
async fn xattr_tool(pool: &ContainerPool, id: &LeaseRef, tool: &str, mode: &str) -> String {
    let script = format!(
        "echo {tool} | base64 -d > /workspace/xa && chmod +x /workspace/xa && /workspace/xa {mode}"
    );
    let out = run_sh(pool, id, &script).await;
    assert_eq!(out.exit_code, Some(0), "xa {mode}: {out:?}");
    text(&out.stdout)
}

/// `<root> <mode> <owner uid> <atime> <mtime>` for each tenant root, as the tenant sees them.
/// `stat` reads no directory, so it moves no atime.
async fn root_times(pool: &ContainerPool, id: &LeaseRef) -> String {
    let out = run_sh(
        pool,
        id,
        &format!("stat -c '%n %a %u %X %Y' {}", TENANT_ROOTS.join(" ")),
    )
    .await;
    assert_eq!(out.exit_code, Some(0), "stat: {out:?}");
    text(&out.stdout)
}

/// A tenant marks its roots with `user.*` xattrs (kept by tmpfs since Linux 6.6), a POSIX
/// access and default ACL and chosen times; the verification calls that dirty, and after the
/// scrub the next tenant of the same container finds no xattr, no ACL, the modes restored and
/// both times at the epoch.
#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_removes_xattrs_acls_and_times_from_the_tenant_roots() {
    let instance = unique_instance("sv-xattr");
    let cleanup = Cleanup::new(&instance);
    let config = small_config(&instance, 1, 1);
    let pool = within(90, "warm pool", warm_pool(&config, &cleanup)).await;
    let lease = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    let id = lease.lease_ref();
    let tool = xattr_tool_base64();

    let marked = xattr_tool(&pool, &id, &tool, "set").await;
    eprintln!("the tenant marks its roots:\n{marked}");
    let lines: Vec<&str> = marked.lines().collect();
    let has = |line: String| lines.contains(&line.as_str());
    for root in TENANT_ROOTS {
        for name in ["user.leak", "user.note"] {
            assert!(
                has(format!("set {root} {name} 0")),
                "{name} on {root}:\n{marked}"
            );
            assert!(
                marked.contains(&format!("xattr {root} {name} ")),
                "{name} not listed on {root}:\n{marked}"
            );
        }
        assert!(
            has(format!("times {root} - 0")),
            "times of {root}:\n{marked}"
        );
    }
    // A tmpfs built without CONFIG_TMPFS_POSIX_ACL refuses ACLs with EOPNOTSUPP (-95): then
    // the ACL part is skipped, and only that refusal is checked.
    let acls = if has("acl /workspace system.posix_acl_access 0".into()) {
        for root in TENANT_ROOTS {
            for name in ["system.posix_acl_access", "system.posix_acl_default"] {
                assert!(
                    has(format!("acl {root} {name} 0")),
                    "{name} on {root}:\n{marked}"
                );
                assert!(
                    has(format!("xattr {root} {name} 44")),
                    "{name} listed:\n{marked}"
                );
            }
        }
        true
    } else {
        assert!(
            has("acl /workspace system.posix_acl_access -95".into()),
            "an ACL neither kept nor refused as unsupported:\n{marked}"
        );
        eprintln!("this kernel's tmpfs refuses POSIX ACLs: that part is skipped");
        false
    };
    let before = root_times(&pool, &id).await;
    let roots_and_times: Vec<(&str, &str, &str)> = before
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], f[3], f[4])
        })
        .collect();
    assert_eq!(
        roots_and_times,
        TENANT_ROOTS.map(|r| (r, "111111111", "222222222")),
        "the tenant's times:\n{before}"
    );

    // The tool unlinked itself, so only the marks are left, and they alone make it dirty.
    let Verdict::Dirty(found) = verify(&pool, &id).await else {
        panic!("xattrs on the tenant's roots passed the verification");
    };
    eprintln!("verification before the scrub: {found}");
    for root in TENANT_ROOTS {
        for name in ["user.leak", "user.note"] {
            let finding = format!("xattr:{root}:{name}");
            assert!(found.contains(&finding), "{finding} not reported: {found}");
        }
        if acls {
            let finding = format!("xattr:{root}:system.posix_acl_access");
            assert!(found.contains(&finding), "{finding} not reported: {found}");
        }
    }

    assert_eq!(recycle(&pool, &id).await, RecycleOutcome::Recycled);
    let next = within(30, "acquire", pool.acquire())
        .await
        .expect("acquire");
    assert_eq!(
        next.container_id, id.container_id,
        "one container: the same one comes back"
    );
    // The same container, under its new lease.
    let id = next.lease_ref();

    // Times first: the next command's upload moves the mtime of /workspace.
    let after = root_times(&pool, &id).await;
    assert_eq!(
        after, "/workspace 755 1000 0 0\n/tmp 1777 1000 0 0\n/home/sandbox 755 1000 0 0\n",
        "modes, owners and times (atime, mtime at the epoch) restored"
    );
    let listed = xattr_tool(&pool, &id, &tool, "list").await;
    assert_eq!(
        listed, "list /workspace - 0\nlist /tmp - 0\nlist /home/sandbox - 0\n",
        "the next tenant sees xattrs of the last one"
    );
    assert_eq!(verify(&pool, &id).await, Verdict::Clean);
    shutdown_leaves_nothing(&pool, &instance).await;
}
