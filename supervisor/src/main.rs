//! The sandbox supervisor: the container's main process (under Docker's init), root with a
//! handful of capabilities, speaking the `proto` frames with sandpool over stdin/stdout.
//! This file owns startup (arguments, process-wide hygiene), the single writer of reply
//! frames, the main thread's read-and-dispatch loop and the worker-thread harness; the
//! requests themselves live in `exec` (commands), `files` (file operations as the tenant),
//! `checkpoint` (the workspace's checkpoints and undo) and `scrub` (cleaning and
//! verification).

mod checkpoint;
mod exec;
mod files;
mod fsat;
mod kernel;
mod procs;
mod resolve;
mod scrub;
mod spawn;
mod sys;
mod tenant_files;

use std::fs::File;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use sandpool_supervisor::proto::{self, Failure, Frame, Kind, Pong, RequestId};

/// The uid and gid everything done for the tenant runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant {
    pub uid: u32,
    pub gid: u32,
}

/// A worker's answer: the `Result` head (JSON) and body, or an error code and message.
pub type Reply = Result<(Vec<u8>, Vec<u8>), (&'static str, String)>;

/// The one writer of frames to the host. Each frame goes out whole in one `write_all`
/// under the lock, so frames of different threads never interleave.
pub struct Out {
    stdout: Mutex<ManuallyDrop<File>>,
}

impl Out {
    pub fn send(&self, frame: &Frame) {
        let mut bytes = frame.encode();
        if bytes.len() > 4 + proto::MAX_FRAME_BYTES {
            // The host would take an oversized frame for a broken link; say what happened.
            let why = format!("reply of {} bytes is over the frame limit", bytes.len());
            bytes = failure(frame.id, "too_large", why).encode();
        }
        let mut stdout = self.stdout.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = stdout.write_all(&bytes) {
            // Nobody hears us any more: the container is as good as gone.
            eprintln!("sandpool-supervisor: writing to the host failed: {e}");
            std::process::exit(1);
        }
    }

    pub fn error(&self, id: RequestId, code: &str, message: impl Into<String>) {
        self.send(&failure(id, code, message));
    }
}

fn failure(id: RequestId, code: &str, message: impl Into<String>) -> Frame {
    let failure = Failure {
        code: code.to_string(),
        message: message.into(),
    };
    Frame::with_head(Kind::Error, id, &failure)
}

/// What every thread shares.
pub struct Ctx {
    pub out: Out,
    pub tenant: Tenant,
    pub execs: exec::Registry,
    /// The newest generation served and its holder (see `proto::Frame::generation`).
    pub fence: Mutex<Fence>,
    /// The workspace's checkpoints (see `checkpoint`).
    pub checkpoints: Mutex<checkpoint::Store>,
}

/// The newest generation this supervisor has served, and who made its first request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fence {
    pub generation: u64,
    pub holder: u64,
}

/// What a request's generation means (see [`Fence::admit`]).
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// The current generation: served.
    Current,
    /// A newer one: it becomes current, and older generations' commands are killed.
    Newer,
    /// An older one: refused (`fenced`); the current generation is given.
    Stale(u64),
}

impl Fence {
    fn admit(&mut self, generation: u64, holder: u64) -> Admit {
        use std::cmp::Ordering::*;
        match generation.cmp(&self.generation) {
            Equal => Admit::Current,
            Greater => {
                *self = Fence { generation, holder };
                Admit::Newer
            }
            Less => Admit::Stale(self.generation),
        }
    }
}

/// Runs `body` for request `id` on a new thread and sends its reply (`Result` or `Error`).
/// A panic becomes an `Error` too, so the host is never left waiting.
pub fn worker<F>(ctx: &Arc<Ctx>, id: RequestId, name: &str, stack: usize, body: F)
where
    F: FnOnce() -> Reply + Send + 'static,
{
    let thread_ctx = Arc::clone(ctx);
    let spawned = std::thread::Builder::new()
        .name(format!("{name}-{id}"))
        .stack_size(stack)
        .spawn(move || answer(&thread_ctx.out, id, body));
    if let Err(e) = spawned {
        ctx.out
            .error(id, "busy", format!("cannot start a thread: {e}"));
    }
}

