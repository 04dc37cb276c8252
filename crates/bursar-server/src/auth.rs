//! Bearer-token auth: roles, token generation, and the check every request
//! but `/healthz` passes. Tokens are stored only as SHA-256 hashes and
//! compared in constant time.

use crate::error::ApiError;
use axum::http::StatusCode;
use bursar_store::{Store, StoreError, TokenRecord};
use sha2::{Digest, Sha256};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often an unknown token may trigger a reload of the token table, so a
/// token created with `bursar token create` works without a restart while a
/// flood of bad tokens cannot hammer the database.
const TOKEN_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// Equal-time comparison: the time taken does not depend on where the two
/// differ.
fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    let mut difference = 0u8;
    for (a, b) in left.iter().zip(right) {
        difference |= a ^ b;
    }
    difference == 0
}

pub struct Auth {
    store: Store,
    tokens: RwLock<Vec<([u8; 32], Role)>>,
    configured_admin: Option<[u8; 32]>,
    last_reload: Mutex<Instant>,
}

/// Creates a token, stores its hash, and returns the token (shown once).
pub async fn create_token(store: &Store, role: Role) -> Result<String, StoreError> {
    let token = generate_token();
    store
        .insert_token(
            TokenRecord {
                token_hash: hash_token(&token),
                role: role.as_str().to_owned(),
            },
            crate::writer::now(),
        )
        .await?;
    Ok(token)
}

impl Auth {
    /// Loads the stored tokens. With no admin token configured and none
    /// stored, creates one and returns it so `serve` can print it once.
    pub async fn load(
        store: Store,
        configured_admin: Option<&str>,
    ) -> Result<(Auth, Option<String>), StoreError> {
        let mut created = None;
        if configured_admin.is_none() && store.tokens().await?.is_empty() {
            created = Some(create_token(&store, Role::Admin).await?);
        }
        let auth = Auth {
            store,
            tokens: RwLock::new(Vec::new()),
            configured_admin: configured_admin.map(hash_token),
            last_reload: Mutex::new(Instant::now()),
        };
        auth.reload().await?;
        Ok((auth, created))
    }

    async fn reload(&self) -> Result<(), StoreError> {
        let mut tokens: Vec<([u8; 32], Role)> = self
            .store
            .tokens()
            .await?
            .into_iter()
            .filter_map(|record| Some((record.token_hash, Role::parse(&record.role)?)))
            .collect();
        if let Some(admin) = self.configured_admin {
            tokens.push((admin, Role::Admin));
        }
        *self.tokens.write().expect("token lock") = tokens;
        Ok(())
    }

    fn lookup(&self, hash: &[u8; 32]) -> Option<Role> {
        // Compare against every token, so the time does not say which
        // (or whether one) matched early.
        let mut found = None;
        for (stored, role) in self.tokens.read().expect("token lock").iter() {
            if constant_time_eq(stored, hash) {
                found = Some(*role);
            }
        }
        found
    }

    /// The role of a presented token, or `None` if it is unknown.
    pub async fn role_of(&self, token: &str) -> Option<Role> {
        let hash = hash_token(token);
        if let Some(role) = self.lookup(&hash) {
            return Some(role);
        }
        let reload = {
            let mut last = self.last_reload.lock().expect("reload lock");
            if last.elapsed() >= TOKEN_RELOAD_INTERVAL {
                *last = Instant::now();
                true
            } else {
                false
            }
        };
        if reload {
            if let Err(error) = self.reload().await {
                tracing::warn!(%error, "could not reload API tokens");
            }
            return self.lookup(&hash);
        }
        None
    }

    /// Checks an `Authorization` header value against the role a route needs.
    pub async fn check(&self, header: Option<&str>, needed: Role) -> Result<Role, ApiError> {
        let unauthenticated =
            |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message);
        let header =
            header.ok_or_else(|| unauthenticated("missing Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unauthenticated("the Authorization header must be 'Bearer <token>'"))?;
        let role = self
            .role_of(token)
            .await
            .ok_or_else(|| unauthenticated("unknown token"))?;
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
