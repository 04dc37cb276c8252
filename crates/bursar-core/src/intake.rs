//! Payment intake from a processor (Stripe first): where a ledger entry came
//! from (`Source`, inside the entry's hash), the exceptions kept when the
//! domain refuses what a processor's event asks for, and the schedule on
//! which an open exception is retried. Pure, like the rest of the core: the
//! server verifies and maps the processor's events, the store keeps the
//! exceptions.

use crate::ids::IdError;
use crate::{CourseId, Timestamp, UserId};
use serde::{Deserialize, Deserializer, Serialize};

/// Longest processor name, event id or event type, in characters. Stripe's
/// event ids are about 30 characters and its types under 60; 255 leaves room
/// for any processor without letting one field grow an entry without bound.
pub const SOURCE_TEXT_CHARS_MAX: usize = 255;

/// Where a ledger entry came from: the processor's event that asked for it.
/// `None` on a `LedgerEntry` for the operations made through the API.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Source {
    /// `stripe`.
    pub processor: String,
    /// The processor's id of the event, such as `evt_1Pgc76B7WZ01zgkWwyRHS12y`.
    pub event_id: String,
    /// The processor's type of the event, such as `payment_intent.succeeded`.
    pub event_type: String,
}

fn check_source_text(text: &str, what: &'static str) -> Result<(), IdError> {
    // Printable ASCII without spaces: what every processor's ids and type
    // names are made of.
    if (1..=SOURCE_TEXT_CHARS_MAX).contains(&text.len())
        && text.bytes().all(|byte| (0x21..=0x7e).contains(&byte))
    {
        Ok(())
    } else {
        Err(IdError::BadText {
            what,
            max: SOURCE_TEXT_CHARS_MAX,
        })
    }
}

impl Source {
    /// A source whose three texts are each 1 to `SOURCE_TEXT_CHARS_MAX`
    /// printable ASCII characters without spaces.
    pub fn new(processor: &str, event_id: &str, event_type: &str) -> Result<Source, IdError> {
        check_source_text(processor, "processor")?;
        check_source_text(event_id, "event_id")?;
        check_source_text(event_type, "event_type")?;
        Ok(Source {
            processor: processor.to_owned(),
            event_id: event_id.to_owned(),
            event_type: event_type.to_owned(),
        })
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            processor: String,
            event_id: String,
            event_type: String,
        }
        let fields = Fields::deserialize(deserializer)?;
        Source::new(&fields.processor, &fields.event_id, &fields.event_type)
            .map_err(serde::de::Error::custom)
    }
}

/// Where an intake exception stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExceptionState {
    /// Refused, and retried (by itself for a day, then by a person).
    Open,
    /// A later attempt was accepted: the money is on the ledger.
    Resolved,
    /// A person closed it without the ledger taking it, with a reason.
    Dismissed,
}

