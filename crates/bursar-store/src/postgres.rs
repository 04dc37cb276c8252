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
//!    its answer replayed.
//! 3. The shared planner of `bursar-core` decides every request.
//! 4. New enrollments are inserted, changed ones updated under a
//!    `version = old` guard, and the ledger entries inserted, each in one
//!    statement over arrays (`UNNEST`), so a batch of thousands costs a
//!    handful of round trips.
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
//!   multi-argument `UNNEST`, `= ANY(array)` and row-value `IN`;
//! - no advisory locks, no `LOCK TABLE`, no `LISTEN`/`NOTIFY`, no sequences,
//!   triggers or stored procedures. Migrations serialize on a row lock in
//!   `bursar_schema_migrations` rather than on an advisory lock.

use crate::events::{self, EventPage, EventQuery};
use crate::intake::{self, Dismissal, ExceptionQuery, IntakeOutcome, IntakeWrite};
use crate::{
    AuditReport, LEDGER_PAGE_ENTRIES_MAX, StoreError, TokenRecord, USER_ENROLLMENTS_MAX, audit_one,
};
use crate::{digest, holds};
use bursar_core::batch::{BatchInput, enrollment_keys, idempotency_keys, named_holds, plan_batch};
use bursar_core::{
    AccessPolicy, AccessStatus, ChainVerifier, CourseId, Currency, Disagreement, Enrollment,
    EnrollmentKey, EnrollmentState, EnrollmentStatus, EntryKind, Hash, Hold, IdempotencyKey,
    IntakeException, LedgerEntry, Outcome, PaymentStatus, Price, Reason, Reference, Request,
    StoredOperation, Timestamp, Transitions, UserId, event_count,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, Portal, Row, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

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

/// Enrollments the audit loads per query.
const AUDIT_ENROLLMENTS_PER_QUERY: usize = 500;

/// Ledger rows the audit holds at once: it reads a chunk's entries a page at
/// a time, so its memory does not grow with the length of a ledger. A page
/// of a thousand rows is about a megabyte and one round trip.
const AUDIT_ENTRIES_PER_PAGE: i32 = 1000;

/// Schema migrations, applied in order inside one transaction; a row in
/// `bursar_schema_migrations` records each. Never edit one that has shipped:
/// add another. The columns are those of the SQLite backend, so the two
/// share every rule; the `CHECK`s are a second line of defence behind the
/// invariants the core asserts before every write.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE enrollments (
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    price BIGINT NOT NULL CHECK (price >= 0),
    amount_charged BIGINT NOT NULL CHECK (amount_charged >= 0),
    amount_paid BIGINT NOT NULL CHECK (amount_paid >= 0),
    amount_credited BIGINT NOT NULL CHECK (amount_credited >= 0),
    amount_refunded BIGINT NOT NULL CHECK (amount_refunded >= 0),
    amount_due BIGINT NOT NULL CHECK (amount_due >= 0),
    payment_status TEXT NOT NULL,
    access_policy_kind TEXT NOT NULL,
    access_policy_amount BIGINT,
    access_status TEXT NOT NULL,
    status TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_hash TEXT NOT NULL,
    PRIMARY KEY (user_id, course_id)
);

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
    -- One column naming the (enrollment, idempotency key) pair: '/' cannot
    -- occur in ids, so the text is unambiguous. Looked up on its own unique
    -- index, which no other index can shadow in a plan (NULL for the
    -- entries without a key).
    idempotency_lookup TEXT GENERATED ALWAYS AS
        (user_id || '/' || course_id || '/' || idempotency_key) STORED,
    PRIMARY KEY (user_id, course_id, seq)
);

CREATE UNIQUE INDEX ledger_idempotency_lookup ON ledger (idempotency_lookup);

CREATE TABLE api_tokens (
    token_hash BYTEA PRIMARY KEY,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
"#,
    r#"
-- Token lifecycle: a public id to list and revoke a token by, an optional
-- expiry, and the time of revocation. Tokens made before get a random id.
ALTER TABLE api_tokens ADD COLUMN id TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT;
UPDATE api_tokens
    SET id = 'tok_' || substr(md5(random()::text || encode(token_hash, 'hex')), 1, 16)
    WHERE id IS NULL;
ALTER TABLE api_tokens ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id);
"#,
    r#"
-- Holds: the enrollment's held sum, each entry's hold, and one row per hold
-- (see holds.rs). Rows written before this migration hold nothing.
ALTER TABLE enrollments ADD COLUMN amount_held BIGINT NOT NULL DEFAULT 0;
ALTER TABLE enrollments ADD CONSTRAINT enrollments_amount_held_within_due
    CHECK (amount_held >= 0 AND amount_held <= amount_due);
ALTER TABLE ledger ADD COLUMN hold_seq BIGINT;
ALTER TABLE ledger ADD COLUMN expires_at BIGINT;

CREATE TABLE holds (
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    hold_seq BIGINT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    expires_at BIGINT NOT NULL,
    reference TEXT,
    state TEXT NOT NULL CHECK (state IN ('OPEN', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    PRIMARY KEY (user_id, course_id, hold_seq)
);

CREATE INDEX holds_open_by_enrollment ON holds (user_id, course_id) WHERE state = 'OPEN';
CREATE INDEX holds_open_by_expiry ON holds (expires_at) WHERE state = 'OPEN';
"#,
    r#"
-- Events (see events.rs): each entry's status transitions (1 paid in full,
-- 2 access granted, 4 access revoked), its place in the global order, and
-- the one-row counter positions are taken from. Entries written before get
-- both, derived from their snapshots, in the order they were written.
ALTER TABLE ledger ADD COLUMN transitions SMALLINT NOT NULL DEFAULT 0
    CHECK (transitions BETWEEN 0 AND 7);
ALTER TABLE ledger ADD COLUMN position BIGINT;

UPDATE ledger SET transitions = changed.bits FROM (
    SELECT user_id, course_id, seq,
        (CASE WHEN paid = 'COMPLETED' AND coalesce(paid_before, '') <> 'COMPLETED' THEN 1 ELSE 0 END)
        + (CASE WHEN access = 'GRANTED' AND coalesce(access_before, '') <> 'GRANTED' THEN 2 ELSE 0 END)
        + (CASE WHEN access <> 'GRANTED' AND coalesce(access_before, '') = 'GRANTED' THEN 4 ELSE 0 END)
        AS bits
    FROM (
        SELECT user_id, course_id, seq,
            snapshot::jsonb ->> 'payment_status' AS paid,
            snapshot::jsonb ->> 'access_status' AS access,
            lag(snapshot::jsonb ->> 'payment_status')
                OVER (PARTITION BY user_id, course_id ORDER BY seq) AS paid_before,
            lag(snapshot::jsonb ->> 'access_status')
                OVER (PARTITION BY user_id, course_id ORDER BY seq) AS access_before
        FROM ledger
    ) AS statuses
) AS changed
WHERE ledger.user_id = changed.user_id AND ledger.course_id = changed.course_id
    AND ledger.seq = changed.seq AND changed.bits <> 0;

UPDATE ledger SET position = placed.position FROM (
    SELECT user_id, course_id, seq,
        sum(events) OVER (ORDER BY created_at, user_id, course_id, seq
            ROWS UNBOUNDED PRECEDING) - events + 1 AS position
    FROM (
        SELECT user_id, course_id, seq, created_at,
            1 + (CASE WHEN kind = 'CAPTURE' THEN 1 ELSE 0 END) + (transitions & 1)
                + ((transitions >> 1) & 1) + ((transitions >> 2) & 1) AS events
        FROM ledger
    ) AS counted
) AS placed
WHERE ledger.user_id = placed.user_id AND ledger.course_id = placed.course_id
    AND ledger.seq = placed.seq;

ALTER TABLE ledger ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX ledger_position ON ledger (position);

CREATE TABLE bursar_event_positions (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    next BIGINT NOT NULL
);
INSERT INTO bursar_event_positions (next)
    SELECT coalesce(max(position + 1 + (CASE WHEN kind = 'CAPTURE' THEN 1 ELSE 0 END)
        + (transitions & 1) + ((transitions >> 1) & 1) + ((transitions >> 2) & 1)), 1)
    FROM ledger;
"#,
    r#"
-- Webhooks (see webhooks.rs): the endpoints with their cursor, lease and
-- generation; the events waiting for a retry; the log of attempts, kept to
-- the newest per endpoint.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    types TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_after BIGINT NOT NULL,
    cursor BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('ACTIVE', 'FAILING')),
    failing_since BIGINT,
    generation BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL,
    attempts_logged BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE webhook_pending (
    endpoint_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, position)
);

