//! What the data plane is started with: listen addresses, the core's limits, the routes
//! and the log setting; and the problems found while building the relay from them.

use std::fmt;
use std::net::SocketAddr;

use porter_core::{Relay, RelayConfig, Route};

/// The data plane's settings (the control plane derives them from the configuration).
#[derive(Clone, Debug)]
pub struct HostSettings {
    /// UDP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// The core's limits and timeouts.
    pub relay: RelayConfig,
    /// The routes at start, targets resolved.
    pub routes: Vec<Route>,
    /// Log every dropped datagram.
    pub log_requests: bool,
    /// Active health checks of simple routes' backends; `None`: off.
    pub health: Option<crate::HealthSettings>,
    /// Upstream sockets send from each client's own address (IP_TRANSPARENT; needs
    /// CAP_NET_ADMIN and host routing for the replies).
    pub transparent: bool,
    /// Kernel receive buffer asked for on each listener, in bytes (0: the kernel's
    /// default).
    pub receive_buffer: usize,
    /// Send single client-bound datagrams in `sendmmsg` batches across clients.
    pub batch_sends: bool,
    /// Data-plane shards: relays, each with its own listener sockets (SO_REUSEPORT) and
    /// upstream sockets; at least 1.
    pub shards: usize,
}

impl HostSettings {
    /// A relay with these settings' limits and routes.
    pub fn new_relay(&self) -> Result<Relay, SetupError> {
        self.new_relay_at(Vec::new())
    }

    /// As [`Self::new_relay`], for a relay whose listeners are bound to `own`: a route to
    /// one of them is a problem (it would loop).
    pub fn new_relay_at(&self, own: Vec<SocketAddr>) -> Result<Relay, SetupError> {
        let mut relay = Relay::new(self.relay.clone());
        relay.set_own_addresses(own);
        let mut problems = Vec::new();
        for route in &self.routes {
            if let Err(e) = relay.set_route(route.clone()) {
                problems.push(format!("route {}: {e}", route.name));
            }
        }
        if problems.is_empty() {
            Ok(relay)
        } else {
            Err(SetupError { problems })
        }
    }
}

/// Problems found while turning a configuration into settings (unresolvable targets,
/// routes the core rejects). Display prints one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError {
    /// One message per problem, each naming where it is.
    pub problems: Vec<String>,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

impl std::error::Error for SetupError {}
