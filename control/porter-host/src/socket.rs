//! UDP sockets with quinn-udp's batched I/O, on any runtime; binding listeners and
//! upstream sockets.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};

use porter_core::PathId;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use crate::{AsyncUdp, Runtime};

/// A UDP socket with quinn-udp's batched I/O state: receives many datagrams per call
/// (and GRO-coalesced runs), sends runs of equal-sized datagrams as one GSO send.
#[derive(Debug)]
pub struct Socket<U> {
    io: U,
    state: UdpSocketState,
    /// The bound address and the connected peer, read once: the send path needs them
    /// for every datagram, and asking the OS costs a system call each time.
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    /// Whether an error was already reported (upstream sockets only).
    reported: AtomicBool,
    /// The kernel receive buffer in effect, in bytes (listeners only; 0 otherwise).
    receive_buffer: usize,
}

impl<U: AsyncUdp> Socket<U> {
    /// Wraps a bound std socket, registering it with `rt`.
    pub fn new<R: Runtime<Udp = U>>(rt: &R, std: StdUdpSocket) -> io::Result<Self> {
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std).into())?;
        let (local, peer) = (std.local_addr().ok(), std.peer_addr().ok());
        Ok(Self {
            io: rt.register(std)?,
            state,
            local,
            peer,
            reported: AtomicBool::new(false),
            receive_buffer: 0,
        })
    }

    /// The runtime's socket (for system calls quinn-udp does not make).
    pub(crate) fn io(&self) -> &U {
        &self.io
    }

    /// The kernel receive buffer in effect, in bytes, for a listener (0 for others).
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffer
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.local.map_or_else(|| self.io.local_addr(), Ok)
    }

    /// The connected peer (upstream sockets).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.peer.map_or_else(|| self.io.peer_addr(), Ok)
    }

    /// Receives a batch: fills `bufs` and `metas`, returns how many slots were used.
    pub async fn recv(&self, bufs: &mut [Vec<u8>], metas: &mut [RecvMeta]) -> io::Result<usize> {
        self.io
            .read_with(|sock| {
                let mut iovs: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                self.state.recv((&sock).into(), &mut iovs, metas)
            })
            .await
    }

    /// As [`Self::recv`], with receive slots taken from `pool` only once the socket is
    /// readable (and put back when the receive would block), so that an idle socket
    /// holds no buffer. Returns the slots with the batch; give them back to `pool`.
    pub(crate) async fn recv_pooled(
        &self,
        pool: &SlotPool,
        metas: &mut [RecvMeta],
    ) -> (io::Result<usize>, Vec<Vec<u8>>) {
        let mut taken: Option<Vec<Vec<u8>>> = None;
        let result = self
            .io
            .read_with(|sock| {
                let bufs = taken.get_or_insert_with(|| pool.take());
                let mut iovs: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                let result = self.state.recv((&sock).into(), &mut iovs, metas);
                if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                    if let Some(bufs) = taken.take() {
                        pool.put(bufs);
                    }
                }
                result
            })
            .await;
        (result, taken.unwrap_or_default())
    }

    /// Sends `contents` to `to`; with `segment`, as GSO segments of that size.
    pub async fn send(
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
        self.io
            .write_with(|sock| self.state.try_send((&sock).into(), &transmit))
            .await
    }

    /// How many segments one GSO send may carry (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Logs, once per socket, that the path's backend does not answer (ICMP port
    /// unreachable surfaces as an error on a connected socket's next send or receive).
    pub(crate) fn report_unreachable(&self, path: PathId, e: &io::Error) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            let backend = self
                .io
                .peer_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            tracing::warn!(%path, %backend, "backend unreachable: {e}");
        }
    }
}

/// Receive slots shared by many sockets' readers: a reader holds a set only from the
/// moment its socket is readable until the batch is forwarded, so memory follows the
/// number of sockets busy at once, not the number open.
#[derive(Debug)]
pub(crate) struct SlotPool {
    free: std::sync::Mutex<Vec<Vec<Vec<u8>>>>,
    slots: usize,
    slot_len: usize,
    keep: usize,
}

