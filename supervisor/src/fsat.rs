//! Directory-relative file calls (`openat`, `fstatat`, `unlinkat`, ...), the way the supervisor
//! walks and changes a tree the tenant controls: every name is one component looked up in a
//! directory descriptor, never a path, and nothing follows a symlink. A tenant that swaps a
//! directory for a link between two calls makes a call fail, never lead elsewhere. Thin and
//! safe wrappers only; the policy is in `checkpoint` and `files`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A single path component as a C string; `/` or NUL in it is refused.
pub fn name(bytes: &[u8]) -> io::Result<CString> {
    if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, mode)`.
pub fn open(dir: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: a NUL-terminated name; the descriptor is owned at once.
    let fd = cvt(unsafe { libc::openat(dir, name.as_ptr(), flags, mode as libc::c_uint) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory below `dir`, opened to be read and walked (not through a symlink).
pub fn open_dir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated name and a live stat buffer.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// `fstat(fd)`.
pub fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an owned descriptor and a live stat buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) })?;
    Ok(st)
}

/// The target of the symlink `name` in `dir`.
pub fn readlink(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: a NUL-terminated name and a live buffer of the length passed.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The names in the directory `dir` is open on (without `.` and `..`), read through a
/// duplicate of it so that `dir` stays usable.
pub fn names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // SAFETY: fcntl on an owned descriptor; the duplicate is owned at once.
    let dup = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    // SAFETY: fdopendir on an owned descriptor; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    // The duplicate shares the offset: start from the top whatever read it before.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: readdir reports errors only through errno, cleared first.
        unsafe { *libc::__errno_location() = 0 };
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error() == Some(0) {
                Ok(names)
            } else {
                Err(err)
            };
        }
        // SAFETY: a non-null entry is valid until the next readdir; its name ends in NUL.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: closes the stream and its descriptor once.
    unsafe { libc::closedir(stream) };
    result
}

/// `unlinkat(dir, name, AT_REMOVEDIR when dir_entry)`.
pub fn unlink(dir: RawFd, name: &CStr, dir_entry: bool) -> io::Result<()> {
    let flags = if dir_entry { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: a NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) })?;
    Ok(())
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir, name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// `symlinkat(target, dir, name)`.
pub fn symlink(target: &[u8], dir: RawFd, name: &CStr) -> io::Result<()> {
    let target = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: two NUL-terminated strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) })?;
    Ok(())
}

/// `mkfifoat(dir, name, mode)`.
pub fn mkfifo(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a NUL-terminated name.
    cvt(unsafe { libc::mkfifoat(dir, name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`: the entry itself, link or not.
pub fn lchown(dir: RawFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a NUL-terminated name.
    cvt(unsafe { libc::fchownat(dir, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

/// `fchown` then `fchmod` (chown clears set-id bits, so the mode goes second).
pub fn own_and_mode(fd: &OwnedFd, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: plain calls on an owned descriptor.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), (mode & 0o7777) as libc::mode_t) })?;
    Ok(())
}

/// Owner, then mode, of the file an `O_PATH` descriptor is open on (fchmod does not take
/// one): through `AT_EMPTY_PATH` and the descriptor's own `/proc/self/fd` entry, which name
/// that very inode whatever happens to its path.
pub fn own_and_mode_path(fd: &OwnedFd, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: an owned descriptor and an empty NUL-terminated name.
    cvt(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })?;
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::chmod(path.as_ptr(), (mode & 0o7777) as libc::mode_t) })?;
    Ok(())
}

/// Sets the modification time of the entry `name` in `dir` (not through a link); the access
/// time is left alone.
pub fn set_mtime(dir: RawFd, name: &CStr, sec: i64, nsec: i64) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: a NUL-terminated name and a live array of two timespecs.
    cvt(unsafe {
        libc::utimensat(
            dir,
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// The kind of file a `stat` describes.
pub fn kind(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}
