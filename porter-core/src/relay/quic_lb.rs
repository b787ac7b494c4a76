//! Server-ID routing with QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21).
//!
//! A client that changes address and connection ID at once (Wi-Fi to 5G) sends from an
//! unknown address with a CID the relay never saw: the CID came in an encrypted
//! NEW_CONNECTION_ID frame. When the backends encode a server ID in the CIDs they issue,
//! the relay decodes such a DCID (long or short header) whose first octet names a
//! configured config ID, and the server ID picks the backend: the datagram goes there on
//! a new path (its own upstream socket), so the backend sees the move as a new 4-tuple
//! and validates it. Nothing per connection is needed, so any relay instance with the
//! same configuration routes it.
//!
//! Such a session is adopted on the word of the datagram alone: it lives only for the
//! handshake timeout until its backend answers on it (a backend answers only datagrams of
//! its connections), and it counts against `max_sessions` and the new-sessions rate like
//! any other. CIDs whose config bits are `0b111` (unroutable), name no configured config,
//! or carry a server ID no backend has fall back to the other rules
//! ([`super::follow`]) and are counted.
//!
//! Server IDs come from the configuration for simple routes. For game servers allocated
//! from Agones, the allocation answer may name the game server's server ID
//! ([`Relay::complete_allocation_with_server_id`]); it routes to that game server for as
//! long as the game server has sessions (the table is bounded by `max_sessions`).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use porter_quic_lb::{Config, Decoder, NotRoutable, ServerId};

use super::output::{Command, CompleteAllocationError, DropReason, Notification, Verdict};
use super::Relay;
use crate::ids::{AllocationId, BackendAddr, ClientAddr, PathId, SessionId};
use crate::session::{Path, PathList, Session, SessionState, Traffic};
use crate::wire::{ConnectionId, Version};

/// The QUIC-LB configurations the backends use and the backend of each server ID: what
/// the relay needs to route a CID by its content. Empty by default (no server-ID
/// routing).
#[derive(Clone, Debug, Default)]
pub struct QuicLbRouting {
    decoder: Decoder,
    servers: Vec<(ServerId, BackendAddr)>,
}

impl QuicLbRouting {
    /// No configurations, no servers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a configuration (replacing one with the same config ID); returns the one it
    /// replaced.
    pub fn insert_config(&mut self, config: Config) -> Option<Config> {
        self.decoder.insert(config)
    }

    /// Names the backend of a server ID (replacing an earlier one for the same ID).
    pub fn insert_server(&mut self, server_id: ServerId, backend: BackendAddr) {
        self.servers.retain(|(id, _)| *id != server_id);
        self.servers.push((server_id, backend));
    }

    /// Whether any configuration is set (otherwise nothing is decoded).
    pub fn is_enabled(&self) -> bool {
        self.decoder.configs().next().is_some()
    }

    /// The configurations, by config ID.
    pub fn configs(&self) -> impl Iterator<Item = &Config> + '_ {
        self.decoder.configs()
    }

    /// The server IDs and their backends.
    pub fn servers(&self) -> &[(ServerId, BackendAddr)] {
        &self.servers
    }

    /// Where `cid` (the DCID of a long header, or everything after a short header's
    /// first octet) routes, and the CID's length; or why it does not.
    pub fn route(&self, cid: &[u8]) -> Result<(BackendAddr, usize), QuicLbMiss> {
        let (server_id, len) = self.decode(cid)?;
        self.backend_of(server_id)
            .map(|backend| (backend, len))
            .ok_or(QuicLbMiss::UnknownServer)
    }

    /// The server ID in `cid` and the CID's length.
    fn decode(&self, cid: &[u8]) -> Result<(ServerId, usize), QuicLbMiss> {
        let route = self.decoder.decode(cid).map_err(|e| match e {
            NotRoutable::Unroutable => QuicLbMiss::Unroutable,
            NotRoutable::UnknownConfig(_) => QuicLbMiss::UnknownConfig,
            _ => QuicLbMiss::Malformed,
        })?;
        Ok((route.server_id, route.cid_len))
    }

    /// The configured backend of `server_id`.
    fn backend_of(&self, server_id: ServerId) -> Option<BackendAddr> {
        self.servers
            .iter()
            .find(|(id, _)| *id == server_id)
            .map(|(_, backend)| *backend)
    }

    /// Whether some configuration has server IDs of this length.
    fn fits(&self, server_id: &ServerId) -> bool {
        self.decoder.configs().any(|c| c.fits(server_id))
    }
}

