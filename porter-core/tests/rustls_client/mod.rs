//! A QUIC client's first flight built with a second, independent stack: rustls writes the
//! ClientHello, and rustls' own Initial keys (ring provider) protect the packets. The
//! header layout, varints and frames are written here by hand. Nothing in this module
//! calls porter-core, so a test comparing porter's reading with what was built here checks
//! porter against another implementation rather than against itself.
//!
//! The random choices (how the CRYPTO stream is cut, shuffled, packed and padded) are
//! drawn from a [`Dice`]: a list of numbers proptest generates and shrinks, where an
//! exhausted or zeroed list means "the simplest choice".
#![allow(dead_code, unreachable_pub)]

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::quic;

/// The two QUIC versions, as this module writes them on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuicVersion {
    V1,
    V2,
}

impl QuicVersion {
    pub const ALL: [Self; 2] = [Self::V1, Self::V2];

    pub fn wire(self) -> u32 {
        match self {
            Self::V1 => 0x0000_0001,
            Self::V2 => 0x6b33_43cf,
        }
    }

    fn rustls(self) -> quic::Version {
        match self {
            Self::V1 => quic::Version::V1,
            Self::V2 => quic::Version::V2,
        }
    }

    /// First byte of an Initial before header protection, packet-number length bits
    /// clear: long form, fixed bit, and the Initial type (0b00 in v1, 0b01 in v2,
    /// RFC 9369 §3.2).
    fn initial_first_byte(self) -> u8 {
        match self {
            Self::V1 => 0xc0,
            Self::V2 => 0xd0,
        }
    }
}

fn base_config() -> &'static rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    })
}

/// The ClientHello rustls sends for a QUIC connection to `server_name` offering `alpn`.
pub fn client_hello(
    version: QuicVersion,
    server_name: &str,
    alpn: &[Vec<u8>],
    transport_params: &[u8],
) -> Vec<u8> {
    let mut config = base_config().clone();
    config.alpn_protocols = alpn.to_vec();
    let name = ServerName::try_from(server_name.to_owned()).expect("a valid DNS name");
    let mut conn = quic::ClientConnection::new(
        Arc::new(config),
        version.rustls(),
        name,
        transport_params.to_vec(),
    )
    .expect("rustls QUIC client");
    let mut out = Vec::new();
    let keys = conn.write_hs(&mut out);
    assert!(keys.is_none(), "no key change before the ServerHello");
    assert_eq!(out.first(), Some(&1), "a ClientHello handshake message");
    out
}

/// Appends `value` as a QUIC varint in `width` bytes (1, 2, 4 or 8), or in its shortest
/// form when `width` is 0 or too small for it.
pub fn put_varint_width(value: u64, width: usize, out: &mut Vec<u8>) {
    let shortest = match value {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    };
    let width = match width {
        1 | 2 | 4 | 8 if width >= shortest => width,
        _ => shortest,
    };
    let tag: u64 = match width {
        1 => 0,
        2 => 0b01,
        4 => 0b10,
        _ => 0b11,
    };
    let encoded = (tag << (width * 8 - 2)) | value;
    out.extend_from_slice(&encoded.to_be_bytes()[8 - width..]);
}

/// Appends `value` as a QUIC varint in its shortest form.
pub fn put_varint(value: u64, out: &mut Vec<u8>) {
    put_varint_width(value, 0, out);
}

/// Reads a QUIC varint: value and encoded length.
pub fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let value = bytes[1..]
        .iter()
        .fold(u64::from(first & 0x3f), |v, &b| (v << 8) | u64::from(b));
    Some((value, len))
}

