//! PostgreSQL's rows read back: an enrollment row into its state (with the
//! money invariants asserted), a ledger row into its entry and request
//! fingerprint, and the enrollment key of a row.

use crate::StoreError;
use bursar_core::{
    AccessPolicy, AccessStatus, CourseId, Currency, Enrollment, EnrollmentKey, EnrollmentState,
    EnrollmentStatus, EntryKind, Hash, IdempotencyKey, LedgerEntry, PaymentStatus, Price, Reason,
    Reference, Timestamp, UserId,
};
use tokio_postgres::Row;

pub(super) const ENROLLMENT_COLUMNS: &str = "user_id, course_id, currency, price, amount_charged, amount_paid, \
     amount_credited, amount_refunded, amount_due, payment_status, access_policy_kind, \
     access_policy_amount, access_status, status, version, created_at, updated_at, last_hash, \
     amount_held";

pub(super) const ENTRY_COLUMNS: &str = "seq, kind, amount, currency, idempotency_key, fingerprint, reference, \
     reason, created_at, snapshot, prev_hash, hash, hold_seq, expires_at, source";

pub(super) fn policy_columns(policy: &AccessPolicy) -> (&'static str, Option<i64>) {
    match policy {
        AccessPolicy::FullPayment => ("FULL_PAYMENT", None),
        AccessPolicy::MinSettled { amount } => ("MIN_SETTLED", Some(amount.minor_units())),
    }
}

/// An enrollment row, parsed but not yet checked.
pub(super) fn parse_state(row: &Row) -> Result<EnrollmentState, String> {
    let user_id: String = row.try_get(0).map_err(|error| error.to_string())?;
    let course_id: String = row.try_get(1).map_err(|error| error.to_string())?;
    let bad = |what: &str| format!("enrollment {user_id}/{course_id}: bad {what}");
    let text = |index: usize, what: &str| -> Result<String, String> {
        row.try_get::<_, String>(index).map_err(|_| bad(what))
    };
    let number = |index: usize, what: &str| -> Result<i64, String> {
        row.try_get::<_, i64>(index).map_err(|_| bad(what))
    };
    let policy_amount: Option<i64> = row.try_get(11).map_err(|_| bad("policy amount"))?;
    let access_policy = match text(10, "access policy")?.as_str() {
        "FULL_PAYMENT" => AccessPolicy::FullPayment,
        "MIN_SETTLED" => AccessPolicy::MinSettled {
            amount: Price::new(i128::from(
                policy_amount.ok_or_else(|| bad("policy amount"))?,
            ))
            .map_err(|_| bad("policy amount"))?,
        },
        _ => return Err(bad("access policy")),
    };
    let enrollment = Enrollment {
        user_id: UserId::parse(&user_id).map_err(|_| bad("user_id"))?,
        course_id: CourseId::parse(&course_id).map_err(|_| bad("course_id"))?,
        currency: Currency::parse(&text(2, "currency")?).map_err(|_| bad("currency"))?,
        price: number(3, "price")?,
        amount_charged: number(4, "amount_charged")?,
        amount_paid: number(5, "amount_paid")?,
        amount_credited: number(6, "amount_credited")?,
        amount_refunded: number(7, "amount_refunded")?,
        amount_due: number(8, "amount_due")?,
        amount_held: number(18, "amount_held")?,
        amount_available: number(8, "amount_due")?.saturating_sub(number(18, "amount_held")?),
        payment_status: PaymentStatus::parse(&text(9, "payment_status")?)
            .ok_or_else(|| bad("payment_status"))?,
        access_policy,
        access_status: AccessStatus::parse(&text(12, "access_status")?)
            .ok_or_else(|| bad("access_status"))?,
        status: EnrollmentStatus::parse(&text(13, "status")?).ok_or_else(|| bad("status"))?,
        version: u64::try_from(number(14, "version")?).map_err(|_| bad("version"))?,
        created_at: Timestamp::from_unix_micros(number(15, "created_at")?),
        updated_at: Timestamp::from_unix_micros(number(16, "updated_at")?),
    };
    let last_hash = Hash::from_hex(&text(17, "last_hash")?).ok_or_else(|| bad("last_hash"))?;
    Ok(EnrollmentState::new(enrollment, last_hash))
}

