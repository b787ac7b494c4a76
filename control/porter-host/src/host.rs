//! The part of running a relay that does not depend on the async runtime: the [`Relay`]
//! behind one lock, the log lines every driver writes (one per new and per closed
//! session; one per drop when `udp.log_requests` is on), and the control plane's one door
//! into it, [`RelayHandle`].
//!
//! Two kinds of callers reach the relay:
//!
//! - the I/O engine ([`crate::Engine`]), for datagrams, timers and allocation answers:
//!   it locks the [`RelayHost`], hands the input over, drains the relay's commands into its
//!   own plan with [`RelayHost::drain`], unlocks, and executes the plan;
//! - the control plane (API, route sync), through a [`RelayHandle`]: every change it
//!   makes is drained under the same lock into the host's outbox, and the engine is woken
//!   to execute it and re-arm its timer. The handle gives read access and typed changes
//!   only, never the relay itself, so no change can be left without its outputs.
//!
//! Notifications (a session opened, a route expired, ...) are logged by the host under
//! the lock and handed to the subscribers ([`RelayHandle::subscribe`]) after it is
//! released: no callback runs under the lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use porter_core::{
    AllocationFailure, AllocationId, BackendAddr, ClientAddr, Command, ConnectionId, DropReason,
    LookupId, Notification, PathId, Relay, RelayStats, Route, RouteError, RouteName, RouteTarget,
    ServerIdBinding, SessionId, SessionInfo, SessionPage, Verdict,
};

use crate::{Allocated, AllocationError, AllocationErrorKind};

use crate::logtext::{escape_network_text, LogLimiter};
use crate::metrics::{Accounting, Histograms, RouteStats};
use crate::notify::Notify;

/// Called with each notification, after the host lock is released.
pub type Subscriber = Arc<dyn Fn(&Notification) + Send + Sync>;

/// The relay, its log settings and the outputs waiting for the engine.
pub struct RelayHost {
    relay: Relay,
    log_requests: bool,
    upstream_sockets: usize,
    /// Failed allocations by kind, indexed like [`AllocationErrorKind::ALL`].
    allocation_failures: Vec<u64>,
    /// Commands of control-plane changes, for the engine to execute.
    outbox: Vec<Command>,
    /// Notifications not yet handed to the subscribers.
    notes: Vec<Notification>,
    /// Per-session and per-datagram log lines: a flood must not become one in the log.
    log_limit: LogLimiter,
    /// Per-route counters and the histograms, fed from the notifications.
    accounting: Accounting,
}

