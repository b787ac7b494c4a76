//! A test Agones allocator: the tonic server generated from Porter's own
//! `allocation.proto`, over mutual TLS (rustls, client certificates required and
//! verified), in front of a simulated fleet.
//!
//! Shared by control's tests of the Agones client and the end-to-end suite. Everything
//! binds to 127.0.0.1 on a port the OS picks.
//!
//! The simulation follows Agones where Porter depends on it: selectors are tried in
//! order; a selector matches a game server of the request's namespace that carries all its
//! labels, is in its state, and has at least `minAvailable` free entries in each list it
//! names; among matches the fullest game server wins ("Packed"); list actions add values
//! (duplicates ignored) within the list's capacity; the chosen game server becomes
//! ALLOCATED. No match is `ResourceExhausted`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::sync::{oneshot, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use porter_agones::proto::allocation_response::{GameServerMetadata, GameServerStatusPort};
use porter_agones::proto::game_server_selector::GameServerState;
use porter_agones::proto::{AllocationRequest, AllocationResponse, GameServerSelector};
use porter_agones::{AgonesClientConfig, FLEET_LABEL};
use server::allocation_service_server::{AllocationService, AllocationServiceServer};

/// The server side generated from control's `allocation.proto` (see `build.rs`), on
/// control's message types.
#[allow(
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic,
    clippy::use_self,
    clippy::semicolon_if_nothing_returned,
    clippy::manual_let_else
)]
mod server {
    tonic::include_proto!("allocation");
}

/// The DNS name in [`TestPki::server_with_dns`].
pub const SERVER_DNS_NAME: &str = "allocator.porter.test";

/// A certificate and its private key, in PEM.
#[derive(Clone, Debug)]
pub struct TestIdentity {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// Certificates for mutual-TLS tests, made fresh by [`TestPki::generate`].
#[derive(Clone, Debug)]
pub struct TestPki {
    /// The CA that signed the allocator's certificates and the trusted client certificate.
    pub ca_pem: String,
    /// Another CA: it signed `untrusted_client` and nothing the allocator uses.
    pub other_ca_pem: String,
    /// Allocator certificate whose only name is the DNS name [`SERVER_DNS_NAME`].
    pub server_with_dns: TestIdentity,
    /// Allocator certificate with no DNS name, only the IP address 127.0.0.1 (like a
    /// certificate made for a load balancer's address).
    pub server_without_dns: TestIdentity,
    /// Client certificate signed by `ca_pem`: the allocator trusts it.
    pub client: TestIdentity,
    /// Client certificate signed by `other_ca_pem`: the allocator does not trust it.
    pub untrusted_client: TestIdentity,
}

impl TestPki {
    /// Generates every key and certificate (ECDSA P-256).
    ///
    /// # Panics
    /// If rcgen fails, which it does not for these fixed parameters.
    pub fn generate() -> Self {
        let (ca_pem, ca) = make_ca("Porter test CA");
        let (other_ca_pem, other_ca) = make_ca("Porter test other CA");
        let server_with_dns = make_leaf(
            &ca,
            "allocator (DNS name)",
            vec![SanType::DnsName(
                SERVER_DNS_NAME.try_into().expect("valid DNS name"),
            )],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let server_without_dns = make_leaf(
            &ca,
            "allocator (no DNS name)",
            vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = make_leaf(
            &ca,
            "porter",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let untrusted_client = make_leaf(
            &other_ca,
            "porter (untrusted)",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self {
            ca_pem,
            other_ca_pem,
            server_with_dns,
            server_without_dns,
            client,
            untrusted_client,
        }
    }
}

fn make_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("generate CA key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert.pem(), Issuer::new(params, key))
}

fn make_leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    names: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> TestIdentity {
    let key = KeyPair::generate().expect("generate leaf key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    TestIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Which certificate the test allocator presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCert {
    /// [`TestPki::server_with_dns`]: clients must check [`SERVER_DNS_NAME`].
    WithDnsName,
    /// [`TestPki::server_without_dns`]: clients must check the IP address 127.0.0.1.
    WithoutDnsName,
}

/// State of a simulated game server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestGameServerState {
    /// Ready, not allocated.
    Ready,
    /// Allocated (it may still take players while its list has room).
    Allocated,
}

/// A list of a simulated game server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestList {
    /// Maximum number of values.
    pub capacity: i64,
    /// The values, in the order they were added.
    pub values: Vec<String>,
}

/// A simulated game server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestGameServer {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels; [`TestGameServer::ready`] sets `agones.dev/fleet`. Returned in the
    /// allocation answer's metadata, like the annotations.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// State.
    pub state: TestGameServerState,
    /// The address returned on allocation.
    pub address: String,
    /// Ports returned on allocation: (name, port).
    pub ports: Vec<(String, i32)>,
    /// Lists by name.
    pub lists: BTreeMap<String, TestList>,
}

impl TestGameServer {
    /// A READY game server of `fleet` in `namespace`, reachable at `address`, with one port
    /// named `default` and an empty `players` list of `player_capacity`.
    pub fn ready(
        name: &str,
        namespace: &str,
        fleet: &str,
        address: SocketAddr,
        player_capacity: i64,
    ) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            labels: BTreeMap::from([(FLEET_LABEL.to_owned(), fleet.to_owned())]),
            annotations: BTreeMap::new(),
            state: TestGameServerState::Ready,
            address: address.ip().to_string(),
            ports: vec![("default".to_owned(), i32::from(address.port()))],
            lists: BTreeMap::from([(
                "players".to_owned(),
                TestList {
                    capacity: player_capacity,
                    values: Vec::new(),
                },
            )]),
        }
    }

