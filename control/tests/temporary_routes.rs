//! Temporary routes (`POST /allocate`) expire in the relay and their deletion is queued
//! for Redis, so other instances drop them too.

use std::time::{Duration, Instant};

use control::host::RelayHost;
use control::sync::{Change, RouteSync, RouteType, SharedRoute};
use porter_test_support::host;

#[test]
fn an_expired_route_is_deleted_from_redis_too() {
    let host = host();
    let sync = RouteSync::with_instance(host.clone(), "porter_routes", "instance-a");
    let shared = SharedRoute::from_entry(RouteType::Simple, "gs-1.play.test", "127.0.0.1:7000")
        .expect("valid route");
    let route = shared.to_route().expect("resolves");
    let t0 = Instant::now();
    sync.set_route_until(route, shared, t0 + Duration::from_secs(30))
        .expect("installed");
    let writes = sync.pending_writes();
    assert!(matches!(&writes[..], [w] if matches!(w.change, Change::Set(_))));
    for w in &writes {
        sync.written(w);
    }

    {
        let mut host = RelayHost::lock(&host);
        host.handle_timeout(t0 + Duration::from_secs(30));
        let mut actions = Vec::new();
        host.drain(&mut actions);
        assert!(host.relay().routes().is_empty());
    }
    let writes = sync.pending_writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    match &writes[0].change {
        Change::Delete(name) => assert_eq!(name.to_string(), "gs-1.play.test"),
        other => panic!("expected a deletion, got {other:?}"),
    }
}
