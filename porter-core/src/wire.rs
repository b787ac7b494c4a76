//! The QUIC wire image as a relay sees it: variable-length integers (RFC 9000 §16),
//! long and short headers (RFC 8999 for the version-independent invariants, RFC 9000 §17
//! and RFC 9369 §3 for versions 1 and 2), coalesced packets (RFC 9000 §12.2), and the
//! Version Negotiation packet (RFC 9000 §17.2.1).
//!
//! Nothing here decrypts: header fields that are protected (packet number, reserved bits)
//! are left alone. Parsing borrows from the datagram and never allocates.

use std::fmt;

use thiserror::Error;

/// The wire value of QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 0x0000_0001;
/// The wire value of QUIC version 2 (RFC 9369).
pub const VERSION_2: u32 = 0x6b33_43cf;
/// The longest connection ID versions 1 and 2 allow (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;
/// The smallest UDP payload that may carry a client Initial (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
/// The largest value a QUIC variable-length integer can hold.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// A QUIC version whose packet protection Porter understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// QUIC version 1, RFC 9000.
    V1,
    /// QUIC version 2, RFC 9369.
    V2,
}

impl Version {
    /// Every version Porter can route, in order of preference (for Version Negotiation).
    pub const ALL: [Self; 2] = [Self::V1, Self::V2];

    /// The version for a wire value, if it is one Porter understands.
    pub fn from_wire(value: u32) -> Option<Self> {
        match value {
            VERSION_1 => Some(Self::V1),
            VERSION_2 => Some(Self::V2),
            _ => None,
        }
    }

    /// The 32-bit value carried in long headers.
    pub fn to_wire(self) -> u32 {
        match self {
            Self::V1 => VERSION_1,
            Self::V2 => VERSION_2,
        }
    }

    /// Maps the two long-packet-type bits to a type; version 2 permutes them (RFC 9369 §3.2).
    fn long_type(self, bits: u8) -> LongType {
        match (self, bits & 0b11) {
            (Self::V1, 0) | (Self::V2, 1) => LongType::Initial,
            (Self::V1, 1) | (Self::V2, 2) => LongType::ZeroRtt,
            (Self::V1, 2) | (Self::V2, 3) => LongType::Handshake,
            _ => LongType::Retry,
        }
    }

    /// The two type bits (already shifted into place in the first byte) for a packet type.
    pub fn type_bits(self, ty: LongType) -> u8 {
        let bits = match (self, ty) {
            (Self::V1, LongType::Initial) | (Self::V2, LongType::Retry) => 0,
            (Self::V1, LongType::ZeroRtt) | (Self::V2, LongType::Initial) => 1,
            (Self::V1, LongType::Handshake) | (Self::V2, LongType::ZeroRtt) => 2,
            (Self::V1, LongType::Retry) | (Self::V2, LongType::Handshake) => 3,
        };
        bits << 4
    }
}

/// The type of a version 1 or 2 long-header packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LongType {
    /// Initial: carries the ClientHello, protected with keys anyone can derive.
    Initial,
    /// 0-RTT: early application data from the client.
    ZeroRtt,
    /// Handshake.
    Handshake,
    /// Retry: sent by a server to validate the client's address.
    Retry,
}

/// A connection ID of at most [`MAX_CID_LEN`] bytes, stored inline so it can be copied
/// and hashed without touching the heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    len: u8,
    bytes: [u8; MAX_CID_LEN],
}

impl ConnectionId {
    /// The zero-length connection ID.
    pub const EMPTY: Self = Self {
        len: 0,
        bytes: [0; MAX_CID_LEN],
    };

    /// Copies a connection ID; `None` if it is longer than [`MAX_CID_LEN`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_CID_LEN {
            return None;
        }
        let mut id = Self::EMPTY;
        id.len = bytes.len() as u8;
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(id)
    }

    /// The ID's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether this is the zero-length ID.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cid(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why bytes could not be read as a QUIC packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The datagram or packet has no bytes.
    #[error("empty packet")]
    Empty,
    /// A header field runs past the end of the datagram.
    #[error("packet truncated")]
    Truncated,
    /// A version 1 or 2 packet names a connection ID longer than 20 bytes.
    #[error("connection ID longer than 20 bytes")]
    CidTooLong,
    /// The Length field points past the end of the datagram.
    #[error("length field exceeds the datagram")]
    BadLength,
}

