//! How long porter takes to read the SNI out of a client's first flight, next to the
//! cryptographic floor of the same work measured in the same run.
//!
//! - `sni::*`: a fresh `InitialAssembler` per iteration fed the captured datagrams until
//!   the ClientHello is complete (Chromium 156: its first two datagrams, one Initial
//!   each; aioquic 1.7: one 1200-byte datagram holding one Initial).
//! - `floor::*`: the same packets through `ring` directly, and nothing else: Initial key
//!   derivation (HKDF-Extract with the v1 salt, HKDF-Expand-Label of "client in", then of
//!   the key, IV and header protection key), and per packet a copy into a reused buffer,
//!   the header protection mask (one AES block) and its removal, and the AES-128-GCM
//!   open. Packet boundaries and packet-number offsets are located before timing starts;
//!   no frames or TLS are parsed and no CRYPTO data is reassembled.
//!
//! Run with `cargo bench -p porter-core --bench initial`; see BENCHMARKS.md.

use std::path::PathBuf;

use divan::{black_box, Bencher};
use porter_core::wire::{parse_packet, Packet};
use porter_core::{AssemblerConfig, ClientHelloInfo, InitialAssembler, Progress};
use ring::aead::{self, quic, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

fn main() {
    divan::main();
}

/// The datagrams of a capture in `tests/data`.
fn capture(name: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text = std::fs::read_to_string(path).expect("capture file");
    let list: serde_json::Value = serde_json::from_str(&text).expect("capture JSON");
    list.as_array()
        .expect("a list of datagrams")
        .iter()
        .map(|d| hex::decode(d["hex"].as_str().expect("hex")).expect("valid hex"))
        .collect()
}

fn chromium() -> Vec<Vec<u8>> {
    capture("chromium-156-h3.json")[..2].to_vec()
}

fn aioquic() -> Vec<Vec<u8>> {
    capture("aioquic-1.7-v1.json")[..1].to_vec()
}

/// Feeds `datagrams` to a fresh assembler until the ClientHello is complete.
fn read_sni(datagrams: &[Vec<u8>], scratch: &mut Vec<u8>) -> ClientHelloInfo {
    let mut attempt = InitialAssembler::new(AssemblerConfig::default());
    for d in datagrams {
        if let Ok(Progress::Complete(info)) = attempt.handle_datagram_with(black_box(d), scratch) {
            return info;
        }
    }
    panic!("the capture's ClientHello did not complete");
}

mod sni {
    use super::*;

    /// Chromium 156, two datagrams, with a decryption buffer reused across iterations
    /// (as a relay would).
    #[divan::bench]
    fn chromium_two_datagrams(bencher: Bencher<'_, '_>) {
        let datagrams = chromium();
        let mut scratch = Vec::new();
        assert_eq!(
            read_sni(&datagrams, &mut scratch).sni.as_deref(),
            Some("game1.example.com")
        );
        bencher.bench_local(|| read_sni(&datagrams, &mut scratch));
    }

    /// aioquic 1.7, one datagram, reused decryption buffer.
    #[divan::bench]
    fn aioquic_one_packet(bencher: Bencher<'_, '_>) {
        let datagrams = aioquic();
        let mut scratch = Vec::new();
        assert_eq!(
            read_sni(&datagrams, &mut scratch).sni.as_deref(),
            Some("game2.example.com")
        );
        bencher.bench_local(|| read_sni(&datagrams, &mut scratch));
    }

    /// Chromium through the convenience `handle_datagram`, which allocates its buffer.
    #[divan::bench]
    fn chromium_two_datagrams_fresh_buffer(bencher: Bencher<'_, '_>) {
        let datagrams = chromium();
        bencher.bench_local(|| read_sni(&datagrams, &mut Vec::new()));
    }
}

const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];

/// An HKDF output length that is not one of ring's algorithm types.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1), empty context.
fn expand<L: hkdf::KeyType, T: for<'a> From<hkdf::Okm<'a, L>>>(
    prk: &hkdf::Prk,
    label: &[u8],
    len: L,
) -> T {
    let out_len = (len.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    T::from(prk.expand(&info, len).expect("short HKDF output"))
}

/// One Initial packet located in its datagram before timing.
struct Located<'a> {
    packet: &'a [u8],
    pn_offset: usize,
}

fn locate(datagrams: &[Vec<u8>]) -> (Vec<u8>, Vec<Located<'_>>) {
    let mut dcid = Vec::new();
    let mut packets = Vec::new();
    for d in datagrams {
        let Ok((Packet::Long(p), _)) = parse_packet(d) else {
            panic!("a long header");
        };
        dcid = p.dcid.to_vec();
        packets.push(Located {
            packet: p.bytes,
            pn_offset: p.pn_offset,
        });
    }
    (dcid, packets)
}

/// Key derivation plus, per packet, header protection removal and AES-128-GCM open.
/// Returns the plaintext bytes.
fn crypto_floor(dcid: &[u8], packets: &[Located<'_>], buf: &mut Vec<u8>) -> usize {
    let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &SALT_V1).extract(dcid);
    let client: hkdf::Prk = expand(&initial, b"client in", hkdf::HKDF_SHA256);
    let key: UnboundKey = expand(&client, b"quic key", &aead::AES_128_GCM);
    let hp: quic::HeaderProtectionKey = expand(&client, b"quic hp", &quic::AES_128);
    let mut iv = [0u8; 12];
    client
        .expand(&[&[0, 12], &[13], b"tls13 ", b"quic iv", &[0]], Len(12))
        .and_then(|okm| okm.fill(&mut iv))
        .expect("short HKDF output");
    let key = LessSafeKey::new(key);

    let mut plain = 0;
    for p in packets {
        buf.clear();
        buf.extend_from_slice(black_box(p.packet));
        let sample = p.pn_offset + 4;
        let mask = hp
            .new_mask(&buf[sample..sample + 16])
            .expect("16-byte sample");
        buf[0] ^= mask[0] & 0x0f;
        let pn_len = usize::from(buf[0] & 0x03) + 1;
        let mut pn = 0u64;
        for i in 0..pn_len {
            buf[p.pn_offset + i] ^= mask[1 + i];
            pn = (pn << 8) | u64::from(buf[p.pn_offset + i]);
        }
        let mut nonce = iv;
        for (n, b) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
            *n ^= b;
        }
        let (header, body) = buf.split_at_mut(p.pn_offset + pn_len);
        let opened = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&*header),
                body,
            )
            .expect("the capture decrypts");
        plain += opened.len();
    }
    plain
}

mod floor {
    use super::*;

    /// Keys once, two packets opened: the crypto of `sni::chromium_two_datagrams`.
    #[divan::bench]
    fn chromium_two_datagrams(bencher: Bencher<'_, '_>) {
        let datagrams = chromium();
        let (dcid, packets) = locate(&datagrams);
        let mut buf = Vec::new();
        assert!(crypto_floor(&dcid, &packets, &mut buf) > 2000);
        bencher.bench_local(|| crypto_floor(&dcid, &packets, &mut buf));
    }

    /// Keys once, one packet opened: the crypto of `sni::aioquic_one_packet`.
    #[divan::bench]
    fn aioquic_one_packet(bencher: Bencher<'_, '_>) {
        let datagrams = aioquic();
        let (dcid, packets) = locate(&datagrams);
        let mut buf = Vec::new();
        assert!(crypto_floor(&dcid, &packets, &mut buf) > 400);
        bencher.bench_local(|| crypto_floor(&dcid, &packets, &mut buf));
    }
}
