//! Holds in storage: open holds are kept across reopening and read back in
//! order, the index of open holds by expiry names exactly the enrollments
//! the sweep must visit, two stores sweeping the same hold write one
//! `EXPIRE` between them, and a held amount that disagrees with its holds is
//! refused as corruption rather than built upon.

use crate::helpers::{Backend, SECOND, T0, TestDb, at, enroll_request, key, request};
use bursar_core::{
    Amount, Command, EntryKind, HoldAmount, HoldExpiry, Outcome, Reference, Request,
};
use bursar_store::{LEDGER_PAGE_ENTRIES_MAX, Store, StoreError};

crate::conformance!(
    holds_are_kept_and_the_expiry_index_finds_them,
    two_stores_sweeping_one_hold_expire_it_once,
    a_held_amount_without_its_holds_is_refused,
    the_audit_compares_the_holds_table_with_the_ledger,
);

fn hold(minor_units: i64, seconds: i128) -> Command {
    Command::Hold {
        amount: HoldAmount::Amount(Amount::new(i128::from(minor_units)).expect("amount")),
        expires_in: HoldExpiry::from_seconds(seconds).expect("expiry"),
        reference: Some(Reference::parse("pi_1").expect("reference")),
    }
}

fn sweep(key: &bursar_core::EnrollmentKey) -> Request {
    Request {
        key: key.clone(),
        idempotency_key: None,
        command: Command::ExpireHolds,
    }
}

async fn execute(store: &Store, requests: Vec<Request>, seconds: i64) -> Vec<Outcome> {
    store
        .execute(requests, at(T0 + seconds * SECOND))
        .await
        .expect("execute")
}

async fn holds_are_kept_and_the_expiry_index_finds_them(backend: Backend) {
    let (url, _db) = TestDb::new(backend);
    let store = Store::open(&url).await.expect("open");
    let (a, b, c) = (key("alice", "a"), key("bob", "b"), key("carol", "c"));
    let mut setup = vec![
        enroll_request(&a, 10_000),
        enroll_request(&b, 10_000),
        enroll_request(&c, 10_000),
    ];
    setup.push(request(&a, "a-short", hold(1_000, 30)));
    setup.push(request(&a, "a-long", hold(2_000, 900)));
    setup.push(request(&b, "b-short", hold(3_000, 45)));
    for outcome in execute(&store, setup, 0).await {
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
    drop(store);
    let store = Store::open(&url).await.expect("reopen");
    let open = store.open_holds(&a).await.expect("open holds");
    let summary: Vec<(u64, i64, i64)> = open
        .iter()
        .map(|hold| (hold.seq, hold.amount, hold.expires_at.unix_micros()))
        .collect();
    assert_eq!(
        summary,
        [(2, 1_000, T0 + 30 * SECOND), (3, 2_000, T0 + 900 * SECOND)]
    );
    assert!(store.open_holds(&c).await.expect("none").is_empty());
    let enrollment = store.enrollment(&a).await.expect("read").expect("a");
    assert_eq!(
        (enrollment.amount_held, enrollment.amount_available),
        (3_000, 7_000)
    );

    // The index: nothing before the first expiry, then exactly who is due.
    assert!(
        store
            .expired_holds(at(T0 + 29 * SECOND))
            .await
            .expect("index")
            .is_empty()
    );
    assert_eq!(
        store
            .expired_holds(at(T0 + 30 * SECOND))
            .await
            .expect("index"),
        std::slice::from_ref(&a)
    );
    assert_eq!(
        store
            .expired_holds(at(T0 + 45 * SECOND))
            .await
            .expect("index"),
        [a.clone(), b.clone()]
    );
    // The sweep's requests write the EXPIRE entries and answer nothing else.
    let outcomes = execute(&store, vec![sweep(&a), sweep(&b), sweep(&c)], 60).await;
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Unchanged(_)))
    );
    assert!(
        store
            .expired_holds(at(T0 + 60 * SECOND))
            .await
            .expect("index")
            .is_empty()
    );
    let kinds = |entries: Vec<bursar_core::LedgerEntry>| -> Vec<(EntryKind, Option<u64>)> {
        entries
            .into_iter()
            .map(|entry| (entry.kind, entry.hold_seq))
            .collect()
    };
    assert_eq!(
        kinds(
            store
                .ledger(&a, 3, LEDGER_PAGE_ENTRIES_MAX)
                .await
                .expect("ledger")
        ),
        [(EntryKind::Expire, Some(2))]
    );
    assert_eq!(
        kinds(
            store
                .ledger(&b, 2, LEDGER_PAGE_ENTRIES_MAX)
                .await
                .expect("ledger")
        ),
        [(EntryKind::Expire, Some(2))]
    );
    assert_eq!(store.open_holds(&a).await.expect("open").len(), 1);
    assert!(store.open_holds(&b).await.expect("open").is_empty());
    // The long hold is open until its time, then found and expired too.
    assert_eq!(
        store
            .expired_holds(at(T0 + 900 * SECOND))
            .await
            .expect("index"),
        std::slice::from_ref(&a)
    );
    let report = store.audit().await.expect("audit");
    assert!(report.ok, "{report:?}");
}

