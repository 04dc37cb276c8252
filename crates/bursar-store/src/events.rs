//! The event feed of both backends. The ledger is the outbox: each row carries
//! its global `position` and its status `transitions`, written in the batch's
//! own transaction, so an event exists if and only if its entry committed and
//! the write path gains no row. Reading the feed is a range scan of the
//! ledger's `position` index; `bursar_core::events_of` turns rows into events.
//!
//! Positions are dense: an entry's position is its first event's, and the
//! next entry starts where its events end. How each backend keeps commit
//! order equal to position order is in `sqlite::next_position` and
//! `postgres::reserve_positions`.
//!
//! The intake's exceptions (`intake.rs`) take positions from the same
//! source in the same transactions, one each, and the feed merges their
//! rows with the ledger's by position: an `intake.exception` event sits in
//! the one order like any other.

use crate::StoreError;
use bursar_core::{
    EVENTS_PER_ENTRY_MAX, EnrollmentKey, Event, EventType, IntakeException, LedgerEntry,
    Transitions, event_count, events_of, exception_event,
};

/// Most ledger entries one feed read scans while it looks for events of the
/// asked types: a filtered read over a long stretch of other events returns
/// what it found so far, and its `next_after` moves past what it scanned.
pub const EVENT_SCAN_ENTRIES_MAX: u32 = 10_000;

/// Entries read per query while scanning.
const ENTRIES_PER_QUERY: u32 = 1_000;

/// One read of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Where the next read should start: the last event returned, or, when
    /// the read scanned further without filling `limit`, the last position it
    /// scanned. Never less than the `after` asked for.
    pub next_after: u64,
}

/// What a reader asks for: the events with `position > after`, at most
/// `limit` of them, only of `types` unless it is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub after: u64,
    pub limit: u32,
    pub types: Vec<EventType>,
}

/// A row as the feed reads it: a ledger entry, or an intake exception.
pub(crate) enum FeedRow {
    Entry {
        entry: LedgerEntry,
        position: u64,
        transitions: Transitions,
    },
    Exception(IntakeException),
}

impl FeedRow {
    fn position(&self) -> u64 {
        match self {
            FeedRow::Entry { position, .. } => *position,
            FeedRow::Exception(exception) => exception.position,
        }
    }

    fn events(&self) -> Vec<Event> {
        match self {
            FeedRow::Entry {
                entry,
                position,
                transitions,
            } => events_of(entry, *position, *transitions),
            FeedRow::Exception(exception) => vec![exception_event(exception)],
        }
    }
}

/// Where a query for the entries holding events after `after` starts: an
/// entry at position p holds events p ..= p + (its count − 1).
fn first_entry_position(after: u64) -> u64 {
    after.saturating_sub(EVENTS_PER_ENTRY_MAX - 1)
}

/// A feed read in progress, whichever backend runs its queries: it says
/// which entries to fetch next and turns the rows it is given into events.
pub(crate) struct FeedRead<'a> {
    query: &'a EventQuery,
    page: EventPage,
    from: u64,
    scanned: u32,
    done: bool,
}

impl<'a> FeedRead<'a> {
    pub(crate) fn new(query: &'a EventQuery) -> FeedRead<'a> {
        FeedRead {
            query,
            page: EventPage {
                events: Vec::new(),
                next_after: query.after,
            },
            from: first_entry_position(query.after) + 1,
            scanned: 0,
            done: false,
        }
    }

    /// The next query to run: entries with `position >= from`, at most
    /// `count`, oldest first. `None` once the page is complete.
    pub(crate) fn next_fetch(&self) -> Option<(i64, i64)> {
        if self.done || self.scanned >= EVENT_SCAN_ENTRIES_MAX {
            return None;
        }
        let count = ENTRIES_PER_QUERY.min(self.query.limit.max(1) + 4);
        Some((
            i64::try_from(self.from).unwrap_or(i64::MAX),
            i64::from(count),
        ))
    }

    /// Takes the rows of the queries `next_fetch` asked for: at most `count`
    /// ledger rows and at most `count` exception rows from the same
    /// position, merged by position. Only the first `count` of the merge
    /// are used (the next fetch starts after them); when the two gave fewer
    /// than `count` together, both are exhausted and the read is complete.
    pub(crate) fn take(&mut self, entries: Vec<FeedRow>, exceptions: Vec<FeedRow>, count: i64) {
        let total = entries.len() + exceptions.len();
        let mut rows = entries;
        if !exceptions.is_empty() {
            rows.extend(exceptions);
            rows.sort_by_key(FeedRow::position);
        }
        rows.truncate(usize::try_from(count).unwrap_or(usize::MAX));
        self.scanned += rows.len() as u32;
        if let Some(last) = rows.last() {
            self.from = last.position() + 1;
        }
        'rows: for row in rows {
            for event in row.events() {
                if event.position <= self.query.after {
                    continue;
                }
                self.page.next_after = event.position;
                if self.query.types.is_empty() || self.query.types.contains(&event.event_type) {
                    self.page.events.push(event);
                    if self.page.events.len() >= self.query.limit as usize {
                        self.done = true;
                        break 'rows;
                    }
                }
            }
        }
        if (total as i64) < count {
            self.done = true;
        }
    }

