//! The connection-ID table: which session each client-visible Destination Connection ID
//! belongs to, and which CID lengths are in use (short headers do not carry the length,
//! so the relay tries each length it knows, longest first).

use std::collections::HashMap;

use crate::ids::SessionId;
use crate::wire::{ConnectionId, MAX_CID_LEN};

#[derive(Debug, Default)]
pub(crate) struct CidTable {
    map: HashMap<ConnectionId, SessionId>,
    /// How many CIDs of each length are in the map.
    len_counts: [usize; MAX_CID_LEN + 1],
}

impl CidTable {
    pub(crate) fn get(&self, cid: &ConnectionId) -> Option<SessionId> {
        self.map.get(cid).copied()
    }

    /// Maps `cid` to `session` unless it is empty or already taken.
    pub(crate) fn insert(&mut self, cid: ConnectionId, session: SessionId) -> bool {
        if cid.is_empty() || self.map.contains_key(&cid) {
            return false;
        }
        self.map.insert(cid, session);
        self.len_counts[cid.len()] += 1;
        true
    }

    pub(crate) fn remove(&mut self, cid: &ConnectionId) {
        if self.map.remove(cid).is_some() {
            self.len_counts[cid.len()] -= 1;
        }
    }

    /// Finds the session of a short-header packet by trying each CID length in use.
    pub(crate) fn lookup_short(&self, datagram: &[u8]) -> Option<(SessionId, ConnectionId)> {
        for len in (1..=MAX_CID_LEN).rev() {
            if self.len_counts[len] == 0 {
                continue;
            }
            let Some(bytes) = datagram.get(1..1 + len) else {
                continue;
            };
            let cid = ConnectionId::new(bytes)?;
            if let Some(&session) = self.map.get(&cid) {
                return Some((session, cid));
            }
        }
        None
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
