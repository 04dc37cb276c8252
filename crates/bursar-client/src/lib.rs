//! A Rust client for the bursar HTTP API: typed requests and responses for
//! every endpoint, and retries that are safe for money.
//!
//! Every call answers an [`Outcome`]: `Succeeded` with the typed answer,
//! `Refused` with the server's status and error code (the server stored
//! nothing, so the same request would be refused again), or `Unknown` when no
//! answer said which — the operation may or may not have been applied, and
//! only resending it with the same idempotency key finds out.
//!
//! Retries follow [`RetryPolicy`]: connection errors, timeouts and 502/503/504
//! are retried with exponential backoff and full jitter, after at least the
//! server's `Retry-After`, always resending the same request with the same
//! `Idempotency-Key`, within a bounded number of attempts and a bounded time.
//! Nothing else is retried.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use bursar_client::{Client, Outcome, PaymentRequest};
//! use bursar_core::{Amount, CourseId, EnrollmentKey, IdempotencyKey, UserId};
//!
//! let client = Client::builder("http://127.0.0.1:8080").token("secret").build()?;
//! let enrollment = EnrollmentKey {
//!     user_id: UserId::parse("student-42")?,
//!     course_id: CourseId::parse("rust-101")?,
//! };
//! let key = IdempotencyKey::parse("order-1001")?;
//! match client
//!     .payment(&enrollment, &key, &PaymentRequest::new(Amount::new(2_500)?))
//!     .await
//! {
//!     Outcome::Succeeded(accepted) => println!("due now {}", accepted.enrollment.amount_due),
//!     Outcome::Refused { code, message, .. } => println!("refused: {code}: {message}"),
//!     Outcome::Unknown(reason) => println!("not known yet ({reason}); resend with the same key"),
//! }
//! # Ok(())
//! # }
//! ```

pub mod retry;
pub mod tokens;
pub mod types;

pub use retry::{Clock, ManualClock, RetryPolicy, RetryReason, SystemClock};
pub use tokens::{CreateTokenRequest, CreatedToken, TokenInfo};
pub use types::*;

use crate::retry::{Attempt, Jitter};
use bursar_core::{Enrollment, EnrollmentKey, IdempotencyKey, LedgerEntry, Timestamp, UserId};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long one attempt at `GET /v1/audit` may take. The audit replays every
/// ledger, which on a large database takes minutes; cutting it short and
/// asking again would only start the whole replay over.
pub const AUDIT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// What one call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The server answered with success; for an operation, it is durable.
    Succeeded(T),
    /// The server refused (a 4xx) and changed nothing.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer said whether the request was applied: it may or may not
    /// have been. Resend it with the same idempotency key to find out.
    Unknown(String),
}

