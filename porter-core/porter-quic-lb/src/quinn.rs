//! quinn-proto's `ConnectionIdGenerator` issuing QUIC-LB CIDs, so that a quinn server
//! behind Porter (or any QUIC-LB load balancer) hands out routable CIDs.

use std::time::Duration;

use quinn_proto::{ConnectionId as QuinnCid, ConnectionIdGenerator, InvalidCid};

use crate::cid::ServerId;
use crate::config::{Config, ConfigId, UNROUTABLE_CONFIG_ID};
use crate::encode::{unroutable_cid, EncodeError, Encoder, NonceSource};

/// A quinn-proto [`ConnectionIdGenerator`] that writes one server ID into every CID
/// under one QUIC-LB [`Config`].
///
/// quinn calls the factory given to `EndpointConfig::cid_generator` once per endpoint;
/// each call should build a fresh generator (for an encrypted configuration each one
/// counts its nonces from its own random start).
///
/// ```
/// use porter_quic_lb::{Config, Decoder, Key, QuicLbGenerator, ServerId};
/// use quinn_proto::{ConnectionIdGenerator, EndpointConfig};
///
/// // The configuration agent's parameters: config ID 1, 2-octet server IDs,
/// // 6-octet nonces, encrypted (four passes, as 2 + 6 != 16).
/// let config = Config::new(1, 2, 6, Some(Key::new([0x5a; 16])))?;
/// let server_id = ServerId::new(&[0x01, 0x2c])?;
///
/// let mut endpoint = EndpointConfig::default();
/// let for_endpoint = config.clone();
/// endpoint.cid_generator(move || {
///     Box::new(QuicLbGenerator::new(for_endpoint.clone(), server_id).expect("server ID fits"))
/// });
/// // `quinn::Endpoint::server(server_config, addr)` takes `EndpointConfig` the same way
/// // through `quinn::Endpoint::new`.
///
/// // What the load balancer sees: every CID the server issues decodes to its server ID.
/// let mut generator = QuicLbGenerator::new(config.clone(), server_id)?;
/// let cid = generator.generate_cid();
/// let mut decoder = Decoder::new();
/// decoder.insert(config);
/// assert_eq!(decoder.decode(&cid)?.server_id, server_id);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QuicLbGenerator {
    encoder: Encoder,
    lifetime: Option<Duration>,
}

impl QuicLbGenerator {
    /// A generator with the draft's recommended nonces (a counter from a random start
    /// when encrypted, random nonces in plaintext).
    ///
    /// # Errors
    /// [`EncodeError::ServerIdLength`] when the server ID does not fit the configuration;
    /// [`EncodeError::Nonce`] when the system random number generator fails.
    pub fn new(config: Config, server_id: ServerId) -> Result<Self, EncodeError> {
        Ok(Self {
            encoder: Encoder::new(config, server_id)?,
            lifetime: None,
        })
    }

    /// A generator drawing its nonces from `nonces` (e.g. seeded, in a simulation).
    ///
    /// # Errors
    /// [`EncodeError::ServerIdLength`] when the server ID does not fit the configuration.
    pub fn with_nonce_source(
        config: Config,
        server_id: ServerId,
        nonces: Box<dyn NonceSource>,
    ) -> Result<Self, EncodeError> {
        Ok(Self {
            encoder: Encoder::with_nonce_source(config, server_id, nonces)?,
            lifetime: None,
        })
    }

    /// Retire each CID after `lifetime` (quinn then issues fresh ones).
    #[must_use]
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        self.encoder.config()
    }
}

impl ConnectionIdGenerator for QuicLbGenerator {
    /// The next QUIC-LB CID. When the nonce space is exhausted (or the system random
    /// number generator fails) it issues an unroutable CID of the same length instead,
    /// as the draft requires of a server without a usable configuration (§11.6, §3.2);
    /// such a connection stays routable by its 4-tuple.
    fn generate_cid(&mut self) -> QuinnCid {
        let len = self.cid_len();
        let cid = self.encoder.next_cid().or_else(|_| unroutable_cid(len));
        match cid {
            Ok(cid) => QuinnCid::new(&cid),
            // Both the counter and the system RNG failed: no randomness is left to make
            // an unlinkable CID, and quinn offers no way to refuse.
            Err(err) => panic!("cannot generate a connection ID: {err}"),
        }
    }

    /// Accepts what this generator may have issued: the configuration's length, and
    /// either its config ID with this server's ID, or the unroutable codepoint.
    fn validate(&self, cid: &QuinnCid) -> Result<(), InvalidCid> {
        let config = self.encoder.config();
        if cid.len() != config.cid_len() {
            return Err(InvalidCid);
        }
        let Some(&first) = cid.first() else {
            return Err(InvalidCid);
        };
        if ConfigId::bits_of(first) == UNROUTABLE_CONFIG_ID {
            return Ok(());
        }
        match config.decode(cid) {
            Ok(route) if route.server_id == *self.encoder.server_id() => Ok(()),
            _ => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        self.encoder.config().cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::CounterNonces;
    use crate::Key;

    #[test]
    fn validate_accepts_own_cids_only() {
        let config = Config::new(3, 2, 5, Some(Key::new([7; 16]))).unwrap();
        let mine = ServerId::new(&[1, 2]).unwrap();
        let theirs = ServerId::new(&[1, 3]).unwrap();
        let mut generator = QuicLbGenerator::new(config.clone(), mine).unwrap();
        let mut other = QuicLbGenerator::new(config, theirs).unwrap();
        assert_eq!(generator.cid_len(), 8);
        let own = generator.generate_cid();
        assert!(generator.validate(&own).is_ok());
        assert!(generator.validate(&other.generate_cid()).is_err());
        assert!(generator.validate(&QuinnCid::new(&[0u8; 8])).is_err());
        assert!(generator.validate(&QuinnCid::new(&[0u8; 4])).is_err());
    }

    #[test]
    fn exhausted_nonces_fall_back_to_unroutable() {
        let config = Config::new(0, 1, 4, Some(Key::new([7; 16]))).unwrap();
        // A one-octet counter has 256 nonces, where a real (4-octet) one has 2^32.
        let small = CounterNonces::starting_at(&[0]);
        let mut generator = QuicLbGenerator::with_nonce_source(
            config,
            ServerId::new(&[9]).unwrap(),
            Box::new(small),
        )
        .unwrap()
        .with_lifetime(Duration::from_secs(60));
        assert_eq!(generator.cid_lifetime(), Some(Duration::from_secs(60)));
        for _ in 0..256 {
            let cid = generator.generate_cid();
            assert_eq!(cid[0] >> 5, 0);
        }
        let cid = generator.generate_cid();
        assert_eq!(cid.len(), 6);
        assert_eq!(cid[0] >> 5, UNROUTABLE_CONFIG_ID);
        assert!(generator.validate(&cid).is_ok());
    }
}
