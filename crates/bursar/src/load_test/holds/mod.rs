//! `bursar load-test --holds`: many clients run the checkout flow a front end
//! follows — hold a small amount of a large price, then capture it — on one
//! enrollment or a few; a share of the holds is voided instead, and a share
//! left to expire. Then throughput in checkout flows per second, and a
//! verdict: every enrollment's `amount_paid` is the sum of its acknowledged
//! captures, no hold is captured twice, `amount_held` is back to 0 once the
//! holds left to expire have expired, and the audit is clean.
//!
//! Each client holds a small amount (not the remaining balance) so that many
//! holds coexist on one enrollment and a hundred clients all make progress:
//! with "remaining" only one checkout at a time could hold anything.
//!
//! The run waits for its expiring holds before its verdict: they live the
//! shortest time a hold may ([`HOLD_EXPIRES_IN_SECONDS_MIN`], 30 s), so a run
//! with `--expire-percent` above 0 takes that much longer than its load.
//! Every flow `i` is determined by the run id, the seed and `i` (its keys,
//! enrollment, amount and ending), so a resent step is the identical request.

mod report;

pub(super) use report::{Report, render};

use super::report::{ServerReport, latency_report, plural};
use super::{
    LATENCY_MICROS_MAX, LEDGER_PAGE_ENTRIES, LoadTestArgs, PROBLEMS_SHOWN_MAX, RECONCILE_TIME_MAX,
    SpawnedServer, describe, timed,
};
use bursar_client::retry::splitmix64;
use bursar_client::{Accepted, CaptureRequest, Client, HoldRequest, Outcome};
use bursar_core::hold::HOLD_EXPIRES_IN_SECONDS_MIN;
use bursar_core::{Amount, EnrollmentKey, EntryKind, HoldExpiry, IdempotencyKey};
use hdrhistogram::Histogram;
use report::{ConfigReport, ErrorsReport, FlowsReport, LatencyReports, ThroughputReport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long past their `expires_at` the run waits for its expiring holds to
/// be released: the server's sweep runs at least once a second, so this is
/// generous for a busy machine.
const EXPIRY_GRACE: Duration = Duration::from_secs(30);

/// How often the wait for expiry asks an enrollment again.
const EXPIRY_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The void and expire shares, unless given.
pub(super) const VOID_PERCENT_DEFAULT: u8 = 10;
pub(super) const EXPIRE_PERCENT_DEFAULT: u8 = 5;

/// How a checkout flow ends once its hold is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The card was charged: capture the whole hold.
    Capture,
    /// The card was declined: void the hold.
    Void,
    /// The tab was closed: leave the hold to expire.
    Expire,
}

/// What every flow of the run is: derived, never stored.
struct Plan {
    run_id: String,
    seed: u64,
    enrollments: Vec<EnrollmentKey>,
    amount_min: i64,
    amount_span: u64,
    void_percent: u64,
    expire_percent: u64,
    /// `None` when the run is bounded by time.
    flows: Option<u64>,
}

impl Plan {
    fn enrollment_of(&self, index: u64) -> usize {
        (index % self.enrollments.len() as u64) as usize
    }

    fn amount_of(&self, index: u64) -> i64 {
        super::drawn_amount(self.seed, index, self.amount_min, self.amount_span)
    }

    fn ending_of(&self, index: u64) -> Ending {
        let draw = splitmix64(self.seed.rotate_left(17) ^ splitmix64(index)) % 100;
        if draw < self.void_percent {
            Ending::Void
        } else if draw < self.void_percent + self.expire_percent {
            Ending::Expire
        } else {
            Ending::Capture
        }
    }

    /// The key of step `step` (`h`old, `c`apture, `v`oid) of flow `index`.
    fn key_of(&self, index: u64, step: char) -> IdempotencyKey {
        IdempotencyKey::parse(&format!("{}-{step}{index}", self.run_id))
            .expect("a run id and a number make a valid idempotency key")
    }

