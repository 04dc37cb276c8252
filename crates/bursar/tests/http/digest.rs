//! Digests: what the per-enrollment hash chains cannot see. A digest taken
//! over HTTP, then the database changed behind bursar's back while no server
//! runs: a truncated tail and a deleted enrollment both pass `bursar audit`
//! and fail `bursar audit --digest`, which names the missing positions; an
//! edited amount is named by the chain; an entry rewritten with its chain
//! recomputed changes only the root. An untouched database (and one written
//! to after the digest) passes; `GET /v1/digest`, `bursar digest` and the
//! log of `serve --digest-every` give the same root; both backends agree in
//! shape.

use crate::cli::{Serve, bursar, run_bursar};
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb, new_key};
use bursar_server::auth::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

crate::conformance!(
    an_untouched_database_passes_and_every_digest_agrees,
    a_truncated_tail_passes_the_audit_but_not_the_digest,
    a_deleted_enrollment_passes_the_audit_but_not_the_digest,
    an_edited_amount_is_named_by_the_chain,
    a_rewritten_entry_with_its_chain_recomputed_changes_the_root,
    unreadable_and_unplaced_rows_are_named,
    serve_logs_a_digest_at_its_interval,
);

/// How long a test waits for `serve --digest-every 1s` to log a digest: many
/// intervals, for a busy machine.
const DIGEST_LOG_DEADLINE: Duration = Duration::from_secs(30);

/// A database with a history, the digest taken over HTTP after it, and what
/// the tampering needs. Nine entries of three enrollments, some with several
/// events: `a/c1` seq 1 to 4 (payments of 300, 200, 100; its seq 3 in the
/// middle of the order and its seq 4 the newest entry), `b/c1` paid in full
/// at once (three events), `c/c1` a hold captured (four events).
struct History {
    /// The database; the server that wrote it has stopped.
    db: TestDb,
    digest: Value,
    /// `a/c1` as its seq 2 left it, and that entry's hash.
    a_at_seq_2: Value,
    a_seq_2_hash: String,
    /// The newest entry (`a/c1` seq 4).
    a_seq_4: Value,
}

