use std::time::Duration;

/// Why a call through the Docker gate failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// Too many callers are already waiting for a slot: the caller should back off
    /// (HTTP 503, socket error code `overloaded`).
    #[error("docker gate overloaded: {waiting} callers already waiting")]
    Overloaded { waiting: usize },
    /// The circuit breaker is open: Docker failed repeatedly and is given a cooldown
    /// (socket error code `unavailable`).
    #[error("docker unavailable: circuit breaker open")]
    Unavailable,
    /// The call (or waiting for its slot) took longer than the gate's timeout.
    #[error("docker {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// The object the call named does not exist.
    #[error("docker {op}: no such object")]
    NotFound { op: &'static str },
    /// Docker answered with an error status.
    #[error("docker {op} failed with status {status}: {message}")]
    Api {
        op: &'static str,
        status: u16,
        message: String,
    },
    /// Docker could not be reached or its answer could not be read.
    #[error("docker {op} failed: {source}")]
    Transport {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
}

impl DockerError {
    /// Errors worth a retry of an idempotent call, and that count against Docker's health in
    /// the circuit breaker. A 4xx answer says Docker is healthy and the request was wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            DockerError::Timeout { .. } | DockerError::Transport { .. } => true,
            DockerError::Api { status, .. } => *status >= 500,
            DockerError::Overloaded { .. }
            | DockerError::Unavailable
            | DockerError::NotFound { .. } => false,
        }
    }

    pub(crate) fn from_bollard(op: &'static str, error: bollard::errors::Error) -> Self {
        match error {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => DockerError::NotFound { op },
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Api {
                op,
                status: status_code,
                message,
            },
            bollard::errors::Error::RequestTimeoutError => DockerError::Timeout {
                op,
                after: Duration::ZERO,
            },
            other => DockerError::Transport { op, source: other },
        }
    }
}