impl fmt::Debug for RelayHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            allocation_failures: vec![0; AllocationErrorKind::ALL.len()],
            outbox: Vec::new(),
            notes: Vec::new(),
            log_limit: LogLimiter::new(LOG_LINES_PER_SECOND),
            accounting: Accounting::new(),
        }
    }

    /// An allocation's answer came `took` after its request (the engine's allocation
    /// task, under the lock, before [`Self::complete_allocation`]): recorded in the
    /// `porter_allocation_seconds` histogram by outcome.
    pub fn allocation_answered(
        &mut self,
        took: Duration,
        result: &Result<Allocated, AllocationError>,
    ) {
        self.accounting
            .allocation_answered(took, result.as_ref().err().map(AllocationError::kind));
    }

    /// Per-session and per-datagram log lines left out by the rate limit since start
    /// (socket-error lines included).
    pub fn log_lines_suppressed(&self) -> u64 {
        self.log_limit.suppressed() + crate::logtext::socket_errors_suppressed()
    }

    /// The relay, to read.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Upstream sockets the relay asked for and has not closed.
    pub fn upstream_sockets(&self) -> usize {
        self.upstream_sockets
    }

    /// A datagram from a client; see [`Relay::handle_client_datagram`].
    pub fn client_datagram(&mut self, now: Instant, from: ClientAddr, data: &[u8]) -> Verdict {
        let verdict = self.relay.handle_client_datagram(now, from, data);
        if let Verdict::Drop(reason) = &verdict {
            if self.log_requests && self.log_limit.allow(now).is_some() {
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

    /// A datagram at a listener from one of the relay's own upstream sockets: dropped
    /// and counted; see [`Relay::drop_own_datagram`].
    pub fn own_datagram(&mut self, now: Instant, from: ClientAddr, len: usize) {
        let _ = self.relay.drop_own_datagram();
        if self.log_requests && self.log_limit.allow(now).is_some() {
            tracing::info!(
                client = %from,
                len,
                reason = DropReason::OwnSocket.as_str(),
                "dropped client datagram"
            );
        }
    }

    /// A datagram from a backend, on `path`'s upstream socket; see
    /// [`Relay::handle_backend_datagram`].
    pub fn backend_datagram(&mut self, now: Instant, path: PathId, data: &[u8]) -> Verdict {
        let verdict = self.relay.handle_backend_datagram(now, path, data);
        if let Verdict::Drop(reason) = &verdict {
            if self.log_requests && self.log_limit.allow(now).is_some() {
                tracing::info!(
                    %path,
                    len = data.len(),
                    reason = reason.as_str(),
                    "dropped backend datagram"
                );
            }
        }
        verdict
    }

    /// The allocator's answer; see [`Relay::complete_allocation`] (and
    /// [`Relay::complete_allocation_with_server_id`] when it names a server ID: an ID the
    /// relay cannot use is logged). A late answer (the connection already gave up) is
    /// logged and discarded.
    pub fn complete_allocation(
        &mut self,
        now: Instant,
        id: AllocationId,
        result: Result<Allocated, AllocationError>,
    ) {
        let result = match result {
            Ok(Allocated {
                addr,
                server_id: Some(server_id),
                game_server,
            }) => {
                let binding = self.relay.complete_allocation_with_server_id(
                    now,
                    id,
                    BackendAddr(addr),
                    &server_id,
                );
                let shown = escape_network_text(server_id.as_bytes());
                let why = match binding {
                    Ok(ServerIdBinding::Invalid) => "is not hex of a configured length",
                    Ok(ServerIdBinding::Conflict) => "already names another backend",
                    Ok(binding) => {
                        tracing::debug!(allocation = %id, %game_server, server_id = %shown, ?binding, "server ID");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(allocation = %id, "{e}");
                        return;
                    }
                };
                tracing::warn!(
                    allocation = %id, %game_server, server_id = %shown,
                    "the game server's QUIC-LB server ID {why}; its clients are routed without it"
                );
                return;
            }
            Ok(allocated) => Ok(BackendAddr(allocated.addr)),
            Err(e) => {
                tracing::warn!(allocation = %id, kind = e.kind().as_str(), reason = %e, "allocation failed");
                if let Some(i) = AllocationErrorKind::ALL.iter().position(|k| *k == e.kind()) {
                    self.allocation_failures[i] += 1;
                }
                Err(AllocationFailure {
                    reason: e.to_string(),
                })
            }
        };
        if let Err(e) = self.relay.complete_allocation(now, id, result) {
            tracing::debug!(allocation = %id, "{e}");
        }
    }

    /// The directory's answer to a lookup; see [`Relay::complete_lookup`]. A late answer
    /// (the lookup timed out) is discarded.
    pub fn complete_lookup(
        &mut self,
        now: Instant,
        id: LookupId,
        answer: Option<(ConnectionId, BackendAddr)>,
    ) {
        if let Err(e) = self.relay.complete_lookup(now, id, answer) {
            tracing::debug!(lookup = %id, "{e}");
        }
    }

    /// Sharded: whether a lookup may go on to the shared directory; see
    /// [`Relay::take_directory_token`].
    pub fn take_directory_token(&mut self, now: Instant) -> bool {
        self.relay.take_directory_token(now)
    }

    /// Ends a lookup over the directory's rate; see [`Relay::complete_lookup_over_rate`].
    pub fn complete_lookup_over_rate(&mut self, id: LookupId) {
        if let Err(e) = self.relay.complete_lookup_over_rate(id) {
            tracing::debug!(lookup = %id, "{e}");
        }
    }

    /// A lookup another shard answered: see [`Relay::complete_lookup_moved`].
    pub fn complete_lookup_moved(
        &mut self,
        now: Instant,
        id: LookupId,
        cid: ConnectionId,
        backend: BackendAddr,
        from: (u32, Option<SessionId>),
    ) {
        if let Err(e) = self
            .relay
            .complete_lookup_moved(now, id, cid, backend, from)
        {
            tracing::debug!(lookup = %id, "{e}");
        }
    }

    /// Another shard carries the connection of session `id` on; see
    /// [`Relay::moved_to_shard`].
    pub fn moved_to_shard(&mut self, now: Instant, id: SessionId) {
        self.relay.moved_to_shard(now, id);
    }

    /// A lookup the other shards could not answer, and this shard can (see
    /// [`Relay::complete_lookup_here`]). A late answer is discarded.
    pub fn complete_lookup_here(&mut self, now: Instant, id: LookupId) {
        if let Err(e) = self.relay.complete_lookup_here(now, id) {
            tracing::debug!(lookup = %id, "{e}");
        }
    }

    /// A path's upstream socket could not be opened: the path ends, and a session whose
    /// only path it was is refused; see [`Relay::upstream_failed`].
    pub fn upstream_failed(&mut self, now: Instant, path: PathId) {
        self.relay.upstream_failed(now, path);
    }

    /// Expires timers; see [`Relay::handle_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.relay.handle_timeout(now);
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relay.poll_timeout()
    }

    /// Appends the relay's commands (first those of control-plane changes, then the
    /// relay's own, in order) to `commands`, and logs its notifications, keeping them for
    /// [`Self::take_notifications`].
    pub fn drain(&mut self, commands: &mut Vec<Command>) {
        self.collect();
        commands.append(&mut self.outbox);
    }

    /// The notifications drained so far, to hand to subscribers once unlocked.
    pub fn take_notifications(&mut self) -> Vec<Notification> {
        std::mem::take(&mut self.notes)
    }

    /// Moves the relay's outputs into the outbox and the notification list.
    fn collect(&mut self) {
        while let Some(command) = self.relay.poll_command() {
            match &command {
                Command::OpenUpstream { .. } => self.upstream_sockets += 1,
                Command::CloseUpstream { .. } => {
                    self.upstream_sockets = self.upstream_sockets.saturating_sub(1);
                }
                _ => {}
            }
            self.outbox.push(command);
        }
        while let Some(note) = self.relay.poll_notification() {
            // Handshakes that never completed are not logged at all (see below).
            let silent = matches!(&note, Notification::SessionClosed { info, .. } if info.backend.is_none())
                || matches!(&note, Notification::ConnectionIdsLearned { .. });
            if !silent {
                if let Some(left_out) = self.log_limit.allow(Instant::now()) {
                    if left_out > 0 {
                        tracing::info!(left_out, "log lines left out by the rate limit");
                    }
                    log_notification(&note);
                }
            }
            self.account(&note);
            self.notes.push(note);
        }
    }

    /// Feeds one notification to the per-route counters and the histograms.
    fn account(&mut self, note: &Notification) {
        match note {
            Notification::SessionOpened {
                session,
                sni,
                waited,
                ..
            } => {
                self.accounting
                    .session_opened(&self.relay, *session, sni.as_deref(), *waited);
            }
            Notification::Refused { sni, .. } => {
                self.accounting.refused(&self.relay, sni.as_deref());
            }
            Notification::SessionClosed { info, .. } => self.accounting.session_closed(
                info.id,
                info.backend.is_some(),
                info.age,
                info.to_backend,
                info.to_client,
            ),
            Notification::PathOpened { .. }
            | Notification::PathClosed { .. }
            | Notification::RouteExpired { .. }
            | Notification::ConnectionIdsLearned { .. } => {}
        }
    }
}

fn log_notification(note: &Notification) {
    match note {
        Notification::SessionOpened {
            session,
            client,
            backend,
            sni,
            alpn,
            version,
            waited,
        } => tracing::info!(
            %session,
            %client,
            sni = %sni_text(sni.as_deref()),
            alpn = %alpn_text(alpn),
            %backend,
            ?version,
            waited_ms = duration_ms(*waited),
            "session opened"
        ),
        Notification::Refused {
            session,
            client,
            sni,
            reason,
        } => tracing::info!(
            %session,
            %client,
            sni = %sni_text(sni.as_deref()),
            reason = reason.as_str(),
            "connection refused"
        ),
        Notification::PathOpened {
            session,
            path,
            client,
        } => {
            tracing::info!(%session, %path, %client, "client path opened");
        }
        Notification::PathClosed {
            session,
            path,
            client,
        } => {
            tracing::info!(%session, %path, %client, "client path closed");
        }
        Notification::RouteExpired { name } => {
            tracing::info!(fqdn = %name, "temporary route expired");
        }
        // Refusals are logged as such; handshakes that never completed are counted, not
        // logged (they are mostly scans and spoofed traffic).
        Notification::SessionClosed { reason, info } if info.backend.is_some() => {
            tracing::info!(
                session = %info.id,
                client = %info.client,
                sni = %sni_text(info.sni.as_deref()),
                reason = reason.as_str(),
                duration_ms = duration_ms(info.age),
                bytes_to_backend = info.to_backend.bytes,
                bytes_to_client = info.to_client.bytes,
                datagrams_to_backend = info.to_backend.datagrams,
                datagrams_to_client = info.to_client.datagrams,
                "session closed"
            );
        }
        Notification::SessionClosed { .. } => {}
        // One per CID learned: for the directory, not the log.
        Notification::ConnectionIdsLearned { .. } => {}
    }
}

/// A snapshot of the data plane's counters, as the API and the metrics show them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// The core's gauges and counters.
    pub relay: RelayStats,
    /// Upstream sockets the relay asked for and has not closed.
    pub upstream_sockets: usize,
    /// The most upstream sockets the relay opens ([`porter_core::RelayConfig::max_paths`],
    /// as the engine set it from the descriptor limit and the port range).
    pub upstream_socket_limit: usize,
    /// Failed allocations by kind (every kind, zeros included).
    pub allocation_failures: Vec<(AllocationErrorKind, u64)>,
    /// Acquisitions of the data-plane (host) lock since start.
    pub lock_acquisitions: u64,
    /// Of those, the ones that found the lock held and waited.
    pub lock_contended: u64,
    /// Per-session, per-datagram and socket-error log lines left out by their rate
    /// limits since start.
    pub log_lines_suppressed: u64,
    /// Per-route counters, sorted by route name: every route installed (zeros
    /// included), and removed routes while sessions they routed are still open. Traffic
    /// is counted when each session ends.
    pub routes: Vec<RouteStats>,
    /// Refusals whose server name matched no route (labelled
    /// [`crate::NO_ROUTE_LABEL`]).
    pub refused_without_route: u64,
    /// Routing wait, session duration and allocation time.
    pub histograms: Histograms,
    /// Data-plane shards these stats cover (1 for one shard's).
    pub shards: usize,
}

