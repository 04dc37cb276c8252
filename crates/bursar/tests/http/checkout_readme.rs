//! README's "Checkout without double charges" story, run as written: the
//! `sh` blocks between `<!-- checkout:begin -->` and `<!-- checkout:end -->`,
//! pasted in order into one shell against a real server (its address and
//! token put in place of `http://127.0.0.1:8080` and the token placeholder).

use crate::helpers::{Backend, TestApp};
use crate::readme::{assert_told_in_order, readme_story, run_story};

async fn the_checkout_story_in_the_readme_runs_as_written(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let stdout = run_story(&readme_story("checkout", &app)).await;
    // Every outcome the story tells of, in its order.
    let told = [
        r#""kind":"HOLD""#,
        r#""code":"NOTHING_DUE""#,
        r#""kind":"CAPTURE""#,
        r#""state":"CAPTURED""#,
        r#""kind":"VOID""#,
        r#""kind":"EXPIRE""#,
        r#""state":"EXPIRED""#,
    ];
    assert_told_in_order(&stdout, &told);

    // What the story left: carol paid once, by one capture; dave paid
    // nothing and has nothing held.
    let carol = app.enrollment("carol", "rust-101").await;
    assert_eq!(carol["amount_paid"], 10_000, "{carol}");
    assert_eq!(carol["amount_held"], 0, "{carol}");
    let captures = app
        .ledger("carol", "rust-101")
        .await
        .into_iter()
        .filter(|entry| entry["kind"] == "CAPTURE")
        .count();
    assert_eq!(captures, 1);
    let dave = app.enrollment("dave", "rust-101").await;
    assert_eq!(dave["amount_paid"], 0, "{dave}");
    assert_eq!(dave["amount_held"], 0, "{dave}");
    assert_eq!(dave["amount_available"], 10_000, "{dave}");
    let kinds: Vec<String> = app
        .ledger("dave", "rust-101")
        .await
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(kinds, ["ENROLL", "HOLD", "VOID", "HOLD", "EXPIRE"]);
    app.assert_audit_clean().await;
}

crate::conformance!(the_checkout_story_in_the_readme_runs_as_written);
