//! One QUIC-LB configuration: its config ID, field lengths and optional key
//! (draft-ietf-quic-load-balancers-21 §3.1 config rotation, §5.2 CID format, §5.3
//! configuration agent actions).

use std::fmt;

use aes::cipher::KeyInit;
use aes::Aes128;

use crate::cid::ServerId;

/// Longest connection ID QUIC version 1 allows (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;
/// Shortest server ID a configuration may use (§4.1: at least one octet).
pub const MIN_SERVER_ID_LEN: usize = 1;
/// Shortest nonce a configuration may use (§5.3: at least four octets).
pub const MIN_NONCE_LEN: usize = 4;
/// Longest server ID plus nonce (§5.3: at most 19 octets, so the CID fits in 20).
pub const MAX_PLAINTEXT_LEN: usize = MAX_CID_LEN - 1;
/// Longest server ID: the whole plaintext block less the shortest nonce.
pub const MAX_SERVER_ID_LEN: usize = MAX_PLAINTEXT_LEN - MIN_NONCE_LEN;
/// Longest nonce: the whole plaintext block less the shortest server ID.
pub const MAX_NONCE_LEN: usize = MAX_PLAINTEXT_LEN - MIN_SERVER_ID_LEN;
/// The config-rotation codepoint reserved for unroutable CIDs (§3.2). No configuration
/// may use it; a server without a configuration issues CIDs that start with it.
pub const UNROUTABLE_CONFIG_ID: u8 = 0b111;

/// The three config-rotation bits of a CID's first octet, for a usable configuration:
/// a value from 0 to 6 (7, [`UNROUTABLE_CONFIG_ID`], is reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigId(u8);

impl ConfigId {
    /// A config ID from its three-bit value.
    ///
    /// # Errors
    /// [`ConfigError::ReservedConfigId`] for 0b111, [`ConfigError::ConfigIdOutOfRange`]
    /// for anything that does not fit in three bits.
    pub const fn new(value: u8) -> Result<Self, ConfigError> {
        if value == UNROUTABLE_CONFIG_ID {
            Err(ConfigError::ReservedConfigId)
        } else if value > UNROUTABLE_CONFIG_ID {
            Err(ConfigError::ConfigIdOutOfRange(value))
        } else {
            Ok(Self(value))
        }
    }

    /// The three-bit value (0 to 6).
    pub const fn value(self) -> u8 {
        self.0
    }

    /// The config-rotation bits of a first octet (0 to 7; 7 is the unroutable codepoint).
    pub const fn bits_of(first_octet: u8) -> u8 {
        first_octet >> 5
    }

    pub(crate) const fn from_bits_unchecked(bits: u8) -> Self {
        Self(bits & 0b111)
    }
}

impl fmt::Display for ConfigId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A 16-octet AES-128 key shared by the servers and load balancers of one configuration.
///
/// Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 16]);

impl Key {
    /// A key from its 16 octets.
    pub const fn new(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The key's octets.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl From<[u8; 16]> for Key {
    fn from(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

/// How the server ID and nonce are written into the CID (§5.4, §5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// No key: the server ID follows the first octet in the clear.
    Plaintext,
    /// A key, and server ID plus nonce are exactly 16 octets: one AES-128-ECB block.
    SinglePass,
    /// A key and any other length: the four-round Feistel network with AES-128-ECB as
    /// round function.
    FourPass,
}

/// A configuration failed the draft's rules (§3.1, §5.3).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// 0b111 is the unroutable codepoint; give the configuration another ID (0 to 6).
    #[error("config ID 0b111 is reserved for unroutable connection IDs; use 0 to 6")]
    ReservedConfigId,
    /// The config ID must fit in the three config-rotation bits.
    #[error("config ID {0} does not fit in three bits; use 0 to 6")]
    ConfigIdOutOfRange(u8),
    /// The server ID must be at least one octet long.
    #[error("the server ID length must be at least {MIN_SERVER_ID_LEN} octet")]
    ServerIdTooShort,
    /// The nonce must be at least four octets long.
    #[error("nonce length {0} is below the minimum of {MIN_NONCE_LEN} octets")]
    NonceTooShort(usize),
    /// Server ID and nonce together must fit in 19 octets (a 20-octet CID).
    #[error(
        "server ID length {server_id_len} plus nonce length {nonce_len} exceeds {MAX_PLAINTEXT_LEN} octets"
    )]
    TooLong {
        /// The configured server ID length.
        server_id_len: usize,
        /// The configured nonce length.
        nonce_len: usize,
    },
}

/// One QUIC-LB configuration, as a configuration agent hands it to servers and load
/// balancers: config ID, server ID length, nonce length, and an optional key.
///
/// The key schedule is computed once, here; encoding and decoding then cost one AES
/// block operation per pass and allocate nothing.
#[derive(Clone)]
pub struct Config {
    id: ConfigId,
    server_id_len: u8,
    nonce_len: u8,
    key: Option<Key>,
    pub(crate) cipher: Option<Aes128>,
}

