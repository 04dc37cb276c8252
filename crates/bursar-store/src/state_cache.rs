//! SQLite's cache of enrollment states in the writer: on SQLite the writer's
//! connection is the only one that writes enrollments, so the state a batch
//! committed is the state the next batch would read back. A batch takes the
//! states it names from here and reads only the others; after its commit
//! the states it changed come back. `PRAGMA data_version` tells when any
//! other connection (another process on the same file) committed since, and
//! the cache is then forgotten whole.

use crate::StoreError;
use crate::sqlite::map_error;
use bursar_core::{EnrollmentKey, EnrollmentState};
use rusqlite::Connection;
use std::collections::HashMap;

/// States kept at most: about 40 MB of them. Past it the cache starts over;
/// states are read from the file again as batches name them.
pub(crate) const CACHED_STATES_MAX: usize = 100_000;

#[derive(Default)]
pub(crate) struct StateCache {
    states: HashMap<EnrollmentKey, EnrollmentState>,
    /// `PRAGMA data_version` when the cache was last checked: it changes
    /// when another connection commits, never for the writer's own commits.
    data_version: Option<i64>,
}

impl StateCache {
    /// Checks, inside a batch's transaction, that no other connection
    /// committed since the last batch; if one did, forgets every state.
    pub(crate) fn check(&mut self, connection: &Connection) -> Result<(), StoreError> {
        let version: i64 = connection
            .prepare_cached("PRAGMA data_version")
            .map_err(map_error)?
            .query_row([], |row| row.get(0))
            .map_err(map_error)?;
        if self.data_version != Some(version) {
            self.states.clear();
            self.data_version = Some(version);
        }
        Ok(())
    }

    /// The state of `key` as last committed, taken out of the cache: a batch
    /// that fails leaves it out.
    pub(crate) fn take(&mut self, key: &EnrollmentKey) -> Option<EnrollmentState> {
        self.states.remove(key)
    }

    /// Keeps the states a batch committed. Only states without holds are
    /// kept, so that every hold is read as `holds.rs` reads it: a state
    /// holding nothing carries no open hold, and the closed holds a batch
    /// named are dropped (a later batch naming them reads them again).
    pub(crate) fn keep(&mut self, states: impl IntoIterator<Item = EnrollmentState>) {
        for mut state in states {
            if state.enrollment.amount_held != 0 || state.holds.values().any(|hold| hold.is_open())
            {
                self.states.remove(&state.enrollment.key());
                continue;
            }
            state.holds.clear();
            if self.states.len() >= CACHED_STATES_MAX {
                self.states.clear();
            }
            self.states.insert(state.enrollment.key(), state);
        }
    }

    /// Forgets every state: after a batch that did not commit, or whose
    /// file is in doubt.
    pub(crate) fn clear(&mut self) {
        self.states.clear();
        self.data_version = None;
    }
}
