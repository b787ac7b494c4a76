//! The validated configuration: what the binaries run with. Every value here has passed its
//! checks; defaults are filled in. `docs/configuration.md` is the reference for each key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Problem;
use crate::names::RouteName;
use crate::target::Target;
use porter_core::Balance;

/// Porter's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Config {
    /// The public UDP listener (section `udp`).
    pub udp: UdpConfig,
    /// The management REST API (section `api`).
    pub api: ApiConfig,
    /// Route sharing through Redis (section `redis`); `None` when `enabled` is false.
    pub redis: Option<RedisConfig>,
    /// The Agones allocator client (section `agones`); `None` when `enabled` is false.
    pub agones: Option<AgonesConfig>,
    /// Limits and timers of the relay core (section `relay`).
    pub relay: RelayConfig,
    /// Logging (section `log`).
    pub log: LogConfig,
    /// Following changes to the file (section `reload`).
    pub reload: ReloadConfig,
    /// Active health checks (section `health`); `None` when `enabled` is false.
    pub health: Option<HealthConfig>,
    /// The routes known at start-up, in file order (section `routes`).
    pub routes: Vec<RouteSpec>,
    /// Server-ID routing: the QUIC-LB configurations the backends issue CIDs with
    /// (section `quic_lb`), in file order.
    pub quic_lb: Vec<QuicLbSpec>,
    /// Things that are allowed but probably not meant (an Agones route while Agones is
    /// disabled, certificate checks turned off). `porter check` prints them.
    pub warnings: Vec<Problem>,
}

/// One QUIC-LB configuration (an item of `quic_lb`): how the backends' CIDs carry a
/// server ID, and the backend of each server ID. Checked: the lengths and the key make a
/// valid configuration (draft-ietf-quic-load-balancers-21 §5), every server ID has the
/// configured length, no config ID appears twice.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuicLbSpec {
    /// The config ID (the three config-rotation bits), 0 to 6.
    pub config_id: u8,
    /// Octets of server ID.
    pub server_id_len: usize,
    /// Octets of nonce.
    pub nonce_len: usize,
    /// The AES-128 key; `None`: plaintext CIDs.
    pub key: Option<[u8; 16]>,
    /// Server IDs and their backends.
    pub servers: Vec<(Vec<u8>, SocketAddr)>,
}

/// Section `udp`: where clients reach the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpConfig {
    /// The port to listen on (`0`: any free port, for tests).
    pub port: u16,
    /// The addresses to listen on; one socket each. Never empty.
    pub binds: Vec<IpAddr>,
    /// Log each new connection (SNI, client, backend).
    pub log_requests: bool,
    /// Format of those logs; `log.format` unless `udp.log_format` is set.
    pub log_format: LogFormat,
    /// Upstream sockets send from each client's own address (IP_TRANSPARENT).
    pub transparent: bool,
    /// The kernel receive buffer asked for on each listener socket, in bytes.
    pub receive_buffer: usize,
    /// Send single client-bound datagrams of many clients in one `sendmmsg`.
    pub batch_sends: bool,
    /// How many data-plane shards to run (`auto`: one per available core).
    pub shards: Shards,
}

/// `udp.shards`: the number of data-plane shards, each a relay with its own listener
/// sockets (sharing the port through SO_REUSEPORT) and upstream sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shards {
    /// One per available core, at most [`Shards::MAX`]; resolved when the settings are
    /// built ([`Shards::resolve`]), not when the file is read.
    #[default]
    Auto,
    /// This many; the checker accepts 1 to [`Shards::MAX`].
    Count(NonZeroUsize),
}

impl Shards {
    /// The most shards an instance runs.
    pub const MAX: usize = 256;

    /// The number of shards to run on a machine with `available_cores` cores (what
    /// `std::thread::available_parallelism` says): the count given, or for `Auto` the
    /// cores; always 1 to [`Shards::MAX`].
    #[must_use]
    pub fn resolve(self, available_cores: usize) -> usize {
        match self {
            Self::Auto => available_cores,
            Self::Count(n) => n.get(),
        }
        .clamp(1, Self::MAX)
    }
}