    fn hold_of(&self, index: u64) -> HoldRequest {
        let amount =
            Amount::new(i128::from(self.amount_of(index))).expect("amounts are checked up front");
        HoldRequest {
            expires_in: (self.ending_of(index) == Ending::Expire).then(|| {
                HoldExpiry::from_seconds(i128::from(HOLD_EXPIRES_IN_SECONDS_MIN))
                    .expect("the shortest life is a life")
            }),
            ..HoldRequest::amount(amount)
        }
    }
}

/// What the clients share during the load.
struct Shared {
    plan: Plan,
    client: Client,
    next: AtomicU64,
    deadline: Option<Instant>,
}

impl Shared {
    fn claim(&self) -> Option<u64> {
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        match self.plan.flows {
            Some(limit) if index >= limit => None,
            _ => Some(index),
        }
    }
}

/// An acknowledged hold and how its flow ended.
struct Finished {
    enrollment: usize,
    hold_seq: u64,
    amount: i64,
    ending: Ending,
}

/// What one client saw; merged after the load.
struct Tally {
    request_micros: Histogram<u64>,
    flow_micros: Histogram<u64>,
    requests: u64,
    finished: Vec<Finished>,
    /// Refusals by `step CODE`: none is expected.
    refused: BTreeMap<String, u64>,
    unknown: u64,
    unknown_reason: Option<String>,
    /// When the last hold left to expire was acknowledged.
    last_expiring: Option<Instant>,
}

impl Tally {
    fn new() -> Tally {
        let histogram = || {
            Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3).expect("valid histogram bounds")
        };
        Tally {
            request_micros: histogram(),
            flow_micros: histogram(),
            requests: 0,
            finished: Vec::new(),
            refused: BTreeMap::new(),
            unknown: 0,
            unknown_reason: None,
            last_expiring: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.request_micros
            .add(&other.request_micros)
            .expect("histograms of the same bounds add");
        self.flow_micros
            .add(&other.flow_micros)
            .expect("histograms of the same bounds add");
        self.requests += other.requests;
        self.finished.extend(other.finished);
        for (code, count) in other.refused {
            *self.refused.entry(code).or_default() += count;
        }
        self.unknown += other.unknown;
        if self.unknown_reason.is_none() {
            self.unknown_reason = other.unknown_reason;
        }
        self.last_expiring = self.last_expiring.max(other.last_expiring);
    }

    /// Sends one step, resending it with its key while its outcome is
    /// unknown, for at most [`RECONCILE_TIME_MAX`]. `None` when the step
    /// was refused or stayed unknown (both are counted).
    async fn step(
        &mut self,
        client: &Client,
        enrollment: &EnrollmentKey,
        key: &IdempotencyKey,
        step: Step<'_>,
    ) -> Option<Accepted> {
        let started = Instant::now();
        let name = match step {
            Step::Hold(_) => "hold",
            Step::Capture(..) => "capture",
            Step::Void(_) => "void",
        };
        loop {
            let send = async {
                match step {
                    Step::Hold(hold) => client.hold(enrollment, key, hold).await,
                    Step::Capture(hold_seq, capture) => {
                        client.capture(enrollment, hold_seq, key, capture).await
                    }
                    Step::Void(hold_seq) => client.void(enrollment, hold_seq, key).await,
                }
            };
            let (outcome, elapsed) = timed(send).await;
            self.requests += 1;
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            self.request_micros.saturating_record(micros.max(1));
            match outcome {
                Outcome::Succeeded(accepted) => return Some(accepted),
                Outcome::Refused { code, .. } => {
                    *self.refused.entry(format!("{name} {code}")).or_default() += 1;
                    return None;
                }
                Outcome::Unknown(reason) if started.elapsed() >= RECONCILE_TIME_MAX => {
                    self.unknown += 1;
                    self.unknown_reason.get_or_insert(reason);
                    return None;
                }
                Outcome::Unknown(_) => {}
            }
        }
    }
}