CREATE TABLE webhook_attempts (
    endpoint_id TEXT NOT NULL,
    n BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    latency_ms BIGINT NOT NULL,
    error TEXT,
    at BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, n)
);
"#,
    r#"
-- Payment intake (see intake.rs): the processor's event on each entry taken
-- from one, the links from a processor's payment objects to their
-- enrollment, and the exceptions, each with its place in the global event
-- order, taken from bursar_event_positions like the ledger's.
ALTER TABLE ledger ADD COLUMN source TEXT;

CREATE TABLE intake_links (
    processor TEXT NOT NULL,
    object_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    course_id TEXT NOT NULL,
    PRIMARY KEY (processor, object_id)
);

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
    received_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL CHECK (attempts >= 1),
    next_retry_at BIGINT,
    dismiss_reason TEXT,
    position BIGINT NOT NULL,
    event TEXT NOT NULL
);

CREATE UNIQUE INDEX intake_exceptions_position ON intake_exceptions (position);
CREATE INDEX intake_exceptions_by_state ON intake_exceptions (state, position);
CREATE INDEX intake_exceptions_due ON intake_exceptions (next_retry_at) WHERE state = 'OPEN';
"#,
    r#"
-- Event publishers (see publishers.rs): how far each has delivered the feed,
-- and which server holds its lease until when (Unix microseconds, by the
-- database's clock).
CREATE TABLE event_publishers (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL
);
"#,
];

/// How the connection is encrypted and whether the server is authenticated,
/// after libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (the default, as in libpq).
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate must chain to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<TlsMode, StoreError> {
        match value {
            "disable" => Ok(TlsMode::Disable),
            "prefer" => Ok(TlsMode::Prefer),
            "require" => Ok(TlsMode::Require),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-full" => Ok(TlsMode::VerifyFull),
            _ => Err(StoreError::Config(format!(
                "sslmode must be disable, prefer, require, verify-ca or verify-full, not {value:?}"
            ))),
        }
    }
}

/// A parsed `postgres://` URL.
///
/// Every libpq-style parameter tokio-postgres knows is honoured
/// (`connect_timeout`, `application_name`, `options`, …). Two are read by
/// bursar itself, with libpq's meaning:
///
/// - `sslmode=disable|prefer|require|verify-ca|verify-full` (default
///   `prefer`). As in libpq, `prefer` and `require` encrypt without
///   authenticating the server unless `sslrootcert` is given; `verify-ca`
///   and `verify-full` check the certificate against `sslrootcert`, or
///   against the public webpki roots when it is not given.
/// - `sslrootcert=PATH`: PEM certificates of the authorities to trust.
#[derive(Clone)]
pub struct PostgresOptions {
    config: tokio_postgres::Config,
    tls_mode: TlsMode,
    root_certificates: Option<PathBuf>,
    /// The URL with any password hidden, for messages and logs.
    shown: String,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &self.shown)
            .field("tls_mode", &self.tls_mode)
            .finish()
    }
}

impl PostgresOptions {
    /// Parses a whole `postgres://` or `postgresql://` URL.
    pub fn parse(url: &str) -> Result<PostgresOptions, StoreError> {
        let shown = redact_password(url);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut tls_mode = TlsMode::Prefer;
        let mut root_certificates = None;
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", value)) => tls_mode = TlsMode::parse(&percent_decode(value))?,
                Some(("sslrootcert", value)) => {
                    root_certificates = Some(PathBuf::from(percent_decode(value)));
                }
                _ => passed_on.push(pair),
            }
        }
        let rest = if passed_on.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed_on.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|error| StoreError::Config(format!("bad PostgreSQL URL {shown}: {error}")))?;
        config.ssl_mode(match tls_mode {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("bursar");
        }
        Ok(PostgresOptions {
            config,
            tls_mode,
            root_certificates,
            shown,
        })
    }

    /// The URL with any password replaced by `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn tls_mode(&self) -> TlsMode {
        self.tls_mode
    }

    /// The connector that encrypts (or not) as the options say.
    fn tls(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (self.tls_mode, &self.root_certificates) {
            (TlsMode::Disable | TlsMode::Prefer | TlsMode::Require, None) => {
                Arc::new(EncryptOnly {
                    algorithms: provider.signature_verification_algorithms,
                })
            }
            (mode, roots) => {
                let roots = match roots {
                    Some(path) => roots_from_file(path)?,
                    None => RootCertStore {
                        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                    },
                };
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|error| {
                            StoreError::Config(format!("cannot verify TLS certificates: {error}"))
                        })?;
                if mode == TlsMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly { inner: webpki })
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| StoreError::Config(format!("TLS setup failed: {error}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// One connection outside any pool, its driver task spawned; for
    /// administrative work such as creating test databases.
    pub(crate) async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, connection) = self
            .config
            .connect(self.tls()?)
            .await
            .map_err(|error| classify(&error).error)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// Creates the database these options name when it does not exist yet,
    /// through the server's `postgres` maintenance database (so the user
    /// needs the `CREATEDB` privilege); for `bursar migrate`. Returns whether
    /// it created the database. Another process creating it at the same
    /// moment is fine.
    pub async fn create_database_if_missing(&self) -> Result<bool, StoreError> {
        let missing = match self.config.connect(self.tls()?).await {
            Ok(_) => false,
            Err(error) if error.code() == Some(&SqlState::INVALID_CATALOG_NAME) => true,
            Err(error) => return Err(classify(&error).error),
        };
        if !missing {
            return Ok(false);
        }
        let name = self
            .config
            .get_dbname()
            .or_else(|| self.config.get_user())
            .ok_or_else(|| StoreError::Config("the PostgreSQL URL names no database".into()))?
            .to_owned();
        let maintenance = self.with_database("postgres").connect().await?;
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match maintenance
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => Ok(true),
            Err(error) if error.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(false),
            Err(error) => Err(StoreError::Config(format!(
                "cannot create the database {name:?}: {}",
                error
                    .as_db_error()
                    .map_or_else(|| error.to_string(), ToString::to_string)
            ))),
        }
    }

    /// The same server, another database.
    pub(crate) fn with_database(&self, name: &str) -> PostgresOptions {
        let mut options = self.clone();
        options.config.dbname(name);
        options
    }
}

