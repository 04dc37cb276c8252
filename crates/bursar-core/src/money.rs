//! Money: integer minor units with an ISO 4217 currency code. No float ever
//! touches an amount; every sum is checked.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The largest amount one operation may move, and the largest price: 10^12
/// minor units (ten billion dollars), far above any tuition, far below
/// where sums of many operations could approach `i64::MAX`.
pub const OPERATION_AMOUNT_MAX: i64 = 1_000_000_000_000;

/// The largest any running total of one enrollment may grow to (price plus
/// charges). Charges beyond it are refused, so no sum can ever overflow.
pub const ENROLLMENT_TOTAL_MAX: i64 = 1_000_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error(
        "amount must be an integer from 1 to 1,000,000,000,000 minor units, got {}",
        shown(*.0)
    )]
    AmountOutOfRange(i128),
    #[error(
        "price must be an integer from 0 to 1,000,000,000,000 minor units, got {}",
        shown(*.0)
    )]
    PriceOutOfRange(i128),
    #[error("currency must be three upper-case letters (ISO 4217), got {0:?}")]
    BadCurrency(String),
}

/// A refused count of minor units as a message shows it: one too large
/// for 64 bits is shown as such, not as a 39-digit number.
fn shown(minor_units: i128) -> String {
    if i64::try_from(minor_units).is_ok() {
        minor_units.to_string()
    } else {
        "a number too large for 64 bits".to_owned()
    }
}

/// An amount moved by one operation: 1 ..= 10^12 minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    pub fn new(minor_units: i128) -> Result<Self, MoneyError> {
        if (1..=OPERATION_AMOUNT_MAX as i128).contains(&minor_units) {
            Ok(Amount(minor_units as i64))
        } else {
            Err(MoneyError::AmountOutOfRange(minor_units))
        }
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

/// Reads a count of minor units: a JSON integer only. A fraction, an
/// exponent (`10.5`, `1e3`, `1.0`), a string or anything else is refused
/// with a message that names no Rust type.
struct MinorUnits;

impl<'de> serde::de::Visitor<'de> for MinorUnits {
    type Value = i128;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an integer number of minor units")
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i128, E> {
        Ok(i128::from(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i128, E> {
        Ok(i128::from(value))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<i128, E> {
        // An integer too large for 64 bits arrives as a float: say that it
        // is too large rather than that it is not an integer.
        if value.is_finite() && value.fract() == 0.0 && value.abs() >= 9.0e18 {
            return Ok(if value > 0.0 { i128::MAX } else { i128::MIN });
        }
        Err(E::invalid_type(serde::de::Unexpected::Float(value), &self))
    }
}

fn minor_units<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i128, D::Error> {
    deserializer.deserialize_any(MinorUnits)
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Amount::new(minor_units(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// An agreed price: 0 ..= 10^12 minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(i64);

impl Price {
    pub fn new(minor_units: i128) -> Result<Self, MoneyError> {
        if (0..=OPERATION_AMOUNT_MAX as i128).contains(&minor_units) {
            Ok(Price(minor_units as i64))
        } else {
            Err(MoneyError::PriceOutOfRange(minor_units))
        }
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Price::new(minor_units(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// An ISO 4217 currency code: exactly three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let bytes = text.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency([bytes[0], bytes[1], bytes[2]]))
        } else {
            Err(MoneyError::BadCurrency(text.chars().take(16).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters ever get in, so this cannot fail.
        std::str::from_utf8(&self.0).expect("currency is ASCII")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Currency::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_bounds() {
        assert!(Amount::new(0).is_err());
        assert!(Amount::new(-1).is_err());
        assert_eq!(Amount::new(1).unwrap().minor_units(), 1);
        assert!(Amount::new(OPERATION_AMOUNT_MAX as i128).is_ok());
        assert!(Amount::new(OPERATION_AMOUNT_MAX as i128 + 1).is_err());
        assert!(Price::new(0).is_ok());
        assert!(Price::new(-1).is_err());
    }

    #[test]
    fn amount_json_rejects_non_integers() {
        for bad in [
            "10.5",
            "\"10\"",
            "1e3",
            "-5",
            "0",
            "1000000000001",
            "18446744073709551616",
            "null",
            "true",
        ] {
            assert!(
                serde_json::from_str::<Amount>(bad).is_err(),
                "{bad} must be refused"
            );
        }
        assert_eq!(
            serde_json::from_str::<Amount>("2500")
                .unwrap()
                .minor_units(),
            2500
        );
    }

    #[test]
    fn range_messages_name_the_limit() {
        // The messages spell the limit out with separators; they must
        // follow the constant.
        assert_eq!(OPERATION_AMOUNT_MAX, 1_000_000_000_000);
        assert!(
            MoneyError::AmountOutOfRange(0)
                .to_string()
                .contains("from 1 to 1,000,000,000,000 minor units, got 0")
        );
        assert!(
            MoneyError::PriceOutOfRange(i128::MAX)
                .to_string()
                .ends_with("got a number too large for 64 bits")
        );
    }

    #[test]
    fn currency_parse() {
        assert!(Currency::parse("USD").is_ok());
        for bad in ["usd", "US", "USDD", "U$D", "", "ÜSD"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }
}
