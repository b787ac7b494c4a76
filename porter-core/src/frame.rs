//! The frames an Initial packet may carry (RFC 9000 §12.4, Table 3): PADDING, PING, ACK
//! (with or without ECN counts), CRYPTO and CONNECTION_CLOSE of the transport type. Any
//! other frame type makes the packet invalid (RFC 9000 §12.4: a PROTOCOL_VIOLATION).

use thiserror::Error;

use crate::wire::Reader;

/// A frame read from an Initial packet's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialFrame<'a> {
    /// A run of PADDING bytes.
    Padding(usize),
    /// PING.
    Ping,
    /// ACK or ACK_ECN; the ranges are validated but not kept.
    Ack,
    /// CRYPTO: a piece of the TLS handshake stream at `offset`.
    Crypto {
        /// Offset in the CRYPTO stream.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// CONNECTION_CLOSE (transport error type 0x1c).
    ConnectionClose {
        /// The error code.
        error_code: u64,
    },
}

/// Why an Initial's payload is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame runs past the end of the payload.
    #[error("frame truncated")]
    Truncated,
    /// A frame type that is not allowed in Initial packets.
    #[error("frame type {0:#x} not allowed in an Initial packet")]
    NotAllowed(u64),
    /// A CRYPTO frame reaches beyond 2^62 - 1 (RFC 9000 §19.6).
    #[error("CRYPTO frame beyond the maximum stream offset")]
    OffsetTooLarge,
    /// An ACK frame whose ranges go below packet number 0.
    #[error("malformed ACK frame")]
    BadAck,
}

/// Iterates over the frames of a decrypted Initial payload. After an error it stops.
#[derive(Clone, Debug)]
pub struct InitialFrames<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> InitialFrames<'a> {
    /// Iterates over `payload`'s frames.
    pub fn new(payload: &'a [u8]) -> Self {
        Self {
            r: Reader::new(payload),
            failed: false,
        }
    }

    fn frame(&mut self) -> Result<InitialFrame<'a>, FrameError> {
        let r = &mut self.r;
        let ty = r.varint().ok_or(FrameError::Truncated)?;
        match ty {
            0x00 => {
                // Runs of padding are common (whole packets of it): consume them at once.
                let zeros = leading_zeros(r.clone().rest());
                r.skip(zeros).ok_or(FrameError::Truncated)?;
                Ok(InitialFrame::Padding(1 + zeros))
            }
            0x01 => Ok(InitialFrame::Ping),
            0x02 | 0x03 => {
                let largest = r.varint().ok_or(FrameError::Truncated)?;
                let _delay = r.varint().ok_or(FrameError::Truncated)?;
                let count = r.varint().ok_or(FrameError::Truncated)?;
                let first = r.varint().ok_or(FrameError::Truncated)?;
                let mut smallest = largest.checked_sub(first).ok_or(FrameError::BadAck)?;
                for _ in 0..count {
                    // Every range takes at least two bytes, so a huge count runs out of
                    // bytes quickly instead of looping.
                    let gap = r.varint().ok_or(FrameError::Truncated)?;
                    let len = r.varint().ok_or(FrameError::Truncated)?;
                    smallest = smallest
                        .checked_sub(gap + 2)
                        .and_then(|l| l.checked_sub(len))
                        .ok_or(FrameError::BadAck)?;
                }
                if ty == 0x03 {
                    for _ in 0..3 {
                        r.varint().ok_or(FrameError::Truncated)?;
                    }
                }
                Ok(InitialFrame::Ack)
            }
            0x06 => {
                let offset = r.varint().ok_or(FrameError::Truncated)?;
                let len = r.varint().ok_or(FrameError::Truncated)?;
                if offset + len > crate::wire::VARINT_MAX {
                    return Err(FrameError::OffsetTooLarge);
                }
                let len = usize::try_from(len).map_err(|_| FrameError::Truncated)?;
                let data = r.bytes(len).ok_or(FrameError::Truncated)?;
                Ok(InitialFrame::Crypto { offset, data })
            }
            0x1c => {
                let error_code = r.varint().ok_or(FrameError::Truncated)?;
                let _frame_type = r.varint().ok_or(FrameError::Truncated)?;
                let reason_len = r.varint().ok_or(FrameError::Truncated)?;
                let reason_len = usize::try_from(reason_len).map_err(|_| FrameError::Truncated)?;
                r.skip(reason_len).ok_or(FrameError::Truncated)?;
                Ok(InitialFrame::ConnectionClose { error_code })
            }
            other => Err(FrameError::NotAllowed(other)),
        }
    }
}

/// The number of zero bytes `bytes` starts with, sixteen at a time where it can.
fn leading_zeros(bytes: &[u8]) -> usize {
    let mut n = 0;
    for chunk in bytes.chunks_exact(16) {
        let word = u128::from_ne_bytes(chunk.try_into().expect("chunks of 16 bytes"));
        if word != 0 {
            break;
        }
        n += 16;
    }
    n + bytes[n..].iter().take_while(|&&b| b == 0).count()
}

impl<'a> Iterator for InitialFrames<'a> {
    type Item = Result<InitialFrame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let frame = self.frame();
        self.failed = frame.is_err();
        Some(frame)
    }
}

/// Appends a CRYPTO frame.
pub fn write_crypto_frame(offset: u64, data: &[u8], out: &mut Vec<u8>) {
    out.push(0x06);
    crate::wire::write_varint(offset, out);
    crate::wire::write_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// Appends a transport CONNECTION_CLOSE frame (type 0x1c) with an empty reason.
pub fn write_connection_close(error_code: u64, frame_type: u64, out: &mut Vec<u8>) {
    out.push(0x1c);
    crate::wire::write_varint(error_code, out);
    crate::wire::write_varint(frame_type, out);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_allowed_frame() {
        let mut p = vec![0, 0, 0, 1];
        p.extend_from_slice(&[0x02, 10, 0, 1, 2, 1, 3]); // ACK 10..8, gap, 5..2
        p.extend_from_slice(&[0x03, 3, 0, 0, 3, 1, 2, 3]); // ACK_ECN 3..0
        write_crypto_frame(5, b"hello", &mut p);
        write_connection_close(0x0a, 0, &mut p);
        let frames: Vec<_> = InitialFrames::new(&p).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            frames,
            vec![
                InitialFrame::Padding(3),
                InitialFrame::Ping,
                InitialFrame::Ack,
                InitialFrame::Ack,
                InitialFrame::Crypto {
                    offset: 5,
                    data: b"hello"
                },
                InitialFrame::ConnectionClose { error_code: 0x0a },
            ]
        );
    }

    #[test]
    fn rejects_other_frames_and_bad_acks() {
        let stream = [0x08, 0, 0];
        assert_eq!(
            InitialFrames::new(&stream).next(),
            Some(Err(FrameError::NotAllowed(0x08)))
        );
        let ack_below_zero = [0x02, 1, 0, 0, 2];
        assert_eq!(
            InitialFrames::new(&ack_below_zero).next(),
            Some(Err(FrameError::BadAck))
        );
        let short_crypto = [0x06, 0, 5, 1, 2];
        let mut it = InitialFrames::new(&short_crypto);
        assert_eq!(it.next(), Some(Err(FrameError::Truncated)));
        assert_eq!(it.next(), None);
    }
}
