//! Virtual time: an [`Instant`] that only moves when the simulation says so.

use std::time::{Duration, Instant};

/// A virtual clock. Every instant it hands out is derived from the base instant given
/// at construction, so a run does not depend on the machine's clock or speed.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
    now: Instant,
}

impl Clock {
    /// A clock reading `base`.
    pub fn new(base: Instant) -> Self {
        Self { base, now: base }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The instant the clock started at.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Moves the clock to `to`; the clock never goes backwards, so an earlier `to` is
    /// ignored.
    pub fn advance_to(&mut self, to: Instant) {
        self.now = self.now.max(to);
    }
}
