//! A model checker of the [`Relay`] state machine: one vocabulary of operations
//! ([`ModelOp`], each a call of the relay's API with its arguments), one `apply` that
//! performs an operation and drains its outputs as a driver does (the verdict, then every
//! [`Command`] in order, then every [`Notification`]), and one set of invariant checks run
//! after every operation. The relay property tests (proptest) and the `relay` fuzz target
//! (`arbitrary`) generate operations their own way and feed them here.
//!
//! What [`RelayModel::apply`] checks after every operation:
//! - bounds: sessions `<= max_sessions`, connection IDs `<= sessions *
//!   max_cids_per_session`, buffered bytes `<= max_buffered_total` (none left once no
//!   session is) and exactly the bytes of the datagrams answered `Held` for sessions not
//!   opened yet, allocations in flight `<= max_pending_allocations` and equal to those
//!   requested and neither answered nor cancelled, remembered refusals `<= 16 384` and
//!   `<=` refusals, pending sessions counted once, opened and closed sessions counted
//!   exactly as the notifications announced them;
//! - timers: while a session exists there is a timeout, never later than any session's
//!   deadline; after `handle_timeout(now)` nothing is due, no routed session has been
//!   idle for the idle timeout and no pending or unvalidated one is older than the
//!   handshake timeout;
//! - admission: unvalidated sessions counted exactly; sessions per client address and per
//!   client IP (over their paths) within `max_sessions_per_address` and
//!   `max_sessions_per_ip`;
//! - paths: stats count exactly the paths the commands left open, at most
//!   `max_paths_per_session` per session and `max_paths` in all; remembered CIDs of ended sessions `<= 65 536`;
//! - verdicts: `ToBackend` comes from a client datagram and goes, on the path the
//!   sender's address has (its `OpenUpstream` named that address), to the backend the
//!   session's `SessionOpened` named; `ToClient` comes from a path's socket and goes to
//!   that path's client address, never another (so a backend's answers never follow a
//!   datagram that merely claimed a connection's CID from elsewhere); `Held` is for a
//!   pending session, one just opened, or a new path just opened for the sender; `Answered` comes with exactly one `Transmit`, to the
//!   datagram's sender, of a Version Negotiation with 8 versions or a refusal (a server
//!   Initial), and no other verdict of a client datagram comes with a `Transmit`; a
//!   refusal while handling a client datagram is `Answered` when refusals are answered,
//!   a drop otherwise; every drop is counted once under its reason; a backend datagram
//!   is forwarded only for a routed session;
//! - commands: `OpenUpstream` only by a client datagram or by the answer to that
//!   session's allocation, each path once, never after the session's close; a session's
//!   first carries exactly the datagrams the session was answered `Held` for, in
//!   arrival order (within `max_buffered_per_session`); a later one (a new path) only by
//!   a datagram of the routed session from an address it has no path for, carrying just
//!   that datagram, to the session's backend; `CloseUpstream` only for a path whose
//!   `OpenUpstream` came before, once, together with that session's `SessionClosed` or
//!   that path's `PathClosed` (by a timeout);
//!   `Allocate` only by a client datagram, for the fleet of the name's route, each ID
//!   once, and each allocation answered, cancelled (`CancelAllocation`) or timed out
//!   once; a `Transmit` not answering a client datagram only by an allocation answer or
//!   a timeout, carrying a refusal, one per refused connection (to its client) when
//!   refusals are answered and none otherwise;
//! - notifications: one `SessionOpened` for each `OpenUpstream`, in the same order, with
//!   the same session, client and backend, for a simple route of the table that names
//!   that backend (client datagram) or with the allocated backend for the session that
//!   awaited it (allocation answer); `Refused` only for a session never opened, by a
//!   client datagram (no route, allocation limit), a failed allocation of that session or
//!   a timeout (allocation timeout), and the session then closes with that reason; one
//!   `PathOpened` for each later `OpenUpstream`, for the sender, of a routed session;
//!   `PathClosed` only by a timeout, for a path whose socket just closed; every session
//!   closed exactly once, none while its allocation is awaited, with a `CloseUpstream`
//!   for each path it still had (and then with that backend in its final info); no route
//!   expires (the model sets only permanent routes); the sessions the relay lists are
//!   exactly those the outputs say are open or pending, and the upstreams the commands
//!   left open are exactly the sessions the notifications say are open;
//! - the API's answers: `set_route` accepts exactly the valid routes and stores them,
//!   `remove_route` leaves none, `complete_allocation` accepts exactly the awaited IDs,
//!   `close_session` closes exactly the live sessions.
//!
//! [`RelayModel::finish`] then lets the longest timeout pass and checks that everything
//! ended.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use porter_core::wire::{parse_packet, LongType, Packet};
use porter_core::{
    AllocationFailure, AllocationId, BackendAddr, ClientAddr, CloseReason, Command,
    CompleteAllocationError, DropReason, Notification, PathId, RefusalMode, RefuseReason, Relay,
    RelayConfig, RelayStats, Route, RouteName, RouteTarget, SessionId, SessionState, Verdict,
};

