//! Malformed and refused requests: each gets its exact status and error code,
//! never a 500, and none of them changes anything.

use crate::conformance;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};
use bursar_server::auth::Role;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

conformance!(malformed_requests_are_refused_and_change_nothing);

/// The enrollment every case aims at (unless it names another one).
const BASE: &str = "/v1/users/u1/courses/c1";

/// Which `Authorization` header a case sends.
#[derive(Clone, Copy)]
enum Auth {
    Admin,
    Reader,
    Writer,
    None,
    /// This exact header value.
    Raw(&'static str),
}

/// Which `Idempotency-Key` headers a case sends.
#[derive(Clone)]
enum Key {
    /// A fresh, valid key.
    Fresh,
    /// No header at all.
    Missing,
    /// One header with these exact bytes.
    Bytes(Vec<u8>),
    /// Two headers, both valid.
    Twice,
}

/// One malformed or refused request and the answer it must get.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    auth: Auth,
    key: Key,
    body: Option<Vec<u8>>,
    status: StatusCode,
    code: &'static str,
    /// Words the error message must contain, when the case pins them.
    says: Option<&'static str>,
}

impl Case {
    /// A POST to `BASE` + `route` with the admin token, a fresh key and `body`.
    fn post(name: &'static str, route: &str, body: impl Into<Vec<u8>>) -> Case {
        Case {
            name,
            method: Method::POST,
            path: format!("{BASE}{route}"),
            auth: Auth::Admin,
            key: Key::Fresh,
            body: Some(body.into()),
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_REQUEST",
            says: None,
        }
    }

    /// A payment of `body` to `BASE`.
    fn payment(name: &'static str, body: impl Into<Vec<u8>>) -> Case {
        Case::post(name, "/payments", body)
    }

    /// A PUT (enroll) of `body` to `path`.
    fn enroll(name: &'static str, path: &str, body: &str) -> Case {
        Case {
            method: Method::PUT,
            path: path.to_owned(),
            key: Key::Missing,
            ..Case::post(name, "", body)
        }
    }

    /// A GET of `path` with the admin token.
    fn get(name: &'static str, path: &str) -> Case {
        Case {
            method: Method::GET,
            path: path.to_owned(),
            key: Key::Missing,
            body: None,
            ..Case::post(name, "", "")
        }
    }

    fn answers(self, status: StatusCode, code: &'static str) -> Case {
        Case {
            status,
            code,
            ..self
        }
    }

    fn says(self, words: &'static str) -> Case {
        Case {
            says: Some(words),
            ..self
        }
    }

    fn method(self, method: Method) -> Case {
        Case { method, ..self }
    }

    fn auth(self, auth: Auth) -> Case {
        Case { auth, ..self }
    }

    fn key(self, key: Key) -> Case {
        Case { key, ..self }
    }

    fn path(self, path: impl Into<String>) -> Case {
        Case {
            path: path.into(),
            ..self
        }
    }
}

