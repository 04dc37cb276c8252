//! The SQLite ledger's compact rows (schema 8), encoded as `ledger_codes.rs`
//! says for both backends: hashes as 32-byte blobs, the kind and the
//! statuses as small integers, the snapshot as plain columns. Also the
//! upgrade of a ledger written in the JSON layout (schema 7) to this one.

use crate::StoreError;
pub(crate) use crate::ledger_codes::EntryRow;
use crate::ledger_codes::{
    self, CompactRow, ENTRY_COLUMNS, SnapshotColumns, entry_columns, kind_code, source_text,
};
use crate::sqlite::map_error;
use bursar_core::{
    CourseId, Currency, EnrollmentKey, EntryKind, Hash, IdempotencyKey, LedgerEntry, Reason,
    Reference, Timestamp, Transitions, UserId,
};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row, Statement, params};

/// The compact ledger table, its indexes, and nothing else: the shape every
/// schema-8 database has.
pub(crate) const CREATE_LEDGER: &str = r#"
CREATE TABLE ledger (
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint BLOB NOT NULL,
    reference TEXT,
    reason TEXT,
    created_at INTEGER NOT NULL,
    price INTEGER NOT NULL,
    amount_charged INTEGER NOT NULL,
    amount_paid INTEGER NOT NULL,
    amount_credited INTEGER NOT NULL,
    amount_refunded INTEGER NOT NULL,
    amount_due INTEGER NOT NULL,
    amount_held INTEGER NOT NULL,
    amount_available INTEGER,
    statuses INTEGER NOT NULL,
    access_policy_amount INTEGER,
    enrolled_at INTEGER,
    version INTEGER,
    updated_at INTEGER,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    hold_seq INTEGER,
    expires_at INTEGER,
    position INTEGER,
    transitions INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    PRIMARY KEY (user_id, course_id, seq)
) WITHOUT ROWID;
"#;

const CREATE_INDEXES: &str = r#"
CREATE UNIQUE INDEX ledger_idempotency_key
    ON ledger (user_id, course_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX ledger_position ON ledger (position);
"#;

pub(crate) const INSERT_ENTRY: &str = concat!(
    "INSERT INTO ledger (user_id, course_id, ",
    entry_columns!(),
    ", position, transitions) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
     ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)"
);

/// Writes one entry with its request fingerprint, position and transitions.
pub(crate) fn insert_entry(
    insert: &mut Statement<'_>,
    entry: &LedgerEntry,
    fingerprint: &Hash,
    position: Option<u64>,
    transitions: Transitions,
) -> Result<(), StoreError> {
    let snapshot = &entry.enrollment;
    let columns = SnapshotColumns::of(entry);
    insert
        .execute(params![
            snapshot.user_id.as_str(),
            snapshot.course_id.as_str(),
            entry.seq as i64,
            kind_code(entry.kind),
            entry.amount,
            entry.currency.as_str(),
            entry.idempotency_key.as_ref().map(IdempotencyKey::as_str),
            &fingerprint.0[..],
            entry.reference.as_ref().map(Reference::as_str),
            entry.reason.as_ref().map(Reason::as_str),
            entry.created_at.unix_micros(),
            columns.price,
            columns.amount_charged,
            columns.amount_paid,
            columns.amount_credited,
            columns.amount_refunded,
            columns.amount_due,
            columns.amount_held,
            columns.amount_available,
            columns.statuses,
            columns.access_policy_amount,
            columns.enrolled_at,
            columns.version,
            columns.updated_at,
            &entry.prev_hash.0[..],
            &entry.hash.0[..],
            entry.hold_seq.map(|seq| seq as i64),
            entry.expires_at.map(Timestamp::unix_micros),
            source_text(entry.source.as_ref()),
            position.map(|position| position as i64),
            i64::from(transitions.bits()),
        ])
        .map_err(map_error)?;
    Ok(())
}

/// A SQLite row as `ledger_codes::read_entry` reads it.
struct SqliteRow<'row, 'statement>(&'row Row<'statement>);

