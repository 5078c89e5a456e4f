//! The service's outside: HTTP status routes and the Socket.IO session API. It
//! turns requests into calls on the pool and maps errors to stable codes; it holds no
//! container state of its own.

pub mod audit;
pub mod auth;
mod door;
mod error;
pub mod files;
mod http;
pub mod mcp;
pub(crate) mod socket;

pub use error::{ApiError, ErrorCode};
pub use http::{AppState, router};
pub use socket::SocketApi;
