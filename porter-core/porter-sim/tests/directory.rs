//! Connection-ID directory lookups, as tables of inputs and exact outputs: a short header
//! no rule routes becomes a `LookupConnection` (the datagram held); the answer opens a
//! session carrying every held datagram, or drops them counted; lookups are bounded,
//! rate-limited and expire on the relay's timer; and a routed session announces its CIDs
//! (original DCID at routing, then each backend SCID) for the directory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porter_core::wire::Version;
use porter_core::{
    BackendAddr, ClientAddr, Command, ConnectionId, DirectoryConfig, DropReason, LookupId,
    Notification, PathId, Relay, RelayConfig, Verdict,
};
use porter_sim::{
    one_datagram_initial, server_first_flight, short_header_packet, simple_route, SimRng,
};

const BACKEND: &str = "10.0.0.5:4433";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn backend() -> BackendAddr {
    BackendAddr(addr(BACKEND))
}

fn relay(directory: DirectoryConfig) -> Relay {
    let mut relay = Relay::new(RelayConfig {
        directory,
        ..RelayConfig::default()
    });
    relay
        .set_route(simple_route("game.example.com", &[backend()]))
        .unwrap();
    relay
}

fn on() -> DirectoryConfig {
    DirectoryConfig {
        enabled: true,
        ..DirectoryConfig::default()
    }
}

fn drain(relay: &mut Relay) -> (Vec<Command>, Vec<Notification>) {
    let commands = std::iter::from_fn(|| relay.poll_command()).collect();
    let notifications = std::iter::from_fn(|| relay.poll_notification()).collect();
    (commands, notifications)
}

/// A short-header datagram of another instance's connection, whose CID is 8 bytes.
fn foreign(n: u8) -> Vec<u8> {
    short_header_packet(0, &[0xc0, 1, 2, 3, 4, 5, 6, 7], n, &[n; 60])
}

fn cid8() -> ConnectionId {
    ConnectionId::new(&[0xc0, 1, 2, 3, 4, 5, 6, 7]).unwrap()
}

#[test]
fn without_lookups_an_unknown_cid_is_dropped_as_today() {
    let mut relay = relay(DirectoryConfig::default());
    let client = ClientAddr(addr("198.51.100.7:5000"));
    let v = relay.handle_client_datagram(Instant::now(), client, &foreign(1));
    assert_eq!(v, Verdict::Drop(DropReason::UnknownConnection));
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    assert_eq!(relay.stats().lookups.asked, 0);
}

#[test]
fn an_unknown_cid_is_looked_up_and_the_answer_opens_a_session_with_the_held_datagrams() {
    let mut relay = relay(on());
    let now = Instant::now();
    let client = ClientAddr(addr("198.51.100.7:5000"));
    let (first, second) = (foreign(1), foreign(2));
    let v = relay.handle_client_datagram(now, client, &first);
    let Verdict::Held { session } = v else {
        panic!("{v:?}")
    };
    // The DCID bytes: everything after the first octet, at most 20.
    assert_eq!(
        drain(&mut relay),
        (
            vec![Command::LookupConnection {
                id: LookupId(1),
                client,
                dcid: Bytes::copy_from_slice(&first[1..21]),
            }],
            vec![]
        )
    );
    // The client's next datagram joins the pending lookup: no second one.
    assert_eq!(
        relay.handle_client_datagram(now, client, &second),
        Verdict::Held { session }
    );
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    assert_eq!(relay.poll_timeout(), Some(now + on().lookup_timeout));

    let later = now + Duration::from_millis(3);
    relay
        .complete_lookup(later, LookupId(1), Some((cid8(), backend())))
        .unwrap();
    let (commands, notifications) = drain(&mut relay);
    assert_eq!(
        commands,
        [Command::OpenUpstream {
            session,
            path: PathId(session.0 << 16),
            client,
            backend: backend(),
            datagrams: vec![Bytes::from(first.clone()), Bytes::from(second.clone())],
        }]
    );
    assert_eq!(
        notifications,
        [
            Notification::SessionOpened {
                session,
                client,
                backend: backend(),
                sni: None,
                alpn: vec![],
                version: Version::V1,
                waited: Duration::ZERO,
            },
            Notification::ConnectionIdsLearned {
                session,
                backend: backend(),
                cids: vec![cid8()],
            },
        ]
    );
    // Its next datagrams are known: they go straight to the backend.
    assert!(matches!(
        relay.handle_client_datagram(later, client, &foreign(3)),
        Verdict::ToBackend { session: s, .. } if s == session
    ));
    let c = relay.stats().lookups;
    assert_eq!((c.asked, c.found, c.not_found, c.pending), (1, 1, 0, 0));
    // A second answer is a caller's mistake, typed.
    assert!(relay.complete_lookup(later, LookupId(1), None).is_err());
}

