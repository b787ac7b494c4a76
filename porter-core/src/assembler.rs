//! From the datagrams a client sends at the start of a connection to "this connection
//! wants SNI X with ALPN list Y": finds the Initial packets in each datagram, decrypts them
//! with keys derived from the first Initial's Destination Connection ID, reassembles the
//! CRYPTO stream and parses the ClientHello once it is complete.
//!
//! Bounded by [`AssemblerConfig`]: the ClientHello size (and so the reassembly buffer)
//! and the number of datagrams one attempt may take.

use thiserror::Error;

use crate::client_hello::{
    handshake_message_len, parse_client_hello, ClientHelloError, ClientHelloInfo,
};
use crate::crypto_stream::{CryptoStream, CryptoStreamError};
use crate::frame::{FrameError, InitialFrame, InitialFrames};
use crate::initial::{DecryptError, Keys, Side};
use crate::wire::{ConnectionId, LongType, Packet, Packets, Version, WireError};

/// Limits for one connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// The largest ClientHello accepted, in bytes (handshake header included). Also the
    /// most CRYPTO bytes buffered. Default 16 KiB.
    pub max_client_hello_len: usize,
    /// The most datagrams one attempt may take before it fails. Default 32.
    pub max_datagrams: usize,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            max_client_hello_len: 16 * 1024,
            max_datagrams: 32,
        }
    }
}

/// The state of an attempt after a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Progress {
    /// The ClientHello is not complete yet.
    NeedMore,
    /// The ClientHello is complete.
    Complete(ClientHelloInfo),
}

