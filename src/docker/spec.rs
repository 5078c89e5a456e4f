//! What a sandbox container is: its labels, its hardened host configuration, and the users it
//! runs as. The pool describes a sandbox with a [`SandboxSpec`]; only this file turns it into
//! Docker's create body.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig};

/// Label that marks every container sandpool creates.
pub const LABEL_APP: &str = "sandpool.app";
/// Label naming the instance (replica) that created the container.
pub const LABEL_INSTANCE: &str = "sandpool.instance";
/// Label naming the container's role; sandboxes are `sandbox`.
pub const LABEL_ROLE: &str = "sandpool.role";
/// Role value of a sandbox container.
pub const ROLE_SANDBOX: &str = "sandbox";

/// The unprivileged user that session commands run as (uid:gid). It owns the writable paths.
pub const SANDBOX_USER: &str = "1000:1000";
/// The user of the container's own long-lived processes (the init and its keep-alive child).
/// It differs from [`SANDBOX_USER`] so that the scrub, running as the sandbox user, can kill
/// every process of the session with one `kill -9 -1` without touching these, and so that a
/// session cannot kill them either.
pub const KEEPER_USER: &str = "1001:1001";
/// Home directory of the sandbox user.
pub const SANDBOX_HOME: &str = "/home/sandbox";
/// Working directory of session commands.
pub const WORKSPACE: &str = "/workspace";
/// Every path a session can write to. The scrub empties each one and the verification checks
/// that each is empty. Anything else is read-only (the root filesystem) or owned by root.
pub const WRITABLE_PATHS: [&str; 5] = [WORKSPACE, "/tmp", SANDBOX_HOME, "/dev/shm", "/dev/mqueue"];

/// A sandbox to create: the pool's description, free of Docker types.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub name: String,
    pub image: String,
    pub instance_id: String,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub tmpfs_bytes: u64,
    pub network: String,
}

impl SandboxSpec {
    pub(crate) fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_APP.to_string(), "sandpool".to_string()),
            (LABEL_INSTANCE.to_string(), self.instance_id.clone()),
            (LABEL_ROLE.to_string(), ROLE_SANDBOX.to_string()),
        ])
    }

    /// The hardened create body: read-only root with tmpfs for the writable paths, no
    /// capabilities, no privilege gain, limits on memory, CPU and processes, no network by
    /// default, a non-root user and an init process that reaps orphans.
    pub(crate) fn to_create_body(&self) -> ContainerCreateBody {
        let size = self.tmpfs_bytes;
        let tmpfs = HashMap::from([
            (
                WORKSPACE.to_string(),
                format!("rw,exec,nosuid,nodev,size={size},uid=1000,gid=1000,mode=0755"),
            ),
            (
                "/tmp".to_string(),
                format!("rw,exec,nosuid,nodev,size={size},uid=1000,gid=1000,mode=1777"),
            ),
            (
                SANDBOX_HOME.to_string(),
                format!("rw,exec,nosuid,nodev,size={size},uid=1000,gid=1000,mode=0755"),
            ),
        ]);
        let host_config = HostConfig {
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            shm_size: Some(64 << 20),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges:true".to_string()]),
            pids_limit: Some(self.pids_limit),
            memory: Some(self.memory_bytes),
            memory_swap: Some(self.memory_bytes),
            nano_cpus: Some(self.nano_cpus),
            network_mode: Some(self.network.clone()),
            init: Some(true),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            // The keep-alive child of the init. Busybox's `sleep` takes seconds as an integer.
            cmd: Some(vec!["sleep".to_string(), "2147483647".to_string()]),
            user: Some(KEEPER_USER.to_string()),
            working_dir: Some(WORKSPACE.to_string()),
            env: Some(vec![
                format!("HOME={SANDBOX_HOME}"),
                "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            ]),
            labels: Some(self.labels()),
            network_disabled: Some(self.network == "none"),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}
