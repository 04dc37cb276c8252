//! The admin API for API tokens: `GET /v1/tokens` lists them (never a
//! secret or its hash), `POST /v1/tokens` makes one and shows its secret
//! once, `DELETE /v1/tokens/{id}` revokes one; `GET /v1/whoami` tells any
//! token its own role. Also the token lifetime syntax (`30d`, `12h`, `90m`,
//! `3600s`) the command line shares.

use crate::AppState;
use crate::api::{ErrorBody, json_response};
use crate::auth::{Role, bearer, make_token, unknown_token};
use crate::error::ApiError;
use crate::extract::JsonBody;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bursar_core::Timestamp;
use bursar_store::TokenRecord;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

/// The longest lifetime a token may be given: ten years, longer than any
/// credential should live, short enough that no expiry time overflows.
pub const TOKEN_LIFETIME_SECONDS_MAX: u64 = 3650 * 86_400;

/// Parses a lifetime: a positive whole number and a unit, `s`, `m`, `h` or
/// `d` (`3600s`, `90m`, `12h`, `30d`); returns it in seconds.
pub fn parse_lifetime(text: &str) -> Result<u64, String> {
    parse_duration(text, "expires_in", TOKEN_LIFETIME_SECONDS_MAX)
}

/// Parses a duration written as a lifetime is (`3600s`, `90m`, `12h`,
/// `30d`), from 1 s to `max_seconds`; returns it in seconds. `what` names
/// the setting in the error.
pub fn parse_duration(text: &str, what: &str, max_seconds: u64) -> Result<u64, String> {
    let explain = || {
        format!(
            "{what} must be a whole number followed by s, m, h or d (such as 30d or 12h), \
             from 1s to {} days; got {:?}",
            max_seconds / 86_400,
            text.chars().take(32).collect::<String>()
        )
    };
    // The unit is the last character, whatever its width: a lifetime is
    // typed by people, and `12hé` must be refused, not split mid-character.
    let unit_width = text.chars().next_back().ok_or_else(explain)?.len_utf8();
    let (digits, unit) = text.split_at(text.len() - unit_width);
    let unit_seconds: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(explain()),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(explain());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|count| count.checked_mul(unit_seconds))
        .filter(|seconds| (1..=max_seconds).contains(seconds))
        .ok_or_else(explain)
}

/// When a token made at `now` with a lifetime of `seconds` expires.
pub fn expiry_after(now: Timestamp, seconds: u64) -> Timestamp {
    // Bounded by TOKEN_LIFETIME_SECONDS_MAX, so this cannot overflow.
    let micros = i64::try_from(seconds)
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000);
    Timestamp::from_unix_micros(now.unix_micros().saturating_add(micros))
}

/// `POST /v1/tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenBody {
    pub role: Role,
    /// How long the token lives, in seconds: 1 to 315,360,000 (3,650
    /// days), like every `expires_in` of the API. Without it the token does
    /// not expire. (The command line also takes `30d`, `12h`, `90m`.)
    #[schema(minimum = 1, maximum = 315_360_000, example = 2_592_000)]
    pub expires_in: Option<u64>,
}

/// A token as listed: never its secret, never its hash.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    /// The public id, `tok_` and 16 hex digits.
    pub id: String,
    pub role: String,
    pub created_at: Timestamp,
    /// `null`: the token does not expire.
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    pub revoked_at: Option<Timestamp>,
    /// Whether the token is past its expiry time.
    pub expired: bool,
}

