//! The HTTP client of webhook deliveries, on hyper's HTTP/1 connections:
//! it connects only to the addresses `ssrf::resolve` lets through (so the
//! address actually connected to is the one checked), speaks TLS with
//! rustls and the webpki roots for `https`, follows no redirect, uses no
//! proxy, and bounds every attempt — resolving, connecting, the TLS
//! handshake, the request and reading the answer — by `DELIVERY_TIMEOUT`.
//! Each endpoint keeps a few idle connections to its one origin.

use super::ssrf;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long a receiver has to answer one delivery with a 2xx, everything
/// included: the contract's 15 s.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long connecting to one resolved address may take before the next is
/// tried: a reachable receiver answers a SYN in well under a second, even
/// across the world.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of a receiver's answer that are read (then the connection is not
/// reused): the answer's content means nothing to bursar, but reading a
/// short one to its end lets the connection carry the next delivery.
pub const RESPONSE_BODY_BYTES_MAX: usize = 16 * 1024;

/// Characters of a refusing receiver's answer kept in the attempt's error,
/// to help whoever runs it see why.
pub const ERROR_BODY_CHARS_MAX: usize = 200;

/// How long an idle connection is kept for the next delivery: shorter than
/// the idle timeout of common servers (60 s and more), so a kept connection
/// is rarely one the receiver has just closed.
pub const IDLE_CONNECTION_MAX: Duration = Duration::from_secs(30);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status, when one came.
    pub status: Option<u16>,
    /// `None` exactly when the delivery succeeded (a 2xx).
    pub error: Option<String>,
}

/// A webhook URL taken apart for delivery.
#[derive(Debug, Clone)]
pub struct Target {
    pub https: bool,
    pub host: url::Host<String>,
    pub port: u16,
    /// The `Host` header: the host, and the port when it is not the
    /// scheme's default.
    authority: HeaderValue,
    /// The request target: path and query.
    path: String,
}

impl Target {
    /// A URL already validated at registration; `Err` says why not.
    pub fn parse(text: &str) -> Result<Target, String> {
        let url = url::Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("the scheme must be http or https, not {other}")),
        };
        let host = url
            .host()
            .ok_or_else(|| "the URL has no host".to_owned())?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "the URL has no port".to_owned())?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let authority = HeaderValue::from_str(&authority)
            .map_err(|_| "the host cannot be sent in a header".to_owned())?;
        let mut path = url.path().to_owned();
        if let Some(query) = url.query() {
            path.push('?');
            path.push_str(query);
        }
        Ok(Target {
            https,
            host,
            port,
            authority,
            path,
        })
    }
}

/// The idle connections of one endpoint, newest last.
#[derive(Default)]
pub struct Connections {
    idle: Mutex<Vec<(SendRequest<Full<Bytes>>, Instant)>>,
}

impl Connections {
    fn take(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((sender, since)) = idle.pop() {
            if since.elapsed() < IDLE_CONNECTION_MAX && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Full<Bytes>>, keep_max: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < keep_max {
            idle.push((sender, Instant::now()));
        }
    }
}

/// The headers that make a delivery a Standard Webhooks one.
pub struct Signed<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
}

/// The delivery client every endpoint shares.
pub struct DeliveryClient {
    tls: tokio_rustls::TlsConnector,
    allow_private: bool,
    /// Idle connections kept per endpoint: as many as it delivers at once.
    idle_max: usize,
}

/// A failure before any answer came: `retry` when it happened on a kept
/// connection the receiver may have closed meanwhile, so a fresh one is
/// worth one more try.
struct Failed {
    error: String,
    retry: bool,
}

