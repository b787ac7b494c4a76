//! From the located YAML tree to a validated [`Config`], collecting every problem.
//!
//! The walk never stops at a problem: a bad or missing value is recorded with its key path
//! and position, the default stands in for it, and the walk goes on, so one run of
//! `porter check` shows everything that is wrong. Checks between keys (duplicate routes, the
//! API token, Agones credentials) run on what could be read.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Problem;
use crate::keys::{self, Key, KeyDefault};
use crate::names::{check_dns_name, check_kubernetes_name, parse_route_name, RouteName};
use crate::target::Target;
use crate::types::{
    AgonesConfig, ApiConfig, Config, HealthConfig, LogConfig, LogFormat, QuicLbSpec, RedisConfig,
    Refusal, RelayConfig, ReloadConfig, RemovedSessions, RouteKind, RouteSpec, Secret, Shards,
    UdpConfig,
};
use crate::units::{format_byte_size, format_duration, parse_byte_size, parse_duration};
use crate::yaml::{Node, Span, Value};
use porter_core::{Balance, Policy};

/// Looks up an environment variable; injectable so tests need not touch the process
/// environment.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Checks the whole document. `Err` holds every problem found (at least one).
pub(crate) fn check(root: &Node, env: Env<'_>) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
        warnings: Vec::new(),
        env,
    };
    let config = c.config(root);
    if c.problems.is_empty() {
        Ok(Config {
            warnings: c.warnings,
            ..config
        })
    } else {
        Err(c.problems)
    }
}

struct Checker<'e> {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    env: Env<'e>,
}

/// A mapping whose keys were checked against the known ones.
struct Section<'n> {
    /// Key path of the mapping: empty at the top, `udp`, `routes[1]`.
    path: String,
    /// The keys it may have.
    table: &'static keys::Section,
    /// Where the mapping is: its key in the parent, or its first entry.
    span: Option<Span>,
    fields: Vec<Field<'n>>,
}

#[derive(Clone, Copy)]
struct Field<'n> {
    key: &'n str,
    key_span: Option<Span>,
    node: &'n Node,
}

impl Field<'_> {
    /// Where to point at for a problem with the value: the value itself if it is a scalar,
    /// else its key.
    fn span(&self) -> Option<Span> {
        match self.node.value {
            Value::Seq(_) | Value::Map(_) => self.key_span.or(self.node.span),
            _ => self.node.span.or(self.key_span),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.node.value, Value::Null)
    }
}

