//! The `relay` target: the [`Relay`] state machine driven by a sequence of operations,
//! checked against a model after every step.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};

use porter_core::initial::{seal_long_packet, Keys, Side};
use porter_core::wire::{
    parse_packet, write_varint, LongType, Packet, Version, MIN_INITIAL_DATAGRAM,
};
use porter_core::{
    AllocationFailure, AllocationId, AssemblerConfig, BackendAddr, ClientAddr,
    CompleteAllocationError, Event, RefusalMode, Relay, RelayConfig, Route, RouteName, RouteTarget,
    SessionId, SessionState, Verdict,
};
use porter_sim::{initial_spec, seal_padded, write_crypto, DescribedHello, SNI_POOL};

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

/// Drives a [`Relay`] through the operations `data` describes and checks it after each.
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
/// Checked after every step:
/// - bounds: sessions `<= max_sessions`, connection IDs `<= sessions *
///   max_cids_per_session`, buffered bytes `<= max_buffered_total`, allocations in flight
///   `<= max_pending_allocations`, pending sessions counted once;
/// - after `handle_timeout(now)`, no routed session idle for the idle timeout and no
///   pending one older than the handshake timeout; the next timeout is never later than
///   any session's deadline, and there is one while a session exists;
/// - verdicts: `Forward` goes to the backend the session's `SessionOpened` announced, to
///   a live session; a backend's datagram for a live session goes to its current client
///   address; every drop is counted once under its reason;
/// - events: `SessionOpened` only for a route of the table that names that backend (or
///   the allocation answer), immediately followed by its `Release`; allocations requested
///   only for fleet routes, each answered, cancelled or timed out once; every session
///   closed exactly once, none left waiting on an allocation; the sessions the relay lists
///   are exactly those the events say are open.
pub fn relay(data: &[u8]) {
    if let Some(datagrams) = super::raw_datagrams(data) {
        let setup = Setup::for_captures();
        let mut h = Harness::new(&setup);
        for d in datagrams.iter().take(64) {
            h.apply(&Op::ClientRaw {
                client: 0,
                bytes: d.to_vec(),
            });
            if !h.seen.is_empty() {
                let last = (h.seen.len() - 1) as u8;
                h.apply(&Op::BackendRaw {
                    session: last,
                    bytes: d.to_vec(),
                });
            }
            h.apply(&Op::AdvanceThenTimeout(1));
        }
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
    }
}

/// What an operation was, for judging the events it caused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Client(ClientAddr),
    Backend(SessionId),
    Allocation(AllocationId, Option<BackendAddr>),
    Timeout,
    Other,
}

