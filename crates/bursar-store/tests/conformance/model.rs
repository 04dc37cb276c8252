//! The seeded model-based test: thousands of random operations go both to the
//! store, in random batches, and to a small in-memory model written here
//! straight from the rules of the contract, and every answer and every
//! enrollment must agree.
//!
//! The model shares no logic with `bursar-core`: it only borrows its types to
//! build requests and to compare results. Holds are opened, captured, voided
//! and left to expire at random times: the model decides which holds have
//! expired from the clock the test passes in, and expects their `EXPIRE`
//! entries before the request that comes upon them. A failure names the seed and the
//! step; `BURSAR_SEED=N cargo test -p bursar-store --test conformance model`
//! reruns that one seed.

use crate::helpers::{Backend, Rng, SECOND, T0, TestDb, amount, at, currency, key, price};
use bursar_core::{
    AccessPolicy, AccessStatus, Command, Currency, EnrollTerms, Enrollment, EnrollmentKey,
    EnrollmentStatus, EntryKind, Hash, HoldAmount, HoldExpiry, IdempotencyKey, LedgerEntry,
    Outcome, PaymentStatus, Reason, Reference, Request, Timestamp,
};
use bursar_store::{LEDGER_PAGE_ENTRIES_MAX, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};

crate::conformance!(model_agrees_with_store);

/// Seeds run when `BURSAR_SEED` is not set.
const SEEDS: u64 = 64;
/// Operations generated per seed.
const OPERATIONS_PER_SEED: usize = 200;
/// Largest batch the test submits at once.
const BATCH_MAX: u64 = 8;
/// The contract's bound on any running total of one enrollment.
const TOTAL_MAX: i64 = 1_000_000_000_000_000;
/// How many of the latest operations a failure report shows.
const TRACE_SHOWN: usize = 40;

/// The enrollments every run works on, as (user, course).
const SLOTS: [(&str, &str); 3] = [
    ("alice", "math-101"),
    ("alice", "art-7"),
    ("bob", "math-101"),
];

/// A small pool of idempotency keys shared by every operation of a run, so
/// that keys are replayed and reused across operations and enrollments.
const POOLED_KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];

/// What the model says the store must answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// A new entry of this kind and amount, and the enrollment's new state.
    Accepted {
        kind: EntryKind,
        amount: i64,
        after: Enrollment,
        reference: Option<Reference>,
        hold_seq: Option<u64>,
        expires_at: Option<Timestamp>,
    },
    /// The entry with this sequence number, recorded earlier.
    Replayed { seq: u64 },
    /// The enrollment exactly as it stands.
    Unchanged(Enrollment),
    /// Refused with this code.
    Rejected(&'static str),
}

/// One hold as the model keeps it.
#[derive(Debug, Clone)]
struct ModelHold {
    amount: i64,
    expires_at: i64,
    reference: Option<Reference>,
    /// `OPEN`, `CAPTURED`, `VOIDED` or `EXPIRED`.
    state: &'static str,
}

/// An `EXPIRE` entry the model expects before a request.
#[derive(Debug, Clone)]
struct ExpectedExpiry {
    seq: u64,
    hold_seq: u64,
    amount: i64,
    after: Enrollment,
}

/// One enrollment as the model keeps it.
#[derive(Debug, Clone)]
struct ModelEnrollment {
    key: EnrollmentKey,
    currency: Currency,
    price: i64,
    charged: i64,
    paid: i64,
    credited: i64,
    refunded: i64,
    policy: AccessPolicy,
    access: AccessStatus,
    status: EnrollmentStatus,
    version: u64,
    created_at: i64,
    updated_at: i64,
    /// Every idempotency key that produced an accepted operation: the
    /// request it came with and the entry it produced.
    keys: HashMap<IdempotencyKey, (Command, u64)>,
    /// Every hold, by the seq of its HOLD entry.
    holds: BTreeMap<u64, ModelHold>,
}

impl ModelEnrollment {
    fn new(key: EnrollmentKey, terms: &EnrollTerms, now: i64) -> ModelEnrollment {
        let mut model = ModelEnrollment {
            key,
            currency: terms.currency,
            price: terms.price.minor_units(),
            charged: 0,
            paid: 0,
            credited: 0,
            refunded: 0,
            policy: terms.access_policy,
            access: AccessStatus::Locked,
            status: EnrollmentStatus::PendingPayment,
            version: 1,
            created_at: now,
            updated_at: now,
            keys: HashMap::new(),
            holds: BTreeMap::new(),
        };
        model.derive_statuses();
        model
    }

