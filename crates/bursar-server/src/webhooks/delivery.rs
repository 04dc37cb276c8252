//! The delivery engine: one supervisor per server that takes the leases of
//! endpoints nobody delivers to, and one task per endpoint it holds, which
//! reads the feed from the endpoint's durable cursor (woken by the feed
//! signal, never polling), POSTs each event signed, and writes its progress
//! back under its lease.
//!
//! Ordering: an event is not sent before every earlier event of its
//! enrollment was acknowledged by this endpoint. The task keeps a window
//! of events read from the feed, one queue (lane) per enrollment, and
//! sends only the head of each lane, at most `ENDPOINT_CONCURRENCY_MAX` at
//! once. When a head fails, its lane — that event and every later one of
//! the enrollment — moves to the endpoint's pending rows, and the
//! enrollment stays blocked (its new events go there too) until the failed
//! event is acknowledged on a retry; events of other enrollments go on.
//!
//! Durability: the cursor moves past an event only in the transaction that
//! also stores every pending row at or below it, so a SIGKILL at any point
//! loses nothing; what was delivered but not yet saved is sent again (at
//! least once).

use super::client::{Answer, Connections, DeliveryClient, Signed, Target};
use super::signing;
use crate::events::FeedSignal;
use crate::metrics::Metrics;
use crate::writer::now;
use bursar_core::{EnrollmentKey, Event, Timestamp};
use bursar_store::{
    AcquiredEndpoint, DeliveryAttempt, DeliveryProgress, EndpointState, EventQuery,
    PendingDelivery, Store,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The waits between the attempts at one event: the contract's schedule,
/// then 10 h until a little over three days have passed (77 h 35 min after
/// the first attempt): an endpoint down from a Friday evening still gets
/// its events on Monday. After the last retry fails the endpoint is marked
/// `FAILING` and its deliveries pause until a replay.
pub const RETRY_DELAYS: [Duration; 12] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Deliveries one endpoint has in flight at once (each to a different
/// enrollment): enough to keep a receiver that answers in tens of
/// milliseconds busy, few enough not to flood it; also the connections
/// bursar keeps open to it.
pub const ENDPOINT_CONCURRENCY_MAX: usize = 16;

/// Events an endpoint's task holds read but not yet delivered: a few
/// batches ahead of the deliveries in flight, and bounded memory (a few
/// hundred kilobytes an endpoint).
pub const ENDPOINT_WINDOW_EVENTS_MAX: usize = 256;

/// Events of one endpoint waiting for a retry (or behind one) before its
/// task stops reading the feed: the cursor then waits, and the events wait
/// in the ledger, so nothing is lost, while the memory and rows a dead
/// endpoint takes stay bounded.
pub const ENDPOINT_PENDING_EVENTS_MAX: usize = 10_000;

/// How often a delivering task writes its progress: a crash sends at most
/// this much again, and the database sees a few small transactions a second
/// per busy endpoint rather than one per event.
pub const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_millis(200);

/// How often each server looks for endpoints to deliver to, and for the
/// ones deleted, replayed or taken over under it: a new or replayed
/// endpoint made on another server starts within this, as does a delete's
/// stop.
pub const ENDPOINT_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a server's lease on an endpoint lasts unless renewed (it renews
/// every third of it): a crashed server's endpoints resume on another after
/// at most this. A server that could not renew for half of it stops
/// delivering, so two servers never deliver at once while the database
/// answers.
pub const WEBHOOK_LEASE_DEFAULT: Duration = Duration::from_secs(30);

/// How long a graceful stop waits for the endpoints' tasks to write their
/// progress and give up their leases; deliveries in flight are abandoned
/// at once (they are sent again), so a hung receiver never holds up a stop.
pub const SHUTDOWN_SAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a task waits before reading the feed again after the database
/// failed to answer.
const READ_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Events asked for per feed read.
const EVENTS_PER_READ: usize = 200;

/// How the engine runs.
#[derive(Debug, Clone, Copy)]
pub struct WebhookOptions {
    /// Deliver to loopback, private and link-local addresses too.
    pub allow_private: bool,
    /// See `WEBHOOK_LEASE_DEFAULT`.
    pub lease: Duration,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            allow_private: false,
            lease: WEBHOOK_LEASE_DEFAULT,
        }
    }
}

