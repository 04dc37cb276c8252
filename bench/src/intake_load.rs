//! Verified intake events per second: many concurrent senders post signed
//! Stripe `checkout.session.completed` events (built from Stripe's example
//! Checkout Session, about 4 KiB each, every one a new PaymentIntent of one
//! cent) to `POST /v1/intake/stripe` of a real `bursar serve`, which checks
//! each signature on the raw body, maps the event and commits the payment.
//! Prints one JSON line per run and, last, the median run; then checks that
//! the enrollments were paid exactly the accepted events.
//!
//! Usage: `intake-load BURSAR_BINARY [SENDERS] [SECONDS] [RUNS] [DATABASE_URL]`
//! (defaults: 50 senders, 10 s, 3 runs, a fresh SQLite file). The server is
//! started on a free port with its own admin token and webhook secret, and
//! stopped at the end.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "whsec_YmVuY2htYXJrIHNlY3JldCBvZiB0aGUgZW5kcG9pbnQ";
const ADMIN: &str = "bench-admin-token-0123456789abcdef";

/// Stripe's example Checkout Session, as the intake tests use it.
const SESSION: &str =
    include_str!("../../crates/bursar/tests/http/fixtures/stripe/checkout.session.json");
const ENVELOPE: &str = include_str!("../../crates/bursar/tests/http/fixtures/stripe/event.json");

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

fn signature(timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("t={timestamp},v1={hex}")
}

/// The body of a paid checkout of one cent, with `{ID}` where each event
/// puts its own id (of the event, the session and the PaymentIntent) and
/// `{USER}` where the enrollment's user id goes: filled in by text
/// replacement, so the load generator spends its time sending, not
/// building JSON.
fn template() -> String {
    let mut object: Value = serde_json::from_str(SESSION).expect("fixture");
    object["id"] = "cs_bench_{ID}".into();
    object["payment_intent"] = "pi_bench_{ID}".into();
    object["amount_total"] = 1.into();
    object["currency"] = "usd".into();
    object["payment_status"] = "paid".into();
    object["metadata"] = json!({"bursar_user_id": "bench-{USER}", "bursar_course_id": "c"});
    let mut event: Value = serde_json::from_str(ENVELOPE).expect("fixture");
    event["id"] = "evt_bench_{ID}".into();
    event["type"] = "checkout.session.completed".into();
    event["created"] = now_unix().into();
    event["data"]["object"] = object;
    serde_json::to_string(&event).expect("serialize")
}

fn event(template: &str, user: usize, serial: u64) -> Vec<u8> {
    template
        .replace("{ID}", &format!("{user}_{serial}"))
        .replace("{USER}", &user.to_string())
        .into_bytes()
}

struct Run {
    accepted: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
}

async fn run(
    client: &reqwest::Client,
    base: &str,
    senders: usize,
    duration: Duration,
    serial: Arc<AtomicU64>,
) -> Run {
    let template = Arc::new(template());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for user in 0..senders {
        let (client, url, stop, serial) = (
            client.clone(),
            format!("{base}/v1/intake/stripe"),
            stop.clone(),
            serial.clone(),
        );
        let template = template.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = event(&template, user, serial.fetch_add(1, Ordering::Relaxed));
                let header = signature(now_unix(), &body);
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("Stripe-Signature", header)
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = response.status();
                let answer: Value = response.json().await.expect("json");
                latencies.push(sent.elapsed().as_micros() as u64);
                assert!(
                    status == 200 && answer["result"]["entry"]["kind"] == "PAYMENT",
                    "{status}: {answer}"
                );
                accepted += 1;
            }
            (accepted, latencies)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Run {
        accepted: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (accepted, latencies) = task.await.expect("sender");
        total.accepted += accepted;
        total.latencies_us.extend(latencies);
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    total
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    if arguments.len() < 2 {
        eprintln!("usage: intake-load BURSAR_BINARY [SENDERS] [SECONDS] [RUNS] [DATABASE_URL]");
        std::process::exit(2);
    }
    let senders: usize = arguments
        .get(2)
        .map_or(50, |text| text.parse().expect("SENDERS"));
    let seconds: u64 = arguments
        .get(3)
        .map_or(10, |text| text.parse().expect("SECONDS"));
    let runs: usize = arguments
        .get(4)
        .map_or(3, |text| text.parse().expect("RUNS"));
    let directory = std::env::temp_dir().join(format!("bursar-intake-load-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let database = arguments
        .get(5)
        .cloned()
        .unwrap_or_else(|| format!("sqlite://{}", directory.join("bursar.db").display()));
    let mut server = Command::new(&arguments[1])
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &database])
        .env("BURSAR_ADMIN_TOKEN", ADMIN)
        .env("BURSAR_STRIPE_WEBHOOK_SECRETS", SECRET)
        .env("BURSAR_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start bursar serve");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("bursar serve printed its address")
            .expect("line");
        if let Some(address) = line.strip_prefix("bursar listening on ") {
            break address.trim().to_owned();
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(senders)
        .build()
        .expect("client");
    for user in 0..senders {
        let response = client
            .put(format!("{base}/v1/users/bench-{user}/courses/c"))
            .bearer_auth(ADMIN)
            .json(&json!({"currency": "USD", "price": 1_000_000_000_000i64}))
            .send()
            .await
            .expect("enroll");
        assert!(
            response.status().is_success(),
            "enroll: {}",
            response.status()
        );
    }
    let serial = Arc::new(AtomicU64::new(0));
    let mut rates = Vec::new();
    let mut accepted = 0;
    for index in 0..runs {
        let run = run(
            &client,
            &base,
            senders,
            Duration::from_secs(seconds),
            serial.clone(),
        )
        .await;
        accepted += run.accepted;
        let rate = run.accepted as f64 / run.seconds;
        println!(
            "{}",
            json!({"run": index + 1, "senders": senders, "events": run.accepted,
                "seconds": (run.seconds * 100.0).round() / 100.0,
                "events_per_second": rate.round(),
                "p50_ms": percentile(&run.latencies_us, 0.5),
                "p99_ms": percentile(&run.latencies_us, 0.99)})
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    // Every accepted event is one cent on one of the enrollments.
    let mut paid = 0;
    for user in 0..senders {
        let enrollment: Value = client
            .get(format!("{base}/v1/users/bench-{user}/courses/c"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        paid += enrollment["amount_paid"].as_u64().expect("amount_paid");
    }
    let verdict = if paid == accepted { "OK" } else { "FAILED" };
    println!(
        "{}",
        json!({"median_events_per_second": rates[rates.len() / 2].round(), "senders": senders,
            "runs": runs, "accepted": accepted, "paid": paid, "verdict": verdict})
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&directory);
    if paid != accepted {
        std::process::exit(1);
    }
}