    fn due(&self) -> i64 {
        self.price + self.charged - self.paid - self.credited
    }

    fn held(&self) -> i64 {
        self.holds
            .values()
            .filter(|hold| hold.state == "OPEN")
            .map(|hold| hold.amount)
            .sum()
    }

    fn available(&self) -> i64 {
        self.due() - self.held()
    }

    /// Releases every open hold whose time has come at `now`, earliest
    /// expiry first, each by an entry of its own.
    fn expire(&mut self, now: i64) -> Vec<ExpectedExpiry> {
        let now = now.max(self.updated_at);
        let mut due: Vec<(i64, u64)> = self
            .holds
            .iter()
            .filter(|(_, hold)| hold.state == "OPEN" && hold.expires_at <= now)
            .map(|(seq, hold)| (hold.expires_at, *seq))
            .collect();
        due.sort();
        let mut expired = Vec::new();
        for (_, hold_seq) in due {
            let hold = self.holds.get_mut(&hold_seq).expect("an open hold");
            hold.state = "EXPIRED";
            let amount = hold.amount;
            self.version += 1;
            self.updated_at = now;
            expired.push(ExpectedExpiry {
                seq: self.version,
                hold_seq,
                amount,
                after: self.expected(),
            });
        }
        expired
    }

    /// Whether the access policy holds. A MIN_SETTLED policy also holds once
    /// nothing is due, even if its threshold is above the total.
    fn policy_holds(&self) -> bool {
        match self.policy {
            AccessPolicy::FullPayment => self.due() == 0,
            AccessPolicy::MinSettled { amount } => {
                self.due() == 0 || self.paid + self.credited >= amount.minor_units()
            }
        }
    }

    fn payment_status(&self) -> PaymentStatus {
        if self.due() == 0 {
            PaymentStatus::Completed
        } else if self.paid + self.credited > 0 {
            PaymentStatus::Partial
        } else {
            PaymentStatus::Pending
        }
    }

    /// Access follows the policy (never granted is LOCKED, granted once and
    /// lost is REVOKED); the status follows access, except that CANCELLED
    /// stays and COMPLETED stays while access is granted.
    fn derive_statuses(&mut self) {
        self.access = if self.policy_holds() {
            AccessStatus::Granted
        } else if self.access == AccessStatus::Locked {
            AccessStatus::Locked
        } else {
            AccessStatus::Revoked
        };
        self.status = match (self.status, self.access) {
            (EnrollmentStatus::Cancelled, _) => EnrollmentStatus::Cancelled,
            (EnrollmentStatus::Completed, AccessStatus::Granted) => EnrollmentStatus::Completed,
            (_, AccessStatus::Locked) => EnrollmentStatus::PendingPayment,
            (_, AccessStatus::Granted) => EnrollmentStatus::Active,
            (_, AccessStatus::Revoked) => EnrollmentStatus::Suspended,
        };
    }

    fn terms_match(&self, terms: &EnrollTerms) -> bool {
        self.currency == terms.currency
            && self.price == terms.price.minor_units()
            && self.policy == terms.access_policy
    }

    /// The enrollment as the store must show it.
    fn expected(&self) -> Enrollment {
        Enrollment {
            user_id: self.key.user_id.clone(),
            course_id: self.key.course_id.clone(),
            currency: self.currency,
            price: self.price,
            amount_charged: self.charged,
            amount_paid: self.paid,
            amount_credited: self.credited,
            amount_refunded: self.refunded,
            amount_due: self.due(),
            amount_held: self.held(),
            amount_available: self.available(),
            payment_status: self.payment_status(),
            access_policy: self.policy,
            access_status: self.access,
            status: self.status,
            version: self.version,
            created_at: at(self.created_at),
            updated_at: at(self.updated_at),
        }
    }

    /// The answer to a request whose idempotency key already produced an
    /// accepted operation: a replay of it if the request is the same, else a
    /// refusal. `None` for a key not used yet, or no key.
    fn idempotency(&self, request: &Request) -> Option<Expected> {
        let (original, seq) = self.keys.get(request.idempotency_key.as_ref()?)?;
        Some(if *original == request.command {
            Expected::Replayed { seq: *seq }
        } else {
            Expected::Rejected("IDEMPOTENCY_KEY_REUSED")
        })
    }

