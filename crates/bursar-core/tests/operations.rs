//! Table tests of bursar's pure core, read like ledgers: every operation and
//! rejection code, the derived statuses, server time, the hash chain and its
//! audit, and the batch planner, through the crate's public API only.
//!
//! A test reads like an enrollment's ledger. Each row is an operation and what
//! the enrollment must look like right after it, written the way `line`
//! renders an enrollment:
//!
//! ```text
//! payment_status access_status status [charged=N] [paid=N] [credited=N] [refunded=N] [held=N] due=N vVERSION
//! ```
//!
//! Amounts that are zero are left out, so a row states every amount. A refused
//! row names its `Rejection::code()`; `UNCHANGED` and `REPLAYED` name the two
//! ways a request is answered without a new entry. Every accepted row is also
//! checked against the ledger rules (seq, hashes, kind, amount, time).

use bursar_core::batch::{enrollment_keys, idempotency_keys, named_holds};
use bursar_core::money::{ENROLLMENT_TOTAL_MAX, OPERATION_AMOUNT_MAX};
use bursar_core::{
    AccessPolicy, AccessStatus, Amount, Applied, BatchInput, BatchPlan, Command, CourseId,
    Currency, EnrollTerms, Enrollment, EnrollmentKey, EnrollmentState, EnrollmentStatus, EntryKind,
    Hash, HoldAmount, HoldExpiry, HoldState, IdempotencyKey, LedgerEntry, Outcome, PaymentStatus,
    Price, Reason, Reference, Rejection, Request, StoredOperation, Timestamp, UserId, apply,
    plan_batch, verify_chain,
};
use std::collections::{BTreeSet, HashMap, HashSet};

// ---------------------------------------------------------------------------
// The vocabulary: operations as a ledger clerk writes them.
// ---------------------------------------------------------------------------

const USD: &str = "USD";

/// 2026-09-01T09:00:00Z, when every scenario starts.
const T0: i64 = 1_788_253_200_000_000;
const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;

fn at(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(micros)
}

fn currency(code: &str) -> Currency {
    Currency::parse(code).unwrap()
}

fn amount(minor_units: i64) -> Amount {
    Amount::new(i128::from(minor_units)).unwrap()
}

fn price(minor_units: i64) -> Price {
    Price::new(i128::from(minor_units)).unwrap()
}

/// `enroll(price, currency)` with the default FULL_PAYMENT policy.
fn enroll(minor_units: i64, code: &str) -> Command {
    enroll_with(minor_units, code, AccessPolicy::FullPayment)
}

fn enroll_with(minor_units: i64, code: &str, access_policy: AccessPolicy) -> Command {
    Command::Enroll(EnrollTerms {
        currency: currency(code),
        price: price(minor_units),
        access_policy,
    })
}

fn min_settled(minor_units: i64) -> AccessPolicy {
    AccessPolicy::MinSettled {
        amount: price(minor_units),
    }
}

fn pay(minor_units: i64) -> Command {
    Command::Payment {
        amount: amount(minor_units),
        currency: None,
        reference: None,
    }
}

/// A payment that names its currency.
fn pay_in(minor_units: i64, code: &str) -> Command {
    Command::Payment {
        amount: amount(minor_units),
        currency: Some(currency(code)),
        reference: None,
    }
}

/// A payment that carries the processor's charge id.
fn pay_ref(minor_units: i64, reference: &str) -> Command {
    Command::Payment {
        amount: amount(minor_units),
        currency: None,
        reference: Some(Reference::parse(reference).unwrap()),
    }
}

fn pay_remaining() -> Command {
    Command::PayRemaining { reference: None }
}

fn credit(minor_units: i64) -> Command {
    Command::Credit {
        amount: amount(minor_units),
        reason: Reason::parse("scholarship").unwrap(),
    }
}

fn refund(minor_units: i64) -> Command {
    Command::Refund {
        amount: amount(minor_units),
        reason: Reason::parse("student asked").unwrap(),
        reference: None,
    }
}

fn charge(minor_units: i64) -> Command {
    Command::Charge {
        amount: amount(minor_units),
        reason: Reason::parse("late fee").unwrap(),
    }
}

fn complete() -> Command {
    Command::Complete
}

fn cancel() -> Command {
    Command::Cancel
}

/// A hold of `minor_units` for the default 900 s.
fn hold(minor_units: i64) -> Command {
    Command::Hold {
        amount: HoldAmount::Amount(amount(minor_units)),
        expires_in: HoldExpiry::default(),
        reference: None,
    }
}

/// A hold of all that is available, for `seconds`.
fn hold_remaining_for(seconds: i128) -> Command {
    Command::Hold {
        amount: HoldAmount::Remaining,
        expires_in: HoldExpiry::from_seconds(seconds).unwrap(),
        reference: Some(Reference::parse("pi_checkout").unwrap()),
    }
}

fn hold_remaining() -> Command {
    hold_remaining_for(900)
}

/// Capture the whole hold `hold_seq`.
fn capture(hold_seq: u64) -> Command {
    Command::Capture {
        hold_seq,
        amount: None,
        reference: None,
    }
}

fn capture_part(hold_seq: u64, minor_units: i64) -> Command {
    Command::Capture {
        hold_seq,
        amount: Some(amount(minor_units)),
        reference: Some(Reference::parse("ch_partial").unwrap()),
    }
}

fn void(hold_seq: u64) -> Command {
    Command::Void { hold_seq }
}

// ---------------------------------------------------------------------------
// Reading an enrollment as one ledger line.
// ---------------------------------------------------------------------------

/// The enrollment as one ledger line: its three statuses, every non-zero
/// amount, the amount due (always) and the version.
fn line(enrollment: &Enrollment) -> String {
    let mut parts: Vec<String> = vec![
        enrollment.payment_status.as_str().to_owned(),
        enrollment.access_status.as_str().to_owned(),
        enrollment.status.as_str().to_owned(),
    ];
    let amounts = [
        ("charged", enrollment.amount_charged),
        ("paid", enrollment.amount_paid),
        ("credited", enrollment.amount_credited),
        ("refunded", enrollment.amount_refunded),
        ("held", enrollment.amount_held),
    ];
    for (name, value) in amounts {
        if value != 0 {
            parts.push(format!("{name}={value}"));
        }
    }
    parts.push(format!("due={}", enrollment.amount_due));
    parts.push(format!("v{}", enrollment.version));
    parts.join(" ")
}

/// Rows may align their columns with extra spaces.
fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A batch outcome as one line.
fn outcome_line(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Accepted(entry) => {
            format!(
                "accepted {} {} seq={}",
                entry.kind.as_str(),
                entry.amount,
                entry.seq
            )
        }
        Outcome::Replayed(entry) => {
            format!(
                "replayed {} {} seq={}",
                entry.kind.as_str(),
                entry.amount,
                entry.seq
            )
        }
        Outcome::Unchanged(enrollment) => format!("unchanged v{}", enrollment.version),
        Outcome::Rejected(rejection) => format!("rejected {}", rejection.code()),
    }
}

fn outcomes(plan: &BatchPlan) -> Vec<String> {
    plan.outcomes.iter().map(outcome_line).collect()
}

// ---------------------------------------------------------------------------
// A scenario: one enrollment's life, one request at a time.
// ---------------------------------------------------------------------------

fn enrollment_key(user: &str, course: &str) -> EnrollmentKey {
    EnrollmentKey {
        user_id: UserId::parse(user).unwrap(),
        course_id: CourseId::parse(course).unwrap(),
    }
}

/// A state-changing POST: it carries an idempotency key.
fn post(key: &EnrollmentKey, idempotency_key: &str, command: Command) -> Request {
    Request {
        key: key.clone(),
        idempotency_key: Some(IdempotencyKey::parse(idempotency_key).unwrap()),
        command,
    }
}

/// Enrolling (PUT): idempotent by its terms, no key.
fn put(key: &EnrollmentKey, command: Command) -> Request {
    Request {
        key: key.clone(),
        idempotency_key: None,
        command,
    }
}

/// One enrollment's life. Every request goes through `plan_batch` as a batch
/// of one, as the writer sends it, on what a backend would load for it; every
/// accepted entry is checked against the ledger rules and appended.
struct Scenario {
    key: EnrollmentKey,
    state: Option<EnrollmentState>,
    ledger: Vec<LedgerEntry>,
    /// Every accepted operation under its idempotency key, as a backend keeps it.
    stored: HashMap<IdempotencyKey, StoredOperation>,
    /// The server time of the next request; it moves on a minute per request.
    clock: i64,
    /// The idempotency key of the next request, if a row names one.
    next_key: Option<String>,
    requests: usize,
}

impl Scenario {
    fn new() -> Self {
        Self::for_key("student-1", "course-101")
    }

    fn for_key(user: &str, course: &str) -> Self {
        Scenario {
            key: enrollment_key(user, course),
            state: None,
            ledger: Vec::new(),
            stored: HashMap::new(),
            clock: T0,
            next_key: None,
            requests: 0,
        }
    }

    /// A scenario that starts from an accepted enroll.
    fn enrolled(command: Command) -> Self {
        let mut scenario = Self::new();
        scenario.accept(command);
        scenario
    }

    fn key(&self) -> EnrollmentKey {
        self.key.clone()
    }

    fn enrollment(&self) -> &Enrollment {
        &self
            .state
            .as_ref()
            .expect("the scenario has enrolled")
            .enrollment
    }

    fn ledger(&self) -> &[LedgerEntry] {
        &self.ledger
    }

