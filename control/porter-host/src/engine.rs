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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porter_core::{
    AllocationId, BackendAddr, ClientAddr, Command, LookupId, PathId, SessionId, Settled,
    ShortClaim,
};
use quinn_udp::{RecvMeta, BATCH_SIZE};

use crate::batch::{plan_backend, plan_client, plan_commands, run, Out};
use crate::host::{HostCell, RelayHandle, RelayHost, ALLOCATION_GRACE};
use crate::notify::{lock, race, yield_once, First};
use crate::sends::{BatchedSends, ClientSends, Queue};
use crate::socket::{
    bind_listener, canonical, connect_upstream, connect_upstream_transparent, probe_transparent,
    BindError, SlotPool, Socket,
};
use crate::{
    Allocated, AllocationError, AllocationErrorKind, Allocator, Directory, HostSettings, Runtime,
    SetupError,
};

/// Receive buffer per batch slot: room for a GRO-coalesced run of datagrams.
const SLOT_LEN: usize = 64 * 1024;

/// How long the timer task sleeps when the core has no deadline.
const NO_DEADLINE: Duration = Duration::from_secs(3600);

/// How long after the drain deadline the watchdog ends a process that has not exited.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Ends the process at `at` from a thread of its own, which needs no executor and no
/// lock: the drain's deadline is kept even when the data plane starves the drain task.
fn watch_drain(at: Instant) {
    let spawned = std::thread::Builder::new()
        .name("porter-drain-watchdog".into())
        .spawn(move || {
            while let Some(left) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(left);
            }
            tracing::warn!("drain deadline passed and the relay is still busy: exiting now");
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the drain watchdog: {e}");
    }
}

/// How often the shutdown drain looks at the session count.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Receive slots per upstream socket read.
const UPSTREAM_BATCH: usize = if BATCH_SIZE < 8 { BATCH_SIZE } else { 8 };

/// Idle sets of upstream receive slots kept for reuse.
const UPSTREAM_SLOTS_KEPT: usize = 64;

struct Upstream<R: Runtime> {
    socket: Arc<Socket<R::Udp>>,
    reader: R::Task,
    /// Its local address, when it is one of [`OwnAddrs`].
    local: Option<SocketAddr>,
}

/// The local addresses of the upstream sockets: a datagram at a listener from one of
/// them came from the relay itself (a backend target that leads back to it), and
/// relaying it would loop. A connected UDP socket's local address is specific (the
/// kernel fills in the source address at connect), so the match is exact; a counter per
/// port lets the listeners skip the lookup, and its lock, for most datagrams.
struct OwnAddrs {
    ports: Box<[AtomicU32]>,
    addrs: Mutex<HashMap<SocketAddr, u32>>,
}

impl OwnAddrs {
    fn new() -> Self {
        Self {
            ports: (0..=u16::MAX).map(|_| AtomicU32::new(0)).collect(),
            addrs: Mutex::new(HashMap::new()),
        }
    }

    fn add(&self, addr: SocketAddr) {
        let addr = canonical(addr);
        *lock(&self.addrs).entry(addr).or_insert(0) += 1;
        self.ports[usize::from(addr.port())].fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&self, addr: SocketAddr) {
        let addr = canonical(addr);
        let mut addrs = lock(&self.addrs);
        if let Some(n) = addrs.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                addrs.remove(&addr);
            }
            self.ports[usize::from(addr.port())].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a datagram from `from` came from one of the relay's upstream sockets.
    fn sent_it(&self, from: SocketAddr) -> bool {
        let from = canonical(from);
        self.ports[usize::from(from.port())].load(Ordering::Relaxed) != 0
            && lock(&self.addrs).contains_key(&from)
    }
}

