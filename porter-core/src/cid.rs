//! The connection-ID table: which session each client-visible Destination Connection ID
//! belongs to, and which CID lengths are in use (short headers do not carry the length,
//! so the relay tries each length it knows, longest first).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::ids::SessionId;
use crate::wire::{ConnectionId, MAX_CID_LEN};

/// A table key that hashes only a CID's bytes (a [`ConnectionId`]'s derived `Hash` also
/// feeds its unused padding, up to 20 bytes, through SipHash on every lookup). The table
/// keeps SipHash with a random key: clients choose the original DCIDs it stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key(ConnectionId);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

#[derive(Debug, Default)]
pub(crate) struct CidTable {
    map: HashMap<Key, SessionId>,
    /// How many CIDs of each length are in the map.
    len_counts: [usize; MAX_CID_LEN + 1],
    /// Bit `n` set when some CID of length `n` is in the map.
    lens: u32,
}

impl CidTable {
    pub(crate) fn get(&self, cid: &ConnectionId) -> Option<SessionId> {
        self.map.get(&Key(*cid)).copied()
    }

    /// Maps `cid` to `session` unless it is empty or already taken.
    pub(crate) fn insert(&mut self, cid: ConnectionId, session: SessionId) -> bool {
        if cid.is_empty() || self.map.contains_key(&Key(cid)) {
            return false;
        }
        self.map.insert(Key(cid), session);
        self.len_counts[cid.len()] += 1;
        self.lens |= 1 << cid.len();
        true
    }

    pub(crate) fn remove(&mut self, cid: &ConnectionId) {
        if self.map.remove(&Key(*cid)).is_some() {
            self.len_counts[cid.len()] -= 1;
            if self.len_counts[cid.len()] == 0 {
                self.lens &= !(1 << cid.len());
            }
        }
    }

    /// Finds the session of a short-header packet by trying each CID length in use,
    /// longest first.
    pub(crate) fn lookup_short(&self, datagram: &[u8]) -> Option<(SessionId, ConnectionId)> {
        let mut lens = self.lens;
        while lens != 0 {
            let len = (31 - lens.leading_zeros()) as usize;
            lens &= !(1 << len);
            let Some(bytes) = datagram.get(1..1 + len) else {
                continue;
            };
            let cid = ConnectionId::new(bytes)?;
            if let Some(&session) = self.map.get(&Key(cid)) {
                return Some((session, cid));
            }
        }
        None
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(bytes: &[u8]) -> ConnectionId {
        ConnectionId::new(bytes).unwrap()
    }

    #[test]
    fn short_headers_try_each_length_in_use_longest_first() {
        let mut t = CidTable::default();
        assert!(t.insert(cid(&[1; 4]), SessionId(1)));
        assert!(t.insert(cid(&[1; 8]), SessionId(2)));
        assert!(!t.insert(cid(&[1; 8]), SessionId(3)), "taken");
        assert!(!t.insert(ConnectionId::EMPTY, SessionId(3)));
        let d = [0x40, 1, 1, 1, 1, 1, 1, 1, 1, 9];
        assert_eq!(t.lookup_short(&d), Some((SessionId(2), cid(&[1; 8]))));
        t.remove(&cid(&[1; 8]));
        assert_eq!(t.lookup_short(&d), Some((SessionId(1), cid(&[1; 4]))));
        assert_eq!(t.lookup_short(&d[..4]), None, "too short for any length");
        t.remove(&cid(&[1; 4]));
        assert_eq!((t.len(), t.lens), (0, 0));
        assert_eq!(t.lookup_short(&d), None);
    }
}