struct Harness {
    relay: Relay,
    config: RelayConfig,
    now: Instant,
    /// Every session ID seen, in order.
    seen: Vec<SessionId>,
    seen_set: HashSet<SessionId>,
    /// Routed sessions and the backend their `SessionOpened` named.
    opened: HashMap<SessionId, BackendAddr>,
    opened_total: u64,
    closed: HashSet<SessionId>,
    /// Every allocation requested, in order.
    allocations: Vec<AllocationId>,
    waiting: HashMap<AllocationId, SessionId>,
    hellos: HashMap<(Option<u8>, bool), Vec<u8>>,
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let config = setup.config();
        let mut relay = Relay::new(config.clone());
        for spec in setup.routes.iter().take(6) {
            let r = route(spec);
            let valid = match &r.target {
                RouteTarget::Simple(list) => !list.is_empty(),
                RouteTarget::Agones { fleet } => !fleet.is_empty(),
            };
            assert_eq!(relay.set_route(r).is_ok(), valid, "route validation");
        }
        Self {
            relay,
            config,
            now: Instant::now(),
            seen: Vec::new(),
            seen_set: HashSet::new(),
            opened: HashMap::new(),
            opened_total: 0,
            closed: HashSet::new(),
            allocations: Vec::new(),
            waiting: HashMap::new(),
            hellos: HashMap::new(),
        }
    }

    fn see(&mut self, id: SessionId) {
        if self.seen_set.insert(id) {
            self.seen.push(id);
        }
    }

    /// A session of those seen, or one that never existed.
    fn session_ref(&self, i: u8) -> SessionId {
        let i = usize::from(i) % (self.seen.len() + 1);
        self.seen.get(i).copied().unwrap_or(SessionId(u64::MAX))
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
        let before = self.relay.stats();
        let mut timed_out = false;
        let (cause, verdict) = match op {
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
                self.client(*client, &datagram)
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
                self.client(*client, &d)
            }
            Op::ClientShort { client, cid, len } => {
                let mut d = vec![0x40];
                d.extend_from_slice(&cid_bytes(cid));
                d.resize(d.len() + usize::from(*len), 0x77);
                self.client(*client, &d)
            }
            Op::ClientRaw { client, bytes } => self.client(*client, bytes),
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
                let id = self.session_ref(*session);
                self.backend(id, &d)
            }
            Op::BackendRaw { session, bytes } => {
                let id = self.session_ref(*session);
                self.backend(id, bytes)
            }
            Op::SetRoute(spec) => {
                let r = route(spec);
                let valid = match &r.target {
                    RouteTarget::Simple(list) => !list.is_empty(),
                    RouteTarget::Agones { fleet } => !fleet.is_empty(),
                };
                let name = r.name.clone();
                let expected = r.clone();
                assert_eq!(self.relay.set_route(r).is_ok(), valid, "route validation");
                if valid {
                    assert_eq!(self.relay.route(&name), Some(&expected));
                }
                (Cause::Other, None)
            }
            Op::RemoveRoute(i) => {
                let name = RouteName::parse(ROUTE_NAMES[usize::from(*i) % ROUTE_NAMES.len()])
                    .expect("route name constants parse");
                let _ = self.relay.remove_route(&name);
                assert!(self.relay.route(&name).is_none());
                (Cause::Other, None)
            }
            Op::Complete {
                allocation,
                ok,
                backend,
            } => {
                let i = usize::from(*allocation) % (self.allocations.len() + 1);
                let id = self
                    .allocations
                    .get(i)
                    .copied()
                    .unwrap_or(AllocationId(u64::MAX));
                let backend = backend_addr(*backend);
                let result = if *ok {
                    Ok(backend)
                } else {
                    Err(AllocationFailure {
                        reason: "fuzz".into(),
                    })
                };
                let answer = self.relay.complete_allocation(self.now, id, result);
                if self.waiting.remove(&id).is_some() {
                    assert_eq!(answer, Ok(()), "a waiting allocation takes its answer");
                } else {
                    assert_eq!(answer, Err(CompleteAllocationError::NotPending(id)));
                }
                (Cause::Allocation(id, ok.then_some(backend)), None)
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                (Cause::Other, None)
            }
            Op::Timeout => {
                self.relay.handle_timeout(self.now);
                timed_out = true;
                (Cause::Timeout, None)
            }
            Op::AdvanceThenTimeout(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.relay.handle_timeout(self.now);
                timed_out = true;
                (Cause::Timeout, None)
            }
            Op::Close(i) => {
                let id = self.session_ref(*i);
                let live = self.relay.session(id, self.now).is_some();
                assert_eq!(self.relay.close_session(self.now, id), live);
                (Cause::Other, None)
            }
            Op::Accepting(on) => {
                self.relay.set_accepting(*on);
                (Cause::Other, None)
            }
        };
        let events: Vec<Event> = std::iter::from_fn(|| self.relay.poll_event()).collect();
        self.check_events(cause, &events);
        if let Some(verdict) = &verdict {
            self.check_verdict(cause, verdict, &before, &events);
        }
        self.check_state(timed_out);
    }

    fn client(&mut self, client: u8, datagram: &[u8]) -> (Cause, Option<Verdict>) {
        let from = client_addr(client);
        let verdict = self.relay.handle_client_datagram(self.now, from, datagram);
        (Cause::Client(from), Some(verdict))
    }

    fn backend(&mut self, id: SessionId, datagram: &[u8]) -> (Cause, Option<Verdict>) {
        let verdict = self.relay.handle_backend_datagram(self.now, id, datagram);
        (Cause::Backend(id), Some(verdict))
    }

    fn check_events(&mut self, cause: Cause, events: &[Event]) {
        let mut i = 0;
        while i < events.len() {
            match &events[i] {
                Event::SessionOpened {
                    session,
                    backend,
                    sni,
                    ..
                } => {
                    match cause {
                        Cause::Client(_) => {
                            let Some(route) = self.relay.route_for(sni.as_deref()) else {
                                panic!("session opened for {sni:?} without a route");
                            };
                            let RouteTarget::Simple(list) = &route.target else {
                                panic!(
                                    "session opened on fleet route {route:?} without allocation"
                                );
                            };
                            assert!(
                                list.contains(backend),
                                "{backend} not a target of {route:?}"
                            );
                        }
                        Cause::Allocation(_, Some(allocated)) => {
                            assert_eq!(*backend, allocated, "the allocated backend");
                        }
                        other => panic!("session opened by {other:?}"),
                    }
                    assert!(!self.opened.contains_key(session) && !self.closed.contains(session));
                    self.see(*session);
                    self.opened.insert(*session, *backend);
                    self.opened_total += 1;
                    let Some(Event::Release {
                        session: s,
                        backend: b,
                        datagrams,
                    }) = events.get(i + 1)
                    else {
                        panic!("SessionOpened not followed by its Release: {events:?}");
                    };
                    assert_eq!((s, b), (session, backend));
                    assert!(!datagrams.is_empty(), "a session opens on held datagrams");
                    let held: usize = datagrams.iter().map(|d| d.len()).sum();
                    assert!(held <= self.config.max_buffered_per_session);
                    i += 1;
                }
                Event::Release { .. } => panic!("Release without SessionOpened: {events:?}"),
                Event::AllocationRequested {
                    id,
                    session,
                    fleet,
                    sni,
                    client,
                    ..
                } => {
                    assert_eq!(
                        cause,
                        Cause::Client(*client),
                        "allocation requested by {cause:?}"
                    );
                    let route = self.relay.route_for(sni.as_deref());
                    assert!(
                        matches!(route, Some(Route { target: RouteTarget::Agones { fleet: f }, .. }) if f == fleet),
                        "allocation from {fleet} for {sni:?}, route {route:?}"
                    );
                    assert!(
                        self.waiting.insert(*id, *session).is_none(),
                        "allocation ID reused"
                    );
                    self.allocations.push(*id);
                    self.see(*session);
                }
                Event::AllocationCancelled { id } => {
                    assert!(
                        self.waiting.remove(id).is_some(),
                        "cancelled {id}, which was not waiting"
                    );
                }
                Event::RouteExpired { name } => {
                    assert_eq!(
                        cause,
                        Cause::Timeout,
                        "route {name} expired outside a timeout"
                    );
                    assert!(
                        self.relay.route(name).is_none(),
                        "expired route {name} still set"
                    );
                }
                Event::Transmit { datagram, .. } => {
                    assert!(
                        matches!(cause, Cause::Allocation(..) | Cause::Timeout),
                        "Transmit caused by {cause:?}"
                    );
                    check_refusal(datagram);
                }
                Event::ConnectionRefused { session, .. } => {
                    let closes = events[i..].iter().any(
                        |e| matches!(e, Event::SessionClosed { info, .. } if info.id == *session),
                    );
                    assert!(closes, "a refused session closes");
                }
                Event::ClientAddressChanged { session, from, to } => {
                    assert_eq!(
                        cause,
                        Cause::Client(*to),
                        "address change caused by {cause:?}"
                    );
                    assert_ne!(from, to);
                    assert!(
                        self.opened.contains_key(session),
                        "only routed sessions move"
                    );
                }
                Event::SessionClosed { info, .. } => {
                    let id = info.id;
                    assert!(self.closed.insert(id), "{id} closed twice");
                    self.see(id);
                    self.opened.remove(&id);
                    assert!(
                        !self.waiting.values().any(|s| *s == id),
                        "{id} closed while its allocation is still awaited"
                    );
                }
            }
            i += 1;
        }
    }

    fn check_verdict(
        &mut self,
        cause: Cause,
        verdict: &Verdict,
        before: &porter_core::RelayStats,
        events: &[Event],
    ) {
        let after = self.relay.stats();
        match verdict {
            Verdict::Forward { session, backend } => {
                assert!(matches!(cause, Cause::Client(_)));
                assert_eq!(
                    self.opened.get(session),
                    Some(backend),
                    "Forward to the backend SessionOpened announced"
                );
            }
            Verdict::ForwardToClient { session, client } => {
                assert_eq!(cause, Cause::Backend(*session));
                let info = self
                    .relay
                    .session(*session, self.now)
                    .expect("forwarded for a live session");
                assert_eq!(info.client, *client, "to the session's current client");
            }
            Verdict::Buffered { session } => {
                assert!(matches!(cause, Cause::Client(_)));
                self.see(*session);
                let live = self.relay.session(*session, self.now);
                let opened_now = events
                    .iter()
                    .any(|e| matches!(e, Event::SessionOpened { session: s, .. } if s == session));
                assert!(
                    live.is_some_and(|s| s.state != SessionState::Established) || opened_now,
                    "buffered for a session neither pending nor just routed"
                );
            }
            Verdict::Reply(bytes) => {
                assert!(matches!(cause, Cause::Client(_)));
                match parse_packet(bytes) {
                    Ok((Packet::VersionNegotiation { versions, .. }, _)) => {
                        assert_eq!(versions.len(), 8);
                    }
                    _ => check_refusal(bytes),
                }
            }
            Verdict::Drop(reason) => {
                assert_eq!(
                    after.drops(*reason),
                    before.drops(*reason) + 1,
                    "a drop is counted once under {reason:?}"
                );
            }
        }
        if let Cause::Backend(id) = cause {
            // Only a routed session has an upstream socket for its backend to answer on.
            let routed = self
                .relay
                .session(id, self.now)
                .is_some_and(|s| s.state == SessionState::Established);
            match verdict {
                Verdict::Drop(porter_core::DropReason::UnknownSession) => assert!(!routed),
                Verdict::Drop(porter_core::DropReason::Empty) => assert!(routed),
                _ => assert!(routed, "backend datagram for {id} forwarded"),
            }
        }
    }

    fn check_state(&mut self, timed_out: bool) {
        let c = self.config.clone();
        let stats = self.relay.stats();
        assert!(
            stats.sessions <= c.max_sessions,
            "sessions {}",
            stats.sessions
        );
        assert!(
            stats.connection_ids <= stats.sessions * c.max_cids_per_session,
            "{} CIDs for {} sessions",
            stats.connection_ids,
            stats.sessions
        );
        assert!(
            stats.buffered_bytes <= c.max_buffered_total,
            "buffered {}",
            stats.buffered_bytes
        );
        assert!(stats.allocations_in_flight <= c.max_pending_allocations);
        assert_eq!(stats.allocations_in_flight, self.waiting.len());
        assert_eq!(stats.sessions_closed, self.closed.len() as u64);
        assert_eq!(stats.sessions_opened, self.opened_total);

        let sessions = self.relay.sessions(self.now);
        assert_eq!(sessions.len(), stats.sessions);
        assert_eq!(self.relay.session_count(), stats.sessions);
        let mut established = 0;
        let next = self.relay.poll_timeout();
        assert!(
            sessions.is_empty() || next.is_some(),
            "live sessions need a timer"
        );
        for s in &sessions {
            assert!(
                !self.closed.contains(&s.id),
                "{} listed after SessionClosed",
                s.id
            );
            self.see(s.id);
            let deadline = if s.state == SessionState::Established {
                established += 1;
                assert_eq!(
                    s.backend,
                    self.opened.get(&s.id).copied(),
                    "a routed session has the backend SessionOpened named"
                );
                if timed_out {
                    assert!(
                        s.idle < c.idle_timeout,
                        "{} idle for {:?} after timeout",
                        s.id,
                        s.idle
                    );
                }
                (self.now + c.idle_timeout).checked_sub(s.idle)
            } else {
                assert!(!self.opened.contains_key(&s.id));
                assert!(s.backend.is_none());
                if timed_out {
                    assert!(
                        s.age < c.handshake_timeout,
                        "{} pending for {:?} after timeout",
                        s.id,
                        s.age
                    );
                }
                (self.now + c.handshake_timeout).checked_sub(s.age)
            };
            if let (Some(next), Some(deadline)) = (next, deadline) {
                assert!(next <= deadline, "the timer fires by {}'s deadline", s.id);
            }
        }
        assert_eq!(
            established,
            self.opened.len(),
            "every opened session is listed"
        );
        assert_eq!(
            stats.pending_sessions,
            sessions.len() - established,
            "pending sessions counted once each"
        );
        if timed_out {
            assert!(
                next.is_none_or(|t| t > self.now),
                "nothing due after handle_timeout"
            );
        }
    }
}

/// A refusal: a server Initial (CONNECTION_CLOSE inside, not checked here).
fn check_refusal(bytes: &[u8]) {
    match parse_packet(bytes) {
        Ok((Packet::Long(p), used)) => {
            assert_eq!(p.ty, LongType::Initial, "a refusal is an Initial");
            assert_eq!(used, bytes.len());
        }
        other => panic!("refusal does not parse: {other:?}"),
    }
}
