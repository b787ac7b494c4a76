//! Network namespaces and veth pairs that a test makes itself (as root, with iproute2's
//! `ip`), removed again when the test ends, passed or failed: several hosts on one
//! machine, for what has to cross a real network stack (transparent upstream sockets and
//! the policy routing their replies need).
//!
//! Names carry the process ID and a counter, so the suites of both binaries can build
//! their networks at the same time. Interfaces are created directly inside their
//! namespaces, so their names never meet in the machine's own namespace.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace of the test's own, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A new namespace `porter-<role>-<pid>-<n>`, its loopback up, and without IPv6
    /// duplicate address detection, so that addresses (link-local ones too) work as soon
    /// as they are added.
    ///
    /// # Panics
    /// When it cannot be made (not root, no `ip`): a test that needs one fails loudly
    /// rather than passing without having run.
    pub fn new(role: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("porter-{role}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.set_sysctl("net/ipv6/conf/all/accept_dad", "0");
        ns.set_sysctl("net/ipv6/conf/default/accept_dad", "0");
        ns
    }

    /// Writes `value` to `/proc/sys/<key>` inside the namespace (where the host has that
    /// key: IPv6 may be off).
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        if std::path::Path::new(&path).exists() {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name, "sh", "-c"])
                .arg(format!("echo {value} > {path}"))
                .output()
                .expect("run ip netns exec");
            assert!(
                out.status.success(),
                "set {key} in netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`.
    ///
    /// # Panics
    /// When the command fails (with what it printed).
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The command prefix that runs a program inside it: `ip netns exec <name>`.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    /// Runs `f` on a thread that has entered this namespace and returns its result.
    /// Sockets made there belong to this namespace for good, from whichever thread
    /// they are used later.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter(&self.name, f)
    }

    /// A UDP socket bound to `addr` inside this namespace.
    ///
    /// # Panics
    /// When the bind fails.
    pub fn udp_bind(&self, addr: SocketAddr) -> UdpSocket {
        self.enter(|| UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in netns {}: {e}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Its interfaces (and their veth peers elsewhere) go with it once the last socket
        // made inside is closed.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Connects `a` and `b` with a veth pair, `a_if` in `a` and `b_if` in `b`, both up.
///
/// # Panics
/// When `ip` fails.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// As [`NetNs::enter`], for the namespace called `name`.
///
/// # Panics
/// When the namespace cannot be entered.
pub fn enter<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // setns(2) moves this thread only; the thread ends with `f`.
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns into {name}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` ({e}): this test needs iproute2 and root to build its network")
    });
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}this test needs root (CAP_NET_ADMIN) to build its network",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
    );
}
