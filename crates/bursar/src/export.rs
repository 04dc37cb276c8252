//! `bursar export`: the ledger entries of a period in global order, as CSV
//! or JSON Lines, to a file or to standard output. The bytes come from the
//! same code as `GET /v1/export` (`bursar_server::export`), a page at a
//! time, so memory stays flat whatever the size. A file is written under a
//! temporary name beside it and takes its name only when complete: a failed
//! export leaves no file, and an existing file is never overwritten.

use crate::load_test::{plural, thousands};
use anyhow::Context;
use bursar_server::export::{ExportFormat, Exporter};
use bursar_server::finance::Period;
use bursar_store::Store;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// `--from` and `--to`: any RFC 3339 date-time, as the API takes them.
pub fn parse_time(text: &str) -> Result<bursar_core::Timestamp, String> {
    bursar_core::time::parse_rfc3339_any(text).ok_or_else(|| {
        format!(
            "{text:?} is not an RFC 3339 date-time such as 2026-03-01T00:00:00Z or \
             2026-03-01T09:30:00+01:00"
        )
    })
}

/// `--format`.
pub fn parse_format(text: &str) -> Result<ExportFormat, String> {
    ExportFormat::parse(text).ok_or_else(|| format!("the format is csv or jsonl, not {text:?}"))
}

/// Where the export goes.
enum Sink {
    /// A temporary file beside the output, renamed to it when complete.
    File {
        file: std::io::BufWriter<tempfile::NamedTempFile>,
        path: PathBuf,
    },
    Stdout(std::io::StdoutLock<'static>),
}

impl Sink {
    fn open(output: Option<&Path>) -> anyhow::Result<Sink> {
        let Some(path) = output else {
            return Ok(Sink::Stdout(std::io::stdout().lock()));
        };
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let file = tempfile::Builder::new()
            .prefix(".bursar-export-")
            .tempfile_in(directory)
            .with_context(|| format!("cannot write in {}", directory.display()))?;
        Ok(Sink::File {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File { file, .. } => file.write_all(bytes),
            Sink::Stdout(stdout) => stdout.write_all(bytes),
        }
    }

    /// Makes the export durable under its name (a file), or flushes it.
    fn finish(self) -> anyhow::Result<String> {
        match self {
            Sink::File { file, path } => {
                let file = file.into_inner().context("cannot write the export")?;
                file.as_file()
                    .sync_all()
                    .context("cannot write the export")?;
                file.persist_noclobber(&path)
                    .map_err(|error| error.error)
                    .with_context(|| format!("cannot name the export {}", path.display()))?;
                Ok(path.display().to_string())
            }
            Sink::Stdout(mut stdout) => {
                stdout.flush().context("cannot write to standard output")?;
                Ok("standard output".to_owned())
            }
        }
    }
}

/// The progress bar on standard error, only for a person at a terminal:
/// how far through the ledger's positions the export has read.
fn progress_bar(head: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(head, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{wide_bar}] {percent}% {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `bursar export`: exit 0 when the whole period was written.
pub async fn export(
    store: Store,
    format: ExportFormat,
    period: Period,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut sink = Sink::open(output)?;
    let head = store.event_head().await.ok();
    let bar = progress_bar(head);
    let mut exporter = Exporter::new(store, format, period);
    let mut bytes = 0u64;
    while let Some(chunk) = exporter
        .next_chunk()
        .await
        .context("the export failed; nothing was kept")?
    {
        sink.write(&chunk).context("cannot write the export")?;
        bytes += chunk.len() as u64;
        bar.set_position(exporter.position());
        bar.set_message(format!(
            "{}, {} MB",
            plural(exporter.rows(), "row", "rows"),
            thousands(bytes / 1_000_000)
        ));
    }
    bar.finish_and_clear();
    let destination = sink.finish()?;
    eprintln!(
        "bursar: exported {} ({}) in {:.1} s to {destination}",
        plural(exporter.rows(), "row", "rows"),
        plural(bytes, "byte", "bytes"),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
