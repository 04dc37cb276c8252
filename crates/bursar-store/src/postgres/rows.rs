//! PostgreSQL's enrollment rows read back into their state (with the money
//! invariants asserted), and the enrollment key of any row.

use crate::StoreError;
use bursar_core::{
    AccessPolicy, AccessStatus, CourseId, Currency, Enrollment, EnrollmentKey, EnrollmentState,
    EnrollmentStatus, Hash, PaymentStatus, Price, Timestamp, UserId,
};
use tokio_postgres::Row;

pub(super) const ENROLLMENT_COLUMNS: &str = "user_id, course_id, currency, price, amount_charged, amount_paid, \
     amount_credited, amount_refunded, amount_due, payment_status, access_policy_kind, \
     access_policy_amount, access_status, status, version, created_at, updated_at, last_hash, \
     amount_held";

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
