//! The `initial` target: Initial decryption, CRYPTO reassembly and ClientHello parsing
//! through an [`InitialAssembler`], from structured inputs sealed with real Initial keys.

use std::ops::Range;

use arbitrary::{Arbitrary, Unstructured};

use porter_core::client_hello::{handshake_message_len, parse_client_hello};
use porter_core::crypto_stream::MAX_RANGES;
use porter_core::frame::write_connection_close;
use porter_core::initial::{decode_packet_number, seal_long_packet, Keys, LongPacketSpec, Side};
use porter_core::wire::{LongType, Version, MAX_CID_LEN, MIN_INITIAL_DATAGRAM};
use porter_core::{AssemblerConfig, InitialAssembler, InitialError, Progress};
use porter_sim::{write_crypto, AckSpec, DescribedHello};

/// Feeds client datagrams to an [`InitialAssembler`] and checks every answer. Panics when
/// an invariant breaks.
///
/// Raw inputs (see [`super::split_datagrams`]) go to two assemblers, one with the default
/// limits and one with small ones. Structured inputs describe an attempt: a ClientHello
/// (built to a known parse, or raw bytes), a DCID and version, limits, and datagrams of
/// coalesced packets of frames (CRYPTO pieces of the ClientHello, CRYPTO with any offset
/// and data, PING, PADDING, ACK, CONNECTION_CLOSE, junk), each packet sealed with the
/// client Initial keys of the attempt's DCID, or of another one, or damaged, with any
/// packet number, padding and trailing bytes.
///
/// Checked after every datagram:
/// - `buffered() <= max_client_hello_len`, and 0 once the attempt failed;
/// - the answer is `NeedMore`, `Complete` or a typed error; a fatal error and a
///   completion are final and repeated for every later datagram; a non-fatal error leaves
///   the buffer as it was; the connection an attempt is bound to never changes;
/// - when every CRYPTO byte fed is the ClientHello's own, a completion carries exactly
///   what `parse_client_hello` reads from the ClientHello, and a ClientHello error is the
///   one it reports;
/// - when, besides, every datagram so far was clean (only well-formed packets of the
///   attempt, within every limit), the attempt completes (or reports the ClientHello's
///   own error) at exactly the datagram that completes its CRYPTO stream, and not before.
pub fn initial(data: &[u8]) {
    if let Some(datagrams) = super::raw_datagrams(data) {
        let small = AssemblerConfig {
            max_client_hello_len: 1500,
            max_datagrams: 2,
        };
        for config in [AssemblerConfig::default(), small] {
            let mut checker = Checker::new(config);
            for d in &datagrams {
                let _ = checker.feed(d);
            }
        }
        return;
    }
    let Some(body) = super::structured(data) else {
        return;
    };
    let Ok(case) = Case::arbitrary(&mut Unstructured::new(body)) else {
        return;
    };
    case.run();
}

/// Checks the invariants that hold for any input.
struct Checker {
    attempt: InitialAssembler,
    config: AssemblerConfig,
    scratch: Vec<u8>,
    done: Option<Result<Progress, InitialError>>,
}

impl Checker {
    fn new(config: AssemblerConfig) -> Self {
        Self {
            attempt: InitialAssembler::new(config),
            config,
            scratch: Vec::new(),
            done: None,
        }
    }

