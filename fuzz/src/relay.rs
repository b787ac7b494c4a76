//! The `relay` target: the `porter_core::Relay` state machine driven by a sequence of
//! operations, checked by porter-sim's relay model after every step.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};

use porter_core::initial::{seal_long_packet, Keys, Side};
use porter_core::wire::{write_varint, LongType, Version, MIN_INITIAL_DATAGRAM};
use porter_core::{
    AllocationFailure, AllocationId, AssemblerConfig, BackendAddr, ClientAddr, PathId,
    QuicLbRouting, RefusalMode, RelayConfig, Route, RouteName, RouteTarget, SessionId,
};
use porter_sim::{
    initial_spec, seal_padded, write_crypto, DescribedHello, ModelOp, RelayModel, SNI_POOL,
};

const CLIENTS: [&str; 6] = [
    "192.0.2.1:1000",
    "192.0.2.1:1001",
    "192.0.2.2:1000",
    "198.51.100.9:443",
    "[2001:db8::1]:1000",
    "[2001:db8::1]:1001",
];
const BACKENDS: [&str; 3] = ["10.0.0.1:4433", "10.0.0.2:4433", "[2001:db8::b]:443"];
const ROUTE_NAMES: [&str; 6] = [
    "game1.example.com",
    "*.example.com",
    "*.eu.example.com",
    "*",
    "other.test",
    "v2.example.com",
];
const FLEETS: [&str; 2] = ["fleet-a", "fleet-b"];

/// Drives a `porter_core::Relay` through the operations `data` describes and checks it after each.
/// Panics when an invariant breaks.
///
/// Raw inputs (see [`super::split_datagrams`]) are sent as client datagrams from one
/// address, each also returned by the backend of the newest session, to a relay with a
/// default route and a fleet route. Structured inputs choose the limits, the routes, and
/// a sequence of operations: client Initials built from a small pool of DCIDs, names and
/// addresses (whole or split over datagrams, padded or not), other long and short
/// headers with known or unknown CIDs, raw client datagrams, backend datagrams carrying
/// server CIDs, route changes, allocation answers (including late and unknown ones),
/// session closes, draining, and time steps with or without `handle_timeout`.
///
/// Every operation becomes a [`ModelOp`] for one [`RelayModel`], which checks the
/// relay's bounds, timers, verdicts, commands and notifications after each (see
/// `porter_sim::RelayModel`); at the end of the input, the longest timeout passes and
/// nothing may be left ([`RelayModel::finish`]).
pub fn relay(data: &[u8]) {
    if let Some(datagrams) = super::raw_datagrams(data) {
        let setup = Setup::for_captures();
        let mut h = Harness::new(&setup);
        for d in datagrams.iter().take(64) {
            h.apply(&Op::ClientRaw {
                client: 0,
                bytes: d.to_vec(),
            });
            if !h.model.seen().is_empty() {
                let last = (h.model.seen().len() - 1) as u8;
                h.apply(&Op::BackendRaw {
                    session: last,
                    bytes: d.to_vec(),
                });
            }
            h.apply(&Op::AdvanceThenTimeout(1));
        }
        h.model.finish();
        return;
    }
    let Some(body) = super::structured(data) else {
        return;
    };
    let mut u = Unstructured::new(body);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness::new(&setup);
    for _ in 0..128 {
        match Op::arbitrary(&mut u) {
            Ok(op) => h.apply(&op),
            Err(_) => break,
        }
        if u.is_empty() {
            break;
        }
    }
    h.model.finish();
}

#[derive(Arbitrary, Debug)]
enum TargetSpec {
    /// Backends by index (none is invalid).
    Backends(Vec<u8>),
    Fleet(u8),
    /// An empty fleet name (invalid).
    EmptyFleet,
}

