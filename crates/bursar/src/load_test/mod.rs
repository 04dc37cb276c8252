//! `bursar load-test`: concurrent clients paying into one or many enrollments
//! through bursar-client, with a live progress bar; then throughput, an HDR
//! latency histogram, error counts by code, and a verdict that the money adds
//! up: every enrollment's `amount_paid` is the sum of its acknowledged
//! payments, its ledger holds each acknowledged key exactly once, and the
//! audit is clean.
//!
//! Every payment `i` of a run is fully determined by the run id, the seed and
//! `i`: its idempotency key (`RUN-i`), its enrollment (`i mod K`) and its
//! amount. A retry therefore always resends the identical request, and the
//! verdict can recompute what each acknowledged key should have paid.

mod holds;
mod report;
mod spawn;

use anyhow::{Context, bail};
use bursar_client::retry::splitmix64;
use bursar_client::{
    BATCH_OPERATIONS_MAX, BatchCommand, BatchDetail, BatchOperation, BatchRequest, BatchResponse,
    Client, EnrollRequest, Outcome, PaymentRequest, Receipt, RetryPolicy,
};
use bursar_core::money::OPERATION_AMOUNT_MAX;
use bursar_core::{
    Amount, CourseId, Currency, EnrollmentKey, EntryKind, IdempotencyKey, Price, UserId,
};
use bursar_server::writer::QUEUE_OPERATIONS_MAX;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use report::{
    ConfigReport, ErrorsReport, PaymentsReport, Report, RequestsReport, ServerReport,
    ThroughputReport, latency_report, render,
};
pub(crate) use report::{plural, thousands};
use serde::{Deserialize, Serialize};
use spawn::SpawnedServer;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Clients of a run of single payments given no `--clients`.
const CLIENTS_DEFAULT: u32 = 100;

/// The payments all clients may have in flight at once when `--clients` is
/// not given: half the server's write queue, so the queue never overflows
/// (a 503 `OVERLOADED` and a retry measure the overflow, not the server)
/// while the writer still always has a full batch waiting.
const IN_FLIGHT_PAYMENTS_DEFAULT_MAX: u64 = QUEUE_OPERATIONS_MAX as u64 / 2;

impl LoadTestArgs {
    /// `--clients`, or the default for the batch size.
    fn clients(&self) -> u32 {
        self.clients.unwrap_or_else(|| {
            let fitting = IN_FLIGHT_PAYMENTS_DEFAULT_MAX / u64::from(self.batch_size).max(1);
            u32::try_from(fitting.clamp(1, u64::from(CLIENTS_DEFAULT))).unwrap_or(CLIENTS_DEFAULT)
        })
    }
}

/// Payments of a run given neither `--payments` nor `--duration`.
const PAYMENTS_DEFAULT: u64 = 10_000;

/// Every enrollment of a run has the largest price there is, so that no
/// planned payment is ever an overpayment.
const ENROLLMENT_PRICE: i64 = OPERATION_AMOUNT_MAX;

/// How long unknown outcomes are resent (with their keys) before the verdict
/// gives up on them.
const RECONCILE_TIME_MAX: Duration = Duration::from_secs(60);

/// Ledger entries read per page when checking: the server's largest page.
const LEDGER_PAGE_ENTRIES: u32 = 1_000;

/// Enrollments checked at once by the verdict.
const VERIFY_CONCURRENCY_MAX: usize = 16;

/// Latencies are recorded in microseconds, up to an hour, to three
/// significant digits.
const LATENCY_MICROS_MAX: u64 = 3_600_000_000;

/// How long a spawned server may take to start listening, and to stop.
const SPAWN_DEADLINE: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct LoadTestArgs {
    /// The bursar service to load (ignored with --spawn).
    #[arg(long, env = "BURSAR_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A bearer token: writer role for the load, admin for the verdict's
    /// audit (ignored with --spawn, which makes its own).
    #[arg(long, env = "BURSAR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Start a private `bursar serve` on a temporary SQLite file first, load
    /// it, report its peak memory, and stop it after.
    #[arg(long)]
    spawn: bool,
    /// Concurrent clients, each with one request in flight at a time.
    /// Default: 100 with one payment per request; with --batch-size, as many
    /// as keep clients × batch size within half the server's write queue
    /// of 262,144 operations (16 clients for batches of 8,192), so the run
    /// measures the server instead of overflowing its queue.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    clients: Option<u32>,
    /// Payments to make in all (the default is 10,000); with --holds,
    /// checkout flows.
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    payments: Option<u64>,
    /// Pay for this many seconds instead of a number of payments.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Enrollments to spread the payments over; 1 is one hot enrollment.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    enrollments: u32,
    /// Payments per request: 1 posts each to …/payments, more go together
    /// to /v1/batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=BATCH_OPERATIONS_MAX as i64))]
    batch_size: u32,
    /// Send this share of requests twice at once, with the same keys.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    duplicate_percent: u8,
    /// The smallest payment, in minor units.
    #[arg(long, default_value_t = 100)]
    amount_min: i64,
    /// The largest payment, in minor units.
    #[arg(long, default_value_t = 10_000)]
    amount_max: i64,
    /// Seeds the amounts, the duplicates and the retry jitter (random by
    /// default; the report shows it).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the report as one JSON document on stdout, and no progress bar.
    #[arg(long)]
    json: bool,
    /// Run checkout flows instead of single payments: hold an amount, then
    /// capture it; a share is voided and a share left to expire (the run
    /// then waits 30 s for those to expire before its verdict).
    #[arg(long)]
    holds: bool,
    /// With --holds: the share of holds voided instead of captured.
    #[arg(long, default_value_t = holds::VOID_PERCENT_DEFAULT, requires = "holds",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    void_percent: u8,
    /// With --holds: the share of holds left to expire (opened with the
    /// shortest life, 30 s).
    #[arg(long, default_value_t = holds::EXPIRE_PERCENT_DEFAULT, requires = "holds",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    expire_percent: u8,
}

