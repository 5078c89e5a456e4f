//! One walk of a tree the tenant controls: its manifest (every path with its type, mode,
//! size, times, symlink target and, when the walk reads, its contents' hash), one name at a
//! time in a directory descriptor, never through a link, within an entry count, a depth, a
//! byte bound and a deadline.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{Fail, Hash, io_fail, join, show};
use crate::fsat;

/// Entries one walk may see; a workspace with more is refused (`too_large`).
pub const MAX_ENTRIES: u64 = 100_000;
/// Directory levels one walk descends; a deeper tree is refused (`too_large`). Each level
/// holds a descriptor and a stack frame, and a path's bytes grow with its depth.
pub const MAX_DEPTH: usize = 1024;
/// What any walk's manifest may hold (paths and entries), whatever the store's bound: the
/// walks for `changes` and `restore` keep a whole manifest too.
pub const MAX_WALK_BYTES: u64 = 64 << 20;
/// What one manifest entry is charged against the bound, besides its path.
pub(super) const ENTRY_BYTES: u64 = 128;
/// How long a walk may take before it gives up (`busy`): a tenant that keeps a tree growing
/// must not hold the call up.
const WALK_DEADLINE: Duration = Duration::from_secs(10);

/// The inode, size, mtime and ctime of a file: unchanged when all four are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) ino: u64,
    pub(super) size: u64,
    pub(super) mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl Stamp {
    pub(super) fn of(st: &libc::stat) -> Stamp {
        Stamp {
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum What {
    Dir,
    /// The contents' hash (in a checkpoint; `None` in a walk that does not read).
    File(Option<Hash>),
    Symlink(Vec<u8>),
    Fifo,
    /// A socket or a device node: recorded, never restored.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) what: What,
    pub(super) mode: u32,
    pub(super) stamp: Stamp,
}

impl Entry {
    /// Whether `now` is this entry unchanged (type, mode, link target, file stamp).
    pub(super) fn same_as(&self, now: &Entry) -> bool {
        let what = match (&self.what, &now.what) {
            (What::File(_), What::File(_)) => self.stamp == now.stamp,
            (a, b) => a == b,
        };
        what && self.mode == now.mode
    }
}

/// Relative path (bytes, `a/b`; the workspace itself is empty) → entry, parents first.
pub(super) type Manifest = BTreeMap<Vec<u8>, Entry>;

/// Reads a file's contents for a `take`: its hash, and the bytes when the store lacks them.
pub(super) type ReadFile<'a> =
    &'a mut dyn FnMut(RawFd, &std::ffi::CStr, &libc::stat, &[u8]) -> Result<Hash, Fail>;

/// One walk of a tree: its manifest, within an entry count, a byte bound and a deadline.
pub(super) struct Walk<'a> {
    manifest: Manifest,
    bytes: u64,
    max_bytes: u64,
    deadline: Instant,
    read: Option<ReadFile<'a>>,
}

impl Walk<'_> {
    fn add(&mut self, path: Vec<u8>, st: &libc::stat, what: What) -> Result<(), Fail> {
        self.bytes += ENTRY_BYTES + path.len() as u64;
        if self.manifest.len() as u64 >= MAX_ENTRIES {
            return Err((
                "too_large",
                format!("the workspace has over {MAX_ENTRIES} entries"),
            ));
        }
        if self.bytes > self.max_bytes {
            return Err((
                "too_large",
                "the workspace's manifest is over the checkpoint bound".into(),
            ));
        }
        if Instant::now() > self.deadline {
            return Err((
                "busy",
                format!("the walk took over {} s", WALK_DEADLINE.as_secs()),
            ));
        }
        let entry = Entry {
            what,
            mode: st.st_mode & 0o7777,
            stamp: Stamp::of(st),
        };
        self.manifest.insert(path, entry);
        Ok(())
    }

    /// Walks the tree under `root` depth first, without recursion (a command's thread has a
    /// small stack, and the tenant chooses the depth): one open directory per level, at most
    /// `MAX_DEPTH` levels.
    fn tree(&mut self, root: OwnedFd) -> Result<(), Fail> {
        /// A directory being listed: its descriptor, the names left, its path.
        struct Level {
            dir: OwnedFd,
            names: std::vec::IntoIter<std::ffi::CString>,
            prefix: Vec<u8>,
        }
        let names = fsat::names(&root).map_err(|e| io_fail(".", e))?;
        let mut stack = vec![Level {
            dir: root,
            names: names.into_iter(),
            prefix: Vec::new(),
        }];
        while let Some(top) = stack.last_mut() {
            let Some(c) = top.names.next() else {
                stack.pop();
                continue;
            };
            let dir = top.dir.as_raw_fd();
            let path = join(&top.prefix, c.to_bytes());
            let st = match fsat::lstat(dir, &c) {
                Ok(st) => st,
                // Gone since it was listed: not there.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(io_fail(&show(&path), e)),
            };
            match fsat::kind(&st) {
                libc::S_IFDIR => {
                    let sub = match fsat::open_dir(dir, &c) {
                        Ok(sub) => sub,
                        // Swapped or gone since the lstat: not a directory of this tree now.
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                            ) =>
                        {
                            continue;
                        }
                        Err(e) => return Err(io_fail(&show(&path), e)),
                    };
                    self.add(path.clone(), &st, What::Dir)?;
                    if stack.len() >= MAX_DEPTH {
                        return Err((
                            "too_large",
                            format!("the workspace is over {MAX_DEPTH} directories deep"),
                        ));
                    }
                    let names = fsat::names(&sub).map_err(|e| io_fail(&show(&path), e))?;
                    stack.push(Level {
                        dir: sub,
                        names: names.into_iter(),
                        prefix: path,
                    });
                }
                libc::S_IFREG => {
                    let hash = match self.read.as_mut() {
                        Some(read) => Some(read(dir, &c, &st, &path)?),
                        None => None,
                    };
                    self.add(path, &st, What::File(hash))?;
                }
                libc::S_IFLNK => {
                    let target = match fsat::readlink(dir, &c) {
                        Ok(t) => t,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                        Err(e) => return Err(io_fail(&show(&path), e)),
                    };
                    self.add(path, &st, What::Symlink(target))?;
                }
                libc::S_IFIFO => self.add(path, &st, What::Fifo)?,
                _ => self.add(path, &st, What::Other)?,
            }
        }
        Ok(())
    }
}

