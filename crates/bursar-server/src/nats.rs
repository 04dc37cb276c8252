//! The broker publisher (`--events-nats`): every event of the feed is
//! published to NATS JetStream, in position order, at least once, as subject
//! `<prefix>.<type>` with header `Nats-Msg-Id` = the event id and the event's
//! JSON (as `GET /v1/events` shows it) as body.
//!
//! - **A durable cursor.** The store keeps, per publisher (named after the
//!   stream: `nats:<stream>`), the position up to which JetStream has
//!   acknowledged every event (`bursar-store`'s `publishers.rs`). A publisher
//!   seen for the first time starts at the beginning of the feed. The cursor
//!   is saved at most once per `CURSOR_SAVE_INTERVAL` while it moves (and on
//!   a clean stop), so the database sees a few small writes a second at most.
//! - **Pipelined, in order, without gaps.** The publisher reads a page of the
//!   feed and sends every publish of it, then awaits the acks of the page
//!   before, in order, so one page is read and sent while the acks of the
//!   one before come in; an event counts as published only once
//!   acknowledged. Each publish
//!   carries `Nats-Expected-Last-Sequence` = the stream sequence of the event
//!   before it, so a publish lost with a broken connection is never
//!   overtaken by the ones sent after it on the next connection: JetStream
//!   refuses those, and the stream stays the feed's prefix, in order.
//! - **Resuming.** On any failure (NATS down, an ack that does not come
//!   within `PUBLISH_ACK_TIMEOUT`, the database) the publisher backs off
//!   (`RETRY_BACKOFF_MIN` doubling to `RETRY_BACKOFF_MAX`) and starts again
//!   after the stream's last event — which it reads from the stream — or,
//!   when the stream has none of its events (empty, or aged out), after the
//!   durable cursor. So nothing the stream holds is sent again, however long
//!   the outage; a copy that is sent again all the same (two servers at a
//!   lease's handover) is dropped by the stream's duplicate window on its
//!   `Nats-Msg-Id` (two minutes unless the operator sets another).
//! - **One publisher at a time.** A lease in the cursor's row lets one server
//!   publish; it is renewed every third of its length, and released on a
//!   clean stop. Another server takes over when it runs out (a crash). Even
//!   two publishers at once keep the stream in order: both send in order
//!   from the stream's tail, with the same expectations.
//! - **Never in the way of payments.** The publisher only reads the feed and
//!   writes its cursor; nothing on the write path waits for it. Its state
//!   shows in logs and in `/metrics` (`bursar_events_publisher_*`), not in
//!   `/readyz`, which stays about the database.

use crate::metrics::Metrics;
use async_nats::jetstream::{self, message::PublishMessage};
use bursar_core::Event;
use bursar_store::{EventQuery, Store};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The stream bursar creates when it is missing.
pub const STREAM_DEFAULT: &str = "BURSAR_EVENTS";

/// The subjects' prefix: an event goes to `<prefix>.<type>`.
pub const SUBJECT_PREFIX_DEFAULT: &str = "bursar.events";

/// How long a server holds the publisher's lease without renewing it: how
/// long the others wait before taking over from a server that crashed. Long
/// enough that a database or NATS pause of a few seconds does not move
/// publishing between servers, short enough that events keep flowing.
pub const PUBLISHER_LEASE: Duration = Duration::from_secs(10);

/// The shortest lease that may be configured: below it the renewals (every
/// third of the lease) would come faster than a busy database answers.
pub const PUBLISHER_LEASE_MIN: Duration = Duration::from_secs(2);

/// Events read and sent at once; the acks of one page are awaited while the
/// next is read and sent, so at most two pages are in flight. Acks arrive
/// within a millisecond or so on a local server; a page this size keeps the
/// connection busy meanwhile, and bounds what a failure leaves unacknowledged.
pub const PUBLISH_PAGE_EVENTS: u32 = 1000;