impl HostStats {
    /// Adds another shard's stats to these: counters and gauges add up (the socket
    /// limit too: each shard has its part), per-route counters by route name.
    pub fn merge(&mut self, other: &Self) {
        self.relay.merge(&other.relay);
        self.upstream_sockets += other.upstream_sockets;
        self.upstream_socket_limit += other.upstream_socket_limit;
        for (kind, n) in &other.allocation_failures {
            match self.allocation_failures.iter_mut().find(|(k, _)| k == kind) {
                Some((_, mine)) => *mine += n,
                None => self.allocation_failures.push((*kind, *n)),
            }
        }
        self.lock_acquisitions += other.lock_acquisitions;
        self.lock_contended += other.lock_contended;
        self.log_lines_suppressed += other.log_lines_suppressed;
        for theirs in &other.routes {
            match self.routes.iter_mut().find(|r| r.route == theirs.route) {
                Some(mine) => mine.merge(theirs),
                None => self.routes.push(theirs.clone()),
            }
        }
        self.routes.sort_by(|a, b| a.route.cmp(&b.route));
        self.refused_without_route += other.refused_without_route;
        self.histograms.merge(&other.histograms);
        self.shards += other.shards;
    }
}

/// The host and the engine's wake-up, shared by the engine's tasks and every
/// [`RelayHandle`].
pub struct HostCell {
    host: Mutex<RelayHost>,
    /// Acquisitions of `host`, and those that found it held and had to wait: the
    /// contention the data path pays for sharing one relay between its tasks.
    acquired: AtomicU64,
    contended: AtomicU64,
    /// Wakes the engine's timer task: the deadline may have moved, or the outbox holds
    /// commands.
    work: Notify,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl fmt::Debug for HostCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCell")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl HostCell {
    /// A cell around `host`.
    pub fn new(host: RelayHost) -> Arc<Self> {
        Arc::new(Self {
            host: Mutex::new(host),
            acquired: AtomicU64::new(0),
            contended: AtomicU64::new(0),
            work: Notify::default(),
            subscribers: Mutex::new(Vec::new()),
        })
    }

