//! Signed webhooks against real receivers on real ports: every event
//! arrives, signed (checked here with the hmac crate, not bursar's code),
//! in order per enrollment, and only the types asked for; a receiver that
//! fails gets its events on the retry; a hung receiver delays neither
//! payments nor other endpoints nor a graceful stop; a replay sends the
//! same ids again and wakes a failing endpoint; `bursar serve` killed with
//! SIGKILL mid-delivery loses no event; two servers on one PostgreSQL
//! database deliver each event once; internal addresses are refused at
//! registration and on the address connected to; bad input is a 4xx.

use crate::cli::{Serve, bursar};
use crate::events::read_all;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bursar_server::webhooks::WebhookOptions;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for deliveries before it fails: generous, for a
/// busy machine (the first retry alone waits 5 s).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

/// How a receiver answers.
#[derive(Clone, Copy)]
enum Behaviour {
    Accept,
    /// 500 to its first N calls, then accepts.
    FailFirst(usize),
    /// Never answers.
    Hang,
    /// Accepts after a pause.
    Slow(Duration),
}

/// One delivery as it arrived.
#[derive(Clone)]
struct Received {
    id: String,
    event: Value,
    body: String,
}

struct ReceiverState {
    behaviour: Behaviour,
    key: Mutex<Option<Vec<u8>>>,
    calls: AtomicUsize,
    bad: Mutex<Vec<String>>,
    received: Mutex<Vec<Received>>,
}