impl ExceptionState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExceptionState::Open => "OPEN",
            ExceptionState::Resolved => "RESOLVED",
            ExceptionState::Dismissed => "DISMISSED",
        }
    }

    pub fn parse(text: &str) -> Option<ExceptionState> {
        [
            ExceptionState::Open,
            ExceptionState::Resolved,
            ExceptionState::Dismissed,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// A processor's event the domain refused (or that names nothing bursar can
/// apply it to), kept with the raw event so that it can be retried and
/// traced. One per processor event.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntakeException {
    /// `exc_` and 24 hex digits, derived from the processor's event id: the
    /// same event always names the same exception.
    pub id: String,
    pub state: ExceptionState,
    pub processor: String,
    pub event_id: String,
    pub event_type: String,
    /// The latest refusal: a code of the API (`OVERPAYMENT`,
    /// `ENROLLMENT_NOT_FOUND`, …) or of the intake (`PAYMENT_NOT_FOUND`,
    /// `EVENT_UNREADABLE`).
    pub code: String,
    pub message: String,
    /// The enrollment the event names, when it names one.
    pub user_id: Option<UserId>,
    pub course_id: Option<CourseId>,
    pub received_at: Timestamp,
    /// When the exception last changed (an attempt, a resolution, a dismissal).
    pub updated_at: Timestamp,
    /// Attempts so far, the first delivery included.
    pub attempts: u32,
    /// When the server tries it again by itself; `null` once it waits for a
    /// person (a day after it was received) or is no longer open.
    pub next_retry_at: Option<Timestamp>,
    /// Why a person dismissed it.
    pub dismiss_reason: Option<String>,
    /// The place of its `intake.exception` event in the global order.
    pub position: u64,
    /// The processor's event exactly as it was received.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub event: serde_json::Value,
}

/// The id of the exception of a processor's event: stable, so that every
/// delivery and every server names the same one.
pub fn exception_id(processor: &str, event_id: &str) -> String {
    let digest = crate::Hash::of(format!("{processor}/{event_id}").as_bytes()).to_hex();
    format!("exc_{}", &digest[..24])
}

/// The delays between the attempts at an open exception, in seconds: after
/// the first refusal 5 s (the payment a refund waits for is usually seconds
/// behind it), then 1 min, 5 min, 30 min, 1 h, 2 h, and every 4 h after, until
/// `INTAKE_RETRY_WINDOW_SECONDS` after the event was received.
pub const INTAKE_RETRY_DELAYS_SECONDS: [i64; 7] = [5, 60, 300, 1_800, 3_600, 7_200, 14_400];

/// How long an open exception is retried by itself: a day, as the contract
/// says. Whatever has not resolved by then needs a person.
pub const INTAKE_RETRY_WINDOW_SECONDS: i64 = 86_400;

/// When an exception received at `received_at`, refused for the
/// `attempts`-th time at `now`, is tried again; `None` once the retry window
/// is over. The last retry falls at the end of the window.
pub fn next_retry_at(received_at: Timestamp, attempts: u32, now: Timestamp) -> Option<Timestamp> {
    let index = (attempts.max(1) as usize - 1).min(INTAKE_RETRY_DELAYS_SECONDS.len() - 1);
    let delay = INTAKE_RETRY_DELAYS_SECONDS[index] * 1_000_000;
    let end = received_at
        .unix_micros()
        .saturating_add(INTAKE_RETRY_WINDOW_SECONDS * 1_000_000);
    if now.unix_micros() >= end {
        return None;
    }
    Some(Timestamp::from_unix_micros(
        now.unix_micros().saturating_add(delay).min(end),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_printable_ascii_without_spaces() {
        assert!(Source::new("stripe", "evt_1", "payment_intent.succeeded").is_ok());
        assert!(Source::new("stripe", "", "x").is_err());
        assert!(Source::new("stripe", "evt 1", "x").is_err());
        assert!(Source::new("stripe", "évt", "x").is_err());
        assert!(Source::new("stripe", &"e".repeat(256), "x").is_err());
        let json = r#"{"processor":"stripe","event_id":"evt_1","event_type":"x"}"#;
        let source: Source = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&source).unwrap(), json);
        assert!(
            serde_json::from_str::<Source>(
                r#"{"processor":"stripe","event_id":"","event_type":"x"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn retries_grow_and_stop_after_a_day() {
        let second = 1_000_000;
        let received = Timestamp::from_unix_micros(1_000 * second);
        let at =
            |seconds: i64| Timestamp::from_unix_micros(received.unix_micros() + seconds * second);
        assert_eq!(next_retry_at(received, 1, at(0)), Some(at(5)));
        assert_eq!(next_retry_at(received, 2, at(5)), Some(at(65)));
        assert_eq!(next_retry_at(received, 7, at(100)), Some(at(100 + 14_400)));
        assert_eq!(next_retry_at(received, 30, at(100)), Some(at(100 + 14_400)));
        assert_eq!(
            next_retry_at(received, 9, at(86_000)),
            Some(at(86_400)),
            "the last retry falls at the end of the day"
        );
        assert_eq!(next_retry_at(received, 10, at(86_400)), None);
    }

    #[test]
    fn exception_ids_are_stable_per_event() {
        let id = exception_id("stripe", "evt_1");
        assert_eq!(id, exception_id("stripe", "evt_1"));
        assert_ne!(id, exception_id("stripe", "evt_2"));
        assert_eq!(id.len(), 28);
        assert!(id.starts_with("exc_"));
    }
}
