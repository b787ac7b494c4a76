//! The `datagram` target: every wire-level parser on one arbitrary datagram.

use std::ops::Range;
use std::sync::OnceLock;

use porter_core::frame::{InitialFrame, InitialFrames};
use porter_core::initial::{decode_packet_number, Keys, Side, TAG_LEN};
use porter_core::wire::{
    parse_packet, read_varint, short_header_dcid, varint_len, write_varint, ConnectionId,
    LongPacket, LongType, Packet, Packets, Version, MAX_CID_LEN, VARINT_MAX,
};

/// Where `inner` lies in `outer`, by address; `None` if it is not inside. An empty slice
/// is accepted anywhere (parsers return `&[]` for absent fields).
fn span(outer: &[u8], inner: &[u8]) -> Option<Range<usize>> {
    if inner.is_empty() {
        return Some(0..0);
    }
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

fn inside(outer: &[u8], inner: &[u8], what: &str) -> Range<usize> {
    span(outer, inner).unwrap_or_else(|| panic!("{what} lies outside its buffer"))
}

/// Asserts that `inner` is the part of `outer` at `offset`.
fn at(outer: &[u8], inner: &[u8], offset: usize, what: &str) {
    assert!(
        offset + inner.len() <= outer.len(),
        "{what} runs past its buffer"
    );
    if !inner.is_empty() {
        assert_eq!(inside(outer, inner, what).start, offset, "{what} offset");
    }
}

/// Parses `data` as a client datagram with every wire-level parser and checks what they
/// return. Panics when an invariant breaks.
///
/// - [`Packets`] yields packets that lie in the datagram one after the other, with no
///   gap or overlap, each re-parsing alone to itself; what it skips at the end is exactly
///   what is left; [`parse_packet`] agrees with its first packet.
/// - Long headers are consistent with their bytes (version, CID lengths, token, packet
///   number offset), CIDs fit [`ConnectionId`].
/// - [`short_header_dcid`] returns the bytes after the first one, for every CID length.
/// - Varints decode to their encoded length and value and re-encode to at most as many
///   bytes; packet-number recovery keeps the truncated bits.
/// - Header protection removal and decryption with fixed keys fail cleanly (or succeed
///   with a payload of the right length), and the Initial frame parser returns frames
///   inside its input.
pub fn datagram(data: &[u8]) {
    check_packets(data);
    check_short_header(data);
    check_varints(data);
    check_frames(data);
}

fn check_packets(data: &[u8]) {
    let mut packets = Packets::new(data);
    let mut pos = 0;
    let mut failed = false;
    for (index, item) in packets.by_ref().enumerate() {
        let packet = match item {
            Ok(p) => p,
            Err(e) => {
                assert_eq!(
                    parse_packet(&data[pos..]),
                    Err(e),
                    "packet {index} fails alone"
                );
                failed = true;
                break;
            }
        };
        if index == 0 {
            assert_eq!(parse_packet(data).map(|(p, _)| p), Ok(packet));
        } else {
            assert_ne!(
                data[pos] & 0x40,
                0,
                "a later packet starts with the fixed bit"
            );
        }
        let rest = &data[pos..];
        let used = match packet {
            Packet::Long(p) => {
                let range = inside(data, p.bytes, "long packet");
                assert_eq!(range.start, pos, "packets follow one another");
                check_long(&p);
                p.bytes.len()
            }
            Packet::Short { bytes } => {
                assert_eq!(bytes, rest, "a short header runs to the end");
                assert_eq!(inside(data, bytes, "short packet").start, pos);
                assert_eq!(bytes[0] & 0x80, 0);
                bytes.len()
            }
            Packet::UnknownVersion {
                version,
                dcid,
                scid,
                bytes,
            } => {
                assert_eq!(bytes, rest, "an unknown version runs to the end");
                assert!(Version::from_wire(version).is_none() && version != 0);
                assert_eq!(&bytes[1..5], &version.to_be_bytes());
                at(bytes, dcid, 6, "dcid");
                assert_eq!(usize::from(bytes[5]), dcid.len());
                at(bytes, scid, 7 + dcid.len(), "scid");
                bytes.len()
            }
            Packet::VersionNegotiation {
                dcid,
                scid,
                versions,
            } => {
                at(rest, dcid, 6, "dcid");
                assert_eq!(dcid.len(), usize::from(rest[5]));
                at(rest, scid, 7 + dcid.len(), "scid");
                at(rest, versions, rest.len() - versions.len(), "versions");
                assert_eq!(&rest[1..5], &[0; 4]);
                rest.len()
            }
        };
        assert!(
            used > 0 && used <= rest.len(),
            "a packet uses 1..=rest bytes"
        );
        pos += used;
    }
    if failed {
        assert!(packets.next().is_none(), "iteration stops after an error");
    } else {
        assert!(pos <= data.len());
        assert_eq!(
            packets.trailing(),
            data.len() - pos,
            "skipped bytes are exactly what follows the last packet"
        );
    }
}

fn check_long(p: &LongPacket<'_>) {
    let b = p.bytes;
    assert!(b[0] & 0x80 != 0);
    assert_eq!(&b[1..5], &p.version.to_wire().to_be_bytes());
    assert!(p.dcid.len() <= MAX_CID_LEN && p.scid.len() <= MAX_CID_LEN);
    at(b, p.dcid, 6, "dcid");
    assert_eq!(usize::from(b[5]), p.dcid.len());
    at(b, p.scid, 7 + p.dcid.len(), "scid");
    for cid in [p.dcid, p.scid] {
        let id = ConnectionId::new(cid).expect("CIDs of v1/v2 fit a ConnectionId");
        assert_eq!(id.as_bytes(), cid);
    }
    let header_end = 7 + p.dcid.len() + p.scid.len();
    assert!(p.pn_offset >= header_end && p.pn_offset <= b.len());
    let token = inside(b, p.token, "token");
    match p.ty {
        LongType::Retry => {
            assert_eq!(p.pn_offset, header_end);
            assert_eq!(b.len() - header_end - p.token.len(), 16, "retry tag");
            assert!(p.token.is_empty() || token.start == header_end);
        }
        LongType::Initial => assert!(p.token.is_empty() || token.start > header_end),
        _ => assert!(p.token.is_empty()),
    }
    // A packet re-parses alone to itself.
    let (again, used) = parse_packet(b).expect("a parsed packet parses again");
    assert_eq!(used, b.len());
    assert_eq!(again, Packet::Long(*p));

    if p.ty != LongType::Retry {
        let keys = fixed_keys(p.version);
        let mut scratch = Vec::new();
        let largest = (b.len() as u64).checked_sub(1);
        if let Ok(d) = keys.decrypt(p, largest, &mut scratch) {
            // Only possible for a packet sealed with the fixed keys.
            assert!(d.payload.len() + TAG_LEN < b.len());
        }
    }
}

/// Client Initial keys for a fixed DCID, derived once: decryption of arbitrary packets
/// must fail cleanly, which exercises header-protection removal on every packet.
fn fixed_keys(version: Version) -> &'static Keys {
    static KEYS: OnceLock<[Keys; 2]> = OnceLock::new();
    let keys =
        KEYS.get_or_init(|| Version::ALL.map(|v| Keys::initial(v, b"porter!!", Side::Client)));
    &keys[usize::from(version == Version::V2)]
}

