//! Digests: one SHA-256 root that commits to every ledger entry up to a
//! position of the global order, so that a digest kept outside bursar later
//! proves that nothing it covers was removed or rewritten — what the
//! per-enrollment hash chains cannot see (a truncated tail, or a whole
//! enrollment deleted together with its entries).
//!
//! The root is a hash chain over the entries in position order:
//!
//! ```text
//! root_0 = 32 zero bytes
//! root_i = SHA-256(root_(i-1) ‖ position_i as 8 bytes big-endian ‖ hash_i as 32 bytes)
//! ```
//!
//! where `hash_i` is the entry's stored `hash`, which covers its content and,
//! through `prev_hash`, its enrollment's chain. Positions are dense (an entry
//! at `p` with `n` events is followed by the next one at `p + n`), so a
//! missing entry is also a visible gap. Taking a digest and checking one are
//! the same fold, [`DigestFold`], fed one row at a time in position order:
//! its memory does not grow with the ledger.

use crate::Timestamp;
use crate::event::{Transitions, event_count};
use crate::ledger::{EntryKind, Hash};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Most findings a check lists about single positions (gaps, overlaps,
/// unreadable rows). A ledger emptied at every other entry has a gap at each
/// of them; the first thousand show what happened and where, and holding
/// them all would let one huge damaged ledger exhaust the check's memory.
/// The rest are counted in one line; the closing findings (tail, counts,
/// root) are always given.
pub const DIGEST_FINDINGS_MAX: usize = 1000;

/// What a digest says: the ledger up to `position` had `entries` entries of
/// `enrollments` enrollments, and their root was `root`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The last event position covered: the last event of the newest entry
    /// (the feed's numbers). 0 for an empty ledger.
    pub position: u64,
    /// How many ledger entries it covers.
    pub entries: u64,
    /// How many enrollments those entries belong to (the number of their
    /// `ENROLL` entries, `seq` 1: each enrollment's first).
    pub enrollments: u64,
    /// The hash chain over the covered entries, in position order.
    pub root: Hash,
    /// When the digest was taken (server time).
    pub created_at: Timestamp,
}

/// One step of the root: the root after the entry at `position` whose
/// stored hash is `hash`, given the root before it.
pub fn root_step(root: &Hash, position: u64, hash: &Hash) -> Hash {
    let mut bytes = [0u8; 72];
    bytes[..32].copy_from_slice(&root.0);
    bytes[32..40].copy_from_slice(&position.to_be_bytes());
    bytes[40..].copy_from_slice(&hash.0);
    Hash::of(&bytes)
}

/// A ledger row as the digest reads it.
#[derive(Debug, Clone, Copy)]
pub struct DigestRow<'a> {
    pub position: u64,
    pub kind: EntryKind,
    pub transitions: Transitions,
    pub seq: u64,
    /// The stored `hash`.
    pub hash: Hash,
    pub user_id: &'a str,
    pub course_id: &'a str,
}

/// What a finding is about.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Positions missing between two entries: an entry was deleted.
    Gap,
    /// Positions missing at the end: the newest covered entries were deleted.
    TailTruncated,
    /// An entry starts inside the events of the one before it.
    Overlap,
    /// The last covered entry's events run past the digest's position.
    PastEnd,
    /// A ledger row whose position, kind, transitions or hash cannot be read.
    Unreadable,
    /// Ledger rows without a position, which no digest covers.
    Unplaced,
    EntriesDiffer,
    EnrollmentsDiffer,
    RootDiffers,
    /// How many more findings there were beyond `DIGEST_FINDINGS_MAX`.
    NotListed,
}

/// A run of positions, both ends included.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Positions {
    pub first: u64,
    pub last: u64,
}

/// One way in which the ledger disagrees with a digest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DigestFinding {
    pub kind: FindingKind,
    /// The positions it is about, if it is about some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positions: Option<Positions>,
    /// In words.
    pub problem: String,
}

/// What the ledger holds up to a digest's position now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DigestFound {
    /// The last event position of the entries read (0 if none).
    pub position: u64,
    pub entries: u64,
    pub enrollments: u64,
    pub root: Hash,
}

/// The result of checking a ledger against a digest: `ok` exactly when
/// `findings` is empty.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DigestCheck {
    pub ok: bool,
    /// The digest checked against.
    pub digest: Digest,
    pub found: DigestFound,
    pub findings: Vec<DigestFinding>,
}