#[derive(Arbitrary, Debug)]
struct RouteSpec {
    name: u8,
    target: TargetSpec,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    max_sessions: u8,
    max_cids: u8,
    per_session: u8,
    total: u8,
    max_allocations: u8,
    rate: u8,
    burst: u8,
    refuse_close: bool,
    idle_ms: u16,
    handshake_ms: u16,
    hello_limit: u8,
    max_datagrams: u8,
    seed: u64,
    routes: Vec<RouteSpec>,
}

impl Setup {
    fn for_captures() -> Self {
        Self {
            max_sessions: 3,
            max_cids: 3,
            per_session: 4,
            total: 4,
            max_allocations: 1,
            rate: 0,
            burst: 1,
            refuse_close: true,
            idle_ms: 40,
            handshake_ms: 20,
            hello_limit: 3,
            max_datagrams: 3,
            seed: 7,
            routes: vec![
                RouteSpec {
                    name: 3,
                    target: TargetSpec::Backends(vec![0, 1]),
                },
                RouteSpec {
                    name: 0,
                    target: TargetSpec::Fleet(0),
                },
            ],
        }
    }

    fn config(&self) -> RelayConfig {
        let pick = |choices: &[usize], i: u8| choices[usize::from(i) % choices.len()];
        RelayConfig {
            idle_timeout: Duration::from_millis(1 + u64::from(self.idle_ms)),
            handshake_timeout: Duration::from_millis(1 + u64::from(self.handshake_ms)),
            max_sessions: 1 + usize::from(self.max_sessions % 8),
            max_cids_per_session: 1 + usize::from(self.max_cids % 4),
            // Derived from bytes already read, so that the corpus keeps its meaning.
            max_paths_per_session: 1 + usize::from(self.max_sessions / 8 % 4),
            // The socket cap: below the session cap for some inputs, so refusals for it
            // and dropped new paths are reached.
            max_paths: 1 + usize::from(self.max_sessions / 32 % 8),
            path_idle_timeout: Duration::from_millis(1 + u64::from(self.handshake_ms)),
            // Server-ID routing for half the inputs: plaintext CIDs with config ID 0 and
            // a one-octet server ID 0, 1 or 2 (a backend each), which short headers with
            // arbitrary CIDs reach.
            quic_lb: if self.burst >= 0x80 {
                quic_lb_routing()
            } else {
                QuicLbRouting::default()
            },
            // No directory lookups: the relay model has no directory to answer them.
            directory: porter_core::DirectoryConfig::default(),
            // One relay: the model has no other shard to ask.
            shard: porter_core::Shard::default(),
            max_buffered_per_session: pick(&[0, 1200, 2600, 5000, 64 * 1024], self.per_session),
            max_buffered_total: pick(&[0, 1250, 4000, 12_000, 64 << 20], self.total),
            max_pending_allocations: usize::from(self.max_allocations % 4),
            new_sessions_per_second: pick(&[0, 1, 5, 1000], self.rate) as u32,
            new_sessions_burst: 1 + u32::from(self.burst % 4),
            refusal: if self.refuse_close {
                RefusalMode::Close
            } else {
                RefusalMode::Drop
            },
            refusal_replays_per_second: pick(&[0, 1, 100], self.rate) as u32,
            // Small, so that fair admission and the caps are reached; derived from bytes
            // already read, like the path limit.
            max_unvalidated_sessions: 1 + usize::from(self.max_cids % 8),
            max_sessions_per_address: 1 + usize::from(self.max_allocations / 4 % 4),
            max_sessions_per_ip: 2 + usize::from(self.max_sessions / 32 % 4),
            allocations_per_second_per_fleet: pick(&[0, 1, 5, 1000], self.burst) as u32,
            allocations_per_second_per_prefix: pick(&[0, 1, 100], self.burst / 4) as u32,
            assembler: AssemblerConfig {
                max_client_hello_len: pick(&[512, 1500, 4096, 16 * 1024], self.hello_limit),
                max_datagrams: 1 + usize::from(self.max_datagrams % 4),
            },
            seed: self.seed,
        }
    }
}

