//! Upstream sockets as a budget (issue 14 item 1): every client path holds one socket (a
//! file descriptor and an ephemeral port), so the relay opens at most
//! `RelayConfig::max_paths` of them. A connection that would need one more is refused
//! with CONNECTION_CLOSE under its own reason, and a socket the I/O layer could not open
//! refuses its session the same way instead of ending it in silence.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use porter_core::{
    BackendAddr, ClientAddr, CloseReason, Command, DropReason, Notification, PathId, RefusalMode,
    RefuseReason, Relay, RelayConfig, Route, RouteName, RouteTarget, SessionId, Verdict,
};
use porter_sim::one_datagram_initial;

const BACKEND: &str = "10.0.0.1:4433";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn client(i: u8) -> ClientAddr {
    ClientAddr(addr(&format!("192.0.2.{i}:4000")))
}

fn relay(config: RelayConfig) -> Relay {
    let mut relay = Relay::new(config);
    relay
        .set_route(Route {
            name: RouteName::parse("game.example").unwrap(),
            target: RouteTarget::Simple(vec![BackendAddr(addr(BACKEND))]),
            balance: Default::default(),
        })
        .unwrap();
    relay
}

fn drain(relay: &mut Relay) -> (Vec<Command>, Vec<Notification>) {
    let commands = std::iter::from_fn(|| relay.poll_command()).collect();
    let notifications = std::iter::from_fn(|| relay.poll_notification()).collect();
    (commands, notifications)
}

/// What a drained batch looks like, reduced to what these tests assert: the commands'
/// kinds with their addressee, and the notifications' kinds with their reason.
fn shape(batch: &(Vec<Command>, Vec<Notification>)) -> (Vec<String>, Vec<String>) {
    let commands = batch
        .0
        .iter()
        .map(|c| match c {
            Command::OpenUpstream { path, client, .. } => format!("open {path} {client}"),
            Command::Transmit { to, .. } => format!("transmit {to}"),
            Command::CloseUpstream { path, .. } => format!("close {path}"),
            other => format!("{other:?}"),
        })
        .collect();
    let notifications = batch
        .1
        .iter()
        .map(|n| match n {
            Notification::SessionOpened { session, .. } => format!("opened {session}"),
            Notification::Refused {
                session, reason, ..
            } => format!("refused {session} {}", reason.as_str()),
            Notification::SessionClosed { reason, info } => {
                format!("closed {} {}", info.id, reason.as_str())
            }
            Notification::PathClosed { path, .. } => format!("path closed {path}"),
            other => format!("{other:?}"),
        })
        .collect();
    (commands, notifications)
}

