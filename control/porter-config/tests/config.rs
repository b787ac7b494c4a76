//! The configuration file as users write it: the original Go format, the example in the
//! repository, the extensions, and the messages for each kind of mistake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use porter_config::{
    self as config, Config, ConfigErrors, LogFormat, RouteKind, RouteName, RouteSpec, Shards,
    Target,
};

/// The original project's `config.yaml`, byte for byte.
const ORIGINAL: &str = r#"udp: {port: 7777, log_requests: true}
api: {port: 8080, log_requests: false}
redis: {enabled: false, address: "localhost:6379", password: "", db: 0, channel: "porter_routes"}
agones: {enabled: false, namespace: default, allocator_host: "agones-allocator.agones-system.svc:443", allocator_client_cert: /certs/client.crt, allocator_client_key: /certs/client.key, allocator_ca_cert: /certs/ca.crt}
routes:
  - {fqdn: game1.example.com, type: simple, target: "10.0.0.5:7777"}
  - {fqdn: game2.example.com, type: agones, target: my-fleet}
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    config::from_str_with_env(text, "test.yaml", &no_env)
}

/// Parses text that must fail; returns the rendered errors, one problem per line.
fn errors(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => {
            let rendered = errors.to_string();
            assert_eq!(rendered.lines().count(), errors.len(), "{rendered}");
            rendered
        }
    }
}

fn simple(name: &str, targets: &[&str]) -> RouteSpec {
    RouteSpec {
        name: RouteName::parse(name).unwrap(),
        kind: RouteKind::Simple {
            targets: targets.iter().map(|t| Target::parse(t).unwrap()).collect(),
            balance: Default::default(),
        },
    }
}

