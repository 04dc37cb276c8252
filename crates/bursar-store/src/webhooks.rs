//! Webhook endpoints and their delivery state, on both backends: the
//! endpoints (with the secret, the durable cursor, the lease a server holds
//! while it delivers, and the generation a replay bumps), the events waiting
//! for a retry (`webhook_pending`), and the log of attempts.
//!
//! The delivery engine (`bursar-server`'s `webhooks` module) owns the rules;
//! this module only keeps the state so that a SIGKILL loses nothing: the
//! cursor says that every event at or below it was acknowledged, is not of
//! the endpoint's types, or has a row in `webhook_pending`. Everything a
//! delivering server writes goes through [`Store::webhook_save`], one
//! transaction guarded by its lease and the generation it started from, so
//! a server that lost its lease (or an endpoint replayed or deleted under
//! it) writes nothing.
//!
//! Lease times are the database's clock on PostgreSQL, so servers whose
//! clocks disagree still agree on who holds a lease; on SQLite (one machine)
//! they are the caller's `now`.

use crate::{Store, StoreError};
use bursar_core::{CourseId, EnrollmentKey, EventType, Timestamp, UserId};
use std::time::Duration;

/// Attempts the log keeps per endpoint: the newest ones. Enough to see a
/// day of a failing endpoint's retries or the last minutes of a busy one;
/// older attempts are deleted as new ones are logged, so the log never grows
/// with traffic.
pub const WEBHOOK_ATTEMPTS_KEPT_PER_ENDPOINT: u64 = 1_000;

/// Whether an endpoint is delivering, or paused after exhausting its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    Active,
    Failing,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Active => "ACTIVE",
            EndpointState::Failing => "FAILING",
        }
    }

    fn parse(text: &str) -> Option<EndpointState> {
        match text {
            "ACTIVE" => Some(EndpointState::Active),
            "FAILING" => Some(EndpointState::Failing),
            _ => None,
        }
    }
}

/// A webhook endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// `wh_` and 16 hex digits.
    pub id: String,
    pub url: String,
    /// Empty: every type.
    pub types: Vec<EventType>,
    /// `whsec_` and base64. Kept as given: signing needs it.
    pub secret: String,
    pub created_at: Timestamp,
    /// The head of the feed when the endpoint was made: it receives the
    /// events after this position.
    pub started_after: u64,
    /// Every event at or below it was acknowledged, is not of `types`, or
    /// waits in `webhook_pending`.
    pub cursor: u64,
    pub state: EndpointState,
    pub failing_since: Option<Timestamp>,
    /// Bumped by every replay: a delivering task started from an older one
    /// stops.
    pub generation: u64,
    /// Whether no server holds the endpoint's lease now (none was taken, or
    /// it expired), by the database's clock on PostgreSQL.
    pub lease_free: bool,
    pub lease_owner: Option<String>,
}

/// An event of an endpoint that failed at least once, or waits behind one
/// of its enrollment that did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    pub position: u64,
    pub key: EnrollmentKey,
    /// Failed attempts so far; 0 for an event that waits behind another.
    pub attempts: u32,
    /// When it may be tried again (an event never tried: any time).
    pub next_attempt_at: Timestamp,
}

/// One attempt at delivering an event, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub event_id: String,
    pub position: u64,
    /// 1 for the first attempt at the event (since it was last replayed).
    pub attempt: u32,
    /// The HTTP status answered; `None` when none came.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Why the attempt failed; `None` for a delivery.
    pub error: Option<String>,
    pub at: Timestamp,
}

/// What a delivering server writes in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryProgress {
    pub endpoint_id: String,
    /// The lease holder, and the generation it started from.
    pub owner: String,
    pub generation: u64,
    pub cursor: u64,
    /// Rows to insert or update.
    pub pending: Vec<PendingDelivery>,
    /// Positions whose rows are done (delivered).
    pub delivered: Vec<u64>,
    pub attempts: Vec<DeliveryAttempt>,
    /// The retries are exhausted: mark the endpoint failing (since then)
    /// and give up the lease.
    pub failing_since: Option<Timestamp>,
    /// Give up the lease (a graceful stop).
    pub release: bool,
    /// How long the lease lasts from now, when it is kept.
    pub lease: Duration,
}

/// What a server that took an endpoint's lease starts from.
#[derive(Debug, Clone)]
pub struct AcquiredEndpoint {
    pub endpoint: WebhookEndpoint,
    /// Oldest first.
    pub pending: Vec<PendingDelivery>,
}

