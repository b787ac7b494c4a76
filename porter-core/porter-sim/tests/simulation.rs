//! Deterministic simulations of the relay (`porter_sim`): virtual time, a network
//! with latency, jitter, loss, duplication and reordering from a fixed seed, client and
//! server models that put real QUIC headers on the wire, and the relay driven exactly as
//! a runtime driver drives it. Every test names the backend each client must reach and
//! checks the relay's counters, so a routing mistake fails it.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porter_core::wire::Version;
use porter_core::{
    BackendAddr, ClientAddr, CloseReason, Command, DropReason, Notification, RefuseReason,
    RelayConfig, SessionId, Verdict,
};
use porter_sim::{
    AllocatorBehaviour, ConnId, ConnState, ConnectSpec, HelloShape, LinkConditions, LogEntry,
    ServerConfig, ServerId, Sim, SimConfig,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::from((
        [192, 0, 2, (i / 50_000 + 1) as u8],
        (10_000 + i % 50_000) as u16,
    ))
}

fn sim(seed: u64, network: LinkConditions) -> Sim {
    Sim::new(
        Instant::now(),
        SimConfig {
            seed,
            network,
            ..SimConfig::default()
        },
    )
}

fn server(sim: &mut Sim, name: &str, at: &str) -> ServerId {
    sim.add_server(ServerConfig::new(name, addr(at)))
}

/// The backend the relay gave the session that carries `conn`, from its SessionOpened.
fn backend_of(sim: &Sim, conn: ConnId) -> Option<BackendAddr> {
    let session = sim.session_of(conn)?;
    sim.driver().notifications().find_map(|(_, n)| match n {
        Notification::SessionOpened {
            session: s,
            backend,
            ..
        } if *s == session => Some(*backend),
        _ => None,
    })
}

fn name_at(sim: &Sim, backend: BackendAddr) -> String {
    sim.server_at(backend).unwrap().config().name.clone()
}

/// Every session's OpenUpstream sends exactly the datagrams the relay held for it, in the
/// order they reached the relay; its SessionOpened (same session, client and backend)
/// follows in the same drain, before the next input; every CloseUpstream comes after its
/// session's OpenUpstream and with its SessionClosed; nothing contradicts the driver's
/// view. Returns the OpenUpstreams checked.
fn assert_held_datagrams_sent_in_arrival_order(sim: &Sim) -> usize {
    let mut held: HashMap<SessionId, Vec<Bytes>> = HashMap::new();
    // OpenUpstreams whose SessionOpened is still to come: (session, client, backend, at).
    let mut announce: Vec<(SessionId, ClientAddr, BackendAddr, Instant)> = Vec::new();
    let mut open: Vec<SessionId> = Vec::new();
    let mut closing: Vec<SessionId> = Vec::new();
    let mut opens = 0;
    for entry in sim.driver().log() {
        match entry {
            LogEntry::Client { .. } | LogEntry::Backend { .. } | LogEntry::Completed { .. } => {
                assert_eq!(announce, [], "SessionOpened missing before the next input");
                assert_eq!(closing, [], "SessionClosed missing before the next input");
            }
            _ => {}
        }
        match entry {
            LogEntry::Client {
                bytes,
                verdict: Verdict::Held { session },
                ..
            } => held.entry(*session).or_default().push(bytes.clone()),
            LogEntry::Command {
                at,
                command:
                    Command::OpenUpstream {
                        session,
                        client,
                        backend,
                        datagrams,
                        ..
                    },
            } if !open.contains(session) => {
                let held = held.remove(session).unwrap_or_default();
                assert_eq!(datagrams, &held, "{session}: sent out of arrival order");
                assert!(!open.contains(session), "{session} opened twice");
                open.push(*session);
                announce.push((*session, *client, *backend, *at));
                opens += 1;
            }
            LogEntry::Command {
                command: Command::CloseUpstream { session, .. },
                ..
            } => {
                assert!(
                    open.contains(session),
                    "{session}: CloseUpstream before its OpenUpstream"
                );
                closing.push(*session);
            }
            LogEntry::Notification {
                notification: Notification::PathClosed { session, .. },
                ..
            } => {
                // The path's CloseUpstream, not the session's.
                let Some(i) = closing.iter().position(|s| s == session) else {
                    panic!("{session}: PathClosed without its CloseUpstream");
                };
                closing.remove(i);
            }
            LogEntry::Notification {
                at,
                notification:
                    Notification::SessionOpened {
                        session,
                        client,
                        backend,
                        ..
                    },
            } => {
                assert_eq!(
                    announce.first(),
                    Some(&(*session, *client, *backend, *at)),
                    "{session}: SessionOpened with its OpenUpstream, in order"
                );
                announce.remove(0);
            }
            LogEntry::Notification {
                notification: Notification::SessionClosed { info, .. },
                ..
            } => {
                assert_eq!(
                    info.backend.is_some(),
                    closing.contains(&info.id),
                    "{}: a CloseUpstream exactly when it was opened",
                    info.id
                );
                closing.retain(|s| *s != info.id);
                open.retain(|s| *s != info.id);
            }
            _ => {}
        }
    }
    assert_eq!(announce, []);
    assert_eq!(closing, []);
    assert_eq!(sim.driver().stats().inconsistencies, 0);
    opens
}

fn all_done(sim: &Sim, conns: &[ConnId]) -> bool {
    conns.iter().all(|&c| {
        let c = sim.conn(c);
        c.state() != ConnState::Connecting && c.answered() >= c.wanted() as usize
    })
}

