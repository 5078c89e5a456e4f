//! Returning a container to a clean state between tenants (`Scrub`) and checking that it is
//! (`Verify`). The scrub kills every process but the container's init and the supervisor,
//! empties the writable paths and restores the paths themselves: owner, mode, no extended
//! attribute (so no POSIX ACL either) and both times at the epoch. The verification is a
//! separate pass that trusts nothing the cleaning did and looks afresh at `/proc`, the paths
//! (their entries, owner, mode and xattrs, and after a scrub their times) and System V IPC.
//! Both refuse to run unless the supervisor is plainly inside a container.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use sandpool_supervisor::proto::{Frame, RequestId, ScrubRequest, Verdict, WritablePath};

use crate::{Ctx, Reply, Tenant, procs, sys};

/// The scrub thread's queue of `(id, request, clean)`.
type Job = (RequestId, ScrubRequest, bool);
static JOBS: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
/// The cleaning recurses through tenant-made trees of any depth.
const STACK: usize = 64 << 20;
const KILL_ROUNDS: usize = 200;
/// The access and modification time the scrub gives every writable path: the epoch. It is
/// the same in every sandbox and after every scrub, so it tells a tenant nothing about the
/// last one (a time a tenant sets is up to 64 bits it could hand on). The change time cannot
/// be set; it says when the scrub ran.
const ROOT_TIME: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
};
/// Extended attributes that a Linux security module puts on every inode of its host (an
/// SELinux or Smack label). They are the module's, not the tenant's: a tenant cannot choose
/// one without the module's leave (CAP_MAC_ADMIN, a relabel rule), and the supervisor may not
/// remove one. Every other xattr a path has is the tenant's and is removed.
const LSM_LABELS: [&str; 2] = ["security.selinux", "security.SMACK64"];

/// Starts the one thread that runs scrubs and verifications, one at a time (two interleaved
/// ones would report each other's half-done work). It exists from startup on, so a scrub
/// needs no new thread, which a fork bomb at the pids limit could deny.
pub fn start_thread(ctx: &Arc<Ctx>) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<Job>();
    let ctx = Arc::clone(ctx);
    std::thread::Builder::new()
        .name("scrub".into())
        .stack_size(STACK)
        .spawn(move || {
            for (id, req, clean) in rx {
                crate::answer(&ctx.out, id, || run(&ctx, &req, clean));
            }
        })?;
    let _ = JOBS.set(tx);
    Ok(())
}

/// Handles `Scrub` (`clean` true) and `Verify` frames.
pub fn start(ctx: &Arc<Ctx>, frame: Frame, clean: bool) {
    let id = frame.id;
    let req: ScrubRequest = match frame.head() {
        Ok(req) => req,
        Err(e) => {
            return ctx
                .out
                .error(id, "bad_request", format!("bad scrub head: {e}"));
        }
    };
    if !in_sandbox() {
        return ctx.out.error(id, "bad_request", "not in a sandbox");
    }
    if let Some(bad) = req.paths.iter().find(|p| !p.path.starts_with('/')) {
        let why = format!("path {:?} is not absolute", bad.path);
        return ctx.out.error(id, "bad_request", why);
    }
    let queued = JOBS
        .get()
        .is_some_and(|jobs| jobs.send((id, req, clean)).is_ok());
    if !queued {
        ctx.out.error(id, "io", "the scrub thread is gone");
    }
}

/// One scrub (or, without `clean`, only its verification).
fn run(ctx: &Ctx, req: &ScrubRequest, clean: bool) -> Reply {
    // A kernel without an mqueue filesystem has no `/dev/mqueue` to judge, and its tenants no
    // message queues (see `kernel`).
    let mqueue_fs = crate::kernel::get().mqueue_fs;
    let paths: Vec<WritablePath> = req
        .paths
        .iter()
        .filter(|p| mqueue_fs || p.path != crate::kernel::MQUEUE_PATH)
        .cloned()
        .collect();
    let killed = if clean {
        let killed = kill_everything(ctx);
        for path in &paths {
            if let Err(e) = empty_and_restore(path, ctx.tenant) {
                eprintln!("sandpool-supervisor: scrub {}: {e}", path.path);
            }
        }
        // The next tenant must not undo into this one's files.
        ctx.checkpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        killed
    } else {
        0
    };
    let mut found = verify(&paths, ctx.tenant, clean);
    if clean && found.is_empty() {
        // The verification lists each path without moving its atime where the kernel honours
        // O_NOATIME; gVisor does not, and would hand the next tenant the time of that listing.
        reset_times(&paths);
    }
    found.extend(crate::checkpoint::findings(&ctx.checkpoints));
    let verdict = Verdict {
        clean: found.is_empty(),
        found,
        killed,
    };
    serde_json::to_vec(&verdict)
        .map(|head| (head, Vec::new()))
        .map_err(|e| ("io", e.to_string()))
}

