//! Frames and their heads. See the crate documentation for the layout. (Over 400 lines: it is
//! the list of every head both sides speak, each a plain serde type; splitting it would only
//! scatter the protocol.)

use serde::{Deserialize, Serialize};

/// The largest frame either side accepts; a bigger length is a protocol error that ends the
/// link (the peer is broken or hostile, and nothing after it can be trusted to be aligned).
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// Output bytes a command may have in flight before the host grants more with `Credit`.
pub const DEFAULT_WINDOW_BYTES: u32 = 256 << 10;
/// The most output one `Stdout`/`Stderr` frame carries.
pub const MAX_CHUNK_BYTES: usize = 32 << 10;
/// Bytes of the fixed part after the length field: kind, generation, holder, id, head length.
const FIXED_BYTES: usize = 1 + 8 + 8 + 8 + 4;

/// A request's id: chosen by the host, unique per link. The host starts each link's ids at a
/// random 64-bit base, so that ids of two links to one supervisor never collide (a frozen
/// replica's link and the link of the replica that took its sandbox over).
pub type RequestId = u64;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    // Host → supervisor.
    /// Run a command: head `ExecRequest`, body = its whole stdin (closed after it).
    Exec = 1,
    /// Kill the command with this id, with its whole process tree. No reply of its own: the
    /// command's `Exit` follows.
    Kill = 2,
    /// Grant the command more output window: body = u32 BE bytes.
    Credit = 3,
    /// A file operation as the tenant: head `FileRequest`, body = data for `write`.
    File = 4,
    /// Kill every tenant process, empty every writable path and restore it, then verify:
    /// head `ScrubRequest`; reply `Result` with head `Verdict`.
    Scrub = 5,
    /// Only the verification pass of `Scrub`, without judging the paths' times (only a scrub
    /// sets them): head `ScrubRequest`; reply head `Verdict`.
    Verify = 6,
    /// Liveness: reply `Result` with head `Pong`.
    Ping = 7,
    /// Workspace checkpoints (take, diff, restore, clear), done by the supervisor as root in
    /// a store the tenant cannot reach: head `CheckpointRequest`.
    Checkpoint = 8,

    // Supervisor → host.
    /// The command started: head `Started`.
    Started = 64,
    /// Command output on stdout: body = bytes.
    Stdout = 65,
    /// Command output on stderr: body = bytes.
    Stderr = 66,
    /// The command ended (last frame of an `Exec`): head `ExitStatus`.
    Exit = 67,
    /// The answer to `File`, `Scrub`, `Verify` or `Ping`: a head and maybe a body.
    Result = 68,
    /// The request failed: head `Failure`. Last frame of its request.
    Error = 69,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            1 => Exec,
            2 => Kill,
            3 => Credit,
            4 => File,
            5 => Scrub,
            6 => Verify,
            7 => Ping,
            8 => Checkpoint,
            64 => Started,
            65 => Stdout,
            66 => Stderr,
            67 => Exit,
            68 => Result,
            69 => Error,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    /// The fencing token of the lease a host request is made under (its generation). The
    /// supervisor serves only the newest generation it has seen: a request of an older one
    /// is refused (`fenced`), and a newer one kills every command of older ones first.
    /// Replies carry the supervisor's current generation.
    pub generation: u64,
    /// Who made the request: a hash of the host instance's id (see [`holder_of`]). The
    /// supervisor remembers the holder of its newest generation and reports it in `Pong`, so
    /// that a restarted replica can see a sandbox labeled with its id is served by another.
    pub holder: u64,
    pub id: RequestId,
    /// JSON, or empty.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The declared length is over `MAX_FRAME_BYTES` or too small for the fixed part.
    BadLength(usize),
    /// The head length does not fit in the frame.
    BadHeadLength(usize),
    UnknownKind(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadLength(n) => write!(f, "bad frame length {n}"),
            DecodeError::BadHeadLength(n) => write!(f, "bad head length {n}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Frame {
    pub fn new(kind: Kind, id: RequestId) -> Frame {
        Frame {
            kind,
            generation: 0,
            holder: 0,
            id,
            head: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A frame whose head is `head` as JSON.
    pub fn with_head<T: Serialize>(kind: Kind, id: RequestId, head: &T) -> Frame {
        Frame {
            kind,
            generation: 0,
            holder: 0,
            id,
            // Serializing these plain structs cannot fail.
            head: serde_json::to_vec(head).unwrap_or_default(),
            body: Vec::new(),
        }
    }

    pub fn body(mut self, body: Vec<u8>) -> Frame {
        self.body = body;
        self
    }

    /// The frame with `head` (JSON already).
    pub fn head_bytes(mut self, head: Vec<u8>) -> Frame {
        self.head = head;
        self
    }

    /// The frame made under `generation` by `holder`.
    pub fn fenced(mut self, generation: u64, holder: u64) -> Frame {
        self.generation = generation;
        self.holder = holder;
        self
    }

    /// The head parsed as `T`.
    pub fn head<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.head)
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let len = FIXED_BYTES + self.head.len() + self.body.len();
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.holder.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&(self.head.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.body);
        out
    }

    /// Takes one frame off the front of `buf` when a whole one is there: `Ok(None)` when more
    /// bytes are needed. An error means the stream is broken for good.
    pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if !(FIXED_BYTES..=MAX_FRAME_BYTES).contains(&len) {
            return Err(DecodeError::BadLength(len));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = Kind::from_u8(buf[4]).ok_or(DecodeError::UnknownKind(buf[4]))?;
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let (generation, holder, id) = (u64_at(5), u64_at(13), u64_at(21));
        let head_len = u32::from_be_bytes([buf[29], buf[30], buf[31], buf[32]]) as usize;
        if head_len > len - FIXED_BYTES {
            return Err(DecodeError::BadHeadLength(head_len));
        }
        let head_start = 4 + FIXED_BYTES;
        let body_start = head_start + head_len;
        let frame = Frame {
            kind,
            generation,
            holder,
            id,
            head: buf[head_start..body_start].to_vec(),
            body: buf[body_start..4 + len].to_vec(),
        };
        buf.drain(..4 + len);
        Ok(Some(frame))
    }
}

/// Head of `Exec`. The command runs as the tenant, in its own session and process group, with
/// exactly this environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` of `env`.
    pub argv: Vec<String>,
    /// `NAME=value` pairs: the whole environment.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// The supervisor kills the command's tree after this long and reports `timed_out`.
    pub timeout_ms: u64,
    /// Output bytes that may be sent before the first `Credit`.
    pub window: u32,
    /// A checkpoint of the workspace to take right before the command starts; the `Exit`
    /// then reports it and what the command changed (one round trip, not three).
    #[serde(default)]
    pub checkpoint: Option<ExecCheckpoint>,
}

