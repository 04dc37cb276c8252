//! Publishing to NATS JetStream (`--events-nats`), against the real NATS
//! server at 127.0.0.1:4222 (or `BURSAR_TEST_NATS_URL`), each test with a
//! stream and subject prefix of its own: a consumer sees every event once,
//! in order, with its subject, `Nats-Msg-Id` and body; a `bursar serve`
//! killed with SIGKILL mid-publishing and started again leaves every event
//! in the stream exactly once; and a NATS that cannot be reached slows no
//! payment, while the events follow once it can; a private `nats-server`
//! killed with SIGKILL mid-publishing and started again ends with every
//! event once, in order.

use crate::cli::{Serve, bursar};
use crate::events::read_all;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb};
use async_nats::jetstream;
use bursar_server::nats::NatsOptions;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

crate::conformance!(
    every_event_is_published_once_in_order,
    a_sigkill_mid_publishing_loses_no_event_and_duplicates_none,
    nats_down_at_start_slows_no_payment_and_the_events_follow,
    nats_killed_mid_publishing_and_restarted_loses_no_event_and_keeps_the_order,
);

/// The environment variable naming the NATS server the tests use.
const NATS_URL_VARIABLE: &str = "BURSAR_TEST_NATS_URL";

/// The server every development machine and CI runs.
const NATS_URL_DEFAULT: &str = "nats://127.0.0.1:4222";

/// How long the tests wait for events to reach the stream. Generous: the
/// machine may be busy; progress is polled, never slept for.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);

/// The lease the real processes use, so a restart takes over within
/// seconds of a SIGKILL (the least the command line allows).
const LEASE_SECONDS: &str = "2";

fn nats_url() -> String {
    std::env::var(NATS_URL_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| NATS_URL_DEFAULT.to_owned())
}

/// Whether the NATS tests run, decided once per test process: under
/// `CI=true` always (an unreachable server fails them); elsewhere an
/// unreachable server prints one line and the tests pass without running.
fn nats_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let url = nats_url();
        let address = url
            .split(',')
            .next()
            .unwrap_or_default()
            .rsplit("://")
            .next()
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        let reached = std::net::ToSocketAddrs::to_socket_addrs(&address)
            .map_err(|error| error.to_string())
            .and_then(|mut addresses| addresses.next().ok_or_else(|| "no address".to_owned()))
            .and_then(|address| {
                std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))
                    .map_err(|error| error.to_string())
            });
        match reached {
            Ok(_) => true,
            Err(error) if std::env::var("CI").is_ok_and(|value| value == "true") => panic!(
                "CI=true and the NATS tests cannot reach {url}: {error}; start \
                 `nats-server -js` there or set {NATS_URL_VARIABLE}"
            ),
            Err(error) => {
                eprintln!(
                    "skipping the NATS tests: cannot reach {url} ({error}); start `nats-server -js` \
                     or set {NATS_URL_VARIABLE}; set CI=true to make this a failure"
                );
                false
            }
        }
    })
}

/// A stream name and subject prefix no other test uses, and a client to
/// read the stream with.
struct Broker {
    jetstream: jetstream::Context,
    stream: String,
    prefix: String,
}

/// One message as the stream holds it.
struct Received {
    subject: String,
    msg_id: String,
    body: Value,
}

static STREAMS: AtomicU64 = AtomicU64::new(0);

impl Broker {
    async fn new() -> Broker {
        let unique = format!(
            "{}X{}X{}",
            std::process::id(),
            STREAMS.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_micros()
        );
        let client = async_nats::connect(nats_url())
            .await
            .expect("connect to NATS");
        let broker = Broker {
            jetstream: jetstream::new(client),
            stream: format!("TEST_{unique}"),
            prefix: format!("test{unique}.events"),
        };
        let _ = broker.jetstream.delete_stream(&broker.stream).await;
        broker
    }

