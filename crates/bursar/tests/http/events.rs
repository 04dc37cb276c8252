//! The event feed over real HTTP: every operation kind yields exactly its
//! events in the contract's order, refused operations yield none, a batch's
//! events follow its order, filters and pages, the long-poll, and a consumer
//! paging with `after` the whole time while writers race — eight clients on
//! one server, and three servers on one PostgreSQL database — never skips
//! nor repeats an event.

use crate::conformance;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, new_key};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

conformance!(
    every_operation_yields_its_events_in_order,
    a_batch_yields_its_events_in_its_order,
    the_feed_filters_pages_and_refuses_bad_queries,
    a_long_poll_wakes_when_an_event_commits,
    the_feed_never_skips_while_eight_writers_race,
);

const BASE: &str = "/v1/users/u1/courses/c1";

/// Every event after `after`, following the pages of `limit`.
async fn feed(app: &TestApp, after: u64, limit: u32) -> Vec<Value> {
    read_all(&app.client, &app.base, after, limit).await
}

/// Every event of the feed at `base` after `after`, oldest first, read in
/// pages of `limit`.
pub(crate) async fn read_all(
    client: &reqwest::Client,
    base: &str,
    mut after: u64,
    limit: u32,
) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let page = read_page(client, base, after, limit, 0).await;
        let got = page["events"].as_array().expect("events").clone();
        if got.is_empty() {
            return events;
        }
        after = page["next_after"].as_u64().expect("next_after");
        events.extend(got);
    }
}

async fn read_page(
    client: &reqwest::Client,
    base: &str,
    after: u64,
    limit: u32,
    wait: u64,
) -> Value {
    let response = client
        .get(format!(
            "{base}/v1/events?after={after}&limit={limit}&wait={wait}"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("feed request");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("feed json")
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["type"].as_str().expect("type"))
        .collect()
}

/// Positions increase one by one from `first`, ids are unique, and every
/// event carries its entry and the enrollment as that entry left it.
fn assert_well_formed(events: &[Value], first: u64) {
    let mut ids = HashSet::new();
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event["position"].as_u64(),
            Some(first + index as u64),
            "positions are dense: {event}"
        );
        assert!(
            ids.insert(event["id"].as_str().expect("id").to_owned()),
            "ids are unique: {event}"
        );
        assert_eq!(event["seq"], event["data"]["entry"]["seq"]);
        assert_eq!(
            event["data"]["enrollment"],
            event["data"]["entry"]["enrollment"]
        );
        assert_eq!(event["user_id"], event["data"]["enrollment"]["user_id"]);
        assert_eq!(event["created_at"], event["data"]["entry"]["created_at"]);
    }
}

async fn ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, body) = app.post(path, &new_key(), body).await;
    assert_eq!(status, StatusCode::CREATED, "{path}: {body}");
    body
}