async fn history(backend: Backend) -> History {
    let app = TestApp::spawn(backend).await;
    let pay = |user: &'static str, amount: i64| {
        let app = &app;
        async move {
            let (status, body) = app.pay(user, "c1", &new_key(), amount).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body
        }
    };
    app.enroll("a", "c1", 1_000).await;
    let second = pay("a", 300).await;
    app.enroll("b", "c1", 500).await;
    pay("b", 500).await;
    pay("a", 200).await;
    app.enroll("c", "c1", 800).await;
    let (status, hold) = app
        .post(
            "/v1/users/c/courses/c1/holds",
            &new_key(),
            json!({"amount": 800}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let hold_seq = hold["entry"]["seq"].as_u64().expect("hold seq");
    let (status, capture) = app
        .post(
            &format!("/v1/users/c/courses/c1/holds/{hold_seq}/capture"),
            &new_key(),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{capture}");
    let last = pay("a", 100).await;
    let (status, digest) = app.get("/v1/digest").await;
    assert_eq!(status, StatusCode::OK, "{digest}");
    History {
        db: app.stop().await,
        digest,
        a_at_seq_2: second["enrollment"].clone(),
        a_seq_2_hash: second["entry"]["hash"].as_str().expect("hash").to_owned(),
        a_seq_4: last["entry"].clone(),
    }
}

/// `bursar audit --json` on the database, with the digest in a file when
/// one is given: the exit code and the report.
async fn audit(db: &TestDb, digest: Option<&Value>) -> (Option<i32>, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("digest.json");
    let file = file.to_str().expect("a UTF-8 path");
    let mut args = vec!["audit", "--database", &db.url, "--json"];
    if let Some(digest) = digest {
        std::fs::write(file, digest.to_string()).expect("write the digest");
        args.extend(["--digest", file]);
    }
    let finished = run_bursar(&args).await;
    let report = serde_json::from_str(&finished.stdout).unwrap_or_else(|error| {
        panic!(
            "audit --json printed no JSON ({error}): {}{}",
            finished.stdout, finished.stderr
        )
    });
    (finished.code, report)
}

/// `bursar audit` without a digest passes, as it did before digests: the
/// tampering is invisible to the chains.
async fn assert_plain_audit_passes(db: &TestDb) {
    let (code, report) = audit(db, None).await;
    assert_eq!(code, Some(0), "plain audit: {report:#}");
}

/// The digest's findings, as (kind, first position, last position).
fn findings(report: &Value) -> Vec<(String, Option<u64>, Option<u64>)> {
    report["digest"]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|finding| {
            (
                finding["kind"].as_str().expect("kind").to_owned(),
                finding["positions"]["first"].as_u64(),
                finding["positions"]["last"].as_u64(),
            )
        })
        .collect()
}

fn finding(kind: &str, positions: Option<(u64, u64)>) -> (String, Option<u64>, Option<u64>) {
    (
        kind.to_owned(),
        positions.map(|(first, _)| first),
        positions.map(|(_, last)| last),
    )
}

async fn an_untouched_database_passes_and_every_digest_agrees(backend: Backend) {
    let History { db, digest, .. } = history(backend).await;
    assert_eq!(digest["entries"], 9, "{digest}");
    assert_eq!(digest["enrollments"], 3, "{digest}");
    assert_eq!(digest["root"].as_str().map(str::len), Some(64), "{digest}");
    // The command line reads the same root from the same database.
    let printed = run_bursar(&["digest", "--database", &db.url]).await;
    assert_eq!(printed.code, Some(0), "{}", printed.stderr);
    let printed: Value = serde_json::from_str(&printed.stdout).expect("one JSON line");
    for field in ["position", "entries", "enrollments", "root"] {
        assert_eq!(printed[field], digest[field], "{field}: {printed} {digest}");
    }
    let (code, report) = audit(&db, Some(&digest)).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["digest"]["found"]["root"], digest["root"]);
    // Later writes are past the digest's position: it still passes. The
    // digest's position is the feed's last event position.
    let app = TestApp::spawn_on(db, backend).await;
    let (_, feed) = app.get("/v1/events?limit=1000").await;
    let last_event = feed["events"].as_array().expect("events").last().cloned();
    assert_eq!(
        last_event.and_then(|event| event["position"].as_u64()),
        digest["position"].as_u64(),
        "{feed}"
    );
    let (status, body) = app.pay("a", "c1", &new_key(), 50).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, later) = app.get("/v1/digest").await;
    assert!(later["position"].as_u64() > digest["position"].as_u64());
    assert_eq!(later["entries"], 10);
    let db = app.stop().await;
    let finished = run_bursar(&[
        "audit",
        "--database",
        &db.url,
        "--digest",
        &write_temp(&digest),
    ])
    .await;
    assert_eq!(
        finished.code,
        Some(0),
        "{}{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        finished.stdout.contains("digest matched: position"),
        "{}",
        finished.stdout
    );
    // Only an admin takes a digest.
    let (reader_app, [reader]) = TestApp::spawn_with_tokens(backend, [Role::Reader]).await;
    let status = reader_app
        .client
        .get(reader_app.url("/v1/digest"))
        .bearer_auth(reader)
        .send()
        .await
        .expect("GET")
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Writes a digest to a file that lives as long as the test process, and
/// returns its path.
fn write_temp(digest: &Value) -> String {
    let file = tempfile::Builder::new()
        .suffix(".json")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), digest.to_string()).expect("write");
    let (_, path) = file.keep().expect("keep");
    path.to_str().expect("UTF-8").to_owned()
}