/// One call of the relay's API, with its arguments: what [`RelayModel::apply`] performs.
#[derive(Clone, Debug)]
pub enum ModelOp {
    /// `handle_client_datagram(now, from, datagram)`.
    Client {
        /// The sender.
        from: ClientAddr,
        /// The datagram.
        datagram: Vec<u8>,
    },
    /// `handle_backend_datagram(now, path, datagram)`.
    Backend {
        /// The path whose upstream socket received it.
        path: PathId,
        /// The datagram.
        datagram: Vec<u8>,
    },
    /// `set_route(route)`; valid exactly when it names at least one backend or a
    /// non-empty fleet.
    SetRoute(Route),
    /// `remove_route(name)`.
    RemoveRoute(RouteName),
    /// `complete_allocation(now, id, result)`.
    Complete {
        /// The allocation answered (awaited or not).
        id: AllocationId,
        /// The allocator's answer.
        result: Result<BackendAddr, AllocationFailure>,
    },
    /// `close_session(now, session)`.
    Close(SessionId),
    /// `set_accepting(on)`.
    Accepting(bool),
    /// Time passes; the relay is not told.
    Advance(Duration),
    /// `handle_timeout(now)`.
    Timeout,
    /// Time passes, then `handle_timeout(now)`.
    AdvanceThenTimeout(Duration),
    /// `complete_allocation_with_server_id(now, id, backend, server_id)`: a successful
    /// answer naming the game server's QUIC-LB server ID (hex text, valid or not).
    CompleteWithServerId {
        /// The allocation answered (awaited or not).
        id: AllocationId,
        /// The allocated backend.
        backend: BackendAddr,
        /// The server ID as the allocator gave it.
        server_id: String,
    },
}

/// What caused the outputs being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Client(ClientAddr),
    Backend(PathId),
    Allocation {
        id: AllocationId,
        /// The session that awaited it, if one did.
        session: Option<SessionId>,
        /// The allocated backend, for a successful answer.
        backend: Option<BackendAddr>,
    },
    Timeout,
    Other,
}

/// One open upstream socket, as the commands left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Upstream {
    session: SessionId,
    client: ClientAddr,
    backend: BackendAddr,
}

/// A [`Relay`] and what its outputs so far say about it. See the module docs.
#[derive(Debug)]
pub struct RelayModel {
    relay: Relay,
    config: RelayConfig,
    now: Instant,
    /// Every session ID seen (in a verdict, a command, a notification or the relay's
    /// list), in order.
    seen: Vec<SessionId>,
    seen_set: HashSet<SessionId>,
    /// Routed sessions and the backend their `SessionOpened` named (kept from the
    /// notifications).
    opened: HashMap<SessionId, BackendAddr>,
    opened_total: u64,
    /// Open upstreams (one per path) and their session, client and backend (kept from
    /// the commands: `OpenUpstream` in, `CloseUpstream` out).
    upstreams: HashMap<PathId, Upstream>,
    /// Every session that ever had an `OpenUpstream`.
    ever_upstream: HashSet<SessionId>,
    /// Every path opened, in order.
    paths_seen: Vec<PathId>,
    /// The datagrams answered `Held` for sessions not opened yet, in arrival order.
    held: HashMap<SessionId, Vec<Vec<u8>>>,
    closed: HashSet<SessionId>,
    /// Every allocation requested, in order.
    allocations: Vec<AllocationId>,
    /// Allocations requested and neither answered nor cancelled, in request order.
    waiting: Vec<(AllocationId, SessionId)>,
    /// Every fleet a route was set to.
    fleets: HashSet<Arc<str>>,
    /// What the operations exercised, by name: verdicts (`to_backend`, `drop:<reason>`,
    /// ...), commands (`open_upstream`, `close_upstream`, ...), notifications
    /// (`session_opened`, `closed:<reason>`, ...) and allocation answers.
    coverage: BTreeMap<String, u64>,
}

impl RelayModel {
    /// A relay with `config`, its clock at `now`, no routes.
    pub fn new(config: RelayConfig, now: Instant) -> Self {
        Self {
            relay: Relay::new(config.clone()),
            config,
            now,
            seen: Vec::new(),
            seen_set: HashSet::new(),
            opened: HashMap::new(),
            opened_total: 0,
            upstreams: HashMap::new(),
            ever_upstream: HashSet::new(),
            paths_seen: Vec::new(),
            held: HashMap::new(),
            closed: HashSet::new(),
            allocations: Vec::new(),
            waiting: Vec::new(),
            fleets: HashSet::new(),
            coverage: BTreeMap::new(),
        }
    }

    /// The relay under test.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Its configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The model's current time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Every session ID seen so far, in the order first seen.
    pub fn seen(&self) -> &[SessionId] {
        &self.seen
    }

    /// Every path opened so far (by an `OpenUpstream`), in order.
    pub fn paths_seen(&self) -> &[PathId] {
        &self.paths_seen
    }

    /// Every allocation requested so far, in order.
    pub fn allocations(&self) -> &[AllocationId] {
        &self.allocations
    }

    /// The allocations awaiting an answer and their sessions, in request order.
    pub fn waiting(&self) -> &[(AllocationId, SessionId)] {
        &self.waiting
    }

