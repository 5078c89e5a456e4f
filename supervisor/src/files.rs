//! File operations for the host, done with the tenant's file credentials: each request runs
//! on a short-lived thread that first takes the tenant's fsgid/fsuid (which also drops that
//! thread's file capabilities), so a symlink the tenant planted can never make the
//! supervisor read or write anything the tenant could not. Opens go through openat2 with
//! `RESOLVE_NO_MAGICLINKS` and refuse procfs, so `/proc/<supervisor>/fd/1` (the stream to the
//! host) or `/proc/<supervisor>/mem`, which the supervisor's own threads may open, stay shut.

use std::ffi::CString;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::sync::Arc;

use sandpool_supervisor::proto::{
    self, Done, FileData, FileKind, FileRequest, FileStat, Frame, Listing, Written,
};

use crate::{Ctx, Reply, sys};

/// Where relative paths start.
pub use sandpool_supervisor::layout::WORKSPACE;
/// Room left in a `Read` reply's frame for its head.
const HEAD_ROOM: usize = 64 << 10;
/// A file thread may recurse (`Delete` with `recursive`) through deep trees.
pub(crate) const STACK: usize = 16 << 20;

/// An absolute path for `path`: itself when absolute, else under the workspace.
pub fn resolve(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else if path.is_empty() || path == "." {
        WORKSPACE.to_string()
    } else {
        format!("{WORKSPACE}/{path}")
    }
}

/// Where a request's path leads.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// An absolute path, resolved as the tenant would (a symlink may lead anywhere the
    /// tenant may go, never onto procfs).
    Anywhere(String),
    /// A relative path, confined to the workspace: its components (no `.` or `..`, `""` for
    /// the workspace itself), resolved with `RESOLVE_BENEATH`, so that no symlink leads out.
    Beneath(String),
}

fn target(path: &str) -> Result<Target, (&'static str, String)> {
    if path.contains('\0') {
        return Err(("bad_request", "path holds a NUL byte".into()));
    }
    if path.starts_with('/') {
        return Ok(Target::Anywhere(path.to_string()));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err((
                    "bad_request",
                    format!("{path:?}: '..' is not allowed in a workspace path"),
                ));
            }
            part => parts.push(part),
        }
    }
    Ok(Target::Beneath(parts.join("/")))
}

/// A path the std functions take for `name` in the directory `dir` is open on: through the
/// descriptor's `/proc/self/fd` entry, which names that very directory.
fn in_dir(dir: &OwnedFd, name: &str) -> String {
    format!("/proc/self/fd/{}/{name}", dir.as_raw_fd())
}

/// The workspace, for lookups beneath it.
fn workspace() -> Result<OwnedFd, (&'static str, String)> {
    sys::openat2(&c_path(WORKSPACE)?, libc::O_PATH | libc::O_DIRECTORY, 0, 0).map_err(fail)
}

/// Opens `rel` beneath the workspace (`""`: the workspace itself).
fn open_beneath(
    rel: &str,
    flags: libc::c_int,
    mode: u32,
) -> Result<OwnedFd, (&'static str, String)> {
    let ws = workspace()?;
    let path = if rel.is_empty() { "." } else { rel };
    // openat2 refuses any flag but O_DIRECTORY and O_NOFOLLOW beside O_PATH.
    let flags = if flags & libc::O_PATH != 0 {
        flags
    } else {
        flags | libc::O_NOCTTY
    };
    sys::openat2_in(
        &ws,
        &c_path(path)?,
        flags,
        mode,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| beneath_error(rel, e))
}

fn beneath_error(rel: &str, e: io::Error) -> (&'static str, String) {
    match e.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::ELOOP) => {
            ("bad_request", format!("{rel:?} leads outside /workspace"))
        }
        _ => (sys::io_code(&e), format!("{rel}: {e}")),
    }
}

/// The directory holding `rel` (opened beneath the workspace) and its last component.
fn parent_of(rel: &str) -> Result<(OwnedFd, String), (&'static str, String)> {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None if rel.is_empty() => {
            return Err((
                "bad_request",
                "the workspace itself cannot be changed so".into(),
            ));
        }
        None => ("", rel),
    };
    let dir = open_beneath(parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    Ok((dir, name.to_string()))
}

