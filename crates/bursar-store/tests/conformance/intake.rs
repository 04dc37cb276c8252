//! The payment intake's storage on every backend: a refused event becomes
//! one exception however often it comes, takes a position in the one event
//! order between the ledger's, is retried and resolved or dismissed; an
//! accepted payment keeps its processor's event on the entry (and through a
//! reopen) and links its objects to the enrollment.

use crate::conformance;
use crate::helpers::{Backend, SECOND, T0, at, enroll_request, fresh_store, key, refund};
use bursar_core::{
    Amount, Command, Currency, EventData, EventType, ExceptionState, Outcome, Reference, Request,
    Source,
};
use bursar_store::{
    Dismissal, EventQuery, ExceptionQuery, IntakeAction, IntakeMode, IntakeOperation,
    IntakeOutcome, IntakeWrite, Store,
};

conformance!(
    a_refused_event_is_one_exception_on_the_feed_until_it_resolves,
    an_accepted_event_keeps_its_source_and_links_its_objects,
    a_dismissed_exception_applies_nothing_again,
);

fn payment(amount: i64, pi: &str) -> Command {
    Command::Payment {
        amount: Amount::new(i128::from(amount)).unwrap(),
        currency: Some(Currency::parse("USD").unwrap()),
        reference: Some(Reference::parse(pi).unwrap()),
    }
}