    /// Applies an operation other than enrolling, or says why it is refused.
    /// A refusal leaves the model untouched.
    fn operate(&mut self, request: &Request, now: i64) -> Expected {
        if let Some(answer) = self.idempotency(request) {
            return answer;
        }
        let cancelled = self.status == EnrollmentStatus::Cancelled;
        let now = now.max(self.updated_at);
        let mut next = self.clone();
        let mut reference = match &request.command {
            Command::Payment { reference, .. }
            | Command::PayRemaining { reference }
            | Command::Refund { reference, .. }
            | Command::Hold { reference, .. } => reference.clone(),
            _ => None,
        };
        let mut hold_seq = None;
        let mut expires_at = None;
        let (kind, moved) = match &request.command {
            Command::ExpireHolds => return Expected::Unchanged(self.expected()),
            Command::Enroll(_) => unreachable!("enrolling is decided by the caller"),
            Command::Complete => {
                if self.access != AccessStatus::Granted
                    || matches!(
                        self.status,
                        EnrollmentStatus::Completed | EnrollmentStatus::Cancelled
                    )
                {
                    return Expected::Rejected("INVALID_TRANSITION");
                }
                next.status = EnrollmentStatus::Completed;
                (EntryKind::Complete, 0)
            }
            Command::Cancel => {
                if self.paid > 0 || cancelled || self.held() > 0 {
                    return Expected::Rejected("INVALID_TRANSITION");
                }
                next.status = EnrollmentStatus::Cancelled;
                (EntryKind::Cancel, 0)
            }
            _ if cancelled => return Expected::Rejected("ENROLLMENT_CANCELLED"),
            Command::Payment {
                amount, currency, ..
            } => {
                if currency.is_some_and(|currency| currency != self.currency) {
                    return Expected::Rejected("CURRENCY_MISMATCH");
                }
                let amount = amount.minor_units();
                if amount > self.available() {
                    return Expected::Rejected("OVERPAYMENT");
                }
                next.paid += amount;
                (EntryKind::Payment, amount)
            }
            Command::PayRemaining { .. } => {
                let available = self.available();
                if available == 0 {
                    return Expected::Rejected("NOTHING_DUE");
                }
                next.paid += available;
                (EntryKind::Payment, available)
            }
            Command::Credit { amount, .. } => {
                let amount = amount.minor_units();
                if amount > self.available() {
                    return Expected::Rejected("CREDIT_EXCEEDS_DUE");
                }
                next.credited += amount;
                (EntryKind::Credit, amount)
            }
            Command::Refund { amount, .. } => {
                let amount = amount.minor_units();
                if amount > self.paid {
                    return Expected::Rejected("REFUND_EXCEEDS_PAID");
                }
                if self.refunded + amount > TOTAL_MAX {
                    return Expected::Rejected("TOTAL_LIMIT_EXCEEDED");
                }
                next.paid -= amount;
                next.refunded += amount;
                (EntryKind::Refund, amount)
            }
            Command::Charge { amount, .. } => {
                let amount = amount.minor_units();
                if self.price + self.charged + amount > TOTAL_MAX {
                    return Expected::Rejected("TOTAL_LIMIT_EXCEEDED");
                }
                next.charged += amount;
                (EntryKind::Charge, amount)
            }
            Command::Hold {
                amount, expires_in, ..
            } => {
                let available = self.available();
                let amount = match amount {
                    HoldAmount::Remaining if available == 0 => {
                        return Expected::Rejected("NOTHING_DUE");
                    }
                    HoldAmount::Remaining => available,
                    HoldAmount::Amount(amount) if amount.minor_units() > available => {
                        return Expected::Rejected("OVERPAYMENT");
                    }
                    HoldAmount::Amount(amount) => amount.minor_units(),
                };
                let seq = self.version + 1;
                let expiry = now + i64::from(expires_in.seconds()) * SECOND;
                next.holds.insert(
                    seq,
                    ModelHold {
                        amount,
                        expires_at: expiry,
                        reference: reference.clone(),
                        state: "OPEN",
                    },
                );
                hold_seq = Some(seq);
                expires_at = Some(at(expiry));
                (EntryKind::Hold, amount)
            }
            Command::Capture {
                hold_seq: seq,
                amount,
                reference: given,
            } => {
                let hold = match self.holds.get(seq) {
                    None => return Expected::Rejected("HOLD_NOT_FOUND"),
                    Some(hold) if hold.state != "OPEN" || hold.expires_at <= now => {
                        return Expected::Rejected("HOLD_NOT_OPEN");
                    }
                    Some(hold) => hold,
                };
                let captured = amount.map_or(hold.amount, |amount| amount.minor_units());
                if captured > hold.amount {
                    return Expected::Rejected("CAPTURE_EXCEEDS_HOLD");
                }
                next.paid += captured;
                next.holds.get_mut(seq).expect("the hold").state = "CAPTURED";
                reference = given.clone().or_else(|| hold.reference.clone());
                hold_seq = Some(*seq);
                (EntryKind::Capture, captured)
            }
            Command::Void { hold_seq: seq } => {
                let hold = match self.holds.get(seq) {
                    None => return Expected::Rejected("HOLD_NOT_FOUND"),
                    Some(hold) if hold.state != "OPEN" || hold.expires_at <= now => {
                        return Expected::Rejected("HOLD_NOT_OPEN");
                    }
                    Some(hold) => hold,
                };
                let released = hold.amount;
                next.holds.get_mut(seq).expect("the hold").state = "VOIDED";
                hold_seq = Some(*seq);
                (EntryKind::Void, released)
            }
            Command::Expire { .. } => unreachable!("never generated"),
        };
        next.derive_statuses();
        next.version += 1;
        next.updated_at = now;
        if let Some(idempotency_key) = &request.idempotency_key {
            next.keys.insert(
                idempotency_key.clone(),
                (request.command.clone(), next.version),
            );
        }
        *self = next;
        Expected::Accepted {
            kind,
            amount: moved,
            after: self.expected(),
            reference,
            hold_seq,
            expires_at,
        }
    }
}

