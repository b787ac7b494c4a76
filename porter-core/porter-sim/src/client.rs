//! A QUIC client as the relay sees one: it sends its ClientHello in real, protected
//! Initial packets (one datagram, or two like Chromium, or captured bytes verbatim),
//! retransmits them until the server answers, follows a Retry, switches to the server's
//! Source CID, then sends short-header pings and records which server echoes them.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::hello::ClientHelloSpec;
use super::message::{Kind, Message};
use super::packets::{
    client_initial_flight, long_header_packet, retry_integrity_tag, short_header_packet,
    InitialFlightSpec,
};
use super::rng::SimRng;
use porter_core::frame::{InitialFrame, InitialFrames};
use porter_core::initial::{seal_long_packet, Keys, LongPacketSpec, Side};
use porter_core::wire::{self, ConnectionId, LongType, Packet, Packets, Version};

/// Initial retransmission timeout; doubled after each retransmission.
const INITIAL_PTO: Duration = Duration::from_millis(250);
/// Flights sent before giving up.
const MAX_FLIGHTS: u32 = 6;

/// Identifies a client host (one UDP socket) in a [`super::Sim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub usize);

/// Identifies a client connection in a [`super::Sim`]; its number rides in every ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// How the client sends its ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloShape {
    /// A ClientHello that fits one Initial datagram.
    Small,
    /// A ClientHello with a post-quantum key share (~1.9 KB), over two Initial datagrams
    /// with shuffled CRYPTO frames, as Chromium sends it.
    Large,
    /// Captured datagrams sent verbatim: `flights[0]` first, then each retransmission
    /// sends the next flight (the last one repeats). The version, DCID and SCID are read
    /// from the first datagram; [`ConnectSpec::sni`] and the CID lengths are ignored. A
    /// Retry cannot be followed (the captured bytes cannot be re-protected).
    Captured {
        /// The flights.
        flights: Vec<Vec<Bytes>>,
    },
}

/// A connection to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectSpec {
    /// The server name; `None` sends no server_name extension.
    pub sni: Option<String>,
    /// The ALPN list.
    pub alpn: Vec<Vec<u8>>,
    /// The QUIC version.
    pub version: Version,
    /// Length of the original Destination CID (8 to 20).
    pub dcid_len: usize,
    /// Length of the client's Source CID (0 to 20; Chromium uses 0).
    pub scid_len: usize,
    /// How the ClientHello is sent.
    pub hello: HelloShape,
    /// Size of the Initial datagrams (at least 1200).
    pub datagram_size: usize,
    /// Answered pings wanted; the client pings until it has them.
    pub pings: u32,
    /// Time between pings.
    pub ping_interval: Duration,
}

impl ConnectSpec {
    /// A QUIC v1 connection to `sni` with ALPN `h3`, an 8-byte DCID and SCID, a small
    /// ClientHello in a 1200-byte datagram, and three pings 50 ms apart.
    pub fn new(sni: &str) -> Self {
        Self {
            sni: Some(sni.to_owned()),
            alpn: vec![b"h3".to_vec()],
            version: Version::V1,
            dcid_len: 8,
            scid_len: 8,
            hello: HelloShape::Small,
            datagram_size: 1200,
            pings: 3,
            ping_interval: Duration::from_millis(50),
        }
    }

    /// Like [`Self::new`], shaped like Chromium: two 1250-byte Initial datagrams, an
    /// empty Source CID.
    pub fn chromium(sni: &str) -> Self {
        Self {
            hello: HelloShape::Large,
            datagram_size: 1250,
            scid_len: 0,
            ..Self::new(sni)
        }
    }
}

/// Where a client connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Sending Initials, no answer yet.
    Connecting,
    /// The server answered; pinging.
    Connected,
    /// Closed with a CONNECTION_CLOSE in an Initial (a refusal), with this error code.
    Refused {
        /// The transport error code (0x02 is CONNECTION_REFUSED).
        error_code: u64,
    },
    /// No answer after every retransmission.
    GaveUp,
}

/// A pong received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The ping's sequence number.
    pub seq: u32,
    /// The name of the server that answered.
    pub server: String,
    /// When it arrived.
    pub at: Instant,
}

