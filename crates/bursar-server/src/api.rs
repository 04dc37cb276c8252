//! The HTTP API of the contract: request bodies, handlers, and the OpenAPI
//! document generated from them.

use crate::AppState;
use crate::auth::Role;
use crate::error::ApiError;
use crate::extract::{AsOf, EnrollmentPath, IdempotencyKeyHeader, JsonBody, LedgerPage, UserPath};
use crate::writer::WriteError;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bursar_core::{
    AccessPolicy, Amount, Command, Currency, EnrollTerms, Enrollment, LedgerEntry, Outcome, Price,
    Reason, Reference, Request,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What `as_of` means, for the OpenAPI document.
const AS_OF_DESCRIPTION: &str = "answer as the enrollment stood at this time: the snapshot \
    of its newest ledger entry created at or before it. Any RFC 3339 date-time (Z or an \
    offset; send + as %2B); a time after the server's clock is 400 INVALID_REQUEST";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollBody {
    pub currency: Currency,
    pub price: Price,
    /// Defaults to `{"kind":"FULL_PAYMENT"}`.
    #[serde(default)]
    pub access_policy: AccessPolicy,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    pub amount: Amount,
    /// If given, must be the enrollment's currency.
    pub currency: Option<Currency>,
    pub reference: Option<Reference>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayRemainingBody {
    pub reference: Option<Reference>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditBody {
    pub amount: Amount,
    pub reason: Reason,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub amount: Amount,
    pub reason: Reason,
    pub reference: Option<Reference>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeBody {
    pub amount: Amount,
    pub reason: Reason,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyBody {}

/// The command a request body asks for; shared by the single-operation
/// routes and `/v1/batch`. A body whose fields contradict each other (a hold
/// with both `amount` and `remaining`) is a 400 here.
pub trait IntoCommand {
    fn into_command(self) -> Result<Command, ApiError>;
}

impl IntoCommand for EnrollBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::Enroll(EnrollTerms {
            currency: self.currency,
            price: self.price,
            access_policy: self.access_policy,
        }))
    }
}

impl IntoCommand for PaymentBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::Payment {
            amount: self.amount,
            currency: self.currency,
            reference: self.reference,
        })
    }
}

impl IntoCommand for PayRemainingBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::PayRemaining {
            reference: self.reference,
        })
    }
}

impl IntoCommand for CreditBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::Credit {
            amount: self.amount,
            reason: self.reason,
        })
    }
}

impl IntoCommand for RefundBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::Refund {
            amount: self.amount,
            reason: self.reason,
            reference: self.reference,
        })
    }
}

impl IntoCommand for ChargeBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::Charge {
            amount: self.amount,
            reason: self.reason,
        })
    }
}

/// The answer to an accepted operation (and to its replays).
#[derive(Serialize, ToSchema)]
pub struct AcceptedBody<'a> {
    pub entry: &'a LedgerEntry,
    pub enrollment: &'a Enrollment,
}

#[derive(Serialize, ToSchema)]
pub struct EnrollmentBody<'a> {
    pub enrollment: &'a Enrollment,
}

#[derive(Serialize, ToSchema)]
pub struct EnrollmentsBody {
    pub enrollments: Vec<Enrollment>,
}

#[derive(Serialize, ToSchema)]
pub struct LedgerBody {
    pub entries: Vec<LedgerEntry>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code such as `OVERPAYMENT`.
    pub code: String,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("a response body serializes");
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The response for one outcome. A replay renders the stored entry exactly
/// as the original answer did, so the bodies are byte for byte the same.
pub fn outcome_response(outcome: &Outcome) -> Response {
    match outcome {
        Outcome::Accepted(entry) => json_response(
            StatusCode::CREATED,
            &AcceptedBody {
                entry,
                enrollment: &entry.enrollment,
            },
        ),
        Outcome::Replayed(entry) => {
            let mut response = json_response(
                StatusCode::CREATED,
                &AcceptedBody {
                    entry,
                    enrollment: &entry.enrollment,
                },
            );
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Outcome::Unchanged(enrollment) => {
            json_response(StatusCode::OK, &EnrollmentBody { enrollment })
        }
        Outcome::Rejected(rejection) => ApiError::from_rejection(rejection).into_response(),
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        match error {
            WriteError::Overloaded => ApiError::overloaded(),
            WriteError::Stopped => ApiError::shutting_down(),
            WriteError::Store(error) => ApiError::from_store(&error),
        }
    }
}

/// Submits one request to the writer and renders its outcome. The span (at
/// debug level, so free when disabled) tags every log line of the write with
/// the enrollment and the idempotency key.
#[tracing::instrument(level = "debug", skip_all, fields(
    user_id = %request.key.user_id,
    course_id = %request.key.course_id,
    idempotency_key = request.idempotency_key.as_ref().map(|key| key.as_str()),
    command = request.command.name(),
))]
pub(crate) async fn apply_one(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let outcomes = state.writer.submit(vec![request]).await?;
    let outcome = outcomes.first().ok_or_else(|| {
        tracing::error!("the writer answered no outcome");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; it has been logged",
        )
    })?;
    if let Outcome::Rejected(rejection) = outcome {
        tracing::debug!(code = rejection.code(), "refused");
    }
    Ok(outcome_response(outcome))
}

