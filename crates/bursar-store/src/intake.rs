//! The payment intake's storage, both backends: the operations a processor's
//! event asks for ride in an ordinary batch, and in the same transaction
//! this module keeps what the ledger alone cannot —
//!
//! - **exceptions**: a processor's event the domain refused (or that names
//!   nothing to apply it to) is kept as one `intake_exceptions` row, keyed by
//!   the event (`bursar_core::intake::exception_id`), with the raw event,
//!   the refusal, its attempts and when it is retried. A new row takes a
//!   position in the global event order exactly as ledger entries do (the
//!   same counter on PostgreSQL, the same newest-position read on SQLite),
//!   so the feed shows it as an `intake.exception` event in commit order;
//! - **links**: a processor's payment objects (its PaymentIntent and Charge
//!   ids) → the enrollment whose payment they made, written with the
//!   accepted payment, so a refund or dispute that names only those objects
//!   finds its enrollment.
//!
//! An event whose exception was resolved or dismissed before applies
//! nothing again: a dismissal means a person settled it another way.

use crate::StoreError;
use bursar_core::intake::{exception_id, next_retry_at};
use bursar_core::{
    CourseId, EnrollmentKey, ExceptionState, HoldGone, IntakeException, IntakeRequest, Outcome,
    Request, Source, Timestamp, UserId,
};
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

/// Most exceptions one listing returns.
pub const EXCEPTIONS_PAGE_MAX: u32 = 1000;

/// Exceptions due for a retry that one look hands to the retrier at most:
/// exceptions are rare, and a backlog after downtime drains a hundred at a
/// time, one look a second, without crowding out the payments in the queue.
pub const DUE_EXCEPTIONS_PER_LOOK_MAX: u32 = 100;

/// Whether an intake write is a processor's delivery or a retry of the
/// exception its event made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeMode {
    /// The processor sent the event (perhaps again).
    Deliver,
    /// A retry, by the server or a person: only an `OPEN` exception is
    /// retried.
    Retry,
}

/// One operation a processor's event asks for, and what to do when it
/// names a hold that is gone (see `bursar_core::IntakeRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeOperation {
    pub request: Request,
    pub hold_gone: HoldGone,
}

/// What a processor's event asks of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeAction {
    /// These operations, in order (a `charge.refunded` may list several
    /// refunds; every other event maps to one).
    Apply(Vec<IntakeOperation>),
    /// Nothing can be applied (no enrollment can be found, a field is
    /// unreadable): keep the event as an exception with this refusal.
    Refuse { code: String, message: String },
}

/// A processor's event on its way to the ledger: what the intake hands the
/// writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeWrite {
    pub source: Source,
    /// The event as received, byte for byte (it is JSON).
    pub event: String,
    /// When the server received it.
    pub received_at: Timestamp,
    pub mode: IntakeMode,
    /// The enrollment the event names, when it names one.
    pub enrollment: Option<EnrollmentKey>,
    /// The processor's payment objects to link to `enrollment` once an
    /// operation of the event is on the ledger.
    pub links: Vec<String>,
    pub action: IntakeAction,
}

impl IntakeWrite {
    fn exception_id(&self) -> String {
        exception_id(&self.source.processor, &self.source.event_id)
    }

    /// How many requests it puts in the batch.
    pub fn operations(&self) -> usize {
        match &self.action {
            IntakeAction::Apply(operations) => operations.len(),
            IntakeAction::Refuse { .. } => 0,
        }
    }
}

/// What became of an intake write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// Every operation is on the ledger (accepted now or replayed), one
    /// outcome each; an open exception of the event is resolved.
    Applied(Vec<Outcome>),
    /// Refused: the event's exception as it stands now (new, or open with
    /// this latest refusal).
    Exception(IntakeException),
    /// The event's exception was resolved or dismissed before: nothing was
    /// applied.
    Closed(IntakeException),
    /// A retry of an exception that does not exist.
    NotFound,
}

/// `GET /v1/intake/exceptions`: the exceptions with `position > after`,
/// oldest first, of one state or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionQuery {
    pub state: Option<ExceptionState>,
    pub after: u64,
    pub limit: u32,
}