/// How long an ack may take. JetStream answers in milliseconds; five
/// seconds is a server that is gone or stuck, not one that is slow.
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting to NATS may take before it counts as a failure.
pub const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a clean stop waits for the publisher: the acks of the page
/// in flight (`PUBLISH_ACK_TIMEOUT`), then saving the cursor and giving up
/// the lease. Past it the publisher is abandoned: its lease runs out by
/// itself and the next publisher goes on after the stream's last event.
pub const PUBLISHER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the cursor is saved while it moves: after a crash at most this
/// much publishing is done again, well inside the stream's two-minute
/// duplicate window, and the database sees at most one small write a second.
pub const CURSOR_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The first wait after a failure; each further failure doubles it.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(250);

/// The longest wait between two attempts: events flow again at most this
/// long after NATS is back, and a NATS that stays down costs a log line and
/// a connection attempt this often.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where and how to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// The NATS server(s): `nats://HOST:PORT`, or several separated by commas.
    pub url: String,
    /// The JetStream stream the events go into, created when missing.
    pub stream: String,
    /// Events go to `<subject_prefix>.<type>`; the stream takes
    /// `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// See `PUBLISHER_LEASE`.
    pub lease: Duration,
}

impl NatsOptions {
    /// The defaults: stream `BURSAR_EVENTS`, subjects `bursar.events.>`.
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            stream: STREAM_DEFAULT.to_owned(),
            subject_prefix: SUBJECT_PREFIX_DEFAULT.to_owned(),
            lease: PUBLISHER_LEASE,
        }
    }

    /// The publisher's name in the store: one cursor per stream.
    pub fn publisher_name(&self) -> String {
        format!("nats:{}", self.stream)
    }

    /// The subjects the stream takes.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// Checks a stream name as JetStream accepts it: 1 to 255 printable
/// characters, none of them a space, `.`, `*`, `>`, `/` or `\`.
pub fn parse_stream_name(name: &str) -> Result<String, String> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c);
    if name.is_empty() || name.len() > 255 || name.chars().any(bad) {
        return Err(format!(
            "{name:?} is not a stream name: 1 to 255 characters without spaces, '.', '*', '>', '/' or '\\'"
        ));
    }
    Ok(name.to_owned())
}

/// Checks a subject prefix: tokens separated by `.`, none empty, without
/// spaces or the wildcards `*` and `>`.
pub fn parse_subject_prefix(prefix: &str) -> Result<String, String> {
    let bad_token = |token: &str| {
        token.is_empty()
            || token
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    };
    if prefix.len() > 200 || prefix.split('.').any(bad_token) {
        return Err(format!(
            "{prefix:?} is not a subject prefix: tokens separated by '.', none empty, \
             without spaces, '*' or '>' (at most 200 characters)"
        ));
    }
    Ok(prefix.to_owned())
}

/// The NATS URL as logs may show it: any `user:password@` or token is
/// replaced by `***`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| match server.rsplit_once('@') {
            Some((before, host)) => {
                let scheme = before.split_once("://").map_or("", |(scheme, _)| scheme);
                if scheme.is_empty() {
                    format!("***@{host}")
                } else {
                    format!("{scheme}://***@{host}")
                }
            }
            None => server.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The publisher's gauges and counters for `/metrics`.
#[derive(Default)]
pub struct PublisherMetrics {
    /// 1 once a publisher runs in this server.
    enabled: AtomicU64,
    published: AtomicU64,
    failures: AtomicU64,
    position: AtomicU64,
    lag: AtomicU64,
    leader: AtomicU64,
}

