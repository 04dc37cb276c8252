//! The finance desk's reads of one enrollment: its statement over a period
//! (`GET …/statement`: opening, entries, closing) and the check of its own
//! hash chain (`GET …/audit`, for readers; the whole audit stays admin's).
//! The enrollment as of a time is `?as_of=` on the enrollment routes
//! (`api.rs`), and the export of a period is `export.rs`.

use crate::AppState;
use crate::api::{ErrorBody, json_response};
use crate::error::ApiError;
use crate::extract::{EnrollmentPath, QueryPair, not_after_now, query_pairs, query_time};
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use bursar_core::{
    CourseId, Currency, Disagreement, Enrollment, Hash, LedgerEntry, Rejection, Timestamp, UserId,
};
use serde::Serialize;
use serde_json::json;
use utoipa::{OpenApi, ToSchema};

/// Most entries one statement lists. A statement is one JSON answer, so its
/// size is bounded: a thousand entries is years of an installment plan, and
/// about a megabyte. A longer period is refused with `STATEMENT_TOO_LONG`
/// rather than cut short, since a cut statement would not add up; the ledger
/// route pages through any number of entries, and the export streams them.
pub const STATEMENT_ENTRIES_MAX: u32 = 1000;

/// A period `from <= created_at < to`, as the statement and the export take
/// it: `from` absent means from the beginning, `to` absent means the
/// server's now; neither may be after now, and `from` may not be after
/// `to` (equal is an empty period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: Option<Timestamp>,
    pub to: Timestamp,
}

impl Period {
    /// Checks the bounds as given (`to` defaults to `now`); the error is the
    /// message of a 400, or of the command line.
    pub fn new(
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Period, String> {
        let from = from.map(|at| not_after_now("from", at, now)).transpose()?;
        let to = to
            .map(|at| not_after_now("to", at, now))
            .transpose()?
            .unwrap_or(now);
        if let Some(from) = from
            && from > to
        {
            return Err(format!(
                "from {from} is after to {to}: a period runs from its start to its end"
            ));
        }
        Ok(Period { from, to })
    }

    /// `from`, `to` and the `extra` parameter names of a query string:
    /// the period, and the values of the extra ones.
    pub fn from_query<'a>(
        query: &'a Option<String>,
        extra: &[&str],
    ) -> Result<(Period, Vec<QueryPair<'a>>), ApiError> {
        let mut known = vec!["from", "to"];
        known.extend_from_slice(extra);
        let (mut from, mut to) = (None, None);
        let mut rest = Vec::new();
        for (name, value) in query_pairs(query, &known)? {
            match name {
                "from" => from = Some(query_time(name, value)?),
                "to" => to = Some(query_time(name, value)?),
                _ => rest.push((name, value)),
            }
        }
        let period = Period::new(from, to, crate::writer::now()).map_err(ApiError::invalid)?;
        Ok((period, rest))
    }
}

/// `?from=&to=` of `GET …/statement`.
pub struct StatementPeriod(pub Period);

impl<S: Send + Sync> FromRequestParts<S> for StatementPeriod {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("bad query string"))?;
        Ok(StatementPeriod(Period::from_query(&query, &[])?.0))
    }
}

/// One enrollment over a period: `closing` is `opening` with `entries`
/// applied, field by field.
#[derive(Serialize, ToSchema)]
pub struct StatementBody {
    pub user_id: UserId,
    pub course_id: CourseId,
    pub currency: Currency,
    /// The start of the period as asked; `null`: from the beginning.
    pub from: Option<Timestamp>,
    /// The end of the period (excluded): as asked, or the server's now.
    pub to: Timestamp,
    /// The enrollment as it stood before `from`; `null` when it did not
    /// exist yet.
    pub opening: Option<Enrollment>,
    /// The entries with `from <= created_at < to`, oldest first.
    pub entries: Vec<LedgerEntry>,
    /// The enrollment after the last entry before `to`; `null` when it did
    /// not exist yet.
    pub closing: Option<Enrollment>,
}

