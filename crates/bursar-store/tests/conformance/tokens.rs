//! API tokens in storage: kept as hashes with their ids, roles and times,
//! listed oldest first, revoked by id (once: a second revocation keeps the
//! first time), expiry kept, and all of it seen by a second store on the
//! same database and after reopening.

use crate::helpers::{Backend, SECOND, T0, at, fresh_store};
use bursar_store::{Store, TokenRecord};

crate::conformance!(
    tokens_are_kept,
    tokens_are_revoked_by_id,
    expiry_is_kept_and_checked,
);

fn token(id: &str, hash: u8, role: &str, created: i64) -> TokenRecord {
    TokenRecord {
        id: id.to_owned(),
        token_hash: [hash; 32],
        role: role.to_owned(),
        created_at: at(created),
        expires_at: None,
        revoked_at: None,
    }
}

/// Tokens are kept as their hashes with their ids, roles and times, listed
/// oldest first; neither an id nor a hash can be stored twice.
async fn tokens_are_kept(backend: Backend) {
    let (store, url, _db) = fresh_store(backend).await;
    assert!(store.tokens().await.expect("tokens").is_empty());
    let admin = token("tok_admin", 7, "admin", T0);
    let reader = token("tok_reader", 9, "reader", T0 + SECOND);
    store.insert_token(&admin).await.expect("insert");
    store.insert_token(&reader).await.expect("insert");
    // The same hash, or the same id, again must not make a second record.
    let same_hash = token("tok_other", 7, "writer", T0 + 2 * SECOND);
    assert!(store.insert_token(&same_hash).await.is_err());
    let same_id = token("tok_admin", 8, "writer", T0 + 2 * SECOND);
    assert!(store.insert_token(&same_id).await.is_err());
    assert_eq!(
        store.tokens().await.expect("tokens"),
        vec![admin.clone(), reader.clone()]
    );
    drop(store);
    let reopened = Store::open(&url).await.expect("reopen");
    assert_eq!(
        reopened.tokens().await.expect("tokens"),
        vec![admin, reader]
    );
}

/// Revoking by id marks the token (and only it), is seen through another
/// store on the same database, and a second revocation keeps the first
/// time; an unknown id is `None`.
async fn tokens_are_revoked_by_id(backend: Backend) {
    let (store, url, _db) = fresh_store(backend).await;
    let kept = token("tok_kept", 1, "writer", T0);
    let revoked = token("tok_revoked", 2, "reader", T0);
    store.insert_token(&kept).await.expect("insert");
    store.insert_token(&revoked).await.expect("insert");
    let other = Store::open(&url).await.expect("a second store");

    let answer = store
        .revoke_token("tok_revoked", at(T0 + 10 * SECOND))
        .await
        .expect("revoke")
        .expect("the token exists");
    assert_eq!(answer.revoked_at, Some(at(T0 + 10 * SECOND)));
    assert!(!answer.is_usable_at(at(T0 + 10 * SECOND)));
    assert_eq!(answer.token_hash, revoked.token_hash);

    let again = other
        .revoke_token("tok_revoked", at(T0 + 20 * SECOND))
        .await
        .expect("revoke again")
        .expect("the token exists");
    assert_eq!(
        again.revoked_at,
        Some(at(T0 + 10 * SECOND)),
        "a second revocation keeps the first time"
    );
    assert_eq!(
        other
            .revoke_token("tok_unknown", at(T0))
            .await
            .expect("revoke"),
        None
    );
    let listed = other.tokens().await.expect("tokens");
    assert_eq!(listed.len(), 2);
    let by_id = |id: &str| {
        listed
            .iter()
            .find(|token| token.id == id)
            .expect("listed")
            .clone()
    };
    assert_eq!(by_id("tok_kept"), kept, "the other token is untouched");
    assert_eq!(by_id("tok_revoked").revoked_at, Some(at(T0 + 10 * SECOND)));
}

/// An expiry time is kept, and a token is usable before it only.
async fn expiry_is_kept_and_checked(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    let expiring = TokenRecord {
        expires_at: Some(at(T0 + 60 * SECOND)),
        ..token("tok_expiring", 3, "reader", T0)
    };
    store.insert_token(&expiring).await.expect("insert");
    let listed = store.tokens().await.expect("tokens");
    assert_eq!(listed, vec![expiring.clone()]);
    assert!(listed[0].is_usable_at(at(T0 + 59 * SECOND)));
    assert!(!listed[0].is_usable_at(at(T0 + 60 * SECOND)));
    assert!(!listed[0].is_usable_at(at(T0 + 61 * SECOND)));
}
