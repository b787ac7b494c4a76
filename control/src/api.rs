//! The management REST API (hyper 1). Request handling is runtime-independent
//! ([`Api::handle`]); [`serve_tokio`] runs it on tokio.
//!
//! Routes kept compatible with the original project: `POST /routes` with
//! `{"fqdn", "type", "target"}` answers `{"status":"ok"}`.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use porter_core::{BackendAddr, Route, RouteTarget};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::host::{RelayHost, SharedHost};

/// API settings, resolved from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiSettings {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Bearer token required for mutating calls; `None` allows them without one (only
    /// accepted with a loopback bind).
    pub token: Option<String>,
    /// Log every request.
    pub log_requests: bool,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

/// Gauges only the driver knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverGauges {
    /// Upstream sockets open.
    pub upstream_sockets: usize,
}

/// Reads the driver's gauges.
pub type GaugeFn = Arc<dyn Fn() -> DriverGauges + Send + Sync>;

/// A route as the API reads and writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteJson {
    /// `name`, `*.suffix` or `*`.
    pub fqdn: String,
    /// `simple` or `agones`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `host:port` (or a list of them) for `simple`; the fleet name for `agones`.
    pub target: TargetJson,
}

/// One target or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetJson {
    /// One `host:port` or a fleet name.
    One(String),
    /// Several `host:port`.
    Many(Vec<String>),
}

impl RouteJson {
    /// The JSON form of a route.
    pub fn from_route(route: &Route) -> Self {
        let (kind, target) = match &route.target {
            RouteTarget::Simple(backends) => {
                let mut t: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
                let target = if t.len() == 1 {
                    TargetJson::One(t.remove(0))
                } else {
                    TargetJson::Many(t)
                };
                ("simple", target)
            }
            RouteTarget::Agones { fleet } => ("agones", TargetJson::One(fleet.to_string())),
        };
        Self {
            fqdn: route.name.to_string(),
            kind: kind.to_owned(),
            target,
        }
    }

    /// Validates and converts to a core route. Host names in targets are resolved here.
    pub fn to_route(&self) -> Result<Route, String> {
        let name = crate::config::parse_route_name(&self.fqdn).map_err(|e| format!("fqdn: {e}"))?;
        let target = match self.kind.as_str() {
            "simple" => {
                let texts = match &self.target {
                    TargetJson::One(t) => vec![t.clone()],
                    TargetJson::Many(t) => t.clone(),
                };
                if texts.is_empty() {
                    return Err("target: a simple route needs at least one host:port".into());
                }
                let mut backends = Vec::new();
                for t in &texts {
                    backends.push(BackendAddr(resolve_target(t)?));
                }
                RouteTarget::Simple(backends)
            }
            "agones" => match &self.target {
                TargetJson::One(fleet) if !fleet.trim().is_empty() => RouteTarget::Agones {
                    fleet: Arc::from(fleet.trim()),
                },
                _ => return Err("target: an agones route needs a fleet name".into()),
            },
            other => {
                return Err(format!(
                    "type: {other:?} is not a route type (expected \"simple\" or \"agones\")"
                ))
            }
        };
        Ok(Route { name, target })
    }
}

