//! The in-sandbox supervisor's wire protocol, shared by the supervisor binary (`main.rs`,
//! built static and copied into the sandbox image) and sandpool's client of it
//! (`sandpool::pool::supervisor`). This library holds no I/O and no policy: only the frame
//! layout and the typed headers each frame carries.
//!
//! The supervisor is the container's main process (under Docker's init). sandpool speaks to
//! it over the container's attach stream: requests go to its stdin, replies come from its
//! stdout. Every byte on those streams belongs to a frame:
//!
//! ```text
//! u32 BE  length of everything after this field (at most MAX_FRAME_BYTES)
//! u8      kind (see `Kind`)
//! u32 BE  request id, chosen by the host; replies carry the id of their request
//! u32 BE  length of the JSON head (0 when there is none)
//! ...     JSON head
//! ...     body (raw bytes: command output, file contents, stdin)
//! ```
//!
//! A tenant's command writes only to pipes that the supervisor reads and wraps in
//! `Stdout`/`Stderr` frames, so nothing a tenant prints can pass for a frame of its own.

pub mod proto;

/// The sandbox's layout, shared by the host (the container spec, the commands it asks for)
/// and the supervisor (paths relative to the workspace), written once.
pub mod layout {
    /// The tenant's uid and gid: session commands and file operations run as them.
    pub const TENANT_UID: u32 = 1000;
    pub const TENANT_GID: u32 = 1000;
    /// The tenant as `uid:gid`.
    pub const TENANT_USER: &str = "1000:1000";
    /// Working directory of session commands; relative paths start here.
    pub const WORKSPACE: &str = "/workspace";
    /// Home directory of the tenant.
    pub const HOME: &str = "/home/sandbox";
    /// `PATH` of the tenant's commands.
    pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
}
