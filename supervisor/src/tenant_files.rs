//! File operations in a process of the tenant's own, for kernels without per-thread file
//! credentials (gVisor has no setfsuid: ENOSYS). The supervisor starts itself again as
//! `sandpool-supervisor --file-op`, through the same steps as a tenant command (the tenant's
//! uid and gid, no capability, no descriptor of the supervisor's), hands it the request as
//! one frame on its stdin and reads one reply frame from its stdout.
//!
//! Why a process and not a thread with the tenant's uid (raw `setresuid` is per thread): a
//! thread of the supervisor with the tenant's uid could be signalled or traced by the
//! tenant, and it shares the supervisor's memory. The helper process shares nothing: the
//! tenant may stop, kill or trace it, and all it can spoil is the answer about its own
//! files, which the supervisor checks as one bounded frame before passing it on.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;

use sandpool_supervisor::proto::{self, ExecRequest, Failure, FileRequest, Frame, Kind};

use crate::spawn::Plan;
use crate::{Reply, Tenant};

/// The argument that starts the helper.
pub const FLAG: &str = "--file-op";

/// Runs one file request in a helper process as `tenant`.
pub fn run(tenant: Tenant, head: Vec<u8>, body: Vec<u8>) -> Reply {
    let program = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/usr/local/bin/sandpool-supervisor".to_string());
    let plan = Plan::new(&ExecRequest {
        argv: vec![program, FLAG.to_string()],
        env: Vec::new(),
        cwd: "/".to_string(),
        timeout_ms: 0,
        window: 0,
        checkpoint: None,
    })
    .map_err(|e| ("internal", e))?;
    let mut child = plan
        .spawn(tenant)
        .map_err(|e| ("busy", format!("cannot start the file helper: {e}")))?;
    let request = Frame::new(Kind::File, 0)
        .head_bytes(head)
        .body(body)
        .encode();
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    drop(child.stderr.take());
    // The helper reads its whole request before it answers, so this cannot deadlock.
    let wrote = stdin.as_mut().map(|s| s.write_all(&request));
    drop(stdin);
    let mut reply = Vec::new();
    let read = stdout.as_mut().map(|s| {
        s.take((4 + proto::MAX_FRAME_BYTES) as u64)
            .read_to_end(&mut reply)
    });
    drop(stdout);
    let status = loop {
        match child.wait() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    if !matches!(wrote, Some(Ok(()))) || !matches!(read, Some(Ok(_))) {
        return Err(("io", "the file helper did not take its request".into()));
    }
    let frame = match Frame::decode(&mut reply) {
        Ok(Some(frame)) => frame,
        _ => {
            let how = match status {
                Ok(s) if s.signal().is_some() => format!("killed by signal {:?}", s.signal()),
                Ok(s) => format!("exit {:?}", s.code()),
                Err(e) => e.to_string(),
            };
            return Err(("io", format!("the file helper gave no answer ({how})")));
        }
    };
    match frame.kind {
        Kind::Result => Ok((frame.head, frame.body)),
        Kind::Error => {
            let failure: Failure = frame
                .head()
                .map_err(|_| ("io", "the file helper's error is malformed".to_string()))?;
            Err((known_code(&failure.code), failure.message))
        }
        _ => Err(("io", "the file helper's answer is malformed".into())),
    }
}

/// The protocol's code for a code the helper sent (it comes from a process the tenant
/// could have tampered with, so only the known ones pass).
fn known_code(code: &str) -> &'static str {
    const CODES: [&str; 13] = [
        "not_found",
        "permission_denied",
        "already_exists",
        "is_directory",
        "not_directory",
        "not_empty",
        "no_space",
        "too_large",
        "bad_request",
        "busy",
        "io",
        "internal",
        "spawn_failed",
    ];
    CODES.into_iter().find(|c| *c == code).unwrap_or("io")
}

/// The helper's side (`sandpool-supervisor --file-op`): one request frame on stdin, one
/// reply frame on stdout, then exit. It runs as the tenant already, so it takes no file
/// credentials of its own.
pub fn serve() -> i32 {
    // A file is made with exactly the mode asked for, as the supervisor's own threads make
    // it (the spawn gave this process the tenant's usual 022).
    // SAFETY: plain libc call.
    unsafe { libc::umask(0) };
    let mut input = Vec::new();
    if std::io::stdin()
        .take((4 + proto::MAX_FRAME_BYTES) as u64)
        .read_to_end(&mut input)
        .is_err()
    {
        return 3;
    }
    let reply = match Frame::decode(&mut input) {
        Ok(Some(frame)) => match frame.head::<FileRequest>() {
            Ok(req) => {
                let body = frame.body;
                // The file thread's stack: a recursive delete walks deep trees.
                std::thread::Builder::new()
                    .stack_size(crate::files::STACK)
                    .spawn(move || crate::files::run(req, body))
                    .map_err(|e| ("busy", format!("cannot start a thread: {e}")))
                    .and_then(|t| {
                        t.join()
                            .unwrap_or(Err(("io", "the file operation failed".to_string())))
                    })
            }
            Err(e) => Err(("bad_request", format!("bad file head: {e}"))),
        },
        _ => Err(("bad_request", "no request".to_string())),
    };
    let frame = match reply {
        Ok((head, body)) => Frame::new(Kind::Result, 0).head_bytes(head).body(body),
        Err((code, message)) => crate::failure(0, code, message),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(&frame.encode())
        .and_then(|()| out.flush())
        .is_err()
    {
        return 3;
    }
    0
}
