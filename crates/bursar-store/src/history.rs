//! The ledger read by time, for the finance desk, on both backends: an
//! enrollment as it stood at a moment (every ledger row holds the enrollment
//! right after it, so the answer is the snapshot of the newest row before
//! that moment), a statement's opening, entries and closing read in one
//! snapshot, the audit of one enrollment, and the pages of an export, read
//! by `position` (the global order the event feed uses).
//!
//! Times are compared as the stored microseconds: a bound is "strictly
//! before" (`created_at < before`), and "as of T" is "before T plus one
//! microsecond". Within an enrollment `created_at` never decreases with
//! `seq` (the core keeps server time from running backwards), so the newest
//! row before a moment is the highest `seq` among the rows before it.

use crate::{AuditReport, StoreError};
use bursar_core::{Disagreement, Enrollment, EnrollmentKey, Hash, LedgerEntry, Timestamp};
use serde::Serialize;

/// Entries one page of an export reads: about half a megabyte of rows, one
/// query, and the most an export holds in memory at once.
pub const EXPORT_PAGE_ENTRIES: u32 = 1000;

/// The enrollment of one statement: where it stood when the period opened
/// and when it closed, and the entries between, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRows {
    /// The enrollment before the period (`None`: not enrolled yet).
    pub opening: Option<Enrollment>,
    /// The entries with `from <= created_at < to`, at most the limit asked
    /// for; `more` says whether there were others.
    pub entries: Vec<LedgerEntry>,
    pub more: bool,
    /// The enrollment after the last entry before `to` (`None`: not
    /// enrolled by then).
    pub closing: Option<Enrollment>,
}

/// One page of an export: the entries with `from <= created_at < to` and a
/// position after `after`, at most `limit`, in position order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportQuery {
    /// `None`: from the beginning.
    pub from: Option<Timestamp>,
    pub to: Timestamp,
    pub after: u64,
    pub limit: u32,
}

/// A ledger entry with its place in the global order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionedEntry {
    pub position: u64,
    pub entry: LedgerEntry,
}

/// The audit of one enrollment, in the words of the whole audit's report:
/// `ok` exactly when `problems` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentAudit {
    pub ok: bool,
    /// Ledger entries replayed.
    pub entries: u64,
    /// The hash of the newest entry as stored (`null` without entries).
    pub head_hash: Option<Hash>,
    pub problems: Vec<Disagreement>,
}

/// The exclusive bound of "as of `at`": every entry created at `at` counts.
fn as_of_bound(at: Timestamp) -> i64 {
    at.unix_micros().saturating_add(1)
}

/// A snapshot with the money invariants asserted: a broken one is
/// corruption or a bug, never something to serve.
fn checked(enrollment: Enrollment, key: impl std::fmt::Display) -> Result<Enrollment, StoreError> {
    enrollment.check().map_err(|broken| {
        StoreError::Internal(format!("a snapshot of {key} breaks an invariant: {broken}"))
    })?;
    Ok(enrollment)
}

fn position(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Internal(format!("a ledger row has position {value}")))
}

/// The report of `audit_keys` for one enrollment as an `EnrollmentAudit`;
/// `None` when there is neither an enrollment nor an entry.
fn one_audit(report: AuditReport, head_hash: Option<Hash>) -> Option<EnrollmentAudit> {
    let found = report.enrollments > 0 || report.entries > 0 || !report.disagreements.is_empty();
    found.then_some(EnrollmentAudit {
        ok: report.ok,
        entries: report.entries,
        head_hash,
        problems: report.disagreements,
    })
}

fn empty_report() -> AuditReport {
    AuditReport {
        ok: true,
        enrollments: 0,
        entries: 0,
        disagreements: Vec::new(),
    }
}

pub(crate) mod sqlite {
    //! A snapshot is read as the entry it belongs to: the compact row's
    //! columns (see `ledger_codes.rs`), as on PostgreSQL.

    use super::*;
    use crate::USER_ENROLLMENTS_MAX;
    use crate::ledger_codes::{ENTRY_COLUMNS, entry_columns};
    use crate::sqlite::{entry_from_row, map_error};
    use bursar_core::UserId;
    use rusqlite::types::ValueRef;
    use rusqlite::{Connection, OptionalExtension, params};