/// `true` when the endpoint was made; `false` when `max` exist already.
pub type Created = bool;

fn types_text(types: &[EventType]) -> String {
    types
        .iter()
        .map(EventType::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn bad(id: &str, what: &str) -> StoreError {
    StoreError::Internal(format!("webhook endpoint {id}: bad {what}"))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(id: &str, what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| bad(id, what))
}

fn lease_micros(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
}

/// The columns every endpoint read selects, in this order; the last is
/// whether the lease is free, computed with the backend's clock.
const ENDPOINT_COLUMNS: &str = "id, url, types, secret, created_at, started_after, cursor, state, \
     failing_since, generation, lease_owner";

/// One endpoint row's values, whichever backend read them.
struct EndpointValues {
    id: String,
    url: String,
    types: String,
    secret: String,
    created_at: i64,
    started_after: i64,
    cursor: i64,
    state: String,
    failing_since: Option<i64>,
    generation: i64,
    lease_owner: Option<String>,
    lease_free: bool,
}

impl EndpointValues {
    fn parse(self) -> Result<WebhookEndpoint, StoreError> {
        let id = self.id;
        let types = self
            .types
            .split(',')
            .filter(|name| !name.is_empty())
            .map(|name| EventType::parse(name).ok_or_else(|| bad(&id, "types")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WebhookEndpoint {
            url: self.url,
            types,
            secret: self.secret,
            created_at: Timestamp::from_unix_micros(self.created_at),
            started_after: to_u64(&id, "started_after", self.started_after)?,
            cursor: to_u64(&id, "cursor", self.cursor)?,
            state: EndpointState::parse(&self.state).ok_or_else(|| bad(&id, "state"))?,
            failing_since: self.failing_since.map(Timestamp::from_unix_micros),
            generation: to_u64(&id, "generation", self.generation)?,
            lease_free: self.lease_free,
            lease_owner: self.lease_owner,
            id,
        })
    }
}

fn pending_row(
    id: &str,
    position: i64,
    user_id: &str,
    course_id: &str,
    attempts: i64,
    next_attempt_at: i64,
) -> Result<PendingDelivery, StoreError> {
    Ok(PendingDelivery {
        position: to_u64(id, "pending position", position)?,
        key: EnrollmentKey {
            user_id: UserId::parse(user_id).map_err(|_| bad(id, "pending user_id"))?,
            course_id: CourseId::parse(course_id).map_err(|_| bad(id, "pending course_id"))?,
        },
        attempts: u32::try_from(attempts).map_err(|_| bad(id, "pending attempts"))?,
        next_attempt_at: Timestamp::from_unix_micros(next_attempt_at),
    })
}

#[allow(clippy::too_many_arguments)]
fn attempt_row(
    id: &str,
    event_id: String,
    position: i64,
    attempt: i64,
    status: Option<i64>,
    latency_ms: i64,
    error: Option<String>,
    at: i64,
) -> Result<DeliveryAttempt, StoreError> {
    Ok(DeliveryAttempt {
        event_id,
        position: to_u64(id, "attempt position", position)?,
        attempt: u32::try_from(attempt).map_err(|_| bad(id, "attempt number"))?,
        status: status
            .map(|status| u16::try_from(status).map_err(|_| bad(id, "attempt status")))
            .transpose()?,
        latency_ms: to_u64(id, "attempt latency", latency_ms)?,
        error,
        at: Timestamp::from_unix_micros(at),
    })
}

impl Store {
    /// Stores a new endpoint, unless `max` exist already (then `false`).
    pub async fn webhook_create(
        &self,
        endpoint: &WebhookEndpoint,
        max: usize,
    ) -> Result<Created, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite::create(store, endpoint.clone(), max).await,
            Store::Postgres(store) => postgres::create(store, endpoint, max).await,
        }
    }

    /// Every endpoint, oldest first. `now` is SQLite's clock for leases.
    pub async fn webhook_endpoints(
        &self,
        now: Timestamp,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite::endpoints(store, None, now).await,
            Store::Postgres(store) => postgres::endpoints(store, None).await,
        }
    }

    pub async fn webhook_endpoint(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        let found = match self {
            Store::Sqlite(store) => sqlite::endpoints(store, Some(id.to_owned()), now).await?,
            Store::Postgres(store) => postgres::endpoints(store, Some(id)).await?,
        };
        Ok(found.into_iter().next())
    }

    /// Deletes an endpoint with its pending events and its log; returns it
    /// as it was, or `None` when no endpoint has this id.
    pub async fn webhook_delete(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite::delete(store, id.to_owned(), now).await,
            Store::Postgres(store) => postgres::delete(store, id).await,
        }
    }

    /// Replays from `after`: the cursor goes back to `after` (never
    /// forward, so nothing not yet delivered is skipped), pending events
    /// past it are dropped (the feed gives them again), the others are due
    /// at once, the endpoint is `ACTIVE` and its generation bumped. Returns
    /// the endpoint as it is now, or `None` when no endpoint has this id.
    pub async fn webhook_replay(
        &self,
        id: &str,
        after: u64,
        now: Timestamp,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite::replay(store, id.to_owned(), after, now).await,
            Store::Postgres(store) => postgres::replay(store, id, after).await,
        }
    }

    /// The newest `limit` attempts of an endpoint, newest first; `None`
    /// when no endpoint has this id.
    pub async fn webhook_attempts(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<Option<Vec<DeliveryAttempt>>, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite::attempts(store, id.to_owned(), limit).await,
            Store::Postgres(store) => postgres::attempts(store, id, limit).await,
        }
    }

    /// Takes the lease of an `ACTIVE` endpoint for `owner` (when nobody
    /// holds it, it expired, or `owner` holds it already) and returns where
    /// delivery starts; `None` when another server holds it, or the endpoint
    /// is failing or gone.
    pub async fn webhook_acquire(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Option<AcquiredEndpoint>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                sqlite::acquire(store, id.to_owned(), owner.to_owned(), lease, now).await
            }
            Store::Postgres(store) => postgres::acquire(store, id, owner, lease).await,
        }
    }

    /// Writes a delivering server's progress in one transaction and renews
    /// (or gives up) its lease. `false`, with nothing written, when the
    /// server no longer holds the lease at that generation (it expired and
    /// another took it, the endpoint was replayed or deleted): the server
    /// must stop delivering.
    pub async fn webhook_save(
        &self,
        progress: &DeliveryProgress,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(store) => sqlite::save(store, progress.clone(), now).await,
            Store::Postgres(store) => postgres::save(store, progress).await,
        }
    }
}

