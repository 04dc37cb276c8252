//! Request extractors that turn every malformed input into an `ApiError`
//! with a code (never axum's plain-text rejections): enrollment paths,
//! idempotency keys, JSON bodies, ledger paging.

use crate::bodies::read_body;
use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request};
use axum::http::request::Parts;
use bursar_core::{CourseId, EnrollmentKey, IdempotencyKey, UserId};
use serde::de::DeserializeOwned;

/// Bodies of single operations are tiny; 64 KiB leaves room for long reasons
/// and references while keeping a flood of big bodies cheap to refuse.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// The answer when a path's ids cannot even be read (not UTF-8 once
/// percent-decoded).
const BAD_PATH_IDS: &str =
    "the ids in the path must be 1 to 128 characters of [A-Za-z0-9._:@-], percent-encoded UTF-8";

/// `/v1/users/{user_id}/courses/{course_id}`, validated.
pub struct EnrollmentPath(pub EnrollmentKey);

impl<S: Send + Sync> FromRequestParts<S> for EnrollmentPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((user_id, course_id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid(BAD_PATH_IDS))?;
        Ok(EnrollmentPath(EnrollmentKey {
            user_id: UserId::parse(&user_id)
                .map_err(|error| ApiError::invalid(error.to_string()))?,
            course_id: CourseId::parse(&course_id)
                .map_err(|error| ApiError::invalid(error.to_string()))?,
        }))
    }
}

/// `/v1/users/{user_id}/courses`, validated.
pub struct UserPath(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(user_id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid(BAD_PATH_IDS))?;
        Ok(UserPath(
            UserId::parse(&user_id).map_err(|error| ApiError::invalid(error.to_string()))?,
        ))
    }
}

/// The required `Idempotency-Key` header of every state-changing POST.
pub struct IdempotencyKeyHeader(pub IdempotencyKey);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let value = values.next().ok_or_else(|| {
            ApiError::invalid(
                "the Idempotency-Key header is required on every POST that changes state",
            )
        })?;
        if values.next().is_some() {
            return Err(ApiError::invalid("send exactly one Idempotency-Key header"));
        }
        let text = value
            .to_str()
            .map_err(|_| ApiError::invalid("the Idempotency-Key must be printable ASCII"))?;
        Ok(IdempotencyKeyHeader(
            IdempotencyKey::parse(text).map_err(|error| ApiError::invalid(error.to_string()))?,
        ))
    }
}

/// A JSON body parsed into `T` (which denies unknown fields), of at most
/// `LIMIT` bytes. An empty body reads as `{}`, so `complete` and
/// `pay-remaining` need none.
pub struct JsonBody<T, const LIMIT: usize = REQUEST_BODY_BYTES_MAX>(pub T);

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S>
    for JsonBody<T, LIMIT>
{
    type Rejection = ApiError;

    /// The body is read under the body budget (see `bodies`), whose
    /// reservation is held until the body is parsed.
    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let body = read_body(request, LIMIT).await?;
        let bytes: &[u8] = if body.bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &body.bytes
        };
        crate::json_errors::from_slice(bytes)
            .map(JsonBody)
            .map_err(ApiError::invalid)
    }
}

/// For a field that may be absent but not `null` (`#[serde(default,
/// deserialize_with = "present")]`): where two fields exclude each other, a
/// `null` would be neither absent nor a value.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Default and largest page of `GET …/ledger`.
pub const LEDGER_PAGE_ENTRIES_DEFAULT: u32 = 100;

/// A number of a query string within `range`, else 400 `INVALID_REQUEST`
/// with `message`: the one rule of every paging parameter.
pub fn query_number<T: std::str::FromStr + PartialOrd>(
    value: &str,
    range: std::ops::RangeInclusive<T>,
    message: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    value
        .parse()
        .ok()
        .filter(|number| range.contains(number))
        .ok_or_else(|| ApiError::invalid(message()))
}

/// `?after=SEQ&limit=N` of `GET …/ledger`.
pub struct LedgerPage {
    pub after: u64,
    pub limit: u32,
}

impl<S: Send + Sync> FromRequestParts<S> for LedgerPage {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("bad query string"))?;
        let mut page = LedgerPage {
            after: 0,
            limit: LEDGER_PAGE_ENTRIES_DEFAULT,
        };
        let max = bursar_store::LEDGER_PAGE_ENTRIES_MAX;
        for pair in query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "after" => {
                    // Sequence numbers are 64-bit signed integers in the
                    // databases and in the OpenAPI document.
                    page.after = query_number(value, 0..=i64::MAX as u64, || {
                        format!(
                            "after must be an integer sequence number from 0 to {}",
                            i64::MAX
                        )
                    })?
                }
                "limit" => {
                    page.limit = query_number(value, 1..=max, || {
                        format!("limit must be an integer from 1 to {max}")
                    })?
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "unknown query parameter {name:?}; expected after and limit"
                    )));
                }
            }
        }
        Ok(page)
    }
}