/// The amount of the `index`-th payment or hold of a run: drawn from its
/// seed, so it is derived again whenever needed and never stored.
pub(crate) fn drawn_amount(seed: u64, index: u64, amount_min: i64, amount_span: u64) -> i64 {
    let drawn = splitmix64(seed ^ splitmix64(index)) % amount_span;
    amount_min + drawn as i64
}

/// What every payment of the run is: derived, never stored.
struct Plan {
    run_id: String,
    seed: u64,
    enrollments: Vec<EnrollmentKey>,
    amount_min: i64,
    amount_span: u64,
    duplicate_percent: u64,
    batch_size: u64,
    /// `None` when the run is bounded by time.
    payments: Option<u64>,
}

impl Plan {
    fn enrollment_of(&self, index: u64) -> usize {
        (index % self.enrollments.len() as u64) as usize
    }

    fn amount_of(&self, index: u64) -> i64 {
        drawn_amount(self.seed, index, self.amount_min, self.amount_span)
    }

    fn key_of(&self, index: u64) -> IdempotencyKey {
        IdempotencyKey::parse(&format!("{}-{index}", self.run_id))
            .expect("a run id and a number make a valid idempotency key")
    }

    fn index_of_key(&self, key: &str) -> Option<u64> {
        key.strip_prefix(self.run_id.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    fn payment_of(&self, index: u64) -> PaymentRequest {
        PaymentRequest::new(
            Amount::new(i128::from(self.amount_of(index))).expect("amounts are checked up front"),
        )
    }

    /// Whether the request whose first payment is `index` is sent twice.
    fn is_duplicated(&self, index: u64) -> bool {
        splitmix64(self.seed.rotate_left(29) ^ splitmix64(index)) % 100 < self.duplicate_percent
    }
}

/// Sets of payment indices kept as runs of consecutive numbers: a batch's
/// payments are consecutive, so millions of them take little memory.
#[derive(Default, Debug)]
struct Runs {
    runs: Vec<(u64, u64)>,
    count: u64,
}

impl Runs {
    fn push(&mut self, index: u64) {
        self.count += 1;
        if let Some(last) = self.runs.last_mut()
            && last.1 == index
        {
            last.1 += 1;
            return;
        }
        self.runs.push((index, index + 1));
    }

    fn append(&mut self, other: Runs) {
        self.count += other.count;
        self.runs.extend(other.runs);
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|&(start, end)| start..end)
    }

    fn max_end(&self) -> u64 {
        self.runs.iter().map(|run| run.1).max().unwrap_or(0)
    }
}

/// The final word on one payment.
enum Settled {
    Acknowledged { replays: u64 },
    Refused(String),
    Unknown(String),
}

/// Merges the answers to a request sent once or twice: acknowledged if any
/// answer says so; unknown if any is unknown (the other may be a refusal
/// that raced the application); refused only if every answer refused.
fn settle(outcomes: &[Outcome<bool>]) -> Settled {
    let mut acknowledged = false;
    let mut replays = 0;
    let mut unknown = None;
    let mut refused = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Succeeded(replayed) => {
                acknowledged = true;
                replays += u64::from(*replayed);
            }
            Outcome::Refused { code, .. } => refused = Some(code.clone()),
            Outcome::Unknown(reason) => unknown = Some(reason.clone()),
        }
    }
    if acknowledged {
        Settled::Acknowledged { replays }
    } else if let Some(reason) = unknown {
        Settled::Unknown(reason)
    } else {
        Settled::Refused(refused.unwrap_or_default())
    }
}

/// What one client saw; merged after the load.
struct Tally {
    latency_micros: Histogram<u64>,
    requests: u64,
    duplicate_requests: u64,
    replays: u64,
    acknowledged: Runs,
    refused: BTreeMap<String, u64>,
    unknown: Vec<u64>,
    unknown_reason: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_micros: Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3)
                .expect("valid histogram bounds"),
            requests: 0,
            duplicate_requests: 0,
            replays: 0,
            acknowledged: Runs::default(),
            refused: BTreeMap::new(),
            unknown: Vec::new(),
            unknown_reason: None,
        }
    }

    fn record_latency(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_micros.saturating_record(micros.max(1));
    }

    fn settle(&mut self, index: u64, settled: Settled) {
        match settled {
            Settled::Acknowledged { replays } => {
                self.replays += replays;
                self.acknowledged.push(index);
            }
            Settled::Refused(code) => *self.refused.entry(code).or_default() += 1,
            Settled::Unknown(reason) => {
                self.unknown.push(index);
                self.unknown_reason.get_or_insert(reason);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_micros
            .add(&other.latency_micros)
            .expect("histograms of the same bounds add");
        self.requests += other.requests;
        self.duplicate_requests += other.duplicate_requests;
        self.replays += other.replays;
        self.acknowledged.append(other.acknowledged);
        for (code, count) in other.refused {
            *self.refused.entry(code).or_default() += count;
        }
        self.unknown.extend(other.unknown);
        if self.unknown_reason.is_none() {
            self.unknown_reason = other.unknown_reason;
        }
    }
}

/// What the clients share during the load: a few atomics, nothing locked.
struct Shared {
    plan: Plan,
    client: Client,
    /// The next payment index to claim.
    next: AtomicU64,
    deadline: Option<Instant>,
    /// Payments answered so far, and how many of them were acknowledged:
    /// the progress bar's only inputs.
    answered: AtomicU64,
    acknowledged: AtomicU64,
}

impl Shared {
    /// Claims the next request's payments: `start..end`, or `None` when the
    /// run is over.
    fn claim(&self) -> Option<(u64, u64)> {
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return None;
        }
        let start = self.next.fetch_add(self.plan.batch_size, Ordering::Relaxed);
        let end = start + self.plan.batch_size;
        match self.plan.payments {
            Some(limit) if start >= limit => None,
            Some(limit) => Some((start, end.min(limit))),
            None => Some((start, end)),
        }
    }
}

