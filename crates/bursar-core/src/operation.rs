//! The operations of the contract as one pure function:
//! `apply(state, request, now) -> Result<Applied, Rejection>`.

use crate::enrollment::Amounts;
use crate::ledger::{EntryKind, Hash, LedgerEntry};
use crate::money::ENROLLMENT_TOTAL_MAX;
use crate::{
    AccessPolicy, AccessStatus, Amount, Currency, Enrollment, EnrollmentKey, EnrollmentStatus,
    IdempotencyKey, PaymentStatus, Price, Reason, Reference, Timestamp,
};
use serde::Serialize;

/// The terms an enrollment is created with. Enrolling again with the same
/// terms returns the enrollment; with other terms it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnrollTerms {
    pub currency: Currency,
    pub price: Price,
    pub access_policy: AccessPolicy,
}

/// What a caller asks to happen to one enrollment, already validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    Enroll(EnrollTerms),
    Payment {
        amount: Amount,
        currency: Option<Currency>,
        reference: Option<Reference>,
    },
    PayRemaining {
        reference: Option<Reference>,
    },
    Credit {
        amount: Amount,
        reason: Reason,
    },
    Refund {
        amount: Amount,
        reason: Reason,
        reference: Option<Reference>,
    },
    Charge {
        amount: Amount,
        reason: Reason,
    },
    Complete,
    Cancel,
}

impl Command {
    /// A digest of the request as the caller sent it (after parsing, so key
    /// order and whitespace do not matter). A replayed idempotency key must
    /// come with the same fingerprint.
    pub fn fingerprint(&self) -> Hash {
        let canonical = serde_json::to_vec(self).expect("a command always serializes");
        Hash::of(&canonical)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::Enroll(_) => "enroll",
            Command::Payment { .. } => "payment",
            Command::PayRemaining { .. } => "pay_remaining",
            Command::Credit { .. } => "credit",
            Command::Refund { .. } => "refund",
            Command::Charge { .. } => "charge",
            Command::Complete => "complete",
            Command::Cancel => "cancel",
        }
    }
}

/// One operation on one enrollment, as the writer queues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub key: EnrollmentKey,
    /// Every state-changing POST carries one; enrolling (PUT) does not.
    pub idempotency_key: Option<IdempotencyKey>,
    pub command: Command,
}

/// Why an operation was refused, in order of precedence: when several apply,
/// the first listed is the one reported. A refused operation changes nothing
/// and stores nothing, so its idempotency key may be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no enrollment for {0}")]
    EnrollmentNotFound(EnrollmentKey),
    #[error(
        "an enrollment for {key} exists with other terms (currency {currency}, price {price}, access policy {policy})"
    )]
    EnrollmentExists {
        key: EnrollmentKey,
        currency: Currency,
        price: i64,
        policy: String,
    },
    #[error("idempotency key {0:?} was already used for a different operation on this enrollment")]
    IdempotencyKeyReused(String),
    #[error("the enrollment is cancelled and takes no money operations")]
    EnrollmentCancelled,
    #[error("the enrollment is in {expected}, the request says {got}")]
    CurrencyMismatch { expected: Currency, got: Currency },
    #[error("nothing is due")]
    NothingDue,
    #[error("payment of {amount} exceeds the amount due of {due}")]
    Overpayment { amount: i64, due: i64 },
    #[error("credit of {amount} exceeds the amount due of {due}")]
    CreditExceedsDue { amount: i64, due: i64 },
    #[error("refund of {amount} exceeds the amount paid of {paid}")]
    RefundExceedsPaid { amount: i64, paid: i64 },
    #[error("cannot {action} an enrollment that is {status}: {why}")]
    InvalidTransition {
        action: &'static str,
        status: &'static str,
        why: &'static str,
    },
    #[error(
        "a charge of {amount} would take the enrollment's total past the limit of {limit} minor units"
    )]
    TotalLimitExceeded { amount: i64, limit: i64 },
}

