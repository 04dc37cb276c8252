//! How bursar connects to PostgreSQL: the URL's options, libpq's `sslmode`
//! and `sslrootcert` read by bursar itself, the TLS connector and its
//! certificate verifiers, and URLs shown with their password hidden.

use super::CONNECT_TIMEOUT;
use super::failure::classify;
use crate::StoreError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the connection is encrypted and whether the server is authenticated,
/// after libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it (the default, as in libpq).
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate must chain to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<TlsMode, StoreError> {
        match value {
            "disable" => Ok(TlsMode::Disable),
            "prefer" => Ok(TlsMode::Prefer),
            "require" => Ok(TlsMode::Require),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-full" => Ok(TlsMode::VerifyFull),
            _ => Err(StoreError::Config(format!(
                "sslmode must be disable, prefer, require, verify-ca or verify-full, not {value:?}"
            ))),
        }
    }
}

/// A parsed `postgres://` URL.
///
/// Every libpq-style parameter tokio-postgres knows is honoured
/// (`connect_timeout`, `application_name`, `options`, …). Two are read by
/// bursar itself, with libpq's meaning:
///
/// - `sslmode=disable|prefer|require|verify-ca|verify-full` (default
///   `prefer`). As in libpq, `prefer` and `require` encrypt without
///   authenticating the server unless `sslrootcert` is given; `verify-ca`
///   and `verify-full` check the certificate against `sslrootcert`, or
///   against the public webpki roots when it is not given.
/// - `sslrootcert=PATH`: PEM certificates of the authorities to trust.
#[derive(Clone)]
pub struct PostgresOptions {
    pub(super) config: tokio_postgres::Config,
    tls_mode: TlsMode,
    root_certificates: Option<PathBuf>,
    /// The URL with any password hidden, for messages and logs.
    shown: String,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &self.shown)
            .field("tls_mode", &self.tls_mode)
            .finish()
    }
}