/// Creates every missing directory of `rel` (beneath the workspace), like `mkdir -p`.
fn mkdir_beneath(rel: &str) -> Result<(), (&'static str, String)> {
    let mut done = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let next = if done.is_empty() {
            part.to_string()
        } else {
            format!("{done}/{part}")
        };
        match open_beneath(&next, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Ok(_) => {}
            Err(("not_found", _)) => {
                let parent = open_beneath(&done, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                match fs::DirBuilder::new()
                    .mode(0o755)
                    .create(in_dir(&parent, part))
                {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            Err(e) => return Err(e),
        }
        done = next;
    }
    Ok(())
}

/// Handles a `File` frame: parses it on the main thread, runs it on its own thread.
pub fn start(ctx: &Arc<Ctx>, frame: Frame) {
    let id = frame.id;
    let req: FileRequest = match frame.head() {
        Ok(req) => req,
        Err(e) => {
            return ctx
                .out
                .error(id, "bad_request", format!("bad file head: {e}"));
        }
    };
    let body = frame.body;
    let tenant = ctx.tenant;
    if !crate::kernel::get().fsuid {
        // No per-thread file credentials on this kernel: a process of the tenant's does it
        // (the request was parsed above only to refuse a malformed one here).
        drop(req);
        let head = frame.head;
        return crate::worker(ctx, id, "file", 256 << 10, move || {
            crate::tenant_files::run(tenant, head, body)
        });
    }
    crate::worker(ctx, id, "file", STACK, move || {
        sys::become_fs_user(tenant.uid, tenant.gid).map_err(|e| ("io", e.to_string()))?;
        run(req, body)
    });
}

fn fail(e: io::Error) -> (&'static str, String) {
    (sys::io_code(&e), e.to_string())
}

/// As [`fail`], saying which path.
fn named(path: &str, e: io::Error) -> (&'static str, String) {
    (sys::io_code(&e), format!("{path}: {e}"))
}

fn c_path(path: &str) -> Result<CString, (&'static str, String)> {
    CString::new(path).map_err(|_| ("bad_request", "path holds a NUL byte".to_string()))
}

/// Opens `path` without following magic links, and refuses anything on procfs.
fn open(path: &str, flags: libc::c_int, mode: u32) -> Result<OwnedFd, (&'static str, String)> {
    let fd = sys::openat2(
        &c_path(path)?,
        flags | libc::O_NOCTTY,
        mode,
        libc::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| match e.raw_os_error() {
        // ELOOP from a magic link is a refusal, not a loop.
        Some(libc::ELOOP) => ("permission_denied", format!("{path}: {e}")),
        _ => (sys::io_code(&e), format!("{path}: {e}")),
    })?;
    if sys::is_procfs(&fd).map_err(fail)? {
        return Err((
            "permission_denied",
            format!("{path}: files under /proc are not served"),
        ));
    }
    Ok(fd)
}

/// Runs one request (already as the tenant).
pub(crate) fn run(req: FileRequest, body: Vec<u8>) -> Reply {
    match req {
        FileRequest::Read {
            path,
            offset,
            max_bytes,
        } => {
            let flags = libc::O_RDONLY | libc::O_NONBLOCK;
            let fd = match target(&path)? {
                Target::Anywhere(path) => open(&path, flags, 0)?,
                Target::Beneath(rel) => open_beneath(&rel, flags, 0)?,
            };
            read(File::from(fd), &path, offset, max_bytes)
        }
        FileRequest::Write {
            path,
            append,
            mode,
            offset,
            parents,
        } => {
            let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK;
            if offset.is_none() {
                flags |= if append {
                    libc::O_APPEND
                } else {
                    libc::O_TRUNC
                };
            }
            let mode = mode.unwrap_or(0o644);
            let fd = match target(&path)? {
                Target::Anywhere(abs) => {
                    if parents && let Some((dir, _)) = abs.rsplit_once('/') {
                        fs::DirBuilder::new()
                            .recursive(true)
                            .mode(0o755)
                            .create(if dir.is_empty() { "/" } else { dir })
                            .map_err(fail)?;
                    }
                    open(&abs, flags, mode)?
                }
                Target::Beneath(rel) => {
                    if parents && let Some((dir, _)) = rel.rsplit_once('/') {
                        mkdir_beneath(dir)?;
                    }
                    open_beneath(&rel, flags, mode)?
                }
            };
            write(File::from(fd), &path, offset, &body)
        }
        FileRequest::Rename { from, to } => {
            let (from, to) = match (target(&from)?, target(&to)?) {
                (Target::Beneath(from), Target::Beneath(to)) => (from, to),
                (Target::Anywhere(from), Target::Anywhere(to)) => {
                    fs::rename(from, to).map_err(fail)?;
                    return ok(&Done {}, Vec::new());
                }
                _ => {
                    return Err((
                        "bad_request",
                        "both paths of a rename are relative, or both absolute".into(),
                    ));
                }
            };
            let (from_dir, from_name) = parent_of(&from)?;
            let (to_dir, to_name) = parent_of(&to)?;
            fs::rename(in_dir(&from_dir, &from_name), in_dir(&to_dir, &to_name)).map_err(fail)?;
            ok(&Done {}, Vec::new())
        }
        FileRequest::List { path } => {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY;
            let dir = match target(&path)? {
                Target::Anywhere(path) => open(&path, flags, 0)?,
                Target::Beneath(rel) => open_beneath(&rel, flags, 0)?,
            };
            list(dir)
        }
        FileRequest::Stat { path } => {
            let meta = match target(&path)? {
                Target::Anywhere(abs) => fs::symlink_metadata(abs).map_err(fail)?,
                Target::Beneath(rel) if rel.is_empty() => {
                    File::from(open_beneath("", libc::O_RDONLY | libc::O_DIRECTORY, 0)?)
                        .metadata()
                        .map_err(fail)?
                }
                Target::Beneath(rel) => {
                    let (dir, name) = parent_of(&rel)?;
                    fs::symlink_metadata(in_dir(&dir, &name)).map_err(|e| named(&rel, e))?
                }
            };
            ok(&stat(path, &meta), Vec::new())
        }
        FileRequest::Delete { path, recursive } => {
            let shown = path.clone();
            let (_dir, path) = match target(&path)? {
                Target::Anywhere(abs) => (None, abs),
                Target::Beneath(rel) => {
                    let (dir, name) = parent_of(&rel)?;
                    let path = in_dir(&dir, &name);
                    (Some(dir), path)
                }
            };
            let meta = fs::symlink_metadata(&path).map_err(|e| named(&shown, e))?;
            if meta.is_dir() {
                if recursive {
                    fs::remove_dir_all(&path).map_err(fail)?;
                } else {
                    fs::remove_dir(&path).map_err(fail)?;
                }
            } else {
                fs::remove_file(&path).map_err(fail)?;
            }
            ok(&Done {}, Vec::new())
        }
        FileRequest::Mkdir { path, parents } => {
            match target(&path)? {
                Target::Anywhere(abs) => {
                    let mut builder = fs::DirBuilder::new();
                    builder.recursive(parents).mode(0o755);
                    builder.create(abs).map_err(fail)?;
                }
                Target::Beneath(rel) if parents => mkdir_beneath(&rel)?,
                Target::Beneath(rel) => {
                    let (dir, name) = parent_of(&rel)?;
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(in_dir(&dir, &name))
                        .map_err(fail)?;
                }
            }
            ok(&Done {}, Vec::new())
        }
    }
}

fn ok<T: serde::Serialize>(head: &T, body: Vec<u8>) -> Reply {
    Ok((
        serde_json::to_vec(head).map_err(|e| ("io", e.to_string()))?,
        body,
    ))
}

fn regular(file: &File, path: &str) -> Result<Metadata, (&'static str, String)> {
    let meta = file.metadata().map_err(fail)?;
    if meta.is_dir() {
        return Err(("is_directory", format!("{path} is a directory")));
    }
    if !meta.is_file() {
        return Err(("io", format!("{path} is not a regular file")));
    }
    Ok(meta)
}

/// Reads from `file` (opened O_NONBLOCK: opening a FIFO must not wait for a writer).
fn read(file: File, path: &str, offset: u64, max_bytes: u64) -> Reply {
    let size = regular(&file, path)?.len();
    let cap = max_bytes.min((proto::MAX_FRAME_BYTES - HEAD_ROOM) as u64) as usize;
    let want = cap.min(size.saturating_sub(offset) as usize);
    let mut data = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read_at(&mut data[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    }
    data.truncate(got);
    let truncated = offset.saturating_add(got as u64) < size;
    ok(&FileData { size, truncated }, data)
}

fn write(mut file: File, path: &str, offset: Option<u64>, data: &[u8]) -> Reply {
    regular(&file, path)?;
    match offset {
        Some(at) => file.write_all_at(data, at).map_err(fail)?,
        None => file.write_all(data).map_err(fail)?,
    }
    ok(
        &Written {
            bytes: data.len() as u64,
        },
        Vec::new(),
    )
}

/// Lists the directory `dir` is open on (once, without magic links), read through its own
/// descriptor so the tenant cannot swap what is listed between the check and the listing.
fn list(dir: OwnedFd) -> Reply {
    let mut entries = Vec::new();
    let iter = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(fail)?;
    for entry in iter {
        let entry = entry.map_err(fail)?;
        // An entry removed since it was listed is simply not there.
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        entries.push(stat(name, &meta));
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    ok(&Listing { entries }, Vec::new())
}

/// A `FileStat` from lstat-style metadata.
fn stat(name: String, meta: &Metadata) -> FileStat {
    let kind = meta.file_type();
    FileStat {
        name,
        kind: if kind.is_symlink() {
            FileKind::Symlink
        } else if kind.is_dir() {
            FileKind::Dir
        } else if kind.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        },
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        modified_unix: meta.mtime(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths() {
        assert_eq!(resolve("/etc/passwd"), "/etc/passwd");
        assert_eq!(resolve("a/b"), "/workspace/a/b");
        assert_eq!(resolve(""), "/workspace");
        assert_eq!(resolve("."), "/workspace");
        assert_eq!(resolve("../x"), "/workspace/../x");
    }

    #[test]
    fn file_ops_round_trip() {
        let dir = std::env::temp_dir().join(format!("sandpool-files-{}", std::process::id()));
        let d = dir.to_str().unwrap().to_string();
        let req = |v: serde_json::Value| serde_json::from_value::<FileRequest>(v).unwrap();
        run(req(serde_json::json!({"op": "mkdir", "path": d})), vec![]).unwrap();
        let err = run(req(serde_json::json!({"op": "mkdir", "path": d})), vec![]).unwrap_err();
        assert_eq!(err.0, "already_exists");
        let f = format!("{d}/f");
        let w = serde_json::json!({"op": "write", "path": f});
        run(req(w.clone()), b"hello world".to_vec()).unwrap();
        let r = serde_json::json!({"op": "read", "path": f, "offset": 6, "max_bytes": 3});
        let (head, body) = run(req(r), vec![]).unwrap();
        let data: FileData = serde_json::from_slice(&head).unwrap();
        assert_eq!(
            (data.size, data.truncated, &body[..]),
            (11, true, &b"wor"[..])
        );
        let (head, _) = run(req(serde_json::json!({"op": "list", "path": d})), vec![]).unwrap();
        let listing: Listing = serde_json::from_slice(&head).unwrap();
        assert_eq!(listing.entries.len(), 1);
        assert_eq!(
            (listing.entries[0].mode, listing.entries[0].kind),
            (0o644, FileKind::File)
        );
        let err = run(
            req(serde_json::json!({"op": "read", "path": d, "max_bytes": 1})),
            vec![],
        )
        .unwrap_err();
        assert_eq!(err.0, "is_directory");
        let del = serde_json::json!({"op": "delete", "path": d});
        assert_eq!(run(req(del), vec![]).unwrap_err().0, "not_empty");
        let del = serde_json::json!({"op": "delete", "path": d, "recursive": true});
        run(req(del), vec![]).unwrap();
        let st = serde_json::json!({"op": "stat", "path": d});
        assert_eq!(run(req(st), vec![]).unwrap_err().0, "not_found");
        let proc = serde_json::json!({"op": "read", "path": "/proc/self/status", "max_bytes": 9});
        assert_eq!(run(req(proc), vec![]).unwrap_err().0, "permission_denied");
        let fd1 = serde_json::json!({"op": "write", "path": "/proc/self/fd/1"});
        assert_eq!(run(req(fd1), vec![]).unwrap_err().0, "permission_denied");
    }
}