/// What a dismissal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dismissal {
    Dismissed(IntakeException),
    /// It was no longer open: unchanged.
    NotOpen(IntakeException),
    NotFound,
}

/// How one intake write of a batch proceeds, decided on the exceptions read
/// (locked on PostgreSQL) inside the batch's transaction.
enum WritePlan {
    Skip(Box<IntakeOutcome>),
    Refuse,
    Apply(Range<usize>),
}

/// A batch with its intake writes laid out for the planner: the plain
/// requests first, then each write's operations.
pub(crate) struct Prepared<'a> {
    /// Borrowed when the batch has no intake writes: the hot path clones
    /// nothing.
    pub requests: Cow<'a, [Request]>,
    pub intake: HashMap<usize, IntakeRequest>,
    plain: usize,
    plans: Vec<WritePlan>,
}

/// The exception ids a batch's intake writes name, sorted (the order in
/// which PostgreSQL locks them), each once.
pub(crate) fn exception_ids(writes: &[IntakeWrite]) -> Vec<String> {
    let mut ids: Vec<String> = writes.iter().map(IntakeWrite::exception_id).collect();
    ids.sort();
    ids.dedup();
    ids
}

pub(crate) fn prepare<'a>(
    plain: &'a [Request],
    writes: &[IntakeWrite],
    existing: &HashMap<String, IntakeException>,
) -> Prepared<'a> {
    let mut prepared = Prepared {
        plain: plain.len(),
        requests: Cow::Borrowed(plain),
        intake: HashMap::new(),
        plans: Vec::with_capacity(writes.len()),
    };
    for write in writes {
        let found = existing.get(&write.exception_id());
        let plan = match (write.mode, found) {
            (IntakeMode::Retry, None) => WritePlan::Skip(Box::new(IntakeOutcome::NotFound)),
            (_, Some(exception)) if exception.state != ExceptionState::Open => {
                WritePlan::Skip(Box::new(IntakeOutcome::Closed(exception.clone())))
            }
            _ => match &write.action {
                IntakeAction::Refuse { .. } => WritePlan::Refuse,
                IntakeAction::Apply(operations) => {
                    let requests = prepared.requests.to_mut();
                    let start = requests.len();
                    for operation in operations {
                        prepared.intake.insert(
                            requests.len(),
                            IntakeRequest {
                                source: write.source.clone(),
                                hold_gone: operation.hold_gone.clone(),
                            },
                        );
                        requests.push(operation.request.clone());
                    }
                    WritePlan::Apply(start..requests.len())
                }
            },
        };
        prepared.plans.push(plan);
    }
    prepared
}

/// A change to one exception row.
pub(crate) enum RowChange {
    Insert,
    Update,
}

/// What a batch's intake writes leave to write, once planned: exception
/// rows, links, and the answers.
pub(crate) struct Settled {
    /// The plain requests' outcomes.
    pub plain: Vec<Outcome>,
    pub outcomes: Vec<IntakeOutcome>,
    /// Exception rows to write, with their raw events; new ones take their
    /// positions from `place`.
    pub rows: Vec<(IntakeException, String, RowChange)>,
    pub links: Vec<(String, String, EnrollmentKey)>,
    /// Which outcome shows which new row, so `place` can give it its
    /// position.
    shown: Vec<(usize, usize)>,
}

impl Settled {
    /// How many new exceptions take positions.
    pub fn new_exceptions(&self) -> u64 {
        self.rows
            .iter()
            .filter(|(_, _, change)| matches!(change, RowChange::Insert))
            .count() as u64
    }

    /// Gives the new exceptions the positions from `first` on, in order.
    pub fn place(&mut self, first: u64) {
        let mut position = first;
        for (exception, _, change) in &mut self.rows {
            if matches!(change, RowChange::Insert) {
                exception.position = position;
                position += 1;
            }
        }
        for (outcome, row) in &self.shown {
            if let IntakeOutcome::Exception(exception) = &mut self.outcomes[*outcome] {
                exception.position = self.rows[*row].0.position;
            }
        }
    }
}

fn refusal(outcomes: &[Outcome]) -> Option<(String, String)> {
    outcomes.iter().find_map(|outcome| match outcome {
        Outcome::Rejected(rejection) => Some((rejection.code().to_owned(), rejection.to_string())),
        _ => None,
    })
}

