//! Porter's load generator: QUIC-shaped UDP load through a relay (or straight to the
//! backend), and real QUIC (quinn) transfers, measured as `scripts/bench` reports them;
//! and the side-by-side comparison of relay binaries (memory per session, forwarding
//! rate) that BENCHMARKS.md reports for porter and porter-smol.
//!
//! ```text
//! porter-loadgen sink --listen 127.0.0.1:9000                 # a backend
//! porter-loadgen send --target 127.0.0.1:4433 --sink 127.0.0.1:9000 --flows 64 --size 1200
//! porter-loadgen quic --via 127.0.0.1:4433 --server 127.0.0.1:9001
//! porter-loadgen report --results results.jsonl               # markdown tables
//! porter-loadgen compare --sessions 10000 target/release/porter target/release/porter-smol
//! ```
//!
//! Every client Initial, ClientHello and server first flight comes from porter-sim's
//! builders, every random choice from its seeded [`SimRng`].
//!
//! `send` opens `--flows` client sockets. Each flow starts like a QUIC client: a
//! 1200-byte client Initial (a TLS ClientHello with server_name, ALPN and QUIC transport
//! parameters in a CRYPTO frame, protected with the Initial keys of a random Destination
//! CID, RFC 9001 §5.2), retransmitted until the backend's server Initial comes back. The
//! server Initial's Source CID is what the flow then puts in its short headers
//! (`0x40 | ..`, DCID, payload), as a real client uses the server's CID; a relay learns
//! that CID from the same server Initial. Then two measured phases run on the same flows:
//!
//! - `max`: every flow sends GSO bursts of `--burst` datagrams of `--size` bytes as fast
//!   as the generator can (`--max-rate` caps it), no echo. The sink counts what arrives:
//!   forwarded datagrams/s, Gbit/s, loss.
//! - `max1`: the same with one datagram per send (no GSO), when `--burst` is above 1.
//! - `rtt`: every flow sends single datagrams at `--rtt-rate` datagrams/s in total (paced
//!   with tokio's 1 ms timer), each asking the sink to echo it; the generator takes each
//!   echo's round-trip time from the timestamp it carries (p50/p99/p999).
//! - `fanout` (with `--fanout-seconds`): the flows send nothing; the sink sends one
//!   datagram of `--size` bytes to every flow in turn, round after round, as fast as it
//!   can (a game server's tick to all its players), and the flows count what arrives:
//!   each of those reaches the relay on another upstream socket and is owed to another
//!   client, the case batched sends across clients are for.
//!
//! With `--relay-pid`, the relay's CPU time (utime+stime from `/proc/PID/stat`, the PID
//! and its child processes: nginx's workers) is read right before and right after each
//! phase and divided by the datagrams it forwarded (both directions in `rtt`).
//!
//! `sink` answers each client Initial with a server Initial carrying its own 8-byte
//! Source CID (derived from the client's DCID, so a retransmission gets the same one),
//! counts short-header datagrams, echoes those that ask for it (a GRO run goes back as
//! one GSO send), and answers a stats query datagram sent to it directly.
//!
//! All I/O is batched with quinn-udp (GSO sends, GRO and `recvmmsg` receives) on
//! non-blocking sockets driven by a current-thread tokio runtime per thread. Every loop is
//! bounded in time.

mod compare;

use std::cell::{Cell, RefCell};
use std::io::{self, IoSliceMut, Write as _};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use porter_core::initial::{Keys, Side};
use porter_core::wire::{parse_packet, LongType, Packet, Version};
use porter_sim::{
    client_initial_flight, server_first_flight, ClientHelloSpec, InitialFlightSpec, SimRng,
};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use serde_json::{json, Value};
use tokio::io::Interest;
use tokio::net::UdpSocket;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Length of the sink's connection IDs (what flows put in their short headers).
const SINK_CID_LEN: usize = 8;
/// Smallest datagram: first byte, DCID, echo flag, flow, sequence, timestamp.
const HEADER_LEN: usize = 1 + SINK_CID_LEN + 1 + 4 + 8 + 8;
/// The query a sink answers with its counters (first byte 0: not a QUIC packet).
const STATS_QUERY: &[u8] = b"\0loadgen-stats?";

/// Asks the sink for a `fanout` phase: followed by its length in milliseconds (u32) and
/// the datagram size (u16), big-endian.
const FANOUT_QUERY: &[u8] = b"\0loadgen-fanout";
/// Receive buffer per batch slot: room for a GRO run.
const SLOT_LEN: usize = 64 * 1024;
/// How long after the end of a phase echoes and forwarded datagrams are still counted.
const DRAIN: Duration = Duration::from_millis(400);
/// Handshakes in flight per generator thread.
const HANDSHAKE_WINDOW: usize = 256;
/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

#[derive(Parser)]
#[command(about = "Porter's load generator (see the module docs and scripts/bench)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A backend: answers Initials with its own CID, counts, echoes on request.
    Sink(SinkArgs),
    /// Opens flows through `--target` and measures the `max` and `rtt` phases.
    Send(SendArgs),
    /// Real QUIC through `--via`: one bulk stream, then sequential short connections.
    Quic(QuicArgs),
    /// Prints the markdown tables for a results file.
    Report(ReportArgs),
    /// Prints `n` currently free UDP ports on 127.0.0.1.
    Ports {
        /// How many.
        n: usize,
    },
    /// Checks that the generated Initial parses with porter-core and the sink's answer.
    Selftest,
    /// Runs relay binaries side by side: idle RSS, RSS with many sessions, forwarding rate.
    Compare(compare::CompareArgs),
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
}

