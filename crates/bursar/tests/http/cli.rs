//! The `bursar` command line as a user runs it, as child processes: `audit`
//! (clean, altered behind bursar's back, missing file), the admin token of a
//! first `serve`, `token create`, `backup` and `migrate` (SQLite, and a
//! PostgreSQL database that does not exist yet), `serve` on a busy port, and
//! `serve --help`. Also home of the child-process helpers the crash tests
//! share.

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a child `serve` may take to start listening, or a one-shot
/// command to finish, before the test gives up on it. Generous because the
/// machine may be busy; readiness itself is polled, never slept for.
const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// The `bursar` binary, with no `BURSAR_*` setting inherited from the
/// environment the tests run in.
pub(crate) fn bursar() -> Command {
    without_bursar_env(Command::new(env!("CARGO_BIN_EXE_bursar")))
}

/// `command` with no `BURSAR_*` setting inherited, no standard input, and
/// killed when dropped.
pub(crate) fn without_bursar_env(mut command: Command) -> Command {
    for name in [
        "BURSAR_DATABASE_URL",
        "BURSAR_LISTEN",
        "BURSAR_ADMIN_TOKEN",
        "BURSAR_LOG_FORMAT",
        "BURSAR_LOG",
        "BURSAR_HEADER_READ_TIMEOUT",
        "BURSAR_IDLE_TIMEOUT",
        "BURSAR_BODY_READ_TIMEOUT",
        "BURSAR_CONNECTIONS_MAX",
        "BURSAR_DIGEST_EVERY",
        "BURSAR_WEBHOOKS_ALLOW_PRIVATE",
        "BURSAR_WEBHOOKS_LEASE",
        "BURSAR_EVENTS_NATS",
        "BURSAR_EVENTS_NATS_STREAM",
        "BURSAR_EVENTS_NATS_SUBJECT_PREFIX",
        "BURSAR_EVENTS_NATS_LEASE",
    ] {
        command.env_remove(name);
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// What a one-shot command did.
pub(crate) struct Finished {
    /// The exit code; `None` if a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a one-shot `bursar` command (`audit`, `backup`, …) to completion.
pub(crate) async fn run_bursar(args: &[&str]) -> Finished {
    let output = tokio::time::timeout(PROCESS_DEADLINE, bursar().args(args).output())
        .await
        .unwrap_or_else(|_| panic!("bursar {args:?} did not finish in time"))
        .unwrap_or_else(|error| panic!("cannot run bursar {args:?}: {error}"));
    Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `bursar audit --database URL`; returns what it did.
pub(crate) async fn audit(database_url: &str) -> Finished {
    run_bursar(&["audit", "--database", database_url]).await
}

/// A `bursar serve` child process on 127.0.0.1 and a port of its choosing.
/// Dropping it kills the process, so a failing test never leaves one behind;
/// if the test is failing, its log is printed too.
pub(crate) struct Serve {
    child: Child,
    /// `http://ADDRESS`, as the process printed it.
    pub base: String,
    /// The lines printed to stdout before the "listening" line.
    pub banner: Vec<String>,
    log: PathBuf,
}

impl Serve {
    /// Starts `bursar serve` on the database and waits until it says it is
    /// listening. `admin_token` goes into the child's `BURSAR_ADMIN_TOKEN`;
    /// its log lines go to the file `log`.
    pub(crate) async fn start(database_url: &str, admin_token: Option<&str>, log: &Path) -> Serve {
        let mut command = bursar();
        command.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            database_url,
        ]);
        if let Some(token) = admin_token {
            command.env("BURSAR_ADMIN_TOKEN", token);
        }
        Serve::start_command(command, log).await
    }

    /// Starts a prepared `serve` command (any program that ends up exec'ing
    /// `bursar serve --listen 127.0.0.1:0 …`) and waits until it listens.
    pub(crate) async fn start_command(mut command: Command, log: &Path) -> Serve {
        let log_file = std::fs::File::create(log).expect("create the log file");
        command.stdout(Stdio::piped()).stderr(log_file);
        let mut child = command.spawn().expect("spawn bursar serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut serve = Serve {
            child,
            base: String::new(),
            banner: Vec::new(),
            log: log.to_path_buf(),
        };
        let mut lines = BufReader::new(stdout).lines();
        let deadline = tokio::time::Instant::now() + PROCESS_DEADLINE;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .expect("bursar serve did not start listening in time")
                .expect("read the stdout of bursar serve");
            let Some(line) = line else {
                panic!("bursar serve exited before listening");
            };
            if let Some(address) = line.strip_prefix("bursar listening on ") {
                serve.base = address.trim().to_owned();
                break;
            }
            serve.banner.push(line);
        }
        // Keep reading, so that a later line never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        serve
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends SIGKILL (no chance to finish anything) and reaps the process.
    pub(crate) async fn kill(&mut self) {
        self.child.kill().await.expect("kill bursar serve");
    }

    /// Sends SIGTERM and waits for the process to exit on its own.
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed: {sent}");
        tokio::time::timeout(PROCESS_DEADLINE, self.child.wait())
            .await
            .expect("bursar serve did not exit after SIGTERM")
            .expect("wait for bursar serve")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.start_kill();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "--- log of bursar serve ({}) ---\n{log}",
                self.log.display()
            );
        }
    }
}

