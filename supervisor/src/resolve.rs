//! Path resolution by hand, for kernels without openat2(2) (gVisor answers ENOSYS): the same
//! two promises `sys::openat2` asks the kernel for, kept one component at a time.
//! - `RESOLVE_BENEATH`: nothing leads out of the starting directory: an absolute path or
//!   symlink target, or a `..` above the start, fails with EXDEV.
//! - `RESOLVE_NO_MAGICLINKS`: no procfs link (`/proc/<pid>/fd/N`, `/proc/self/root`...) is
//!   followed. Magic links live only on procfs, so no symlink found in a procfs directory is
//!   followed at all (ELOOP), which is stricter than the kernel's flag, never looser.
//!
//! Every step is an `openat(dir, name, O_PATH | O_NOFOLLOW)` relative to the descriptor of
//! the step before, so a tenant that swaps a directory for a link between two steps makes
//! the lookup see the link (and judge it), never walk through it unjudged; `..` pops the
//! stack of descriptors walked so far instead of asking the filesystem, so a directory moved
//! meanwhile cannot lift the walk out of its start.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::fsat;

/// As Linux: at most 40 symlinks on one lookup.
const MAX_LINKS: usize = 40;

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// `openat2(dir, path, {flags, mode, resolve})` without openat2. `dir` is `AT_FDCWD` or an
/// open directory; only `RESOLVE_BENEATH` and `RESOLVE_NO_MAGICLINKS` are understood.
pub fn open(
    dir: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let beneath = resolve & libc::RESOLVE_BENEATH != 0;
    let no_magic = resolve & libc::RESOLVE_NO_MAGICLINKS != 0;
    let bytes = path.to_bytes();
    if bytes.is_empty() {
        return Err(err(libc::ENOENT));
    }
    // The walk: the descriptors from its start down to where it is now.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let absolute = bytes.first() == Some(&b'/');
    if absolute && beneath {
        return Err(err(libc::EXDEV));
    }
    let start = if absolute {
        open_path(libc::AT_FDCWD, c"/")?
    } else {
        open_path(dir, c".")?
    };
    stack.push(start);
    // What is left to walk, last component first (pop from the end).
    let mut todo: Vec<Vec<u8>> = components(bytes);
    let mut links = 0usize;
    let follow_last = flags & libc::O_NOFOLLOW == 0;
    loop {
        let Some(part) = todo.pop() else {
            // The path named the starting directory (or ended in `.`/`..`/`/`).
            return reopen(stack.last().expect("the walk has a start"), flags);
        };
        let cur = stack.last().expect("the walk has a start").as_raw_fd();
        if part == b".." {
            if stack.len() > 1 {
                stack.pop();
            } else if beneath {
                return Err(err(libc::EXDEV));
            }
            continue;
        }
        let name = CString::new(part).map_err(|_| err(libc::EINVAL))?;
        let last = todo.is_empty();
        let st = match fsat::lstat(cur, &name) {
            Ok(st) => st,
            Err(e) if last && e.raw_os_error() == Some(libc::ENOENT) => {
                // The last component may be made (O_CREAT); openat says if not.
                return fsat::open(cur, &name, flags, mode);
            }
            Err(e) => return Err(e),
        };
        // A link is followed unless it is the last component and O_NOFOLLOW was asked.
        if fsat::kind(&st) == libc::S_IFLNK && (follow_last || !last) {
            if no_magic && crate::sys::is_procfs(stack.last().expect("the walk has a start"))? {
                return Err(err(libc::ELOOP));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(err(libc::ELOOP));
            }
            let target = fsat::readlink(cur, &name)?;
            if target.first() == Some(&b'/') {
                if beneath {
                    return Err(err(libc::EXDEV));
                }
                stack.truncate(1);
                stack[0] = open_path(libc::AT_FDCWD, c"/")?;
            }
            todo.extend(components(&target));
            continue;
        }
        if last {
            // Not a link to follow: open it as asked, never through a link swapped in since.
            return fsat::open(cur, &name, flags, mode);
        }
        if fsat::kind(&st) != libc::S_IFDIR {
            return Err(err(libc::ENOTDIR));
        }
        // O_DIRECTORY | O_NOFOLLOW: a link swapped in since the lstat fails the lookup.
        stack.push(open_path(cur, &name)?);
    }
}

