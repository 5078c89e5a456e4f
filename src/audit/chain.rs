//! The hash chain: how an entry is sealed and how a chain is verified.
//!
//! What is hashed, exactly: `hash = hex(SHA-256(prev ‖ canonical))`, where `prev` is the
//! previous entry's `hash` as 64 lowercase hex ASCII bytes ([`GENESIS`], 64 `0`s, for the
//! first entry) and `canonical` is the compact JSON (serde_json, no spaces) of an object
//! with exactly these members in this order:
//! `v` (the format version, 1), `seq`, `tsMs`, `sessionId`, `subject`, `origin`, `client`
//! (`null` when absent), `tool`, `args` (as stored, i.e. after bounding; object keys in
//! serde_json's sorted order), `decision`, `decidedBy`, `startedMs`, `endedMs`, `status`,
//! `exitCode` (`null` when absent), `stdoutBytes`, `stdoutSha256`, `stderrBytes`,
//! `stderrSha256`. A struct with fixed field order makes these bytes deterministic; JSON
//! read back from a log serializes to the same bytes (serde_json's maps are sorted and its
//! numbers round-trip).
//!
//! What a chain cannot show on its own: entries cut from its end. A log that finds its
//! tail moved backwards says so in a warning (`redis.rs`).

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{AuditEntry, AuditRecord, Decision, Origin};

/// The `prev` of a chain's first entry: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The end of a session's chain: what the next entry links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    /// `seq` of the last entry; 0 for an empty chain.
    pub seq: u64,
    /// `hash` of the last entry; [`GENESIS`] for an empty chain.
    pub hash: String,
}

impl Tail {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }

    pub fn of(entry: &AuditEntry) -> Self {
        Self {
            seq: entry.seq,
            hash: entry.hash.clone(),
        }
    }
}

/// The hashed fields, in the order that is hashed (see the module doc). Do not reorder.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Canonical<'a> {
    v: u32,
    seq: u64,
    ts_ms: i64,
    session_id: &'a str,
    subject: &'a str,
    origin: Origin,
    client: Option<&'a str>,
    tool: &'a str,
    args: &'a serde_json::Value,
    decision: Decision,
    decided_by: &'a str,
    started_ms: i64,
    ended_ms: i64,
    status: &'a str,
    exit_code: Option<i64>,
    stdout_bytes: u64,
    stdout_sha256: &'a str,
    stderr_bytes: u64,
    stderr_sha256: &'a str,
}

/// The hash `entry` should carry, from its `prev` and its other fields.
pub(crate) fn entry_hash(entry: &AuditEntry) -> String {
    let r = &entry.record;
    let canonical = Canonical {
        v: 1,
        seq: entry.seq,
        ts_ms: entry.ts_ms,
        session_id: &r.session_id,
        subject: &r.subject,
        origin: r.origin,
        client: r.client.as_deref(),
        tool: &r.tool,
        args: &r.args,
        decision: r.decision,
        decided_by: &r.decided_by,
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        status: &r.status,
        exit_code: r.exit_code,
        stdout_bytes: r.stdout_bytes,
        stdout_sha256: &r.stdout_sha256,
        stderr_bytes: r.stderr_bytes,
        stderr_sha256: &r.stderr_sha256,
    };
    // Serializing a struct of strings, numbers and a `Value` cannot fail.
    let json = serde_json::to_vec(&canonical).unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(entry.prev.as_bytes());
    hasher.update(&json);
    hex::encode(hasher.finalize())
}

/// `record` (its arguments already bounded) sealed as the entry after `tail`, appended at
/// `ts_ms`.
pub(crate) fn seal(record: AuditRecord, tail: &Tail, ts_ms: i64) -> AuditEntry {
    let mut entry = AuditEntry {
        record,
        seq: tail.seq + 1,
        ts_ms,
        prev: tail.hash.clone(),
        hash: String::new(),
    };
    entry.hash = entry_hash(&entry);
    entry
}

