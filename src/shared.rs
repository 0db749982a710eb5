//! What the workers, the timekeeper, the cluster's handles and the user's
//! clones share: the engine behind its lock, the wake-up channels, and the
//! operations that must unlock before they wake or deliver.

use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::release;
use crate::clock::Clock;
use crate::engine::{Delivery, Engine, Phase, Running};
use crate::flow::FlowShared;
use crate::signal::CancelReason;
use crate::wakes::WakeTable;

/// Everything the workers, the timekeeper and the user's handles share.
pub(crate) struct Shared {
    engine: Mutex<Engine>,
    /// The timekeeper waits here for an earlier deadline.
    pub(crate) timer: Notify,
    /// Per worker: woken for work while idle, or when the task it runs is
    /// cancelled or shut down.
    pub(crate) wakes: WakeTable,
    /// Cancelled by `stop`: interrupts immediate-retry waits.
    pub(crate) stopping: CancellationToken,
    /// Cancelled when the timekeeper must leave (idle workers are sent home
    /// by [`Shared::close`]).
    pub(crate) closing: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) clock: Clock,
    /// Pause and resize state read without the lock (`crate::flow`).
    pub(crate) flow: FlowShared,
    pub(crate) retention: Duration,
    pub(crate) parent: Option<CancellationToken>,
}

impl Shared {
    pub(crate) fn new(
        workers: usize,
        retention: Duration,
        parent: Option<CancellationToken>,
    ) -> Self {
        let clock = Clock::new();
        Shared {
            engine: Mutex::new(Engine::new(clock, workers)),
            timer: Notify::new(),
            wakes: WakeTable::new(workers),
            stopping: CancellationToken::new(),
            closing: CancellationToken::new(),
            tracker: TaskTracker::new(),
            clock,
            flow: FlowShared::default(),
            retention,
            parent,
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock()
    }

    /// Releases the lock, then sends the wake-ups decided under it. Returns
    /// whether it woke a worker. Inline: twice per task (submit, and the
    /// worker's settle and claim).
    #[inline(always)]
    pub(crate) fn unlock(&self, core: MutexGuard<'_, Engine>) -> bool {
        if core.has_outbox() {
            return self.unlock_with_outbox(core);
        }
        self.unlock_plain(core)
    }

    #[inline(always)]
    fn unlock_plain(&self, mut core: MutexGuard<'_, Engine>) -> bool {
        let (picked, timer) = core.take_wakeups();
        drop(core);
        let woke = picked.is_some();
        if let Some(picked) = picked {
            picked.each(|w| self.wakes[usize::from(w)].notify_work());
        }
        if timer {
            self.timer.notify_one();
        }
        woke
    }

    /// `unlock`, then the deliveries and drops the engine left for after
    /// it (engine invariant 2): out of the plain path.
    #[cold]
    fn unlock_with_outbox(&self, mut core: MutexGuard<'_, Engine>) -> bool {
        let (deliveries, trash) = core.take_outbox();
        let woke = self.unlock_plain(core);
        deliveries.into_iter().for_each(Delivery::deliver);
        drop(trash);
        woke
    }

    /// Runs `f` under the lock after sweeping expired cache entries, then
    /// unlocks (sending the wake-ups decided under it) and releases what the
    /// sweep dropped. The timekeeper sweeps on time while the cluster runs;
    /// this keeps a stopped cluster forgetting expired outcomes too.
    pub(crate) fn locked<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        let mut core = self.lock();
        let expired = core.sweep();
        let r = f(&mut core);
        self.unlock(core);
        release(expired);
        r
    }

    /// Sends idle workers and the timekeeper home. Call after the phase
    /// changed under the lock: every worker is told to claim again and sees
    /// the new phase (a busy one at its next claim anyway).
    pub(crate) fn close(&self) {
        // Every worker's notice stays set until it claims, and the phase
        // stays terminal: one broadcast suffices (each ExitAll calls this).
        if self.closing.is_cancelled() {
            return;
        }
        self.closing.cancel();
        for w in self.wakes.iter() {
            w.notify_work();
        }
    }

    /// Raises `reason` on running tasks, then wakes their workers
    /// (signal invariant 3).
    pub(crate) fn interrupt(
        &self,
        running: impl IntoIterator<Item = Running>,
        reason: CancelReason,
    ) {
        for (job, worker) in running {
            job.raise(reason);
            if let Some(w) = self.wakes.get(usize::from(worker)) {
                w.wake();
            }
        }
    }

    /// `cancel()`: shuts everything down at once. Idempotent.
    pub(crate) fn cancel_all(&self) {
        let mut core = self.lock();
        if core.phase == Phase::Cancelled {
            return;
        }
        core.phase = Phase::Cancelled;
        let deliveries = core.shut_down_queued(None);
        let running = core.shut_down_running();
        self.unlock(core);
        self.stopping.cancel();
        self.close();
        self.interrupt(running, CancelReason::Shutdown);
        deliveries.into_iter().for_each(Delivery::deliver);
    }
}
