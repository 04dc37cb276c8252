//! One group-commit batch on PostgreSQL: the locked transaction that loads
//! the batch's enrollments, holds and stored operations, runs the planner,
//! and writes enrollments, ledger rows, holds and intake records in bulk.

use super::failure::Failure;
use super::ledger::parse_entry;
use super::ledger::{self, NewRow};
use super::rows::{checked_state, policy_columns, row_key};
use crate::events;
use crate::intake::{self, IntakeOutcome, IntakeWrite};
use crate::ledger_codes::{ENTRY_COLUMNS, entry_columns};
use crate::{StoreError, holds};
use bursar_core::batch::{BatchInput, enrollment_keys, idempotency_keys, named_holds, plan_batch};
use bursar_core::{
    EnrollmentKey, EnrollmentState, Hash, LedgerEntry, Outcome, Request, StoredOperation,
    Timestamp, Transitions, event_count,
};
use deadpool_postgres::Object;
use futures_util::future::{try_join, try_join3};
use std::collections::HashMap;
use tokio_postgres::Statement;
use tokio_postgres::types::{ToSql, Type};

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
const LOAD_STORED: &str = concat!(
    "SELECT ",
    entry_columns!(),
    ", user_id, course_id FROM ledger WHERE idempotency_lookup = ANY($1::TEXT[])"
);

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

/// One attempt at a batch: one transaction, a handful of statements. The
/// plain requests' outcomes, and each intake write's (see `intake.rs`).
pub(super) async fn execute_batch(
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
    let lookups: Vec<String> = idempotency_keys(requests)
        .iter()
        .map(|(key, idempotency_key)| {
            format!("{}/{}/{idempotency_key}", key.user_id, key.course_id)
        })
        .collect();
    // The locks and the stored operations in one round trip: both
    // statements are sent at once, and the server runs them in the order
    // sent, so the stored operations are read after the locks are held.
    // The lookup is not a cached prepared statement: an unnamed one
    // (`query_typed`: parse, bind and execute in one message) is planned for
    // each batch with the ledger as it is now. A generic plan cached while
    // the ledger was empty keeps scanning all of it, long after it has
    // grown, until autovacuum happens to analyze it (seen on a fresh
    // database: 24 million rows read in six seconds).
    let lock_parameters: [&(dyn ToSql + Sync); 2] = [&user_ids, &course_ids];
    let locking = transaction.query(&lock, &lock_parameters);
    let loading = async {
        if lookups.is_empty() {
            return Ok(Vec::new());
        }
        transaction
            .query_typed(LOAD_STORED, &[(&lookups, Type::TEXT_ARRAY)])
            .await
    };
    let (locked, stored) = try_join(locking, loading).await?;
    for row in locked {
        let state = checked_state(&row)?;
        input.states.insert(state.enrollment.key(), state);
    }
    for row in stored {
        let key = row_key(&row, ENTRY_COLUMNS).map_err(StoreError::Internal)?;
        // Only an enrollment that existed when locked can hold stored
        // operations the batch may replay: one created since by another
        // process makes this batch's insert of it fail, and the retry
        // decides on top of it.
        if !input.states.contains_key(&key) {
            continue;
        }
        let (entry, fingerprint) = parse_entry(&key, &row).map_err(StoreError::Internal)?;
        let idempotency_key = entry.idempotency_key.clone().ok_or_else(|| {
            StoreError::Internal(format!("ledger entry {key} seq {} lost its key", entry.seq))
        })?;
        input.stored.insert(
            (key, idempotency_key),
            StoredOperation { fingerprint, entry },
        );
    }
    holds::postgres::load_into(&transaction, &mut input.states, &named_holds(requests)).await?;

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
    let mut settled = intake::settle(prepared, writes, plan.outcomes, existing, now)?;
    // One reservation for the entries' events and the new exceptions, in
    // that order.
    let entry_events = entry_events(&plan.new_entries, &plan.transitions);
    let positions = entry_events + settled.new_exceptions();
    // The enrollments' writes and the reservation in one round trip, sent
    // in this order and so run in it: the counter's lock is taken last.
    // Every statement is prepared first (cached, so only a connection's
    // first batch waits for it), so none can overtake another.
    let insert = if created.is_empty() {
        None
    } else {
        Some(transaction.prepare_cached(INSERT_ENROLLMENTS).await?)
    };
    let update = if updated.is_empty() {
        None
    } else {
        Some(transaction.prepare_cached(UPDATE_ENROLLMENTS).await?)
    };
    let reserve = if positions > 0 {
        let statement = events::postgres::RESERVE_POSITIONS;
        Some(transaction.prepare_cached(statement).await?)
    } else {
        None
    };
    let (_, _, first) = try_join3(
        async {
            match &insert {
                Some(statement) => insert_enrollments(&transaction, statement, &created).await,
                None => Ok(()),
            }
        },
        async {
            match &update {
                Some(statement) => {
                    update_enrollments(&transaction, statement, &updated, &versions_before).await
                }
                None => Ok(()),
            }
        },
        async {
            match &reserve {
                Some(statement) => {
                    events::postgres::reserve_positions(&transaction, statement, positions)
                        .await
                        .map(Some)
                        .map_err(Failure::from)
                }
                None => Ok(None),
            }
        },
    )
    .await?;
    if let Some(first) = first {
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

/// One array parameter of a bulk statement: a field of every state.
fn column<'a, T>(states: &[&'a EnrollmentState], get: impl Fn(&'a EnrollmentState) -> T) -> Vec<T> {
    states.iter().map(|state| get(state)).collect()
}

async fn insert_enrollments(
    transaction: &deadpool_postgres::Transaction<'_>,
    statement: &Statement,
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
    transaction
        .execute(
            statement,
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
    statement: &Statement,
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
    let updated = transaction
        .execute(
            statement,
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
    let mut rows = Vec::with_capacity(entries.len());
    for ((entry, fingerprint), transitions) in entries.iter().zip(transitions) {
        rows.push(NewRow {
            entry,
            fingerprint,
            position,
            transitions: *transitions,
        });
        position = events::position_after(position, entry, *transitions);
    }
    ledger::write(transaction, "ledger", &rows).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::testing::open;
    use bursar_core::{AccessPolicy, CourseId, Currency, IdempotencyKey, Price, UserId};

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
}