    /// Locks the host. A panic while the lock was held cannot leave the relay in a state
    /// worse than the panic itself, so a poisoned lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, RelayHost> {
        self.acquired.fetch_add(1, Ordering::Relaxed);
        match self.host.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.contended.fetch_add(1, Ordering::Relaxed);
                self.host.lock().unwrap_or_else(|e| e.into_inner())
            }
        }
    }

    /// How often the host lock was taken, and how often it was found held (the caller
    /// waited).
    pub fn lock_counts(&self) -> (u64, u64) {
        (
            self.acquired.load(Ordering::Relaxed),
            self.contended.load(Ordering::Relaxed),
        )
    }

    /// Resolves when a control-plane change (or the engine itself) asked the engine's
    /// timer task to look again.
    pub async fn work(&self) {
        self.work.notified().await;
    }

    /// Asks the engine's timer task to drain the outbox and re-arm.
    pub fn work_pending(&self) {
        self.work.notify_one();
    }

    /// Hands notifications to the subscribers. Call without the host locked.
    pub fn deliver(&self, notes: &[Notification]) {
        if notes.is_empty() {
            return;
        }
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for note in notes {
            for subscriber in &subscribers {
                subscriber(note);
            }
        }
    }
}

/// The control plane's door into the relay: reads, and changes whose outputs always
/// reach the engine. Cheap to clone.
///
/// A sharded host ([`crate::Shards`]) has one relay per shard, all with the same routes,
/// backend health and accepting state: a change is made in every shard, a read of routes
/// reads the first, and counters, gauges and sessions are gathered from all of them.
#[derive(Clone, Debug)]
pub struct RelayHandle {
    cells: Arc<[Arc<HostCell>]>,
}

