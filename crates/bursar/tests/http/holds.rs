//! Holds over real HTTP: twenty tabs reserving the remaining balance at once,
//! captures retried with new keys, a capture racing a void, payments bounded
//! by what is available, a hold that really expires, a server killed with
//! holds open, and three servers on one PostgreSQL database racing to
//! capture, void and expire the same holds. Each hold ends exactly once, and
//! the audit is clean after each.

use crate::cli::Serve;
use crate::conformance;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb, new_key};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

conformance!(
    twenty_tabs_holding_the_remaining_get_one_hold,
    a_capture_retried_with_another_key_captures_once,
    a_capture_racing_a_void_one_wins,
    holds_bound_payments_and_answer_every_route,
    a_hold_of_the_minimum_life_really_expires,
    holds_survive_sigkill_and_expire_on_time,
);

const BASE: &str = "/v1/users/u1/courses/c1";

/// The shortest `expires_in` the API takes, in seconds.
const EXPIRES_IN_MIN_SECONDS: u64 = 30;

/// How long past `expires_at` a test waits for the sweep before failing: the
/// sweep runs twice a second, so this is generous on a busy machine.
const EXPIRY_GRACE: Duration = Duration::from_secs(20);

fn hold_path(seq: u64, action: &str) -> String {
    format!("{BASE}/holds/{seq}/{action}")
}

fn seq_of(body: &Value) -> u64 {
    body["entry"]["seq"].as_u64().expect("an entry seq")
}

/// The ledger's entries about each hold, by hold_seq: the kinds in order.
fn hold_histories(ledger: &[Value]) -> BTreeMap<u64, Vec<String>> {
    let mut histories: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for entry in ledger {
        if let Some(hold_seq) = entry["hold_seq"].as_u64() {
            histories
                .entry(hold_seq)
                .or_default()
                .push(entry["kind"].as_str().expect("kind").to_owned());
        }
    }
    histories
}

async fn twenty_tabs_holding_the_remaining_get_one_hold(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let tabs: Vec<_> = (0..20)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url(&format!("{BASE}/holds"));
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .header("Idempotency-Key", new_key())
                    .json(&json!({"remaining": true, "reference": "pi_tab"}))
                    .send()
                    .await
                    .expect("hold");
                let status = response.status();
                (status, response.json::<Value>().await.expect("JSON"))
            })
        })
        .collect();
    let mut created = 0;
    for tab in tabs {
        let (status, body) = tab.await.expect("tab");
        match status {
            StatusCode::CREATED => {
                created += 1;
                assert_eq!(body["entry"]["kind"], "HOLD");
                assert_eq!(body["entry"]["amount"], 10_000);
                assert_eq!(body["enrollment"]["amount_held"], 10_000);
                assert_eq!(body["enrollment"]["amount_available"], 0);
            }
            StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "NOTHING_DUE", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 1, "exactly one tab holds the balance");
    let enrollment = app.enrollment("u1", "c1").await;
    assert_eq!(enrollment["amount_held"], 10_000);
    assert_eq!(enrollment["payment_status"], "PENDING", "held is not paid");
    app.assert_audit_clean().await;
}

