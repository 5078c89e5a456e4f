//! What the supervisor knows about processes, read from `/proc`: the pid list, each process's
//! state and parent (from `/proc/<pid>/stat`), a command's descendants, and killing a
//! command's whole tree (its process group and every descendant, including ones that left
//! the group with `setsid`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// One line of `/proc/<pid>/stat`, the parts that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    /// `R`, `S`, `D`, `Z` (zombie), `T`, `X` (dead)…
    pub state: char,
}

impl ProcInfo {
    /// Exited and not reaped yet (or already dead): no longer runs anything.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and `)`, so the fields are taken after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcInfo> {
    let open = text.find('(')?;
    let pid = text[..open].trim().parse().ok()?;
    let close = text.rfind(')')?;
    let mut rest = text.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcInfo { pid, ppid, state })
}

/// The pids of every process (thread-group leaders only: `/proc` lists no threads).
pub fn pids() -> std::io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        {
            out.push(pid);
        }
    }
    Ok(out)
}

/// One process's state, or `None` when it is gone (or unreadable).
pub fn info(pid: i32) -> Option<ProcInfo> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| parse_stat(&text))
}

/// Every process now.
pub fn snapshot() -> Vec<ProcInfo> {
    pids()
        .unwrap_or_default()
        .into_iter()
        .filter_map(info)
        .collect()
}

/// The descendants of `root` (not `root` itself) in `procs`, by parent links.
pub fn descendants(root: i32, procs: &[ProcInfo]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs {
        if p.pid != root {
            children.entry(p.ppid).or_default().push(p.pid);
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(child) {
                out.push(child);
                todo.push(child);
            }
        }
    }
    out
}

fn signal(pid: i32, sig: libc::c_int) {
    // Never PID 1 (the container's init) nor the supervisor itself, whatever /proc said.
    if pid > 1 && pid != std::process::id() as i32 {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Kills the tree of the command whose child is `root` (a session and process-group leader,
/// not reaped yet). The walk runs first, while `root` still holds its descendants: once it
/// dies they are reparented and the links to it are lost. Every process found is stopped
/// (a stopped process cannot fork any more), and the walk repeats until it finds nothing
/// new; then the group and everything found get SIGKILL.
pub fn kill_tree(root: i32) {
    if root <= 1 {
        return;
    }
    let mut found: HashSet<i32> = HashSet::new();
    signal(root, libc::SIGSTOP);
    for round in 0..32 {
        let tree = descendants(root, &snapshot());
        let mut new = false;
        for pid in tree {
            signal(pid, libc::SIGSTOP);
            new |= found.insert(pid);
        }
        if !new && round > 0 {
            break;
        }
        // A process that was running on another CPU stops at its next trip through the
        // kernel: give it that moment before looking for what it forked meanwhile.
        std::thread::sleep(Duration::from_micros(500));
    }
    // SAFETY: plain syscall; `root` > 1 leads its own process group (it called setsid).
    unsafe { libc::kill(-root, libc::SIGKILL) };
    signal(root, libc::SIGKILL);
    for pid in found {
        signal(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "42 (a b) c)) S 7 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcInfo {
                pid: 42,
                ppid: 7,
                state: 'S'
            })
        );
        let zombie = parse_stat("9 (sh) Z 1 9 9").unwrap();
        assert!(zombie.is_dead());
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("5 (x)"), None);
        assert_eq!(parse_stat("x (y) S 1"), None);
    }

    #[test]
    fn reads_own_stat() {
        let me = info(std::process::id() as i32).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id() as i32);
        assert!(!me.is_dead());
    }

    #[test]
    fn walks_descendants() {
        let p = |pid, ppid| ProcInfo {
            pid,
            ppid,
            state: 'S',
        };
        let procs = [
            p(1, 0),
            p(10, 1),
            p(11, 10),
            p(12, 11),
            p(13, 1),
            p(14, 12),
            p(15, 13),
        ];
        let mut got = descendants(10, &procs);
        got.sort();
        assert_eq!(got, vec![11, 12, 14]);
        assert!(descendants(99, &procs).is_empty());
    }
}