/// A long-header packet of version 1 or 2, with its header fields located but still
/// protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPacket<'a> {
    /// The version.
    pub version: Version,
    /// The packet type.
    pub ty: LongType,
    /// Destination connection ID.
    pub dcid: &'a [u8],
    /// Source connection ID.
    pub scid: &'a [u8],
    /// The token of an Initial, or of a Retry (without its 16-byte integrity tag); empty
    /// for other types.
    pub token: &'a [u8],
    /// Offset of the (protected) packet number within [`Self::bytes`]; for a Retry, the
    /// offset of its token.
    pub pn_offset: usize,
    /// The whole packet, from its first byte to the end given by its Length field.
    pub bytes: &'a [u8],
}

/// One packet of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A long header of version 1 or 2.
    Long(LongPacket<'a>),
    /// A Version Negotiation packet (version 0); the rest of the datagram.
    VersionNegotiation {
        /// Destination connection ID.
        dcid: &'a [u8],
        /// Source connection ID.
        scid: &'a [u8],
        /// The supported-versions list, 4 bytes per version.
        versions: &'a [u8],
    },
    /// A long header of a version Porter does not know; only the invariant fields are
    /// read (RFC 8999 §5.1), and the packet runs to the end of the datagram.
    UnknownVersion {
        /// The version field.
        version: u32,
        /// Destination connection ID (up to 255 bytes under the invariants).
        dcid: &'a [u8],
        /// Source connection ID.
        scid: &'a [u8],
        /// The whole packet.
        bytes: &'a [u8],
    },
    /// A short header (1-RTT) packet. Its DCID length is not on the wire; the bytes run
    /// to the end of the datagram.
    Short {
        /// The whole packet, first byte included.
        bytes: &'a [u8],
    },
}

impl<'a> Packet<'a> {
    /// The packet's bytes as far as they are known to belong to it.
    pub fn bytes(&self) -> &'a [u8] {
        match self {
            Packet::Long(p) => p.bytes,
            Packet::UnknownVersion { bytes, .. } | Packet::Short { bytes } => bytes,
            Packet::VersionNegotiation { .. } => &[],
        }
    }
}

/// Whether the first byte of a packet marks a long header.
#[inline]
pub fn is_long_header(first: u8) -> bool {
    first & 0x80 != 0
}

/// Reads the DCID of a short-header packet whose connection IDs are `cid_len` bytes.
#[inline]
pub fn short_header_dcid(datagram: &[u8], cid_len: usize) -> Option<&[u8]> {
    datagram.get(1..1 + cid_len)
}

/// Parses the packet at the start of `buf`. Returns it and the number of bytes it uses.
pub fn parse_packet(buf: &[u8]) -> Result<(Packet<'_>, usize), WireError> {
    let first = *buf.first().ok_or(WireError::Empty)?;
    if !is_long_header(first) {
        return Ok((Packet::Short { bytes: buf }, buf.len()));
    }
    let mut r = Reader::new(buf);
    r.skip(1).ok_or(WireError::Truncated)?;
    let version = r.u32().ok_or(WireError::Truncated)?;
    let dcid_len = usize::from(r.u8().ok_or(WireError::Truncated)?);
    let dcid = r.bytes(dcid_len).ok_or(WireError::Truncated)?;
    let scid_len = usize::from(r.u8().ok_or(WireError::Truncated)?);
    let scid = r.bytes(scid_len).ok_or(WireError::Truncated)?;

    if version == 0 {
        let versions = r.rest();
        return Ok((
            Packet::VersionNegotiation {
                dcid,
                scid,
                versions,
            },
            buf.len(),
        ));
    }
    let Some(version) = Version::from_wire(version) else {
        return Ok((
            Packet::UnknownVersion {
                version,
                dcid,
                scid,
                bytes: buf,
            },
            buf.len(),
        ));
    };
    if dcid_len > MAX_CID_LEN || scid_len > MAX_CID_LEN {
        return Err(WireError::CidTooLong);
    }
    let ty = version.long_type(first >> 4);
    if ty == LongType::Retry {
        // Retry: token then a 16-byte integrity tag, to the end of the datagram.
        let pn_offset = r.position();
        let rest = r.rest();
        let token = rest
            .get(..rest.len().checked_sub(16).ok_or(WireError::Truncated)?)
            .ok_or(WireError::Truncated)?;
        let packet = LongPacket {
            version,
            ty,
            dcid,
            scid,
            token,
            pn_offset,
            bytes: buf,
        };
        return Ok((Packet::Long(packet), buf.len()));
    }
    let token = if ty == LongType::Initial {
        let len = r.varint().ok_or(WireError::Truncated)?;
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        r.bytes(len).ok_or(WireError::Truncated)?
    } else {
        &[]
    };
    let length = r.varint().ok_or(WireError::Truncated)?;
    let pn_offset = r.position();
    let end = usize::try_from(length)
        .ok()
        .and_then(|l| pn_offset.checked_add(l))
        .filter(|&end| end <= buf.len())
        .ok_or(WireError::BadLength)?;
    let packet = LongPacket {
        version,
        ty,
        dcid,
        scid,
        token,
        pn_offset,
        bytes: &buf[..end],
    };
    Ok((Packet::Long(packet), end))
}

