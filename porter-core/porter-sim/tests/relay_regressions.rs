//! Regression tests for bugs the simulation and property tests found in the relay, each
//! named after its bug.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use porter_core::wire::Version;
use porter_core::{
    BackendAddr, ClientAddr, CloseReason, Command, DropReason, Notification, PathId, Relay,
    RelayConfig, Route, RouteName, RouteTarget, SessionId, SessionState, Verdict,
};
use porter_sim::one_datagram_initial;

fn initial(sni: &str, seed: u64) -> Vec<u8> {
    one_datagram_initial(sni, seed)
}

fn client() -> ClientAddr {
    ClientAddr(SocketAddr::from(([192, 0, 2, 1], 4433)))
}

fn relay(config: RelayConfig, target: RouteTarget) -> Relay {
    let mut relay = Relay::new(config);
    relay
        .set_route(Route {
            name: RouteName::DEFAULT,
            target,
            balance: Default::default(),
        })
        .unwrap();
    relay
}

fn simple() -> RouteTarget {
    RouteTarget::Simple(vec![BackendAddr(SocketAddr::from(([10, 0, 0, 1], 443)))])
}

/// Drains the relay as a driver does: commands, then notifications.
fn drain(relay: &mut Relay) {
    while relay.poll_command().is_some() {}
    while relay.poll_notification().is_some() {}
}

fn open(relay: &mut Relay, now: Instant) -> SessionId {
    let v = relay.handle_client_datagram(now, client(), &initial("a.test", 1));
    let Verdict::Held { session } = v else {
        panic!("{v:?}")
    };
    drain(relay);
    session
}

/// The session's timer stayed at its handshake deadline after it was routed, so an idle
/// timeout shorter than the handshake timeout fired late (at the handshake deadline).
#[test]
fn idle_timeout_shorter_than_handshake_timeout_fires_on_time() {
    let config = RelayConfig {
        idle_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(5),
        ..RelayConfig::default()
    };
    let mut relay = relay(config, simple());
    let t0 = Instant::now();
    let session = open(&mut relay, t0);
    let path = relay.session(session, t0).unwrap().paths[0].id;
    assert_eq!(relay.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    relay.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(
        relay.session(session, t0),
        None,
        "closed at its idle deadline"
    );
    let commands: Vec<Command> = std::iter::from_fn(|| relay.poll_command()).collect();
    assert_eq!(commands, vec![Command::CloseUpstream { session, path }]);
    let closed = std::iter::from_fn(|| relay.poll_notification()).any(|n| {
        matches!(
            n,
            Notification::SessionClosed {
                reason: CloseReason::IdleTimeout,
                ..
            }
        )
    });
    assert!(closed);
}

/// A session waiting for its allocation was counted twice in `pending_sessions` (once
/// as pending, once as an allocation in flight).
#[test]
fn pending_sessions_not_double_counted_while_allocating() {
    let target = RouteTarget::Agones {
        fleet: "fleet".into(),
    };
    let mut relay = relay(RelayConfig::default(), target);
    let now = Instant::now();
    let session = open(&mut relay, now);
    assert!(matches!(
        relay.session(session, now).unwrap().state,
        SessionState::Allocating(_)
    ));
    let stats = relay.stats();
    assert_eq!((stats.sessions, stats.allocations_in_flight), (1, 1));
    assert_eq!(stats.pending_sessions, 1);
}

/// A backend datagram for a session not routed yet (no backend, so no upstream socket
/// could have received it) was forwarded to the client, and its long headers' Source
/// CIDs were learned into the session's CID table.
#[test]
fn backend_datagram_for_unrouted_session_is_dropped() {
    let target = RouteTarget::Agones {
        fleet: "fleet".into(),
    };
    let mut relay = relay(RelayConfig::default(), target);
    let now = Instant::now();
    let session = open(&mut relay, now);
    assert!(relay.session(session, now).unwrap().paths.is_empty());
    let cids = relay.stats().connection_ids;
    let mut long = Vec::new();
    porter_sim::long_header_packet(
        Version::V1,
        &porter_core::initial::LongPacketSpec {
            ty: porter_core::wire::LongType::Handshake,
            dcid: &[],
            scid: &[9; 8],
            token: &[],
            packet_number: 0,
            pn_len: 2,
        },
        &[0; 32],
        &mut long,
    );
    assert_eq!(
        // No path exists until the session is routed: not the one it would get first.
        relay.handle_backend_datagram(now, PathId(1), &long),
        Verdict::Drop(DropReason::UnknownSession)
    );
    assert_eq!(relay.stats().connection_ids, cids, "nothing learned");
    assert_eq!(relay.stats().to_client.datagrams, 0);
}

/// With two connections on one client socket, a short header with an unknown CID was
/// given to the most recently active one: a connection that switched CID had its
/// datagrams sent to the other connection's backend, and its new CID learned for the
/// wrong session.
#[test]
fn unknown_cid_on_a_shared_socket_is_not_guessed() {
    let mut relay = relay(RelayConfig::default(), simple());
    let now = Instant::now();
    let mut sessions = Vec::new();
    for seed in [1, 2] {
        let v = relay.handle_client_datagram(now, client(), &initial("a.test", seed));
        let Verdict::Held { session } = v else {
            panic!("{v:?}")
        };
        drain(&mut relay);
        // The backend answers from its own 8-byte CID.
        let mut answer = Vec::new();
        porter_sim::long_header_packet(
            Version::V1,
            &porter_core::initial::LongPacketSpec {
                ty: porter_core::wire::LongType::Handshake,
                dcid: &[],
                scid: &[seed as u8; 8],
                token: &[],
                packet_number: 0,
                pn_len: 2,
            },
            &[0; 32],
            &mut answer,
        );
        let path = relay.session(session, now).unwrap().paths[0].id;
        let v = relay.handle_backend_datagram(now, path, &answer);
        assert!(matches!(v, Verdict::ToClient { .. }), "{v:?}");
        sessions.push((session, path));
    }
    let known = porter_sim::short_header_packet(0, &[1; 8], 0, &[0; 40]);
    assert_eq!(
        relay.handle_client_datagram(now, client(), &known),
        Verdict::ToBackend {
            session: sessions[0].0,
            path: sessions[0].1,
            backend: BackendAddr(SocketAddr::from(([10, 0, 0, 1], 443))),
        }
    );
    let cids = relay.stats().connection_ids;
    let unknown = porter_sim::short_header_packet(0, &[7; 8], 0, &[0; 40]);
    assert_eq!(
        relay.handle_client_datagram(now, client(), &unknown),
        Verdict::Drop(DropReason::UnknownConnection)
    );
    assert_eq!(relay.stats().connection_ids, cids);
}
