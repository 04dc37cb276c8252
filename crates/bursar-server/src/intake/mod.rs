//! The payment intake (the contract's §7): `POST /v1/intake/stripe` takes
//! Stripe's webhooks, authenticated by their signature rather than a token,
//! and turns each event into the operations it means; an event the domain
//! refuses is acknowledged all the same and kept as an intake exception,
//! which the server retries by itself for a day (`retrier`) and an admin
//! lists, retries or dismisses (`/v1/intake/exceptions…`).
//!
//! Stripe must never see a 500 for anything it could send: a malformed
//! event is a 400, a refused one a 200 with its exception, and a fault of
//! the storage (or a bug) a 503, which Stripe retries.

pub mod retrier;
pub mod stripe;

use crate::AppState;
use crate::api::{ErrorBody, json_response};
use crate::bodies::read_body;
use crate::error::ApiError;
use crate::extract::{JsonBody, query_number, query_pairs};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bursar_core::{
    Enrollment, ExceptionState, IntakeException, LedgerEntry, Outcome, Reason,
    Request as Operation, Source, Timestamp,
};
use bursar_store::{
    ExceptionQuery, IntakeAction, IntakeMode, IntakeOperation, IntakeOutcome, IntakeWrite,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stripe::{Mapping, SignatureError, SignatureHeader, StripeSecrets, Target};
use utoipa::{OpenApi, ToSchema};

/// Exceptions one listing returns when `limit` is not given.
pub const EXCEPTIONS_LIMIT_DEFAULT: u32 = 100;

/// The intake's configuration: the Stripe endpoint's signing secrets.
#[derive(Debug, Clone, Default)]
pub struct IntakeOptions {
    /// `whsec_…`, several while one is rotated out; empty: the intake
    /// answers 503 `INTAKE_NOT_CONFIGURED`.
    pub stripe_webhook_secrets: Vec<String>,
}

/// The intake's configuration as the handlers use it.
#[derive(Debug, Clone, Default)]
pub struct IntakeConfig {
    pub stripe: Option<StripeSecrets>,
}

impl IntakeConfig {
    pub fn new(options: &IntakeOptions) -> IntakeConfig {
        IntakeConfig {
            stripe: StripeSecrets::new(&options.stripe_webhook_secrets),
        }
    }
}

/// The codes an exception may carry besides the API's own refusals.
pub const EXCEPTION_CODES: &[(&str, &str)] = &[
    (
        "PAYMENT_NOT_FOUND",
        "a refund or dispute whose payment bursar has not accepted (yet), naming no enrollment in its metadata",
    ),
    (
        "EVENT_UNREADABLE",
        "a field the mapping needs is missing or malformed (metadata ids, bursar_hold_seq, an amount out of range, a currency)",
    ),
    (
        "CURRENCY_MISMATCH",
        "a refund or capture in another currency than the enrollment's",
    ),
];

/// What processing an event came to. Made once per event and matched at
/// once, so its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Processed {
    /// Nothing to do: why.
    Ignored(String),
    Outcome(IntakeOutcome),
}

/// A write that keeps the event as an exception with this refusal.
fn refusal(
    source: Source,
    raw: String,
    received_at: Timestamp,
    mode: IntakeMode,
    enrollment: Option<bursar_core::EnrollmentKey>,
    code: &str,
    message: String,
) -> IntakeWrite {
    IntakeWrite {
        source,
        event: raw,
        received_at,
        mode,
        enrollment,
        links: Vec::new(),
        action: IntakeAction::Refuse {
            code: code.to_owned(),
            message,
        },
    }
}

