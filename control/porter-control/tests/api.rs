//! The management API through `Api::handle`, without sockets: every endpoint, every error
//! status with its message, the token, body limits that hold without reading the body, the
//! OpenAPI document against the router, and arbitrary requests (proptest).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::{Method, Request, StatusCode};
use porter_config::Secret;
use porter_control::api::{Api, ApiSettings, DriverGauges, ENDPOINTS};
use porter_control::sync::RouteSync;
use porter_host::RelayHandle;
use porter_test_support::host;
use proptest::prelude::*;
use serde_json::Value;

const TOKEN: &str = "s3cret-token";
const LIMIT: usize = 1024;

fn api_with(host: RelayHandle, token: Option<&str>) -> Api {
    let settings = ApiSettings {
        token: token.map(Secret::new),
        max_body_bytes: LIMIT,
        ..ApiSettings::new(([127, 0, 0, 1], 0).into())
    };
    Api::new(settings, host, Arc::new(DriverGauges::default))
}

fn api() -> Api {
    api_with(host(), Some(TOKEN))
}

/// An answer: status, content type and body.
struct Answer {
    status: StatusCode,
    content_type: String,
    allow: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        assert_eq!(self.content_type, "application/json");
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {}", self.json()))
            .to_owned()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send_req<B>(api: &Api, req: Request<B>) -> Answer
where
    B: Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let reply = tokio::time::timeout(Duration::from_secs(5), api.handle(req))
        .await
        .expect("the API answers without waiting for more body");
    let status = reply.status();
    let header = |name| {
        reply
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(hyper::header::CONTENT_TYPE).unwrap_or_default();
    let allow = header(hyper::header::ALLOW);
    let body = reply
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        content_type,
        allow,
        body,
    }
}