#[test]
fn hundreds_of_clients_across_snis_reach_their_backends() {
    let mut sim = sim(0x5eed_0001, LinkConditions::lossy());
    let a = server(&mut sim, "a", "10.1.0.1:443");
    let b1 = server(&mut sim, "b1", "10.1.0.2:443");
    let b2 = server(&mut sim, "b2", "10.1.0.3:443");
    let g = server(&mut sim, "games", "10.1.0.4:443");
    let d = server(&mut sim, "default", "10.1.0.5:443");
    sim.route("a.example.com", &[a]);
    sim.route("b.example.com", &[b1, b2]);
    sim.route("*.games.example.com", &[g]);
    sim.route("*", &[d]);

    // (SNI, the backend names it may reach)
    let targets: [(Option<&str>, &[&str]); 6] = [
        (Some("a.example.com"), &["a"]),
        (Some("A.Example.COM."), &["a"]),
        (Some("b.example.com"), &["b1", "b2"]),
        (Some("eu-1.games.example.com"), &["games"]),
        (Some("other.org"), &["default"]),
        (None, &["default"]),
    ];
    let mut conns = Vec::new();
    for i in 0..300 {
        let (sni, _) = targets[i % targets.len()];
        let client = sim.add_client(client_addr(i));
        let mut spec = ConnectSpec::new("placeholder.example");
        spec.sni = sni.map(str::to_owned);
        spec.version = if i % 4 == 3 { Version::V2 } else { Version::V1 };
        spec.dcid_len = 8 + i % 13;
        spec.scid_len = [0, 8, 4, 20][i % 4];
        if i % 3 == 0 {
            spec.hello = HelloShape::Large;
            spec.datagram_size = 1250;
        }
        conns.push(sim.connect(client, spec));
        // Clients arrive over the first three seconds.
        sim.run_for(Duration::from_millis(10));
    }
    let done = sim.run_until_done(Duration::from_secs(30), |s| all_done(s, &conns));
    assert!(done, "every client connected and got its answers");

    let mut per_b = HashMap::new();
    for (i, &c) in conns.iter().enumerate() {
        let (_, allowed) = targets[i % targets.len()];
        let conn = sim.conn(c);
        assert_eq!(conn.state(), ConnState::Connected, "client {i}");
        let backend = backend_of(&sim, c).expect("a session was opened");
        let expected = name_at(&sim, backend);
        assert!(
            allowed.contains(&expected.as_str()),
            "client {i}: {expected}"
        );
        assert_eq!(conn.servers(), [expected.as_str()], "client {i}");
        if allowed.len() > 1 {
            *per_b.entry(expected).or_insert(0) += 1;
        }
    }
    // Round robin over b1/b2: 50 clients, split evenly.
    assert_eq!(per_b.get("b1"), Some(&25));
    assert_eq!(per_b.get("b2"), Some(&25));

    let stats = sim.relay().stats();
    assert_eq!(
        stats.sessions_opened, 300,
        "one session per connection, no more"
    );
    assert_eq!(stats.sessions, 300);
    assert_eq!(stats.refused, 0);
    assert_eq!(stats.drops(DropReason::UnknownConnection), 0);
    assert_eq!(stats.buffered_bytes, 0);
    // Every server saw each of its connections from one upstream socket only.
    let mut server_conns = 0;
    for s in [a, b1, b2, g, d] {
        let server = sim.server(s);
        assert_eq!(server.stats().undecryptable, 0, "Initials arrive unaltered");
        for c in server.connections() {
            assert_eq!(c.peers.len(), 1);
        }
        server_conns += server.connections().len();
    }
    assert_eq!(server_conns, 300);
    assert_eq!(assert_held_datagrams_sent_in_arrival_order(&sim), 300);
    let net = sim.network().stats();
    assert!(
        net.lost > 0 && net.duplicated > 0 && net.reordered > 0,
        "{net:?}"
    );
}

fn chromium_flights(file: &str) -> Vec<Vec<Bytes>> {
    let datagrams = common::capture(file);
    datagrams
        .chunks(2)
        .map(|pair| pair.iter().map(|d| Bytes::from(d.bytes.clone())).collect())
        .collect()
}

#[test]
fn chromium_two_datagram_hellos_are_released_in_arrival_order() {
    let mut swapped = 0;
    for (file, sni) in [
        ("chromium-156-h3.json", "game1.example.com"),
        (
            "chromium-156-h3-long-sni.json",
            "very-long-subdomain-name-for-testing.eu-central-1.games.example.com",
        ),
    ] {
        let flights = chromium_flights(file);
        for seed in 0..16 {
            let mut sim = sim(seed, LinkConditions::ideal(Duration::from_millis(10)));
            // The client's path reorders half of its datagrams; the backends' is clean.
            let listener = sim.driver().listener();
            sim.network_mut().set_conditions_towards(
                listener,
                LinkConditions {
                    reorder: 0.5,
                    reorder_delay: Duration::from_millis(3),
                    ..LinkConditions::ideal(Duration::from_millis(10))
                },
            );
            let right = server(&mut sim, "right", "10.1.0.1:443");
            let wrong = server(&mut sim, "wrong", "10.1.0.2:443");
            sim.route(sni, &[right]);
            sim.route("*", &[wrong]);
            let client = sim.add_client(addr("198.51.100.7:40000"));
            let spec = ConnectSpec {
                hello: HelloShape::Captured {
                    flights: flights.clone(),
                },
                ..ConnectSpec::new(sni)
            };
            let conn = sim.connect(client, spec);
            sim.run_for(Duration::from_secs(2));

            assert_eq!(
                sim.conn(conn).state(),
                ConnState::Connected,
                "{file} seed {seed}"
            );
            assert_eq!(sim.conn(conn).servers(), ["right"], "{file} seed {seed}");
            assert_eq!(sim.relay().stats().sessions_opened, 1);
            assert_eq!(assert_held_datagrams_sent_in_arrival_order(&sim), 1);
            // The held datagrams are the first flight, sent as they arrived; the first
            // datagram alone never completes the ClientHello.
            let release = sim
                .driver()
                .commands()
                .find_map(|(_, c)| match c {
                    Command::OpenUpstream { datagrams, .. } => Some(datagrams.clone()),
                    _ => None,
                })
                .unwrap();
            assert_eq!(release.len(), 2, "{file} seed {seed}");
            if release[0] == flights[0][1] {
                assert_eq!(release[1], flights[0][0]);
                swapped += 1;
            } else {
                assert_eq!(release, flights[0]);
            }
            let right = sim.server(right);
            assert_eq!(right.connections().len(), 1);
            assert_eq!(right.stats().undecryptable, 0);
        }
    }
    // Both orders were exercised.
    assert!((1..32).contains(&swapped), "{swapped} of 32 runs reordered");
}

