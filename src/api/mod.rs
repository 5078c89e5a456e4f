//! The service's outside: HTTP status routes (and, later, the Socket.IO session API). It
//! turns requests into calls on the pool and maps errors to stable codes; it holds no
//! container state of its own.

mod http;

pub use http::{AppState, router};
