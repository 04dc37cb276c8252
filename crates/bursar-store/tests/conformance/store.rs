//! Storage-level conformance: what every backend must do beyond deciding
//! operations correctly. Batches commit atomically and answer in order,
//! everything survives reopening the store, idempotency keys included, the
//! ledger pages, the reads list what they should, audit
//! counts, totals stop at their limit, and concurrent writers onto one
//! enrollment, through one store or two, never lose an update.

use crate::helpers::{
    Backend, SECOND, T0, TestDb, at, charge, enroll_request, fresh_store, key, pay, refund, request,
};
use bursar_core::money::{ENROLLMENT_TOTAL_MAX, OPERATION_AMOUNT_MAX};
use bursar_core::{
    Command, DISAGREEMENTS_PER_ENROLLMENT_MAX, EnrollmentKey, EnrollmentStatus, EntryKind,
    LedgerEntry, Outcome, PaymentStatus, Request, UserId,
};
use bursar_store::{LEDGER_PAGE_ENTRIES_MAX, Store};

crate::conformance!(
    batch_answers_in_order,
    failed_batch_writes_nothing,
    readers_never_see_half_a_batch,
    reopening_keeps_everything,
    idempotency_survives_reopening,
    ledger_pages,
    enrollments_of_lists_by_course,
    audit_of_a_clean_store,
    a_long_ledger_audits_in_full,
    tampering_deep_in_a_long_ledger_is_found,
    charges_stop_at_the_total_limit,
    refunds_stop_at_the_total_limit,
    concurrent_payments_sum_correctly,
    concurrent_pay_remaining_pays_once,
    two_stores_share_one_database,
);

/// Executes one batch and returns its outcomes; a storage error fails the test.
async fn run(store: &Store, requests: Vec<Request>, seconds: i64) -> Vec<Outcome> {
    let count = requests.len();
    let outcomes = store
        .execute(requests, at(T0 + seconds * SECOND))
        .await
        .expect("execute");
    assert_eq!(outcomes.len(), count, "one outcome per request");
    outcomes
}

/// The one outcome of a one-request batch.
async fn run_one(store: &Store, request: Request, seconds: i64) -> Outcome {
    run(store, vec![request], seconds).await.remove(0)
}

fn accepted(outcome: &Outcome) -> &LedgerEntry {
    match outcome {
        Outcome::Accepted(entry) => entry,
        other => panic!("expected an accepted operation, got {other:?}"),
    }
}

fn replayed(outcome: &Outcome) -> &LedgerEntry {
    match outcome {
        Outcome::Replayed(entry) => entry,
        other => panic!("expected a replay, got {other:?}"),
    }
}

