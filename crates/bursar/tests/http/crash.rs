//! Crash tests with the real binary: `bursar serve` killed with SIGKILL in
//! the middle of concurrent payments loses no acknowledged payment and
//! applies none twice, and SIGTERM drains every request in flight before the
//! process exits 0.

use crate::cli::{Serve, audit, sqlite_url};
use crate::helpers::{ADMIN_TOKEN, pay_raw as pay};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Concurrent clients paying at once.
const PAYERS: usize = 8;

/// The enrollments the payers pay into, all of user `u1`.
const COURSES: [&str; 3] = ["c1", "c2", "c3"];

/// Large enough that no payment of these tests is ever an overpayment.
const PRICE: i64 = 1_000_000_000;

/// How long one request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// One payment request a payer sent, and whether it was acknowledged.
#[derive(Debug, Clone)]
struct Attempt {
    course: &'static str,
    key: String,
    amount: i64,
    /// The body of the 201 answer, if one came.
    answer: Option<String>,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client")
}

async fn enroll(client: &reqwest::Client, serve: &Serve, course: &str) {
    let response = client
        .put(serve.url(&format!("/v1/users/u1/courses/{course}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"currency": "USD", "price": PRICE}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// Starts `PAYERS` clients that each pay, one request after another with
/// fresh keys, until a request goes unanswered. Every acknowledged payment
/// bumps `acked`; the one that makes it reach `enough_at` wakes `enough`.
fn start_payers(
    base: &str,
    name: &'static str,
    acked: Arc<AtomicUsize>,
    enough_at: usize,
    enough: Arc<Notify>,
) -> Vec<tokio::task::JoinHandle<Vec<Attempt>>> {
    (0..PAYERS)
        .map(|payer| {
            let base = base.to_owned();
            let acked = acked.clone();
            let enough = enough.clone();
            tokio::spawn(async move {
                let client = client();
                let mut attempts = Vec::new();
                for n in 0usize.. {
                    assert!(n < 100_000, "payer {payer} was never cut off");
                    let course = COURSES[(payer + n) % COURSES.len()];
                    let key = format!("{name}-{payer}-{n}");
                    let amount = 1 + ((payer * 31 + n * 7) % 97) as i64;
                    let mut attempt = Attempt {
                        course,
                        key,
                        amount,
                        answer: None,
                    };
                    match pay(&client, &base, course, &attempt.key, amount).await {
                        Ok((StatusCode::CREATED, replayed, body)) => {
                            assert!(!replayed, "a fresh key cannot be a replay: {body}");
                            attempt.answer = Some(body);
                            attempts.push(attempt);
                            if acked.fetch_add(1, Ordering::SeqCst) + 1 == enough_at {
                                enough.notify_one();
                            }
                        }
                        // The write queue is full; the request stays
                        // unacknowledged and is settled after the restart.
                        Ok((StatusCode::SERVICE_UNAVAILABLE, _, _)) => attempts.push(attempt),
                        Ok((status, _, body)) => {
                            panic!("payment {} answered {status}: {body}", attempt.key)
                        }
                        Err(_) => {
                            attempts.push(attempt);
                            return attempts;
                        }
                    }
                }
                unreachable!("the loop only ends by returning")
            })
        })
        .collect()
}

async fn collect(payers: Vec<tokio::task::JoinHandle<Vec<Attempt>>>) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    for payer in payers {
        let finished = tokio::time::timeout(REQUEST_TIMEOUT * 2, payer)
            .await
            .expect("a payer did not stop after the server went away");
        attempts.extend(finished.expect("a payer failed"));
    }
    attempts
}

/// Sends a payment until it is answered, as a client retrying with the same
/// key and body would; returns whether the answer was a replay and its body.
async fn settle(client: &reqwest::Client, base: &str, attempt: &Attempt) -> (bool, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match pay(client, base, attempt.course, &attempt.key, attempt.amount).await {
            Ok((StatusCode::CREATED, replayed, body)) => return (replayed, body),
            Ok((StatusCode::SERVICE_UNAVAILABLE, _, _)) | Err(_) => {}
            Ok((status, _, body)) => {
                panic!("retrying {} answered {status}: {body}", attempt.key)
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retrying {} never got an answer",
            attempt.key
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every PAYMENT entry of `u1/course` (key, amount), and its `amount_paid`.
pub(crate) async fn payments_in_ledger(
    client: &reqwest::Client,
    serve: &Serve,
    course: &str,
) -> (Vec<(String, i64)>, i64) {
    let mut payments = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = client
            .get(serve.url(&format!(
                "/v1/users/u1/courses/{course}/ledger?after={after}&limit=1000"
            )))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("ledger")
            .json()
            .await
            .expect("ledger JSON");
        let entries = page["entries"].as_array().expect("entries").clone();
        let Some(last) = entries.last() else {
            break;
        };
        after = last["seq"].as_u64().expect("seq");
        for entry in &entries {
            if entry["kind"] == "PAYMENT" {
                payments.push((
                    entry["idempotency_key"]
                        .as_str()
                        .expect("a payment has a key")
                        .to_owned(),
                    entry["amount"].as_i64().expect("amount"),
                ));
            }
        }
    }
    let enrollment: Value = client
        .get(serve.url(&format!("/v1/users/u1/courses/{course}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("enrollment")
        .json()
        .await
        .expect("enrollment JSON");
    let amount_paid = enrollment["amount_paid"].as_i64().expect("amount_paid");
    (payments, amount_paid)
}

/// Checks the ledgers against the attempts: every acknowledged payment is in
/// exactly once with its amount, nothing is in that was never sent, and each
/// `amount_paid` is the sum of its ledger's payments. Returns how many
/// payments the ledgers hold.
async fn check_ledgers(client: &reqwest::Client, serve: &Serve, attempts: &[Attempt]) -> usize {
    let sent: HashMap<&str, &Attempt> = attempts
        .iter()
        .map(|attempt| (attempt.key.as_str(), attempt))
        .collect();
    assert_eq!(sent.len(), attempts.len(), "keys are unique");
    let mut found: HashMap<String, usize> = HashMap::new();
    for course in COURSES {
        let (payments, amount_paid) = payments_in_ledger(client, serve, course).await;
        let mut sum = 0;
        for (key, amount) in payments {
            let attempt = sent
                .get(key.as_str())
                .unwrap_or_else(|| panic!("the ledger holds a payment never sent: {key}"));
            assert_eq!(
                attempt.course, course,
                "{key} landed in the wrong enrollment"
            );
            assert_eq!(attempt.amount, amount, "{key} has the wrong amount");
            sum += amount;
            *found.entry(key).or_default() += 1;
        }
        assert_eq!(
            amount_paid, sum,
            "u1/{course}: amount_paid is not the sum of its ledger's payments"
        );
    }
    for attempt in attempts.iter().filter(|attempt| attempt.answer.is_some()) {
        assert_eq!(
            found.get(&attempt.key),
            Some(&1),
            "acknowledged payment {} should be in the ledger exactly once",
            attempt.key
        );
    }
    assert!(
        found.values().all(|&count| count == 1),
        "a payment was applied twice"
    );
    found.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_payment() {
    const ACKED_BEFORE_KILL: usize = 150;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&dir.path().join("bursar.db"));
    let client = client();

    let mut first = Serve::start(&url, Some(ADMIN_TOKEN), &dir.path().join("first.log")).await;
    for course in COURSES {
        enroll(&client, &first, course).await;
    }
    let acked = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let payers = start_payers(
        &first.base,
        "kill",
        acked.clone(),
        ACKED_BEFORE_KILL,
        enough.clone(),
    );
    tokio::time::timeout(Duration::from_secs(60), enough.notified())
        .await
        .expect("the payers never got enough payments acknowledged");
    // The payers keep sending while the process dies under them.
    first.kill().await;
    let attempts = collect(payers).await;
    let acknowledged: Vec<&Attempt> = attempts
        .iter()
        .filter(|attempt| attempt.answer.is_some())
        .collect();
    let unacknowledged: Vec<&Attempt> = attempts
        .iter()
        .filter(|attempt| attempt.answer.is_none())
        .collect();
    assert!(acknowledged.len() >= ACKED_BEFORE_KILL);
    assert!(
        unacknowledged.len() >= PAYERS,
        "every payer ends with a request the kill cut off"
    );

    let mut second = Serve::start(&url, Some(ADMIN_TOKEN), &dir.path().join("second.log")).await;
    // Every unanswered request is retried with the same key and body until it
    // is answered: either it committed before the kill (a replay) or it never
    // did (applied now). Both are fine; neither may count twice.
    let mut committed_before_kill = 0;
    for attempt in &unacknowledged {
        let (replayed, _) = settle(&client, &second.base, attempt).await;
        committed_before_kill += usize::from(replayed);
    }
    // Retrying acknowledged payments changes nothing and answers the original
    // body, byte for byte.
    let step = (acknowledged.len() / 25).max(1);
    for attempt in acknowledged.iter().step_by(step).chain(acknowledged.last()) {
        let (status, replayed, body) = pay(
            &client,
            &second.base,
            attempt.course,
            &attempt.key,
            attempt.amount,
        )
        .await
        .expect("retry an acknowledged payment");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(replayed, "{} should be a replay", attempt.key);
        assert_eq!(
            Some(&body),
            attempt.answer.as_ref(),
            "{}: a replay answers the original body",
            attempt.key
        );
    }

    // After the retries every payment sent is in the ledger exactly once.
    let in_ledger = check_ledgers(&client, &second, &attempts).await;
    assert_eq!(
        in_ledger,
        attempts.len(),
        "every payment sent is in the ledger once it has been answered"
    );
    eprintln!(
        "{} acknowledged before the kill, {} cut off ({committed_before_kill} of them had committed)",
        acknowledged.len(),
        unacknowledged.len()
    );

    let exit = second.terminate().await;
    assert!(exit.success(), "serve should exit 0 on SIGTERM: {exit}");
    let finished = audit(&url).await;
    assert_eq!(
        finished.code,
        Some(0),
        "audit after the crash: {}{}",
        finished.stdout,
        finished.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_exits_zero() {
    const ACKED_BEFORE_TERM: usize = 40;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&dir.path().join("bursar.db"));
    let client = client();

    let mut first = Serve::start(&url, Some(ADMIN_TOKEN), &dir.path().join("first.log")).await;
    for course in COURSES {
        enroll(&client, &first, course).await;
    }
    let acked = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let payers = start_payers(
        &first.base,
        "term",
        acked.clone(),
        ACKED_BEFORE_TERM,
        enough.clone(),
    );
    tokio::time::timeout(Duration::from_secs(60), enough.notified())
        .await
        .expect("the payers never got enough payments acknowledged");
    let exit = first.terminate().await;
    assert!(exit.success(), "serve should exit 0 on SIGTERM: {exit}");
    let attempts = collect(payers).await;
    let acknowledged = attempts
        .iter()
        .filter(|attempt| attempt.answer.is_some())
        .count();
    assert!(acknowledged >= ACKED_BEFORE_TERM);

    let mut second = Serve::start(&url, Some(ADMIN_TOKEN), &dir.path().join("second.log")).await;
    let in_ledger = check_ledgers(&client, &second, &attempts).await;
    assert!(in_ledger >= acknowledged);
    let exit = second.terminate().await;
    assert!(exit.success(), "serve should exit 0 on SIGTERM: {exit}");
    let finished = audit(&url).await;
    assert_eq!(
        finished.code,
        Some(0),
        "audit after the drain: {}{}",
        finished.stdout,
        finished.stderr
    );
}
