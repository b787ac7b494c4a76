//! The miss path between data-plane shards: what a short-header datagram costs when it
//! lands on a shard that does not know its connection (its client's new 4-tuple hashed
//! there), from the datagram to the `OpenUpstream` that carries it on, every shard asked
//! (`claim_short`, `ShortClaim::settle`, `complete_lookup_moved`, `moved_to_shard`), beside
//! the same datagram on the shard that owns the connection. Shard 0 holds `n` routed
//! sessions, so the claim's table lookups are not on an empty table.
//!
//! Run with `cargo bench -p porter-sim --bench shards`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use divan::Bencher;
use porter_core::wire::Version;
use porter_core::{
    BackendAddr, ClientAddr, Command, ConnectionId, PathId, Relay, RelayConfig, Settled,
    ShortClaim, Verdict,
};
use porter_sim::{
    one_datagram_initial, server_first_flight, short_header_packet, simple_route, SimRng,
};

/// Routed sessions on the owning shard.
const SESSIONS: &[usize] = &[1_000, 100_000];

fn backend() -> BackendAddr {
    BackendAddr(SocketAddr::from(([10, 0, 0, 5], 4433)))
}

fn client(i: usize, port: u16) -> ClientAddr {
    let ip = Ipv4Addr::from(0x0a00_0000u32 + u32::try_from(i).unwrap() + 1);
    ClientAddr(SocketAddr::V4(SocketAddrV4::new(ip, port)))
}

fn shard(index: u32) -> Relay {
    let mut relay = Relay::new(
        RelayConfig {
            max_sessions: 1 << 20,
            max_paths: 1 << 20,
            new_sessions_per_second: 0,
            max_unvalidated_sessions: 1 << 20,
            ..RelayConfig::default()
        }
        .for_shard(index, 2),
    );
    relay
        .set_route(simple_route("game.example.com", &[backend()]))
        .unwrap();
    relay
}

/// The backend CID of session `i`.
fn scid(i: usize) -> [u8; 8] {
    let mut cid = [0xb0; 8];
    cid[4..].copy_from_slice(&u32::try_from(i).unwrap().to_be_bytes());
    cid
}

/// Shard 0 with `n` routed sessions (the backend answered each with an 8-byte CID), and
/// an empty shard 1.
fn shards(n: usize) -> Vec<Relay> {
    let (mut owner, other) = (shard(0), shard(1));
    let now = Instant::now();
    let mut rng = SimRng::new(7);
    for i in 0..n {
        let initial = one_datagram_initial("game.example.com", i as u64);
        let odcid = ConnectionId::new(&initial[6..14]).unwrap();
        let Verdict::Held { session } =
            owner.handle_client_datagram(now, client(i, 1000), &initial)
        else {
            panic!("a session");
        };
        let flight = server_first_flight(
            Version::V1,
            odcid.as_bytes(),
            &[],
            &scid(i),
            0,
            1200,
            &mut rng,
        );
        let v = owner.handle_backend_datagram(now, PathId(session.0 << 16), &flight);
        assert!(matches!(v, Verdict::ToClient { .. }), "{v:?}");
        while owner.poll_command().is_some() {}
        while owner.poll_notification().is_some() {}
    }
    vec![owner, other]
}

/// Each miss moves another session (a moved connection is known on the other shard
/// afterwards): 200 of them, whatever the session count.
#[divan::bench(args = SESSIONS, sample_count = 200, sample_size = 1)]
fn miss_to_another_shard(bencher: Bencher<'_, '_>, n: usize) {
    let mut shards = shards(n);
    // One datagram per session that moves, from a new port of its client's IP.
    let moves: Vec<(ClientAddr, Vec<u8>)> = (0..n)
        .map(|k| {
            let i = (k * 7919) % n;
            (
                client(i, 2000),
                short_header_packet(0, &scid(i), 9, &[0; 1100]),
            )
        })
        .collect();
    let mut next = 0;
    bencher.bench_local(|| {
        let (moved, datagram) = &moves[next % moves.len()];
        next += 1;
        let now = Instant::now();
        let v = shards[1].handle_client_datagram(now, *moved, datagram);
        assert!(
            matches!(v, Verdict::Held { .. }),
            "a miss each time (more iterations than sessions?)"
        );
        let Some(Command::LookupConnection { id, client, dcid }) = shards[1].poll_command() else {
            panic!("a lookup")
        };
        let claims: Vec<ShortClaim> = shards
            .iter()
            .map(|s| s.claim_short(client, &dcid))
            .collect();
        let Settled::Elsewhere {
            session,
            cid,
            backend,
            ..
        } = ShortClaim::settle(1, &claims)
        else {
            panic!("found on shard 0")
        };
        shards[1]
            .complete_lookup_moved(now, id, cid, backend, (0, session))
            .unwrap();
        let open = shards[1].poll_command();
        assert!(matches!(open, Some(Command::OpenUpstream { .. })));
        while shards[1].poll_notification().is_some() {}
        // What the host does once the backend answers on the new path.
        shards[0].moved_to_shard(now, session.unwrap());
    });
}

#[divan::bench(args = SESSIONS, sample_count = 1000, sample_size = 100)]
fn hit_on_the_owning_shard(bencher: Bencher<'_, '_>, n: usize) {
    let mut shards = shards(n);
    let datagram = short_header_packet(0, &scid(n / 2), 9, &[0; 1100]);
    let from = client(n / 2, 1000);
    bencher.bench_local(|| {
        let v = shards[0].handle_client_datagram(Instant::now(), from, &datagram);
        assert!(matches!(v, Verdict::ToBackend { .. }));
    });
}

fn main() {
    divan::main();
}