/// The relay's I/O on runtime `R`: everything the driver's tasks share. A sharded host
/// runs one engine per shard ([`Shards`]), each with its own relay, listeners and
/// upstream sockets.
pub struct Engine<R: Runtime> {
    rt: R,
    cell: Arc<HostCell>,
    /// This engine's shard, and every shard's cell in shard order (its own included):
    /// the miss path asks them about connection IDs this shard does not know.
    shard: usize,
    cells: Arc<[Arc<HostCell>]>,
    listeners: Vec<Arc<Socket<R::Udp>>>,
    /// Per listener (same index): client-bound datagrams queued for one `sendmmsg`;
    /// `None` when sends are not batched.
    sends: Option<Vec<ClientSends>>,
    /// Per listener: the kernel receive buffer in effect, in bytes.
    receive_buffers: Vec<usize>,
    upstreams: Mutex<HashMap<PathId, Upstream<R>>>,
    /// Shared by every shard: a shard's upstream socket may send to another shard's
    /// listener.
    own_addrs: Arc<OwnAddrs>,
    allocations: Mutex<HashMap<AllocationId, R::Task>>,
    allocator: Option<Arc<dyn Allocator>>,
    /// Where connection IDs this relay does not know are looked up, once set.
    directory: OnceLock<Arc<dyn Directory>>,
    /// Receive slots of the upstream readers, held only while a batch is handled.
    upstream_slots: SlotPool,
    armed: Mutex<Option<Instant>>,
    /// Upstream sockets send from the client's own address (`udp.transparent`).
    transparent: bool,
}

impl<R: Runtime> Engine<R> {
    /// An engine over the host in `cell`, reading `listeners`; allocation requests go
    /// to `allocator` (without one they fail: Agones is not enabled). With
    /// `batch_sends`, single client-bound datagrams leave each listener in `sendmmsg`
    /// batches. With `transparent`, upstream sockets are bound to their client's
    /// address (IP_TRANSPARENT).
    ///
    /// The engine is shard `shard` of the host whose shards' cells are `cells` (in shard
    /// order; `cells[shard]` is `cell`'s): a lookup of a connection ID the core does not
    /// know asks the other shards first ([`porter_core::Relay::claim_short`]).
    /// The upstream sockets' local addresses are kept in `own_addrs`, one set for every
    /// shard.
    #[allow(clippy::too_many_arguments)]
    fn new(
        rt: R,
        cell: Arc<HostCell>,
        shard: usize,
        cells: Arc<[Arc<HostCell>]>,
        own_addrs: Arc<OwnAddrs>,
        listeners: Vec<Socket<R::Udp>>,
        allocator: Option<Arc<dyn Allocator>>,
        batch_sends: bool,
        transparent: bool,
    ) -> Arc<Self> {
        let sends = batch_sends.then(|| listeners.iter().map(|_| ClientSends::default()).collect());
        let receive_buffers = listeners.iter().map(Socket::receive_buffer).collect();
        Arc::new(Self {
            rt,
            cell,
            shard,
            cells,
            listeners: listeners.into_iter().map(Arc::new).collect(),
            sends,
            receive_buffers,
            upstreams: Mutex::new(HashMap::new()),
            own_addrs,
            allocations: Mutex::new(HashMap::new()),
            allocator,
            directory: OnceLock::new(),
            upstream_slots: SlotPool::new(UPSTREAM_BATCH, SLOT_LEN, UPSTREAM_SLOTS_KEPT),
            armed: Mutex::new(None),
            transparent,
        })
    }