/// `sqlite://PATH` for a file.
pub(crate) fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A GET with a bearer token; returns the status and the JSON body.
async fn get_as(client: &reqwest::Client, url: &str, token: &str) -> (StatusCode, Value) {
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A database with two enrollments and a few payments: u1/c1 has seq 1
/// (ENROLL) and payments of 1000, 2000 and 3000 at seq 2, 3 and 4; u2/c1 has
/// one payment. The service that wrote it has stopped.
async fn paid_database() -> TestDb {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.enroll("u1", "c1", 10_000).await;
    for (key, amount) in [("p-1", 1_000), ("p-2", 2_000), ("p-3", 3_000)] {
        let (status, body) = app.pay("u1", "c1", key, amount).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    app.enroll("u2", "c1", 5_000).await;
    let (status, body) = app.pay("u2", "c1", "p-4", 500).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.stop().await
}

fn db_path(db: &TestDb) -> &Path {
    db.path.as_deref().expect("an SQLite database has a path")
}

/// Runs one statement behind bursar's back and asserts it changed one row.
fn tamper(path: &Path, statement: &str) {
    let connection = rusqlite::Connection::open(path).expect("open the database");
    let changed = connection.execute(statement, []).expect("tamper");
    assert_eq!(
        changed, 1,
        "the statement should change one row: {statement}"
    );
}

/// `bursar audit --json`: the exit code and the report.
async fn audit_json(database_url: &str) -> (Option<i32>, Value) {
    let finished = run_bursar(&["audit", "--database", database_url, "--json"]).await;
    let report = serde_json::from_str(&finished.stdout).unwrap_or_else(|error| {
        panic!(
            "audit --json printed no JSON ({error}): {}",
            finished.stdout
        )
    });
    (finished.code, report)
}

fn names_seq(report: &Value, user: &str, course: &str, seq: u64) -> bool {
    report["disagreements"]
        .as_array()
        .expect("disagreements")
        .iter()
        .any(|problem| {
            problem["user_id"] == user && problem["course_id"] == course && problem["seq"] == seq
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_a_clean_database() {
    let db = paid_database().await;
    let finished = audit(&db.url).await;
    assert_eq!(
        finished.code,
        Some(0),
        "{}{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        finished
            .stdout
            .contains("audit passed: 2 enrollments, 6 ledger entries, 0 disagreements"),
        "{}",
        finished.stdout
    );
    let (code, report) = audit_json(&db.url).await;
    assert_eq!(code, Some(0));
    assert_eq!(report["ok"], json!(true), "{report}");
    assert_eq!(report["disagreements"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_names_an_altered_ledger_amount() {
    let db = paid_database().await;
    tamper(
        db_path(&db),
        "UPDATE ledger SET amount = amount + 1 WHERE user_id = 'u1' AND course_id = 'c1' AND seq = 3",
    );
    let finished = audit(&db.url).await;
    assert_eq!(
        finished.code,
        Some(1),
        "{}{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        finished
            .stdout
            .lines()
            .any(|line| line.starts_with("u1/c1 seq 3: ")),
        "the audit should name u1/c1 seq 3:\n{}",
        finished.stdout
    );
    assert!(
        finished.stdout.contains("audit FAILED"),
        "{}",
        finished.stdout
    );
    assert!(
        !finished.stdout.contains("u2/c1"),
        "the untouched enrollment is sound:\n{}",
        finished.stdout
    );
    let (code, report) = audit_json(&db.url).await;
    assert_eq!(code, Some(1));
    assert_eq!(report["ok"], json!(false), "{report}");
    assert!(names_seq(&report, "u1", "c1", 3), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_detects_an_altered_snapshot() {
    let db = paid_database().await;
    let path = db_path(&db);
    // Raise the amount paid inside the stored snapshot of seq 3 (a column of
    // the compact ledger), leaving the rest of the row (and the hash) as
    // they were.
    let connection = rusqlite::Connection::open(path).expect("open the database");
    let paid: i64 = connection
        .query_row(
            "SELECT amount_paid FROM ledger WHERE user_id = 'u1' AND course_id = 'c1' AND seq = 3",
            [],
            |row| row.get(0),
        )
        .expect("the snapshot of seq 3");
    assert_eq!(paid, 3_000);
    let changed = connection
        .execute(
            "UPDATE ledger SET amount_paid = 3100 WHERE user_id = 'u1' AND course_id = 'c1' AND seq = 3",
            [],
        )
        .expect("tamper");
    assert_eq!(changed, 1);
    drop(connection);

    let finished = audit(&db.url).await;
    assert_eq!(
        finished.code,
        Some(1),
        "{}{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        finished
            .stdout
            .lines()
            .any(|line| line.starts_with("u1/c1 seq 3: ")),
        "the audit should name u1/c1 seq 3:\n{}",
        finished.stdout
    );
    let (code, report) = audit_json(&db.url).await;
    assert_eq!(code, Some(1));
    assert_eq!(report["ok"], json!(false));
    assert!(names_seq(&report, "u1", "c1", 3), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_detects_an_altered_enrollment_row() {
    let db = paid_database().await;
    tamper(
        db_path(&db),
        "UPDATE enrollments SET amount_paid = amount_paid + 1 WHERE user_id = 'u2' AND course_id = 'c1'",
    );
    let finished = audit(&db.url).await;
    assert_eq!(
        finished.code,
        Some(1),
        "{}{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        finished
            .stdout
            .lines()
            .any(|line| line.starts_with("u2/c1: ") && line.contains("amount_paid")),
        "the audit should name u2/c1 and its amount_paid:\n{}",
        finished.stdout
    );
    assert!(
        !finished.stdout.contains("u1/c1"),
        "the untouched enrollment is sound:\n{}",
        finished.stdout
    );
    let (code, report) = audit_json(&db.url).await;
    assert_eq!(code, Some(1));
    assert_eq!(report["ok"], json!(false));
    let problems = report["disagreements"].as_array().expect("disagreements");
    assert!(
        problems.iter().any(|problem| problem["user_id"] == "u2"
            && problem["course_id"] == "c1"
            && problem["problem"]
                .as_str()
                .is_some_and(|text| text.contains("amount_paid"))),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_missing_file_fails_without_creating_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.db");
    let finished = audit(&sqlite_url(&path)).await;
    assert!(
        matches!(finished.code, Some(code) if code != 0),
        "audit of a missing file should fail: {:?} {}{}",
        finished.code,
        finished.stdout,
        finished.stderr
    );
    assert!(
        finished.stderr.contains("no database at") && finished.stderr.contains("absent.db"),
        "the message should say which database is missing: {}",
        finished.stderr
    );
    assert!(!path.exists(), "audit must not create the database");
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read the temp dir")
        .collect();
    assert!(entries.is_empty(), "audit left files behind: {entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_serve_prints_an_admin_token_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&dir.path().join("bursar.db"));
    let client = reqwest::Client::new();

    let mut first = Serve::start(&url, None, &dir.path().join("first.log")).await;
    let tokens: Vec<&String> = first
        .banner
        .iter()
        .filter(|line| line.starts_with("bursar_"))
        .collect();
    assert_eq!(tokens.len(), 1, "one admin token: {:?}", first.banner);
    let token = tokens[0].trim().to_owned();
    let (status, _) = get_as(&client, &first.url("/readyz"), &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get_as(&client, &first.url("/v1/audit"), &token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the printed token is an admin's: {body}"
    );
    let (status, _) = get_as(&client, &first.url("/readyz"), "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let exit = first.terminate().await;
    assert!(exit.success(), "serve should exit 0 on SIGTERM: {exit}");

    let mut second = Serve::start(&url, None, &dir.path().join("second.log")).await;
    assert!(
        second.banner.is_empty(),
        "a second start prints no token: {:?}",
        second.banner
    );
    let (status, _) = get_as(&client, &second.url("/readyz"), &token).await;
    assert_eq!(status, StatusCode::OK, "the first token still works");
    let exit = second.terminate().await;
    assert!(exit.success(), "serve should exit 0 on SIGTERM: {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_reader_token_reads_but_cannot_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&dir.path().join("bursar.db"));
    let client = reqwest::Client::new();
    let mut serve = Serve::start(&url, Some(ADMIN_TOKEN), &dir.path().join("serve.log")).await;
    assert!(
        serve.banner.is_empty(),
        "with BURSAR_ADMIN_TOKEN set, no token is created: {:?}",
        serve.banner
    );
    let enrollment = serve.url("/v1/users/u1/courses/c1");
    let response = client
        .put(&enrollment)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"currency": "USD", "price": 10_000}))
        .send()
        .await
        .expect("enroll");
    assert_eq!(response.status(), StatusCode::CREATED);

    let finished = run_bursar(&["token", "create", "--role", "reader", "--database", &url]).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let token = finished.stdout.trim().to_owned();
    assert!(token.starts_with("bursar_"), "a token: {token:?}");

    // The server learns of new tokens on its own, at most a second later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get_as(&client, &enrollment, &token).await;
        if status == StatusCode::OK {
            assert_eq!(body["amount_paid"], 0, "{body}");
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never accepted the new reader token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let response = client
        .post(serve.url("/v1/users/u1/courses/c1/payments"))
        .bearer_auth(&token)
        .header("Idempotency-Key", "reader-pays")
        .json(&json!({"amount": 100}))
        .send()
        .await
        .expect("pay");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    let (status, _) = get_as(&client, &serve.url("/v1/audit"), &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the audit is for admins");
    let (status, body) = get_as(&client, &enrollment, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["amount_paid"], 0,
        "the refused payment changed nothing"
    );
    let exit = serve.terminate().await;
    assert!(exit.success(), "serve should exit 0 on SIGTERM: {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_copies_and_never_overwrites() {
    let db = paid_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("new.db");
    let copy_text = copy.to_str().expect("a UTF-8 path");
    let finished = run_bursar(&["backup", "--database", &db.url, "--output", copy_text]).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(copy.exists());
    let (code, original) = audit_json(&db.url).await;
    assert_eq!(code, Some(0));
    let (code, copied) = audit_json(&sqlite_url(&copy)).await;
    assert_eq!(code, Some(0), "the copy audits clean: {copied}");
    assert_eq!(copied["enrollments"], original["enrollments"]);
    assert_eq!(copied["entries"], original["entries"]);
    assert_eq!(copied["entries"], 6);

    let existing = dir.path().join("existing.db");
    std::fs::write(&existing, "keep me").expect("write a file");
    let finished = run_bursar(&[
        "backup",
        "--database",
        &db.url,
        "--output",
        existing.to_str().expect("a UTF-8 path"),
    ])
    .await;
    assert!(
        matches!(finished.code, Some(code) if code != 0),
        "backup onto an existing file should fail: {:?}",
        finished.code
    );
    assert!(
        finished.stderr.contains("output path") && finished.stderr.contains("exists"),
        "the message is about the output path: {}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("database configuration"),
        "the database is fine: {}",
        finished.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&existing).expect("read"),
        "keep me",
        "the existing file is untouched"
    );
    let finished = run_bursar(&["backup", "--database", &db.url, "--output", copy_text]).await;
    assert!(
        matches!(finished.code, Some(code) if code != 0),
        "backup onto an earlier backup should fail too"
    );
    let (code, _) = audit_json(&sqlite_url(&copy)).await;
    assert_eq!(code, Some(0), "the earlier backup is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_a_new_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fresh.db");
    let url = sqlite_url(&path);
    let finished = run_bursar(&["migrate", "--database", &url]).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(path.exists(), "migrate creates the file");
    {
        let connection = rusqlite::Connection::open(&path).expect("open");
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .expect("user_version");
        assert!(version >= 1, "migrations recorded: {version}");
        let tables: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('enrollments', 'ledger', 'api_tokens')",
                [],
                |row| row.get(0),
            )
            .expect("tables");
        assert_eq!(tables, 3, "the schema is in place");
    }
    let finished = run_bursar(&["migrate", "--database", &url]).await;
    assert_eq!(
        finished.code,
        Some(0),
        "migrating again is harmless: {}",
        finished.stderr
    );
    let finished = audit(&url).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stdout);
    assert!(
        finished.stdout.contains("0 enrollments, 0 ledger entries"),
        "{}",
        finished.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_counts_in_words() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.enroll("u1", "c1", 10_000).await;
    let db = app.stop().await;
    let finished = audit(&db.url).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(
        finished
            .stdout
            .contains("audit passed: 1 enrollment, 1 ledger entry, 0 disagreements"),
        "{}",
        finished.stdout
    );
}

/// A busy port fails `serve` before it opens (or creates) the database and
/// before it makes and prints an admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_busy_port_fails_before_touching_the_database() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bursar.db");
    let finished = run_bursar(&[
        "serve",
        "--listen",
        &address,
        "--database",
        &sqlite_url(&path),
    ])
    .await;
    assert_eq!(finished.code, Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("failed to listen on"),
        "{}",
        finished.stderr
    );
    assert!(
        !finished.stdout.contains("bursar_"),
        "no token printed: {}",
        finished.stdout
    );
    assert!(!path.exists(), "no database created");
    assert!(
        !finished.stderr.contains('\u{1b}'),
        "no colour codes when standard error is not a terminal: {:?}",
        finished.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_help_describes_every_flag() {
    let finished = run_bursar(&["serve", "--help"]).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let help = finished.stdout;
    for needed in [
        "postgres://",
        "BURSAR_LOG",
        "BURSAR_LISTEN",
        "BURSAR_DATABASE_URL",
        "BURSAR_ADMIN_TOKEN",
        "BURSAR_LOG_FORMAT",
        "BURSAR_EVENTS_NATS",
        "BURSAR_EVENTS_NATS_STREAM",
        "BURSAR_EVENTS_NATS_SUBJECT_PREFIX",
        "BURSAR_EVENTS_NATS_LEASE",
    ] {
        assert!(help.contains(needed), "{needed} missing from:\n{help}");
    }
    // Every option has a description, on its own line or on the next,
    // more indented one.
    let lines: Vec<&str> = help.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        let flag = line.trim_start();
        if !flag.starts_with("--") {
            continue;
        }
        let indent = line.len() - flag.len();
        let same_line = flag
            .split("  ")
            .filter(|part| !part.trim().is_empty())
            .count()
            > 1;
        let next_line = lines.get(index + 1).is_some_and(|next| {
            let text = next.trim_start();
            !text.is_empty() && !text.starts_with('-') && next.len() - text.len() > indent
        });
        assert!(
            same_line || next_line,
            "a flag without a description: {line:?}\n{help}"
        );
    }
}

mod postgres {
    use super::{audit, run_bursar};
    use bursar_store::testing::{PostgresTestDb, postgres_available};

    /// `bursar migrate` creates a PostgreSQL database that does not exist,
    /// as its help says, and a second run finds it migrated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrate_creates_a_missing_postgres_database() {
        if !postgres_available() {
            return;
        }
        let database = PostgresTestDb::reserve();
        let finished = audit(database.url()).await;
        assert_ne!(finished.code, Some(0), "the database does not exist yet");
        let finished = run_bursar(&["migrate", "--database", database.url()]).await;
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        assert!(
            finished.stdout.contains("was created and is migrated"),
            "{}",
            finished.stdout
        );
        let finished = run_bursar(&["migrate", "--database", database.url()]).await;
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        assert!(
            finished.stdout.contains(" is migrated") && !finished.stdout.contains("created"),
            "{}",
            finished.stdout
        );
        let finished = audit(database.url()).await;
        assert_eq!(finished.code, Some(0), "{}", finished.stderr);
        assert!(
            finished.stdout.contains("0 enrollments, 0 ledger entries"),
            "{}",
            finished.stdout
        );
    }
}