    const LATEST_BEFORE: &str = concat!(
        "SELECT ",
        entry_columns!(),
        ", user_id, course_id FROM ledger \
         WHERE user_id = ?1 AND course_id = ?2 AND created_at < ?3 ORDER BY seq DESC LIMIT 1"
    );

    /// SQLite takes the bare columns from the row that holds `max(seq)`.
    const USER_LATEST_BEFORE: &str = concat!(
        "SELECT ",
        entry_columns!(),
        ", user_id, course_id, max(seq) FROM ledger \
         WHERE user_id = ?1 AND created_at < ?2 GROUP BY course_id ORDER BY course_id LIMIT ?3"
    );

    const ENTRIES_BETWEEN: &str = concat!(
        "SELECT ",
        entry_columns!(),
        ", user_id, course_id FROM ledger \
         WHERE user_id = ?1 AND course_id = ?2 AND created_at >= ?3 AND created_at < ?4 \
         ORDER BY seq LIMIT ?5"
    );

    const EXPORT_PAGE: &str = concat!(
        "SELECT ",
        entry_columns!(),
        ", user_id, course_id, position FROM ledger \
         WHERE position > ?1 AND created_at >= ?2 AND created_at < ?3 \
         ORDER BY position LIMIT ?4"
    );

    const HEAD_HASH: &str =
        "SELECT hash FROM ledger WHERE user_id = ?1 AND course_id = ?2 ORDER BY seq DESC LIMIT 1";

    fn latest_before(
        connection: &Connection,
        key: &EnrollmentKey,
        before: i64,
    ) -> Result<Option<Enrollment>, StoreError> {
        let mut statement = connection
            .prepare_cached(LATEST_BEFORE)
            .map_err(map_error)?;
        let mut rows = statement
            .query(params![
                key.user_id.as_str(),
                key.course_id.as_str(),
                before
            ])
            .map_err(map_error)?;
        match rows.next().map_err(map_error)? {
            None => Ok(None),
            Some(row) => checked(entry_from_row(row)?.enrollment, key).map(Some),
        }
    }

    pub(crate) fn as_of(
        connection: &Connection,
        key: &EnrollmentKey,
        at: Timestamp,
    ) -> Result<Option<Enrollment>, StoreError> {
        latest_before(connection, key, as_of_bound(at))
    }

    pub(crate) fn user_as_of(
        connection: &Connection,
        user_id: &UserId,
        at: Timestamp,
    ) -> Result<Vec<Enrollment>, StoreError> {
        let mut statement = connection
            .prepare_cached(USER_LATEST_BEFORE)
            .map_err(map_error)?;
        let mut rows = statement
            .query(params![
                user_id.as_str(),
                as_of_bound(at),
                USER_ENROLLMENTS_MAX as i64
            ])
            .map_err(map_error)?;
        let mut enrollments = Vec::new();
        while let Some(row) = rows.next().map_err(map_error)? {
            enrollments.push(checked(entry_from_row(row)?.enrollment, user_id)?);
        }
        Ok(enrollments)
    }

    /// Opening, entries and closing in one read transaction.
    pub(crate) fn statement(
        connection: &Connection,
        key: &EnrollmentKey,
        from: Option<Timestamp>,
        to: Timestamp,
        limit: u32,
    ) -> Result<StatementRows, StoreError> {
        let read = connection.unchecked_transaction().map_err(map_error)?;
        let from = from.map_or(i64::MIN, Timestamp::unix_micros);
        let opening = latest_before(&read, key, from)?;
        let mut entries = Vec::new();
        {
            let mut statement = read.prepare_cached(ENTRIES_BETWEEN).map_err(map_error)?;
            let mut rows = statement
                .query(params![
                    key.user_id.as_str(),
                    key.course_id.as_str(),
                    from,
                    to.unix_micros(),
                    i64::from(limit) + 1
                ])
                .map_err(map_error)?;
            while let Some(row) = rows.next().map_err(map_error)? {
                entries.push(entry_from_row(row)?);
            }
        }
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let closing = latest_before(&read, key, to.unix_micros())?;
        read.finish().map_err(map_error)?;
        Ok(StatementRows {
            opening,
            entries,
            more,
            closing,
        })
    }