impl RelayHandle {
    /// A handle on one relay's `cell`.
    pub fn new(cell: Arc<HostCell>) -> Self {
        Self::sharded(vec![cell])
    }

    /// A handle on every shard's cell, in shard order (at least one).
    pub fn sharded(cells: Vec<Arc<HostCell>>) -> Self {
        assert!(!cells.is_empty(), "a relay handle needs at least one shard");
        Self {
            cells: cells.into(),
        }
    }

    /// A relay with no engine behind it (tests of the control plane): changes apply, and
    /// their commands wait in the outbox.
    pub fn detached(relay: Relay) -> Self {
        Self::new(HostCell::new(RelayHost::new(relay, false)))
    }

    /// How many shards the handle reaches.
    pub fn shard_count(&self) -> usize {
        self.cells.len()
    }

    /// Calls `subscriber` with every notification of every shard from now on (after the
    /// host lock is released). A route's expiry is reported once, by the first shard
    /// (every shard expires the route at the same instant).
    pub fn subscribe(&self, subscriber: Subscriber) {
        for (i, cell) in self.cells.iter().enumerate() {
            let subscriber = if i == 0 {
                subscriber.clone()
            } else {
                let inner = subscriber.clone();
                Arc::new(move |note: &Notification| {
                    if !matches!(note, Notification::RouteExpired { .. }) {
                        inner(note);
                    }
                }) as Subscriber
            };
            cell.subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(subscriber);
        }
    }

    /// Reads the first shard's relay: what every shard holds alike (routes, their
    /// expiry, backend health, the configuration). Sessions and counters are per shard:
    /// use [`Self::read_each`] or the gathering reads.
    pub fn read<T>(&self, f: impl FnOnce(&Relay) -> T) -> T {
        f(self.cells[0].lock().relay())
    }

    /// Reads every shard's relay in turn (one lock at a time), in shard order.
    pub fn read_each<T>(&self, mut f: impl FnMut(&Relay) -> T) -> Vec<T> {
        self.cells.iter().map(|c| f(c.lock().relay())).collect()
    }

    /// Gauges and counters, summed over the shards.
    pub fn stats(&self) -> HostStats {
        let mut all = self.cells.iter().map(|cell| Self::stats_of(cell));
        let mut total = all.next().expect("at least one shard");
        for more in all {
            total.merge(&more);
        }
        if self.cells.len() > 1 {
            // A game server's ID is bound in every shard that has a session on it:
            // counted once.
            let mut ids: Vec<_> = self
                .read_each(Relay::allocated_server_ids)
                .into_iter()
                .flatten()
                .collect();
            ids.sort_unstable();
            ids.dedup();
            total.relay.quic_lb.allocated_server_ids = ids.len();
        }
        total
    }

    /// Each shard's gauges and counters, in shard order.
    pub fn shard_stats(&self) -> Vec<HostStats> {
        self.cells.iter().map(|cell| Self::stats_of(cell)).collect()
    }

