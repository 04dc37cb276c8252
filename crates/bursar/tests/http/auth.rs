//! Bearer tokens and roles over HTTP, and the operational endpoints: health,
//! readiness, Prometheus metrics and the OpenAPI document.

use crate::conformance;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, create_tokens, new_key};
use bursar_server::auth::Role;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

conformance!(
    reader_can_read_but_not_write,
    writer_can_write_but_not_audit,
    admin_can_audit,
    healthz_alone_needs_no_token,
    authorization_must_be_a_bearer_token,
    token_created_while_serving_works_after_reload,
    metrics_report_requests_and_the_writer,
    openapi_describes_the_api
);

/// One request with `authorization` as the exact `Authorization` header
/// (none if `None`); a body makes it a JSON request with a fresh key.
async fn request(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, String) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(authorization) = authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    if let Some(body) = body {
        request = request
            .header("Idempotency-Key", new_key())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

/// Asserts an error answer's status and code.
fn assert_error(answer: &(StatusCode, HeaderMap, String), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.2);
    let body: Value = serde_json::from_str(&answer.2).expect("an error body is JSON");
    assert_eq!(body["error"]["code"], code, "{}", answer.2);
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every route a token-holding client reads.
const READ_PATHS: [&str; 6] = [
    "/v1/users/u1/courses/c1",
    "/v1/users/u1/courses",
    "/v1/users/u1/courses/c1/ledger",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

async fn reader_can_read_but_not_write(backend: Backend) {
    let (app, [reader]) = TestApp::spawn_with_tokens(backend, [Role::Reader]).await;
    app.enroll("u1", "c1", 10_000).await;
    let (status, body) = app.pay("u1", "c1", &new_key(), 1_000).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let before = app.enrollment("u1", "c1").await;
    let reader = bearer(&reader);

    for path in READ_PATHS {
        let (status, _, text) = request(&app, Method::GET, path, Some(&reader), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
    }
    let writes = [
        (Method::POST, "/payments", json!({"amount": 100})),
        (Method::POST, "/pay-remaining", json!({})),
        (
            Method::POST,
            "/credits",
            json!({"amount": 100, "reason": "grant"}),
        ),
        (Method::POST, "/cancel", json!({})),
        (Method::PUT, "", json!({"currency": "USD", "price": 10_000})),
    ];
    for (method, route, body) in writes {
        let path = format!("/v1/users/u1/courses/c1{route}");
        let answer = request(&app, method, &path, Some(&reader), Some(body)).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let answer = request(&app, Method::GET, "/v1/audit", Some(&reader), None).await;
    assert_error(&answer, StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(app.enrollment("u1", "c1").await, before);
}

async fn writer_can_write_but_not_audit(backend: Backend) {
    let (app, [writer]) = TestApp::spawn_with_tokens(backend, [Role::Writer]).await;
    let writer = bearer(&writer);
    let (status, _, text) = request(
        &app,
        Method::PUT,
        "/v1/users/u1/courses/c1",
        Some(&writer),
        Some(json!({"currency": "USD", "price": 10_000})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let (status, _, text) = request(
        &app,
        Method::POST,
        "/v1/users/u1/courses/c1/payments",
        Some(&writer),
        Some(json!({"amount": 2_500})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    for path in READ_PATHS {
        let (status, _, text) = request(&app, Method::GET, path, Some(&writer), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
    }
    let answer = request(&app, Method::GET, "/v1/audit", Some(&writer), None).await;
    assert_error(&answer, StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(app.enrollment("u1", "c1").await["amount_paid"], 2_500);
}

async fn admin_can_audit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let (status, body) = app.pay("u1", "c1", &new_key(), 2_500).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.get("/v1/audit").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["enrollments"], 1, "{body}");
    assert_eq!(body["entries"], 2, "{body}");
    assert_eq!(body["disagreements"], json!([]), "{body}");
}

async fn healthz_alone_needs_no_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, _, text) = request(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["status"], "ok");

    for path in [
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/users/u1/courses",
    ] {
        let answer = request(&app, Method::GET, path, None, None).await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
        assert_eq!(
            answer.1.get(WWW_AUTHENTICATE).map(|value| value.as_bytes()),
            Some(&b"Bearer"[..]),
            "GET {path} names the scheme to use"
        );
        let (status, _, text) =
            request(&app, Method::GET, path, Some(&bearer(ADMIN_TOKEN)), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {text}");
    }
    let (status, _, text) = request(
        &app,
        Method::GET,
        "/readyz",
        Some(&bearer(ADMIN_TOKEN)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["status"], "ready", "{text}");
}

async fn authorization_must_be_a_bearer_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let refused = [
        ADMIN_TOKEN.to_owned(),
        format!("Token {ADMIN_TOKEN}"),
        format!("Basic {ADMIN_TOKEN}"),
        format!("Bearer{ADMIN_TOKEN}"),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        format!("Bearer {ADMIN_TOKEN}x"),
        String::new(),
    ];
    for authorization in refused {
        let answer = request(&app, Method::GET, "/readyz", Some(&authorization), None).await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    let (status, _, text) = request(
        &app,
        Method::GET,
        "/readyz",
        Some(&bearer(ADMIN_TOKEN)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

async fn token_created_while_serving_works_after_reload(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let [writer] = create_tokens(&app.db.url, [Role::Writer]).await;
    let writer = bearer(&writer);
    // The service reloads its tokens for an unknown one at most once a
    // second, so the new token works within about a second.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, _, text) = request(&app, Method::GET, "/readyz", Some(&writer), None).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
        assert!(
            Instant::now() < deadline,
            "the new token still is not accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, text) = request(
        &app,
        Method::POST,
        "/v1/users/u1/courses/c1/payments",
        Some(&writer),
        Some(json!({"amount": 100})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
}

async fn metrics_report_requests_and_the_writer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let (status, body) = app.pay("u1", "c1", &new_key(), 2_500).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, headers, text) = app.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text, not {content_type:?}"
    );
    for name in [
        "bursar_http_requests_total",
        "bursar_writer_batch_operations",
        "bursar_writer_commit_duration_seconds",
        "bursar_writer_queue_operations",
    ] {
        assert!(
            text.lines()
                .any(|line| line.starts_with(name) && !line.starts_with('#')),
            "no sample of {name} in:\n{text}"
        );
    }
    assert!(
        text.lines().any(|line| {
            line.starts_with("bursar_http_requests_total{")
                && line.contains("/payments")
                && line.contains("status=\"201\"")
        }),
        "the payment is not counted in:\n{text}"
    );
}

async fn openapi_describes_the_api(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, _, text) = app.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let document: Value = serde_json::from_str(&text).expect("the OpenAPI document is JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.")),
        "not OpenAPI 3: {}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/v1/users/{user_id}/courses/{course_id}",
        "/v1/users/{user_id}/courses",
        "/v1/users/{user_id}/courses/{course_id}/payments",
        "/v1/users/{user_id}/courses/{course_id}/pay-remaining",
        "/v1/users/{user_id}/courses/{course_id}/credits",
        "/v1/users/{user_id}/courses/{course_id}/refunds",
        "/v1/users/{user_id}/courses/{course_id}/charges",
        "/v1/users/{user_id}/courses/{course_id}/complete",
        "/v1/users/{user_id}/courses/{course_id}/cancel",
        "/v1/users/{user_id}/courses/{course_id}/ledger",
        "/v1/users/{user_id}/courses/{course_id}/holds",
        "/v1/users/{user_id}/courses/{course_id}/holds/{hold_seq}/capture",
        "/v1/users/{user_id}/courses/{course_id}/holds/{hold_seq}/void",
        "/v1/audit",
        "/healthz",
    ] {
        assert!(paths.contains_key(path), "the document lacks {path}");
    }
    assert!(
        paths["/v1/users/{user_id}/courses/{course_id}/payments"]["post"].is_object(),
        "payments are documented as a POST"
    );
    let capture = &paths["/v1/users/{user_id}/courses/{course_id}/holds/{hold_seq}/capture"];
    for status in ["201", "400", "404", "409", "422", "503"] {
        assert!(
            capture["post"]["responses"][status].is_object(),
            "the capture documents {status}"
        );
    }
}
