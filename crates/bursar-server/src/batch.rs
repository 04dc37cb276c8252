//! `POST /v1/batch`: many operations over any enrollments, each with its own
//! idempotency key, applied in order in one durable commit, one result per
//! operation. An operation's refusal does not undo the others.

use crate::AppState;
use crate::api::{
    AcceptedBody, ChargeBody, CreditBody, EnrollBody, EnrollmentBody, ErrorBody, IntoCommand,
    PayRemainingBody, PaymentBody, RefundBody,
};
use crate::error::ApiError;
use crate::extract::JsonBytes;
use crate::holds::{BatchCaptureBody, BatchVoidBody, HoldBody};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bursar_core::{Command, CourseId, EnrollmentKey, IdempotencyKey, Outcome, Request, UserId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use utoipa::ToSchema;

/// Operations one batch may carry: the contract's bound. One batch is one
/// transaction, so this also bounds how long one commit holds the writer.
pub const BATCH_OPERATIONS_MAX: usize = 8_192;

/// A batch body: 8,192 operations of up to about 1 KiB of JSON each.
pub const BATCH_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

// A batch body is parsed in one pass over the bytes: ids and keys borrowed
// where they need no unescaping, each operation's `body` kept as its raw
// JSON text and parsed straight into its kind's type (no `Value` between).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    /// 1 to 8,192 operations.
    #[schema(min_items = 1, max_items = 8192)]
    #[serde(borrow)]
    pub operations: Vec<BatchOperation<'a>>,
    /// `full` (the default): every result carries the body the single
    /// operation's route would answer. `summary`: only status, code, seq and
    /// whether it was a replay — for bulk loads that read balances later.
    #[serde(default)]
    pub detail: Detail,
}

#[derive(Deserialize, ToSchema, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    #[default]
    Full,
    Summary,
}

#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    Enroll,
    Payment,
    PayRemaining,
    Credit,
    Refund,
    Charge,
    Complete,
    Cancel,
    Hold,
    /// Its body names the hold: `{"hold_seq", "amount"?, "reference"?}`.
    Capture,
    /// Its body names the hold: `{"hold_seq"}`.
    Void,
}

/// One operation of a batch. Its `body` is what the single operation's route
/// takes; `idempotency_key` is required for every kind but `enroll`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOperation<'a> {
    /// Checked per operation, like the rest of the operation: an invalid one
    /// gets its 400 in place and the others still commit.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub user_id: Cow<'a, str>,
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub course_id: Cow<'a, str>,
    pub kind: BatchKind,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub idempotency_key: Option<Cow<'a, str>>,
    // Absent or `null`: `{}`.
    #[serde(default, borrow)]
    #[schema(value_type = Value)]
    pub body: Option<&'a RawValue>,
}

/// The result of one operation: the status and body its own route would have
/// answered.
#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    pub status: u16,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// In `summary` detail: the error code of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// In `summary` detail: the ledger sequence number of an accepted entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

fn parse_body<T: DeserializeOwned + IntoCommand>(
    body: Option<&RawValue>,
) -> Result<Command, ApiError> {
    let raw = body.map_or("{}", RawValue::get);
    crate::json_errors::from_raw::<T>(raw, "body")
        .map_err(ApiError::invalid)?
        .into_command()
}

