//! Real QUIC packets for the simulated endpoints: client Initial flights protected with
//! the Initial keys (RFC 9001 §5), server Initial+Handshake flights with real header
//! layout and Length fields (RFC 9000 §17.2, §12.2), Retry packets with their integrity
//! tag (RFC 9001 §5.8, RFC 9369 §3.3.3), and short headers (RFC 9000 §17.3); for the
//! fuzz targets and the relay model, single client Initials padded (or not) around any
//! payload, CRYPTO frames at any offset and described ACK frames (RFC 9000 §19.3).

use arbitrary::Arbitrary;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use super::rng::SimRng;
use porter_core::frame::write_crypto_frame;
use porter_core::initial::{seal_long_packet, Keys, LongPacketSpec, Side, TAG_LEN};
use porter_core::wire::{
    varint_len, write_varint, LongType, Version, MIN_INITIAL_DATAGRAM, VARINT_MAX,
};

/// How to cut a CRYPTO stream into a client's Initial datagrams.
#[derive(Clone, Copy, Debug)]
pub struct InitialFlightSpec<'a> {
    /// The QUIC version.
    pub version: Version,
    /// The Destination CID: the original one, or the one a Retry gave. The Initial keys
    /// derive from it.
    pub dcid: &'a [u8],
    /// The client's Source CID (may be empty).
    pub scid: &'a [u8],
    /// The token (after a Retry), or empty.
    pub token: &'a [u8],
    /// The packet number of the first packet; each further packet takes the next.
    pub first_packet_number: u64,
    /// The size of every datagram, at least 1200 (RFC 9000 §14.1); Chromium uses 1250.
    pub datagram_size: usize,
    /// Cuts each packet's CRYPTO data into two frames sent in reverse order with a PING
    /// between them, as Chromium's "chaos protection" does.
    pub chaos: bool,
}

/// A client's whole first flight in one datagram: a QUIC v1 Initial of 1200 bytes carrying
/// a default [`crate::ClientHelloSpec`] for `sni`, under an 8-byte DCID drawn from `seed`
/// (the same seed gives the same datagram). What most relay tests start a session with.
///
/// # Panics
/// If the default ClientHello for `sni` needs more than one datagram (an SNI of hundreds of
/// bytes).
pub fn one_datagram_initial(sni: &str, seed: u64) -> Vec<u8> {
    let mut rng = SimRng::new(seed);
    let hello = crate::ClientHelloSpec {
        sni: Some(sni.into()),
        ..crate::ClientHelloSpec::default()
    }
    .build(&mut rng);
    let dcid = rng.bytes(8);
    let mut flight = client_initial_flight(
        &InitialFlightSpec {
            version: Version::V1,
            dcid: &dcid,
            scid: &[],
            token: &[],
            first_packet_number: 0,
            datagram_size: 1200,
            chaos: false,
        },
        &hello,
    );
    assert_eq!(
        flight.len(),
        1,
        "the ClientHello for {sni:?} needs one datagram"
    );
    flight.remove(0)
}

/// Protects `crypto` (a ClientHello) in as many Initial packets as it needs, one packet
/// per datagram, each datagram padded with PADDING frames to exactly
/// [`InitialFlightSpec::datagram_size`] bytes.
pub fn client_initial_flight(spec: &InitialFlightSpec<'_>, crypto: &[u8]) -> Vec<Vec<u8>> {
    let keys = Keys::initial(spec.version, spec.dcid, Side::Client);
    let pn_len = 2;
    let header = 1
        + 4
        + 1
        + spec.dcid.len()
        + 1
        + spec.scid.len()
        + varint_len(spec.token.len() as u64)
        + spec.token.len();
    let payload_len = [1usize, 2, 4]
        .into_iter()
        .find_map(|lv| {
            let length = spec.datagram_size.checked_sub(header + lv)?;
            (varint_len(length as u64) == lv).then(|| length - pn_len - TAG_LEN)
        })
        .expect("datagram size leaves room for an Initial packet");
    let mut out = Vec::new();
    let mut offset = 0;
    let mut pn = spec.first_packet_number;
    while offset < crypto.len() || out.is_empty() {
        // Room for two CRYPTO frame headers and a PING, whatever the offsets.
        let room = payload_len - 2 * (1 + 4 + 2) - 1;
        let take = room.min(crypto.len() - offset);
        let data = &crypto[offset..offset + take];
        let mut payload = Vec::with_capacity(payload_len);
        if spec.chaos && take >= 2 {
            let cut = take / 3;
            write_crypto_frame((offset + cut) as u64, &data[cut..], &mut payload);
            payload.push(0x01); // PING
            write_crypto_frame(offset as u64, &data[..cut], &mut payload);
        } else {
            write_crypto_frame(offset as u64, data, &mut payload);
        }
        payload.resize(payload_len, 0);
        let mut datagram = Vec::with_capacity(spec.datagram_size);
        seal_long_packet(
            &keys,
            &LongPacketSpec {
                ty: LongType::Initial,
                dcid: spec.dcid,
                scid: spec.scid,
                token: spec.token,
                packet_number: pn,
                pn_len,
            },
            &payload,
            &mut datagram,
        );
        debug_assert_eq!(datagram.len(), spec.datagram_size);
        out.push(datagram);
        offset += take;
        pn += 1;
    }
    out
}

