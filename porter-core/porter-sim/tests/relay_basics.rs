//! The relay on real client bytes: Chromium's two-datagram ClientHello is held and sent,
//! in order, by the session's `OpenUpstream`; an unknown SNI is refused with a
//! CONNECTION_CLOSE (a `Transmit` to the client) that rustls' client-side Initial keys
//! decrypt; an unknown version gets a well-formed Version Negotiation reply; timers close
//! what they must, upstreams included.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::capture;
use porter_core::wire::{parse_packet, Packet, Version as WireVersion};
use porter_core::{
    BackendAddr, ClientAddr, CloseReason, Command, DropReason, Notification, PathId, RefusalMode,
    RefuseReason, Relay, RelayConfig, Route, RouteName, RouteTarget, SessionId, SessionState,
    Verdict,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn relay_with(routes: &[(&str, &str)], config: RelayConfig) -> Relay {
    let mut relay = Relay::new(config);
    for (name, backend) in routes {
        relay
            .set_route(Route {
                name: RouteName::parse(name).unwrap(),
                target: RouteTarget::Simple(vec![BackendAddr(addr(backend))]),
                balance: Default::default(),
            })
            .unwrap();
    }
    relay
}

/// The commands, then the notifications, as a driver drains them.
fn drain(relay: &mut Relay) -> (Vec<Command>, Vec<Notification>) {
    let commands = std::iter::from_fn(|| relay.poll_command()).collect();
    let notifications = std::iter::from_fn(|| relay.poll_notification()).collect();
    (commands, notifications)
}

/// The one datagram the relay answered with: the drained commands must be exactly one
/// `Transmit` to `client`.
fn answer_to(relay: &mut Relay, client: ClientAddr) -> (Bytes, Vec<Notification>) {
    let (commands, notifications) = drain(relay);
    match &commands[..] {
        [Command::Transmit { to, datagram }] => {
            assert_eq!(*to, client, "the answer goes to the sender");
            (datagram.clone(), notifications)
        }
        other => panic!("expected one Transmit, got {other:?}"),
    }
}

#[test]
fn chromium_two_datagram_hello_is_released_in_order() {
    let datagrams = capture("chromium-156-h3.json");
    let mut relay = relay_with(
        &[
            ("game1.example.com", "10.0.0.1:4433"),
            ("*", "10.0.0.9:4433"),
        ],
        RelayConfig::default(),
    );
    let now = Instant::now();
    let client = ClientAddr(addr("192.0.2.7:50000"));
    let v1 = relay.handle_client_datagram(now, client, &datagrams[0].bytes);
    let Verdict::Held { session } = v1 else {
        panic!("first datagram: {v1:?}");
    };
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    assert_eq!(
        relay.session(session, now).unwrap().state,
        SessionState::AwaitingClientHello
    );
    let v2 = relay.handle_client_datagram(now, client, &datagrams[1].bytes);
    assert_eq!(v2, Verdict::Held { session });
    let (commands, notifications) = drain(&mut relay);
    let backend = BackendAddr(addr("10.0.0.1:4433"));
    match &commands[..] {
        [Command::OpenUpstream {
            session: s,
            client: c,
            backend: b,
            datagrams: released,
            ..
        }] => {
            assert_eq!((*s, *c, *b), (session, client, backend));
            assert_eq!(released.len(), 2);
            assert_eq!(released[0], datagrams[0].bytes);
            assert_eq!(released[1], datagrams[1].bytes);
        }
        other => panic!("unexpected commands {other:?}"),
    }
    match &notifications[..] {
        [Notification::SessionOpened {
            session: s,
            client: c,
            backend: b,
            sni,
            alpn,
            ..
        }] => {
            assert_eq!((*s, *c, *b), (session, client, backend));
            assert_eq!(sni.as_deref(), Some("game1.example.com"));
            assert_eq!(alpn, &vec![b"h3".to_vec()]);
        }
        other => panic!("unexpected notifications {other:?}"),
    }
    // Retransmissions now go straight to the backend.
    for d in &datagrams[2..] {
        assert_eq!(
            relay.handle_client_datagram(now, client, &d.bytes),
            Verdict::ToBackend {
                session,
                path: first_path(&relay, session, now),
                backend
            }
        );
    }
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    let stats = relay.stats();
    assert_eq!(stats.to_backend.datagrams, datagrams.len() as u64);
    assert_eq!(stats.buffered_bytes, 0);
}

/// Decrypts a server Initial with rustls' client-side Initial keys for `odcid` and
/// returns its plaintext payload.
fn open_with_rustls(packet: &[u8], odcid: &[u8], version: WireVersion) -> Vec<u8> {
    let (Packet::Long(long), _) = parse_packet(packet).unwrap() else {
        panic!("not a long header")
    };
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .unwrap()
        .quic_suite()
        .unwrap();
    let version = match version {
        WireVersion::V1 => rustls::quic::Version::V1,
        WireVersion::V2 => rustls::quic::Version::V2,
    };
    let keys = suite.keys(odcid, rustls::Side::Client, version);
    let mut bytes = long.bytes.to_vec();
    let pn_offset = long.pn_offset;
    let sample = bytes[pn_offset + 4..pn_offset + 20].to_vec();
    let (first, rest) = bytes.split_first_mut().unwrap();
    // The packet number length is unknown until the first byte is unmasked: pass 4 bytes
    // and use only as many as the unmasked first byte says.
    let mut pn = rest[pn_offset - 1..pn_offset + 3].to_vec();
    keys.remote
        .header
        .decrypt_in_place(&sample, first, &mut pn)
        .unwrap();
    let pn_len = usize::from(*first & 0x03) + 1;
    rest[pn_offset - 1..pn_offset - 1 + pn_len].copy_from_slice(&pn[..pn_len]);
    let number = pn[..pn_len]
        .iter()
        .fold(0u64, |n, &b| (n << 8) | u64::from(b));
    let (header, payload) = bytes.split_at_mut(pn_offset + pn_len);
    keys.remote
        .packet
        .decrypt_in_place(number, header, payload)
        .expect("rustls opens the relay's refusal")
        .to_vec()
}

#[test]
fn unknown_sni_is_refused_with_connection_refused() {
    for (file, version) in [
        ("aioquic-1.7-v1.json", WireVersion::V1),
        ("aioquic-1.7-v2.json", WireVersion::V2),
    ] {
        let datagrams = capture(file);
        let mut relay = relay_with(
            &[("other.example.com", "10.0.0.1:1")],
            RelayConfig::default(),
        );
        let now = Instant::now();
        let client = ClientAddr(addr("192.0.2.1:1234"));
        let verdict = relay.handle_client_datagram(now, client, &datagrams[0].bytes);
        assert_eq!(
            verdict,
            Verdict::Answered,
            "{file}: expected a refusal, got {verdict:?}"
        );
        let (reply, notifications) = answer_to(&mut relay, client);
        let (Packet::Long(request), _) = parse_packet(&datagrams[0].bytes).unwrap() else {
            panic!()
        };
        let (Packet::Long(answer), used) = parse_packet(&reply).unwrap() else {
            panic!("refusal is not a long header")
        };
        assert_eq!(used, reply.len());
        assert_eq!(answer.version, version);
        assert_eq!(answer.ty, porter_core::wire::LongType::Initial);
        assert_eq!(
            answer.dcid, request.scid,
            "{file}: reply goes to the client's SCID"
        );
        let payload = open_with_rustls(&reply, request.dcid, version);
        // CONNECTION_CLOSE (0x1c), error CONNECTION_REFUSED (0x02), frame type 0, no reason.
        assert_eq!(&payload[..4], &[0x1c, 0x02, 0x00, 0x00], "{file}");
        assert!(payload[4..].iter().all(|&b| b == 0), "only padding follows");
        // Refused, then closed; never opened, so no upstream to close.
        match &notifications[..] {
            [Notification::Refused {
                session,
                client: c,
                reason: RefuseReason::NoRoute,
                ..
            }, Notification::SessionClosed {
                reason: CloseReason::Refused(RefuseReason::NoRoute),
                info,
            }] => {
                assert_eq!((*c, info.id, info.client), (client, *session, client));
                assert_eq!(info.backend, None);
            }
            other => panic!("{file}: unexpected notifications {other:?}"),
        }
        assert_eq!(relay.session_count(), 0);
        assert_eq!(relay.stats().refused, 1);
    }
}

#[test]
fn refusal_can_be_silent() {
    let datagrams = capture("aioquic-1.7-v1.json");
    let config = RelayConfig {
        refusal: RefusalMode::Drop,
        ..RelayConfig::default()
    };
    let mut relay = relay_with(&[], config);
    let client = ClientAddr(addr("192.0.2.1:1234"));
    let verdict = relay.handle_client_datagram(Instant::now(), client, &datagrams[0].bytes);
    assert_eq!(verdict, Verdict::Drop(DropReason::NoRoute));
    assert_eq!(relay.stats().drops(DropReason::NoRoute), 1);
    // Nothing is sent; the refusal is still notified.
    let (commands, notifications) = drain(&mut relay);
    assert_eq!(commands, vec![]);
    assert!(matches!(
        &notifications[..],
        [
            Notification::Refused {
                reason: RefuseReason::NoRoute,
                ..
            },
            Notification::SessionClosed {
                reason: CloseReason::Refused(RefuseReason::NoRoute),
                ..
            }
        ]
    ));
}

#[test]
fn unknown_version_gets_version_negotiation() {
    let mut relay = relay_with(&[], RelayConfig::default());
    let client = ClientAddr(addr("192.0.2.1:1234"));
    let mut probe = vec![
        0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8, 1, 2, 3, 4, 5, 6, 7, 8, 3, 9, 9, 9,
    ];
    probe.resize(1200, 0);
    assert_eq!(
        relay.handle_client_datagram(Instant::now(), client, &probe),
        Verdict::Answered,
        "no Version Negotiation"
    );
    let (vn, notifications) = answer_to(&mut relay, client);
    assert_eq!(notifications, vec![], "no session");
    // RFC 8999 §6: long-header bit set, version 0, DCID = client's SCID, SCID = client's
    // DCID, then a list of 32-bit versions.
    assert_eq!(vn[0] & 0x80, 0x80);
    assert_eq!(&vn[1..5], &[0, 0, 0, 0]);
    assert_eq!(vn[5], 3);
    assert_eq!(&vn[6..9], &[9, 9, 9]);
    assert_eq!(vn[9], 8);
    assert_eq!(&vn[10..18], &[1, 2, 3, 4, 5, 6, 7, 8]);
    let versions: Vec<u32> = vn[18..]
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("whole versions")))
        .collect();
    assert_eq!(versions, vec![0x0000_0001, 0x6b33_43cf]);
    // Too small to deserve an answer.
    probe.truncate(1199);
    assert_eq!(
        relay.handle_client_datagram(Instant::now(), client, &probe),
        Verdict::Drop(DropReason::UnsupportedVersion)
    );
    assert_eq!(drain(&mut relay), (vec![], vec![]));
}

