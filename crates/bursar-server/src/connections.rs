//! Connections: the accept loop over hyper, with a cap on open connections
//! kept below the file-descriptor limit, a header-read timeout, an idle
//! keep-alive timeout, a body-read timeout and graceful shutdown — so that
//! idle, slow or stalled clients cannot hold the server's sockets.
//!
//! hyper's HTTP/1 `header_read_timeout` starts whenever hyper starts reading
//! a request head: on a new connection, and again right after each response
//! on a kept-alive one. Alone it would close an idle kept-alive connection
//! after the header-read timeout. The hyper timer given to each connection
//! ([`HeadTimer`]) therefore decides the deadline from what the socket
//! ([`TrackedStream`]) has seen: a new connection must send its whole head
//! within `header_read_timeout`; a kept-alive one may stay silent for
//! `idle_timeout`, and once the first byte of its next request arrives, the
//! rest of the head must follow within `header_read_timeout`.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_http::timeout::RequestBodyTimeout;

/// How long a client has to send a request's line and headers: from the
/// accepted connection, or from the first byte of the next request on a
/// kept-alive one. A real client sends its head in one packet; 10 s rides
/// out a slow mobile link and still closes a slowloris (one byte a second)
/// connection quickly.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kept-alive connection may wait, silent, for its next request.
/// Connection pools of HTTP clients keep connections for about this long
/// (and usually less: a client should close its idle connections before the
/// server does); a minute saves new handshakes between bursts while an idle
/// socket costs a few kilobytes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a request body may stall: no new bytes within this time and
/// the request is answered 408 `REQUEST_TIMEOUT` (nothing done) and its
/// connection closed. A sender that keeps sending is bounded by the request
/// timeout of 10 s instead. 5 s is forever for a client that is sending, and
/// frees a stalled body's memory and connection quickly.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections open at once at most, whatever the file-descriptor limit
/// allows. An idle connection costs tens of kilobytes, so 4,096 of them stay
/// far below the memory a body flood is held to; clients that need more
/// concurrency use more servers or longer queues, not more sockets.
pub const CONNECTIONS_MAX: usize = 4096;

/// File descriptors kept for everything but client connections: the
/// database file, its WAL and shared memory, the writer's connection, the
/// PostgreSQL pool (16 sockets), the listener, standard streams, the epoll
/// instance, log files. Generous, because running out fails everything.
pub const FDS_RESERVED: u64 = 64;

/// File descriptors one client connection may hold at once: its socket, and
/// while it reads, a SQLite reader connection (the database file and its WAL).
pub const FDS_PER_CONNECTION: u64 = 3;

/// The largest read buffer of one HTTP/1 connection, and so the largest
/// request head: 32 KiB is four times what any bursar request needs (a
/// token, a key of 255 bytes), and bounds what a connection that sends a
/// huge head slowly can hold to 32 KiB.
pub const CONNECTION_BUFFER_BYTES_MAX: usize = 32 * 1024;

/// What `bursar serve` lets the operator set about connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Asked for; the cap in force is also bounded by the fd limit.
    pub connections_max: usize,
}

impl Default for ConnectionOptions {
    fn default() -> ConnectionOptions {
        ConnectionOptions {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            connections_max: CONNECTIONS_MAX,
        }
    }
}

/// The process's limit on open files, before and after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft limit on open files to the hard limit (no privilege is
/// needed for that), so the connection cap can be as high as the operator
/// allows.
pub fn raise_fd_limit() -> io::Result<FdLimits> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft_before = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft_before < hard {
        let mut raised = limit;
        raised.current = limit.maximum;
        setrlimit(Resource::Nofile, raised)?;
    }
    Ok(FdLimits {
        soft_before,
        soft: fd_soft_limit(),
        hard,
    })
}

/// The soft limit on open files now.
pub fn fd_soft_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The connection cap a soft fd limit allows: what is left after
/// `FDS_RESERVED`, divided by `FDS_PER_CONNECTION`, at most `wanted`, and at
/// least one.
pub fn connections_for_fd_limit(soft: u64, wanted: usize) -> usize {
    let allowed = soft.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION;
    usize::try_from(allowed)
        .unwrap_or(usize::MAX)
        .clamp(1, wanted.max(1))
}

/// Accepts connections until `shutdown` resolves, serving each with
/// `router`; then stops accepting, lets every connection finish the request
/// it is in (idle ones close at once), and returns when all are closed.
///
/// At most `cap` connections are open at once: when the cap is reached the
/// loop stops accepting, and new connections wait in the listen backlog
/// until slow ones time out and are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    options: ConnectionOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let cap = connections_for_fd_limit(fd_soft_limit(), options.connections_max);
    if cap < options.connections_max {
        tracing::warn!(
            cap,
            asked = options.connections_max,
            fd_limit = fd_soft_limit(),
            "the file-descriptor limit lowers the connection cap"
        );
    }
    tracing::info!(
        cap,
        header_read_timeout_s = options.header_read_timeout.as_secs_f64(),
        idle_timeout_s = options.idle_timeout.as_secs_f64(),
        body_read_timeout_s = options.body_read_timeout.as_secs_f64(),
        "connection limits"
    );
    let slots = Arc::new(Semaphore::new(cap));
    let service =
        TowerToHyperService::new(RequestBodyTimeout::new(router, options.body_read_timeout));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(options.header_read_timeout)
        .max_buf_size(CONNECTION_BUFFER_BYTES_MAX)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are written whole; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let progress = Arc::new(HeadProgress::new());
        let mut http = http.clone();
        http.timer(HeadTimer {
            progress: progress.clone(),
            header_read_timeout: options.header_read_timeout,
            idle_timeout: options.idle_timeout,
        });
        let io = TokioIo::new(TrackedStream { stream, progress });
        let connection = graceful.watch(http.serve_connection(io, service.clone()));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// An accept that failed: a connection reset before it was accepted is
