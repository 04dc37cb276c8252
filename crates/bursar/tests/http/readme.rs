//! The README's walkthrough runs as written: its shell blocks, pasted in
//! order into bash against a real server (only the address and the token
//! are replaced), succeed, refuse exactly what the story says they refuse,
//! and leave the balances the story tells.

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp};
use serde_json::Value;

/// The shell blocks between the walkthrough markers of README.md, in order.
fn walkthrough() -> String {
    let readme = include_str!("../../../../README.md");
    let begin = readme
        .find("<!-- walkthrough:begin -->")
        .expect("README.md marks where the walkthrough begins");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("README.md marks where the walkthrough ends");
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
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let script = walkthrough()
        .replace("http://127.0.0.1:8080", &app.base)
        .replace("bursar_5f0c…", ADMIN_TOKEN);
    assert!(
        script.contains(&app.base),
        "the walkthrough names the server"
    );
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .await
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the walkthrough failed:\n{stdout}\n{stderr}"
    );
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
