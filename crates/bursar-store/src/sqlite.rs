//! The embedded SQLite backend: one file in WAL mode, `synchronous=FULL` by
//! default, one writer connection (batches are serialized by the writer and
//! by `BEGIN IMMEDIATE`) and a small pool of reader connections.

use crate::checkpoint::Checkpointer;
use crate::events::{self, EventPage, EventQuery};
use crate::intake::{self, Dismissal, ExceptionQuery, IntakeOutcome, IntakeWrite};
use crate::ledger_codes::entry_columns;
use crate::ledger_rows::{self, EntryRow};
use crate::state_cache::StateCache;
use crate::{
    AuditReport, LEDGER_PAGE_ENTRIES_MAX, StoreError, TokenRecord, USER_ENROLLMENTS_MAX, audit_one,
};
use crate::{digest, holds};
use bursar_core::batch::{BatchInput, named_holds, plan_batch};
use bursar_core::{
    AccessPolicy, AccessStatus, CourseId, Currency, Enrollment, EnrollmentKey, EnrollmentState,
    EnrollmentStatus, Hash, Hold, IdempotencyKey, IntakeException, LedgerEntry, Outcome,
    PaymentStatus, Price, Request, StoredOperation, Timestamp, UserId,
};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Reader connections kept open between reads; more are opened under load
/// and closed after.
const READER_CONNECTIONS_IDLE_MAX: usize = 8;

/// How long opening a database keeps trying while another process holds
/// it (starting or migrating at the same moment), and the pause between
/// tries: twice the busy timeout, so a long migration elsewhere is waited
/// for.
const OPEN_RETRY_DURATION_MAX: Duration = Duration::from_secs(10);
const OPEN_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// How long a connection waits for another process's lock before the
/// operation fails as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's `synchronous` setting. `Full` fsyncs the WAL on every commit,
/// which is what makes an acknowledged operation durable across power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
    Off,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
}

impl SqliteOptions {
    /// Parses what follows `sqlite://`: a path and an optional
    /// `?synchronous=FULL|NORMAL|OFF`.
    pub fn parse(rest: &str) -> Result<SqliteOptions, StoreError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(StoreError::Config(
                "sqlite:// needs a file path, e.g. sqlite://bursar.db".into(),
            ));
        }
        let mut synchronous = Synchronous::Full;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("synchronous", value)) => {
                    synchronous = match value.to_ascii_uppercase().as_str() {
                        "FULL" => Synchronous::Full,
                        "NORMAL" => Synchronous::Normal,
                        "OFF" => Synchronous::Off,
                        _ => {
                            return Err(StoreError::Config(format!(
                                "synchronous must be FULL, NORMAL or OFF, not {value:?}"
                            )));
                        }
                    }
                }
                _ => {
                    return Err(StoreError::Config(format!(
                        "unknown SQLite option {pair:?}; the one option is synchronous"
                    )));
                }
            }
        }
        Ok(SqliteOptions {
            path: PathBuf::from(path),
            synchronous,
        })
    }
}

struct Inner {
    options: SqliteOptions,
    writer: Mutex<Connection>,
    /// The enrollment states the writer committed last (see `state_cache`);
    /// locked only while the writer's lock is held.
    states: Mutex<StateCache>,
    readers: Mutex<Vec<Connection>>,
    /// The device and inode of the database file when it was opened: the
    /// file every batch is written to.
    identity: FileIdentity,
    /// Why writes stopped, once the file at the path is no longer the one
    /// written to (removed, or replaced by another file). While set, no batch
    /// runs: it would commit into a file nobody will ever read again.
    lost: Mutex<Option<String>>,
    /// A batch failed with a storage fault and no batch has succeeded since:
    /// the next success checkpoints and truncates the WAL.
    faulted: AtomicBool,
    /// Checkpoints the WAL outside the writer's commits.
    checkpointer: Checkpointer,
}

/// A file's device and inode: what names one file whatever its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> std::io::Result<FileIdentity> {
        let metadata = std::fs::metadata(path)?;
        Ok(FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }
}

impl Inner {
    /// One `stat` of the configured path: `Err` with the reason when the file
    /// there is not the one this store opened.
    fn check_identity(&self) -> Result<(), String> {
        let path = self.options.path.display();
        match FileIdentity::of(&self.options.path) {
            Ok(identity) if identity == self.identity => Ok(()),
            Ok(_) => Err(format!(
                "the database file {path} was replaced by another file; writes stopped so \
                 that nothing is acknowledged into the old one: put the file back or restart bursar"
            )),
            Err(error) => Err(format!(
                "the database file {path} is gone ({error}); writes stopped so that nothing is \
                 acknowledged into a deleted file: restore it and restart bursar"
            )),
        }
    }

    /// Refuses when the file is known lost, unless it is back (moved back
    /// to its path): then writes resume.
    fn refuse_if_lost(&self) -> Result<(), StoreError> {
        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        if lost.is_none() {
            return Ok(());
        }
        match self.check_identity() {
            Ok(()) => {
                tracing::warn!(path = %self.options.path.display(), "the database file is back; writes resume");
                *lost = None;
                Ok(())
            }
            Err(reason) => {
                *lost = Some(reason.clone());
                Err(StoreError::Storage(reason))
            }
        }
    }