/// Validates one operation exactly as its own route would.
fn parse_operation(operation: BatchOperation<'_>) -> Result<Request, ApiError> {
    let key = EnrollmentKey {
        user_id: UserId::parse(&operation.user_id)
            .map_err(|error| ApiError::invalid(error.to_string()))?,
        course_id: CourseId::parse(&operation.course_id)
            .map_err(|error| ApiError::invalid(error.to_string()))?,
    };
    let idempotency_key = operation
        .idempotency_key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(|error| ApiError::invalid(error.to_string()))?;
    if idempotency_key.is_none() && !matches!(operation.kind, BatchKind::Enroll) {
        return Err(ApiError::invalid(
            "idempotency_key is required for every operation but enroll",
        ));
    }
    let command = match operation.kind {
        BatchKind::Enroll => parse_body::<EnrollBody>(operation.body)?,
        BatchKind::Payment => parse_body::<PaymentBody>(operation.body)?,
        BatchKind::PayRemaining => parse_body::<PayRemainingBody>(operation.body)?,
        BatchKind::Credit => parse_body::<CreditBody>(operation.body)?,
        BatchKind::Refund => parse_body::<RefundBody>(operation.body)?,
        BatchKind::Charge => parse_body::<ChargeBody>(operation.body)?,
        BatchKind::Complete => parse_body::<EmptyBodyCommand<true>>(operation.body)?,
        BatchKind::Cancel => parse_body::<EmptyBodyCommand<false>>(operation.body)?,
        BatchKind::Hold => parse_body::<HoldBody>(operation.body)?,
        BatchKind::Capture => parse_body::<BatchCaptureBody>(operation.body)?,
        BatchKind::Void => parse_body::<BatchVoidBody>(operation.body)?,
    };
    Ok(Request {
        key,
        idempotency_key,
        command,
    })
}

/// `complete` (`COMPLETE = true`) or `cancel`: both take `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBodyCommand<const COMPLETE: bool> {}

impl<const COMPLETE: bool> IntoCommand for EmptyBodyCommand<COMPLETE> {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(if COMPLETE {
            Command::Complete
        } else {
            Command::Cancel
        })
    }
}

fn error_result(error: &ApiError, detail: Detail) -> BatchResult {
    BatchResult {
        status: error.status.as_u16(),
        replayed: false,
        code: (detail == Detail::Summary).then_some(error.code),
        seq: None,
        body: (detail == Detail::Full).then(|| error.body()),
    }
}

fn outcome_result(outcome: &Outcome, detail: Detail) -> BatchResult {
    let accepted = |entry: &bursar_core::LedgerEntry, replayed: bool| BatchResult {
        status: 201,
        replayed,
        code: None,
        seq: (detail == Detail::Summary).then_some(entry.seq),
        body: (detail == Detail::Full).then(|| {
            serde_json::to_value(AcceptedBody {
                entry,
                enrollment: &entry.enrollment,
            })
            .expect("serializes")
        }),
    };
    match outcome {
        Outcome::Accepted(entry) => accepted(entry, false),
        Outcome::Replayed(entry) => accepted(entry, true),
        Outcome::Unchanged(enrollment) => BatchResult {
            status: 200,
            replayed: false,
            code: None,
            seq: (detail == Detail::Summary).then_some(enrollment.version),
            body: (detail == Detail::Full)
                .then(|| serde_json::to_value(EnrollmentBody { enrollment }).expect("serializes")),
        },
        Outcome::Rejected(rejection) => error_result(&ApiError::from_rejection(rejection), detail),
    }
}

