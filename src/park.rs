//! Parked attempts: an async attempt that waits for another task's outcome
//! (`TaskContext::wait_for` / `wait`) gives its worker back while it waits.
//!
//! How: the wait future, when it is pending, sets a thread-local request
//! ([`request`]); the worker that polled the attempt sees it
//! ([`take_request`]) and, instead of waiting on the attempt, hands it to a
//! [`ParkSlot`] and claims other work. From then on the attempt is polled
//! with the slot's own waker: when anything it waits for is ready (the
//! outcome, its timeout, a cancel through its token), the slot queues it
//! in the engine's ready list and wakes an idle worker, which resumes it
//! ([`Parked::poll_end`]). The engine keeps the task `Running` in its
//! registry (so cancel and shutdown reach it as before) but counts it as
//! parked, not running (`crate::engine::park`).
//!
//! A slot's state, under its own lock (never taken with the engine's held):
//! `Polling` (a worker holds the attempt; a wake meanwhile is remembered),
//! `Parked` (nobody holds it; a wake queues it), `Ready` (queued).
//!
//! Costs nothing to an attempt that does not wait: the worker reads the
//! thread-local only when an attempt's poll is pending.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake};

use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::engine::Claim;
use crate::job::{AttemptBox, AttemptStatus, Forced};
use crate::panic::{drop_guarded, guard};
use crate::shared::Shared;

thread_local! {
    /// Set by a wait future that is pending; read by the worker after the poll.
    static REQUEST: Cell<bool> = const { Cell::new(false) };
}

/// Asks the worker polling this thread's attempt to park it.
pub(crate) fn request() {
    REQUEST.with(|r| r.set(true));
}

/// Whether the attempt just polled asked to be parked (and clears it).
pub(crate) fn take_request() -> bool {
    REQUEST.with(|r| r.replace(false))
}

/// How a parked attempt ended.
pub(crate) enum ParkEnd {
    Done(AttemptStatus),
    Interrupted(Forced),
    TimedOut,
}

/// A claim whose attempt is parked, with what it waits on besides its
/// own futures: its deadline and its cancellation.
pub(crate) struct Parked {
    pub(crate) claim: Claim,
    pub(crate) attempt: AttemptBox,
    sleep: Option<Pin<Box<Sleep>>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Parked {
    pub(crate) fn new(claim: Claim, attempt: AttemptBox, deadline: Option<Instant>) -> Self {
        let cancelled = Box::pin(claim.job.token().cancelled_owned());
        Parked {
            claim,
            attempt,
            sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            cancelled,
        }
    }

    /// Polls the attempt once (with the slot's waker in `cx`), and its
    /// deadline and cancellation. The attempt's own panics are caught
    /// inside it (`crate::body`).
    pub(crate) fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<ParkEnd> {
        if let Some(f) = self.claim.job.signal().final_forced() {
            return Poll::Ready(ParkEnd::Interrupted(f));
        }
        if let Poll::Ready(status) = Pin::new(&mut self.attempt).poll(cx) {
            let _ = take_request();
            return Poll::Ready(ParkEnd::Done(status));
        }
        let _ = take_request();
        if let Some(sleep) = &mut self.sleep {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(ParkEnd::TimedOut);
            }
        }
        // The token fires on a cancel or shutdown (and on nothing else
        // while parked: only a worker raises a timeout).
        if self.cancelled.as_mut().poll(cx).is_ready() {
            if let Some(f) = self.claim.job.signal().final_forced() {
                return Poll::Ready(ParkEnd::Interrupted(f));
            }
        }
        Poll::Pending
    }
}

enum SlotState {
    /// A worker holds the attempt; `woken` if a wake came meanwhile.
    Polling {
        woken: bool,
    },
    Parked(Box<Parked>),
    /// In the engine's ready list.
    Ready(Box<Parked>),
    /// Given up (the cluster is gone).
    Gone,
}

/// Where a parked attempt waits, and its waker.
pub(crate) struct ParkSlot {
    shared: Weak<Shared>,
    state: Mutex<SlotState>,
}

impl ParkSlot {
    /// A slot for an attempt a worker holds now.
    pub(crate) fn new(shared: &Arc<Shared>) -> Arc<Self> {
        Arc::new(ParkSlot {
            shared: Arc::downgrade(shared),
            state: Mutex::new(SlotState::Polling { woken: false }),
        })
    }

    /// A worker takes the attempt out of a slot it popped from the ready list.
    pub(crate) fn take(&self) -> Option<Box<Parked>> {
        let mut st = self.state.lock();
        match std::mem::replace(&mut *st, SlotState::Polling { woken: false }) {
            SlotState::Ready(p) | SlotState::Parked(p) => Some(p),
            other => {
                *st = other;
                None
            }
        }
    }

    /// The worker gives the pending attempt back: it waits here, or, if it
    /// was woken while the worker held it, goes straight to the ready list.
    pub(crate) fn put(self: &Arc<Self>, parked: Box<Parked>) {
        let mut st = self.state.lock();
        match *st {
            SlotState::Polling { woken: true } => {
                *st = SlotState::Ready(parked);
                drop(st);
                self.queue();
            }
            _ => *st = SlotState::Parked(parked),
        }
    }

    /// Puts the slot in the engine's ready list (its state is `Ready`).
    fn queue(self: &Arc<Self>) {
        match self.shared.upgrade() {
            Some(shared) => {
                let mut core = shared.lock();
                core.resume_later(self.clone());
                shared.unlock(core);
            }
            None => {
                // Nothing will ever resume it: break the cycle (the attempt
                // holds futures whose wakers hold this slot).
                let gone = std::mem::replace(&mut *self.state.lock(), SlotState::Gone);
                drop_guarded(gone, "a parked attempt of a cluster that is gone");
            }
        }
    }

    /// Drops whatever the slot holds (the engine is going away).
    pub(crate) fn abandon(&self) {
        let gone = std::mem::replace(&mut *self.state.lock(), SlotState::Gone);
        if let Err(msg) = guard(|| drop(gone)) {
            tracing::error!(panic = %msg, "dropping a parked attempt panicked");
        }
    }
}

impl Wake for ParkSlot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut st = self.state.lock();
        match std::mem::replace(&mut *st, SlotState::Gone) {
            SlotState::Parked(p) => {
                *st = SlotState::Ready(p);
                drop(st);
                self.queue();
            }
            SlotState::Polling { .. } => *st = SlotState::Polling { woken: true },
            other => *st = other,
        }
    }
}
