//! The operations of the contract as one pure function:
//! `apply(state, request, now) -> Result<Applied, Rejection>`.

use crate::enrollment::Amounts;
use crate::hold::{Hold, HoldAmount, HoldChange, HoldExpiry, HoldState};
use crate::ledger::{EntryKind, Hash, HoldFields, LedgerEntry};
use crate::money::ENROLLMENT_TOTAL_MAX;
use crate::{
    AccessPolicy, AccessStatus, Amount, Currency, Enrollment, EnrollmentKey, EnrollmentStatus,
    IdempotencyKey, PaymentStatus, Price, Reason, Reference, Timestamp,
};
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// Reserves part of the available due before a card is charged.
    Hold {
        amount: HoldAmount,
        expires_in: HoldExpiry,
        reference: Option<Reference>,
    },
    /// Turns an open hold into a payment of `amount` (default: all of it).
    Capture {
        hold_seq: u64,
        amount: Option<Amount>,
        reference: Option<Reference>,
    },
    /// Releases an open hold.
    Void {
        hold_seq: u64,
    },
    /// Releases one hold that has reached its `expires_at`: what an `EXPIRE`
    /// entry records. Never sent by a client; the planner writes these before
    /// any other request on the enrollment, and the audit replays them.
    Expire {
        hold_seq: u64,
    },
    /// The writer's expiry sweep: writes the `EXPIRE` entries that are due on
    /// the enrollment (the planner does that before every request) and
    /// nothing else. Carries no idempotency key and answers no one.
    ExpireHolds,
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
            Command::Hold { .. } => "hold",
            Command::Capture { .. } => "capture",
            Command::Void { .. } => "void",
            Command::Expire { .. } => "expire",
            Command::ExpireHolds => "expire_holds",
        }
    }

    /// The hold a capture or void names: the storage loads it whatever its
    /// state, so that a closed one is answered `HOLD_NOT_OPEN`.
    pub fn named_hold(&self) -> Option<u64> {
        match self {
            Command::Capture { hold_seq, .. }
            | Command::Void { hold_seq }
            | Command::Expire { hold_seq } => Some(*hold_seq),
            _ => None,
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
    #[error("the enrollment has no hold {hold_seq}")]
    HoldNotFound { hold_seq: u64 },
    #[error("hold {hold_seq} is not open: it is {}", state.as_str())]
    HoldNotOpen { hold_seq: u64, state: HoldState },
    #[error("nothing is due (or all of it is held)")]
    NothingDue,
    #[error(
        "payment of {amount} exceeds the amount available of {available} (the amount due of {due} less open holds)"
    )]
    Overpayment {
        amount: i64,
        due: i64,
        available: i64,
    },
    #[error(
        "credit of {amount} exceeds the amount available of {available} (the amount due of {due} less open holds)"
    )]
    CreditExceedsDue {
        amount: i64,
        due: i64,
        available: i64,
    },
    #[error("capture of {amount} exceeds the hold of {held}")]
    CaptureExceedsHold { amount: i64, held: i64 },
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
            Rejection::HoldNotFound { .. } => "HOLD_NOT_FOUND",
            Rejection::HoldNotOpen { .. } => "HOLD_NOT_OPEN",
            Rejection::NothingDue => "NOTHING_DUE",
            Rejection::Overpayment { .. } => "OVERPAYMENT",
            Rejection::CreditExceedsDue { .. } => "CREDIT_EXCEEDS_DUE",
            Rejection::CaptureExceedsHold { .. } => "CAPTURE_EXCEEDS_HOLD",
            Rejection::RefundExceedsPaid { .. } => "REFUND_EXCEEDS_PAID",
            Rejection::InvalidTransition { .. } => "INVALID_TRANSITION",
            Rejection::TotalLimitExceeded { .. } => "TOTAL_LIMIT_EXCEEDED",
        }
    }
}

/// An enrollment together with the hash of its newest ledger entry, which the
/// next entry chains to, and the holds the operations on it may need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentState {
    pub enrollment: Enrollment,
    pub last_hash: Hash,
    /// By `hold_seq`: every open hold (their amounts sum to
    /// `amount_held`), and any closed hold a request names, so that it is
    /// answered `HOLD_NOT_OPEN` with its state rather than `HOLD_NOT_FOUND`.
    pub holds: BTreeMap<u64, Hold>,
}

