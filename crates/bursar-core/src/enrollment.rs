//! The enrollment: what one student owes and has paid for one course, and the
//! statuses derived from those amounts.

use crate::{CourseId, Currency, Price, Timestamp, UserId};
use serde::{Deserialize, Serialize};

/// Identifies an enrollment: one per (user, course).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnrollmentKey {
    pub user_id: UserId,
    pub course_id: CourseId,
}

impl std::fmt::Display for EnrollmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.user_id, self.course_id)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Something is due and nothing has been settled.
    Pending,
    /// Something is due and something has been settled.
    Partial,
    /// Nothing is due.
    Completed,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessStatus {
    /// The policy has never held.
    Locked,
    /// The policy holds.
    Granted,
    /// The policy held once and no longer does (after a refund or a charge).
    Revoked,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnrollmentStatus {
    PendingPayment,
    Active,
    Suspended,
    Completed,
    Cancelled,
}

/// The names the API and the databases use for each status.
macro_rules! status_names {
    ($name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $name {
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)* _ => None }
            }
        }
    };
}

status_names!(PaymentStatus { Pending => "PENDING", Partial => "PARTIAL", Completed => "COMPLETED" });
status_names!(AccessStatus { Locked => "LOCKED", Granted => "GRANTED", Revoked => "REVOKED" });
status_names!(EnrollmentStatus {
    PendingPayment => "PENDING_PAYMENT",
    Active => "ACTIVE",
    Suspended => "SUSPENDED",
    Completed => "COMPLETED",
    Cancelled => "CANCELLED",
});

// Read through `AccessPolicyFields`: serde does not apply
// `deny_unknown_fields` to the unit variant of an internally tagged enum, so
// `{"kind":"FULL_PAYMENT","amount":5}` would otherwise be taken silently.
/// When a student gets access to the course.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(
    tag = "kind",
    rename_all = "SCREAMING_SNAKE_CASE",
    try_from = "AccessPolicyFields"
)]
pub enum AccessPolicy {
    /// Access once nothing is due.
    #[default]
    FullPayment,
    /// Access once `amount_paid + amount_credited >= amount`, or once nothing
    /// is due, whichever comes first.
    MinSettled { amount: Price },
}

/// An access policy as JSON spells it, before the kind and the amount are
/// checked against each other.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessPolicyFields {
    kind: AccessPolicyKind,
    amount: Option<Price>,
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum AccessPolicyKind {
    FullPayment,
    MinSettled,
}

impl TryFrom<AccessPolicyFields> for AccessPolicy {
    type Error = &'static str;

    fn try_from(fields: AccessPolicyFields) -> Result<AccessPolicy, &'static str> {
        match (fields.kind, fields.amount) {
            (AccessPolicyKind::FullPayment, None) => Ok(AccessPolicy::FullPayment),
            (AccessPolicyKind::FullPayment, Some(_)) => {
                Err("the FULL_PAYMENT access policy takes no amount")
            }
            (AccessPolicyKind::MinSettled, Some(amount)) => Ok(AccessPolicy::MinSettled { amount }),
            (AccessPolicyKind::MinSettled, None) => {
                Err("the MIN_SETTLED access policy needs an amount")
            }
        }
    }
}

impl AccessPolicy {
    pub fn holds(&self, amounts: &Amounts) -> bool {
        match self {
            AccessPolicy::FullPayment => amounts.due() == 0,
            AccessPolicy::MinSettled { amount } => {
                amounts.due() == 0 || amounts.settled() >= amount.minor_units()
            }
        }
    }
}

/// The running totals of an enrollment, in minor units of its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amounts {
    pub price: i64,
    pub charged: i64,
    pub paid: i64,
    pub credited: i64,
    pub refunded: i64,
    /// Reserved by open holds: part of the due, not yet settled.
    pub held: i64,
}

impl Amounts {
    /// What the student owes in total: price plus charges.
    pub fn total(&self) -> i64 {
        self.price + self.charged
    }

    /// Money received net of refunds, plus credits.
    pub fn settled(&self) -> i64 {
        self.paid + self.credited
    }

    /// `price + charged - paid - credited`. The operations keep it
    /// non-negative; `check` proves it.
    pub fn due(&self) -> i64 {
        self.total() - self.settled()
    }

    /// What can still be paid, held or credited: the due less open holds.
    pub fn available(&self) -> i64 {
        self.due() - self.held
    }

