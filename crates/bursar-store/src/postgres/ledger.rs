//! PostgreSQL's compact ledger rows (schema 8), encoded as
//! `ledger_codes.rs` says for both backends: hashes and fingerprints as
//! 32-byte `bytea`, the kind and the statuses as `smallint`, the snapshot as
//! `bigint` columns. The table, writing a batch's entries in one statement
//! (`INSERT` of arrays for a few, binary `COPY` for many), and reading an
//! entry back.

use super::failure::Failure;
use crate::ledger_codes::{self, CompactRow, EntryRow, SnapshotColumns, kind_code, source_text};
use bursar_core::{
    EnrollmentKey, Hash, IdempotencyKey, LedgerEntry, Reason, Reference, Timestamp, Transitions,
};
use deadpool_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Row, Statement};

/// The compact ledger, made under the name `ledger_compact` and renamed by
/// the upgrade (see `upgrade.rs`). Fixed-width columns come first so that
/// no row pads between them; the nullable ones are NULL in almost every
/// row and take no space. `idempotency_lookup` names the (enrollment,
/// idempotency key) pair in one column, looked up on its own unique index,
/// which no other index can shadow in a plan ('/' cannot occur in ids).
pub(crate) const CREATE_LEDGER: &str = r#"
CREATE TABLE ledger_compact (
    seq BIGINT NOT NULL,
    position BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    price BIGINT NOT NULL,
    amount_charged BIGINT NOT NULL,
    amount_paid BIGINT NOT NULL,
    amount_credited BIGINT NOT NULL,
    amount_refunded BIGINT NOT NULL,
    amount_due BIGINT NOT NULL,
    amount_held BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    statuses SMALLINT NOT NULL,
    transitions SMALLINT NOT NULL DEFAULT 0 CHECK (transitions BETWEEN 0 AND 7),
    amount_available BIGINT,
    access_policy_amount BIGINT,
    enrolled_at BIGINT,
    version BIGINT,
    updated_at BIGINT,
    hold_seq BIGINT,
    expires_at BIGINT,
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    idempotency_key TEXT,
    reference TEXT,
    reason TEXT,
    source TEXT,
    fingerprint BYTEA NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    idempotency_lookup TEXT GENERATED ALWAYS AS
        (user_id || '/' || course_id || '/' || idempotency_key) STORED,
    PRIMARY KEY (user_id, course_id, seq)
);
"#;

/// The indexes besides the primary key, made after the rows are in.
pub(crate) const CREATE_INDEXES: &str = r#"
CREATE UNIQUE INDEX ledger_idempotency_lookup ON ledger (idempotency_lookup);
CREATE UNIQUE INDEX ledger_position ON ledger (position);
"#;

/// Writes entries: one row of arrays, unnested by the server. The columns
/// are `user_id, course_id`, `entry_columns!()`, `position, transitions`.
const INSERT_ENTRIES: &str = "INSERT INTO ledger (user_id, course_id, seq, kind, amount, \
     currency, idempotency_key, fingerprint, reference, reason, created_at, price, \
     amount_charged, amount_paid, amount_credited, amount_refunded, amount_due, amount_held, \
     amount_available, statuses, access_policy_amount, enrolled_at, version, updated_at, \
     prev_hash, hash, hold_seq, expires_at, source, position, transitions) \
     SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::SMALLINT[], $5::BIGINT[], \
     $6::TEXT[], $7::TEXT[], $8::BYTEA[], $9::TEXT[], $10::TEXT[], $11::BIGINT[], \
     $12::BIGINT[], $13::BIGINT[], $14::BIGINT[], $15::BIGINT[], $16::BIGINT[], $17::BIGINT[], \
     $18::BIGINT[], $19::BIGINT[], $20::SMALLINT[], $21::BIGINT[], $22::BIGINT[], \
     $23::BIGINT[], $24::BIGINT[], $25::BYTEA[], $26::BYTEA[], $27::BIGINT[], $28::BIGINT[], \
     $29::TEXT[], $30::BIGINT[], $31::SMALLINT[])";

/// An entry to write with its request fingerprint, its position (the
/// first of its events) and its status transitions.
pub(crate) struct NewRow<'entry> {
    pub(crate) entry: &'entry LedgerEntry,
    pub(crate) fingerprint: &'entry Hash,
    pub(crate) position: u64,
    pub(crate) transitions: Transitions,
}

/// Entries from which a write goes by binary `COPY` rather than `INSERT`:
/// `COPY` takes one more round trip (the server's go-ahead before the rows)
/// but inserts faster. Measured with `store-writer` (see BENCHMARKS.md):
/// 1.5x `UNNEST` at 8,192 entries, even at 500, behind at 50.
const COPY_ENTRIES_MIN: usize = 1000;

