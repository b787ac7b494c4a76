//! The relay state machine's costs: the per-datagram forwarding decision for short
//! headers (client to backend, backend to client) with 1k and 1M established sessions,
//! the cost of a new session including its Initial decryption, and the core's memory per
//! session at 1M sessions and per extra client path (printed before the timings, measured
//! with a counting global allocator), and the cost of a short header whose unknown CID is
//! decoded as a QUIC-LB CID (single-pass AES) beside the CID-table hit.
//!
//! Run with `cargo bench -p porter-sim --bench relay`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use divan::Bencher;
use porter_core::initial::LongPacketSpec;
use porter_core::wire::{LongType, Version};
use porter_core::{
    BackendAddr, ClientAddr, Command, PathId, Relay, RelayConfig, Route, RouteName, RouteTarget,
    Verdict,
};
use porter_sim::{
    client_initial_flight, long_header_packet, short_header_packet, ClientHelloSpec,
    InitialFlightSpec, SimRng,
};

/// Counts the bytes currently allocated, to measure memory per session.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the caller's arguments;
// only a counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SNI: &str = "bench.example.com";
/// Sessions sampled (at random) for the forwarding benchmarks: with 1M sessions, 64k
/// random ones keep the tables' working set far beyond the CPU caches, as a busy relay's
/// is.
const SAMPLES: usize = 1 << 16;

fn backend() -> BackendAddr {
    BackendAddr(SocketAddr::from(([10, 0, 0, 1], 443)))
}

fn client_addr(i: usize) -> ClientAddr {
    let ip = Ipv4Addr::from(0x0a00_0000 + (i / 50_000) as u32);
    ClientAddr(SocketAddr::V4(SocketAddrV4::new(
        ip,
        10_000 + (i % 50_000) as u16,
    )))
}

/// A relay with a route, no rate limit and room for `sessions`.
fn relay(sessions: usize) -> Relay {
    let mut relay = Relay::new(RelayConfig {
        max_sessions: sessions.max(1) * 2,
        new_sessions_per_second: 0,
        ..RelayConfig::default()
    });
    relay
        .set_route(Route {
            name: RouteName::parse(SNI).unwrap(),
            target: RouteTarget::Simple(vec![backend()]),
            balance: Default::default(),
        })
        .unwrap();
    relay
}

/// Makes one-datagram client Initials (1200 bytes, QUIC v1, a ~260-byte ClientHello)
/// with fresh 8-byte DCIDs.
struct InitialMaker {
    hello: Vec<u8>,
    rng: SimRng,
}

impl InitialMaker {
    fn new(seed: u64) -> Self {
        let mut rng = SimRng::new(seed);
        let hello = ClientHelloSpec {
            sni: Some(SNI.into()),
            alpn: vec![b"h3".to_vec()],
            initial_scid: vec![0x5c; 8],
            post_quantum: false,
        }
        .build(&mut rng);
        Self { hello, rng }
    }

    fn next(&mut self) -> Vec<u8> {
        let dcid = self.rng.bytes(8);
        let mut flight = client_initial_flight(
            &InitialFlightSpec {
                version: Version::V1,
                dcid: &dcid,
                scid: &[0x5c; 8],
                token: &[],
                first_packet_number: 0,
                datagram_size: 1200,
                chaos: false,
            },
            &self.hello,
        );
        flight.pop().expect("one datagram")
    }
}

/// `n` established sessions, each with its client's original DCID and one 8-byte server
/// CID learned from a backend Initial+Handshake, and a sample of their short-header
/// datagrams in random order.
struct Fixture {
    relay: Relay,
    /// (client address, the server CID the client uses, session).
    samples: Vec<(ClientAddr, [u8; 8], PathId)>,
    /// The receive buffer: a 1200-byte client short header; each iteration writes its
    /// sample's CID into it, as a driver receives every datagram into one buffer.
    from_client: Vec<u8>,
    /// A backend short header (1200 bytes).
    from_backend: Vec<u8>,
    now: Instant,
    /// Bytes the relay allocated for the sessions, per session.
    bytes_per_session: f64,
}

