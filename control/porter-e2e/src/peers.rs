//! The network around the relay in the end-to-end cases: QUIC echo backends and clients
//! (quinn) with a throw-away CA, plain UDP backends, and a small UDP NAT that can change
//! its outside port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::UdpSocket;

/// The request [`EchoServer`] answers with the connection's remote address.
pub const WHO_AM_I: &[u8] = b"?remote-address";

/// ALPN the test servers speak.
pub const ALPN: &[u8] = b"porter-test";

/// A test certificate authority and the client config that trusts it.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A new CA.
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "porter test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        Self { ca }
    }

    /// A server config for a QUIC server answering to `names`.
    pub fn server_config(&self, names: &[&str]) -> quinn::ServerConfig {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));
        config.transport_config(Arc::new(transport));
        config
    }

    /// A client config trusting this CA, offering `alpn` (the test ALPN by default).
    pub fn client_config(&self, alpn: Option<Vec<Vec<u8>>>) -> quinn::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = alpn.unwrap_or_else(|| vec![ALPN.to_vec()]);
        let mut config =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(10).try_into().unwrap()));
        config.transport_config(Arc::new(transport));
        config
    }
}

/// A QUIC echo server: answers each bidirectional stream with `"<name>:" + request`, and
/// the request [`WHO_AM_I`] with `"<name>:"` and the connection's remote address as the
/// server sees it (quinn's `Connection::remote_address`, which follows a validated
/// migration).
pub struct EchoServer {
    /// Its address.
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
}

impl EchoServer {
    /// Starts a server named `name` with `config`; with `retry`, every new connection is
    /// first sent a Retry.
    pub fn start(name: &str, config: quinn::ServerConfig, retry: bool) -> Self {
        Self::start_at(name, config, retry, "127.0.0.1:0".parse().unwrap())
    }

    /// As [`Self::start`], on `addr` (to restart a stopped server where it was), trying
    /// for up to 5 s while the port is still being released.
    pub fn start_at(
        name: &str,
        config: quinn::ServerConfig,
        retry: bool,
        addr: SocketAddr,
    ) -> Self {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let endpoint = loop {
            match quinn::Endpoint::server(config.clone(), addr) {
                Ok(endpoint) => break endpoint,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::yield_now();
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        Self::serve(name, endpoint, retry)
    }

    /// Starts a server named `name` whose CIDs are QUIC-LB CIDs of `lb` carrying
    /// `server_id` (porter-quic-lb's generator for quinn), so a relay with the same
    /// configuration routes them by content.
    pub fn start_quic_lb(
        name: &str,
        config: quinn::ServerConfig,
        lb: porter_quic_lb::Config,
        server_id: porter_quic_lb::ServerId,
    ) -> Self {
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.cid_generator(move || {
            Box::new(
                porter_quic_lb::QuicLbGenerator::new(lb.clone(), server_id)
                    .expect("the server ID fits the configuration"),
            )
        });
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        Self::serve(name, endpoint, false)
    }

    /// As [`Self::start`], on `socket`, bound already (inside a network namespace, say).
    pub fn start_on(name: &str, config: quinn::ServerConfig, socket: std::net::UdpSocket) -> Self {
        Self::serve(name, endpoint_on(socket, Some(config)), false)
    }

    fn serve(name: &str, endpoint: quinn::Endpoint, retry: bool) -> Self {
        let addr = endpoint.local_addr().unwrap();
        let ep = endpoint.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                if retry && !incoming.remote_address_validated() {
                    let _ = incoming.retry();
                    continue;
                }
                let name = name.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let name = name.clone();
                        let conn = conn.clone();
                        tokio::spawn(async move {
                            let Ok(data) = recv.read_to_end(8 << 20).await else {
                                return;
                            };
                            let mut reply = format!("{name}:").into_bytes();
                            if data == WHO_AM_I {
                                reply.extend_from_slice(
                                    conn.remote_address().to_string().as_bytes(),
                                );
                            } else {
                                reply.extend_from_slice(&data);
                            }
                            let _ = send.write_all(&reply).await;
                            let _ = send.finish();
                        });
                    }
                });
            }
        });
        Self { addr, endpoint }
    }
}

impl EchoServer {
    /// Stops the server and waits until its port is free (nothing answers there any
    /// more, not even Version Negotiation).
    pub async fn stop(self) {
        let addr = self.addr;
        let endpoint = self.endpoint.clone();
        drop(self);
        endpoint.wait_idle().await;
        drop(endpoint);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "{addr} still bound");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"");
    }
}

/// A client endpoint on a fresh loopback port.
pub fn client_endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

/// A client endpoint on `socket`, bound already (inside a network namespace, say).
pub fn client_endpoint_on(
    socket: std::net::UdpSocket,
    config: quinn::ClientConfig,
) -> quinn::Endpoint {
    let mut endpoint = endpoint_on(socket, None);
    endpoint.set_default_client_config(config);
    endpoint
}

fn endpoint_on(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> quinn::Endpoint {
    socket.set_nonblocking(true).expect("non-blocking socket");
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("a quinn endpoint on the socket")
}

/// Connects to `relay` asking for `sni`: the handshake's outcome, within 10 seconds.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    sni: &str,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let connecting = endpoint
        .connect(relay, sni)
        .expect("valid connect parameters");
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("handshake finished or failed in time")
}

