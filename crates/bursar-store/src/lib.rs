//! Storage for bursar: one `Store` over the backends, each applying whole
//! batches of requests in one transaction with the batch planner of
//! `bursar-core`, plus the reads, the audit, the digests and the API tokens.

mod checkpoint;
mod digest;
mod events;
mod history;
mod holds;
pub mod intake;
mod ledger_codes;
mod ledger_rows;
mod postgres;
mod publishers;
mod sqlite;
mod sqlite_audit;
mod state_cache;
pub mod testing;
mod webhooks;

use bursar_core::ledger::{ChainVerifier, Disagreement};
use bursar_core::{
    Digest, DigestCheck, Enrollment, EnrollmentKey, EnrollmentState, Hold, IntakeException,
    LedgerEntry, Outcome, Request, Timestamp, UserId,
};
use serde::Serialize;
use std::path::Path;

pub use events::{EVENT_SCAN_ENTRIES_MAX, EventPage, EventQuery};
pub use history::{
    EXPORT_PAGE_ENTRIES, EnrollmentAudit, ExportQuery, PositionedEntry, StatementRows,
};
pub use holds::EXPIRED_ENROLLMENTS_PER_SWEEP_MAX;
pub use intake::{
    DUE_EXCEPTIONS_PER_LOOK_MAX, Dismissal, EXCEPTIONS_PAGE_MAX, ExceptionQuery, IntakeAction,
    IntakeMode, IntakeOperation, IntakeOutcome, IntakeWrite,
};
pub use postgres::{PostgresOptions, PostgresStore, TlsMode};
pub use publishers::PublisherCursor;
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};
pub use webhooks::{
    AcquiredEndpoint, DeliveryAttempt, DeliveryProgress, EndpointState, PendingDelivery,
    WEBHOOK_ATTEMPTS_KEPT_PER_ENDPOINT, WebhookEndpoint,
};

/// Most enrollments `enrollments_of` returns for one user: far more than any
/// student takes, small enough for one response.
pub const USER_ENROLLMENTS_MAX: usize = 1000;

/// Most ledger entries one page returns.
pub const LEDGER_PAGE_ENTRIES_MAX: u32 = 1000;

/// A storage failure. None of these is the caller's fault: the server answers
/// `Unavailable` and `Storage` with 503 and `Retry-After`, and `Internal`
/// with a logged 500.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is busy; retrying later may work.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The storage under the database refused to keep a write: the disk is
    /// full, the file or file system is read-only, permission is denied, an
    /// I/O error, or the database file was removed or replaced under the
    /// server. Nothing of the failed batch was acknowledged; retrying with the
    /// same idempotency key is safe, and works once the cause is fixed.
    #[error("storage fault: {0}")]
    Storage(String),
    /// Anything else: a bug or corruption.
    #[error("storage failure: {0}")]
    Internal(String),
    /// The database URL or options are wrong (a start-up error).
    #[error("bad database configuration: {0}")]
    Config(String),
}

/// An API token as stored: only the SHA-256 of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public id (`tok_` and 16 hex digits), shown when the token is
    /// made and used to list and revoke it; it grants nothing.
    pub id: String,
    pub token_hash: [u8; 32],
    pub role: String,
    pub created_at: Timestamp,
    /// `None`: the token does not expire.
    pub expires_at: Option<Timestamp>,
    /// When the token was revoked; `None` while it is not.
    pub revoked_at: Option<Timestamp>,
}

impl TokenRecord {
    /// Whether the token may be used at `now`: not revoked, not expired.
    pub fn is_usable_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires_at| now < expires_at)
    }
}

/// What `audit` found: `ok` is true exactly when `disagreements` is empty.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub ok: bool,
    pub enrollments: u64,
    pub entries: u64,
    pub disagreements: Vec<Disagreement>,
}

/// Which backend a database URL names.
pub enum DatabaseUrl {
    Sqlite(SqliteOptions),
    /// Boxed: the parsed options are large, and a URL is parsed once.
    Postgres(Box<PostgresOptions>),
}

impl DatabaseUrl {
    /// `sqlite://PATH` (relative), `sqlite:///ABSOLUTE/PATH`, with an optional
    /// `?synchronous=FULL|NORMAL|OFF`; or `postgres://` / `postgresql://`
    /// URLs in libpq's form (see [`PostgresOptions`]).
    pub fn parse(url: &str) -> Result<DatabaseUrl, StoreError> {
        if let Some(rest) = url.strip_prefix("sqlite://") {
            return Ok(DatabaseUrl::Sqlite(SqliteOptions::parse(rest)?));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(Box::new(PostgresOptions::parse(
                url,
            )?)));
        }
        Err(StoreError::Config(
            "unsupported database URL: expected sqlite://PATH or postgres://USER@HOST/DATABASE"
                .into(),
        ))
    }
}