/// Writes `rows` into `table` (`ledger`, or `ledger_compact` during the
/// upgrade) in one statement.
pub(crate) async fn write(
    transaction: &Transaction<'_>,
    table: &str,
    rows: &[NewRow<'_>],
) -> Result<(), Failure> {
    if rows.len() >= COPY_ENTRIES_MIN {
        copy(transaction, table, rows).await
    } else {
        insert(transaction, table, rows).await
    }
}

/// Writes `rows` as one row of arrays, unnested by the server.
async fn insert(
    transaction: &Transaction<'_>,
    table: &str,
    rows: &[NewRow<'_>],
) -> Result<(), Failure> {
    let count = rows.len();
    let mut user_ids = Vec::with_capacity(count);
    let mut course_ids = Vec::with_capacity(count);
    let mut seqs = Vec::with_capacity(count);
    let mut kinds = Vec::with_capacity(count);
    let mut amounts = Vec::with_capacity(count);
    let mut currencies = Vec::with_capacity(count);
    let mut idempotency = Vec::with_capacity(count);
    let mut fingerprints = Vec::with_capacity(count);
    let mut references = Vec::with_capacity(count);
    let mut reasons = Vec::with_capacity(count);
    let mut created = Vec::with_capacity(count);
    let mut prices = Vec::with_capacity(count);
    let mut charged = Vec::with_capacity(count);
    let mut paid = Vec::with_capacity(count);
    let mut credited = Vec::with_capacity(count);
    let mut refunded = Vec::with_capacity(count);
    let mut due = Vec::with_capacity(count);
    let mut held = Vec::with_capacity(count);
    let mut available = Vec::with_capacity(count);
    let mut statuses = Vec::with_capacity(count);
    let mut policy_amounts = Vec::with_capacity(count);
    let mut enrolled = Vec::with_capacity(count);
    let mut versions = Vec::with_capacity(count);
    let mut updated = Vec::with_capacity(count);
    let mut previous = Vec::with_capacity(count);
    let mut hashes = Vec::with_capacity(count);
    let mut hold_seqs = Vec::with_capacity(count);
    let mut expiries = Vec::with_capacity(count);
    let mut sources = Vec::with_capacity(count);
    let mut positions = Vec::with_capacity(count);
    let mut bits = Vec::with_capacity(count);
    for row in rows {
        let entry = row.entry;
        let columns = SnapshotColumns::of(entry);
        user_ids.push(entry.enrollment.user_id.as_str());
        course_ids.push(entry.enrollment.course_id.as_str());
        seqs.push(entry.seq as i64);
        kinds.push(kind_code(entry.kind));
        amounts.push(entry.amount);
        currencies.push(entry.currency.as_str());
        idempotency.push(entry.idempotency_key.as_ref().map(IdempotencyKey::as_str));
        fingerprints.push(&row.fingerprint.0[..]);
        references.push(entry.reference.as_ref().map(Reference::as_str));
        reasons.push(entry.reason.as_ref().map(Reason::as_str));
        created.push(entry.created_at.unix_micros());
        prices.push(columns.price);
        charged.push(columns.amount_charged);
        paid.push(columns.amount_paid);
        credited.push(columns.amount_credited);
        refunded.push(columns.amount_refunded);
        due.push(columns.amount_due);
        held.push(columns.amount_held);
        available.push(columns.amount_available);
        statuses.push(columns.statuses as i16);
        policy_amounts.push(columns.access_policy_amount);
        enrolled.push(columns.enrolled_at);
        versions.push(columns.version);
        updated.push(columns.updated_at);
        previous.push(&entry.prev_hash.0[..]);
        hashes.push(&entry.hash.0[..]);
        hold_seqs.push(entry.hold_seq.map(|seq| seq as i64));
        expiries.push(entry.expires_at.map(Timestamp::unix_micros));
        sources.push(source_text(entry.source.as_ref()));
        positions.push(row.position as i64);
        bits.push(i16::from(row.transitions.bits()));
    }
    let statement = prepare(transaction, INSERT_ENTRIES, "INSERT INTO", table).await?;
    transaction
        .execute(
            &statement,
            &[
                &user_ids,
                &course_ids,
                &seqs,
                &kinds,
                &amounts,
                &currencies,
                &idempotency,
                &fingerprints,
                &references,
                &reasons,
                &created,
                &prices,
                &charged,
                &paid,
                &credited,
                &refunded,
                &due,
                &held,
                &available,
                &statuses,
                &policy_amounts,
                &enrolled,
                &versions,
                &updated,
                &previous,
                &hashes,
                &hold_seqs,
                &expiries,
                &sources,
                &positions,
                &bits,
            ],
        )
        .await?;
    Ok(())
}

const COPY_ENTRIES: &str = "COPY ledger (user_id, course_id, seq, kind, amount, \
     currency, idempotency_key, fingerprint, reference, reason, created_at, price, \
     amount_charged, amount_paid, amount_credited, amount_refunded, amount_due, amount_held, \
     amount_available, statuses, access_policy_amount, enrolled_at, version, updated_at, \
     prev_hash, hash, hold_seq, expires_at, source, position, transitions) \
     FROM STDIN (FORMAT binary)";

const COPY_TYPES: [Type; 31] = [
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT2,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT2,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::BYTEA,
    Type::BYTEA,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT2,
];

/// `sql` (which names `ledger` right after `verb`) prepared for `table`:
/// cached for the ledger, once for the upgrade's table.
async fn prepare(
    transaction: &Transaction<'_>,
    sql: &str,
    verb: &str,
    table: &str,
) -> Result<Statement, Failure> {
    if table == "ledger" {
        return Ok(transaction.prepare_cached(sql).await?);
    }
    let sql = sql.replace(&format!("{verb} ledger ("), &format!("{verb} {table} ("));
    Ok(transaction.prepare(&sql).await?)
}

/// Writes `rows` by binary `COPY`: the rows stream to the server as they
/// are encoded, and the server inserts them in bulk.
async fn copy(
    transaction: &Transaction<'_>,
    table: &str,
    rows: &[NewRow<'_>],
) -> Result<(), Failure> {
    let statement = prepare(transaction, COPY_ENTRIES, "COPY", table).await?;
    let sink = transaction.copy_in(&statement).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    let mut writer = std::pin::pin!(writer);
    for row in rows {
        let entry = row.entry;
        let columns = SnapshotColumns::of(entry);
        writer
            .as_mut()
            .write(&[
                &entry.enrollment.user_id.as_str(),
                &entry.enrollment.course_id.as_str(),
                &(entry.seq as i64),
                &kind_code(entry.kind),
                &entry.amount,
                &entry.currency.as_str(),
                &entry.idempotency_key.as_ref().map(IdempotencyKey::as_str),
                &&row.fingerprint.0[..],
                &entry.reference.as_ref().map(Reference::as_str),
                &entry.reason.as_ref().map(Reason::as_str),
                &entry.created_at.unix_micros(),
                &columns.price,
                &columns.amount_charged,
                &columns.amount_paid,
                &columns.amount_credited,
                &columns.amount_refunded,
                &columns.amount_due,
                &columns.amount_held,
                &columns.amount_available,
                &(columns.statuses as i16),
                &columns.access_policy_amount,
                &columns.enrolled_at,
                &columns.version,
                &columns.updated_at,
                &&entry.prev_hash.0[..],
                &&entry.hash.0[..],
                &entry.hold_seq.map(|seq| seq as i64),
                &entry.expires_at.map(Timestamp::unix_micros),
                &source_text(entry.source.as_ref()),
                &(row.position as i64),
                &i16::from(row.transitions.bits()),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// A PostgreSQL row as `ledger_codes::read_entry` reads it: `kind`,
/// `statuses` and `transitions` are `SMALLINT`, the other integers `BIGINT`.
struct PostgresRow<'row>(&'row Row);

impl CompactRow for PostgresRow<'_> {
    fn integer(&self, index: usize) -> Result<Option<i64>, ()> {
        let column = self.0.columns().get(index).ok_or(())?;
        if *column.type_() == Type::INT2 {
            let value: Option<i16> = self.0.try_get(index).map_err(|_| ())?;
            Ok(value.map(i64::from))
        } else {
            self.0.try_get(index).map_err(|_| ())
        }
    }

    fn text(&self, index: usize) -> Result<Option<&str>, ()> {
        self.0.try_get(index).map_err(|_| ())
    }

    fn bytes(&self, index: usize) -> Result<Option<&[u8]>, ()> {
        self.0.try_get(index).map_err(|_| ())
    }
}

/// A ledger row (`entry_columns!()` first) of the enrollment `key`, and the
/// fingerprint of the request that produced it.
pub(crate) fn parse_entry(key: &EnrollmentKey, row: &Row) -> EntryRow {
    ledger_codes::read_entry(key, &PostgresRow(row))
}
