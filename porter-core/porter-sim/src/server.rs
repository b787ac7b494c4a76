//! A QUIC server as the relay sees one: it answers a client's first Initial with a
//! coalesced Initial+Handshake flight carrying its own Source CID (or first with a Retry,
//! if configured), then echoes short-header pings, naming itself in every answer so a
//! test can tell which backend it reached.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;

use super::message::{Kind, Message};
use super::packets::{retry_packet, server_first_flight, short_header_packet};
use super::rng::SimRng;
use porter_core::initial::{Keys, Side};
use porter_core::wire::{self, ConnectionId, LongType, Packet, Version, MAX_CID_LEN};
use porter_core::BackendAddr;

const TOKEN_PREFIX: &[u8] = b"porter-sim-retry";

/// How a simulated backend behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Its name, echoed in every answer.
    pub name: String,
    /// Its address.
    pub addr: BackendAddr,
    /// The length of the CIDs it issues, 1 to 20.
    pub cid_len: usize,
    /// Whether it answers a first Initial without a token with a Retry.
    pub retry: bool,
    /// How many more CIDs it issues per connection (as a real server does in
    /// NEW_CONNECTION_ID frames; here they ride in the pongs).
    pub spare_cids: usize,
}

impl ServerConfig {
    /// A server with 8-byte CIDs, two spare CIDs per connection and no Retry.
    pub fn new(name: &str, addr: SocketAddr) -> Self {
        Self {
            name: name.to_owned(),
            addr: BackendAddr(addr),
            cid_len: 8,
            retry: false,
            spare_cids: 2,
        }
    }
}

/// One connection as the server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConnection {
    /// The QUIC version.
    pub version: Version,
    /// The DCID of the Initial that opened it (the Retry's SCID after a Retry): its
    /// Initial keys derive from it.
    pub initial_dcid: ConnectionId,
    /// The client's Source CID, the DCID of everything the server sends.
    pub client_scid: ConnectionId,
    /// The CIDs the server issued: the one in its long headers first, then the spares.
    pub cids: Vec<ConnectionId>,
    /// Addresses the connection's datagrams came from, in order of first appearance
    /// (through the relay: its upstream socket for the session).
    pub peers: Vec<SocketAddr>,
    /// The client connection number carried in the pings, once one came.
    pub client_conn: Option<u64>,
    /// Whether it came back after a Retry.
    pub retried: bool,
    /// Pings answered.
    pub pings: u64,
    /// Client Handshake packets received.
    pub handshakes: u64,
    /// Client Initial datagrams received.
    pub initials: u64,
}

/// Counters of a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams received.
    pub datagrams: u64,
    /// Retry packets sent.
    pub retries: u64,
    /// Initials with a token that does not validate.
    pub bad_tokens: u64,
    /// First Initials that did not decrypt with the client Initial keys (they would not
    /// if the relay had altered them).
    pub undecryptable: u64,
    /// Datagrams for no connection, or that make no sense.
    pub unknown: u64,
}

/// A simulated QUIC server.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    rng: SimRng,
    conns: Vec<ServerConnection>,
    by_cid: HashMap<ConnectionId, usize>,
    stats: ServerStats,
    next_pn: u64,
    scratch: Vec<u8>,
}

