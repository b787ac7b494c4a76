//! Test support for the end-to-end suite: runs a relay binary with a generated config,
//! QUIC echo backends and clients (quinn), plain UDP backends, and a small UDP NAT that
//! can change its outside port.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::UdpSocket;

/// ALPN the test servers speak.
pub const ALPN: &[u8] = b"porter-test";

/// A free port on 127.0.0.1 for UDP (bound then released).
pub fn free_udp_port() -> u16 {
    StdUdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("ephemeral UDP port")
        .port()
}

/// A free port on 127.0.0.1 for TCP.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("ephemeral TCP port")
        .port()
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory for one test's files.
pub fn temp_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("porter-e2e-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Polls `check` until it returns `Some` or `within` passes.
pub fn wait_for<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running relay binary.
pub struct Porter {
    child: Child,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Its UDP listener.
    pub udp: SocketAddr,
    /// Its API.
    pub api: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Where its config file is.
    pub config_path: PathBuf,
}

impl Porter {
    /// Starts `binary` with `body` appended to a config that sets `udp` and `api` to free
    /// loopback ports. Waits until the API answers.
    pub fn start(binary: &str, body: &str) -> Self {
        let (udp_port, api_port) = (free_udp_port(), free_tcp_port());
        let config = format!(
            "udp: {{port: {udp_port}, bind: 127.0.0.1, log_requests: true}}\n\
             api: {{port: {api_port}}}\n{body}"
        );
        let mut porter = Self::spawn(binary, &config, &[]);
        porter.udp = ([127, 0, 0, 1], udp_port).into();
        porter.api = ([127, 0, 0, 1], api_port).into();
        let ready = wait_for(Duration::from_secs(15), || {
            if let Ok(Some(status)) = porter.child.try_wait() {
                panic!("relay exited with {status}; log:\n{}", porter.log());
            }
            porter.get("/healthz").ok().filter(|(s, _)| *s == 200)
        });
        assert!(
            ready.is_some(),
            "relay API never answered; log:\n{}",
            porter.log()
        );
        porter
    }

    /// Spawns `binary` with `config` written to a file, plus extra arguments, without
    /// waiting for anything.
    pub fn spawn(binary: &str, config: &str, args: &[&str]) -> Self {
        let dir = temp_dir();
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new(binary)
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start relay binary");
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            }));
        }
        Self {
            child,
            readers,
            udp: ([127, 0, 0, 1], 0).into(),
            api: ([127, 0, 0, 1], 0).into(),
            log,
            config_path,
        }
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        wait_for(within, || self.log().contains(needle).then_some(())).is_some()
    }

    /// Waits for the process to exit and for its output to be read; returns its exit
    /// code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let status = wait_for(within, || self.child.try_wait().ok().flatten())?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Some(status.code().unwrap_or(-1))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// A GET on the API: status and body.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http(self.api, "GET", path, None, None)
    }

    /// `GET /stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = self.get("/stats").expect("GET /stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("stats JSON")
    }
}

impl Drop for Porter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client for the API (one request per connection).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: porter\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A test certificate authority and the client config that trusts it.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
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

/// A QUIC echo server: answers each bidirectional stream with `"<name>:" + request`.
pub struct EchoServer {
    /// Its address.
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
}

impl EchoServer {
    /// Starts a server named `name` with `config`; with `retry`, every new connection is
    /// first sent a Retry.
    pub fn start(name: &str, config: quinn::ServerConfig, retry: bool) -> Self {
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
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
                        tokio::spawn(async move {
                            let Ok(data) = recv.read_to_end(1 << 20).await else {
                                return;
                            };
                            let mut reply = format!("{name}:").into_bytes();
                            reply.extend_from_slice(&data);
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

/// Sends `payload` on a new stream and returns the echo.
pub async fn echo(conn: &quinn::Connection, payload: &[u8]) -> String {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    send.write_all(payload).await.expect("write");
    send.finish().expect("finish");
    let reply = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("echo in time")
        .expect("read echo");
    String::from_utf8(reply).expect("utf-8 echo")
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
        };
        nat.return_path(first);
        let (outside, client) = (nat.outside.clone(), nat.client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = inside_sock.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                let out = outside.lock().unwrap().clone();
                let _ = out.send_to(&buf[..n], target).await;
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

    /// The current outside address.
    pub fn outside(&self) -> SocketAddr {
        self.outside.lock().unwrap().local_addr().unwrap()
    }
}
