//! The request and response bodies of the bursar API, typed. Enrollments and
//! ledger entries are bursar-core's own types, so a value read here is
//! validated exactly as the server validates it.

use bursar_core::{
    AccessPolicy, Amount, CourseId, Currency, Enrollment, EnrollmentKey, Hash, HoldAmount,
    HoldExpiry, IdempotencyKey, LedgerEntry, Price, Reason, Reference, Timestamp, UserId,
};
use serde::{Deserialize, Serialize, Serializer};

/// `PUT /v1/users/{user_id}/courses/{course_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollRequest {
    pub currency: Currency,
    pub price: Price,
    /// The server's default is `FULL_PAYMENT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicy>,
}

/// `POST …/payments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentRequest {
    pub amount: Amount,
    /// If given, must be the enrollment's currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

impl PaymentRequest {
    pub fn new(amount: Amount) -> PaymentRequest {
        PaymentRequest {
            amount,
            currency: None,
            reference: None,
        }
    }
}

/// `POST …/pay-remaining`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PayRemainingRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// `POST …/credits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditRequest {
    pub amount: Amount,
    pub reason: Reason,
}

/// `POST …/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefundRequest {
    pub amount: Amount,
    pub reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// `POST …/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChargeRequest {
    pub amount: Amount,
    pub reason: Reason,
}

/// `POST …/holds`: reserve part of the due before a card is charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    /// A given amount, or all of `amount_available`.
    pub amount: HoldAmount,
    /// The server's default is 900 seconds.
    pub expires_in: Option<HoldExpiry>,
    /// The processor's id of the checkout, e.g. a PaymentIntent.
    pub reference: Option<Reference>,
}

impl HoldRequest {
    /// A hold of `amount`, with the server's default life.
    pub fn amount(amount: Amount) -> HoldRequest {
        HoldRequest {
            amount: HoldAmount::Amount(amount),
            expires_in: None,
            reference: None,
        }
    }

    /// A hold of all of `amount_available`, with the server's default life.
    pub fn remaining() -> HoldRequest {
        HoldRequest {
            amount: HoldAmount::Remaining,
            expires_in: None,
            reference: None,
        }
    }
}

/// The wire form of a hold: `{"amount": N}` or `{"remaining": true}`.
#[derive(Serialize)]
struct HoldWire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<HoldExpiry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Reference>,
}

impl Serialize for HoldRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (amount, remaining) = match self.amount {
            HoldAmount::Amount(amount) => (Some(amount), None),
            HoldAmount::Remaining => (None, Some(true)),
        };
        HoldWire {
            amount,
            remaining,
            expires_in: self.expires_in,
            reference: self.reference.as_ref(),
        }
        .serialize(serializer)
    }
}

/// `POST …/holds/{hold_seq}/capture`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CaptureRequest {
    /// The server's default is the whole hold; the rest is released.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// The processor's charge id; the server's default is the hold's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// A `capture` operation of `/v1/batch`: the hold and the route's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchCaptureRequest {
    pub hold_seq: u64,
    #[serde(flatten)]
    pub capture: CaptureRequest,
}

/// A `void` operation of `/v1/batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchVoidRequest {
    pub hold_seq: u64,
}

/// One open hold, as `GET …/holds` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OpenHold {
    /// The `seq` of the hold's `HOLD` entry, which names it.
    pub hold_seq: u64,
    pub amount: i64,
    pub expires_at: Timestamp,
    pub reference: Option<Reference>,
}

#[derive(Deserialize)]
pub(crate) struct HoldsBody {
    pub holds: Vec<OpenHold>,
}

/// The body of `complete` and `cancel`: `{}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct EmptyRequest {}

/// The answer to an accepted operation, and to each of its replays.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Accepted {
    pub entry: LedgerEntry,
    pub enrollment: Enrollment,
    /// True when this answer is the replay of an earlier acceptance of the
    /// same idempotency key (`Idempotent-Replayed: true`).
    #[serde(skip)]
    pub replayed: bool,
}

/// The least of an accepted operation's answer, for callers that send many
/// and read balances later: reading it skips the rest of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The ledger sequence number of the entry.
    pub seq: u64,
    pub replayed: bool,
}

#[derive(Deserialize)]
pub(crate) struct ReceiptBody {
    pub entry: ReceiptEntry,
}

#[derive(Deserialize)]
pub(crate) struct ReceiptEntry {
    pub seq: u64,
}