    /// The money invariants. A broken one is a bug, never a user error.
    pub fn check(&self) -> Result<(), String> {
        let fields = [
            ("price", self.price),
            ("amount_charged", self.charged),
            ("amount_paid", self.paid),
            ("amount_credited", self.credited),
            ("amount_refunded", self.refunded),
            ("amount_held", self.held),
        ];
        for (name, value) in fields {
            if value < 0 {
                return Err(format!("{name} is negative: {value}"));
            }
        }
        if self.due() < 0 {
            return Err(format!("amount_due is negative: {}", self.due()));
        }
        if self.available() < 0 {
            return Err(format!(
                "amount_held {} exceeds amount_due {}",
                self.held,
                self.due()
            ));
        }
        Ok(())
    }
}

/// One enrollment as the API shows it, and as every ledger entry snapshots it.
///
/// A snapshot written before holds existed has neither `amount_held` nor
/// `amount_available`: it reads as nothing held and everything due available.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EnrollmentFields")]
pub struct Enrollment {
    pub user_id: UserId,
    pub course_id: CourseId,
    pub currency: Currency,
    pub price: i64,
    pub amount_charged: i64,
    pub amount_paid: i64,
    pub amount_credited: i64,
    pub amount_refunded: i64,
    pub amount_due: i64,
    /// The sum of the open holds.
    pub amount_held: i64,
    /// `amount_due - amount_held`: what can still be paid, held or credited.
    pub amount_available: i64,
    pub payment_status: PaymentStatus,
    pub access_policy: AccessPolicy,
    pub access_status: AccessStatus,
    pub status: EnrollmentStatus,
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An enrollment as JSON spells it, before the amounts that snapshots from
/// before holds lack are filled in.
#[derive(Deserialize)]
struct EnrollmentFields {
    user_id: UserId,
    course_id: CourseId,
    currency: Currency,
    price: i64,
    amount_charged: i64,
    amount_paid: i64,
    amount_credited: i64,
    amount_refunded: i64,
    amount_due: i64,
    #[serde(default)]
    amount_held: i64,
    amount_available: Option<i64>,
    payment_status: PaymentStatus,
    access_policy: AccessPolicy,
    access_status: AccessStatus,
    status: EnrollmentStatus,
    version: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<EnrollmentFields> for Enrollment {
    fn from(fields: EnrollmentFields) -> Enrollment {
        Enrollment {
            amount_available: fields
                .amount_available
                .unwrap_or(fields.amount_due.saturating_sub(fields.amount_held)),
            user_id: fields.user_id,
            course_id: fields.course_id,
            currency: fields.currency,
            price: fields.price,
            amount_charged: fields.amount_charged,
            amount_paid: fields.amount_paid,
            amount_credited: fields.amount_credited,
            amount_refunded: fields.amount_refunded,
            amount_due: fields.amount_due,
            amount_held: fields.amount_held,
            payment_status: fields.payment_status,
            access_policy: fields.access_policy,
            access_status: fields.access_status,
            status: fields.status,
            version: fields.version,
            created_at: fields.created_at,
            updated_at: fields.updated_at,
        }
    }
}

/// The enrollment inside a ledger entry's canonical bytes: every field in
/// the order of `Enrollment`, except that `amount_held` and
/// `amount_available` are left out while nothing is held (available is then
/// the due). Entries written before holds existed keep their hashes.
#[derive(Serialize)]
pub(crate) struct CanonicalEnrollment<'a> {
    user_id: &'a UserId,
    course_id: &'a CourseId,
    currency: &'a Currency,
    price: i64,
    amount_charged: i64,
    amount_paid: i64,
    amount_credited: i64,
    amount_refunded: i64,
    amount_due: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount_held: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount_available: Option<i64>,
    payment_status: PaymentStatus,
    access_policy: &'a AccessPolicy,
    access_status: AccessStatus,
    status: EnrollmentStatus,
    version: u64,
    created_at: &'a Timestamp,
    updated_at: &'a Timestamp,
}

#[cfg_attr(not(test), allow(dead_code))]
impl<'a> CanonicalEnrollment<'a> {
    pub(crate) fn of(enrollment: &'a Enrollment) -> CanonicalEnrollment<'a> {
        let held = enrollment.amount_held != 0;
        CanonicalEnrollment {
            user_id: &enrollment.user_id,
            course_id: &enrollment.course_id,
            currency: &enrollment.currency,
            price: enrollment.price,
            amount_charged: enrollment.amount_charged,
            amount_paid: enrollment.amount_paid,
            amount_credited: enrollment.amount_credited,
            amount_refunded: enrollment.amount_refunded,
            amount_due: enrollment.amount_due,
            amount_held: held.then_some(enrollment.amount_held),
            amount_available: held.then_some(enrollment.amount_available),
            payment_status: enrollment.payment_status,
            access_policy: &enrollment.access_policy,
            access_status: enrollment.access_status,
            status: enrollment.status,
            version: enrollment.version,
            created_at: &enrollment.created_at,
            updated_at: &enrollment.updated_at,
        }
    }
}

impl Enrollment {
    pub fn key(&self) -> EnrollmentKey {
        EnrollmentKey {
            user_id: self.user_id.clone(),
            course_id: self.course_id.clone(),
        }
    }

