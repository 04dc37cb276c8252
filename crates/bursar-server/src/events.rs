//! The event feed over HTTP (`GET /v1/events`, long-polling with `wait`) and
//! the signal that wakes whoever waits for new events — long-polls, webhook
//! delivery, the broker publisher — without any of them polling the ledger.

use crate::AppState;
use crate::api::ErrorBody;
use crate::api::json_response;
use crate::error::ApiError;
use crate::extract::{percent_decoded, query_number, query_pairs};
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use bursar_core::{Event, EventType};
use bursar_store::{EventQuery, Store};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use utoipa::{OpenApi, ToSchema};

/// Events one read returns at most.
pub const EVENTS_LIMIT_MAX: u32 = 1000;

/// Events one read returns when `limit` is not given.
pub const EVENTS_LIMIT_DEFAULT: u32 = 100;

/// The longest `wait` a reader may ask for, in seconds: long enough that an
/// idle consumer asks twice a minute, short enough for every proxy's idle
/// timeout.
pub const EVENTS_WAIT_SECONDS_MAX: u64 = 30;

/// How often a server looks at the database for events another process
/// committed (this process's own commits wake waiters at once). One tiny
/// query per interval per server, however many wait.
pub const FEED_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Wakes everyone waiting for new events: bumped by the writer after each
/// commit, and by a poller when another process moved the feed's head.
#[derive(Clone)]
pub struct FeedSignal {
    sender: Arc<watch::Sender<u64>>,
}

impl Default for FeedSignal {
    fn default() -> Self {
        FeedSignal {
            sender: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl FeedSignal {
    /// Something may have been committed: wake the waiters.
    pub fn notify(&self) {
        self.sender.send_modify(|generation| *generation += 1);
    }

    /// A receiver that sees every `notify` made after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }

    /// Starts the poller that notices other processes' commits; it stops
    /// when every `FeedSignal` is dropped.
    pub fn watch_store(&self, store: Store) -> tokio::task::JoinHandle<()> {
        let sender = Arc::downgrade(&self.sender);
        tokio::spawn(async move {
            let mut head = None;
            let mut tick = tokio::time::interval(FEED_POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(sender) = sender.upgrade() else {
                    return;
                };
                if sender.receiver_count() == 0 {
                    continue;
                }
                match store.event_head().await {
                    Ok(now) if head != Some(now) => {
                        if head.is_some() {
                            sender.send_modify(|generation| *generation += 1);
                        }
                        head = Some(now);
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, "cannot read the event head"),
                }
            }
        })
    }
}

/// `?after=&limit=&type=&wait=` of `GET /v1/events`.
pub struct EventsParams {
    pub query: EventQuery,
    pub wait: Duration,
}

impl<S: Send + Sync> FromRequestParts<S> for EventsParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("bad query string"))?;
        let mut params = EventsParams {
            query: EventQuery {
                after: 0,
                limit: EVENTS_LIMIT_DEFAULT,
                types: Vec::new(),
            },
            wait: Duration::ZERO,
        };
        for (name, value) in query_pairs(&raw, &["after", "limit", "type", "wait"])? {
            match name {
                "after" => {
                    params.query.after = query_number(value, 0..=i64::MAX as u64, || {
                        format!("after must be an integer position from 0 to {}", i64::MAX)
                    })?
                }
                "limit" => {
                    params.query.limit = query_number(value, 1..=EVENTS_LIMIT_MAX, || {
                        format!("limit must be an integer from 1 to {EVENTS_LIMIT_MAX}")
                    })?
                }
                "wait" => {
                    let seconds = query_number(value, 0..=EVENTS_WAIT_SECONDS_MAX, || {
                        format!(
                            "wait must be an integer from 0 to {EVENTS_WAIT_SECONDS_MAX} seconds"
                        )
                    })?;
                    params.wait = Duration::from_secs(seconds);
                }
                "type" => {
                    // `type=a,b` and `type=a&type=b` both ask for either; a
                    // client's URL library may send the comma as `%2C`.
                    let value = percent_decoded(value);
                    for name in value.split(',').filter(|name| !name.is_empty()) {
                        let event_type = EventType::parse(name).ok_or_else(|| {
                            let known: Vec<&str> =
                                EventType::ALL.iter().map(EventType::as_str).collect();
                            ApiError::invalid(format!(
                                "unknown event type {name:?}; expected one of {}",
                                known.join(", ")
                            ))
                        })?;
                        if !params.query.types.contains(&event_type) {
                            params.query.types.push(event_type);
                        }
                    }
                }
                // query_pairs refused every other name.
                _ => {}
            }
        }
        Ok(params)
    }
}

/// The answer of `GET /v1/events`.
#[derive(Serialize, ToSchema)]
pub struct EventsBody {
    /// Oldest first.
    pub events: Vec<Event>,
    /// Where to read from next (`after=`): the last event returned, or the
    /// last position looked at when a `type` filter skipped the rest.
    pub next_after: u64,
}

/// The events after a position, oldest first, long-polling with `wait` (reader).
#[utoipa::path(get, path = "/v1/events",
    params(
        ("after" = Option<i64>, Query, description = "return events with a position greater than this (default 0)", minimum = 0),
        ("limit" = Option<i32>, Query, description = "events to return at most: 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
        ("type" = Option<Vec<EventType>>, Query, style = Form, explode = false, description = "only events of these types, comma-separated"),
        ("wait" = Option<i32>, Query, description = "seconds to wait for an event when none is there yet: 0 to 30 (default 0)", minimum = 0, maximum = 30),
    ),
    responses((status = 200, body = EventsBody), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_events(
    State(state): State<AppState>,
    params: EventsParams,
) -> Result<Response, ApiError> {
    let EventsParams { mut query, wait } = params;
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first read, so a commit between the read and the
    // wait still wakes it.
    let mut signal = state.feed.subscribe();
    loop {
        signal.borrow_and_update();
        let page = state.store.events(query.clone()).await?;
        if !page.events.is_empty() || tokio::time::Instant::now() >= deadline {
            let body = EventsBody {
                events: page.events,
                next_after: page.next_after,
            };
            return Ok(json_response(StatusCode::OK, &body));
        }
        // A filtered read that skipped other events goes on from there.
        query.after = page.next_after;
        tokio::select! {
            changed = signal.changed() => {
                if changed.is_err() {
                    return Err(ApiError::from_store(&bursar_store::StoreError::Unavailable(
                        "the server is shutting down".into(),
                    )));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The feed's part of `/openapi.json`.
#[derive(OpenApi)]
#[openapi(paths(list_events))]
pub struct EventsDoc;