#[test]
fn original_format_loads_unchanged() {
    let config = parse(ORIGINAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.udp.port, 7777);
    assert!(config.udp.log_requests);
    assert_eq!(config.udp.binds, vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
    assert_eq!(config.api.port, 8080);
    assert!(!config.api.log_requests);
    assert_eq!(config.api.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(config.redis, None);
    assert_eq!(config.agones, None);
    assert_eq!(
        config.routes,
        vec![
            simple("game1.example.com", &["10.0.0.5:7777"]),
            RouteSpec {
                name: RouteName::parse("game2.example.com").unwrap(),
                kind: RouteKind::Agones {
                    fleet: "my-fleet".into()
                },
            },
        ]
    );
    // Allowed, but worth saying: the agones route cannot work while agones is disabled.
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert_eq!(config.warnings[0].path(), "routes[1].type");
    assert_eq!(config.warnings[0].line(), Some(7));
    // Everything not in the file has its default.
    assert_eq!(config.relay, config::RelayConfig::default());
    assert_eq!(config.log, config::LogConfig::default());
}

#[test]
fn original_format_with_both_integrations_enabled() {
    let text = ORIGINAL
        .replace("redis: {enabled: false", "redis: {enabled: true")
        .replace("agones: {enabled: false", "agones: {enabled: true");
    let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let redis = config.redis.expect("redis enabled");
    assert_eq!(redis.address.to_string(), "localhost:6379");
    assert_eq!(redis.password, None);
    assert_eq!(redis.channel, "porter_routes");
    assert_eq!(redis.url().expose(), "redis://localhost:6379/0");
    let agones = config.agones.expect("agones enabled");
    assert_eq!(agones.namespace, "default");
    assert_eq!(
        agones.allocator_host.to_string(),
        "agones-allocator.agones-system.svc:443"
    );
    assert_eq!(
        agones.allocator_client_cert,
        PathBuf::from("/certs/client.crt")
    );
    assert_eq!(
        agones.allocator_client_key,
        PathBuf::from("/certs/client.key")
    );
    assert_eq!(agones.allocator_ca_cert, PathBuf::from("/certs/ca.crt"));
    assert_eq!(agones.request_timeout, Duration::from_secs(2));
    assert_eq!(agones.max_retries, 3);
    assert_eq!(agones.player_list, "players");
    assert!(agones.reserve_player_slot);
    assert!(!agones.insecure_skip_verify);
    assert_eq!(agones.port_name, None);
    assert_eq!(agones.server_id_label, None);
    assert_eq!(agones.allocate_route_ttl, Duration::from_secs(600));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn example_config_in_the_repository_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config.yaml");
    let config = config::load_with_env(&path, &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.udp.listen_addrs(),
        vec!["127.0.0.1:4433".parse().unwrap()]
    );
    assert_eq!(config.api.listen_addr(), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.api.token, None);
    assert_eq!(config.redis, None);
    assert_eq!(config.agones, None);
    assert_eq!(
        config.routes,
        vec![
            simple("a.test", &["127.0.0.1:4434"]),
            simple("b.test", &["127.0.0.1:4435"]),
            simple("*.wild.test", &["127.0.0.1:4434"]),
        ]
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn every_extension_is_read() {
    let text = r#"
udp:
  port: 443
  bind: ["0.0.0.0", "::"]
  log_format: json
api:
  bind: "[::1]"
  port: 9000
  token: from-file
  token_env: MY_TOKEN
  max_body_bytes: 1MiB
redis:
  enabled: true
  address: "rediss://porter:s3cret@redis.internal:6380/2"
  channel: routes
agones:
  enabled: true
  namespace: games
  allocator_host: allocator.example
  allocator_client_cert: c.pem
  allocator_client_key: k.pem
  allocator_ca_cert: ca.pem
  tls_server_name: allocator.internal
  request_timeout: 500ms
  max_retries: 0
  player_list: lobby
  reserve_player_slot: false
  port_name: game
  allocate_route_ttl: 1h
relay:
  idle_timeout: 30
  handshake_timeout: 2s
  max_sessions: 10
  max_cids_per_session: 4
  max_paths_per_session: 2
  path_idle_timeout: 2s
  max_buffered_bytes_per_connection: 16KiB
  max_buffered_bytes_total: 1048576
  max_pending_allocations: 2
  new_sessions_per_second: 50
  max_client_hello_bytes: 8KiB
  refusal: drop
  max_unvalidated_sessions: 500
  max_sessions_per_address: 3
  max_sessions_per_ip: 30
  allocations_per_second_per_fleet: 0
  allocations_per_second_per_prefix: 2
  drain_period: 0s
log: {level: "warn,porter_core=debug", format: json}
routes:
  - fqdn: Multi.Example.COM.
    type: simple
    target: ["10.0.0.1:7000", "[2001:db8::1]:7000", "game.internal:7000"]
  - {fqdn: "*.example.com", type: simple, target: "10.0.0.9:7000"}
  - {fqdn: "*", type: agones, target: default-fleet}
"#;
    let config = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.udp.port, 443);
    assert_eq!(
        config.udp.binds,
        vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        ]
    );
    assert_eq!(config.udp.log_format, LogFormat::Json);
    assert_eq!(config.api.bind, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(config.api.token.as_ref().unwrap().expose(), "from-file");
    assert_eq!(config.api.token_env, "MY_TOKEN");
    assert_eq!(config.api.max_body_bytes, 1 << 20);
    let redis = config.redis.unwrap();
    assert!(redis.tls);
    assert_eq!(redis.db, 2);
    assert_eq!(redis.username.as_deref(), Some("porter"));
    assert_eq!(redis.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(redis.channel, "routes");
    assert_eq!(
        redis.url().expose(),
        "rediss://porter:s3cret@redis.internal:6380/2"
    );
    let agones = config.agones.unwrap();
    assert_eq!(agones.allocator_host.to_string(), "allocator.example:443");
    assert_eq!(
        agones.tls_server_name.as_deref(),
        Some("allocator.internal")
    );
    assert_eq!(agones.request_timeout, Duration::from_millis(500));
    assert_eq!(agones.max_retries, 0);
    assert_eq!(agones.player_list, "lobby");
    assert!(!agones.reserve_player_slot);
    assert_eq!(agones.port_name.as_deref(), Some("game"));
    assert_eq!(agones.allocate_route_ttl, Duration::from_secs(3600));
    let relay = &config.relay;
    assert_eq!(relay.idle_timeout, Duration::from_secs(30));
    assert_eq!(relay.handshake_timeout, Duration::from_secs(2));
    assert_eq!(relay.max_sessions, 10);
    assert_eq!(relay.max_cids_per_session, 4);
    assert_eq!(relay.max_paths_per_session, 2);
    assert_eq!(relay.path_idle_timeout, Duration::from_secs(2));
    assert_eq!(relay.max_buffered_bytes_per_connection, 16 << 10);
    assert_eq!(relay.max_buffered_bytes_total, 1 << 20);
    assert_eq!(relay.max_pending_allocations, 2);
    assert_eq!(relay.new_sessions_per_second, 50);
    assert_eq!(
        relay.new_sessions_burst, 50,
        "the burst defaults to the rate"
    );
    assert_eq!(relay.max_client_hello_bytes, 8 << 10);
    assert_eq!(relay.refusal, config::Refusal::Drop);
    assert_eq!(relay.drain_period, Duration::ZERO);
    assert_eq!(relay.max_unvalidated_sessions, 500);
    assert_eq!(
        (relay.max_sessions_per_address, relay.max_sessions_per_ip),
        (3, 30)
    );
    assert_eq!(
        (
            relay.allocations_per_second_per_fleet,
            relay.allocations_per_second_per_prefix
        ),
        (0, 2)
    );
    assert_eq!(config.log.level, "warn,porter_core=debug");
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(
        config.routes,
        vec![
            simple(
                "multi.example.com",
                &["10.0.0.1:7000", "[2001:db8::1]:7000", "game.internal:7000"]
            ),
            simple("*.example.com", &["10.0.0.9:7000"]),
            RouteSpec {
                name: RouteName::DEFAULT,
                kind: RouteKind::Agones {
                    fleet: "default-fleet".into()
                },
            },
        ]
    );
}

#[test]
fn defaults_of_an_empty_file() {
    for text in ["", "# only a comment\n", "---\n"] {
        let config = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(config, Config::default(), "{text:?}");
    }
    let d = Config::default();
    assert_eq!(d.udp.port, 7777);
    assert_eq!(d.api.port, 8080);
    assert_eq!(d.api.token_env, "PORTER_API_TOKEN");
    assert_eq!(d.api.max_body_bytes, 64 << 10);
    assert_eq!(d.relay.idle_timeout, Duration::from_secs(120));
    assert_eq!(d.relay.handshake_timeout, Duration::from_secs(5));
    assert_eq!(d.relay.max_sessions, 100_000);
    assert_eq!(d.relay.max_cids_per_session, 8);
    assert_eq!(d.relay.max_paths_per_session, 4);
    assert_eq!(d.relay.path_idle_timeout, Duration::from_secs(5));
    assert_eq!(d.relay.max_buffered_bytes_per_connection, 64 << 10);
    assert_eq!(d.relay.max_buffered_bytes_total, 64 << 20);
    assert_eq!(d.relay.max_pending_allocations, 1024);
    assert_eq!(d.relay.new_sessions_per_second, 10_000);
    assert_eq!(d.relay.new_sessions_burst, 10_000);
    assert_eq!(d.relay.max_unvalidated_sessions, 10_000);
    assert_eq!(d.relay.max_sessions_per_address, 1024);
    assert_eq!(d.relay.max_sessions_per_ip, 4096);
    assert_eq!(d.relay.allocations_per_second_per_fleet, 100);
    assert_eq!(d.relay.allocations_per_second_per_prefix, 10);
    assert_eq!(d.relay.max_client_hello_bytes, 16 << 10);
    assert_eq!(d.relay.refusal, config::Refusal::Close);
    assert_eq!(d.relay.drain_period, Duration::from_secs(10));
    assert_eq!(d.log.level, "info");
    assert!(d.reload.watch);
    assert_eq!(d.reload.interval, Duration::from_secs(1));
    assert_eq!(d.reload.removed_sessions, config::RemovedSessions::Drain);
}

// --- One test per kind of mistake: the message names the key and where it is. ---

#[test]
fn unknown_key_at_top_level() {
    let e = errors("udp: {port: 1}\nrouts: []\n");
    assert_eq!(
        e,
        "test.yaml:2:1: routs: unknown key `routs` (did you mean `routes`?); known keys at the \
         top level: udp, api, redis, agones, relay, log, reload, health, routes, quic_lb"
    );
    // Line 1, column 1 too (serde_yaml prints no position there; we still give one).
    let e = errors("bogus: 1\n");
    assert!(
        e.starts_with("test.yaml:1:1: bogus: unknown key `bogus`"),
        "{e}"
    );
}

#[test]
fn unknown_key_nested() {
    let e = errors("udp:\n  port: 7777\n  bnd: 0.0.0.0\n");
    assert!(
        e.starts_with("test.yaml:3:3: udp.bnd: unknown key `bnd` (did you mean `bind`?)"),
        "{e}"
    );
    let e = errors("routes:\n  - {fqdn: a.test, type: simple, target: \"1.2.3.4:5\", weight: 3}\n");
    assert!(
        e.starts_with("test.yaml:2:55: routes[0].weight: unknown key `weight`"),
        "{e}"
    );
    assert!(
        e.contains("known keys in `routes[0]`: fqdn, type, target"),
        "{e}"
    );
}

#[test]
fn bad_duration() {
    let e = errors("relay:\n  idle_timeout: 5 minutes\n");
    assert!(
        e.starts_with("test.yaml:2:17: relay.idle_timeout: \"5 minutes\" is not a duration"),
        "{e}"
    );
    let e = errors("agones: {request_timeout: 1.5}\n");
    assert!(
        e.contains("agones.request_timeout: 1.5 is not a duration"),
        "{e}"
    );
    assert!(e.contains("1500ms"), "{e}");
    let e = errors("relay: {idle_timeout: 0s}\n");
    assert!(
        e.contains("relay.idle_timeout: must be longer than zero"),
        "{e}"
    );
}

#[test]
fn listener_buffer_and_batching() {
    let c = parse("udp: {receive_buffer: 16MiB, batch_sends: false}\n").unwrap();
    assert_eq!((c.udp.receive_buffer, c.udp.batch_sends), (16 << 20, false));
    let d = parse("").unwrap();
    assert_eq!((d.udp.receive_buffer, d.udp.batch_sends), (8 << 20, true));
    let e = errors("udp:\n  receive_buffer: 2GiB\n");
    assert!(
        e.starts_with("test.yaml:2:19: udp.receive_buffer: 2GiB is more than the 1GiB"),
        "{e}"
    );
    let e = errors("udp: {receive_buffer: 1KiB}\n");
    assert!(e.contains("udp.receive_buffer: 1KiB is too small"), "{e}");
}

#[test]
fn shards_auto_or_a_count() {
    assert_eq!(parse("").unwrap().udp.shards, Shards::Auto);
    assert_eq!(
        parse("udp: {shards: auto}\n").unwrap().udp.shards,
        Shards::Auto
    );
    for n in [1, 2, 256] {
        let c = parse(&format!("udp: {{shards: {n}}}\n")).unwrap();
        assert_eq!(c.udp.shards, Shards::Count(NonZeroUsize::new(n).unwrap()));
    }
    // Each error names the key, its line and column, and what to write instead.
    let e = errors("udp:\n  shards: 0\n");
    assert_eq!(
        e,
        "test.yaml:2:11: udp.shards: 0 is too small: at least 1 shard \
         (`auto` runs one per available core)"
    );
    let e = errors("udp: {shards: -3}\n");
    assert!(
        e.starts_with("test.yaml:1:15: udp.shards: -3 is too small"),
        "{e}"
    );
    let e = errors("udp:\n  port: 7777\n  shards: 1000\n");
    assert_eq!(
        e,
        "test.yaml:3:11: udp.shards: 1000 is too many: at most 256 shards \
         (`auto` runs one per available core, up to 256)"
    );
    let e = errors("udp: {shards: 257}\n");
    assert!(e.contains("udp.shards: 257 is too many"), "{e}");
    let e = errors("udp:\n  shards: many\n");
    assert_eq!(
        e,
        "test.yaml:2:11: udp.shards: \"many\" is not a number of shards: \
         write 1-256, or `auto` for one per available core"
    );
    let e = errors("udp: {shards: Auto}\n");
    assert!(
        e.contains("udp.shards: \"Auto\" is not a number of shards"),
        "{e}"
    );
    let e = errors("udp: {shards: [1, 2]}\n");
    assert!(
        e.contains("udp.shards: expected a number of shards (1-256) or `auto`, found a list"),
        "{e}"
    );
    let e = errors("udp: {shards: 1.5}\n");
    assert!(e.contains("found the number 1.5"), "{e}");
}

#[test]
fn shards_resolve_to_the_cores_for_auto_within_1_to_256() {
    assert_eq!(Shards::Auto.resolve(4), 4);
    assert_eq!(Shards::Auto.resolve(0), 1);
    assert_eq!(Shards::Auto.resolve(1000), Shards::MAX);
    let three = Shards::Count(NonZeroUsize::new(3).unwrap());
    assert_eq!(three.resolve(64), 3);
    assert_eq!(three.resolve(1), 3);
}

#[test]
fn bad_port() {
    let e = errors("udp: {port: 70000}\n");
    assert_eq!(e, "test.yaml:1:13: udp.port: 70000 is not a port (0-65535)");
    let e = errors("api:\n  port: \"http\"\n");
    assert_eq!(
        e,
        "test.yaml:2:9: api.port: expected a port number (0-65535), found the string \"http\""
    );
    let e = errors("routes:\n  - {fqdn: a.test, type: simple, target: \"10.0.0.5:0\"}\n");
    assert!(
        e.contains("routes[0].target: \"10.0.0.5:0\" is not host:port"),
        "{e}"
    );
}

#[test]
fn bad_target() {
    let e = errors(
        "routes:\n  - {fqdn: a.test, type: simple, target: \"10.0.0.5:1\"}\n  - {fqdn: b.test, type: simple, target: \"10.0.0.5\"}\n",
    );
    assert!(
        e.starts_with("test.yaml:3:42: routes[1].target: \"10.0.0.5\" is not host:port"),
        "{e}"
    );
    let e =
        errors("routes:\n  - {fqdn: a.test, type: simple, target: [\"10.0.0.5:1\", \"::1:80\"]}\n");
    assert!(
        e.contains("routes[0].target[1]: \"::1:80\" is not host:port"),
        "{e}"
    );
    assert!(e.contains("brackets"), "{e}");
    let e = errors("routes:\n  - {fqdn: a.test, type: agones, target: [f1, f2]}\n");
    assert!(
        e.contains("routes[0].target: an agones route takes one fleet name"),
        "{e}"
    );
    let e = errors("routes:\n  - {fqdn: a.test, type: agones, target: My_Fleet}\n");
    assert!(e.contains("routes[0].target: not a fleet name"), "{e}");
}

#[test]
fn bad_fqdn() {
    let e = errors("routes:\n  - {fqdn: \"bad name.test\", type: simple, target: \"1.2.3.4:5\"}\n");
    assert!(
        e.starts_with(
            "test.yaml:2:12: routes[0].fqdn: \"bad name.test\" is not a valid route name"
        ),
        "{e}"
    );
    let e = errors("routes:\n  - {fqdn: -game.test, type: simple, target: \"1.2.3.4:5\"}\n");
    assert!(
        e.contains("routes[0].fqdn: \"-game.test\" is not a valid route name"),
        "{e}"
    );
    let long = format!("{}.test", "a".repeat(64));
    let e = errors(&format!(
        "routes:\n  - {{fqdn: {long}, type: simple, target: \"1.2.3.4:5\"}}\n"
    ));
    assert!(e.contains("at most 63"), "{e}");
}

#[test]
fn bad_wildcard() {
    let e = errors("routes:\n  - {fqdn: a.*.com, type: simple, target: \"1.2.3.4:5\"}\n");
    assert!(
        e.starts_with("test.yaml:2:12: routes[0].fqdn: \"a.*.com\" is not a valid route name: a wildcard must be the whole first label"),
        "{e}"
    );
    let e = errors("routes:\n  - {fqdn: \"*.*.com\", type: simple, target: \"1.2.3.4:5\"}\n");
    assert!(
        e.contains("routes[0].fqdn: \"*.*.com\" is not a valid route name"),
        "{e}"
    );
    // An unquoted leading `*` is YAML alias syntax: the message says to quote it.
    let e = errors("routes:\n  - {fqdn: *.example.com, type: simple, target: \"1.2.3.4:5\"}\n");
    assert!(e.contains("must be quoted"), "{e}");
    assert!(e.starts_with("test.yaml:2:"), "{e}");
}

#[test]
fn duplicate_fqdn() {
    let e = errors(
        "routes:\n  - {fqdn: a.test, type: simple, target: \"1.2.3.4:5\"}\n  - {fqdn: b.test, type: simple, target: \"1.2.3.4:5\"}\n  - {fqdn: A.Test., type: simple, target: \"1.2.3.4:6\"}\n",
    );
    assert_eq!(
        e,
        "test.yaml:4:12: routes[2].fqdn: duplicate route `a.test` (first defined at routes[0], line 2)"
    );
    let e = errors("routes:\n  - {fqdn: \"*\", type: simple, target: \"1.2.3.4:5\"}\n  - {fqdn: \"*\", type: agones, target: f}\n");
    assert!(e.contains("routes[1].fqdn: duplicate route `*`"), "{e}");
}

#[test]
fn missing_route_keys() {
    let e = errors("routes:\n  - {fqdn: a.test, type: simple}\n");
    assert_eq!(
        e,
        "test.yaml:2:6: routes[0].target: missing `target` (every route needs fqdn, type and target)"
    );
    let e = errors("routes:\n  - {fqdn: a.test, type: static, target: \"1.2.3.4:5\"}\n");
    assert!(
        e.contains("routes[0].type: \"static\" is not one of `simple`, `agones`"),
        "{e}"
    );
}

#[test]
fn agones_enabled_without_certs() {
    let e = errors("agones:\n  enabled: true\n  allocator_host: allocator:443\n  allocator_client_cert: \"\"\n");
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 3, "{e}");
    assert!(lines[0].starts_with("test.yaml:2:12: agones.allocator_client_cert: the client certificate (PEM) is required when agones.enabled is true"), "{e}");
    assert!(lines[1].contains("agones.allocator_client_key: "), "{e}");
    assert!(lines[2].contains("agones.allocator_ca_cert: "), "{e}");
    let e = errors("agones: {enabled: true, allocator_client_cert: a, allocator_client_key: b, allocator_ca_cert: c}\n");
    assert!(
        e.contains("agones.allocator_host: the allocator's host:port is required"),
        "{e}"
    );
}

#[test]
fn agones_server_id_label_needs_quic_lb() {
    let agones = "agones: {enabled: true, allocator_host: a, allocator_client_cert: a, \
                  allocator_client_key: b, allocator_ca_cert: c, server_id_label: porter.dev/sid}\n";
    let e = errors(agones);
    assert_eq!(
        e,
        "test.yaml:1:134: agones.server_id_label: server IDs are read from CIDs only with a \
         `quic_lb` configuration (its `servers` may be empty)"
    );
    let config = parse(&format!(
        "{agones}quic_lb:\n  - {{config_id: 0, server_id_len: 2, nonce_len: 6, servers: {{}}}}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let agones = config.agones.unwrap();
    assert_eq!(agones.server_id_label.as_deref(), Some("porter.dev/sid"));
    assert!(config.quic_lb[0].servers.is_empty());
    assert!(errors("agones: {server_id_label: \"\"}\n").contains("agones.server_id_label"));
}

#[test]
fn non_loopback_api_needs_a_token() {
    let text = "api: {bind: 0.0.0.0, port: 8080}\n";
    let e = errors(text);
    assert_eq!(
        e,
        "test.yaml:1:13: api.bind: 0.0.0.0 is not a loopback address, so the API needs a bearer \
         token: set api.token, or the environment variable PORTER_API_TOKEN"
    );
    // The token from the environment (looked up through the injected function) is enough.
    let env = |name: &str| (name == "PORTER_API_TOKEN").then(|| "t0ken".to_owned());
    let config = config::from_str_with_env(text, "test.yaml", &env).unwrap();
    assert_eq!(config.api.token.unwrap().expose(), "t0ken");
    // So is one in the file; and `token_env` names another variable.
    assert!(parse("api: {bind: \"::\", token: abc}\n").is_ok());
    let env = |name: &str| (name == "OTHER").then(|| "t".to_owned());
    let text = "api: {bind: 10.1.2.3, token_env: OTHER}\n";
    assert!(config::from_str_with_env(text, "test.yaml", &env).is_ok());
    // IPv4-mapped loopback is loopback.
    assert!(parse("api: {bind: \"::ffff:127.0.0.1\"}\n").is_ok());
    // An empty variable is no token.
    let env = |_: &str| Some(String::new());
    let e = config::from_str_with_env("api: {bind: 0.0.0.0}\n", "test.yaml", &env).unwrap_err();
    assert!(e.to_string().contains("needs a bearer token"), "{e}");
}

#[test]
fn missing_file() {
    let path = std::env::temp_dir().join("porter-config-test-does-not-exist.yaml");
    let e = config::load_with_env(&path, &no_env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot read the configuration file: no such file",
            path.display()
        )
    );
    assert_eq!(e.origin(), path.display().to_string());
}

#[test]
fn not_yaml() {
    let e = errors("udp: {port: 7777\napi: {}\n");
    assert!(e.starts_with("test.yaml:"), "{e}");
    let e = errors("- just\n- a list\n");
    assert!(e.contains("the file must be a mapping of sections"), "{e}");
    let e = errors("udp: 7777\n");
    assert_eq!(
        e,
        "test.yaml:1:1: udp: expected a mapping of keys to values, found the number 7777"
    );
}

#[test]
fn every_problem_in_a_file_is_reported() {
    let text = r#"udp: {port: 70000, bnd: "0.0.0.0"}
api: {bind: 0.0.0.0}
relay:
  idle_timeout: soon
  max_buffered_bytes_total: 64KB
  refusal: reject
log: {level: loud}
agones: {enabled: true}
extra: 1
routes:
  - {fqdn: a.*.com, type: simple, target: "10.0.0.5:7777"}
  - {fqdn: b.test, type: simple, target: "10.0.0.5"}
  - {fqdn: c.test, type: simple, target: "10.0.0.5:1"}
  - {fqdn: C.test, type: simple, target: "10.0.0.5:2"}
"#;
    let e = parse(text).unwrap_err();
    let rendered = e.to_string();
    let expected = [
        ("udp.port", 1),
        ("udp.bnd", 1),
        ("api.bind", 2),
        ("relay.idle_timeout", 4),
        ("relay.max_buffered_bytes_total", 5),
        ("relay.refusal", 6),
        ("log.level", 7),
        ("agones.allocator_host", 8),
        ("agones.allocator_client_cert", 8),
        ("agones.allocator_client_key", 8),
        ("agones.allocator_ca_cert", 8),
        ("extra", 9),
        ("routes[0].fqdn", 11),
        ("routes[1].target", 12),
        ("routes[3].fqdn", 14),
    ];
    let found: Vec<(&str, Option<usize>)> =
        e.problems().iter().map(|p| (p.path(), p.line())).collect();
    let expected: Vec<(&str, Option<usize>)> =
        expected.iter().map(|(p, l)| (*p, Some(*l))).collect();
    assert_eq!(found, expected, "{rendered}");
    assert_eq!(rendered.lines().count(), expected.len());
    for line in rendered.lines() {
        assert!(line.starts_with("test.yaml:"), "{line}");
    }
}

#[test]
fn wrong_shapes_are_reported_and_reading_goes_on() {
    // A list or mapping where a scalar belongs (and the reverse) must not derail the rest.
    let text = "udp: {port: [1, 2], bind: {a: b}}\napi: {port: {x: 1}}\nroutes: {fqdn: a}\nlog: {level: debug, format: xml}\n";
    let e = parse(text).unwrap_err();
    let paths: Vec<&str> = e.problems().iter().map(|p| p.path()).collect();
    assert_eq!(
        paths,
        ["udp.port", "udp.bind", "api.port", "routes", "log.format"],
        "{e}"
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let e = errors("udp:\n  port: 1\n  port: 2\n");
    assert_eq!(
        e,
        "test.yaml:3:3: udp.port: duplicate key `port` (first at line 2)"
    );
}

#[test]
fn values_are_checked_for_syntax_only() {
    // A name that does not resolve is fine here; start-up resolves it.
    let config =
        parse("routes:\n  - {fqdn: a.test, type: simple, target: \"backend.invalid:7000\"}\n")
            .unwrap();
    let RouteKind::Simple { targets, .. } = &config.routes[0].kind else {
        panic!("simple route expected");
    };
    assert_eq!(targets[0].to_string(), "backend.invalid:7000");
    assert!(targets[0].resolve().is_err());
}

/// Every line of a full file replaced, one at a time, by odd YAML: reading must return
/// (a config or errors), never panic, and never stop reporting the other lines.
#[test]
fn odd_input_never_panics() {
    let base = ORIGINAL.to_owned()
        + "relay: {idle_timeout: 1m, max_sessions: 5}\nlog:\n  level: info\n  format: json\n";
    let oddities = [
        "x: [1, [2, {a: b}]]",
        "{a: 1}",
        "- 1",
        "udp: &a {port: 1}\napi: *a",
        "? [1, 2]\n: 3",
        "1: 2",
        "routes: [~, 1, [a], {}]",
        "udp: {port: 99999999999999999999999999999999999999}",
        "relay: {idle_timeout: -5, max_sessions: -1, max_buffered_bytes_total: 1.5}",
        "api: !tag {port: 1}",
        "\"",
        "udp: {port: 1",
        "...",
        "---",
    ];
    let lines: Vec<&str> = base.lines().collect();
    for i in 0..lines.len() {
        for odd in oddities {
            let mut mutated = lines.clone();
            mutated[i] = odd;
            let text = mutated.join("\n");
            let _ = parse(&text);
        }
    }
}

#[test]
fn policies_weights_and_health_checks() {
    let config = porter_config::from_str_with_env(
        "health: {enabled: true, interval: 500ms, timeout: 300ms, rise: 1, fall: 2}\n\
         routes:\n\
         \x20 - {fqdn: a.test, type: simple, target: [\"127.0.0.1:1\", \"127.0.0.1:2\"], weights: [3, 1]}\n\
         \x20 - {fqdn: b.test, type: simple, target: \"127.0.0.1:3\", policy: client_ip_hash}\n",
        "t.yaml",
        &|_| None,
    )
    .unwrap();
    let health = config.health.expect("enabled");
    assert_eq!(health.interval, Duration::from_millis(500));
    assert_eq!((health.rise, health.fall), (1, 2));
    let RouteKind::Simple { balance, .. } = &config.routes[0].kind else {
        panic!("simple")
    };
    assert_eq!(balance.policy, porter_core::Policy::Weighted);
    assert_eq!(balance.weights, [3, 1]);
    let RouteKind::Simple { balance, .. } = &config.routes[1].kind else {
        panic!("simple")
    };
    assert_eq!(balance.policy, porter_core::Policy::ClientIpHash);
    assert!(porter_config::from_str_with_env("", "t.yaml", &|_| None)
        .unwrap()
        .health
        .is_none());
    for (text, message) in [
        (
            "routes: [{fqdn: a.test, type: simple, target: \"127.0.0.1:1\", weights: [1, 2]}]\n",
            "routes[0].weights: 2 weights for 1 targets",
        ),
        (
            "routes: [{fqdn: a.test, type: simple, target: \"127.0.0.1:1\", weights: [0]}]\n",
            "routes[0].weights: 0 is too small",
        ),
        (
            "routes: [{fqdn: a.test, type: simple, target: \"127.0.0.1:1\", policy: fastest}]\n",
            "routes[0].policy:",
        ),
        (
            "routes: [{fqdn: a.test, type: agones, target: f, policy: weighted}]\n",
            "routes[0].policy: `policy` is for simple routes",
        ),
        (
            "health: {enabled: true, interval: 1s, timeout: 2s}\n",
            "health.timeout: 2s is longer than health.interval",
        ),
        ("health: {rise: 0}\n", "health.rise: 0 is too small"),
    ] {
        let err = porter_config::from_str_with_env(text, "t.yaml", &|_| None)
            .expect_err(text)
            .to_string();
        assert!(err.contains(message), "{text}: {err}");
    }
}

/// Durations have a ceiling: a huge `idle_timeout` (which overflowed a clock reading on
/// the first session) is an error at its key, as is one just past 30 days.
#[test]
fn durations_longer_than_thirty_days_are_errors() {
    let text = "relay: {idle_timeout: 9300000000000000000}\n";
    let e = errors(text);
    assert!(e.contains("relay.idle_timeout"), "{e}");
    assert!(e.contains("at most 30 days"), "{e}");
    let e = errors("relay: {drain_period: 721h}\n");
    assert!(
        e.contains("relay.drain_period") && e.contains("at most 30 days"),
        "{e}"
    );
    assert!(parse("relay: {idle_timeout: 720h}\n").is_ok());
}

#[test]
fn quic_lb_configurations() {
    let c = parse(
        "quic_lb:\n\
         \x20 - {config_id: 0, server_id_len: 2, nonce_len: 6, servers: {\"0a01\": \"127.0.0.1:4433\"}}\n\
         \x20 - config_id: 2\n\
         \x20   server_id_len: 2\n\
         \x20   nonce_len: 14\n\
         \x20   key: 8f95f09245765f80256934e50c66207f\n\
         \x20   servers: {\"0001\": \"10.0.0.5:4433\", \"0002\": \"10.0.0.6:4433\"}\n",
    )
    .unwrap();
    assert_eq!(c.quic_lb.len(), 2);
    assert_eq!(c.quic_lb[0].config_id, 0);
    assert_eq!(c.quic_lb[0].key, None);
    assert_eq!(
        c.quic_lb[0].servers,
        vec![(vec![0x0a, 0x01], "127.0.0.1:4433".parse().unwrap())]
    );
    assert_eq!(c.quic_lb[1].key.map(|k| k[0]), Some(0x8f));
    assert_eq!(c.quic_lb[1].servers.len(), 2);
    assert!(parse("").unwrap().quic_lb.is_empty());
}

#[test]
fn quic_lb_mistakes_name_the_key() {
    for (text, needle) in [
        ("quic_lb: [{config_id: 7, server_id_len: 2, nonce_len: 6, servers: {}}]", "quic_lb[0].config_id"),
        ("quic_lb: [{config_id: 1, server_id_len: 2, nonce_len: 6, servers: {\"0a\": \"127.0.0.1:1\"}}]", "has 1 octets"),
        ("quic_lb: [{config_id: 1, server_id_len: 2, nonce_len: 6, key: abcd, servers: {}}]", "16 octets"),
        ("quic_lb: [{config_id: 1, server_id_len: 10, nonce_len: 10, servers: {}}]", "quic_lb[0].nonce_len"),
        ("quic_lb: [{config_id: 1, server_id_len: 2, nonce_len: 6}]", "missing `servers`"),
        ("quic_lb: [{config_id: 1, server_id_len: 2, nonce_len: 6, servers: {\"0a0b\": \"host:1\"}}]", "not an ip:port"),
        ("quic_lb: [{config_id: 1, server_id_len: 2, nonce_len: 6, servers: {}}, {config_id: 1, server_id_len: 2, nonce_len: 6, servers: {}}]", "duplicate config ID 1"),
    ] {
        let e = errors(&format!("{text}\n"));
        assert!(e.contains(needle), "{text}: {e}");
    }
}

#[test]
fn bad_admission_limits_name_their_key_and_place() {
    let e = errors("relay:\n  max_sessions_per_ip: 0\n");
    assert!(
        e.starts_with("test.yaml:2:24: relay.max_sessions_per_ip: 0 is too small (at least 1)"),
        "{e}"
    );
    let e = errors("relay: {max_unvalidated_sessions: many}\n");
    assert!(
        e.contains("relay.max_unvalidated_sessions: expected a whole number"),
        "{e}"
    );
    let e = errors("relay: {allocations_per_second_per_prefix: -1}\n");
    assert!(
        e.contains("relay.allocations_per_second_per_prefix: -1 is too small (at least 0)"),
        "{e}"
    );
    let e = errors("relay: {allocations_per_second_per_fleet: 5000000000}\n");
    assert!(
        e.contains("relay.allocations_per_second_per_fleet: the rate is too large"),
        "{e}"
    );
}

#[test]
fn the_connection_id_directory_needs_redis_and_its_bounds_are_read() {
    let text = "redis: {enabled: false, directory: true}\n";
    assert_eq!(
        errors(text),
        "test.yaml:1:36: redis.directory: the connection-ID directory lives in Redis: set redis.enabled too"
    );
    let config = parse(
        "redis: {enabled: true, directory: true}\n\
         relay: {directory_lookups_per_second: 50, directory_lookup_timeout: 100ms, \
         directory_max_pending_lookups: 7, directory_max_held_datagrams: 3, \
         directory_max_held_bytes: 4KiB}\n",
    )
    .unwrap();
    assert!(config.redis.expect("redis on").directory);
    let r = &config.relay;
    assert_eq!(
        (
            r.directory_lookups_per_second,
            r.directory_lookup_timeout,
            r.directory_max_pending_lookups,
            r.directory_max_held_datagrams,
            r.directory_max_held_bytes
        ),
        (50, Duration::from_millis(100), 7, 3, 4096)
    );
    assert!(errors("relay: {directory_max_held_bytes: 100}\n")
        .contains("relay.directory_max_held_bytes"));
}
