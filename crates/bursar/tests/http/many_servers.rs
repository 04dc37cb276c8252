//! Many `bursar serve` processes on one PostgreSQL database, as a school runs
//! them behind a load balancer: concurrent clients spread across three
//! processes, the same idempotency key sent to two processes at once, twenty
//! tabs racing to pay the remaining balance, and a process killed with
//! SIGKILL while the others keep serving. The database alone decides, so
//! nothing acknowledged is lost and nothing counts twice.

mod postgres {
    use crate::cli::Serve;
    use crate::helpers::{ADMIN_TOKEN, Backend, TestDb};
    use reqwest::StatusCode;
    use serde_json::{Value, json};
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Mutex;

    /// Processes sharing the database in every test here.
    const SERVERS: usize = 3;

    /// Longest any one HTTP request may take before the client counts it as
    /// failed (and, if it changes state, retries it with the same key).
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

    /// Tries at one operation before the test gives up on it: a failed try
    /// (a 503 or a process that went away) moves on to the next process.
    const OPERATION_TRIES_MAX: usize = 30;

    /// Three `bursar serve` processes on one fresh PostgreSQL database,
    /// started at the same moment (so their migrations race too). Dropping it
    /// kills every process still running, then drops the database.
    struct Cluster {
        servers: Vec<Serve>,
        bases: Vec<String>,
        client: reqwest::Client,
        _logs: tempfile::TempDir,
        _db: TestDb,
    }

    impl Cluster {
        async fn start() -> Cluster {
            let db = TestDb::new(Backend::Postgres).await;
            let logs = tempfile::tempdir().expect("temp dir");
            let starting = (0..SERVERS)
                .map(|index| {
                    let log = logs.path().join(format!("serve-{index}.log"));
                    let url = db.url.clone();
                    async move { Serve::start(&url, Some(ADMIN_TOKEN), &log).await }
                })
                .collect();
            let servers = futures_join_all(starting).await;
            let bases = servers.iter().map(|server| server.base.clone()).collect();
            Cluster {
                servers,
                bases,
                client: reqwest::Client::builder()
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .expect("HTTP client"),
                _logs: logs,
                _db: db,
            }
        }

        fn handle(&self) -> Handle {
            Handle {
                bases: Arc::new(self.bases.clone()),
                client: self.client.clone(),
            }
        }
    }