/// Connects `n` clients to "svc.example.com", served round robin by two backends, and
/// runs until they have their answers. Returns the connections and the name of the
/// backend each one reached.
fn connected_clients(sim: &mut Sim, n: usize, scid_len: usize) -> (Vec<ConnId>, Vec<String>) {
    let s1 = server(sim, "s1", "10.1.0.1:443");
    let s2 = server(sim, "s2", "10.1.0.2:443");
    sim.route("svc.example.com", &[s1, s2]);
    let conns: Vec<ConnId> = (0..n)
        .map(|i| {
            let client = sim.add_client(client_addr(i));
            let spec = ConnectSpec {
                scid_len,
                ..ConnectSpec::new("svc.example.com")
            };
            sim.connect(client, spec)
        })
        .collect();
    assert!(sim.run_until_done(Duration::from_secs(10), |s| all_done(s, &conns)));
    let names: Vec<String> = conns
        .iter()
        .map(|&c| name_at(sim, backend_of(sim, c).unwrap()))
        .collect();
    for (i, &c) in conns.iter().enumerate() {
        assert_eq!(sim.conn(c).servers(), [names[i].as_str()], "client {i}");
    }
    let on_s1 = names.iter().filter(|n| *n == "s1").count();
    assert_eq!(on_s1, n / 2, "round robin");
    (conns, names)
}

#[test]
fn nat_rebinding_keeps_sessions_on_their_backends() {
    let mut sim = sim(0x5eed_0002, LinkConditions::lossy());
    let (conns, names) = connected_clients(&mut sim, 20, 0);
    let sessions: Vec<SessionId> = conns.iter().map(|&c| sim.session_of(c).unwrap()).collect();
    let before: Vec<usize> = conns.iter().map(|&c| sim.conn(c).answers().len()).collect();
    for (i, &c) in conns.iter().enumerate() {
        let client = sim.conn(c).client();
        sim.rebind(
            client,
            SocketAddr::from(([198, 51, 100, 1], 20_000 + i as u16)),
        );
        sim.want_pings(c, 4);
    }
    assert!(sim.run_until_done(Duration::from_secs(10), |s| all_done(s, &conns)));

    for (i, &c) in conns.iter().enumerate() {
        let conn = sim.conn(c);
        let after = &conn.answers()[before[i]..];
        assert!(after.len() >= 4, "client {i}: answers after rebinding");
        assert!(after.iter().all(|a| a.server == names[i]), "client {i}");
        let info = sim.relay().session(sessions[i], sim.now()).unwrap();
        assert_eq!(info.client, ClientAddr(sim.client_addr(conn.client())));
    }
    // Each move opened a new path, for the new address.
    let moved = sim
        .driver()
        .notifications()
        .filter(|(_, n)| matches!(n, Notification::PathOpened { .. }))
        .count();
    assert_eq!(moved, 20);
    let stats = sim.relay().stats();
    assert_eq!((stats.sessions, stats.sessions_opened), (20, 20));
    assert_eq!(stats.drops(DropReason::UnknownConnection), 0);
    // The backends see each move as a new 4-tuple: each connection from two upstream
    // sockets, the second that of the new path. (Before paths, the relay repointed the
    // session and the backend never saw the move: one socket.)
    for s in 0..2 {
        for c in sim.server(ServerId(s)).connections() {
            assert_eq!(c.peers.len(), 2);
        }
    }
    // The old paths end on their own timer; the sessions live on, on the new paths.
    let timeout = sim.relay().config().path_idle_timeout;
    sim.run_for(timeout + Duration::from_secs(1));
    let stats = sim.relay().stats();
    assert_eq!((stats.sessions, stats.paths), (20, 20));
    for (i, &c) in conns.iter().enumerate() {
        let new = ClientAddr(sim.client_addr(sim.conn(c).client()));
        let paths = sim.driver().paths_of(sessions[i]);
        assert_eq!(paths.len(), 1, "client {i}: the old path ended");
        assert_eq!(paths[0].2, new, "client {i}: the path left is the new one");
    }
}

#[test]
fn cid_rotation_keeps_sessions_on_their_backends() {
    let mut sim = sim(0x5eed_0003, LinkConditions::lossy());
    let (conns, names) = connected_clients(&mut sim, 20, 8);
    let cids_before = sim.relay().stats().connection_ids;
    for round in 0..2 {
        let before: Vec<usize> = conns.iter().map(|&c| sim.conn(c).answers().len()).collect();
        for &c in &conns {
            let old = sim.conn(c).dcid();
            let new = sim.rotate_cid(c).expect("the server issued spare CIDs");
            assert_ne!(old, new);
            sim.want_pings(c, 3);
        }
        assert!(sim.run_until_done(Duration::from_secs(10), |s| all_done(s, &conns)));
        for (i, &c) in conns.iter().enumerate() {
            let after = &sim.conn(c).answers()[before[i]..];
            assert!(after.len() >= 3, "round {round} client {i}");
            assert!(
                after.iter().all(|a| a.server == names[i]),
                "round {round} client {i}"
            );
        }
    }
    let stats = sim.relay().stats();
    assert_eq!((stats.sessions, stats.sessions_opened), (20, 20));
    // Each session learned the two CIDs it switched to.
    assert_eq!(stats.connection_ids, cids_before + 40);
    assert_eq!(stats.drops(DropReason::UnknownConnection), 0);
}

