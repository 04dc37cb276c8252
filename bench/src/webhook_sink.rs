//! Webhook delivery measured end to end: a receiver on this machine (which
//! verifies every signature, as a real one would), one endpoint registered
//! on a bursar server, payments driven over HTTP, and two figures: events
//! delivered per second to the one endpoint, and the lag from a payment's
//! 201 to the arrival of its `payment.recorded` webhook (p50, p99). Then
//! the endpoint is replayed from its start, and the rate at which the same
//! events arrive again is delivery alone, with no payment competing.
//!
//! Usage (from the repository root, after `cargo build --release -p bursar
//! -p bursar-bench`):
//!
//!   target/release/webhook-sink [--duration 10] [--clients 32]
//!       [--enrollments 100] [--rate 0] [--bursar target/release/bursar]
//!       [--no-webhook] [--json]
//!
//! It starts its own `bursar serve --webhooks-allow-private` on a temporary
//! SQLite file. `--rate N` paces payments to N a second (0: as fast as the
//! clients go): the lag then measures the pipeline rather than a backlog.
//! `--no-webhook` registers no endpoint: the same payments alone, to see
//! what delivery costs the write path.
//!
//! `--load-test` drives the payments with `bursar load-test --url` (its
//! own enrollments, `--clients` of them paying into `--enrollments`) instead
//! of the driver here, and prints load-test's JSON report with the events
//! the endpoint received while it ran: `bench/run.py` runs every case so,
//! events on. Arguments after `--` go to `bursar load-test` as they are
//! (`-- --batch-size 8192`). `--database URL` serves that database instead
//! of a temporary SQLite file (a PostgreSQL one, for instance);
//! `--ceiling` starts the server with `--bench-http-ceiling` (payments
//! answered without being recorded: the HTTP ceiling, whose verdict is
//! expected to fail). The report then also holds the server's peak RSS
//! (`server_peak_rss_bytes`, VmHWM) and, for a SQLite file, its size after
//! a clean stop and a truncating checkpoint with the ledger's row count
//! (`database_bytes`, `ledger_entries`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "webhook-sink-admin-token";

/// How long to wait for the last webhooks after the payments stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

struct Options {
    duration: Duration,
    clients: usize,
    enrollments: usize,
    rate: u64,
    bursar: String,
    json: bool,
    /// Register no endpoint: the payments alone, as a baseline.
    no_webhook: bool,
    /// Drive the payments with `bursar load-test` and print its report.
    load_test: bool,
    /// The database to serve; a temporary SQLite file when `None`.
    database: Option<String>,
    /// Serve with `--bench-http-ceiling`.
    ceiling: bool,
    /// More arguments for `bursar load-test`.
    load_test_arguments: Vec<String>,
}