impl PublisherMetrics {
    pub fn render(&self, out: &mut String) {
        if self.enabled.load(Ordering::Relaxed) == 0 {
            return;
        }
        for (name, kind, help, value) in [
            (
                "bursar_events_published_total",
                "counter",
                "Events JetStream acknowledged, duplicates it dropped included.",
                &self.published,
            ),
            (
                "bursar_events_publish_failures_total",
                "counter",
                "Publishing attempts that failed (NATS unreachable, no ack in time, the database); each is retried.",
                &self.failures,
            ),
            (
                "bursar_events_publisher_position",
                "gauge",
                "The last position JetStream acknowledged, as this server knows it.",
                &self.position,
            ),
            (
                "bursar_events_publisher_lag",
                "gauge",
                "Committed events the publisher has not had acknowledged yet (0 on a server that does not hold the lease).",
                &self.lag,
            ),
            (
                "bursar_events_publisher_leader",
                "gauge",
                "1 while this server holds the publisher's lease.",
                &self.leader,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// The running publisher: stop it with [`Publisher::stop`].
pub struct Publisher {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Starts publishing in the background. `feed` wakes it when events may
    /// have been committed.
    pub fn start(
        options: NatsOptions,
        store: Store,
        feed: watch::Receiver<u64>,
        metrics: Arc<Metrics>,
    ) -> Publisher {
        let (stop, stopped) = watch::channel(false);
        metrics.publisher.enabled.store(1, Ordering::Relaxed);
        let run = Run {
            name: options.publisher_name(),
            owner: owner_id(),
            options,
            store,
            feed,
            metrics,
            stopped,
            jetstream: None,
        };
        Publisher {
            stop,
            task: tokio::spawn(run.run()),
        }
    }

    /// Finishes the page being published (its acks wait at most
    /// `PUBLISH_ACK_TIMEOUT`), saves the cursor, gives up the lease and
    /// returns; within `PUBLISHER_STOP_TIMEOUT` in any case.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(PUBLISHER_STOP_TIMEOUT, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the event publisher failed"),
            Err(_) => {
                self.task.abort();
                tracing::warn!(
                    "the event publisher did not stop in time; its lease runs out by itself"
                );
            }
        }
    }
}

/// This process's name in leases: its process id and 64 random bits.
fn owner_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    format!(
        "pid{}-{:016x}",
        std::process::id(),
        u64::from_be_bytes(bytes)
    )
}

/// Where the stream ends: its last sequence, and the position of the event
/// stored there when known.
struct Tail {
    position: Option<u64>,
    sequence: u64,
}

/// A publish sent and not yet acknowledged.
struct InFlight {
    position: u64,
    ack: jetstream::context::PublishAckFuture,
}

/// How a session ended without a failure.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// Another server holds the lease.
    Standby,
}

struct Run {
    options: NatsOptions,
    name: String,
    owner: String,
    store: Store,
    feed: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    stopped: watch::Receiver<bool>,
    /// The connection, once made: the client reconnects by itself.
    jetstream: Option<jetstream::Context>,
}

impl Run {
    async fn run(mut self) {
        tracing::info!(
            url = %redact_url(&self.options.url),
            stream = %self.options.stream,
            subjects = %self.options.stream_subjects(),
            owner = %self.owner,
            "publishing events to NATS JetStream"
        );
        let mut failures: u32 = 0;
        loop {
            let pause = match self.session().await {
                Ok(Ended::Stopped) => break,
                Ok(Ended::Standby) => {
                    if failures > 0 {
                        tracing::info!(failures, "NATS and the database answer again");
                    }
                    failures = 0;
                    self.metrics.publisher.leader.store(0, Ordering::Relaxed);
                    self.metrics.publisher.lag.store(0, Ordering::Relaxed);
                    self.options.lease / 3
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let pause = backoff(failures);
                    self.metrics
                        .publisher
                        .failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        %error,
                        failures,
                        retry_in_ms = pause.as_millis() as u64,
                        "cannot publish events to NATS JetStream; payments are not affected, and publishing resumes where the stream ends"
                    );
                    self.update_lag().await;
                    pause
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stopped.wait_for(|stopped| *stopped) => break,
            }
        }
        if let Err(error) = self.store.release_publisher(&self.name, &self.owner).await {
            tracing::warn!(%error, "cannot release the event publisher's lease; another server takes over when it ends");
        }
        self.metrics.publisher.leader.store(0, Ordering::Relaxed);
        tracing::info!("the event publisher stopped");
    }