/// Only the container's init (or nobody: the supervisor as PID 1) may be our parent. On a
/// developer's machine the parent is a shell, and `kill(-1)` there would be a disaster.
fn in_sandbox() -> bool {
    std::os::unix::process::parent_id() == 1 || std::process::id() == 1
}

/// Every process except PID 1 and the supervisor, with their state.
fn others() -> Vec<procs::ProcInfo> {
    let me = std::process::id() as i32;
    procs::snapshot()
        .into_iter()
        .filter(|p| p.pid != 1 && p.pid != me)
        .collect()
}

/// Kills every other process until none is left alive; returns how many were seen alive.
fn kill_everything(ctx: &Ctx) -> u32 {
    // The supervisor's own commands die with everything else; their threads reap them and
    // send their `Exit`.
    ctx.execs.kill_and_forget_all();
    let mut seen: HashSet<i32> = HashSet::new();
    for round in 0..KILL_ROUNDS {
        let alive: Vec<i32> = others()
            .into_iter()
            .filter(|p| !p.is_dead())
            .map(|p| p.pid)
            .collect();
        if alive.is_empty() {
            break;
        }
        seen.extend(alive);
        // SAFETY: plain syscall. As root with CAP_KILL in the container's pid namespace this
        // reaches every process but the namespace's init and the supervisor itself.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        if round + 1 < KILL_ROUNDS {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Zombies go once reaped: by init for orphans, by the command threads for our children.
    let until = Instant::now() + Duration::from_secs(1);
    while !others().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    seen.len() as u32
}

/// Removes everything inside `wp.path`, then restores the directory itself: every extended
/// attribute removed (`user.*`, the POSIX ACLs `system.posix_acl_access` and
/// `system.posix_acl_default`, and whatever else it lists but an LSM label), its owner and
/// mode, and its atime and mtime set to `ROOT_TIME`, in that order: neither chown nor chmod
/// moves them. A missing path, or one that is not a directory, is left for the verification
/// to report.
fn empty_and_restore(wp: &WritablePath, tenant: Tenant) -> io::Result<()> {
    let path = Path::new(&wp.path);
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Ok(());
    }
    let mut first_error = None;
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if let Err(e) = remove(&entry.path()) {
            first_error.get_or_insert(e);
        }
    }
    // Owner and mode through a descriptor of the directory itself (never a symlink).
    let c = CString::new(wp.path.as_str()).map_err(io::Error::other)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: open with a NUL-terminated path; the descriptor is owned right away.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let (uid, gid) = if wp.tenant_owned {
        (tenant.uid, tenant.gid)
    } else {
        (0, 0)
    };
    // The ACLs go before the mode: chmod would otherwise rewrite an access ACL's mask rather
    // than the group bits.
    if let Err(e) = remove_xattrs(&dir) {
        first_error.get_or_insert(e);
    }
    // SAFETY: fchown/fchmod on an owned descriptor. chown clears set-id bits, so the mode
    // goes second.
    unsafe {
        if libc::fchown(dir.as_raw_fd(), uid, gid) < 0 {
            first_error.get_or_insert(io::Error::last_os_error());
        }
        if libc::fchmod(dir.as_raw_fd(), (wp.mode & 0o7777) as libc::mode_t) < 0 {
            first_error.get_or_insert(io::Error::last_os_error());
        }
    }
    if let Err(e) = sys::futimens(&dir, ROOT_TIME, ROOT_TIME) {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// Sets each path's atime and mtime to `ROOT_TIME` again (opening a directory moves neither).
fn reset_times(paths: &[WritablePath]) {
    for wp in paths {
        let Ok(c) = CString::new(wp.path.as_str()) else {
            continue;
        };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: open with a NUL-terminated path; the descriptor is owned right away.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and nothing else owns it.
            let dir = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = sys::futimens(&dir, ROOT_TIME, ROOT_TIME);
        }
    }
}

