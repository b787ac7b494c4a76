//! The allocation call: request building, retries with backoff, and reading the answer.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::proto::allocation_service_client::AllocationServiceClient;
use super::proto::game_server_selector::GameServerState;
use super::proto::{
    AllocationRequest, AllocationResponse, GameServerSelector, ListAction, ListSelector,
};
use super::tls::{self, TlsConnector};
use super::{AgonesClientConfig, AllocateError, ClientConfigError};

/// The label Agones puts on every game server of a fleet.
pub const FLEET_LABEL: &str = "agones.dev/fleet";

/// Interval of HTTP/2 keepalive pings. The allocator closes connections that ping more
/// often than once a minute (gRPC keepalive enforcement); the margin covers timer skew.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(90);

/// How early a time-out reported by tonic or the allocator may come, against our clock,
/// and still count as the attempt's time-out.
const TIMER_SLACK: Duration = Duration::from_millis(20);

/// A game server the allocator handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Allocation {
    /// The game server's name (Kubernetes object name).
    pub game_server_name: String,
    /// The address the allocator gave, as given: an IP address or a DNS name.
    pub address: String,
    /// The chosen port: the one named `port_name`, or the first.
    pub port: u16,
    /// `address:port` as a socket address. Set when `address` is an IP literal or a DNS
    /// name that resolved (first result of the system resolver) before the deadline;
    /// `None` otherwise, and then the caller decides (the slot is reserved either way).
    pub socket_addr: Option<SocketAddr>,
    /// The value of the label named by `server_id_label` (else of the annotation of that
    /// name): the game server's QUIC-LB server ID, as text. `None` when no name is
    /// configured or the game server has neither.
    pub server_id: Option<String>,
}

/// A client of the Agones allocator service over mutual TLS.
///
/// Cheap to clone; clones share one HTTP/2 connection, which carries any number of
/// allocations at once. The connection is opened on the first allocation and reopened
/// when it breaks.
#[derive(Clone, Debug)]
pub struct AgonesClient {
    grpc: AllocationServiceClient<Channel>,
    settings: Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    namespace: String,
    allocator: String,
    server_name: String,
    request_timeout: Duration,
    max_retries: u32,
    retry_backoff: Duration,
    retry_backoff_max: Duration,
    player_list: String,
    reserve_player_slot: bool,
    port_name: Option<String>,
    server_id_label: Option<String>,
}

/// What one failed attempt means for the next.
enum Failure {
    Retry { code: Code, message: String },
    TimedOut,
    Fatal(AllocateError),
}

