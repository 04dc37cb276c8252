//! The admin calls for API tokens: list, make (its secret is in the answer,
//! once) and revoke. Making a token carries no idempotency key, so it is
//! sent once and never retried: a lost answer must not make two tokens.

use crate::{Client, Clock, Outcome, parse_json};
use reqwest::Method;
use serde::{Deserialize, Serialize};

/// A token as `GET /v1/tokens` lists it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenInfo {
    /// The public id, `tok_` and 16 hex digits.
    pub id: String,
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked: bool,
    pub revoked_at: Option<String>,
    pub expired: bool,
}

/// The answer of `POST /v1/tokens`: the only one that holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedToken {
    pub id: String,
    /// The secret for `Authorization: Bearer`; shown only this once.
    pub token: String,
    pub role: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateTokenRequest {
    /// `reader`, `writer` or `admin`.
    pub role: String,
    /// Seconds the token lives, 1 to 315,360,000; `None`: it does not
    /// expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokensBody {
    tokens: Vec<TokenInfo>,
}

/// A token id as one path segment: anything but `[A-Za-z0-9_-]` escaped.
fn path_segment(id: &str) -> String {
    let mut segment = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

impl<C: Clock> Client<C> {
    /// `GET /v1/tokens` (admin): every token, revoked and expired included.
    pub async fn tokens(&self) -> Outcome<Vec<TokenInfo>> {
        self.get(self.url("/v1/tokens"), parse_json::<TokensBody>)
            .await
            .map(|body| body.tokens)
    }

    /// `POST /v1/tokens` (admin), sent once: an unknown outcome is not
    /// retried, so it never makes two tokens.
    pub async fn create_token(&self, request: &CreateTokenRequest) -> Outcome<CreatedToken> {
        let body = match serde_json::to_vec(request) {
            Ok(body) => body,
            Err(error) => return crate::unserializable(error),
        };
        self.call(
            &self.inner.probe_policy,
            Method::POST,
            self.url("/v1/tokens"),
            None,
            Some(body),
            parse_json,
        )
        .await
    }

    /// `DELETE /v1/tokens/{id}` (admin): revokes the token and answers it as
    /// now stored. Revoking is idempotent, so it is retried like a read.
    pub async fn revoke_token(&self, id: &str) -> Outcome<TokenInfo> {
        let url = self.url(&format!("/v1/tokens/{}", path_segment(id)));
        self.call(
            &self.inner.policy,
            Method::DELETE,
            url,
            None,
            None,
            parse_json,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn ids_are_escaped_in_paths() {
        assert_eq!(path_segment("tok_0a1b"), "tok_0a1b");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