impl Config {
    /// A configuration. With `key: None` CIDs carry the server ID in plaintext; with a
    /// key they are encrypted, in one pass when `server_id_len + nonce_len == 16` and in
    /// four passes otherwise.
    ///
    /// # Errors
    /// A [`ConfigError`] when the config ID is 0b111 or above, the server ID is empty,
    /// the nonce is shorter than 4 octets, or both together exceed 19 octets.
    pub fn new(
        config_id: u8,
        server_id_len: usize,
        nonce_len: usize,
        key: Option<Key>,
    ) -> Result<Self, ConfigError> {
        let id = ConfigId::new(config_id)?;
        if server_id_len < MIN_SERVER_ID_LEN {
            return Err(ConfigError::ServerIdTooShort);
        }
        if nonce_len < MIN_NONCE_LEN {
            return Err(ConfigError::NonceTooShort(nonce_len));
        }
        if server_id_len + nonce_len > MAX_PLAINTEXT_LEN {
            return Err(ConfigError::TooLong {
                server_id_len,
                nonce_len,
            });
        }
        let cipher = key
            .as_ref()
            .map(|key| Aes128::new(&(*key.as_bytes()).into()));
        Ok(Self {
            id,
            // Both fit in u8: each is at most MAX_PLAINTEXT_LEN, checked above.
            server_id_len: server_id_len as u8,
            nonce_len: nonce_len as u8,
            key,
            cipher,
        })
    }

    /// The config ID carried in the first octet's top three bits.
    pub const fn id(&self) -> ConfigId {
        self.id
    }

    /// The server ID length in octets.
    pub const fn server_id_len(&self) -> usize {
        self.server_id_len as usize
    }

    /// The nonce length in octets.
    pub const fn nonce_len(&self) -> usize {
        self.nonce_len as usize
    }

    /// The key, if the configuration encrypts.
    pub const fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// Server ID plus nonce: the part of the CID after the first octet.
    pub const fn plaintext_len(&self) -> usize {
        self.server_id_len() + self.nonce_len()
    }

    /// The length of the CIDs this configuration produces: first octet, server ID, nonce.
    pub const fn cid_len(&self) -> usize {
        1 + self.plaintext_len()
    }

    /// Which of the three encodings this configuration uses.
    pub const fn mode(&self) -> Mode {
        match (&self.key, self.plaintext_len()) {
            (None, _) => Mode::Plaintext,
            (Some(_), 16) => Mode::SinglePass,
            (Some(_), _) => Mode::FourPass,
        }
    }

    /// Whether a server ID has the length this configuration expects.
    pub fn fits(&self, server_id: &ServerId) -> bool {
        server_id.len() == self.server_id_len()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("id", &self.id)
            .field("server_id_len", &self.server_id_len)
            .field("nonce_len", &self.nonce_len)
            .field("mode", &self.mode())
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_follow_the_draft() {
        assert_eq!(
            Config::new(7, 3, 4, None).unwrap_err(),
            ConfigError::ReservedConfigId
        );
        assert_eq!(
            Config::new(8, 3, 4, None).unwrap_err(),
            ConfigError::ConfigIdOutOfRange(8)
        );
        assert_eq!(
            Config::new(0, 0, 4, None).unwrap_err(),
            ConfigError::ServerIdTooShort
        );
        assert_eq!(
            Config::new(0, 1, 3, None).unwrap_err(),
            ConfigError::NonceTooShort(3)
        );
        assert_eq!(
            Config::new(0, 16, 4, None).unwrap_err(),
            ConfigError::TooLong {
                server_id_len: 16,
                nonce_len: 4
            }
        );
        let longest = Config::new(6, 15, 4, None).unwrap();
        assert_eq!(longest.cid_len(), MAX_CID_LEN);
        assert_eq!(Config::new(0, 1, 18, None).unwrap().cid_len(), MAX_CID_LEN);
    }

    #[test]
    fn mode_follows_key_and_length() {
        let key = Some(Key::new([0; 16]));
        assert_eq!(Config::new(0, 3, 4, None).unwrap().mode(), Mode::Plaintext);
        assert_eq!(
            Config::new(0, 8, 8, key.clone()).unwrap().mode(),
            Mode::SinglePass
        );
        assert_eq!(Config::new(0, 3, 4, key).unwrap().mode(), Mode::FourPass);
    }

    #[test]
    fn debug_hides_the_key() {
        let config = Config::new(0, 3, 4, Some(Key::new([0xab; 16]))).unwrap();
        let text = format!("{config:?}");
        assert!(text.contains("redacted"), "{text}");
        assert!(!text.contains("171") && !text.contains("ab, ab"), "{text}");
    }
}