/// Apply up to 8,192 operations in order in one durable commit.
#[utoipa::path(post, path = "/v1/batch", request_body = BatchBody<'static>,
    responses((status = 200, body = BatchResponse), (status = 413, body = ErrorBody), (status = "4XX", body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn batch(
    State(state): State<AppState>,
    bytes: JsonBytes<BATCH_BODY_BYTES_MAX>,
) -> Result<Response, ApiError> {
    let body: BatchBody<'_> = bytes.parse()?;
    let count = body.operations.len();
    if count > BATCH_OPERATIONS_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!(
                "a batch holds at most {BATCH_OPERATIONS_MAX} operations; this one has {count}"
            ),
        ));
    }
    if count == 0 {
        return Err(ApiError::invalid("a batch needs at least one operation"));
    }
    let detail = body.detail;
    // Invalid operations are answered in place; the valid ones go to the
    // writer together, as one job, so they share one commit.
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(count);
    let mut requests = Vec::with_capacity(count);
    for operation in body.operations {
        match parse_operation(operation) {
            Ok(request) => {
                requests.push(request);
                results.push(None);
            }
            Err(error) => results.push(Some(error_result(&error, detail))),
        }
    }
    // The body's reservation of the body budget ends once it is parsed.
    drop(bytes);
    let outcomes = if requests.is_empty() {
        Vec::new()
    } else {
        state.writer.submit(requests).await?
    };
    let mut outcomes = outcomes.iter();
    let results = results
        .into_iter()
        .map(|result| match result {
            Some(result) => result,
            None => outcome_result(
                outcomes.next().expect("one outcome per queued operation"),
                detail,
            ),
        })
        .collect();
    Ok((StatusCode::OK, axum::Json(BatchResponse { results })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each operation of `json` as its own route would take it, or its message.
    fn operations(json: &str) -> Vec<Result<Request, String>> {
        let body: BatchBody<'_> = crate::json_errors::from_slice(json.as_bytes()).expect("a batch");
        body.operations
            .into_iter()
            .map(|operation| parse_operation(operation).map_err(|error| error.message))
            .collect()
    }

    #[test]
    fn each_body_is_parsed_as_its_kind_and_refused_in_place() {
        let parsed = operations(
            r#"{"detail":"summary","operations":[
                {"user_id":"u\u0031","course_id":"c1","kind":"payment","idempotency_key":"k\"1","body":{"amount":5}},
                {"user_id":"u1","course_id":"c1","kind":"payment","idempotency_key":"k2","body":{"amount":1.5}},
                {"user_id":"u1","course_id":"c1","kind":"complete","idempotency_key":"k3","body":null},
                {"user_id":"u1","course_id":"c1","kind":"pay_remaining","idempotency_key":"k4"},
                {"user_id":"u1","course_id":"c1","kind":"payment","idempotency_key":"k5","body":{"amount":1,"amount":2}},
                {"user_id":"u1","course_id":"c1","kind":"credit","idempotency_key":"k6","body":{"amount":1,"tip":1}},
                {"user_id":"u1","course_id":"c1","kind":"payment","body":{"amount":1}}
            ]}"#,
        );
        let request = parsed[0].as_ref().expect("a payment");
        assert_eq!(request.key.user_id.as_str(), "u1", "escapes are read");
        assert_eq!(
            request.idempotency_key.as_ref().map(IdempotencyKey::as_str),
            Some("k\"1")
        );
        assert!(
            matches!(request.command, Command::Payment { amount, .. } if amount.minor_units() == 5)
        );
        assert_eq!(
            parsed[1].as_ref().err().map(String::as_str),
            Some("body.amount must be an integer number of minor units, not 1.5")
        );
        assert!(matches!(
            parsed[2].as_ref().map(|request| &request.command),
            Ok(Command::Complete)
        ));
        assert!(matches!(
            parsed[3].as_ref().map(|request| &request.command),
            Ok(Command::PayRemaining { .. })
        ));
        assert_eq!(
            parsed[4].as_ref().err().map(String::as_str),
            Some("the field amount appears twice")
        );
        assert_eq!(
            parsed[5].as_ref().err().map(String::as_str),
            Some("unknown field \"tip\" in body; the fields are amount, reason")
        );
        assert_eq!(
            parsed[6].as_ref().err().map(String::as_str),
            Some("idempotency_key is required for every operation but enroll")
        );
    }

    #[test]
    fn a_malformed_batch_names_the_operation() {
        let error = crate::json_errors::from_slice::<BatchBody<'_>>(
            br#"{"operations":[{"user_id":"u1","course_id":"c1","kind":"pay","idempotency_key":"k"}]}"#,
        )
        .err()
        .expect("refused");
        assert!(
            error.starts_with("operations[0].kind must be one of enroll, payment"),
            "{error}"
        );
    }
}