#[test]
fn retry_is_followed_to_the_same_backend() {
    for (seed, version) in [(1, Version::V1), (2, Version::V2)] {
        let mut sim = sim(seed, LinkConditions::lossy());
        let retrying = |sim: &mut Sim, name: &str, at: &str| {
            let mut config = ServerConfig::new(name, addr(at));
            config.retry = true;
            sim.add_server(config)
        };
        let r1 = retrying(&mut sim, "r1", "10.1.0.1:443");
        let r2 = retrying(&mut sim, "r2", "10.1.0.2:443");
        sim.route("svc.example.com", &[r1, r2]);
        let conns: Vec<ConnId> = (0..10)
            .map(|i| {
                let client = sim.add_client(client_addr(i));
                let spec = ConnectSpec {
                    version,
                    hello: if i % 2 == 0 {
                        HelloShape::Small
                    } else {
                        HelloShape::Large
                    },
                    datagram_size: 1250,
                    ..ConnectSpec::new("svc.example.com")
                };
                sim.connect(client, spec)
            })
            .collect();
        assert!(sim.run_until_done(Duration::from_secs(10), |s| all_done(s, &conns)));
        for (i, &c) in conns.iter().enumerate() {
            let conn = sim.conn(c);
            let backend = backend_of(&sim, c).unwrap();
            let expected = name_at(&sim, backend);
            assert!(conn.retried(), "client {i} followed a Retry");
            assert_ne!(conn.dcid(), conn.original_dcid());
            assert_eq!(conn.servers(), [expected.as_str()], "client {i}");
            let server = sim.server_at(backend).unwrap();
            let served = server.connection_of(c.0 as u64).unwrap();
            assert!(served.retried, "client {i} came back with a token");
            assert_eq!(served.peers.len(), 1);
        }
        let stats = sim.relay().stats();
        assert_eq!(
            stats.sessions_opened, 10,
            "the Initial after Retry opens nothing new"
        );
        for s in [r1, r2] {
            let st = sim.server(s).stats();
            assert!(st.retries >= 5, "{st:?}");
            assert_eq!(st.bad_tokens, 0);
            assert_eq!(sim.server(s).connections().len(), 5);
        }
        assert_held_datagrams_sent_in_arrival_order(&sim);
    }
}

#[test]
fn second_connection_from_the_same_port_goes_to_the_other_backend() {
    let mut sim = sim(7, LinkConditions::ideal(Duration::from_millis(5)));
    let a = server(&mut sim, "a", "10.1.0.1:443");
    let b = server(&mut sim, "b", "10.1.0.2:443");
    sim.route("a.example.com", &[a]);
    sim.route("b.example.com", &[b]);
    let client = sim.add_client(addr("198.51.100.9:5353"));
    let first = sim.connect(client, ConnectSpec::new("a.example.com"));
    assert!(sim.run_until_done(Duration::from_secs(2), |s| all_done(s, &[first])));
    let second = sim.connect(client, ConnectSpec::new("b.example.com"));
    sim.want_pings(first, 5);
    assert!(sim.run_until_done(Duration::from_secs(2), |s| all_done(s, &[first, second])));

    assert_eq!(sim.conn(first).servers(), ["a"]);
    assert_eq!(sim.conn(second).servers(), ["b"]);
    assert!(sim.conn(first).answered() >= 8);
    let (s1, s2) = (
        sim.session_of(first).unwrap(),
        sim.session_of(second).unwrap(),
    );
    assert_ne!(s1, s2);
    let now = sim.now();
    let here = ClientAddr(addr("198.51.100.9:5353"));
    assert_eq!(sim.relay().session(s1, now).unwrap().client, here);
    assert_eq!(sim.relay().session(s2, now).unwrap().client, here);
    assert_eq!(sim.relay().stats().sessions_opened, 2);
}

/// Two connections share one client socket; one switches to a new CID. The address
/// names two sessions, so the new CID cannot be placed: it must never reach the other
/// connection's backend (nor be learned for its session).
#[test]
fn cid_switch_on_a_shared_socket_is_never_sent_to_the_other_backend() {
    let mut sim = sim(8, LinkConditions::ideal(Duration::from_millis(5)));
    let a = server(&mut sim, "a", "10.1.0.1:443");
    let b = server(&mut sim, "b", "10.1.0.2:443");
    sim.route("a.example.com", &[a]);
    sim.route("b.example.com", &[b]);
    let client = sim.add_client(addr("198.51.100.9:5353"));
    let first = sim.connect(client, ConnectSpec::new("a.example.com"));
    let second = sim.connect(client, ConnectSpec::new("b.example.com"));
    assert!(sim.run_until_done(Duration::from_secs(2), |s| all_done(s, &[first, second])));
    let cids = sim.relay().stats().connection_ids;
    // The second connection was active last; the first switches CID.
    sim.want_pings(second, 1);
    sim.run_for(Duration::from_millis(100));
    sim.rotate_cid(first).unwrap();
    sim.want_pings(first, 3);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        sim.server(b).stats().unknown,
        0,
        "b never got a's datagrams"
    );
    assert_eq!(sim.relay().stats().connection_ids, cids, "nothing learned");
    assert_eq!(sim.conn(first).servers(), ["a"]);
    assert_eq!(sim.conn(second).servers(), ["b"]);
    assert!(sim.relay().stats().drops(DropReason::UnknownConnection) > 0);
}

