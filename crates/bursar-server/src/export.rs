//! The export of a period's ledger entries in global order (`position`), as
//! CSV or JSON Lines: `GET /v1/export` (admin) and `bursar export` share
//! this code. It reads the store a page at a time by position and writes
//! each page as it comes, so an export of any size takes the memory of one
//! page.
//!
//! The columns (CSV) and names (JSON Lines) are `EXPORT_COLUMNS`, in that
//! order: the entry, its source, its hashes, and the enrollment's amounts
//! and statuses right after it. CSV has a header line and quotes a field
//! only when it must (commas, quotes, line breaks). A text a person or a
//! processor supplied (ids, keys, references, reasons, the source's ids)
//! that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a
//! leading `'` in CSV, so a spreadsheet shows it as text rather than run it
//! as a formula; JSON Lines carries every text exactly, with no header line
//! (every line is one entry, names included), for programs.

use crate::AppState;
use crate::api::ErrorBody;
use crate::error::ApiError;
use crate::finance::Period;
use axum::body::Body;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bursar_core::{Hash, Timestamp};
use bursar_store::{EXPORT_PAGE_ENTRIES, ExportQuery, PositionedEntry, Store, StoreError};
use bytes::Bytes;
use serde::Serialize;
use std::borrow::Cow;
use utoipa::OpenApi;

/// The export's columns, in order: the CSV header line, and the names of
/// every JSON Lines object.
pub const EXPORT_COLUMNS: [&str; 29] = [
    "position",
    "created_at",
    "user_id",
    "course_id",
    "seq",
    "kind",
    "amount",
    "currency",
    "idempotency_key",
    "reference",
    "reason",
    "hold_seq",
    "expires_at",
    "source_processor",
    "source_event_id",
    "source_event_type",
    "prev_hash",
    "hash",
    "price",
    "amount_charged",
    "amount_paid",
    "amount_credited",
    "amount_refunded",
    "amount_due",
    "amount_held",
    "amount_available",
    "payment_status",
    "access_status",
    "status",
];

/// How an export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

impl ExportFormat {
    pub fn parse(text: &str) -> Option<ExportFormat> {
        match text {
            "csv" => Some(ExportFormat::Csv),
            "jsonl" => Some(ExportFormat::Jsonl),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Jsonl => "jsonl",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Jsonl => "application/x-ndjson",
        }
    }
}

/// One entry as an export row. Field order is `EXPORT_COLUMNS`.
#[derive(Serialize)]
struct ExportRow<'a> {
    position: u64,
    created_at: Timestamp,
    user_id: Cow<'a, str>,
    course_id: Cow<'a, str>,
    seq: u64,
    kind: &'static str,
    amount: i64,
    currency: &'a str,
    idempotency_key: Option<Cow<'a, str>>,
    reference: Option<Cow<'a, str>>,
    reason: Option<Cow<'a, str>>,
    hold_seq: Option<u64>,
    expires_at: Option<Timestamp>,
    source_processor: Option<Cow<'a, str>>,
    source_event_id: Option<Cow<'a, str>>,
    source_event_type: Option<Cow<'a, str>>,
    prev_hash: Hash,
    hash: Hash,
    price: i64,
    amount_charged: i64,
    amount_paid: i64,
    amount_credited: i64,
    amount_refunded: i64,
    amount_due: i64,
    amount_held: i64,
    amount_available: i64,
    payment_status: &'static str,
    access_status: &'static str,
    status: &'static str,
}

/// A supplied text as a spreadsheet cell: one that starts like a formula
/// gets a leading `'`, which spreadsheets take as "this is text".
fn spreadsheet_text(text: &str) -> Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

