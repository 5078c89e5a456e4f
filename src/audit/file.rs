//! The file audit log: one append-only JSON-lines file per session,
//! `{data_dir}/audit/{session_id}.jsonl`, one entry (`docs/API.md`'s JSON) per line.
//!
//! Files are opened in append mode and never rewritten. The log keeps each session's open
//! file and chain tail in memory (at most [`OPEN_FILES_MAX`] sessions, all closed when full);
//! the first append of a session after a start reads the file's last line to recover the
//! tail, so a restarted service continues the chain. A file whose last line is unterminated
//! (a write torn by a crash) is not appended to: [`AuditError::Corrupt`].
//!
//! An append is one `write(2)` of one line to the page cache (no `fsync`), made while the
//! log's mutex is held and without an `.await`: cheaper than a hop to a blocking thread, and
//! it keeps each chain's appends in order. One process owns a data directory; two processes
//! appending to one session's file would fork its chain (without Redis there is one replica).
//!
//! Retention: [`FileAuditLog::prune`] removes files not appended to for the retention.
//! [`open`](super::open) calls it when the service starts; a long-running service may call it
//! again from time to time.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::chain::{Tail, seal};
use super::{
    AuditEntry, AuditError, AuditLog, AuditRecord, MAX_READ_ENTRIES, bound_args, check_session_id,
    now_ms,
};

/// Sessions whose files one log keeps open at most; all are closed when a new one would
/// pass it (the next append of each reopens its file and reads its tail again).
pub const OPEN_FILES_MAX: usize = 256;

/// Audit chains in JSON-lines files under a data directory.
pub struct FileAuditLog {
    /// `{data_dir}/audit`.
    dir: PathBuf,
    retention: Duration,
    /// Open files and tails by session id.
    open: Mutex<HashMap<String, OpenChain>>,
}

struct OpenChain {
    file: File,
    tail: Tail,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileAuditLog {
    /// A log under `{data_dir}/audit` (created if missing) whose files are pruned after
    /// `retention` without appends.
    pub fn open(data_dir: &Path, retention: Duration) -> Result<Self, AuditError> {
        let dir = data_dir.join("audit");
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(Self {
            dir,
            retention,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The file of a session's chain.
    pub fn path(&self, session_id: &str) -> Result<PathBuf, AuditError> {
        check_session_id(session_id)?;
        Ok(self.dir.join(format!("{session_id}.jsonl")))
    }

    /// Removes the chains not appended to for the retention (by file modification time);
    /// returns how many were removed.
    pub fn prune(&self) -> Result<usize, AuditError> {
        let cutoff = SystemTime::now()
            .checked_sub(self.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for item in std::fs::read_dir(&self.dir).map_err(io_error(&self.dir))? {
            let path = item.map_err(io_error(&self.dir))?.path();
            let Some(session_id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
            else {
                continue;
            };
            // Checked and removed under the lock, so that an append cannot land in between
            // (into a file about to be unlinked).
            let mut open = self.lock();
            let modified = std::fs::metadata(&path).and_then(|m| m.modified());
            if matches!(modified, Ok(t) if t < cutoff) {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
                open.remove(session_id);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpenChain>> {
        // A panic mid-append leaves at worst a torn last line, which the next open reports.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Opens a session's file for appending and reads its tail.
fn open_chain(path: &Path, session_id: &str) -> Result<OpenChain, AuditError> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_error(path))?;
    let tail = match last_line(&mut file).map_err(io_error(path))? {
        LastLine::Empty => Tail::genesis(),
        LastLine::Torn => {
            return Err(AuditError::Corrupt {
                session_id: session_id.to_string(),
                detail: format!("{} ends with an unterminated line", path.display()),
            });
        }
        LastLine::Line(line) => {
            let entry: AuditEntry =
                serde_json::from_slice(&line).map_err(|e| AuditError::Corrupt {
                    session_id: session_id.to_string(),
                    detail: format!("last line of {}: {e}", path.display()),
                })?;
            Tail::of(&entry)
        }
    };
    Ok(OpenChain { file, tail })
}

enum LastLine {
    Empty,
    Torn,
    Line(Vec<u8>),
}

/// The last line of `file` without its `\n`, read backwards in blocks.
fn last_line(file: &mut File) -> std::io::Result<LastLine> {
    const BLOCK: u64 = 8192;
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(LastLine::Empty);
    }
    let mut line = Vec::new();
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0; (end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        if end == len && block.last() != Some(&b'\n') {
            return Ok(LastLine::Torn);
        }
        if end == len {
            block.pop();
        }
        match block.iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                line.splice(0..0, block[i + 1..].iter().copied());
                return Ok(LastLine::Line(line));
            }
            None => line.splice(0..0, block),
        };
        end = start;
    }
    Ok(LastLine::Line(line))
}

/// The entries of a JSON-lines audit file (at most [`MAX_READ_ENTRIES`], oldest first).
/// An unterminated last line is an error, unless `allow_partial_tail` (a live log's read may
/// race with a line being written: that line is not part of the log yet).
pub fn read_jsonl(path: &Path, allow_partial_tail: bool) -> Result<Vec<AuditEntry>, AuditError> {
    let session = || {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // `split` yields an empty last piece after a final `\n`; anything else is unterminated.
    if lines.pop().is_some_and(|rest| !rest.is_empty()) && !allow_partial_tail {
        return Err(AuditError::Corrupt {
            session_id: session(),
            detail: format!("{} ends with an unterminated line", path.display()),
        });
    }
    lines
        .into_iter()
        .take(MAX_READ_ENTRIES)
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|e| AuditError::Corrupt {
                session_id: session(),
                detail: format!("line {} of {}: {e}", i + 1, path.display()),
            })
        })
        .collect()
}

#[async_trait]
impl AuditLog for FileAuditLog {
    async fn append(&self, mut record: AuditRecord) -> Result<AuditEntry, AuditError> {
        let path = self.path(&record.session_id)?;
        record.args = bound_args(record.args);
        let session_id = record.session_id.clone();
        let mut open = self.lock();
        if open.len() >= OPEN_FILES_MAX && !open.contains_key(&session_id) {
            open.clear();
        }
        let chain = match open.entry(session_id.clone()) {
            Entry::Occupied(chain) => chain.into_mut(),
            Entry::Vacant(slot) => slot.insert(open_chain(&path, &session_id)?),
        };
        let entry = seal(record, &chain.tail, now_ms());
        let mut line = serde_json::to_vec(&entry).map_err(|e| AuditError::Corrupt {
            session_id: session_id.clone(),
            detail: format!("entry does not serialize: {e}"),
        })?;
        line.push(b'\n');
        if let Err(e) = chain.file.write_all(&line) {
            // What reached the file is unknown: reopen (and read the tail) next time.
            open.remove(&session_id);
            return Err(io_error(&path)(e));
        }
        chain.tail = Tail::of(&entry);
        Ok(entry)
    }

    async fn read(&self, session_id: &str) -> Result<Vec<AuditEntry>, AuditError> {
        let path = self.path(session_id)?;
        tokio::task::spawn_blocking(move || read_jsonl(&path, true))
            .await
            .map_err(|e| AuditError::Unavailable(format!("audit read task failed: {e}")))?
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}
