//! The relay loop: the listener tasks (batched receive with GRO), one connected upstream
//! socket and reader task per client path (a session has one per client address), the
//! timer the core asks for, and the execution of
//! the relay's [`Command`]s.
//!
//! Each listener and each upstream socket has one task reading it. A task locks the
//! shared host once per received slot, collects what to send, unlocks, and sends. Runs
//! of same-sized datagrams for one destination (a bulk transfer, coalesced by GRO) go
//! out as one GSO send.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porter_core::{AllocationId, BackendAddr, ClientAddr, Command, LookupId, PathId, SessionId};
use quinn_udp::{RecvMeta, BATCH_SIZE};

use crate::batch::{plan_backend, plan_client, plan_commands, run, Out};
use crate::host::{HostCell, RelayHandle, RelayHost, ALLOCATION_GRACE};
use crate::notify::{lock, race, First};
use crate::socket::{bind_listener, canonical, connect_upstream, BindError, SlotPool, Socket};
use crate::{
    Allocated, AllocationError, AllocationErrorKind, Allocator, Directory, HostSettings, Runtime,
    SetupError,
};

/// Receive buffer per batch slot: room for a GRO-coalesced run of datagrams.
const SLOT_LEN: usize = 64 * 1024;

/// How long the timer task sleeps when the core has no deadline.
const NO_DEADLINE: Duration = Duration::from_secs(3600);

/// How often the shutdown drain looks at the session count.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Receive slots per upstream socket read.
const UPSTREAM_BATCH: usize = if BATCH_SIZE < 8 { BATCH_SIZE } else { 8 };

/// Idle sets of upstream receive slots kept for reuse.
const UPSTREAM_SLOTS_KEPT: usize = 64;

struct Upstream<R: Runtime> {
    socket: Arc<Socket<R::Udp>>,
    reader: R::Task,
}

/// The relay's I/O on runtime `R`: everything the driver's tasks share.
pub struct Engine<R: Runtime> {
    rt: R,
    cell: Arc<HostCell>,
    listeners: Vec<Arc<Socket<R::Udp>>>,
    upstreams: Mutex<HashMap<PathId, Upstream<R>>>,
    allocations: Mutex<HashMap<AllocationId, R::Task>>,
    allocator: Option<Arc<dyn Allocator>>,
    /// Where connection IDs this relay does not know are looked up, once set.
    directory: OnceLock<Arc<dyn Directory>>,
    /// Receive slots of the upstream readers, held only while a batch is handled.
    upstream_slots: SlotPool,
    armed: Mutex<Option<Instant>>,
}

