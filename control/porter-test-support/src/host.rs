//! An in-process relay for control's tests of the API and the route sync.

use porter_core::{Relay, RelayConfig};
use porter_host::RelayHandle;

/// A relay with the default settings and no routes, behind a handle with no engine (its
/// commands wait in the outbox).
pub fn host() -> RelayHandle {
    RelayHandle::detached(Relay::new(RelayConfig::default()))
}
