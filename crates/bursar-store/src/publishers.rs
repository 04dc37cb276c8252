//! The durable cursors of the event publishers of both backends (the NATS
//! JetStream broker): for each publisher, by name, the position up to which
//! every event has been acknowledged by its destination, and the lease that
//! lets one server at a time publish, so the events go out in order.
//!
//! A lease is an owner (a random id per server process) and a time until
//! which it holds. A server takes the lease when nobody holds it, when it
//! holds it already, or when the holder's time has passed (it crashed, or
//! cannot reach the database); it renews the lease as it advances the
//! cursor, and gives it up on a clean stop. On PostgreSQL lease times are
//! the database's clock, so servers whose clocks disagree still agree on
//! when a lease ends; on SQLite (one host) they are the host's clock.
//!
//! A publisher seen for the first time starts at position 0: the beginning
//! of the feed.

use crate::{Store, StoreError};
use bursar_core::Timestamp;
use std::time::Duration;

/// A publisher's row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherCursor {
    pub name: String,
    /// Every event up to this position has been acknowledged.
    pub position: u64,
    /// The server holding the lease, if any.
    pub lease_owner: Option<String>,
    /// Until when the owner holds it.
    pub lease_until: Timestamp,
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn position_of(position: i64) -> Result<u64, StoreError> {
    u64::try_from(position)
        .map_err(|_| StoreError::Internal(format!("a publisher's position is {position}")))
}

impl Store {
    /// Takes (or keeps) the lease of the publisher `name` for `owner`, for
    /// `lease` from now, creating the publisher at position 0 when it is
    /// new. Returns its position, or `None` when another owner holds an
    /// unexpired lease.
    pub async fn claim_publisher(
        &self,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let (name, owner) = (name.to_owned(), owner.to_owned());
                store
                    .write(move |connection| sqlite::claim(connection, &name, &owner, lease))
                    .await
            }
            Store::Postgres(store) => {
                let client = store.connection().await?;
                postgres::claim(&client, name, owner, lease).await
            }
        }
    }

    /// Moves the cursor of `name` to `position` (never backwards) and
    /// renews `owner`'s lease for `lease` from now. `false` when `owner` no
    /// longer holds the lease: another server took it, and this one must
    /// stop publishing.
    pub async fn advance_publisher(
        &self,
        name: &str,
        owner: &str,
        position: u64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let position = i64::try_from(position)
            .map_err(|_| StoreError::Internal(format!("position {position} is too large")))?;
        match self {
            Store::Sqlite(store) => {
                let (name, owner) = (name.to_owned(), owner.to_owned());
                store
                    .write(move |connection| {
                        sqlite::advance(connection, &name, &owner, position, lease)
                    })
                    .await
            }
            Store::Postgres(store) => {
                let client = store.connection().await?;
                postgres::advance(&client, name, owner, position, lease).await
            }
        }
    }

    /// Gives up `owner`'s lease of `name`, so another server (or the next
    /// start) takes over at once. Nothing happens when it holds none.
    pub async fn release_publisher(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => {
                let (name, owner) = (name.to_owned(), owner.to_owned());
                store
                    .write(move |connection| sqlite::release(connection, &name, &owner))
                    .await
            }
            Store::Postgres(store) => {
                let client = store.connection().await?;
                postgres::release(&client, name, owner).await
            }
        }
    }

    /// The publisher's row, or `None` before its first claim.
    pub async fn publisher(&self, name: &str) -> Result<Option<PublisherCursor>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let name = name.to_owned();
                store
                    .write(move |connection| sqlite::get(connection, &name))
                    .await
            }
            Store::Postgres(store) => {
                let client = store.connection().await?;
                postgres::get(&client, name).await
            }
        }
    }
}

mod sqlite {
    use super::*;
    use crate::sqlite::map_error;
    use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