/// An enrollment's statement over a period: opening, entries, closing (reader).
#[utoipa::path(get, path = "/v1/users/{user_id}/courses/{course_id}/statement",
    params(("user_id" = String, Path), ("course_id" = String, Path),
        ("from" = Option<String>, Query, format = DateTime,
            description = "the start of the period, included; default the beginning. Any RFC 3339 date-time; not after the server's clock"),
        ("to" = Option<String>, Query, format = DateTime,
            description = "the end of the period, excluded; default the server's now. Any RFC 3339 date-time; not after the server's clock, not before from")),
    responses((status = 200, body = StatementBody),
        (status = 400, body = ErrorBody, description = "INVALID_REQUEST: a malformed time, a time after the server's clock, or from after to"),
        (status = 404, body = ErrorBody, description = "ENROLLMENT_NOT_FOUND"),
        (status = 422, body = ErrorBody, description = "STATEMENT_TOO_LONG: more than 1,000 entries in the period")),
    security(("bearer" = [])))]
pub async fn statement(
    State(state): State<AppState>,
    EnrollmentPath(key): EnrollmentPath,
    StatementPeriod(period): StatementPeriod,
) -> Result<Response, ApiError> {
    let rows = state
        .store
        .statement(&key, period.from, period.to, STATEMENT_ENTRIES_MAX)
        .await?;
    if rows.more {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "STATEMENT_TOO_LONG",
            format!(
                "the period holds more than {STATEMENT_ENTRIES_MAX} entries of this enrollment: \
                 ask for a shorter period, page through the ledger route, or export the period"
            ),
        )
        .with_details(json!({"entries_max": STATEMENT_ENTRIES_MAX})));
    }
    // The currency never changes, so the latest snapshot names it; an
    // enrollment made after `to` still has a (null, null) statement.
    let currency = match rows.closing.as_ref() {
        Some(closing) => closing.currency,
        None => match state.store.enrollment(&key).await? {
            Some(enrollment) => enrollment.currency,
            None => {
                return Err(ApiError::from_rejection(&Rejection::EnrollmentNotFound(
                    key,
                )));
            }
        },
    };
    let body = StatementBody {
        user_id: key.user_id,
        course_id: key.course_id,
        currency,
        from: period.from,
        to: period.to,
        opening: rows.opening,
        entries: rows.entries,
        closing: rows.closing,
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// The check of one enrollment's chain, in the words of `GET /v1/audit`.
#[derive(Serialize, ToSchema)]
pub struct EnrollmentAuditBody {
    /// True exactly when `problems` is empty.
    pub ok: bool,
    /// Ledger entries replayed.
    pub entries: u64,
    /// The hash of the newest entry as stored; `null` without entries.
    pub head_hash: Option<Hash>,
    /// Every disagreement found, as the whole audit names them (at most
    /// 1,000, then one line counting the rest).
    pub problems: Vec<Disagreement>,
}

/// Replay one enrollment's ledger and verify its chain, as the audit does (reader).
#[utoipa::path(get, path = "/v1/users/{user_id}/courses/{course_id}/audit",
    params(("user_id" = String, Path), ("course_id" = String, Path)),
    responses((status = 200, body = EnrollmentAuditBody),
        (status = 404, body = ErrorBody, description = "ENROLLMENT_NOT_FOUND")),
    security(("bearer" = [])))]
pub async fn audit_enrollment(
    State(state): State<AppState>,
    EnrollmentPath(key): EnrollmentPath,
) -> Result<Response, ApiError> {
    let Some(audit) = state.store.audit_enrollment(&key).await? else {
        return Err(ApiError::from_rejection(&Rejection::EnrollmentNotFound(
            key,
        )));
    };
    let body = EnrollmentAuditBody {
        ok: audit.ok,
        entries: audit.entries,
        head_hash: audit.head_hash,
        problems: audit.problems,
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// This module's part of `/openapi.json`.
#[derive(OpenApi)]
#[openapi(paths(statement, audit_enrollment))]
pub struct FinanceDoc;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_micros(seconds * 1_000_000)
    }

    #[test]
    fn a_period_defaults_to_now_and_refuses_the_future_and_a_reversal() {
        let now = at(1000);
        assert_eq!(
            Period::new(None, None, now),
            Ok(Period {
                from: None,
                to: now
            })
        );
        assert_eq!(
            Period::new(Some(at(5)), Some(at(5)), now),
            Ok(Period {
                from: Some(at(5)),
                to: at(5)
            })
        );
        let reversed = Period::new(Some(at(6)), Some(at(5)), now).expect_err("reversed");
        assert!(
            reversed.starts_with("from 1970-01-01T00:00:06"),
            "{reversed}"
        );
        for (from, to) in [(Some(at(1001)), None), (None, Some(at(1001)))] {
            let error = Period::new(from, to, now).expect_err("in the future");
            assert!(error.contains("is in the future"), "{error}");
        }
    }
}
