//! Flow control: pausing the whole cluster and resizing its worker pool
//! while it runs ([`Cluster::pause`](crate::Cluster::pause),
//! [`Cluster::resize`](crate::Cluster::resize)).
//!
//! Both act at one place on the hot path: a claim by worker `w` goes on
//! only if `w < open`, one comparison under the lock the claim holds
//! anyway. `open` is the worker target, or 0 while paused; only a claim
//! that fails the test comes here ([`Engine::gate`]), so a cluster that
//! never pauses or resizes pays that comparison and nothing else.
//!
//! Invariants (with those of `crate::idle`):
//! 1. While paused, waiting workers are kept in `held`, not in the idle
//!    set: a submit or promotion then picks nobody (no wake-up, no spin),
//!    and resume moves them back and wakes as many as there is work.
//! 2. A worker numbered at or above the target (a surplus after a shrink)
//!    leaves at its next claim, after settling its current one: nothing
//!    is cancelled. It is taken out of the idle and held sets when the
//!    shrink happens, so no wake-up is spent on it; one it was sent before
//!    is handed on to another worker when it leaves.
//! 3. `live[w]` is true from the spawn of worker `w` until the claim that
//!    sends it home, both under the lock: a grow spawns exactly the
//!    indices below the target that are not live, so no index runs twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::sync::Notify;

use std::time::Duration;

use crate::clock::{duration_ticks, NEVER};
use crate::cluster::{spawn_worker, Cluster};
use crate::engine::{Engine, Next, Phase};

use crate::idle::IdleWorkers;
use crate::shared::Shared;

/// Flow-control state read without the lock, in
/// [`Shared`](crate::shared::Shared).
#[derive(Default)]
pub(crate) struct FlowShared {
    /// Mirrors the engine's pause (written under its lock): read by
    /// [`Cluster::is_paused`](crate::Cluster::is_paused) and by an immediate
    /// retry about to start its next attempt.
    paused: AtomicBool,
    /// Woken at every resume.
    resumed: Notify,
    /// The runtime `run` started the workers on: a grow spawns there.
    pub(crate) runtime: OnceLock<Handle>,
}

impl FlowShared {
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Call under the engine's lock, with what the engine now says.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Woken at every resume, of the cluster or of a key (`crate::keys`).
    pub(crate) fn resumed(&self) -> &Notify {
        &self.resumed
    }

    /// Call after unlocking, when a resume happened.
    pub(crate) fn wake_resumed(&self) {
        self.resumed.notify_waiters();
    }

    /// Waits until the cluster is not paused (at once if it is not).
    pub(crate) async fn until_resumed(&self) {
        loop {
            let notified = self.resumed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check: a resume in between is not lost.
            notified.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    /// Pauses (see [`Engine::pause`]) and mirrors it, under the lock.
    pub(crate) fn pause_locked(&self, core: &mut Engine, until: Option<i64>) -> bool {
        let paused = core.pause(until);
        if paused {
            self.flow.set_paused(true);
        }
        paused
    }

    /// Resumes (see [`Engine::resume`]) and mirrors it, under the lock.
    /// When it returns `true`, call [`FlowShared::wake_resumed`] after
    /// unlocking.
    pub(crate) fn resume_locked(&self, core: &mut Engine) -> bool {
        let resumed = core.resume();
        self.flow.set_paused(false);
        resumed
    }

    /// Ends a timed pause whose time has come (the timekeeper's call; see
    /// [`resume_locked`](Self::resume_locked)).
    pub(crate) fn resume_if_due(&self, core: &mut Engine) -> bool {
        match core.flow.resume_at() {
            Some(t) if t <= self.clock.now() => self.resume_locked(core),
            _ => false,
        }
    }
}

/// The engine's flow-control state (under its lock).
pub(crate) struct Flow {
    /// Claims go on for workers numbered below this (0 while paused).
    pub(crate) open: usize,
    /// Workers the cluster should have.
    target: usize,
    paused: bool,
    /// When a timed pause ends ([`NEVER`]: not timed).
    resume_at: i64,
    /// Workers waiting while paused (invariant 1).
    held: IdleWorkers,
    /// Spawned workers that have not been sent home (invariant 3).
    live: Vec<bool>,
    live_count: usize,
}

/// Why [`Cluster::resize`](crate::Cluster::resize) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResizeError {
    /// A cluster needs at least one worker.
    #[error("a cluster needs at least one worker")]
    ZeroWorkers,
    /// Workers are numbered by u16: 65,535 at most.
    #[error("a cluster supports at most 65535 workers")]
    TooManyWorkers,
    /// The cluster is stopping, was cancelled, or finished a drain: its
    /// workers are leaving or gone.
    #[error("the cluster has been shut down")]
    ShutDown,
}

/// What a resize decided, to carry out after unlocking.
#[derive(Default)]
pub(crate) struct Resized {
    /// New worker indices to spawn.
    pub(crate) spawn: Vec<u16>,
    /// Waiting surplus workers to wake, so that they leave.
    pub(crate) send_home: Vec<u16>,
}

impl Flow {
    pub(crate) fn new(workers: usize) -> Self {
        Flow {
            open: workers,
            target: workers,
            paused: false,
            resume_at: NEVER,
            held: IdleWorkers::new(workers),
            live: Vec::new(),
            live_count: 0,
        }
    }