async fn timed<T>(future: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = future.await;
    (value, started.elapsed())
}

/// One client: claims payments and sends them, one request at a time.
async fn run_client(shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::new();
    while let Some((start, end)) = shared.claim() {
        let duplicated = shared.plan.is_duplicated(start);
        let sends = if duplicated { 2 } else { 1 };
        tally.requests += sends;
        tally.duplicate_requests += sends - 1;
        let acknowledged_before = tally.acknowledged.count;
        if shared.plan.batch_size == 1 {
            pay_one(&shared, start, duplicated, &mut tally).await;
        } else {
            pay_batch(&shared, start, end, duplicated, &mut tally).await;
        }
        shared.acknowledged.fetch_add(
            tally.acknowledged.count - acknowledged_before,
            Ordering::Relaxed,
        );
        shared.answered.fetch_add(end - start, Ordering::Relaxed);
    }
    tally
}

fn receipt_outcome(outcome: Outcome<Receipt>) -> Outcome<bool> {
    outcome.map(|receipt| receipt.replayed)
}

async fn pay_one(shared: &Shared, index: u64, duplicated: bool, tally: &mut Tally) {
    let plan = &shared.plan;
    let enrollment = &plan.enrollments[plan.enrollment_of(index)];
    let key = plan.key_of(index);
    let payment = plan.payment_of(index);
    let send = || timed(shared.client.payment_receipt(enrollment, &key, &payment));
    let settled = if duplicated {
        let ((first, first_latency), (second, second_latency)) = tokio::join!(send(), send());
        tally.record_latency(first_latency);
        tally.record_latency(second_latency);
        settle(&[receipt_outcome(first), receipt_outcome(second)])
    } else {
        let (outcome, latency) = send().await;
        tally.record_latency(latency);
        settle(&[receipt_outcome(outcome)])
    };
    tally.settle(index, settled);
}

/// The outcome of each operation of a batch, from the batch's own outcome.
fn batch_outcomes(outcome: &Outcome<BatchResponse>, count: usize) -> Vec<Outcome<bool>> {
    match outcome {
        Outcome::Succeeded(response) if response.results.len() == count => response
            .results
            .iter()
            .map(|result| {
                if result.status == 201 {
                    Outcome::Succeeded(result.replayed)
                } else if (400..500).contains(&result.status) {
                    Outcome::Refused {
                        status: result.status,
                        code: result.error_code().unwrap_or("UNKNOWN_CODE").to_owned(),
                        message: String::new(),
                    }
                } else {
                    Outcome::Unknown(format!("the batch answered {} for it", result.status))
                }
            })
            .collect(),
        Outcome::Succeeded(response) => {
            let reason = format!(
                "the batch answered {} results for {count} operations",
                response.results.len()
            );
            vec![Outcome::Unknown(reason); count]
        }
        Outcome::Refused {
            status,
            code,
            message,
        } => vec![
            Outcome::Refused {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            };
            count
        ],
        Outcome::Unknown(reason) => vec![Outcome::Unknown(reason.clone()); count],
    }
}

/// The payments `indices` as one `/v1/batch` request, in `summary` detail:
/// the verdict reads the balances later, so no answer needs the bodies.
fn batch_request(plan: &Plan, indices: impl Iterator<Item = u64>) -> BatchRequest {
    let operations = indices
        .map(|index| {
            BatchOperation::new(
                &plan.enrollments[plan.enrollment_of(index)],
                Some(plan.key_of(index)),
                BatchCommand::Payment(plan.payment_of(index)),
            )
        })
        .collect();
    BatchRequest {
        operations,
        detail: BatchDetail::Summary,
    }
}

async fn pay_batch(shared: &Shared, start: u64, end: u64, duplicated: bool, tally: &mut Tally) {
    let request = batch_request(&shared.plan, start..end);
    let count = (end - start) as usize;
    let send = || timed(shared.client.batch(&request));
    let answers = if duplicated {
        let ((first, first_latency), (second, second_latency)) = tokio::join!(send(), send());
        tally.record_latency(first_latency);
        tally.record_latency(second_latency);
        vec![
            batch_outcomes(&first, count),
            batch_outcomes(&second, count),
        ]
    } else {
        let (outcome, latency) = send().await;
        tally.record_latency(latency);
        vec![batch_outcomes(&outcome, count)]
    };
    for (offset, index) in (start..end).enumerate() {
        let outcomes: Vec<Outcome<bool>> = answers
            .iter()
            .map(|answer| answer[offset].clone())
            .collect();
        tally.settle(index, settle(&outcomes));
    }
}

