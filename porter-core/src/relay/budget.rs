//! Small helpers of the relay's tables and budgets: the hasher for IDs the relay hands
//! out itself, and the token bucket that limits new sessions per second.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

/// Hashes the IDs the relay hands out itself (sessions, allocations). They count up and
/// the network cannot choose them, so they need no keyed (SipHash) hashing: one multiply
/// spreads them over the table, on the path of every forwarded datagram.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits (hashbrown's control byte) and the low bits
        // (its bucket index) both depend on every bit of `n`.
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(32);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Debug)]
pub(crate) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.take_keeping(now, 0)
    }

    /// Takes a token only if `keep` tokens are left after it: the last `keep` are kept
    /// for others.
    pub(crate) fn take_keeping(&mut self, now: Instant, keep: u32) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.tokens >= 1.0 + f64::from(keep) {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 3);
        assert!(
            (0..3).all(|_| bucket.take(t0)),
            "the burst is available at once"
        );
        assert!(!bucket.take(t0), "then it is empty");
        // 10 per second: one token every 100 ms.
        assert!(!bucket.take(t0 + Duration::from_millis(50)));
        assert!(bucket.take(t0 + Duration::from_millis(160)));
        assert!(!bucket.take(t0 + Duration::from_millis(160)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn the_last_tokens_can_be_kept_for_others() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 10);
        assert_eq!((0..20).filter(|_| bucket.take_keeping(t0, 4)).count(), 6);
        assert_eq!((0..20).filter(|_| bucket.take(t0)).count(), 4);
    }

    #[test]
    fn a_zero_rate_means_no_limit_and_time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut unlimited = TokenBucket::new(0, 1);
        assert!((0..10_000).all(|_| unlimited.take(t0)));
        let mut bucket = TokenBucket::new(1, 1);
        assert!(bucket.take(t0));
        assert!(
            !bucket.take(t0 - Duration::from_secs(5)),
            "an earlier instant adds nothing"
        );
        assert!(bucket.take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn the_id_hasher_spreads_consecutive_ids_over_high_and_low_bits() {
        let hashes: Vec<u64> = (1..=64u64)
            .map(|n| {
                let mut h = IdHasher::default();
                h.write_u64(n);
                h.finish()
            })
            .collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0x3f).collect();
        let high: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 24, "low bits collide too often: {}", low.len());
        assert!(
            high.len() > 24,
            "high bits collide too often: {}",
            high.len()
        );
    }
}