fn write(event_id: &str, mode: IntakeMode, operations: Vec<Request>) -> IntakeWrite {
    let enrollment = operations.first().map(|request| request.key.clone());
    IntakeWrite {
        source: Source::new("stripe", event_id, "payment_intent.succeeded").unwrap(),
        event: format!(r#"{{"id":"{event_id}","type":"payment_intent.succeeded"}}"#),
        received_at: at(T0),
        mode,
        enrollment,
        links: vec!["pi_1".into(), "ch_1".into()],
        action: IntakeAction::Apply(
            operations
                .into_iter()
                .map(|request| IntakeOperation {
                    request,
                    hold_gone: bursar_core::HoldGone::Refuse,
                })
                .collect(),
        ),
    }
}

fn pay_pi(amount: i64) -> Request {
    Request {
        key: key("u1", "c1"),
        idempotency_key: Some(bursar_core::IdempotencyKey::parse("stripe:pi:pi_1").unwrap()),
        command: payment(amount, "pi_1"),
    }
}

async fn intake(store: &Store, writes: Vec<IntakeWrite>, now: i64) -> Vec<IntakeOutcome> {
    store
        .execute_with_intake(Vec::new(), writes, at(now))
        .await
        .expect("intake batch")
        .1
}

async fn feed(store: &Store) -> Vec<bursar_core::Event> {
    store
        .events(EventQuery {
            after: 0,
            limit: 1000,
            types: Vec::new(),
        })
        .await
        .expect("feed")
        .events
}

async fn a_refused_event_is_one_exception_on_the_feed_until_it_resolves(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    // No enrollment yet: the payment is refused, three times in one batch
    // and once more in the next, and makes one exception.
    let outcomes = intake(
        &store,
        vec![
            write("evt_1", IntakeMode::Deliver, vec![pay_pi(500)]),
            write("evt_1", IntakeMode::Deliver, vec![pay_pi(500)]),
            write("evt_1", IntakeMode::Deliver, vec![pay_pi(500)]),
        ],
        T0,
    )
    .await;
    let IntakeOutcome::Exception(exception) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(outcomes, vec![outcomes[0].clone(); 3]);
    assert_eq!(exception.code, "ENROLLMENT_NOT_FOUND");
    assert_eq!(exception.state, ExceptionState::Open);
    assert_eq!(exception.attempts, 1);
    assert_eq!(exception.position, 1);
    assert_eq!(exception.next_retry_at, Some(at(T0 + 5 * SECOND)));
    assert_eq!(exception.event["id"], "evt_1");
    // Entries go on after it; the feed merges the two by position.
    store
        .execute(
            vec![enroll_request(&key("u1", "c1"), 1_000)],
            at(T0 + SECOND),
        )
        .await
        .expect("enroll");
    let events = feed(&store).await;
    let types: Vec<EventType> = events.iter().map(|event| event.event_type).collect();
    assert_eq!(
        types,
        [EventType::IntakeException, EventType::EnrollmentCreated]
    );
    assert_eq!(events[0].position, 1);
    assert_eq!(events[1].position, 2);
    assert_eq!(events[0].user_id, Some(key("u1", "c1").user_id));
    assert_eq!(store.event_head().await.expect("head"), 3);
    let filtered = store
        .events(EventQuery {
            after: 0,
            limit: 10,
            types: vec![EventType::IntakeException],
        })
        .await
        .expect("filtered feed");
    assert_eq!(filtered.events.len(), 1);
    // Due for a retry five seconds after it came.
    assert!(
        store
            .due_exceptions(at(T0 + 4 * SECOND))
            .await
            .unwrap()
            .is_empty()
    );
    let due = store.due_exceptions(at(T0 + 5 * SECOND)).await.unwrap();
    assert_eq!(due.len(), 1);
    // A second refused event, in a batch with an entry, takes the position
    // after the entry's events.
    let refused = Request {
        key: key("u1", "c1"),
        idempotency_key: Some(bursar_core::IdempotencyKey::parse("stripe:re:re_1").unwrap()),
        command: refund(100, "stripe refund"),
    };
    let (plain, outcomes) = store
        .execute_with_intake(
            vec![crate::helpers::request(
                &key("u1", "c2"),
                "x",
                crate::helpers::pay(1),
            )],
            vec![write("evt_2", IntakeMode::Deliver, vec![refused])],
            at(T0 + 2 * SECOND),
        )
        .await
        .expect("batch");
    assert!(matches!(plain[0], Outcome::Rejected(_)));
    let IntakeOutcome::Exception(second) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(second.code, "REFUND_EXCEEDS_PAID");
    assert_eq!(second.position, 3);
    // The retry is accepted now: the exception resolves, the payment
    // carries its event.
    let outcomes = intake(
        &store,
        vec![write("evt_1", IntakeMode::Retry, vec![pay_pi(500)])],
        T0 + 6 * SECOND,
    )
    .await;
    let IntakeOutcome::Applied(applied) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    let Outcome::Accepted(entry) = &applied[0] else {
        panic!("{applied:?}");
    };
    assert_eq!(entry.source.as_ref().unwrap().event_id, "evt_1");
    let resolved = store.exception(&exception.id).await.unwrap().unwrap();
    assert_eq!(resolved.state, ExceptionState::Resolved);
    assert_eq!(resolved.attempts, 2);
    assert_eq!(resolved.next_retry_at, None);
    assert!(
        store
            .due_exceptions(at(T0 + 100 * SECOND))
            .await
            .unwrap()
            .len()
            == 1
    );
    // Retrying a resolved one changes nothing.
    let outcomes = intake(
        &store,
        vec![write("evt_1", IntakeMode::Retry, vec![pay_pi(500)])],
        T0 + 7 * SECOND,
    )
    .await;
    assert!(
        matches!(outcomes[0], IntakeOutcome::Closed(_)),
        "{outcomes:?}"
    );
    let listed = store
        .exceptions(ExceptionQuery {
            state: Some(ExceptionState::Open),
            after: 0,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, second.id);
    let all = store
        .exceptions(ExceptionQuery {
            state: None,
            after: 0,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    // The feed shows each exception as it stands now, at its position.
    let events = feed(&store).await;
    let positions: Vec<u64> = events.iter().map(|event| event.position).collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>());
    let EventData::Exception { exception: shown } = &events[0].data else {
        panic!("{:?}", events[0]);
    };
    assert_eq!(shown.state, ExceptionState::Resolved);
    store
        .audit()
        .await
        .map(|report| assert!(report.ok, "{report:?}"))
        .unwrap();
}

async fn an_accepted_event_keeps_its_source_and_links_its_objects(backend: Backend) {
    let (store, url, _db) = fresh_store(backend).await;
    store
        .execute(vec![enroll_request(&key("u1", "c1"), 1_000)], at(T0))
        .await
        .expect("enroll");
    assert_eq!(
        store.intake_link("stripe", &["pi_1".into()]).await.unwrap(),
        None
    );
    let outcomes = intake(
        &store,
        vec![write("evt_1", IntakeMode::Deliver, vec![pay_pi(400)])],
        T0 + SECOND,
    )
    .await;
    assert!(
        matches!(&outcomes[0], IntakeOutcome::Applied(applied) if matches!(applied[0], Outcome::Accepted(_)))
    );
    // A second event about the same PaymentIntent is a replay.
    let outcomes = intake(
        &store,
        vec![write("evt_2", IntakeMode::Deliver, vec![pay_pi(400)])],
        T0 + 2 * SECOND,
    )
    .await;
    assert!(
        matches!(&outcomes[0], IntakeOutcome::Applied(applied) if matches!(applied[0], Outcome::Replayed(_)))
    );
    for object in ["pi_1", "ch_1"] {
        assert_eq!(
            store
                .intake_link("stripe", &["nothing".into(), object.into()])
                .await
                .unwrap(),
            Some(key("u1", "c1"))
        );
    }
    drop(store);
    let store = Store::open(&url).await.expect("reopen");
    let ledger = store.ledger(&key("u1", "c1"), 0, 10).await.unwrap();
    assert_eq!(ledger.len(), 2);
    let source = ledger[1].source.as_ref().expect("the payment's source");
    assert_eq!(
        (source.processor.as_str(), source.event_id.as_str()),
        ("stripe", "evt_1")
    );
    assert_eq!(ledger[0].source, None);
    let events = feed(&store).await;
    let EventData::Entry { entry, .. } = &events[1].data else {
        panic!("{:?}", events[1]);
    };
    assert_eq!(entry.source, ledger[1].source);
    let report = store.audit().await.unwrap();
    assert!(report.ok, "{report:?}");
}

async fn a_dismissed_exception_applies_nothing_again(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    let unmatched = IntakeWrite {
        action: IntakeAction::Refuse {
            code: "PAYMENT_NOT_FOUND".into(),
            message: "no payment".into(),
        },
        enrollment: None,
        ..write("evt_1", IntakeMode::Deliver, vec![])
    };
    let outcomes = intake(&store, vec![unmatched.clone()], T0).await;
    let IntakeOutcome::Exception(exception) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!(exception.user_id, None);
    assert_eq!(exception.position, 1);
    let events = feed(&store).await;
    assert_eq!(events[0].user_id, None);
    assert_eq!(events[0].seq, None);
    // A retry refused again counts an attempt and keeps its place.
    let outcomes = intake(
        &store,
        vec![IntakeWrite {
            mode: IntakeMode::Retry,
            ..unmatched.clone()
        }],
        T0 + 10 * SECOND,
    )
    .await;
    let IntakeOutcome::Exception(again) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert_eq!((again.attempts, again.position), (2, 1));
    assert_eq!(again.next_retry_at, Some(at(T0 + 70 * SECOND)));
    assert_eq!(store.event_head().await.unwrap(), 2);

    let dismissed = store
        .dismiss_exception(&exception.id, "paid by bank transfer", at(T0 + 20 * SECOND))
        .await
        .unwrap();
    let Dismissal::Dismissed(dismissed) = dismissed else {
        panic!("{dismissed:?}");
    };
    assert_eq!(dismissed.state, ExceptionState::Dismissed);
    assert_eq!(
        dismissed.dismiss_reason.as_deref(),
        Some("paid by bank transfer")
    );
    assert!(matches!(
        store
            .dismiss_exception(&exception.id, "again", at(T0 + 21 * SECOND))
            .await
            .unwrap(),
        Dismissal::NotOpen(_)
    ));
    assert_eq!(
        store
            .dismiss_exception("exc_nothing", "x", at(T0))
            .await
            .unwrap(),
        Dismissal::NotFound
    );
    // Delivered again, now that it would apply: nothing is applied.
    store
        .execute(vec![enroll_request(&key("u1", "c1"), 1_000)], at(T0))
        .await
        .expect("enroll");
    let outcomes = intake(
        &store,
        vec![write("evt_1", IntakeMode::Deliver, vec![pay_pi(400)])],
        T0 + 30 * SECOND,
    )
    .await;
    assert!(
        matches!(outcomes[0], IntakeOutcome::Closed(_)),
        "{outcomes:?}"
    );
    assert_eq!(
        store
            .enrollment(&key("u1", "c1"))
            .await
            .unwrap()
            .unwrap()
            .amount_paid,
        0
    );
    // A retry of an exception that never was is told so.
    let outcomes = intake(
        &store,
        vec![write("evt_9", IntakeMode::Retry, vec![pay_pi(400)])],
        T0 + 30 * SECOND,
    )
    .await;
    assert_eq!(outcomes, vec![IntakeOutcome::NotFound]);
}