impl<'n> Section<'n> {
    fn get(&self, key: &str) -> Option<Field<'n>> {
        self.fields.iter().find(|f| f.key == key).copied()
    }

    /// The field, unless absent or null (both mean "use the default").
    fn value(&self, key: &str) -> Option<Field<'n>> {
        self.get(key).filter(|f| !f.is_null())
    }

    fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The table's entry for `key`; the checker reads no key the table lacks.
    fn key(&self, key: &str) -> &'static Key {
        self.table.key(key).unwrap_or_else(|| {
            panic!(
                "the checker reads `{key}`, which keys::{} does not list",
                self.table.name
            )
        })
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Checker<'_> {
    fn error(&mut self, path: impl Into<String>, span: Option<Span>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, span, message));
    }

    fn warn(&mut self, path: impl Into<String>, span: Option<Span>, message: impl Into<String>) {
        self.warnings.push(Problem::new(path, span, message));
    }

    /// Reads a mapping, reporting keys that are unknown, duplicated or not strings. A null
    /// value is an empty mapping (all defaults); anything else is reported and treated so.
    fn section<'n>(
        &mut self,
        node: &'n Node,
        path: String,
        at: Option<Span>,
        table: &'static keys::Section,
    ) -> Section<'n> {
        let known = &table.names()[..];
        let mut section = Section {
            path,
            table,
            span: at.or(node.span),
            fields: Vec::new(),
        };
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => return section,
            other => {
                let what = if section.path.is_empty() {
                    "the file must be a mapping of sections (udp, api, routes, ...)".to_owned()
                } else {
                    "expected a mapping of keys to values".to_owned()
                };
                let span = at.or(node.span);
                self.error(
                    &section.path,
                    span,
                    format!("{what}, found {}", other.describe()),
                );
                return section;
            }
        };
        for (key, value) in entries {
            let Value::Str(name) = &key.value else {
                self.error(
                    &section.path,
                    key.span,
                    format!("keys must be strings, found {}", key.value.describe()),
                );
                continue;
            };
            let key_path = section.path_of(name);
            if !known.contains(&name.as_str()) {
                let mut message = format!("unknown key `{name}`");
                if let Some(close) = closest(name, known) {
                    message.push_str(&format!(" (did you mean `{close}`?)"));
                }
                let place = if section.path.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in `{}`", section.path)
                };
                message.push_str(&format!("; known keys {place}: {}", known.join(", ")));
                self.error(key_path, key.span, message);
                continue;
            }
            if let Some(first) = section.get(name) {
                let first_at = first
                    .key_span
                    .map_or_else(String::new, |s| format!(" (first at line {})", s.line));
                self.error(
                    key_path,
                    key.span,
                    format!("duplicate key `{name}`{first_at}"),
                );
                continue;
            }
            section.fields.push(Field {
                key: name,
                key_span: key.span,
                node: value,
            });
        }
        section
    }

    /// A nested section under `key` of `parent`.
    fn subsection<'n>(
        &mut self,
        parent: &Section<'n>,
        key: &str,
        table: &'static keys::Section,
    ) -> Section<'n> {
        let path = parent.path_of(key);
        match parent.get(key) {
            Some(field) => self.section(field.node, path, field.key_span, table),
            None => Section {
                path,
                table,
                span: None,
                fields: Vec::new(),
            },
        }
    }

    /// Reads `key` with `parse`; `None` if absent, null, or bad (then reported).
    fn get<T>(
        &mut self,
        section: &Section<'_>,
        key: &str,
        parse: impl FnOnce(&Node) -> Result<T, String>,
    ) -> Option<T> {
        let _ = section.key(key);
        let field = section.value(key)?;
        match parse(field.node) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(section.path_of(key), field.span(), message);
                None
            }
        }
    }

    /// Reads `key` with `parse`; if absent, null or bad (then reported), the default from
    /// the table, read with the same `parse`.
    fn read<T>(
        &mut self,
        section: &Section<'_>,
        key: &str,
        parse: impl Fn(&Node) -> Result<T, String>,
    ) -> T {
        if let Some(value) = self.get(section, key, &parse) {
            return value;
        }
        let entry = section.key(key);
        let KeyDefault::Value(text) = entry.default else {
            panic!(
                "keys::{}.{key} has no default value to read",
                section.table.name
            )
        };
        let node = crate::yaml::parse(text).expect("a default in the key tables is YAML");
        parse(&node).unwrap_or_else(|why| {
            panic!(
                "the default of {}.{key} ({text}) does not pass its own check: {why}",
                section.table.name
            )
        })
    }

    fn config(&mut self, root: &Node) -> Config {
        let top = self.section(root, String::new(), None, &keys::ROOT);
        let log = self.log(&top);
        let udp = self.udp(&top, log.format);
        let api = self.api(&top);
        let redis = self.redis(&top);
        let (agones, agones_enabled) = self.agones(&top);
        let relay = self.relay(&top);
        let reload = self.reload(&top);
        let health = self.health(&top);
        let routes = self.routes(&top, agones_enabled);
        let quic_lb = self.quic_lb(&top);
        Config {
            health,
            udp,
            api,
            redis,
            agones,
            relay,
            log,
            reload,
            routes,
            quic_lb,
            warnings: Vec::new(),
        }
    }

    fn health(&mut self, top: &Section<'_>) -> Option<HealthConfig> {
        let s = self.subsection(top, "health", &keys::HEALTH);
        let enabled = self.read(&s, "enabled", boolean);
        let interval = self.read(&s, "interval", duration_positive);
        let timeout = self.read(&s, "timeout", duration_positive);
        let count = |n: &Node| {
            integer_at_least(n, 1)
                .and_then(|v| u32::try_from(v).map_err(|_| format!("{v} is too large")))
        };
        let rise = self.read(&s, "rise", count);
        let fall = self.read(&s, "fall", count);
        if timeout > interval {
            self.error(
                s.path_of("timeout"),
                s.value("timeout").and_then(|f| f.span()),
                format!(
                    "{} is longer than health.interval ({}): a probe must end before the next",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            );
        }
        enabled.then_some(HealthConfig {
            interval,
            timeout,
            rise,
            fall,
        })
    }

    fn quic_lb(&mut self, top: &Section<'_>) -> Vec<QuicLbSpec> {
        let Some(field) = top.value("quic_lb") else {
            return Vec::new();
        };
        let Value::Seq(items) = &field.node.value else {
            self.error(
                "quic_lb",
                field.span(),
                format!(
                    "expected a list of QUIC-LB configurations (- {{config_id: ..., server_id_len: ..., nonce_len: ..., servers: ...}}), found {}",
                    field.node.value.describe()
                ),
            );
            return Vec::new();
        };
        let mut specs: Vec<QuicLbSpec> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("quic_lb[{i}]");
            let at = item.span.or(field.key_span);
            let s = self.section(item, path, at, &keys::QUIC_LB);
            for key in ["config_id", "server_id_len", "nonce_len", "servers"] {
                if s.value(key).is_none() {
                    self.error(s.path_of(key), s.span, format!("missing `{key}`"));
                }
            }
            let config_id = self.get(&s, "config_id", |n| {
                let id = integer_at_least(n, 0)?;
                u8::try_from(id)
                    .ok()
                    .filter(|id| *id < 7)
                    .ok_or_else(|| format!("{id} is not a config ID (0 to 6; 7 means unroutable)"))
            });
            let server_id_len = self.get(&s, "server_id_len", |n| integer_at_least(n, 1));
            let nonce_len = self.get(&s, "nonce_len", |n| integer_at_least(n, 4));
            let key = self.get(&s, "key", |n| {
                let text = string(n)?;
                let bytes = hex_bytes(&text)?;
                <[u8; 16]>::try_from(bytes)
                    .map_err(|b| format!("a key is 16 octets (32 hex digits), not {}", b.len()))
            });
            let servers = self.get(&s, "servers", quic_lb_servers);
            let (Some(config_id), Some(server_id_len), Some(nonce_len), Some(servers)) =
                (config_id, server_id_len, nonce_len, servers)
            else {
                continue;
            };
            let key_value = key.map(porter_core::quic_lb::Key::new);
            if let Err(e) =
                porter_core::quic_lb::Config::new(config_id, server_id_len, nonce_len, key_value)
            {
                self.error(s.path_of("nonce_len"), s.span, e.to_string());
                continue;
            }
            if let Some((id, _)) = servers.iter().find(|(id, _)| id.len() != server_id_len) {
                self.error(
                    s.path_of("servers"),
                    s.value("servers").and_then(|f| f.span()),
                    format!(
                        "server ID {} has {} octets, the configuration {server_id_len}",
                        hex_text(id),
                        id.len()
                    ),
                );
                continue;
            }
            if specs.iter().any(|c| c.config_id == config_id) {
                self.error(
                    s.path_of("config_id"),
                    s.value("config_id").and_then(|f| f.span()),
                    format!("duplicate config ID {config_id}"),
                );
                continue;
            }
            specs.push(QuicLbSpec {
                config_id,
                server_id_len,
                nonce_len,
                key,
                servers,
            });
        }
        specs
    }

    fn log(&mut self, top: &Section<'_>) -> LogConfig {
        let s = self.subsection(top, "log", &keys::LOG);
        LogConfig {
            level: self.read(&s, "level", log_level),
            format: self.read(&s, "format", log_format),
        }
    }

    fn reload(&mut self, top: &Section<'_>) -> ReloadConfig {
        let s = self.subsection(top, "reload", &keys::RELOAD);
        ReloadConfig {
            watch: self.read(&s, "watch", boolean),
            interval: self.read(&s, "interval", duration_positive),
            removed_sessions: self.read(&s, "removed_sessions", |n| {
                one_of(
                    n,
                    &[
                        ("drain", RemovedSessions::Drain),
                        ("close", RemovedSessions::Close),
                    ],
                )
            }),
        }
    }

    fn udp(&mut self, top: &Section<'_>, default_format: LogFormat) -> UdpConfig {
        let s = self.subsection(top, "udp", &keys::UDP);
        let defaults = UdpConfig::default();
        let binds = match s.value("bind") {
            Some(field) => self.bind_list(&s.path_of("bind"), field),
            None => defaults.binds,
        };
        UdpConfig {
            port: self.read(&s, "port", port),
            binds,
            log_requests: self.read(&s, "log_requests", boolean),
            log_format: self
                .get(&s, "log_format", log_format)
                .unwrap_or(default_format),
            transparent: self.read(&s, "transparent", boolean),
            receive_buffer: self.read(&s, "receive_buffer", |n| {
                let bytes = byte_size_at_least(n, 64 * 1024)?;
                if bytes > 1 << 30 {
                    return Err(format!(
                        "{} is more than the 1GiB a listener may ask for",
                        format_byte_size(bytes as u64)
                    ));
                }
                Ok(bytes)
            }),
            batch_sends: self.read(&s, "batch_sends", boolean),
            shards: self.read(&s, "shards", shards),
        }
    }

    /// `udp.bind`: one address or a list of them (one socket each).
    fn bind_list(&mut self, path: &str, field: Field<'_>) -> Vec<IpAddr> {
        let fallback = UdpConfig::default().binds;
        let Value::Seq(items) = &field.node.value else {
            return match ip_address(field.node) {
                Ok(ip) => vec![ip],
                Err(message) => {
                    self.error(path, field.span(), message);
                    fallback
                }
            };
        };
        if items.is_empty() {
            self.error(path, field.span(), "the list of addresses is empty");
            return fallback;
        }
        let mut binds: Vec<IpAddr> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match ip_address(item) {
                Ok(ip) if binds.contains(&ip) => {
                    self.error(item_path, item.span, format!("{ip} is listed twice"));
                }
                Ok(ip) => binds.push(ip),
                Err(message) => self.error(item_path, item.span.or(field.key_span), message),
            }
        }
        if binds.is_empty() {
            fallback
        } else {
            binds
        }
    }

    fn api(&mut self, top: &Section<'_>) -> ApiConfig {
        let s = self.subsection(top, "api", &keys::API);
        let bind = self.read(&s, "bind", ip_address);
        let token_env = self.read(&s, "token_env", env_var_name);
        let file_token = self.get(&s, "token", |n| {
            let token = string(n)?;
            if token.is_empty() {
                Err(
                    "the token is empty (remove the key to take it from the environment)"
                        .to_owned(),
                )
            } else {
                Ok(Secret::new(token))
            }
        });
        let token_given = s.value("token").is_some();
        let token = file_token.or_else(|| {
            if token_given {
                None // a bad `token` is already reported; do not fall back silently
            } else {
                (self.env)(&token_env)
                    .filter(|t| !t.is_empty())
                    .map(Secret::new)
            }
        });
        if !bind.to_canonical().is_loopback() && token.is_none() && !token_given {
            let field = s.value("bind");
            self.error(
                s.path_of("bind"),
                field.and_then(|f| f.span()).or(s.span),
                format!(
                    "{bind} is not a loopback address, so the API needs a bearer token: \
                     set api.token, or the environment variable {token_env}"
                ),
            );
        }
        let max_body_bytes = self.read(&s, "max_body_bytes", |n| byte_size_at_least(n, 1));
        let read_token = self.get(&s, "read_token", |n| {
            let token = string(n)?;
            if token.is_empty() {
                Err("the read token is empty (remove the key)".to_owned())
            } else {
                Ok(Secret::new(token))
            }
        });
        let header_timeout = self.read(&s, "header_timeout", duration_positive);
        let idle_timeout = self.read(&s, "idle_timeout", duration_positive);
        let max_connections = self.read(&s, "max_connections", |n| integer_at_least(n, 1));
        let allowed_hosts = self
            .get(&s, "allowed_hosts", |n| {
                let items: Vec<&Node> = match &n.value {
                    Value::Seq(items) => items.iter().collect(),
                    _ => vec![n],
                };
                items
                    .into_iter()
                    .map(|item| {
                        let name = string(item)?.trim().to_ascii_lowercase();
                        let bare = name.trim_start_matches('[').trim_end_matches(']');
                        if bare.parse::<IpAddr>().is_err() {
                            check_dns_name(&name)
                                .map_err(|why| format!("{name:?} is not a host name: {why}"))?;
                        }
                        Ok(bare.to_owned())
                    })
                    .collect::<Result<Vec<String>, String>>()
            })
            .unwrap_or_default();
        ApiConfig {
            port: self.read(&s, "port", port),
            bind,
            log_requests: self.read(&s, "log_requests", boolean),
            token,
            token_env,
            max_body_bytes,
            read_token,
            header_timeout,
            idle_timeout,
            max_connections,
            allowed_hosts,
        }
    }

    fn redis(&mut self, top: &Section<'_>) -> Option<RedisConfig> {
        let s = self.subsection(top, "redis", &keys::REDIS);
        let enabled = self.read(&s, "enabled", boolean);
        let address = self.read(&s, "address", |n| redis_address(&string(n)?));
        let password = self
            .get(&s, "password", string)
            .filter(|p| !p.is_empty())
            .map(Secret::new);
        let db = self.get(&s, "db", |n| {
            u32::try_from(integer_at_least(n, 0)?)
                .map_err(|_| "the database number is too large".to_owned())
        });
        let channel = self.read(&s, "channel", non_empty_string);
        let directory = self.read(&s, "directory", boolean);
        if directory && !enabled {
            self.error(
                s.path_of("directory"),
                s.value("directory").and_then(|f| f.span()),
                "the connection-ID directory lives in Redis: set redis.enabled too",
            );
        }
        if let (Some(_), Some(_)) = (&password, &address.password) {
            self.error(
                s.path_of("password"),
                s.value("password").and_then(|f| f.span()),
                "redis.address already holds a password; give it in one place only",
            );
        }
        if let (Some(db), Some(url_db)) = (db, address.db) {
            if db != url_db {
                self.error(
                    s.path_of("db"),
                    s.value("db").and_then(|f| f.span()),
                    format!("redis.address selects database {url_db}, redis.db says {db}"),
                );
            }
        }
        enabled.then(|| RedisConfig {
            address: address.target,
            tls: address.tls,
            username: address.username,
            password: address.password.or(password),
            db: address.db.or(db).unwrap_or(0),
            channel,
            directory,
        })
    }

    /// Returns the section when enabled, and whether it is enabled.
    fn agones(&mut self, top: &Section<'_>) -> (Option<AgonesConfig>, bool) {
        let s = self.subsection(top, "agones", &keys::AGONES);
        let enabled = self.read(&s, "enabled", boolean);
        let namespace = self.read(&s, "namespace", |n| {
            let name = string(n)?;
            check_kubernetes_name(&name, false)?;
            Ok(name)
        });
        let host = self.get(&s, "allocator_host", |n| {
            let text = string(n)?;
            if text.is_empty() {
                return Ok(None);
            }
            Ok(Some(Target::parse_with_default_port(&text, 443)?))
        });
        let path = |n: &Node| {
            let text = string(n)?;
            Ok((!text.is_empty()).then(|| PathBuf::from(text)))
        };
        let cert = self.get(&s, "allocator_client_cert", path).flatten();
        let key = self.get(&s, "allocator_client_key", path).flatten();
        let ca = self.get(&s, "allocator_ca_cert", path).flatten();
        let tls_server_name = self.get(&s, "tls_server_name", |n| {
            let name = string(n)?.to_ascii_lowercase();
            if name.parse::<IpAddr>().is_err() {
                check_dns_name(&name)
                    .map_err(|why| format!("{name:?} is not a server name: {why}"))?;
            }
            Ok(name)
        });
        let insecure = self.read(&s, "insecure_skip_verify", boolean);
        let request_timeout = self.read(&s, "request_timeout", duration_positive);
        let max_retries = self.read(&s, "max_retries", |n| {
            u32::try_from(integer_at_least(n, 0)?).map_err(|_| "too many retries".to_owned())
        });
        let player_list = self.read(&s, "player_list", non_empty_string);
        let reserve_player_slot = self.read(&s, "reserve_player_slot", boolean);
        let port_name = self.get(&s, "port_name", non_empty_string);
        let server_id_label = self.get(&s, "server_id_label", non_empty_string);
        let allocate_route_ttl = self.read(&s, "allocate_route_ttl", duration_positive);

        if !enabled {
            return (None, false);
        }
        if server_id_label.is_some() && top.value("quic_lb").is_none() {
            self.error(
                s.path_of("server_id_label"),
                s.value("server_id_label").and_then(|f| f.span()),
                "server IDs are read from CIDs only with a `quic_lb` configuration (its \
                 `servers` may be empty)",
            );
        }
        let enabled_at = s.value("enabled").and_then(|f| f.span());
        let mut required = |key: &str, present: bool, what: &str| {
            // A present but bad value is already reported.
            if !present
                && s.value(key)
                    .is_none_or(|f| matches!(&f.node.value, Value::Str(t) if t.is_empty()))
            {
                self.error(
                    s.path_of(key),
                    enabled_at,
                    format!("{what} is required when agones.enabled is true"),
                );
            }
        };
        required(
            "allocator_host",
            matches!(host, Some(Some(_))),
            "the allocator's host:port",
        );
        required(
            "allocator_client_cert",
            cert.is_some(),
            "the client certificate (PEM)",
        );
        required(
            "allocator_client_key",
            key.is_some(),
            "the client certificate's key (PEM)",
        );
        required(
            "allocator_ca_cert",
            ca.is_some(),
            "the CA certificate (PEM)",
        );
        if insecure {
            self.warn(
                s.path_of("insecure_skip_verify"),
                s.value("insecure_skip_verify").and_then(|f| f.span()),
                "the allocator's certificate is not verified; use this only in tests",
            );
        }
        let (Some(Some(allocator_host)), Some(cert), Some(key), Some(ca)) = (host, cert, key, ca)
        else {
            return (None, true);
        };
        let config = AgonesConfig {
            namespace,
            allocator_host,
            allocator_client_cert: cert,
            allocator_client_key: key,
            allocator_ca_cert: ca,
            tls_server_name,
            insecure_skip_verify: insecure,
            request_timeout,
            max_retries,
            player_list,
            reserve_player_slot,
            port_name,
            allocate_route_ttl,
            server_id_label,
        };
        (Some(config), true)
    }

    fn relay(&mut self, top: &Section<'_>) -> RelayConfig {
        let s = self.subsection(top, "relay", &keys::RELAY);
        let idle_timeout = self.read(&s, "idle_timeout", duration_positive);
        let handshake_timeout = self.read(&s, "handshake_timeout", duration_positive);
        let max_sessions = self.read(&s, "max_sessions", |n| integer_at_least(n, 1));
        let max_cids_per_session =
            self.read(&s, "max_cids_per_session", |n| integer_at_least(n, 1));
        let max_paths_per_session =
            self.read(&s, "max_paths_per_session", |n| integer_at_least(n, 1));
        let max_upstream_sockets =
            self.read(&s, "max_upstream_sockets", |n| integer_at_least(n, 1));
        let path_idle_timeout = self.read(&s, "path_idle_timeout", duration_positive);
        // One Initial datagram is at least 1200 bytes (RFC 9000 §14.1).
        let per_connection = self.read(&s, "max_buffered_bytes_per_connection", |n| {
            byte_size_at_least(n, 1200)
        });
        let total = self.read(&s, "max_buffered_bytes_total", |n| {
            byte_size_at_least(n, 1200)
        });
        let max_pending_allocations =
            self.read(&s, "max_pending_allocations", |n| integer_at_least(n, 1));
        let rate = self.read(&s, "new_sessions_per_second", |n| {
            u32::try_from(integer_at_least(n, 1)?).map_err(|_| "the rate is too large".to_owned())
        });
        let burst = self.get(&s, "new_sessions_burst", |n| {
            u32::try_from(integer_at_least(n, 1)?).map_err(|_| "the burst is too large".to_owned())
        });
        // A TLS handshake message is at most 2^24 - 1 bytes long (RFC 8446 §4).
        let max_client_hello_bytes = self.read(&s, "max_client_hello_bytes", |n| {
            let size = byte_size_at_least(n, 256)?;
            if size > (1 << 24) - 1 {
                return Err(format!(
                    "{} is larger than any TLS handshake message (16MiB - 1)",
                    format_byte_size(size as u64)
                ));
            }
            Ok(size)
        });
        let refusal = self.read(&s, "refusal", |n| {
            one_of(n, &[("close", Refusal::Close), ("drop", Refusal::Drop)])
        });
        let refusal_replays_per_second = self.read(&s, "refusal_replays_per_second", |n| {
            u32::try_from(integer_at_least(n, 1)?).map_err(|_| "the rate is too large".to_owned())
        });
        let max_unvalidated_sessions =
            self.read(&s, "max_unvalidated_sessions", |n| integer_at_least(n, 1));
        let max_sessions_per_address =
            self.read(&s, "max_sessions_per_address", |n| integer_at_least(n, 1));
        let max_sessions_per_ip = self.read(&s, "max_sessions_per_ip", |n| integer_at_least(n, 1));
        let allocation_rate = |n: &_| {
            u32::try_from(integer_at_least(n, 0)?).map_err(|_| "the rate is too large".to_owned())
        };
        let allocations_per_second_per_fleet =
            self.read(&s, "allocations_per_second_per_fleet", allocation_rate);
        let allocations_per_second_per_prefix =
            self.read(&s, "allocations_per_second_per_prefix", allocation_rate);
        let drain_period = self.read(&s, "drain_period", duration);
        let directory_lookups_per_second = self.read(&s, "directory_lookups_per_second", |n| {
            u32::try_from(integer_at_least(n, 1)?).map_err(|_| "the rate is too large".to_owned())
        });
        let directory_lookup_timeout = self.read(&s, "directory_lookup_timeout", duration_positive);
        let directory_max_pending_lookups = self.read(&s, "directory_max_pending_lookups", |n| {
            integer_at_least(n, 1)
        });
        let directory_max_held_datagrams = self.read(&s, "directory_max_held_datagrams", |n| {
            integer_at_least(n, 1)
        });
        // One full-size datagram at least (RFC 9000 §14.1: clients send up to 1200 bytes
        // before the path is validated, and mostly that much or more afterwards).
        let directory_max_held_bytes = self.read(&s, "directory_max_held_bytes", |n| {
            byte_size_at_least(n, 1200)
        });

        if handshake_timeout > idle_timeout {
            self.error(
                s.path_of("handshake_timeout"),
                s.value("handshake_timeout")
                    .or_else(|| s.value("idle_timeout"))
                    .and_then(|f| f.span()),
                format!(
                    "{} is longer than relay.idle_timeout ({})",
                    format_duration(handshake_timeout),
                    format_duration(idle_timeout)
                ),
            );
        }
        if total < per_connection {
            self.error(
                s.path_of("max_buffered_bytes_total"),
                s.value("max_buffered_bytes_total")
                    .or_else(|| s.value("max_buffered_bytes_per_connection"))
                    .and_then(|f| f.span()),
                format!(
                    "{} is less than relay.max_buffered_bytes_per_connection ({})",
                    format_byte_size(total as u64),
                    format_byte_size(per_connection as u64)
                ),
            );
        }
        let new_sessions_per_second = rate;
        RelayConfig {
            idle_timeout,
            handshake_timeout,
            max_sessions,
            max_cids_per_session,
            max_paths_per_session,
            max_upstream_sockets,
            path_idle_timeout,
            max_buffered_bytes_per_connection: per_connection,
            max_buffered_bytes_total: total,
            max_pending_allocations,
            new_sessions_per_second,
            new_sessions_burst: burst.unwrap_or(new_sessions_per_second),
            max_client_hello_bytes,
            refusal,
            refusal_replays_per_second,
            max_unvalidated_sessions,
            max_sessions_per_address,
            max_sessions_per_ip,
            allocations_per_second_per_fleet,
            allocations_per_second_per_prefix,
            drain_period,
            directory_lookups_per_second,
            directory_lookup_timeout,
            directory_max_pending_lookups,
            directory_max_held_datagrams,
            directory_max_held_bytes,
        }
    }

    fn routes(&mut self, top: &Section<'_>, agones_enabled: bool) -> Vec<RouteSpec> {
        let Some(field) = top.value("routes") else {
            return Vec::new();
        };
        let Value::Seq(items) = &field.node.value else {
            self.error(
                "routes",
                field.span(),
                format!(
                    "expected a list of routes (- {{fqdn: ..., type: ..., target: ...}}), found {}",
                    field.node.value.describe()
                ),
            );
            return Vec::new();
        };
        let mut routes = Vec::new();
        let mut seen: HashMap<RouteName, (usize, Option<Span>)> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("routes[{i}]");
            let at = item.span.or(field.key_span);
            if matches!(item.value, Value::Null) {
                self.error(
                    path,
                    at,
                    "empty route (every route needs fqdn, type and target)",
                );
                continue;
            }
            let s = self.section(item, path, at, &keys::ROUTE);
            for key in keys::ROUTE
                .keys
                .iter()
                .filter(|k| k.default == KeyDefault::Required)
                .map(|k| k.name)
            {
                if s.value(key).is_none() && matches!(item.value, Value::Map(_)) {
                    self.error(
                        s.path_of(key),
                        s.span,
                        format!("missing `{key}` (every route needs fqdn, type and target)"),
                    );
                }
            }
            let name = self.get(&s, "fqdn", |n| Ok(parse_route_name(&string(n)?)?));
            let kind = self.get(&s, "type", |n| {
                one_of(
                    n,
                    &[("simple", RouteType::Simple), ("agones", RouteType::Agones)],
                )
            });
            let kind = match kind {
                Some(RouteType::Simple) => self.simple_targets(&s),
                Some(RouteType::Agones) => self.fleet(&s),
                None => None,
            };
            if let Some(name) = &name {
                let span = s.value("fqdn").and_then(|f| f.span());
                if let Some((first, first_span)) = seen.get(name) {
                    let line =
                        first_span.map_or_else(String::new, |s| format!(", line {}", s.line));
                    self.error(
                        s.path_of("fqdn"),
                        span,
                        format!(
                            "duplicate route `{name}` (first defined at routes[{first}]{line})"
                        ),
                    );
                } else {
                    seen.insert(name.clone(), (i, span));
                }
            }
            if let (Some(name), Some(kind)) = (name, kind) {
                if matches!(kind, RouteKind::Agones { .. }) && !agones_enabled {
                    self.warn(
                        s.path_of("type"),
                        s.value("type").and_then(|f| f.span()),
                        format!(
                            "route `{name}` allocates from Agones but agones.enabled is false; \
                             its connections will be refused"
                        ),
                    );
                }
                routes.push(RouteSpec { name, kind });
            }
        }
        routes
    }

    fn simple_targets(&mut self, s: &Section<'_>) -> Option<RouteKind> {
        let field = s.value("target")?;
        let path = s.path_of("target");
        let items: Vec<(String, &Node)> = match &field.node.value {
            Value::Seq(items) if items.is_empty() => {
                self.error(path, field.span(), "the list of targets is empty");
                return None;
            }
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{path}[{i}]"), n))
                .collect(),
            _ => vec![(path, field.node)],
        };
        let mut targets: Vec<Target> = Vec::new();
        let mut ok = true;
        for (item_path, node) in items {
            let span = node.span.or(field.key_span);
            match string(node).and_then(|t| Ok(Target::parse(&t)?)) {
                Ok(t) if targets.contains(&t) => {
                    self.error(item_path, span, format!("{t} is listed twice"));
                    ok = false;
                }
                Ok(t) => targets.push(t),
                Err(message) => {
                    self.error(item_path, span, message);
                    ok = false;
                }
            }
        }
        let balance = self.balance(s, targets.len());
        (ok && balance.is_some()).then(|| RouteKind::Simple {
            targets,
            balance: balance.unwrap_or_default(),
        })
    }

    /// `policy` and `weights` of a simple route with `count` targets; `None` if wrong
    /// (reported).
    fn balance(&mut self, s: &Section<'_>, count: usize) -> Option<Balance> {
        let mut ok = true;
        let weights = match s.value("weights") {
            None => Vec::new(),
            Some(field) => match weights(field.node, count) {
                Ok(w) => w,
                Err(message) => {
                    self.error(s.path_of("weights"), field.span(), message);
                    ok = false;
                    Vec::new()
                }
            },
        };
        let policy = match s.value("policy") {
            None if s.value("weights").is_some() => Policy::Weighted,
            None => Policy::RoundRobin,
            Some(_) => {
                let choices: Vec<(&str, Policy)> =
                    Policy::ALL.iter().map(|p| (p.as_str(), *p)).collect();
                match self.get(s, "policy", |n| one_of(n, &choices)) {
                    Some(p) => p,
                    None => {
                        ok = false;
                        Policy::RoundRobin
                    }
                }
            }
        };
        if policy == Policy::RoundRobin && !weights.is_empty() {
            self.error(
                s.path_of("weights"),
                s.value("weights").and_then(|f| f.span()),
                "round_robin takes no weights (use policy: weighted)",
            );
            ok = false;
        }
        ok.then_some(Balance { policy, weights })
    }

    fn fleet(&mut self, s: &Section<'_>) -> Option<RouteKind> {
        for key in ["policy", "weights"] {
            if let Some(field) = s.value(key) {
                self.error(
                    s.path_of(key),
                    field.span(),
                    format!("`{key}` is for simple routes; an agones route allocates one server"),
                );
            }
        }
        self.get(s, "target", |n| {
            if let Value::Seq(_) = n.value {
                return Err("an agones route takes one fleet name, not a list".to_owned());
            }
            let fleet = string(n)?;
            check_kubernetes_name(&fleet, true)
                .map_err(|why| format!("not a fleet name: {why}"))?;
            Ok(RouteKind::Agones { fleet })
        })
    }
}