impl<R: Runtime> Engine<R> {
    /// An engine over the host in `cell`, reading `listeners`; allocation requests go
    /// to `allocator` (without one they fail: Agones is not enabled).
    pub fn new(
        rt: R,
        cell: Arc<HostCell>,
        listeners: Vec<Socket<R::Udp>>,
        allocator: Option<Arc<dyn Allocator>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            rt,
            cell,
            listeners: listeners.into_iter().map(Arc::new).collect(),
            upstreams: Mutex::new(HashMap::new()),
            allocations: Mutex::new(HashMap::new()),
            allocator,
            directory: OnceLock::new(),
            upstream_slots: SlotPool::new(UPSTREAM_BATCH, SLOT_LEN, UPSTREAM_SLOTS_KEPT),
            armed: Mutex::new(None),
        })
    }

    /// Spawns the listener and timer tasks.
    pub fn start(self: &Arc<Self>) {
        for listener in &self.listeners {
            let (engine, listener) = (self.clone(), listener.clone());
            drop(self.rt.spawn(async move { engine.listen(listener).await }));
        }
        let engine = self.clone();
        drop(self.rt.spawn(async move { engine.run_timer().await }));
    }

    /// Sets the connection-ID directory the core's lookups go to (once; a second call
    /// is ignored and returns `false`). Until then every lookup answers "not found".
    pub fn set_directory(&self, directory: Arc<dyn Directory>) -> bool {
        self.directory.set(directory).is_ok()
    }

    /// The runtime the engine runs on.
    pub(crate) fn runtime(&self) -> &R {
        &self.rt
    }

    /// The control plane's door into this engine's relay.
    pub fn handle(&self) -> RelayHandle {
        RelayHandle::new(self.cell.clone())
    }

    /// The listeners' local addresses.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Open upstream sockets (one per client path).
    pub fn upstream_count(&self) -> usize {
        lock(&self.upstreams).len()
    }

    fn listener_for(&self, client: SocketAddr) -> Option<&Arc<Socket<R::Udp>>> {
        let want_v4 = client.is_ipv4();
        self.listeners
            .iter()
            .find(|l| l.local_addr().is_ok_and(|a| a.is_ipv4() == want_v4))
            .or_else(|| self.listeners.first())
    }

    fn upstream_socket(&self, path: PathId) -> Option<Arc<Socket<R::Udp>>> {
        lock(&self.upstreams).get(&path).map(|u| u.socket.clone())
    }

    async fn listen(self: Arc<Self>, listener: Arc<Socket<R::Udp>>) {
        let mut bufs = vec![vec![0u8; SLOT_LEN]; BATCH_SIZE];
        let mut metas = vec![RecvMeta::default(); BATCH_SIZE];
        let mut outs = Vec::new();
        loop {
            let n = match listener.recv(&mut bufs, &mut metas).await {
                Ok(n) => n,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems.
                    tracing::debug!("listener receive error: {e}");
                    continue;
                }
            };
            for (meta, buf) in metas[..n].iter().zip(&bufs) {
                let from = ClientAddr(canonical(meta.addr));
                let data = &buf[..meta.len];
                let notes = {
                    let mut host = self.cell.lock();
                    let now = Instant::now();
                    plan_client(&mut host, now, from, data, meta.stride.max(1), &mut outs);
                    self.rearm(&host);
                    host.take_notifications()
                };
                self.cell.deliver(&notes);
                self.execute(&mut outs, data).await;
            }
        }
    }

    async fn read_upstream(self: Arc<Self>, path: PathId, socket: Arc<Socket<R::Udp>>) {
        let mut metas = vec![RecvMeta::default(); UPSTREAM_BATCH];
        let mut outs = Vec::new();
        loop {
            let (result, bufs) = socket.recv_pooled(&self.upstream_slots, &mut metas).await;
            let n = match result {
                Ok(n) => n,
                Err(e) => {
                    self.upstream_slots.put(bufs);
                    // Each ICMP error is reported once; the next receive waits again.
                    socket.report_unreachable(path, &e);
                    continue;
                }
            };
            for (meta, buf) in metas[..n].iter().zip(&bufs) {
                let data = &buf[..meta.len];
                let notes = {
                    let mut host = self.cell.lock();
                    let now = Instant::now();
                    plan_backend(&mut host, now, path, data, meta.stride.max(1), &mut outs);
                    host.take_notifications()
                };
                self.cell.deliver(&notes);
                self.execute(&mut outs, data).await;
            }
            self.upstream_slots.put(bufs);
        }
    }

    /// Performs a batch's outputs in order, coalescing runs for one destination into
    /// GSO sends.
    async fn execute(self: &Arc<Self>, outs: &mut Vec<Out>, data: &[u8]) {
        let mut i = 0;
        while i < outs.len() {
            match &outs[i] {
                Out::ToBackend(path, range) => {
                    let (path, start, seg) = (*path, range.start, range.len());
                    let Some(socket) = self.upstream_socket(path) else {
                        i += 1;
                        continue;
                    };
                    let (end, next) = run(outs, i, seg, socket.max_segments(), |o| match o {
                        Out::ToBackend(p, r) if *p == path => Some(r.clone()),
                        _ => None,
                    });
                    if let Ok(peer) = socket.peer_addr() {
                        let segment = (end - start > seg).then_some(seg);
                        if let Err(e) = socket.send(peer, &data[start..end], segment).await {
                            socket.report_unreachable(path, &e);
                        }
                    }
                    i = next;
                }
                Out::ToClient(client, range) => {
                    let (client, start, seg) = (*client, range.start, range.len());
                    let Some(listener) = self.listener_for(client.0).cloned() else {
                        i += 1;
                        continue;
                    };
                    let (end, next) = run(outs, i, seg, listener.max_segments(), |o| match o {
                        Out::ToClient(c, r) if *c == client => Some(r.clone()),
                        _ => None,
                    });
                    let segment = (end - start > seg).then_some(seg);
                    if let Err(e) = listener.send(client.0, &data[start..end], segment).await {
                        tracing::debug!(%client, "send to client failed: {e}");
                    }
                    i = next;
                }
                Out::Command(_) => {
                    if let Out::Command(command) = std::mem::replace(&mut outs[i], Out::Done) {
                        self.command(command).await;
                    }
                    i += 1;
                }
                Out::Done => i += 1,
            }
        }
        outs.clear();
    }

    async fn command(self: &Arc<Self>, command: Command) {
        match command {
            Command::OpenUpstream {
                session,
                path,
                client,
                backend,
                datagrams,
            } => {
                self.open_upstream(session, path, backend);
                if let Some(socket) = self.upstream_socket(path) {
                    if let Ok(peer) = socket.peer_addr() {
                        for d in datagrams {
                            if let Err(e) = socket.send(peer, &d, None).await {
                                socket.report_unreachable(path, &e);
                            }
                        }
                    }
                } else {
                    tracing::debug!(%session, %path, %client, "no upstream socket for the held datagrams");
                }
            }
            Command::Transmit { to, datagram } => {
                if let Some(listener) = self.listener_for(to.0) {
                    if let Err(e) = listener.send(to.0, &datagram, None).await {
                        tracing::debug!(client = %to, "send to client failed: {e}");
                    }
                }
            }
            Command::CloseUpstream { path, .. } => {
                let upstream = lock(&self.upstreams).remove(&path);
                if let Some(upstream) = upstream {
                    R::abort(upstream.reader);
                }
            }
            Command::Allocate {
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
                // request); the allocator's own deadline is a little later so the two do
                // not race.
                let handshake = self.cell.lock().relay().config().handshake_timeout;
                let deadline = Instant::now() + handshake + ALLOCATION_GRACE;
                // The tag names the connection: the player ID in the game server's list.
                self.start_allocation(id, fleet, format!("{client}/{session}"), deadline);
            }
            Command::CancelAllocation { id } => {
                let task = lock(&self.allocations).remove(&id);
                if let Some(task) = task {
                    R::abort(task);
                }
            }
            Command::LookupConnection { id, dcid } => self.start_lookup(id, dcid),
        }
    }

    fn open_upstream(self: &Arc<Self>, session: SessionId, path: PathId, backend: BackendAddr) {
        match connect_upstream(&self.rt, backend.0) {
            Ok(socket) => {
                let socket = Arc::new(socket);
                let reader = self
                    .rt
                    .spawn(self.clone().read_upstream(path, socket.clone()));
                lock(&self.upstreams).insert(path, Upstream { socket, reader });
            }
            Err(e) => {
                // Bounded: under a flood every new session may fail the same way.
                if let Some(left_out) = crate::logtext::socket_error_allowed() {
                    tracing::error!(
                        %session,
                        %path,
                        %backend,
                        left_out,
                        "cannot open upstream socket: {e}"
                    );
                }
                // The path ends (and the session with it, if it was its only one); its
                // close is executed by whoever drains next.
                self.cell.lock().upstream_failed(Instant::now(), path);
                self.cell.work_pending();
            }
        }
    }

    fn start_allocation(
        self: &Arc<Self>,
        id: AllocationId,
        fleet: Arc<str>,
        tag: String,
        deadline: Instant,
    ) {
        let engine = self.clone();
        let allocation = self
            .allocator
            .as_ref()
            .map(|a| a.allocate(fleet, tag, deadline));
        // The task is registered before it can finish: it runs only once this function
        // has returned to the executor, or on another thread after the insert below, and
        // removes its own entry under the same lock.
        let mut allocations = lock(&self.allocations);
        let requested = Instant::now();
        let task = self.rt.spawn(async move {
            let result: Result<Allocated, AllocationError> = match allocation {
                Some(allocation) => allocation.await,
                None => Err(AllocationError::new(
                    AllocationErrorKind::NotEnabled,
                    "agones is not enabled in this relay's configuration",
                )),
            };
            let took = requested.elapsed();
            let mut outs = Vec::new();
            let notes = {
                let mut host = engine.cell.lock();
                // Dropping the handle detaches: this task runs on to the end.
                drop(lock(&engine.allocations).remove(&id));
                host.allocation_answered(took, &result);
                host.complete_allocation(Instant::now(), id, result);
                plan_commands(&mut host, &mut outs);
                engine.rearm(&host);
                host.take_notifications()
            };
            engine.cell.deliver(&notes);
            engine.execute(&mut outs, &[]).await;
        });
        allocations.insert(id, task);
    }

    /// Runs a directory lookup and hands its answer to the core. Not cancelled: the core
    /// gives up on its own timer, and discards a late answer.
    fn start_lookup(self: &Arc<Self>, id: LookupId, dcid: Bytes) {
        let lookup = self.directory.get().map(|d| d.lookup(dcid));
        let engine = self.clone();
        drop(self.rt.spawn(async move {
            let answer = match lookup {
                Some(lookup) => lookup.await,
                None => None,
            };
            let mut outs = Vec::new();
            let notes = {
                let mut host = engine.cell.lock();
                host.complete_lookup(Instant::now(), id, answer);
                plan_commands(&mut host, &mut outs);
                engine.rearm(&host);
                host.take_notifications()
            };
            engine.cell.deliver(&notes);
            engine.execute(&mut outs, &[]).await;
        }));
    }

    /// Wakes the timer task if the core's next deadline is earlier than the armed one.
    fn rearm(&self, host: &RelayHost) {
        let Some(next) = host.poll_timeout() else {
            return;
        };
        let mut armed = lock(&self.armed);
        if armed.is_none_or(|a| next < a) {
            *armed = Some(next);
            self.cell.work_pending();
        }
    }

    async fn run_timer(self: Arc<Self>) {
        let mut outs = Vec::new();
        loop {
            // Commands of control-plane changes first, then the deadline they may have
            // moved.
            let notes = {
                let mut host = self.cell.lock();
                plan_commands(&mut host, &mut outs);
                *lock(&self.armed) = host.poll_timeout();
                host.take_notifications()
            };
            self.cell.deliver(&notes);
            self.execute(&mut outs, &[]).await;
            let next = *lock(&self.armed);
            let at = next.unwrap_or_else(|| Instant::now() + NO_DEADLINE);
            if race(self.rt.sleep_until(at), self.cell.work()).await == First::B {
                continue;
            }
            let notes = {
                let mut host = self.cell.lock();
                host.handle_timeout(Instant::now());
                plan_commands(&mut host, &mut outs);
                host.take_notifications()
            };
            self.cell.deliver(&notes);
            self.execute(&mut outs, &[]).await;
        }
    }
}