    pub(crate) fn export_page(
        connection: &Connection,
        query: &ExportQuery,
    ) -> Result<Vec<PositionedEntry>, StoreError> {
        let mut statement = connection.prepare_cached(EXPORT_PAGE).map_err(map_error)?;
        let mut rows = statement
            .query(params![
                i64::try_from(query.after).unwrap_or(i64::MAX),
                query.from.map_or(i64::MIN, Timestamp::unix_micros),
                query.to.unix_micros(),
                i64::from(query.limit)
            ])
            .map_err(map_error)?;
        let mut page = Vec::with_capacity(query.limit as usize);
        while let Some(row) = rows.next().map_err(map_error)? {
            let entry = entry_from_row(row)?;
            page.push(PositionedEntry {
                position: position(row.get(ENTRY_COLUMNS + 2).map_err(map_error)?)?,
                entry,
            });
        }
        Ok(page)
    }

    /// The audit of one enrollment, in one read transaction.
    pub(crate) fn audit(
        connection: &Connection,
        key: &EnrollmentKey,
    ) -> Result<Option<EnrollmentAudit>, StoreError> {
        let read = connection.unchecked_transaction().map_err(map_error)?;
        let mut report = empty_report();
        crate::sqlite::audit_enrollment(&read, key, &mut report)?;
        let head: Option<Option<Hash>> = read
            .query_row(
                HEAD_HASH,
                params![key.user_id.as_str(), key.course_id.as_str()],
                |row| {
                    Ok(match row.get_ref(0)? {
                        ValueRef::Blob(bytes) => bytes.try_into().ok().map(Hash),
                        _ => None,
                    })
                },
            )
            .optional()
            .map_err(map_error)?;
        read.finish().map_err(map_error)?;
        Ok(one_audit(report, head.flatten()))
    }
}

pub(crate) mod postgres {
    use super::*;
    use crate::USER_ENROLLMENTS_MAX;
    use crate::ledger_codes::{ENTRY_COLUMNS, entry_columns};
    use crate::postgres::{parse_entry, read_error, row_key};
    use bursar_core::UserId;
    use deadpool_postgres::GenericClient;

    const LATEST_BEFORE: &str = concat!(
        "SELECT ",
        entry_columns!(),
        " FROM ledger \
         WHERE user_id = $1 AND course_id = $2 AND created_at < $3 ORDER BY seq DESC LIMIT 1"
    );

    const USER_LATEST_BEFORE: &str = concat!(
        "SELECT DISTINCT ON (course_id) ",
        entry_columns!(),
        ", user_id, course_id FROM ledger \
         WHERE user_id = $1 AND created_at < $2 ORDER BY course_id, seq DESC LIMIT $3"
    );

    const ENTRIES_BETWEEN: &str = concat!(
        "SELECT ",
        entry_columns!(),
        " FROM ledger \
         WHERE user_id = $1 AND course_id = $2 AND created_at >= $3 AND created_at < $4 \
         ORDER BY seq LIMIT $5"
    );

    const EXPORT_PAGE: &str = concat!(
        "SELECT ",
        entry_columns!(),
        ", user_id, course_id, position FROM ledger \
         WHERE position > $1 AND created_at >= $2 AND created_at < $3 \
         ORDER BY position LIMIT $4"
    );

    const HEAD_HASH: &str =
        "SELECT hash FROM ledger WHERE user_id = $1 AND course_id = $2 ORDER BY seq DESC LIMIT 1";

    async fn latest_before(
        client: &impl GenericClient,
        key: &EnrollmentKey,
        before: i64,
    ) -> Result<Option<Enrollment>, StoreError> {
        let statement = client
            .prepare_cached(LATEST_BEFORE)
            .await
            .map_err(read_error)?;
        let row = client
            .query_opt(
                &statement,
                &[&key.user_id.as_str(), &key.course_id.as_str(), &before],
            )
            .await
            .map_err(read_error)?;
        row.map(|row| {
            let (entry, _) = parse_entry(key, &row).map_err(StoreError::Internal)?;
            checked(entry.enrollment, key)
        })
        .transpose()
    }

