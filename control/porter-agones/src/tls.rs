//! Mutual TLS to the allocator: the rustls client configuration (ring provider), the
//! connector tonic dials through, and the translation of rustls failures into
//! [`TlsError`]s that say which certificate is at fault.
//!
//! Porter does the TLS itself rather than through tonic's TLS options so that it can
//! offer `insecure_skip_verify`, check a server name that differs from the host it dials,
//! and see the rustls error behind a failed call.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

use super::{AgonesClientConfig, ClientConfigError, TlsError};

/// Builds the rustls client configuration: ring provider, TLS 1.2 and 1.3, ALPN `h2`,
/// Porter's client certificate, and the configured CA (or no verification at all).
pub(crate) fn client_config(
    config: &AgonesClientConfig,
) -> Result<ClientConfig, ClientConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = parse_certs(&config.client_cert_pem, "client_cert_pem")?;
    let key = PrivateKeyDer::from_pem_slice(&config.client_key_pem).map_err(|e| {
        ClientConfigError::InvalidPem {
            field: "client_key_pem",
            reason: format!("no private key found: {e}"),
        }
    })?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(ClientConfigError::Tls)?;
    let builder = if config.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        for ca in parse_certs(&config.ca_cert_pem, "ca_cert_pem")? {
            roots.add(ca).map_err(|e| ClientConfigError::InvalidPem {
                field: "ca_cert_pem",
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        builder.with_root_certificates(roots)
    };
    let mut tls = builder
        .with_client_auth_cert(chain, key)
        .map_err(ClientConfigError::Tls)?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

fn parse_certs(
    pem: &[u8],
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ClientConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientConfigError::InvalidPem {
            field,
            reason: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(ClientConfigError::InvalidPem {
            field,
            reason: "no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_owned(),
        });
    }
    Ok(certs)
}

/// `insecure_skip_verify`: accepts any certificate chain and name, but still checks the
/// handshake signatures, so the connection is at least bound to the presented key.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The connector tonic dials through: TCP to the allocator, then TLS with the configured
/// server name (whatever host the URI names).
#[derive(Clone)]
pub(crate) struct TlsConnector {
    pub(crate) tls: tokio_rustls::TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("allocator URI without host"))?;
            // `Uri::host` keeps the brackets of an IPv6 literal; the socket API wants none.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The TLS failure behind a failed call, if there is one, worded by which certificate is
/// at fault.
pub(crate) fn tls_failure(
    error: &(dyn StdError + 'static),
    allocator: &str,
    server_name: &str,
) -> Option<TlsError> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(classify(found, allocator, server_name));
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // tokio-rustls wraps rustls errors in `io::Error`s, whose `source` skips the
            // payload, so look at the payload directly.
            if let Some(found) = io
                .get_ref()
                .and_then(|inner| tls_failure(inner, allocator, server_name))
            {
                return Some(found);
            }
            // An alert after the handshake (TLS 1.3 servers check the client certificate
            // once the client is done) reaches us through h2, which keeps only the
            // error's kind and text: "received fatal alert: <name>".
            if io.kind() == std::io::ErrorKind::InvalidData {
                let text = io.to_string();
                if let Some(alert) = text.strip_prefix("received fatal alert: ") {
                    if CLIENT_CERTIFICATE_ALERTS
                        .iter()
                        .any(|a| format!("{a:?}") == alert)
                    {
                        return Some(client_certificate_rejected(allocator, alert));
                    }
                }
            }
        }
        next = error.source();
    }
    None
}

/// What a server sends when it does not accept the client's certificate: rustls sends
/// UnknownCA or BadCertificate, Go's crypto/tls (the real allocator) BadCertificate, and
/// CertificateRequired when none was sent.
const CLIENT_CERTIFICATE_ALERTS: [AlertDescription; 8] = [
    AlertDescription::BadCertificate,
    AlertDescription::UnknownCA,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRequired,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateRevoked,
    AlertDescription::AccessDenied,
];

fn client_certificate_rejected(allocator: &str, alert: &str) -> TlsError {
    TlsError::ClientCertificateRejected {
        allocator: allocator.to_owned(),
        alert: alert.to_owned(),
    }
}

/// Words a rustls failure by which certificate is at fault.
fn classify(error: &rustls::Error, allocator: &str, server_name: &str) -> TlsError {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. }) => {
            TlsError::ServerNameMismatch {
                expected: server_name.to_owned(),
                presented: presented.iter().map(|name| bare_name(name)).collect(),
            }
        }
        E::InvalidCertificate(CertificateError::NotValidForName) => TlsError::ServerNameMismatch {
            expected: server_name.to_owned(),
            presented: Vec::new(),
        },
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            TlsError::ServerCertificateUntrusted {
                allocator: allocator.to_owned(),
                detail: error.to_string(),
            }
        }
        E::AlertReceived(alert) if CLIENT_CERTIFICATE_ALERTS.contains(alert) => {
            client_certificate_rejected(allocator, &format!("{alert:?}"))
        }
        other => TlsError::Other {
            allocator: allocator.to_owned(),
            source: other.clone(),
        },
    }
}

/// rustls reports a certificate's names as `DnsName("a.example")` or
/// `IpAddress(192.0.2.1)`; users need the name itself, to copy into `tls_server_name`.
fn bare_name(presented: &str) -> String {
    let inner = presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        });
    inner.unwrap_or(presented).to_owned()
}

/// A gRPC status' message and its causes on one line, for messages that must say why.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut next = StdError::source(status);
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}
