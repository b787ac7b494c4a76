//! The relay's indexes of sessions by client address and by client IP: which sessions a
//! datagram from an address can belong to (see [`super::follow`]), and how many sessions
//! an address or an IP holds (the caps `max_sessions_per_address` and
//! `max_sessions_per_ip`).
//!
//! A session is listed once per path under each key, so two paths of one session that
//! share an IP count that session once. Insertion, removal and the count of distinct
//! sessions under a key are O(1): closing every session of a busy IP costs one step each,
//! not a scan of the IP's list (which made closing quadratic, under the data-plane lock).

use std::collections::HashMap;
use std::hash::Hash;

use super::budget::IdMap;
use crate::ids::SessionId;

/// The sessions listed under one key, each with how many of its paths are.
#[derive(Debug)]
enum Ids {
    /// Most keys carry one session: no table of their own.
    One(SessionId, u32),
    Many(IdMap<SessionId, u32>),
}

/// Sessions by key (a client address or a client IP).
#[derive(Debug)]
pub(crate) struct SessionIndex<K> {
    map: HashMap<K, Ids>,
}

impl<K> Default for SessionIndex<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> SessionIndex<K> {
    /// Lists `id` under `key` once more (one of its paths has it).
    pub(crate) fn insert(&mut self, key: K, id: SessionId) {
        match self.map.get_mut(&key) {
            None => {
                self.map.insert(key, Ids::One(id, 1));
            }
            Some(Ids::One(one, refs)) if *one == id => *refs += 1,
            Some(entry @ Ids::One(..)) => {
                let Ids::One(one, refs) = *entry else {
                    unreachable!("matched as One")
                };
                let mut many = IdMap::default();
                many.insert(one, refs);
                many.insert(id, 1);
                *entry = Ids::Many(many);
            }
            Some(Ids::Many(many)) => *many.entry(id).or_insert(0) += 1,
        }
    }

    /// Removes one listing of `id` under `key`; the key goes when nothing is left.
    pub(crate) fn remove(&mut self, key: &K, id: SessionId) {
        let Some(entry) = self.map.get_mut(key) else {
            return;
        };
        let empty = match entry {
            Ids::One(one, refs) => {
                if *one == id {
                    *refs -= 1;
                }
                *refs == 0
            }
            Ids::Many(many) => {
                if let Some(refs) = many.get_mut(&id) {
                    *refs -= 1;
                    if *refs == 0 {
                        many.remove(&id);
                    }
                }
                many.is_empty()
            }
        };
        if empty {
            self.map.remove(key);
        }
    }

    /// How many distinct sessions are listed under `key`.
    pub(crate) fn sessions(&self, key: &K) -> usize {
        match self.map.get(key) {
            None => 0,
            Some(Ids::One(..)) => 1,
            Some(Ids::Many(many)) => many.len(),
        }
    }

    /// Whether `id` is listed under `key`.
    pub(crate) fn contains(&self, key: &K, id: SessionId) -> bool {
        match self.map.get(key) {
            None => false,
            Some(Ids::One(one, _)) => *one == id,
            Some(Ids::Many(many)) => many.contains_key(&id),
        }
    }

    /// The distinct sessions listed under `key`, in no particular order.
    pub(crate) fn ids(&self, key: &K) -> impl Iterator<Item = SessionId> + '_ {
        let (one, many) = match self.map.get(key) {
            None => (None, None),
            Some(Ids::One(id, _)) => (Some(*id), None),
            Some(Ids::Many(many)) => (None, Some(many.keys().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// How many keys have sessions.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_once_however_many_paths_list_them() {
        let mut index: SessionIndex<u8> = SessionIndex::default();
        index.insert(1, SessionId(7));
        index.insert(1, SessionId(7));
        assert_eq!(index.sessions(&1), 1);
        index.insert(1, SessionId(8));
        assert_eq!(index.sessions(&1), 2);
        assert!(index.contains(&1, SessionId(8)) && !index.contains(&2, SessionId(8)));
        let mut ids: Vec<u64> = index.ids(&1).map(|s| s.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [7, 8]);
        index.remove(&1, SessionId(7));
        assert_eq!(index.sessions(&1), 2, "session 7 still has a path there");
        index.remove(&1, SessionId(7));
        assert_eq!(index.sessions(&1), 1);
        // Removing what is not there is harmless.
        index.remove(&1, SessionId(9));
        index.remove(&3, SessionId(9));
        index.remove(&1, SessionId(8));
        assert_eq!((index.sessions(&1), index.keys()), (0, 0));
        assert_eq!(index.ids(&1).count(), 0);
    }

    #[test]
    fn closing_many_sessions_of_one_key_is_linear() {
        // 20 000 sessions under one key, removed in insertion order (a list scanned
        // for each removal took 2·10⁸ steps for this).
        let mut index: SessionIndex<u8> = SessionIndex::default();
        for id in 0..20_000 {
            index.insert(0, SessionId(id));
        }
        assert_eq!(index.sessions(&0), 20_000);
        for id in 0..20_000 {
            index.remove(&0, SessionId(id));
        }
        assert_eq!(index.keys(), 0);
    }
}
