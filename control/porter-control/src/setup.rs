//! From a validated [`Config`] to what a driver runs: listen addresses, the core's
//! [`porter_core::RelayConfig`], routes with their targets resolved, API settings.
//! Shared by both binaries so they start identically.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use porter_core::{AssemblerConfig, BackendAddr, QuicLbRouting, RefusalMode, Route};
use porter_host::HostSettings;
pub use porter_host::SetupError;

use crate::api::ApiSettings;
use porter_config::{self as config, Config};

pub use porter_config::LogFormat;

/// Everything a driver needs to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// UDP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The core's limits and timeouts.
    pub relay: porter_core::RelayConfig,
    /// Routes, targets resolved.
    pub routes: Vec<Route>,
    /// Log each dropped datagram.
    pub log_requests: bool,
    /// Log filter (`info`, `porter=debug`, ...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// How long to keep forwarding after SIGINT/SIGTERM.
    pub drain_period: Duration,
    /// The management API.
    pub api: Option<ApiSettings>,
    /// The `agones` section, when `agones.enabled` (the driver builds the allocator client
    /// from it: `porter_agones::AgonesClientConfig::from_config`).
    pub agones: Option<config::AgonesConfig>,
    /// How long routes added by `POST /allocate` live.
    pub allocate_route_ttl: Duration,
    /// Route sharing through Redis, when `redis.enabled`.
    pub redis: Option<config::RedisConfig>,
    /// The configuration these settings were built from (a reload compares a new file
    /// with it).
    pub config: Config,
    /// The file it was read from, if any ([`crate::cli::Cli::prepare`] sets it; `None` for
    /// the built-in example): what [`crate::reload::Reloader`] follows.
    pub config_file: Option<PathBuf>,
    /// Active health checks, when `health.enabled`.
    pub health: Option<porter_host::HealthSettings>,
    /// Upstream sockets send from each client's own address (`udp.transparent`).
    pub transparent: bool,
    /// Kernel receive buffer asked for on each listener, in bytes.
    pub receive_buffer: usize,
    /// Client sends batched with `sendmmsg`.
    pub batch_sends: bool,
    /// Data-plane shards to run (`udp.shards` resolved: `auto` is one per available
    /// core); 1 to [`config::Shards::MAX`].
    pub shards: usize,
}

impl Settings {
    /// Builds settings, resolving route targets (DNS names are looked up now, once) and
    /// reading the API token from the environment if the file does not hold it.
    pub fn from_config(config: &Config) -> Result<Self, SetupError> {
        Self::from_config_with_env(config, |name| std::env::var(name).ok())
    }