    /// Sets the server time of the next request.
    fn at(&mut self, micros: i64) -> &mut Self {
        self.clock = micros;
        self
    }

    /// Sends the next request under this idempotency key instead of a fresh one.
    fn with_key(&mut self, idempotency_key: &str) -> &mut Self {
        self.next_key = Some(idempotency_key.to_owned());
        self
    }

    /// Runs each row and checks what the enrollment looks like after it.
    fn steps(&mut self, rows: &[(Command, &str)]) -> &mut Self {
        for (command, expected) in rows {
            self.step(command.clone(), expected);
        }
        self
    }

    /// Runs one request and checks its row: the enrollment's line if it was
    /// accepted, else `UNCHANGED`, `REPLAYED` or the rejection code.
    #[track_caller]
    fn step(&mut self, command: Command, expected: &str) -> &mut Self {
        let name = command.name();
        let got = match self.run(command) {
            Outcome::Accepted(entry) => line(&entry.enrollment),
            Outcome::Replayed(_) => "REPLAYED".to_owned(),
            Outcome::Unchanged(_) => "UNCHANGED".to_owned(),
            Outcome::Rejected(rejection) => rejection.code().to_owned(),
        };
        assert_eq!(
            got,
            normalize(expected),
            "request {} ({name}); the ledger so far:\n{}",
            self.requests,
            self.render_ledger()
        );
        self
    }

    /// Checks the enrollment as it stands now.
    #[track_caller]
    fn expect(&self, expected: &str) -> &Self {
        assert_eq!(line(self.enrollment()), normalize(expected));
        self
    }

    /// Runs a request that must be accepted.
    #[track_caller]
    fn accept(&mut self, command: Command) -> LedgerEntry {
        match self.run(command) {
            Outcome::Accepted(entry) => entry,
            other => panic!(
                "expected the request to be accepted, got {}",
                outcome_line(&other)
            ),
        }
    }

    fn run(&mut self, command: Command) -> Outcome {
        self.requests += 1;
        let idempotency_key = match self.next_key.take() {
            Some(key) => Some(key),
            None if matches!(command, Command::Enroll(_)) => None,
            None => Some(format!("op-{}", self.requests)),
        };
        let request = Request {
            key: self.key(),
            idempotency_key: idempotency_key.map(|key| IdempotencyKey::parse(&key).unwrap()),
            command,
        };
        let now = at(self.clock);
        self.clock += MINUTE;
        let requests = std::slice::from_ref(&request);
        let plan = plan_batch(load(&[&*self], requests), requests, now);
        assert_eq!(plan.outcomes.len(), 1, "one outcome per request");
        let outcome = plan.outcomes[0].clone();
        // The EXPIRE entries written before the request, whatever its fate.
        let own = usize::from(matches!(outcome, Outcome::Accepted(_)));
        let expired = &plan.new_entries[..plan.new_entries.len() - own];
        for (entry, _) in expired {
            assert_eq!(entry.kind, EntryKind::Expire, "only expiries come before");
            assert_eq!(entry.idempotency_key, None);
            self.check_expiry(now, entry);
            self.ledger.push(entry.clone());
            self.state.as_mut().expect("enrolled").advance(entry);
        }
        let before = self.state.as_ref().map(|state| &state.enrollment);
        match &outcome {
            Outcome::Accepted(entry) => {
                self.check_entry(&request, now, entry);
                let fingerprint = request.command.fingerprint();
                assert_eq!(plan.new_entries.last(), Some(&(entry.clone(), fingerprint)));
                let state = match self.state.take() {
                    Some(state) => state.after(entry),
                    None => EnrollmentState::new(entry.enrollment.clone(), entry.hash).after(entry),
                };
                let changed: Vec<_> = plan
                    .changed
                    .iter()
                    .map(|changed| (&changed.enrollment, changed.last_hash))
                    .collect();
                assert_eq!(
                    changed,
                    vec![(&state.enrollment, state.last_hash)],
                    "changed holds the new state"
                );
                let created: HashSet<_> = (self.ledger.is_empty())
                    .then(|| self.key())
                    .into_iter()
                    .collect();
                assert_eq!(plan.created, created, "created holds the key only when new");
                if let Some(idempotency_key) = &request.idempotency_key {
                    self.stored.insert(
                        idempotency_key.clone(),
                        StoredOperation {
                            fingerprint,
                            entry: entry.clone(),
                        },
                    );
                }
                self.ledger.push(entry.clone());
                self.state = Some(state);
            }
            unchanged => {
                let nothing = plan.new_entries.len() == expired.len()
                    && plan.changed.len() == usize::from(!expired.is_empty())
                    && plan.created.is_empty();
                assert!(
                    nothing,
                    "{} must write nothing but expiries: {plan:?}",
                    outcome_line(unchanged)
                );
                match unchanged {
                    Outcome::Replayed(entry) => {
                        let original = request
                            .idempotency_key
                            .as_ref()
                            .and_then(|key| self.stored.get(key));
                        assert_eq!(
                            Some(entry),
                            original.map(|stored| &stored.entry),
                            "a replay is the original entry"
                        );
                    }
                    Outcome::Unchanged(enrollment) => assert_eq!(Some(enrollment), before),
                    _ => {}
                }
            }
        }
        outcome
    }

    /// An EXPIRE entry releases an open hold whose time has come, chained
    /// like any other entry.
    fn check_expiry(&self, now: Timestamp, entry: &LedgerEntry) {
        let state = self.state.as_ref().expect("enrolled");
        let hold = &state.holds[&entry.hold_seq.expect("an EXPIRE names its hold")];
        assert!(hold.is_open() && hold.expires_at <= entry.created_at);
        assert_eq!(entry.amount, hold.amount);
        assert_eq!(entry.prev_hash, state.last_hash, "prev_hash chains");
        assert_eq!(entry.seq, state.enrollment.version + 1);
        assert_eq!(entry.created_at, now.max(state.enrollment.updated_at));
        assert_eq!(
            entry.enrollment.amount_held,
            state.enrollment.amount_held - hold.amount
        );
        assert_eq!(entry.hash, entry.compute_hash());
    }

    /// The ledger rules every accepted entry obeys.
    fn check_entry(&self, request: &Request, now: Timestamp, entry: &LedgerEntry) {
        let previous = self.state.as_ref();
        let before = previous.map(|state| &state.enrollment);
        let snapshot = &entry.enrollment;
        let (kind, moved) = expected_kind_and_amount(&request.command, previous);
        assert_eq!(
            (entry.kind, entry.amount),
            (kind, moved),
            "kind and amount of the entry"
        );
        assert_eq!(
            snapshot.version,
            before.map_or(1, |before| before.version + 1),
            "version goes up by one"
        );
        assert_eq!(entry.seq, snapshot.version, "seq == version");
        assert_eq!(
            entry.prev_hash,
            previous.map_or(Hash::ZERO, |state| state.last_hash),
            "prev_hash chains"
        );
        assert_eq!(entry.hash, entry.compute_hash(), "hash covers the entry");
        assert_eq!(entry.currency, snapshot.currency);
        assert_eq!(entry.idempotency_key, request.idempotency_key);
        let (reference, reason) = match &request.command {
            Command::Payment { reference, .. } | Command::PayRemaining { reference } => {
                (reference.clone(), None)
            }
            Command::Refund {
                reason, reference, ..
            } => (reference.clone(), Some(reason.clone())),
            Command::Credit { reason, .. } | Command::Charge { reason, .. } => {
                (None, Some(reason.clone()))
            }
            Command::Hold { reference, .. } => (reference.clone(), None),
            Command::Capture {
                hold_seq,
                reference,
                ..
            } => (
                reference
                    .clone()
                    .or_else(|| previous.unwrap().holds[hold_seq].reference.clone()),
                None,
            ),
            Command::Enroll(_)
            | Command::Complete
            | Command::Cancel
            | Command::Void { .. }
            | Command::Expire { .. }
            | Command::ExpireHolds => (None, None),
        };
        assert_eq!((&entry.reference, &entry.reason), (&reference, &reason));
        let time = before.map_or(now, |before| now.max(before.updated_at));
        assert_eq!(
            entry.created_at, time,
            "entry time is server time, never backwards"
        );
        assert_eq!(snapshot.updated_at, time);
        assert_eq!(
            snapshot.created_at,
            before.map_or(now, |before| before.created_at)
        );
        assert_eq!(snapshot.key(), self.key);
        if let Some(before) = before {
            let terms = |e: &Enrollment| (e.currency, e.price, e.access_policy);
            assert_eq!(terms(snapshot), terms(before), "the terms never change");
        }
        assert_eq!(
            snapshot.check(),
            Ok(()),
            "the snapshot keeps every invariant"
        );
    }

