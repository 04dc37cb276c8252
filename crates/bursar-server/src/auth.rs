//! Bearer-token auth: roles, making tokens, and the check every request
//! but `/healthz` passes. Tokens are stored only as SHA-256 hashes. Each
//! process keeps a copy of the table of usable tokens that is never more than
//! `TOKEN_CACHE_AGE_MAX` old, so a token revoked (or expiring) on any server
//! of a database is refused by all of them within that time.

use crate::error::ApiError;
use axum::http::StatusCode;
use bursar_core::Timestamp;
use bursar_store::{Store, StoreError, TokenRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The oldest copy of the token table a request is ever checked against: a
/// revoked or deleted token stops working on every server within this time,
/// and a new one starts working within it. Well under the one second the
/// service promises.
pub const TOKEN_CACHE_AGE_MAX: Duration = Duration::from_millis(750);

/// From this age on, the first request to arrive reloads the table while
/// the others go on with the copy they have, so under steady traffic no
/// request waits for a reload and the database sees at most four token
/// queries a second per process.
const TOKEN_CACHE_REFRESH_AGE: Duration = Duration::from_millis(250);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Reader,
    /// Reads and every operation.
    Writer,
    /// Everything, including the audit.
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: `bursar_` and 64 hex digits (256 bits).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let mut token = String::from("bursar_");
    for byte in bytes {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

/// A new public token id: `tok_` and 16 hex digits (64 random bits, so ids
/// never clash in practice; the store's unique index catches it if they do).
pub fn generate_token_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let mut id = String::from("tok_");
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// Equal-time comparison: the time taken does not depend on where the two
/// differ.
fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (a, b) in left.iter().zip(right) {
        difference |= a ^ b;
    }
    difference == 0
}

/// A token just made: its stored record and its secret, which is shown only
/// this once and stored nowhere.
pub struct NewToken {
    pub record: TokenRecord,
    pub secret: String,
}

/// Makes a token with `role` that expires `lifetime_seconds` after it is
/// made (if given; see `tokens::parse_lifetime`), and stores its hash.
pub async fn make_token(
    store: &Store,
    role: Role,
    lifetime_seconds: Option<u64>,
) -> Result<NewToken, StoreError> {
    let secret = generate_token();
    let created_at = crate::writer::now();
    let record = TokenRecord {
        id: generate_token_id(),
        token_hash: hash_token(&secret),
        role: role.as_str().to_owned(),
        created_at,
        expires_at: lifetime_seconds
            .map(|seconds| crate::tokens::expiry_after(created_at, seconds)),
        revoked_at: None,
    };
    store.insert_token(&record).await?;
    Ok(NewToken { record, secret })
}

/// Creates a token that does not expire and returns its secret.
pub async fn create_token(store: &Store, role: Role) -> Result<String, StoreError> {
    Ok(make_token(store, role, None).await?.secret)
}

/// What the cache keeps of a usable token.
#[derive(Clone)]
struct CachedToken {
    role: Role,
    expires_at: Option<Timestamp>,
    /// Its public id: shared, so a lookup copies no string.
    id: Arc<str>,
}

/// Who a presented token is (`GET /v1/whoami`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// `None` for the configured `BURSAR_ADMIN_TOKEN`, which is not stored.
    pub token_id: Option<Arc<str>>,
    pub expires_at: Option<Timestamp>,
}

/// The usable tokens by hash, as the table held them when `loaded_at`
/// began; `None` marks a copy that must be reloaded before use.
struct Snapshot {
    tokens: HashMap<[u8; 32], CachedToken>,
    loaded_at: Option<Instant>,
}

impl Snapshot {
    fn age(&self) -> Duration {
        self.loaded_at
            .map_or(Duration::MAX, |loaded_at| loaded_at.elapsed())
    }
}

pub struct Auth {
    store: Store,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Held while the table is reloaded, so one request reloads and the
    /// others use its result.
    reloading: tokio::sync::Mutex<()>,
    /// `BURSAR_ADMIN_TOKEN`: the operator's break-glass token. It is not in
    /// the table, so it cannot be listed or revoked through the API.
    configured_admin: Option<[u8; 32]>,
}

