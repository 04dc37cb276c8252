//! Bounded body memory: one budget of request-body bytes being received at
//! once, reserved before a body is read, so that a flood of slow or stalled
//! bodies cannot grow the process without bound; and the reading of a body
//! itself, turning each way it can fail into an answer with a code.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of request bodies that may be received and parsed at once: eight
/// full `/v1/batch` bodies (8 MiB each), or a thousand single operations at
/// their 64 KiB limit — far more than the writer commits at once, so honest
/// load never meets it. Beyond it a request is answered 503 `OVERLOADED` at
/// once, before its body is read. Received bodies and their parsed form
/// then take about twice this budget at most, so the process stays well
/// under 300 MB however many slow or stalled bodies arrive.
pub const BODY_BYTES_IN_FLIGHT_MAX: usize = 64 * 1024 * 1024;

/// The budget: a semaphore with one permit per byte.
#[derive(Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl Default for BodyBudget {
    fn default() -> BodyBudget {
        BodyBudget::new(BODY_BYTES_IN_FLIGHT_MAX)
    }
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget(Arc::new(Semaphore::new(bytes)))
    }

    /// Room for `bytes` of body, held until the permit is dropped; `None`
    /// when the budget is spent.
    pub fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        self.0.clone().try_acquire_many_owned(bytes).ok()
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// A body read whole, with its reservation: drop it once the body is parsed.
pub struct ReadBody {
    pub bytes: Bytes,
    pub _reservation: Option<OwnedSemaphorePermit>,
}

/// Reads the body of `request`, at most `limit` bytes. Its declared length
/// (or `limit` when it has none) is reserved from the budget the router put
/// in the request's extensions first: none left is 503 `OVERLOADED`. A
/// declared length over the limit is 413 before anything is read; a body
/// that stalls longer than the body-read timeout is 408.
pub async fn read_body(request: Request, limit: usize) -> Result<ReadBody, ApiError> {
    let declared = match request.headers().get(CONTENT_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("bad Content-Length"))?,
        ),
    };
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let reserve = declared.map_or(limit, |length| length as usize);
    let reservation = match request.extensions().get::<BodyBudget>() {
        Some(budget) if reserve > 0 => Some(budget.try_reserve(reserve).ok_or_else(|| {
            tracing::debug!(reserve, "the body budget is spent");
            ApiError::bodies_overloaded()
        })?),
        _ => None,
    };
    let collected = Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<LengthLimitError>() {
                ApiError::payload_too_large(limit)
            } else if is_timeout(&*error) {
                ApiError::body_timeout()
            } else {
                ApiError::invalid(format!("cannot read the body: {error}"))
            }
        })?;
    Ok(ReadBody {
        bytes: collected.to_bytes(),
        _reservation: reservation,
    })
}

/// Whether the body-read timeout is somewhere in the error's chain.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_counted_in_bytes_and_returned_on_drop() {
        let budget = BodyBudget::new(100);
        let first = budget.try_reserve(60).expect("room for 60");
        assert!(budget.try_reserve(41).is_none());
        let second = budget.try_reserve(40).expect("room for 40 more");
        assert_eq!(budget.available(), 0);
        drop(first);
        drop(second);
        assert_eq!(budget.available(), 100);
        assert!(budget.try_reserve(usize::MAX).is_none());
    }
}
