//! The hash-chained ledger: one immutable entry per accepted operation, each
//! carrying the enrollment as it stood right after it and a SHA-256 over its
//! canonical bytes and the previous entry's hash.

use crate::enrollment::CanonicalEnrollment;
use crate::hold::{HoldAmount, HoldChange, HoldExpiry, HoldState};
use crate::intake::Source;
use crate::operation::{Applied, Command, EnrollTerms, EnrollmentState, Request, apply};
use crate::{
    Amount, Currency, Enrollment, EnrollmentKey, Hold, IdempotencyKey, Price, Reason, Reference,
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
    /// Opens a hold of `amount`, expiring at the entry's `expires_at`.
    Hold,
    /// Turns a hold into a payment of `amount`; the rest of it is released.
    Capture,
    /// Releases a hold (`amount` is what it held).
    Void,
    /// Releases a hold that reached its `expires_at` (`amount` is what it held).
    Expire,
}

impl EntryKind {
    /// Every kind.
    pub const ALL: [EntryKind; 11] = [
        EntryKind::Enroll,
        EntryKind::Payment,
        EntryKind::Credit,
        EntryKind::Refund,
        EntryKind::Charge,
        EntryKind::Complete,
        EntryKind::Cancel,
        EntryKind::Hold,
        EntryKind::Capture,
        EntryKind::Void,
        EntryKind::Expire,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            EntryKind::Enroll => "ENROLL",
            EntryKind::Payment => "PAYMENT",
            EntryKind::Credit => "CREDIT",
            EntryKind::Refund => "REFUND",
            EntryKind::Charge => "CHARGE",
            EntryKind::Complete => "COMPLETE",
            EntryKind::Cancel => "CANCEL",
            EntryKind::Hold => "HOLD",
            EntryKind::Capture => "CAPTURE",
            EntryKind::Void => "VOID",
            EntryKind::Expire => "EXPIRE",
        }
    }

    pub fn parse(text: &str) -> Option<EntryKind> {
        EntryKind::ALL
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
    /// The hold a `HOLD`, `CAPTURE`, `VOID` or `EXPIRE` entry is about (a
    /// `HOLD` entry names itself); absent on every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_seq: Option<u64>,
    /// When the hold a `HOLD` entry opens expires; absent on every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// The processor's event this entry was taken from (payment intake);
    /// `null` for the operations made through the API.
    #[serde(default)]
    pub source: Option<Source>,
    pub created_at: Timestamp,
    pub enrollment: Enrollment,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// Room for an entry's canonical bytes: most are 600 to 700 bytes.
const CANONICAL_BYTES_TYPICAL: usize = 1024;

/// The canonical bytes an entry's hash covers: the compact JSON of these
/// fields in this order (struct order is fixed, so the bytes are too). The
/// hold fields and the source appear only on the entries that have them,
/// and the enrollment's held amounts only while something is held, so every
/// entry written before holds or the intake existed keeps its hash.
#[cfg_attr(not(test), allow(dead_code))]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    hold_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<&'a Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a Source>,
    created_at: &'a Timestamp,
    enrollment: CanonicalEnrollment<'a>,
}

