//! The driver loop around [`Relay`], as a real runtime runs it, but over the emulated
//! [`Network`]: one listener address for clients, one upstream "socket" (address) per
//! session, verdicts acted on and [`Command`]s executed as they come (after every input:
//! the verdict, then the commands in order, then the notifications), and an allocator
//! that answers [`Command::Allocate`] after a virtual delay.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::net::{Datagram, Network};
use porter_core::{AllocationFailure, Command, Notification, Relay, Verdict};
use porter_core::{AllocationId, BackendAddr, ClientAddr, PathId, SessionId};

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
    /// A datagram reached a path's upstream socket and the relay decided.
    Backend {
        /// When.
        at: Instant,
        /// The session whose socket it reached.
        session: SessionId,
        /// The path whose socket it reached.
        path: PathId,
        /// Its length.
        len: usize,
        /// The relay's decision.
        verdict: Verdict,
    },
    /// The relay gave a command, and the driver executed it.
    Command {
        /// When.
        at: Instant,
        /// The command.
        command: Command,
    },
    /// The relay gave a notification.
    Notification {
        /// When.
        at: Instant,
        /// The notification.
        notification: Notification,
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
    /// Datagrams sent to backends (forwarded, or held and sent by an
    /// [`Command::OpenUpstream`]).
    pub to_backends: u64,
    /// Datagrams sent to clients (forwarded backend datagrams).
    pub to_clients: u64,
    /// Datagrams the relay made, sent to clients from the listener
    /// ([`Command::Transmit`]: Version Negotiation and refusals).
    pub replies: u64,
    /// Datagrams that reached an upstream socket after its session closed (the socket
    /// is gone), or came from an address other than the socket's backend (a connected
    /// socket filters them).
    pub stray: u64,
    /// Verdicts, commands or notifications that contradict the driver's view (a
    /// `ToBackend` on a path that is not the session's or to a backend that is not its
    /// socket's, a `ToClient` to an address other than its path's client, an
    /// `OpenUpstream` for a path that has a socket, a `CloseUpstream` for one that has
    /// none, a
    /// `SessionOpened` without its socket, a `SessionClosed` that leaves its socket open,
    /// an `Answered` verdict without a `Transmit` to the sender, ...). Always 0 unless the
    /// relay is broken.
    pub inconsistencies: u64,
    /// Upstream sockets opened ([`Command::OpenUpstream`]).
    pub sockets_opened: u64,
    /// Upstream sockets closed ([`Command::CloseUpstream`]).
    pub sockets_closed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Upstream {
    local: SocketAddr,
    backend: BackendAddr,
    session: SessionId,
    client: ClientAddr,
}

/// Runs a [`Relay`] the way a runtime driver does, with the network and clock of a
/// simulation.
#[derive(Debug)]
pub struct RelayDriver {
    relay: Relay,
    listener: SocketAddr,
    upstream_ip: Ipv4Addr,
    next_port: u32,
    sockets: HashMap<PathId, Upstream>,
    by_local: HashMap<SocketAddr, PathId>,
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

    /// The relay, to change routes or settings. Drain its outputs through [`Self::drain`]
    /// after calling an input method directly.
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

    /// Everything the driver saw, in order (since the last [`Self::clear_log`]).
    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// Forgets the log: a long flood would otherwise keep every datagram it carried.
    /// What reads the log ([`crate::Sim::session_of`], [`Self::commands`]) then sees
    /// only what came after.
    pub fn clear_log(&mut self) {
        self.log.clear();
    }

    /// The commands the relay gave (and the driver executed), in order, with their
    /// times.
    pub fn commands(&self) -> impl Iterator<Item = (Instant, &Command)> {
        self.log.iter().filter_map(|e| match e {
            LogEntry::Command { at, command } => Some((*at, command)),
            _ => None,
        })
    }

    /// The notifications the relay gave, in order, with their times.
    pub fn notifications(&self) -> impl Iterator<Item = (Instant, &Notification)> {
        self.log.iter().filter_map(|e| match e {
            LogEntry::Notification { at, notification } => Some((*at, notification)),
            _ => None,
        })
    }

    /// Counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// The upstream socket address of a live session's oldest open path.
    pub fn upstream(&self, session: SessionId) -> Option<SocketAddr> {
        self.paths_of(session).first().map(|(_, local, _)| *local)
    }

    /// A live session's open paths, oldest first: each path, its upstream socket's
    /// address and its client's address.
    pub fn paths_of(&self, session: SessionId) -> Vec<(PathId, SocketAddr, ClientAddr)> {
        let mut paths: Vec<_> = self
            .sockets
            .iter()
            .filter(|(_, u)| u.session == session)
            .map(|(p, u)| (*p, u.local, u.client))
            .collect();
        paths.sort_by_key(|(p, ..)| *p);
        paths
    }

    /// The session whose upstream socket has this address.
    pub fn session_at(&self, local: SocketAddr) -> Option<SessionId> {
        let path = self.by_local.get(&local)?;
        self.sockets.get(path).map(|u| u.session)
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
                Verdict::ToBackend {
                    session,
                    path,
                    backend,
                } => match self.sockets.get(path) {
                    Some(up) if up.backend == *backend && up.session == *session => {
                        self.stats.to_backends += 1;
                        net.send(now, up.local, backend.0, datagram.bytes.clone());
                    }
                    _ => self.stats.inconsistencies += 1,
                },
                Verdict::ToClient { .. } => self.stats.inconsistencies += 1,
                // The answer is a Transmit among the commands drained below.
                Verdict::Held { .. } | Verdict::Answered | Verdict::Drop(_) => {}
            }
            let answered = verdict == Verdict::Answered;
            self.log.push(LogEntry::Client {
                at: now,
                from,
                bytes: datagram.bytes,
                verdict,
            });
            let first = self.log.len();
            self.drain(now, net);
            if answered {
                let transmits = self.log[first..]
                    .iter()
                    .filter(|e| {
                        matches!(e, LogEntry::Command {
                            command: Command::Transmit { to, .. },
                            ..
                        } if *to == from)
                    })
                    .count();
                if transmits != 1 {
                    self.stats.inconsistencies += 1;
                }
            }
            return true;
        }
        let Some(&path) = self.by_local.get(&datagram.to) else {
            if self.is_upstream_address(datagram.to) {
                self.stats.stray += 1;
                return true;
            }
            return false;
        };
        let up = self.sockets[&path];
        let session = up.session;
        if datagram.from != up.backend.0 {
            self.stats.stray += 1;
            return true;
        }
        self.stats.backend_datagrams += 1;
        let verdict = self
            .relay
            .handle_backend_datagram(now, path, &datagram.bytes);
        match &verdict {
            // A path's backend datagrams go to that path's client, and no other.
            Verdict::ToClient { session: s, client } if *s == session && *client == up.client => {
                self.stats.to_clients += 1;
                net.send(now, self.listener, client.0, datagram.bytes.clone());
            }
            Verdict::Drop(_) => {}
            _ => self.stats.inconsistencies += 1,
        }
        self.log.push(LogEntry::Backend {
            at: now,
            session,
            path,
            len: datagram.bytes.len(),
            verdict,
        });
        self.drain(now, net);
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
            self.drain(now, net);
        }
        if self.relay.poll_timeout().is_some_and(|at| at <= now) {
            self.relay.handle_timeout(now);
            self.drain(now, net);
        }
    }

    /// Drains the relay's outputs as a driver must after every input: executes each
    /// command in order, then takes the notifications; both are logged.
    pub fn drain(&mut self, now: Instant, net: &mut Network) {
        while let Some(command) = self.relay.poll_command() {
            self.execute(now, net, &command);
            self.log.push(LogEntry::Command { at: now, command });
        }
        while let Some(notification) = self.relay.poll_notification() {
            self.check(&notification);
            self.log.push(LogEntry::Notification {
                at: now,
                notification,
            });
        }
    }

    fn execute(&mut self, now: Instant, net: &mut Network, command: &Command) {
        match command {
            Command::OpenUpstream {
                session,
                path,
                client,
                backend,
                datagrams,
            } => {
                if self.sockets.contains_key(path) {
                    self.stats.inconsistencies += 1;
                    return;
                }
                let n = self.next_port;
                self.next_port += 1;
                let [a, b, ..] = self.upstream_ip.octets();
                let ip = Ipv4Addr::new(a, b, (n / 60_000 / 256) as u8, (n / 60_000 % 256) as u8);
                let local = SocketAddr::new(IpAddr::V4(ip), 1024 + (n % 60_000) as u16);
                self.sockets.insert(
                    *path,
                    Upstream {
                        local,
                        backend: *backend,
                        session: *session,
                        client: *client,
                    },
                );
                self.by_local.insert(local, *path);
                self.stats.sockets_opened += 1;
                for d in datagrams {
                    self.stats.to_backends += 1;
                    net.send(now, local, backend.0, d.clone());
                }
            }
            Command::Transmit { to, datagram } => {
                self.stats.replies += 1;
                net.send(now, self.listener, to.0, datagram.clone());
            }
            Command::Allocate { id, fleet, .. } => {
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
            Command::CancelAllocation { id } => {
                self.scheduled.retain(|(_, a), _| a != id);
            }
            Command::CloseUpstream { session, path } => match self.sockets.remove(path) {
                Some(up) if up.session == *session => {
                    self.by_local.remove(&up.local);
                    self.stats.sockets_closed += 1;
                }
                Some(up) => {
                    self.by_local.remove(&up.local);
                    self.stats.inconsistencies += 1;
                }
                None => self.stats.inconsistencies += 1,
            },
            // No directory in the simulation: the relay's own timer ends the lookup.
            Command::LookupConnection { .. } | Command::ConnectionMoved { .. } => {}
        }
    }

    /// Notifications change nothing for the driver; they are checked against the sockets
    /// the commands left (the commands of the same input were executed already).
    fn check(&mut self, notification: &Notification) {
        let consistent = match notification {
            Notification::SessionOpened {
                session, backend, ..
            } => {
                let paths = self.paths_of(*session);
                paths.len() == 1 && self.sockets[&paths[0].0].backend == *backend
            }
            Notification::SessionClosed { info, .. } => self.paths_of(info.id).is_empty(),
            Notification::Refused { session, .. } => self.paths_of(*session).is_empty(),
            Notification::PathOpened {
                session,
                path,
                client,
            } => self
                .sockets
                .get(path)
                .is_some_and(|up| up.session == *session && up.client == *client),
            Notification::PathClosed { path, .. } => !self.sockets.contains_key(path),
            Notification::RouteExpired { .. } => true,
            Notification::ConnectionIdsLearned { session, .. } => {
                !self.paths_of(*session).is_empty()
            }
        };
        if !consistent {
            self.stats.inconsistencies += 1;
        }
    }
}