#[test]
fn small_initials_are_dropped() {
    let datagrams = capture("aioquic-1.7-v1.json");
    let mut relay = relay_with(&[("*", "10.0.0.1:1")], RelayConfig::default());
    let client = ClientAddr(addr("192.0.2.1:1234"));
    // aioquic pads with zeros after the packet; without the padding the datagram is short.
    let (_, used) = parse_packet(&datagrams[0].bytes).unwrap();
    let short = &datagrams[0].bytes[..used];
    assert!(short.len() < 1200);
    assert_eq!(
        relay.handle_client_datagram(Instant::now(), client, short),
        Verdict::Drop(DropReason::InitialTooSmall)
    );
}

#[test]
fn handshake_and_idle_timeouts_close_sessions() {
    let datagrams = capture("chromium-156-h3.json");
    let config = RelayConfig::default();
    let (idle, handshake) = (config.idle_timeout, config.handshake_timeout);
    let mut relay = relay_with(&[("*", "10.0.0.1:1")], config);
    let t0 = Instant::now();
    let client = ClientAddr(addr("192.0.2.1:1234"));
    // Half a ClientHello: closed at the handshake timeout.
    let _ = relay.handle_client_datagram(t0, client, &datagrams[0].bytes);
    assert_eq!(relay.poll_timeout(), Some(t0 + handshake));
    relay.handle_timeout(t0 + handshake - Duration::from_millis(1));
    assert_eq!(relay.session_count(), 1);
    relay.handle_timeout(t0 + handshake);
    assert_eq!(relay.session_count(), 0);
    let (commands, notifications) = drain(&mut relay);
    assert_eq!(commands, vec![], "never opened: no upstream to close");
    assert!(notifications.iter().any(|n| matches!(
        n,
        Notification::SessionClosed {
            reason: CloseReason::HandshakeTimeout,
            ..
        }
    )));

    // A routed session (validated: its client used the CID its backend issued) lives
    // while traffic flows, then idles out.
    let other = ClientAddr(addr("192.0.2.2:1234"));
    let _ = relay.handle_client_datagram(t0, other, &datagrams[0].bytes);
    let _ = relay.handle_client_datagram(t0, other, &datagrams[1].bytes);
    let session = relay.sessions(t0)[0].id;
    let server_cid = [0x5c; 8];
    let mut handshake_packet = vec![0xe0, 0, 0, 0, 1, 0, 8];
    handshake_packet.extend_from_slice(&server_cid);
    handshake_packet.extend_from_slice(&[1, 0]);
    let path = first_path(&relay, session, t0);
    assert!(matches!(
        relay.handle_backend_datagram(t0, path, &handshake_packet),
        Verdict::ToClient { .. }
    ));
    let mut reply = vec![0x40];
    reply.extend_from_slice(&server_cid);
    reply.extend_from_slice(&[0; 20]);
    assert!(matches!(
        relay.handle_client_datagram(t0, other, &reply),
        Verdict::ToBackend { .. }
    ));
    assert!(relay.session(session, t0).unwrap().validated);
    let t1 = t0 + idle / 2;
    assert!(matches!(
        relay.handle_backend_datagram(t1, first_path(&relay, session, t1), &[0x40, 1, 2, 3]),
        Verdict::ToClient { .. }
    ));
    relay.handle_timeout(t0 + idle);
    assert_eq!(relay.session_count(), 1, "activity at t1 keeps it alive");
    let deadline = relay.poll_timeout().unwrap();
    assert_eq!(deadline, t1 + idle);
    relay.handle_timeout(deadline);
    assert_eq!(relay.session_count(), 0);
    // Not drained since it opened: its OpenUpstream, then its CloseUpstream.
    let (commands, notifications) = drain(&mut relay);
    assert!(
        matches!(
            &commands[..],
            [
                Command::OpenUpstream { session: a, .. },
                Command::CloseUpstream { session: b, .. },
            ] if *a == session && *b == session
        ),
        "{commands:?}"
    );
    assert!(notifications.iter().any(|n| matches!(
        n,
        Notification::SessionClosed {
            reason: CloseReason::IdleTimeout,
            ..
        }
    )));
}

