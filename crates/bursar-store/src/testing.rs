//! Support for tests that need a PostgreSQL database of their own: which
//! server to use, whether it answers, and a fresh database per test that is
//! dropped afterwards; and a SQLite ledger rewritten in the layout of before
//! schema 8, to test the upgrade. Used by this crate's tests and the HTTP tests; the
//! service itself never calls it.
//!
//! Every function here blocks: it runs its work on a thread of its own with a
//! runtime of its own, so it can be called from synchronous code, from a
//! `Drop`, and from inside any async test alike.

use crate::StoreError;
use crate::postgres::PostgresOptions;
use std::future::Future;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable naming the PostgreSQL server the tests use.
pub const POSTGRES_URL_VARIABLE: &str = "BURSAR_TEST_POSTGRES_URL";

/// The server every development machine and CI runs.
pub const POSTGRES_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long the tests wait for the server to answer before deciding it is
/// not there.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The administrative URL: `BURSAR_TEST_POSTGRES_URL`, or the default.
pub fn postgres_admin_url() -> String {
    std::env::var(POSTGRES_URL_VARIABLE)
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| POSTGRES_URL_DEFAULT.to_owned())
}

/// Runs `work` to completion on a new thread with its own runtime.
fn block_on<T: Send>(work: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a test runtime")
                    .block_on(work)
            })
            .join()
            .expect("the PostgreSQL helper thread panicked")
    })
}

fn admin_options() -> PostgresOptions {
    PostgresOptions::parse(&postgres_admin_url())
        .unwrap_or_else(|error| panic!("{POSTGRES_URL_VARIABLE} is not a usable URL: {error}"))
}

async fn admin_client() -> Result<tokio_postgres::Client, StoreError> {
    let options = admin_options();
    match tokio::time::timeout(REACHABLE_TIMEOUT, options.connect()).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "{} did not answer within {} s",
            options.shown(),
            REACHABLE_TIMEOUT.as_secs()
        ))),
    }
}

/// Whether the PostgreSQL tests should run, decided once per test process.
///
/// Under `CI=true` they always run: an unreachable server is a failure, never
/// a skip. Elsewhere an unreachable server prints one line that names the
/// URL tried (password hidden) and how to point the tests elsewhere, and
/// every PostgreSQL test passes without running.
pub fn postgres_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let reached = block_on(async {
            let client = admin_client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|error| StoreError::Unavailable(error.to_string()))?;
            Ok::<(), StoreError>(())
        });
        let tried = admin_options().shown().to_owned();
        match reached {
            Ok(()) => true,
            Err(error) if std::env::var("CI").is_ok_and(|value| value == "true") => panic!(
                "CI=true and the PostgreSQL tests cannot reach {tried}: {error}; \
                 start PostgreSQL there or set {POSTGRES_URL_VARIABLE}"
            ),
            Err(error) => {
                if first_skip_of_this_run() {
                    // Written past the test harness's capture, so the skip is seen.
                    let _ = writeln!(std::io::stderr(), "{}", skip_line(&tried, &error));
                }
                false
            }
        }
    })
}

/// The one line a run without PostgreSQL prints.
fn skip_line(tried: &str, error: &StoreError) -> String {
    let how = if std::env::var_os(POSTGRES_URL_VARIABLE).is_some_and(|url| !url.is_empty()) {
        format!("(from {POSTGRES_URL_VARIABLE}); fix that URL or start that server")
    } else {
        format!(
            "(the default); start PostgreSQL there or set {POSTGRES_URL_VARIABLE}=postgres://USER@HOST:PORT/DATABASE"
        )
    };
    format!(
        "skipping the PostgreSQL tests: cannot reach {tried} {how}; set CI=true to make this a failure ({error})"
    )
}