impl UdpConfig {
    /// One socket address per bind address, all on `port`.
    #[must_use]
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.binds
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            port: 7777,
            binds: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            log_requests: false,
            log_format: LogFormat::Human,
            transparent: false,
            receive_buffer: 8 << 20,
            batch_sends: true,
            shards: Shards::Auto,
        }
    }
}

/// Section `api`: the management REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiConfig {
    /// The TCP port (`0`: any free port, for tests).
    pub port: u16,
    /// The address to listen on; loopback unless a token is set.
    pub bind: IpAddr,
    /// Log each request.
    pub log_requests: bool,
    /// The bearer token requests must carry: `api.token`, else the value of the environment
    /// variable named by `api.token_env`. `None` only when `bind` is a loopback address.
    pub token: Option<Secret>,
    /// The environment variable the token was looked up in.
    pub token_env: String,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// A second bearer token that only allows the reads that show sessions and routes
    /// (`GET /sessions`, `/routes`, `/routes/{fqdn}`, `/stats`, `/metrics`); `token`
    /// allows them too.
    pub read_token: Option<Secret>,
    /// How long a client has to send a request's headers before the connection closes.
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub idle_timeout: Duration,
    /// API connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Host header values (names or IP addresses, without port) accepted besides the bind
    /// address, `localhost` and loopback addresses.
    pub allowed_hosts: Vec<String>,
}

impl ApiConfig {
    /// The socket address to listen on.
    #[must_use]
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            port: 8080,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            log_requests: false,
            token: None,
            token_env: DEFAULT_TOKEN_ENV.to_owned(),
            max_body_bytes: 64 << 10,
            read_token: None,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            allowed_hosts: Vec::new(),
        }
    }
}

/// The environment variable that holds the API token unless `api.token_env` says otherwise.
pub const DEFAULT_TOKEN_ENV: &str = "PORTER_API_TOKEN";

/// Section `redis`, when enabled: routes shared between Porter instances.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server's address (port 6379 unless given).
    pub address: Target,
    /// Whether to use TLS (`rediss://`).
    pub tls: bool,
    /// The user name (ACL), from the URL.
    pub username: Option<String>,
    /// The password: from the URL or `redis.password`.
    pub password: Option<Secret>,
    /// The database number.
    pub db: u32,
    /// The pub/sub channel route changes are published on.
    pub channel: String,
    /// Share connection IDs through Redis (the connection-ID directory).
    pub directory: bool,
}

