//! The README's walkthrough runs as written: its shell blocks, pasted in
//! order into bash against a real server (only the address and the token
//! are replaced), succeed, refuse exactly what the story says they refuse,
//! and leave the balances the story tells. Also home of the story runner
//! the checkout story shares.

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

/// The address and token placeholders the README's stories use.
const URL_PLACEHOLDER: &str = "http://127.0.0.1:8080";
const TOKEN_PLACEHOLDER: &str = "bursar_5f0c…";

/// Generous: a story may sleep for a hold to expire, on a busy machine.
const STORY_DEADLINE: Duration = Duration::from_secs(120);

/// The `sh` blocks of README.md between `<!-- {section}:begin -->` and
/// `<!-- {section}:end -->`, joined in order, with `app`'s address and the
/// admin token in place of the placeholders.
pub(crate) fn readme_story(section: &str, app: &TestApp) -> String {
    let readme = include_str!("../../../../README.md");
    let begin = readme
        .find(&format!("<!-- {section}:begin -->"))
        .unwrap_or_else(|| panic!("README.md marks where the {section} story begins"));
    let end = readme[begin..]
        .find(&format!("<!-- {section}:end -->"))
        .unwrap_or_else(|| panic!("README.md marks where the {section} story ends"))
        + begin;
    let mut script = String::new();
    let mut in_block = false;
    for line in readme[begin..end].lines() {
        match line.trim_end() {
            "```sh" => in_block = true,
            "```" => in_block = false,
            _ if in_block => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(
        script.contains(URL_PLACEHOLDER) && script.contains(TOKEN_PLACEHOLDER),
        "the {section} story names the server and the token: {script}"
    );
    script
        .replace(URL_PLACEHOLDER, &app.base)
        .replace(TOKEN_PLACEHOLDER, ADMIN_TOKEN)
}

/// Runs a story in `bash -euo pipefail`, as a reader's shell would stop at
/// the first failing command; returns what it printed.
pub(crate) async fn run_story(script: &str) -> String {
    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", script])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(STORY_DEADLINE, command.output())
        .await
        .expect("the story finished in time")
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the story failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Asserts that a story printed each of `told`, in this order.
pub(crate) fn assert_told_in_order(stdout: &str, told: &[&str]) {
    let mut from = 0;
    for outcome in told {
        let at = stdout[from..]
            .find(outcome)
            .unwrap_or_else(|| panic!("{outcome} after byte {from} of:\n{stdout}"));
        from += at + outcome.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let stdout = run_story(&readme_story("walkthrough", &app)).await;
    assert_eq!(
        stdout.matches("\"code\":\"").count(),
        1,
        "exactly one refusal, the second tab: {stdout}"
    );
    assert!(stdout.contains("\"code\":\"NOTHING_DUE\""), "{stdout}");
    assert!(
        stdout
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
        "{stdout}"
    );

    let alice = app.enrollment("alice", "rust-101").await;
    let amounts: Vec<i64> = [
        "price",
        "amount_charged",
        "amount_paid",
        "amount_credited",
        "amount_refunded",
        "amount_due",
    ]
    .iter()
    .map(|field| alice[field].as_i64().expect("an amount"))
    .collect();
    assert_eq!(amounts, [10_000, 500, 9_000, 1_500, 500, 0]);
    assert_eq!(alice["status"], "COMPLETED");
    assert_eq!(alice["access_status"], "GRANTED");
    let bob = app.enrollment("bob", "go-201").await;
    assert_eq!(bob["payment_status"], "COMPLETED");
    let carol = app.enrollment("carol", "go-201").await;
    assert_eq!(carol["status"], "CANCELLED");
    let kinds: Vec<Value> = app
        .ledger("alice", "rust-101")
        .await
        .into_iter()
        .map(|entry| entry["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        [
            "ENROLL", "PAYMENT", "CHARGE", "CREDIT", "PAYMENT", "REFUND", "CREDIT", "COMPLETE"
        ]
    );
    app.assert_audit_clean().await;
    app.stop().await;
}