/// The whole model: one optional enrollment per slot.
struct Model {
    slots: Vec<Option<ModelEnrollment>>,
}

impl Model {
    /// The `EXPIRE` entries written before the request, and its answer.
    fn step(
        &mut self,
        slot: usize,
        request: &Request,
        now: i64,
    ) -> (Vec<ExpectedExpiry>, Expected) {
        let expired = match &mut self.slots[slot] {
            Some(existing) => existing.expire(now),
            None => Vec::new(),
        };
        (expired, self.decide(slot, request, now))
    }

    fn decide(&mut self, slot: usize, request: &Request, now: i64) -> Expected {
        let current = &mut self.slots[slot];
        match (current, &request.command) {
            (None, Command::Enroll(terms)) => {
                let mut created = ModelEnrollment::new(request.key.clone(), terms, now);
                // Enrolling needs no key, but one sent along is kept like any
                // other (the batch endpoint allows it).
                if let Some(idempotency_key) = &request.idempotency_key {
                    created
                        .keys
                        .insert(idempotency_key.clone(), (request.command.clone(), 1));
                }
                let after = created.expected();
                self.slots[slot] = Some(created);
                Expected::Accepted {
                    kind: EntryKind::Enroll,
                    amount: terms.price.minor_units(),
                    after,
                    reference: None,
                    hold_seq: None,
                    expires_at: None,
                }
            }
            (None, _) => Expected::Rejected("ENROLLMENT_NOT_FOUND"),
            (Some(existing), Command::Enroll(terms)) => {
                if let Some(answer) = existing.idempotency(request) {
                    answer
                } else if existing.terms_match(terms) {
                    Expected::Unchanged(existing.expected())
                } else {
                    Expected::Rejected("ENROLLMENT_EXISTS")
                }
            }
            (Some(existing), _) => existing.operate(request, now),
        }
    }
}

/// Draws random requests, leaning on the model's state so that both
/// acceptances and every kind of refusal happen often.
struct Generator {
    rng: Rng,
    keys: Vec<EnrollmentKey>,
    /// Every request sent so far, to be sent again verbatim now and then.
    sent: Vec<(usize, Request)>,
    fresh_keys: u64,
}

impl Generator {
    fn terms(&mut self, existing: Option<&ModelEnrollment>) -> EnrollTerms {
        if let Some(existing) = existing
            && self.rng.chance(50)
        {
            return EnrollTerms {
                currency: existing.currency,
                price: price(existing.price),
                access_policy: existing.policy,
            };
        }
        let access_policy = if self.rng.chance(55) {
            AccessPolicy::FullPayment
        } else {
            AccessPolicy::MinSettled {
                amount: price(*self.rng.pick(&[0, 500, 2_000, 15_000])),
            }
        };
        EnrollTerms {
            currency: currency(if self.rng.chance(85) { "USD" } else { "EUR" }),
            price: price(*self.rng.pick(&[0, 1_000, 2_500, 10_000])),
            access_policy,
        }
    }