impl Server {
    /// A server with its own randomness.
    pub fn new(config: ServerConfig, seed: u64) -> Self {
        assert!(
            (1..=MAX_CID_LEN).contains(&config.cid_len),
            "server CIDs are 1 to 20 bytes"
        );
        Self {
            config,
            rng: SimRng::new(seed),
            conns: Vec::new(),
            by_cid: HashMap::new(),
            stats: ServerStats::default(),
            next_pn: 0,
            scratch: Vec::new(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Its connections, in order of creation.
    pub fn connections(&self) -> &[ServerConnection] {
        &self.conns
    }

    /// The connection a client connection (by its number) reached, if it pinged.
    pub fn connection_of(&self, client_conn: u64) -> Option<&ServerConnection> {
        self.conns
            .iter()
            .find(|c| c.client_conn == Some(client_conn))
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    fn new_cid(&mut self) -> ConnectionId {
        loop {
            let cid = ConnectionId::new(&self.rng.bytes(self.config.cid_len))
                .expect("CID length checked at construction");
            if !self.by_cid.contains_key(&cid) {
                return cid;
            }
        }
    }

    /// Handles a datagram from `from`; returns the datagrams to send back to `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8]) -> Vec<Bytes> {
        self.stats.datagrams += 1;
        let Some(&first) = datagram.first() else {
            self.stats.unknown += 1;
            return Vec::new();
        };
        if !wire::is_long_header(first) {
            return self.short(from, datagram);
        }
        let Ok((Packet::Long(packet), _)) = wire::parse_packet(datagram) else {
            self.stats.unknown += 1;
            return Vec::new();
        };
        let Some(dcid) = ConnectionId::new(packet.dcid) else {
            self.stats.unknown += 1;
            return Vec::new();
        };
        if let Some(&i) = self.by_cid.get(&dcid) {
            let conn = &mut self.conns[i];
            if !conn.peers.contains(&from) {
                conn.peers.push(from);
            }
            return match packet.ty {
                LongType::Initial => {
                    conn.initials += 1;
                    // A retransmission: our flight was lost, send it again.
                    vec![self.flight(i)]
                }
                LongType::Handshake => {
                    conn.handshakes += 1;
                    Vec::new()
                }
                _ => Vec::new(),
            };
        }
        if packet.ty != LongType::Initial {
            self.stats.unknown += 1;
            return Vec::new();
        }
        let keys = Keys::initial(packet.version, packet.dcid, Side::Client);
        if keys.decrypt(&packet, None, &mut self.scratch).is_err() {
            self.stats.undecryptable += 1;
            return Vec::new();
        }
        let retried = if self.config.retry {
            if packet.token.is_empty() {
                return vec![self.retry(from, packet.version, packet.dcid, packet.scid)];
            }
            if !self.token_valid(packet.token, from, packet.dcid) {
                self.stats.bad_tokens += 1;
                return Vec::new();
            }
            true
        } else {
            false
        };
        let client_scid = ConnectionId::new(packet.scid).expect("parsed CIDs fit");
        let mut cids = Vec::with_capacity(1 + self.config.spare_cids);
        for _ in 0..=self.config.spare_cids {
            let cid = self.new_cid();
            cids.push(cid);
            // Claimed at once so the next draw cannot collide with it.
            self.by_cid.insert(cid, self.conns.len());
        }
        self.by_cid.insert(dcid, self.conns.len());
        self.conns.push(ServerConnection {
            version: packet.version,
            initial_dcid: dcid,
            client_scid,
            cids,
            peers: vec![from],
            client_conn: None,
            retried,
            pings: 0,
            handshakes: 0,
            initials: 1,
        });
        vec![self.flight(self.conns.len() - 1)]
    }

    fn flight(&mut self, i: usize) -> Bytes {
        let conn = &self.conns[i];
        let (version, initial_dcid, dcid, scid) = (
            conn.version,
            conn.initial_dcid,
            conn.client_scid,
            conn.cids[0],
        );
        self.next_pn += 1;
        server_first_flight(
            version,
            initial_dcid.as_bytes(),
            dcid.as_bytes(),
            scid.as_bytes(),
            self.next_pn,
            1200,
            &mut self.rng,
        )
        .into()
    }

    fn retry(&mut self, from: SocketAddr, version: Version, odcid: &[u8], scid: &[u8]) -> Bytes {
        self.stats.retries += 1;
        let new = self.new_cid();
        let mut token = TOKEN_PREFIX.to_vec();
        token.push(new.len() as u8);
        token.extend_from_slice(new.as_bytes());
        token.extend_from_slice(from.to_string().as_bytes());
        let unused = self.rng.next_u64() as u8;
        retry_packet(version, odcid, scid, new.as_bytes(), &token, unused).into()
    }

    /// A token is valid if this server made it for this address and the Initial comes
    /// to the CID the Retry gave.
    fn token_valid(&self, token: &[u8], from: SocketAddr, dcid: &[u8]) -> bool {
        let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
            return false;
        };
        let Some((&len, rest)) = rest.split_first() else {
            return false;
        };
        let Some((cid, addr)) = rest.split_at_checked(usize::from(len)) else {
            return false;
        };
        cid == dcid && addr == from.to_string().as_bytes()
    }

    fn short(&mut self, from: SocketAddr, datagram: &[u8]) -> Vec<Bytes> {
        let len = self.config.cid_len;
        let conn = datagram
            .get(1..1 + len)
            .and_then(ConnectionId::new)
            .and_then(|cid| self.by_cid.get(&cid).copied());
        let message = datagram.get(2 + len..).and_then(Message::decode);
        let (Some(i), Some(ping)) = (conn, message) else {
            self.stats.unknown += 1;
            return Vec::new();
        };
        if ping.kind != Kind::Ping {
            self.stats.unknown += 1;
            return Vec::new();
        }
        let conn = &mut self.conns[i];
        if !conn.peers.contains(&from) {
            conn.peers.push(from);
        }
        conn.client_conn = Some(ping.conn);
        conn.pings += 1;
        let pong = Message {
            kind: Kind::Pong,
            conn: ping.conn,
            seq: ping.seq,
            server: self.config.name.clone(),
            new_cids: conn.cids[1..].to_vec(),
        };
        let dcid = conn.client_scid;
        let mut payload = Vec::new();
        pong.encode(&mut payload);
        payload.extend_from_slice(&self.rng.bytes(16));
        let bits = self.rng.next_u64() as u8;
        vec![short_header_packet(bits, dcid.as_bytes(), ping.seq as u8, &payload).into()]
    }
}
