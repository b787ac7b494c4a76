//! One table of keys per section: name, kind, default and a one-line description. The
//! checker takes the known keys (unknown-key errors and suggestions), the choices of
//! enumerated keys and every default from here; a test ties these tables to the reference
//! tables in `docs/configuration.md`, both ways.

/// One key of a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Key {
    /// The key as written in the file.
    pub name: &'static str,
    /// What kind of value it takes.
    pub kind: Kind,
    /// What it is when left out.
    pub default: KeyDefault,
    /// One line on what it is for.
    pub doc: &'static str,
}

/// The kind of value a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// `true` or `false`.
    Bool,
    /// A port, 0–65535.
    Port,
    /// A whole number (the checker applies the key's bounds).
    Integer,
    /// A whole number (the checker applies the key's bounds) or the word `auto`.
    IntegerOrAuto,
    /// A string.
    String,
    /// A duration: `500ms`, `5s`, `2m`, `1h`, or a number of seconds.
    Duration,
    /// A byte size: a number of bytes, or `64KiB`, `16MiB`.
    ByteSize,
    /// One IP address.
    IpAddress,
    /// One IP address or a list.
    IpAddresses,
    /// `host:port` (or a URL, for `redis.address`).
    Address,
    /// A file path.
    Path,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A log level or filter.
    LogLevel,
    /// An environment variable name.
    EnvVar,
    /// A Kubernetes object name.
    KubernetesName,
    /// A DNS name or an IP address.
    ServerName,
    /// One DNS name or IP address, or a list.
    ServerNames,
    /// A route name (`name`, `*.suffix`, `*`).
    RouteName,
    /// A route's target: `host:port` (one or a list) or a fleet.
    RouteTarget,
    /// A list of positive whole numbers, one per target (route weights).
    Weights,
    /// A mapping of keys (a section).
    Section,
    /// The list of routes.
    Routes,
    /// The list of QUIC-LB configurations.
    QuicLbConfigs,
    /// A mapping of QUIC-LB server IDs (hex) to backends (`ip:port`).
    QuicLbServers,
}

/// What a key is when left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// This value, written as in the file (YAML).
    Value(&'static str),
    /// Nothing.
    None,
    /// Depends on something else; the text says what.
    Derived(&'static str),
    /// The key must be given (route keys).
    Required,
}

impl KeyDefault {
    /// How the reference tables in `docs/configuration.md` write it.
    #[must_use]
    pub fn doc_text(&self) -> String {
        match self {
            Self::Value(v) => format!("`{v}`"),
            Self::None => "none".to_owned(),
            Self::Derived(text) => (*text).to_owned(),
            Self::Required => "required".to_owned(),
        }
    }
}

/// A section of the file and its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Section {
    /// The section's key at the top level; `routes` for the keys of one route.
    pub name: &'static str,
    /// Its keys, in the order the messages list them.
    pub keys: &'static [Key],
}

impl Section {
    /// The key called `name`.
    #[must_use]
    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// The names of the keys.
    #[must_use]
    pub fn names(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.name).collect()
    }
}

const fn key(name: &'static str, kind: Kind, default: KeyDefault, doc: &'static str) -> Key {
    Key {
        name,
        kind,
        default,
        doc,
    }
}

use KeyDefault::{Derived, Required, Value};

const REQUIRED_WHEN_ENABLED: KeyDefault = Derived("none; **required when enabled**");
const LOG_FORMATS: &[&str] = &["human", "json"];