/// Decides what the batch writes for its intake, from the planner's
/// outcomes (in `prepared.requests` order) and the exceptions read.
pub(crate) fn settle(
    prepared: Prepared<'_>,
    writes: &[IntakeWrite],
    mut outcomes: Vec<Outcome>,
    existing: HashMap<String, IntakeException>,
    now: Timestamp,
) -> Result<Settled, StoreError> {
    let intake_outcomes = outcomes.split_off(prepared.plain);
    let mut settled = Settled {
        plain: outcomes,
        outcomes: Vec::with_capacity(writes.len()),
        rows: Vec::new(),
        links: Vec::new(),
        shown: Vec::new(),
    };
    // Rows already changed by an earlier write of this batch (one event
    // delivered twice at once), by id: index into `settled.rows`.
    let mut touched: HashMap<String, usize> = HashMap::new();
    for (write, plan) in writes.iter().zip(prepared.plans) {
        let id = write.exception_id();
        let (code, message) = match plan {
            WritePlan::Skip(outcome) => {
                settled.outcomes.push(*outcome);
                continue;
            }
            WritePlan::Refuse => match &write.action {
                IntakeAction::Refuse { code, message } => (code.clone(), message.clone()),
                IntakeAction::Apply(_) => unreachable!("planned as a refusal"),
            },
            WritePlan::Apply(range) => {
                let answers = intake_outcomes
                    [range.start - prepared.plain..range.end - prepared.plain]
                    .to_vec();
                match refusal(&answers) {
                    Some(refused) => refused,
                    None => {
                        if let Some(key) = &write.enrollment {
                            for object in &write.links {
                                settled.links.push((
                                    write.source.processor.clone(),
                                    object.clone(),
                                    key.clone(),
                                ));
                            }
                        }
                        if !touched.contains_key(&id)
                            && let Some(open) = existing.get(&id)
                        {
                            let mut resolved = open.clone();
                            resolved.state = ExceptionState::Resolved;
                            resolved.attempts += 1;
                            resolved.updated_at = now;
                            resolved.next_retry_at = None;
                            touched.insert(id, settled.rows.len());
                            settled
                                .rows
                                .push((resolved, write.event.clone(), RowChange::Update));
                        }
                        settled.outcomes.push(IntakeOutcome::Applied(answers));
                        continue;
                    }
                }
            }
        };
        let row = match touched.get(&id) {
            // The same event, refused twice in one batch: one attempt.
            Some(row) => *row,
            None => {
                let row = settled.rows.len();
                let change = match existing.get(&id) {
                    Some(open) => {
                        let mut retried = open.clone();
                        retried.attempts += 1;
                        retried.code = code;
                        retried.message = message;
                        retried.updated_at = now;
                        retried.next_retry_at =
                            next_retry_at(retried.received_at, retried.attempts, now);
                        if let Some(key) = &write.enrollment {
                            retried.user_id = Some(key.user_id.clone());
                            retried.course_id = Some(key.course_id.clone());
                        }
                        (retried, RowChange::Update)
                    }
                    None => (
                        new_exception(write, id.clone(), code, message, now)?,
                        RowChange::Insert,
                    ),
                };
                settled.rows.push((change.0, write.event.clone(), change.1));
                touched.insert(id, row);
                row
            }
        };
        let exception = settled.rows[row].0.clone();
        if exception.state != ExceptionState::Open {
            settled.outcomes.push(IntakeOutcome::Closed(exception));
            continue;
        }
        if matches!(settled.rows[row].2, RowChange::Insert) {
            settled.shown.push((settled.outcomes.len(), row));
        }
        settled.outcomes.push(IntakeOutcome::Exception(exception));
    }
    Ok(settled)
}

fn new_exception(
    write: &IntakeWrite,
    id: String,
    code: String,
    message: String,
    now: Timestamp,
) -> Result<IntakeException, StoreError> {
    let event = serde_json::from_str(&write.event).map_err(|error| {
        StoreError::Internal(format!("an intake event that is not JSON: {error}"))
    })?;
    Ok(IntakeException {
        id,
        state: ExceptionState::Open,
        processor: write.source.processor.clone(),
        event_id: write.source.event_id.clone(),
        event_type: write.source.event_type.clone(),
        code,
        message,
        user_id: write.enrollment.as_ref().map(|key| key.user_id.clone()),
        course_id: write.enrollment.as_ref().map(|key| key.course_id.clone()),
        received_at: write.received_at,
        updated_at: now,
        attempts: 1,
        next_retry_at: next_retry_at(write.received_at, 1, now),
        dismiss_reason: None,
        // Given by `Settled::place`.
        position: 0,
        event,
    })
}

