//! The cost of bursar's write path without HTTP: batches of payments into one
//! (or many) enrollments through `Store::execute`, one after another, as the
//! group-commit writer issues them. Prints one JSON line with the operations
//! per second and the microseconds of writer time per operation.
//!
//! Usage: `store-writer DATABASE_URL BATCHES BATCH_SIZE [ENROLLMENTS]`

use bursar_core::{
    Amount, Command, CourseId, Currency, EnrollTerms, EnrollmentKey, IdempotencyKey, Outcome,
    Price, Request, Timestamp, UserId,
};
use bursar_store::Store;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn key(index: usize) -> EnrollmentKey {
    EnrollmentKey {
        user_id: UserId::parse(&format!("user-{index}")).expect("id"),
        course_id: CourseId::parse("course").expect("id"),
    }
}

#[tokio::main]
async fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    if arguments.len() < 4 {
        eprintln!("usage: store-writer DATABASE_URL BATCHES BATCH_SIZE [ENROLLMENTS]");
        std::process::exit(2);
    }
    let batches: usize = arguments[2].parse().expect("BATCHES");
    let batch_size: usize = arguments[3].parse().expect("BATCH_SIZE");
    let enrollments: usize = arguments
        .get(4)
        .map_or(1, |text| text.parse().expect("ENROLLMENTS"));
    let store = Store::open(&arguments[1]).await.expect("open");
    let mut now = 1_800_000_000_000_000;
    let terms = EnrollTerms {
        currency: Currency::parse("USD").expect("currency"),
        price: Price::new(1_000_000_000_000).expect("price"),
        access_policy: Default::default(),
    };
    for chunk in (0..enrollments).collect::<Vec<_>>().chunks(1000) {
        let requests = chunk
            .iter()
            .map(|index| Request {
                key: key(*index),
                idempotency_key: None,
                command: Command::Enroll(terms),
            })
            .collect();
        store
            .execute(requests, Timestamp::from_unix_micros(now))
            .await
            .expect("enroll");
    }
    let started = Instant::now();
    let mut accepted = 0;
    for batch in 0..batches {
        now += 1000;
        let requests = (0..batch_size)
            .map(|index| {
                let number = batch * batch_size + index;
                Request {
                    key: key(number % enrollments),
                    idempotency_key: Some(
                        IdempotencyKey::parse(&format!(
                            "bench-{number:x}-{}",
                            number * 7919 % 10007
                        ))
                        .expect("key"),
                    ),
                    command: Command::Payment {
                        amount: Amount::new(1).expect("amount"),
                        currency: None,
                        reference: None,
                    },
                }
            })
            .collect();
        let outcomes = store
            .execute(requests, Timestamp::from_unix_micros(now))
            .await
            .expect("execute");
        accepted += outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Outcome::Accepted(_)))
            .count();
    }
    let seconds = started.elapsed().as_secs_f64();
    let operations = batches * batch_size;
    assert_eq!(accepted, operations, "every payment is accepted");
    println!(
        "{{\"operations\":{operations},\"batch_size\":{batch_size},\"enrollments\":{enrollments},\"seconds\":{seconds:.3},\"operations_per_second\":{:.0},\"microseconds_per_operation\":{:.2}}}",
        operations as f64 / seconds,
        seconds * 1e6 / operations as f64
    );
}