impl CompactRow for SqliteRow<'_, '_> {
    fn integer(&self, index: usize) -> Result<Option<i64>, ()> {
        match self.0.get_ref(index) {
            Ok(ValueRef::Null) => Ok(None),
            Ok(ValueRef::Integer(value)) => Ok(Some(value)),
            _ => Err(()),
        }
    }

    fn text(&self, index: usize) -> Result<Option<&str>, ()> {
        match self.0.get_ref(index) {
            Ok(ValueRef::Null) => Ok(None),
            Ok(ValueRef::Text(bytes)) => std::str::from_utf8(bytes).map(Some).map_err(|_| ()),
            _ => Err(()),
        }
    }

    fn bytes(&self, index: usize) -> Result<Option<&[u8]>, ()> {
        match self.0.get_ref(index) {
            Ok(ValueRef::Null) => Ok(None),
            Ok(ValueRef::Blob(bytes)) => Ok(Some(bytes)),
            _ => Err(()),
        }
    }
}

/// Reads the entry of a row whose first columns are `entry_columns!()`, of
/// the enrollment `key`. A value of the wrong type or out of range is a bad
/// row (`Err` inside), never a failed query.
pub(crate) fn read_entry(key: &EnrollmentKey, row: &Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok(ledger_codes::read_entry(key, &SqliteRow(row)))
}

/// The enrollment of a row whose `entry_columns!()` are followed by
/// `user_id, course_id`.
pub(crate) fn row_key(row: &Row<'_>) -> Result<EnrollmentKey, StoreError> {
    let user_id: String = row.get(ENTRY_COLUMNS).map_err(map_error)?;
    let course_id: String = row.get(ENTRY_COLUMNS + 1).map_err(map_error)?;
    Ok(EnrollmentKey {
        user_id: UserId::parse(&user_id)
            .map_err(|_| StoreError::Internal(format!("bad stored user_id {user_id:?}")))?,
        course_id: CourseId::parse(&course_id)
            .map_err(|_| StoreError::Internal(format!("bad stored course_id {course_id:?}")))?,
    })
}

/// Upgrades a ledger of schema 7 (hex text hashes, JSON snapshots, kinds
/// and statuses as text) to the compact rows, inside the migration's
/// transaction: every row is read as the old layout reads it and written as
/// this one writes it, then the old table goes. A row the old layout cannot
/// read stops the upgrade (nothing changes): its entry could not be kept
/// as it is.
pub(crate) fn upgrade_from_json_layout(connection: &Connection) -> Result<(), StoreError> {
    connection
        .execute_batch(
            &CREATE_LEDGER.replace("CREATE TABLE ledger (", "CREATE TABLE ledger_compact ("),
        )
        .map_err(map_error)?;
    let mut rows = 0u64;
    {
        let mut select = connection
            .prepare(
                "SELECT seq, kind, amount, currency, idempotency_key, fingerprint, reference, \
                 reason, created_at, snapshot, prev_hash, hash, hold_seq, expires_at, source, \
                 user_id, course_id, position, transitions FROM ledger ORDER BY user_id, course_id, seq",
            )
            .map_err(map_error)?;
        let mut insert = connection
            .prepare(&INSERT_ENTRY.replace("INSERT INTO ledger (", "INSERT INTO ledger_compact ("))
            .map_err(map_error)?;
        let mut query = select.query([]).map_err(map_error)?;
        while let Some(row) = query.next().map_err(map_error)? {
            let user_id: String = row.get(15).map_err(map_error)?;
            let course_id: String = row.get(16).map_err(map_error)?;
            let name = format!("{user_id}/{course_id}");
            let unreadable = |problem: String| {
                StoreError::Internal(format!(
                    "cannot upgrade the ledger to the compact layout: {problem} ({name}); \
                     nothing was changed"
                ))
            };
            let key = EnrollmentKey {
                user_id: UserId::parse(&user_id).map_err(|_| unreadable("a bad user_id".into()))?,
                course_id: CourseId::parse(&course_id)
                    .map_err(|_| unreadable("a bad course_id".into()))?,
            };
            let (entry, fingerprint) = json_layout::read(&key, row)
                .map_err(map_error)?
                .map_err(unreadable)?;
            let position: Option<i64> = row.get(17).map_err(map_error)?;
            let transitions: i64 = row.get(18).map_err(map_error)?;
            let transitions =
                ledger_codes::fits_compact_row(&key, &entry, transitions).map_err(unreadable)?;
            // A row without a position keeps none (the digest's check
            // reports such rows).
            let position = position.map(|position| position as u64);
            insert_entry(&mut insert, &entry, &fingerprint, position, transitions)?;
            rows += 1;
        }
    }
    connection
        .execute_batch("DROP TABLE ledger; ALTER TABLE ledger_compact RENAME TO ledger;")
        .map_err(map_error)?;
    connection
        .execute_batch(CREATE_INDEXES)
        .map_err(map_error)?;
    tracing::info!(
        entries = rows,
        "the ledger was upgraded to the compact layout"
    );
    Ok(())
}