/// The checkpoint an `Exec` asks for: as `CheckpointRequest::Take`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExecCheckpoint {
    pub label: String,
    pub max_bytes: u64,
}

/// What became of an `Exec`'s checkpoint, in its `Exit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Why none was taken (`too_large`, `busy`...); `None` when it was.
    pub error: Option<Failure>,
    /// How long the take took, in microseconds.
    pub take_micros: u64,
    /// What the command changed (`None` when no checkpoint was taken or the walk failed).
    pub changes: Option<Changes>,
}

/// Head of `Started`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    pub pid: i32,
}

/// Head of `Exit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, when the command exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// It was still running at `timeout_ms` and was killed.
    pub timed_out: bool,
    /// It was killed on the host's `Kill`.
    pub killed: bool,
    /// The checkpoint the request asked for, if it did.
    #[serde(default)]
    pub checkpoint: Option<CheckpointReport>,
}

/// What a `File` request does. Paths are absolute, or relative to the workspace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FileRequest {
    /// Reply head `FileData`, body = at most `max_bytes` bytes from `offset`.
    Read {
        path: String,
        #[serde(default)]
        offset: u64,
        max_bytes: u64,
    },
    /// Creates or truncates (or appends to) the file with the body; reply head `Written`.
    /// With `offset`, writes the body there without truncating (chunks of one upload may
    /// then arrive in any order).
    Write {
        path: String,
        #[serde(default)]
        append: bool,
        /// Permission bits for a new file (default 0644).
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        offset: Option<u64>,
        /// Creates missing parent directories first (like `mkdir -p`).
        #[serde(default)]
        parents: bool,
    },
    /// Renames `from` to `to` (replacing a file there); reply head `Done`.
    Rename { from: String, to: String },
    /// Reply head `Listing`.
    List { path: String },
    /// Reply head `FileStat` (of the link itself for a symlink).
    Stat { path: String },
    /// Removes a file, a symlink, or a directory (with `recursive`, and everything in it).
    Delete {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    /// Creates a directory (with `parents`, like `mkdir -p`).
    Mkdir {
        path: String,
        #[serde(default)]
        parents: bool,
    },
}

