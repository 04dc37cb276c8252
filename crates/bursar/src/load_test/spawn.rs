//! The private `bursar serve` that `load-test --spawn` starts, loads and
//! stops: this very executable on a temporary SQLite file.

use super::SPAWN_DEADLINE;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A private `bursar serve`: this very executable, on a SQLite file in a
/// temporary directory that goes when it is dropped.
pub(super) struct SpawnedServer {
    child: tokio::process::Child,
    pid: u32,
    pub(super) base: String,
    pub(super) token: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SpawnedServer {
    pub(super) async fn start() -> anyhow::Result<SpawnedServer> {
        let executable = std::env::current_exe().context("cannot find the bursar executable")?;
        let dir = tempfile::Builder::new()
            .prefix("bursar-load-test-")
            .tempdir()
            .context("failed to make a temporary directory")?;
        let database = dir.path().join("bursar.db");
        let log = dir.path().join("serve.log");
        let log_file = std::fs::File::create(&log).context("failed to create the server log")?;
        let token = bursar_server::auth::generate_token();
        let mut child = tokio::process::Command::new(executable)
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(format!("sqlite://{}", database.display()))
            .env("BURSAR_ADMIN_TOKEN", &token)
            .env_remove("BURSAR_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("failed to start bursar serve")?;
        let pid = child.id().context("bursar serve exited at once")?;
        let stdout = child.stdout.take().context("no stdout from bursar serve")?;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = tokio::time::Instant::now() + SPAWN_DEADLINE;
        let base = loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .map_err(|_| anyhow::anyhow!("bursar serve did not start listening in time"))?
                .context("cannot read the output of bursar serve")?;
            match line {
                Some(line) => {
                    if let Some(address) = line.strip_prefix("bursar listening on ") {
                        break address.trim().to_owned();
                    }
                }
                None => bail!(
                    "bursar serve exited before listening; its log:\n{}",
                    log_tail(&log)
                ),
            }
        };
        // Keep reading, so that the server never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(SpawnedServer {
            child,
            pid,
            base,
            token,
            log,
            _dir: dir,
        })
    }

    /// The server's peak resident memory so far (`VmHWM`), in bytes.
    pub(super) fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kilobytes * 1024)
    }

    /// Asks the server to stop (SIGTERM: it drains its queue) and waits; kills
    /// it if it has not stopped in time.
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("bad server pid")?;
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok()
            && let Ok(status) = tokio::time::timeout(SPAWN_DEADLINE, self.child.wait()).await
        {
            let status = status.context("failed to wait for bursar serve")?;
            if !status.success() {
                bail!(
                    "bursar serve stopped with {status}; its log:\n{}",
                    log_tail(&self.log)
                );
            }
            return Ok(());
        }
        self.child
            .kill()
            .await
            .context("failed to kill bursar serve")?;
        bail!("bursar serve did not stop on SIGTERM and was killed")
    }
}

pub(super) fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
