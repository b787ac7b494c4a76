//! The management REST API (hyper 1). Request handling is runtime-independent
//! ([`Api::handle`] takes any [`Body`]); [`crate::http::serve_api_tokio`] runs it on tokio,
//! and another driver runs it from its own accept loop.
//!
//! Endpoints ([`ENDPOINTS`]; `docs/openapi.yaml` describes each):
//! - `POST /routes` with `{"fqdn", "type", "target"}` answers `{"status":"ok"}`, as the
//!   original project;
//! - `GET /routes`, `GET|PUT|DELETE /routes/{fqdn}`;
//! - `GET /sessions?limit=&after=` (paged), `GET /stats`, `GET /metrics` (Prometheus text);
//! - `GET /healthz` (the process answers), `GET /readyz` (503 while Redis is configured and
//!   not in sync).
//!
//! Errors are `{"error": "..."}` with the status that fits: 400 (bad JSON, bad name, target
//! or type), 401/403 (missing/wrong bearer token on a mutating call, or on a read that
//! shows sessions or routes), 404, 405 (with `Allow`), 413 (body over
//! `api.max_body_bytes`, refused from `Content-Length` before reading, or as soon as the
//! limit is crossed), 415 (a POST or PUT whose `Content-Type` is not `application/json`),
//! 421 (a `Host` that is neither an IP address, `localhost` nor in `api.allowed_hosts`).

mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use porter_config::{RouteSpec, RouteText, Secret, TargetText};
use porter_core::{Route, RouteName, RouteTarget, SessionId, SessionInfo, SessionState, Version};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::reload::Reloader;
use crate::sync::{LinkState, RouteSync, SharedRoute};
use porter_host::{AllocationErrorKind, Allocator, RelayHandle};

/// API settings, resolved from the configuration. `Debug` does not show the tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Bearer token required for mutating calls and for the reads that show sessions and
    /// routes; `None` allows them without one (only accepted with a loopback bind).
    /// Compared with [`Secret::matches`] only.
    pub token: Option<Secret>,
    /// A second token that allows only those reads (`GET /sessions`, `/routes`,
    /// `/routes/{fqdn}`).
    pub read_token: Option<Secret>,
    /// Log every request.
    pub log_requests: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// A connection without a byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// `Host` names accepted besides IP addresses and `localhost` (lower case, no port).
    pub allowed_hosts: Vec<String>,
}

impl ApiSettings {
    /// Settings for `bind` with no token and the defaults of the configuration keys.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            token: None,
            read_token: None,
            log_requests: false,
            max_body_bytes: 64 << 10,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            allowed_hosts: Vec::new(),
        }
    }
}

/// What a request may do once authorised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Reads that show client addresses, backends or routes.
    Read,
    /// Changes.
    Write,
}

/// Gauges only the driver knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverGauges {
    /// Upstream sockets open.
    pub upstream_sockets: usize,
    /// The smallest kernel receive buffer of the listeners, in bytes.
    pub listener_receive_buffer: usize,
    /// Client sends batched with `sendmmsg`: calls and the datagrams they carried.
    pub batched_sends: porter_host::BatchedSends,
}

/// Reads the driver's gauges.
pub type GaugeFn = Arc<dyn Fn() -> DriverGauges + Send + Sync>;

/// Every endpoint: method and path, where `{fqdn}` stands for one path segment (a route
/// name, `*` and `*.suffix` included; it may be percent-encoded). The router dispatches
/// from this list, and `docs/openapi.yaml` lists exactly these (a test checks both ways).
/// A new endpoint is one line here and one arm in the dispatch.
pub const ENDPOINTS: &[(Method, &str)] = &[
    (Method::GET, "/healthz"),
    (Method::GET, "/readyz"),
    (Method::GET, "/metrics"),
    (Method::GET, "/stats"),
    (Method::GET, "/sessions"),
    (Method::GET, "/routes"),
    (Method::POST, "/routes"),
    (Method::GET, "/routes/{fqdn}"),
    (Method::PUT, "/routes/{fqdn}"),
    (Method::DELETE, "/routes/{fqdn}"),
    (Method::POST, "/allocate"),
];

