//! Serves the relay's allocation requests with the [`AgonesClient`], on tokio.
//!
//! The client (tonic) needs a tokio runtime. A driver on tokio builds the allocator
//! inside its runtime ([`AgonesAllocator::new`]); a driver on another runtime starts a
//! small one for it ([`AgonesAllocator::with_own_runtime`]: a current-thread runtime on
//! one extra thread), and every allocation runs there while the driver awaits its answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::{AgonesClient, AgonesClientConfig, Allocation, ClientConfigError};
use porter_host::{Allocated, AllocationError, AllocationErrorKind, AllocationFuture, Allocator};

/// Allocates game servers through the Agones allocator service.
#[derive(Debug)]
pub struct AgonesAllocator {
    client: AgonesClient,
    /// Where allocations run when the caller is not on tokio.
    runtime: Option<Handle>,
}

impl AgonesAllocator {
    /// A client for `config`, for a driver on tokio: must be called inside its runtime,
    /// and allocations are awaited on it.
    pub fn new(config: AgonesClientConfig) -> Result<Arc<Self>, ClientConfigError> {
        Ok(Arc::new(Self {
            client: AgonesClient::new(config)?,
            runtime: None,
        }))
    }

    /// A client for `config`, for a driver on another runtime: starts a current-thread
    /// tokio runtime on one extra thread (`porter-agones`), which runs the client's
    /// connection and every allocation; allocations can be awaited from any executor.
    pub fn with_own_runtime(config: AgonesClientConfig) -> Result<Arc<Self>, ClientConfigError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientConfigError::Runtime)?;
        let handle = runtime.handle().clone();
        let client = {
            let _entered = handle.enter();
            AgonesClient::new(config)?
        };
        std::thread::Builder::new()
            .name("porter-agones".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(ClientConfigError::Runtime)?;
        Ok(Arc::new(Self {
            client,
            runtime: Some(handle),
        }))
    }
}

impl AgonesAllocator {
    /// Allocates a game server from `fleet` for the connection or caller named by `tag`,
    /// giving up at `deadline`; awaitable from any executor.
    pub fn allocate_game_server(
        &self,
        fleet: &str,
        tag: &str,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<Allocation, AllocationError>> + Send>> {
        let (client, fleet, tag) = (self.client.clone(), fleet.to_owned(), tag.to_owned());
        let allocation = async move {
            let allocation = client
                .allocate(&fleet, &tag, deadline.into())
                .await
                .map_err(|e| AllocationError::new(e.kind(), e.to_string()))?;
            tracing::info!(
                %fleet,
                game_server = %allocation.game_server_name,
                address = %allocation.address,
                port = allocation.port,
                "game server allocated"
            );
            Ok(allocation)
        };
        match &self.runtime {
            None => Box::pin(allocation),
            Some(handle) => Box::pin(AbortOnDrop(handle.spawn(allocation))),
        }
    }
}

impl Allocator for AgonesAllocator {
    fn allocate(&self, fleet: Arc<str>, tag: String, deadline: Instant) -> AllocationFuture {
        let allocation = self.allocate_game_server(&fleet, &tag, deadline);
        Box::pin(async move {
            let allocation = allocation.await?;
            let addr = allocation.socket_addr.ok_or_else(|| {
                AllocationError::new(
                    AllocationErrorKind::InvalidAnswer,
                    format!(
                        "game server {} has address {:?}, which does not resolve",
                        allocation.game_server_name, allocation.address
                    ),
                )
            })?;
            if let Some(why) = unusable_backend(addr.ip()) {
                return Err(AllocationError::new(
                    AllocationErrorKind::InvalidAnswer,
                    format!(
                        "game server {} has address {addr}, which is {why}",
                        allocation.game_server_name
                    ),
                ));
            }
            Ok(Allocated {
                game_server: allocation.game_server_name,
                addr,
                server_id: allocation.server_id,
            })
        })
    }
}

/// A task on the allocator's runtime, cancelled when the relay stops waiting for it.
struct AbortOnDrop<T>(JoinHandle<Result<T, AllocationError>>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, AllocationError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(AllocationError::new(
                    AllocationErrorKind::Internal,
                    format!("allocation task failed: {e}"),
                ))
            })
        })
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why an address from an allocator's answer cannot be a backend: one no datagram can be
/// sent to as a single server (unspecified, multicast, broadcast).
fn unusable_backend(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        ip if ip.is_unspecified() => Some("unspecified"),
        ip if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::unusable_backend;

    #[test]
    fn unspecified_multicast_and_broadcast_answers_are_refused() {
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "::ffff:0.0.0.0",
        ] {
            assert!(unusable_backend(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in ["10.0.0.5", "127.0.0.1", "2001:db8::5", "192.168.1.255"] {
            assert!(unusable_backend(good.parse().unwrap()).is_none(), "{good}");
        }
    }
}