impl<T> Outcome<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Succeeded(value) => Outcome::Succeeded(f(value)),
            Outcome::Refused {
                status,
                code,
                message,
            } => Outcome::Refused {
                status,
                code,
                message,
            },
            Outcome::Unknown(reason) => Outcome::Unknown(reason),
        }
    }

    pub fn is_succeeded(&self) -> bool {
        matches!(self, Outcome::Succeeded(_))
    }

    pub fn succeeded(self) -> Option<T> {
        match self {
            Outcome::Succeeded(value) => Some(value),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad base URL {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    BadUrl(String),
    #[error("the token holds characters an HTTP header cannot carry")]
    BadToken,
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// How many retries a client has made, by reason, since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryCounts {
    /// After a 502, 503 or 504.
    pub unavailable: u64,
    pub timeouts: u64,
    pub connection_errors: u64,
}

#[derive(Debug, Default)]
struct RetryCounters {
    unavailable: AtomicU64,
    timeouts: AtomicU64,
    connection_errors: AtomicU64,
}

impl RetryCounters {
    fn count(&self, reason: &RetryReason) {
        let counter = match reason {
            RetryReason::Unavailable { .. } => &self.unavailable,
            RetryReason::Timeout(_) => &self.timeouts,
            RetryReason::Connection(_) => &self.connection_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Builds a [`Client`].
pub struct ClientBuilder<C: Clock = SystemClock> {
    base_url: String,
    token: Option<String>,
    policy: RetryPolicy,
    clock: C,
    jitter_seed: Option<u64>,
    http: Option<reqwest::Client>,
}

impl<C: Clock> ClientBuilder<C> {
    /// The bearer token sent with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The clock the retries wait on; tests pass a [`ManualClock`].
    pub fn clock<D: Clock>(self, clock: D) -> ClientBuilder<D> {
        ClientBuilder {
            base_url: self.base_url,
            token: self.token,
            policy: self.policy,
            clock,
            jitter_seed: self.jitter_seed,
            http: self.http,
        }
    }

    /// Seeds the jitter, so that a run's delays can be reproduced. Without
    /// it the seed comes from the time and the process id.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// An HTTP client of the caller's making (its pool, timeouts and TLS).
    /// The retry policy's attempt timeout still applies to every attempt.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    pub fn build(self) -> Result<Client<C>, ClientError> {
        let base = self.base_url.trim_end_matches('/').to_owned();
        let has_host = |rest: &str| !rest.is_empty() && !rest.contains('/');
        match base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
        {
            Some(rest) if has_host(rest) => {}
            _ => return Err(ClientError::BadUrl(self.base_url)),
        }
        let authorization = match self.token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                // A redirect would resend a payment somewhere the caller did
                // not name; report it instead.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(self.policy.attempt_timeout.min(Duration::from_secs(5)))
                .tcp_nodelay(true)
                .build()?,
        };
        let seed = self.jitter_seed.unwrap_or_else(default_seed);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                authorization,
                probe_policy: RetryPolicy {
                    attempts_max: 1,
                    ..self.policy.clone()
                },
                audit_policy: RetryPolicy {
                    attempt_timeout: self.policy.attempt_timeout.max(AUDIT_ATTEMPT_TIMEOUT),
                    ..self.policy.clone()
                },
                policy: self.policy,
                clock: self.clock,
                jitter: Jitter::new(seed),
                retries: RetryCounters::default(),
            }),
        })
    }
}

fn default_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    retry::splitmix64(nanos ^ u64::from(std::process::id()).rotate_left(32))
}

/// A bursar API client. Cheap to clone: clones share one connection pool,
/// one jitter generator and one set of retry counters.
pub struct Client<C: Clock = SystemClock> {
    inner: Arc<Inner<C>>,
}

impl<C: Clock> Clone for Client<C> {
    fn clone(&self) -> Self {
        Client {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<C> {
    http: reqwest::Client,
    base: String,
    authorization: Option<HeaderValue>,
    policy: RetryPolicy,
    /// `/healthz` and `/readyz` are asked once: their 503 is the answer.
    probe_policy: RetryPolicy,
    /// The audit waits long for its one answer.
    audit_policy: RetryPolicy,
    clock: C,
    jitter: Jitter,
    retries: RetryCounters,
}

impl Client<SystemClock> {
    /// A builder for a client of the service at `base_url`
    /// (`http://HOST:PORT`), with the default retry policy.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder<SystemClock> {
        ClientBuilder {
            base_url: base_url.into(),
            token: None,
            policy: RetryPolicy::default(),
            clock: SystemClock,
            jitter_seed: None,
            http: None,
        }
    }
}

/// Reads a success answer's body; `Err` makes the outcome unknown.
type Parse<T> = fn(u16, bool, &[u8]) -> Result<T, String>;

fn parse_json<T: DeserializeOwned>(
    _status: u16,
    _replayed: bool,
    body: &[u8],
) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|error| error.to_string())
}

fn parse_accepted(_status: u16, replayed: bool, body: &[u8]) -> Result<Accepted, String> {
    let mut accepted: Accepted = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    accepted.replayed = replayed;
    Ok(accepted)
}

fn parse_receipt(_status: u16, replayed: bool, body: &[u8]) -> Result<Receipt, String> {
    let body: ReceiptBody = serde_json::from_slice(body).map_err(|error| error.to_string())?;
    Ok(Receipt {
        seq: body.entry.seq,
        replayed,
    })
}