/// The hold fields of a new entry: which hold it names, and for a `HOLD`
/// entry when that hold expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldFields {
    pub hold_seq: Option<u64>,
    pub expires_at: Option<Timestamp>,
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
        hold: HoldFields,
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
            hold_seq: hold.hold_seq,
            expires_at: hold.expires_at,
            source: None,
            created_at,
            enrollment,
            prev_hash,
            hash: Hash::ZERO,
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// The same entry taken from a processor's event: `source` set, and the
    /// hash sealed again over it. For the planner, before anything chains
    /// to the entry.
    pub fn with_source(mut self, source: Source) -> LedgerEntry {
        self.source = Some(source);
        self.hash = self.compute_hash();
        self
    }

    /// SHA-256 over the canonical bytes; equal to `hash` unless tampered with.
    pub fn compute_hash(&self) -> Hash {
        let mut bytes = Vec::with_capacity(CANONICAL_BYTES_TYPICAL);
        self.write_canonical(&mut bytes);
        Hash::of(&bytes)
    }

    /// The canonical bytes, written field by field: the same bytes as
    /// `serde_json` renders `CanonicalEntry` (a test holds the two equal on
    /// entries of every shape), without its escaping pass over the names,
    /// hex digits, times and statuses, which never need escaping. The
    /// texts a client chose (ids, key, reference, reason) and the nested
    /// policy and source still go through `serde_json`.
    fn write_canonical(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, value: &impl Serialize) {
            serde_json::to_writer(&mut *out, value).expect("a text always serializes");
        }
        fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
            out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
        fn quoted(out: &mut Vec<u8>, value: &[u8]) {
            out.push(b'"');
            out.extend_from_slice(value);
            out.push(b'"');
        }
        fn hash(out: &mut Vec<u8>, value: &Hash) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            out.push(b'"');
            for byte in value.0 {
                out.push(DIGITS[usize::from(byte >> 4)]);
                out.push(DIGITS[usize::from(byte & 15)]);
            }
            out.push(b'"');
        }
        fn time(out: &mut Vec<u8>, value: Timestamp) {
            quoted(out, &value.rfc3339_bytes());
        }
        fn optional(out: &mut Vec<u8>, value: &Option<impl Serialize>) {
            match value {
                Some(value) => text(out, value),
                None => out.extend_from_slice(b"null"),
            }
        }
        let enrollment = &self.enrollment;
        out.extend_from_slice(b"{\"prev_hash\":");
        hash(out, &self.prev_hash);
        out.extend_from_slice(b",\"seq\":");
        number(out, self.seq);
        out.extend_from_slice(b",\"kind\":");
        quoted(out, self.kind.as_str().as_bytes());
        out.extend_from_slice(b",\"amount\":");
        number(out, self.amount);
        out.extend_from_slice(b",\"currency\":");
        text(out, &self.currency);
        out.extend_from_slice(b",\"idempotency_key\":");
        optional(out, &self.idempotency_key);
        out.extend_from_slice(b",\"reference\":");
        optional(out, &self.reference);
        out.extend_from_slice(b",\"reason\":");
        optional(out, &self.reason);
        if let Some(hold_seq) = self.hold_seq {
            out.extend_from_slice(b",\"hold_seq\":");
            number(out, hold_seq);
        }
        if let Some(expires_at) = self.expires_at {
            out.extend_from_slice(b",\"expires_at\":");
            time(out, expires_at);
        }
        if let Some(source) = &self.source {
            out.extend_from_slice(b",\"source\":");
            text(out, source);
        }
        out.extend_from_slice(b",\"created_at\":");
        time(out, self.created_at);
        out.extend_from_slice(b",\"enrollment\":{\"user_id\":");
        text(out, &enrollment.user_id);
        out.extend_from_slice(b",\"course_id\":");
        text(out, &enrollment.course_id);
        out.extend_from_slice(b",\"currency\":");
        text(out, &enrollment.currency);
        for (name, value) in [
            (&b",\"price\":"[..], enrollment.price),
            (b",\"amount_charged\":", enrollment.amount_charged),
            (b",\"amount_paid\":", enrollment.amount_paid),
            (b",\"amount_credited\":", enrollment.amount_credited),
            (b",\"amount_refunded\":", enrollment.amount_refunded),
            (b",\"amount_due\":", enrollment.amount_due),
        ] {
            out.extend_from_slice(name);
            number(out, value);
        }
        if enrollment.amount_held != 0 {
            out.extend_from_slice(b",\"amount_held\":");
            number(out, enrollment.amount_held);
            out.extend_from_slice(b",\"amount_available\":");
            number(out, enrollment.amount_available);
        }
        out.extend_from_slice(b",\"payment_status\":");
        quoted(out, enrollment.payment_status.as_str().as_bytes());
        out.extend_from_slice(b",\"access_policy\":");
        text(out, &enrollment.access_policy);
        out.extend_from_slice(b",\"access_status\":");
        quoted(out, enrollment.access_status.as_str().as_bytes());
        out.extend_from_slice(b",\"status\":");
        quoted(out, enrollment.status.as_str().as_bytes());
        out.extend_from_slice(b",\"version\":");
        number(out, enrollment.version);
        out.extend_from_slice(b",\"created_at\":");
        time(out, enrollment.created_at);
        out.extend_from_slice(b",\"updated_at\":");
        time(out, enrollment.updated_at);
        out.extend_from_slice(b"}}");
    }

    /// The canonical bytes as `serde_json` renders them: what
    /// `write_canonical` must equal.
    #[cfg(test)]
    fn canonical_by_serde(&self) -> Vec<u8> {
        let canonical = CanonicalEntry {
            prev_hash: &self.prev_hash,
            seq: self.seq,
            kind: self.kind,
            amount: self.amount,
            currency: &self.currency,
            idempotency_key: &self.idempotency_key,
            reference: &self.reference,
            reason: &self.reason,
            hold_seq: self.hold_seq,
            expires_at: self.expires_at.as_ref(),
            source: self.source.as_ref(),
            created_at: &self.created_at,
            enrollment: CanonicalEnrollment::of(&self.enrollment),
        };
        serde_json::to_vec(&canonical).expect("an entry always serializes")
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
            EntryKind::Hold => Command::Hold {
                amount: HoldAmount::Amount(amount()?),
                expires_in: HoldExpiry::between(self.created_at, self.expires_at?)?,
                reference: self.reference.clone(),
            },
            EntryKind::Capture => Command::Capture {
                hold_seq: self.hold_seq?,
                amount: Some(amount()?),
                reference: self.reference.clone(),
            },
            EntryKind::Void => Command::Void {
                hold_seq: self.hold_seq?,
            },
            EntryKind::Expire => Command::Expire {
                hold_seq: self.hold_seq?,
            },
        })
    }

    /// What this entry does to its enrollment's holds, if anything.
    pub fn hold_change(&self) -> Option<HoldChange> {
        let seq = self.hold_seq?;
        let closed = |state| Some(HoldChange::Closed { seq, state });
        match self.kind {
            EntryKind::Hold => Some(HoldChange::Opened(Hold {
                seq,
                amount: self.amount,
                expires_at: self.expires_at?,
                reference: self.reference.clone(),
                state: HoldState::Open,
            })),
            EntryKind::Capture => closed(HoldState::Captured),
            EntryKind::Void => closed(HoldState::Voided),
            EntryKind::Expire => closed(HoldState::Expired),
            _ => None,
        }
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

/// Most disagreements the audit of one enrollment lists. A ledger corrupted
/// from end to end can disagree with itself at every one of its entries; the
/// first thousand show what went wrong and where, and holding them all would
/// let one huge corrupted ledger exhaust the memory of the audit. The rest
/// are counted in one closing line.
pub const DISAGREEMENTS_PER_ENROLLMENT_MAX: usize = 1000;

/// Room among those `DISAGREEMENTS_PER_ENROLLMENT_MAX` that problems noted
/// with `ChainVerifier::note` keep however many the chain gives. One ledger
/// row that cannot be read puts every later entry out of sequence, and the
/// row itself must not be crowded out by what it caused.
const NOTED_DISAGREEMENTS_ROOM: usize = DISAGREEMENTS_PER_ENROLLMENT_MAX / 2;

/// Replays one enrollment's ledger from nothing and compares every entry (and
/// finally the stored enrollment) with what replay gives. Returns every
/// disagreement found, up to `DISAGREEMENTS_PER_ENROLLMENT_MAX` and one line
/// counting the rest; empty means the chain and the balances are sound.
pub fn verify_chain(
    key: &EnrollmentKey,
    entries: &[LedgerEntry],
    stored: Option<&Enrollment>,
) -> Vec<Disagreement> {
    let mut verifier = ChainVerifier::new(key.clone());
    for entry in entries {
        verifier.push(entry);
    }
    verifier.finish(stored)
}

/// `verify_chain` one entry at a time, oldest first, for ledgers too long to
/// hold in memory: it keeps only the previous entry's snapshot and hash and
/// the disagreements found so far (at most `DISAGREEMENTS_PER_ENROLLMENT_MAX`
/// of them), so its memory does not grow with the ledger.
#[derive(Debug)]
pub struct ChainVerifier {
    key: EnrollmentKey,
    /// The newest entry's snapshot and hash: what the next entry replays
    /// from and chains to.
    state: Option<EnrollmentState>,
    entries: u64,
    /// The first disagreements the chain gave, and how many it gave in all.
    problems: Vec<Disagreement>,
    problems_found: u64,
    /// The first problems found outside the chain, reported after the
    /// chain's own, and how many were noted in all.
    notes: Vec<Disagreement>,
    notes_found: u64,
}

impl ChainVerifier {
    pub fn new(key: EnrollmentKey) -> ChainVerifier {
        ChainVerifier {
            key,
            state: None,
            entries: 0,
            problems: Vec::new(),
            problems_found: 0,
            notes: Vec::new(),
            notes_found: 0,
        }
    }

    /// How many entries have been pushed.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The hash of the newest entry pushed, if any.
    pub fn last_hash(&self) -> Option<Hash> {
        self.state.as_ref().map(|state| state.last_hash)
    }

    /// The holds the ledger pushed so far leaves open, by `hold_seq`: what
    /// the storage's holds table must hold as open.
    pub fn open_holds(&self) -> Vec<&Hold> {
        self.state
            .as_ref()
            .map(|state| state.holds.values().filter(|hold| hold.is_open()).collect())
            .unwrap_or_default()
    }

    /// Records a problem found outside the chain, such as a ledger row that
    /// cannot be read. `finish` reports these after the chain's own
    /// disagreements, in the order they were noted.
    pub fn note(&mut self, seq: Option<u64>, problem: String) {
        let disagreement = self.disagreement(seq, problem);
        keep(&mut self.notes, &mut self.notes_found, disagreement);
    }

    fn disagreement(&self, seq: Option<u64>, problem: String) -> Disagreement {
        Disagreement {
            user_id: self.key.user_id.to_string(),
            course_id: self.key.course_id.to_string(),
            seq,
            problem,
        }
    }

    fn report(&mut self, seq: Option<u64>, problem: String) {
        let disagreement = self.disagreement(seq, problem);
        keep(&mut self.problems, &mut self.problems_found, disagreement);
    }

    /// Verifies the next entry of the ledger against the ones before it.
    pub fn push(&mut self, entry: &LedgerEntry) {
        let key = &self.key;
        let seq = Some(entry.seq);
        let expected_seq = self.entries + 1;
        let prev_hash = self.last_hash().unwrap_or(Hash::ZERO);
        let mut found = Vec::new();
        if entry.seq != expected_seq {
            found.push(format!(
                "sequence gap: expected seq {expected_seq}, found {}",
                entry.seq
            ));
        }
        if entry.prev_hash != prev_hash {
            found.push(format!(
                "prev_hash {} does not match the previous entry's hash {}",
                entry.prev_hash, prev_hash
            ));
        }
        // The replay seals the entry the ledger should hold, hash and all.
        // When it is the stored entry field for field, the stored hash is
        // the hash of the stored fields, and hashing them a second time
        // would only repeat it: one SHA-256 per entry instead of two.
        let replay = entry.command().map(|command| {
            let request = Request {
                key: key.clone(),
                idempotency_key: entry.idempotency_key.clone(),
                command,
            };
            apply(self.state.as_ref(), &request, entry.created_at)
        });
        let sealed_as_stored =
            matches!(&replay, Some(Ok(Applied::Entry(expected))) if expected == entry);
        if !sealed_as_stored {
            let computed = entry.compute_hash();
            if computed != entry.hash {
                found.push(format!(
                    "hash mismatch: stored {}, computed {} (the entry was altered)",
                    entry.hash, computed
                ));
            }
        }
        if entry.enrollment.key() != *key {
            found.push(format!("entry belongs to {}", entry.enrollment.key()));
        }
        let replayed = match replay {
            None => {
                found.push(format!(
                    "{} of {} is not a valid operation",
                    entry.kind.as_str(),
                    entry.amount
                ));
                None
            }
            Some(Ok(Applied::Entry(expected))) => Some(expected.enrollment),
            Some(Ok(Applied::Unchanged(_))) => {
                found.push("a second ENROLL entry".to_owned());
                None
            }
            Some(Err(rejection)) => {
                found.push(format!(
                    "replaying {} of {} is refused: {rejection}",
                    entry.kind.as_str(),
                    entry.amount
                ));
                None
            }
        };
        if let Some(replayed) = replayed.filter(|replayed| *replayed != entry.enrollment) {
            found.push(describe_difference(
                "replaying the ledger gives",
                &replayed,
                "the entry's snapshot says",
                &entry.enrollment,
            ));
        }
        if let Err(broken) = entry.enrollment.check() {
            found.push(format!("snapshot breaks an invariant: {broken}"));
        }
        for problem in found {
            self.report(seq, problem);
        }
        // Continue from the stored snapshot, so one bad entry is reported
        // once rather than poisoning every entry after it. Only open holds
        // are kept: a valid ledger never names a closed one again, and the
        // verifier's memory must not grow with the ledger.
        let mut next = match self.state.take() {
            Some(state) => state.after(entry),
            None => EnrollmentState::new(entry.enrollment.clone(), entry.hash).after(entry),
        };
        next.enrollment = entry.enrollment.clone();
        next.holds.retain(|_, hold| hold.is_open());
        if let Err(broken) = next.check_holds() {
            self.report(
                seq,
                format!("snapshot disagrees with the ledger's holds: {broken}"),
            );
        }
        self.state = Some(next);
        self.entries += 1;
    }

    /// Compares the stored enrollment (`None` if there is none) with the
    /// newest entry, and returns every disagreement found: the chain's, then
    /// this comparison's, then the noted ones, at most
    /// `DISAGREEMENTS_PER_ENROLLMENT_MAX` and one line counting the rest. The
    /// ones listed are the first found, except that the noted ones keep
    /// `NOTED_DISAGREEMENTS_ROOM` of the room if there are that many.
    pub fn finish(mut self, stored: Option<&Enrollment>) -> Vec<Disagreement> {
        let newest = self.state.take().map(|state| state.enrollment);
        match (stored, &newest) {
            (Some(stored), Some(newest)) => {
                if stored != newest {
                    let problem = describe_difference(
                        "the stored enrollment says",
                        stored,
                        "its newest ledger entry says",
                        newest,
                    );
                    self.report(None, problem);
                }
            }
            (Some(_), None) => self.report(None, "the enrollment has no ledger entries".to_owned()),
            (None, Some(_)) => self.report(
                None,
                "ledger entries exist for an enrollment that does not".to_owned(),
            ),
            (None, None) => {}
        }
        let notes_kept = self.notes.len().min(
            (DISAGREEMENTS_PER_ENROLLMENT_MAX - self.problems.len()).max(NOTED_DISAGREEMENTS_ROOM),
        );
        let mut problems = self.problems;
        problems.truncate(DISAGREEMENTS_PER_ENROLLMENT_MAX - notes_kept);
        problems.extend(self.notes.into_iter().take(notes_kept));
        let suppressed = self.problems_found + self.notes_found - problems.len() as u64;
        if suppressed > 0 {
            let (count, verb) = if suppressed == 1 {
                ("1 more disagreement".to_owned(), "is")
            } else {
                (format!("{suppressed} more disagreements"), "are")
            };
            problems.push(Disagreement {
                user_id: self.key.user_id.to_string(),
                course_id: self.key.course_id.to_string(),
                seq: None,
                problem: format!(
                    "{count} {verb} not listed: at most {DISAGREEMENTS_PER_ENROLLMENT_MAX} \
                     are listed per enrollment"
                ),
            });
        }
        problems
    }
}

/// Counts `disagreement` in `found`, and keeps it if `kept` has room for it.
fn keep(kept: &mut Vec<Disagreement>, found: &mut u64, disagreement: Disagreement) {
    *found += 1;
    if kept.len() < DISAGREEMENTS_PER_ENROLLMENT_MAX {
        kept.push(disagreement);
    }
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

#[cfg(test)]
mod tests {
    /// The canonical bytes written field by field are `serde_json`'s, on
    /// entries with and without holds, a source, held amounts, a policy
    /// with an amount, and texts that need escaping.
    #[test]
    fn canonical_bytes_are_serde_jsons() {
        use crate::{AccessPolicy, CourseId, UserId};
        let at = Timestamp::from_unix_micros(1_700_000_123_456_789);
        let enrollment = Enrollment {
            user_id: UserId::parse("u-1").expect("id"),
            course_id: CourseId::parse("c_1").expect("id"),
            currency: Currency::parse("EUR").expect("currency"),
            price: 1_000_000,
            amount_charged: 5,
            amount_paid: 300,
            amount_credited: 7,
            amount_refunded: 2,
            amount_due: 999_696,
            amount_held: 0,
            amount_available: 999_696,
            payment_status: crate::PaymentStatus::Partial,
            access_policy: AccessPolicy::FullPayment,
            access_status: crate::AccessStatus::Locked,
            status: crate::EnrollmentStatus::Active,
            version: 4,
            created_at: Timestamp::from_unix_micros(-5),
            updated_at: at,
        };
        let plain = LedgerEntry {
            seq: 4,
            kind: EntryKind::Payment,
            amount: 300,
            currency: enrollment.currency,
            idempotency_key: Some(IdempotencyKey::parse("key \"quoted\" \\ back").expect("key")),
            reference: None,
            reason: Some(Reason::parse("r\u{1f600} \"q\" \u{e9}").expect("reason")),
            hold_seq: None,
            expires_at: None,
            source: None,
            created_at: at,
            enrollment: enrollment.clone(),
            prev_hash: Hash([0xab; 32]),
            hash: Hash::ZERO,
        };
        let mut held = plain.clone();
        held.kind = EntryKind::Hold;
        held.hold_seq = Some(4);
        held.expires_at = Some(Timestamp::from_unix_micros(1_700_000_999_000_000));
        held.reference = Some(Reference::parse("card/1").expect("reference"));
        held.idempotency_key = None;
        held.enrollment.amount_held = 50;
        held.enrollment.amount_available = 999_646;
        held.enrollment.access_policy = AccessPolicy::MinSettled {
            amount: Price::new(400).expect("price"),
        };
        let mut sourced = plain.clone();
        sourced.source = Some(Source {
            processor: "stripe".into(),
            event_id: "evt_1".into(),
            event_type: "payment_intent.succeeded".into(),
        });
        for entry in [plain, held, sourced] {
            let mut fast = Vec::new();
            entry.write_canonical(&mut fast);
            assert_eq!(
                String::from_utf8(fast).expect("UTF-8"),
                String::from_utf8(entry.canonical_by_serde()).expect("UTF-8")
            );
        }
    }

    use super::*;
    use crate::{AccessPolicy, CourseId, UserId};

    fn key() -> EnrollmentKey {
        EnrollmentKey {
            user_id: UserId::parse("student-1").unwrap(),
            course_id: CourseId::parse("course-101").unwrap(),
        }
    }

    /// An enrolment at `price` followed by `payments` payments of one minor
    /// unit each.
    fn ledger(price: i64, payments: usize) -> Vec<LedgerEntry> {
        let enroll = Command::Enroll(EnrollTerms {
            currency: Currency::parse("USD").unwrap(),
            price: Price::new(i128::from(price)).unwrap(),
            access_policy: AccessPolicy::FullPayment,
        });
        let pay = || Command::Payment {
            amount: Amount::new(1).unwrap(),
            currency: None,
            reference: None,
        };
        let mut entries: Vec<LedgerEntry> = Vec::new();
        let mut state: Option<EnrollmentState> = None;
        for (index, command) in std::iter::once(enroll)
            .chain(std::iter::repeat_with(pay).take(payments))
            .enumerate()
        {
            let request = Request {
                key: key(),
                idempotency_key: (index > 0)
                    .then(|| IdempotencyKey::parse(&format!("pay-{index}")).unwrap()),
                command,
            };
            let now = Timestamp::from_unix_micros(1_700_000_000_000_000 + index as i64);
            let Ok(Applied::Entry(entry)) = apply(state.as_ref(), &request, now) else {
                panic!("operation {index} is accepted");
            };
            state = Some(EnrollmentState::new(entry.enrollment.clone(), entry.hash));
            entries.push(entry);
        }
        entries
    }

    #[test]
    fn an_honest_ledger_verifies_one_entry_at_a_time() {
        let entries = ledger(1_000_000, 2_000);
        let newest = entries.last().unwrap();
        let mut verifier = ChainVerifier::new(key());
        assert_eq!(verifier.last_hash(), None);
        for entry in &entries {
            verifier.push(entry);
        }
        assert_eq!(verifier.entries(), 2_001);
        assert_eq!(verifier.last_hash(), Some(newest.hash));
        assert_eq!(verifier.finish(Some(&newest.enrollment)), vec![]);
    }

    #[test]
    fn notes_follow_the_chain_and_the_stored_enrollment() {
        let entries = ledger(100, 3);
        let mut verifier = ChainVerifier::new(key());
        verifier.note(None, "a row that cannot be read".to_owned());
        // The first payment without the enrolment before it.
        verifier.push(&entries[1]);
        let found = verifier.finish(None);
        let problems: Vec<&str> = found.iter().map(|d| d.problem.as_str()).collect();
        assert_eq!(problems.len(), 5, "{found:#?}");
        assert_eq!(problems[0], "sequence gap: expected seq 1, found 2");
        assert!(problems[1].starts_with("prev_hash "), "{found:#?}");
        assert!(
            problems[2].starts_with("replaying PAYMENT of 1 is refused"),
            "{found:#?}"
        );
        assert_eq!(
            problems[3],
            "ledger entries exist for an enrollment that does not"
        );
        assert_eq!(problems[4], "a row that cannot be read", "notes come last");
    }

    #[test]
    fn disagreements_stop_at_the_limit_and_the_rest_are_counted() {
        // The same enrolment entry again and again: every repetition is out
        // of sequence, chains to nothing and enrols a second time.
        let enroll = ledger(100, 0).remove(0);
        let repeats = 1_500;
        let mut verifier = ChainVerifier::new(key());
        for _ in 0..repeats {
            verifier.push(&enroll);
        }
        verifier.note(None, "a row that cannot be read".to_owned());
        assert_eq!(verifier.entries(), repeats);
        let found = verifier.finish(Some(&enroll.enrollment));
        let total = 3 * (repeats - 1) + 1;
        assert_eq!(found.len(), DISAGREEMENTS_PER_ENROLLMENT_MAX + 1);
        assert_eq!(found[0].seq, Some(1));
        assert_eq!(
            found[0].problem, "sequence gap: expected seq 2, found 1",
            "the first ones found are the ones kept"
        );
        assert_eq!(
            found[DISAGREEMENTS_PER_ENROLLMENT_MAX - 1].problem,
            "a row that cannot be read",
            "the chain does not crowd out what was noted"
        );
        let last = found.last().unwrap();
        assert_eq!(last.seq, None);
        assert_eq!(
            last.problem,
            format!(
                "{} more disagreements are not listed: at most 1000 are listed per enrollment",
                total - DISAGREEMENTS_PER_ENROLLMENT_MAX as u64
            )
        );
        assert_eq!(
            verify_chain(&key(), &vec![enroll.clone(); repeats as usize], None).len(),
            DISAGREEMENTS_PER_ENROLLMENT_MAX + 1,
            "verify_chain keeps to the limit too"
        );
    }

    #[test]
    fn noted_problems_keep_half_the_room_when_both_overflow() {
        let enroll = ledger(100, 0).remove(0);
        let mut verifier = ChainVerifier::new(key());
        for _ in 0..1_500 {
            verifier.push(&enroll);
        }
        for index in 0..700 {
            verifier.note(None, format!("row {index} cannot be read"));
        }
        let found = verifier.finish(None);
        assert_eq!(found.len(), DISAGREEMENTS_PER_ENROLLMENT_MAX + 1);
        assert_eq!(found[499].seq, Some(1), "{:?}", found[499]);
        assert_eq!(found[500].problem, "row 0 cannot be read");
        assert_eq!(found[999].problem, "row 499 cannot be read");
        // 4,497 from the chain, one for the missing enrollment, 700 noted.
        assert!(
            found[1000]
                .problem
                .starts_with("4198 more disagreements are not listed"),
            "{:?}",
            found[1000]
        );
    }

    #[test]
    fn one_disagreement_over_the_limit_is_counted_in_the_singular() {
        let mut verifier = ChainVerifier::new(key());
        for index in 0..=DISAGREEMENTS_PER_ENROLLMENT_MAX {
            verifier.note(None, format!("problem {index}"));
        }
        let found = verifier.finish(None);
        assert_eq!(found.len(), DISAGREEMENTS_PER_ENROLLMENT_MAX + 1);
        assert_eq!(found[999].problem, "problem 999");
        assert_eq!(
            found[1000].problem,
            "1 more disagreement is not listed: at most 1000 are listed per enrollment"
        );
    }
}