#[test]
fn retransmitted_initial_of_a_refused_connection_gets_the_refusal_again() {
    let datagrams = capture("aioquic-1.7-v1.json");
    let config = RelayConfig::default();
    let handshake = config.handshake_timeout;
    let mut relay = relay_with(&[], config);
    let client = ClientAddr(addr("192.0.2.1:1234"));
    let t0 = Instant::now();
    let verdict = relay.handle_client_datagram(t0, client, &datagrams[0].bytes);
    assert_eq!(verdict, Verdict::Answered, "not refused");
    let (first, _) = answer_to(&mut relay, client);
    // The client retransmits before it sees the refusal: same answer, no new session.
    for d in &datagrams[1..] {
        let verdict = relay.handle_client_datagram(t0, client, &d.bytes);
        assert_eq!(verdict, Verdict::Answered, "retransmission not answered");
        let (again, notifications) = answer_to(&mut relay, client);
        assert_eq!(again.len(), first.len());
        assert_eq!(relay.session_count(), 0);
        assert_eq!(notifications, vec![], "no new session, no notifications");
    }
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    assert_eq!(relay.stats().refused, 1);
    // After the handshake timeout the same DCID is a new attempt again.
    let later = t0 + handshake + Duration::from_millis(1);
    let verdict = relay.handle_client_datagram(later, client, &datagrams[0].bytes);
    assert_eq!(verdict, Verdict::Answered, "not refused");
    let (_, notifications) = answer_to(&mut relay, client);
    assert!(matches!(
        &notifications[..],
        [
            Notification::Refused { .. },
            Notification::SessionClosed { .. }
        ]
    ));
    assert_eq!(relay.stats().refused, 2);
}

