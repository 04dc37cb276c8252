//! Request extractors that turn every malformed input into an `ApiError`
//! with a code (never axum's plain-text rejections): enrollment paths,
//! idempotency keys, JSON bodies, ledger paging.

use crate::bodies::{ReadBody, read_body};
use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request};
use axum::http::request::Parts;
use bursar_core::{CourseId, EnrollmentKey, IdempotencyKey, Timestamp, UserId};
use serde::Deserialize;
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

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let body = JsonBytes::<LIMIT>::from_request(request, state).await?;
        body.parse().map(JsonBody)
    }
}

/// A JSON body of at most `LIMIT` bytes, read whole but not parsed yet: for
/// a handler whose body type borrows from the bytes (`/v1/batch`). The body
/// is read under the body budget (see `bodies`), whose reservation is held
/// until this is dropped. An empty body reads as `{}`.
pub struct JsonBytes<const LIMIT: usize>(ReadBody);

impl<const LIMIT: usize> JsonBytes<LIMIT> {
    /// Parses the body as a `T` that may borrow from it; malformed is a 400.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.0.bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.0.bytes
        };
        crate::json_errors::from_slice(bytes).map_err(ApiError::invalid)
    }
}

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for JsonBytes<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        read_body(request, LIMIT).await.map(JsonBytes)
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
        for (name, value) in query_pairs(&query, &["after", "limit"])? {
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
                // query_pairs refused every other name.
                _ => {}
            }
        }
        Ok(page)
    }
}

/// `%XX` escapes decoded; anything that is not a well-formed escape is kept
/// as it is (then it names no event type and is no time), and so is `+`: a
/// time's offset `+01:00` reads the same sent as `+` or as `%2B`.
pub fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// A time of a query string (`as_of`, `from`, `to`): any RFC 3339
/// date-time, converted to UTC; else 400 `INVALID_REQUEST` naming the
/// parameter.
pub fn query_time(name: &str, value: &str) -> Result<Timestamp, ApiError> {
    let text = percent_decoded(value);
    bursar_core::time::parse_rfc3339_any(&text).ok_or_else(|| {
        ApiError::invalid(format!(
            "{name} must be an RFC 3339 date-time such as 2026-03-01T00:00:00Z or \
             2026-03-01T09:30:00+01:00 (send + as %2B), not {text:?}"
        ))
    })
}

/// A time that must not be after the clock's now: the ledger cannot say yet
/// what will stand then. The message names the parameter and both times.
pub fn not_after_now(name: &str, at: Timestamp, now: Timestamp) -> Result<Timestamp, String> {
    if at > now {
        return Err(format!(
            "{name} {at} is in the future (now is {now}): the ledger cannot answer for a \
             moment that has not come"
        ));
    }
    Ok(at)
}

/// A parameter of a query string: its name and its value as sent.
pub type QueryPair<'a> = (&'a str, &'a str);

/// The name-value pairs of a query string, each name one of `known` (else
/// 400 naming them), values as sent.
pub fn query_pairs<'a>(
    query: &'a Option<String>,
    known: &[&str],
) -> Result<Vec<QueryPair<'a>>, ApiError> {
    let mut pairs = Vec::new();
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&name) {
            return Err(ApiError::invalid(format!(
                "unknown query parameter {:?}; expected {}",
                name.chars().take(64).collect::<String>(),
                known.join(", ")
            )));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// `?as_of=` of the enrollment reads: the time to answer for, if any.
pub struct AsOf(pub Option<Timestamp>);

impl<S: Send + Sync> FromRequestParts<S> for AsOf {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("bad query string"))?;
        let mut as_of = None;
        for (name, value) in query_pairs(&query, &["as_of"])? {
            let at = query_time(name, value)?;
            as_of = Some(not_after_now(name, at, crate::writer::now()).map_err(ApiError::invalid)?);
        }
        Ok(AsOf(as_of))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_and_the_rest_kept() {
        assert_eq!(
            percent_decoded("payment.recorded%2Cintake.exception"),
            "payment.recorded,intake.exception"
        );
        assert_eq!(percent_decoded("a%2c"), "a,");
        for kept in ["plain", "%", "%2", "%zz", "100%", "+01:00"] {
            assert_eq!(percent_decoded(kept), kept);
        }
    }

    #[test]
    fn query_times_take_any_offset_sent_either_way() {
        let utc = Timestamp::from_unix_micros(1_772_346_600_000_000);
        for sent in [
            "2026-03-01T06:30:00Z",
            "2026-03-01T07:30:00+01:00",
            "2026-03-01T07:30:00%2B01:00",
            "2026-03-01T06%3A30%3A00Z",
        ] {
            assert_eq!(query_time("as_of", sent).expect(sent), utc, "{sent}");
        }
        let error = query_time("as_of", "yesterday").expect_err("not a time");
        assert_eq!(error.code, "INVALID_REQUEST");
        assert!(
            error.message.contains("as_of must be an RFC 3339"),
            "{}",
            error.message
        );
    }
}