impl SlotPool {
    /// Sets of `slots` slots of `slot_len` bytes; at most `keep` idle sets are kept.
    pub(crate) fn new(slots: usize, slot_len: usize, keep: usize) -> Self {
        Self {
            free: std::sync::Mutex::new(Vec::new()),
            slots,
            slot_len,
            keep,
        }
    }

    /// An idle set, or a new one.
    pub(crate) fn take(&self) -> Vec<Vec<u8>> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| (0..self.slots).map(|_| vec![0u8; self.slot_len]).collect())
    }

    /// Gives a set back (dropped if enough are idle, or if it is not a full set).
    pub(crate) fn put(&self, set: Vec<Vec<u8>>) {
        if set.len() != self.slots {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(set);
        }
    }
}

/// A listener could not be bound or set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The OS refused the bind.
    #[error("cannot bind UDP {addr}: {source}{hint}", hint = bind_hint(source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The bound socket could not be prepared for batched I/O or registered.
    #[error("UDP {addr}: {source}")]
    Setup {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: io::Error,
    },
}

fn bind_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::AddrInUse {
        " (another process is using this port; choose another udp.port or stop it)"
    } else {
        ""
    }
}

/// Binds a UDP listener. An IPv6 socket is IPv6-only when `v6_only` (an IPv4 listener
/// serves IPv4 beside it); otherwise a wildcard IPv6 bind also takes IPv4 clients, as
/// IPv4-mapped addresses. Its kernel receive buffer is set to `receive_buffer` bytes
/// where the process may (0: the kernel's default); see [`Socket::receive_buffer`].
pub fn bind_listener<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    v6_only: bool,
    receive_buffer: usize,
    shared_port: bool,
) -> Result<Socket<R::Udp>, BindError> {
    let std =
        bind_udp(addr, v6_only, shared_port).map_err(|source| BindError::Bind { addr, source })?;
    let setup = |source| BindError::Setup { addr, source };
    let effective = size_receive_buffer(&std, receive_buffer).map_err(setup)?;
    let mut socket = Socket::new(rt, std).map_err(setup)?;
    socket.receive_buffer = effective;
    Ok(socket)
}

/// Asks for a receive buffer of `want` bytes and returns the size in effect.
///
/// `SO_RCVBUFFORCE` (with `CAP_NET_ADMIN`) goes past `net.core.rmem_max`; without the
/// capability it fails and plain `SO_RCVBUF` gets what the sysctl allows. Linux doubles
/// the value asked for (room for its bookkeeping) and reports the doubled size.
fn size_receive_buffer(socket: &StdUdpSocket, want: usize) -> io::Result<usize> {
    use rustix::net::sockopt;
    if want > 0 && sockopt::set_socket_recv_buffer_size_force(socket, want).is_err() {
        sockopt::set_socket_recv_buffer_size(socket, want)?;
    }
    Ok(sockopt::socket_recv_buffer_size(socket)?)
}

pub(crate) fn bind_udp(
    addr: SocketAddr,
    v6_only: bool,
    shared_port: bool,
) -> io::Result<StdUdpSocket> {
    use socket2::{Domain, Protocol, Socket as RawSocket, Type};
    let socket = RawSocket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only)?;
    }
    if shared_port {
        // Every shard binds the same address; the kernel hashes each datagram's 4-tuple
        // to one of them. Only sockets of this process's user can join the group.
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A session's upstream socket: an ephemeral port connected to `backend`.
pub(crate) fn connect_upstream<R: Runtime>(
    rt: &R,
    backend: SocketAddr,
) -> io::Result<Socket<R::Udp>> {
    let local: SocketAddr = if backend.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    keep_udp_gro_key();
    let std = StdUdpSocket::bind(local)?;
    std.connect(backend)?;
    Socket::new(rt, std)
}

/// A transparent upstream socket (`udp.transparent`): bound to the client's own address
/// and port with IP_TRANSPARENT (IPV6_TRANSPARENT), then connected to `backend`, so the
/// backend sees the client's address. Its replies reach this socket only if the host
/// routes them here (docs/configuration.md, "Transparent mode").
///
/// Fails (the path fails; never a panic) when the client and the backend are of different
/// families, or when the bind is refused: EADDRINUSE when another session from the same
/// client address and port is open (no SO_REUSEADDR: a second socket with the same
/// 4-tuple could not be told apart by the kernel).
pub(crate) fn connect_upstream_transparent<R: Runtime>(
    rt: &R,
    client: SocketAddr,
    backend: SocketAddr,
) -> io::Result<Socket<R::Udp>> {
    keep_udp_gro_key();
    Socket::new(rt, bind_transparent(client, backend)?)
}

/// The socket of [`connect_upstream_transparent`], bound and connected.
fn bind_transparent(client: SocketAddr, backend: SocketAddr) -> io::Result<StdUdpSocket> {
    let client = canonical(client);
    let backend = canonical(backend);
    if client.is_ipv4() != backend.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("transparent mode: client {client} and backend {backend} are of different IP families"),
        ));
    }
    let socket = transparent_socket(client)?;
    socket.bind(&client.into()).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            " (another session from this client address and port is open)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("transparent bind to {client}: {e}{hint}"))
    })?;
    socket.connect(&backend.into())?;
    Ok(socket.into())
}

