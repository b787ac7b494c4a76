//! Serves the core's allocation requests with the Agones allocator client.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use control::agones::{AgonesClient, AgonesClientConfig};

use crate::udp::Allocator;

/// Allocates game servers through the Agones allocator service.
pub(crate) struct AgonesAllocator {
    client: AgonesClient,
}

impl AgonesAllocator {
    /// A client for `config`; must be called inside the tokio runtime.
    pub(crate) fn new(config: AgonesClientConfig) -> anyhow::Result<Arc<Self>> {
        let client = AgonesClient::new(config)
            .map_err(|e| anyhow::anyhow!("agones allocator client: {e}"))?;
        Ok(Arc::new(Self { client }))
    }
}

impl Allocator for AgonesAllocator {
    fn allocate(
        &self,
        fleet: Arc<str>,
        tag: String,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<SocketAddr, String>> + Send>> {
        let client = self.client.clone();
        Box::pin(async move {
            let allocation = client
                .allocate(&fleet, &tag, deadline.into())
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                %fleet,
                game_server = %allocation.game_server_name,
                address = %allocation.address,
                port = allocation.port,
                "game server allocated"
            );
            allocation.socket_addr.ok_or_else(|| {
                format!(
                    "game server {} has address {:?}, which does not resolve",
                    allocation.game_server_name, allocation.address
                )
            })
        })
    }
}