fn rejected(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Rejected(rejection) => rejection.code(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The whole ledger of an enrollment, page by page.
async fn whole_ledger(store: &Store, key: &EnrollmentKey) -> Vec<LedgerEntry> {
    let mut entries: Vec<LedgerEntry> = Vec::new();
    loop {
        let after = entries.last().map_or(0, |entry| entry.seq);
        let page = store
            .ledger(key, after, LEDGER_PAGE_ENTRIES_MAX)
            .await
            .expect("ledger");
        if page.is_empty() {
            return entries;
        }
        entries.extend(page);
    }
}

async fn paid(store: &Store, key: &EnrollmentKey) -> i64 {
    store
        .enrollment(key)
        .await
        .expect("read")
        .expect("enrolled")
        .amount_paid
}

async fn assert_audit(store: &Store, enrollments: u64, entries: u64) {
    let report = store.audit().await.expect("audit");
    assert!(report.ok, "audit: {report:?}");
    assert!(report.disagreements.is_empty(), "audit: {report:?}");
    assert_eq!(
        (report.enrollments, report.entries),
        (enrollments, entries),
        "audit counts"
    );
}

/// One batch over two enrollments answers every request in order, each as
/// if applied alone after the ones before it, and commits them all.
async fn batch_answers_in_order(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    let a = key("alice", "math-101");
    let b = key("bob", "math-101");
    let outcomes = run(
        &store,
        vec![
            request(&b, "k1", pay(10)),
            enroll_request(&a, 1_000),
            request(&a, "k1", pay(300)),
            request(&a, "k1", pay(300)),
            request(&a, "k1", pay(200)),
            enroll_request(&b, 500),
            request(&b, "k1", pay(500)),
            enroll_request(&a, 1_000),
            enroll_request(&a, 999),
            request(&a, "k2", Command::PayRemaining { reference: None }),
            request(&a, "k3", pay(1)),
            request(&a, "k4", Command::Complete),
        ],
        1,
    )
    .await;
    assert_eq!(rejected(&outcomes[0]), "ENROLLMENT_NOT_FOUND");
    assert_eq!(accepted(&outcomes[1]).kind, EntryKind::Enroll);
    let first_payment = accepted(&outcomes[2]);
    assert_eq!((first_payment.seq, first_payment.amount), (2, 300));
    assert_eq!(replayed(&outcomes[3]), first_payment);
    assert_eq!(rejected(&outcomes[4]), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(accepted(&outcomes[5]).seq, 1);
    // Keys are scoped to their enrollment: "k1" is new for bob.
    assert_eq!(accepted(&outcomes[6]).amount, 500);
    match &outcomes[7] {
        Outcome::Unchanged(enrollment) => assert_eq!(enrollment.amount_paid, 300),
        other => panic!("enrolling again with the same terms: {other:?}"),
    }
    assert_eq!(rejected(&outcomes[8]), "ENROLLMENT_EXISTS");
    assert_eq!(accepted(&outcomes[9]).amount, 700);
    assert_eq!(rejected(&outcomes[10]), "OVERPAYMENT");
    let completed = accepted(&outcomes[11]);
    assert_eq!(completed.enrollment.status, EnrollmentStatus::Completed);

    let alice = store.enrollment(&a).await.expect("read").expect("enrolled");
    assert_eq!(alice, completed.enrollment);
    assert_eq!(alice.version, 4);
    let bob = store.enrollment(&b).await.expect("read").expect("enrolled");
    assert_eq!(bob.payment_status, PaymentStatus::Completed);
    assert_eq!(bob.version, 2);
    assert!(run(&store, Vec::new(), 2).await.is_empty());
    assert_eq!(store.enrollment(&b).await.expect("read"), Some(bob));
    assert_eq!(whole_ledger(&store, &a).await.len(), 4);
    assert_audit(&store, 2, 6).await;
}

/// A batch that fails while writing leaves no trace: no amounts, no entries,
/// no idempotency records, and the store carries on.
async fn failed_batch_writes_nothing(backend: Backend) {
    let (store, _url, db) = fresh_store(backend).await;
    let a = key("alice", "math-101");
    accepted(&run_one(&store, enroll_request(&a, 1_000), 1).await);
    db.fail_ledger_writes_with_reason("doomed");

    let result = store
        .execute(
            vec![
                request(&a, "k1", pay(100)),
                request(&a, "k2", charge(50, "fine")),
                request(&a, "k3", charge(50, "doomed")),
            ],
            at(T0 + 2 * SECOND),
        )
        .await;
    assert!(result.is_err(), "the batch must fail: {result:?}");
    let alice = store.enrollment(&a).await.expect("read").expect("enrolled");
    assert_eq!(
        (alice.version, alice.amount_paid, alice.amount_charged),
        (1, 0, 0)
    );
    assert_eq!(whole_ledger(&store, &a).await.len(), 1);
    assert_audit(&store, 1, 1).await;

    // The keys of the failed batch were never stored: they apply afresh.
    let outcomes = run(
        &store,
        vec![request(&a, "k1", pay(100)), request(&a, "k2", pay(1))],
        3,
    )
    .await;
    assert_eq!(accepted(&outcomes[0]).seq, 2);
    assert_eq!(accepted(&outcomes[1]).seq, 3);
    assert_eq!(paid(&store, &a).await, 101);
    assert_audit(&store, 1, 3).await;
}

/// A reader running alongside a large batch sees all of it or none of it.
async fn readers_never_see_half_a_batch(backend: Backend) {
    const PAYMENTS: i64 = 400;
    let (store, _url, _db) = fresh_store(backend).await;
    let a = key("alice", "math-101");
    accepted(&run_one(&store, enroll_request(&a, 10_000), 1).await);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, a, done) = (store.clone(), a.clone(), done.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let enrollment = store.enrollment(&a).await.expect("read").expect("enrolled");
                assert!(
                    [0, PAYMENTS].contains(&enrollment.amount_paid),
                    "a reader saw part of a batch: {enrollment:?}"
                );
                let entries = store
                    .ledger(&a, 0, LEDGER_PAGE_ENTRIES_MAX)
                    .await
                    .expect("ledger")
                    .len() as i64;
                assert!(
                    [1, PAYMENTS + 1].contains(&entries),
                    "a reader saw {entries} ledger entries"
                );
                reads += 1;
                if finished {
                    return reads;
                }
            }
        })
    };
    let requests = (0..PAYMENTS)
        .map(|index| request(&a, &format!("p{index}"), pay(1)))
        .collect();
    for outcome in run(&store, requests, 2).await {
        accepted(&outcome);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.await.expect("reader") >= 1);
    assert_eq!(paid(&store, &a).await, PAYMENTS);
}

