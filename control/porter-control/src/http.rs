//! Serving the management API: over one accepted connection, on any runtime (the driver
//! accepts TCP connections with its own runtime and wraps each in hyper's `rt::Read` +
//! `rt::Write`: `TokioIo` on tokio, `smol_hyper::rt::FuturesIo` on smol), and the whole
//! listener on tokio ([`serve_api_tokio`], feature `tokio`).

use std::convert::Infallible;
use std::sync::Arc;

use crate::api::Api;
#[cfg(feature = "tokio")]
use std::net::SocketAddr;

/// Serves HTTP/1.1 requests on `io` with [`Api::handle`] until the client closes it.
/// Connection errors are logged at debug level (clients that go away are not news).
pub async fn serve_connection<I>(api: Arc<Api>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let service = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await
    {
        tracing::debug!("API connection: {e}");
    }
}

/// Binds `api`'s address and serves it on the current tokio runtime; returns the bound
/// address.
#[cfg(feature = "tokio")]
pub async fn serve_api_tokio(api: Api) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(api.settings().bind).await?;
    let bound = listener.local_addr()?;
    let api = Arc::new(api);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("API accept failed: {e}");
                    continue;
                }
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(serve_connection(api.clone(), io));
        }
    });
    Ok(bound)
}
