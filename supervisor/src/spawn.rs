//! Starting a tenant command: the `Command` for an `ExecRequest` and the `pre_exec` step that
//! turns the forked child (still root, with the supervisor's capabilities) into a plain
//! tenant process: own session, OOM-killer bait, no capabilities in any set, the tenant's
//! uid/gid with no supplementary groups, the requested working directory entered as the
//! tenant, and no descriptor of the supervisor's left open across exec.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use sandpool_supervisor::proto::ExecRequest;

use crate::Tenant;

/// An `ExecRequest` checked and converted before fork (the child may not allocate).
pub struct Plan {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: CString,
}

impl Plan {
    /// Checks the request; the error is a message for `bad_request`.
    pub fn new(req: &ExecRequest) -> Result<Plan, String> {
        let Some((program, args)) = req.argv.split_first() else {
            return Err("argv is empty".into());
        };
        if program.is_empty() {
            return Err("argv[0] is empty".into());
        }
        if req.argv.iter().any(|a| a.contains('\0')) {
            return Err("argv holds a NUL byte".into());
        }
        let mut env = Vec::with_capacity(req.env.len());
        for pair in &req.env {
            match pair.split_once('=') {
                Some((name, value)) if !name.is_empty() && !pair.contains('\0') => {
                    env.push((name.to_string(), value.to_string()))
                }
                _ => return Err(format!("bad environment entry {pair:?}")),
            }
        }
        let cwd = CString::new(crate::files::resolve(&req.cwd))
            .map_err(|_| "cwd holds a NUL byte".to_string())?;
        Ok(Plan {
            program: program.clone(),
            args: args.to_vec(),
            env,
            cwd,
        })
    }

    /// Forks and execs the command as `tenant`, with piped stdin, stdout and stderr.
    pub fn spawn(self, tenant: Tenant) -> io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cwd = self.cwd;
        let kernel = crate::kernel::get();
        // SAFETY: the closure only makes async-signal-safe syscalls on data prepared before
        // the fork (`cwd`, `kernel`, plain integers); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                become_tenant(tenant, &cwd)?;
                crate::kernel::restrict_tenant(kernel)
            });
        }
        cmd.spawn()
    }
}

/// Linux capability numbers go up to 40 today; the bounding set is cleared up to 63 so that
/// capabilities of a newer kernel are dropped too (unknown ones give EINVAL).
const LAST_CAP: libc::c_ulong = 63;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs in the forked child before exec. Only async-signal-safe calls: raw syscalls.
fn become_tenant(tenant: Tenant, cwd: &CString) -> io::Result<()> {
    // SAFETY: raw syscalls on integers and on pointers to live, NUL-terminated or
    // properly sized data.
    unsafe {
        // Its own session and process group: the command's tree can be killed as a group.
        check(libc::setsid() as libc::c_long)?;
        // Under memory pressure the kernel should kill tenant processes, not the supervisor.
        // Best effort: raising one's own score needs no privilege, but /proc may be odd.
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
        // No capability may ever come back (bounding set), be kept across exec (ambient) or
        // be inherited (inheritable, cleared by capset below).
        for cap in 0..=LAST_CAP {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINVAL) {
                    return Err(err);
                }
            }
        }
        // A kernel without ambient capabilities (gVisor answers EINVAL) has none to clear;
        // the capset below empties the sets an ambient one would come from anyway.
        let clear_all = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        if libc::prctl(libc::PR_CAP_AMBIENT, clear_all, 0, 0, 0) < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
        check(libc::syscall(
            libc::SYS_setgroups,
            0,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        let (u, g) = (tenant.uid, tenant.gid);
        // The command's stdio pipes were made by root with mode 0600; hand them to the
        // tenant, so that `> /dev/stdout` and `> /dev/stderr` work as they do in a shell.
        // They are the tenant's own pipes (only this command's output and input pass them).
        for fd in 0..=2 {
            libc::fchown(fd, u, g);
        }
        check(libc::syscall(libc::SYS_setresgid, g, g, g))?;
        check(libc::syscall(libc::SYS_setresuid, u, u, u))?;
        // setresuid away from 0 already emptied the permitted and effective sets; this makes
        // the inheritable set empty too, and fails loudly if anything is left.
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check(libc::syscall(
            libc::SYS_capset,
            &raw const header,
            data.as_ptr(),
        ))?;
        // Entered as the tenant (not as root before the drop), so a directory the tenant may
        // not enter fails the spawn.
        check(libc::chdir(cwd.as_ptr()) as libc::c_long)?;
        crate::sys::cloexec_from_3()?;
        // The supervisor runs with umask 0 for its own file writes; commands get the usual.
        libc::umask(0o022);
        // The supervisor ignores SIGPIPE; a tenant's `yes | head` must die of it as usual.
        // An ignored disposition and the mask survive exec, so both are reset.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str], env: &[&str], cwd: &str) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.into(),
            timeout_ms: 1000,
            window: 1024,
            checkpoint: None,
        }
    }

    #[test]
    fn checks_requests() {
        assert!(Plan::new(&req(&[], &[], "/")).is_err());
        assert!(Plan::new(&req(&[""], &[], "/")).is_err());
        assert!(Plan::new(&req(&["sh"], &["NOEQUALS"], "/")).is_err());
        assert!(Plan::new(&req(&["sh"], &["=x"], "/")).is_err());
        assert!(Plan::new(&req(&["sh"], &[], "/a\0b")).is_err());
        let plan = Plan::new(&req(&["sh", "-c", "x"], &["A=b=c", "E="], "sub")).unwrap();
        assert_eq!(
            plan.env,
            vec![("A".into(), "b=c".into()), ("E".into(), "".into())]
        );
        assert_eq!(plan.cwd.to_str().unwrap(), "/workspace/sub");
        assert_eq!(plan.args, vec!["-c".to_string(), "x".to_string()]);
    }
}
