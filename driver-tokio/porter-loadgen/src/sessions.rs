//! Many sessions through a relay: real client Initials, then short-header floods.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use porter_core::wire::Version;
use porter_sim::{
    client_initial_flight, short_header_packet, ClientHelloSpec, InitialFlightSpec, SimRng,
};

use crate::responder::{bind_loopback, server_cid_for};

/// How long to wait for a server's answer before sending a session's Initial again.
const RESEND_AFTER: Duration = Duration::from_secs(1);

/// What sessions to open.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    /// The relay's UDP listener.
    pub relay: SocketAddr,
    /// A routed server name.
    pub sni: String,
    /// How many sessions.
    pub sessions: usize,
    /// How many client sockets (source ports) carry them, round-robin.
    pub sockets: usize,
    /// Sessions waiting for their answer at once (paces the Initials so that the
    /// relay's socket buffer does not overflow).
    pub window: usize,
    /// Seeds the CIDs and ClientHellos.
    pub seed: u64,
    /// Gives up after this long.
    pub timeout: Duration,
}

struct Session {
    socket: usize,
    server_cid: [u8; 8],
    flight: Vec<Vec<u8>>,
    sent: Option<Instant>,
    established: bool,
}

/// Sessions opened through a relay.
pub struct Sessions {
    relay: SocketAddr,
    sockets: Vec<UdpSocket>,
    sessions: Vec<Session>,
}

impl Sessions {
    /// Opens `spec.sessions` sessions: sends each one's Initial (one 1200-byte datagram:
    /// a ClientHello for `spec.sni` with ALPN `h3`, random 8-byte DCID, the session's
    /// index as 8-byte SCID) and waits for the server's first flight to come back through
    /// the relay, which means the relay has learned the server's CID. Returns when every
    /// session is established or at `spec.timeout`; see [`Self::established`].
    pub fn open(spec: &SessionSpec) -> io::Result<Self> {
        let mut sockets = Vec::with_capacity(spec.sockets.max(1));
        for _ in 0..spec.sockets.max(1) {
            let socket = bind_loopback()?;
            socket.set_nonblocking(true)?;
            sockets.push(socket);
        }
        let mut rng = SimRng::new(spec.seed);
        let sessions = (0..spec.sessions)
            .map(|i| {
                let dcid = rng.bytes(8);
                let scid = (i as u64).to_be_bytes();
                let hello = ClientHelloSpec {
                    sni: Some(spec.sni.clone()),
                    alpn: vec![b"h3".to_vec()],
                    initial_scid: scid.to_vec(),
                    post_quantum: false,
                }
                .build(&mut rng);
                let flight = client_initial_flight(
                    &InitialFlightSpec {
                        version: Version::V1,
                        dcid: &dcid,
                        scid: &scid,
                        token: &[],
                        first_packet_number: 0,
                        datagram_size: 1200,
                        chaos: false,
                    },
                    &hello,
                );
                Session {
                    socket: i % sockets.len(),
                    server_cid: server_cid_for(&dcid),
                    flight,
                    sent: None,
                    established: false,
                }
            })
            .collect();
        let mut this = Self {
            relay: spec.relay,
            sockets,
            sessions,
        };
        this.handshake(spec.window.max(1), Instant::now() + spec.timeout)?;
        Ok(this)
    }

    /// Sessions whose server answer came back.
    pub fn established(&self) -> usize {
        self.sessions.iter().filter(|s| s.established).count()
    }

    fn handshake(&mut self, window: usize, deadline: Instant) -> io::Result<()> {
        let mut next = 0;
        let mut waiting: VecDeque<usize> = VecDeque::new();
        let mut buf = vec![0u8; 2048];
        while (next < self.sessions.len() || !waiting.is_empty()) && Instant::now() < deadline {
            while next < self.sessions.len() && waiting.len() < window {
                self.send_flight(next)?;
                waiting.push_back(next);
                next += 1;
            }
            let mut got = false;
            for socket in &self.sockets {
                loop {
                    match socket.recv(&mut buf) {
                        Ok(n) => {
                            got = true;
                            if let Some(i) = answered_session(&buf[..n]) {
                                if let Some(s) = self.sessions.get_mut(i) {
                                    s.established = true;
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            // Oldest first: drop the answered, resend the overdue.
            let now = Instant::now();
            let mut resend = Vec::new();
            waiting.retain(|&i| {
                let s = &self.sessions[i];
                if s.established {
                    return false;
                }
                if s.sent.is_some_and(|t| now - t >= RESEND_AFTER) {
                    resend.push(i);
                }
                true
            });
            for i in resend {
                self.send_flight(i)?;
            }
            if !got {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    fn send_flight(&mut self, i: usize) -> io::Result<()> {
        let s = &mut self.sessions[i];
        for d in &s.flight {
            match self.sockets[s.socket].send_to(d, self.relay) {
                Ok(_) => {}
                // A full send buffer: the resend timer covers it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        s.sent = Some(Instant::now());
        Ok(())
    }

    /// Sends short-header datagrams of `size` bytes (at least 10) for `duration`,
    /// round-robin over the established sessions, each from its own socket with the
    /// server's CID as DCID, as fast as the sockets take them. Returns how many were
    /// sent.
    pub fn flood(&self, duration: Duration, size: usize) -> io::Result<u64> {
        let datagrams: Vec<(usize, Vec<u8>)> = self
            .sessions
            .iter()
            .filter(|s| s.established)
            .map(|s| {
                let payload = vec![0u8; size.max(10).saturating_sub(2 + s.server_cid.len())];
                (s.socket, short_header_packet(0, &s.server_cid, 1, &payload))
            })
            .collect();
        if datagrams.is_empty() {
            return Ok(0);
        }
        let end = Instant::now() + duration;
        let mut sent = 0u64;
        'flood: loop {
            for (socket, d) in &datagrams {
                match self.sockets[*socket].send_to(d, self.relay) {
                    Ok(_) => sent += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if sent.is_multiple_of(256) && Instant::now() >= end {
                    break 'flood;
                }
            }
            if Instant::now() >= end {
                break;
            }
        }
        Ok(sent)
    }
}

/// The session index a server first flight answers (its DCID is the client's SCID,
/// which is the session's index).
fn answered_session(d: &[u8]) -> Option<usize> {
    if d.first()? & 0x80 == 0 || *d.get(5)? != 8 {
        return None;
    }
    let index = u64::from_be_bytes(d.get(6..14)?.try_into().ok()?);
    usize::try_from(index).ok()
}
