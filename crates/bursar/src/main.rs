//! The `bursar` command line: `serve`, `load-test`, `audit`, `token`, `backup`,
//! `migrate`.

mod load_test;

use anyhow::{Context, bail};
use bursar_server::auth::{Role, create_token};
use bursar_server::{App, connections};
use bursar_store::{DatabaseUrl, Store, redact_url};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc, also under SQLite: the write path allocates many small objects
/// per payment, and glibc's malloc spent a fifth of the writer's time on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bursar",
    version,
    about = "Records what students owe and pay for course enrollments."
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(clap::Args)]
struct DatabaseArgs {
    /// `sqlite://PATH` (the embedded default; `?synchronous=FULL|NORMAL|OFF`).
    #[arg(
        long,
        env = "BURSAR_DATABASE_URL",
        default_value = "sqlite://bursar.db"
    )]
    database: String,
}

/// Timeouts and the cap of client connections (see README, "Limits and
/// timeouts").
#[derive(clap::Args)]
struct ConnectionArgs {
    /// Seconds a client has to send a request's line and headers (from the
    /// connection, or from the first byte of a kept-alive connection's next
    /// request); slower ones are closed.
    #[arg(long, env = "BURSAR_HEADER_READ_TIMEOUT", value_name = "SECONDS",
        default_value_t = connections::HEADER_READ_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout: u64,
    /// Seconds a kept-alive connection may wait silently for its next request.
    #[arg(long, env = "BURSAR_IDLE_TIMEOUT", value_name = "SECONDS",
        default_value_t = connections::IDLE_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Seconds a request body may stall before the request is answered 408.
    #[arg(long, env = "BURSAR_BODY_READ_TIMEOUT", value_name = "SECONDS",
        default_value_t = connections::BODY_READ_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..))]
    body_read_timeout: u64,
    /// Client connections open at once at most; lowered further to stay
    /// below the open-file limit.
    #[arg(long, env = "BURSAR_CONNECTIONS_MAX", value_name = "N",
        default_value_t = connections::CONNECTIONS_MAX,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    connections_max: usize,
}

impl ConnectionArgs {
    fn options(&self) -> connections::ConnectionOptions {
        connections::ConnectionOptions {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            body_read_timeout: Duration::from_secs(self.body_read_timeout),
            connections_max: self.connections_max,
        }
    }
}

/// Raises the open-file limit to its hard limit and logs both.
fn raise_fd_limit() {
    match connections::raise_fd_limit() {
        Ok(limits) => tracing::info!(
            soft_before = limits.soft_before,
            soft = limits.soft,
            hard = limits.hard,
            "open-file limit"
        ),
        Err(error) => tracing::warn!(
            %error,
            soft = connections::fd_soft_limit(),
            "cannot raise the open-file limit"
        ),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the HTTP service.
    Serve {
        #[arg(long, env = "BURSAR_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        database: DatabaseArgs,
        /// An admin token accepted in addition to the stored ones.
        #[arg(long, env = "BURSAR_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Log lines as text or as JSON objects (to standard error).
        #[arg(long, env = "BURSAR_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
        #[command(flatten)]
        connections: ConnectionArgs,
    },
    /// Pay into one or many enrollments from many concurrent clients, then
    /// report throughput and latency and check that every acknowledged
    /// payment counts exactly once. Exits 1 if the check fails.
    LoadTest(load_test::LoadTestArgs),
    /// Replay every enrollment's ledger, verify every hash chain, and name
    /// each disagreement. Exits 1 if there is any.
    Audit {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print the report as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Write a consistent copy of the database to a new file.
    Backup {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The file to create; it must not exist.
        #[arg(long)]
        output: PathBuf,
    },
    /// Create the database if need be and apply every schema migration.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token with a role and print it (it is shown only this once).
    Create {
        #[arg(long, value_parser = ["reader", "writer", "admin"])]
        role: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BURSAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Opens a database that must already exist: the offline commands never
/// create an empty one by mistake.
async fn open_existing(url: &str) -> anyhow::Result<Store> {
    match DatabaseUrl::parse(url)? {
        DatabaseUrl::Sqlite(options) if !options.path.exists() => {
            bail!(
                "no database at {} (bursar migrate creates one)",
                options.path.display()
            )
        }
        _ => {}
    }
    Store::open(url)
        .await
        .with_context(|| format!("failed to open {}", redact_url(url)))
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: finishing requests in flight and draining the write queue");
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Commands::Serve {
            listen,
            database,
            admin_token,
            log_format,
            connections,
        } => {
            init_logs(log_format);
            raise_fd_limit();
            let app = App::open(&database.database, admin_token.as_deref())
                .await
                .with_context(|| format!("failed to open {}", redact_url(&database.database)))?
                .with_connections(connections.options());
            if let Some(token) = &app.created_admin_token {
                println!("bursar: no API token was configured, so an admin token was created.");
                println!("bursar: it is shown only this once; keep it safe:");
                println!("{token}");
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("failed to listen on {listen}"))?;
            let address = listener.local_addr()?;
            println!("bursar listening on http://{address}");
            tracing::info!(%address, backend = app.state.store.backend(), "serving");
            app.serve(listener, shutdown_signal())
                .await
                .context("server failed")?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Commands::Audit { database, json } => {
            let store = open_existing(&database.database).await?;
            let report = store.audit().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
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
                println!(
                    "audit {}: {} enrollments, {} ledger entries, {} disagreements",
                    if report.ok { "passed" } else { "FAILED" },
                    report.enrollments,
                    report.entries,
                    report.disagreements.len()
                );
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Commands::Token {
            command: TokenCommand::Create { role, database },
        } => {
            let role = Role::parse(&role).context("unknown role")?;
            // A token for a database that does not exist yet would be
            // accepted by no server: create the database first (`migrate`).
            let store = open_existing(&database.database).await?;
            let token = create_token(&store, role).await?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Commands::Backup { database, output } => {
            let store = open_existing(&database.database).await?;
            store.backup(&output).await?;
            println!("backed up to {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        Commands::LoadTest(args) => load_test::run(args).await,
        Commands::Migrate { database } => {
            Store::open(&database.database).await?;
            println!("{} is migrated", redact_url(&database.database));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bursar: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bursar: {error:#}");
            ExitCode::from(2)
        }
    }
}