/// Dropping the store and opening the same URL again gives back every
/// enrollment and every entry exactly, and the chain continues from there.
async fn reopening_keeps_everything(backend: Backend) {
    let (url, _db) = TestDb::new(backend);
    let a = key("alice", "math-101");
    let b = key("alice", "art-7");
    let (before_a, before_b, ledger_a, ledger_b) = {
        let store = Store::open(&url).await.expect("open");
        run(
            &store,
            vec![
                enroll_request(&a, 1_000),
                request(&a, "k1", pay(400)),
                enroll_request(&b, 0),
                request(&b, "k1", charge(70, "lab fee")),
            ],
            1,
        )
        .await;
        run(&store, vec![request(&a, "k2", pay(600))], 2).await;
        (
            store.enrollment(&a).await.expect("read"),
            store.enrollment(&b).await.expect("read"),
            whole_ledger(&store, &a).await,
            whole_ledger(&store, &b).await,
        )
    };

    let store = Store::open(&url).await.expect("reopen");
    assert!(before_a.is_some() && before_b.is_some());
    assert_eq!(store.enrollment(&a).await.expect("read"), before_a);
    assert_eq!(store.enrollment(&b).await.expect("read"), before_b);
    assert_eq!(whole_ledger(&store, &a).await, ledger_a);
    assert_eq!(whole_ledger(&store, &b).await, ledger_b);
    assert_eq!(
        store
            .enrollments_of(&UserId::parse("alice").expect("id"))
            .await
            .expect("list")
            .len(),
        2
    );
    assert_audit(&store, 2, 5).await;
    store.ping().await.expect("ping");

    let next = run_one(&store, request(&b, "k2", pay(70)), 3).await;
    let next = accepted(&next);
    assert_eq!(next.seq, 3);
    assert_eq!(
        Some(next.prev_hash),
        ledger_b.last().map(|entry| entry.hash)
    );
    drop(store);

    // A third open of an up-to-date database migrates nothing and loses nothing.
    let store = Store::open(&url).await.expect("reopen again");
    assert_eq!(whole_ledger(&store, &b).await.len(), 3);
    assert_audit(&store, 2, 6).await;
}