#[test]
fn intentional_migration_is_dropped_and_counted() {
    let mut sim = sim(11, LinkConditions::ideal(Duration::from_millis(5)));
    let (conns, names) = connected_clients(&mut sim, 2, 8);
    let c = conns[0];
    let client = sim.conn(c).client();
    let old_addr = sim.client_addr(client);
    let session = sim.session_of(c).unwrap();
    let answers = sim.conn(c).answers().len();
    let pings = sim.conn(c).pings_sent();
    let unknown = sim.relay().stats().drops(DropReason::UnknownConnection);

    // New address and a CID the relay never saw, at once.
    sim.rebind(client, addr("198.51.100.200:7000"));
    sim.rotate_cid(c).unwrap();
    sim.want_pings(c, 3);
    // Long enough for the client to spend its whole ping budget and for the last ping
    // to arrive.
    sim.run_for(Duration::from_secs(3));
    let sent = sim.conn(c).pings_sent() - pings;
    assert!(sent > 3);
    assert_eq!(sim.conn(c).answers().len(), answers, "nothing got through");
    let stats = sim.relay().stats();
    assert_eq!(
        stats.drops(DropReason::UnknownConnection) - unknown,
        u64::from(sent),
        "every datagram of the new path dropped and counted"
    );
    let info = sim.relay().session(session, sim.now()).unwrap();
    assert_eq!(
        info.client,
        ClientAddr(old_addr),
        "the session did not move"
    );

    // The client falls back to its old path (keeping the new CID): followed again.
    sim.rebind(client, old_addr);
    sim.want_pings(c, 3);
    assert!(sim.run_until_done(Duration::from_secs(2), |s| all_done(s, &[c])));
    assert!(sim.conn(c).answers().len() >= answers + 3);
    assert_eq!(sim.conn(c).servers(), [names[0].as_str()]);
    assert_eq!(sim.relay().stats().sessions_opened, 2);
}

/// quinn's `rebind` changes port and CID at once. The relay follows that when exactly one
/// routed session of the client's IP can be meant, and drops it (counted) when several
/// can.
#[test]
fn port_and_cid_change_is_followed_only_when_unambiguous() {
    let mut sim = sim(12, LinkConditions::ideal(Duration::from_millis(5)));
    let s1 = server(&mut sim, "s1", "10.1.0.1:443");
    sim.route("svc.example.com", &[s1]);
    let connect = |sim: &mut Sim, at: &str| {
        let client = sim.add_client(addr(at));
        (
            client,
            sim.connect(client, ConnectSpec::new("svc.example.com")),
        )
    };
    let (alone, alone_conn) = connect(&mut sim, "192.0.2.77:10000");
    let (shared, shared_conn) = connect(&mut sim, "192.0.2.1:10000");
    let (_other, other_conn) = connect(&mut sim, "192.0.2.1:10001");
    let conns = [alone_conn, shared_conn, other_conn];
    assert!(sim.run_until_done(Duration::from_secs(2), |s| all_done(s, &conns)));
    let before: Vec<usize> = conns.iter().map(|&c| sim.conn(c).answers().len()).collect();
    let unknown = sim.relay().stats().drops(DropReason::UnknownConnection);

    for (client, conn, to) in [
        (alone, alone_conn, "192.0.2.77:10001"),
        (shared, shared_conn, "192.0.2.1:20000"),
    ] {
        sim.rebind(client, addr(to));
        sim.rotate_cid(conn).unwrap();
        sim.want_pings(conn, 3);
    }
    sim.run_for(Duration::from_secs(3));

    // Alone on its IP: followed to its new port, on the same backend.
    let alone_info = sim
        .relay()
        .session(sim.session_of(alone_conn).unwrap(), sim.now())
        .unwrap();
    assert_eq!(alone_info.client, ClientAddr(addr("192.0.2.77:10001")));
    assert!(sim.conn(alone_conn).answers().len() >= before[0] + 3);
    // Two sessions on its IP: which one migrated cannot be told, so nothing moves.
    let shared_info = sim
        .relay()
        .session(sim.session_of(shared_conn).unwrap(), sim.now())
        .unwrap();
    assert_eq!(shared_info.client, ClientAddr(addr("192.0.2.1:10000")));
    assert_eq!(sim.conn(shared_conn).answers().len(), before[1]);
    let dropped = sim.relay().stats().drops(DropReason::UnknownConnection) - unknown;
    assert_eq!(
        dropped,
        u64::from(sim.conn(shared_conn).pings_sent()) - before[1] as u64
    );
    assert_eq!(sim.relay().stats().sessions_opened, 3);
}

fn agones_sim(behaviour: AllocatorBehaviour) -> (Sim, Vec<ConnId>) {
    let mut sim = sim(21, LinkConditions::ideal(Duration::from_millis(10)));
    server(&mut sim, "gs-1", "10.2.0.1:7777");
    server(&mut sim, "gs-2", "10.2.0.2:7777");
    let lobby = server(&mut sim, "lobby", "10.1.0.1:443");
    sim.route("lobby.example.com", &[lobby]);
    sim.route_fleet("*.play.example.com", "fleet-a", behaviour);
    let conns = (0..4)
        .map(|i| {
            let client = sim.add_client(client_addr(i));
            let sni = format!("match-{i}.play.example.com");
            let spec = if i % 2 == 0 {
                ConnectSpec::new(&sni)
            } else {
                ConnectSpec::chromium(&sni)
            };
            sim.connect(client, spec)
        })
        .collect();
    (sim, conns)
}