    /// After a commit: confirms the batch went into the file at the path.
    /// If not, the batch must not be acknowledged, and no later one runs.
    fn confirm_identity(&self) -> Result<(), StoreError> {
        self.check_identity().map_err(|reason| {
            tracing::error!(%reason, "the database file is not the one written to");
            *self.lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
            StoreError::Storage(reason)
        })
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: copies the WAL into the database and
/// truncates it to zero bytes, so the space a failed or finished burst of
/// writes held in the WAL is free again.
fn checkpoint_truncate(connection: &Connection) -> Result<(), StoreError> {
    let busy: i64 = connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .map_err(map_error)?;
    if busy != 0 {
        // A reader still needs the old frames; the next checkpoint frees them.
        tracing::debug!("the WAL checkpoint was blocked by a reader");
    }
    Ok(())
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: copies what it can of the WAL into the
/// database without waiting for readers.
fn checkpoint_passive(connection: &Connection) -> Result<(), StoreError> {
    connection
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(map_error)?;
    Ok(())
}

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// One schema migration: SQL, or code for what SQL cannot do.
enum Migration {
    Sql(&'static str),
    Code(fn(&Connection) -> Result<(), StoreError>),
}

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit one that has shipped: add another.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(
        r#"
CREATE TABLE enrollments (
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    price INTEGER NOT NULL,
    amount_charged INTEGER NOT NULL,
    amount_paid INTEGER NOT NULL,
    amount_credited INTEGER NOT NULL,
    amount_refunded INTEGER NOT NULL,
    amount_due INTEGER NOT NULL,
    payment_status TEXT NOT NULL,
    access_policy_kind TEXT NOT NULL,
    access_policy_amount INTEGER,
    access_status TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    PRIMARY KEY (user_id, course_id)
) WITHOUT ROWID;

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
    PRIMARY KEY (user_id, course_id, seq)
) WITHOUT ROWID;

CREATE UNIQUE INDEX ledger_idempotency_key
    ON ledger (user_id, course_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE api_tokens (
    token_hash BLOB PRIMARY KEY,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    ),
    Migration::Sql(
        r#"
-- Token lifecycle: a public id to list and revoke a token by, an optional
-- expiry, and the time of revocation. Tokens made before get a random id.
ALTER TABLE api_tokens ADD COLUMN id TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;
UPDATE api_tokens SET id = 'tok_' || lower(hex(randomblob(8))) WHERE id IS NULL;
CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id);
"#,
    ),
    Migration::Sql(
        r#"
-- Holds: the enrollment's held sum, each entry's hold, and one row per hold
-- (see holds.rs). Rows written before this migration hold nothing.
ALTER TABLE enrollments ADD COLUMN amount_held INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN hold_seq INTEGER;
ALTER TABLE ledger ADD COLUMN expires_at INTEGER;

CREATE TABLE holds (
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    hold_seq INTEGER NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    expires_at INTEGER NOT NULL,
    reference TEXT,
    state TEXT NOT NULL CHECK (state IN ('OPEN', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    PRIMARY KEY (user_id, course_id, hold_seq)
) WITHOUT ROWID;

CREATE INDEX holds_open_by_enrollment ON holds (user_id, course_id) WHERE state = 'OPEN';
CREATE INDEX holds_open_by_expiry ON holds (expires_at) WHERE state = 'OPEN';
"#,
    ),
    Migration::Sql(
        r#"
-- Events (see events.rs): each entry's status transitions (1 paid in full,
-- 2 access granted, 4 access revoked) and its place in the global order.
-- Entries written before get both, derived from their snapshots, in the
-- order they were written.
ALTER TABLE ledger ADD COLUMN transitions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN position INTEGER;

UPDATE ledger SET transitions = changed.bits FROM (
    SELECT user_id, course_id, seq,
        (CASE WHEN paid = 'COMPLETED' AND coalesce(paid_before, '') <> 'COMPLETED' THEN 1 ELSE 0 END)
        + (CASE WHEN access = 'GRANTED' AND coalesce(access_before, '') <> 'GRANTED' THEN 2 ELSE 0 END)
        + (CASE WHEN access <> 'GRANTED' AND coalesce(access_before, '') = 'GRANTED' THEN 4 ELSE 0 END)
        AS bits
    FROM (
        SELECT user_id, course_id, seq,
            json_extract(snapshot, '$.payment_status') AS paid,
            json_extract(snapshot, '$.access_status') AS access,
            lag(json_extract(snapshot, '$.payment_status'))
                OVER (PARTITION BY user_id, course_id ORDER BY seq) AS paid_before,
            lag(json_extract(snapshot, '$.access_status'))
                OVER (PARTITION BY user_id, course_id ORDER BY seq) AS access_before
        FROM ledger
    )
) AS changed
WHERE ledger.user_id = changed.user_id AND ledger.course_id = changed.course_id
    AND ledger.seq = changed.seq AND changed.bits <> 0;

UPDATE ledger SET position = placed.position FROM (
    SELECT user_id, course_id, seq,
        sum(events) OVER (ORDER BY created_at, user_id, course_id, seq
            ROWS UNBOUNDED PRECEDING) - events + 1 AS position
    FROM (
        SELECT user_id, course_id, seq, created_at,
            1 + (kind = 'CAPTURE') + (transitions & 1) + ((transitions >> 1) & 1)
                + ((transitions >> 2) & 1) AS events
        FROM ledger
    )
) AS placed
WHERE ledger.user_id = placed.user_id AND ledger.course_id = placed.course_id
    AND ledger.seq = placed.seq;

CREATE UNIQUE INDEX ledger_position ON ledger (position);
"#,
    ),
    Migration::Sql(
        r#"
-- Webhooks (see webhooks.rs): the endpoints with their cursor, lease and
-- generation; the events waiting for a retry; the log of attempts, kept to
-- the newest per endpoint.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    types TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_after INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('ACTIVE', 'FAILING')),
    failing_since INTEGER,
    generation INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER NOT NULL,
    attempts_logged INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE webhook_pending (
    endpoint_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, position)
) WITHOUT ROWID;

CREATE TABLE webhook_attempts (
    endpoint_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    latency_ms INTEGER NOT NULL,
    error TEXT,
    at INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, n)
) WITHOUT ROWID;
"#,
    ),
    Migration::Sql(
        r#"
-- Payment intake (see intake.rs): the processor's event on each entry taken
-- from one, the links from a processor's payment objects to their
-- enrollment, and the exceptions, each with its place in the global event
-- order beside the ledger's.
ALTER TABLE ledger ADD COLUMN source TEXT;

CREATE TABLE intake_links (
    processor TEXT NOT NULL,
    object_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    PRIMARY KEY (processor, object_id)
) WITHOUT ROWID;

CREATE TABLE intake_exceptions (
    id TEXT PRIMARY KEY,
    processor TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('OPEN', 'RESOLVED', 'DISMISSED')),
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    user_id TEXT,
    course_id TEXT,
    received_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    next_retry_at INTEGER,
    dismiss_reason TEXT,
    position INTEGER NOT NULL,
    event TEXT NOT NULL
) WITHOUT ROWID;

CREATE UNIQUE INDEX intake_exceptions_position ON intake_exceptions (position);
CREATE INDEX intake_exceptions_by_state ON intake_exceptions (state, position);
CREATE INDEX intake_exceptions_due ON intake_exceptions (next_retry_at) WHERE state = 'OPEN';
"#,
    ),
    Migration::Sql(
        r#"
-- Event publishers (see publishers.rs): how far each has delivered the feed,
-- and which server holds its lease until when (Unix microseconds).
CREATE TABLE event_publishers (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER NOT NULL
);
"#,
    ),
    // The compact ledger (see ledger_rows.rs): hashes as blobs, the
    // snapshot as columns; every entry rewritten as it reads.
    Migration::Code(ledger_rows::upgrade_from_json_layout),
];

