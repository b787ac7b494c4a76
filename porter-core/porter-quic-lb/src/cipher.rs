//! The two encrypted encodings of the plaintext block (server ID ‖ nonce), §5.4.1 and
//! §5.4.2 of draft-ietf-quic-load-balancers-21, and their inverses (§5.5).
//!
//! Single pass: the 16-octet block is one AES-128-ECB block. Four pass: a four-round
//! Feistel network whose round function is AES-128-ECB over `expand(len, pass, half)`;
//! it only ever encrypts, so the load balancer needs no AES decryption for it. When the
//! block has an odd length the middle octet is split between the halves by nibble.

use aes::cipher::{BlockDecrypt, BlockEncrypt};
use aes::{Aes128, Block};

/// Longest half of a four-pass block: half of 19, rounded up.
const MAX_HALF: usize = 10;

pub(crate) fn single_pass_encrypt(cipher: &Aes128, block: &mut [u8; 16]) {
    let mut b = Block::from(*block);
    cipher.encrypt_block(&mut b);
    block.copy_from_slice(&b);
}

pub(crate) fn single_pass_decrypt(cipher: &Aes128, block: &mut [u8; 16]) {
    let mut b = Block::from(*block);
    cipher.decrypt_block(&mut b);
    block.copy_from_slice(&b);
}

/// The two halves of a plaintext or ciphertext block of `len` octets (5 to 19).
struct Halves {
    len: usize,
    half: usize,
    odd: bool,
    left: [u8; MAX_HALF],
    right: [u8; MAX_HALF],
}

impl Halves {
    /// Splits `block` (5 to 19 octets). With an odd length the middle octet's high
    /// nibble ends `left` and its low nibble starts `right`.
    fn split(block: &[u8]) -> Self {
        let len = block.len();
        debug_assert!((5..=19).contains(&len));
        let half = len.div_ceil(2);
        let odd = len % 2 == 1;
        let mut halves = Self {
            len,
            half,
            odd,
            left: [0; MAX_HALF],
            right: [0; MAX_HALF],
        };
        halves.left[..half].copy_from_slice(&block[..half]);
        halves.right[..half].copy_from_slice(&block[len - half..]);
        halves.clear_left();
        halves.clear_right();
        halves
    }

    /// Writes the halves back, dropping the zero nibbles of an odd split.
    fn join(&self, block: &mut [u8]) {
        let (len, half) = (self.len, self.half);
        block[..half].copy_from_slice(&self.left[..half]);
        if self.odd {
            block[half - 1] |= self.right[0];
            block[half..len].copy_from_slice(&self.right[1..half]);
        } else {
            block[half..len].copy_from_slice(&self.right[..half]);
        }
    }

    fn clear_left(&mut self) {
        if self.odd {
            self.left[self.half - 1] &= 0xf0;
        }
    }

    fn clear_right(&mut self) {
        if self.odd {
            self.right[0] &= 0x0f;
        }
    }

    /// AES-ECB(key, expand(len, pass, input)), truncated to a half and XORed into `out`.
    fn round(cipher: &Aes128, len: usize, half: usize, pass: u8, input: &[u8], out: &mut [u8]) {
        let mut b = Block::default();
        b[..half].copy_from_slice(&input[..half]);
        // len <= 19 fits in the length octet.
        b[14] = len as u8;
        b[15] = pass;
        cipher.encrypt_block(&mut b);
        for (o, k) in out[..half].iter_mut().zip(b.iter()) {
            *o ^= k;
        }
    }

    fn left_into_right(&mut self, cipher: &Aes128, pass: u8) {
        Self::round(
            cipher,
            self.len,
            self.half,
            pass,
            &self.left,
            &mut self.right,
        );
        self.clear_right();
    }

    fn right_into_left(&mut self, cipher: &Aes128, pass: u8) {
        Self::round(
            cipher,
            self.len,
            self.half,
            pass,
            &self.right,
            &mut self.left,
        );
        self.clear_left();
    }
}

/// Encrypts `block` (server ID ‖ nonce, 5 to 19 octets, not 16) in place.
pub(crate) fn four_pass_encrypt(cipher: &Aes128, block: &mut [u8]) {
    let mut h = Halves::split(block);
    h.left_into_right(cipher, 1);
    h.right_into_left(cipher, 2);
    h.left_into_right(cipher, 3);
    h.right_into_left(cipher, 4);
    h.join(block);
}

/// Decrypts `block` in place far enough to recover its first `server_id_len` octets:
/// three passes when the server ID lies wholly in the left half (it is no longer than
/// the nonce), four otherwise. With four passes the whole block is plaintext afterwards.
pub(crate) fn four_pass_decrypt(cipher: &Aes128, block: &mut [u8], server_id_len: usize) {
    let mut h = Halves::split(block);
    h.right_into_left(cipher, 4);
    h.left_into_right(cipher, 3);
    h.right_into_left(cipher, 2);
    if server_id_len > h.len / 2 {
        h.left_into_right(cipher, 1);
        h.join(block);
    } else {
        block[..server_id_len].copy_from_slice(&h.left[..server_id_len]);
    }
}

#[cfg(test)]
mod tests {
    use aes::cipher::KeyInit;
    use proptest::prelude::*;

    use super::*;

    fn cipher(key: [u8; 16]) -> Aes128 {
        Aes128::new(&key.into())
    }

    /// The worked example of §5.4.2.4 (odd length, 7 octets).
    #[test]
    fn encryption_example() {
        let c = cipher(hex_array("fdf726a9893ec05c0632d3956680baf0"));
        let mut block = hex::decode("31441a9c69c275").unwrap();
        four_pass_encrypt(&c, &mut block);
        assert_eq!(hex::encode(&block), "67947d29be054a");
        four_pass_decrypt(&c, &mut block, 3);
        assert_eq!(hex::encode(&block[..3]), "31441a");
    }

    fn hex_array(s: &str) -> [u8; 16] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    proptest! {
        /// With the fourth pass the decoder inverts the whole block, nonce included.
        #[test]
        fn four_pass_inverts(key: [u8; 16], block in proptest::collection::vec(any::<u8>(), 5..=19)) {
            prop_assume!(block.len() != 16);
            let c = cipher(key);
            let mut work = block.clone();
            four_pass_encrypt(&c, &mut work);
            four_pass_decrypt(&c, &mut work, block.len());
            prop_assert_eq!(work, block);
        }

        #[test]
        fn single_pass_inverts(key: [u8; 16], block: [u8; 16]) {
            let c = cipher(key);
            let mut work = block;
            single_pass_encrypt(&c, &mut work);
            single_pass_decrypt(&c, &mut work);
            prop_assert_eq!(work, block);
        }
    }
}
