//! The client against a real bursar service on port 0: every endpoint, and
//! the retries that matter for money — a server that starts late, a 503 with
//! `Retry-After`, and an answer lost after the commit — each applied once.

use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use bursar_client::{
    BatchCaptureRequest, BatchCommand, BatchDetail, BatchOperation, BatchRequest, BatchVoidRequest,
    CaptureRequest, ChargeRequest, Client, CreateTokenRequest, CreditRequest, EnrollRequest,
    Enrolled, HoldRequest, Outcome, PayRemainingRequest, PaymentRequest, RefundRequest,
    RetryPolicy,
};
use bursar_core::{
    Amount, CourseId, Currency, EnrollmentKey, EntryKind, IdempotencyKey, PaymentStatus, Price,
    Reason, Reference, Timestamp, UserId,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TOKEN: &str = "client-test-admin-token-0123456789";

/// A bursar service over a fresh SQLite file; the directory goes with it.
async fn open_app() -> (bursar_server::App, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bursar.db").display());
    let app = bursar_server::App::open(&url, Some(TOKEN))
        .await
        .expect("open the app");
    (app, dir)
}

/// Serves the app on 127.0.0.1:0 until the test ends; returns its base URL.
async fn serve(app: bursar_server::App) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(app.serve(listener, std::future::pending()));
    base
}

/// Serves a router (the app's own, with a fault in front) on `listener`.
fn serve_router(listener: tokio::net::TcpListener, router: axum::Router) {
    tokio::spawn(async move { axum::serve(listener, router).await });
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts_max: 20,
        delay_initial: Duration::from_millis(20),
        delay_max: Duration::from_millis(200),
        elapsed_max: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(5),
    }
}

fn client(base: &str) -> Client {
    Client::builder(base)
        .token(TOKEN)
        .retry_policy(quick_retries())
        .jitter_seed(1)
        .build()
        .expect("client")
}

fn enrollment(user: &str, course: &str) -> EnrollmentKey {
    EnrollmentKey {
        user_id: UserId::parse(user).unwrap(),
        course_id: CourseId::parse(course).unwrap(),
    }
}

fn terms(price: i128) -> EnrollRequest {
    EnrollRequest {
        currency: Currency::parse("USD").unwrap(),
        price: Price::new(price).unwrap(),
        access_policy: None,
    }
}

fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(text).unwrap()
}

fn amount(minor_units: i128) -> Amount {
    Amount::new(minor_units).unwrap()
}

fn reason(text: &str) -> Reason {
    Reason::parse(text).unwrap()
}