#[derive(Args, Clone)]
struct SendArgs {
    /// Where flows send: the relay's listener, or the sink itself (direct).
    #[arg(long)]
    target: SocketAddr,
    /// The sink's own address, for its counters.
    #[arg(long)]
    sink: SocketAddr,
    /// Server name in the ClientHello.
    #[arg(long, default_value = "bench.test")]
    sni: String,
    /// Number of flows (client sockets, one QUIC connection each).
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Datagram size in bytes.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Datagrams per send (GSO segments) in the `max` phase.
    #[arg(long, default_value_t = 8)]
    burst: usize,
    /// Length of the `max` phase (0 skips it).
    #[arg(long, default_value_t = 3.0)]
    max_seconds: f64,
    /// Cap on the `max` phase's total rate in datagrams/s (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    max_rate: u64,
    /// Length of the `rtt` phase (0 skips it).
    #[arg(long, default_value_t = 3.0)]
    rtt_seconds: f64,
    /// Total rate of the `rtt` phase in datagrams/s.
    #[arg(long, default_value_t = 20_000)]
    rtt_rate: u64,
    /// Length of the `fanout` phase (0 skips it).
    #[arg(long, default_value_t = 0.0)]
    fanout_seconds: f64,
    /// Generator threads (flows are spread over them).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Give up on handshakes after this long.
    #[arg(long, default_value_t = 20.0)]
    setup_seconds: f64,
    /// The relay's PID, for its CPU time (with its child processes).
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Mode name written into the results ("direct", "porter", "nginx", ...).
    #[arg(long, default_value = "direct")]
    mode: String,
    /// Append one JSON line per phase to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct QuicArgs {
    /// Where the client connects: the relay, or `--server` itself (direct).
    #[arg(long)]
    via: SocketAddr,
    /// Where the in-process quinn server listens (the route's target).
    #[arg(long)]
    server: SocketAddr,
    /// Server name.
    #[arg(long, default_value = "bench.test")]
    sni: String,
    /// Bytes of the bulk stream.
    #[arg(long, default_value_t = 200_000_000)]
    bulk_bytes: u64,
    /// Flow-control windows (stream and connection) in bytes; 0 keeps quinn's defaults.
    #[arg(long, default_value_t = 0)]
    window: u32,
    /// Bulk transfers, one after the other on new connections (the median is reported).
    #[arg(long, default_value_t = 3)]
    bulk_runs: usize,
    /// Sequential connections (handshake, tiny request, reply, close).
    #[arg(long, default_value_t = 500)]
    handshakes: usize,
    /// Give up after this long in all.
    #[arg(long, default_value_t = 90)]
    max_seconds: u64,
    /// The relay's PID, for its CPU time.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Mode name written into the results.
    #[arg(long, default_value = "direct")]
    mode: String,
    /// Append JSON lines to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// The JSON lines written by `send` and `quic`.
    #[arg(long)]
    results: std::path::PathBuf,
}

fn main() -> Result<(), Error> {
    match Cli::parse().command {
        Command::Sink(args) => sink(&args),
        Command::Send(args) => send(&args),
        Command::Quic(args) => quic(&args),
        Command::Report(args) => report(&args),
        Command::Ports { n } => {
            let sockets: Vec<StdUdpSocket> = (0..n)
                .map(|_| StdUdpSocket::bind("127.0.0.1:0"))
                .collect::<io::Result<_>>()?;
            for s in &sockets {
                println!("{}", s.local_addr()?.port());
            }
            Ok(())
        }
        Command::Selftest => selftest(),
        Command::Compare(args) => Ok(compare::compare(&args)?),
    }
}

// ----- packets -----

