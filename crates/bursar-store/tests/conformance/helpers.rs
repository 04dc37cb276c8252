//! Test helpers: a fresh database per test, the `conformance!` macro that runs
//! one test body on every backend, a tiny seeded random number generator, and
//! builders for the requests the tests send.

#![allow(dead_code)]

use bursar_core::{
    AccessPolicy, Amount, Command, CourseId, Currency, EnrollTerms, EnrollmentKey, IdempotencyKey,
    Price, Reason, Reference, Request, Timestamp, UserId,
};
use bursar_store::Store;

/// The storage backends every conformance test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Whether this backend's tests can run here. PostgreSQL may be missing
    /// on a laptop: its tests then pass without running, after one line
    /// saying how to enable them; under `CI=true` they fail instead.
    pub fn available(self) -> bool {
        match self {
            Backend::Sqlite => true,
            Backend::Postgres => bursar_store::testing::postgres_available(),
        }
    }
}

/// A database of its own for one test, removed when dropped. The URL is
/// handed out separately so a test can open, drop and reopen the store.
pub struct TestDb {
    backend: Backend,
    url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<bursar_store::testing::PostgresTestDb>,
}

impl TestDb {
    /// The one place that knows how to make a database for each backend.
    pub fn new(backend: Backend) -> (String, TestDb) {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("bursar.db");
                let url = format!("sqlite://{}", path.display());
                let db = TestDb {
                    backend,
                    url: url.clone(),
                    _dir: Some(dir),
                    postgres: None,
                };
                (url, db)
            }
            Backend::Postgres => {
                let database = bursar_store::testing::PostgresTestDb::create();
                let url = database.url().to_owned();
                let db = TestDb {
                    backend,
                    url: url.clone(),
                    _dir: None,
                    postgres: Some(database),
                };
                (url, db)
            }
        }
    }

    /// Makes every later attempt to write a ledger entry whose reason is
    /// `reason` fail inside the database, so a test can watch a batch fail
    /// half-way through its writes.
    pub fn fail_ledger_writes_with_reason(&self, reason: &str) {
        match self.backend {
            Backend::Sqlite => {
                let path = self
                    .url
                    .strip_prefix("sqlite://")
                    .expect("a SQLite URL starts with sqlite://");
                let connection = rusqlite::Connection::open(path).expect("open the database");
                connection
                    .execute_batch(&format!(
                        "CREATE TRIGGER injected_failure BEFORE INSERT ON ledger \
                         WHEN NEW.reason = '{reason}' \
                         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
                    ))
                    .expect("create the failing trigger");
            }
            Backend::Postgres => {
                self.postgres
                    .as_ref()
                    .expect("a PostgreSQL test database")
                    .execute(&format!(
                        "CREATE FUNCTION injected_failure() RETURNS trigger LANGUAGE plpgsql AS $$ \
                         BEGIN \
                             IF NEW.reason = '{reason}' THEN RAISE EXCEPTION 'injected failure'; END IF; \
                             RETURN NEW; \
                         END $$; \
                         CREATE TRIGGER injected_failure BEFORE INSERT ON ledger \
                         FOR EACH ROW EXECUTE FUNCTION injected_failure();"
                    ));
            }
        }
    }

    /// The file of a SQLite database.
    pub fn sqlite_path(&self) -> &std::path::Path {
        std::path::Path::new(
            self.url
                .strip_prefix("sqlite://")
                .expect("a SQLite URL starts with sqlite://"),
        )
    }

    /// Runs SQL statements on this database behind the store's back, as
    /// someone tampering with it would.
    pub fn execute_sql(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let path = self
                    .url
                    .strip_prefix("sqlite://")
                    .expect("a SQLite URL starts with sqlite://");
                let connection = rusqlite::Connection::open(path).expect("open the database");
                connection.execute_batch(sql).expect("run the SQL");
            }
            Backend::Postgres => self
                .postgres
                .as_ref()
                .expect("a PostgreSQL test database")
                .execute(sql),
        }
    }
}

/// Opens a fresh store on `backend`; keep the guard alive as long as the store.
pub async fn fresh_store(backend: Backend) -> (Store, String, TestDb) {
    let (url, db) = TestDb::new(backend);
    let store = Store::open(&url).await.expect("open the store");
    (store, url, db)
}

/// Runs each named `async fn name(backend: Backend)` of the calling module
/// once per backend, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $crate::conformance!(@backend sqlite, Sqlite, $($name),*);
        $crate::conformance!(@backend postgres, Postgres, $($name),*);
    };
    (@backend $module:ident, $variant:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !$crate::helpers::Backend::$variant.available() {
                        return;
                    }
                    super::$name($crate::helpers::Backend::$variant).await
                }
            )*
        }
    };
}

/// SplitMix64: a tiny, well-mixed, seeded generator. Good enough to drive
/// tests reproducibly, and no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `n` must not be zero.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `low..=high`.
    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        low + self.below((high - low) as u64 + 1) as i64
    }

    /// True with probability `percent` in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// 2026-09-01T09:00:00Z, when every test starts.
pub const T0: i64 = 1_788_253_200_000_000;
pub const SECOND: i64 = 1_000_000;

pub fn at(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(micros)
}

pub fn key(user: &str, course: &str) -> EnrollmentKey {
    EnrollmentKey {
        user_id: UserId::parse(user).expect("user id"),
        course_id: CourseId::parse(course).expect("course id"),
    }
}

pub fn currency(code: &str) -> Currency {
    Currency::parse(code).expect("currency")
}

pub fn amount(minor_units: i64) -> Amount {
    Amount::new(i128::from(minor_units)).expect("amount")
}

pub fn price(minor_units: i64) -> Price {
    Price::new(i128::from(minor_units)).expect("price")
}

pub fn reason(text: &str) -> Reason {
    Reason::parse(text).expect("reason")
}

pub fn reference(text: &str) -> Reference {
    Reference::parse(text).expect("reference")
}

pub fn idempotency_key(text: &str) -> IdempotencyKey {
    IdempotencyKey::parse(text).expect("idempotency key")
}

/// Enrolling in USD at `minor_units` with the default FULL_PAYMENT policy.
pub fn enroll(minor_units: i64) -> Command {
    Command::Enroll(EnrollTerms {
        currency: currency("USD"),
        price: price(minor_units),
        access_policy: AccessPolicy::FullPayment,
    })
}

pub fn pay(minor_units: i64) -> Command {
    Command::Payment {
        amount: amount(minor_units),
        currency: None,
        reference: None,
    }
}

pub fn charge(minor_units: i64, why: &str) -> Command {
    Command::Charge {
        amount: amount(minor_units),
        reason: reason(why),
    }
}

pub fn refund(minor_units: i64, why: &str) -> Command {
    Command::Refund {
        amount: amount(minor_units),
        reason: reason(why),
        reference: None,
    }
}

/// An enrolment request: it carries no idempotency key.
pub fn enroll_request(key: &EnrollmentKey, minor_units: i64) -> Request {
    Request {
        key: key.clone(),
        idempotency_key: None,
        command: enroll(minor_units),
    }
}

/// A state-changing request under idempotency key `idempotency`.
pub fn request(key: &EnrollmentKey, idempotency: &str, command: Command) -> Request {
    Request {
        key: key.clone(),
        idempotency_key: Some(idempotency_key(idempotency)),
        command,
    }
}
