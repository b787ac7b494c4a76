//! The server side: writing a server ID and nonce into a CID (draft-ietf-quic-load-balancers-21
//! §5.4), the nonce sources the draft allows (§11.6, connection ID entropy), and CIDs
//! for the unroutable codepoint (§3.2).

use ring::rand::{SecureRandom, SystemRandom};

use crate::cid::{ConnectionId, ServerId};
use crate::cipher;
use crate::config::{
    Config, Mode, MAX_CID_LEN, MAX_NONCE_LEN, MAX_PLAINTEXT_LEN, UNROUTABLE_CONFIG_ID,
};

/// Encoding a CID failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The server ID does not have the configuration's server ID length.
    #[error("server ID of {got} octets, the configuration expects {expected}")]
    ServerIdLength {
        /// The configuration's server ID length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The nonce does not have the configuration's nonce length.
    #[error("nonce of {got} octets, the configuration expects {expected}")]
    NonceLength {
        /// The configuration's nonce length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The nonce source could not give a fresh nonce.
    #[error(transparent)]
    Nonce(#[from] NonceError),
}

/// A nonce source could not give a fresh nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NonceError {
    /// Every nonce of this length has been used once: the server must switch to a new
    /// configuration (new key), or issue unroutable CIDs ([`unroutable_cid`]) (§11.6).
    #[error("nonce space exhausted: switch to a new configuration or issue unroutable CIDs")]
    Exhausted,
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    RandomFailed,
}

/// Where an [`Encoder`] takes its nonces from.
///
/// The draft requires that a nonce is never reused under one key, and that plaintext
/// nonces have no observable relationship to earlier ones (§5.4, §11.6). Implement this
/// trait to supply a seeded source in tests or simulations.
pub trait NonceSource: Send + Sync {
    /// Fills `nonce` (the configuration's nonce length) with a fresh nonce.
    ///
    /// # Errors
    /// [`NonceError`] when no fresh nonce can be had.
    fn fill_nonce(&mut self, nonce: &mut [u8]) -> Result<(), NonceError>;
}

/// Random nonces from the operating system (ring's `SystemRandom`). The only choice the
/// draft allows for plaintext configurations.
#[derive(Clone, Debug)]
pub struct RandomNonces {
    rng: SystemRandom,
}

impl RandomNonces {
    /// A source of random nonces.
    pub fn new() -> Self {
        Self {
            rng: SystemRandom::new(),
        }
    }
}

impl Default for RandomNonces {
    fn default() -> Self {
        Self::new()
    }
}

impl NonceSource for RandomNonces {
    fn fill_nonce(&mut self, nonce: &mut [u8]) -> Result<(), NonceError> {
        self.rng.fill(nonce).map_err(|_| NonceError::RandomFailed)
    }
}

/// A big-endian counter over the nonce field: each nonce is the previous one plus one,
/// wrapping, until it comes back to where it started (§11.6 recommends a random start).
/// Only for encrypted configurations: counting plaintext nonces makes CIDs linkable.
#[derive(Clone, Debug)]
pub struct CounterNonces {
    next: [u8; MAX_NONCE_LEN],
    start: [u8; MAX_NONCE_LEN],
    len: usize,
    exhausted: bool,
}

impl CounterNonces {
    /// A counter whose first nonce is `start` (its length is the nonce length, 4 to 18
    /// octets; anything longer is cut to 18 octets).
    pub fn starting_at(start: &[u8]) -> Self {
        let len = start.len().min(MAX_NONCE_LEN);
        let mut next = [0; MAX_NONCE_LEN];
        next[..len].copy_from_slice(&start[..len]);
        Self {
            next,
            start: next,
            len,
            exhausted: false,
        }
    }

    /// A counter of `len` octets starting at a random value.
    ///
    /// # Errors
    /// [`NonceError::RandomFailed`] when the system random number generator fails.
    pub fn random_start(len: usize) -> Result<Self, NonceError> {
        let mut start = [0; MAX_NONCE_LEN];
        let len = len.min(MAX_NONCE_LEN);
        SystemRandom::new()
            .fill(&mut start[..len])
            .map_err(|_| NonceError::RandomFailed)?;
        Ok(Self::starting_at(&start[..len]))
    }
}

impl NonceSource for CounterNonces {
    fn fill_nonce(&mut self, nonce: &mut [u8]) -> Result<(), NonceError> {
        if self.exhausted {
            return Err(NonceError::Exhausted);
        }
        // A nonce field of another length than the counter's: take its low octets, or
        // zero-extend. The counter's own length bounds how many nonces it gives.
        let counter = &self.next[..self.len];
        let n = nonce.len().min(self.len);
        nonce.fill(0);
        let nonce_len = nonce.len();
        nonce[nonce_len - n..].copy_from_slice(&counter[self.len - n..]);
        for byte in self.next[..self.len].iter_mut().rev() {
            *byte = byte.wrapping_add(1);
            if *byte != 0 {
                break;
            }
        }
        if self.next == self.start {
            self.exhausted = true;
        }
        Ok(())
    }
}

impl Config {
    /// The CID for `server_id` and `nonce`, with the remaining five bits of the first
    /// octet encoding the CID's length less one (length self-description, §3.3; the
    /// draft's test vectors all use it).
    ///
    /// # Errors
    /// [`EncodeError::ServerIdLength`] or [`EncodeError::NonceLength`] when a length
    /// differs from the configuration's.
    pub fn encode(&self, server_id: &[u8], nonce: &[u8]) -> Result<ConnectionId, EncodeError> {
        // cid_len <= 20, so the length less one fits in the five bits.
        self.encode_with_low_bits(server_id, nonce, (self.cid_len() - 1) as u8)
    }

    /// Like [`encode`](Self::encode) for a server that does not self-describe the CID
    /// length: the first octet's low five bits are `random_bits & 0x1f`, which the draft
    /// asks to be chosen with no relation to earlier CIDs (§3.3).
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    pub fn encode_with_random_bits(
        &self,
        server_id: &[u8],
        nonce: &[u8],
        random_bits: u8,
    ) -> Result<ConnectionId, EncodeError> {
        self.encode_with_low_bits(server_id, nonce, random_bits)
    }

    fn encode_with_low_bits(
        &self,
        server_id: &[u8],
        nonce: &[u8],
        low_bits: u8,
    ) -> Result<ConnectionId, EncodeError> {
        if server_id.len() != self.server_id_len() {
            return Err(EncodeError::ServerIdLength {
                expected: self.server_id_len(),
                got: server_id.len(),
            });
        }
        if nonce.len() != self.nonce_len() {
            return Err(EncodeError::NonceLength {
                expected: self.nonce_len(),
                got: nonce.len(),
            });
        }
        let mut cid = [0; MAX_CID_LEN];
        let len = self.cid_len();
        cid[0] = (self.id().value() << 5) | (low_bits & 0x1f);
        let sid_end = 1 + server_id.len();
        cid[1..sid_end].copy_from_slice(server_id);
        cid[sid_end..len].copy_from_slice(nonce);
        let block = &mut cid[1..len];
        match (self.mode(), &self.cipher) {
            (Mode::SinglePass, Some(aes)) => {
                let mut b = [0; 16];
                b.copy_from_slice(block);
                cipher::single_pass_encrypt(aes, &mut b);
                block.copy_from_slice(&b);
            }
            (Mode::FourPass, Some(aes)) => cipher::four_pass_encrypt(aes, block),
            _ => {}
        }
        Ok(ConnectionId::from_slice(&cid[..len]))
    }
}

/// A CID with the unroutable codepoint 0b111 (§3.2), for a server with no usable
/// configuration: the first octet self-describes the length, and the rest is random.
/// `len` is clamped to 1..=20; the draft asks for at least 8.
///
/// # Errors
/// [`NonceError::RandomFailed`] when the system random number generator fails.
pub fn unroutable_cid(len: usize) -> Result<ConnectionId, NonceError> {
    let len = len.clamp(1, MAX_CID_LEN);
    let mut cid = [0; MAX_CID_LEN];
    SystemRandom::new()
        .fill(&mut cid[1..len])
        .map_err(|_| NonceError::RandomFailed)?;
    cid[0] = (UNROUTABLE_CONFIG_ID << 5) | (len - 1) as u8;
    Ok(ConnectionId::from_slice(&cid[..len]))
}

/// Issues the CIDs of one server under one configuration: its server ID, fresh nonces,
/// self-described length.
pub struct Encoder {
    config: Config,
    server_id: ServerId,
    nonces: Box<dyn NonceSource>,
}

impl Encoder {
    /// An encoder with the nonce source the draft recommends: for an encrypted
    /// configuration a counter from a random start, for a plaintext one random nonces.
    ///
    /// # Errors
    /// [`EncodeError::ServerIdLength`] when the server ID does not fit the configuration;
    /// [`EncodeError::Nonce`] when the system random number generator fails.
    pub fn new(config: Config, server_id: ServerId) -> Result<Self, EncodeError> {
        let nonces: Box<dyn NonceSource> = match config.mode() {
            Mode::Plaintext => Box::new(RandomNonces::new()),
            _ => Box::new(CounterNonces::random_start(config.nonce_len())?),
        };
        Self::with_nonce_source(config, server_id, nonces)
    }

    /// An encoder drawing nonces from `nonces`.
    ///
    /// # Errors
    /// [`EncodeError::ServerIdLength`] when the server ID does not fit the configuration.
    pub fn with_nonce_source(
        config: Config,
        server_id: ServerId,
        nonces: Box<dyn NonceSource>,
    ) -> Result<Self, EncodeError> {
        if !config.fits(&server_id) {
            return Err(EncodeError::ServerIdLength {
                expected: config.server_id_len(),
                got: server_id.len(),
            });
        }
        Ok(Self {
            config,
            server_id,
            nonces,
        })
    }

    /// The next CID.
    ///
    /// # Errors
    /// [`EncodeError::Nonce`] when the nonce source has no fresh nonce.
    pub fn next_cid(&mut self) -> Result<ConnectionId, EncodeError> {
        let mut nonce = [0; MAX_PLAINTEXT_LEN];
        let nonce = &mut nonce[..self.config.nonce_len()];
        self.nonces.fill_nonce(nonce)?;
        self.config.encode(self.server_id.as_bytes(), nonce)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The server ID written into every CID.
    pub fn server_id(&self) -> &ServerId {
        &self.server_id
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_counts_and_ends_where_it_started() {
        let mut c = CounterNonces::starting_at(&[0xff, 0xff, 0xff, 0xfe]);
        let mut n = [0; 4];
        c.fill_nonce(&mut n).unwrap();
        assert_eq!(n, [0xff, 0xff, 0xff, 0xfe]);
        c.fill_nonce(&mut n).unwrap();
        assert_eq!(n, [0xff, 0xff, 0xff, 0xff]);
        c.fill_nonce(&mut n).unwrap();
        assert_eq!(n, [0, 0, 0, 0]);

        // A one-octet counter (only reachable by hand) gives exactly 256 nonces.
        let mut small = CounterNonces::starting_at(&[7]);
        let mut one = [0; 1];
        for _ in 0..256 {
            small.fill_nonce(&mut one).unwrap();
        }
        assert_eq!(small.fill_nonce(&mut one), Err(NonceError::Exhausted));
    }

    #[test]
    fn unroutable_cids_use_the_reserved_codepoint() {
        let cid = unroutable_cid(8).unwrap();
        assert_eq!(cid.len(), 8);
        assert_eq!(cid[0] >> 5, UNROUTABLE_CONFIG_ID);
        assert_eq!(cid[0] & 0x1f, 7);
    }

    #[test]
    fn encode_rejects_wrong_lengths() {
        let config = Config::new(0, 3, 4, None).unwrap();
        assert_eq!(
            config.encode(&[1, 2], &[0; 4]).unwrap_err(),
            EncodeError::ServerIdLength {
                expected: 3,
                got: 2
            }
        );
        assert_eq!(
            config.encode(&[1, 2, 3], &[0; 5]).unwrap_err(),
            EncodeError::NonceLength {
                expected: 4,
                got: 5
            }
        );
        let cid = config
            .encode_with_random_bits(&[1, 2, 3], &[0; 4], 0xff)
            .unwrap();
        assert_eq!(cid[0], 0x1f);
    }

    #[test]
    fn encoder_issues_distinct_cids() {
        for key in [None, Some(crate::Key::new([9; 16]))] {
            let config = Config::new(2, 2, 6, key).unwrap();
            let mut encoder = Encoder::new(config, ServerId::new(&[0xab, 0xcd]).unwrap()).unwrap();
            let a = encoder.next_cid().unwrap();
            let b = encoder.next_cid().unwrap();
            assert_ne!(a, b);
            assert_eq!(a[0] >> 5, 2);
        }
    }
}
