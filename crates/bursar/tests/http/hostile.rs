//! Hostile clients against a real `bursar serve` process: more idle and
//! slowloris connections than its file-descriptor limit allows, kept-alive
//! connections left idle or fed a head one byte a second, a stalled body,
//! and a flood of stalled 8 MB batch bodies with the server's memory read
//! from `/proc`. Timings are printed, and asserted only with generous bounds
//! (a timer never fires early, so lower bounds are exact).

use crate::cli::{Serve, bursar, sqlite_url, without_bursar_env};
use crate::helpers::ADMIN_TOKEN;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// The short timeouts the tests give the server, in seconds.
const HEADER_READ_SECONDS: u64 = 2;
const IDLE_SECONDS: u64 = 4;
const BODY_READ_SECONDS: u64 = 2;

/// Far longer than anything here should take on a loaded machine.
const GENEROUS: Duration = Duration::from_secs(90);

/// `bursar serve` on a fresh SQLite file with the short timeouts (the body
/// read timeout `body_read_seconds`), under an open-file limit of
/// `fd_limit` if given (soft and hard, so the server cannot raise it).
async fn start(dir: &std::path::Path, fd_limit: Option<u32>, body_read_seconds: u64) -> Serve {
    let url = sqlite_url(&dir.join("bursar.db"));
    let header = HEADER_READ_SECONDS.to_string();
    let idle = IDLE_SECONDS.to_string();
    let body = body_read_seconds.to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &url,
        "--header-read-timeout",
        &header,
        "--idle-timeout",
        &idle,
        "--body-read-timeout",
        &body,
    ];
    let mut command = match fd_limit {
        None => bursar(),
        Some(limit) => {
            let mut command = without_bursar_env(Command::new("sh"));
            command.args([
                "-c",
                &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                env!("CARGO_BIN_EXE_bursar"),
            ]);
            command
        }
    };
    command.args(args).env("BURSAR_ADMIN_TOKEN", ADMIN_TOKEN);
    Serve::start_command(command, &dir.join("serve.log")).await
}

fn address(serve: &Serve) -> String {
    serve.base.trim_start_matches("http://").to_owned()
}

/// Waits until the server closes `stream` (end of file or an error);
/// returns how long that took from `since`.
async fn closed_after(mut stream: TcpStream, since: Instant) -> Duration {
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(GENEROUS, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {GENEROUS:?}"),
        }
    }
}

/// `GET /healthz` on a new connection; returns how long the answer took.
async fn healthz(serve: &Serve) -> Duration {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(GENEROUS)
        .build()
        .expect("client");
    let response = client
        .get(serve.url("/healthz"))
        .send()
        .await
        .expect("/healthz answers");
    assert_eq!(response.status(), 200);
    started.elapsed()
}

fn max(durations: &[Duration]) -> Duration {
    durations.iter().copied().max().unwrap_or_default()
}

/// 150 idle and 150 slowloris connections (a request line one byte a
/// second) against a server whose open-file limit is 256: its connection
/// cap (64) keeps it from running out of descriptors, the slow connections
/// are closed by the header-read timeout, wave after wave, and `/healthz`
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slowloris_connections_beyond_the_fd_limit_are_closed_and_healthz_answers() {
    const IDLE_CONNECTIONS: usize = 150;
    const SLOW_CONNECTIONS: usize = 150;
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = start(dir.path(), Some(256), BODY_READ_SECONDS).await;
    let address = address(&serve);
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        let stream = TcpStream::connect(&address).await.expect("connect");
        idle.push(tokio::spawn(closed_after(stream, started)));
    }
    let mut slow = Vec::new();
    for _ in 0..SLOW_CONNECTIONS {
        let stream = TcpStream::connect(&address).await.expect("connect");
        slow.push(tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let dripping = tokio::spawn(async move {
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".iter().cycle() {
                    if writer.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let mut buffer = [0u8; 1024];
            let closed = loop {
                match tokio::time::timeout(GENEROUS, reader.read(&mut buffer)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
                    Ok(Ok(_)) => continue,
                    Err(_) => panic!("a slowloris connection was still open after {GENEROUS:?}"),
                }
            };
            dripping.abort();
            closed
        }));
    }
    let healthz_took = healthz(&serve).await;
    let mut idle_closed = Vec::new();
    for task in idle {
        idle_closed.push(task.await.expect("idle connection"));
    }
    let mut slow_closed = Vec::new();
    for task in slow {
        slow_closed.push(task.await.expect("slow connection"));
    }
    println!(
        "fd limit 256: {IDLE_CONNECTIONS} idle connections all closed within {:?}, \
         {SLOW_CONNECTIONS} slowloris connections within {:?} (header-read timeout {HEADER_READ_SECONDS} s); \
         /healthz answered after {healthz_took:?}; after the flood /healthz answers in {:?}",
        max(&idle_closed),
        max(&slow_closed),
        healthz(&serve).await,
    );
    // No connection is closed before its header-read timeout.
    let header = Duration::from_secs(HEADER_READ_SECONDS);
    assert!(
        idle_closed
            .iter()
            .chain(&slow_closed)
            .all(|took| *took >= header)
    );
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    assert!(
        !log.contains("cannot accept"),
        "the server ran out of file descriptors:\n{log}"
    );
}

