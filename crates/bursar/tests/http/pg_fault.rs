//! Database fault: `bursar serve` on a private PostgreSQL cluster that is
//! stopped with `pg_ctl stop -m immediate` under load and started again.
//! Every request during the outage is answered 503 quickly (never a 500,
//! never a hang), `/readyz` follows the database down and up, the same
//! process resumes serving by itself, nothing acknowledged is lost, and the
//! retries of the unacknowledged requests apply each payment once.
//!
//! The test starts its own cluster with `initdb` and `pg_ctl` of the
//! installed PostgreSQL 15, because it must kill the server, which the
//! shared test server cannot afford. PostgreSQL refuses to run as root, so
//! when the tests run as root (as they do in CI) the cluster runs as the
//! `postgres` user through `runuser`. Under `CI=true` the test always runs;
//! elsewhere it is skipped, with one printed line, where PostgreSQL 15 is not
//! installed.

use crate::cli::{Serve, audit};
use crate::helpers::{ADMIN_TOKEN, pay_raw as pay};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Where Debian installs the PostgreSQL 15 server programs.
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The OS user that owns and runs the cluster when the tests run as root.
const POSTGRES_OS_USER: &str = "postgres";

/// Concurrent clients paying throughout the test.
const PAYERS: usize = 6;

/// The enrollments the payers pay into, all of user `u1`.
const COURSES: [&str; 3] = ["c1", "c2", "c3"];

/// Large enough that no payment of this test is ever an overpayment.
const PRICE: i64 = 1_000_000_000;

/// How long the client waits for one answer before it counts the request
/// as hung. Longer than bursar's own request timeout, so that a hang is
/// told apart from a late 503.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest any answer may take: bursar's request timeout of 10 s plus a
/// margin for a busy machine.
const ANSWER_TIME_MAX: Duration = Duration::from_millis(11_500);

/// Payments acknowledged before the database is stopped, and again after it
/// is back, before the load ends.
const ACKED_PER_PHASE: usize = 150;

/// How long the database stays down while the clients keep sending.
const OUTAGE: Duration = Duration::from_secs(4);

/// A client's pause after a 503, as a client honouring the answer would
/// wait before its next request (shorter than `Retry-After`, to keep the
/// outage busy).
const PAUSE_AFTER_REFUSAL: Duration = Duration::from_millis(25);

/// How often `/readyz` is polled during the test.
const READYZ_INTERVAL: Duration = Duration::from_millis(100);

/// How long a phase may take to reach its goal before the test gives up.
const PHASE_DEADLINE: Duration = Duration::from_secs(90);

/// Whether `CI=true`: the test must run, never skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// Whether this process runs as root, which PostgreSQL refuses to do.
fn running_as_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// A private PostgreSQL cluster in a temporary directory, on 127.0.0.1 and
/// a free port, with fsync on. Dropping it stops the server at once and
/// removes the directory; if the test is failing, the server's log is
/// printed first.
struct PrivateCluster {
    /// The cluster's directory: `data/`, the server log, and its socket.
    /// Owned by the `postgres` user when the tests run as root.
    dir: tempfile::TempDir,
    port: u16,
    /// Whether the programs run as the `postgres` user through `runuser`.
    as_postgres: bool,
    running: bool,
}