    pub(crate) fn target(&self) -> usize {
        self.target
    }

    pub(crate) fn live(&self) -> usize {
        self.live_count
    }

    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// When a timed pause ends, if one is set.
    pub(crate) fn resume_at(&self) -> Option<i64> {
        (self.paused && self.resume_at != NEVER).then_some(self.resume_at)
    }

    fn reopen(&mut self) {
        self.open = if self.paused { 0 } else { self.target };
    }

    /// Records every worker below the target as spawned (`run`); returns
    /// their indices.
    pub(crate) fn start(&mut self) -> Vec<u16> {
        self.spawn_missing()
    }

    /// Worker `w` leaves its loop (a claim said so, under the lock).
    pub(crate) fn left(&mut self, w: u16) {
        if let Some(live) = self.live.get_mut(usize::from(w)) {
            if std::mem::take(live) {
                self.live_count -= 1;
            }
        }
    }

    fn spawn_missing(&mut self) -> Vec<u16> {
        if self.live.len() < self.target {
            self.live.resize(self.target, false);
        }
        let mut out = Vec::new();
        for (w, live) in self.live.iter_mut().enumerate().take(self.target) {
            if !*live {
                *live = true;
                // `target` is at most u16::MAX (checked by `resize` and `build`).
                out.push(w as u16);
            }
        }
        self.live_count += out.len();
        out
    }
}

impl Engine {
    /// The slow path of a claim by a worker numbered at or above
    /// `flow.open` (see the module docs).
    #[cold]
    pub(crate) fn gate(&mut self, worker: u16) -> Next {
        let w = usize::from(worker);
        if w >= self.flow.target {
            // Surplus (invariant 2).
            self.idle.remove(worker);
            self.flow.held.remove(worker);
            self.flow.left(worker);
            // Parked attempts and waiting tasks count too: a drain is not
            // over while one may still need a worker.
            if self.phase == Phase::Draining && self.drained() {
                return Next::ExitAll;
            }
            if self.queue.len() + self.parked_ready() > 0 {
                self.note_ready(1);
            }
            return Next::Exit;
        }
        // Paused (invariant 1).
        self.idle.remove(worker);
        self.flow.held.park(worker);
        Next::Idle
    }

    /// Pauses claims; `until` ends the pause at that tick (`None`: until
    /// `resume`). Does nothing once a drain, stop or cancel has begun.
    /// Returns whether the cluster is paused now.
    pub(crate) fn pause(&mut self, until: Option<i64>) -> bool {
        if !matches!(self.phase, Phase::Idle | Phase::Running) {
            return false;
        }
        self.flow.paused = true;
        self.flow.resume_at = until.unwrap_or(NEVER);
        self.flow.reopen();
        self.flow.held.absorb(&mut self.idle);
        if let Some(t) = until {
            self.note_timer(t);
        }
        true
    }

    /// Ends a pause: waiting workers go back to the idle set, and as many
    /// as there are queued tasks and parked attempts ready to resume (their
    /// waits ended during the pause, when no worker could be woken for them)
    /// are woken. Returns whether it was paused.
    pub(crate) fn resume(&mut self) -> bool {
        if !self.flow.paused {
            return false;
        }
        self.flow.paused = false;
        self.flow.resume_at = NEVER;
        self.flow.reopen();
        self.idle.absorb(&mut self.flow.held);
        let n = self.queue.len() + self.parked_ready();
        self.note_ready(n);
        true
    }