    fn feed(&mut self, datagram: &[u8]) -> Result<Progress, InitialError> {
        let before = (self.attempt.buffered(), self.attempt.connection());
        let datagrams = self.attempt.datagrams();
        let result = self
            .attempt
            .handle_datagram_with(datagram, &mut self.scratch);
        let buffered = self.attempt.buffered();
        assert!(
            buffered <= self.config.max_client_hello_len,
            "{buffered} bytes buffered over the {}-byte limit",
            self.config.max_client_hello_len
        );
        if let Some(done) = &self.done {
            assert_eq!(&result, done, "a final outcome repeats");
            assert_eq!(self.attempt.datagrams(), datagrams);
            return result;
        }
        assert_eq!(self.attempt.datagrams(), datagrams + 1);
        assert!(self.attempt.datagrams() <= self.config.max_datagrams);
        if let (Some(old), new) = (before.1, self.attempt.connection()) {
            assert_eq!(Some(old), new, "the attempt's connection never changes");
        }
        match &result {
            Ok(Progress::NeedMore) => {
                assert!(self.attempt.datagrams() < self.config.max_datagrams);
            }
            Ok(Progress::Complete(info)) => {
                assert!(self.attempt.connection().is_some());
                if let Some(sni) = &info.sni {
                    assert_eq!(
                        porter_core::client_hello::normalize_host_name(sni.as_bytes()).as_deref(),
                        Some(sni.as_str())
                    );
                }
                self.done = Some(result.clone());
            }
            Err(e) if e.is_fatal() => {
                assert_eq!(buffered, 0, "a failed attempt releases its buffer");
                self.done = Some(result.clone());
            }
            Err(e) => {
                assert!(self.attempt.datagrams() < self.config.max_datagrams);
                assert_eq!(
                    (buffered, self.attempt.connection()),
                    before,
                    "a datagram that failed with {e} changed nothing"
                );
            }
        }
        result
    }
}

