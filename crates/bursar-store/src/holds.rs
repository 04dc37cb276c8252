//! The holds table of both backends: one row per hold, `OPEN` until the
//! `CAPTURE`, `VOID` or `EXPIRE` entry that ends it, with partial indexes on
//! the open rows (by enrollment, and by expiry for the writer's sweep), so
//! that neither a batch nor the sweep reads a closed hold it does not name.
//!
//! The rows follow from the ledger: every change to them is the
//! `LedgerEntry::hold_change` of an entry written in the same transaction.

use crate::StoreError;
use bursar_core::{
    CourseId, EnrollmentKey, EnrollmentState, Hash, Hold, HoldChange, HoldState, LedgerEntry,
    Reference, Timestamp, UserId,
};

/// Enrollments with expired holds one sweep hands to the writer at most. A
/// sweep runs at least once a second, so a backlog (after downtime) drains a
/// few thousand enrollments a second without making one commit huge.
pub const EXPIRED_ENROLLMENTS_PER_SWEEP_MAX: usize = 4_096;

/// One hold row as read: `hold_seq, amount, expires_at, reference, state`.
fn parse_hold(
    key: &EnrollmentKey,
    seq: i64,
    amount: i64,
    expires_at: i64,
    reference: Option<String>,
    state: &str,
) -> Result<Hold, StoreError> {
    let bad = |what: &str| StoreError::Internal(format!("hold {key} seq {seq}: bad {what}"));
    Ok(Hold {
        seq: u64::try_from(seq).map_err(|_| bad("hold_seq"))?,
        amount,
        expires_at: Timestamp::from_unix_micros(expires_at),
        reference: reference
            .map(|text| Reference::parse(&text))
            .transpose()
            .map_err(|_| bad("reference"))?,
        state: HoldState::parse(state).ok_or_else(|| bad("state"))?,
    })
}

/// Checks a loaded state against its holds: `amount_held` must be the sum of
/// the open ones, or the row is corrupt and nothing may be built on it.
fn checked(state: &EnrollmentState) -> Result<(), StoreError> {
    state.check_holds().map_err(|broken| {
        StoreError::Internal(format!(
            "enrollment {} breaks an invariant: {broken}",
            state.enrollment.key()
        ))
    })
}

fn parse_key(user_id: &str, course_id: &str) -> Result<EnrollmentKey, StoreError> {
    Ok(EnrollmentKey {
        user_id: UserId::parse(user_id)
            .map_err(|_| StoreError::Internal(format!("bad stored user_id {user_id:?}")))?,
        course_id: CourseId::parse(course_id)
            .map_err(|_| StoreError::Internal(format!("bad stored course_id {course_id:?}")))?,
    })
}

/// The hold changes of a batch's new entries, in order.
fn changes(entries: &[(LedgerEntry, Hash)]) -> impl Iterator<Item = (EnrollmentKey, HoldChange)> {
    entries.iter().filter_map(|(entry, _)| {
        entry
            .hold_change()
            .map(|change| (entry.enrollment.key(), change))
    })
}

pub(crate) mod sqlite {
    use super::*;
    use crate::sqlite::map_error;
    use rusqlite::{Connection, OptionalExtension, params};

    const SELECT_OPEN: &str = "SELECT hold_seq, amount, expires_at, reference, state FROM holds \
         WHERE user_id = ?1 AND course_id = ?2 AND state = 'OPEN' ORDER BY hold_seq";

    const SELECT_ONE: &str = "SELECT hold_seq, amount, expires_at, reference, state FROM holds \
         WHERE user_id = ?1 AND course_id = ?2 AND hold_seq = ?3";

    fn read(key: &EnrollmentKey, row: &rusqlite::Row<'_>) -> rusqlite::Result<RawHold> {
        Ok(RawHold {
            key: key.clone(),
            seq: row.get(0)?,
            amount: row.get(1)?,
            expires_at: row.get(2)?,
            reference: row.get(3)?,
            state: row.get(4)?,
        })
    }

    struct RawHold {
        key: EnrollmentKey,
        seq: i64,
        amount: i64,
        expires_at: i64,
        reference: Option<String>,
        state: String,
    }

    impl RawHold {
        fn parse(self) -> Result<Hold, StoreError> {
            parse_hold(
                &self.key,
                self.seq,
                self.amount,
                self.expires_at,
                self.reference,
                &self.state,
            )
        }
    }