async fn every_operation_yields_its_events_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut expected: Vec<&'static str> = Vec::new();
    let check = async |expected: &mut Vec<&'static str>, step: &[&'static str]| {
        expected.extend_from_slice(step);
        let events = feed(&app, 0, 1000).await;
        assert_eq!(types(&events), *expected);
        assert_well_formed(&events, 1);
    };

    app.enroll("u1", "c1", 1000).await;
    check(&mut expected, &["enrollment.created"]).await;
    ok(&app, &format!("{BASE}/payments"), json!({"amount": 400})).await;
    check(&mut expected, &["payment.recorded"]).await;

    // A refused operation yields nothing.
    let (status, _) = app
        .post(
            &format!("{BASE}/payments"),
            &new_key(),
            json!({"amount": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    check(&mut expected, &[]).await;

    let hold = ok(&app, &format!("{BASE}/holds"), json!({"amount": 300})).await;
    check(&mut expected, &["hold.created"]).await;
    let seq = hold["entry"]["seq"].as_u64().expect("seq");
    ok(&app, &format!("{BASE}/holds/{seq}/void"), json!({})).await;
    check(&mut expected, &["hold.voided"]).await;

    let hold = ok(&app, &format!("{BASE}/holds"), json!({"amount": 600})).await;
    check(&mut expected, &["hold.created"]).await;
    let seq = hold["entry"]["seq"].as_u64().expect("seq");
    ok(&app, &format!("{BASE}/holds/{seq}/capture"), json!({})).await;
    check(
        &mut expected,
        &[
            "payment.recorded",
            "hold.captured",
            "enrollment.paid_in_full",
            "enrollment.access_granted",
        ],
    )
    .await;

    let reason = json!({"amount": 100, "reason": "goodwill"});
    ok(&app, &format!("{BASE}/refunds"), reason.clone()).await;
    check(
        &mut expected,
        &["refund.recorded", "enrollment.access_revoked"],
    )
    .await;
    ok(&app, &format!("{BASE}/credits"), reason.clone()).await;
    check(
        &mut expected,
        &[
            "credit.recorded",
            "enrollment.paid_in_full",
            "enrollment.access_granted",
        ],
    )
    .await;
    ok(
        &app,
        &format!("{BASE}/charges"),
        json!({"amount": 50, "reason": "late fee"}),
    )
    .await;
    check(
        &mut expected,
        &["charge.recorded", "enrollment.access_revoked"],
    )
    .await;
    ok(&app, &format!("{BASE}/pay-remaining"), json!({})).await;
    check(
        &mut expected,
        &[
            "payment.recorded",
            "enrollment.paid_in_full",
            "enrollment.access_granted",
        ],
    )
    .await;
    ok(&app, &format!("{BASE}/complete"), json!({})).await;
    check(&mut expected, &["enrollment.completed"]).await;

    // A price-0 enrollment is paid in full and open at once.
    app.enroll("u1", "free", 0).await;
    check(
        &mut expected,
        &[
            "enrollment.created",
            "enrollment.paid_in_full",
            "enrollment.access_granted",
        ],
    )
    .await;
    app.enroll("u1", "gone", 700).await;
    ok(&app, "/v1/users/u1/courses/gone/cancel", json!({})).await;
    check(
        &mut expected,
        &["enrollment.created", "enrollment.cancelled"],
    )
    .await;

    // Every event of one entry shares its entry; the ledger and the feed
    // agree on what each entry did.
    let events = feed(&app, 0, 1000).await;
    let ledger = app.ledger("u1", "c1").await;
    for event in events.iter().filter(|event| event["course_id"] == "c1") {
        let seq = event["seq"].as_u64().expect("seq") as usize;
        assert_eq!(event["data"]["entry"], ledger[seq - 1]);
    }
    app.assert_audit_clean().await;
}

async fn a_batch_yields_its_events_in_its_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let payment = |user: &str, key: &str, amount: i64| json!({"user_id": user, "course_id": "c1", "kind": "payment", "idempotency_key": key, "body": {"amount": amount}});
    let enroll = |user: &str, price: i64| json!({"user_id": user, "course_id": "c1", "kind": "enroll", "body": {"currency": "USD", "price": price}});
    let body = json!({"operations": [
        enroll("u2", 500),
        enroll("u1", 1000),
        payment("u1", "p1", 400),
        payment("u2", "p2", 900),
        payment("u2", "p3", 500),
        payment("u1", "p4", 600),
    ]});
    let (status, _, text) = app
        .send(Method::POST, "/v1/batch", None, Some(&body.to_string()))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let events = feed(&app, 0, 1000).await;
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|event| {
            (
                event["user_id"].as_str().unwrap().to_owned(),
                event["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("u2", "enrollment.created"),
        ("u1", "enrollment.created"),
        ("u1", "payment.recorded"),
        // p2 overpays: refused, no event.
        ("u2", "payment.recorded"),
        ("u2", "enrollment.paid_in_full"),
        ("u2", "enrollment.access_granted"),
        ("u1", "payment.recorded"),
        ("u1", "enrollment.paid_in_full"),
        ("u1", "enrollment.access_granted"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(user, kind)| ((*user).to_owned(), (*kind).to_owned()))
        .collect();
    assert_eq!(seen, expected);
    assert_well_formed(&events, 1);
}

async fn the_feed_filters_pages_and_refuses_bad_queries(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for course in ["c1", "c2", "c3"] {
        app.enroll("u1", course, 100).await;
        let (status, _) = app.pay("u1", course, &new_key(), 100).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let all = feed(&app, 0, 1000).await;
    assert_eq!(all.len(), 12);
    // Pages of every size see the same events.
    for limit in [1, 2, 5, 7] {
        assert_eq!(feed(&app, 0, limit).await, all, "limit {limit}");
    }
    // From the middle of one entry's events.
    assert_eq!(feed(&app, 3, 1000).await, all[3..].to_vec());

    let (status, page) = app
        .get("/v1/events?type=enrollment.access_granted,enrollment.created&limit=4")
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = page["events"].as_array().expect("events");
    assert_eq!(
        types(got),
        [
            "enrollment.created",
            "enrollment.access_granted",
            "enrollment.created",
            "enrollment.access_granted"
        ]
    );
    assert_eq!(page["next_after"], got[3]["position"]);
    let (_, page) = app
        .get("/v1/events?type=enrollment.access_granted&type=payment.recorded")
        .await;
    assert_eq!(page["events"].as_array().expect("events").len(), 6);
    let (_, page) = app.get("/v1/events?after=12").await;
    assert_eq!(page, json!({"events": [], "next_after": 12}));
    // A filter that matches nothing still moves the cursor past what it read.
    let (_, page) = app.get("/v1/events?type=refund.recorded").await;
    assert_eq!(page, json!({"events": [], "next_after": 12}));

    for query in [
        "limit=0",
        "limit=1001",
        "wait=31",
        "wait=-1",
        "after=-1",
        "after=x",
        "type=payment.made",
        "typo=1",
    ] {
        let (status, body) = app.get(&format!("/v1/events?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{query}");
    }
    // Readers may read the feed; no token may not.
    let response = app
        .client
        .get(app.url("/v1/events"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn a_long_poll_wakes_when_an_event_commits(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 1000).await;
    // Nothing new: the wait runs out and answers an empty page.
    let started = Instant::now();
    let page = read_page(&app.client, &app.base, 1, 10, 1).await;
    assert_eq!(page["events"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));

    let waiting = {
        let client = app.client.clone();
        let base = app.base.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let page = read_page(&client, &base, 1, 10, 30).await;
            (page, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paid = Instant::now();
    let (status, _) = app.pay("u1", "c1", &new_key(), 100).await;
    assert_eq!(status, StatusCode::CREATED);
    let (page, waited) = waiting.await.expect("long poll");
    let woke_after = paid.elapsed();
    assert_eq!(
        types(page["events"].as_array().expect("events")),
        ["payment.recorded"]
    );
    println!(
        "long poll answered {woke_after:?} after the payment's commit began (waited {waited:?})"
    );
    assert!(
        waited < Duration::from_secs(20),
        "the long poll woke on the commit, not at the end of its wait"
    );
}

/// Eight clients write into many enrollments while a consumer pages through
/// the feed with `after` the whole time; it must see exactly the final feed.
async fn the_feed_never_skips_while_eight_writers_race(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bases = vec![app.base.clone()];
    race_and_consume(&app.client, &bases, 8).await;
    app.assert_audit_clean().await;
}

/// Runs `writers` writing clients spread over the servers at `bases` and one
/// consumer reading the feed from them in turn, then checks that what the
/// consumer saw is the whole final feed, once each, in order.
pub(crate) async fn race_and_consume(client: &reqwest::Client, bases: &[String], writers: usize) {
    const OPERATIONS_PER_WRITER: usize = 60;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let client = client.clone();
        let bases = bases.to_vec();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            let mut turn = 0;
            let mut empty_after_done = 0;
            loop {
                let base = &bases[turn % bases.len()];
                turn += 1;
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = read_page(&client, base, after, 17, 0).await;
                let got = page["events"].as_array().expect("events").clone();
                if got.is_empty() && finished {
                    // Every server has answered once since the writers
                    // stopped.
                    empty_after_done += 1;
                    if empty_after_done > bases.len() {
                        return seen;
                    }
                    continue;
                }
                after = page["next_after"].as_u64().expect("next_after");
                seen.extend(got);
            }
        })
    };
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let client = client.clone();
            let base = bases[writer % bases.len()].clone();
            tokio::spawn(async move {
                for round in 0..OPERATIONS_PER_WRITER {
                    let course = format!("w{writer}c{}", round % 5);
                    let path = format!("{base}/v1/users/u{writer}/courses/{course}");
                    let request = if round < 5 {
                        client
                            .put(&path)
                            .json(&json!({"currency": "USD", "price": 1000}))
                    } else {
                        client
                            .post(format!("{path}/payments"))
                            .header("Idempotency-Key", new_key())
                            .json(&json!({"amount": 40}))
                    };
                    let response = request
                        .bearer_auth(ADMIN_TOKEN)
                        .send()
                        .await
                        .expect("write");
                    assert_eq!(response.status(), StatusCode::CREATED);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = consumer.await.expect("consumer");
    let full = read_all(client, &bases[0], 0, 1000).await;
    // 5 enrollments and 55 payments per writer; every payment of 40 into
    // 1000 leaves something due, so one event each.
    assert_eq!(full.len(), writers * OPERATIONS_PER_WRITER);
    assert_eq!(seen.len(), full.len(), "the consumer saw every event once");
    assert_eq!(seen, full, "in the same order, with the same content");
    assert_well_formed(&full, 1);
}