/// Sorts SQLite's errors: another process holding the lock is
/// `Unavailable`; the medium refusing a write (full, read-only, permission,
/// I/O, a file that cannot be opened) is a `Storage` fault; the rest
/// (constraint violations, corruption, misuse) are `Internal`: bugs.
pub(crate) fn map_error(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let rusqlite::Error::SqliteFailure(failure, _) = &error else {
        return StoreError::Internal(error.to_string());
    };
    match failure.code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
            StoreError::Unavailable(error.to_string())
        }
        ErrorCode::DiskFull
        | ErrorCode::ReadOnly
        | ErrorCode::SystemIoFailure
        | ErrorCode::PermissionDenied
        | ErrorCode::CannotOpen
        | ErrorCode::FileLockingProtocolFailed
        | ErrorCode::NoLargeFileSupport => StoreError::Storage(error.to_string()),
        _ => StoreError::Internal(error.to_string()),
    }
}

/// Page cache of the one writer connection: the hot pages of the ledger's
/// tail and of the idempotency index stay in memory; colder pages come from
/// the operating system's file cache.
const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// Page cache of each reader connection: reads are point lookups and ledger
/// pages, well served by the operating system's file cache, and there may be
/// several readers, so each keeps little.
const READER_CACHE_KIB: u32 = 4 * 1024;

/// Opens the writer (`create`: may create the file) or a reader.
pub(crate) fn open_connection(
    options: &SqliteOptions,
    create: bool,
) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let connection = Connection::open_with_flags(&options.path, flags).map_err(|error| {
        StoreError::Storage(format!("cannot open {}: {error}", options.path.display()))
    })?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(map_error)?;
    // The query planner's stability guarantee: a statement's plan does not
    // depend on the values bound to it. Without it, this SQLite prepares a
    // cached statement again (parse and plan) every time a different value
    // is bound to a `LIMIT ?` — the feed, the ledger's pages, the intake's
    // exceptions — which cost the server about a tenth of its CPU under
    // load with the event feed read by webhook deliveries.
    connection
        .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(map_error)?;
    let cache_kib = if create {
        WRITER_CACHE_KIB
    } else {
        READER_CACHE_KIB
    };
    let synchronous = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
        Synchronous::Off => "OFF",
    };
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA cache_size = -{cache_kib}; PRAGMA temp_store = MEMORY;"
        ))
        .map_err(map_error)?;
    Ok(connection)
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_error)?;
    let applied: i64 = transaction
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(map_error)?;
    let applied = usize::try_from(applied)
        .map_err(|_| StoreError::Config("negative schema version".into()))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Config(format!(
            "the database has schema version {applied}, newer than this bursar knows ({}); upgrade bursar",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        match migration {
            Migration::Sql(sql) => transaction.execute_batch(sql).map_err(map_error)?,
            Migration::Code(step) => step(&transaction)?,
        }
        transaction
            .execute_batch(&format!("PRAGMA user_version = {}", index + 1))
            .map_err(map_error)?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    transaction.commit().map_err(map_error)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Internal(format!("storage task failed: {error}")))?
}

impl SqliteStore {
    pub async fn open(options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        blocking(move || {
            // Processes starting at once on a new file race to switch it to
            // WAL, and SQLite refuses the loser at once (no busy wait there):
            // it tries again, as a later start would.
            let started = std::time::Instant::now();
            let writer = loop {
                let attempt = open_connection(&options, true).and_then(|mut writer| {
                    migrate(&mut writer)?;
                    Ok(writer)
                });
                match attempt {
                    Err(StoreError::Unavailable(_))
                        if started.elapsed() < OPEN_RETRY_DURATION_MAX =>
                    {
                        std::thread::sleep(OPEN_RETRY_PAUSE);
                    }
                    other => break other?,
                }
            };
            let identity = FileIdentity::of(&options.path).map_err(|error| {
                StoreError::Storage(format!("cannot stat {}: {error}", options.path.display()))
            })?;
            let mut writer = writer;
            let checkpointer = Checkpointer::start(&options, &mut writer)?;
            Ok(SqliteStore {
                inner: Arc::new(Inner {
                    options,
                    writer: Mutex::new(writer),
                    states: Mutex::new(StateCache::default()),
                    readers: Mutex::new(Vec::new()),
                    identity,
                    lost: Mutex::new(None),
                    faulted: AtomicBool::new(false),
                    checkpointer,
                }),
            })
        })
        .await
    }

    pub fn path(&self) -> &Path {
        &self.inner.options.path
    }