/// Sessions per page of `GET /sessions` unless `limit` says otherwise, and the most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The body of `PUT /routes/{fqdn}`: the name comes from the path; if the body has one too,
/// it must be the same route name. Otherwise the shared text form ([`RouteText`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRouteJson {
    #[serde(default)]
    fqdn: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    target: TargetText,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    weights: Option<Vec<u32>>,
}

/// The API: its settings and what it reaches.
#[derive(Clone)]
pub struct Api {
    settings: ApiSettings,
    relay: RelayHandle,
    gauges: GaugeFn,
    sync: Option<RouteSync>,
    allocator: Option<(Arc<dyn Allocator>, Duration)>,
    reload: Option<Reloader>,
    resolver: crate::dns::Resolver,
    started: Instant,
    directory: Option<crate::directory::RedisDirectory>,
}

/// Body of `POST /allocate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocateJson {
    fleet: String,
    domain: String,
}

/// How long `POST /allocate` waits for the allocator.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Response<Full<Bytes>>;

impl Api {
    /// An API over the relay behind `relay`.
    pub fn new(settings: ApiSettings, relay: RelayHandle, gauges: GaugeFn) -> Self {
        Self {
            settings,
            relay,
            gauges,
            sync: None,
            allocator: None,
            reload: None,
            resolver: crate::dns::Resolver::default(),
            started: Instant::now(),
            directory: None,
        }
    }

    /// The API of a started engine: its relay and gauges, the route sync when there is
    /// one, and `POST /allocate` when Agones is enabled (its routes live `route_ttl`).
    pub fn for_engine<R: porter_host::Runtime>(
        settings: &ApiSettings,
        engine: &Arc<porter_host::Shards<R>>,
        sync: Option<&RouteSync>,
        agones: Option<(Arc<dyn Allocator>, Duration)>,
    ) -> Self {
        let gauged = engine.clone();
        let gauges: GaugeFn = Arc::new(move || DriverGauges {
            upstream_sockets: gauged.upstream_count(),
            listener_receive_buffer: gauged.receive_buffer(),
            batched_sends: gauged.batched_sends(),
        });
        let mut api = Self::new(settings.clone(), engine.handle(), gauges);
        if let Some(sync) = sync {
            api = api.with_sync(sync.clone());
        }
        if let Some((allocator, ttl)) = agones {
            api = api.with_allocator(allocator, ttl);
        }
        api
    }

    /// Route changes go through `sync` (so other instances get them), and `/readyz` and
    /// `/metrics` report its link.
    #[must_use]
    pub fn with_sync(mut self, sync: RouteSync) -> Self {
        self.sync = Some(sync);
        self
    }

    /// `POST /allocate` allocates game servers with `allocator`; the routes it adds live
    /// for `route_ttl`.
    #[must_use]
    pub fn with_allocator(mut self, allocator: Arc<dyn Allocator>, route_ttl: Duration) -> Self {
        self.allocator = Some((allocator, route_ttl));
        self
    }

    /// `/metrics` reports the reloads of the configuration file that `reload` follows.
    #[must_use]
    pub fn with_reload(mut self, reload: Reloader) -> Self {
        self.reload = Some(reload);
        self
    }

    /// `/readyz` and `/metrics` report the connection-ID directory's link and counters.
    #[must_use]
    pub fn with_directory(mut self, directory: crate::directory::RedisDirectory) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Looks up routes' host names with `resolver` (default: the system's, with
    /// [`crate::dns::DNS_TIMEOUT`]).
    #[must_use]
    pub fn with_resolver(mut self, resolver: crate::dns::Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }

    /// Answers one request. Never panics on any input; every answer other than a success
    /// is a JSON `{"error": ...}`.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: Body + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let reply = self.route(req).await;
        if self.settings.log_requests {
            tracing::info!(%method, %path, status = reply.status().as_u16(), "api request");
        }
        reply
    }

    async fn route<B>(&self, req: Request<B>) -> Reply
    where
        B: Body + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Err(failure) = self.check_host(&req) {
            return failure.reply();
        }
        let path = req.uri().path();
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        let mut allowed: Vec<&Method> = Vec::new();
        let mut found = None;
        for (method, pattern) in ENDPOINTS {
            if let Some(param) = match_path(pattern, path) {
                if method == req.method() {
                    found = Some((*pattern, param.map(str::to_owned)));
                    break;
                }
                allowed.push(method);
            }
        }
        let Some((pattern, param)) = found else {
            if allowed.is_empty() {
                return error(StatusCode::NOT_FOUND, "no such endpoint");
            }
            let mut reply = error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} not allowed here", req.method()),
            );
            let list: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
                reply.headers_mut().insert(ALLOW, value);
            }
            return reply;
        };
        let access = match (req.method(), pattern) {
            (&Method::GET | &Method::HEAD, "/sessions" | "/routes" | "/routes/{fqdn}") => {
                Some(Access::Read)
            }
            (&Method::GET | &Method::HEAD, _) => None,
            _ => Some(Access::Write),
        };
        if let Some(access) = access {
            if let Err(failure) = self.authorize(&req, access) {
                return failure.reply();
            }
        }
        // A body-carrying change must say it is JSON: a web page can send `text/plain`
        // (or a form) to any address without a preflight; `application/json` it cannot.
        if matches!(*req.method(), Method::POST | Method::PUT) && !is_json(&req) {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be sent with Content-Type: application/json",
            );
        }
        let name = match param.as_deref().map(route_name_param).transpose() {
            Ok(name) => name,
            Err(failure) => return failure.reply(),
        };
        let method = req.method().clone();
        match (method, pattern, name) {
            (Method::GET, "/healthz", _) => json_reply(StatusCode::OK, &json!({"status": "ok"})),
            (Method::GET, "/readyz", _) => self.readyz(),
            (Method::GET, "/metrics", _) => self.metrics(),
            (Method::GET, "/stats", _) => self.stats(),
            (Method::GET, "/sessions", _) => self.sessions(req.uri().query()),
            (Method::GET, "/routes", _) => self.list_routes(),
            (Method::POST, "/routes", _) => match self.read_json::<RouteText, B>(req).await {
                Ok(body) => match self.set_route(&body).await {
                    Ok(_) => json_reply(StatusCode::OK, &json!({"status": "ok"})),
                    Err(failure) => failure.reply(),
                },
                Err(failure) => failure.reply(),
            },
            (Method::GET, "/routes/{fqdn}", Some(name)) => self.get_route(&name),
            (Method::PUT, "/routes/{fqdn}", Some(name)) => {
                match self.read_json::<PutRouteJson, B>(req).await {
                    Ok(body) => self.put_route(&name, body).await,
                    Err(failure) => failure.reply(),
                }
            }
            (Method::DELETE, "/routes/{fqdn}", Some(name)) => self.delete_route(&name),
            (Method::POST, "/allocate", _) => match self.read_json::<AllocateJson, B>(req).await {
                Ok(body) => match self.allocate(body).await {
                    Ok(reply) => reply,
                    Err(failure) => failure.reply(),
                },
                Err(failure) => failure.reply(),
            },
            (method, pattern, _) => {
                // Only reachable if ENDPOINTS gains a line without its arm; a test guards it.
                tracing::error!(%method, pattern, "endpoint listed but not dispatched");
                error(StatusCode::NOT_IMPLEMENTED, "endpoint not implemented")
            }
        }
    }

    /// Refuses a `Host` that names neither an IP address, `localhost`, nor one of
    /// [`ApiSettings::allowed_hosts`]: a page from attacker.example whose name was made to
    /// resolve to this address (DNS rebinding) must not reach the API through a browser.
    fn check_host<B>(&self, req: &Request<B>) -> Result<(), Failure> {
        let Some(value) = req.headers().get(hyper::header::HOST) else {
            // HTTP/1.0 clients and tools may leave it out; browsers never do.
            return Ok(());
        };
        let host = value.to_str().ok().map(host_without_port);
        let allowed = host.is_some_and(|host| {
            let host = host.to_ascii_lowercase();
            host.parse::<std::net::IpAddr>().is_ok()
                || host == "localhost"
                || self.settings.allowed_hosts.contains(&host)
        });
        if allowed {
            Ok(())
        } else {
            Err(Failure::new(
                StatusCode::MISDIRECTED_REQUEST,
                "this Host is not served here (add it to api.allowed_hosts)",
            ))
        }
    }

    fn authorize<B>(&self, req: &Request<B>, access: Access) -> Result<(), Failure> {
        let read_token = self.settings.read_token.as_ref();
        let tokens: Vec<&Secret> = match access {
            Access::Write => self.settings.token.iter().collect(),
            Access::Read => self.settings.token.iter().chain(read_token).collect(),
        };
        if tokens.is_empty() {
            return Ok(());
        }
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        match given {
            None => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                match access {
                    Access::Write => {
                        "this call needs a bearer token (Authorization: Bearer <api.token>)"
                    }
                    Access::Read => {
                        "this call needs a bearer token (Authorization: Bearer <api.token or api.read_token>)"
                    }
                },
            )),
            Some(t) if tokens.iter().any(|token| token.matches(t.as_bytes())) => Ok(()),
            Some(_) => Err(Failure::new(StatusCode::FORBIDDEN, "wrong bearer token")),
        }
    }

    async fn read_json<T: serde::de::DeserializeOwned, B>(
        &self,
        req: Request<B>,
    ) -> Result<T, Failure>
    where
        B: Body + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.settings.max_body_bytes;
        if let Some(len) = req.headers().get(hyper::header::CONTENT_LENGTH) {
            match len.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(len) if len > limit as u64 => return Err(too_large(limit)),
                Some(_) => {}
                None => return Err(Failure::bad_request("invalid Content-Length")),
            }
        }
        // The limit also holds for bodies without a length (chunked): reading stops at it.
        let body = match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(too_large(limit));
            }
            Err(e) => return Err(Failure::bad_request(format!("cannot read body: {e}"))),
        };
        serde_json::from_slice(&body)
            .map_err(|e| Failure::bad_request(format!("invalid JSON: {e}")))
    }

    /// Validates, resolves and installs a route (through the sync when there is one);
    /// returns it and whether it is new.
    /// Host names are looked up off the executor, each within [`crate::dns::DNS_TIMEOUT`]
    /// (a lookup that takes longer is a 400 like any other unresolvable target).
    async fn set_route(&self, body: &RouteText) -> Result<(Route, bool), Failure> {
        let spec = RouteSpec::from_text(body).map_err(|e| Failure::bad_request(e.to_string()))?;
        let route = self.resolver.resolve(&spec).await.map_err(|failures| {
            let messages: Vec<String> = failures.iter().map(ToString::to_string).collect();
            Failure::bad_request(messages.join("; "))
        })?;
        let shared = SharedRoute::from_spec(&spec);
        let previous = match &self.sync {
            Some(sync) => sync.set_route(route.clone(), shared),
            None => self.relay.set_route(route.clone(), None),
        }
        .map_err(|e| Failure::bad_request(e.to_string()))?;
        tracing::info!(fqdn = %route.name, "route set through the API");
        Ok((route, previous.is_none()))
    }

    /// `POST /allocate`: allocates a game server from `fleet` and routes
    /// `<game server name>.<domain>` to it for the configured time.
    async fn allocate(&self, body: AllocateJson) -> Result<Reply, Failure> {
        let fleet = body.fleet.trim();
        porter_config::check_kubernetes_name(fleet, true)
            .map_err(|why| Failure::bad_request(format!("fleet: {fleet:?}: {why}")))?;
        let domain = match porter_config::parse_route_name(body.domain.trim()) {
            Ok(name) if name.exact().is_some() => name.exact().unwrap_or_default().to_owned(),
            Ok(_) => {
                return Err(Failure::bad_request(
                    "domain: a plain DNS name, no wildcard",
                ))
            }
            Err(e) => return Err(Failure::bad_request(format!("domain: {e}"))),
        };
        let Some((allocator, ttl)) = &self.allocator else {
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "agones is not enabled in this relay's configuration",
            ));
        };
        let tag = format!("porter-api-{}", self.started.elapsed().as_nanos());
        let allocation = allocator
            .allocate(Arc::from(fleet), tag, Instant::now() + ALLOCATE_TIMEOUT)
            .await
            .map_err(|e| match e.kind() {
                // The answer itself is unusable: say what it was, as it is.
                AllocationErrorKind::InvalidAnswer => {
                    Failure::new(StatusCode::BAD_GATEWAY, e.to_string())
                }
                _ => Failure::new(StatusCode::BAD_GATEWAY, format!("allocation failed: {e}")),
            })?;
        let addr = allocation.addr;
        let fqdn = format!("{}.{domain}", allocation.game_server);
        let name = porter_config::parse_route_name(&fqdn)
            .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, format!("game server name: {e}")))?;
        let route = Route {
            name: name.clone(),
            target: RouteTarget::Simple(vec![porter_core::BackendAddr(addr)]),
            balance: Default::default(),
        };
        let until = Instant::now() + *ttl;
        match &self.sync {
            Some(sync) => {
                let spec = RouteSpec {
                    name: name.clone(),
                    kind: porter_config::RouteKind::Simple {
                        targets: vec![addr.into()],
                        balance: Default::default(),
                    },
                };
                let shared = SharedRoute::from_spec(&spec);
                sync.set_route_until(route, shared, until)
            }
            None => self.relay.set_route(route, Some(until)),
        }
        .map_err(|e| Failure::bad_request(e.to_string()))?;
        tracing::info!(
            %fqdn,
            game_server = %allocation.game_server,
            target = %addr,
            ttl_seconds = ttl.as_secs(),
            "temporary route for an allocated game server"
        );
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "fqdn": name.to_string(),
                "name": allocation.game_server,
                "target": addr.to_string(),
            }),
        ))
    }

    fn get_route(&self, name: &RouteName) -> Reply {
        match self.relay.route(name) {
            Some((route, _)) => json_reply(StatusCode::OK, &RouteText::from_route(&route)),
            None => no_route(name),
        }
    }

    async fn put_route(&self, name: &RouteName, body: PutRouteJson) -> Reply {
        if let Some(fqdn) = &body.fqdn {
            match porter_config::parse_route_name(fqdn) {
                Ok(n) if n == *name => {}
                Ok(n) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("fqdn: the body names {n}, the path {name}"),
                    )
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("fqdn: {e}")),
            }
        }
        let json = RouteText {
            fqdn: name.to_string(),
            kind: body.kind,
            target: body.target,
            policy: body.policy,
            weights: body.weights,
        };
        match self.set_route(&json).await {
            Ok((route, created)) => {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                json_reply(status, &RouteText::from_route(&route))
            }
            Err(failure) => failure.reply(),
        }
    }

    fn delete_route(&self, name: &RouteName) -> Reply {
        let removed = match &self.sync {
            Some(sync) => sync.remove_route(name),
            None => self.relay.remove_route(name),
        };
        match removed {
            Some(_) => {
                tracing::info!(fqdn = %name, "route deleted through the API");
                json_reply(StatusCode::OK, &json!({"status": "ok"}))
            }
            None => no_route(name),
        }
    }

    fn list_routes(&self) -> Reply {
        let on = self.relay.backend_sessions();
        let list: Vec<serde_json::Value> = self.relay.read(|relay| {
            relay
                .routes()
                .iter()
                .map(|route| {
                    let mut json = json!(RouteText::from_route(route));
                    // Per target: its health (healthy unless the checks found otherwise)
                    // and its sessions now.
                    if let RouteTarget::Simple(backends) = &route.target {
                        let health: Vec<serde_json::Value> = backends
                            .iter()
                            .map(|b| {
                                json!({
                                    "target": b.to_string(),
                                    "healthy": relay.backend_healthy(*b),
                                    "sessions": on.get(b).copied().unwrap_or(0),
                                })
                            })
                            .collect();
                        json["health"] = json!(health);
                    }
                    json
                })
                .collect()
        });
        json_reply(StatusCode::OK, &list)
    }

    fn sessions(&self, query: Option<&str>) -> Reply {
        let page = match Page::parse(query) {
            Ok(page) => page,
            Err(why) => return error(StatusCode::BAD_REQUEST, &why.to_string()),
        };
        // One page, cut inside the core: the table is never copied whole.
        let after = page.after.map(SessionId);
        let (total, found) = self.relay.sessions_page(Instant::now(), after, page.limit);
        let shown: Vec<serde_json::Value> = found.sessions.iter().map(session_json).collect();
        let next = found.next.map(|id| id.to_string());
        json_reply(
            StatusCode::OK,
            &json!({"total": total, "sessions": shown, "next": next}),
        )
    }

    fn readyz(&self) -> Reply {
        // The directory never makes the relay unready: without it, connections that move
        // to this instance are dropped as they were before it existed. It is reported.
        let directory = self.directory.as_ref().map(|d| d.status());
        let ready = || {
            let mut body = json!({"status": "ready"});
            if let Some(d) = &directory {
                body["directory"] = json!(if d.up { "up" } else { "down" });
                if let Some(reason) = &d.reason {
                    body["directory_detail"] = json!(reason);
                }
            }
            json_reply(StatusCode::OK, &body)
        };
        let Some(sync) = &self.sync else {
            return ready();
        };
        let status = sync.status();
        if status.state == LinkState::Synced {
            return ready();
        }
        let reason = status
            .reason
            .unwrap_or_else(|| "routes not in sync with Redis".into());
        let directory = match &directory {
            Some(d) if !d.up => "; connection-ID directory down",
            _ => "",
        };
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: routes not in sync with Redis ({reason}){directory}"),
        )
    }

    fn metrics(&self) -> Reply {
        let stats = self.relay.stats();
        let gauges = (self.gauges)();
        let sync = self.sync.as_ref().map(RouteSync::status);
        let mut text = metrics::render(&stats, gauges, self.started.elapsed(), sync.as_ref());
        // Per target of each simple route: labels from the routes, never from the network.
        let on = self.relay.backend_sessions();
        let backends: Vec<metrics::Backend> = self.relay.read(|relay| {
            relay
                .routes()
                .iter()
                .flat_map(|route| match &route.target {
                    RouteTarget::Simple(backends) => backends
                        .iter()
                        .map(|b| metrics::Backend {
                            route: route.name.to_string(),
                            target: b.to_string(),
                            healthy: relay.backend_healthy(*b),
                            sessions: on.get(b).copied().unwrap_or(0),
                        })
                        .collect::<Vec<_>>(),
                    RouteTarget::Agones { .. } => Vec::new(),
                })
                .collect()
        });
        metrics::render_backends(&mut text, &backends);
        if let Some(reload) = &self.reload {
            reload.render_metrics(&mut text);
        }
        if let Some(directory) = &self.directory {
            metrics::render_directory(&mut text, &directory.status());
        }
        let mut reply = Response::new(Full::new(Bytes::from(text)));
        reply.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        reply
    }

    fn stats(&self) -> Reply {
        let shards = self.relay.shard_stats();
        let per_shard: Vec<serde_json::Value> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({
                    "shard": i,
                    "sessions": s.relay.sessions,
                    "paths": s.relay.paths,
                    "upstream_sockets": s.upstream_sockets,
                    "drops": s.relay.drops.iter().sum::<u64>(),
                    "moved_in": s.relay.lookups.from_shards,
                })
            })
            .collect();
        let host = self.relay.stats();
        let (stats, upstreams) = (&host.relay, host.upstream_sockets);
        let gauges = (self.gauges)();
        let failures: serde_json::Map<String, serde_json::Value> = host
            .allocation_failures
            .iter()
            .map(|(kind, n)| (kind.as_str().to_owned(), json!(n)))
            .collect();
        let drops: serde_json::Map<String, serde_json::Value> = porter_core::DropReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), json!(stats.drops(*r))))
            .collect();
        let refusals: serde_json::Map<String, serde_json::Value> = porter_core::RefuseReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), json!(stats.refusals(*r))))
            .collect();
        let redis = self.sync.as_ref().map(|s| {
            let st = s.status();
            json!({
                "instance": st.instance,
                "state": st.state.as_str(),
                "reason": st.reason,
                "outbox": st.outbox,
            })
        });
        let body = json!({
            "uptime_seconds": self.started.elapsed().as_secs(),
            "sessions": stats.sessions,
            "pending_sessions": stats.pending_sessions,
            "unvalidated_sessions": stats.unvalidated_sessions,
            "sessions_validated": stats.sessions_validated,
            "upstream_sockets": gauges.upstream_sockets,
            "upstream_sockets_expected": upstreams,
            "upstream_socket_limit": host.upstream_socket_limit,
            "upstream_failures": stats.upstream_failures,
            "connection_ids": stats.connection_ids,
            "paths": stats.paths,
            "paths_opened": stats.paths_opened,
            "quic_lb": {
                "routed": stats.quic_lb.routed,
                "unroutable": stats.quic_lb.unroutable,
                "unknown_config": stats.quic_lb.unknown_config,
                "malformed": stats.quic_lb.malformed,
                "unknown_server": stats.quic_lb.unknown_server,
                "allocated_server_ids": stats.quic_lb.allocated_server_ids,
                "invalid_server_ids": stats.quic_lb.invalid_server_ids,
                "server_id_conflicts": stats.quic_lb.server_id_conflicts,
            },
            "directory_lookups": {
                "asked": stats.lookups.asked,
                "found": stats.lookups.found,
                "not_found": stats.lookups.not_found,
                "timed_out": stats.lookups.timed_out,
                "rate_limited": stats.lookups.rate_limited,
                "pending": stats.lookups.pending,
                "from_shards": stats.lookups.from_shards,
            },
            "shards": host.shards,
            // Per shard, what tells them apart: where sessions and drops are, and how
            // many connections each adopted from another.
            "shard_stats": per_shard,
            "buffered_bytes": stats.buffered_bytes,
            "routes": stats.routes,
            "sessions_opened": stats.sessions_opened,
            "sessions_closed": stats.sessions_closed,
            "refused": stats.refused,
            "refusals": refusals,
            "to_backend": {"datagrams": stats.to_backend.datagrams, "bytes": stats.to_backend.bytes},
            "to_client": {"datagrams": stats.to_client.datagrams, "bytes": stats.to_client.bytes},
            "allocations": {
                "in_flight": stats.allocations_in_flight,
                "requested": stats.allocations.requested,
                "succeeded": stats.allocations.succeeded,
                "failed": stats.allocations.failed,
                "failed_by_kind": failures,
                "timed_out": stats.allocations.timed_out,
                "rejected": stats.allocations.rejected,
                "over_budget": stats.allocations.over_budget,
            },
            "drops": drops,
            "redis": redis,
        });
        json_reply(StatusCode::OK, &body)
    }
}