async fn a_capture_retried_with_another_key_captures_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let (status, body) = app
        .post(
            &format!("{BASE}/holds"),
            &new_key(),
            json!({"amount": 4_000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hold_seq = seq_of(&body);
    assert_eq!(body["entry"]["hold_seq"], hold_seq);
    let key = new_key();
    let (status, first) = app
        .post(&hold_path(hold_seq, "capture"), &key, json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["entry"]["kind"], "CAPTURE");
    assert_eq!(first["enrollment"]["amount_paid"], 4_000);
    assert_eq!(first["enrollment"]["amount_held"], 0);
    // The same key replays; another key is told the hold is captured.
    let (status, replay) = app
        .post(&hold_path(hold_seq, "capture"), &key, json!({}))
        .await;
    assert_eq!((status, &replay), (StatusCode::CREATED, &first));
    let (status, second) = app
        .post(&hold_path(hold_seq, "capture"), &new_key(), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{second}");
    assert_eq!(second["error"]["code"], "HOLD_NOT_OPEN");
    assert_eq!(
        second["error"]["details"],
        json!({"hold_seq": hold_seq, "state": "CAPTURED"})
    );
    let enrollment = app.enrollment("u1", "c1").await;
    assert_eq!(enrollment["amount_paid"], 4_000, "captured once");
    app.assert_audit_clean().await;
}

async fn a_capture_racing_a_void_one_wins(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 100_000).await;
    for _ in 0..10 {
        let (status, body) = app
            .post(
                &format!("{BASE}/holds"),
                &new_key(),
                json!({"amount": 1_000}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let hold_seq = seq_of(&body);
        let race: Vec<_> = ["capture", "void"]
            .into_iter()
            .map(|action| {
                let client = app.client.clone();
                let url = app.url(&hold_path(hold_seq, action));
                tokio::spawn(async move {
                    let response = client
                        .post(url)
                        .bearer_auth(ADMIN_TOKEN)
                        .header("Idempotency-Key", new_key())
                        .send()
                        .await
                        .expect("capture or void");
                    let status = response.status();
                    (status, response.json::<Value>().await.expect("JSON"))
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in race {
            let (status, body) = task.await.expect("racer");
            match status {
                StatusCode::CREATED => winners.push(body["entry"]["kind"].clone()),
                StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "HOLD_NOT_OPEN"),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one of capture and void wins");
    }
    let ledger = app.ledger("u1", "c1").await;
    for (hold_seq, history) in hold_histories(&ledger) {
        assert_eq!(history.len(), 2, "hold {hold_seq}: {history:?}");
        assert!(history[1] == "CAPTURE" || history[1] == "VOID");
    }
    let enrollment = app.enrollment("u1", "c1").await;
    assert_eq!(enrollment["amount_held"], 0);
    app.assert_audit_clean().await;
}

async fn holds_bound_payments_and_answer_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let (status, body) = app
        .post(
            &format!("{BASE}/holds"),
            &new_key(),
            json!({"amount": 6_000, "expires_in": 600, "reference": "pi_42"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hold_seq = seq_of(&body);
    let expires_at = body["entry"]["expires_at"].clone();
    assert!(
        expires_at.is_string(),
        "a HOLD entry carries its expires_at"
    );

    // A payment above what is available while the hold is open.
    let (status, body) = app.pay("u1", "c1", &new_key(), 4_001).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "OVERPAYMENT");
    assert_eq!(body["error"]["details"]["amount_available"], 4_000);
    let (status, body) = app
        .post(&format!("{BASE}/cancel"), &new_key(), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_TRANSITION");

    // The open holds.
    let (status, body) = app.get(&format!("{BASE}/holds")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"holds": [{"hold_seq": hold_seq, "amount": 6_000, "expires_at": expires_at, "reference": "pi_42"}]})
    );
    let (status, body) = app.get("/v1/users/u1/courses/nope/holds").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Refusals of the hold routes.
    let (status, body) = app
        .post(
            &hold_path(hold_seq, "capture"),
            &new_key(),
            json!({"amount": 6_001}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "CAPTURE_EXCEEDS_HOLD");
    let (status, body) = app
        .post(&hold_path(999, "void"), &new_key(), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "HOLD_NOT_FOUND");
    for bad in [
        json!({"amount": 1, "remaining": true}),
        json!({}),
        json!({"remaining": false}),
        json!({"amount": 1, "expires_in": 29}),
        json!({"amount": 1, "expires_in": 86_401}),
        json!({"amount": 1, "expires_in": 60.5}),
        json!({"amount": 1, "expires": 60}),
    ] {
        let (status, body) = app
            .post(&format!("{BASE}/holds"), &new_key(), bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{bad}");
    }
    for path in [
        format!("{BASE}/holds/abc/capture"),
        format!("{BASE}/holds/0/capture"),
        format!("{BASE}/holds/-1/void"),
    ] {
        let (status, body) = app.post(&path, &new_key(), json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    let (status, _, text) = app
        .send(
            reqwest::Method::POST,
            &hold_path(hold_seq, "void"),
            None,
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a void needs a key: {text}"
    );

    // The batch kinds: capture part of the hold, void another, one refused.
    let (status, body) = app
        .post(
            "/v1/batch",
            &new_key(),
            json!({"operations": [
                {"user_id": "u1", "course_id": "c1", "kind": "capture", "idempotency_key": new_key(),
                 "body": {"hold_seq": hold_seq, "amount": 5_000}},
                {"user_id": "u1", "course_id": "c1", "kind": "hold", "idempotency_key": new_key(),
                 "body": {"remaining": true}},
                {"user_id": "u1", "course_id": "c1", "kind": "void", "idempotency_key": new_key(),
                 "body": {"hold_seq": hold_seq + 2}},
                {"user_id": "u1", "course_id": "c1", "kind": "void", "idempotency_key": new_key(),
                 "body": {"hold_seq": hold_seq}},
                {"user_id": "u1", "course_id": "c1", "kind": "void", "idempotency_key": new_key(),
                 "body": {}},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .map(|result| result["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 201, 409, 400], "{body}");
    assert_eq!(results[0]["body"]["entry"]["kind"], "CAPTURE");
    assert_eq!(results[0]["body"]["entry"]["reference"], "pi_42");
    assert_eq!(
        results[1]["body"]["entry"]["amount"], 5_000,
        "all that is available"
    );
    assert_eq!(results[2]["body"]["entry"]["kind"], "VOID");
    assert_eq!(results[3]["body"]["error"]["code"], "HOLD_NOT_OPEN");
    let enrollment = app.enrollment("u1", "c1").await;
    assert_eq!(enrollment["amount_paid"], 5_000);
    assert_eq!(enrollment["amount_held"], 0);
    assert_eq!(enrollment["amount_available"], 5_000);
    let (_, body) = app.get(&format!("{BASE}/holds")).await;
    assert_eq!(body, json!({"holds": []}));
    app.assert_audit_clean().await;
}

/// Polls the enrollment until nothing is held, or fails after `deadline`.
async fn wait_until_released(app: &TestApp, deadline: Duration) -> Value {
    let started = tokio::time::Instant::now();
    loop {
        let enrollment = app.enrollment("u1", "c1").await;
        if enrollment["amount_held"] == 0 {
            return enrollment;
        }
        assert!(
            started.elapsed() < deadline,
            "the hold was not released in time: {enrollment}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn a_hold_of_the_minimum_life_really_expires(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 10_000).await;
    let (status, body) = app
        .post(
            &format!("{BASE}/holds"),
            &new_key(),
            json!({"remaining": true, "expires_in": EXPIRES_IN_MIN_SECONDS}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hold_seq = seq_of(&body);
    // No request touches the enrollment meanwhile: the sweep alone expires it.
    let enrollment = wait_until_released(
        &app,
        Duration::from_secs(EXPIRES_IN_MIN_SECONDS) + EXPIRY_GRACE,
    )
    .await;
    assert_eq!(enrollment["amount_available"], 10_000);
    let ledger = app.ledger("u1", "c1").await;
    let expire = ledger.last().expect("entries");
    assert_eq!(expire["kind"], "EXPIRE");
    assert_eq!(expire["hold_seq"], hold_seq);
    assert_eq!(expire["amount"], 10_000);
    assert!(
        expire["created_at"].as_str() >= body["entry"]["expires_at"].as_str(),
        "expired no earlier than expires_at: {expire}"
    );
    let (status, refused) = app
        .post(&hold_path(hold_seq, "capture"), &new_key(), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(
        refused["error"]["details"],
        json!({"hold_seq": hold_seq, "state": "EXPIRED"})
    );
    let (_, holds) = app.get(&format!("{BASE}/holds")).await;
    assert_eq!(holds, json!({"holds": []}));
    assert_eq!(
        app.ledger("u1", "c1").await.len(),
        ledger.len(),
        "one EXPIRE"
    );
    app.assert_audit_clean().await;
}

/// A client for the `bursar serve` processes of the tests below.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client")
}

async fn post_to(client: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    let response = client
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", new_key())
        .json(&body)
        .send()
        .await
        .expect("POST");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_from(client: &reqwest::Client, url: String) -> Value {
    let response = client
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("JSON")
}

async fn ledger_from(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    loop {
        let url = format!("{base}{BASE}/ledger?limit=1000&after={}", entries.len());
        let page = get_from(client, url).await["entries"]
            .as_array()
            .expect("entries")
            .clone();
        if page.is_empty() {
            return entries;
        }
        entries.extend(page);
    }
}

async fn audit_clean(client: &reqwest::Client, base: &str) {
    let report = get_from(client, format!("{base}/v1/audit")).await;
    assert_eq!(report["ok"], true, "{report}");
}

async fn holds_survive_sigkill_and_expire_on_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let logs = tempfile::tempdir().expect("temp dir");
    let client = client();
    let mut first = Serve::start(&db.url, Some(ADMIN_TOKEN), &logs.path().join("first.log")).await;
    let enrolled = client
        .put(first.url(BASE))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"currency": "USD", "price": 10_000}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(enrolled.status(), StatusCode::CREATED);
    let (status, short) = post_to(
        &client,
        first.url(&format!("{BASE}/holds")),
        json!({"amount": 3_000, "expires_in": EXPIRES_IN_MIN_SECONDS}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{short}");
    let (status, long) = post_to(
        &client,
        first.url(&format!("{BASE}/holds")),
        json!({"amount": 2_000, "expires_in": 3_600}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{long}");
    first.kill().await;

    let second = Serve::start(&db.url, Some(ADMIN_TOKEN), &logs.path().join("second.log")).await;
    let holds = get_from(&client, second.url(&format!("{BASE}/holds"))).await;
    let seqs: Vec<u64> = holds["holds"]
        .as_array()
        .expect("holds")
        .iter()
        .map(|hold| hold["hold_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [seq_of(&short), seq_of(&long)], "both holds survived");
    // The short hold expires on time on the restarted server; the long one
    // stays open.
    let started = tokio::time::Instant::now();
    let deadline = Duration::from_secs(EXPIRES_IN_MIN_SECONDS) + EXPIRY_GRACE;
    loop {
        let enrollment = get_from(&client, second.url(BASE)).await;
        if enrollment["amount_held"] == 2_000 {
            break;
        }
        assert_eq!(enrollment["amount_held"], 5_000, "{enrollment}");
        assert!(started.elapsed() < deadline, "the short hold never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ledger = ledger_from(&client, &second.base).await;
    let histories = hold_histories(&ledger);
    assert_eq!(histories[&seq_of(&short)], ["HOLD", "EXPIRE"]);
    assert_eq!(histories[&seq_of(&long)], ["HOLD"]);
    let holds = get_from(&client, second.url(&format!("{BASE}/holds"))).await;
    assert_eq!(holds["holds"].as_array().map(Vec::len), Some(1));
    audit_clean(&client, &second.base).await;
}

mod postgres_only {
    use super::*;

    /// Holds raced over in the three-server test.
    const HOLDS: usize = 24;

    /// Three servers on one PostgreSQL database: for every hold one server
    /// captures, another voids, and all three sweep, right around the
    /// moment the hold expires. Each hold ends exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_servers_race_to_capture_void_and_expire_the_same_holds() {
        if !bursar_store::testing::postgres_available() {
            return;
        }
        let db = TestDb::new(Backend::Postgres).await;
        let logs = tempfile::tempdir().expect("temp dir");
        let mut servers = Vec::new();
        for index in 0..3 {
            let log = logs.path().join(format!("serve-{index}.log"));
            servers.push(Serve::start(&db.url, Some(ADMIN_TOKEN), &log).await);
        }
        let client = client();
        let enrolled = client
            .put(servers[0].url(BASE))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"currency": "USD", "price": 1_000_000}))
            .send()
            .await
            .expect("enroll");
        assert_eq!(enrolled.status(), StatusCode::CREATED);
        let mut holds = Vec::new();
        let mut opened_at = Vec::new();
        for index in 0..HOLDS {
            let server = &servers[index % 3];
            let (status, body) = post_to(
                &client,
                server.url(&format!("{BASE}/holds")),
                json!({"amount": 1_000, "expires_in": EXPIRES_IN_MIN_SECONDS}),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            holds.push(seq_of(&body));
            opened_at.push(tokio::time::Instant::now());
        }
        // The capture and the void of each hold are sent together, at a
        // moment spread from 1.5 s before its expiry to 1.5 s after, so some
        // holds are captured, some voided and some expire first.
        let life = Duration::from_secs(EXPIRES_IN_MIN_SECONDS);
        let spread = Duration::from_millis(3_000);
        let mut racers = Vec::new();
        for (index, hold_seq) in holds.iter().enumerate() {
            let fire_at =
                opened_at[index] + life - spread / 2 + spread * index as u32 / HOLDS as u32;
            for (offset, action) in [(0, "capture"), (1, "void")] {
                let url = servers[(index + offset) % 3].url(&hold_path(*hold_seq, action));
                let client = client.clone();
                let hold_seq = *hold_seq;
                racers.push(tokio::spawn(async move {
                    tokio::time::sleep_until(fire_at).await;
                    let (status, body) = post_to(&client, url, json!({})).await;
                    (hold_seq, status, body)
                }));
            }
        }
        let mut won: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for racer in racers {
            let (hold_seq, status, body) = racer.await.expect("racer");
            match status {
                StatusCode::CREATED => won
                    .entry(hold_seq)
                    .or_default()
                    .push(body["entry"]["kind"].as_str().unwrap().to_owned()),
                StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "HOLD_NOT_OPEN"),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        // Whatever was neither captured nor voided expires.
        let started = tokio::time::Instant::now();
        loop {
            let enrollment = get_from(&client, servers[2].url(BASE)).await;
            if enrollment["amount_held"] == 0 {
                break;
            }
            assert!(
                started.elapsed() < EXPIRY_GRACE,
                "holds left open: {enrollment}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ledger = ledger_from(&client, &servers[1].base).await;
        let histories = hold_histories(&ledger);
        assert_eq!(histories.len(), HOLDS);
        let mut endings: BTreeMap<String, usize> = BTreeMap::new();
        for hold_seq in &holds {
            let history = &histories[hold_seq];
            assert_eq!(
                history.len(),
                2,
                "hold {hold_seq} ends exactly once: {history:?}"
            );
            assert_eq!(history[0], "HOLD");
            let winners = won.get(hold_seq).cloned().unwrap_or_default();
            assert!(winners.len() <= 1, "hold {hold_seq}: {winners:?}");
            match winners.first() {
                Some(kind) => assert_eq!(&history[1], kind, "hold {hold_seq}"),
                None => assert_eq!(history[1], "EXPIRE", "hold {hold_seq}"),
            }
            *endings.entry(history[1].clone()).or_default() += 1;
        }
        let captured = endings.get("CAPTURE").copied().unwrap_or(0) as i64;
        let enrollment = get_from(&client, servers[0].url(BASE)).await;
        assert_eq!(enrollment["amount_paid"], captured * 1_000);
        println!("endings of {HOLDS} raced holds: {endings:?}");
        audit_clean(&client, &servers[0].base).await;
    }
}
