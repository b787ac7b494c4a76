//! Data-plane shards, as a host runs them: two relays configured as shards 0 and 1 of 2,
//! and the host's miss path written out (every shard's `claim_short`, then
//! `ShortClaim::settle`). A connection opened on one shard whose client's new 4-tuple
//! lands on the other continues there on a path of its own to the same backend; a move
//! that lands on the same shard opens a path of the same session, as an unsharded relay
//! would; two sessions of one IP in different shards are never guessed between.

use std::net::SocketAddr;
use std::time::Instant;

use porter_core::wire::Version;
use porter_core::{
    BackendAddr, ClientAddr, CloseReason, Command, ConnectionId, DropReason, Notification, PathId,
    Relay, RelayConfig, SessionId, Settled, Shard, ShortClaim, Verdict,
};
use porter_sim::{
    one_datagram_initial, server_first_flight, short_header_packet, simple_route, SimRng,
};

const BACKEND: &str = "10.0.0.5:4433";

fn addr(s: &str) -> ClientAddr {
    ClientAddr(s.parse::<SocketAddr>().unwrap())
}

fn backend() -> BackendAddr {
    BackendAddr(BACKEND.parse().unwrap())
}

/// Shards 0 and 1 of 2, routing `game.example.com` to [`BACKEND`].
fn shards() -> Vec<Relay> {
    shards_with(|_| {})
}

/// As [`shards`], each shard's configuration changed by `change` first.
fn shards_with(change: impl Fn(&mut RelayConfig)) -> Vec<Relay> {
    (0..2)
        .map(|i| {
            let mut config = RelayConfig::default().for_shard(i, 2);
            change(&mut config);
            let mut relay = Relay::new(config);
            relay
                .set_route(simple_route("game.example.com", &[backend()]))
                .unwrap();
            relay
        })
        .collect()
}

fn commands(relay: &mut Relay) -> Vec<Command> {
    while relay.poll_notification().is_some() {}
    std::iter::from_fn(|| relay.poll_command()).collect()
}

/// What the host does with shard `own`'s commands: lookups are settled over every shard
/// (as the engine does before it asks Redis); everything else is returned.
fn run_host(shards: &mut [Relay], own: usize, now: Instant) -> Vec<Command> {
    let mut out = Vec::new();
    for command in commands(&mut shards[own]) {
        if let Command::ConnectionMoved { shard, session } = command {
            assert!(shards[shard as usize].moved_to_shard(now, session));
            continue;
        }
        let Command::LookupConnection { id, client, dcid } = command else {
            out.push(command);
            continue;
        };
        let claims: Vec<ShortClaim> = shards
            .iter()
            .map(|s| s.claim_short(client, &dcid))
            .collect();
        match ShortClaim::settle(own, &claims) {
            Settled::Here => shards[own].complete_lookup_here(now, id).unwrap(),
            Settled::Elsewhere {
                owner,
                session,
                cid,
                backend,
            } => shards[own]
                .complete_lookup_moved(now, id, cid, backend, (owner as u32, session))
                .unwrap(),
            // With a shared directory configured, at its rate: this one knows nothing.
            Settled::Unknown if shards[own].config().directory.enabled => {
                if shards[own].take_directory_token(now) {
                    shards[own].complete_lookup(now, id, None).unwrap();
                } else {
                    shards[own].complete_lookup_over_rate(id).unwrap();
                }
            }
            Settled::Unknown => shards[own].complete_lookup(now, id, None).unwrap(),
        }
        out.extend(commands(&mut shards[own]));
    }
    out
}