fn request(method: &str, path: &str, body: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("content-length", body.len());
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn call(api: &Api, method: &str, path: &str, body: &str) -> Answer {
    send_req(api, request(method, path, body, Some(TOKEN))).await
}

#[tokio::test]
async fn routes_are_created_read_replaced_and_deleted() {
    let api = api();
    let a = call(
        &api,
        "POST",
        "/routes",
        r#"{"fqdn":"A.Test","type":"simple","target":"127.0.0.1:4434"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json(),
        serde_json::json!({"status": "ok"}),
        "original answer"
    );

    let a = call(&api, "GET", "/routes/a.test", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json(),
        serde_json::json!({"fqdn": "a.test", "type": "simple", "target": "127.0.0.1:4434"})
    );

    // PUT: created, then replaced; the body may repeat the name, percent-encoded paths work.
    let a = call(
        &api,
        "PUT",
        "/routes/%2A.wild.test",
        r#"{"type":"simple","target":["127.0.0.1:1","127.0.0.1:2"]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(
        a.json()["target"],
        serde_json::json!(["127.0.0.1:1", "127.0.0.1:2"])
    );
    let a = call(
        &api,
        "PUT",
        "/routes/*.wild.test",
        r#"{"fqdn":"*.WILD.test","type":"agones","target":"fleet-a"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json()["type"], "agones");

    let list = call(&api, "GET", "/routes", "").await.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["fqdn"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.test", "*.wild.test"]);

    let a = call(&api, "DELETE", "/routes/a.test", "").await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    let a = call(&api, "DELETE", "/routes/a.test", "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error(), "no route for a.test");
    let a = call(&api, "GET", "/routes/a.test", "").await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::NOT_FOUND, "no route for a.test".into())
    );
}

#[tokio::test]
async fn bad_requests_are_400_with_a_message() {
    let api = api();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("POST", "/routes", "{not json", "invalid JSON"),
        ("POST", "/routes", "", "invalid JSON"),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a.test","type":"simple"}"#,
            "missing field `target`",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1","colour":1}"#,
            "unknown field `colour`",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a..test","type":"simple","target":"127.0.0.1:1"}"#,
            "fqdn: \"a..test\" is not a valid route name",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a.*.test","type":"simple","target":"127.0.0.1:1"}"#,
            "fqdn: \"a.*.test\" is not a valid route name",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"**","type":"simple","target":"127.0.0.1:1"}"#,
            "fqdn: \"**\"",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1"}"#,
            "target: \"127.0.0.1\" is not a host:port",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:99999"}"#,
            "target: \"127.0.0.1:99999\" is not a host:port",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a.test","type":"simple","target":[]}"#,
            "target: a simple route needs at least one host:port",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a.test","type":"teleport","target":"127.0.0.1:1"}"#,
            "type: \"teleport\" is not a route type",
        ),
        (
            "POST",
            "/routes",
            r#"{"fqdn":"a.test","type":"agones","target":" "}"#,
            "target: an agones route needs a fleet name",
        ),
        (
            "PUT",
            "/routes/a.test",
            r#"{"fqdn":"b.test","type":"simple","target":"127.0.0.1:1"}"#,
            "fqdn: the body names b.test, the path a.test",
        ),
        (
            "GET",
            "/routes/a..test",
            "",
            "fqdn: \"a..test\" is not a valid route name",
        ),
        ("DELETE", "/routes/%zz", "", "bad percent-escape"),
        (
            "GET",
            "/sessions?limit=0",
            "",
            "limit: \"0\" is not a number from 1 to 1000",
        ),
        (
            "GET",
            "/sessions?after=yesterday",
            "",
            "after: \"yesterday\" is not a session ID",
        ),
        (
            "GET",
            "/sessions?colour=blue",
            "",
            "unknown query parameter \"colour\"",
        ),
    ];
    for (method, path, body, expected) in cases {
        let a = call(&api, method, path, body).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {}",
            a.text()
        );
        let message = a.error();
        assert!(
            message.contains(expected),
            "{method} {path} {body}: {message:?} does not say {expected:?}"
        );
    }
    // Nothing was installed along the way.
    let a = call(&api, "GET", "/routes", "").await;
    assert_eq!(a.json(), serde_json::json!([]));
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let api = api();
    for path in ["/", "/nope", "/routes/a.test/extra", "/routesx"] {
        let a = call(&api, "GET", path, "").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.error(), "no such endpoint");
    }
    for (method, path, allow) in [
        ("DELETE", "/routes", "GET, POST"),
        ("POST", "/routes/a.test", "GET, PUT, DELETE"),
        ("POST", "/healthz", "GET"),
        ("PATCH", "/metrics", "GET"),
        ("HEAD", "/sessions", "GET"),
        ("GET", "/allocate", "POST"),
    ] {
        let a = call(&api, method, path, "").await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(a.error(), format!("method {method} not allowed here"));
        assert_eq!(a.allow.as_deref(), Some(allow), "{method} {path}");
    }
}

#[tokio::test]
async fn mutating_calls_need_the_token() {
    let api = api();
    let route = r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1"}"#;
    let put = r#"{"type":"simple","target":"127.0.0.1:1"}"#;
    for (method, path, body) in [
        ("POST", "/routes", route),
        ("PUT", "/routes/a.test", put),
        ("DELETE", "/routes/a.test", ""),
        (
            "POST",
            "/allocate",
            r#"{"fleet":"arena","domain":"play.test"}"#,
        ),
    ] {
        let a = send_req(&api, request(method, path, body, None)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(a.error().contains("needs a bearer token"), "{}", a.error());
        // Wrong: another value, one byte off (same length), a prefix, longer.
        for wrong in ["guess", "s3cret-tokeN", "s3cret-toke", "s3cret-token2"] {
            let a = send_req(&api, request(method, path, body, Some(wrong))).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{method} {path} {wrong}");
            assert_eq!(a.error(), "wrong bearer token");
        }
        // Other schemes are not a bearer token.
        let mut req = request(method, path, body, None);
        req.headers_mut()
            .insert("authorization", format!("Basic {TOKEN}").parse().unwrap());
        assert_eq!(send_req(&api, req).await.status, StatusCode::UNAUTHORIZED);
    }
    // Nothing changed (reads that show routes need the token too).
    let a = send_req(&api, request("GET", "/routes", "", None)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(&api, "GET", "/routes", "").await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, serde_json::json!([]))
    );
    // The scheme is case-insensitive.
    let mut req = request("POST", "/routes", route, None);
    req.headers_mut()
        .insert("authorization", format!("bearer {TOKEN}").parse().unwrap());
    assert_eq!(send_req(&api, req).await.status, StatusCode::OK);
    // Without a configured token (loopback only), no token is needed.
    let open = api_with(host(), None);
    let a = send_req(&open, request("POST", "/routes", route, None)).await;
    assert_eq!(a.status, StatusCode::OK);
}