impl AgonesClient {
    /// Checks the settings and prepares the channel; no connection is made yet, so an
    /// unreachable allocator or a certificate it refuses shows up in
    /// [`allocate`](Self::allocate).
    ///
    /// Must be called within a tokio runtime (the channel spawns its worker task). Logs a
    /// warning when `insecure_skip_verify` is set.
    pub fn new(config: AgonesClientConfig) -> Result<Self, ClientConfigError> {
        let (authority, host) = parse_allocator_host(&config.allocator_host)?;
        let server_name_text = config.tls_server_name.clone().unwrap_or(host);
        let server_name = ServerName::try_from(server_name_text.clone())
            .map_err(|_| ClientConfigError::InvalidServerName(server_name_text.clone()))?;
        if config.insecure_skip_verify {
            tracing::warn!(
                allocator = %authority,
                "Agones allocator TLS verification is OFF (insecure_skip_verify): any server \
                 can impersonate the allocator and receive Porter's client certificate; \
                 use only for debugging"
            );
        }
        let connector = TlsConnector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(&config)?)),
            server_name,
        };
        // The URI says `http` because TLS happens in our connector, not in tonic; requests
        // still carry the `https` origin.
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| ClientConfigError::Endpoint(e.to_string()))?
            .origin(
                format!("https://{authority}")
                    .parse()
                    .map_err(|e| ClientConfigError::Endpoint(format!("{e}")))?,
            )
            .connect_timeout(config.request_timeout)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_with_connector_lazy(connector);
        Ok(Self {
            grpc: AllocationServiceClient::new(channel),
            settings: Arc::new(Settings {
                namespace: config.namespace,
                allocator: authority,
                server_name: server_name_text,
                request_timeout: config.request_timeout,
                max_retries: config.max_retries,
                retry_backoff: config.retry_backoff,
                retry_backoff_max: config.retry_backoff_max.max(config.retry_backoff),
                player_list: config.player_list,
                reserve_player_slot: config.reserve_player_slot,
                port_name: config.port_name,
                server_id_label: config.server_id_label,
            }),
        })
    }

    /// The request [`allocate`](Self::allocate) sends for `fleet` and `connection_tag`:
    /// two selectors on the fleet label, allocated game servers with a free player slot
    /// first, then ready ones; and, with `reserve_player_slot`, the tag added to the
    /// player list in the same step.
    pub fn request(&self, fleet: &str, connection_tag: &str) -> AllocationRequest {
        let s = &self.settings;
        let selector = |state: GameServerState| GameServerSelector {
            match_labels: HashMap::from([(FLEET_LABEL.to_owned(), fleet.to_owned())]),
            game_server_state: state.into(),
            lists: HashMap::from([(s.player_list.clone(), ListSelector { min_available: 1 })]),
        };
        let lists = if s.reserve_player_slot {
            HashMap::from([(
                s.player_list.clone(),
                ListAction {
                    add_values: vec![connection_tag.to_owned()],
                },
            )])
        } else {
            HashMap::new()
        };
        AllocationRequest {
            namespace: s.namespace.clone(),
            game_server_selectors: vec![
                selector(GameServerState::Allocated),
                selector(GameServerState::Ready),
            ],
            lists,
        }
    }

    /// Allocates a game server of `fleet` for one connection, tagged `connection_tag` in
    /// the player list (see [`request`](Self::request)).
    ///
    /// `ResourceExhausted`, `Aborted`, `Unavailable` and attempts that time out are
    /// retried, up to `max_retries` times, after a pause that doubles each time (with
    /// jitter); any other status, and any TLS failure, fails at once. Each attempt lasts
    /// at most `request_timeout` and ends by `deadline`; when the next pause would reach
    /// `deadline`, the last attempt's error is returned at once rather than at the
    /// deadline. An attempt that timed out may still have allocated a game server on the
    /// allocator's side (its player slot then stays reserved until the game server
    /// removes the tag); a retry that lands on the same game server adds nothing, as
    /// Agones ignores duplicate list values.
    ///
    /// Safe to call many times at once, from clones of one client.
    ///
    /// A DNS name in the answer is resolved with the system resolver, within `deadline`
    /// (see [`Allocation::socket_addr`]).
    pub async fn allocate(
        &self,
        fleet: &str,
        connection_tag: &str,
        deadline: Instant,
    ) -> Result<Allocation, AllocateError> {
        let s = &self.settings;
        let request = self.request(fleet, connection_tag);
        let mut backoff = s.retry_backoff;
        let mut attempts = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout(fleet, attempts));
            }
            attempts += 1;
            let attempt_deadline = deadline.min(now + s.request_timeout);
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(attempt_deadline - now);
            let mut grpc = self.grpc.clone();
            let failure = match tokio::time::timeout_at(attempt_deadline, grpc.allocate(call)).await
            {
                Ok(Ok(response)) => {
                    return self.read_response(response.into_inner(), deadline).await;
                }
                Ok(Err(status)) => self.judge(fleet, status, attempt_deadline),
                Err(_elapsed) => Failure::TimedOut,
            };
            let last_error = match failure {
                Failure::Fatal(error) => return Err(error),
                Failure::Retry { code, message } => self.exhausted(fleet, attempts, code, message),
                Failure::TimedOut => self.timeout(fleet, attempts),
            };
            let pause = jittered(backoff);
            backoff = (backoff * 2).min(s.retry_backoff_max);
            if attempts > s.max_retries || Instant::now() + pause >= deadline {
                return Err(last_error);
            }
            tracing::debug!(fleet, attempts, ?pause, "retrying Agones allocation");
            tokio::time::sleep(pause).await;
        }
    }

    fn judge(&self, fleet: &str, status: tonic::Status, attempt_deadline: Instant) -> Failure {
        let s = &self.settings;
        if let Some(error) = tls::tls_failure(&status, &s.allocator, &s.server_name) {
            return Failure::Fatal(error.into());
        }
        match status.code() {
            // tonic enforces the attempt's `grpc-timeout` itself, and the allocator may
            // give up on it first: either way this attempt ran out of time.
            Code::Cancelled | Code::DeadlineExceeded
                if Instant::now() + TIMER_SLACK >= attempt_deadline =>
            {
                Failure::TimedOut
            }
            Code::ResourceExhausted | Code::Aborted | Code::Unavailable => Failure::Retry {
                code: status.code(),
                message: tls::status_text(&status),
            },
            code => Failure::Fatal(AllocateError::Rejected {
                fleet: fleet.to_owned(),
                code,
                message: tls::status_text(&status),
            }),
        }
    }

    fn exhausted(&self, fleet: &str, attempts: u32, code: Code, message: String) -> AllocateError {
        let s = &self.settings;
        if code == Code::ResourceExhausted {
            AllocateError::NoGameServerAvailable {
                fleet: fleet.to_owned(),
                namespace: s.namespace.clone(),
                attempts,
                message,
            }
        } else {
            AllocateError::Unavailable {
                allocator: s.allocator.clone(),
                code,
                attempts,
                message,
            }
        }
    }

    fn timeout(&self, fleet: &str, attempts: u32) -> AllocateError {
        AllocateError::Timeout {
            fleet: fleet.to_owned(),
            attempts,
            request_timeout: self.settings.request_timeout,
        }
    }

    async fn read_response(
        &self,
        response: AllocationResponse,
        deadline: Instant,
    ) -> Result<Allocation, AllocateError> {
        let invalid = |reason: String| AllocateError::InvalidResponse {
            game_server: response.game_server_name.clone(),
            reason,
        };
        if response.address.is_empty() {
            return Err(invalid("no address".to_owned()));
        }
        let port = match &self.settings.port_name {
            Some(name) => response
                .ports
                .iter()
                .find(|p| &p.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = response.ports.iter().map(|p| p.name.as_str()).collect();
                    invalid(format!("no port named `{name}` (ports: {names:?})"))
                })?,
            None => response
                .ports
                .first()
                .ok_or_else(|| invalid("no port".to_owned()))?,
        };
        let port = u16::try_from(port.port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| invalid(format!("port `{}` is {}", port.name, port.port)))?;
        let socket_addr = resolve(&response.address, port, deadline).await;
        let server_id = self.settings.server_id_label.as_ref().and_then(|name| {
            let metadata = response.metadata.as_ref();
            let found =
                metadata.and_then(|m| m.labels.get(name).or_else(|| m.annotations.get(name)));
            if found.is_none() {
                tracing::warn!(
                    game_server = %response.game_server_name,
                    label = %name,
                    "the allocated game server has no server ID label or annotation; its \
                     clients are routed without it"
                );
            }
            found.cloned()
        });
        Ok(Allocation {
            game_server_name: response.game_server_name,
            address: response.address,
            port,
            socket_addr,
            server_id,
        })
    }
}

