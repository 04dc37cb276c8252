//! The ledger's upgrade from the JSON layout of schema 7 to the compact rows
//! of schema 8, on both backends: a ledger written as bursar wrote it before
//! reads back entry for entry, keeps its feed, its chains, its digest, its
//! statements and its audit, and its idempotency keys still replay.

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

crate::conformance!(a_ledger_in_the_json_layout_reads_the_same_after_the_upgrade);

async fn a_ledger_in_the_json_layout_reads_the_same_after_the_upgrade(backend: Backend) {
    let (store, url, db) = fresh_store(backend).await;
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
    let reads_before = reads(&store, &keys).await;
    let digest = store.digest(at(7_000)).await.expect("a digest");
    let audit_before = store.audit().await.expect("audit");
    drop(store);

    match backend {
        Backend::Sqlite => {
            bursar_store::testing::sqlite_to_json_layout(db.sqlite_path())
                .expect("the JSON layout");
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
        Backend::Postgres => {
            bursar_store::testing::postgres_to_json_layout(&url).expect("the JSON layout");
            // Raises (and so panics) unless the row holds JSON text and hex.
            db.execute_sql(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM ledger \
                 WHERE user_id = 'u1' AND course_id = 'c1' AND seq = 2 \
                 AND snapshot LIKE '%\"amount_paid\":2500%' AND length(hash) = 64 \
                 AND kind = 'PAYMENT') \
                 THEN RAISE EXCEPTION 'not the JSON layout'; END IF; END $$",
            );
        }
    }

    let store = Store::open(&url).await.expect("upgrade");
    assert_eq!(everything(&store, &keys).await, before);
    assert_eq!(reads(&store, &keys).await, reads_before);
    let check = store.check_digest(&digest).await.expect("check");
    assert!(check.ok, "{check:?}");
    let audit = store.audit().await.expect("audit");
    assert!(audit.ok, "{audit:?}");
    assert_eq!((audit.enrollments, audit.entries), (3, 10));
    assert_eq!(
        (audit.enrollments, audit.entries, audit.disagreements.len()),
        (
            audit_before.enrollments,
            audit_before.entries,
            audit_before.disagreements.len()
        )
    );
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
/// What the finance reads say of `keys`: the enrollments now and as of
/// two moments, a statement over the payments' period, the export's pages
/// and each enrollment's audit.
async fn reads(store: &Store, keys: &[EnrollmentKey]) -> Vec<String> {
    let mut said = Vec::new();
    for key in keys {
        said.push(format!(
            "{:?}",
            store.enrollment(key).await.expect("enrollment")
        ));
        for moment in [1_500, 5_500, 9_000] {
            said.push(format!(
                "{:?}",
                store
                    .enrollment_as_of(key, at(moment))
                    .await
                    .expect("as of")
            ));
        }
        said.push(format!(
            "{:?}",
            store
                .statement(key, Some(at(2_000)), at(9_000), 100)
                .await
                .expect("statement")
        ));
        said.push(format!(
            "{:?}",
            store.audit_enrollment(key).await.expect("one audit")
        ));
    }
    said.push(format!(
        "{:?}",
        store
            .enrollments_of_as_of(&keys[0].user_id, at(9_000))
            .await
            .expect("a user's enrollments")
    ));
    let page = bursar_store::ExportQuery {
        from: None,
        to: at(9_000),
        after: 0,
        limit: 4,
    };
    let mut after = 0;
    loop {
        let entries = store
            .export_page(bursar_store::ExportQuery { after, ..page })
            .await
            .expect("an export page");
        let Some(last) = entries.last() else { break };
        after = last.position;
        said.push(format!("{entries:?}"));
    }
    said
}

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

/// `tests/fixtures/schema7.pg.sql` is a PostgreSQL database written by
/// bursar before the compact ledger, dumped as SQL: the upgrade runs on the
/// rows that layout wrote, and the digest's root is the one that build gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_written_before_the_compact_ledger_upgrades_and_audits() {
    if !Backend::Postgres.available() {
        return;
    }
    let database = bursar_store::testing::PostgresTestDb::create();
    database.execute(include_str!("../fixtures/schema7.pg.sql"));
    let store = Store::open(database.url()).await.expect("upgrade");
    let audit = store.audit().await.expect("audit");
    assert!(audit.ok, "{audit:?}");
    assert_eq!((audit.enrollments, audit.entries), (3, 43));
    let digest = store.digest(at(0)).await.expect("digest");
    assert_eq!(digest.entries, 43);
    assert_eq!(
        digest.root.to_hex(),
        "dffca45dc24561adce70badf87b04d4c5b4b62714403bd74939aad3c0d9034f0"
    );
    let feed = crate::events::everything(&store).await;
    assert_eq!(
        feed.last().map(|event| event.position),
        Some(digest.position)
    );
}