async fn a_truncated_tail_passes_the_audit_but_not_the_digest(backend: Backend) {
    let history = history(backend).await;
    // a/c1 loses seq 3 and 4, and its row goes back to what seq 2 left.
    let a = &history.a_at_seq_2;
    let updated_at: bursar_core::Timestamp =
        serde_json::from_value(a["updated_at"].clone()).expect("a timestamp");
    history.db.execute(&format!(
        "DELETE FROM ledger WHERE user_id = 'a' AND course_id = 'c1' AND seq > 2;
         UPDATE enrollments SET amount_charged = {}, amount_paid = {}, amount_credited = {},
             amount_refunded = {}, amount_due = {}, amount_held = {}, payment_status = '{}',
             access_status = '{}', status = '{}', version = {}, updated_at = {},
             last_hash = '{}'
         WHERE user_id = 'a' AND course_id = 'c1'",
        a["amount_charged"],
        a["amount_paid"],
        a["amount_credited"],
        a["amount_refunded"],
        a["amount_due"],
        a["amount_held"],
        a["payment_status"].as_str().expect("status"),
        a["access_status"].as_str().expect("status"),
        a["status"].as_str().expect("status"),
        a["version"],
        updated_at.unix_micros(),
        history.a_seq_2_hash,
    ));
    assert_plain_audit_passes(&history.db).await;
    let (code, report) = audit(&history.db, Some(&history.digest)).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(report["disagreements"], json!([]), "the chains are sound");
    // a/c1 seq 3 was the 5th entry (position 7, after b's three events);
    // seq 4 the newest, at the digest's position.
    let end = history.digest["position"].as_u64().expect("position");
    assert_eq!(
        findings(&report),
        [
            finding("gap", Some((7, 7))),
            finding("tail_truncated", Some((end, end))),
            finding("entries_differ", None),
            finding("root_differs", None),
        ],
        "{report:#}"
    );
    let problems = report["digest"]["findings"].to_string();
    assert!(
        problems.contains("position 7 missing: at least one entry deleted"),
        "{problems}"
    );
    assert!(
        problems.contains("the digest covers 9 entries, 7 are there (2 fewer)"),
        "{problems}"
    );
    // The text form names the same.
    let finished = run_bursar(&[
        "audit",
        "--database",
        &history.db.url,
        "--digest",
        &write_temp(&history.digest),
    ])
    .await;
    assert_eq!(finished.code, Some(1));
    assert!(
        finished
            .stdout
            .contains("digest: position 7 missing: at least one entry deleted (after b/c1 seq 2 at 4, before c/c1 seq 1 at 8)"),
        "{}",
        finished.stdout
    );
    assert!(
        finished.stdout.contains("audit passed"),
        "{}",
        finished.stdout
    );
    assert!(
        finished.stdout.contains("digest FAILED"),
        "{}",
        finished.stdout
    );
}

async fn a_deleted_enrollment_passes_the_audit_but_not_the_digest(backend: Backend) {
    let history = history(backend).await;
    history.db.execute(
        "DELETE FROM ledger WHERE user_id = 'b' AND course_id = 'c1';
         DELETE FROM enrollments WHERE user_id = 'b' AND course_id = 'c1'",
    );
    assert_plain_audit_passes(&history.db).await;
    let (code, report) = audit(&history.db, Some(&history.digest)).await;
    assert_eq!(code, Some(1), "{report:#}");
    // b/c1's ENROLL at 3 and its payment's three events at 4 to 6.
    assert_eq!(
        findings(&report),
        [
            finding("gap", Some((3, 6))),
            finding("entries_differ", None),
            finding("enrollments_differ", None),
            finding("root_differs", None),
        ],
        "{report:#}"
    );
    let problems = report["digest"]["findings"].to_string();
    assert!(
        problems.contains("positions 3–6 missing: at least one entry deleted (after a/c1 seq 2 at 2, before a/c1 seq 3 at 7)"),
        "{problems}"
    );
    assert!(
        problems.contains("the digest covers 3 enrollments, 2 are there (1 fewer)"),
        "{problems}"
    );
}

async fn an_edited_amount_is_named_by_the_chain(backend: Backend) {
    let history = history(backend).await;
    history.db.execute(
        "UPDATE ledger SET amount = amount + 1 WHERE user_id = 'b' AND course_id = 'c1' AND seq = 2",
    );
    let (code, report) = audit(&history.db, Some(&history.digest)).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    let named = report["disagreements"]
        .as_array()
        .expect("disagreements")
        .iter()
        .any(|problem| {
            problem["user_id"] == "b"
                && problem["seq"] == 2
                && problem["problem"]
                    .as_str()
                    .is_some_and(|text| text.starts_with("hash mismatch"))
        });
    assert!(named, "the chain names b/c1 seq 2: {report:#}");
    // The stored hash is what the root covers, and it was not changed: the
    // chain, run in the same command, is what catches this.
    assert_eq!(report["digest"]["ok"], true, "{report:#}");
}

async fn a_rewritten_entry_with_its_chain_recomputed_changes_the_root(backend: Backend) {
    let history = history(backend).await;
    // The newest entry gets another reference and a hash recomputed to
    // match, and the enrollment's last_hash follows: every chain is sound.
    let mut entry: bursar_core::LedgerEntry =
        serde_json::from_value(history.a_seq_4.clone()).expect("an entry");
    entry.reference = Some(bursar_core::Reference::parse("forged").expect("a reference"));
    let hash = entry.compute_hash();
    // Both keep a ledger hash as 32 bytes, each with its own literal.
    let stored = match backend {
        Backend::Sqlite => format!("X'{hash}'"),
        Backend::Postgres => format!("decode('{hash}', 'hex')"),
    };
    history.db.execute(&format!(
        "UPDATE ledger SET reference = 'forged', hash = {stored}
             WHERE user_id = 'a' AND course_id = 'c1' AND seq = 4;
         UPDATE enrollments SET last_hash = '{hash}' WHERE user_id = 'a' AND course_id = 'c1'"
    ));
    assert_plain_audit_passes(&history.db).await;
    let (code, report) = audit(&history.db, Some(&history.digest)).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(
        findings(&report),
        [finding("root_differs", None)],
        "{report:#}"
    );
}