pub(crate) fn operation(
    EnrollmentPath(key): EnrollmentPath,
    IdempotencyKeyHeader(idempotency_key): IdempotencyKeyHeader,
    command: Command,
) -> Request {
    Request {
        key,
        idempotency_key: Some(idempotency_key),
        command,
    }
}

/// Enroll a student in a course (idempotent by its terms).
#[utoipa::path(put, path = "/v1/users/{user_id}/courses/{course_id}", request_body = EnrollBody,
    params(("user_id" = String, Path), ("course_id" = String, Path)),
    responses((status = 201, body = AcceptedBody), (status = 200, body = EnrollmentBody), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn enroll(
    State(state): State<AppState>,
    EnrollmentPath(key): EnrollmentPath,
    JsonBody(body): JsonBody<EnrollBody>,
) -> Result<Response, ApiError> {
    let request = Request {
        key,
        idempotency_key: None,
        command: body.into_command()?,
    };
    apply_one(&state, request).await
}

/// The enrollment; with `as_of`, as it stood then.
#[utoipa::path(get, path = "/v1/users/{user_id}/courses/{course_id}",
    params(("user_id" = String, Path), ("course_id" = String, Path),
        ("as_of" = Option<String>, Query, format = DateTime, description = AS_OF_DESCRIPTION)),
    responses((status = 200, body = Enrollment), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_enrollment(
    State(state): State<AppState>,
    EnrollmentPath(key): EnrollmentPath,
    AsOf(as_of): AsOf,
) -> Result<Response, ApiError> {
    let enrollment = match as_of {
        Some(at) => state.store.enrollment_as_of(&key, at).await?,
        None => state.store.enrollment(&key).await?,
    };
    match enrollment {
        Some(enrollment) => Ok(json_response(StatusCode::OK, &enrollment)),
        None => Err(ApiError::from_rejection(
            &bursar_core::Rejection::EnrollmentNotFound(key),
        )),
    }
}

/// A user's enrollments, by course id; with `as_of`, as they stood then
/// (those not made yet are left out).
#[utoipa::path(get, path = "/v1/users/{user_id}/courses",
    params(("user_id" = String, Path),
        ("as_of" = Option<String>, Query, format = DateTime, description = AS_OF_DESCRIPTION)),
    responses((status = 200, body = EnrollmentsBody), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_enrollments(
    State(state): State<AppState>,
    UserPath(user_id): UserPath,
    AsOf(as_of): AsOf,
) -> Result<Response, ApiError> {
    let enrollments = match as_of {
        Some(at) => state.store.enrollments_of_as_of(&user_id, at).await?,
        None => state.store.enrollments_of(&user_id).await?,
    };
    Ok(json_response(
        StatusCode::OK,
        &EnrollmentsBody { enrollments },
    ))
}

/// Record a payment.
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/payments", request_body = PaymentBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn payment(
    State(state): State<AppState>,
    path: EnrollmentPath,
    key: IdempotencyKeyHeader,
    JsonBody(body): JsonBody<PaymentBody>,
) -> Result<Response, ApiError> {
    let request = operation(path, key, body.into_command()?);
    if state
        .http_ceiling
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(crate::ceiling::payment(request, crate::writer::now()));
    }
    apply_one(&state, request).await
}

/// Pay exactly what is due at commit time.
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/pay-remaining", request_body = PayRemainingBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn pay_remaining(
    State(state): State<AppState>,
    path: EnrollmentPath,
    key: IdempotencyKeyHeader,
    JsonBody(body): JsonBody<PayRemainingBody>,
) -> Result<Response, ApiError> {
    apply_one(&state, operation(path, key, body.into_command()?)).await
}

