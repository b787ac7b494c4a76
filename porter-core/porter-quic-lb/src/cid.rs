//! Fixed-capacity values: a server ID and a connection ID, held inline so that encoding
//! and decoding never allocate.

use std::fmt;
use std::ops::Deref;

use crate::config::{MAX_CID_LEN, MAX_SERVER_ID_LEN, MIN_SERVER_ID_LEN};

/// The byte views both inline values share: `as_bytes`, `len`, `is_empty`, `Deref` and
/// `AsRef` to `[u8]`, and hex `Display`/`Debug` (`Name(0a0b..)`).
macro_rules! inline_bytes {
    ($name:ident, $len_doc:literal, $empty_doc:literal) => {
        impl $name {
            /// The octets, first octet first.
            pub fn as_bytes(&self) -> &[u8] {
                &self.bytes[..usize::from(self.len)]
            }

            #[doc = $len_doc]
            pub fn len(&self) -> usize {
                usize::from(self.len)
            }

            #[doc = $empty_doc]
            pub fn is_empty(&self) -> bool {
                self.len == 0
            }
        }

        impl Deref for $name {
            type Target = [u8];
            fn deref(&self) -> &[u8] {
                self.as_bytes()
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                self.as_bytes()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, self.as_bytes())
            }
        }
    };
}

/// A server ID: 1 to 15 opaque octets (§4.1; they are bytes, not an integer).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId {
    len: u8,
    bytes: [u8; MAX_SERVER_ID_LEN],
}

/// A server ID of a length no configuration can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a server ID is {MIN_SERVER_ID_LEN} to {MAX_SERVER_ID_LEN} octets, not {0}")]
pub struct ServerIdLengthError(pub usize);

impl ServerId {
    /// A server ID from its octets.
    ///
    /// # Errors
    /// [`ServerIdLengthError`] unless `bytes` is 1 to 15 octets long.
    pub fn new(bytes: &[u8]) -> Result<Self, ServerIdLengthError> {
        if !(MIN_SERVER_ID_LEN..=MAX_SERVER_ID_LEN).contains(&bytes.len()) {
            return Err(ServerIdLengthError(bytes.len()));
        }
        let mut id = Self {
            len: bytes.len() as u8,
            bytes: [0; MAX_SERVER_ID_LEN],
        };
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(id)
    }
}

inline_bytes!(
    ServerId,
    "The length in octets (1 to 15).",
    "Always false: a server ID has at least one octet. Present for the `len_without_is_empty` convention."
);

impl TryFrom<&[u8]> for ServerId {
    type Error = ServerIdLengthError;
    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        Self::new(bytes)
    }
}

/// Text that is not a server ID in hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerIdParseError {
    /// Not an even number of hex digits (an optional `0x` prefix aside).
    #[error("not an even number of hex digits")]
    NotHex,
    /// Hex, of a length no server ID has.
    #[error(transparent)]
    Length(#[from] ServerIdLengthError),
}

/// Hex digits, two per octet, first octet first, with an optional `0x`: `"0a0b"` is
/// the server ID `[0x0a, 0x0b]` (the form Porter's configuration and Agones labels use).
impl std::str::FromStr for ServerId {
    type Err = ServerIdParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text.strip_prefix("0x").unwrap_or(text).as_bytes();
        if !digits.len().is_multiple_of(2) || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(ServerIdParseError::NotHex);
        }
        let mut bytes = [0u8; MAX_SERVER_ID_LEN];
        let len = digits.len() / 2;
        if !(MIN_SERVER_ID_LEN..=MAX_SERVER_ID_LEN).contains(&len) {
            return Err(ServerIdLengthError(len).into());
        }
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
            *byte = u8::from_str_radix(pair, 16).expect("two hex digits checked above");
        }
        Ok(Self::new(&bytes[..len])?)
    }
}

/// A connection ID this crate produced: 1 to 20 octets, held inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    len: u8,
    bytes: [u8; MAX_CID_LEN],
}

impl ConnectionId {
    /// Caller guarantees `bytes.len() <= MAX_CID_LEN`.
    pub(crate) fn from_slice(bytes: &[u8]) -> Self {
        debug_assert!(bytes.len() <= MAX_CID_LEN);
        let len = bytes.len().min(MAX_CID_LEN);
        let mut cid = Self {
            len: len as u8,
            bytes: [0; MAX_CID_LEN],
        };
        cid.bytes[..len].copy_from_slice(&bytes[..len]);
        cid
    }
}

inline_bytes!(
    ConnectionId,
    "The length in octets.",
    "Whether the CID is empty (never, for CIDs this crate produces)."
);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids_read_from_hex() {
        let id: ServerId = "0a0B".parse().unwrap();
        assert_eq!(id.as_bytes(), [0x0a, 0x0b]);
        assert_eq!("0x0a0b".parse::<ServerId>(), Ok(id));
        assert_eq!(id.to_string().parse::<ServerId>(), Ok(id));
        for (bad, why) in [
            ("", ServerIdParseError::Length(ServerIdLengthError(0))),
            ("0x", ServerIdParseError::Length(ServerIdLengthError(0))),
            ("abc", ServerIdParseError::NotHex),
            ("zz", ServerIdParseError::NotHex),
            ("+1", ServerIdParseError::NotHex),
            ("é1", ServerIdParseError::NotHex),
            (
                "00112233445566778899aabbccddeeff",
                ServerIdParseError::Length(ServerIdLengthError(16)),
            ),
        ] {
            assert_eq!(bad.parse::<ServerId>(), Err(why), "{bad:?}");
        }
    }
}