impl TokenView {
    pub fn of(record: &TokenRecord, now: Timestamp) -> TokenView {
        TokenView {
            id: record.id.clone(),
            role: record.role.clone(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked: record.revoked_at.is_some(),
            revoked_at: record.revoked_at,
            expired: record
                .expires_at
                .is_some_and(|expires_at| now >= expires_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokensBody {
    pub tokens: Vec<TokenView>,
}

/// A token just made: the only answer that ever holds its secret.
#[derive(Serialize, ToSchema)]
pub struct CreatedTokenBody {
    pub id: String,
    /// The secret to send as `Authorization: Bearer <token>`. Shown only
    /// this once; bursar keeps only its SHA-256.
    pub token: String,
    pub role: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// List every API token, revoked and expired ones included (admin).
#[utoipa::path(get, path = "/v1/tokens",
    responses((status = 200, body = TokensBody),
        (status = 401, body = ErrorBody, description = "no token, or an unknown, revoked or expired one"),
        (status = 403, body = ErrorBody, description = "the token is not an admin's"),
        (status = 503, body = ErrorBody, description = "the database is unavailable")),
    security(("bearer" = [])))]
pub async fn list_tokens(State(state): State<AppState>) -> Result<Response, ApiError> {
    let now = crate::writer::now();
    let tokens = state
        .store
        .tokens()
        .await?
        .iter()
        .map(|record| TokenView::of(record, now))
        .collect();
    Ok(json_response(StatusCode::OK, &TokensBody { tokens }))
}

/// Make an API token (admin). The answer is the only place its secret ever
/// appears.
#[utoipa::path(post, path = "/v1/tokens", request_body = CreateTokenBody,
    responses((status = 201, body = CreatedTokenBody),
        (status = 400, body = ErrorBody, description = "a malformed body, an unknown role or a bad expires_in"),
        (status = 401, body = ErrorBody, description = "no token, or an unknown, revoked or expired one"),
        (status = 403, body = ErrorBody, description = "the token is not an admin's"),
        (status = 413, body = ErrorBody, description = "the body is too large"),
        (status = 503, body = ErrorBody, description = "the database is unavailable")),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateTokenBody>,
) -> Result<Response, ApiError> {
    let lifetime_seconds = match body.expires_in {
        Some(seconds) if !(1..=TOKEN_LIFETIME_SECONDS_MAX).contains(&seconds) => {
            return Err(ApiError::invalid(format!(
                "expires_in must be a whole number of seconds from 1 to {TOKEN_LIFETIME_SECONDS_MAX} \
                 (3,650 days); got {seconds}"
            )));
        }
        other => other,
    };
    let made = make_token(&state.store, body.role, lifetime_seconds).await?;
    state.auth.invalidate();
    tracing::info!(id = %made.record.id, role = %made.record.role, "API token created");
    Ok(json_response(
        StatusCode::CREATED,
        &CreatedTokenBody {
            id: made.record.id,
            token: made.secret,
            role: made.record.role,
            created_at: made.record.created_at,
            expires_at: made.record.expires_at,
        },
    ))
}

/// Revoke an API token by its id (admin): every server refuses it within a
/// second. Revoking a revoked token again changes nothing. The
/// `BURSAR_ADMIN_TOKEN` of the configuration is not in the table and cannot
/// be revoked here.
#[utoipa::path(delete, path = "/v1/tokens/{id}",
    params(("id" = String, Path, description = "the token's public id, `tok_…`")),
    responses((status = 200, body = TokenView, description = "the token, now revoked"),
        (status = 401, body = ErrorBody, description = "no token, or an unknown, revoked or expired one"),
        (status = 403, body = ErrorBody, description = "the token is not an admin's"),
        (status = 404, body = ErrorBody, description = "no token has this id (NOT_FOUND)"),
        (status = 503, body = ErrorBody, description = "the database is unavailable")),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    TokenIdPath(id): TokenIdPath,
) -> Result<Response, ApiError> {
    let now = crate::writer::now();
    let Some(record) = state.store.revoke_token(&id, now).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!(
                "no token has the id {:?}",
                id.chars().take(64).collect::<String>()
            ),
        ));
    };
    state.auth.invalidate();
    tracing::info!(id = %record.id, "API token revoked");
    Ok(json_response(StatusCode::OK, &TokenView::of(&record, now)))
}

/// `GET /v1/whoami`: the presented token as the server sees it.
#[derive(Serialize, ToSchema)]
pub struct WhoAmIBody {
    pub role: Role,
    /// The token's public id (`tok_…`); `null` for the break-glass
    /// `BURSAR_ADMIN_TOKEN` of the configuration, which is not stored.
    pub token_id: Option<String>,
    /// `null`: the token does not expire.
    pub expires_at: Option<Timestamp>,
}

/// The role, id and expiry of the token this request carries (any role).
/// The admin page asks it to know what to offer; the server checks the
/// role of every call anyway.
#[utoipa::path(get, path = "/v1/whoami",
    responses((status = 200, body = WhoAmIBody),
        (status = 401, body = ErrorBody, description = "no token, or an unknown, revoked or expired one")),
    security(("bearer" = [])))]
pub async fn whoami(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let identity = state
        .auth
        .identify(bearer(header)?)
        .await
        .ok_or_else(unknown_token)?;
    Ok(json_response(
        StatusCode::OK,
        &WhoAmIBody {
            role: identity.role,
            token_id: identity.token_id.map(|id| id.to_string()),
            expires_at: identity.expires_at,
        },
    ))
}

/// `/v1/tokens/{id}`: any text is looked up (an unknown id is a 404); a path
/// that is not UTF-8 is a 400 with a code, never axum's plain-text one.
pub struct TokenIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TokenIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("the token id must be percent-encoded UTF-8 text"))?;
        Ok(TokenIdPath(id))
    }
}

/// The token routes' part of `/openapi.json`.
#[derive(OpenApi)]
#[openapi(paths(list_tokens, create_token, revoke_token, whoami))]
pub struct TokensDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("3600s"), Ok(3600));
        assert_eq!(parse_lifetime("90m"), Ok(5400));
        assert_eq!(parse_lifetime("12h"), Ok(43_200));
        assert_eq!(parse_lifetime("30d"), Ok(2_592_000));
        assert_eq!(parse_lifetime("3650d"), Ok(TOKEN_LIFETIME_SECONDS_MAX));
        for bad in [
            "",
            "d",
            "0s",
            "3651d",
            "-1h",
            "1.5h",
            "1 h",
            "1w",
            "h1",
            "99999999999999999999d",
            "8õV\u{104ed3}",
            "12hé",
            "é",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