/// Runs `body` (catching a panic) and sends its reply for request `id`.
pub fn answer(out: &Out, id: RequestId, body: impl FnOnce() -> Reply) {
    let frame = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok((head, data))) => Frame::new(Kind::Result, id).head_bytes(head).body(data),
        Ok(Err((code, message))) => failure(id, code, message),
        Err(_) => failure(id, "io", "internal error in the supervisor"),
    };
    out.send(&frame);
}

/// Parses `--tenant UID:GID` (or `--tenant=UID:GID`); root is refused.
fn parse_args(args: &[String]) -> Result<Tenant, String> {
    let value = match args {
        [flag, value] if flag == "--tenant" => value.as_str(),
        [flag] if flag.starts_with("--tenant=") => &flag["--tenant=".len()..],
        _ => return Err("usage: sandpool-supervisor --tenant UID:GID".into()),
    };
    let (uid, gid) = value
        .split_once(':')
        .ok_or_else(|| format!("--tenant {value:?} is not UID:GID"))?;
    let uid: u32 = uid.parse().map_err(|_| format!("bad tenant uid {uid:?}"))?;
    let gid: u32 = gid.parse().map_err(|_| format!("bad tenant gid {gid:?}"))?;
    if uid == 0 || gid == 0 || uid == u32::MAX || gid == u32::MAX {
        return Err(format!("refusing tenant {uid}:{gid}"));
    }
    Ok(Tenant { uid, gid })
}