/// Appends a long-header packet whose payload is left as given (random bytes stand in
/// for a protected payload): real first byte, version, CIDs, token (Initial only),
/// Length, and the packet number in `spec.pn_len` bytes.
pub fn long_header_packet(
    version: Version,
    spec: &LongPacketSpec<'_>,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let pn_len = spec.pn_len.clamp(1, 4);
    out.push(0xc0 | version.type_bits(spec.ty) | (pn_len as u8 - 1));
    out.extend_from_slice(&version.to_wire().to_be_bytes());
    out.push(spec.dcid.len() as u8);
    out.extend_from_slice(spec.dcid);
    out.push(spec.scid.len() as u8);
    out.extend_from_slice(spec.scid);
    if spec.ty == LongType::Initial {
        write_varint(spec.token.len() as u64, out);
        out.extend_from_slice(spec.token);
    }
    write_varint((pn_len + payload.len()) as u64, out);
    out.extend_from_slice(&spec.packet_number.to_be_bytes()[8 - pn_len..]);
    out.extend_from_slice(payload);
}

/// A server's first flight, coalesced in one datagram of at least `min_size` bytes: an
/// Initial protected with the server Initial keys of `initial_dcid` (carrying an ACK and
/// a CRYPTO frame of random "ServerHello" bytes), then a Handshake packet of random
/// bytes. Both carry `scid`, the CID the client must use from now on.
pub fn server_first_flight(
    version: Version,
    initial_dcid: &[u8],
    dcid: &[u8],
    scid: &[u8],
    packet_number: u64,
    min_size: usize,
    rng: &mut SimRng,
) -> Vec<u8> {
    let keys = Keys::initial(version, initial_dcid, Side::Server);
    let mut payload = vec![0x02, 0, 0, 0, 0]; // ACK of packet 0
    write_crypto_frame(0, &rng.bytes(90), &mut payload);
    let mut out = Vec::with_capacity(min_size);
    seal_long_packet(
        &keys,
        &LongPacketSpec {
            ty: LongType::Initial,
            dcid,
            scid,
            token: &[],
            packet_number,
            pn_len: 2,
        },
        &payload,
        &mut out,
    );
    let handshake_header = 1 + 4 + 1 + dcid.len() + 1 + scid.len() + 2 + 2;
    let body = min_size
        .saturating_sub(out.len() + handshake_header)
        .max(64);
    long_header_packet(
        version,
        &LongPacketSpec {
            ty: LongType::Handshake,
            dcid,
            scid,
            token: &[],
            packet_number,
            pn_len: 2,
        },
        &rng.bytes(body),
        &mut out,
    );
    out
}

const RETRY_KEY_V1: [u8; 16] = [
    0xbe, 0x0c, 0x69, 0x0b, 0x9f, 0x66, 0x57, 0x5a, 0x1d, 0x76, 0x6b, 0x54, 0xe3, 0x68, 0xc8, 0x4e,
];
const RETRY_NONCE_V1: [u8; 12] = [
    0x46, 0x15, 0x99, 0xd3, 0x5d, 0x63, 0x2b, 0xf2, 0x23, 0x98, 0x25, 0xbb,
];
const RETRY_KEY_V2: [u8; 16] = [
    0x8f, 0xb4, 0xb0, 0x1b, 0x56, 0xac, 0x48, 0xe2, 0x60, 0xfb, 0xcb, 0xce, 0xad, 0x7c, 0xcc, 0x92,
];
const RETRY_NONCE_V2: [u8; 12] = [
    0xd8, 0x69, 0x69, 0xbc, 0x2d, 0x7c, 0x6d, 0x99, 0x90, 0xef, 0xb0, 0x4a,
];