    /// Publishing options for this broker's stream and prefix.
    fn options(&self) -> NatsOptions {
        let mut options = NatsOptions::new(nats_url());
        options.stream = self.stream.clone();
        options.subject_prefix = self.prefix.clone();
        options
    }

    /// `bursar serve` publishing to this broker's stream, with a short lease.
    async fn serve(&self, database_url: &str, log: &std::path::Path) -> Serve {
        let mut command = bursar();
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                database_url,
            ])
            .args(["--events-nats", &nats_url()])
            .args(["--events-nats-stream", &self.stream])
            .args(["--events-nats-subject-prefix", &self.prefix])
            .args(["--events-nats-lease", LEASE_SECONDS])
            .env("BURSAR_ADMIN_TOKEN", ADMIN_TOKEN);
        Serve::start_command(command, log).await
    }

    /// Messages in the stream; 0 while it does not exist.
    async fn count(&self) -> u64 {
        match self.jetstream.get_stream(&self.stream).await {
            Ok(stream) => stream.cached_info().state.messages,
            Err(_) => 0,
        }
    }

    /// Waits until the stream holds at least `count` messages.
    async fn wait_for(&self, count: u64) {
        let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
        while self.count().await < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream has {} of {count} messages after {} s",
                self.count().await,
                PUBLISH_DEADLINE.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every message of the stream, in stream order, read by an ordered
    /// consumer as any subscriber would.
    async fn read_all(&self) -> Vec<Received> {
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .expect("the stream exists");
        let count = stream.cached_info().state.messages;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .expect("create a consumer");
        let mut messages = consumer.messages().await.expect("consume");
        let mut received = Vec::new();
        while (received.len() as u64) < count {
            let message = tokio::time::timeout(PUBLISH_DEADLINE, messages.next())
                .await
                .expect("the consumer gets every message in time")
                .expect("the consumer goes on")
                .expect("a message");
            let msg_id = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get("Nats-Msg-Id"))
                .map(|value| value.as_str().to_owned())
                .expect("every message has a Nats-Msg-Id");
            received.push(Received {
                subject: message.subject.to_string(),
                msg_id,
                body: serde_json::from_slice(&message.payload).expect("a JSON body"),
            });
        }
        received
    }

    async fn delete(self) {
        self.jetstream
            .delete_stream(&self.stream)
            .await
            .expect("delete the test stream");
    }
}

/// The stream holds exactly the feed: the same events in the same order,
/// each on `<prefix>.<type>` with its id as `Nats-Msg-Id`, the body equal to
/// the event as `GET /v1/events` shows it.
fn assert_stream_is_the_feed(received: &[Received], feed: &[Value], prefix: &str) {
    assert_eq!(
        received.len(),
        feed.len(),
        "the stream should hold every event exactly once"
    );
    for (index, (message, event)) in received.iter().zip(feed).enumerate() {
        let event_type = event["type"].as_str().expect("type");
        assert_eq!(
            message.subject,
            format!("{prefix}.{event_type}"),
            "message {index}"
        );
        assert_eq!(message.msg_id, event["id"], "message {index}");
        assert_eq!(&message.body, event, "message {index}");
    }
}

/// A metric's value from `/metrics` text; `None` when it is not there.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// `count` payments of 1 into `user/course` in one `POST /v1/batch`.
async fn pay_in_bulk(
    client: &reqwest::Client,
    base: &str,
    course: &str,
    from: usize,
    count: usize,
) {
    let operations: Vec<Value> = (from..from + count)
        .map(|n| {
            json!({"user_id": "u1", "course_id": course, "kind": "payment",
                "idempotency_key": format!("bulk-{n}"), "body": {"amount": 1}})
        })
        .collect();
    let response = client
        .post(format!("{base}/v1/batch"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"operations": operations, "detail": "summary"}))
        .send()
        .await
        .expect("POST /v1/batch");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("batch JSON");
    let results = body["results"].as_array().expect("results");
    assert!(
        results.iter().all(|result| result["status"] == 201),
        "every payment of the batch is accepted"
    );
}

