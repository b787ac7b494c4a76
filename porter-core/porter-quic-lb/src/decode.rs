//! The load balancer side: reading the server ID out of a destination CID
//! (draft-ietf-quic-load-balancers-21 §5.5), or saying why it cannot be (§4.1,
//! unroutable connection IDs). Every input is arbitrary network bytes; nothing here
//! panics or allocates.

use crate::cid::ServerId;
use crate::cipher;
use crate::config::{Config, ConfigId, Mode, MAX_PLAINTEXT_LEN, UNROUTABLE_CONFIG_ID};

/// Where a CID routes: the configuration that encoded it and the server ID it carries.
///
/// Whether the server ID belongs to an active server is the caller's question (§4.1,
/// third bullet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct Route {
    /// The configuration named by the first octet.
    pub config_id: ConfigId,
    /// The decoded server ID.
    pub server_id: ServerId,
    /// The octets of the CID this configuration reads (its CID length). For a short
    /// header this is where the DCID ends.
    pub cid_len: usize,
}

/// Why a CID does not route by its content (§4.1). The load balancer falls back to its
/// other tables and its 4-tuple algorithm; none of these is an error of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum NotRoutable {
    /// No octets at all (a zero-length CID).
    #[error("empty connection ID")]
    Empty,
    /// The config-rotation bits are 0b111: a server without configuration issued it, or
    /// it is not a server's CID at all.
    #[error("config rotation bits 0b111: unroutable by definition")]
    Unroutable,
    /// The config-rotation bits name no configuration this decoder has (not ours, or a
    /// client-chosen CID).
    #[error("no configuration with config ID {0}")]
    UnknownConfig(ConfigId),
    /// The CID is shorter than the configuration's CID length.
    #[error("config ID {config_id} needs {needed} octets, only {got} present")]
    TooShort {
        /// The configuration named by the first octet.
        config_id: ConfigId,
        /// The configuration's CID length.
        needed: usize,
        /// The octets present.
        got: usize,
    },
}

impl Config {
    /// The server ID in `cid`, read with this configuration alone. `cid` starts with the
    /// CID's first octet; octets past [`cid_len`](Self::cid_len) are ignored.
    ///
    /// # Errors
    /// [`NotRoutable`] when `cid` is empty, carries another config ID (or 0b111), or is
    /// too short.
    pub fn decode(&self, cid: &[u8]) -> Result<Route, NotRoutable> {
        let Some(&first) = cid.first() else {
            return Err(NotRoutable::Empty);
        };
        let bits = ConfigId::bits_of(first);
        if bits == UNROUTABLE_CONFIG_ID {
            return Err(NotRoutable::Unroutable);
        }
        let config_id = ConfigId::from_bits_unchecked(bits);
        if config_id != self.id() {
            return Err(NotRoutable::UnknownConfig(config_id));
        }
        self.decode_block(cid)
    }

    /// Decodes after the config ID has been matched.
    fn decode_block(&self, cid: &[u8]) -> Result<Route, NotRoutable> {
        let needed = self.cid_len();
        let Some(block) = cid.get(1..needed) else {
            return Err(NotRoutable::TooShort {
                config_id: self.id(),
                needed,
                got: cid.len(),
            });
        };
        let sid_len = self.server_id_len();
        let mut work = [0; MAX_PLAINTEXT_LEN];
        let work = &mut work[..block.len()];
        work.copy_from_slice(block);
        match (self.mode(), &self.cipher) {
            (Mode::SinglePass, Some(aes)) => {
                let mut b = [0; 16];
                b.copy_from_slice(work);
                cipher::single_pass_decrypt(aes, &mut b);
                work.copy_from_slice(&b);
            }
            (Mode::FourPass, Some(aes)) => cipher::four_pass_decrypt(aes, work, sid_len),
            _ => {}
        }
        let server_id = ServerId::new(&work[..sid_len])
            .expect("a Config's server ID length is within ServerId's bounds");
        Ok(Route {
            config_id: self.id(),
            server_id,
            cid_len: needed,
        })
    }
}

/// The configurations a load balancer knows, at most one per config ID (0 to 6), and
/// the stateless decode of any destination CID against them.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    configs: [Option<Config>; 7],
}

impl Decoder {
    /// A decoder with no configuration: every CID is [`NotRoutable::UnknownConfig`] or
    /// [`NotRoutable::Unroutable`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `config` under its config ID, returning the configuration it replaces.
    pub fn insert(&mut self, config: Config) -> Option<Config> {
        let slot = &mut self.configs[usize::from(config.id().value())];
        slot.replace(config)
    }