#[test]
fn not_found_a_cid_the_datagram_does_not_carry_and_timeouts_drop_the_held_datagrams() {
    let mut relay = relay(on());
    let now = Instant::now();
    let (a, b, c) = (
        ClientAddr(addr("198.51.100.7:5000")),
        ClientAddr(addr("198.51.100.8:5000")),
        ClientAddr(addr("198.51.100.9:5000")),
    );
    for client in [a, b, c] {
        let v = relay.handle_client_datagram(now, client, &foreign(1));
        assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    }
    let _ = relay.handle_client_datagram(now, a, &foreign(2));
    drain(&mut relay);
    relay.complete_lookup(now, LookupId(1), None).unwrap();
    let other = ConnectionId::new(&[9; 8]).unwrap();
    relay
        .complete_lookup(now, LookupId(2), Some((other, backend())))
        .unwrap();
    assert_eq!(drain(&mut relay), (vec![], vec![]), "nothing opened");
    let stats = relay.stats();
    assert_eq!(stats.drops(DropReason::LookupFailed), 3);
    // The third was never answered: the relay's timer ends it.
    let timeout = relay.config().directory.lookup_timeout;
    assert_eq!(relay.poll_timeout(), Some(now + timeout));
    relay.handle_timeout(now + timeout - Duration::from_millis(1));
    assert_eq!(relay.stats().lookups.pending, 1);
    relay.handle_timeout(now + timeout);
    let stats = relay.stats();
    assert_eq!(stats.drops(DropReason::LookupTimeout), 1);
    assert_eq!(
        (
            stats.lookups.not_found,
            stats.lookups.timed_out,
            stats.lookups.pending
        ),
        (2, 1, 0)
    );
    assert_eq!(relay.poll_timeout(), None);
    // The late answer is discarded.
    assert!(relay
        .complete_lookup(now + timeout, LookupId(3), Some((cid8(), backend())))
        .is_err());
    assert_eq!(relay.session_count(), 0);
}

#[test]
fn lookups_are_bounded_in_count_held_datagrams_bytes_and_rate() {
    let config = DirectoryConfig {
        max_pending_lookups: 2,
        max_datagrams_per_lookup: 2,
        max_bytes_per_lookup: 200,
        lookups_per_second: 3,
        ..on()
    };
    let mut relay = relay(config);
    let now = Instant::now();
    let client = |n: u16| ClientAddr(SocketAddr::new(addr("198.51.100.7:1").ip(), 5000 + n));
    let held = |v: Verdict| matches!(v, Verdict::Held { .. });
    assert!(held(relay.handle_client_datagram(
        now,
        client(0),
        &foreign(1)
    )));
    assert!(held(relay.handle_client_datagram(
        now,
        client(0),
        &foreign(2)
    )));
    // A third datagram for the same lookup: over the count.
    assert_eq!(
        relay.handle_client_datagram(now, client(0), &foreign(3)),
        Verdict::Drop(DropReason::LookupLimit)
    );
    // Over the bytes: a datagram bigger than a lookup may hold never starts one.
    let big = short_header_packet(0, &[0xc0; 8], 1, &[0; 300]);
    assert_eq!(
        relay.handle_client_datagram(now, client(1), &big),
        Verdict::Drop(DropReason::LookupLimit)
    );
    assert!(held(relay.handle_client_datagram(
        now,
        client(1),
        &foreign(1)
    )));
    // Over the lookups pending.
    assert_eq!(
        relay.handle_client_datagram(now, client(2), &foreign(1)),
        Verdict::Drop(DropReason::LookupLimit)
    );
    relay.complete_lookup(now, LookupId(1), None).unwrap();
    relay.complete_lookup(now, LookupId(2), None).unwrap();
    // Room again; the third lookup of the second empties the bucket of 3.
    assert!(held(relay.handle_client_datagram(
        now,
        client(3),
        &foreign(1)
    )));
    assert_eq!(
        relay.handle_client_datagram(now, client(4), &foreign(1)),
        Verdict::Drop(DropReason::LookupRateLimited)
    );
    let stats = relay.stats();
    assert_eq!(stats.lookups.rate_limited, 1);
    assert_eq!(stats.drops(DropReason::LookupLimit), 3);
    assert_eq!(stats.drops(DropReason::LookupRateLimited), 1);
    // Tokens come back with time.
    let later = now + Duration::from_secs(1);
    assert!(held(relay.handle_client_datagram(
        later,
        client(4),
        &foreign(1)
    )));
}

