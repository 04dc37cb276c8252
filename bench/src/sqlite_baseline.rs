//! The plain approach bursar replaces, measured on SQLite: every payment is
//! its own transaction (`UPDATE enrollments SET amount_paid = amount_paid + ?`
//! guarded by the amount due, then `INSERT` into a payments table), committed
//! with `synchronous=FULL`, from many threads onto one hot row.
//!
//! Usage: `sqlite-baseline DB_PATH THREADS SECONDS` — prints one JSON line.

use rusqlite::{Connection, TransactionBehavior, params};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn open(path: &str) -> Connection {
    let connection = Connection::open(path).expect("open the database");
    connection
        .busy_timeout(Duration::from_secs(60))
        .expect("busy timeout");
    connection
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .expect("pragmas");
    connection
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let [_, path, threads, seconds] = arguments.as_slice() else {
        eprintln!("usage: sqlite-baseline DB_PATH THREADS SECONDS");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().expect("THREADS is a number");
    let duration = Duration::from_secs_f64(seconds.parse().expect("SECONDS is a number"));
    {
        let connection = open(path);
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS enrollments (id INTEGER PRIMARY KEY, amount_due INTEGER NOT NULL, amount_paid INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, enrollment_id INTEGER NOT NULL, amount INTEGER NOT NULL, idempotency_key TEXT NOT NULL UNIQUE);
                 INSERT OR IGNORE INTO enrollments (id, amount_due, amount_paid) VALUES (1, 1000000000000000, 0);",
            )
            .expect("schema");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let path = path.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut connection = open(&path);
                let mut latencies = Vec::new();
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    let transaction = connection
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .expect("begin");
                    let updated = transaction
                        .execute(
                            "UPDATE enrollments SET amount_paid = amount_paid + ?1, amount_due = amount_due - ?1 WHERE id = 1 AND amount_due >= ?1",
                            params![1],
                        )
                        .expect("update");
                    assert_eq!(updated, 1);
                    transaction
                        .execute(
                            "INSERT INTO payments (enrollment_id, amount, idempotency_key) VALUES (1, 1, ?1)",
                            params![format!("{thread}-{count}-{}", std::process::id())],
                        )
                        .expect("insert");
                    transaction.commit().expect("commit");
                    latencies.push(begun.elapsed().as_micros() as u64);
                    count += 1;
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<u64> = workers
        .into_iter()
        .flat_map(|worker| worker.join().expect("worker"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let report = serde_json::json!({
        "case": "sqlite one transaction per payment",
        "threads": threads,
        "payments": latencies.len(),
        "seconds": elapsed,
        "payments_per_second": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": percentile(&latencies, 1.0),
    });
    println!("{report}");
}
