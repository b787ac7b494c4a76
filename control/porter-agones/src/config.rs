//! Settings of the Agones allocator client, and reading its PEM files.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings of an [`AgonesClient`](super::AgonesClient).
///
/// Build one with [`AgonesClientConfig::new`] (PEM bytes already in memory) or
/// [`AgonesClientConfig::from_pem_files`] (reads them), then adjust the public fields; every
/// field not given to the constructor starts at the default documented on it.
#[derive(Clone)]
#[non_exhaustive]
pub struct AgonesClientConfig {
    /// Kubernetes namespace of the fleets, sent in every request.
    pub namespace: String,
    /// The allocator service: `host:port`, `host` (port 443), or `https://host[:port]`. The
    /// host may be a DNS name or an IP address (`[v6]:port` for IPv6).
    pub allocator_host: String,
    /// Porter's client certificate chain (PEM), presented to the allocator (mutual TLS).
    pub client_cert_pem: Vec<u8>,
    /// The private key of `client_cert_pem` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key_pem: Vec<u8>,
    /// The CA certificate(s) (PEM) that signed the allocator's server certificate. May be
    /// empty only when `insecure_skip_verify` is set.
    pub ca_cert_pem: Vec<u8>,
    /// Name checked against the allocator's certificate instead of the host of
    /// `allocator_host` (a DNS name or an IP address). Agones' generated allocator
    /// certificate carries no DNS name for a load balancer, so this is often needed.
    /// Default: `None` (use the host).
    pub tls_server_name: Option<String>,
    /// Accept any server certificate (the client certificate is still sent). For
    /// debugging only: anyone on the path can impersonate the allocator. Default: `false`;
    /// when set, the client logs a warning when it is built.
    pub insecure_skip_verify: bool,
    /// Time limit of one attempt (one gRPC call). Default: 2 s.
    pub request_timeout: Duration,
    /// Attempts after the first one, for retryable failures. Default: 3.
    pub max_retries: u32,
    /// Pause before the first retry; it doubles at each retry (up to `retry_backoff_max`),
    /// and each pause is drawn at random between half of it and all of it. Default: 50 ms.
    pub retry_backoff: Duration,
    /// Upper bound of the pause between two attempts. Default: 1 s.
    pub retry_backoff_max: Duration,
    /// Name of the game servers' list that holds one value per player. Default: `players`.
    pub player_list: String,
    /// Add the connection's tag to `player_list` in the same atomic step as the
    /// allocation, so the player's slot is reserved. Default: `true`.
    pub reserve_player_slot: bool,
    /// Name of the game server port to connect to; `None` takes the first port.
    /// Default: `None`.
    pub port_name: Option<String>,
    /// Name of the game servers' label (or, without such a label, annotation) that holds
    /// each one's QUIC-LB server ID in hex; `None` reads none. Default: `None`.
    pub server_id_label: Option<String>,
}

/// Default of [`AgonesClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of [`AgonesClientConfig::max_retries`].
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default of [`AgonesClientConfig::player_list`].
pub const DEFAULT_PLAYER_LIST: &str = "players";

impl AgonesClientConfig {
    /// Settings with the given allocator and mutual-TLS material, and defaults elsewhere.
    pub fn new(
        namespace: impl Into<String>,
        allocator_host: impl Into<String>,
        client_cert_pem: impl Into<Vec<u8>>,
        client_key_pem: impl Into<Vec<u8>>,
        ca_cert_pem: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            allocator_host: allocator_host.into(),
            client_cert_pem: client_cert_pem.into(),
            client_key_pem: client_key_pem.into(),
            ca_cert_pem: ca_cert_pem.into(),
            tls_server_name: None,
            insecure_skip_verify: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(1),
            player_list: DEFAULT_PLAYER_LIST.to_owned(),
            reserve_player_slot: true,
            port_name: None,
            server_id_label: None,
        }
    }

    /// Like [`new`](Self::new), reading the three PEM files. The error names the file
    /// that could not be read and what it was for.
    pub fn from_pem_files(
        namespace: impl Into<String>,
        allocator_host: impl Into<String>,
        client_cert_path: impl AsRef<Path>,
        client_key_path: impl AsRef<Path>,
        ca_cert_path: impl AsRef<Path>,
    ) -> Result<Self, PemFileError> {
        Ok(Self::new(
            namespace,
            allocator_host,
            read_pem_file(client_cert_path, PemRole::ClientCertificate)?,
            read_pem_file(client_key_path, PemRole::ClientKey)?,
            read_pem_file(ca_cert_path, PemRole::CaCertificate)?,
        ))
    }
}

// Hand-written so that the private key never ends up in a log.
impl std::fmt::Debug for AgonesClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgonesClientConfig")
            .field("namespace", &self.namespace)
            .field("allocator_host", &self.allocator_host)
            .field(
                "client_cert_pem",
                &format_args!("{} bytes", self.client_cert_pem.len()),
            )
            .field("client_key_pem", &format_args!("<redacted>"))
            .field(
                "ca_cert_pem",
                &format_args!("{} bytes", self.ca_cert_pem.len()),
            )
            .field("tls_server_name", &self.tls_server_name)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("retry_backoff_max", &self.retry_backoff_max)
            .field("player_list", &self.player_list)
            .field("reserve_player_slot", &self.reserve_player_slot)
            .field("port_name", &self.port_name)
            .field("server_id_label", &self.server_id_label)
            .finish()
    }
}

/// What a PEM file is for, to word errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemRole {
    /// Porter's client certificate (chain).
    ClientCertificate,
    /// The private key of Porter's client certificate.
    ClientKey,
    /// The CA that signed the allocator's certificate.
    CaCertificate,
}

impl std::fmt::Display for PemRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ClientCertificate => "Agones client certificate",
            Self::ClientKey => "Agones client private key",
            Self::CaCertificate => "Agones allocator CA certificate",
        })
    }
}

/// A PEM file of the Agones client could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the {role} from {}: {source}", path.display())]
#[non_exhaustive]
pub struct PemFileError {
    /// What the file was for.
    pub role: PemRole,
    /// The file.
    pub path: PathBuf,
    /// Why it could not be read.
    #[source]
    pub source: std::io::Error,
}

/// Reads one PEM file of the Agones client; the error names `path` and `role`.
///
/// The content is not parsed here: [`AgonesClient::new`](super::AgonesClient::new) does
/// that and says which field holds no usable PEM.
pub fn read_pem_file(path: impl AsRef<Path>, role: PemRole) -> Result<Vec<u8>, PemFileError> {
    let path = path.as_ref();
    std::fs::read(path).map_err(|source| PemFileError {
        role,
        path: path.to_owned(),
        source,
    })
}

impl AgonesClientConfig {
    /// The client configuration for a validated `agones` section: reads the PEM files
    /// now, so a missing or unreadable file fails at start-up with its path.
    pub fn from_config(section: &porter_config::AgonesConfig) -> Result<Self, PemFileError> {
        let mut config = Self::from_pem_files(
            section.namespace.clone(),
            section.allocator_host.to_string(),
            &section.allocator_client_cert,
            &section.allocator_client_key,
            &section.allocator_ca_cert,
        )?;
        config.tls_server_name.clone_from(&section.tls_server_name);
        config.insecure_skip_verify = section.insecure_skip_verify;
        config.request_timeout = section.request_timeout;
        config.max_retries = section.max_retries;
        config.player_list.clone_from(&section.player_list);
        config.reserve_player_slot = section.reserve_player_slot;
        config.port_name.clone_from(&section.port_name);
        config.server_id_label.clone_from(&section.server_id_label);
        Ok(config)
    }
}
