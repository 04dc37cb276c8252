//! The PostgreSQL backend: any number of stateless `bursar serve` processes
//! on one database keep every guarantee of the contract, because the
//! database, not process memory, decides.
//!
//! # Driver
//!
//! tokio-postgres with a deadpool-postgres pool. It is async all the way, so
//! neither the writer nor the readers tie up a thread while the database
//! works; it needs no database at compile time (unlike sqlx's checked
//! queries); and its dependency tree is small. TLS is rustls with the `ring`
//! provider, and the webpki root certificates when the server's certificate
//! is verified (see [`TlsMode`]).
//!
//! # How a batch commits
//!
//! Each group-commit batch is one explicit transaction:
//!
//! 1. `SELECT … FROM enrollments WHERE (user_id, course_id) IN (…) ORDER BY
//!    user_id, course_id FOR UPDATE` locks every existing enrollment the batch
//!    names, in key order. Every process locks in the same order, so two
//!    batches never wait on each other in a cycle.
//! 2. The stored operations under the batch's idempotency keys are read after
//!    the locks are held, so a key committed by another process is seen and
//!    its answer replayed. Both statements go in one round trip: the server
//!    runs a connection's statements in the order they were sent.
//! 3. The shared planner of `bursar-core` decides every request.
//! 4. New enrollments are inserted and changed ones updated under a
//!    `version = old` guard, each in one statement over arrays (`UNNEST`),
//!    sent together with the reservation of the batch's event positions.
//!    The ledger entries follow in one statement: `UNNEST` for a few, binary
//!    `COPY` for a thousand or more. A batch of thousands costs five round
//!    trips: `BEGIN`, the reads, the enrollments, the entries, `COMMIT`.
//! 5. `COMMIT`; only then is any request answered.
//!
//! Two processes can still race where there is no row to lock yet: both
//! insert the same new enrollment. The second insert fails with a unique
//! violation, the batch rolls back and runs again, and the retry finds the
//! row, locks it and replays or decides on top of it. Serialization
//! failures, deadlocks, unique violations and dropped connections are all
//! retried this way, a few times with exponential backoff and full jitter,
//! within a bounded time. A retry after a commit whose answer was lost is
//! safe: every state-changing request but enrolling carries an idempotency
//! key, so the retry replays it, and enrolling again with the same terms
//! changes nothing.
//!
//! When the database cannot be reached, nothing waits long: opening a
//! connection and waiting for a pooled one each give up after two seconds,
//! and the request fails with [`StoreError::Unavailable`] (a 503). Every
//! request takes its connection afresh from the pool, which replaces closed
//! connections, so service resumes by itself when the database is back.
//!
//! # CockroachDB and YugabyteDB
//!
//! The SQL stays within what the PostgreSQL-compatible distributed databases
//! CockroachDB and YugabyteDB accept, so bursar should run on them too. The
//! claim rests on what the code uses and avoids, and has been tested here
//! against PostgreSQL only:
//!
//! - explicit transactions, every one of which may be retried whole: a
//!   serialization failure (`40001`, which those databases raise where
//!   PostgreSQL would block) or an ambiguous commit (`40003`) runs the batch
//!   again, and idempotency keys make that safe;
//! - row locks with `SELECT … FOR UPDATE`, and correctness that does not rest
//!   on them alone: the `version = old` guard on every update turns a lost
//!   race into a retry even where locking is weaker;
//! - plain tables, a stored generated column with a unique index (the
//!   idempotency lookup), `INSERT … ON CONFLICT DO NOTHING`, `UPDATE … FROM`,
//!   multi-argument `UNNEST`, `= ANY(array)` and row-value `IN`, binary
//!   `COPY … FROM STDIN` (which CockroachDB documents; for batches of a
//!   thousand entries or more), `bytea` and `smallint` columns;
//! - no advisory locks, no `LOCK TABLE` (but in the one-time upgrade to the
//!   compact ledger), no `LISTEN`/`NOTIFY`, no sequences, triggers or stored
//!   procedures. Migrations serialize on a row lock in
//!   `bursar_schema_migrations` rather than on an advisory lock.

mod audit;
mod batch;
mod failure;
mod ledger;
mod options;
mod rows;
mod schema;
mod upgrade;

pub use options::{PostgresOptions, TlsMode};

pub(crate) use audit::audit_keys;
pub(crate) use failure::{Failure, read_error};
pub(crate) use ledger::parse_entry;
pub(crate) use options::redact_password;
pub(crate) use rows::row_key;
pub(crate) use upgrade::to_json_layout;

