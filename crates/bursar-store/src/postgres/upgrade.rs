//! The upgrade of a PostgreSQL ledger from the JSON layout of schemas 1 to
//! 7 (hashes as hex text, the snapshot as JSON text, kinds and statuses as
//! text) to the compact rows of schema 8 (see `ledger.rs`), inside the
//! migration's transaction: every row is read as the old layout reads it
//! and written as the new one writes it, so every entry reads back the
//! same. Also the way back, for tests that start from a ledger of the old
//! layout.

use super::failure::{Failure, read_error};
use super::ledger::{self, CREATE_INDEXES, NewRow, parse_entry};
use super::rows::row_key;
use crate::StoreError;
use crate::ledger_codes::{self, ENTRY_COLUMNS, EntryRow, entry_columns};
use bursar_core::{
    Currency, EnrollmentKey, EntryKind, Hash, IdempotencyKey, LedgerEntry, Reason, Reference,
    Timestamp, Transitions,
};
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

/// Rows the upgrade reads, converts and writes at a time: a few megabytes
/// of memory, and one `INSERT` per page.
const UPGRADE_ROWS_PER_PAGE: i32 = 8192;

/// Moves every row of the JSON-layout `ledger` into `ledger_compact` (made
/// just before by the migration's SQL), drops the old table and gives the
/// new one its name and indexes. A row the old layout cannot read, or whose
/// snapshot names another enrollment or currency than its row, stops the
/// upgrade: the migration's transaction rolls back and nothing changes.
pub(super) async fn to_compact(transaction: &Transaction<'_>) -> Result<(), Failure> {
    // A server of the earlier version still running on this database must
    // not commit a row after the rows are read and before the old table is
    // dropped: its writes wait here until the upgrade commits (and then
    // fail, since the table is gone: stop such servers first).
    transaction
        .batch_execute("LOCK TABLE ledger IN EXCLUSIVE MODE")
        .await?;
    let statement = transaction
        .prepare(&format!(
            "SELECT {}, user_id, course_id, position, transitions FROM ledger \
             ORDER BY user_id, course_id, seq",
            json_layout::COLUMNS
        ))
        .await?;
    let portal = transaction.bind(&statement, &[]).await?;
    let mut moved = 0u64;
    loop {
        let page = transaction
            .query_portal(&portal, UPGRADE_ROWS_PER_PAGE)
            .await?;
        let mut read = Vec::with_capacity(page.len());
        for row in &page {
            read.push(old_row(row)?);
        }
        let rows: Vec<NewRow<'_>> = read
            .iter()
            .map(|(entry, fingerprint, position, transitions)| NewRow {
                entry,
                fingerprint,
                position: *position,
                transitions: *transitions,
            })
            .collect();
        if !rows.is_empty() {
            ledger::write(transaction, "ledger_compact", &rows).await?;
        }
        moved += rows.len() as u64;
        if page.len() < UPGRADE_ROWS_PER_PAGE as usize {
            break;
        }
    }
    // An open portal keeps the old table in use: close it first.
    drop(portal);
    transaction
        .batch_execute(&format!(
            "DROP TABLE ledger;
             ALTER TABLE ledger_compact RENAME TO ledger;
             ALTER INDEX ledger_compact_pkey RENAME TO ledger_pkey;
             {CREATE_INDEXES}"
        ))
        .await?;
    tracing::info!(
        entries = moved,
        "the ledger was upgraded to the compact layout"
    );
    Ok(())
}

/// One row of the JSON layout: its entry, fingerprint, position and
/// transitions, checked to fit a compact row.
fn old_row(row: &Row) -> Result<(LedgerEntry, Hash, u64, Transitions), Failure> {
    let user_id: &str = row.try_get(json_layout::COLUMN_COUNT)?;
    let course_id: &str = row.try_get(json_layout::COLUMN_COUNT + 1)?;
    let name = format!("{user_id}/{course_id}");
    let unreadable = |problem: String| {
        Failure::from(StoreError::Internal(format!(
            "cannot upgrade the ledger to the compact layout: {problem} ({name}); \
             nothing was changed"
        )))
    };
    let key = row_key(row, json_layout::COLUMN_COUNT).map_err(unreadable)?;
    let (entry, fingerprint) = json_layout::read(&key, row).map_err(unreadable)?;
    let position: i64 = row.try_get(json_layout::COLUMN_COUNT + 2)?;
    let transitions: i16 = row.try_get(json_layout::COLUMN_COUNT + 3)?;
    let transitions =
        ledger_codes::fits_compact_row(&key, &entry, i64::from(transitions)).map_err(unreadable)?;
    let position = u64::try_from(position)
        .map_err(|_| unreadable(format!("bad position at seq {}", entry.seq)))?;
    Ok((entry, fingerprint, position, transitions))
}