/// The components of `path`, reversed (the first one last, to be popped first), without
/// empty ones and `.`.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

/// `name` in `dir` as an `O_PATH` descriptor, not following a final link.
fn open_path(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; the descriptor is owned at once.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_DIRECTORY,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `fd` is an `O_PATH` descriptor of, opened with `flags`.
fn reopen(fd: &OwnedFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    if flags & libc::O_PATH != 0 {
        return fd.try_clone();
    }
    fsat::open(fd.as_raw_fd(), c".", flags, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile_lite::Dir {
        let d = tempfile_lite::Dir::new();
        std::fs::create_dir_all(d.path().join("ws/sub")).unwrap();
        std::fs::write(d.path().join("ws/sub/f"), b"inside").unwrap();
        std::fs::write(d.path().join("secret"), b"outside").unwrap();
        symlink("sub/f", d.path().join("ws/rel")).unwrap();
        symlink("../secret", d.path().join("ws/up")).unwrap();
        symlink(d.path().join("secret"), d.path().join("ws/abs")).unwrap();
        symlink("loop", d.path().join("ws/loop")).unwrap();
        d
    }

    fn ws(d: &tempfile_lite::Dir) -> OwnedFd {
        let p = CString::new(d.path().join("ws").as_os_str().as_bytes()).unwrap();
        open_path(libc::AT_FDCWD, &p).unwrap()
    }

    fn read(fd: OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }

    const BENEATH: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;

    #[test]
    fn stays_beneath_its_start() {
        let d = tree();
        let w = ws(&d);
        let fd = |p: &CStr| open(w.as_raw_fd(), p, libc::O_RDONLY, 0, BENEATH);
        assert_eq!(read(fd(c"sub/f").unwrap()), "inside");
        assert_eq!(read(fd(c"rel").unwrap()), "inside");
        assert_eq!(read(fd(c"sub/../sub/./f").unwrap()), "inside");
        for out in [
            c"up",
            c"abs",
            c"..",
            c"../secret",
            c"sub/../../secret",
            c"/etc/passwd",
        ] {
            let e = fd(out).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{out:?}");
        }
        assert_eq!(fd(c"loop").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert_eq!(fd(c"nope").unwrap_err().raw_os_error(), Some(libc::ENOENT));
        assert_eq!(
            fd(c"sub/f/x").unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
        // O_NOFOLLOW on the last component: the link itself, never its target.
        let link = open(
            w.as_raw_fd(),
            c"up",
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            BENEATH,
        )
        .unwrap();
        assert_eq!(
            fsat::kind(&fsat::fstat(&link).unwrap()),
            libc::S_IFLNK,
            "the link itself"
        );
        // O_CREAT makes the last component, beneath.
        let made = open(
            w.as_raw_fd(),
            c"sub/new",
            libc::O_WRONLY | libc::O_CREAT,
            0o600,
            BENEATH,
        );
        assert!(made.is_ok());
        assert!(d.path().join("ws/sub/new").exists());
    }

    #[test]
    fn follows_no_procfs_link() {
        let d = tree();
        symlink("/proc/self/fd/1", d.path().join("ws/magic")).unwrap();
        let p = CString::new(d.path().join("ws/magic").as_os_str().as_bytes()).unwrap();
        let e = open(
            libc::AT_FDCWD,
            &p,
            libc::O_WRONLY,
            0,
            libc::RESOLVE_NO_MAGICLINKS,
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        // Plain paths anywhere still open.
        let abs = CString::new(d.path().join("secret").as_os_str().as_bytes()).unwrap();
        let fd = open(
            libc::AT_FDCWD,
            &abs,
            libc::O_RDONLY,
            0,
            libc::RESOLVE_NO_MAGICLINKS,
        );
        assert_eq!(read(fd.unwrap()), "outside");
    }

    /// A temporary directory, removed when dropped (the supervisor has no dev-dependencies).
    mod tempfile_lite {
        use std::path::{Path, PathBuf};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Dir {
                let mut raw = [0u8; 8];
                // SAFETY: getrandom fills the live buffer it is given.
                unsafe { libc::getrandom(raw.as_mut_ptr().cast(), raw.len(), 0) };
                let name = format!("sp-resolve-{:016x}", u64::from_ne_bytes(raw));
                let path = std::env::temp_dir().join(name);
                std::fs::create_dir(&path).unwrap();
                Dir(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