use crate::events::{self, EventPage, EventQuery};
use crate::intake::{self, Dismissal, ExceptionQuery, IntakeOutcome, IntakeWrite};
use crate::ledger_codes::entry_columns;
use crate::{AuditReport, digest, holds};
use crate::{LEDGER_PAGE_ENTRIES_MAX, StoreError, TokenRecord, USER_ENROLLMENTS_MAX};
use bursar_core::{
    Enrollment, EnrollmentKey, Hold, IntakeException, LedgerEntry, Outcome, Request, Timestamp,
    UserId,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use failure::{backoff, classify, pool_error};
use rows::{ENROLLMENT_COLUMNS, checked_state};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::{IsolationLevel, Row};

/// Connections one process keeps at most. The writer uses one at a time and
/// the rest serve reads; sixteen per process leaves room for several
/// processes under PostgreSQL's default `max_connections` of 100.
const POOL_CONNECTIONS_MAX: usize = 16;

/// How long opening a connection may take before the database counts as
/// unreachable: long enough for a TLS handshake across a region, short
/// enough that a client gets its 503 quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a request waits for a pooled connection when all are busy.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `ping` (and so `/readyz`) waits for `SELECT 1`.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts at one batch: the first and up to five retries after a conflict
/// or a dropped connection. Conflicts on one row resolve in one retry; more
/// than a few in a row mean the database is struggling, and the client is
/// better served by a 503 it can retry with the same key.
const BATCH_ATTEMPTS_MAX: u32 = 6;

/// The first retry waits up to this long; each later one up to twice as
/// long as the one before, never more than `RETRY_BACKOFF_MAX`.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(10);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Longest one batch may take, retries included, before it fails as
/// unavailable: a commit of the largest batch takes well under a second, so
/// this only fires when the database has stopped answering.
const BATCH_DURATION_MAX: Duration = Duration::from_secs(10);

/// Longest a migration run may take, retries included, when several
/// processes start at once.
const MIGRATE_DURATION_MAX: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    options: Arc<PostgresOptions>,
}