/// The entry read last: it names the neighbours of a gap.
#[derive(Debug, Default)]
struct Previous {
    position: u64,
    seq: u64,
    /// `user_id/course_id`, rewritten in place for each row.
    enrollment: String,
}

impl Previous {
    fn describe(&self) -> String {
        format!("{} seq {} at {}", self.enrollment, self.seq, self.position)
    }
}

/// The fold behind taking and checking digests: push every ledger row with
/// `position <= P` in position order, then [`DigestFold::digest`] or
/// [`DigestFold::check`].
#[derive(Debug)]
pub struct DigestFold {
    root: Hash,
    entries: u64,
    enrollments: u64,
    /// Where the next entry should start (one past the last event read), or
    /// `None` right after an unreadable row, whose events are unknown.
    next: Option<u64>,
    /// The highest event position of the rows read.
    end: u64,
    previous: Option<Previous>,
    /// The first findings about single positions, and how many there were.
    findings: Vec<DigestFinding>,
    findings_found: u64,
    unreadable: u64,
    /// Why the first unreadable row could not be read.
    first_unreadable: Option<String>,
    unplaced: u64,
}

impl Default for DigestFold {
    fn default() -> Self {
        DigestFold::new()
    }
}

impl DigestFold {
    pub fn new() -> DigestFold {
        DigestFold {
            root: Hash::ZERO,
            entries: 0,
            enrollments: 0,
            next: Some(1),
            end: 0,
            previous: None,
            findings: Vec::new(),
            findings_found: 0,
            unreadable: 0,
            first_unreadable: None,
            unplaced: 0,
        }
    }

    fn find(&mut self, kind: FindingKind, positions: Option<Positions>, problem: String) {
        self.findings_found += 1;
        if self.findings.len() < DIGEST_FINDINGS_MAX {
            self.findings.push(DigestFinding {
                kind,
                positions,
                problem,
            });
        }
    }

    /// Compares where a row at `position` starts with where the one before
    /// it ended.
    fn place(&mut self, position: u64, this: impl Fn() -> String) {
        let Some(next) = self.next else {
            return;
        };
        let previous = || self.previous.as_ref().map(Previous::describe);
        if position > next {
            let after = previous().map_or_else(
                || "at the start of the ledger".to_owned(),
                |previous| format!("after {previous}"),
            );
            let problem = format!(
                "{} missing: at least one entry deleted ({after}, before {})",
                range(next, position - 1),
                this()
            );
            let positions = Positions {
                first: next,
                last: position - 1,
            };
            self.find(FindingKind::Gap, Some(positions), problem);
        } else if position < next {
            // `next` > 1 here, so an entry was read before this one.
            let problem = format!(
                "{} starts inside the events of the entry before it ({}, whose events end \
                 at {}): a stored position or transitions were changed",
                this(),
                previous().unwrap_or_default(),
                next - 1
            );
            let positions = Positions {
                first: position,
                last: next - 1,
            };
            self.find(FindingKind::Overlap, Some(positions), problem);
        }
    }

    /// The next row, in position order.
    pub fn push(&mut self, row: &DigestRow<'_>) {
        let this = || {
            format!(
                "{}/{} seq {} at {}",
                row.user_id, row.course_id, row.seq, row.position
            )
        };
        self.place(row.position, this);
        let last = row.position + event_count(row.kind, row.transitions) - 1;
        self.root = root_step(&self.root, row.position, &row.hash);
        self.entries += 1;
        self.enrollments += u64::from(row.seq == 1);
        self.next = Some(last + 1);
        self.end = self.end.max(last);
        let previous = self.previous.get_or_insert_with(Previous::default);
        previous.position = row.position;
        previous.seq = row.seq;
        previous.enrollment.clear();
        let _ = write!(previous.enrollment, "{}/{}", row.user_id, row.course_id);
    }

    /// A row in the order that cannot be read (`position` if that much
    /// could be): it counts as an entry, but its events and hash are unknown,
    /// so the root cannot match.
    pub fn push_unreadable(&mut self, position: Option<u64>, problem: String) {
        let positions = position.map(|position| Positions {
            first: position,
            last: position,
        });
        if let Some(position) = position {
            self.place(position, || format!("the unreadable row at {position}"));
            self.end = self.end.max(position);
        }
        self.find(
            FindingKind::Unreadable,
            positions,
            format!("a ledger row cannot be read: {problem}"),
        );
        self.first_unreadable.get_or_insert(problem);
        self.unreadable += 1;
        self.entries += 1;
        self.next = None;
    }

