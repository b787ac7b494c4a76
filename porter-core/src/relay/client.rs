//! Client datagrams: the first packet of each decides. A long header with a known
//! Destination CID goes to its session; an Initial with an unknown DCID starts a session,
//! whose datagrams are held until the ClientHello is complete and the route known; short
//! headers go through [`super::follow`].
//!
//! A new session is only created for a full-size datagram (RFC 9000 §14.1) with a DCID of
//! at least 8 bytes (§7.2) whose Initial decrypts: garbage that merely looks like an
//! Initial never gets state.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::output::{Command, DropReason, RefuseReason, Verdict};
use super::Relay;
use crate::assembler::{InitialAssembler, InitialError, Progress};
use crate::client_hello::ClientHelloInfo;
use crate::ids::{AllocationId, ClientAddr, SessionId};
use crate::routes::Resolved;
use crate::session::{CloseReason, PathList, Pending, Session, SessionState, Traffic};
use crate::wire::{
    self, ConnectionId, LongPacket, LongType, Packet, Version, MIN_INITIAL_DATAGRAM,
};

/// The shortest original DCID a client may use (RFC 9000 §7.2).
const MIN_ORIGINAL_DCID: usize = 8;

impl Relay {
    pub(super) fn client_datagram(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
    ) -> Verdict {
        let Some(&first) = datagram.first() else {
            return Verdict::Drop(DropReason::Empty);
        };
        if !wire::is_long_header(first) {
            return self.client_short(now, from, datagram);
        }
        let Ok((packet, _)) = wire::parse_packet(datagram) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        match packet {
            Packet::Long(long) => self.client_long(now, from, datagram, &long),
            Packet::UnknownVersion { dcid, scid, .. } => {
                if datagram.len() < MIN_INITIAL_DATAGRAM {
                    return Verdict::Drop(DropReason::UnsupportedVersion);
                }
                let mut out = Vec::with_capacity(7 + dcid.len() + scid.len() + 8);
                let versions = Version::ALL.map(Version::to_wire);
                let bits = self.random() as u8;
                wire::version_negotiation(dcid, scid, &versions, bits, &mut out);
                self.commands.push_back(Command::Transmit {
                    to: from,
                    datagram: out.into(),
                });
                Verdict::Answered
            }
            // Clients never send these; servers only.
            Packet::VersionNegotiation { .. } | Packet::Short { .. } => {
                Verdict::Drop(DropReason::Malformed)
            }
        }
    }

    pub(super) fn client_long(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
        packet: &LongPacket<'_>,
    ) -> Verdict {
        let Some(dcid) = ConnectionId::new(packet.dcid) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if let Some(id) = self.cids.get(&dcid) {
            return self.client_to_session(now, from, id, datagram, Some(packet.ty), Some(dcid));
        }
        if packet.ty != LongType::Initial {
            // A Handshake or 0-RTT packet with a CID the relay never saw: routable only
            // by the server ID in it.
            if let Some(verdict) = self.route_by_server_id(now, from, packet.dcid, datagram) {
                return verdict;
            }
            return Verdict::Drop(DropReason::UnknownConnection);
        }
        if let Some(refused) = self.refused.get(&dcid).copied() {
            if refused.until > now {
                return self.refuse_again(now, from, datagram.len(), &dcid, refused);
            }
        }
        self.new_connection(now, from, datagram, packet, dcid)
    }

    pub(super) fn client_to_session(
        &mut self,
        now: Instant,
        from: ClientAddr,
        id: SessionId,
        datagram: &[u8],
        long_type: Option<LongType>,
        dcid: Option<ConnectionId>,
    ) -> Verdict {
        let Some(session) = self.sessions.get_mut(&id) else {
            return Verdict::Drop(DropReason::UnknownConnection);
        };
        match session.state {
            SessionState::Established => {
                if !session.validated && session.validated_by(dcid) {
                    self.validate(id);
                }
                let Some(session) = self.sessions.get_mut(&id) else {
                    return Verdict::Drop(DropReason::UnknownConnection);
                };
                let backend = session
                    .backend
                    .expect("established sessions have a backend");
                let Some(path) = session.paths.iter_mut().find(|p| p.client == from) else {
                    // A known connection from a new address: a new path, never a move of
                    // an existing one (see `super::path`).
                    return self.open_path(now, id, from, datagram);
                };
                path.last_client = now;
                let path = path.id;
                // Its client came back to this shard's path.
                if !self.moved.is_empty() {
                    self.moved.remove(&id);
                }
                session.client = from;
                session.last_activity = now;
                session.to_backend.add(datagram.len());
                Verdict::ToBackend {
                    session: id,
                    path,
                    backend,
                }
            }
            SessionState::AwaitingClientHello | SessionState::Allocating(_) => {
                if session.client != from {
                    // Before routing, a datagram from elsewhere is more likely spoofed
                    // than a NAT rebinding; the client retransmits from its address.
                    return Verdict::Drop(DropReason::AddressMismatch);
                }
                let feed = long_type == Some(LongType::Initial)
                    && session.state == SessionState::AwaitingClientHello;
                self.hold(now, id, datagram, feed)
            }
        }
    }

