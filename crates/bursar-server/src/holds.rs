//! The hold endpoints (two-phase payments): open a hold on part of the due
//! before a card is charged, capture it into a payment or void it after, and
//! list the open holds. Their bodies double as the `/v1/batch` kinds `hold`,
//! `capture` and `void`.

use crate::AppState;
use crate::api::{AcceptedBody, ErrorBody, IntoCommand, apply_one, json_response, operation};
use crate::error::ApiError;
use crate::extract::{EnrollmentPath, IdempotencyKeyHeader, JsonBody};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use bursar_core::{
    Amount, Command, CourseId, EnrollmentKey, HoldAmount, HoldExpiry, Reference, Rejection,
    Timestamp, UserId,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST …/holds`: exactly one of `amount` and `"remaining": true`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    /// Minor units to reserve; at most `amount_available`. Not null: absent
    /// or an amount.
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub amount: Option<Amount>,
    /// `true` reserves all of `amount_available`. Not null: absent or `true`.
    #[serde(default, deserialize_with = "crate::extract::present")]
    pub remaining: Option<bool>,
    /// Seconds until the hold expires: 30 ..= 86,400, default 900.
    #[schema(value_type = Option<u32>, minimum = 30, maximum = 86400)]
    pub expires_in: Option<HoldExpiry>,
    /// The processor's id of the checkout, e.g. a PaymentIntent.
    pub reference: Option<Reference>,
}

impl IntoCommand for HoldBody {
    fn into_command(self) -> Result<Command, ApiError> {
        let amount = match (self.amount, self.remaining) {
            (Some(amount), None) => HoldAmount::Amount(amount),
            (None, Some(true)) => HoldAmount::Remaining,
            (None, Some(false)) => {
                return Err(ApiError::invalid(
                    "remaining must be true when given; send an amount otherwise",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    "a hold takes exactly one of amount and \"remaining\": true",
                ));
            }
        };
        Ok(Command::Hold {
            amount,
            expires_in: self.expires_in.unwrap_or_default(),
            reference: self.reference,
        })
    }
}

/// `POST …/holds/{hold_seq}/capture`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    /// Minor units to turn into a payment; default the whole hold, at most
    /// the hold. The rest of the hold is released.
    pub amount: Option<Amount>,
    /// The processor's charge id; default the hold's reference.
    pub reference: Option<Reference>,
}

/// A `capture` operation of `/v1/batch`: the route's body and the hold.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCaptureBody {
    pub hold_seq: u64,
    pub amount: Option<Amount>,
    pub reference: Option<Reference>,
}

impl IntoCommand for BatchCaptureBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::Capture {
            hold_seq: self.hold_seq,
            amount: self.amount,
            reference: self.reference,
        })
    }
}

/// A `void` operation of `/v1/batch`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchVoidBody {
    pub hold_seq: u64,
}

impl IntoCommand for BatchVoidBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::Void {
            hold_seq: self.hold_seq,
        })
    }
}

/// `POST …/holds/{hold_seq}/void` takes `{}` or no body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {}

/// One open hold.
#[derive(Serialize, ToSchema)]
pub struct HoldView {
    /// The `seq` of the hold's `HOLD` entry, which names it.
    pub hold_seq: u64,
    pub amount: i64,
    pub expires_at: Timestamp,
    pub reference: Option<Reference>,
}

#[derive(Serialize, ToSchema)]
pub struct HoldsBody {
    pub holds: Vec<HoldView>,
}

/// `/v1/users/{user_id}/courses/{course_id}/holds/{hold_seq}/…`, validated.
pub struct HoldPath(pub EnrollmentKey, pub u64);

impl<S: Send + Sync> FromRequestParts<S> for HoldPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((user_id, course_id, hold_seq)) =
            Path::<(String, String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    ApiError::invalid(format!("bad path: {}", rejection.body_text()))
                })?;
        let key = EnrollmentKey {
            user_id: UserId::parse(&user_id)
                .map_err(|error| ApiError::invalid(error.to_string()))?,
            course_id: CourseId::parse(&course_id)
                .map_err(|error| ApiError::invalid(error.to_string()))?,
        };
        let hold_seq = hold_seq
            .parse::<u64>()
            .ok()
            .filter(|seq| {
                hold_seq.bytes().all(|b| b.is_ascii_digit()) && (1..=i64::MAX as u64).contains(seq)
            })
            .ok_or_else(|| {
                ApiError::invalid("hold_seq must be a positive integer: the seq of a HOLD entry")
            })?;
        Ok(HoldPath(key, hold_seq))
    }
}

/// Open a hold on part of the due, before charging the card.
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/holds", request_body = HoldBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody, description = "the HOLD entry and the enrollment"),
        (status = 400, body = ErrorBody, description = "INVALID_REQUEST"),
        (status = 404, body = ErrorBody, description = "ENROLLMENT_NOT_FOUND"),
        (status = 409, body = ErrorBody, description = "NOTHING_DUE, ENROLLMENT_CANCELLED, IDEMPOTENCY_KEY_REUSED"),
        (status = 422, body = ErrorBody, description = "OVERPAYMENT (more than amount_available)"),
        (status = 503, body = ErrorBody, description = "OVERLOADED or UNAVAILABLE; retry with the same key")),
    security(("bearer" = [])))]
pub async fn hold(
    State(state): State<AppState>,
    path: EnrollmentPath,
    key: IdempotencyKeyHeader,
    JsonBody(body): JsonBody<HoldBody>,
) -> Result<Response, ApiError> {
    apply_one(&state, operation(path, key, body.into_command()?)).await
}

/// Turn an open hold into a payment (all of it by default); the rest is released.
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/holds/{hold_seq}/capture",
    request_body = CaptureBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("hold_seq" = u64, Path),
        ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody, description = "the CAPTURE entry and the enrollment"),
        (status = 400, body = ErrorBody, description = "INVALID_REQUEST"),
        (status = 404, body = ErrorBody, description = "ENROLLMENT_NOT_FOUND, HOLD_NOT_FOUND"),
        (status = 409, body = ErrorBody, description = "HOLD_NOT_OPEN (details: hold_seq, state), ENROLLMENT_CANCELLED, IDEMPOTENCY_KEY_REUSED"),
        (status = 422, body = ErrorBody, description = "CAPTURE_EXCEEDS_HOLD"),
        (status = 503, body = ErrorBody, description = "OVERLOADED or UNAVAILABLE; retry with the same key")),
    security(("bearer" = [])))]
pub async fn capture(
    State(state): State<AppState>,
    HoldPath(key, hold_seq): HoldPath,
    idempotency_key: IdempotencyKeyHeader,
    JsonBody(body): JsonBody<CaptureBody>,
) -> Result<Response, ApiError> {
    let command = Command::Capture {
        hold_seq,
        amount: body.amount,
        reference: body.reference,
    };
    apply_one(
        &state,
        operation(EnrollmentPath(key), idempotency_key, command),
    )
    .await
}

/// Release an open hold.
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/holds/{hold_seq}/void",
    request_body = VoidBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("hold_seq" = u64, Path),
        ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody, description = "the VOID entry and the enrollment"),
        (status = 400, body = ErrorBody, description = "INVALID_REQUEST"),
        (status = 404, body = ErrorBody, description = "ENROLLMENT_NOT_FOUND, HOLD_NOT_FOUND"),
        (status = 409, body = ErrorBody, description = "HOLD_NOT_OPEN (details: hold_seq, state), ENROLLMENT_CANCELLED, IDEMPOTENCY_KEY_REUSED"),
        (status = 503, body = ErrorBody, description = "OVERLOADED or UNAVAILABLE; retry with the same key")),
    security(("bearer" = [])))]
pub async fn void(
    State(state): State<AppState>,
    HoldPath(key, hold_seq): HoldPath,
    idempotency_key: IdempotencyKeyHeader,
    JsonBody(VoidBody {}): JsonBody<VoidBody>,
) -> Result<Response, ApiError> {
    apply_one(
        &state,
        operation(
            EnrollmentPath(key),
            idempotency_key,
            Command::Void { hold_seq },
        ),
    )
    .await
}

/// The enrollment's open holds, by hold_seq.
#[utoipa::path(get, path = "/v1/users/{user_id}/courses/{course_id}/holds",
    params(("user_id" = String, Path), ("course_id" = String, Path)),
    responses((status = 200, body = HoldsBody),
        (status = 400, body = ErrorBody, description = "INVALID_REQUEST"),
        (status = 404, body = ErrorBody, description = "ENROLLMENT_NOT_FOUND"),
        (status = 503, body = ErrorBody, description = "UNAVAILABLE")),
    security(("bearer" = [])))]
pub async fn list_holds(
    State(state): State<AppState>,
    EnrollmentPath(key): EnrollmentPath,
) -> Result<Response, ApiError> {
    let holds = state.store.open_holds(&key).await?;
    if holds.is_empty() && state.store.enrollment(&key).await?.is_none() {
        return Err(ApiError::from_rejection(&Rejection::EnrollmentNotFound(
            key,
        )));
    }
    let holds = holds
        .into_iter()
        .map(|hold| HoldView {
            hold_seq: hold.seq,
            amount: hold.amount,
            expires_at: hold.expires_at,
            reference: hold.reference,
        })
        .collect();
    Ok(json_response(StatusCode::OK, &HoldsBody { holds }))
}
