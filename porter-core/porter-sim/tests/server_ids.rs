//! Server IDs of allocated game servers: an allocation answer that names the game server's
//! QUIC-LB server ID makes CIDs carrying it route to that game server while it has
//! sessions; an invalid or conflicting ID is counted and the allocation still used.

use std::net::SocketAddr;
use std::time::Instant;

use porter_core::quic_lb::{Config, ServerId};
use porter_core::{
    AllocationId, BackendAddr, ClientAddr, Command, DropReason, QuicLbRouting, Relay, RelayConfig,
    Route, RouteName, RouteTarget, ServerIdBinding, SessionId, Verdict,
};
use porter_sim::{one_datagram_initial, short_header_packet};

const GS1: &str = "10.1.0.1:7777";
const GS2: &str = "10.1.0.2:7777";
const STATIC: &str = "10.2.0.1:443";

fn backend(text: &str) -> BackendAddr {
    BackendAddr(text.parse().unwrap())
}

fn client(port: u16) -> ClientAddr {
    ClientAddr(SocketAddr::from(([198, 51, 100, 7], port)))
}

/// Plaintext CIDs of config ID 1 with two-octet server IDs; server `00ff` is in the
/// configuration (a simple backend), the others come from allocations.
fn lb() -> Config {
    Config::new(1, 2, 6, None).unwrap()
}

fn relay(quic_lb: bool) -> Relay {
    let mut routing = QuicLbRouting::new();
    if quic_lb {
        routing.insert_config(lb());
        routing.insert_server(ServerId::new(&[0, 0xff]).unwrap(), backend(STATIC));
    }
    let mut relay = Relay::new(RelayConfig {
        quic_lb: routing,
        ..RelayConfig::default()
    });
    relay
        .set_route(Route {
            name: RouteName::DEFAULT,
            target: RouteTarget::Agones {
                fleet: "arena".into(),
            },
            balance: Default::default(),
        })
        .unwrap();
    relay
}

/// A new connection from `from` that waits for its allocation: its allocation ID.
fn connect(relay: &mut Relay, now: Instant, from: ClientAddr, seed: u64) -> AllocationId {
    let v = relay.handle_client_datagram(now, from, &one_datagram_initial("play.test", seed));
    assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    let commands: Vec<Command> = std::iter::from_fn(|| relay.poll_command()).collect();
    while relay.poll_notification().is_some() {}
    match &commands[..] {
        [Command::Allocate { id, .. }] => *id,
        other => panic!("expected one Allocate, got {other:?}"),
    }
}

/// The backends the drained commands open upstreams to.
fn opened(relay: &mut Relay) -> Vec<BackendAddr> {
    while relay.poll_notification().is_some() {}
    std::iter::from_fn(|| relay.poll_command())
        .filter_map(|c| match c {
            Command::OpenUpstream { backend, .. } => Some(backend),
            _ => None,
        })
        .collect()
}

/// A short-header datagram under a CID carrying `server`.
fn moved_datagram(server: [u8; 2], nonce: u8) -> Vec<u8> {
    let cid = lb().encode(&server, &[nonce; 6]).unwrap();
    short_header_packet(0x40, cid.as_bytes(), 1, &[7; 40])
}