/// Parses a row and asserts the money invariants on what was read back: a
/// broken one is corruption or a bug, never something to serve or build on.
pub(super) fn checked_state(row: &Row) -> Result<EnrollmentState, StoreError> {
    let state = parse_state(row).map_err(StoreError::Internal)?;
    state.enrollment.check().map_err(|broken| {
        StoreError::Internal(format!(
            "enrollment {} breaks an invariant: {broken}",
            state.enrollment.key()
        ))
    })?;
    Ok(state)
}

/// The enrollment key in columns `first` and `first + 1`.
pub(crate) fn row_key(row: &Row, first: usize) -> Result<EnrollmentKey, String> {
    let user_id: String = row.try_get(first).map_err(|error| error.to_string())?;
    let course_id: String = row.try_get(first + 1).map_err(|error| error.to_string())?;
    Ok(EnrollmentKey {
        user_id: UserId::parse(&user_id).map_err(|_| format!("bad stored user_id {user_id:?}"))?,
        course_id: CourseId::parse(&course_id)
            .map_err(|_| format!("bad stored course_id {course_id:?}"))?,
    })
}

/// A ledger row (`ENTRY_COLUMNS` from column `first` on) and the fingerprint
/// of the request that produced it.
pub(crate) fn parse_entry(
    key: &EnrollmentKey,
    row: &Row,
    first: usize,
) -> Result<(LedgerEntry, Hash), String> {
    let seq: i64 = row.try_get(first).map_err(|error| error.to_string())?;
    let bad = |what: &str| format!("ledger entry {key} seq {seq}: bad {what}");
    let text = |index: usize, what: &str| -> Result<String, String> {
        row.try_get::<_, String>(first + index)
            .map_err(|_| bad(what))
    };
    let optional = |index: usize, what: &str| -> Result<Option<String>, String> {
        row.try_get::<_, Option<String>>(first + index)
            .map_err(|_| bad(what))
    };
    let number = |index: usize, what: &str| -> Result<i64, String> {
        row.try_get::<_, i64>(first + index).map_err(|_| bad(what))
    };
    let entry = LedgerEntry {
        seq: u64::try_from(seq).map_err(|_| bad("seq"))?,
        kind: EntryKind::parse(&text(1, "kind")?).ok_or_else(|| bad("kind"))?,
        amount: number(2, "amount")?,
        currency: Currency::parse(&text(3, "currency")?).map_err(|_| bad("currency"))?,
        idempotency_key: optional(4, "idempotency_key")?
            .map(|text| IdempotencyKey::parse(&text))
            .transpose()
            .map_err(|_| bad("idempotency_key"))?,
        reference: optional(6, "reference")?
            .map(|text| Reference::parse(&text))
            .transpose()
            .map_err(|_| bad("reference"))?,
        reason: optional(7, "reason")?
            .map(|text| Reason::parse(&text))
            .transpose()
            .map_err(|_| bad("reason"))?,
        created_at: Timestamp::from_unix_micros(number(8, "created_at")?),
        enrollment: serde_json::from_str(&text(9, "snapshot")?)
            .map_err(|error| bad(&format!("snapshot ({error})")))?,
        prev_hash: Hash::from_hex(&text(10, "prev_hash")?).ok_or_else(|| bad("prev_hash"))?,
        hash: Hash::from_hex(&text(11, "hash")?).ok_or_else(|| bad("hash"))?,
        hold_seq: row
            .try_get::<_, Option<i64>>(first + 12)
            .map_err(|_| bad("hold_seq"))?
            .map(u64::try_from)
            .transpose()
            .map_err(|_| bad("hold_seq"))?,
        expires_at: row
            .try_get::<_, Option<i64>>(first + 13)
            .map_err(|_| bad("expires_at"))?
            .map(Timestamp::from_unix_micros),
        source: optional(14, "source")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|_| bad("source"))?,
    };
    let fingerprint = Hash::from_hex(&text(5, "fingerprint")?).ok_or_else(|| bad("fingerprint"))?;
    Ok((entry, fingerprint))
}