/// Removes every extended attribute `dir` lists but an LSM label. The supervisor (root with
/// CAP_FOWNER) may remove `user.*` and `system.posix_acl_*` of any file; it cannot see
/// `trusted.*` nor remove `security.*` (both need CAP_SYS_ADMIN), which a tenant cannot set
/// either. Whatever is left is for the verification to report.
fn remove_xattrs(dir: &OwnedFd) -> io::Result<()> {
    let mut first_error = None;
    for name in sys::flistxattr(dir)? {
        if is_lsm_label(&name) {
            continue;
        }
        match sys::fremovexattr(dir, &name) {
            // Gone in between: that is what was wanted.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => {
                first_error.get_or_insert(io::Error::new(
                    e.kind(),
                    format!("xattr {}: {e}", name.to_string_lossy()),
                ));
            }
            Ok(()) => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn is_lsm_label(name: &CStr) -> bool {
    LSM_LABELS.iter().any(|l| l.as_bytes() == name.to_bytes())
}

/// Removes one entry: a real directory with everything in it (`remove_dir_all` does not
/// follow symlinks), anything else (file, symlink, FIFO, socket, mqueue) by unlinking it.
fn remove(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(_) => {
            // Root's DAC_OVERRIDE normally makes modes irrelevant; should it not, open every
            // directory up for its owner and try once more.
            open_up(path);
            fs::remove_dir_all(path)
        }
    }
}

/// Gives every directory under `path` (without following symlinks) mode 0700.
fn open_up(path: &Path) {
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&entry.path());
        }
    }
}

/// The verification pass: what is wrong now, from a fresh look. `scrubbed` says that a scrub
/// has just run, so each path's atime and mtime must be `ROOT_TIME` too; a sandbox that was
/// never scrubbed (fresh from create) or is in use has other times, and they are not judged.
/// The listing does not move the paths' atime, so the next tenant finds it as the scrub left
/// it.
pub fn verify(paths: &[WritablePath], tenant: Tenant, scrubbed: bool) -> Vec<String> {
    let mut found: Vec<String> = others().iter().map(|p| format!("proc:{}", p.pid)).collect();
    for wp in paths {
        let path = &wp.path;
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => meta,
            _ => {
                found.push(format!("missing:{path}"));
                continue;
            }
        };
        let owner = if wp.tenant_owned {
            (tenant.uid, tenant.gid)
        } else {
            (0, 0)
        };
        if (meta.uid(), meta.gid()) != owner {
            found.push(format!("owner:{path}"));
        }
        if meta.mode() & 0o7777 != wp.mode & 0o7777 {
            found.push(format!("mode:{path}"));
        }
        let at_root_time =
            |secs: i64, nsecs: i64| secs == ROOT_TIME.tv_sec && nsecs == ROOT_TIME.tv_nsec;
        if scrubbed
            && !(at_root_time(meta.atime(), meta.atime_nsec())
                && at_root_time(meta.mtime(), meta.mtime_nsec()))
        {
            found.push(format!("time:{path}"));
        }
        let Ok(c_path) = CString::new(path.as_str()) else {
            found.push(format!("unreadable:{path}"));
            continue;
        };
        // Listed by name only: an ACL is an xattr (`system.posix_acl_*`) like any other.
        match sys::llistxattr(&c_path) {
            Ok(names) => found.extend(
                names
                    .iter()
                    .filter(|n| !is_lsm_label(n))
                    .map(|n| format!("xattr:{path}:{}", n.to_string_lossy())),
            ),
            Err(_) => found.push(format!("unreadable-xattrs:{path}")),
        }
        match sys::read_dir_noatime(&c_path) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .iter()
                    .map(|name| format!("file:{path}/{}", name.to_string_lossy()))
                    .collect();
                names.sort();
                found.extend(names);
            }
            Err(_) => found.push(format!("unreadable:{path}")),
        }
    }
    for kind in ["shm", "msg", "sem"] {
        match fs::read_to_string(format!("/proc/sysvipc/{kind}")) {
            Ok(text) if ipc_objects(&text) == 0 => {}
            // No listing (gVisor): the kernel's own count of objects in use.
            Err(e) if e.kind() == io::ErrorKind::NotFound => match ipc_in_use(kind) {
                Some(0) => {}
                _ => found.push(format!("ipc:{kind}")),
            },
            _ => found.push(format!("ipc:{kind}")),
        }
    }
    found
}