/// The top level: the sections.
pub const ROOT: Section = Section {
    name: "",
    keys: &[
        key(
            "udp",
            Kind::Section,
            Value("{}"),
            "The public UDP listener.",
        ),
        key(
            "api",
            Kind::Section,
            Value("{}"),
            "The management REST API.",
        ),
        key(
            "redis",
            Kind::Section,
            Value("{}"),
            "Sharing routes through Redis.",
        ),
        key(
            "agones",
            Kind::Section,
            Value("{}"),
            "Allocating game servers from Agones.",
        ),
        key(
            "relay",
            Kind::Section,
            Value("{}"),
            "Limits and timers of the relay.",
        ),
        key("log", Kind::Section, Value("{}"), "Logging."),
        key(
            "reload",
            Kind::Section,
            Value("{}"),
            "Following changes to the configuration file.",
        ),
        key(
            "health",
            Kind::Section,
            Value("{}"),
            "Active health checks of simple targets.",
        ),
        key(
            "routes",
            Kind::Routes,
            Value("[]"),
            "The routes known at start-up.",
        ),
        key(
            "quic_lb",
            Kind::QuicLbConfigs,
            Value("[]"),
            "Server-ID routing with QUIC-LB connection IDs.",
        ),
    ],
};

/// Section `udp`.
pub const UDP: Section = Section {
    name: "udp",
    keys: &[
        key(
            "port",
            Kind::Port,
            Value("7777"),
            "UDP port clients connect to.",
        ),
        key(
            "log_requests",
            Kind::Bool,
            Value("false"),
            "Log each new connection.",
        ),
        key(
            "bind",
            Kind::IpAddresses,
            Value("0.0.0.0"),
            "Address(es) to listen on.",
        ),
        key(
            "log_format",
            Kind::Choice(LOG_FORMATS),
            Derived("the value of `log.format`"),
            "Format of the connection logs.",
        ),
        key(
            "transparent",
            Kind::Bool,
            Value("false"),
            "Backends see each client's own address (IP_TRANSPARENT).",
        ),
        key(
            "receive_buffer",
            Kind::ByteSize,
            Value("8MiB"),
            "Kernel receive buffer of each listener socket (SO_RCVBUFFORCE when permitted, else SO_RCVBUF up to net.core.rmem_max); the size in effect is logged at start.",
        ),
        key(
            "batch_sends",
            Kind::Bool,
            Value("true"),
            "Send single client-bound datagrams of many clients in one sendmmsg.",
        ),
        key(
            "shards",
            Kind::IntegerOrAuto,
            Value("auto"),
            "Data-plane shards, 1-256, each a relay with its own sockets (listeners share the port through SO_REUSEPORT); `auto`: one per available core.",
        ),
    ],
};

/// Section `api`.
pub const API: Section = Section {
    name: "api",
    keys: &[
        key("port", Kind::Port, Value("8080"), "TCP port of the API."),
        key(
            "log_requests",
            Kind::Bool,
            Value("false"),
            "Log each API request.",
        ),
        key(
            "bind",
            Kind::IpAddress,
            Value("127.0.0.1"),
            "Address of the API.",
        ),
        key(
            "token",
            Kind::String,
            KeyDefault::None,
            "Bearer token requests must present.",
        ),
        key(
            "token_env",
            Kind::EnvVar,
            Value("PORTER_API_TOKEN"),
            "Environment variable holding the token.",
        ),
        key(
            "max_body_bytes",
            Kind::ByteSize,
            Value("64KiB"),
            "Largest request body.",
        ),
        key(
            "read_token",
            Kind::String,
            Derived("the value of `token`"),
            "Bearer token for reads that show sessions and routes.",
        ),
        key(
            "header_timeout",
            Kind::Duration,
            Value("10s"),
            "Time a client has to send a request's headers.",
        ),
        key(
            "idle_timeout",
            Kind::Duration,
            Value("60s"),
            "An idle keep-alive connection closes after this.",
        ),
        key(
            "max_connections",
            Kind::Integer,
            Value("256"),
            "API connections open at once.",
        ),
        key(
            "allowed_hosts",
            Kind::ServerNames,
            Derived("the bind address and `localhost`"),
            "Host header values accepted besides the bind address.",
        ),
    ],
};