/// Why a datagram or a whole attempt failed. See [`InitialError::is_fatal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InitialError {
    /// The datagram's first packet does not parse.
    #[error("unparseable packet: {0}")]
    Wire(#[from] WireError),
    /// The datagram holds no Initial packet of version 1 or 2.
    #[error("no Initial packet in datagram")]
    NotInitial,
    /// The datagram starts with a long header of a version Porter cannot decrypt.
    #[error("unsupported QUIC version {0:#010x}")]
    UnsupportedVersion(u32),
    /// The datagram's Initials belong to another connection (another DCID or version).
    #[error("Initial for a different connection ID")]
    DcidMismatch,
    /// No Initial in the datagram could be decrypted.
    #[error("Initial packet did not decrypt: {0}")]
    Decrypt(#[from] DecryptError),
    /// A decrypted Initial holds an invalid frame.
    #[error("invalid frame in Initial: {0}")]
    Frame(#[from] FrameError),
    /// The CRYPTO stream exceeds its bounds.
    #[error("CRYPTO stream: {0}")]
    Crypto(#[from] CryptoStreamError),
    /// The ClientHello is invalid.
    #[error("ClientHello: {0}")]
    ClientHello(#[from] ClientHelloError),
    /// The attempt took more datagrams than allowed without completing.
    #[error("ClientHello not complete after {limit} datagrams")]
    TooManyDatagrams {
        /// The configured limit.
        limit: usize,
    },
}

impl InitialError {
    /// Whether the whole attempt has failed. A non-fatal error means only that this
    /// datagram contributed nothing (it was not an Initial of this connection, or did not
    /// decrypt); the attempt's state is unchanged and it may still complete.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Frame(_) | Self::Crypto(_) | Self::ClientHello(_) | Self::TooManyDatagrams { .. }
        )
    }
}

#[derive(Debug)]
enum State {
    Assembling,
    /// The ClientHello is complete and stays in the stream: a datagram fed after
    /// completion gets the answer read again from it, so the hot path never copies the
    /// result to keep one for later.
    Complete,
    Failed(InitialError),
}

/// Reassembles one connection attempt's ClientHello from its client's datagrams.
///
/// Feed every datagram the client sends for this attempt to [`Self::handle_datagram`]
/// until it returns [`Progress::Complete`] or a fatal error. Datagrams may come in any
/// order and may repeat.
#[derive(Debug)]
pub struct InitialAssembler {
    config: AssemblerConfig,
    keys: Option<(Version, ConnectionId, Keys)>,
    largest_pn: Option<u64>,
    stream: CryptoStream,
    datagrams: usize,
    state: State,
}

impl InitialAssembler {
    /// A new attempt with the given limits.
    pub fn new(config: AssemblerConfig) -> Self {
        Self {
            config,
            keys: None,
            largest_pn: None,
            stream: CryptoStream::new(config.max_client_hello_len),
            datagrams: 0,
            state: State::Assembling,
        }
    }

    /// The original Destination Connection ID and version, once an Initial carrying them
    /// has decrypted.
    pub fn connection(&self) -> Option<(Version, ConnectionId)> {
        self.keys.as_ref().map(|(v, c, _)| (*v, *c))
    }

    /// Datagrams fed so far.
    pub fn datagrams(&self) -> usize {
        self.datagrams
    }

    /// CRYPTO bytes buffered (never more than the configured ClientHello limit).
    pub fn buffered(&self) -> usize {
        self.stream.buffered()
    }

    /// Bytes of memory the reassembly holds (its buffer's allocations, holes included):
    /// what a relay charges to its buffer budgets. 0 once the attempt failed.
    pub fn memory(&self) -> usize {
        self.stream.memory()
    }

    /// Feeds one datagram. Allocates a decryption scratch buffer for the call; use
    /// [`Self::handle_datagram_with`] to reuse one.
    pub fn handle_datagram(&mut self, datagram: &[u8]) -> Result<Progress, InitialError> {
        self.handle_datagram_with(datagram, &mut Vec::new())
    }

    /// Feeds one datagram, decrypting in `scratch` (cleared and reused; it grows to the
    /// size of the largest packet).
    pub fn handle_datagram_with(
        &mut self,
        datagram: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Progress, InitialError> {
        match &self.state {
            State::Complete => return self.check(),
            State::Failed(e) => return Err(*e),
            State::Assembling => {}
        }
        self.datagrams += 1;
        let result = self.absorb(datagram, scratch).and_then(|()| self.check());
        match result {
            Ok(Progress::NeedMore) if self.datagrams >= self.config.max_datagrams => {
                self.fail(InitialError::TooManyDatagrams {
                    limit: self.config.max_datagrams,
                })
            }
            Ok(Progress::Complete(info)) => {
                self.state = State::Complete;
                Ok(Progress::Complete(info))
            }
            Err(e) if e.is_fatal() => self.fail(e),
            Err(_) if self.datagrams >= self.config.max_datagrams => {
                self.fail(InitialError::TooManyDatagrams {
                    limit: self.config.max_datagrams,
                })
            }
            other => other,
        }
    }

    fn fail(&mut self, e: InitialError) -> Result<Progress, InitialError> {
        self.state = State::Failed(e);
        // The buffered bytes are of no further use.
        self.stream = CryptoStream::new(0);
        Err(e)
    }

    /// Takes the CRYPTO data of every Initial of this connection in the datagram.
    /// Succeeds if at least one packet was used.
    fn absorb(&mut self, datagram: &[u8], scratch: &mut Vec<u8>) -> Result<(), InitialError> {
        let mut used = false;
        let mut skipped = None;
        // Keys for a DCID none of whose packets has decrypted yet. They are adopted only
        // once one does, so a damaged or forged datagram arriving first cannot bind the
        // attempt to a connection ID its real packets do not carry.
        let mut candidate: Option<(Version, ConnectionId, Keys)> = None;
        for (i, packet) in Packets::new(datagram).enumerate() {
            let packet = match packet {
                Ok(Packet::Long(p)) if p.ty == LongType::Initial => p,
                Ok(Packet::UnknownVersion { version, .. }) if i == 0 => {
                    return Err(InitialError::UnsupportedVersion(version));
                }
                Ok(_) => continue,
                Err(e) if i == 0 => return Err(e.into()),
                Err(_) => break,
            };
            let keys = match &self.keys {
                Some((version, dcid, keys)) => {
                    if packet.version != *version || packet.dcid != dcid.as_bytes() {
                        skipped.get_or_insert(InitialError::DcidMismatch);
                        continue;
                    }
                    keys
                }
                None => {
                    let Some(dcid) = ConnectionId::new(packet.dcid) else {
                        continue;
                    };
                    let reusable = matches!(
                        &candidate,
                        Some((v, c, _)) if *v == packet.version && *c == dcid
                    );
                    if !reusable {
                        candidate = None;
                    }
                    let (_, _, keys) = candidate.get_or_insert_with(|| {
                        let keys = Keys::initial(packet.version, packet.dcid, Side::Client);
                        (packet.version, dcid, keys)
                    });
                    &*keys
                }
            };
            let decrypted = match keys.decrypt(&packet, self.largest_pn, scratch) {
                Ok(d) => d,
                Err(e) => {
                    skipped.get_or_insert(e.into());
                    continue;
                }
            };
            if self.keys.is_none() {
                self.keys = candidate.take();
            }
            self.largest_pn = self.largest_pn.max(Some(decrypted.packet_number));
            for frame in InitialFrames::new(decrypted.payload) {
                if let InitialFrame::Crypto { offset, data } = frame? {
                    self.stream.insert(offset, data)?;
                }
            }
            used = true;
        }
        match (used, skipped) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(InitialError::NotInitial),
        }
    }

    fn check(&self) -> Result<Progress, InitialError> {
        let have = self.stream.contiguous();
        let Some(len) = handshake_message_len(have) else {
            return Ok(Progress::NeedMore);
        };
        let len = len?;
        if len > self.config.max_client_hello_len {
            return Err(ClientHelloError::TooLarge {
                len,
                limit: self.config.max_client_hello_len,
            }
            .into());
        }
        if have.len() < len {
            return Ok(Progress::NeedMore);
        }
        Ok(Progress::Complete(parse_client_hello(&have[..len])?))
    }
}

/// Reads the ClientHello from a single datagram, for clients whose ClientHello fits in
/// one (most do, post-quantum key shares aside). `NeedMore` means it continues in a later
/// datagram; use an [`InitialAssembler`] for that.
pub fn client_hello_from_datagram(
    datagram: &[u8],
    config: AssemblerConfig,
) -> Result<Progress, InitialError> {
    InitialAssembler::new(config).handle_datagram(datagram)
}