    /// Connects when not connected, makes sure the stream exists, takes the
    /// lease and publishes until stopped, the lease is lost, or a failure.
    async fn session(&mut self) -> Result<Ended, String> {
        let jetstream = self.connect().await?;
        let mut stream = self.ensure_stream(&jetstream).await?;
        let claimed_at = Instant::now();
        let claimed = self
            .store
            .claim_publisher(&self.name, &self.owner, self.options.lease)
            .await
            .map_err(|error| format!("cannot take the publisher's lease: {error}"))?;
        let Some(mut cursor) = claimed else {
            if self.metrics.publisher.leader.load(Ordering::Relaxed) == 1 {
                tracing::info!("another server publishes the events now");
            }
            return Ok(Ended::Standby);
        };
        if self.metrics.publisher.leader.swap(1, Ordering::Relaxed) == 0 {
            tracing::info!(position = cursor, "this server publishes the events");
        }
        // The stream's own last event, when it has one, says where to go on:
        // everything up to it is in the stream, in order.
        let mut tail = self.tail(&mut stream).await?;
        let head = self
            .store
            .event_head()
            .await
            .map_err(|error| format!("cannot read the event feed: {error}"))?;
        if let Some(position) = tail.position.filter(|position| *position >= head) {
            tracing::error!(
                position,
                head,
                "the stream holds events past the end of the feed (was the database restored from a backup?): going on from the saved cursor"
            );
            tail.position = None;
        }
        match tail.position {
            Some(position) if position < cursor => tracing::warn!(
                position,
                saved = cursor,
                "the stream ends before the saved cursor (it lost messages, or they were removed): publishing again from its last event"
            ),
            Some(position) if position > cursor => tracing::info!(
                position,
                saved = cursor,
                "the stream holds events past the saved cursor: going on after them"
            ),
            _ => {}
        }
        let saved_cursor = cursor;
        cursor = tail.position.unwrap_or(cursor);
        // The stream sequence each event of this session will be stored at,
        // counted from where the stream ends: event `sent + 1 + i` follows
        // sequence `tail.sequence + i` (a copy already stored is answered at
        // the sequence it has, which is the same).
        let mut sent = cursor;
        let base = (cursor, tail.sequence);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        self.metrics
            .publisher
            .position
            .store(cursor, Ordering::Relaxed);
        let renew_every = self.options.lease / 3;
        let mut renewed = claimed_at;
        let mut saved = saved_cursor;
        loop {
            let stopping = self.stopping();
            let now = Instant::now();
            let renew = now >= renewed + renew_every;
            let save = cursor > saved && (stopping || now >= renewed + CURSOR_SAVE_INTERVAL);
            if renew || save {
                if !self.advance(cursor).await? {
                    tracing::info!("another server took the publisher's lease");
                    return Ok(Ended::Standby);
                }
                renewed = now;
                saved = cursor;
                self.update_lag().await;
            }
            if stopping {
                if in_flight.is_empty() {
                    return Ok(Ended::Stopped);
                }
                // Collect what is in flight, then save it at the loop's top.
                self.settle(&mut in_flight, 0, &mut cursor, &mut saved)
                    .await?;
                continue;
            }
            self.feed.borrow_and_update();
            let page = self
                .store
                .events(EventQuery {
                    after: sent,
                    limit: PUBLISH_PAGE_EVENTS,
                    types: Vec::new(),
                })
                .await
                .map_err(|error| format!("cannot read the event feed: {error}"))?;
            if !page.events.is_empty() {
                // This page goes out while the previous one's acks come in;
                // then those acks are collected, leaving this page in flight.
                let sending = self
                    .send(&jetstream, &page.events, base, &mut in_flight)
                    .await;
                if let Err(error) = sending {
                    self.settle(&mut in_flight, 0, &mut cursor, &mut saved)
                        .await?;
                    return Err(error);
                }
                sent = page.next_after;
                self.settle(&mut in_flight, page.events.len(), &mut cursor, &mut saved)
                    .await?;
                continue;
            }
            if !in_flight.is_empty() {
                self.settle(&mut in_flight, 0, &mut cursor, &mut saved)
                    .await?;
                continue;
            }
            {
                // Caught up: everything committed is acknowledged.
                self.metrics.publisher.lag.store(0, Ordering::Relaxed);
                let wake = if cursor > saved {
                    renewed + CURSOR_SAVE_INTERVAL
                } else {
                    renewed + renew_every
                };
                tokio::select! {
                    changed = self.feed.changed() => {
                        if changed.is_err() {
                            // The service is gone: nothing more to publish.
                            let _ = self.advance(cursor).await;
                            return Ok(Ended::Stopped);
                        }
                    }
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = self.stopped.changed() => {}
                }
            }
        }
    }

