//! The admin web page at `/admin`: the files `web/admin` builds (committed
//! in `crates/bursar-server/admin/`), embedded in the binary so nothing is
//! fetched at run time, and served without a token under a strict
//! Content-Security-Policy. The page is public; every API call it makes
//! carries the token its user signs in with, and the API checks the role.

use crate::error::ApiError;
use axum::Router;
use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// One built file of the page.
pub struct Asset {
    /// Its path under `/admin/`.
    pub path: &'static str,
    pub content_type: &'static str,
    /// Named by its content hash, so it may be cached for good.
    pub immutable: bool,
    pub bytes: &'static [u8],
}

/// The built files, listed by `web/admin/build.mjs` in `admin/assets.rs`.
pub const ASSETS: &[Asset] = include!(concat!(env!("CARGO_MANIFEST_DIR"), "/admin/assets.rs"));

/// Only the page's own script and stylesheet run; it talks only to this
/// server; it cannot be framed, change its base URL or submit a form
/// anywhere; and Trusted Types forbid every HTML-parsing sink (`innerHTML`
/// and the like), so text from the API can only ever be text.
pub const ADMIN_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
     trusted-types 'none'";

/// `index.html` is checked with the server on every load (a new build is
/// seen at once; unchanged, it is a 304); the hashed assets never change
/// under their name.
const INDEX_CACHE_CONTROL: &str = "no-cache";
const ASSET_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The routes of the page, outside the token layer.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// Each asset's strong ETag: the first 16 bytes of its SHA-256, in hex.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.bytes);
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
            })
            .collect()
    })
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(position) = ASSETS.iter().position(|asset| asset.path == path) else {
        let mut response = ApiError::not_found().into_response();
        secure(response.headers_mut());
        return response;
    };
    let asset = &ASSETS[position];
    let etag = &etags()[position];
    let unchanged = request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag.as_bytes()
        });
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(ETAG, etag.clone());
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if asset.immutable {
            ASSET_CACHE_CONTROL
        } else {
            INDEX_CACHE_CONTROL
        }),
    );
    secure(headers);
    response
}

/// The headers every answer under `/admin` carries.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(ADMIN_CONTENT_SECURITY_POLICY),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_names_an_index_and_the_assets_it_links() {
        let index = ASSETS
            .iter()
            .find(|asset| asset.path == "index.html")
            .expect("index.html is built");
        let index = std::str::from_utf8(index.bytes).expect("index.html is UTF-8");
        for asset in ASSETS.iter().filter(|asset| asset.immutable) {
            assert!(
                index.contains(&format!("/admin/{}", asset.path)),
                "index.html links {}",
                asset.path
            );
        }
        // No inline script or style: the policy would refuse them.
        assert!(
            !index.contains("<script>") && !index.contains("<style") && !index.contains("style=")
        );
    }
}
