//! Events: what each ledger entry tells the world. The ledger is the outbox —
//! an event is a ledger entry seen from outside, plus the status transitions
//! its snapshot shows against the entry before it — so this module only
//! derives; nothing here is stored on its own.
//!
//! Every entry yields one or more events, in a fixed order: the entry's own
//! (`payment.recorded`, `hold.created`, …), then `enrollment.paid_in_full`,
//! `enrollment.access_granted`, `enrollment.access_revoked`. The entry's
//! `position` is its first event's; the others follow it, one apart.
//!
//! One event is not an entry's: `intake.exception`, a processor's event the
//! domain refused, kept as an exception row that takes its own position in
//! the same order (`exception_event`).

use crate::intake::IntakeException;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::{AccessStatus, Enrollment, PaymentStatus};
use serde::{Deserialize, Serialize};

/// The most events one entry yields (a capture that pays in full and grants
/// access: `payment.recorded`, `hold.captured`, `paid_in_full`,
/// `access_granted`). Readers that look for the events after a position start
/// this far before it.
pub const EVENTS_PER_ENTRY_MAX: u64 = 4;

/// The type of an event, as the API spells it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "enrollment.created")]
    EnrollmentCreated,
    #[serde(rename = "payment.recorded")]
    PaymentRecorded,
    #[serde(rename = "credit.recorded")]
    CreditRecorded,
    #[serde(rename = "refund.recorded")]
    RefundRecorded,
    #[serde(rename = "charge.recorded")]
    ChargeRecorded,
    #[serde(rename = "hold.created")]
    HoldCreated,
    #[serde(rename = "hold.captured")]
    HoldCaptured,
    #[serde(rename = "hold.voided")]
    HoldVoided,
    #[serde(rename = "hold.expired")]
    HoldExpired,
    #[serde(rename = "enrollment.completed")]
    EnrollmentCompleted,
    #[serde(rename = "enrollment.cancelled")]
    EnrollmentCancelled,
    #[serde(rename = "enrollment.paid_in_full")]
    PaidInFull,
    #[serde(rename = "enrollment.access_granted")]
    AccessGranted,
    #[serde(rename = "enrollment.access_revoked")]
    AccessRevoked,
    /// A processor's event the domain refused, kept as an intake exception.
    #[serde(rename = "intake.exception")]
    IntakeException,
}

impl EventType {
    /// Every type, in the order the contract lists them (and in which one
    /// entry's events come).
    pub const ALL: [EventType; 15] = [
        EventType::EnrollmentCreated,
        EventType::PaymentRecorded,
        EventType::CreditRecorded,
        EventType::RefundRecorded,
        EventType::ChargeRecorded,
        EventType::HoldCreated,
        EventType::HoldCaptured,
        EventType::HoldVoided,
        EventType::HoldExpired,
        EventType::EnrollmentCompleted,
        EventType::EnrollmentCancelled,
        EventType::PaidInFull,
        EventType::AccessGranted,
        EventType::AccessRevoked,
        EventType::IntakeException,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::EnrollmentCreated => "enrollment.created",
            EventType::PaymentRecorded => "payment.recorded",
            EventType::CreditRecorded => "credit.recorded",
            EventType::RefundRecorded => "refund.recorded",
            EventType::ChargeRecorded => "charge.recorded",
            EventType::HoldCreated => "hold.created",
            EventType::HoldCaptured => "hold.captured",
            EventType::HoldVoided => "hold.voided",
            EventType::HoldExpired => "hold.expired",
            EventType::EnrollmentCompleted => "enrollment.completed",
            EventType::EnrollmentCancelled => "enrollment.cancelled",
            EventType::PaidInFull => "enrollment.paid_in_full",
            EventType::AccessGranted => "enrollment.access_granted",
            EventType::AccessRevoked => "enrollment.access_revoked",
            EventType::IntakeException => "intake.exception",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL
            .into_iter()
            .find(|event_type| event_type.as_str() == text)
    }
}

/// The status transitions one entry made, as stored beside it (a bit each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Transitions(u8);

impl Transitions {
    const PAID_IN_FULL: u8 = 1;
    const ACCESS_GRANTED: u8 = 2;
    const ACCESS_REVOKED: u8 = 4;
    pub const NONE: Transitions = Transitions(0);