/// An accepted key replays its original entry after the store is reopened,
/// and the same key with another request is still refused.
async fn idempotency_survives_reopening(backend: Backend) {
    let (url, _db) = TestDb::new(backend);
    let a = key("alice", "math-101");
    let original = {
        let store = Store::open(&url).await.expect("open");
        run_one(&store, enroll_request(&a, 1_000), 1).await;
        let outcome = run_one(&store, request(&a, "order-42", pay(250)), 2).await;
        accepted(&outcome).clone()
    };

    let store = Store::open(&url).await.expect("reopen");
    let before = store.enrollment(&a).await.expect("read");
    let outcomes = run(
        &store,
        vec![
            request(&a, "order-42", pay(250)),
            request(&a, "order-42", pay(251)),
            request(&a, "order-42", charge(250, "fee")),
        ],
        3,
    )
    .await;
    assert_eq!(replayed(&outcomes[0]), &original);
    assert_eq!(rejected(&outcomes[1]), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(rejected(&outcomes[2]), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(store.enrollment(&a).await.expect("read"), before);
    assert_eq!(whole_ledger(&store, &a).await.len(), 2);
}

/// `ledger(key, after, limit)` gives at most `limit` entries with
/// `seq > after`, oldest first, and never more than a page.
async fn ledger_pages(backend: Backend) {
    let total = LEDGER_PAGE_ENTRIES_MAX as u64 + 105;
    let (store, _url, _db) = fresh_store(backend).await;
    let a = key("alice", "math-101");
    let mut requests = vec![enroll_request(&a, 1_000_000)];
    requests.extend((1..total).map(|index| request(&a, &format!("p{index}"), pay(1))));
    run(&store, requests, 1).await;

    let first = store.ledger(&a, 0, u32::MAX).await.expect("ledger");
    assert_eq!(first.len(), LEDGER_PAGE_ENTRIES_MAX as usize, "capped");
    let rest = store
        .ledger(
            &a,
            u64::from(LEDGER_PAGE_ENTRIES_MAX),
            LEDGER_PAGE_ENTRIES_MAX,
        )
        .await
        .expect("ledger");
    assert_eq!(rest.len(), 105);
    let seqs: Vec<u64> = first.iter().chain(&rest).map(|entry| entry.seq).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());

    let mut walked = Vec::new();
    loop {
        let after = walked.last().map_or(0, |entry: &LedgerEntry| entry.seq);
        let page = store.ledger(&a, after, 97).await.expect("ledger");
        assert!(page.len() <= 97);
        if page.is_empty() {
            break;
        }
        walked.extend(page);
    }
    assert_eq!(walked.len() as u64, total);
    assert_eq!(walked[..first.len()], first[..]);

    let window = store.ledger(&a, 10, 3).await.expect("ledger");
    assert_eq!(
        window.iter().map(|entry| entry.seq).collect::<Vec<_>>(),
        [11, 12, 13]
    );
    assert!(store.ledger(&a, 5, 0).await.expect("ledger").is_empty());
    assert!(
        store
            .ledger(&a, total, 10)
            .await
            .expect("ledger")
            .is_empty()
    );
    assert!(
        store
            .ledger(&a, u64::MAX, 10)
            .await
            .expect("ledger")
            .is_empty()
    );
    let nobody = key("nobody", "math-101");
    assert!(
        store
            .ledger(&nobody, 0, 10)
            .await
            .expect("ledger")
            .is_empty()
    );
}

/// `enrollments_of` lists one user's enrollments by course id, and only
/// theirs; unknown users and enrollments read as nothing.
async fn enrollments_of_lists_by_course(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    run(
        &store,
        vec![
            enroll_request(&key("alice", "physics-2"), 100),
            enroll_request(&key("alice", "art-7"), 200),
            enroll_request(&key("bob", "biology-1"), 300),
            enroll_request(&key("alice", "math-101"), 0),
            enroll_request(&key("alicia", "art-7"), 400),
        ],
        1,
    )
    .await;
    let alice = store
        .enrollments_of(&UserId::parse("alice").expect("id"))
        .await
        .expect("list");
    let courses: Vec<&str> = alice.iter().map(|e| e.course_id.as_str()).collect();
    assert_eq!(courses, ["art-7", "math-101", "physics-2"]);
    assert!(alice.iter().all(|e| e.user_id.as_str() == "alice"));
    assert_eq!(alice[0].price, 200);
    assert_eq!(
        store
            .enrollment(&key("alice", "art-7"))
            .await
            .expect("read"),
        Some(alice[0].clone())
    );
    let nobody = UserId::parse("nobody").expect("id");
    assert!(
        store
            .enrollments_of(&nobody)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .enrollment(&key("alice", "chemistry"))
            .await
            .expect("read"),
        None
    );
}

/// A new store audits clean with nothing in it; afterwards the counts follow
/// the enrollments and entries written.
async fn audit_of_a_clean_store(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    assert_audit(&store, 0, 0).await;
    let a = key("alice", "math-101");
    let b = key("bob", "math-101");
    run(
        &store,
        vec![
            enroll_request(&a, 1_000),
            request(&a, "k1", pay(1_000)),
            request(&a, "k2", Command::Complete),
            request(&b, "k1", pay(1)),
            enroll_request(&b, 0),
            request(&b, "k2", Command::Cancel),
        ],
        1,
    )
    .await;
    assert_audit(&store, 2, 5).await;
}

/// Payments after the enrolment in the long ledger of
/// `a_long_ledger_audits_in_full`: twenty pages of the PostgreSQL audit.
const LONG_LEDGER_PAYMENTS: i64 = 20_000;

/// Writes alice's enrollment followed by `payments` payments of one minor
/// unit, in batches of a thousand, and on either side of it in key order an
/// enrollment of one entry (aaron's) and one of two (bob's).
async fn write_long_ledger(store: &Store, payments: i64) -> EnrollmentKey {
    let long = key("alice", "math-101");
    let after = key("bob", "math-101");
    run(
        store,
        vec![
            enroll_request(&key("aaron", "math-101"), 100),
            enroll_request(&long, 1_000_000),
            enroll_request(&after, 100),
            request(&after, "k1", pay(1)),
        ],
        1,
    )
    .await;
    for batch in 0..payments / 1_000 {
        let requests = (0..1_000)
            .map(|index| request(&long, &format!("p{batch}-{index}"), pay(1)))
            .collect();
        for outcome in run(store, requests, 2 + batch).await {
            accepted(&outcome);
        }
    }
    long
}

/// A ledger of twenty thousand entries is audited entry by entry, every one
/// of them counted, along with the short ones around it.
async fn a_long_ledger_audits_in_full(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    let long = write_long_ledger(&store, LONG_LEDGER_PAYMENTS).await;
    assert_eq!(paid(&store, &long).await, LONG_LEDGER_PAYMENTS);
    assert_audit(&store, 3, 1 + (1 + LONG_LEDGER_PAYMENTS as u64) + 2).await;
}

/// Tampering deep inside a long ledger is named at the entry touched; a row
/// that cannot be read is named too, and the cascade it sets off is cut
/// short at the listing limit with a count of the rest.
async fn tampering_deep_in_a_long_ledger_is_found(backend: Backend) {
    let (store, _url, db) = fresh_store(backend).await;
    // Long enough to overflow the listing limit, short enough to be quick.
    let payments = 5_000;
    write_long_ledger(&store, payments).await;
    let alice = "user_id = 'alice' AND course_id = 'math-101'";
    db.execute_sql(&format!(
        "UPDATE ledger SET amount = amount + 1 WHERE {alice} AND seq = 4000"
    ));
    let report = store.audit().await.expect("audit");
    assert!(!report.ok, "{report:?}");
    assert_eq!(
        (report.enrollments, report.entries),
        (3, 1 + (1 + payments as u64) + 2)
    );
    assert_eq!(report.disagreements.len(), 2, "{report:?}");
    for disagreement in &report.disagreements {
        assert_eq!(
            (
                disagreement.user_id.as_str(),
                disagreement.course_id.as_str(),
                disagreement.seq
            ),
            ("alice", "math-101", Some(4_000)),
            "{report:?}"
        );
    }
    assert!(
        report.disagreements[0].problem.starts_with("hash mismatch"),
        "{report:?}"
    );

    // An unreadable row: every entry after it is out of sequence.
    // Both backends keep the snapshot in columns: statuses 127 name no
    // enrollment status (and on SQLite a text is no integer at all).
    db.execute_sql(&match backend {
        Backend::Sqlite => {
            format!("UPDATE ledger SET statuses = 'not a status' WHERE {alice} AND seq = 3000")
        }
        Backend::Postgres => {
            format!("UPDATE ledger SET statuses = 127 WHERE {alice} AND seq = 3000")
        }
    });
    let report = store.audit().await.expect("audit");
    assert!(!report.ok);
    assert_eq!(
        (report.enrollments, report.entries),
        (3, 1 + payments as u64 + 2),
        "the unreadable row is not counted"
    );
    let found = &report.disagreements;
    assert_eq!(found.len(), DISAGREEMENTS_PER_ENROLLMENT_MAX + 1);
    assert!(
        found
            .iter()
            .all(|d| (d.user_id.as_str(), d.course_id.as_str()) == ("alice", "math-101")),
        "the enrollments around it are sound"
    );
    assert_eq!(found[0].seq, Some(3_001));
    assert_eq!(
        found[0].problem,
        "sequence gap: expected seq 3000, found 3001"
    );
    assert!(
        found.iter().any(|d| d
            .problem
            .starts_with("ledger entry alice/math-101 seq 3000: bad snapshot")),
        "the unreadable row is named"
    );
    // At 3001 a gap, a broken link and a replay that differs; a gap at each
    // of the 2,000 entries after it; at 4000 the two found before; and the
    // unreadable row.
    let total = 3 + 2_000 + 2 + 1;
    assert_eq!(
        found[DISAGREEMENTS_PER_ENROLLMENT_MAX].problem,
        format!(
            "{} more disagreements are not listed: at most 1000 are listed per enrollment",
            total - DISAGREEMENTS_PER_ENROLLMENT_MAX
        )
    );
}

/// Charges are accepted up to the enrollment total of 10^15 minor units and
/// refused beyond it, changing nothing.
async fn charges_stop_at_the_total_limit(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    let a = key("alice", "math-101");
    let charges = ENROLLMENT_TOTAL_MAX / OPERATION_AMOUNT_MAX - 1;
    let mut requests = vec![enroll_request(&a, OPERATION_AMOUNT_MAX)];
    requests.extend((0..charges).map(|index| {
        request(
            &a,
            &format!("c{index}"),
            charge(OPERATION_AMOUNT_MAX, "fee"),
        )
    }));
    for outcome in run(&store, requests, 1).await {
        accepted(&outcome);
    }
    let full = store.enrollment(&a).await.expect("read").expect("enrolled");
    assert_eq!(full.price + full.amount_charged, ENROLLMENT_TOTAL_MAX);
    assert_eq!(full.amount_due, ENROLLMENT_TOTAL_MAX);
    let outcome = run_one(&store, request(&a, "one-more", charge(1, "fee")), 2).await;
    assert_eq!(rejected(&outcome), "TOTAL_LIMIT_EXCEEDED");
    assert_eq!(store.enrollment(&a).await.expect("read"), Some(full));
    // The refused key stored nothing: a valid request may use it now.
    let outcome = run_one(&store, request(&a, "one-more", pay(1)), 3).await;
    assert_eq!(accepted(&outcome).amount, 1);
    assert_audit(&store, 1, charges as u64 + 2).await;
}

/// Refunds only ever grow their sum, so it is bounded like every other
/// total: pay-and-refund cycles are accepted up to 10^15 minor units refunded
/// and refused beyond, changing nothing.
async fn refunds_stop_at_the_total_limit(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    let a = key("alice", "math-101");
    let cycles = ENROLLMENT_TOTAL_MAX / OPERATION_AMOUNT_MAX;
    let mut requests = vec![enroll_request(&a, OPERATION_AMOUNT_MAX)];
    for cycle in 0..=cycles {
        requests.push(request(&a, &format!("p{cycle}"), pay(OPERATION_AMOUNT_MAX)));
        if cycle < cycles {
            requests.push(request(
                &a,
                &format!("r{cycle}"),
                refund(OPERATION_AMOUNT_MAX, "returned"),
            ));
        }
    }
    for outcome in run(&store, requests, 1).await {
        accepted(&outcome);
    }
    let full = store.enrollment(&a).await.expect("read").expect("enrolled");
    assert_eq!(full.amount_refunded, ENROLLMENT_TOTAL_MAX);
    assert_eq!(full.amount_paid, OPERATION_AMOUNT_MAX);
    let outcome = run_one(&store, request(&a, "one-more", refund(1, "returned")), 2).await;
    assert_eq!(rejected(&outcome), "TOTAL_LIMIT_EXCEEDED");
    assert_eq!(store.enrollment(&a).await.expect("read"), Some(full));
    assert_audit(&store, 1, 2 * cycles as u64 + 2).await;
}

/// Many tasks executing payments onto one enrollment at once: every
/// distinct key is applied exactly once, every retry of it replays, and the
/// amounts sum.
async fn concurrent_payments_sum_correctly(backend: Backend) {
    const PAYERS: i64 = 48;
    const RETRIED: i64 = 16;
    let (store, _url, _db) = fresh_store(backend).await;
    let a = key("alice", "math-101");
    run_one(&store, enroll_request(&a, 100_000), 0).await;
    let mut tasks = Vec::new();
    for index in (0..PAYERS).chain(0..RETRIED) {
        let (store, a) = (store.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let request = request(&a, &format!("pay-{index}"), pay(index + 1));
            let outcome = store
                .execute(vec![request], at(T0 + SECOND))
                .await
                .expect("execute")
                .remove(0);
            (index, outcome)
        }));
    }
    let mut entries: std::collections::HashMap<i64, Vec<(bool, LedgerEntry)>> =
        std::collections::HashMap::new();
    for task in tasks {
        let (index, outcome) = task.await.expect("task");
        let answer = match outcome {
            Outcome::Accepted(entry) => (true, entry),
            Outcome::Replayed(entry) => (false, entry),
            other => panic!("payment {index}: {other:?}"),
        };
        entries.entry(index).or_default().push(answer);
    }
    for (index, answers) in &entries {
        let applied = answers.iter().filter(|(accepted, _)| *accepted).count();
        assert_eq!(applied, 1, "key pay-{index} applied {applied} times");
        assert!(answers.iter().all(|(_, entry)| *entry == answers[0].1));
        assert_eq!(answers[0].1.amount, index + 1);
    }
    let sum: i64 = (1..=PAYERS).sum();
    let alice = store.enrollment(&a).await.expect("read").expect("enrolled");
    assert_eq!(alice.amount_paid, sum);
    assert_eq!(alice.amount_due, 100_000 - sum);
    assert_eq!(alice.version, PAYERS as u64 + 1);
    assert_eq!(whole_ledger(&store, &a).await.len() as i64, PAYERS + 1);
    assert_audit(&store, 1, PAYERS as u64 + 1).await;
}

