//! The driver loop around [`Relay`], as a real runtime runs it, but over the emulated
//! [`Network`]: one listener address for clients, one upstream "socket" (address) per
//! session, verdicts and events turned into sends, and an allocator that answers
//! [`Event::AllocationRequested`] after a virtual delay.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::net::{Datagram, Network};
use porter_core::{AllocationFailure, Event, Relay, Verdict};
use porter_core::{AllocationId, BackendAddr, ClientAddr, SessionId};

/// How the simulated allocator answers the requests for one fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocatorBehaviour {
    /// Allocates these game servers in turn, `delay` after each request.
    Allocate {
        /// The game servers, used round robin.
        backends: Vec<BackendAddr>,
        /// Time from request to answer.
        delay: Duration,
    },
    /// Answers with an error `delay` after each request.
    Fail {
        /// Time from request to answer.
        delay: Duration,
    },
    /// Never answers.
    Silent,
}

/// One thing the driver saw or did, with its virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// A datagram reached the listener and the relay decided.
    Client {
        /// When.
        at: Instant,
        /// The sender.
        from: ClientAddr,
        /// The datagram.
        bytes: Bytes,
        /// The relay's decision.
        verdict: Verdict,
    },
    /// A datagram reached a session's upstream socket and the relay decided.
    Backend {
        /// When.
        at: Instant,
        /// The session whose socket it reached.
        session: SessionId,
        /// Its length.
        len: usize,
        /// The relay's decision.
        verdict: Verdict,
    },
    /// The relay emitted an event.
    Event {
        /// When.
        at: Instant,
        /// The event.
        event: Event,
    },
    /// The driver passed an allocation's answer to the relay.
    Completed {
        /// When.
        at: Instant,
        /// The allocation.
        id: AllocationId,
        /// The answer.
        result: Result<BackendAddr, AllocationFailure>,
        /// Whether the relay still waited for it.
        accepted: bool,
    },
}

/// Counters of what the driver did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Datagrams that reached the listener.
    pub client_datagrams: u64,
    /// Datagrams that reached an upstream socket and were given to the relay.
    pub backend_datagrams: u64,
    /// Datagrams sent to backends (forwarded or released).
    pub to_backends: u64,
    /// Datagrams sent to clients (forwarded backend datagrams).
    pub to_clients: u64,
    /// Replies and refusals sent to clients from the listener.
    pub replies: u64,
    /// Datagrams that reached an upstream socket after its session closed (the socket
    /// is gone), or came from an address other than the socket's backend (a connected
    /// socket filters them).
    pub stray: u64,
    /// Verdicts or events that contradict the driver's view (a Forward to a backend that
    /// is not its session's, a Release before its SessionOpened, ...). Always 0 unless
    /// the relay is broken.
    pub inconsistencies: u64,
    /// Sessions opened (upstream sockets created).
    pub sockets_opened: u64,
    /// Sessions closed.
    pub sockets_closed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Upstream {
    local: SocketAddr,
    backend: BackendAddr,
}

/// Runs a [`Relay`] the way a runtime driver does, with the network and clock of a
/// simulation.
#[derive(Debug)]
pub struct RelayDriver {
    relay: Relay,
    listener: SocketAddr,
    upstream_ip: Ipv4Addr,
    next_port: u32,
    sockets: HashMap<SessionId, Upstream>,
    by_local: HashMap<SocketAddr, SessionId>,
    allocators: HashMap<Arc<str>, (AllocatorBehaviour, usize)>,
    scheduled: BTreeMap<(Instant, AllocationId), Result<BackendAddr, AllocationFailure>>,
    log: Vec<LogEntry>,
    stats: DriverStats,
}