#[test]
fn temporary_routes_expire_and_can_be_made_permanent() {
    let mut relay = relay_with(&[], RelayConfig::default());
    let t0 = Instant::now();
    let route = |name: &str| Route {
        name: RouteName::parse(name).unwrap(),
        target: RouteTarget::Simple(vec![BackendAddr(addr("10.0.0.1:1"))]),
        balance: Default::default(),
    };
    let ttl = Duration::from_secs(60);
    relay
        .set_route_until(route("gs-1.play.test"), t0 + ttl)
        .unwrap();
    relay
        .set_route_until(route("gs-2.play.test"), t0 + ttl)
        .unwrap();
    // Made permanent before it expires.
    relay.set_route(route("gs-2.play.test")).unwrap();
    assert_eq!(relay.poll_timeout(), Some(t0 + ttl));
    assert_eq!(
        relay.route_expiry(&RouteName::parse("gs-1.play.test").unwrap()),
        Some(t0 + ttl)
    );
    relay.handle_timeout(t0 + ttl - Duration::from_millis(1));
    assert_eq!(relay.routes().len(), 2);
    relay.handle_timeout(t0 + ttl);
    let names: Vec<String> = relay.routes().iter().map(|r| r.name.to_string()).collect();
    assert_eq!(names, vec!["gs-2.play.test"]);
    assert_eq!(
        drain(&mut relay),
        (
            vec![],
            vec![Notification::RouteExpired {
                name: RouteName::parse("gs-1.play.test").unwrap()
            }]
        )
    );
    assert_eq!(relay.poll_timeout(), None);
}

