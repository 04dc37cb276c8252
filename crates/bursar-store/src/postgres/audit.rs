//! PostgreSQL's audit: every enrollment's chain replayed in one snapshot, a
//! chunk of enrollments per query and their ledger rows a page at a time.

use super::failure::read_error;
use super::ledger::parse_entry;
use super::rows::{ENROLLMENT_COLUMNS, parse_state};
use crate::ledger_codes::{ENTRY_COLUMNS, entry_columns};
use crate::{AuditReport, StoreError, audit_one, holds};
use bursar_core::{ChainVerifier, CourseId, Disagreement, EnrollmentKey, EnrollmentState, UserId};
use std::collections::{HashMap, VecDeque};
use tokio_postgres::{Portal, Row, Transaction};

/// Enrollments the audit loads per query.
const AUDIT_ENROLLMENTS_PER_QUERY: usize = 500;

/// Ledger rows the audit holds at once: it reads a chunk's entries a page at
/// a time, so its memory does not grow with the length of a ledger. A page
/// of a thousand rows is about a megabyte and one round trip.
const AUDIT_ENTRIES_PER_PAGE: i32 = 1000;

/// The ledger rows of one chunk of the audit, read from a portal a page of
/// `AUDIT_ENTRIES_PER_PAGE` rows at a time.
struct EntryPages {
    portal: Portal,
    /// What is left of the current page.
    rows: VecDeque<Row>,
    /// Whether the portal has returned its last row.
    exhausted: bool,
}

impl EntryPages {
    /// The next row, reading the next page when the current one is used up.
    async fn next_any(&mut self, transaction: &Transaction<'_>) -> Result<Option<Row>, StoreError> {
        if self.rows.is_empty() && !self.exhausted {
            let page = transaction
                .query_portal(&self.portal, AUDIT_ENTRIES_PER_PAGE)
                .await
                .map_err(read_error)?;
            self.exhausted = page.len() < AUDIT_ENTRIES_PER_PAGE as usize;
            self.rows.extend(page);
        }
        Ok(self.rows.pop_front())
    }

    /// The next row if it belongs to the enrollment `ids` (its user id and
    /// course id, in the last two columns); otherwise none, leaving the row
    /// for the enrollment it belongs to.
    async fn next_of(
        &mut self,
        transaction: &Transaction<'_>,
        ids: &(String, String),
    ) -> Result<Option<Row>, StoreError> {
        let Some(row) = self.next_any(transaction).await? else {
            return Ok(None);
        };
        let user_id: &str = row.try_get(ENTRY_COLUMNS).map_err(read_error)?;
        let course_id: &str = row.try_get(ENTRY_COLUMNS + 1).map_err(read_error)?;
        if (user_id, course_id) == (ids.0.as_str(), ids.1.as_str()) {
            Ok(Some(row))
        } else {
            self.rows.push_front(row);
            Ok(None)
        }
    }
}

/// The audit over one snapshot: every key that has an enrollment or a ledger
/// entry.
pub(super) async fn audit(transaction: &Transaction<'_>) -> Result<AuditReport, StoreError> {
    let keys: Vec<(String, String)> = transaction
        .query(
            "SELECT user_id, course_id FROM enrollments UNION SELECT user_id, course_id FROM ledger ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(read_error)?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(read_error)?;
    audit_keys(transaction, &keys).await
}

/// The audit of these enrollments (user id, course id) in the
/// transaction's snapshot, a chunk of keys at a time.
pub(crate) async fn audit_keys(
    transaction: &Transaction<'_>,
    keys: &[(String, String)],
) -> Result<AuditReport, StoreError> {
    let mut report = AuditReport {
        ok: true,
        enrollments: 0,
        entries: 0,
        disagreements: Vec::new(),
    };
    let enrollments_statement = transaction
        .prepare(&format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments \
             WHERE (user_id, course_id) IN (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]))"
        ))
        .await
        .map_err(read_error)?;
    let entries_statement = transaction
        .prepare(concat!(
            "SELECT ",
            entry_columns!(),
            ", user_id, course_id FROM ledger \
             WHERE (user_id, course_id) IN (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
             ORDER BY user_id, course_id, seq"
        ))
        .await
        .map_err(read_error)?;
    for chunk in keys.chunks(AUDIT_ENROLLMENTS_PER_QUERY) {
        let user_ids: Vec<&str> = chunk.iter().map(|(user, _)| user.as_str()).collect();
        let course_ids: Vec<&str> = chunk.iter().map(|(_, course)| course.as_str()).collect();
        let mut stored: HashMap<(String, String), Result<EnrollmentState, String>> = HashMap::new();
        for row in transaction
            .query(&enrollments_statement, &[&user_ids, &course_ids])
            .await
            .map_err(read_error)?
        {
            let user_id: String = row.try_get(0).map_err(read_error)?;
            let course_id: String = row.try_get(1).map_err(read_error)?;
            stored.insert((user_id, course_id), parse_state(&row));
        }
        let mut open_holds = holds::postgres::open_of_chunk(transaction, &user_ids, &course_ids)
            .await
            .map_err(|error| error.to_string());
        // The chunk's entries come from one portal a page at a time, in the
        // order of the keys, and go to each enrollment's verifier as they
        // come: no enrollment's ledger is ever held whole.
        let mut pages = EntryPages {
            portal: transaction
                .bind(&entries_statement, &[&user_ids, &course_ids])
                .await
                .map_err(read_error)?,
            rows: VecDeque::new(),
            exhausted: false,
        };
        for (user_id, course_id) in chunk {
            let ids = (user_id.clone(), course_id.clone());
            let (Ok(parsed_user), Ok(parsed_course)) =
                (UserId::parse(user_id), CourseId::parse(course_id))
            else {
                report.disagreements.push(Disagreement {
                    user_id: user_id.clone(),
                    course_id: course_id.clone(),
                    seq: None,
                    problem: "the stored ids are not valid ids".into(),
                });
                report.ok = false;
                while pages.next_of(transaction, &ids).await?.is_some() {}
                continue;
            };
            let key = EnrollmentKey {
                user_id: parsed_user,
                course_id: parsed_course,
            };
            let mut verifier = ChainVerifier::new(key.clone());
            let state = match stored.remove(&ids) {
                None => None,
                Some(Ok(state)) => Some(state),
                Some(Err(problem)) => {
                    verifier.note(None, problem);
                    None
                }
            };
            while let Some(row) = pages.next_of(transaction, &ids).await? {
                match parse_entry(&key, &row) {
                    Ok((entry, _)) => verifier.push(&entry),
                    Err(problem) => verifier.note(None, problem),
                }
            }
            let stored_holds = match &mut open_holds {
                Ok(by_enrollment) => Ok(by_enrollment.remove(&ids).unwrap_or_default()),
                Err(problem) => Err(problem.clone()),
            };
            audit_one(verifier, state.as_ref(), stored_holds, &mut report);
        }
        // Both queries sort by the same columns in the same snapshot, so
        // every row has been taken by its enrollment; a row left over would
        // mean entries were attributed to the wrong enrollment.
        if pages.next_any(transaction).await?.is_some() {
            return Err(StoreError::Internal(
                "the audit read ledger rows out of enrollment order".into(),
            ));
        }
    }
    Ok(report)
}