    pub(super) fn new_connection(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
        packet: &LongPacket<'_>,
        dcid: ConnectionId,
    ) -> Verdict {
        if datagram.len() < MIN_INITIAL_DATAGRAM {
            return Verdict::Drop(DropReason::InitialTooSmall);
        }
        if dcid.len() < MIN_ORIGINAL_DCID {
            return Verdict::Drop(DropReason::ShortOriginalDcid);
        }
        if !self.accepting {
            return Verdict::Drop(DropReason::Draining);
        }
        if self.sessions.len() >= self.config.max_sessions {
            return Verdict::Drop(DropReason::SessionLimit);
        }
        if datagram.len() > self.config.max_buffered_per_session
            || self.buffered_total + datagram.len() > self.config.max_buffered_total
        {
            return Verdict::Drop(DropReason::BufferFull);
        }
        // The caps and fair admission cost a few lookups; checked before decrypting,
        // a flood from sources over their share costs no AES either.
        if let Err(reason) = self.admit_session(from) {
            return Verdict::Drop(reason);
        }
        // Decrypt before spending a session on it: garbage that merely looks like an
        // Initial never gets state.
        let mut assembler = InitialAssembler::new(self.config.assembler);
        let progress = match assembler.handle_datagram_with(datagram, &mut self.scratch) {
            Ok(progress) => progress,
            Err(e) => return Verdict::Drop(initial_drop_reason(&e)),
        };
        // The reassembly buffer is memory this session holds as much as its datagrams:
        // it is charged to the same budgets (a CRYPTO frame at a far offset pins a
        // buffer up to the ClientHello limit).
        let reassembly = assembler.memory();
        if datagram.len() + reassembly > self.config.max_buffered_per_session
            || self.buffered_total + datagram.len() + reassembly > self.config.max_buffered_total
        {
            return Verdict::Drop(DropReason::BufferFull);
        }
        let Some(client_scid) = ConnectionId::new(packet.scid) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if !self.take_session_token(now, from) {
            return Verdict::Drop(DropReason::RateLimited);
        }
        let id = self.take_session_id();
        self.sessions.insert(
            id,
            Session {
                id,
                client: from,
                backend: None,
                state: SessionState::AwaitingClientHello,
                version: packet.version,
                original_dcid: dcid,
                client_scid,
                sni: None,
                // Room for the original DCID and the server's first CID, which is all
                // most sessions ever have (the default growth would reserve four).
                cids: {
                    let mut cids = Vec::with_capacity(2);
                    cids.push(dcid);
                    cids
                },
                server_cid_len: None,
                created: now,
                last_activity: now,
                to_backend: Traffic::default(),
                to_client: Traffic::default(),
                paths: PathList::default(),
                confirmed: true,
                next_path: 0,
                validated: false,
                issued: Vec::new(),
                source: from.0.ip(),
            },
        );
        self.cids.insert(dcid, id);
        self.index_client(id, from);
        self.count_unvalidated(from);
        self.timers
            .push(Reverse((now + self.config.handshake_timeout, id)));
        self.pending.insert(
            id,
            Pending {
                assembler,
                datagrams: Vec::new(),
                bytes: reassembly,
                reassembly,
                alpn: Vec::new(),
            },
        );
        self.buffered_total += reassembly;
        self.buffer(id, datagram);
        match progress {
            Progress::NeedMore => Verdict::Held { session: id },
            Progress::Complete(info) => self.route_connection(now, id, info),
        }
    }

