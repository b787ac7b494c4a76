//! Matching a short-header datagram to its session, and the rules for a Destination CID
//! the relay has not seen.
//!
//! Known CIDs route directly: the client's original DCID until the backend answers, then
//! the Source CIDs the backend put in its long headers (see [`super::backend`]). Short
//! headers carry no CID length, so each length in use is tried.
//!
//! An unknown DCID means the client switched to a CID issued in an encrypted
//! NEW_CONNECTION_ID frame (RFC 9000 §5.1.1), which the relay cannot read. From a known
//! address it is that address's session, if the address has exactly one: connections
//! sharing a socket cannot be told apart, and a guess would send one connection's
//! datagrams to another's backend. From a new port of a known IP it is a migration
//! (quinn's `rebind` switches CID and socket at once); it is followed only when exactly one
//! routed session of that IP can be meant, and only ever on a new path of that session
//! (see [`super::path`]): the backend, not the relay, decides whether the datagram belongs
//! to the connection, and no existing path is redirected. A CID of a session that ended
//! is never followed. Everything else is dropped and counted: only CIDs that encode their
//! server (QUIC-LB) could route it, or, for a NAT rebinding towards another relay
//! instance, the connection-ID directory (see [`super::directory`]).

use std::time::Instant;

use super::output::{DropReason, Verdict};
use super::Relay;
use crate::ids::{ClientAddr, SessionId};
use crate::session::SessionState;
use crate::wire::ConnectionId;

impl Relay {
    pub(super) fn client_short(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
    ) -> Verdict {
        self.short_with(now, from, datagram, false)
    }

    /// A short header; `settled` when the host has already asked every shard about it
    /// ([`Relay::complete_lookup_here`]): the IP is then followed here even when sharded,
    /// and no second lookup starts.
    pub(super) fn short_with(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
        settled: bool,
    ) -> Verdict {
        if let Some((id, cid)) = self.cids.lookup_short(datagram) {
            return self.client_to_session(now, from, id, datagram, None, Some(cid));
        }
        // A late datagram of a connection that ended: no other session may adopt it.
        if self.of_ended_session(datagram) {
            return Verdict::Drop(DropReason::EndedConnection);
        }
        // A CID that names its server (QUIC-LB) goes there, whatever the address.
        let dcid = datagram.get(1..).unwrap_or_default();
        if let Some(verdict) = self.route_by_server_id(now, from, dcid, datagram) {
            return verdict;
        }
        // Unknown DCID: see the module docs for when it is followed.
        let id = match self.established_at(from) {
            (1, id) => id,
            // Sharded, another shard may hold a session of this IP too: only the host,
            // asking every shard in the lookup, can tell that this one is the only one.
            (0, _) if settled || !self.config.shard.is_sharded() => {
                self.sole_session_of_ip(from, datagram.len().saturating_sub(1))
            }
            _ => None,
        };
        let Some(id) = id else {
            if settled {
                return Verdict::Drop(DropReason::UnknownConnection);
            }
            // Perhaps another shard's or instance's connection, whose client's NAT
            // rebound: ask the directory (see [`super::directory`]) when lookups are on.
            return self
                .look_up(now, from, datagram)
                .unwrap_or(Verdict::Drop(DropReason::UnknownConnection));
        };
        let learn = self.sessions.get(&id).and_then(|s| s.server_cid_len);
        if let Some(len) = learn.filter(|&l| l > 0) {
            if let Some(cid) = datagram
                .get(1..1 + usize::from(len))
                .and_then(ConnectionId::new)
            {
                self.learn_cid(id, cid);
            }
        }
        // A CID learned from the client proves nothing: no validation by it.
        self.client_to_session(now, from, id, datagram, None, None)
    }

    /// The one routed session of `from`'s IP that an unknown CID from a new port can
    /// belong to: it uses server CIDs of a known, non-zero length that the datagram can
    /// hold (`dcid_room`: its bytes after the first octet). `None` when there are none or
    /// several: guessing could move another client's session.
    pub(super) fn sole_session_of_ip(
        &self,
        from: ClientAddr,
        dcid_room: usize,
    ) -> Option<SessionId> {
        let mut found = None;
        for id in self.by_ip.ids(&from.0.ip()) {
            let Some(s) = self.sessions.get(&id) else {
                continue;
            };
            let cid_len = usize::from(s.server_cid_len.unwrap_or(0));
            if s.state != SessionState::Established || cid_len == 0 || dcid_room < cid_len {
                continue;
            }
            if found.replace(s.id).is_some_and(|f| f != s.id) {
                return None;
            }
        }
        found
    }

