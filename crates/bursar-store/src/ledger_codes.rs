//! The compact ledger row's encoding, shared by both backends: its columns,
//! an entry's kind and its snapshot's three statuses as small integers, and
//! the snapshot as columns with the fields that almost always follow from
//! the entry (`version` = `seq`, `updated_at` = the entry's `created_at`,
//! `created_at` of the enrollment = the `ENROLL` entry's, `amount_available`
//! = due − held) stored only when they do not. One mapping, so an entry
//! reads back the same on SQLite and on PostgreSQL, and exactly as written:
//! its canonical bytes, its hash and every chain and digest over it stay the
//! same.

use bursar_core::{
    AccessPolicy, AccessStatus, Currency, Enrollment, EnrollmentKey, EnrollmentStatus, EntryKind,
    Hash, IdempotencyKey, LedgerEntry, PaymentStatus, Price, Reason, Reference, Source, Timestamp,
    Transitions,
};

/// The columns of a compact ledger row as both backends read them, by
/// index.
macro_rules! entry_columns {
    () => {
        "seq, kind, amount, currency, idempotency_key, fingerprint, reference, reason, \
         created_at, price, amount_charged, amount_paid, amount_credited, amount_refunded, \
         amount_due, amount_held, amount_available, statuses, access_policy_amount, \
         enrolled_at, version, updated_at, prev_hash, hash, hold_seq, expires_at, source"
    };
}
pub(crate) use entry_columns;

/// How many columns `entry_columns!()` names: a query that reads more puts
/// them after these (`user_id, course_id`, then `position, transitions`).
pub(crate) const ENTRY_COLUMNS: usize = 27;

/// The names of `entry_columns!()`, by index, for messages.
pub(crate) const COLUMN_NAMES: [&str; ENTRY_COLUMNS] = [
    "seq",
    "kind",
    "amount",
    "currency",
    "idempotency_key",
    "fingerprint",
    "reference",
    "reason",
    "created_at",
    "price",
    "amount_charged",
    "amount_paid",
    "amount_credited",
    "amount_refunded",
    "amount_due",
    "amount_held",
    "amount_available",
    "statuses",
    "access_policy_amount",
    "enrolled_at",
    "version",
    "updated_at",
    "prev_hash",
    "hash",
    "hold_seq",
    "expires_at",
    "source",
];

/// An entry kind's code: its place in `EntryKind::ALL`.
pub(crate) fn kind_code(kind: EntryKind) -> i16 {
    EntryKind::ALL
        .iter()
        .position(|known| *known == kind)
        .expect("every kind is in ALL") as i16
}

pub(crate) fn kind_of(code: i64) -> Option<EntryKind> {
    EntryKind::ALL.get(usize::try_from(code).ok()?).copied()
}

const PAYMENT_STATUSES: [PaymentStatus; 3] = [
    PaymentStatus::Pending,
    PaymentStatus::Partial,
    PaymentStatus::Completed,
];
const ACCESS_STATUSES: [AccessStatus; 3] = [
    AccessStatus::Locked,
    AccessStatus::Granted,
    AccessStatus::Revoked,
];
const ENROLLMENT_STATUSES: [EnrollmentStatus; 5] = [
    EnrollmentStatus::PendingPayment,
    EnrollmentStatus::Active,
    EnrollmentStatus::Suspended,
    EnrollmentStatus::Completed,
    EnrollmentStatus::Cancelled,
];

fn index_of<T: PartialEq>(all: &[T], value: &T) -> i16 {
    all.iter()
        .position(|known| known == value)
        .expect("every status is listed") as i16
}

/// The three statuses in one integer: payment in bits 0–1, access in bits
/// 2–3, the enrollment's in bits 4–6.
fn statuses_code(enrollment: &Enrollment) -> i16 {
    index_of(&PAYMENT_STATUSES, &enrollment.payment_status)
        | index_of(&ACCESS_STATUSES, &enrollment.access_status) << 2
        | index_of(&ENROLLMENT_STATUSES, &enrollment.status) << 4
}

fn statuses_of(code: i64) -> Option<(PaymentStatus, AccessStatus, EnrollmentStatus)> {
    if !(0..128).contains(&code) {
        return None;
    }
    let code = code as usize;
    Some((
        *PAYMENT_STATUSES.get(code & 3)?,
        *ACCESS_STATUSES.get((code >> 2) & 3)?,
        *ENROLLMENT_STATUSES.get(code >> 4)?,
    ))
}

/// An entry's source as the row keeps it: JSON text (rare, and small).
pub(crate) fn source_text(source: Option<&Source>) -> Option<String> {
    source.map(|source| serde_json::to_string(source).expect("a source serializes"))
}

