//! The default sandbox image: its definition lives in `pool-images/sandbox/` and is compiled
//! into the binary, so `sandpool image build` and the build-on-start of `sandpool serve` work
//! from any directory. The build context is assembled in memory: the definition plus the
//! host's static busybox, so nothing is pulled from a registry.

use std::collections::HashMap;

use super::error::DockerError;
use super::gate::DockerGate;
use crate::config::ImageConfig;

const DOCKERFILE: &str = include_str!("../../pool-images/sandbox/Dockerfile");
const PASSWD: &str = include_str!("../../pool-images/sandbox/rootfs/etc/passwd");
const GROUP: &str = include_str!("../../pool-images/sandbox/rootfs/etc/group");
const NOHUP: &str = include_str!("../../pool-images/sandbox/rootfs/usr/bin/nohup");

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
    #[error("image {image} is missing and SANDPOOL_IMAGE_AUTO_BUILD is false")]
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

/// Makes sure Docker has the sandbox image, building it when it is missing and
/// `auto_build` is set.
pub async fn ensure_image(gate: &DockerGate, config: &ImageConfig) -> Result<(), ImageError> {
    let exists = gate
        .image_exists(&config.image)
        .await
        .map_err(|source| ImageError::Build {
            image: config.image.clone(),
            source,
        })?;
    if exists {
        return Ok(());
    }
    if !config.auto_build {
        return Err(ImageError::Missing {
            image: config.image.clone(),
        });
    }
    tracing::info!(image = %config.image, "sandbox image missing, building it");
    build_image(gate, config).await
}

/// Builds the sandbox image from `pool-images/sandbox` and the host's static busybox.
pub async fn build_image(gate: &DockerGate, config: &ImageConfig) -> Result<(), ImageError> {
    let busybox = std::fs::read(&config.busybox_path).map_err(|source| ImageError::Busybox {
        path: config.busybox_path.clone(),
        source,
    })?;
    let context = build_context(&busybox).map_err(ImageError::Context)?;
    let args = HashMap::from([("BASE_IMAGE".to_string(), config.base_image.clone())]);
    let labels = HashMap::from([("sandpool.app".to_string(), "sandpool".to_string())]);
    let started = std::time::Instant::now();
    gate.build_image(&config.image, context.into(), &args, &labels)
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

fn build_context(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let files: [(&str, &[u8], u32); 5] = [
        ("Dockerfile", DOCKERFILE.as_bytes(), 0o644),
        ("rootfs/etc/passwd", PASSWD.as_bytes(), 0o644),
        ("rootfs/etc/group", GROUP.as_bytes(), 0o644),
        ("rootfs/usr/bin/nohup", NOHUP.as_bytes(), 0o755),
        ("rootfs/bin/busybox", busybox, 0o755),
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
