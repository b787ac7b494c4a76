//! The part of running a relay that does not depend on the async runtime: it owns the
//! [`Relay`], turns its events into [`Action`]s a driver performs with its own sockets
//! and tasks, and writes the log lines every driver writes (one per new and per closed
//! session; one per drop when `udp.log_requests` is on).
//!
//! Drivers share one `RelayHost` between their tasks behind a [`SharedHost`] (a plain
//! mutex: every call is short and never awaits). The control plane (API, Redis sync)
//! reaches the relay through the same lock.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porter_core::{
    AllocationId, BackendAddr, ClientAddr, Event, Relay, RouteName, SessionId, Verdict,
};

/// How much longer than the handshake timeout an allocation request may run.
const ALLOCATION_GRACE: Duration = Duration::from_millis(250);

/// A relay host shared between a driver's tasks and the control plane.
pub type SharedHost = Arc<Mutex<RelayHost>>;

/// Something a driver must do after an input, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open the session's upstream socket: bound to an ephemeral port, connected to
    /// `backend`, and read by a task that passes what arrives to
    /// [`RelayHost::backend_datagram`].
    OpenUpstream {
        /// The session.
        session: SessionId,
        /// Where its upstream socket connects.
        backend: BackendAddr,
    },
    /// Send these datagrams, in order, on the session's upstream socket.
    SendToBackend {
        /// The session.
        session: SessionId,
        /// The datagrams.
        datagrams: Vec<Bytes>,
    },
    /// Send a datagram to a client from the listener socket.
    SendToClient {
        /// The client.
        to: ClientAddr,
        /// The datagram.
        datagram: Bytes,
    },
    /// Close the session's upstream socket and stop its reader.
    CloseUpstream {
        /// The session.
        session: SessionId,
    },
    /// Ask the allocator for a game server in `fleet`, then call
    /// [`RelayHost::complete_allocation`]. Give up at `deadline`.
    Allocate {
        /// The request ID to pass back.
        id: AllocationId,
        /// The fleet.
        fleet: Arc<str>,
        /// A tag naming the connection (used as the player ID in the game server's
        /// player list).
        tag: String,
        /// When the relay stops waiting.
        deadline: Instant,
    },
    /// The relay stopped waiting for this allocation; cancel it if still running.
    CancelAllocation {
        /// The request ID.
        id: AllocationId,
    },
}

/// Called with the name of each temporary route that expired.
pub type RouteExpiredHook = Box<dyn Fn(RouteName) + Send + Sync>;

/// Owns the relay; see the module docs.
pub struct RelayHost {
    relay: Relay,
    log_requests: bool,
    upstream_sockets: usize,
    route_expired: Option<RouteExpiredHook>,
}

impl std::fmt::Debug for RelayHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHost")
            .field("relay", &self.relay)
            .field("log_requests", &self.log_requests)
            .field("upstream_sockets", &self.upstream_sockets)
            .finish_non_exhaustive()
    }
}

impl RelayHost {
    /// Wraps a relay. With `log_requests`, every dropped datagram is logged.
    pub fn new(relay: Relay, log_requests: bool) -> Self {
        Self {
            relay,
            log_requests,
            upstream_sockets: 0,
            route_expired: None,
        }
    }

    /// Registers what to do when a temporary route expires (the Redis sync deletes it
    /// there). The hook runs with the host locked: it must not lock the host.
    pub fn on_route_expired(&mut self, hook: RouteExpiredHook) {
        self.route_expired = Some(hook);
    }

    /// Wraps the host for sharing.
    pub fn shared(self) -> SharedHost {
        Arc::new(Mutex::new(self))
    }

    /// Locks a shared host. A panic while the lock was held cannot leave the relay in a
    /// state worse than the panic itself, so a poisoned lock is used as is.
    pub fn lock(host: &SharedHost) -> MutexGuard<'_, Self> {
        host.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The relay, for route changes and the like. Drain [`Self::drain`] afterwards if
    /// the call can produce events.
    pub fn relay_mut(&mut self) -> &mut Relay {
        &mut self.relay
    }

    /// Upstream sockets the driver reports open.
    pub fn upstream_sockets(&self) -> usize {
        self.upstream_sockets
    }

    /// A datagram from a client; see [`Relay::handle_client_datagram`].
    pub fn client_datagram(&mut self, now: Instant, from: ClientAddr, data: &[u8]) -> Verdict {
        let verdict = self.relay.handle_client_datagram(now, from, data);
        if let Verdict::Drop(reason) = &verdict {
            if self.log_requests {
                tracing::info!(
                    client = %from,
                    len = data.len(),
                    reason = reason.as_str(),
                    "dropped client datagram"
                );
            }
        }
        verdict
    }