    /// The open holds of one enrollment, by `hold_seq`.
    pub(crate) fn open(
        connection: &Connection,
        key: &EnrollmentKey,
    ) -> Result<Vec<Hold>, StoreError> {
        let mut statement = connection.prepare_cached(SELECT_OPEN).map_err(map_error)?;
        let rows = statement
            .query_map(
                params![key.user_id.as_str(), key.course_id.as_str()],
                |row| read(key, row),
            )
            .map_err(map_error)?;
        let mut holds = Vec::new();
        for row in rows {
            holds.push(row.map_err(map_error)?.parse()?);
        }
        Ok(holds)
    }

    /// Loads the open holds of `state`, and the named hold `seq`s whatever
    /// their state, then checks the state against them.
    pub(crate) fn load_into(
        connection: &Connection,
        state: &mut EnrollmentState,
        named: impl Iterator<Item = u64>,
    ) -> Result<(), StoreError> {
        let key = state.enrollment.key();
        // Nothing held means no open hold: the common case costs no read.
        if state.enrollment.amount_held != 0 {
            for hold in open(connection, &key)? {
                state.holds.insert(hold.seq, hold);
            }
        }
        checked(state)?;
        let mut statement = connection.prepare_cached(SELECT_ONE).map_err(map_error)?;
        for seq in named {
            if state.holds.contains_key(&seq) {
                continue;
            }
            let Ok(seq_column) = i64::try_from(seq) else {
                continue;
            };
            let row = statement
                .query_row(
                    params![key.user_id.as_str(), key.course_id.as_str(), seq_column],
                    |row| read(&key, row),
                )
                .optional()
                .map_err(map_error)?;
            if let Some(row) = row {
                let hold = row.parse()?;
                state.holds.insert(hold.seq, hold);
            }
        }
        Ok(())
    }

