//! Admission at the edge (issue 14): what a spoofing sender can make the relay spend.
//!
//! - A refused connection's replays are answered only in full-size datagrams from the
//!   refused address, within a budget of their own: a 17-byte replay from anywhere gets
//!   nothing, and no amount of replays spends the new-session budget.
//! - ClientHello reassembly memory is charged to the buffer budgets: pending sessions
//!   with CRYPTO frames at far offsets count what they pin, and are refused as full once
//!   the total budget is spent.
//! - A session whose client never uses a CID the backend issued ends at its handshake
//!   timeout however much the backend sends; one whose client does lives to its idle
//!   timeout (acceptance 2).
//! - Agones: 1 000 Initials from 1 000 sources in one second ask for at most the fleet's
//!   budget; 100 from one IP for at most its prefix's share (acceptance 4).
//!
//! The flood of acceptance 3 is in `admission_flood.rs`.

use std::net::SocketAddr;
use std::time::Instant;

use porter_core::initial::{Keys, Side};
use porter_core::wire::Version;
use porter_core::{
    BackendAddr, ClientAddr, CloseReason, Command, DropReason, Notification, Relay, RelayConfig,
    Route, RouteName, RouteTarget, Verdict,
};
use porter_sim::{
    client_initial_flight, initial_spec, seal_padded, write_crypto, ClientHelloSpec,
    InitialFlightSpec, SimRng,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn routed(name: &str, config: RelayConfig) -> Relay {
    let mut relay = Relay::new(config);
    relay
        .set_route(Route {
            name: RouteName::parse(name).unwrap(),
            target: RouteTarget::Simple(vec![BackendAddr(addr("10.0.0.1:4433"))]),
            balance: Default::default(),
        })
        .unwrap();
    relay
}

/// A client's first Initial datagram (1200 bytes) asking for `sni`, with this DCID.
fn first_initial(rng: &mut SimRng, sni: &str, dcid: &[u8]) -> Vec<u8> {
    let hello = ClientHelloSpec {
        sni: Some(sni.to_owned()),
        alpn: vec![b"h3".to_vec()],
        initial_scid: vec![7; 8],
        post_quantum: false,
    }
    .build(rng);
    let spec = InitialFlightSpec {
        version: Version::V1,
        dcid,
        scid: &[7; 8],
        token: &[],
        first_packet_number: 0,
        datagram_size: 1200,
        chaos: false,
    };
    let mut flight = client_initial_flight(&spec, &hello);
    assert_eq!(flight.len(), 1, "a small ClientHello fits one datagram");
    flight.remove(0)
}

/// The shortest datagram whose first packet is a v1 Initial with this DCID: 17 bytes for
/// an 8-byte DCID (the reflection probe of the issue).
fn tiny_initial(dcid: &[u8]) -> Vec<u8> {
    let mut out = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
    out.extend_from_slice(dcid);
    out.extend_from_slice(&[0, 0, 0]); // no SCID, no token, Length 0
    out
}

fn drain(relay: &mut Relay) -> (Vec<Command>, Vec<Notification>) {
    let commands = std::iter::from_fn(|| relay.poll_command()).collect();
    let notifications = std::iter::from_fn(|| relay.poll_notification()).collect();
    (commands, notifications)
}

#[test]
fn replays_of_a_refusal_are_answered_only_full_size_from_the_refused_address_and_never_spend_new_session_tokens(
) {
    let mut rng = SimRng::new(14);
    let config = RelayConfig {
        // Tiny budgets: one new session a second (two at once), one replay answer.
        new_sessions_per_second: 1,
        new_sessions_burst: 2,
        refusal_replays_per_second: 1,
        ..RelayConfig::default()
    };
    let mut relay = routed("known.example", config);
    let t0 = Instant::now();
    let client = ClientAddr(addr("192.0.2.1:4000"));
    let refused_dcid = [0x11; 8];
    let refused = first_initial(&mut rng, "unknown.example", &refused_dcid);
    assert_eq!(
        relay.handle_client_datagram(t0, client, &refused),
        Verdict::Answered
    );
    let (commands, _) = drain(&mut relay);
    assert!(matches!(&commands[..], [Command::Transmit { to, .. }] if *to == client));

    // 100 17-byte replays, from the refused address and from others: no reply at all.
    let tiny = tiny_initial(&refused_dcid);
    assert_eq!(tiny.len(), 17);
    for i in 0..100u16 {
        let from = if i % 2 == 0 {
            client
        } else {
            ClientAddr(addr(&format!("203.0.113.{}:{}", i % 250, 1000 + i)))
        };
        assert_eq!(
            relay.handle_client_datagram(t0, from, &tiny),
            Verdict::Drop(DropReason::RecentlyRefused),
            "replay {i} from {from}"
        );
        assert_eq!(drain(&mut relay), (vec![], vec![]), "replay {i}: no reply");
    }
    // Full-size replays from elsewhere: no reply either (a reflection at the forged
    // source).
    for i in 0..20u16 {
        let from = ClientAddr(addr(&format!("198.51.100.7:{}", 2000 + i)));
        assert_eq!(
            relay.handle_client_datagram(t0, from, &refused),
            Verdict::Drop(DropReason::RecentlyRefused)
        );
        assert_eq!(drain(&mut relay), (vec![], vec![]));
    }
    // Full-size replays from the refused address: answered within their own budget (one
    // now), the rest dropped.
    assert_eq!(
        relay.handle_client_datagram(t0, client, &refused),
        Verdict::Answered
    );
    let (commands, _) = drain(&mut relay);
    assert!(matches!(&commands[..], [Command::Transmit { to, .. }] if *to == client));
    for _ in 0..100 {
        assert_eq!(
            relay.handle_client_datagram(t0, client, &refused),
            Verdict::Drop(DropReason::RecentlyRefused)
        );
    }
    assert_eq!(drain(&mut relay), (vec![], vec![]));
    assert_eq!(relay.stats().refused, 1, "replays make no new refusal");
    assert_eq!(relay.stats().drops(DropReason::RecentlyRefused), 220);

    // The new-session budget is untouched: a valid Initial from elsewhere is admitted.
    let stranger = ClientAddr(addr("198.51.100.99:5000"));
    let fresh = first_initial(&mut rng, "known.example", &[0x22; 8]);
    let verdict = relay.handle_client_datagram(t0, stranger, &fresh);
    assert!(
        matches!(verdict, Verdict::Held { .. }),
        "a new connection after the replays: {verdict:?}"
    );
    let (commands, _) = drain(&mut relay);
    assert!(
        matches!(&commands[..], [Command::OpenUpstream { client, .. }] if *client == stranger),
        "{commands:?}"
    );
    assert_eq!(relay.stats().drops(DropReason::RateLimited), 0);
}

/// A 1200-byte Initial whose only CRYPTO frame sits at `offset`: it decrypts, so it opens
/// a pending session, and its reassembly buffer must reach past `offset`.
fn far_crypto_initial(dcid: &[u8], offset: u64) -> Vec<u8> {
    let keys = Keys::initial(Version::V1, dcid, Side::Client);
    let mut payload = Vec::new();
    write_crypto(offset, &[0x16; 32], &mut payload);
    let mut out = Vec::new();
    seal_padded(&keys, &initial_spec(dcid, &[9; 8], 0), &payload, &mut out);
    assert!(out.len() >= 1200);
    out
}

#[test]
fn reassembly_memory_is_charged_to_the_buffer_budgets_and_sessions_past_it_are_dropped_as_full() {
    const TOTAL: usize = 1 << 20;
    let config = RelayConfig {
        max_buffered_total: TOTAL,
        ..RelayConfig::default()
    };
    let mut relay = routed("known.example", config);
    let t0 = Instant::now();
    let mut held = 0;
    let mut full = 0;
    for i in 0..100u32 {
        let mut dcid = [0x33; 8];
        dcid[..4].copy_from_slice(&i.to_be_bytes());
        let datagram = far_crypto_initial(&dcid, 15_000);
        let from = ClientAddr(addr(&format!("192.0.2.{}:{}", i % 200 + 1, 3000 + i)));
        match relay.handle_client_datagram(t0, from, &datagram) {
            Verdict::Held { .. } => held += 1,
            Verdict::Drop(DropReason::BufferFull) => full += 1,
            other => panic!("session {i}: {other:?}"),
        }
        let stats = relay.stats();
        assert!(stats.buffered_bytes <= TOTAL, "{stats:?}");
    }
    let stats = relay.stats();
    assert_eq!(stats.pending_sessions, held);
    // Every pending session pins its datagram and a reassembly buffer past offset 15 000.
    assert!(
        stats.reassembly_bytes >= held * 15_032,
        "reassembly memory counted: {stats:?}"
    );
    assert!(
        stats.buffered_bytes >= held * (1200 + 15_032),
        "the counted buffer includes reassembly: {stats:?}"
    );
    // 1 MiB holds about 60 such sessions, not 100.
    assert!((50..=70).contains(&held), "{held} held, {full} full");
    assert_eq!(held + full, 100);
    assert_eq!(stats.drops(DropReason::BufferFull), full as u64);
    // Once they end, nothing is left counted.
    for _ in 0..3 {
        while let Some(deadline) = relay.poll_timeout() {
            relay.handle_timeout(deadline);
            drain(&mut relay);
        }
    }
    let stats = relay.stats();
    assert_eq!((stats.buffered_bytes, stats.reassembly_bytes), (0, 0));
}

#[test]
fn a_session_whose_reassembly_outgrows_the_budget_ends_as_buffer_full() {
    let config = RelayConfig {
        max_buffered_per_session: 8 * 1024,
        ..RelayConfig::default()
    };
    let mut relay = routed("known.example", config);
    let t0 = Instant::now();
    let dcid = [0x44; 8];
    let client = ClientAddr(addr("192.0.2.9:9000"));
    // A first Initial at offset 0 fits; a second reaching offset 12 000 does not.
    let keys = Keys::initial(Version::V1, &dcid, Side::Client);
    let packet = |pn: u64, offset: u64| {
        let mut payload = Vec::new();
        // A handshake header announcing a long ClientHello, so neither completes it.
        let data: &[u8] = if offset == 0 {
            &[1, 0, 0x30, 0]
        } else {
            &[0; 32]
        };
        write_crypto(offset, data, &mut payload);
        let mut out = Vec::new();
        seal_padded(&keys, &initial_spec(&dcid, &[9; 8], pn), &payload, &mut out);
        out
    };
    let verdict = relay.handle_client_datagram(t0, client, &packet(0, 0));
    assert!(matches!(verdict, Verdict::Held { .. }), "{verdict:?}");
    assert_eq!(
        relay.handle_client_datagram(t0, client, &packet(1, 12_000)),
        Verdict::Drop(DropReason::BufferFull)
    );
    let (_, notifications) = drain(&mut relay);
    assert!(
        notifications.iter().any(|n| matches!(
            n,
            Notification::SessionClosed {
                reason: CloseReason::BufferFull,
                ..
            }
        )),
        "{notifications:?}"
    );
    let stats = relay.stats();
    assert_eq!((stats.sessions, stats.buffered_bytes), (0, 0));
}

/// The upstream path of the session `commands` opened.
fn opened_path(commands: &[Command]) -> porter_core::PathId {
    commands
        .iter()
        .find_map(|c| match c {
            Command::OpenUpstream { path, .. } => Some(*path),
            _ => None,
        })
        .expect("the session was routed")
}

/// A backend's Handshake packet with this Source CID (its content does not matter to
/// the relay).
fn backend_handshake(scid: &[u8]) -> Vec<u8> {
    let mut out = vec![0xe0, 0, 0, 0, 1, 0, scid.len() as u8];
    out.extend_from_slice(scid);
    out.extend_from_slice(&[1, 0]);
    out
}

fn short_header(dcid: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    out.extend_from_slice(dcid);
    out.extend_from_slice(&[0x5a; 30]);
    out
}

fn closed_as(notifications: &[Notification]) -> Vec<&'static str> {
    notifications
        .iter()
        .filter_map(|n| match n {
            Notification::SessionClosed { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_whose_client_never_uses_a_backend_cid_ends_at_its_handshake_timeout_however_much_the_backend_sends(
) {
    use std::time::Duration;
    let mut rng = SimRng::new(2);
    let mut relay = routed("known.example", RelayConfig::default());
    let (handshake, idle) = (
        relay.config().handshake_timeout,
        relay.config().idle_timeout,
    );
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let server_cid = [0x5e; 8];

    // Forged: the client's address never sees the backend's answers, so all it can send
    // is what it chose itself: its original DCID, in long and short headers.
    let forged = ClientAddr(addr("198.51.100.7:4000"));
    let odcid = [0x61; 8];
    let initial = first_initial(&mut rng, "known.example", &odcid);
    assert!(matches!(
        relay.handle_client_datagram(t0, forged, &initial),
        Verdict::Held { .. }
    ));
    let (commands, _) = drain(&mut relay);
    let forged_path = opened_path(&commands);
    let session = forged_path.session();
    assert_eq!(relay.stats().unvalidated_sessions, 1);

    // Real: it answers with the CID the backend issued.
    let real = ClientAddr(addr("192.0.2.8:4000"));
    let real_initial = first_initial(&mut rng, "known.example", &[0x62; 8]);
    assert!(matches!(
        relay.handle_client_datagram(t0, real, &real_initial),
        Verdict::Held { .. }
    ));
    let (commands, _) = drain(&mut relay);
    let real_path = opened_path(&commands);
    let real_cid = [0x5f; 8];

    // Both backends issue a CID, then keep sending every 100 ms, for longer than the
    // handshake timeout.
    for (path, cid) in [(forged_path, &server_cid), (real_path, &real_cid)] {
        assert!(matches!(
            relay.handle_backend_datagram(ms(10), path, &backend_handshake(cid)),
            Verdict::ToClient { .. }
        ));
    }
    // The forger retransmits its Initial and sends short headers with its own DCID;
    // the real client uses the backend's CID.
    assert!(matches!(
        relay.handle_client_datagram(ms(20), forged, &initial),
        Verdict::ToBackend { .. }
    ));
    assert!(matches!(
        relay.handle_client_datagram(ms(20), forged, &short_header(&odcid)),
        Verdict::ToBackend { .. }
    ));
    assert!(matches!(
        relay.handle_client_datagram(ms(20), real, &short_header(&real_cid)),
        Verdict::ToBackend { .. }
    ));
    assert!(!relay.session(session, ms(20)).unwrap().validated);
    assert!(
        relay
            .session(real_path.session(), ms(20))
            .unwrap()
            .validated
    );
    let stats = relay.stats();
    assert_eq!(
        (stats.unvalidated_sessions, stats.sessions_validated),
        (1, 1)
    );

    let mut at = 100;
    while at < handshake.as_millis() as u64 + 2_000 {
        for path in [forged_path, real_path] {
            let v = relay.handle_backend_datagram(ms(at), path, &short_header(&[7; 8]));
            let alive = relay.session(path.session(), ms(at)).is_some();
            assert_eq!(matches!(v, Verdict::ToClient { .. }), alive);
        }
        relay.handle_timeout(ms(at));
        let alive = relay.session(session, ms(at)).is_some();
        assert_eq!(
            alive,
            ms(at) < t0 + handshake,
            "the unvalidated session at {at} ms"
        );
        at += 100;
    }
    let (_, notifications) = drain(&mut relay);
    assert_eq!(closed_as(&notifications), ["handshake_timeout"]);
    // It ended at created + handshake_timeout to the instant: the relay's timer was
    // due then, not later.
    let mut relay2 = routed("known.example", RelayConfig::default());
    let _ = relay2.handle_client_datagram(t0, forged, &initial);
    let (commands, _) = drain(&mut relay2);
    let path = opened_path(&commands);
    let _ = relay2.handle_backend_datagram(ms(10), path, &backend_handshake(&server_cid));
    let _ = relay2.handle_backend_datagram(
        t0 + handshake - Duration::from_millis(1),
        path,
        &[0x40; 30],
    );
    assert_eq!(relay2.poll_timeout(), Some(t0 + handshake));

    // The validated one lives on while its backend sends, and ends at its idle timeout.
    assert!(relay.session(real_path.session(), ms(at)).is_some());
    let last = ms(at - 100);
    relay.handle_timeout(last + idle - Duration::from_millis(1));
    assert!(relay.session(real_path.session(), last).is_some());
    relay.handle_timeout(last + idle);
    assert!(relay.session(real_path.session(), last).is_none());
    let (_, notifications) = drain(&mut relay);
    assert_eq!(closed_as(&notifications), ["idle_timeout"]);
    assert_eq!(relay.stats().unvalidated_sessions, 0);
}

fn agones(config: RelayConfig) -> Relay {
    let mut relay = Relay::new(config);
    relay
        .set_route(Route {
            name: RouteName::parse("play.example").unwrap(),
            target: RouteTarget::Agones {
                fleet: "arena".into(),
            },
            balance: Default::default(),
        })
        .unwrap();
    relay
}

fn allocations(relay: &mut Relay) -> usize {
    let (commands, _) = drain(relay);
    commands
        .iter()
        .filter(|c| matches!(c, Command::Allocate { .. }))
        .count()
}

#[test]
fn a_thousand_initials_from_a_thousand_sources_in_one_second_ask_for_at_most_the_fleets_budget_and_one_ip_for_its_prefixs_share(
) {
    use std::time::Duration;
    let config = RelayConfig::default();
    let (per_fleet, per_prefix) = (
        config.allocations_per_second_per_fleet as usize,
        config.allocations_per_second_per_prefix as usize,
    );
    assert!(per_fleet < 1000 && per_prefix < 100 && config.max_pending_allocations > 1000);
    let mut relay = agones(config);
    let mut rng = SimRng::new(3);
    let t0 = Instant::now();
    // 1 000 sources, each of its own /24, one Initial a millisecond.
    let mut asked = 0;
    let mut refused = 0;
    for i in 0..1000u32 {
        let [_, _, x, y] = i.to_be_bytes();
        let from = ClientAddr(SocketAddr::from(([100, 64 + x, y, 1], 5000)));
        let mut dcid = [0x71; 8];
        dcid[4..].copy_from_slice(&i.to_be_bytes());
        let initial = first_initial(&mut rng, "play.example", &dcid);
        let now = t0 + Duration::from_millis(u64::from(i));
        match relay.handle_client_datagram(now, from, &initial) {
            Verdict::Held { .. } => {}
            Verdict::Answered => refused += 1,
            other => panic!("{other:?}"),
        }
        asked += allocations(&mut relay);
    }
    assert_eq!(asked, per_fleet, "the fleet's budget, and no more");
    assert_eq!(refused, 1000 - per_fleet);
    let stats = relay.stats();
    assert_eq!(stats.allocations.requested, per_fleet as u64);
    assert_eq!(stats.allocations.over_budget, (1000 - per_fleet) as u64);

    // 100 Initials from one IP in the next second: its prefix's share.
    let mut relay = agones(RelayConfig::default());
    let from = ClientAddr(addr("203.0.113.50:6000"));
    let mut asked = 0;
    for i in 0..100u32 {
        let mut dcid = [0x72; 8];
        dcid[4..].copy_from_slice(&i.to_be_bytes());
        let initial = first_initial(&mut rng, "play.example", &dcid);
        let now = t0 + Duration::from_millis(u64::from(i) * 10);
        let _ = relay.handle_client_datagram(now, from, &initial);
        asked += allocations(&mut relay);
    }
    assert_eq!(asked, per_prefix);
    // Another prefix is not held back by it.
    let initial = first_initial(&mut rng, "play.example", &[0x73; 8]);
    let now = t0 + Duration::from_millis(990);
    let v = relay.handle_client_datagram(now, ClientAddr(addr("198.51.100.1:1")), &initial);
    assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    assert_eq!(allocations(&mut relay), 1);
}
