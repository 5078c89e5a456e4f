//! The scrub of a released sandbox, done by its supervisor, and the judgement of its verdict.
//!
//! The supervisor (root in the container, out of the tenant's reach: see ARCHITECTURE.md's
//! threat model) kills every process in the container but itself and the init, empties every
//! writable path and restores its mode and owner, removes its extended attributes (POSIX ACLs
//! included) and sets its atime and mtime to the epoch, then runs a separate verification pass
//! from a fresh look at `/proc`, the paths and System V IPC (which it does not remove: a
//! container holding an IPC object fails verification and is destroyed). The verdict travels in the
//! supervisor's own `Result` frame, which no tenant output can imitate.
//!
//! The pool trusts a verdict only when it is whole and consistent: `clean` with nothing
//! found. Anything else (a finding, `clean: false` with no finding, a reply that does not
//! parse) is dirty.

use std::time::Duration;

use sandpool_supervisor::proto::{Kind, ScrubRequest, Verdict as Report, WritablePath};

use super::supervisor::{SupervisorError, SupervisorLink};
use crate::docker::spec::WRITABLE_PATHS;

/// What the verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Dirty(String),
}

/// The request: every writable path with its mode and owner.
pub(crate) fn request() -> ScrubRequest {
    ScrubRequest {
        paths: WRITABLE_PATHS
            .iter()
            .map(|(path, mode, tenant_owned)| WritablePath {
                path: path.to_string(),
                mode: *mode,
                tenant_owned: *tenant_owned,
            })
            .collect(),
    }
}

/// Scrubs through `link` under `generation` (newer than the released lease's, so that the
/// supervisor fences that lease out) and judges the report.
pub(crate) async fn scrub(
    link: &SupervisorLink,
    generation: u64,
    within: Duration,
) -> Result<Verdict, SupervisorError> {
    ask(link, generation, Kind::Scrub, within).await
}

/// Only the verification pass, for checks from outside (tests, diagnostics).
pub(crate) async fn verify(
    link: &SupervisorLink,
    generation: u64,
    within: Duration,
) -> Result<Verdict, SupervisorError> {
    ask(link, generation, Kind::Verify, within).await
}

async fn ask(
    link: &SupervisorLink,
    generation: u64,
    kind: Kind,
    within: Duration,
) -> Result<Verdict, SupervisorError> {
    let (report, _) = link
        .call::<Report>(generation, kind, &request(), Vec::new(), within)
        .await?;
    Ok(judge(&report))
}

/// Clean only when the report says clean and found nothing; everything else is dirty.
pub(crate) fn judge(report: &Report) -> Verdict {
    match (report.clean, report.found.is_empty()) {
        (true, true) => Verdict::Clean,
        (true, false) => Verdict::Dirty(format!(
            "inconsistent verdict (clean with findings): {}",
            report.found.join(" ")
        )),
        (false, true) => Verdict::Dirty("dirty with no finding".to_string()),
        (false, false) => Verdict::Dirty(report.found.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(clean: bool, found: &[&str]) -> Report {
        Report {
            clean,
            found: found.iter().map(|s| s.to_string()).collect(),
            killed: 0,
        }
    }

    #[test]
    fn only_a_whole_clean_report_is_clean() {
        assert_eq!(judge(&report(true, &[])), Verdict::Clean);
        assert_eq!(
            judge(&report(false, &["proc:12", "file:/tmp/x"])),
            Verdict::Dirty("proc:12 file:/tmp/x".into())
        );
        assert!(matches!(
            judge(&report(true, &["proc:1"])),
            Verdict::Dirty(_)
        ));
        assert!(matches!(judge(&report(false, &[])), Verdict::Dirty(_)));
    }

    #[test]
    fn the_request_names_every_writable_path() {
        let paths: Vec<String> = request().paths.into_iter().map(|p| p.path).collect();
        for (path, _, _) in WRITABLE_PATHS {
            assert!(paths.contains(&path.to_string()), "{path} missing");
        }
    }
}