/// One client connection.
#[derive(Debug)]
pub struct ClientConnection {
    id: ConnId,
    client: ClientId,
    spec: ConnectSpec,
    state: ConnState,
    version: Version,
    original_dcid: ConnectionId,
    /// The DCID the Initial keys derive from: the original, or the Retry's SCID.
    initial_dcid: ConnectionId,
    scid: ConnectionId,
    /// The DCID in use.
    dcid: ConnectionId,
    token: Vec<u8>,
    hello: Vec<u8>,
    next_pn: u64,
    flights: u32,
    retried: bool,
    pto: Option<Instant>,
    ping_at: Option<Instant>,
    pings_sent: u32,
    ping_budget: u32,
    want: u32,
    answers: Vec<Answer>,
    spare_cids: Vec<ConnectionId>,
    used_cids: Vec<ConnectionId>,
    rng: SimRng,
}

impl ClientConnection {
    pub(crate) fn new(id: ConnId, client: ClientId, spec: ConnectSpec, mut rng: SimRng) -> Self {
        let (version, dcid, scid, hello) = match &spec.hello {
            HelloShape::Captured { flights } => {
                let first = flights
                    .first()
                    .and_then(|f| f.first())
                    .expect("a captured hello has a datagram");
                let Ok((Packet::Long(p), _)) = wire::parse_packet(first) else {
                    panic!("a captured hello starts with a v1 or v2 long header");
                };
                let cid = |b: &[u8]| ConnectionId::new(b).expect("parsed CIDs fit");
                (p.version, cid(p.dcid), cid(p.scid), Vec::new())
            }
            HelloShape::Small | HelloShape::Large => {
                let dcid = ConnectionId::new(&rng.bytes(spec.dcid_len.clamp(1, 20)))
                    .expect("clamped to 20");
                let scid =
                    ConnectionId::new(&rng.bytes(spec.scid_len.min(20))).expect("at most 20");
                let hello = ClientHelloSpec {
                    sni: spec.sni.clone(),
                    alpn: spec.alpn.clone(),
                    initial_scid: scid.as_bytes().to_vec(),
                    post_quantum: spec.hello == HelloShape::Large,
                }
                .build(&mut rng);
                (spec.version, dcid, scid, hello)
            }
        };
        Self {
            id,
            client,
            state: ConnState::Connecting,
            version,
            original_dcid: dcid,
            initial_dcid: dcid,
            scid,
            dcid,
            token: Vec::new(),
            hello,
            next_pn: 1,
            flights: 0,
            retried: false,
            pto: None,
            ping_at: None,
            pings_sent: 0,
            ping_budget: spec.pings * 4 + 20,
            want: spec.pings,
            answers: Vec::new(),
            spare_cids: Vec::new(),
            used_cids: vec![],
            rng,
            spec,
        }
    }

    /// Its number.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The client host it belongs to.
    pub fn client(&self) -> ClientId {
        self.client
    }

    /// What it was asked to do.
    pub fn spec(&self) -> &ConnectSpec {
        &self.spec
    }

    /// Its state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Its original Destination CID.
    pub fn original_dcid(&self) -> ConnectionId {
        self.original_dcid
    }

    /// The Destination CID it uses now.
    pub fn dcid(&self) -> ConnectionId {
        self.dcid
    }

    /// Its Source CID.
    pub fn scid(&self) -> ConnectionId {
        self.scid
    }

    /// Whether it followed a Retry.
    pub fn retried(&self) -> bool {
        self.retried
    }

    /// Initial flights sent (first one included).
    pub fn flights(&self) -> u32 {
        self.flights
    }

    /// Distinct answered pings the connection wants in all (see
    /// [`super::Sim::want_pings`]).
    pub fn wanted(&self) -> u32 {
        self.want
    }

    /// Pings sent.
    pub fn pings_sent(&self) -> u32 {
        self.pings_sent
    }

    /// Pongs received (duplicates included), in arrival order.
    pub fn answers(&self) -> &[Answer] {
        &self.answers
    }