/// A webhook receiver on 127.0.0.1 and a port of its own, verifying every
/// signature on its own.
#[derive(Clone)]
struct Receiver {
    state: Arc<ReceiverState>,
    url: String,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        let state = Arc::new(ReceiverState {
            behaviour,
            key: Mutex::new(None),
            calls: AtomicUsize::new(0),
            bad: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver { state, url }
    }

    /// The endpoint's secret, as `POST /v1/webhooks` answered it.
    fn set_secret(&self, secret: &str) {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
            .expect("base64");
        *self.state.key.lock().expect("lock") = Some(key);
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn assert_all_signed(&self) {
        let bad = self.state.bad.lock().expect("lock");
        assert!(
            bad.is_empty(),
            "deliveries that failed verification: {bad:?}"
        );
    }

    /// Waits until every id of `expected` has arrived.
    async fn wait_for(&self, expected: &[String]) {
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        loop {
            let got: HashSet<String> = self.received().into_iter().map(|r| r.id).collect();
            let missing: Vec<&String> = expected.iter().filter(|id| !got.contains(*id)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} events never arrived, such as {:?}",
                missing.len(),
                expected.len(),
                missing.first()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let call = state.calls.fetch_add(1, Ordering::SeqCst);
    match state.behaviour {
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Behaviour::FailFirst(failures) if call < failures => {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        Behaviour::Slow(pause) => tokio::time::sleep(pause).await,
        _ => {}
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let Some(key) = state.key.lock().expect("lock").clone() else {
        state
            .bad
            .lock()
            .expect("lock")
            .push(format!("{id}: no secret yet"));
        return StatusCode::BAD_REQUEST;
    };
    // Standard Webhooks, by hand: HMAC-SHA256 over "{id}.{timestamp}.{body}".
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("a key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|seconds| (seconds - now).abs() < 300);
    let text = String::from_utf8_lossy(&body).into_owned();
    let event: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if signature != expected
        || !fresh
        || header("content-type") != "application/json"
        || event["id"] != json!(id)
    {
        state.bad.lock().expect("lock").push(format!(
            "{id} at {timestamp}: signature {signature}, expected {expected}"
        ));
        return StatusCode::BAD_REQUEST;
    }
    state.received.lock().expect("lock").push(Received {
        id,
        event,
        body: text,
    });
    StatusCode::OK
}

/// A service delivering webhooks to this machine's addresses.
async fn spawn(backend: Backend) -> TestApp {
    let db = TestDb::new(backend).await;
    TestApp::spawn_configured(db, backend, |app| {
        app.with_webhooks(WebhookOptions {
            allow_private: true,
            ..WebhookOptions::default()
        })
    })
    .await
}

/// Registers an endpoint; returns its id and the answer.
async fn register(app: &TestApp, body: Value) -> (String, Value) {
    let (status, answer) = app.post("/v1/webhooks", "unused", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    (answer["id"].as_str().expect("id").to_owned(), answer)
}

/// Registers `receiver` (optionally for some types only) and gives it the
/// secret.
async fn register_receiver(app: &TestApp, receiver: &Receiver, types: Option<Value>) -> Value {
    let mut body = json!({"url": receiver.url});
    if let Some(types) = types {
        body["types"] = types;
    }
    let (_, answer) = register(app, body).await;
    receiver.set_secret(answer["secret"].as_str().expect("secret"));
    answer
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| event["id"].as_str().expect("id").to_owned())
        .collect()
}

/// For each enrollment, the positions of the events in the order they first
/// arrived must increase: nothing overtook an earlier event of its
/// enrollment.
fn assert_in_order_per_enrollment(received: &[Received]) {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for delivery in received {
        if !seen.insert(delivery.id.clone()) {
            continue;
        }
        let enrollment = format!(
            "{}/{}",
            delivery.event["user_id"], delivery.event["course_id"]
        );
        let position = delivery.event["position"].as_u64().expect("position");
        if let Some(before) = last.insert(enrollment.clone(), position) {
            assert!(
                before < position,
                "{enrollment}: event {position} arrived after {before}"
            );
        }
    }
}

/// The endpoint's attempt log, once `done` says it is complete.
async fn log_until(app: &TestApp, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    loop {
        let (status, log) = app
            .get(&format!("/v1/webhooks/{id}/deliveries?limit=1000"))
            .await;
        assert_eq!(status, StatusCode::OK, "{log}");
        let log = log["deliveries"].as_array().expect("deliveries").clone();
        if done(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the log never got there: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pay(app: &TestApp, user: &str, course: &str, amount: i64) -> Duration {
    let started = Instant::now();
    let (status, body) = app
        .pay(user, course, &crate::helpers::new_key(), amount)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    started.elapsed()
}

async fn every_event_arrives_signed_in_order(backend: Backend) {
    let app = spawn(backend).await;
    // Events before the endpoint existed are not sent to it.
    app.enroll("early", "c", 500).await;
    let all = Receiver::start(Behaviour::Accept).await;
    let payments = Receiver::start(Behaviour::Accept).await;
    let created = register_receiver(&app, &all, None).await;
    register_receiver(&app, &payments, Some(json!(["payment.recorded"]))).await;
    assert_eq!(created["state"], "ACTIVE");
    assert!(
        created["secret"]
            .as_str()
            .expect("secret")
            .starts_with("whsec_")
    );
    let started_after = created["started_after"].as_u64().expect("started_after");

    // Three enrollments paid into at once, fifteen payments each.
    let mut payers = Vec::new();
    for user in ["u1", "u2", "u3"] {
        app.enroll(user, "c", 100_000).await;
        let client = app.client.clone();
        let base = app.base.clone();
        payers.push(tokio::spawn(async move {
            for n in 1..=15 {
                let (status, body) = post_json(
                    &client,
                    format!("{base}/v1/users/{user}/courses/c/payments"),
                    json!({"amount": n}),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
        }));
    }
    for payer in payers {
        payer.await.expect("payer");
    }
    pay(&app, "early", "c", 500).await;

    let expected = read_all(&app.client, &app.base, started_after, 1000).await;
    assert!(
        expected
            .iter()
            .all(|event| event["user_id"] != "early" || event["type"] != "enrollment.created"),
        "the feed after the endpoint holds only later events"
    );
    all.wait_for(&ids(&expected)).await;
    let paid: Vec<Value> = expected
        .iter()
        .filter(|event| event["type"] == "payment.recorded")
        .cloned()
        .collect();
    payments.wait_for(&ids(&paid)).await;
    all.assert_all_signed();
    payments.assert_all_signed();

    let received = all.received();
    assert_in_order_per_enrollment(&received);
    // Nothing from before the endpoint, nothing twice, and each body is the
    // event exactly as the feed shows it.
    assert_eq!(
        received.len(),
        expected.len(),
        "no duplicates in a calm run"
    );
    let by_id: HashMap<&str, &Value> = expected
        .iter()
        .map(|event| (event["id"].as_str().expect("id"), event))
        .collect();
    for delivery in &received {
        let event = by_id
            .get(delivery.id.as_str())
            .unwrap_or_else(|| panic!("{} was not expected", delivery.id));
        assert_eq!(&delivery.event, *event);
        // The exact bytes the feed's serializer writes for the event.
        let typed: bursar_core::Event = serde_json::from_str(&delivery.body).expect("an event");
        assert_eq!(delivery.body, serde_json::to_string(&typed).expect("json"));
    }
    assert!(
        payments
            .received()
            .iter()
            .all(|delivery| delivery.event["type"] == "payment.recorded")
    );
    assert_eq!(payments.received().len(), paid.len());

    // The log and the list.
    let id = created["id"].as_str().expect("id");
    log_until(&app, id, |log| log.len() == expected.len()).await;
    let (status, log) = app
        .get(&format!("/v1/webhooks/{id}/deliveries?limit=5"))
        .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let log = log["deliveries"].as_array().expect("deliveries").clone();
    assert_eq!(log.len(), 5);
    // Enrollments are delivered side by side, so the five newest attempts
    // are five of the events, not always the last five positions; the
    // whole log has every event, the newest included.
    let known = ids(&expected);
    assert!(
        log.iter()
            .all(|attempt| known.iter().any(|id| attempt["event_id"] == id.as_str()))
    );
    let (_, whole) = app
        .get(&format!("/v1/webhooks/{id}/deliveries?limit=1000"))
        .await;
    let newest = expected.last().expect("events")["id"].clone();
    assert!(
        whole["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .any(|attempt| attempt["event_id"] == newest)
    );
    assert!(log.iter().all(|attempt| attempt["status"] == 200
        && attempt["error"].is_null()
        && attempt["attempt"] == 1));
    let (_, list) = app.get("/v1/webhooks").await;
    let list = list["webhooks"].as_array().expect("webhooks").clone();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|endpoint| endpoint.get("secret").is_none()));
    assert_eq!(list[1]["types"], json!(["payment.recorded"]));
    let (_, _, metrics) = app.send(reqwest::Method::GET, "/metrics", None, None).await;
    assert!(
        metrics.contains("bursar_webhook_attempts_total{outcome=\"delivered\"}"),
        "{metrics}"
    );
    app.stop().await;
}

async fn a_failing_receiver_gets_its_events_on_the_retry(backend: Backend) {
    let app = spawn(backend).await;
    let receiver = Receiver::start(Behaviour::FailFirst(2)).await;
    let created = register_receiver(&app, &receiver, None).await;
    let started_after = created["started_after"].as_u64().expect("started_after");
    app.enroll("u1", "c", 1_000).await;
    app.enroll("u2", "c", 1_000).await;
    for n in 1..=3 {
        pay(&app, "u1", "c", n).await;
        pay(&app, "u2", "c", n).await;
    }
    let expected = read_all(&app.client, &app.base, started_after, 1000).await;
    receiver.wait_for(&ids(&expected)).await;
    receiver.assert_all_signed();
    assert_in_order_per_enrollment(&receiver.received());
    assert_eq!(receiver.received().len(), expected.len());
    // The first two calls failed with 500 and were tried again (the log is
    // written a moment after the deliveries).
    let id = created["id"].as_str().expect("id");
    let log = log_until(&app, id, |log| {
        log.iter().filter(|a| a["status"] == 200).count() == expected.len()
    })
    .await;
    let failed: Vec<&Value> = log.iter().filter(|a| a["status"] == 500).collect();
    assert_eq!(failed.len(), 2, "{log:?}");
    for attempt in &failed {
        assert_eq!(attempt["attempt"], 1);
        assert!(
            attempt["error"]
                .as_str()
                .is_some_and(|error| error.contains("500"))
        );
        let retried = log
            .iter()
            .find(|a| a["event_id"] == attempt["event_id"] && a["status"] == 200)
            .expect("the retry");
        assert_eq!(retried["attempt"], 2);
    }
    app.stop().await;
}

async fn a_hung_receiver_delays_no_payment_nor_other_endpoint_nor_the_stop(backend: Backend) {
    let app = spawn(backend).await;
    let hung = Receiver::start(Behaviour::Hang).await;
    let healthy = Receiver::start(Behaviour::Accept).await;
    register_receiver(&app, &hung, None).await;
    let created = register_receiver(&app, &healthy, None).await;
    let started_after = created["started_after"].as_u64().expect("started_after");
    let mut latencies = Vec::new();
    for user in 0..20 {
        let user = format!("u{user}");
        app.enroll(&user, "c", 1_000).await;
        latencies.push(pay(&app, &user, "c", 10).await);
    }
    latencies.sort();
    println!(
        "payment latencies with a hung receiver: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().expect("some")
    );
    // Generous: a payment here takes milliseconds.
    assert!(
        *latencies.last().expect("some") < Duration::from_secs(2),
        "{latencies:?}"
    );
    // The healthy endpoint gets everything while the hung one holds its
    // deliveries open.
    let expected = read_all(&app.client, &app.base, started_after, 1000).await;
    let waited = Instant::now();
    healthy.wait_for(&ids(&expected)).await;
    println!(
        "the healthy endpoint had every event {:?} after the last payment",
        waited.elapsed()
    );
    assert!(hung.calls() > 0, "the hung receiver was called");
    // A graceful stop abandons the hung deliveries.
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("a hung receiver must not hold up a graceful stop");
    println!("stopped in {:?}", stopping.elapsed());
}

async fn a_replay_sends_the_same_ids_again_and_wakes_a_failing_endpoint(backend: Backend) {
    let app = spawn(backend).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let created = register_receiver(&app, &receiver, None).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let started_after = created["started_after"].as_u64().expect("started_after");
    app.enroll("u1", "c", 1_000).await;
    pay(&app, "u1", "c", 100).await;
    let expected = read_all(&app.client, &app.base, started_after, 1000).await;
    receiver.wait_for(&ids(&expected)).await;
    let first = receiver.received().len();

    // Replay from the start: every event again, with its same id.
    let (status, replayed) = app
        .post(
            &format!("/v1/webhooks/{id}/replay"),
            "unused",
            json!({"after": started_after}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["state"], "ACTIVE");
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    while receiver.received().len() < 2 * first {
        assert!(Instant::now() < deadline, "the replay never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = receiver.received();
    let again: Vec<&str> = received[first..].iter().map(|r| r.id.as_str()).collect();
    assert_eq!(again, ids(&expected));
    receiver.assert_all_signed();

    // A failing endpoint (its retries long exhausted; set here by hand)
    // stays paused, and a replay makes it active and sends what it missed.
    if let Some(path) = &app.db.path {
        let database = rusqlite::Connection::open(path).expect("open");
        database
            .execute(
                "UPDATE webhook_endpoints SET state = 'FAILING', failing_since = 1 WHERE id = ?1",
                [&id],
            )
            .expect("mark failing");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, list) = app.get("/v1/webhooks").await;
        assert_eq!(list["webhooks"][0]["state"], "FAILING");
        let before = receiver.received().len();
        pay(&app, "u1", "c", 100).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            receiver.received().len(),
            before,
            "a failing endpoint is paused"
        );
        let head = read_all(&app.client, &app.base, 0, 1000).await;
        let last = head.last().expect("events")["position"]
            .as_u64()
            .expect("position");
        let (status, replayed) = app
            .post(
                &format!("/v1/webhooks/{id}/replay"),
                "unused",
                json!({"after": last}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{replayed}");
        assert_eq!(replayed["state"], "ACTIVE");
        assert_eq!(replayed["failing_since"], Value::Null);
        // Its cursor never moves forward: the payment made while it was
        // paused still arrives.
        let missed = read_all(
            &app.client,
            &app.base,
            expected.last().expect("e")["position"].as_u64().expect("p"),
            1000,
        )
        .await;
        receiver.wait_for(&ids(&missed)).await;
    }
    app.stop().await;
}

async fn bad_input_is_refused(backend: Backend) {
    // No delivery engine here: nothing is ever sent anywhere.
    let (app, [writer]) =
        TestApp::spawn_with_tokens(backend, [bursar_server::auth::Role::Writer]).await;
    let invalid = |status: StatusCode, body: &Value| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        body["error"]["code"].as_str().expect("code").to_owned()
    };
    for body in [
        json!({}),
        json!({"url": 42}),
        json!({"url": ""}),
        json!({"url": "hooks.example.com/x"}),
        json!({"url": "ftp://hooks.example.com/x"}),
        json!({"url": "file:///etc/passwd"}),
        json!({"url": "https://user:secret@hooks.example.com/x"}),
        json!({"url": format!("https://hooks.example.com/{}", "a".repeat(2100))}),
        json!({"url": "https://hooks.example.com/x", "types": []}),
        json!({"url": "https://hooks.example.com/x", "types": ["payment.made"]}),
        json!({"url": "https://hooks.example.com/x", "types": "payment.recorded"}),
        json!({"url": "https://hooks.example.com/x", "secret": "mine"}),
    ] {
        let (status, answer) = app.post("/v1/webhooks", "unused", body.clone()).await;
        assert_eq!(invalid(status, &answer), "INVALID_REQUEST", "{body}");
    }
    // Internal addresses, without --webhooks-allow-private.
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://10.0.0.7/hook",
        "http://172.16.5.4/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://224.0.0.1/hook",
        "http://255.255.255.255/hook",
    ] {
        let (status, answer) = app
            .post("/v1/webhooks", "unused", json!({"url": url}))
            .await;
        assert_eq!(
            invalid(status, &answer),
            "WEBHOOK_URL_FORBIDDEN",
            "{url}: {answer}"
        );
    }
    // Unknown ids.
    for (method, path, body) in [
        (
            reqwest::Method::DELETE,
            "/v1/webhooks/wh_0000000000000000",
            None,
        ),
        (
            reqwest::Method::GET,
            "/v1/webhooks/wh_nope/deliveries",
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/webhooks/nope/replay",
            Some(r#"{"after":0}"#),
        ),
    ] {
        let (status, _, text) = app.send(method, path, None, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {text}");
        assert!(text.contains("WEBHOOK_NOT_FOUND"), "{text}");
    }
    // Addresses reserved for documentation: never reached (no engine runs
    // here), and no name to resolve.
    let (id, _) = register(&app, json!({"url": "https://203.0.113.7/x"})).await;
    for query in ["limit=0", "limit=1001", "limit=x", "after=1"] {
        let (status, answer) = app
            .get(&format!("/v1/webhooks/{id}/deliveries?{query}"))
            .await;
        assert_eq!(invalid(status, &answer), "INVALID_REQUEST", "{query}");
    }
    for body in [
        json!({}),
        json!({"after": -1}),
        json!({"after": "0"}),
        json!({"after": 9_223_372_036_854_775_808_u64}),
        json!({"after": 0, "from": 1}),
    ] {
        let (status, answer) = app
            .post(&format!("/v1/webhooks/{id}/replay"), "unused", body.clone())
            .await;
        assert_eq!(invalid(status, &answer), "INVALID_REQUEST", "{body}");
    }
    // Only admins.
    let response = app
        .client
        .get(app.url("/v1/webhooks"))
        .bearer_auth(&writer)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // At most 100 endpoints.
    for n in 1..100 {
        register(&app, json!({"url": format!("https://203.0.113.7/{n}")})).await;
    }
    let (status, answer) = app
        .post(
            "/v1/webhooks",
            "unused",
            json!({"url": "https://203.0.113.7/one-too-many"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "WEBHOOK_LIMIT_REACHED");
    // Deleting one makes room, and the deleted one is gone.
    let (status, _, deleted) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let (status, _) = app.get(&format!("/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    register(&app, json!({"url": "https://203.0.113.7/room-again"})).await;
    app.assert_audit_clean().await;
}

/// An endpoint that points at a loopback address (as if it got past the
/// registration check, say by a name that resolved elsewhere then) is
/// never connected to by a server that does not allow private addresses.
async fn deliveries_never_connect_to_an_internal_address(backend: Backend) {
    let db = TestDb::new(backend).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let store = bursar_store::Store::open(&db.url).await.expect("store");
    let endpoint = bursar_store::WebhookEndpoint {
        id: "wh_00000000000000aa".into(),
        url: url.clone(),
        types: Vec::new(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        created_at: bursar_server::writer::now(),
        started_after: 0,
        cursor: 0,
        state: bursar_store::EndpointState::Active,
        failing_since: None,
        generation: 0,
        lease_free: true,
        lease_owner: None,
    };
    assert!(store.webhook_create(&endpoint, 100).await.expect("create"));
    drop(store);
    let app = TestApp::spawn_configured(db, backend, |app| {
        app.with_webhooks(WebhookOptions::default())
    })
    .await;
    app.enroll("u1", "c", 1_000).await;
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let log = loop {
        let (_, log) = app.get("/v1/webhooks/wh_00000000000000aa/deliveries").await;
        let log = log["deliveries"].as_array().expect("deliveries").clone();
        if !log.is_empty() {
            break log;
        }
        assert!(Instant::now() < deadline, "no attempt was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log[0]["status"], Value::Null);
    let error = log[0]["error"].as_str().expect("an error");
    assert!(error.contains("loopback"), "{error}");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing connected");
    app.stop().await;
}

/// A `bursar serve` with webhooks on, private addresses allowed and a short
/// lease, so that a restart after SIGKILL resumes within seconds.
async fn start_serve(url: &str, log: &std::path::Path) -> Serve {
    let mut command = bursar();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database", url])
        .args(["--webhooks-allow-private", "--webhooks-lease", "2"])
        .env("BURSAR_ADMIN_TOKEN", ADMIN_TOKEN);
    Serve::start_command(command, log).await
}

async fn post_json(client: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    let response = client
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", crate::helpers::new_key())
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn enroll_on(client: &reqwest::Client, base: &str, user: &str) {
    let response = client
        .put(format!("{base}/v1/users/{user}/courses/c"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"currency": "USD", "price": 1_000_000_000}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn sigkill_mid_delivery_loses_no_event(backend: Backend) {
    let db = TestDb::new(backend).await;
    let logs = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let receiver = Receiver::start(Behaviour::Slow(Duration::from_millis(2))).await;
    let mut first = start_serve(&db.url, &logs.path().join("first.log")).await;
    let (status, created) = post_json(
        &client,
        first.url("/v1/webhooks"),
        json!({"url": receiver.url}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    receiver.set_secret(created["secret"].as_str().expect("secret"));
    let started_after = created["started_after"].as_u64().expect("started_after");
    let users = ["u1", "u2", "u3", "u4"];
    for user in users {
        enroll_on(&client, &first.base, user).await;
    }
    // Payers go on until the server is gone; it is killed once deliveries
    // are well under way.
    let mut payers = Vec::new();
    for user in users {
        let client = client.clone();
        let base = first.base.clone();
        payers.push(tokio::spawn(async move {
            for n in 1..=2_000 {
                let answer = client
                    .post(format!("{base}/v1/users/{user}/courses/c/payments"))
                    .bearer_auth(ADMIN_TOKEN)
                    .header("Idempotency-Key", format!("{user}-{n}"))
                    .json(&json!({"amount": n}))
                    .send()
                    .await;
                if answer.is_err() {
                    return;
                }
            }
        }));
    }
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    while receiver.received().len() < 200 {
        assert!(Instant::now() < deadline, "deliveries never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().await;
    let at_kill = receiver.received().len();
    for payer in payers {
        payer.await.expect("payer");
    }
    let second = start_serve(&db.url, &logs.path().join("second.log")).await;
    for user in users {
        let (status, body) = post_json(
            &client,
            second.url(&format!("/v1/users/{user}/courses/c/payments")),
            json!({"amount": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let expected = read_all(&client, &second.base, started_after, 1000).await;
    receiver.wait_for(&ids(&expected)).await;
    receiver.assert_all_signed();
    let received = receiver.received();
    assert_in_order_per_enrollment(&received);
    let distinct: HashSet<&str> = received.iter().map(|r| r.id.as_str()).collect();
    println!(
        "{} events, {} deliveries ({} before the kill, {} sent again after the restart)",
        expected.len(),
        received.len(),
        at_kill,
        received.len() - distinct.len()
    );
    assert_eq!(distinct.len(), expected.len());
}

mod postgres_only {
    use super::*;

    /// Two servers on one database, one endpoint: every event arrives, and
    /// none twice while no server crashes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_deliver_each_event_once() {
        if !bursar_store::testing::postgres_available() {
            return;
        }
        let db = TestDb::new(Backend::Postgres).await;
        let logs = tempfile::tempdir().expect("temp dir");
        let client = reqwest::Client::new();
        let servers = [
            start_serve(&db.url, &logs.path().join("a.log")).await,
            start_serve(&db.url, &logs.path().join("b.log")).await,
        ];
        let receiver = Receiver::start(Behaviour::Accept).await;
        let (status, created) = post_json(
            &client,
            servers[1].url("/v1/webhooks"),
            json!({"url": receiver.url}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        receiver.set_secret(created["secret"].as_str().expect("secret"));
        let started_after = created["started_after"].as_u64().expect("started_after");
        let users: Vec<String> = (0..6).map(|n| format!("u{n}")).collect();
        for (index, user) in users.iter().enumerate() {
            enroll_on(&client, &servers[index % 2].base, user).await;
        }
        let mut payers = Vec::new();
        for (index, user) in users.iter().enumerate() {
            let client = client.clone();
            let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
            let user = user.clone();
            payers.push(tokio::spawn(async move {
                for n in 0..20 {
                    let base = &bases[(index + n) % 2];
                    let (status, body) = post_json(
                        &client,
                        format!("{base}/v1/users/{user}/courses/c/payments"),
                        json!({"amount": n + 1}),
                    )
                    .await;
                    assert_eq!(status, StatusCode::CREATED, "{body}");
                }
            }));
        }
        for payer in payers {
            payer.await.expect("payer");
        }
        let expected = read_all(&client, &servers[0].base, started_after, 1000).await;
        receiver.wait_for(&ids(&expected)).await;
        // Anything sent twice would have arrived by now too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        receiver.assert_all_signed();
        let received = receiver.received();
        assert_in_order_per_enrollment(&received);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for delivery in &received {
            *counts.entry(delivery.id.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
        assert_eq!(received.len(), expected.len());
    }
}

crate::conformance!(
    every_event_arrives_signed_in_order,
    a_failing_receiver_gets_its_events_on_the_retry,
    a_hung_receiver_delays_no_payment_nor_other_endpoint_nor_the_stop,
    a_replay_sends_the_same_ids_again_and_wakes_a_failing_endpoint,
    bad_input_is_refused,
    deliveries_never_connect_to_an_internal_address,
    sigkill_mid_delivery_loses_no_event,
);
