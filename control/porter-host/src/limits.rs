//! What the process can open: every client path holds an upstream socket (a file
//! descriptor and an ephemeral port), so the relay's cap on paths
//! ([`porter_core::RelayConfig::max_paths`]) is set no higher than the descriptors left
//! under the `NOFILE` limit (less a reserve for the API, Redis, health probes and the
//! like) and the size of the ephemeral port range. [`raise_fd_limit`] first raises the
//! soft limit to the hard one: the soft limit is commonly 1024 in containers and under
//! systemd, far below what a relay needs.

use std::io;
use std::path::Path;

use rustix::process::{getrlimit, setrlimit, Resource};

/// Descriptors kept free beside the upstream sockets: API connections, Redis, health
/// probes, DNS lookups, the short-lived sockets quinn-udp opens to probe features.
pub const FD_RESERVE: u64 = 64;

/// Descriptors the process opens after the budget is drawn, for good (the API listener,
/// signal and reload watchers): counted beside the upstream sockets, so that the reserve
/// stays free.
pub const FDS_OPENED_LATER: u64 = 8;

/// Where Linux keeps the ephemeral port range (IPv4 and IPv6 alike).
const PORT_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The `NOFILE` limits before and after [`raise_fd_limit`] (`None`: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub before: Option<u64>,
    /// The soft limit now.
    pub now: Option<u64>,
}

/// Raises the soft `NOFILE` limit to the hard one. Returns the soft limit before and
/// after (unchanged when raising fails: the error is returned with it, for a warning).
pub fn raise_fd_limit() -> (FdLimit, Option<io::Error>) {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current == limit.maximum {
        return (
            FdLimit {
                before,
                now: before,
            },
            None,
        );
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => (
            FdLimit {
                before,
                now: getrlimit(Resource::Nofile).current,
            },
            None,
        ),
        Err(e) => (
            FdLimit {
                before,
                now: before,
            },
            Some(e.into()),
        ),
    }
}

/// How many upstream sockets the relay may hold, and what decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketBudget {
    /// The configured cap (`relay.max_upstream_sockets`).
    pub configured: usize,
    /// The soft `NOFILE` limit (`None`: unlimited).
    pub fd_limit: Option<u64>,
    /// Descriptors open when the budget was drawn (listeners, the reactor, stdio).
    pub fds_open: u64,
    /// Ports in the ephemeral range (`None`: unknown).
    pub port_range: Option<u64>,
    /// The cap in force: the smallest of the configured one, the descriptors left under
    /// the limit less [`FD_RESERVE`] and [`FDS_OPENED_LATER`], and the port range.
    pub effective: usize,
}

impl SocketBudget {
    /// The budget for `configured` given the limit, the descriptors open and the port
    /// range. Never below 1, so that a tiny limit still serves one connection at a time
    /// rather than refusing all.
    pub fn compute(
        configured: usize,
        fd_limit: Option<u64>,
        fds_open: u64,
        port_range: Option<u64>,
    ) -> Self {
        let by_fds = fd_limit.map(|l| {
            l.saturating_sub(fds_open)
                .saturating_sub(FDS_OPENED_LATER)
                .saturating_sub(FD_RESERVE)
        });
        let effective = [by_fds, port_range]
            .into_iter()
            .flatten()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .fold(configured, usize::min)
            .max(1);
        Self {
            configured,
            fd_limit,
            fds_open,
            port_range,
            effective,
        }
    }

    /// The budget for `configured` in this process now.
    pub fn measure(configured: usize) -> Self {
        Self::compute(
            configured,
            getrlimit(Resource::Nofile).current,
            open_fds().unwrap_or(0),
            port_range(Path::new(PORT_RANGE_FILE)),
        )
    }
}

/// Descriptors this process has open (Linux: `/proc/self/fd`).
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory handle itself is one of the entries.
    Some((entries.count() as u64).saturating_sub(1))
}

/// The number of ports in the range `file` holds ("32768\t60999"), if it reads.
fn port_range(file: &Path) -> Option<u64> {
    parse_port_range(&std::fs::read_to_string(file).ok()?)
}

fn parse_port_range(text: &str) -> Option<u64> {
    let mut ports = text.split_whitespace().map(str::parse::<u64>);
    let (low, high) = (ports.next()?.ok()?, ports.next()?.ok()?);
    (high >= low).then(|| high - low + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_smallest_of_config_descriptors_and_ports() {
        // 256 descriptors, 20 open, 8 to come: 164 left beside the reserve.
        let b = SocketBudget::compute(100_000, Some(256), 20, Some(28_232));
        assert_eq!(b.effective, 164);
        // The port range decides when it is the smallest.
        assert_eq!(
            SocketBudget::compute(100_000, Some(1 << 20), 20, Some(1000)).effective,
            1000
        );
        // The configuration, when it is.
        assert_eq!(
            SocketBudget::compute(50, Some(1 << 20), 20, Some(28_232)).effective,
            50
        );
        // Unlimited and unknown add no bound; a limit below the reserve leaves one.
        assert_eq!(SocketBudget::compute(7, None, 20, None).effective, 7);
        assert_eq!(SocketBudget::compute(7, Some(50), 20, None).effective, 1);
    }

    #[test]
    fn the_port_range_file_is_read_as_inclusive_bounds() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("1024 1024"), Some(1));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn this_process_has_some_descriptors_open_and_a_limit() {
        assert!(open_fds().is_some_and(|n| n >= 3), "stdio at least");
        let (limit, error) = raise_fd_limit();
        assert!(error.is_none(), "{error:?}");
        assert!(limit.now >= limit.before);
    }
}