/// The path of the one `OpenUpstream` among `commands`.
fn opened_path(commands: &[Command]) -> PathId {
    match commands {
        [Command::OpenUpstream { path, .. }] => *path,
        other => panic!("expected one OpenUpstream, got {other:?}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn a_connection_beyond_the_socket_cap_is_refused_with_its_own_reason_until_a_socket_is_free() {
    let mut relay = relay(RelayConfig {
        max_paths: 2,
        ..RelayConfig::default()
    });
    let t0 = Instant::now();
    for i in 1..=2u8 {
        let initial = one_datagram_initial("game.example", u64::from(i));
        let v = relay.handle_client_datagram(t0, client(i), &initial);
        assert_eq!(
            v,
            Verdict::Held {
                session: SessionId(u64::from(i))
            }
        );
        let (commands, _) = drain(&mut relay);
        assert!(matches!(&commands[..], [Command::OpenUpstream { .. }]));
    }
    // The third needs a third socket: refused at once, never routed.
    let third = one_datagram_initial("game.example", 3);
    assert_eq!(
        relay.handle_client_datagram(t0, client(3), &third),
        Verdict::Answered
    );
    let batch = drain(&mut relay);
    assert_eq!(
        shape(&batch),
        (
            strings(&["transmit 192.0.2.3:4000"]),
            strings(&["refused s3 socket_limit", "closed s3 socket_limit"])
        )
    );
    assert!(matches!(
        &batch.1[1],
        Notification::SessionClosed {
            reason: CloseReason::Refused(RefuseReason::SocketLimit),
            ..
        }
    ));
    let stats = relay.stats();
    assert_eq!(
        (stats.paths, stats.sessions_opened, stats.refused),
        (2, 2, 1)
    );
    assert_eq!(stats.refusals(RefuseReason::SocketLimit), 1);
    // Its retransmission gets the same answer, not a session.
    assert_eq!(
        relay.handle_client_datagram(t0, client(3), &third),
        Verdict::Answered
    );
    assert_eq!(relay.session_count(), 2);
    drain(&mut relay);

    // A session ends: its socket is free for the next connection.
    assert!(relay.close_session(t0, SessionId(1)));
    drain(&mut relay);
    let fourth = one_datagram_initial("game.example", 4);
    assert_eq!(
        relay.handle_client_datagram(t0, client(4), &fourth),
        Verdict::Held {
            session: SessionId(4)
        }
    );
    assert_eq!(relay.stats().paths, 2);
}

#[test]
fn with_refusals_dropped_a_connection_beyond_the_socket_cap_is_counted_under_socket_limit() {
    let mut relay = relay(RelayConfig {
        max_paths: 1,
        refusal: RefusalMode::Drop,
        ..RelayConfig::default()
    });
    let t0 = Instant::now();
    let first = one_datagram_initial("game.example", 1);
    assert!(matches!(
        relay.handle_client_datagram(t0, client(1), &first),
        Verdict::Held { .. }
    ));
    drain(&mut relay);
    let second = one_datagram_initial("game.example", 2);
    assert_eq!(
        relay.handle_client_datagram(t0, client(2), &second),
        Verdict::Drop(DropReason::SocketLimit)
    );
    assert_eq!(relay.stats().drops(DropReason::SocketLimit), 1);
    assert_eq!(
        shape(&drain(&mut relay)),
        (
            vec![],
            strings(&["refused s2 socket_limit", "closed s2 socket_limit"])
        )
    );
}

#[test]
fn an_upstream_socket_that_cannot_be_opened_refuses_its_session_with_a_connection_close() {
    let mut relay = relay(RelayConfig::default());
    let t0 = Instant::now();
    let initial = one_datagram_initial("game.example", 1);
    let _ = relay.handle_client_datagram(t0, client(1), &initial);
    let (commands, notifications) = drain(&mut relay);
    let path = opened_path(&commands);
    assert_eq!(
        commands,
        [Command::OpenUpstream {
            session: SessionId(1),
            path,
            client: client(1),
            backend: BackendAddr(addr(BACKEND)),
            datagrams: vec![Bytes::from(initial.clone())],
        }]
    );
    assert!(matches!(
        &notifications[..],
        [Notification::SessionOpened { .. }]
    ));

    // The I/O layer reports that the socket could not be opened (EMFILE, say).
    assert!(relay.upstream_failed(t0, path));
    assert_eq!(
        shape(&drain(&mut relay)),
        (
            strings(&["close s1/p0", "transmit 192.0.2.1:4000"]),
            strings(&["refused s1 socket_failed", "closed s1 socket_failed"])
        )
    );
    let stats = relay.stats();
    assert_eq!(
        (
            stats.sessions,
            stats.paths,
            stats.refused,
            stats.upstream_failures
        ),
        (0, 0, 1, 1)
    );
    assert_eq!(stats.refusals(RefuseReason::SocketFailed), 1);
    assert_eq!(stats.refusals(RefuseReason::SocketLimit), 0);
    // Reported twice: nothing happens.
    assert!(!relay.upstream_failed(t0, path));
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    // The client's retransmission is answered with the refusal again, not a new session.
    assert_eq!(
        relay.handle_client_datagram(t0, client(1), &initial),
        Verdict::Answered
    );
    assert_eq!(relay.session_count(), 0);
}

#[test]
fn a_failed_socket_with_refusals_dropped_is_counted_under_socket_failed() {
    let mut relay = relay(RelayConfig {
        refusal: RefusalMode::Drop,
        ..RelayConfig::default()
    });
    let t0 = Instant::now();
    let initial = one_datagram_initial("game.example", 1);
    let _ = relay.handle_client_datagram(t0, client(1), &initial);
    let path = opened_path(&drain(&mut relay).0);
    assert!(relay.upstream_failed(t0, path));
    assert_eq!(
        shape(&drain(&mut relay)),
        (
            strings(&["close s1/p0"]),
            strings(&["refused s1 socket_failed", "closed s1 socket_failed"])
        )
    );
    assert_eq!(relay.stats().drops(DropReason::SocketFailed), 1);
}
