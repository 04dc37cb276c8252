//! Digests of both backends: taking one (`bursar digest`, `GET /v1/digest`)
//! and checking the ledger against one (`bursar audit --digest`). Both read
//! one consistent snapshot and stream the ledger in position order through
//! the `position` index into `bursar_core::DigestFold`, a row at a time, so
//! they are linear in entries, hold no more than a page of rows, and never
//! block the writer.
//!
//! A snapshot is always a prefix of the global order: on SQLite the one
//! writer takes positions inside its write transaction, and on PostgreSQL
//! the counter row stays locked until the batch that took positions commits
//! (`postgres::reserve_positions`), so a batch with higher positions cannot
//! commit before one with lower positions.

use crate::StoreError;
use bursar_core::{
    Digest, DigestCheck, DigestFold, DigestRow, EntryKind, Hash, Timestamp, Transitions,
};

/// Rows one PostgreSQL round trip fetches while streaming: about 200 bytes
/// each, so a page is about a megabyte, and a million entries take a
/// hundred round trips.
const DIGEST_ROWS_PER_PAGE: i32 = 5000;

/// The columns every digest query reads, in this order.
macro_rules! digest_columns {
    () => {
        "position, transitions, kind, seq, hash, user_id, course_id"
    };
}

/// The raw columns of a row, borrowed from the driver's row; `None` where a
/// value is missing or of the wrong type (only a change made outside bursar
/// leaves one so).
struct RawRow<'a> {
    position: Option<i64>,
    transitions: Option<i64>,
    kind: Option<EntryKind>,
    seq: Option<i64>,
    hash: Option<Hash>,
    user_id: Option<&'a str>,
    course_id: Option<&'a str>,
}

/// Pushes one row into the fold, or notes it as unreadable.
fn push(fold: &mut DigestFold, raw: RawRow<'_>) {
    let position = raw
        .position
        .and_then(|position| u64::try_from(position).ok());
    let shown = |value: Option<String>| value.unwrap_or_else(|| "?".to_owned());
    let name = || {
        format!(
            "{}/{} seq {} at position {}",
            shown(raw.user_id.map(str::to_owned)),
            shown(raw.course_id.map(str::to_owned)),
            shown(raw.seq.map(|seq| seq.to_string())),
            shown(raw.position.map(|position| position.to_string())),
        )
    };
    let parsed = (|| {
        let position = position
            .filter(|position| *position > 0)
            .ok_or("position")?;
        let kind = raw.kind.ok_or("kind")?;
        let transitions = raw
            .transitions
            .and_then(Transitions::from_bits)
            .ok_or("transitions")?;
        let seq = raw
            .seq
            .and_then(|seq| u64::try_from(seq).ok())
            .ok_or("seq")?;
        let hash = raw.hash.ok_or("hash")?;
        Ok::<_, &str>(DigestRow {
            position,
            kind,
            transitions,
            seq,
            hash,
            user_id: raw.user_id.ok_or("user_id")?,
            course_id: raw.course_id.ok_or("course_id")?,
        })
    })();
    match parsed {
        Ok(row) => fold.push(&row),
        Err(what) => fold.push_unreadable(position, format!("{}: bad {what}", name())),
    }
}

/// The highest position a check reads: the digest's, within what the
/// databases' 64-bit integers hold.
fn upto(digest: &Digest) -> i64 {
    i64::try_from(digest.position).unwrap_or(i64::MAX)
}

pub(crate) mod sqlite {
    use super::*;
    use crate::sqlite::map_error;
    use rusqlite::Connection;

    const SELECT_ROWS: &str = concat!(
        "SELECT ",
        digest_columns!(),
        " FROM ledger WHERE position <= ?1 ORDER BY position"
    );

    /// Rows the `position` column of this backend lets be NULL (the other
    /// has it `NOT NULL`); the index holds them, so counting is a lookup.
    const COUNT_UNPLACED: &str = "SELECT count(*) FROM ledger WHERE position IS NULL";

