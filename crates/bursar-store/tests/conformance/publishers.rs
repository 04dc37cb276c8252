//! The publishers' cursors and leases: a new publisher starts at 0 with its
//! lease taken; another owner is refused while the lease runs and takes over
//! once it has passed or was released; the cursor never moves backwards,
//! and an owner that lost the lease can no longer move it.

use crate::helpers::{Backend, fresh_store};
use std::time::Duration;

crate::conformance!(
    a_new_publisher_starts_at_the_beginning,
    one_owner_at_a_time_until_the_lease_passes,
);

const LONG: Duration = Duration::from_secs(60);

async fn a_new_publisher_starts_at_the_beginning(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    assert_eq!(store.publisher("nats:A").await.expect("read"), None);
    assert_eq!(
        store
            .claim_publisher("nats:A", "one", LONG)
            .await
            .expect("claim"),
        Some(0)
    );
    assert!(
        store
            .advance_publisher("nats:A", "one", 7, LONG)
            .await
            .expect("advance")
    );
    // Never backwards, whoever asks.
    assert!(
        store
            .advance_publisher("nats:A", "one", 3, LONG)
            .await
            .expect("advance")
    );
    let row = store.publisher("nats:A").await.expect("read").expect("row");
    assert_eq!(row.position, 7);
    assert_eq!(row.lease_owner.as_deref(), Some("one"));
    // Claiming again keeps the owner's place; other names are other cursors.
    assert_eq!(
        store
            .claim_publisher("nats:A", "one", LONG)
            .await
            .expect("claim"),
        Some(7)
    );
    assert_eq!(
        store
            .claim_publisher("nats:B", "two", LONG)
            .await
            .expect("claim"),
        Some(0)
    );
}

async fn one_owner_at_a_time_until_the_lease_passes(backend: Backend) {
    let (store, _url, _db) = fresh_store(backend).await;
    assert_eq!(
        store
            .claim_publisher("p", "one", LONG)
            .await
            .expect("claim"),
        Some(0)
    );
    assert_eq!(
        store
            .claim_publisher("p", "two", LONG)
            .await
            .expect("claim"),
        None
    );
    assert!(
        !store
            .advance_publisher("p", "two", 5, LONG)
            .await
            .expect("advance")
    );
    // Released: the next owner takes over at once, where the cursor was.
    assert!(
        store
            .advance_publisher("p", "one", 4, LONG)
            .await
            .expect("advance")
    );
    store.release_publisher("p", "one").await.expect("release");
    assert_eq!(
        store
            .claim_publisher("p", "two", LONG)
            .await
            .expect("claim"),
        Some(4)
    );
    // The old owner cannot move the cursor any more.
    assert!(
        !store
            .advance_publisher("p", "one", 9, LONG)
            .await
            .expect("advance")
    );
    // A lease that passed (its holder stopped renewing) is taken over.
    let short = Duration::from_millis(200);
    assert!(
        store
            .advance_publisher("p", "two", 6, short)
            .await
            .expect("advance")
    );
    assert_eq!(
        store
            .claim_publisher("p", "three", LONG)
            .await
            .expect("claim"),
        None
    );
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    assert_eq!(
        store
            .claim_publisher("p", "three", LONG)
            .await
            .expect("claim"),
        Some(6)
    );
    assert!(
        !store
            .advance_publisher("p", "two", 8, LONG)
            .await
            .expect("advance")
    );
    // Releasing a lease one does not hold changes nothing.
    store.release_publisher("p", "two").await.expect("release");
    let row = store.publisher("p").await.expect("read").expect("row");
    assert_eq!(
        (row.position, row.lease_owner.as_deref()),
        (6, Some("three"))
    );
}