/// nothing; anything else (out of file descriptors) is logged, and the loop
/// pauses a moment, as closing connections frees descriptors.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// When the first byte of the request head being read arrived, shared by a
/// connection's socket and its timer.
struct HeadProgress {
    base: Instant,
    /// Nanoseconds from `base` to the first byte read since the current head
    /// started; 0 while none has come.
    first_byte_nanos: AtomicU64,
    /// Request heads started on this connection.
    heads: AtomicU64,
}

impl HeadProgress {
    fn new() -> HeadProgress {
        HeadProgress {
            base: Instant::now(),
            first_byte_nanos: AtomicU64::new(0),
            heads: AtomicU64::new(0),
        }
    }

    fn note_read(&self) {
        if self.first_byte_nanos.load(Ordering::Relaxed) == 0 {
            let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = self.first_byte_nanos.compare_exchange(
                0,
                nanos.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn first_byte(&self) -> Option<Instant> {
        match self.first_byte_nanos.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.base + Duration::from_nanos(nanos)),
        }
    }
}

/// The TCP stream of one connection, noting when bytes arrive.
struct TrackedStream {
    stream: TcpStream,
    progress: Arc<HeadProgress>,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.progress.note_read();
        }
        result
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The hyper timer of one connection. hyper's HTTP/1 server asks it for one
/// sleep each time it starts reading a request head (its only use of the
/// timer), and fails the connection when that sleep ends first.
#[derive(Clone)]
struct HeadTimer {
    progress: Arc<HeadProgress>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let kept_alive = self.progress.heads.fetch_add(1, Ordering::Relaxed) > 0;
        self.progress.first_byte_nanos.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let mut deadline = HeadDeadline {
            started,
            kept_alive,
            progress: self.progress.clone(),
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            sleep: Box::pin(tokio::time::sleep_until(started)),
        };
        let first = deadline.deadline();
        deadline.sleep.as_mut().reset(first);
        Box::pin(deadline)
    }
}

/// The deadline of one request head, moved once its first byte arrives.
struct HeadDeadline {
    started: Instant,
    kept_alive: bool,
    progress: Arc<HeadProgress>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HeadDeadline {
    fn deadline(&self) -> Instant {
        if !self.kept_alive {
            return self.started + self.header_read_timeout;
        }
        match self.progress.first_byte() {
            Some(first_byte) if first_byte >= self.started => first_byte + self.header_read_timeout,
            _ => self.started + self.idle_timeout,
        }
    }
}

impl Future for HeadDeadline {
    type Output = ();

    /// hyper polls this whenever the connection wakes while the head is
    /// incomplete — so also when a byte arrives, which is when the deadline
    /// moves from the idle one to the header-read one.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let deadline = this.deadline();
        if this.sleep.deadline() != deadline {
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadDeadline {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_fd_limit() {
        assert_eq!(connections_for_fd_limit(256, CONNECTIONS_MAX), 64);
        assert_eq!(connections_for_fd_limit(1024, CONNECTIONS_MAX), 320);
        assert_eq!(connections_for_fd_limit(1 << 20, CONNECTIONS_MAX), 4096);
        assert_eq!(connections_for_fd_limit(1 << 20, 100), 100);
        assert_eq!(connections_for_fd_limit(10, CONNECTIONS_MAX), 1);
        assert_eq!(connections_for_fd_limit(u64::MAX, CONNECTIONS_MAX), 4096);
        for soft in [70, 100, 256, 1024, 65_536] {
            let cap = connections_for_fd_limit(soft, CONNECTIONS_MAX) as u64;
            assert!(cap * FDS_PER_CONNECTION + FDS_RESERVED <= soft, "{soft}");
        }
    }

    /// Whether the head sleep is still running after `duration`.
    async fn still_running_after(
        sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>,
        duration: Duration,
    ) -> bool {
        tokio::time::timeout(duration, sleep).await.is_err()
    }

    /// Timers never fire early, so only lower bounds are asserted; the upper
    /// ones are generous.
    #[tokio::test]
    async fn a_new_connection_gets_the_header_timeout_and_a_kept_alive_one_the_idle_timeout() {
        use hyper::rt::Timer;
        let header = Duration::from_millis(200);
        let idle = Duration::from_millis(1000);
        let progress = Arc::new(HeadProgress::new());
        let timer = HeadTimer {
            progress: progress.clone(),
            header_read_timeout: header,
            idle_timeout: idle,
        };
        let now = std::time::Instant::now;
        let generous = Duration::from_secs(30);

        // The first head of a connection: the header timeout, bytes or not.
        let started = Instant::now();
        let mut head = timer.sleep_until(now());
        progress.note_read();
        assert!(!still_running_after(&mut head, generous).await);
        let took = started.elapsed();
        assert!(took >= header && took < idle, "{took:?}");

        // The next head on the kept-alive connection: silence is allowed
        // for the idle timeout...
        let started = Instant::now();
        let mut head = timer.sleep_until(now());
        assert!(still_running_after(&mut head, header * 2).await);
        assert!(!still_running_after(&mut head, generous).await);
        assert!(started.elapsed() >= idle);

        // ...and once a byte of it arrives, the header timeout from there.
        let mut head = timer.sleep_until(now());
        assert!(still_running_after(&mut head, header * 2).await);
        let first_byte = Instant::now();
        progress.note_read();
        assert!(!still_running_after(&mut head, generous).await);
        let took = first_byte.elapsed();
        assert!(took >= header, "{took:?}");
    }
}
