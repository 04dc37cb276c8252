//! The hash-chained ledger: one immutable entry per accepted operation, each
//! carrying the enrollment as it stood right after it and a SHA-256 over its
//! canonical bytes and the previous entry's hash.

use crate::operation::{Applied, Command, EnrollTerms, EnrollmentState, Request, apply};
use crate::{
    Amount, Currency, Enrollment, EnrollmentKey, IdempotencyKey, Price, Reason, Reference,
    Timestamp,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

/// A SHA-256 digest, shown as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev_hash` of an enrollment's first entry.
    pub const ZERO: Hash = Hash([0; 32]);

    pub fn of(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(64);
        for byte in self.0 {
            text.push(DIGITS[usize::from(byte >> 4)] as char);
            text.push(DIGITS[usize::from(byte & 15)] as char);
        }
        text
    }

    pub fn from_hex(text: &str) -> Option<Hash> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let digit = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (index, pair) in bytes.chunks(2).enumerate() {
            out[index] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Hash(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Hash::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("hash must be 64 lower-case hex digits"))
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryKind {
    Enroll,
    Payment,
    Credit,
    Refund,
    Charge,
    Complete,
    Cancel,
}

impl EntryKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryKind::Enroll => "ENROLL",
            EntryKind::Payment => "PAYMENT",
            EntryKind::Credit => "CREDIT",
            EntryKind::Refund => "REFUND",
            EntryKind::Charge => "CHARGE",
            EntryKind::Complete => "COMPLETE",
            EntryKind::Cancel => "CANCEL",
        }
    }

    pub fn parse(text: &str) -> Option<EntryKind> {
        [
            EntryKind::Enroll,
            EntryKind::Payment,
            EntryKind::Credit,
            EntryKind::Refund,
            EntryKind::Charge,
            EntryKind::Complete,
            EntryKind::Cancel,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// One immutable ledger entry, exactly as the API shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// 1 for the enrolment, then one more per accepted operation; always equal
    /// to `enrollment.version`.
    pub seq: u64,
    pub kind: EntryKind,
    /// Minor units moved; the price for `ENROLL`, 0 for `COMPLETE`/`CANCEL`.
    pub amount: i64,
    pub currency: Currency,
    pub idempotency_key: Option<IdempotencyKey>,
    pub reference: Option<Reference>,
    pub reason: Option<Reason>,
    pub created_at: Timestamp,
    pub enrollment: Enrollment,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// The canonical bytes an entry's hash covers: the compact JSON of these
/// fields in this order (struct order is fixed, so the bytes are too).
#[derive(Serialize)]
struct CanonicalEntry<'a> {
    prev_hash: &'a Hash,
    seq: u64,
    kind: EntryKind,
    amount: i64,
    currency: &'a Currency,
    idempotency_key: &'a Option<IdempotencyKey>,
    reference: &'a Option<Reference>,
    reason: &'a Option<Reason>,
    created_at: &'a Timestamp,
    enrollment: &'a Enrollment,
}

impl LedgerEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        seq: u64,
        kind: EntryKind,
        amount: i64,
        idempotency_key: Option<IdempotencyKey>,
        reference: Option<Reference>,
        reason: Option<Reason>,
        created_at: Timestamp,
        enrollment: Enrollment,
        prev_hash: Hash,
    ) -> LedgerEntry {
        let mut entry = LedgerEntry {
            seq,
            kind,
            amount,
            currency: enrollment.currency,
            idempotency_key,
            reference,
            reason,
            created_at,
            enrollment,
            prev_hash,
            hash: Hash::ZERO,
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// SHA-256 over the canonical bytes; equal to `hash` unless tampered with.
    pub fn compute_hash(&self) -> Hash {
        let canonical = CanonicalEntry {
            prev_hash: &self.prev_hash,
            seq: self.seq,
            kind: self.kind,
            amount: self.amount,
            currency: &self.currency,
            idempotency_key: &self.idempotency_key,
            reference: &self.reference,
            reason: &self.reason,
            created_at: &self.created_at,
            enrollment: &self.enrollment,
        };
        Hash::of(&serde_json::to_vec(&canonical).expect("an entry always serializes"))
    }

    /// The command that, applied to the previous snapshot at `created_at`,
    /// produces this entry. `None` if the entry cannot have come from any
    /// command (for example a credit without a reason).
    fn command(&self) -> Option<Command> {
        let amount = || Amount::new(i128::from(self.amount)).ok();
        Some(match self.kind {
            EntryKind::Enroll => Command::Enroll(EnrollTerms {
                currency: self.enrollment.currency,
                price: Price::new(i128::from(self.amount)).ok()?,
                access_policy: self.enrollment.access_policy,
            }),
            EntryKind::Payment => Command::Payment {
                amount: amount()?,
                currency: None,
                reference: self.reference.clone(),
            },
            EntryKind::Credit => Command::Credit {
                amount: amount()?,
                reason: self.reason.clone()?,
            },
            EntryKind::Refund => Command::Refund {
                amount: amount()?,
                reason: self.reason.clone()?,
                reference: self.reference.clone(),
            },
            EntryKind::Charge => Command::Charge {
                amount: amount()?,
                reason: self.reason.clone()?,
            },
            EntryKind::Complete => Command::Complete,
            EntryKind::Cancel => Command::Cancel,
        })
    }
}

/// One way in which stored data disagrees with its own ledger.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    pub user_id: String,
    pub course_id: String,
    /// The entry at fault, if one is.
    pub seq: Option<u64>,
    pub problem: String,
}