impl PrivateCluster {
    /// Runs `initdb` and starts the server; panics if either fails.
    fn start() -> PrivateCluster {
        let as_postgres = running_as_root();
        // The directory must be reachable by the `postgres` user: under the
        // system's temporary directory, and handed over to that user.
        let dir = tempfile::Builder::new()
            .prefix("bursar-pg-fault-")
            .tempdir_in(std::env::temp_dir())
            .expect("temp dir for the cluster");
        if as_postgres {
            let owner = format!("{POSTGRES_OS_USER}:");
            let chown = Command::new("chown")
                .args([owner.as_str(), &dir.path().display().to_string()])
                .status()
                .expect("run chown");
            assert!(chown.success(), "chown of the cluster directory failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut cluster = PrivateCluster {
            dir,
            port,
            as_postgres,
            running: false,
        };
        let data = cluster.data();
        // Syncing the fresh files is skipped to save time; the server
        // itself runs with fsync on, and what this test kills is the
        // server, not the machine.
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.start_server();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn server_log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one PostgreSQL program to completion, as the `postgres` user
    /// when the tests run as root; returns whether it succeeded and what it
    /// printed.
    fn try_run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let program = Path::new(POSTGRES_BIN).join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", POSTGRES_OS_USER, "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        // `pg_ctl start` leaves the server running with its output in the
        // server log (`-l`), so its own output can be collected to the end.
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()));
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), printed)
    }

    fn run(&self, program: &str, args: &[&str]) {
        let (succeeded, printed) = self.try_run(program, args);
        assert!(
            succeeded,
            "{program} {args:?} failed:\n{printed}\n--- server log ---\n{}",
            std::fs::read_to_string(self.server_log()).unwrap_or_default()
        );
    }

    /// `pg_ctl start`, waiting until the server accepts connections.
    fn start_server(&mut self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let data = self.data();
        let log = self.server_log().display().to_string();
        self.run(
            "pg_ctl",
            &[
                "start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options,
            ],
        );
        self.running = true;
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, with
    /// no checkpoint and no goodbye to the clients, as in a crash.
    fn stop_immediate(&mut self) {
        let data = self.data();
        self.run("pg_ctl", &["stop", "-w", "-m", "immediate", "-D", &data]);
        self.running = false;
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of the private PostgreSQL ---\n{}",
                std::fs::read_to_string(self.server_log()).unwrap_or_default()
            );
        }
        if self.running {
            let data = self.data();
            let (stopped, printed) =
                self.try_run("pg_ctl", &["stop", "-w", "-m", "immediate", "-D", &data]);
            if !stopped {
                eprintln!("could not stop the private PostgreSQL: {printed}");
            }
        }
        // The temporary directory is removed when `dir` drops, after this.
    }
}

/// What became of one request.
#[derive(Debug, Clone)]
enum Answer {
    /// Answered with this status and body.
    Status(StatusCode, String),
    /// No answer within `CLIENT_TIMEOUT`, or the connection failed.
    Failed(String),
}

/// One payment request a payer sent, and when, relative to the test's start.
#[derive(Debug, Clone)]
struct Attempt {
    course: &'static str,
    key: String,
    amount: i64,
    sent: Duration,
    answered: Duration,
    answer: Answer,
}

impl Attempt {
    fn acknowledged(&self) -> bool {
        matches!(self.answer, Answer::Status(StatusCode::CREATED, _))
    }

    fn took(&self) -> Duration {
        self.answered - self.sent
    }
}

/// One `/readyz` poll.
#[derive(Debug, Clone)]
struct Poll {
    sent: Duration,
    answered: Duration,
    status: Option<StatusCode>,
}

/// The moments the database was stopped and started, relative to the
/// test's start.
#[derive(Debug, Clone, Copy)]
struct Outage {
    /// `pg_ctl stop` was run.
    stopping: Duration,
    /// `pg_ctl stop` returned: the server is gone.
    stopped: Duration,
    /// `pg_ctl start` was run.
    starting: Duration,
    /// `pg_ctl start` returned: the server accepts connections.
    started: Duration,
}

impl Outage {
    /// Whether a request was sent and answered while the database was
    /// certainly down.
    fn contains(&self, sent: Duration, answered: Duration) -> bool {
        sent >= self.stopped && answered <= self.starting
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("HTTP client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"));
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Starts `PAYERS` clients that pay, one request after another with fresh
/// keys, until `stop` is set. Each acknowledged payment bumps `acked`.
fn start_payers(
    base: &str,
    origin: Instant,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Attempt>>> {
    (0..PAYERS)
        .map(|payer| {
            let base = base.to_owned();
            let acked = acked.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let mut attempts = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let course = COURSES[(payer + n) % COURSES.len()];
                    let key = format!("fault-{payer}-{n}");
                    let amount = 1 + ((payer * 31 + n * 7) % 97) as i64;
                    n += 1;
                    let sent = origin.elapsed();
                    let answer = match pay(&client, &base, course, &key, amount).await {
                        Ok((status, replayed, body)) => {
                            assert!(!replayed, "a fresh key cannot be a replay: {key}: {body}");
                            Answer::Status(status, body)
                        }
                        Err(error) => Answer::Failed(error.to_string()),
                    };
                    let attempt = Attempt {
                        course,
                        key,
                        amount,
                        sent,
                        answered: origin.elapsed(),
                        answer,
                    };
                    if attempt.acknowledged() {
                        acked.fetch_add(1, Ordering::SeqCst);
                    } else {
                        tokio::time::sleep(PAUSE_AFTER_REFUSAL).await;
                    }
                    attempts.push(attempt);
                }
                attempts
            })
        })
        .collect()
}

