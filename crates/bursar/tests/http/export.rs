//! Exports end to end: `bursar export` writes the bytes `GET /v1/export`
//! serves, to a file or to standard output, and refuses what it must; a
//! failure midway cuts the HTTP body short and leaves no file; and a
//! million entries go through the real binary and a real `bursar serve` in
//! flat memory (peak RSS read from `/proc/<pid>/status`).

use crate::cli::{Serve, run_bursar, sqlite_url};
use crate::conformance;
use crate::finance::{get_with, interleaved, pay_ones_in_one_batch};
use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};
use bursar_core::Timestamp;
use bursar_core::time::parse_rfc3339;
use bursar_server::export::EXPORT_COLUMNS;
use reqwest::StatusCode;
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

conformance!(
    the_command_writes_what_the_route_serves,
    the_command_refuses_bad_periods_and_existing_files,
    a_failure_midway_cuts_the_body_and_leaves_no_file,
);

/// `bursar export ARGS` on the test's database.
async fn bursar_export(app: &TestApp, args: &[&str]) -> crate::cli::Finished {
    let mut all = vec!["export", "--database", app.db.url.as_str()];
    all.extend_from_slice(args);
    run_bursar(&all).await
}

async fn the_command_writes_what_the_route_serves(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let entries = interleaved(&app).await;
    let mut times: Vec<Timestamp> = entries
        .iter()
        .map(|entry| parse_rfc3339(entry["created_at"].as_str().expect("time")).expect("time"))
        .collect();
    times.sort();
    let from = times[1].to_string();
    let to = Timestamp::from_unix_micros(times[times.len() - 1].unix_micros() + 1).to_string();
    let dir = tempfile::tempdir().expect("temp dir");

    for format in ["csv", "jsonl"] {
        let (status, _, served) = get_with(
            &app,
            &format!("/v1/export?from={from}&to={to}&format={format}"),
            ADMIN_TOKEN,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{served}");
        let rows = served.lines().count() - usize::from(format == "csv");
        assert_eq!(rows, entries.len() - 1, "all but the first write");

        let file = dir.path().join(format!("period.{format}"));
        let file_arg = file.to_str().expect("UTF-8");
        let args = ["--from", &from, "--to", &to, "--format", format];
        let written = bursar_export(&app, &[&args[..], &["--output", file_arg]].concat()).await;
        assert_eq!(written.code, Some(0), "{}", written.stderr);
        assert_eq!(std::fs::read_to_string(&file).expect("the file"), served);
        let bytes = served.len().to_string();
        let bytes = if bytes.len() > 3 {
            format!(
                "{},{}",
                &bytes[..bytes.len() - 3],
                &bytes[bytes.len() - 3..]
            )
        } else {
            bytes
        };
        assert!(
            written
                .stderr
                .contains(&format!("exported {rows} rows ({bytes} bytes)")),
            "one line of rows, bytes and seconds: {}",
            written.stderr
        );
        assert_eq!(written.stdout, "", "data goes to the file only");

        let printed = bursar_export(&app, &args).await;
        assert_eq!(printed.code, Some(0), "{}", printed.stderr);
        assert_eq!(
            printed.stdout, served,
            "standard output gets the same bytes"
        );
    }
    // Without a period: the whole ledger, the header first.
    let whole = bursar_export(&app, &[]).await;
    assert_eq!(whole.code, Some(0), "{}", whole.stderr);
    assert_eq!(
        whole.stdout.lines().next(),
        Some(EXPORT_COLUMNS.join(",").as_str())
    );
    assert_eq!(whole.stdout.lines().count(), entries.len() + 1);
}

async fn the_command_refuses_bad_periods_and_existing_files(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 100).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let existing = dir.path().join("kept.csv");
    std::fs::write(&existing, "keep me").expect("a file");
    let existing = existing.to_str().expect("UTF-8");
    for (args, says) in [
        (vec!["--output", existing], "exists already"),
        (vec!["--to", "2999-01-01T00:00:00Z"], "is in the future"),
        (
            vec![
                "--from",
                "2026-03-02T00:00:00Z",
                "--to",
                "2026-03-01T00:00:00Z",
            ],
            "is after to",
        ),
        (vec!["--from", "yesterday"], "not an RFC 3339 date-time"),
        (vec!["--format", "xlsx"], "csv or jsonl"),
    ] {
        let refused = bursar_export(&app, &args).await;
        assert_eq!(refused.code, Some(2), "{args:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(says),
            "{args:?}: {}",
            refused.stderr
        );
        assert_eq!(refused.stdout, "", "{args:?}");
    }
    assert_eq!(std::fs::read_to_string(existing).expect("kept"), "keep me");
    let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert_eq!(entries.len(), 1, "nothing else was written");
}

