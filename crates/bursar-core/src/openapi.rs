//! OpenAPI schemas of the validated scalar types, so the server's
//! `/openapi.json` states each bound exactly as the types enforce it.

use crate::ids::{ID_CHARS_MAX, IDEMPOTENCY_KEY_CHARS_MAX, REASON_CHARS_MAX, REFERENCE_CHARS_MAX};
use crate::money::OPERATION_AMOUNT_MAX;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

macro_rules! scalar_schema {
    ($type:ty, $build:expr) => {
        impl utoipa::PartialSchema for $type {
            fn schema() -> RefOr<Schema> {
                let build: fn() -> ObjectBuilder = $build;
                build().into()
            }
        }

        impl utoipa::ToSchema for $type {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                schemas.push((
                    <$type as utoipa::ToSchema>::name().into_owned(),
                    <$type as utoipa::PartialSchema>::schema(),
                ));
            }
        }
    };
}

fn text(description: &str, pattern: Option<&str>, max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .min_length(Some(1))
        .max_length(Some(max))
}

fn integer(description: &str, minimum: i64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .description(Some(description))
        .minimum(Some(minimum as f64))
        .maximum(Some(OPERATION_AMOUNT_MAX as f64))
}

/// `[A-Za-z0-9._:@-]`, with at least one character that is not a dot: `.`
/// and `..` are path segments that proxies and clients normalise away.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:@-]*[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*$";

/// Printable ASCII without a leading or trailing space.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]([ -~]*[!-~])?$";

/// No control character (Unicode category Cc), and at least one character
/// that is neither a control character nor white space. The classes are
/// spelled out so every regular-expression engine reads them alike.
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$";

scalar_schema!(crate::UserId, || text(
    "A user id: letters, digits and `._:@-`, not only dots.",
    Some(ID_PATTERN),
    ID_CHARS_MAX
));
scalar_schema!(crate::CourseId, || text(
    "A course id: letters, digits and `._:@-`, not only dots.",
    Some(ID_PATTERN),
    ID_CHARS_MAX
));
scalar_schema!(crate::IdempotencyKey, || text(
    "An idempotency key: printable ASCII, no leading or trailing space.",
    Some(IDEMPOTENCY_KEY_PATTERN),
    IDEMPOTENCY_KEY_CHARS_MAX
));
scalar_schema!(crate::Reference, || text(
    "A caller's reference, e.g. a processor's charge id: not blank, no control characters.",
    Some(TEXT_PATTERN),
    REFERENCE_CHARS_MAX
));
scalar_schema!(crate::Reason, || text(
    "Why, in words for people: not blank, no control characters.",
    Some(TEXT_PATTERN),
    REASON_CHARS_MAX
));
scalar_schema!(crate::Currency, || text(
    "ISO 4217 currency code.",
    Some("^[A-Z]{3}$"),
    3
));
scalar_schema!(crate::Amount, || integer(
    "Minor units moved by one operation (an integer; no fractions).",
    1
));
scalar_schema!(crate::Price, || integer(
    "A price in minor units (an integer; no fractions).",
    0
));
scalar_schema!(crate::Hash, || ObjectBuilder::new()
    .schema_type(Type::String)
    .description(Some("SHA-256, 64 lower-case hex digits."))
    .pattern(Some("^[0-9a-f]{64}$")));
scalar_schema!(crate::Timestamp, || ObjectBuilder::new()
    .schema_type(Type::String)
    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
        utoipa::openapi::KnownFormat::DateTime
    )))
    .description(Some("Server time, UTC, RFC 3339 with microseconds.")));
