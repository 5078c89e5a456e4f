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