/// "Pay the remaining balance" from many tabs at once pays once; every other
/// tab is told nothing is due.
async fn concurrent_pay_remaining_pays_once(backend: Backend) {
    const TABS: usize = 24;
    let (store, _url, _db) = fresh_store(backend).await;
    let a = key("alice", "math-101");
    run(
        &store,
        vec![
            enroll_request(&a, 5_000),
            request(&a, "deposit", pay(1_200)),
        ],
        0,
    )
    .await;
    let tasks: Vec<_> = (0..TABS)
        .map(|tab| {
            let (store, a) = (store.clone(), a.clone());
            tokio::spawn(async move {
                let request = request(
                    &a,
                    &format!("tab-{tab}"),
                    Command::PayRemaining { reference: None },
                );
                store
                    .execute(vec![request], at(T0 + SECOND))
                    .await
                    .expect("execute")
                    .remove(0)
            })
        })
        .collect();
    let mut payments = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Outcome::Accepted(entry) => payments.push(entry.amount),
            Outcome::Rejected(rejection) => assert_eq!(rejection.code(), "NOTHING_DUE"),
            other => panic!("pay remaining: {other:?}"),
        }
    }
    assert_eq!(payments, [3_800]);
    let alice = store.enrollment(&a).await.expect("read").expect("enrolled");
    assert_eq!((alice.amount_paid, alice.amount_due), (5_000, 0));
    assert_eq!(alice.status, EnrollmentStatus::Active);
}