impl PostgresStore {
    /// Connects, and migrates the schema; safe when several processes start
    /// at once.
    pub async fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let manager = Manager::from_config(
            options.config.clone(),
            options.tls()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_CONNECTIONS_MAX)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|error| StoreError::Config(format!("connection pool: {error}")))?;
        let store = PostgresStore {
            pool,
            options: Arc::new(options),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The URL with any password hidden.
    pub fn shown_url(&self) -> &str {
        self.options.shown()
    }

    pub(crate) async fn connection(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Applies the migrations not yet applied, in one transaction.
    ///
    /// Every process first makes sure the migrations table and its row 0
    /// exist (both idempotent), then locks row 0 for the rest of the
    /// transaction: a second process starting at the same time waits there,
    /// then finds the migrations applied. The rare race on creating the
    /// table itself surfaces as a unique violation or a duplicate table and
    /// is retried.
    async fn migrate(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + MIGRATE_DURATION_MAX;
        let mut retry = 0;
        loop {
            let mut client = self.connection().await?;
            let result = schema::migrate_once(&mut client).await;
            match result {
                Ok(()) => return Ok(()),
                Err(failure) if failure.transient => {
                    retry += 1;
                    let pause = backoff(retry);
                    if Instant::now() + pause > deadline {
                        return Err(failure.error);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// Decides and commits one batch, retrying conflicts and dropped
    /// connections; see the module documentation.
    pub async fn execute(
        &self,
        requests: Vec<Request>,
        now: Timestamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        Ok(self.execute_with_intake(requests, Vec::new(), now).await?.0)
    }

    /// `execute` with the intake's writes riding in the same transaction.
    #[tracing::instrument(skip_all, fields(requests = requests.len(), intake = writes.len()))]
    pub async fn execute_with_intake(
        &self,
        requests: Vec<Request>,
        writes: Vec<IntakeWrite>,
        now: Timestamp,
    ) -> Result<(Vec<Outcome>, Vec<IntakeOutcome>), StoreError> {
        if requests.is_empty() && writes.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let deadline = Instant::now() + BATCH_DURATION_MAX;
        let mut attempt = 1;
        loop {
            // Failing to get a connection is not retried: the database is
            // unreachable, and the client should hear so at once.
            let mut client = self.connection().await?;
            let result = tokio::time::timeout_at(
                deadline,
                batch::execute_batch(&mut client, &requests, &writes, now),
            )
            .await;
            let failure = match result {
                Ok(Ok(outcomes)) => return Ok(outcomes),
                Ok(Err(failure)) => failure,
                Err(_) => {
                    // The connection may be stuck mid-transaction: never
                    // hand it to anyone else.
                    let _ = Object::take(client);
                    return Err(StoreError::Unavailable(format!(
                        "PostgreSQL did not finish the batch within {} s",
                        BATCH_DURATION_MAX.as_secs()
                    )));
                }
            };
            if !failure.transient || attempt >= BATCH_ATTEMPTS_MAX {
                return Err(failure.error);
            }
            let pause = backoff(attempt);
            if Instant::now() + pause >= deadline {
                return Err(failure.error);
            }
            tracing::debug!(attempt, error = %failure.error, "retrying the batch");
            drop(client);
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    pub async fn exception(&self, id: &str) -> Result<Option<IntakeException>, StoreError> {
        let client = self.connection().await?;
        intake::postgres::one(&client, id).await
    }

    pub async fn exceptions(
        &self,
        query: &ExceptionQuery,
    ) -> Result<Vec<IntakeException>, StoreError> {
        let client = self.connection().await?;
        intake::postgres::list(&client, query).await
    }

    pub async fn due_exceptions(&self, now: Timestamp) -> Result<Vec<IntakeException>, StoreError> {
        let client = self.connection().await?;
        intake::postgres::due(&client, now).await
    }

    pub async fn dismiss_exception(
        &self,
        id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<Dismissal, StoreError> {
        let client = self.connection().await?;
        intake::postgres::dismiss(&client, id, reason, now).await
    }

    pub async fn intake_link(
        &self,
        processor: &str,
        objects: &[String],
    ) -> Result<Option<EnrollmentKey>, StoreError> {
        let client = self.connection().await?;
        intake::postgres::link(&client, processor, objects).await
    }

    pub async fn enrollment(&self, key: &EnrollmentKey) -> Result<Option<Enrollment>, StoreError> {
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE user_id = $1 AND course_id = $2"
            ))
            .await
            .map_err(read_error)?;
        let row = client
            .query_opt(
                &statement,
                &[&key.user_id.as_str(), &key.course_id.as_str()],
            )
            .await
            .map_err(read_error)?;
        row.map(|row| checked_state(&row).map(|state| state.enrollment))
            .transpose()
    }

    pub async fn enrollments_of(&self, user_id: &UserId) -> Result<Vec<Enrollment>, StoreError> {
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE user_id = $1 ORDER BY course_id LIMIT $2"
            ))
            .await
            .map_err(read_error)?;
        let rows = client
            .query(
                &statement,
                &[&user_id.as_str(), &(USER_ENROLLMENTS_MAX as i64)],
            )
            .await
            .map_err(read_error)?;
        rows.iter()
            .map(|row| checked_state(row).map(|state| state.enrollment))
            .collect()
    }

    pub async fn ledger(
        &self,
        key: &EnrollmentKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let limit = limit.min(LEDGER_PAGE_ENTRIES_MAX);
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(concat!(
                "SELECT ",
                entry_columns!(),
                " FROM ledger WHERE user_id = $1 AND course_id = $2 AND seq > $3 \
                 ORDER BY seq LIMIT $4"
            ))
            .await
            .map_err(read_error)?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &statement,
                &[
                    &key.user_id.as_str(),
                    &key.course_id.as_str(),
                    &after,
                    &i64::from(limit),
                ],
            )
            .await
            .map_err(read_error)?;
        rows.iter()
            .map(|row| {
                parse_entry(key, row)
                    .map(|(entry, _)| entry)
                    .map_err(StoreError::Internal)
            })
            .collect()
    }

    pub async fn events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        let mut client = self.connection().await?;
        let snapshot = read_snapshot(&mut client).await?;
        let page = events::postgres::read(&snapshot, &query).await?;
        snapshot.commit().await.map_err(read_error)?;
        Ok(page)
    }

    pub async fn event_head(&self) -> Result<u64, StoreError> {
        let client = self.connection().await?;
        events::postgres::head(&client).await
    }

    pub async fn digest(&self, now: Timestamp) -> Result<bursar_core::Digest, StoreError> {
        let mut client = self.connection().await?;
        digest::postgres::take(&mut client, now).await
    }

    pub async fn check_digest(
        &self,
        expected: &bursar_core::Digest,
    ) -> Result<bursar_core::DigestCheck, StoreError> {
        let mut client = self.connection().await?;
        digest::postgres::check(&mut client, expected).await
    }

    pub async fn open_holds(&self, key: &EnrollmentKey) -> Result<Vec<Hold>, StoreError> {
        let client = self.connection().await?;
        holds::postgres::open(&client, key).await
    }

    pub async fn expired_holds(&self, now: Timestamp) -> Result<Vec<EnrollmentKey>, StoreError> {
        let client = self.connection().await?;
        holds::postgres::expired(&client, now).await
    }

    /// Replays every enrollment's ledger and verifies every chain, all read
    /// from one snapshot so that writes going on meanwhile cannot make a
    /// consistent database look inconsistent.
    pub async fn audit(&self) -> Result<AuditReport, StoreError> {
        let mut client = self.connection().await?;
        let transaction = read_snapshot(&mut client).await?;
        let report = audit::audit(&transaction).await?;
        transaction.commit().await.map_err(read_error)?;
        Ok(report)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.connection().await?;
        let rows = client
            .query(
                &format!("{SELECT_TOKENS_FROM} ORDER BY created_at, id"),
                &[],
            )
            .await
            .map_err(read_error)?;
        rows.iter().map(token_record).collect()
    }

    pub async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let client = self.connection().await?;
        client
            .execute(
                "INSERT INTO api_tokens (id, token_hash, role, created_at, expires_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &token.id,
                    &&token.token_hash[..],
                    &token.role,
                    &token.created_at.unix_micros(),
                    &token.expires_at.map(Timestamp::unix_micros),
                    &token.revoked_at.map(Timestamp::unix_micros),
                ],
            )
            .await
            .map_err(read_error)?;
        Ok(())
    }

    pub async fn revoke_token(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let client = self.connection().await?;
        client
            .execute(
                "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now.unix_micros()],
            )
            .await
            .map_err(read_error)?;
        let row = client
            .query_opt(&format!("{SELECT_TOKENS_FROM} WHERE id = $1"), &[&id])
            .await
            .map_err(read_error)?;
        row.as_ref().map(token_record).transpose()
    }

    /// Whether the database answers, within a few seconds; for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let answer = tokio::time::timeout(PING_TIMEOUT, async {
            // A pooled connection can die with a database restart a moment
            // before the pool notices; a second try, on a fresh connection,
            // tells whether the database itself answers.
            let client = self.connection().await?;
            let Err(error) = client.simple_query("SELECT 1").await else {
                return Ok(());
            };
            let failure = classify(&error);
            if !failure.transient {
                return Err(failure.error);
            }
            let _ = Object::take(client);
            let client = self.connection().await?;
            client.simple_query("SELECT 1").await.map_err(read_error)?;
            Ok::<(), StoreError>(())
        })
        .await;
        match answer {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL did not answer within {} s",
                PING_TIMEOUT.as_secs()
            ))),
        }
    }

    /// bursar does not copy a PostgreSQL database itself.
    pub async fn backup(&self, _destination: &Path) -> Result<(), StoreError> {
        Err(StoreError::Config(format!(
            "bursar backup copies SQLite databases only; back up {} with pg_dump \
             (or your provider's snapshots and point-in-time recovery)",
            self.options.shown()
        )))
    }
}