#[derive(Clone, Copy)]
enum RouteType {
    Simple,
    Agones,
}

/// `redis.address` taken apart.
#[derive(Debug)]
struct RedisAddress {
    target: Target,
    tls: bool,
    username: Option<String>,
    password: Option<Secret>,
    db: Option<u32>,
}

/// `host:port` (port 6379 if left out), or `redis://[user][:password@]host[:port][/db]`,
/// `rediss://...` for TLS.
fn redis_address(text: &str) -> Result<RedisAddress, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Ok(RedisAddress {
            target: Target::parse_with_default_port(text, 6379)?,
            tls: false,
            username: None,
            password: None,
            db: None,
        });
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "redis" => false,
        "rediss" => true,
        _ => {
            return Err(format!(
                "{text:?}: unsupported scheme `{scheme}` (use host:port, redis:// or rediss://)"
            ))
        }
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{text:?}: query strings and fragments are not supported"
        ));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            let user = percent_decode(user)
                .ok_or_else(|| format!("{text:?}: bad %-escape in the user name"))?;
            let password = password
                .map(|p| {
                    percent_decode(p)
                        .ok_or_else(|| format!("{text:?}: bad %-escape in the password"))
                })
                .transpose()?;
            (
                (!user.is_empty()).then_some(user),
                password.filter(|p| !p.is_empty()).map(Secret::new),
            )
        }
    };
    let target =
        Target::parse_with_default_port(hostport, 6379).map_err(|e| format!("{text:?}: {e}"))?;
    let db = match path {
        "" => None,
        db => Some(
            db.parse::<u32>()
                .map_err(|_| format!("{text:?}: the path must be a database number, as in /0"))?,
        ),
    };
    Ok(RedisAddress {
        target,
        tls,
        username,
        password,
        db,
    })
}

