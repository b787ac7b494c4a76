//! The management API on smol: async-io's TCP listener, hyper through `smol-hyper`'s
//! futures-io adapter, requests answered by [`porter_control::api::Api::handle`].

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use async_io::Async;
use porter_control::api::Api;
use smol_hyper::rt::FuturesIo;

use crate::runtime::Smol;

/// Binds `api`'s address and serves it on `rt`; returns the bound address.
pub(crate) fn serve(rt: &Smol, api: Api) -> io::Result<SocketAddr> {
    let listener = Async::<TcpListener>::bind(api.settings().bind)?;
    let bound = listener.get_ref().local_addr()?;
    let api = Arc::new(api);
    let spawner = rt.clone();
    rt.spawn_detached(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => spawner.spawn_detached(porter_control::http::serve_connection(
                    api.clone(),
                    FuturesIo::new(stream),
                )),
                Err(e) => tracing::warn!("API accept failed: {e}"),
            }
        }
    });
    Ok(bound)
}