    /// How many routed sessions this address has, and one of them.
    pub(super) fn established_at(&self, from: ClientAddr) -> (usize, Option<SessionId>) {
        let mut routed = self.by_client.ids(&from).filter(|id| {
            self.sessions
                .get(id)
                .is_some_and(|s| s.state == SessionState::Established)
        });
        let first = routed.next();
        (usize::from(first.is_some()) + routed.count(), first)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::*;
    use crate::ids::BackendAddr;
    use crate::relay::RelayConfig;
    use crate::session::{Path, PathList, Session, Traffic};
    use crate::wire::Version;

    pub(in crate::relay) fn addr(text: &str) -> ClientAddr {
        ClientAddr(text.parse::<SocketAddr>().unwrap())
    }

    /// Puts a session straight into the relay's tables, as `new_connection` and
    /// `establish` would leave it.
    pub(in crate::relay) fn add(
        relay: &mut Relay,
        id: u64,
        client: &str,
        state: SessionState,
        cid_len: Option<u8>,
    ) {
        let (id, client, now) = (SessionId(id), addr(client), Instant::now());
        let dcid = ConnectionId::new(&id.0.to_be_bytes()).unwrap();
        relay.sessions.insert(
            id,
            Session {
                id,
                client,
                backend: (state == SessionState::Established)
                    .then(|| BackendAddr("192.0.2.9:443".parse().unwrap())),
                state,
                version: Version::V1,
                original_dcid: dcid,
                client_scid: ConnectionId::new(&[]).unwrap(),
                sni: None,
                cids: vec![dcid],
                server_cid_len: cid_len,
                created: now,
                last_activity: now,
                to_backend: Traffic::default(),
                to_client: Traffic::default(),
                paths: PathList::default(),
                confirmed: true,
                next_path: 0,
                validated: state == SessionState::Established,
                issued: Vec::new(),
                source: client.0.ip(),
            },
        );
        relay.index_client(id, client);
        if state != SessionState::Established {
            relay.unvalidated.add(client.0.ip());
        }
        relay.next_session = relay.next_session.max(id.0 + 1);
        if state == SessionState::Established {
            // The session's first path.
            let session = relay.sessions.get_mut(&id).unwrap();
            let path = session.new_path_id().unwrap();
            session.paths.push(Path {
                id: path,
                client,
                last_client: now,
            });
            relay.path_count += 1;
        }
    }

    pub(in crate::relay) const ROUTED: SessionState = SessionState::Established;
    const WAITING: SessionState = SessionState::AwaitingClientHello;

    #[test]
    fn an_address_counts_only_its_routed_sessions() {
        let mut relay = Relay::new(RelayConfig::default());
        assert_eq!(relay.established_at(addr("198.51.100.1:1000")), (0, None));
        add(&mut relay, 1, "198.51.100.1:1000", WAITING, None);
        assert_eq!(relay.established_at(addr("198.51.100.1:1000")), (0, None));
        add(&mut relay, 2, "198.51.100.1:1000", ROUTED, Some(8));
        assert_eq!(
            relay.established_at(addr("198.51.100.1:1000")),
            (1, Some(SessionId(2)))
        );
        add(&mut relay, 3, "198.51.100.1:1000", ROUTED, Some(8));
        assert_eq!(relay.established_at(addr("198.51.100.1:1000")).0, 2);
        // Another port of the same IP is another address.
        assert_eq!(relay.established_at(addr("198.51.100.1:1001")), (0, None));
    }

    #[test]
    fn a_new_port_is_followed_only_to_the_one_session_that_can_be_meant() {
        let mut relay = Relay::new(RelayConfig::default());
        let datagram = [0x40u8; 40];
        let moved = addr("198.51.100.1:2000");
        assert_eq!(
            relay.sole_session_of_ip(moved, datagram.len() - 1),
            None,
            "no session"
        );
        // Not routed, or zero-length server CIDs (nothing to learn), or CIDs longer than
        // the datagram: none of these can be meant.
        add(&mut relay, 1, "198.51.100.1:1000", WAITING, Some(8));
        add(&mut relay, 2, "198.51.100.1:1001", ROUTED, Some(0));
        add(&mut relay, 3, "198.51.100.1:1002", ROUTED, None);
        add(&mut relay, 4, "198.51.100.1:1003", ROUTED, Some(20));
        assert_eq!(relay.sole_session_of_ip(moved, 19), None);
        assert_eq!(
            relay.sole_session_of_ip(moved, datagram.len() - 1),
            Some(SessionId(4))
        );
        // A second candidate makes it ambiguous: no guess.
        add(&mut relay, 5, "198.51.100.1:1004", ROUTED, Some(8));
        assert_eq!(relay.sole_session_of_ip(moved, datagram.len() - 1), None);
        // Sessions of other IPs never count.
        let other = addr("203.0.113.7:2000");
        assert_eq!(relay.sole_session_of_ip(other, datagram.len() - 1), None);
    }

    #[test]
    fn an_unknown_cid_from_an_address_with_several_sessions_is_dropped() {
        let mut relay = Relay::new(RelayConfig::default());
        add(&mut relay, 1, "198.51.100.1:1000", ROUTED, Some(8));
        add(&mut relay, 2, "198.51.100.1:1000", ROUTED, Some(8));
        let mut datagram = vec![0x40u8];
        datagram.extend_from_slice(&[0xee; 8]);
        datagram.extend_from_slice(&[0; 30]);
        let verdict = relay.client_short(Instant::now(), addr("198.51.100.1:1000"), &datagram);
        assert_eq!(verdict, Verdict::Drop(DropReason::UnknownConnection));
        // With one session there, the new CID is learned and the datagram forwarded.
        relay.close(
            SessionId(2),
            crate::session::CloseReason::Closed,
            Instant::now(),
        );
        let verdict = relay.client_short(Instant::now(), addr("198.51.100.1:1000"), &datagram);
        assert!(matches!(
            verdict,
            Verdict::ToBackend {
                session: SessionId(1),
                ..
            }
        ));
        let cid = ConnectionId::new(&[0xee; 8]).unwrap();
        assert_eq!(relay.cids.get(&cid), Some(SessionId(1)));
    }
}