/// The Retry Integrity Tag of `retry` (the packet without its tag) answering a client
/// whose Initial had the Destination CID `original_dcid`.
pub fn retry_integrity_tag(version: Version, original_dcid: &[u8], retry: &[u8]) -> [u8; 16] {
    let (key, nonce) = match version {
        Version::V1 => (RETRY_KEY_V1, RETRY_NONCE_V1),
        Version::V2 => (RETRY_KEY_V2, RETRY_NONCE_V2),
    };
    let key =
        LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &key).expect("a 16-byte AES-128 key"));
    let mut pseudo = Vec::with_capacity(1 + original_dcid.len() + retry.len());
    pseudo.push(original_dcid.len() as u8);
    pseudo.extend_from_slice(original_dcid);
    pseudo.extend_from_slice(retry);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&pseudo[..]),
            &mut [],
        )
        .expect("sealing nothing cannot fail");
    let mut out = [0; 16];
    out.copy_from_slice(tag.as_ref());
    out
}

/// A Retry packet (RFC 9000 §17.2.5) to a client that sent `original_dcid`, telling it
/// to come back to `scid` with `token`. `unused` fills the four unused bits.
pub fn retry_packet(
    version: Version,
    original_dcid: &[u8],
    dcid: &[u8],
    scid: &[u8],
    token: &[u8],
    unused: u8,
) -> Vec<u8> {
    let mut out = vec![0xc0 | version.type_bits(LongType::Retry) | (unused & 0x0f)];
    out.extend_from_slice(&version.to_wire().to_be_bytes());
    out.push(dcid.len() as u8);
    out.extend_from_slice(dcid);
    out.push(scid.len() as u8);
    out.extend_from_slice(scid);
    out.extend_from_slice(token);
    let tag = retry_integrity_tag(version, original_dcid, &out);
    out.extend_from_slice(&tag);
    out
}

/// A short-header packet: first byte with the fixed bit set and the low two bits saying
/// one byte of packet number, the DCID, the packet number, then `payload`. `bits` fills
/// the spin, reserved and key-phase bits (which are protected, so anything goes).
pub fn short_header_packet(bits: u8, dcid: &[u8], packet_number: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + dcid.len() + payload.len());
    out.push(0x40 | (bits & 0x3c));
    out.extend_from_slice(dcid);
    out.push(packet_number);
    out.extend_from_slice(payload);
    out
}

/// The header of a single client Initial: no token, a 1-byte packet number.
pub fn initial_spec<'a>(dcid: &'a [u8], scid: &'a [u8], packet_number: u64) -> LongPacketSpec<'a> {
    LongPacketSpec {
        ty: LongType::Initial,
        dcid,
        scid,
        token: &[],
        packet_number,
        pn_len: 1,
    }
}

/// Seals one packet with `keys`, PADDING frames added inside it so that `out` reaches the
/// 1200 bytes a client Initial datagram needs (RFC 9000 §14.1).
pub fn seal_padded(keys: &Keys, spec: &LongPacketSpec<'_>, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    seal_long_packet(keys, spec, payload, out);
    let short = MIN_INITIAL_DATAGRAM.saturating_sub(out.len());
    if short > 0 {
        out.truncate(start);
        let mut padded = payload.to_vec();
        padded.resize(payload.len() + short, 0);
        seal_long_packet(keys, spec, &padded, out);
    }
}

/// Appends a CRYPTO frame whose offset may be anything (capped at the varint maximum).
pub fn write_crypto(offset: u64, data: &[u8], out: &mut Vec<u8>) {
    write_crypto_frame(offset.min(VARINT_MAX), data, out);
}

/// An ACK frame, described (possibly invalid: ranges below zero).
#[derive(Arbitrary, Clone, Debug)]
pub struct AckSpec {
    /// Largest Acknowledged.
    pub largest: u32,
    /// ACK Delay.
    pub delay: u16,
    /// First ACK Range.
    pub first: u16,
    /// Further (Gap, ACK Range Length) pairs; the first 8 are written.
    pub ranges: Vec<(u8, u8)>,
    /// Writes an ACK_ECN frame (type 0x03) with ECN counts.
    pub ecn: bool,
}

