//! The one error type of the HTTP layer and the one table that maps every
//! refusal of the core and every storage fault to a status and a code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bursar_core::Rejection;
use bursar_store::StoreError;
use serde_json::{Value, json};

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
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
    }

    /// The request body stopped arriving: nothing was done.
    pub fn body_timeout() -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request body stopped arriving; nothing was done: send it again",
        )
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
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// The one table from the core's refusals to HTTP.
    pub fn from_rejection(rejection: &Rejection) -> ApiError {
        let status = match rejection {
            Rejection::EnrollmentNotFound(_) => StatusCode::NOT_FOUND,
            Rejection::EnrollmentExists { .. }
            | Rejection::IdempotencyKeyReused(_)
            | Rejection::NothingDue
            | Rejection::EnrollmentCancelled
            | Rejection::InvalidTransition { .. } => StatusCode::CONFLICT,
            Rejection::Overpayment { .. }
            | Rejection::CreditExceedsDue { .. }
            | Rejection::RefundExceedsPaid { .. }
            | Rejection::CurrencyMismatch { .. }
            | Rejection::TotalLimitExceeded { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let error = ApiError::new(status, rejection.code(), rejection.to_string());
        match rejection {
            Rejection::Overpayment { amount, due }
            | Rejection::CreditExceedsDue { amount, due } => {
                error.with_details(json!({"amount": amount, "amount_due": due}))
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
}