/// The authorities in a PEM file.
fn roots_from_file(path: &Path) -> Result<RootCertStore, StoreError> {
    let bad = |error: &dyn std::fmt::Display| {
        StoreError::Config(format!(
            "cannot read sslrootcert {}: {error}",
            path.display()
        ))
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|error| bad(&error))? {
        roots
            .add(certificate.map_err(|error| bad(&error))?)
            .map_err(|error| bad(&error))?;
    }
    if roots.is_empty() {
        return Err(bad(&"the file holds no certificate"));
    }
    Ok(roots)
}

/// libpq's `sslmode=prefer` and `require` without a root certificate:
/// encrypted against eavesdroppers, the server not authenticated. The
/// handshake signatures are still checked, so the session key is the one the
/// certificate's owner holds.
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must reach a trusted root, the name on the
/// certificate may be any.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked only after the chain has been verified, so a
        // name mismatch means the chain itself is good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, and
/// likewise a `password=` parameter.
pub(crate) fn redact_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut shown = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
                    None => base.to_owned(),
                },
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// Decodes `%XX` escapes in a URL parameter value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[index + 1..index + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            decoded.push(byte);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// A failed database call, sorted by what to do about it.
pub(crate) struct Failure {
    pub(crate) error: StoreError,
    /// Running the whole transaction again may well succeed: a conflict with
    /// another transaction, or a connection that dropped mid-way.
    pub(crate) transient: bool,
}

/// The SQLSTATEs of a conflict with a concurrent transaction: the retry
/// re-reads and decides again.
fn is_conflict(state: &SqlState) -> bool {
    *state == SqlState::T_R_SERIALIZATION_FAILURE
        || *state == SqlState::T_R_DEADLOCK_DETECTED
        || *state == SqlState::UNIQUE_VIOLATION
        || *state == SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN
}

/// The SQLSTATEs of a server that is going away, starting up or full.
fn is_unavailable(state: &SqlState) -> bool {
    state.code().starts_with("08")
        || *state == SqlState::ADMIN_SHUTDOWN
        || *state == SqlState::CRASH_SHUTDOWN
        || *state == SqlState::CANNOT_CONNECT_NOW
        || *state == SqlState::TOO_MANY_CONNECTIONS
}

/// The SQLSTATEs of storage that refuses a write: insufficient resources
/// (`53…`: disk full, out of memory, a configured limit), system and I/O
/// errors (`58…`), a read-only transaction (`25006`: a standby, or a
/// database set read-only) and a permission denied (`42501`). Nothing was
/// committed; the batch fails at once, as a `Storage` fault (503).
fn is_storage_fault(state: &SqlState) -> bool {
    let code = state.code();
    code.starts_with("53")
        || code.starts_with("58")
        || *state == SqlState::READ_ONLY_SQL_TRANSACTION
        || *state == SqlState::INSUFFICIENT_PRIVILEGE
}

/// What a database error with this SQLSTATE and message means for a batch.
fn classify_state(state: &SqlState, message: String) -> Failure {
    if is_conflict(state) {
        return Failure {
            error: StoreError::Unavailable(format!(
                "conflicting transactions kept the batch from committing: {message}"
            )),
            transient: true,
        };
    }
    if is_unavailable(state) {
        return Failure {
            error: StoreError::Unavailable(message),
            transient: true,
        };
    }
    if is_storage_fault(state) {
        return Failure {
            error: StoreError::Storage(message),
            transient: false,
        };
    }
    Failure {
        error: StoreError::Internal(message),
        transient: false,
    }
}

fn classify(error: &tokio_postgres::Error) -> Failure {
    if let Some(database_error) = error.as_db_error() {
        let state = database_error.code();
        let mut message = database_error.to_string();
        if !is_conflict(state)
            && !is_unavailable(state)
            && let Some(detail) = database_error.detail()
        {
            message.push_str(&format!(" ({detail})"));
        }
        return classify_state(state, message);
    }
    // Without a SQLSTATE the failure is the connection's: closed, reset, timed
    // out or refused.
    let mut described = error.to_string();
    let mut source = std::error::Error::source(error);
    let mut input_output = false;
    while let Some(cause) = source {
        input_output |= cause.is::<std::io::Error>();
        let text = cause.to_string();
        if !described.contains(&text) {
            described.push_str(": ");
            described.push_str(&text);
        }
        source = cause.source();
    }
    if error.is_closed() || input_output || described.contains("timed out") {
        return Failure {
            error: StoreError::Unavailable(format!("PostgreSQL connection failed: {described}")),
            transient: true,
        };
    }
    Failure {
        error: StoreError::Internal(format!("PostgreSQL: {described}")),
        transient: false,
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Failure {
        classify(&error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }
}

/// No connection could be had: the database is unreachable or overloaded.
/// Never retried here, so a request fails fast.
fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Timeout(_) => StoreError::Unavailable(format!(
            "no PostgreSQL connection within {} s",
            POOL_WAIT_TIMEOUT.as_secs()
        )),
        PoolError::Backend(error) => match classify(&error).error {
            StoreError::Internal(message) if error.as_db_error().is_none() => {
                StoreError::Unavailable(message)
            }
            other => other,
        },
        PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
        other => StoreError::Internal(format!("PostgreSQL connection pool: {other}")),
    }
}

/// How long to sleep before retry number `retry` (1, 2, …): "full jitter",
/// a uniformly random time up to the exponential bound, so processes that
/// collided once do not collide again in step.
fn backoff(retry: u32) -> Duration {
    let bound = RETRY_BACKOFF_BASE
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(RETRY_BACKOFF_MAX);
    // A randomly keyed hash of the current time is random enough for jitter
    // and needs no dependency.
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let bound_micros = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX).max(1);
    Duration::from_micros(random % bound_micros)
}

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
            let result = migrate_once(&mut client).await;
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
                execute_batch(&mut client, &requests, &writes, now),
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
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM ledger WHERE user_id = $1 AND course_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
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
                parse_entry(key, row, 0)
                    .map(|(entry, _)| entry)
                    .map_err(StoreError::Internal)
            })
            .collect()
    }

    pub async fn events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        let mut client = self.connection().await?;
        let snapshot = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(read_error)?;
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
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(read_error)?;
        let report = audit(&transaction).await?;
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