/// Whether this is the first test binary of this `cargo test` run to skip:
/// the binaries run one after another as children of the same `cargo`, so
/// a marker file named after that parent process (its id and start time,
/// as ids are reused) says whether one has already printed the line.
fn first_skip_of_this_run() -> bool {
    let parent = std::os::unix::process::parent_id();
    // Field 22 of /proc/PID/stat, counted after the command name in
    // parentheses (which may hold spaces).
    let started = std::fs::read_to_string(format!("/proc/{parent}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1.to_owned();
            after_name.split_whitespace().nth(19).map(str::to_owned)
        })
        .unwrap_or_default();
    let marker = std::env::temp_dir().join(format!("bursar-postgres-skip-{parent}-{started}"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_ok()
}

static DATABASES: AtomicU64 = AtomicU64::new(0);

/// A database of its own for one test, on the test server; dropped (with any
/// connections still open to it) when this is dropped.
pub struct PostgresTestDb {
    name: String,
    url: String,
}

impl PostgresTestDb {
    /// Creates `bursar_test_<pid>_<n>_<time>`; panics if it cannot.
    pub fn create() -> PostgresTestDb {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() % 1_000_000)
            .unwrap_or(0);
        let name = format!(
            "bursar_test_{}_{}_{stamp}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        block_on(async {
            let client = admin_client()
                .await
                .unwrap_or_else(|error| panic!("cannot reach the test PostgreSQL: {error}"));
            // CREATE DATABASE copies a template that must have no other
            // session at the moment; a few tries ride out another test's.
            let mut tries = 0;
            loop {
                match client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                {
                    Ok(()) => break,
                    Err(error) if tries < 20 => {
                        tries += 1;
                        tracing::debug!(%error, "CREATE DATABASE failed; trying again");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => panic!("cannot create the test database {name}: {error}"),
                }
            }
        });
        let url = with_database(&postgres_admin_url(), &name);
        PostgresTestDb { name, url }
    }

    /// A fresh database name on the test server that is NOT created (for a
    /// test of creating it); dropped like any other if something made it.
    pub fn reserve() -> PostgresTestDb {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() % 1_000_000)
            .unwrap_or(0);
        let name = format!(
            "bursar_test_{}_{}_{stamp}_new",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let url = with_database(&postgres_admin_url(), &name);
        PostgresTestDb { name, url }
    }

    /// The URL of this database, for `Store::open` or `bursar serve`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs SQL statements on this database, outside bursar: for tests that
    /// inject faults (a failing trigger, say) or inspect tables directly.
    pub fn execute(&self, sql: &str) {
        let options = admin_options().with_database(&self.name);
        block_on(async {
            let client = options
                .connect()
                .await
                .unwrap_or_else(|error| panic!("cannot reach {}: {error}", self.name));
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|error| panic!("SQL on {} failed: {error}", self.name));
        });
    }
}

impl Drop for PostgresTestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A failure here only leaves a database behind; it must not turn a
        // passing test into a failing one, nor panic while unwinding.
        let dropped = block_on(async move {
            let client = admin_client().await?;
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .map_err(|error| StoreError::Internal(error.to_string()))
        });
        if let Err(error) = dropped {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop the test database {}: {error}",
                self.name
            );
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (scheme, rest) = base
        .split_once("://")
        .unwrap_or_else(|| panic!("{POSTGRES_URL_VARIABLE} must be a postgres:// URL"));
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut replaced = format!("{scheme}://{authority}/{name}");
    if let Some(query) = query {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.starts_with("dbname="))
            .collect();
        if !kept.is_empty() {
            replaced.push('?');
            replaced.push_str(&kept.join("&"));
        }
    }
    replaced
}

/// Rewrites the ledger of a SQLite database (with no store open on it) in
/// the JSON layout bursar wrote before schema 8, exactly as it wrote it, and
/// sets the schema version to 7: opening it then runs the upgrade, as on a
/// database written by a bursar of before.
pub fn sqlite_to_json_layout(path: &std::path::Path) -> Result<(), crate::StoreError> {
    let mut connection = rusqlite::Connection::open(path).map_err(crate::sqlite::map_error)?;
    let transaction = connection.transaction().map_err(crate::sqlite::map_error)?;
    crate::ledger_rows::downgrade_to_json_layout(&transaction)?;
    transaction.commit().map_err(crate::sqlite::map_error)
}

/// Rewrites the ledger of a PostgreSQL database in the JSON layout bursar
/// wrote before schema 8, exactly as it wrote it, and sets the schema
/// version to 7: opening it then runs the upgrade, as on a database written
/// by a bursar of before.
pub fn postgres_to_json_layout(url: &str) -> Result<(), StoreError> {
    let options = PostgresOptions::parse(url)?;
    block_on(async {
        let store = crate::postgres::PostgresStore::open(options).await?;
        let mut client = store.connection().await?;
        let transaction = client
            .transaction()
            .await
            .map_err(crate::postgres::read_error)?;
        crate::postgres::to_json_layout(&transaction).await?;
        transaction
            .commit()
            .await
            .map_err(crate::postgres::read_error)
    })
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database(
                "postgres://postgres@127.0.0.1:5432/test?sslmode=prefer",
                "x"
            ),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=prefer"
        );
        assert_eq!(
            with_database("postgresql://u:p@h", "x"),
            "postgresql://u:p@h/x"
        );
        assert_eq!(
            with_database("postgres://h/db?dbname=db&sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
