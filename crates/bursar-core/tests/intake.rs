//! The core's part of the payment intake: an entry's `source` is inside its
//! hash (and absent from the canonical bytes of every other entry), the
//! audit's replay accepts it and notices it altered, and the planner's rules
//! for requests taken from a processor's event: a used key is a replay
//! whatever the second event says, and the capture of a hold that is gone is
//! recorded as a payment.

use bursar_core::{
    AccessPolicy, Amount, BatchInput, Command, CourseId, Currency, EnrollTerms, EnrollmentKey,
    EnrollmentState, Hash, HoldGone, HoldState, IdempotencyKey, IntakeRequest, Outcome, Price,
    Reference, Rejection, Request, Source, Timestamp, UserId, plan_batch, verify_chain,
};
use std::collections::HashMap;

const T0: i64 = 1_788_253_200_000_000;

fn at(offset_seconds: i64) -> Timestamp {
    Timestamp::from_unix_micros(T0 + offset_seconds * 1_000_000)
}

fn key() -> EnrollmentKey {
    EnrollmentKey {
        user_id: UserId::parse("student-1").unwrap(),
        course_id: CourseId::parse("course-101").unwrap(),
    }
}

fn request(idempotency_key: &str, command: Command) -> Request {
    Request {
        key: key(),
        idempotency_key: (!idempotency_key.is_empty())
            .then(|| IdempotencyKey::parse(idempotency_key).unwrap()),
        command,
    }
}

fn enroll(price: i64) -> Command {
    Command::Enroll(EnrollTerms {
        currency: Currency::parse("USD").unwrap(),
        price: Price::new(i128::from(price)).unwrap(),
        access_policy: AccessPolicy::FullPayment,
    })
}

fn payment(amount: i64, reference: &str) -> Command {
    Command::Payment {
        amount: Amount::new(i128::from(amount)).unwrap(),
        currency: Some(Currency::parse("USD").unwrap()),
        reference: Some(Reference::parse(reference).unwrap()),
    }
}

fn source(event_id: &str, event_type: &str) -> Source {
    Source::new("stripe", event_id, event_type).unwrap()
}

/// Plans `requests` on `state`, the ones at `intake` indexes as intake
/// requests, and returns the outcomes and the state after them.
fn plan(
    state: Option<EnrollmentState>,
    stored: Vec<(IdempotencyKey, bursar_core::StoredOperation)>,
    requests: &[Request],
    intake: Vec<(usize, IntakeRequest)>,
    now: Timestamp,
) -> (Vec<Outcome>, Option<EnrollmentState>) {
    let mut input = BatchInput::default();
    if let Some(state) = state {
        input.states.insert(key(), state);
    }
    for (idempotency_key, operation) in stored {
        input.stored.insert((key(), idempotency_key), operation);
    }
    input.intake = intake.into_iter().collect::<HashMap<_, _>>();
    let plan = plan_batch(input, requests, now);
    let state = plan.changed.into_iter().next();
    (plan.outcomes, state)
}

fn accepted(outcome: &Outcome) -> &bursar_core::LedgerEntry {
    match outcome {
        Outcome::Accepted(entry) => entry,
        other => panic!("expected an accepted outcome, got {other:?}"),
    }
}

#[test]
fn the_source_is_inside_the_hash_and_the_audit_replays_it() {
    let (outcomes, state) = plan(None, vec![], &[request("", enroll(10_000))], vec![], at(0));
    let enrolled = accepted(&outcomes[0]).clone();
    let intake = IntakeRequest {
        source: source("evt_1", "payment_intent.succeeded"),
        hold_gone: HoldGone::Refuse,
    };
    let (outcomes, _) = plan(
        state,
        vec![],
        &[request("stripe:pi:pi_1", payment(4_000, "pi_1"))],
        vec![(0, intake)],
        at(1),
    );
    let paid = accepted(&outcomes[0]).clone();
    assert_eq!(
        paid.source,
        Some(source("evt_1", "payment_intent.succeeded"))
    );
    assert_eq!(paid.prev_hash, enrolled.hash);
    assert_eq!(enrolled.source, None);

    // The canonical bytes name the source right after the hold fields (none
    // here), and only on the entry that has one.
    let canonical = format!(
        concat!(
            r#"{{"prev_hash":"{prev}","seq":2,"kind":"PAYMENT","amount":4000,"currency":"USD","#,
            r#""idempotency_key":"stripe:pi:pi_1","reference":"pi_1","reason":null,"#,
            r#""source":{{"processor":"stripe","event_id":"evt_1","event_type":"payment_intent.succeeded"}},"#,
            r#""created_at":"{t1}","enrollment":{enrollment}}}"#
        ),
        prev = enrolled.hash,
        t1 = at(1),
        enrollment = canonical_enrollment(&paid),
    );
    assert_eq!(paid.hash, Hash::of(canonical.as_bytes()));

    // The API shows `source`, `null` on the operations of the API.
    let json = serde_json::to_value(&enrolled).unwrap();
    assert_eq!(json["source"], serde_json::Value::Null);
    let json = serde_json::to_value(&paid).unwrap();
    assert_eq!(json["source"]["event_id"], "evt_1");
    let read: bursar_core::LedgerEntry = serde_json::from_value(json).unwrap();
    assert_eq!(read, paid);

    let ledger = vec![enrolled.clone(), paid.clone()];
    assert_eq!(
        verify_chain(&key(), &ledger, Some(&paid.enrollment)),
        vec![]
    );
    let mut tampered = ledger.clone();
    tampered[1].source = Some(source("evt_2", "payment_intent.succeeded"));
    let found = verify_chain(&key(), &tampered, Some(&paid.enrollment));
    assert!(
        found.iter().any(|d| d.problem.starts_with("hash mismatch")),
        "{found:?}"
    );
}