pub(crate) fn read_error(error: tokio_postgres::Error) -> StoreError {
    classify(&error).error
}

async fn migrate_once(client: &mut Object) -> Result<(), Failure> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bursar_schema_migrations (
                version BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            INSERT INTO bursar_schema_migrations (version) VALUES (0) ON CONFLICT (version) DO NOTHING;",
        )
        .await
        .map_err(migration_failure)?;
    let transaction = client.transaction().await?;
    transaction
        .query(
            "SELECT version FROM bursar_schema_migrations WHERE version = 0 FOR UPDATE",
            &[],
        )
        .await?;
    let applied: i64 = transaction
        .query_one("SELECT max(version) FROM bursar_schema_migrations", &[])
        .await?
        .try_get(0)?;
    let applied = usize::try_from(applied)
        .map_err(|_| StoreError::Config("negative schema version".into()))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Config(format!(
            "the database has schema version {applied}, newer than this bursar knows ({}); upgrade bursar",
            MIGRATIONS.len()
        ))
        .into());
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = index as i64 + 1;
        transaction
            .batch_execute(migration)
            .await
            .map_err(migration_failure)?;
        transaction
            .execute(
                "INSERT INTO bursar_schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await?;
        tracing::info!(version, "applied schema migration");
    }
    transaction.commit().await?;
    Ok(())
}

/// A concurrent `CREATE TABLE` by another process starting at the same time
/// shows up as a duplicate table: run the migration again.
fn migration_failure(error: tokio_postgres::Error) -> Failure {
    // Two processes creating the same table at once collide either on the
    // table (42P07) or on its row type in pg_type (23505, "type … already
    // exists"); both mean "someone else is migrating": retry.
    let racing = [
        SqlState::DUPLICATE_TABLE,
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_OBJECT,
    ];
    if error.code().is_some_and(|code| racing.contains(code)) {
        return Failure {
            error: StoreError::Unavailable(format!("concurrent migration: {error}")),
            transient: true,
        };
    }
    classify(&error)
}

const ENROLLMENT_COLUMNS: &str = "user_id, course_id, currency, price, amount_charged, amount_paid, \
     amount_credited, amount_refunded, amount_due, payment_status, access_policy_kind, \
     access_policy_amount, access_status, status, version, created_at, updated_at, last_hash, \
     amount_held";

const ENTRY_COLUMNS: &str = "seq, kind, amount, currency, idempotency_key, fingerprint, reference, \
     reason, created_at, snapshot, prev_hash, hash, hold_seq, expires_at, source";

/// Locks every existing enrollment of the batch, in key order.
const LOCK_ENROLLMENTS: &str = "SELECT user_id, course_id, currency, price, amount_charged, \
     amount_paid, amount_credited, amount_refunded, amount_due, payment_status, \
     access_policy_kind, access_policy_amount, access_status, status, version, created_at, \
     updated_at, last_hash, amount_held FROM enrollments \
     WHERE (user_id, course_id) IN (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
     ORDER BY user_id, course_id FOR UPDATE";

/// The stored operations of a batch's (enrollment, idempotency key) pairs,
/// by the one-column unique index: a plan on the primary key with a filter
/// would walk an enrollment's whole ledger for every key.
const LOAD_STORED: &str = "SELECT seq, kind, amount, currency, idempotency_key, fingerprint, \
     reference, reason, created_at, snapshot, prev_hash, hash, hold_seq, expires_at, source, \
     user_id, course_id FROM ledger \
     WHERE idempotency_lookup = ANY($1::TEXT[])";

const INSERT_ENROLLMENTS: &str = "INSERT INTO enrollments (user_id, course_id, currency, price, \
     amount_charged, amount_paid, amount_credited, amount_refunded, amount_due, payment_status, \
     access_policy_kind, access_policy_amount, access_status, status, version, created_at, \
     updated_at, last_hash, amount_held) \
     SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], \
     $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[], $11::TEXT[], \
     $12::BIGINT[], $13::TEXT[], $14::TEXT[], $15::BIGINT[], $16::BIGINT[], $17::BIGINT[], \
     $18::TEXT[], $19::BIGINT[])";

const UPDATE_ENROLLMENTS: &str = "UPDATE enrollments AS e SET amount_charged = u.amount_charged, \
     amount_paid = u.amount_paid, amount_credited = u.amount_credited, \
     amount_refunded = u.amount_refunded, amount_due = u.amount_due, \
     payment_status = u.payment_status, access_status = u.access_status, status = u.status, \
     version = u.version, updated_at = u.updated_at, last_hash = u.last_hash, \
     amount_held = u.amount_held \
     FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], \
     $6::BIGINT[], $7::BIGINT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::BIGINT[], \
     $12::BIGINT[], $13::TEXT[], $14::BIGINT[], $15::BIGINT[]) \
     AS u(user_id, course_id, amount_charged, amount_paid, amount_credited, amount_refunded, \
     amount_due, payment_status, access_status, status, version, updated_at, last_hash, \
     version_before, amount_held) \
     WHERE e.user_id = u.user_id AND e.course_id = u.course_id AND e.version = u.version_before";

const INSERT_ENTRIES: &str = "INSERT INTO ledger (user_id, course_id, seq, kind, amount, \
     currency, idempotency_key, fingerprint, reference, reason, created_at, snapshot, \
     prev_hash, hash, hold_seq, expires_at, position, transitions, source) \
     SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BIGINT[], \
     $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::BIGINT[], $12::TEXT[], \
     $13::TEXT[], $14::TEXT[], $15::BIGINT[], $16::BIGINT[], $17::BIGINT[], $18::SMALLINT[], \
     $19::TEXT[])";

