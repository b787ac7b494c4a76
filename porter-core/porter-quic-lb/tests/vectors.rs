//! Known answers from draft-ietf-quic-load-balancers-21: every row of Appendix B
//! ("Load Balancer Test Vectors", B.1 unencrypted and B.2 encrypted) and the worked
//! four-pass example of §5.4.2.4. Each is encoded (server ID + nonce -> CID) and decoded
//! (CID -> config ID + server ID), alone and through a `Decoder` holding all of them.
//!
//! The appendix states that in all cases the server encodes the CID length in the first
//! octet. Two rows as printed contradict that and their own columns; they are read as
//! follows (the octets that carry the server ID are unaffected):
//!
//! - B.1, second row, prints nonce `3487d970b` (nine hex digits) and CID
//!   `20a350d28b4203487d970b`, which does not even contain its server ID `350d28b420` at
//!   octet 1. The row is the concatenation of values printed without leading zeros:
//!   first octet `0x20 | 0x0a` (config 1, length 10), the server ID, and a nonce whose
//!   leading zero nibble was dropped. Read as nonce `03487d970b`, CID
//!   `2a350d28b42003487d970b`. The decode checks also the other plausible reading of the
//!   nonce (`3487d9700b`, a zero dropped in its last octet): the server ID is the same.
//! - B.2, fourth row, prints the CID with first octet `0x12` (config 0, length 18) for
//!   config rotation bits 3; with 3 it is `0x72`. The other 18 octets are as printed.

use porter_quic_lb::{Config, Decoder, Key, Mode, NotRoutable, ServerId};

const APPENDIX_KEY: &str = "8f95f09245765f80256934e50c66207f";

struct Vector {
    what: &'static str,
    config_id: u8,
    key: Option<&'static str>,
    server_id: &'static str,
    nonce: &'static str,
    cid: &'static str,
    mode: Mode,
}

const VECTORS: &[Vector] = &[
    // B.1 Unencrypted CIDs.
    Vector {
        what: "B.1 row 1",
        config_id: 0,
        key: None,
        server_id: "c4605e",
        nonce: "4504cc4f",
        cid: "07c4605e4504cc4f",
        mode: Mode::Plaintext,
    },
    Vector {
        what: "B.1 row 2 (as read, see above)",
        config_id: 1,
        key: None,
        server_id: "350d28b420",
        nonce: "03487d970b",
        cid: "2a350d28b42003487d970b",
        mode: Mode::Plaintext,
    },
    // B.2 Encrypted CIDs.
    Vector {
        what: "B.2 row 1 (four-pass, odd length, three decryption passes)",
        config_id: 0,
        key: Some(APPENDIX_KEY),
        server_id: "ed793a",
        nonce: "ee080dbf",
        cid: "0720b1d07b359d3c",
        mode: Mode::FourPass,
    },
    Vector {
        what: "B.2 row 2 (four-pass, server ID longer than nonce: fourth pass)",
        config_id: 1,
        key: Some(APPENDIX_KEY),
        server_id: "ed793a51d49b8f5fab65",
        nonce: "ee080dbf48",
        cid: "2fcc381bc74cb4fbad2823a3d1f8fed2",
        mode: Mode::FourPass,
    },
    Vector {
        what: "B.2 row 3 (single-pass)",
        config_id: 2,
        key: Some(APPENDIX_KEY),
        server_id: "ed793a51d49b8f5f",
        nonce: "ee080dbf48c0d1e5",
        cid: "504dd2d05a7b0de9b2b9907afb5ecf8cc3",
        mode: Mode::SinglePass,
    },
    Vector {
        what: "B.2 row 4 (four-pass, even length; first octet as read, see above)",
        config_id: 3,
        key: Some(APPENDIX_KEY),
        server_id: "ed793a51d49b8f5fab",
        nonce: "ee080dbf48c0d1e55d",
        cid: "725779c9cc86beb3a3a4a3ca96fce4bfe0cdbc",
        mode: Mode::FourPass,
    },
    // §5.4.2.4 Encryption Example.
    Vector {
        what: "§5.4.2.4 worked example",
        config_id: 0,
        key: Some("fdf726a9893ec05c0632d3956680baf0"),
        server_id: "31441a",
        nonce: "9c69c275",
        cid: "0767947d29be054a",
        mode: Mode::FourPass,
    },
];