    fn stats_of(cell: &HostCell) -> HostStats {
        let mut host = cell.lock();
        let host = &mut *host;
        let (routes, refused_without_route, histograms) = host.accounting.snapshot(&host.relay);
        HostStats {
            relay: host.relay().stats(),
            upstream_sockets: host.upstream_sockets(),
            upstream_socket_limit: host.relay().config().max_paths,
            allocation_failures: AllocationErrorKind::ALL
                .iter()
                .copied()
                .zip(host.allocation_failures.iter().copied())
                .collect(),
            lock_acquisitions: cell.acquired.load(Ordering::Relaxed),
            lock_contended: cell.contended.load(Ordering::Relaxed),
            log_lines_suppressed: host.log_lines_suppressed(),
            routes,
            refused_without_route,
            histograms,
            shards: 1,
        }
    }

    /// Every route, sorted by name.
    pub fn routes(&self) -> Vec<Route> {
        self.read(Relay::routes)
    }

    /// The route with exactly this name, and its expiry if it is temporary.
    pub fn route(&self, name: &RouteName) -> Option<(Route, Option<Instant>)> {
        self.read(|r| {
            r.route(name)
                .map(|route| (route.clone(), r.route_expiry(name)))
        })
    }

    /// Number of sessions, over all shards.
    pub fn session_count(&self) -> usize {
        self.read_each(Relay::session_count).into_iter().sum()
    }

    /// Sessions routed to `backend` now, over all shards.
    pub fn sessions_on(&self, backend: BackendAddr) -> u32 {
        self.read_each(|r| r.sessions_on(backend)).into_iter().sum()
    }

    /// Sessions now per backend of every simple route, over all shards.
    pub fn backend_sessions(&self) -> HashMap<BackendAddr, u32> {
        let mut total = HashMap::new();
        for shard in self.read_each(|r| {
            let mut on = HashMap::new();
            for route in r.routes() {
                if let RouteTarget::Simple(backends) = &route.target {
                    for b in backends {
                        on.insert(*b, r.sessions_on(*b));
                    }
                }
            }
            on
        }) {
            for (b, n) in shard {
                *total.entry(b).or_insert(0) += n;
            }
        }
        total
    }

    /// The session count and one page of sessions by ascending ID after `after`, at most
    /// `limit`, gathered from every shard (IDs are unique over the shards).
    pub fn sessions_page(
        &self,
        now: Instant,
        after: Option<SessionId>,
        limit: usize,
    ) -> (usize, SessionPage) {
        let pages = self.read_each(|r| (r.session_count(), r.sessions_page(now, after, limit)));
        let total = pages.iter().map(|(n, _)| n).sum();
        let more = pages.iter().any(|(_, p)| p.next.is_some());
        let mut sessions: Vec<SessionInfo> =
            pages.into_iter().flat_map(|(_, p)| p.sessions).collect();
        sessions.sort_by_key(|s| s.id);
        let cut = sessions.len() > limit;
        sessions.truncate(limit);
        let next = (cut || more)
            .then(|| sessions.last().map(|s| s.id))
            .flatten();
        (total, SessionPage { sessions, next })
    }

    /// Inserts or replaces a route, permanent or (with `until`) temporary; returns the one
    /// it replaced.
    pub fn set_route(
        &self,
        route: Route,
        until: Option<Instant>,
    ) -> Result<Option<Route>, RouteError> {
        self.change(|relay| match until {
            Some(until) => relay.set_route_until(route.clone(), until),
            None => relay.set_route(route.clone()),
        })
    }

    /// Removes a route; returns it if it existed.
    pub fn remove_route(&self, name: &RouteName) -> Option<Route> {
        self.change(|relay| relay.remove_route(name))
    }