    pub(crate) fn finish(self) -> EventPage {
        self.page
    }
}

/// The position after an entry's events: where the next entry starts.
pub(crate) fn position_after(position: u64, entry: &LedgerEntry, transitions: Transitions) -> u64 {
    position + event_count(entry.kind, transitions)
}

fn bad(key: &EnrollmentKey, seq: u64, what: &str) -> StoreError {
    StoreError::Internal(format!("ledger entry {key} seq {seq}: bad {what}"))
}

fn parse_columns(
    entry: LedgerEntry,
    position: Option<i64>,
    transitions: i64,
) -> Result<FeedRow, StoreError> {
    let key = entry.enrollment.key();
    let position = position
        .and_then(|position| u64::try_from(position).ok())
        .ok_or_else(|| bad(&key, entry.seq, "position"))?;
    let transitions =
        Transitions::from_bits(transitions).ok_or_else(|| bad(&key, entry.seq, "transitions"))?;
    Ok(FeedRow::Entry {
        entry,
        position,
        transitions,
    })
}

pub(crate) mod sqlite {
    use super::*;
    use crate::ledger_codes::{ENTRY_COLUMNS, entry_columns};
    use crate::sqlite::{entry_from_row, map_error};
    use rusqlite::{Connection, Transaction, params};

    const SELECT_FEED: &str = concat!(
        "SELECT ",
        entry_columns!(),
        ", user_id, course_id, position, transitions \
         FROM ledger WHERE position >= ?1 ORDER BY position LIMIT ?2"
    );

    const SELECT_LAST: &str = "SELECT position, transitions, kind FROM ledger \
         WHERE position IS NOT NULL ORDER BY position DESC LIMIT 1";

    /// The position of the batch's first event. SQLite has one writer at a
    /// time (the batch runs under `BEGIN IMMEDIATE`), so reading the newest
    /// entry and the newest intake exception inside the transaction and
    /// counting on from the later of the two makes commit order position
    /// order, across processes sharing the file too.
    pub(crate) fn next_position(transaction: &Transaction<'_>) -> Result<u64, StoreError> {
        let after_exceptions =
            crate::intake::sqlite::newest_position(transaction)?.map_or(1, |newest| newest + 1);
        Ok(next_ledger_position(transaction)?.max(after_exceptions))
    }

    /// Where the events after the newest ledger entry start.
    fn next_ledger_position(transaction: &Transaction<'_>) -> Result<u64, StoreError> {
        let mut statement = transaction.prepare_cached(SELECT_LAST).map_err(map_error)?;
        let mut rows = statement.query([]).map_err(map_error)?;
        let Some(row) = rows.next().map_err(map_error)? else {
            return Ok(1);
        };
        let position: i64 = row.get(0).map_err(map_error)?;
        let transitions: i64 = row.get(1).map_err(map_error)?;
        let kind: i64 = row.get(2).map_err(map_error)?;
        let broken = || StoreError::Internal(format!("the newest ledger row at {position} is bad"));
        let kind = crate::ledger_codes::kind_of(kind).ok_or_else(broken)?;
        let transitions = Transitions::from_bits(transitions).ok_or_else(broken)?;
        let position = u64::try_from(position).map_err(|_| broken())?;
        Ok(position + event_count(kind, transitions))
    }

    /// Where the next event will be placed, as committed now.
    pub(crate) fn head(connection: &Connection) -> Result<u64, StoreError> {
        let transaction = connection.unchecked_transaction().map_err(map_error)?;
        let next = next_position(&transaction)?;
        transaction.rollback().map_err(map_error)?;
        Ok(next)
    }