fn check_short_header(data: &[u8]) {
    for len in 0..=MAX_CID_LEN {
        let got = short_header_dcid(data, len);
        assert_eq!(
            got,
            data.get(1..1 + len),
            "short-header DCID of {len} bytes"
        );
        if let Some(cid) = got {
            at(data, cid, 1, "short-header DCID");
        }
    }
}

fn check_varints(data: &[u8]) {
    for start in 0..data.len().min(16) {
        let buf = &data[start..];
        let expected_len = 1usize << (buf[0] >> 6);
        match read_varint(buf) {
            Some((value, len)) => {
                assert_eq!(len, expected_len);
                assert!(value <= VARINT_MAX);
                assert!(varint_len(value) <= len);
                let mut out = Vec::new();
                write_varint(value, &mut out);
                assert_eq!(out.len(), varint_len(value));
                assert_eq!(read_varint(&out), Some((value, out.len())));
            }
            None => assert!(buf.len() < expected_len, "varint of {expected_len} bytes"),
        }
    }
    // Packet-number recovery: the truncated bits survive, and the result is the candidate
    // nearest the expected number whenever that one is representable.
    if data.len() >= 13 {
        let largest = u64::from_be_bytes(data[..8].try_into().expect("8 bytes")) & VARINT_MAX;
        let pn_len = usize::from(data[8] & 3) + 1;
        let truncated = u64::from_be_bytes([0, 0, 0, 0, data[9], data[10], data[11], data[12]])
            >> (8 * (4 - pn_len));
        let largest = (data[8] & 4 != 0).then_some(largest.saturating_sub(1));
        let pn = decode_packet_number(largest, truncated, pn_len);
        let win = 1u64 << (8 * pn_len);
        assert_eq!(
            pn & (win - 1),
            truncated,
            "packet number keeps its low bits"
        );
        let expected = largest.map_or(0, |l| l + 1);
        if expected >= win && expected + win < VARINT_MAX {
            assert!(pn.abs_diff(expected) <= win / 2, "nearest candidate");
        }
    }
}

fn check_frames(data: &[u8]) {
    let mut frames = InitialFrames::new(data);
    let mut count = 0usize;
    let mut failed = false;
    for frame in frames.by_ref() {
        count += 1;
        assert!(count <= data.len(), "every frame takes at least one byte");
        match frame {
            Ok(InitialFrame::Crypto {
                offset,
                data: bytes,
            }) => {
                inside(data, bytes, "CRYPTO data");
                assert!(offset + bytes.len() as u64 <= VARINT_MAX);
            }
            Ok(InitialFrame::Padding(n)) => assert!(n >= 1 && n <= data.len()),
            Ok(_) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if failed {
        assert!(frames.next().is_none(), "frame parsing stops at an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_locates_subslices() {
        let d = [0u8; 10];
        assert_eq!(span(&d, &d[3..5]), Some(3..5));
        assert_eq!(span(&d[2..], &d[..1]), None);
        assert_eq!(span(&d, &[]), Some(0..0));
    }
}
