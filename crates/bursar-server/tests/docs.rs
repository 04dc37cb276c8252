//! `docs/api.md` is checked against the code: its reference tables (every
//! route with its role and statuses, every error code) are rendered from the
//! OpenAPI document and `ERROR_CODES`, and must equal what the file holds.
//! `BURSAR_BLESS=1 cargo test -p bursar-server --test docs` rewrites them.

use bursar_server::api::role_needed;
use bursar_server::error::ERROR_CODES;
use bursar_server::openapi::document;
use std::fmt::Write;

const BEGIN: &str = "<!-- generated:begin -->";
const END: &str = "<!-- generated:end -->";

fn render() -> String {
    let document = document();
    let mut out = String::new();
    out.push_str("### Routes\n\n");
    out.push_str("| method and path | role | does | statuses |\n|---|---|---|---|\n");
    let mut rows = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let method = method.to_ascii_uppercase();
            let role = if operation.get("security").is_some() {
                let method = axum::http::Method::from_bytes(method.as_bytes()).expect("a method");
                role_needed(&method, path).as_str()
            } else {
                "none"
            };
            let summary = operation["summary"]
                .as_str()
                .unwrap_or("")
                .replace('|', "\\|");
            let statuses: Vec<&str> = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(String::as_str)
                .collect();
            rows.push((
                path.clone(),
                method.clone(),
                format!(
                    "| `{method} {path}` | {role} | {summary} | {} |",
                    statuses.join(", ")
                ),
            ));
        }
    }
    rows.sort();
    for (_, _, row) in rows {
        writeln!(out, "{row}").expect("write");
    }
    out.push_str("\n### Error codes\n\n");
    out.push_str("| status | code | when |\n|---|---|---|\n");
    for (code, status, when) in ERROR_CODES {
        writeln!(out, "| {status} | `{code}` | {when} |").expect("write");
    }
    out
}

#[test]
fn docs_api_md_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md");
    let text = std::fs::read_to_string(&path).expect("docs/api.md exists");
    let begin = text
        .find(BEGIN)
        .expect("docs/api.md has a generated:begin marker")
        + BEGIN.len();
    let end = text
        .find(END)
        .expect("docs/api.md has a generated:end marker");
    let fresh = format!("\n{}", render());
    if std::env::var("BURSAR_BLESS").is_ok_and(|value| value == "1") {
        let updated = format!("{}{}{}", &text[..begin], fresh, &text[end..]);
        std::fs::write(&path, updated).expect("rewrite docs/api.md");
        return;
    }
    assert!(
        text[begin..end] == fresh,
        "docs/api.md is out of date with the OpenAPI document or ERROR_CODES; \
         run `BURSAR_BLESS=1 cargo test -p bursar-server --test docs` and review the diff"
    );
}