    /// An amount near `limit` (the most that can be accepted): often within
    /// it, sometimes exactly it, sometimes beyond it.
    fn amount_near(&mut self, limit: i64) -> i64 {
        match self.rng.below(10) {
            0..=4 if limit > 0 => self.rng.range(1, limit),
            5 | 6 if limit > 0 => limit,
            7 => self.rng.range(limit + 1, limit + 50),
            _ => self.rng.range(1, 12_000),
        }
    }

    fn idempotency_key(&mut self) -> IdempotencyKey {
        if self.rng.chance(25) {
            let pooled = self.rng.below(POOLED_KEYS.len() as u64) as usize;
            IdempotencyKey::parse(POOLED_KEYS[pooled]).expect("pooled key")
        } else {
            self.fresh_keys += 1;
            IdempotencyKey::parse(&format!("op-{}", self.fresh_keys)).expect("fresh key")
        }
    }

    /// A hold, or the capture or void of one: usually of a hold the
    /// enrollment has (open or not), sometimes of a seq that names none.
    fn hold_command(&mut self, state: Option<&ModelEnrollment>) -> Command {
        let reference = || Reference::parse("pi_1").expect("reference");
        let holds: Vec<(u64, i64)> = state.map_or(Vec::new(), |state| {
            state
                .holds
                .iter()
                .map(|(seq, hold)| (*seq, hold.amount))
                .collect()
        });
        let (hold_seq, held) = if !holds.is_empty() && self.rng.chance(85) {
            *self.rng.pick(&holds)
        } else {
            let version = state.map_or(1, |state| state.version);
            (self.rng.range(1, version as i64 + 2) as u64, 0)
        };
        match self.rng.below(10) {
            0..=4 => {
                let available = state.map_or(0, ModelEnrollment::available);
                let amount = if self.rng.chance(40) {
                    HoldAmount::Remaining
                } else {
                    HoldAmount::Amount(amount(self.amount_near(available)))
                };
                let seconds = *self.rng.pick(&[30, 45, 90, 300, 900]);
                Command::Hold {
                    amount,
                    expires_in: HoldExpiry::from_seconds(seconds).expect("within bounds"),
                    reference: self.rng.chance(50).then(reference),
                }
            }
            5..=7 => Command::Capture {
                hold_seq,
                amount: self
                    .rng
                    .chance(40)
                    .then(|| amount(self.amount_near(held.max(1)))),
                reference: self.rng.chance(30).then(reference),
            },
            _ => Command::Void { hold_seq },
        }
    }

    fn next(&mut self, model: &Model) -> (usize, Request) {
        if !self.sent.is_empty() && self.rng.chance(12) {
            let index = self.rng.below(self.sent.len() as u64) as usize;
            return self.sent[index].clone();
        }
        let slot = self.rng.below(SLOTS.len() as u64) as usize;
        let key = self.keys[slot].clone();
        let state = model.slots[slot].as_ref();
        let enroll_percent = if state.is_some() { 5 } else { 60 };
        if self.rng.chance(enroll_percent) {
            let command = Command::Enroll(self.terms(state));
            let request = Request {
                key,
                idempotency_key: self.rng.chance(30).then(|| self.idempotency_key()),
                command,
            };
            self.sent.push((slot, request.clone()));
            return (slot, request);
        }
        let (due, paid) = state.map_or((0, 0), |state| (state.available(), state.paid));
        let why = || Reason::parse("adjustment").expect("reason");
        if self.rng.chance(3) {
            // The writer's sweep: no key, no answer of its own.
            let request = Request {
                key,
                idempotency_key: None,
                command: Command::ExpireHolds,
            };
            return (slot, request);
        }
        if self.rng.chance(35) {
            let command = self.hold_command(state);
            let request = Request {
                key,
                idempotency_key: Some(self.idempotency_key()),
                command,
            };
            self.sent.push((slot, request.clone()));
            return (slot, request);
        }
        let command = match self.rng.below(100) {
            0..=29 => {
                let currency = match self.rng.below(10) {
                    0..=6 => None,
                    7 | 8 => Some(state.map_or(currency("USD"), |state| state.currency)),
                    _ => Some(currency("EUR")),
                };
                let reference = self
                    .rng
                    .chance(30)
                    .then(|| Reference::parse("ch_1").expect("reference"));
                Command::Payment {
                    amount: amount(self.amount_near(due)),
                    currency,
                    reference,
                }
            }
            30..=39 => Command::PayRemaining { reference: None },
            40..=53 => Command::Credit {
                amount: amount(self.amount_near(due)),
                reason: why(),
            },
            54..=71 => Command::Refund {
                amount: amount(self.amount_near(paid)),
                reason: why(),
                reference: None,
            },
            72..=85 => Command::Charge {
                amount: amount(self.amount_near(3_000)),
                reason: why(),
            },
            86..=98 => Command::Complete,
            _ => Command::Cancel,
        };
        let request = Request {
            key,
            idempotency_key: Some(self.idempotency_key()),
            command,
        };
        self.sent.push((slot, request.clone()));
        (slot, request)
    }
}