    /// Spawns the listener and timer tasks.
    pub fn start(self: &Arc<Self>) {
        for listener in &self.listeners {
            let (engine, listener) = (self.clone(), listener.clone());
            drop(self.rt.spawn(async move { engine.listen(listener).await }));
        }
        if let Some(sends) = &self.sends {
            for i in 0..sends.len() {
                let engine = self.clone();
                drop(
                    self.rt
                        .spawn(async move { engine.flush_client_sends(i).await }),
                );
            }
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

    /// A door into this engine's relay alone (one shard's); the control plane uses
    /// [`Shards::handle`], which reaches every shard.
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

    /// The smallest kernel receive buffer of the listeners, in bytes.
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffers.iter().copied().min().unwrap_or(0)
    }

    /// What the batched client sends counted, over all listeners (zero when sends are
    /// not batched).
    pub fn batched_sends(&self) -> BatchedSends {
        let mut total = BatchedSends::default();
        for s in self.sends.iter().flatten() {
            let c = s.counts();
            total.calls += c.calls;
            total.datagrams += c.datagrams;
            total.dropped += c.dropped;
        }
        total
    }

    fn listener_for(&self, client: SocketAddr) -> Option<&Arc<Socket<R::Udp>>> {
        self.listener_index(client).map(|i| &self.listeners[i])
    }

    fn listener_index(&self, client: SocketAddr) -> Option<usize> {
        let want_v4 = client.is_ipv4();
        self.listeners
            .iter()
            .position(|l| l.local_addr().is_ok_and(|a| a.is_ipv4() == want_v4))
            .or_else(|| (!self.listeners.is_empty()).then_some(0))
    }

    /// The flusher of listener `i`'s batched sends.
    async fn flush_client_sends(self: Arc<Self>, i: usize) {
        let Some(sends) = self.sends.as_ref().and_then(|s| s.get(i)) else {
            return;
        };
        let listener = &self.listeners[i];
        let mut spare = Queue::default();
        loop {
            sends.queued().await;
            // Every other task that is ready (upstream readers with datagrams) runs
            // first and adds to the batch.
            yield_once().await;
            sends.flush(listener, &mut spare).await;
        }
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
                if self.own_addrs.sent_it(from.0) {
                    let mut host = self.cell.lock();
                    let now = Instant::now();
                    for segment in data.chunks(meta.stride.max(1)) {
                        host.own_datagram(now, from, segment.len());
                    }
                    continue;
                }
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
            // A socket that is always readable never makes `recv` wait, and an executor
            // without cooperative budgets (smol's) would then run nothing else on this
            // thread: not the timer, the API, the signal handler or the drain.
            yield_once().await;
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
            // As in `listen`: a busy upstream socket leaves the thread to the others.
            yield_once().await;
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
                    let Some(index) = self.listener_index(client.0) else {
                        i += 1;
                        continue;
                    };
                    let listener = self.listeners[index].clone();
                    let (end, next) = run(outs, i, seg, listener.max_segments(), |o| match o {
                        Out::ToClient(c, r) if *c == client => Some(r.clone()),
                        _ => None,
                    });
                    let segment = (end - start > seg).then_some(seg);
                    if let Some(sends) = self.sends.as_ref().map(|s| &s[index]) {
                        if segment.is_none() {
                            // One datagram: it joins the listener's next batch. A full
                            // batch is flushed now; a queue that holds too much is waited
                            // on (the flusher, or this task, drains it) before this
                            // reader reads more.
                            if sends.push(client.0, &data[start..end]) {
                                sends.flush(&listener, &mut Queue::default()).await;
                                while sends.is_backlogged() {
                                    if !sends.flush(&listener, &mut Queue::default()).await {
                                        yield_once().await;
                                    }
                                }
                            }
                            i = next;
                            continue;
                        }
                        // A GSO run leaves at once; what was queued before it goes
                        // first, so that this client's datagrams keep their order. When
                        // another flush is under way, the run's datagrams queue behind.
                        if !sends.is_empty() && !sends.flush(&listener, &mut Queue::default()).await
                        {
                            for datagram in data[start..end].chunks(seg) {
                                if sends.push(client.0, datagram) {
                                    sends.flush(&listener, &mut Queue::default()).await;
                                }
                            }
                            i = next;
                            continue;
                        }
                    }
                    if let Err(e) = listener.send(client.0, &data[start..end], segment).await {
                        tracing::debug!(%client, "send to client failed: {e}");
                    }
                    i = next;
                }
                Out::Command(_) => {
                    if let Out::Command(command) = std::mem::replace(&mut outs[i], Out::Done) {
                        self.command(command, outs).await;
                    }
                    i += 1;
                }
                Out::Done => i += 1,
            }
        }
        outs.clear();
    }

    /// Executes one command; what it leads to at once (a lookup the shards answer)
    /// joins `outs`.
    async fn command(self: &Arc<Self>, command: Command, outs: &mut Vec<Out>) {
        match command {
            Command::OpenUpstream {
                session,
                path,
                client,
                backend,
                datagrams,
            } => {
                self.open_upstream(session, path, client, backend);
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
                    if let Some(local) = upstream.local {
                        self.own_addrs.remove(local);
                    }
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
            Command::LookupConnection { id, client, dcid } => {
                self.start_lookup(id, client, dcid, outs);
            }
            Command::ConnectionMoved { shard, session } => {
                // The other shard lets its old path idle out (this shard's lock is not
                // held here: one host lock at a time).
                let cell = usize::try_from(shard).ok().and_then(|i| self.cells.get(i));
                if let Some(cell) = cell {
                    cell.lock().moved_to_shard(Instant::now(), session);
                    cell.work_pending();
                }
            }
        }
    }

    fn open_upstream(
        self: &Arc<Self>,
        session: SessionId,
        path: PathId,
        client: ClientAddr,
        backend: BackendAddr,
    ) {
        let opened = if self.transparent {
            connect_upstream_transparent(&self.rt, client.0, backend.0)
        } else {
            connect_upstream(&self.rt, backend.0)
        };
        match opened {
            Ok(socket) => {
                let socket = Arc::new(socket);
                // A socket bound to its client's own address (a transparent relay) is left
                // out: that client's datagrams are not the relay's.
                let local = socket
                    .local_addr()
                    .ok()
                    .filter(|a| canonical(*a) != client.0);
                if let Some(local) = local {
                    self.own_addrs.add(local);
                }
                let reader = self
                    .rt
                    .spawn(self.clone().read_upstream(path, socket.clone()));
                lock(&self.upstreams).insert(
                    path,
                    Upstream {
                        socket,
                        reader,
                        local,
                    },
                );
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

    /// Runs a lookup and hands its answer to the core: first the other shards (each
    /// locked in turn, never with this one's lock held), then the directory shared
    /// between instances. What the shards settle is answered at once, and its commands
    /// join `outs` (the plan being executed), so that the client's next datagram finds
    /// the connection; a directory lookup runs in a task of its own. Not cancelled: the
    /// core gives up on its own timer, and discards a late answer.
    fn start_lookup(
        self: &Arc<Self>,
        id: LookupId,
        client: ClientAddr,
        dcid: Bytes,
        outs: &mut Vec<Out>,
    ) {
        let settled = if self.cells.len() > 1 {
            let claims: Vec<ShortClaim> = self
                .cells
                .iter()
                .map(|cell| cell.lock().relay().claim_short(client, &dcid))
                .collect();
            ShortClaim::settle(self.shard, &claims)
        } else {
            Settled::Unknown
        };
        let directory = match settled {
            Settled::Unknown => self.directory.get(),
            _ => None,
        };
        // Sharded, the lookup rate guards the shared directory alone.
        if directory.is_some() && self.cells.len() > 1 {
            let mut host = self.cell.lock();
            if !host.take_directory_token(Instant::now()) {
                host.complete_lookup_over_rate(id);
                return;
            }
        }
        let directory = directory.map(|d| d.lookup(dcid));
        let Some(lookup) = directory else {
            self.complete_lookup(id, settled, None, outs);
            return;
        };
        let engine = self.clone();
        drop(self.rt.spawn(async move {
            let answer = lookup.await;
            let mut outs = Vec::new();
            engine.complete_lookup(id, Settled::Unknown, answer, &mut outs);
            engine.execute(&mut outs, &[]).await;
        }));
    }

    /// Hands a lookup's answer to the core; its commands join `outs`. (A connection
    /// another shard had is adopted here; that shard hears of it once the backend
    /// answers here: `Command::ConnectionMoved`.)
    fn complete_lookup(
        &self,
        id: LookupId,
        settled: Settled,
        answer: Option<(porter_core::ConnectionId, BackendAddr)>,
        outs: &mut Vec<Out>,
    ) {
        let notes = {
            let mut host = self.cell.lock();
            let now = Instant::now();
            match settled {
                Settled::Here => host.complete_lookup_here(now, id),
                Settled::Elsewhere {
                    owner,
                    session,
                    cid,
                    backend,
                } => {
                    let owner = u32::try_from(owner).unwrap_or(u32::MAX);
                    host.complete_lookup_moved(now, id, cid, backend, (owner, session));
                }
                Settled::Unknown => host.complete_lookup(now, id, answer),
            }
            plan_commands(&mut host, outs);
            self.rearm(&host);
            host.take_notifications()
        };
        self.cell.deliver(&notes);
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
    /// `udp.transparent` is on, but this process may not make transparent sockets.
    #[error("udp.transparent: cannot make transparent upstream sockets ({0}); transparent mode needs Linux and CAP_NET_ADMIN (CAP_NET_RAW also does): run as root or grant the capability")]
    Transparent(std::io::Error),
}

/// A started data plane: one [`Engine`] per shard, each with its own relay, listener
/// sockets (bound to the same addresses with `SO_REUSEPORT`, so the kernel spreads the
/// clients' 4-tuples over them) and upstream sockets. Only the miss path crosses shards:
/// a short header a shard cannot route is looked up in the others
/// ([`porter_core::Relay::claim_short`]) before the directory shared between instances.
pub struct Shards<R: Runtime> {
    engines: Vec<Arc<Engine<R>>>,
    handle: RelayHandle,
}

impl<R: Runtime> Shards<R> {
    /// The control plane's door into every shard's relay.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// The shards' engines, in shard order (at least one).
    pub fn engines(&self) -> &[Arc<Engine<R>>] {
        &self.engines
    }

    /// How many shards run.
    pub fn shard_count(&self) -> usize {
        self.engines.len()
    }

    /// Sets the connection-ID directory shared between instances, in every shard (once;
    /// a second call is ignored and returns `false`).
    pub fn set_directory(&self, directory: Arc<dyn Directory>) -> bool {
        // Every engine, even after one refused (no short circuit).
        let set: Vec<bool> = self
            .engines
            .iter()
            .map(|e| e.set_directory(directory.clone()))
            .collect();
        set.iter().all(|s| *s)
    }

    /// The listeners' local addresses (every shard listens on the same ones).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.engines[0].listen_addrs()
    }

    /// Open upstream sockets, over all shards.
    pub fn upstream_count(&self) -> usize {
        self.engines.iter().map(|e| e.upstream_count()).sum()
    }

    /// The smallest kernel receive buffer of any shard's listeners, in bytes.
    pub fn receive_buffer(&self) -> usize {
        self.engines
            .iter()
            .map(|e| e.receive_buffer())
            .min()
            .unwrap_or(0)
    }

    /// What the batched client sends counted, over all shards.
    pub fn batched_sends(&self) -> BatchedSends {
        let mut total = BatchedSends::default();
        for c in self.engines.iter().map(|e| e.batched_sends()) {
            total.calls += c.calls;
            total.datagrams += c.datagrams;
            total.dropped += c.dropped;
        }
        total
    }
}

/// Starts the relay on `rt`: binds the listeners (for every shard, with `SO_REUSEPORT`
/// when there are several), builds each shard's relay from `settings` (instance-wide
/// budgets divided among them: [`porter_core::RelayConfig::for_shard`]), spawns the
/// engines' tasks (shard `i` on `rt.for_shard(i)`) and logs each listen address.
/// Allocation requests go to `allocator` (none: they fail, Agones is not enabled).
pub fn start<R: Runtime>(
    rt: R,
    settings: &HostSettings,
    allocator: Option<Arc<dyn Allocator>>,
) -> Result<Arc<Shards<R>>, StartError> {
    if settings.transparent {
        probe_transparent().map_err(StartError::Transparent)?;
    }
    let count = settings.shards.max(1);
    let shared_port = count > 1;
    // With an IPv4 listener beside it, an IPv6 listener takes IPv6 only.
    let has_v4 = settings.listen.iter().any(SocketAddr::is_ipv4);
    let runtimes: Vec<R> = (0..count).map(|i| rt.for_shard(i)).collect();
    let mut listeners: Vec<Vec<Socket<R::Udp>>> = Vec::with_capacity(count);
    // The first shard binds the configured addresses; the others the addresses it got
    // (an ephemeral port is known only now).
    let mut bound: Vec<SocketAddr> = settings.listen.clone();
    for (i, rt) in runtimes.iter().enumerate() {
        let mut mine = Vec::new();
        for addr in &bound {
            if i == 0 && shared_port && addr.port() != 0 {
                // A port shared between shards would also be shared with another process
                // of this user that asked for SO_REUSEPORT: first make sure nobody holds
                // it, as a plain bind would.
                crate::socket::bind_udp(*addr, has_v4, false).map_err(|source| {
                    BindError::Bind {
                        addr: *addr,
                        source,
                    }
                })?;
            }
            mine.push(bind_listener(
                rt,
                *addr,
                has_v4,
                settings.receive_buffer,
                shared_port,
            )?);
        }
        if i == 0 {
            bound = mine.iter().filter_map(|l| l.local_addr().ok()).collect();
        }
        listeners.push(mine);
    }
    // Every path holds a socket: no more paths than the process can open. Drawn now,
    // with the listeners open; each shard gets its part.
    let budget = crate::SocketBudget::measure(settings.relay.max_paths);
    tracing::info!(
        effective = budget.effective,
        configured = budget.configured,
        fd_limit = budget
            .fd_limit
            .map_or_else(|| "unlimited".to_owned(), |l| l.to_string()),
        fds_open = budget.fds_open,
        fds_later = crate::FDS_OPENED_LATER,
        fd_reserve = crate::FD_RESERVE,
        port_range = budget
            .port_range
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
        shards = count,
        "upstream socket budget"
    );
    let mut cells = Vec::with_capacity(count);
    for i in 0..count {
        let mut shard = settings.clone();
        shard.relay.max_paths = budget.effective;
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let total = u32::try_from(count).unwrap_or(u32::MAX);
        shard.relay = shard.relay.for_shard(index, total);
        let relay = shard.new_relay_at(bound.clone())?;
        cells.push(HostCell::new(RelayHost::new(relay, settings.log_requests)));
    }
    let all: Arc<[Arc<HostCell>]> = cells.clone().into();
    let own_addrs = Arc::new(OwnAddrs::new());
    let engines: Vec<Arc<Engine<R>>> = runtimes
        .into_iter()
        .zip(listeners)
        .zip(cells)
        .enumerate()
        .map(|(i, ((rt, listeners), cell))| {
            Engine::new(
                rt,
                cell,
                i,
                all.clone(),
                own_addrs.clone(),
                listeners,
                allocator.clone(),
                settings.batch_sends,
                settings.transparent,
            )
        })
        .collect();
    for engine in &engines {
        engine.start();
    }
    let shards = Arc::new(Shards {
        handle: RelayHandle::sharded(all.to_vec()),
        engines,
    });
    if settings.transparent {
        tracing::info!("transparent mode: upstream sockets send from each client's own address");
    }
    let first = &shards.engines[0];
    if let Some(health) = settings.health {
        let checker = first.clone();
        drop(
            first
                .rt
                .spawn(crate::health::run(checker, shards.handle(), health)),
        );
        tracing::info!(
            interval_ms = health.interval.as_millis() as u64,
            "health checks on"
        );
    }
    for (addr, buffer) in first.listen_addrs().iter().zip(&first.receive_buffers) {
        tracing::info!(
            listen = %addr,
            receive_buffer = buffer,
            asked = settings.receive_buffer,
            batched_sends = settings.batch_sends,
            shards = count,
            "relay listening"
        );
    }
    Ok(shards)
}

/// The shutdown drain, after the first SIGINT/SIGTERM: stops accepting new sessions and
/// keeps forwarding until no session is left, `period` has passed, or `second_signal`
/// resolves. The deadline holds even when this task cannot run (a data plane so busy
/// that the executor never gets to it): a watchdog thread ends the process, with exit
/// code 0, [`DRAIN_GRACE`] after it. Call it only on the way out.
pub async fn drain<R: Runtime>(
    shards: &Shards<R>,
    period: Duration,
    second_signal: impl Future<Output = ()>,
) {
    tracing::info!(
        drain_seconds = period.as_secs_f64(),
        "shutting down: no new sessions, draining existing ones"
    );
    let handle = shards.handle();
    handle.set_accepting(false);
    let deadline = Instant::now() + period;
    watch_drain(deadline + DRAIN_GRACE);
    let mut second_signal = std::pin::pin!(second_signal);
    let rt = &shards.engines[0].rt;
    loop {
        let sessions = handle.session_count();
        if sessions == 0 || Instant::now() >= deadline {
            tracing::info!(sessions, "exiting");
            return;
        }
        let tick = rt.sleep_until(Instant::now() + DRAIN_POLL);
        if race(tick, second_signal.as_mut()).await == First::B {
            tracing::info!("second signal: exiting now");
            return;
        }
    }
}

#[cfg(test)]
mod own_addr_tests {
    use super::*;

    #[test]
    fn a_datagram_is_the_relays_own_only_from_an_upstream_sockets_exact_address() {
        let own = OwnAddrs::new();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(!own.sent_it(a("127.0.0.1:40000")));
        own.add(a("127.0.0.1:40000"));
        own.add(a("192.0.2.2:40001"));
        assert!(own.sent_it(a("127.0.0.1:40000")));
        assert!(own.sent_it(a("[::ffff:192.0.2.2]:40001")));
        // Another address with the same port (a client on 127.1.0.7, say), or the same
        // address with another port, is not the relay.
        assert!(!own.sent_it(a("127.1.0.7:40000")));
        assert!(!own.sent_it(a("192.0.2.2:40000")));
        // Counted per socket: ours until its last socket closes.
        own.add(a("127.0.0.1:40000"));
        own.remove(a("127.0.0.1:40000"));
        assert!(own.sent_it(a("127.0.0.1:40000")));
        own.remove(a("127.0.0.1:40000"));
        own.remove(a("127.0.0.1:40000"));
        assert!(!own.sent_it(a("127.0.0.1:40000")));
        assert_eq!(own.ports[40000].load(Ordering::Relaxed), 0);
    }
}