/// The columns of an exception row, in the order `RawException` reads them.
macro_rules! exception_columns {
    () => {
        "id, processor, event_id, event_type, state, code, message, user_id, course_id, \
         received_at, updated_at, attempts, next_retry_at, dismiss_reason, position, event"
    };
}

/// An exception row as read, before validation.
pub(crate) struct RawException {
    pub id: String,
    pub processor: String,
    pub event_id: String,
    pub event_type: String,
    pub state: String,
    pub code: String,
    pub message: String,
    pub user_id: Option<String>,
    pub course_id: Option<String>,
    pub received_at: i64,
    pub updated_at: i64,
    pub attempts: i64,
    pub next_retry_at: Option<i64>,
    pub dismiss_reason: Option<String>,
    pub position: i64,
    pub event: String,
}

impl RawException {
    pub(crate) fn parse(self) -> Result<IntakeException, StoreError> {
        let id = self.id;
        let bad = |what: &str| StoreError::Internal(format!("intake exception {id}: bad {what}"));
        Ok(IntakeException {
            state: ExceptionState::parse(&self.state).ok_or_else(|| bad("state"))?,
            processor: self.processor,
            event_id: self.event_id,
            event_type: self.event_type,
            code: self.code,
            message: self.message,
            user_id: self
                .user_id
                .map(|text| UserId::parse(&text))
                .transpose()
                .map_err(|_| bad("user_id"))?,
            course_id: self
                .course_id
                .map(|text| CourseId::parse(&text))
                .transpose()
                .map_err(|_| bad("course_id"))?,
            received_at: Timestamp::from_unix_micros(self.received_at),
            updated_at: Timestamp::from_unix_micros(self.updated_at),
            attempts: u32::try_from(self.attempts).map_err(|_| bad("attempts"))?,
            next_retry_at: self.next_retry_at.map(Timestamp::from_unix_micros),
            dismiss_reason: self.dismiss_reason,
            position: u64::try_from(self.position).map_err(|_| bad("position"))?,
            event: serde_json::from_str(&self.event).map_err(|_| bad("event"))?,
            id,
        })
    }
}

/// The columns an exception row is written with, as owned values both
/// backends bind.
pub(crate) struct ExceptionColumns<'a> {
    pub exception: &'a IntakeException,
    pub raw_event: &'a str,
}

impl ExceptionColumns<'_> {
    pub fn user_id(&self) -> Option<&str> {
        self.exception.user_id.as_ref().map(UserId::as_str)
    }

    pub fn course_id(&self) -> Option<&str> {
        self.exception.course_id.as_ref().map(CourseId::as_str)
    }
}

pub(crate) mod sqlite {
    use super::*;
    use crate::sqlite::map_error;
    use rusqlite::{Connection, OptionalExtension, params};

    const SELECT_ONE: &str = concat!(
        "SELECT ",
        exception_columns!(),
        " FROM intake_exceptions WHERE id = ?1"
    );

    const INSERT: &str = concat!(
        "INSERT INTO intake_exceptions (",
        exception_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    );

    const UPDATE: &str = "UPDATE intake_exceptions SET state = ?2, code = ?3, message = ?4, \
         user_id = ?5, course_id = ?6, updated_at = ?7, attempts = ?8, next_retry_at = ?9 \
         WHERE id = ?1";

    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawException> {
        Ok(RawException {
            id: row.get(0)?,
            processor: row.get(1)?,
            event_id: row.get(2)?,
            event_type: row.get(3)?,
            state: row.get(4)?,
            code: row.get(5)?,
            message: row.get(6)?,
            user_id: row.get(7)?,
            course_id: row.get(8)?,
            received_at: row.get(9)?,
            updated_at: row.get(10)?,
            attempts: row.get(11)?,
            next_retry_at: row.get(12)?,
            dismiss_reason: row.get(13)?,
            position: row.get(14)?,
            event: row.get(15)?,
        })
    }