    /// Folds every row with `position <= upto` in one read transaction.
    fn fold(connection: &Connection, upto: i64) -> Result<DigestFold, StoreError> {
        // One read transaction: every query sees the same snapshot, however
        // many batches commit meanwhile.
        let snapshot = connection.unchecked_transaction().map_err(map_error)?;
        let mut fold = DigestFold::new();
        {
            let mut statement = snapshot.prepare(SELECT_ROWS).map_err(map_error)?;
            let mut rows = statement.query([upto]).map_err(map_error)?;
            while let Some(row) = rows.next().map_err(map_error)? {
                // A value of another type than the schema's reads as none.
                let text = |index| {
                    row.get_ref(index)
                        .ok()
                        .and_then(|value| value.as_str().ok())
                };
                let integer = |index| {
                    row.get_ref(index)
                        .ok()
                        .and_then(|value| value.as_i64().ok())
                };
                // The compact layout: the kind a small integer, the hash 32
                // bytes (see ledger_codes.rs).
                let hash = row.get_ref(4).ok().and_then(|value| match value {
                    rusqlite::types::ValueRef::Blob(bytes) => Some(Hash(bytes.try_into().ok()?)),
                    _ => None,
                });
                let raw = RawRow {
                    position: integer(0),
                    transitions: integer(1),
                    kind: integer(2).and_then(crate::ledger_codes::kind_of),
                    seq: integer(3),
                    hash,
                    user_id: text(5),
                    course_id: text(6),
                };
                push(&mut fold, raw);
            }
        }
        let unplaced: i64 = snapshot
            .query_row(COUNT_UNPLACED, [], |row| row.get(0))
            .map_err(map_error)?;
        fold.note_unplaced(u64::try_from(unplaced).unwrap_or(0));
        snapshot.finish().map_err(map_error)?;
        Ok(fold)
    }

    pub(crate) fn take(connection: &Connection, now: Timestamp) -> Result<Digest, StoreError> {
        fold(connection, i64::MAX)?
            .digest(now)
            .map_err(StoreError::Internal)
    }

    pub(crate) fn check(
        connection: &Connection,
        digest: &Digest,
    ) -> Result<DigestCheck, StoreError> {
        Ok(fold(connection, upto(digest))?.check(digest))
    }
}

pub(crate) mod postgres {
    use super::*;
    use crate::postgres::read_error;
    use deadpool_postgres::Object;

    const SELECT_ROWS: &str = concat!(
        "SELECT ",
        digest_columns!(),
        " FROM ledger WHERE position <= $1 ORDER BY position"
    );

    /// Folds every row with `position <= upto` in one REPEATABLE READ READ
    /// ONLY transaction: one snapshot, which is a prefix of the order.
    async fn fold(client: &mut Object, upto: i64) -> Result<DigestFold, StoreError> {
        let transaction = crate::postgres::read_snapshot(client).await?;
        let statement = transaction.prepare(SELECT_ROWS).await.map_err(read_error)?;
        let portal = transaction
            .bind(&statement, &[&upto])
            .await
            .map_err(read_error)?;
        let mut fold = DigestFold::new();
        loop {
            let page = transaction
                .query_portal(&portal, DIGEST_ROWS_PER_PAGE)
                .await
                .map_err(read_error)?;
            for row in &page {
                // The schema's types and NOT NULLs hold every value here.
                let transitions: i16 = row.try_get(1).map_err(read_error)?;
                let kind: i16 = row.try_get(2).map_err(read_error)?;
                let hash: &[u8] = row.try_get(4).map_err(read_error)?;
                let raw = RawRow {
                    position: Some(row.try_get(0).map_err(read_error)?),
                    transitions: Some(i64::from(transitions)),
                    kind: crate::ledger_codes::kind_of(i64::from(kind)),
                    seq: Some(row.try_get(3).map_err(read_error)?),
                    hash: hash.try_into().ok().map(Hash),
                    user_id: Some(row.try_get(5).map_err(read_error)?),
                    course_id: Some(row.try_get(6).map_err(read_error)?),
                };
                push(&mut fold, raw);
            }
            if page.len() < DIGEST_ROWS_PER_PAGE as usize {
                break;
            }
        }
        // `position` is NOT NULL here: every row is in the order.
        transaction.commit().await.map_err(read_error)?;
        Ok(fold)
    }

    pub(crate) async fn take(client: &mut Object, now: Timestamp) -> Result<Digest, StoreError> {
        fold(client, i64::MAX)
            .await?
            .digest(now)
            .map_err(StoreError::Internal)
    }

    pub(crate) async fn check(
        client: &mut Object,
        digest: &Digest,
    ) -> Result<DigestCheck, StoreError> {
        Ok(fold(client, upto(digest)).await?.check(digest))
    }
}