/// Rewrites a compact ledger in the JSON layout, exactly as bursar wrote it
/// before schema 8 (the same statement, the snapshot as `serde_json`
/// renders it, hex hashes), and sets the schema version to 7: for tests of
/// the upgrade, which then run on a database of that layout.
pub(crate) async fn to_json_layout(transaction: &Transaction<'_>) -> Result<(), StoreError> {
    let rows = transaction
        .query(
            concat!(
                "SELECT ",
                entry_columns!(),
                ", user_id, course_id, position, transitions FROM ledger \
                 ORDER BY user_id, course_id, seq"
            ),
            &[],
        )
        .await
        .map_err(read_error)?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let key = row_key(row, ENTRY_COLUMNS).map_err(StoreError::Internal)?;
        let (entry, fingerprint) = parse_entry(&key, row).map_err(StoreError::Internal)?;
        let position: i64 = row.try_get(ENTRY_COLUMNS + 2).map_err(read_error)?;
        let transitions: i16 = row.try_get(ENTRY_COLUMNS + 3).map_err(read_error)?;
        entries.push((entry, fingerprint, position, transitions));
    }
    transaction
        .batch_execute(json_layout::CREATE_LEDGER)
        .await
        .map_err(read_error)?;
    let text = |entries: &[(LedgerEntry, Hash, i64, i16)], get: fn(&LedgerEntry) -> String| {
        entries
            .iter()
            .map(|(entry, ..)| get(entry))
            .collect::<Vec<_>>()
    };
    let optional = |entries: &[(LedgerEntry, Hash, i64, i16)],
                    get: fn(&LedgerEntry) -> Option<String>| {
        entries
            .iter()
            .map(|(entry, ..)| get(entry))
            .collect::<Vec<_>>()
    };
    let integers = |entries: &[(LedgerEntry, Hash, i64, i16)],
                    get: fn(&LedgerEntry) -> Option<i64>| {
        entries
            .iter()
            .map(|(entry, ..)| get(entry))
            .collect::<Vec<_>>()
    };
    transaction
        .execute(
            json_layout::INSERT_ENTRIES,
            &[
                &text(&entries, |entry| entry.enrollment.user_id.to_string()),
                &text(&entries, |entry| entry.enrollment.course_id.to_string()),
                &integers(&entries, |entry| Some(entry.seq as i64)),
                &text(&entries, |entry| entry.kind.as_str().to_owned()),
                &integers(&entries, |entry| Some(entry.amount)),
                &text(&entries, |entry| entry.currency.as_str().to_owned()),
                &optional(&entries, |entry| {
                    entry
                        .idempotency_key
                        .as_ref()
                        .map(|key| key.as_str().to_owned())
                }),
                &entries
                    .iter()
                    .map(|(_, fingerprint, ..)| fingerprint.to_hex())
                    .collect::<Vec<_>>(),
                &optional(&entries, |entry| {
                    entry
                        .reference
                        .as_ref()
                        .map(|text| text.as_str().to_owned())
                }),
                &optional(&entries, |entry| {
                    entry.reason.as_ref().map(|text| text.as_str().to_owned())
                }),
                &integers(&entries, |entry| Some(entry.created_at.unix_micros())),
                &text(&entries, |entry| {
                    serde_json::to_string(&entry.enrollment).expect("an enrollment serializes")
                }),
                &text(&entries, |entry| entry.prev_hash.to_hex()),
                &text(&entries, |entry| entry.hash.to_hex()),
                &integers(&entries, |entry| entry.hold_seq.map(|seq| seq as i64)),
                &integers(&entries, |entry| {
                    entry.expires_at.map(Timestamp::unix_micros)
                }),
                &entries
                    .iter()
                    .map(|(.., position, _)| *position)
                    .collect::<Vec<_>>(),
                &entries
                    .iter()
                    .map(|(.., transitions)| *transitions)
                    .collect::<Vec<_>>(),
                &optional(&entries, |entry| {
                    entry
                        .source
                        .as_ref()
                        .map(|source| serde_json::to_string(source).expect("a source serializes"))
                }),
            ],
        )
        .await
        .map_err(read_error)?;
    transaction
        .execute(
            "DELETE FROM bursar_schema_migrations WHERE version > 7",
            &[],
        )
        .await
        .map_err(read_error)?;
    Ok(())
}

/// The rows of schemas 1 to 7, as that layout read and wrote them: kept to
/// upgrade such a ledger, and (in tests) to write one.
mod json_layout {
    use super::*;

    /// The columns `read` reads, by index.
    pub(super) const COLUMNS: &str = "seq, kind, amount, currency, idempotency_key, \
         fingerprint, reference, reason, created_at, snapshot, prev_hash, hash, hold_seq, \
         expires_at, source";