impl PartialEq for QuicLbRouting {
    fn eq(&self, other: &Self) -> bool {
        let configs = |r: &Self| {
            r.decoder
                .configs()
                .map(|c| (c.id(), c.server_id_len(), c.nonce_len(), c.key().cloned()))
                .collect::<Vec<_>>()
        };
        self.servers == other.servers && configs(self) == configs(other)
    }
}

impl Eq for QuicLbRouting {}

/// Why a CID did not route by its server ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuicLbMiss {
    /// Config bits `0b111`: unroutable by definition.
    Unroutable,
    /// The config bits name no configured config (a client-chosen CID, or not ours).
    UnknownConfig,
    /// Shorter than its config's CID length, or empty.
    Malformed,
    /// A server ID no backend has.
    UnknownServer,
}

/// Counters of server-ID routing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicLbCounters {
    /// Datagrams routed to a backend by their CID's server ID.
    pub routed: u64,
    /// CIDs with config bits `0b111` (fell back to the other rules).
    pub unroutable: u64,
    /// CIDs naming no configured config (fell back).
    pub unknown_config: u64,
    /// CIDs too short for their config (fell back).
    pub malformed: u64,
    /// Server IDs no backend has (fell back).
    pub unknown_server: u64,
    /// Server IDs of allocated game servers routed now (a gauge).
    pub allocated_server_ids: usize,
    /// Allocation answers whose server ID was not hex or of a length no configuration
    /// has (the game server was used without server-ID routing).
    pub invalid_server_ids: u64,
    /// Allocation answers whose server ID already named another backend (in the
    /// configuration, or another allocated game server with sessions); the earlier one
    /// kept it.
    pub server_id_conflicts: u64,
}

/// What became of the server ID in an allocation answer
/// ([`Relay::complete_allocation_with_server_id`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerIdBinding {
    /// It routes to the game server while the game server has sessions.
    Bound,
    /// No QUIC-LB configuration: nothing decodes CIDs, so the ID is not used.
    Disabled,
    /// Not hex, or of a length no configuration has (counted).
    Invalid,
    /// It names another backend already (counted); that binding stays.
    Conflict,
    /// The answer opened no session, so there is nothing to route.
    Unused,
}

/// Server IDs learned from allocation answers, each with its backend and the sessions
/// that keep it: an entry lives while one of its sessions does.
#[derive(Debug, Default)]
pub(super) struct AllocatedServerIds {
    by_id: HashMap<ServerId, (BackendAddr, usize)>,
    of_session: HashMap<SessionId, ServerId>,
}

impl AllocatedServerIds {
    /// The server IDs bound now.
    pub(super) fn ids(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.by_id.keys().copied()
    }

    fn backend_of(&self, id: ServerId) -> Option<BackendAddr> {
        self.by_id.get(&id).map(|(backend, _)| *backend)
    }

    /// `session` on `backend` keeps `id`; `false` if `id` names another backend.
    fn attach(&mut self, id: ServerId, backend: BackendAddr, session: SessionId) -> bool {
        let (bound, sessions) = self.by_id.entry(id).or_insert((backend, 0));
        if *bound != backend {
            return false;
        }
        if self.of_session.insert(session, id).is_none() {
            *sessions += 1;
        }
        true
    }