/// A kept-alive connection may stay silent for the idle timeout, longer
/// than the header-read timeout; once it starts its next request, the head
/// must arrive within the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_get_the_idle_timeout_and_then_the_header_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = start(dir.path(), None, BODY_READ_SECONDS).await;
    let address = address(&serve);
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    // One request answered, then silence.
    let mut silent = TcpStream::connect(&address).await.expect("connect");
    silent.write_all(request).await.expect("send");
    let mut buffer = [0u8; 1024];
    let read = silent.read(&mut buffer).await.expect("answer");
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    let silent_for = closed_after(silent, answered).await;

    // One request answered, then the next one a byte a second.
    let mut slow = TcpStream::connect(&address).await.expect("connect");
    slow.write_all(request).await.expect("send");
    let read = slow.read(&mut buffer).await.expect("answer");
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    let (mut reader, mut writer) = slow.into_split();
    let first_byte = Instant::now();
    let dripping = tokio::spawn(async move {
        for byte in request.iter().cycle() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let slow_for = loop {
        match tokio::time::timeout(GENEROUS, reader.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break first_byte.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the slow kept-alive connection was still open"),
        }
    };
    dripping.abort();
    println!(
        "kept-alive and silent: closed after {silent_for:?} (idle timeout {IDLE_SECONDS} s); \
         kept-alive and sending its next head a byte a second: closed {slow_for:?} after \
         its first byte (header-read timeout {HEADER_READ_SECONDS} s)"
    );
    assert!(
        silent_for >= Duration::from_secs(IDLE_SECONDS),
        "{silent_for:?}"
    );
    assert!(
        slow_for >= Duration::from_secs(HEADER_READ_SECONDS),
        "{slow_for:?}"
    );
    assert!(
        slow_for < Duration::from_secs(IDLE_SECONDS * 4),
        "a slow head on a kept-alive connection got the idle timeout: {slow_for:?}"
    );
}

/// A body that stops arriving is answered 408 `REQUEST_TIMEOUT` after the
/// body-read timeout, and its connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_and_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = start(dir.path(), None, BODY_READ_SECONDS).await;
    let mut stream = TcpStream::connect(address(&serve)).await.expect("connect");
    let head = format!(
        "POST /v1/users/u/courses/c/payments HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nIdempotency-Key: k\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"amount\""
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(GENEROUS, stream.read_to_end(&mut answer))
        .await
        .expect("the connection is closed")
        .expect("read the answer");
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    println!("a stalled body: answered and closed after {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert!(took >= Duration::from_secs(BODY_READ_SECONDS), "{took:?}");
}

/// `VmRSS` and `VmHWM` (the peak) of a process, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const MIB: u64 = 1024 * 1024;

/// 64 connections each send 6 MB of an 8 MB `/v1/batch` body and stall.
/// The body budget lets a few be received and refuses the rest with 503
/// `OVERLOADED` before reading them; the server's peak RSS stays under
/// 300 MB and `/healthz` answers all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_batch_bodies_keep_the_server_under_300_mb() {
    const CONNECTIONS: usize = 64;
    const DECLARED_BYTES: usize = 8 * 1024 * 1024;
    const SENT_BYTES: usize = 6 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    // A long body-read timeout, so the bodies stay stalled while memory is
    // read: what bounds memory here is the budget, not a timeout.
    let serve = start(dir.path(), None, 60).await;
    let pid = serve.pid();
    let (rss_before, _) = memory_of(pid);
    let address = address(&serve);
    let chunk = vec![b' '; 64 * 1024];
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let address = address.clone();
        let chunk = chunk.clone();
        senders.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&address).await.expect("connect");
            let head = format!(
                "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: {DECLARED_BYTES}\r\n\r\n"
            );
            stream
                .write_all(head.as_bytes())
                .await
                .expect("send the head");
            let mut sent = 0;
            while sent < SENT_BYTES {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            // Stall, holding the connection; a refused one has its answer.
            let mut answer = vec![0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(8), stream.read(&mut answer))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            (
                stream,
                String::from_utf8_lossy(&answer[..read]).into_owned(),
            )
        }));
    }
    // While the senders stall, sample the server's memory and health.
    let mut rss_max = 0;
    let mut healthz_max = Duration::ZERO;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(6) {
        rss_max = rss_max.max(memory_of(pid).0);
        healthz_max = healthz_max.max(healthz(&serve).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut refused = 0;
    let mut streams = Vec::new();
    for sender in senders {
        let (stream, answer) = sender.await.expect("sender");
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("OVERLOADED"), "{answer}");
            refused += 1;
        }
        streams.push(stream);
    }
    let (rss_after, peak) = memory_of(pid);
    println!(
        "{CONNECTIONS} stalled 8 MB batch bodies (6 MB sent each): {refused} refused with 503 \
         OVERLOADED before being read; server RSS {} MB before, at most {} MB while stalled \
         (VmHWM {} MB, {} MB after); /healthz answered within {healthz_max:?} throughout",
        rss_before / MIB,
        rss_max / MIB,
        peak / MIB,
        rss_after / MIB,
    );
    drop(streams);
    assert!(refused > 0, "the budget refused no body");
    assert!(peak < 300 * MIB, "peak RSS {} MB", peak / MIB);
}