/// The rows of schema 7, as that layout read them: kept to upgrade such a
/// ledger, and (in tests) to write one.
pub(crate) mod json_layout {
    use super::*;

    /// The ledger of schema 7 (the first migration's table with the columns
    /// and indexes the later ones added), replacing the compact one.
    pub(crate) const CREATE_LEDGER: &str = r#"
DROP TABLE ledger;
CREATE TABLE ledger (
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint TEXT NOT NULL,
    reference TEXT,
    reason TEXT,
    created_at INTEGER NOT NULL,
    snapshot TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    hold_seq INTEGER,
    expires_at INTEGER,
    transitions INTEGER NOT NULL DEFAULT 0,
    position INTEGER,
    source TEXT,
    PRIMARY KEY (user_id, course_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX ledger_idempotency_key
    ON ledger (user_id, course_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX ledger_position ON ledger (position);
"#;

    /// The statement schema 7 wrote its entries with.
    pub(crate) const INSERT_ENTRY: &str = "INSERT INTO ledger (user_id, course_id, seq, kind, \
         amount, currency, idempotency_key, fingerprint, reference, reason, created_at, snapshot, \
         prev_hash, hash, hold_seq, expires_at, position, transitions, source) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";

    /// Reads the entry of a schema-7 row (`seq, kind, amount, currency,
    /// idempotency_key, fingerprint, reference, reason, created_at,
    /// snapshot, prev_hash, hash, hold_seq, expires_at, source` first).
    pub(crate) fn read(key: &EnrollmentKey, row: &Row<'_>) -> rusqlite::Result<EntryRow> {
        let seq: i64 = row.get(0)?;
        let kind: String = row.get(1)?;
        let amount: i64 = row.get(2)?;
        let currency: String = row.get(3)?;
        let idempotency_key: Option<String> = row.get(4)?;
        let fingerprint: String = row.get(5)?;
        let reference: Option<String> = row.get(6)?;
        let reason: Option<String> = row.get(7)?;
        let created_at: i64 = row.get(8)?;
        let snapshot: String = row.get(9)?;
        let prev_hash: String = row.get(10)?;
        let hash: String = row.get(11)?;
        let hold_seq: Option<i64> = row.get(12)?;
        let expires_at: Option<i64> = row.get(13)?;
        let source: Option<String> = row.get(14)?;
        let bad = |what: &str| format!("ledger entry {key} seq {seq}: bad {what}");
        let parse = || -> Result<(LedgerEntry, Hash), String> {
            let entry = LedgerEntry {
                seq: u64::try_from(seq).map_err(|_| bad("seq"))?,
                kind: EntryKind::parse(&kind).ok_or_else(|| bad("kind"))?,
                amount,
                currency: Currency::parse(&currency).map_err(|_| bad("currency"))?,
                idempotency_key: idempotency_key
                    .map(|text| IdempotencyKey::parse(&text))
                    .transpose()
                    .map_err(|_| bad("idempotency_key"))?,
                reference: reference
                    .map(|text| Reference::parse(&text))
                    .transpose()
                    .map_err(|_| bad("reference"))?,
                reason: reason
                    .map(|text| Reason::parse(&text))
                    .transpose()
                    .map_err(|_| bad("reason"))?,
                hold_seq: hold_seq
                    .map(u64::try_from)
                    .transpose()
                    .map_err(|_| bad("hold_seq"))?,
                expires_at: expires_at.map(Timestamp::from_unix_micros),
                source: source
                    .map(|text| serde_json::from_str(&text))
                    .transpose()
                    .map_err(|_| bad("source"))?,
                created_at: Timestamp::from_unix_micros(created_at),
                enrollment: serde_json::from_str(&snapshot)
                    .map_err(|error| bad(&format!("snapshot ({error})")))?,
                prev_hash: Hash::from_hex(&prev_hash).ok_or_else(|| bad("prev_hash"))?,
                hash: Hash::from_hex(&hash).ok_or_else(|| bad("hash"))?,
            };
            Ok((
                entry,
                Hash::from_hex(&fingerprint).ok_or_else(|| bad("fingerprint"))?,
            ))
        };
        Ok(parse())
    }
}

/// Rewrites a compact ledger in the JSON layout of schema 7, exactly as
/// bursar wrote it before schema 8 (the same statement, the snapshot as
/// `serde_json` renders it, hex hashes), and sets the schema version to 7:
/// for tests of the upgrade, which then run on a database of that layout.
pub(crate) fn downgrade_to_json_layout(connection: &Connection) -> Result<(), StoreError> {
    let select = concat!(
        "SELECT ",
        entry_columns!(),
        ", user_id, course_id, position, transitions FROM ledger ORDER BY user_id, course_id, seq"
    );
    let mut rows = Vec::new();
    {
        let mut statement = connection.prepare(select).map_err(map_error)?;
        let mut query = statement.query([]).map_err(map_error)?;
        while let Some(row) = query.next().map_err(map_error)? {
            let key = row_key(row)?;
            let (entry, fingerprint) = read_entry(&key, row)
                .map_err(map_error)?
                .map_err(StoreError::Internal)?;
            let position: Option<i64> = row.get(ENTRY_COLUMNS + 2).map_err(map_error)?;
            let transitions: i64 = row.get(ENTRY_COLUMNS + 3).map_err(map_error)?;
            rows.push((entry, fingerprint, position, transitions));
        }
    }
    connection
        .execute_batch(json_layout::CREATE_LEDGER)
        .map_err(map_error)?;
    let mut insert = connection
        .prepare(json_layout::INSERT_ENTRY)
        .map_err(map_error)?;
    for (entry, fingerprint, position, transitions) in rows {
        insert
            .execute(params![
                entry.enrollment.user_id.as_str(),
                entry.enrollment.course_id.as_str(),
                entry.seq as i64,
                entry.kind.as_str(),
                entry.amount,
                entry.currency.as_str(),
                entry.idempotency_key.as_ref().map(IdempotencyKey::as_str),
                fingerprint.to_hex(),
                entry.reference.as_ref().map(Reference::as_str),
                entry.reason.as_ref().map(Reason::as_str),
                entry.created_at.unix_micros(),
                serde_json::to_string(&entry.enrollment).expect("an enrollment serializes"),
                entry.prev_hash.to_hex(),
                entry.hash.to_hex(),
                entry.hold_seq.map(|seq| seq as i64),
                entry.expires_at.map(Timestamp::unix_micros),
                position,
                transitions,
                entry
                    .source
                    .as_ref()
                    .map(|source| serde_json::to_string(source).expect("a source serializes")),
            ])
            .map_err(map_error)?;
    }
    connection
        .execute_batch("PRAGMA user_version = 7")
        .map_err(map_error)?;
    Ok(())
}
