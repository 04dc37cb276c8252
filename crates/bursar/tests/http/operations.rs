//! Every operation over HTTP, with the statuses moving as the contract says.

use crate::conformance;
use crate::helpers::{Backend, TestApp, new_key};
use reqwest::StatusCode;
use serde_json::json;

conformance!(
    every_operation_moves_amounts_and_statuses,
    replay_returns_the_original_answer
);

async fn every_operation_moves_amounts_and_statuses(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let enrollment = app.enroll("u1", "c1", 10_000).await;
    assert_eq!(enrollment["payment_status"], "PENDING");
    assert_eq!(enrollment["access_status"], "LOCKED");
    assert_eq!(enrollment["status"], "PENDING_PAYMENT");
    let base = "/v1/users/u1/courses/c1";

    let (status, body) = app.pay("u1", "c1", &new_key(), 2_500).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["entry"]["kind"], "PAYMENT");
    assert_eq!(body["enrollment"]["amount_due"], 7_500);
    assert_eq!(body["enrollment"]["payment_status"], "PARTIAL");

    let (status, body) = app
        .post(
            &format!("{base}/credits"),
            &new_key(),
            json!({"amount": 1_000, "reason": "scholarship"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["enrollment"]["amount_due"], 6_500);

    let (status, body) = app
        .post(
            &format!("{base}/charges"),
            &new_key(),
            json!({"amount": 500, "reason": "late fee"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["enrollment"]["amount_due"], 7_000);

    let (status, body) = app
        .post(&format!("{base}/pay-remaining"), &new_key(), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["entry"]["amount"], 7_000);
    assert_eq!(body["enrollment"]["payment_status"], "COMPLETED");
    assert_eq!(body["enrollment"]["access_status"], "GRANTED");
    assert_eq!(body["enrollment"]["status"], "ACTIVE");

    let (status, body) = app
        .post(&format!("{base}/complete"), &new_key(), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["enrollment"]["status"], "COMPLETED");

    let (status, body) = app
        .post(
            &format!("{base}/refunds"),
            &new_key(),
            json!({"amount": 2_000, "reason": "goodwill"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["enrollment"]["amount_paid"], 7_500);
    assert_eq!(body["enrollment"]["amount_refunded"], 2_000);
    assert_eq!(body["enrollment"]["access_status"], "REVOKED");
    assert_eq!(body["enrollment"]["status"], "SUSPENDED");
    assert_eq!(body["enrollment"]["version"], 7);

    app.enroll("u1", "c2", 3_000).await;
    let (status, body) = app
        .post("/v1/users/u1/courses/c2/cancel", &new_key(), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["enrollment"]["status"], "CANCELLED");
    let (status, body) = app.pay("u1", "c2", &new_key(), 100).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "ENROLLMENT_CANCELLED");

    let (status, body) = app.get("/v1/users/u1/courses").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["enrollments"].as_array().map(Vec::len), Some(2));
    let ledger = app.ledger("u1", "c1").await;
    assert_eq!(ledger.len(), 7);
    for (index, entry) in ledger.iter().enumerate() {
        assert_eq!(entry["seq"], index as u64 + 1);
        if index > 0 {
            assert_eq!(entry["prev_hash"], ledger[index - 1]["hash"]);
        }
    }
    app.assert_audit_clean().await;
}

async fn replay_returns_the_original_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let path = "/v1/users/u1/courses/c1/payments";
    let first = app
        .send(
            reqwest::Method::POST,
            path,
            Some("k-1"),
            Some(r#"{"amount":2500}"#),
        )
        .await;
    let again = app
        .send(
            reqwest::Method::POST,
            path,
            Some("k-1"),
            Some(r#"{ "amount" : 2500 }"#),
        )
        .await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(again.0, StatusCode::CREATED);
    assert!(first.1.get("idempotent-replayed").is_none());
    assert_eq!(
        again
            .1
            .get("idempotent-replayed")
            .map(|value| value.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(
        first.2, again.2,
        "a replay answers the same body, byte for byte"
    );
    let (status, body) = app.pay("u1", "c1", "k-1", 2_600).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.enrollment("u1", "c1").await["amount_paid"], 2_500);
}