/// Maps a verified event, finds its enrollment, and hands it to the writer.
/// `raw` is the event as received; `now` the server time of this attempt.
pub(crate) async fn process(
    state: &AppState,
    event: stripe::Event,
    raw: String,
    mode: IntakeMode,
    now: Timestamp,
) -> Result<Processed, ApiError> {
    let source = event.source.clone();
    let write = match stripe::map(&event) {
        Mapping::Ignored(why) => return Ok(Processed::Ignored(why)),
        Mapping::Unreadable {
            message,
            enrollment,
        } => refusal(
            source,
            raw,
            now,
            mode,
            enrollment,
            "EVENT_UNREADABLE",
            message,
        ),
        Mapping::Intent(intent) => {
            let key = match intent.target {
                Target::Named(key) => Some(key),
                Target::Linked { objects, required } => {
                    match state.store.intake_link(stripe::PROCESSOR, &objects).await? {
                        Some(key) => Some(key),
                        None if required => None,
                        None => {
                            return Ok(Processed::Ignored(
                                "the object names no bursar enrollment, and no payment bursar \
                                 accepted made it"
                                    .into(),
                            ));
                        }
                    }
                }
            };
            let mismatch = match &key {
                Some(key) if intent.operations.iter().any(|op| op.check_currency) => state
                    .store
                    .enrollment(key)
                    .await?
                    .map(|enrollment: Enrollment| enrollment.currency)
                    .filter(|currency| *currency != intent.currency),
                _ => None,
            };
            match (key, mismatch) {
                (None, _) => refusal(
                    source,
                    raw,
                    now,
                    mode,
                    None,
                    "PAYMENT_NOT_FOUND",
                    format!(
                        "{} names no enrollment in its metadata, and bursar has accepted no \
                         payment of its PaymentIntent or Charge (yet)",
                        event.source.event_type
                    ),
                ),
                (Some(key), Some(expected)) => refusal(
                    source,
                    raw,
                    now,
                    mode,
                    Some(key),
                    "CURRENCY_MISMATCH",
                    format!(
                        "the enrollment is in {expected}, the event in {}",
                        intent.currency
                    ),
                ),
                (Some(key), None) => IntakeWrite {
                    source,
                    event: raw,
                    received_at: now,
                    mode,
                    enrollment: Some(key.clone()),
                    links: intent.links,
                    action: IntakeAction::Apply(
                        intent
                            .operations
                            .into_iter()
                            .map(|operation| IntakeOperation {
                                request: Operation {
                                    key: key.clone(),
                                    idempotency_key: Some(operation.key),
                                    command: operation.command,
                                },
                                hold_gone: operation.hold_gone,
                            })
                            .collect(),
                    ),
                },
            }
        }
    };
    let outcome = state.writer.submit_intake(write).await?;
    if let IntakeOutcome::Exception(exception) = &outcome {
        tracing::warn!(
            event_id = %exception.event_id,
            event_type = %exception.event_type,
            code = %exception.code,
            exception = %exception.id,
            attempts = exception.attempts,
            "a processor's event is kept as an intake exception"
        );
    }
    Ok(Processed::Outcome(outcome))
}

/// The answer to one accepted (or replayed) operation, as its own route
/// gives it.
fn answer(outcome: &Outcome) -> Value {
    let accepted = |entry: &LedgerEntry| json!({"entry": entry, "enrollment": entry.enrollment});
    match outcome {
        Outcome::Accepted(entry) | Outcome::Replayed(entry) => accepted(entry),
        Outcome::Unchanged(enrollment) => json!({ "enrollment": enrollment }),
        Outcome::Rejected(rejection) => ApiError::from_rejection(rejection).body(),
    }
}

/// One answer, or a list of them when the event made several operations (a
/// `charge.refunded` listing several refunds).
fn result(outcomes: &[Outcome]) -> Value {
    match outcomes {
        [one] => answer(one),
        many => Value::Array(many.iter().map(answer).collect()),
    }
}

/// The answer of `POST /v1/intake/stripe`.
#[derive(Serialize, ToSchema)]
pub struct ReceivedBody {
    /// Always `true`: Stripe may forget the event.
    pub received: bool,
    /// The operation's answer (`{"entry","enrollment"}`, or
    /// `{"enrollment"}` for a void with nothing left to release), or a list
    /// of them for an event that made several; when it was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The id of the exception the event is kept as, when it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<String>,
    /// `true` when the event maps to nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<bool>,
}

