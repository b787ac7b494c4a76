//! Property tests of the relay state machine: for arbitrary sequences of client
//! datagrams (valid Initials from a small pool, short headers with known and unknown
//! CIDs, garbage, truncations), backend datagrams, route changes, allocation answers and
//! time steps, the relay never panics, keeps every table within its configured bounds,
//! gives verdicts, commands and notifications consistent with its routes and with each
//! other, never arms its timer late, and expires exactly what is due. The checks are
//! porter-sim's relay model ([`RelayModel`]), shared with the `relay` fuzz target; this
//! file generates the operations.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use porter_core::initial::LongPacketSpec;
use porter_core::wire::{LongType, Version};
use porter_core::{
    AllocationFailure, AllocationId, AssemblerConfig, BackendAddr, ClientAddr, PathId,
    QuicLbRouting, RelayConfig, Route, RouteName, RouteTarget, SessionId,
};
use porter_sim::{
    client_initial_flight, long_header_packet, retry_packet, short_header_packet, ClientHelloSpec,
    InitialFlightSpec, ModelOp, RelayModel, SimRng,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

const BACKENDS: [&str; 3] = ["10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"];
const ROUTE_NAMES: [&str; 4] = ["a.test", "b.test", "*.play.test", "*"];
const FLEETS: [&str; 2] = ["fleet-a", "fleet-b"];
const CLIENTS: usize = 4;
/// Server IDs from here on are not in the configuration.
const FIRST_ALLOCATED_ID: u8 = 128;

fn backend(i: usize) -> BackendAddr {
    BackendAddr(BACKENDS[i % BACKENDS.len()].parse().unwrap())
}

fn client(i: usize) -> ClientAddr {
    ClientAddr(SocketAddr::from((
        [192, 0, 2, 1],
        1000 + (i % CLIENTS) as u16,
    )))
}

/// Small limits, so the tests reach them. The idle timeout is sometimes shorter than the
/// handshake timeout, sometimes longer.
fn config(idle_timeout: Duration) -> RelayConfig {
    RelayConfig {
        idle_timeout,
        handshake_timeout: Duration::from_secs(2),
        max_sessions: 5,
        max_cids_per_session: 3,
        max_paths_per_session: 2,
        path_idle_timeout: Duration::from_secs(1),
        quic_lb: quic_lb_routing(),
        max_buffered_per_session: 3000,
        max_buffered_total: 6000,
        max_pending_allocations: 1,
        new_sessions_per_second: 4,
        new_sessions_burst: 4,
        assembler: AssemblerConfig {
            max_client_hello_len: 4096,
            max_datagrams: 4,
        },
        ..RelayConfig::default()
    }
}

/// Server-ID routing: plaintext CIDs of config ID 0 (an eighth of random CIDs) with a
/// one-octet server ID; IDs below [`FIRST_ALLOCATED_ID`] each name one of the backends,
/// the others are left for allocation answers to bind.
fn quic_lb_routing() -> QuicLbRouting {
    use porter_core::quic_lb::{Config, ServerId};
    let mut routing = QuicLbRouting::new();
    routing.insert_config(Config::new(0, 1, 4, None).unwrap());
    for id in 0..FIRST_ALLOCATED_ID {
        routing.insert_server(ServerId::new(&[id]).unwrap(), backend(usize::from(id)));
    }
    routing
}

/// One connection attempt of the pool: its original DCID and its Initial datagrams.
struct PoolConn {
    dcid: Vec<u8>,
    flight: Vec<Vec<u8>>,
}

/// A few clients' Initial flights, built once: one- and two-datagram ClientHellos, both
/// versions, several server names (one without SNI, one with no route).
fn pool() -> &'static [PoolConn] {
    static POOL: OnceLock<Vec<PoolConn>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut rng = SimRng::new(0x9001);
        let snis = [
            Some("a.test"),
            Some("b.test"),
            Some("g1.play.test"),
            None,
            Some("nothing.other"),
            Some("A.TEST"),
            Some("b.test"),
        ];
        snis.iter()
            .enumerate()
            .map(|(i, sni)| {
                let dcid = rng.bytes(8 + i);
                let scid = rng.bytes(if i % 2 == 0 { 0 } else { 8 });
                let hello = ClientHelloSpec {
                    sni: sni.map(str::to_owned),
                    alpn: vec![b"h3".to_vec()],
                    initial_scid: scid.clone(),
                    post_quantum: i % 2 == 1 && i != snis.len() - 1,
                }
                .build(&mut rng);
                // The last one pads like aioquic: a 1000-byte packet, then zero bytes
                // outside any packet up to 1250 (so a cut can leave an intact Initial
                // in a datagram under 1200 bytes).
                let aioquic = i == snis.len() - 1;
                let mut flight = client_initial_flight(
                    &InitialFlightSpec {
                        version: if i == 2 { Version::V2 } else { Version::V1 },
                        dcid: &dcid,
                        scid: &scid,
                        token: &[],
                        first_packet_number: 0,
                        datagram_size: if aioquic { 1000 } else { 1250 },
                        chaos: true,
                    },
                    &hello,
                );
                if aioquic {
                    flight.iter_mut().for_each(|d| d.resize(1250, 0));
                }
                PoolConn { dcid, flight }
            })
            .collect()
    })
}