/// One request of a flow.
#[derive(Clone, Copy)]
enum Step<'a> {
    Hold(&'a HoldRequest),
    Capture(u64, &'a CaptureRequest),
    Void(u64),
}

/// One client: claims flows and runs them, one request at a time.
async fn run_client(shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::new();
    while let Some(index) = shared.claim() {
        let (plan, client) = (&shared.plan, &shared.client);
        let position = plan.enrollment_of(index);
        let enrollment = &plan.enrollments[position];
        let started = Instant::now();
        let (hold_key, hold) = (plan.key_of(index, 'h'), plan.hold_of(index));
        let Some(held) = tally
            .step(client, enrollment, &hold_key, Step::Hold(&hold))
            .await
        else {
            continue;
        };
        let hold_seq = held.entry.seq;
        let ending = plan.ending_of(index);
        let ended = match ending {
            Ending::Capture => {
                let key = plan.key_of(index, 'c');
                let capture = CaptureRequest::default();
                tally
                    .step(client, enrollment, &key, Step::Capture(hold_seq, &capture))
                    .await
                    .is_some()
            }
            Ending::Void => {
                let key = plan.key_of(index, 'v');
                tally
                    .step(client, enrollment, &key, Step::Void(hold_seq))
                    .await
                    .is_some()
            }
            Ending::Expire => {
                tally.last_expiring = Some(Instant::now());
                true
            }
        };
        if ended {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            tally.flow_micros.saturating_record(micros.max(1));
            tally.finished.push(Finished {
                enrollment: position,
                hold_seq,
                amount: plan.amount_of(index),
                ending,
            });
        }
    }
    tally
}

/// Waits until the holds left to expire have expired and every enrollment
/// shows nothing held, or [`EXPIRY_GRACE`] after they were due.
async fn wait_for_expiry(shared: &Shared, last_expiring: Option<Instant>) -> Duration {
    let started = Instant::now();
    let Some(last) = last_expiring else {
        return Duration::ZERO;
    };
    let due = last + Duration::from_secs(u64::from(HOLD_EXPIRES_IN_SECONDS_MIN));
    tokio::time::sleep_until(due.into()).await;
    let deadline = due + EXPIRY_GRACE;
    let mut position = 0;
    while position < shared.plan.enrollments.len() && Instant::now() < deadline {
        match shared
            .client
            .enrollment(&shared.plan.enrollments[position])
            .await
        {
            Outcome::Succeeded(enrollment) if enrollment.amount_held == 0 => position += 1,
            _ => tokio::time::sleep(EXPIRY_POLL_INTERVAL).await,
        }
    }
    started.elapsed()
}

/// The few fields of a ledger entry the verdict reads.
#[derive(Deserialize)]
struct HoldEntry {
    seq: u64,
    kind: EntryKind,
    amount: i64,
    #[serde(default)]
    hold_seq: Option<u64>,
}

#[derive(Serialize)]
pub(super) struct Verdict {
    ok: bool,
    enrollments_checked: u64,
    /// Every enrollment's `amount_paid` equals the sum of its acknowledged
    /// captures, and of the `CAPTURE` entries of its ledger.
    amounts_match: bool,
    /// No hold has more than one `CAPTURE` entry, and every acknowledged
    /// capture, void and expiry has its entry.
    captured_once: bool,
    ledger_captures: u64,
    ledger_voids: u64,
    ledger_expiries: u64,
    /// Every enrollment's `amount_held` is 0 after the run.
    holds_released: bool,
    audit_ok: bool,
    audit_enrollments: u64,
    audit_entries: u64,
    /// Steps refused, or of unknown outcome after resending: none is
    /// expected, and the money cannot be checked while any is unknown.
    refused: u64,
    unknown_remaining: u64,
    problems: Vec<String>,
}

#[derive(Default)]
struct EnrollmentCheck {
    amounts_match: bool,
    captured_once: bool,
    holds_released: bool,
    captures: u64,
    voids: u64,
    expiries: u64,
    problems: Vec<String>,
}

async fn check_enrollment(
    client: &Client,
    enrollment: &EnrollmentKey,
    finished: &[&Finished],
) -> EnrollmentCheck {
    let mut check = EnrollmentCheck::default();
    let found = match client.enrollment(enrollment).await {
        Outcome::Succeeded(found) => found,
        other => {
            check.problems.push(format!(
                "{enrollment}: cannot be read: {}",
                describe(&other)
            ));
            return check;
        }
    };
    // hold_seq -> the kinds of the entries that ended it.
    let mut endings: HashMap<u64, Vec<EntryKind>> = HashMap::new();
    let mut captured_in_ledger = 0i64;
    let mut after = 0;
    loop {
        let page = match client
            .ledger_as::<HoldEntry>(enrollment, after, LEDGER_PAGE_ENTRIES)
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
            break;
        };
        after = last.seq;
        for entry in page {
            let counter = match entry.kind {
                EntryKind::Capture => {
                    captured_in_ledger += entry.amount;
                    &mut check.captures
                }
                EntryKind::Void => &mut check.voids,
                EntryKind::Expire => &mut check.expiries,
                _ => continue,
            };
            *counter += 1;
            endings
                .entry(entry.hold_seq.unwrap_or(0))
                .or_default()
                .push(entry.kind);
        }
    }
    let expected_paid: i64 = finished
        .iter()
        .filter(|flow| flow.ending == Ending::Capture)
        .map(|flow| flow.amount)
        .sum();
    check.amounts_match = found.amount_paid == expected_paid && captured_in_ledger == expected_paid;
    if !check.amounts_match {
        check.problems.push(format!(
            "{enrollment}: amount_paid {} and the ledger's captures {captured_in_ledger}, \
             but the acknowledged captures sum to {expected_paid}",
            found.amount_paid
        ));
    }
    check.captured_once = true;
    for (hold_seq, kinds) in &endings {
        if kinds.len() > 1 {
            check.captured_once = false;
            check.problems.push(format!(
                "{enrollment}: hold {hold_seq} was ended {} times: {kinds:?}",
                kinds.len()
            ));
        }
    }
    for flow in finished {
        let expected = match flow.ending {
            Ending::Capture => EntryKind::Capture,
            Ending::Void => EntryKind::Void,
            Ending::Expire => EntryKind::Expire,
        };
        if endings.get(&flow.hold_seq).and_then(|kinds| kinds.first()) != Some(&expected) {
            check.captured_once = false;
            check.problems.push(format!(
                "{enrollment}: hold {} should have ended by {expected:?}, the ledger has {:?}",
                flow.hold_seq,
                endings.get(&flow.hold_seq)
            ));
        }
    }
    check.holds_released = found.amount_held == 0;
    if !check.holds_released {
        check.problems.push(format!(
            "{enrollment}: amount_held is {} after the run",
            found.amount_held
        ));
    }
    check
}

