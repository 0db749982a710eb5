//! Turning panics in user code into values.
//!
//! Every call into user code (bodies, predicates, backoff strategies,
//! callbacks) goes through here, so a panic never unwinds into a worker.

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

/// The message of a panic payload (`&str` and `String` payloads; anything
/// else becomes a placeholder).
pub(crate) fn message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "<non-string panic payload>".to_owned(),
        },
    }
}

/// Runs `f`, returning the panic message if it panicked.
///
/// Unwind safety: the callers only hand in user closures whose captured
/// state is the user's own; the engine's state is never borrowed across it.
pub(crate) fn guard<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(message)
}

pin_project! {
    /// Awaits `fut`, yielding `Err(message)` instead of unwinding if it
    /// panics while being polled or dropped once it is done. Written by
    /// hand rather than as an `async fn`, which would hold `fut` twice (as
    /// its argument, and pinned in its body): an attempt is copied into its
    /// worker's box (`crate::job::AttemptBox`), and a smaller one copies
    /// faster.
    pub(crate) struct CatchUnwind<F> {
        // `None` once done: the future is dropped as soon as it is ready.
        #[pin]
        fut: Option<F>,
    }
}

/// See [`CatchUnwind`].
pub(crate) fn catch_unwind<F: Future>(fut: F) -> CatchUnwind<F> {
    CatchUnwind { fut: Some(fut) }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut fut = self.project().fut;
        let polled = guard(|| {
            let Some(f) = fut.as_mut().as_pin_mut() else {
                return Poll::Pending; // unreachable: not polled after `Ready`
            };
            let r = f.poll(cx);
            if r.is_ready() {
                fut.set(None);
            }
            r
        });
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(msg) => {
                // Its `Drop` may panic too; the first message is the one kept.
                let _ = guard(|| fut.set(None));
                Poll::Ready(Err(msg))
            }
        }
    }
}

/// Drops `value` (user code: a body, or a future dropped mid-attempt),
/// logging instead of unwinding if its `Drop` panics.
pub(crate) fn drop_guarded<T>(value: T, what: &str) {
    if let Err(msg) = guard(|| drop(value)) {
        tracing::error!(panic = %msg, "dropping {what} panicked");
    }
}
