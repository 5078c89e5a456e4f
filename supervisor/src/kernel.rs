//! What the kernel under the sandbox offers that the scrub relies on, probed once at startup,
//! and what is done where it is missing. Under gVisor (Docker's `runsc` runtime) a sandbox
//! has POSIX message queues but no `mqueue` filesystem at `/dev/mqueue` to list and remove
//! them with, and System V IPC objects but no `/proc/sysvipc` to list them with.
//! - No mqueue filesystem: tenant processes get a seccomp filter that answers `mq_open` with
//!   ENOSYS, so a tenant can make no queue that a scrub could not find; the scrub and the
//!   verification leave the absent `/dev/mqueue` alone (a tenant cannot make it: `/dev` is
//!   root's).
//! - No `/proc/sysvipc`: the verification counts objects with `shmctl(SHM_INFO)`,
//!   `msgctl(MSG_INFO)` and `semctl(SEM_INFO)` instead (see `scrub`).
//! - No setfsuid: file operations run in a helper process of the tenant's instead of on a
//!   thread with the tenant's file credentials (see `tenant_files`).

use std::sync::OnceLock;

/// `statfs` magic of the mqueue filesystem.
const MQUEUE_MAGIC: libc::c_long = 0x1980_0202;
/// Where Docker mounts the sandbox's mqueue filesystem (`runc`) or nothing (`runsc`).
pub const MQUEUE_PATH: &str = "/dev/mqueue";

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// `/dev/mqueue` is an mqueue filesystem: queues can be listed and removed.
    pub mqueue_fs: bool,
    /// Per-thread file credentials (setfsuid): file operations run on a thread with the
    /// tenant's; without them (gVisor), in a helper process of the tenant's (`tenant_files`).
    pub fsuid: bool,
}

static KERNEL: OnceLock<Kernel> = OnceLock::new();

/// What the kernel offers: probed on the first call (at startup, before any tenant process
/// exists), which also says on stderr, where the host logs it, what the kernel lacks.
pub fn get() -> Kernel {
    *KERNEL.get_or_init(|| {
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated literal and a live statfs.
        let ok = unsafe { libc::statfs(c"/dev/mqueue".as_ptr(), &raw mut st) } == 0;
        // setfsuid(-1) changes nothing and returns the current fsuid; gVisor says ENOSYS.
        // SAFETY: plain syscall with no pointers.
        let fsuid = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } >= 0;
        let kernel = Kernel {
            mqueue_fs: ok && st.f_type as libc::c_long == MQUEUE_MAGIC,
            fsuid,
        };
        if !kernel.fsuid {
            eprintln!(
                "sandpool-supervisor: no setfsuid (gVisor?): file operations run in a helper \
                 process of the tenant's"
            );
        }
        if !kernel.mqueue_fs {
            eprintln!(
                "sandpool-supervisor: no mqueue filesystem at /dev/mqueue (gVisor?): tenant \
                 commands get ENOSYS from mq_open, so no message queue can outlive a session"
            );
        }
        kernel
    })
}

/// The seccomp filter of tenant processes on a kernel without an mqueue filesystem: x86-64
/// only (any other ABI kills the process), `mq_open` and every x32 call answered with ENOSYS,
/// everything else allowed (Docker's own profile, where there is one, still applies).
static MQ_FILTER: [libc::sock_filter; 8] = [
    // A = seccomp_data.arch
    bpf_stmt(BPF_LD | BPF_W | BPF_ABS, 4),
    bpf_jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    bpf_stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
    // A = seccomp_data.nr
    bpf_stmt(BPF_LD | BPF_W | BPF_ABS, 0),
    bpf_jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 2, 0),
    bpf_jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_mq_open as u32, 1, 0),
    bpf_stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    bpf_stmt(
        BPF_RET | BPF_K,
        libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA),
    ),
];

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const fn bpf_stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn bpf_jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Installs [`MQ_FILTER`] on the calling thread when the kernel has no mqueue filesystem.
/// Async-signal-safe (runs in `pre_exec`): the filter is static, and `kernel` was probed
/// before the fork.
pub fn restrict_tenant(kernel: Kernel) -> std::io::Result<()> {
    if kernel.mqueue_fs {
        return Ok(());
    }
    let prog = libc::sock_fprog {
        len: MQ_FILTER.len() as u16,
        filter: MQ_FILTER.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integers; seccomp with a live sock_fprog over a static program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &raw const prog,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