/// One attempt at a batch: one transaction, a handful of statements. The
/// plain requests' outcomes, and each intake write's (see `intake.rs`).
async fn execute_batch(
    client: &mut Object,
    plain: &[Request],
    writes: &[IntakeWrite],
    now: Timestamp,
) -> Result<(Vec<Outcome>, Vec<IntakeOutcome>), Failure> {
    let lock = client.prepare_cached(LOCK_ENROLLMENTS).await?;
    let transaction = client.transaction().await?;
    let mut input = BatchInput::default();

    // The intake's exceptions first (in id order), then the enrollments (in
    // key order): every batch locks in this one order.
    let existing = intake::postgres::load(&transaction, &intake::exception_ids(writes)).await?;
    let mut prepared = intake::prepare(plain, writes, &existing);
    let requests: &[Request] = &prepared.requests;

    let keys = enrollment_keys(requests);
    let user_ids: Vec<&str> = keys.iter().map(|key| key.user_id.as_str()).collect();
    let course_ids: Vec<&str> = keys.iter().map(|key| key.course_id.as_str()).collect();
    for row in transaction.query(&lock, &[&user_ids, &course_ids]).await? {
        let state = checked_state(&row)?;
        input.states.insert(state.enrollment.key(), state);
    }
    holds::postgres::load_into(&transaction, &mut input.states, &named_holds(requests)).await?;

    // Only an existing enrollment can hold stored operations.
    let wanted: Vec<(EnrollmentKey, IdempotencyKey)> = idempotency_keys(requests)
        .into_iter()
        .filter(|(key, _)| input.states.contains_key(key))
        .collect();
    if !wanted.is_empty() {
        let lookups: Vec<String> = wanted
            .iter()
            .map(|(key, idempotency_key)| {
                format!("{}/{}/{idempotency_key}", key.user_id, key.course_id)
            })
            .collect();
        // Not a cached prepared statement: an unnamed one is planned for
        // each batch with the ledger as it is now. A generic plan cached
        // while the ledger was empty keeps scanning all of it, long after it
        // has grown, until autovacuum happens to analyze it (seen on a fresh
        // database: 24 million rows read in six seconds).
        for row in transaction.query(LOAD_STORED, &[&lookups]).await? {
            let key = row_key(&row, 15).map_err(StoreError::Internal)?;
            let (entry, fingerprint) = parse_entry(&key, &row, 0).map_err(StoreError::Internal)?;
            let idempotency_key = entry.idempotency_key.clone().ok_or_else(|| {
                StoreError::Internal(format!("ledger entry {key} seq {} lost its key", entry.seq))
            })?;
            input.stored.insert(
                (key, idempotency_key),
                StoredOperation { fingerprint, entry },
            );
        }
    }

    let versions_before: HashMap<EnrollmentKey, u64> = input
        .states
        .iter()
        .map(|(key, state)| (key.clone(), state.enrollment.version))
        .collect();
    input.intake = std::mem::take(&mut prepared.intake);
    let plan = plan_batch(input, requests, now);

    let (mut created, mut updated): (Vec<&EnrollmentState>, Vec<&EnrollmentState>) = plan
        .changed
        .iter()
        .partition(|state| !versions_before.contains_key(&state.enrollment.key()));
    // Inserting in key order too keeps two batches that create the same
    // enrollments from waiting on each other in a cycle.
    created.sort_by_key(|state| state.enrollment.key());
    updated.sort_by_key(|state| state.enrollment.key());
    if !created.is_empty() {
        insert_enrollments(&transaction, &created).await?;
    }
    if !updated.is_empty() {
        update_enrollments(&transaction, &updated, &versions_before).await?;
    }
    let mut settled = intake::settle(prepared, writes, plan.outcomes, existing, now)?;
    // One reservation for the entries' events and the new exceptions, in
    // that order.
    let entry_events = entry_events(&plan.new_entries, &plan.transitions);
    let positions = entry_events + settled.new_exceptions();
    if positions > 0 {
        let first = events::postgres::reserve_positions(&transaction, positions).await?;
        if !plan.new_entries.is_empty() {
            insert_entries(&transaction, &plan.new_entries, &plan.transitions, first).await?;
            holds::postgres::write(&transaction, &plan.new_entries).await?;
        }
        settled.place(first + entry_events);
    }
    intake::postgres::write(&transaction, &settled).await?;
    transaction.commit().await?;
    Ok((settled.plain, settled.outcomes))
}

fn policy_columns(policy: &AccessPolicy) -> (&'static str, Option<i64>) {
    match policy {
        AccessPolicy::FullPayment => ("FULL_PAYMENT", None),
        AccessPolicy::MinSettled { amount } => ("MIN_SETTLED", Some(amount.minor_units())),
    }
}

/// One array parameter of a bulk statement: a field of every state.
fn column<'a, T>(states: &[&'a EnrollmentState], get: impl Fn(&'a EnrollmentState) -> T) -> Vec<T> {
    states.iter().map(|state| get(state)).collect()
}

async fn insert_enrollments(
    transaction: &deadpool_postgres::Transaction<'_>,
    states: &[&EnrollmentState],
) -> Result<(), Failure> {
    let user_ids: Vec<&str> = column(states, |state| state.enrollment.user_id.as_str());
    let course_ids: Vec<&str> = column(states, |state| state.enrollment.course_id.as_str());
    let currencies: Vec<&str> = column(states, |state| state.enrollment.currency.as_str());
    let payment_statuses: Vec<&str> =
        column(states, |state| state.enrollment.payment_status.as_str());
    let policy_kinds: Vec<&str> = column(states, |state| {
        policy_columns(&state.enrollment.access_policy).0
    });
    let policy_amounts: Vec<Option<i64>> = column(states, |state| {
        policy_columns(&state.enrollment.access_policy).1
    });
    let access_statuses: Vec<&str> =
        column(states, |state| state.enrollment.access_status.as_str());
    let statuses: Vec<&str> = column(states, |state| state.enrollment.status.as_str());
    let last_hashes: Vec<String> = column(states, |state| state.last_hash.to_hex());
    let statement = transaction.prepare_cached(INSERT_ENROLLMENTS).await?;
    transaction
        .execute(
            &statement,
            &[
                &user_ids,
                &course_ids,
                &currencies,
                &column(states, |state| state.enrollment.price),
                &column(states, |state| state.enrollment.amount_charged),
                &column(states, |state| state.enrollment.amount_paid),
                &column(states, |state| state.enrollment.amount_credited),
                &column(states, |state| state.enrollment.amount_refunded),
                &column(states, |state| state.enrollment.amount_due),
                &payment_statuses,
                &policy_kinds,
                &policy_amounts,
                &access_statuses,
                &statuses,
                &column(states, |state| state.enrollment.version as i64),
                &column(states, |state| state.enrollment.created_at.unix_micros()),
                &column(states, |state| state.enrollment.updated_at.unix_micros()),
                &last_hashes,
                &column(states, |state| state.enrollment.amount_held),
            ],
        )
        .await?;
    Ok(())
}

async fn update_enrollments(
    transaction: &deadpool_postgres::Transaction<'_>,
    states: &[&EnrollmentState],
    versions_before: &HashMap<EnrollmentKey, u64>,
) -> Result<(), Failure> {
    let user_ids: Vec<&str> = column(states, |state| state.enrollment.user_id.as_str());
    let course_ids: Vec<&str> = column(states, |state| state.enrollment.course_id.as_str());
    let payment_statuses: Vec<&str> =
        column(states, |state| state.enrollment.payment_status.as_str());
    let access_statuses: Vec<&str> =
        column(states, |state| state.enrollment.access_status.as_str());
    let statuses: Vec<&str> = column(states, |state| state.enrollment.status.as_str());
    let last_hashes: Vec<String> = column(states, |state| state.last_hash.to_hex());
    let before: Vec<i64> = column(states, |state| {
        versions_before[&state.enrollment.key()] as i64
    });
    let statement = transaction.prepare_cached(UPDATE_ENROLLMENTS).await?;
    let updated = transaction
        .execute(
            &statement,
            &[
                &user_ids,
                &course_ids,
                &column(states, |state| state.enrollment.amount_charged),
                &column(states, |state| state.enrollment.amount_paid),
                &column(states, |state| state.enrollment.amount_credited),
                &column(states, |state| state.enrollment.amount_refunded),
                &column(states, |state| state.enrollment.amount_due),
                &payment_statuses,
                &access_statuses,
                &statuses,
                &column(states, |state| state.enrollment.version as i64),
                &column(states, |state| state.enrollment.updated_at.unix_micros()),
                &last_hashes,
                &before,
                &column(states, |state| state.enrollment.amount_held),
            ],
        )
        .await?;
    if updated != states.len() as u64 {
        // The rows are locked, so on PostgreSQL this cannot happen; on a
        // database whose locking is weaker it is a lost race, and the retry
        // decides again on what is now there.
        return Err(Failure {
            error: StoreError::Unavailable(format!(
                "{} of {} enrollments changed under the batch",
                states.len() as u64 - updated,
                states.len()
            )),
            transient: true,
        });
    }
    Ok(())
}