impl RelayDriver {
    /// Drives `relay`, listening on `listener`. Upstream sockets get addresses in
    /// 10.255.0.0/16, which the simulation's other hosts must not use.
    pub fn new(relay: Relay, listener: SocketAddr) -> Self {
        Self {
            relay,
            listener,
            upstream_ip: Ipv4Addr::new(10, 255, 0, 0),
            next_port: 0,
            sockets: HashMap::new(),
            by_local: HashMap::new(),
            allocators: HashMap::new(),
            scheduled: BTreeMap::new(),
            log: Vec::new(),
            stats: DriverStats::default(),
        }
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The relay, to change routes or settings. Drain its events through
    /// [`Self::drain_events`] after calling an input method directly.
    pub fn relay_mut(&mut self) -> &mut Relay {
        &mut self.relay
    }

    /// The listener's address.
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// Sets how allocation requests for `fleet` are answered. Requests for a fleet with
    /// no behaviour set are never answered.
    pub fn set_allocator(&mut self, fleet: &str, behaviour: AllocatorBehaviour) {
        self.allocators.insert(Arc::from(fleet), (behaviour, 0));
    }

    /// Everything the driver saw, in order.
    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// The events the relay emitted, in order, with their times.
    pub fn events(&self) -> impl Iterator<Item = (Instant, &Event)> {
        self.log.iter().filter_map(|e| match e {
            LogEntry::Event { at, event } => Some((*at, event)),
            _ => None,
        })
    }

    /// Counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// The upstream socket address of a live session.
    pub fn upstream(&self, session: SessionId) -> Option<SocketAddr> {
        self.sockets.get(&session).map(|u| u.local)
    }

    /// The session whose upstream socket has this address.
    pub fn session_at(&self, local: SocketAddr) -> Option<SessionId> {
        self.by_local.get(&local).copied()
    }

    /// Whether `addr` is one of the driver's sockets (the listener or a live upstream
    /// socket).
    pub fn owns(&self, addr: SocketAddr) -> bool {
        addr == self.listener || self.by_local.contains_key(&addr)
    }

    /// Handles a datagram delivered to one of the driver's addresses; `false` (and
    /// nothing done) if `datagram.to` is not one. A datagram for an upstream socket
    /// that was closed is counted as stray.
    pub fn handle_datagram(&mut self, now: Instant, net: &mut Network, datagram: Datagram) -> bool {
        if datagram.to == self.listener {
            self.stats.client_datagrams += 1;
            let from = ClientAddr(datagram.from);
            let verdict = self
                .relay
                .handle_client_datagram(now, from, &datagram.bytes);
            match &verdict {
                Verdict::Forward { session, backend } => match self.sockets.get(session) {
                    Some(up) if up.backend == *backend => {
                        self.stats.to_backends += 1;
                        net.send(now, up.local, backend.0, datagram.bytes.clone());
                    }
                    _ => self.stats.inconsistencies += 1,
                },
                Verdict::Reply(reply) => {
                    self.stats.replies += 1;
                    net.send(now, self.listener, datagram.from, reply.clone());
                }
                Verdict::ForwardToClient { .. } => self.stats.inconsistencies += 1,
                Verdict::Buffered { .. } | Verdict::Drop(_) => {}
            }
            self.log.push(LogEntry::Client {
                at: now,
                from,
                bytes: datagram.bytes,
                verdict,
            });
            self.drain_events(now, net);
            return true;
        }
        let Some(&session) = self.by_local.get(&datagram.to) else {
            if self.is_upstream_address(datagram.to) {
                self.stats.stray += 1;
                return true;
            }
            return false;
        };
        let up = self.sockets[&session];
        if datagram.from != up.backend.0 {
            self.stats.stray += 1;
            return true;
        }
        self.stats.backend_datagrams += 1;
        let verdict = self
            .relay
            .handle_backend_datagram(now, session, &datagram.bytes);
        match &verdict {
            Verdict::ForwardToClient { session: s, client } if *s == session => {
                self.stats.to_clients += 1;
                net.send(now, self.listener, client.0, datagram.bytes.clone());
            }
            Verdict::Drop(_) => {}
            _ => self.stats.inconsistencies += 1,
        }
        self.log.push(LogEntry::Backend {
            at: now,
            session,
            len: datagram.bytes.len(),
            verdict,
        });
        self.drain_events(now, net);
        true
    }

    fn is_upstream_address(&self, addr: SocketAddr) -> bool {
        match addr.ip() {
            IpAddr::V4(ip) => ip.octets()[..2] == self.upstream_ip.octets()[..2],
            IpAddr::V6(_) => false,
        }
    }

    /// The next time [`Self::handle_timeout`] has work: the relay's timer or an
    /// allocation answer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let alloc = self.scheduled.keys().next().map(|(at, _)| *at);
        match (self.relay.poll_timeout(), alloc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Passes due allocation answers to the relay, then lets it expire what is due.
    pub fn handle_timeout(&mut self, now: Instant, net: &mut Network) {
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), result) = entry.remove_entry();
            let accepted = self
                .relay
                .complete_allocation(now, id, result.clone())
                .is_ok();
            self.log.push(LogEntry::Completed {
                at: now,
                id,
                result,
                accepted,
            });
            self.drain_events(now, net);
        }
        if self.relay.poll_timeout().is_some_and(|at| at <= now) {
            self.relay.handle_timeout(now);
            self.drain_events(now, net);
        }
    }

    /// Drains the relay's events and acts on each, as a driver must after every input.
    pub fn drain_events(&mut self, now: Instant, net: &mut Network) {
        while let Some(event) = self.relay.poll_event() {
            self.act(now, net, &event);
            self.log.push(LogEntry::Event { at: now, event });
        }
    }

    fn act(&mut self, now: Instant, net: &mut Network, event: &Event) {
        match event {
            Event::SessionOpened {
                session, backend, ..
            } => {
                if self.sockets.contains_key(session) {
                    self.stats.inconsistencies += 1;
                    return;
                }
                let n = self.next_port;
                self.next_port += 1;
                let [a, b, ..] = self.upstream_ip.octets();
                let ip = Ipv4Addr::new(a, b, (n / 60_000 / 256) as u8, (n / 60_000 % 256) as u8);
                let local = SocketAddr::new(IpAddr::V4(ip), 1024 + (n % 60_000) as u16);
                self.sockets.insert(
                    *session,
                    Upstream {
                        local,
                        backend: *backend,
                    },
                );
                self.by_local.insert(local, *session);
                self.stats.sockets_opened += 1;
            }
            Event::Release {
                session,
                backend,
                datagrams,
            } => match self.sockets.get(session) {
                Some(up) if up.backend == *backend => {
                    for d in datagrams {
                        self.stats.to_backends += 1;
                        net.send(now, up.local, backend.0, d.clone());
                    }
                }
                _ => self.stats.inconsistencies += 1,
            },
            Event::AllocationRequested { id, fleet, .. } => {
                let Some((behaviour, next)) = self.allocators.get_mut(fleet) else {
                    return;
                };
                let answer = match behaviour {
                    AllocatorBehaviour::Allocate { backends, delay } if !backends.is_empty() => {
                        let backend = backends[*next % backends.len()];
                        *next += 1;
                        Some((*delay, Ok(backend)))
                    }
                    AllocatorBehaviour::Allocate { delay, .. }
                    | AllocatorBehaviour::Fail { delay } => Some((
                        *delay,
                        Err(AllocationFailure {
                            reason: format!("fleet {fleet} has no ready game server"),
                        }),
                    )),
                    AllocatorBehaviour::Silent => None,
                };
                if let Some((delay, result)) = answer {
                    self.scheduled.insert((now + delay, *id), result);
                }
            }
            Event::AllocationCancelled { id } => {
                self.scheduled.retain(|(_, a), _| a != id);
            }
            Event::Transmit { to, datagram } => {
                self.stats.replies += 1;
                net.send(now, self.listener, to.0, datagram.clone());
            }
            Event::SessionClosed { info, .. } => {
                if let Some(up) = self.sockets.remove(&info.id) {
                    self.by_local.remove(&up.local);
                    self.stats.sockets_closed += 1;
                }
            }
            _ => {}
        }
    }
}