/// Process-wide settings made once, before any thread exists.
fn prepare() -> Result<(), String> {
    // SAFETY: plain libc calls while single-threaded.
    unsafe {
        // A host that went away must not kill us mid-write with SIGPIPE; writes fail instead.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // No group of root's may lend file threads access the tenant lacks.
        if libc::setgroups(0, std::ptr::null()) < 0 && libc::getgroups(0, std::ptr::null_mut()) != 0
        {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        // A file written for the host gets exactly the mode asked for (tenant commands get
        // the usual 022 back in `spawn`).
        libc::umask(0);
    }
    // What the kernel lacks is known before any tenant process or thread exists.
    kernel::get();
    // Nothing the container runtime left open may reach a tenant command.
    sys::cloexec_from_3().map_err(|e| format!("close_range: {e}"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Started again by itself, as the tenant, for one file operation (see `tenant_files`).
    if args.len() == 1 && args[0] == tenant_files::FLAG {
        std::process::exit(tenant_files::serve());
    }
    let tenant = parse_args(&args).unwrap_or_else(|why| {
        eprintln!("sandpool-supervisor: {why}");
        std::process::exit(2);
    });
    if let Err(why) = prepare() {
        eprintln!("sandpool-supervisor: {why}");
        std::process::exit(2);
    }
    let ctx = Arc::new(Ctx {
        // SAFETY: fd 1 is ours for the whole life of the process; ManuallyDrop never closes it.
        out: Out {
            stdout: Mutex::new(ManuallyDrop::new(unsafe { File::from_raw_fd(1) })),
        },
        tenant,
        execs: exec::Registry::default(),
        fence: Mutex::new(Fence::default()),
        checkpoints: Mutex::new(checkpoint::Store::default()),
    });
    // Started now, while threads can still be had: a tenant's fork bomb that exhausts the
    // pids limit must not keep the scrub that ends it from running.
    if let Err(e) = scrub::start_thread(&ctx) {
        eprintln!("sandpool-supervisor: cannot start the scrub thread: {e}");
        std::process::exit(2);
    }
    std::process::exit(serve(&ctx));
}

/// Reads frames from stdin and dispatches them until EOF (0) or a broken stream (3).
fn serve(ctx: &Arc<Ctx>) -> i32 {
    // SAFETY: fd 0 is ours for the whole life of the process; ManuallyDrop never closes it.
    let mut stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        loop {
            match Frame::decode(&mut buf) {
                Ok(Some(frame)) => dispatch(ctx, frame),
                Ok(None) => break,
                Err(e) => {
                    eprintln!("sandpool-supervisor: bad frame from the host: {e}");
                    return 3;
                }
            }
        }
        match stdin.read(&mut chunk) {
            Ok(0) => return 0,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("sandpool-supervisor: reading from the host failed: {e}");
                return 3;
            }
        }
    }
}

/// Routes one request. Nothing here blocks for long: the work runs on other threads.
///
/// Every request but a `Ping` of generation 0 passes the fence first: only the newest
/// generation is served. A request of a newer one kills the commands of older ones (their
/// holder lost the sandbox); one of an older generation is refused with `fenced` (a `Kill`
/// or `Credit` of one is dropped: its command is gone already). A `Ping` of generation 0 is
/// read-only and answers every host, with the current generation and holder, so that a host
/// can learn who serves the sandbox; a `Ping` with a generation is a claim.
fn dispatch(ctx: &Arc<Ctx>, frame: Frame) {
    let id = frame.id;
    if frame.kind != Kind::Ping || frame.generation != 0 {
        let admit = ctx
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(frame.generation, frame.holder);
        match admit {
            Admit::Current => {}
            Admit::Newer => ctx.execs.kill_and_forget_all(),
            Admit::Stale(_) if matches!(frame.kind, Kind::Kill | Kind::Credit) => return,
            Admit::Stale(current) => {
                let why = format!(
                    "generation {} is older than {current}: another holder has this sandbox",
                    frame.generation
                );
                return ctx.out.error(id, "fenced", why);
            }
        }
    }
    match frame.kind {
        Kind::Exec => exec::start(ctx, frame),
        Kind::Kill => ctx.execs.kill(id),
        Kind::Credit => match <[u8; 4]>::try_from(frame.body.as_slice()) {
            Ok(bytes) => ctx.execs.credit(id, u32::from_be_bytes(bytes)),
            // An `Error` here would end the command's request on the host while the command
            // goes on; a bad credit is only noted.
            Err(_) => eprintln!("sandpool-supervisor: credit {id}: body is not 4 bytes"),
        },
        Kind::File => files::start(ctx, frame),
        Kind::Checkpoint => checkpoint::start(ctx, frame),
        Kind::Scrub => scrub::start(ctx, frame, true),
        Kind::Verify => scrub::start(ctx, frame, false),
        Kind::Ping => {
            let fence = *ctx.fence.lock().unwrap_or_else(PoisonError::into_inner);
            let pong = Pong {
                pid: std::process::id() as i32,
                version: env!("CARGO_PKG_VERSION").to_string(),
                running: ctx.execs.len() as u32,
                generation: fence.generation,
                holder: fence.holder,
            };
            ctx.out.send(&Frame::with_head(Kind::Result, id, &pong));
        }
        other => ctx
            .out
            .error(id, "bad_request", format!("{other:?} is not a request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_newest_generation_is_served() {
        let mut fence = Fence::default();
        assert_eq!(fence.admit(5, 1), Admit::Newer);
        assert_eq!(fence.admit(5, 2), Admit::Current);
        assert_eq!(fence.admit(4, 2), Admit::Stale(5));
        assert_eq!(fence.admit(0, 1), Admit::Stale(5));
        assert_eq!(fence.admit(9, 2), Admit::Newer);
        assert_eq!((fence.generation, fence.holder), (9, 2));
        assert_eq!(fence.admit(5, 1), Admit::Stale(9));
    }

    #[test]
    fn parses_the_tenant() {
        let t = Tenant {
            uid: 1000,
            gid: 1001,
        };
        assert_eq!(parse_args(&args(&["--tenant", "1000:1001"])), Ok(t));
        assert_eq!(parse_args(&args(&["--tenant=1000:1001"])), Ok(t));
        for bad in [
            &["--tenant", "0:1000"][..],
            &["--tenant", "1000:0"],
            &["--tenant", "1000"],
            &["--tenant", "a:b"],
            &["--tenant"],
            &[],
            &["--tenant", "1:1", "extra"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