    pub(crate) async fn as_of(
        client: &impl GenericClient,
        key: &EnrollmentKey,
        at: Timestamp,
    ) -> Result<Option<Enrollment>, StoreError> {
        latest_before(client, key, as_of_bound(at)).await
    }

    pub(crate) async fn user_as_of(
        client: &impl GenericClient,
        user_id: &UserId,
        at: Timestamp,
    ) -> Result<Vec<Enrollment>, StoreError> {
        let statement = client
            .prepare_cached(USER_LATEST_BEFORE)
            .await
            .map_err(read_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &user_id.as_str(),
                    &as_of_bound(at),
                    &(USER_ENROLLMENTS_MAX as i64),
                ],
            )
            .await
            .map_err(read_error)?;
        rows.iter()
            .map(|row| {
                let key = row_key(row, ENTRY_COLUMNS).map_err(StoreError::Internal)?;
                let (entry, _) = parse_entry(&key, row).map_err(StoreError::Internal)?;
                checked(entry.enrollment, user_id)
            })
            .collect()
    }

    /// Opening, entries and closing in one repeatable-read snapshot.
    pub(crate) async fn statement(
        client: &mut deadpool_postgres::Object,
        key: &EnrollmentKey,
        from: Option<Timestamp>,
        to: Timestamp,
        limit: u32,
    ) -> Result<StatementRows, StoreError> {
        let read = crate::postgres::read_snapshot(client).await?;
        let from = from.map_or(i64::MIN, Timestamp::unix_micros);
        let opening = latest_before(&read, key, from).await?;
        let statement = read
            .prepare_cached(ENTRIES_BETWEEN)
            .await
            .map_err(read_error)?;
        let rows = read
            .query(
                &statement,
                &[
                    &key.user_id.as_str(),
                    &key.course_id.as_str(),
                    &from,
                    &to.unix_micros(),
                    &(i64::from(limit) + 1),
                ],
            )
            .await
            .map_err(read_error)?;
        let more = rows.len() > limit as usize;
        let entries = rows
            .iter()
            .take(limit as usize)
            .map(|row| {
                parse_entry(key, row)
                    .map(|(entry, _)| entry)
                    .map_err(StoreError::Internal)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let closing = latest_before(&read, key, to.unix_micros()).await?;
        read.commit().await.map_err(read_error)?;
        Ok(StatementRows {
            opening,
            entries,
            more,
            closing,
        })
    }

    pub(crate) async fn export_page(
        client: &impl GenericClient,
        query: &ExportQuery,
    ) -> Result<Vec<PositionedEntry>, StoreError> {
        let statement = client
            .prepare_cached(EXPORT_PAGE)
            .await
            .map_err(read_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &i64::try_from(query.after).unwrap_or(i64::MAX),
                    &query.from.map_or(i64::MIN, Timestamp::unix_micros),
                    &query.to.unix_micros(),
                    &i64::from(query.limit),
                ],
            )
            .await
            .map_err(read_error)?;
        rows.iter()
            .map(|row| {
                let key = row_key(row, ENTRY_COLUMNS).map_err(StoreError::Internal)?;
                let (entry, _) = parse_entry(&key, row).map_err(StoreError::Internal)?;
                Ok(PositionedEntry {
                    position: position(row.try_get(ENTRY_COLUMNS + 2).map_err(read_error)?)?,
                    entry,
                })
            })
            .collect()
    }

    /// The audit of one enrollment, in one repeatable-read snapshot.
    pub(crate) async fn audit(
        client: &mut deadpool_postgres::Object,
        key: &EnrollmentKey,
    ) -> Result<Option<EnrollmentAudit>, StoreError> {
        let transaction = crate::postgres::read_snapshot(client).await?;
        let ids = [(key.user_id.to_string(), key.course_id.to_string())];
        let report = crate::postgres::audit_keys(&transaction, &ids).await?;
        let head: Option<Vec<u8>> = transaction
            .query_opt(HEAD_HASH, &[&key.user_id.as_str(), &key.course_id.as_str()])
            .await
            .map_err(read_error)?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(read_error)?;
        transaction.commit().await.map_err(read_error)?;
        let head = head.and_then(|bytes| bytes.try_into().ok().map(Hash));
        Ok(one_audit(report, head))
    }
}