#[derive(Clone, Debug)]
enum CidPick {
    /// One the relay should know (a pool DCID or a server SCID it was shown).
    Known(usize),
    /// Random bytes.
    Random(Vec<u8>),
}

#[derive(Clone, Debug)]
enum BackendKind {
    /// Long headers with a random SCID (coalesced Initial + Handshake, or a lone one).
    Long {
        scid: Vec<u8>,
        coalesced: bool,
    },
    Short(usize),
    Garbage(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Op {
    Initial {
        client: usize,
        conn: usize,
        part: usize,
    },
    Truncated {
        client: usize,
        conn: usize,
        part: usize,
        cut: usize,
    },
    Short {
        client: usize,
        cid: CidPick,
        len: usize,
    },
    Garbage {
        client: usize,
        bytes: Vec<u8>,
    },
    /// A Handshake or 0-RTT long header (padded to 1200 bytes or not).
    ClientLong {
        client: usize,
        cid: CidPick,
        zero_rtt: bool,
        padded: bool,
    },
    Backend {
        session: usize,
        known: bool,
        kind: BackendKind,
    },
    SetSimple {
        name: usize,
        backends: Vec<usize>,
    },
    SetAgones {
        name: usize,
        fleet: usize,
    },
    RemoveRoute {
        name: usize,
    },
    Complete {
        pick: usize,
        outstanding: bool,
        ok: Option<usize>,
    },
    Close {
        session: usize,
    },
    Accepting(bool),
    Advance {
        ms: u64,
    },
    Timeout,
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..pool().len();
    prop_oneof![
        6 => (0..CLIENTS, conn.clone(), 0..2usize)
            .prop_map(|(client, conn, part)| Op::Initial { client, conn, part }),
        2 => (0..CLIENTS, conn, 0..2usize, prop_oneof![0..1300usize, 990..1200usize])
            .prop_map(|(client, conn, part, cut)| Op::Truncated { client, conn, part, cut }),
        5 => (
            0..CLIENTS,
            prop_oneof![
                3 => any::<usize>().prop_map(CidPick::Known),
                1 => prop::collection::vec(any::<u8>(), 1..21).prop_map(CidPick::Random),
            ],
            0..80usize,
        )
            .prop_map(|(client, cid, len)| Op::Short { client, cid, len }),
        1 => (0..CLIENTS, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(client, bytes)| Op::Garbage { client, bytes }),
        2 => (0..CLIENTS, any::<usize>().prop_map(CidPick::Known), any::<bool>(), any::<bool>())
            .prop_map(|(client, cid, zero_rtt, padded)| Op::ClientLong { client, cid, zero_rtt, padded }),
        5 => (
            any::<usize>(),
            prop::bool::weighted(0.9),
            prop_oneof![
                2 => (prop::collection::vec(any::<u8>(), 0..21), any::<bool>())
                    .prop_map(|(scid, coalesced)| BackendKind::Long { scid, coalesced }),
                2 => (1..60usize).prop_map(BackendKind::Short),
                1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(BackendKind::Garbage),
            ],
        )
            .prop_map(|(session, known, kind)| Op::Backend { session, known, kind }),
        2 => (0..ROUTE_NAMES.len(), prop::collection::vec(0..BACKENDS.len(), 1..3))
            .prop_map(|(name, backends)| Op::SetSimple { name, backends }),
        2 => (0..ROUTE_NAMES.len(), 0..FLEETS.len())
            .prop_map(|(name, fleet)| Op::SetAgones { name, fleet }),
        1 => (0..ROUTE_NAMES.len()).prop_map(|name| Op::RemoveRoute { name }),
        3 => (any::<usize>(), prop::bool::weighted(0.85), prop::option::weighted(0.7, 0..BACKENDS.len()))
            .prop_map(|(pick, outstanding, ok)| Op::Complete { pick, outstanding, ok }),
        1 => any::<usize>().prop_map(|session| Op::Close { session }),
        1 => prop::bool::weighted(0.7).prop_map(Op::Accepting),
        3 => prop_oneof![0..50u64, 0..3000u64].prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::Timeout),
    ]
}

/// The generator's side of a case: the operations above, turned into porter-sim's
/// [`ModelOp`]s for one [`RelayModel`], which checks every invariant after each.
struct Harness {
    model: RelayModel,
    /// CIDs the relay should know (pool DCIDs and SCIDs it saw from backends).
    cids: Vec<Vec<u8>>,
    next_unknown_allocation: u64,
}

impl Harness {
    fn new(idle_timeout: Duration) -> Self {
        let mut model = RelayModel::new(config(idle_timeout), Instant::now());
        model.apply(ModelOp::SetRoute(Route {
            name: RouteName::DEFAULT,
            target: RouteTarget::Simple(vec![backend(0), backend(1)]),
            balance: Default::default(),
        }));
        Self {
            model,
            cids: pool().iter().map(|c| c.dcid.clone()).collect(),
            next_unknown_allocation: 1_000_000,
        }
    }