async fn verify(shared: &Shared, tally: &Tally) -> Verdict {
    let plan = &shared.plan;
    let mut by_enrollment: Vec<Vec<&Finished>> = vec![Vec::new(); plan.enrollments.len()];
    for flow in &tally.finished {
        by_enrollment[flow.enrollment].push(flow);
    }
    let refused: u64 = tally.refused.values().sum();
    let mut verdict = Verdict {
        ok: false,
        enrollments_checked: 0,
        amounts_match: true,
        captured_once: true,
        ledger_captures: 0,
        ledger_voids: 0,
        ledger_expiries: 0,
        holds_released: true,
        audit_ok: false,
        audit_enrollments: 0,
        audit_entries: 0,
        refused,
        unknown_remaining: tally.unknown,
        problems: Vec::new(),
    };
    let mut problems = Vec::new();
    for (enrollment, finished) in plan.enrollments.iter().zip(&by_enrollment) {
        let check = check_enrollment(&shared.client, enrollment, finished).await;
        verdict.enrollments_checked += 1;
        verdict.amounts_match &= check.amounts_match;
        verdict.captured_once &= check.captured_once;
        verdict.holds_released &= check.holds_released;
        verdict.ledger_captures += check.captures;
        verdict.ledger_voids += check.voids;
        verdict.ledger_expiries += check.expiries;
        problems.extend(check.problems);
    }
    match shared.client.audit().await {
        Outcome::Succeeded(audit) => {
            verdict.audit_ok = audit.ok;
            verdict.audit_enrollments = audit.enrollments;
            verdict.audit_entries = audit.entries;
            for disagreement in audit.disagreements {
                problems.push(format!(
                    "audit: {}/{} seq {:?}: {}",
                    disagreement.user_id,
                    disagreement.course_id,
                    disagreement.seq,
                    disagreement.problem
                ));
            }
        }
        other => problems.push(format!("the audit failed: {}", describe(&other))),
    }
    for (step, count) in &tally.refused {
        problems.push(format!("{count} refused: {step}"));
    }
    if problems.len() > PROBLEMS_SHOWN_MAX {
        let more = problems.len() - PROBLEMS_SHOWN_MAX;
        problems.truncate(PROBLEMS_SHOWN_MAX);
        problems.push(format!("… and {more} more"));
    }
    verdict.problems = problems;
    verdict.ok = verdict.amounts_match
        && verdict.captured_once
        && verdict.holds_released
        && verdict.audit_ok
        && refused == 0
        && tally.unknown == 0
        && verdict.problems.is_empty();
    verdict
}