    /// Whether to stop: asked to, or the handle is gone.
    fn stopping(&self) -> bool {
        *self.stopped.borrow() || self.stopped.has_changed().is_err()
    }

    /// Saves the cursor and renews the lease; `false` when it was lost.
    async fn advance(&self, cursor: u64) -> Result<bool, String> {
        self.store
            .advance_publisher(&self.name, &self.owner, cursor, self.options.lease)
            .await
            .map_err(|error| format!("cannot save the publisher's cursor: {error}"))
    }

    async fn connect(&mut self) -> Result<jetstream::Context, String> {
        if let Some(jetstream) = &self.jetstream {
            return Ok(jetstream.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .name("bursar")
            .connection_timeout(NATS_CONNECT_TIMEOUT)
            .connect(self.options.url.as_str())
            .await
            .map_err(|error| {
                format!(
                    "cannot connect to {}: {error}",
                    redact_url(&self.options.url)
                )
            })?;
        // Two pages are in flight at most; the client also holds on to the
        // acks of a window given up after a failure until they come or time
        // out, so there is room for two windows besides, and they time out
        // as soon as awaited ones do.
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(PUBLISH_ACK_TIMEOUT)
            .ack_timeout(PUBLISH_ACK_TIMEOUT)
            .max_ack_inflight(4 * PUBLISH_PAGE_EVENTS as usize)
            .build(client);
        self.jetstream = Some(jetstream.clone());
        Ok(jetstream)
    }

    /// Creates the stream when it is missing; an existing one is used as it
    /// is (its limits and duplicate window are the operator's).
    async fn ensure_stream(
        &self,
        jetstream: &jetstream::Context,
    ) -> Result<jetstream::stream::Stream, String> {
        let subjects = self.options.stream_subjects();
        let stream = jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: self.options.stream.clone(),
                subjects: vec![subjects.clone()],
                ..Default::default()
            })
            .await
            .map_err(|error| {
                format!(
                    "cannot find or create the stream {}: {error}",
                    self.options.stream
                )
            })?;
        let config = &stream.cached_info().config;
        if !config.subjects.contains(&subjects) {
            tracing::warn!(
                stream = %self.options.stream,
                subjects = ?config.subjects,
                expected = %subjects,
                "the stream exists with other subjects; publishes it does not take fail"
            );
        }
        Ok(stream)
    }

    /// The stream's last sequence, and the position of the event stored
    /// there when it is one of this publisher's (on its subjects, with a
    /// position); `None` when the stream is empty or ends otherwise.
    async fn tail(&self, stream: &mut jetstream::stream::Stream) -> Result<Tail, String> {
        let state = stream
            .info()
            .await
            .map_err(|error| format!("cannot read the stream's state: {error}"))?
            .state
            .clone();
        let mut tail = Tail {
            position: None,
            sequence: state.last_sequence,
        };
        if state.messages == 0 {
            return Ok(tail);
        }
        // Gone (removed by the stream's limits) or not ours: no position.
        let Ok(message) = stream.get_raw_message(state.last_sequence).await else {
            return Ok(tail);
        };
        #[derive(serde::Deserialize)]
        struct Stored {
            position: u64,
        }
        let ours = message
            .subject
            .as_str()
            .strip_prefix(self.options.subject_prefix.as_str())
            .is_some_and(|rest| rest.starts_with('.'));
        if ours && let Ok(stored) = serde_json::from_slice::<Stored>(&message.payload) {
            tail.position = Some(stored.position);
        }
        Ok(tail)
    }

