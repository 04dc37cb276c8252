//! The `bursar` command line: `serve`, `load-test`, `audit`, `digest`,
//! `export`, `token`, `backup`, `migrate`, `openapi`.

mod audit;
mod export;
mod load_test;

use anyhow::{Context, bail};
use bursar_server::auth::{Role, make_token};
use bursar_server::digest::DIGEST_EVERY_SECONDS_MAX;
use bursar_server::tokens::{TokenView, parse_duration, parse_lifetime};
use bursar_server::{App, connections, nats, webhooks};
use bursar_store::{DatabaseUrl, Store, redact_url};
use clap::{Parser, Subcommand, ValueEnum};
use load_test::plural;
use std::io::IsTerminal;
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
    /// The database: `sqlite://PATH` (the embedded default; a relative path,
    /// or `sqlite:///ABSOLUTE/PATH`; `?synchronous=FULL|NORMAL|OFF`), or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=…` for a
    /// database many servers share.
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

/// Publishing every event to NATS JetStream (see README, "Consume events
/// from NATS JetStream").
#[derive(clap::Args)]
struct NatsArgs {
    /// Publish every event to NATS JetStream at this URL
    /// (`nats://HOST:4222`; several servers separated by commas), in order,
    /// at least once, with `Nats-Msg-Id` = the event id.
    #[arg(
        long,
        env = "BURSAR_EVENTS_NATS",
        value_name = "URL",
        hide_env_values = true
    )]
    events_nats: Option<String>,
    /// The JetStream stream the events go into; created (file storage, the
    /// server's defaults) when missing. Another name per deployment lets
    /// several deployments share one NATS.
    #[arg(long, env = "BURSAR_EVENTS_NATS_STREAM", value_name = "NAME",
        default_value = nats::STREAM_DEFAULT, value_parser = nats::parse_stream_name)]
    events_nats_stream: String,
    /// Events go to `PREFIX.<type>` (say `bursar.events.payment.recorded`);
    /// the stream takes `PREFIX.>`. Another prefix per deployment lets
    /// several deployments share one NATS.
    #[arg(long, env = "BURSAR_EVENTS_NATS_SUBJECT_PREFIX", value_name = "PREFIX",
        default_value = nats::SUBJECT_PREFIX_DEFAULT, value_parser = nats::parse_subject_prefix)]
    events_nats_subject_prefix: String,
    /// Seconds a server holds the publishing lease without renewing it: how
    /// long the other servers on the database wait before taking over from
    /// one that crashed.
    #[arg(long, env = "BURSAR_EVENTS_NATS_LEASE", value_name = "SECONDS",
        default_value_t = nats::PUBLISHER_LEASE.as_secs(),
        value_parser = clap::value_parser!(u64).range(nats::PUBLISHER_LEASE_MIN.as_secs()..=3600))]
    events_nats_lease: u64,
}

impl NatsArgs {
    fn options(&self) -> Option<nats::NatsOptions> {
        let url = self.events_nats.as_ref().filter(|url| !url.is_empty())?;
        Some(nats::NatsOptions {
            url: url.clone(),
            stream: self.events_nats_stream.clone(),
            subject_prefix: self.events_nats_subject_prefix.clone(),
            lease: Duration::from_secs(self.events_nats_lease),
        })
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

/// Webhook delivery (see README, "Webhooks").
#[derive(clap::Args)]
struct WebhookArgs {
    /// Let webhooks reach loopback, private (RFC 1918, fc00::/7) and
    /// link-local addresses. Off by default, so that no token holder can
    /// make bursar probe the internal network; for receivers inside it, or
    /// tests on one machine.
    #[arg(long, env = "BURSAR_WEBHOOKS_ALLOW_PRIVATE")]
    webhooks_allow_private: bool,
    /// Seconds a server's lease on a webhook endpoint lasts (renewed every
    /// third of it): after a crash, another server (or this one restarted)
    /// resumes the endpoint's deliveries within this.
    #[arg(long, env = "BURSAR_WEBHOOKS_LEASE", value_name = "SECONDS",
        default_value_t = webhooks::WEBHOOK_LEASE_DEFAULT.as_secs(),
        value_parser = clap::value_parser!(u64).range(2..=600))]
    webhooks_lease: u64,
}