    fn query(
        connection: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<IntakeException>, StoreError> {
        let mut statement = connection.prepare_cached(sql).map_err(map_error)?;
        let rows = statement.query_map(params, read).map_err(map_error)?;
        let mut found = Vec::new();
        for row in rows {
            found.push(row.map_err(map_error)?.parse()?);
        }
        Ok(found)
    }

    pub(crate) fn one(
        connection: &Connection,
        id: &str,
    ) -> Result<Option<IntakeException>, StoreError> {
        let mut statement = connection.prepare_cached(SELECT_ONE).map_err(map_error)?;
        let row = statement
            .query_row(params![id], read)
            .optional()
            .map_err(map_error)?;
        row.map(RawException::parse).transpose()
    }

    /// The exceptions of `ids` that exist, by id.
    pub(crate) fn load(
        connection: &Connection,
        ids: &[String],
    ) -> Result<HashMap<String, IntakeException>, StoreError> {
        let mut found = HashMap::new();
        for id in ids {
            if let Some(exception) = one(connection, id)? {
                found.insert(id.clone(), exception);
            }
        }
        Ok(found)
    }

    pub(crate) fn write(connection: &Connection, settled: &Settled) -> Result<(), StoreError> {
        for (exception, raw_event, change) in &settled.rows {
            let columns = ExceptionColumns {
                exception,
                raw_event,
            };
            match change {
                RowChange::Insert => {
                    let mut statement = connection.prepare_cached(INSERT).map_err(map_error)?;
                    statement
                        .execute(params![
                            exception.id,
                            exception.processor,
                            exception.event_id,
                            exception.event_type,
                            exception.state.as_str(),
                            exception.code,
                            exception.message,
                            columns.user_id(),
                            columns.course_id(),
                            exception.received_at.unix_micros(),
                            exception.updated_at.unix_micros(),
                            i64::from(exception.attempts),
                            exception.next_retry_at.map(Timestamp::unix_micros),
                            exception.dismiss_reason,
                            exception.position as i64,
                            columns.raw_event,
                        ])
                        .map_err(map_error)?;
                }
                RowChange::Update => {
                    let mut statement = connection.prepare_cached(UPDATE).map_err(map_error)?;
                    statement
                        .execute(params![
                            exception.id,
                            exception.state.as_str(),
                            exception.code,
                            exception.message,
                            columns.user_id(),
                            columns.course_id(),
                            exception.updated_at.unix_micros(),
                            i64::from(exception.attempts),
                            exception.next_retry_at.map(Timestamp::unix_micros),
                        ])
                        .map_err(map_error)?;
                }
            }
        }
        let mut link = connection
            .prepare_cached(
                "INSERT INTO intake_links (processor, object_id, user_id, course_id) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .map_err(map_error)?;
        for (processor, object, key) in &settled.links {
            link.execute(params![
                processor,
                object,
                key.user_id.as_str(),
                key.course_id.as_str()
            ])
            .map_err(map_error)?;
        }
        Ok(())
    }

    /// The newest exception's position, if any: where the feed's next
    /// position may have to start after.
    pub(crate) fn newest_position(connection: &Connection) -> Result<Option<u64>, StoreError> {
        let newest: Option<i64> = connection
            .prepare_cached("SELECT max(position) FROM intake_exceptions")
            .map_err(map_error)?
            .query_row([], |row| row.get(0))
            .map_err(map_error)?;
        newest
            .map(|position| {
                u64::try_from(position).map_err(|_| {
                    StoreError::Internal(format!("an intake exception at position {position}"))
                })
            })
            .transpose()
    }

    /// At most `count` exceptions from position `from` on, oldest first: the
    /// feed's share of them.
    pub(crate) fn from_position(
        connection: &Connection,
        from: i64,
        count: i64,
    ) -> Result<Vec<IntakeException>, StoreError> {
        query(
            connection,
            concat!(
                "SELECT ",
                exception_columns!(),
                " FROM intake_exceptions WHERE position >= ?1 ORDER BY position LIMIT ?2"
            ),
            params![from, count],
        )
    }

    pub(crate) fn list(
        connection: &Connection,
        query_: &ExceptionQuery,
    ) -> Result<Vec<IntakeException>, StoreError> {
        let after = i64::try_from(query_.after).unwrap_or(i64::MAX);
        let limit = i64::from(query_.limit.min(EXCEPTIONS_PAGE_MAX));
        match query_.state {
            Some(state) => query(
                connection,
                concat!(
                    "SELECT ",
                    exception_columns!(),
                    " FROM intake_exceptions WHERE state = ?1 AND position > ?2 \
                     ORDER BY position LIMIT ?3"
                ),
                params![state.as_str(), after, limit],
            ),
            None => query(
                connection,
                concat!(
                    "SELECT ",
                    exception_columns!(),
                    " FROM intake_exceptions WHERE position > ?1 ORDER BY position LIMIT ?2"
                ),
                params![after, limit],
            ),
        }
    }

    pub(crate) fn due(
        connection: &Connection,
        now: Timestamp,
    ) -> Result<Vec<IntakeException>, StoreError> {
        query(
            connection,
            concat!(
                "SELECT ",
                exception_columns!(),
                " FROM intake_exceptions WHERE state = 'OPEN' AND next_retry_at <= ?1 \
                 ORDER BY next_retry_at LIMIT ?2"
            ),
            params![now.unix_micros(), i64::from(DUE_EXCEPTIONS_PER_LOOK_MAX)],
        )
    }

    pub(crate) fn dismiss(
        connection: &Connection,
        id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<Dismissal, StoreError> {
        let changed = connection
            .prepare_cached(
                "UPDATE intake_exceptions SET state = 'DISMISSED', dismiss_reason = ?2, \
                 updated_at = ?3, next_retry_at = NULL WHERE id = ?1 AND state = 'OPEN'",
            )
            .map_err(map_error)?
            .execute(params![id, reason, now.unix_micros()])
            .map_err(map_error)?;
        Ok(match one(connection, id)? {
            None => Dismissal::NotFound,
            Some(exception) if changed == 1 => Dismissal::Dismissed(exception),
            Some(exception) => Dismissal::NotOpen(exception),
        })
    }

    /// The enrollment linked to the first of `objects` that has a link.
    pub(crate) fn link(
        connection: &Connection,
        processor: &str,
        objects: &[String],
    ) -> Result<Option<EnrollmentKey>, StoreError> {
        let mut statement = connection
            .prepare_cached(
                "SELECT user_id, course_id FROM intake_links WHERE processor = ?1 AND object_id = ?2",
            )
            .map_err(map_error)?;
        for object in objects {
            let found: Option<(String, String)> = statement
                .query_row(params![processor, object], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .map_err(map_error)?;
            if let Some((user_id, course_id)) = found {
                return parse_key(&user_id, &course_id).map(Some);
            }
        }
        Ok(None)
    }
}

fn parse_key(user_id: &str, course_id: &str) -> Result<EnrollmentKey, StoreError> {
    Ok(EnrollmentKey {
        user_id: UserId::parse(user_id)
            .map_err(|_| StoreError::Internal(format!("bad linked user_id {user_id:?}")))?,
        course_id: CourseId::parse(course_id)
            .map_err(|_| StoreError::Internal(format!("bad linked course_id {course_id:?}")))?,
    })
}

pub(crate) mod postgres {
    use super::*;
    use crate::postgres::{Failure, read_error};
    use deadpool_postgres::{GenericClient, Transaction};

    use tokio_postgres::Row;

    const SELECT: &str = concat!("SELECT ", exception_columns!(), " FROM intake_exceptions");

    fn read(row: &Row) -> Result<IntakeException, StoreError> {
        let get = |error: tokio_postgres::Error| {
            StoreError::Internal(format!("an intake exception row: {error}"))
        };
        RawException {
            id: row.try_get(0).map_err(get)?,
            processor: row.try_get(1).map_err(get)?,
            event_id: row.try_get(2).map_err(get)?,
            event_type: row.try_get(3).map_err(get)?,
            state: row.try_get(4).map_err(get)?,
            code: row.try_get(5).map_err(get)?,
            message: row.try_get(6).map_err(get)?,
            user_id: row.try_get(7).map_err(get)?,
            course_id: row.try_get(8).map_err(get)?,
            received_at: row.try_get(9).map_err(get)?,
            updated_at: row.try_get(10).map_err(get)?,
            attempts: i64::from(row.try_get::<_, i32>(11).map_err(get)?),
            next_retry_at: row.try_get(12).map_err(get)?,
            dismiss_reason: row.try_get(13).map_err(get)?,
            position: row.try_get(14).map_err(get)?,
            event: row.try_get(15).map_err(get)?,
        }
        .parse()
    }

    fn read_all(rows: Vec<Row>) -> Result<Vec<IntakeException>, StoreError> {
        rows.iter().map(read).collect()
    }

    /// The exceptions of `ids` that exist, locked until the batch commits
    /// (in id order, so two batches never wait on each other in a cycle),
    /// so a dismissal and a retry of one exception are decided one after
    /// the other.
    pub(crate) async fn load(
        transaction: &Transaction<'_>,
        ids: &[String],
    ) -> Result<HashMap<String, IntakeException>, Failure> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let statement = transaction
            .prepare_cached(concat!(
                "SELECT ",
                exception_columns!(),
                " FROM intake_exceptions WHERE id = ANY($1::TEXT[]) ORDER BY id FOR UPDATE"
            ))
            .await?;
        let rows = transaction.query(&statement, &[&ids]).await?;
        let mut found = HashMap::new();
        for row in &rows {
            let exception = read(row)?;
            found.insert(exception.id.clone(), exception);
        }
        Ok(found)
    }

    pub(crate) async fn write(
        transaction: &Transaction<'_>,
        settled: &Settled,
    ) -> Result<(), Failure> {
        for (exception, raw_event, change) in &settled.rows {
            let columns = ExceptionColumns {
                exception,
                raw_event,
            };
            let attempts = i32::try_from(exception.attempts).unwrap_or(i32::MAX);
            let next = exception.next_retry_at.map(Timestamp::unix_micros);
            match change {
                RowChange::Insert => {
                    let statement = transaction
                        .prepare_cached(concat!(
                            "INSERT INTO intake_exceptions (",
                            exception_columns!(),
                            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                             $14, $15, $16)"
                        ))
                        .await?;
                    transaction
                        .execute(
                            &statement,
                            &[
                                &exception.id,
                                &exception.processor,
                                &exception.event_id,
                                &exception.event_type,
                                &exception.state.as_str(),
                                &exception.code,
                                &exception.message,
                                &columns.user_id(),
                                &columns.course_id(),
                                &exception.received_at.unix_micros(),
                                &exception.updated_at.unix_micros(),
                                &attempts,
                                &next,
                                &exception.dismiss_reason,
                                &(exception.position as i64),
                                &columns.raw_event,
                            ],
                        )
                        .await?;
                }
                RowChange::Update => {
                    let statement = transaction
                        .prepare_cached(
                            "UPDATE intake_exceptions SET state = $2, code = $3, message = $4, \
                             user_id = $5, course_id = $6, updated_at = $7, attempts = $8, \
                             next_retry_at = $9 WHERE id = $1",
                        )
                        .await?;
                    transaction
                        .execute(
                            &statement,
                            &[
                                &exception.id,
                                &exception.state.as_str(),
                                &exception.code,
                                &exception.message,
                                &columns.user_id(),
                                &columns.course_id(),
                                &exception.updated_at.unix_micros(),
                                &attempts,
                                &next,
                            ],
                        )
                        .await?;
                }
            }
        }
        if !settled.links.is_empty() {
            let processors: Vec<&str> = settled.links.iter().map(|link| link.0.as_str()).collect();
            let objects: Vec<&str> = settled.links.iter().map(|link| link.1.as_str()).collect();
            let users: Vec<&str> = settled
                .links
                .iter()
                .map(|link| link.2.user_id.as_str())
                .collect();
            let courses: Vec<&str> = settled
                .links
                .iter()
                .map(|link| link.2.course_id.as_str())
                .collect();
            let statement = transaction
                .prepare_cached(
                    "INSERT INTO intake_links (processor, object_id, user_id, course_id) \
                     SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[]) \
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            transaction
                .execute(&statement, &[&processors, &objects, &users, &courses])
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn one(
        client: &impl GenericClient,
        id: &str,
    ) -> Result<Option<IntakeException>, StoreError> {
        let statement = client
            .prepare_cached(&format!("{SELECT} WHERE id = $1"))
            .await
            .map_err(read_error)?;
        let rows = client.query(&statement, &[&id]).await.map_err(read_error)?;
        rows.first().map(read).transpose()
    }

    pub(crate) async fn from_position(
        client: &impl GenericClient,
        from: i64,
        count: i64,
    ) -> Result<Vec<IntakeException>, StoreError> {
        let statement = client
            .prepare_cached(&format!(
                "{SELECT} WHERE position >= $1 ORDER BY position LIMIT $2"
            ))
            .await
            .map_err(read_error)?;
        read_all(
            client
                .query(&statement, &[&from, &count])
                .await
                .map_err(read_error)?,
        )
    }

    pub(crate) async fn list(
        client: &impl GenericClient,
        query: &ExceptionQuery,
    ) -> Result<Vec<IntakeException>, StoreError> {
        let after = i64::try_from(query.after).unwrap_or(i64::MAX);
        let limit = i64::from(query.limit.min(EXCEPTIONS_PAGE_MAX));
        let rows = match query.state {
            Some(state) => {
                let statement = client
                    .prepare_cached(&format!(
                        "{SELECT} WHERE state = $1 AND position > $2 ORDER BY position LIMIT $3"
                    ))
                    .await
                    .map_err(read_error)?;
                client
                    .query(&statement, &[&state.as_str(), &after, &limit])
                    .await
            }
            None => {
                let statement = client
                    .prepare_cached(&format!(
                        "{SELECT} WHERE position > $1 ORDER BY position LIMIT $2"
                    ))
                    .await
                    .map_err(read_error)?;
                client.query(&statement, &[&after, &limit]).await
            }
        };
        read_all(rows.map_err(read_error)?)
    }

    pub(crate) async fn due(
        client: &impl GenericClient,
        now: Timestamp,
    ) -> Result<Vec<IntakeException>, StoreError> {
        let statement = client
            .prepare_cached(&format!(
                "{SELECT} WHERE state = 'OPEN' AND next_retry_at <= $1 \
                 ORDER BY next_retry_at LIMIT $2"
            ))
            .await
            .map_err(read_error)?;
        read_all(
            client
                .query(
                    &statement,
                    &[&now.unix_micros(), &i64::from(DUE_EXCEPTIONS_PER_LOOK_MAX)],
                )
                .await
                .map_err(read_error)?,
        )
    }

    pub(crate) async fn dismiss(
        client: &impl GenericClient,
        id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<Dismissal, StoreError> {
        let statement = client
            .prepare_cached(
                "UPDATE intake_exceptions SET state = 'DISMISSED', dismiss_reason = $2, \
                 updated_at = $3, next_retry_at = NULL WHERE id = $1 AND state = 'OPEN'",
            )
            .await
            .map_err(read_error)?;
        let changed = client
            .execute(&statement, &[&id, &reason, &now.unix_micros()])
            .await
            .map_err(read_error)?;
        Ok(match one(client, id).await? {
            None => Dismissal::NotFound,
            Some(exception) if changed == 1 => Dismissal::Dismissed(exception),
            Some(exception) => Dismissal::NotOpen(exception),
        })
    }

    pub(crate) async fn link(
        client: &impl GenericClient,
        processor: &str,
        objects: &[String],
    ) -> Result<Option<EnrollmentKey>, StoreError> {
        if objects.is_empty() {
            return Ok(None);
        }
        let statement = client
            .prepare_cached(
                "SELECT user_id, course_id, array_position($2::TEXT[], object_id) AS rank \
                 FROM intake_links WHERE processor = $1 AND object_id = ANY($2::TEXT[]) \
                 ORDER BY rank LIMIT 1",
            )
            .await
            .map_err(read_error)?;
        let rows = client
            .query(&statement, &[&processor, &objects])
            .await
            .map_err(read_error)?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let user_id: String = row.try_get(0).map_err(read_error)?;
                let course_id: String = row.try_get(1).map_err(read_error)?;
                parse_key(&user_id, &course_id).map(Some)
            }
        }
    }
}
