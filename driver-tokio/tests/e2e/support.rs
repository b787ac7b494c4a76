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
        Self::start_with_api(binary, "", body)
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

// ----- control plane: API with a token, raw HTTP, Prometheus text, redis-server -----

impl Porter {
    /// As [`Porter::start`], with `api_extra` (such as `, token: T`) added inside the `api`
    /// section.
    pub fn start_with_api(binary: &str, api_extra: &str, body: &str) -> Self {
        let (udp_port, api_port) = (free_udp_port(), free_tcp_port());
        let config = format!(
            "udp: {{port: {udp_port}, bind: 127.0.0.1, log_requests: true}}\n\
             api: {{port: {api_port}{api_extra}}}\n{body}"
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

    /// Waits until `GET /readyz` answers 200.
    pub fn wait_ready(&self, within: Duration) -> bool {
        wait_for(within, || {
            self.get("/readyz").ok().filter(|(s, _)| *s == 200)
        })
        .is_some()
    }

    /// `GET /routes/{fqdn}`: the route as JSON, or `None` on 404.
    pub fn route(&self, fqdn: &str) -> Option<serde_json::Value> {
        let (status, body) = self
            .get(&format!("/routes/{fqdn}"))
            .expect("GET /routes/..");
        match status {
            200 => Some(serde_json::from_str(&body).expect("route JSON")),
            404 => None,
            other => panic!("GET /routes/{fqdn}: {other} {body}"),
        }
    }

    /// `GET /metrics`, checked and parsed.
    pub fn metrics(&self) -> Vec<Sample> {
        let (status, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        parse_prometheus(&body).unwrap_or_else(|e| panic!("bad exposition: {e}\n{body}"))
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body` as they are,
/// then reads one response (status, headers up to the blank line, and a body of its
/// `Content-Length`) without waiting for the connection to close.
pub fn http_raw(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(b"\r\n\r\n")?;
    stream.write_all(body)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response headers"));
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..header_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while got.len() < header_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.len().min(header_end + length);
    Ok((
        status,
        String::from_utf8_lossy(&got[header_end..end]).into_owned(),
    ))
}

/// One sample of a Prometheus exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, in order.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// The value of `name` with exactly `labels`, if exposed.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
}

/// The sum of every sample of `name`.
pub fn metric_sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses the Prometheus text format (0.0.4) strictly: `# HELP name text` and
/// `# TYPE name type` lines well formed, one TYPE per family and before its samples, every
/// sample `name{label="value",...} value [timestamp]` with a numeric value, of a declared
/// family, counters never negative.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    use std::collections::HashMap;
    let mut types: HashMap<String, String> = HashMap::new();
    let mut seen_samples: std::collections::HashSet<String> = Default::default();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(help) = rest.strip_prefix("HELP ") {
                let (name, _doc) = help.split_once(' ').unwrap_or((help, ""));
                if !is_metric_name(name) {
                    return Err(at("bad metric name in HELP"));
                }
            } else if let Some(ty) = rest.strip_prefix("TYPE ") {
                let mut parts = ty.split(' ');
                let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(at("TYPE needs a name and a type"));
                };
                if !is_metric_name(name) {
                    return Err(at("bad metric name in TYPE"));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at("unknown metric type"));
                }
                if seen_samples.contains(name) {
                    return Err(at("TYPE after the family's samples"));
                }
                if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(at("second TYPE for a family"));
                }
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value"))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut s) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = s.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = s.find('=').ok_or_else(|| at("label without ="))?;
                let label = &s[..eq];
                if !is_label_name(label) {
                    return Err(at("bad label name"));
                }
                let body = s[eq + 1..]
                    .strip_prefix('"')
                    .ok_or_else(|| at("label value not quoted"))?;
                let (value, used) = label_value(body).ok_or_else(|| at("bad label value"))?;
                labels.push((label.to_owned(), value));
                s = &body[used..];
                if let Some(after) = s.strip_prefix(',') {
                    s = after;
                } else if !s.starts_with('}') {
                    return Err(at("expected , or } after a label"));
                }
            }
        }
        let mut fields = rest.split(' ').filter(|f| !f.is_empty());
        let value_text = fields.next().ok_or_else(|| at("no value"))?;
        if !rest.starts_with(' ') {
            return Err(at("no space before the value"));
        }
        let value = match value_text {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| at("value is not a number"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at("timestamp is not an integer"))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing text"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| {
                    matches!(
                        types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .ok_or_else(|| at("sample of a family without TYPE"))?;
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative counter"));
        }
        seen_samples.insert(family.to_owned());
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// A quoted label value after its opening quote: the value, and the length up to and
/// including the closing quote.
fn label_value(body: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut escaped = false;
    for (j, c) in body.char_indices() {
        match (escaped, c) {
            (true, 'n') => value.push('\n'),
            (true, '\\' | '"') => value.push(c),
            (true, _) => return None,
            (false, '\\') => {
                escaped = true;
                continue;
            }
            (false, '"') => return Some((value, j + 1)),
            (false, c) => value.push(c),
        }
        escaped = false;
    }
    None
}

/// A value in the Redis protocol (RESP2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$n` (`None` for `$-1`).
    Bulk(Option<String>),
    /// `*n` (`None` for `*-1`).
    Array(Option<Vec<Self>>),
}

/// A `redis-server` on a free loopback port, in its own directory, without persistence;
/// stopped when dropped.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING. Panics with a hint if `redis-server` is
    /// not installed (`scripts/test` installs it).
    pub fn start() -> Self {
        let mut server = Self {
            port: free_tcp_port(),
            dir: temp_dir(),
            child: None,
        };
        server.restart();
        server
    }

    /// `host:port`, for `redis.address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it (its data is gone: no persistence) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let closed = wait_for(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        });
        assert!(closed.is_some(), "redis-server still answers on {addr}");
    }

    /// Starts it (again) on the same port, and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); scripts/test installs it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(10), || {
            (self.command(&["PING"]).ok() == Some(Resp::Simple("PONG".into()))).then_some(())
        });
        assert!(
            up.is_some(),
            "redis-server did not answer on port {}",
            self.port
        );
    }

    /// Runs one command and returns the reply.
    pub fn command(&self, args: &[&str]) -> std::io::Result<Resp> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(req.as_bytes())?;
        let mut reader = BufReader::new(stream);
        read_resp(&mut reader)
    }

    /// `HGETALL key` as pairs, sorted.
    pub fn hgetall(&self, key: &str) -> Vec<(String, String)> {
        let reply = self.command(&["HGETALL", key]).expect("HGETALL");
        let Resp::Array(Some(items)) = reply else {
            panic!("HGETALL {key}: {reply:?}")
        };
        let mut pairs: Vec<(String, String)> = items
            .chunks(2)
            .map(|kv| match kv {
                [Resp::Bulk(Some(k)), Resp::Bulk(Some(v))] => (k.clone(), v.clone()),
                other => panic!("HGETALL {key}: {other:?}"),
            })
            .collect();
        pairs.sort();
        pairs
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_resp(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = || std::io::Error::other(format!("bad RESP line {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                reader.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(read_resp(reader)?);
                }
                Resp::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}