/// What kind of file a path is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Head of the reply to `Stat`, and one entry of a `Listing`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStat {
    /// The entry's name (in a listing) or the path asked for (for `Stat`).
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777` part of the mode).
    pub mode: u32,
    /// Seconds since the epoch.
    pub modified_unix: i64,
}

/// Head of the reply to `Read`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileData {
    /// The file's whole size.
    pub size: u64,
    /// Fewer bytes than the rest of the file were sent (`max_bytes` was reached).
    pub truncated: bool,
}

/// Head of the reply to `Write`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
}

/// Head of the reply to `List`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<FileStat>,
}

/// Head of `Checkpoint`. A checkpoint is named by its `label` (the host's call id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckpointRequest {
    /// Records the workspace now as checkpoint `label`; the store (contents and manifests)
    /// stays within `max_bytes`, the oldest checkpoints dropped first. Reply head `Taken`;
    /// `too_large` when this one alone would not fit.
    Take { label: String, max_bytes: u64 },
    /// What changed in the workspace since checkpoint `label`. Reply head `Changes`.
    Changes { label: String },
    /// Restores the workspace to checkpoint `label` and drops every later checkpoint. Reply
    /// head `Restored`; `busy` while a command runs, `not_found` for an unknown label.
    Restore { label: String },
    /// Drops every checkpoint. Reply head `Done`.
    Clear {},
}

/// Head of the reply to `Checkpoint` `take`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Taken {
    /// Entries (files, directories, links...) recorded.
    pub entries: u64,
    /// Bytes of file content read (and stored) for this checkpoint: 0 when nothing changed.
    pub read_bytes: u64,
    /// Bytes the whole store holds now.
    pub store_bytes: u64,
    /// Older checkpoints dropped to make room, by label.
    pub dropped: Vec<String>,
}

/// Head of the reply to `Checkpoint` `changes`: paths relative to the workspace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
    /// More paths changed than the lists hold.
    pub truncated: bool,
}

/// Head of the reply to `Checkpoint` `restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Restored {
    /// Entries written or changed back.
    pub written: u64,
    /// Entries removed.
    pub removed: u64,
    /// Later checkpoints dropped, by label.
    pub dropped: Vec<String>,
}

/// Head of the reply to `Mkdir` and `Delete`: nothing to say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Done {}

/// A path the tenant may write to, and what it must look like when clean.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WritablePath {
    pub path: String,
    /// Permission bits it is restored to (for example `0o755`, `0o1777`).
    pub mode: u32,
    /// Whether it must be owned by the tenant (else by root).
    pub tenant_owned: bool,
}

/// Head of `Scrub` and `Verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScrubRequest {
    pub paths: Vec<WritablePath>,
}

/// Head of the reply to `Scrub`/`Verify`: the verification pass's findings, from a fresh look
/// at `/proc`, the paths and System V IPC after the cleaning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    /// Nothing was found.
    pub clean: bool,
    /// What was found, e.g. `proc:42`, `file:/tmp/x`, `mode:/tmp`, `owner:/workspace`,
    /// `xattr:/workspace:user.note` (POSIX ACLs too: `xattr:/tmp:system.posix_acl_access`),
    /// `time:/tmp` (after a scrub only), `ipc:shm`, `missing:/dev/mqueue`.
    pub found: Vec<String>,
    /// Processes the cleaning killed.
    pub killed: u32,
}

/// Head of the reply to `Ping`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pong {
    /// The supervisor's pid (in the container).
    pub pid: i32,
    /// The supervisor's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Commands running now.
    pub running: u32,
    /// The newest generation served (0: none yet).
    #[serde(default)]
    pub generation: u64,
    /// Who made the first request of that generation ([`holder_of`] of its instance id).
    #[serde(default)]
    pub holder: u64,
}

/// The `holder` of a host instance: the first 8 bytes of a 64-bit FNV-1a hash of its id.
/// Not a secret and not a credential: only a way for a sandbox to say which instance last
/// claimed it (the supervisor cannot be reached by anyone but the engine's API users).
pub fn holder_of(instance_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in instance_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // 0 means "nobody"; an instance never hashes to it.
    hash.max(1)
}

/// Head of `Error`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    /// A stable code: `not_found`, `permission_denied`, `already_exists`, `is_directory`,
    /// `not_directory`, `not_empty`, `too_large`, `no_space`, `bad_request` (also a path that
    /// leaves the workspace), `spawn_failed`,
    /// `busy`, `io`, and `fenced` (the request's generation is older than the newest the
    /// supervisor has served: another holder has the sandbox now).
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let a = Frame::with_head(
            Kind::Exec,
            7,
            &Pong {
                pid: 1,
                version: "x".into(),
                running: 0,
                generation: 3,
                holder: 4,
            },
        )
        .body(b"stdin".to_vec());
        let b = Frame::new(Kind::Stdout, u64::MAX - 9)
            .body(vec![0x10, 0x11, 0, 255])
            .fenced(7 << 32 | 3, holder_of("replica-a"));
        let wire: Vec<u8> = [a.encode(), b.encode()].concat();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.push(byte);
            while let Some(f) = Frame::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut huge = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
        assert!(matches!(
            Frame::decode(&mut huge),
            Err(DecodeError::BadLength(_))
        ));
        let mut short = 3u32.to_be_bytes().to_vec();
        short.extend([1, 2, 3]);
        assert!(matches!(
            Frame::decode(&mut short),
            Err(DecodeError::BadLength(3))
        ));
        let mut kind = Frame::new(Kind::Ping, 1).encode();
        kind[4] = 200;
        assert_eq!(Frame::decode(&mut kind), Err(DecodeError::UnknownKind(200)));
        let mut head = Frame::new(Kind::Ping, 1).encode();
        head[32] = 50;
        assert_eq!(
            Frame::decode(&mut head),
            Err(DecodeError::BadHeadLength(50))
        );
    }
}