impl Rejection {
    /// The error code of the HTTP API.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::EnrollmentNotFound(_) => "ENROLLMENT_NOT_FOUND",
            Rejection::EnrollmentExists { .. } => "ENROLLMENT_EXISTS",
            Rejection::IdempotencyKeyReused(_) => "IDEMPOTENCY_KEY_REUSED",
            Rejection::EnrollmentCancelled => "ENROLLMENT_CANCELLED",
            Rejection::CurrencyMismatch { .. } => "CURRENCY_MISMATCH",
            Rejection::NothingDue => "NOTHING_DUE",
            Rejection::Overpayment { .. } => "OVERPAYMENT",
            Rejection::CreditExceedsDue { .. } => "CREDIT_EXCEEDS_DUE",
            Rejection::RefundExceedsPaid { .. } => "REFUND_EXCEEDS_PAID",
            Rejection::InvalidTransition { .. } => "INVALID_TRANSITION",
            Rejection::TotalLimitExceeded { .. } => "TOTAL_LIMIT_EXCEEDED",
        }
    }
}

/// An enrollment together with the hash of its newest ledger entry, which the
/// next entry chains to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentState {
    pub enrollment: Enrollment,
    pub last_hash: Hash,
}

/// What an accepted request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new ledger entry; the enrollment is now `entry.enrollment`.
    Entry(LedgerEntry),
    /// Enrolling again with the same terms: nothing changes.
    Unchanged(Enrollment),
}

fn policy_text(policy: &AccessPolicy) -> String {
    match policy {
        AccessPolicy::FullPayment => "FULL_PAYMENT".to_owned(),
        AccessPolicy::MinSettled { amount } => format!("MIN_SETTLED({})", amount.minor_units()),
    }
}

/// Applies one request to the enrollment it names (`None` if it does not
/// exist yet) at server time `now`. Pure: the same inputs give the same
/// answer, bit for bit, which is what lets `audit` replay the ledger.
///
/// Idempotency is not decided here: the batch planner resolves replays before
/// calling this.
pub fn apply(
    state: Option<&EnrollmentState>,
    request: &Request,
    now: Timestamp,
) -> Result<Applied, Rejection> {
    let Some(state) = state else {
        return match &request.command {
            Command::Enroll(terms) => Ok(Applied::Entry(enroll(request, terms, now))),
            _ => Err(Rejection::EnrollmentNotFound(request.key.clone())),
        };
    };
    let current = &state.enrollment;
    if let Command::Enroll(terms) = &request.command {
        let same = current.currency == terms.currency
            && current.price == terms.price.minor_units()
            && current.access_policy == terms.access_policy;
        return if same {
            Ok(Applied::Unchanged(current.clone()))
        } else {
            Err(Rejection::EnrollmentExists {
                key: request.key.clone(),
                currency: current.currency,
                price: current.price,
                policy: policy_text(&current.access_policy),
            })
        };
    }

    let cancelled = current.status == EnrollmentStatus::Cancelled;
    let mut amounts = current.amounts();
    let mut next = current.clone();
    let mut reference = None;
    let mut reason = None;
    let (kind, amount) = match &request.command {
        Command::Enroll(_) => unreachable!("handled above"),
        Command::Complete => {
            if current.access_status != AccessStatus::Granted
                || cancelled
                || current.status == EnrollmentStatus::Completed
            {
                return Err(Rejection::InvalidTransition {
                    action: "complete",
                    status: current.status.as_str(),
                    why: "completion needs access GRANTED and an enrollment that is neither completed nor cancelled",
                });
            }
            next.status = EnrollmentStatus::Completed;
            (EntryKind::Complete, 0)
        }
        Command::Cancel => {
            if current.amount_paid > 0 || cancelled {
                return Err(Rejection::InvalidTransition {
                    action: "cancel",
                    status: current.status.as_str(),
                    why: "cancelling needs amount_paid = 0 and an enrollment that is not cancelled",
                });
            }
            next.status = EnrollmentStatus::Cancelled;
            (EntryKind::Cancel, 0)
        }
        _ if cancelled => return Err(Rejection::EnrollmentCancelled),
        Command::Payment {
            amount,
            currency,
            reference: payment_reference,
        } => {
            if let Some(currency) = currency.filter(|currency| *currency != current.currency) {
                return Err(Rejection::CurrencyMismatch {
                    expected: current.currency,
                    got: currency,
                });
            }
            let amount = amount.minor_units();
            if amount > amounts.due() {
                return Err(Rejection::Overpayment {
                    amount,
                    due: amounts.due(),
                });
            }
            amounts.paid = checked(amounts.paid.checked_add(amount));
            reference = payment_reference.clone();
            (EntryKind::Payment, amount)
        }
        Command::PayRemaining {
            reference: payment_reference,
        } => {
            let due = amounts.due();
            if due == 0 {
                return Err(Rejection::NothingDue);
            }
            amounts.paid = checked(amounts.paid.checked_add(due));
            reference = payment_reference.clone();
            (EntryKind::Payment, due)
        }
        Command::Credit {
            amount,
            reason: credit_reason,
        } => {
            let amount = amount.minor_units();
            if amount > amounts.due() {
                return Err(Rejection::CreditExceedsDue {
                    amount,
                    due: amounts.due(),
                });
            }
            amounts.credited = checked(amounts.credited.checked_add(amount));
            reason = Some(credit_reason.clone());
            (EntryKind::Credit, amount)
        }
        Command::Refund {
            amount,
            reason: refund_reason,
            reference: refund_reference,
        } => {
            let amount = amount.minor_units();
            if amount > amounts.paid {
                return Err(Rejection::RefundExceedsPaid {
                    amount,
                    paid: amounts.paid,
                });
            }
            // Refunds only grow; bound their sum like every other total so
            // endless pay-and-refund cycles are refused, never overflow.
            if amounts.refunded + amount > ENROLLMENT_TOTAL_MAX {
                return Err(Rejection::TotalLimitExceeded {
                    amount,
                    limit: ENROLLMENT_TOTAL_MAX,
                });
            }
            amounts.paid = checked(amounts.paid.checked_sub(amount));
            amounts.refunded = checked(amounts.refunded.checked_add(amount));
            reason = Some(refund_reason.clone());
            reference = refund_reference.clone();
            (EntryKind::Refund, amount)
        }
        Command::Charge {
            amount,
            reason: charge_reason,
        } => {
            let amount = amount.minor_units();
            match amounts.total().checked_add(amount) {
                Some(total) if total <= ENROLLMENT_TOTAL_MAX => {}
                _ => {
                    return Err(Rejection::TotalLimitExceeded {
                        amount,
                        limit: ENROLLMENT_TOTAL_MAX,
                    });
                }
            }
            amounts.charged = checked(amounts.charged.checked_add(amount));
            reason = Some(charge_reason.clone());
            (EntryKind::Charge, amount)
        }
    };

    // Server time never runs backwards within one enrollment, even if the
    // host clock is stepped back.
    let now = now.max(current.updated_at);
    next.set_amounts(amounts);
    next.version = current.version + 1;
    next.updated_at = now;
    assert_invariants(&next);
    Ok(Applied::Entry(LedgerEntry::seal(
        next.version,
        kind,
        amount,
        request.idempotency_key.clone(),
        reference,
        reason,
        now,
        next,
        state.last_hash,
    )))
}