fn options() -> Options {
    let mut options = Options {
        duration: Duration::from_secs(10),
        clients: 32,
        enrollments: 100,
        rate: 0,
        bursar: "target/release/bursar".into(),
        json: false,
        no_webhook: false,
        load_test: false,
        database: None,
        ceiling: false,
        load_test_arguments: Vec::new(),
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(name) = arguments.next() {
        let mut value = || {
            arguments
                .next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match name.as_str() {
            "--duration" => {
                options.duration = Duration::from_secs(value().parse().expect("seconds"))
            }
            "--clients" => options.clients = value().parse().expect("clients"),
            "--enrollments" => options.enrollments = value().parse().expect("enrollments"),
            "--rate" => options.rate = value().parse().expect("payments a second"),
            "--bursar" => options.bursar = value(),
            "--json" => options.json = true,
            "--no-webhook" => options.no_webhook = true,
            "--load-test" => options.load_test = true,
            "--database" => options.database = Some(value()),
            "--ceiling" => options.ceiling = true,
            "--" => {
                options.load_test_arguments = arguments.by_ref().collect();
            }
            other => panic!("unknown argument {other}"),
        }
    }
    options
}

/// What the receiver saw.
struct Sink {
    key: Mutex<Vec<u8>>,
    events: AtomicUsize,
    bad: AtomicUsize,
    /// Payment idempotency key → when its webhook arrived.
    arrivals: Mutex<HashMap<String, Instant>>,
    last_arrival: Mutex<Option<Instant>>,
}

async fn receive(
    axum::extract::State(sink): axum::extract::State<Arc<Sink>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let arrived = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    };
    let key = sink.key.lock().expect("lock").clone();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    if header("webhook-signature") != expected {
        sink.bad.fetch_add(1, Ordering::Relaxed);
        return axum::http::StatusCode::BAD_REQUEST;
    }
    sink.events.fetch_add(1, Ordering::Relaxed);
    *sink.last_arrival.lock().expect("lock") = Some(arrived);
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if event["type"] == "payment.recorded"
        && let Some(key) = event["data"]["entry"]["idempotency_key"].as_str()
    {
        sink.arrivals
            .lock()
            .expect("lock")
            .entry(key.to_owned())
            .or_insert(arrived);
    }
    axum::http::StatusCode::OK
}

/// A private `bursar serve` on a temporary SQLite file (or the given
/// database); killed on drop.
struct Server {
    child: std::process::Child,
    base: String,
    /// The SQLite file served, when it is one.
    sqlite: Option<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The server's peak resident memory so far (`VmHWM`), in bytes.
    fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    /// Stops the server cleanly (SIGTERM) and, for a SQLite file, returns
    /// its size after a truncating checkpoint and the ledger's row count.
    fn stop_and_measure(mut self) -> Option<(u64, u64)> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let path = self.sqlite.clone()?;
        let connection = rusqlite::Connection::open(&path).ok()?;
        connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .ok()?;
        let entries: i64 = connection
            .query_row("SELECT count(*) FROM ledger", [], |row| row.get(0))
            .ok()?;
        drop(connection);
        let bytes = std::fs::metadata(&path).ok()?.len();
        Some((bytes, entries as u64))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bursar: &str, database: Option<&str>, ceiling: bool) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bursar.db");
    let (database, sqlite) = match database {
        Some(url) => (url.to_owned(), None),
        None => (format!("sqlite://{}", file.display()), Some(file)),
    };
    let mut child = Command::new(bursar)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &database])
        .arg("--webhooks-allow-private")
        .args(ceiling.then_some("--bench-http-ceiling"))
        .env("BURSAR_ADMIN_TOKEN", TOKEN)
        .env("BURSAR_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {bursar}: {error}"));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("bursar serve exited before listening")
            .expect("stdout");
        if let Some(address) = line.strip_prefix("bursar listening on ") {
            break address.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        base,
        sqlite,
        _dir: dir,
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let options = options();
    let server = start_server(
        &options.bursar,
        options.database.as_deref(),
        options.ceiling,
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(options.clients)
        .build()
        .expect("client");

    let sink = Arc::new(Sink {
        key: Mutex::new(Vec::new()),
        events: AtomicUsize::new(0),
        bad: AtomicUsize::new(0),
        arrivals: Mutex::new(HashMap::new()),
        last_arrival: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("address"));
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(sink.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let mut webhook_id = String::new();
    let mut started_after = 0;
    if !options.no_webhook {
        let created: Value = client
            .post(format!("{}/v1/webhooks", server.base))
            .bearer_auth(TOKEN)
            .json(&json!({"url": hook}))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("register JSON");
        let secret = created["secret"].as_str().expect("a secret");
        webhook_id = created["id"].as_str().expect("an id").to_owned();
        started_after = created["started_after"].as_u64().expect("started_after");
        *sink.key.lock().expect("lock") = STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .expect("base64");
    }
    if options.load_test {
        let mut report = run_load_test(&options, &server.base, &sink).await;
        report["server_peak_rss_bytes"] = json!(server.peak_rss_bytes());
        if let Some((bytes, entries)) = server.stop_and_measure() {
            report["database_bytes"] = json!(bytes);
            report["ledger_entries"] = json!(entries);
        }
        println!("{report}");
        return;
    }
    for enrollment in 0..options.enrollments {
        let status = client
            .put(format!("{}/v1/users/u{enrollment}/courses/c", server.base))
            .bearer_auth(TOKEN)
            .json(&json!({"currency": "USD", "price": 1_000_000_000_000_i64}))
            .send()
            .await
            .expect("enroll")
            .status();
        assert!(status.is_success(), "enroll: {status}");
    }
    // Let the enrollments' own events through before measuring.
    let settle = Instant::now();
    while !options.no_webhook
        && sink.events.load(Ordering::Relaxed) < options.enrollments
        && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let events_before = sink.events.load(Ordering::Relaxed);

    let acknowledged: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + options.duration;
    let mut payers = Vec::new();
    for payer in 0..options.clients {
        let client = client.clone();
        let base = server.base.clone();
        let acknowledged = acknowledged.clone();
        let sent = sent.clone();
        let (clients, enrollments, rate) = (options.clients, options.enrollments, options.rate);
        payers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop_at {
                let number = sent.fetch_add(1, Ordering::Relaxed);
                if rate > 0 {
                    let due = started + Duration::from_secs_f64(number as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                    if Instant::now() >= stop_at {
                        break;
                    }
                }
                let enrollment = (payer + n as usize * clients) % enrollments;
                let key = format!("p{payer}-{n}");
                n += 1;
                let answer = client
                    .post(format!("{base}/v1/users/u{enrollment}/courses/c/payments"))
                    .bearer_auth(TOKEN)
                    .header("Idempotency-Key", &key)
                    .json(&json!({"amount": 1}))
                    .send()
                    .await;
                if let Ok(response) = answer
                    && response.status() == reqwest::StatusCode::CREATED
                {
                    let at = Instant::now();
                    acknowledged.lock().expect("lock").insert(key, at);
                }
            }
        }));
    }
    for payer in payers {
        payer.await.expect("payer");
    }
    let payments_done = Instant::now();
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let drain = Instant::now();
    loop {
        let arrived = {
            let arrivals = sink.arrivals.lock().expect("lock");
            acknowledged
                .keys()
                .filter(|key| arrivals.contains_key(*key))
                .count()
        };
        if options.no_webhook || arrived == acknowledged.len() {
            break;
        }
        assert!(
            drain.elapsed() < DRAIN_DEADLINE,
            "only {arrived} of {} payment webhooks arrived",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = sink.arrivals.lock().expect("lock").clone();
    let mut lags: Vec<Duration> = acknowledged
        .iter()
        .filter_map(|(key, at)| Some(arrivals.get(key)?.saturating_duration_since(*at)))
        .collect();
    lags.sort();
    let last = sink
        .last_arrival
        .lock()
        .expect("lock")
        .unwrap_or(payments_done);
    let events = sink.events.load(Ordering::Relaxed) - events_before;
    let window = last.duration_since(started).as_secs_f64();
    // Pure delivery: the same events sent again by a replay, with no
    // payment competing for the machine.
    let mut replay_per_second = f64::NAN;
    if !options.no_webhook {
        let before = sink.events.load(Ordering::Relaxed);
        // The enrollments' own events are replayed too.
        let replayed = events + options.enrollments;
        let target = before + replayed;
        let replay_started = Instant::now();
        let (id, after) = (webhook_id.clone(), started_after);
        let status = client
            .post(format!("{}/v1/webhooks/{id}/replay", server.base))
            .bearer_auth(TOKEN)
            .json(&json!({"after": after}))
            .send()
            .await
            .expect("replay")
            .status();
        assert!(status.is_success(), "replay: {status}");
        while sink.events.load(Ordering::Relaxed) < target {
            assert!(
                replay_started.elapsed() < DRAIN_DEADLINE,
                "the replay did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let last = sink
            .last_arrival
            .lock()
            .expect("lock")
            .unwrap_or(replay_started);
        replay_per_second = replayed as f64 / last.duration_since(replay_started).as_secs_f64();
    }
    let report = json!({
        "enrollments": options.enrollments,
        "clients": options.clients,
        "rate": options.rate,
        "duration_s": options.duration.as_secs(),
        "payments_acknowledged": acknowledged.len(),
        "payments_per_second": acknowledged.len() as f64 / payments_done.duration_since(started).as_secs_f64(),
        "events_delivered": events,
        "events_delivered_per_second": events as f64 / window,
        "drain_after_payments_s": last.saturating_duration_since(payments_done).as_secs_f64(),
        "lag_ms": {"p50": percentile(&lags, 0.50), "p99": percentile(&lags, 0.99), "max": percentile(&lags, 1.0)},
        "replay_events_per_second": replay_per_second,
        "bad_signatures": sink.bad.load(Ordering::Relaxed),
    });
    if options.json {
        println!("{report}");
    } else {
        println!(
            "{} enrollments, {} clients{}: {} payments ({:.0}/s), {} events delivered to one endpoint at {:.0}/s \
             (the last {:.2} s after the payments stopped); payment 201 → webhook lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             the same events replayed at {:.0}/s; bad signatures {}",
            options.enrollments,
            options.clients,
            if options.rate > 0 {
                format!(", paced at {}/s", options.rate)
            } else {
                String::new()
            },
            acknowledged.len(),
            report["payments_per_second"].as_f64().unwrap_or(0.0),
            events,
            report["events_delivered_per_second"]
                .as_f64()
                .unwrap_or(0.0),
            report["drain_after_payments_s"].as_f64().unwrap_or(0.0),
            percentile(&lags, 0.50),
            percentile(&lags, 0.99),
            percentile(&lags, 1.0),
            replay_per_second,
            sink.bad.load(Ordering::Relaxed),
        );
    }
    drop(server);
}

/// `--load-test`: the payments of `bursar load-test --url` against the
/// server, with the endpoint (if any) registered; load-test's report with
/// `webhook_events_during_run` added.
async fn run_load_test(options: &Options, base: &str, sink: &Sink) -> Value {
    let before = sink.events.load(Ordering::Relaxed);
    let output = tokio::process::Command::new(&options.bursar)
        .args(["load-test", "--url", base, "--token", TOKEN, "--json"])
        .args(["--clients", &options.clients.to_string()])
        .args(["--enrollments", &options.enrollments.to_string()])
        .args(["--duration", &options.duration.as_secs().to_string()])
        .args(&options.load_test_arguments)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run bursar load-test");
    // The ceiling records nothing, so its verdict fails by design.
    assert!(
        output.status.success() || options.ceiling,
        "bursar load-test failed"
    );
    let mut report: Value = serde_json::from_slice(&output.stdout).expect("load-test JSON");
    report["webhook_events_during_run"] = json!(sink.events.load(Ordering::Relaxed) - before);
    report["webhook_bad_signatures"] = json!(sink.bad.load(Ordering::Relaxed));
    report
}
