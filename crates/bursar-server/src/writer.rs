//! The group-commit writer: a cloneable handle over one bounded queue and one
//! background task that gathers whatever is queued into one batch, commits it
//! in one transaction (one fsync), and only then answers every waiter. The
//! same task sweeps expired holds: it asks the store which enrollments have a
//! hold open past its `expires_at` and writes their `EXPIRE` entries.

use crate::metrics::Metrics;
use bursar_core::{Command, Outcome, Request, Timestamp};
use bursar_store::{Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Operations that may wait in the queue at once. Beyond it a write is
/// answered 503 `OVERLOADED` at once instead of queueing without bound. It
/// holds 32 full batches of `/v1/batch`, so bulk loaders keep the writer busy
/// while they wait; at the rate one writer commits that is a few seconds of
/// work, and at about 300 bytes a queued operation under 100 MB of memory.
pub const QUEUE_OPERATIONS_MAX: usize = 262_144;

/// Operations gathered into one transaction at most. Big enough that one
/// fsync is shared by thousands of payments, small enough that one commit
/// stays in the low milliseconds.
pub const COMMIT_OPERATIONS_MAX: usize = 16_384;

/// How often the writer looks for expired holds. The contract asks for at
/// least once a second; twice a second keeps an expired hold visible for at
/// most about half a second plus one commit, and one lookup on the index of
/// open holds costs next to nothing when none is open.
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the write queue is full")]
    Overloaded,
    #[error("the writer has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Job {
    requests: Vec<Request>,
    reply: oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
    _permit: OwnedSemaphorePermit,
}

/// The handle: cheap to clone, one per request handler.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::UnboundedSender<Job>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// The server clock: the one place bursar reads the time for the ledger.
pub fn now() -> Timestamp {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or(0);
    Timestamp::from_unix_micros(micros)
}

impl Writer {
    /// Starts the background task. It runs until every handle is dropped and
    /// the queue is empty, so a shutdown that drops the handles drains what
    /// was accepted before the task ends.
    pub fn start(store: Store, metrics: Arc<Metrics>) -> (Writer, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(QUEUE_OPERATIONS_MAX));
        let task = tokio::spawn(run(store, receiver, metrics.clone(), permits.clone()));
        (
            Writer {
                sender,
                permits,
                metrics,
            },
            task,
        )
    }

    /// Queues the requests as one job (they commit in the same transaction)
    /// and waits for the commit.
    pub async fn submit(&self, requests: Vec<Request>) -> Result<Vec<Outcome>, WriteError> {
        let count = u32::try_from(requests.len()).map_err(|_| WriteError::Overloaded)?;
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| {
                self.metrics.overloaded();
                WriteError::Overloaded
            })?;
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job {
                requests,
                reply,
                _permit: permit,
            })
            .map_err(|_| WriteError::Stopped)?;
        match answer.await {
            Ok(Ok(outcomes)) => Ok(outcomes),
            Ok(Err(error)) => Err(WriteError::Store(error)),
            Err(_) => Err(WriteError::Stopped),
        }
    }

    /// Operations waiting now.
    pub fn queue_depth(&self) -> usize {
        QUEUE_OPERATIONS_MAX - self.permits.available_permits()
    }
}

async fn run(
    store: Store,
    mut receiver: mpsc::UnboundedReceiver<Job>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
) {
    let mut sweep = tokio::time::interval(EXPIRY_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Expiry requests ride along with whatever is queued, in one commit.
        let (first, expiring) = tokio::select! {
            job = receiver.recv() => match job {
                Some(job) => (Some(job), Vec::new()),
                None => break,
            },
            _ = sweep.tick() => match expiry_requests(&store).await {
                requests if requests.is_empty() => continue,
                requests => (None, requests),
            },
        };
        let mut operations = first.as_ref().map_or(0, |job| job.requests.len());
        let mut jobs: Vec<Job> = first.into_iter().collect();
        while operations < COMMIT_OPERATIONS_MAX {
            match receiver.try_recv() {
                Ok(job) => {
                    operations += job.requests.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        metrics.set_queue_depth(QUEUE_OPERATIONS_MAX - permits.available_permits());
        let swept = expiring.len();
        let mut requests = expiring;
        requests.reserve(operations);
        let mut sizes = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            sizes.push(job.requests.len());
            requests.append(&mut job.requests);
        }
        let started = Instant::now();
        let result = store.execute(requests, now()).await;
        metrics.observe_commit(operations + swept, started.elapsed());
        match result {
            Ok(outcomes) => {
                // The sweep's own outcomes answer no one.
                let mut outcomes = outcomes.into_iter().skip(swept);
                for (job, size) in jobs.into_iter().zip(sizes) {
                    let answer: Vec<Outcome> = outcomes.by_ref().take(size).collect();
                    // A waiter that went away (client disconnected) is fine:
                    // its operation is committed and a retry will replay it.
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(error) => {
                tracing::warn!(%error, operations, swept, "batch failed; nothing in it was committed");
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
    tracing::info!("writer drained and stopped");
}

/// One sweep's requests: an `ExpireHolds` for each enrollment with a hold
/// open past its `expires_at`. The planner writes the `EXPIRE` entries under
/// the enrollment's lock, so on PostgreSQL two servers sweeping the same
/// hold write one entry between them. A failed lookup is logged and tried
/// again at the next tick.
async fn expiry_requests(store: &Store) -> Vec<Request> {
    match store.expired_holds(now()).await {
        Ok(keys) => keys
            .into_iter()
            .map(|key| Request {
                key,
                idempotency_key: None,
                command: Command::ExpireHolds,
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot look for expired holds");
            Vec::new()
        }
    }
}
