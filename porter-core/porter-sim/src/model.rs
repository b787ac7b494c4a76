//! A model checker of the [`Relay`] state machine: one vocabulary of operations
//! ([`ModelOp`], each a call of the relay's API with its arguments), one `apply` that
//! performs an operation and drains its outputs, and one set of invariant checks run after
//! every operation. The relay property tests (proptest) and the `relay` fuzz target
//! (`arbitrary`) generate operations their own way and feed them here.
//!
//! What [`RelayModel::apply`] checks after every operation:
//! - bounds: sessions `<= max_sessions`, connection IDs `<= sessions *
//!   max_cids_per_session`, buffered bytes `<= max_buffered_total` (none left once no
//!   session is), allocations in flight `<= max_pending_allocations` and equal to those
//!   requested and neither answered nor cancelled, remembered refusals `<= 16 384` and
//!   `<=` refusals, pending sessions counted once, opened and closed sessions counted
//!   exactly as the events announced them;
//! - timers: while a session exists there is a timeout, never later than any session's
//!   deadline; after `handle_timeout(now)` nothing is due, no routed session has been
//!   idle for the idle timeout and no pending one is older than the handshake timeout;
//! - verdicts: `Forward` comes from a client datagram and goes to the backend the
//!   session's `SessionOpened` announced; `ForwardToClient` comes from that session's
//!   backend and goes to its current client address; `Buffered` is for a pending session
//!   or one just routed; a `Reply` is a version negotiation with 8 versions or a refusal
//!   (a server Initial); every drop is counted once under its reason; a backend datagram is
//!   forwarded only for a routed session;
//! - events: `SessionOpened` only by a client datagram for a simple route of the table
//!   that names that backend, or by the answer to that session's allocation with the
//!   allocated backend, never twice, never after the close, immediately followed by its
//!   `Release` of held datagrams within `max_buffered_per_session`; allocations requested
//!   by a client datagram, for the fleet of the name's route, each ID once, and each
//!   answered, cancelled or timed out once; `Transmit` only by an allocation answer or a
//!   timeout, carrying a refusal; a refused session closes; only routed sessions change
//!   client address, to the sender; every session closed exactly once, none while its
//!   allocation is awaited; no route expires (the model sets only permanent routes); the
//!   sessions the relay lists are exactly those the events say are open or pending;
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
    AllocationFailure, AllocationId, BackendAddr, ClientAddr, CompleteAllocationError, DropReason,
    Event, Relay, RelayConfig, RelayStats, Route, RouteName, RouteTarget, SessionId, SessionState,
    Verdict,
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
    /// `handle_backend_datagram(now, session, datagram)`.
    Backend {
        /// The session whose upstream socket received it.
        session: SessionId,
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
}

/// What caused the outputs being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Client(ClientAddr),
    Backend(SessionId),
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

/// A [`Relay`] and what its outputs so far say about it. See the module docs.
#[derive(Debug)]
pub struct RelayModel {
    relay: Relay,
    config: RelayConfig,
    now: Instant,
    /// Every session ID seen (in a verdict, an event or the relay's list), in order.
    seen: Vec<SessionId>,
    seen_set: HashSet<SessionId>,
    /// Routed sessions and the backend their `SessionOpened` named.
    opened: HashMap<SessionId, BackendAddr>,
    opened_total: u64,
    closed: HashSet<SessionId>,
    /// Every allocation requested, in order.
    allocations: Vec<AllocationId>,
    /// Allocations requested and neither answered nor cancelled, in request order.
    waiting: Vec<(AllocationId, SessionId)>,
    /// Every fleet a route was set to.
    fleets: HashSet<Arc<str>>,
    /// What the operations exercised, by name: verdicts (`forward`, `drop:<reason>`, ...),
    /// events (`opened`, `closed:<reason>`, ...) and allocation answers.
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

    /// Performs `op`, drains the events it caused, and checks everything (see the module
    /// docs). Panics, saying which invariant broke, when one does.
    pub fn apply(&mut self, op: ModelOp) {
        let before = self.relay.stats();
        let mut timed_out = false;
        let (cause, verdict) = match op {
            ModelOp::Client { from, datagram } => {
                let verdict = self.relay.handle_client_datagram(self.now, from, &datagram);
                (Cause::Client(from), Some(verdict))
            }
            ModelOp::Backend { session, datagram } => {
                let verdict = self
                    .relay
                    .handle_backend_datagram(self.now, session, &datagram);
                (Cause::Backend(session), Some(verdict))
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
        let events: Vec<Event> = std::iter::from_fn(|| self.relay.poll_event()).collect();
        self.check_events(cause, &events);
        if let Some(verdict) = &verdict {
            self.check_verdict(cause, verdict, &before, &events);
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
            (stats.connection_ids, stats.buffered_bytes),
            (0, 0),
            "state left after the last session"
        );
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
            Verdict::Forward { .. } => self.cover("forward"),
            Verdict::ForwardToClient { .. } => self.cover("forward_to_client"),
            Verdict::Buffered { .. } => self.cover("buffered"),
            Verdict::Reply(_) => self.cover("reply"),
            Verdict::Drop(reason) => self.cover(format!("drop:{}", reason.as_str())),
        }
    }

    fn check_events(&mut self, cause: Cause, events: &[Event]) {
        let mut i = 0;
        while i < events.len() {
            match &events[i] {
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
                Event::AllocationCancelled { id } => {
                    let Some(w) = self.waiting.iter().position(|(a, _)| a == id) else {
                        panic!("cancelled {id}, which was not waiting");
                    };
                    self.waiting.remove(w);
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
                    panic!("route {name} expired, none was temporary");
                }
                Event::Transmit { datagram, .. } => {
                    assert!(
                        matches!(cause, Cause::Allocation { .. } | Cause::Timeout),
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
                        !self.waiting.iter().any(|(_, s)| *s == id),
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
        before: &RelayStats,
        events: &[Event],
    ) {
        let after = self.relay.stats();
        match verdict {
            Verdict::Forward { session, backend } => {
                assert!(matches!(cause, Cause::Client(_)));
                self.see(*session);
                assert_eq!(
                    self.opened.get(session),
                    Some(backend),
                    "{session}: Forward to the backend SessionOpened announced"
                );
            }
            Verdict::ForwardToClient { session, client } => {
                assert_eq!(cause, Cause::Backend(*session));
                self.see(*session);
                assert!(self.opened.contains_key(session), "{session} is open");
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
                Verdict::Drop(DropReason::UnknownSession) => assert!(!routed),
                Verdict::Drop(DropReason::Empty) => assert!(routed),
                _ => assert!(routed, "backend datagram for {id} forwarded"),
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