/// Sends `payload` on a new stream and returns the echo.
pub async fn echo(conn: &quinn::Connection, payload: &[u8]) -> String {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    send.write_all(payload).await.expect("write");
    send.finish().expect("finish");
    let reply = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(8 << 20))
        .await
        .expect("echo in time")
        .expect("read echo");
    String::from_utf8(reply).expect("utf-8 echo")
}

/// The first flights of `n` real quinn connections to `sni` (each a list of datagrams,
/// one DCID each; only the first datagram unless `whole`), captured by a socket that
/// never answers: valid Initials to replay from forged addresses.
pub async fn captured_first_flights(
    config: quinn::ClientConfig,
    sni: &str,
    n: usize,
    whole: bool,
) -> Vec<Vec<Vec<u8>>> {
    let capture = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = capture.local_addr().unwrap();
    let client = client_endpoint(config);
    let mut flights = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    let mut buf = vec![0u8; 2048];
    while flights.len() < n {
        let connecting = client.connect(to, sni).expect("valid connect parameters");
        let mut flight: Vec<Vec<u8>> = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        // The flight leaves at once; a retransmission only after a PTO (hundreds of
        // milliseconds), a close when `connecting` is dropped below: 5 ms of quiet ends
        // the flight. Datagrams of earlier connections (their DCIDs seen) are skipped.
        let mut wait = Duration::from_secs(5);
        while let Ok(Ok((len, _))) = tokio::time::timeout(wait, capture.recv_from(&mut buf)).await {
            wait = Duration::from_millis(5);
            let d = &buf[..len];
            let Some(dcid) = d.get(6..6 + usize::from(d[5])).map(<[u8]>::to_vec) else {
                continue;
            };
            let ours = match &current {
                Some(c) => *c == dcid,
                None => seen.insert(dcid.clone()),
            };
            if len >= 1200 && ours {
                current = Some(dcid);
                flight.push(d.to_vec());
                if !whole {
                    break;
                }
            }
        }
        drop(connecting);
        if !flight.is_empty() {
            flights.push(flight);
        }
    }
    client.close(0u32.into(), b"");
    flights
}

/// A plain UDP backend that records what it receives.
pub struct UdpSink {
    /// Its address.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl UdpSink {
    /// Starts one on a loopback port.
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let r = received.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                r.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        Self { addr, received }
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

/// A UDP NAT between a client and the relay: the client talks to `inside`; the NAT
/// talks to the relay from an outside port that [`Nat::rebind`] changes, as a home
/// router does when its mapping expires.
pub struct Nat {
    /// Where the client sends.
    pub inside: SocketAddr,
    inside_sock: Arc<UdpSocket>,
    outside: Arc<Mutex<Arc<UdpSocket>>>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    last_short: Arc<Mutex<Option<Vec<u8>>>>,
    target: Arc<Mutex<SocketAddr>>,
}

impl Nat {
    /// A NAT forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let inside_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let inside = inside_sock.local_addr().unwrap();
        let first = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let nat = Self {
            inside,
            inside_sock: inside_sock.clone(),
            outside: Arc::new(Mutex::new(first.clone())),
            client: Arc::default(),
            last_short: Arc::default(),
            target: Arc::new(Mutex::new(target)),
        };
        nat.return_path(first);
        let (outside, client) = (nat.outside.clone(), nat.client.clone());
        let (last_short, target) = (nat.last_short.clone(), nat.target.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = inside_sock.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                if n > 0 && buf[0] & 0x80 == 0 {
                    *last_short.lock().unwrap() = Some(buf[..n].to_vec());
                }
                let out = outside.lock().unwrap().clone();
                let to = *target.lock().unwrap();
                let _ = out.send_to(&buf[..n], to).await;
            }
        });
        nat
    }

    /// Delivers what arrives on an outside socket to the client, for as long as the
    /// socket lives (an old mapping keeps working, as in a real NAT).
    fn return_path(&self, sock: Arc<UdpSocket>) {
        let (inside, client) = (self.inside_sock.clone(), self.client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                let to = *client.lock().unwrap();
                if let Some(c) = to {
                    let _ = inside.send_to(&buf[..n], c).await;
                }
            }
        });
    }

    /// Moves to a new outside port; returns it.
    pub async fn rebind(&self) -> SocketAddr {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        self.return_path(sock.clone());
        *self.outside.lock().unwrap() = sock;
        addr
    }

    /// Moves to the outside socket `socket` (bound already, say to a port chosen for
    /// where the relay's kernel hashes it).
    pub fn rebind_on(&self, socket: std::net::UdpSocket) {
        socket.set_nonblocking(true).expect("non-blocking socket");
        let sock = Arc::new(UdpSocket::from_std(socket).expect("a tokio socket"));
        self.return_path(sock.clone());
        *self.outside.lock().unwrap() = sock;
    }

    /// Moves the flow to `target` from a new outside port, as an L4 load balancer whose
    /// hash changed (the client's NAT rebound) sends it to another relay instance;
    /// returns the new outside address.
    pub async fn rebind_to(&self, target: SocketAddr) -> SocketAddr {
        let addr = self.rebind().await;
        *self.target.lock().unwrap() = target;
        addr
    }

    /// The last short-header datagram the client sent out through the NAT: what an
    /// on-path observer could copy and replay from elsewhere.
    pub fn last_short_header(&self) -> Option<Vec<u8>> {
        self.last_short.lock().unwrap().clone()
    }

    /// The current outside address.
    pub fn outside(&self) -> SocketAddr {
        self.outside.lock().unwrap().local_addr().unwrap()
    }
}