/// Decodes `%XX` escapes (URL user names and passwords, API path segments); `None` for a
/// bad escape or bytes that are not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// --- Scalar readers: each says what it expected and what it found. ---

/// A list of `count` whole numbers, each at least 1.
fn weights(n: &Node, count: usize) -> Result<Vec<u32>, String> {
    let Value::Seq(items) = &n.value else {
        return Err(format!(
            "expected a list of weights (one per target), found {}",
            n.value.describe()
        ));
    };
    if items.len() != count {
        return Err(format!(
            "{} weights for {count} targets (one weight per target, in order)",
            items.len()
        ));
    }
    items
        .iter()
        .map(|item| {
            integer_at_least(item, 1)
                .and_then(|v| u32::try_from(v).map_err(|_| format!("{v} is too large")))
        })
        .collect()
}

/// `{"0a0b": "10.0.0.5:4433", ...}`: server IDs in hex, backends as `ip:port`.
fn quic_lb_servers(n: &Node) -> Result<Vec<(Vec<u8>, SocketAddr)>, String> {
    let Value::Map(entries) = &n.value else {
        return Err(format!(
            "expected a mapping of server IDs (hex) to backends (ip:port), found {}",
            n.value.describe()
        ));
    };
    let mut servers: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    for (key, value) in entries {
        let id = hex_bytes(&string(key)?)?;
        let text = string(value)?;
        let backend: SocketAddr = text
            .parse()
            .map_err(|_| format!("`{text}` is not an ip:port backend address"))?;
        if servers.iter().any(|(s, _)| *s == id) {
            return Err(format!("server ID {} listed twice", hex_text(&id)));
        }
        servers.push((id, backend));
    }
    Ok(servers)
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.trim_start_matches("0x");
    if digits.is_empty()
        || !digits.len().is_multiple_of(2)
        || !digits.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(format!("`{text}` is not an even number of hex digits"));
    }
    Ok((0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digits checked above"))
        .collect())
}

