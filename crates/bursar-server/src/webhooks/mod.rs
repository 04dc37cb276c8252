//! Push delivery of events: signed webhooks (the Standard Webhooks scheme).
//! This file is the admin API — `POST /v1/webhooks`, `GET /v1/webhooks`,
//! `DELETE /v1/webhooks/{id}`, `GET /v1/webhooks/{id}/deliveries`,
//! `POST /v1/webhooks/{id}/replay` — and its validation; `delivery.rs` is
//! the engine, `client.rs` its HTTP client, `ssrf.rs` the guard against
//! internal addresses, `signing.rs` secrets and signatures. The state lives
//! in `bursar-store`'s `webhooks.rs`.

pub mod client;
pub mod delivery;
pub mod signing;
pub mod ssrf;

use crate::AppState;
use crate::api::{ErrorBody, json_response};
use crate::error::ApiError;
use crate::extract::{JsonBody, query_number, query_pairs};
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use bursar_core::{EventType, Timestamp};
use bursar_store::{DeliveryAttempt, WebhookEndpoint};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;
use utoipa::{OpenApi, ToSchema};

pub use delivery::{WEBHOOK_LEASE_DEFAULT, WebhookOptions};

/// Endpoints one deployment may have: each costs a task, a few connections
/// and its share of reads of the feed on the server delivering to it; a
/// platform needs a handful (an LMS, a receipts service, an analytics
/// sink).
pub const WEBHOOK_ENDPOINTS_MAX: usize = 100;

/// The longest webhook URL, in bytes: what browsers and servers commonly
/// accept, far more than any real receiver needs.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;

/// Attempts one `GET …/deliveries` returns at most: the whole log an
/// endpoint keeps.
pub const DELIVERIES_LIMIT_MAX: u32 = 1000;

/// Attempts returned when `limit` is not given.
pub const DELIVERIES_LIMIT_DEFAULT: u32 = 100;

/// The webhook settings every handler sees, and the bell that wakes this
/// server's delivery engine when an endpoint is made or replayed here.
#[derive(Default)]
pub struct Webhooks {
    allow_private: AtomicBool,
    pub wake: Arc<Notify>,
}

impl Webhooks {
    pub fn set_allow_private(&self, allow: bool) {
        self.allow_private.store(allow, Ordering::Relaxed);
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private.load(Ordering::Relaxed)
    }
}

/// `POST /v1/webhooks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookBody {
    /// Where to POST the events: an `http` or `https` URL with a host, at
    /// most 2,048 bytes, without credentials. Loopback, private and
    /// link-local addresses are refused unless the server allows them.
    #[schema(max_length = 2048, example = "https://lms.example.com/hooks/bursar")]
    pub url: String,
    /// Only events of these types (at least one, each known); without it,
    /// every type, including types added later.
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub types: Option<Vec<String>>,
}

/// `POST /v1/webhooks/{id}/replay`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Send again the events with a position greater than this (0: every
    /// event), and any not yet delivered.
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub after: u64,
}

/// An endpoint as listed: never its secret.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    /// `wh_` and 16 hex digits.
    pub id: String,
    pub url: String,
    /// The types it receives; `null`: every type.
    #[schema(value_type = Option<Vec<EventType>>)]
    pub types: Option<Vec<EventType>>,
    /// `ACTIVE`, or `FAILING` once an event's retries ran out: deliveries
    /// pause until a replay.
    #[schema(example = "ACTIVE")]
    pub state: &'static str,
    pub created_at: Timestamp,
    /// The position of the feed when it was made: it receives the events
    /// after it (older ones only by replay).
    pub started_after: u64,
    pub failing_since: Option<Timestamp>,
}

impl WebhookView {
    fn of(endpoint: &WebhookEndpoint) -> WebhookView {
        WebhookView {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            types: (!endpoint.types.is_empty()).then(|| endpoint.types.clone()),
            state: endpoint.state.as_str(),
            created_at: endpoint.created_at,
            started_after: endpoint.started_after,
            failing_since: endpoint.failing_since,
        }
    }
}