/// Take one Stripe webhook event (authenticated by `Stripe-Signature`, not a token).
#[utoipa::path(post, path = "/v1/intake/stripe",
    request_body(content = Object, description = "a Stripe event, signed; every field Stripe sends is accepted"),
    params(("Stripe-Signature" = String, Header, description = "t=<unix time>,v1=<hex HMAC-SHA256>[,v1=…]")),
    responses(
        (status = 200, body = ReceivedBody, description = "applied, replayed, kept as an exception, or ignored"),
        (status = 400, body = ErrorBody, description = "SIGNATURE_INVALID: no configured secret signs the body, or the signature is more than 300 s old; INVALID_REQUEST: not a Stripe event. Nothing is stored"),
        (status = 503, body = ErrorBody, description = "INTAKE_NOT_CONFIGURED, or a storage fault: Stripe retries")))]
pub async fn stripe_webhook(State(state): State<AppState>, request: Request) -> Response {
    match receive(&state, request).await {
        Ok(response) => response,
        Err(error)
            if error.status.is_server_error()
                && error.status != StatusCode::SERVICE_UNAVAILABLE =>
        {
            // A bug is logged where it happened; Stripe is told to retry, so
            // the event is not lost meanwhile.
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the event could not be processed now; it has been logged: retry later",
            )
            .into_response()
        }
        Err(error) => error.into_response(),
    }
}

fn signature_invalid(error: SignatureError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "SIGNATURE_INVALID",
        error.to_string(),
    )
}

async fn receive(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let Some(secrets) = state.intake.stripe.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "INTAKE_NOT_CONFIGURED",
            "no Stripe webhook secret is configured (BURSAR_STRIPE_WEBHOOK_SECRETS): nothing was stored; Stripe retries",
        )
        .closing());
    };
    let mut values = request.headers().get_all("stripe-signature").iter();
    let header = match (values.next(), values.next()) {
        (None, _) => Err(SignatureError::Missing),
        (Some(_), Some(_)) => Err(SignatureError::Repeated),
        (Some(value), None) => value
            .to_str()
            .map_err(|_| SignatureError::Malformed)
            .and_then(SignatureHeader::parse),
    };
    let now = crate::writer::now();
    // Checked before the body is read: a stale or malformed header is
    // refused without spending the body budget on it.
    let header = header
        .and_then(|header| {
            header
                .check_age(now.unix_micros().div_euclid(1_000_000))
                .map(|()| header)
        })
        .map_err(|error| signature_invalid(error).closing())?;
    let body = read_body(request, stripe::STRIPE_EVENT_BYTES_MAX).await?;
    secrets
        .verify(&header, &body.bytes)
        .map_err(signature_invalid)?;
    // The event parsed as JSON, so it is UTF-8.
    let raw = String::from_utf8(body.bytes.to_vec())
        .map_err(|_| ApiError::invalid("the body is not UTF-8"))?;
    let event = stripe::parse_event(body.bytes).map_err(ApiError::invalid)?;
    let answer = match process(state, event, raw, IntakeMode::Deliver, now).await? {
        Processed::Ignored(why) => {
            tracing::debug!(%why, "a Stripe event is ignored");
            ReceivedBody {
                received: true,
                result: None,
                exception: None,
                ignored: Some(true),
            }
        }
        Processed::Outcome(IntakeOutcome::Applied(outcomes)) => ReceivedBody {
            received: true,
            result: Some(result(&outcomes)),
            exception: None,
            ignored: None,
        },
        Processed::Outcome(
            IntakeOutcome::Exception(exception) | IntakeOutcome::Closed(exception),
        ) => ReceivedBody {
            received: true,
            result: None,
            exception: Some(exception.id),
            ignored: None,
        },
        Processed::Outcome(IntakeOutcome::NotFound) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "a delivery was answered as a retry",
            ));
        }
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// `?state=&after=&limit=` of `GET /v1/intake/exceptions`.
pub struct ExceptionParams(pub ExceptionQuery);

