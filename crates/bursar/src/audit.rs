//! The offline checks: `bursar audit` (every enrollment's chain, and with
//! `--digest FILE` everything a digest taken earlier covers) and `bursar
//! digest` (take one to keep outside bursar).

use crate::load_test::plural;
use anyhow::Context;
use bursar_core::{Digest, DigestCheck, Disagreement};
use bursar_store::{AuditReport, Store};
use serde::Serialize;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

/// The largest digest file read: a digest is about 200 bytes of JSON, so
/// anything far larger is the wrong file, refused before it is read whole.
pub const DIGEST_FILE_BYTES_MAX: u64 = 64 * 1024;

/// `bursar digest`: prints the digest of the ledger as committed now, as
/// one line of JSON — the same object `GET /v1/digest` answers.
pub async fn take(store: &Store) -> anyhow::Result<ExitCode> {
    let digest = store.digest(bursar_server::writer::now()).await?;
    println!("{}", serde_json::to_string(&digest)?);
    Ok(ExitCode::SUCCESS)
}

/// Reads a digest kept earlier: the JSON `bursar digest` prints (or `GET
/// /v1/digest` answers, or a `bursar::digest` log line's message).
pub fn read_digest(path: &Path) -> anyhow::Result<Digest> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the digest {}", path.display()))?;
    let mut text = String::new();
    file.take(DIGEST_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the digest {}", path.display()))?;
    if text.len() as u64 > DIGEST_FILE_BYTES_MAX {
        anyhow::bail!(
            "{} is not a digest: it is larger than {} KiB (a digest is one line of JSON)",
            path.display(),
            DIGEST_FILE_BYTES_MAX / 1024
        );
    }
    serde_json::from_str(&text).map_err(|error| {
        anyhow::anyhow!(
            "{} is not a digest ({error}); a digest is the JSON object bursar digest prints: \
             {{\"position\",\"entries\",\"enrollments\",\"root\",\"created_at\"}}",
            path.display()
        )
    })
}

/// `bursar audit [--digest FILE] [--json]`: exit 0 when every chain is sound
/// and the ledger still holds everything the digest covers, 1 otherwise.
pub async fn audit(store: &Store, json: bool, digest: Option<Digest>) -> anyhow::Result<ExitCode> {
    let report = store.audit().await?;
    let check = match &digest {
        Some(digest) => Some(store.check_digest(digest).await?),
        None => None,
    };
    let ok = report.ok && check.as_ref().is_none_or(|check| check.ok);
    if json {
        print_json(&report, check.as_ref(), ok)?;
    } else {
        print_text(&report, check.as_ref());
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The audit's report as `bursar audit --json` prints it; with a digest, its
/// check under `"digest"`, and `"ok"` true only when both passed.
fn print_json(report: &AuditReport, check: Option<&DigestCheck>, ok: bool) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct WithDigest<'a> {
        ok: bool,
        enrollments: u64,
        entries: u64,
        disagreements: &'a [Disagreement],
        digest: &'a DigestCheck,
    }
    let text = match check {
        None => serde_json::to_string_pretty(report)?,
        Some(check) => serde_json::to_string_pretty(&WithDigest {
            ok,
            enrollments: report.enrollments,
            entries: report.entries,
            disagreements: &report.disagreements,
            digest: check,
        })?,
    };
    println!("{text}");
    Ok(())
}

fn print_text(report: &AuditReport, check: Option<&DigestCheck>) {
    for problem in &report.disagreements {
        match problem.seq {
            Some(seq) => println!(
                "{}/{} seq {seq}: {}",
                problem.user_id, problem.course_id, problem.problem
            ),
            None => println!(
                "{}/{}: {}",
                problem.user_id, problem.course_id, problem.problem
            ),
        }
    }
    if let Some(check) = check {
        for finding in &check.findings {
            println!("digest: {}", finding.problem);
        }
    }
    println!(
        "audit {}: {}, {}, {}",
        if report.ok { "passed" } else { "FAILED" },
        plural(report.enrollments, "enrollment", "enrollments"),
        plural(report.entries, "ledger entry", "ledger entries"),
        plural(
            report.disagreements.len() as u64,
            "disagreement",
            "disagreements"
        )
    );
    if let Some(check) = check {
        let digest = &check.digest;
        let covered = format!(
            "position {}, {}, {}",
            digest.position,
            plural(digest.entries, "ledger entry", "ledger entries"),
            plural(digest.enrollments, "enrollment", "enrollments"),
        );
        if check.ok {
            println!(
                "digest matched: {covered}, root {} (taken {})",
                digest.root, digest.created_at
            );
        } else {
            println!(
                "digest FAILED: it covers {covered}; found position {}, {}, {}; {}",
                check.found.position,
                plural(check.found.entries, "ledger entry", "ledger entries"),
                plural(check.found.enrollments, "enrollment", "enrollments"),
                plural(check.findings.len() as u64, "finding", "findings"),
            );
        }
    }
}