/// Opens a connection from `client` on shard `on` whose backend answers with an 8-byte
/// CID `scid`; returns its session.
fn connect(
    shards: &mut [Relay],
    on: usize,
    client: ClientAddr,
    seed: u64,
    scid: [u8; 8],
) -> SessionId {
    let now = Instant::now();
    let initial = one_datagram_initial("game.example.com", seed);
    let odcid = ConnectionId::new(&initial[6..14]).unwrap();
    let v = shards[on].handle_client_datagram(now, client, &initial);
    let Verdict::Held { session } = v else {
        panic!("{v:?}")
    };
    let opened = run_host(shards, on, now);
    assert!(
        matches!(opened.as_slice(), [Command::OpenUpstream { backend: b, .. }] if *b == backend()),
        "{opened:?}"
    );
    let flight = server_first_flight(
        Version::V1,
        odcid.as_bytes(),
        &[],
        &scid,
        0,
        1200,
        &mut SimRng::new(seed),
    );
    let v = shards[on].handle_backend_datagram(now, PathId(session.0 << 16), &flight);
    assert!(matches!(v, Verdict::ToClient { .. }), "{v:?}");
    // The client uses the backend's CID from its address: routed, and validated.
    let v =
        shards[on].handle_client_datagram(now, client, &short_header_packet(0, &scid, 1, &[1; 40]));
    assert!(
        matches!(v, Verdict::ToBackend { session: s, .. } if s == session),
        "{v:?}"
    );
    run_host(shards, on, now);
    session
}

#[test]
fn session_ids_are_unique_over_the_shards_and_name_their_shard() {
    let mut shards = shards();
    let a = connect(&mut shards, 0, addr("198.51.100.1:1000"), 1, [0xa1; 8]);
    let b = connect(&mut shards, 1, addr("198.51.100.2:1000"), 2, [0xb1; 8]);
    let c = connect(&mut shards, 0, addr("198.51.100.3:1000"), 3, [0xc1; 8]);
    assert_eq!((a, b, c), (SessionId(1), SessionId(2), SessionId(3)));
    for (id, shard) in [(a, 0), (b, 1), (c, 0)] {
        assert_eq!(Shard::of_session(2, id), shard);
    }
}