/// Appends a CRYPTO frame (RFC 9000 §19.6).
pub fn crypto_frame(offset: u64, data: &[u8], out: &mut Vec<u8>) {
    out.push(0x06);
    put_varint(offset, out);
    put_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// The header fields of one client Initial.
#[derive(Clone, Debug, Default)]
pub struct InitialHeader {
    pub dcid: Vec<u8>,
    pub scid: Vec<u8>,
    pub token: Vec<u8>,
    pub packet_number: u64,
    /// 1 to 4.
    pub pn_len: usize,
    /// Bytes used for the Length field (0: shortest).
    pub length_width: usize,
}

impl InitialHeader {
    fn length_field(&self, payload_len: usize) -> u64 {
        (self.pn_len + payload_len + TAG_LEN) as u64
    }

    /// Bytes before the packet number.
    fn pn_offset(&self, payload_len: usize) -> usize {
        let mut scratch = Vec::new();
        put_varint(self.token.len() as u64, &mut scratch);
        put_varint_width(
            self.length_field(payload_len),
            self.length_width,
            &mut scratch,
        );
        1 + 4 + 1 + self.dcid.len() + 1 + self.scid.len() + self.token.len() + scratch.len()
    }

    /// The length of the protected packet for a payload of `payload_len` bytes (at least
    /// the 4 - pn_len bytes the header protection sample needs; see [`Sealer::seal`]).
    pub fn sealed_len(&self, payload_len: usize) -> usize {
        let payload_len = payload_len.max(4 - self.pn_len);
        self.pn_offset(payload_len) + self.pn_len + payload_len + TAG_LEN
    }
}

const TAG_LEN: usize = 16;
const SAMPLE_LEN: usize = 16;

/// Where a sealed packet sits in its datagram.
#[derive(Clone, Debug)]
pub struct SealedSpan {
    /// The packet's bytes.
    pub span: Range<usize>,
    /// Offset of the packet number (the start of the protected part).
    pub pn_offset: usize,
}

/// Protects client Initials with rustls' Initial keys for one DCID.
pub struct Sealer {
    version: QuicVersion,
    keys: quic::Keys,
}

impl Sealer {
    pub fn new(version: QuicVersion, dcid: &[u8]) -> Self {
        let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .expect("a TLS 1.3 suite");
        let quic_alg = suite.quic.expect("AES-128-GCM has a QUIC algorithm");
        let keys = quic::Keys::initial(
            version.rustls(),
            suite,
            quic_alg,
            dcid,
            rustls::Side::Client,
        );
        Self { version, keys }
    }

    /// Appends a protected Initial carrying `payload` (frames). A payload too short for
    /// the header protection sample gets PADDING appended.
    pub fn seal(&self, header: &InitialHeader, payload: &[u8], out: &mut Vec<u8>) -> SealedSpan {
        assert!((1..=4).contains(&header.pn_len));
        let mut payload = payload.to_vec();
        payload.resize(payload.len().max(4 - header.pn_len), 0);
        let start = out.len();
        out.push(self.version.initial_first_byte() | (header.pn_len as u8 - 1));
        out.extend_from_slice(&self.version.wire().to_be_bytes());
        out.push(header.dcid.len() as u8);
        out.extend_from_slice(&header.dcid);
        out.push(header.scid.len() as u8);
        out.extend_from_slice(&header.scid);
        put_varint(header.token.len() as u64, out);
        out.extend_from_slice(&header.token);
        put_varint_width(header.length_field(payload.len()), header.length_width, out);
        let pn_offset = out.len() - start;
        out.extend_from_slice(&header.packet_number.to_be_bytes()[8 - header.pn_len..]);
        let header_len = out.len() - start;
        out.extend_from_slice(&payload);

        let packet = &mut out[start..];
        let (head, body) = packet.split_at_mut(header_len);
        let tag = self
            .keys
            .local
            .packet
            .encrypt_in_place(header.packet_number, head, body)
            .expect("AES-GCM seal");
        out.extend_from_slice(tag.as_ref());

        let packet = &mut out[start..];
        let sample_at = pn_offset + 4;
        let mut sample = [0u8; SAMPLE_LEN];
        sample.copy_from_slice(&packet[sample_at..sample_at + SAMPLE_LEN]);
        let (first, rest) = packet.split_at_mut(1);
        self.keys
            .local
            .header
            .encrypt_in_place(
                &sample,
                &mut first[0],
                &mut rest[pn_offset - 1..pn_offset - 1 + header.pn_len],
            )
            .expect("header protection");
        assert_eq!(
            out.len() - start,
            header.sealed_len(payload.len()),
            "length bookkeeping"
        );
        SealedSpan {
            span: start..out.len(),
            pn_offset: start + pn_offset,
        }
    }
}

/// Numbers that drive random choices. Proptest generates and shrinks the list; once it
/// runs out every draw is 0, which always means the simplest choice.
#[derive(Clone, Debug)]
pub struct Dice {
    values: Vec<u32>,
    next: usize,
}

impl Dice {
    pub fn new(values: Vec<u32>) -> Self {
        Self { values, next: 0 }
    }

    /// A number in `0..n` (0 when `n` is 0 or 1).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let v = self.values.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        v as usize % n
    }

    /// A number in `range` (its start when exhausted).
    pub fn in_range(&mut self, range: Range<usize>) -> usize {
        range.start + self.below(range.end - range.start)
    }

    /// True with probability 1/n (false when exhausted).
    pub fn one_in(&mut self, n: usize) -> bool {
        n > 0 && self.below(n) == n - 1
    }

    /// Shuffles in place (the identity when exhausted).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = i - self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// One client Initial inside a [`Datagram`].
#[derive(Clone, Debug)]
pub struct BuiltPacket {
    pub span: Range<usize>,
    pub pn_offset: usize,
    pub packet_number: u64,
    /// The CRYPTO ranges its frames carry.
    pub crypto: Vec<Range<u64>>,
}

/// A datagram of a built flight.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub bytes: Vec<u8>,
    pub packets: Vec<BuiltPacket>,
}

