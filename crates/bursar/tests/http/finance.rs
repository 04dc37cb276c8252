//! The finance desk over HTTP: enrollments as of a time, statements that
//! add up, the audit of one enrollment for readers, and `GET /v1/export` in
//! global order as CSV and JSON Lines, with its quoting, its guard against
//! spreadsheet formulas and its admin role.

use crate::conformance;
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, new_key};
use bursar_core::Timestamp;
use bursar_core::time::parse_rfc3339;
use bursar_server::auth::Role;
use bursar_server::export::EXPORT_COLUMNS;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

conformance!(
    as_of_answers_the_enrollment_as_it_stood,
    as_of_refuses_malformed_and_future_times,
    a_statement_adds_up,
    a_statement_has_bounds,
    the_audit_of_one_enrollment_finds_what_the_audit_finds,
    the_export_is_the_ledger_in_global_order,
    the_export_takes_a_period_and_refuses_bad_ones,
    only_an_admin_exports,
);

/// A GET with `token`; status, headers and body text.
pub(crate) async fn get_with(
    app: &TestApp,
    path: &str,
    token: &str,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

/// A time as the API writes it, moved by `micros`.
fn shifted(at: &Value, micros: i64) -> String {
    let at = parse_rfc3339(at.as_str().expect("a time")).expect("an API time");
    Timestamp::from_unix_micros(at.unix_micros() + micros).to_string()
}

/// A query value: `+` and `:` as a URL library would send them.
fn encoded(time: &str) -> String {
    time.replace('+', "%2B").replace(':', "%3A")
}

/// Asserts an error answer's status and code.
fn assert_refused(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
}

/// A pause long enough that the next entry gets a later `created_at`.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

async fn post_ok(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app.post(path, &new_key(), body).await;
    assert_eq!(status, StatusCode::CREATED, "POST {path}: {answer}");
    answer
}

async fn as_of_answers_the_enrollment_as_it_stood(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 1000).await;
    tick().await;
    app.pay("u1", "c1", &new_key(), 300).await;
    tick().await;
    app.pay("u1", "c1", &new_key(), 200).await;
    tick().await;
    app.enroll("u1", "c2", 50).await;
    let ledger = app.ledger("u1", "c1").await;
    let [enroll, first, second] = &ledger[..] else {
        panic!("three entries: {ledger:?}");
    };
    let course2 = &app.ledger("u1", "c2").await[0];
    let at = |time: &str| format!("/v1/users/u1/courses/c1?as_of={}", encoded(time));

    // Before the enrolment: it did not exist yet.
    let before = app.get(&at(&shifted(&enroll["created_at"], -1))).await;
    assert_refused(&before, StatusCode::NOT_FOUND, "ENROLLMENT_NOT_FOUND");
    // At an entry's own time the entry counts; between two, the earlier.
    for (time, paid, version) in [
        (shifted(&enroll["created_at"], 0), 0, 1),
        (shifted(&first["created_at"], -1), 0, 1),
        (shifted(&first["created_at"], 0), 300, 2),
        (shifted(&second["created_at"], -1), 300, 2),
        (shifted(&second["created_at"], 0), 500, 3),
    ] {
        let (status, body) = app.get(&at(&time)).await;
        assert_eq!(status, StatusCode::OK, "{time}: {body}");
        assert_eq!(
            (body["amount_paid"].as_i64(), body["version"].as_u64()),
            (Some(paid), Some(version)),
            "as of {time}: {body}"
        );
    }
    // The snapshot is the entry's enrollment, exactly.
    let (_, body) = app.get(&at(&shifted(&first["created_at"], 0))).await;
    assert_eq!(body, first["enrollment"]);
    // After the last entry: as now. The same instant with an offset, sent
    // with `+` as it is or encoded, reads the same.
    let now = app.enrollment("u1", "c1").await;
    let later = shifted(&second["created_at"], 1);
    assert_eq!(app.get(&at(&later)).await.1, now);
    let stamp = parse_rfc3339(&later).expect("time").unix_micros();
    let micros = stamp.rem_euclid(1_000_000);
    let plus_two = Timestamp::from_unix_micros(stamp + 2 * 3_600_000_000).to_string();
    let with_offset = format!("{}.{micros:06}+02:00", &plus_two[..19]);
    for sent in [with_offset.clone(), encoded(&with_offset)] {
        let (status, body) = app
            .get(&format!("/v1/users/u1/courses/c1?as_of={sent}"))
            .await;
        assert_eq!((status, &body), (StatusCode::OK, &now), "{sent}");
    }

    // The list leaves out what did not exist yet.
    let list = |time: &str| format!("/v1/users/u1/courses?as_of={}", encoded(time));
    let (status, body) = app.get(&list(&shifted(&course2["created_at"], -1))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let courses: Vec<&Value> = body["enrollments"]
        .as_array()
        .expect("list")
        .iter()
        .collect();
    assert_eq!(courses.len(), 1, "{body}");
    assert_eq!(courses[0], &second["enrollment"]);
    let (_, body) = app.get(&list(&shifted(&course2["created_at"], 0))).await;
    assert_eq!(
        body["enrollments"].as_array().expect("list").len(),
        2,
        "{body}"
    );
    let (_, body) = app.get(&list(&shifted(&enroll["created_at"], -1))).await;
    assert_eq!(body, json!({"enrollments": []}));
    let (_, body) = app
        .get("/v1/users/nobody/courses?as_of=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(body, json!({"enrollments": []}));
}

async fn as_of_refuses_malformed_and_future_times(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 1000).await;
    for path in ["/v1/users/u1/courses/c1", "/v1/users/u1/courses"] {
        for query in [
            "as_of=yesterday",
            "as_of=",
            "as_of=2026-02-30T00:00:00Z",
            "as_of=2026-03-01T00:00:00",
            "as_of=2026-03-01",
            "as_of=9999-12-31T23:59:59Z",
            "as_of=2999-01-01T00:00:00%2B01:00",
            "asof=2026-03-01T00:00:00Z",
        ] {
            let answer = app.get(&format!("{path}?{query}")).await;
            assert_refused(&answer, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
            let message = answer.1["error"]["message"].as_str().expect("message");
            if query.starts_with("as_of=9") || query.starts_with("as_of=29") {
                assert!(message.contains("is in the future"), "{message}");
            } else if query.starts_with("as_of=") {
                assert!(message.contains("as_of must be an RFC 3339"), "{message}");
            } else {
                assert!(message.contains("unknown query parameter"), "{message}");
            }
        }
    }
}

async fn a_statement_adds_up(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let path = "/v1/users/u1/courses/c1";
    app.enroll("u1", "c1", 10_000).await;
    tick().await;
    app.pay("u1", "c1", &new_key(), 1_000).await;
    tick().await;
    post_ok(
        &app,
        &format!("{path}/credits"),
        json!({"amount": 500, "reason": "bursary"}),
    )
    .await;
    tick().await;
    post_ok(
        &app,
        &format!("{path}/charges"),
        json!({"amount": 250, "reason": "late fee"}),
    )
    .await;
    tick().await;
    let hold = post_ok(&app, &format!("{path}/holds"), json!({"amount": 2_000})).await;
    let hold_seq = hold["entry"]["hold_seq"].as_u64().expect("hold_seq");
    tick().await;
    post_ok(
        &app,
        &format!("{path}/holds/{hold_seq}/capture"),
        json!({"amount": 1_500}),
    )
    .await;
    tick().await;
    post_ok(
        &app,
        &format!("{path}/refunds"),
        json!({"amount": 700, "reason": "dropped a module"}),
    )
    .await;
    tick().await;
    app.pay("u1", "c1", &new_key(), 100).await;
    let ledger = app.ledger("u1", "c1").await;
    assert_eq!(ledger.len(), 8);

    // From the first payment (included) to the last one (excluded).
    let from = shifted(&ledger[1]["created_at"], 0);
    let to = shifted(&ledger[7]["created_at"], 0);
    let (status, body) = app
        .get(&format!(
            "{path}/statement?from={}&to={}",
            encoded(&from),
            encoded(&to)
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["user_id"], &body["course_id"], &body["currency"]),
        (&json!("u1"), &json!("c1"), &json!("USD"))
    );
    assert_eq!(
        (body["from"].as_str(), body["to"].as_str()),
        (Some(&*from), Some(&*to))
    );
    assert_eq!(body["opening"], ledger[0]["enrollment"]);
    assert_eq!(body["entries"], json!(ledger[1..7]));
    assert_eq!(body["closing"], ledger[6]["enrollment"]);
    // Opening plus each entry's money gives the closing, field by field.
    let (opening, closing) = (&body["opening"], &body["closing"]);
    // A refund gives back what was paid: it lowers `amount_paid` too.
    let mut moved: HashMap<&str, i64> = HashMap::new();
    for entry in body["entries"].as_array().expect("entries") {
        let amount = entry["amount"].as_i64().expect("amount");
        let changes: &[(&str, i64)] = match entry["kind"].as_str().expect("kind") {
            "PAYMENT" | "CAPTURE" => &[("amount_paid", amount)],
            "CREDIT" => &[("amount_credited", amount)],
            "CHARGE" => &[("amount_charged", amount)],
            "REFUND" => &[("amount_refunded", amount), ("amount_paid", -amount)],
            "HOLD" => &[],
            other => panic!("an unexpected {other} entry"),
        };
        for (field, change) in changes {
            *moved.entry(field).or_default() += change;
        }
    }
    for field in [
        "amount_paid",
        "amount_credited",
        "amount_charged",
        "amount_refunded",
    ] {
        let change = moved.get(field).copied().unwrap_or(0);
        assert_eq!(
            opening[field].as_i64().expect("amount") + change,
            closing[field].as_i64().expect("amount"),
            "{field}: {body}"
        );
    }
    let due = |enrollment: &Value| {
        let number = |field: &str| enrollment[field].as_i64().expect("amount");
        number("price") + number("amount_charged")
            - number("amount_paid")
            - number("amount_credited")
    };
    assert_eq!(closing["amount_due"].as_i64(), Some(due(closing)));
    assert_eq!(
        closing["amount_due"].as_i64(),
        Some(10_000 + 250 - (2_500 - 700) - 500)
    );
    assert_eq!(closing["amount_held"], 0, "the capture closed the hold");

    // Without bounds: from the beginning (no opening) to now.
    let (status, body) = app.get(&format!("{path}/statement")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["from"], &body["opening"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(body["entries"], json!(ledger));
    assert_eq!(body["closing"], app.enrollment("u1", "c1").await);
    // An empty period; a period before the enrolment.
    let (_, body) = app
        .get(&format!(
            "{path}/statement?from={}&to={}",
            encoded(&to),
            encoded(&to)
        ))
        .await;
    assert_eq!(body["entries"], json!([]));
    assert_eq!(body["opening"], body["closing"]);
    let early = shifted(&ledger[0]["created_at"], -1);
    let (status, body) = app
        .get(&format!("{path}/statement?to={}", encoded(&early)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            &body["opening"],
            &body["entries"],
            &body["closing"],
            &body["currency"]
        ),
        (&Value::Null, &json!([]), &Value::Null, &json!("USD"))
    );
}

async fn a_statement_has_bounds(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 1_000_000).await;
    let path = "/v1/users/u1/courses/c1/statement";
    for query in [
        "from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
        "to=2999-01-01T00:00:00Z",
        "from=2999-01-01T00:00:00Z",
        "from=March",
        "limit=5",
    ] {
        let answer = app.get(&format!("{path}?{query}")).await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    let missing = app.get("/v1/users/u1/courses/nope/statement").await;
    assert_refused(&missing, StatusCode::NOT_FOUND, "ENROLLMENT_NOT_FOUND");

    // More entries than a statement lists: refused whole, never cut short.
    // The enrolment and 999 payments are exactly the most it lists.
    let operations: Vec<Value> = (1..bursar_server::finance::STATEMENT_ENTRIES_MAX)
        .map(|index| {
            json!({"user_id": "u1", "course_id": "c1", "kind": "payment",
                "idempotency_key": format!("p{index}"), "body": {"amount": 1}})
        })
        .collect();
    let (status, _, text) = app
        .send(
            reqwest::Method::POST,
            "/v1/batch",
            None,
            Some(&json!({"detail": "summary", "operations": operations}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, body) = app.get(path).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "exactly the maximum is listed: {body}"
    );
    assert_eq!(body["entries"].as_array().expect("entries").len(), 1000);
    app.pay("u1", "c1", &new_key(), 1).await;
    let answer = app.get(path).await;
    assert_refused(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "STATEMENT_TOO_LONG",
    );
    assert_eq!(answer.1["error"]["details"]["entries_max"], 1000);
}

async fn the_audit_of_one_enrollment_finds_what_the_audit_finds(backend: Backend) {
    let (app, [reader]) = TestApp::spawn_with_tokens(backend, [Role::Reader]).await;
    app.enroll("u1", "c1", 1000).await;
    app.pay("u1", "c1", &new_key(), 400).await;
    app.enroll("u1", "c2", 1000).await;
    let ledger = app.ledger("u1", "c1").await;

    let (status, _, text) = get_with(&app, "/v1/users/u1/courses/c1/audit", &reader).await;
    assert_eq!(status, StatusCode::OK, "a reader checks one chain: {text}");
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        body,
        json!({"ok": true, "entries": 2, "head_hash": ledger[1]["hash"], "problems": []})
    );
    let (status, _, _) = get_with(&app, "/v1/audit", &reader).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the whole audit stays admin's"
    );
    let missing = app.get("/v1/users/u1/courses/nope/audit").await;
    assert_refused(&missing, StatusCode::NOT_FOUND, "ENROLLMENT_NOT_FOUND");

    // An amount changed behind bursar's back: named at its entry, as the
    // whole audit names it, and the other enrollment stays clean.
    app.db.execute(
        "UPDATE ledger SET amount = 401 WHERE user_id = 'u1' AND course_id = 'c1' AND seq = 2",
    );
    let (status, body) = app.get("/v1/users/u1/courses/c1/audit").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["ok"], &body["entries"]),
        (&json!(false), &json!(2)),
        "{body}"
    );
    let problems = body["problems"].as_array().expect("problems");
    assert!(
        problems.iter().any(|problem| problem["seq"] == 2
            && problem["user_id"] == "u1"
            && problem["course_id"] == "c1"
            && problem["problem"]
                .as_str()
                .expect("text")
                .starts_with("hash mismatch")),
        "{body}"
    );
    let (_, whole) = app.get("/v1/audit").await;
    assert_eq!(&whole["disagreements"], &body["problems"], "the same words");
    let (_, other) = app.get("/v1/users/u1/courses/c2/audit").await;
    assert_eq!(other["ok"], true, "{other}");
}

/// A reference that needs CSV quoting, one that looks like markup, and one
/// a spreadsheet would run as a formula.
const QUOTED: &str = "inv 7, \"final\"";
const MARKUP: &str = "<img src=x onerror=alert(1)>";
const FORMULA: &str = "=HYPERLINK(\"http://x\",\"y\")";

/// Three enrollments written interleaved, with texts that test the CSV.
async fn interleaved(app: &TestApp) -> Vec<Value> {
    app.enroll("u1", "c1", 10_000).await;
    app.enroll("u2", "c1", 10_000).await;
    let pay = |user: &str, reference: &str| {
        (
            format!("/v1/users/{user}/courses/c1/payments"),
            json!({"amount": 100, "reference": reference}),
        )
    };
    for (path, body) in [pay("u1", QUOTED), pay("u2", MARKUP), pay("u1", FORMULA)] {
        post_ok(app, &path, body).await;
    }
    post_ok(
        app,
        "/v1/users/u2/courses/c1/refunds",
        json!({"amount": 50, "reason": "-5 days late, @finance"}),
    )
    .await;
    app.enroll("u3", "c9", 0).await;
    // A line break cannot be stored in the first place.
    let (status, body) = app
        .post(
            "/v1/users/u1/courses/c1/payments",
            &new_key(),
            json!({"amount": 1, "reference": "two\nlines"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let mut entries = Vec::new();
    for (user, course) in [("u1", "c1"), ("u2", "c1"), ("u3", "c9")] {
        entries.extend(app.ledger(user, course).await);
    }
    entries
}

/// The export's rows as `{column: text}`, from CSV text.
fn csv_rows(text: &str) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .expect("a header line")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header, EXPORT_COLUMNS,
        "the header names every column in order"
    );
    reader
        .records()
        .map(|record| {
            let record = record.expect("a CSV record");
            assert_eq!(record.len(), EXPORT_COLUMNS.len());
            header
                .iter()
                .cloned()
                .zip(record.iter().map(str::to_owned))
                .collect()
        })
        .collect()
}

async fn export(app: &TestApp, query: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    get_with(app, &format!("/v1/export?{query}"), ADMIN_TOKEN).await
}

async fn the_export_is_the_ledger_in_global_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let entries = interleaved(&app).await;
    let by_hash: HashMap<&str, &Value> = entries
        .iter()
        .map(|entry| (entry["hash"].as_str().expect("hash"), entry))
        .collect();

    let (status, headers, text) = export(&app, "format=csv").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    assert!(
        headers["content-disposition"]
            .to_str()
            .expect("ASCII")
            .starts_with("attachment; filename=\"bursar-export-beginning-"),
        "{headers:?}"
    );
    let rows = csv_rows(&text);
    assert_eq!(rows.len(), entries.len(), "every entry, once");
    let positions: Vec<u64> = rows
        .iter()
        .map(|row| row["position"].parse().expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "{positions:?}"
    );
    let order: Vec<(String, String)> = rows
        .iter()
        .map(|row| (row["user_id"].clone(), row["kind"].clone()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("u1", "ENROLL"),
        ("u2", "ENROLL"),
        ("u1", "PAYMENT"),
        ("u2", "PAYMENT"),
        ("u1", "PAYMENT"),
        ("u2", "REFUND"),
        ("u3", "ENROLL"),
    ]
    .iter()
    .map(|(user, kind)| ((*user).to_owned(), (*kind).to_owned()))
    .collect();
    assert_eq!(
        order, expected,
        "the order of the writes, across enrollments"
    );
    for row in &rows {
        let entry = by_hash[row["hash"].as_str()];
        let enrollment = &entry["enrollment"];
        assert_eq!(row["seq"], entry["seq"].to_string());
        assert_eq!(
            row["created_at"],
            entry["created_at"].as_str().expect("time")
        );
        assert_eq!(row["prev_hash"], entry["prev_hash"].as_str().expect("hash"));
        assert_eq!(row["amount_paid"], enrollment["amount_paid"].to_string());
        assert_eq!(
            row["payment_status"],
            enrollment["payment_status"].as_str().expect("status")
        );
        assert_eq!(row["source_processor"], "", "no source: an empty field");
    }
    // Quoted as it must be; markup as its characters; formulas defused.
    assert!(text.contains("\"inv 7, \"\"final\"\"\""), "{text}");
    assert_eq!(rows[2]["reference"], QUOTED);
    assert_eq!(rows[3]["reference"], MARKUP);
    assert_eq!(rows[4]["reference"], format!("'{FORMULA}"));
    assert_eq!(rows[5]["reason"], "'-5 days late, @finance");

    // JSON Lines: the same rows, every text exact, numbers as numbers.
    let (status, headers, text) = export(&app, "format=jsonl").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert!(text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
        .collect();
    assert_eq!(lines.len(), entries.len(), "no header line");
    for (line, row) in lines.iter().zip(&rows) {
        let names: Vec<&str> = line
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut columns = EXPORT_COLUMNS.to_vec();
        columns.sort_unstable();
        let mut names = names.clone();
        names.sort_unstable();
        assert_eq!(names, columns);
        assert_eq!(line["position"].to_string(), row["position"]);
        assert_eq!(line["hash"].as_str(), Some(row["hash"].as_str()));
        assert!(line["amount"].is_i64(), "{line}");
    }
    assert_eq!(
        lines[4]["reference"], FORMULA,
        "JSON Lines keeps texts exact"
    );
    assert_eq!(lines[3]["reference"], MARKUP);
    assert_eq!(lines[0]["reference"], Value::Null);
    assert_eq!(lines[6]["amount_due"], 0);
}

async fn the_export_takes_a_period_and_refuses_bad_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let entries = interleaved(&app).await;
    let mut times: Vec<String> = entries
        .iter()
        .map(|entry| entry["created_at"].as_str().expect("time").to_owned())
        .collect();
    times.sort();
    // From the third write (included) to the sixth (excluded).
    let (from, to) = (&times[2], &times[5]);
    let (status, _, text) = export(
        &app,
        &format!("from={}&to={}&format=jsonl", encoded(from), encoded(to)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let within: Vec<&String> = times
        .iter()
        .filter(|time| *time >= from && *time < to)
        .collect();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), within.len(), "{text}");
    assert!(lines.iter().all(|line| {
        let at = line["created_at"].as_str().expect("time");
        at >= from.as_str() && at < to.as_str()
    }));
    // An empty period is a header alone (CSV) or nothing (JSON Lines).
    let (_, _, text) = export(&app, &format!("from={0}&to={0}", encoded(from))).await;
    assert_eq!(text, format!("{}\n", EXPORT_COLUMNS.join(",")));
    let (_, _, text) = export(
        &app,
        &format!("from={0}&to={0}&format=jsonl", encoded(from)),
    )
    .await;
    assert_eq!(text, "");

    for query in [
        "format=xlsx",
        "format=",
        "from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
        "to=2999-01-01T00:00:00Z",
        "from=soon",
        "user_id=u1",
    ] {
        let (status, _, text) = export(&app, query).await;
        let body: Value = serde_json::from_str(&text).expect("an error body");
        assert_refused(&(status, body), StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
}

async fn only_an_admin_exports(backend: Backend) {
    let (app, [reader, writer]) =
        TestApp::spawn_with_tokens(backend, [Role::Reader, Role::Writer]).await;
    app.enroll("u1", "c1", 100).await;
    for token in [&reader, &writer] {
        let (status, _, text) = get_with(&app, "/v1/export", token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    }
    for path in [
        "/v1/users/u1/courses/c1/statement",
        "/v1/users/u1/courses/c1?as_of=2020-01-01T00:00:00Z",
    ] {
        let (status, _, text) = get_with(&app, path, &reader).await;
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "a reader reads {path}: {status} {text}"
        );
    }
    let (status, _, _) = get_with(&app, "/v1/export", ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
}
