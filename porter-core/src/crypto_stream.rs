//! Reassembly of the Initial CRYPTO stream (RFC 9000 §19.6): frames may arrive in any
//! order, split anywhere, overlapping, duplicated by retransmission, and spread over
//! several packets and datagrams. Real clients do all of this (Chromium shuffles and
//! splits its CRYPTO frames on purpose).
//!
//! The buffer is bounded: no byte at or beyond the configured limit is stored, and the
//! number of disjoint received ranges is capped, so a peer cannot make the relay hold more
//! than `max_len` bytes or spend more than a bounded amount of work per frame.

use std::ops::Range;

use thiserror::Error;

/// The most disjoint byte ranges kept before the stream is considered hostile. Merging
/// keeps real clients far below this (a shuffled two-packet ClientHello leaves a handful).
pub const MAX_RANGES: usize = 64;

/// The first allocation of the reassembly buffer (when the limit allows): most
/// ClientHellos without post-quantum key shares fit.
const MIN_CAPACITY: usize = 1024;

/// Why the CRYPTO stream cannot be reassembled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CryptoStreamError {
    /// Data at or beyond the configured limit.
    #[error("CRYPTO data beyond the {limit}-byte limit")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// More than [`MAX_RANGES`] disjoint pieces.
    #[error("CRYPTO stream split into too many disjoint pieces")]
    TooFragmented,
}

/// A bounded reassembly buffer for one connection's Initial CRYPTO stream.
#[derive(Clone, Debug)]
pub struct CryptoStream {
    buf: Vec<u8>,
    /// Received ranges: sorted, disjoint and not adjacent.
    ranges: Vec<Range<usize>>,
    max_len: usize,
}

impl CryptoStream {
    /// An empty stream that accepts bytes at offsets below `max_len`.
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            ranges: Vec::new(),
            max_len,
        }
    }

    /// Adds the bytes of one CRYPTO frame. Bytes already received are overwritten with
    /// the retransmitted copy, which for a well-behaved client is identical.
    pub fn insert(&mut self, offset: u64, data: &[u8]) -> Result<(), CryptoStreamError> {
        if data.is_empty() {
            return Ok(());
        }
        let too_large = CryptoStreamError::TooLarge {
            limit: self.max_len,
        };
        let start = usize::try_from(offset).map_err(|_| too_large)?;
        let end = start
            .checked_add(data.len())
            .filter(|&end| end <= self.max_len)
            .ok_or(too_large)?;

        let first = self.ranges.partition_point(|r| r.end < start);
        let mut last = first;
        let (mut lo, mut hi) = (start, end);
        while let Some(r) = self.ranges.get(last) {
            if r.start > hi {
                break;
            }
            lo = lo.min(r.start);
            hi = hi.max(r.end);
            last += 1;
        }
        if last == first {
            if self.ranges.len() >= MAX_RANGES {
                return Err(CryptoStreamError::TooFragmented);
            }
            self.ranges.insert(first, lo..hi);
        } else {
            self.ranges[first] = lo..hi;
            self.ranges.drain(first + 1..last);
        }

        if self.buf.len() < end {
            self.grow(end);
        }
        self.buf[start..end].copy_from_slice(data);
        Ok(())
    }

    /// Extends the buffer to `end` bytes. Capacity at least doubles, so a stream built
    /// from many frames reallocates only a few times, but never exceeds `max_len`: the
    /// memory held stays within the limit, not merely the bytes counted.
    fn grow(&mut self, end: usize) {
        let capacity = self.buf.capacity();
        if end > capacity {
            let target = end
                .max(capacity.saturating_mul(2))
                .max(MIN_CAPACITY)
                .min(self.max_len);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.resize(end, 0);
    }

    /// The bytes received contiguously from offset 0.
    pub fn contiguous(&self) -> &[u8] {
        match self.ranges.first() {
            Some(r) if r.start == 0 => &self.buf[..r.end],
            _ => &[],
        }
    }

    /// Bytes of buffer in use (the highest offset received, holes included).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of memory the buffer holds (its allocations, not merely the bytes
    /// received): what a relay charges to its buffer budgets.
    pub fn memory(&self) -> usize {
        self.buf.capacity() + self.ranges.capacity() * size_of::<Range<usize>>()
    }

    /// The configured limit.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_overlapping_and_duplicated() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut s = CryptoStream::new(1000);
        s.insert(50, &data[50..80]).unwrap();
        assert_eq!(s.contiguous(), b"");
        s.insert(10, &data[10..60]).unwrap();
        s.insert(10, &data[10..60]).unwrap();
        assert_eq!(s.contiguous(), b"");
        s.insert(0, &data[0..11]).unwrap();
        assert_eq!(s.contiguous(), &data[..80]);
        s.insert(80, &data[80..100]).unwrap();
        assert_eq!(s.contiguous(), &data[..]);
        assert_eq!(s.ranges, vec![0..100]);
    }

    #[test]
    fn limits_hold() {
        let mut s = CryptoStream::new(64);
        assert_eq!(
            s.insert(60, &[0; 5]),
            Err(CryptoStreamError::TooLarge { limit: 64 })
        );
        assert_eq!(
            s.insert(u64::MAX, &[0]),
            Err(CryptoStreamError::TooLarge { limit: 64 })
        );
        s.insert(60, &[0; 4]).unwrap();
        assert_eq!(s.buffered(), 64);
        assert_eq!(s.buf.capacity(), 64, "memory held stays within the limit");
        assert!(
            s.memory() >= 64,
            "memory counts the allocation: {}",
            s.memory()
        );

        // Growth that would double past the limit stops at the limit.
        let mut s = CryptoStream::new(10_000);
        for end in [700, 1500, 6000, 9000, 10_000] {
            s.insert(end - 100, &[1; 100]).unwrap();
            assert!(s.buf.capacity() <= 10_000, "{}", s.buf.capacity());
        }
        assert_eq!(s.buffered(), 10_000);

        let mut s = CryptoStream::new(1 << 20);
        for i in 0..MAX_RANGES {
            s.insert(i as u64 * 2, &[1]).unwrap();
        }
        assert_eq!(
            s.insert(MAX_RANGES as u64 * 2, &[1]),
            Err(CryptoStreamError::TooFragmented)
        );
        // Filling a hole still works: it merges instead of adding a range.
        s.insert(1, &[1]).unwrap();
        assert_eq!(s.contiguous().len(), 3);
    }
}