fn parse_enrolled(status: u16, replayed: bool, body: &[u8]) -> Result<Enrolled, String> {
    if status == 201 {
        Ok(Enrolled::Created(Box::new(parse_accepted(
            status, replayed, body,
        )?)))
    } else {
        let body: EnrollmentBody =
            serde_json::from_slice(body).map_err(|error| error.to_string())?;
        Ok(Enrolled::Existing(body.enrollment))
    }
}

fn parse_text(_status: u16, _replayed: bool, body: &[u8]) -> Result<String, String> {
    String::from_utf8(body.to_vec()).map_err(|error| error.to_string())
}

/// `Retry-After` in delay-seconds, the form bursar sends. An HTTP-date is
/// not read; the backoff alone then decides the delay.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The code and message of an error answer, or stand-ins when its body is
/// not bursar's error JSON (a proxy's page, say).
fn error_of(status: u16, body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => (error.code, error.message),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let message: String = text.chars().take(200).collect();
            (format!("HTTP_{status}"), message)
        }
    }
}

/// What an answer with this status and body means for the retry loop.
fn classify<T>(
    status: u16,
    replayed: bool,
    retry_after: Option<Duration>,
    body: &[u8],
    parse: Parse<T>,
) -> Attempt<T> {
    match status {
        200..=299 => match parse(status, replayed, body) {
            Ok(value) => Attempt::Done(value),
            Err(error) => {
                Attempt::Unknown(format!("HTTP {status} with an unreadable body: {error}"))
            }
        },
        // The server (or a proxy in front of it) did not take the request,
        // or took it and could not answer in time: both are safe to resend
        // with the same key.
        502..=504 => Attempt::Retry {
            reason: RetryReason::Unavailable {
                status,
                code: error_of(status, body).0,
            },
            retry_after,
        },
        400..=499 => {
            let (code, message) = error_of(status, body);
            Attempt::Refused {
                status,
                code,
                message,
            }
        }
        _ => {
            let (code, message) = error_of(status, body);
            Attempt::Unknown(format!("HTTP {status} {code}: {message}"))
        }
    }
}

/// An error and its sources, on one line: reqwest's own message alone
/// rarely says what went wrong.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn transport_failure<T>(error: reqwest::Error) -> Attempt<T> {
    let detail = describe(&error);
    if error.is_builder() {
        // Nothing was sent, and nothing resent would fare better.
        return Attempt::Unknown(format!("cannot build the request: {detail}"));
    }
    let reason = if error.is_timeout() {
        RetryReason::Timeout(detail)
    } else {
        RetryReason::Connection(detail)
    };
    Attempt::Retry {
        reason,
        retry_after: None,
    }
}

