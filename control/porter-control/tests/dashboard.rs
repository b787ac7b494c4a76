//! The Grafana dashboard (docs/deploy/grafana-dashboard.json) only uses metric families
//! `GET /metrics` exports, and has a panel for each family an operator graphs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use porter_control::api::{Api, ApiSettings, DriverGauges};
use porter_core::{
    BackendAddr, ClientAddr, Relay, RelayConfig, Route, RouteName, RouteTarget, Verdict,
};
use porter_host::{HostCell, RelayHandle, RelayHost};
use porter_sim::one_datagram_initial;
use serde_json::Value;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/deploy/grafana-dashboard.json"
);

/// Families the dashboard must graph.
const GRAPHED: &[&str] = &[
    "porter_sessions",
    "porter_drops_total",
    "porter_allocation_failures_total",
    "porter_backend_healthy",
    "porter_route_sessions",
    "porter_route_sessions_opened_total",
    "porter_route_refusals_total",
    "porter_route_datagrams_total",
    "porter_route_bytes_total",
    "porter_routing_wait_seconds",
    "porter_session_duration_seconds",
    "porter_allocation_seconds",
];

fn initial(sni: &str, seed: u64) -> Vec<u8> {
    one_datagram_initial(sni, seed)
}

fn api(handle: RelayHandle) -> Api {
    Api::new(
        ApiSettings::new(([127, 0, 0, 1], 0).into()),
        handle,
        Arc::new(DriverGauges::default),
    )
}

async fn metrics(api: &Api) -> String {
    let req = Request::get("/metrics")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = api.handle(req).await;
    assert!(reply.status().is_success(), "{}", reply.status());
    let body = reply.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Family name → type, from the `# TYPE` lines.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// Every PromQL expression of the dashboard: the panels' `expr`s and the template
/// variables' queries.
fn expressions(v: &Value, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
            out.push(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|i| expressions(i, key, out)),
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| expressions(v, Some(k.as_str()), out)),
        _ => {}
    }
}

/// The metric names (identifiers starting with `porter_`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("porter_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(ident) {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The family a sample name belongs to: itself, or a histogram's for `_bucket`, `_sum`
/// and `_count`.
fn family_of(name: &str, families: &BTreeMap<String, String>) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|f| families.get(*f).is_some_and(|k| k == "histogram"))
        .map(str::to_owned)
}

#[tokio::test]
async fn dashboard_uses_only_exported_families() {
    let text = std::fs::read_to_string(DASHBOARD).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, None, &mut exprs);
    assert!(exprs.len() >= GRAPHED.len(), "{exprs:?}");

    // A fresh relay: every family is written, samples or not.
    let fresh = families(
        &metrics(&api(RelayHandle::detached(Relay::new(
            RelayConfig::default(),
        ))))
        .await,
    );
    for family in GRAPHED {
        assert!(fresh.contains_key(*family), "{family} not exported");
    }

    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            let family = family_of(&name, &fresh)
                .unwrap_or_else(|| panic!("{name} (in {expr:?}) is no exported family"));
            used.insert(family);
        }
    }
    for family in GRAPHED {
        assert!(used.contains(*family), "no panel graphs {family}");
    }
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["title"].is_string())),
        "every panel has a title"
    );
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(porter_a_bucket{x=\"porter_no\"}[5m]))) \
             / xporter_b + porter_c:d"
        ),
        ["porter_a_bucket", "porter_no", "porter_c:d"]
    );
}

/// With a route and sessions, the new families carry samples labelled by the route's
/// name; a server name that matched no route shows only as `route="none"`.
#[tokio::test]
async fn per_route_families_and_histograms_have_samples() {
    let config = RelayConfig {
        idle_timeout: Duration::from_secs(5),
        ..RelayConfig::default()
    };
    let cell = HostCell::new(RelayHost::new(Relay::new(config), false));
    let handle = RelayHandle::new(cell.clone());
    handle
        .set_route(
            Route {
                name: RouteName::parse("a.test").unwrap(),
                target: RouteTarget::Simple(vec![BackendAddr(SocketAddr::from((
                    [10, 0, 0, 1],
                    443,
                )))]),
                balance: Default::default(),
            },
            None,
        )
        .unwrap();
    let t0 = Instant::now();
    for (port, sni) in [(1000, "a.test"), (1001, "a.test"), (1002, "unknown.test")] {
        let mut host = cell.lock();
        let from = ClientAddr(SocketAddr::from(([192, 0, 2, 1], port)));
        let v = host.client_datagram(t0, from, &initial(sni, u64::from(port)));
        if sni == "a.test" {
            assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
        }
        host.drain(&mut Vec::new());
    }
    let api = api(handle);
    let text = metrics(&api).await;
    for needle in [
        "porter_route_sessions{route=\"a.test\"} 2",
        "porter_route_sessions_opened_total{route=\"a.test\"} 2",
        "porter_route_refusals_total{route=\"none\"} 1",
        "porter_route_bytes_total{route=\"a.test\",direction=\"to_backend\"} 0",
        "porter_routing_wait_seconds_count 2",
        "porter_routing_wait_seconds_bucket{le=\"+Inf\"} 2",
        "porter_allocation_seconds_count{outcome=\"success\"} 0",
        "porter_allocation_seconds_bucket{outcome=\"timeout\",le=\"0.005\"} 0",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert!(!text.contains("unknown.test"), "{text}");

    {
        let mut host = cell.lock();
        host.handle_timeout(t0 + Duration::from_secs(5));
        host.drain(&mut Vec::new());
    }
    let text = metrics(&api).await;
    for needle in [
        "porter_route_sessions{route=\"a.test\"} 0",
        "porter_route_datagrams_total{route=\"a.test\",direction=\"to_backend\"} 2",
        "porter_route_bytes_total{route=\"a.test\",direction=\"to_backend\"} 2400",
        "porter_session_duration_seconds_bucket{le=\"10\"} 2",
        "porter_session_duration_seconds_bucket{le=\"1\"} 0",
        "porter_session_duration_seconds_sum 10",
        "porter_session_duration_seconds_count 2",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}