/// A body that sends a few bytes and then never more (a slow or lying client).
struct Trickle {
    sent: bool,
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            Poll::Pending
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"fqdn\":")))))
        }
    }
}

/// A body without a length that never ends.
struct Endless {
    sent: usize,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.sent += 1;
        assert!(self.sent < 1000, "the API read far past its limit");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b' '; 100])))))
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_without_being_read() {
    let api = api();
    for (method, path) in [("POST", "/routes"), ("PUT", "/routes/a.test")] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .header("content-length", "1000000000")
            .body(Trickle { sent: false })
            .unwrap();
        let a = send_req(&api, req).await;
        assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{method} {path}");
        assert_eq!(a.error(), format!("request body larger than {LIMIT} bytes"));

        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Endless { sent: 0 })
            .unwrap();
        let a = send_req(&api, req).await;
        assert_eq!(
            a.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {path} (no length)"
        );
    }
    // A body just under the limit is read (and here is not JSON).
    let a = call(&api, "POST", "/routes", &" ".repeat(LIMIT)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let req = Request::builder()
        .method("POST")
        .uri("/routes")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .header("content-length", "lots")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send_req(&api, req).await;
    assert_eq!(
        (a.status, a.error()),
        (StatusCode::BAD_REQUEST, "invalid Content-Length".into())
    );
}

