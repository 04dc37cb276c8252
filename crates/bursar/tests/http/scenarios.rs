//! The seed scenarios over real HTTP: many clients, tabs and retries racing
//! on one enrollment, and the amounts still exactly what was acknowledged.

use crate::conformance;
use crate::helpers::{Backend, TestApp, new_key};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

conformance!(
    hundred_clients_paying_into_one_enrollment,
    one_key_sent_by_twenty_clients_is_applied_once,
    twenty_tabs_paying_the_remaining_balance_pay_once,
    payment_and_credit_racing_both_apply,
    pay_remaining_racing_a_payment_never_overpays
);

const CLIENTS: usize = 100;
const PAYMENTS_PER_CLIENT: usize = 10;
const PAYMENT_AMOUNT_MAX: u64 = 100;

/// A small deterministic generator (SplitMix64), so the amounts look random
/// but every run sends the same ones.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// What one POST answered: status, whether it was marked as a replay, and
/// the body text.
struct Answer {
    status: StatusCode,
    replayed: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// POSTs `body` with `key`, retrying with the same key while the write queue
/// answers 503, as a well-behaved client does.
async fn post(app: &TestApp, path: &str, key: &str, body: &Value) -> Answer {
    let body = body.to_string();
    loop {
        let (status, headers, text) = app.send(Method::POST, path, Some(key), Some(&body)).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let replayed = headers
            .get("idempotent-replayed")
            .map(|value| value.to_str().expect("ASCII header").to_owned());
        return Answer {
            status,
            replayed,
            body: text,
        };
    }
}

/// Checks the money invariant of an enrollment: what was paid and credited
/// plus what is still due is the price plus the charges.
fn assert_amounts_consistent(enrollment: &Value) {
    let field = |name: &str| enrollment[name].as_i64().expect(name);
    assert_eq!(
        field("amount_paid") + field("amount_credited") + field("amount_due"),
        field("price") + field("amount_charged"),
        "amounts disagree: {enrollment}"
    );
    for name in [
        "amount_paid",
        "amount_credited",
        "amount_due",
        "amount_refunded",
    ] {
        assert!(field(name) >= 0, "{name} is negative: {enrollment}");
    }
}

async fn hundred_clients_paying_into_one_enrollment(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let price = (CLIENTS * PAYMENTS_PER_CLIENT) as i64 * PAYMENT_AMOUNT_MAX as i64;
    app.enroll("u1", "c1", price).await;

    let mut tasks = Vec::with_capacity(CLIENTS);
    for client in 0..CLIENTS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut random = SplitMix64(0x5eed ^ client as u64);
            let mut acknowledged = Vec::with_capacity(PAYMENTS_PER_CLIENT);
            for payment in 0..PAYMENTS_PER_CLIENT {
                let amount = 1 + random.next() % PAYMENT_AMOUNT_MAX;
                let key = format!("client-{client}-payment-{payment}");
                let answer = post(
                    &app,
                    "/v1/users/u1/courses/c1/payments",
                    &key,
                    &json!({ "amount": amount }),
                )
                .await;
                assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
                assert!(answer.replayed.is_none(), "a fresh key is never a replay");
                let version = answer.json()["enrollment"]["version"]
                    .as_u64()
                    .expect("version");
                acknowledged.push((key, amount as i64, version));
            }
            acknowledged
        }));
    }
    let mut acknowledged = BTreeMap::new();
    let mut versions = BTreeSet::new();
    for task in tasks {
        for (key, amount, version) in task.await.expect("client task") {
            acknowledged.insert(key, amount);
            assert!(
                versions.insert(version),
                "two payments saw version {version}"
            );
        }
    }
    assert_eq!(acknowledged.len(), CLIENTS * PAYMENTS_PER_CLIENT);
    let paid: i64 = acknowledged.values().sum();

    let enrollment = app.enrollment("u1", "c1").await;
    assert_eq!(enrollment["amount_paid"], paid, "{enrollment}");
    assert_eq!(enrollment["amount_due"], price - paid, "{enrollment}");
    let operations = (CLIENTS * PAYMENTS_PER_CLIENT) as u64;
    assert_eq!(enrollment["version"], operations + 1, "{enrollment}");
    assert_amounts_consistent(&enrollment);
    // Every payment ran on its own version of the enrollment: 2 (after the
    // enrollment) through the last one, none skipped and none shared.
    assert_eq!(versions, (2..=operations + 1).collect::<BTreeSet<_>>());

    let ledger = app.ledger("u1", "c1").await;
    assert_eq!(ledger.len() as u64, operations + 1);
    let mut in_ledger = BTreeMap::new();
    for entry in ledger.iter().filter(|entry| entry["kind"] == "PAYMENT") {
        let key = entry["idempotency_key"].as_str().expect("key").to_owned();
        let amount = entry["amount"].as_i64().expect("amount");
        assert!(
            in_ledger.insert(key.clone(), amount).is_none(),
            "the ledger holds {key} twice"
        );
    }
    assert_eq!(in_ledger, acknowledged);
    app.assert_audit_clean().await;
}

