//! The report of a payments run: its JSON shape and the text a person
//! reads.

use super::Verdict;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Serialize)]
pub(super) struct Report {
    pub(super) ok: bool,
    pub(super) config: ConfigReport,
    /// The load alone: from the first request to the last answer.
    pub(super) elapsed_seconds: f64,
    pub(super) throughput: ThroughputReport,
    pub(super) payments: PaymentsReport,
    pub(super) requests: RequestsReport,
    pub(super) latency_ms: LatencyReport,
    pub(super) errors: ErrorsReport,
    pub(super) server: ServerReport,
    pub(super) verdict: Verdict,
}

#[derive(Serialize)]
pub(super) struct ConfigReport {
    pub(super) url: String,
    pub(super) spawned: bool,
    pub(super) clients: u32,
    pub(super) payments: Option<u64>,
    pub(super) duration_seconds: Option<f64>,
    pub(super) enrollments: u32,
    pub(super) batch_size: u32,
    pub(super) duplicate_percent: u8,
    pub(super) amount_min: i64,
    pub(super) amount_max: i64,
    pub(super) seed: u64,
    pub(super) run_id: String,
}

#[derive(Serialize)]
pub(super) struct ThroughputReport {
    pub(super) acknowledged_payments_per_second: f64,
    pub(super) requests_per_second: f64,
}

#[derive(Serialize)]
pub(super) struct PaymentsReport {
    /// Payments sent during the load.
    pub(super) sent: u64,
    /// Acknowledged during the load (the throughput counts these).
    pub(super) acknowledged: u64,
    pub(super) refused: u64,
    /// Of unknown outcome when the load ended.
    pub(super) unknown_after_load: u64,
    /// Of those, acknowledged or refused when resent with the same key.
    pub(super) reconciled_acknowledged: u64,
    pub(super) reconciled_refused: u64,
    /// Acknowledged in all, and their sum in minor units.
    pub(super) acknowledged_total: u64,
    pub(super) acknowledged_amount: i64,
    /// Answers marked `Idempotent-Replayed` (or `replayed` in a batch): the
    /// duplicates' second answers.
    pub(super) replayed: u64,
}

#[derive(Serialize)]
pub(super) struct RequestsReport {
    pub(super) sent: u64,
    /// Extra copies sent at the same time as the original.
    pub(super) duplicates: u64,
}

#[derive(Serialize)]
pub(super) struct LatencyReport {
    pub(super) requests: u64,
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    pub(super) p99_9: f64,
    pub(super) max: f64,
    pub(super) mean: f64,
}

#[derive(Serialize)]
pub(super) struct ErrorsReport {
    /// Payments refused, by code (after any reconciling).
    pub(super) refused: BTreeMap<String, u64>,
    /// Payments whose outcome is still unknown, and one reason why.
    pub(super) unknown: u64,
    pub(super) unknown_reason: Option<String>,
    /// Attempts retried by the client, by cause.
    pub(super) retried_unavailable: u64,
    pub(super) retried_timeouts: u64,
    pub(super) retried_connection_errors: u64,
}

#[derive(Serialize)]
pub(super) struct ServerReport {
    pub(super) url: String,
    pub(super) spawned: bool,
    /// With --spawn: the server's peak resident memory (VmHWM).
    pub(super) peak_rss_bytes: Option<u64>,
}