/// Replays one enrollment's ledger from nothing and compares every entry (and
/// finally the stored enrollment) with what replay gives. Returns every
/// disagreement found; empty means the chain and the balances are sound.
pub fn verify_chain(
    key: &EnrollmentKey,
    entries: &[LedgerEntry],
    stored: Option<&Enrollment>,
) -> Vec<Disagreement> {
    let mut problems = Vec::new();
    let mut report = |seq: Option<u64>, problem: String| {
        problems.push(Disagreement {
            user_id: key.user_id.to_string(),
            course_id: key.course_id.to_string(),
            seq,
            problem,
        });
    };
    let mut state: Option<EnrollmentState> = None;
    let mut prev_hash = Hash::ZERO;
    for (index, entry) in entries.iter().enumerate() {
        let seq = Some(entry.seq);
        if entry.seq != index as u64 + 1 {
            report(
                seq,
                format!(
                    "sequence gap: expected seq {}, found {}",
                    index + 1,
                    entry.seq
                ),
            );
        }
        if entry.prev_hash != prev_hash {
            report(
                seq,
                format!(
                    "prev_hash {} does not match the previous entry's hash {}",
                    entry.prev_hash, prev_hash
                ),
            );
        }
        let computed = entry.compute_hash();
        if computed != entry.hash {
            report(
                seq,
                format!(
                    "hash mismatch: stored {}, computed {} (the entry was altered)",
                    entry.hash, computed
                ),
            );
        }
        if entry.enrollment.key() != *key {
            report(seq, format!("entry belongs to {}", entry.enrollment.key()));
        }
        let replayed = match entry.command() {
            None => {
                report(
                    seq,
                    format!(
                        "{} of {} is not a valid operation",
                        entry.kind.as_str(),
                        entry.amount
                    ),
                );
                None
            }
            Some(command) => {
                let request = Request {
                    key: key.clone(),
                    idempotency_key: entry.idempotency_key.clone(),
                    command,
                };
                match apply(state.as_ref(), &request, entry.created_at) {
                    Ok(Applied::Entry(expected)) => Some(expected.enrollment),
                    Ok(Applied::Unchanged(_)) => {
                        report(seq, "a second ENROLL entry".to_owned());
                        None
                    }
                    Err(rejection) => {
                        report(
                            seq,
                            format!(
                                "replaying {} of {} is refused: {rejection}",
                                entry.kind.as_str(),
                                entry.amount
                            ),
                        );
                        None
                    }
                }
            }
        };
        if let Some(replayed) = replayed.filter(|replayed| *replayed != entry.enrollment) {
            report(
                seq,
                describe_difference(
                    "replaying the ledger gives",
                    &replayed,
                    "the entry's snapshot says",
                    &entry.enrollment,
                ),
            );
        }
        if let Err(broken) = entry.enrollment.check() {
            report(seq, format!("snapshot breaks an invariant: {broken}"));
        }
        // Continue from the stored snapshot, so one bad entry is reported
        // once rather than poisoning every entry after it.
        state = Some(EnrollmentState {
            enrollment: entry.enrollment.clone(),
            last_hash: entry.hash,
        });
        prev_hash = entry.hash;
    }
    match (stored, entries.last()) {
        (Some(stored), Some(last)) => {
            if *stored != last.enrollment {
                report(
                    None,
                    describe_difference(
                        "the stored enrollment says",
                        stored,
                        "its newest ledger entry says",
                        &last.enrollment,
                    ),
                );
            }
        }
        (Some(_), None) => report(None, "the enrollment has no ledger entries".to_owned()),
        (None, Some(_)) => report(
            None,
            "ledger entries exist for an enrollment that does not".to_owned(),
        ),
        (None, None) => {}
    }
    problems
}

fn describe_difference(
    left_label: &str,
    left: &Enrollment,
    right_label: &str,
    right: &Enrollment,
) -> String {
    let left_json = serde_json::to_value(left).expect("serializes");
    let right_json = serde_json::to_value(right).expect("serializes");
    let mut fields = Vec::new();
    if let (Some(left_map), Some(right_map)) = (left_json.as_object(), right_json.as_object()) {
        for (name, left_value) in left_map {
            let right_value = &right_map[name];
            if left_value != right_value {
                fields.push(format!("{name} {left_value} vs {right_value}"));
            }
        }
    }
    format!("{left_label} / {right_label}: {}", fields.join(", "))
}
