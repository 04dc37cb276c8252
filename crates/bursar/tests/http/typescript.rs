//! The TypeScript client's own tests (`clients/typescript`, node's test
//! runner), run against the `bursar` binary of this build: `npm ci` when
//! `node_modules` is missing or older than the lock file, then `npm test`
//! with `BURSAR_BIN` set. Without node or npm the test skips with one line,
//! except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Instant, SystemTime};

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/typescript")
}

fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("the TypeScript client's tests cannot run under CI=true: {why}");
    }
    eprintln!("skipping the TypeScript client's tests: {why}");
}

/// `program --version`, or `None` when it cannot be run.
fn version(program: &str) -> Option<String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// npm writes `node_modules/.package-lock.json` at the end of every install:
/// an install is current when that file is newer than the package's
/// manifest and lock file (a checkout that changes them makes them newer).
fn installed_is_current(dir: &Path) -> bool {
    let Some(installed) = modified(&dir.join("node_modules/.package-lock.json")) else {
        return false;
    };
    ["package.json", "package-lock.json"]
        .iter()
        .all(|file| modified(&dir.join(file)).is_some_and(|changed| changed <= installed))
}

/// `npm ARGS` in the package, with no `BURSAR_*` setting inherited but
/// `BURSAR_BIN`.
fn npm(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new("npm");
    command.args(args).current_dir(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BURSAR_") {
            command.env_remove(name);
        }
    }
    command
        .env("BURSAR_BIN", env!("CARGO_BIN_EXE_bursar"))
        .output()
        .unwrap_or_else(|error| panic!("cannot run npm {args:?}: {error}"))
}

fn assert_success(args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "npm {} failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_typescript_client_passes_its_tests_against_this_build() {
    let (Some(node), Some(_npm)) = (version("node"), version("npm")) else {
        skip_or_fail("node and npm are needed (Node.js 20 or later)");
        return;
    };
    let dir = package_dir();
    if !installed_is_current(&dir) {
        let started = Instant::now();
        let output = npm(&dir, &["ci", "--no-audit", "--no-fund"]);
        assert_success(&["ci"], &output);
        eprintln!(
            "npm ci in clients/typescript: {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let output = npm(&dir, &["test"]);
    assert_success(&["test"], &output);
    // The runner's closing counts, on one line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let counts: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| {
            ["tests ", "pass ", "fail ", "skipped "]
                .iter()
                .any(|prefix| line.starts_with(prefix))
        })
        .collect();
    eprintln!(
        "TypeScript client on node {node}: {} in {:.1} s (build included)",
        counts.join(", "),
        started.elapsed().as_secs_f64()
    );
    assert!(
        counts.contains(&"fail 0"),
        "no closing counts in the output of npm test:\n{stdout}"
    );
    assert!(
        counts.contains(&"skipped 0"),
        "some TypeScript tests were skipped:\n{stdout}"
    );
}
