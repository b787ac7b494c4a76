//! What a load balancer pays per datagram to read the server ID out of a destination
//! CID, for each QUIC-LB mode.
//!
//! Each case decodes a batch of 1,024 distinct CIDs (all encoded beforehand with the same
//! configuration, distinct nonces) through a [`Decoder`] holding that configuration and
//! one other; the figure divan reports is per batch, divided by 1,024 in the counter
//! column (`cids` per second). Cases:
//!
//! - `plaintext`: 3-octet server ID, 4-octet nonce: a copy.
//! - `single_pass`: 8 + 8 octets: one AES-128 block decryption.
//! - `four_pass_3`: 3 + 4 octets (odd length): three AES-128 block encryptions.
//! - `four_pass_4`: 10 + 5 octets (server ID longer than the nonce): four.
//! - `unknown_config`: a CID naming a config ID the decoder lacks: the early exit.
//! - `floor_aes_block_chained`: one AES-128 block encryption whose input is the previous
//!   output, the latency each four-pass round pays (per item = per block).
//!
//! Run with `cargo bench -p porter-quic-lb`.

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use porter_quic_lb::{Config, ConnectionId, CounterNonces, Decoder, Encoder, Key, ServerId};

const BATCH: usize = 1024;

fn main() {
    divan::main();
}

fn setup(server_id_len: usize, nonce_len: usize, key: Option<Key>) -> (Decoder, Vec<ConnectionId>) {
    let config = Config::new(1, server_id_len, nonce_len, key).expect("valid configuration");
    let server_id = ServerId::new(&[0x5a; 15][..server_id_len]).expect("server ID length");
    let nonces = CounterNonces::starting_at(&[0x11; 18][..nonce_len]);
    let mut encoder =
        Encoder::with_nonce_source(config.clone(), server_id, Box::new(nonces)).expect("fits");
    let cids = (0..BATCH)
        .map(|_| encoder.next_cid().expect("fresh nonce"))
        .collect();
    let mut decoder = Decoder::new();
    decoder.insert(config);
    decoder.insert(Config::new(4, 4, 4, Some(Key::new([3; 16]))).expect("valid configuration"));
    (decoder, cids)
}

fn run(bencher: Bencher<'_, '_>, decoder: &Decoder, cids: &[ConnectionId], expect_ok: bool) {
    bencher.counter(ItemsCount::new(cids.len())).bench(|| {
        let mut routed = 0usize;
        for cid in cids {
            routed += usize::from(black_box(decoder).decode(black_box(cid)).is_ok());
        }
        assert_eq!(routed == cids.len(), expect_ok);
        routed
    });
}

#[divan::bench]
fn plaintext(bencher: Bencher<'_, '_>) {
    let (decoder, cids) = setup(3, 4, None);
    run(bencher, &decoder, &cids, true);
}

#[divan::bench]
fn single_pass(bencher: Bencher<'_, '_>) {
    let (decoder, cids) = setup(8, 8, Some(Key::new([0x8f; 16])));
    run(bencher, &decoder, &cids, true);
}

#[divan::bench]
fn four_pass_3(bencher: Bencher<'_, '_>) {
    let (decoder, cids) = setup(3, 4, Some(Key::new([0x8f; 16])));
    run(bencher, &decoder, &cids, true);
}

#[divan::bench]
fn four_pass_4(bencher: Bencher<'_, '_>) {
    let (decoder, cids) = setup(10, 5, Some(Key::new([0x8f; 16])));
    run(bencher, &decoder, &cids, true);
}

#[divan::bench]
fn unknown_config(bencher: Bencher<'_, '_>) {
    let (_, cids) = setup(3, 4, None);
    let mut decoder = Decoder::new();
    decoder.insert(Config::new(4, 4, 4, None).expect("valid configuration"));
    run(bencher, &decoder, &cids, false);
}

/// The floor of the encrypted modes: one AES-128 block encryption whose input depends
/// on the previous output, as the passes of the four-pass decode do (same `aes` crate).
#[divan::bench]
fn floor_aes_block_chained(bencher: Bencher<'_, '_>) {
    use aes::cipher::{BlockEncrypt, KeyInit};
    let cipher = aes::Aes128::new(&[0x8f; 16].into());
    bencher.counter(ItemsCount::new(BATCH)).bench(|| {
        let mut block = aes::Block::default();
        for i in 0..BATCH {
            block[0] ^= i as u8;
            black_box(&cipher).encrypt_block(&mut block);
        }
        block
    });
}
