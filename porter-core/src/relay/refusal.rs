//! Refusing connections: a server Initial carrying CONNECTION_CLOSE with
//! CONNECTION_REFUSED (RFC 9000 §10.2.3, §20.1), so the client fails at once, and a memory
//! of recent refusals so that retransmitted Initials get the same answer instead of a new
//! session (and, for Agones routes, a new allocation).
//!
//! A replay is answered only when it could be the client's own retransmission: a
//! full-size datagram (RFC 9000 §14.1: a server discards Initials in smaller datagrams)
//! from the address that was refused. Anything else with the same DCID is a cheap way to
//! make the relay reflect a packet at someone else, and is dropped. Answers to replays
//! draw on a budget of their own ([`super::RelayConfig::refusal_replays_per_second`]), so
//! replays never spend the new-session budget.

use std::time::Instant;

use bytes::Bytes;

use super::config::RefusalMode;
use super::output::{Command, DropReason, Notification, RefuseReason, Verdict};
use super::Relay;
use crate::frame::write_connection_close;
use crate::ids::{ClientAddr, SessionId};
use crate::initial::{seal_long_packet, Keys, LongPacketSpec, Side};
use crate::session::CloseReason;
use crate::wire::{ConnectionId, LongType, Version, MIN_INITIAL_DATAGRAM};

/// QUIC transport error CONNECTION_REFUSED (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x02;
/// How many refused connections are remembered (for one handshake timeout each), so
/// that retransmitted Initials get the refusal again instead of a new session and, for
/// Agones routes, a new allocation.
pub(crate) const MAX_REFUSED_REMEMBERED: usize = 16 * 1024;

/// A connection refused moments ago.
#[derive(Debug, Clone, Copy)]
pub(super) struct Refused {
    pub(super) until: Instant,
    pub(super) version: Version,
    pub(super) client_scid: ConnectionId,
    /// The address the refused connection came from: the only one a replay is answered
    /// at.
    pub(super) client: ClientAddr,
}

impl Relay {
    /// Refuses while handling the client's datagram: the answer is the verdict.
    pub(super) fn refuse_now(
        &mut self,
        now: Instant,
        id: SessionId,
        reason: RefuseReason,
    ) -> Verdict {
        match self.refuse(now, id, reason) {
            Some((to, datagram)) => {
                self.commands.push_back(Command::Transmit { to, datagram });
                Verdict::Answered
            }
            None => Verdict::Drop(match reason {
                RefuseReason::NoRoute => DropReason::NoRoute,
                RefuseReason::NoHealthyBackend => DropReason::NoHealthyBackend,
                RefuseReason::SocketLimit => DropReason::SocketLimit,
                RefuseReason::SocketFailed => DropReason::SocketFailed,
                _ => DropReason::AllocationRefused,
            }),
        }
    }

    /// Refuses outside a datagram's handling: the answer goes out as an event.
    pub(super) fn refuse_async(&mut self, now: Instant, id: SessionId, reason: RefuseReason) {
        if let Some((to, datagram)) = self.refuse(now, id, reason) {
            self.commands.push_back(Command::Transmit { to, datagram });
        } else if let Some(reason) = match reason {
            RefuseReason::NoRoute | RefuseReason::NoHealthyBackend => None,
            RefuseReason::SocketLimit => Some(DropReason::SocketLimit),
            RefuseReason::SocketFailed => Some(DropReason::SocketFailed),
            _ => Some(DropReason::AllocationRefused),
        } {
            self.count_drop(reason);
        }
    }

    /// Closes the session as refused; returns the CONNECTION_CLOSE to send, if refusals
    /// are answered.
    pub(super) fn refuse(
        &mut self,
        now: Instant,
        id: SessionId,
        reason: RefuseReason,
    ) -> Option<(ClientAddr, Bytes)> {
        let session = self.sessions.get(&id)?;
        let (client, sni) = (session.client, session.sni.clone());
        let refused = Refused {
            until: now + self.config.handshake_timeout,
            version: session.version,
            client_scid: session.client_scid,
            client,
        };
        let original_dcid = session.original_dcid;
        let packet = match self.config.refusal {
            RefusalMode::Close => {
                let (version, odcid, scid) =
                    (session.version, session.original_dcid, session.client_scid);
                Some(self.refusal_packet(version, &odcid, &scid))
            }
            RefusalMode::Drop => None,
        };
        self.remember_refused(now, original_dcid, refused);
        self.stats.refused += 1;
        if let Some(i) = RefuseReason::ALL.iter().position(|r| *r == reason) {
            self.stats.refusals[i] += 1;
        }
        self.notifications.push_back(Notification::Refused {
            session: id,
            client,
            sni,
            reason,
        });
        self.close(id, CloseReason::Refused(reason), now);
        packet.map(|p| (client, p))
    }

    pub(super) fn remember_refused(&mut self, now: Instant, dcid: ConnectionId, refused: Refused) {
        while let Some(&(until, old)) = self.refused_order.front() {
            if until > now && self.refused_order.len() < MAX_REFUSED_REMEMBERED {
                break;
            }
            self.refused_order.pop_front();
            if self.refused.get(&old).is_some_and(|r| r.until == until) {
                self.refused.remove(&old);
            }
        }
        self.refused.insert(dcid, refused);
        self.refused_order.push_back((refused.until, dcid));
    }

    /// Answers a retransmitted Initial of a refused connection like the first time, if it
    /// could be one: full size, from the refused address, within the replay budget.
    pub(super) fn refuse_again(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram_len: usize,
        dcid: &ConnectionId,
        refused: Refused,
    ) -> Verdict {
        if self.config.refusal == RefusalMode::Drop
            || datagram_len < MIN_INITIAL_DATAGRAM
            || from != refused.client
        {
            return Verdict::Drop(DropReason::RecentlyRefused);
        }
        // Building a refusal costs a key derivation: it draws on the replay budget, never
        // on the new-session one.
        if !self.refusal_bucket.take(now) {
            return Verdict::Drop(DropReason::RecentlyRefused);
        }
        let datagram = self.refusal_packet(refused.version, dcid, &refused.client_scid);
        self.commands
            .push_back(Command::Transmit { to: from, datagram });
        Verdict::Answered
    }

    /// A server Initial carrying CONNECTION_CLOSE with CONNECTION_REFUSED, protected with
    /// the server Initial keys of the client's original DCID (RFC 9000 §10.2.3 allows
    /// closing in Initial packets before the handshake is done).
    pub(super) fn refusal_packet(
        &mut self,
        version: Version,
        original_dcid: &ConnectionId,
        client_scid: &ConnectionId,
    ) -> Bytes {
        let keys = Keys::initial(version, original_dcid.as_bytes(), Side::Server);
        let scid = self.random().to_be_bytes();
        let mut payload = Vec::with_capacity(8);
        write_connection_close(CONNECTION_REFUSED, 0, &mut payload);
        let mut out = Vec::with_capacity(64);
        let spec = LongPacketSpec {
            ty: LongType::Initial,
            dcid: client_scid.as_bytes(),
            scid: &scid,
            token: &[],
            packet_number: 0,
            pn_len: 1,
        };
        seal_long_packet(&keys, &spec, &payload, &mut out);
        out.into()
    }
}