    /// `session` ended: its ID goes with its last session.
    pub(super) fn detach(&mut self, session: SessionId) {
        let Some(id) = self.of_session.remove(&session) else {
            return;
        };
        if let Some((_, sessions)) = self.by_id.get_mut(&id) {
            *sessions -= 1;
            if *sessions == 0 {
                self.by_id.remove(&id);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

impl Relay {
    /// Routes a datagram with an unknown DCID by the server ID in it, if server-ID routing
    /// is configured and the CID carries a known one; `None` to fall back.
    /// The CID and game server of a DCID whose server ID this relay bound to an
    /// allocation (reads only).
    pub(super) fn allocated_server_id_of(
        &self,
        cid_bytes: &[u8],
    ) -> Option<(ConnectionId, BackendAddr)> {
        if !self.config.quic_lb.is_enabled() {
            return None;
        }
        let (id, len) = self.config.quic_lb.decode(cid_bytes).ok()?;
        let backend = self.allocated_server_ids.backend_of(id)?;
        Some((ConnectionId::new(cid_bytes.get(..len)?)?, backend))
    }

    /// A connection adopted from another shard that routed its CID by a server ID it
    /// had bound to an allocated game server: routed by that server ID (counted so), and
    /// the ID is bound here too while this session lives.
    pub(super) fn moved_server_id(
        &mut self,
        cid: ConnectionId,
        backend: BackendAddr,
        session: SessionId,
    ) {
        if !self.config.quic_lb.is_enabled() {
            return;
        }
        let Ok((id, _)) = self.config.quic_lb.decode(cid.as_bytes()) else {
            return;
        };
        if self.config.quic_lb.backend_of(id).is_some() {
            return;
        }
        self.stats.quic_lb.routed += 1;
        if !self.allocated_server_ids.attach(id, backend, session) {
            self.stats.quic_lb.server_id_conflicts += 1;
        }
    }

    pub(super) fn route_by_server_id(
        &mut self,
        now: Instant,
        from: ClientAddr,
        cid_bytes: &[u8],
        datagram: &[u8],
    ) -> Option<Verdict> {
        if !self.config.quic_lb.is_enabled() {
            return None;
        }
        let found = self.config.quic_lb.decode(cid_bytes).and_then(|(id, len)| {
            match self.config.quic_lb.backend_of(id) {
                Some(backend) => Ok((backend, len, None)),
                None => self
                    .allocated_server_ids
                    .backend_of(id)
                    .map(|backend| (backend, len, Some(id)))
                    .ok_or(QuicLbMiss::UnknownServer),
            }
        });
        let (backend, len, allocated) = match found {
            Ok(found) => found,
            Err(miss) => {
                let c = &mut self.stats.quic_lb;
                match miss {
                    QuicLbMiss::Unroutable => c.unroutable += 1,
                    QuicLbMiss::UnknownConfig => c.unknown_config += 1,
                    QuicLbMiss::Malformed => c.malformed += 1,
                    QuicLbMiss::UnknownServer => c.unknown_server += 1,
                }
                return None;
            }
        };
        let cid = ConnectionId::new(cid_bytes.get(..len)?)?;
        self.stats.quic_lb.routed += 1;
        // A session of this address on that backend already: the client switched CID on
        // a path the relay knows.
        let mut mine = self.by_client.ids(&from).filter(|id| {
            self.sessions
                .get(id)
                .is_some_and(|s| s.state == SessionState::Established && s.backend == Some(backend))
        });
        let (first, second) = (mine.next(), mine.next());
        drop(mine);
        if let (Some(id), None) = (first, second) {
            self.learn_cid(id, cid);
            return Some(self.client_to_session(now, from, id, datagram, None, None));
        }
        let verdict = self.adopt(
            now,
            from,
            cid,
            backend,
            vec![Bytes::copy_from_slice(datagram)],
            None,
            false,
        );
        if let (Verdict::Held { session }, Some(id)) = (&verdict, allocated) {
            // The adopted session is on that game server too: it keeps the ID.
            self.allocated_server_ids.attach(id, backend, *session);
        }
        Some(verdict)
    }

    /// As [`Self::complete_allocation`] with `Ok(backend)`, for an answer that names the
    /// game server's QUIC-LB server ID (hex, as the allocator gave it, e.g. from a label
    /// of the game server): while that game server has sessions, an unknown CID carrying
    /// the ID routes to it, so its clients may change address and CID at once. An ID
    /// that is not hex, has a length no configuration has, or already names another
    /// backend is counted and not used; the allocation is used either way.
    pub fn complete_allocation_with_server_id(
        &mut self,
        now: Instant,
        id: AllocationId,
        backend: BackendAddr,
        server_id: &str,
    ) -> Result<ServerIdBinding, CompleteAllocationError> {
        let session = self.allocations.get(&id).copied();
        self.complete_allocation(now, id, Ok(backend))?;
        let lb = &self.config.quic_lb;
        if !lb.is_enabled() {
            return Ok(ServerIdBinding::Disabled);
        }
        let parsed = server_id.trim().parse::<ServerId>().ok();
        let Some(server_id) = parsed.filter(|id| lb.fits(id)) else {
            self.stats.quic_lb.invalid_server_ids += 1;
            return Ok(ServerIdBinding::Invalid);
        };
        let Some(session) = session.filter(|s| {
            self.sessions
                .get(s)
                .is_some_and(|s| s.backend == Some(backend))
        }) else {
            return Ok(ServerIdBinding::Unused);
        };
        let bound = match lb.backend_of(server_id) {
            Some(configured) => configured == backend,
            None => self
                .allocated_server_ids
                .attach(server_id, backend, session),
        };
        if bound {
            Ok(ServerIdBinding::Bound)
        } else {
            self.stats.quic_lb.server_id_conflicts += 1;
            Ok(ServerIdBinding::Conflict)
        }
    }

    /// A session for a connection the relay learns of from its CID alone (its server ID,
    /// or the directory): routed at once, on one path from `from` that carries
    /// `datagrams`, unconfirmed until its backend answers. `reserved`: the session ID a
    /// directory lookup promised its held datagrams. `moved`: the connection comes from
    /// another shard of this host, where it was counted as opened: here it counts as a
    /// path opened (a client that moved).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adopt(
        &mut self,
        now: Instant,
        from: ClientAddr,
        cid: ConnectionId,
        backend: BackendAddr,
        datagrams: Vec<Bytes>,
        reserved: Option<SessionId>,
        moved: bool,
    ) -> Verdict {
        if !self.accepting {
            return Verdict::Drop(DropReason::Draining);
        }
        if self.sessions.len() >= self.config.max_sessions {
            return Verdict::Drop(DropReason::SessionLimit);
        }
        if self.sockets_exhausted() {
            return Verdict::Drop(DropReason::SocketLimit);
        }
        if let Err(reason) = self.admit_session(from) {
            return Verdict::Drop(reason);
        }
        if !self.take_session_token(now, from) {
            return Verdict::Drop(DropReason::RateLimited);
        }
        let id = reserved.unwrap_or_else(|| self.take_session_id());
        let path = PathId::new(id, 0);
        let mut to_backend = Traffic::default();
        for d in &datagrams {
            to_backend.add(d.len());
            self.stats.to_backend.add(d.len());
        }
        self.sessions.insert(
            id,
            Session {
                id,
                client: from,
                backend: Some(backend),
                state: SessionState::Established,
                // Short headers carry no version; QUIC-LB CIDs are version-independent.
                version: Version::V1,
                original_dcid: cid,
                client_scid: ConnectionId::EMPTY,
                sni: None,
                cids: vec![cid],
                server_cid_len: u8::try_from(cid.len()).ok(),
                created: now,
                last_activity: now,
                to_backend,
                to_client: Traffic::default(),
                paths: {
                    let mut paths = PathList::default();
                    paths.push(Path {
                        id: path,
                        client: from,
                        last_client: now,
                    });
                    paths
                },
                confirmed: false,
                next_path: 1,
                validated: false,
                issued: Vec::new(),
                source: from.0.ip(),
            },
        );
        self.cids.insert(cid, id);
        self.path_count += 1;
        self.index_client(id, from);
        self.count_unvalidated(from);
        let deadline = now + self.config.handshake_timeout.min(self.config.idle_timeout);
        self.timers.push(Reverse((deadline, id)));
        if moved {
            self.stats.paths_opened += 1;
        } else {
            self.stats.sessions_opened += 1;
        }
        self.routes.session_started(backend);
        self.notifications.push_back(Notification::SessionOpened {
            session: id,
            client: from,
            backend,
            sni: None,
            alpn: Vec::new(),
            version: Version::V1,
            // Routed by its first datagram: no wait.
            waited: std::time::Duration::ZERO,
        });
        if moved {
            // For the host, the client opened a path (on this shard).
            self.notifications.push_back(Notification::PathOpened {
                session: id,
                path,
                client: from,
            });
        }
        self.commands.push_back(Command::OpenUpstream {
            session: id,
            path,
            client: from,
            backend,
            datagrams,
        });
        self.announce_cids(id, vec![cid]);
        Verdict::Held { session: id }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use porter_quic_lb::Key;

    use super::super::follow::tests::{add, addr, ROUTED};
    use super::super::RelayConfig;
    use super::*;
    use crate::session::CloseReason;

    const A: &str = "192.0.2.9:443"; // the backend `add` gives its sessions
    const B: &str = "192.0.2.10:443";

    fn backend(text: &str) -> BackendAddr {
        BackendAddr(text.parse().unwrap())
    }

    fn config(key: Option<Key>) -> Config {
        // Server ID 2 octets; with a key, 14 octets of nonce make it single-pass.
        Config::new(1, 2, if key.is_some() { 14 } else { 6 }, key).unwrap()
    }

    fn relay(key: Option<Key>) -> Relay {
        let mut routing = QuicLbRouting::new();
        routing.insert_config(config(key));
        routing.insert_server(ServerId::new(&[1, 1]).unwrap(), backend(A));
        routing.insert_server(ServerId::new(&[2, 2]).unwrap(), backend(B));
        Relay::new(RelayConfig {
            quic_lb: routing,
            ..RelayConfig::default()
        })
    }

    fn short(cid: &[u8]) -> Vec<u8> {
        let mut d = vec![0x40u8];
        d.extend_from_slice(cid);
        d.extend_from_slice(&[9; 40]);
        d
    }

    fn cid_for(key: Option<Key>, server: [u8; 2], nonce: u8) -> Vec<u8> {
        let config = config(key);
        let nonce = vec![nonce; config.nonce_len()];
        config.encode(&server, &nonce).unwrap().as_bytes().to_vec()
    }

    #[test]
    fn an_unknown_cid_naming_a_server_opens_a_session_to_it_from_any_address() {
        for key in [None, Some(Key::new([7; 16]))] {
            let mut relay = relay(key.clone());
            let now = Instant::now();
            // Another client of the same IP is live on A: irrelevant, the CID says B.
            add(&mut relay, 1, "198.51.100.1:1000", ROUTED, Some(8));
            let cid = cid_for(key.clone(), [2, 2], 5);
            let moved = addr("203.0.113.9:5000");
            let v = relay.handle_client_datagram(now, moved, &short(&cid));
            let Verdict::Held { session } = v else {
                panic!("{v:?}")
            };
            let commands: Vec<Command> = std::iter::from_fn(|| relay.poll_command()).collect();
            assert!(
                matches!(&commands[..], [Command::OpenUpstream { session: s, client, backend: b, datagrams, .. }]
                    if *s == session && *client == moved && *b == backend(B) && datagrams.len() == 1),
                "{commands:?}"
            );
            assert_eq!(relay.stats().quic_lb.routed, 1);
            // Its next datagrams take the path; the other session is untouched.
            let path = relay.session(session, now).unwrap().paths[0].id;
            assert_eq!(
                relay.handle_client_datagram(now, moved, &short(&cid)),
                Verdict::ToBackend {
                    session,
                    path,
                    backend: backend(B)
                }
            );
            let other = relay.session(SessionId(1), now).unwrap();
            assert_eq!(
                (other.paths.len(), other.client),
                (1, addr("198.51.100.1:1000"))
            );
            // The backend answers: confirmed, it lives on past the handshake timeout.
            assert!(matches!(
                relay.handle_backend_datagram(now, path, &[0x40; 30]),
                Verdict::ToClient { client, .. } if client == moved
            ));
            relay.handle_timeout(now + relay.config().handshake_timeout);
            assert!(relay.session(session, now).is_some());
        }
    }

    #[test]
    fn an_adopted_session_its_backend_never_answers_ends_after_the_handshake_timeout() {
        let mut relay = relay(None);
        let now = Instant::now();
        let v = relay.handle_client_datagram(
            now,
            addr("203.0.113.9:5000"),
            &short(&cid_for(None, [1, 1], 3)),
        );
        let Verdict::Held { session } = v else {
            panic!("{v:?}")
        };
        let timeout = relay.config().handshake_timeout;
        assert_eq!(relay.poll_timeout(), Some(now + timeout));
        relay.handle_timeout(now + timeout - Duration::from_millis(1));
        assert!(relay.session(session, now).is_some());
        relay.handle_timeout(now + timeout);
        assert!(relay.session(session, now).is_none());
        let closed = std::iter::from_fn(|| relay.poll_notification()).any(|n| {
            matches!(
                n,
                Notification::SessionClosed {
                    reason: CloseReason::HandshakeTimeout,
                    ..
                }
            )
        });
        assert!(closed);
    }

    #[test]
    fn a_cid_naming_a_server_of_a_session_at_that_address_joins_it() {
        let mut relay = relay(None);
        let now = Instant::now();
        add(&mut relay, 1, "198.51.100.1:1000", ROUTED, Some(9));
        let cid = cid_for(None, [1, 1], 4);
        let v = relay.handle_client_datagram(now, addr("198.51.100.1:1000"), &short(&cid));
        assert!(
            matches!(
                v,
                Verdict::ToBackend {
                    session: SessionId(1),
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(relay.session_count(), 1);
        assert_eq!(
            relay.cids.get(&ConnectionId::new(&cid).unwrap()),
            Some(SessionId(1))
        );
    }

    #[test]
    fn unroutable_unknown_and_foreign_cids_fall_back_and_are_counted() {
        let mut relay = relay(None);
        let now = Instant::now();
        let from = addr("203.0.113.9:5000");
        let mut unroutable = cid_for(None, [1, 1], 1);
        unroutable[0] |= 0b1110_0000;
        let mut other_config = cid_for(None, [1, 1], 1);
        other_config[0] = (other_config[0] & 0x1f) | (3 << 5);
        let unknown_server = cid_for(None, [3, 3], 1);
        for cid in [&unroutable, &other_config, &unknown_server] {
            assert_eq!(
                relay.handle_client_datagram(now, from, &short(cid)),
                Verdict::Drop(DropReason::UnknownConnection)
            );
        }
        let c = relay.stats().quic_lb;
        assert_eq!(
            (c.routed, c.unroutable, c.unknown_config, c.unknown_server),
            (0, 1, 1, 1)
        );
        assert_eq!(relay.session_count(), 0);
        // Too short for its config: counted, never a panic.
        let short_cid = &cid_for(None, [1, 1], 1)[..4];
        let _ = relay.handle_client_datagram(now, from, &[&[0x40][..], short_cid].concat());
        assert_eq!(relay.stats().quic_lb.malformed, 1);
    }
}