async fn resolve(address: &str, port: u16, deadline: Instant) -> Option<SocketAddr> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    match tokio::time::timeout_at(deadline, tokio::net::lookup_host((address, port))).await {
        Ok(Ok(mut addrs)) => addrs.next(),
        Ok(Err(error)) => {
            tracing::warn!(address, %error, "cannot resolve allocated game server address");
            None
        }
        Err(_) => {
            tracing::warn!(address, "resolving allocated game server address timed out");
            None
        }
    }
}

/// "Equal jitter": a pause drawn uniformly between half of `backoff` and all of it, so
/// that many connections refused together do not retry together.
fn jittered(backoff: Duration) -> Duration {
    // A fresh `RandomState` is randomly keyed; hashing nothing gives a random word.
    let random = RandomState::new().build_hasher().finish();
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    backoff / 2 + backoff.mul_f64(fraction / 2.0)
}

/// Splits `allocator_host` into the authority to dial (`host:port`) and the host alone.
fn parse_allocator_host(value: &str) -> Result<(String, String), ClientConfigError> {
    let invalid = |reason: &str| ClientConfigError::InvalidAllocatorHost {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = match value.split_once("://") {
        Some(("https", rest)) => rest,
        Some(_) => return Err(invalid("the scheme must be https (or none)")),
        None => value,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(invalid("expected host[:port]"));
    }
    let uri: tonic::codegen::http::Uri = format!("https://{rest}")
        .parse()
        .map_err(|_| invalid("expected host[:port]"))?;
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    // `Uri::port` hides a port that does not fit in 16 bits, so read it from the text.
    let port = match rest.strip_prefix(host).and_then(|p| p.strip_prefix(':')) {
        None => 443,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(invalid("the port must be 1 to 65535")),
        },
    };
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((format!("{host}:{port}"), bare_host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_host_forms() {
        let ok = |v: &str| parse_allocator_host(v).unwrap();
        assert_eq!(
            ok("allocator.example:8443"),
            ("allocator.example:8443".into(), "allocator.example".into())
        );
        assert_eq!(
            ok("https://10.0.0.1"),
            ("10.0.0.1:443".into(), "10.0.0.1".into())
        );
        assert_eq!(ok("https://[::1]:9/"), ("[::1]:9".into(), "::1".into()));
        assert_eq!(
            ok("Allocator.Example"),
            ("Allocator.Example:443".into(), "Allocator.Example".into())
        );
        for bad in ["", "http://a:1", "a:1/path", "a:0", "a:", "a:99999", "a:x"] {
            assert!(parse_allocator_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn jitter_stays_within_half_and_full_backoff() {
        let backoff = Duration::from_millis(400);
        let pauses: Vec<Duration> = (0..200).map(|_| jittered(backoff)).collect();
        assert!(pauses.iter().all(|p| *p >= backoff / 2 && *p <= backoff));
        // Not all equal: the jitter is random.
        assert!(pauses.iter().any(|p| *p != pauses[0]));
    }
}
