//! The SQLite ledger's upgrade from the JSON layout of schema 7 to the
//! compact rows of schema 8: a ledger written as bursar wrote it before
//! reads back entry for entry, keeps its feed, its chains and its digest,
//! and its idempotency keys still replay.

use crate::helpers::{
    Backend, at, charge, enroll_request, fresh_store, key, pay, reason, reference, refund, request,
};
use bursar_core::{Amount, Command, EnrollmentKey, Outcome};
use bursar_store::Store;

/// The feed and the ledgers of `keys`.
async fn everything(
    store: &Store,
    keys: &[EnrollmentKey],
) -> (Vec<bursar_core::Event>, Vec<bursar_core::LedgerEntry>) {
    let mut entries = Vec::new();
    for key in keys {
        entries.extend(store.ledger(key, 0, 1000).await.expect("a ledger"));
    }
    (crate::events::everything(store).await, entries)
}

#[tokio::test]
async fn a_ledger_in_the_json_layout_reads_the_same_after_the_upgrade() {
    let (store, url, db) = fresh_store(Backend::Sqlite).await;
    let keys = [key("u1", "c1"), key("u2", "c1"), key("u1", "c2")];
    for (index, enrollment) in keys.iter().enumerate() {
        store
            .execute(
                vec![enroll_request(enrollment, 10_000)],
                at(1_000 + index as i64),
            )
            .await
            .expect("enroll");
    }
    let hold = Command::Hold {
        amount: bursar_core::HoldAmount::Amount(Amount::new(2_000).expect("amount")),
        expires_in: bursar_core::HoldExpiry::from_seconds(3_600).expect("expiry"),
        reference: Some(reference("card")),
    };
    let outcomes = store
        .execute(
            vec![
                request(&keys[0], "p1", pay(2_500)),
                request(&keys[0], "c1", charge(1_000, "late fee")),
                request(&keys[1], "p2", pay(10_000)),
                request(&keys[1], "r2", refund(4_000, "dropped out")),
                request(&keys[2], "h3", hold),
                request(
                    &keys[2],
                    "k3",
                    Command::Credit {
                        amount: Amount::new(500).expect("amount"),
                        reason: reason("scholarship"),
                    },
                ),
            ],
            at(5_000),
        )
        .await
        .expect("a batch");
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Accepted(_))),
        "{outcomes:?}"
    );
    let capture = Command::Capture {
        hold_seq: 2,
        amount: None,
        reference: None,
    };
    store
        .execute(vec![request(&keys[2], "cap3", capture)], at(6_000))
        .await
        .expect("capture");
    let before = everything(&store, &keys).await;
    let digest = store.digest(at(7_000)).await.expect("a digest");
    drop(store);

    bursar_store::testing::sqlite_to_json_layout(db.sqlite_path()).expect("the JSON layout");
    {
        let connection = rusqlite::Connection::open(db.sqlite_path()).expect("open");
        let snapshot: String = connection
            .query_row(
                "SELECT snapshot FROM ledger WHERE user_id = 'u1' AND course_id = 'c1' AND seq = 2",
                [],
                |row| row.get(0),
            )
            .expect("a JSON snapshot");
        assert!(snapshot.contains("\"amount_paid\":2500"), "{snapshot}");
    }

    let store = Store::open(&url).await.expect("upgrade");
    assert_eq!(everything(&store, &keys).await, before);
    let check = store.check_digest(&digest).await.expect("check");
    assert!(check.ok, "{check:?}");
    let audit = store.audit().await.expect("audit");
    assert!(audit.ok, "{audit:?}");
    assert_eq!((audit.enrollments, audit.entries), (3, 10));
    // A key stored in the JSON layout replays its entry; new writes chain on.
    let outcomes = store
        .execute(
            vec![
                request(&keys[0], "p1", pay(2_500)),
                request(&keys[0], "p4", pay(100)),
            ],
            at(8_000),
        )
        .await
        .expect("after the upgrade");
    assert!(
        matches!(&outcomes[0], Outcome::Replayed(entry) if entry.seq == 2),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], Outcome::Accepted(entry) if entry.seq == 4),
        "{outcomes:?}"
    );
    assert!(store.audit().await.expect("audit").ok);
}

/// `tests/fixtures/schema7.db` was written by bursar before the compact
/// ledger (`store-writer sqlite://schema7.db 2 20 3`: three enrollments, 40
/// payments), so the upgrade runs on the bytes that layout put on disk.
#[tokio::test]
async fn a_database_written_before_the_compact_ledger_upgrades_and_audits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("schema7.db");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema7.db"),
        &path,
    )
    .expect("copy the fixture");
    let url = format!("sqlite://{}", path.display());
    let store = Store::open(&url).await.expect("upgrade");
    let audit = store.audit().await.expect("audit");
    assert!(audit.ok, "{audit:?}");
    assert_eq!((audit.enrollments, audit.entries), (3, 43));
    let digest = store.digest(at(0)).await.expect("digest");
    assert_eq!(digest.entries, 43);
    assert!(store.check_digest(&digest).await.expect("check").ok);
}
