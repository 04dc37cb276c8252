//! `POST /v1/batch`: operations over many enrollments in one commit, one
//! result per operation, refusals not undoing the others, and the limit.

use crate::conformance;
use crate::helpers::{Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

conformance!(
    batch_answers_each_operation_in_order,
    batch_replays_across_batches_and_within_one,
    batch_over_the_limit_is_refused_whole
);

async fn post_batch(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let (status, _, text) = app
        .send(Method::POST, "/v1/batch", None, Some(&body.to_string()))
        .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn payment(user: &str, course: &str, key: &str, amount: i64) -> Value {
    json!({"user_id": user, "course_id": course, "kind": "payment", "idempotency_key": key, "body": {"amount": amount}})
}

async fn batch_answers_each_operation_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = post_batch(
        &app,
        json!({"operations": [
            {"user_id": "u1", "course_id": "c1", "kind": "enroll", "body": {"currency": "USD", "price": 1000}},
            {"user_id": "u2", "course_id": "c1", "kind": "enroll", "body": {"currency": "EUR", "price": 500}},
            payment("u1", "c1", "p1", 400),
            payment("u1", "c1", "p2", 700),
            {"user_id": "u2", "course_id": "c1", "kind": "credit", "idempotency_key": "cr", "body": {"amount": 500, "reason": "bursary"}},
            {"user_id": "u1", "course_id": "c1", "kind": "pay_remaining", "idempotency_key": "rest"},
            {"user_id": "u1", "course_id": "c1", "kind": "payment", "body": {"amount": 1}},
            {"user_id": "bad id", "course_id": "c1", "kind": "payment", "idempotency_key": "x", "body": {"amount": 1}},
            {"user_id": "u1", "course_id": "c1", "kind": "payment", "idempotency_key": "f", "body": {"amount": 1.5}},
            {"user_id": "u3", "course_id": "c1", "kind": "payment", "idempotency_key": "nf", "body": {"amount": 1}},
            {"user_id": "u2", "course_id": "c1", "kind": "complete", "idempotency_key": "done"},
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|result| result["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec![201, 201, 201, 422, 201, 201, 400, 400, 400, 404, 201]
    );
    assert_eq!(results[3]["body"]["error"]["code"], "OVERPAYMENT");
    assert_eq!(
        results[5]["body"]["entry"]["amount"], 600,
        "pay_remaining pays what is due after p1"
    );
    assert_eq!(results[9]["body"]["error"]["code"], "ENROLLMENT_NOT_FOUND");
    assert_eq!(results[10]["body"]["enrollment"]["status"], "COMPLETED");
    let u1 = app.enrollment("u1", "c1").await;
    assert_eq!(u1["amount_paid"], 1000);
    assert_eq!(u1["payment_status"], "COMPLETED");
    assert_eq!(
        app.ledger("u1", "c1").await.len(),
        3,
        "enroll, p1, rest: the refused p2 stored nothing"
    );
    app.assert_audit_clean().await;
}

async fn batch_replays_across_batches_and_within_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let operations = json!({"operations": [payment("u1", "c1", "k", 100), payment("u1", "c1", "k", 100), payment("u1", "c1", "k", 200)]});
    let (status, first) = post_batch(&app, operations.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let results = first["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 201);
    assert!(results[0].get("replayed").is_none());
    assert_eq!(results[1]["replayed"], true);
    assert_eq!(results[1]["body"], results[0]["body"]);
    assert_eq!(
        results[2]["body"]["error"]["code"],
        "IDEMPOTENCY_KEY_REUSED"
    );
    let (_, again) = post_batch(&app, operations).await;
    assert_eq!(again["results"][0]["replayed"], true);
    assert_eq!(again["results"][0]["body"], results[0]["body"]);
    let (status, single, _) = app
        .send(
            Method::POST,
            "/v1/users/u1/courses/c1/payments",
            Some("k"),
            Some(r#"{"amount":100}"#),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the single route replays a key first used in a batch"
    );
    assert_eq!(single.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.enrollment("u1", "c1").await["amount_paid"], 100);
    let (_, summary) = post_batch(&app, json!({"detail": "summary", "operations": [payment("u1", "c1", "k", 100), payment("u1", "c1", "k2", 99_999)]})).await;
    assert_eq!(
        summary["results"][0],
        json!({"status": 201, "replayed": true, "seq": 2})
    );
    assert_eq!(
        summary["results"][1],
        json!({"status": 422, "code": "OVERPAYMENT"})
    );
}

async fn batch_over_the_limit_is_refused_whole(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 1_000_000).await;
    let operations: Vec<Value> = (0..8_193)
        .map(|index| payment("u1", "c1", &format!("k{index}"), 1))
        .collect();
    let (status, body) = post_batch(&app, json!({"operations": operations})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE");
    assert!(body["error"]["message"].as_str().unwrap().contains("8192"));
    let (status, body) = post_batch(&app, json!({"operations": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(app.enrollment("u1", "c1").await["amount_paid"], 0);
    let operations: Vec<Value> = (0..8_192)
        .map(|index| payment("u1", "c1", &format!("k{index}"), 1))
        .collect();
    let (status, body) =
        post_batch(&app, json!({"detail": "summary", "operations": operations})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|result| result["status"] == 201)
    );
    assert_eq!(app.enrollment("u1", "c1").await["amount_paid"], 8_192);
}