const SELECT_TOKENS_FROM: &str =
    "SELECT id, token_hash, role, created_at, expires_at, revoked_at FROM api_tokens";

fn token_record(row: &Row) -> Result<TokenRecord, StoreError> {
    let hash: Vec<u8> = row.try_get(1).map_err(read_error)?;
    let token_hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Internal("a stored token hash is not 32 bytes".into()))?;
    let expires_at: Option<i64> = row.try_get(4).map_err(read_error)?;
    let revoked_at: Option<i64> = row.try_get(5).map_err(read_error)?;
    Ok(TokenRecord {
        id: row.try_get(0).map_err(read_error)?,
        token_hash,
        role: row.try_get(2).map_err(read_error)?,
        created_at: Timestamp::from_unix_micros(row.try_get(3).map_err(read_error)?),
        expires_at: expires_at.map(Timestamp::from_unix_micros),
        revoked_at: revoked_at.map(Timestamp::from_unix_micros),
    })
}

/// A read-only repeatable-read transaction: one snapshot for reads that
/// take several statements and must see one state of the database.
pub(crate) async fn read_snapshot(
    client: &mut Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(read_error)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) async fn open(url: &str) -> PostgresStore {
        PostgresStore::open(PostgresOptions::parse(url).expect("url"))
            .await
            .expect("open")
    }
}