/// An endpoint just made: the only answer that holds its secret.
#[derive(Serialize, ToSchema)]
pub struct CreatedWebhookBody {
    #[serde(flatten)]
    pub endpoint: WebhookView,
    /// `whsec_` and base64: the key of every signature is the base64
    /// decoding of what follows `whsec_`. Shown only this once.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhooksBody {
    pub webhooks: Vec<WebhookView>,
}

/// One attempt at delivering an event.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    /// The event's id: the `webhook-id` the receiver got.
    pub event_id: String,
    /// The event's position in the feed.
    pub position: u64,
    /// 1 for the first attempt at this event (since its last replay).
    pub attempt: u32,
    /// The HTTP status answered; `null` when none came (no connection, a
    /// timeout, a refused address).
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Why it failed; `null` when it was delivered (a 2xx).
    pub error: Option<String>,
    pub at: Timestamp,
}

impl DeliveryView {
    fn of(attempt: DeliveryAttempt) -> DeliveryView {
        DeliveryView {
            event_id: attempt.event_id,
            position: attempt.position,
            attempt: attempt.attempt,
            status: attempt.status,
            latency_ms: attempt.latency_ms,
            error: attempt.error,
            at: attempt.at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveriesBody {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "WEBHOOK_NOT_FOUND",
        format!(
            "no webhook endpoint has the id {:?}",
            id.chars().take(64).collect::<String>()
        ),
    )
}

fn forbidden(refusal: &ssrf::Refusal) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "WEBHOOK_URL_FORBIDDEN",
        format!("the webhook URL may not be used: {refusal}"),
    )
}

/// Parses and checks a webhook URL's form; returns it as it will be stored
/// (normalized) with its host and port.
fn parse_url(text: &str) -> Result<(url::Url, url::Host<String>, u16), ApiError> {
    if text.len() > WEBHOOK_URL_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "url must be at most {WEBHOOK_URL_BYTES_MAX} bytes"
        )));
    }
    let url = url::Url::parse(text).map_err(|error| {
        ApiError::invalid(format!(
            "url must be an absolute http or https URL ({error})"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::invalid(format!(
            "url must use http or https, not {:?}",
            url.scheme().chars().take(32).collect::<String>()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid(
            "url must not carry credentials: deliveries are authenticated by their signature",
        ));
    }
    let host = url
        .host()
        .map(|host| host.to_owned())
        .filter(|host| !matches!(host, url::Host::Domain(name) if name.is_empty()))
        .ok_or_else(|| ApiError::invalid("url must name a host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| ApiError::invalid("url must have a port"))?;
    if url.as_str().len() > WEBHOOK_URL_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "url must be at most {WEBHOOK_URL_BYTES_MAX} bytes once normalized"
        )));
    }
    Ok((url, host, port))
}

fn parse_types(types: Option<Vec<String>>) -> Result<Vec<EventType>, ApiError> {
    let Some(names) = types else {
        return Ok(Vec::new());
    };
    if names.is_empty() {
        return Err(ApiError::invalid(
            "types must name at least one event type; leave it out to receive every type",
        ));
    }
    let mut types = Vec::new();
    for name in &names {
        let event_type = EventType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(EventType::as_str).collect();
            ApiError::invalid(format!(
                "unknown event type {:?} in types; expected one of {}",
                name.chars().take(64).collect::<String>(),
                known.join(", ")
            ))
        })?;
        if !types.contains(&event_type) {
            types.push(event_type);
        }
    }
    // Stored in the contract's order, however they were given.
    types.sort_by_key(|event_type| EventType::ALL.iter().position(|known| known == event_type));
    Ok(types)
}

fn new_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|error| {
        tracing::error!(%error, "no randomness for a webhook id");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; it has been logged",
        )
    })?;
    Ok(format!(
        "wh_{}",
        bytes
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    ))
}

/// Register a webhook endpoint (admin). It receives the events committed
/// after this call, each POSTed and signed with the secret in the answer,
/// which is shown only here.
#[utoipa::path(post, path = "/v1/webhooks", request_body = CreateWebhookBody,
    responses((status = 201, body = CreatedWebhookBody),
        (status = 400, body = ErrorBody, description = "INVALID_REQUEST: a malformed body, URL or type; WEBHOOK_URL_FORBIDDEN: the URL's host is, or resolves to, a loopback, private or link-local address"),
        (status = 409, body = ErrorBody, description = "WEBHOOK_LIMIT_REACHED: there are 100 endpoints already")),
    security(("bearer" = [])))]
