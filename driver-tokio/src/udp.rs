//! The relay on tokio sockets: the listener (batched receive with GRO, quinn-udp), one
//! connected upstream socket per session, the timer the core asks for, and the execution
//! of the host's [`Action`]s.
//!
//! Each listener and each upstream socket has one task reading it. A task locks the
//! shared host once per received batch, collects what to send, unlocks, and sends. Runs
//! of same-sized datagrams for one destination (a bulk transfer, coalesced by GRO) go
//! out as one GSO send.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::host::{Action, RelayHost, SharedHost};
use porter_core::{AllocationFailure, BackendAddr, ClientAddr, SessionId, Verdict};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// Receive buffer per batch slot: room for a GRO-coalesced run of datagrams.
const SLOT_LEN: usize = 64 * 1024;

/// A UDP socket with quinn-udp's batched I/O state.
#[derive(Debug)]
pub(crate) struct Socket {
    io: UdpSocket,
    state: UdpSocketState,
    /// Whether an error was already reported (upstream sockets only).
    reported: AtomicBool,
}

impl Socket {
    fn new(std: StdUdpSocket) -> io::Result<Self> {
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std).into())?;
        Ok(Self {
            io: UdpSocket::from_std(std)?,
            state,
            reported: AtomicBool::new(false),
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    async fn recv(&self, bufs: &mut [Vec<u8>], metas: &mut [RecvMeta]) -> io::Result<usize> {
        loop {
            self.io.readable().await?;
            let result = self.io.try_io(Interest::READABLE, || {
                let mut iovs: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                self.state.recv((&self.io).into(), &mut iovs, metas)
            });
            match result {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// Sends `contents` to `to`; with `segment`, as GSO segments of that size.
    async fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        loop {
            self.io.writable().await?;
            let result = self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.io).into(), &transmit)
            });
            match result {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }
}

/// Binds a UDP listener; the error names the address. An IPv6 socket is IPv6-only when
/// `v6_only` (an IPv4 listener serves IPv4 beside it); otherwise a wildcard IPv6 bind
/// also takes IPv4 clients, as IPv4-mapped addresses.
pub(crate) fn bind_listener(addr: SocketAddr, v6_only: bool) -> anyhow::Result<Arc<Socket>> {
    let std = bind_udp(addr, v6_only).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            " (another process is using this port; choose another udp.port or stop it)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot bind UDP {addr}: {e}{hint}")
    })?;
    let socket = Socket::new(std).map_err(|e| anyhow::anyhow!("UDP {addr}: {e}"))?;
    Ok(Arc::new(socket))
}

/// How allocation requests are served.
pub(crate) trait Allocator: Send + Sync + 'static {
    /// Allocates a game server from `fleet` for the connection named by `tag`.
    fn allocate(
        &self,
        fleet: Arc<str>,
        tag: String,
        deadline: Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<SocketAddr, String>> + Send>>;
}

struct Upstream {
    socket: Arc<Socket>,
    reader: AbortHandle,
}

/// Logs, once per session, that its backend does not answer (ICMP port unreachable
/// surfaces as an error on the connected socket's next send or receive).
fn report_unreachable(session: SessionId, socket: &Socket, reported: &AtomicBool, e: &io::Error) {
    if !reported.swap(true, Ordering::Relaxed) {
        let backend = socket
            .io
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        tracing::warn!(%session, %backend, "backend unreachable: {e}");
    }
}

/// Everything the driver's tasks share.
pub(crate) struct Driver {
    host: SharedHost,
    listeners: Vec<Arc<Socket>>,
    upstreams: Mutex<HashMap<SessionId, Upstream>>,
    allocations: Mutex<HashMap<porter_core::AllocationId, AbortHandle>>,
    allocator: Option<Arc<dyn Allocator>>,
    timer: Notify,
    armed: Mutex<Option<Instant>>,
}

/// One thing to do after a batch, in order.
enum Out {
    Act(Action),
    /// An action already performed.
    Done,
    ToBackend(SessionId, Range<usize>),
    ToClient(ClientAddr, Range<usize>),
}