    /// Runs `work` on the writer connection, between batches, on the
    /// blocking pool: for small writes besides the ledger's (webhook state,
    /// intake exceptions dismissed, the publishers' cursors); refused once
    /// the file is lost.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            inner.refuse_if_lost()?;
            work(&mut writer)
        })
        .await
    }

    /// Runs `work` on a pooled reader connection on the blocking pool.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let connection = match pooled {
                Some(connection) => connection,
                None => open_connection(&inner.options, false)?,
            };
            let result = work(&connection);
            let mut readers = inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if readers.len() < READER_CONNECTIONS_IDLE_MAX {
                readers.push(connection);
            }
            result
        })
        .await
    }

    pub async fn execute(
        &self,
        requests: Vec<Request>,
        now: Timestamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        Ok(self.execute_with_intake(requests, Vec::new(), now).await?.0)
    }

    /// `execute` with the intake's writes riding in the same transaction.
    pub async fn execute_with_intake(
        &self,
        requests: Vec<Request>,
        writes: Vec<IntakeWrite>,
        now: Timestamp,
    ) -> Result<(Vec<Outcome>, Vec<IntakeOutcome>), StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            // A panic during an earlier batch dropped (and so rolled back) its
            // transaction: the connection is safe to use again.
            let mut writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            inner.refuse_if_lost()?;
            let mut states = inner.states.lock().unwrap_or_else(PoisonError::into_inner);
            let result = execute_batch(&mut writer, &mut states, &requests, &writes, now);
            if result.is_err() {
                states.clear();
            }
            match result {
                Ok(outcomes) => {
                    // One `stat` per batch, after the commit and before any
                    // answer: a batch committed into a removed or replaced
                    // file is not acknowledged.
                    if let Err(error) = inner.confirm_identity() {
                        states.clear();
                        return Err(error);
                    }
                    if inner.faulted.swap(false, Ordering::Relaxed) {
                        tracing::info!("writes succeed again after a storage fault");
                        if let Err(error) = checkpoint_truncate(&writer) {
                            tracing::warn!(%error, "cannot checkpoint the WAL after recovering");
                        }
                    } else if inner.checkpointer.committed() {
                        // The background fell behind: checkpoint here, as
                        // SQLite's autocheckpoint would have.
                        if let Err(error) = checkpoint_passive(&writer) {
                            tracing::warn!(%error, "cannot checkpoint a large WAL");
                        }
                    }
                    Ok(outcomes)
                }
                Err(error @ StoreError::Storage(_)) => {
                    inner.faulted.store(true, Ordering::Relaxed);
                    // Frees what the WAL holds, if the database file can take
                    // it; on a full disk this fails too, and the probe
                    // tries again.
                    if let Err(error) = checkpoint_truncate(&writer) {
                        tracing::debug!(%error, "cannot checkpoint the WAL after a storage fault");
                    }
                    Err(error)
                }
                Err(error) => Err(error),
            }
        })
        .await
    }

    pub async fn exception(&self, id: String) -> Result<Option<IntakeException>, StoreError> {
        self.read(move |connection| intake::sqlite::one(connection, &id))
            .await
    }

    pub async fn exceptions(
        &self,
        query: ExceptionQuery,
    ) -> Result<Vec<IntakeException>, StoreError> {
        self.read(move |connection| intake::sqlite::list(connection, &query))
            .await
    }

    pub async fn due_exceptions(&self, now: Timestamp) -> Result<Vec<IntakeException>, StoreError> {
        self.read(move |connection| intake::sqlite::due(connection, now))
            .await
    }

    pub async fn dismiss_exception(
        &self,
        id: String,
        reason: String,
        now: Timestamp,
    ) -> Result<Dismissal, StoreError> {
        self.write(move |connection| intake::sqlite::dismiss(connection, &id, &reason, now))
            .await
    }

    pub async fn intake_link(
        &self,
        processor: String,
        objects: Vec<String>,
    ) -> Result<Option<EnrollmentKey>, StoreError> {
        self.read(move |connection| intake::sqlite::link(connection, &processor, &objects))
            .await
    }

    /// See [`crate::Store::probe_write`]: the file's identity, a truncating
    /// checkpoint, and one committed write of the schema version (rewritten
    /// with its own value, so it changes nothing but must reach the disk).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            inner.refuse_if_lost()?;
            inner.confirm_identity()?;
            checkpoint_truncate(&writer)?;
            let transaction = writer
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_error)?;
            let version: i64 = transaction
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .map_err(map_error)?;
            transaction
                .execute_batch(&format!("PRAGMA user_version = {version}"))
                .map_err(map_error)?;
            transaction.commit().map_err(map_error)?;
            inner.confirm_identity()?;
            inner.faulted.store(false, Ordering::Relaxed);
            Ok(())
        })
        .await
    }

    pub async fn enrollment(&self, key: &EnrollmentKey) -> Result<Option<Enrollment>, StoreError> {
        let key = key.clone();
        self.read(move |connection| Ok(load_state(connection, &key)?.map(|state| state.enrollment)))
            .await
    }

    pub async fn enrollments_of(&self, user_id: &UserId) -> Result<Vec<Enrollment>, StoreError> {
        let user_id = user_id.clone();
        self.read(move |connection| {
            let mut statement = connection
                .prepare_cached(SELECT_USER_ENROLLMENTS)
                .map_err(map_error)?;
            let rows = statement
                .query_map(
                    params![user_id.as_str(), USER_ENROLLMENTS_MAX as i64],
                    read_enrollment_row,
                )
                .map_err(map_error)?;
            let mut enrollments = Vec::new();
            for row in rows {
                enrollments.push(checked_state(row.map_err(map_error)?)?.enrollment);
            }
            Ok(enrollments)
        })
        .await
    }

    pub async fn ledger(
        &self,
        key: &EnrollmentKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let key = key.clone();
        let limit = limit.min(LEDGER_PAGE_ENTRIES_MAX);
        self.read(move |connection| {
            load_entries(connection, &key, after, limit)?
                .into_iter()
                .map(|row| row.map(|(entry, _)| entry).map_err(StoreError::Internal))
                .collect()
        })
        .await
    }

    pub async fn events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        self.read(move |connection| events::sqlite::read(connection, &query))
            .await
    }

    pub async fn event_head(&self) -> Result<u64, StoreError> {
        self.read(events::sqlite::head).await
    }

    pub async fn digest(&self, now: Timestamp) -> Result<bursar_core::Digest, StoreError> {
        self.read(move |connection| digest::sqlite::take(connection, now))
            .await
    }

    pub async fn check_digest(
        &self,
        expected: bursar_core::Digest,
    ) -> Result<bursar_core::DigestCheck, StoreError> {
        self.read(move |connection| digest::sqlite::check(connection, &expected))
            .await
    }

    pub async fn open_holds(&self, key: &EnrollmentKey) -> Result<Vec<Hold>, StoreError> {
        let key = key.clone();
        self.read(move |connection| holds::sqlite::open(connection, &key))
            .await
    }

    pub async fn expired_holds(&self, now: Timestamp) -> Result<Vec<EnrollmentKey>, StoreError> {
        self.read(move |connection| holds::sqlite::expired(connection, now))
            .await
    }

    pub async fn audit(&self) -> Result<AuditReport, StoreError> {
        self.read(|connection| {
            // One read transaction: the audit sees one consistent snapshot,
            // however many batches commit while it runs.
            let snapshot = connection.unchecked_transaction().map_err(map_error)?;
            let report = audit(&snapshot)?;
            snapshot.finish().map_err(map_error)?;
            Ok(report)
        })
        .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached(SELECT_TOKENS)
                .map_err(map_error)?;
            let rows = statement.query_map([], read_token_row).map_err(map_error)?;
            let mut tokens = Vec::new();
            for row in rows {
                tokens.push(token_record(row.map_err(map_error)?)?);
            }
            Ok(tokens)
        })
        .await
    }

    pub async fn insert_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer
                .execute(
                    "INSERT INTO api_tokens (id, token_hash, role, created_at, expires_at, revoked_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        token.id,
                        &token.token_hash[..],
                        token.role,
                        token.created_at.unix_micros(),
                        token.expires_at.map(Timestamp::unix_micros),
                        token.revoked_at.map(Timestamp::unix_micros),
                    ],
                )
                .map_err(map_error)?;
            Ok(())
        })
        .await
    }

    pub async fn revoke_token(
        &self,
        id: String,
        now: Timestamp,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer
                .execute(
                    "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, now.unix_micros()],
                )
                .map_err(map_error)?;
            let row = writer
                .query_row(
                    &format!("{SELECT_TOKENS_FROM} WHERE id = ?1"),
                    params![id],
                    read_token_row,
                )
                .optional()
                .map_err(map_error)?;
            row.map(token_record).transpose()
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|connection| {
            connection
                .query_row("SELECT 1", [], |_| Ok(()))
                .map_err(map_error)
        })
        .await
    }

    pub async fn backup(&self, destination: &Path) -> Result<(), StoreError> {
        let destination = destination.to_path_buf();
        if destination.exists() {
            return Err(StoreError::Config(format!(
                "{} exists already; backup never overwrites",
                destination.display()
            )));
        }
        self.read(move |connection| {
            let target = destination
                .to_str()
                .ok_or_else(|| StoreError::Config("the backup path must be UTF-8".into()))?;
            connection
                .execute("VACUUM INTO ?1", params![target])
                .map_err(map_error)?;
            Ok(())
        })
        .await
    }
}