    fn now_micros() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, micros)
    }

    pub(super) fn claim(
        connection: &mut Connection,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_error)?;
        let now = now_micros();
        transaction
            .execute(
                "INSERT INTO event_publishers (name, position, lease_owner, lease_until) \
                 VALUES (?1, 0, NULL, 0) ON CONFLICT (name) DO NOTHING",
                params![name],
            )
            .map_err(map_error)?;
        let position: Option<i64> = transaction
            .query_row(
                "UPDATE event_publishers SET lease_owner = ?2, lease_until = ?3 \
                 WHERE name = ?1 AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until <= ?4) \
                 RETURNING position",
                params![name, owner, now.saturating_add(micros(lease)), now],
                |row| row.get(0),
            )
            .optional()
            .map_err(map_error)?;
        transaction.commit().map_err(map_error)?;
        position.map(position_of).transpose()
    }

    pub(super) fn advance(
        connection: &mut Connection,
        name: &str,
        owner: &str,
        position: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let until = now_micros().saturating_add(micros(lease));
        let changed = connection
            .execute(
                "UPDATE event_publishers SET position = max(position, ?3), lease_until = ?4 \
                 WHERE name = ?1 AND lease_owner = ?2",
                params![name, owner, position, until],
            )
            .map_err(map_error)?;
        Ok(changed == 1)
    }

    pub(super) fn release(
        connection: &mut Connection,
        name: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        connection
            .execute(
                "UPDATE event_publishers SET lease_owner = NULL, lease_until = 0 \
                 WHERE name = ?1 AND lease_owner = ?2",
                params![name, owner],
            )
            .map_err(map_error)?;
        Ok(())
    }

    pub(super) fn get(
        connection: &mut Connection,
        name: &str,
    ) -> Result<Option<PublisherCursor>, StoreError> {
        let row: Option<(i64, Option<String>, i64)> = connection
            .query_row(
                "SELECT position, lease_owner, lease_until FROM event_publishers WHERE name = ?1",
                params![name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(map_error)?;
        row.map(|(position, lease_owner, lease_until)| {
            Ok(PublisherCursor {
                name: name.to_owned(),
                position: position_of(position)?,
                lease_owner,
                lease_until: Timestamp::from_unix_micros(lease_until),
            })
        })
        .transpose()
    }
}

mod postgres {
    use super::*;
    use crate::postgres::read_error;
    use deadpool_postgres::Object;

    /// The database's clock in Unix microseconds: every server's leases are
    /// measured by the same clock.
    const NOW_MICROS: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT";

    pub(super) async fn claim(
        client: &Object,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<u64>, StoreError> {
        client
            .execute(
                "INSERT INTO event_publishers (name, position, lease_owner, lease_until) \
                 VALUES ($1, 0, NULL, 0) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )
            .await
            .map_err(read_error)?;
        // Under READ COMMITTED a second server updating the same row waits
        // for the first, then evaluates the condition again on the row as
        // the first left it: only one of them gets the lease.
        let row = client
            .query_opt(
                &format!(
                    "UPDATE event_publishers SET lease_owner = $2, lease_until = {NOW_MICROS} + $3 \
                     WHERE name = $1 AND (lease_owner IS NULL OR lease_owner = $2 \
                         OR lease_until <= {NOW_MICROS}) \
                     RETURNING position"
                ),
                &[&name, &owner, &micros(lease)],
            )
            .await
            .map_err(read_error)?;
        row.map(|row| position_of(row.get(0))).transpose()
    }

    pub(super) async fn advance(
        client: &Object,
        name: &str,
        owner: &str,
        position: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let changed = client
            .execute(
                &format!(
                    "UPDATE event_publishers SET position = GREATEST(position, $3), \
                         lease_until = {NOW_MICROS} + $4 \
                     WHERE name = $1 AND lease_owner = $2"
                ),
                &[&name, &owner, &position, &micros(lease)],
            )
            .await
            .map_err(read_error)?;
        Ok(changed == 1)
    }

    pub(super) async fn release(
        client: &Object,
        name: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        client
            .execute(
                "UPDATE event_publishers SET lease_owner = NULL, lease_until = 0 \
                 WHERE name = $1 AND lease_owner = $2",
                &[&name, &owner],
            )
            .await
            .map_err(read_error)?;
        Ok(())
    }

    pub(super) async fn get(
        client: &Object,
        name: &str,
    ) -> Result<Option<PublisherCursor>, StoreError> {
        let row = client
            .query_opt(
                "SELECT position, lease_owner, lease_until FROM event_publishers WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(read_error)?;
        row.map(|row| {
            Ok(PublisherCursor {
                name: name.to_owned(),
                position: position_of(row.get(0))?,
                lease_owner: row.get(1),
                lease_until: Timestamp::from_unix_micros(row.get(2)),
            })
        })
        .transpose()
    }
}