impl WebhookArgs {
    fn options(&self) -> webhooks::WebhookOptions {
        webhooks::WebhookOptions {
            allow_private: self.webhooks_allow_private,
            lease: Duration::from_secs(self.webhooks_lease),
        }
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
    #[command(after_help = "Environment:\n  \
        BURSAR_LOG  which log lines to write, as a tracing filter (default `info,tokio_postgres=warn`; \
        for example `debug` or `info,bursar_server=debug`)")]
    Serve {
        /// The address and port to listen on; port 0 picks a free one. The
        /// port is taken before anything else, so a busy port fails at once.
        #[arg(long, env = "BURSAR_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        database: DatabaseArgs,
        /// The operator's break-glass admin token, accepted besides the
        /// stored ones. It is not stored, so it cannot be listed or revoked
        /// through the API; with it set, no admin token is made on the first
        /// start.
        #[arg(long, env = "BURSAR_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Log lines as text or as JSON objects (to standard error).
        #[arg(long, env = "BURSAR_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
        #[command(flatten)]
        connections: ConnectionArgs,
        /// Log a digest of the ledger at this interval (`30m`, `1h`, `1d`;
        /// from 1s to 366 days): one line at info level with the target
        /// `bursar::digest` whose message is the digest's JSON, to ship and
        /// keep outside bursar. Each digest reads the whole ledger.
        #[arg(long, env = "BURSAR_DIGEST_EVERY", value_name = "DURATION",
            value_parser = parse_digest_every)]
        digest_every: Option<u64>,
        #[command(flatten)]
        webhooks: WebhookArgs,
        /// The signing secrets of the Stripe webhook endpoint that calls
        /// `POST /v1/intake/stripe` (`whsec_…`), comma-separated: while a
        /// secret is rotated, give the old and the new one, then drop the
        /// old. Without any, the intake answers 503 INTAKE_NOT_CONFIGURED.
        #[arg(
            long,
            env = "BURSAR_STRIPE_WEBHOOK_SECRETS",
            hide_env_values = true,
            value_delimiter = ',',
            value_name = "SECRETS"
        )]
        stripe_webhook_secrets: Vec<String>,
        #[command(flatten)]
        nats: NatsArgs,
        /// Benchmarks only: answer payments without recording them, to
        /// measure the HTTP stack alone (bench/run.py case 0). Hidden.
        #[arg(long, hide = true)]
        bench_http_ceiling: bool,
    },
    /// Pay into one or many enrollments from many concurrent clients, then
    /// report throughput and latency and check that every acknowledged
    /// payment counts exactly once. Exits 1 if the check fails.
    LoadTest(load_test::LoadTestArgs),
    /// Replay every enrollment's ledger, verify every hash chain, and name
    /// each disagreement; with --digest, also prove that every entry the
    /// digest covers is still there, unchanged. Exits 1 if anything
    /// disagrees.
    Audit {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print the report as one JSON document.
        #[arg(long)]
        json: bool,
        /// A digest taken earlier (`bursar digest`, `GET /v1/digest`): name
        /// every entry it covers that is missing (a gap in positions, a
        /// truncated tail) and any difference in its counts or root.
        #[arg(long, value_name = "FILE")]
        digest: Option<PathBuf>,
    },
    /// Print a digest of the ledger as committed now, one line of JSON
    /// (`{"position","entries","enrollments","root","created_at"}`): keep it
    /// outside bursar, and check the database against it later with
    /// `bursar audit --digest FILE`.
    Digest {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Write the ledger entries of a period (`from <= created_at < to`) in
    /// global order, as CSV (a header line, then one row per entry) or JSON
    /// Lines (one object per line): the same bytes `GET /v1/export` serves.
    /// Streamed: memory stays flat whatever the size. A progress bar shows
    /// on a terminal, and one line of rows, bytes and seconds at the end.
    Export {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The start of the period, included (any RFC 3339 date-time, such
        /// as 2026-03-01T00:00:00Z or 2026-03-01T00:00:00+01:00); default
        /// the beginning of the ledger.
        #[arg(long, value_name = "TIME", value_parser = export::parse_time)]
        from: Option<bursar_core::Timestamp>,
        /// The end of the period, excluded; default now. Neither bound may
        /// be in the future.
        #[arg(long, value_name = "TIME", value_parser = export::parse_time)]
        to: Option<bursar_core::Timestamp>,
        /// csv or jsonl. CSV puts a `'` before a text that starts with =, +,
        /// -, @, a tab or a carriage return, so spreadsheets show it as
        /// text; JSON Lines keeps every text exact.
        #[arg(long, default_value = "csv", value_parser = export::parse_format)]
        format: bursar_server::export::ExportFormat,
        /// The file to write (it must not exist; it appears only once the
        /// export is complete); default standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Make, list and revoke API tokens.
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
    /// Print the OpenAPI 3.0 document that `GET /openapi.json` serves, as
    /// one line of JSON, without a server or a database (the TypeScript
    /// client's types are generated from it).
    Openapi,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token with a role and print its secret (shown only this once;
    /// its id goes to standard error).
    Create {
        /// reader: reads; writer: reads and every operation; admin:
        /// everything, including the audit and the tokens.
        #[arg(long, value_parser = ["reader", "writer", "admin"])]
        role: String,
        /// How long the token lives: `3600s`, `90m`, `12h`, `30d` (at most
        /// 3650 days). Without it the token does not expire.
        #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
        expires_in: Option<u64>,
        /// Print `{"id","token","role","created_at","expires_at"}` as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List every token: id, role, when it was made, when it expires,
    /// whether it is revoked. Never a secret.
    List {
        /// Print `{"tokens":[…]}` as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke a token by its id (`tok_…`): every server on the database
    /// refuses it within a second. (The break-glass BURSAR_ADMIN_TOKEN is
    /// not stored; remove it from the configuration instead.)
    Revoke {
        /// The token's id, as `token create` and `token list` show it.
        id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// `--digest-every`: a duration as token lifetimes are written.
fn parse_digest_every(text: &str) -> Result<u64, String> {
    parse_duration(text, "--digest-every", DIGEST_EVERY_SECONDS_MAX)
}

/// The log filter without `BURSAR_LOG`: information from bursar, and only
/// warnings from the PostgreSQL driver, which otherwise logs every `NOTICE`
/// the server sends (such as "relation already exists, skipping" on each
/// start) at the information level.
const LOG_FILTER_DEFAULT: &str = "info,tokio_postgres=warn";

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BURSAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_FILTER_DEFAULT));
    // Colours only for a person at a terminal, never into a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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

async fn token_command(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            role,
            expires_in,
            json,
            database,
        } => {
            let role = Role::parse(&role).context("unknown role")?;
            // A token for a database that does not exist yet would be
            // accepted by no server: create the database first (`migrate`).
            let store = open_existing(&database.database).await?;
            let made = make_token(&store, role, expires_in).await?;
            if json {
                let body = serde_json::json!({
                    "id": made.record.id,
                    "token": made.secret,
                    "role": made.record.role,
                    "created_at": made.record.created_at,
                    "expires_at": made.record.expires_at,
                });
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                let expires = made
                    .record
                    .expires_at
                    .map_or_else(|| "never expires".to_owned(), |at| format!("expires {at}"));
                eprintln!(
                    "bursar: token {} ({}, {expires}); its secret is shown only this once:",
                    made.record.id, made.record.role
                );
                println!("{}", made.secret);
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { json, database } => {
            let store = open_existing(&database.database).await?;
            let now = bursar_server::writer::now();
            let tokens: Vec<TokenView> = store
                .tokens()
                .await?
                .iter()
                .map(|record| TokenView::of(record, now))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "tokens": tokens }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<21} {:<6} {:<27} {:<27} REVOKED",
                "ID", "ROLE", "CREATED", "EXPIRES"
            );
            for token in &tokens {
                let expires = match token.expires_at {
                    None => "never".to_owned(),
                    Some(at) if token.expired => format!("{at} (expired)"),
                    Some(at) => at.to_string(),
                };
                let revoked = token
                    .revoked_at
                    .map_or_else(|| "no".to_owned(), |at| at.to_string());
                println!(
                    "{:<21} {:<6} {:<27} {:<27} {revoked}",
                    token.id,
                    token.role,
                    token.created_at.to_string(),
                    expires
                );
            }
            println!("{}", plural(tokens.len() as u64, "token", "tokens"));
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, database } => {
            let store = open_existing(&database.database).await?;
            match store
                .revoke_token(&id, bursar_server::writer::now())
                .await?
            {
                Some(record) => {
                    println!(
                        "revoked {} ({}); every server on the database refuses it within a second",
                        record.id, record.role
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("bursar: no token has the id {id:?} (bursar token list shows them)");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
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
            digest_every,
            webhooks,
            stripe_webhook_secrets,
            nats,
            bench_http_ceiling,
        } => {
            init_logs(log_format);
            raise_fd_limit();
            // The port first: when it is taken, fail before the database is
            // opened (or created) and before any token is made.
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("failed to listen on {listen}"))?;
            let intake = bursar_server::intake::IntakeOptions {
                stripe_webhook_secrets,
            };
            let mut app = App::open_with(&database.database, admin_token.as_deref(), &intake)
                .await
                .with_context(|| format!("failed to open {}", redact_url(&database.database)))?
                .with_connections(connections.options())
                .with_webhooks(webhooks.options());
            if let Some(options) = nats.options() {
                app = app.with_nats(options);
            }
            if bench_http_ceiling {
                app = app.with_http_ceiling();
            }
            if webhooks.webhooks_allow_private {
                tracing::warn!(
                    "webhooks may reach loopback, private and link-local addresses \
                     (--webhooks-allow-private)"
                );
            }
            if let Some(token) = &app.created_admin_token {
                println!(
                    "bursar: no API token was configured, so an admin token was created (id {}).",
                    token.record.id
                );
                println!("bursar: it is shown only this once; keep it safe:");
                println!("{}", token.secret);
            }
            let address = listener.local_addr()?;
            println!("bursar listening on http://{address}");
            tracing::info!(%address, backend = app.state.store.backend(), "serving");
            if let Some(seconds) = digest_every {
                tracing::info!(every_seconds = seconds, "logging a digest of the ledger");
                bursar_server::digest::log_digests(
                    app.state.store.clone(),
                    Duration::from_secs(seconds),
                );
            }
            if app.state.intake.stripe.is_none() {
                tracing::info!(
                    "no Stripe webhook secret is configured: POST /v1/intake/stripe answers 503"
                );
            }
            app.serve(listener, shutdown_signal())
                .await
                .context("server failed")?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Commands::Audit {
            database,
            json,
            digest,
        } => {
            // The file first: a wrong path fails before the database is read.
            let digest = digest.as_deref().map(audit::read_digest).transpose()?;
            let store = open_existing(&database.database).await?;
            audit::audit(&store, json, digest).await
        }
        Commands::Digest { database } => {
            let store = open_existing(&database.database).await?;
            audit::take(&store).await
        }
        Commands::Export {
            database,
            from,
            to,
            format,
            output,
        } => {
            let period =
                bursar_server::finance::Period::new(from, to, bursar_server::writer::now())
                    .map_err(anyhow::Error::msg)?;
            // Checked before the database is opened, as backup does.
            if let Some(output) = &output
                && output.exists()
            {
                bail!(
                    "the output path {} exists already; export never overwrites a file",
                    output.display()
                );
            }
            let store = open_existing(&database.database).await?;
            export::export(store, format, period, output.as_deref()).await
        }
        Commands::Token { command } => token_command(command).await,
        Commands::Backup { database, output } => {
            // Checked before the database is opened, so the message is about
            // the output path, not the database.
            if output.exists() {
                bail!(
                    "the output path {} exists already; backup never overwrites a file",
                    output.display()
                );
            }
            let store = open_existing(&database.database).await?;
            store.backup(&output).await?;
            println!("backed up to {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        Commands::LoadTest(args) => load_test::run(args).await,
        Commands::Migrate { database } => {
            let shown = redact_url(&database.database);
            let (_store, created) = Store::create_and_open(&database.database)
                .await
                .with_context(|| format!("failed to migrate {shown}"))?;
            if created {
                println!("{shown} was created and is migrated");
            } else {
                println!("{shown} is migrated");
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Openapi => {
            // Written, not printed: a reader that closes the pipe early (say
            // `| head`) is an error to report, not a panic.
            use std::io::Write as _;
            let document = serde_json::to_string(bursar_server::openapi::document())?;
            writeln!(std::io::stdout().lock(), "{document}")
                .context("failed to write the document")?;
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