    /// A datagram from a backend; see [`Relay::handle_backend_datagram`].
    pub fn backend_datagram(&mut self, now: Instant, session: SessionId, data: &[u8]) -> Verdict {
        let verdict = self.relay.handle_backend_datagram(now, session, data);
        if let Verdict::Drop(reason) = &verdict {
            if self.log_requests {
                tracing::info!(
                    %session,
                    len = data.len(),
                    reason = reason.as_str(),
                    "dropped backend datagram"
                );
            }
        }
        verdict
    }

    /// The allocator's answer; see [`Relay::complete_allocation`]. A late answer (the
    /// connection already gave up) is logged and discarded.
    pub fn complete_allocation(
        &mut self,
        now: Instant,
        id: AllocationId,
        result: Result<BackendAddr, porter_core::AllocationFailure>,
    ) {
        if let Err(e) = &result {
            tracing::warn!(allocation = %id, reason = %e.reason, "allocation failed");
        }
        if let Err(e) = self.relay.complete_allocation(now, id, result) {
            tracing::debug!(allocation = %id, "{e}");
        }
    }

    /// Expires timers; see [`Relay::handle_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.relay.handle_timeout(now);
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relay.poll_timeout()
    }

    /// Drains the relay's events into actions, logging as it goes.
    pub fn drain(&mut self, actions: &mut Vec<Action>) {
        while let Some(event) = self.relay.poll_event() {
            self.on_event(event, actions);
        }
    }

    fn on_event(&mut self, event: Event, actions: &mut Vec<Action>) {
        match event {
            Event::SessionOpened {
                session,
                client,
                backend,
                sni,
                alpn,
                version,
            } => {
                tracing::info!(
                    %session,
                    %client,
                    sni = sni.as_deref().unwrap_or("-"),
                    alpn = %alpn_text(&alpn),
                    %backend,
                    ?version,
                    "session opened"
                );
                self.upstream_sockets += 1;
                actions.push(Action::OpenUpstream { session, backend });
            }
            Event::Release {
                session, datagrams, ..
            } => actions.push(Action::SendToBackend { session, datagrams }),
            Event::AllocationRequested {
                id,
                session,
                fleet,
                sni,
                client,
                ..
            } => {
                tracing::info!(
                    allocation = %id,
                    %session,
                    %client,
                    sni = sni.as_deref().unwrap_or("-"),
                    %fleet,
                    "allocating a game server"
                );
                // The core's handshake timer decides when to give up (and cancels the
                // request); the allocator's own deadline is a little later so the two
                // do not race.
                let deadline =
                    Instant::now() + self.relay.config().handshake_timeout + ALLOCATION_GRACE;
                actions.push(Action::Allocate {
                    id,
                    fleet,
                    tag: format!("{client}/{session}"),
                    deadline,
                });
            }
            Event::AllocationCancelled { id } => actions.push(Action::CancelAllocation { id }),
            Event::Transmit { to, datagram } => actions.push(Action::SendToClient { to, datagram }),
            Event::ConnectionRefused {
                session,
                client,
                sni,
                reason,
            } => tracing::info!(
                %session,
                %client,
                sni = sni.as_deref().unwrap_or("-"),
                reason = reason.as_str(),
                "connection refused"
            ),
            Event::ClientAddressChanged { session, from, to } => {
                tracing::info!(%session, %from, %to, "client address changed");
            }
            Event::RouteExpired { name } => {
                tracing::info!(fqdn = %name, "temporary route expired");
                if let Some(hook) = &self.route_expired {
                    hook(name);
                }
            }
            Event::SessionClosed { reason, info } => {
                if info.backend.is_some() {
                    self.upstream_sockets = self.upstream_sockets.saturating_sub(1);
                    actions.push(Action::CloseUpstream { session: info.id });
                }
                // Refusals are logged as such; handshakes that never completed are
                // counted, not logged (they are mostly scans and spoofed traffic).
                if info.backend.is_some() {
                    tracing::info!(
                        session = %info.id,
                        client = %info.client,
                        sni = info.sni.as_deref().unwrap_or("-"),
                        reason = reason.as_str(),
                        duration_ms = duration_ms(info.age),
                        bytes_to_backend = info.to_backend.bytes,
                        bytes_to_client = info.to_client.bytes,
                        datagrams_to_backend = info.to_backend.datagrams,
                        datagrams_to_client = info.to_client.datagrams,
                        "session closed"
                    );
                }
            }
        }
    }
}

fn alpn_text(alpn: &[Vec<u8>]) -> String {
    let names: Vec<String> = alpn
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    names.join(",")
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
