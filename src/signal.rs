//! The per-task interruption signal (how a cancel, a timeout or a shutdown
//! reaches the worker running an attempt and the body itself), and each
//! worker's wake slot, which also carries the notice "claim again" to an
//! idle worker (see `crate::idle`).
//!
//! Invariants:
//! 1. `Cancelled` and `Shutdown` are final: once set they are never cleared.
//!    `TimedOut` belongs to one attempt and is cleared when the next starts
//!    (with a compare-exchange, so it can never erase a final reason).
//! 2. Whoever raises a reason then cancels the body's token, if the body
//!    asked for one (the token lives in the task cell, under the cell's
//!    lock, so the signal itself is one byte).
//! 3. The worker running the task is woken through its own [`WorkerWake`]
//!    slot, not a waker stored per task: whoever raises a final reason
//!    (always under knowledge of which worker claimed the task) raises it
//!    first, then wakes that slot; the worker registers in its slot, then
//!    re-checks the reason. Either order leaves no lost wake-up.
//! 4. A work notice follows the same order: the notifier sets the worker's
//!    flag, then wakes its slot; the idle worker registers, then re-checks
//!    the flag.

use std::task::{Context, Poll, Waker};

use crate::job::Forced;

use self::sync::{AtomicBool, AtomicU8, Mutex, Ordering};

/// The signal and the wake slots are the engine's only lock-free state, so
/// they are the part model checked with loom:
/// `RUSTFLAGS="--cfg corral_loom" cargo test --lib loom`.
#[cfg(not(corral_loom))]
mod sync {
    pub(crate) use parking_lot::Mutex;
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
}

#[cfg(corral_loom)]
mod sync {
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, Ordering};

    /// `parking_lot`'s API over loom's mutex.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }
}

/// Why a running attempt was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelReason {
    /// The attempt ran past its timeout (this attempt only; a retry may follow).
    TimedOut,
    /// The attempt went past its [stall timeout](crate::TaskBuilder::stall_timeout)
    /// without a progress report (this attempt only; a retry may follow).
    Stalled,
    /// The task was cancelled by id.
    Cancelled,
    /// The cluster is shutting down.
    Shutdown,
}

// Per-attempt reasons sort below the final ones (`raise` relies on it).
const NONE: u8 = 0;
const TIMED_OUT: u8 = 1;
const STALLED: u8 = 2;
const CANCELLED: u8 = 3;
const SHUTDOWN: u8 = 4;

impl CancelReason {
    fn encode(self) -> u8 {
        match self {
            CancelReason::TimedOut => TIMED_OUT,
            CancelReason::Stalled => STALLED,
            CancelReason::Cancelled => CANCELLED,
            CancelReason::Shutdown => SHUTDOWN,
        }
    }

    fn decode(v: u8) -> Option<Self> {
        match v {
            TIMED_OUT => Some(CancelReason::TimedOut),
            STALLED => Some(CancelReason::Stalled),
            CANCELLED => Some(CancelReason::Cancelled),
            SHUTDOWN => Some(CancelReason::Shutdown),
            _ => None,
        }
    }
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Signal {
    reason: AtomicU8,
}

/// One worker's waker: woken when the task it runs is cancelled or shut
/// down, and when it is handed work while idle (see `crate::idle`).
#[derive(Default)]
pub(crate) struct WorkerWake {
    waker: Mutex<Option<Waker>>,
    /// Set when the worker is told to claim again; taken by its idle wait.
    work: AtomicBool,
}

impl WorkerWake {
    fn register(&self, cx: &Context<'_>) {
        let mut w = self.waker.lock();
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
    }