#[test]
fn closing_a_session_closes_its_upstream_or_cancels_its_allocation() {
    let chromium = capture("chromium-156-h3.json");
    let mut relay = relay_with(
        &[("game1.example.com", "10.0.0.1:4433")],
        RelayConfig::default(),
    );
    let now = Instant::now();
    let backend = BackendAddr(addr("10.0.0.1:4433"));

    // Pending (half a ClientHello): no upstream, nothing to cancel.
    let pending_client = ClientAddr(addr("192.0.2.1:1000"));
    let Verdict::Held { session: pending } =
        relay.handle_client_datagram(now, pending_client, &chromium[0].bytes)
    else {
        panic!("not held")
    };
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    assert!(relay.close_session(now, pending));
    let (commands, notifications) = drain(&mut relay);
    assert_eq!(commands, vec![]);
    assert!(matches!(
        &notifications[..],
        [Notification::SessionClosed { reason: CloseReason::Closed, info }]
            if info.id == pending && info.backend.is_none()
    ));

    // Routed: its upstream is closed, after the OpenUpstream that opened it. (The same
    // capture: its DCID is free again once the first session closed.)
    let routed_client = ClientAddr(addr("192.0.2.2:1000"));
    let _ = relay.handle_client_datagram(now, routed_client, &chromium[0].bytes);
    let Verdict::Held { session: routed } =
        relay.handle_client_datagram(now, routed_client, &chromium[1].bytes)
    else {
        panic!("not held")
    };
    let (commands, _) = drain(&mut relay);
    assert!(matches!(
        &commands[..],
        [Command::OpenUpstream { session, backend: b, .. }] if *session == routed && *b == backend
    ));
    let path = first_path(&relay, routed, now);
    assert!(relay.close_session(now, routed));
    let (commands, notifications) = drain(&mut relay);
    assert_eq!(
        commands,
        vec![Command::CloseUpstream {
            session: routed,
            path
        }]
    );
    assert!(matches!(
        &notifications[..],
        [Notification::SessionClosed { reason: CloseReason::Closed, info }]
            if info.id == routed && info.backend == Some(backend)
    ));
    assert!(!relay.close_session(now, routed), "closed already");
    assert_eq!(drain(&mut relay), (vec![], vec![]));

    // Waiting for its allocation: the allocation is cancelled, no upstream to close.
    let datagrams = capture("chromium-156-h3-long-sni.json");
    let mut relay = Relay::new(RelayConfig::default());
    relay
        .set_route(Route {
            name: RouteName::DEFAULT,
            target: RouteTarget::Agones {
                fleet: "fleet".into(),
            },
            balance: Default::default(),
        })
        .unwrap();
    let client = ClientAddr(addr("192.0.2.3:1000"));
    let _ = relay.handle_client_datagram(now, client, &datagrams[0].bytes);
    let Verdict::Held { session } = relay.handle_client_datagram(now, client, &datagrams[1].bytes)
    else {
        panic!("not held")
    };
    let (commands, notifications) = drain(&mut relay);
    let [Command::Allocate {
        id,
        session: s,
        fleet,
        client: c,
        ..
    }] = &commands[..]
    else {
        panic!("{commands:?}")
    };
    assert_eq!((*s, &**fleet, *c), (session, "fleet", client));
    assert_eq!(notifications, vec![]);
    assert!(relay.close_session(now, session));
    let (commands, notifications) = drain(&mut relay);
    assert_eq!(commands, vec![Command::CancelAllocation { id: *id }]);
    assert!(matches!(
        &notifications[..],
        [Notification::SessionClosed { reason: CloseReason::Closed, info }]
            if info.id == session && info.backend.is_none()
    ));
}

/// The first client path of a routed session.
fn first_path(relay: &Relay, session: SessionId, now: Instant) -> PathId {
    relay.session(session, now).expect("a live session").paths[0].id
}