impl Driver {
    pub(crate) fn new(
        host: SharedHost,
        listeners: Vec<Arc<Socket>>,
        allocator: Option<Arc<dyn Allocator>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            host,
            listeners,
            upstreams: Mutex::new(HashMap::new()),
            allocations: Mutex::new(HashMap::new()),
            allocator,
            timer: Notify::new(),
            armed: Mutex::new(None),
        })
    }

    /// Starts the listener and timer tasks.
    pub(crate) fn start(self: &Arc<Self>) {
        for listener in &self.listeners {
            let (driver, listener) = (self.clone(), listener.clone());
            tokio::spawn(async move { driver.listen(listener).await });
        }
        let driver = self.clone();
        tokio::spawn(async move { driver.run_timer().await });
    }

    /// Open upstream sockets.
    pub(crate) fn upstream_count(&self) -> usize {
        lock(&self.upstreams).len()
    }

    fn listener_for(&self, client: SocketAddr) -> Option<&Arc<Socket>> {
        let want_v4 = client.is_ipv4();
        self.listeners
            .iter()
            .find(|l| l.local_addr().is_ok_and(|a| a.is_ipv4() == want_v4))
            .or_else(|| self.listeners.first())
    }

    async fn listen(self: Arc<Self>, listener: Arc<Socket>) {
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
                let stride = meta.stride.max(1);
                {
                    let mut host = RelayHost::lock(&self.host);
                    let now = Instant::now();
                    let mut actions = Vec::new();
                    for (i, segment) in data.chunks(stride).enumerate() {
                        let range = i * stride..i * stride + segment.len();
                        match host.client_datagram(now, from, segment) {
                            Verdict::Forward { session, .. } => {
                                outs.push(Out::ToBackend(session, range));
                            }
                            Verdict::Reply(reply) => outs.push(Out::Act(Action::SendToClient {
                                to: from,
                                datagram: reply,
                            })),
                            _ => {}
                        }
                        host.drain(&mut actions);
                        outs.extend(actions.drain(..).map(Out::Act));
                    }
                    self.rearm(&host);
                }
                self.execute(&mut outs, data).await;
            }
        }
    }

    async fn read_upstream(self: Arc<Self>, session: SessionId, socket: Arc<Socket>) {
        let batch = BATCH_SIZE.min(8);
        let mut bufs = vec![vec![0u8; SLOT_LEN]; batch];
        let mut metas = vec![RecvMeta::default(); batch];
        let mut outs = Vec::new();
        loop {
            let n = match socket.recv(&mut bufs, &mut metas).await {
                Ok(n) => n,
                Err(e) => {
                    // Each ICMP error is reported once; the next receive waits again.
                    report_unreachable(session, &socket, &socket.reported, &e);
                    continue;
                }
            };
            for (meta, buf) in metas[..n].iter().zip(&bufs) {
                let data = &buf[..meta.len];
                let stride = meta.stride.max(1);
                {
                    let mut host = RelayHost::lock(&self.host);
                    let now = Instant::now();
                    let mut actions = Vec::new();
                    for (i, segment) in data.chunks(stride).enumerate() {
                        let range = i * stride..i * stride + segment.len();
                        if let Verdict::ForwardToClient { client, .. } =
                            host.backend_datagram(now, session, segment)
                        {
                            outs.push(Out::ToClient(client, range));
                        }
                        host.drain(&mut actions);
                        outs.extend(actions.drain(..).map(Out::Act));
                    }
                }
                self.execute(&mut outs, data).await;
            }
        }
    }

    /// Performs a batch's outputs in order, coalescing runs for one destination into
    /// GSO sends.
    async fn execute(self: &Arc<Self>, outs: &mut Vec<Out>, data: &[u8]) {
        let mut i = 0;
        while i < outs.len() {
            match &outs[i] {
                Out::ToBackend(session, range) => {
                    let (session, start, seg) = (*session, range.start, range.len());
                    let socket = lock(&self.upstreams)
                        .get(&session)
                        .map(|u| u.socket.clone());
                    let Some(socket) = socket else {
                        i += 1;
                        continue;
                    };
                    let (end, next) = run(outs, i, seg, socket.max_segments(), |o| match o {
                        Out::ToBackend(s, r) if *s == session => Some(r.clone()),
                        _ => None,
                    });
                    let peer = socket.io.peer_addr();
                    if let Ok(peer) = peer {
                        let segment = (end - start > seg).then_some(seg);
                        if let Err(e) = socket.send(peer, &data[start..end], segment).await {
                            report_unreachable(session, &socket, &socket.reported, &e);
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
                Out::Act(_) => {
                    if let Out::Act(action) = std::mem::replace(&mut outs[i], Out::Done) {
                        self.act(action).await;
                    }
                    i += 1;
                }
                Out::Done => i += 1,
            }
        }
        outs.clear();
    }

    async fn act(self: &Arc<Self>, action: Action) {
        match action {
            Action::OpenUpstream { session, backend } => self.open_upstream(session, backend),
            Action::SendToBackend { session, datagrams } => {
                let socket = lock(&self.upstreams)
                    .get(&session)
                    .map(|u| u.socket.clone());
                if let Some(socket) = socket {
                    if let Ok(peer) = socket.io.peer_addr() {
                        for d in datagrams {
                            if let Err(e) = socket.send(peer, &d, None).await {
                                report_unreachable(session, &socket, &socket.reported, &e);
                            }
                        }
                    }
                }
            }
            Action::SendToClient { to, datagram } => {
                if let Some(listener) = self.listener_for(to.0) {
                    if let Err(e) = listener.send(to.0, &datagram, None).await {
                        tracing::debug!(client = %to, "send to client failed: {e}");
                    }
                }
            }
            Action::CloseUpstream { session } => {
                if let Some(upstream) = lock(&self.upstreams).remove(&session) {
                    upstream.reader.abort();
                }
            }
            Action::Allocate {
                id,
                fleet,
                tag,
                deadline,
            } => self.start_allocation(id, fleet, tag, deadline),
            Action::CancelAllocation { id } => {
                if let Some(task) = lock(&self.allocations).remove(&id) {
                    task.abort();
                }
            }
        }
    }

    fn open_upstream(self: &Arc<Self>, session: SessionId, backend: BackendAddr) {
        match connect_upstream(backend.0) {
            Ok(socket) => {
                let socket = Arc::new(socket);
                let driver = self.clone();
                let reader = tokio::spawn(driver.read_upstream(session, socket.clone()));
                lock(&self.upstreams).insert(
                    session,
                    Upstream {
                        socket,
                        reader: reader.abort_handle(),
                    },
                );
            }
            Err(e) => {
                tracing::error!(%session, %backend, "cannot open upstream socket: {e}");
                let mut host = RelayHost::lock(&self.host);
                host.relay_mut().close_session(Instant::now(), session);
                let mut actions = Vec::new();
                host.drain(&mut actions);
            }
        }
    }

    fn start_allocation(
        self: &Arc<Self>,
        id: porter_core::AllocationId,
        fleet: Arc<str>,
        tag: String,
        deadline: Instant,
    ) {
        let driver = self.clone();
        let allocator = self.allocator.clone();
        let task = tokio::spawn(async move {
            let result = match allocator {
                Some(a) => a.allocate(fleet, tag, deadline).await,
                None => Err("agones is not enabled in this relay's configuration".to_owned()),
            };
            let result = result
                .map(BackendAddr)
                .map_err(|reason| AllocationFailure { reason });
            let mut outs = Vec::new();
            {
                let mut host = RelayHost::lock(&driver.host);
                lock(&driver.allocations).remove(&id);
                host.complete_allocation(Instant::now(), id, result);
                let mut actions = Vec::new();
                host.drain(&mut actions);
                outs.extend(actions.into_iter().map(Out::Act));
            }
            driver.execute(&mut outs, &[]).await;
        });
        lock(&self.allocations).insert(id, task.abort_handle());
    }

    /// Wakes the timer task if the core's next deadline is earlier than the armed one.
    fn rearm(&self, host: &RelayHost) {
        let Some(next) = host.poll_timeout() else {
            return;
        };
        let mut armed = lock(&self.armed);
        if armed.is_none_or(|a| next < a) {
            *armed = Some(next);
            self.timer.notify_one();
        }
    }

    async fn run_timer(self: Arc<Self>) {
        loop {
            let next = RelayHost::lock(&self.host).poll_timeout();
            *lock(&self.armed) = next;
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                () = sleep => {}
                () = self.timer.notified() => continue,
            }
            let mut outs = Vec::new();
            {
                let mut host = RelayHost::lock(&self.host);
                host.handle_timeout(Instant::now());
                let mut actions = Vec::new();
                host.drain(&mut actions);
                outs.extend(actions.into_iter().map(Out::Act));
            }
            self.execute(&mut outs, &[]).await;
        }
    }
}

/// Finds the run of outputs from `i` (which `matches`) whose ranges are contiguous and
/// `seg` bytes long, the last one possibly shorter, up to `max` segments: what one GSO
/// send can carry. Returns the run's end offset in the data and the index after it.
fn run(
    outs: &[Out],
    i: usize,
    seg: usize,
    max: usize,
    matches: impl Fn(&Out) -> Option<Range<usize>>,
) -> (usize, usize) {
    let first = matches(&outs[i]).unwrap_or(0..0);
    let (mut end, mut full) = (first.end, first.len() == seg);
    let mut j = i + 1;
    while full && j < outs.len() && j - i < max {
        match matches(&outs[j]) {
            Some(r) if r.start == end && r.len() <= seg => {
                full = r.len() == seg;
                end = r.end;
                j += 1;
            }
            _ => break,
        }
    }
    (end, j)
}

fn bind_udp(addr: SocketAddr, v6_only: bool) -> io::Result<StdUdpSocket> {
    use socket2::{Domain, Protocol, Socket as RawSocket, Type};
    let socket = RawSocket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn connect_upstream(backend: SocketAddr) -> io::Result<Socket> {
    let local: SocketAddr = if backend.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let std = StdUdpSocket::bind(local)?;
    std.connect(backend)?;
    Socket::new(std)
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
