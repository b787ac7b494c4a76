//! Property tests of the relay state machine: for arbitrary sequences of client
//! datagrams (valid Initials from a small pool, short headers with known and unknown
//! CIDs, garbage, truncations), backend datagrams, route changes, allocation answers and
//! time steps, the relay never panics, keeps every table within its configured bounds,
//! gives verdicts and events consistent with its routes and with each other, never
//! arms its timer late, and expires exactly what is due.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use porter_core::initial::LongPacketSpec;
use porter_core::wire::{LongType, Version};
use porter_core::{
    AllocationFailure, AllocationId, AssemblerConfig, BackendAddr, ClientAddr, Event, Relay,
    RelayConfig, Route, RouteName, RouteTarget, SessionId, SessionState, Verdict,
};
use porter_sim::{
    client_initial_flight, long_header_packet, short_header_packet, ClientHelloSpec,
    InitialFlightSpec, SimRng,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

const BACKENDS: [&str; 3] = ["10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"];
const ROUTE_NAMES: [&str; 4] = ["a.test", "b.test", "*.play.test", "*"];
const FLEETS: [&str; 2] = ["fleet-a", "fleet-b"];
const CLIENTS: usize = 4;

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

/// What the test knows, from the relay's own outputs, to check the next ones against.
#[derive(Default)]
struct Model {
    /// Sessions seen (in any verdict or event), in order.
    seen: Vec<SessionId>,
    /// Sessions opened and not closed, with their backend.
    open: HashMap<SessionId, BackendAddr>,
    closed: HashSet<SessionId>,
    /// Allocations requested and not yet completed or cancelled, with their session.
    outstanding: Vec<(AllocationId, SessionId)>,
    /// CIDs the relay should know (pool DCIDs and SCIDs it saw from backends).
    cids: Vec<Vec<u8>>,
    next_unknown_allocation: u64,
}

impl Model {
    fn see(&mut self, s: SessionId) {
        if !self.seen.contains(&s) {
            self.seen.push(s);
        }
    }
}

struct Harness {
    relay: Relay,
    model: Model,
    now: Instant,
    config: RelayConfig,
    /// What the case exercised, by name (verdicts, drop reasons, events).
    coverage: HashMap<String, u64>,
}

impl Harness {
    fn new(idle_timeout: Duration) -> Self {
        let config = config(idle_timeout);
        let mut relay = Relay::new(config.clone());
        relay
            .set_route(Route {
                name: RouteName::Default,
                target: RouteTarget::Simple(vec![backend(0), backend(1)]),
            })
            .unwrap();
        let mut model = Model {
            next_unknown_allocation: 1_000_000,
            ..Model::default()
        };
        model.cids = pool().iter().map(|c| c.dcid.clone()).collect();
        Self {
            relay,
            model,
            now: Instant::now(),
            config,
            coverage: HashMap::new(),
        }
    }

    /// Checks a verdict and the events that follow it. `allocated` is the backend just
    /// passed to `complete_allocation`, if that was the input.
    fn cover(&mut self, what: impl Into<String>) {
        *self.coverage.entry(what.into()).or_default() += 1;
    }

    fn after(&mut self, verdict: Option<Verdict>, allocated: Option<(SessionId, BackendAddr)>) {
        let now = self.now;
        match &verdict {
            Some(Verdict::Forward { .. }) => self.cover("forward"),
            Some(Verdict::ForwardToClient { .. }) => self.cover("forward_to_client"),
            Some(Verdict::Buffered { .. }) => self.cover("buffered"),
            Some(Verdict::Reply(_)) => self.cover("reply"),
            Some(Verdict::Drop(reason)) => self.cover(format!("drop:{}", reason.as_str())),
            None => {}
        }
        match verdict {
            Some(Verdict::Forward { session, backend }) => {
                self.model.see(session);
                assert_eq!(
                    self.model.open.get(&session),
                    Some(&backend),
                    "{session}: Forward to the backend it was opened with"
                );
            }
            Some(Verdict::ForwardToClient { session, client }) => {
                self.model.see(session);
                assert!(self.model.open.contains_key(&session), "{session} is open");
                let info = self.relay.session(session, now).expect("a live session");
                assert_eq!(info.client, client);
            }
            Some(Verdict::Buffered { session }) => self.model.see(session),
            Some(Verdict::Reply(_)) | Some(Verdict::Drop(_)) | None => {}
        }
        let events: Vec<Event> = std::iter::from_fn(|| self.relay.poll_event()).collect();
        for event in events {
            match &event {
                Event::SessionClosed { reason, .. } => {
                    self.cover(format!("closed:{}", reason.as_str()));
                }
                Event::SessionOpened { .. } => self.cover("opened"),
                Event::AllocationRequested { .. } => self.cover("allocation_requested"),
                Event::AllocationCancelled { .. } => self.cover("allocation_cancelled"),
                Event::ClientAddressChanged { .. } => self.cover("client_moved"),
                Event::Transmit { .. } => self.cover("transmit"),
                _ => {}
            }
            match event {
                Event::SessionOpened {
                    session,
                    backend,
                    sni,
                    ..
                } => {
                    self.model.see(session);
                    assert!(!self.model.open.contains_key(&session), "opened twice");
                    assert!(!self.model.closed.contains(&session), "opened after close");
                    match allocated {
                        Some((s, b)) => assert_eq!((session, backend), (s, b)),
                        None => {
                            // Routed now: the backend is one the current route names.
                            let route = self.relay.route_for(sni.as_deref()).expect("a route");
                            match &route.target {
                                RouteTarget::Simple(backends) => {
                                    assert!(
                                        backends.contains(&backend),
                                        "{backend} not in {route:?}"
                                    );
                                }
                                other => panic!("opened without allocation on {other:?}"),
                            }
                        }
                    }
                    self.model.open.insert(session, backend);
                }
                Event::Release {
                    session,
                    backend,
                    datagrams,
                } => {
                    assert_eq!(
                        self.model.open.get(&session),
                        Some(&backend),
                        "{session}: Release follows its SessionOpened"
                    );
                    assert!(!datagrams.is_empty());
                }
                Event::AllocationRequested {
                    id, session, fleet, ..
                } => {
                    self.model.see(session);
                    assert!(FLEETS.contains(&&*fleet));
                    assert!(self.model.outstanding.iter().all(|(a, _)| *a != id));
                    self.model.outstanding.push((id, session));
                }
                Event::AllocationCancelled { id } => {
                    let i = self
                        .model
                        .outstanding
                        .iter()
                        .position(|(a, _)| *a == id)
                        .expect("only outstanding allocations are cancelled");
                    self.model.outstanding.remove(i);
                }
                Event::SessionClosed { info, .. } => {
                    assert!(self.model.closed.insert(info.id), "closed twice");
                    self.model.open.remove(&info.id);
                    assert!(
                        self.model.outstanding.iter().all(|(_, s)| *s != info.id),
                        "a closed session's allocation was cancelled first"
                    );
                }
                Event::Transmit { .. }
                | Event::ConnectionRefused { .. }
                | Event::ClientAddressChanged { .. } => {}
                // This test installs no temporary routes.
                Event::RouteExpired { name } => panic!("route {name} expired, none was temporary"),
            }
        }
        self.check_bounds();
    }

    fn check_bounds(&self) {
        let c = &self.config;
        let stats = self.relay.stats();
        let sessions = self.relay.sessions(self.now);
        assert!(stats.sessions <= c.max_sessions, "{stats:?}");
        assert_eq!(stats.sessions, sessions.len());
        assert!(
            stats.connection_ids <= stats.sessions * c.max_cids_per_session,
            "{stats:?}"
        );
        assert!(stats.buffered_bytes <= c.max_buffered_total, "{stats:?}");
        // Refusals are remembered for one handshake timeout, at most 16 384 of them.
        assert!(stats.remembered_refusals <= 16 * 1024, "{stats:?}");
        assert!(
            stats.remembered_refusals as u64 <= stats.refused,
            "{stats:?}"
        );
        assert!(
            stats.allocations_in_flight <= c.max_pending_allocations,
            "{stats:?}"
        );
        assert_eq!(stats.allocations_in_flight, self.model.outstanding.len());
        let pending = sessions
            .iter()
            .filter(|s| s.state != SessionState::Established)
            .count();
        assert_eq!(stats.pending_sessions, pending, "{stats:?}");
        if stats.sessions == 0 {
            assert_eq!((stats.buffered_bytes, stats.connection_ids), (0, 0));
        }
        for s in &sessions {
            assert_eq!(
                s.backend.is_some(),
                s.state == SessionState::Established,
                "{s:?}"
            );
            if let Some(b) = s.backend {
                assert_eq!(self.model.open.get(&s.id), Some(&b));
            }
        }
        // The timer is never late: it is armed at or before every session's deadline.
        let deadline = sessions
            .iter()
            .map(|s| match s.state {
                SessionState::Established => self.now + c.idle_timeout - s.idle.min(c.idle_timeout),
                _ => self.now + c.handshake_timeout - s.age.min(c.handshake_timeout),
            })
            .min();
        if let Some(deadline) = deadline {
            let timer = self.relay.poll_timeout().expect("sessions need a timer");
            assert!(timer <= deadline, "timer armed after a session's deadline");
        }
    }

    fn check_expired(&self) {
        let c = &self.config;
        if let Some(t) = self.relay.poll_timeout() {
            assert!(t > self.now, "handle_timeout left due work");
        }
        for s in self.relay.sessions(self.now) {
            match s.state {
                SessionState::Established => {
                    assert!(s.idle < c.idle_timeout, "{s:?} should have idled out");
                }
                _ => assert!(s.age < c.handshake_timeout, "{s:?} should have timed out"),
            }
        }
    }

    fn pick_session(&self, i: usize, known: bool) -> SessionId {
        if known && !self.model.seen.is_empty() {
            self.model.seen[i % self.model.seen.len()]
        } else {
            SessionId((i % 40) as u64)
        }
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Initial {
                client: c,
                conn,
                part,
            } => {
                let flight = &pool()[conn].flight;
                let d = &flight[part % flight.len()];
                let v = self.relay.handle_client_datagram(now, client(c), d);
                self.after(Some(v), None);
            }
            Op::Truncated {
                client: c,
                conn,
                part,
                cut,
            } => {
                let flight = &pool()[conn].flight;
                let d = &flight[part % flight.len()];
                let v = self
                    .relay
                    .handle_client_datagram(now, client(c), &d[..cut.min(d.len())]);
                self.after(Some(v), None);
            }
            Op::Short {
                client: c,
                cid,
                len,
            } => {
                let cid = match cid {
                    CidPick::Known(i) => self.model.cids[i % self.model.cids.len()].clone(),
                    CidPick::Random(b) => b,
                };
                let d = short_header_packet(0x15, &cid, 7, &vec![0xab; len]);
                let v = self.relay.handle_client_datagram(now, client(c), &d);
                self.after(Some(v), None);
            }
            Op::Garbage { client: c, bytes } => {
                let v = self.relay.handle_client_datagram(now, client(c), &bytes);
                self.after(Some(v), None);
            }
            Op::ClientLong {
                client: c,
                cid,
                zero_rtt,
                padded,
            } => {
                let cid = match cid {
                    CidPick::Known(i) => self.model.cids[i % self.model.cids.len()].clone(),
                    CidPick::Random(b) => b,
                };
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
                let v = self.relay.handle_client_datagram(now, client(c), &d);
                self.after(Some(v), None);
            }
            Op::Backend {
                session,
                known,
                kind,
            } => {
                let id = self.pick_session(session, known);
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
                                d = porter_sim::retry_packet(
                                    Version::V1,
                                    &[1; 8],
                                    &[],
                                    &scid,
                                    b"tok",
                                    0,
                                );
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
                            self.model.cids.push(scid);
                        }
                        d
                    }
                    BackendKind::Short(len) => short_header_packet(0, &[], 1, &vec![1; len]),
                    BackendKind::Garbage(bytes) => bytes,
                };
                let v = self.relay.handle_backend_datagram(now, id, &d);
                self.after(Some(v), None);
            }
            Op::SetSimple { name, backends } => {
                let route = Route {
                    name: RouteName::parse(ROUTE_NAMES[name]).unwrap(),
                    target: RouteTarget::Simple(backends.into_iter().map(backend).collect()),
                };
                self.relay.set_route(route).unwrap();
            }
            Op::SetAgones { name, fleet } => {
                let route = Route {
                    name: RouteName::parse(ROUTE_NAMES[name]).unwrap(),
                    target: RouteTarget::Agones {
                        fleet: FLEETS[fleet].into(),
                    },
                };
                self.relay.set_route(route).unwrap();
            }
            Op::RemoveRoute { name } => {
                let _ = self
                    .relay
                    .remove_route(&RouteName::parse(ROUTE_NAMES[name]).unwrap());
            }
            Op::Complete {
                pick,
                outstanding,
                ok,
            } => {
                let target = if outstanding && !self.model.outstanding.is_empty() {
                    Some(self.model.outstanding[pick % self.model.outstanding.len()])
                } else {
                    None
                };
                let id = target.map_or_else(
                    || {
                        self.model.next_unknown_allocation += 1;
                        AllocationId(self.model.next_unknown_allocation)
                    },
                    |(id, _)| id,
                );
                let result = match ok {
                    Some(b) => Ok(backend(b)),
                    None => Err(AllocationFailure {
                        reason: "no game server".into(),
                    }),
                };
                let answer = self.relay.complete_allocation(now, id, result.clone());
                assert_eq!(answer.is_ok(), target.is_some(), "{id}: {answer:?}");
                self.cover(match (&answer, &result) {
                    (Ok(()), Ok(_)) => "allocated",
                    (Ok(()), Err(_)) => "allocation_failed",
                    (Err(_), _) => "allocation_not_pending",
                });
                if let Some((id, session)) = target {
                    self.model.outstanding.retain(|(a, _)| *a != id);
                    let allocated = result.ok().map(|b| (session, b));
                    self.after(None, allocated);
                } else {
                    self.after(None, None);
                }
            }
            Op::Close { session } => {
                let id = self.pick_session(session, true);
                let existed = self.relay.session(id, now).is_some();
                assert_eq!(self.relay.close_session(now, id), existed);
                self.after(None, None);
            }
            Op::Accepting(on) => {
                self.relay.set_accepting(on);
                self.check_bounds();
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(ms);
                self.check_bounds();
            }
            Op::Timeout => {
                self.relay.handle_timeout(now);
                self.after(None, None);
                self.check_expired();
            }
        }
    }
}

/// What every run must have exercised at least once, or the generator has gone blind.
const MUST_COVER: &[&str] = &[
    "forward",
    "forward_to_client",
    "buffered",
    "reply",
    "opened",
    "transmit",
    "client_moved",
    "allocation_requested",
    "allocation_cancelled",
    "allocated",
    "allocation_failed",
    "allocation_not_pending",
    "closed:idle_timeout",
    "closed:handshake_timeout",
    "closed:no_route",
    "closed:allocation_timeout",
    "closed:allocation_limit",
    "closed:closed",
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
    h.now += h.config.idle_timeout.max(h.config.handshake_timeout);
    h.relay.handle_timeout(h.now);
    h.after(None, None);
    h.check_expired();
    assert_eq!(h.relay.session_count(), 0);
    let stats = h.relay.stats();
    assert_eq!((stats.connection_ids, stats.buffered_bytes), (0, 0));
    let mut total = coverage.borrow_mut();
    for (what, n) in h.coverage {
        *total.entry(what).or_default() += n;
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
