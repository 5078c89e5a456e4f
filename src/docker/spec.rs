//! What a sandbox container is: its labels, its hardened host configuration, and the users it
//! runs as. The pool describes a sandbox with a [`SandboxSpec`]; only this file turns it into
//! Docker's create body.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use sandpool_supervisor::layout;

/// Label that marks every container sandpool creates.
pub const LABEL_APP: &str = "sandpool.app";
/// Label naming the instance (replica) that created the container.
pub const LABEL_INSTANCE: &str = "sandpool.instance";
/// Label naming the container's role; sandboxes are `sandbox`.
pub const LABEL_ROLE: &str = "sandpool.role";
/// Role value of a sandbox container.
pub const ROLE_SANDBOX: &str = "sandbox";

/// The tenant: the unprivileged user (uid:gid) that session commands and file operations run
/// as. It owns the writable paths.
pub const SANDBOX_USER: &str = layout::TENANT_USER;
/// The tenant's uid and gid.
pub const SANDBOX_UID: u32 = layout::TENANT_UID;
pub const SANDBOX_GID: u32 = layout::TENANT_GID;
/// The supervisor inside every sandbox (see `supervisor/`): the container's main process,
/// under Docker's init, as root with only [`SUPERVISOR_CAPS`]. It drops all of them for every
/// process it starts for the tenant.
pub const SUPERVISOR_PATH: &str = "/usr/local/bin/sandpool-supervisor";
/// The capabilities the supervisor keeps, each for one job: CHOWN/FOWNER/DAC_OVERRIDE to
/// empty and restore the writable paths whatever the tenant did to their modes; KILL to kill
/// every tenant process; SETUID/SETGID to become the tenant in a child; SETPCAP to empty a
/// child's bounding set before it does.
pub const SUPERVISOR_CAPS: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "KILL",
    "SETUID",
    "SETGID",
    "SETPCAP",
];
/// Home directory of the sandbox user.
pub const SANDBOX_HOME: &str = layout::HOME;
/// Working directory of session commands.
pub const WORKSPACE: &str = layout::WORKSPACE;
/// `PATH` of the tenant's commands.
pub const SANDBOX_PATH: &str = layout::PATH;
/// Every path a session can write to, with the mode it is restored to and whether the tenant
/// owns it. The scrub empties each one and restores the directory itself (mode, owner, no
/// extended attribute or ACL, atime and mtime at the epoch); the verification checks all of
/// that (the times right after a scrub only). Anything else is read-only (the root filesystem) or owned by root.
pub const WRITABLE_PATHS: [(&str, u32, bool); 5] = [
    (WORKSPACE, 0o755, true),
    ("/tmp", 0o1777, true),
    (SANDBOX_HOME, 0o755, true),
    ("/dev/shm", 0o1777, false),
    ("/dev/mqueue", 0o1777, false),
];

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
    /// The OCI runtime (`runsc`...); `None` for the engine's default.
    pub runtime: Option<String>,
}

impl SandboxSpec {
    pub(crate) fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_APP.to_string(), "sandpool".to_string()),
            (LABEL_INSTANCE.to_string(), self.instance_id.clone()),
            (LABEL_ROLE.to_string(), ROLE_SANDBOX.to_string()),
        ])
    }

    /// The hardened create body: read-only root with tmpfs for the writable paths, no privilege
    /// gain, limits on memory, CPU and processes, no network by default, an init process that
    /// reaps orphans, and the supervisor as the main process with only its few capabilities
    /// (tenant processes get none). Its stdin stays open across attaches (the host's requests),
    /// and nothing it prints is logged by Docker (command output is the tenant's business).
    pub(crate) fn to_create_body(&self) -> ContainerCreateBody {
        let size = self.tmpfs_bytes;
        let owned = |mode: &str| {
            format!(
                "rw,exec,nosuid,nodev,size={size},uid={SANDBOX_UID},gid={SANDBOX_GID},mode={mode}"
            )
        };
        let tmpfs = HashMap::from([
            (WORKSPACE.to_string(), owned("0755")),
            ("/tmp".to_string(), owned("1777")),
            (SANDBOX_HOME.to_string(), owned("0755")),
        ]);
        let host_config = HostConfig {
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            shm_size: Some(64 << 20),
            cap_drop: Some(vec!["ALL".to_string()]),
            cap_add: Some(SUPERVISOR_CAPS.iter().map(|c| c.to_string()).collect()),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_string()),
                config: None,
            }),
            security_opt: Some(vec!["no-new-privileges:true".to_string()]),
            pids_limit: Some(self.pids_limit),
            memory: Some(self.memory_bytes),
            memory_swap: Some(self.memory_bytes),
            nano_cpus: Some(self.nano_cpus),
            network_mode: Some(self.network.clone()),
            init: Some(true),
            runtime: self.runtime.clone(),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec![
                SUPERVISOR_PATH.to_string(),
                "--tenant".to_string(),
                SANDBOX_USER.to_string(),
            ]),
            user: Some("0:0".to_string()),
            open_stdin: Some(true),
            stdin_once: Some(false),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            working_dir: Some(WORKSPACE.to_string()),
            env: Some(vec![
                format!("HOME={SANDBOX_HOME}"),
                format!("PATH={SANDBOX_PATH}"),
            ]),
            labels: Some(self.labels()),
            network_disabled: Some(self.network == "none"),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}