    /// Distinct pings answered.
    pub fn answered(&self) -> usize {
        let mut seqs: Vec<u32> = self.answers.iter().map(|a| a.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.len()
    }

    /// The distinct names of the servers that answered, in order of first answer.
    pub fn servers(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for a in &self.answers {
            if !out.contains(&a.server.as_str()) {
                out.push(&a.server);
            }
        }
        out
    }

    /// Spare CIDs the server issued that the client has not used yet.
    pub fn spare_cids(&self) -> &[ConnectionId] {
        &self.spare_cids
    }

    /// The next time the connection wants to act.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.pto, self.ping_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends the first flight.
    pub(crate) fn start(&mut self, now: Instant) -> Vec<Bytes> {
        self.send_flight(now)
    }

    fn send_flight(&mut self, now: Instant) -> Vec<Bytes> {
        self.flights += 1;
        self.pto = Some(now + INITIAL_PTO * (1 << (self.flights - 1).min(10)));
        match &self.spec.hello {
            HelloShape::Captured { flights } => {
                let i = (self.flights as usize - 1).min(flights.len() - 1);
                flights[i].clone()
            }
            HelloShape::Small | HelloShape::Large => {
                let flight = client_initial_flight(
                    &InitialFlightSpec {
                        version: self.version,
                        dcid: self.initial_dcid.as_bytes(),
                        scid: self.scid.as_bytes(),
                        token: &self.token,
                        first_packet_number: self.next_pn,
                        datagram_size: self.spec.datagram_size,
                        chaos: self.spec.hello == HelloShape::Large,
                    },
                    &self.hello,
                );
                self.next_pn += flight.len() as u64;
                flight.into_iter().map(Bytes::from).collect()
            }
        }
    }

    /// Handles its timers.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.pto.is_some_and(|t| t <= now) {
            self.pto = None;
            if self.state == ConnState::Connecting {
                if self.flights >= MAX_FLIGHTS {
                    self.state = ConnState::GaveUp;
                } else {
                    out.extend(self.send_flight(now));
                }
            }
        }
        if self.ping_at.is_some_and(|t| t <= now) {
            self.ping_at = None;
            if self.state == ConnState::Connected
                && self.answered() < self.want as usize
                && self.pings_sent < self.ping_budget
            {
                out.push(self.ping());
                self.ping_at = Some(now + self.spec.ping_interval);
            }
        }
        out
    }

    fn ping(&mut self) -> Bytes {
        let msg = Message {
            kind: Kind::Ping,
            conn: self.id.0 as u64,
            seq: self.pings_sent,
            server: String::new(),
            new_cids: Vec::new(),
        };
        self.pings_sent += 1;
        let mut payload = Vec::new();
        msg.encode(&mut payload);
        payload.extend_from_slice(&self.rng.bytes(16));
        let bits = self.rng.next_u64() as u8;
        short_header_packet(bits, self.dcid.as_bytes(), msg.seq as u8, &payload).into()
    }

    /// Asks for `more` answered pings and starts pinging again at once.
    pub(crate) fn want_more(&mut self, now: Instant, more: u32) {
        self.want = self.answered() as u32 + more;
        self.ping_budget = self.pings_sent + more * 4 + 20;
        if self.state == ConnState::Connected {
            self.ping_at = Some(now);
        }
    }

    /// Switches to the next spare CID the server issued; returns it.
    pub(crate) fn rotate_cid(&mut self) -> Option<ConnectionId> {
        if self.spare_cids.is_empty() {
            return None;
        }
        let next = self.spare_cids.remove(0);
        self.used_cids.push(self.dcid);
        self.dcid = next;
        Some(next)
    }

    /// Whether a datagram that arrived at the connection's socket is addressed to it
    /// (by its Source CID as the datagram's Destination CID).
    pub(crate) fn is_addressed(&self, datagram: &[u8]) -> bool {
        let Some(&first) = datagram.first() else {
            return false;
        };
        if wire::is_long_header(first) {
            match wire::parse_packet(datagram) {
                Ok((Packet::Long(p), _)) => p.dcid == self.scid.as_bytes(),
                Ok((Packet::VersionNegotiation { dcid, .. }, _)) => dcid == self.scid.as_bytes(),
                _ => false,
            }
        } else {
            datagram.get(1..1 + self.scid.len()) == Some(self.scid.as_bytes())
        }
    }

    /// Handles a datagram from the relay; returns what to send.
    pub(crate) fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Vec<Bytes> {
        let Some(&first) = datagram.first() else {
            return Vec::new();
        };
        if !wire::is_long_header(first) {
            self.short(now, datagram);
            return Vec::new();
        }
        let mut out = Vec::new();
        for packet in Packets::new(datagram) {
            let Ok(Packet::Long(p)) = packet else {
                break;
            };
            if p.dcid != self.scid.as_bytes() {
                continue;
            }
            match p.ty {
                LongType::Retry => {
                    if self.state != ConnState::Connecting
                        || self.retried
                        || matches!(self.spec.hello, HelloShape::Captured { .. })
                    {
                        continue;
                    }
                    let (body, tag) = p.bytes.split_at(p.bytes.len() - 16);
                    let expected =
                        retry_integrity_tag(self.version, self.initial_dcid.as_bytes(), body);
                    if tag != expected {
                        continue;
                    }
                    self.retried = true;
                    self.token = p.token.to_vec();
                    self.initial_dcid = ConnectionId::new(p.scid).expect("parsed CIDs fit");
                    self.dcid = self.initial_dcid;
                    out.extend(self.send_flight(now));
                }
                LongType::Initial => {
                    let keys =
                        Keys::initial(self.version, self.initial_dcid.as_bytes(), Side::Server);
                    let mut scratch = Vec::new();
                    let Ok(opened) = keys.decrypt(&p, None, &mut scratch) else {
                        continue;
                    };
                    let close = InitialFrames::new(opened.payload).find_map(|f| match f {
                        Ok(InitialFrame::ConnectionClose { error_code }) => Some(error_code),
                        _ => None,
                    });
                    if let Some(error_code) = close {
                        if self.state == ConnState::Connecting {
                            self.state = ConnState::Refused { error_code };
                            self.pto = None;
                        }
                        return out;
                    }
                    out.extend(self.connected(now, p.scid));
                }
                LongType::Handshake => out.extend(self.connected(now, p.scid)),
                LongType::ZeroRtt => {}
            }
        }
        out
    }

    /// The server answered from `scid`: use it, finish the handshake, start pinging.
    fn connected(&mut self, now: Instant, scid: &[u8]) -> Vec<Bytes> {
        if self.state != ConnState::Connecting {
            return Vec::new();
        }
        self.state = ConnState::Connected;
        self.pto = None;
        self.dcid = ConnectionId::new(scid).expect("parsed CIDs fit");
        self.ping_at = Some(now);
        // An Initial (ACK) and a Handshake packet, coalesced and padded like a real
        // client's second flight.
        let keys = Keys::initial(self.version, self.initial_dcid.as_bytes(), Side::Client);
        let mut d = Vec::with_capacity(1200);
        seal_long_packet(
            &keys,
            &LongPacketSpec {
                ty: LongType::Initial,
                dcid: self.dcid.as_bytes(),
                scid: self.scid.as_bytes(),
                token: &[],
                packet_number: self.next_pn,
                pn_len: 2,
            },
            &[0x02, 0, 0, 0, 0],
            &mut d,
        );
        long_header_packet(
            self.version,
            &LongPacketSpec {
                ty: LongType::Handshake,
                dcid: self.dcid.as_bytes(),
                scid: self.scid.as_bytes(),
                token: &[],
                packet_number: 0,
                pn_len: 2,
            },
            &self.rng.bytes(80),
            &mut d,
        );
        self.next_pn += 1;
        d.resize(1200.max(d.len()), 0);
        vec![d.into()]
    }

    fn short(&mut self, now: Instant, datagram: &[u8]) {
        let Some(msg) = datagram
            .get(2 + self.scid.len()..)
            .and_then(Message::decode)
        else {
            return;
        };
        if msg.kind != Kind::Pong || msg.conn != self.id.0 as u64 {
            return;
        }
        for cid in msg.new_cids {
            if cid != self.dcid && !self.used_cids.contains(&cid) && !self.spare_cids.contains(&cid)
            {
                self.spare_cids.push(cid);
            }
        }
        self.answers.push(Answer {
            seq: msg.seq,
            server: msg.server,
            at: now,
        });
        if self.answered() >= self.want as usize {
            self.ping_at = None;
        }
    }
}
