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

scalar_schema!(crate::UserId, || text(
    "A user id.",
    Some("^[A-Za-z0-9._:@-]+$"),
    ID_CHARS_MAX
));
scalar_schema!(crate::CourseId, || text(
    "A course id.",
    Some("^[A-Za-z0-9._:@-]+$"),
    ID_CHARS_MAX
));
scalar_schema!(crate::IdempotencyKey, || text(
    "An idempotency key: printable ASCII.",
    Some("^[ -~]+$"),
    IDEMPOTENCY_KEY_CHARS_MAX
));
scalar_schema!(crate::Reference, || text(
    "A caller's reference, e.g. a processor's charge id.",
    None,
    REFERENCE_CHARS_MAX
));
scalar_schema!(crate::Reason, || text(
    "Why, in words for people.",
    None,
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
