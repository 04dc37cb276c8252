//! The batch planner every storage backend shares: given the enrollments and
//! idempotency records a batch touches (loaded by the backend inside its
//! transaction), it decides every request in order and says what to write.
//! Pure, like the rest of the core.

use crate::event::Transitions;
use crate::intake::Source;
use crate::ledger::{Hash, LedgerEntry};
use crate::operation::{Applied, Command, EnrollmentState, Rejection, Request, apply};
use crate::{Enrollment, EnrollmentKey, IdempotencyKey, Timestamp};
use std::collections::{HashMap, HashSet};

/// An accepted operation as stored under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOperation {
    /// `Command::fingerprint` of the request that produced it.
    pub fingerprint: Hash,
    pub entry: LedgerEntry,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now: a new ledger entry.
    Accepted(LedgerEntry),
    /// The idempotency key was used before for this same request: the
    /// original entry, nothing changed.
    Replayed(LedgerEntry),
    /// Enrolled again with the same terms: the enrollment, nothing changed.
    Unchanged(Enrollment),
    /// Refused: nothing changed, nothing stored.
    Rejected(Rejection),
}

/// What the backend loaded for a batch.
#[derive(Debug, Default)]
pub struct BatchInput {
    /// Every existing enrollment the batch names, each with its open holds
    /// and the holds of `named_holds` whatever their state.
    pub states: HashMap<EnrollmentKey, EnrollmentState>,
    /// Every stored operation under an idempotency key the batch carries.
    pub stored: HashMap<(EnrollmentKey, IdempotencyKey), StoredOperation>,
    /// The requests taken from a processor's event (the payment intake), by
    /// their index in the batch.
    pub intake: HashMap<usize, IntakeRequest>,
}

/// What the planner needs to know of a request taken from a processor's
/// event.
///
/// Its idempotency key names the processor's object (`stripe:pi:…`,
/// `stripe:re:…`), so a key used before is that object counted already: a
/// replay, whatever the second event about it says (a Checkout Session and
/// its PaymentIntent report one payment, in slightly different words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeRequest {
    /// Sealed into the request's entry, inside its hash.
    pub source: Source,
    /// What to do when the request names a hold that is no longer open or
    /// does not exist (`HOLD_NOT_OPEN`, `HOLD_NOT_FOUND`).
    pub hold_gone: HoldGone,
}

/// What an intake request that names a hold does when the hold is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldGone {
    /// Refused, as through the API.
    Refuse,
    /// Apply this instead. The money has moved at the processor all the
    /// same, so the capture of a hold voided after an earlier failed attempt
    /// of the same payment, or expired, is recorded as a plain payment when
    /// the enrollment can take it.
    Instead(Command),
    /// Nothing to do: answered `Unchanged` with the enrollment as it is. A
    /// void of a hold that was captured, voided or expired already has
    /// nothing left to release.
    Nothing,
}

/// What a batch decided and what the backend must write, in one transaction.
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// One per request, in order.
    pub outcomes: Vec<Outcome>,
    /// New ledger entries with their request fingerprints, in order: a
    /// request's own entry comes after the `EXPIRE` entries written before
    /// it. `LedgerEntry::hold_change` says what each does to the holds.
    pub new_entries: Vec<(LedgerEntry, Hash)>,
    /// The status transitions of each of `new_entries` (same index): what
    /// its events are, beside its own.
    pub transitions: Vec<Transitions>,
    /// The final state of every enrollment the batch changed.
    pub changed: Vec<EnrollmentState>,
    /// Which of `changed` did not exist before the batch.
    pub created: HashSet<EnrollmentKey>,
}

