//! Temporary routes (`POST /allocate`) expire in the relay and their deletion is queued
//! for Redis, so other instances drop them too.

use std::time::{Duration, Instant};

use porter_control::sync::{Change, RouteSync, RouteType, SharedRoute};
use porter_core::{Relay, RelayConfig};
use porter_host::{HostCell, RelayHandle, RelayHost};

#[test]
fn an_expired_route_is_deleted_from_redis_too() {
    // The engine's part is played by hand: its timer task locks the host, expires what is
    // due, drains, and hands the notifications to the subscribers once unlocked.
    let cell = HostCell::new(RelayHost::new(Relay::new(RelayConfig::default()), false));
    let handle = RelayHandle::new(cell.clone());
    let sync = RouteSync::with_instance(handle.clone(), "porter_routes", "instance-a");
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

    let notes = {
        let mut host = cell.lock();
        host.handle_timeout(t0 + Duration::from_secs(30));
        let mut commands = Vec::new();
        host.drain(&mut commands);
        assert!(host.relay().routes().is_empty());
        host.take_notifications()
    };
    assert!(
        sync.pending_writes().is_empty(),
        "nothing reaches the sync while the host is locked"
    );
    cell.deliver(&notes);
    let writes = sync.pending_writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    match &writes[0].change {
        Change::Delete(name) => assert_eq!(name.to_string(), "gs-1.play.test"),
        other => panic!("expected a deletion, got {other:?}"),
    }
}