/// Iterates over the packets coalesced in one datagram (RFC 9000 §12.2).
///
/// Packets with a Length field are followed to the next one. A packet without one
/// (short header, Retry, Version Negotiation, an unknown version) ends the datagram.
/// After the first packet, a byte whose fixed bit (0x40) is clear is not the start of a
/// packet: it and everything after it are datagram padding or junk, which some clients
/// send (aioquic pads with zero bytes outside any packet), and iteration stops there.
/// A packet that does not parse is yielded as an error once, and iteration stops.
#[derive(Clone, Debug)]
pub struct Packets<'a> {
    rest: &'a [u8],
    first: bool,
    trailing: usize,
}

impl<'a> Packets<'a> {
    /// Iterates over the packets of `datagram`.
    pub fn new(datagram: &'a [u8]) -> Self {
        Self {
            rest: datagram,
            first: true,
            trailing: 0,
        }
    }

    /// Bytes after the last packet that were skipped as padding or junk (known once the
    /// iterator is exhausted).
    pub fn trailing(&self) -> usize {
        self.trailing
    }
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<Packet<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let &first = self.rest.first()?;
        if !self.first && first & 0x40 == 0 {
            self.trailing = self.rest.len();
            self.rest = &[];
            return None;
        }
        self.first = false;
        match parse_packet(self.rest) {
            Ok((packet, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(packet))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Builds a Version Negotiation packet (RFC 9000 §17.2.1, RFC 8999 §6) answering a client
/// packet with the given connection IDs: the reply's DCID is the client's SCID and its
/// SCID the client's DCID. `unused_bits` fills the seven arbitrary bits of the first byte
/// (the caller supplies randomness, keeping this crate deterministic).
pub fn version_negotiation(
    client_dcid: &[u8],
    client_scid: &[u8],
    versions: &[u32],
    unused_bits: u8,
    out: &mut Vec<u8>,
) {
    out.push(0x80 | (unused_bits & 0x7f));
    out.extend_from_slice(&0u32.to_be_bytes());
    // The invariants allow CIDs of up to 255 bytes; a u8 length always fits because the
    // client's own header carried these lengths in a byte.
    out.push(client_scid.len().min(255) as u8);
    out.extend_from_slice(&client_scid[..client_scid.len().min(255)]);
    out.push(client_dcid.len().min(255) as u8);
    out.extend_from_slice(&client_dcid[..client_dcid.len().min(255)]);
    for v in versions {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Reads a variable-length integer; returns it and its encoded length.
#[inline]
pub fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    // One arm per length: frame types and most lengths and offsets are one or two bytes,
    // and this sits in the inner loop of frame parsing.
    let &first = buf.first()?;
    match first >> 6 {
        0 => Some((u64::from(first), 1)),
        1 => {
            let b: [u8; 2] = buf.get(..2)?.try_into().ok()?;
            Some((u64::from(u16::from_be_bytes(b) & 0x3fff), 2))
        }
        2 => {
            let b: [u8; 4] = buf.get(..4)?.try_into().ok()?;
            Some((u64::from(u32::from_be_bytes(b) & 0x3fff_ffff), 4))
        }
        _ => {
            let b: [u8; 8] = buf.get(..8)?.try_into().ok()?;
            Some((u64::from_be_bytes(b) & VARINT_MAX, 8))
        }
    }
}

/// The encoded length of `value` as a variable-length integer.
#[inline]
pub fn varint_len(value: u64) -> usize {
    match value {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends `value` as a variable-length integer in its shortest form.
///
/// # Panics
/// If `value` exceeds [`VARINT_MAX`]; callers only encode lengths and offsets they
/// produced themselves.
pub fn write_varint(value: u64, out: &mut Vec<u8>) {
    assert!(value <= VARINT_MAX, "varint out of range: {value}");
    match varint_len(value) {
        1 => out.push(value as u8),
        2 => out.extend_from_slice(&((value as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((value as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// A bounds-checked cursor over bytes: every read returns `None` instead of running past
/// the end. Shared by the QUIC and TLS parsers.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    #[inline]
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    #[inline]
    pub(crate) fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(|_| ())
    }

    #[inline]
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Option<u64> {
        let (value, len) = read_varint(&self.buf[self.pos..])?;
        self.pos += len;
        Some(value)
    }

    /// A sub-reader over the next `n` bytes, which this reader skips.
    #[inline]
    pub(crate) fn sub(&mut self, n: usize) -> Option<Self> {
        self.bytes(n).map(Reader::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_rfc_examples() {
        // RFC 9000 §A.1 examples.
        assert_eq!(
            read_varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(
            read_varint(&[0x9d, 0x7f, 0x3e, 0x7d]),
            Some((494_878_333, 4))
        );
        assert_eq!(read_varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(read_varint(&[0x25]), Some((37, 1)));
        assert_eq!(read_varint(&[0x40, 0x25]), Some((37, 2)));
        assert_eq!(read_varint(&[0x40]), None);
        for v in [
            0,
            63,
            64,
            16_383,
            16_384,
            1_073_741_823,
            1_073_741_824,
            VARINT_MAX,
        ] {
            let mut out = Vec::new();
            write_varint(v, &mut out);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
    }

    #[test]
    fn v2_type_bits_are_permuted() {
        for ty in [
            LongType::Initial,
            LongType::ZeroRtt,
            LongType::Handshake,
            LongType::Retry,
        ] {
            for v in Version::ALL {
                assert_eq!(v.long_type(v.type_bits(ty) >> 4), ty);
            }
        }
        assert_eq!(Version::V1.type_bits(LongType::Initial), 0x00);
        assert_eq!(Version::V2.type_bits(LongType::Initial), 0x10);
        assert_eq!(Version::V2.type_bits(LongType::Retry), 0x00);
    }

    #[test]
    fn coalesced_packets_then_zero_padding() {
        // Initial (v1, len 3) + Handshake (len 2) + zero padding.
        let mut d = vec![0xc0, 0, 0, 0, 1, 1, 0xaa, 0, 0, 3, 1, 2, 3];
        d.extend_from_slice(&[0xe0, 0, 0, 0, 1, 1, 0xaa, 1, 0xbb, 2, 9, 9]);
        d.extend_from_slice(&[0; 20]);
        let mut it = Packets::new(&d);
        let Some(Ok(Packet::Long(a))) = it.next() else {
            panic!("first packet")
        };
        assert_eq!(
            (a.ty, a.dcid, a.scid),
            (LongType::Initial, &[0xaa][..], &[][..])
        );
        assert_eq!(a.bytes.len(), 13);
        let Some(Ok(Packet::Long(b))) = it.next() else {
            panic!("second packet")
        };
        assert_eq!((b.ty, b.scid), (LongType::Handshake, &[0xbb][..]));
        assert!(it.next().is_none());
        assert_eq!(it.trailing(), 20);
    }

    #[test]
    fn length_past_datagram_is_an_error() {
        let d = [0xc0, 0, 0, 0, 1, 0, 0, 0, 0x10, 1, 2];
        assert_eq!(parse_packet(&d), Err(WireError::BadLength));
        assert_eq!(parse_packet(&d[..7]), Err(WireError::Truncated));
        assert_eq!(parse_packet(&[]), Err(WireError::Empty));
    }

    #[test]
    fn unknown_version_uses_invariants_only() {
        let d = [0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 1, 7, 2, 8, 9, 0xff, 0xff];
        let (p, used) = parse_packet(&d).unwrap();
        assert_eq!(used, d.len());
        assert_eq!(
            p,
            Packet::UnknownVersion {
                version: 0x1a2a_3a4a,
                dcid: &[7],
                scid: &[8, 9],
                bytes: &d
            }
        );
    }

    #[test]
    fn version_negotiation_swaps_cids() {
        let mut out = Vec::new();
        version_negotiation(&[1, 2, 3], &[4], &[VERSION_1, VERSION_2], 0x55, &mut out);
        let (p, _) = parse_packet(&out).unwrap();
        assert_eq!(
            p,
            Packet::VersionNegotiation {
                dcid: &[4],
                scid: &[1, 2, 3],
                versions: &[0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf],
            }
        );
        assert_eq!(out[0], 0x80 | 0x55);
    }
}