async fn unreadable_and_unplaced_rows_are_named(backend: Backend) {
    let history = history(backend).await;
    // b/c1 seq 2 (position 4) gets a hash that is not one; on SQLite, whose
    // position column may be NULL, c/c1's ENROLL (position 8) loses its place.
    history.db.execute(
        "UPDATE ledger SET hash = 'not a hash' WHERE user_id = 'b' AND course_id = 'c1' AND seq = 2",
    );
    let mut expected = vec![finding("unreadable", Some((4, 4)))];
    if backend == Backend::Sqlite {
        history.db.execute(
            "UPDATE ledger SET position = NULL WHERE user_id = 'c' AND course_id = 'c1' AND seq = 1",
        );
        expected.extend([
            finding("gap", Some((8, 8))),
            finding("unplaced", None),
            finding("entries_differ", None),
            finding("enrollments_differ", None),
        ]);
    }
    expected.push(finding("root_differs", None));
    let (code, report) = audit(&history.db, Some(&history.digest)).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(findings(&report), expected, "{report:#}");
    let problems = report["digest"]["findings"].to_string();
    assert!(
        problems.contains("a ledger row cannot be read: b/c1 seq 2 at position 4: bad hash"),
        "{problems}"
    );
    if backend == Backend::Sqlite {
        assert!(
            problems.contains("1 ledger row has no position, so no digest covers it"),
            "{problems}"
        );
    }
    // No digest is taken over a row that cannot be read.
    let taken = run_bursar(&["digest", "--database", &history.db.url]).await;
    assert_eq!(taken.code, Some(2), "{}", taken.stdout);
    assert!(
        taken
            .stderr
            .contains("cannot take a digest: 1 ledger row cannot be read, the first b/c1 seq 2"),
        "{}",
        taken.stderr
    );
}

async fn serve_logs_a_digest_at_its_interval(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("serve.log");
    let mut command = bursar();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db.url])
        .env("BURSAR_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("BURSAR_DIGEST_EVERY", "1s");
    let mut serve = Serve::start_command(command, &log).await;
    let client = reqwest::Client::new();
    let enrolled = client
        .put(serve.url("/v1/users/u1/courses/c1"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"currency": "USD", "price": 100}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(enrolled.status(), StatusCode::CREATED);
    let digest: Value = client
        .get(serve.url("/v1/digest"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET /v1/digest")
        .json()
        .await
        .expect("JSON");
    assert_eq!(digest["entries"], 1, "{digest}");
    // Some later line of the log carries a digest of the same ledger.
    let deadline = tokio::time::Instant::now() + DIGEST_LOG_DEADLINE;
    let logged = loop {
        let text = std::fs::read_to_string(&log).expect("the log");
        let found = text
            .lines()
            .filter_map(|line| line.split_once(" bursar::digest: "))
            .map(|(_, json)| serde_json::from_str::<Value>(json).expect("the digest's JSON"))
            .find(|logged| logged["position"] == digest["position"]);
        if let Some(logged) = found {
            break logged;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no digest logged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(logged["root"], digest["root"], "{logged} {digest}");
    assert!(serve.terminate().await.success());
}

/// The same history on both backends gives digests of the same shape: the
/// same fields, positions and counts (the roots differ with the times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_on_sqlite_and_postgresql_agree_in_shape() {
    if !bursar_store::testing::postgres_available() {
        return;
    }
    let sqlite = history(Backend::Sqlite).await.digest;
    let postgres = history(Backend::Postgres).await.digest;
    let fields = |digest: &Value| {
        let mut keys: Vec<String> = digest
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        fields(&sqlite),
        ["created_at", "enrollments", "entries", "position", "root"]
    );
    assert_eq!(fields(&sqlite), fields(&postgres));
    for field in ["position", "entries", "enrollments"] {
        assert_eq!(
            sqlite[field], postgres[field],
            "{field}: {sqlite} {postgres}"
        );
    }
    assert_ne!(
        sqlite["root"], postgres["root"],
        "the entries' times differ"
    );
}