#[test]
fn an_allocated_server_id_routes_while_its_game_server_has_sessions() {
    let mut relay = relay(true);
    let now = Instant::now();
    let alloc = connect(&mut relay, now, client(1000), 1);
    let bound = relay.complete_allocation_with_server_id(now, alloc, backend(GS1), "0001");
    assert_eq!(bound, Ok(ServerIdBinding::Bound));
    assert_eq!(opened(&mut relay), [backend(GS1)]);
    assert_eq!(relay.stats().quic_lb.allocated_server_ids, 1);

    // The client changes address and CID at once: the CID's server ID names GS1.
    let moved = relay.handle_client_datagram(now, client(2000), &moved_datagram([0, 1], 3));
    let Verdict::Held { session: adopted } = moved else {
        panic!("{moved:?}")
    };
    assert_eq!(opened(&mut relay), [backend(GS1)]);
    assert_eq!(relay.stats().quic_lb.routed, 1);

    // The ID lives as long as a session on GS1 does: the adopted one keeps it after the
    // first one ends.
    assert!(relay.close_session(now, SessionId(1)));
    assert_eq!(relay.stats().quic_lb.allocated_server_ids, 1);
    let again = relay.handle_client_datagram(now, client(3000), &moved_datagram([0, 1], 4));
    assert!(matches!(again, Verdict::Held { .. }), "{again:?}");
    let Verdict::Held { session: second } = again else {
        unreachable!()
    };
    assert!(relay.close_session(now, adopted));
    assert!(relay.close_session(now, second));
    assert_eq!(relay.stats().quic_lb.allocated_server_ids, 0);
    while relay.poll_command().is_some() {}
    assert_eq!(
        relay.handle_client_datagram(now, client(4000), &moved_datagram([0, 1], 5)),
        Verdict::Drop(DropReason::UnknownConnection),
        "no session on GS1 any more: the ID routes nowhere"
    );
    assert_eq!(relay.stats().quic_lb.unknown_server, 1);
}

#[test]
fn invalid_and_conflicting_server_ids_are_counted_and_the_allocation_used() {
    let mut relay = relay(true);
    let now = Instant::now();
    let first = connect(&mut relay, now, client(1000), 1);
    assert_eq!(
        relay.complete_allocation_with_server_id(now, first, backend(GS1), "0x0001"),
        Ok(ServerIdBinding::Bound)
    );
    assert_eq!(opened(&mut relay), [backend(GS1)]);
    // A second player on the same game server: the same ID, the same backend.
    let same = connect(&mut relay, now, client(1001), 2);
    assert_eq!(
        relay.complete_allocation_with_server_id(now, same, backend(GS1), "0001"),
        Ok(ServerIdBinding::Bound)
    );
    assert_eq!(opened(&mut relay), [backend(GS1)]);

    for (seed, id, backend_text, outcome) in [
        (3, "zz", GS2, ServerIdBinding::Invalid),
        (4, "000102", GS2, ServerIdBinding::Invalid),
        (5, "", GS2, ServerIdBinding::Invalid),
        // GS1 has it, with sessions: GS2 may not take it.
        (6, "0001", GS2, ServerIdBinding::Conflict),
        // The configuration gives 00ff to another backend.
        (7, "00ff", GS2, ServerIdBinding::Conflict),
        // Configured for this very backend: nothing to add.
        (8, "00ff", STATIC, ServerIdBinding::Bound),
    ] {
        let alloc = connect(&mut relay, now, client(1100 + seed), seed.into());
        assert_eq!(
            relay.complete_allocation_with_server_id(now, alloc, backend(backend_text), id),
            Ok(outcome),
            "{id:?}"
        );
        assert_eq!(
            opened(&mut relay),
            [backend(backend_text)],
            "{id:?}: the allocation is used"
        );
    }
    let c = relay.stats().quic_lb;
    assert_eq!(
        (
            c.invalid_server_ids,
            c.server_id_conflicts,
            c.allocated_server_ids
        ),
        (3, 2, 1)
    );
    // 0001 still names GS1.
    let moved = relay.handle_client_datagram(now, client(2000), &moved_datagram([0, 1], 9));
    assert!(matches!(moved, Verdict::Held { .. }), "{moved:?}");
    assert_eq!(opened(&mut relay), [backend(GS1)]);
    // A late answer is the caller's misuse, as with `complete_allocation`.
    assert!(relay
        .complete_allocation_with_server_id(now, first, backend(GS1), "0001")
        .is_err());
}

#[test]
fn without_quic_lb_the_server_id_is_unused() {
    let mut relay = relay(false);
    let now = Instant::now();
    let alloc = connect(&mut relay, now, client(1000), 1);
    assert_eq!(
        relay.complete_allocation_with_server_id(now, alloc, backend(GS1), "0001"),
        Ok(ServerIdBinding::Disabled)
    );
    assert_eq!(opened(&mut relay), [backend(GS1)]);
    assert_eq!(relay.stats().quic_lb.invalid_server_ids, 0);
}