impl AckSpec {
    /// Appends the frame.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(if self.ecn { 0x03 } else { 0x02 });
        write_varint(u64::from(self.largest), out);
        write_varint(u64::from(self.delay), out);
        let ranges = &self.ranges[..self.ranges.len().min(8)];
        write_varint(ranges.len() as u64, out);
        write_varint(u64::from(self.first), out);
        for &(gap, len) in ranges {
            write_varint(u64::from(gap), out);
            write_varint(u64::from(len), out);
        }
        if self.ecn {
            out.extend_from_slice(&[1, 2, 3]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hello::ClientHelloSpec;
    use porter_core::wire::{parse_packet, Packet, Packets};
    use porter_core::{AssemblerConfig, InitialAssembler, Progress};

    #[test]
    fn rfc9001_a4_retry_tag() {
        let odcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
        let retry = retry_packet(
            Version::V1,
            &odcid,
            &[],
            &[0xf0, 0x67, 0xa5, 0x50, 0x2a, 0x42, 0x62, 0xb5],
            b"token",
            0x0f,
        );
        let expected = [
            0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x08, 0xf0, 0x67, 0xa5, 0x50, 0x2a, 0x42, 0x62,
            0xb5, 0x74, 0x6f, 0x6b, 0x65, 0x6e, 0x04, 0xa2, 0x65, 0xba, 0x2e, 0xff, 0x4d, 0x82,
            0x90, 0x58, 0xfb, 0x3f, 0x0f, 0x24, 0x96, 0xba,
        ];
        assert_eq!(retry, expected);
    }

    #[test]
    fn rfc9369_a4_retry_tag() {
        let odcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
        let retry = retry_packet(
            Version::V2,
            &odcid,
            &[],
            &[0xf0, 0x67, 0xa5, 0x50, 0x2a, 0x42, 0x62, 0xb5],
            b"token",
            0x0f,
        );
        let expected = [
            0xcf, 0x6b, 0x33, 0x43, 0xcf, 0x00, 0x08, 0xf0, 0x67, 0xa5, 0x50, 0x2a, 0x42, 0x62,
            0xb5, 0x74, 0x6f, 0x6b, 0x65, 0x6e, 0xc8, 0x64, 0x6c, 0xe8, 0xbf, 0xe3, 0x39, 0x52,
            0xd9, 0x55, 0x54, 0x36, 0x65, 0xdc, 0xc7, 0xb6,
        ];
        assert_eq!(retry, expected);
    }

    #[test]
    fn flights_decrypt_and_complete() {
        let mut rng = SimRng::new(9);
        for (post_quantum, datagrams) in [(false, 1), (true, 2)] {
            let hello = ClientHelloSpec {
                sni: Some("a.example".into()),
                post_quantum,
                ..ClientHelloSpec::default()
            }
            .build(&mut rng);
            for version in Version::ALL {
                let flight = client_initial_flight(
                    &InitialFlightSpec {
                        version,
                        dcid: &[7; 12],
                        scid: &[],
                        token: b"tok",
                        first_packet_number: 1,
                        datagram_size: 1250,
                        chaos: true,
                    },
                    &hello,
                );
                assert_eq!(flight.len(), datagrams);
                let mut a = InitialAssembler::new(AssemblerConfig::default());
                for (i, d) in flight.iter().rev().enumerate() {
                    assert_eq!(d.len(), 1250);
                    match a.handle_datagram(d).unwrap() {
                        Progress::NeedMore => assert!(i + 1 < datagrams),
                        Progress::Complete(info) => {
                            assert_eq!(i + 1, datagrams);
                            assert_eq!(info.sni.as_deref(), Some("a.example"));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn server_flight_is_two_coalesced_long_headers() {
        let mut rng = SimRng::new(1);
        let d = server_first_flight(Version::V2, &[1; 8], &[2; 4], &[3; 8], 0, 1200, &mut rng);
        assert!(d.len() >= 1200);
        let packets: Vec<_> = Packets::new(&d).collect::<Result<_, _>>().unwrap();
        let types: Vec<_> = packets
            .iter()
            .map(|p| match p {
                Packet::Long(l) => (l.ty, l.dcid, l.scid),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            types,
            [
                (LongType::Initial, &[2u8; 4][..], &[3u8; 8][..]),
                (LongType::Handshake, &[2; 4], &[3; 8])
            ]
        );
        let Packet::Long(initial) = packets[0] else {
            unreachable!()
        };
        let keys = Keys::initial(Version::V2, &[1; 8], Side::Client);
        let mut scratch = Vec::new();
        assert!(keys.decrypt(&initial, None, &mut scratch).is_err());
        let keys = Keys::initial(Version::V2, &[1; 8], Side::Server);
        let opened = keys.decrypt(&initial, None, &mut scratch).unwrap();
        assert_eq!(opened.payload[5], 0x06, "CRYPTO after the ACK");
        let (Packet::Long(_), used) = parse_packet(&d).unwrap() else {
            panic!()
        };
        assert!(used < d.len());
    }
}