const SELECT_TOKENS_FROM: &str =
    "SELECT id, token_hash, role, created_at, expires_at, revoked_at FROM api_tokens";

const SELECT_TOKENS: &str = "SELECT id, token_hash, role, created_at, expires_at, revoked_at \
     FROM api_tokens ORDER BY created_at, id";

/// The columns of a token row, as read.
type TokenRow = (
    Option<String>,
    Vec<u8>,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

fn read_token_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn token_record(
    (id, hash, role, created_at, expires_at, revoked_at): TokenRow,
) -> Result<TokenRecord, StoreError> {
    let token_hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Internal("a stored token hash is not 32 bytes".into()))?;
    Ok(TokenRecord {
        id: id.ok_or_else(|| StoreError::Internal("a stored token has no id".into()))?,
        token_hash,
        role,
        created_at: Timestamp::from_unix_micros(created_at),
        expires_at: expires_at.map(Timestamp::from_unix_micros),
        revoked_at: revoked_at.map(Timestamp::from_unix_micros),
    })
}

/// One batch, one `BEGIN IMMEDIATE … COMMIT`, one fsync of the WAL: the
/// plain requests' outcomes, and each intake write's (see `intake.rs`).
fn execute_batch(
    connection: &mut Connection,
    cache: &mut StateCache,
    plain: &[Request],
    writes: &[IntakeWrite],
    now: Timestamp,
) -> Result<(Vec<Outcome>, Vec<IntakeOutcome>), StoreError> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_error)?;
    let existing = if writes.is_empty() {
        HashMap::new()
    } else {
        intake::sqlite::load(&transaction, &intake::exception_ids(writes))?
    };
    cache.check(&transaction)?;
    let mut prepared = intake::prepare(plain, writes, &existing);
    let requests: &[Request] = &prepared.requests;
    let mut input = BatchInput::default();
    let named = named_holds(requests);
    // The enrollments and the keys the batch names, each once and in key
    // order, borrowed: a batch of thousands into one enrollment clones
    // nothing here.
    for key in distinct(requests.iter().map(|request| &request.key)) {
        let state = match cache.take(key) {
            Some(state) => Some(state),
            None => load_state(&transaction, key)?,
        };
        if let Some(mut state) = state {
            let seqs = named
                .iter()
                .filter(|(named_key, _)| named_key == key)
                .map(|(_, seq)| *seq);
            holds::sqlite::load_into(&transaction, &mut state, seqs)?;
            input.states.insert(key.clone(), state);
        }
    }
    let keyed = requests
        .iter()
        .filter_map(|request| Some((&request.key, request.idempotency_key.as_ref()?)));
    for (key, idempotency_key) in distinct(keyed) {
        if input.states.contains_key(key)
            && let Some(stored) = load_stored(&transaction, key, idempotency_key)?
        {
            input
                .stored
                .insert((key.clone(), idempotency_key.clone()), stored);
        }
    }
    let versions_before: HashMap<EnrollmentKey, u64> = input
        .states
        .iter()
        .map(|(key, state)| (key.clone(), state.enrollment.version))
        .collect();
    input.intake = std::mem::take(&mut prepared.intake);
    let plan = plan_batch(input, requests, now);
    for state in &plan.changed {
        let key = state.enrollment.key();
        match versions_before.get(&key) {
            None => insert_enrollment(&transaction, state)?,
            Some(version) => update_enrollment(&transaction, state, *version)?,
        }
    }
    let mut settled = intake::settle(prepared, writes, plan.outcomes, existing, now)?;
    {
        let mut position = if plan.new_entries.is_empty() && settled.new_exceptions() == 0 {
            0
        } else {
            events::sqlite::next_position(&transaction)?
        };
        let mut insert = transaction
            .prepare_cached(ledger_rows::INSERT_ENTRY)
            .map_err(map_error)?;
        for ((entry, fingerprint), transitions) in plan.new_entries.iter().zip(&plan.transitions) {
            let entry_position = position;
            position = events::position_after(position, entry, *transitions);
            ledger_rows::insert_entry(
                &mut insert,
                entry,
                fingerprint,
                Some(entry_position),
                *transitions,
            )?;
        }
        // The new exceptions take the positions after the batch's entries.
        settled.place(position);
    }
    holds::sqlite::write(&transaction, &plan.new_entries)?;
    intake::sqlite::write(&transaction, &settled)?;
    transaction.commit().map_err(map_error)?;
    cache.keep(plan.changed);
    Ok((settled.plain, settled.outcomes))
}

/// `items` each once, in order.
fn distinct<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.collect();
    items.sort_unstable();
    items.dedup();
    items
}

/// The columns of an enrollment row, in the order `read_enrollment_row`
/// reads them. Macros rather than constants, so the statements below are
/// whole literals: preparing a cached statement then costs no formatting.
macro_rules! enrollment_columns {
    () => {
        "user_id, course_id, currency, price, amount_charged, amount_paid, \
         amount_credited, amount_refunded, amount_due, payment_status, access_policy_kind, \
         access_policy_amount, access_status, status, version, created_at, updated_at, last_hash, \
         amount_held"
    };
}

const SELECT_ENROLLMENT: &str = concat!(
    "SELECT ",
    enrollment_columns!(),
    " FROM enrollments WHERE user_id = ?1 AND course_id = ?2"
);

const SELECT_USER_ENROLLMENTS: &str = concat!(
    "SELECT ",
    enrollment_columns!(),
    " FROM enrollments WHERE user_id = ?1 ORDER BY course_id LIMIT ?2"
);

const INSERT_ENROLLMENT: &str = concat!(
    "INSERT INTO enrollments (",
    enrollment_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
);

const SELECT_ENTRIES_AFTER: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger WHERE user_id = ?1 AND course_id = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
);

const SELECT_STORED: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger WHERE user_id = ?1 AND course_id = ?2 AND idempotency_key = ?3"
);

const SELECT_ALL_ENTRIES: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM ledger WHERE user_id = ?1 AND course_id = ?2 ORDER BY seq"
);

/// The raw columns of an enrollment row, before validation.
struct EnrollmentRow {
    user_id: String,
    course_id: String,
    currency: String,
    amounts: [i64; 6],
    payment_status: String,
    policy_kind: String,
    policy_amount: Option<i64>,
    access_status: String,
    status: String,
    version: i64,
    created_at: i64,
    updated_at: i64,
    last_hash: String,
    amount_held: i64,
}