pub(crate) fn source_of(text: &str) -> Option<Source> {
    serde_json::from_str(text).ok()
}

/// The snapshot of an entry as the compact row's columns hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotColumns {
    pub(crate) price: i64,
    pub(crate) amount_charged: i64,
    pub(crate) amount_paid: i64,
    pub(crate) amount_credited: i64,
    pub(crate) amount_refunded: i64,
    pub(crate) amount_due: i64,
    pub(crate) amount_held: i64,
    /// `None`: due − held.
    pub(crate) amount_available: Option<i64>,
    pub(crate) statuses: i64,
    /// `None`: access after full payment.
    pub(crate) access_policy_amount: Option<i64>,
    /// `None`: the entry's `created_at`.
    pub(crate) enrolled_at: Option<i64>,
    /// `None`: the entry's `seq`.
    pub(crate) version: Option<i64>,
    /// `None`: the entry's `created_at`.
    pub(crate) updated_at: Option<i64>,
}

impl SnapshotColumns {
    /// The columns of `entry`'s snapshot.
    pub(crate) fn of(entry: &LedgerEntry) -> SnapshotColumns {
        let snapshot = &entry.enrollment;
        let created_at = entry.created_at.unix_micros();
        let differs = |value: i64, usual: i64| (value != usual).then_some(value);
        SnapshotColumns {
            price: snapshot.price,
            amount_charged: snapshot.amount_charged,
            amount_paid: snapshot.amount_paid,
            amount_credited: snapshot.amount_credited,
            amount_refunded: snapshot.amount_refunded,
            amount_due: snapshot.amount_due,
            amount_held: snapshot.amount_held,
            amount_available: differs(
                snapshot.amount_available,
                snapshot.amount_due.saturating_sub(snapshot.amount_held),
            ),
            statuses: i64::from(statuses_code(snapshot)),
            access_policy_amount: match snapshot.access_policy {
                AccessPolicy::FullPayment => None,
                AccessPolicy::MinSettled { amount } => Some(amount.minor_units()),
            },
            enrolled_at: differs(snapshot.created_at.unix_micros(), created_at),
            version: differs(snapshot.version as i64, entry.seq as i64),
            updated_at: differs(snapshot.updated_at.unix_micros(), created_at),
        }
    }

    /// The enrollment these columns describe, as it stood right after the
    /// entry `seq` of `key` in `currency`, made at `created_at`. `Err` names
    /// the column that cannot be read back.
    pub(crate) fn enrollment(
        self,
        key: &EnrollmentKey,
        currency: Currency,
        seq: i64,
        created_at: i64,
    ) -> Result<Enrollment, &'static str> {
        let (payment_status, access_status, status) =
            statuses_of(self.statuses).ok_or("statuses")?;
        let access_policy = match self.access_policy_amount {
            None => AccessPolicy::FullPayment,
            Some(amount) => AccessPolicy::MinSettled {
                amount: Price::new(i128::from(amount)).map_err(|_| "access policy")?,
            },
        };
        Ok(Enrollment {
            user_id: key.user_id.clone(),
            course_id: key.course_id.clone(),
            currency,
            price: self.price,
            amount_charged: self.amount_charged,
            amount_paid: self.amount_paid,
            amount_credited: self.amount_credited,
            amount_refunded: self.amount_refunded,
            amount_due: self.amount_due,
            amount_held: self.amount_held,
            amount_available: self
                .amount_available
                .unwrap_or(self.amount_due.saturating_sub(self.amount_held)),
            payment_status,
            access_policy,
            access_status,
            status,
            version: u64::try_from(self.version.unwrap_or(seq)).map_err(|_| "version")?,
            created_at: Timestamp::from_unix_micros(self.enrolled_at.unwrap_or(created_at)),
            updated_at: Timestamp::from_unix_micros(self.updated_at.unwrap_or(created_at)),
        })
    }
}

/// Whether an entry of the JSON layout, of the row keyed `key`, can be kept
/// as it is in a compact row; its transitions as read back. The compact row
/// keeps one currency and takes the snapshot's ids from its key: an entry
/// whose snapshot disagrees (changed by hand) cannot, and is for the audit
/// to name. `Err` says why, for the upgrade's message.
pub(crate) fn fits_compact_row(
    key: &EnrollmentKey,
    entry: &LedgerEntry,
    transitions: i64,
) -> Result<Transitions, String> {
    let transitions = Transitions::from_bits(transitions)
        .ok_or_else(|| format!("bad transitions at seq {}", entry.seq))?;
    if entry.enrollment.key() != *key || entry.enrollment.currency != entry.currency {
        return Err(format!(
            "the snapshot of seq {} names another enrollment or currency \
             (bursar audit names it)",
            entry.seq
        ));
    }
    Ok(transitions)
}