/// A generator seeded from the clock and `salt`: flows need unpredictable-looking CIDs,
/// not security.
fn clock_seeded_rng(salt: u64) -> SimRng {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    SimRng::new(nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A client's first Initial datagram (1200 bytes, RFC 9000 §14.1): a ClientHello for
/// `sni` offering ALPN h3, protected with the Initial keys of `odcid`.
fn client_initial(sni: &str, odcid: &[u8], scid: &[u8], rng: &mut SimRng) -> Vec<u8> {
    let hello = ClientHelloSpec {
        sni: Some(sni.to_owned()),
        alpn: vec![b"h3".to_vec()],
        initial_scid: scid.to_vec(),
        post_quantum: false,
    }
    .build(rng);
    let mut flight = client_initial_flight(
        &InitialFlightSpec {
            version: Version::V1,
            dcid: odcid,
            scid,
            token: &[],
            first_packet_number: 0,
            datagram_size: 1200,
            chaos: false,
        },
        &hello,
    );
    debug_assert_eq!(
        flight.len(),
        1,
        "a ClientHello without post-quantum share fits"
    );
    flight.swap_remove(0)
}

/// The server's CID for a connection: derived from the client's original DCID and the
/// sink's port, so a retransmitted Initial gets the same answer.
fn sink_cid(odcid: &[u8], port: u16) -> [u8; SINK_CID_LEN] {
    // FNV-1a, then a multiply to spread the bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in odcid.iter().chain(&port.to_be_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h.to_be_bytes()
}

/// The server's first flight answering a client Initial (an Initial with an ACK and a
/// CRYPTO frame standing in for the ServerHello, then a Handshake packet, at least 1200
/// bytes): DCID = the client's SCID, SCID = ours. Its random bytes derive from our CID,
/// so a retransmitted Initial gets the same answer.
fn server_initial(odcid: &[u8], client_scid: &[u8], our_cid: &[u8; SINK_CID_LEN]) -> Vec<u8> {
    let mut rng = SimRng::new(u64::from_be_bytes(*our_cid));
    server_first_flight(Version::V1, odcid, client_scid, our_cid, 0, 1200, &mut rng)
}

fn nanos_since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Writes the header of one short-header datagram.
fn write_datagram(seg: &mut [u8], dcid: &[u8; SINK_CID_LEN], echo: bool, flow: u32, seq: u64) {
    seg[0] = 0x40 | (seq as u8 & 0x03);
    seg[1..9].copy_from_slice(dcid);
    seg[9] = u8::from(echo);
    seg[10..14].copy_from_slice(&flow.to_be_bytes());
    seg[14..22].copy_from_slice(&seq.to_be_bytes());
    seg[22..30].copy_from_slice(&nanos_since_start().to_be_bytes());
}

// ----- sockets -----

/// A non-blocking UDP socket with quinn-udp's batched I/O state.
struct Sock {
    io: UdpSocket,
    state: UdpSocketState,
}

impl Sock {
    fn bind(addr: SocketAddr, buffers: usize) -> io::Result<Self> {
        let std = StdUdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std).into())?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = state.set_recv_buffer_size((&std).into(), buffers);
        let _ = state.set_send_buffer_size((&std).into(), buffers);
        Ok(Self {
            io: UdpSocket::from_std(std)?,
            state,
        })
    }

    /// Sends `contents` (GSO segments of `segment` bytes when given), waiting while the
    /// socket buffer is full.
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
            match self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.io).into(), &transmit)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
    }

    /// Receives a batch into `scratch`; returns the number of slots filled.
    async fn recv(&self, scratch: &RefCell<Scratch>) -> io::Result<usize> {
        loop {
            self.io.readable().await?;
            let mut guard = scratch.borrow_mut();
            let Scratch { bufs, metas } = &mut *guard;
            match self.io.try_io(Interest::READABLE, || {
                let mut iovs: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                self.state.recv((&self.io).into(), &mut iovs, metas)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
    }
}

/// Receive buffers shared by the tasks of one thread (they never hold them across an
/// await).
struct Scratch {
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
}

impl Scratch {
    fn new() -> RefCell<Self> {
        RefCell::new(Self {
            bufs: vec![vec![0; SLOT_LEN]; BATCH_SIZE],
            metas: vec![RecvMeta::default(); BATCH_SIZE],
        })
    }
}

fn current_thread_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

// ----- sink -----

#[derive(Default)]
struct SinkCounters {
    datagrams: Cell<u64>,
    bytes: Cell<u64>,
    initials: Cell<u64>,
    echoed: Cell<u64>,
    echo_errors: Cell<u64>,
    sources: RefCell<std::collections::HashSet<SocketAddr>>,
    /// Datagrams sent in `fanout` phases.
    fanout_sent: Cell<u64>,
    /// A `fanout` phase asked for and not yet run: its length and datagram size.
    fanout: Cell<Option<(Duration, usize)>>,
}

fn sink(args: &SinkArgs) -> Result<(), Error> {
    let rt = current_thread_runtime()?;
    let local = tokio::task::LocalSet::new();
    let socket = local.block_on(&rt, async { Sock::bind(args.listen, 4 << 20) })?;
    eprintln!("loadgen sink listening on {}", args.listen);
    let limit = Duration::from_secs(args.max_seconds);
    local.block_on(&rt, async move {
        // Exits after `limit` whatever happens: the harness stops it earlier.
        let _ = tokio::time::timeout(limit, sink_loop(socket, args.listen.port())).await;
    });
    Ok(())
}

async fn sink_loop(sock: Sock, port: u16) {
    let scratch = Scratch::new();
    let counters = SinkCounters::default();
    let mut replies: Vec<(SocketAddr, Vec<u8>, Option<usize>)> = Vec::new();
    loop {
        // Errors are ICMP reports about earlier sends.
        let Ok(n) = sock.recv(&scratch).await else {
            continue;
        };
        {
            let s = scratch.borrow();
            for (meta, buf) in s.metas[..n].iter().zip(&s.bufs) {
                let data = &buf[..meta.len];
                let stride = meta.stride.max(1);
                sink_slot(&counters, port, meta.addr, data, stride, &mut replies);
            }
        }
        for (to, bytes, segment) in replies.drain(..) {
            match sock.send(to, &bytes, segment).await {
                Ok(()) => {}
                Err(_) => counters.echo_errors.set(counters.echo_errors.get() + 1),
            }
        }
        if let Some((length, size)) = counters.fanout.take() {
            fanout(&sock, &counters, length, size).await;
        }
    }
}

/// Sends one `size`-byte datagram to every source in turn until `length` has passed.
async fn fanout(sock: &Sock, c: &SinkCounters, length: Duration, size: usize) {
    let to: Vec<SocketAddr> = c.sources.borrow().iter().copied().collect();
    let end = Instant::now() + length;
    let mut datagram = vec![0x5au8; size.clamp(HEADER_LEN, 1472)];
    datagram[0] = 0x40;
    while Instant::now() < end && !to.is_empty() {
        for addr in &to {
            match sock.send(*addr, &datagram, None).await {
                Ok(()) => c.fanout_sent.set(c.fanout_sent.get() + 1),
                Err(_) => c.echo_errors.set(c.echo_errors.get() + 1),
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Handles one received slot (a datagram or a GRO run of `stride`-sized ones).
fn sink_slot(
    c: &SinkCounters,
    port: u16,
    from: SocketAddr,
    data: &[u8],
    stride: usize,
    replies: &mut Vec<(SocketAddr, Vec<u8>, Option<usize>)>,
) {
    let Some(&first) = data.first() else { return };
    if data == STATS_QUERY {
        let text = format!(
            "{} {} {} {} {} {} {}",
            c.datagrams.get(),
            c.bytes.get(),
            c.initials.get(),
            c.echoed.get(),
            c.echo_errors.get(),
            c.sources.borrow().len(),
            c.fanout_sent.get()
        );
        replies.push((from, text.into_bytes(), None));
        return;
    }
    if let Some(args) = data.strip_prefix(FANOUT_QUERY) {
        if let (Some(ms), Some(size)) = (args.get(..4), args.get(4..6)) {
            let ms = u32::from_be_bytes(ms.try_into().expect("4 bytes"));
            let size = u16::from_be_bytes(size.try_into().expect("2 bytes"));
            c.fanout.set(Some((
                Duration::from_millis(u64::from(ms)),
                usize::from(size),
            )));
        }
        return;
    }
    if first & 0x80 != 0 {
        // A client Initial: answer with our CID (every segment, should GRO merge two).
        for d in data.chunks(stride) {
            if let Ok((Packet::Long(p), _)) = parse_packet(d) {
                if p.ty == LongType::Initial {
                    c.initials.set(c.initials.get() + 1);
                    let cid = sink_cid(p.dcid, port);
                    replies.push((from, server_initial(p.dcid, p.scid, &cid), None));
                }
            }
        }
        return;
    }
    let segments = data.len().div_ceil(stride) as u64;
    c.datagrams.set(c.datagrams.get() + segments);
    c.bytes.set(c.bytes.get() + data.len() as u64);
    c.sources.borrow_mut().insert(from);
    if data.len() >= HEADER_LEN && data[9] == 1 {
        c.echoed.set(c.echoed.get() + segments);
        let segment = (data.len() > stride).then_some(stride);
        replies.push((from, data.to_vec(), segment));
    }
}

/// The sink's counters: datagrams, bytes, initials, echoed, echo errors, sources,
/// datagrams sent in `fanout` phases.
fn sink_stats(sink: SocketAddr) -> Result<[u64; 7], Error> {
    let sock = StdUdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 256];
    for _ in 0..6 {
        sock.send_to(STATS_QUERY, sink)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = std::str::from_utf8(&buf[..n])?;
            let v: Vec<u64> = text
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            if let Ok(a) = <[u64; 7]>::try_from(v) {
                return Ok(a);
            }
        }
    }
    Err(format!("the sink at {sink} does not answer its stats query").into())
}

// ----- relay CPU -----

/// utime+stime of `pid` and its direct children (nginx's workers), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let read = |path: &str| -> Option<(u32, u64)> {
        let stat = std::fs::read_to_string(path).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ppid = f.get(1)?.parse().ok()?;
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some((ppid, utime + stime))
    };
    let mut total = read(&format!("/proc/{pid}/stat")).map_or(0, |(_, t)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, t)) = read(&format!("/proc/{child}/stat")) {
                if ppid == pid {
                    total += t;
                }
            }
        }
    }
    total
}