fn read_enrollment_row(row: &Row<'_>) -> rusqlite::Result<EnrollmentRow> {
    Ok(EnrollmentRow {
        user_id: row.get(0)?,
        course_id: row.get(1)?,
        currency: row.get(2)?,
        amounts: [
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
            row.get(8)?,
        ],
        payment_status: row.get(9)?,
        policy_kind: row.get(10)?,
        policy_amount: row.get(11)?,
        access_status: row.get(12)?,
        status: row.get(13)?,
        version: row.get(14)?,
        created_at: row.get(15)?,
        updated_at: row.get(16)?,
        last_hash: row.get(17)?,
        amount_held: row.get(18)?,
    })
}

fn parse_state(row: EnrollmentRow) -> Result<EnrollmentState, String> {
    let [
        price,
        amount_charged,
        amount_paid,
        amount_credited,
        amount_refunded,
        amount_due,
    ] = row.amounts;
    let bad = |what: &str| format!("enrollment {}/{}: bad {what}", row.user_id, row.course_id);
    let access_policy = match row.policy_kind.as_str() {
        "FULL_PAYMENT" => AccessPolicy::FullPayment,
        "MIN_SETTLED" => AccessPolicy::MinSettled {
            amount: Price::new(i128::from(
                row.policy_amount.ok_or_else(|| bad("policy amount"))?,
            ))
            .map_err(|_| bad("policy amount"))?,
        },
        _ => return Err(bad("access policy")),
    };
    let enrollment = Enrollment {
        user_id: UserId::parse(&row.user_id).map_err(|_| bad("user_id"))?,
        course_id: CourseId::parse(&row.course_id).map_err(|_| bad("course_id"))?,
        currency: Currency::parse(&row.currency).map_err(|_| bad("currency"))?,
        price,
        amount_charged,
        amount_paid,
        amount_credited,
        amount_refunded,
        amount_due,
        amount_held: row.amount_held,
        amount_available: amount_due.saturating_sub(row.amount_held),
        payment_status: PaymentStatus::parse(&row.payment_status)
            .ok_or_else(|| bad("payment_status"))?,
        access_policy,
        access_status: AccessStatus::parse(&row.access_status)
            .ok_or_else(|| bad("access_status"))?,
        status: EnrollmentStatus::parse(&row.status).ok_or_else(|| bad("status"))?,
        version: u64::try_from(row.version).map_err(|_| bad("version"))?,
        created_at: Timestamp::from_unix_micros(row.created_at),
        updated_at: Timestamp::from_unix_micros(row.updated_at),
    };
    let last_hash = Hash::from_hex(&row.last_hash).ok_or_else(|| bad("last_hash"))?;
    Ok(EnrollmentState::new(enrollment, last_hash))
}

/// Parses a row and asserts the money invariants on what was read back: a
/// broken one is corruption or a bug, never something to serve or build on.
fn checked_state(row: EnrollmentRow) -> Result<EnrollmentState, StoreError> {
    let state = parse_state(row).map_err(StoreError::Internal)?;
    state.enrollment.check().map_err(|broken| {
        StoreError::Internal(format!(
            "enrollment {} breaks an invariant: {broken}",
            state.enrollment.key()
        ))
    })?;
    Ok(state)
}

fn load_state(
    connection: &Connection,
    key: &EnrollmentKey,
) -> Result<Option<EnrollmentState>, StoreError> {
    let mut statement = connection
        .prepare_cached(SELECT_ENROLLMENT)
        .map_err(map_error)?;
    let row = statement
        .query_row(
            params![key.user_id.as_str(), key.course_id.as_str()],
            read_enrollment_row,
        )
        .optional()
        .map_err(map_error)?;
    row.map(checked_state).transpose()
}

fn policy_columns(policy: &AccessPolicy) -> (&'static str, Option<i64>) {
    match policy {
        AccessPolicy::FullPayment => ("FULL_PAYMENT", None),
        AccessPolicy::MinSettled { amount } => ("MIN_SETTLED", Some(amount.minor_units())),
    }
}

fn insert_enrollment(connection: &Connection, state: &EnrollmentState) -> Result<(), StoreError> {
    let enrollment = &state.enrollment;
    let (policy_kind, policy_amount) = policy_columns(&enrollment.access_policy);
    let mut statement = connection
        .prepare_cached(INSERT_ENROLLMENT)
        .map_err(map_error)?;
    statement
        .execute(params![
            enrollment.user_id.as_str(),
            enrollment.course_id.as_str(),
            enrollment.currency.as_str(),
            enrollment.price,
            enrollment.amount_charged,
            enrollment.amount_paid,
            enrollment.amount_credited,
            enrollment.amount_refunded,
            enrollment.amount_due,
            enrollment.payment_status.as_str(),
            policy_kind,
            policy_amount,
            enrollment.access_status.as_str(),
            enrollment.status.as_str(),
            enrollment.version as i64,
            enrollment.created_at.unix_micros(),
            enrollment.updated_at.unix_micros(),
            state.last_hash.to_hex(),
            enrollment.amount_held,
        ])
        .map_err(map_error)?;
    Ok(())
}

fn update_enrollment(
    connection: &Connection,
    state: &EnrollmentState,
    version_before: u64,
) -> Result<(), StoreError> {
    let enrollment = &state.enrollment;
    let mut statement = connection
        .prepare_cached(
            "UPDATE enrollments SET amount_charged = ?3, amount_paid = ?4, amount_credited = ?5, \
             amount_refunded = ?6, amount_due = ?7, payment_status = ?8, access_status = ?9, status = ?10, \
             version = ?11, updated_at = ?12, last_hash = ?13, amount_held = ?15 \
             WHERE user_id = ?1 AND course_id = ?2 AND version = ?14",
        )
        .map_err(map_error)?;
    let updated = statement
        .execute(params![
            enrollment.user_id.as_str(),
            enrollment.course_id.as_str(),
            enrollment.amount_charged,
            enrollment.amount_paid,
            enrollment.amount_credited,
            enrollment.amount_refunded,
            enrollment.amount_due,
            enrollment.payment_status.as_str(),
            enrollment.access_status.as_str(),
            enrollment.status.as_str(),
            enrollment.version as i64,
            enrollment.updated_at.unix_micros(),
            state.last_hash.to_hex(),
            version_before as i64,
            enrollment.amount_held,
        ])
        .map_err(map_error)?;
    if updated != 1 {
        // The write lock is held for the whole batch, so this means someone
        // changed the row behind bursar's back.
        return Err(StoreError::Internal(format!(
            "enrollment {} changed under the writer (expected version {version_before})",
            enrollment.key()
        )));
    }
    Ok(())
}

