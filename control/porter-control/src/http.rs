//! Serving the management API over one accepted connection, on any runtime: the driver
//! accepts TCP connections with its own runtime and wraps each in hyper's `rt::Read` +
//! `rt::Write` (`TokioIo` on tokio, `smol_hyper::rt::FuturesIo` on smol).

use std::convert::Infallible;
use std::sync::Arc;

use crate::api::Api;

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