fn bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).expect("test vector hex")
}

fn config(v: &Vector) -> Config {
    let key = v
        .key
        .map(|k| Key::new(bytes(k).try_into().expect("16-octet key")));
    let sid_len = v.server_id.len() / 2;
    let nonce_len = v.nonce.len() / 2;
    Config::new(v.config_id, sid_len, nonce_len, key).expect("vector configuration is valid")
}

#[test]
fn every_vector_encodes_to_its_cid() {
    for v in VECTORS {
        let config = config(v);
        assert_eq!(config.mode(), v.mode, "{}", v.what);
        let cid = config
            .encode(&bytes(v.server_id), &bytes(v.nonce))
            .expect("encodes");
        assert_eq!(hex::encode(&*cid), v.cid, "{}", v.what);
        assert_eq!(cid.len(), config.cid_len(), "{}", v.what);
    }
}

#[test]
fn every_vector_decodes_to_its_server_id() {
    for v in VECTORS {
        let route = config(v).decode(&bytes(v.cid)).expect("routes");
        assert_eq!(route.config_id.value(), v.config_id, "{}", v.what);
        assert_eq!(hex::encode(&*route.server_id), v.server_id, "{}", v.what);
        assert_eq!(route.cid_len, v.cid.len() / 2, "{}", v.what);
    }
}

/// The appendix's rows use config IDs 0 to 3 with the same key: a load balancer holding
/// all of them at once routes each CID by its first octet.
#[test]
fn one_decoder_holds_the_appendix_configurations() {
    let appendix = &VECTORS[..6];
    for (table, rows) in [("B.1", &appendix[..2]), ("B.2", &appendix[2..])] {
        let mut decoder = Decoder::new();
        for v in rows {
            assert!(
                decoder.insert(config(v)).is_none(),
                "{table}: one per config ID"
            );
        }
        for v in rows {
            let cid = bytes(v.cid);
            let route = decoder.decode(&cid).expect("routes");
            assert_eq!(hex::encode(&*route.server_id), v.server_id, "{}", v.what);
            // A short header: the DCID runs into the rest of the packet.
            let mut packet = vec![0x40];
            packet.extend_from_slice(&cid);
            packet.extend_from_slice(&[0xee; 40]);
            let route = decoder.decode_short_header(&packet).expect("routes");
            assert_eq!(hex::encode(&*route.server_id), v.server_id, "{}", v.what);
            assert_eq!(route.cid_len, cid.len(), "{}", v.what);
            // One octet short of the configuration's length.
            assert!(
                matches!(
                    decoder.decode(&cid[..cid.len() - 1]),
                    Err(NotRoutable::TooShort { .. })
                ),
                "{}",
                v.what
            );
        }
    }
}

#[test]
fn b1_row_2_other_reading_of_the_nonce() {
    let v = &VECTORS[1];
    let config = config(v);
    let cid = config
        .encode(&bytes(v.server_id), &bytes("3487d9700b"))
        .expect("encodes");
    assert_eq!(hex::encode(&*cid), "2a350d28b4203487d9700b");
    let route = config.decode(&cid).expect("routes");
    assert_eq!(route.server_id, ServerId::new(&bytes(v.server_id)).unwrap());
}

/// The literal B.1 row-2 CID does not carry its server ID: proof that the row is
/// misprinted rather than that the decoder is wrong.
#[test]
fn b1_row_2_as_printed_is_not_consistent() {
    let v = &VECTORS[1];
    let route = config(v)
        .decode(&bytes("20a350d28b4203487d970b"))
        .expect("config 1, long enough");
    assert_ne!(hex::encode(&*route.server_id), v.server_id);
}