impl PostgresOptions {
    /// Parses a whole `postgres://` or `postgresql://` URL.
    pub fn parse(url: &str) -> Result<PostgresOptions, StoreError> {
        let shown = redact_password(url);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut tls_mode = TlsMode::Prefer;
        let mut root_certificates = None;
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", value)) => tls_mode = TlsMode::parse(&percent_decode(value))?,
                Some(("sslrootcert", value)) => {
                    root_certificates = Some(PathBuf::from(percent_decode(value)));
                }
                _ => passed_on.push(pair),
            }
        }
        let rest = if passed_on.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed_on.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|error| StoreError::Config(format!("bad PostgreSQL URL {shown}: {error}")))?;
        config.ssl_mode(match tls_mode {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("bursar");
        }
        Ok(PostgresOptions {
            config,
            tls_mode,
            root_certificates,
            shown,
        })
    }

    /// The URL with any password replaced by `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn tls_mode(&self) -> TlsMode {
        self.tls_mode
    }

    /// The connector that encrypts (or not) as the options say.
    pub(super) fn tls(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (self.tls_mode, &self.root_certificates) {
            (TlsMode::Disable | TlsMode::Prefer | TlsMode::Require, None) => {
                Arc::new(EncryptOnly {
                    algorithms: provider.signature_verification_algorithms,
                })
            }
            (mode, roots) => {
                let roots = match roots {
                    Some(path) => roots_from_file(path)?,
                    None => RootCertStore {
                        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                    },
                };
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|error| {
                            StoreError::Config(format!("cannot verify TLS certificates: {error}"))
                        })?;
                if mode == TlsMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly { inner: webpki })
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| StoreError::Config(format!("TLS setup failed: {error}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// One connection outside any pool, its driver task spawned; for
    /// administrative work such as creating test databases.
    pub(crate) async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let (client, connection) = self
            .config
            .connect(self.tls()?)
            .await
            .map_err(|error| classify(&error).error)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// Creates the database these options name when it does not exist yet,
    /// through the server's `postgres` maintenance database (so the user
    /// needs the `CREATEDB` privilege); for `bursar migrate`. Returns whether
    /// it created the database. Another process creating it at the same
    /// moment is fine.
    pub async fn create_database_if_missing(&self) -> Result<bool, StoreError> {
        let missing = match self.config.connect(self.tls()?).await {
            Ok(_) => false,
            Err(error) if error.code() == Some(&SqlState::INVALID_CATALOG_NAME) => true,
            Err(error) => return Err(classify(&error).error),
        };
        if !missing {
            return Ok(false);
        }
        let name = self
            .config
            .get_dbname()
            .or_else(|| self.config.get_user())
            .ok_or_else(|| StoreError::Config("the PostgreSQL URL names no database".into()))?
            .to_owned();
        let maintenance = self.with_database("postgres").connect().await?;
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match maintenance
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => Ok(true),
            Err(error) if error.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(false),
            Err(error) => Err(StoreError::Config(format!(
                "cannot create the database {name:?}: {}",
                error
                    .as_db_error()
                    .map_or_else(|| error.to_string(), ToString::to_string)
            ))),
        }
    }

    /// The same server, another database.
    pub(crate) fn with_database(&self, name: &str) -> PostgresOptions {
        let mut options = self.clone();
        options.config.dbname(name);
        options
    }
}

/// The authorities in a PEM file.
fn roots_from_file(path: &Path) -> Result<RootCertStore, StoreError> {
    let bad = |error: &dyn std::fmt::Display| {
        StoreError::Config(format!(
            "cannot read sslrootcert {}: {error}",
            path.display()
        ))
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|error| bad(&error))? {
        roots
            .add(certificate.map_err(|error| bad(&error))?)
            .map_err(|error| bad(&error))?;
    }
    if roots.is_empty() {
        return Err(bad(&"the file holds no certificate"));
    }
    Ok(roots)
}

/// libpq's `sslmode=prefer` and `require` without a root certificate:
/// encrypted against eavesdroppers, the server not authenticated. The
/// handshake signatures are still checked, so the session key is the one the
/// certificate's owner holds.
#[derive(Debug)]
struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must reach a trusted root, the name on the
/// certificate may be any.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked only after the chain has been verified, so a
        // name mismatch means the chain itself is good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, and
/// likewise a `password=` parameter.
pub(crate) fn redact_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut shown = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
                    None => base.to_owned(),
                },
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// Decodes `%XX` escapes in a URL parameter value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[index + 1..index + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            decoded.push(byte);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_password("postgres://bursar:s3cret@db.example:5432/bursar?sslmode=require"),
            "postgres://bursar:***@db.example:5432/bursar?sslmode=require"
        );
        assert_eq!(
            redact_password("postgresql://db/bursar?user=a&password=s3cret"),
            "postgresql://db/bursar?user=a&password=***"
        );
        assert_eq!(
            redact_password("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_by_bursar() {
        let options = PostgresOptions::parse(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .expect("parses");
        assert_eq!(options.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(
            options.root_certificates.as_deref(),
            Some(Path::new("/tmp/ca.pem"))
        );
        assert_eq!(options.config.get_application_name(), Some("x"));
        assert_eq!(options.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));

        let options = PostgresOptions::parse("postgresql://u@h/db").expect("parses");
        assert_eq!(options.tls_mode(), TlsMode::Prefer);
        assert_eq!(options.config.get_application_name(), Some("bursar"));

        assert!(matches!(
            PostgresOptions::parse("postgres://u@h/db?sslmode=sometimes"),
            Err(StoreError::Config(_))
        ));
        assert!(matches!(
            PostgresOptions::parse("postgres://u:secret@h/db?no_such_option=1"),
            Err(StoreError::Config(message)) if !message.contains("secret")
        ));
    }

    #[test]
    fn every_tls_mode_builds_a_connector() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let options = PostgresOptions::parse(&format!("postgres://u@h/db?sslmode={mode}"))
                .expect("parses");
            assert!(options.tls().is_ok(), "{mode}");
        }
    }

    /// The local server's certificate is self-signed: `require` encrypts
    /// without checking it, as libpq does, and `verify-full` against the
    /// public roots refuses it rather than falling back to plain text.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_sslmode_require_encrypts_and_verify_full_verifies() {
        if !crate::testing::postgres_available() {
            return;
        }
        let admin = PostgresOptions::parse(&crate::testing::postgres_admin_url()).expect("url");
        let client = admin.connect().await.expect("connect");
        let server_ssl: String = client
            .query_one("SHOW ssl", &[])
            .await
            .expect("show ssl")
            .get(0);
        if server_ssl != "on"
            || admin
                .config
                .get_hosts()
                .iter()
                .any(|host| !matches!(host, tokio_postgres::config::Host::Tcp(_)))
        {
            return;
        }
        let url = crate::testing::postgres_admin_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        let require =
            PostgresOptions::parse(&format!("{url}{separator}sslmode=require")).expect("url");
        let client = require
            .connect()
            .await
            .expect("connect with sslmode=require");
        let encrypted: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0);
        assert!(encrypted);
        let verify =
            PostgresOptions::parse(&format!("{url}{separator}sslmode=verify-full")).expect("url");
        let refused = verify
            .connect()
            .await
            .expect_err("a self-signed certificate");
        assert!(refused.to_string().contains("certificate"), "{refused}");
    }
}