/// Section `redis`.
pub const REDIS: Section = Section {
    name: "redis",
    keys: &[
        key(
            "enabled",
            Kind::Bool,
            Value("false"),
            "Share routes through Redis.",
        ),
        key(
            "address",
            Kind::Address,
            Value("localhost:6379"),
            "Redis server or URL.",
        ),
        key(
            "password",
            Kind::String,
            KeyDefault::None,
            "Password (AUTH).",
        ),
        key("db", Kind::Integer, Value("0"), "Database number."),
        key(
            "channel",
            Kind::String,
            Value("porter_routes"),
            "Pub/sub channel of route changes.",
        ),
        key(
            "directory",
            Kind::Bool,
            Value("false"),
            "Share connection IDs through Redis (the connection-ID directory).",
        ),
    ],
};

/// Section `agones`.
pub const AGONES: Section = Section {
    name: "agones",
    keys: &[
        key(
            "enabled",
            Kind::Bool,
            Value("false"),
            "Allocate game servers for agones routes.",
        ),
        key(
            "namespace",
            Kind::KubernetesName,
            Value("default"),
            "Namespace to allocate in.",
        ),
        key(
            "allocator_host",
            Kind::Address,
            REQUIRED_WHEN_ENABLED,
            "Allocator service (gRPC).",
        ),
        key(
            "allocator_client_cert",
            Kind::Path,
            REQUIRED_WHEN_ENABLED,
            "PEM client certificate.",
        ),
        key(
            "allocator_client_key",
            Kind::Path,
            REQUIRED_WHEN_ENABLED,
            "PEM client key.",
        ),
        key(
            "allocator_ca_cert",
            Kind::Path,
            REQUIRED_WHEN_ENABLED,
            "PEM CA of the allocator.",
        ),
        key(
            "tls_server_name",
            Kind::ServerName,
            Derived("the host of `allocator_host`"),
            "Name to verify the allocator's certificate against.",
        ),
        key(
            "insecure_skip_verify",
            Kind::Bool,
            Value("false"),
            "Skip certificate checks (tests).",
        ),
        key(
            "request_timeout",
            Kind::Duration,
            Value("2s"),
            "Deadline of one allocation.",
        ),
        key(
            "max_retries",
            Kind::Integer,
            Value("3"),
            "Retries after a failed allocation.",
        ),
        key(
            "player_list",
            Kind::String,
            Value("players"),
            "List connected players join.",
        ),
        key(
            "reserve_player_slot",
            Kind::Bool,
            Value("true"),
            "Reserve a slot when allocating.",
        ),
        key(
            "port_name",
            Kind::String,
            Derived("the server's first port"),
            "Game server port to route to.",
        ),
        key(
            "allocate_route_ttl",
            Kind::Duration,
            Value("10m"),
            "Life of a POST /allocate route.",
        ),
        key(
            "server_id_label",
            Kind::String,
            Derived("none"),
            "Label holding a game server's QUIC-LB server ID.",
        ),
    ],
};

