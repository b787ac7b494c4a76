//! How allocation requests (`agones` routes, and the API's `POST /allocate`) are served:
//! the [`Allocator`] trait, which the Agones client implements, and its typed failure.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// A game server allocated for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    /// The game server's name (the API's `POST /allocate` routes `<name>.<domain>`).
    pub game_server: String,
    /// Where its QUIC server listens.
    pub addr: SocketAddr,
    /// Its QUIC-LB server ID as the allocator gave it (hex text, from the label or
    /// annotation named by `agones.server_id_label`); `None` when not configured or
    /// absent. See [`porter_core::Relay::complete_allocation_with_server_id`].
    pub server_id: Option<String>,
}

/// What kind of failure an allocation met; the label of the allocation failure metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AllocationErrorKind {
    /// No allocator: Agones is not enabled in this relay's configuration.
    NotEnabled,
    /// The fleet has no game server with room (allocated with a free slot, or ready).
    NoCapacity,
    /// The allocator did not answer in time.
    Timeout,
    /// The allocator could not be reached, or kept failing with a retryable status.
    Unavailable,
    /// The allocator refused the request (a status that is not retried).
    Rejected,
    /// The TLS connection to the allocator failed.
    Tls,
    /// The answer names no usable address (unresolvable, or not a unicast address).
    InvalidAnswer,
    /// The allocation task itself failed.
    Internal,
}

impl AllocationErrorKind {
    /// Every kind, in metric order.
    pub const ALL: &'static [Self] = &[
        Self::NotEnabled,
        Self::NoCapacity,
        Self::Timeout,
        Self::Unavailable,
        Self::Rejected,
        Self::Tls,
        Self::InvalidAnswer,
        Self::Internal,
    ];

    /// A short stable name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotEnabled => "not_enabled",
            Self::NoCapacity => "no_capacity",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
            Self::Tls => "tls",
            Self::InvalidAnswer => "invalid_answer",
            Self::Internal => "internal",
        }
    }
}

/// Why an allocation failed: its kind, and a message for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationError {
    kind: AllocationErrorKind,
    message: String,
}

impl AllocationError {
    /// A failure of `kind`, explained by `message`.
    pub fn new(kind: AllocationErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> AllocationErrorKind {
        self.kind
    }
}

impl fmt::Display for AllocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AllocationError {}

/// The answer of an [`Allocator`].
pub type AllocationFuture =
    Pin<Box<dyn Future<Output = Result<Allocated, AllocationError>> + Send>>;

/// How allocation requests are served.
pub trait Allocator: Send + Sync + 'static {
    /// Allocates a game server from `fleet` for the connection (or API caller) named by
    /// `tag`, giving up at `deadline`. The future must be runnable on the driver's
    /// runtime.
    fn allocate(&self, fleet: Arc<str>, tag: String, deadline: Instant) -> AllocationFuture;
}