#[test]
fn agones_allocation_routes_to_the_allocated_game_server() {
    let delay = Duration::from_millis(400);
    let (mut sim, conns) = agones_sim(AllocatorBehaviour::Allocate {
        backends: vec![
            BackendAddr(addr("10.2.0.1:7777")),
            BackendAddr(addr("10.2.0.2:7777")),
        ],
        delay,
    });
    assert!(sim.run_until_done(Duration::from_secs(5), |s| all_done(s, &conns)));
    for (i, &c) in conns.iter().enumerate() {
        let expected = if i % 2 == 0 { "gs-1" } else { "gs-2" };
        assert_eq!(sim.conn(c).servers(), [expected], "client {i}");
        // Held through the allocation: the client retransmitted (250 ms PTO < delay).
        assert!(sim.conn(c).flights() >= 2);
    }
    // Each session opened `delay` after its allocation was requested: its upstream, and
    // the notification.
    let mut requested = HashMap::new();
    let mut upstreams = 0;
    for (at, c) in sim.driver().commands() {
        match c {
            Command::Allocate { session, fleet, .. } => {
                assert_eq!(&**fleet, "fleet-a");
                requested.insert(*session, at);
            }
            Command::OpenUpstream { session, .. } => {
                assert_eq!(at - requested[session], delay);
                upstreams += 1;
            }
            _ => {}
        }
    }
    assert_eq!(requested.len(), 4);
    assert_eq!(upstreams, 4);
    let mut opened = 0;
    for (at, n) in sim.driver().notifications() {
        if let Notification::SessionOpened { session, .. } = n {
            assert_eq!(at - requested[session], delay);
            opened += 1;
        }
    }
    assert_eq!(opened, 4);
    let stats = sim.relay().stats();
    assert_eq!(
        (stats.allocations.requested, stats.allocations.succeeded),
        (4, 4)
    );
    assert_eq!(stats.allocations_in_flight, 0);
    // Retransmissions held during the allocation are sent by its OpenUpstream in arrival order.
    assert_eq!(assert_held_datagrams_sent_in_arrival_order(&sim), 4);
}

fn assert_refused(sim: &Sim, conns: &[ConnId], reason: RefuseReason) {
    for &c in conns {
        assert_eq!(
            sim.conn(c).state(),
            ConnState::Refused { error_code: 0x02 },
            "CONNECTION_REFUSED reached the client"
        );
        assert!(sim.conn(c).answers().is_empty());
    }
    let transmits = sim
        .driver()
        .commands()
        .filter(|(_, c)| matches!(c, Command::Transmit { .. }))
        .count();
    assert_eq!(
        transmits,
        conns.len(),
        "refusals go out as Transmit commands"
    );
    assert!(
        sim.driver().commands().all(|(_, c)| !matches!(
            c,
            Command::OpenUpstream { .. } | Command::CloseUpstream { .. }
        )),
        "a refused connection never has an upstream"
    );
    let refused = sim
        .driver()
        .notifications()
        .filter(|(_, n)| matches!(n, Notification::Refused { reason: r, .. } if *r == reason))
        .count();
    assert_eq!(refused, conns.len());
    let closed = sim
        .driver()
        .notifications()
        .filter(|(_, n)| {
            matches!(n, Notification::SessionClosed { reason: CloseReason::Refused(r), .. } if *r == reason)
        })
        .count();
    assert_eq!(closed, conns.len());
    let stats = sim.relay().stats();
    assert_eq!(stats.refused, conns.len() as u64);
    assert_eq!(stats.sessions, 0);
    assert_eq!(stats.allocations_in_flight, 0);
    assert_eq!(stats.buffered_bytes, 0);
    assert_eq!(sim.driver().stats().sockets_opened, 0);
}

#[test]
fn unknown_sni_is_refused_by_the_answer_to_its_initial() {
    let mut sim = sim(22, LinkConditions::ideal(Duration::from_millis(10)));
    let a = server(&mut sim, "a", "10.1.0.1:443");
    sim.route("a.example.com", &[a]);
    let client = sim.add_client(addr("198.51.100.3:4000"));
    let conn = sim.connect(client, ConnectSpec::new("nowhere.example.com"));
    sim.run_for(Duration::from_secs(1));
    assert_refused(&sim, &[conn], RefuseReason::NoRoute);
    // The refusal is the Initial's answer: an Answered verdict, then its Transmit to the
    // sender, in the same drain.
    let log = sim.driver().log();
    let answered = log
        .iter()
        .position(|e| {
            matches!(
                e,
                LogEntry::Client {
                    verdict: Verdict::Answered,
                    ..
                }
            )
        })
        .expect("an Answered verdict");
    let LogEntry::Client { at, from, .. } = &log[answered] else {
        unreachable!()
    };
    assert!(
        matches!(
            &log[answered + 1],
            LogEntry::Command { at: t, command: Command::Transmit { to, .. } }
                if t == at && *to == *from
        ),
        "{:?}",
        &log[answered + 1]
    );
    assert_eq!(*from, ClientAddr(sim.client_addr(client)));
    assert_eq!(sim.driver().stats().replies, 1);
    assert_eq!(sim.server(a).connections().len(), 0);
}

#[test]
fn agones_allocation_failure_refuses_the_client() {
    let delay = Duration::from_millis(300);
    let (mut sim, conns) = agones_sim(AllocatorBehaviour::Fail { delay });
    sim.run_for(Duration::from_secs(2));
    assert_refused(&sim, &conns, RefuseReason::AllocationFailed);
    let stats = sim.relay().stats();
    assert_eq!(
        (stats.allocations.requested, stats.allocations.failed),
        (4, 4)
    );
    // The refusal left `delay` after the request.
    let requested: Vec<Instant> = sim
        .driver()
        .commands()
        .filter_map(|(at, c)| matches!(c, Command::Allocate { .. }).then_some(at))
        .collect();
    let refused: Vec<Instant> = sim
        .driver()
        .commands()
        .filter_map(|(at, c)| matches!(c, Command::Transmit { .. }).then_some(at))
        .collect();
    assert_eq!(requested.len(), 4);
    for (r, t) in requested.iter().zip(&refused) {
        assert_eq!(*t - *r, delay);
    }
}