impl<'a> ExportRow<'a> {
    /// The row of an entry; `spreadsheet` guards the supplied texts (CSV).
    fn of(positioned: &'a PositionedEntry, spreadsheet: bool) -> ExportRow<'a> {
        let text = |text: &'a str| {
            if spreadsheet {
                spreadsheet_text(text)
            } else {
                Cow::Borrowed(text)
            }
        };
        let entry = &positioned.entry;
        let enrollment = &entry.enrollment;
        let source = entry.source.as_ref();
        ExportRow {
            position: positioned.position,
            created_at: entry.created_at,
            user_id: text(enrollment.user_id.as_str()),
            course_id: text(enrollment.course_id.as_str()),
            seq: entry.seq,
            kind: entry.kind.as_str(),
            amount: entry.amount,
            currency: entry.currency.as_str(),
            idempotency_key: entry.idempotency_key.as_ref().map(|key| text(key.as_str())),
            reference: entry.reference.as_ref().map(|value| text(value.as_str())),
            reason: entry.reason.as_ref().map(|value| text(value.as_str())),
            hold_seq: entry.hold_seq,
            expires_at: entry.expires_at,
            source_processor: source.map(|source| text(&source.processor)),
            source_event_id: source.map(|source| text(&source.event_id)),
            source_event_type: source.map(|source| text(&source.event_type)),
            prev_hash: entry.prev_hash,
            hash: entry.hash,
            price: enrollment.price,
            amount_charged: enrollment.amount_charged,
            amount_paid: enrollment.amount_paid,
            amount_credited: enrollment.amount_credited,
            amount_refunded: enrollment.amount_refunded,
            amount_due: enrollment.amount_due,
            amount_held: enrollment.amount_held,
            amount_available: enrollment.amount_available,
            payment_status: enrollment.payment_status.as_str(),
            access_status: enrollment.access_status.as_str(),
            status: enrollment.status.as_str(),
        }
    }
}

/// Writes `rows` (after the header line when `header`) in `format`.
fn write_page(
    format: ExportFormat,
    header: bool,
    rows: &[PositionedEntry],
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let failed = |error: &dyn std::fmt::Display| {
        StoreError::Internal(format!("cannot write an export row: {error}"))
    };
    match format {
        ExportFormat::Csv => {
            let mut writer = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            if header {
                writer
                    .write_record(EXPORT_COLUMNS)
                    .map_err(|e| failed(&e))?;
            }
            for row in rows {
                writer
                    .serialize(ExportRow::of(row, true))
                    .map_err(|e| failed(&e))?;
            }
            writer.flush().map_err(|e| failed(&e))?;
        }
        ExportFormat::Jsonl => {
            for row in rows {
                serde_json::to_writer(&mut *out, &ExportRow::of(row, false))
                    .map_err(|e| failed(&e))?;
                out.push(b'\n');
            }
        }
    }
    Ok(())
}

/// An export in progress: each `next_chunk` reads one page and returns it
/// written out, the CSV header line before the first.
pub struct Exporter {
    store: Store,
    format: ExportFormat,
    period: Period,
    /// The position of the last entry read.
    after: u64,
    header_pending: bool,
    done: bool,
    rows: u64,
}

impl Exporter {
    pub fn new(store: Store, format: ExportFormat, period: Period) -> Exporter {
        Exporter {
            store,
            format,
            period,
            after: 0,
            header_pending: format == ExportFormat::Csv,
            done: false,
            rows: 0,
        }
    }

    /// The next bytes of the export; `None` once it is complete.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .export_page(ExportQuery {
                from: self.period.from,
                to: self.period.to,
                after: self.after,
                limit: EXPORT_PAGE_ENTRIES,
            })
            .await?;
        self.done = page.len() < EXPORT_PAGE_ENTRIES as usize;
        if let Some(last) = page.last() {
            self.after = last.position;
        }
        let mut out = Vec::with_capacity(page.len() * 512 + 512);
        write_page(self.format, self.header_pending, &page, &mut out)?;
        self.header_pending = false;
        self.rows += page.len() as u64;
        Ok((!out.is_empty() || !self.done).then(|| Bytes::from(out)))
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The position of the last entry read: how far through the ledger the
    /// export is.
    pub fn position(&self) -> u64 {
        self.after
    }
}

/// `?from=&to=&format=` of `GET /v1/export`.
pub struct ExportParams {
    pub period: Period,
    pub format: ExportFormat,
}

impl<S: Send + Sync> FromRequestParts<S> for ExportParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("bad query string"))?;
        let (period, rest) = Period::from_query(&query, &["format"])?;
        let mut format = ExportFormat::Csv;
        for (_, value) in rest {
            format = ExportFormat::parse(value).ok_or_else(|| {
                ApiError::invalid(format!("format must be csv or jsonl, not {value:?}"))
            })?;
        }
        Ok(ExportParams { period, format })
    }
}

/// The file name a browser saves an export under.
fn file_name(params: &ExportParams) -> String {
    let compact = |at: Timestamp| {
        at.to_string()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(15)
            .collect::<String>()
    };
    let from = params
        .period
        .from
        .map_or_else(|| "beginning".to_owned(), compact);
    format!(
        "bursar-export-{from}-{}.{}",
        compact(params.period.to),
        params.format.as_str()
    )
}