impl Fixture {
    fn build(n: usize) -> Self {
        let now = Instant::now();
        let mut maker = InitialMaker::new(n as u64);
        let mut rng = SimRng::new(0xbe7c4);
        let mut relay = relay(n);
        let mut server_cids = Vec::with_capacity(n);
        let mut sessions = Vec::with_capacity(n);
        // Measured from here: what the relay keeps per session (the Initials, commands and
        // notifications are freed within each iteration; the two Vecs above are reserved
        // already).
        let before = ALLOCATED.load(Ordering::Relaxed);
        for i in 0..n {
            let initial = maker.next();
            let verdict = relay.handle_client_datagram(now, client_addr(i), &initial);
            assert!(
                matches!(verdict, Verdict::Held { .. }),
                "session {i}: {verdict:?}"
            );
            // The session's first path: its upstream socket's key.
            let mut session = None;
            while let Some(command) = relay.poll_command() {
                if let Command::OpenUpstream { path, .. } = command {
                    session = Some(path);
                }
            }
            let session = session.expect("a simple route opens the session at once");
            while relay.poll_notification().is_some() {}
            let scid: [u8; 8] = rng.next_u64().to_be_bytes();
            let mut answer = Vec::with_capacity(200);
            for ty in [LongType::Initial, LongType::Handshake] {
                long_header_packet(
                    Version::V1,
                    &LongPacketSpec {
                        ty,
                        dcid: &[0x5c; 8],
                        scid: &scid,
                        token: &[],
                        packet_number: 0,
                        pn_len: 2,
                    },
                    &[0; 60],
                    &mut answer,
                );
            }
            let v = relay.handle_backend_datagram(now, session, &answer);
            assert!(matches!(v, Verdict::ToClient { .. }), "{v:?}");
            server_cids.push(scid);
            sessions.push(session);
        }
        let after = ALLOCATED.load(Ordering::Relaxed);
        let bytes_per_session = (after as f64 - before as f64) / n as f64;
        let samples = (0..SAMPLES.min(n))
            .map(|_| {
                let i = rng.index(n);
                (client_addr(i), server_cids[i], sessions[i])
            })
            .collect();
        Self {
            relay,
            samples,
            from_client: short_header_packet(0x01, &[0; 8], 7, &[0xab; 1190]),
            from_backend: short_header_packet(0x01, &[0x5c; 8], 9, &[0xcd; 1190]),
            now,
            bytes_per_session,
        }
    }
}

fn fixture(n: usize) -> &'static Mutex<Fixture> {
    static SMALL: OnceLock<Mutex<Fixture>> = OnceLock::new();
    static LARGE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    let cell = if n <= 1_000 { &SMALL } else { &LARGE };
    cell.get_or_init(|| Mutex::new(Fixture::build(n)))
}

const SESSIONS: [usize; 2] = [1_000, 1_000_000];

/// `handle_client_datagram` for a short header of an established session (a random one
/// of the sample each time).
#[divan::bench(args = SESSIONS, sample_count = 1000, sample_size = 100)]
fn client_short_header(bencher: Bencher<'_, '_>, sessions: usize) {
    let mut f = fixture(sessions).lock().unwrap();
    let f = &mut *f;
    let mut i = 0;
    bencher.bench_local(|| {
        let (from, cid, _) = &f.samples[i % f.samples.len()];
        i += 1;
        f.from_client[1..9].copy_from_slice(cid);
        f.relay.handle_client_datagram(f.now, *from, &f.from_client)
    });
}

/// `handle_backend_datagram` for a short header on an established session's path.
#[divan::bench(args = SESSIONS, sample_count = 1000, sample_size = 100)]
fn backend_short_header(bencher: Bencher<'_, '_>, sessions: usize) {
    let mut f = fixture(sessions).lock().unwrap();
    let f = &mut *f;
    let mut i = 0;
    bencher.bench_local(|| {
        let session = f.samples[i % f.samples.len()].2;
        i += 1;
        f.relay
            .handle_backend_datagram(f.now, session, &f.from_backend)
    });
}

/// A new connection: a one-datagram Initial with a fresh DCID on a simple route, decrypted,
/// parsed, routed and opened (its `OpenUpstream` and `SessionOpened` drained), as the
/// driver does it.
#[divan::bench(sample_count = 200, sample_size = 100)]
fn new_session(bencher: Bencher<'_, '_>) {
    let mut relay = relay(10_000_000);
    let mut maker = InitialMaker::new(7);
    let now = Instant::now();
    let mut i = 0;
    bencher
        .with_inputs(|| {
            i += 1;
            (client_addr(i), maker.next())
        })
        .bench_local_values(|(from, initial)| {
            let verdict = relay.handle_client_datagram(now, from, &initial);
            debug_assert!(matches!(verdict, Verdict::Held { .. }));
            while let Some(command) = relay.poll_command() {
                drop(divan::black_box(command));
            }
            while let Some(notification) = relay.poll_notification() {
                drop(divan::black_box(notification));
            }
            verdict
        });
}

