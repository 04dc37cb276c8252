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
    #[error("amount must be an integer between 1 and {OPERATION_AMOUNT_MAX} minor units, got {0}")]
    AmountOutOfRange(i128),
    #[error("price must be an integer between 0 and {OPERATION_AMOUNT_MAX} minor units, got {0}")]
    PriceOutOfRange(i128),
    #[error("currency must be three upper-case letters (ISO 4217), got {0:?}")]
    BadCurrency(String),
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

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Deserializing through u64 rejects floats (`10.5`, `1e3`), strings and
        // negative numbers with serde's own precise messages.
        let value = u64::deserialize(deserializer)?;
        Amount::new(value as i128).map_err(serde::de::Error::custom)
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
        let value = u64::deserialize(deserializer)?;
        Price::new(value as i128).map_err(serde::de::Error::custom)
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
    fn currency_parse() {
        assert!(Currency::parse("USD").is_ok());
        for bad in ["usd", "US", "USDD", "U$D", "", "ÜSD"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }
}