/// Two stores opened at once on one database (as two servers would be)
/// migrate it once, see each other's writes, and apply each key once however
/// the payments and their retries are spread over them.
async fn two_stores_share_one_database(backend: Backend) {
    const PAYERS: i64 = 30;
    let (url, _db) = TestDb::new(backend);
    let (first, second) = tokio::join!(Store::open(&url), Store::open(&url));
    let stores = [first.expect("open"), second.expect("open")];
    let a = key("alice", "math-101");
    run_one(&stores[0], enroll_request(&a, 100_000), 0).await;
    let mut tasks = Vec::new();
    for attempt in 0..2 {
        for index in 0..PAYERS {
            let store = stores[((index + attempt) % 2) as usize].clone();
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let request = request(&a, &format!("pay-{index}"), pay(index + 1));
                store
                    .execute(vec![request], at(T0 + SECOND))
                    .await
                    .expect("execute")
                    .remove(0)
            }));
        }
    }
    let mut applied = 0;
    for task in tasks {
        match task.await.expect("task") {
            Outcome::Accepted(_) => applied += 1,
            Outcome::Replayed(_) => {}
            other => panic!("payment: {other:?}"),
        }
    }
    assert_eq!(applied, PAYERS);
    let sum: i64 = (1..=PAYERS).sum();
    for store in &stores {
        let alice = store.enrollment(&a).await.expect("read").expect("enrolled");
        assert_eq!((alice.amount_paid, alice.version), (sum, PAYERS as u64 + 1));
        assert_audit(store, 1, PAYERS as u64 + 1).await;
    }
}