impl<S: Send + Sync> FromRequestParts<S> for ExceptionParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("bad query string"))?;
        let max = bursar_store::EXCEPTIONS_PAGE_MAX;
        let mut query = ExceptionQuery {
            state: None,
            after: 0,
            limit: EXCEPTIONS_LIMIT_DEFAULT,
        };
        for (name, value) in query_pairs(&raw, &["state", "after", "limit"])? {
            match name {
                "state" => {
                    query.state = Some(ExceptionState::parse(value).ok_or_else(|| {
                        ApiError::invalid("state must be OPEN, RESOLVED or DISMISSED")
                    })?)
                }
                "after" => {
                    query.after = query_number(value, 0..=i64::MAX as u64, || {
                        format!("after must be an integer position from 0 to {}", i64::MAX)
                    })?
                }
                "limit" => {
                    query.limit = query_number(value, 1..=max, || {
                        format!("limit must be an integer from 1 to {max}")
                    })?
                }
                // query_pairs refused every other name.
                _ => {}
            }
        }
        Ok(ExceptionParams(query))
    }
}

/// The answer of `GET /v1/intake/exceptions`.
#[derive(Serialize, ToSchema)]
pub struct ExceptionsBody {
    /// Oldest first (by position); page on with `after` = the last one's
    /// `position`.
    pub exceptions: Vec<IntakeException>,
}

/// One exception, and for an accepted retry the operation's answer.
#[derive(Serialize, ToSchema)]
pub struct ExceptionBody {
    pub exception: IntakeException,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// `POST …/dismiss`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DismissBody {
    /// Why the ledger does not take it (for the people who read it later).
    pub reason: Reason,
}

fn exception_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "EXCEPTION_NOT_FOUND",
        "no intake exception has this id",
    )
}

fn not_open(exception: &IntakeException) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "INVALID_TRANSITION",
        format!(
            "the exception is {}: only an OPEN exception is retried or dismissed",
            exception.state.as_str()
        ),
    )
    .with_details(json!({"id": exception.id, "state": exception.state.as_str()}))
}

/// An exception's id: `exc_` and 24 hex digits; anything else names none.
fn exception_id(id: &str) -> Result<&str, ApiError> {
    let well_formed = id.len() == 28
        && id.starts_with("exc_")
        && id[4..]
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then_some(id).ok_or_else(exception_not_found)
}

/// The intake exceptions, oldest first, of one state or all (admin).
#[utoipa::path(get, path = "/v1/intake/exceptions",
    params(
        ("state" = Option<ExceptionState>, Query, description = "only exceptions in this state"),
        ("after" = Option<i64>, Query, minimum = 0, description = "only exceptions with a greater position (default 0)"),
        ("limit" = Option<i32>, Query, minimum = 1, maximum = 1000, description = "1 to 1000 (default 100)")),
    responses((status = 200, body = ExceptionsBody), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_exceptions(
    State(state): State<AppState>,
    ExceptionParams(query): ExceptionParams,
) -> Result<Response, ApiError> {
    let exceptions = state.store.exceptions(query).await?;
    Ok(json_response(
        StatusCode::OK,
        &ExceptionsBody { exceptions },
    ))
}

/// One intake exception (admin).
#[utoipa::path(get, path = "/v1/intake/exceptions/{id}",
    params(("id" = String, Path, description = "the exception's id, `exc_…`")),
    responses((status = 200, body = ExceptionBody), (status = 404, body = ErrorBody, description = "EXCEPTION_NOT_FOUND")),
    security(("bearer" = [])))]
pub async fn get_exception(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let exception = state
        .store
        .exception(exception_id(&id)?)
        .await?
        .ok_or_else(exception_not_found)?;
    Ok(json_response(
        StatusCode::OK,
        &ExceptionBody {
            exception,
            result: None,
        },
    ))
}

/// What a retry came to.
pub(crate) enum Retried {
    /// Applied: the operations' answer.
    Resolved(Value),
    /// Refused again (or ignored now): the exception as it stands.
    Open(IntakeException),
    /// No longer open.
    Closed(IntakeException),
    NotFound,
}

