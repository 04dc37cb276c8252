//! Validated identifiers and free-text fields. Once a value of one of these
//! types exists it is valid, so nothing downstream checks it again.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Longest user or course id, in characters.
pub const ID_CHARS_MAX: usize = 128;
/// Longest idempotency key, in characters (the contract's bound).
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;
/// Longest reference (a processor's charge id), in characters.
pub const REFERENCE_CHARS_MAX: usize = 255;
/// Longest reason, in characters: room for a sentence or two of explanation.
pub const REASON_CHARS_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be 1 to {max} characters of [A-Za-z0-9._:@-]")]
    BadId { what: &'static str, max: usize },
    #[error(
        "{what} must not be made only of dots: proxies and clients read \".\" and \"..\" in a path as directories"
    )]
    OnlyDots { what: &'static str },
    #[error(
        "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_CHARS_MAX} printable ASCII characters, without leading or trailing spaces"
    )]
    BadIdempotencyKey,
    #[error("{what} must be 1 to {max} characters, not blank, without control characters")]
    BadText { what: &'static str, max: usize },
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')
}

fn check_id(text: &str, what: &'static str) -> Result<(), IdError> {
    // All allowed characters are ASCII, so the byte length is the char count.
    if !(1..=ID_CHARS_MAX).contains(&text.len()) || !text.chars().all(is_id_char) {
        return Err(IdError::BadId {
            what,
            max: ID_CHARS_MAX,
        });
    }
    // `.` and `..` (and, to keep the rule simple, any run of dots alone)
    // cannot be reached through paths that proxies and clients normalise.
    if text.bytes().all(|byte| byte == b'.') {
        return Err(IdError::OnlyDots { what });
    }
    Ok(())
}

fn check_text(text: &str, what: &'static str, max: usize) -> Result<(), IdError> {
    let chars = text.chars().count();
    if (1..=max).contains(&chars) && !text.trim().is_empty() && !text.chars().any(char::is_control)
    {
        Ok(())
    } else {
        Err(IdError::BadText { what, max })
    }
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                let check: fn(&str) -> Result<(), IdError> = $check;
                check(text)?;
                Ok($name(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(
    /// A user id: 1..=128 characters of `[A-Za-z0-9._:@-]`.
    UserId,
    |text| check_id(text, "user_id")
);
string_newtype!(
    /// A course id: 1..=128 characters of `[A-Za-z0-9._:@-]`.
    CourseId,
    |text| check_id(text, "course_id")
);
string_newtype!(
    /// An idempotency key: 1..=255 printable ASCII characters, scoped to one
    /// enrollment.
    IdempotencyKey,
    |text| {
        let printable = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
        let trimmed = !text.starts_with(' ') && !text.ends_with(' ');
        if (1..=IDEMPOTENCY_KEY_CHARS_MAX).contains(&text.len()) && printable && trimmed {
            Ok(())
        } else {
            Err(IdError::BadIdempotencyKey)
        }
    }
);
string_newtype!(
    /// A caller's reference for an operation, such as a processor's charge id.
    Reference,
    |text| check_text(text, "reference", REFERENCE_CHARS_MAX)
);
string_newtype!(
    /// Why a credit, refund or charge was made, in words for people.
    Reason,
    |text| check_text(text, "reason", REASON_CHARS_MAX)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(UserId::parse("user-1@school.edu").is_ok());
        assert!(CourseId::parse("c:101_a.b").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("a/b").is_err());
        assert!(UserId::parse("é").is_err());
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
        assert!(UserId::parse(&"a".repeat(129)).is_err());
        assert!(UserId::parse(".").is_err());
        assert!(CourseId::parse("..").is_err());
        assert!(CourseId::parse("...").is_err());
        assert!(CourseId::parse(".a.").is_ok());
    }

    #[test]
    fn ids_of_dots_alone_are_refused() {
        for dots in [".", "..", "...", &".".repeat(128)] {
            assert_eq!(
                UserId::parse(dots),
                Err(IdError::OnlyDots { what: "user_id" }),
                "{dots}"
            );
            assert!(CourseId::parse(dots).is_err(), "{dots}");
        }
        for fine in [".a", "a.", "a..b", "..a", "v1.2"] {
            assert!(UserId::parse(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn idempotency_keys() {
        assert!(IdempotencyKey::parse("order-42 attempt").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(" lead").is_err());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("ünïcode").is_err());
    }

    #[test]
    fn texts() {
        assert!(Reason::parse("scholarship").is_ok());
        assert!(Reason::parse("   ").is_err());
        assert!(Reason::parse("line\nbreak").is_err());
        assert!(Reason::parse(&"r".repeat(1025)).is_err());
        assert!(Reference::parse("ch_3Nk").is_ok());
    }
}
