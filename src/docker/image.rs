//! The default sandbox image: its definition lives in `pool-images/sandbox/` and is compiled
//! into the binary, so `sandpool image build` and the build-on-start of `sandpool serve` work
//! from any directory. The build context is assembled in memory: the definition plus the
//! host's static busybox and the static supervisor binary, so nothing is pulled from a
//! registry. The image carries the SHA-256 of its context as a label, so an image built from
//! other files (an older supervisor) is rebuilt rather than used.

use std::collections::HashMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::error::DockerError;
use super::gate::DockerGate;
use crate::config::ImageConfig;

const DOCKERFILE: &str = include_str!("../../pool-images/sandbox/Dockerfile");
const PASSWD: &str = include_str!("../../pool-images/sandbox/rootfs/etc/passwd");
const GROUP: &str = include_str!("../../pool-images/sandbox/rootfs/etc/group");
const NOHUP: &str = include_str!("../../pool-images/sandbox/rootfs/usr/bin/nohup");
/// Label holding the SHA-256 of the build context.
const LABEL_CONTEXT: &str = "sandpool.context";
/// Where `scripts/build-supervisor` leaves the static supervisor, from the repository root.
const SUPERVISOR_BUILD_PATH: &str =
    "target/supervisor/x86_64-unknown-linux-gnu/release/sandpool-supervisor";

/// Why the image could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "cannot read the static busybox at {path}: {source} (install the Debian package \
         busybox-static, or set SANDPOOL_IMAGE_BUSYBOX_PATH)"
    )]
    Busybox {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot read the sandbox supervisor at {path}: {source} (build it with \
         scripts/build-supervisor, or set SANDPOOL_IMAGE_SUPERVISOR_PATH)"
    )]
    Supervisor {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "image {image} is missing or was built from other files, and SANDPOOL_IMAGE_AUTO_BUILD \
         is false"
    )]
    Missing { image: String },
    #[error("cannot assemble the build context: {0}")]
    Context(#[source] std::io::Error),
    #[error("building image {image} failed: {source}")]
    Build {
        image: String,
        #[source]
        source: DockerError,
    },
}

/// Makes sure Docker has the sandbox image built from this binary's definition and the
/// current busybox and supervisor, building it when it is missing or stale and `auto_build`
/// is set.
pub async fn ensure_image(gate: &DockerGate, config: &ImageConfig) -> Result<(), ImageError> {
    if !config.auto_build {
        // Built elsewhere (a scaled-out stack builds it once for every replica): it must be
        // there; whether it is current is the builder's business, and the files it is built
        // from need not be on this machine.
        let labels =
            gate.image_labels(&config.image)
                .await
                .map_err(|source| ImageError::Build {
                    image: config.image.clone(),
                    source,
                })?;
        return match labels {
            Some(_) => Ok(()),
            None => Err(ImageError::Missing {
                image: config.image.clone(),
            }),
        };
    }
    let context = Context::assemble(config)?;
    let labels = gate
        .image_labels(&config.image)
        .await
        .map_err(|source| ImageError::Build {
            image: config.image.clone(),
            source,
        })?;
    let current = labels
        .as_ref()
        .and_then(|l| l.get(LABEL_CONTEXT))
        .is_some_and(|digest| *digest == context.digest);
    if current {
        return Ok(());
    }
    let why = if labels.is_some() { "stale" } else { "missing" };
    tracing::info!(image = %config.image, why, "building the sandbox image");
    context.build(gate, config).await
}

/// Builds the sandbox image from `pool-images/sandbox`, the host's static busybox and the
/// static supervisor.
pub async fn build_image(gate: &DockerGate, config: &ImageConfig) -> Result<(), ImageError> {
    Context::assemble(config)?.build(gate, config).await
}

/// The supervisor binary to copy into the image (see `ImageConfig::supervisor_path`).
fn supervisor_path(config: &ImageConfig) -> PathBuf {
    if config.supervisor_path.is_empty() {
        PathBuf::from(SUPERVISOR_BUILD_PATH)
    } else {
        PathBuf::from(&config.supervisor_path)
    }
}

/// A build context as a tar, with its digest.
struct Context {
    tar: Vec<u8>,
    digest: String,
}

impl Context {
    fn assemble(config: &ImageConfig) -> Result<Context, ImageError> {
        let busybox =
            std::fs::read(&config.busybox_path).map_err(|source| ImageError::Busybox {
                path: config.busybox_path.clone(),
                source,
            })?;
        let path = supervisor_path(config);
        let supervisor = std::fs::read(&path).map_err(|source| ImageError::Supervisor {
            path: path.display().to_string(),
            source,
        })?;
        let tar = build_context(&busybox, &supervisor).map_err(ImageError::Context)?;
        let mut hasher = Sha256::new();
        hasher.update(&tar);
        hasher.update(config.base_image.as_bytes());
        let digest = hex::encode(hasher.finalize());
        Ok(Context { tar, digest })
    }

    async fn build(self, gate: &DockerGate, config: &ImageConfig) -> Result<(), ImageError> {
        let args = HashMap::from([("BASE_IMAGE".to_string(), config.base_image.clone())]);
        let labels = HashMap::from([
            ("sandpool.app".to_string(), "sandpool".to_string()),
            (LABEL_CONTEXT.to_string(), self.digest),
        ]);
        let started = std::time::Instant::now();
        gate.build_image(&config.image, self.tar.into(), &args, &labels)
            .await
            .map_err(|source| ImageError::Build {
                image: config.image.clone(),
                source,
            })?;
        tracing::info!(
            image = %config.image,
            base = %config.base_image,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sandbox image built"
        );
        Ok(())
    }
}

fn build_context(busybox: &[u8], supervisor: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let files: [(&str, &[u8], u32); 6] = [
        ("Dockerfile", DOCKERFILE.as_bytes(), 0o644),
        ("rootfs/etc/passwd", PASSWD.as_bytes(), 0o644),
        ("rootfs/etc/group", GROUP.as_bytes(), 0o644),
        ("rootfs/usr/bin/nohup", NOHUP.as_bytes(), 0o755),
        ("rootfs/bin/busybox", busybox, 0o755),
        (
            "rootfs/usr/local/bin/sandpool-supervisor",
            supervisor,
            0o755,
        ),
    ];
    for (path, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, data)?;
    }
    tar.into_inner()
}
