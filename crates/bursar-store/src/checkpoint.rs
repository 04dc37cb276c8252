//! The SQLite WAL checkpointed outside the writer's commit. The writer
//! connection runs with `wal_autocheckpoint = 0`, so a commit never copies
//! pages back into the database file (nor fsyncs it) while waiters wait for
//! their answers; after each commit it rings this thread, which checkpoints
//! from a connection of its own (`PASSIVE`: it never waits for the writer,
//! nor makes it wait). Once a checkpoint has copied every frame, the writer's
//! next transaction starts the WAL again from its beginning, so the file
//! stays about as large as a few commits.
//!
//! A WAL that still grows past `WAL_BYTES_MAX` (the checkpoint never caught
//! up, or a long reader held it back) is checkpointed by the writer itself
//! after its commit, as SQLite's own autocheckpoint would have done: the
//! stall comes back only when the background cannot keep up.

use crate::StoreError;
use crate::sqlite::{SqliteOptions, map_error, open_connection};
use rusqlite::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

/// How many frames (pages) the WAL may hold before the background
/// checkpoints it: SQLite's default autocheckpoint (1,000 pages of 4 KiB).
const WAL_CHECKPOINT_FRAMES: u64 = 1_000;

/// How many frames the WAL may hold before the writer checkpoints it itself
/// after a commit: far beyond what the background leaves when it keeps up (a
/// batch of 8,192 payments writes about a thousand pages), small enough that
/// the WAL never holds more than a moment's writes (256 MiB).
const WAL_FRAMES_MAX: u64 = 65_536;

/// The writer's side: rings the checkpointing thread after a commit.
pub(crate) struct Checkpointer {
    bell: SyncSender<()>,
    /// The frames in the WAL after the writer's last commit, as SQLite's WAL
    /// hook tells it.
    frames: Arc<AtomicU64>,
}

impl Checkpointer {
    /// Installs the WAL hook on the writer connection (which also turns
    /// SQLite's own autocheckpoint off: one hook per connection) and starts
    /// the thread, with its own connection to the database.
    pub(crate) fn start(
        options: &SqliteOptions,
        writer: &mut Connection,
    ) -> Result<Checkpointer, StoreError> {
        let frames = Arc::new(AtomicU64::new(0));
        let counted = frames.clone();
        writer
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
                counted.store(u64::try_from(pages).unwrap_or(0), Ordering::Relaxed);
                Ok(())
            }))
            .map_err(map_error)?;
        let connection = open_connection(options, false)?;
        // One pending ring is enough: the checkpoint that answers it copies
        // every frame committed by then.
        let (bell, rings) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("bursar-checkpoint".into())
            .spawn(move || run(connection, rings))
            .map_err(|error| {
                StoreError::Internal(format!("cannot start the checkpointer: {error}"))
            })?;
        Ok(Checkpointer { bell, frames })
    }

    /// After a commit: wakes the thread when the WAL holds enough to be
    /// worth a checkpoint (never waiting for it), and says whether the WAL is
    /// past `WAL_FRAMES_MAX`, when the writer checkpoints it itself.
    pub(crate) fn committed(&self) -> bool {
        let frames = self.frames.load(Ordering::Relaxed);
        if frames >= WAL_CHECKPOINT_FRAMES {
            match self.bell.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("the checkpointing thread stopped");
                }
            }
        }
        frames > WAL_FRAMES_MAX
    }
}

/// The thread: until the store is dropped (the bell with it), checkpoint
/// whenever rung.
fn run(connection: Connection, rings: Receiver<()>) {
    while rings.recv().is_ok() {
        let checkpoint = connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(map_error);
        if let Err(error) = checkpoint {
            tracing::debug!(%error, "the background checkpoint failed; the next one tries again");
        }
    }
}