impl EnrollmentState {
    /// A state with no holds loaded.
    pub fn new(enrollment: Enrollment, last_hash: Hash) -> EnrollmentState {
        EnrollmentState {
            enrollment,
            last_hash,
            holds: BTreeMap::new(),
        }
    }

    /// The state right after `entry`, which was decided on this one: its
    /// snapshot, its hash, and its change to the holds (a closed hold stays,
    /// marked closed, so a later request in the same batch is told so).
    pub fn after(mut self, entry: &LedgerEntry) -> EnrollmentState {
        self.advance(entry);
        self
    }

    /// `after`, in place.
    pub fn advance(&mut self, entry: &LedgerEntry) {
        self.enrollment = entry.enrollment.clone();
        self.last_hash = entry.hash;
        match entry.hold_change() {
            Some(HoldChange::Opened(hold)) => {
                self.holds.insert(hold.seq, hold);
            }
            Some(HoldChange::Closed { seq, state }) => {
                if let Some(hold) = self.holds.get_mut(&seq) {
                    hold.state = state;
                }
            }
            None => {}
        }
    }

    /// The open holds that have expired at `now`, oldest expiry first: the
    /// order in which their `EXPIRE` entries are written.
    pub fn expired_holds(&self, now: Timestamp) -> Vec<u64> {
        let now = now.max(self.enrollment.updated_at);
        let mut expired: Vec<(Timestamp, u64)> = self
            .holds
            .values()
            .filter(|hold| hold.is_open() && hold.has_expired_at(now))
            .map(|hold| (hold.expires_at, hold.seq))
            .collect();
        expired.sort();
        expired.into_iter().map(|(_, seq)| seq).collect()
    }

    /// The sum of the open holds.
    pub fn open_held(&self) -> i64 {
        self.holds
            .values()
            .filter(|hold| hold.is_open())
            .map(|hold| hold.amount)
            .sum()
    }

    /// The invariant between the enrollment and its holds: `amount_held` is
    /// the sum of the open holds. A store checks it on every state it loads.
    pub fn check_holds(&self) -> Result<(), String> {
        let open = self.open_held();
        if open != self.enrollment.amount_held {
            return Err(format!(
                "amount_held is {} but its open holds sum to {open}",
                self.enrollment.amount_held
            ));
        }
        Ok(())
    }
}