/// Section `relay`.
pub const RELAY: Section = Section {
    name: "relay",
    keys: &[
        key(
            "idle_timeout",
            Kind::Duration,
            Value("120s"),
            "Idle sessions end after this.",
        ),
        key(
            "handshake_timeout",
            Kind::Duration,
            Value("5s"),
            "Time to settle a ClientHello.",
        ),
        key(
            "max_sessions",
            Kind::Integer,
            Value("100000"),
            "Sessions at once.",
        ),
        key(
            "max_cids_per_session",
            Kind::Integer,
            Value("8"),
            "Connection IDs per session.",
        ),
        key(
            "max_paths_per_session",
            Kind::Integer,
            Value("4"),
            "Client paths (addresses) per session.",
        ),
        key(
            "max_upstream_sockets",
            Kind::Integer,
            Value("100000"),
            "Upstream sockets (client paths) at once.",
        ),
        key(
            "path_idle_timeout",
            Kind::Duration,
            Value("5s"),
            "A path the client left ends after this.",
        ),
        key(
            "max_buffered_bytes_per_connection",
            Kind::ByteSize,
            Value("64KiB"),
            "Bytes held for one pending connection.",
        ),
        key(
            "max_buffered_bytes_total",
            Kind::ByteSize,
            Value("64MiB"),
            "Bytes held for all pending connections.",
        ),
        key(
            "max_pending_allocations",
            Kind::Integer,
            Value("1024"),
            "Allocations in flight.",
        ),
        key(
            "new_sessions_per_second",
            Kind::Integer,
            Value("10000"),
            "New-session rate.",
        ),
        key(
            "new_sessions_burst",
            Kind::Integer,
            Derived("the value of `new_sessions_per_second`"),
            "New-session burst.",
        ),
        key(
            "max_client_hello_bytes",
            Kind::ByteSize,
            Value("16KiB"),
            "Largest ClientHello.",
        ),
        key(
            "refusal",
            Kind::Choice(&["close", "drop"]),
            Value("close"),
            "What to do with a name without a route.",
        ),
        key(
            "refusal_replays_per_second",
            Kind::Integer,
            Value("100"),
            "Answers to replayed refused Initials per second.",
        ),
        key(
            "max_unvalidated_sessions",
            Kind::Integer,
            Value("10000"),
            "Sessions whose client has not used a backend-issued CID yet.",
        ),
        key(
            "max_sessions_per_address",
            Kind::Integer,
            Value("1024"),
            "Sessions per client address.",
        ),
        key(
            "max_sessions_per_ip",
            Kind::Integer,
            Value("4096"),
            "Sessions per client IP.",
        ),
        key(
            "allocations_per_second_per_fleet",
            Kind::Integer,
            Value("100"),
            "Agones allocations per fleet in any second.",
        ),
        key(
            "allocations_per_second_per_prefix",
            Kind::Integer,
            Value("10"),
            "Agones allocations per source /24 or /64 in any second.",
        ),
        key(
            "drain_period",
            Kind::Duration,
            Value("10s"),
            "How long to drain on shutdown.",
        ),
        key(
            "directory_lookups_per_second",
            Kind::Integer,
            Value("1000"),
            "Connection-ID directory lookups per second.",
        ),
        key(
            "directory_lookup_timeout",
            Kind::Duration,
            Value("250ms"),
            "How long a directory lookup may take.",
        ),
        key(
            "directory_max_pending_lookups",
            Kind::Integer,
            Value("1024"),
            "Directory lookups waiting at once.",
        ),
        key(
            "directory_max_held_datagrams",
            Kind::Integer,
            Value("8"),
            "Datagrams held per directory lookup.",
        ),
        key(
            "directory_max_held_bytes",
            Kind::ByteSize,
            Value("16KiB"),
            "Bytes held per directory lookup.",
        ),
    ],
};

/// Section `log`.
pub const LOG: Section = Section {
    name: "log",
    keys: &[
        key("level", Kind::LogLevel, Value("info"), "Level or filter."),
        key(
            "format",
            Kind::Choice(LOG_FORMATS),
            Value("human"),
            "How log lines look.",
        ),
    ],
};

/// What `reload.removed_sessions` may be.
const REMOVED_SESSIONS: &[&str] = &["drain", "close"];

/// Section `reload`: hot reload of the configuration file.
pub const RELOAD: Section = Section {
    name: "reload",
    keys: &[
        key(
            "watch",
            Kind::Bool,
            Value("true"),
            "Watch the file and apply its changes.",
        ),
        key(
            "interval",
            Kind::Duration,
            Value("1s"),
            "How often the file is looked at.",
        ),
        key(
            "removed_sessions",
            Kind::Choice(REMOVED_SESSIONS),
            Value("drain"),
            "Sessions of a removed route or target: drain or close.",
        ),
    ],
};