/// Resolves `host:port` to its first address.
fn resolve_target(text: &str) -> Result<SocketAddr, String> {
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("target: {text:?} is not a reachable host:port ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("target: {text:?} resolves to no address"))
}

/// The API: its settings and what it reaches.
#[derive(Clone)]
pub struct Api {
    settings: ApiSettings,
    host: SharedHost,
    gauges: GaugeFn,
    started: Instant,
}

type Reply = Response<Full<Bytes>>;

impl Api {
    /// An API over `host`.
    pub fn new(settings: ApiSettings, host: SharedHost, gauges: GaugeFn) -> Self {
        Self {
            settings,
            host,
            gauges,
            started: Instant::now(),
        }
    }

    /// Answers one request.
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
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
        if mutating {
            if let Err(reply) = self.authorize(&req) {
                return reply;
            }
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/healthz") => json_reply(StatusCode::OK, &json!({"status": "ok"})),
            (Method::GET, "/stats") => self.stats(),
            (Method::GET, "/routes") => self.list_routes(),
            (Method::POST, "/routes") => match self.read_json::<RouteJson, B>(req).await {
                Ok(body) => self.put_route(&body),
                Err(reply) => reply,
            },
            (_, "/healthz" | "/stats" | "/routes") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    fn authorize<B>(&self, req: &Request<B>) -> Result<(), Reply> {
        let Some(token) = &self.settings.token else {
            return Ok(());
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(error(StatusCode::UNAUTHORIZED, "missing bearer token")),
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(error(StatusCode::FORBIDDEN, "wrong bearer token")),
        }
    }

    async fn read_json<T: serde::de::DeserializeOwned, B>(
        &self,
        req: Request<B>,
    ) -> Result<T, Reply>
    where
        B: Body + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.settings.max_body_bytes;
        if let Some(len) = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > limit as u64 {
                return Err(too_large(limit));
            }
        }
        let body = match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(too_large(limit));
            }
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read body: {e}"),
                ))
            }
        };
        serde_json::from_slice(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")))
    }

    fn put_route(&self, body: &RouteJson) -> Reply {
        let route = match body.to_route() {
            Ok(route) => route,
            Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
        };
        let name = route.name.to_string();
        let result = RelayHost::lock(&self.host).relay_mut().set_route(route);
        match result {
            Ok(_) => {
                tracing::info!(fqdn = %name, "route set through the API");
                json_reply(StatusCode::OK, &json!({"status": "ok"}))
            }
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }

    fn list_routes(&self) -> Reply {
        let routes = RelayHost::lock(&self.host).relay().routes();
        let list: Vec<RouteJson> = routes.iter().map(RouteJson::from_route).collect();
        json_reply(StatusCode::OK, &list)
    }

    fn stats(&self) -> Reply {
        let (stats, upstreams) = {
            let host = RelayHost::lock(&self.host);
            (host.relay().stats(), host.upstream_sockets())
        };
        let gauges = (self.gauges)();
        let drops: serde_json::Map<String, serde_json::Value> = porter_core::DropReason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), json!(stats.drops(*r))))
            .collect();
        let body = json!({
            "uptime_seconds": self.started.elapsed().as_secs(),
            "sessions": stats.sessions,
            "pending_sessions": stats.pending_sessions,
            "upstream_sockets": gauges.upstream_sockets,
            "upstream_sockets_expected": upstreams,
            "connection_ids": stats.connection_ids,
            "buffered_bytes": stats.buffered_bytes,
            "routes": stats.routes,
            "sessions_opened": stats.sessions_opened,
            "sessions_closed": stats.sessions_closed,
            "refused": stats.refused,
            "to_backend": {"datagrams": stats.to_backend.datagrams, "bytes": stats.to_backend.bytes},
            "to_client": {"datagrams": stats.to_client.datagrams, "bytes": stats.to_client.bytes},
            "allocations": {
                "in_flight": stats.allocations_in_flight,
                "requested": stats.allocations.requested,
                "succeeded": stats.allocations.succeeded,
                "failed": stats.allocations.failed,
                "timed_out": stats.allocations.timed_out,
                "rejected": stats.allocations.rejected,
            },
            "drops": drops,
        });
        json_reply(StatusCode::OK, &body)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn too_large(limit: usize) -> Reply {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {limit} bytes"),
    )
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

/// Binds the API and serves it on the current tokio runtime; returns the bound address.
pub async fn serve_tokio(
    settings: ApiSettings,
    host: SharedHost,
    gauges: GaugeFn,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(settings.bind).await?;
    let bound = listener.local_addr()?;
    let api = Arc::new(Api::new(settings, host, gauges));
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("API accept failed: {e}");
                    continue;
                }
            };
            let api = api.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!("API connection: {e}");
                }
            });
        }
    });
    Ok(bound)
}