pub(crate) mod sqlite {
    use super::*;
    use crate::SqliteStore;
    use crate::sqlite::map_error;
    use rusqlite::{Connection, OptionalExtension, Row, params};

    fn endpoint_from_row(row: &Row<'_>) -> rusqlite::Result<EndpointValues> {
        Ok(EndpointValues {
            id: row.get(0)?,
            url: row.get(1)?,
            types: row.get(2)?,
            secret: row.get(3)?,
            created_at: row.get(4)?,
            started_after: row.get(5)?,
            cursor: row.get(6)?,
            state: row.get(7)?,
            failing_since: row.get(8)?,
            generation: row.get(9)?,
            lease_owner: row.get(10)?,
            lease_free: row.get(11)?,
        })
    }

    fn select_endpoints(
        connection: &Connection,
        id: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS}, (lease_owner IS NULL OR lease_until < ?1) \
             FROM webhook_endpoints WHERE (?2 IS NULL OR id = ?2) ORDER BY created_at, id"
        );
        let mut statement = connection.prepare_cached(&sql).map_err(map_error)?;
        let rows = statement
            .query_map(params![now.unix_micros(), id], endpoint_from_row)
            .map_err(map_error)?;
        let mut endpoints = Vec::new();
        for row in rows {
            endpoints.push(row.map_err(map_error)?.parse()?);
        }
        Ok(endpoints)
    }

    pub(crate) async fn create(
        store: &SqliteStore,
        endpoint: WebhookEndpoint,
        max: usize,
    ) -> Result<Created, StoreError> {
        store
            .write(move |connection| {
                let transaction = connection.transaction().map_err(map_error)?;
                let count: i64 = transaction
                    .query_row("SELECT count(*) FROM webhook_endpoints", [], |row| {
                        row.get(0)
                    })
                    .map_err(map_error)?;
                if count >= max as i64 {
                    return Ok(false);
                }
                transaction
                    .execute(
                        "INSERT INTO webhook_endpoints (id, url, types, secret, created_at, \
                         started_after, cursor, state, generation, lease_until) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 'ACTIVE', 0, 0)",
                        params![
                            endpoint.id,
                            endpoint.url,
                            types_text(&endpoint.types),
                            endpoint.secret,
                            endpoint.created_at.unix_micros(),
                            to_i64(endpoint.started_after),
                        ],
                    )
                    .map_err(map_error)?;
                transaction.commit().map_err(map_error)?;
                Ok(true)
            })
            .await
    }

    pub(crate) async fn endpoints(
        store: &SqliteStore,
        id: Option<String>,
        now: Timestamp,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        store
            .read(move |connection| select_endpoints(connection, id.as_deref(), now))
            .await
    }

    pub(crate) async fn delete(
        store: &SqliteStore,
        id: String,
        now: Timestamp,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        store
            .write(move |connection| {
                let transaction = connection.transaction().map_err(map_error)?;
                let Some(endpoint) = select_endpoints(&transaction, Some(&id), now)?.pop() else {
                    return Ok(None);
                };
                for table in ["webhook_attempts", "webhook_pending"] {
                    transaction
                        .execute(
                            &format!("DELETE FROM {table} WHERE endpoint_id = ?1"),
                            params![id],
                        )
                        .map_err(map_error)?;
                }
                transaction
                    .execute("DELETE FROM webhook_endpoints WHERE id = ?1", params![id])
                    .map_err(map_error)?;
                transaction.commit().map_err(map_error)?;
                Ok(Some(endpoint))
            })
            .await
    }

    pub(crate) async fn replay(
        store: &SqliteStore,
        id: String,
        after: u64,
        now: Timestamp,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        let after = to_i64(after);
        store
            .write(move |connection| {
                let transaction = connection.transaction().map_err(map_error)?;
                let changed = transaction
                    .execute(
                        "UPDATE webhook_endpoints SET cursor = min(cursor, ?2), state = 'ACTIVE', \
                         failing_since = NULL, generation = generation + 1 WHERE id = ?1",
                        params![id, after],
                    )
                    .map_err(map_error)?;
                if changed == 0 {
                    return Ok(None);
                }
                transaction
                    .execute(
                        "DELETE FROM webhook_pending WHERE endpoint_id = ?1 AND position > ?2",
                        params![id, after],
                    )
                    .map_err(map_error)?;
                transaction
                    .execute(
                        "UPDATE webhook_pending SET attempts = 0, next_attempt_at = 0 \
                         WHERE endpoint_id = ?1",
                        params![id],
                    )
                    .map_err(map_error)?;
                let endpoint = select_endpoints(&transaction, Some(&id), now)?.pop();
                transaction.commit().map_err(map_error)?;
                Ok(endpoint)
            })
            .await
    }

    pub(crate) async fn attempts(
        store: &SqliteStore,
        id: String,
        limit: u32,
    ) -> Result<Option<Vec<DeliveryAttempt>>, StoreError> {
        store
            .read(move |connection| {
                let transaction = connection.unchecked_transaction().map_err(map_error)?;
                let exists = transaction
                    .query_row(
                        "SELECT 1 FROM webhook_endpoints WHERE id = ?1",
                        params![id],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(map_error)?;
                if exists.is_none() {
                    return Ok(None);
                }
                let mut statement = transaction
                    .prepare_cached(
                        "SELECT event_id, position, attempt, status, latency_ms, error, at \
                         FROM webhook_attempts WHERE endpoint_id = ?1 ORDER BY n DESC LIMIT ?2",
                    )
                    .map_err(map_error)?;
                let rows = statement
                    .query_map(params![id, i64::from(limit)], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, Option<i64>>(3)?,
                            row.get::<_, i64>(4)?,
                            row.get::<_, Option<String>>(5)?,
                            row.get::<_, i64>(6)?,
                        ))
                    })
                    .map_err(map_error)?;
                let mut attempts = Vec::new();
                for row in rows {
                    let (event_id, position, attempt, status, latency_ms, error, at) =
                        row.map_err(map_error)?;
                    attempts.push(attempt_row(
                        &id, event_id, position, attempt, status, latency_ms, error, at,
                    )?);
                }
                Ok(Some(attempts))
            })
            .await
    }

    fn select_pending(
        connection: &Connection,
        id: &str,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let mut statement = connection
            .prepare_cached(
                "SELECT position, user_id, course_id, attempts, next_attempt_at \
                 FROM webhook_pending WHERE endpoint_id = ?1 ORDER BY position",
            )
            .map_err(map_error)?;
        let rows = statement
            .query_map(params![id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .map_err(map_error)?;
        let mut pending = Vec::new();
        for row in rows {
            let (position, user_id, course_id, attempts, next) = row.map_err(map_error)?;
            pending.push(pending_row(
                id, position, &user_id, &course_id, attempts, next,
            )?);
        }
        Ok(pending)
    }

    pub(crate) async fn acquire(
        store: &SqliteStore,
        id: String,
        owner: String,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Option<AcquiredEndpoint>, StoreError> {
        store
            .write(move |connection| {
                let transaction = connection.transaction().map_err(map_error)?;
                let now_micros = now.unix_micros();
                let taken = transaction
                    .execute(
                        "UPDATE webhook_endpoints SET lease_owner = ?2, lease_until = ?3 \
                         WHERE id = ?1 AND state = 'ACTIVE' \
                         AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until < ?4)",
                        params![
                            id,
                            owner,
                            now_micros.saturating_add(lease_micros(lease)),
                            now_micros
                        ],
                    )
                    .map_err(map_error)?;
                if taken == 0 {
                    return Ok(None);
                }
                let Some(endpoint) = select_endpoints(&transaction, Some(&id), now)?.pop() else {
                    return Ok(None);
                };
                let pending = select_pending(&transaction, &id)?;
                transaction.commit().map_err(map_error)?;
                Ok(Some(AcquiredEndpoint { endpoint, pending }))
            })
            .await
    }

    pub(crate) async fn save(
        store: &SqliteStore,
        progress: DeliveryProgress,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        store
            .write(move |connection| {
                let transaction = connection.transaction().map_err(map_error)?;
                let now_micros = now.unix_micros();
                let keep = !progress.release && progress.failing_since.is_none();
                let lease_until = if keep {
                    now_micros.saturating_add(lease_micros(progress.lease))
                } else {
                    0
                };
                let logged: Option<i64> = transaction
                    .query_row(
                        "UPDATE webhook_endpoints SET cursor = ?4, lease_until = ?5, \
                         lease_owner = CASE WHEN ?6 THEN lease_owner ELSE NULL END, \
                         attempts_logged = attempts_logged + ?7, \
                         state = CASE WHEN ?8 IS NULL THEN state ELSE 'FAILING' END, \
                         failing_since = coalesce(?8, failing_since) \
                         WHERE id = ?1 AND lease_owner = ?2 AND generation = ?3 \
                         RETURNING attempts_logged",
                        params![
                            progress.endpoint_id,
                            progress.owner,
                            to_i64(progress.generation),
                            to_i64(progress.cursor),
                            lease_until,
                            keep,
                            progress.attempts.len() as i64,
                            progress.failing_since.map(Timestamp::unix_micros),
                        ],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(map_error)?;
                let Some(logged) = logged else {
                    return Ok(false);
                };
                let id = &progress.endpoint_id;
                {
                    let mut upsert = transaction
                        .prepare_cached(
                            "INSERT INTO webhook_pending (endpoint_id, position, user_id, \
                             course_id, attempts, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                             ON CONFLICT (endpoint_id, position) DO UPDATE SET \
                             attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at",
                        )
                        .map_err(map_error)?;
                    for row in &progress.pending {
                        upsert
                            .execute(params![
                                id,
                                to_i64(row.position),
                                row.key.user_id.as_str(),
                                row.key.course_id.as_str(),
                                i64::from(row.attempts),
                                row.next_attempt_at.unix_micros(),
                            ])
                            .map_err(map_error)?;
                    }
                    let mut remove = transaction
                        .prepare_cached(
                            "DELETE FROM webhook_pending WHERE endpoint_id = ?1 AND position = ?2",
                        )
                        .map_err(map_error)?;
                    for position in &progress.delivered {
                        remove
                            .execute(params![id, to_i64(*position)])
                            .map_err(map_error)?;
                    }
                    let mut log = transaction
                        .prepare_cached(
                            "INSERT INTO webhook_attempts (endpoint_id, n, event_id, position, \
                             attempt, status, latency_ms, error, at) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        )
                        .map_err(map_error)?;
                    let first = logged - progress.attempts.len() as i64 + 1;
                    for (index, attempt) in progress.attempts.iter().enumerate() {
                        log.execute(params![
                            id,
                            first + index as i64,
                            attempt.event_id,
                            to_i64(attempt.position),
                            i64::from(attempt.attempt),
                            attempt.status.map(i64::from),
                            to_i64(attempt.latency_ms),
                            attempt.error,
                            attempt.at.unix_micros(),
                        ])
                        .map_err(map_error)?;
                    }
                }
                if !progress.attempts.is_empty() {
                    transaction
                        .execute(
                            "DELETE FROM webhook_attempts WHERE endpoint_id = ?1 AND n <= ?2",
                            params![id, logged - to_i64(WEBHOOK_ATTEMPTS_KEPT_PER_ENDPOINT)],
                        )
                        .map_err(map_error)?;
                }
                transaction.commit().map_err(map_error)?;
                Ok(true)
            })
            .await
    }
}

pub(crate) mod postgres {
    use super::*;
    use crate::PostgresStore;
    use crate::postgres::read_error;
    use tokio_postgres::Row;
    use tokio_postgres::error::SqlState;

    /// Now, in microseconds since the epoch, by the database's clock.
    const NOW_MICROS: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

    fn endpoint_from_row(row: &Row) -> Result<WebhookEndpoint, StoreError> {
        EndpointValues {
            id: row.try_get(0).map_err(read_error)?,
            url: row.try_get(1).map_err(read_error)?,
            types: row.try_get(2).map_err(read_error)?,
            secret: row.try_get(3).map_err(read_error)?,
            created_at: row.try_get(4).map_err(read_error)?,
            started_after: row.try_get(5).map_err(read_error)?,
            cursor: row.try_get(6).map_err(read_error)?,
            state: row.try_get(7).map_err(read_error)?,
            failing_since: row.try_get(8).map_err(read_error)?,
            generation: row.try_get(9).map_err(read_error)?,
            lease_owner: row.try_get(10).map_err(read_error)?,
            lease_free: row.try_get(11).map_err(read_error)?,
        }
        .parse()
    }

    fn select_endpoints_sql() -> String {
        format!(
            "SELECT {ENDPOINT_COLUMNS}, (lease_owner IS NULL OR lease_until < {NOW_MICROS}) \
             FROM webhook_endpoints WHERE ($1::text IS NULL OR id = $1) ORDER BY created_at, id"
        )
    }

    pub(crate) async fn create(
        store: &PostgresStore,
        endpoint: &WebhookEndpoint,
        max: usize,
    ) -> Result<Created, StoreError> {
        let mut client = store.connection().await?;
        // Serializable, so two servers making endpoints at once cannot both
        // pass the count; the loser's serialization failure is a 503 to
        // retry.
        let transaction = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::Serializable)
            .start()
            .await
            .map_err(read_error)?;
        let count: i64 = transaction
            .query_one("SELECT count(*) FROM webhook_endpoints", &[])
            .await
            .map_err(read_error)?
            .get(0);
        if count >= max as i64 {
            return Ok(false);
        }
        transaction
            .execute(
                "INSERT INTO webhook_endpoints (id, url, types, secret, created_at, \
                 started_after, cursor, state, generation, lease_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6, 'ACTIVE', 0, 0)",
                &[
                    &endpoint.id,
                    &endpoint.url,
                    &types_text(&endpoint.types),
                    &endpoint.secret,
                    &endpoint.created_at.unix_micros(),
                    &to_i64(endpoint.started_after),
                ],
            )
            .await
            .map_err(read_error)?;
        transaction.commit().await.map_err(|error| {
            if error.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) {
                StoreError::Unavailable("another endpoint was being made at once; retry".into())
            } else {
                read_error(error)
            }
        })?;
        Ok(true)
    }

    pub(crate) async fn endpoints(
        store: &PostgresStore,
        id: Option<&str>,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let client = store.connection().await?;
        let rows = client
            .query(&select_endpoints_sql(), &[&id])
            .await
            .map_err(read_error)?;
        rows.iter().map(endpoint_from_row).collect()
    }

    pub(crate) async fn delete(
        store: &PostgresStore,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        let mut client = store.connection().await?;
        let transaction = client.transaction().await.map_err(read_error)?;
        let Some(row) = transaction
            .query_opt(&select_endpoints_sql(), &[&Some(id)])
            .await
            .map_err(read_error)?
        else {
            return Ok(None);
        };
        let endpoint = endpoint_from_row(&row)?;
        for table in ["webhook_attempts", "webhook_pending"] {
            transaction
                .execute(
                    &format!("DELETE FROM {table} WHERE endpoint_id = $1"),
                    &[&id],
                )
                .await
                .map_err(read_error)?;
        }
        transaction
            .execute("DELETE FROM webhook_endpoints WHERE id = $1", &[&id])
            .await
            .map_err(read_error)?;
        transaction.commit().await.map_err(read_error)?;
        Ok(Some(endpoint))
    }

    pub(crate) async fn replay(
        store: &PostgresStore,
        id: &str,
        after: u64,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        let after = to_i64(after);
        let mut client = store.connection().await?;
        let transaction = client.transaction().await.map_err(read_error)?;
        let changed = transaction
            .execute(
                "UPDATE webhook_endpoints SET cursor = LEAST(cursor, $2), state = 'ACTIVE', \
                 failing_since = NULL, generation = generation + 1 WHERE id = $1",
                &[&id, &after],
            )
            .await
            .map_err(read_error)?;
        if changed == 0 {
            return Ok(None);
        }
        transaction
            .execute(
                "DELETE FROM webhook_pending WHERE endpoint_id = $1 AND position > $2",
                &[&id, &after],
            )
            .await
            .map_err(read_error)?;
        transaction
            .execute(
                "UPDATE webhook_pending SET attempts = 0, next_attempt_at = 0 \
                 WHERE endpoint_id = $1",
                &[&id],
            )
            .await
            .map_err(read_error)?;
        let row = transaction
            .query_opt(&select_endpoints_sql(), &[&Some(id)])
            .await
            .map_err(read_error)?;
        transaction.commit().await.map_err(read_error)?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    pub(crate) async fn attempts(
        store: &PostgresStore,
        id: &str,
        limit: u32,
    ) -> Result<Option<Vec<DeliveryAttempt>>, StoreError> {
        let client = store.connection().await?;
        let exists = client
            .query_opt("SELECT 1 FROM webhook_endpoints WHERE id = $1", &[&id])
            .await
            .map_err(read_error)?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = client
            .query(
                "SELECT event_id, position, attempt, status, latency_ms, error, at \
                 FROM webhook_attempts WHERE endpoint_id = $1 ORDER BY n DESC LIMIT $2",
                &[&id, &i64::from(limit)],
            )
            .await
            .map_err(read_error)?;
        let mut attempts = Vec::with_capacity(rows.len());
        for row in &rows {
            attempts.push(attempt_row(
                id,
                row.try_get(0).map_err(read_error)?,
                row.try_get(1).map_err(read_error)?,
                i64::from(row.try_get::<_, i32>(2).map_err(read_error)?),
                row.try_get::<_, Option<i32>>(3)
                    .map_err(read_error)?
                    .map(i64::from),
                row.try_get(4).map_err(read_error)?,
                row.try_get(5).map_err(read_error)?,
                row.try_get(6).map_err(read_error)?,
            )?);
        }
        Ok(Some(attempts))
    }

    pub(crate) async fn acquire(
        store: &PostgresStore,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<AcquiredEndpoint>, StoreError> {
        let mut client = store.connection().await?;
        let transaction = client.transaction().await.map_err(read_error)?;
        // Under READ COMMITTED, a second server's update waits for the first
        // to commit and then re-checks the condition on the new row: one
        // of them takes the lease.
        let taken = transaction
            .execute(
                &format!(
                    "UPDATE webhook_endpoints SET lease_owner = $2, \
                     lease_until = {NOW_MICROS} + $3 \
                     WHERE id = $1 AND state = 'ACTIVE' \
                     AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < {NOW_MICROS})"
                ),
                &[&id, &owner, &lease_micros(lease)],
            )
            .await
            .map_err(read_error)?;
        if taken == 0 {
            return Ok(None);
        }
        let Some(row) = transaction
            .query_opt(&select_endpoints_sql(), &[&Some(id)])
            .await
            .map_err(read_error)?
        else {
            return Ok(None);
        };
        let endpoint = endpoint_from_row(&row)?;
        let rows = transaction
            .query(
                "SELECT position, user_id, course_id, attempts, next_attempt_at \
                 FROM webhook_pending WHERE endpoint_id = $1 ORDER BY position",
                &[&id],
            )
            .await
            .map_err(read_error)?;
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            let user_id: String = row.try_get(1).map_err(read_error)?;
            let course_id: String = row.try_get(2).map_err(read_error)?;
            pending.push(pending_row(
                id,
                row.try_get(0).map_err(read_error)?,
                &user_id,
                &course_id,
                i64::from(row.try_get::<_, i32>(3).map_err(read_error)?),
                row.try_get(4).map_err(read_error)?,
            )?);
        }
        transaction.commit().await.map_err(read_error)?;
        Ok(Some(AcquiredEndpoint { endpoint, pending }))
    }

    pub(crate) async fn save(
        store: &PostgresStore,
        progress: &DeliveryProgress,
    ) -> Result<bool, StoreError> {
        let mut client = store.connection().await?;
        let transaction = client.transaction().await.map_err(read_error)?;
        let keep = !progress.release && progress.failing_since.is_none();
        let count = progress.attempts.len() as i64;
        let row = transaction
            .query_opt(
                &format!(
                    "UPDATE webhook_endpoints SET cursor = $4, \
                     lease_until = CASE WHEN $5 THEN {NOW_MICROS} + $6 ELSE 0 END, \
                     lease_owner = CASE WHEN $5 THEN lease_owner ELSE NULL END, \
                     attempts_logged = attempts_logged + $7, \
                     state = CASE WHEN $8::bigint IS NULL THEN state ELSE 'FAILING' END, \
                     failing_since = coalesce($8, failing_since) \
                     WHERE id = $1 AND lease_owner = $2 AND generation = $3 \
                     RETURNING attempts_logged"
                ),
                &[
                    &progress.endpoint_id,
                    &progress.owner,
                    &to_i64(progress.generation),
                    &to_i64(progress.cursor),
                    &keep,
                    &lease_micros(progress.lease),
                    &count,
                    &progress.failing_since.map(Timestamp::unix_micros),
                ],
            )
            .await
            .map_err(read_error)?;
        let Some(row) = row else {
            return Ok(false);
        };
        let logged: i64 = row.get(0);
        let id = &progress.endpoint_id;
        if !progress.pending.is_empty() {
            let positions: Vec<i64> = progress
                .pending
                .iter()
                .map(|row| to_i64(row.position))
                .collect();
            let users: Vec<&str> = progress
                .pending
                .iter()
                .map(|row| row.key.user_id.as_str())
                .collect();
            let courses: Vec<&str> = progress
                .pending
                .iter()
                .map(|row| row.key.course_id.as_str())
                .collect();
            let attempts: Vec<i32> = progress
                .pending
                .iter()
                .map(|row| i32::try_from(row.attempts).unwrap_or(i32::MAX))
                .collect();
            let next: Vec<i64> = progress
                .pending
                .iter()
                .map(|row| row.next_attempt_at.unix_micros())
                .collect();
            transaction
                .execute(
                    "INSERT INTO webhook_pending (endpoint_id, position, user_id, course_id, \
                     attempts, next_attempt_at) \
                     SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::int[], $6::bigint[]) \
                     ON CONFLICT (endpoint_id, position) DO UPDATE SET \
                     attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at",
                    &[id, &positions, &users, &courses, &attempts, &next],
                )
                .await
                .map_err(read_error)?;
        }
        if !progress.delivered.is_empty() {
            let positions: Vec<i64> = progress
                .delivered
                .iter()
                .map(|position| to_i64(*position))
                .collect();
            transaction
                .execute(
                    "DELETE FROM webhook_pending WHERE endpoint_id = $1 AND position = ANY($2)",
                    &[id, &positions],
                )
                .await
                .map_err(read_error)?;
        }
        if count > 0 {
            let first = logged - count + 1;
            let numbers: Vec<i64> = (first..=logged).collect();
            let event_ids: Vec<&str> = progress
                .attempts
                .iter()
                .map(|a| a.event_id.as_str())
                .collect();
            let positions: Vec<i64> = progress
                .attempts
                .iter()
                .map(|a| to_i64(a.position))
                .collect();
            let attempt: Vec<i32> = progress
                .attempts
                .iter()
                .map(|a| i32::try_from(a.attempt).unwrap_or(i32::MAX))
                .collect();
            let statuses: Vec<Option<i32>> = progress
                .attempts
                .iter()
                .map(|a| a.status.map(i32::from))
                .collect();
            let latencies: Vec<i64> = progress
                .attempts
                .iter()
                .map(|a| to_i64(a.latency_ms))
                .collect();
            let errors: Vec<Option<&str>> = progress
                .attempts
                .iter()
                .map(|a| a.error.as_deref())
                .collect();
            let at: Vec<i64> = progress
                .attempts
                .iter()
                .map(|a| a.at.unix_micros())
                .collect();
            transaction
                .execute(
                    "INSERT INTO webhook_attempts (endpoint_id, n, event_id, position, attempt, \
                     status, latency_ms, error, at) \
                     SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::bigint[], $5::int[], \
                     $6::int[], $7::bigint[], $8::text[], $9::bigint[])",
                    &[
                        id, &numbers, &event_ids, &positions, &attempt, &statuses, &latencies,
                        &errors, &at,
                    ],
                )
                .await
                .map_err(read_error)?;
            transaction
                .execute(
                    "DELETE FROM webhook_attempts WHERE endpoint_id = $1 AND n <= $2",
                    &[id, &(logged - to_i64(WEBHOOK_ATTEMPTS_KEPT_PER_ENDPOINT))],
                )
                .await
                .map_err(read_error)?;
        }
        transaction.commit().await.map_err(read_error)?;
        Ok(true)
    }
}
