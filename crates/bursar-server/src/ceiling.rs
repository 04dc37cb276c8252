//! The HTTP ceiling, for benchmarks only (`bursar serve --bench-http-ceiling`,
//! a hidden flag, off unless given): `POST …/payments` goes through the same
//! router, auth, extractors and body parsing, and answers a `201` of the same
//! shape and size as a real payment's, without the writer or the store. What
//! one payment per request can reach on a machine is then measured by the
//! same load generator (`bench/run.py` case 0). Nothing is recorded: a server
//! started so is useless for anything else, and says so in its log.

use crate::api::outcome_response;
use axum::response::Response;
use bursar_core::{
    AccessPolicy, AccessStatus, Command, Enrollment, EnrollmentStatus, EntryKind, Hash,
    LedgerEntry, Outcome, PaymentStatus, Request, Timestamp,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// The price of the pretend enrollment: `load-test`'s, so the amounts in
/// the answer have as many digits as a real one's.
const PRETEND_PRICE: i64 = 1_000_000_000_000;

/// The seq of the next pretend entry: grows as a real ledger's would.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(2);

/// The answer a payment would get, made up: the request's own ids, key,
/// amount and reference, in an entry and an enrollment of the usual size.
pub(crate) fn payment(request: Request, now: Timestamp) -> Response {
    let (amount, reference) = match request.command {
        Command::Payment {
            amount, reference, ..
        } => (amount.minor_units(), reference),
        _ => (0, None),
    };
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    let paid = amount.saturating_mul(seq as i64);
    let enrollment = Enrollment {
        user_id: request.key.user_id,
        course_id: request.key.course_id,
        currency: bursar_core::Currency::parse("USD").expect("USD is a currency"),
        price: PRETEND_PRICE,
        amount_charged: 0,
        amount_paid: paid,
        amount_credited: 0,
        amount_refunded: 0,
        amount_due: PRETEND_PRICE - paid,
        amount_held: 0,
        amount_available: PRETEND_PRICE - paid,
        payment_status: PaymentStatus::Partial,
        access_policy: AccessPolicy::FullPayment,
        access_status: AccessStatus::Locked,
        status: EnrollmentStatus::PendingPayment,
        version: seq,
        created_at: now,
        updated_at: now,
    };
    let entry = LedgerEntry {
        seq,
        kind: EntryKind::Payment,
        amount,
        currency: enrollment.currency,
        idempotency_key: request.idempotency_key,
        reference,
        reason: None,
        hold_seq: None,
        expires_at: None,
        source: None,
        created_at: now,
        enrollment,
        prev_hash: Hash::ZERO,
        hash: Hash::ZERO,
    };
    outcome_response(&Outcome::Accepted(entry))
}