    fn pick_session(&self, i: usize, known: bool) -> SessionId {
        let seen = self.model.seen();
        if known && !seen.is_empty() {
            seen[i % seen.len()]
        } else {
            SessionId((i % 40) as u64)
        }
    }

    /// A path the relay opened (`known`), or an arbitrary ID.
    fn pick_path(&self, i: usize, known: bool) -> PathId {
        let seen = self.model.paths_seen();
        if known && !seen.is_empty() {
            seen[i % seen.len()]
        } else {
            PathId((i % 40) as u64)
        }
    }

    fn known_cid(&self, cid: CidPick) -> Vec<u8> {
        match cid {
            CidPick::Known(i) => self.cids[i % self.cids.len()].clone(),
            CidPick::Random(b) => b,
        }
    }

    fn apply(&mut self, op: Op) {
        let op = self.model_op(op);
        self.model.apply(op);
    }

    fn model_op(&mut self, op: Op) -> ModelOp {
        match op {
            Op::Initial {
                client: c,
                conn,
                part,
            } => {
                let flight = &pool()[conn].flight;
                let d = &flight[part % flight.len()];
                ModelOp::Client {
                    from: client(c),
                    datagram: d.clone(),
                }
            }
            Op::Truncated {
                client: c,
                conn,
                part,
                cut,
            } => {
                let flight = &pool()[conn].flight;
                let d = &flight[part % flight.len()];
                ModelOp::Client {
                    from: client(c),
                    datagram: d[..cut.min(d.len())].to_vec(),
                }
            }
            Op::Short {
                client: c,
                cid,
                len,
            } => {
                let cid = self.known_cid(cid);
                ModelOp::Client {
                    from: client(c),
                    datagram: short_header_packet(0x15, &cid, 7, &vec![0xab; len]),
                }
            }
            Op::Garbage { client: c, bytes } => ModelOp::Client {
                from: client(c),
                datagram: bytes,
            },
            Op::ClientLong {
                client: c,
                cid,
                zero_rtt,
                padded,
            } => {
                let cid = self.known_cid(cid);
                let mut d = Vec::new();
                let ty = if zero_rtt {
                    LongType::ZeroRtt
                } else {
                    LongType::Handshake
                };
                long_header_packet(
                    Version::V1,
                    &LongPacketSpec {
                        ty,
                        dcid: &cid,
                        scid: &[],
                        token: &[],
                        packet_number: 3,
                        pn_len: 2,
                    },
                    &[0x77; 60],
                    &mut d,
                );
                if padded {
                    d.resize(1200, 0);
                }
                ModelOp::Client {
                    from: client(c),
                    datagram: d,
                }
            }
            Op::Backend {
                session,
                known,
                kind,
            } => {
                let path = self.pick_path(session, known);
                let d = match kind {
                    BackendKind::Long { scid, coalesced } => {
                        let mut d = Vec::new();
                        let types: &[LongType] = if coalesced {
                            &[LongType::Initial, LongType::Handshake]
                        } else {
                            &[LongType::Retry]
                        };
                        for &ty in types {
                            if ty == LongType::Retry {
                                d = retry_packet(Version::V1, &[1; 8], &[], &scid, b"tok", 0);
                            } else {
                                long_header_packet(
                                    Version::V1,
                                    &LongPacketSpec {
                                        ty,
                                        dcid: &[],
                                        scid: &scid,
                                        token: &[],
                                        packet_number: 0,
                                        pn_len: 2,
                                    },
                                    &[0x5a; 40],
                                    &mut d,
                                );
                            }
                        }
                        if !scid.is_empty() {
                            self.cids.push(scid);
                        }
                        d
                    }
                    BackendKind::Short(len) => short_header_packet(0, &[], 1, &vec![1; len]),
                    BackendKind::Garbage(bytes) => bytes,
                };
                ModelOp::Backend { path, datagram: d }
            }
            Op::SetSimple { name, backends } => ModelOp::SetRoute(Route {
                name: RouteName::parse(ROUTE_NAMES[name]).unwrap(),
                target: RouteTarget::Simple(backends.into_iter().map(backend).collect()),
                balance: Default::default(),
            }),
            Op::SetAgones { name, fleet } => ModelOp::SetRoute(Route {
                name: RouteName::parse(ROUTE_NAMES[name]).unwrap(),
                target: RouteTarget::Agones {
                    fleet: FLEETS[fleet].into(),
                },
                balance: Default::default(),
            }),
            Op::RemoveRoute { name } => {
                ModelOp::RemoveRoute(RouteName::parse(ROUTE_NAMES[name]).unwrap())
            }
            Op::Complete {
                pick,
                outstanding,
                ok,
            } => {
                let waiting = self.model.waiting();
                let target = if outstanding && !waiting.is_empty() {
                    Some(waiting[pick % waiting.len()])
                } else {
                    None
                };
                let id = target.map_or_else(
                    || {
                        self.next_unknown_allocation += 1;
                        AllocationId(self.next_unknown_allocation)
                    },
                    |(id, _)| id,
                );
                let result = match ok {
                    // Some answers name the game server's server ID: the backend's own
                    // (one octet, as `quic_lb_routing` has them), another, or none.
                    Some(b) if pick % 3 == 1 => {
                        let allocated = |b: usize| usize::from(FIRST_ALLOCATED_ID) + b;
                        let server_id = match pick % 4 {
                            0 => format!("{:02x}", allocated(b)),
                            1 => format!("{:02x}", allocated((b + 1) % BACKENDS.len())),
                            2 => "zz".to_owned(),
                            // In the configuration, for this backend or another.
                            _ => format!("{:02x}", b + pick % 2),
                        };
                        return ModelOp::CompleteWithServerId {
                            id,
                            backend: backend(b),
                            server_id,
                        };
                    }
                    Some(b) => Ok(backend(b)),
                    None => Err(AllocationFailure {
                        reason: "no game server".into(),
                    }),
                };
                ModelOp::Complete { id, result }
            }
            Op::Close { session } => ModelOp::Close(self.pick_session(session, true)),
            Op::Accepting(on) => ModelOp::Accepting(on),
            Op::Advance { ms } => ModelOp::Advance(Duration::from_millis(ms)),
            Op::Timeout => ModelOp::Timeout,
        }
    }
}

/// What every run must have exercised at least once, or the generator has gone blind.
const MUST_COVER: &[&str] = &[
    "to_backend",
    "to_client",
    "held",
    "answered",
    "open_upstream",
    "session_opened",
    "close_upstream",
    "transmit",
    "transmit_async",
    "open_path",
    "path_opened",
    "path_closed",
    "drop:path_limit",
    "drop:ended_connection",
    "quic_lb_adopted",
    "server_id:Bound",
    "server_id:Conflict",
    "server_id:Invalid",
    "allocate",
    "cancel_allocation",
    "allocated",
    "allocation_failed",
    "allocation_not_pending",
    "closed:idle_timeout",
    "closed:handshake_timeout",
    "closed:no_route",
    "closed:allocation_timeout",
    "closed:allocation_limit",
    "closed:closed",
    "refused:no_route",
    "refused:allocation_timeout",
    "refused:allocation_limit",
    "drop:malformed",
    "drop:initial_too_small",
    "drop:unknown_connection",
    "drop:session_limit",
    "drop:rate_limited",
    "drop:buffer_full",
    "drop:address_mismatch",
    "drop:unknown_session",
    "drop:draining",
];

fn run_case(idle_timeout: Duration, ops: Vec<Op>, coverage: &RefCell<HashMap<String, u64>>) {
    let mut h = Harness::new(idle_timeout);
    for op in ops {
        h.apply(op);
    }
    // Whatever happened, everything ends by the longest timeout.
    h.model.finish();
    let mut total = coverage.borrow_mut();
    for (what, n) in h.model.coverage() {
        *total.entry(what.clone()).or_default() += n;
    }
}

#[test]
fn relay_keeps_its_invariants() {
    // PORTER_PROPTEST_CASES=100000 for a long hunt.
    let cases = std::env::var("PORTER_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(384);
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let coverage = RefCell::new(HashMap::new());
    let mut runner = TestRunner::new(config);
    let idle = prop_oneof![Just(Duration::from_secs(1)), Just(Duration::from_secs(4))];
    let result = runner.run(
        &(idle, prop::collection::vec(op(), 1..120)),
        |(idle, ops)| {
            run_case(idle, ops, &coverage);
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let coverage = coverage.into_inner();
    let missing: Vec<&str> = MUST_COVER
        .iter()
        .copied()
        .filter(|w| !coverage.contains_key(*w))
        .collect();
    assert!(
        missing.is_empty(),
        "never exercised: {missing:?}\n{coverage:#?}"
    );
    if std::env::var_os("PORTER_PROPTEST_COVERAGE").is_some() {
        let mut all: Vec<_> = coverage.into_iter().collect();
        all.sort();
        eprintln!("{all:#?}");
    }
}