    /// Holds a datagram of a session that is not routed yet; feeds Initials to its
    /// ClientHello assembler.
    pub(super) fn hold(
        &mut self,
        now: Instant,
        id: SessionId,
        datagram: &[u8],
        feed: bool,
    ) -> Verdict {
        let Some(pending) = self.pending.get_mut(&id) else {
            return Verdict::Drop(DropReason::UnknownConnection);
        };
        if pending.bytes + datagram.len() > self.config.max_buffered_per_session
            || self.buffered_total + datagram.len() > self.config.max_buffered_total
        {
            return Verdict::Drop(DropReason::BufferFull);
        }
        let progress = if feed {
            let result = pending
                .assembler
                .handle_datagram_with(datagram, &mut self.scratch);
            // What feeding it cost in reassembly memory counts like the datagram itself;
            // past a budget the attempt cannot go on (its reassembly already holds the
            // datagram's CRYPTO data), so the session ends.
            let grown = pending
                .assembler
                .memory()
                .saturating_sub(pending.reassembly);
            if grown > 0 {
                if pending.bytes + datagram.len() + grown > self.config.max_buffered_per_session
                    || self.buffered_total + datagram.len() + grown > self.config.max_buffered_total
                {
                    self.close(id, CloseReason::BufferFull, now);
                    return Verdict::Drop(DropReason::BufferFull);
                }
                pending.reassembly += grown;
                pending.bytes += grown;
                self.buffered_total += grown;
            }
            match result {
                Ok(progress) => progress,
                Err(e) if e.is_fatal() => {
                    self.close(id, CloseReason::InvalidClientHello, now);
                    return Verdict::Drop(DropReason::InvalidClientHello);
                }
                Err(e) => return Verdict::Drop(initial_drop_reason(&e)),
            }
        } else {
            Progress::NeedMore
        };
        self.buffer(id, datagram);
        match progress {
            Progress::NeedMore => Verdict::Held { session: id },
            Progress::Complete(info) => self.route_connection(now, id, info),
        }
    }

    pub(super) fn buffer(&mut self, id: SessionId, datagram: &[u8]) {
        if let Some(pending) = self.pending.get_mut(&id) {
            pending.datagrams.push(Bytes::copy_from_slice(datagram));
            pending.bytes += datagram.len();
            self.buffered_total += datagram.len();
        }
    }

    /// The ClientHello is complete: choose where the session goes.
    pub(super) fn route_connection(
        &mut self,
        now: Instant,
        id: SessionId,
        info: ClientHelloInfo,
    ) -> Verdict {
        let sni: Option<Arc<str>> = info.sni.map(Arc::from);
        let Some(session) = self.sessions.get_mut(&id) else {
            return Verdict::Drop(DropReason::UnknownConnection);
        };
        session.sni = sni.clone();
        let client = session.client;
        if let Some(pending) = self.pending.get_mut(&id) {
            pending.alpn = info.alpn;
        }
        let resolved = self.routes.resolve(sni.as_deref(), client);
        // A connection the relay could not give a socket is refused before it is routed
        // (and before an allocation is spent on it).
        if matches!(resolved, Some(Resolved::Backend(_) | Resolved::Fleet(_)))
            && self.sockets_exhausted()
        {
            return self.refuse_now(now, id, RefuseReason::SocketLimit);
        }
        match resolved {
            Some(Resolved::Backend(backend)) => {
                self.establish(now, id, backend);
                Verdict::Held { session: id }
            }
            Some(Resolved::Fleet(fleet)) => {
                if self.allocations.len() >= self.config.max_pending_allocations {
                    self.stats.allocations.rejected += 1;
                    return self.refuse_now(now, id, RefuseReason::AllocationLimit);
                }
                if !self.allocation_budget.take(now, &fleet, client.0.ip()) {
                    self.stats.allocations.over_budget += 1;
                    return self.refuse_now(now, id, RefuseReason::AllocationBudget);
                }
                let alloc = AllocationId(self.next_allocation);
                self.next_allocation += 1;
                self.allocations.insert(alloc, id);
                self.stats.allocations.requested += 1;
                let session = self.sessions.get_mut(&id).expect("routing a live session");
                session.state = SessionState::Allocating(alloc);
                let client = session.client;
                let alpn = self
                    .pending
                    .get(&id)
                    .map(|p| p.alpn.clone())
                    .unwrap_or_default();
                self.commands.push_back(Command::Allocate {
                    id: alloc,
                    session: id,
                    fleet,
                    sni,
                    alpn,
                    client,
                });
                Verdict::Held { session: id }
            }
            Some(Resolved::NoHealthyBackend(_)) => {
                self.refuse_now(now, id, RefuseReason::NoHealthyBackend)
            }
            None => self.refuse_now(now, id, RefuseReason::NoRoute),
        }
    }
}

fn initial_drop_reason(e: &InitialError) -> DropReason {
    if e.is_fatal() {
        DropReason::InvalidClientHello
    } else {
        match e {
            InitialError::Wire(_) => DropReason::Malformed,
            InitialError::UnsupportedVersion(_) => DropReason::UnsupportedVersion,
            _ => DropReason::NotInitial,
        }
    }
}