/// `?limit=N&after=ID` of `GET /sessions`.
struct Page {
    limit: usize,
    after: Option<u64>,
}

/// Why the query of `GET /sessions` is refused (each holds the value as given).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum PageError {
    #[error("limit: {value:?} is not a number from 1 to {max}", max = MAX_PAGE)]
    Limit { value: String },
    #[error("after: {0:?} is not a session ID (as in s42, or 42)")]
    After(String),
    #[error("unknown query parameter {0:?} (expected limit, after)")]
    Unknown(String),
}

impl Page {
    fn parse(query: Option<&str>) -> Result<Self, PageError> {
        let mut page = Self {
            limit: DEFAULT_PAGE,
            after: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "limit" => {
                    page.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| PageError::Limit {
                            value: value.to_owned(),
                        })?;
                }
                "after" => {
                    let id = value.strip_prefix('s').unwrap_or(value);
                    page.after = Some(
                        id.parse::<u64>()
                            .map_err(|_| PageError::After(value.to_owned()))?,
                    );
                }
                other => return Err(PageError::Unknown(other.to_owned())),
            }
        }
        Ok(page)
    }
}

fn session_json(s: &SessionInfo) -> serde_json::Value {
    let state = match s.state {
        SessionState::AwaitingClientHello => "awaiting_client_hello",
        SessionState::Allocating(_) => "allocating",
        SessionState::Established => "established",
    };
    let version = match s.version {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    json!({
        "id": s.id.to_string(),
        "sni": s.sni.as_deref(),
        "client": s.client.to_string(),
        "backend": s.backend.map(|b| b.to_string()),
        "state": state,
        "version": version,
        "age_seconds": s.age.as_secs_f64(),
        "idle_seconds": s.idle.as_secs_f64(),
        "validated": s.validated,
        "to_backend": {"datagrams": s.to_backend.datagrams, "bytes": s.to_backend.bytes},
        "to_client": {"datagrams": s.to_client.datagrams, "bytes": s.to_client.bytes},
        "paths": s.paths.iter().map(|p| json!({
            "id": p.id.to_string(),
            "client": p.client.to_string(),
            "idle_seconds": p.idle.as_secs_f64(),
        })).collect::<Vec<_>>(),
    })
}

/// Whether the request's `Content-Type` is `application/json` (parameters such as
/// `charset` allowed, any case).
fn is_json<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The host part of a `Host` header value: `[::1]:8080` → `::1`, `a.test:80` → `a.test`.
fn host_without_port(value: &str) -> &str {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => value,
    }
}

