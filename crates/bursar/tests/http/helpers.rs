//! Test helpers: a fresh database per test, a bursar service on port 0, an
//! HTTP client, and the `conformance!` macro that runs one test body on every
//! backend.

#![allow(dead_code)]

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

/// The storage backends every conformance test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test; removed when dropped. `path` is the
/// SQLite file, `None` on PostgreSQL.
pub struct TestDb {
    pub url: String,
    pub path: Option<std::path::PathBuf>,
    _dir: Option<tempfile::TempDir>,
    _postgres: Option<bursar_store::testing::PostgresTestDb>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("bursar.db");
                TestDb {
                    url: format!("sqlite://{}", path.display()),
                    path: Some(path),
                    _dir: Some(dir),
                    _postgres: None,
                }
            }
            Backend::Postgres => {
                let database = bursar_store::testing::PostgresTestDb::create();
                TestDb {
                    url: database.url().to_owned(),
                    path: None,
                    _dir: None,
                    _postgres: Some(database),
                }
            }
        }
    }
}

impl TestDb {
    /// Runs SQL statements on the database behind bursar's back (SQLite
    /// through rusqlite on the file, PostgreSQL through tokio-postgres), in
    /// one transaction: for tests that tamper with stored data. Run it while
    /// no server writes (stopped, or on a copy).
    pub fn execute(&self, sql: &str) {
        match (&self.path, &self._postgres) {
            (Some(path), _) => {
                let connection = rusqlite::Connection::open(path).expect("open the database");
                connection
                    .execute_batch(&format!("BEGIN; {sql}; COMMIT;"))
                    .unwrap_or_else(|error| panic!("SQL failed: {error}: {sql}"));
            }
            (None, Some(postgres)) => postgres.execute(&format!("BEGIN; {sql}; COMMIT;")),
            (None, None) => panic!("this database was handed on"),
        }
    }
}

/// Runs each named `async fn name(backend: Backend)` once per backend, as
/// `sqlite::name` and `postgres::name`. Without a reachable PostgreSQL the
/// `postgres::` tests pass without running, after one line saying how to
/// enable them; under `CI=true` they fail instead.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !bursar_store::testing::postgres_available() {
                        return;
                    }
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A bursar service in this process on 127.0.0.1:0 over a fresh database.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub backend: Backend,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

static KEYS: AtomicU64 = AtomicU64::new(0);

/// The intake's options with these Stripe webhook secrets.
pub fn intake_options(secrets: &[&str]) -> bursar_server::intake::IntakeOptions {
    bursar_server::intake::IntakeOptions {
        stripe_webhook_secrets: secrets.iter().map(|secret| (*secret).to_owned()).collect(),
    }
}