    pub fn amounts(&self) -> Amounts {
        Amounts {
            price: self.price,
            charged: self.amount_charged,
            paid: self.amount_paid,
            credited: self.amount_credited,
            refunded: self.amount_refunded,
            held: self.amount_held,
        }
    }

    /// Writes new amounts and derives every status from them, so a status can
    /// never disagree with the amounts it describes.
    pub fn set_amounts(&mut self, amounts: Amounts) {
        self.price = amounts.price;
        self.amount_charged = amounts.charged;
        self.amount_paid = amounts.paid;
        self.amount_credited = amounts.credited;
        self.amount_refunded = amounts.refunded;
        self.amount_held = amounts.held;
        let derived = self.derive(&amounts);
        self.amount_due = derived.amount_due;
        self.amount_available = derived.amount_available;
        self.payment_status = derived.payment_status;
        self.access_status = derived.access_status;
        self.status = derived.status;
    }

    /// What the derived fields must be for these amounts, given the statuses
    /// the enrollment had before (access remembers whether it was ever
    /// granted; cancellation and completion are set explicitly). Held money
    /// is not settled: no status looks at it.
    fn derive(&self, amounts: &Amounts) -> Derived {
        let payment_status = if amounts.due() == 0 {
            PaymentStatus::Completed
        } else if amounts.settled() > 0 {
            PaymentStatus::Partial
        } else {
            PaymentStatus::Pending
        };
        let access_status = if self.access_policy.holds(amounts) {
            AccessStatus::Granted
        } else if self.access_status == AccessStatus::Locked {
            AccessStatus::Locked
        } else {
            AccessStatus::Revoked
        };
        let status = match (self.status, access_status) {
            (EnrollmentStatus::Cancelled, _) => EnrollmentStatus::Cancelled,
            // Completion is kept only while access holds: a completed course
            // whose payment is refunded is suspended like any other.
            (EnrollmentStatus::Completed, AccessStatus::Granted) => EnrollmentStatus::Completed,
            (_, AccessStatus::Locked) => EnrollmentStatus::PendingPayment,
            (_, AccessStatus::Granted) => EnrollmentStatus::Active,
            (_, AccessStatus::Revoked) => EnrollmentStatus::Suspended,
        };
        Derived {
            amount_due: amounts.due(),
            amount_available: amounts.available(),
            payment_status,
            access_status,
            status,
        }
    }

    /// Every invariant an enrollment must satisfy, statuses included. Runs on
    /// every write and every read, so it allocates nothing unless broken.
    pub fn check(&self) -> Result<(), String> {
        let amounts = self.amounts();
        amounts.check()?;
        let derived = self.derive(&amounts);
        let stored = Derived {
            amount_due: self.amount_due,
            amount_available: self.amount_available,
            payment_status: self.payment_status,
            access_status: self.access_status,
            status: self.status,
        };
        if derived != stored {
            return Err(format!(
                "stored fields disagree with the amounts: stored {stored:?}, derived {derived:?}"
            ));
        }
        Ok(())
    }
}

/// The fields of an enrollment that follow from its amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Derived {
    amount_due: i64,
    amount_available: i64,
    payment_status: PaymentStatus,
    access_status: AccessStatus,
    status: EnrollmentStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_policy_json() {
        let parse = |text: &str| serde_json::from_str::<AccessPolicy>(text);
        assert_eq!(
            parse(r#"{"kind":"FULL_PAYMENT"}"#).unwrap(),
            AccessPolicy::FullPayment
        );
        assert_eq!(
            parse(r#"{"amount":500,"kind":"MIN_SETTLED"}"#).unwrap(),
            AccessPolicy::MinSettled {
                amount: Price::new(500).unwrap()
            }
        );
        for bad in [
            r#"{"kind":"FULL_PAYMENT","amount":5}"#,
            r#"{"kind":"MIN_SETTLED"}"#,
            r#"{"kind":"MIN_SETTLED","amount":-1}"#,
            r#"{"kind":"MIN_SETTLED","amount":5,"extra":1}"#,
            r#"{"kind":"HALF"}"#,
            r#"{"amount":5}"#,
            r#""FULL_PAYMENT""#,
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
        for policy in [
            AccessPolicy::FullPayment,
            AccessPolicy::MinSettled {
                amount: Price::new(1).unwrap(),
            },
        ] {
            let text = serde_json::to_string(&policy).unwrap();
            assert_eq!(parse(&text).unwrap(), policy, "{text} round-trips");
        }
    }
}
