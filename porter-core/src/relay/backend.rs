//! Backend datagrams: forwarded to the client of the path whose upstream socket received
//! them, and read for the connection IDs
//! the backend chooses. Every long header a backend sends (Initial, Handshake, Retry;
//! coalesced ones too) carries its Source CID in the clear (RFC 9000 §17.2), which the
//! client then uses as its Destination CID: the relay learns it, up to
//! `max_cids_per_session`, forgetting the oldest. Until the session is validated it also
//! keeps them apart: a client datagram carrying one validates it (see
//! [`super::admission`]). Backend datagrams never validate a session nor extend an
//! unvalidated one's life.

use std::time::Instant;

use super::output::{Command, DropReason, Verdict};
use super::Relay;
use crate::ids::{PathId, SessionId};
use crate::session::SessionState;
use crate::wire::{self, ConnectionId, Packet, Packets};

impl Relay {
    pub(super) fn backend_datagram(
        &mut self,
        now: Instant,
        path: PathId,
        datagram: &[u8],
    ) -> Verdict {
        // Only routed sessions have paths, so nothing comes from the backend of a session
        // not routed yet: forwarding it would hand the client bytes from nowhere, and
        // learning its CIDs would let them squat the session's table.
        let id = path.session();
        let Some(session) = self
            .sessions
            .get_mut(&id)
            .filter(|s| s.state == SessionState::Established)
        else {
            return Verdict::Drop(DropReason::UnknownSession);
        };
        // The path's own client, and no other: a backend datagram never follows a
        // client to another address (the backend moves to the new path itself, once it
        // has validated it).
        let Some(client) = session
            .paths
            .iter()
            .find(|p| p.id == path)
            .map(|p| p.client)
        else {
            return Verdict::Drop(DropReason::UnknownSession);
        };
        let Some(&first) = datagram.first() else {
            return Verdict::Drop(DropReason::Empty);
        };
        session.last_activity = now;
        session.to_client.add(datagram.len());
        // A session adopted by its CID's server ID: its backend answered, so the
        // datagram decrypted there, which a sender that forged its address cannot make.
        let adopted_answered = !std::mem::replace(&mut session.confirmed, true);
        if adopted_answered {
            self.validate(id);
            // Adopted from another shard: only now, with the backend answering on this
            // shard's path, has the connection moved (a copied datagram it ignores
            // moves nothing).
            if let Some((shard, session)) = self.adopted_from.remove(&id) {
                self.commands
                    .push_back(Command::ConnectionMoved { shard, session });
            }
        }
        if wire::is_long_header(first) {
            let max = self.config.max_cids_per_session.max(1);
            for packet in Packets::new(datagram) {
                match packet {
                    Ok(Packet::Long(long)) => {
                        if let Some(scid) = ConnectionId::new(long.scid) {
                            if let Some(s) = self.sessions.get_mut(&id) {
                                s.server_cid_len = Some(scid.len() as u8);
                                // What validates the session when its client uses it.
                                if !s.validated
                                    && !scid.is_empty()
                                    && scid != s.original_dcid
                                    && !s.issued.contains(&scid)
                                {
                                    if s.issued.len() >= max {
                                        s.issued.remove(0);
                                    }
                                    s.issued.push(scid);
                                }
                            }
                            self.learn_cid(id, scid);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        Verdict::ToClient {
            session: id,
            client,
        }
    }

    /// Maps a connection ID to a session, forgetting the session's oldest CID when it
    /// has too many. A CID already mapped to another session is left alone.
    pub(super) fn learn_cid(&mut self, id: SessionId, cid: ConnectionId) {
        if cid.is_empty() || self.cids.get(&cid).is_some() {
            return;
        }
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if session.cids.len() >= self.config.max_cids_per_session.max(1) {
            let oldest = session.cids.remove(0);
            self.cids.remove(&oldest);
        }
        session.cids.push(cid);
        self.cids.insert(cid, id);
        self.announce_cids(id, vec![cid]);
    }
}