    /// One page of the feed, read in one snapshot: the ledger's rows and the
    /// exceptions' come from two statements, and a commit between them could
    /// otherwise show an exception while hiding the entry just before it.
    pub(crate) fn read(
        connection: &Connection,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError> {
        let snapshot = connection.unchecked_transaction().map_err(map_error)?;
        let page = read_in(&snapshot, query)?;
        snapshot.finish().map_err(map_error)?;
        Ok(page)
    }

    fn read_in(connection: &Connection, query: &EventQuery) -> Result<EventPage, StoreError> {
        let mut statement = connection.prepare_cached(SELECT_FEED).map_err(map_error)?;
        let mut read = FeedRead::new(query);
        while let Some((from, count)) = read.next_fetch() {
            let mut rows = statement.query(params![from, count]).map_err(map_error)?;
            let mut feed = Vec::new();
            while let Some(row) = rows.next().map_err(map_error)? {
                let entry = entry_from_row(row)?;
                let position: Option<i64> = row.get(ENTRY_COLUMNS + 2).map_err(map_error)?;
                let transitions: i64 = row.get(ENTRY_COLUMNS + 3).map_err(map_error)?;
                feed.push(parse_columns(entry, position, transitions)?);
            }
            let exceptions = crate::intake::sqlite::from_position(connection, from, count)?
                .into_iter()
                .map(FeedRow::Exception)
                .collect();
            read.take(feed, exceptions, count);
        }
        Ok(read.finish())
    }
}

pub(crate) mod postgres {
    use super::*;
    use crate::ledger_codes::{ENTRY_COLUMNS, entry_columns};
    use crate::postgres::{read_error, row_key};

    const SELECT_FEED: &str = concat!(
        "SELECT ",
        entry_columns!(),
        ", user_id, course_id, position, transitions \
         FROM ledger WHERE position >= $1 ORDER BY position LIMIT $2"
    );

    /// Takes `count` positions for a batch and returns the first. The
    /// counter's one row stays locked until the batch commits, so a batch
    /// that took lower positions has committed before another can take
    /// higher ones: a reader that sees position P sees everything below it,
    /// whichever server wrote it. Taken after the enrollments are written and
    /// just before the ledger rows, so it is held only for the tail of the
    /// transaction, and never while waiting on another lock (a batch
    /// creating the same enrollment waits at that insert, before this).
    /// `statement` is `RESERVE_POSITIONS` prepared: the caller prepares it
    /// beforehand, so the reservation can be sent right behind the batch's
    /// other writes without a round trip of its own.
    pub(crate) async fn reserve_positions(
        transaction: &deadpool_postgres::Transaction<'_>,
        statement: &tokio_postgres::Statement,
        count: u64,
    ) -> Result<u64, tokio_postgres::Error> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let first: i64 = transaction.query_one(statement, &[&count]).await?.get(0);
        Ok(first as u64)
    }

    pub(crate) const RESERVE_POSITIONS: &str =
        "UPDATE bursar_event_positions SET next = next + $1 RETURNING next - $1";

    /// Where the next event will be placed, as committed now: the counter
    /// read without its lock.
    pub(crate) async fn head(client: &deadpool_postgres::Object) -> Result<u64, StoreError> {
        let statement = client
            .prepare_cached("SELECT next FROM bursar_event_positions")
            .await
            .map_err(read_error)?;
        let next: i64 = client
            .query_one(&statement, &[])
            .await
            .map_err(read_error)?
            .get(0);
        Ok(next as u64)
    }

    /// One page of the feed. The caller runs it in one snapshot (a
    /// repeatable-read transaction): the ledger's rows and the exceptions'
    /// come from two statements, and a commit between them could otherwise
    /// show an exception while hiding the entry just before it.
    pub(crate) async fn read(
        client: &impl deadpool_postgres::GenericClient,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError> {
        let statement = client
            .prepare_cached(SELECT_FEED)
            .await
            .map_err(read_error)?;
        let mut read = FeedRead::new(query);
        while let Some((from, count)) = read.next_fetch() {
            let rows = client
                .query(&statement, &[&from, &count])
                .await
                .map_err(read_error)?;
            let mut feed = Vec::with_capacity(rows.len());
            for row in &rows {
                let key = row_key(row, ENTRY_COLUMNS).map_err(StoreError::Internal)?;
                let (entry, _) =
                    crate::postgres::parse_entry(&key, row).map_err(StoreError::Internal)?;
                let position: Option<i64> = row.try_get(ENTRY_COLUMNS + 2).map_err(read_error)?;
                let transitions: i16 = row.try_get(ENTRY_COLUMNS + 3).map_err(read_error)?;
                feed.push(parse_columns(entry, position, i64::from(transitions))?);
            }
            let exceptions = crate::intake::postgres::from_position(client, from, count)
                .await?
                .into_iter()
                .map(FeedRow::Exception)
                .collect();
            read.take(feed, exceptions, count);
        }
        Ok(read.finish())
    }
}