fn hex_text(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn boolean(n: &Node) -> Result<bool, String> {
    match n.value {
        Value::Bool(b) => Ok(b),
        ref other => Err(format!(
            "expected true or false, found {}",
            other.describe()
        )),
    }
}

fn string(n: &Node) -> Result<String, String> {
    match &n.value {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => Err(format!(
            "expected a string, found {} (put it in quotes if it is meant as text)",
            n.value.describe()
        )),
        other => Err(format!("expected a string, found {}", other.describe())),
    }
}

fn non_empty_string(n: &Node) -> Result<String, String> {
    let s = string(n)?;
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s)
    }
}

fn port(n: &Node) -> Result<u16, String> {
    match n.value {
        Value::Int(i) => u16::try_from(i).map_err(|_| format!("{i} is not a port (0-65535)")),
        ref other => Err(format!(
            "expected a port number (0-65535), found {}",
            other.describe()
        )),
    }
}

fn integer_at_least(n: &Node, min: usize) -> Result<usize, String> {
    match n.value {
        Value::Int(i) if i < 0 || usize::try_from(i).is_ok_and(|v| v < min) => {
            Err(format!("{i} is too small (at least {min})"))
        }
        Value::Int(i) => usize::try_from(i).map_err(|_| format!("{i} is too large")),
        ref other => Err(format!(
            "expected a whole number, found {}",
            other.describe()
        )),
    }
}