#[test]
fn agones_without_answer_is_refused_at_the_handshake_timeout() {
    let (mut sim, conns) = agones_sim(AllocatorBehaviour::Silent);
    let start = sim.now();
    let timeout = sim.relay().config().handshake_timeout;
    sim.run_for(timeout - Duration::from_millis(1));
    assert_eq!(sim.relay().stats().allocations_in_flight, 4);
    assert!(conns
        .iter()
        .all(|&c| sim.conn(c).state() == ConnState::Connecting));
    sim.run_for(Duration::from_secs(1));
    assert_refused(&sim, &conns, RefuseReason::AllocationTimeout);
    let stats = sim.relay().stats();
    assert_eq!(
        (stats.allocations.requested, stats.allocations.timed_out),
        (4, 4)
    );
    let cancelled: Vec<Instant> = sim
        .driver()
        .commands()
        .filter_map(|(at, c)| matches!(c, Command::CancelAllocation { .. }).then_some(at))
        .collect();
    assert_eq!(cancelled.len(), 4);
    // Sessions were created when their first datagram arrived, 10 ms after the start.
    for at in cancelled {
        assert_eq!(at - start, timeout + Duration::from_millis(10));
    }
    assert!(sim
        .driver()
        .log()
        .iter()
        .all(|e| !matches!(e, LogEntry::Completed { .. })));
}

#[test]
fn idle_sessions_close_and_their_sockets_with_them() {
    let config = RelayConfig {
        idle_timeout: Duration::from_secs(3),
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(
        Instant::now(),
        SimConfig {
            relay: config,
            ..SimConfig::default()
        },
    );
    let (conns, _) = connected_clients(&mut sim, 4, 8);
    let last = conns
        .iter()
        .flat_map(|&c| sim.conn(c).answers().iter().map(|a| a.at))
        .max()
        .unwrap();
    sim.run_until(last + Duration::from_millis(2_900));
    assert_eq!(sim.relay().session_count(), 4);
    sim.run_until(last + Duration::from_secs(4));
    assert_eq!(sim.relay().session_count(), 0);
    assert_eq!(sim.driver().stats().sockets_closed, 4);
    let mut closed = Vec::new();
    for (at, info) in sim.driver().notifications().filter_map(|(at, n)| match n {
        Notification::SessionClosed { reason, info } => Some((at, (reason, info))),
        _ => None,
    }) {
        assert_eq!(info.0, &CloseReason::IdleTimeout);
        assert_eq!(info.1.idle, Duration::from_secs(3));
        closed.push((at, info.1.id));
    }
    // Each upstream closed with its session.
    let upstreams_closed: Vec<(Instant, SessionId)> = sim
        .driver()
        .commands()
        .filter_map(|(at, c)| match c {
            Command::CloseUpstream { session, .. } => Some((at, *session)),
            _ => None,
        })
        .collect();
    assert_eq!(upstreams_closed, closed);
    assert_eq!(closed.len(), 4);
    // The client comes back after its session expired: its short headers carry a CID
    // of an ended session, dropped as such (and never adopted).
    sim.want_pings(conns[0], 1);
    sim.run_for(Duration::from_millis(500));
    assert!(sim.relay().stats().drops(DropReason::EndedConnection) > 0);
    assert_eq!(sim.relay().session_count(), 0);
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(
            Instant::now(),
            SimConfig {
                seed,
                network: LinkConditions::lossy(),
                ..SimConfig::default()
            },
        );
        let (conns, _) = connected_clients(&mut sim, 10, 8);
        let answers: Vec<Vec<(u32, Duration)>> = conns
            .iter()
            .map(|&c| {
                sim.conn(c)
                    .answers()
                    .iter()
                    .map(|a| (a.seq, a.at - sim.clock().base()))
                    .collect()
            })
            .collect();
        (answers, sim.network().stats(), sim.relay().stats())
    };
    let first = run(99);
    assert_eq!(first, run(99));
    assert_ne!(first.0, run(100).0);
}

/// Bytes the relay sent to `to` (forwarded backend datagrams) and bytes it received from
/// `to`, from the driver's log.
fn bytes_to_and_from(sim: &Sim, to: SocketAddr) -> (usize, usize) {
    let (mut sent, mut received) = (0, 0);
    for entry in sim.driver().log() {
        match entry {
            LogEntry::Backend {
                len,
                verdict: Verdict::ToClient { client, .. },
                ..
            } if client.0 == to => sent += len,
            LogEntry::Client { from, bytes, .. } if from.0 == to => received += bytes.len(),
            _ => {}
        }
    }
    (sent, received)
}