async fn two_stores_sweeping_one_hold_expire_it_once(backend: Backend) {
    let (url, _db) = TestDb::new(backend);
    let (first, second) = tokio::join!(Store::open(&url), Store::open(&url));
    let stores = [first.expect("open"), second.expect("open")];
    let mut keys = Vec::new();
    let mut setup = Vec::new();
    for index in 0..20 {
        let enrollment = key("u", &format!("c{index}"));
        setup.push(enroll_request(&enrollment, 10_000));
        setup.push(request(&enrollment, "hold", hold(10_000, 30)));
        keys.push(enrollment);
    }
    execute(&stores[0], setup, 0).await;
    let due = stores[1]
        .expired_holds(at(T0 + 31 * SECOND))
        .await
        .expect("index");
    assert_eq!(due.len(), 20);
    let mut tasks = Vec::new();
    for (index, store) in stores.iter().enumerate() {
        for _ in 0..3 {
            let store = store.clone();
            let mut requests: Vec<Request> = due.iter().map(sweep).collect();
            if index == 1 {
                requests.reverse();
            }
            tasks.push(tokio::spawn(async move {
                store
                    .execute(requests, at(T0 + 31 * SECOND))
                    .await
                    .expect("sweep")
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    for enrollment in &keys {
        let entries = stores[0]
            .ledger(enrollment, 0, LEDGER_PAGE_ENTRIES_MAX)
            .await
            .expect("ledger");
        let expiries = entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::Expire)
            .count();
        assert_eq!(expiries, 1, "{enrollment}: {entries:?}");
    }
    let report = stores[1].audit().await.expect("audit");
    assert!(report.ok, "{report:?}");
}

async fn a_held_amount_without_its_holds_is_refused(backend: Backend) {
    let (url, db) = TestDb::new(backend);
    let store = Store::open(&url).await.expect("open");
    let a = key("alice", "a");
    execute(&store, vec![enroll_request(&a, 10_000)], 0).await;
    db.execute_sql("UPDATE enrollments SET amount_held = 500");
    let payment = request(
        &a,
        "pay",
        Command::Payment {
            amount: Amount::new(100).expect("amount"),
            currency: None,
            reference: None,
        },
    );
    match store.execute(vec![payment], at(T0 + SECOND)).await {
        Err(StoreError::Internal(problem)) => {
            assert!(problem.contains("open holds sum to 0"), "{problem}")
        }
        other => panic!("a corrupt held amount must be refused: {other:?}"),
    }
}

async fn the_audit_compares_the_holds_table_with_the_ledger(backend: Backend) {
    let (url, db) = TestDb::new(backend);
    let store = Store::open(&url).await.expect("open");
    let a = key("alice", "a");
    let setup = vec![
        enroll_request(&a, 10_000),
        request(&a, "first", hold(1_000, 900)),
        request(&a, "second", hold(2_000, 900)),
    ];
    execute(&store, setup, 0).await;
    let report = store.audit().await.expect("audit");
    assert!(report.ok, "{report:?}");
    // A hold row changed behind the ledger's back.
    db.execute_sql("UPDATE holds SET amount = 1 WHERE hold_seq = 3");
    let report = store.audit().await.expect("audit");
    assert!(!report.ok);
    assert_eq!(report.disagreements.len(), 1, "{report:?}");
    assert!(
        report.disagreements[0]
            .problem
            .starts_with("the holds table disagrees with the ledger"),
        "{report:?}"
    );
    // A hold closed in the table alone.
    db.execute_sql("UPDATE holds SET amount = 2000, state = 'VOIDED' WHERE hold_seq = 3");
    let report = store.audit().await.expect("audit");
    assert!(!report.ok, "{report:?}");
}
