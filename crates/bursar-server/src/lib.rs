//! The bursar HTTP service: the group-commit writer, the axum router, auth,
//! metrics, the digests, the OpenAPI document and the admin page.

pub mod admin;
pub mod api;
pub mod auth;
pub mod batch;
pub mod bodies;
mod ceiling;
pub mod connections;
pub mod digest;
pub mod error;
pub mod events;
pub mod export;
pub mod extract;
pub mod finance;
pub mod holds;
pub mod intake;
pub mod json_errors;
pub mod metrics;
pub mod nats;
pub mod openapi;
pub mod tokens;
pub mod webhooks;
pub mod writer;

use crate::auth::Auth;
use crate::bodies::BodyBudget;
use crate::connections::ConnectionOptions;
use crate::error::ApiError;
use crate::events::FeedSignal;
use crate::extract::REQUEST_BODY_BYTES_MAX;
use crate::metrics::Metrics;
use crate::nats::{NatsOptions, Publisher};
use crate::webhooks::{WebhookOptions, Webhooks};
use crate::writer::Writer;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use bursar_store::{Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// The longest a request may take before it is answered 503 `TIMEOUT`. A
/// write still queued may commit after that; a retry with the same
/// idempotency key then replays it, so a client never waits without end and
/// never pays twice.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest `GET /v1/audit` or `GET /v1/digest` may take (both read the
/// whole ledger), and `GET /v1/export` to its first bytes; `bursar audit`
/// and `bursar digest` have no limit.
pub const AUDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Everything a request handler needs. axum clones the state for every
/// extractor and middleware, so it is one `Arc`: a clone is one atomic
/// increment.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

pub struct Services {
    pub store: Store,
    pub writer: Writer,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    /// Request-body bytes that may be received at once.
    pub bodies: BodyBudget,
    /// Wakes whoever waits for new events.
    pub feed: FeedSignal,
    /// Webhook settings, and the bell of this server's delivery engine.
    pub webhooks: Webhooks,
    /// The payment intake's secrets.
    pub intake: intake::IntakeConfig,
    /// Benchmarks only: payments are answered without the writer or the
    /// store (see `ceiling`); off unless `with_http_ceiling` turned it on.
    http_ceiling: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// A bursar service, opened and ready to serve.
pub struct App {
    pub state: AppState,
    writer_task: tokio::task::JoinHandle<()>,
    /// The admin token created on this start, if there was none: print its
    /// secret once.
    pub created_admin_token: Option<auth::NewToken>,
    /// Timeouts and the cap of the connections `serve` accepts.
    pub connections: ConnectionOptions,
    /// Whether `serve` delivers webhooks, and how.
    webhooks: Option<WebhookOptions>,
    /// Where `serve` publishes the events, if anywhere.
    pub nats: Option<NatsOptions>,
}

impl App {
    /// Opens and migrates the database, loads the tokens and starts the
    /// writer, with the payment intake unconfigured.
    pub async fn open(database_url: &str, admin_token: Option<&str>) -> Result<App, StoreError> {
        App::open_with(database_url, admin_token, &intake::IntakeOptions::default()).await
    }

    /// `open`, with the payment intake's secrets; also starts the retrier
    /// of intake exceptions.
    pub async fn open_with(
        database_url: &str,
        admin_token: Option<&str>,
        intake: &intake::IntakeOptions,
    ) -> Result<App, StoreError> {
        let store = Store::open(database_url).await?;
        let metrics = Arc::new(Metrics::default());
        let (auth, created_admin_token) = Auth::load(store.clone(), admin_token).await?;
        let feed = FeedSignal::default();
        feed.watch_store(store.clone());
        let (writer, writer_task) = Writer::start(store.clone(), metrics.clone(), feed.clone());
        let services = Arc::new(Services {
            store,
            writer,
            auth,
            metrics,
            bodies: BodyBudget::default(),
            feed,
            webhooks: Webhooks::default(),
            intake: intake::IntakeConfig::new(intake),
            http_ceiling: std::sync::atomic::AtomicBool::new(false),
        });
        intake::retrier::start(Arc::downgrade(&services));
        Ok(App {
            state: AppState(services),
            writer_task,
            created_admin_token,
            connections: ConnectionOptions::default(),
            webhooks: None,
            nats: None,
        })
    }

    /// The same service delivering webhooks while it serves (`bursar
    /// serve` always does; without this the API still manages endpoints,
    /// and other servers on the database deliver).
    pub fn with_webhooks(mut self, options: WebhookOptions) -> App {
        self.state.webhooks.set_allow_private(options.allow_private);
        self.webhooks = Some(options);
        self
    }

    /// Benchmarks only: the same service answering `POST …/payments` with a
    /// made-up entry of the usual size, never writing it (see `ceiling`), to
    /// measure what the HTTP stack alone can do.
    pub fn with_http_ceiling(self) -> App {
        tracing::warn!(
            "--bench-http-ceiling: payments are answered without being recorded; \
             for benchmarks only"
        );
        self.state
            .http_ceiling
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The same service with these connection timeouts and cap.
    pub fn with_connections(mut self, connections: ConnectionOptions) -> App {
        self.connections = connections;
        self
    }

    /// The same service, publishing every event to NATS JetStream while it
    /// serves (see `nats`).
    pub fn with_nats(mut self, nats: NatsOptions) -> App {
        self.nats = Some(nats);
        self
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves until `shutdown` resolves, then stops taking connections,
    /// finishes the requests in flight, drains the write queue, and stops
    /// the event publisher. See `connections` for the limits on connections.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let publisher = self.nats.map(|options| {
            Publisher::start(
                options,
                self.state.store.clone(),
                self.state.feed.subscribe(),
                self.state.metrics.clone(),
            )
        });
        let (stop_webhooks, stopped) = tokio::sync::watch::channel(false);
        let engine = self.webhooks.map(|options| {
            webhooks::delivery::start(
                self.state.store.clone(),
                self.state.feed.clone(),
                self.state.metrics.clone(),
                options,
                self.state.webhooks.wake.clone(),
                stopped,
            )
        });
        let served = connections::serve(listener, router, self.connections, shutdown).await;
        // Deliveries in flight are abandoned (they are sent again later);
        // the engine only writes its progress, within its own timeout.
        let _ = stop_webhooks.send(true);
        if let Some(engine) = engine
            && let Err(error) = engine.await
        {
            tracing::error!(%error, "the webhook engine failed");
        }
        served?;
        // The last handles go with the router and the state; the writer then
        // finishes its queue and stops.
        drop(self.state);
        if let Err(error) = self.writer_task.await {
            tracing::error!(%error, "the writer task failed");
        }
        // After the last commit: the publisher finishes its page, saves its
        // cursor and gives up its lease.
        if let Some(publisher) = publisher {
            publisher.stop().await;
        }
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let authenticated = Router::new()
        .route(
            "/v1/users/{user_id}/courses/{course_id}",
            put(api::enroll).get(api::get_enrollment),
        )
        .route("/v1/users/{user_id}/courses", get(api::list_enrollments))
        .route(
            "/v1/users/{user_id}/courses/{course_id}/payments",
            post(api::payment),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/pay-remaining",
            post(api::pay_remaining),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/credits",
            post(api::credit),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/refunds",
            post(api::refund),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/charges",
            post(api::charge),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/complete",
            post(api::complete),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/cancel",
            post(api::cancel),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/holds",
            post(holds::hold).get(holds::list_holds),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/holds/{hold_seq}/capture",
            post(holds::capture),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/holds/{hold_seq}/void",
            post(holds::void),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/ledger",
            get(api::ledger),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/statement",
            get(finance::statement),
        )
        .route(
            "/v1/users/{user_id}/courses/{course_id}/audit",
            get(finance::audit_enrollment),
        )
        .route(
            "/v1/batch",
            post(batch::batch).layer(DefaultBodyLimit::max(batch::BATCH_BODY_BYTES_MAX)),
        )
        .route("/v1/audit", get(api::audit))
        .route("/v1/export", get(export::export))
        .route("/v1/events", get(events::list_events))
        .route("/v1/digest", get(digest::digest))
        .route(
            "/v1/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/v1/tokens/{id}", delete(tokens::revoke_token))
        .route("/v1/whoami", get(tokens::whoami))
        .route(
            "/v1/webhooks",
            get(webhooks::list_webhooks).post(webhooks::create_webhook),
        )
        .route("/v1/webhooks/{id}", delete(webhooks::delete_webhook))
        .route(
            "/v1/webhooks/{id}/deliveries",
            get(webhooks::list_deliveries),
        )
        .route("/v1/webhooks/{id}/replay", post(webhooks::replay_webhook))
        .route("/v1/intake/exceptions", get(intake::list_exceptions))
        .route("/v1/intake/exceptions/{id}", get(intake::get_exception))
        .route(
            "/v1/intake/exceptions/{id}/retry",
            post(intake::retry_exception),
        )
        .route(
            "/v1/intake/exceptions/{id}/dismiss",
            post(intake::dismiss_exception),
        )
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route_layer(from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(authenticated)
        .route("/healthz", get(api::healthz))
        // Authenticated by its Stripe-Signature, never by a token: outside
        // the token layer.
        .route(
            "/v1/intake/stripe",
            post(intake::stripe_webhook).layer(DefaultBodyLimit::max(
                intake::stripe::STRIPE_EVENT_BYTES_MAX,
            )),
        )
        // The admin page is public: its API calls carry the token.
        .merge(admin::router())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "method not allowed on this route",
            )
        })
        .layer(from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(axum::Extension(state.bodies.clone()))
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let needed = api::role_needed(request.method(), request.uri().path());
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match state.auth.check(header, needed).await {
        Ok(_) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Counts and times every request by route and status.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // `MatchedPath` is a shared string: cloning it does not allocate.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = match *request.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    // The audit and the digest read the whole ledger and change nothing: they
    // may take as long as they need. So may an export's first page, which
    // may scan far for the period's first entry; this bounds only the time
    // to the answer's head, and the body it streams after has no limit.
    // A long-poll of the feed may wait its `wait` before it reads.
    let timeout = match route {
        "/v1/audit" | "/v1/digest" | "/v1/export" => AUDIT_TIMEOUT,
        "/v1/events" => {
            REQUEST_TIMEOUT + std::time::Duration::from_secs(events::EVENTS_WAIT_SECONDS_MAX)
        }
        _ => REQUEST_TIMEOUT,
    };
    let response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "TIMEOUT",
            "the request took too long; its outcome is unknown: retry with the same Idempotency-Key",
        )
        .into_response(),
    };
    let status = response.status().as_u16();
    state
        .metrics
        .observe_request(route, method, status, started.elapsed());
    if status >= 500 {
        tracing::warn!(route, method, status, "request failed");
    } else {
        tracing::debug!(route, method, status, "request");
    }
    response
}