    /// Sets the worker target (validated by the caller).
    pub(crate) fn resize(&mut self, workers: usize) -> Result<Resized, ResizeError> {
        match self.phase {
            Phase::Stopping | Phase::Cancelled => return Err(ResizeError::ShutDown),
            Phase::Idle | Phase::Running | Phase::Draining => {}
        }
        let old = self.flow.target;
        self.flow.target = workers;
        self.flow.reopen();
        self.idle.ensure(workers);
        self.flow.held.ensure(workers);
        let mut out = Resized::default();
        if workers < old {
            for w in workers..self.flow.live.len() {
                if self.flow.live[w] {
                    let w = w as u16;
                    // Either removal: it waits, so it must be woken to leave.
                    if self.idle.remove(w) | self.flow.held.remove(w) {
                        out.send_home.push(w);
                    }
                }
            }
        }
        if self.phase != Phase::Idle {
            // Before `run`, `run` spawns the target.
            out.spawn = self.flow.spawn_missing();
        }
        Ok(out)
    }
}

/// Pause, resume and resize: flow control of a running cluster.
///
/// Two different "paused" exist; they do not mix:
/// - [`ClusterBuilder::paused`](crate::ClusterBuilder::paused) builds a
///   cluster whose workers have **not started** yet: [`Cluster::run`]
///   starts them, once.
/// - [`Cluster::pause`] **holds a running cluster**: its workers stay, and
///   only stop claiming until [`Cluster::resume`]. (It may also be called
///   before `run`: the workers then start paused.)
impl Cluster {
    /// Pauses the cluster: running attempts finish (with their retries'
    /// timing, see below), but no new attempt starts until
    /// [`resume`](Self::resume). Submits are still accepted and queue, and
    /// at the resume start in their exact order (priority, start time,
    /// submission). Waiting workers sleep meanwhile: no polling.
    ///
    /// While paused:
    /// - A task retried in `Immediate` mode waits out its delay on its
    ///   worker, then keeps its place (and its worker) until the resume
    ///   before its next attempt starts. A `Requeue` retry queues as usual.
    /// - [`cancel_task`](Self::cancel_task), [`stop`](Self::stop) and
    ///   [`cancel`](Self::cancel) work as always (queued tasks resolve as
    ///   cancelled or shut down; stop waits only for running attempts).
    /// - [`drain`](Self::drain) resumes first: it must run what is due.
    ///
    /// Pausing a paused cluster does nothing, except that it makes a
    /// [timed pause](Self::pause_for) last until `resume`. Returns whether
    /// the cluster is paused now: `false` once a drain, stop or cancel has
    /// begun (a pause then does nothing).
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// assert!(cluster.pause());
    /// let handle = cluster.task(|_| async { Ok::<_, String>("ran") }).submit().unwrap();
    /// tokio::task::yield_now().await;
    /// assert_eq!(cluster.stats().queued, 1); // held while paused
    /// assert!(cluster.resume());
    /// assert_eq!(handle.await, Ok("ran"));
    /// # }
    /// ```
    pub fn pause(&self) -> bool {
        self.set_pause(None)
    }

    /// Pauses the cluster as [`pause`](Self::pause) does, for `duration`
    /// on the cluster's clock (tokio's: a test's paused clock drives it),
    /// then resumes it. A later `pause_for` replaces the deadline, a later
    /// `pause` makes the pause last until [`resume`](Self::resume), and
    /// `resume` ends it at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// cluster.pause_for(Duration::from_secs(10));
    /// let start = tokio::time::Instant::now();
    /// let handle = cluster.task(|_| async { Ok::<_, String>(()) }).submit().unwrap();
    /// handle.await.unwrap();
    /// assert!(start.elapsed() >= Duration::from_secs(10));
    /// assert!(!cluster.is_paused());
    /// # }
    /// ```
    pub fn pause_for(&self, duration: Duration) -> bool {
        let until = self
            .shared()
            .clock
            .now()
            .saturating_add(duration_ticks(duration));
        self.set_pause(Some(until))
    }

    fn set_pause(&self, until: Option<i64>) -> bool {
        let shared = self.shared();
        shared.locked(|core| shared.pause_locked(core, until))
    }