/// What the store answered, reduced to one line for the failure trace.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Accepted(entry) => format!(
            "accepted {} {} seq {}",
            entry.kind.as_str(),
            entry.amount,
            entry.seq
        ),
        Outcome::Replayed(entry) => format!("replayed seq {}", entry.seq),
        Outcome::Unchanged(_) => "unchanged".to_owned(),
        Outcome::Rejected(rejection) => format!("rejected {}", rejection.code()),
    }
}

/// The reason an entry takes from its request.
fn request_reason(command: &Command) -> Option<Reason> {
    match command {
        Command::Credit { reason, .. }
        | Command::Charge { reason, .. }
        | Command::Refund { reason, .. } => Some(reason.clone()),
        _ => None,
    }
}

/// Compares an `EXPIRE` entry of the store with the model's.
fn check_expiry(
    expected: &ExpectedExpiry,
    entry: Option<&LedgerEntry>,
    ledger: &[LedgerEntry],
) -> Result<(), String> {
    let previous_hash = ledger.last().map_or(Hash::ZERO, |last| last.hash);
    match entry {
        Some(entry)
            if entry.kind == EntryKind::Expire
                && entry.amount == expected.amount
                && entry.hold_seq == Some(expected.hold_seq)
                && entry.enrollment == expected.after
                && entry.created_at == expected.after.updated_at
                && entry.idempotency_key.is_none()
                && entry.prev_hash == previous_hash =>
        {
            Ok(())
        }
        _ => Err(format!(
            "the model expects an EXPIRE entry {expected:?}\n  the store has {entry:?}"
        )),
    }
}

/// Compares one answer of the store with the model's.
fn check_outcome(
    request: &Request,
    expected: &Expected,
    outcome: &Outcome,
    ledger: &[LedgerEntry],
) -> Result<(), String> {
    match (expected, outcome) {
        (
            Expected::Accepted {
                kind,
                amount,
                after,
                reference,
                hold_seq,
                expires_at,
            },
            Outcome::Accepted(entry),
        ) => {
            let previous_hash = ledger.last().map_or(Hash::ZERO, |last| last.hash);
            let reason = request_reason(&request.command);
            let problems = [
                (entry.kind != *kind, "kind"),
                (entry.amount != *amount, "amount"),
                (entry.seq != after.version, "seq"),
                (entry.enrollment != *after, "enrollment snapshot"),
                (entry.created_at != after.updated_at, "created_at"),
                (entry.idempotency_key != request.idempotency_key, "key"),
                (entry.reference != *reference, "reference"),
                (entry.hold_seq != *hold_seq, "hold_seq"),
                (entry.expires_at != *expires_at, "expires_at"),
                (entry.reason != reason, "reason"),
                (entry.currency != after.currency, "currency"),
                (entry.prev_hash != previous_hash, "prev_hash"),
            ];
            let wrong: Vec<&str> = problems
                .iter()
                .filter(|(wrong, _)| *wrong)
                .map(|(_, what)| *what)
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "accepted entry differs in {wrong:?}\n  model: {kind:?} {amount} {after:?}\n  store: {entry:?}"
                ))
            }
        }
        (Expected::Replayed { seq }, Outcome::Replayed(entry)) => {
            match ledger.get(*seq as usize - 1) {
                Some(original) if original == entry => Ok(()),
                original => Err(format!(
                    "replay must return the original entry\n  original: {original:?}\n  replayed: {entry:?}"
                )),
            }
        }
        (Expected::Unchanged(model), Outcome::Unchanged(store)) if model == store => Ok(()),
        (Expected::Rejected(code), Outcome::Rejected(rejection)) if *code == rejection.code() => {
            Ok(())
        }
        _ => Err(format!(
            "the model expects {expected:?}\n  the store answered {outcome:?}"
        )),
    }
}

