//! A failed PostgreSQL call sorted by what to do about it (retry the
//! batch, answer 503, or report a fault), and the backoff between retries.

use super::{POOL_WAIT_TIMEOUT, RETRY_BACKOFF_BASE, RETRY_BACKOFF_MAX};
use crate::StoreError;
use deadpool_postgres::PoolError;
use std::hash::BuildHasher;
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// A failed database call, sorted by what to do about it.
pub(crate) struct Failure {
    pub(crate) error: StoreError,
    /// Running the whole transaction again may well succeed: a conflict with
    /// another transaction, or a connection that dropped mid-way.
    pub(crate) transient: bool,
}

/// The SQLSTATEs of a conflict with a concurrent transaction: the retry
/// re-reads and decides again.
fn is_conflict(state: &SqlState) -> bool {
    *state == SqlState::T_R_SERIALIZATION_FAILURE
        || *state == SqlState::T_R_DEADLOCK_DETECTED
        || *state == SqlState::UNIQUE_VIOLATION
        || *state == SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN
}

/// The SQLSTATEs of a server that is going away, starting up or full.
fn is_unavailable(state: &SqlState) -> bool {
    state.code().starts_with("08")
        || *state == SqlState::ADMIN_SHUTDOWN
        || *state == SqlState::CRASH_SHUTDOWN
        || *state == SqlState::CANNOT_CONNECT_NOW
        || *state == SqlState::TOO_MANY_CONNECTIONS
}

/// The SQLSTATEs of storage that refuses a write: insufficient resources
/// (`53…`: disk full, out of memory, a configured limit), system and I/O
/// errors (`58…`), a read-only transaction (`25006`: a standby, or a
/// database set read-only) and a permission denied (`42501`). Nothing was
/// committed; the batch fails at once, as a `Storage` fault (503).
fn is_storage_fault(state: &SqlState) -> bool {
    let code = state.code();
    code.starts_with("53")
        || code.starts_with("58")
        || *state == SqlState::READ_ONLY_SQL_TRANSACTION
        || *state == SqlState::INSUFFICIENT_PRIVILEGE
}

/// What a database error with this SQLSTATE and message means for a batch.
fn classify_state(state: &SqlState, message: String) -> Failure {
    if is_conflict(state) {
        return Failure {
            error: StoreError::Unavailable(format!(
                "conflicting transactions kept the batch from committing: {message}"
            )),
            transient: true,
        };
    }
    if is_unavailable(state) {
        return Failure {
            error: StoreError::Unavailable(message),
            transient: true,
        };
    }
    if is_storage_fault(state) {
        return Failure {
            error: StoreError::Storage(message),
            transient: false,
        };
    }
    Failure {
        error: StoreError::Internal(message),
        transient: false,
    }
}

pub(super) fn classify(error: &tokio_postgres::Error) -> Failure {
    if let Some(database_error) = error.as_db_error() {
        let state = database_error.code();
        let mut message = database_error.to_string();
        if !is_conflict(state)
            && !is_unavailable(state)
            && let Some(detail) = database_error.detail()
        {
            message.push_str(&format!(" ({detail})"));
        }
        return classify_state(state, message);
    }
    // Without a SQLSTATE the failure is the connection's: closed, reset, timed
    // out or refused.
    let mut described = error.to_string();
    let mut source = std::error::Error::source(error);
    let mut input_output = false;
    while let Some(cause) = source {
        input_output |= cause.is::<std::io::Error>();
        let text = cause.to_string();
        if !described.contains(&text) {
            described.push_str(": ");
            described.push_str(&text);
        }
        source = cause.source();
    }
    if error.is_closed() || input_output || described.contains("timed out") {
        return Failure {
            error: StoreError::Unavailable(format!("PostgreSQL connection failed: {described}")),
            transient: true,
        };
    }
    Failure {
        error: StoreError::Internal(format!("PostgreSQL: {described}")),
        transient: false,
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Failure {
        classify(&error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }
}

/// No connection could be had: the database is unreachable or overloaded.
/// Never retried here, so a request fails fast.
pub(super) fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Timeout(_) => StoreError::Unavailable(format!(
            "no PostgreSQL connection within {} s",
            POOL_WAIT_TIMEOUT.as_secs()
        )),
        PoolError::Backend(error) => match classify(&error).error {
            StoreError::Internal(message) if error.as_db_error().is_none() => {
                StoreError::Unavailable(message)
            }
            other => other,
        },
        PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
        other => StoreError::Internal(format!("PostgreSQL connection pool: {other}")),
    }
}

/// How long to sleep before retry number `retry` (1, 2, …): "full jitter",
/// a uniformly random time up to the exponential bound, so processes that
/// collided once do not collide again in step.
pub(super) fn backoff(retry: u32) -> Duration {
    let bound = RETRY_BACKOFF_BASE
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(RETRY_BACKOFF_MAX);
    // A randomly keyed hash of the current time is random enough for jitter
    // and needs no dependency.
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let bound_micros = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX).max(1);
    Duration::from_micros(random % bound_micros)
}

pub(crate) fn read_error(error: tokio_postgres::Error) -> StoreError {
    classify(&error).error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_faults_are_storage_errors_and_conflicts_are_retried() {
        let storage = [
            SqlState::DISK_FULL,
            SqlState::INSUFFICIENT_RESOURCES,
            SqlState::OUT_OF_MEMORY,
            SqlState::IO_ERROR,
            SqlState::SYSTEM_ERROR,
            SqlState::UNDEFINED_FILE,
            SqlState::READ_ONLY_SQL_TRANSACTION,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ];
        for state in storage {
            let failure = classify_state(&state, "m".into());
            assert!(
                matches!(failure.error, StoreError::Storage(_)) && !failure.transient,
                "{state:?}"
            );
        }
        for state in [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ] {
            let failure = classify_state(&state, "m".into());
            assert!(failure.transient, "{state:?}");
            assert!(matches!(failure.error, StoreError::Unavailable(_)));
        }
        for state in [SqlState::ADMIN_SHUTDOWN, SqlState::TOO_MANY_CONNECTIONS] {
            assert!(matches!(
                classify_state(&state, "m".into()).error,
                StoreError::Unavailable(_)
            ));
        }
        for state in [SqlState::DATA_CORRUPTED, SqlState::SYNTAX_ERROR] {
            assert!(matches!(
                classify_state(&state, "m".into()).error,
                StoreError::Internal(_)
            ));
        }
    }

    #[test]
    fn backoff_stays_within_its_bounds() {
        for retry in 1..40 {
            let pause = backoff(retry);
            assert!(pause <= RETRY_BACKOFF_MAX, "{pause:?}");
            let bound = RETRY_BACKOFF_BASE.saturating_mul(1 << (retry - 1).min(16));
            assert!(pause <= bound, "{pause:?} > {bound:?}");
        }
    }
}
