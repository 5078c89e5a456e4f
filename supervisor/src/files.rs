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
const STACK: usize = 16 << 20;

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
    crate::worker(ctx, id, "file", STACK, move || {
        sys::become_fs_user(tenant.uid, tenant.gid).map_err(|e| ("io", e.to_string()))?;
        run(req, body)
    });
}

fn fail(e: io::Error) -> (&'static str, String) {
    (sys::io_code(&e), e.to_string())
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
fn run(req: FileRequest, body: Vec<u8>) -> Reply {
    match req {
        FileRequest::Read {
            path,
            offset,
            max_bytes,
        } => read(&resolve(&path), offset, max_bytes),
        FileRequest::Write { path, append, mode } => {
            write(&resolve(&path), append, mode.unwrap_or(0o644), &body)
        }
        FileRequest::List { path } => list(&resolve(&path)),
        FileRequest::Stat { path } => {
            let meta = fs::symlink_metadata(resolve(&path)).map_err(fail)?;
            ok(&stat(path, &meta), Vec::new())
        }
        FileRequest::Delete { path, recursive } => {
            let path = resolve(&path);
            let meta = fs::symlink_metadata(&path).map_err(fail)?;
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
            let mut builder = fs::DirBuilder::new();
            builder.recursive(parents).mode(0o755);
            builder.create(resolve(&path)).map_err(fail)?;
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

fn read(path: &str, offset: u64, max_bytes: u64) -> Reply {
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = File::from(open(path, libc::O_RDONLY | libc::O_NONBLOCK, 0)?);
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

fn write(path: &str, append: bool, mode: u32, data: &[u8]) -> Reply {
    let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK;
    flags |= if append {
        libc::O_APPEND
    } else {
        libc::O_TRUNC
    };
    let fd = open(path, flags, mode)?;
    let mut file = File::from(fd);
    regular(&file, path)?;
    file.write_all(data).map_err(fail)?;
    ok(
        &Written {
            bytes: data.len() as u64,
        },
        Vec::new(),
    )
}

fn list(path: &str) -> Reply {
    // The directory is opened once, without magic links, and read through its own descriptor
    // so the tenant cannot swap what is listed between the check and the listing.
    let dir = open(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
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
