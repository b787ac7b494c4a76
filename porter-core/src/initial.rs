//! Initial packet protection (RFC 9001 §5, RFC 9369 §3.3): key derivation from the
//! client's original Destination Connection ID, header protection removal, packet number
//! recovery (RFC 9000 §A.3) and AES-128-GCM payload decryption; and the reverse, for
//! building Initial packets (refusals sent by the relay, test clients, load generators).
//!
//! All cryptography is `ring`'s: HKDF-SHA256, AES-128-GCM and the AES-128 header
//! protection mask.

use ring::aead::{self, quic, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use thiserror::Error;

use crate::wire::{write_varint, LongPacket, LongType, Version};

const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];

/// AES-GCM authentication tag length.
pub const TAG_LEN: usize = 16;
/// Header protection sample length.
pub const SAMPLE_LEN: usize = 16;

/// Which endpoint's Initial keys: the client's protect what the client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Keys for packets sent by the client.
    Client,
    /// Keys for packets sent by the server.
    Server,
}

struct Labels {
    key: &'static [u8],
    iv: &'static [u8],
    hp: &'static [u8],
}

fn labels(version: Version) -> (&'static [u8; 20], Labels) {
    match version {
        Version::V1 => (
            &SALT_V1,
            Labels {
                key: b"quic key",
                iv: b"quic iv",
                hp: b"quic hp",
            },
        ),
        Version::V2 => (
            &SALT_V2,
            Labels {
                key: b"quicv2 key",
                iv: b"quicv2 iv",
                hp: b"quicv2 hp",
            },
        ),
    }
}

/// An output length for HKDF that is not one of ring's algorithm types.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, into any key type.
fn expand_label<L: hkdf::KeyType, T: for<'a> From<hkdf::Okm<'a, L>>>(
    prk: &hkdf::Prk,
    label: &[u8],
    len_type: L,
) -> T {
    let len = (len_type.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    // Cannot fail: every length requested here is far below 255 * 32 bytes.
    let okm = prk
        .expand(&info, len_type)
        .expect("HKDF output length within limits");
    T::from(okm)
}

/// Raw bytes of an HKDF-Expand-Label output (used for the IV, and by tests).
fn expand_label_bytes<const N: usize>(prk: &hkdf::Prk, label: &[u8]) -> [u8; N] {
    let len = (N as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    let mut out = [0u8; N];
    prk.expand(&info, Len(N))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF output length within limits");
    out
}

fn initial_secret(version: Version, dcid: &[u8], side: Side) -> hkdf::Prk {
    let (salt, _) = labels(version);
    let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(dcid);
    let label: &[u8] = match side {
        Side::Client => b"client in",
        Side::Server => b"server in",
    };
    expand_label::<_, hkdf::Prk>(&initial, label, hkdf::HKDF_SHA256)
}

/// The packet protection keys of one side of a connection's Initial packets.
pub struct Keys {
    version: Version,
    aead: LessSafeKey,
    iv: [u8; 12],
    hp: quic::HeaderProtectionKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why a packet could not be unprotected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// Too short to hold a packet number and the header protection sample.
    #[error("packet too short for header protection sample")]
    TooShort,
    /// The AEAD tag did not verify: wrong keys, or the bytes were altered.
    #[error("payload authentication failed")]
    Authentication,
}

/// A decrypted packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Decrypted<'b> {
    /// The full packet number.
    pub packet_number: u64,
    /// The plaintext frames.
    pub payload: &'b [u8],
}

impl Keys {
    /// Derives the Initial keys for `side` from the client's original Destination
    /// Connection ID (RFC 9001 §5.2).
    pub fn initial(version: Version, dcid: &[u8], side: Side) -> Self {
        let secret = initial_secret(version, dcid, side);
        let (_, labels) = labels(version);
        let key: UnboundKey = expand_label(&secret, labels.key, &aead::AES_128_GCM);
        let hp: quic::HeaderProtectionKey = expand_label(&secret, labels.hp, &quic::AES_128);
        Self {
            version,
            aead: LessSafeKey::new(key),
            iv: expand_label_bytes::<12>(&secret, labels.iv),
            hp,
        }
    }

    /// The version these keys are for.
    pub fn version(&self) -> Version {
        self.version
    }

    fn nonce(&self, pn: u64) -> Nonce {
        let mut nonce = self.iv;
        for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        Nonce::assume_unique_for_key(nonce)
    }

    fn mask(&self, sample: &[u8]) -> Result<[u8; 5], DecryptError> {
        self.hp.new_mask(sample).map_err(|_| DecryptError::TooShort)
    }

    /// Removes header protection from and decrypts a long-header packet.
    ///
    /// The packet is copied into `scratch` (reused across calls, so steady state does not
    /// allocate) and decrypted there; the returned payload borrows from it. `largest_pn`
    /// is the largest packet number already received in this number space, used to
    /// expand the truncated packet number.
    pub fn decrypt<'b>(
        &self,
        packet: &LongPacket<'_>,
        largest_pn: Option<u64>,
        scratch: &'b mut Vec<u8>,
    ) -> Result<Decrypted<'b>, DecryptError> {
        let pn_offset = packet.pn_offset;
        let sample_at = pn_offset + 4;
        let sample = packet
            .bytes
            .get(sample_at..sample_at + SAMPLE_LEN)
            .ok_or(DecryptError::TooShort)?;
        let mask = self.mask(sample)?;
        scratch.clear();
        scratch.extend_from_slice(packet.bytes);
        scratch[0] ^= mask[0] & 0x0f;
        let pn_len = usize::from(scratch[0] & 0x03) + 1;
        let mut truncated = 0u64;
        for i in 0..pn_len {
            scratch[pn_offset + i] ^= mask[1 + i];
            truncated = (truncated << 8) | u64::from(scratch[pn_offset + i]);
        }
        let packet_number = decode_packet_number(largest_pn, truncated, pn_len);
        let header_len = pn_offset + pn_len;
        if scratch.len() < header_len + TAG_LEN {
            return Err(DecryptError::TooShort);
        }
        let (header, body) = scratch.split_at_mut(header_len);
        let plain = self
            .aead
            .open_in_place(self.nonce(packet_number), Aad::from(&*header), body)
            .map_err(|_| DecryptError::Authentication)?;
        let len = plain.len();
        Ok(Decrypted {
            packet_number,
            payload: &scratch[header_len..header_len + len],
        })
    }

    /// Protects an unprotected long-header packet in place: `packet` holds the header up
    /// to and including a `pn_len`-byte packet number at `pn_offset`, then the plaintext
    /// payload, then [`TAG_LEN`] bytes of room for the tag.
    fn seal_in_place(&self, packet: &mut [u8], pn_offset: usize, pn_len: usize, pn: u64) {
        let header_len = pn_offset + pn_len;
        let (header, body) = packet.split_at_mut(header_len);
        let (plain, tag_room) = body.split_at_mut(body.len() - TAG_LEN);
        // Cannot fail: AES-GCM sealing fails only for inputs over 64 GiB.
        let tag = self
            .aead
            .seal_in_place_separate_tag(self.nonce(pn), Aad::from(&*header), plain)
            .expect("AES-GCM seal of a datagram-sized payload");
        tag_room.copy_from_slice(tag.as_ref());
        let sample_at = pn_offset + 4;
        let mask = self
            .mask(&packet[sample_at..sample_at + SAMPLE_LEN])
            .expect("sample is 16 bytes");
        packet[0] ^= mask[0] & 0x0f;
        for i in 0..pn_len {
            packet[pn_offset + i] ^= mask[1 + i];
        }
    }
}