/// Resends every payment whose outcome is unknown with its own key, the way
/// it was first sent (alone, or in batches of the run's batch size), in
/// rounds until each is known or `RECONCILE_TIME_MAX` has passed. Whatever
/// the earlier attempts did, the keys make each payment count once.
async fn reconcile(shared: &Arc<Shared>, unknown: Vec<u64>, clients: usize) -> Tally {
    let deadline = Instant::now() + RECONCILE_TIME_MAX;
    let mut total = Tally::new();
    let mut pending = unknown;
    loop {
        let round = reconcile_round(shared, pending, clients).await;
        pending = round.unknown.clone();
        let reason = round.unknown_reason.clone();
        total.merge(Tally {
            unknown: Vec::new(),
            ..round
        });
        if pending.is_empty() || Instant::now() >= deadline {
            total.unknown = pending;
            total.unknown_reason = reason;
            return total;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One pass over `pending`: each client takes the next chunk and sends it.
async fn reconcile_round(shared: &Arc<Shared>, pending: Vec<u64>, clients: usize) -> Tally {
    let chunk_size = shared.plan.batch_size as usize;
    let chunks: Arc<Vec<Vec<u64>>> =
        Arc::new(pending.chunks(chunk_size).map(<[u64]>::to_vec).collect());
    let cursor = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.min(chunks.len()) {
        let (shared, chunks, cursor) = (shared.clone(), chunks.clone(), cursor.clone());
        tasks.spawn(async move {
            let mut tally = Tally::new();
            while let Some(chunk) = chunks.get(cursor.fetch_add(1, Ordering::Relaxed)) {
                let plan = &shared.plan;
                if let [index] = chunk[..] {
                    let enrollment = &plan.enrollments[plan.enrollment_of(index)];
                    let (key, payment) = (plan.key_of(index), plan.payment_of(index));
                    let outcome = shared
                        .client
                        .payment_receipt(enrollment, &key, &payment)
                        .await;
                    tally.settle(index, settle(&[receipt_outcome(outcome)]));
                } else {
                    let request = batch_request(plan, chunk.iter().copied());
                    let outcome = shared.client.batch(&request).await;
                    let outcomes = batch_outcomes(&outcome, chunk.len());
                    for (index, outcome) in chunk.iter().zip(outcomes) {
                        tally.settle(*index, settle(&[outcome]));
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(tally) = tasks.join_next().await {
        total.merge(tally.expect("a reconciling task does not panic"));
    }
    total
}

/// The least of a ledger entry the verdict needs.
#[derive(Deserialize)]
struct LedgerKey {
    seq: u64,
    kind: EntryKind,
    amount: i64,
    idempotency_key: Option<String>,
}

/// What one enrollment's check found.
struct EnrollmentCheck {
    amount_paid: i64,
    ledger_payments: u64,
    problems: Vec<String>,
}

/// Reads one enrollment and pages through its whole ledger, marking each
/// payment key seen in `seen`.
async fn check_enrollment(
    shared: &Shared,
    position: usize,
    acknowledged: &[bool],
    seen: &[AtomicU8],
) -> EnrollmentCheck {
    let plan = &shared.plan;
    let enrollment = &plan.enrollments[position];
    let mut check = EnrollmentCheck {
        amount_paid: 0,
        ledger_payments: 0,
        problems: Vec::new(),
    };
    match shared.client.enrollment(enrollment).await {
        Outcome::Succeeded(found) => check.amount_paid = found.amount_paid,
        other => {
            check.problems.push(format!(
                "{enrollment}: cannot be read: {}",
                describe(&other)
            ));
            return check;
        }
    }
    let mut after = 0;
    loop {
        let page = match shared
            .client
            .ledger_as::<LedgerKey>(enrollment, after, LEDGER_PAGE_ENTRIES)
            .await
        {
            Outcome::Succeeded(page) => page,
            other => {
                check.problems.push(format!(
                    "{enrollment}: the ledger after seq {after} cannot be read: {}",
                    describe(&other)
                ));
                return check;
            }
        };
        let Some(last) = page.last() else {
            return check;
        };
        after = last.seq;
        for entry in page.iter().filter(|entry| entry.kind == EntryKind::Payment) {
            check.ledger_payments += 1;
            let key = entry.idempotency_key.as_deref().unwrap_or("");
            let index = plan
                .index_of_key(key)
                .filter(|&index| acknowledged.get(index as usize).copied().unwrap_or(false));
            let Some(index) = index else {
                check.problems.push(format!(
                    "{enrollment} seq {}: payment key {key:?} was never acknowledged",
                    entry.seq
                ));
                continue;
            };
            if plan.enrollment_of(index) != position || entry.amount != plan.amount_of(index) {
                check.problems.push(format!(
                    "{enrollment} seq {}: payment {key} of {} is not the payment sent",
                    entry.seq, entry.amount
                ));
            }
            seen[index as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn describe<T>(outcome: &Outcome<T>) -> String {
    match outcome {
        Outcome::Succeeded(_) => "succeeded".to_owned(),
        Outcome::Refused {
            status,
            code,
            message,
        } => format!("{status} {code}: {message}"),
        Outcome::Unknown(reason) => format!("no answer: {reason}"),
    }
}

#[derive(Serialize)]
struct Verdict {
    ok: bool,
    enrollments_checked: u64,
    /// Every enrollment's `amount_paid` equals the sum of its acknowledged
    /// payments.
    amounts_match: bool,
    /// Every acknowledged key is in the ledger exactly once, and no other
    /// key of the run is.
    ledger_keys_once: bool,
    ledger_payments: u64,
    audit_ok: bool,
    audit_enrollments: u64,
    audit_entries: u64,
    /// Payments whose outcome stayed unknown after reconciling: the money
    /// cannot be checked while any is.
    unknown_remaining: u64,
    problems: Vec<String>,
}

/// Problems listed in full; beyond this many only their number is given.
const PROBLEMS_SHOWN_MAX: usize = 20;

async fn verify(shared: &Arc<Shared>, acknowledged_runs: &Runs, unknown_remaining: u64) -> Verdict {
    let plan = &shared.plan;
    let size = acknowledged_runs.max_end() as usize;
    let mut acknowledged = vec![false; size];
    let mut expected_paid = vec![0i64; plan.enrollments.len()];
    for index in acknowledged_runs.iter() {
        acknowledged[index as usize] = true;
        expected_paid[plan.enrollment_of(index)] += plan.amount_of(index);
    }
    let acknowledged = Arc::new(acknowledged);
    let seen: Arc<Vec<AtomicU8>> = Arc::new((0..size).map(|_| AtomicU8::new(0)).collect());
    let cursor = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..VERIFY_CONCURRENCY_MAX.min(plan.enrollments.len()) {
        let (shared, acknowledged, seen, cursor) = (
            shared.clone(),
            acknowledged.clone(),
            seen.clone(),
            cursor.clone(),
        );
        tasks.spawn(async move {
            let mut checks = Vec::new();
            loop {
                let position = cursor.fetch_add(1, Ordering::Relaxed);
                if position >= shared.plan.enrollments.len() {
                    return checks;
                }
                let check = check_enrollment(&shared, position, &acknowledged, &seen).await;
                checks.push((position, check));
            }
        });
    }
    let mut problems = Vec::new();
    let mut amounts_match = true;
    let mut ledger_keys_once = true;
    let mut ledger_payments = 0;
    let mut checked = 0;
    while let Some(checks) = tasks.join_next().await {
        for (position, check) in checks.expect("a checking task does not panic") {
            checked += 1;
            ledger_payments += check.ledger_payments;
            if !check.problems.is_empty() {
                ledger_keys_once = false;
                problems.extend(check.problems);
            }
            let expected = expected_paid[position];
            if check.amount_paid != expected {
                amounts_match = false;
                problems.push(format!(
                    "{}: amount_paid is {} but the acknowledged payments sum to {expected}",
                    plan.enrollments[position], check.amount_paid
                ));
            }
        }
    }
    let (mut missing, mut repeated) = (0u64, 0u64);
    for index in acknowledged_runs.iter() {
        match seen[index as usize].load(Ordering::Relaxed) {
            1 => {}
            0 => missing += 1,
            _ => repeated += 1,
        }
    }
    if missing > 0 || repeated > 0 {
        ledger_keys_once = false;
        problems.push(format!(
            "{missing} acknowledged keys are missing from the ledger and {repeated} appear more than once"
        ));
    }
    let (audit_ok, audit_enrollments, audit_entries) = match shared.client.audit().await {
        Outcome::Succeeded(report) => {
            for disagreement in report.disagreements.iter().take(PROBLEMS_SHOWN_MAX) {
                problems.push(format!(
                    "audit: {}/{}{}: {}",
                    disagreement.user_id,
                    disagreement.course_id,
                    disagreement
                        .seq
                        .map(|seq| format!(" seq {seq}"))
                        .unwrap_or_default(),
                    disagreement.problem
                ));
            }
            (report.ok, report.enrollments, report.entries)
        }
        other => {
            problems.push(format!(
                "audit: cannot be run ({}); it needs an admin token",
                describe(&other)
            ));
            (false, 0, 0)
        }
    };
    if unknown_remaining > 0 {
        problems.push(format!(
            "{unknown_remaining} payments are still of unknown outcome after {} s of resending",
            RECONCILE_TIME_MAX.as_secs()
        ));
    }
    let total_problems = problems.len();
    if total_problems > PROBLEMS_SHOWN_MAX {
        problems.truncate(PROBLEMS_SHOWN_MAX);
        problems.push(format!(
            "… and {} more",
            total_problems - PROBLEMS_SHOWN_MAX
        ));
    }
    Verdict {
        ok: amounts_match && ledger_keys_once && audit_ok && unknown_remaining == 0,
        enrollments_checked: checked,
        amounts_match,
        ledger_keys_once,
        ledger_payments,
        audit_ok,
        audit_enrollments,
        audit_entries,
        unknown_remaining,
        problems,
    }
}

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    splitmix64(nanos ^ u64::from(std::process::id()).rotate_left(40))
}

fn check_args(args: &LoadTestArgs) -> anyhow::Result<()> {
    if args.amount_min < 1 || args.amount_max > OPERATION_AMOUNT_MAX {
        bail!(
            "payment amounts must be between 1 and {} minor units",
            thousands(OPERATION_AMOUNT_MAX as u64)
        );
    }
    if args.amount_min > args.amount_max {
        bail!("--amount-min must not exceed --amount-max");
    }
    if args.holds {
        holds::check_args(args)?;
    }
    if let Some(duration) = args.duration
        && !(duration > 0.0 && duration <= 86_400.0)
    {
        bail!("--duration must be more than 0 and at most 86400 seconds");
    }
    let in_flight = u64::from(args.clients()) * u64::from(args.batch_size);
    if in_flight > QUEUE_OPERATIONS_MAX as u64 && !args.json {
        eprintln!(
            "bursar load-test: note: {} clients × batches of {} put {} payments in flight, more \
             than the server's write queue of {}; expect 503 OVERLOADED and retries \
             (fewer --clients measure the server rather than the overflow)",
            thousands(u64::from(args.clients())),
            thousands(u64::from(args.batch_size)),
            thousands(in_flight),
            thousands(QUEUE_OPERATIONS_MAX as u64)
        );
    }
    if let Some(payments) = args.payments {
        let per_enrollment = payments.div_ceil(u64::from(args.enrollments));
        if i128::from(per_enrollment) * i128::from(args.amount_max) > i128::from(ENROLLMENT_PRICE) {
            bail!(
                "{} payments of up to {} would exceed an enrollment's largest price; \
                 lower --amount-max or --payments, or raise --enrollments",
                thousands(per_enrollment),
                thousands(args.amount_max.max(0) as u64)
            );
        }
    }
    Ok(())
}

/// Creates the run's enrollments, up to 8,192 per batch request.
async fn create_enrollments(client: &Client, enrollments: &[EnrollmentKey]) -> anyhow::Result<()> {
    let terms = EnrollRequest {
        currency: Currency::parse("USD").expect("USD is a currency"),
        price: Price::new(i128::from(ENROLLMENT_PRICE)).expect("the largest price is a price"),
        access_policy: None,
    };
    for chunk in enrollments.chunks(BATCH_OPERATIONS_MAX) {
        let request = BatchRequest {
            operations: chunk
                .iter()
                .map(|enrollment| {
                    BatchOperation::new(enrollment, None, BatchCommand::Enroll(terms.clone()))
                })
                .collect(),
            detail: BatchDetail::Summary,
        };
        match client.batch(&request).await {
            Outcome::Succeeded(response) => {
                if let Some(result) = response.results.iter().find(|result| !result.is_success()) {
                    bail!(
                        "the server refused to create an enrollment: {} {}",
                        result.status,
                        result.error_code().unwrap_or("")
                    );
                }
            }
            Outcome::Refused {
                status,
                code,
                message,
            } => {
                let hint = if status == 401 || status == 403 {
                    " (pass a writer or admin token with --token or BURSAR_TOKEN)"
                } else {
                    ""
                };
                bail!(
                    "the server refused to create the enrollments: {status} {code}: {message}{hint}"
                )
            }
            Outcome::Unknown(reason) => {
                bail!(
                    "cannot create the enrollments at {}: {reason}",
                    client.base_url()
                )
            }
        }
    }
    Ok(())
}

/// Draws the progress bar from the shared counters until `done` is set.
fn start_progress(
    shared: Arc<Shared>,
    bar: ProgressBar,
    done: Arc<AtomicBool>,
    duration: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut window: std::collections::VecDeque<(Instant, u64)> = Default::default();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        while !done.load(Ordering::Relaxed) {
            ticker.tick().await;
            let now = Instant::now();
            let acknowledged = shared.acknowledged.load(Ordering::Relaxed);
            window.push_back((now, acknowledged));
            while window
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_secs(1))
            {
                window.pop_front();
            }
            let (oldest_at, oldest) = window.front().copied().unwrap_or((now, acknowledged));
            let span = now.duration_since(oldest_at).as_secs_f64();
            let rate = if span > 0.0 {
                (acknowledged - oldest) as f64 / span
            } else {
                0.0
            };
            match duration {
                Some(_) => {
                    bar.set_position(started.elapsed().as_millis() as u64);
                    bar.set_message(format!(
                        "{} acknowledged, {}/s",
                        thousands(acknowledged),
                        thousands(rate as u64)
                    ));
                }
                None => {
                    bar.set_position(shared.answered.load(Ordering::Relaxed));
                    bar.set_message(format!("{}/s acknowledged", thousands(rate as u64)));
                }
            }
        }
        bar.finish_and_clear();
    })
}

fn progress_bar(hidden: bool, payments: Option<u64>, duration: Option<Duration>) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let (length, template) = match duration {
        Some(duration) => (
            duration.as_millis() as u64,
            "{spinner} {elapsed_precise} [{wide_bar}] {msg}",
        ),
        None => (
            payments.unwrap_or(PAYMENTS_DEFAULT),
            "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} payments, {msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Resolves on SIGINT or SIGTERM, naming the signal.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        },
        // Without signal handlers the default action ends the process.
        _ => std::future::pending().await,
    }
}

pub async fn run(args: LoadTestArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let spawned = if args.spawn {
        if !args.json {
            eprintln!(
                "bursar load-test: starting a private bursar serve on a temporary SQLite file"
            );
        }
        Some(SpawnedServer::start().await?)
    } else {
        None
    };
    let (base, token) = match &spawned {
        Some(server) => (server.base.clone(), Some(server.token.clone())),
        None => (args.url.clone(), args.token.clone()),
    };
    // An interrupted run still stops the server it started.
    let outcome = tokio::select! {
        outcome = perform(&args, seed, &base, token, spawned.as_ref()) => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    if let Some(server) = spawned {
        let stopped = server.stop().await;
        if let (Ok(_), Err(error)) = (&outcome, stopped) {
            eprintln!("bursar load-test: {error:#}");
        }
    }
    let finished = outcome?;
    let (ok, json, text) = match &finished {
        Finished::Payments(report) => (
            report.ok,
            serde_json::to_string_pretty(report)?,
            render(report),
        ),
        Finished::Checkout(report) => (
            report.ok,
            serde_json::to_string_pretty(report)?,
            holds::render(report),
        ),
    };
    if args.json {
        println!("{json}");
    } else {
        print!("{text}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The report of either kind of run.
enum Finished {
    Payments(Box<Report>),
    Checkout(Box<holds::Report>),
}

async fn perform(
    args: &LoadTestArgs,
    seed: u64,
    base: &str,
    token: Option<String>,
    spawned: Option<&SpawnedServer>,
) -> anyhow::Result<Finished> {
    let (client, run_id, enrollments) = set_up(args, seed, base, token).await?;
    Ok(if args.holds {
        Finished::Checkout(Box::new(
            holds::load(args, seed, client, run_id, enrollments, spawned).await?,
        ))
    } else {
        Finished::Payments(Box::new(
            load(args, seed, base, client, run_id, enrollments, spawned).await?,
        ))
    })
}

/// The run's client, its id, and its enrollments, created.
async fn set_up(
    args: &LoadTestArgs,
    seed: u64,
    base: &str,
    token: Option<String>,
) -> anyhow::Result<(Client, String, Vec<EnrollmentKey>)> {
    let clients = args.clients() as usize;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_max_idle_per_host(clients * 2)
        .build()
        .context("failed to build the HTTP client")?;
    let mut builder = Client::builder(base)
        .http_client(http)
        .retry_policy(RetryPolicy {
            attempt_timeout: Duration::from_secs(30),
            ..RetryPolicy::default()
        })
        .jitter_seed(seed);
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let client = builder.build()?;
    let run_id = format!("lt{:010x}", fresh_seed() >> 24);
    let enrollments = (0..args.enrollments)
        .map(|position| EnrollmentKey {
            user_id: UserId::parse(&format!("{run_id}-student-{position}"))
                .expect("a valid user id"),
            course_id: CourseId::parse("load-test").expect("a valid course id"),
        })
        .collect::<Vec<_>>();
    create_enrollments(&client, &enrollments).await?;
    Ok((client, run_id, enrollments))
}

#[allow(clippy::too_many_arguments)]
async fn load(
    args: &LoadTestArgs,
    seed: u64,
    base: &str,
    client: Client,
    run_id: String,
    enrollments: Vec<EnrollmentKey>,
    spawned: Option<&SpawnedServer>,
) -> anyhow::Result<Report> {
    let clients = args.clients() as usize;
    let payments = match (args.payments, args.duration) {
        (Some(payments), _) => Some(payments),
        (None, Some(_)) => None,
        (None, None) => Some(PAYMENTS_DEFAULT),
    };
    let duration = args.duration.map(Duration::from_secs_f64);
    let plan = Plan {
        run_id: run_id.clone(),
        seed,
        enrollments,
        amount_min: args.amount_min,
        amount_span: (args.amount_max - args.amount_min) as u64 + 1,
        duplicate_percent: u64::from(args.duplicate_percent),
        batch_size: u64::from(args.batch_size),
        payments,
    };
    let hidden = args.json || !std::io::stderr().is_terminal();
    let bar = progress_bar(hidden, payments, duration);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        plan,
        client,
        next: AtomicU64::new(0),
        deadline: duration.map(|duration| started + duration),
        answered: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
    });
    let done = Arc::new(AtomicBool::new(false));
    let progress = start_progress(shared.clone(), bar, done.clone(), duration);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        tasks.spawn(run_client(shared.clone()));
    }
    let mut tally = Tally::new();
    while let Some(client_tally) = tasks.join_next().await {
        tally.merge(client_tally.context("a load client failed")?);
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;

    let sent = shared
        .next
        .load(Ordering::Relaxed)
        .min(payments.unwrap_or(u64::MAX));
    let acknowledged_during_load = tally.acknowledged.count;
    let refused_during_load: u64 = tally.refused.values().sum();
    let unknown_after_load = tally.unknown.len() as u64;
    let unknown = std::mem::take(&mut tally.unknown);
    let mut reconciled = if unknown.is_empty() {
        Tally::new()
    } else {
        if !args.json {
            eprintln!(
                "bursar load-test: resending {} payments of unknown outcome with their keys",
                thousands(unknown.len() as u64)
            );
        }
        reconcile(&shared, unknown, clients).await
    };
    let reconciled_acknowledged = reconciled.acknowledged.count;
    let reconciled_refused: u64 = reconciled.refused.values().sum();
    let unknown_remaining = reconciled.unknown.len() as u64;
    let unknown_reason = reconciled
        .unknown_reason
        .take()
        .or(tally.unknown_reason.take())
        .filter(|_| unknown_remaining > 0);
    tally
        .acknowledged
        .append(std::mem::take(&mut reconciled.acknowledged));
    for (code, count) in std::mem::take(&mut reconciled.refused) {
        *tally.refused.entry(code).or_default() += count;
    }

    let verdict = verify(&shared, &tally.acknowledged, unknown_remaining).await;
    let acknowledged_amount: i64 = tally
        .acknowledged
        .iter()
        .map(|index| shared.plan.amount_of(index))
        .sum();
    let peak_rss_bytes = spawned.and_then(SpawnedServer::peak_rss_bytes);
    let retries = shared.client.retry_counts();
    let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
    Ok(Report {
        ok: verdict.ok,
        config: ConfigReport {
            url: base.to_owned(),
            spawned: spawned.is_some(),
            clients: args.clients(),
            payments,
            duration_seconds: args.duration,
            enrollments: args.enrollments,
            batch_size: args.batch_size,
            duplicate_percent: args.duplicate_percent,
            amount_min: args.amount_min,
            amount_max: args.amount_max,
            seed,
            run_id,
        },
        elapsed_seconds: elapsed.as_secs_f64(),
        throughput: ThroughputReport {
            acknowledged_payments_per_second: acknowledged_during_load as f64 / seconds,
            requests_per_second: tally.requests as f64 / seconds,
        },
        payments: PaymentsReport {
            sent,
            acknowledged: acknowledged_during_load,
            refused: refused_during_load,
            unknown_after_load,
            reconciled_acknowledged,
            reconciled_refused,
            acknowledged_total: tally.acknowledged.count,
            acknowledged_amount,
            replayed: tally.replays,
        },
        requests: RequestsReport {
            sent: tally.requests,
            duplicates: tally.duplicate_requests,
        },
        latency_ms: latency_report(&tally.latency_micros),
        errors: ErrorsReport {
            refused: tally.refused,
            unknown: unknown_remaining,
            unknown_reason,
            retried_unavailable: retries.unavailable,
            retried_timeouts: retries.timeouts,
            retried_connection_errors: retries.connection_errors,
        },
        server: ServerReport {
            url: base.to_owned(),
            spawned: spawned.is_some(),
            peak_rss_bytes,
        },
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadTestArgs,
    }

    fn clients_for(arguments: &[&str]) -> u32 {
        let mut all = vec!["load-test"];
        all.extend_from_slice(arguments);
        Wrapper::parse_from(all).args.clients()
    }

    #[test]
    fn default_clients_keep_batches_within_half_the_queue() {
        assert_eq!(clients_for(&[]), CLIENTS_DEFAULT);
        assert_eq!(clients_for(&["--batch-size", "8192"]), 16);
        assert_eq!(clients_for(&["--batch-size", "1000"]), 100);
        assert_eq!(clients_for(&["--batch-size", "2000"]), 65);
        for batch in [1u32, 2, 100, 1311, 1312, 4096, 8192] {
            let text = batch.to_string();
            let clients = clients_for(&["--batch-size", &text]);
            assert!(
                u64::from(clients) * u64::from(batch) <= QUEUE_OPERATIONS_MAX as u64 / 2,
                "{clients} × {batch}"
            );
            assert!(clients >= 1);
        }
        assert_eq!(
            clients_for(&["--batch-size", "8192", "--clients", "100"]),
            100
        );
    }

    fn plan(enrollments: u32, duplicate_percent: u64) -> Plan {
        Plan {
            run_id: "lt0123456789".to_owned(),
            seed: 42,
            enrollments: (0..enrollments)
                .map(|position| EnrollmentKey {
                    user_id: UserId::parse(&format!("u{position}")).unwrap(),
                    course_id: CourseId::parse("c").unwrap(),
                })
                .collect(),
            amount_min: 100,
            amount_span: 901,
            duplicate_percent,
            batch_size: 1,
            payments: Some(1_000),
        }
    }

    #[test]
    fn a_payment_is_the_same_every_time_it_is_derived() {
        let plan = plan(5, 20);
        for index in 0..10_000 {
            let amount = plan.amount_of(index);
            assert!((100..=1_000).contains(&amount));
            assert_eq!(amount, plan.amount_of(index));
            assert_eq!(plan.enrollment_of(index), (index % 5) as usize);
            let key = plan.key_of(index);
            assert_eq!(plan.index_of_key(key.as_str()), Some(index));
        }
        assert_eq!(plan.index_of_key("other-run-7"), None);
        assert_eq!(plan.index_of_key("lt0123456789-x"), None);
        let duplicated = (0..10_000)
            .filter(|&index| plan.is_duplicated(index))
            .count();
        assert!((1_800..2_200).contains(&duplicated), "{duplicated}");
    }

    #[test]
    fn runs_keep_consecutive_indices_together() {
        let mut runs = Runs::default();
        for index in [0, 1, 2, 5, 6, 9] {
            runs.push(index);
        }
        assert_eq!(runs.runs, [(0, 3), (5, 7), (9, 10)]);
        assert_eq!(runs.count, 6);
        assert_eq!(runs.iter().collect::<Vec<_>>(), [0, 1, 2, 5, 6, 9]);
        assert_eq!(runs.max_end(), 10);
    }

    #[test]
    fn answers_to_a_duplicated_request_settle_to_one_outcome() {
        let refused = || Outcome::Refused {
            status: 422,
            code: "OVERPAYMENT".to_owned(),
            message: String::new(),
        };
        let unknown = || Outcome::Unknown("timed out".to_owned());
        assert!(matches!(
            settle(&[Outcome::Succeeded(false), Outcome::Succeeded(true)]),
            Settled::Acknowledged { replays: 1 }
        ));
        assert!(matches!(
            settle(&[unknown(), Outcome::Succeeded(true)]),
            Settled::Acknowledged { replays: 1 }
        ));
        assert!(matches!(
            settle(&[refused(), unknown()]),
            Settled::Unknown(_)
        ));
        assert!(
            matches!(settle(&[refused(), refused()]), Settled::Refused(code) if code == "OVERPAYMENT")
        );
    }

    #[test]
    fn a_batch_answer_becomes_one_outcome_per_payment() {
        let response: BatchResponse = serde_json::from_value(serde_json::json!({"results": [
            {"status": 201, "seq": 2},
            {"status": 201, "seq": 3, "replayed": true},
            {"status": 422, "code": "OVERPAYMENT"},
            {"status": 500, "code": "INTERNAL"}
        ]}))
        .unwrap();
        let outcomes = batch_outcomes(&Outcome::Succeeded(response.clone()), 4);
        assert_eq!(outcomes[0], Outcome::Succeeded(false));
        assert_eq!(outcomes[1], Outcome::Succeeded(true));
        assert!(matches!(&outcomes[2], Outcome::Refused { code, .. } if code == "OVERPAYMENT"));
        assert!(matches!(outcomes[3], Outcome::Unknown(_)));
        // An answer that does not match the request says nothing about any
        // of its payments.
        let outcomes = batch_outcomes(&Outcome::Succeeded(response), 5);
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, Outcome::Unknown(_)))
        );
        let refused = Outcome::Refused {
            status: 413,
            code: "PAYLOAD_TOO_LARGE".to_owned(),
            message: String::new(),
        };
        let outcomes = batch_outcomes(&refused, 3);
        assert_eq!(outcomes.len(), 3);
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, Outcome::Refused { status: 413, .. }))
        );
        let outcomes = batch_outcomes(&Outcome::Unknown("timed out".to_owned()), 2);
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, Outcome::Unknown(_)))
        );
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
