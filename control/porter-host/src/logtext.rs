//! Log hygiene for text and events that come from the network: bytes a client chose
//! (ALPN protocol names, server names) are escaped and truncated before they reach a
//! human log line, and lines written per session or per datagram are rate limited, with
//! what was left out counted, so a flood cannot turn into a flood of log.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

/// The most bytes of one network string written to a log line.
pub const MAX_LOGGED_BYTES: usize = 64;

/// `bytes` as printable ASCII: anything else (control characters such as `\n` and ESC,
/// non-ASCII, and the `\`, `,` and `"` that would make the line ambiguous) as `\xNN`, at
/// most [`MAX_LOGGED_BYTES`] input bytes, followed by `...(+N)` when cut.
pub fn escape_network_text(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(MAX_LOGGED_BYTES)];
    let mut out = String::with_capacity(shown.len());
    for &b in shown {
        if (0x20..0x7f).contains(&b) && !matches!(b, b'\\' | b',' | b'"') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if bytes.len() > shown.len() {
        let _ = write!(out, "...(+{})", bytes.len() - shown.len());
    }
    out
}

/// A token bucket for log lines: `per_second` sustained, as many in a burst.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
    /// Lines left out since the last one written.
    pending: u64,
    /// Lines left out since start.
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `per_second` lines a second.
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second: per_second as f64,
            tokens: per_second as f64,
            last: None,
            pending: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` with the number of lines left
    /// out just before it (to mention in it), `None` when it must be left out (counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.pending))
        } else {
            self.pending += 1;
            self.suppressed += 1;
            None
        }
    }

    /// Lines left out since start.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Log lines about socket errors (opening upstream sockets, sends, receives), from any
/// task: at most 2 a second.
pub(crate) static SOCKET_ERRORS: Mutex<LogLimiter> = Mutex::new(LogLimiter::new(2));

/// Whether a socket-error line may be written now (see [`LogLimiter::allow`]).
pub(crate) fn socket_error_allowed() -> Option<u64> {
    SOCKET_ERRORS
        .lock()
        .map_or(None, |mut limiter| limiter.allow(Instant::now()))
}

/// Socket-error lines left out since start.
pub(crate) fn socket_errors_suppressed() -> u64 {
    SOCKET_ERRORS
        .lock()
        .map_or(0, |limiter| limiter.suppressed())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn network_text_is_escaped_and_cut() {
        assert_eq!(escape_network_text(b"h3"), "h3");
        assert_eq!(
            escape_network_text(b"h3\n2024-01-01 INFO forged\x1b[31m"),
            "h3\\x0a2024-01-01 INFO forged\\x1b[31m"
        );
        assert_eq!(
            escape_network_text(b"a,b\\\"\xff"),
            "a\\x2cb\\x5c\\x22\\xff"
        );
        let long = escape_network_text(&[b'x'; 100]);
        assert_eq!(long, format!("{}...(+36)", "x".repeat(64)));
        assert!(escape_network_text(&[0u8; 1000]).len() < 300);
    }

    #[test]
    fn the_limiter_counts_what_it_leaves_out() {
        let mut limiter = LogLimiter::new(10);
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|_| limiter.allow(t0).is_some()).count();
        assert_eq!(allowed, 10);
        assert_eq!(limiter.suppressed(), 990);
        // A second later the next line says how many were left out before it.
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), Some(990));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), Some(0));
    }
}