/// The database URL as it may be shown in messages and logs: a PostgreSQL
/// password is replaced by `***`.
pub fn redact_url(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        postgres::redact_password(url)
    } else {
        url.to_owned()
    }
}

/// The storage of one bursar deployment.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens (creating if need be) and migrates the database the URL names.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        match DatabaseUrl::parse(url)? {
            DatabaseUrl::Sqlite(options) => Ok(Store::Sqlite(SqliteStore::open(options).await?)),
            DatabaseUrl::Postgres(options) => {
                Ok(Store::Postgres(PostgresStore::open(*options).await?))
            }
        }
    }

    /// Creates the database when it does not exist yet (the SQLite file, or
    /// the PostgreSQL database through the server's `postgres` maintenance
    /// database), then opens and migrates it; for `bursar migrate`. Returns
    /// the store and whether it created the database.
    pub async fn create_and_open(url: &str) -> Result<(Store, bool), StoreError> {
        match DatabaseUrl::parse(url)? {
            DatabaseUrl::Sqlite(options) => {
                let created = !options.path.exists();
                Ok((Store::Sqlite(SqliteStore::open(options).await?), created))
            }
            DatabaseUrl::Postgres(options) => {
                let created = options.create_database_if_missing().await?;
                Ok((
                    Store::Postgres(PostgresStore::open(*options).await?),
                    created,
                ))
            }
        }
    }

    /// The backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Decides and durably commits a batch in one transaction: the outcomes
    /// are answered only after the commit.
    pub async fn execute(
        &self,
        requests: Vec<Request>,
        now: Timestamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        match self {
            Store::Sqlite(store) => store.execute(requests, now).await,
            Store::Postgres(store) => store.execute(requests, now).await,
        }
    }

    /// `execute` with the payment intake's writes riding in the same
    /// transaction: the plain requests' outcomes, then one outcome per
    /// intake write (see `intake.rs`).
    pub async fn execute_with_intake(
        &self,
        requests: Vec<Request>,
        writes: Vec<IntakeWrite>,
        now: Timestamp,
    ) -> Result<(Vec<Outcome>, Vec<IntakeOutcome>), StoreError> {
        match self {
            Store::Sqlite(store) => store.execute_with_intake(requests, writes, now).await,
            Store::Postgres(store) => store.execute_with_intake(requests, writes, now).await,
        }
    }

    /// The intake exception with this id.
    pub async fn exception(&self, id: &str) -> Result<Option<IntakeException>, StoreError> {
        match self {
            Store::Sqlite(store) => store.exception(id.to_owned()).await,
            Store::Postgres(store) => store.exception(id).await,
        }
    }

    /// The intake exceptions a query asks for, oldest first.
    pub async fn exceptions(
        &self,
        query: ExceptionQuery,
    ) -> Result<Vec<IntakeException>, StoreError> {
        match self {
            Store::Sqlite(store) => store.exceptions(query).await,
            Store::Postgres(store) => store.exceptions(&query).await,
        }
    }

    /// The open exceptions due for a retry at `now`, soonest first, at most
    /// `DUE_EXCEPTIONS_PER_LOOK_MAX`.
    pub async fn due_exceptions(&self, now: Timestamp) -> Result<Vec<IntakeException>, StoreError> {
        match self {
            Store::Sqlite(store) => store.due_exceptions(now).await,
            Store::Postgres(store) => store.due_exceptions(now).await,
        }
    }

    /// Closes an open exception without the ledger taking it.
    pub async fn dismiss_exception(
        &self,
        id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<Dismissal, StoreError> {
        match self {
            Store::Sqlite(store) => {
                store
                    .dismiss_exception(id.to_owned(), reason.to_owned(), now)
                    .await
            }
            Store::Postgres(store) => store.dismiss_exception(id, reason, now).await,
        }
    }

    /// The enrollment whose accepted payment made the first of `objects`
    /// (a processor's PaymentIntent or Charge ids) that has one.
    pub async fn intake_link(
        &self,
        processor: &str,
        objects: &[String],
    ) -> Result<Option<EnrollmentKey>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                store
                    .intake_link(processor.to_owned(), objects.to_vec())
                    .await
            }
            Store::Postgres(store) => store.intake_link(processor, objects).await,
        }
    }

    pub async fn enrollment(&self, key: &EnrollmentKey) -> Result<Option<Enrollment>, StoreError> {
        match self {
            Store::Sqlite(store) => store.enrollment(key).await,
            Store::Postgres(store) => store.enrollment(key).await,
        }
    }

    /// A user's enrollments by course id, at most `USER_ENROLLMENTS_MAX`.
    pub async fn enrollments_of(&self, user_id: &UserId) -> Result<Vec<Enrollment>, StoreError> {
        match self {
            Store::Sqlite(store) => store.enrollments_of(user_id).await,
            Store::Postgres(store) => store.enrollments_of(user_id).await,
        }
    }

    /// The enrollment as it stood at `at`: the snapshot of its newest ledger
    /// entry created at or before `at` (`None`: not enrolled yet, or never).
    pub async fn enrollment_as_of(
        &self,
        key: &EnrollmentKey,
        at: Timestamp,
    ) -> Result<Option<Enrollment>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let key = key.clone();
                store
                    .read(move |connection| history::sqlite::as_of(connection, &key, at))
                    .await
            }
            Store::Postgres(store) => {
                history::postgres::as_of(&store.connection().await?, key, at).await
            }
        }
    }

    /// A user's enrollments as they stood at `at`, by course id, at most
    /// `USER_ENROLLMENTS_MAX`; those not made yet are left out.
    pub async fn enrollments_of_as_of(
        &self,
        user_id: &UserId,
        at: Timestamp,
    ) -> Result<Vec<Enrollment>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let user_id = user_id.clone();
                store
                    .read(move |connection| history::sqlite::user_as_of(connection, &user_id, at))
                    .await
            }
            Store::Postgres(store) => {
                history::postgres::user_as_of(&store.connection().await?, user_id, at).await
            }
        }
    }

    /// One enrollment over a period, read in one snapshot: the enrollment
    /// before `from` (`None` = from the beginning), the entries with `from <=
    /// created_at < to` (at most `limit`), and the enrollment before `to`.
    pub async fn statement(
        &self,
        key: &EnrollmentKey,
        from: Option<Timestamp>,
        to: Timestamp,
        limit: u32,
    ) -> Result<StatementRows, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let key = key.clone();
                store
                    .read(move |connection| {
                        history::sqlite::statement(connection, &key, from, to, limit)
                    })
                    .await
            }
            Store::Postgres(store) => {
                let mut client = store.connection().await?;
                history::postgres::statement(&mut client, key, from, to, limit).await
            }
        }
    }

    /// One page of an export: see [`ExportQuery`]. Each page is its own
    /// read; the pages of one export agree because positions follow commit
    /// order (an entry below a position read is always committed already).
    pub async fn export_page(
        &self,
        query: ExportQuery,
    ) -> Result<Vec<PositionedEntry>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                store
                    .read(move |connection| history::sqlite::export_page(connection, &query))
                    .await
            }
            Store::Postgres(store) => {
                history::postgres::export_page(&store.connection().await?, &query).await
            }
        }
    }

    /// Replays one enrollment's ledger with the whole audit's checks, in one
    /// snapshot; `None` when there is neither an enrollment nor an entry.
    pub async fn audit_enrollment(
        &self,
        key: &EnrollmentKey,
    ) -> Result<Option<EnrollmentAudit>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let key = key.clone();
                store
                    .read(move |connection| history::sqlite::audit(connection, &key))
                    .await
            }
            Store::Postgres(store) => {
                let mut client = store.connection().await?;
                history::postgres::audit(&mut client, key).await
            }
        }
    }

    /// At most `limit` entries with `seq > after`, oldest first.
    pub async fn ledger(
        &self,
        key: &EnrollmentKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        match self {
            Store::Sqlite(store) => store.ledger(key, after, limit).await,
            Store::Postgres(store) => store.ledger(key, after, limit).await,
        }
    }

    /// The open holds of an enrollment, by `hold_seq`.
    /// The events after `query.after`, oldest first: see `events.rs`.
    pub async fn events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        match self {
            Store::Sqlite(store) => store.events(query).await,
            Store::Postgres(store) => store.events(query).await,
        }
    }

    /// The position the next event will take, as committed now: what a
    /// waiting reader compares to learn that something was written, by this
    /// process or another.
    pub async fn event_head(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.event_head().await,
            Store::Postgres(store) => store.event_head().await,
        }
    }

    pub async fn open_holds(&self, key: &EnrollmentKey) -> Result<Vec<Hold>, StoreError> {
        match self {
            Store::Sqlite(store) => store.open_holds(key).await,
            Store::Postgres(store) => store.open_holds(key).await,
        }
    }

    /// The enrollments with a hold still open past its `expires_at` at
    /// `now`, at most `EXPIRED_ENROLLMENTS_PER_SWEEP_MAX`: what the writer's
    /// sweep expires. Costs one lookup on an index of open holds, however
    /// many enrollments there are.
    pub async fn expired_holds(&self, now: Timestamp) -> Result<Vec<EnrollmentKey>, StoreError> {
        match self {
            Store::Sqlite(store) => store.expired_holds(now).await,
            Store::Postgres(store) => store.expired_holds(now).await,
        }
    }

    /// Replays every enrollment's ledger and verifies every chain.
    pub async fn audit(&self) -> Result<AuditReport, StoreError> {
        match self {
            Store::Sqlite(store) => store.audit().await,
            Store::Postgres(store) => store.audit().await,
        }
    }

    /// A digest of the whole ledger as committed now, taken at `now`: one
    /// snapshot streamed in position order (see `digest.rs`).
    pub async fn digest(&self, now: Timestamp) -> Result<Digest, StoreError> {
        match self {
            Store::Sqlite(store) => store.digest(now).await,
            Store::Postgres(store) => store.digest(now).await,
        }
    }

    /// Checks the ledger up to `expected.position` against a digest taken
    /// earlier: every gap, a truncated tail, the counts and the root. Entries
    /// after its position (later writes) are not read.
    pub async fn check_digest(&self, expected: &Digest) -> Result<DigestCheck, StoreError> {
        match self {
            Store::Sqlite(store) => store.check_digest(expected.clone()).await,
            Store::Postgres(store) => store.check_digest(expected).await,
        }
    }

    /// Every token, revoked and expired ones included, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.tokens().await,
            Store::Postgres(store) => store.tokens().await,
        }
    }

    /// Stores a new token. Its id and hash must be new (a clash is an
    /// `Internal` error: both are random).
    pub async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.insert_token(token.clone()).await,
            Store::Postgres(store) => store.insert_token(token).await,
        }
    }

    /// Revokes the token with this id (from `now` on; revoking it again
    /// keeps the first time) and returns it as it is now stored, or `None`
    /// when no token has this id.
    pub async fn revoke_token(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<TokenRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.revoke_token(id.to_owned(), now).await,
            Store::Postgres(store) => store.revoke_token(id, now).await,
        }
    }

    /// Whether the database answers; for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.ping().await,
            Store::Postgres(store) => store.ping().await,
        }
    }

    /// Whether writes can succeed again after a storage fault: on SQLite,
    /// the file at the configured path is still the one written to, the WAL
    /// is checkpointed and truncated (so space it held is free again), and a
    /// small committed write succeeds; on PostgreSQL, the database answers.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.probe_write().await,
            Store::Postgres(store) => store.ping().await,
        }
    }

    /// A consistent copy of the whole database, for `bursar backup`.
    pub async fn backup(&self, destination: &Path) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.backup(destination).await,
            Store::Postgres(store) => store.backup(destination).await,
        }
    }
}

