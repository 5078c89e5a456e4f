//! Thin, safe wrappers over the raw Linux calls the supervisor needs and std does not offer
//! (eventfd, pidfd, poll, per-thread fsuid, openat2, close_range, extended attributes,
//! futimens, a directory listing that leaves atime alone), and the mapping of errno values to
//! the protocol's stable error codes. Nothing here holds policy.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a freshly returned descriptor.
fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = cvt(ret)? as RawFd;
    // SAFETY: the kernel just handed us this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking, close-on-exec eventfd: the way the main thread wakes a command's thread.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with no pointers.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } as libc::c_long)
}

/// Adds one to an eventfd's counter (makes it readable).
pub fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) is still readable.
    unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Resets an eventfd's counter.
pub fn eventfd_clear(fd: &OwnedFd) {
    let mut value: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; EAGAIN (already clear) is fine.
    unsafe { libc::read(fd.as_raw_fd(), (&raw mut value).cast(), 8) };
}

/// A pidfd for `pid` (close-on-exec by default): readable once the process has exited. The
/// caller must not have reaped `pid` yet, so the pid cannot have been reused.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with no pointers.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// A descriptor that becomes readable once the child `pid` has exited: its pidfd, or on a
/// kernel without pidfds (gVisor answers ENOSYS) an eventfd that a small thread signals when
/// `waitid(WNOWAIT)` sees the exit. Neither reaps the child: the caller still must, and until
/// it does the pid cannot be reused.
pub fn exit_fd(pid: i32) -> io::Result<OwnedFd> {
    match pidfd_open(pid) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        other => return other,
    }
    let fd = eventfd()?;
    let signal = fd.try_clone()?;
    std::thread::Builder::new()
        .name("exit-wait".into())
        .stack_size(64 << 10)
        .spawn(move || {
            loop {
                // SAFETY: waitid fills a live, zeroed siginfo_t.
                let ret = unsafe {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &raw mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if ret == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    // Exited, or already reaped by the caller (ECHILD): readable either way.
                    break;
                }
            }
            eventfd_signal(&signal);
        })?;
    Ok(fd)
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) } as libc::c_long)? as libc::c_int;
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } as libc::c_long)?;
    Ok(())
}

/// poll(2); `None` waits forever. An interrupted call counts as "nothing ready".
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        // Round up so a deadline 0.3 ms away does not spin with a 0 timeout.
        Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: the pointer and length describe a live slice of pollfd.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(ret as usize)
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a live, writable slice.
    Ok(
        cvt(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } as libc::c_long)?
            as usize,
    )
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a live slice.
    Ok(cvt(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) } as libc::c_long)? as usize)
}

/// Makes the calling thread (only it: these are raw per-thread syscalls, not glibc's
/// process-wide set*id broadcast) access files as `uid:gid`. Going from fsuid 0 to a nonzero
/// fsuid also drops CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER and the other file capabilities
/// from this thread's effective set. Verified afterwards: setfsuid reports no errors itself.
pub fn become_fs_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls with no pointers. An invalid id (u32::MAX) changes nothing and
    // returns the current value, which is how the result is checked.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        let now_gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let now_uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if now_gid != gid || now_uid != uid {
            return Err(io::Error::other(
                "could not take the tenant's file credentials",
            ));
        }
    }
    Ok(())
}

/// openat2(2) relative to the current directory (paths here are absolute) with `resolve`
/// flags, e.g. `RESOLVE_NO_MAGICLINKS` so that `/proc/<pid>/fd/N` cannot hand out one of the
/// supervisor's own descriptors.
pub fn openat2(path: &CStr, flags: libc::c_int, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    openat2_at(libc::AT_FDCWD, path, flags, mode, resolve)
}

/// openat2(2) relative to the directory `dir` is open on, e.g. with `RESOLVE_BENEATH` so that
/// neither `..` nor a symlink leads out of it.
pub fn openat2_in(
    dir: &OwnedFd,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    openat2_at(dir.as_raw_fd(), path, flags, mode, resolve)
}