/// Tries an exception's event again, as a retry: only an open exception is
/// retried, and a refusal counts one more attempt.
pub(crate) async fn retry(
    state: &AppState,
    exception: &IntakeException,
) -> Result<Retried, ApiError> {
    let now = crate::writer::now();
    let raw = exception.event.to_string();
    let processed = match stripe::parse_event(raw.clone().into()) {
        Ok(event) => process(state, event, raw, IntakeMode::Retry, now).await?,
        Err(message) => {
            // Kept events were read before, so this is a stored event that
            // changed; it stays open for a person.
            let source = Source::new(
                &exception.processor,
                &exception.event_id,
                &exception.event_type,
            )
            .map_err(|error| ApiError::invalid(error.to_string()))?;
            let write = refusal(
                source,
                raw,
                now,
                IntakeMode::Retry,
                None,
                "EVENT_UNREADABLE",
                message,
            );
            Processed::Outcome(state.writer.submit_intake(write).await?)
        }
    };
    Ok(match processed {
        Processed::Ignored(_) => Retried::Open(exception.clone()),
        Processed::Outcome(IntakeOutcome::Applied(outcomes)) => {
            Retried::Resolved(result(&outcomes))
        }
        Processed::Outcome(IntakeOutcome::Exception(exception)) => Retried::Open(exception),
        Processed::Outcome(IntakeOutcome::Closed(exception)) => Retried::Closed(exception),
        Processed::Outcome(IntakeOutcome::NotFound) => Retried::NotFound,
    })
}

/// Try an open exception's event again now (admin).
///
/// Resolved if the ledger takes it, else it stays OPEN with the new refusal.
#[utoipa::path(post, path = "/v1/intake/exceptions/{id}/retry",
    params(("id" = String, Path, description = "the exception's id, `exc_…`")),
    responses((status = 200, body = ExceptionBody, description = "the exception after the attempt (RESOLVED, or OPEN with the new refusal)"),
        (status = 404, body = ErrorBody, description = "EXCEPTION_NOT_FOUND"),
        (status = 409, body = ErrorBody, description = "INVALID_TRANSITION: the exception is not OPEN")),
    security(("bearer" = [])))]
pub async fn retry_exception(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = exception_id(&id)?;
    let exception = state
        .store
        .exception(id)
        .await?
        .ok_or_else(exception_not_found)?;
    if exception.state != ExceptionState::Open {
        return Err(not_open(&exception));
    }
    let (exception, result) = match retry(&state, &exception).await? {
        Retried::Resolved(result) => (
            state
                .store
                .exception(id)
                .await?
                .ok_or_else(exception_not_found)?,
            Some(result),
        ),
        Retried::Open(exception) => (exception, None),
        Retried::Closed(exception) => return Err(not_open(&exception)),
        Retried::NotFound => return Err(exception_not_found()),
    };
    Ok(json_response(
        StatusCode::OK,
        &ExceptionBody { exception, result },
    ))
}

/// Close an open exception without the ledger taking it, with a reason (admin).
#[utoipa::path(post, path = "/v1/intake/exceptions/{id}/dismiss", request_body = DismissBody,
    params(("id" = String, Path, description = "the exception's id, `exc_…`")),
    responses((status = 200, body = ExceptionBody, description = "the exception, DISMISSED"),
        (status = 404, body = ErrorBody, description = "EXCEPTION_NOT_FOUND"),
        (status = 409, body = ErrorBody, description = "INVALID_TRANSITION: the exception is not OPEN")),
    security(("bearer" = [])))]
pub async fn dismiss_exception(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DismissBody>,
) -> Result<Response, ApiError> {
    let id = exception_id(&id)?;
    match state
        .store
        .dismiss_exception(id, body.reason.as_str(), crate::writer::now())
        .await?
    {
        bursar_store::Dismissal::Dismissed(exception) => Ok(json_response(
            StatusCode::OK,
            &ExceptionBody {
                exception,
                result: None,
            },
        )),
        bursar_store::Dismissal::NotOpen(exception) => Err(not_open(&exception)),
        bursar_store::Dismissal::NotFound => Err(exception_not_found()),
    }
}

/// The intake's part of `/openapi.json`.
#[derive(OpenApi)]
#[openapi(paths(
    stripe_webhook,
    list_exceptions,
    get_exception,
    retry_exception,
    dismiss_exception
))]
pub struct IntakeDoc;