    /// The values of its `players` list.
    pub fn players(&self) -> &[String] {
        self.lists.get("players").map_or(&[], |l| &l.values)
    }

    fn matches(&self, namespace: &str, selector: &GameServerSelector) -> bool {
        let state = match selector.game_server_state() {
            GameServerState::Ready => TestGameServerState::Ready,
            GameServerState::Allocated => TestGameServerState::Allocated,
        };
        self.namespace == namespace
            && self.state == state
            && selector
                .match_labels
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
            && selector.lists.iter().all(|(name, filter)| {
                self.lists.get(name).is_some_and(|list| {
                    list.capacity - list.values.len() as i64 >= filter.min_available
                })
            })
    }

    /// Applies the request's list actions; `false` (and no change) if they would exceed a
    /// list's capacity or name a list it does not have.
    fn apply_list_actions(&mut self, request: &AllocationRequest) -> bool {
        let mut lists = self.lists.clone();
        for (name, action) in &request.lists {
            let Some(list) = lists.get_mut(name) else {
                return false;
            };
            for value in &action.add_values {
                if !list.values.contains(value) {
                    list.values.push(value.clone());
                }
            }
            if list.values.len() as i64 > list.capacity {
                return false;
            }
        }
        self.lists = lists;
        true
    }
}

/// What the test allocator is told to do, and what it saw.
#[derive(Debug, Default)]
struct State {
    game_servers: Vec<TestGameServer>,
    requests: Vec<AllocationRequest>,
    failures: Vec<Status>,
    delay: Duration,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    received: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running test allocator. Stops when dropped.
#[derive(Debug)]
pub struct TestAllocator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    pki: TestPki,
    server_cert: ServerCert,
    namespace: String,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestAllocator {
    /// Starts an allocator on 127.0.0.1 (port chosen by the OS) presenting `server_cert`
    /// from `pki`, trusting client certificates signed by `pki.ca_pem`, with
    /// `game_servers` as its fleet(s). `namespace` is only what
    /// [`client_config`](Self::client_config) puts in the client's settings.
    ///
    /// # Errors
    /// If the listener cannot be bound or the TLS material is refused.
    pub async fn start(
        pki: &TestPki,
        server_cert: ServerCert,
        namespace: &str,
        game_servers: Vec<TestGameServer>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let identity = match server_cert {
            ServerCert::WithDnsName => &pki.server_with_dns,
            ServerCert::WithoutDnsName => &pki.server_without_dns,
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
            .client_ca_root(Certificate::from_pem(&pki.ca_pem));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                game_servers,
                ..State::default()
            }),
            received: watch::channel(0).0,
        });
        let service = AllocationServiceServer::new(Service(shared.clone()));
        let router = Server::builder().tls_config(tls)?.add_service(service);
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener);
            if let Err(error) = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
            {
                eprintln!("test allocator stopped: {error}");
            }
        });
        Ok(Self {
            addr,
            shared,
            pki: pki.clone(),
            server_cert,
            namespace: namespace.to_owned(),
            shutdown: Some(shutdown),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Client settings that work with this allocator: its address, the trusted client
    /// certificate, the right CA and server name, and short retry pauses (5 ms).
    pub fn client_config(&self) -> AgonesClientConfig {
        let mut config = AgonesClientConfig::new(
            &*self.namespace,
            self.addr.to_string(),
            self.pki.client.cert_pem.clone(),
            self.pki.client.key_pem.clone(),
            self.pki.ca_pem.clone(),
        );
        if self.server_cert == ServerCert::WithDnsName {
            config.tls_server_name = Some(SERVER_DNS_NAME.to_owned());
        }
        config.retry_backoff = Duration::from_millis(5);
        config.retry_backoff_max = Duration::from_millis(20);
        config
    }

    /// Every request received so far, in order (including those answered with an
    /// injected failure).
    pub fn requests(&self) -> Vec<AllocationRequest> {
        self.shared.lock().requests.clone()
    }

    /// The simulated game servers as they are now.
    pub fn game_servers(&self) -> Vec<TestGameServer> {
        self.shared.lock().game_servers.clone()
    }

    /// The simulated game server named `name`.
    pub fn game_server(&self, name: &str) -> Option<TestGameServer> {
        self.shared
            .lock()
            .game_servers
            .iter()
            .find(|gs| gs.name == name)
            .cloned()
    }

    /// Answers the next `times` requests with `code` instead of allocating.
    pub fn fail_next(&self, times: usize, code: Code) {
        let mut state = self.shared.lock();
        for _ in 0..times {
            state.failures.push(Status::new(
                code,
                format!("injected {code:?} (test allocator)"),
            ));
        }
    }

    /// Waits `delay` before answering each request (zero to stop).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Waits until at least `count` requests have been received; `false` if that did
    /// not happen within `timeout`.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        let mut received = self.shared.received.subscribe();
        tokio::time::timeout(timeout, received.wait_for(|&n| n >= count))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for TestAllocator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

struct Service(Arc<Shared>);

#[tonic::async_trait]
impl AllocationService for Service {
    async fn allocate(
        &self,
        request: Request<AllocationRequest>,
    ) -> Result<Response<AllocationResponse>, Status> {
        let request = request.into_inner();
        let (failure, delay) = {
            let mut state = self.0.lock();
            state.requests.push(request.clone());
            let failure = (!state.failures.is_empty()).then(|| state.failures.remove(0));
            (failure, state.delay)
        };
        self.0.received.send_modify(|n| *n += 1);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = failure {
            return Err(status);
        }
        allocate(&mut self.0.lock(), &request).map(Response::new)
    }
}

fn allocate(state: &mut State, request: &AllocationRequest) -> Result<AllocationResponse, Status> {
    if request.namespace.is_empty() {
        return Err(Status::invalid_argument("namespace is required"));
    }
    if request.game_server_selectors.is_empty() {
        return Err(Status::invalid_argument("gameServerSelectors is empty"));
    }
    for selector in &request.game_server_selectors {
        let mut candidates: Vec<usize> = (0..state.game_servers.len())
            .filter(|&i| state.game_servers[i].matches(&request.namespace, selector))
            .collect();
        // Packed: the fullest first, then by name, so one game server fills before the next.
        candidates.sort_by_key(|&i| {
            let gs = &state.game_servers[i];
            let used: usize = gs.lists.values().map(|l| l.values.len()).sum();
            (std::cmp::Reverse(used), gs.name.clone())
        });
        for i in candidates {
            let gs = &mut state.game_servers[i];
            if !gs.apply_list_actions(request) {
                continue;
            }
            gs.state = TestGameServerState::Allocated;
            return Ok(AllocationResponse {
                game_server_name: gs.name.clone(),
                address: gs.address.clone(),
                ports: gs
                    .ports
                    .iter()
                    .map(|(name, port)| GameServerStatusPort {
                        name: name.clone(),
                        port: *port,
                    })
                    .collect(),
                metadata: Some(GameServerMetadata {
                    labels: gs.labels.clone().into_iter().collect(),
                    annotations: gs.annotations.clone().into_iter().collect(),
                }),
            });
        }
    }
    Err(Status::resource_exhausted(
        "there is no available GameServer to allocate",
    ))
}
