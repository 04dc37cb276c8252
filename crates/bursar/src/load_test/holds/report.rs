//! The report of a `--holds` run: its JSON shape and the text a person
//! reads.

use super::Verdict;
use crate::load_test::report::{LatencyReport, ServerReport, plural, thousands};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Serialize)]
pub(in crate::load_test) struct Report {
    pub(in crate::load_test) ok: bool,
    pub(in crate::load_test) config: ConfigReport,
    /// The load alone: from the first request to the last answer.
    pub(in crate::load_test) elapsed_seconds: f64,
    /// Then the wait for the holds left to expire.
    pub(in crate::load_test) expiry_wait_seconds: f64,
    pub(in crate::load_test) throughput: ThroughputReport,
    pub(in crate::load_test) flows: FlowsReport,
    pub(in crate::load_test) latency_ms: LatencyReports,
    pub(in crate::load_test) errors: ErrorsReport,
    pub(in crate::load_test) server: ServerReport,
    pub(in crate::load_test) verdict: Verdict,
}

#[derive(Serialize)]
pub(in crate::load_test) struct ConfigReport {
    pub(in crate::load_test) url: String,
    pub(in crate::load_test) spawned: bool,
    pub(in crate::load_test) clients: u32,
    pub(in crate::load_test) flows: Option<u64>,
    pub(in crate::load_test) duration_seconds: Option<f64>,
    pub(in crate::load_test) enrollments: u32,
    pub(in crate::load_test) void_percent: u8,
    pub(in crate::load_test) expire_percent: u8,
    /// The life of the holds left to expire.
    pub(in crate::load_test) expiring_hold_seconds: u32,
    pub(in crate::load_test) amount_min: i64,
    pub(in crate::load_test) amount_max: i64,
    pub(in crate::load_test) seed: u64,
    pub(in crate::load_test) run_id: String,
}

#[derive(Serialize)]
pub(in crate::load_test) struct ThroughputReport {
    /// Flows finished during the load (hold, then capture or void; or a hold
    /// left to expire), per second.
    pub(in crate::load_test) checkout_flows_per_second: f64,
    /// Of those, hold + capture.
    pub(in crate::load_test) captured_flows_per_second: f64,
    pub(in crate::load_test) requests_per_second: f64,
}

#[derive(Serialize)]
pub(in crate::load_test) struct FlowsReport {
    pub(in crate::load_test) started: u64,
    pub(in crate::load_test) finished: u64,
    pub(in crate::load_test) captured: u64,
    pub(in crate::load_test) voided: u64,
    pub(in crate::load_test) left_to_expire: u64,
    /// The sum of the acknowledged captures, in minor units.
    pub(in crate::load_test) captured_amount: i64,
}

#[derive(Serialize)]
pub(in crate::load_test) struct LatencyReports {
    /// Each request (hold, capture or void).
    pub(in crate::load_test) request: LatencyReport,
    /// Each finished flow, from its hold's first send to its last answer.
    pub(in crate::load_test) flow: LatencyReport,
}

#[derive(Serialize)]
pub(in crate::load_test) struct ErrorsReport {
    /// Steps refused, by `step CODE`.
    pub(in crate::load_test) refused: BTreeMap<String, u64>,
    pub(in crate::load_test) unknown: u64,
    pub(in crate::load_test) unknown_reason: Option<String>,
    pub(in crate::load_test) retried_unavailable: u64,
    pub(in crate::load_test) retried_timeouts: u64,
    pub(in crate::load_test) retried_connection_errors: u64,
}

/// The report for a person to read.
pub(in crate::load_test) fn render(report: &Report) -> String {
    let mut out = String::new();
    let config = &report.config;
    let flows = &report.flows;
    let _ = writeln!(
        out,
        "bursar load-test --holds: {} clients on {}, at {} (seed {})",
        config.clients,
        plural(u64::from(config.enrollments), "enrollment", "enrollments"),
        config.url,
        config.seed
    );
    let _ = writeln!(
        out,
        "  flows:      {} finished of {} started in {:.2} s: {} captured, {} voided, {} left to expire",
        thousands(flows.finished),
        thousands(flows.started),
        report.elapsed_seconds,
        thousands(flows.captured),
        thousands(flows.voided),
        thousands(flows.left_to_expire)
    );
    let throughput = &report.throughput;
    let _ = writeln!(
        out,
        "  throughput: {} checkout flows/s ({} hold + capture/s), {} requests/s",
        thousands(throughput.checkout_flows_per_second as u64),
        thousands(throughput.captured_flows_per_second as u64),
        thousands(throughput.requests_per_second as u64)
    );
    for (name, latency) in [
        ("request", &report.latency_ms.request),
        ("flow", &report.latency_ms.flow),
    ] {
        let _ = writeln!(
            out,
            "  {name:<8}    p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latency.p50, latency.p90, latency.p99, latency.max
        );
    }
    if report.expiry_wait_seconds > 0.0 {
        let _ = writeln!(
            out,
            "  expiry:     waited {:.1} s for the holds left to expire",
            report.expiry_wait_seconds
        );
    }
    if let Some(bytes) = report.server.peak_rss_bytes {
        let _ = writeln!(out, "  server:     peak RSS {} MiB", bytes / (1 << 20));
    }
    let verdict = &report.verdict;
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    let _ = writeln!(out, "verdict: {}", if verdict.ok { "PASS" } else { "FAIL" });
    let _ = writeln!(
        out,
        "  {} amount_paid is the sum of the acknowledged captures ({} minor units)",
        mark(verdict.amounts_match),
        flows.captured_amount
    );
    let _ = writeln!(
        out,
        "  {} no hold captured twice: {} captures, {} voids, {} expiries in the ledger",
        mark(verdict.captured_once),
        thousands(verdict.ledger_captures),
        thousands(verdict.ledger_voids),
        thousands(verdict.ledger_expiries)
    );
    let _ = writeln!(
        out,
        "  {} amount_held is back to 0",
        mark(verdict.holds_released)
    );
    let _ = writeln!(
        out,
        "  {} audit: {}, {}",
        mark(verdict.audit_ok),
        plural(verdict.audit_enrollments, "enrollment", "enrollments"),
        plural(verdict.audit_entries, "ledger entry", "ledger entries")
    );
    if verdict.refused > 0 || verdict.unknown_remaining > 0 {
        let _ = writeln!(
            out,
            "  FAIL {} steps refused, {} of unknown outcome",
            thousands(verdict.refused),
            thousands(verdict.unknown_remaining)
        );
    }
    for problem in &verdict.problems {
        let _ = writeln!(out, "       {problem}");
    }
    out
}