/// `handle_client_datagram` for a short header whose DCID the relay does not know and
/// that decodes as a single-pass QUIC-LB CID (config 1, 8-octet server ID, 8-octet
/// nonce) to a server ID with no backend: the CID-table misses, the ended-CID table, the
/// AES decryption and the server lookup, then the fallback rules and the counted drop.
/// The same path as a routed one up to the routing decision; beside
/// `client_short_header` (a CID-table hit).
#[divan::bench(sample_count = 1000, sample_size = 100)]
fn client_short_header_quic_lb_decoded(bencher: Bencher<'_, '_>) {
    use porter_core::quic_lb::{Config, Key, ServerId};
    use porter_core::QuicLbRouting;
    let config = Config::new(1, 8, 8, Some(Key::new([0x3c; 16]))).unwrap();
    let mut routing = QuicLbRouting::new();
    routing.insert_config(config.clone());
    routing.insert_server(ServerId::new(&[9; 8]).unwrap(), backend());
    let mut relay = Relay::new(RelayConfig {
        quic_lb: routing,
        ..RelayConfig::default()
    });
    let cids: Vec<Vec<u8>> = (0..1024u64)
        .map(|n| {
            let cid = config.encode(&[7; 8], &n.to_be_bytes()).unwrap();
            cid.as_bytes().to_vec()
        })
        .collect();
    let mut datagram = short_header_packet(0x01, &[0; 17], 7, &[0xab; 1180]);
    let from = client_addr(3);
    let now = Instant::now();
    let mut i = 0;
    bencher.bench_local(|| {
        datagram[1..18].copy_from_slice(&cids[i % cids.len()]);
        i += 1;
        relay.handle_client_datagram(now, from, &datagram)
    });
}

/// Bytes the relay allocates for one more client path of a routed session (a known CID
/// from a new address), over `n` sessions.
fn bytes_per_path(n: usize) -> f64 {
    let mut relay = relay(n);
    let now = Instant::now();
    let mut maker = InitialMaker::new(n as u64 + 1);
    let mut cids = Vec::with_capacity(n);
    for i in 0..n {
        let _ = relay.handle_client_datagram(now, client_addr(i), &maker.next());
        while relay.poll_command().is_some() {}
        while relay.poll_notification().is_some() {}
        // The server's CID, learned from its long header on the first path.
        let path = relay
            .session(porter_core::SessionId(i as u64 + 1), now)
            .unwrap()
            .paths[0]
            .id;
        let scid = (i as u64).to_be_bytes();
        let mut answer = Vec::new();
        long_header_packet(
            Version::V1,
            &LongPacketSpec {
                ty: LongType::Handshake,
                dcid: &[0x5c; 8],
                scid: &scid,
                token: &[],
                packet_number: 0,
                pn_len: 2,
            },
            &[0; 60],
            &mut answer,
        );
        let _ = relay.handle_backend_datagram(now, path, &answer);
        cids.push(scid);
    }
    let moved = |i: usize| {
        let ClientAddr(SocketAddr::V4(a)) = client_addr(i) else {
            unreachable!("IPv4 clients")
        };
        ClientAddr(SocketAddr::V4(SocketAddrV4::new(
            *a.ip(),
            a.port() ^ 0x8000,
        )))
    };
    let mut datagram = short_header_packet(0x01, &[0; 8], 7, &[0xab; 100]);
    let before = ALLOCATED.load(Ordering::Relaxed);
    for (i, cid) in cids.iter().enumerate() {
        datagram[1..9].copy_from_slice(cid);
        let verdict = relay.handle_client_datagram(now, moved(i), &datagram);
        assert!(matches!(verdict, Verdict::Held { .. }), "{verdict:?}");
        // The OpenUpstream (with its copy of the datagram) and PathOpened are the
        // driver's, and freed once executed.
        while relay.poll_command().is_some() {}
        while relay.poll_notification().is_some() {}
    }
    let after = ALLOCATED.load(Ordering::Relaxed);
    assert_eq!(relay.stats().paths, 2 * n);
    (after as f64 - before as f64) / n as f64
}

fn main() {
    // Memory first, on a quiet heap.
    let large = fixture(1_000_000).lock().unwrap();
    let small = fixture(1_000).lock().unwrap();
    println!(
        "relay memory per established session: {:.0} bytes at 1M sessions, {:.0} bytes at 1k \
         (counting allocator; original DCID + one server CID per session)",
        large.bytes_per_session, small.bytes_per_session
    );
    drop((large, small));
    println!(
        "relay memory per extra client path: {:.0} bytes at 100k sessions, {:.0} bytes at 1k \
         (a second path for every session)",
        bytes_per_path(100_000),
        bytes_per_path(1_000)
    );
    divan::main();
}