async fn one_key_sent_by_twenty_clients_is_applied_once(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    app.enroll("u1", "c1", 10_000).await;
    let key = new_key();

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &app,
                "/v1/users/u1/courses/c1/payments",
                &key,
                &json!({"amount": 2_500, "reference": "ch_1"}),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("client task"));
    }

    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(
            answer.body, answers[0].body,
            "every answer carries the same body, byte for byte"
        );
    }
    // Whichever request won is the one answer not marked as a replay.
    let originals = answers
        .iter()
        .filter(|answer| answer.replayed.is_none())
        .count();
    let replays = answers
        .iter()
        .filter(|answer| answer.replayed.as_deref() == Some("true"))
        .count();
    assert_eq!((originals, replays), (1, 19));

    let enrollment = app.enrollment("u1", "c1").await;
    assert_eq!(enrollment["amount_paid"], 2_500);
    assert_eq!(enrollment["version"], 2);
    let ledger = app.ledger("u1", "c1").await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(
        ledger
            .iter()
            .filter(|entry| entry["idempotency_key"] == key.as_str())
            .count(),
        1
    );
    assert_eq!(answers[0].json()["entry"], ledger[1]);
    app.assert_audit_clean().await;
}

async fn twenty_tabs_paying_the_remaining_balance_pay_once(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    app.enroll("u1", "c1", 10_000).await;
    let (status, body) = app.pay("u1", "c1", &new_key(), 3_000).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &app,
                "/v1/users/u1/courses/c1/pay-remaining",
                &new_key(),
                &json!({}),
            )
            .await
        }));
    }
    let mut paid_once = 0;
    for task in tasks {
        let answer = task.await.expect("tab task");
        let body = answer.json();
        match answer.status {
            StatusCode::CREATED => {
                paid_once += 1;
                assert_eq!(body["entry"]["kind"], "PAYMENT");
                assert_eq!(body["entry"]["amount"], 7_000);
            }
            StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "NOTHING_DUE"),
            other => panic!("pay-remaining answered {other}: {body}"),
        }
    }
    assert_eq!(paid_once, 1, "exactly one tab pays");

    let enrollment = app.enrollment("u1", "c1").await;
    assert_eq!(enrollment["amount_paid"], 10_000);
    assert_eq!(enrollment["amount_due"], 0);
    assert_eq!(enrollment["payment_status"], "COMPLETED");
    assert_eq!(app.ledger("u1", "c1").await.len(), 3);
    app.assert_audit_clean().await;
}