async fn enroll(client: &reqwest::Client, base: &str, course: &str, price: i64) {
    let response = client
        .put(format!("{base}/v1/users/u1/courses/{course}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"currency": "USD", "price": price}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// Events of every kind of entry, and more than one page of the
/// publisher's, go to the stream once each, in position order; the stream
/// is created with `<prefix>.>`; a clean stop saves the cursor at the last
/// event and gives up the lease.
async fn every_event_is_published_once_in_order(backend: Backend) {
    if !nats_available() {
        return;
    }
    let broker = Broker::new().await;
    let db = TestDb::new(backend).await;
    let app = bursar_server::App::open(&db.url, Some(ADMIN_TOKEN))
        .await
        .expect("open")
        .with_nats(broker.options());
    let app = TestApp::serve_app(app, db, backend).await;
    let client = reqwest::Client::new();

    // Paid in full in two payments (paid_in_full, access_granted), then
    // refunded (access_revoked); a price-0 enrollment; a hold captured and
    // one voided; a cancellation; and a bulk load longer than a page.
    app.enroll("u1", "c1", 1000).await;
    assert_eq!(app.pay("u1", "c1", "p1", 400).await.0, StatusCode::CREATED);
    assert_eq!(app.pay("u1", "c1", "p2", 600).await.0, StatusCode::CREATED);
    let (status, body) = app
        .post(
            "/v1/users/u1/courses/c1/refunds",
            "r1",
            json!({"amount": 100, "reason": "dropped the course"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.enroll("u1", "free", 0).await;
    app.enroll("u1", "c2", 500).await;
    let (status, hold) = app
        .post(
            "/v1/users/u1/courses/c2/holds",
            "h1",
            json!({"amount": 200}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let seq = hold["entry"]["seq"].as_u64().expect("hold seq");
    let (status, body) = app
        .post(
            &format!("/v1/users/u1/courses/c2/holds/{seq}/capture"),
            "h1c",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, hold) = app
        .post(
            "/v1/users/u1/courses/c2/holds",
            "h2",
            json!({"amount": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let seq = hold["entry"]["seq"].as_u64().expect("hold seq");
    let (status, body) = app
        .post(
            &format!("/v1/users/u1/courses/c2/holds/{seq}/void"),
            "h2v",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.enroll("u1", "gone", 300).await;
    let (status, body) = app
        .post("/v1/users/u1/courses/gone/cancel", "x1", json!({}))
        .await;
    assert!(status.is_success(), "{status} {body}");
    app.enroll("u1", "bulk", 1_000_000_000).await;
    pay_in_bulk(&client, &app.base, "bulk", 0, 1500).await;

    let feed = read_all(&client, &app.base, 0, 1000).await;
    assert!(feed.len() > 1500);
    broker.wait_for(feed.len() as u64).await;
    let received = broker.read_all().await;
    assert_stream_is_the_feed(&received, &feed, &broker.prefix);
    let types: std::collections::BTreeSet<&str> = received
        .iter()
        .map(|message| message.body["type"].as_str().expect("type"))
        .collect();
    assert!(types.len() >= 10, "events of many types: {types:?}");

    let stream = broker
        .jetstream
        .get_stream(&broker.stream)
        .await
        .expect("stream");
    assert_eq!(
        stream.cached_info().config.subjects,
        vec![format!("{}.>", broker.prefix)],
        "bursar creates the stream with the prefix's subjects"
    );
    let text = metrics(&client, &app.base).await;
    assert_eq!(metric(&text, "bursar_events_publisher_leader"), Some(1));
    let last = feed.last().expect("events")["position"].as_u64();
    assert_eq!(metric(&text, "bursar_events_publisher_position"), last);

    let db = app.stop().await;
    let store = bursar_store::Store::open(&db.url).await.expect("open");
    let cursor = store
        .publisher(&broker.options().publisher_name())
        .await
        .expect("read the cursor")
        .expect("the publisher's row");
    assert_eq!(
        Some(cursor.position),
        last,
        "the clean stop saved the cursor"
    );
    assert_eq!(cursor.lease_owner, None, "the clean stop gave up the lease");
    broker.delete().await;
}

/// A `bursar serve` killed with SIGKILL while it publishes a backlog, then
/// started again: the stream ends with every event exactly once and in
/// order, the new events after the restart included, and the restart goes
/// on after the stream's last event rather than from the saved cursor.
async fn a_sigkill_mid_publishing_loses_no_event_and_duplicates_none(backend: Backend) {
    if !nats_available() {
        return;
    }
    const BACKLOG_PAYMENTS: usize = 8192;
    let broker = Broker::new().await;
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();

    // A backlog of events written with no publisher.
    let mut loader = Serve::start(&db.url, Some(ADMIN_TOKEN), &dir.path().join("load.log")).await;
    enroll(&client, &loader.base, "c1", 1_000_000_000).await;
    pay_in_bulk(&client, &loader.base, "c1", 0, BACKLOG_PAYMENTS).await;
    assert!(loader.terminate().await.success());
    let backlog = 1 + BACKLOG_PAYMENTS as u64;

    // Killed as soon as publishing has begun.
    let mut first = broker.serve(&db.url, &dir.path().join("first.log")).await;
    broker.wait_for(1).await;
    first.kill().await;
    let before_kill = broker.count().await;
    let store = bursar_store::Store::open(&db.url).await.expect("open");
    let name = broker.options().publisher_name();
    let saved = store
        .publisher(&name)
        .await
        .expect("read the cursor")
        .expect("the publisher's row")
        .position;
    assert!(
        before_kill < backlog,
        "the kill should come mid-publishing: {before_kill} of {backlog} were published"
    );
    assert!(
        saved <= before_kill,
        "the cursor never passes what was acknowledged"
    );

    // Two servers start again: the one that takes the lease, once the dead
    // server's has passed, goes on after the stream's last event; new
    // events follow.
    let second = broker.serve(&db.url, &dir.path().join("second.log")).await;
    let third = broker.serve(&db.url, &dir.path().join("third.log")).await;
    for n in 0..5 {
        let (status, _, body) =
            crate::helpers::pay_raw(&client, &second.base, "c1", &format!("after-{n}"), 1)
                .await
                .expect("pay");
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let feed = read_all(&client, &second.base, 0, 1000).await;
    assert_eq!(feed.len() as u64, backlog + 5);
    let mut servers = [second, third];
    let leader = published_by_one(&client, &servers, &feed).await;
    let received = broker.read_all().await;
    assert_stream_is_the_feed(&received, &feed, &broker.prefix);
    // What was in the stream at the kill was not sent again.
    let mut sent = 0;
    for server in &servers {
        let text = metrics(&client, &server.base).await;
        sent += metric(&text, "bursar_events_published_total").expect("published");
    }
    assert!(
        sent <= feed.len() as u64 - before_kill,
        "{sent} sent after the restart, though {before_kill} of {} were in the stream",
        feed.len()
    );

    // The leader stops cleanly and gives up its lease: the other goes on.
    assert!(servers[leader].terminate().await.success());
    let other = &servers[1 - leader];
    for n in 0..3 {
        let (status, _, body) =
            crate::helpers::pay_raw(&client, &other.base, "c1", &format!("handover-{n}"), 1)
                .await
                .expect("pay");
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let feed = read_all(&client, &other.base, 0, 1000).await;
    assert_eq!(
        published_by_one(&client, &servers[1 - leader..=1 - leader], &feed).await,
        0
    );
    let received = broker.read_all().await;
    assert_stream_is_the_feed(&received, &feed, &broker.prefix);
    assert!(servers[1 - leader].terminate().await.success());
    broker.delete().await;
}

/// Waits until one of `servers` (all on one database) has published up to
/// the last event of `feed`, and checks that it alone holds the lease;
/// returns its index.
async fn published_by_one(client: &reqwest::Client, servers: &[Serve], feed: &[Value]) -> usize {
    let last = feed.last().expect("events")["position"].as_u64();
    let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
    loop {
        let mut texts = Vec::new();
        for server in servers {
            texts.push(metrics(client, &server.base).await);
        }
        let leaders: Vec<usize> = (0..servers.len())
            .filter(|&index| metric(&texts[index], "bursar_events_publisher_leader") == Some(1))
            .collect();
        if let [leader] = leaders[..]
            && metric(&texts[leader], "bursar_events_publisher_position") == last
        {
            return leader;
        }
        assert!(
            leaders.len() <= 1,
            "two servers hold the publisher's lease at once"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events were not all published: {texts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With NATS unreachable (a closed port) payments are answered as always
/// and `/readyz` stays ready, while `/metrics` counts the failures; started
/// again with a NATS it reaches, the server publishes every event.
async fn nats_down_at_start_slows_no_payment_and_the_events_follow(backend: Backend) {
    if !nats_available() {
        return;
    }
    let broker = Broker::new().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut unreachable = broker.options();
    unreachable.url = format!("nats://127.0.0.1:{closed}");
    let db = TestDb::new(backend).await;
    let app = bursar_server::App::open(&db.url, Some(ADMIN_TOKEN))
        .await
        .expect("open")
        .with_nats(unreachable);
    let app = TestApp::serve_app(app, db, backend).await;
    let client = reqwest::Client::new();

    app.enroll("u1", "c1", 1_000_000).await;
    for n in 0..20 {
        let started = tokio::time::Instant::now();
        let (status, body) = app.pay("u1", "c1", &format!("k{n}"), 10).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // A generous bound: the publisher is not on the write path at all.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a payment waited for NATS"
        );
    }
    let (status, body) = app.get("/readyz").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "/readyz is about the database: {body}"
    );
    let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
    loop {
        let text = metrics(&client, &app.base).await;
        if metric(&text, "bursar_events_publish_failures_total").unwrap_or(0) >= 1 {
            assert_eq!(metric(&text, "bursar_events_published_total"), Some(0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failure counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(broker.count().await, 0);

    let db = app.stop().await;
    let app = bursar_server::App::open(&db.url, Some(ADMIN_TOKEN))
        .await
        .expect("open")
        .with_nats(broker.options());
    let app = TestApp::serve_app(app, db, backend).await;
    let feed = read_all(&client, &app.base, 0, 1000).await;
    assert!(feed.len() >= 21);
    broker.wait_for(feed.len() as u64).await;
    let received = broker.read_all().await;
    assert_stream_is_the_feed(&received, &feed, &broker.prefix);
    app.stop().await;
    broker.delete().await;
}

/// The environment variable naming the `nats-server` binary for the test
/// that runs a private server (default: `nats-server` on the `PATH`).
const NATS_SERVER_VARIABLE: &str = "BURSAR_TEST_NATS_SERVER";

/// A private `nats-server -js` on a port of its own, with its store in a
/// temporary directory; killed when dropped.
struct PrivateNats {
    child: tokio::process::Child,
    port: u16,
    dir: std::path::PathBuf,
    program: String,
}

impl PrivateNats {
    /// Starts one, or returns `None` (outside CI only) when there is no
    /// `nats-server` to run.
    async fn start(dir: &std::path::Path) -> Option<PrivateNats> {
        let program = std::env::var(NATS_SERVER_VARIABLE)
            .ok()
            .filter(|program| !program.is_empty())
            .unwrap_or_else(|| "nats-server".to_owned());
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let mut nats = PrivateNats {
            child: match Self::spawn(&program, port, dir) {
                Ok(child) => child,
                Err(error) if std::env::var("CI").is_ok_and(|value| value == "true") => {
                    panic!(
                        "CI=true and {program} cannot be run: {error}; install nats-server or set {NATS_SERVER_VARIABLE}"
                    )
                }
                Err(error) => {
                    eprintln!(
                        "skipping the private NATS test: cannot run {program} ({error}); set {NATS_SERVER_VARIABLE}"
                    );
                    return None;
                }
            },
            port,
            dir: dir.to_path_buf(),
            program,
        };
        nats.wait_until_listening().await;
        Some(nats)
    }

    fn spawn(
        program: &str,
        port: u16,
        dir: &std::path::Path,
    ) -> std::io::Result<tokio::process::Child> {
        tokio::process::Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn wait_until_listening(&mut self) {
        let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                self.child.try_wait().expect("nats-server state").is_none(),
                "nats-server exited"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server is not listening"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then the same server on the same port and store again.
    async fn kill_and_restart(&mut self) {
        self.child.kill().await.expect("kill nats-server");
        self.child = Self::spawn(&self.program, self.port, &self.dir).expect("restart nats-server");
        self.wait_until_listening().await;
    }
}

/// The NATS server itself killed with SIGKILL while bursar publishes a
/// backlog, and started again: bursar reconnects and goes on, and the
/// stream ends with every event exactly once, in order — a publish lost
/// with the connection is never overtaken by the ones after it.
async fn nats_killed_mid_publishing_and_restarted_loses_no_event_and_keeps_the_order(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(mut nats) = PrivateNats::start(dir.path()).await else {
        return;
    };
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let broker = Broker {
        jetstream: jetstream::new(client),
        stream: "BURSAR_EVENTS".to_owned(),
        prefix: "bursar.events".to_owned(),
    };
    let mut options = broker.options();
    options.url = nats.url();
    let db = TestDb::new(backend).await;
    let app = bursar_server::App::open(&db.url, Some(ADMIN_TOKEN))
        .await
        .expect("open")
        .with_nats(options);
    let app = TestApp::serve_app(app, db, backend).await;
    let http = reqwest::Client::new();
    app.enroll("u1", "c1", 1_000_000_000).await;
    pay_in_bulk(&http, &app.base, "c1", 0, 8192).await;
    broker.wait_for(1).await;
    nats.kill_and_restart().await;
    // Written while NATS was away or reconnecting.
    pay_in_bulk(&http, &app.base, "c1", 8192, 2000).await;

    let feed = read_all(&http, &app.base, 0, 1000).await;
    let last = feed.last().expect("events")["position"].as_u64();
    let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
    loop {
        let text = metrics(&http, &app.base).await;
        if metric(&text, "bursar_events_publisher_position") == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bursar did not publish everything after NATS came back: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = broker.read_all().await;
    assert_stream_is_the_feed(&received, &feed, &broker.prefix);
    app.stop().await;
}

/// A stream name, subject prefix or lease the broker would refuse is
/// refused by `serve` at once, naming the flag, before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nats_options_are_refused_at_start() {
    for (flag, value) in [
        ("--events-nats-stream", "BURSAR.EVENTS"),
        ("--events-nats-subject-prefix", "bursar.*"),
        ("--events-nats-subject-prefix", "bursar..events"),
        ("--events-nats-lease", "1"),
    ] {
        let finished = crate::cli::run_bursar(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "sqlite:///nonexistent/dir/bursar.db",
            "--events-nats",
            "nats://127.0.0.1:4222",
            flag,
            value,
        ])
        .await;
        assert_eq!(
            finished.code,
            Some(2),
            "{flag} {value}: {}",
            finished.stderr
        );
        assert!(
            finished.stderr.contains(flag),
            "{flag} {value}: {}",
            finished.stderr
        );
    }
}