/// Record a credit adjustment (discount, scholarship).
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/credits", request_body = CreditBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn credit(
    State(state): State<AppState>,
    path: EnrollmentPath,
    key: IdempotencyKeyHeader,
    JsonBody(body): JsonBody<CreditBody>,
) -> Result<Response, ApiError> {
    apply_one(&state, operation(path, key, body.into_command()?)).await
}

/// Record a refund.
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/refunds", request_body = RefundBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn refund(
    State(state): State<AppState>,
    path: EnrollmentPath,
    key: IdempotencyKeyHeader,
    JsonBody(body): JsonBody<RefundBody>,
) -> Result<Response, ApiError> {
    apply_one(&state, operation(path, key, body.into_command()?)).await
}

/// Record an extra charge (a fee).
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/charges", request_body = ChargeBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn charge(
    State(state): State<AppState>,
    path: EnrollmentPath,
    key: IdempotencyKeyHeader,
    JsonBody(body): JsonBody<ChargeBody>,
) -> Result<Response, ApiError> {
    apply_one(&state, operation(path, key, body.into_command()?)).await
}

/// Mark the course finished (needs access GRANTED).
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/complete", request_body = EmptyBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn complete(
    State(state): State<AppState>,
    path: EnrollmentPath,
    key: IdempotencyKeyHeader,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Response, ApiError> {
    apply_one(&state, operation(path, key, Command::Complete)).await
}

/// Cancel the enrollment (needs amount_paid = 0).
#[utoipa::path(post, path = "/v1/users/{user_id}/courses/{course_id}/cancel", request_body = EmptyBody,
    params(("user_id" = String, Path), ("course_id" = String, Path), ("Idempotency-Key" = String, Header)),
    responses((status = 201, body = AcceptedBody), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    path: EnrollmentPath,
    key: IdempotencyKeyHeader,
    JsonBody(EmptyBody {}): JsonBody<EmptyBody>,
) -> Result<Response, ApiError> {
    apply_one(&state, operation(path, key, Command::Cancel)).await
}

/// The enrollment's ledger, oldest first: at most `limit` entries with `seq > after`.
#[utoipa::path(get, path = "/v1/users/{user_id}/courses/{course_id}/ledger",
    params(("user_id" = String, Path), ("course_id" = String, Path),
        ("after" = Option<u64>, Query, minimum = 0, description = "the seq after which to start, default 0"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1..=1000, default 100")),
    responses((status = 200, body = LedgerBody), (status = "4XX", body = ErrorBody)), security(("bearer" = [])))]
pub async fn ledger(
    State(state): State<AppState>,
    EnrollmentPath(key): EnrollmentPath,
    page: LedgerPage,
) -> Result<Response, ApiError> {
    let entries = state.store.ledger(&key, page.after, page.limit).await?;
    if entries.is_empty() && state.store.enrollment(&key).await?.is_none() {
        return Err(ApiError::from_rejection(
            &bursar_core::Rejection::EnrollmentNotFound(key),
        ));
    }
    Ok(json_response(StatusCode::OK, &LedgerBody { entries }))
}

/// Replay every ledger and report every disagreement (admin).
#[utoipa::path(get, path = "/v1/audit", responses((status = 200, description = "the audit report"), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn audit(State(state): State<AppState>) -> Result<Response, ApiError> {
    let report = state.store.audit().await?;
    Ok(json_response(StatusCode::OK, &report))
}

/// Liveness: the process answers. Needs no token.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Readiness: writes are not failing for a storage fault (else 503
/// `STORAGE_UNAVAILABLE` with the reason in `details.reason`), and the
/// database answers.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if let Some(reason) = state.writer.storage_failure() {
        return Err(ApiError::storage_unavailable(&reason));
    }
    state.store.ping().await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "backend": state.store.backend()}),
    ))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")),
    security(("bearer" = [])))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state
        .metrics
        .render(state.writer.queue_depth())
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The role a route needs: reads need `reader` (the audit of one
/// enrollment, `…/audit`, among them), writes `writer`, the whole audit,
/// the export, the digest, the tokens, the webhooks and the intake's
/// exceptions `admin`. (`POST /v1/intake/stripe` is outside the token
/// layer: its signature authenticates it.)
pub fn role_needed(method: &axum::http::Method, path: &str) -> Role {
    if path.starts_with("/v1/audit")
        || path.starts_with("/v1/export")
        || path.starts_with("/v1/tokens")
        || path.starts_with("/v1/intake")
        || path.starts_with("/v1/webhooks")
        || path.starts_with("/v1/digest")
    {
        Role::Admin
    } else if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        Role::Reader
    } else {
        Role::Writer
    }
}
