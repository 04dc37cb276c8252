//! The group-commit writer: a cloneable handle over one bounded queue and one
//! background task that gathers whatever is queued into one batch, commits it
//! in one transaction (one fsync), and only then answers every waiter. The
//! same task sweeps expired holds: it asks the store which enrollments have a
//! hold open past its `expires_at` and writes their `EXPIRE` entries.
//!
//! The payment intake's writes (a processor's event: its operations, and the
//! exception kept if the domain refuses them) ride in the same batches, so
//! an exception commits in the transaction of the refusal that made it.

use crate::events::FeedSignal;
use crate::metrics::Metrics;
use bursar_core::{Command, Outcome, Request, Timestamp};
use bursar_store::{IntakeOutcome, IntakeWrite, Store, StoreError};
use std::sync::{Arc, Mutex, PoisonError};
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

/// While writes fail for a storage fault, the writer probes the storage on
/// every tick of the expiry sweep instead of sweeping (see
/// `Store::probe_write`), so that `/readyz` turns ready again by itself once
/// the cause is gone, even when a load balancer has stopped sending writes
/// to a server that is not ready. It costs one small fsync a tick while
/// failing, nothing otherwise.

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the write queue is full")]
    Overloaded,
    #[error("the writer has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one job's waiter is answered: its requests' outcomes and its intake
/// writes' outcomes, in order.
type Answer = Result<(Vec<Outcome>, Vec<IntakeOutcome>), StoreError>;

struct Job {
    requests: Vec<Request>,
    intake: Vec<IntakeWrite>,
    reply: oneshot::Sender<Answer>,
    _permit: OwnedSemaphorePermit,
}

/// The handle: cheap to clone, one per request handler.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::UnboundedSender<Job>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    health: Arc<StorageHealth>,
}

/// Why writes fail, while a storage fault lasts: set by a batch that fails
/// with one, cleared by the next batch or probe that succeeds.
#[derive(Default)]
struct StorageHealth {
    failure: Mutex<Option<String>>,
}

impl StorageHealth {
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, result: &Result<(), &StoreError>) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                if let Some(reason) = failure.take() {
                    tracing::info!(%reason, "writes succeed again after a storage fault");
                }
            }
            Err(StoreError::Storage(reason)) => {
                if failure.is_none() {
                    tracing::error!(%reason, "writes fail for a storage fault; answering 503 until it is fixed");
                }
                *failure = Some(reason.clone());
            }
            // An unreachable database is `/readyz`'s ping to report.
            Err(_) => {}
        }
    }
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
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        feed: FeedSignal,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(QUEUE_OPERATIONS_MAX));
        let health = Arc::new(StorageHealth::default());
        let task = tokio::spawn(run(
            store,
            receiver,
            metrics.clone(),
            permits.clone(),
            health.clone(),
            feed,
        ));
        (
            Writer {
                sender,
                permits,
                metrics,
                health,
            },
            task,
        )
    }

    /// Queues the requests as one job (they commit in the same transaction)
    /// and waits for the commit.
    pub async fn submit(&self, requests: Vec<Request>) -> Result<Vec<Outcome>, WriteError> {
        Ok(self.submit_job(requests, Vec::new()).await?.0)
    }

    /// Queues a processor's event (its operations, and its exception should
    /// the domain refuse them) and waits for the commit.
    pub async fn submit_intake(&self, write: IntakeWrite) -> Result<IntakeOutcome, WriteError> {
        let (_, mut outcomes) = self.submit_job(Vec::new(), vec![write]).await?;
        outcomes.pop().ok_or_else(|| {
            WriteError::Store(StoreError::Internal(
                "the writer answered no intake outcome".into(),
            ))
        })
    }

    async fn submit_job(
        &self,
        requests: Vec<Request>,
        intake: Vec<IntakeWrite>,
    ) -> Result<(Vec<Outcome>, Vec<IntakeOutcome>), WriteError> {
        // An intake write holds one permit even when it applies nothing: it
        // may write an exception.
        let operations = requests.len()
            + intake
                .iter()
                .map(|write| write.operations().max(1))
                .sum::<usize>();
        let count = u32::try_from(operations).map_err(|_| WriteError::Overloaded)?;
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
                intake,
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

    /// Why writes fail now, while a storage fault lasts; `None` when the
    /// last batch (or probe) succeeded.
    pub fn storage_failure(&self) -> Option<String> {
        self.health.failure()
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
    health: Arc<StorageHealth>,
    feed: FeedSignal,
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
            _ = sweep.tick() => {
                if health.failure().is_some() {
                    health.record(&store.probe_write().await.as_ref().map(|_| ()));
                    continue;
                }
                match expiry_requests(&store).await {
                    requests if requests.is_empty() => continue,
                    requests => (None, requests),
                }
            }
        };
        let size = |job: &Job| job.requests.len() + job.intake.len();
        let mut operations = first.as_ref().map_or(0, size);
        let mut jobs: Vec<Job> = first.into_iter().collect();
        while operations < COMMIT_OPERATIONS_MAX {
            match receiver.try_recv() {
                Ok(job) => {
                    operations += size(&job);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        metrics.set_queue_depth(QUEUE_OPERATIONS_MAX - permits.available_permits());
        let swept = expiring.len();
        let mut requests = expiring;
        requests.reserve(operations);
        let mut intake = Vec::new();
        let mut sizes = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            sizes.push((job.requests.len(), job.intake.len()));
            requests.append(&mut job.requests);
            intake.append(&mut job.intake);
        }
        let started = Instant::now();
        let result = if intake.is_empty() {
            store
                .execute(requests, now())
                .await
                .map(|outcomes| (outcomes, Vec::new()))
        } else {
            store.execute_with_intake(requests, intake, now()).await
        };
        metrics.observe_commit(operations + swept, started.elapsed());
        health.record(&result.as_ref().map(|_| ()));
        match result {
            Ok((outcomes, intake_outcomes)) => {
                // Whatever committed (the sweep's `EXPIRE` entries too) may
                // be new events.
                feed.notify();
                // The sweep's own outcomes answer no one.
                let mut outcomes = outcomes.into_iter().skip(swept);
                let mut intake_outcomes = intake_outcomes.into_iter();
                for (job, (plain, intake)) in jobs.into_iter().zip(sizes) {
                    let answer = (
                        outcomes.by_ref().take(plain).collect(),
                        intake_outcomes.by_ref().take(intake).collect(),
                    );
                    // A waiter that went away (client disconnected) is fine:
                    // its operation is committed and a retry will replay it.
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(error) => {
                tracing::warn!(%error, operations, swept, "batch failed; nothing in it was acknowledged");
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