/// Runs one seed against a fresh store; `Err` says what went wrong where.
async fn run_seed(backend: Backend, seed: u64) -> Result<Counts, String> {
    let (url, _db) = TestDb::new(backend);
    let store = Store::open(&url).await.expect("open the store");
    let keys: Vec<EnrollmentKey> = SLOTS.iter().map(|(u, c)| key(u, c)).collect();
    let mut model = Model {
        slots: vec![None, None, None],
    };
    let mut generator = Generator {
        rng: Rng::new(seed),
        keys: keys.clone(),
        sent: Vec::new(),
        fresh_keys: 0,
    };
    // The entries each enrollment's accepted operations produced, as the
    // store answered them.
    let mut ledgers: Vec<Vec<LedgerEntry>> = vec![Vec::new(); SLOTS.len()];
    let mut trace: Vec<String> = Vec::new();
    let mut counts = Counts::default();
    let mut clock = T0;
    let mut step = 0;
    let mut batch_number = 0;
    let fail = |trace: &[String], step: usize, problem: String| {
        let shown = &trace[trace.len().saturating_sub(TRACE_SHOWN)..];
        Err(format!(
            "seed {seed}, step {step}: {problem}\nthe latest operations:\n{}",
            shown.join("\n")
        ))
    };

    while step < OPERATIONS_PER_SEED {
        batch_number += 1;
        // The clock mostly moves on, and now and then steps back a little,
        // which must never make an enrollment's time run backwards.
        clock += if generator.rng.chance(10) {
            -generator.rng.range(1, 5) * SECOND
        } else {
            generator.rng.range(1, 90) * SECOND
        };
        let size = (1 + generator.rng.below(BATCH_MAX) as usize).min(OPERATIONS_PER_SEED - step);
        let mut batch = Vec::with_capacity(size);
        for _ in 0..size {
            let (slot, request) = generator.next(&model);
            let (expired, expected) = model.step(slot, &request, clock);
            batch.push((slot, request, expired, expected));
        }
        let requests: Vec<Request> = batch
            .iter()
            .map(|(_, request, _, _)| request.clone())
            .collect();
        let outcomes = match store.execute(requests, at(clock)).await {
            Ok(outcomes) => outcomes,
            Err(error) => return fail(&trace, step, format!("execute failed: {error}")),
        };
        if outcomes.len() != batch.len() {
            return fail(
                &trace,
                step,
                format!("{} requests got {} outcomes", batch.len(), outcomes.len()),
            );
        }
        // The batch's new entries as the store keeps them: the EXPIRE
        // entries answer no one, so they are read back.
        let mut written: Vec<Vec<LedgerEntry>> = Vec::with_capacity(keys.len());
        for (slot, key) in keys.iter().enumerate() {
            match store
                .ledger(key, ledgers[slot].len() as u64, LEDGER_PAGE_ENTRIES_MAX)
                .await
            {
                Ok(entries) => written.push(entries),
                Err(error) => return fail(&trace, step, format!("reading {key} failed: {error}")),
            }
        }
        for ((slot, request, expired, expected), outcome) in batch.iter().zip(&outcomes) {
            for expiry in expired {
                let entry = written[*slot].iter().find(|entry| entry.seq == expiry.seq);
                trace.push(format!(
                    "  step {step} (batch {batch_number}): {} expires hold {} -> {}",
                    request.key,
                    expiry.hold_seq,
                    entry.map_or("nothing".to_owned(), |entry| format!(
                        "{} seq {}",
                        entry.kind.as_str(),
                        entry.seq
                    ))
                ));
                if let Err(problem) = check_expiry(expiry, entry, &ledgers[*slot]) {
                    return fail(&trace, step, problem);
                }
                counts.expired += 1;
                ledgers[*slot].push(entry.expect("checked").clone());
            }
            trace.push(format!(
                "  step {step} (batch {batch_number}): {} {:?} {:?} -> {}",
                request.key,
                request.idempotency_key.as_ref().map(|key| key.as_str()),
                request.command,
                describe(outcome)
            ));
            if let Err(problem) = check_outcome(request, expected, outcome, &ledgers[*slot]) {
                return fail(&trace, step, problem);
            }
            counts.count(outcome);
            if let Outcome::Accepted(entry) = outcome {
                ledgers[*slot].push(entry.clone());
            }
            step += 1;
        }
        for (slot, key) in keys.iter().enumerate() {
            let stored = match store.enrollment(key).await {
                Ok(stored) => stored,
                Err(error) => return fail(&trace, step, format!("reading {key} failed: {error}")),
            };
            let expected = model.slots[slot].as_ref().map(ModelEnrollment::expected);
            if stored != expected {
                return fail(
                    &trace,
                    step,
                    format!(
                        "after batch {batch_number}, {key} differs\n  model: {expected:?}\n  store: {stored:?}"
                    ),
                );
            }
        }
    }

    let audit = store.audit().await.expect("audit");
    let enrolled = model.slots.iter().flatten().count() as u64;
    let entries: u64 = ledgers.iter().map(|ledger| ledger.len() as u64).sum();
    if !audit.ok || audit.enrollments != enrolled || audit.entries != entries {
        return fail(
            &trace,
            step,
            format!("audit: {audit:?}, the model has {enrolled} enrollments, {entries} entries"),
        );
    }
    for (slot, key) in keys.iter().enumerate() {
        let stored = store
            .ledger(key, 0, LEDGER_PAGE_ENTRIES_MAX)
            .await
            .expect("ledger");
        let model_entries = model.slots[slot]
            .as_ref()
            .map_or(0, |state| state.version as usize);
        if stored.len() != model_entries || stored != ledgers[slot] {
            return fail(
                &trace,
                step,
                format!(
                    "the ledger of {key} has {} entries, the model {model_entries}, and must be exactly the accepted entries",
                    stored.len()
                ),
            );
        }
    }
    Ok(counts)
}