#[test]
fn a_nat_rebinding_that_lands_on_the_other_shard_continues_there_to_the_same_backend() {
    let mut shards = shards();
    let now = Instant::now();
    let scid = [0xa1; 8];
    connect(&mut shards, 0, addr("198.51.100.1:1000"), 1, scid);
    // Same CID, new port, and the kernel's hash sends the new 4-tuple to shard 1.
    let moved = addr("198.51.100.1:2000");
    let datagram = short_header_packet(0, &scid, 2, &[2; 40]);
    let v = shards[1].handle_client_datagram(now, moved, &datagram);
    assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    let out = run_host(&mut shards, 1, now);
    let [Command::OpenUpstream {
        client,
        backend: b,
        datagrams,
        path: new_path,
        ..
    }] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    let new_path = *new_path;
    assert_eq!((*client, *b), (moved, backend()));
    assert_eq!(datagrams.as_slice(), std::slice::from_ref(&datagram));
    // From then on the moved client is shard 1's, without another lookup.
    let next = short_header_packet(0, &scid, 3, &[3; 40]);
    assert!(matches!(
        shards[1].handle_client_datagram(now, moved, &next),
        Verdict::ToBackend { backend: b, .. } if b == backend()
    ));
    let stats = shards[1].stats();
    assert_eq!(
        (
            stats.lookups.asked,
            stats.lookups.found,
            stats.lookups.from_shards
        ),
        (1, 1, 1)
    );
    // Over the host, a client moved: one path opened, no new session.
    assert_eq!((stats.sessions_opened, stats.paths_opened), (0, 1));
    // Until the backend answers on shard 1's path, shard 0 is not told: a copy of the
    // datagram from elsewhere moves nothing.
    assert_eq!(run_host(&mut shards, 1, now), vec![]);
    let answer = short_header_packet(0, &[0xc1; 8], 1, &[5; 40]);
    let v = shards[1].handle_backend_datagram(now, new_path, &answer);
    assert!(
        matches!(v, Verdict::ToClient { client, .. } if client == moved),
        "{v:?}"
    );
    run_host(&mut shards, 1, now);
    // Then shard 0's old path idles out like any old path, not after the idle timeout;
    // the connection has not ended, so its CID is not remembered as ended there.
    let later = now + shards[0].config().path_idle_timeout;
    shards[0].handle_timeout(later - std::time::Duration::from_millis(1));
    assert_eq!(shards[0].session_count(), 1);
    shards[0].handle_timeout(later);
    assert_eq!(shards[0].session_count(), 0);
    let closed: Vec<CloseReason> = std::iter::from_fn(|| shards[0].poll_notification())
        .filter_map(|n| match n {
            Notification::SessionClosed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [CloseReason::Moved]);
    assert_eq!(shards[0].stats().remembered_ended_cids, 0);
}

#[test]
fn a_copied_datagram_on_another_shard_that_the_backend_ignores_moves_nothing() {
    let mut shards = shards();
    let now = Instant::now();
    let scid = [0xa1; 8];
    let home = addr("198.51.100.1:1000");
    connect(&mut shards, 0, home, 1, scid);
    // An observer replays the client's datagram from elsewhere; it lands on shard 1,
    // which adopts the connection on a path of its own. The backend drops the replay.
    let forger = addr("203.0.113.9:4000");
    let copy = short_header_packet(0, &scid, 1, &[1; 40]);
    let v = shards[1].handle_client_datagram(now, forger, &copy);
    assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    run_host(&mut shards, 1, now);
    assert_eq!(shards[1].session_count(), 1);
    // The real client is idle for longer than a path lives, and its session on shard 0
    // stays; the adopted one on shard 1 ends at its handshake timeout, unanswered.
    let later = now + shards[0].config().handshake_timeout;
    for shard in shards.iter_mut() {
        shard.handle_timeout(later);
    }
    assert_eq!(
        (shards[0].session_count(), shards[1].session_count()),
        (1, 0)
    );
    let next = short_header_packet(0, &scid, 2, &[2; 40]);
    let v = shards[0].handle_client_datagram(later, home, &next);
    assert!(matches!(v, Verdict::ToBackend { .. }), "{v:?}");
}

#[test]
fn a_move_to_a_new_port_and_cid_is_followed_across_shards_only_when_one_session_can_be_meant() {
    let mut shards = shards();
    let now = Instant::now();
    connect(&mut shards, 0, addr("198.51.100.1:1000"), 1, [0xa1; 8]);
    // quinn's rebind: a new port and a CID from an encrypted NEW_CONNECTION_ID frame.
    let moved = addr("198.51.100.1:2000");
    let fresh = [0xa2; 8];
    let datagram = short_header_packet(0, &fresh, 2, &[2; 40]);
    let v = shards[1].handle_client_datagram(now, moved, &datagram);
    assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    let out = run_host(&mut shards, 1, now);
    assert!(
        matches!(out.as_slice(), [Command::OpenUpstream { client, backend: b, .. }] if *client == moved && *b == backend()),
        "{out:?}"
    );

    // Another connection of the same IP on shard 1: now a move with a fresh CID could be
    // either, and neither shard guesses.
    let mut shards = self::shards();
    connect(&mut shards, 0, addr("198.51.100.1:1000"), 1, [0xa1; 8]);
    connect(&mut shards, 1, addr("198.51.100.1:1001"), 2, [0xb1; 8]);
    for on in [0, 1] {
        let moved = addr(&format!("198.51.100.1:{}", 3000 + on));
        let v = shards[on].handle_client_datagram(now, moved, &datagram);
        assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
        assert_eq!(run_host(&mut shards, on, now), vec![]);
        assert_eq!(shards[on].stats().drops(DropReason::LookupFailed), 1);
    }
}

#[test]
fn a_move_that_lands_on_its_own_shard_opens_a_path_of_the_same_session() {
    let mut shards = shards();
    let now = Instant::now();
    let session = connect(&mut shards, 0, addr("198.51.100.1:1000"), 1, [0xa1; 8]);
    let moved = addr("198.51.100.1:2000");
    let (first, second) = (
        short_header_packet(0, &[0xa2; 8], 2, &[2; 40]),
        short_header_packet(0, &[0xa2; 8], 3, &[3; 40]),
    );
    // Both datagrams arrive while the shards are asked: the second joins the lookup.
    for d in [&first, &second] {
        let v = shards[0].handle_client_datagram(now, moved, d);
        assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
    }
    let out = run_host(&mut shards, 0, now);
    let [Command::OpenUpstream {
        session: s,
        path,
        client,
        datagrams,
        ..
    }] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    assert_eq!(
        (*s, *path, *client),
        (session, PathId((session.0 << 16) | 1), moved)
    );
    assert_eq!(datagrams.as_slice(), [first, second]);
    let stats = shards[0].stats();
    assert_eq!(
        (stats.sessions, stats.paths_opened, stats.lookups.found),
        (1, 1, 1)
    );
}

/// Shards whose lookups go on to a shared directory (or not) at one lookup a second.
fn shards_at_one_lookup_a_second(directory: bool) -> Vec<Relay> {
    shards_with(|config| {
        config.directory.enabled = directory;
        config.directory.lookups_per_second = 1;
    })
}

#[test]
fn a_flood_of_unknown_cids_cannot_starve_a_move_between_shards() {
    for directory in [false, true] {
        let mut shards = shards_at_one_lookup_a_second(directory);
        let now = Instant::now();
        let scid = [0xa1; 8];
        connect(&mut shards, 0, addr("198.51.100.1:1000"), 1, scid);
        // 100 junk short headers from forged sources land on shard 1 first: the shards
        // are asked about each; only what goes on to the shared directory is at its rate.
        for i in 0..100u16 {
            let junk = short_header_packet(0, &[0xee; 8], i as u8, &[0; 40]);
            let from = addr(&format!("203.0.113.{}:{}", i % 250 + 1, 5000 + i));
            let _ = shards[1].handle_client_datagram(now, from, &junk);
            run_host(&mut shards, 1, now);
        }
        // The client's NAT rebinding onto shard 1 is still found.
        let moved = addr("198.51.100.1:2000");
        let datagram = short_header_packet(0, &scid, 2, &[2; 40]);
        let v = shards[1].handle_client_datagram(now, moved, &datagram);
        assert!(matches!(v, Verdict::Held { .. }), "{v:?}");
        let out = run_host(&mut shards, 1, now);
        assert!(
            matches!(out.as_slice(), [Command::OpenUpstream { client, .. }] if *client == moved),
            "directory {directory}: {out:?}"
        );
        let stats = shards[1].stats();
        assert_eq!(stats.lookups.found, 1);
        // Without a directory nothing is rate-limited; with one, the junk beyond its
        // first token is (one second's worth went to the directory, which knew nothing).
        let (limited, failed) = if directory { (99, 1) } else { (0, 100) };
        assert_eq!(
            (
                stats.lookups.rate_limited,
                stats.drops(DropReason::LookupFailed)
            ),
            (limited, failed),
            "directory {directory}"
        );
    }
}

#[test]
fn shards_divide_instance_budgets_and_keep_per_client_caps() {
    let config = RelayConfig {
        max_sessions: 5,
        allocations_per_second_per_fleet: 3,
        new_sessions_per_second: 0,
        ..RelayConfig::default()
    };
    let parts: Vec<RelayConfig> = (0..2).map(|i| config.for_shard(i, 2)).collect();
    assert_eq!(parts.iter().map(|c| c.max_sessions).sum::<usize>(), 5);
    assert_eq!(
        parts
            .iter()
            .map(|c| c.allocations_per_second_per_fleet)
            .sum::<u32>(),
        3
    );
    // 0 stays "no limit"; per-address caps are per shard; lookups carry the miss path.
    assert!(parts.iter().all(|c| c.new_sessions_per_second == 0
        && c.max_sessions_per_ip == config.max_sessions_per_ip
        && c.shard.count == 2));
    assert_ne!(parts[0].seed, parts[1].seed);
    // One shard: the configuration as it is.
    assert_eq!(
        config.for_shard(0, 1),
        RelayConfig {
            shard: Shard { index: 0, count: 1 },
            ..config.clone()
        }
    );
    // A budget smaller than the shard count still lets every shard work.
    assert_eq!(Shard { index: 3, count: 4 }.part(2), 1);
}