/// The ledger entries with `from <= created_at < to`, in global order, streamed as CSV or JSON Lines (admin).
#[utoipa::path(get, path = "/v1/export",
    params(
        ("from" = Option<String>, Query, format = DateTime,
            description = "the start of the period, included; default the beginning. Any RFC 3339 date-time; not after the server's clock"),
        ("to" = Option<String>, Query, format = DateTime,
            description = "the end of the period, excluded; default the server's now. Any RFC 3339 date-time; not after the server's clock, not before from"),
        ("format" = Option<String>, Query, pattern = "^(csv|jsonl)$",
            description = "csv (the default: a header line, then one row per entry) or jsonl (one JSON object per line, no header line)")),
    responses((status = 200, description = "the entries, streamed; a failure after the first bytes cuts the body short (no final chunk), never a complete-looking file",
            content(("text/csv; charset=utf-8"), ("application/x-ndjson"))),
        (status = 400, body = ErrorBody, description = "INVALID_REQUEST: a malformed time or format, a time after the server's clock, or from after to")),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    params: ExportParams,
) -> Result<Response, ApiError> {
    let mut exporter = Exporter::new(state.store.clone(), params.format, params.period);
    // The first page is read before the answer starts, so a database that
    // cannot be read is still a 503 with a status.
    let first = exporter.next_chunk().await?;
    let stream = futures_util::stream::unfold(Some((exporter, first)), |state| async move {
        let (mut exporter, pending) = state?;
        let next = match pending {
            Some(bytes) => Ok(Some(bytes)),
            None => exporter.next_chunk().await,
        };
        match next {
            Ok(Some(bytes)) => Some((Ok(bytes), Some((exporter, None)))),
            Ok(None) => None,
            Err(error) => {
                // The status went out with the first bytes: failing the
                // body makes the client see a transfer cut short.
                tracing::warn!(%error, rows = exporter.rows(), "an export failed midway");
                Some((Err(std::io::Error::other(error)), None))
            }
        }
    });
    let mut response = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(params.format.content_type()),
    );
    if let Ok(disposition) =
        HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file_name(&params)))
    {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The export's part of `/openapi.json`.
#[derive(OpenApi)]
#[openapi(paths(export))]
pub struct ExportDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_are_the_rows_names_in_order() {
        let value = serde_json::json!({
            "seq": 1, "kind": "ENROLL", "amount": 100, "currency": "USD",
            "idempotency_key": null, "reference": null, "reason": null, "source": null,
            "created_at": "2026-03-01T00:00:00.000000Z",
            "enrollment": {"user_id": "u", "course_id": "c", "currency": "USD", "price": 100,
                "amount_charged": 0, "amount_paid": 0, "amount_credited": 0,
                "amount_refunded": 0, "amount_due": 100, "amount_held": 0,
                "amount_available": 100, "payment_status": "PENDING",
                "access_policy": {"kind": "FULL_PAYMENT"}, "access_status": "LOCKED",
                "status": "PENDING_PAYMENT", "version": 1,
                "created_at": "2026-03-01T00:00:00.000000Z",
                "updated_at": "2026-03-01T00:00:00.000000Z"},
            "prev_hash": "0".repeat(64), "hash": "1".repeat(64)
        });
        let entry = PositionedEntry {
            position: 7,
            entry: serde_json::from_value(value).expect("an entry"),
        };
        let mut csv_out = csv::Writer::from_writer(Vec::new());
        csv_out
            .serialize(ExportRow::of(&entry, true))
            .expect("a row");
        let csv_text = String::from_utf8(csv_out.into_inner().expect("flush")).expect("UTF-8");
        assert_eq!(
            csv_text.lines().next(),
            Some(EXPORT_COLUMNS.join(",").as_str())
        );
        let json = serde_json::to_string(&ExportRow::of(&entry, false)).expect("JSON");
        let mut at = 0;
        for name in EXPORT_COLUMNS {
            let found = json[at..]
                .find(&format!("\"{name}\":"))
                .unwrap_or_else(|| panic!("{name} is not next in {json}"));
            at += found;
        }
    }

    #[test]
    fn texts_that_start_like_a_formula_are_kept_as_text() {
        for (text, shown) in [
            ("=SUM(A1)", "'=SUM(A1)"),
            ("+1", "'+1"),
            ("-2", "'-2"),
            ("@cmd", "'@cmd"),
            ("\tx", "'\tx"),
            ("a=b", "a=b"),
            (
                "<img src=x onerror=alert(1)>",
                "<img src=x onerror=alert(1)>",
            ),
        ] {
            assert_eq!(spreadsheet_text(text), shown, "{text:?}");
        }
    }
}