    /// Wakes the worker, if it is waiting (see invariant 3).
    pub(crate) fn wake(&self) {
        let waker = self.waker.lock().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Tells the worker to claim again: sets the flag, then wakes it.
    pub(crate) fn notify_work(&self) {
        self.work.store(true, Ordering::Release);
        self.wake();
    }

    /// The worker's idle wait: ready once told to claim again. The flag is
    /// re-checked after registering, so a notice sent in between is not
    /// lost (the same order as `Signal::poll_final`).
    pub(crate) fn poll_work(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take_work() {
            return Poll::Ready(());
        }
        self.register(cx);
        if self.take_work() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn take_work(&self) -> bool {
        // A plain load first: an idle wait usually finds nothing.
        self.work.load(Ordering::Acquire) && self.work.swap(false, Ordering::AcqRel)
    }
}

impl Signal {
    pub(crate) fn reason(&self) -> Option<CancelReason> {
        CancelReason::decode(self.reason.load(Ordering::Acquire))
    }

    /// Raises `reason`; returns whether it changed anything. A final reason
    /// already set is kept (the first final reason wins), but a timeout or
    /// stall may be upgraded to a cancel or shutdown. The first per-attempt
    /// reason (timeout or stall) of an attempt wins over the other.
    pub(crate) fn raise(&self, reason: CancelReason) -> bool {
        let new = reason.encode();
        let mut cur = self.reason.load(Ordering::Acquire);
        loop {
            if cur >= CANCELLED || (cur != NONE && new < CANCELLED) {
                return false;
            }
            match self
                .reason
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Clears a timeout or stall left by the previous attempt; returns
    /// whether there was one. Final reasons stay.
    pub(crate) fn reset_timeout(&self) -> bool {
        // A plain load first: almost every attempt has nothing to clear, and
        // a compare-exchange would take the cache line exclusively.
        let cur = self.reason.load(Ordering::Acquire);
        cur != NONE
            && cur < CANCELLED
            && self
                .reason
                .compare_exchange(cur, NONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Polled by the worker: ready once a final reason (cancel or shutdown)
    /// is set. Timeouts are the worker's own business and are ignored here.
    pub(crate) fn poll_final(&self, cx: &mut Context<'_>, wake: &WorkerWake) -> Poll<Forced> {
        if let Some(f) = self.final_forced() {
            return Poll::Ready(f);
        }
        wake.register(cx);
        // Re-check: `raise` may have run between the first check and the registration.
        match self.final_forced() {
            Some(f) => Poll::Ready(f),
            None => Poll::Pending,
        }
    }

    /// The final reason (cancel or shutdown), as the outcome it forces.
    pub(crate) fn final_forced(&self) -> Option<Forced> {
        match self.reason()? {
            CancelReason::TimedOut | CancelReason::Stalled => None,
            CancelReason::Cancelled => Some(Forced::Cancelled),
            CancelReason::Shutdown => Some(Forced::Shutdown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_reasons_are_never_overwritten() {
        let s = Signal::default();
        assert!(s.raise(CancelReason::TimedOut));
        assert_eq!(s.reason(), Some(CancelReason::TimedOut));
        assert!(s.raise(CancelReason::Cancelled));
        assert_eq!(s.reason(), Some(CancelReason::Cancelled));
        assert!(!s.raise(CancelReason::Shutdown));
        assert!(!s.raise(CancelReason::TimedOut));
        assert!(!s.reset_timeout());
        assert_eq!(s.reason(), Some(CancelReason::Cancelled));
    }

    #[test]
    fn a_stall_is_per_attempt_like_a_timeout() {
        let s = Signal::default();
        assert!(s.raise(CancelReason::Stalled));
        // The first per-attempt reason of an attempt wins.
        assert!(!s.raise(CancelReason::TimedOut));
        assert_eq!(s.reason(), Some(CancelReason::Stalled));
        assert_eq!(s.final_forced(), None);
        assert!(s.reset_timeout());
        assert_eq!(s.reason(), None);
        assert!(s.raise(CancelReason::Stalled));
        assert!(s.raise(CancelReason::Shutdown));
        assert!(!s.reset_timeout());
        assert_eq!(s.final_forced(), Some(Forced::Shutdown));
    }

    #[test]
    fn timeout_is_reset_between_attempts() {
        let s = Signal::default();
        assert!(s.raise(CancelReason::TimedOut));
        assert!(!s.raise(CancelReason::TimedOut));
        assert!(s.reset_timeout());
        assert_eq!(s.reason(), None);
        assert_eq!(s.final_forced(), None);
    }
}

#[cfg(all(test, corral_loom))]
mod loom_tests {
    use std::sync::atomic::Ordering::SeqCst;
    use std::task::{Wake, Waker};

    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;

    use super::*;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, SeqCst);
        }
    }

    /// A cancel racing the worker's registration is never lost: the worker
    /// either sees it at once or is woken.
    #[test]
    fn loom_raise_vs_poll_is_never_lost() {
        loom::model(|| {
            let signal = Arc::new(Signal::default());
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            let wake = Arc::new(WorkerWake::default());
            let (s2, w2) = (signal.clone(), wake.clone());
            let t = loom::thread::spawn(move || {
                s2.raise(CancelReason::Cancelled);
                w2.wake();
            });
            let first = signal.poll_final(&mut Context::from_waker(&waker), &wake);
            t.join().unwrap();
            assert!(first.is_ready() || flag.0.load(SeqCst));
            assert_eq!(signal.reason(), Some(CancelReason::Cancelled));
        });
    }

    /// A work notice racing the worker's idle registration is never lost.
    #[test]
    fn loom_work_notice_vs_idle_wait_is_never_lost() {
        loom::model(|| {
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(flag.clone());
            let wake = Arc::new(WorkerWake::default());
            let w2 = wake.clone();
            let t = loom::thread::spawn(move || w2.notify_work());
            let first = wake.poll_work(&mut Context::from_waker(&waker));
            t.join().unwrap();
            assert!(first.is_ready() || flag.0.load(SeqCst));
        });
    }

    /// Clearing a timeout between attempts never erases a racing cancel.
    #[test]
    fn loom_timeout_reset_vs_cancel_keeps_the_cancel() {
        loom::model(|| {
            let signal = Arc::new(Signal::default());
            signal.raise(CancelReason::TimedOut);
            let s2 = signal.clone();
            let t = loom::thread::spawn(move || s2.raise(CancelReason::Cancelled));
            signal.reset_timeout();
            t.join().unwrap();
            assert_eq!(signal.reason(), Some(CancelReason::Cancelled));
        });
    }
}