    /// Awaits every future at once, in order; a stand-in for
    /// `futures::future::join_all` without the dependency.
    async fn futures_join_all<T: Send + 'static>(
        futures: Vec<impl std::future::Future<Output = T> + Send + 'static>,
    ) -> Vec<T> {
        let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.expect("task"));
        }
        results
    }

    /// What a client task needs: the processes' addresses and an HTTP client.
    #[derive(Clone)]
    struct Handle {
        bases: Arc<Vec<String>>,
        client: reqwest::Client,
    }

    /// One answer: status, whether it was a replay, and the JSON body.
    #[derive(Debug)]
    struct Answer {
        status: StatusCode,
        replayed: bool,
        body: Value,
    }

    impl Handle {
        /// One request to process `server`; `Err` when the process could not
        /// be reached or did not answer.
        async fn send(
            &self,
            server: usize,
            method: reqwest::Method,
            path: &str,
            key: Option<&str>,
            body: Option<Value>,
        ) -> Result<Answer, reqwest::Error> {
            let mut request = self
                .client
                .request(method, format!("{}{path}", self.bases[server]))
                .bearer_auth(ADMIN_TOKEN);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await?;
            let status = response.status();
            let replayed = response
                .headers()
                .get("Idempotent-Replayed")
                .is_some_and(|value| value == "true");
            let text = response.text().await?;
            Ok(Answer {
                status,
                replayed,
                body: serde_json::from_str(&text).unwrap_or(Value::Null),
            })
        }

        /// A state-changing POST under `key`, first to process `server`, then
        /// to the next one after every unreachable process or 503, always
        /// with the same key, until some process gives a definite answer.
        async fn post_until_answered(
            &self,
            server: usize,
            path: &str,
            key: &str,
            body: Value,
        ) -> (usize, Answer) {
            let mut target = server;
            let mut last_failure = String::new();
            for _ in 0..OPERATION_TRIES_MAX {
                match self
                    .send(
                        target,
                        reqwest::Method::POST,
                        path,
                        Some(key),
                        Some(body.clone()),
                    )
                    .await
                {
                    Ok(answer) if answer.status != StatusCode::SERVICE_UNAVAILABLE => {
                        assert_ne!(
                            answer.status,
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "{path} under {key}: {}",
                            answer.body
                        );
                        return (target, answer);
                    }
                    Ok(answer) => last_failure = format!("503 {}", answer.body),
                    Err(error) => last_failure = error.to_string(),
                }
                target = (target + 1) % self.bases.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!(
                "{path} under {key} got no answer in {OPERATION_TRIES_MAX} tries: {last_failure}"
            );
        }

        async fn get(&self, server: usize, path: &str) -> Value {
            let answer = self
                .send(server, reqwest::Method::GET, path, None, None)
                .await
                .unwrap_or_else(|error| panic!("GET {path}: {error}"));
            assert_eq!(answer.status, StatusCode::OK, "GET {path}: {}", answer.body);
            answer.body
        }

        async fn enroll(&self, server: usize, user: &str, course: &str, price: i64) {
            let answer = self
                .send(
                    server,
                    reqwest::Method::PUT,
                    &format!("/v1/users/{user}/courses/{course}"),
                    None,
                    Some(json!({"currency": "USD", "price": price})),
                )
                .await
                .expect("enroll");
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        }

        /// Every ledger entry of the enrollment, following the pages.
        async fn ledger(&self, server: usize, user: &str, course: &str) -> Vec<Value> {
            let mut entries = Vec::new();
            let mut after = 0;
            loop {
                let page = self
                    .get(
                        server,
                        &format!(
                            "/v1/users/{user}/courses/{course}/ledger?after={after}&limit=1000"
                        ),
                    )
                    .await;
                let page = page["entries"].as_array().expect("entries").clone();
                let Some(last) = page.last() else {
                    return entries;
                };
                after = last["seq"].as_u64().expect("seq");
                entries.extend(page);
            }
        }

        /// Checks, through process `server`, that the enrollment holds exactly
        /// the acknowledged payments: the amount is their sum, and the ledger
        /// holds every acknowledged key once with its amount, and nothing else.
        async fn assert_holds_exactly(
            &self,
            server: usize,
            user: &str,
            course: &str,
            acknowledged: &BTreeMap<String, i64>,
        ) {
            let enrollment = self
                .get(server, &format!("/v1/users/{user}/courses/{course}"))
                .await;
            let sum: i64 = acknowledged.values().sum();
            assert_eq!(enrollment["amount_paid"], json!(sum), "{enrollment}");
            assert_eq!(
                enrollment["version"],
                json!(1 + acknowledged.len()),
                "{enrollment}"
            );
            let mut in_ledger: BTreeMap<String, i64> = BTreeMap::new();
            for entry in self.ledger(server, user, course).await {
                if entry["kind"] != "PAYMENT" {
                    continue;
                }
                let key = entry["idempotency_key"]
                    .as_str()
                    .expect("a payment has a key")
                    .to_owned();
                let amount = entry["amount"].as_i64().expect("amount");
                assert!(
                    in_ledger.insert(key.clone(), amount).is_none(),
                    "key {key} is in the ledger twice"
                );
            }
            assert_eq!(&in_ledger, acknowledged);
            let audit = self.get(server, "/v1/audit").await;
            assert_eq!(audit["ok"], json!(true), "audit: {audit}");
        }
    }

    /// Ninety clients spread across three processes pay into one enrollment;
    /// 15% of them send each payment to two processes at once under one key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ninety_clients_on_three_servers_pay_into_one_enrollment() {
        if !bursar_store::testing::postgres_available() {
            return;
        }
        const CLIENTS: usize = 90;
        const PAYMENTS_PER_CLIENT: usize = 4;
        /// 15% of the clients, rounded up: 14.
        const DOUBLE_SENDERS: usize = (CLIENTS * 15).div_ceil(100);
        /// Every sixth client sends twice, until there are enough of them.
        const DOUBLE_SENDER_EVERY: usize = CLIENTS / DOUBLE_SENDERS;
        let cluster = Cluster::start().await;
        let handle = cluster.handle();
        handle.enroll(0, "hot", "c1", 1_000_000_000).await;

        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let doubled = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let handle = handle.clone();
                let acknowledged = acknowledged.clone();
                let doubled = doubled.clone();
                async move {
                    let server = client % SERVERS;
                    let sends_twice = client % DOUBLE_SENDER_EVERY == 0
                        && client / DOUBLE_SENDER_EVERY < DOUBLE_SENDERS;
                    for payment in 0..PAYMENTS_PER_CLIENT {
                        let key = format!("client-{client}-payment-{payment}");
                        let amount = 100 + ((client * 37 + payment * 11) % 900) as i64;
                        let path = "/v1/users/hot/courses/c1/payments";
                        let body = json!({"amount": amount});
                        let answer = if sends_twice {
                            let other = (server + 1) % SERVERS;
                            let ((_, first), (_, second)) = tokio::join!(
                                handle.post_until_answered(server, path, &key, body.clone()),
                                handle.post_until_answered(other, path, &key, body.clone()),
                            );
                            assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
                            assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
                            assert_eq!(
                                first.body["entry"], second.body["entry"],
                                "both processes answer with the one entry"
                            );
                            assert!(
                                first.replayed || second.replayed,
                                "one of the two must be a replay"
                            );
                            doubled.fetch_add(1, Ordering::Relaxed);
                            first
                        } else {
                            handle.post_until_answered(server, path, &key, body).await.1
                        };
                        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
                        assert_eq!(answer.body["entry"]["amount"], json!(amount));
                        acknowledged.lock().await.insert(key, amount);
                    }
                }
            })
            .collect();
        futures_join_all(clients).await;

        let acknowledged = acknowledged.lock().await.clone();
        assert_eq!(acknowledged.len(), CLIENTS * PAYMENTS_PER_CLIENT);
        assert_eq!(
            doubled.load(Ordering::Relaxed),
            DOUBLE_SENDERS * PAYMENTS_PER_CLIENT
        );
        for server in 0..SERVERS {
            handle
                .assert_holds_exactly(server, "hot", "c1", &acknowledged)
                .await;
        }
    }

    /// Twenty tabs press "pay remaining balance" at once, spread across the
    /// three processes: exactly one pays.
    /// Nine writers spread over the three servers while one consumer pages
    /// through the feed from each server in turn: a batch that took lower
    /// positions always commits before one that took higher ones, so the
    /// consumer never steps past an event that is still to commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_feed_never_skips_while_three_servers_write() {
        if !bursar_store::testing::postgres_available() {
            return;
        }
        let cluster = Cluster::start().await;
        crate::events::race_and_consume(&cluster.client, &cluster.bases, 9).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twenty_tabs_pay_remaining_across_three_servers_once() {
        if !bursar_store::testing::postgres_available() {
            return;
        }
        const TABS: usize = 20;
        let cluster = Cluster::start().await;
        let handle = cluster.handle();
        handle.enroll(1, "tabs", "c1", 5_000).await;

        let tabs: Vec<_> = (0..TABS)
            .map(|tab| {
                let handle = handle.clone();
                async move {
                    let key = format!("tab-{tab}");
                    handle
                        .post_until_answered(
                            tab % SERVERS,
                            "/v1/users/tabs/courses/c1/pay-remaining",
                            &key,
                            json!({}),
                        )
                        .await
                        .1
                }
            })
            .collect();
        let answers = futures_join_all(tabs).await;
        let mut by_status: HashMap<StatusCode, usize> = HashMap::new();
        for answer in &answers {
            *by_status.entry(answer.status).or_default() += 1;
            if answer.status == StatusCode::CONFLICT {
                assert_eq!(
                    answer.body["error"]["code"], "NOTHING_DUE",
                    "{}",
                    answer.body
                );
            }
        }
        assert_eq!(by_status.get(&StatusCode::CREATED), Some(&1), "{answers:?}");
        assert_eq!(
            by_status.get(&StatusCode::CONFLICT),
            Some(&(TABS - 1)),
            "{answers:?}"
        );
        let paid = answers
            .iter()
            .find(|answer| answer.status == StatusCode::CREATED)
            .expect("one payment");
        assert_eq!(paid.body["entry"]["amount"], json!(5_000));

        let enrollment = handle.get(2, "/v1/users/tabs/courses/c1").await;
        assert_eq!(enrollment["amount_paid"], json!(5_000));
        assert_eq!(enrollment["amount_due"], json!(0));
        assert_eq!(enrollment["payment_status"], "COMPLETED");
        let payments = handle
            .ledger(0, "tabs", "c1")
            .await
            .into_iter()
            .filter(|entry| entry["kind"] == "PAYMENT")
            .count();
        assert_eq!(payments, 1);
        let audit = handle.get(0, "/v1/audit").await;
        assert_eq!(audit["ok"], json!(true), "audit: {audit}");
    }

    /// One process is killed with SIGKILL in the middle of the load; the
    /// clients retry what was not acknowledged, with the same keys, on the
    /// processes left. Every acknowledged payment is there once, including
    /// those the killed process acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_killed_mid_load_loses_nothing_acknowledged() {
        if !bursar_store::testing::postgres_available() {
            return;
        }
        const CLIENTS: usize = 30;
        const PAYMENTS_PER_CLIENT: usize = 10;
        /// The process that is killed.
        const VICTIM: usize = 2;
        let mut cluster = Cluster::start().await;
        let handle = cluster.handle();
        handle.enroll(0, "steady", "c1", 1_000_000_000).await;

        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let acknowledged_by_victim = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let handle = handle.clone();
                let acknowledged = acknowledged.clone();
                let acknowledged_by_victim = acknowledged_by_victim.clone();
                let done = done.clone();
                async move {
                    for payment in 0..PAYMENTS_PER_CLIENT {
                        let key = format!("steady-{client}-{payment}");
                        let amount = 100 + ((client * 13 + payment * 7) % 500) as i64;
                        let (server, answer) = handle
                            .post_until_answered(
                                (client + payment) % SERVERS,
                                "/v1/users/steady/courses/c1/payments",
                                &key,
                                json!({"amount": amount}),
                            )
                            .await;
                        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
                        if server == VICTIM {
                            acknowledged_by_victim.fetch_add(1, Ordering::Relaxed);
                        }
                        acknowledged.lock().await.insert(key, amount);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .collect();
        let load = tokio::spawn(futures_join_all(clients));

        // Kill the victim once about a third of the payments are in, while
        // requests are in flight on it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::Relaxed) < CLIENTS * PAYMENTS_PER_CLIENT / 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load made no progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cluster.servers[VICTIM].kill().await;
        let killed_after = done.load(Ordering::Relaxed);
        load.await.expect("load");

        let acknowledged = acknowledged.lock().await.clone();
        assert_eq!(acknowledged.len(), CLIENTS * PAYMENTS_PER_CLIENT);
        assert!(
            acknowledged_by_victim.load(Ordering::Relaxed) > 0,
            "the killed process acknowledged nothing before it died"
        );
        assert!(
            killed_after < CLIENTS * PAYMENTS_PER_CLIENT,
            "the kill came after the load"
        );
        for server in (0..SERVERS).filter(|server| *server != VICTIM) {
            handle
                .assert_holds_exactly(server, "steady", "c1", &acknowledged)
                .await;
        }
    }
}
