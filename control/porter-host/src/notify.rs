//! Two runtime-independent async primitives the engine needs: a wake-up flag for the
//! timer task and a race between two futures.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Poll, Waker};

/// Wakes one waiting task; a wake-up with nobody waiting is kept for the next wait (as
/// tokio's `Notify::notify_one`).
#[derive(Debug, Default)]
pub(crate) struct Notify {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: bool,
    waiter: Option<Waker>,
}

impl Notify {
    /// Wakes the waiter, or lets the next [`Self::notified`] return at once.
    pub(crate) fn notify_one(&self) {
        let waiter = {
            let mut state = lock(&self.state);
            state.pending = true;
            state.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }

    /// Resolves once notified (consuming the notification).
    pub(crate) async fn notified(&self) {
        poll_fn(|cx| {
            let mut state = lock(&self.state);
            if std::mem::take(&mut state.pending) {
                state.waiter = None;
                Poll::Ready(())
            } else {
                state.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

/// Returns to the executor once, to be polled again after the tasks that are ready now.
///
/// It wakes itself before returning `Pending`: tokio puts a task woken while it runs at
/// the back of its queue (as `tokio::task::yield_now`), and smol's executor queues every
/// wake behind the tasks already scheduled.
pub(crate) async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// Which of two raced futures finished first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum First {
    /// The first one.
    A,
    /// The second one.
    B,
}

/// Polls both futures until one finishes (the first is polled first); the other is
/// dropped.
pub(crate) async fn race(a: impl Future<Output = ()>, b: impl Future<Output = ()>) -> First {
    let (mut a, mut b) = (pin!(a), pin!(b));
    poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() {
            Poll::Ready(First::A)
        } else if b.as_mut().poll(cx).is_ready() {
            Poll::Ready(First::B)
        } else {
            Poll::Pending
        }
    })
    .await
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Wake};

    use super::*;

    struct Count(Mutex<usize>);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            *lock(&self.0) += 1;
        }
    }

    #[test]
    fn a_notification_before_the_wait_is_kept_and_consumed_once() {
        let notify = Notify::default();
        notify.notify_one();
        let counter = Arc::new(Count(Mutex::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(pin!(notify.notified()).poll(&mut cx).is_ready());
        let mut second = pin!(notify.notified());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        notify.notify_one();
        assert_eq!(*lock(&counter.0), 1, "the waiter was woken");
        assert!(second.poll(&mut cx).is_ready());
    }

    #[test]
    fn race_reports_the_future_that_finished() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let never = std::future::pending::<()>();
        assert_eq!(
            pin!(race(never, async {})).poll(&mut cx),
            Poll::Ready(First::B)
        );
        assert_eq!(
            pin!(race(async {}, async {})).poll(&mut cx),
            Poll::Ready(First::A)
        );
    }
}
