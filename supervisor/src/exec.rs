//! Running commands: the registry of running `Exec`s (ids, the 64-command limit, `Kill` and
//! `Credit` delivery from the main thread) and each command's own thread, a poll(2) loop
//! over its stdin/stdout/stderr pipes, its pidfd and a wake eventfd. The thread streams
//! output within the credit window, enforces the timeout, kills the tree on request, drains
//! the pipes after the child exits, reaps it and sends `Exit`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::panic::AssertUnwindSafe;
use std::process::Child;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sandpool_supervisor::proto::{self, ExecRequest, ExitStatus, Frame, Kind, RequestId, Started};

use crate::spawn::Plan;
use crate::{Ctx, sys};

/// Commands that may run at once; one more gets `busy`.
pub const MAX_COMMANDS: usize = 64;
/// How long output is still collected after the child exited while something else (a
/// background `sleep 100 &`) holds its pipes open.
const DRAIN: Duration = Duration::from_millis(100);
/// How long past the exit the drain may wait for `Credit` at most: the host waits for `Exit`
/// only a few seconds past the timeout, and a healthy host grants credit within moments.
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// Stack of a command's thread: it only polls and copies 32 KiB chunks.
const STACK: usize = 256 << 10;

/// What the main thread tells a command's thread.
#[derive(Default)]
struct Orders {
    credit: i64,
    kill: bool,
}

/// The main thread's handle on one running command.
pub struct Control {
    orders: Mutex<Orders>,
    wake: OwnedFd,
}

impl Control {
    fn new() -> std::io::Result<Control> {
        Ok(Control {
            orders: Mutex::new(Orders::default()),
            wake: sys::eventfd()?,
        })
    }

    fn orders(&self) -> std::sync::MutexGuard<'_, Orders> {
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn credit(&self, bytes: u32) {
        let mut orders = self.orders();
        orders.credit = orders.credit.saturating_add(i64::from(bytes));
        drop(orders);
        sys::eventfd_signal(&self.wake);
    }

    pub fn kill(&self) {
        self.orders().kill = true;
        sys::eventfd_signal(&self.wake);
    }

    /// Takes the credit granted since the last call, and whether a kill was ordered.
    fn take(&self) -> (i64, bool) {
        let mut orders = self.orders();
        let credit = std::mem::take(&mut orders.credit);
        (credit, orders.kill)
    }
}

/// The running commands by request id.
#[derive(Default)]
pub struct Registry {
    running: Mutex<HashMap<RequestId, Arc<Control>>>,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Arc<Control>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn kill(&self, id: RequestId) {
        if let Some(control) = self.map().get(&id) {
            control.kill();
        }
    }

    pub fn credit(&self, id: RequestId, bytes: u32) {
        if let Some(control) = self.map().get(&id) {
            control.credit(bytes);
        }
    }

    /// Orders every running command killed and forgets them all (for `Scrub`); their threads
    /// still reap their children and send their `Exit`.
    pub fn kill_and_forget_all(&self) {
        for (_, control) in self.map().drain() {
            control.kill();
        }
    }

    /// Forgets `id` if it is still this command (a `Scrub` may have forgotten it and a new
    /// command may have taken the id since).
    fn forget(&self, id: RequestId, control: &Arc<Control>) {
        let mut map = self.map();
        if map.get(&id).is_some_and(|c| Arc::ptr_eq(c, control)) {
            map.remove(&id);
        }
    }
}

