//! An in-process relay host for control's tests of the API and the route sync.

use control::host::{RelayHost, SharedHost};
use porter_core::{Relay, RelayConfig};

/// A host around a relay with the default settings and no routes, request logging off.
pub fn host() -> SharedHost {
    RelayHost::new(Relay::new(RelayConfig::default()), false).shared()
}