// ----- generator -----

struct Flow {
    index: u32,
    sock: Sock,
    /// The server's CID, once its Initial came back.
    dcid: Cell<Option<[u8; SINK_CID_LEN]>>,
}

/// What every thread needs to know about a phase.
#[derive(Clone, Copy)]
struct Phase {
    start: Instant,
    end: Instant,
    /// Datagrams per send.
    burst: usize,
    /// Total datagrams/s over all flows; 0 for as fast as possible.
    rate: u64,
    echo: bool,
    /// The flows only receive (the sink sends to all of them).
    fanout: bool,
}

/// A thread's counts for one phase.
#[derive(Default)]
struct PhaseCounts {
    sent: u64,
    send_errors: u64,
    echoes: u64,
    rtt: Histogram,
    /// Datagrams received in a `fanout` phase.
    received: u64,
}

struct Shared {
    barrier: Barrier,
    phase: Mutex<Option<Phase>>,
    counts: Mutex<PhaseCounts>,
    ready_flows: Mutex<usize>,
}

fn send(args: &SendArgs) -> Result<(), Error> {
    if args.size < HEADER_LEN || args.size > 1472 {
        return Err(format!("--size must be {HEADER_LEN} to 1472").into());
    }
    let threads = args.threads.clamp(1, args.flows.max(1));
    let shared = Arc::new(Shared {
        barrier: Barrier::new(threads + 1),
        phase: Mutex::new(None),
        counts: Mutex::new(PhaseCounts::default()),
        ready_flows: Mutex::new(0),
    });
    let mut phases = Vec::new();
    if args.max_seconds > 0.0 {
        phases.push((
            "max",
            args.max_seconds,
            args.burst.max(1),
            args.max_rate,
            false,
        ));
        if args.burst > 1 {
            // The same without GSO: one datagram per send, as a game client sends.
            phases.push(("max1", args.max_seconds, 1, args.max_rate, false));
        }
    }
    if args.rtt_seconds > 0.0 {
        phases.push(("rtt", args.rtt_seconds, 1, args.rtt_rate.max(1), true));
    }
    if args.fanout_seconds > 0.0 {
        phases.push(("fanout", args.fanout_seconds, 1, 0, false));
    }
    let mut handles = Vec::new();
    for t in 0..threads {
        let shared = shared.clone();
        let args = args.clone();
        let count = phases.len();
        let indices: Vec<u32> = (t..args.flows).step_by(threads).map(|i| i as u32).collect();
        handles.push(std::thread::spawn(move || {
            if let Err(e) = generator_thread(&args, t, &indices, &shared, count) {
                eprintln!("loadgen: generator thread {t}: {e}");
                std::process::exit(1);
            }
        }));
    }
    shared.barrier.wait(); // handshakes done
    let ready = *lock(&shared.ready_flows);
    eprintln!("loadgen: {ready}/{} flows set up", args.flows);
    if ready == 0 {
        return Err("no flow got an answer to its Initial".into());
    }
    for (kind, seconds, burst, rate, echo) in phases {
        let before = sink_stats(args.sink)?;
        let cpu_before = args.relay_pid.map(cpu_ticks);
        let start = Instant::now() + Duration::from_millis(20);
        let end = start + Duration::from_secs_f64(seconds);
        let fanout = kind == "fanout";
        *lock(&shared.phase) = Some(Phase {
            start,
            end,
            burst,
            rate,
            echo,
            fanout,
        });
        shared.barrier.wait(); // go
        if fanout {
            let mut query = FANOUT_QUERY.to_vec();
            let ms = u32::try_from((end - Instant::now()).as_millis()).unwrap_or(u32::MAX);
            query.extend_from_slice(&ms.to_be_bytes());
            query.extend_from_slice(&(args.size as u16).to_be_bytes());
            StdUdpSocket::bind("127.0.0.1:0")?.send_to(&query, args.sink)?;
        }
        shared.barrier.wait(); // sent and drained
        let cpu_after = args.relay_pid.map(cpu_ticks);
        let after = sink_stats(args.sink)?;
        let counts = std::mem::take(&mut *lock(&shared.counts));
        let line = phase_result(
            args,
            kind,
            seconds,
            burst,
            rate,
            ready,
            &counts,
            before,
            after,
            cpu_before.zip(cpu_after),
        );
        emit(args.out.as_deref(), &line)?;
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn phase_result(
    args: &SendArgs,
    kind: &str,
    seconds: f64,
    burst: usize,
    rate: u64,
    flows_ok: usize,
    counts: &PhaseCounts,
    before: [u64; 7],
    after: [u64; 7],
    cpu: Option<(u64, u64)>,
) -> Value {
    let fanout = kind == "fanout";
    // In `fanout` the sink sends and the flows count what the relay delivered.
    let (forwarded, bytes, sent) = if fanout {
        let sent = after[6] - before[6];
        (counts.received, counts.received * args.size as u64, sent)
    } else {
        (after[0] - before[0], after[1] - before[1], counts.sent)
    };
    let sent_nonzero = sent.max(1);
    let mut line = json!({
        "kind": kind,
        "mode": args.mode,
        "flows": args.flows,
        "flows_ok": flows_ok,
        "size": args.size,
        "burst": burst,
        "rate": rate,
        "seconds": seconds,
        "sent": sent,
        "send_errors": counts.send_errors,
        "forwarded": forwarded,
        "sources": after[5],
        "dps": forwarded as f64 / seconds,
        "gbps": bytes as f64 * 8.0 / seconds / 1e9,
        "loss": 1.0 - (forwarded as f64 / sent_nonzero as f64).min(1.0),
    });
    if kind == "rtt" {
        line["echoes"] = json!(counts.echoes);
        line["echo_loss"] = json!(1.0 - (counts.echoes as f64 / sent_nonzero as f64).min(1.0));
        for (key, q) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
            line[key] = json!(counts.rtt.quantile(q) as f64 / 1e3);
        }
    }
    if let Some((b, a)) = cpu {
        let cpu_s = (a - b) as f64 / USER_HZ;
        // In `rtt` the relay forwards each datagram twice: to the sink and back.
        let through = forwarded + if kind == "rtt" { counts.echoes } else { 0 };
        line["relay_cpu_s"] = json!(cpu_s);
        line["relay_util"] = json!(cpu_s / (seconds + DRAIN.as_secs_f64()));
        line["cpu_us_per_dgram"] = json!(cpu_s * 1e6 / through.max(1) as f64);
    }
    line
}

fn emit(out: Option<&std::path::Path>, line: &Value) -> Result<(), Error> {
    println!("{line}");
    if let Some(path) = out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn generator_thread(
    args: &SendArgs,
    thread: usize,
    indices: &[u32],
    shared: &Shared,
    phases: usize,
) -> Result<(), Error> {
    let rt = current_thread_runtime()?;
    let local = tokio::task::LocalSet::new();
    let flows: Vec<Rc<Flow>> = local.block_on(&rt, async {
        indices
            .iter()
            .map(|&index| {
                Ok(Rc::new(Flow {
                    index,
                    sock: Sock::bind("127.0.0.1:0".parse().expect("address"), 1 << 20)?,
                    dcid: Cell::new(None),
                }))
            })
            .collect::<io::Result<Vec<_>>>()
    })?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.setup_seconds);
    let ok = local.block_on(&rt, handshakes(&flows, args, thread, deadline));
    let flows: Vec<Rc<Flow>> = flows
        .into_iter()
        .filter(|f| f.dcid.get().is_some())
        .collect();
    *lock(&shared.ready_flows) += ok;
    shared.barrier.wait();
    for _ in 0..phases {
        shared.barrier.wait();
        let phase = lock(&shared.phase).expect("the phase is set before the barrier");
        let counts = local.block_on(&rt, run_phase(&flows, args, phase));
        {
            let mut total = lock(&shared.counts);
            total.sent += counts.sent;
            total.send_errors += counts.send_errors;
            total.echoes += counts.echoes;
            total.received += counts.received;
            total.rtt.merge(&counts.rtt);
        }
        shared.barrier.wait();
    }
    Ok(())
}

/// Opens every flow: Initial out, server Initial back, at most [`HANDSHAKE_WINDOW`] at
/// once, each retransmitted with backoff until `deadline`. Returns how many succeeded.
async fn handshakes(
    flows: &[Rc<Flow>],
    args: &SendArgs,
    thread: usize,
    deadline: Instant,
) -> usize {
    let window = Rc::new(tokio::sync::Semaphore::new(HANDSHAKE_WINDOW));
    let mut tasks = Vec::new();
    for flow in flows {
        let (flow, window, sni, target) =
            (flow.clone(), window.clone(), args.sni.clone(), args.target);
        let salt = (thread as u64) << 32 | u64::from(flow.index);
        tasks.push(tokio::task::spawn_local(async move {
            let Ok(_permit) = window.acquire().await else {
                return;
            };
            let mut rng = clock_seeded_rng(salt);
            let (mut odcid, mut scid) = ([0u8; 8], [0u8; 8]);
            rng.fill(&mut odcid);
            rng.fill(&mut scid);
            let initial = client_initial(&sni, &odcid, &scid, &mut rng);
            let mut buf = vec![0u8; 2048];
            let mut wait = Duration::from_millis(100);
            while Instant::now() < deadline {
                if flow.sock.send(target, &initial, None).await.is_err() {
                    tokio::time::sleep(wait).await;
                } else if let Ok(Some(cid)) =
                    tokio::time::timeout(wait, server_cid(&flow.sock, &scid, &mut buf)).await
                {
                    flow.dcid.set(Some(cid));
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    flows.iter().filter(|f| f.dcid.get().is_some()).count()
}

/// Waits for the server Initial addressed to `scid`; returns the server's CID.
async fn server_cid(sock: &Sock, scid: &[u8], buf: &mut [u8]) -> Option<[u8; SINK_CID_LEN]> {
    loop {
        let Ok((n, _)) = sock.io.recv_from(buf).await else {
            continue;
        };
        if let Ok((Packet::Long(p), _)) = parse_packet(&buf[..n]) {
            if p.ty == LongType::Initial && p.dcid == scid {
                if let Ok(cid) = <[u8; SINK_CID_LEN]>::try_from(p.scid) {
                    return Some(cid);
                }
            }
        }
    }
}

async fn run_phase(flows: &[Rc<Flow>], args: &SendArgs, phase: Phase) -> PhaseCounts {
    let counts = Rc::new(RefCell::new(PhaseCounts::default()));
    let scratch = Rc::new(Scratch::new());
    let total_flows = args.flows.max(1) as f64;
    let mut tasks = Vec::new();
    for (i, flow) in flows.iter().enumerate() {
        if phase.fanout {
            let (flow, counts, scratch) = (flow.clone(), counts.clone(), scratch.clone());
            tasks.push(tokio::task::spawn_local(async move {
                let until = (phase.end + DRAIN).into();
                let _ =
                    tokio::time::timeout_at(until, count_arrivals(&flow, &scratch, &counts)).await;
            }));
            continue;
        }
        if phase.echo {
            let (flow, counts, scratch) = (flow.clone(), counts.clone(), scratch.clone());
            tasks.push(tokio::task::spawn_local(async move {
                let until = (phase.end + DRAIN).into();
                let _ =
                    tokio::time::timeout_at(until, receive_echoes(&flow, &scratch, &counts)).await;
            }));
        }
        // Each flow's share of the rate, its sends spread over the interval.
        let interval = (phase.rate > 0)
            .then(|| Duration::from_secs_f64(phase.burst as f64 * total_flows / phase.rate as f64));
        let offset = interval.map_or(Duration::ZERO, |iv| {
            iv.mul_f64(i as f64 / flows.len() as f64)
        });
        let (flow, counts, target, size) = (flow.clone(), counts.clone(), args.target, args.size);
        tasks.push(tokio::task::spawn_local(async move {
            pump(
                &flow,
                target,
                size,
                phase,
                interval,
                phase.start + offset,
                &counts,
            )
            .await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let until = phase.end + DRAIN;
    tokio::time::sleep_until(until.into()).await;
    Rc::try_unwrap(counts).map_or_else(
        |rc| std::mem::take(&mut *rc.borrow_mut()),
        RefCell::into_inner,
    )
}

/// One flow's sender: bursts of `phase.burst` datagrams, one GSO send each, paced by
/// `interval` or as fast as the socket takes them.
async fn pump(
    flow: &Flow,
    target: SocketAddr,
    size: usize,
    phase: Phase,
    interval: Option<Duration>,
    first: Instant,
    counts: &RefCell<PhaseCounts>,
) {
    let Some(dcid) = flow.dcid.get() else { return };
    let mut buf = vec![0xa5u8; size * phase.burst];
    let segment = (phase.burst > 1).then_some(size);
    let mut seq = 0u64;
    let mut next = first;
    tokio::time::sleep_until(first.into()).await;
    loop {
        let now = Instant::now();
        if now >= phase.end {
            return;
        }
        if let Some(iv) = interval {
            if next > now {
                tokio::time::sleep_until(next.min(phase.end).into()).await;
                continue;
            }
            next += iv;
        }
        for seg in buf.chunks_mut(size) {
            write_datagram(seg, &dcid, phase.echo, flow.index, seq);
            seq += 1;
        }
        let result = flow.sock.send(target, &buf, segment).await;
        {
            let mut c = counts.borrow_mut();
            match result {
                Ok(()) => c.sent += phase.burst as u64,
                Err(_) => c.send_errors += 1,
            }
        }
        if interval.is_none() {
            tokio::task::yield_now().await;
        }
    }
}

/// Counts the short-header datagrams that reach `flow` (a `fanout` phase).
async fn count_arrivals(flow: &Flow, scratch: &RefCell<Scratch>, counts: &RefCell<PhaseCounts>) {
    loop {
        let Ok(n) = flow.sock.recv(scratch).await else {
            continue;
        };
        let s = scratch.borrow();
        let mut c = counts.borrow_mut();
        for (meta, buf) in s.metas[..n].iter().zip(&s.bufs) {
            for seg in buf[..meta.len].chunks(meta.stride.max(1)) {
                if seg.first().is_some_and(|b| b & 0x80 == 0) {
                    c.received += 1;
                }
            }
        }
    }
}

async fn receive_echoes(flow: &Flow, scratch: &RefCell<Scratch>, counts: &RefCell<PhaseCounts>) {
    loop {
        let Ok(n) = flow.sock.recv(scratch).await else {
            continue;
        };
        let now = nanos_since_start();
        let s = scratch.borrow();
        let mut c = counts.borrow_mut();
        for (meta, buf) in s.metas[..n].iter().zip(&s.bufs) {
            for seg in buf[..meta.len].chunks(meta.stride.max(1)) {
                if seg.len() >= HEADER_LEN && seg[0] & 0x80 == 0 {
                    let sent = u64::from_be_bytes(seg[22..30].try_into().expect("8 bytes"));
                    c.echoes += 1;
                    c.rtt.record(now.saturating_sub(sent));
                }
            }
        }
    }
}

/// A log-linear histogram of nanoseconds: 64 buckets per power of two (about 1.5%).
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; 64 * 60],
            total: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < 128 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize - 6;
        64 + e * 64 + ((v >> e) as usize - 64)
    }

    fn value(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let e = (i - 64) / 64;
        let m = ((i - 64) % 64 + 64) as u64;
        (m << e) + (1u64 << e) / 2
    }

    fn record(&mut self, v: u64) {
        let i = Self::index(v).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
    }

    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        Self::value(self.counts.len() - 1)
    }
}

// ----- real QUIC -----

fn quic(args: &QuicArgs) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let limit = Duration::from_secs(args.max_seconds);
    rt.block_on(async {
        tokio::time::timeout(limit, quic_run(args))
            .await
            .map_err(|_| -> Error { format!("quic: not done in {limit:?}").into() })?
    })
}

async fn quic_run(args: &QuicArgs) -> Result<(), Error> {
    let certified = rcgen::generate_simple_self_signed(vec![args.sni.clone()])?;
    let cert = rustls::pki_types::CertificateDer::from(certified.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    server_tls.alpn_protocols = vec![b"bench".to_vec()];
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?,
    ));
    server_config.transport_config(Arc::new(transport(args.window)));
    let server = quinn::Endpoint::server(server_config, args.server)?;
    tokio::spawn(quic_server(server.clone()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"bench".to_vec()];
    let mut client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?,
    ));
    client_config.transport_config(Arc::new(transport(args.window)));
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(client_config);

    // Bulk: one stream of `bulk_bytes` per connection, timed until the server's byte
    // count comes back; `--bulk-runs` connections one after the other, the median kept.
    let mut runs = Vec::new();
    let cpu_before = args.relay_pid.map(cpu_ticks);
    for _ in 0..args.bulk_runs.max(1) {
        runs.push(bulk_once(&client, args).await?);
    }
    let cpu_after = args.relay_pid.map(cpu_ticks);
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let seconds = sorted[sorted.len() / 2];
    let mut line = json!({
        "kind": "quic-bulk",
        "mode": args.mode,
        "bytes": args.bulk_bytes,
        "seconds": seconds,
        "runs_mbytes_per_s": runs.iter().map(|s| args.bulk_bytes as f64 / s / 1e6).collect::<Vec<_>>(),
        "mbytes_per_s": args.bulk_bytes as f64 / seconds / 1e6,
        "gbps": args.bulk_bytes as f64 * 8.0 / seconds / 1e9,
    });
    if let Some((b, a)) = cpu_before.zip(cpu_after) {
        line["relay_cpu_s"] = json!((a - b) as f64 / USER_HZ / runs.len() as f64);
    }
    emit(args.out.as_deref(), &line)?;

    // Connection setup: sequential connections, each with one tiny request and reply.
    let cpu_before = args.relay_pid.map(cpu_ticks);
    let started = Instant::now();
    let mut failed = 0usize;
    for _ in 0..args.handshakes {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let conn = client.connect(args.via, &args.sni)?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"ping").await?;
            send.finish()?;
            let reply = recv.read_to_end(64).await?;
            conn.close(0u32.into(), b"bye");
            Ok::<_, Error>(reply)
        })
        .await;
        if !matches!(attempt, Ok(Ok(ref r)) if r == b"pong") {
            failed += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = args.relay_pid.map(cpu_ticks);
    let mut line = json!({
        "kind": "quic-handshakes",
        "mode": args.mode,
        "connections": args.handshakes,
        "failed": failed,
        "seconds": seconds,
        "per_s": (args.handshakes - failed) as f64 / seconds,
    });
    if let Some((b, a)) = cpu_before.zip(cpu_after) {
        line["relay_cpu_s"] = json!((a - b) as f64 / USER_HZ);
    }
    emit(args.out.as_deref(), &line)?;
    client.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    Ok(())
}

/// quinn's defaults, with stream and connection flow-control windows of `window` bytes
/// when it is not 0 (quinn's default stream window, 1.25 MB, caps one stream at
/// 1.25 MB per round trip).
fn transport(window: u32) -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    if window > 0 {
        let w = quinn::VarInt::from_u32(window);
        config
            .stream_receive_window(w)
            .receive_window(w)
            .send_window(u64::from(window));
    }
    config
}

/// One bulk transfer on a new connection; returns its duration in seconds.
async fn bulk_once(client: &quinn::Endpoint, args: &QuicArgs) -> Result<f64, Error> {
    let conn = client.connect(args.via, &args.sni)?.await?;
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = args.bulk_bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        send.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    send.finish()?;
    let reply = recv.read_to_end(64).await?;
    let seconds = started.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(reply.as_slice().try_into().map_err(|_| "bad reply")?);
    if received != args.bulk_bytes {
        return Err(format!("server received {received} of {} bytes", args.bulk_bytes).into());
    }
    conn.close(0u32.into(), b"done");
    Ok(seconds)
}

/// Serves the bulk stream (replies with the byte count) and the tiny requests ("pong").
async fn quic_server(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let mut total = 0u64;
                    let mut first = Vec::new();
                    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                        if first.len() < 4 {
                            first.extend_from_slice(&chunk.bytes[..chunk.bytes.len().min(4)]);
                        }
                        total += chunk.bytes.len() as u64;
                    }
                    let reply = if total == 4 && first == b"ping" {
                        b"pong".to_vec()
                    } else {
                        total.to_be_bytes().to_vec()
                    };
                    let _ = send.write_all(&reply).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
}

// ----- report -----

fn report(args: &ReportArgs) -> Result<(), Error> {
    let text = std::fs::read_to_string(&args.results)?;
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    print!("{}", render(&lines));
    Ok(())
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `value (×direct / ×nginx)`, with `-` where a side is missing.
fn cell(
    value: Option<f64>,
    direct: Option<f64>,
    nginx: Option<f64>,
    fmt: fn(f64) -> String,
) -> String {
    let Some(v) = value else {
        return "-".to_owned();
    };
    let ratio = |base: Option<f64>| {
        base.filter(|b| *b > 0.0)
            .map_or("-".to_owned(), |b| format!("{:.2}", v / b))
    };
    format!("{} ({} / {})", fmt(v), ratio(direct), ratio(nginx))
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

const MODES: [&str; 11] = [
    "direct",
    "porter",
    "porter-unbatched",
    "porter-1shard",
    "porter-2shards",
    "porter-smol",
    "porter-smol-1shard",
    "porter-smol-2shards",
    "porter-nshards",
    "porter-smol-nshards",
    "nginx",
];

/// The `max` table's rows of one scenario and phase kind.
fn max_rows<'a>(
    find: &impl Fn(&str, &str, u64, u64) -> Option<&'a Value>,
    kind: &str,
    flows: u64,
    size: u64,
) -> String {
    let mut out = String::new();
    let direct = find(kind, "direct", flows, size);
    let nginx = find(kind, "nginx", flows, size);
    let get = |v: Option<&Value>, k: &str| v.and_then(|v| f(v, k));
    for mode in MODES {
        let Some(l) = find(kind, mode, flows, size) else {
            continue;
        };
        let sends = match l["burst"].as_u64() {
            _ if kind == "fanout" => "fan-out".to_owned(),
            Some(b) if b > 1 => format!("GSO ×{b}"),
            _ => "single".to_owned(),
        };
        out.push_str(&format!(
            "| {flows} | {size} | {sends} | {mode} | {} | {} | {:.1}% | {} | {} | {} |\n",
            cell(f(l, "dps"), get(direct, "dps"), get(nginx, "dps"), si),
            cell(f(l, "gbps"), get(direct, "gbps"), get(nginx, "gbps"), |v| {
                format!("{v:.2}")
            }),
            f(l, "loss").unwrap_or(0.0) * 100.0,
            cell(
                f(l, "cpu_us_per_dgram"),
                None,
                get(nginx, "cpu_us_per_dgram"),
                |v| format!("{v:.2}")
            ),
            cell(per_cpu_second(l), None, nginx.and_then(per_cpu_second), si),
            f(l, "relay_util").map_or("-".to_owned(), |u| format!("{u:.2}")),
        ));
    }
    out
}

/// What one fully busy relay CPU would forward at this cost per datagram.
fn per_cpu_second(v: &Value) -> Option<f64> {
    f(v, "cpu_us_per_dgram")
        .filter(|c| *c > 0.0)
        .map(|c| 1e6 / c)
}

fn render(lines: &[Value]) -> String {
    let mut out = String::new();
    let find = |kind: &str, mode: &str, flows: u64, size: u64| {
        lines.iter().find(|l| {
            s(l, "kind") == kind
                && s(l, "mode") == mode
                && l["flows"].as_u64() == Some(flows)
                && l["size"].as_u64() == Some(size)
        })
    };
    let mut scenarios: Vec<(u64, u64)> = lines
        .iter()
        .filter_map(|l| Some((l["flows"].as_u64()?, l["size"].as_u64()?)))
        .collect();
    scenarios.dedup();
    let mut seen = Vec::new();
    scenarios.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });

    out.push_str(
        "Forwarding at the highest rate the generator reaches (no echo). Each cell: value \
         (ratio to direct / ratio to nginx). CPU is the relay's utime+stime per forwarded \
         datagram; datagrams per relay CPU-second is its inverse, what one fully busy CPU \
         would forward; `util` is relay CPU time over the phase (1.00 = one core busy). \
         `fan-out` rows go the other way: the backend sends one datagram to every flow in \
         turn as fast as it can, and the flows count what arrives.\n\n",
    );
    out.push_str(
        "| flows | size | sends | mode | datagrams/s | Gbit/s | loss | relay CPU µs/datagram | datagrams per relay CPU-second | util |\n",
    );
    out.push_str("| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for &(flows, size) in &scenarios {
        for kind in ["max", "max1", "fanout"] {
            out.push_str(&max_rows(&find, kind, flows, size));
        }
    }

    out.push_str(
        "\nRound trip through the relay and back (the sink echoes every datagram), at a fixed \
         total rate (each flow paced by tokio's 1 ms timer). Relay CPU counts both \
         directions. Cells: microseconds (ratio to direct / ratio to nginx).\n\n",
    );
    out.push_str("| flows | size | mode | rate/s | echo loss | p50 µs | p99 µs | p99.9 µs | relay CPU µs/datagram |\n");
    out.push_str("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for &(flows, size) in &scenarios {
        let direct = find("rtt", "direct", flows, size);
        let nginx = find("rtt", "nginx", flows, size);
        for mode in MODES {
            let Some(l) = find("rtt", mode, flows, size) else {
                continue;
            };
            let get = |v: Option<&Value>, k: &str| v.and_then(|v| f(v, k));
            let us = |v: f64| format!("{v:.0}");
            out.push_str(&format!(
                "| {flows} | {size} | {mode} | {} | {:.2}% | {} | {} | {} | {} |\n",
                si(f(l, "rate").unwrap_or(0.0)),
                f(l, "echo_loss").unwrap_or(0.0) * 100.0,
                cell(
                    f(l, "p50_us"),
                    get(direct, "p50_us"),
                    get(nginx, "p50_us"),
                    us
                ),
                cell(
                    f(l, "p99_us"),
                    get(direct, "p99_us"),
                    get(nginx, "p99_us"),
                    us
                ),
                cell(
                    f(l, "p999_us"),
                    get(direct, "p999_us"),
                    get(nginx, "p999_us"),
                    us
                ),
                cell(
                    f(l, "cpu_us_per_dgram"),
                    None,
                    get(nginx, "cpu_us_per_dgram"),
                    |v| format!("{v:.2}")
                ),
            ));
        }
    }

    let quic = |kind: &str, mode: &str| {
        lines
            .iter()
            .find(|l| s(l, "kind") == kind && s(l, "mode") == mode)
    };
    if lines.iter().any(|l| s(l, "kind").starts_with("quic")) {
        out.push_str(
            "\nReal QUIC (quinn client and server in one process, one thread): a bulk stream \
             from client to server on each of three connections (the median), then sequential \
             connections (handshake, 4-byte request, reply, close). Bulk relay CPU is per \
             transfer. Cells: value (ratio to direct / ratio to nginx).\n\n",
        );
        out.push_str("| mode | bulk MB/s | bulk relay CPU s | connections/s | failed |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: |\n");
        for mode in MODES {
            let bulk = quic("quic-bulk", mode);
            let hs = quic("quic-handshakes", mode);
            if bulk.is_none() && hs.is_none() {
                continue;
            }
            let get = |kind: &str, m: &str, k: &str| quic(kind, m).and_then(|v| f(v, k));
            out.push_str(&format!(
                "| {mode} | {} | {} | {} | {} |\n",
                cell(
                    bulk.and_then(|b| f(b, "mbytes_per_s")),
                    get("quic-bulk", "direct", "mbytes_per_s"),
                    get("quic-bulk", "nginx", "mbytes_per_s"),
                    |v| format!("{v:.0}")
                ),
                bulk.and_then(|b| f(b, "relay_cpu_s"))
                    .map_or("-".to_owned(), |v| format!("{v:.2}")),
                cell(
                    hs.and_then(|h| f(h, "per_s")),
                    get("quic-handshakes", "direct", "per_s"),
                    get("quic-handshakes", "nginx", "per_s"),
                    |v| format!("{v:.0}")
                ),
                hs.and_then(|h| h["failed"].as_u64())
                    .map_or("-".to_owned(), |v| v.to_string()),
            ));
        }
    }
    out
}