async fn a_failure_midway_cuts_the_body_and_leaves_no_file(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.enroll("u1", "c1", 1_000_000).await;
    pay_ones_in_one_batch(&app, 1_500).await;
    // A row past the first page that cannot be read.
    // Statuses 127 name no enrollment status (both backends keep the
    // snapshot in columns).
    app.db.execute(
        "UPDATE ledger SET statuses = 127 \
         WHERE user_id = 'u1' AND course_id = 'c1' AND seq = 1400",
    );

    let response = app
        .client
        .get(app.url("/v1/export?format=csv"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("the head arrives");
    assert_eq!(response.status(), StatusCode::OK, "the first page was fine");
    let body = response.bytes().await;
    assert!(
        body.is_err(),
        "the body is cut short, never complete-looking"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ledger.csv");
    let failed = bursar_export(&app, &["--output", file.to_str().expect("UTF-8")]).await;
    assert_eq!(failed.code, Some(2), "{}", failed.stderr);
    assert!(
        failed.stderr.contains("the export failed"),
        "{}",
        failed.stderr
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "neither the file nor its temporary remains"
    );
}

/// Entries the memory test writes.
const MILLION: u64 = 1_000_000;

/// The most a process may hold at its peak while exporting a million
/// entries: flat memory is tens of megabytes whatever the size.
const EXPORT_PEAK_RSS_BYTES_MAX: u64 = 100 * 1024 * 1024;

/// A million ledger rows of a thousand enrollments, written by SQL in one
/// transaction without a journal (an export does not verify hashes, and
/// the file is the test's own) in SQLite's compact layout (kind 1 is
/// `PAYMENT`; statuses 1 is PARTIAL/LOCKED/PENDING_PAYMENT, 22
/// COMPLETED/GRANTED/ACTIVE; the enrollment's times and version are those
/// that follow from the entry): row `i` has position `i`, user
/// `u{(i-1)/1000}`, seq `(i-1)%1000+1` and pays 1 of 1,000.
fn write_a_million_entries(path: &Path) {
    let connection = rusqlite::Connection::open(path).expect("open");
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {MILLION})
             INSERT INTO ledger (user_id, course_id, seq, kind, amount, currency, fingerprint,
                 reference, created_at, price, amount_charged, amount_paid, amount_credited,
                 amount_refunded, amount_due, amount_held, statuses, prev_hash, hash,
                 position, transitions)
             SELECT 'u' || u, 'c1', s, 1, 1, 'USD', unhex(printf('%064x', i)),
                 'ref ' || i, 1767225600000000 + i, 1000, 0, s, 0, 0, 1000 - s, 0,
                 CASE WHEN s = 1000 THEN 22 ELSE 1 END,
                 unhex(printf('%064x', i - 1)), unhex(printf('%064x', i)), i, 0
             FROM (SELECT i, (i - 1) / 1000 AS u, (i - 1) % 1000 + 1 AS s FROM n);
             COMMIT;
             PRAGMA journal_mode = WAL;"
        ))
        .expect("write a million entries");
}

/// The peak resident memory of a running process, from `VmHWM`.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Checks an exported row (CSV fields or JSON values as text) against what
/// `write_a_million_entries` wrote at `position`.
fn check_row(position: u64, field: impl Fn(&str) -> String) {
    let (user, seq) = ((position - 1) / 1000, (position - 1) % 1000 + 1);
    assert_eq!(field("position"), position.to_string());
    assert_eq!(field("user_id"), format!("u{user}"));
    assert_eq!(field("seq"), seq.to_string());
    assert_eq!(field("reference"), format!("ref {position}"));
    assert_eq!(field("amount_paid"), seq.to_string());
    assert_eq!(field("hash"), format!("{position:064x}"));
}