/// A datagram with a live connection's CID, replayed from another address, opens a new
/// path: only what the backend answers on that path reaches the forged address (at most
/// 3× what it sent: here one answer to one replayed ping), the real client's answers
/// keep going to the real client, and the forged path ends on its own timer. Before
/// paths, the relay repointed the session to the forged address and every later answer
/// went there.
#[test]
fn a_forged_datagram_with_a_live_cid_is_not_amplified_and_the_client_carries_on() {
    let mut sim = sim(0x5eed_0a3f, LinkConditions::ideal(Duration::from_millis(5)));
    let (conns, names) = connected_clients(&mut sim, 2, 8);
    let c = conns[0];
    let real = sim.client_addr(sim.conn(c).client());
    let session = sim.session_of(c).unwrap();
    // The real client's latest datagram, replayed as is (the strongest forgery: it
    // decodes at the backend).
    let replay = sim
        .driver()
        .log()
        .iter()
        .rev()
        .find_map(|e| match e {
            LogEntry::Client {
                from,
                bytes,
                verdict: Verdict::ToBackend { .. },
                ..
            } if from.0 == real && bytes[0] & 0x80 == 0 => Some(bytes.clone()),
            _ => None,
        })
        .expect("the client sent short headers");
    let forged = addr("203.0.113.66:4444");
    let answers = sim.conn(c).answers().len();
    // Mid-transfer: the forgery reaches the relay while a real ping's answer is on its
    // way back (a relay that repointed the session sent that answer to the forger).
    sim.want_pings(c, 20);
    sim.run_for(Duration::from_millis(3));
    let now = sim.now();
    let listener = sim.driver().listener();
    sim.network_mut().send(now, forged, listener, replay);
    assert!(sim.run_until_done(Duration::from_secs(5), |s| all_done(s, &[c])));
    let forwarded_to_forged = sim
        .driver()
        .log()
        .iter()
        .filter(|e| {
            matches!(e, LogEntry::Backend { verdict: Verdict::ToClient { client, .. }, .. }
                if client.0 == forged)
        })
        .count();
    assert_eq!(
        forwarded_to_forged, 1,
        "the forger gets the answer to its own datagram, and nothing of the real client's"
    );

    let (sent, received) = bytes_to_and_from(&sim, forged);
    assert!(received > 0, "the forged datagram reached the relay");
    assert!(
        sent <= 3 * received,
        "{sent} bytes sent to the forged address for {received} received"
    );
    // The real client got every answer, from its backend, on its own address.
    assert!(sim.conn(c).answers().len() >= answers + 20);
    assert_eq!(sim.conn(c).servers(), [names[0].as_str()]);
    let (to_real, _) = bytes_to_and_from(&sim, real);
    assert!(to_real > 20 * sent.max(1));
    let paths = sim.driver().paths_of(session);
    assert_eq!(paths.len(), 2, "the forgery opened a path of its own");
    assert_eq!(paths[1].2, ClientAddr(forged));
    // The forged path ends on its timer; the real one lives on.
    let timeout = sim.relay().config().path_idle_timeout;
    sim.want_pings(c, (timeout.as_millis() / 50) as u32 + 20);
    sim.run_for(timeout + Duration::from_millis(500));
    let paths = sim.driver().paths_of(session);
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].2, ClientAddr(real));
    assert_eq!(sim.driver().stats().inconsistencies, 0);
}

/// A connection whose session ended comes back, from its old address and then from a
/// new port of the same IP, while another client's session of that IP is live: its
/// datagrams are dropped as those of an ended connection, never adopted by the other
/// session (before, the other session's sole-session-of-the-IP rule took them and moved
/// its return path).
#[test]
fn a_late_datagram_of_an_ended_connection_is_not_adopted_by_another_session_of_its_ip() {
    let config = RelayConfig {
        idle_timeout: Duration::from_secs(3),
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(
        Instant::now(),
        SimConfig {
            seed: 0x5eed_0e4d,
            relay: config,
            network: LinkConditions::ideal(Duration::from_millis(5)),
            ..SimConfig::default()
        },
    );
    // Both clients are on 192.0.2.1, on two ports.
    let (conns, names) = connected_clients(&mut sim, 2, 8);
    let (late, live) = (conns[0], conns[1]);
    let live_session = sim.session_of(live).unwrap();
    let live_addr = ClientAddr(sim.client_addr(sim.conn(live).client()));
    let late_session = sim.session_of(late).unwrap();
    // The live client keeps pinging for 6 s; the other falls silent and idles out.
    sim.want_pings(live, 120);
    sim.run_for(Duration::from_secs(4));
    assert!(sim.relay().session(late_session, sim.now()).is_none());
    let answers = sim.conn(late).answers().len();
    let pings = sim.conn(late).pings_sent();
    let server_stats = |sim: &Sim, conn: ConnId| {
        sim.server_at(backend_of(sim, conn).unwrap())
            .unwrap()
            .stats()
    };
    let (late_backend, live_backend) = (server_stats(&sim, late), server_stats(&sim, live));
    assert_ne!(names[0], names[1], "the two sessions are on two backends");

    let ended = sim.relay().stats().drops(DropReason::EndedConnection);
    let old_addr = sim.client_addr(sim.conn(late).client());
    let resumed = sim.now();
    sim.want_pings(late, 3);
    sim.run_for(Duration::from_millis(500));
    let client = sim.conn(late).client();
    sim.rebind(client, addr("192.0.2.1:30000"));
    sim.want_pings(late, 3);
    sim.run_for(Duration::from_millis(500));

    let dropped = sim.relay().stats().drops(DropReason::EndedConnection) - ended;
    // Every late datagram that reached the relay was dropped as an ended connection's.
    let late_addrs = [old_addr, addr("192.0.2.1:30000")];
    let verdicts: Vec<&Verdict> = sim
        .driver()
        .log()
        .iter()
        .filter_map(|e| match e {
            LogEntry::Client {
                at, from, verdict, ..
            } if *at >= resumed && late_addrs.contains(&from.0) => Some(verdict),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts.len() as u64, dropped);
    assert!(verdicts
        .iter()
        .all(|v| **v == Verdict::Drop(DropReason::EndedConnection)));
    assert!(sim.conn(late).pings_sent() - pings >= 6);
    assert!(dropped >= 6);
    assert_eq!(
        sim.conn(late).answers().len(),
        answers,
        "nothing got through"
    );
    // Neither backend saw any of them: not the ended connection's (its session is
    // gone), not the live session's (nothing of another connection reached it).
    assert_eq!(server_stats(&sim, late).datagrams, late_backend.datagrams);
    assert_eq!(server_stats(&sim, live).unknown, live_backend.unknown);
    // The live session neither got them nor moved: one path, its own address.
    let paths = sim.driver().paths_of(live_session);
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].2, live_addr);
    assert!(!sim
        .driver()
        .notifications()
        .any(|(_, n)| matches!(n, Notification::PathOpened { .. })));
    let live_conn = sim.conn(live);
    assert_eq!(live_conn.servers(), [names[1].as_str()]);
    assert_eq!(sim.driver().stats().inconsistencies, 0);
}
