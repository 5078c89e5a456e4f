//! Workspace checkpoints: the state of `/workspace` recorded before a tool call, so that the
//! call (and every later one) can be undone.
//!
//! A checkpoint is a manifest (every path with its type, mode, size, times and, for a file,
//! the SHA-256 of its contents; for a symlink, its target) plus the contents themselves, kept
//! once per hash. A file whose inode, size, mtime and ctime are those of the last checkpoint
//! is not read again, so checkpointing an unchanged workspace costs a walk, not a copy.
//!
//! The store is this process's own memory: root's, which the tenant cannot read, write or
//! signal, and charged to the sandbox's memory limit, not the host's. It stays within the
//! bound each `take` names, the oldest checkpoints dropped first; the scrub clears it and the
//! verification reports a store that is not empty.
//!
//! The tenant controls the tree, so the walk and the restore look up one name at a time in a
//! directory descriptor and never follow a link (`fsat`); a file is read only once it is open
//! and seen to be a regular file (a FIFO never blocks us); a file's size is checked against
//! the bound before it is read (a huge sparse file is refused, not read); and a walk stops at
//! `MAX_ENTRIES` entries or its deadline. A restore runs only while no command does.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sandpool_supervisor::proto::{
    Changes, CheckpointReport, CheckpointRequest, Done, ExecCheckpoint, Failure, Frame, Taken,
};
use sha2::{Digest, Sha256};

mod restore;
mod walk;

use restore::restore;
use walk::{ENTRY_BYTES, Manifest, Stamp, What, read_file, too_large, walk_root};

use crate::{Ctx, Reply};

/// Paths listed per kind of change; more set `truncated`.
const MAX_LISTED: usize = 1000;
/// A restore and a walk recurse through tenant-made trees of any depth.
const STACK: usize = 64 << 20;