/// What enrolling answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// 201: a new enrollment, with its `ENROLL` ledger entry.
    Created(Box<Accepted>),
    /// 200: it existed already with the same terms.
    Existing(Enrollment),
}

impl Enrolled {
    pub fn enrollment(&self) -> &Enrollment {
        match self {
            Enrolled::Created(accepted) => &accepted.enrollment,
            Enrolled::Existing(enrollment) => enrollment,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct EnrollmentBody {
    pub enrollment: Enrollment,
}

#[derive(Deserialize)]
pub(crate) struct EnrollmentsBody {
    pub enrollments: Vec<Enrollment>,
}

#[derive(Deserialize)]
pub(crate) struct LedgerBody<E> {
    pub entries: Vec<E>,
}

/// One operation of `POST /v1/batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchOperation {
    pub user_id: UserId,
    pub course_id: CourseId,
    #[serde(flatten)]
    pub command: BatchCommand,
    /// Required for every kind but `enroll`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
}

impl BatchOperation {
    pub fn new(
        enrollment: &EnrollmentKey,
        idempotency_key: Option<IdempotencyKey>,
        command: BatchCommand,
    ) -> BatchOperation {
        BatchOperation {
            user_id: enrollment.user_id.clone(),
            course_id: enrollment.course_id.clone(),
            command,
            idempotency_key,
        }
    }
}

/// The kind of a batch operation and its body: what the single operation's
/// route takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum BatchCommand {
    Enroll(EnrollRequest),
    Payment(PaymentRequest),
    PayRemaining(PayRemainingRequest),
    Credit(CreditRequest),
    Refund(RefundRequest),
    Charge(ChargeRequest),
    Complete(EmptyRequest),
    Cancel(EmptyRequest),
    Hold(HoldRequest),
    Capture(BatchCaptureRequest),
    Void(BatchVoidRequest),
}

/// How much each result of a batch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BatchDetail {
    /// Each result carries the body its own route would answer.
    #[default]
    Full,
    /// Only status, code, seq and whether it was a replay.
    Summary,
}

/// `POST /v1/batch`: at most 8,192 operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchRequest {
    pub operations: Vec<BatchOperation>,
    pub detail: BatchDetail,
}

/// The operations one batch may carry.
pub const BATCH_OPERATIONS_MAX: usize = 8_192;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// The result of one operation of a batch: the status its own route would
/// have answered, and in `full` detail that route's body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BatchResult {
    pub status: u16,
    #[serde(default)]
    pub replayed: bool,
    /// In `summary` detail: the code of a refusal.
    #[serde(default)]
    pub code: Option<String>,
    /// In `summary` detail: the sequence number of an accepted entry.
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

impl BatchResult {
    /// 201 (applied now or replayed) or 200 (an enrollment that existed).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The code of a refusal, whichever the detail.
    pub fn error_code(&self) -> Option<&str> {
        if self.is_success() {
            return None;
        }
        self.code.as_deref().or_else(|| {
            self.body
                .as_ref()
                .and_then(|body| body["error"]["code"].as_str())
        })
    }

    /// The answer of an accepted operation, in `full` detail.
    pub fn accepted(&self) -> Option<Accepted> {
        if self.status != 201 {
            return None;
        }
        let mut accepted: Accepted = serde_json::from_value(self.body.clone()?).ok()?;
        accepted.replayed = self.replayed;
        Some(accepted)
    }
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AuditReport {
    pub ok: bool,
    pub enrollments: u64,
    pub entries: u64,
    pub disagreements: Vec<AuditDisagreement>,
}

/// `GET …/statement`: `closing` is `opening` with `entries` applied.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Statement {
    pub user_id: UserId,
    pub course_id: CourseId,
    pub currency: Currency,
    /// The start of the period as asked; `None`: from the beginning.
    pub from: Option<Timestamp>,
    /// The end of the period (excluded): as asked, or the server's now.
    pub to: Timestamp,
    /// The enrollment before `from`; `None` when it did not exist yet.
    pub opening: Option<Enrollment>,
    /// The entries with `from <= created_at < to`, oldest first.
    pub entries: Vec<LedgerEntry>,
    /// The enrollment before `to`; `None` when it did not exist yet.
    pub closing: Option<Enrollment>,
}