/// The keys of one route (each entry of `routes`).
pub const ROUTE: Section = Section {
    name: "routes",
    keys: &[
        key(
            "fqdn",
            Kind::RouteName,
            Required,
            "The server name(s) it answers to.",
        ),
        key(
            "type",
            Kind::Choice(&["simple", "agones"]),
            Required,
            "Fixed backends or an Agones fleet.",
        ),
        key(
            "target",
            Kind::RouteTarget,
            Required,
            "host:port (one or a list), or a fleet.",
        ),
        key(
            "policy",
            Kind::Choice(POLICIES),
            Derived("`round_robin`; `weighted` when `weights` is given"),
            "How a simple route picks a target for a new connection.",
        ),
        key(
            "weights",
            Kind::Weights,
            KeyDefault::None,
            "One positive weight per target, in order (simple routes).",
        ),
    ],
};

/// The balancing policies, as `routes[].policy` names them.
pub const POLICIES: &[&str] = &[
    "round_robin",
    "weighted",
    "least_sessions",
    "client_ip_hash",
];

/// Section `health`: active checks of the targets of simple routes.
pub const HEALTH: Section = Section {
    name: "health",
    keys: &[
        key(
            "enabled",
            Kind::Bool,
            Value("false"),
            "Probe every target of every simple route.",
        ),
        key(
            "interval",
            Kind::Duration,
            Value("2s"),
            "Time between two probes of a target.",
        ),
        key(
            "timeout",
            Kind::Duration,
            Value("1s"),
            "How long a probe waits for the answer.",
        ),
        key(
            "rise",
            Kind::Integer,
            Value("2"),
            "Answered probes in a row that make an unhealthy target healthy.",
        ),
        key(
            "fall",
            Kind::Integer,
            Value("3"),
            "Unanswered probes in a row that make a healthy target unhealthy.",
        ),
    ],
};

/// The keys of one QUIC-LB configuration (list `quic_lb`).
pub const QUIC_LB: Section = Section {
    name: "quic_lb",
    keys: &[
        key(
            "config_id",
            Kind::Integer,
            Required,
            "The config ID in the CIDs' first octet (0-6).",
        ),
        key(
            "server_id_len",
            Kind::Integer,
            Required,
            "Octets of server ID in each CID.",
        ),
        key(
            "nonce_len",
            Kind::Integer,
            Required,
            "Octets of nonce in each CID (at least 4).",
        ),
        key(
            "key",
            Kind::String,
            KeyDefault::None,
            "16-octet AES key in hex; none: plaintext.",
        ),
        key(
            "servers",
            Kind::QuicLbServers,
            Required,
            "Server ID (hex) to backend (ip:port).",
        ),
    ],
};

/// Every section with keys of its own, in the order of `docs/configuration.md`.
pub const SECTIONS: &[Section] = &[
    UDP, API, REDIS, AGONES, RELAY, LOG, RELOAD, HEALTH, ROUTE, QUIC_LB,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<crate::Config, String> {
        crate::from_str_with_env(text, "t.yaml", &|_| None).map_err(|e| e.to_string())
    }

    /// The checker accepts exactly the choices the tables list, and says so.
    #[test]
    fn choices_are_the_tables() {
        for section in [UDP, RELAY, LOG, RELOAD, HEALTH] {
            for key in section.keys {
                let Kind::Choice(choices) = key.kind else {
                    continue;
                };
                for choice in choices {
                    let text = format!("{}: {{{}: {choice}}}\n", section.name, key.name);
                    check(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                }
                let text = format!("{}: {{{}: bogus}}\n", section.name, key.name);
                let listed: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
                let err = check(&text).expect_err(&text);
                assert!(err.contains(&listed.join(", ")), "{text}: {err}");
            }
        }
        let err = check("routes: [{fqdn: a.test, type: bogus, target: x}]\n").unwrap_err();
        assert!(err.contains("`simple`, `agones`"), "{err}");
    }

    /// Every default the tables give passes its key's own check (the checker reads them
    /// with the same parsers), and no key is listed twice.
    #[test]
    fn defaults_parse_and_names_are_unique() {
        check("").expect("an empty file takes every default from the tables");
        for section in SECTIONS.iter().chain([&ROOT]) {
            let mut names = section.names();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), section.keys.len(), "{}", section.name);
        }
    }
}