#[derive(Arbitrary, Debug)]
enum HelloSource {
    Built(DescribedHello),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Limit {
    /// The ClientHello's length plus or minus a little.
    AroundHello(i8),
    /// Any limit up to 8 KiB.
    Value(u16),
}

#[derive(Arbitrary, Debug)]
struct Case {
    v2: bool,
    dcid: Vec<u8>,
    limit: Limit,
    max_datagrams: u8,
    hello: HelloSource,
    datagrams: Vec<DatagramSpec>,
}

#[derive(Arbitrary, Debug)]
enum Trailing {
    None,
    /// Zero bytes up to 1200 (aioquic pads its datagrams this way).
    PadTo1200,
    Zeros(u8),
    Junk(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct DatagramSpec {
    packets: Vec<PacketSpec>,
    trailing: Trailing,
}

#[derive(Arbitrary, Debug)]
enum KeysSpec {
    /// The attempt's DCID and version: the packet belongs to the attempt.
    Attempt,
    /// The attempt's version, but another DCID, whose keys seal it.
    OtherDcid(Vec<u8>),
    /// The other version, sealed with its keys for the attempt's DCID.
    OtherVersion,
    /// The attempt's header, but the server's keys (it does not decrypt).
    ServerKeys,
}

#[derive(Arbitrary, Debug)]
struct PacketSpec {
    keys: KeysSpec,
    /// Initial, unless this says 0-RTT (1) or Handshake (2).
    ty: Option<u8>,
    scid: Vec<u8>,
    token: Vec<u8>,
    packet_number: u32,
    pn_len: u8,
    frames: Vec<FrameSpec>,
    /// Flip bits of the sealed packet at this index.
    damage: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    /// Piece `index` of the ClientHello cut into `parts` equal pieces (at least one), at
    /// its own offset.
    Piece {
        index: u8,
        parts: u8,
    },
    /// The ClientHello's bytes `start..start+len` at their own offset.
    Chunk {
        start: u16,
        len: u16,
    },
    /// Any data at any offset.
    Crypto {
        offset: u64,
        data: Vec<u8>,
    },
    Ping,
    Padding(u8),
    Ack(AckSpec),
    Close(u16),
    Junk(Vec<u8>),
}

impl Case {
    fn run(&self) {
        let version = if self.v2 { Version::V2 } else { Version::V1 };
        let other_version = if self.v2 { Version::V1 } else { Version::V2 };
        let dcid = &self.dcid[..self.dcid.len().min(MAX_CID_LEN)];
        let hello = match &self.hello {
            HelloSource::Built(spec) => spec.build().0,
            HelloSource::Raw(bytes) => bytes.clone(),
        };
        let max_len = match self.limit {
            Limit::AroundHello(d) => hello.len().saturating_add_signed(isize::from(d)),
            Limit::Value(v) => usize::from(v % 8192),
        };
        let config = AssemblerConfig {
            max_client_hello_len: max_len,
            max_datagrams: usize::from(self.max_datagrams % 8).max(1),
        };
        let keys = Keys::initial(version, dcid, Side::Client);
        let mut checker = Checker::new(config);

        // What the attempt must do when every datagram is clean.
        let message_len = match handshake_message_len(&hello) {
            Some(Ok(len)) if len <= hello.len() => Some(len),
            _ => None,
        };
        let expected = parse_client_hello(&hello);
        let mut consistent = true; // every CRYPTO byte is the ClientHello's own
        let mut clean = true; // and every datagram so far is clean
        let mut covered: Vec<Range<usize>> = Vec::new();
        let mut chunks = 0usize;
        // The largest packet number the attempt has decrypted, while every packet is clean.
        let mut largest_pn: Option<u64> = None;

        for spec in self.datagrams.iter().take(12) {
            let mut datagram = Vec::new();
            for p in spec.packets.iter().take(4) {
                let mut payload = Vec::new();
                let mut pieces = Vec::new();
                let mut well_formed = true;
                for f in p.frames.iter().take(16) {
                    let piece = match f {
                        FrameSpec::Piece { index, parts } => {
                            let parts = usize::from(*parts).max(1);
                            let index = usize::from(*index) % parts;
                            let n = hello.len();
                            Some(index * n / parts..(index + 1) * n / parts)
                        }
                        FrameSpec::Chunk { start, len } => {
                            let start = usize::from(*start) % (hello.len() + 1);
                            Some(start..(start + usize::from(*len)).min(hello.len()))
                        }
                        _ => None,
                    };
                    if let Some(range) = piece {
                        write_crypto(range.start as u64, &hello[range.clone()], &mut payload);
                        if !range.is_empty() {
                            pieces.push(range);
                        }
                    }
                    match f {
                        FrameSpec::Piece { .. } | FrameSpec::Chunk { .. } => {}
                        FrameSpec::Crypto { offset, data } => {
                            write_crypto(*offset, data, &mut payload);
                            consistent = false;
                        }
                        FrameSpec::Ping => payload.push(0x01),
                        FrameSpec::Padding(n) => {
                            payload.resize(payload.len() + usize::from(*n) + 1, 0);
                        }
                        FrameSpec::Ack(ack) => {
                            ack.write(&mut payload);
                            well_formed = false;
                        }
                        FrameSpec::Close(code) => {
                            write_connection_close(u64::from(*code), 0, &mut payload);
                        }
                        FrameSpec::Junk(bytes) => {
                            payload.extend_from_slice(bytes);
                            consistent = false;
                        }
                    }
                }
                let ty = match p.ty.map(|t| t % 3) {
                    Some(1) => LongType::ZeroRtt,
                    Some(2) => LongType::Handshake,
                    _ => LongType::Initial,
                };
                let scid = &p.scid[..p.scid.len().min(MAX_CID_LEN)];
                let pn_len = usize::from(p.pn_len % 4) + 1;
                let packet_number = u64::from(p.packet_number) >> (8 * (4 - pn_len));
                let other_dcid;
                let other_keys;
                let (packet_keys, packet_dcid, belongs) = match &p.keys {
                    KeysSpec::Attempt => (&keys, dcid, true),
                    KeysSpec::OtherDcid(d) => {
                        other_dcid = d[..d.len().min(MAX_CID_LEN)].to_vec();
                        other_keys = Keys::initial(version, &other_dcid, Side::Client);
                        (&other_keys, &other_dcid[..], other_dcid == dcid)
                    }
                    KeysSpec::OtherVersion => {
                        other_keys = Keys::initial(other_version, dcid, Side::Client);
                        (&other_keys, dcid, false)
                    }
                    KeysSpec::ServerKeys => {
                        other_keys = Keys::initial(version, dcid, Side::Server);
                        (&other_keys, dcid, false)
                    }
                };
                let token = &p.token[..p.token.len().min(64)];
                let start = datagram.len();
                let header = LongPacketSpec {
                    ty,
                    dcid: packet_dcid,
                    scid,
                    token,
                    packet_number,
                    pn_len,
                };
                seal_long_packet(packet_keys, &header, &payload, &mut datagram);
                if let Some((at, bits)) = p.damage {
                    let len = datagram.len() - start;
                    datagram[start + usize::from(at) % len] ^= bits.max(1);
                }
                // A clean packet decrypts: it is the attempt's, undamaged, and its packet
                // number is recovered exactly from the ones before it.
                let packet_clean = belongs
                    && ty == LongType::Initial
                    && well_formed
                    && p.damage.is_none()
                    && decode_packet_number(largest_pn, packet_number, pn_len) == packet_number;
                if packet_clean {
                    largest_pn = largest_pn.max(Some(packet_number));
                    chunks += pieces.len();
                    covered.extend(pieces);
                } else {
                    clean = false;
                }
            }
            match &spec.trailing {
                Trailing::None => {}
                Trailing::PadTo1200 => {
                    datagram.resize(datagram.len().max(MIN_INITIAL_DATAGRAM), 0);
                }
                Trailing::Zeros(n) => datagram.resize(datagram.len() + usize::from(*n), 0),
                Trailing::Junk(bytes) => {
                    datagram.extend_from_slice(bytes);
                    // Junk may parse as another packet of the attempt (and fail).
                    clean = false;
                }
            }
            if spec.packets.is_empty() {
                clean = false;
            }

            let result = checker.feed(&datagram);
            if consistent {
                match &result {
                    Ok(Progress::Complete(info)) => {
                        assert_eq!(Ok(info), expected.as_ref(), "completes with the hello");
                    }
                    Err(InitialError::ClientHello(e)) => {
                        let too_large = matches!(
                            e,
                            porter_core::ClientHelloError::TooLarge { len, limit }
                                if *limit == max_len && *len > max_len
                        );
                        assert!(too_large || expected == Err(*e), "{e} vs {expected:?}");
                    }
                    _ => {}
                }
            }
            if !(consistent && clean) {
                continue;
            }
            let Some(len) = message_len else {
                continue;
            };
            let within_limits =
                len <= max_len && covered.iter().all(|r| r.end <= max_len) && chunks <= MAX_RANGES;
            if !within_limits {
                continue;
            }
            if prefix_covered(&mut covered) >= len {
                assert!(
                    matches!(
                        result,
                        Ok(Progress::Complete(_)) | Err(InitialError::ClientHello(_))
                    ),
                    "a complete CRYPTO stream must complete the attempt: {result:?}"
                );
            } else if checker.attempt.datagrams() < config.max_datagrams {
                assert_eq!(result, Ok(Progress::NeedMore), "incomplete stream");
            } else {
                assert_eq!(
                    result,
                    Err(InitialError::TooManyDatagrams {
                        limit: config.max_datagrams
                    })
                );
            }
            if result.is_err() && checker.done.is_some() {
                // Failed for good: datagrams after this one are not read.
                clean = false;
            }
        }
    }
}

/// Merges `ranges` in place and returns how far they cover `0..` without a hole.
fn prefix_covered(ranges: &mut [Range<usize>]) -> usize {
    ranges.sort_by_key(|r| r.start);
    let mut end = 0;
    for r in ranges.iter() {
        if r.start > end {
            break;
        }
        end = end.max(r.end);
    }
    end
}