/// Where a chain stops being intact: entries before `seq` are intact, the one at `seq`'s
/// place is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain broken at seq {seq}: {reason}")]
pub struct ChainBreak {
    /// The first sequence number whose entry is wrong or missing.
    pub seq: u64,
    /// What is wrong there.
    pub reason: BreakReason,
}

/// What [`verify`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakReason {
    /// The entry's hash does not match its contents: a field was changed after it was written.
    #[error("entry edited: its hash does not match its contents")]
    Edited,
    /// The entry is absent and a later one follows: it was deleted.
    #[error("entry missing (deleted): the next entry found is seq {found}")]
    Missing { found: u64 },
    /// The entry is there but not in its place: entries were reordered.
    #[error("entries out of order: seq {found} is in its place")]
    Reordered { found: u64 },
    /// The entry does not link to the one before it (a forged or transplanted entry).
    #[error("entry does not link to the previous entry's hash")]
    BrokenLink,
    /// The entry belongs to another session's chain.
    #[error("entry belongs to session {found}")]
    ForeignSession { found: String },
}

/// Checks that `entries` (oldest first) are one intact chain from genesis: sequence numbers
/// 1, 2, 3, ..., each `prev` the hash of the entry before, each hash matching its entry, one
/// session. Returns the number of entries, or where and why the chain breaks.
pub fn verify(entries: &[AuditEntry]) -> Result<usize, ChainBreak> {
    let mut prev = GENESIS;
    let session = entries.first().map(|e| e.record.session_id.as_str());
    for (i, entry) in entries.iter().enumerate() {
        let seq = i as u64 + 1;
        let broken = |reason| Err(ChainBreak { seq, reason });
        if entry.hash != entry_hash(entry) {
            return broken(BreakReason::Edited);
        }
        if Some(entry.record.session_id.as_str()) != session {
            return broken(BreakReason::ForeignSession {
                found: entry.record.session_id.clone(),
            });
        }
        if entry.seq != seq {
            let found = entry.seq;
            let later = entries[i + 1..].iter().any(|e| e.seq == seq);
            return if found < seq || later {
                broken(BreakReason::Reordered { found })
            } else {
                broken(BreakReason::Missing { found })
            };
        }
        if entry.prev != prev {
            return broken(BreakReason::BrokenLink);
        }
        prev = &entry.hash;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::super::bound_args;
    use super::*;

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            session_id: "s-1".into(),
            subject: "alice".into(),
            origin: Origin::Chat,
            client: None,
            tool: "exec".into(),
            args: serde_json::json!({"command": format!("echo {i}"), "b": 1, "a": [1.5, null]}),
            decision: Decision::Approved,
            decided_by: "user".into(),
            started_ms: 1_000 + i as i64,
            ended_ms: 1_010 + i as i64,
            status: "ok".into(),
            exit_code: Some(0),
            stdout_bytes: 2,
            stdout_sha256: "ab".into(),
            stderr_bytes: 0,
            stderr_sha256: "cd".into(),
        }
    }

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut tail = Tail::genesis();
        (1..=n)
            .map(|i| {
                let entry = seal(record(i), &tail, 5_000 + i as i64);
                tail = Tail::of(&entry);
                entry
            })
            .collect()
    }

    #[test]
    fn hash_is_deterministic_and_survives_a_json_round_trip() {
        let a = chain(3);
        let b = chain(3);
        assert_eq!(a, b);
        assert_eq!(a[0].prev, GENESIS);
        assert_eq!(a[1].prev, a[0].hash);
        for entry in &a {
            let json = serde_json::to_string(entry).unwrap();
            let back: AuditEntry = serde_json::from_str(&json).unwrap();
            assert_eq!(entry_hash(&back), entry.hash);
        }
    }

    #[test]
    fn the_hash_covers_every_field() {
        let base = chain(1).remove(0);
        let edits: &[fn(&mut AuditEntry)] = &[
            |e| e.seq = 2,
            |e| e.ts_ms += 1,
            |e| e.prev = "1".repeat(64),
            |e| e.record.session_id = "s-2".into(),
            |e| e.record.subject = "mallory".into(),
            |e| e.record.origin = Origin::Mcp,
            |e| e.record.client = Some("x/1".into()),
            |e| e.record.tool = "write_file".into(),
            |e| e.record.args["b"] = 2.into(),
            |e| e.record.decision = Decision::Automatic,
            |e| e.record.decided_by = "policy:none".into(),
            |e| e.record.started_ms += 1,
            |e| e.record.ended_ms += 1,
            |e| e.record.status = "error".into(),
            |e| e.record.exit_code = None,
            |e| e.record.stdout_bytes += 1,
            |e| e.record.stdout_sha256 = "ff".into(),
            |e| e.record.stderr_bytes += 1,
            |e| e.record.stderr_sha256 = "ff".into(),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut e = base.clone();
            edit(&mut e);
            assert_ne!(entry_hash(&e), base.hash, "edit {i} is not hashed");
        }
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(20)), Ok(20));
        assert_eq!(verify(&[]), Ok(0));
    }

    #[test]
    fn an_edited_field_is_found() {
        let mut entries = chain(10);
        entries[6].record.status = "ok-ish".into();
        let err = verify(&entries).unwrap_err();
        assert_eq!((err.seq, err.reason), (7, BreakReason::Edited));
    }

    #[test]
    fn an_edited_and_rehashed_entry_breaks_the_next_link() {
        let mut entries = chain(10);
        entries[6].record.exit_code = Some(1);
        entries[6].hash = entry_hash(&entries[6]);
        let err = verify(&entries).unwrap_err();
        assert_eq!((err.seq, err.reason), (8, BreakReason::BrokenLink));
    }

    #[test]
    fn a_deleted_middle_entry_is_found() {
        let mut entries = chain(10);
        entries.remove(4);
        let err = verify(&entries).unwrap_err();
        assert_eq!(
            (err.seq, err.reason),
            (5, BreakReason::Missing { found: 6 })
        );
    }

    #[test]
    fn a_reordered_pair_is_found() {
        let mut entries = chain(10);
        entries.swap(3, 4);
        let err = verify(&entries).unwrap_err();
        assert_eq!(
            (err.seq, err.reason),
            (4, BreakReason::Reordered { found: 5 })
        );
    }

    #[test]
    fn a_renumbered_forgery_does_not_link() {
        // A forged entry with consistent seq and hash, but not made from the real tail.
        let mut entries = chain(5);
        let forged = seal(record(99), &Tail::genesis(), 1);
        let forged = AuditEntry { seq: 6, ..forged };
        let forged = AuditEntry {
            hash: entry_hash(&forged),
            ..forged
        };
        entries.push(forged);
        let err = verify(&entries).unwrap_err();
        assert_eq!((err.seq, err.reason), (6, BreakReason::BrokenLink));
    }

    #[test]
    fn the_example_in_the_api_docs_verifies() {
        let doc = include_str!("../../docs/API.md");
        let start = doc
            .find("An entry:\n\n```json\n")
            .expect("example in docs/API.md");
        let json = &doc[start + "An entry:\n\n```json\n".len()..];
        let json = &json[..json.find("```").expect("end of the example")];
        let entry: AuditEntry = serde_json::from_str(json).unwrap();
        assert_eq!(entry.hash, entry_hash(&entry), "the documented hash");
        assert_eq!(verify(&[entry]), Ok(1));
    }

    #[test]
    fn truncated_args_are_hashed_as_stored() {
        let mut r = record(1);
        r.args = bound_args(serde_json::json!({"content": "x".repeat(10_000)}));
        let entry = seal(r, &Tail::genesis(), 1);
        assert_eq!(entry.record.args["truncated"], true);
        assert_eq!(verify(&[entry]), Ok(1));
    }
}