pub async fn create_webhook(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateWebhookBody>,
) -> Result<Response, ApiError> {
    let (url, host, port) = parse_url(&body.url)?;
    let types = parse_types(body.types)?;
    if !state.webhooks.allow_private() {
        ssrf::check_registration(&host, port)
            .await
            .map_err(|refusal| forbidden(&refusal))?;
    }
    let secret = signing::new_secret().map_err(|error| {
        tracing::error!(%error, "no randomness for a webhook secret");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; it has been logged",
        )
    })?;
    // The position the next event will take, less one: the endpoint
    // receives what is committed from now on.
    let head = state.store.event_head().await?;
    let endpoint = WebhookEndpoint {
        id: new_id()?,
        url: url.to_string(),
        types,
        secret,
        created_at: crate::writer::now(),
        started_after: head.saturating_sub(1),
        cursor: head.saturating_sub(1),
        state: bursar_store::EndpointState::Active,
        failing_since: None,
        generation: 0,
        lease_free: true,
        lease_owner: None,
    };
    if !state
        .store
        .webhook_create(&endpoint, WEBHOOK_ENDPOINTS_MAX)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "WEBHOOK_LIMIT_REACHED",
            format!(
                "there are {WEBHOOK_ENDPOINTS_MAX} webhook endpoints already; delete one first"
            ),
        ));
    }
    state.webhooks.wake.notify_one();
    tracing::info!(id = %endpoint.id, url = %endpoint.url, "webhook endpoint created");
    Ok(json_response(
        StatusCode::CREATED,
        &CreatedWebhookBody {
            endpoint: WebhookView::of(&endpoint),
            secret: endpoint.secret.clone(),
        },
    ))
}

/// List the webhook endpoints, oldest first, without their secrets (admin).
#[utoipa::path(get, path = "/v1/webhooks",
    responses((status = 200, body = WebhooksBody)),
    security(("bearer" = [])))]
pub async fn list_webhooks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let endpoints = state.store.webhook_endpoints(crate::writer::now()).await?;
    let webhooks = endpoints.iter().map(WebhookView::of).collect();
    Ok(json_response(StatusCode::OK, &WebhooksBody { webhooks }))
}

/// Delete a webhook endpoint with its pending retries and its log (admin):
/// every server stops delivering to it within a second or two.
#[utoipa::path(delete, path = "/v1/webhooks/{id}",
    params(("id" = String, Path, description = "the endpoint's id, `wh_…`")),
    responses((status = 200, body = WebhookView, description = "the endpoint as it was"),
        (status = 404, body = ErrorBody, description = "WEBHOOK_NOT_FOUND: no endpoint has this id")),
    security(("bearer" = [])))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    WebhookIdPath(id): WebhookIdPath,
) -> Result<Response, ApiError> {
    let Some(endpoint) = state
        .store
        .webhook_delete(&id, crate::writer::now())
        .await?
    else {
        return Err(not_found(&id));
    };
    state.webhooks.wake.notify_one();
    tracing::info!(id = %endpoint.id, "webhook endpoint deleted");
    Ok(json_response(StatusCode::OK, &WebhookView::of(&endpoint)))
}

/// `?limit=` of `GET /v1/webhooks/{id}/deliveries`.
pub struct DeliveriesParams {
    pub limit: u32,
}

impl<S: Send + Sync> FromRequestParts<S> for DeliveriesParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("bad query string"))?;
        let mut limit = DELIVERIES_LIMIT_DEFAULT;
        // query_pairs refuses every name but `limit`.
        for (_, value) in query_pairs(&raw, &["limit"])? {
            limit = query_number(value, 1..=DELIVERIES_LIMIT_MAX, || {
                format!("limit must be an integer from 1 to {DELIVERIES_LIMIT_MAX}")
            })?;
        }
        Ok(DeliveriesParams { limit })
    }
}

