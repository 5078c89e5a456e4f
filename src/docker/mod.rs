//! Everything that talks to Docker. This is the only module that knows bollard: the rest of
//! the crate sees [`DockerGate`] and the plain types it returns.
//!
//! - `gate`: the door every call goes through (semaphore, queue bound, breaker, retries,
//!   timeouts).
//! - `breaker`: the circuit breaker.
//! - `spec`: labels and the hardened container configuration of a sandbox.
//! - `image`: the default sandbox image and its registry-free build.

mod breaker;
mod error;
mod gate;
pub mod image;
pub mod spec;

pub use breaker::BreakerState;
pub use error::DockerError;
pub use gate::{
    Admission, AttachChunk, Attached, ContainerEvent, DockerGate, ExecChunk, ExecOutput, ExecSpec,
    GateStatus, OutputStream, SandboxInfo,
};
pub use spec::SandboxSpec;