/// Recovers a full packet number from its truncated encoding (RFC 9000 §A.3).
pub fn decode_packet_number(largest: Option<u64>, truncated: u64, pn_len: usize) -> u64 {
    let expected = largest.map_or(0, |l| l + 1);
    let win = 1u64 << (pn_len * 8);
    let hwin = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | truncated;
    if candidate + hwin <= expected && candidate < (1 << 62) - win {
        candidate + win
    } else if candidate > expected + hwin && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

/// What to put in a long-header packet built by [`seal_long_packet`].
#[derive(Clone, Copy, Debug)]
pub struct LongPacketSpec<'a> {
    /// Packet type (Initial, 0-RTT or Handshake; not Retry).
    pub ty: LongType,
    /// Destination connection ID.
    pub dcid: &'a [u8],
    /// Source connection ID.
    pub scid: &'a [u8],
    /// Token (Initial only).
    pub token: &'a [u8],
    /// Full packet number.
    pub packet_number: u64,
    /// Bytes used to encode the packet number, 1 to 4.
    pub pn_len: usize,
}

/// Builds a protected long-header packet with `keys` and appends it to `out`.
///
/// The payload is padded with PADDING frames when it is too short for the header
/// protection sample. Use [`Keys::initial`] with [`Side::Server`] to build a server's
/// Initial (as the relay does for refusals), or [`Side::Client`] for a client's.
pub fn seal_long_packet(keys: &Keys, spec: &LongPacketSpec<'_>, payload: &[u8], out: &mut Vec<u8>) {
    let pn_len = spec.pn_len.clamp(1, 4);
    let start = out.len();
    // The sample starts 4 bytes after the packet number; the packet must reach 16 past it.
    let min_payload = (4 + SAMPLE_LEN).saturating_sub(pn_len + TAG_LEN);
    let padded_len = payload.len().max(min_payload);
    out.push(0xc0 | keys.version.type_bits(spec.ty) | (pn_len as u8 - 1));
    out.extend_from_slice(&keys.version.to_wire().to_be_bytes());
    out.push(spec.dcid.len() as u8);
    out.extend_from_slice(spec.dcid);
    out.push(spec.scid.len() as u8);
    out.extend_from_slice(spec.scid);
    if spec.ty == LongType::Initial {
        write_varint(spec.token.len() as u64, out);
        out.extend_from_slice(spec.token);
    }
    write_varint((pn_len + padded_len + TAG_LEN) as u64, out);
    let pn_offset = out.len() - start;
    out.extend_from_slice(&spec.packet_number.to_be_bytes()[8 - pn_len..]);
    out.extend_from_slice(payload);
    out.resize(out.len() + (padded_len - payload.len()) + TAG_LEN, 0);
    keys.seal_in_place(&mut out[start..], pn_offset, pn_len, spec.packet_number);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

    #[test]
    fn rfc9001_a1_key_schedule() {
        let client = initial_secret(Version::V1, &DCID, Side::Client);
        assert_eq!(
            expand_label_bytes::<16>(&client, b"quic key").to_vec(),
            hex("1f369613dd76d5467730efcbe3b1a22d")
        );
        assert_eq!(
            expand_label_bytes::<12>(&client, b"quic iv").to_vec(),
            hex("fa044b2f42a3fd3b46fb255c")
        );
        assert_eq!(
            expand_label_bytes::<16>(&client, b"quic hp").to_vec(),
            hex("9f50449e04a0e810283a1e9933adedd2")
        );
        let server = initial_secret(Version::V1, &DCID, Side::Server);
        assert_eq!(
            expand_label_bytes::<16>(&server, b"quic key").to_vec(),
            hex("cf3a5331653c364c88f0f379b6067e37")
        );
        assert_eq!(
            expand_label_bytes::<12>(&server, b"quic iv").to_vec(),
            hex("0ac1493ca1905853b0bba03e")
        );
    }

    #[test]
    fn rfc9369_a1_key_schedule() {
        let client = initial_secret(Version::V2, &DCID, Side::Client);
        assert_eq!(
            expand_label_bytes::<16>(&client, b"quicv2 key").to_vec(),
            hex("8b1a0bc121284290a29e0971b5cd045d")
        );
        assert_eq!(
            expand_label_bytes::<12>(&client, b"quicv2 iv").to_vec(),
            hex("91f73e2351d8fa91660e909f")
        );
        assert_eq!(
            expand_label_bytes::<16>(&client, b"quicv2 hp").to_vec(),
            hex("45b95e15235d6f45a6b19cbcb0294ba9")
        );
        let server = initial_secret(Version::V2, &DCID, Side::Server);
        assert_eq!(
            expand_label_bytes::<16>(&server, b"quicv2 key").to_vec(),
            hex("82db637861d55e1d011f19ea71d5d2a7")
        );
    }

    #[test]
    fn packet_number_decoding_rfc9000_a3() {
        // RFC 9000 §A.3 example.
        assert_eq!(
            decode_packet_number(Some(0xa82f30ea), 0x9b32, 2),
            0xa82f9b32
        );
        assert_eq!(decode_packet_number(None, 1, 1), 1);
        assert_eq!(decode_packet_number(Some(255), 0, 1), 256);
        assert_eq!(decode_packet_number(Some(300), 0xff, 1), 255);
    }

    #[test]
    fn seal_then_open_round_trips_both_versions() {
        for version in Version::ALL {
            let keys = Keys::initial(version, b"abcdefgh", Side::Server);
            for payload in [&[][..], &[1u8][..], &[0x01; 300][..]] {
                let mut out = Vec::new();
                let spec = LongPacketSpec {
                    ty: LongType::Initial,
                    dcid: b"xy",
                    scid: b"abcdefgh",
                    token: b"",
                    packet_number: 7,
                    pn_len: 1,
                };
                seal_long_packet(&keys, &spec, payload, &mut out);
                let (crate::wire::Packet::Long(p), used) = crate::wire::parse_packet(&out).unwrap()
                else {
                    panic!("not a long packet")
                };
                assert_eq!(used, out.len());
                assert_eq!(p.ty, LongType::Initial);
                let mut scratch = Vec::new();
                let d = keys.decrypt(&p, Some(5), &mut scratch).unwrap();
                assert_eq!(d.packet_number, 7);
                assert_eq!(&d.payload[..payload.len()], payload);
                assert!(d.payload[payload.len()..].iter().all(|&b| b == 0));
            }
        }
    }
}