    /// Writes the hold changes of a batch's new entries.
    pub(crate) fn write(
        connection: &Connection,
        entries: &[(LedgerEntry, Hash)],
    ) -> Result<(), StoreError> {
        for (key, change) in changes(entries) {
            match change {
                HoldChange::Opened(hold) => {
                    let mut insert = connection
                        .prepare_cached(
                            "INSERT INTO holds (user_id, course_id, hold_seq, amount, expires_at, \
                             reference, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'OPEN')",
                        )
                        .map_err(map_error)?;
                    insert
                        .execute(params![
                            key.user_id.as_str(),
                            key.course_id.as_str(),
                            hold.seq as i64,
                            hold.amount,
                            hold.expires_at.unix_micros(),
                            hold.reference.as_ref().map(Reference::as_str),
                        ])
                        .map_err(map_error)?;
                }
                HoldChange::Closed { seq, state } => {
                    let mut update = connection
                        .prepare_cached(
                            "UPDATE holds SET state = ?4 WHERE user_id = ?1 AND course_id = ?2 \
                             AND hold_seq = ?3 AND state = 'OPEN'",
                        )
                        .map_err(map_error)?;
                    let updated = update
                        .execute(params![
                            key.user_id.as_str(),
                            key.course_id.as_str(),
                            seq as i64,
                            state.as_str(),
                        ])
                        .map_err(map_error)?;
                    if updated != 1 {
                        return Err(StoreError::Internal(format!(
                            "hold {key} seq {seq} was not open when its {} was written",
                            state.as_str()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The enrollments that have a hold open past its `expires_at` at `now`,
    /// earliest expiry first, each once; read on the open-by-expiry index.
    pub(crate) fn expired(
        connection: &Connection,
        now: Timestamp,
    ) -> Result<Vec<EnrollmentKey>, StoreError> {
        let mut statement = connection
            .prepare_cached(
                "SELECT user_id, course_id FROM holds WHERE state = 'OPEN' AND expires_at <= ?1 \
                 ORDER BY expires_at LIMIT ?2",
            )
            .map_err(map_error)?;
        let rows = statement
            .query_map(
                params![now.unix_micros(), EXPIRED_ENROLLMENTS_PER_SWEEP_MAX as i64],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .map_err(map_error)?;
        let mut keys = Vec::new();
        for row in rows {
            let (user_id, course_id) = row.map_err(map_error)?;
            keys.push(parse_key(&user_id, &course_id)?);
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

pub(crate) mod postgres {
    use super::*;
    use crate::postgres::Failure;
    use tokio_postgres::Row;

    pub(crate) fn parse_row(row: &Row) -> Result<(EnrollmentKey, Hold), StoreError> {
        let get = |error: tokio_postgres::Error| StoreError::Internal(error.to_string());
        let user_id: &str = row.try_get(0).map_err(get)?;
        let course_id: &str = row.try_get(1).map_err(get)?;
        let key = parse_key(user_id, course_id)?;
        let hold = parse_hold(
            &key,
            row.try_get(2).map_err(get)?,
            row.try_get(3).map_err(get)?,
            row.try_get(4).map_err(get)?,
            row.try_get(5).map_err(get)?,
            row.try_get(6).map_err(get)?,
        )?;
        Ok((key, hold))
    }

    /// The open holds of the batch's enrollments and the holds it names,
    /// read after the enrollments are locked, so they are the committed ones.
    pub(crate) async fn load_into(
        transaction: &deadpool_postgres::Transaction<'_>,
        states: &mut std::collections::HashMap<EnrollmentKey, EnrollmentState>,
        named: &[(EnrollmentKey, u64)],
    ) -> Result<(), Failure> {
        // Only enrollments that hold something have open holds: a batch of
        // plain payments costs no read here.
        let holding: Vec<&EnrollmentKey> = states
            .iter()
            .filter(|(_, state)| state.enrollment.amount_held != 0)
            .map(|(key, _)| key)
            .collect();
        let named: Vec<&(EnrollmentKey, u64)> = named
            .iter()
            .filter(|(key, seq)| states.contains_key(key) && i64::try_from(*seq).is_ok())
            .collect();
        if holding.is_empty() && named.is_empty() {
            return Ok(());
        }
        let user_ids: Vec<&str> = holding.iter().map(|key| key.user_id.as_str()).collect();
        let course_ids: Vec<&str> = holding.iter().map(|key| key.course_id.as_str()).collect();
        let named_users: Vec<&str> = named.iter().map(|(key, _)| key.user_id.as_str()).collect();
        let named_courses: Vec<&str> = named
            .iter()
            .map(|(key, _)| key.course_id.as_str())
            .collect();
        let named_seqs: Vec<i64> = named.iter().map(|(_, seq)| *seq as i64).collect();
        let statement = transaction
            .prepare_cached(
                "SELECT user_id, course_id, hold_seq, amount, expires_at, reference, state \
                 FROM holds WHERE state = 'OPEN' AND (user_id, course_id) IN \
                 (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
                 UNION \
                 SELECT user_id, course_id, hold_seq, amount, expires_at, reference, state \
                 FROM holds WHERE (user_id, course_id, hold_seq) IN \
                 (SELECT * FROM UNNEST($3::TEXT[], $4::TEXT[], $5::BIGINT[]))",
            )
            .await?;
        let rows = transaction
            .query(
                &statement,
                &[
                    &user_ids,
                    &course_ids,
                    &named_users,
                    &named_courses,
                    &named_seqs,
                ],
            )
            .await?;
        for row in &rows {
            let (key, hold) = parse_row(row)?;
            if let Some(state) = states.get_mut(&key) {
                state.holds.insert(hold.seq, hold);
            }
        }
        for state in states.values() {
            checked(state)?;
        }
        Ok(())
    }

    /// Writes the hold changes of a batch's new entries: the new holds in
    /// one statement, the closed ones in another (a hold opened and closed
    /// in the same batch is inserted open, then closed).
    pub(crate) async fn write(
        transaction: &deadpool_postgres::Transaction<'_>,
        entries: &[(LedgerEntry, Hash)],
    ) -> Result<(), Failure> {
        let mut opened: Vec<(EnrollmentKey, Hold)> = Vec::new();
        let mut closed: Vec<(EnrollmentKey, u64, HoldState)> = Vec::new();
        for (key, change) in changes(entries) {
            match change {
                HoldChange::Opened(hold) => opened.push((key, hold)),
                HoldChange::Closed { seq, state } => closed.push((key, seq, state)),
            }
        }
        if !opened.is_empty() {
            let statement = transaction
                .prepare_cached(
                    "INSERT INTO holds (user_id, course_id, hold_seq, amount, expires_at, \
                     reference, state) SELECT u.*, 'OPEN' FROM UNNEST($1::TEXT[], $2::TEXT[], \
                     $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::TEXT[]) AS u",
                )
                .await?;
            let users: Vec<&str> = opened.iter().map(|(key, _)| key.user_id.as_str()).collect();
            let courses: Vec<&str> = opened
                .iter()
                .map(|(key, _)| key.course_id.as_str())
                .collect();
            let seqs: Vec<i64> = opened.iter().map(|(_, hold)| hold.seq as i64).collect();
            let amounts: Vec<i64> = opened.iter().map(|(_, hold)| hold.amount).collect();
            let expiries: Vec<i64> = opened
                .iter()
                .map(|(_, hold)| hold.expires_at.unix_micros())
                .collect();
            let references: Vec<Option<&str>> = opened
                .iter()
                .map(|(_, hold)| hold.reference.as_ref().map(Reference::as_str))
                .collect();
            transaction
                .execute(
                    &statement,
                    &[&users, &courses, &seqs, &amounts, &expiries, &references],
                )
                .await?;
        }
        if !closed.is_empty() {
            let statement = transaction
                .prepare_cached(
                    "UPDATE holds AS h SET state = u.state FROM UNNEST($1::TEXT[], $2::TEXT[], \
                     $3::BIGINT[], $4::TEXT[]) AS u(user_id, course_id, hold_seq, state) \
                     WHERE h.user_id = u.user_id AND h.course_id = u.course_id \
                     AND h.hold_seq = u.hold_seq AND h.state = 'OPEN'",
                )
                .await?;
            let users: Vec<&str> = closed
                .iter()
                .map(|(key, _, _)| key.user_id.as_str())
                .collect();
            let courses: Vec<&str> = closed
                .iter()
                .map(|(key, _, _)| key.course_id.as_str())
                .collect();
            let seqs: Vec<i64> = closed.iter().map(|(_, seq, _)| *seq as i64).collect();
            let states: Vec<&str> = closed.iter().map(|(_, _, state)| state.as_str()).collect();
            let updated = transaction
                .execute(&statement, &[&users, &courses, &seqs, &states])
                .await?;
            if updated != closed.len() as u64 {
                // The enrollments are locked: a hold closed under the batch
                // means a lost race on a weaker database; decide again.
                return Err(Failure {
                    error: StoreError::Unavailable(format!(
                        "{} of {} holds closed under the batch",
                        closed.len() as u64 - updated,
                        closed.len()
                    )),
                    transient: true,
                });
            }
        }
        Ok(())
    }

    /// The enrollments that have a hold open past its `expires_at` at `now`,
    /// earliest expiry first, each once; read on the open-by-expiry index.
    pub(crate) async fn expired(
        client: &deadpool_postgres::Object,
        now: Timestamp,
    ) -> Result<Vec<EnrollmentKey>, StoreError> {
        let statement = client
            .prepare_cached(
                "SELECT user_id, course_id FROM holds WHERE state = 'OPEN' AND expires_at <= $1 \
                 ORDER BY expires_at LIMIT $2",
            )
            .await
            .map_err(crate::postgres::read_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &now.unix_micros(),
                    &(EXPIRED_ENROLLMENTS_PER_SWEEP_MAX as i64),
                ],
            )
            .await
            .map_err(crate::postgres::read_error)?;
        let mut keys = Vec::new();
        for row in &rows {
            let user_id: &str = row.try_get(0).map_err(crate::postgres::read_error)?;
            let course_id: &str = row.try_get(1).map_err(crate::postgres::read_error)?;
            keys.push(parse_key(user_id, course_id)?);
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// The open holds of the audit's chunk of enrollments, by enrollment,
    /// each by `hold_seq`; read in the audit's snapshot.
    pub(crate) async fn open_of_chunk(
        transaction: &tokio_postgres::Transaction<'_>,
        user_ids: &[&str],
        course_ids: &[&str],
    ) -> Result<std::collections::HashMap<(String, String), Vec<Hold>>, StoreError> {
        let rows = transaction
            .query(
                "SELECT user_id, course_id, hold_seq, amount, expires_at, reference, state \
                 FROM holds WHERE state = 'OPEN' AND (user_id, course_id) IN \
                 (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
                 ORDER BY user_id, course_id, hold_seq",
                &[&user_ids, &course_ids],
            )
            .await
            .map_err(crate::postgres::read_error)?;
        let mut holds: std::collections::HashMap<(String, String), Vec<Hold>> =
            std::collections::HashMap::new();
        for row in &rows {
            let (key, hold) = parse_row(row)?;
            holds
                .entry((key.user_id.to_string(), key.course_id.to_string()))
                .or_default()
                .push(hold);
        }
        Ok(holds)
    }

    /// The open holds of one enrollment, by `hold_seq`.
    pub(crate) async fn open(
        client: &deadpool_postgres::Object,
        key: &EnrollmentKey,
    ) -> Result<Vec<Hold>, StoreError> {
        let statement = client
            .prepare_cached(
                "SELECT user_id, course_id, hold_seq, amount, expires_at, reference, state \
                 FROM holds WHERE user_id = $1 AND course_id = $2 AND state = 'OPEN' \
                 ORDER BY hold_seq",
            )
            .await
            .map_err(crate::postgres::read_error)?;
        let rows = client
            .query(
                &statement,
                &[&key.user_id.as_str(), &key.course_id.as_str()],
            )
            .await
            .map_err(crate::postgres::read_error)?;
        rows.iter()
            .map(|row| parse_row(row).map(|(_, hold)| hold))
            .collect()
    }
}