/// The events a batch's new entries yield: how many positions they take.
fn entry_events(entries: &[(LedgerEntry, Hash)], transitions: &[Transitions]) -> u64 {
    entries
        .iter()
        .zip(transitions)
        .map(|((entry, _), transitions)| event_count(entry.kind, *transitions))
        .sum()
}

/// Writes the batch's new entries, the first at position `first`.
async fn insert_entries(
    transaction: &deadpool_postgres::Transaction<'_>,
    entries: &[(LedgerEntry, Hash)],
    transitions: &[Transitions],
    first: u64,
) -> Result<(), Failure> {
    let mut position = first;
    let mut positions = Vec::with_capacity(entries.len());
    let mut bits = Vec::with_capacity(entries.len());
    for ((entry, _), transitions) in entries.iter().zip(transitions) {
        positions.push(position as i64);
        bits.push(i16::from(transitions.bits()));
        position = events::position_after(position, entry, *transitions);
    }
    let mut user_ids = Vec::with_capacity(entries.len());
    let mut course_ids = Vec::with_capacity(entries.len());
    let mut seqs = Vec::with_capacity(entries.len());
    let mut kinds = Vec::with_capacity(entries.len());
    let mut amounts = Vec::with_capacity(entries.len());
    let mut currencies = Vec::with_capacity(entries.len());
    let mut idempotency = Vec::with_capacity(entries.len());
    let mut fingerprints = Vec::with_capacity(entries.len());
    let mut references = Vec::with_capacity(entries.len());
    let mut reasons = Vec::with_capacity(entries.len());
    let mut created = Vec::with_capacity(entries.len());
    let mut snapshots = Vec::with_capacity(entries.len());
    let mut previous = Vec::with_capacity(entries.len());
    let mut hashes = Vec::with_capacity(entries.len());
    let mut hold_seqs = Vec::with_capacity(entries.len());
    let mut expiries = Vec::with_capacity(entries.len());
    let mut sources = Vec::with_capacity(entries.len());
    for (entry, fingerprint) in entries {
        sources.push(
            entry
                .source
                .as_ref()
                .map(|source| serde_json::to_string(source).expect("a source serializes")),
        );
        hold_seqs.push(entry.hold_seq.map(|seq| seq as i64));
        expiries.push(entry.expires_at.map(Timestamp::unix_micros));
        user_ids.push(entry.enrollment.user_id.as_str());
        course_ids.push(entry.enrollment.course_id.as_str());
        seqs.push(entry.seq as i64);
        kinds.push(entry.kind.as_str());
        amounts.push(entry.amount);
        currencies.push(entry.currency.as_str());
        idempotency.push(entry.idempotency_key.as_ref().map(IdempotencyKey::as_str));
        fingerprints.push(fingerprint.to_hex());
        references.push(entry.reference.as_ref().map(Reference::as_str));
        reasons.push(entry.reason.as_ref().map(Reason::as_str));
        created.push(entry.created_at.unix_micros());
        snapshots.push(serde_json::to_string(&entry.enrollment).expect("an enrollment serializes"));
        previous.push(entry.prev_hash.to_hex());
        hashes.push(entry.hash.to_hex());
    }
    let statement = transaction.prepare_cached(INSERT_ENTRIES).await?;
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
                &snapshots,
                &previous,
                &hashes,
                &hold_seqs,
                &expiries,
                &positions,
                &bits,
                &sources,
            ],
        )
        .await?;
    Ok(())
}

/// An enrollment row, parsed but not yet checked.
fn parse_state(row: &Row) -> Result<EnrollmentState, String> {
    let user_id: String = row.try_get(0).map_err(|error| error.to_string())?;
    let course_id: String = row.try_get(1).map_err(|error| error.to_string())?;
    let bad = |what: &str| format!("enrollment {user_id}/{course_id}: bad {what}");
    let text = |index: usize, what: &str| -> Result<String, String> {
        row.try_get::<_, String>(index).map_err(|_| bad(what))
    };
    let number = |index: usize, what: &str| -> Result<i64, String> {
        row.try_get::<_, i64>(index).map_err(|_| bad(what))
    };
    let policy_amount: Option<i64> = row.try_get(11).map_err(|_| bad("policy amount"))?;
    let access_policy = match text(10, "access policy")?.as_str() {
        "FULL_PAYMENT" => AccessPolicy::FullPayment,
        "MIN_SETTLED" => AccessPolicy::MinSettled {
            amount: Price::new(i128::from(
                policy_amount.ok_or_else(|| bad("policy amount"))?,
            ))
            .map_err(|_| bad("policy amount"))?,
        },
        _ => return Err(bad("access policy")),
    };
    let enrollment = Enrollment {
        user_id: UserId::parse(&user_id).map_err(|_| bad("user_id"))?,
        course_id: CourseId::parse(&course_id).map_err(|_| bad("course_id"))?,
        currency: Currency::parse(&text(2, "currency")?).map_err(|_| bad("currency"))?,
        price: number(3, "price")?,
        amount_charged: number(4, "amount_charged")?,
        amount_paid: number(5, "amount_paid")?,
        amount_credited: number(6, "amount_credited")?,
        amount_refunded: number(7, "amount_refunded")?,
        amount_due: number(8, "amount_due")?,
        amount_held: number(18, "amount_held")?,
        amount_available: number(8, "amount_due")?.saturating_sub(number(18, "amount_held")?),
        payment_status: PaymentStatus::parse(&text(9, "payment_status")?)
            .ok_or_else(|| bad("payment_status"))?,
        access_policy,
        access_status: AccessStatus::parse(&text(12, "access_status")?)
            .ok_or_else(|| bad("access_status"))?,
        status: EnrollmentStatus::parse(&text(13, "status")?).ok_or_else(|| bad("status"))?,
        version: u64::try_from(number(14, "version")?).map_err(|_| bad("version"))?,
        created_at: Timestamp::from_unix_micros(number(15, "created_at")?),
        updated_at: Timestamp::from_unix_micros(number(16, "updated_at")?),
    };
    let last_hash = Hash::from_hex(&text(17, "last_hash")?).ok_or_else(|| bad("last_hash"))?;
    Ok(EnrollmentState::new(enrollment, last_hash))
}