    /// What the operations so far exercised: name → count.
    pub fn coverage(&self) -> &BTreeMap<String, u64> {
        &self.coverage
    }

    /// Performs `op`, drains the commands and then the notifications it caused, and
    /// checks everything (see the module docs). Panics, saying which invariant broke,
    /// when one does.
    pub fn apply(&mut self, op: ModelOp) {
        let before = self.relay.stats();
        let mut timed_out = false;
        let mut input = None;
        let (cause, verdict) = match op {
            ModelOp::Client { from, datagram } => {
                let verdict = self.relay.handle_client_datagram(self.now, from, &datagram);
                input = Some(datagram);
                (Cause::Client(from), Some(verdict))
            }
            ModelOp::Backend { path, datagram } => {
                let verdict = self
                    .relay
                    .handle_backend_datagram(self.now, path, &datagram);
                (Cause::Backend(path), Some(verdict))
            }
            ModelOp::SetRoute(route) => {
                let valid = match &route.target {
                    RouteTarget::Simple(list) => !list.is_empty(),
                    RouteTarget::Agones { fleet } => !fleet.is_empty(),
                };
                let name = route.name.clone();
                let expected = route.clone();
                assert_eq!(
                    self.relay.set_route(route).is_ok(),
                    valid,
                    "route validation"
                );
                if valid {
                    assert_eq!(self.relay.route(&name), Some(&expected));
                    if let RouteTarget::Agones { fleet } = &expected.target {
                        self.fleets.insert(fleet.clone());
                    }
                }
                (Cause::Other, None)
            }
            ModelOp::RemoveRoute(name) => {
                let _ = self.relay.remove_route(&name);
                assert!(self.relay.route(&name).is_none());
                (Cause::Other, None)
            }
            ModelOp::Complete { id, result } => {
                let session = self
                    .waiting
                    .iter()
                    .position(|(a, _)| *a == id)
                    .map(|i| self.waiting.remove(i).1);
                let backend = result.as_ref().ok().copied();
                let failed = result.is_err();
                let answer = self.relay.complete_allocation(self.now, id, result);
                if session.is_some() {
                    assert_eq!(answer, Ok(()), "a waiting allocation takes its answer");
                } else {
                    assert_eq!(answer, Err(CompleteAllocationError::NotPending(id)));
                }
                self.cover(match (session.is_some(), failed) {
                    (true, false) => "allocated",
                    (true, true) => "allocation_failed",
                    (false, _) => "allocation_not_pending",
                });
                let cause = Cause::Allocation {
                    id,
                    session,
                    backend,
                };
                (cause, None)
            }
            ModelOp::CompleteWithServerId {
                id,
                backend,
                server_id,
            } => {
                let session = self
                    .waiting
                    .iter()
                    .position(|(a, _)| *a == id)
                    .map(|i| self.waiting.remove(i).1);
                let answer = self
                    .relay
                    .complete_allocation_with_server_id(self.now, id, backend, &server_id);
                if session.is_some() {
                    let binding = answer.expect("a waiting allocation takes its answer");
                    self.cover(format!("server_id:{binding:?}"));
                } else {
                    assert_eq!(answer, Err(CompleteAllocationError::NotPending(id)));
                    self.cover("allocation_not_pending");
                }
                let cause = Cause::Allocation {
                    id,
                    session,
                    backend: Some(backend),
                };
                (cause, None)
            }
            ModelOp::Close(id) => {
                let live = self.relay.session(id, self.now).is_some();
                assert_eq!(self.relay.close_session(self.now, id), live);
                (Cause::Other, None)
            }
            ModelOp::Accepting(on) => {
                self.relay.set_accepting(on);
                (Cause::Other, None)
            }
            ModelOp::Advance(step) => {
                self.now += step;
                (Cause::Other, None)
            }
            ModelOp::Timeout => {
                self.relay.handle_timeout(self.now);
                timed_out = true;
                (Cause::Timeout, None)
            }
            ModelOp::AdvanceThenTimeout(step) => {
                self.now += step;
                self.relay.handle_timeout(self.now);
                timed_out = true;
                (Cause::Timeout, None)
            }
        };
        if let Some(verdict) = &verdict {
            self.cover_verdict(verdict);
        }
        // The relay keeps a held datagram for its session's OpenUpstream (a routed
        // session's is for a new path, and leaves at once: checked with the commands).
        let mut new_path_datagram = None;
        if let (Some(Verdict::Held { session }), Some(datagram)) = (&verdict, input) {
            if self.opened.contains_key(session) {
                new_path_datagram = Some(datagram);
            } else {
                self.held.entry(*session).or_default().push(datagram);
            }
        }
        // As a driver drains: every command, then every notification.
        let commands: Vec<Command> = std::iter::from_fn(|| self.relay.poll_command()).collect();
        let notifications: Vec<Notification> =
            std::iter::from_fn(|| self.relay.poll_notification()).collect();
        self.check_pairing(&commands, &notifications);
        self.check_commands(
            cause,
            &commands,
            &notifications,
            new_path_datagram.as_deref(),
        );
        self.check_notifications(cause, &commands, &notifications);
        if let Some(verdict) = &verdict {
            self.check_verdict(cause, verdict, &before, &commands, &notifications);
        }
        self.check_state(timed_out);
    }