    /// What changed from `before` (`None` for a new enrollment) to `after`.
    /// A new enrollment counts as unpaid and without access.
    pub fn between(before: Option<&Enrollment>, after: &Enrollment) -> Transitions {
        let paid = |enrollment: &Enrollment| enrollment.payment_status == PaymentStatus::Completed;
        let granted = |enrollment: &Enrollment| enrollment.access_status == AccessStatus::Granted;
        let mut bits = 0;
        if paid(after) && !before.is_some_and(paid) {
            bits |= Transitions::PAID_IN_FULL;
        }
        if granted(after) && !before.is_some_and(granted) {
            bits |= Transitions::ACCESS_GRANTED;
        }
        if !granted(after) && before.is_some_and(granted) {
            bits |= Transitions::ACCESS_REVOKED;
        }
        Transitions(bits)
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    /// `None` for bits no version of bursar writes.
    pub fn from_bits(bits: i64) -> Option<Transitions> {
        (0..8).contains(&bits).then_some(Transitions(bits as u8))
    }

    fn types(self) -> impl Iterator<Item = EventType> {
        [
            (Transitions::PAID_IN_FULL, EventType::PaidInFull),
            (Transitions::ACCESS_GRANTED, EventType::AccessGranted),
            (Transitions::ACCESS_REVOKED, EventType::AccessRevoked),
        ]
        .into_iter()
        .filter(move |(bit, _)| self.0 & bit != 0)
        .map(|(_, event_type)| event_type)
    }
}

/// The events of an entry of `kind` that made `transitions`, in order.
pub fn event_types(kind: EntryKind, transitions: Transitions) -> Vec<EventType> {
    let own: &[EventType] = match kind {
        EntryKind::Enroll => &[EventType::EnrollmentCreated],
        EntryKind::Payment => &[EventType::PaymentRecorded],
        EntryKind::Credit => &[EventType::CreditRecorded],
        EntryKind::Refund => &[EventType::RefundRecorded],
        EntryKind::Charge => &[EventType::ChargeRecorded],
        EntryKind::Complete => &[EventType::EnrollmentCompleted],
        EntryKind::Cancel => &[EventType::EnrollmentCancelled],
        EntryKind::Hold => &[EventType::HoldCreated],
        // A capture is a payment: it is recorded as one, then the hold closes.
        EntryKind::Capture => &[EventType::PaymentRecorded, EventType::HoldCaptured],
        EntryKind::Void => &[EventType::HoldVoided],
        EntryKind::Expire => &[EventType::HoldExpired],
    };
    own.iter().copied().chain(transitions.types()).collect()
}

/// How many events an entry of `kind` with `transitions` yields: how far the
/// global position moves past it.
pub fn event_count(kind: EntryKind, transitions: Transitions) -> u64 {
    let own = if kind == EntryKind::Capture { 2 } else { 1 };
    own + u64::from(transitions.0.count_ones())
}

/// What an event carries: the ledger entry behind it and the enrollment as
/// that entry left it; or, for `intake.exception`, the exception as it was
/// when the event was read.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventData {
    Entry {
        entry: Box<LedgerEntry>,
        enrollment: Box<Enrollment>,
    },
    Exception {
        exception: Box<IntakeException>,
    },
}

/// One event, as the feed, webhooks and the broker carry it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `evt_` and 26 hex digits: for an entry's events the first 24 of the
    /// entry's hash and the event's index within the entry; for an
    /// exception 24 derived from its id, and `00`. The same on every
    /// delivery.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The event's place in the one global order: increasing, never reused.
    pub position: u64,
    pub created_at: crate::Timestamp,
    /// The enrollment; `null` only for an exception that names none.
    pub user_id: Option<crate::UserId>,
    pub course_id: Option<crate::CourseId>,
    /// The entry's `seq`: the order within the enrollment; `null` for an
    /// exception.
    pub seq: Option<u64>,
    pub data: EventData,
}

/// The events of `entry`, stored at `position` with `transitions`, in order.
pub fn events_of(entry: &LedgerEntry, position: u64, transitions: Transitions) -> Vec<Event> {
    let hash = entry.hash.to_hex();
    event_types(entry.kind, transitions)
        .into_iter()
        .enumerate()
        .map(|(index, event_type)| Event {
            id: format!("evt_{}{index:02x}", &hash[..24]),
            event_type,
            position: position + index as u64,
            created_at: entry.created_at,
            user_id: Some(entry.enrollment.user_id.clone()),
            course_id: Some(entry.enrollment.course_id.clone()),
            seq: Some(entry.seq),
            data: EventData::Entry {
                entry: Box::new(entry.clone()),
                enrollment: Box::new(entry.enrollment.clone()),
            },
        })
        .collect()
}

/// The one event of an intake exception, at the position its row holds,
/// carrying the exception as it stands now.
pub fn exception_event(exception: &IntakeException) -> Event {
    let digest = crate::Hash::of(format!("intake.exception/{}", exception.id).as_bytes()).to_hex();
    Event {
        id: format!("evt_{}00", &digest[..24]),
        event_type: EventType::IntakeException,
        position: exception.position,
        created_at: exception.received_at,
        user_id: exception.user_id.clone(),
        course_id: exception.course_id.clone(),
        seq: None,
        data: EventData::Exception {
            exception: Box::new(exception.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_types_and_stay_within_the_bound() {
        for kind in EntryKind::ALL {
            for bits in 0..8 {
                let transitions = Transitions::from_bits(bits).expect("bits");
                let types = event_types(kind, transitions);
                assert_eq!(types.len() as u64, event_count(kind, transitions));
                // Granted and revoked never come together.
                if bits & 6 != 6 {
                    assert!(event_count(kind, transitions) <= EVENTS_PER_ENTRY_MAX);
                }
                // The entry's own events come first, the transitions after,
                // in the contract's order.
                let order: Vec<usize> = types
                    .iter()
                    .map(|t| {
                        EventType::ALL
                            .iter()
                            .position(|all| all == t)
                            .expect("known")
                    })
                    .collect();
                assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "{types:?}");
            }
        }
        assert_eq!(Transitions::from_bits(8), None);
        assert_eq!(Transitions::from_bits(-1), None);
    }

    #[test]
    fn every_type_round_trips_through_its_name() {
        for event_type in EventType::ALL {
            assert_eq!(EventType::parse(event_type.as_str()), Some(event_type));
            let json = serde_json::to_string(&event_type).expect("serializes");
            assert_eq!(json, format!("\"{}\"", event_type.as_str()));
        }
        assert_eq!(EventType::parse("payment"), None);
    }
}
