//! The stable error codes of the Socket.IO API and the mapping from internal errors to them.

use crate::session::{Failure, PoolError, SessionError};

/// The error codes a client can see. Stable: clients branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    NotFound,
    TooManyRequests,
    PoolExhausted,
    QueueFull,
    Overloaded,
    Unavailable,
    SessionExpired,
    Unauthorized,
    TooManySessions,
    /// The session's sandbox is held under a newer lease (another replica or connection took
    /// it over): this connection must resume to go on.
    Fenced,
    /// A file over `SANDPOOL_FILE_MAX_BYTES`, a body over its limit, a workspace too big to
    /// checkpoint.
    TooLarge,
    /// The sandbox's workspace is full (ENOSPC).
    NoSpace,
    /// The operation conflicts with one in progress (an undo while a command runs).
    Busy,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::PoolExhausted => "pool_exhausted",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::Fenced => "fenced",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for metrics.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::TooManyRequests,
        ErrorCode::PoolExhausted,
        ErrorCode::QueueFull,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::SessionExpired,
        ErrorCode::Unauthorized,
        ErrorCode::TooManySessions,
        ErrorCode::Fenced,
        ErrorCode::TooLarge,
        ErrorCode::NoSpace,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ];
}

/// An error as the client sees it: a code and a human message (never a debug dump).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl From<&PoolError> for ApiError {
    fn from(e: &PoolError) -> Self {
        match e.failure() {
            Failure::Exhausted => Self::new(ErrorCode::PoolExhausted, e.to_string()),
            Failure::QueueFull => Self::new(ErrorCode::QueueFull, e.to_string()),
            Failure::Closed => Self::new(ErrorCode::Unavailable, "the service is shutting down"),
            Failure::NotLeased => {
                Self::new(ErrorCode::SessionExpired, "the session's sandbox is gone")
            }
            Failure::Stale => Self::new(
                ErrorCode::Fenced,
                "the session's sandbox is held under a newer lease (the session moved); resume it",
            ),
            Failure::DockerOverloaded => Self::new(
                ErrorCode::Overloaded,
                "the docker gate is overloaded; retry shortly",
            ),
            Failure::DockerUnavailable => Self::new(
                ErrorCode::Unavailable,
                "docker is unavailable (circuit breaker open); retry later",
            ),
            Failure::DockerFailed => {
                tracing::warn!(error = %e, "docker call failed for a client request");
                Self::new(ErrorCode::Internal, "the sandbox call failed")
            }
            Failure::Refused { code, message } => {
                let code = match code.as_str() {
                    "not_found" => ErrorCode::NotFound,
                    "busy" => ErrorCode::Busy,
                    "too_large" => ErrorCode::TooLarge,
                    "no_space" => ErrorCode::NoSpace,
                    // The sandbox could not do it, through no fault of the request.
                    "internal" => {
                        tracing::warn!(code = %code, message = %message, "the sandbox's supervisor failed a request");
                        return Self::new(ErrorCode::Internal, "the sandbox call failed");
                    }
                    _ => ErrorCode::BadRequest,
                };
                Self::new(code, message)
            }
            Failure::SandboxDied => {
                tracing::warn!(error = %e, "a sandbox's supervisor is gone");
                Self::new(ErrorCode::SessionExpired, "the session's sandbox died")
            }
        }
    }
}

impl From<&SessionError> for ApiError {
    fn from(e: &SessionError) -> Self {
        match e {
            SessionError::Pool(p) => p.into(),
            SessionError::Store(s) => {
                tracing::warn!(error = %s, "session store failed for a client request");
                Self::new(
                    ErrorCode::Unavailable,
                    "the session store is unavailable; retry later",
                )
            }
            SessionError::Expired(_) | SessionError::BadToken(_) => Self::new(
                ErrorCode::SessionExpired,
                "that session has expired or the resume token is wrong",
            ),
            SessionError::Elsewhere { .. } => Self::new(
                ErrorCode::Unavailable,
                "that session is held by another replica",
            ),
            SessionError::Unauthorized(_) => Self::new(
                ErrorCode::Unauthorized,
                "that session belongs to another subject",
            ),
            SessionError::TooManySessions { .. } => {
                Self::new(ErrorCode::TooManySessions, e.to_string())
            }
            SessionError::Random(_) => {
                Self::new(ErrorCode::Internal, "cannot create a resume token")
            }
            SessionError::SelfFenced(_) => Self::new(
                ErrorCode::Unavailable,
                format!("{e}; reconnect to resume the session on a replica that serves"),
            ),
            SessionError::NotHere(_) => Self::new(
                ErrorCode::Fenced,
                "this replica no longer serves the session (it moved); resume it",
            ),
            SessionError::Busy { .. } => Self::new(ErrorCode::TooManyRequests, e.to_string()),
            SessionError::InstanceInUse { .. } => Self::new(ErrorCode::Internal, e.to_string()),
        }
    }
}