    fn render_ledger(&self) -> String {
        self.ledger
            .iter()
            .map(|entry| {
                format!(
                    "  #{} {} {} -> {}",
                    entry.seq,
                    entry.kind.as_str(),
                    entry.amount,
                    line(&entry.enrollment)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The entry an accepted command must produce: its kind and the amount it
/// moved (the price for ENROLL, what was available for pay_remaining and a
/// hold of the remaining, the hold for a void, 0 for COMPLETE/CANCEL).
fn expected_kind_and_amount(
    command: &Command,
    before: Option<&EnrollmentState>,
) -> (EntryKind, i64) {
    let available = || before.expect("enrolled").enrollment.amount_available;
    let hold = |seq: &u64| before.expect("enrolled").holds[seq].amount;
    match command {
        Command::Enroll(terms) => (EntryKind::Enroll, terms.price.minor_units()),
        Command::Payment { amount, .. } => (EntryKind::Payment, amount.minor_units()),
        Command::PayRemaining { .. } => (EntryKind::Payment, available()),
        Command::Hold {
            amount: HoldAmount::Remaining,
            ..
        } => (EntryKind::Hold, available()),
        Command::Hold {
            amount: HoldAmount::Amount(amount),
            ..
        } => (EntryKind::Hold, amount.minor_units()),
        Command::Capture {
            hold_seq, amount, ..
        } => (
            EntryKind::Capture,
            amount.map_or_else(|| hold(hold_seq), Amount::minor_units),
        ),
        Command::Void { hold_seq } | Command::Expire { hold_seq } => {
            let kind = match command {
                Command::Void { .. } => EntryKind::Void,
                _ => EntryKind::Expire,
            };
            (kind, hold(hold_seq))
        }
        Command::ExpireHolds => unreachable!("the sweep never writes an entry of its own"),
        Command::Credit { amount, .. } => (EntryKind::Credit, amount.minor_units()),
        Command::Refund { amount, .. } => (EntryKind::Refund, amount.minor_units()),
        Command::Charge { amount, .. } => (EntryKind::Charge, amount.minor_units()),
        Command::Complete => (EntryKind::Complete, 0),
        Command::Cancel => (EntryKind::Cancel, 0),
    }
}

/// What a storage backend loads for a batch: the enrollments it names with
/// their open holds and the holds it names, and the operations stored under
/// the idempotency keys it carries, nothing else.
fn load(scenarios: &[&Scenario], requests: &[Request]) -> BatchInput {
    let find = |key: &EnrollmentKey| scenarios.iter().find(|scenario| scenario.key == *key);
    let named = named_holds(requests);
    let mut input = BatchInput::default();
    for key in enrollment_keys(requests) {
        if let Some(mut state) = find(&key).and_then(|scenario| scenario.state.clone()) {
            state
                .holds
                .retain(|seq, hold| hold.is_open() || named.contains(&(key.clone(), *seq)));
            input.states.insert(key, state);
        }
    }
    for (key, idempotency_key) in idempotency_keys(requests) {
        if let Some(stored) = find(&key).and_then(|scenario| scenario.stored.get(&idempotency_key))
        {
            input.stored.insert((key, idempotency_key), stored.clone());
        }
    }
    input
}

// ---------------------------------------------------------------------------
// Every operation, accepted.
// ---------------------------------------------------------------------------

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn pay_in_instalments_then_pay_the_rest_and_complete() {
    let mut s = Scenario::new();
    s.steps(&[
        (enroll(10_000, USD), "PENDING   LOCKED  PENDING_PAYMENT             due=10000 v1"),
        (pay(2_500),          "PARTIAL   LOCKED  PENDING_PAYMENT  paid=2500  due=7500  v2"),
        (pay_in(5_000, USD),  "PARTIAL   LOCKED  PENDING_PAYMENT  paid=7500  due=2500  v3"),
        (pay_remaining(),     "COMPLETED GRANTED ACTIVE           paid=10000 due=0     v4"),
        (complete(),          "COMPLETED GRANTED COMPLETED        paid=10000 due=0     v5"),
    ]);
    // pay_remaining records a PAYMENT of exactly what was due.
    let entry = &s.ledger()[3];
    assert_eq!((entry.kind, entry.amount), (EntryKind::Payment, 2_500));
    assert_eq!(s.ledger()[0].amount, 10_000, "ENROLL records the price");
    assert_eq!(s.ledger()[4].amount, 0, "COMPLETE moves no money");
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn credit_charge_and_refund_each_move_their_own_column() {
    Scenario::new().steps(&[
        (enroll(10_000, USD), "PENDING   LOCKED  PENDING_PAYMENT                                          due=10000 v1"),
        (credit(1_000),       "PARTIAL   LOCKED  PENDING_PAYMENT                        credited=1000     due=9000  v2"),
        (charge(500),         "PARTIAL   LOCKED  PENDING_PAYMENT charged=500            credited=1000     due=9500  v3"),
        (pay(9_500),          "COMPLETED GRANTED ACTIVE          charged=500 paid=9500  credited=1000     due=0     v4"),
        (refund(2_000),       "PARTIAL   REVOKED SUSPENDED       charged=500 paid=7500  credited=1000 refunded=2000 due=2000 v5"),
        (pay_remaining(),     "COMPLETED GRANTED ACTIVE          charged=500 paid=9500  credited=1000 refunded=2000 due=0    v6"),
    ]);
}

#[test]
fn a_payment_keeps_its_processor_reference() {
    let mut s = Scenario::enrolled(enroll(10_000, USD));
    s.step(
        pay_ref(2_500, "ch_3Nk9"),
        "PARTIAL LOCKED PENDING_PAYMENT paid=2500 due=7500 v2",
    );
    let entry = s.ledger().last().unwrap();
    assert_eq!(
        entry.reference.as_ref().map(Reference::as_str),
        Some("ch_3Nk9")
    );
    assert_eq!(entry.reason, None);
    assert_eq!(
        entry.idempotency_key.as_ref().map(IdempotencyKey::as_str),
        Some("op-2")
    );
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn cancel_an_unpaid_enrollment_then_it_refuses_every_money_operation() {
    let mut s = Scenario::new();
    s.steps(&[
        (enroll(10_000, USD), "PENDING LOCKED PENDING_PAYMENT               due=10000 v1"),
        (credit(1_000),       "PARTIAL LOCKED PENDING_PAYMENT credited=1000 due=9000  v2"),
        (cancel(),            "PARTIAL LOCKED CANCELLED       credited=1000 due=9000  v3"),
        (pay(100),            "ENROLLMENT_CANCELLED"),
        // Cancelled comes before the currency check.
        (pay_in(100, "EUR"),  "ENROLLMENT_CANCELLED"),
        (pay_remaining(),     "ENROLLMENT_CANCELLED"),
        (credit(100),         "ENROLLMENT_CANCELLED"),
        (refund(100),         "ENROLLMENT_CANCELLED"),
        (charge(100),         "ENROLLMENT_CANCELLED"),
        (complete(),          "INVALID_TRANSITION"),
        (cancel(),            "INVALID_TRANSITION"),
        (enroll(10_000, USD), "UNCHANGED"),
        (enroll(20_000, USD), "ENROLLMENT_EXISTS"),
    ]);
    s.expect("PARTIAL LOCKED CANCELLED credited=1000 due=9000 v3");
    assert_eq!(s.ledger().len(), 3, "refusals leave no entry");
}

// ---------------------------------------------------------------------------
// Every rejection code.
// ---------------------------------------------------------------------------

const EVERY_CODE: [&str; 14] = [
    "ENROLLMENT_NOT_FOUND",
    "ENROLLMENT_EXISTS",
    "IDEMPOTENCY_KEY_REUSED",
    "ENROLLMENT_CANCELLED",
    "CURRENCY_MISMATCH",
    "HOLD_NOT_FOUND",
    "HOLD_NOT_OPEN",
    "NOTHING_DUE",
    "OVERPAYMENT",
    "CREDIT_EXCEEDS_DUE",
    "CAPTURE_EXCEEDS_HOLD",
    "REFUND_EXCEEDS_PAID",
    "INVALID_TRANSITION",
    "TOTAL_LIMIT_EXCEEDED",
];

/// Price plus charges exactly at `ENROLLMENT_TOTAL_MAX`: the largest price,
/// then the largest charges until the total reaches the limit.
fn at_the_total_limit() -> Vec<Command> {
    let charges = ENROLLMENT_TOTAL_MAX / OPERATION_AMOUNT_MAX - 1;
    let mut setup = vec![enroll(OPERATION_AMOUNT_MAX, USD)];
    setup.extend((0..charges).map(|_| charge(OPERATION_AMOUNT_MAX)));
    setup
}

/// Every refusal: (the accepted history, the refused request, its code).
#[rustfmt::skip] // a ledger table, aligned by hand
fn refusals() -> Vec<(Vec<Command>, Command, &'static str)> {
    let enrolled = || vec![enroll(10_000, USD)];
    let after = |more: &[Command]| [enrolled(), more.to_vec()].concat();
    vec![
        (vec![],                              pay(100),                  "ENROLLMENT_NOT_FOUND"),
        (vec![],                              pay_remaining(),           "ENROLLMENT_NOT_FOUND"),
        (vec![],                              credit(100),               "ENROLLMENT_NOT_FOUND"),
        (vec![],                              refund(100),               "ENROLLMENT_NOT_FOUND"),
        (vec![],                              charge(100),               "ENROLLMENT_NOT_FOUND"),
        (vec![],                              complete(),                "ENROLLMENT_NOT_FOUND"),
        (vec![],                              cancel(),                  "ENROLLMENT_NOT_FOUND"),
        (enrolled(),                          enroll(12_000, USD),       "ENROLLMENT_EXISTS"),
        (enrolled(),                          enroll(10_000, "EUR"),     "ENROLLMENT_EXISTS"),
        (enrolled(), enroll_with(10_000, USD, min_settled(5_000)),       "ENROLLMENT_EXISTS"),
        (after(&[cancel()]),                  pay(100),                  "ENROLLMENT_CANCELLED"),
        (after(&[cancel()]),                  charge(100),               "ENROLLMENT_CANCELLED"),
        (enrolled(),                          pay_in(100, "EUR"),        "CURRENCY_MISMATCH"),
        (after(&[pay(10_000)]),               pay_remaining(),           "NOTHING_DUE"),
        (after(&[credit(10_000)]),            pay_remaining(),           "NOTHING_DUE"),
        (enrolled(),                          pay(10_001),               "OVERPAYMENT"),
        (after(&[pay(10_000)]),               pay(1),                    "OVERPAYMENT"),
        (after(&[credit(4_000)]),             credit(6_001),             "CREDIT_EXCEEDS_DUE"),
        (after(&[pay(10_000)]),               credit(1),                 "CREDIT_EXCEEDS_DUE"),
        (after(&[pay(2_500)]),                refund(9_000),             "REFUND_EXCEEDS_PAID"),
        (after(&[pay(2_500), refund(2_500)]), refund(1),                 "REFUND_EXCEEDS_PAID"),
        // A credit is not money received: there is nothing to refund.
        (after(&[credit(10_000)]),            refund(1),                 "REFUND_EXCEEDS_PAID"),
        (after(&[pay(9_999)]),                complete(),                "INVALID_TRANSITION"),
        (after(&[pay(10_000), complete()]),   complete(),                "INVALID_TRANSITION"),
        (after(&[pay(1)]),                    cancel(),                  "INVALID_TRANSITION"),
        (after(&[cancel()]),                  cancel(),                  "INVALID_TRANSITION"),
        (at_the_total_limit(),                charge(1),                 "TOTAL_LIMIT_EXCEEDED"),
        // Holds: seq 2 is the hold, seq 3 what ended it.
        (vec![],                              hold(100),                 "ENROLLMENT_NOT_FOUND"),
        (vec![],                              capture(2),                "ENROLLMENT_NOT_FOUND"),
        (vec![],                              void(2),                   "ENROLLMENT_NOT_FOUND"),
        (after(&[cancel()]),                  hold(100),                 "ENROLLMENT_CANCELLED"),
        (after(&[cancel()]),                  capture(2),                "ENROLLMENT_CANCELLED"),
        (after(&[cancel()]),                  void(2),                   "ENROLLMENT_CANCELLED"),
        (enrolled(),                          capture(2),                "HOLD_NOT_FOUND"),
        (after(&[pay(100)]),                  capture(2),                "HOLD_NOT_FOUND"),
        (after(&[hold(100)]),                 void(1),                   "HOLD_NOT_FOUND"),
        (after(&[hold(100), capture(2)]),     capture(2),                "HOLD_NOT_OPEN"),
        (after(&[hold(100), void(2)]),        capture(2),                "HOLD_NOT_OPEN"),
        (after(&[hold(100), void(2)]),        void(2),                   "HOLD_NOT_OPEN"),
        // A closed hold is not open before it is too small.
        (after(&[hold(100), capture(2)]),     capture_part(2, 101),      "HOLD_NOT_OPEN"),
        (after(&[hold(100)]),                 capture_part(2, 101),      "CAPTURE_EXCEEDS_HOLD"),
        (after(&[hold(10_000)]),              hold_remaining(),          "NOTHING_DUE"),
        (after(&[pay(10_000)]),               hold_remaining(),          "NOTHING_DUE"),
        (after(&[hold(10_000)]),              pay_remaining(),           "NOTHING_DUE"),
        (after(&[hold(4_000)]),               hold(6_001),               "OVERPAYMENT"),
        (after(&[hold(4_000)]),               pay(6_001),                "OVERPAYMENT"),
        (after(&[hold(4_000)]),               credit(6_001),             "CREDIT_EXCEEDS_DUE"),
        (after(&[hold(1)]),                   cancel(),                  "INVALID_TRANSITION"),
    ]
}

#[test]
fn every_rejection_code_refuses_and_changes_nothing() {
    let mut seen = BTreeSet::new();
    for (history, refused, code) in refusals() {
        let mut s = Scenario::new();
        for command in history {
            s.accept(command);
        }
        let before = s.state.clone();
        let message = match s.run(refused.clone()) {
            Outcome::Rejected(rejection) => {
                assert_eq!(
                    rejection.code(),
                    code,
                    "{} after {}",
                    refused.name(),
                    s.render_ledger()
                );
                rejection.to_string()
            }
            other => panic!(
                "{} should be {code}, got {}",
                refused.name(),
                outcome_line(&other)
            ),
        };
        assert!(!message.is_empty(), "{code} explains itself");
        assert_eq!(s.state, before, "{code} changes nothing");
        seen.insert(code);
    }

    // IDEMPOTENCY_KEY_REUSED is decided by the batch planner, before `apply`.
    let mut s = Scenario::enrolled(enroll(10_000, USD));
    s.with_key("order-42").step(
        pay(2_500),
        "PARTIAL LOCKED PENDING_PAYMENT paid=2500 due=7500 v2",
    );
    s.with_key("order-42")
        .step(pay(3_000), "IDEMPOTENCY_KEY_REUSED");
    s.expect("PARTIAL LOCKED PENDING_PAYMENT paid=2500 due=7500 v2");
    seen.insert("IDEMPOTENCY_KEY_REUSED");

    assert_eq!(seen, BTreeSet::from(EVERY_CODE), "every code is covered");
}

// ---------------------------------------------------------------------------
// Holds: reserve the due before the card is charged, then capture or void.
// ---------------------------------------------------------------------------

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn a_hold_reserves_the_due_and_its_capture_is_the_payment() {
    let mut s = Scenario::new();
    s.steps(&[
        (enroll(10_000, USD),  "PENDING   LOCKED  PENDING_PAYMENT                      due=10000 v1"),
        // Held money is not settled: the statuses do not move.
        (hold(2_500),          "PENDING   LOCKED  PENDING_PAYMENT           held=2500  due=10000 v2"),
        (pay(7_501),           "OVERPAYMENT"),
        (pay(7_500),           "PARTIAL   LOCKED  PENDING_PAYMENT paid=7500 held=2500  due=2500  v3"),
        (pay_remaining(),      "NOTHING_DUE"),
        (hold_remaining(),     "NOTHING_DUE"),
        (credit(1),            "CREDIT_EXCEEDS_DUE"),
        (capture_part(2, 2_501), "CAPTURE_EXCEEDS_HOLD"),
        (capture(2),           "COMPLETED GRANTED ACTIVE  paid=10000           due=0     v4"),
        (capture(2),           "HOLD_NOT_OPEN"),
        (void(2),              "HOLD_NOT_OPEN"),
        (capture(3),           "HOLD_NOT_FOUND"),
        (capture(99),          "HOLD_NOT_FOUND"),
    ]);
    let ledger = s.ledger();
    let hold_entry = &ledger[1];
    assert_eq!((hold_entry.kind, hold_entry.amount), (EntryKind::Hold, 2_500));
    assert_eq!(hold_entry.hold_seq, Some(2), "a HOLD entry names itself");
    assert_eq!(
        hold_entry.expires_at,
        Some(at(T0 + MINUTE + 900_000_000)),
        "expires 900 s after it was opened"
    );
    let capture_entry = &ledger[3];
    assert_eq!(
        (capture_entry.kind, capture_entry.amount, capture_entry.hold_seq),
        (EntryKind::Capture, 2_500, Some(2))
    );
    assert_eq!(capture_entry.expires_at, None);
    assert_eq!(
        (s.enrollment().amount_held, s.enrollment().amount_available),
        (0, 0)
    );
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn a_partial_capture_and_a_void_release_the_rest() {
    let mut s = Scenario::new();
    s.steps(&[
        (enroll(10_000, USD),      "PENDING LOCKED PENDING_PAYMENT                     due=10000 v1"),
        (hold_remaining(),         "PENDING LOCKED PENDING_PAYMENT          held=10000 due=10000 v2"),
        (capture_part(2, 4_000),   "PARTIAL LOCKED PENDING_PAYMENT paid=4000           due=6000  v3"),
        (hold(1_000),              "PARTIAL LOCKED PENDING_PAYMENT paid=4000 held=1000 due=6000  v4"),
        (hold(2_000),              "PARTIAL LOCKED PENDING_PAYMENT paid=4000 held=3000 due=6000  v5"),
        (void(4),                  "PARTIAL LOCKED PENDING_PAYMENT paid=4000 held=2000 due=6000  v6"),
        (hold_remaining(),         "PARTIAL LOCKED PENDING_PAYMENT paid=4000 held=6000 due=6000  v7"),
    ]);
    assert_eq!(s.enrollment().amount_available, 0);
    let ledger = s.ledger();
    assert_eq!(ledger[2].reference.as_ref().map(Reference::as_str), Some("ch_partial"));
    assert_eq!((ledger[5].kind, ledger[5].amount, ledger[5].hold_seq), (EntryKind::Void, 1_000, Some(4)));
    // A capture without a reference keeps the one the hold was opened with.
    s.step(capture(7), "PARTIAL LOCKED PENDING_PAYMENT paid=8000 held=2000 due=2000 v8");
    assert_eq!(s.ledger()[7].reference.as_ref().map(Reference::as_str), Some("pi_checkout"));
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn open_holds_block_cancel_but_not_complete_charge_or_refund() {
    let mut s = Scenario::new();
    s.steps(&[
        (enroll_with(10_000, USD, min_settled(1_000)), "PENDING LOCKED PENDING_PAYMENT due=10000 v1"),
        (hold(500),           "PENDING LOCKED  PENDING_PAYMENT                     held=500 due=10000 v2"),
        (cancel(),            "INVALID_TRANSITION"),
        (pay(1_000),          "PARTIAL GRANTED ACTIVE          paid=1000           held=500 due=9000  v3"),
        (complete(),          "PARTIAL GRANTED COMPLETED       paid=1000           held=500 due=9000  v4"),
        (charge(100),         "PARTIAL GRANTED COMPLETED charged=100 paid=1000     held=500 due=9100  v5"),
        (refund(1_000),       "PENDING REVOKED SUSPENDED charged=100 refunded=1000 held=500 due=10100 v6"),
        (void(2),             "PENDING REVOKED SUSPENDED charged=100 refunded=1000          due=10100 v7"),
        (cancel(),            "PENDING REVOKED CANCELLED charged=100 refunded=1000          due=10100 v8"),
    ]);
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn an_expired_hold_is_released_by_an_expire_entry_before_the_next_request() {
    let mut s = Scenario::new();
    s.at(T0).step(enroll(10_000, USD), "PENDING LOCKED PENDING_PAYMENT due=10000 v1");
    s.at(T0).step(hold_remaining_for(30), "PENDING LOCKED PENDING_PAYMENT held=10000 due=10000 v2");
    assert_eq!(s.ledger()[1].expires_at, Some(at(T0 + 30_000_000)));
    // Still open one microsecond before it expires.
    s.at(T0 + 30_000_000 - 1).step(pay(1), "OVERPAYMENT");
    assert_eq!(s.ledger().len(), 2);
    // At expires_at the capture is refused, and the EXPIRE entry written
    // before it is kept although the capture wrote nothing.
    s.at(T0 + 30_000_000).step(capture(2), "HOLD_NOT_OPEN");
    s.expect("PENDING LOCKED PENDING_PAYMENT due=10000 v3");
    let expire = &s.ledger()[2];
    assert_eq!(
        (expire.kind, expire.amount, expire.hold_seq, expire.idempotency_key.clone()),
        (EntryKind::Expire, 10_000, Some(2), None)
    );
    assert_eq!(expire.created_at, at(T0 + 30_000_000));
    // The capture is told why: the hold expired.
    s.at(T0 + HOUR);
    let Outcome::Rejected(rejection) = s.run(capture(2)) else { panic!("refused") };
    assert_eq!(rejection, Rejection::HoldNotOpen { hold_seq: 2, state: HoldState::Expired });
    s.at(T0 + HOUR).step(pay_remaining(), "COMPLETED GRANTED ACTIVE paid=10000 due=0 v4");
    assert_eq!(verify_chain(&s.key(), s.ledger(), Some(s.enrollment())), vec![]);
}

#[test]
fn a_capture_after_expires_at_is_refused_even_without_an_expire_entry() {
    let mut s = Scenario::new();
    s.at(T0).accept(enroll(10_000, USD));
    s.at(T0).accept(hold_remaining_for(30));
    let state = s.state.clone().unwrap();
    for (command, expected) in [
        (capture(2), HoldState::Expired),
        (void(2), HoldState::Expired),
    ] {
        // `apply` alone, with no planner to write the EXPIRE entry first.
        let request = post(&s.key(), "late", command);
        assert_eq!(
            apply(Some(&state), &request, at(T0 + 31_000_000)),
            Err(Rejection::HoldNotOpen {
                hold_seq: 2,
                state: expected
            })
        );
    }
    // The sweep's request writes nothing of its own.
    let sweep = Request {
        key: s.key(),
        idempotency_key: None,
        command: Command::ExpireHolds,
    };
    let plan = plan_batch(
        load(&[&s], std::slice::from_ref(&sweep)),
        std::slice::from_ref(&sweep),
        at(T0 + 31_000_000),
    );
    assert_eq!(outcomes(&plan), vec!["unchanged v3"]);
    assert_eq!(plan.new_entries.len(), 1);
    assert_eq!(plan.new_entries[0].0.kind, EntryKind::Expire);
    // Before expires_at the sweep finds nothing to do.
    let plan = plan_batch(
        load(&[&s], std::slice::from_ref(&sweep)),
        std::slice::from_ref(&sweep),
        at(T0 + 29_000_000),
    );
    assert_eq!(outcomes(&plan), vec!["unchanged v2"]);
    assert!(plan.new_entries.is_empty() && plan.changed.is_empty());
}

#[test]
fn expires_in_is_bounded_and_defaults_to_fifteen_minutes() {
    assert!(HoldExpiry::from_seconds(29).is_err());
    assert_eq!(HoldExpiry::from_seconds(30).unwrap().seconds(), 30);
    assert_eq!(HoldExpiry::from_seconds(86_400).unwrap().seconds(), 86_400);
    assert!(HoldExpiry::from_seconds(86_401).is_err());
    assert!(HoldExpiry::from_seconds(-900).is_err());
    assert_eq!(HoldExpiry::default().seconds(), 900);
    let parse = |text: &str| serde_json::from_str::<HoldExpiry>(text);
    assert_eq!(parse("900").unwrap().seconds(), 900);
    for bad in ["900.0", "\"900\"", "29", "86401", "1e3", "null"] {
        assert!(parse(bad).is_err(), "{bad} must be refused");
    }
}

#[test]
fn two_holds_of_the_remaining_in_one_batch_reserve_once() {
    let mut s = Scenario::enrolled(enroll(10_000, USD));
    let requests = [
        post(&s.key(), "tab-1", hold_remaining()),
        post(&s.key(), "tab-2", hold_remaining()),
        post(&s.key(), "tab-1", hold_remaining()),
    ];
    let plan = plan_batch(load(&[&s], &requests), &requests, at(T0 + HOUR));
    assert_eq!(
        outcomes(&plan),
        vec![
            "accepted HOLD 10000 seq=2",
            "rejected NOTHING_DUE",
            "replayed HOLD 10000 seq=2"
        ]
    );
    s.state = Some(plan.changed[0].clone());
    assert_eq!(s.enrollment().amount_held, 10_000);
    // Capture and void of the same hold in one batch: the first wins.
    let requests = [
        post(&s.key(), "capture", capture(2)),
        post(&s.key(), "void", void(2)),
    ];
    let plan = plan_batch(load(&[&s], &requests), &requests, at(T0 + HOUR));
    assert_eq!(
        outcomes(&plan),
        vec!["accepted CAPTURE 10000 seq=3", "rejected HOLD_NOT_OPEN"]
    );
}

#[test]
fn every_hold_kind_replays_in_the_audit_and_old_entries_keep_their_hashes() {
    let mut s = Scenario::new();
    s.at(T0).accept(enroll(10_000, USD));
    s.at(T0).accept(hold(1_000));
    s.at(T0).accept(hold_remaining_for(30));
    s.at(T0).accept(capture_part(2, 600));
    s.at(T0).accept(hold(400));
    s.at(T0 + MINUTE).accept(void(5));
    assert_eq!(
        s.ledger()
            .iter()
            .map(|entry| entry.kind.as_str())
            .collect::<Vec<_>>(),
        [
            "ENROLL", "HOLD", "HOLD", "CAPTURE", "HOLD", "EXPIRE", "VOID"
        ]
    );
    assert_eq!(
        verify_chain(&s.key(), s.ledger(), Some(s.enrollment())),
        vec![]
    );

    // A tampered hold is caught: a HOLD whose expiry moved, resealed.
    let mut tampered = s.ledger().to_vec();
    tampered[2].expires_at = Some(at(T0 + 2 * HOUR));
    reseal(&mut tampered);
    assert!(
        !verify_chain(&s.key(), &tampered, Some(s.enrollment())).is_empty(),
        "replay notices the EXPIRE of a hold that had not expired"
    );

    // An entry without holds hashes exactly the fields it always did.
    let enroll_entry = &s.ledger()[0];
    let canonical = format!(
        concat!(
            r#"{{"prev_hash":"{zero}","seq":1,"kind":"ENROLL","amount":10000,"currency":"USD","#,
            r#""idempotency_key":null,"reference":null,"reason":null,"created_at":"{t0}","#,
            r#""enrollment":{{"user_id":"student-1","course_id":"course-101","currency":"USD","#,
            r#""price":10000,"amount_charged":0,"amount_paid":0,"amount_credited":0,"#,
            r#""amount_refunded":0,"amount_due":10000,"payment_status":"PENDING","#,
            r#""access_policy":{{"kind":"FULL_PAYMENT"}},"access_status":"LOCKED","#,
            r#""status":"PENDING_PAYMENT","version":1,"created_at":"{t0}","updated_at":"{t0}"}}}}"#
        ),
        zero = Hash::ZERO,
        t0 = at(T0)
    );
    assert_eq!(enroll_entry.hash, Hash::of(canonical.as_bytes()));
    // A snapshot stored before holds existed reads as nothing held.
    let mut old = serde_json::to_value(&enroll_entry.enrollment).unwrap();
    let fields = old.as_object_mut().unwrap();
    fields.remove("amount_held");
    fields.remove("amount_available");
    let read: Enrollment = serde_json::from_value(old).unwrap();
    assert_eq!(read, enroll_entry.enrollment);
}

#[test]
fn enrolling_again_with_the_same_terms_returns_the_enrollment_unchanged() {
    for terms in [
        enroll(10_000, USD),
        enroll_with(10_000, USD, min_settled(4_000)),
        enroll(0, "EUR"),
    ] {
        let mut s = Scenario::enrolled(terms.clone());
        let before = line(s.enrollment());
        s.step(terms, "UNCHANGED").expect(&before);
        assert_eq!(s.ledger().len(), 1, "no new entry");
    }
    // And at the level of `apply`: Applied::Unchanged with the enrollment as it is.
    let s = Scenario::enrolled(enroll(10_000, USD));
    let state = s.state.clone().unwrap();
    let request = put(&s.key(), enroll(10_000, USD));
    assert_eq!(
        apply(Some(&state), &request, at(T0 + HOUR)),
        Ok(Applied::Unchanged(state.enrollment.clone()))
    );
}

#[test]
fn apply_is_pure_and_needs_an_enrollment_for_everything_but_enroll() {
    let key = enrollment_key("student-9", "course-9");
    let request = post(&key, "k", pay(100));
    let refused = apply(None, &request, at(T0));
    assert_eq!(
        refused.as_ref().map_err(|rejection| rejection.code()),
        Err("ENROLLMENT_NOT_FOUND")
    );
    let enrolled = put(&key, enroll(5_000, USD));
    let first = apply(None, &enrolled, at(T0));
    assert_eq!(
        first,
        apply(None, &enrolled, at(T0)),
        "same inputs, same entry, bit for bit"
    );
    let Ok(Applied::Entry(entry)) = first else {
        panic!("enroll is accepted")
    };
    assert_eq!(
        line(&entry.enrollment),
        "PENDING LOCKED PENDING_PAYMENT due=5000 v1"
    );
    assert_eq!(entry.idempotency_key, None, "enrolling carries no key");
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn charges_stop_at_the_enrollment_total_limit() {
    let mut s = Scenario::new();
    for command in at_the_total_limit() {
        s.accept(command);
    }
    // Price plus charges exactly at the limit is accepted.
    s.expect("PENDING LOCKED PENDING_PAYMENT charged=999000000000000 due=1000000000000000 v1000");
    assert_eq!(s.enrollment().price + s.enrollment().amount_charged, ENROLLMENT_TOTAL_MAX);
    s.steps(&[
        (charge(1), "TOTAL_LIMIT_EXCEEDED"),
        (charge(OPERATION_AMOUNT_MAX), "TOTAL_LIMIT_EXCEEDED"),
        // Paying does not make room: the limit is on price plus charges.
        (pay(OPERATION_AMOUNT_MAX),
         "PARTIAL LOCKED PENDING_PAYMENT charged=999000000000000 paid=1000000000000 due=999000000000000 v1001"),
        (charge(1), "TOTAL_LIMIT_EXCEEDED"),
    ]);
}

// ---------------------------------------------------------------------------
// Statuses follow the amounts.
// ---------------------------------------------------------------------------

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn a_free_course_is_settled_and_open_from_the_start() {
    for policy in [AccessPolicy::FullPayment, min_settled(5_000)] {
        Scenario::new().steps(&[
            (enroll_with(0, USD, policy), "COMPLETED GRANTED ACTIVE    due=0 v1"),
            (pay_remaining(),             "NOTHING_DUE"),
            (pay(1),                      "OVERPAYMENT"),
            (credit(1),                   "CREDIT_EXCEEDS_DUE"),
            (refund(1),                   "REFUND_EXCEEDS_PAID"),
            (complete(),                  "COMPLETED GRANTED COMPLETED due=0 v2"),
        ]);
    }
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn min_settled_grants_access_at_the_threshold_and_a_refund_below_it_revokes() {
    Scenario::new().steps(&[
        (enroll_with(10_000, USD, min_settled(4_000)),
                        "PENDING LOCKED  PENDING_PAYMENT                                   due=10000 v1"),
        (pay(2_999),    "PARTIAL LOCKED  PENDING_PAYMENT paid=2999                         due=7001  v2"),
        (credit(1_000), "PARTIAL LOCKED  PENDING_PAYMENT paid=2999 credited=1000           due=6001  v3"),
        // paid + credited = 4000: the threshold, exactly.
        (pay(1),        "PARTIAL GRANTED ACTIVE          paid=3000 credited=1000           due=6000  v4"),
        (refund(1),     "PARTIAL REVOKED SUSPENDED       paid=2999 credited=1000 refunded=1 due=6001 v5"),
        (pay(1),        "PARTIAL GRANTED ACTIVE          paid=3000 credited=1000 refunded=1 due=6000 v6"),
        // A charge does not touch what is settled, so access holds.
        (charge(500),   "PARTIAL GRANTED ACTIVE charged=500 paid=3000 credited=1000 refunded=1 due=6500 v7"),
        (refund(3_000), "PARTIAL REVOKED SUSPENDED charged=500 credited=1000 refunded=3001 due=9500 v8"),
    ]);
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn min_settled_access_never_granted_stays_locked_after_a_refund() {
    Scenario::new().steps(&[
        (enroll_with(10_000, USD, min_settled(4_000)),
                        "PENDING LOCKED PENDING_PAYMENT                         due=10000 v1"),
        (pay(3_000),    "PARTIAL LOCKED PENDING_PAYMENT paid=3000               due=7000  v2"),
        (refund(3_000), "PENDING LOCKED PENDING_PAYMENT           refunded=3000 due=10000 v3"),
    ]);
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn a_charge_after_full_payment_revokes_full_payment_access() {
    Scenario::new().steps(&[
        (enroll(10_000, USD), "PENDING   LOCKED  PENDING_PAYMENT                        due=10000 v1"),
        (pay_remaining(),     "COMPLETED GRANTED ACTIVE                      paid=10000 due=0     v2"),
        (charge(1_500),       "PARTIAL   REVOKED SUSPENDED       charged=1500 paid=10000 due=1500  v3"),
        (complete(),          "INVALID_TRANSITION"),
        (pay(1_500),          "COMPLETED GRANTED ACTIVE          charged=1500 paid=11500 due=0     v4"),
    ]);
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn completed_stays_while_access_holds_and_a_revoking_refund_suspends_it() {
    // MIN_SETTLED: completion survives payments, charges and refunds that keep
    // the threshold, and falls to SUSPENDED with the first one that does not.
    Scenario::new().steps(&[
        (enroll_with(10_000, USD, min_settled(5_000)),
                        "PENDING LOCKED  PENDING_PAYMENT                                   due=10000 v1"),
        (pay(5_000),    "PARTIAL GRANTED ACTIVE                      paid=5000             due=5000  v2"),
        (complete(),    "PARTIAL GRANTED COMPLETED                   paid=5000             due=5000  v3"),
        (pay(2_000),    "PARTIAL GRANTED COMPLETED                   paid=7000             due=3000  v4"),
        (charge(500),   "PARTIAL GRANTED COMPLETED       charged=500 paid=7000             due=3500  v5"),
        (refund(2_000), "PARTIAL GRANTED COMPLETED       charged=500 paid=5000 refunded=2000 due=5500 v6"),
        (refund(1),     "PARTIAL REVOKED SUSPENDED       charged=500 paid=4999 refunded=2001 due=5501 v7"),
        // Access back: ACTIVE, and the course may be completed again.
        (pay(1),        "PARTIAL GRANTED ACTIVE          charged=500 paid=5000 refunded=2001 due=5500 v8"),
        (complete(),    "PARTIAL GRANTED COMPLETED       charged=500 paid=5000 refunded=2001 due=5500 v9"),
    ]);
    // FULL_PAYMENT: any refund revokes.
    Scenario::new().steps(&[
        (enroll(10_000, USD), "PENDING   LOCKED  PENDING_PAYMENT                       due=10000 v1"),
        (pay(10_000),         "COMPLETED GRANTED ACTIVE        paid=10000              due=0     v2"),
        (complete(),          "COMPLETED GRANTED COMPLETED     paid=10000              due=0     v3"),
        (refund(1),           "PARTIAL   REVOKED SUSPENDED     paid=9999  refunded=1   due=1     v4"),
    ]);
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn refunding_everything_makes_payment_pending_again() {
    Scenario::new().steps(&[
        (enroll(10_000, USD), "PENDING   LOCKED  PENDING_PAYMENT                       due=10000 v1"),
        (pay(4_000),          "PARTIAL   LOCKED  PENDING_PAYMENT paid=4000             due=6000  v2"),
        (refund(4_000),       "PENDING   LOCKED  PENDING_PAYMENT       refunded=4000   due=10000 v3"),
        (pay(10_000),         "COMPLETED GRANTED ACTIVE          paid=10000 refunded=4000 due=0  v4"),
        (refund(10_000),      "PENDING   REVOKED SUSPENDED             refunded=14000  due=10000 v5"),
        // Nothing is paid any more, so the enrollment may be cancelled.
        (cancel(),            "PENDING   REVOKED CANCELLED             refunded=14000  due=10000 v6"),
    ]);
}

/// The names a line is written in are the API's, and read back.
#[test]
fn status_and_kind_names_are_the_wire_names() {
    fn check<T>(values: &[T], name: fn(&T) -> &'static str, parse: fn(&str) -> Option<T>)
    where
        T: serde::Serialize + PartialEq + std::fmt::Debug + Copy,
    {
        for value in values {
            let wire = serde_json::to_value(value).unwrap();
            assert_eq!(wire.as_str(), Some(name(value)));
            assert_eq!(parse(name(value)), Some(*value));
        }
    }
    use AccessStatus as A;
    use EnrollmentStatus as E;
    use PaymentStatus as P;
    check(&[P::Pending, P::Partial, P::Completed], P::as_str, P::parse);
    check(&[A::Locked, A::Granted, A::Revoked], A::as_str, A::parse);
    let statuses = [
        E::PendingPayment,
        E::Active,
        E::Suspended,
        E::Completed,
        E::Cancelled,
    ];
    check(&statuses, E::as_str, E::parse);
    check(&EntryKind::ALL, EntryKind::as_str, EntryKind::parse);
    let holds = [
        HoldState::Open,
        HoldState::Captured,
        HoldState::Voided,
        HoldState::Expired,
    ];
    check(&holds, HoldState::as_str, HoldState::parse);
    assert_eq!(PaymentStatus::parse("pending"), None);
}

// ---------------------------------------------------------------------------
// Time.
// ---------------------------------------------------------------------------

#[test]
fn server_time_never_runs_backwards() {
    let mut s = Scenario::new();
    s.at(T0).step(
        enroll(10_000, USD),
        "PENDING LOCKED PENDING_PAYMENT due=10000 v1",
    );
    s.at(T0 + HOUR).step(
        pay(1_000),
        "PARTIAL LOCKED PENDING_PAYMENT paid=1000 due=9000 v2",
    );
    // The host clock is stepped back by 59 minutes.
    s.at(T0 + MINUTE).step(
        pay(1_000),
        "PARTIAL LOCKED PENDING_PAYMENT paid=2000 due=8000 v3",
    );
    assert_eq!(
        s.enrollment().updated_at,
        at(T0 + HOUR),
        "updated_at does not move backwards"
    );
    assert_eq!(
        s.ledger()[2].created_at,
        at(T0 + HOUR),
        "nor does the entry's time"
    );
    assert_eq!(s.enrollment().created_at, at(T0));
    // A refusal at an earlier time changes nothing either.
    s.at(T0).step(pay(1_000_000), "OVERPAYMENT");
    assert_eq!(s.enrollment().updated_at, at(T0 + HOUR));
    // Once the clock is ahead again, time moves on.
    s.at(T0 + 2 * HOUR).step(
        pay(1_000),
        "PARTIAL LOCKED PENDING_PAYMENT paid=3000 due=7000 v4",
    );
    assert_eq!(
        s.enrollment().updated_at.to_string(),
        "2026-09-01T11:00:00.000000Z"
    );
    assert_eq!(
        s.enrollment().created_at.to_string(),
        "2026-09-01T09:00:00.000000Z"
    );
}

// ---------------------------------------------------------------------------
// The ledger: a hash chain that replays to the balances.
// ---------------------------------------------------------------------------

/// A ledger with an entry of every kind.
#[rustfmt::skip] // a ledger table, aligned by hand
fn every_kind() -> Scenario {
    let mut s = Scenario::new();
    s.steps(&[
        (enroll(10_000, USD), "PENDING   LOCKED  PENDING_PAYMENT                                     due=10000 v1"),
        (pay(2_500),          "PARTIAL   LOCKED  PENDING_PAYMENT             paid=2500               due=7500  v2"),
        (refund(2_500),       "PENDING   LOCKED  PENDING_PAYMENT                       refunded=2500 due=10000 v3"),
        (charge(500),         "PENDING   LOCKED  PENDING_PAYMENT charged=500           refunded=2500 due=10500 v4"),
        (credit(10_500),      "COMPLETED GRANTED ACTIVE    charged=500 credited=10500 refunded=2500 due=0     v5"),
        (complete(),          "COMPLETED GRANTED COMPLETED charged=500 credited=10500 refunded=2500 due=0     v6"),
        (cancel(),            "COMPLETED GRANTED CANCELLED charged=500 credited=10500 refunded=2500 due=0     v7"),
    ]);
    s
}

#[test]
fn the_ledger_is_a_hash_chain_numbered_by_version() {
    let s = every_kind();
    let ledger = s.ledger();
    let kinds: BTreeSet<&str> = ledger.iter().map(|entry| entry.kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ENROLL", "PAYMENT", "REFUND", "CHARGE", "CREDIT", "COMPLETE", "CANCEL"
        ])
    );
    assert_eq!(
        ledger[0].prev_hash,
        Hash::ZERO,
        "the first entry chains to zero"
    );
    for (index, entry) in ledger.iter().enumerate() {
        assert_eq!(entry.seq, index as u64 + 1);
        assert_eq!(entry.seq, entry.enrollment.version, "seq == version");
        assert_eq!(entry.hash, entry.compute_hash());
        assert_ne!(entry.hash, Hash::ZERO);
        if index > 0 {
            assert_eq!(
                entry.prev_hash,
                ledger[index - 1].hash,
                "entry {} chains to {}",
                entry.seq,
                index
            );
        }
    }
    assert_eq!(
        verify_chain(&s.key(), ledger, Some(s.enrollment())),
        vec![],
        "an honest chain"
    );
}

#[test]
fn a_ledger_entry_round_trips_through_json_with_its_hash() {
    for entry in every_kind().ledger() {
        let text = serde_json::to_string(entry).unwrap();
        let back: LedgerEntry = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, entry);
        assert_eq!(back.compute_hash(), entry.hash);
    }
}

/// Recomputes every hash, as a forger who rewrites the whole chain would.
fn reseal(ledger: &mut [LedgerEntry]) {
    let mut prev_hash = Hash::ZERO;
    for entry in ledger {
        entry.prev_hash = prev_hash;
        entry.hash = entry.compute_hash();
        prev_hash = entry.hash;
    }
}

#[test]
#[rustfmt::skip] // a ledger table, aligned by hand
fn tampering_is_reported_at_the_entry_that_was_touched() {
    type Tamper = fn(&mut Vec<LedgerEntry>);
    // (what was done, how, the seq the audit must name first, a word of its report)
    let table: [(&str, Tamper, u64, &str); 5] = [
        ("the payment's amount altered", |l| l[1].amount = 2_400, 2, "amount"),
        ("a snapshot's amount_paid altered", |l| l[1].enrollment.amount_paid = 3_500, 2, "amount_paid"),
        ("the refund entry removed", |l| { l.remove(2); }, 4, "expected seq 3"),
        ("the charge recorded as a credit", |l| l[3].kind = EntryKind::Credit, 4, "amount_c"),
        ("the first entry removed", |l| { l.remove(0); }, 2, "expected seq 1"),
    ];
    let s = every_kind();
    let stored = s.enrollment();
    for (what, tamper, seq, word) in table {
        for resealed in [false, true] {
            let mut ledger = s.ledger().to_vec();
            tamper(&mut ledger);
            if resealed {
                reseal(&mut ledger);
            }
            let found = verify_chain(&s.key(), &ledger, Some(stored));
            let report = format!("{what} (resealed: {resealed}):\n{found:#?}");
            assert_eq!(found.first().and_then(|d| d.seq), Some(seq), "{report}");
            let at_seq: Vec<_> = found.iter().filter(|d| d.seq == Some(seq)).collect();
            assert!(at_seq.iter().any(|d| d.problem.contains(word)), "{report}");
            if !resealed && !what.contains("removed") {
                // The chain alone gives the alteration away.
                assert!(at_seq.iter().any(|d| d.problem.contains("hash mismatch")), "{report}");
            }
            for d in &found {
                assert_eq!((d.user_id.as_str(), d.course_id.as_str()), ("student-1", "course-101"));
            }
        }
    }
}

#[test]
fn an_entry_resealed_on_its_own_breaks_the_link_to_the_next() {
    // The refund's reason is rewritten and only that entry's hash recomputed:
    // it now verifies by itself and replays to the same balances, so only
    // the next entry's prev_hash gives it away.
    let s = every_kind();
    let mut ledger = s.ledger().to_vec();
    ledger[2].reason = Some(Reason::parse("forged").unwrap());
    ledger[2].hash = ledger[2].compute_hash();
    let found = verify_chain(&s.key(), &ledger, Some(s.enrollment()));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].seq, Some(4), "{found:#?}");
    assert!(found[0].problem.contains("prev_hash"), "{found:#?}");
}

#[test]
fn the_stored_enrollment_must_match_its_newest_entry() {
    let s = every_kind();
    let mut stored = s.enrollment().clone();
    stored.amount_credited += 1;
    let found = verify_chain(&s.key(), s.ledger(), Some(&stored));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].seq, None, "the fault is in no entry");
    assert!(found[0].problem.contains("amount_credited"), "{found:#?}");

    let orphans = verify_chain(&s.key(), s.ledger(), None);
    assert_eq!(orphans.len(), 1, "{orphans:#?}");
    let missing = verify_chain(&s.key(), &[], Some(s.enrollment()));
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert_eq!(verify_chain(&s.key(), &[], None), vec![]);
}

// ---------------------------------------------------------------------------
// The batch planner.
// ---------------------------------------------------------------------------

/// Checks that a scenario's ledger followed by the batch's new entries for it
/// audits clean against the batch's final state.
fn assert_audits_clean(s: &Scenario, plan: &BatchPlan) {
    let mut ledger = s.ledger().to_vec();
    ledger.extend(
        plan.new_entries
            .iter()
            .map(|(entry, _)| entry)
            .filter(|entry| entry.enrollment.key() == s.key)
            .cloned(),
    );
    let last = plan
        .changed
        .iter()
        .find(|state| state.enrollment.key() == s.key);
    let stored = last
        .map(|state| &state.enrollment)
        .or(s.state.as_ref().map(|state| &state.enrollment));
    if let Some(state) = last {
        assert_eq!(
            state.last_hash,
            ledger.last().unwrap().hash,
            "last_hash is the newest entry's"
        );
    }
    assert_eq!(verify_chain(&s.key, &ledger, stored), vec![]);
}

#[test]
fn the_same_key_twice_in_one_batch_is_accepted_then_replayed() {
    let s = Scenario::enrolled(enroll(10_000, USD));
    let k = s.key();
    let batch = [
        post(&k, "tab-1", pay(2_500)),
        post(&k, "tab-1", pay(2_500)),
        post(&k, "tab-1", pay(3_000)),
    ];
    let plan = plan_batch(load(&[&s], &batch), &batch, at(T0 + HOUR));
    assert_eq!(
        outcomes(&plan),
        [
            "accepted PAYMENT 2500 seq=2",
            "replayed PAYMENT 2500 seq=2",
            "rejected IDEMPOTENCY_KEY_REUSED",
        ]
    );
    let (Outcome::Accepted(first), Outcome::Replayed(again)) =
        (&plan.outcomes[0], &plan.outcomes[1])
    else {
        panic!("checked above")
    };
    assert_eq!(first, again, "the replay is the original entry, identical");
    assert_eq!(
        plan.new_entries,
        vec![(first.clone(), pay(2_500).fingerprint())]
    );
    assert_eq!(
        line(&plan.changed[0].enrollment),
        "PARTIAL LOCKED PENDING_PAYMENT paid=2500 due=7500 v2"
    );
    assert_audits_clean(&s, &plan);
}

#[test]
fn two_pay_remaining_in_one_batch_pay_once() {
    let mut s = Scenario::enrolled(enroll(10_000, USD));
    s.accept(pay(2_500));
    let k = s.key();
    let batch = [
        post(&k, "tab-1", pay_remaining()),
        post(&k, "tab-2", pay_remaining()),
    ];
    let plan = plan_batch(load(&[&s], &batch), &batch, at(T0 + HOUR));
    assert_eq!(
        outcomes(&plan),
        ["accepted PAYMENT 7500 seq=3", "rejected NOTHING_DUE"]
    );
    assert_eq!(
        line(&plan.changed[0].enrollment),
        "COMPLETED GRANTED ACTIVE paid=10000 due=0 v3"
    );
    assert_eq!(plan.new_entries.len(), 1);
    assert_audits_clean(&s, &plan);
}

#[test]
fn a_refused_request_stores_nothing_and_its_key_may_be_used_again() {
    let s = Scenario::enrolled(enroll(10_000, USD));
    let k = s.key();
    let batch = [
        post(&k, "order-7", pay(20_000)),
        post(&k, "order-7", refund(1)),
        post(&k, "order-7", pay(2_000)),
        post(&k, "order-7", pay(2_000)),
    ];
    let plan = plan_batch(load(&[&s], &batch), &batch, at(T0 + HOUR));
    assert_eq!(
        outcomes(&plan),
        [
            "rejected OVERPAYMENT",
            "rejected REFUND_EXCEEDS_PAID",
            "accepted PAYMENT 2000 seq=2",
            "replayed PAYMENT 2000 seq=2",
        ]
    );
    assert_eq!(plan.new_entries.len(), 1, "refusals leave no entry");
    assert_eq!(
        plan.new_entries[0].1,
        pay(2_000).fingerprint(),
        "stored under the accepted request"
    );
    assert_audits_clean(&s, &plan);
}

#[test]
fn an_enrollment_created_in_a_batch_takes_operations_later_in_it() {
    let s = Scenario::new();
    let k = s.key();
    let batch = [
        post(&k, "early", pay(100)),
        put(&k, enroll(10_000, USD)),
        post(&k, "early", pay(2_500)),
        put(&k, enroll(10_000, USD)),
        put(&k, enroll(10_000, "EUR")),
        post(&k, "rest", pay_remaining()),
        post(&k, "done", complete()),
    ];
    let plan = plan_batch(load(&[&s], &batch), &batch, at(T0));
    assert_eq!(
        outcomes(&plan),
        [
            "rejected ENROLLMENT_NOT_FOUND",
            "accepted ENROLL 10000 seq=1",
            "accepted PAYMENT 2500 seq=2",
            "unchanged v2",
            "rejected ENROLLMENT_EXISTS",
            "accepted PAYMENT 7500 seq=3",
            "accepted COMPLETE 0 seq=4",
        ]
    );
    assert_eq!(plan.created, HashSet::from([k.clone()]));
    assert_eq!(plan.changed.len(), 1);
    assert_eq!(
        line(&plan.changed[0].enrollment),
        "COMPLETED GRANTED COMPLETED paid=10000 due=0 v4"
    );
    let fingerprints: Vec<Hash> = plan
        .new_entries
        .iter()
        .map(|(_, fingerprint)| *fingerprint)
        .collect();
    assert_eq!(
        fingerprints,
        [
            enroll(10_000, USD).fingerprint(),
            pay(2_500).fingerprint(),
            pay_remaining().fingerprint(),
            complete().fingerprint(),
        ]
    );
    assert_audits_clean(&s, &plan);
}

#[test]
fn changed_holds_each_final_state_and_created_only_the_new_keys() {
    let mut alice = Scenario::for_key("alice", "course-101");
    alice.accept(enroll(10_000, USD));
    let mut bob = Scenario::for_key("bob", "course-101");
    bob.accept(enroll(5_000, USD));
    let carol = Scenario::for_key("carol", "course-101");
    let (a, b, c) = (alice.key(), bob.key(), carol.key());
    let batch = [
        post(&b, "x", pay(6_000)),
        post(&a, "x", pay(1_000)),
        put(&c, enroll(3_000, USD)),
        // The same idempotency key on another enrollment is another operation.
        post(&c, "x", pay(1_000)),
        post(&a, "y", credit(500)),
        post(&b, "y", refund(1)),
    ];
    let plan = plan_batch(load(&[&alice, &bob, &carol], &batch), &batch, at(T0 + HOUR));
    assert_eq!(
        outcomes(&plan),
        [
            "rejected OVERPAYMENT",
            "accepted PAYMENT 1000 seq=2",
            "accepted ENROLL 3000 seq=1",
            "accepted PAYMENT 1000 seq=2",
            "accepted CREDIT 500 seq=3",
            "rejected REFUND_EXCEEDS_PAID",
        ]
    );
    let changed: Vec<(String, String)> = plan
        .changed
        .iter()
        .map(|state| (state.enrollment.key().to_string(), line(&state.enrollment)))
        .collect();
    assert_eq!(
        changed,
        [
            (
                "alice/course-101".to_owned(),
                "PARTIAL LOCKED PENDING_PAYMENT paid=1000 credited=500 due=8500 v3".to_owned()
            ),
            (
                "carol/course-101".to_owned(),
                "PARTIAL LOCKED PENDING_PAYMENT paid=1000 due=2000 v2".to_owned()
            ),
        ]
    );
    assert_eq!(
        plan.created,
        HashSet::from([c]),
        "bob did not change, alice existed"
    );
    assert!(!plan.changed.iter().any(|state| state.enrollment.key() == b));
    for scenario in [&alice, &bob, &carol] {
        assert_audits_clean(scenario, &plan);
    }
}

#[test]
fn a_stored_key_replays_its_original_entry_or_refuses_another_body() {
    let mut s = Scenario::enrolled(enroll(10_000, USD));
    s.with_key("order-42").accept(pay(2_500));
    s.accept(pay_remaining());
    let k = s.key();
    let batch = [
        // Replayed even though a payment now would be an overpayment.
        post(&k, "order-42", pay(2_500)),
        post(&k, "order-42", pay(3_000)),
        post(&k, "order-42", pay_in(2_500, USD)),
        post(&k, "order-42", refund(2_500)),
        post(&k, "order-43", pay(2_500)),
    ];
    let plan = plan_batch(load(&[&s], &batch), &batch, at(T0 + HOUR));
    assert_eq!(
        outcomes(&plan),
        [
            "replayed PAYMENT 2500 seq=2",
            "rejected IDEMPOTENCY_KEY_REUSED",
            "rejected IDEMPOTENCY_KEY_REUSED",
            "rejected IDEMPOTENCY_KEY_REUSED",
            "rejected OVERPAYMENT",
        ]
    );
    assert_eq!(
        plan.outcomes[0],
        Outcome::Replayed(s.ledger()[1].clone()),
        "the original entry, as it was"
    );
    assert!(plan.new_entries.is_empty() && plan.changed.is_empty() && plan.created.is_empty());
    // And through the scenario, one request at a time.
    s.with_key("order-42").step(pay(2_500), "REPLAYED");
    s.with_key("order-42")
        .step(charge(2_500), "IDEMPOTENCY_KEY_REUSED");
    s.expect("COMPLETED GRANTED ACTIVE paid=10000 due=0 v3");
}

#[test]
fn a_backend_loads_keys_once_in_lock_order() {
    let (a, b) = (enrollment_key("alice", "c1"), enrollment_key("bob", "c1"));
    let batch = [
        post(&b, "k2", pay(1)),
        post(&a, "k1", pay(1)),
        put(&b, enroll(1, USD)),
        post(&b, "k2", pay(1)),
        post(&a, "k2", pay(1)),
    ];
    assert_eq!(enrollment_keys(&batch), [a.clone(), b.clone()]);
    let named =
        |key: &EnrollmentKey, text: &str| (key.clone(), IdempotencyKey::parse(text).unwrap());
    assert_eq!(
        idempotency_keys(&batch),
        [named(&a, "k1"), named(&a, "k2"), named(&b, "k2")]
    );
}
