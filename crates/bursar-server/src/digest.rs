//! Digests over HTTP (`GET /v1/digest`, admin) and in the log
//! (`serve --digest-every`): one root that commits to every ledger entry up
//! to a position, to be kept outside bursar and checked later with `bursar
//! audit --digest`. What a digest is: `bursar_core::digest`.

use crate::AppState;
use crate::api::json_response;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bursar_core::Digest;
use bursar_store::Store;
use std::time::Duration;
use utoipa::OpenApi;

/// The log target of the digests `serve --digest-every` writes, one JSON
/// object per line as the message: what operators ship elsewhere.
pub const DIGEST_LOG_TARGET: &str = "bursar::digest";

/// The longest `--digest-every`: a year. A digest rarer than that proves
/// little about the year before it, and the bound keeps every interval far
/// from the timer's limits.
pub const DIGEST_EVERY_SECONDS_MAX: u64 = 366 * 86_400;

/// A digest of the ledger as committed now (admin).
///
/// Its root commits to every entry up to `position`. Keep it outside bursar;
/// `bursar audit --digest FILE` later proves that nothing it covers was
/// removed or changed.
#[utoipa::path(get, path = "/v1/digest", responses((status = 200, body = Digest)),
    security(("bearer" = [])))]
pub async fn digest(State(state): State<AppState>) -> Result<Response, ApiError> {
    let digest = state.store.digest(crate::writer::now()).await?;
    Ok(json_response(StatusCode::OK, &digest))
}

/// The digest's part of `/openapi.json`.
#[derive(OpenApi)]
#[openapi(paths(digest))]
pub struct DigestDoc;

/// Takes a digest every `every` (the first one `every` after the start) and
/// logs it at info level with the target `bursar::digest`, its compact JSON
/// as the message. A digest that cannot be taken is a warning of this
/// module, and the next one is tried on time. The task ends with the
/// runtime.
pub fn log_digests(store: Store, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A digest that took long is followed by the next one a full
        // interval later, never by a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store.digest(crate::writer::now()).await {
                Ok(digest) => log(&digest),
                Err(error) => tracing::warn!(%error, "cannot take a digest"),
            }
        }
    })
}

fn log(digest: &Digest) {
    match serde_json::to_string(digest) {
        Ok(line) => tracing::info!(target: "bursar::digest", "{line}"),
        Err(error) => tracing::warn!(%error, "cannot write a digest as JSON"),
    }
}