    /// How many columns `COLUMNS` names.
    pub(super) const COLUMN_COUNT: usize = 15;

    /// The ledger of schema 7 (the first migration's table with the columns
    /// and indexes the later ones added, in the order they added them),
    /// replacing the compact one.
    pub(super) const CREATE_LEDGER: &str = r#"
DROP TABLE ledger;
CREATE TABLE ledger (
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint TEXT NOT NULL,
    reference TEXT,
    reason TEXT,
    created_at BIGINT NOT NULL,
    snapshot TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    idempotency_lookup TEXT GENERATED ALWAYS AS
        (user_id || '/' || course_id || '/' || idempotency_key) STORED,
    hold_seq BIGINT,
    expires_at BIGINT,
    transitions SMALLINT NOT NULL DEFAULT 0 CHECK (transitions BETWEEN 0 AND 7),
    position BIGINT NOT NULL,
    source TEXT,
    PRIMARY KEY (user_id, course_id, seq)
);
CREATE UNIQUE INDEX ledger_idempotency_lookup ON ledger (idempotency_lookup);
CREATE UNIQUE INDEX ledger_position ON ledger (position);
"#;

    /// The statement schema 7 wrote its entries with.
    pub(super) const INSERT_ENTRIES: &str = "INSERT INTO ledger (user_id, course_id, seq, kind, \
         amount, currency, idempotency_key, fingerprint, reference, reason, created_at, snapshot, \
         prev_hash, hash, hold_seq, expires_at, position, transitions, source) \
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], \
         $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::BIGINT[], $12::TEXT[], \
         $13::TEXT[], $14::TEXT[], $15::BIGINT[], $16::BIGINT[], $17::BIGINT[], $18::SMALLINT[], \
         $19::TEXT[])";

    /// Reads the entry of a row of the JSON layout (`COLUMNS` first) and
    /// the fingerprint of the request that produced it.
    pub(super) fn read(key: &EnrollmentKey, row: &Row) -> EntryRow {
        let seq: i64 = row.try_get(0).map_err(|error| error.to_string())?;
        let bad = |what: &str| format!("ledger entry {key} seq {seq}: bad {what}");
        let text = |index: usize, what: &str| -> Result<String, String> {
            row.try_get::<_, String>(index).map_err(|_| bad(what))
        };
        let optional = |index: usize, what: &str| -> Result<Option<String>, String> {
            row.try_get::<_, Option<String>>(index)
                .map_err(|_| bad(what))
        };
        let number = |index: usize, what: &str| -> Result<i64, String> {
            row.try_get::<_, i64>(index).map_err(|_| bad(what))
        };
        let entry = LedgerEntry {
            seq: u64::try_from(seq).map_err(|_| bad("seq"))?,
            kind: EntryKind::parse(&text(1, "kind")?).ok_or_else(|| bad("kind"))?,
            amount: number(2, "amount")?,
            currency: Currency::parse(&text(3, "currency")?).map_err(|_| bad("currency"))?,
            idempotency_key: optional(4, "idempotency_key")?
                .map(|text| IdempotencyKey::parse(&text))
                .transpose()
                .map_err(|_| bad("idempotency_key"))?,
            reference: optional(6, "reference")?
                .map(|text| Reference::parse(&text))
                .transpose()
                .map_err(|_| bad("reference"))?,
            reason: optional(7, "reason")?
                .map(|text| Reason::parse(&text))
                .transpose()
                .map_err(|_| bad("reason"))?,
            created_at: Timestamp::from_unix_micros(number(8, "created_at")?),
            enrollment: serde_json::from_str(&text(9, "snapshot")?)
                .map_err(|error| bad(&format!("snapshot ({error})")))?,
            prev_hash: Hash::from_hex(&text(10, "prev_hash")?).ok_or_else(|| bad("prev_hash"))?,
            hash: Hash::from_hex(&text(11, "hash")?).ok_or_else(|| bad("hash"))?,
            hold_seq: row
                .try_get::<_, Option<i64>>(12)
                .map_err(|_| bad("hold_seq"))?
                .map(u64::try_from)
                .transpose()
                .map_err(|_| bad("hold_seq"))?,
            expires_at: row
                .try_get::<_, Option<i64>>(13)
                .map_err(|_| bad("expires_at"))?
                .map(Timestamp::from_unix_micros),
            source: optional(14, "source")?
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|_| bad("source"))?,
        };
        let fingerprint =
            Hash::from_hex(&text(5, "fingerprint")?).ok_or_else(|| bad("fingerprint"))?;
        Ok((entry, fingerprint))
    }
}