/// `GET …/audit`: one enrollment's chain, in the whole audit's words.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EnrollmentAudit {
    pub ok: bool,
    pub entries: u64,
    /// The newest entry's hash as stored; `None` without entries.
    pub head_hash: Option<Hash>,
    pub problems: Vec<AuditDisagreement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AuditDisagreement {
    pub user_id: String,
    pub course_id: String,
    /// The entry at fault, if one is.
    #[serde(default)]
    pub seq: Option<u64>,
    pub problem: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Health {
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Readiness {
    pub status: String,
    pub backend: String,
}

#[derive(Deserialize)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Deserialize)]
pub(crate) struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batch_operations_serialize_as_the_server_reads_them() {
        let enrollment = EnrollmentKey {
            user_id: UserId::parse("u1").unwrap(),
            course_id: CourseId::parse("c1").unwrap(),
        };
        let payment = BatchOperation::new(
            &enrollment,
            Some(IdempotencyKey::parse("k1").unwrap()),
            BatchCommand::Payment(PaymentRequest::new(Amount::new(250).unwrap())),
        );
        assert_eq!(
            serde_json::to_value(&payment).unwrap(),
            json!({"user_id": "u1", "course_id": "c1", "kind": "payment",
                   "body": {"amount": 250}, "idempotency_key": "k1"})
        );
        let enroll = BatchOperation::new(
            &enrollment,
            None,
            BatchCommand::Enroll(EnrollRequest {
                currency: Currency::parse("USD").unwrap(),
                price: Price::new(1_000).unwrap(),
                access_policy: None,
            }),
        );
        assert_eq!(
            serde_json::to_value(&enroll).unwrap(),
            json!({"user_id": "u1", "course_id": "c1", "kind": "enroll",
                   "body": {"currency": "USD", "price": 1000}})
        );
        let request = BatchRequest {
            operations: vec![BatchOperation::new(
                &enrollment,
                Some(IdempotencyKey::parse("k2").unwrap()),
                BatchCommand::PayRemaining(PayRemainingRequest::default()),
            )],
            detail: BatchDetail::Summary,
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"operations": [{"user_id": "u1", "course_id": "c1", "kind": "pay_remaining",
                   "body": {}, "idempotency_key": "k2"}], "detail": "summary"})
        );
    }

    #[test]
    fn holds_serialize_as_the_server_reads_them() {
        let enrollment = EnrollmentKey {
            user_id: UserId::parse("u1").unwrap(),
            course_id: CourseId::parse("c1").unwrap(),
        };
        assert_eq!(
            serde_json::to_value(HoldRequest::remaining()).unwrap(),
            json!({"remaining": true})
        );
        let hold = HoldRequest {
            amount: HoldAmount::Amount(Amount::new(250).unwrap()),
            expires_in: Some(HoldExpiry::from_seconds(30).unwrap()),
            reference: Some(Reference::parse("pi_1").unwrap()),
        };
        assert_eq!(
            serde_json::to_value(&hold).unwrap(),
            json!({"amount": 250, "expires_in": 30, "reference": "pi_1"})
        );
        let key = Some(IdempotencyKey::parse("k1").unwrap());
        let capture = BatchOperation::new(
            &enrollment,
            key.clone(),
            BatchCommand::Capture(BatchCaptureRequest {
                hold_seq: 7,
                capture: CaptureRequest::default(),
            }),
        );
        assert_eq!(
            serde_json::to_value(&capture).unwrap(),
            json!({"user_id": "u1", "course_id": "c1", "kind": "capture",
                   "body": {"hold_seq": 7}, "idempotency_key": "k1"})
        );
        let void = BatchOperation::new(
            &enrollment,
            key,
            BatchCommand::Void(BatchVoidRequest { hold_seq: 7 }),
        );
        assert_eq!(
            serde_json::to_value(&void).unwrap()["body"],
            json!({"hold_seq": 7})
        );
    }

    #[test]
    fn batch_results_give_their_code_in_either_detail() {
        let summary: BatchResult =
            serde_json::from_value(json!({"status": 422, "code": "OVERPAYMENT"})).unwrap();
        assert_eq!(summary.error_code(), Some("OVERPAYMENT"));
        let full: BatchResult = serde_json::from_value(json!({"status": 409,
            "body": {"error": {"code": "NOTHING_DUE", "message": "nothing is due"}}}))
        .unwrap();
        assert_eq!(full.error_code(), Some("NOTHING_DUE"));
        let accepted: BatchResult =
            serde_json::from_value(json!({"status": 201, "replayed": true, "seq": 4})).unwrap();
        assert!(accepted.is_success());
        assert!(accepted.replayed);
        assert_eq!(accepted.error_code(), None);
    }
}