/// Handles an `Exec` frame on the main thread: checks it, registers it and starts its thread.
pub fn start(ctx: &Arc<Ctx>, frame: Frame) {
    let id = frame.id;
    let req: ExecRequest = match frame.head() {
        Ok(req) => req,
        Err(e) => {
            return ctx
                .out
                .error(id, "bad_request", format!("bad exec head: {e}"));
        }
    };
    let plan = match Plan::new(&req) {
        Ok(plan) => plan,
        Err(why) => return ctx.out.error(id, "bad_request", why),
    };
    let control = {
        let mut map = ctx.execs.map();
        if map.contains_key(&id) {
            drop(map);
            return ctx
                .out
                .error(id, "bad_request", format!("command {id} is running"));
        }
        if map.len() >= MAX_COMMANDS {
            drop(map);
            let why = format!("{MAX_COMMANDS} commands are running");
            return ctx.out.error(id, "busy", why);
        }
        match Control::new() {
            Ok(control) => {
                let control = Arc::new(control);
                map.insert(id, Arc::clone(&control));
                control
            }
            Err(e) => {
                drop(map);
                return ctx.out.error(id, "io", format!("eventfd: {e}"));
            }
        }
    };
    let body = frame.body;
    let (thread_ctx, thread_control) = (Arc::clone(ctx), Arc::clone(&control));
    let spawned = std::thread::Builder::new()
        .name(format!("exec-{id}"))
        .stack_size(STACK)
        .spawn(move || {
            let (ctx, control) = (thread_ctx, thread_control);
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                // The checkpoint comes first: nothing of the command is in it.
                let taken = req
                    .checkpoint
                    .as_ref()
                    .map(|c| crate::checkpoint::take_for_exec(&ctx, c));
                let mut status = run(&ctx, id, plan, &req, body, &control)?;
                if let (Some(spec), Some(taken)) = (&req.checkpoint, taken) {
                    status.checkpoint = Some(crate::checkpoint::after_exec(&ctx, spec, taken));
                }
                Ok(status)
            }));
            ctx.execs.forget(id, &control);
            match outcome {
                Ok(Ok(status)) => ctx.out.send(&Frame::with_head(Kind::Exit, id, &status)),
                Ok(Err((code, message))) => ctx.out.error(id, code, message),
                Err(_) => ctx
                    .out
                    .error(id, "io", "internal error running the command"),
            }
        });
    if let Err(e) = spawned {
        ctx.execs.forget(id, &control);
        ctx.out
            .error(id, "busy", format!("cannot start a thread: {e}"));
    }
}

/// A pipe the loop reads from.
struct Source {
    fd: Option<OwnedFd>,
    kind: Kind,
}

