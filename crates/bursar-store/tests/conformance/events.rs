//! The feed of every backend: positions dense and in commit order, each
//! entry's events derived from its transitions, and a database written
//! before events existed getting the same feed from the migration.

use crate::conformance;
use crate::helpers::{Backend, at, enroll_request, fresh_store, key, pay, refund, request};
use bursar_core::{EventType, Outcome};
use bursar_store::{EventQuery, Store};

conformance!(
    positions_are_dense_and_follow_the_commits,
    a_database_from_before_events_gets_the_same_feed,
);

/// The whole feed (up to a thousand events).
pub async fn everything(store: &Store) -> Vec<bursar_core::Event> {
    store
        .events(EventQuery {
            after: 0,
            limit: 1000,
            types: Vec::new(),
        })
        .await
        .expect("read the feed")
        .events
}

/// Four enrollments, each paid in full then refunded, one batch at a time.
async fn write_history(store: &Store) {
    for (index, course) in ["c1", "c2", "c3", "c4"].into_iter().enumerate() {
        let enrollment = key("u1", course);
        let base = 1_000_000 * (index as i64 + 1);
        let outcomes = store
            .execute(vec![enroll_request(&enrollment, 500)], at(base))
            .await
            .expect("enroll");
        assert!(matches!(outcomes[0], Outcome::Accepted(_)));
        store
            .execute(vec![request(&enrollment, "pay", pay(500))], at(base + 1000))
            .await
            .expect("pay");
        store
            .execute(
                vec![request(&enrollment, "refund", refund(100, "goodwill"))],
                at(base + 2000),
            )
            .await
            .expect("refund");
    }
}

async fn positions_are_dense_and_follow_the_commits(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    assert_eq!(store.event_head().await.expect("head"), 1);
    write_history(&store).await;
    let events = everything(&store).await;
    let types: Vec<EventType> = events.iter().map(|event| event.event_type).collect();
    let one = [
        EventType::EnrollmentCreated,
        EventType::PaymentRecorded,
        EventType::PaidInFull,
        EventType::AccessGranted,
        EventType::RefundRecorded,
        EventType::AccessRevoked,
    ];
    assert_eq!(types, one.repeat(4));
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.position, index as u64 + 1);
    }
    assert_eq!(store.event_head().await.expect("head"), 25);
    // A refused request takes no position.
    let outcomes = store
        .execute(
            vec![request(&key("u1", "c1"), "too much", pay(10_000))],
            at(9_000_000),
        )
        .await
        .expect("refused");
    assert!(matches!(outcomes[0], Outcome::Rejected(_)));
    assert_eq!(store.event_head().await.expect("head"), 25);
}

async fn a_database_from_before_events_gets_the_same_feed(backend: Backend) {
    let (store, url, db) = fresh_store(backend).await;
    write_history(&store).await;
    let before = everything(&store).await;
    drop(store);
    // Back to the schema of before events: no positions, no transitions (and
    // none of webhooks, publishers and the payment intake, which came after;
    // the JSON ledger of before schema 8 too).
    match backend {
        Backend::Sqlite => {
            bursar_store::testing::sqlite_to_json_layout(db.sqlite_path())
                .expect("the JSON layout");
            db.execute_sql(
                "DROP TABLE event_publishers;
             DROP TABLE webhook_endpoints;
             DROP TABLE webhook_pending;
             DROP TABLE webhook_attempts;
             DROP TABLE intake_exceptions;
             DROP TABLE intake_links;
             ALTER TABLE ledger DROP COLUMN source;
             DROP INDEX ledger_position;
             ALTER TABLE ledger DROP COLUMN position;
             ALTER TABLE ledger DROP COLUMN transitions;
             PRAGMA user_version = 3;",
            )
        }
        Backend::Postgres => {
            bursar_store::testing::postgres_to_json_layout(&url).expect("the JSON layout");
            db.execute_sql(
                "DROP TABLE event_publishers;
             DROP TABLE webhook_endpoints;
             DROP TABLE webhook_pending;
             DROP TABLE webhook_attempts;
             DROP TABLE intake_exceptions;
             DROP TABLE intake_links;
             ALTER TABLE ledger DROP COLUMN source;
             DROP TABLE bursar_event_positions;
             ALTER TABLE ledger DROP COLUMN position;
             ALTER TABLE ledger DROP COLUMN transitions;
             DELETE FROM bursar_schema_migrations WHERE version >= 4;",
            )
        }
    }
    let store = Store::open(&url).await.expect("migrate");
    assert_eq!(everything(&store).await, before);
    // New writes go on after the backfilled positions.
    store
        .execute(
            vec![request(&key("u1", "c1"), "again", pay(100))],
            at(9_000_000),
        )
        .await
        .expect("pay");
    let after = everything(&store).await;
    assert_eq!(after.len(), before.len() + 3);
    assert_eq!(after.last().expect("event").position, 27);
    assert_eq!(
        after[before.len()..]
            .iter()
            .map(|event| event.event_type)
            .collect::<Vec<_>>(),
        [
            EventType::PaymentRecorded,
            EventType::PaidInFull,
            EventType::AccessGranted
        ]
    );
}