    /// `rows` ledger rows have no position at all (only a hand-made change
    /// leaves one so): nothing in position order can account for them.
    pub fn note_unplaced(&mut self, rows: u64) {
        self.unplaced += rows;
    }

    /// The digest of the rows pushed, taken at `created_at`. Refused when a
    /// row could not be read: a digest must commit to every entry it covers.
    pub fn digest(self, created_at: Timestamp) -> Result<Digest, String> {
        if let Some(first) = &self.first_unreadable {
            return Err(format!(
                "cannot take a digest: {} cannot be read, the first {first} (bursar audit \
                 names the damage)",
                rows(self.unreadable)
            ));
        }
        Ok(Digest {
            position: self.end,
            entries: self.entries,
            enrollments: self.enrollments,
            root: self.root,
            created_at,
        })
    }

    /// Compares the rows pushed (those with `position <= digest.position`)
    /// with `digest`: gaps and overlaps as they were found, then rows without
    /// a position, a truncated tail, the counts and finally the root.
    pub fn check(mut self, digest: &Digest) -> DigestCheck {
        let found = DigestFound {
            position: self.end,
            entries: self.entries,
            enrollments: self.enrollments,
            root: self.root,
        };
        let mut findings = std::mem::take(&mut self.findings);
        let not_listed = self.findings_found - findings.len() as u64;
        if not_listed > 0 {
            findings.push(DigestFinding {
                kind: FindingKind::NotListed,
                positions: None,
                problem: format!("{not_listed} more findings like these are not listed"),
            });
        }
        let mut add = |kind, positions, problem| {
            findings.push(DigestFinding {
                kind,
                positions,
                problem,
            })
        };
        if self.unplaced > 0 {
            add(
                FindingKind::Unplaced,
                None,
                format!(
                    "{} no position, so no digest covers {} (written or changed outside \
                     bursar)",
                    match self.unplaced {
                        1 => "1 ledger row has".to_owned(),
                        many => format!("{many} ledger rows have"),
                    },
                    if self.unplaced == 1 { "it" } else { "them" }
                ),
            );
        }
        // After an unreadable last row its end is unknown: it is reported.
        if self.next.is_some() {
            if self.end < digest.position {
                let last = match &self.previous {
                    Some(previous) => format!("the last entry left is {}", previous.describe()),
                    None => "no entry is left".to_owned(),
                };
                add(
                    FindingKind::TailTruncated,
                    Some(Positions {
                        first: self.end + 1,
                        last: digest.position,
                    }),
                    format!(
                        "{} missing at the end: the ledger's tail was truncated \
                         (the digest covers up to {}; {last})",
                        range(self.end + 1, digest.position),
                        digest.position
                    ),
                );
            } else if self.end > digest.position {
                let last = self
                    .previous
                    .as_ref()
                    .map_or_else(String::new, Previous::describe);
                add(
                    FindingKind::PastEnd,
                    Some(Positions {
                        first: digest.position + 1,
                        last: self.end,
                    }),
                    format!(
                        "the last covered entry, {last}, has events up to {}, past the \
                         digest's position {}: its stored transitions were changed",
                        self.end, digest.position
                    ),
                );
            }
        }
        if found.entries != digest.entries {
            add(
                FindingKind::EntriesDiffer,
                None,
                format!(
                    "the digest covers {} entries, {} are there ({})",
                    digest.entries,
                    found.entries,
                    difference(digest.entries, found.entries)
                ),
            );
        }
        if found.enrollments != digest.enrollments {
            add(
                FindingKind::EnrollmentsDiffer,
                None,
                format!(
                    "the digest covers {} enrollments, {} are there ({})",
                    digest.enrollments,
                    found.enrollments,
                    difference(digest.enrollments, found.enrollments)
                ),
            );
        }
        if found.root != digest.root {
            add(
                FindingKind::RootDiffers,
                None,
                format!(
                    "the root is {}, the digest's is {}: an entry it covers was removed, \
                     added or rewritten",
                    found.root, digest.root
                ),
            );
        }
        DigestCheck {
            ok: findings.is_empty(),
            digest: digest.clone(),
            found,
            findings,
        }
    }
}

/// `positions 17–19` or `position 17`.
fn range(first: u64, last: u64) -> String {
    if first == last {
        format!("position {first}")
    } else {
        format!("positions {first}–{last}")
    }
}

