//! Restoring a checkpoint: what the checkpoint lacks (or has as another type) is removed,
//! children first; then everything of it is made again, parents first, as root, through
//! directory descriptors, owned by the tenant with the recorded mode and mtime.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use sandpool_supervisor::proto::Restored;

use super::walk::{Entry, What, open_root, walk_root};
use super::{Fail, Store, no_checkpoint, show};
use crate::{Tenant, fsat};

struct Dirs {
    root: OwnedFd,
    open: HashMap<Vec<u8>, OwnedFd>,
}

impl Dirs {
    fn fd(&mut self, path: &[u8]) -> io::Result<RawFd> {
        if path.is_empty() {
            return Ok(self.root.as_raw_fd());
        }
        if let Some(fd) = self.open.get(path) {
            return Ok(fd.as_raw_fd());
        }
        let (parent, name) = split(path);
        let parent_fd = self.fd(parent)?;
        let fd = fsat::open_dir(parent_fd, &fsat::name(name)?)?;
        let raw = fd.as_raw_fd();
        self.open.insert(path.to_vec(), fd);
        Ok(raw)
    }

    /// Forgets `path` and everything under it (it was removed).
    fn forget(&mut self, path: &[u8]) {
        self.open.retain(|p, _| {
            !(p == path || (p.starts_with(path) && p.get(path.len()) == Some(&b'/')))
        });
    }
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (&[], path),
    }
}

/// Restores the workspace to checkpoint `label`, and drops every later checkpoint.
pub(super) fn restore(
    store: &mut Store,
    label: &str,
    root: &str,
    tenant: Tenant,
) -> Result<Restored, Fail> {
    let at = store.position(label).ok_or_else(|| no_checkpoint(label))?;
    let target = Arc::clone(&store.checkpoints[at].manifest);
    let now = walk_root(root, u64::MAX, None)?;
    let mut dirs = Dirs {
        root: open_root(root)?,
        open: HashMap::new(),
    };
    let (mut written, mut removed) = (0u64, 0u64);
    // Removals, children before their parents: what the checkpoint lacks, or has as
    // another type.
    let mut gone: HashSet<&[u8]> = HashSet::new();
    for (path, entry) in now.iter().rev() {
        if path.is_empty() {
            continue;
        }
        let keep = target.get(path).is_some_and(|t| {
            std::mem::discriminant(&t.what) == std::mem::discriminant(&entry.what)
        });
        if keep {
            continue;
        }
        remove(&mut dirs, path, matches!(entry.what, What::Dir))
            .map_err(|e| restore_fail(&format!("removing {}", show(path)), e))?;
        gone.insert(path);
        removed += 1;
    }
    // Then everything of the checkpoint, parents first.
    for (path, entry) in target.iter() {
        let current = now.get(path).filter(|_| !gone.contains(path.as_slice()));
        if current.is_some_and(|c| entry.same_as(c)) {
            continue;
        }
        put(store, &mut dirs, path, entry, current, tenant)
            .map_err(|e| restore_fail(&format!("restoring {}", show(path)), e))?;
        written += 1;
    }
    // Directory times last: restoring their entries moved them.
    for (path, entry) in target.iter().rev() {
        if matches!(entry.what, What::Dir) && !path.is_empty() {
            let (parent, name) = split(path);
            if let (Ok(fd), Ok(name)) = (dirs.fd(parent), fsat::name(name)) {
                let _ = fsat::set_mtime(fd, &name, entry.stamp.mtime.0, entry.stamp.mtime.1);
            }
        }
    }
    let dropped = store.drop_after(at);
    Ok(Restored {
        written,
        removed,
        dropped,
    })
}

/// A restore that failed half-way: the workspace is full (`no_space`), or it changed under
/// the restore (a process of the tenant's still at work): `busy`, and the checkpoint is kept
/// for another try.
fn restore_fail(what: &str, e: io::Error) -> Fail {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => ("no_space", format!("{what}: {e}")),
        _ => (
            "busy",
            format!(
                "the workspace changed during the undo ({what}: {e}); the checkpoint is kept: try again once nothing else writes to it"
            ),
        ),
    }
}

fn remove(dirs: &mut Dirs, path: &[u8], is_dir: bool) -> io::Result<()> {
    let (parent, name) = split(path);
    let parent_fd = dirs.fd(parent)?;
    let name = fsat::name(name)?;
    if is_dir {
        dirs.forget(path);
        match fsat::unlink(parent_fd, &name, true) {
            // Filled again since the walk: empty it whole (remove_dir_all never follows a
            // link).
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => std::fs::remove_dir_all(
                format!("/proc/self/fd/{parent_fd}/{}", name.to_string_lossy()),
            ),
            other => other,
        }
    } else {
        match fsat::unlink(parent_fd, &name, false) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

/// Makes `path` what `entry` says (its parent exists by now). `current` is what is there.
fn put(
    store: &Store,
    dirs: &mut Dirs,
    path: &[u8],
    entry: &Entry,
    current: Option<&Entry>,
    tenant: Tenant,
) -> io::Result<()> {
    let (uid, gid) = (tenant.uid, tenant.gid);
    if path.is_empty() {
        return fsat::own_and_mode(&dirs.root, uid, gid, entry.mode);
    }
    let (parent, name) = split(path);
    let parent_fd = dirs.fd(parent)?;
    let name = fsat::name(name)?;
    match &entry.what {
        What::Dir => {
            if current.is_none() {
                fsat::mkdir(parent_fd, &name, 0o700)?;
            }
            let fd = fsat::open_dir(parent_fd, &name)?;
            fsat::own_and_mode(&fd, uid, gid, entry.mode)
        }
        What::File(hash) => {
            let data = hash
                .and_then(|h| store.blobs.get(&h))
                .map(|b| b.data.as_slice())
                .ok_or_else(|| io::Error::other("the checkpoint lacks this file's contents"))?;
            // A new file every time: writing through the old one would change every hard
            // link to it too.
            if current.is_some() {
                fsat::unlink(parent_fd, &name, false)?;
            }
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            let fd = fsat::open(parent_fd, &name, flags, 0o600)?;
            fsat::own_and_mode(&fd, uid, gid, entry.mode)?;
            let file = std::fs::File::from(fd);
            std::os::unix::fs::FileExt::write_all_at(&file, data, 0)?;
            let (sec, nsec) = entry.stamp.mtime;
            fsat::set_mtime(parent_fd, &name, sec, nsec)
        }
        What::Symlink(target) => {
            if current.is_some() {
                fsat::unlink(parent_fd, &name, false)?;
            }
            fsat::symlink(target, parent_fd, &name)?;
            fsat::lchown(parent_fd, &name, uid, gid)
        }
        What::Fifo => {
            if current.is_none() {
                fsat::mkfifo(parent_fd, &name, 0o600)?;
            }
            // Through a descriptor of the FIFO itself: a link swapped in since is refused.
            let fd = fsat::open(parent_fd, &name, libc::O_PATH, 0)?;
            if fsat::kind(&fsat::fstat(&fd)?) != libc::S_IFIFO {
                return Err(io::Error::other("no longer a FIFO"));
            }
            fsat::own_and_mode_path(&fd, uid, gid, entry.mode)
        }
        // Sockets and devices are not made again.
        What::Other => Ok(()),
    }
}