/// Matches `path` against `pattern`; `Some(param)` on a match, with the `{...}` segment if
/// the pattern has one.
fn match_path<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut param = None;
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(param),
            (Some(p), Some(s)) if p.starts_with('{') && p.ends_with('}') && !s.is_empty() => {
                param = Some(s);
            }
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

/// The route name in a path segment (percent-decoded).
fn route_name_param(segment: &str) -> Result<RouteName, Failure> {
    let text = porter_config::percent_decode(segment).ok_or_else(|| {
        Failure::bad_request(format!("fqdn: {segment:?} has a bad percent-escape"))
    })?;
    porter_config::parse_route_name(&text).map_err(|e| Failure::bad_request(format!("fqdn: {e}")))
}

fn no_route(name: &RouteName) -> Reply {
    error(StatusCode::NOT_FOUND, &format!("no route for {name}"))
}

fn too_large(limit: usize) -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {limit} bytes"),
    )
}

/// An answer other than a success: its status and message, sent as `{"error": message}`.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn reply(&self) -> Reply {
        error(self.status, &self.message)
    }
}

/// A JSON error body `{"error": message}`.
fn error(status: StatusCode, message: &str) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

fn json_reply<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_patterns() {
        assert_eq!(match_path("/routes", "/routes"), Some(None));
        assert_eq!(
            match_path("/routes/{fqdn}", "/routes/a.test"),
            Some(Some("a.test"))
        );
        assert_eq!(match_path("/routes/{fqdn}", "/routes/"), None);
        assert_eq!(match_path("/routes/{fqdn}", "/routes/a/b"), None);
        assert_eq!(match_path("/routes", "/routesx"), None);
        assert_eq!(match_path("/routes/{fqdn}", "/routes"), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            porter_config::percent_decode("%2A.a.test").as_deref(),
            Some("*.a.test")
        );
        assert_eq!(porter_config::percent_decode("a%2"), None);
        assert_eq!(porter_config::percent_decode("a%zz"), None);
        assert_eq!(porter_config::percent_decode("%FF"), None);
    }

    #[test]
    fn host_values_lose_their_port() {
        assert_eq!(host_without_port("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_without_port("[::1]:8080"), "::1");
        assert_eq!(host_without_port("[::1]"), "::1");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("Porter.Example:80"), "Porter.Example");
        assert_eq!(host_without_port("attacker.example"), "attacker.example");
    }

    #[test]
    fn pages() {
        assert!(Page::parse(None).is_ok());
        let p = Page::parse(Some("limit=5&after=s7")).unwrap();
        assert_eq!((p.limit, p.after), (5, Some(7)));
        let why = |query| Page::parse(Some(query)).err().map(|e| e.to_string());
        assert_eq!(
            why("limit=0").as_deref(),
            Some("limit: \"0\" is not a number from 1 to 1000")
        );
        assert_eq!(
            why("limit=100000").as_deref(),
            Some("limit: \"100000\" is not a number from 1 to 1000")
        );
        assert_eq!(
            why("after=x").as_deref(),
            Some("after: \"x\" is not a session ID (as in s42, or 42)")
        );
        assert_eq!(
            why("colour=blue").as_deref(),
            Some("unknown query parameter \"colour\" (expected limit, after)")
        );
    }

    #[test]
    fn settings_do_not_show_the_token() {
        let settings = ApiSettings {
            token: Some(Secret::new("hunter2-s3cret")),
            read_token: Some(Secret::new("hunter3-r34d")),
            max_body_bytes: 1024,
            ..ApiSettings::new("127.0.0.1:8080".parse().unwrap())
        };
        let shown = format!("{settings:?} {settings:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("hunter3"), "{shown}");
        assert!(shown.contains("Secret(***)"), "{shown}");
    }
}