/// `1 ledger row` or `N ledger rows`.
fn rows(count: u64) -> String {
    match count {
        1 => "1 ledger row".to_owned(),
        many => format!("{many} ledger rows"),
    }
}

fn difference(expected: u64, found: u64) -> String {
    if found < expected {
        format!("{} fewer", expected - found)
    } else {
        format!("{} more", found - expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(position: u64, kind: EntryKind, seq: u64, hash: u8) -> (u64, EntryKind, u64, Hash) {
        (position, kind, seq, Hash([hash; 32]))
    }

    /// Folds rows of `u/c` (transitions none).
    fn fold(rows: &[(u64, EntryKind, u64, Hash)]) -> DigestFold {
        let mut fold = DigestFold::new();
        for (position, kind, seq, hash) in rows {
            fold.push(&DigestRow {
                position: *position,
                kind: *kind,
                transitions: Transitions::NONE,
                seq: *seq,
                hash: *hash,
                user_id: "u",
                course_id: &format!("c{}", hash.0[0]),
            });
        }
        fold
    }

    fn at() -> Timestamp {
        Timestamp::from_unix_micros(1_700_000_000_000_000)
    }

    fn kinds(check: &DigestCheck) -> Vec<FindingKind> {
        check.findings.iter().map(|finding| finding.kind).collect()
    }

    /// A ledger of four entries: an enroll at 1, a capture (two events) at 2,
    /// a second enrollment at 4 and its payment at 5.
    fn ledger() -> Vec<(u64, EntryKind, u64, Hash)> {
        vec![
            row(1, EntryKind::Enroll, 1, 1),
            row(2, EntryKind::Capture, 2, 1),
            row(4, EntryKind::Enroll, 1, 2),
            row(5, EntryKind::Payment, 2, 2),
        ]
    }

    #[test]
    fn the_root_is_pinned() {
        // Computed independently (Python's hashlib) from the definition.
        let first = root_step(&Hash::ZERO, 1, &Hash([0x11; 32]));
        assert_eq!(
            first.to_hex(),
            "8bdbfe12a05c9146f45b4ef6d5e2cce12f35ea40cf4c0f06a221669756b0eac1"
        );
        assert_eq!(
            root_step(&first, 3, &Hash([0x22; 32])).to_hex(),
            "ddd446dda801eed8ed2c72c5883719002a92decfa843cce92a4cf832bd318add"
        );
    }

    #[test]
    fn an_empty_ledger_has_the_zero_root_at_position_0() {
        let digest = DigestFold::new().digest(at()).expect("digest");
        assert_eq!(
            (
                digest.position,
                digest.entries,
                digest.enrollments,
                digest.root
            ),
            (0, 0, 0, Hash::ZERO)
        );
        assert!(DigestFold::new().check(&digest).ok);
    }

    #[test]
    fn a_digest_covers_the_last_event_and_counts_enrollments() {
        let digest = fold(&ledger()).digest(at()).expect("digest");
        assert_eq!(digest.position, 5);
        assert_eq!(digest.entries, 4);
        assert_eq!(digest.enrollments, 2);
        let mut root = Hash::ZERO;
        for (position, _, _, hash) in ledger() {
            root = root_step(&root, position, &hash);
        }
        assert_eq!(digest.root, root);
        let check = fold(&ledger()).check(&digest);
        assert!(check.ok, "{check:?}");
        assert_eq!(check.found.root, digest.root);
        // The JSON a digest is kept as reads back the same.
        let text = serde_json::to_string(&digest).expect("json");
        assert_eq!(
            serde_json::from_str::<Digest>(&text).expect("read back"),
            digest
        );
    }

    #[test]
    fn a_deleted_entry_is_a_gap_named_with_its_neighbours() {
        let digest = fold(&ledger()).digest(at()).expect("digest");
        let mut damaged = ledger();
        damaged.remove(1);
        let check = fold(&damaged).check(&digest);
        assert!(!check.ok);
        assert_eq!(
            kinds(&check),
            [
                FindingKind::Gap,
                FindingKind::EntriesDiffer,
                FindingKind::RootDiffers
            ]
        );
        assert_eq!(
            check.findings[0].positions,
            Some(Positions { first: 2, last: 3 })
        );
        assert_eq!(
            check.findings[0].problem,
            "positions 2–3 missing: at least one entry deleted (after u/c1 seq 1 at 1, before u/c2 seq 1 at 4)"
        );
        // A deleted first entry is a gap at the start.
        let check = fold(&ledger()[1..]).check(&digest);
        assert!(
            check.findings[0]
                .problem
                .starts_with("position 1 missing: at least one entry deleted (at the start"),
            "{check:?}"
        );
        assert!(kinds(&check).contains(&FindingKind::EnrollmentsDiffer));
    }

    #[test]
    fn a_truncated_tail_is_named() {
        let digest = fold(&ledger()).digest(at()).expect("digest");
        let check = fold(&ledger()[..2]).check(&digest);
        assert_eq!(
            kinds(&check),
            [
                FindingKind::TailTruncated,
                FindingKind::EntriesDiffer,
                FindingKind::EnrollmentsDiffer,
                FindingKind::RootDiffers
            ]
        );
        assert_eq!(
            check.findings[0].positions,
            Some(Positions { first: 4, last: 5 })
        );
        assert!(
            check.findings[0]
                .problem
                .contains("the last entry left is u/c1 seq 2 at 2"),
            "{check:?}"
        );
        assert_eq!(
            check.findings[1].problem,
            "the digest covers 4 entries, 2 are there (2 fewer)"
        );
        // Everything deleted.
        let check = fold(&[]).check(&digest);
        assert!(check.findings[0].problem.contains("no entry is left"));
    }

    #[test]
    fn a_rewritten_hash_changes_only_the_root() {
        let digest = fold(&ledger()).digest(at()).expect("digest");
        let mut rewritten = ledger();
        rewritten[2].3 = Hash([9; 32]);
        let check = fold(&rewritten).check(&digest);
        assert_eq!(kinds(&check), [FindingKind::RootDiffers]);
    }

    #[test]
    fn changed_transitions_overlap_or_run_past_the_end() {
        let digest = fold(&ledger()).digest(at()).expect("digest");
        let push = |fold: &mut DigestFold, position, transitions| {
            fold.push(&DigestRow {
                position,
                kind: EntryKind::Payment,
                transitions,
                seq: 2,
                hash: Hash([1; 32]),
                user_id: "u",
                course_id: "c",
            });
        };
        let paid = Transitions::from_bits(1).expect("bits");
        let mut overlapping = DigestFold::new();
        push(
            &mut overlapping,
            1,
            Transitions::from_bits(3).expect("bits"),
        );
        push(&mut overlapping, 3, Transitions::NONE);
        let check = overlapping.check(&digest);
        assert_eq!(check.findings[0].kind, FindingKind::Overlap);
        assert_eq!(
            check.findings[0].positions,
            Some(Positions { first: 3, last: 3 })
        );
        let mut past = DigestFold::new();
        push(&mut past, 1, Transitions::NONE);
        push(&mut past, 2, Transitions::NONE);
        push(&mut past, 3, Transitions::NONE);
        push(&mut past, 4, Transitions::NONE);
        push(&mut past, 5, paid);
        let check = past.check(&digest);
        assert_eq!(check.findings[0].kind, FindingKind::PastEnd);
        assert_eq!(
            check.findings[0].positions,
            Some(Positions { first: 6, last: 6 })
        );
    }

    #[test]
    fn unreadable_and_unplaced_rows_are_findings_and_no_digest_is_taken() {
        let digest = fold(&ledger()).digest(at()).expect("digest");
        let mut damaged = fold(&ledger()[..2]);
        damaged.push_unreadable(Some(4), "bad hash".into());
        assert!(damaged.digest(at()).is_err());
        let mut damaged = fold(&ledger()[..2]);
        damaged.push_unreadable(Some(4), "bad hash".into());
        damaged.note_unplaced(2);
        let check = damaged.check(&digest);
        assert_eq!(
            kinds(&check),
            [
                FindingKind::Unreadable,
                FindingKind::Unplaced,
                FindingKind::EntriesDiffer,
                FindingKind::EnrollmentsDiffer,
                FindingKind::RootDiffers
            ]
        );
    }

    #[test]
    fn findings_are_capped_and_the_rest_counted() {
        let rows: Vec<_> = (0..DIGEST_FINDINGS_MAX as u64 + 10)
            .map(|index| row(2 * index + 1, EntryKind::Payment, 2, 1))
            .collect();
        let digest = fold(&rows).digest(at()).expect("digest");
        let check = fold(&rows).check(&digest);
        assert_eq!(check.findings.len(), DIGEST_FINDINGS_MAX + 1);
        assert_eq!(
            check.findings[DIGEST_FINDINGS_MAX].problem,
            "9 more findings like these are not listed"
        );
    }
}
