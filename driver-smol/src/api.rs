//! The management API on smol: async-io's TCP listener, hyper through `smol-hyper`'s
//! futures-io adapter and async-io's timers, requests answered by
//! [`porter_control::api::Api::handle`] from [`porter_control::http::accept_loop`]
//! (connection cap, accept back-off).

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use porter_control::api::Api;
use porter_control::http::{accept_loop, ApiTimer, Sleep, Timer as HyperTimer};
use smol_hyper::rt::FuturesIo;

use crate::runtime::Smol;

/// hyper's timer on async-io.
#[derive(Clone, Copy, Debug)]
struct SmolTimer;

/// One async-io timer, as hyper's `Sleep`.
struct SmolSleep(Timer);

impl Future for SmolSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Sleep for SmolSleep {}

impl HyperTimer for SmolTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(SmolSleep(Timer::after(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(SmolSleep(Timer::at(deadline)))
    }
}

/// Binds `api`'s address and serves it on `rt`; returns the bound address.
pub(crate) fn serve(rt: &Smol, api: Api) -> io::Result<SocketAddr> {
    let listener = Arc::new(Async::<TcpListener>::bind(api.settings().bind)?);
    let bound = listener.get_ref().local_addr()?;
    let api = Arc::new(api);
    let spawner = rt.clone();
    rt.spawn_detached(accept_loop(
        api,
        ApiTimer::new(SmolTimer),
        move || {
            let listener = listener.clone();
            async move {
                let (stream, _) = listener.accept().await?;
                Ok(FuturesIo::new(stream))
            }
        },
        move |task| spawner.spawn_detached(task),
    ));
    Ok(bound)
}