/// Polls `/readyz` every `READYZ_INTERVAL` until `stop` is set.
fn start_readyz_poller(
    base: &str,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Poll>> {
    let url = format!("{base}/readyz");
    tokio::spawn(async move {
        let client = client();
        let mut polls = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let sent = origin.elapsed();
            let status = client
                .get(&url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()
                .map(|response| response.status());
            polls.push(Poll {
                sent,
                answered: origin.elapsed(),
                status,
            });
            tokio::time::sleep(READYZ_INTERVAL).await;
        }
        polls
    })
}

/// Waits until `acked` reaches `goal`.
async fn wait_for_acks(acked: &AtomicUsize, goal: usize, phase: &str) {
    let deadline = Instant::now() + PHASE_DEADLINE;
    while acked.load(Ordering::SeqCst) < goal {
        assert!(
            Instant::now() < deadline,
            "{phase}: only {} of {goal} payments acknowledged in time",
            acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a payment until it is acknowledged, as a client retrying with the
/// same key and body would; returns whether the answer was a replay.
async fn settle(client: &reqwest::Client, base: &str, attempt: &Attempt) -> bool {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        match pay(client, base, attempt.course, &attempt.key, attempt.amount).await {
            Ok((StatusCode::CREATED, replayed, _)) => return replayed,
            Ok((StatusCode::SERVICE_UNAVAILABLE, _, _)) => {}
            Ok((status, _, body)) => panic!("retrying {} answered {status}: {body}", attempt.key),
            Err(error) => panic!("retrying {} got no answer: {error}", attempt.key),
        }
        assert!(
            Instant::now() < deadline,
            "retrying {} was never acknowledged",
            attempt.key
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every PAYMENT entry of `u1/course` as (key, amount), and the
/// enrollment's `amount_paid`.
async fn payments_in_ledger(
    client: &reqwest::Client,
    serve: &Serve,
    course: &str,
) -> (Vec<(String, i64)>, i64) {
    let mut payments = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get_json(
            client,
            &serve.url(&format!(
                "/v1/users/u1/courses/{course}/ledger?after={after}&limit=1000"
            )),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "ledger of {course}: {page}");
        let entries = page["entries"].as_array().expect("entries").clone();
        let Some(last) = entries.last() else {
            break;
        };
        after = last["seq"].as_u64().expect("seq");
        for entry in entries.iter().filter(|entry| entry["kind"] == "PAYMENT") {
            payments.push((
                entry["idempotency_key"]
                    .as_str()
                    .expect("a payment has a key")
                    .to_owned(),
                entry["amount"].as_i64().expect("amount"),
            ));
        }
    }
    let (status, enrollment) = get_json(
        client,
        &serve.url(&format!("/v1/users/u1/courses/{course}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "enrollment {course}: {enrollment}");
    let amount_paid = enrollment["amount_paid"].as_i64().expect("amount_paid");
    (payments, amount_paid)
}

/// The error code of a JSON error body, or what the body was if it is not
/// one.
fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| value["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("not an error body: {body:.80}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_service_resumes_without_restart() {
    let initdb = Path::new(POSTGRES_BIN).join("initdb");
    if !initdb.exists() {
        assert!(
            !in_ci(),
            "CI=true and {} is missing: install PostgreSQL 15",
            initdb.display()
        );
        // Written past the test harness's capture, so the skip is seen.
        let _ = writeln!(
            std::io::stderr(),
            "skipping the database fault test: {} is missing; install PostgreSQL 15 to enable it",
            initdb.display()
        );
        return;
    }

    let mut cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .expect("start the private PostgreSQL");
    let url = cluster.url();
    let logs = tempfile::tempdir().expect("temp dir for the logs");
    // Declared after the cluster, so it is dropped (killed) first.
    let mut serve = Serve::start(&url, Some(ADMIN_TOKEN), &logs.path().join("serve.log")).await;
    let client = client();
    for course in COURSES {
        let response = client
            .put(serve.url(&format!("/v1/users/u1/courses/{course}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"currency": "USD", "price": PRICE}))
            .send()
            .await
            .expect("enroll");
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    let origin = Instant::now();
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payers = start_payers(&serve.base, origin, acked.clone(), stop.clone());
    let poller = start_readyz_poller(&serve.base, origin, stop.clone());

    // Load before the fault.
    wait_for_acks(&acked, ACKED_PER_PHASE, "before the outage").await;
    // The database dies under the load, stays down while the payers keep
    // sending, and comes back.
    let stopping = origin.elapsed();
    // `block_in_place` lets the payers run on while `pg_ctl` blocks.
    tokio::task::block_in_place(|| cluster.stop_immediate());
    let stopped = origin.elapsed();
    tokio::time::sleep(OUTAGE).await;
    let starting = origin.elapsed();
    tokio::task::block_in_place(|| cluster.start_server());
    let started = origin.elapsed();
    let outage = Outage {
        stopping,
        stopped,
        starting,
        started,
    };
    // Load after the fault, on the same process.
    let acked_at_restart = acked.load(Ordering::SeqCst);
    wait_for_acks(
        &acked,
        acked_at_restart + ACKED_PER_PHASE,
        "after the outage",
    )
    .await;
    stop.store(true, Ordering::SeqCst);

    let mut attempts = Vec::new();
    for payer in payers {
        attempts.extend(payer.await.expect("a payer failed"));
    }
    let polls = poller.await.expect("the readyz poller failed");

    // Every request was answered, in time, with a 201 or a 503.
    let failed: Vec<String> = attempts
        .iter()
        .filter_map(|attempt| match &attempt.answer {
            Answer::Failed(error) => Some(format!(
                "{} (sent at {:?}): {error}",
                attempt.key, attempt.sent
            )),
            Answer::Status(..) => None,
        })
        .collect();
    assert!(failed.is_empty(), "requests went unanswered: {failed:#?}");
    let slowest = attempts
        .iter()
        .max_by_key(|attempt| attempt.took())
        .expect("some attempts");
    assert!(
        slowest.took() <= ANSWER_TIME_MAX,
        "{} took {:?}, past bursar's request timeout ({outage:?})",
        slowest.key,
        slowest.took()
    );
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in &attempts {
        let Answer::Status(status, body) = &attempt.answer else {
            unreachable!("every request was answered");
        };
        match *status {
            StatusCode::CREATED => {}
            StatusCode::SERVICE_UNAVAILABLE => *refusals.entry(error_code(body)).or_default() += 1,
            other => panic!(
                "{} (sent at {:?}, {outage:?}) answered {other}: {body}",
                attempt.key, attempt.sent
            ),
        }
    }
    // While the database was certainly down, every request got a 503.
    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|attempt| outage.contains(attempt.sent, attempt.answered))
        .collect();
    assert!(
        during.len() >= PAYERS,
        "too few requests fell inside the outage: {}",
        during.len()
    );
    for attempt in &during {
        let Answer::Status(status, body) = &attempt.answer else {
            unreachable!("every request was answered");
        };
        assert_eq!(
            *status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{} was sent and answered during the outage: {body}",
            attempt.key
        );
    }
    let slowest_during = during
        .iter()
        .map(|attempt| attempt.took())
        .max()
        .unwrap_or_default();
    // The same process acknowledged payments again once the database was
    // back.
    let acked_after = attempts
        .iter()
        .filter(|attempt| attempt.sent >= outage.started && attempt.acknowledged())
        .count();
    assert!(
        acked_after >= 1,
        "nothing acknowledged after the database came back"
    );

    // `/readyz` said 200 before, 503 during and 200 after the outage.
    for poll in polls.iter().filter(|poll| poll.answered <= outage.stopping) {
        assert_eq!(
            poll.status,
            Some(StatusCode::OK),
            "readyz before the outage: {poll:?}"
        );
    }
    let polls_during: Vec<&Poll> = polls
        .iter()
        .filter(|poll| outage.contains(poll.sent, poll.answered))
        .collect();
    assert!(
        !polls_during.is_empty(),
        "readyz was not polled during the outage"
    );
    for poll in &polls_during {
        assert_eq!(
            poll.status,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "readyz during the outage: {poll:?} ({outage:?})"
        );
    }
    let ready_again = polls
        .iter()
        .find(|poll| poll.sent >= outage.started && poll.status == Some(StatusCode::OK))
        .expect("readyz never said 200 after the database came back");
    for poll in polls.iter().filter(|poll| poll.sent >= ready_again.sent) {
        assert_eq!(
            poll.status,
            Some(StatusCode::OK),
            "readyz after the outage: {poll:?}"
        );
    }
    let (status, body) = get_json(&client, &serve.url("/readyz")).await;
    assert_eq!(status, StatusCode::OK, "readyz at the end: {body}");

    // Every unacknowledged payment is retried with its key and body until it
    // is acknowledged: a replay if it had committed before its answer was
    // lost, applied now if it had not. Neither may count twice.
    let unacknowledged: Vec<&Attempt> = attempts
        .iter()
        .filter(|attempt| !attempt.acknowledged())
        .collect();
    let mut committed_unanswered = 0;
    for attempt in &unacknowledged {
        committed_unanswered += usize::from(settle(&client, &serve.base, attempt).await);
    }
    // Retrying acknowledged payments changes nothing and answers the original
    // body.
    let acknowledged: Vec<&Attempt> = attempts
        .iter()
        .filter(|attempt| attempt.acknowledged())
        .collect();
    let step = (acknowledged.len() / 25).max(1);
    for attempt in acknowledged.iter().step_by(step) {
        let (status, replayed, body) = pay(
            &client,
            &serve.base,
            attempt.course,
            &attempt.key,
            attempt.amount,
        )
        .await
        .expect("retry an acknowledged payment");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(replayed, "{} should be a replay", attempt.key);
        let Answer::Status(_, original) = &attempt.answer else {
            unreachable!("an acknowledged attempt was answered");
        };
        assert_eq!(
            &body, original,
            "{}: a replay answers the original",
            attempt.key
        );
    }

    // The ledgers hold every payment sent exactly once, with its amount and
    // in its enrollment, and each `amount_paid` is its ledger's sum.
    let sent: HashMap<&str, &Attempt> = attempts
        .iter()
        .map(|attempt| (attempt.key.as_str(), attempt))
        .collect();
    assert_eq!(sent.len(), attempts.len(), "keys are unique");
    let mut found: HashMap<String, usize> = HashMap::new();
    for course in COURSES {
        let (payments, amount_paid) = payments_in_ledger(&client, &serve, course).await;
        let mut sum = 0;
        for (key, amount) in payments {
            let attempt = sent
                .get(key.as_str())
                .unwrap_or_else(|| panic!("the ledger holds a payment never sent: {key}"));
            assert_eq!(attempt.course, course, "{key} is in the wrong enrollment");
            assert_eq!(attempt.amount, amount, "{key} has the wrong amount");
            sum += amount;
            *found.entry(key).or_default() += 1;
        }
        assert_eq!(
            amount_paid, sum,
            "u1/{course}: amount_paid is not the sum of its ledger's payments"
        );
    }
    for (key, count) in &found {
        assert_eq!(*count, 1, "{key} is in the ledger {count} times");
    }
    for attempt in &attempts {
        assert!(
            found.contains_key(&attempt.key),
            "{} ({}) is missing from the ledger",
            attempt.key,
            if attempt.acknowledged() {
                "acknowledged"
            } else {
                "retried until acknowledged"
            }
        );
    }
    let (status, report) = get_json(&client, &serve.url("/v1/audit")).await;
    assert_eq!(status, StatusCode::OK, "audit: {report}");
    assert_eq!(
        report["ok"],
        json!(true),
        "audit found disagreements: {report}"
    );

    // The one process, never restarted, lived through the outage and
    // served to the end; it still shuts down cleanly, and the offline audit
    // agrees.
    let exit = serve.terminate().await;
    assert!(exit.success(), "serve should exit 0 on SIGTERM: {exit}");
    let finished = audit(&url).await;
    assert_eq!(
        finished.code,
        Some(0),
        "bursar audit: {}{}",
        finished.stdout,
        finished.stderr
    );

    eprintln!(
        "{} payments sent ({} acknowledged on first try, {} after the outage), \
         {} refused with 503 {refusals:?}, {} sent and answered during the outage \
         (slowest {slowest_during:?}; slowest of all {:?}); {} retried, \
         {committed_unanswered} of them had committed; {outage:?}",
        attempts.len(),
        acknowledged.len(),
        acked_after,
        unacknowledged.len(),
        during.len(),
        slowest.took(),
        unacknowledged.len(),
    );
}
