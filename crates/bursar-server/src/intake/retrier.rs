//! Retries open intake exceptions by themselves: once a second the server
//! asks the store for the open exceptions whose `next_retry_at` has come
//! (one indexed query, empty almost always) and tries each event again, as
//! the retry endpoint does. A refusal counts an attempt and the store sets
//! the next time (5 s, 1 min, 5 min, 30 min, 1 h, 2 h, then every 4 h) until
//! a day after the event came; then the exception waits for a person.
//!
//! With many servers on PostgreSQL, each retries what is due; two retrying
//! one exception at once are harmless: the operations are keyed by the
//! processor's objects (the second replays), and the exception row is
//! locked while a batch decides on it.

use crate::{AppState, Services};
use std::sync::Weak;
use std::time::Duration;

/// How often the server looks for exceptions due for a retry. The first
/// retry comes 5 s after a refusal; looking once a second keeps it within
/// about a second of that, for one indexed query a second.
pub const INTAKE_RETRY_LOOK_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the task; it stops once the service is dropped.
pub fn start(services: Weak<Services>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTAKE_RETRY_LOOK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(services) = services.upgrade() else {
                return;
            };
            retry_due(&AppState(services)).await;
        }
    })
}

/// One look: every exception due now, soonest first. A failure is logged and
/// tried again at the next look.
async fn retry_due(state: &AppState) {
    let due = match state.store.due_exceptions(crate::writer::now()).await {
        Ok(due) => due,
        Err(error) => {
            tracing::debug!(%error, "cannot look for intake exceptions to retry");
            return;
        }
    };
    for exception in due {
        match super::retry(state, &exception).await {
            Ok(super::Retried::Resolved(_)) => tracing::info!(
                exception = %exception.id,
                event_id = %exception.event_id,
                "an intake exception resolved on its retry"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(exception = %exception.id, code = error.code, "an intake retry failed");
                // The storage is failing or the queue is full: the rest
                // waits for the next look.
                if error.status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
                    return;
                }
            }
        }
    }
}