/// How the store answered, over a whole run.
#[derive(Debug, Default)]
struct Counts {
    accepted: u64,
    /// EXPIRE entries written before the requests that came upon them.
    expired: u64,
    replayed: u64,
    unchanged: u64,
    rejected: HashMap<&'static str, u64>,
    /// Every (payment, access, status) combination an accepted operation
    /// left behind.
    statuses: BTreeSet<(&'static str, &'static str, &'static str)>,
}

impl Counts {
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Accepted(entry) => {
                self.accepted += 1;
                let enrollment = &entry.enrollment;
                self.statuses.insert((
                    enrollment.payment_status.as_str(),
                    enrollment.access_status.as_str(),
                    enrollment.status.as_str(),
                ));
            }
            Outcome::Replayed(_) => self.replayed += 1,
            Outcome::Unchanged(_) => self.unchanged += 1,
            Outcome::Rejected(rejection) => {
                *self.rejected.entry(rejection.code()).or_default() += 1
            }
        }
    }

    fn add(&mut self, other: Counts) {
        self.accepted += other.accepted;
        self.expired += other.expired;
        self.replayed += other.replayed;
        self.unchanged += other.unchanged;
        for (code, count) in other.rejected {
            *self.rejected.entry(code).or_default() += count;
        }
        self.statuses.extend(other.statuses);
    }
}

async fn model_agrees_with_store(backend: Backend) {
    let seeds: Vec<u64> = match std::env::var("BURSAR_SEED") {
        Ok(seed) => vec![seed.trim().parse().expect("BURSAR_SEED must be a number")],
        Err(_) => (1..=SEEDS).collect(),
    };
    let mut total = Counts::default();
    for &seed in &seeds {
        match run_seed(backend, seed).await {
            Ok(counts) => total.add(counts),
            Err(problem) => panic!(
                "{problem}\nrerun this seed alone with: BURSAR_SEED={seed} cargo test -p bursar-store --test conformance model"
            ),
        }
    }
    let operations = seeds.len() * OPERATIONS_PER_SEED;
    println!(
        "{operations} operations over {} seeds: {} accepted, {} expired, {} replayed, {} unchanged, refused {:?}",
        seeds.len(),
        total.accepted,
        total.expired,
        total.replayed,
        total.unchanged,
        total.rejected
    );
    println!("status combinations reached: {:?}", total.statuses);
    // A run that never replays, reuses a key or refuses would prove little.
    if seeds.len() == SEEDS as usize {
        assert!(total.replayed > 0 && total.unchanged > 0, "{total:?}");
        assert!(total.expired > 0, "no hold expired: {total:?}");
        for code in [
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
        ] {
            assert!(total.rejected.contains_key(code), "no {code} in {total:?}");
        }
        for status in [
            ("PENDING", "LOCKED", "PENDING_PAYMENT"),
            ("PARTIAL", "LOCKED", "PENDING_PAYMENT"),
            ("PARTIAL", "GRANTED", "ACTIVE"),
            ("PARTIAL", "REVOKED", "SUSPENDED"),
            ("COMPLETED", "GRANTED", "ACTIVE"),
            ("COMPLETED", "GRANTED", "COMPLETED"),
            ("PENDING", "REVOKED", "SUSPENDED"),
            ("PENDING", "LOCKED", "CANCELLED"),
            ("COMPLETED", "GRANTED", "CANCELLED"),
        ] {
            assert!(
                total.statuses.contains(&status),
                "no accepted operation left {status:?}: {:?}",
                total.statuses
            );
        }
    }
}