/// What every endpoint task of a server shares.
struct Shared {
    store: Store,
    feed: FeedSignal,
    client: DeliveryClient,
    metrics: Arc<Metrics>,
    /// This server's name on the leases it holds.
    owner: String,
    lease: Duration,
}

/// A running endpoint task.
struct Running {
    generation: u64,
    handle: tokio::task::JoinHandle<()>,
}

/// Starts the engine; it runs until `stop` turns true, then gives its
/// endpoints back (within `SHUTDOWN_SAVE_TIMEOUT`) and ends.
pub fn start(
    store: Store,
    feed: FeedSignal,
    metrics: Arc<Metrics>,
    options: WebhookOptions,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    let owner = format!(
        "srv_{}",
        random
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    );
    let shared = Arc::new(Shared {
        store,
        feed,
        client: DeliveryClient::new(options.allow_private, ENDPOINT_CONCURRENCY_MAX),
        metrics,
        owner,
        lease: options.lease,
    });
    tokio::spawn(supervise(shared, wake, stop))
}

async fn supervise(shared: Arc<Shared>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    tracing::info!(owner = %shared.owner, "webhook delivery started");
    let mut running: HashMap<String, Running> = HashMap::new();
    while !*stop.borrow() {
        running.retain(|_, task| !task.handle.is_finished());
        match shared.store.webhook_endpoints(now()).await {
            Ok(endpoints) => {
                let current: HashMap<&str, _> = endpoints
                    .iter()
                    .map(|endpoint| (endpoint.id.as_str(), endpoint))
                    .collect();
                running.retain(|id, task| {
                    let keep = current.get(id.as_str()).is_some_and(|endpoint| {
                        endpoint.generation == task.generation
                            && endpoint.state == EndpointState::Active
                            && endpoint.lease_owner.as_deref() == Some(shared.owner.as_str())
                    });
                    if !keep {
                        // Deleted, replayed or taken over: its saves would
                        // fail anyway; stop its deliveries now.
                        task.handle.abort();
                    }
                    keep
                });
                for endpoint in &endpoints {
                    let mine = endpoint.lease_owner.as_deref() == Some(shared.owner.as_str());
                    if endpoint.state != EndpointState::Active
                        || running.contains_key(&endpoint.id)
                        || !(endpoint.lease_free || mine)
                    {
                        continue;
                    }
                    match shared
                        .store
                        .webhook_acquire(&endpoint.id, &shared.owner, shared.lease, now())
                        .await
                    {
                        Ok(Some(acquired)) => {
                            let generation = acquired.endpoint.generation;
                            let id = acquired.endpoint.id.clone();
                            let handle = tokio::spawn(deliver_endpoint(
                                shared.clone(),
                                acquired,
                                stop.clone(),
                            ));
                            running.insert(id, Running { generation, handle });
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::debug!(%error, id = %endpoint.id, "cannot take a webhook lease")
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "cannot list webhook endpoints"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ENDPOINT_SCAN_INTERVAL) => {}
            _ = wake.notified() => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    // Each task saw the stop too and is writing its progress; wait for
    // them, but not for ever.
    let deadline = Instant::now() + SHUTDOWN_SAVE_TIMEOUT;
    for (_, task) in running {
        let abort = task.handle.abort_handle();
        if tokio::time::timeout_at(deadline, task.handle)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    tracing::info!("webhook delivery stopped");
}

/// Where an event to deliver comes from.
enum Source {
    /// Read from the feed into the window.
    Window(Arc<Event>),
    /// A pending row: read again by position before sending.
    Pending,
}

/// A finished attempt, back in the endpoint's task.
struct Done {
    position: u64,
    key: EnrollmentKey,
    from_window: bool,
    /// `None`: the event could not be read (the database failed), nothing
    /// was sent and no attempt counts.
    attempt: Option<DeliveryAttempt>,
}

/// One endpoint's delivery, while this server holds its lease.
struct EndpointTask {
    shared: Arc<Shared>,
    id: String,
    generation: u64,
    types: Vec<bursar_core::EventType>,
    key: Arc<[u8]>,
    target: Arc<Target>,
    connections: Arc<Connections>,
    /// The feed has been read up to here.
    next_read: u64,
    caught_up: bool,
    read_again_at: Option<Instant>,
    /// Events read and not yet delivered, by position.
    window: BTreeMap<u64, (Arc<Event>, EnrollmentKey)>,
    /// The window's events per enrollment, oldest first.
    lanes: HashMap<EnrollmentKey, VecDeque<u64>>,
    /// Lane heads not in flight: ready to send.
    ready: BTreeSet<u64>,
    /// Pending rows per blocked enrollment, by position.
    blocked: HashMap<EnrollmentKey, BTreeMap<u64, PendingDelivery>>,
    pending_count: usize,
    /// Pending heads not in flight, by when they are due.
    due: BTreeSet<(i64, u64, EnrollmentKey)>,
    in_flight: JoinSet<Done>,
    /// What each delivery in flight is, should its task fail.
    in_flight_ids: HashMap<tokio::task::Id, (u64, EnrollmentKey, bool, u32)>,
    /// Changes not yet written.
    unsaved_pending: BTreeMap<u64, PendingDelivery>,
    unsaved_delivered: BTreeSet<u64>,
    unsaved_attempts: Vec<DeliveryAttempt>,
    saved_cursor: u64,
    last_save: Instant,
    /// When the lease was last renewed (when that save began).
    renewed_at: Instant,
}

/// Why a task ends.
enum End {
    /// Stopped gracefully: write the progress and give up the lease.
    Stop,
    /// The lease is gone (expired, replayed, deleted): write nothing.
    Lost,
    /// The retries of an event are exhausted: mark the endpoint failing.
    Failing,
}

async fn deliver_endpoint(
    shared: Arc<Shared>,
    acquired: AcquiredEndpoint,
    stop: watch::Receiver<bool>,
) {
    let AcquiredEndpoint { endpoint, pending } = acquired;
    let id = endpoint.id.clone();
    let (Some(key), Ok(target)) = (
        signing::secret_key(&endpoint.secret),
        Target::parse(&endpoint.url),
    ) else {
        tracing::error!(%id, "the webhook endpoint's secret or URL is unusable; not delivering");
        return;
    };
    let mut task = EndpointTask {
        shared,
        id: id.clone(),
        generation: endpoint.generation,
        types: endpoint.types,
        key: key.into(),
        target: Arc::new(target),
        connections: Arc::new(Connections::default()),
        next_read: endpoint.cursor,
        caught_up: false,
        read_again_at: None,
        window: BTreeMap::new(),
        lanes: HashMap::new(),
        ready: BTreeSet::new(),
        blocked: HashMap::new(),
        pending_count: 0,
        due: BTreeSet::new(),
        in_flight: JoinSet::new(),
        in_flight_ids: HashMap::new(),
        unsaved_pending: BTreeMap::new(),
        unsaved_delivered: BTreeSet::new(),
        unsaved_attempts: Vec::new(),
        saved_cursor: endpoint.cursor,
        last_save: Instant::now(),
        renewed_at: Instant::now(),
    };
    for row in pending {
        task.pending_count += 1;
        task.blocked
            .entry(row.key.clone())
            .or_default()
            .insert(row.position, row);
    }
    for (key, rows) in &task.blocked {
        if let Some((position, head)) = rows.first_key_value() {
            task.due
                .insert((head.next_attempt_at.unix_micros(), *position, key.clone()));
        }
    }
    tracing::info!(%id, cursor = endpoint.cursor, pending = task.pending_count, "delivering webhooks");
    let end = task.run(stop).await;
    task.in_flight.abort_all();
    match end {
        End::Lost => tracing::info!(%id, "webhook lease lost; delivery stops here"),
        End::Stop => {
            let _ = task.save(Finish::Release).await;
        }
        End::Failing => {
            tracing::warn!(%id, "webhook endpoint failing: its retries are exhausted; deliveries pause until a replay");
            for _ in 0..3 {
                match task.save(Finish::Failing).await {
                    Ok(_) => break,
                    Err(()) => tokio::time::sleep(READ_RETRY_DELAY).await,
                }
            }
        }
    }
}

/// How a save leaves the lease.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    Keep,
    Release,
    Failing,
}

impl EndpointTask {
    /// Every event at or below this was acknowledged, filtered out, or is
    /// in a pending row.
    fn cursor(&self) -> u64 {
        match self.window.first_key_value() {
            Some((position, _)) => position - 1,
            None => self.next_read,
        }
    }

    fn unsaved(&self) -> bool {
        !self.unsaved_pending.is_empty()
            || !self.unsaved_delivered.is_empty()
            || !self.unsaved_attempts.is_empty()
            || self.cursor() != self.saved_cursor
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> End {
        let mut signal = self.shared.feed.subscribe();
        loop {
            if *stop.borrow() {
                return End::Stop;
            }
            let now_instant = Instant::now();
            if self.renewed_at + self.shared.lease / 2 <= now_instant {
                // The lease may be about to pass to another server.
                return End::Lost;
            }
            if self.wants_read(now_instant) {
                signal.borrow_and_update();
                self.read().await;
            }
            self.start_deliveries();
            if self.next_save() <= Instant::now() {
                match self.save(Finish::Keep).await {
                    Ok(true) => {}
                    Ok(false) => return End::Lost,
                    Err(()) => {}
                }
            }
            let wake_at = self.next_wake();
            tokio::select! {
                done = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => {
                    let done = match done {
                        Some(Ok((id, done))) => {
                            self.in_flight_ids.remove(&id);
                            done
                        }
                        Some(Err(failure)) => match self.in_flight_ids.remove(&failure.id()) {
                            // A bug in the delivery (a panic): counted as a
                            // failed attempt, so it is retried on schedule.
                            Some((position, key, from_window, attempt)) => {
                                tracing::error!(%failure, id = %self.id, position, "a webhook delivery failed");
                                Done {
                                    position,
                                    key,
                                    from_window,
                                    attempt: Some(DeliveryAttempt {
                                        event_id: String::new(),
                                        position,
                                        attempt,
                                        status: None,
                                        latency_ms: 0,
                                        error: Some("internal error; it has been logged".into()),
                                        at: now(),
                                    }),
                                }
                            }
                            None => continue,
                        },
                        None => continue,
                    };
                    if self.finish(done) {
                        return End::Failing;
                    }
                }
                changed = signal.changed(), if self.caught_up => {
                    if changed.is_err() {
                        return End::Stop;
                    }
                    self.caught_up = false;
                }
                _ = tokio::time::sleep_until(wake_at) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        return End::Stop;
                    }
                }
            }
        }
    }

    /// When the progress is next written: soon after a change, and a third
    /// of the lease after the last renewal in any case; never sooner than
    /// `PROGRESS_SAVE_INTERVAL` after the last try, so a database that does
    /// not answer is not hammered.
    fn next_save(&self) -> Instant {
        let soonest = self.last_save + PROGRESS_SAVE_INTERVAL;
        if self.unsaved() {
            soonest
        } else {
            (self.renewed_at + self.shared.lease / 3).max(soonest)
        }
    }

    fn wants_read(&self, now_instant: Instant) -> bool {
        !self.caught_up
            && self.read_again_at.is_none_or(|at| at <= now_instant)
            && self.window.len() < ENDPOINT_WINDOW_EVENTS_MAX
            && self.pending_count < ENDPOINT_PENDING_EVENTS_MAX
    }

    /// The earliest moment something is due without any event: a retry,
    /// a save, a renewal, a read after a failure.
    fn next_wake(&self) -> Instant {
        if self.wants_read(Instant::now()) {
            // More of the feed to read and room for it.
            return Instant::now();
        }
        let mut wake = self
            .next_save()
            .min(self.renewed_at + self.shared.lease / 2);
        if let Some(at) = self.read_again_at {
            wake = wake.min(at);
        }
        if self.in_flight.len() < ENDPOINT_CONCURRENCY_MAX
            && let Some(&(due_at, _, _)) = self.due.first()
        {
            let wait = due_at.saturating_sub(now().unix_micros()).max(0);
            wake = wake.min(Instant::now() + Duration::from_micros(wait as u64));
        }
        wake
    }

    async fn read(&mut self) {
        let room = ENDPOINT_WINDOW_EVENTS_MAX - self.window.len();
        let query = EventQuery {
            after: self.next_read,
            limit: room.min(EVENTS_PER_READ) as u32,
            types: self.types.clone(),
        };
        let page = match self.shared.store.events(query).await {
            Ok(page) => page,
            Err(error) => {
                tracing::debug!(%error, id = %self.id, "cannot read the feed for a webhook");
                self.read_again_at = Some(Instant::now() + READ_RETRY_DELAY);
                return;
            }
        };
        self.read_again_at = None;
        if page.events.is_empty() && page.next_after == self.next_read {
            self.caught_up = true;
            return;
        }
        self.next_read = page.next_after;
        for event in page.events {
            let key = lane_of(&event);
            let position = event.position;
            if let Some(rows) = self.blocked.get_mut(&key) {
                // Behind a failed event of its enrollment: it waits there.
                let row = PendingDelivery {
                    position,
                    key,
                    attempts: 0,
                    next_attempt_at: Timestamp::from_unix_micros(0),
                };
                rows.insert(position, row.clone());
                self.unsaved_pending.insert(position, row);
                self.pending_count += 1;
                continue;
            }
            let lane = self.lanes.entry(key.clone()).or_default();
            if lane.is_empty() {
                self.ready.insert(position);
            }
            lane.push_back(position);
            self.window.insert(position, (Arc::new(event), key));
        }
    }

    fn start_deliveries(&mut self) {
        let now_micros = now().unix_micros();
        while self.in_flight.len() < ENDPOINT_CONCURRENCY_MAX {
            if let Some((due_at, _, _)) = self.due.first()
                && *due_at <= now_micros
                && let Some((_, position, key)) = self.due.pop_first()
            {
                let Some(row) = self.blocked.get(&key).and_then(|rows| rows.get(&position)) else {
                    continue;
                };
                let attempt = row.attempts + 1;
                self.spawn(position, key, attempt, Source::Pending);
                continue;
            }
            let Some(position) = self.ready.pop_first() else {
                break;
            };
            let Some((event, key)) = self.window.get(&position).cloned() else {
                continue;
            };
            self.spawn(position, key, 1, Source::Window(event));
        }
    }

    fn spawn(&mut self, position: u64, key: EnrollmentKey, attempt: u32, source: Source) {
        let shared = self.shared.clone();
        let secret = self.key.clone();
        let target = self.target.clone();
        let connections = self.connections.clone();
        let from_window = matches!(source, Source::Window(_));
        let described = (position, key.clone(), from_window, attempt);
        let handle = self.in_flight.spawn(async move {
            let event = match source {
                Source::Window(event) => event,
                Source::Pending => match read_event(&shared.store, position).await {
                    Some(event) => Arc::new(event),
                    None => {
                        return Done {
                            position,
                            key,
                            from_window,
                            attempt: None,
                        };
                    }
                },
            };
            let body = Bytes::from(serde_json::to_vec(&*event).expect("an event serializes"));
            let timestamp = now().unix_micros() / 1_000_000;
            let signature = signing::signature(&secret, &event.id, timestamp, &body);
            let started = Instant::now();
            let Answer { status, error } = shared
                .client
                .post(
                    &target,
                    &connections,
                    Signed {
                        id: &event.id,
                        timestamp,
                        signature: &signature,
                    },
                    body,
                )
                .await;
            shared.metrics.webhook_attempt(error.is_none());
            Done {
                position,
                key,
                from_window,
                attempt: Some(DeliveryAttempt {
                    event_id: event.id.clone(),
                    position,
                    attempt,
                    status,
                    latency_ms: started.elapsed().as_millis() as u64,
                    error,
                    at: now(),
                }),
            }
        });
        self.in_flight_ids.insert(handle.id(), described);
    }

    /// Takes a finished attempt in; `true` when the endpoint must be marked
    /// failing.
    fn finish(&mut self, done: Done) -> bool {
        let Done {
            position,
            key,
            from_window,
            attempt,
        } = done;
        let Some(attempt) = attempt else {
            // Not tried: due again shortly.
            let retry_at = now().unix_micros() + READ_RETRY_DELAY.as_micros() as i64;
            self.due.insert((retry_at, position, key));
            return false;
        };
        let delivered = attempt.error.is_none();
        let attempts = attempt.attempt;
        if !delivered {
            tracing::debug!(id = %self.id, event = %attempt.event_id, attempt = attempts,
                error = attempt.error.as_deref().unwrap_or(""), "webhook delivery failed");
        }
        self.unsaved_attempts.push(attempt);
        if from_window {
            let lane = self.lanes.remove(&key).unwrap_or_default();
            if delivered {
                self.window.remove(&position);
                let mut lane = lane;
                lane.pop_front();
                if let Some(&next) = lane.front() {
                    self.ready.insert(next);
                    self.lanes.insert(key, lane);
                }
                return false;
            }
            // The lane moves to the pending rows: the failed event first,
            // due after the first delay, then the ones behind it.
            let retry_at = now().unix_micros() + RETRY_DELAYS[0].as_micros() as i64;
            let rows = self.blocked.entry(key.clone()).or_default();
            for (index, queued) in lane.into_iter().enumerate() {
                self.window.remove(&queued);
                let row = PendingDelivery {
                    position: queued,
                    key: key.clone(),
                    attempts: if index == 0 { 1 } else { 0 },
                    next_attempt_at: Timestamp::from_unix_micros(if index == 0 {
                        retry_at
                    } else {
                        0
                    }),
                };
                rows.insert(queued, row.clone());
                self.unsaved_pending.insert(queued, row);
                self.pending_count += 1;
            }
            self.due.insert((retry_at, position, key));
            return false;
        }
        let Some(rows) = self.blocked.get_mut(&key) else {
            return false;
        };
        if delivered {
            rows.remove(&position);
            self.pending_count -= 1;
            self.unsaved_pending.remove(&position);
            self.unsaved_delivered.insert(position);
            match rows.first_key_value() {
                Some((next, row)) => {
                    self.due
                        .insert((row.next_attempt_at.unix_micros(), *next, key.clone()));
                }
                None => {
                    self.blocked.remove(&key);
                }
            }
            return false;
        }
        let Some(delay) = RETRY_DELAYS.get(attempts as usize - 1) else {
            return true;
        };
        let retry_at = now().unix_micros() + delay.as_micros() as i64;
        if let Some(row) = rows.get_mut(&position) {
            row.attempts = attempts;
            row.next_attempt_at = Timestamp::from_unix_micros(retry_at);
            self.unsaved_pending.insert(position, row.clone());
        }
        self.due.insert((retry_at, position, key));
        false
    }

    /// Writes the progress; `Ok(false)` when the lease is gone, `Err` when
    /// the database did not answer (the changes stay, to be written later).
    async fn save(&mut self, finish: Finish) -> Result<bool, ()> {
        let progress = DeliveryProgress {
            endpoint_id: self.id.clone(),
            owner: self.shared.owner.clone(),
            generation: self.generation,
            cursor: self.cursor(),
            pending: self.unsaved_pending.values().cloned().collect(),
            delivered: self.unsaved_delivered.iter().copied().collect(),
            attempts: self.unsaved_attempts.clone(),
            failing_since: (finish == Finish::Failing).then(now),
            release: finish == Finish::Release,
            lease: self.shared.lease,
        };
        let started = Instant::now();
        match self.shared.store.webhook_save(&progress, now()).await {
            Ok(true) => {
                self.unsaved_pending.clear();
                self.unsaved_delivered.clear();
                self.unsaved_attempts.clear();
                self.saved_cursor = progress.cursor;
                self.last_save = Instant::now();
                self.renewed_at = started;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(error) => {
                tracing::warn!(%error, id = %self.id, "cannot save webhook progress");
                self.last_save = Instant::now();
                Err(())
            }
        }
    }
}

/// The event at `position`, read from the feed; `None` when the database
/// did not answer (or the event is gone, which a ledger never allows).
async fn read_event(store: &Store, position: u64) -> Option<Event> {
    let page = store
        .events(EventQuery {
            after: position - 1,
            limit: 1,
            types: Vec::new(),
        })
        .await
        .map_err(|error| tracing::debug!(%error, position, "cannot read a pending event"))
        .ok()?;
    page.events
        .into_iter()
        .next()
        .filter(|event| event.position == position)
}

/// The queue an event waits in for its endpoint: its enrollment's, so that
/// one enrollment's events arrive in order. An intake exception that names
/// no enrollment waits in one queue of its own with the other such
/// exceptions (`:` may begin an id, so the key is a valid one).
fn lane_of(event: &bursar_core::Event) -> EnrollmentKey {
    match (&event.user_id, &event.course_id) {
        (Some(user_id), Some(course_id)) => EnrollmentKey {
            user_id: user_id.clone(),
            course_id: course_id.clone(),
        },
        _ => EnrollmentKey {
            user_id: bursar_core::UserId::parse(":intake").expect("a valid id"),
            course_id: bursar_core::CourseId::parse(":exceptions").expect("a valid id"),
        },
    }
}