fn cases() -> Vec<Case> {
    use StatusCode as S;
    let long_id = "u".repeat(129);
    let nested = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let oversized = format!(r#"{{"amount":1,"reference":"{}"}}"#, "r".repeat(70 * 1024));
    let mut invalid_utf8 = br#"{"amount":1,"reference":"ch_"#.to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe\"}");
    vec![
        // Amounts: integers in 1 ..= 10^12 only.
        Case::payment("float amount", r#"{"amount":10.5}"#)
            .says("amount must be an integer number of minor units, not 10.5"),
        Case::payment("string amount", r#"{"amount":"10"}"#)
            .says("amount must be an integer number of minor units, not the string \"10\""),
        Case::payment("exponent amount", r#"{"amount":1e3}"#)
            .says("amount must be an integer number of minor units"),
        Case::payment("negative amount", r#"{"amount":-5}"#)
            .says("amount must be an integer from 1 to 1,000,000,000,000 minor units, got -5"),
        Case::payment("zero amount", r#"{"amount":0}"#),
        Case::payment("amount above 10^12", r#"{"amount":1000000000001}"#)
            .says("amount must be an integer from 1 to 1,000,000,000,000 minor units"),
        Case::payment("amount past u64", r#"{"amount":18446744073709551616}"#)
            .says("got a number too large for 64 bits"),
        Case::payment("null amount", r#"{"amount":null}"#)
            .says("amount must be an integer number of minor units, not null"),
        Case::payment("boolean amount", r#"{"amount":true}"#),
        Case::payment("missing amount", r#"{"reference":"ch_1"}"#).says("amount is required"),
        Case::payment("empty body", ""),
        Case::post("credit with amount -1", "/credits", r#"{"amount":-1,"reason":"x"}"#),
        // Bodies that are not the expected JSON object.
        Case::payment("truncated JSON", r#"{"amount":"#).says("the body is not complete JSON"),
        Case::payment("trailing garbage", r#"{"amount":10} x"#)
            .says("there is more after the JSON value"),
        Case::payment("array body", "[10]").says("the body must be a JSON object, not an array"),
        Case::payment("null body", "null"),
        Case::payment("deeply nested body", nested),
        Case::payment("unknown field", r#"{"amount":10,"tip":1}"#)
            .says("unknown field \"tip\"; the fields are amount, currency, reference"),
        Case::payment("duplicate field", r#"{"amount":10,"amount":20}"#)
            .says("the field amount appears twice"),
        Case::payment("invalid UTF-8", invalid_utf8),
        Case::payment("oversized body", oversized).answers(S::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
        Case::payment("reference too long", format!(r#"{{"amount":1,"reference":"{}"}}"#, "r".repeat(256))),
        Case::post("numeric reason", "/credits", r#"{"amount":10,"reason":5}"#)
            .says("reason must be a string, not 5"),
        Case::post("blank reason", "/credits", r#"{"amount":10,"reason":"   "}"#),
        Case::post("reason with a line break", "/refunds", r#"{"amount":10,"reason":"a\nb"}"#),
        Case::post("missing reason", "/charges", r#"{"amount":10}"#),
        Case::post("pay-remaining with an amount", "/pay-remaining", r#"{"amount":10}"#),
        Case::post("complete with a field", "/complete", r#"{"now":true}"#),
        // Currencies.
        Case::payment("lower-case currency", r#"{"amount":10,"currency":"usd"}"#),
        Case::payment("two-letter currency", r#"{"amount":10,"currency":"US"}"#),
        Case::payment("other currency", r#"{"amount":10,"currency":"EUR"}"#)
            .answers(S::UNPROCESSABLE_ENTITY, "CURRENCY_MISMATCH"),
        // Idempotency keys.
        Case::payment("missing Idempotency-Key", r#"{"amount":10}"#).key(Key::Missing),
        Case::payment("empty Idempotency-Key", r#"{"amount":10}"#).key(Key::Bytes(Vec::new())),
        Case::payment("Idempotency-Key of 256 characters", r#"{"amount":10}"#)
            .key(Key::Bytes(vec![b'k'; 256])),
        Case::payment("Idempotency-Key with a tab", r#"{"amount":10}"#)
            .key(Key::Bytes(b"tab\there".to_vec())),
        Case::payment("non-ASCII Idempotency-Key", r#"{"amount":10}"#)
            .key(Key::Bytes("clé-1".as_bytes().to_vec())),
        Case::payment("two Idempotency-Keys", r#"{"amount":10}"#).key(Key::Twice),
        Case::payment("key reused with another amount", r#"{"amount":2001}"#)
            .key(Key::Bytes(b"setup-payment".to_vec()))
            .answers(S::CONFLICT, "IDEMPOTENCY_KEY_REUSED"),
        // Ids.
        Case::payment("user id with a space", r#"{"amount":10}"#)
            .path("/v1/users/a%20b/courses/c1/payments"),
        Case::payment("user id with a slash", r#"{"amount":10}"#)
            .path("/v1/users/a%2Fb/courses/c1/payments"),
        Case::payment("user id not UTF-8", r#"{"amount":10}"#)
            .path("/v1/users/%FF/courses/c1/payments"),
        Case::payment("user id of 129 characters", r#"{"amount":10}"#)
            .path(format!("/v1/users/{long_id}/courses/c1/payments")),
        Case::enroll("enroll a user id of 129 characters", &format!("/v1/users/{long_id}/courses/c1"), r#"{"currency":"USD","price":100}"#),
        Case::get("course id with a space", "/v1/users/u1/courses/c%201"),
        Case::get("list with a bad user id", "/v1/users/u%231/courses"),
        Case::payment("user id of 10,000 characters", r#"{"amount":10}"#)
            .path(format!("/v1/users/{}/courses/c1/payments", "u".repeat(10_000))),
        Case::payment("empty user id", r#"{"amount":10}"#)
            .path("/v1/users//courses/c1/payments"),
        // `.` and `..` never reach the server (clients normalise them away),
        // so the table sends the longer runs of dots the same rule refuses.
        Case::payment("user id of dots", r#"{"amount":10}"#)
            .path("/v1/users/.../courses/c1/payments")
            .says("user_id must not be made only of dots"),
        Case::enroll("enroll a course id of dots", "/v1/users/u1/courses/....", r#"{"currency":"USD","price":100}"#)
            .says("course_id must not be made only of dots"),
        Case::payment("empty reference", r#"{"amount":10,"reference":""}"#),
        Case::payment("empty bearer token", r#"{"amount":10}"#)
            .auth(Auth::Raw("Bearer "))
            .answers(S::UNAUTHORIZED, "UNAUTHENTICATED"),
        Case::enroll("enroll FULL_PAYMENT with an amount", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":100,"access_policy":{"kind":"FULL_PAYMENT","amount":5}}"#),
        Case::enroll("enroll with a null policy", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":100,"access_policy":null}"#),
        // Enrolling.
        Case::enroll("enroll in lower-case currency", "/v1/users/u1/courses/c9", r#"{"currency":"usd","price":100}"#),
        Case::enroll("enroll in a two-letter currency", "/v1/users/u1/courses/c9", r#"{"currency":"US","price":100}"#),
        Case::enroll("enroll at a negative price", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":-1}"#),
        Case::enroll("enroll at a price above 10^12", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":1000000000001}"#),
        Case::enroll("enroll at a fractional price", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":99.5}"#)
            .says("price must be an integer number of minor units, not 99.5"),
        Case::enroll("enroll without a price", "/v1/users/u1/courses/c9", r#"{"currency":"USD"}"#)
            .says("price is required"),
        Case::enroll("enroll with an unknown policy", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":100,"access_policy":{"kind":"HALF"}}"#),
        Case::enroll("enroll MIN_SETTLED without amount", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":100,"access_policy":{"kind":"MIN_SETTLED"}}"#),
        Case::enroll("enroll MIN_SETTLED below zero", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":100,"access_policy":{"kind":"MIN_SETTLED","amount":-1}}"#),
        Case::enroll("enroll with an unknown field", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":100,"discount":5}"#),
        Case::enroll("enroll at another price", BASE, r#"{"currency":"USD","price":20000}"#)
            .answers(S::CONFLICT, "ENROLLMENT_EXISTS"),
        Case::enroll("enroll in another currency", BASE, r#"{"currency":"EUR","price":10000}"#)
            .answers(S::CONFLICT, "ENROLLMENT_EXISTS"),
        Case::enroll("enroll under another policy", BASE, r#"{"currency":"USD","price":10000,"access_policy":{"kind":"MIN_SETTLED","amount":5000}}"#)
            .answers(S::CONFLICT, "ENROLLMENT_EXISTS"),
        // Refusals of well-formed operations.
        Case::payment("payment to a missing enrollment", r#"{"amount":10}"#)
            .path("/v1/users/u1/courses/c404/payments")
            .answers(S::NOT_FOUND, "ENROLLMENT_NOT_FOUND"),
        Case::payment("overpayment", r#"{"amount":8001}"#)
            .answers(S::UNPROCESSABLE_ENTITY, "OVERPAYMENT"),
        Case::post("credit beyond the due", "/credits", r#"{"amount":8001,"reason":"grant"}"#)
            .answers(S::UNPROCESSABLE_ENTITY, "CREDIT_EXCEEDS_DUE"),
        Case::post("refund beyond the paid", "/refunds", r#"{"amount":2001,"reason":"oops"}"#)
            .answers(S::UNPROCESSABLE_ENTITY, "REFUND_EXCEEDS_PAID"),
        Case::post("complete before access", "/complete", "{}")
            .answers(S::CONFLICT, "INVALID_TRANSITION"),
        Case::post("cancel after a payment", "/cancel", "")
            .answers(S::CONFLICT, "INVALID_TRANSITION"),
        // Holds.
        Case::post("hold with amount and remaining", "/holds", r#"{"amount":10,"remaining":true}"#),
        Case::post("hold with neither amount nor remaining", "/holds", "{}"),
        Case::post("hold with remaining false", "/holds", r#"{"remaining":false}"#),
        Case::post("hold expiring in 29 s", "/holds", r#"{"amount":10,"expires_in":29}"#),
        Case::post("hold expiring after a day", "/holds", r#"{"amount":10,"expires_in":86401}"#),
        Case::post("hold with a fractional expiry", "/holds", r#"{"amount":10,"expires_in":60.5}"#),
        Case::post("hold with a string expiry", "/holds", r#"{"amount":10,"expires_in":"60"}"#),
        Case::post("hold with a fractional amount", "/holds", r#"{"amount":10.5}"#),
        Case::post("hold without a key", "/holds", r#"{"amount":10}"#).key(Key::Missing),
        Case::post("capture of hold abc", "/holds/abc/capture", "{}"),
        Case::post("capture of hold 0", "/holds/0/capture", "{}"),
        Case::post("capture with an unknown field", "/holds/2/capture", r#"{"amount":1,"all":true}"#),
        Case::post("void with a field", "/holds/2/void", r#"{"amount":1}"#),
        Case::post("hold beyond the available", "/holds", r#"{"amount":8001}"#)
            .answers(S::UNPROCESSABLE_ENTITY, "OVERPAYMENT"),
        Case::post("capture of a hold that does not exist", "/holds/2/capture", "{}")
            .answers(S::NOT_FOUND, "HOLD_NOT_FOUND"),
        Case::post("void of a hold that does not exist", "/holds/99/void", "")
            .answers(S::NOT_FOUND, "HOLD_NOT_FOUND"),
        Case::get("holds of a missing enrollment", "/v1/users/u1/courses/c404/holds")
            .answers(S::NOT_FOUND, "ENROLLMENT_NOT_FOUND"),
        // Ledger paging.
        Case::get("ledger limit 0", &format!("{BASE}/ledger?limit=0")),
        Case::get("ledger limit abc", &format!("{BASE}/ledger?limit=abc")),
        Case::get("ledger limit 1001", &format!("{BASE}/ledger?limit=1001")),
        Case::get("ledger after -1", &format!("{BASE}/ledger?after=-1")),
        Case::get("ledger unknown parameter", &format!("{BASE}/ledger?offset=1")),
        Case::get("ledger of a missing enrollment", "/v1/users/u1/courses/c404/ledger")
            .answers(S::NOT_FOUND, "ENROLLMENT_NOT_FOUND"),
        Case::get("missing enrollment", "/v1/users/u1/courses/c404")
            .answers(S::NOT_FOUND, "ENROLLMENT_NOT_FOUND"),
        // Routes.
        Case::get("unknown route", "/v1/nothing-here").answers(S::NOT_FOUND, "NOT_FOUND"),
        Case::payment("unknown operation", r#"{"amount":10}"#)
            .path(format!("{BASE}/donations"))
            .answers(S::NOT_FOUND, "NOT_FOUND"),
        Case::get("wrong method", BASE)
            .answers(S::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
            .key(Key::Missing)
            .method(Method::DELETE),
        // Auth.
        Case::payment("no token", r#"{"amount":10}"#)
            .auth(Auth::None)
            .answers(S::UNAUTHORIZED, "UNAUTHENTICATED"),
        Case::payment("unknown token", r#"{"amount":10}"#)
            .auth(Auth::Raw("Bearer not-a-token"))
            .answers(S::UNAUTHORIZED, "UNAUTHENTICATED"),
        Case::payment("token without Bearer", r#"{"amount":10}"#)
            .auth(Auth::Raw(ADMIN_TOKEN))
            .answers(S::UNAUTHORIZED, "UNAUTHENTICATED"),
        Case::payment("reader token on a payment", r#"{"amount":10}"#)
            .auth(Auth::Reader)
            .answers(S::FORBIDDEN, "FORBIDDEN"),
        Case::enroll("reader token on an enrollment", "/v1/users/u1/courses/c9", r#"{"currency":"USD","price":100}"#)
            .auth(Auth::Reader)
            .answers(S::FORBIDDEN, "FORBIDDEN"),
        Case::get("writer token on the audit", "/v1/audit")
            .auth(Auth::Writer)
            .answers(S::FORBIDDEN, "FORBIDDEN"),
    ]
}

/// Everything a request could change: the enrollment, its ledger, the
/// user's enrollments, and the totals of the whole database.
async fn snapshot(app: &TestApp) -> Value {
    let (status, courses) = app.get("/v1/users/u1/courses").await;
    assert_eq!(status, StatusCode::OK);
    let (status, audit) = app.get("/v1/audit").await;
    assert_eq!(status, StatusCode::OK);
    json!({
        "enrollment": app.enrollment("u1", "c1").await,
        "ledger": app.ledger("u1", "c1").await,
        "courses": courses,
        "enrollments": audit["enrollments"],
        "entries": audit["entries"],
        "ok": audit["ok"],
    })
}

async fn malformed_requests_are_refused_and_change_nothing(backend: Backend) {
    let (app, [reader, writer]) =
        TestApp::spawn_with_tokens(backend, [Role::Reader, Role::Writer]).await;
    app.enroll("u1", "c1", 10_000).await;
    let (status, body) = app.pay("u1", "c1", "setup-payment", 2_000).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let before = snapshot(&app).await;
    assert_eq!(before["ok"], true);

    let cases = cases();
    assert!(cases.len() >= 30);
    for (index, case) in cases.into_iter().enumerate() {
        let mut request = app.client.request(case.method.clone(), app.url(&case.path));
        let authorization = match case.auth {
            Auth::Admin => Some(format!("Bearer {ADMIN_TOKEN}")),
            Auth::Reader => Some(format!("Bearer {reader}")),
            Auth::Writer => Some(format!("Bearer {writer}")),
            Auth::None => None,
            Auth::Raw(value) => Some(value.to_owned()),
        };
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        match &case.key {
            Key::Fresh => request = request.header("Idempotency-Key", format!("bad-input-{index}")),
            Key::Missing => {}
            Key::Bytes(bytes) => {
                let value = HeaderValue::from_bytes(bytes).expect("a sendable header value");
                request = request.header("Idempotency-Key", value);
            }
            Key::Twice => {
                request = request
                    .header("Idempotency-Key", "twice-1")
                    .header("Idempotency-Key", "twice-2");
            }
        }
        if let Some(body) = case.body.clone() {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request.send().await.unwrap_or_else(|error| {
            panic!("{}: the request failed: {error}", case.name);
        });
        let status = response.status();
        let text = response.text().await.expect("body");
        assert_eq!(status, case.status, "{}: {text}", case.name);
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{}: not JSON ({error}): {text}", case.name));
        assert_eq!(body["error"]["code"], case.code, "{}: {text}", case.name);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{}: no message: {text}", case.name);
        if let Some(words) = case.says {
            assert!(
                message.contains(words),
                "{}: {message:?} should say {words:?}",
                case.name
            );
        }
        // Messages speak JSON and the API, never Rust.
        for rust in ["u64", "i64", "u32", "struct ", "invalid type", "`"] {
            assert!(
                !message.contains(rust),
                "{}: Rust in {message:?}",
                case.name
            );
        }
        assert_eq!(
            snapshot(&app).await,
            before,
            "{}: the request changed something",
            case.name
        );
    }
    app.assert_audit_clean().await;
}