    /// Sends a publish for each of `events`, in order, queueing their acks.
    ///
    /// Each publish expects the stream's last sequence to be the one its
    /// predecessor is stored at (`Nats-Expected-Last-Sequence`), counted
    /// from `base` (a position and the sequence it is stored at): if a
    /// publish is lost on a connection that breaks while later ones go out
    /// on the next, those later ones are refused instead of being stored
    /// ahead of it, and the next session goes on from the stream's tail. A
    /// copy of an event still in the duplicate window is answered as a
    /// duplicate at its first sequence before the expectation is checked.
    async fn send(
        &self,
        jetstream: &jetstream::Context,
        events: &[Event],
        base: (u64, u64),
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<(), String> {
        let (base_position, base_sequence) = base;
        for event in events {
            let subject = format!(
                "{}.{}",
                self.options.subject_prefix,
                event.event_type.as_str()
            );
            let body = serde_json::to_vec(event)
                .map_err(|error| format!("cannot encode event {}: {error}", event.id))?;
            let mut message = PublishMessage::build()
                .message_id(&event.id)
                .expected_stream(&self.options.stream)
                .payload(body.into());
            // 0 would mean "no expectation": only the first event into an
            // empty stream goes without one.
            let expected = base_sequence + (event.position - base_position - 1);
            if expected > 0 {
                message = message.expected_last_sequence(expected);
            }
            let ack = jetstream
                .send_publish(subject, message)
                .await
                .map_err(|error| format!("cannot publish event {}: {error}", event.position))?;
            in_flight.push_back(InFlight {
                position: event.position,
                ack,
            });
        }
        Ok(())
    }

    /// Awaits the oldest acks, in order, until at most `keep` are in flight,
    /// moving `cursor` to each acknowledged event. On a failure the rest is
    /// dropped, and what was acknowledged is saved if the database lets it.
    async fn settle(
        &self,
        in_flight: &mut VecDeque<InFlight>,
        keep: usize,
        cursor: &mut u64,
        saved: &mut u64,
    ) -> Result<(), String> {
        while in_flight.len() > keep {
            let Some(InFlight { position, ack }) = in_flight.pop_front() else {
                break;
            };
            if let Err(error) = ack.await {
                in_flight.clear();
                if *cursor > *saved && self.advance(*cursor).await == Ok(true) {
                    *saved = *cursor;
                }
                return Err(format!("no ack for event {position}: {error}"));
            }
            *cursor = position;
            self.metrics
                .publisher
                .published
                .fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .publisher
            .position
            .store(*cursor, Ordering::Relaxed);
        Ok(())
    }

    /// The lag gauge: committed events after the last acknowledged one.
    async fn update_lag(&self) {
        if self.metrics.publisher.leader.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Ok(head) = self.store.event_head().await {
            let position = self.metrics.publisher.position.load(Ordering::Relaxed);
            let lag = head.saturating_sub(1).saturating_sub(position);
            self.metrics.publisher.lag.store(lag, Ordering::Relaxed);
        }
    }
}

/// The wait after the `failures`-th failure in a row.
fn backoff(failures: u32) -> Duration {
    RETRY_BACKOFF_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RETRY_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_prefixes_are_checked() {
        assert!(parse_stream_name("BURSAR_EVENTS").is_ok());
        for bad in ["", "A.B", "A B", "A*", "A>", "A/B"] {
            assert!(parse_stream_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_subject_prefix("bursar.events").is_ok());
        assert!(parse_subject_prefix("tenant-1.bursar").is_ok());
        for bad in ["", ".a", "a.", "a..b", "a.*", "a.>", "a b"] {
            assert!(parse_subject_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_never_reach_the_logs() {
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url("nats://user:secret@a:4222,tls://token@b:4222"),
            "nats://***@a:4222,tls://***@b:4222"
        );
        assert_eq!(redact_url("user:secret@a:4222"), "***@a:4222");
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        assert_eq!(backoff(1), RETRY_BACKOFF_MIN);
        assert_eq!(backoff(2), RETRY_BACKOFF_MIN * 2);
        assert_eq!(backoff(40), RETRY_BACKOFF_MAX);
    }
}
