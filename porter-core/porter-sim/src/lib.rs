//! # porter-sim
//!
//! Deterministic simulation of porter-core's relay, for porter's own tests, its fuzz
//! targets, its load generator and for embedders.
//!
//! Everything runs on one thread in virtual time: a [`Clock`], an emulated [`Network`]
//! with latency, jitter, loss, duplication and reordering drawn from a seeded
//! [`SimRng`], the [`RelayDriver`] that acts on the relay's verdicts and executes its
//! commands exactly as a runtime driver does (one upstream socket per session, opened and
//! closed when the relay says, the held datagrams sent on it as it opens) and logs them
//! with the notifications, and QUIC endpoint models that put real headers on the wire:
//! [`ClientConnection`]s send real protected Initials (built with [`ClientHelloSpec`] and
//! [`client_initial_flight`], or captured bytes), [`Server`]s answer with coalesced
//! Initial+Handshake flights or a Retry, and both then exchange short-header pings in
//! which each server names itself. The same seed gives the same run, to the datagram.
//!
//! [`Sim`] puts it together:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use porter_sim::{ConnState, ConnectSpec, ServerConfig, Sim, SimConfig};
//!
//! let mut sim = Sim::new(Instant::now(), SimConfig::default());
//! let a = sim.add_server(ServerConfig::new("a", "10.1.0.1:443".parse().unwrap()));
//! sim.route("game.example.com", &[a]);
//! let client = sim.add_client("192.0.2.1:5000".parse().unwrap());
//! let conn = sim.connect(client, ConnectSpec::new("game.example.com"));
//! sim.run_for(Duration::from_secs(1));
//! assert_eq!(sim.conn(conn).state(), ConnState::Connected);
//! assert_eq!(sim.conn(conn).servers(), ["a"]);
//! ```
//!
//! Besides the simulation, the crate is the one home of what tests, fuzz targets and the
//! load generator build packets with, and of the relay's model checker:
//!
//! - builders: [`ClientHelloSpec`] (a real client's ClientHello) and [`DescribedHello`]
//!   (a ClientHello from an `arbitrary`-decodable description, with its expected parse);
//!   [`client_initial_flight`], [`initial_spec`] and [`seal_padded`] (client Initials),
//!   [`server_first_flight`], [`retry_packet`], [`long_header_packet`],
//!   [`short_header_packet`], [`write_crypto`] and [`AckSpec`];
//! - [`SimRng`], the one seeded random number generator of the harnesses;
//! - [`RelayModel`]: performs [`ModelOp`]s on a [`porter_core::Relay`] and checks its
//!   invariants after each (the property tests and the `relay` fuzz target drive it).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod clock;
mod driver;
mod hello;
mod message;
mod model;
mod net;
mod packets;
mod rng;
mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use client::{Answer, ClientConnection, ClientId, ConnId, ConnState, ConnectSpec, HelloShape};
pub use clock::Clock;
pub use driver::{AllocatorBehaviour, DriverStats, LogEntry, RelayDriver};
pub use hello::{ClientHelloSpec, DescribedAlpn, DescribedHello, DescribedSni, SNI_POOL};
pub use model::{ModelOp, RelayModel};
pub use net::{Datagram, LinkConditions, Network, NetworkStats};
pub use packets::{
    client_initial_flight, initial_spec, long_header_packet, one_datagram_initial,
    retry_integrity_tag, retry_packet, seal_padded, server_first_flight, short_header_packet,
    write_crypto, AckSpec, InitialFlightSpec,
};
pub use rng::SimRng;
pub use server::{Server, ServerConfig, ServerConnection, ServerStats};

/// A `simple` route from `name` (an exact name, a wildcard or `*`) to `backends`, with
/// the default balancing: what most relay tests and benchmarks install.
pub fn simple_route(name: &str, backends: &[BackendAddr]) -> Route {
    Route {
        name: RouteName::parse(name).expect("a valid route name"),
        target: RouteTarget::Simple(backends.to_vec()),
        balance: Default::default(),
    }
}