impl RedisConfig {
    /// The connection URL (`redis://[user][:password@]host:port/db`, `rediss://` with TLS).
    /// It holds the password, hence a [`Secret`].
    #[must_use]
    pub fn url(&self) -> Secret {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let mut userinfo = String::new();
        if let Some(user) = &self.username {
            userinfo.push_str(&percent_encode(user));
        }
        if let Some(password) = &self.password {
            userinfo.push(':');
            userinfo.push_str(&percent_encode(password.expose()));
        }
        if !userinfo.is_empty() {
            userinfo.push('@');
        }
        Secret::new(format!("{scheme}://{userinfo}{}/{}", self.address, self.db))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Section `agones`, when enabled: allocating game servers from fleets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgonesConfig {
    /// The namespace game servers are allocated in.
    pub namespace: String,
    /// The allocator service (port 443 unless given).
    pub allocator_host: Target,
    /// PEM client certificate for mutual TLS.
    pub allocator_client_cert: PathBuf,
    /// PEM private key of the client certificate.
    pub allocator_client_key: PathBuf,
    /// PEM CA certificate that signed the allocator's server certificate.
    pub allocator_ca_cert: PathBuf,
    /// The name to check the allocator's certificate against; the host of
    /// `allocator_host` when `None`.
    pub tls_server_name: Option<String>,
    /// Do not verify the allocator's certificate (tests only).
    pub insecure_skip_verify: bool,
    /// Deadline of one allocation request.
    pub request_timeout: Duration,
    /// Retries of a failed allocation request (not counting the first try).
    pub max_retries: u32,
    /// The game server list that connected players are added to.
    pub player_list: String,
    /// Reserve a slot in `player_list` when allocating.
    pub reserve_player_slot: bool,
    /// The game server port to route to, by name; the first port when `None`.
    pub port_name: Option<String>,
    /// How long a route made by `POST /allocate` lasts.
    pub allocate_route_ttl: Duration,
    /// The label (else annotation) of a game server that holds its QUIC-LB server ID in
    /// hex; `None` reads none.
    pub server_id_label: Option<String>,
}

/// Section `relay`: the bounds and timers of the relay core.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// A session without traffic for this long ends.
    pub idle_timeout: Duration,
    /// A connection whose ClientHello (and backend) is not settled within this ends.
    pub handshake_timeout: Duration,
    /// Sessions at once; new connections beyond are dropped.
    pub max_sessions: usize,
    /// Connection IDs tracked per session.
    pub max_cids_per_session: usize,
    /// Client paths (client addresses, each with its own upstream socket) per session.
    pub max_paths_per_session: usize,
    /// Upstream sockets (client paths) at once over all sessions; the relay lowers it to
    /// its file-descriptor limit less a reserve and its ephemeral port range.
    pub max_upstream_sockets: usize,
    /// A path other than the one its client used last ends after this long without a
    /// datagram from its client.
    pub path_idle_timeout: Duration,
    /// Bytes held for one connection while its ClientHello or allocation is pending.
    pub max_buffered_bytes_per_connection: usize,
    /// Bytes held for all pending connections together.
    pub max_buffered_bytes_total: usize,
    /// Agones allocations in flight at once.
    pub max_pending_allocations: usize,
    /// New sessions per second (token bucket rate).
    pub new_sessions_per_second: u32,
    /// New sessions allowed in a burst (token bucket size).
    pub new_sessions_burst: u32,
    /// The largest ClientHello the relay reassembles.
    pub max_client_hello_bytes: usize,
    /// What to do with a connection for a name without a route.
    pub refusal: Refusal,
    /// Answers to replayed Initials of refused connections per second.
    pub refusal_replays_per_second: u32,
    /// Sessions whose client has not yet used a CID the backend issued, at once; from
    /// half of it on, new ones are admitted fairly per source prefix and IP.
    pub max_unvalidated_sessions: usize,
    /// Sessions with a path from one client address (IP and port).
    pub max_sessions_per_address: usize,
    /// Sessions with a path from one client IP.
    pub max_sessions_per_ip: usize,
    /// Agones allocation requests per fleet in any one second (0: no limit).
    pub allocations_per_second_per_fleet: u32,
    /// Agones allocation requests per source prefix (IPv4 /24, IPv6 /64) in any one
    /// second (0: no limit).
    pub allocations_per_second_per_prefix: u32,
    /// On shutdown, how long existing sessions keep being relayed.
    pub drain_period: Duration,
    /// Connection-ID directory lookups started per second (token bucket rate and size).
    pub directory_lookups_per_second: u32,
    /// A directory lookup not answered within this is given up.
    pub directory_lookup_timeout: Duration,
    /// Directory lookups waiting for an answer at once.
    pub directory_max_pending_lookups: usize,
    /// Datagrams held for one directory lookup.
    pub directory_max_held_datagrams: usize,
    /// Bytes held for one directory lookup.
    pub directory_max_held_bytes: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(5),
            max_sessions: 100_000,
            max_cids_per_session: 8,
            max_paths_per_session: 4,
            max_upstream_sockets: 100_000,
            path_idle_timeout: Duration::from_secs(5),
            max_buffered_bytes_per_connection: 64 << 10,
            max_buffered_bytes_total: 64 << 20,
            max_pending_allocations: 1024,
            new_sessions_per_second: 10_000,
            new_sessions_burst: 10_000,
            max_client_hello_bytes: 16 << 10,
            refusal: Refusal::Close,
            refusal_replays_per_second: 100,
            max_unvalidated_sessions: 10_000,
            max_sessions_per_address: 1024,
            max_sessions_per_ip: 4096,
            allocations_per_second_per_fleet: 100,
            allocations_per_second_per_prefix: 10,
            drain_period: Duration::from_secs(10),
            directory_lookups_per_second: 1000,
            directory_lookup_timeout: Duration::from_millis(250),
            directory_max_pending_lookups: 1024,
            directory_max_held_datagrams: 8,
            directory_max_held_bytes: 16 << 10,
        }
    }
}