/// The keys of the enrollments a batch touches, each once, in key order (the
/// order in which a shared database locks them, so two batches never wait on
/// each other in a cycle).
pub fn enrollment_keys(requests: &[Request]) -> Vec<EnrollmentKey> {
    let mut keys: Vec<EnrollmentKey> = requests.iter().map(|request| request.key.clone()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The (enrollment, idempotency key) pairs a batch carries, each once.
pub fn idempotency_keys(requests: &[Request]) -> Vec<(EnrollmentKey, IdempotencyKey)> {
    let mut keys: Vec<_> = requests
        .iter()
        .filter_map(|request| Some((request.key.clone(), request.idempotency_key.clone()?)))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The holds a batch names (by captures and voids), each once, in key order:
/// the backend loads these whatever their state.
pub fn named_holds(requests: &[Request]) -> Vec<(EnrollmentKey, u64)> {
    let mut holds: Vec<_> = requests
        .iter()
        .filter_map(|request| Some((request.key.clone(), request.command.named_hold()?)))
        .collect();
    holds.sort();
    holds.dedup();
    holds
}

/// Decides every request of a batch in order, as if each were applied alone
/// after the ones before it.
///
/// Before each request on an existing enrollment, every hold of it whose
/// `expires_at` has passed at `now` is released by an `EXPIRE` entry; those
/// entries are written whatever becomes of the request itself.
pub fn plan_batch(input: BatchInput, requests: &[Request], now: Timestamp) -> BatchPlan {
    let BatchInput {
        mut states,
        stored,
        intake,
    } = input;
    // Idempotency records by enrollment, then by key, so that a request is
    // looked up by reference: deciding one costs no clone of its ids.
    let mut loaded: HashMap<EnrollmentKey, HashMap<IdempotencyKey, StoredOperation>> =
        HashMap::new();
    for ((key, idempotency_key), operation) in stored {
        loaded
            .entry(key)
            .or_default()
            .insert(idempotency_key, operation);
    }
    // Keys first used in this batch, pointing at their entry in
    // `plan.new_entries`.
    let mut fresh: HashMap<EnrollmentKey, HashMap<IdempotencyKey, usize>> = HashMap::new();
    let mut plan = BatchPlan::default();
    let mut changed_order: Vec<EnrollmentKey> = Vec::new();
    let mut changed: HashSet<EnrollmentKey> = HashSet::new();
    for (index, request) in requests.iter().enumerate() {
        let intake = intake.get(&index);
        if let Some(state) = states.get_mut(&request.key) {
            for hold_seq in state.expired_holds(now) {
                let expire = Request {
                    key: request.key.clone(),
                    idempotency_key: None,
                    command: Command::Expire { hold_seq },
                };
                // An open hold past its time always expires; should the
                // enrollment refuse it anyway, the request decides on it as
                // it stands, and the capture of the hold is still refused.
                let Ok(Applied::Entry(entry)) = apply(Some(state), &expire, now) else {
                    continue;
                };
                plan.transitions.push(Transitions::between(
                    Some(&state.enrollment),
                    &entry.enrollment,
                ));
                state.advance(&entry);
                if !changed.contains(&request.key) {
                    changed.insert(request.key.clone());
                    changed_order.push(request.key.clone());
                }
                plan.new_entries.push((entry, expire.command.fingerprint()));
            }
        }
        let state = states.get(&request.key);
        let fingerprint = request.command.fingerprint();
        let previous = match (state, &request.idempotency_key) {
            (Some(_), Some(idempotency_key)) => fresh
                .get(&request.key)
                .and_then(|keys| keys.get(idempotency_key))
                .map(|index| {
                    let (entry, fingerprint) = &plan.new_entries[*index];
                    (*fingerprint, entry)
                })
                .or_else(|| {
                    loaded
                        .get(&request.key)
                        .and_then(|keys| keys.get(idempotency_key))
                        .map(|operation| (operation.fingerprint, &operation.entry))
                }),
            _ => None,
        };
        let outcome = match previous {
            Some((_, entry)) if intake.is_some() => Outcome::Replayed(entry.clone()),
            Some((previous, entry)) if previous == fingerprint => Outcome::Replayed(entry.clone()),
            Some(_) => Outcome::Rejected(Rejection::IdempotencyKeyReused(
                request
                    .idempotency_key
                    .as_ref()
                    .map(|key| key.to_string())
                    .unwrap_or_default(),
            )),
            None => match decide(state, request, fingerprint, intake, now) {
                Err(rejection) => Outcome::Rejected(rejection),
                Ok((Applied::Unchanged(enrollment), _)) => Outcome::Unchanged(enrollment),
                Ok((Applied::Entry(entry), fingerprint)) => {
                    let entry = match intake {
                        Some(intake) => entry.with_source(intake.source.clone()),
                        None => entry,
                    };
                    plan.transitions.push(Transitions::between(
                        state.map(|state| &state.enrollment),
                        &entry.enrollment,
                    ));
                    match states.get_mut(&request.key) {
                        Some(state) => state.advance(&entry),
                        None => {
                            plan.created.insert(request.key.clone());
                            let next = EnrollmentState::new(entry.enrollment.clone(), entry.hash)
                                .after(&entry);
                            states.insert(request.key.clone(), next);
                        }
                    }
                    if !changed.contains(&request.key) {
                        changed.insert(request.key.clone());
                        changed_order.push(request.key.clone());
                    }
                    if let Some(idempotency_key) = &request.idempotency_key {
                        let index = plan.new_entries.len();
                        match fresh.get_mut(&request.key) {
                            Some(keys) => {
                                keys.insert(idempotency_key.clone(), index);
                            }
                            None => {
                                let keys = HashMap::from([(idempotency_key.clone(), index)]);
                                fresh.insert(request.key.clone(), keys);
                            }
                        }
                    }
                    plan.new_entries.push((entry.clone(), fingerprint));
                    Outcome::Accepted(entry)
                }
            },
        };
        plan.outcomes.push(outcome);
    }
    plan.changed = changed_order
        .into_iter()
        .map(|key| {
            states
                .remove(&key)
                .expect("a changed enrollment has a state")
        })
        .collect();
    plan
}

/// Applies a request that no stored key answers, doing what its intake says
/// when it names a hold that is gone; returns what was applied and the
/// fingerprint to store under its key (`fingerprint`, the request's own,
/// unless it was replaced).
fn decide(
    state: Option<&EnrollmentState>,
    request: &Request,
    fingerprint: Hash,
    intake: Option<&IntakeRequest>,
    now: Timestamp,
) -> Result<(Applied, Hash), Rejection> {
    let decided = apply(state, request, now);
    let gone = matches!(
        decided,
        Err(Rejection::HoldNotOpen { .. } | Rejection::HoldNotFound { .. })
    );
    match (intake.map(|intake| &intake.hold_gone), state) {
        (Some(HoldGone::Instead(command)), _) if gone => {
            let instead = Request {
                key: request.key.clone(),
                idempotency_key: request.idempotency_key.clone(),
                command: command.clone(),
            };
            apply(state, &instead, now).map(|applied| (applied, command.fingerprint()))
        }
        (Some(HoldGone::Nothing), Some(state)) if gone => {
            Ok((Applied::Unchanged(state.enrollment.clone()), fingerprint))
        }
        _ => decided.map(|applied| (applied, fingerprint)),
    }
}