impl<C: Clock> Client<C> {
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.policy
    }

    /// The retries made so far by this client and its clones.
    pub fn retry_counts(&self) -> RetryCounts {
        let counters = &self.inner.retries;
        RetryCounts {
            unavailable: counters.unavailable.load(Ordering::Relaxed),
            timeouts: counters.timeouts.load(Ordering::Relaxed),
            connection_errors: counters.connection_errors.load(Ordering::Relaxed),
        }
    }

    fn enrollment_url(&self, enrollment: &EnrollmentKey, suffix: &str) -> String {
        let user = enrollment.user_id.as_str();
        let course = enrollment.course_id.as_str();
        let mut url = String::with_capacity(
            self.inner.base.len() + 24 + user.len() + course.len() + suffix.len(),
        );
        // Ids are `[A-Za-z0-9._:@-]`, all of which a path segment may hold
        // as they are.
        let _ = write!(
            url,
            "{}/v1/users/{user}/courses/{course}{suffix}",
            self.inner.base
        );
        url
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base)
    }

    /// Sends one request under the retry policy: the same method, URL, key
    /// and body on every attempt.
    async fn call<T>(
        &self,
        policy: &RetryPolicy,
        method: Method,
        url: String,
        idempotency_key: Option<&IdempotencyKey>,
        body: Option<Vec<u8>>,
        parse: Parse<T>,
    ) -> Outcome<T> {
        let inner = &*self.inner;
        let key = match idempotency_key.map(|key| HeaderValue::from_str(key.as_str())) {
            None => None,
            Some(Ok(value)) => Some(value),
            Some(Err(_)) => {
                return Outcome::Refused {
                    status: 400,
                    code: "INVALID_REQUEST".to_owned(),
                    message: "the idempotency key cannot be sent in a header".to_owned(),
                };
            }
        };
        let (method, url, key, body) = (&method, &url, &key, &body);
        retry::run(
            policy,
            &inner.clock,
            &inner.jitter,
            |reason| inner.retries.count(reason),
            |_attempt| {
                let mut request = inner
                    .http
                    .request(method.clone(), url.as_str())
                    .timeout(policy.attempt_timeout);
                if let Some(authorization) = &inner.authorization {
                    request = request.header(AUTHORIZATION, authorization.clone());
                }
                if let Some(key) = key {
                    request = request.header("idempotency-key", key.clone());
                }
                if let Some(body) = body {
                    request = request
                        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                        .body(body.clone());
                }
                async move {
                    let response = match request.send().await {
                        Ok(response) => response,
                        Err(error) => return transport_failure(error),
                    };
                    let status = response.status().as_u16();
                    let replayed = response
                        .headers()
                        .get("idempotent-replayed")
                        .is_some_and(|value| value.as_bytes() == b"true");
                    let retry_after = retry_after(response.headers());
                    match response.bytes().await {
                        Ok(bytes) => classify(status, replayed, retry_after, &bytes, parse),
                        // The answer was cut off: whatever it said is lost,
                        // and the same key recovers it.
                        Err(error) => transport_failure(error),
                    }
                }
            },
        )
        .await
    }

    async fn get<T>(&self, url: String, parse: Parse<T>) -> Outcome<T> {
        self.call(&self.inner.policy, Method::GET, url, None, None, parse)
            .await
    }

    async fn operation<B: Serialize, T>(
        &self,
        enrollment: &EnrollmentKey,
        suffix: &str,
        idempotency_key: &IdempotencyKey,
        body: &B,
        parse: Parse<T>,
    ) -> Outcome<T> {
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(error) => return unserializable(error),
        };
        let url = self.enrollment_url(enrollment, suffix);
        self.call(
            &self.inner.policy,
            Method::POST,
            url,
            Some(idempotency_key),
            Some(body),
            parse,
        )
        .await
    }

    /// `PUT /v1/users/{user_id}/courses/{course_id}`: enroll, or find the
    /// enrollment with the same terms. Idempotent by its terms, so it is
    /// retried like every operation.
    pub async fn enroll(
        &self,
        enrollment: &EnrollmentKey,
        request: &EnrollRequest,
    ) -> Outcome<Enrolled> {
        let body = match serde_json::to_vec(request) {
            Ok(body) => body,
            Err(error) => return unserializable(error),
        };
        let url = self.enrollment_url(enrollment, "");
        self.call(
            &self.inner.policy,
            Method::PUT,
            url,
            None,
            Some(body),
            parse_enrolled,
        )
        .await
    }

    /// `GET /v1/users/{user_id}/courses/{course_id}`.
    pub async fn enrollment(&self, enrollment: &EnrollmentKey) -> Outcome<Enrollment> {
        self.get(self.enrollment_url(enrollment, ""), parse_json)
            .await
    }

    /// `GET /v1/users/{user_id}/courses`.
    pub async fn enrollments(&self, user_id: &UserId) -> Outcome<Vec<Enrollment>> {
        let url = self.url(&format!("/v1/users/{}/courses", user_id.as_str()));
        self.get(url, parse_json::<EnrollmentsBody>)
            .await
            .map(|body| body.enrollments)
    }

    /// `GET /v1/users/{user_id}/courses/{course_id}?as_of=`: the enrollment
    /// as it stood at `at` (a refusal `ENROLLMENT_NOT_FOUND` when it did not
    /// exist yet; `INVALID_REQUEST` when `at` is after the server's clock).
    pub async fn enrollment_as_of(
        &self,
        enrollment: &EnrollmentKey,
        at: Timestamp,
    ) -> Outcome<Enrollment> {
        self.get(
            self.enrollment_url(enrollment, &format!("?as_of={at}")),
            parse_json,
        )
        .await
    }

    /// `GET /v1/users/{user_id}/courses?as_of=`: the user's enrollments as
    /// they stood at `at`; those not made yet are left out.
    pub async fn enrollments_as_of(
        &self,
        user_id: &UserId,
        at: Timestamp,
    ) -> Outcome<Vec<Enrollment>> {
        let url = self.url(&format!(
            "/v1/users/{}/courses?as_of={at}",
            user_id.as_str()
        ));
        self.get(url, parse_json::<EnrollmentsBody>)
            .await
            .map(|body| body.enrollments)
    }

    /// `GET …/statement?from=&to=`: the enrollment before `from` (`None`:
    /// from the beginning), the entries with `from <= created_at < to`, and
    /// the enrollment before `to` (`None`: now). More than 1,000 entries is
    /// the refusal `STATEMENT_TOO_LONG`.
    pub async fn statement(
        &self,
        enrollment: &EnrollmentKey,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
    ) -> Outcome<Statement> {
        let mut query = String::from("/statement");
        for (name, bound) in [("from", from), ("to", to)] {
            if let Some(at) = bound {
                let separator = if query.contains('?') { '&' } else { '?' };
                let _ = write!(query, "{separator}{name}={at}");
            }
        }
        self.get(self.enrollment_url(enrollment, &query), parse_json)
            .await
    }

    /// `GET …/audit`: one enrollment's chain replayed and verified, as the
    /// whole audit would (a reader token suffices).
    pub async fn enrollment_audit(&self, enrollment: &EnrollmentKey) -> Outcome<EnrollmentAudit> {
        self.get(self.enrollment_url(enrollment, "/audit"), parse_json)
            .await
    }

    /// `POST …/payments`.
    pub async fn payment(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
        request: &PaymentRequest,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            "/payments",
            idempotency_key,
            request,
            parse_accepted,
        )
        .await
    }

    /// `POST …/payments`, reading only the entry's sequence number and
    /// whether it was a replay: for callers that send many payments.
    pub async fn payment_receipt(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
        request: &PaymentRequest,
    ) -> Outcome<Receipt> {
        self.operation(
            enrollment,
            "/payments",
            idempotency_key,
            request,
            parse_receipt,
        )
        .await
    }

    /// `POST …/pay-remaining`: a payment of exactly what is due at commit.
    pub async fn pay_remaining(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
        request: &PayRemainingRequest,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            "/pay-remaining",
            idempotency_key,
            request,
            parse_accepted,
        )
        .await
    }

    /// `POST …/credits`.
    pub async fn credit(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
        request: &CreditRequest,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            "/credits",
            idempotency_key,
            request,
            parse_accepted,
        )
        .await
    }

    /// `POST …/refunds`.
    pub async fn refund(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
        request: &RefundRequest,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            "/refunds",
            idempotency_key,
            request,
            parse_accepted,
        )
        .await
    }

    /// `POST …/charges`.
    pub async fn charge(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
        request: &ChargeRequest,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            "/charges",
            idempotency_key,
            request,
            parse_accepted,
        )
        .await
    }

    /// `POST …/complete`.
    pub async fn complete(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            "/complete",
            idempotency_key,
            &EmptyRequest {},
            parse_accepted,
        )
        .await
    }

    /// `POST …/cancel`.
    pub async fn cancel(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            "/cancel",
            idempotency_key,
            &EmptyRequest {},
            parse_accepted,
        )
        .await
    }

    /// `POST …/holds`: reserve part of the due before charging a card. The
    /// answer's `entry.seq` names the hold (its `hold_seq`).
    pub async fn hold(
        &self,
        enrollment: &EnrollmentKey,
        idempotency_key: &IdempotencyKey,
        request: &HoldRequest,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            "/holds",
            idempotency_key,
            request,
            parse_accepted,
        )
        .await
    }

    /// `POST …/holds/{hold_seq}/capture`: turn an open hold into a payment.
    /// A hold that was captured, voided or has expired is refused with
    /// `HOLD_NOT_OPEN`.
    pub async fn capture(
        &self,
        enrollment: &EnrollmentKey,
        hold_seq: u64,
        idempotency_key: &IdempotencyKey,
        request: &CaptureRequest,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            &format!("/holds/{hold_seq}/capture"),
            idempotency_key,
            request,
            parse_accepted,
        )
        .await
    }

    /// `POST …/holds/{hold_seq}/void`: release an open hold.
    pub async fn void(
        &self,
        enrollment: &EnrollmentKey,
        hold_seq: u64,
        idempotency_key: &IdempotencyKey,
    ) -> Outcome<Accepted> {
        self.operation(
            enrollment,
            &format!("/holds/{hold_seq}/void"),
            idempotency_key,
            &EmptyRequest {},
            parse_accepted,
        )
        .await
    }

    /// `GET …/holds`: the enrollment's open holds, by `hold_seq`.
    pub async fn holds(&self, enrollment: &EnrollmentKey) -> Outcome<Vec<OpenHold>> {
        self.get(
            self.enrollment_url(enrollment, "/holds"),
            parse_json::<HoldsBody>,
        )
        .await
        .map(|body| body.holds)
    }

    /// `GET …/ledger?after=&limit=`: at most `limit` entries with
    /// `seq > after`, oldest first.
    pub async fn ledger(
        &self,
        enrollment: &EnrollmentKey,
        after: u64,
        limit: u32,
    ) -> Outcome<Vec<LedgerEntry>> {
        self.ledger_as(enrollment, after, limit).await
    }

    /// `GET …/ledger`, each entry read into `E`: a caller that needs only a
    /// few fields of many entries names a leaner type than `LedgerEntry`.
    pub async fn ledger_as<E: DeserializeOwned>(
        &self,
        enrollment: &EnrollmentKey,
        after: u64,
        limit: u32,
    ) -> Outcome<Vec<E>> {
        let url = self.enrollment_url(enrollment, &format!("/ledger?after={after}&limit={limit}"));
        self.get(url, parse_json::<LedgerBody<E>>)
            .await
            .map(|body| body.entries)
    }

    /// `POST /v1/batch`: up to 8,192 operations in one durable commit, one
    /// result per operation. The whole batch is retried as one request; each
    /// operation's idempotency key makes that safe.
    pub async fn batch(&self, request: &BatchRequest) -> Outcome<BatchResponse> {
        let body = match serde_json::to_vec(request) {
            Ok(body) => body,
            Err(error) => return unserializable(error),
        };
        self.call(
            &self.inner.policy,
            Method::POST,
            self.url("/v1/batch"),
            None,
            Some(body),
            parse_json,
        )
        .await
    }

    /// `GET /v1/audit` (needs an admin token). Each attempt may take up to
    /// [`AUDIT_ATTEMPT_TIMEOUT`].
    pub async fn audit(&self) -> Outcome<AuditReport> {
        let url = self.url("/v1/audit");
        self.call(
            &self.inner.audit_policy,
            Method::GET,
            url,
            None,
            None,
            parse_json,
        )
        .await
    }

    /// `GET /healthz`, asked once: no answer is the answer.
    pub async fn health(&self) -> Outcome<Health> {
        let url = self.url("/healthz");
        self.call(
            &self.inner.probe_policy,
            Method::GET,
            url,
            None,
            None,
            parse_json,
        )
        .await
    }

    /// `GET /readyz`, asked once: a service that is not ready answers 503,
    /// which comes back as `Unknown` naming that answer.
    pub async fn readiness(&self) -> Outcome<Readiness> {
        let url = self.url("/readyz");
        self.call(
            &self.inner.probe_policy,
            Method::GET,
            url,
            None,
            None,
            parse_json,
        )
        .await
    }

    /// `GET /metrics`, in the Prometheus text format.
    pub async fn metrics(&self) -> Outcome<String> {
        self.get(self.url("/metrics"), parse_text).await
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Outcome<serde_json::Value> {
        self.get(self.url("/openapi.json"), parse_json).await
    }
}

