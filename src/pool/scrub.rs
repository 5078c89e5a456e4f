//! The scrub-and-verify script run in a released container before anyone can lease it again.
//!
//! It runs as the sandbox user (uid 1000), the only user a session can act as. Because the
//! container's own processes (the init and its keep-alive child) run as the keeper user
//! (uid 1001), `kill -9 -1` from the scrub kills every process of the session (background
//! jobs, `nohup`, `setsid` sessions, double forks) and nothing else. The writable paths are
//! then emptied and their modes restored.
//!
//! The verification is a separate pass over the result, not a trust in the commands above: no
//! process of the sandbox user but the script itself, every writable path empty and with its
//! expected mode, and no System V IPC object (which no command here can remove: a container
//! holding one fails verification and is destroyed). The last line of output is
//! `SANDPOOL_VERIFY clean` or `SANDPOOL_VERIFY dirty` followed by what was found.

use crate::docker::spec::{SANDBOX_HOME, SANDBOX_USER, WORKSPACE};

/// The script. Busybox `sh`; no command substitution before the final process check
/// would be noticed (it forks), so reads use `read` loops.
pub(crate) const SCRUB_SCRIPT: &str = r#"
me=$$
count_others() {
  others=""
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$me" ] && continue
    uid=""
    while read -r k v _; do
      if [ "$k" = "Uid:" ]; then uid=$v; break; fi
    done < "$d/status" 2>/dev/null
    [ "$uid" = 1000 ] && others="$others $p"
  done
}
i=0
while :; do
  kill -9 -1 2>/dev/null
  count_others
  [ -z "$others" ] && break
  i=$((i+1))
  [ "$i" -ge 100 ] && break
  usleep 10000
done
for dir in __WRITABLE__; do
  [ -d "$dir" ] || continue
  chmod -R u+rwx "$dir" 2>/dev/null
  rm -rf "$dir"/* "$dir"/.[!.]* "$dir"/..?* 2>/dev/null
done
chmod 0755 __WORKSPACE__ __HOME__ 2>/dev/null
chmod 1777 /tmp 2>/dev/null
dirty=""
for dir in __WRITABLE__; do
  [ -d "$dir" ] || continue
  for f in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
    if [ -e "$f" ] || [ -L "$f" ]; then dirty="$dirty file:$f"; fi
  done
done
[ "$(stat -c %a __WORKSPACE__)" = 755 ] || dirty="$dirty mode:__WORKSPACE__"
[ "$(stat -c %a __HOME__)" = 755 ] || dirty="$dirty mode:__HOME__"
[ "$(stat -c %a /tmp)" = 1777 ] || dirty="$dirty mode:/tmp"
for kind in shm msg sem; do
  n=0
  if [ -r /proc/sysvipc/$kind ]; then
    while read -r line; do n=$((n+1)); done < /proc/sysvipc/$kind
  fi
  [ "$n" -gt 1 ] && dirty="$dirty ipc:$kind"
done
count_others
for p in $others; do dirty="$dirty proc:$p"; done
if [ -z "$dirty" ]; then echo "SANDPOOL_VERIFY clean"; else echo "SANDPOOL_VERIFY dirty$dirty"; fi
"#;

/// The script with the paths filled in.
pub(crate) fn scrub_command() -> Vec<String> {
    let writable = crate::docker::spec::WRITABLE_PATHS.join(" ");
    let script = SCRUB_SCRIPT
        .replace("__WRITABLE__", &writable)
        .replace("__WORKSPACE__", WORKSPACE)
        .replace("__HOME__", SANDBOX_HOME);
    vec!["sh".into(), "-c".into(), script]
}

/// The user the scrub runs as.
pub(crate) const SCRUB_USER: &str = SANDBOX_USER;

/// What the verification found, from the script's last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Dirty(String),
}

pub(crate) fn parse_verdict(stdout: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(stdout);
    match text
        .lines()
        .rev()
        .find(|l| l.starts_with("SANDPOOL_VERIFY "))
    {
        Some("SANDPOOL_VERIFY clean") => Verdict::Clean,
        Some(line) => Verdict::Dirty(
            line.trim_start_matches("SANDPOOL_VERIFY dirty")
                .trim()
                .to_string(),
        ),
        None => Verdict::Dirty(format!("no verdict in output: {:.200}", text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(parse_verdict(b"x\nSANDPOOL_VERIFY clean\n"), Verdict::Clean);
        assert_eq!(
            parse_verdict(b"SANDPOOL_VERIFY dirty proc:12 file:/tmp/x\n"),
            Verdict::Dirty("proc:12 file:/tmp/x".into())
        );
        assert!(matches!(parse_verdict(b""), Verdict::Dirty(_)));
    }
}