/// `udp.shards`: `auto`, or a count from 1 to [`Shards::MAX`].
fn shards(n: &Node) -> Result<Shards, String> {
    let max = Shards::MAX;
    match &n.value {
        Value::Str(s) if s == "auto" => Ok(Shards::Auto),
        Value::Int(i) => match usize::try_from(*i).ok().and_then(NonZeroUsize::new) {
            Some(count) if count.get() <= max => Ok(Shards::Count(count)),
            Some(_) => Err(format!(
                "{i} is too many: at most {max} shards (`auto` runs one per available core, up to {max})"
            )),
            None => Err(format!(
                "{i} is too small: at least 1 shard (`auto` runs one per available core)"
            )),
        },
        Value::Str(s) => Err(format!(
            "{s:?} is not a number of shards: write 1-{max}, or `auto` for one per available core"
        )),
        other => Err(format!(
            "expected a number of shards (1-{max}) or `auto`, found {}",
            other.describe()
        )),
    }
}

/// The longest duration any key takes: far beyond any sensible timeout, and far from
/// the point where adding it to a clock reading overflows.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

fn duration(n: &Node) -> Result<Duration, String> {
    let d = duration_unbounded(n)?;
    if d > MAX_DURATION {
        return Err(format!(
            "{} is too long: durations are at most 30 days ({}s)",
            describe_long_duration(n),
            MAX_DURATION.as_secs()
        ));
    }
    Ok(d)
}

