//! Stripe events for the intake tests, built from Stripe's own example
//! objects (`fixtures/stripe/`, copied from Stripe's API description): a
//! test loads an object, sets what its scenario needs — ids, amounts,
//! metadata, `created` — keeps every other field as Stripe sends it, wraps
//! it in the event envelope, and signs the body as Stripe does. The signing
//! here is written from Stripe's description, not taken from the server.

#![allow(dead_code)]

use crate::helpers::TestApp;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub const SECRET: &str = "whsec_dGVzdCBzZWNyZXQgb2YgdGhlIGVuZHBvaW50";

/// One of Stripe's example objects, as Stripe publishes it.
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/http/fixtures/stripe")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).expect("read a Stripe fixture");
    serde_json::from_str(&text).expect("a Stripe fixture is JSON")
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Stripe's event envelope around `object`, with this id and type.
pub fn event(id: &str, event_type: &str, object: Value) -> Value {
    let mut event = fixture("event");
    event["id"] = id.into();
    event["type"] = event_type.into();
    event["created"] = now_unix().into();
    event["data"]["object"] = object;
    event
}

/// `{"bursar_user_id": user, "bursar_course_id": course}`, and the hold.
pub fn metadata(user: &str, course: &str, hold_seq: Option<u64>) -> Value {
    let mut metadata = json!({"bursar_user_id": user, "bursar_course_id": course});
    if let Some(hold_seq) = hold_seq {
        metadata["bursar_hold_seq"] = hold_seq.to_string().into();
    }
    metadata
}

/// A completed, paid Checkout Session of `amount` cents for its
/// PaymentIntent `pi`.
pub fn checkout_session(session: &str, pi: &str, amount: i64, metadata: Value) -> Value {
    let mut object = fixture("checkout.session");
    object["id"] = session.into();
    object["payment_intent"] = pi.into();
    object["amount_total"] = amount.into();
    object["amount_subtotal"] = amount.into();
    object["currency"] = "usd".into();
    object["payment_status"] = "paid".into();
    object["status"] = "complete".into();
    object["created"] = now_unix().into();
    object["metadata"] = metadata;
    object
}

/// A PaymentIntent `pi` that received `amount` cents, its Charge `charge`.
pub fn payment_intent(pi: &str, amount: i64, charge: &str, metadata: Value) -> Value {
    let mut object = fixture("payment_intent");
    object["id"] = pi.into();
    object["amount"] = amount.into();
    object["amount_received"] = amount.into();
    object["currency"] = "usd".into();
    object["status"] = "succeeded".into();
    object["latest_charge"] = charge.into();
    object["created"] = now_unix().into();
    object["metadata"] = metadata;
    object
}

/// A Refund `id` of `amount` cents of the PaymentIntent `pi`.
pub fn refund(id: &str, amount: i64, pi: &str, charge: &str, status: &str) -> Value {
    let mut object = fixture("refund");
    object["id"] = id.into();
    object["amount"] = amount.into();
    object["payment_intent"] = pi.into();
    object["charge"] = charge.into();
    object["currency"] = "usd".into();
    object["status"] = status.into();
    object["created"] = now_unix().into();
    object
}

/// A Charge `charge` of the PaymentIntent `pi`, of `amount` cents, with the
/// refunds listed (`amount_refunded` is Stripe's running total of them).
pub fn refunded_charge(charge: &str, pi: &str, amount: i64, refunds: &[(&str, i64)]) -> Value {
    let mut object = fixture("charge");
    object["id"] = charge.into();
    object["payment_intent"] = pi.into();
    object["amount"] = amount.into();
    object["amount_captured"] = amount.into();
    object["captured"] = true.into();
    object["currency"] = "usd".into();
    let total: i64 = refunds.iter().map(|(_, amount)| amount).sum();
    object["amount_refunded"] = total.into();
    object["refunded"] = (total == amount).into();
    object["refunds"]["data"] = refunds
        .iter()
        .map(|(id, amount)| refund(id, *amount, pi, charge, "succeeded"))
        .collect();
    object["refunds"]["url"] = format!("/v1/charges/{charge}/refunds").into();
    object
}

/// A Dispute `id` of `amount` cents of the Charge `charge`.
pub fn dispute(id: &str, amount: i64, pi: &str, charge: &str) -> Value {
    let mut object = fixture("dispute");
    object["id"] = id.into();
    object["amount"] = amount.into();
    object["payment_intent"] = pi.into();
    object["charge"] = charge.into();
    object["currency"] = "usd".into();
    object
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>`, as Stripe signs.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// POSTs `body` to the intake with this `Stripe-Signature` (none if
/// `None`) and no bearer token; returns the status and the JSON answer.
pub async fn post(app: &TestApp, body: &[u8], signature: Option<&str>) -> (StatusCode, Value) {
    post_to(
        app.client.clone(),
        app.url("/v1/intake/stripe"),
        body.to_vec(),
        signature.map(str::to_owned),
    )
    .await
}

/// `post` with owned arguments, for a spawned task.
pub async fn post_to(
    client: reqwest::Client,
    url: String,
    body: Vec<u8>,
    signature: Option<String>,
) -> (StatusCode, Value) {
    let mut request = client
        .post(url)
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    let response = request.send().await.expect("intake request");
    let status = response.status();
    let text = response.text().await.expect("intake body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Sends `event` signed now with `SECRET`, as Stripe does; asserts 200.
pub async fn deliver(app: &TestApp, event: &Value) -> Value {
    let body = serde_json::to_vec(event).expect("serialize");
    let (status, answer) = post(app, &body, Some(&signature(SECRET, now_unix(), &body))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "intake of {}: {answer}",
        event["type"]
    );
    assert_eq!(answer["received"], json!(true), "{answer}");
    answer
}