use porter_core::wire::ConnectionId;
use porter_core::{BackendAddr, SessionId};
use porter_core::{Relay, RelayConfig, Verdict};
use porter_core::{Route, RouteName, RouteTarget};

/// How to set up a [`Sim`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice in the run (the relay's own seed comes from
    /// [`Self::relay`]).
    pub seed: u64,
    /// The relay's configuration.
    pub relay: RelayConfig,
    /// The conditions of every network path.
    pub network: LinkConditions,
    /// The relay's listener address.
    pub listener: SocketAddr,
}

impl Default for SimConfig {
    /// Seed 1, the default relay configuration, ideal 10 ms paths, the listener at
    /// 203.0.113.1:443.
    fn default() -> Self {
        Self {
            seed: 1,
            relay: RelayConfig::default(),
            network: LinkConditions::default(),
            listener: SocketAddr::from(([203, 0, 113, 1], 443)),
        }
    }
}

/// Identifies a server in a [`Sim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub usize);

#[derive(Clone, Copy, Debug)]
enum Host {
    Client(ClientId),
    Server(ServerId),
}

/// A client host: one UDP socket, any number of connections.
#[derive(Debug)]
struct ClientHost {
    addr: SocketAddr,
    conns: Vec<ConnId>,
}

/// Counters of the simulation itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams that reached an address nobody holds (e.g. a client's address before
    /// it rebound).
    pub undeliverable: u64,
    /// Datagrams that reached a client host but none of its connections.
    pub unclaimed: u64,
}

/// A relay, its network, clients and servers, in virtual time. See the module docs.
#[derive(Debug)]
pub struct Sim {
    clock: Clock,
    net: Network,
    driver: RelayDriver,
    rng: SimRng,
    servers: Vec<Server>,
    clients: Vec<ClientHost>,
    conns: Vec<ClientConnection>,
    hosts: HashMap<SocketAddr, Host>,
    stats: SimStats,
}