    /// As [`Self::from_config`], with the environment lookup supplied (for tests).
    pub fn from_config_with_env(
        config: &Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SetupError> {
        let mut problems = Vec::new();
        let mut routes = Vec::new();
        for (i, spec) in config.routes.iter().enumerate() {
            // With Agones disabled (as in the original project's sample file) an Agones
            // route loads, and its connections are refused; the loader warns.
            match spec.resolve() {
                Ok(route) => routes.push(route),
                Err(failures) => problems.extend(failures.iter().map(|f| {
                    format!(
                        "routes[{i}].target[{}]: cannot resolve {}: {}",
                        f.index, f.target, f.source
                    )
                })),
            }
        }
        let r = &config.relay;
        let relay = porter_core::RelayConfig {
            idle_timeout: r.idle_timeout,
            handshake_timeout: r.handshake_timeout,
            max_sessions: r.max_sessions,
            max_cids_per_session: r.max_cids_per_session,
            max_paths_per_session: r.max_paths_per_session,
            // Lowered to what the process can open when the engine starts
            // (`porter_host::socket_budget`).
            max_paths: r.max_upstream_sockets,
            path_idle_timeout: r.path_idle_timeout,
            max_buffered_per_session: r.max_buffered_bytes_per_connection,
            max_buffered_total: r.max_buffered_bytes_total,
            max_pending_allocations: r.max_pending_allocations,
            new_sessions_per_second: r.new_sessions_per_second,
            new_sessions_burst: r.new_sessions_burst,
            refusal: match r.refusal {
                config::Refusal::Close => RefusalMode::Close,
                config::Refusal::Drop => RefusalMode::Drop,
            },
            refusal_replays_per_second: r.refusal_replays_per_second,
            max_unvalidated_sessions: r.max_unvalidated_sessions,
            max_sessions_per_address: r.max_sessions_per_address,
            max_sessions_per_ip: r.max_sessions_per_ip,
            allocations_per_second_per_fleet: r.allocations_per_second_per_fleet,
            allocations_per_second_per_prefix: r.allocations_per_second_per_prefix,
            assembler: AssemblerConfig {
                max_client_hello_len: r.max_client_hello_bytes,
                ..AssemblerConfig::default()
            },
            quic_lb: quic_lb_routing(&config.quic_lb),
            directory: porter_core::DirectoryConfig {
                enabled: config.redis.as_ref().is_some_and(|redis| redis.directory),
                max_pending_lookups: r.directory_max_pending_lookups,
                max_datagrams_per_lookup: r.directory_max_held_datagrams,
                max_bytes_per_lookup: r.directory_max_held_bytes,
                lookup_timeout: r.directory_lookup_timeout,
                lookups_per_second: r.directory_lookups_per_second,
            },
            seed: random_seed(),
            // The host makes one configuration per shard of it (`RelayConfig::for_shard`).
            shard: porter_core::Shard::default(),
        };
        let api = &config.api;
        let token = api.token.clone().or_else(|| {
            env(&api.token_env)
                .filter(|t| !t.is_empty())
                .map(config::Secret::new)
        });
        let api = Some(ApiSettings {
            bind: api.listen_addr(),
            token,
            read_token: api.read_token.clone(),
            log_requests: api.log_requests,
            max_body_bytes: api.max_body_bytes,
            header_timeout: api.header_timeout,
            idle_timeout: api.idle_timeout,
            max_connections: api.max_connections,
            allowed_hosts: api.allowed_hosts.clone(),
        });
        let agones = config.agones.clone();
        let allocate_route_ttl = config
            .agones
            .as_ref()
            .map_or(Duration::from_secs(600), |a| a.allocate_route_ttl);
        if !problems.is_empty() {
            return Err(SetupError { problems });
        }
        Ok(Self {
            listen: config.udp.listen_addrs(),
            relay,
            routes,
            log_requests: config.udp.log_requests,
            transparent: config.udp.transparent,
            health: config.health.map(|h| porter_host::HealthSettings {
                interval: h.interval,
                timeout: h.timeout,
                rise: h.rise,
                fall: h.fall,
            }),
            log_level: config.log.level.clone(),
            log_format: config.log.format,
            drain_period: config.relay.drain_period,
            api,
            agones,
            allocate_route_ttl,
            redis: config.redis.clone(),
            config: config.clone(),
            config_file: None,
            receive_buffer: config.udp.receive_buffer,
            batch_sends: config.udp.batch_sends,
            shards: config.udp.shards.resolve(available_cores()),
        })
    }

    /// What the data plane needs of these settings.
    pub fn host_settings(&self) -> HostSettings {
        HostSettings {
            listen: self.listen.clone(),
            relay: self.relay.clone(),
            routes: self.routes.clone(),
            log_requests: self.log_requests,
            health: self.health,
            transparent: self.transparent,
            receive_buffer: self.receive_buffer,
            batch_sends: self.batch_sends,
            shards: self.shards,
        }
    }
}

/// The cores this process may run on (affinity and cgroup quota included); 1 when the
/// system cannot say.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A seed for the core's randomness, from the OS (through std's randomly keyed hasher,
/// which avoids a dependency for eight bytes).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// The relay's server-ID routing from the `quic_lb` section (already checked by
/// porter-config: every configuration and server ID is valid).
fn quic_lb_routing(specs: &[config::QuicLbSpec]) -> QuicLbRouting {
    use porter_core::quic_lb::{Config as LbConfig, Key, ServerId};
    let mut routing = QuicLbRouting::new();
    for spec in specs {
        let lb = LbConfig::new(
            spec.config_id,
            spec.server_id_len,
            spec.nonce_len,
            spec.key.map(Key::new),
        )
        .expect("porter-config checked the QUIC-LB configuration");
        routing.insert_config(lb);
        for (id, backend) in &spec.servers {
            let id = ServerId::new(id).expect("porter-config checked the server ID's length");
            routing.insert_server(id, BackendAddr(*backend));
        }
    }
    routing
}
