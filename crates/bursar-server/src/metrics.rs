//! Prometheus metrics, kept in atomics and rendered in the text exposition
//! format: requests by route and status, request latency, the writer's
//! batch sizes, commit latency and queue depth, webhook attempts, and the
//! broker publisher's progress when there is one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// A histogram with fixed upper bounds.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

const LATENCY_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];
const BATCH_OPERATIONS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// `value` in the histogram's unit; `sum_micros` keeps millionths of it.
    fn observe(&self, value: f64) {
        if let Some(index) = self.bounds.iter().position(|bound| value <= *bound) {
            self.counts[index].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// Route → (method, status) → count. Looked up by `&str`, so counting a
/// request allocates nothing once its route has been seen.
type RequestCounts = BTreeMap<String, BTreeMap<(&'static str, u16), u64>>;

pub struct Metrics {
    requests: Mutex<RequestCounts>,
    request_seconds: Histogram,
    batch_operations: Histogram,
    commit_seconds: Histogram,
    queue_operations: AtomicU64,
    overloaded: AtomicU64,
    webhooks_delivered: AtomicU64,
    webhooks_failed: AtomicU64,
    /// The NATS publisher's figures, rendered only when it runs.
    pub publisher: crate::nats::PublisherMetrics,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            request_seconds: Histogram::new(LATENCY_SECONDS),
            batch_operations: Histogram::new(BATCH_OPERATIONS),
            commit_seconds: Histogram::new(LATENCY_SECONDS),
            queue_operations: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            webhooks_delivered: AtomicU64::new(0),
            webhooks_failed: AtomicU64::new(0),
            publisher: crate::nats::PublisherMetrics::default(),
        }
    }
}

impl Metrics {
    pub fn observe_request(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.request_seconds.observe(elapsed.as_secs_f64());
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let by_status = match requests.get_mut(route) {
            Some(by_status) => by_status,
            None => requests.entry(route.to_owned()).or_default(),
        };
        *by_status.entry((method, status)).or_default() += 1;
    }

    pub fn observe_commit(&self, operations: usize, elapsed: Duration) {
        self.batch_operations.observe(operations as f64);
        self.commit_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn set_queue_depth(&self, operations: usize) {
        self.queue_operations
            .store(operations as u64, Ordering::Relaxed);
    }

    /// One webhook delivery attempt, acknowledged (a 2xx) or not.
    pub fn webhook_attempt(&self, delivered: bool) {
        let counter = if delivered {
            &self.webhooks_delivered
        } else {
            &self.webhooks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, queue_depth_now: usize) -> String {
        self.set_queue_depth(queue_depth_now);
        let mut out = String::new();
        out.push_str("# HELP bursar_http_requests_total HTTP requests answered, by route, method and status.\n");
        out.push_str("# TYPE bursar_http_requests_total counter\n");
        for (route, by_status) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for ((method, status), count) in by_status {
                let _ = writeln!(
                    out,
                    "bursar_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
                );
            }
        }
        self.request_seconds.render(
            &mut out,
            "bursar_http_request_duration_seconds",
            "Time from request to response.",
        );
        self.batch_operations.render(
            &mut out,
            "bursar_writer_batch_operations",
            "Operations committed per transaction.",
        );
        self.commit_seconds.render(
            &mut out,
            "bursar_writer_commit_duration_seconds",
            "Time to decide and durably commit one batch.",
        );
        let _ = writeln!(
            out,
            "# HELP bursar_writer_queue_operations Operations waiting for the writer.\n# TYPE bursar_writer_queue_operations gauge\nbursar_writer_queue_operations {}",
            self.queue_operations.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bursar_writer_overloaded_total Writes refused because the queue was full.\n# TYPE bursar_writer_overloaded_total counter\nbursar_writer_overloaded_total {}",
            self.overloaded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bursar_webhook_attempts_total Webhook delivery attempts by this server, by outcome.\n# TYPE bursar_webhook_attempts_total counter\nbursar_webhook_attempts_total{{outcome=\"delivered\"}} {}\nbursar_webhook_attempts_total{{outcome=\"failed\"}} {}",
            self.webhooks_delivered.load(Ordering::Relaxed),
            self.webhooks_failed.load(Ordering::Relaxed)
        );
        self.publisher.render(&mut out);
        out
    }
}