fn describe_long_duration(n: &Node) -> String {
    match &n.value {
        Value::Int(i) => format!("{i}s"),
        Value::Str(s) => format!("{s:?}"),
        other => other.describe(),
    }
}

fn duration_unbounded(n: &Node) -> Result<Duration, String> {
    match &n.value {
        Value::Int(i) => u64::try_from(*i)
            .map(Duration::from_secs)
            .map_err(|_| format!("{i} is not a duration (it must not be negative)")),
        Value::Str(s) => Ok(parse_duration(s)?),
        Value::Float(x) => Err(format!(
            "{x} is not a duration: use whole numbers of a smaller unit, such as 1500ms"
        )),
        other => Err(format!(
            "expected a duration such as 500ms, 5s, 2m or 1h, found {}",
            other.describe()
        )),
    }
}

fn duration_positive(n: &Node) -> Result<Duration, String> {
    let d = duration(n)?;
    if d.is_zero() {
        Err("must be longer than zero".to_owned())
    } else {
        Ok(d)
    }
}

fn byte_size_at_least(n: &Node, min: usize) -> Result<usize, String> {
    let bytes = match &n.value {
        Value::Int(i) => u64::try_from(*i).map_err(|_| format!("{i} is not a byte size"))?,
        Value::Str(s) => parse_byte_size(s)?,
        other => {
            return Err(format!(
                "expected a byte size such as 65536, 64KiB or 16MiB, found {}",
                other.describe()
            ))
        }
    };
    let bytes = usize::try_from(bytes).map_err(|_| "too large for this machine".to_owned())?;
    if bytes < min {
        return Err(format!(
            "{} is too small (at least {})",
            format_byte_size(bytes as u64),
            format_byte_size(min as u64)
        ));
    }
    Ok(bytes)
}