pub(super) fn check_args(args: &LoadTestArgs) -> anyhow::Result<()> {
    if args.batch_size != 1 || args.duplicate_percent != 0 {
        anyhow::bail!(
            "--holds sends one request at a time: no --batch-size or --duplicate-percent"
        );
    }
    if u16::from(args.void_percent) + u16::from(args.expire_percent) > 100 {
        anyhow::bail!("--void-percent and --expire-percent must add up to at most 100");
    }
    Ok(())
}

/// Runs the checkout flows against `client`, which has created
/// `enrollments`, then waits for expiry and checks the money.
pub(super) async fn load(
    args: &LoadTestArgs,
    seed: u64,
    client: Client,
    run_id: String,
    enrollments: Vec<EnrollmentKey>,
    spawned: Option<&SpawnedServer>,
) -> anyhow::Result<Report> {
    let flows = match (args.payments, args.duration) {
        (Some(flows), _) => Some(flows),
        (None, Some(_)) => None,
        (None, None) => Some(super::PAYMENTS_DEFAULT),
    };
    let duration = args.duration.map(Duration::from_secs_f64);
    let base = client.base_url().to_owned();
    let plan = Plan {
        run_id: run_id.clone(),
        seed,
        enrollments,
        amount_min: args.amount_min,
        amount_span: (args.amount_max - args.amount_min) as u64 + 1,
        void_percent: u64::from(args.void_percent),
        expire_percent: u64::from(args.expire_percent),
        flows,
    };
    if !args.json {
        let amount = match (flows, args.duration) {
            (Some(flows), _) => plural(flows, "checkout flow", "checkout flows"),
            (None, Some(seconds)) => format!("checkout flows for {seconds} s"),
            (None, None) => String::new(),
        };
        let wait = if args.expire_percent > 0 {
            format!(
                "; the run then waits {HOLD_EXPIRES_IN_SECONDS_MIN} s for the holds left to expire"
            )
        } else {
            String::new()
        };
        eprintln!(
            "bursar load-test: {} clients, {amount}{wait}",
            args.clients()
        );
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        plan,
        client,
        next: AtomicU64::new(0),
        deadline: duration.map(|duration| started + duration),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients() {
        tasks.spawn(run_client(shared.clone()));
    }
    let mut tally = Tally::new();
    while let Some(client_tally) = tasks.join_next().await {
        tally
            .merge(client_tally.map_err(|error| anyhow::anyhow!("a load client failed: {error}"))?);
    }
    let elapsed = started.elapsed();
    let started_flows = shared
        .next
        .load(Ordering::Relaxed)
        .min(flows.unwrap_or(u64::MAX));
    let expiry_wait = wait_for_expiry(&shared, tally.last_expiring).await;
    let verdict = verify(&shared, &tally).await;

    let count = |ending| {
        tally
            .finished
            .iter()
            .filter(|flow| flow.ending == ending)
            .count() as u64
    };
    let captured = count(Ending::Capture);
    let captured_amount = tally
        .finished
        .iter()
        .filter(|flow| flow.ending == Ending::Capture)
        .map(|flow| flow.amount)
        .sum();
    let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
    let retries = shared.client.retry_counts();
    Ok(Report {
        ok: verdict.ok,
        config: ConfigReport {
            url: base.clone(),
            spawned: spawned.is_some(),
            clients: args.clients(),
            flows,
            duration_seconds: args.duration,
            enrollments: args.enrollments,
            void_percent: args.void_percent,
            expire_percent: args.expire_percent,
            expiring_hold_seconds: HOLD_EXPIRES_IN_SECONDS_MIN,
            amount_min: args.amount_min,
            amount_max: args.amount_max,
            seed,
            run_id,
        },
        elapsed_seconds: elapsed.as_secs_f64(),
        expiry_wait_seconds: expiry_wait.as_secs_f64(),
        throughput: ThroughputReport {
            checkout_flows_per_second: tally.finished.len() as f64 / seconds,
            captured_flows_per_second: captured as f64 / seconds,
            requests_per_second: tally.requests as f64 / seconds,
        },
        flows: FlowsReport {
            started: started_flows,
            finished: tally.finished.len() as u64,
            captured,
            voided: count(Ending::Void),
            left_to_expire: count(Ending::Expire),
            captured_amount,
        },
        latency_ms: LatencyReports {
            request: latency_report(&tally.request_micros),
            flow: latency_report(&tally.flow_micros),
        },
        errors: ErrorsReport {
            refused: std::mem::take(&mut tally.refused),
            unknown: tally.unknown,
            unknown_reason: tally.unknown_reason.take(),
            retried_unavailable: retries.unavailable,
            retried_timeouts: retries.timeouts,
            retried_connection_errors: retries.connection_errors,
        },
        server: ServerReport {
            url: base,
            spawned: spawned.is_some(),
            peak_rss_bytes: spawned.and_then(SpawnedServer::peak_rss_bytes),
        },
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bursar_core::{CourseId, UserId};

    fn plan(void_percent: u64, expire_percent: u64) -> Plan {
        Plan {
            run_id: "lt0123456789".to_owned(),
            seed: 7,
            enrollments: vec![EnrollmentKey {
                user_id: UserId::parse("u").unwrap(),
                course_id: CourseId::parse("c").unwrap(),
            }],
            amount_min: 100,
            amount_span: 9_901,
            void_percent,
            expire_percent,
            flows: Some(1_000),
        }
    }

    #[test]
    fn endings_follow_their_shares_and_only_expiring_holds_are_short() {
        let plan = plan(10, 5);
        let mut counts = [0u32; 3];
        for index in 0..10_000 {
            let ending = plan.ending_of(index);
            counts[ending as usize] += 1;
            assert_eq!(ending, plan.ending_of(index), "derived the same each time");
            let short = plan.hold_of(index).expires_in.is_some();
            assert_eq!(short, ending == Ending::Expire);
        }
        // Capture, Void, Expire: about 85 %, 10 %, 5 %.
        assert!((8_000..9_000).contains(&counts[0]), "{counts:?}");
        assert!((700..1_300).contains(&counts[1]), "{counts:?}");
        assert!((300..700).contains(&counts[2]), "{counts:?}");
        let none = super::tests::plan(0, 0);
        assert!((0..1_000).all(|index| none.ending_of(index) == Ending::Capture));
    }

    #[test]
    fn each_step_of_a_flow_has_its_own_key() {
        let plan = plan(10, 5);
        assert_eq!(plan.key_of(42, 'h').as_str(), "lt0123456789-h42");
        assert_ne!(plan.key_of(42, 'h'), plan.key_of(42, 'c'));
    }
}