/// The relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The routes or limits were rejected by the core.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// Starts the relay on `rt`: binds the listeners, builds the relay host from `settings`,
/// spawns the engine's tasks and logs each listen address. Allocation requests go to
/// `allocator` (none: they fail, Agones is not enabled).
pub fn start<R: Runtime>(
    rt: R,
    settings: &HostSettings,
    allocator: Option<Arc<dyn Allocator>>,
) -> Result<Arc<Engine<R>>, StartError> {
    let mut listeners = Vec::new();
    // With an IPv4 listener beside it, an IPv6 listener takes IPv6 only.
    let has_v4 = settings.listen.iter().any(SocketAddr::is_ipv4);
    for addr in &settings.listen {
        listeners.push(bind_listener(&rt, *addr, has_v4)?);
    }
    // The bound addresses (an ephemeral port is known only now): routes to them loop.
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let relay = settings.new_relay_at(bound)?;
    let cell = HostCell::new(RelayHost::new(relay, settings.log_requests));
    let engine = Engine::new(rt, cell, listeners, allocator);
    engine.start();
    if let Some(health) = settings.health {
        let checker = engine.clone();
        drop(engine.rt.spawn(crate::health::run(checker, health)));
        tracing::info!(
            interval_ms = health.interval.as_millis() as u64,
            "health checks on"
        );
    }
    for addr in engine.listen_addrs() {
        tracing::info!(listen = %addr, "relay listening");
    }
    Ok(engine)
}

/// The shutdown drain, after the first SIGINT/SIGTERM: stops accepting new sessions and
/// keeps forwarding until no session is left, `period` has passed, or `second_signal`
/// resolves.
pub async fn drain<R: Runtime>(
    engine: &Engine<R>,
    period: Duration,
    second_signal: impl Future<Output = ()>,
) {
    tracing::info!(
        drain_seconds = period.as_secs_f64(),
        "shutting down: no new sessions, draining existing ones"
    );
    let handle = engine.handle();
    handle.set_accepting(false);
    let deadline = Instant::now() + period;
    let mut second_signal = std::pin::pin!(second_signal);
    loop {
        let sessions = handle.session_count();
        if sessions == 0 || Instant::now() >= deadline {
            tracing::info!(sessions, "exiting");
            return;
        }
        let tick = engine.rt.sleep_until(Instant::now() + DRAIN_POLL);
        if race(tick, second_signal.as_mut()).await == First::B {
            tracing::info!("second signal: exiting now");
            return;
        }
    }
}
