//! PostgreSQL's schema: the migrations in order, and how one process
//! applies those not yet applied while others may be starting at once.

use super::failure::{Failure, classify};
use super::{ledger, upgrade};
use crate::StoreError;
use deadpool_postgres::Object;
use tokio_postgres::error::SqlState;

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
    // The compact ledger (see ledger.rs): the new table; `upgrade::to_compact`
    // then moves the rows into it and gives it the old one's name.
    ledger::CREATE_LEDGER,
];

/// The version whose migration is the compact ledger.
const COMPACT_LEDGER_VERSION: i64 = 8;

pub(super) async fn migrate_once(client: &mut Object) -> Result<(), Failure> {
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
        if version == COMPACT_LEDGER_VERSION {
            upgrade::to_compact(&transaction).await?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::testing::open;

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
}