/// System V IPC objects of `kind` in use, from `SHM_INFO`/`MSG_INFO`/`SEM_INFO`: `Some(0)` on
/// a kernel without System V IPC (ENOSYS), `None` when the kernel does not say.
fn ipc_in_use(kind: &str) -> Option<u64> {
    // <linux/shm.h>; libc has MSG_INFO and SEM_INFO but not this one.
    const SHM_INFO: libc::c_int = 14;
    // The kernel fills the start of a `shm_info`/`msginfo`/`seminfo`; a zeroed buffer larger
    // than any of them takes it.
    let mut buf = [0u64; 32];
    let p = buf.as_mut_ptr();
    // SAFETY: each call writes at most the size of its struct into the live, larger buffer.
    let ret = unsafe {
        match kind {
            "shm" => libc::shmctl(0, SHM_INFO, p.cast()),
            "msg" => libc::msgctl(0, libc::MSG_INFO, p.cast()),
            _ => libc::semctl(0, 0, libc::SEM_INFO, p),
        }
    };
    if ret < 0 {
        return (io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)).then_some(0);
    }
    // SAFETY: plain integers at the offsets the structs define.
    let in_use = unsafe {
        match kind {
            // struct shm_info { int used_ids; ... }
            "shm" => *p.cast::<libc::c_int>() as u64,
            // struct msginfo { int msgpool (queues in use for MSG_INFO), ... }
            "msg" => *p.cast::<libc::c_int>() as u64,
            // struct seminfo { int semmap, semmni, semmns, semmnu, semmsl, semopm, semume,
            //                  semusz (sets in use for SEM_INFO), semvmx, semaem }
            _ => *p.cast::<libc::c_int>().add(7) as u64,
        }
    };
    Some(in_use)
}

/// Objects listed in a `/proc/sysvipc/*` file: every non-blank line after the header.
fn ipc_objects(text: &str) -> usize {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `verify` finds about `paths` alone (not this machine's processes and IPC).
    fn findings(paths: &[WritablePath], me: Tenant, scrubbed: bool) -> Vec<String> {
        verify(paths, me, scrubbed)
            .into_iter()
            .filter(|f| !f.starts_with("proc:") && !f.starts_with("ipc:"))
            .collect()
    }

    fn me() -> Tenant {
        // SAFETY: plain syscalls with no pointers.
        unsafe {
            Tenant {
                uid: libc::getuid(),
                gid: libc::getgid(),
            }
        }
    }

    #[test]
    fn counts_ipc_objects() {
        assert_eq!(ipc_objects("       key      shmid perms\n"), 0);
        assert_eq!(ipc_objects(""), 0);
        assert_eq!(ipc_objects("key shmid\n 0 1 666\n 0 2 600\n"), 2);
    }

    #[test]
    fn verify_reports_a_dirty_directory() {
        let dir = std::env::temp_dir().join(format!("sandpool-verify-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let d = dir.to_str().unwrap().to_string();
        let me = me();
        let paths = [
            WritablePath {
                path: d.clone(),
                mode: 0o755,
                tenant_owned: true,
            },
            WritablePath {
                path: format!("{d}/nope"),
                mode: 0o755,
                tenant_owned: true,
            },
        ];
        let found = findings(&paths, me, false);
        assert_eq!(
            found,
            vec![
                format!("mode:{d}"),
                format!("file:{d}/sub"),
                format!("missing:{d}/nope")
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_scrub_restores_xattrs_and_times_and_verify_sees_them() {
        let dir = std::env::temp_dir().join(format!("sandpool-xattr-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), b"x").unwrap();
        let d = dir.to_str().unwrap().to_string();
        let c = CString::new(d.as_str()).unwrap();
        // SAFETY: NUL-terminated path and name, a live value of the length passed.
        let set = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"user.leak".as_ptr(),
                b"v".as_ptr().cast(),
                1,
                0,
            )
        };
        // A filesystem without user xattrs (ENOTSUP) cannot hold the leak: times only then.
        let xattrs = set == 0;
        if !xattrs {
            let err = io::Error::last_os_error();
            assert_eq!(err.raw_os_error(), Some(libc::ENOTSUP), "setxattr: {err}");
            eprintln!("{d} takes no user xattrs: only times are checked");
        }
        let dir_fd = OwnedFd::from(fs::File::open(&dir).unwrap());
        let chosen = libc::timespec {
            tv_sec: 222222222,
            tv_nsec: 5,
        };
        sys::futimens(&dir_fd, chosen, chosen).unwrap();
        let paths = [WritablePath {
            path: d.clone(),
            mode: 0o755,
            tenant_owned: true,
        }];

        let mut dirty = vec![format!("file:{d}/f")];
        if xattrs {
            dirty.insert(0, format!("xattr:{d}:user.leak"));
        }
        assert_eq!(findings(&paths, me(), false), dirty);
        dirty.insert(0, format!("time:{d}"));
        assert_eq!(findings(&paths, me(), true), dirty);

        empty_and_restore(&paths[0], me()).unwrap();
        assert_eq!(findings(&paths, me(), true), Vec::<String>::new());
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert_eq!(
            (meta.atime(), meta.mtime()),
            (0, 0),
            "the listing left atime alone"
        );
        assert!(sys::llistxattr(&c).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