    /// Lets the longest timeout pass, times out, and checks that nothing is left: no
    /// session, connection ID or buffered byte.
    pub fn finish(&mut self) {
        let longest = self.config.idle_timeout.max(self.config.handshake_timeout);
        self.apply(ModelOp::AdvanceThenTimeout(longest));
        assert_eq!(
            self.relay.session_count(),
            0,
            "sessions outlive every timeout"
        );
        let stats = self.relay.stats();
        assert_eq!(
            (
                stats.connection_ids,
                stats.buffered_bytes,
                stats.quic_lb.allocated_server_ids
            ),
            (0, 0, 0),
            "state left after the last session"
        );
        assert!(self.upstreams.is_empty(), "upstreams left open at the end");
    }

    fn cover(&mut self, what: impl Into<String>) {
        *self.coverage.entry(what.into()).or_default() += 1;
    }

    fn see(&mut self, id: SessionId) {
        if self.seen_set.insert(id) {
            self.seen.push(id);
        }
    }

    fn cover_verdict(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::ToBackend { .. } => self.cover("to_backend"),
            Verdict::ToClient { .. } => self.cover("to_client"),
            Verdict::Held { .. } => self.cover("held"),
            Verdict::Answered => self.cover("answered"),
            Verdict::Drop(reason) => self.cover(format!("drop:{}", reason.as_str())),
        }
    }

    /// Each `OpenUpstream` has its `SessionOpened` (a session's first path) or its
    /// `PathOpened` (a later one), queued at the same moment: the two sequences name the
    /// same sessions and clients (and paths, or backends), in the same order.
    fn check_pairing(&self, commands: &[Command], notifications: &[Notification]) {
        let opens: Vec<(SessionId, ClientAddr, Option<PathId>, Option<BackendAddr>)> = commands
            .iter()
            .filter_map(|c| match c {
                Command::OpenUpstream {
                    session,
                    path,
                    client,
                    backend,
                    ..
                } if self.opened.contains_key(session) => {
                    Some((*session, *client, Some(*path), None))
                }
                Command::OpenUpstream {
                    session,
                    client,
                    backend,
                    ..
                } => Some((*session, *client, None, Some(*backend))),
                _ => None,
            })
            .collect();
        let announced: Vec<(SessionId, ClientAddr, Option<PathId>, Option<BackendAddr>)> =
            notifications
                .iter()
                .filter_map(|n| match n {
                    Notification::SessionOpened {
                        session,
                        client,
                        backend,
                        ..
                    } => Some((*session, *client, None, Some(*backend))),
                    Notification::PathOpened {
                        session,
                        path,
                        client,
                    } => Some((*session, *client, Some(*path), None)),
                    _ => None,
                })
                .collect();
        assert_eq!(
            opens, announced,
            "one SessionOpened or PathOpened for each OpenUpstream, in the same order: \
             {commands:?} {notifications:?}"
        );
    }

    fn check_commands(
        &mut self,
        cause: Cause,
        commands: &[Command],
        notifications: &[Notification],
        new_path_datagram: Option<&[u8]>,
    ) {
        let closes = |id: SessionId| {
            notifications
                .iter()
                .any(|n| matches!(n, Notification::SessionClosed { info, .. } if info.id == id))
        };
        let path_closes = |path: PathId| {
            notifications
                .iter()
                .any(|n| matches!(n, Notification::PathClosed { path: p, .. } if *p == path))
        };
        for command in commands {
            match command {
                Command::OpenUpstream { .. } => self.cover("open_upstream"),
                Command::Transmit { .. } => self.cover("transmit"),
                Command::Allocate { .. } => self.cover("allocate"),
                Command::CancelAllocation { .. } => self.cover("cancel_allocation"),
                Command::CloseUpstream { .. } => self.cover("close_upstream"),
                Command::LookupConnection { .. } | Command::ConnectionMoved { .. } => {
                    panic!("the model runs one relay, without directory lookups: {command:?}")
                }
            }
            match command {
                Command::OpenUpstream {
                    session,
                    path,
                    client,
                    backend,
                    datagrams,
                } if self.opened.contains_key(session) => {
                    // A new path of a routed session, for the datagram's sender.
                    self.cover("open_path");
                    assert_eq!(
                        cause,
                        Cause::Client(*client),
                        "{session}: a new path only for the sender of a client datagram"
                    );
                    assert_eq!(
                        self.opened.get(session),
                        Some(backend),
                        "{session}: a new path goes to the session's backend"
                    );
                    assert!(
                        !self.paths_seen.contains(path),
                        "{path}: OpenUpstream twice"
                    );
                    assert!(
                        !self
                            .upstreams
                            .values()
                            .any(|u| u.session == *session && u.client == *client),
                        "{session}: a second path for {client}"
                    );
                    assert!(
                        datagrams.len() == 1 && new_path_datagram == Some(&datagrams[0][..]),
                        "{session}: a new path carries the datagram that opened it"
                    );
                    self.paths_seen.push(*path);
                    self.upstreams.insert(
                        *path,
                        Upstream {
                            session: *session,
                            client: *client,
                            backend: *backend,
                        },
                    );
                    let paths = self.upstreams.values().filter(|u| u.session == *session);
                    assert!(
                        paths.count() <= self.config.max_paths_per_session.max(1),
                        "{session}: more paths than max_paths_per_session"
                    );
                    assert!(
                        self.upstreams.len() <= self.config.max_paths,
                        "more upstream sockets than max_paths"
                    );
                }
                Command::OpenUpstream {
                    session,
                    path,
                    client,
                    backend,
                    datagrams,
                } => {
                    assert!(
                        matches!(cause, Cause::Client(_) | Cause::Allocation { .. }),
                        "OpenUpstream caused by {cause:?}"
                    );
                    assert!(
                        self.ever_upstream.insert(*session) && !self.closed.contains(session),
                        "{session}: OpenUpstream twice or after its close"
                    );
                    assert!(
                        !self.paths_seen.contains(path),
                        "{path}: OpenUpstream twice"
                    );
                    self.paths_seen.push(*path);
                    self.upstreams.insert(
                        *path,
                        Upstream {
                            session: *session,
                            client: *client,
                            backend: *backend,
                        },
                    );
                    self.see(*session);
                    if let Some(info) = self.relay.session(*session, self.now) {
                        assert_eq!(info.client, *client, "{session} opens for its client");
                        assert_eq!(info.backend, Some(*backend), "{session}'s backend");
                    }
                    assert!(!datagrams.is_empty(), "a session opens on held datagrams");
                    let size: usize = datagrams.iter().map(|d| d.len()).sum();
                    assert!(size <= self.config.max_buffered_per_session);
                    let held = self.held.remove(session).unwrap_or_default();
                    assert!(
                        datagrams.len() == held.len()
                            && datagrams.iter().zip(&held).all(|(d, h)| d[..] == h[..]),
                        "{session}: OpenUpstream sends what was held, in arrival order \
                         ({} datagrams held, {} sent)",
                        held.len(),
                        datagrams.len()
                    );
                }
                Command::Allocate {
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
                    assert!(
                        self.fleets.contains(fleet),
                        "allocation from {fleet}, which no route named"
                    );
                    let route = self.relay.route_for(sni.as_deref());
                    assert!(
                        matches!(route, Some(Route { target: RouteTarget::Agones { fleet: f }, .. }) if f == fleet),
                        "allocation from {fleet} for {sni:?}, route {route:?}"
                    );
                    assert!(!self.allocations.contains(id), "allocation ID {id} reused");
                    self.waiting.push((*id, *session));
                    self.allocations.push(*id);
                    self.see(*session);
                }
                Command::CancelAllocation { id } => {
                    let Some(w) = self.waiting.iter().position(|(a, _)| a == id) else {
                        panic!("cancelled {id}, which was not waiting");
                    };
                    self.waiting.remove(w);
                }
                Command::Transmit { to, datagram } => match cause {
                    // The answer to the datagram (checked with the verdict).
                    Cause::Client(from) => {
                        assert_eq!(*to, from, "a Transmit answers the datagram's sender");
                    }
                    Cause::Allocation { .. } | Cause::Timeout => {
                        self.cover("transmit_async");
                        check_refusal(datagram);
                    }
                    other => panic!("Transmit caused by {other:?}"),
                },
                Command::CloseUpstream { session, path } => {
                    let up = self.upstreams.remove(path);
                    assert!(
                        up.is_some_and(|u| u.session == *session),
                        "{session}: CloseUpstream of {path} without an OpenUpstream of the \
                         session before it, or twice"
                    );
                    assert!(
                        closes(*session) || (path_closes(*path) && cause == Cause::Timeout),
                        "{session}: CloseUpstream of {path} without its SessionClosed, or \
                         the PathClosed of a timeout"
                    );
                }
                // Refused above.
                Command::LookupConnection { .. } | Command::ConnectionMoved { .. } => {}
            }
        }
        // Refusals outside a client datagram's handling go out as Transmits, one per
        // refused connection, to its client, in the same order.
        if matches!(cause, Cause::Allocation { .. } | Cause::Timeout) {
            let transmitted: Vec<ClientAddr> = commands
                .iter()
                .filter_map(|c| match c {
                    Command::Transmit { to, .. } => Some(*to),
                    _ => None,
                })
                .collect();
            let refused: Vec<ClientAddr> = notifications
                .iter()
                .filter_map(|n| match n {
                    Notification::Refused { client, .. } => Some(*client),
                    _ => None,
                })
                .collect();
            match self.config.refusal {
                RefusalMode::Close => assert_eq!(
                    transmitted, refused,
                    "one refusal sent to each refused client"
                ),
                RefusalMode::Drop => assert!(transmitted.is_empty(), "silent refusals"),
            }
        }
    }

    fn check_notifications(
        &mut self,
        cause: Cause,
        commands: &[Command],
        notifications: &[Notification],
    ) {
        for (i, notification) in notifications.iter().enumerate() {
            match notification {
                Notification::SessionClosed { reason, .. } => {
                    self.cover(format!("closed:{}", reason.as_str()));
                }
                Notification::SessionOpened { .. } => self.cover("session_opened"),
                Notification::Refused { reason, .. } => {
                    self.cover(format!("refused:{}", reason.as_str()));
                }
                Notification::PathOpened { .. } => self.cover("path_opened"),
                Notification::PathClosed { .. } => self.cover("path_closed"),
                Notification::RouteExpired { .. } => self.cover("route_expired"),
                Notification::ConnectionIdsLearned { .. } => {
                    panic!("the model runs without directory lookups: {notification:?}")
                }
            }
            match notification {
                Notification::SessionOpened {
                    session,
                    backend,
                    sni,
                    ..
                } => {
                    match cause {
                        // Adopted by its CID's server ID (QUIC-LB): no ClientHello, the
                        // backend of that server ID.
                        Cause::Client(_)
                            if sni.is_none()
                                && self
                                    .config
                                    .quic_lb
                                    .servers()
                                    .iter()
                                    .any(|(_, b)| b == backend)
                                && self.relay.route_for(None).is_none_or(|r| {
                                    !matches!(&r.target, RouteTarget::Simple(list) if list.contains(backend))
                                }) =>
                        {
                            self.cover("quic_lb_adopted");
                        }
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
                        Cause::Allocation {
                            session: Some(waited),
                            backend: Some(allocated),
                            ..
                        } => {
                            assert_eq!(
                                (*session, *backend),
                                (waited, allocated),
                                "the allocated backend, for the session that awaited it"
                            );
                        }
                        other => panic!("session opened by {other:?}"),
                    }
                    assert!(
                        !self.opened.contains_key(session) && !self.closed.contains(session),
                        "{session} opened twice or after its close"
                    );
                    self.see(*session);
                    self.opened.insert(*session, *backend);
                    self.opened_total += 1;
                }
                Notification::RouteExpired { name } => {
                    assert_eq!(
                        cause,
                        Cause::Timeout,
                        "route {name} expired outside a timeout"
                    );
                    assert!(
                        self.relay.route(name).is_none(),
                        "expired route {name} still set"
                    );
                    panic!("route {name} expired, none was temporary");
                }
                // Refused above.
                Notification::ConnectionIdsLearned { .. } => {}
                Notification::Refused {
                    session,
                    client,
                    reason,
                    ..
                } => {
                    match cause {
                        Cause::Client(from) => {
                            assert_eq!(*client, from, "refused while handling its datagram");
                            assert!(
                                matches!(
                                    reason,
                                    RefuseReason::NoRoute
                                        | RefuseReason::AllocationLimit
                                        | RefuseReason::SocketLimit
                                        | RefuseReason::AllocationBudget
                                ),
                                "{reason:?} refused by a client datagram"
                            );
                        }
                        Cause::Allocation {
                            session: waited,
                            backend: None,
                            ..
                        } => {
                            assert_eq!(Some(*session), waited, "refused for its allocation");
                            assert_eq!(*reason, RefuseReason::AllocationFailed);
                        }
                        // A game server came back while every socket was in use.
                        Cause::Allocation {
                            session: waited,
                            backend: Some(_),
                            ..
                        } => {
                            assert_eq!(Some(*session), waited, "refused for its allocation");
                            assert_eq!(*reason, RefuseReason::SocketLimit);
                        }
                        Cause::Timeout => assert_eq!(*reason, RefuseReason::AllocationTimeout),
                        other => panic!("{session} refused ({reason:?}) by {other:?}"),
                    }
                    assert!(
                        !self.opened.contains_key(session) && !self.ever_upstream.contains(session),
                        "{session} refused after it opened"
                    );
                    let closes = notifications[i..].iter().any(|n| {
                        matches!(n, Notification::SessionClosed { reason: CloseReason::Refused(r), info }
                            if info.id == *session && info.client == *client && r == reason)
                    });
                    assert!(
                        closes,
                        "a refused session closes, with the refusal's reason"
                    );
                }
                Notification::PathOpened {
                    session,
                    path,
                    client,
                } => {
                    assert_eq!(cause, Cause::Client(*client), "path opened by {cause:?}");
                    assert!(
                        self.opened.contains_key(session),
                        "only routed sessions get new paths"
                    );
                    assert!(
                        self.upstreams
                            .get(path)
                            .is_some_and(|u| u.session == *session && u.client == *client),
                        "{path}: PathOpened with its OpenUpstream"
                    );
                }
                Notification::PathClosed { session, path, .. } => {
                    assert_eq!(cause, Cause::Timeout, "{path} closed by {cause:?}");
                    assert!(
                        !self.upstreams.contains_key(path),
                        "{path}: PathClosed with its CloseUpstream"
                    );
                    let ends = notifications[i..].iter().any(|n| {
                        matches!(n, Notification::SessionClosed { info, .. } if info.id == *session)
                    });
                    assert!(
                        ends || self.upstreams.values().any(|u| u.session == *session),
                        "{session}: a path ends on its timer only while another lives on \
                         (or the session ends with it)"
                    );
                }
                Notification::SessionClosed { info, .. } => {
                    let id = info.id;
                    assert!(self.closed.insert(id), "{id} closed twice");
                    self.see(id);
                    let opened = self.opened.remove(&id);
                    self.held.remove(&id);
                    assert!(
                        !self.waiting.iter().any(|(_, s)| *s == id),
                        "{id} closed while its allocation is still awaited"
                    );
                    let upstream_closes = commands
                        .iter()
                        .filter(
                            |c| matches!(c, Command::CloseUpstream { session, .. } if *session == id),
                        )
                        .count();
                    assert!(
                        (upstream_closes > 0) == opened.is_some(),
                        "{id}: a CloseUpstream exactly when it was opened"
                    );
                    assert!(
                        !self.upstreams.values().any(|u| u.session == id),
                        "{id}: closed with a path left open"
                    );
                    assert_eq!(
                        info.backend, opened,
                        "{id} closes with the backend it opened on"
                    );
                }
            }
        }
    }

    fn check_verdict(
        &mut self,
        cause: Cause,
        verdict: &Verdict,
        before: &RelayStats,
        commands: &[Command],
        notifications: &[Notification],
    ) {
        let after = self.relay.stats();
        let transmits: Vec<&[u8]> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Transmit { datagram, .. } => Some(&datagram[..]),
                _ => None,
            })
            .collect();
        if let Cause::Client(_) = cause {
            // The answer to a client datagram is the verdict's Transmit, and only then.
            let answers = usize::from(*verdict == Verdict::Answered);
            assert_eq!(
                transmits.len(),
                answers,
                "{verdict:?} comes with {answers} Transmit: {commands:?}"
            );
            // The datagram that completes a ClientHello is held, and leaves with its
            // session's OpenUpstream (or waits with it for its Allocate).
            for command in commands {
                if let Command::OpenUpstream { session, .. } | Command::Allocate { session, .. } =
                    command
                {
                    assert_eq!(
                        *verdict,
                        Verdict::Held { session: *session },
                        "{command:?} by a datagram not held for its session"
                    );
                }
            }
            if notifications
                .iter()
                .any(|n| matches!(n, Notification::Refused { .. }))
            {
                match self.config.refusal {
                    RefusalMode::Close => assert_eq!(*verdict, Verdict::Answered),
                    RefusalMode::Drop => assert!(
                        matches!(
                            verdict,
                            Verdict::Drop(
                                DropReason::NoRoute
                                    | DropReason::AllocationRefused
                                    | DropReason::SocketLimit
                            )
                        ),
                        "a silent refusal is a drop, not {verdict:?}"
                    ),
                }
            }
        }
        match verdict {
            Verdict::ToBackend {
                session,
                path,
                backend,
            } => {
                let Cause::Client(from) = cause else {
                    panic!("ToBackend caused by {cause:?}");
                };
                self.see(*session);
                assert_eq!(
                    self.opened.get(session),
                    Some(backend),
                    "{session}: ToBackend to the backend SessionOpened announced"
                );
                assert_eq!(
                    self.upstreams.get(path),
                    Some(&Upstream {
                        session: *session,
                        client: from,
                        backend: *backend,
                    }),
                    "{session}: ToBackend through the upstream OpenUpstream opened for the \
                     sender's address"
                );
            }
            Verdict::ToClient { session, client } => {
                let Cause::Backend(path) = cause else {
                    panic!("ToClient caused by {cause:?}");
                };
                self.see(*session);
                assert!(self.opened.contains_key(session), "{session} is open");
                let up = self.upstreams.get(&path);
                assert!(
                    up.is_some_and(|u| u.session == *session),
                    "{session} forwards from its own path {path}"
                );
                assert_eq!(
                    up.map(|u| u.client),
                    Some(*client),
                    "{path}'s backend datagrams go to that path's client only"
                );
            }
            Verdict::Held { session } => {
                assert!(matches!(cause, Cause::Client(_)));
                self.see(*session);
                let live = self.relay.session(*session, self.now);
                let opened_now = commands
                    .iter()
                    .any(|c| matches!(c, Command::OpenUpstream { session: s, .. } if s == session));
                assert!(
                    live.is_some_and(|s| s.state != SessionState::Established) || opened_now,
                    "held for a session neither pending nor just opened"
                );
            }
            Verdict::Answered => {
                assert!(matches!(cause, Cause::Client(_)));
                // Exactly one Transmit, to the sender (checked above and with the
                // commands): a Version Negotiation or a refusal.
                match parse_packet(transmits[0]) {
                    Ok((Packet::VersionNegotiation { versions, .. }, _)) => {
                        assert_eq!(versions.len(), 8);
                    }
                    _ => check_refusal(transmits[0]),
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
        if let Cause::Backend(path) = cause {
            // Only an open path has an upstream socket for its backend to answer on.
            let open = self.upstreams.contains_key(&path);
            match verdict {
                Verdict::Drop(DropReason::UnknownSession) => assert!(!open),
                Verdict::Drop(DropReason::Empty) => assert!(open),
                _ => assert!(open, "backend datagram on {path} forwarded"),
            }
        }
    }

    fn check_state(&mut self, timed_out: bool) {
        let c = self.config.clone();
        let stats = self.relay.stats();
        assert!(stats.sessions <= c.max_sessions, "{stats:?}");
        assert!(
            stats.connection_ids <= stats.sessions * c.max_cids_per_session,
            "{} CIDs for {} sessions",
            stats.connection_ids,
            stats.sessions
        );
        assert!(stats.buffered_bytes <= c.max_buffered_total, "{stats:?}");
        if stats.sessions == 0 {
            assert_eq!((stats.buffered_bytes, stats.connection_ids), (0, 0));
        }
        // An allocated game server's server ID lives only while a session on it does.
        assert!(
            stats.quic_lb.allocated_server_ids <= stats.sessions,
            "{stats:?}"
        );
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
        assert_eq!(stats.allocations_in_flight, self.waiting.len());
        assert_eq!(stats.sessions_closed, self.closed.len() as u64);
        assert_eq!(stats.sessions_opened, self.opened_total);
        let with_upstream: HashMap<SessionId, BackendAddr> = self
            .upstreams
            .values()
            .map(|u| (u.session, u.backend))
            .collect();
        assert_eq!(
            with_upstream, self.opened,
            "the upstreams the commands left open are the sessions notified open"
        );
        assert_eq!(stats.paths, self.upstreams.len(), "paths counted as opened");
        assert!(stats.remembered_ended_cids <= 64 * 1024, "{stats:?}");
        let held: usize = self.held.values().flatten().map(Vec::len).sum();
        assert_eq!(
            stats.buffered_bytes,
            held + stats.reassembly_bytes,
            "buffered bytes are those of the datagrams held and the reassembly memory"
        );
        // Each pending session's reassembly holds at most its ClientHello limit (and the
        // list of received ranges).
        let per_hello = c.assembler.max_client_hello_len
            + porter_core::crypto_stream::MAX_RANGES * size_of::<std::ops::Range<usize>>();
        assert!(
            stats.reassembly_bytes <= stats.pending_sessions * per_hello,
            "{stats:?}"
        );

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
            assert_eq!(
                s.backend.is_some(),
                s.state == SessionState::Established,
                "{s:?}"
            );
            let deadline = if s.state == SessionState::Established {
                established += 1;
                let paths = self
                    .upstreams
                    .values()
                    .filter(|u| u.session == s.id)
                    .count();
                assert_eq!(s.paths.len(), paths, "{}: its paths are those opened", s.id);
                for p in &s.paths {
                    assert_eq!(
                        self.upstreams.get(&p.id).map(|u| (u.session, u.client)),
                        Some((s.id, p.client)),
                        "{}: its path {} as opened",
                        s.id,
                        p.id
                    );
                }
                assert!(paths <= c.max_paths_per_session.max(1));
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
                    // Whatever its backend sends, an unvalidated session ends at its
                    // handshake timeout.
                    assert!(
                        s.validated || s.age < c.handshake_timeout,
                        "{} unvalidated for {:?} after timeout",
                        s.id,
                        s.age
                    );
                }
                let idle = (self.now + c.idle_timeout).checked_sub(s.idle);
                if s.validated {
                    idle
                } else {
                    let handshake = (self.now + c.handshake_timeout).checked_sub(s.age);
                    idle.min(handshake)
                }
            } else {
                assert!(!self.opened.contains_key(&s.id));
                assert!(!self.upstreams.values().any(|u| u.session == s.id));
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
            // The timer is never late: it is armed at or before every session's deadline.
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
            stats.unvalidated_sessions,
            sessions.iter().filter(|s| !s.validated).count(),
            "unvalidated sessions counted once each"
        );
        // Sessions per client address and per client IP (a session counts once under
        // each address and IP its paths have; a pending one under its address).
        let mut per_addr: HashMap<std::net::SocketAddr, HashSet<SessionId>> = HashMap::new();
        let mut per_ip: HashMap<std::net::IpAddr, HashSet<SessionId>> = HashMap::new();
        for s in &sessions {
            let addrs: Vec<std::net::SocketAddr> = if s.paths.is_empty() {
                vec![s.client.0]
            } else {
                s.paths.iter().map(|p| p.client.0).collect()
            };
            for a in addrs {
                per_addr.entry(a).or_default().insert(s.id);
                per_ip.entry(a.ip()).or_default().insert(s.id);
            }
        }
        for (a, ids) in &per_addr {
            assert!(
                ids.len() <= c.max_sessions_per_address.max(1),
                "{a}: {ids:?}"
            );
        }
        for (ip, ids) in &per_ip {
            assert!(
                ids.len() <= c.max_sessions_per_ip.max(1),
                "{ip}: {} sessions",
                ids.len()
            );
        }
        assert_eq!(
            stats.pending_sessions,
            sessions.len() - established,
            "pending sessions counted once each"
        );
        assert_eq!(
            self.held.len(),
            stats.pending_sessions,
            "every pending session holds datagrams"
        );
        for id in self.held.keys() {
            assert!(
                sessions
                    .iter()
                    .any(|s| s.id == *id && s.state != SessionState::Established),
                "{id}: datagrams held for a session that is not pending"
            );
        }
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
