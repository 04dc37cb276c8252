//! The one error type of the HTTP layer and the one table that maps every
//! refusal of the core and every storage fault to a status and a code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bursar_core::Rejection;
use bursar_store::StoreError;
use serde_json::{Value, json};

/// Every error code the API answers, with its status and when it is given:
/// the table `docs/api.md` shows and the OpenAPI document lists. A test
/// checks that every refusal of the core is here with the status
/// `from_rejection` gives it.
#[rustfmt::skip]
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    ("INVALID_REQUEST", 400, "malformed JSON, wrong types, out-of-range values, unknown fields, a missing or bad `Idempotency-Key`, bad ids or query parameters"),
    ("WEBHOOK_URL_FORBIDDEN", 400, "a webhook URL whose host is, or resolves to, a loopback, private, link-local or other internal address, while the server does not allow them (`--webhooks-allow-private`)"),
    ("SIGNATURE_INVALID", 400, "`POST /v1/intake/stripe`: the `Stripe-Signature` header is missing or malformed, no `v1` signature matches the body under a configured secret, or its timestamp is more than 300 s from the server's clock; nothing is stored"),
    ("UNAUTHENTICATED", 401, "no bearer token, or one that is unknown"),
    ("FORBIDDEN", 403, "the token's role may not do this"),
    ("ENROLLMENT_NOT_FOUND", 404, "no enrollment for this user and course"),
    ("HOLD_NOT_FOUND", 404, "the `hold_seq` names no hold of this enrollment"),
    ("EXCEPTION_NOT_FOUND", 404, "no intake exception has this id"),
    ("NOT_FOUND", 404, "no such route"),
    ("WEBHOOK_NOT_FOUND", 404, "no webhook endpoint has this id"),
    ("METHOD_NOT_ALLOWED", 405, "the route exists, the method does not"),
    ("REQUEST_TIMEOUT", 408, "the body stopped arriving for longer than the body-read timeout; nothing was done and the connection is closed"),
    ("ENROLLMENT_EXISTS", 409, "enrolling again with other terms (currency, price, access policy)"),
    ("IDEMPOTENCY_KEY_REUSED", 409, "the key was used for a different operation or body on this enrollment"),
    ("NOTHING_DUE", 409, "`pay-remaining`, or a hold of the remaining balance, when nothing is available"),
    ("ENROLLMENT_CANCELLED", 409, "a money operation on a cancelled enrollment"),
    ("INVALID_TRANSITION", 409, "`complete` without access granted, `cancel` after money was paid or while a hold is open, or either when already done; retrying or dismissing an intake exception that is not `OPEN`"),
    ("WEBHOOK_LIMIT_REACHED", 409, "registering a webhook endpoint when 100 exist already"),
    ("HOLD_NOT_OPEN", 409, "capturing or voiding a hold that was captured, voided or has expired; `details` gives `hold_seq` and `state`"),
    ("PAYLOAD_TOO_LARGE", 413, "the body, or the number of operations of a batch, is over its limit"),
    ("OVERPAYMENT", 422, "a payment or hold above the amount available (the amount due less open holds)"),
    ("CREDIT_EXCEEDS_DUE", 422, "a credit above the amount available"),
    ("CAPTURE_EXCEEDS_HOLD", 422, "a capture above the hold's amount"),
    ("REFUND_EXCEEDS_PAID", 422, "a refund above the amount paid"),
    ("CURRENCY_MISMATCH", 422, "a payment in another currency than the enrollment's"),
    ("STATEMENT_TOO_LONG", 422, "`GET …/statement`: the period holds more than 1,000 entries of the enrollment; ask for a shorter one, page through `…/ledger`, or export the period"),
    ("TOTAL_LIMIT_EXCEEDED", 422, "price + charges, or the sum of refunds, would pass 10^15 minor units"),
    ("INTERNAL", 500, "a bug; it is logged. Never the answer to bad input"),
    ("INTAKE_NOT_CONFIGURED", 503, "`POST /v1/intake/stripe` while no Stripe webhook secret is configured (`BURSAR_STRIPE_WEBHOOK_SECRETS`): nothing is stored, and Stripe retries until one is"),
    ("OVERLOADED", 503, "the write queue is full; retry after `Retry-After` with the same key"),
    ("UNAVAILABLE", 503, "the database cannot be reached, or the server is shutting down; retry with the same key"),
    ("STORAGE_UNAVAILABLE", 503, "the disk is full, read-only or failing, or the database file was removed or replaced; nothing was acknowledged, `/readyz` is not ready, retry with the same key"),
    ("TIMEOUT", 503, "the request took longer than its limit; its outcome is unknown until retried with the same key"),
];

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Answered before the request body was read to its end: the rest of
    /// the body may still be on its way, so the connection cannot carry
    /// another request and the answer says `Connection: close`. Without it a
    /// client could send its next request on a connection the server is
    /// closing.
    pub close_connection: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            close_connection: false,
        }
    }

    /// Marks an answer given before the request body was read to its end.
    pub(crate) fn closing(mut self) -> ApiError {
        self.close_connection = true;
        self
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
    }

    pub fn overloaded() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            "the write queue is full; retry with the same Idempotency-Key",
        )
    }

    pub fn shutting_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the server is shutting down; retry with the same Idempotency-Key",
        )
    }

    /// Too many request bodies are being read at once (see
    /// `bodies::BODY_BYTES_IN_FLIGHT_MAX`): refused before reading this one.
    pub fn bodies_overloaded() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            "too many request bodies are being received at once; retry with the same Idempotency-Key",
        )
        .closing()
    }

    /// The request body stopped arriving: nothing was done.
    pub fn body_timeout() -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request body stopped arriving; nothing was done: send it again",
        )
        .closing()
    }

    /// Writes fail for a storage fault (a full disk, a read-only or missing
    /// database file, an I/O error): 503 with the reason, for `/readyz`.
    pub fn storage_unavailable(reason: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORAGE_UNAVAILABLE",
            "the storage cannot keep writes now (disk full, read-only, I/O error or database file gone)",
        )
        .with_details(json!({"reason": reason}))
    }

    pub fn payload_too_large(limit_bytes: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the request body exceeds the limit of {limit_bytes} bytes"),
        )
        .closing()
    }

    pub(crate) fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// The one table from the core's refusals to HTTP.
    pub fn from_rejection(rejection: &Rejection) -> ApiError {
        let status = match rejection {
            Rejection::EnrollmentNotFound(_) | Rejection::HoldNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            Rejection::EnrollmentExists { .. }
            | Rejection::IdempotencyKeyReused(_)
            | Rejection::NothingDue
            | Rejection::EnrollmentCancelled
            | Rejection::InvalidTransition { .. }
            | Rejection::HoldNotOpen { .. } => StatusCode::CONFLICT,
            Rejection::Overpayment { .. }
            | Rejection::CreditExceedsDue { .. }
            | Rejection::RefundExceedsPaid { .. }
            | Rejection::CurrencyMismatch { .. }
            | Rejection::CaptureExceedsHold { .. }
            | Rejection::TotalLimitExceeded { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let error = ApiError::new(status, rejection.code(), rejection.to_string());
        match rejection {
            Rejection::Overpayment {
                amount,
                due,
                available,
            }
            | Rejection::CreditExceedsDue {
                amount,
                due,
                available,
            } => error.with_details(
                json!({"amount": amount, "amount_due": due, "amount_available": available}),
            ),
            Rejection::HoldNotFound { hold_seq } => {
                error.with_details(json!({"hold_seq": hold_seq}))
            }
            Rejection::HoldNotOpen { hold_seq, state } => {
                error.with_details(json!({"hold_seq": hold_seq, "state": state.as_str()}))
            }
            Rejection::CaptureExceedsHold { amount, held } => {
                error.with_details(json!({"amount": amount, "hold_amount": held}))
            }
            Rejection::RefundExceedsPaid { amount, paid } => {
                error.with_details(json!({"amount": amount, "amount_paid": paid}))
            }
            Rejection::CurrencyMismatch { expected, got } => {
                error.with_details(json!({"expected": expected, "got": got}))
            }
            _ => error,
        }
    }

    /// Storage errors: an unreachable database (`UNAVAILABLE`) and a storage
    /// fault (`STORAGE_UNAVAILABLE`) are 503s the client may retry; anything
    /// else is a bug, logged in full and answered as a 500 that shows no
    /// internals.
    pub fn from_store(error: &StoreError) -> ApiError {
        match error {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "the database is unavailable; retry with the same Idempotency-Key",
                )
            }
            StoreError::Storage(reason) => {
                tracing::warn!(%reason, "storage fault");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "STORAGE_UNAVAILABLE",
                    "the storage cannot keep writes now (disk full, read-only, I/O error or \
                     database file gone); nothing was acknowledged: retry with the same Idempotency-Key",
                )
            }
            StoreError::Internal(reason) | StoreError::Config(reason) => {
                tracing::error!(%reason, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "internal error; it has been logged",
                )
            }
        }
    }

    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(details) = &self.details {
            error["details"] = details.clone();
        }
        json!({ "error": error })
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::from_store(&error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bursar_core::{CourseId, Currency, EnrollmentKey, HoldState, UserId};

    /// One refusal of every kind: a new variant of `Rejection` fails to
    /// compile here until it is added, and then must be in `ERROR_CODES`.
    fn every_rejection() -> Vec<Rejection> {
        let key = EnrollmentKey {
            user_id: UserId::parse("u").expect("id"),
            course_id: CourseId::parse("c").expect("id"),
        };
        let usd = Currency::parse("USD").expect("currency");
        let all = vec![
            Rejection::EnrollmentNotFound(key.clone()),
            Rejection::EnrollmentExists {
                key,
                currency: usd,
                price: 1,
                policy: String::new(),
            },
            Rejection::IdempotencyKeyReused(String::new()),
            Rejection::EnrollmentCancelled,
            Rejection::CurrencyMismatch {
                expected: usd,
                got: usd,
            },
            Rejection::NothingDue,
            Rejection::HoldNotFound { hold_seq: 2 },
            Rejection::HoldNotOpen {
                hold_seq: 2,
                state: HoldState::Expired,
            },
            Rejection::Overpayment {
                amount: 1,
                due: 0,
                available: 0,
            },
            Rejection::CreditExceedsDue {
                amount: 1,
                due: 0,
                available: 0,
            },
            Rejection::CaptureExceedsHold { amount: 2, held: 1 },
            Rejection::RefundExceedsPaid { amount: 1, paid: 0 },
            Rejection::InvalidTransition {
                action: "",
                status: "",
                why: "",
            },
            Rejection::TotalLimitExceeded {
                amount: 1,
                limit: 1,
            },
        ];
        for rejection in &all {
            // Exhaustive on purpose: no wildcard arm.
            match rejection {
                Rejection::EnrollmentNotFound(_)
                | Rejection::EnrollmentExists { .. }
                | Rejection::IdempotencyKeyReused(_)
                | Rejection::EnrollmentCancelled
                | Rejection::CurrencyMismatch { .. }
                | Rejection::HoldNotFound { .. }
                | Rejection::HoldNotOpen { .. }
                | Rejection::NothingDue
                | Rejection::Overpayment { .. }
                | Rejection::CreditExceedsDue { .. }
                | Rejection::CaptureExceedsHold { .. }
                | Rejection::RefundExceedsPaid { .. }
                | Rejection::InvalidTransition { .. }
                | Rejection::TotalLimitExceeded { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_refusal_is_in_the_table_with_its_status() {
        for rejection in every_rejection() {
            let error = ApiError::from_rejection(&rejection);
            let listed = ERROR_CODES
                .iter()
                .find(|(code, _, _)| *code == error.code)
                .unwrap_or_else(|| panic!("{} is not in ERROR_CODES", error.code));
            assert_eq!(listed.1, error.status.as_u16(), "{}", error.code);
        }
    }

    #[test]
    fn codes_are_listed_once() {
        let mut codes: Vec<&str> = ERROR_CODES.iter().map(|(code, _, _)| *code).collect();
        codes.sort_unstable();
        let count = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), count);
    }

    #[test]
    fn storage_faults_are_503_with_retry_after_and_bugs_500() {
        let cases = [
            (
                StoreError::Storage("disk full".into()),
                503,
                "STORAGE_UNAVAILABLE",
            ),
            (StoreError::Unavailable("down".into()), 503, "UNAVAILABLE"),
            (StoreError::Internal("bug".into()), 500, "INTERNAL"),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from_store(&error);
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{error}");
            let response = api.into_response();
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                status == 503,
                "{error}"
            );
        }
        let ready = ApiError::storage_unavailable("the disk is full");
        assert_eq!(
            ready.body()["error"]["details"]["reason"],
            "the disk is full"
        );
    }

    #[test]
    fn answers_given_before_the_body_was_read_close_the_connection() {
        for error in [
            ApiError::payload_too_large(1),
            ApiError::bodies_overloaded(),
            ApiError::body_timeout(),
        ] {
            let response = error.into_response();
            assert_eq!(
                response.headers().get(header::CONNECTION),
                Some(&HeaderValue::from_static("close"))
            );
        }
        let response = ApiError::overloaded().into_response();
        assert!(response.headers().get(header::CONNECTION).is_none());
    }
}
