//! Everything that talks to Docker. This is the only module that knows bollard: the rest of
//! the crate sees [`DockerGate`] and the plain types it returns.
//!
//! - `gate`: the door every call goes through (semaphore, queue bound, breaker, retries,
//!   timeouts).
//! - `containers`: the calls themselves (images, sandbox containers, events, attach), each
//!   through the gate. Nothing runs `docker exec`: commands go to the in-sandbox supervisor
//!   (the benchmarks call `docker exec` through bollard themselves, as their baseline).
//! - `breaker`: the circuit breaker.
//! - `spec`: labels and the hardened container configuration of a sandbox.
//! - `image`: the default sandbox image and its registry-free build.

mod breaker;
mod containers;
mod error;
mod gate;
pub mod image;
pub mod spec;

pub use breaker::BreakerState;
pub use containers::{AttachChunk, Attached, ContainerEvent, SandboxInfo};
pub use error::DockerError;
pub use gate::{Admission, DockerGate, GateStatus};
pub use spec::SandboxSpec;