impl DeliveryClient {
    pub fn new(allow_private: bool, idle_max: usize) -> DeliveryClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        DeliveryClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            allow_private,
            idle_max,
        }
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// POSTs `body` to `target` with the signature headers; never takes
    /// longer than `DELIVERY_TIMEOUT`.
    pub async fn post(
        &self,
        target: &Target,
        connections: &Connections,
        signed: Signed<'_>,
        body: Bytes,
    ) -> Answer {
        let attempt = async {
            let mut fresh = false;
            loop {
                let sender = match connections.take() {
                    Some(sender) => sender,
                    None => {
                        fresh = true;
                        match self.connect(target).await {
                            Ok(sender) => sender,
                            Err(error) => {
                                return Answer {
                                    status: None,
                                    error: Some(error),
                                };
                            }
                        }
                    }
                };
                match self
                    .send(target, connections, sender, &signed, body.clone())
                    .await
                {
                    Ok(answer) => return answer,
                    Err(failed) if failed.retry && !fresh => continue,
                    Err(failed) => {
                        return Answer {
                            status: None,
                            error: Some(failed.error),
                        };
                    }
                }
            }
        };
        match tokio::time::timeout(DELIVERY_TIMEOUT, attempt).await {
            Ok(answer) => answer,
            Err(_) => Answer {
                status: None,
                error: Some(format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs())),
            },
        }
    }

    async fn send(
        &self,
        target: &Target,
        connections: &Connections,
        mut sender: SendRequest<Full<Bytes>>,
        signed: &Signed<'_>,
        body: Bytes,
    ) -> Result<Answer, Failed> {
        let kept = |error: hyper::Error| Failed {
            retry: error.is_canceled() || error.is_closed() || error.is_incomplete_message(),
            error: format!("the connection failed: {error}"),
        };
        sender.ready().await.map_err(kept)?;
        let request = hyper::Request::post(target.path.as_str())
            .header(HOST, target.authority.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("bursar-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", signed.id)
            .header("webhook-timestamp", signed.timestamp)
            .header("webhook-signature", signed.signature)
            .body(Full::new(body))
            .map_err(|error| Failed {
                error: format!("cannot build the request: {error}"),
                retry: false,
            })?;
        let response = sender.send_request(request).await.map_err(kept)?;
        let status = response.status();
        // Read a short answer to its end, so the connection can be used
        // again; a long one is cut and its connection dropped.
        let mut body = response.into_body();
        let mut read = Vec::new();
        let mut complete = true;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        read.extend_from_slice(data);
                        if read.len() > RESPONSE_BODY_BYTES_MAX {
                            complete = false;
                            break;
                        }
                    }
                }
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            connections.put(sender, self.idle_max);
        }
        if status.is_success() {
            return Ok(Answer {
                status: Some(status.as_u16()),
                error: None,
            });
        }
        let excerpt: String = String::from_utf8_lossy(&read)
            .chars()
            .take(ERROR_BODY_CHARS_MAX)
            .collect();
        let mut error = format!("answered {status}");
        if status.is_redirection() {
            error.push_str(" (redirects are not followed)");
        }
        if !excerpt.trim().is_empty() {
            error.push_str(": ");
            error.push_str(excerpt.trim());
        }
        Ok(Answer {
            status: Some(status.as_u16()),
            error: Some(error),
        })
    }

    /// A new connection to one of the addresses the guard allows, in the
    /// order the resolver gave them.
    async fn connect(&self, target: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
        let addresses = ssrf::resolve(&target.host, target.port, self.allow_private)
            .await
            .map_err(|refusal| refusal.to_string())?;
        let mut last_error = String::new();
        let mut stream = None;
        for address in addresses {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                Ok(Ok(connected)) => {
                    stream = Some((connected, address));
                    break;
                }
                Ok(Err(error)) => last_error = format!("cannot connect to {address}: {error}"),
                Err(_) => {
                    last_error = format!(
                        "connecting to {address} took longer than {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )
                }
            }
        }
        let Some((stream, address)) = stream else {
            return Err(last_error);
        };
        let _ = stream.set_nodelay(true);
        if target.https {
            let name = match &target.host {
                url::Host::Domain(name) => rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| format!("{name} is not a name TLS can verify"))?,
                url::Host::Ipv4(ip) => {
                    rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(*ip).into())
                }
                url::Host::Ipv6(ip) => {
                    rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V6(*ip).into())
                }
            };
            let tls = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|error| format!("TLS with {address} failed: {error}"))?;
            handshake(TokioIo::new(tls), address).await
        } else {
            handshake(TokioIo::new(stream), address).await
        }
    }
}

async fn handshake<T>(io: T, address: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| format!("HTTP with {address} failed: {error}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, %address, "webhook connection closed");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let target = Target::parse("https://hooks.example.com/bursar?x=1").expect("a target");
        assert!(target.https);
        assert_eq!(target.port, 443);
        assert_eq!(target.authority, "hooks.example.com");
        assert_eq!(target.path, "/bursar?x=1");
        let target = Target::parse("http://[::1]:8080").expect("a target");
        assert_eq!(target.authority, "[::1]:8080");
        assert_eq!(target.path, "/");
        assert!(Target::parse("ftp://example.com/").is_err());
    }

    /// The guard on the connected address: an IP literal on loopback is
    /// refused without a connection, however the URL got in.
    #[tokio::test]
    async fn a_loopback_literal_is_never_connected_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let client = DeliveryClient::new(false, 1);
        let target = Target::parse(&format!("http://127.0.0.1:{port}/hook")).expect("target");
        let answer = client
            .post(
                &target,
                &Connections::default(),
                Signed {
                    id: "evt_1",
                    timestamp: 1,
                    signature: "v1,x",
                },
                Bytes::from_static(b"{}"),
            )
            .await;
        assert_eq!(answer.status, None);
        let error = answer.error.expect("refused");
        assert!(error.contains("loopback"), "{error}");
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "nothing may have connected");
    }
}