/// A destination CID a client datagram may carry.
#[derive(Arbitrary, Debug)]
enum CidRef {
    /// One of the clients' original DCIDs.
    Client(u8),
    /// One of the CIDs backends issue.
    Server(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum BackendPacket {
    /// A long header (Initial, 0-RTT, Handshake or Retry) whose Source CID is a server
    /// CID of the pool.
    Long {
        ty: u8,
        scid: u8,
        v2: bool,
    },
    Short(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Part `part` of a client's first flight for a name of the pool.
    Initial {
        client: u8,
        cid: u8,
        v2: bool,
        name: Option<u8>,
        big: bool,
        parts: u8,
        part: u8,
        scid: u8,
        /// 0: PADDING frames to 1200 bytes; 1: zero bytes after the packet; else none.
        pad: u8,
        packet_number: u8,
    },
    /// A Handshake or 0-RTT packet (not encrypted: the relay does not decrypt them).
    ClientLong {
        client: u8,
        cid: CidRef,
        handshake: bool,
        v2: bool,
        len: u8,
    },
    ClientShort {
        client: u8,
        cid: CidRef,
        len: u8,
    },
    ClientRaw {
        client: u8,
        bytes: Vec<u8>,
    },
    Backend {
        session: u8,
        packets: Vec<BackendPacket>,
    },
    BackendRaw {
        session: u8,
        bytes: Vec<u8>,
    },
    SetRoute(RouteSpec),
    RemoveRoute(u8),
    Complete {
        allocation: u8,
        ok: bool,
        backend: u8,
    },
    Advance(u16),
    Timeout,
    AdvanceThenTimeout(u16),
    Close(u8),
    Accepting(bool),
}

fn client_addr(i: u8) -> ClientAddr {
    ClientAddr(parse_addr(CLIENTS[usize::from(i) % CLIENTS.len()]))
}

fn backend_addr(i: u8) -> BackendAddr {
    BackendAddr(parse_addr(BACKENDS[usize::from(i) % BACKENDS.len()]))
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse().expect("address constants parse")
}

/// Original DCIDs of the client pool; the last is too short for a new connection.
fn client_cid(i: u8) -> Vec<u8> {
    match i % 6 {
        4 => vec![0xc4; 20],
        5 => vec![0xc5; 4],
        i => vec![0xc0 + i; 8],
    }
}

/// Server CIDs: several lengths (zero included), and the same bytes for every backend,
/// so that sessions compete for them.
fn server_cid(i: u8) -> Vec<u8> {
    const LENGTHS: [usize; 8] = [0, 4, 8, 8, 16, 20, 8, 4];
    let i = usize::from(i) % LENGTHS.len();
    vec![0x50 + i as u8; LENGTHS[i]]
}

fn cid_bytes(cid: &CidRef) -> Vec<u8> {
    match cid {
        CidRef::Client(i) => client_cid(*i),
        CidRef::Server(i) => server_cid(*i),
        CidRef::Raw(bytes) => bytes[..bytes.len().min(24)].to_vec(),
    }
}

fn route(spec: &RouteSpec) -> Route {
    let name = ROUTE_NAMES[usize::from(spec.name) % ROUTE_NAMES.len()];
    Route {
        name: RouteName::parse(name).expect("route name constants parse"),
        target: match &spec.target {
            TargetSpec::Backends(list) => {
                RouteTarget::Simple(list.iter().take(4).map(|&i| backend_addr(i)).collect())
            }
            TargetSpec::Fleet(i) => RouteTarget::Agones {
                fleet: Arc::from(FLEETS[usize::from(*i) % FLEETS.len()]),
            },
            TargetSpec::EmptyFleet => RouteTarget::Agones {
                fleet: Arc::from(""),
            },
        },
        balance: Default::default(),
    }
}

/// The fuzz input's operations, turned into [`ModelOp`]s for one [`RelayModel`].
struct Harness {
    model: RelayModel,
    hellos: HashMap<(Option<u8>, bool), Vec<u8>>,
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let mut model = RelayModel::new(setup.config(), Instant::now());
        for spec in setup.routes.iter().take(6) {
            model.apply(ModelOp::SetRoute(route(spec)));
        }
        Self {
            model,
            hellos: HashMap::new(),
        }
    }

    /// A session of those seen, or one that never existed.
    /// A path the relay opened, or (one value in `seen + 1`) one it never did.
    fn path_ref(&self, i: u8) -> PathId {
        let seen = self.model.paths_seen();
        let i = usize::from(i) % (seen.len() + 1);
        seen.get(i).copied().unwrap_or(PathId(u64::MAX))
    }

    fn session_ref(&self, i: u8) -> SessionId {
        let seen = self.model.seen();
        let i = usize::from(i) % (seen.len() + 1);
        seen.get(i).copied().unwrap_or(SessionId(u64::MAX))
    }

    fn hello(&mut self, name: Option<u8>, big: bool) -> Vec<u8> {
        let name = name.map(|n| n % SNI_POOL.len() as u8);
        self.hellos
            .entry((name, big))
            .or_insert_with(|| {
                DescribedHello::named(name, if big { 1500 } else { 0 })
                    .build()
                    .0
            })
            .clone()
    }

    fn apply(&mut self, op: &Op) {
        let op = self.model_op(op);
        self.model.apply(op);
    }

    fn model_op(&mut self, op: &Op) -> ModelOp {
        match op {
            Op::Initial {
                client,
                cid,
                v2,
                name,
                big,
                parts,
                part,
                scid,
                pad,
                packet_number,
            } => {
                let hello = self.hello(*name, *big);
                let parts = 1 + usize::from(parts % 3);
                let part = usize::from(*part) % parts;
                let n = hello.len();
                let (from, to) = (part * n / parts, (part + 1) * n / parts);
                let mut payload = Vec::new();
                write_crypto(from as u64, &hello[from..to], &mut payload);
                let version = if *v2 { Version::V2 } else { Version::V1 };
                let dcid = client_cid(*cid);
                let scid = if scid % 3 == 0 {
                    Vec::new()
                } else {
                    vec![0xa0 + scid % 8; 8]
                };
                let keys = Keys::initial(version, &dcid, Side::Client);
                let spec = initial_spec(&dcid, &scid, u64::from(*packet_number));
                let mut datagram = Vec::new();
                match pad % 3 {
                    0 => seal_padded(&keys, &spec, &payload, &mut datagram),
                    1 => {
                        seal_long_packet(&keys, &spec, &payload, &mut datagram);
                        datagram.resize(datagram.len().max(MIN_INITIAL_DATAGRAM), 0);
                    }
                    _ => seal_long_packet(&keys, &spec, &payload, &mut datagram),
                }
                client_op(*client, datagram)
            }
            Op::ClientLong {
                client,
                cid,
                handshake,
                v2,
                len,
            } => {
                let version = if *v2 { Version::V2 } else { Version::V1 };
                let ty = if *handshake {
                    LongType::Handshake
                } else {
                    LongType::ZeroRtt
                };
                let mut d = vec![0xc0 | version.type_bits(ty)];
                d.extend_from_slice(&version.to_wire().to_be_bytes());
                let dcid = cid_bytes(cid);
                d.push(dcid.len() as u8);
                d.extend_from_slice(&dcid);
                d.push(0);
                write_varint(u64::from(*len) + 20, &mut d);
                d.resize(d.len() + usize::from(*len) + 20, 0x33);
                client_op(*client, d)
            }
            Op::ClientShort { client, cid, len } => {
                let mut d = vec![0x40];
                d.extend_from_slice(&cid_bytes(cid));
                d.resize(d.len() + usize::from(*len), 0x77);
                client_op(*client, d)
            }
            Op::ClientRaw { client, bytes } => client_op(*client, bytes.clone()),
            Op::Backend { session, packets } => {
                let mut d = Vec::new();
                for p in packets.iter().take(3) {
                    match p {
                        BackendPacket::Long { ty, scid, v2 } => {
                            let version = if *v2 { Version::V2 } else { Version::V1 };
                            let ty = match ty % 4 {
                                0 => LongType::Initial,
                                1 => LongType::ZeroRtt,
                                2 => LongType::Handshake,
                                _ => LongType::Retry,
                            };
                            d.push(0xc0 | version.type_bits(ty));
                            d.extend_from_slice(&version.to_wire().to_be_bytes());
                            d.extend_from_slice(&[
                                8, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1,
                            ]);
                            let scid = server_cid(*scid);
                            d.push(scid.len() as u8);
                            d.extend_from_slice(&scid);
                            match ty {
                                LongType::Retry => d.extend_from_slice(&[0x99; 24]),
                                LongType::Initial => d.extend_from_slice(&[0, 20]),
                                _ => d.push(20),
                            }
                            if ty != LongType::Retry {
                                d.extend_from_slice(&[0x42; 20]);
                            }
                        }
                        BackendPacket::Short(len) => {
                            d.push(0x41);
                            d.resize(d.len() + usize::from(*len), 0x24);
                        }
                    }
                }
                ModelOp::Backend {
                    path: self.path_ref(*session),
                    datagram: d,
                }
            }
            Op::BackendRaw { session, bytes } => ModelOp::Backend {
                path: self.path_ref(*session),
                datagram: bytes.clone(),
            },
            Op::SetRoute(spec) => ModelOp::SetRoute(route(spec)),
            Op::RemoveRoute(i) => ModelOp::RemoveRoute(
                RouteName::parse(ROUTE_NAMES[usize::from(*i) % ROUTE_NAMES.len()])
                    .expect("route name constants parse"),
            ),
            Op::Complete {
                allocation,
                ok,
                backend,
            } => {
                let allocations = self.model.allocations();
                let i = usize::from(*allocation) % (allocations.len() + 1);
                let id = allocations
                    .get(i)
                    .copied()
                    .unwrap_or(AllocationId(u64::MAX));
                let index = usize::from(*backend) % BACKENDS.len();
                if *ok && *backend >= 0x80 {
                    // The answer names a server ID: the backend's own (not in the
                    // configuration), another backend's, a configured one, or garbage.
                    let allocated = |i: usize| format!("{:02x}", BACKENDS.len() + i);
                    let server_id = match *backend & 0x60 {
                        0x00 => allocated(index),
                        0x20 => allocated((index + 1) % BACKENDS.len()),
                        0x40 => format!("{index:02x}"),
                        _ => "zz".to_owned(),
                    };
                    return ModelOp::CompleteWithServerId {
                        id,
                        backend: backend_addr(*backend),
                        server_id,
                    };
                }
                let backend = backend_addr(*backend);
                let result = if *ok {
                    Ok(backend)
                } else {
                    Err(AllocationFailure {
                        reason: "fuzz".into(),
                    })
                };
                ModelOp::Complete { id, result }
            }
            Op::Advance(ms) => ModelOp::Advance(Duration::from_millis(u64::from(*ms))),
            Op::Timeout => ModelOp::Timeout,
            Op::AdvanceThenTimeout(ms) => {
                ModelOp::AdvanceThenTimeout(Duration::from_millis(u64::from(*ms)))
            }
            Op::Close(i) => ModelOp::Close(self.session_ref(*i)),
            Op::Accepting(on) => ModelOp::Accepting(*on),
        }
    }
}

fn client_op(client: u8, datagram: Vec<u8>) -> ModelOp {
    ModelOp::Client {
        from: client_addr(client),
        datagram,
    }
}

/// Plaintext QUIC-LB CIDs, config ID 0, server IDs 0 to 2 for the three backends.
fn quic_lb_routing() -> QuicLbRouting {
    use porter_core::quic_lb::{Config, ServerId};
    let mut routing = QuicLbRouting::new();
    routing.insert_config(Config::new(0, 1, 4, None).expect("a valid configuration"));
    for i in 0..BACKENDS.len() as u8 {
        let id = ServerId::new(&[i]).expect("one octet");
        routing.insert_server(id, backend_addr(i));
    }
    routing
}