fn enroll(request: &Request, terms: &EnrollTerms, now: Timestamp) -> LedgerEntry {
    let mut enrollment = Enrollment {
        user_id: request.key.user_id.clone(),
        course_id: request.key.course_id.clone(),
        currency: terms.currency,
        price: 0,
        amount_charged: 0,
        amount_paid: 0,
        amount_credited: 0,
        amount_refunded: 0,
        amount_due: 0,
        payment_status: PaymentStatus::Pending,
        access_policy: terms.access_policy,
        access_status: AccessStatus::Locked,
        status: EnrollmentStatus::PendingPayment,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    enrollment.set_amounts(Amounts {
        price: terms.price.minor_units(),
        ..Amounts::default()
    });
    assert_invariants(&enrollment);
    LedgerEntry::seal(
        1,
        EntryKind::Enroll,
        terms.price.minor_units(),
        request.idempotency_key.clone(),
        None,
        None,
        now,
        enrollment,
        Hash::ZERO,
    )
}

/// Sums are bounded far below `i64::MAX` by the amount limits, so an overflow
/// here is a bug: fail loudly rather than wrap.
fn checked(value: Option<i64>) -> i64 {
    value.expect("money arithmetic overflowed: amount limits were not enforced")
}

fn assert_invariants(enrollment: &Enrollment) {
    if let Err(broken) = enrollment.check() {
        panic!(
            "enrollment invariant broken for {}: {broken}",
            enrollment.key()
        );
    }
}