impl Datagram {
    /// Every CRYPTO range the datagram carries.
    pub fn crypto(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.packets.iter().flat_map(|p| p.crypto.iter().cloned())
    }
}

/// Connection-level fields of a flight.
#[derive(Clone, Debug)]
pub struct FlightSpec {
    pub version: QuicVersion,
    pub dcid: Vec<u8>,
    pub scid: Vec<u8>,
    pub token: Vec<u8>,
}

/// Whether `ranges` together cover `0..len`.
pub fn covers(ranges: impl IntoIterator<Item = Range<u64>>, len: u64) -> bool {
    let mut ranges: Vec<_> = ranges.into_iter().filter(|r| r.start < r.end).collect();
    ranges.sort_by_key(|r| r.start);
    let mut reached = 0;
    for r in ranges {
        if r.start > reached {
            break;
        }
        reached = reached.max(r.end);
    }
    reached >= len
}

/// The most plaintext put in one packet: datagrams stay under a common path MTU.
const PACKET_CAPACITY: usize = 1300;
/// The largest CRYPTO frame's data.
const MAX_PIECE: usize = 1000;

/// Builds the datagrams of a client's first flight carrying `crypto` (the CRYPTO stream
/// from offset 0): cut at random points, some ranges sent twice, shuffled, spread over
/// packets with PING and PADDING between frames, packets sometimes coalesced, each
/// datagram padded to at least 1200 bytes inside a packet or with zero bytes after its
/// packets. Datagrams are returned in sending order.
pub fn build_flight(dice: &mut Dice, spec: &FlightSpec, crypto: &[u8]) -> Vec<Datagram> {
    let len = crypto.len();
    assert!(len > 0);
    // Cut points.
    let mut cuts = vec![0, len];
    let extra = dice.below(len.min(24));
    for _ in 0..extra {
        cuts.push(dice.in_range(1..len));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<Range<usize>> = Vec::new();
    for w in cuts.windows(2) {
        let mut start = w[0];
        while w[1] - start > MAX_PIECE {
            pieces.push(start..start + MAX_PIECE);
            start += MAX_PIECE;
        }
        pieces.push(start..w[1]);
    }
    // Retransmitted (overlapping) copies of some ranges.
    for _ in 0..dice.below(4) {
        let start = dice.below(len);
        let end = (start + 1 + dice.below(200)).min(len);
        pieces.push(start..end);
    }
    dice.shuffle(&mut pieces);

    // Frames into packets.
    let wanted = 1 + dice.below(4);
    let mut packets: Vec<(Vec<u8>, Vec<Range<u64>>)> = vec![(Vec::new(), Vec::new()); wanted];
    for piece in pieces {
        let mut frame = Vec::new();
        match dice.below(4) {
            1 => frame.push(0x01),
            2 => frame.resize(1 + dice.below(16), 0),
            _ => {}
        }
        crypto_frame(piece.start as u64, &crypto[piece.clone()], &mut frame);
        let pick = dice.below(packets.len());
        let with_room = (0..packets.len())
            .map(|i| (pick + i) % packets.len())
            .find(|&i| packets[i].0.len() + frame.len() <= PACKET_CAPACITY);
        let i = with_room.unwrap_or_else(|| {
            packets.push((Vec::new(), Vec::new()));
            packets.len() - 1
        });
        packets[i].0.extend_from_slice(&frame);
        packets[i].1.push(piece.start as u64..piece.end as u64);
    }
    for (payload, _) in &mut packets {
        if dice.one_in(3) {
            payload.push(0x01);
        }
        if payload.is_empty() {
            payload.push(0x01);
        }
        // Long enough for the header protection sample whatever the packet-number length.
        payload.resize(payload.len().max(3), 0);
    }

    // Packet numbers: mostly from 0 to 2 like real first flights, sometimes large; each
    // encoded in enough bytes to be read without knowing any earlier packet number.
    let base = if dice.one_in(4) {
        dice.below(1 << 30) as u64
    } else {
        dice.below(3) as u64
    };
    let mut numbers = Vec::new();
    let mut pn = base;
    for _ in 0..packets.len() {
        numbers.push(pn);
        pn += 1 + dice.below(3) as u64;
    }
    let largest = *numbers.last().expect("at least one packet");
    let min_pn_len = (1..=4)
        .find(|&n| (largest + 1) < 1u64 << (8 * n - 1))
        .expect("packet numbers below 2^31");

    // Packets into datagrams, in sending order.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut next = 0;
    while next < packets.len() {
        let take = 1 + dice.below(packets.len() - next);
        groups.push((next..next + take).collect());
        next += take;
    }

    let mut datagrams = Vec::new();
    for group in groups {
        let headers: Vec<InitialHeader> = group
            .iter()
            .map(|&i| InitialHeader {
                dcid: spec.dcid.clone(),
                scid: spec.scid.clone(),
                token: spec.token.clone(),
                packet_number: numbers[i],
                pn_len: dice.in_range(min_pn_len..5),
                length_width: [0, 0, 2, 4, 8][dice.below(5)],
            })
            .collect();
        let mut payloads: Vec<Vec<u8>> = group.iter().map(|&i| packets[i].0.clone()).collect();
        let total: usize = headers
            .iter()
            .zip(&payloads)
            .map(|(h, p)| h.sealed_len(p.len()))
            .sum();
        let missing = 1200usize.saturating_sub(total);
        let pad_outside = missing > 0 && dice.one_in(2);
        if missing > 0 && !pad_outside {
            let j = dice.below(payloads.len());
            let padded = payloads[j].len() + missing;
            payloads[j].resize(padded, 0);
        }
        let sealer = Sealer::new(spec.version, &spec.dcid);
        let mut bytes = Vec::new();
        let mut built = Vec::new();
        for ((&i, header), payload) in group.iter().zip(&headers).zip(&payloads) {
            let sealed = sealer.seal(header, payload, &mut bytes);
            built.push(BuiltPacket {
                span: sealed.span,
                pn_offset: sealed.pn_offset,
                packet_number: header.packet_number,
                crypto: packets[i].1.clone(),
            });
        }
        if pad_outside {
            bytes.resize(bytes.len() + missing, 0);
        }
        assert!(bytes.len() >= 1200);
        datagrams.push(Datagram {
            bytes,
            packets: built,
        });
    }
    datagrams
}

/// The byte ranges of the long-header packets at the start of a datagram, found by
/// following their Length fields (independently of porter's parser). Stops at the first
/// byte that does not start a long header with the fixed bit set (datagram padding).
pub fn long_packet_spans(datagram: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut at = 0;
    while let Some(len) = long_packet_len(&datagram[at..]) {
        spans.push(at..at + len);
        at += len;
    }
    spans
}

fn long_packet_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.first()?;
    if first & 0xc0 != 0xc0 {
        return None;
    }
    let mut at = 5;
    let dcid_len = usize::from(*buf.get(at)?);
    at += 1 + dcid_len;
    let scid_len = usize::from(*buf.get(at)?);
    at += 1 + scid_len;
    let (token_len, n) = get_varint(buf.get(at..)?)?;
    at += n + usize::try_from(token_len).ok()?;
    let (length, n) = get_varint(buf.get(at..)?)?;
    at += n + usize::try_from(length).ok()?;
    (at <= buf.len()).then_some(at)
}