    /// Ends a pause: waiting workers claim again at once, in the queue's
    /// order, and immediate retries held by the pause go on. Returns
    /// whether the cluster was paused.
    pub fn resume(&self) -> bool {
        let shared = self.shared();
        let resumed = shared.locked(|core| shared.resume_locked(core));
        if resumed {
            shared.flow.wake_resumed();
        }
        resumed
    }

    /// Workers running now. Below [`workers`](Self::workers) before
    /// [`run`](Self::run) (0) and for the moment a grow spawns them; above
    /// it after a shrink, until the surplus workers finish their current
    /// task; 0 once a stop, drain or cancel has sent them all home.
    ///
    /// (Not in [`ClusterStats`](crate::ClusterStats), which counts tasks: a
    /// settled cluster's stats equal `ClusterStats::default()`.)
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(3).paused().build().unwrap();
    /// assert_eq!((cluster.workers(), cluster.live_workers()), (3, 0));
    /// cluster.run().unwrap();
    /// assert_eq!(cluster.live_workers(), 3);
    /// # }
    /// ```
    pub fn live_workers(&self) -> usize {
        self.shared().lock().flow.live()
    }

    /// Whether the cluster is paused ([`pause`](Self::pause),
    /// [`pause_for`](Self::pause_for)). Not about a cluster built
    /// [not started](crate::ClusterBuilder::paused).
    ///
    /// A pause outlives a stop or cancel (it no longer matters then: nothing
    /// starts either way); a drain ends it.
    pub fn is_paused(&self) -> bool {
        self.shared().flow.is_paused()
    }

    /// Sets the number of workers while the cluster runs (or before
    /// [`run`](Self::run)); [`workers`](Self::workers) reports it at once.
    ///
    /// - Growing starts the new workers at once, on the runtime the
    ///   workers were started on; they claim due work immediately.
    /// - Shrinking cancels nothing: a surplus worker finishes its current
    ///   task (its immediate retries included), then leaves; a waiting one
    ///   leaves at once. Until then [`live_workers`](Self::live_workers) counts
    ///   them, and more attempts than the new target may still run.
    /// - During a [`drain`](Self::drain) it works the same (more workers
    ///   finish the drain sooner); once a stop or cancel has begun, or a
    ///   drain has finished, it is refused. While paused, new workers wait
    ///   for the resume.
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(2).unwrap();
    /// cluster.resize(8).unwrap();
    /// assert_eq!(cluster.workers(), 8);
    /// cluster.resize(1).unwrap();
    /// assert_eq!(cluster.workers(), 1);
    /// assert!(cluster.resize(0).is_err());
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ResizeError::ZeroWorkers`] for 0, [`ResizeError::TooManyWorkers`]
    /// over 65,535 (as [`ClusterBuilder::build`](crate::ClusterBuilder::build)),
    /// [`ResizeError::ShutDown`] once a stop or cancel has begun or a drain
    /// has finished. A refused resize changes nothing.
    pub fn resize(&self, workers: usize) -> Result<(), ResizeError> {
        if workers == 0 {
            return Err(ResizeError::ZeroWorkers);
        }
        if workers > usize::from(u16::MAX) {
            return Err(ResizeError::TooManyWorkers);
        }
        let shared = self.shared();
        if shared.closing.is_cancelled() {
            // A finished drain (or a stop): the workers went home for good.
            return Err(ResizeError::ShutDown);
        }
        // Slots first (invariant of `crate::wakes`); outside the lock.
        shared.wakes.ensure(workers);
        let resized = shared.locked(|core| core.resize(workers))?;
        for w in resized.send_home {
            shared.wakes[usize::from(w)].notify_work();
        }
        if !resized.spawn.is_empty() {
            if let Some(runtime) = shared.flow.runtime.get() {
                for w in resized.spawn {
                    spawn_worker(shared, w, runtime);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawns_only_missing_indices() {
        let mut f = Flow::new(2);
        assert_eq!(f.start(), vec![0, 1]);
        f.target = 4;
        assert_eq!(f.spawn_missing(), vec![2, 3]);
        f.live[1] = false;
        f.live_count -= 1;
        assert_eq!(f.spawn_missing(), vec![1]);
        assert_eq!(f.live(), 4);
    }
}
