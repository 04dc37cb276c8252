//! `bursar load-test` run as the real binary: against a private server it
//! spawns, and against a running one; the JSON report's verdict must hold and
//! its counts must add up.

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb};
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Generous: the machine may be busy, and a debug build is slow.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

struct Run {
    code: Option<i32>,
    report: Value,
    stdout: String,
    stderr: String,
}

/// Runs `bursar load-test ARGS`, with no `BURSAR_*` setting inherited from
/// the environment the tests run in.
async fn load_test(args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bursar"));
    command.arg("load-test").args(args);
    for name in [
        "BURSAR_URL",
        "BURSAR_TOKEN",
        "BURSAR_DATABASE_URL",
        "BURSAR_LISTEN",
        "BURSAR_ADMIN_TOKEN",
        "BURSAR_LOG",
        "BURSAR_LOG_FORMAT",
    ] {
        command.env_remove(name);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_DEADLINE, command.output())
        .await
        .expect("bursar load-test finished in time")
        .expect("run bursar load-test");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = if args.contains(&"--json") {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("the report is JSON ({error}): {stdout}\n{stderr}"))
    } else {
        Value::Null
    };
    Run {
        code: output.status.code(),
        report,
        stdout,
        stderr,
    }
}

fn count(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is a count in {report:#}"))
}

/// The checks every clean run must pass: `payments` payments sent and
/// acknowledged once each, into `enrollments` enrollments, and a clean
/// verdict.
fn assert_clean(run: &Run, payments: u64, enrollments: u64) {
    let report = &run.report;
    assert_eq!(run.code, Some(0), "{report:#}\n{}", run.stderr);
    assert_eq!(report["ok"], true, "{report:#}");
    let verdict = &report["verdict"];
    assert_eq!(verdict["ok"], true, "{report:#}");
    assert_eq!(verdict["amounts_match"], true);
    assert_eq!(verdict["ledger_keys_once"], true);
    assert_eq!(verdict["audit_ok"], true);
    assert_eq!(verdict["problems"], serde_json::json!([]));
    assert_eq!(count(report, "/payments/sent"), payments);
    assert_eq!(count(report, "/payments/acknowledged"), payments);
    assert_eq!(count(report, "/payments/refused"), 0);
    assert_eq!(count(report, "/payments/acknowledged_total"), payments);
    assert_eq!(count(report, "/verdict/ledger_payments"), payments);
    assert_eq!(count(report, "/verdict/enrollments_checked"), enrollments);
    assert_eq!(count(report, "/verdict/audit_enrollments"), enrollments);
    // One ENROLL entry per enrollment, one PAYMENT entry per payment.
    assert_eq!(
        count(report, "/verdict/audit_entries"),
        payments + enrollments
    );
    // The amount is between the bounds for every payment.
    let amount = count(report, "/payments/acknowledged_amount");
    assert!(
        (100 * payments..=10_000 * payments).contains(&amount),
        "{amount}"
    );
    assert!(report["throughput"]["acknowledged_payments_per_second"].as_f64() > Some(0.0));
    let latency = &report["latency_ms"];
    assert_eq!(
        count(report, "/latency_ms/requests"),
        count(report, "/requests/sent")
    );
    let quantiles: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|name| latency[name].as_f64().expect("a latency"))
        .collect();
    assert!(quantiles[0] > 0.0, "{latency}");
    assert!(
        quantiles.windows(2).all(|pair| pair[0] <= pair[1]),
        "{latency}"
    );
    assert!(
        count(report, "/server/peak_rss_bytes") > 1024 * 1024,
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hot_enrollment_adds_up() {
    let run = load_test(&["--spawn", "--json", "--clients", "10", "--payments", "300"]).await;
    assert_clean(&run, 300, 1);
    assert_eq!(count(&run.report, "/requests/sent"), 300);
    assert_eq!(count(&run.report, "/requests/duplicates"), 0);
    // The progress bar is drawn only on a terminal, and the report goes to
    // stdout alone.
    assert!(!run.stderr.contains("payments,"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_enrollments_add_up_each() {
    let run = load_test(&[
        "--spawn",
        "--json",
        "--clients",
        "10",
        "--payments",
        "300",
        "--enrollments",
        "5",
    ])
    .await;
    assert_clean(&run, 300, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_fifty_add_up() {
    let run = load_test(&[
        "--spawn",
        "--json",
        "--clients",
        "10",
        "--payments",
        "300",
        "--batch-size",
        "50",
    ])
    .await;
    assert_clean(&run, 300, 1);
    assert_eq!(count(&run.report, "/requests/sent"), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_requests_count_once() {
    let run = load_test(&[
        "--spawn",
        "--json",
        "--clients",
        "10",
        "--payments",
        "300",
        "--duplicate-percent",
        "20",
        "--seed",
        "7",
    ])
    .await;
    assert_clean(&run, 300, 1);
    let duplicates = count(&run.report, "/requests/duplicates");
    // About one request in five is sent twice.
    assert!((20..=120).contains(&duplicates), "{duplicates}");
    assert_eq!(count(&run.report, "/requests/sent"), 300 + duplicates);
    // Each duplicate's second answer is the replay of the first.
    assert_eq!(count(&run.report, "/payments/replayed"), duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_batches_over_many_enrollments_count_once() {
    let run = load_test(&[
        "--spawn",
        "--json",
        "--clients",
        "4",
        "--payments",
        "400",
        "--enrollments",
        "7",
        "--batch-size",
        "25",
        "--duplicate-percent",
        "50",
        "--seed",
        "3",
    ])
    .await;
    assert_clean(&run, 400, 7);
    let duplicates = count(&run.report, "/requests/duplicates");
    assert!(duplicates >= 1, "{duplicates}");
    assert_eq!(count(&run.report, "/requests/sent"), 16 + duplicates);
    assert_eq!(count(&run.report, "/payments/replayed"), 25 * duplicates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_report_shows_every_part() {
    let run = load_test(&["--spawn", "--clients", "5", "--payments", "100"]).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for part in [
        "acknowledged payments/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "errors           none",
        "peak RSS",
        "verdict          OK",
        "exactly once",
        "audit: 1 enrollment, 101 ledger entries",
    ] {
        assert!(
            run.stdout.contains(part),
            "{part:?} missing from:\n{}",
            run.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_is_loaded_and_a_verdict_without_audit_fails() {
    let (app, [writer]) =
        TestApp::spawn_with_tokens(Backend::Sqlite, [bursar_server::auth::Role::Writer]).await;
    let run = load_test(&[
        "--url",
        &app.base,
        "--token",
        &writer,
        "--json",
        "--clients",
        "4",
        "--payments",
        "40",
    ])
    .await;
    // The payments add up, but a writer may not run the audit, so the
    // verdict cannot be clean.
    assert_eq!(run.code, Some(1), "{:#}\n{}", run.report, run.stderr);
    let verdict = &run.report["verdict"];
    assert_eq!(verdict["ok"], false);
    assert_eq!(verdict["amounts_match"], true);
    assert_eq!(verdict["ledger_keys_once"], true);
    assert_eq!(verdict["audit_ok"], false);
    assert!(
        verdict["problems"][0]
            .as_str()
            .is_some_and(|problem| problem.contains("FORBIDDEN")),
        "{verdict}"
    );
    assert_eq!(count(&run.report, "/payments/acknowledged"), 40);
    assert_eq!(run.report["server"]["peak_rss_bytes"], Value::Null);
    // The admin sees the same payments in the server's own audit.
    app.assert_audit_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_and_a_missing_token_are_refused_plainly() {
    let run = load_test(&["--spawn", "--amount-min", "500", "--amount-max", "100"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("--amount-min"), "{}", run.stderr);

    let app = TestApp::spawn(Backend::Sqlite).await;
    let run = load_test(&["--url", &app.base, "--payments", "10"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("UNAUTHENTICATED"), "{}", run.stderr);
    assert!(run.stderr.contains("--token"), "{}", run.stderr);
}

/// Checkout flows from twenty clients over two enrollments: holds captured,
/// voided and left to expire, each ended exactly once, and nothing held
/// after the run's wait for expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_flows_capture_each_hold_once_and_release_the_rest() {
    let run = load_test(&[
        "--spawn",
        "--json",
        "--holds",
        "--clients",
        "20",
        "--payments",
        "200",
        "--enrollments",
        "2",
        "--void-percent",
        "20",
        "--expire-percent",
        "10",
        "--seed",
        "11",
    ])
    .await;
    let report = &run.report;
    assert_eq!(run.code, Some(0), "{report:#}\n{}", run.stderr);
    let verdict = &report["verdict"];
    assert_eq!(verdict["ok"], true, "{report:#}");
    for check in [
        "amounts_match",
        "captured_once",
        "holds_released",
        "audit_ok",
    ] {
        assert_eq!(verdict[check], true, "{check}: {report:#}");
    }
    assert_eq!(verdict["problems"], serde_json::json!([]));
    assert_eq!(count(report, "/flows/started"), 200);
    assert_eq!(count(report, "/flows/finished"), 200);
    let (captured, voided, expiring) = (
        count(report, "/flows/captured"),
        count(report, "/flows/voided"),
        count(report, "/flows/left_to_expire"),
    );
    assert_eq!(captured + voided + expiring, 200);
    // With seed 11 every ending occurs.
    assert!(captured > 0 && voided > 0 && expiring > 0, "{report:#}");
    assert_eq!(count(report, "/verdict/ledger_captures"), captured);
    assert_eq!(count(report, "/verdict/ledger_voids"), voided);
    assert_eq!(count(report, "/verdict/ledger_expiries"), expiring);
    // Two ENROLL entries, then a HOLD and one ending per flow.
    assert_eq!(count(report, "/verdict/audit_entries"), 2 + 2 * 200);
    // Holds left to expire live 30 s; the run waited for them.
    assert!(
        report["expiry_wait_seconds"].as_f64() >= Some(25.0),
        "{report:#}"
    );
    let amount = count(report, "/flows/captured_amount");
    assert!(
        (100 * captured..=10_000 * captured).contains(&amount),
        "{amount}"
    );
    assert!(report["throughput"]["checkout_flows_per_second"].as_f64() > Some(0.0));
    assert_eq!(
        count(report, "/latency_ms/flow/requests"),
        200,
        "one flow latency per finished flow"
    );
    assert_eq!(count(report, "/errors/unknown"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_arguments_are_checked() {
    let run = load_test(&["--spawn", "--holds", "--batch-size", "5"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--holds"), "{}", run.stderr);
    let run = load_test(&[
        "--spawn",
        "--holds",
        "--void-percent",
        "60",
        "--expire-percent",
        "50",
    ])
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("at most 100"), "{}", run.stderr);
    // The shares mean nothing without --holds.
    let run = load_test(&["--spawn", "--void-percent", "10"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--holds"), "{}", run.stderr);
}

/// Applies every payment, but answers every seventh one with a 500 instead
/// of its 201: the client cannot tell whether it was applied.
async fn lose_every_seventh_answer(
    State(seen): State<Arc<AtomicUsize>>,
    request: Request,
    next: Next,
) -> Response {
    if !request.uri().path().ends_with("/payments") {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    if (seen.fetch_add(1, Ordering::SeqCst) + 1) % 7 != 0 {
        return response;
    }
    let body = serde_json::json!({"error": {"code": "INTERNAL", "message": "the answer was lost"}});
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(body),
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcomes_are_resent_with_their_keys_before_the_verdict() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = bursar_server::App::open(&db.url, Some(ADMIN_TOKEN))
        .await
        .expect("open the app");
    let seen = Arc::new(AtomicUsize::new(0));
    let router = app
        .router()
        .layer(from_fn_with_state(seen.clone(), lose_every_seventh_answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let run = load_test(&[
        "--url",
        &base,
        "--token",
        ADMIN_TOKEN,
        "--json",
        "--clients",
        "4",
        "--payments",
        "70",
    ])
    .await;
    let report = &run.report;
    assert_eq!(run.code, Some(0), "{report:#}\n{}", run.stderr);
    assert_eq!(report["verdict"]["ok"], true, "{report:#}");
    // Ten of the seventy answers were lost; resending those payments with
    // their keys found each one applied exactly once.
    assert_eq!(count(report, "/payments/acknowledged"), 60);
    assert_eq!(count(report, "/payments/unknown_after_load"), 10);
    assert_eq!(count(report, "/payments/reconciled_acknowledged"), 10);
    assert_eq!(count(report, "/payments/acknowledged_total"), 70);
    assert_eq!(count(report, "/verdict/ledger_payments"), 70);
    assert_eq!(count(report, "/errors/unknown"), 0);
    assert!(seen.load(Ordering::SeqCst) >= 80);
}