impl Auth {
    /// Loads the stored tokens. With no admin token configured and no usable
    /// token stored, makes an admin token and returns it so `serve` can print
    /// it once.
    pub async fn load(
        store: Store,
        configured_admin: Option<&str>,
    ) -> Result<(Auth, Option<NewToken>), StoreError> {
        let now = crate::writer::now();
        let mut created = None;
        if configured_admin.is_none()
            && !store
                .tokens()
                .await?
                .iter()
                .any(|token| token.is_usable_at(now))
        {
            created = Some(make_token(&store, Role::Admin, None).await?);
        }
        let auth = Auth {
            snapshot: RwLock::new(Arc::new(Snapshot {
                tokens: HashMap::new(),
                loaded_at: None,
            })),
            reloading: tokio::sync::Mutex::new(()),
            configured_admin: configured_admin.map(hash_token),
            store,
        };
        let records = auth.store.tokens().await?;
        auth.install(records, Instant::now());
        Ok((auth, created))
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, records: Vec<TokenRecord>, loaded_at: Instant) -> Arc<Snapshot> {
        let now = crate::writer::now();
        let tokens = records
            .into_iter()
            .filter(|record| record.is_usable_at(now))
            .filter_map(|record| {
                let role = Role::parse(&record.role)?;
                Some((
                    record.token_hash,
                    CachedToken {
                        role,
                        expires_at: record.expires_at,
                        id: Arc::from(record.id),
                    },
                ))
            })
            .collect();
        let snapshot = Arc::new(Snapshot {
            tokens,
            loaded_at: Some(loaded_at),
        });
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot.clone();
        snapshot
    }

    /// Makes the next request reload the table: after this process created
    /// or revoked a token, it sees the change at once.
    pub fn invalidate(&self) {
        let tokens = self.current().tokens.clone();
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Snapshot {
            tokens,
            loaded_at: None,
        });
    }

    /// Reloads the table (the caller holds `reloading`). When the database
    /// cannot be read, the copy held is kept and tried again after
    /// `TOKEN_CACHE_REFRESH_AGE`: every route but `/metrics` and
    /// `/openapi.json` needs the database anyway, so a revoked token gains
    /// nothing meanwhile, while the others keep working.
    async fn reload(&self) -> Arc<Snapshot> {
        let started = Instant::now();
        match self.store.tokens().await {
            Ok(records) => self.install(records, started),
            Err(error) => {
                tracing::warn!(%error, "could not reload the API tokens; using the copy held");
                let tokens = self.current().tokens.clone();
                let snapshot = Arc::new(Snapshot {
                    tokens,
                    loaded_at: Some(started),
                });
                *self
                    .snapshot
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = snapshot.clone();
                snapshot
            }
        }
    }

    /// A copy of the table at most `TOKEN_CACHE_AGE_MAX` old.
    async fn fresh_snapshot(&self) -> Arc<Snapshot> {
        let current = self.current();
        let age = current.age();
        if age < TOKEN_CACHE_REFRESH_AGE {
            return current;
        }
        if age < TOKEN_CACHE_AGE_MAX {
            // Still young enough to use: reload now, unless another
            // request already is, in which case use this copy.
            let Ok(_reloading) = self.reloading.try_lock() else {
                return current;
            };
            let current = self.current();
            if current.age() < TOKEN_CACHE_REFRESH_AGE {
                return current;
            }
            return self.reload().await;
        }
        let _reloading = self.reloading.lock().await;
        let current = self.current();
        if current.age() < TOKEN_CACHE_AGE_MAX {
            return current;
        }
        self.reload().await
    }

    /// The role of a presented token, or `None` if it is unknown, revoked or
    /// expired.
    pub async fn role_of(&self, token: &str) -> Option<Role> {
        Some(self.identify(token).await?.role)
    }

    /// Who a presented token is, or `None` if it is unknown, revoked or
    /// expired.
    pub async fn identify(&self, token: &str) -> Option<Identity> {
        let hash = hash_token(token);
        if self
            .configured_admin
            .is_some_and(|admin| constant_time_eq(&admin, &hash))
        {
            return Some(Identity {
                role: Role::Admin,
                token_id: None,
                expires_at: None,
            });
        }
        // Looked up by the SHA-256 of what was presented: how long the
        // lookup takes says nothing about any stored secret.
        let cached = self.fresh_snapshot().await.tokens.get(&hash)?.clone();
        if cached
            .expires_at
            .is_some_and(|expires_at| crate::writer::now() >= expires_at)
        {
            return None;
        }
        Some(Identity {
            role: cached.role,
            token_id: Some(cached.id),
            expires_at: cached.expires_at,
        })
    }
    /// Checks an `Authorization` header value against the role a route needs.
    pub async fn check(&self, header: Option<&str>, needed: Role) -> Result<Role, ApiError> {
        let token = bearer(header)?;
        let role = self.role_of(token).await.ok_or_else(unknown_token)?;
        if role < needed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                format!(
                    "this needs the {} role; the token has {}",
                    needed.as_str(),
                    role.as_str()
                ),
            ));
        }
        Ok(role)
    }
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
}

/// The 401 of a token that is not (or no longer) usable.
pub fn unknown_token() -> ApiError {
    unauthenticated("unknown, revoked or expired token")
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, ApiError> {
    header
        .ok_or_else(|| unauthenticated("missing Authorization: Bearer <token>"))?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| unauthenticated("the Authorization header must be 'Bearer <token>'"))
}