// ----- self test -----

fn selftest() -> Result<(), Error> {
    let mut rng = SimRng::new(1);
    let (odcid, scid) = ([1u8; 8], [2u8; 8]);
    let initial = client_initial("bench.test", &odcid, &scid, &mut rng);
    assert_eq!(initial.len(), 1200);
    match porter_core::client_hello_from_datagram(
        &initial,
        porter_core::AssemblerConfig::default(),
    )? {
        porter_core::Progress::Complete(info) => {
            assert_eq!(info.sni.as_deref(), Some("bench.test"));
            assert_eq!(info.alpn, vec![b"h3".to_vec()]);
            assert!(info.quic_transport_parameters);
        }
        porter_core::Progress::NeedMore => return Err("the Initial is incomplete".into()),
    }
    let cid = sink_cid(&odcid, 9000);
    let reply = server_initial(&odcid, &scid, &cid);
    let Ok((Packet::Long(p), _)) = parse_packet(&reply) else {
        return Err("the server Initial does not parse".into());
    };
    assert_eq!(
        (p.ty, p.dcid, p.scid),
        (LongType::Initial, &scid[..], &cid[..])
    );
    let mut scratch = Vec::new();
    Keys::initial(Version::V1, &odcid, Side::Server).decrypt(&p, None, &mut scratch)?;
    let mut h = Histogram::default();
    for v in [100u64, 1_000, 10_000, 100_000, 1_000_000] {
        h.record(v);
        let back = Histogram::value(Histogram::index(v));
        assert!(back.abs_diff(v) * 50 <= v, "{v} -> {back}");
    }
    assert!(h.quantile(0.5).abs_diff(10_000) < 200);
    println!(
        "selftest ok: the Initial parses (SNI bench.test, ALPN h3), the server Initial decrypts"
    );
    Ok(())
}
