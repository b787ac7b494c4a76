//! The host's per-route accounting and histograms, driven with real Initial packets
//! (porter-sim's builders) through a [`RelayHost`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use porter_core::{
    BackendAddr, ClientAddr, Relay, RelayConfig, Route, RouteName, RouteTarget, Traffic, Verdict,
};
use std::sync::Arc;

use porter_host::{HostCell, RelayHandle, RelayHost, RouteStats, NO_ROUTE_LABEL};
use porter_sim::one_datagram_initial;

fn initial(sni: &str, seed: u64) -> Vec<u8> {
    one_datagram_initial(sni, seed)
}

fn client(port: u16) -> ClientAddr {
    ClientAddr(SocketAddr::from(([192, 0, 2, 1], port)))
}

fn backend(last: u8) -> BackendAddr {
    BackendAddr(SocketAddr::from(([10, 0, 0, last], 443)))
}

fn route(name: &str, backend: BackendAddr) -> Route {
    Route {
        name: RouteName::parse(name).unwrap(),
        target: RouteTarget::Simple(vec![backend]),
        balance: Default::default(),
    }
}

/// A connection from `port` asking for `sni`, through the host as the engine does it.
fn connect(cell: &HostCell, now: Instant, port: u16, sni: &str) -> Verdict {
    let mut host = handle_host(cell);
    let verdict = host.client_datagram(now, client(port), &initial(sni, u64::from(port)));
    host.drain(&mut Vec::new());
    drop(host.take_notifications());
    verdict
}

/// The host behind `handle`, as the engine locks it.
fn handle_host(cell: &HostCell) -> std::sync::MutexGuard<'_, RelayHost> {
    cell.lock()
}

fn host(config: RelayConfig) -> (Arc<HostCell>, RelayHandle) {
    let cell = HostCell::new(RelayHost::new(Relay::new(config), false));
    (cell.clone(), RelayHandle::new(cell))
}

fn route_stats(handle: &RelayHandle, name: &str) -> Option<RouteStats> {
    handle.stats().routes.into_iter().find(|r| r.route == name)
}

#[test]
fn sessions_refusals_and_traffic_count_per_route() {
    let config = RelayConfig {
        idle_timeout: Duration::from_secs(10),
        ..RelayConfig::default()
    };
    let (cell, handle) = host(config);
    handle.set_route(route("a.test", backend(1)), None).unwrap();
    handle
        .set_route(route("*.b.test", backend(2)), None)
        .unwrap();
    let t0 = Instant::now();

    // A fresh relay shows every route, at zero.
    let stats = handle.stats();
    let names: Vec<&str> = stats.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(names, ["a.test", "*.b.test"]);
    assert!(stats.routes[0].sessions == 0 && stats.routes[0].sessions_opened == 0);

    // Two sessions on a.test, one on the wildcard.
    for port in [1000, 1001] {
        let v = connect(&cell, t0, port, "a.test");
        assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    }
    let v = connect(&cell, t0, 1002, "x.b.test");
    assert!(matches!(v, Verdict::Held { .. }), "{v:?}");

    // No route: refused under `none`, never under the server name.
    let _ = connect(&cell, t0, 1003, "nowhere.test");
    // A route whose only backend is down: refused under that route.
    assert!(handle.set_backend_health(backend(2), false));
    let _ = connect(&cell, t0, 1004, "y.b.test");

    let stats = handle.stats();
    let a = route_stats(&handle, "a.test").unwrap();
    assert_eq!((a.sessions, a.sessions_opened, a.refusals), (2, 2, 0));
    assert_eq!(
        a.to_backend,
        Traffic::default(),
        "traffic counts at session end"
    );
    let b = route_stats(&handle, "*.b.test").unwrap();
    assert_eq!((b.sessions, b.sessions_opened, b.refusals), (1, 1, 1));
    assert_eq!(stats.refused_without_route, 1);
    assert!(stats.routes.iter().all(|r| r.route != "nowhere.test"));
    assert!(stats.routes.iter().all(|r| r.route != NO_ROUTE_LABEL));
    assert_eq!(stats.histograms.routing_wait.count(), 3);
    assert_eq!(stats.histograms.session_duration.count(), 0);

    // The idle timeout ends every session: traffic lands on each route.
    let t1 = t0 + Duration::from_secs(10);
    {
        let mut host = handle_host(&cell);
        host.handle_timeout(t1);
        host.drain(&mut Vec::new());
    }
    let stats = handle.stats();
    let a = route_stats(&handle, "a.test").unwrap();
    assert_eq!((a.sessions, a.sessions_opened), (0, 2));
    assert_eq!(
        a.to_backend,
        Traffic {
            datagrams: 2,
            bytes: 2400
        }
    );
    assert_eq!(a.to_client, Traffic::default());
    let b = route_stats(&handle, "*.b.test").unwrap();
    assert_eq!((b.to_backend.datagrams, b.to_backend.bytes), (1, 1200));
    let duration = &stats.histograms.session_duration;
    assert_eq!(duration.count(), 3);
    assert_eq!(duration.sum(), Duration::from_secs(30));
    // 10 s sits in the 10 s bucket (bounds are inclusive).
    let ten = duration
        .buckets()
        .into_iter()
        .find(|(le, _)| *le == Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(ten.1, 3);

    // A removed route's counters go at the next read once it has no open session.
    handle.remove_route(&RouteName::parse("a.test").unwrap());
    assert!(route_stats(&handle, "a.test").is_none());
    assert!(route_stats(&handle, "*.b.test").is_some());
}

#[test]
fn a_removed_route_keeps_its_counters_while_its_sessions_live() {
    let (cell, handle) = host(RelayConfig::default());
    handle.set_route(route("a.test", backend(1)), None).unwrap();
    let t0 = Instant::now();
    let v = connect(&cell, t0, 2000, "a.test");
    assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    handle.remove_route(&RouteName::parse("a.test").unwrap());
    let a = route_stats(&handle, "a.test").unwrap();
    assert_eq!((a.sessions, a.sessions_opened), (1, 1));
}