    /// Applies several route changes at once, every shard locked (in shard order) for
    /// the whole edit (a full reload from Redis or from the configuration file): `edit`
    /// gets a [`RouteEditor`], whose changes reach every shard.
    pub fn edit_routes<T>(&self, edit: impl FnOnce(&mut RouteEditor<'_>) -> T) -> T {
        let (out, notes) = {
            let mut hosts: Vec<MutexGuard<'_, RelayHost>> =
                self.cells.iter().map(|c| c.lock()).collect();
            let out = edit(&mut RouteEditor {
                hosts: hosts.iter_mut().map(|h| &mut **h).collect(),
            });
            let notes: Vec<Vec<Notification>> = hosts
                .iter_mut()
                .map(|host| {
                    host.collect();
                    host.take_notifications()
                })
                .collect();
            (out, notes)
        };
        for (cell, notes) in self.cells.iter().zip(&notes) {
            cell.work.notify_one();
            cell.deliver(notes);
        }
        out
    }

    /// Marks a backend healthy or not (the health checker's verdict); see
    /// [`Relay::set_backend_health`].
    pub fn set_backend_health(&self, backend: BackendAddr, healthy: bool) -> bool {
        self.change(|relay| relay.set_backend_health(backend, healthy))
    }

    /// Stops or resumes accepting new connections (the shutdown drain).
    pub fn set_accepting(&self, accepting: bool) {
        self.change(|relay| relay.set_accepting(accepting));
    }

    /// Runs one change in each shard in turn (under that shard's lock), drains its
    /// outputs into the shard's outbox, then (unlocked) wakes the shard's engine and
    /// hands the notifications to the subscribers. Returns the first shard's answer
    /// (every shard holds the same routes, so they answer alike).
    fn change<T>(&self, mut f: impl FnMut(&mut Relay) -> T) -> T {
        let mut first = None;
        for cell in self.cells.iter() {
            let (out, notes) = {
                let mut host = cell.lock();
                let out = f(&mut host.relay);
                host.collect();
                (out, host.take_notifications())
            };
            cell.work.notify_one();
            cell.deliver(&notes);
            first.get_or_insert(out);
        }
        first.expect("at least one shard")
    }
}

/// Route changes inside [`RelayHandle::edit_routes`], made in every shard.
#[derive(Debug)]
pub struct RouteEditor<'a> {
    hosts: Vec<&'a mut RelayHost>,
}

impl RouteEditor<'_> {
    /// The route with exactly this name.
    pub fn route(&self, name: &RouteName) -> Option<&Route> {
        self.hosts[0].relay.route(name)
    }

    /// Inserts or replaces a route; returns the one it replaced.
    pub fn set_route(&mut self, route: Route) -> Result<Option<Route>, RouteError> {
        let mut first = None;
        for host in self.hosts.iter_mut() {
            let out = host.relay.set_route(route.clone());
            first.get_or_insert(out);
        }
        first.expect("at least one shard")
    }

    /// Removes a route; returns it if it existed.
    pub fn remove_route(&mut self, name: &RouteName) -> Option<Route> {
        let mut first = None;
        for host in self.hosts.iter_mut() {
            let out = host.relay.remove_route(name);
            first.get_or_insert(out);
        }
        first.expect("at least one shard")
    }

    /// Every route, sorted by name (as the edits so far left them).
    pub fn routes(&self) -> Vec<Route> {
        self.hosts[0].relay.routes()
    }

    /// Closes every session routed to `backend` at once, in every shard; returns how
    /// many (see [`Relay::close_sessions_to`]).
    pub fn close_sessions_to(&mut self, now: Instant, backend: BackendAddr) -> usize {
        self.hosts
            .iter_mut()
            .map(|host| host.relay.close_sessions_to(now, backend))
            .sum()
    }
}

/// How much longer than the handshake timeout an allocation request may run, so that the
/// core's own timer (which cancels the request) decides, not a race with the allocator.
pub const ALLOCATION_GRACE: Duration = Duration::from_millis(250);

/// How many ALPN protocols of a ClientHello a log line shows.
const MAX_LOGGED_ALPN: usize = 8;

/// Session-level log lines (opened, refused, closed, moved) and per-datagram ones, per
/// second; beyond, they are counted ([`RelayHost::log_lines_suppressed`]).
const LOG_LINES_PER_SECOND: u32 = 200;

/// The client's ALPN list for a log line: each name escaped and cut
/// ([`escape_network_text`]), at most [`MAX_LOGGED_ALPN`] of them.
fn alpn_text(alpn: &[Vec<u8>]) -> String {
    let mut names: Vec<String> = alpn
        .iter()
        .take(MAX_LOGGED_ALPN)
        .map(|p| escape_network_text(p))
        .collect();
    if alpn.len() > MAX_LOGGED_ALPN {
        names.push(format!("...(+{})", alpn.len() - MAX_LOGGED_ALPN));
    }
    names.join(",")
}

/// The server name for a log line, escaped and cut (the core checks names, but a log
/// line never relies on that).
fn sni_text(sni: Option<&str>) -> String {
    sni.map_or_else(|| "-".to_owned(), |s| escape_network_text(s.as_bytes()))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