type Hash = [u8; 32];
type Fail = (&'static str, String);

/// A hasher for keys that are random already (SHA-256 digests) or nearly so (inode numbers):
/// their own first 8 bytes. SipHash on every file of every walk costs more than the lookup.
#[derive(Default)]
struct KeyBits(u64);

impl std::hash::Hasher for KeyBits {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Inode numbers are small and sequential: spread them over the table.
        self.0 ^= n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<KeyBits>>;

struct Checkpoint {
    label: String,
    manifest: Arc<Manifest>,
    /// What the manifest is charged against the bound.
    manifest_bytes: u64,
}

struct Blob {
    data: Vec<u8>,
    refs: u32,
}

/// Every checkpoint of this sandbox, oldest first, and the contents they share.
#[derive(Default)]
pub struct Store {
    checkpoints: Vec<Checkpoint>,
    blobs: FastMap<Hash, Blob>,
    /// Inode → the stamp and hash of the file as the last `take` saw it.
    seen: FastMap<u64, (Stamp, Hash)>,
    bytes: u64,
}

impl Store {
    /// Checkpoints held.
    pub fn len(&self) -> usize {
        self.checkpoints.len()
    }

    /// Drops every checkpoint and everything they held.
    pub fn clear(&mut self) {
        *self = Store::default();
    }

    fn release(&mut self, cp: Checkpoint) {
        self.bytes -= cp.manifest_bytes;
        for entry in cp.manifest.values() {
            if let What::File(Some(hash)) = &entry.what
                && let Some(blob) = self.blobs.get_mut(hash)
            {
                blob.refs -= 1;
                if blob.refs == 0 {
                    self.bytes -= blob.data.len() as u64;
                    self.blobs.remove(hash);
                }
            }
        }
    }

    fn position(&self, label: &str) -> Option<usize> {
        self.checkpoints.iter().position(|c| c.label == label)
    }

    /// Drops the checkpoints after index `at`; their labels.
    fn drop_after(&mut self, at: usize) -> Vec<String> {
        let later: Vec<Checkpoint> = self.checkpoints.drain(at + 1..).collect();
        let labels = later.iter().map(|c| c.label.clone()).collect();
        for cp in later {
            self.release(cp);
        }
        labels
    }
}

/// Handles a `Checkpoint` frame on its own thread, as root.
pub fn start(ctx: &Arc<Ctx>, frame: Frame) {
    let id = frame.id;
    let req: CheckpointRequest = match frame.head() {
        Ok(req) => req,
        Err(e) => {
            return ctx
                .out
                .error(id, "bad_request", format!("bad checkpoint head: {e}"));
        }
    };
    let thread_ctx = Arc::clone(ctx);
    crate::worker(ctx, id, "checkpoint", STACK, move || {
        let mut store = thread_ctx
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        run(&thread_ctx, &mut store, req, crate::files::WORKSPACE)
    });
}

/// The checkpoint an `Exec` asks for, taken on the command's thread before it starts: how
/// long it took, or why there is none.
pub fn take_for_exec(ctx: &Ctx, spec: &ExecCheckpoint) -> (u64, Result<(), Failure>) {
    let started = Instant::now();
    let mut store = ctx
        .checkpoints
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let result = take(
        &mut store,
        &spec.label,
        spec.max_bytes,
        crate::files::WORKSPACE,
    )
    .map(|_| ())
    .map_err(|(code, message)| Failure {
        code: code.to_string(),
        message,
    });
    (started.elapsed().as_micros() as u64, result)
}

/// The `Exit`'s report of an `Exec`'s checkpoint: with what the command changed.
pub fn after_exec(
    ctx: &Ctx,
    spec: &ExecCheckpoint,
    (take_micros, taken): (u64, Result<(), Failure>),
) -> CheckpointReport {
    let changes = taken.is_ok().then(|| {
        let store = ctx
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let then = Arc::clone(&store.checkpoints[store.position(&spec.label)?].manifest);
        drop(store);
        let now = walk_root(crate::files::WORKSPACE, u64::MAX, None).ok()?;
        Some(changes(&then, &now))
    });
    CheckpointReport {
        error: taken.err(),
        take_micros,
        changes: changes.flatten(),
    }
}

fn run(ctx: &Ctx, store: &mut Store, req: CheckpointRequest, root: &str) -> Reply {
    match req {
        CheckpointRequest::Take { label, max_bytes } => {
            let taken = take(store, &label, max_bytes, root)?;
            reply(&taken)
        }
        CheckpointRequest::Changes { label } => {
            let at = store
                .position(&label)
                .ok_or_else(|| no_checkpoint(&label))?;
            let then = Arc::clone(&store.checkpoints[at].manifest);
            let now = walk_root(root, u64::MAX, None)?;
            reply(&changes(&then, &now))
        }
        CheckpointRequest::Restore { label } => {
            let running = ctx.execs.len();
            if running > 0 {
                return Err((
                    "busy",
                    format!("{running} command(s) of the session are running"),
                ));
            }
            let restored = restore(store, &label, root, ctx.tenant)?;
            reply(&restored)
        }
        CheckpointRequest::Clear {} => {
            store.clear();
            reply(&Done {})
        }
    }
}

fn reply<T: serde::Serialize>(head: &T) -> Reply {
    Ok((
        serde_json::to_vec(head).map_err(|e| ("io", e.to_string()))?,
        Vec::new(),
    ))
}

fn no_checkpoint(label: &str) -> Fail {
    (
        "not_found",
        format!("no checkpoint {label:?}: it was dropped, undone or never taken"),
    )
}

fn io_fail(what: &str, e: io::Error) -> Fail {
    (crate::sys::io_code(&e), format!("{what}: {e}"))
}

fn show(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        name.to_vec()
    } else {
        [prefix, b"/", name].concat()
    }
}

/// Records the workspace as checkpoint `label` (replacing one of that label).
fn take(store: &mut Store, label: &str, max_bytes: u64, root: &str) -> Result<Taken, Fail> {
    if let Some(at) = store.position(label) {
        let old = store.checkpoints.remove(at);
        store.release(old);
    }
    let mut fresh: FastMap<Hash, Vec<u8>> = FastMap::default();
    let mut seen: FastMap<u64, (Stamp, Hash)> = FastMap::default();
    let mut read_bytes = 0u64;
    let manifest = {
        let (blobs, old_seen) = (&store.blobs, &store.seen);
        let mut read = |dir: RawFd, name: &std::ffi::CStr, st: &libc::stat, path: &[u8]| {
            let stamp = Stamp::of(st);
            if let Some((was, hash)) = old_seen.get(&stamp.ino)
                && *was == stamp
                && (blobs.contains_key(hash) || fresh.contains_key(hash))
            {
                seen.insert(stamp.ino, (stamp, *hash));
                return Ok(*hash);
            }
            let room = max_bytes.saturating_sub(read_bytes);
            if stamp.size > room {
                return Err(too_large(path, stamp.size));
            }
            let data = read_file(dir, name, path, room)?;
            let hash: Hash = Sha256::digest(&data).into();
            seen.insert(stamp.ino, (stamp, hash));
            if !blobs.contains_key(&hash) && !fresh.contains_key(&hash) {
                read_bytes += data.len() as u64;
                fresh.insert(hash, data);
            }
            Ok(hash)
        };
        walk_root(root, max_bytes, Some(&mut read))?
    };
    let manifest_bytes = manifest
        .keys()
        .map(|p| ENTRY_BYTES + p.len() as u64)
        .sum::<u64>();
    if manifest_bytes + read_bytes > max_bytes {
        return Err((
            "too_large",
            format!(
                "the workspace needs {} bytes, over the checkpoint bound of {max_bytes}",
                manifest_bytes + read_bytes
            ),
        ));
    }
    for (hash, data) in fresh {
        store.bytes += data.len() as u64;
        store.blobs.insert(hash, Blob { data, refs: 0 });
    }
    for entry in manifest.values() {
        if let What::File(Some(hash)) = &entry.what
            && let Some(blob) = store.blobs.get_mut(hash)
        {
            blob.refs += 1;
        }
    }
    store.seen = seen;
    // An unchanged workspace shares the last manifest.
    let manifest = match store.checkpoints.last() {
        Some(last) if *last.manifest == manifest => Arc::clone(&last.manifest),
        _ => Arc::new(manifest),
    };
    let entries = manifest.len() as u64;
    store.bytes += manifest_bytes;
    store.checkpoints.push(Checkpoint {
        label: label.to_string(),
        manifest,
        manifest_bytes,
    });
    let mut dropped = Vec::new();
    while store.bytes > max_bytes && store.checkpoints.len() > 1 {
        let oldest = store.checkpoints.remove(0);
        dropped.push(oldest.label.clone());
        store.release(oldest);
    }
    Ok(Taken {
        entries,
        read_bytes,
        store_bytes: store.bytes,
        dropped,
    })
}

/// The paths that differ between `then` and `now`.
fn changes(then: &Manifest, now: &Manifest) -> Changes {
    let mut out = Changes::default();
    let push = |list: &mut Vec<String>, path: &[u8], truncated: &mut bool| {
        if list.len() < MAX_LISTED {
            list.push(show(path));
        } else {
            *truncated = true;
        }
    };
    for (path, entry) in now {
        match then.get(path) {
            None => push(&mut out.added, path, &mut out.truncated),
            // A directory's own times move with its entries; only its mode is a change.
            Some(was) if !was.same_as(entry) => push(&mut out.modified, path, &mut out.truncated),
            Some(_) => {}
        }
    }
    for path in then.keys() {
        if !now.contains_key(path) {
            push(&mut out.removed, path, &mut out.truncated);
        }
    }
    out
}

/// Directory descriptors by relative path, opened one component at a time without links.
/// What the verification reports of the store: one finding per checkpoint held.
pub fn findings(store: &Mutex<Store>) -> Vec<String> {
    let store = store.lock().unwrap_or_else(PoisonError::into_inner);
    store
        .checkpoints
        .iter()
        .map(|c| format!("checkpoint:{}", c.label))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tenant;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn tree() -> (String, Tenant) {
        let dir = std::env::temp_dir().join(format!(
            "sandpool-ckpt-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: plain calls.
        let tenant = Tenant {
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        };
        (dir.to_str().unwrap().to_string(), tenant)
    }

    #[test]
    fn take_change_restore() {
        let (root, tenant) = tree();
        let p = |s: &str| format!("{root}/{s}");
        std::fs::write(p("a.txt"), b"hello").unwrap();
        std::fs::create_dir(p("d")).unwrap();
        std::fs::write(p("d/b.bin"), [0u8, 1, 2, 255]).unwrap();
        symlink("/etc/passwd", p("link")).unwrap();
        let mode_then = std::fs::metadata(p("d/b.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let mut store = Store::default();
        let t = take(&mut store, "c1", 1 << 20, &root).unwrap();
        assert_eq!(t.entries, 5);
        assert_eq!(t.read_bytes, 9);
        // Nothing changed: nothing read.
        let t2 = take(&mut store, "c2", 1 << 20, &root).unwrap();
        assert_eq!(t2.read_bytes, 0);
        std::fs::write(p("a.txt"), b"damaged").unwrap();
        std::fs::set_permissions(p("d/b.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(p("link")).unwrap();
        symlink("/", p("link")).unwrap();
        std::fs::write(p("new"), b"x").unwrap();
        std::fs::rename(p("d"), p("e")).unwrap();
        let now = walk_root(&root, u64::MAX, None).unwrap();
        let ch = changes(&store.checkpoints[1].manifest, &now);
        assert_eq!(ch.added, vec!["e", "e/b.bin", "new"]);
        assert_eq!(ch.modified, vec!["a.txt", "link"]);
        assert_eq!(ch.removed, vec!["d", "d/b.bin"]);
        let r = restore(&mut store, "c1", &root, tenant).unwrap();
        assert_eq!(r.dropped, vec!["c2"]);
        assert_eq!(std::fs::read(p("a.txt")).unwrap(), b"hello");
        assert_eq!(std::fs::read(p("d/b.bin")).unwrap(), [0u8, 1, 2, 255]);
        assert!(!std::path::Path::new(&p("new")).exists());
        assert!(!std::path::Path::new(&p("e")).exists());
        assert_eq!(
            std::fs::read_link(p("link")).unwrap().to_str(),
            Some("/etc/passwd")
        );
        assert_eq!(
            std::fs::metadata(p("d/b.bin"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            mode_then
        );
        let now = walk_root(&root, u64::MAX, None).unwrap();
        let ch = changes(&store.checkpoints[0].manifest, &now);
        assert!(ch.added.is_empty() && ch.removed.is_empty(), "{ch:?}");
        assert!(restore(&mut store, "c2", &root, tenant).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bounds_hold() {
        let (root, _) = tree();
        std::fs::write(format!("{root}/big"), vec![7u8; 4096]).unwrap();
        let mut store = Store::default();
        assert_eq!(
            take(&mut store, "c", 1024, &root).unwrap_err().0,
            "too_large"
        );
        assert_eq!(store.len(), 0);
        // Two checkpoints of different contents do not both fit: the older goes.
        let t = take(&mut store, "a", 6000, &root).unwrap();
        assert!(t.dropped.is_empty());
        std::fs::write(format!("{root}/big"), vec![8u8; 4096]).unwrap();
        let t = take(&mut store, "b", 6000, &root).unwrap();
        assert_eq!(t.dropped, vec!["a"]);
        assert!(store.bytes <= 6000);
        store.clear();
        assert_eq!((store.len(), store.bytes), (0, 0));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
