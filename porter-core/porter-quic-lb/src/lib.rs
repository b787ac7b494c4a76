//! # porter-quic-lb
//!
//! Routable QUIC connection IDs as specified by QUIC-LB,
//! [draft-ietf-quic-load-balancers-21](https://datatracker.ietf.org/doc/draft-ietf-quic-load-balancers/21/).
//!
//! A QUIC client may change its address and its connection ID at the same moment (an
//! intentional migration, Wi-Fi to 5G). A relay or load balancer then sees a datagram
//! from an unknown address with an unknown destination CID. QUIC-LB lets the server
//! write a *server ID* into every CID it issues, so that anything holding the same
//! configuration recovers the server from the CID alone: no per-connection state, and
//! any instance or shard can route any datagram. Porter uses this crate's [`Decoder`]
//! for exactly that; backends use the encoding side.
//!
//! ## What a CID carries
//!
//! ```text
//! first octet          plaintext block (server ID ‖ nonce), possibly encrypted
//! +-----+-------+     +-------------------+---------------------------------+
//! | CR  |  LEN  |     | server ID (1..15) | nonce (4..18)                   |
//! | 3 b |  5 b  |     +-------------------+---------------------------------+
//! +-----+-------+      server ID + nonce <= 19 octets, so the CID is <= 20
//! ```
//!
//! - **CR**, the three config-rotation bits, name the configuration (0 to 6). The value
//!   0b111 is reserved: a server without a configuration issues CIDs starting with it,
//!   and they never route by content.
//! - **LEN**, the five low bits, hold the CID length less one when the server
//!   self-describes its CID length (what [`Config::encode`] and the draft's test vectors
//!   do), random bits otherwise ([`Config::encode_with_random_bits`]). Load balancers
//!   ignore them; this decoder knows the length from the configuration.
//! - The **nonce** makes every CID unique. Encrypted configurations may count nonces
//!   ([`CounterNonces`]); plaintext ones must use random nonces ([`RandomNonces`]), and
//!   a nonce is never reused under one key.
//!
//! ## The three modes
//!
//! A [`Config`] is a config ID, a server ID length, a nonce length and an optional
//! 16-octet [`Key`]; its [`Mode`] follows:
//!
//! - [`Mode::Plaintext`] (no key): the server ID follows the first octet in the clear,
//!   octets 1 to `server_id_len`. Anyone can read it; use it only where linking a
//!   client's CIDs to one server is acceptable.
//! - [`Mode::SinglePass`] (key, server ID + nonce = 16 octets): octets 1 to 16 are one
//!   AES-128-ECB encryption of server ID ‖ nonce.
//! - [`Mode::FourPass`] (key, any other length): server ID ‖ nonce is split into two
//!   halves (the middle octet of an odd length by nibble) and run through a four-round
//!   Feistel network whose round function is AES-128-ECB of
//!   `half ‖ zeros ‖ length ‖ pass`. The load balancer needs three passes when the
//!   server ID is no longer than the nonce, four otherwise.
//!
//! ## Load balancer: decode
//!
//! ```
//! use porter_quic_lb::{Config, Decoder, Key, NotRoutable, ServerId};
//!
//! let mut decoder = Decoder::new();
//! decoder.insert(Config::new(0, 3, 4, None)?);
//! decoder.insert(Config::new(2, 8, 8, Some(Key::new([0x8f; 16])))?);
//!
//! // A DCID of known length (long header), or for a short header everything after the
//! // packet's first octet: the configuration knows its CID length.
//! let route = decoder.decode(&[0x07, 0xc4, 0x60, 0x5e, 0x45, 0x04, 0xcc, 0x4f])?;
//! assert_eq!(route.server_id, ServerId::new(&[0xc4, 0x60, 0x5e])?);
//!
//! // Anything else says why it does not route, and never panics.
//! assert_eq!(decoder.decode(&[0xe7, 1, 2, 3]), Err(NotRoutable::Unroutable));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Backend: opt in
//!
//! - **quinn** (feature `quinn`): give the endpoint a `QuicLbGenerator` through
//!   `quinn_proto::EndpointConfig::cid_generator` (`quinn` re-exports the same
//!   `EndpointConfig`); the few lines it takes are the example on that type.
//! - **Any other stack**: issue CIDs of exactly [`Config::cid_len`] octets with the
//!   first octet `config_id << 5 | (cid_len - 1)`; in plaintext mode the server ID in
//!   octets 1.. and a random nonce after it; with a key, encrypt server ID ‖ nonce as
//!   above (or call [`Config::encode`] / [`Encoder::next_cid`] from Rust). Put the same
//!   config ID, lengths and key into Porter's decoder. The stack must let the
//!   application choose the CIDs it issues, all of one length.
//!
//! ## Choices made here
//!
//! - AES comes from the RustCrypto [`aes`] crate (pure Rust, constant-time software
//!   or AES-NI when the CPU has it). `ring`, the workspace's crypto library, has no
//!   public raw-block AES: its QUIC header-protection key encrypts one block but returns
//!   only five octets of it, and nothing decrypts, which the single-pass decoder needs.
//! - Randomness for nonces and unroutable CIDs comes from `ring::rand::SystemRandom`;
//!   implement [`NonceSource`] to seed it.
//! - Nothing allocates per CID; [`ServerId`] and [`ConnectionId`] hold their octets
//!   inline.
//!
//! ## Test vectors
//!
//! `tests/vectors.rs` checks every vector of the draft's Appendix B and the worked
//! example of §5.4.2.4. Two printed rows are malformed in the draft; the test file says
//! how they are read.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cid;
mod cipher;
mod config;
mod decode;
mod encode;
#[cfg(feature = "quinn")]
mod quinn;

pub use cid::{ConnectionId, ServerId, ServerIdLengthError, ServerIdParseError};
pub use config::{
    Config, ConfigError, ConfigId, Key, Mode, MAX_CID_LEN, MAX_NONCE_LEN, MAX_PLAINTEXT_LEN,
    MAX_SERVER_ID_LEN, MIN_NONCE_LEN, MIN_SERVER_ID_LEN, UNROUTABLE_CONFIG_ID,
};
pub use decode::{Decoder, NotRoutable, Route};
pub use encode::{
    unroutable_cid, CounterNonces, EncodeError, Encoder, NonceError, NonceSource, RandomNonces,
};
#[cfg(feature = "quinn")]
pub use quinn::QuicLbGenerator;