/// The enrollment part of an entry's canonical bytes, as the pinned test of
/// `tests/operations.rs` spells it (nothing held here).
fn canonical_enrollment(entry: &bursar_core::LedgerEntry) -> String {
    let text = serde_json::to_string(&entry.enrollment).unwrap();
    let held = text.find(r#","amount_held":"#).unwrap();
    let status = text.find(r#","payment_status":"#).unwrap();
    format!("{}{}", &text[..held], &text[status..])
}

#[test]
fn a_used_key_is_a_replay_for_the_intake_whatever_the_second_event_says() {
    let (outcomes, state) = plan(None, vec![], &[request("", enroll(10_000))], vec![], at(0));
    assert!(matches!(outcomes[0], Outcome::Accepted(_)));
    let checkout = IntakeRequest {
        source: source("evt_cs", "checkout.session.completed"),
        hold_gone: HoldGone::Refuse,
    };
    let succeeded = IntakeRequest {
        source: source("evt_pi", "payment_intent.succeeded"),
        hold_gone: HoldGone::Refuse,
    };
    // The two events of one PaymentIntent in one batch, the second with a
    // different amount: the second replays the first.
    let (outcomes, state) = plan(
        state,
        vec![],
        &[
            request("stripe:pi:pi_1", payment(4_000, "pi_1")),
            request("stripe:pi:pi_1", payment(4_001, "pi_1")),
        ],
        vec![(0, checkout), (1, succeeded.clone())],
        at(1),
    );
    let first = accepted(&outcomes[0]).clone();
    assert_eq!(outcomes[1], Outcome::Replayed(first.clone()));
    assert_eq!(state.as_ref().unwrap().enrollment.amount_paid, 4_000);
    // In a later batch, against the stored key.
    let stored = bursar_core::StoredOperation {
        fingerprint: payment(4_000, "pi_1").fingerprint(),
        entry: first.clone(),
    };
    let (outcomes, _) = plan(
        state.clone(),
        vec![(
            IdempotencyKey::parse("stripe:pi:pi_1").unwrap(),
            stored.clone(),
        )],
        &[request("stripe:pi:pi_1", payment(3_000, "pi_1"))],
        vec![(0, succeeded)],
        at(2),
    );
    assert_eq!(outcomes[0], Outcome::Replayed(first));
    // Through the API the same key with another body is still refused.
    let (outcomes, _) = plan(
        state,
        vec![(IdempotencyKey::parse("stripe:pi:pi_1").unwrap(), stored)],
        &[request("stripe:pi:pi_1", payment(3_000, "pi_1"))],
        vec![],
        at(2),
    );
    assert_eq!(
        outcomes[0].clone(),
        Outcome::Rejected(Rejection::IdempotencyKeyReused("stripe:pi:pi_1".into()))
    );
}

#[test]
fn the_capture_of_a_hold_that_is_gone_is_recorded_as_a_payment() {
    let hold = Command::Hold {
        amount: bursar_core::HoldAmount::Amount(Amount::new(6_000).unwrap()),
        expires_in: bursar_core::HoldExpiry::default(),
        reference: None,
    };
    let (outcomes, state) = plan(
        None,
        vec![],
        &[
            request("", enroll(10_000)),
            request("hold", hold),
            request("void", Command::Void { hold_seq: 2 }),
        ],
        vec![],
        at(0),
    );
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Accepted(_)))
    );
    let mut state = state.unwrap();
    assert_eq!(state.holds[&2].state, HoldState::Voided);
    state
        .holds
        .retain(|_, hold| hold.is_open() || hold.seq == 2);
    let capture = Command::Capture {
        hold_seq: 2,
        amount: Some(Amount::new(6_000).unwrap()),
        reference: Some(Reference::parse("pi_9").unwrap()),
    };
    let intake = IntakeRequest {
        source: source("evt_9", "payment_intent.succeeded"),
        hold_gone: HoldGone::Instead(payment(6_000, "pi_9")),
    };
    let (outcomes, after) = plan(
        Some(state.clone()),
        vec![],
        &[request("stripe:pi:pi_9", capture.clone())],
        vec![(0, intake)],
        at(5),
    );
    let entry = accepted(&outcomes[0]);
    assert_eq!(entry.kind, bursar_core::EntryKind::Payment);
    assert_eq!(entry.amount, 6_000);
    assert_eq!(after.unwrap().enrollment.amount_paid, 6_000);
    // A void of the gone hold has nothing left to release.
    let intake = IntakeRequest {
        source: source("evt_10", "payment_intent.canceled"),
        hold_gone: HoldGone::Nothing,
    };
    let (outcomes, _) = plan(
        Some(state.clone()),
        vec![],
        &[request("stripe:void:pi_9", Command::Void { hold_seq: 2 })],
        vec![(0, intake)],
        at(5),
    );
    assert_eq!(outcomes[0], Outcome::Unchanged(state.enrollment.clone()));
    // Without the intake's fallback the capture is refused, as through the API.
    let (outcomes, _) = plan(
        Some(state),
        vec![],
        &[request("stripe:pi:pi_9", capture)],
        vec![],
        at(5),
    );
    assert!(matches!(
        outcomes[0],
        Outcome::Rejected(Rejection::HoldNotOpen { hold_seq: 2, .. })
    ));
}