pub(super) fn latency_report(histogram: &Histogram<u64>) -> LatencyReport {
    let millis = |micros: u64| micros as f64 / 1000.0;
    LatencyReport {
        requests: histogram.len(),
        p50: millis(histogram.value_at_quantile(0.50)),
        p90: millis(histogram.value_at_quantile(0.90)),
        p99: millis(histogram.value_at_quantile(0.99)),
        p99_9: millis(histogram.value_at_quantile(0.999)),
        max: millis(histogram.max()),
        mean: histogram.mean() / 1000.0,
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

pub(crate) fn plural(count: u64, one: &str, many: &str) -> String {
    format!(
        "{} {}",
        thousands(count),
        if count == 1 { one } else { many }
    )
}

/// The report for a person to read.
pub(super) fn render(report: &Report) -> String {
    let mut out = String::new();
    let config = &report.config;
    let amount = match (config.payments, config.duration_seconds) {
        (Some(payments), _) => plural(payments, "payment", "payments"),
        (None, Some(seconds)) => format!("payments for {seconds} s"),
        (None, None) => String::new(),
    };
    let per_request = if config.batch_size == 1 {
        "one payment per request".to_owned()
    } else {
        format!(
            "batches of {} (/v1/batch)",
            thousands(u64::from(config.batch_size))
        )
    };
    let _ = writeln!(
        out,
        "bursar load-test: {} clients, {amount} into {}, {per_request}, {}% sent twice",
        thousands(u64::from(config.clients)),
        plural(u64::from(config.enrollments), "enrollment", "enrollments"),
        config.duplicate_percent
    );
    let _ = writeln!(
        out,
        "server           {}{}",
        report.server.url,
        if report.server.spawned {
            " (spawned: bursar serve on a temporary SQLite file)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "run              {} (seed {})",
        config.run_id, config.seed
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "throughput       {} acknowledged payments/s ({} in {:.3} s)",
        thousands(report.throughput.acknowledged_payments_per_second.round() as u64),
        thousands(report.payments.acknowledged),
        report.elapsed_seconds
    );
    let _ = writeln!(
        out,
        "requests         {} sent ({}/s), {} of them duplicates; {} payments answered as replays",
        thousands(report.requests.sent),
        thousands(report.throughput.requests_per_second.round() as u64),
        thousands(report.requests.duplicates),
        thousands(report.payments.replayed)
    );
    let latency = &report.latency_ms;
    let _ = writeln!(
        out,
        "latency          of {} requests, in ms, retries included",
        thousands(latency.requests)
    );
    for (name, value) in [
        ("p50", latency.p50),
        ("p90", latency.p90),
        ("p99", latency.p99),
        ("p99.9", latency.p99_9),
        ("max", latency.max),
    ] {
        let _ = writeln!(out, "  {name:<6} {value:>10.3}");
    }
    let payments = &report.payments;
    let _ = writeln!(
        out,
        "payments         {} sent: {} acknowledged, {} refused, {} unknown at the end of the load",
        thousands(payments.sent),
        thousands(payments.acknowledged),
        thousands(payments.refused),
        thousands(payments.unknown_after_load)
    );
    if payments.unknown_after_load > 0 {
        let _ = writeln!(
            out,
            "                 resent with their keys: {} acknowledged, {} refused, {} still unknown",
            thousands(payments.reconciled_acknowledged),
            thousands(payments.reconciled_refused),
            thousands(report.errors.unknown)
        );
    }
    let errors = &report.errors;
    let retried = [
        ("retried after 502/503/504", errors.retried_unavailable),
        ("retried after a timeout", errors.retried_timeouts),
        (
            "retried after a connection error",
            errors.retried_connection_errors,
        ),
    ];
    if errors.refused.is_empty()
        && errors.unknown == 0
        && retried.iter().all(|(_, count)| *count == 0)
    {
        let _ = writeln!(out, "errors           none");
    } else {
        let _ = writeln!(out, "errors           by code");
        for (code, count) in &errors.refused {
            let _ = writeln!(
                out,
                "  {code:<34} {:>10}  payments refused",
                thousands(*count)
            );
        }
        if errors.unknown > 0 {
            let _ = writeln!(
                out,
                "  {:<34} {:>10}  payments ({})",
                "UNKNOWN",
                thousands(errors.unknown),
                errors.unknown_reason.as_deref().unwrap_or("no answer")
            );
        }
        for (what, count) in retried.iter().filter(|(_, count)| *count > 0) {
            let _ = writeln!(out, "  {what:<34} {:>10}  attempts", thousands(*count));
        }
    }
    if let Some(bytes) = report.server.peak_rss_bytes {
        let _ = writeln!(
            out,
            "server memory    peak RSS {:.1} MiB",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    let verdict = &report.verdict;
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "verdict          {}",
        if verdict.ok { "OK" } else { "FAILED" }
    );
    let _ = writeln!(
        out,
        "  {} amount_paid of {} equals the sum of its acknowledged payments ({} minor units in all)",
        mark(verdict.amounts_match),
        plural(
            verdict.enrollments_checked,
            "enrollment",
            "each of the enrollments"
        ),
        thousands(payments.acknowledged_amount.max(0) as u64)
    );
    let _ = writeln!(
        out,
        "  {} the ledger holds each of {} acknowledged keys exactly once ({} payment entries)",
        mark(verdict.ledger_keys_once),
        thousands(payments.acknowledged_total),
        thousands(verdict.ledger_payments)
    );
    let _ = writeln!(
        out,
        "  {} audit: {}, {}",
        mark(verdict.audit_ok),
        plural(verdict.audit_enrollments, "enrollment", "enrollments"),
        plural(verdict.audit_entries, "ledger entry", "ledger entries")
    );
    if verdict.unknown_remaining > 0 {
        let _ = writeln!(
            out,
            "  FAIL {} payments of unknown outcome",
            thousands(verdict.unknown_remaining)
        );
    }
    for problem in &verdict.problems {
        let _ = writeln!(out, "       {problem}");
    }
    out
}