fn openat2_at(
    dir: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    // The kernel rejects a mode without O_CREAT.
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode & 0o7777)
    } else {
        0
    };
    how.resolve = resolve;
    // SAFETY: `path` is NUL-terminated and `how` is a live open_how of the size passed.
    let opened = owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &raw const how,
            std::mem::size_of::<libc::open_how>(),
        )
    });
    match opened {
        // A kernel without openat2 (gVisor): the same promises, kept by hand.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            crate::resolve::open(dir, path, flags, mode, resolve)
        }
        other => other,
    }
}

/// Whether `fd` is on procfs.
pub fn is_procfs(fd: &OwnedFd) -> io::Result<bool> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills a live statfs.
    match cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut st) } as libc::c_long) {
        Ok(_) => Ok(st.f_type == libc::PROC_SUPER_MAGIC),
        // gVisor answers fstatfs on an open procfs file with ENOSYS: the file's device is
        // procfs's then, or it is taken for procfs (refused) when that cannot be told.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            let mut file: libc::stat = unsafe { std::mem::zeroed() };
            let mut proc: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat and stat fill live stat buffers; the path is NUL-terminated.
            let known = unsafe {
                libc::fstat(fd.as_raw_fd(), &raw mut file) == 0
                    && libc::stat(c"/proc".as_ptr(), &raw mut proc) == 0
            };
            Ok(!known || file.st_dev == proc.st_dev)
        }
        Err(e) => Err(e),
    }
}

/// Marks every descriptor from 3 up close-on-exec. Async-signal-safe (used in `pre_exec`).
/// A kernel without `CLOSE_RANGE_CLOEXEC` (gVisor answers EINVAL, older kernels ENOSYS, a
/// seccomp profile EPERM) gets the same from a walk of `/proc/self/fd`.
pub fn cloexec_from_3() -> io::Result<()> {
    // SAFETY: plain syscall with no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EPERM) => cloexec_by_listing()?,
            _ => return Err(err),
        }
    }
    Ok(())
}

/// `cloexec_from_3` by hand: every descriptor `/proc/self/fd` lists from 3 up gets
/// `FD_CLOEXEC`. Async-signal-safe: raw syscalls and a buffer on the stack, no allocation.
fn cloexec_by_listing() -> io::Result<()> {
    // SAFETY: raw syscalls on a NUL-terminated literal, a descriptor this function owns and
    // a live stack buffer of the size passed; entries are read within the bytes returned.
    unsafe {
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 2048];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if n < 0 {
                let err = io::Error::last_os_error();
                libc::close(dir);
                return Err(err);
            }
            if n == 0 {
                break;
            }
            let mut at = 0usize;
            while at + 19 < n as usize {
                // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name.
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                let mut fd: i64 = 0;
                let mut digits = 0;
                for &b in &buf[at + 19..(at + reclen).min(n as usize)] {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    fd = fd * 10 + i64::from(b - b'0');
                    digits += 1;
                }
                if digits > 0 && fd >= 3 && fd != i64::from(dir) && fd <= i64::from(i32::MAX) {
                    libc::fcntl(fd as libc::c_int, libc::F_SETFD, libc::FD_CLOEXEC);
                }
                at += reclen;
            }
        }
        libc::close(dir);
    }
    Ok(())
}

/// The names of the extended attributes of `path` itself: llistxattr, so a final symlink is
/// not followed. Only the names the caller may see are listed (`trusted.*` needs
/// CAP_SYS_ADMIN). A filesystem without xattrs has none.
pub fn llistxattr(path: &CStr) -> io::Result<Vec<CString>> {
    // SAFETY: `path` is NUL-terminated; the buffer is null with size 0 (a size query) or a
    // live, writable allocation of the size passed.
    xattr_names(|buf, size| unsafe { libc::llistxattr(path.as_ptr(), buf, size) })
}

/// The names of the extended attributes of the file `fd` is open on (flistxattr).
pub fn flistxattr(fd: &OwnedFd) -> io::Result<Vec<CString>> {
    // SAFETY: as in `llistxattr`, on a descriptor the caller owns.
    xattr_names(|buf, size| unsafe { libc::flistxattr(fd.as_raw_fd(), buf, size) })
}