impl Sim {
    /// A simulation starting at `base` (pass one `Instant` and derive every other from
    /// [`Self::now`]).
    pub fn new(base: Instant, config: SimConfig) -> Self {
        let mut rng = SimRng::new(config.seed);
        let net = Network::new(rng.next_u64(), config.network);
        Self {
            clock: Clock::new(base),
            net,
            driver: RelayDriver::new(Relay::new(config.relay), config.listener),
            rng,
            servers: Vec::new(),
            clients: Vec::new(),
            conns: Vec::new(),
            hosts: HashMap::new(),
            stats: SimStats::default(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The network, e.g. to change its conditions mid-run.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    /// The relay driver.
    pub fn driver(&self) -> &RelayDriver {
        &self.driver
    }

    /// The relay driver, e.g. to set allocator behaviours.
    pub fn driver_mut(&mut self) -> &mut RelayDriver {
        &mut self.driver
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        self.driver.relay()
    }

    /// The relay, e.g. to change routes.
    pub fn relay_mut(&mut self) -> &mut Relay {
        self.driver.relay_mut()
    }

    /// The simulation's own counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    fn claim(&mut self, addr: SocketAddr, host: Host) {
        assert!(
            !self.hosts.contains_key(&addr) && !self.driver.owns(addr),
            "address {addr} is taken"
        );
        self.hosts.insert(addr, host);
    }

    /// Adds a server.
    pub fn add_server(&mut self, config: ServerConfig) -> ServerId {
        let id = ServerId(self.servers.len());
        self.claim(config.addr.0, Host::Server(id));
        let seed = self.rng.next_u64();
        self.servers.push(Server::new(config, seed));
        id
    }

    /// A server.
    pub fn server(&self, id: ServerId) -> &Server {
        &self.servers[id.0]
    }

    /// The server at `addr`.
    pub fn server_at(&self, addr: BackendAddr) -> Option<&Server> {
        match self.hosts.get(&addr.0) {
            Some(Host::Server(id)) => Some(&self.servers[id.0]),
            _ => None,
        }
    }

    /// Installs a simple route from `name` (`host`, `*.suffix` or `*`) to these servers
    /// (round robin).
    ///
    /// # Panics
    /// If `name` is not a valid route name or `servers` is empty.
    pub fn route(&mut self, name: &str, servers: &[ServerId]) {
        let backends = servers
            .iter()
            .map(|s| self.servers[s.0].config().addr)
            .collect();
        self.relay_mut()
            .set_route(Route {
                name: RouteName::parse(name).expect("a valid route name"),
                target: RouteTarget::Simple(backends),
                balance: Default::default(),
            })
            .expect("a route with backends");
    }

    /// Installs an Agones route from `name` to `fleet`, answered as `behaviour` says.
    ///
    /// # Panics
    /// If `name` is not a valid route name or `fleet` is empty.
    pub fn route_fleet(&mut self, name: &str, fleet: &str, behaviour: AllocatorBehaviour) {
        self.relay_mut()
            .set_route(Route {
                name: RouteName::parse(name).expect("a valid route name"),
                target: RouteTarget::Agones {
                    fleet: fleet.into(),
                },
                balance: Default::default(),
            })
            .expect("a fleet name");
        self.driver.set_allocator(fleet, behaviour);
    }

    /// Adds a client host with a socket at `addr`.
    pub fn add_client(&mut self, addr: SocketAddr) -> ClientId {
        let id = ClientId(self.clients.len());
        self.claim(addr, Host::Client(id));
        self.clients.push(ClientHost {
            addr,
            conns: Vec::new(),
        });
        id
    }

    /// A client host's current address.
    pub fn client_addr(&self, client: ClientId) -> SocketAddr {
        self.clients[client.0].addr
    }

    /// Opens a connection from `client` now: its first flight is sent at once.
    pub fn connect(&mut self, client: ClientId, spec: ConnectSpec) -> ConnId {
        let id = ConnId(self.conns.len());
        let rng = self.rng.fork();
        let mut conn = ClientConnection::new(id, client, spec, rng);
        let out = conn.start(self.now());
        self.conns.push(conn);
        self.clients[client.0].conns.push(id);
        self.send_from_client(client, out);
        id
    }

    /// A connection.
    pub fn conn(&self, id: ConnId) -> &ClientConnection {
        &self.conns[id.0]
    }

    /// Every connection, by number.
    pub fn conns(&self) -> &[ClientConnection] {
        &self.conns
    }

    /// The relay session that carries a connection: the one its first datagram that the
    /// relay took (held or forwarded) went to, found in the driver's log.
    pub fn session_of(&self, id: ConnId) -> Option<SessionId> {
        let odcid = self.conns[id.0].original_dcid();
        self.driver.log().iter().find_map(|e| match e {
            LogEntry::Client {
                bytes,
                verdict: Verdict::Held { session } | Verdict::ToBackend { session, .. },
                ..
            } if first_dcid(bytes) == Some(odcid) => Some(*session),
            _ => None,
        })
    }

    /// Moves a client host to a new address (NAT rebinding: same connections, same
    /// CIDs). Datagrams still in flight to the old address are lost.
    pub fn rebind(&mut self, client: ClientId, to: SocketAddr) {
        let from = self.clients[client.0].addr;
        self.hosts.remove(&from);
        self.claim(to, Host::Client(client));
        self.clients[client.0].addr = to;
    }

    /// Makes a connection switch to the next CID its server issued (from the same
    /// address); returns it, or `None` if the server has issued none yet.
    pub fn rotate_cid(&mut self, conn: ConnId) -> Option<ConnectionId> {
        self.conns[conn.0].rotate_cid()
    }

    /// Asks a connection for `more` answered pings, starting now.
    pub fn want_pings(&mut self, conn: ConnId, more: u32) {
        let now = self.now();
        self.conns[conn.0].want_more(now, more);
    }

    fn send_from_client(&mut self, client: ClientId, out: Vec<Bytes>) {
        let (now, from, to) = (
            self.now(),
            self.clients[client.0].addr,
            self.driver.listener(),
        );
        for d in out {
            self.net.send(now, from, to, d);
        }
    }

    /// The next time anything happens: a delivery, a relay or allocator timer, or a
    /// client timer.
    pub fn next_event(&self) -> Option<Instant> {
        let conns = self.conns.iter().filter_map(ClientConnection::poll_timeout);
        [self.net.next_delivery(), self.driver.poll_timeout()]
            .into_iter()
            .flatten()
            .chain(conns)
            .min()
    }

    /// Runs until virtual time `until`; the clock then reads `until`.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(next) = self.next_event() {
            if next > until {
                break;
            }
            self.clock.advance_to(next);
            self.step();
        }
        self.clock.advance_to(until);
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now() + duration);
    }

    /// Runs until `done` holds (checked after each step) or `limit` of virtual time has
    /// passed; returns whether `done` held.
    pub fn run_until_done(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let until = self.now() + limit;
        while !done(self) {
            match self.next_event() {
                Some(next) if next <= until => {
                    self.clock.advance_to(next);
                    self.step();
                }
                _ => {
                    self.clock.advance_to(until);
                    return done(self);
                }
            }
        }
        true
    }

    /// Does everything due now: deliveries in order, then the relay's timers, then the
    /// clients'.
    fn step(&mut self) {
        let now = self.now();
        while let Some(d) = self.net.pop_due(now) {
            self.deliver(now, d);
        }
        if self.driver.poll_timeout().is_some_and(|t| t <= now) {
            self.driver.handle_timeout(now, &mut self.net);
        }
        for i in 0..self.conns.len() {
            if self.conns[i].poll_timeout().is_some_and(|t| t <= now) {
                let out = self.conns[i].handle_timeout(now);
                let client = self.conns[i].client();
                self.send_from_client(client, out);
            }
        }
    }

    fn deliver(&mut self, now: Instant, d: Datagram) {
        if self.driver.owns(d.to) {
            self.driver.handle_datagram(now, &mut self.net, d);
            return;
        }
        match self.hosts.get(&d.to).copied() {
            Some(Host::Server(id)) => {
                let replies = self.servers[id.0].handle_datagram(d.from, &d.bytes);
                for r in replies {
                    self.net.send(now, d.to, d.from, r);
                }
            }
            Some(Host::Client(id)) => {
                if d.from != self.driver.listener() {
                    self.stats.unclaimed += 1;
                    return;
                }
                // A connection with a Source CID that the datagram names first; then
                // one with an empty Source CID.
                let conns = &self.clients[id.0].conns;
                let target = conns
                    .iter()
                    .find(|c| {
                        let c = &self.conns[c.0];
                        !c.scid().is_empty() && c.is_addressed(&d.bytes)
                    })
                    .or_else(|| conns.iter().find(|c| self.conns[c.0].scid().is_empty()))
                    .copied();
                let Some(conn) = target else {
                    self.stats.unclaimed += 1;
                    return;
                };
                let out = self.conns[conn.0].handle_datagram(now, &d.bytes);
                self.send_from_client(id, out);
            }
            None => {
                if !self.driver.handle_datagram(now, &mut self.net, d) {
                    self.stats.undeliverable += 1;
                }
            }
        }
    }
}

/// The Destination CID of a datagram's first packet, if it is a long header.
fn first_dcid(datagram: &[u8]) -> Option<ConnectionId> {
    match porter_core::wire::parse_packet(datagram) {
        Ok((porter_core::wire::Packet::Long(p), _)) => ConnectionId::new(p.dcid),
        _ => None,
    }
}