/// An entry from a row of `entry_columns!()` followed by `user_id,
/// course_id`.
pub(crate) fn entry_from_row(row: &Row<'_>) -> Result<LedgerEntry, StoreError> {
    let key = ledger_rows::row_key(row)?;
    let (entry, _) = read_entry_row(&key, row)
        .map_err(map_error)?
        .map_err(StoreError::Internal)?;
    Ok(entry)
}

fn read_entry_row(key: &EnrollmentKey, row: &Row<'_>) -> rusqlite::Result<EntryRow> {
    ledger_rows::read_entry(key, row)
}

fn load_entries(
    connection: &Connection,
    key: &EnrollmentKey,
    after: u64,
    limit: u32,
) -> Result<Vec<EntryRow>, StoreError> {
    let mut statement = connection
        .prepare_cached(SELECT_ENTRIES_AFTER)
        .map_err(map_error)?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = statement
        .query_map(
            params![
                key.user_id.as_str(),
                key.course_id.as_str(),
                after,
                i64::from(limit)
            ],
            |row| read_entry_row(key, row),
        )
        .map_err(map_error)?;
    rows.map(|row| row.map_err(map_error)).collect()
}

fn load_stored(
    connection: &Connection,
    key: &EnrollmentKey,
    idempotency_key: &IdempotencyKey,
) -> Result<Option<StoredOperation>, StoreError> {
    let mut statement = connection
        .prepare_cached(SELECT_STORED)
        .map_err(map_error)?;
    let row = statement
        .query_row(
            params![
                key.user_id.as_str(),
                key.course_id.as_str(),
                idempotency_key.as_str()
            ],
            |row| read_entry_row(key, row),
        )
        .optional()
        .map_err(map_error)?;
    match row {
        None => Ok(None),
        Some(Err(problem)) => Err(StoreError::Internal(problem)),
        Some(Ok((entry, fingerprint))) => Ok(Some(StoredOperation { fingerprint, entry })),
    }
}

fn audit(connection: &Connection) -> Result<AuditReport, StoreError> {
    let mut statement = connection
        .prepare("SELECT user_id, course_id FROM enrollments UNION SELECT user_id, course_id FROM ledger ORDER BY 1, 2")
        .map_err(map_error)?;
    let keys: Vec<(String, String)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .map_err(map_error)?
        .collect::<Result<_, _>>()
        .map_err(map_error)?;
    crate::sqlite_audit::audit_keys(connection, keys)
}

/// What reading one enrollment for the audit gives besides its entries: the
/// stored enrollment (`None` when missing or unreadable) and its open holds
/// (or why they could not be read).
pub(crate) struct StoredForAudit {
    pub(crate) stored: Option<EnrollmentState>,
    pub(crate) holds: Result<Vec<Hold>, String>,
}

/// One step of an enrollment's ledger as the audit reads it: an entry, or a
/// problem to note (a row that cannot be read).
pub(crate) enum AuditStep {
    Entry(Box<LedgerEntry>),
    Note(String),
}

/// Reads one enrollment for the audit in the connection's snapshot: its
/// ledger goes to `step` one row at a time (so a ledger of any length is
/// read in the same memory), then the stored enrollment and its open holds
/// are returned.
pub(crate) fn read_for_audit(
    connection: &Connection,
    key: &EnrollmentKey,
    mut step: impl FnMut(AuditStep),
) -> Result<StoredForAudit, StoreError> {
    let stored = {
        let mut statement = connection
            .prepare_cached(SELECT_ENROLLMENT)
            .map_err(map_error)?;
        let row = statement
            .query_row(
                params![key.user_id.as_str(), key.course_id.as_str()],
                read_enrollment_row,
            )
            .optional()
            .map_err(map_error)?;
        match row.map(parse_state) {
            None => None,
            Some(Ok(state)) => Some(state),
            Some(Err(problem)) => {
                step(AuditStep::Note(problem));
                None
            }
        }
    };
    let mut entries = connection
        .prepare_cached(SELECT_ALL_ENTRIES)
        .map_err(map_error)?;
    let mut rows = entries
        .query(params![key.user_id.as_str(), key.course_id.as_str()])
        .map_err(map_error)?;
    while let Some(row) = rows.next().map_err(map_error)? {
        match read_entry_row(key, row).map_err(map_error)? {
            Ok((entry, _)) => step(AuditStep::Entry(Box::new(entry))),
            Err(problem) => step(AuditStep::Note(problem)),
        }
    }
    let holds = holds::sqlite::open(connection, key).map_err(|error| error.to_string());
    Ok(StoredForAudit { stored, holds })
}