/// Spawns the command and runs it to its end: the `Exit` status, or an error code and message.
fn run(
    ctx: &Ctx,
    id: RequestId,
    plan: Plan,
    req: &ExecRequest,
    stdin_data: Vec<u8>,
    control: &Control,
) -> Result<ExitStatus, (&'static str, String)> {
    let started = Instant::now();
    let mut child = plan.spawn(ctx.tenant).map_err(|e| {
        let program = req.argv.first().map_or("", String::as_str);
        spawn_error(program, &e)
    })?;
    let pid = child.id() as i32;
    // Not reaped until the end of this function, so the pid cannot be reused meanwhile.
    let pidfd = match sys::exit_fd(pid) {
        Ok(fd) => fd,
        Err(e) => {
            crate::procs::kill_tree(pid);
            let _ = child.wait();
            return Err(("internal", format!("watching the command's exit: {e}")));
        }
    };
    ctx.out
        .send(&Frame::with_head(Kind::Started, id, &Started { pid }));

    let mut stdin: Option<OwnedFd> = child.stdin.take().map(OwnedFd::from);
    let mut sources = [
        Source {
            fd: child.stdout.take().map(OwnedFd::from),
            kind: Kind::Stdout,
        },
        Source {
            fd: child.stderr.take().map(OwnedFd::from),
            kind: Kind::Stderr,
        },
    ];
    for fd in stdin
        .iter()
        .chain(sources.iter().filter_map(|s| s.fd.as_ref()))
    {
        if let Err(e) = sys::set_nonblocking(fd.as_raw_fd()) {
            eprintln!("sandpool-supervisor: exec {id}: O_NONBLOCK: {e}");
        }
    }
    if stdin_data.is_empty() {
        stdin = None;
    }
    let mut stdin_at = 0usize;

    let deadline = started.checked_add(Duration::from_millis(req.timeout_ms));
    let mut window = i64::from(req.window);
    let (mut killed, mut timed_out) = (false, false);
    // Set when the child has exited: until when the pipes may still be drained at all (a host
    // that stops granting credit must still get its `Exit` before it gives up on us).
    let mut drain_until: Option<Instant> = None;
    // Drain time left after the exit; it only runs while the window lets us read.
    let mut drain_left = DRAIN;
    let mut stop = false;
    let mut buf = vec![0u8; proto::MAX_CHUNK_BYTES];

    loop {
        let (credit, kill) = control.take();
        window = window.saturating_add(credit);
        let now = Instant::now();
        if kill && !killed && !timed_out {
            // After the exit this still kills what is left of its process group, and ends
            // the drain.
            crate::procs::kill_tree(pid);
            killed = drain_until.is_none();
            stop |= drain_until.is_some();
        }
        if deadline.is_some_and(|d| now >= d) && drain_until.is_none() && !killed && !timed_out {
            crate::procs::kill_tree(pid);
            timed_out = true;
        }
        let open = sources.iter().any(|s| s.fd.is_some());
        if let Some(until) = drain_until
            && (stop || !open || drain_left.is_zero() || now >= until)
        {
            break;
        }

        let mut fds = Vec::with_capacity(5);
        fds.push(pollfd(control.wake.as_raw_fd(), libc::POLLIN));
        if drain_until.is_none() {
            fds.push(pollfd(pidfd.as_raw_fd(), libc::POLLIN));
        }
        if let Some(fd) = &stdin {
            fds.push(pollfd(fd.as_raw_fd(), libc::POLLOUT));
        }
        if window > 0 {
            for fd in sources.iter().filter_map(|s| s.fd.as_ref()) {
                fds.push(pollfd(fd.as_raw_fd(), libc::POLLIN));
            }
        }
        let draining = drain_until.is_some() && window > 0;
        let timeout = match (drain_until, deadline) {
            (Some(until), _) => {
                let left = until.saturating_duration_since(now);
                Some(if draining { left.min(drain_left) } else { left })
            }
            (None, Some(d)) if !killed && !timed_out => Some(d.saturating_duration_since(now)),
            (None, _) => None,
        };
        let before = Instant::now();
        if let Err(e) = sys::poll(&mut fds, timeout) {
            // Cannot happen with valid descriptors; still, leave nothing running or unreaped.
            crate::procs::kill_tree(pid);
            let _ = wait(&mut child);
            return Err(("io", format!("poll: {e}")));
        }
        if draining {
            drain_left = drain_left.saturating_sub(before.elapsed());
        }

        for pfd in &fds {
            if pfd.revents == 0 {
                continue;
            }
            let fd = pfd.fd;
            if fd == control.wake.as_raw_fd() {
                sys::eventfd_clear(&control.wake);
            } else if fd == pidfd.as_raw_fd() {
                drain_until = Some(Instant::now() + DRAIN_WAIT);
                // Killed on the host's order: nobody wants the rest of its output.
                stop |= killed;
                // Nothing reads the rest of the stdin now (a background process might, but
                // it is not the command any more).
                stdin = None;
            } else if stdin.as_ref().is_some_and(|s| s.as_raw_fd() == fd) {
                match sys::write(fd, &stdin_data[stdin_at..]) {
                    Ok(n) => stdin_at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // EPIPE: the command does not read its stdin; that is its business.
                    Err(_) => stdin_at = stdin_data.len(),
                }
                if stdin_at >= stdin_data.len() {
                    stdin = None;
                }
            } else if let Some(source) = sources
                .iter_mut()
                .find(|s| s.fd.as_ref().is_some_and(|f| f.as_raw_fd() == fd))
            {
                // Never more than the window: the host's buffer is what the window measures.
                let room = (window.min(buf.len() as i64)).max(0) as usize;
                if room == 0 {
                    continue;
                }
                match sys::read(fd, &mut buf[..room]) {
                    Ok(0) => source.fd = None,
                    Ok(n) => {
                        window -= n as i64;
                        ctx.out
                            .send(&Frame::new(source.kind, id).body(buf[..n].to_vec()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => source.fd = None,
                }
            }
        }
    }
    drop(sources);
    drop(stdin);
    let status = wait(&mut child).map_err(|e| ("io", format!("waitpid: {e}")))?;
    Ok(ExitStatus {
        checkpoint: None,
        code: status.code(),
        signal: status.signal(),
        timed_out,
        killed,
    })
}

/// A failed spawn's code: `spawn_failed` when the request is at fault or the tenant's own
/// limits are (no such program or working directory, not executable, the pids limit), else
/// `internal`, logged: the kernel refused a step of turning the child into the tenant (a
/// call this kernel, e.g. gVisor's, does not offer), which no request can fix.
fn spawn_error(program: &str, e: &std::io::Error) -> (&'static str, String) {
    let requester = matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EACCES
                | libc::ENOEXEC
                | libc::ENOTDIR
                | libc::ELOOP
                | libc::ENAMETOOLONG
                | libc::E2BIG
                | libc::EAGAIN
                | libc::ENOMEM
                | libc::ETXTBSY
        )
    );
    if requester {
        ("spawn_failed", format!("{program}: {e}"))
    } else {
        eprintln!("sandpool-supervisor: starting {program:?} as the tenant failed: {e}");
        ("internal", format!("starting the command failed: {e}"))
    }
}

fn wait(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    loop {
        match child.wait() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
