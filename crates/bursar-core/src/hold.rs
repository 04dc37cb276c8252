//! Holds (two-phase payments): part of the due reserved before a card is
//! charged, named by the `seq` of its `HOLD` entry, and the one way each hold
//! ends — captured, voided or expired.

use crate::{Amount, Reference, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The shortest life of a hold. A checkout needs at least the time to charge
/// a card; shorter holds would expire under a slow processor and invite the
/// double charge holds exist to prevent.
pub const HOLD_EXPIRES_IN_SECONDS_MIN: u32 = 30;

/// The longest life of a hold: a day, long enough for a bank transfer that
/// settles overnight, short enough that a forgotten hold does not keep the
/// student from paying for long.
pub const HOLD_EXPIRES_IN_SECONDS_MAX: u32 = 86_400;

/// A hold's life when the request names none: fifteen minutes, a generous
/// checkout.
pub const HOLD_EXPIRES_IN_SECONDS_DEFAULT: u32 = 900;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// How long a hold lives, validated to
/// `HOLD_EXPIRES_IN_SECONDS_MIN..=HOLD_EXPIRES_IN_SECONDS_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HoldExpiry(u32);

impl HoldExpiry {
    pub fn from_seconds(seconds: i128) -> Result<HoldExpiry, String> {
        let range =
            i128::from(HOLD_EXPIRES_IN_SECONDS_MIN)..=i128::from(HOLD_EXPIRES_IN_SECONDS_MAX);
        if range.contains(&seconds) {
            Ok(HoldExpiry(seconds as u32))
        } else {
            Err(format!(
                "expires_in must be an integer number of seconds from \
                 {HOLD_EXPIRES_IN_SECONDS_MIN} to {HOLD_EXPIRES_IN_SECONDS_MAX}"
            ))
        }
    }

    pub fn seconds(self) -> u32 {
        self.0
    }

    /// When a hold opened at `opened_at` with this life expires.
    pub fn after(self, opened_at: Timestamp) -> Timestamp {
        Timestamp::from_unix_micros(opened_at.unix_micros() + i64::from(self.0) * MICROS_PER_SECOND)
    }

    /// The life of a hold opened at `opened_at` that expires at `expires_at`,
    /// if it is a whole number of seconds within the bounds.
    pub fn between(opened_at: Timestamp, expires_at: Timestamp) -> Option<HoldExpiry> {
        let micros = expires_at
            .unix_micros()
            .checked_sub(opened_at.unix_micros())?;
        if micros % MICROS_PER_SECOND != 0 {
            return None;
        }
        HoldExpiry::from_seconds(i128::from(micros / MICROS_PER_SECOND)).ok()
    }
}

impl Default for HoldExpiry {
    fn default() -> Self {
        HoldExpiry(HOLD_EXPIRES_IN_SECONDS_DEFAULT)
    }
}

impl Serialize for HoldExpiry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for HoldExpiry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // As for amounts: integers only, so `900.0` and `"900"` are refused.
        // Through `i64`, not `i128`: serde_json reads an `i128` by a path of
        // its own that answers a fraction with a syntax error.
        let seconds = i64::deserialize(deserializer)?;
        HoldExpiry::from_seconds(i128::from(seconds)).map_err(serde::de::Error::custom)
    }
}

/// What a hold reserves: a given amount, or all that is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldAmount {
    Amount(Amount),
    Remaining,
}

/// Where a hold is in its life. Only `Open` reserves money.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HoldState {
    Open,
    Captured,
    Voided,
    Expired,
}

impl HoldState {
    pub fn as_str(&self) -> &'static str {
        match self {
            HoldState::Open => "OPEN",
            HoldState::Captured => "CAPTURED",
            HoldState::Voided => "VOIDED",
            HoldState::Expired => "EXPIRED",
        }
    }

    pub fn parse(text: &str) -> Option<HoldState> {
        [
            HoldState::Open,
            HoldState::Captured,
            HoldState::Voided,
            HoldState::Expired,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// One hold of an enrollment, as the storage keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The `seq` of its `HOLD` entry.
    pub seq: u64,
    /// Minor units reserved.
    pub amount: i64,
    pub expires_at: Timestamp,
    pub reference: Option<Reference>,
    pub state: HoldState,
}

impl Hold {
    pub fn is_open(&self) -> bool {
        self.state == HoldState::Open
    }

    /// Whether the hold is open at `now` by the clock, sweep or no sweep.
    pub fn has_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
}

/// What one ledger entry does to the holds of its enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldChange {
    /// A `HOLD` entry opens this hold.
    Opened(Hold),
    /// A `CAPTURE`, `VOID` or `EXPIRE` entry ends the hold `seq`.
    Closed { seq: u64, state: HoldState },
}