    /// Removes the configuration with `id`.
    pub fn remove(&mut self, id: ConfigId) -> Option<Config> {
        self.configs[usize::from(id.value())].take()
    }

    /// The configuration with `id`.
    pub fn get(&self, id: ConfigId) -> Option<&Config> {
        self.configs[usize::from(id.value())].as_ref()
    }

    /// The configurations, by config ID.
    pub fn configs(&self) -> impl Iterator<Item = &Config> + '_ {
        self.configs.iter().flatten()
    }

    /// The CID length of each configuration: the lengths a short header's DCID can have.
    pub fn cid_lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.configs().map(Config::cid_len)
    }

    /// Decodes the CID that starts at `bytes[0]`.
    ///
    /// Give it either a DCID whose length is known (from a long header), or — for a
    /// short header, whose DCID length is not on the wire — everything after the
    /// packet's first octet: the configuration named by the CID's first octet says how
    /// many octets its CIDs have, and the rest is ignored. [`Route::cid_len`] says where
    /// the CID ended. A CID longer than the configuration's (a server appending octets
    /// for its own use, §5.4) decodes too.
    ///
    /// # Errors
    /// [`NotRoutable`] says why the CID cannot be routed by its content.
    pub fn decode(&self, bytes: &[u8]) -> Result<Route, NotRoutable> {
        let Some(&first) = bytes.first() else {
            return Err(NotRoutable::Empty);
        };
        let bits = ConfigId::bits_of(first);
        if bits == UNROUTABLE_CONFIG_ID {
            return Err(NotRoutable::Unroutable);
        }
        let config_id = ConfigId::from_bits_unchecked(bits);
        match &self.configs[usize::from(bits)] {
            Some(config) => config.decode_block(bytes),
            None => Err(NotRoutable::UnknownConfig(config_id)),
        }
    }

    /// Decodes the DCID of a short-header packet that starts at `datagram[0]`: the same
    /// as [`decode`](Self::decode) on `&datagram[1..]`. The header form bit is not
    /// checked here; the caller has parsed the header.
    ///
    /// # Errors
    /// As [`decode`](Self::decode); an empty datagram is [`NotRoutable::Empty`].
    pub fn decode_short_header(&self, datagram: &[u8]) -> Result<Route, NotRoutable> {
        self.decode(datagram.get(1..).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;

    fn decoder() -> Decoder {
        let mut d = Decoder::new();
        assert!(d.insert(Config::new(0, 3, 4, None).unwrap()).is_none());
        d.insert(Config::new(2, 8, 8, Some(Key::new([1; 16]))).unwrap());
        d
    }

    #[test]
    fn outcomes() {
        let d = decoder();
        let id = |v| ConfigId::new(v).unwrap();
        assert_eq!(d.decode(&[]), Err(NotRoutable::Empty));
        assert_eq!(d.decode(&[0xe7, 1, 2, 3]), Err(NotRoutable::Unroutable));
        assert_eq!(d.decode(&[0x27; 8]), Err(NotRoutable::UnknownConfig(id(1))));
        assert_eq!(
            d.decode(&[0x07, 1, 2, 3]),
            Err(NotRoutable::TooShort {
                config_id: id(0),
                needed: 8,
                got: 4
            })
        );
        let route = d.decode(&[0x07, 1, 2, 3, 4, 5, 6, 7, 99, 99]).unwrap();
        assert_eq!(route.server_id.as_bytes(), &[1, 2, 3]);
        assert_eq!(route.cid_len, 8);
        assert_eq!(d.decode_short_header(&[]), Err(NotRoutable::Empty));
        assert_eq!(d.decode_short_header(&[0x40]), Err(NotRoutable::Empty));
        let short = d
            .decode_short_header(&[0x41, 0x07, 9, 8, 7, 0, 0, 0, 0, 0xaa])
            .unwrap();
        assert_eq!(short.server_id.as_bytes(), &[9, 8, 7]);
    }

    #[test]
    fn insert_replaces_and_remove_forgets() {
        let mut d = decoder();
        let old = d.insert(Config::new(0, 4, 4, None).unwrap()).unwrap();
        assert_eq!(old.server_id_len(), 3);
        assert_eq!(d.cid_lens().collect::<Vec<_>>(), vec![9, 17]);
        let id = ConfigId::new(0).unwrap();
        assert!(d.remove(id).is_some());
        assert!(d.get(id).is_none());
        assert_eq!(d.decode(&[0x07; 9]), Err(NotRoutable::UnknownConfig(id)));
    }
}