/// What an accepted request did.
///
/// An entry is much larger than an enrollment, but an `Applied` lives only
/// from `apply` to the planner, which moves the entry on at once: boxing it
/// would cost an allocation per operation on the write path for nothing.
#[allow(clippy::large_enum_variant)]
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

    // Server time never runs backwards within one enrollment, even if the
    // host clock is stepped back; holds expire by this time too.
    let now = now.max(current.updated_at);
    let cancelled = current.status == EnrollmentStatus::Cancelled;
    let mut amounts = current.amounts();
    let mut next = current.clone();
    let mut reference = None;
    let mut reason = None;
    let mut hold = HoldFields::default();
    let (kind, amount) = match &request.command {
        Command::Enroll(_) => unreachable!("handled above"),
        // The planner wrote whatever had expired before this request.
        Command::ExpireHolds => return Ok(Applied::Unchanged(current.clone())),
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
            if current.amount_paid > 0 || cancelled || amounts.held > 0 {
                return Err(Rejection::InvalidTransition {
                    action: "cancel",
                    status: current.status.as_str(),
                    why: "cancelling needs amount_paid = 0, no open hold and an enrollment that is not cancelled",
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
            if amount > amounts.available() {
                return Err(Rejection::Overpayment {
                    amount,
                    due: amounts.due(),
                    available: amounts.available(),
                });
            }
            amounts.paid = checked(amounts.paid.checked_add(amount));
            reference = payment_reference.clone();
            (EntryKind::Payment, amount)
        }
        Command::PayRemaining {
            reference: payment_reference,
        } => {
            let available = amounts.available();
            if available == 0 {
                return Err(Rejection::NothingDue);
            }
            amounts.paid = checked(amounts.paid.checked_add(available));
            reference = payment_reference.clone();
            (EntryKind::Payment, available)
        }
        Command::Credit {
            amount,
            reason: credit_reason,
        } => {
            let amount = amount.minor_units();
            if amount > amounts.available() {
                return Err(Rejection::CreditExceedsDue {
                    amount,
                    due: amounts.due(),
                    available: amounts.available(),
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
        Command::Hold {
            amount,
            expires_in,
            reference: hold_reference,
        } => {
            let available = amounts.available();
            let amount = match amount {
                HoldAmount::Remaining if available == 0 => return Err(Rejection::NothingDue),
                HoldAmount::Remaining => available,
                HoldAmount::Amount(amount) => {
                    let amount = amount.minor_units();
                    if amount > available {
                        return Err(Rejection::Overpayment {
                            amount,
                            due: amounts.due(),
                            available,
                        });
                    }
                    amount
                }
            };
            amounts.held = checked(amounts.held.checked_add(amount));
            reference = hold_reference.clone();
            hold = HoldFields {
                hold_seq: Some(current.version + 1),
                expires_at: Some(expires_in.after(now)),
            };
            (EntryKind::Hold, amount)
        }
        Command::Capture {
            hold_seq,
            amount,
            reference: capture_reference,
        } => {
            let open = open_hold(state, *hold_seq, now)?;
            let captured = amount.map_or(open.amount, Amount::minor_units);
            if captured > open.amount {
                return Err(Rejection::CaptureExceedsHold {
                    amount: captured,
                    held: open.amount,
                });
            }
            amounts.held = checked(amounts.held.checked_sub(open.amount));
            amounts.paid = checked(amounts.paid.checked_add(captured));
            // The processor's id given at capture, else the one the hold
            // was opened with.
            reference = capture_reference.clone().or_else(|| open.reference.clone());
            hold.hold_seq = Some(*hold_seq);
            (EntryKind::Capture, captured)
        }
        Command::Void { hold_seq } => {
            let open = open_hold(state, *hold_seq, now)?;
            amounts.held = checked(amounts.held.checked_sub(open.amount));
            hold.hold_seq = Some(*hold_seq);
            (EntryKind::Void, open.amount)
        }
        Command::Expire { hold_seq } => {
            let expiring = match state.holds.get(hold_seq) {
                None => {
                    return Err(Rejection::HoldNotFound {
                        hold_seq: *hold_seq,
                    });
                }
                Some(found) if !found.is_open() => {
                    return Err(Rejection::HoldNotOpen {
                        hold_seq: *hold_seq,
                        state: found.state,
                    });
                }
                Some(found) => found,
            };
            if !expiring.has_expired_at(now) {
                return Err(Rejection::InvalidTransition {
                    action: "expire",
                    status: current.status.as_str(),
                    why: "a hold expires only once its expires_at has passed",
                });
            }
            amounts.held = checked(amounts.held.checked_sub(expiring.amount));
            hold.hold_seq = Some(*hold_seq);
            (EntryKind::Expire, expiring.amount)
        }
    };

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
        hold,
        now,
        next,
        state.last_hash,
    )))
}

/// The hold `hold_seq` if it is open at `now`: a hold past its `expires_at`
/// is expired whether or not its `EXPIRE` entry has been written.
fn open_hold(state: &EnrollmentState, hold_seq: u64, now: Timestamp) -> Result<&Hold, Rejection> {
    match state.holds.get(&hold_seq) {
        None => Err(Rejection::HoldNotFound { hold_seq }),
        Some(hold) if !hold.is_open() => Err(Rejection::HoldNotOpen {
            hold_seq,
            state: hold.state,
        }),
        Some(hold) if hold.has_expired_at(now) => Err(Rejection::HoldNotOpen {
            hold_seq,
            state: HoldState::Expired,
        }),
        Some(hold) => Ok(hold),
    }
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
        amount_held: 0,
        amount_available: 0,
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
        HoldFields::default(),
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