/// Lists with a size query first; a list that grew in between (ERANGE) is asked again.
fn xattr_names(
    list: impl Fn(*mut libc::c_char, usize) -> libc::ssize_t,
) -> io::Result<Vec<CString>> {
    let none_here = |e: &io::Error| e.raw_os_error() == Some(libc::ENOTSUP);
    for _ in 0..8 {
        let size = list(std::ptr::null_mut(), 0);
        if size < 0 {
            let err = io::Error::last_os_error();
            return if none_here(&err) {
                Ok(Vec::new())
            } else {
                Err(err)
            };
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let got = list(buf.as_mut_ptr().cast(), buf.len());
        if got < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ERANGE) => continue,
                _ if none_here(&err) => return Ok(Vec::new()),
                _ => return Err(err),
            }
        }
        buf.truncate(got as usize);
        // The list is NUL-terminated names, one after the other.
        return Ok(buf
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .filter_map(|name| CString::new(name).ok())
            .collect());
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

/// Removes the extended attribute `name` of the file `fd` is open on (fremovexattr).
pub fn fremovexattr(fd: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: a descriptor the caller owns and a NUL-terminated name.
    cvt(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) } as libc::c_long)?;
    Ok(())
}

/// Sets the access and modification times of the file `fd` is open on (futimens).
pub fn futimens(fd: &OwnedFd, atime: libc::timespec, mtime: libc::timespec) -> io::Result<()> {
    let times = [atime, mtime];
    // SAFETY: a descriptor the caller owns and a live array of two timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) } as libc::c_long)?;
    Ok(())
}

/// The names in directory `path` (without `.` and `..`; a symlink is refused), read through a
/// descriptor opened with O_NOATIME where the caller may (the owner, or CAP_FOWNER), so that
/// looking does not move the directory's atime.
pub fn read_dir_noatime(path: &CStr) -> io::Result<Vec<OsString>> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: open with a NUL-terminated path.
    let mut fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_NOATIME) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        // SAFETY: as above.
        fd = unsafe { libc::open(path.as_ptr(), flags) };
    }
    let dir = owned(fd as libc::c_long)?;
    Ok(crate::fsat::names(&dir)?
        .into_iter()
        .map(|name| std::ffi::OsStr::from_bytes(name.to_bytes()).to_os_string())
        .collect())
}

/// The protocol's error code for an errno value.
pub fn errno_code(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "not_found",
        libc::EACCES | libc::EPERM => "permission_denied",
        libc::EEXIST => "already_exists",
        libc::EISDIR => "is_directory",
        libc::ENOTDIR => "not_directory",
        libc::ENOTEMPTY => "not_empty",
        libc::ENOSPC | libc::EDQUOT => "no_space",
        libc::EFBIG => "too_large",
        // RESOLVE_BENEATH: the path (through a symlink, say) leaves the workspace.
        libc::EXDEV => "bad_request",
        _ => "io",
    }
}

/// The protocol's error code for an I/O error.
pub fn io_code(err: &io::Error) -> &'static str {
    err.raw_os_error().map_or("io", errno_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_codes() {
        assert_eq!(errno_code(libc::ENOENT), "not_found");
        assert_eq!(errno_code(libc::EACCES), "permission_denied");
        assert_eq!(errno_code(libc::EPERM), "permission_denied");
        assert_eq!(errno_code(libc::EEXIST), "already_exists");
        assert_eq!(errno_code(libc::EISDIR), "is_directory");
        assert_eq!(errno_code(libc::ENOTDIR), "not_directory");
        assert_eq!(errno_code(libc::ENOTEMPTY), "not_empty");
        assert_eq!(errno_code(libc::EIO), "io");
        assert_eq!(io_code(&io::Error::other("x")), "io");
        assert_eq!(
            io_code(&io::Error::from_raw_os_error(libc::ENOENT)),
            "not_found"
        );
    }

    #[test]
    fn eventfd_wakes_poll() {
        let fd = eventfd().unwrap();
        let mut fds = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
        eventfd_signal(&fd);
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 1);
        eventfd_clear(&fd);
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
    }
}
