//! The admin page at `/admin`: served without a token with its security
//! headers (always), its committed build fresh (rebuilding `web/admin` gives
//! the same bytes), and the browser tests of `web/admin/tests` — node's test
//! runner driving Debian's Chromium through playwright-core against this
//! build's `bursar serve`. The last two need node (and Chromium): under
//! `CI=true` they fail when either is missing, elsewhere they skip with one
//! line. `npm ci` runs first when `web/admin/node_modules` is missing.

use crate::helpers::{Backend, TestApp};
use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// Where the page's sources and browser tests live.
fn web_admin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/admin")
}

/// The committed build that the server embeds.
fn committed_build() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bursar-server/admin")
}

fn chromium() -> PathBuf {
    std::env::var_os("BURSAR_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Panics under `CI=true`; elsewhere says in one line why `test` skips.
fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{test} cannot run under CI=true: {why}");
    }
    eprintln!("skipping {test}: {why}");
}

fn run(command: &mut Command) -> std::io::Result<Output> {
    command.stdin(Stdio::null()).output()
}

/// One `npm ci` at a time, and only while `node_modules` is missing.
static NPM_CI: Mutex<()> = Mutex::new(());

/// Checks that node (and, if asked, Chromium) are there and that the
/// packages are installed; `false` when the test must skip.
fn node_ready(test: &str, with_chromium: bool) -> bool {
    if !run(Command::new("node").arg("--version")).is_ok_and(|output| output.status.success()) {
        skip_or_fail(test, "node is not installed");
        return false;
    }
    if with_chromium && !chromium().exists() {
        skip_or_fail(
            test,
            &format!(
                "no Chromium at {} (apt-get install chromium, or set BURSAR_CHROMIUM)",
                chromium().display()
            ),
        );
        return false;
    }
    let _one_at_a_time = NPM_CI.lock().unwrap_or_else(|poison| poison.into_inner());
    if web_admin().join("node_modules").exists() {
        return true;
    }
    match run(Command::new("npm").arg("ci").current_dir(web_admin())) {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            skip_or_fail(
                test,
                &format!(
                    "npm ci failed in web/admin:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                ),
            );
            false
        }
        Err(error) => {
            skip_or_fail(test, &format!("npm cannot be run: {error}"));
            false
        }
    }
}

#[tokio::test]
async fn the_admin_page_is_served_without_a_token_with_its_headers() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let client = reqwest::Client::new();
    for path in ["/admin", "/admin/"] {
        let response = client.get(app.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(
            headers["content-security-policy"],
            bursar_server::admin::ADMIN_CONTENT_SECURITY_POLICY
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["cache-control"], "no-cache");
        let etag = headers["etag"].clone();
        let html = response.text().await.expect("body");
        assert!(html.contains(r#"<div id="app">"#), "{html}");
        let unchanged = client
            .get(app.url(path))
            .header("If-None-Match", etag)
            .send()
            .await
            .expect("GET");
        assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    }
    for asset in bursar_server::admin::ASSETS {
        let response = client
            .get(app.url(&format!("/admin/{}", asset.path)))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{}", asset.path);
        assert_eq!(response.headers()["content-type"], asset.content_type);
        if asset.immutable {
            assert_eq!(
                response.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
        }
        assert_eq!(response.bytes().await.expect("body"), asset.bytes);
    }
    for missing in ["/admin/assets/app.js", "/admin/assets.rs", "/admin/x/y"] {
        let response = client.get(app.url(missing)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{missing}");
    }
    // The page is public; the API behind it is not.
    let response = client.get(app.url("/v1/whoami")).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

/// Every file under `directory`, by its path relative to it.
fn files_of(directory: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).expect("read a build folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path
                    .strip_prefix(directory)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                files.push((relative, std::fs::read(&path).expect("read a built file")));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_committed_admin_build_is_fresh() {
    let test = "the admin build freshness check";
    if !node_ready(test, false) {
        return;
    }
    let output = tempfile::tempdir().expect("a temporary folder");
    let built = run(Command::new("npm")
        .args(["run", "--silent", "build", "--", "--outdir"])
        .arg(output.path())
        .current_dir(web_admin()))
    .expect("run npm run build");
    assert!(
        built.status.success(),
        "npm run build failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let fresh = files_of(output.path());
    let committed = files_of(&committed_build());
    let names = |files: &[(String, Vec<u8>)]| -> Vec<String> {
        files.iter().map(|(name, _)| name.clone()).collect()
    };
    assert_eq!(
        names(&committed),
        names(&fresh),
        "crates/bursar-server/admin is stale: run `npm run build` in web/admin and commit the result"
    );
    for ((name, committed), (_, fresh)) in committed.iter().zip(&fresh) {
        assert!(
            committed == fresh,
            "crates/bursar-server/admin/{name} differs from a fresh build: run `npm run build` in \
             web/admin and commit the result"
        );
    }
}

#[test]
fn the_admin_page_passes_its_browser_tests() {
    let test = "the admin page's browser tests";
    if !node_ready(test, true) {
        return;
    }
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-browser");
    let started = Instant::now();
    let output = run(Command::new("node")
        .args(["--test", "--test-reporter=spec", "tests/"])
        .current_dir(web_admin())
        .env("BURSAR_BIN", env!("CARGO_BIN_EXE_bursar"))
        .env("BURSAR_CHROMIUM", chromium())
        .env("BURSAR_ADMIN_ARTIFACTS", &artifacts))
    .expect("run node --test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser tests failed (screenshots in {}):\n{stdout}\n{stderr}",
        artifacts.display()
    );
    eprintln!(
        "admin browser tests passed in {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        artifacts.display()
    );
}