/// A UDP socket of `addr`'s family with IP_TRANSPARENT (IPV6_TRANSPARENT) set.
fn transparent_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Type};
    let socket = socket2::Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    set_transparent(&socket, addr.is_ipv6())?;
    Ok(socket)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_transparent(socket: &socket2::Socket, v6: bool) -> io::Result<()> {
    if v6 {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)
    } else {
        socket.set_ip_transparent_v4(true)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_transparent(_: &socket2::Socket, _: bool) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "IP_TRANSPARENT is Linux only",
    ))
}

/// Checks at start that transparent upstream sockets can be made: IP_TRANSPARENT needs
/// CAP_NET_ADMIN (or CAP_NET_RAW), and without it every session would fail one by one.
/// IPv6 is checked only where the host has it.
pub(crate) fn probe_transparent() -> io::Result<()> {
    transparent_socket((Ipv4Addr::UNSPECIFIED, 0).into())
        .map_err(|e| io::Error::new(e.kind(), format!("IP_TRANSPARENT: {e}")))?;
    let v6_available = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .is_ok();
    if v6_available {
        transparent_socket((Ipv6Addr::UNSPECIFIED, 0).into())
            .map_err(|e| io::Error::new(e.kind(), format!("IPV6_TRANSPARENT: {e}")))?;
    }
    Ok(())
}

/// Keeps one IPv6 UDP socket with UDP_GRO on for the life of the process.
///
/// quinn-udp's `UdpSocketState::new` probes GRO support by enabling UDP_GRO on a
/// throw-away IPv6 socket. On Linux, the first IPv6 socket with UDP_GRO flips a static
/// key (kernel code patching, with an IPI to every CPU), and closing the last one flips
/// it back: twice per upstream socket, which cost about a third of the relay's CPU time
/// in a connection-setup benchmark (`scripts/bench`, found with `perf`). While this
/// socket holds the key on, the probes only count up and down. It is never bound.
fn keep_udp_gro_key() {
    static HOLDER: std::sync::OnceLock<Option<socket2::Socket>> = std::sync::OnceLock::new();
    HOLDER.get_or_init(|| {
        use socket2::{Domain, Protocol, Type};
        let socket = socket2::Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).ok()?;
        // Sets UDP_GRO on it (among other options); the state itself is not needed.
        UdpSocketState::new((&socket).into()).ok()?;
        Some(socket)
    });
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_unmaps_ipv4_mapped_addresses() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:443".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.1:443".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn a_transparent_path_across_ip_families_fails_before_any_socket() {
        let v4: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::5]:4433".parse().unwrap();
        for client in [v4, mapped] {
            let e = bind_transparent(client, v6).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains("different IP families"), "{e}");
        }
        let e = bind_transparent(v6, v4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    #[test]
    fn bind_error_names_the_address_and_hints_at_a_port_in_use() {
        let e = BindError::Bind {
            addr: "127.0.0.1:7000".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("cannot bind UDP 127.0.0.1:7000: "),
            "{text}"
        );
        assert!(
            text.contains("another process is using this port"),
            "{text}"
        );
    }
}