/// What the relay does with a connection for a name it has no route for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Refusal {
    /// Answer with a CONNECTION_CLOSE, so the client fails at once.
    #[default]
    Close,
    /// Drop silently; the client times out.
    Drop,
}

/// Section `log`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogConfig {
    /// A level (`info`) or a comma-separated filter (`info,porter_core=debug`).
    pub level: String,
    /// How log lines look.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Human,
        }
    }
}

/// Section `reload`: how the running relay follows changes to its configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadConfig {
    /// Look at the file every `interval` and apply it when its content changed (SIGHUP
    /// reloads either way).
    pub watch: bool,
    /// How often the file is looked at.
    pub interval: Duration,
    /// What happens to the sessions of a route or target that a reload removed.
    pub removed_sessions: RemovedSessions,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            interval: Duration::from_secs(1),
            removed_sessions: RemovedSessions::Drain,
        }
    }
}

/// What a reload does with the sessions whose route or target it removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RemovedSessions {
    /// They keep being relayed until they end on their own (idle timeout).
    #[default]
    Drain,
    /// They are closed at once.
    Close,
}

impl RemovedSessions {
    /// The word the file uses.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Close => "close",
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// Plain text for people.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Section `health`: active checks of simple routes' targets with a QUIC Version
/// Negotiation probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Time between two probes of a target.
    pub interval: Duration,
    /// How long a probe waits for its answer.
    pub timeout: Duration,
    /// Answered probes in a row that make an unhealthy target healthy.
    pub rise: u32,
    /// Unanswered probes in a row that make a healthy target unhealthy.
    pub fall: u32,
}

/// One route: the names it answers to and where it sends connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    /// The server names this route answers to.
    pub name: RouteName,
    /// Where connections go.
    pub kind: RouteKind,
}

/// Where a route sends connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Fixed backends (`type: simple`); the relay picks one per new connection. Never empty.
    Simple {
        /// The backends, in file order.
        targets: Vec<Target>,
        /// The policy and the targets' weights (`policy`, `weights`).
        balance: Balance,
    },
    /// A game server allocated from an Agones fleet (`type: agones`).
    Agones {
        /// The fleet's name.
        fleet: String,
    },
}

/// A value not to be printed: an API token, a password. `Debug` shows `Secret(***)`.
/// Comparisons (`==` included) go through [`Secret::matches`], in constant time.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; do not log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with a candidate (such as a presented bearer token) in time that does not
    /// depend on where they differ. The only comparison of secrets: `==` uses it too.
    #[must_use]
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        // Constant time: an `==` on the bytes returns at the first byte that differs, so
        // how long a wrong guess takes would tell how many of its first bytes are right,
        // and a token could be found a byte at a time. Folding the XOR of every pair of
        // bytes visits them all, whatever they hold. Only the length may leak (the lengths
        // are compared first), which says nothing about the bytes.
        expected.len() == candidate.len()
            && expected
                .iter()
                .zip(candidate)
                .fold(0u8, |diff, (e, c)| diff | (e ^ c))
                == 0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_not_printed_and_compares() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter3"));
        assert!(!s.matches(b"hunter"));
        assert!(!s.matches(b"hunter22"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn secrets_compare_with_matches_and_stay_hidden_in_configs() {
        let s = Secret::new("hunter2");
        assert_eq!(s, Secret::new("hunter2"));
        assert_ne!(s, Secret::new("hunter3"));
        assert_ne!(s, Secret::new("hunter"));
        assert_ne!(s, Secret::new("hunter22"));
        let api = ApiConfig {
            token: Some(s),
            ..ApiConfig::default()
        };
        assert!(!format!("{api:?}").contains("hunter2"), "{api:?}");
    }

    #[test]
    fn redis_url_encodes_credentials() {
        let cfg = RedisConfig {
            address: Target::parse("redis.internal:6380").unwrap(),
            tls: true,
            username: Some("porter".into()),
            password: Some(Secret::new("p@ss:w/rd")),
            db: 2,
            channel: "porter_routes".into(),
            directory: false,
        };
        assert_eq!(
            cfg.url().expose(),
            "rediss://porter:p%40ss%3Aw%2Frd@redis.internal:6380/2"
        );
    }
}