/// Parses a row and asserts the money invariants on what was read back: a
/// broken one is corruption or a bug, never something to serve or build on.
fn checked_state(row: &Row) -> Result<EnrollmentState, StoreError> {
    let state = parse_state(row).map_err(StoreError::Internal)?;
    state.enrollment.check().map_err(|broken| {
        StoreError::Internal(format!(
            "enrollment {} breaks an invariant: {broken}",
            state.enrollment.key()
        ))
    })?;
    Ok(state)
}

/// The enrollment key in columns `first` and `first + 1`.
pub(crate) fn row_key(row: &Row, first: usize) -> Result<EnrollmentKey, String> {
    let user_id: String = row.try_get(first).map_err(|error| error.to_string())?;
    let course_id: String = row.try_get(first + 1).map_err(|error| error.to_string())?;
    Ok(EnrollmentKey {
        user_id: UserId::parse(&user_id).map_err(|_| format!("bad stored user_id {user_id:?}"))?,
        course_id: CourseId::parse(&course_id)
            .map_err(|_| format!("bad stored course_id {course_id:?}"))?,
    })
}

/// A ledger row (`ENTRY_COLUMNS` from column `first` on) and the fingerprint
/// of the request that produced it.
pub(crate) fn parse_entry(
    key: &EnrollmentKey,
    row: &Row,
    first: usize,
) -> Result<(LedgerEntry, Hash), String> {
    let seq: i64 = row.try_get(first).map_err(|error| error.to_string())?;
    let bad = |what: &str| format!("ledger entry {key} seq {seq}: bad {what}");
    let text = |index: usize, what: &str| -> Result<String, String> {
        row.try_get::<_, String>(first + index)
            .map_err(|_| bad(what))
    };
    let optional = |index: usize, what: &str| -> Result<Option<String>, String> {
        row.try_get::<_, Option<String>>(first + index)
            .map_err(|_| bad(what))
    };
    let number = |index: usize, what: &str| -> Result<i64, String> {
        row.try_get::<_, i64>(first + index).map_err(|_| bad(what))
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
            .try_get::<_, Option<i64>>(first + 12)
            .map_err(|_| bad("hold_seq"))?
            .map(u64::try_from)
            .transpose()
            .map_err(|_| bad("hold_seq"))?,
        expires_at: row
            .try_get::<_, Option<i64>>(first + 13)
            .map_err(|_| bad("expires_at"))?
            .map(Timestamp::from_unix_micros),
        source: optional(14, "source")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|_| bad("source"))?,
    };
    let fingerprint = Hash::from_hex(&text(5, "fingerprint")?).ok_or_else(|| bad("fingerprint"))?;
    Ok((entry, fingerprint))
}

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
        let user_id: &str = row.try_get(15).map_err(read_error)?;
        let course_id: &str = row.try_get(16).map_err(read_error)?;
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
async fn audit(transaction: &Transaction<'_>) -> Result<AuditReport, StoreError> {
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
        .prepare(&format!(
            "SELECT {ENTRY_COLUMNS}, user_id, course_id FROM ledger \
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
                match parse_entry(&key, &row, 0) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_faults_are_storage_errors_and_conflicts_are_retried() {
        let storage = [
            SqlState::DISK_FULL,
            SqlState::INSUFFICIENT_RESOURCES,
            SqlState::OUT_OF_MEMORY,
            SqlState::IO_ERROR,
            SqlState::SYSTEM_ERROR,
            SqlState::UNDEFINED_FILE,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ];
        for state in storage {
            let failure = classify_state(&state, "m".into());
            assert!(
                matches!(failure.error, StoreError::Storage(_)) && !failure.transient,
                "{state:?}"
            );
        }
        for state in [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ] {
            let failure = classify_state(&state, "m".into());
            assert!(failure.transient, "{state:?}");
            assert!(matches!(failure.error, StoreError::Unavailable(_)));
        }
        for state in [SqlState::ADMIN_SHUTDOWN, SqlState::TOO_MANY_CONNECTIONS] {
            assert!(matches!(
                classify_state(&state, "m".into()).error,
                StoreError::Unavailable(_)
            ));
        }
        for state in [SqlState::DATA_CORRUPTED, SqlState::SYNTAX_ERROR] {
            assert!(matches!(
                classify_state(&state, "m".into()).error,
                StoreError::Internal(_)
            ));
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_password("postgres://bursar:s3cret@db.example:5432/bursar?sslmode=require"),
            "postgres://bursar:***@db.example:5432/bursar?sslmode=require"
        );
        assert_eq!(
            redact_password("postgresql://db/bursar?user=a&password=s3cret"),
            "postgresql://db/bursar?user=a&password=***"
        );
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_by_bursar() {
        let options = PostgresOptions::parse(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .expect("parses");
        assert_eq!(options.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(
            options.root_certificates.as_deref(),
            Some(Path::new("/tmp/ca.pem"))
        );
        assert_eq!(options.config.get_application_name(), Some("x"));
        assert_eq!(options.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));

        let options = PostgresOptions::parse("postgresql://u@h/db").expect("parses");
        assert_eq!(options.tls_mode(), TlsMode::Prefer);
        assert_eq!(options.config.get_application_name(), Some("bursar"));

        assert!(matches!(
            PostgresOptions::parse("postgres://u@h/db?sslmode=sometimes"),
            Err(StoreError::Config(_))
        ));
        assert!(matches!(
            PostgresOptions::parse("postgres://u:secret@h/db?no_such_option=1"),
            Err(StoreError::Config(message)) if !message.contains("secret")
        ));
    }

    #[test]
    fn every_tls_mode_builds_a_connector() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let options = PostgresOptions::parse(&format!("postgres://u@h/db?sslmode={mode}"))
                .expect("parses");
            assert!(options.tls().is_ok(), "{mode}");
        }
    }

    fn enroll(user: &str, course: &str, price: i64) -> Request {
        Request {
            key: key(user, course),
            idempotency_key: None,
            command: bursar_core::Command::Enroll(bursar_core::EnrollTerms {
                currency: Currency::parse("USD").expect("currency"),
                price: Price::new(i128::from(price)).expect("price"),
                access_policy: AccessPolicy::FullPayment,
            }),
        }
    }

    fn pay(user: &str, course: &str, idempotency_key: &str, amount: i64) -> Request {
        Request {
            key: key(user, course),
            idempotency_key: Some(IdempotencyKey::parse(idempotency_key).expect("key")),
            command: bursar_core::Command::Payment {
                amount: bursar_core::Amount::new(i128::from(amount)).expect("amount"),
                currency: None,
                reference: None,
            },
        }
    }

    fn key(user: &str, course: &str) -> EnrollmentKey {
        EnrollmentKey {
            user_id: UserId::parse(user).expect("user id"),
            course_id: CourseId::parse(course).expect("course id"),
        }
    }

    async fn open(url: &str) -> PostgresStore {
        PostgresStore::open(PostgresOptions::parse(url).expect("url"))
            .await
            .expect("open")
    }

    /// A token made under the first schema gets a random public id when
    /// the second migration adds ids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_tokens_made_before_ids_get_one() {
        if !crate::testing::postgres_available() {
            return;
        }
        let database = crate::testing::PostgresTestDb::create();
        database.execute(&format!(
            "CREATE TABLE bursar_schema_migrations (
                version BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            INSERT INTO bursar_schema_migrations (version) VALUES (0), (1);
            {}
            INSERT INTO api_tokens (token_hash, role, created_at)
                VALUES (decode(repeat('ab', 32), 'hex'), 'admin', 7);",
            MIGRATIONS[0]
        ));
        let store = open(database.url()).await;
        let tokens = store.tokens().await.expect("tokens");
        assert_eq!(tokens.len(), 1);
        assert!(
            tokens[0].id.starts_with("tok_") && tokens[0].id.len() == 20,
            "{}",
            tokens[0].id
        );
        assert_eq!(tokens[0].token_hash, [0xab; 32]);
        assert_eq!((tokens[0].expires_at, tokens[0].revoked_at), (None, None));
    }

    /// Three processes starting at once on an empty database: the
    /// migrations run once, and every store works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_concurrent_starts_migrate_once() {
        if !crate::testing::postgres_available() {
            return;
        }
        let database = crate::testing::PostgresTestDb::create();
        let url = database.url().to_owned();
        let opening: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { open(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for task in opening {
            stores.push(task.await.expect("open task"));
        }
        let client = stores[0].connection().await.expect("connection");
        let versions: Vec<i64> = client
            .query(
                "SELECT version FROM bursar_schema_migrations ORDER BY version",
                &[],
            )
            .await
            .expect("versions")
            .iter()
            .map(|row| row.get(0))
            .collect();
        let expected: Vec<i64> = (0..=MIGRATIONS.len() as i64).collect();
        assert_eq!(versions, expected);
        // Opening again applies nothing and fails nothing.
        open(&url).await;
        for store in &stores {
            store.ping().await.expect("ping");
        }
    }

    /// Two processes creating the same new enrollment and paying into it with
    /// the same key at once: one insert loses on the unique key, its batch is
    /// retried, and the retry replays instead of applying twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_racing_inserts_are_retried_and_replayed() {
        if !crate::testing::postgres_available() {
            return;
        }
        let database = crate::testing::PostgresTestDb::create();
        let first = open(database.url()).await;
        let second = open(database.url()).await;
        let now = Timestamp::from_unix_micros(1_788_253_200_000_000);
        for round in 0..20 {
            let course = format!("course-{round}");
            let batch = vec![
                enroll("alice", &course, 10_000),
                pay("alice", &course, "k1", 2_500),
            ];
            let (one, two) = tokio::join!(
                first.execute(batch.clone(), now),
                second.execute(batch, now)
            );
            let (one, two) = (one.expect("first batch"), two.expect("second batch"));
            let accepted = [&one[1], &two[1]]
                .iter()
                .filter(|outcome| matches!(outcome, Outcome::Accepted(_)))
                .count();
            let replayed = [&one[1], &two[1]]
                .iter()
                .filter(|outcome| matches!(outcome, Outcome::Replayed(_)))
                .count();
            assert_eq!((accepted, replayed), (1, 1), "{one:?} {two:?}");
            let enrollment = first
                .enrollment(&key("alice", &course))
                .await
                .expect("read")
                .expect("exists");
            assert_eq!(enrollment.amount_paid, 2_500);
            assert_eq!(
                first
                    .ledger(&key("alice", &course), 0, 100)
                    .await
                    .expect("ledger")
                    .len(),
                2
            );
        }
        let report = second.audit().await.expect("audit");
        assert!(report.ok, "{report:?}");
        assert_eq!(report.enrollments, 20);
    }

    /// Batches from several stores locking overlapping enrollments in
    /// different request orders never deadlock and never lose a payment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_overlapping_batches_lock_in_key_order() {
        if !crate::testing::postgres_available() {
            return;
        }
        let database = crate::testing::PostgresTestDb::create();
        let stores = [
            open(database.url()).await,
            open(database.url()).await,
            open(database.url()).await,
        ];
        let now = Timestamp::from_unix_micros(1_788_253_200_000_000);
        let courses = ["a", "b", "c", "d", "e"];
        let setup: Vec<Request> = courses
            .iter()
            .map(|course| enroll("u", course, 1_000_000))
            .collect();
        stores[0].execute(setup, now).await.expect("enroll");
        let mut tasks = Vec::new();
        for worker in 0..6 {
            let store = stores[worker % 3].clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..10 {
                    // Each worker names the enrollments in its own order.
                    let mut order: Vec<&str> = courses.to_vec();
                    order.rotate_left((worker + round) % courses.len());
                    if worker % 2 == 1 {
                        order.reverse();
                    }
                    let batch: Vec<Request> = order
                        .iter()
                        .map(|course| pay("u", course, &format!("w{worker}-r{round}-{course}"), 10))
                        .collect();
                    let outcomes = store.execute(batch, now).await.expect("batch");
                    assert!(
                        outcomes
                            .iter()
                            .all(|outcome| matches!(outcome, Outcome::Accepted(_)))
                    );
                }
            }));
        }
        for task in tasks {
            task.await.expect("worker");
        }
        for course in courses {
            let enrollment = stores[1]
                .enrollment(&key("u", course))
                .await
                .expect("read")
                .expect("exists");
            assert_eq!(enrollment.amount_paid, 6 * 10 * 10, "{course}");
        }
        assert!(stores[2].audit().await.expect("audit").ok);
    }

    /// The local server's certificate is self-signed: `require` encrypts
    /// without checking it, as libpq does, and `verify-full` against the
    /// public roots refuses it rather than falling back to plain text.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_sslmode_require_encrypts_and_verify_full_verifies() {
        if !crate::testing::postgres_available() {
            return;
        }
        let admin = PostgresOptions::parse(&crate::testing::postgres_admin_url()).expect("url");
        let client = admin.connect().await.expect("connect");
        let server_ssl: String = client
            .query_one("SHOW ssl", &[])
            .await
            .expect("show ssl")
            .get(0);
        if server_ssl != "on"
            || admin
                .config
                .get_hosts()
                .iter()
                .any(|host| !matches!(host, tokio_postgres::config::Host::Tcp(_)))
        {
            return;
        }
        let url = crate::testing::postgres_admin_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        let require =
            PostgresOptions::parse(&format!("{url}{separator}sslmode=require")).expect("url");
        let client = require
            .connect()
            .await
            .expect("connect with sslmode=require");
        let encrypted: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0);
        assert!(encrypted);
        let verify =
            PostgresOptions::parse(&format!("{url}{separator}sslmode=verify-full")).expect("url");
        let refused = verify
            .connect()
            .await
            .expect_err("a self-signed certificate");
        assert!(refused.to_string().contains("certificate"), "{refused}");
    }

    #[test]
    fn backoff_stays_within_its_bounds() {
        for retry in 1..40 {
            let pause = backoff(retry);
            assert!(pause <= RETRY_BACKOFF_MAX, "{pause:?}");
            let bound = RETRY_BACKOFF_BASE.saturating_mul(1 << (retry - 1).min(16));
            assert!(pause <= bound, "{pause:?} > {bound:?}");
        }
    }
}
