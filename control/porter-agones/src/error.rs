//! Errors of the Agones allocator client, one enum per operation.

use std::time::Duration;

/// [`AgonesClient::new`](super::AgonesClient::new) refused its settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// `allocator_host` is not `host[:port]` or `https://host[:port]`.
    #[error("invalid Agones allocator address `{value}`: {reason}")]
    InvalidAllocatorHost {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `tls_server_name` (or the allocator host used in its place) is neither a DNS name
    /// nor an IP address.
    #[error(
        "invalid TLS server name `{0}` for the Agones allocator: not a DNS name or IP address"
    )]
    InvalidServerName(String),
    /// One of the PEM fields holds nothing usable.
    #[error("invalid {field} for the Agones allocator: {reason}")]
    InvalidPem {
        /// The config field: `client_cert_pem`, `client_key_pem` or `ca_cert_pem`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the TLS material (for example a key that does not match the
    /// certificate).
    #[error("cannot set up TLS for the Agones allocator: {0}")]
    Tls(#[source] rustls::Error),
    /// The gRPC endpoint could not be built from the allocator address.
    #[error("cannot set up the gRPC channel to the Agones allocator: {0}")]
    Endpoint(String),
    /// The tokio runtime a driver on another runtime starts for the client (or its
    /// thread) could not be started.
    #[error("cannot start the Agones allocator's tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// An allocation failed. The [`Display`](std::fmt::Display) text says what happened and,
/// where there is one, what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocateError {
    /// Every attempt was answered `ResourceExhausted`: no game server of the fleet was
    /// allocated with a free player slot, nor ready.
    #[error(
        "no game server available in fleet `{fleet}` (namespace `{namespace}`): the Agones \
         allocator answered ResourceExhausted to {attempts} attempt(s): {message}"
    )]
    NoGameServerAvailable {
        /// The fleet.
        fleet: String,
        /// The namespace.
        namespace: String,
        /// Attempts made.
        attempts: u32,
        /// The allocator's message on the last attempt.
        message: String,
    },
    /// The allocator could not be reached or kept failing with a retryable status
    /// (`Unavailable`, `Aborted`) until the retries or the deadline ran out.
    #[error(
        "the Agones allocator at {allocator} is unavailable (last status {code:?}, after \
         {attempts} attempt(s)): {message}"
    )]
    Unavailable {
        /// The allocator address.
        allocator: String,
        /// The gRPC status of the last attempt.
        code: tonic::Code,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's message, with its underlying causes.
        message: String,
    },
    /// No answer came in time: the caller's deadline passed, or every attempt hit the
    /// per-attempt `request_timeout`.
    #[error(
        "allocation from fleet `{fleet}` timed out: the Agones allocator did not answer \
         within the deadline ({attempts} attempt(s), each limited to {request_timeout:?})"
    )]
    Timeout {
        /// The fleet.
        fleet: String,
        /// Attempts started.
        attempts: u32,
        /// The per-attempt limit in force.
        request_timeout: Duration,
    },
    /// The allocator refused the request with a status that is not retried
    /// (`InvalidArgument`, `PermissionDenied`, `NotFound`, `Internal`, ...).
    #[error(
        "the Agones allocator refused the allocation from fleet `{fleet}`: {code:?}: {message}"
    )]
    Rejected {
        /// The fleet.
        fleet: String,
        /// The gRPC status.
        code: tonic::Code,
        /// The allocator's message.
        message: String,
    },
    /// The TLS connection to the allocator failed; retrying would not help.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The allocator allocated a game server but its answer cannot be used (no
    /// address, no usable port). The game server stays allocated.
    #[error("unusable answer from the Agones allocator for game server `{game_server}`: {reason}")]
    InvalidResponse {
        /// The allocated game server, as named in the answer.
        game_server: String,
        /// What is missing or wrong.
        reason: String,
    },
}

impl AllocateError {
    /// Whether a later allocation might succeed without a configuration change (no
    /// capacity, unavailable allocator, time-out); false for TLS failures, refused
    /// requests and unusable answers.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::NoGameServerAvailable { .. } | Self::Unavailable { .. } | Self::Timeout { .. }
        )
    }
}

/// The TLS connection to the allocator failed. Each variant names which side's
/// certificate is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The allocator does not trust Porter's client certificate (it ended the handshake
    /// with an alert).
    #[error(
        "the Agones allocator at {allocator} rejected Porter's client certificate (TLS alert \
         {alert}): the allocator does not trust it; use a client certificate signed by a CA \
         in the allocator's client CA list (Agones secret allocator-client-ca)"
    )]
    ClientCertificateRejected {
        /// The allocator address.
        allocator: String,
        /// The TLS alert the allocator sent.
        alert: String,
    },
    /// The allocator's certificate is not signed by the CA in `ca_cert_pem`.
    #[error(
        "the Agones allocator's certificate at {allocator} is not signed by the configured CA \
         ({detail}); set the CA certificate to the one that signed the allocator's \
         certificate (Agones secret allocator-tls-ca)"
    )]
    ServerCertificateUntrusted {
        /// The allocator address.
        allocator: String,
        /// rustls' diagnosis.
        detail: String,
    },
    /// The allocator's certificate is valid but not for the name Porter checked.
    #[error(
        "server name mismatch: the Agones allocator's certificate is not valid for `{expected}` \
         (it is valid for: {}); set tls_server_name to one of those names",
        if presented.is_empty() { "no name Porter could read".to_owned() } else { presented.join(", ") }
    )]
    ServerNameMismatch {
        /// The name Porter checked (`tls_server_name`, or the allocator host).
        expected: String,
        /// The names the certificate carries, as rustls reports them.
        presented: Vec<String>,
    },
    /// Any other TLS failure.
    #[error("TLS with the Agones allocator at {allocator} failed: {source}")]
    Other {
        /// The allocator address.
        allocator: String,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
}

impl AllocateError {
    /// The kind of failure, as the relay counts it.
    pub fn kind(&self) -> porter_host::AllocationErrorKind {
        use porter_host::AllocationErrorKind as Kind;
        match self {
            Self::NoGameServerAvailable { .. } => Kind::NoCapacity,
            Self::Unavailable { .. } => Kind::Unavailable,
            Self::Timeout { .. } => Kind::Timeout,
            Self::Rejected { .. } => Kind::Rejected,
            Self::Tls(_) => Kind::Tls,
            Self::InvalidResponse { .. } => Kind::InvalidAnswer,
        }
    }
}