/// A fresh idempotency key, unique within the test process.
pub fn new_key() -> String {
    format!(
        "key-{}-{}",
        std::process::id(),
        KEYS.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        let db = TestDb::new(backend).await;
        TestApp::spawn_on(db, backend).await
    }

    pub async fn spawn_on(db: TestDb, backend: Backend) -> TestApp {
        TestApp::spawn_configured(db, backend, |app| app).await
    }

    /// A service whose payment intake takes Stripe events signed with one of
    /// `secrets`.
    pub async fn spawn_with_intake(backend: Backend, secrets: &[&str]) -> TestApp {
        let db = TestDb::new(backend).await;
        TestApp::spawn_on_with(db, backend, &intake_options(secrets), |app| app).await
    }

    /// A service on `db` set up by `configure` (webhook delivery, say)
    /// before it serves.
    pub async fn spawn_configured(
        db: TestDb,
        backend: Backend,
        configure: impl FnOnce(bursar_server::App) -> bursar_server::App,
    ) -> TestApp {
        let intake = bursar_server::intake::IntakeOptions::default();
        TestApp::spawn_on_with(db, backend, &intake, configure).await
    }

    /// A service on `db` with these intake options, set up by `configure`.
    pub async fn spawn_on_with(
        db: TestDb,
        backend: Backend,
        intake: &bursar_server::intake::IntakeOptions,
        configure: impl FnOnce(bursar_server::App) -> bursar_server::App,
    ) -> TestApp {
        let app = configure(
            bursar_server::App::open_with(&db.url, Some(ADMIN_TOKEN), intake)
                .await
                .expect("open app"),
        );
        TestApp::serve_app(app, db, backend).await
    }

    /// Serves an `App` opened (and configured) by the caller on `db`.
    pub async fn serve_app(app: bursar_server::App, db: TestDb, backend: Backend) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(listener, async move {
                let _ = stop.await;
            })
            .await
            .expect("serve");
        });
        TestApp {
            base,
            client: reqwest::Client::new(),
            db,
            backend,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the service gracefully (draining the writer) and waits for it.
    pub async fn stop(mut self) -> TestDb {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        std::mem::replace(
            &mut self.db,
            TestDb {
                url: String::new(),
                path: None,
                _dir: None,
                _postgres: None,
            },
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Any request with the admin token; returns status, headers and body text.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        idempotency_key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        (status, headers, text)
    }

    /// A POST operation with a key and a JSON body; returns status and JSON.
    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, text) = self
            .send(
                reqwest::Method::POST,
                path,
                Some(key),
                Some(&body.to_string()),
            )
            .await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, text) = self.send(reqwest::Method::GET, path, None, None).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Enrolls `user` in `course` at `price` USD; asserts 201.
    pub async fn enroll(&self, user: &str, course: &str, price: i64) -> Value {
        let body = json!({"currency": "USD", "price": price}).to_string();
        let (status, _, text) = self
            .send(
                reqwest::Method::PUT,
                &format!("/v1/users/{user}/courses/{course}"),
                None,
                Some(&body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "enroll: {text}");
        serde_json::from_str::<Value>(&text).expect("json")["enrollment"].clone()
    }

    pub async fn pay(
        &self,
        user: &str,
        course: &str,
        key: &str,
        amount: i64,
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/users/{user}/courses/{course}/payments"),
            key,
            json!({"amount": amount}),
        )
        .await
    }

    /// The enrollment; asserts 200.
    pub async fn enrollment(&self, user: &str, course: &str) -> Value {
        let (status, body) = self
            .get(&format!("/v1/users/{user}/courses/{course}"))
            .await;
        assert_eq!(status, StatusCode::OK, "get enrollment: {body}");
        body
    }

    /// Every ledger entry of the enrollment, following the pages.
    pub async fn ledger(&self, user: &str, course: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut after = 0;
        loop {
            let (status, body) = self
                .get(&format!(
                    "/v1/users/{user}/courses/{course}/ledger?after={after}&limit=1000"
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "ledger: {body}");
            let page = body["entries"].as_array().expect("entries").clone();
            if page.is_empty() {
                return entries;
            }
            after = page.last().expect("entry")["seq"].as_u64().expect("seq");
            entries.extend(page);
        }
    }

    /// `GET /v1/audit`; asserts it is clean.
    pub async fn assert_audit_clean(&self) {
        let (status, body) = self.get("/v1/audit").await;
        assert_eq!(status, StatusCode::OK, "audit: {body}");
        assert_eq!(body["ok"], json!(true), "audit found disagreements: {body}");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Creates one API token per role in `roles` directly in the database at
/// `url`, as `bursar token create` does, and returns them in the same order.
pub async fn create_tokens<const N: usize>(
    url: &str,
    roles: [bursar_server::auth::Role; N],
) -> [String; N] {
    let store = bursar_store::Store::open(url).await.expect("open store");
    let mut tokens = Vec::with_capacity(N);
    for role in roles {
        tokens.push(
            bursar_server::auth::create_token(&store, role)
                .await
                .expect("create token"),
        );
    }
    tokens.try_into().expect("one token per role")
}

impl TestApp {
    /// A service whose database holds, from the start, one API token per
    /// role in `roles` (besides the admin token); returns the tokens in the
    /// same order. Tokens made before the start need no reload to work.
    pub async fn spawn_with_tokens<const N: usize>(
        backend: Backend,
        roles: [bursar_server::auth::Role; N],
    ) -> (TestApp, [String; N]) {
        let db = TestDb::new(backend).await;
        let tokens = create_tokens(&db.url, roles).await;
        (TestApp::spawn_on(db, backend).await, tokens)
    }
}

/// Sends one payment into `u1`'s enrollment in `course` on the server at
/// `base`, as the crash and fault tests do. `Err` means no answer came (the
/// connection failed or was cut); otherwise the status, the
/// `Idempotent-Replayed` header and the body.
pub async fn pay_raw(
    client: &reqwest::Client,
    base: &str,
    course: &str,
    key: &str,
    amount: i64,
) -> Result<(StatusCode, bool, String), reqwest::Error> {
    let response = client
        .post(format!("{base}/v1/users/u1/courses/{course}/payments"))
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(json!({"amount": amount}).to_string())
        .send()
        .await?;
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true");
    let body = response.text().await?;
    Ok((status, replayed, body))
}