fn unserializable<T>(error: serde_json::Error) -> Outcome<T> {
    Outcome::Refused {
        status: 400,
        code: "INVALID_REQUEST".to_owned(),
        message: format!("the request cannot be serialized: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::HeaderMap as AxumHeaders;
    use axum::response::IntoResponse;
    use bursar_core::{Amount, CourseId};
    use std::sync::Mutex;

    #[test]
    fn answers_are_classified_by_status() {
        let parse: Parse<u64> = |_, _, body| {
            std::str::from_utf8(body)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| "not a number".to_owned())
        };
        assert!(matches!(
            classify(201, false, None, b"7", parse),
            Attempt::Done(7)
        ));
        assert!(matches!(
            classify(200, false, None, b"x", parse),
            Attempt::Unknown(reason) if reason.contains("unreadable")
        ));
        let error = br#"{"error":{"code":"OVERPAYMENT","message":"too much"}}"#;
        match classify(422, false, None, error, parse) {
            Attempt::Refused {
                status,
                code,
                message,
            } => assert_eq!(
                (status, code.as_str(), message.as_str()),
                (422, "OVERPAYMENT", "too much")
            ),
            other => panic!("{other:?}"),
        }
        for status in [400, 401, 403, 404, 409, 413, 422] {
            assert!(matches!(
                classify(status, false, None, b"", parse),
                Attempt::Refused { .. }
            ));
        }
        let overloaded = br#"{"error":{"code":"OVERLOADED","message":"full"}}"#;
        match classify(503, false, Some(Duration::from_secs(1)), overloaded, parse) {
            Attempt::Retry {
                reason: RetryReason::Unavailable { status, code },
                retry_after,
            } => {
                assert_eq!((status, code.as_str()), (503, "OVERLOADED"));
                assert_eq!(retry_after, Some(Duration::from_secs(1)));
            }
            other => panic!("{other:?}"),
        }
        // A storage fault (a full disk, a removed database file) committed
        // nothing: retried with the same key, like any 503.
        let storage = br#"{"error":{"code":"STORAGE_UNAVAILABLE","message":"disk full"}}"#;
        match classify(503, false, Some(Duration::from_secs(1)), storage, parse) {
            Attempt::Retry {
                reason: RetryReason::Unavailable { status, code },
                retry_after,
            } => {
                assert_eq!((status, code.as_str()), (503, "STORAGE_UNAVAILABLE"));
                assert_eq!(retry_after, Some(Duration::from_secs(1)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(502, false, None, b"<html>", parse),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(504, false, None, b"", parse),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(500, false, None, b"", parse),
            Attempt::Unknown(reason) if reason.contains("500")
        ));
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(Client::builder("http://127.0.0.1:8080/").build().is_ok());
        assert_eq!(
            Client::builder("http://127.0.0.1:8080/")
                .build()
                .unwrap()
                .base_url(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://",
            "http://host/path",
        ] {
            assert!(matches!(
                Client::builder(bad).build(),
                Err(ClientError::BadUrl(_))
            ));
        }
        assert!(matches!(
            Client::builder("http://host").token("bad\ntoken").build(),
            Err(ClientError::BadToken)
        ));
    }

    /// What the stub server saw, and what it answers: `failures` 503s (with
    /// `Retry-After: 2`) before a 201.
    #[derive(Default)]
    struct Stub {
        keys: Mutex<Vec<Option<String>>>,
        bodies: Mutex<Vec<String>>,
        failures: usize,
        refuse: bool,
    }

    async fn stub_payment(
        State(stub): State<Arc<Stub>>,
        headers: AxumHeaders,
        body: String,
    ) -> axum::response::Response {
        let key = headers
            .get("idempotency-key")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let seen = {
            let mut keys = stub.keys.lock().unwrap();
            keys.push(key);
            keys.len()
        };
        stub.bodies.lock().unwrap().push(body);
        if stub.refuse {
            let body = r#"{"error":{"code":"OVERPAYMENT","message":"more than is due"}}"#;
            return (axum::http::StatusCode::UNPROCESSABLE_ENTITY, body).into_response();
        }
        if seen <= stub.failures {
            let body = r#"{"error":{"code":"OVERLOADED","message":"the write queue is full"}}"#;
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "2")],
                body,
            )
                .into_response();
        }
        let replayed = if seen > stub.failures + 1 {
            "true"
        } else {
            "false"
        };
        (
            axum::http::StatusCode::CREATED,
            [("idempotent-replayed", replayed)],
            r#"{"entry":{"seq":2,"kind":"PAYMENT"},"enrollment":{}}"#,
        )
            .into_response()
    }

    async fn start_stub(stub: Stub) -> (String, Arc<Stub>) {
        let stub = Arc::new(stub);
        let router = axum::Router::new()
            .route(
                "/v1/users/{user}/courses/{course}/payments",
                axum::routing::post(stub_payment),
            )
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (base, stub)
    }

    fn enrollment() -> EnrollmentKey {
        EnrollmentKey {
            user_id: UserId::parse("u1").unwrap(),
            course_id: CourseId::parse("c1").unwrap(),
        }
    }

    #[tokio::test]
    async fn every_attempt_carries_the_same_key_and_body() {
        let (base, stub) = start_stub(Stub {
            failures: 3,
            ..Stub::default()
        })
        .await;
        let clock = ManualClock::new();
        let client = Client::builder(base)
            .token("t")
            .clock(clock.clone())
            .jitter_seed(11)
            .build()
            .unwrap();
        let key = IdempotencyKey::parse("order-77").unwrap();
        let request = PaymentRequest::new(Amount::new(1_250).unwrap());
        let outcome = client.payment_receipt(&enrollment(), &key, &request).await;
        assert_eq!(
            outcome,
            Outcome::Succeeded(Receipt {
                seq: 2,
                replayed: false
            })
        );
        let keys = stub.keys.lock().unwrap().clone();
        assert_eq!(keys, vec![Some("order-77".to_owned()); 4]);
        let bodies = stub.bodies.lock().unwrap().clone();
        assert!(
            bodies.iter().all(|body| body == r#"{"amount":1250}"#),
            "{bodies:?}"
        );
        // Three retries, each after at least the 2 s the server asked for,
        // and none of them slept for real.
        let sleeps = clock.sleeps();
        assert_eq!(sleeps.len(), 3);
        assert!(
            sleeps.iter().all(|sleep| *sleep >= Duration::from_secs(2)),
            "{sleeps:?}"
        );
        assert_eq!(
            client.retry_counts(),
            RetryCounts {
                unavailable: 3,
                ..RetryCounts::default()
            }
        );
    }

    #[tokio::test]
    async fn a_refusal_is_sent_once() {
        let (base, stub) = start_stub(Stub {
            refuse: true,
            ..Stub::default()
        })
        .await;
        let clock = ManualClock::new();
        let client = Client::builder(base).clock(clock.clone()).build().unwrap();
        let key = IdempotencyKey::parse("order-78").unwrap();
        let outcome = client
            .payment_receipt(
                &enrollment(),
                &key,
                &PaymentRequest::new(Amount::new(5).unwrap()),
            )
            .await;
        assert_eq!(
            outcome,
            Outcome::Refused {
                status: 422,
                code: "OVERPAYMENT".to_owned(),
                message: "more than is due".to_owned()
            }
        );
        assert_eq!(stub.keys.lock().unwrap().len(), 1);
        assert!(clock.sleeps().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_server_ends_unknown_within_the_bounds() {
        // A port that was just free: connecting to it is refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let clock = ManualClock::new();
        let client = Client::builder(base)
            .clock(clock.clone())
            .retry_policy(RetryPolicy {
                attempts_max: 5,
                ..RetryPolicy::default()
            })
            .build()
            .unwrap();
        let key = IdempotencyKey::parse("order-79").unwrap();
        let outcome = client
            .payment_receipt(
                &enrollment(),
                &key,
                &PaymentRequest::new(Amount::new(5).unwrap()),
            )
            .await;
        match outcome {
            Outcome::Unknown(reason) => {
                assert!(reason.contains("5 attempts"), "{reason}");
                assert!(reason.contains("connection failed"), "{reason}");
            }
            other => panic!("expected unknown, got {other:?}"),
        }
        assert_eq!(clock.sleeps().len(), 4);
        assert_eq!(client.retry_counts().connection_errors, 4);
        // The probes are asked once: no answer is their answer.
        let probed = client.readiness().await;
        assert!(
            matches!(&probed, Outcome::Unknown(reason) if reason.contains("after 1 attempt:")),
            "{probed:?}"
        );
        assert!(matches!(client.health().await, Outcome::Unknown(_)));
        assert_eq!(clock.sleeps().len(), 4);
    }
}
