//! See Porter route real QUIC connections on one machine.
//!
//! Start the relay with the example configuration in one terminal:
//!
//! ```text
//! cargo run --release --bin porter
//! ```
//!
//! and this demo in another:
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! The demo starts two QUIC echo servers where the example configuration routes
//! `a.test` (127.0.0.1:4434, also `*.wild.test`) and `b.test` (127.0.0.1:4435), each with
//! its own certificate from a throw-away CA, then connects through the relay
//! (127.0.0.1:4433) with several server names and prints which backend answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const ALPN: &[u8] = b"porter-demo";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let relay: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4433".to_owned())
        .parse()?;
    let ca = Ca::new()?;
    let backends = [
        ("backend A", "127.0.0.1:4434", vec!["a.test", "*.wild.test"]),
        ("backend B", "127.0.0.1:4435", vec!["b.test"]),
    ];
    let mut servers = Vec::new();
    for (name, addr, names) in &backends {
        let endpoint = quinn::Endpoint::server(ca.server_config(names)?, addr.parse()?)
            .map_err(|e| format!("cannot listen on {addr} for {name}: {e}"))?;
        tokio::spawn(echo(endpoint.clone(), (*name).to_owned()));
        println!("{name} listening on {addr} for {}", names.join(", "));
        servers.push(endpoint);
    }

    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(ca.client_config()?);
    println!("\nconnecting through Porter at {relay}:");
    for sni in ["a.test", "b.test", "game.wild.test", "unknown.test"] {
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            let conn = client.connect(relay, sni)?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(format!("hello from a client asking for {sni}").as_bytes())
                .await?;
            send.finish()?;
            let reply = recv.read_to_end(64 * 1024).await?;
            conn.close(0u32.into(), b"bye");
            Ok::<_, Error>(String::from_utf8_lossy(&reply).into_owned())
        })
        .await;
        let ms = started.elapsed().as_millis();
        match result {
            Ok(Ok(reply)) => println!("  {sni:<16} -> {reply}  ({ms} ms)"),
            Ok(Err(e)) => println!("  {sni:<16} -> failed: {e}  ({ms} ms)"),
            Err(_) => println!(
                "  {sni:<16} -> no answer in 5 s: is the relay running (cargo run --bin porter)?"
            ),
        }
    }
    client.wait_idle().await;
    Ok(())
}

/// Answers every stream with "<name> says: " and what it received.
async fn echo(endpoint: quinn::Endpoint, name: String) {
    while let Some(incoming) = endpoint.accept().await {
        let name = name.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let Ok(data) = recv.read_to_end(64 * 1024).await else {
                    return;
                };
                let mut reply = format!("{name} says: ").into_bytes();
                reply.extend_from_slice(&data);
                let _ = send.write_all(&reply).await;
                let _ = send.finish();
            }
        });
    }
}

/// A throw-away certificate authority for the demo's servers.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Result<Self, Error> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Porter demo CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn server_config(&self, names: &[&str]) -> Result<quinn::ServerConfig, Error> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &self.issuer)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(tls)?,
        )))
    }

    fn client_config(&self) -> Result<quinn::ClientConfig, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.issuer.der().to_vec()))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls)?,
        )))
    }
}