#[test]
fn a_routed_session_announces_its_original_dcid_then_each_backend_cid() {
    let mut relay = relay(on());
    let now = Instant::now();
    let client = ClientAddr(addr("198.51.100.7:5000"));
    let initial = one_datagram_initial("game.example.com", 7);
    let odcid = ConnectionId::new(&initial[6..14]).unwrap();
    let v = relay.handle_client_datagram(now, client, &initial);
    let Verdict::Held { session } = v else {
        panic!("{v:?}")
    };
    let (_, notifications) = drain(&mut relay);
    assert_eq!(
        notifications.last(),
        Some(&Notification::ConnectionIdsLearned {
            session,
            backend: backend(),
            cids: vec![odcid],
        })
    );
    // The backend's first flight names its CID: announced once, however often it comes.
    let scid = [0x5c; 8];
    let flight = server_first_flight(
        Version::V1,
        odcid.as_bytes(),
        &[],
        &scid,
        0,
        1200,
        &mut SimRng::new(1),
    );
    let path = PathId(session.0 << 16);
    for _ in 0..2 {
        let v = relay.handle_backend_datagram(now, path, &flight);
        assert!(matches!(v, Verdict::ToClient { .. }), "{v:?}");
    }
    let (_, notifications) = drain(&mut relay);
    assert_eq!(
        notifications,
        [Notification::ConnectionIdsLearned {
            session,
            backend: backend(),
            cids: vec![ConnectionId::new(&scid).unwrap()],
        }]
    );
    // Without lookups nothing is announced.
    let mut quiet = new_relay(DirectoryConfig::default());
    let _ = quiet.handle_client_datagram(now, client, &initial);
    let (_, notifications) = drain(&mut quiet);
    assert!(!notifications
        .iter()
        .any(|n| matches!(n, Notification::ConnectionIdsLearned { .. })));
}

/// [`relay`], for tests whose relay variable shadows it.
fn new_relay(directory: DirectoryConfig) -> Relay {
    relay(directory)
}

#[test]
fn a_found_connection_that_cannot_be_adopted_is_dropped_under_the_reason_and_a_race_is_not_doubled()
{
    let mut relay = relay(on());
    let now = Instant::now();
    let (a, b) = (
        ClientAddr(addr("198.51.100.7:5000")),
        ClientAddr(addr("198.51.100.8:5000")),
    );
    // Two clients (or one that rebound twice) ask for the same connection at once.
    for client in [a, b] {
        let v = relay.handle_client_datagram(now, client, &foreign(1));
        assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    }
    drain(&mut relay);
    relay
        .complete_lookup(now, LookupId(1), Some((cid8(), backend())))
        .unwrap();
    assert_eq!(relay.session_count(), 1);
    drain(&mut relay);
    // The second answer names a CID known here by now: no second session; the client's
    // next datagram finds the first.
    relay
        .complete_lookup(now, LookupId(2), Some((cid8(), backend())))
        .unwrap();
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    assert_eq!(relay.session_count(), 1);
    assert_eq!(relay.stats().drops(DropReason::LookupFailed), 1);

    // Draining: found, but no new session; counted as such.
    let mut draining = new_relay(on());
    let _ = draining.handle_client_datagram(now, a, &foreign(1));
    let _ = draining.handle_client_datagram(now, a, &foreign(2));
    drain(&mut draining);
    draining.set_accepting(false);
    draining
        .complete_lookup(now, LookupId(1), Some((cid8(), backend())))
        .unwrap();
    assert_eq!(drain(&mut draining), (vec![], vec![]));
    assert_eq!(draining.stats().drops(DropReason::Draining), 2);
    assert_eq!(draining.stats().lookups.found, 1);
}

#[test]
fn a_late_datagram_of_a_connection_that_ended_here_is_not_looked_up() {
    let mut relay = relay(on());
    let now = Instant::now();
    let client = ClientAddr(addr("198.51.100.7:5000"));
    let _ = relay.handle_client_datagram(now, client, &foreign(1));
    drain(&mut relay);
    relay
        .complete_lookup(now, LookupId(1), Some((cid8(), backend())))
        .unwrap();
    let (_, notes) = drain(&mut relay);
    let Some(Notification::SessionOpened { session, .. }) = notes.first() else {
        panic!("{notes:?}")
    };
    assert!(relay.close_session(now, *session));
    drain(&mut relay);
    assert_eq!(
        relay.handle_client_datagram(now, client, &foreign(2)),
        Verdict::Drop(DropReason::EndedConnection)
    );
    assert_eq!(relay.stats().lookups.asked, 1);
}