/// A row whose first columns are `entry_columns!()`, as a backend's driver
/// gives it. Each accessor answers `Err` for a value of another type.
pub(crate) trait CompactRow {
    /// An integer column of any width; `None` for NULL.
    fn integer(&self, index: usize) -> Result<Option<i64>, ()>;
    fn text(&self, index: usize) -> Result<Option<&str>, ()>;
    fn bytes(&self, index: usize) -> Result<Option<&[u8]>, ()>;
}

/// An entry and its request fingerprint, or what is wrong with the row.
pub(crate) type EntryRow = Result<(LedgerEntry, Hash), String>;

/// Reads the entry of a compact row of the enrollment `key`, and the
/// fingerprint of the request that made it. A value of the wrong type or
/// out of range is a bad row: `Err` names the entry and the column.
pub(crate) fn read_entry(key: &EnrollmentKey, row: &impl CompactRow) -> EntryRow {
    let seq = row
        .integer(0)
        .ok()
        .flatten()
        .ok_or_else(|| format!("ledger entry {key}: bad seq"))?;
    let bad = |what: &str| format!("ledger entry {key} seq {seq}: bad {what}");
    let optional_integer = |index: usize| -> Result<Option<i64>, String> {
        row.integer(index).map_err(|_| bad(COLUMN_NAMES[index]))
    };
    let integer = |index: usize| -> Result<i64, String> {
        optional_integer(index)?.ok_or_else(|| bad(COLUMN_NAMES[index]))
    };
    let text = |index: usize| -> Result<Option<&str>, String> {
        row.text(index).map_err(|_| bad(COLUMN_NAMES[index]))
    };
    let hash = |index: usize| -> Result<Hash, String> {
        row.bytes(index)
            .ok()
            .flatten()
            .and_then(|bytes| bytes.try_into().ok())
            .map(Hash)
            .ok_or_else(|| bad(COLUMN_NAMES[index]))
    };
    let parse = || -> Result<(LedgerEntry, Hash), String> {
        let created_at = integer(8)?;
        let snapshot = |what: &str| format!("ledger entry {key} seq {seq}: bad snapshot ({what})");
        let amount = |index: usize| integer(index).map_err(|_| snapshot(COLUMN_NAMES[index]));
        let optional =
            |index: usize| optional_integer(index).map_err(|_| snapshot(COLUMN_NAMES[index]));
        let currency =
            Currency::parse(text(3)?.unwrap_or_default()).map_err(|_| bad("currency"))?;
        let columns = SnapshotColumns {
            price: amount(9)?,
            amount_charged: amount(10)?,
            amount_paid: amount(11)?,
            amount_credited: amount(12)?,
            amount_refunded: amount(13)?,
            amount_due: amount(14)?,
            amount_held: amount(15)?,
            amount_available: optional(16)?,
            statuses: integer(17).map_err(|_| snapshot("statuses"))?,
            access_policy_amount: optional(18).map_err(|_| snapshot("access policy"))?,
            enrolled_at: optional(19)?,
            version: optional(20)?,
            updated_at: optional(21)?,
        };
        let enrollment = columns
            .enrollment(key, currency, seq, created_at)
            .map_err(snapshot)?;
        let entry = LedgerEntry {
            seq: u64::try_from(seq).map_err(|_| bad("seq"))?,
            kind: kind_of(integer(1)?).ok_or_else(|| bad("kind"))?,
            amount: integer(2)?,
            currency,
            idempotency_key: text(4)?
                .map(IdempotencyKey::parse)
                .transpose()
                .map_err(|_| bad("idempotency_key"))?,
            reference: text(6)?
                .map(Reference::parse)
                .transpose()
                .map_err(|_| bad("reference"))?,
            reason: text(7)?
                .map(Reason::parse)
                .transpose()
                .map_err(|_| bad("reason"))?,
            hold_seq: optional_integer(24)?
                .map(u64::try_from)
                .transpose()
                .map_err(|_| bad("hold_seq"))?,
            expires_at: optional_integer(25)?.map(Timestamp::from_unix_micros),
            source: text(26)?
                .map(|text| source_of(text).ok_or_else(|| bad("source")))
                .transpose()?,
            created_at: Timestamp::from_unix_micros(created_at),
            enrollment,
            prev_hash: hash(22)?,
            hash: hash(23)?,
        };
        Ok((entry, hash(5)?))
    };
    parse()
}