fn refused_code<T: std::fmt::Debug>(outcome: Outcome<T>) -> (u16, String) {
    match outcome {
        Outcome::Refused { status, code, .. } => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_typed() {
    let (app, _dir) = open_app().await;
    let base = serve(app).await;
    let client = client(&base);
    let course = enrollment("student-1", "rust-101");

    let created = client.enroll(&course, &terms(10_000)).await;
    let Outcome::Succeeded(Enrolled::Created(created)) = created else {
        panic!("expected a new enrollment, got {created:?}");
    };
    assert_eq!(created.entry.kind, EntryKind::Enroll);
    assert_eq!(created.enrollment.amount_due, 10_000);
    let again = client.enroll(&course, &terms(10_000)).await;
    assert!(
        matches!(again, Outcome::Succeeded(Enrolled::Existing(_))),
        "{again:?}"
    );
    assert_eq!(
        refused_code(client.enroll(&course, &terms(9_000)).await),
        (409, "ENROLLMENT_EXISTS".to_owned())
    );

    let paid = client
        .payment(&course, &key("pay-1"), &PaymentRequest::new(amount(2_500)))
        .await
        .succeeded()
        .expect("payment");
    assert!(!paid.replayed);
    assert_eq!(paid.enrollment.amount_paid, 2_500);
    assert_eq!(paid.enrollment.payment_status, PaymentStatus::Partial);
    let replay = client
        .payment(&course, &key("pay-1"), &PaymentRequest::new(amount(2_500)))
        .await
        .succeeded()
        .expect("replay");
    assert!(replay.replayed);
    assert_eq!(replay.entry, paid.entry);
    assert_eq!(
        refused_code(
            client
                .payment(&course, &key("pay-1"), &PaymentRequest::new(amount(99)))
                .await
        ),
        (409, "IDEMPOTENCY_KEY_REUSED".to_owned())
    );
    assert_eq!(
        refused_code(
            client
                .payment(
                    &course,
                    &key("pay-2"),
                    &PaymentRequest::new(amount(1_000_000))
                )
                .await
        ),
        (422, "OVERPAYMENT".to_owned())
    );
    let receipt = client
        .payment_receipt(&course, &key("pay-3"), &PaymentRequest::new(amount(500)))
        .await
        .succeeded()
        .expect("receipt");
    assert_eq!((receipt.seq, receipt.replayed), (3, false));

    let credited = client
        .credit(
            &course,
            &key("credit-1"),
            &CreditRequest {
                amount: amount(1_000),
                reason: reason("scholarship"),
            },
        )
        .await
        .succeeded()
        .expect("credit");
    assert_eq!(credited.enrollment.amount_credited, 1_000);
    let charged = client
        .charge(
            &course,
            &key("charge-1"),
            &ChargeRequest {
                amount: amount(300),
                reason: reason("late fee"),
            },
        )
        .await
        .succeeded()
        .expect("charge");
    assert_eq!(charged.enrollment.amount_charged, 300);
    let refunded = client
        .refund(
            &course,
            &key("refund-1"),
            &RefundRequest {
                amount: amount(200),
                reason: reason("duplicate card charge"),
                reference: None,
            },
        )
        .await
        .succeeded()
        .expect("refund");
    assert_eq!(refunded.enrollment.amount_refunded, 200);
    let settled = client
        .pay_remaining(&course, &key("rest-1"), &PayRemainingRequest::default())
        .await
        .succeeded()
        .expect("pay remaining");
    assert_eq!(settled.enrollment.amount_due, 0);
    assert_eq!(
        refused_code(
            client
                .pay_remaining(&course, &key("rest-2"), &PayRemainingRequest::default())
                .await
        ),
        (409, "NOTHING_DUE".to_owned())
    );
    let completed = client
        .complete(&course, &key("complete-1"))
        .await
        .succeeded()
        .expect("complete");
    assert_eq!(completed.enrollment.version, 8);

    let other = enrollment("student-1", "go-201");
    client
        .enroll(&other, &terms(5_000))
        .await
        .succeeded()
        .expect("enroll");
    let cancelled = client
        .cancel(&other, &key("cancel-1"))
        .await
        .succeeded()
        .expect("cancel");
    assert_eq!(cancelled.entry.kind, EntryKind::Cancel);

    let fetched = client.enrollment(&course).await.succeeded().expect("get");
    assert_eq!(fetched, completed.enrollment);
    let listed = client
        .enrollments(&course.user_id)
        .await
        .succeeded()
        .expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(
        refused_code(client.enrollment(&enrollment("nobody", "none")).await),
        (404, "ENROLLMENT_NOT_FOUND".to_owned())
    );

    // Paging: three entries at a time, following `after`.
    let mut after = 0;
    let mut kinds = Vec::new();
    loop {
        let page = client
            .ledger(&course, after, 3)
            .await
            .succeeded()
            .expect("ledger");
        let Some(last) = page.last() else { break };
        after = last.seq;
        kinds.extend(page.iter().map(|entry| entry.kind));
    }
    use EntryKind::*;
    assert_eq!(
        kinds,
        [
            Enroll, Payment, Payment, Credit, Charge, Refund, Payment, Complete
        ]
    );

    let batch_course = enrollment("student-2", "rust-101");
    let operations = vec![
        BatchOperation::new(&batch_course, None, BatchCommand::Enroll(terms(1_000))),
        BatchOperation::new(
            &batch_course,
            Some(key("b-1")),
            BatchCommand::Payment(PaymentRequest::new(amount(400))),
        ),
        BatchOperation::new(
            &batch_course,
            Some(key("b-2")),
            BatchCommand::Payment(PaymentRequest::new(amount(4_000))),
        ),
    ];
    let full = client
        .batch(&BatchRequest {
            operations: operations.clone(),
            detail: BatchDetail::Full,
        })
        .await
        .succeeded()
        .expect("batch");
    let statuses: Vec<u16> = full.results.iter().map(|result| result.status).collect();
    assert_eq!(statuses, [201, 201, 422]);
    assert_eq!(
        full.results[1]
            .accepted()
            .expect("accepted")
            .enrollment
            .amount_paid,
        400
    );
    assert_eq!(full.results[2].error_code(), Some("OVERPAYMENT"));
    let summary = client
        .batch(&BatchRequest {
            operations,
            detail: BatchDetail::Summary,
        })
        .await
        .succeeded()
        .expect("batch");
    assert_eq!(summary.results[0].status, 200);
    assert!(summary.results[1].replayed);
    assert_eq!(summary.results[1].seq, Some(2));
    assert_eq!(summary.results[2].error_code(), Some("OVERPAYMENT"));
    // A key first used in a batch is the same operation on the payment
    // route: resending it there replays the batch's entry.
    let resent = client
        .payment(
            &batch_course,
            &key("b-1"),
            &PaymentRequest::new(amount(400)),
        )
        .await
        .succeeded()
        .expect("replay on the payment route");
    assert!(resent.replayed);
    assert_eq!(resent.entry.seq, 2);

    let audit = client.audit().await.succeeded().expect("audit");
    assert!(audit.ok, "{audit:?}");
    assert_eq!(audit.enrollments, 3);
    assert_eq!(
        client.health().await.succeeded().expect("health").status,
        "ok"
    );
    let ready = client.readiness().await.succeeded().expect("ready");
    assert_eq!(ready.backend, "sqlite");
    let metrics = client.metrics().await.succeeded().expect("metrics");
    assert!(metrics.contains("# TYPE"), "{metrics}");
    let openapi = client.openapi().await.succeeded().expect("openapi");
    assert!(openapi["paths"]["/v1/batch"].is_object());

    let anonymous = Client::builder(&base).build().expect("client");
    assert_eq!(
        refused_code(anonymous.enrollment(&course).await),
        (401, "UNAUTHENTICATED".to_owned())
    );
    assert_eq!(client.retry_counts(), Default::default());
}

/// The finance desk's reads: an enrollment and a user's list as of a time,
/// a statement that adds up, and the audit of one enrollment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_as_of_a_time_and_statements_are_typed() {
    let (app, _dir) = open_app().await;
    let client = client(&serve(app).await);
    let course = enrollment("student-1", "rust-101");
    client
        .enroll(&course, &terms(10_000))
        .await
        .succeeded()
        .expect("enroll");
    let first = client
        .payment(&course, &key("p-1"), &PaymentRequest::new(amount(2_500)))
        .await
        .succeeded()
        .expect("pay");
    tokio::time::sleep(Duration::from_millis(3)).await;
    let second = client
        .payment(&course, &key("p-2"), &PaymentRequest::new(amount(1_000)))
        .await
        .succeeded()
        .expect("pay");
    let before_second = Timestamp::from_unix_micros(second.entry.created_at.unix_micros() - 1);

    let then = client
        .enrollment_as_of(&course, before_second)
        .await
        .succeeded()
        .expect("as of");
    assert_eq!(then, first.enrollment);
    let now = client
        .enrollment_as_of(&course, second.entry.created_at)
        .await
        .succeeded()
        .expect("as of");
    assert_eq!(now.amount_paid, 3_500);
    let before_all = Timestamp::from_unix_micros(0);
    assert_eq!(
        refused_code(client.enrollment_as_of(&course, before_all).await),
        (404, "ENROLLMENT_NOT_FOUND".to_owned())
    );
    let far = Timestamp::from_unix_micros(i64::from(i32::MAX) * 1_000_000 * 2);
    assert_eq!(
        refused_code(client.enrollment_as_of(&course, far).await),
        (400, "INVALID_REQUEST".to_owned())
    );
    let listed = client
        .enrollments_as_of(&course.user_id, before_second)
        .await
        .succeeded()
        .expect("list as of");
    assert_eq!(listed, vec![first.enrollment.clone()]);
    assert_eq!(
        client
            .enrollments_as_of(&course.user_id, before_all)
            .await
            .succeeded()
            .expect("list"),
        vec![]
    );

    // The second payment's period: opening + entries = closing.
    let statement = client
        .statement(&course, Some(second.entry.created_at), None)
        .await
        .succeeded()
        .expect("statement");
    assert_eq!(statement.currency.as_str(), "USD");
    assert_eq!(statement.from, Some(second.entry.created_at));
    assert_eq!(statement.opening, Some(first.enrollment.clone()));
    assert_eq!(statement.entries, vec![second.entry.clone()]);
    let (opening, closing) = (statement.opening.unwrap(), statement.closing.unwrap());
    assert_eq!(opening.amount_paid + 1_000, closing.amount_paid);
    let whole = client
        .statement(&course, None, Some(before_second))
        .await
        .succeeded()
        .expect("statement");
    assert_eq!((whole.from, whole.opening), (None, None));
    assert_eq!(whole.entries.len(), 2);
    assert_eq!(whole.closing, Some(first.enrollment));
    assert_eq!(
        refused_code(
            client
                .statement(&course, Some(now.updated_at), Some(before_all))
                .await
        ),
        (400, "INVALID_REQUEST".to_owned())
    );

    let audit = client
        .enrollment_audit(&course)
        .await
        .succeeded()
        .expect("audit of one");
    assert!(audit.ok && audit.problems.is_empty(), "{audit:?}");
    assert_eq!(
        (audit.entries, audit.head_hash),
        (3, Some(second.entry.hash))
    );
}

/// Tokens through the client: made (the secret once), listed (never a
/// secret), used, revoked, then refused; an unknown id is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_made_listed_and_revoked() {
    let (app, _dir) = open_app().await;
    let base = serve(app).await;
    let admin = client(&base);
    let made = admin
        .create_token(&CreateTokenRequest {
            role: "reader".to_owned(),
            expires_in: Some(3600),
        })
        .await
        .succeeded()
        .expect("made");
    assert!(made.id.starts_with("tok_") && made.token.starts_with("bursar_"));
    assert_eq!(made.role, "reader");
    assert!(made.expires_at.is_some());
    let listed = admin.tokens().await.succeeded().expect("listed");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, made.id);
    assert!(!listed[0].revoked);

    let reader = Client::builder(base.as_str())
        .token(&made.token)
        .retry_policy(quick_retries())
        .build()
        .expect("client");
    let user = UserId::parse("u1").unwrap();
    assert!(reader.enrollments(&user).await.is_succeeded());
    let (status, code) = refused_code(reader.tokens().await);
    assert_eq!((status, code.as_str()), (403, "FORBIDDEN"));

    let revoked = admin
        .revoke_token(&made.id)
        .await
        .succeeded()
        .expect("revoked");
    assert!(revoked.revoked && revoked.revoked_at.is_some());
    let (status, code) = refused_code(reader.enrollments(&user).await);
    assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
    let (status, code) = refused_code(admin.revoke_token("tok_nothing/here").await);
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_opened_listed_captured_and_voided_once() {
    let (app, _dir) = open_app().await;
    let base = serve(app).await;
    let client = client(&base);
    let course = enrollment("student-h", "rust-101");
    assert!(client.enroll(&course, &terms(10_000)).await.is_succeeded());

    // Two tabs: the first holds the whole balance, the second is refused
    // before any card is charged.
    let hold = HoldRequest {
        reference: Some(Reference::parse("pi_tab_1").unwrap()),
        ..HoldRequest::remaining()
    };
    let Outcome::Succeeded(held) = client.hold(&course, &key("tab-1"), &hold).await else {
        panic!("the first tab's hold is accepted");
    };
    assert_eq!(held.entry.kind, EntryKind::Hold);
    let hold_seq = held.entry.seq;
    assert_eq!(held.entry.hold_seq, Some(hold_seq));
    assert_eq!(held.enrollment.amount_held, 10_000);
    assert_eq!(held.enrollment.amount_available, 0);
    assert_eq!(
        refused_code(
            client
                .hold(&course, &key("tab-2"), &HoldRequest::remaining())
                .await
        ),
        (409, "NOTHING_DUE".to_owned())
    );
    // The same key replays the same hold.
    let again = client.hold(&course, &key("tab-1"), &hold).await;
    let Outcome::Succeeded(again) = again else {
        panic!("a replayed hold answers as before, got {again:?}");
    };
    assert!(again.replayed);
    assert_eq!(again.entry.seq, hold_seq);

    let open = client
        .holds(&course)
        .await
        .succeeded()
        .expect("the open holds");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].hold_seq, hold_seq);
    assert_eq!(open[0].amount, 10_000);
    assert_eq!(
        open[0].reference.as_ref().map(|r| r.as_str()),
        Some("pi_tab_1")
    );
    assert_eq!(Some(open[0].expires_at), held.entry.expires_at);

    // Capture part of it: the rest is released.
    let capture = CaptureRequest {
        amount: Some(amount(6_000)),
        reference: Some(Reference::parse("ch_1").unwrap()),
    };
    let Outcome::Succeeded(captured) = client
        .capture(&course, hold_seq, &key("capture-1"), &capture)
        .await
    else {
        panic!("the capture is accepted");
    };
    assert_eq!(captured.entry.kind, EntryKind::Capture);
    assert_eq!(captured.entry.hold_seq, Some(hold_seq));
    assert_eq!(captured.enrollment.amount_paid, 6_000);
    assert_eq!(captured.enrollment.amount_held, 0);
    assert_eq!(captured.enrollment.amount_due, 4_000);
    // A second capture with another key is refused; the first one's key
    // replays it.
    assert_eq!(
        refused_code(
            client
                .capture(
                    &course,
                    hold_seq,
                    &key("capture-2"),
                    &CaptureRequest::default()
                )
                .await
        ),
        (409, "HOLD_NOT_OPEN".to_owned())
    );
    let replayed = client
        .capture(&course, hold_seq, &key("capture-1"), &capture)
        .await
        .succeeded()
        .expect("the same capture replays");
    assert!(replayed.replayed);
    assert_eq!(replayed.entry.seq, captured.entry.seq);
    assert_eq!(
        refused_code(client.void(&course, hold_seq, &key("void-late")).await),
        (409, "HOLD_NOT_OPEN".to_owned())
    );
    assert!(client.holds(&course).await.succeeded().unwrap().is_empty());

    // A hold voided gives its amount back.
    let Outcome::Succeeded(second) = client
        .hold(&course, &key("tab-3"), &HoldRequest::amount(amount(1_500)))
        .await
    else {
        panic!("a hold of part of the rest is accepted");
    };
    assert_eq!(second.enrollment.amount_available, 2_500);
    assert_eq!(
        refused_code(
            client
                .capture(
                    &course,
                    second.entry.seq,
                    &key("too-much"),
                    &CaptureRequest {
                        amount: Some(amount(1_501)),
                        reference: None,
                    },
                )
                .await
        ),
        (422, "CAPTURE_EXCEEDS_HOLD".to_owned())
    );
    let voided = client
        .void(&course, second.entry.seq, &key("void-1"))
        .await
        .succeeded()
        .expect("the void is accepted");
    assert_eq!(voided.entry.kind, EntryKind::Void);
    assert_eq!(voided.enrollment.amount_held, 0);
    assert_eq!(voided.enrollment.amount_available, 4_000);
    assert_eq!(
        refused_code(client.void(&course, 999, &key("void-none")).await),
        (404, "HOLD_NOT_FOUND".to_owned())
    );
    assert_eq!(
        refused_code(client.holds(&enrollment("nobody", "rust-101")).await),
        (404, "ENROLLMENT_NOT_FOUND".to_owned())
    );

    // The batch kinds: a hold, its capture, and a void of a captured hold.
    let op = |name: &str, command| BatchOperation::new(&course, Some(key(name)), command);
    let batch = client
        .batch(&BatchRequest {
            operations: vec![
                op("b-hold", BatchCommand::Hold(HoldRequest::remaining())),
                op("b-void", BatchCommand::Void(BatchVoidRequest { hold_seq })),
            ],
            detail: BatchDetail::Full,
        })
        .await
        .succeeded()
        .expect("the batch is answered");
    let batch_hold = batch.results[0].accepted().expect("the batch hold");
    assert_eq!(batch_hold.enrollment.amount_held, 4_000);
    assert_eq!(batch.results[1].error_code(), Some("HOLD_NOT_OPEN"));
    let batch = client
        .batch(&BatchRequest {
            operations: vec![op(
                "b-capture",
                BatchCommand::Capture(BatchCaptureRequest {
                    hold_seq: batch_hold.entry.seq,
                    capture: CaptureRequest::default(),
                }),
            )],
            detail: BatchDetail::Summary,
        })
        .await
        .succeeded()
        .expect("the batch is answered");
    assert_eq!(batch.results[0].status, 201, "{batch:?}");
    let done = client.enrollment(&course).await.succeeded().unwrap();
    assert_eq!(done.amount_paid, 10_000);
    assert_eq!(done.amount_due, 0);
    assert_eq!(done.payment_status, PaymentStatus::Completed);
    let audit = client.audit().await.succeeded().expect("the audit");
    assert!(audit.ok, "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_starts_late_is_reached_by_retrying() {
    let (app, _dir) = open_app().await;
    // A port that is free now and will be listened on a little later.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address");
    let client = client(&format!("http://{address}"));
    let course = enrollment("late", "c1");
    let calls = {
        let client = client.clone();
        let course = course.clone();
        tokio::spawn(async move {
            let enrolled = client.enroll(&course, &terms(1_000)).await;
            let paid = client
                .payment(&course, &key("late-1"), &PaymentRequest::new(amount(100)))
                .await;
            (enrolled, paid)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("rebind");
    tokio::spawn(app.serve(listener, std::future::pending()));
    let (enrolled, paid) = calls.await.expect("calls");
    assert!(enrolled.is_succeeded(), "{enrolled:?}");
    let paid = paid.succeeded().expect("payment");
    assert_eq!(paid.enrollment.amount_paid, 100);
    assert!(client.retry_counts().connection_errors >= 1);
}

/// Answers the first `failures` payment requests with bursar's own 503
/// (`OVERLOADED`, `Retry-After: 1`) without passing them on, and counts the
/// keys of every payment request it sees.
#[derive(Default)]
struct Fault {
    failures: usize,
    seen: AtomicUsize,
    keys: std::sync::Mutex<Vec<String>>,
    /// Instead of failing: pass the first request on, then hold its answer
    /// for this long (past the client's attempt timeout).
    hold_first_answer: Option<Duration>,
}

async fn fault(State(fault): State<Arc<Fault>>, request: Request, next: Next) -> Response {
    if !request.uri().path().ends_with("/payments") {
        return next.run(request).await;
    }
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fault.keys.lock().unwrap().push(key);
    let seen = fault.seen.fetch_add(1, Ordering::SeqCst);
    if let Some(hold) = fault.hold_first_answer {
        let response = next.run(request).await;
        if seen == 0 {
            tokio::time::sleep(hold).await;
        }
        return response;
    }
    if seen < fault.failures {
        return bursar_server::error::ApiError::overloaded().into_response();
    }
    next.run(request).await
}

async fn serve_with_fault(fault: Arc<Fault>) -> (String, tempfile::TempDir) {
    let (app, dir) = open_app().await;
    let router = app.router().layer(from_fn_with_state(fault, self::fault));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    serve_router(listener, router);
    // The app's writer keeps running on the router's handles.
    drop(app);
    (base, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_after_retry_after_with_the_same_key() {
    let fault = Arc::new(Fault {
        failures: 1,
        ..Fault::default()
    });
    let (base, _dir) = serve_with_fault(fault.clone()).await;
    let client = client(&base);
    let course = enrollment("busy", "c1");
    client
        .enroll(&course, &terms(1_000))
        .await
        .succeeded()
        .expect("enroll");
    let started = Instant::now();
    let paid = client
        .payment(&course, &key("busy-1"), &PaymentRequest::new(amount(250)))
        .await
        .succeeded()
        .expect("payment");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After not honoured"
    );
    assert!(!paid.replayed);
    assert_eq!(paid.enrollment.amount_paid, 250);
    assert_eq!(*fault.keys.lock().unwrap(), ["busy-1", "busy-1"]);
    assert_eq!(client.retry_counts().unavailable, 1);
    let ledger = client
        .ledger(&course, 0, 100)
        .await
        .succeeded()
        .expect("ledger");
    assert_eq!(ledger.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_after_the_commit_is_recovered_by_the_same_key() {
    let fault = Arc::new(Fault {
        hold_first_answer: Some(Duration::from_secs(3)),
        ..Fault::default()
    });
    let (base, _dir) = serve_with_fault(fault.clone()).await;
    let client = Client::builder(&base)
        .token(TOKEN)
        .retry_policy(RetryPolicy {
            attempt_timeout: Duration::from_millis(500),
            ..quick_retries()
        })
        .build()
        .expect("client");
    let course = enrollment("lost", "c1");
    client
        .enroll(&course, &terms(1_000))
        .await
        .succeeded()
        .expect("enroll");
    let paid = client
        .payment(&course, &key("lost-1"), &PaymentRequest::new(amount(300)))
        .await
        .succeeded()
        .expect("payment");
    // The first attempt was applied but its answer never came; the retry
    // with the same key was answered with the original entry.
    assert!(paid.replayed);
    assert_eq!(paid.enrollment.amount_paid, 300);
    assert!(client.retry_counts().timeouts >= 1);
    let keys = fault.keys.lock().unwrap().clone();
    assert!(
        keys.len() >= 2 && keys.iter().all(|key| key == "lost-1"),
        "{keys:?}"
    );
    let enrollment = client.enrollment(&course).await.succeeded().expect("get");
    assert_eq!(enrollment.amount_paid, 300);
    let ledger = client
        .ledger(&course, 0, 100)
        .await
        .succeeded()
        .expect("ledger");
    assert_eq!(ledger.len(), 2, "applied once");
    assert!(client.audit().await.succeeded().expect("audit").ok);
}