/// `bursar export` of a million entries to a file: the rows, and the
/// process's peak RSS, sampled until it exits (VmHWM only grows, and the
/// peak of a flat export is reached in its first pages).
async fn export_with_the_command(url: &str, output: &Path) -> (u64, Duration) {
    let started = Instant::now();
    let mut child = crate::cli::bursar()
        .args(["export", "--database", url, "--format", "csv", "--output"])
        .arg(output)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bursar export");
    let pid = child.id().expect("running");
    let mut peak = 0;
    let status = loop {
        if let Some(rss) = peak_rss_bytes(pid) {
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "bursar export failed: {status}");
    let elapsed = started.elapsed();
    let file = std::io::BufReader::new(std::fs::File::open(output).expect("the export"));
    let mut lines = file.lines();
    let header = lines.next().expect("a header").expect("text");
    assert_eq!(header, EXPORT_COLUMNS.join(","));
    let mut count = 0;
    for line in lines {
        let line = line.expect("a line");
        count += 1;
        if [1, 500_000, MILLION].contains(&count) {
            let fields: Vec<String> = line.split(',').map(str::to_owned).collect();
            check_row(count, |name| {
                fields[EXPORT_COLUMNS
                    .iter()
                    .position(|column| *column == name)
                    .expect("a column")]
                .clone()
            });
        }
    }
    assert_eq!(count, MILLION, "every entry, once");
    (peak, elapsed)
}

/// `GET /v1/export?format=jsonl` of a million entries from a real `bursar
/// serve`: the body is counted as it streams, never held whole.
async fn export_over_http(serve: &Serve) -> Duration {
    let started = Instant::now();
    let mut response = reqwest::Client::new()
        .get(serve.url("/v1/export?format=jsonl"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("the export starts");
    assert_eq!(response.status(), StatusCode::OK);
    // Line ends are found with `str::find` (the standard library's memchr,
    // optimized even in a debug build): a byte loop here would cost more
    // than the server's export.
    let (mut count, mut line) = (0u64, String::new());
    while let Some(chunk) = response.chunk().await.expect("the body streams to its end") {
        let mut rest = std::str::from_utf8(&chunk).expect("the test's rows are ASCII");
        while let Some(end) = rest.find('\n') {
            line.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            count += 1;
            if [1, 500_000, MILLION].contains(&count) {
                let row: Value = serde_json::from_str(&line).expect("a JSON line");
                check_row(count, |name| match &row[name] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                });
            }
            line.clear();
        }
        line.push_str(rest);
    }
    assert!(line.is_empty(), "the body ends with a whole line");
    assert_eq!(count, MILLION, "every entry, once");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_entries_export_in_flat_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("million.db");
    let url = sqlite_url(&path);
    let migrated = run_bursar(&["migrate", "--database", &url]).await;
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    let started = Instant::now();
    write_a_million_entries(&path);
    let written = started.elapsed();

    let serve = Serve::start(&url, Some(ADMIN_TOKEN), &dir.path().join("serve.log")).await;
    let output = dir.path().join("million.csv");
    let ((command_peak, command_time), http_time) = tokio::join!(
        export_with_the_command(&url, &output),
        export_over_http(&serve)
    );
    let serve_peak = peak_rss_bytes(serve.pid()).expect("the server runs");
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "a million entries: written by SQL in {:.1} s; bursar export (CSV, {:.0} MB) {:.1} s, \
         peak RSS {:.1} MiB; bursar serve (JSON Lines over HTTP) {:.1} s, peak RSS {:.1} MiB",
        written.as_secs_f64(),
        std::fs::metadata(&output).expect("the export").len() as f64 / 1e6,
        command_time.as_secs_f64(),
        mib(command_peak),
        http_time.as_secs_f64(),
        mib(serve_peak)
    );
    for (who, peak) in [
        ("bursar export", command_peak),
        ("bursar serve", serve_peak),
    ] {
        assert!(
            peak > 0 && peak <= EXPORT_PEAK_RSS_BYTES_MAX,
            "{who} peaked at {:.1} MiB, over {:.0} MiB",
            mib(peak),
            mib(EXPORT_PEAK_RSS_BYTES_MAX)
        );
    }
}