/// The audit of one enrollment, added to `report`: its ledger streamed into
/// the verifier one row at a time, then the stored enrollment and its open
/// holds compared with what the ledger gives.
pub(crate) fn audit_enrollment(
    connection: &Connection,
    key: &EnrollmentKey,
    report: &mut AuditReport,
) -> Result<(), StoreError> {
    let mut verifier = bursar_core::ChainVerifier::new(key.clone());
    let read = read_for_audit(connection, key, |step| match step {
        AuditStep::Entry(entry) => verifier.push(&entry),
        AuditStep::Note(problem) => verifier.note(None, problem),
    })?;
    audit_one(verifier, read.stored.as_ref(), read.holds, report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bursar_core::{AccessPolicy, Amount, Command, EnrollTerms};

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn the_medium_refusing_a_write_is_a_storage_fault() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_FULL,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_PERM,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_READONLY_DBMOVED,
        ] {
            assert!(
                matches!(map_error(failure(code)), StoreError::Storage(_)),
                "{code}"
            );
        }
        for code in [ffi::SQLITE_BUSY, ffi::SQLITE_LOCKED] {
            assert!(
                matches!(map_error(failure(code)), StoreError::Unavailable(_)),
                "{code}"
            );
        }
        for code in [
            ffi::SQLITE_CONSTRAINT,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_MISUSE,
        ] {
            assert!(
                matches!(map_error(failure(code)), StoreError::Internal(_)),
                "{code}"
            );
        }
        assert!(matches!(
            map_error(rusqlite::Error::QueryReturnedNoRows),
            StoreError::Internal(_)
        ));
    }

    fn enroll(course: &str) -> Request {
        Request {
            key: EnrollmentKey {
                user_id: UserId::parse("u").expect("user id"),
                course_id: CourseId::parse(course).expect("course id"),
            },
            idempotency_key: None,
            command: Command::Enroll(EnrollTerms {
                currency: Currency::parse("USD").expect("currency"),
                price: Price::new(100).expect("price"),
                access_policy: AccessPolicy::FullPayment,
            }),
        }
    }

    fn pay(course: &str, key: &str) -> Request {
        Request {
            idempotency_key: Some(IdempotencyKey::parse(key).expect("key")),
            command: Command::Payment {
                amount: Amount::new(1).expect("amount"),
                currency: None,
                reference: None,
            },
            ..enroll(course)
        }
    }

    async fn open(path: &Path) -> SqliteStore {
        SqliteStore::open(SqliteOptions {
            path: path.to_path_buf(),
            synchronous: Synchronous::Full,
        })
        .await
        .expect("open")
    }

    #[tokio::test]
    async fn the_writer_reads_again_what_another_connection_committed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bursar.db");
        let (first, second) = (open(&path).await, open(&path).await);
        let now = Timestamp::from_unix_micros(1_700_000_000_000_000);
        first.execute(vec![enroll("c")], now).await.expect("enroll");
        // Each store's writer holds the state it committed last; each batch
        // here follows one of the other store's.
        for (index, store) in [&second, &first, &second, &first].into_iter().enumerate() {
            let outcomes = store
                .execute(vec![pay("c", &format!("k{index}"))], now)
                .await
                .expect("pay");
            assert!(
                matches!(&outcomes[0], Outcome::Accepted(entry) if entry.seq == index as u64 + 2),
                "{outcomes:?}"
            );
        }
        let key = enroll("c").key;
        let enrollment = first
            .enrollment(&key)
            .await
            .expect("read")
            .expect("enrolled");
        assert_eq!(enrollment.amount_paid, 4);
        assert!(second.audit().await.expect("audit").ok);
    }

    #[tokio::test]
    async fn a_batch_into_a_removed_file_is_not_acknowledged_nor_any_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bursar.db");
        let store = open(&path).await;
        let now = Timestamp::from_unix_micros(1_700_000_000_000_000);
        store.execute(vec![enroll("c")], now).await.expect("enroll");
        store
            .probe_write()
            .await
            .expect("a healthy store probes fine");

        // Moved away: the batch commits into the file the store holds open,
        // which is no longer at the path; it must not be acknowledged.
        let moved = dir.path().join("moved.db");
        std::fs::rename(&path, &moved).expect("move the file away");
        let error = store
            .execute(vec![pay("c", "k1")], now)
            .await
            .expect_err("a batch into a moved file is refused");
        assert!(
            matches!(&error, StoreError::Storage(reason) if reason.contains("is gone")),
            "{error}"
        );
        let error = store
            .execute(vec![pay("c", "k2")], now)
            .await
            .expect_err("every later batch is refused");
        assert!(matches!(error, StoreError::Storage(_)), "{error}");
        assert!(matches!(
            store.probe_write().await,
            Err(StoreError::Storage(_))
        ));

        // A different file at the path is refused too.
        std::fs::write(&path, b"").expect("an empty file at the path");
        let error = store
            .execute(vec![pay("c", "k3")], now)
            .await
            .expect_err("another file at the path is refused");
        assert!(
            matches!(&error, StoreError::Storage(reason) if reason.contains("replaced")),
            "{error}"
        );

        // The file moved back: writes resume, and the retry of k1 replays
        // the payment committed while the file was away.
        std::fs::rename(&moved, &path).expect("move the file back");
        store.probe_write().await.expect("the file is back");
        let outcomes = store
            .execute(vec![pay("c", "k1"), pay("c", "k2")], now)
            .await
            .expect("writes resume");
        assert!(matches!(&outcomes[0], Outcome::Replayed(_)), "{outcomes:?}");
        assert!(matches!(&outcomes[1], Outcome::Accepted(_)), "{outcomes:?}");
    }

    #[tokio::test]
    async fn a_read_only_file_is_a_storage_fault_and_recovers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bursar.db");
        let store = open(&path).await;
        let now = Timestamp::from_unix_micros(1_700_000_000_000_000);
        store.execute(vec![enroll("c")], now).await.expect("enroll");
        // Tests run as root, which permission bits do not stop; `query_only`
        // makes the writer refuse writes with SQLITE_READONLY all the same.
        store
            .inner
            .writer
            .lock()
            .expect("writer")
            .execute_batch("PRAGMA query_only = ON")
            .expect("query_only");
        let error = store
            .execute(vec![pay("c", "k1")], now)
            .await
            .expect_err("a read-only database refuses");
        assert!(matches!(error, StoreError::Storage(_)), "{error}");
        assert!(store.inner.faulted.load(Ordering::Relaxed));
        store
            .inner
            .writer
            .lock()
            .expect("writer")
            .execute_batch("PRAGMA query_only = OFF")
            .expect("query_only off");
        store
            .execute(vec![pay("c", "k1")], now)
            .await
            .expect("writes resume");
        assert!(!store.inner.faulted.load(Ordering::Relaxed));
    }

    /// A cached statement with `LIMIT ?` runs with another limit without
    /// being prepared again (parsed and planned): the query planner's
    /// stability guarantee is on for every connection.
    #[tokio::test]
    async fn a_new_limit_does_not_prepare_a_statement_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("limit.db");
        let options = SqliteOptions::parse(path.to_str().expect("UTF-8")).expect("options");
        drop(SqliteStore::open(options.clone()).await.expect("open"));
        let connection = open_connection(&options, false).expect("reader");
        for limit in [5_i64, 1, 100, 0, 7] {
            let mut statement = connection
                .prepare_cached(
                    "SELECT seq FROM ledger WHERE position >= ?1 ORDER BY position LIMIT ?2",
                )
                .expect("prepare");
            let rows = statement
                .query_map(params![0_i64, limit], |row| row.get::<_, i64>(0))
                .expect("query")
                .count();
            assert_eq!(rows, 0);
            assert_eq!(
                statement.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "prepared again for LIMIT {limit}"
            );
        }
    }

    /// A token made under the first schema gets a random public id when the
    /// second migration adds ids.
    #[tokio::test]
    async fn tokens_made_before_ids_get_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("old.db");
        {
            let connection = Connection::open(&path).expect("open");
            connection
                .execute_batch(&format!(
                    "{} PRAGMA user_version = 1;
                     INSERT INTO api_tokens (token_hash, role, created_at)
                         VALUES (randomblob(32), 'admin', 7);",
                    match MIGRATIONS[0] {
                        Migration::Sql(sql) => sql,
                        Migration::Code(_) => unreachable!("the first migration is SQL"),
                    }
                ))
                .expect("the first schema");
        }
        let store = SqliteStore::open(
            SqliteOptions::parse(path.to_str().expect("UTF-8")).expect("options"),
        )
        .await
        .expect("migrate");
        let tokens = store.tokens().await.expect("tokens");
        assert_eq!(tokens.len(), 1);
        assert!(
            tokens[0].id.starts_with("tok_") && tokens[0].id.len() == 20,
            "{}",
            tokens[0].id
        );
        assert_eq!((tokens[0].expires_at, tokens[0].revoked_at), (None, None));
    }
}