pub(super) fn open_root(root: &str) -> Result<OwnedFd, Fail> {
    let c = std::ffi::CString::new(root).map_err(|_| ("bad_request", "bad root".to_string()))?;
    fsat::open_dir(libc::AT_FDCWD, &c).map_err(|e| io_fail(root, e))
}

/// The manifest of the tree at `root`, reading files with `read` when given.
pub(super) fn walk_root(
    root: &str,
    max_bytes: u64,
    read: Option<ReadFile<'_>>,
) -> Result<Manifest, Fail> {
    let dir = open_root(root)?;
    let st = fsat::fstat(&dir).map_err(|e| io_fail(root, e))?;
    let mut walk = Walk {
        manifest: Manifest::new(),
        bytes: 0,
        max_bytes: max_bytes.min(MAX_WALK_BYTES),
        deadline: Instant::now() + WALK_DEADLINE,
        read,
    };
    walk.add(Vec::new(), &st, What::Dir)?;
    walk.tree(dir)?;
    Ok(walk.manifest)
}

/// Reads the whole regular file `name` in `dir`, at most `limit` bytes (more: `too_large`).
pub(super) fn read_file(
    dir: RawFd,
    name: &std::ffi::CStr,
    path: &[u8],
    limit: u64,
) -> Result<Vec<u8>, Fail> {
    let fd = fsat::open(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .map_err(|e| io_fail(&show(path), e))?;
    let st = fsat::fstat(&fd).map_err(|e| io_fail(&show(path), e))?;
    if fsat::kind(&st) != libc::S_IFREG {
        return Err((
            "busy",
            format!("{} changed during the checkpoint", show(path)),
        ));
    }
    if st.st_size as u64 > limit {
        return Err(too_large(path, st.st_size as u64));
    }
    let mut data = Vec::with_capacity(st.st_size as usize);
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_fail(&show(path), e))?;
    if data.len() as u64 > limit {
        return Err(too_large(path, data.len() as u64));
    }
    Ok(data)
}

pub(super) fn too_large(path: &[u8], size: u64) -> Fail {
    (
        "too_large",
        format!(
            "{} ({size} bytes) does not fit in the checkpoint bound",
            show(path)
        ),
    )
}