/// The per-enrollment audit every backend shares: the backend streams the
/// ledger into `verifier` and notes what it could not read, then this checks
/// that the stored enrollment's `last_hash` is its newest entry's hash,
/// compares the newest entry with the stored enrollment, and adds the
/// enrollment's disagreements and counts to the report.
///
/// `stored_holds` are the open rows of the holds table (or why they could not
/// be read): they must be exactly the holds the ledger leaves open.
pub(crate) fn audit_one(
    mut verifier: ChainVerifier,
    stored: Option<&EnrollmentState>,
    stored_holds: Result<Vec<Hold>, String>,
    report: &mut AuditReport,
) {
    match stored_holds {
        Err(problem) => verifier.note(None, problem),
        Ok(stored_holds) => {
            let replayed: Vec<&Hold> = verifier.open_holds();
            let stored_holds: Vec<&Hold> = stored_holds.iter().collect();
            if stored_holds != replayed {
                let describe = |holds: &[&Hold]| {
                    holds
                        .iter()
                        .map(|hold| {
                            format!("{}: {} until {}", hold.seq, hold.amount, hold.expires_at)
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                verifier.note(
                    None,
                    format!(
                        "the holds table disagrees with the ledger: open holds stored [{}], \
                         replayed [{}]",
                        describe(&stored_holds),
                        describe(&replayed)
                    ),
                );
            }
        }
    }
    if let Some(state) = stored
        && verifier
            .last_hash()
            .is_some_and(|last_hash| last_hash != state.last_hash)
    {
        verifier.note(
            None,
            format!(
                "the enrollment's last_hash {} is not its newest entry's hash",
                state.last_hash
            ),
        );
    }
    report.enrollments += u64::from(stored.is_some());
    report.entries += verifier.entries();
    report
        .disagreements
        .extend(verifier.finish(stored.map(|state| &state.enrollment)));
    report.ok = report.disagreements.is_empty();
}