fn one_of<T: Copy>(n: &Node, choices: &[(&str, T)]) -> Result<T, String> {
    let names = || {
        choices
            .iter()
            .map(|(name, _)| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &n.value {
        Value::Str(s) => choices
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("{s:?} is not one of {}", names())),
        other => Err(format!(
            "expected one of {}, found {}",
            names(),
            other.describe()
        )),
    }
}

fn log_format(n: &Node) -> Result<LogFormat, String> {
    one_of(n, &[("human", LogFormat::Human), ("json", LogFormat::Json)])
}

/// A level, or `tracing`-style directives: `info`, `warn,porter_core=debug`.
fn log_level(n: &Node) -> Result<String, String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let text = string(n)?;
    let level = text.trim().to_owned();
    if level.is_empty() {
        return Err(format!("must not be empty (one of {})", LEVELS.join(", ")));
    }
    for directive in level.split(',') {
        let directive = directive.trim();
        let (target, lvl) = match directive.split_once('=') {
            Some((target, lvl)) => (Some(target), lvl),
            None => (None, directive),
        };
        let target_ok = target.is_none_or(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
        });
        if !target_ok || !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a log level or `target=level` (levels: {})",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(level)
}

/// An IP address to bind to: `0.0.0.0`, `::`, `[::1]`, or `localhost` (127.0.0.1).
fn ip_address(n: &Node) -> Result<IpAddr, String> {
    let Value::Str(text) = &n.value else {
        return Err(format!(
            "expected an IP address such as 0.0.0.0, 127.0.0.1, :: or [::1], found {}",
            n.value.describe()
        ));
    };
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    inner.parse().map_err(|_| {
        let hint = if text.contains(':') && text.parse::<SocketAddr>().is_ok() {
            " (give the port in `port`, not here)"
        } else {
            ""
        };
        format!("{text:?} is not an IP address such as 0.0.0.0, 127.0.0.1, :: or [::1]{hint}")
    })
}

fn env_var_name(n: &Node) -> Result<String, String> {
    let name = string(n)?;
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "{name:?} is not an environment variable name (letters, digits and _, not starting with a digit)"
        ))
    }
}

/// The known key nearest to a mistyped one, if it is close (at most 2 edits, fewer than the
/// key's length).
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2 && *d < key.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("bnd", "bind"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("bnd", &keys::UDP.names()), Some("bind"));
        assert_eq!(closest("zzzzzz", &keys::UDP.names()), None);
    }

    #[test]
    fn redis_addresses() {
        let a = redis_address("localhost:6379").unwrap();
        assert_eq!(a.target.to_string(), "localhost:6379");
        assert!(!a.tls);
        let a = redis_address("rediss://user:p%40ss@redis.example:6380/3").unwrap();
        assert!(a.tls);
        assert_eq!(a.username.as_deref(), Some("user"));
        assert_eq!(a.password.unwrap().expose(), "p@ss");
        assert_eq!(a.db, Some(3));
        assert_eq!(a.target.port(), 6380);
        let a = redis_address("redis://:secret@[::1]").unwrap();
        assert_eq!(a.target.to_string(), "[::1]:6379");
        assert_eq!(a.username, None);
        assert!(redis_address("http://x:1").unwrap_err().contains("scheme"));
        assert!(redis_address("redis://x:1/db")
            .unwrap_err()
            .contains("database"));
        assert!(redis_address("redis://x:1?tls=1")
            .unwrap_err()
            .contains("query"));
        assert!(redis_address("redis://x:99999")
            .unwrap_err()
            .contains("not a port"));
    }

    #[test]
    fn log_levels() {
        let node = |s: &str| Node {
            value: Value::Str(s.to_owned()),
            span: None,
        };
        assert!(log_level(&node("info")).is_ok());
        assert!(log_level(&node("warn,porter_core=debug,control::api=TRACE")).is_ok());
        assert!(log_level(&node("verbose")).is_err());
        assert!(log_level(&node("=debug")).is_err());
        assert!(log_level(&node("")).is_err());
    }
}