async fn payment_and_credit_racing_both_apply(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let price = 10_000;
    for round in 0..20_i64 {
        let course = format!("race-{round}");
        app.enroll("u1", &course, price).await;
        // Both fit whichever goes first; their sum leaves `round` due.
        let payment = 1_000 + 300 * round;
        let credit = price - payment - round;
        let base = format!("/v1/users/u1/courses/{course}");
        let paying = {
            let app = app.clone();
            let path = format!("{base}/payments");
            tokio::spawn(async move {
                post(&app, &path, &new_key(), &json!({ "amount": payment })).await
            })
        };
        let crediting = {
            let app = app.clone();
            let path = format!("{base}/credits");
            tokio::spawn(async move {
                post(
                    &app,
                    &path,
                    &new_key(),
                    &json!({"amount": credit, "reason": "scholarship"}),
                )
                .await
            })
        };
        let paying = paying.await.expect("payment task");
        let crediting = crediting.await.expect("credit task");
        assert_eq!(paying.status, StatusCode::CREATED, "{}", paying.body);
        assert_eq!(crediting.status, StatusCode::CREATED, "{}", crediting.body);
        let versions: BTreeSet<u64> = [&paying, &crediting]
            .iter()
            .map(|answer| answer.json()["enrollment"]["version"].as_u64().expect("v"))
            .collect();
        assert_eq!(
            versions,
            BTreeSet::from([2, 3]),
            "the two were applied one after the other"
        );

        let enrollment = app.enrollment("u1", &course).await;
        assert_eq!(enrollment["amount_paid"], payment, "{enrollment}");
        assert_eq!(enrollment["amount_credited"], credit, "{enrollment}");
        assert_eq!(enrollment["amount_due"], round, "{enrollment}");
        assert_eq!(enrollment["version"], 3, "{enrollment}");
        assert_amounts_consistent(&enrollment);
        let settled = if round == 0 { "COMPLETED" } else { "PARTIAL" };
        assert_eq!(enrollment["payment_status"], settled, "{enrollment}");
    }
    app.assert_audit_clean().await;
}

async fn pay_remaining_racing_a_payment_never_overpays(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let price = 10_000;
    for round in 0..20 {
        let course = format!("race-{round}");
        app.enroll("u1", &course, price).await;
        let (status, body) = app.pay("u1", &course, &new_key(), 2_000).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let base = format!("/v1/users/u1/courses/{course}");
        let remaining = {
            let app = app.clone();
            let path = format!("{base}/pay-remaining");
            tokio::spawn(async move { post(&app, &path, &new_key(), &json!({})).await })
        };
        let paying = {
            let app = app.clone();
            let path = format!("{base}/payments");
            tokio::spawn(
                async move { post(&app, &path, &new_key(), &json!({"amount": 3_000})).await },
            )
        };
        let remaining = remaining.await.expect("pay-remaining task");
        let paying = paying.await.expect("payment task");

        // Pay-remaining always finds something due; the payment either went
        // first (and pay-remaining paid the rest) or found nothing left.
        assert_eq!(remaining.status, StatusCode::CREATED, "{}", remaining.body);
        let remaining_amount = remaining.json()["entry"]["amount"]
            .as_i64()
            .expect("amount");
        match paying.status {
            StatusCode::CREATED => assert_eq!(remaining_amount, 5_000),
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(paying.json()["error"]["code"], "OVERPAYMENT");
                assert_eq!(remaining_amount, 8_000);
            }
            other => panic!("the payment answered {other}: {}", paying.body),
        }

        let enrollment = app.enrollment("u1", &course).await;
        assert_eq!(enrollment["amount_paid"], price, "{enrollment}");
        assert_eq!(enrollment["amount_due"], 0, "{enrollment}");
        assert_amounts_consistent(&enrollment);
        let ledger_paid: i64 = app
            .ledger("u1", &course)
            .await
            .iter()
            .filter(|entry| entry["kind"] == "PAYMENT")
            .map(|entry| entry["amount"].as_i64().expect("amount"))
            .sum();
        assert_eq!(ledger_paid, price);
    }
    app.assert_audit_clean().await;
}