/// The newest delivery attempts of an endpoint, newest first (admin). The
/// log keeps the last 1,000 attempts of each endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries",
    params(("id" = String, Path, description = "the endpoint's id, `wh_…`"),
        ("limit" = Option<i32>, Query, description = "attempts to return at most: 1 to 1000 (default 100)", minimum = 1, maximum = 1000)),
    responses((status = 200, body = DeliveriesBody),
        (status = 404, body = ErrorBody, description = "WEBHOOK_NOT_FOUND: no endpoint has this id")),
    security(("bearer" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    WebhookIdPath(id): WebhookIdPath,
    params: DeliveriesParams,
) -> Result<Response, ApiError> {
    let Some(attempts) = state.store.webhook_attempts(&id, params.limit).await? else {
        return Err(not_found(&id));
    };
    let deliveries = attempts.into_iter().map(DeliveryView::of).collect();
    Ok(json_response(
        StatusCode::OK,
        &DeliveriesBody { deliveries },
    ))
}

/// Send again, with their same ids, the events with a position greater than
/// `after` (and any not yet delivered); a `FAILING` endpoint becomes
/// `ACTIVE` and its waiting retries are due at once (admin).
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", request_body = ReplayBody,
    params(("id" = String, Path, description = "the endpoint's id, `wh_…`")),
    responses((status = 200, body = WebhookView, description = "the endpoint, active"),
        (status = 404, body = ErrorBody, description = "WEBHOOK_NOT_FOUND: no endpoint has this id")),
    security(("bearer" = [])))]
pub async fn replay_webhook(
    State(state): State<AppState>,
    WebhookIdPath(id): WebhookIdPath,
    JsonBody(body): JsonBody<ReplayBody>,
) -> Result<Response, ApiError> {
    if body.after > i64::MAX as u64 {
        return Err(ApiError::invalid(format!(
            "after must be a position from 0 to {}",
            i64::MAX
        )));
    }
    let Some(endpoint) = state
        .store
        .webhook_replay(&id, body.after, crate::writer::now())
        .await?
    else {
        return Err(not_found(&id));
    };
    state.webhooks.wake.notify_one();
    tracing::info!(id = %endpoint.id, after = body.after, "webhook endpoint replayed");
    Ok(json_response(StatusCode::OK, &WebhookView::of(&endpoint)))
}

/// `/v1/webhooks/{id}`: any text is looked up (an unknown id is a 404); a
/// path that is not UTF-8 is a 400 with a code.
pub struct WebhookIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for WebhookIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("the webhook id must be percent-encoded UTF-8 text"))?;
        Ok(WebhookIdPath(id))
    }
}

/// The webhook routes' part of `/openapi.json`.
#[derive(OpenApi)]
#[openapi(paths(
    create_webhook,
    list_webhooks,
    delete_webhook,
    list_deliveries,
    replay_webhook
))]
pub struct WebhooksDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (url, host, port) = parse_url("HTTPS://Hooks.Example.COM/a?b=1").expect("valid");
        assert_eq!(url.as_str(), "https://hooks.example.com/a?b=1");
        assert_eq!(host, url::Host::Domain("hooks.example.com".to_owned()));
        assert_eq!(port, 443);
        for bad in [
            "",
            "hooks.example.com/x",
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://user:pass@example.com/",
            "http://",
            "http://[::1",
            "javascript:alert(1)",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} must be refused");
        }
        let long = format!("https://example.com/{}", "a".repeat(WEBHOOK_URL_BYTES_MAX));
        assert!(parse_url(&long).is_err());
    }

    #[test]
    fn types() {
        assert_eq!(parse_types(None).expect("all"), vec![]);
        assert_eq!(
            parse_types(Some(vec![
                "enrollment.access_granted".into(),
                "payment.recorded".into(),
                "payment.recorded".into()
            ]))
            .expect("known"),
            vec![EventType::PaymentRecorded, EventType::AccessGranted]
        );
        assert!(parse_types(Some(vec![])).is_err());
        assert!(parse_types(Some(vec!["payment.made".into()])).is_err());
    }
}