#[tokio::test]
async fn readyz_follows_the_redis_link() {
    let host = host();
    let a = call(&api_with(host.clone(), None), "GET", "/readyz", "").await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::OK, serde_json::json!({"status": "ready"}))
    );

    let sync = RouteSync::with_instance(host.clone(), "porter_routes", "test");
    let api = api_with(host, None).with_sync(sync.clone());
    let a = call(&api, "GET", "/readyz", "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        a.error().contains("not in sync with Redis"),
        "{}",
        a.error()
    );
    sync.apply_load(&[], &[]).await;
    assert_eq!(
        call(&api, "GET", "/readyz", "").await.status,
        StatusCode::OK
    );
    sync.link_down("connection refused");
    let a = call(&api, "GET", "/readyz", "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.error().contains("connection refused"), "{}", a.error());
    let metrics = call(&api, "GET", "/metrics", "").await.text();
    assert!(
        metrics.contains("porter_redis_link{state=\"down\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("porter_redis_synced 0"), "{metrics}");
    // Changes made while Redis is down apply locally and wait in the outbox.
    let a = call(
        &api,
        "POST",
        "/routes",
        r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(sync.status().outbox, 1);
    assert_eq!(
        call(&api, "GET", "/routes/a.test", "").await.status,
        StatusCode::OK
    );
    let metrics = call(&api, "GET", "/metrics", "").await.text();
    assert!(metrics.contains("porter_redis_outbox 1"), "{metrics}");
}

#[tokio::test]
async fn metrics_sessions_stats_and_health_answer() {
    let api = api();
    let a = call(&api, "GET", "/metrics", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.content_type.starts_with("text/plain; version=0.0.4"));
    let text = a.text();
    for needle in [
        "# TYPE porter_sessions gauge",
        "porter_datagrams_total{direction=\"to_backend\"} 0",
        "porter_bytes_total{direction=\"to_client\"} 0",
        "porter_drops_total{reason=\"malformed\"} 0",
        "porter_allocations_total{outcome=\"succeeded\"} 0",
        "porter_routes 0",
        "porter_redis_enabled 0",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let a = call(&api, "GET", "/sessions", "").await;
    assert_eq!(
        a.json(),
        serde_json::json!({"total": 0, "sessions": [], "next": null})
    );
    assert_eq!(call(&api, "GET", "/stats", "").await.json()["routes"], 0);
    assert_eq!(
        call(&api, "GET", "/healthz/", "").await.json()["status"],
        "ok"
    );
}

/// Each target of a simple route has its health and sessions in /metrics, labelled by
/// the route's name and the target (and nothing for agones routes).
#[tokio::test]
async fn metrics_show_every_target_of_a_simple_route() {
    let api = api();
    for body in [
        r#"{"fqdn":"a.test","type":"simple","target":["127.0.0.1:4434","127.0.0.1:4435"]}"#,
        r#"{"fqdn":"g.test","type":"agones","target":"fleet-a"}"#,
    ] {
        assert_eq!(
            call(&api, "POST", "/routes", body).await.status,
            StatusCode::OK
        );
    }
    let text = call(&api, "GET", "/metrics", "").await.text();
    for needle in [
        "# TYPE porter_backend_healthy gauge",
        "porter_backend_healthy{route=\"a.test\",target=\"127.0.0.1:4434\"} 1",
        "porter_backend_healthy{route=\"a.test\",target=\"127.0.0.1:4435\"} 1",
        "porter_backend_sessions{route=\"a.test\",target=\"127.0.0.1:4435\"} 0",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // No per-target series for the agones route (its per-route series are there).
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("porter_backend_") && l.contains("route=\"g.test\"")),
        "{text}"
    );
    assert!(
        text.contains("porter_route_sessions{route=\"g.test\"} 0"),
        "{text}"
    );
}

/// Every endpoint in `ENDPOINTS` is dispatched (not 404/405/501).
#[tokio::test]
async fn every_listed_endpoint_is_served() {
    let api = api();
    let route = r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1"}"#;
    assert_eq!(
        call(&api, "POST", "/routes", route).await.status,
        StatusCode::OK
    );
    for (method, pattern) in ENDPOINTS {
        let path = pattern.replace("{fqdn}", "a.test");
        if *pattern == "/allocate" {
            // Dispatched, and says why it cannot serve without Agones.
            let a = call(
                &api,
                "POST",
                &path,
                r#"{"fleet":"arena","domain":"play.test"}"#,
            )
            .await;
            assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
            assert_eq!(
                a.error(),
                "agones is not enabled in this relay's configuration"
            );
            continue;
        }
        let body = match *method {
            Method::POST => route,
            Method::PUT => r#"{"type":"simple","target":"127.0.0.1:1"}"#,
            _ => "",
        };
        let a = call(&api, method.as_str(), &path, body).await;
        assert!(
            a.status.is_success(),
            "{method} {pattern}: {} {}",
            a.status,
            a.text()
        );
        if *method == Method::DELETE {
            // Put it back for the next endpoints.
            assert!(call(&api, "POST", "/routes", route)
                .await
                .status
                .is_success());
        }
    }
}

/// `docs/openapi.yaml` lists exactly the endpoints the router serves.
#[test]
fn openapi_document_matches_the_router() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("OpenAPI YAML parses");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document"
    );
    let paths = doc["paths"].as_mapping().expect("paths");
    let methods = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path is a string");
        for (key, op) in item.as_mapping().expect("path item") {
            let key = key.as_str().unwrap();
            if methods.contains(&key) {
                assert!(
                    op["responses"].as_mapping().is_some_and(|r| !r.is_empty()),
                    "{key} {path} documents no response"
                );
                documented.insert((key.to_uppercase(), path.to_owned()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p)| (m.as_str().to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.yaml and porter_control::api::ENDPOINTS differ"
    );
}

fn method_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("PUT".to_owned()),
        Just("DELETE".to_owned()),
        Just("HEAD".to_owned()),
        Just("PATCH".to_owned()),
        "[A-Z]{1,10}",
    ]
}

fn path_strategy() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("routes".to_owned()),
        Just("sessions".to_owned()),
        Just("metrics".to_owned()),
        Just("readyz".to_owned()),
        Just("*".to_owned()),
        Just("%2A.a.test".to_owned()),
        "[a-zA-Z0-9.*%_~-]{0,20}",
    ];
    let query = prop_oneof![
        Just(String::new()),
        "\\?[a-z]{0,6}=[a-z0-9s]{0,6}(&[a-z]{0,6}=[0-9]{0,6})?",
    ];
    (prop::collection::vec(segment, 0..4), query)
        .prop_map(|(segs, q)| format!("/{}{q}", segs.join("/")))
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("\"a.test\"".to_owned()),
        Just("\"*\"".to_owned()),
        Just("\"simple\"".to_owned()),
        Just("\"agones\"".to_owned()),
        Just("\"127.0.0.1:9\"".to_owned()),
        Just("[\"127.0.0.1:9\",\"[::1]:9\"]".to_owned()),
        Just("null".to_owned()),
        Just("7".to_owned()),
        "\"[a-z0-9.:*,\\[\\] -]{0,24}\"",
    ];
    let json = (prop::collection::vec(
        (
            prop_oneof![Just("fqdn"), Just("type"), Just("target"), Just("extra")],
            field,
        ),
        0..5,
    ),)
        .prop_map(|(fields,)| {
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(",")).into_bytes()
        });
    prop_oneof![
        json,
        prop::collection::vec(any::<u8>(), 0..64),
        (0usize..3).prop_map(|n| vec![b'x'; LIMIT + n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No request panics the API, and every answer is a success or a JSON error.
    #[test]
    fn any_request_gets_a_success_or_a_json_error(
        method in method_strategy(),
        path in path_strategy(),
        body in body_strategy(),
        token in prop_oneof![Just(None), Just(Some(TOKEN)), Just(Some("wrong"))],
        with_length in any::<bool>(),
        content_type in prop_oneof![
            Just(Some("application/json")),
            Just(Some("text/plain")),
            Just(None)
        ],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Ok(()) };
        let mut builder = Request::builder().method(method).uri(path.as_str());
        if with_length {
            builder = builder.header("content-length", body.len());
        }
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        if let Some(t) = token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        let Ok(req) = builder.body(Full::new(Bytes::from(body))) else { return Ok(()) };
        let api = api();
        let a = runtime.block_on(send_req(&api, req));
        if a.status.is_success() {
            if a.content_type == "application/json" {
                prop_assert!(serde_json::from_slice::<Value>(&a.body).is_ok());
            } else {
                prop_assert!(a.content_type.starts_with("text/plain"));
            }
        } else {
            prop_assert!(
                [400u16, 401, 403, 404, 405, 413, 415, 503].contains(&a.status.as_u16()),
                "unexpected status {}", a.status
            );
            prop_assert_eq!(&a.content_type, "application/json");
            let v: Value = serde_json::from_slice(&a.body).expect("error body is JSON");
            prop_assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{}", v);
        }
    }
}

/// `POST /allocate` checks its body before asking anyone for a game server.
#[tokio::test]
async fn allocate_rejects_bad_bodies() {
    let api = api();
    for (body, message) in [
        (r#"{"fleet":"","domain":"play.test"}"#, "fleet: \"\": "),
        (
            r#"{"fleet":"Bad_Fleet","domain":"play.test"}"#,
            "fleet: \"Bad_Fleet\"",
        ),
        (
            r#"{"fleet":"arena","domain":"*.play.test"}"#,
            "domain: a plain DNS name",
        ),
        (r#"{"fleet":"arena","domain":"a..b"}"#, "domain: "),
        (
            r#"{"fleet":"arena"}"#,
            "invalid JSON: missing field `domain`",
        ),
        (
            r#"{"fleet":"arena","domain":"x.test","extra":1}"#,
            "unknown field `extra`",
        ),
    ] {
        let a = call(&api, "POST", "/allocate", body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text());
        assert!(a.error().contains(message), "{body}: {}", a.error());
    }
}

/// Reads that show sessions or routes need a token once one is set: the full token or
/// the read token, which allows nothing else.
#[tokio::test]
async fn reads_of_sessions_and_routes_need_a_token_and_the_read_token_only_reads() {
    let settings = ApiSettings {
        token: Some(Secret::new(TOKEN)),
        read_token: Some(Secret::new("reader")),
        max_body_bytes: LIMIT,
        ..ApiSettings::new(([127, 0, 0, 1], 0).into())
    };
    let api = Api::new(settings, host(), Arc::new(DriverGauges::default));
    for path in ["/sessions", "/routes", "/routes/a.test"] {
        let a = send_req(&api, request("GET", path, "", None)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "GET {path}");
        let a = send_req(&api, request("GET", path, "", Some("wrong"))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "GET {path}");
        for token in [TOKEN, "reader"] {
            let a = send_req(&api, request("GET", path, "", Some(token))).await;
            assert!(
                [StatusCode::OK, StatusCode::NOT_FOUND].contains(&a.status),
                "GET {path} with {token}: {}",
                a.status
            );
        }
    }
    // Counters and health stay open (no addresses, no names).
    for path in ["/healthz", "/readyz", "/stats", "/metrics"] {
        let a = send_req(&api, request("GET", path, "", None)).await;
        assert_eq!(a.status, StatusCode::OK, "GET {path}");
    }
    // The read token changes nothing.
    let route = r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1"}"#;
    let a = send_req(&api, request("POST", "/routes", route, Some("reader"))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(&api, "GET", "/routes", "").await;
    assert_eq!(a.json(), serde_json::json!([]));
}

/// A change must come as `application/json`: `text/plain` (what a web page may send
/// anywhere without a preflight), a form, or nothing get 415 and change nothing.
#[tokio::test]
async fn changes_need_a_json_content_type() {
    let api = api();
    let route = r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1"}"#;
    let put = r#"{"type":"simple","target":"127.0.0.1:1"}"#;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        for (method, path, body) in [
            ("POST", "/routes", route),
            ("PUT", "/routes/a.test", put),
            (
                "POST",
                "/allocate",
                r#"{"fleet":"arena","domain":"play.test"}"#,
            ),
        ] {
            let mut req = request(method, path, body, Some(TOKEN));
            req.headers_mut().remove("content-type");
            if let Some(ct) = content_type {
                req.headers_mut()
                    .insert("content-type", ct.parse().unwrap());
            }
            let a = send_req(&api, req).await;
            assert_eq!(
                a.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{method} {path} as {content_type:?}"
            );
            assert!(a.error().contains("application/json"), "{}", a.error());
        }
    }
    assert_eq!(
        call(&api, "GET", "/routes", "").await.json(),
        serde_json::json!([])
    );
    // Parameters and case do not matter.
    let mut req = request("POST", "/routes", route, Some(TOKEN));
    req.headers_mut().insert(
        "content-type",
        "Application/JSON; charset=utf-8".parse().unwrap(),
    );
    assert_eq!(send_req(&api, req).await.status, StatusCode::OK);
}

/// A `Host` that is not an IP address, `localhost` or an allowed name is refused (DNS
/// rebinding), before anything else is looked at.
#[tokio::test]
async fn foreign_host_headers_are_refused() {
    let settings = ApiSettings {
        token: Some(Secret::new(TOKEN)),
        allowed_hosts: vec!["porter.internal".into()],
        ..ApiSettings::new(([127, 0, 0, 1], 8080).into())
    };
    let api = Api::new(settings, host(), Arc::new(DriverGauges::default));
    let route = r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1"}"#;
    for bad in [
        "attacker.example",
        "attacker.example:8080",
        "porter.internal.evil",
    ] {
        let mut req = request("POST", "/routes", route, Some(TOKEN));
        req.headers_mut().insert("host", bad.parse().unwrap());
        let a = send_req(&api, req).await;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "Host: {bad}");
        assert!(a.error().contains("Host"), "{}", a.error());
    }
    assert_eq!(
        call(&api, "GET", "/routes", "").await.json(),
        serde_json::json!([])
    );
    for good in [
        "127.0.0.1:8080",
        "localhost:8080",
        "LOCALHOST",
        "[::1]:8080",
        "10.1.2.3",
        "porter.internal:8080",
    ] {
        let mut req = request("GET", "/healthz", "", None);
        req.headers_mut().insert("host", good.parse().unwrap());
        assert_eq!(
            send_req(&api, req).await.status,
            StatusCode::OK,
            "Host: {good}"
        );
    }
}
