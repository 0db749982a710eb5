//! The engine: the cluster's state under its one lock (the registry of
//! tasks, the queue, the cache's expiries, the phase and the idle workers),
//! and every operation on it. [`Shared`](crate::shared::Shared) holds it.
//!
//! ```text
//! submit ──► Engine { registry (slab + name map), Queue, cache expiries } ──► workers
//!               ▲ one parking_lot mutex, never held across an await,         │
//!               │ never held while user code runs                            ▼
//!            timekeeper (promotes due tasks, sweeps the cache)          outcome ──► handle / subscribers
//! ```
//!
//! Glossary (the engine's words, used across the crate):
//! - **submit**: admit a task: check the phase and id, give it a sequence
//!   number and a registry slot, queue it.
//! - **claim**: a worker takes the best due task; it is `Running` under that
//!   worker until settled. None while paused, and a surplus worker after a
//!   shrink leaves instead (`crate::flow`).
//! - **settle**: a worker reports how the attempts of its claim ended (a
//!   [`Plan`]): requeue for a retry, or finalize.
//! - **finalize**: decide a task's outcome under the lock; the task leaves
//!   the queue and running sets, and its registry entry is removed or kept
//!   `Retained`. Returns a [`Delivery`].
//! - **deliver**: after unlocking, hand the decided outcome to the handle,
//!   the subscribers and the callbacks ([`Job::complete`]).
//! - **retain**: keep a finished task's outcome for late readers until its
//!   retention passes; the **sweep** then drops it (`crate::cache`).
//! - **forced**: an outcome the cluster imposes on a running task (cancel,
//!   shutdown), honoured by its settle whatever the attempt returned.
//! - **join**: a submit that finds its id taken subscribes to the task
//!   holding it instead of queueing its own (`crate::dedup`), in the same
//!   lock section that decides whether that task finished.
//! - **window**: how long a `Retained` task keeps its id taken after it
//!   finished (`crate::dedup`); it starts in `finalize`.
//!
//! - **on key**: a due task whose key (`keys`, `crate::keys`) is paused or
//!   full: moved by `claim` from the queue to its key's waiting heap, on no
//!   worker, until room frees; it then goes back into the queue with its
//!   original order.
//! - **waiting**: a dependent task whose parents have not all finished
//!   (`deps`): in no queue, on no worker. The **cascade** tells children
//!   when a parent's outcome is decided; outcomes it decides (a failed
//!   parent's children) go to the **outbox**, delivered by `Shared::unlock`.
//! - **set aside**: a due task that a rate limiter refused at claim
//!   (`limit`): in no queue, on no worker, waiting in its bucket's list
//!   until the timekeeper sends it back to the queue.
//!
//! Invariants:
//! 1. Every task in the registry is in exactly one state: `Queued` (in the
//!    queue), `Running` (claimed by one worker: attempt running, or an
//!    immediate retry waiting; or its attempt parked in a wait, held by no
//!    worker until one resumes it, see `park`), `Waiting` (for its
//!    parents, in `deps`), `OnKey` (due, held by its paused or full key, in
//!    `keys`), `Limited` (set aside by a rate limiter, in one bucket's
//!    waiters, see `limit`), or `Retained` (finished, outcome cached).
//! 2. A task leaves `Queued`/`Running`/`Waiting`/`OnKey`/`Limited` only through
//!    [`Engine::finalize`], which returns a [`Delivery`]; the caller runs it
//!    after unlocking (or puts it in the outbox, which `Shared::unlock`
//!    empties). So each task's outcome is delivered exactly once.
//! 3. A cancel or shutdown that reaches a running task sets `forced`; the
//!    worker's later `settle` honours it, whatever the attempt returned. So
//!    `cancel_task` returning `CancelOutcome::Requested` guarantees a
//!    `Cancelled` outcome.
//! 4. Lock order: `Shared::engine`, then a task cell's lock. Nothing that
//!    may drop the last reference to a task cell (and so run user `Drop`
//!    code) happens under the engine's lock: removed cells travel out in
//!    `Delivery`s and `Vec`s, and are dropped by their receivers.
//! 5. The sweep never changes a decided outcome: it only drops what
//!    `finalize` retained (see `crate::cell` invariant 4).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;

mod capacity;
mod deps;
mod keys;
mod limit;
mod names;
mod park;
mod watch;

use self::capacity::Capacity;
pub(crate) use self::capacity::{hold_room, Room};
use self::deps::Deps;
pub(crate) use self::deps::NewTask;
use self::keys::Keys;
use self::limit::Limits;
use self::names::Names;
use self::park::Parking;
pub(crate) use self::watch::PendingWatch;
use self::watch::Watchers;

use crate::cache::Expiries;
use crate::clock::{duration_ticks, Clock, NEVER};
use crate::cluster::CancelOutcome;
use crate::error::SubmitError;
use crate::flow::Flow;
use crate::idle::{IdleWorkers, Picked};
use crate::job::{Forced, Job};
use crate::queue::{Item, Queue, Slot, Stamp};
use crate::task::{IdRef, TaskId};

/// Where the cluster is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Built, `run` not called yet: tasks queue up.
    Idle,
    Running,
    /// `drain`: no new tasks; what was due at the call runs to the end.
    Draining,
    /// `stop`: no new tasks, nothing new starts, running attempts finish.
    Stopping,
    /// `cancel` (or a stop/drain timeout): everything is shut down.
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    Running,
    /// A dependent waiting for its parents (see `deps`).
    Waiting,
    /// Set aside by a rate limiter (see `limit`).
    Limited,
    /// Due, waiting on its paused or full key (see `keys`).
    OnKey,
    Retained,
}

/// A task's registry entry: 24 bytes, with the slab's tag in `state`. The
/// task's immutable keys (sequence number, priority) live in its cell.
struct Entry {
    job: Arc<dyn Job>,
    /// Attempts started so far.
    attempts: u32,
    state: State,
    forced: Option<Forced>,
    /// The worker that claimed it, while `Running`.
    worker: u16,
}

/// A task a worker has claimed.
pub(crate) struct Claim {
    pub(crate) slot: Slot,
    pub(crate) seq: u64,
    pub(crate) job: Arc<dyn Job>,
    /// Attempts started so far (the worker bumps it per attempt).
    pub(crate) attempts: u32,
}

/// What a worker decided when a claimed task's attempt(s) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Deliver the stored result, or the forced outcome.
    Final(Option<Forced>),
    /// Queue the task again after `delay`.
    Requeue(Duration),
}

impl Plan {
    /// The time a requeue needs, read before the lock is taken: a clock read
    /// is the slowest step of a settle, and the lock is contended (W8, `bench/README.md#w8-retries`).
    pub(crate) fn now(&self, clock: &Clock) -> Option<i64> {
        matches!(self, Plan::Requeue(_)).then(|| clock.now())
    }
}

/// A final outcome to deliver once the lock is released (invariant 2).
#[must_use]
pub(crate) struct Delivery {
    job: Arc<dyn Job>,
    forced: Option<Forced>,
    retain: bool,
}

impl Delivery {
    pub(crate) fn deliver(self) {
        self.job.complete(self.forced, self.retain);
    }
}

/// Outcomes to deliver and things to drop, once the lock is released.
pub(crate) type Outbox = (Vec<Delivery>, Vec<Box<dyn Send>>);

/// A running task to signal, and the worker that runs it.
pub(crate) type Running = (Arc<dyn Job>, u16);

/// What a worker does next.
pub(crate) enum Next {
    Run(Claim),
    /// Resume a parked attempt whose wait is over (`crate::park`).
    Resume(Arc<crate::park::ParkSlot>),
    /// Nothing due: wait for work.
    Idle,
    /// Leave the loop.
    Exit,
    /// Leave the loop and tell the other workers to leave (drain finished).
    ExitAll,
}

/// Counts of what the cluster holds; see [`Cluster::stats`](crate::Cluster::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Tasks waiting to start: in the queue, due or scheduled (requeued
    /// retries included), waiting on a key (`waiting_on_key`) or set aside
    /// by a rate limiter (`waiting_on_limiter`).
    pub queued: usize,
    /// Tasks claimed by a worker: an attempt running or an immediate retry waiting.
    pub running: usize,
    /// Finished tasks whose outcome is cached.
    pub cached: usize,
    /// Tasks waiting for their parents ([`TaskBuilder::after`](crate::TaskBuilder::after))
    /// and attempts parked in a [`TaskContext::wait_for`](crate::TaskContext::wait_for):
    /// in no queue, on no worker.
    pub waiting: usize,
    /// Every task the cluster holds state for (`queued + running + waiting + cached`).
    pub held: usize,
    /// [`Cluster::watch`](crate::Cluster::watch)es waiting for an id not yet submitted.
    pub watchers: usize,
    /// The cluster is paused ([`Cluster::pause`](crate::Cluster::pause)):
    /// no new attempt starts.
    pub paused: bool,
    /// The cluster's [capacity](crate::ClusterBuilder::capacity) of pending
    /// tasks, if it has one.
    pub capacity: Option<usize>,
    /// Submits refused because the queue was full
    /// ([`SubmitError::Full`](crate::SubmitError::Full)) or their key was
    /// ([`KeyFull::Reject`](crate::KeyFull::Reject)), since the cluster was built.
    pub rejected: u64,
    /// Queued tasks dropped from a full queue for a higher-priority one
    /// ([`TaskError::Dropped`](crate::TaskError::Dropped)), since the cluster was built.
    pub dropped: u64,
    /// Due tasks that a rate limiter ([`TaskBuilder::limit`](crate::TaskBuilder::limit))
    /// set aside until it admits them: on no worker. Counted in `queued` too.
    pub waiting_on_limiter: usize,
    /// Tasks waiting on a paused or full key ([`TaskBuilder::key`](crate::TaskBuilder::key)):
    /// due, but on no worker. Counted in `queued` too.
    pub waiting_on_key: usize,
    /// Tasks replaced by a newer task of their key
    /// ([`KeyFull::Replace`](crate::KeyFull::Replace)), since the cluster was built.
    pub replaced: u64,
}

pub(crate) struct Engine {
    /// Read only when needed: most claims and settles need no time at all.
    clock: Clock,
    entries: Slab<Entry>,
    /// User-given ids; generated ids carry their slot and need no map.
    names: Names,
    pub(crate) queue: Queue,
    /// When retained outcomes expire.
    expiries: Expiries,
    next_seq: u64,
    /// The end of the block of sequence numbers `next_seq` is taken from.
    seq_end: u64,
    pub(crate) phase: Phase,
    running: usize,
    cached: usize,
    /// Waiting workers, and those picked to wake (sent after unlocking).
    pub(crate) idle: IdleWorkers,
    /// Pause and worker target (`crate::flow`).
    pub(crate) flow: Flow,
    /// When the timekeeper wakes next (`i64::MAX`: not armed).
    timer_at: i64,
    /// A timekeeper wake-up decided under the lock, sent after it is released.
    wake_timer: bool,
    /// Registry size at its peak since shrinking was last tried.
    shrink_mark: usize,
    /// Dependencies, made by the first dependent task (`deps`).
    deps: Option<Box<Deps>>,
    /// Outcomes decided under the lock besides the caller's own (a failed
    /// parent's children), delivered by `Shared::unlock`.
    outbox: Vec<Delivery>,
    /// Watches for ids not yet submitted, made by the first (`watch`).
    watchers: Option<Box<Watchers>>,
    /// Parked attempts, made by the first park (`park`).
    parking: Option<Box<Parking>>,
    /// The bounded queue, set at build if the cluster has a capacity (`capacity`).
    capacity: Option<Box<Capacity>>,
    /// Rate limiters and the tasks they set aside, made by the first
    /// limiter (`limit`).
    limits: Option<Box<Limits>>,
    /// Per-key limits and pauses, made by the first keyed task or key
    /// setting (`keys`).
    keys: Option<Box<Keys>>,
    /// What was let go of under the lock and may wake a future when dropped
    /// (closed watches): dropped by `Shared::unlock`, after unlocking,
    /// since a woken parked attempt takes the lock.
    trash: Vec<Box<dyn Send>>,
    /// `outbox` or `trash` holds something: one flag for `Shared::unlock`
    /// to test on the hot path.
    has_outbox: bool,
}

/// Sequence numbers order equal-priority tasks (FIFO) and make generated ids
/// unique. They are unique in the whole process, not only in one cluster:
/// each cluster takes blocks of `SEQ_BLOCK` numbers from this counter, in
/// increasing order, so its own numbers still only grow, and an id another
/// cluster generated never finds a task here (its `seq` is no task's here).
static NEXT_SEQ_BLOCK: AtomicU64 = AtomicU64::new(0);
const SEQ_BLOCK: u64 = 1024;

/// An emptied registry of more than this many slots gives them all back
/// (see `Engine::maybe_shrink`).
const SHRINK_EMPTY: usize = 1024;

/// A registry of at least this many slots gives back its trailing free
/// slots while it still holds tasks (see `Engine::maybe_shrink`); a smaller
/// one keeps them until it is empty (1.5 MiB of 24-byte slots at most).
const SHRINK_NONEMPTY: usize = 1 << 16;

/// The entry at `slot` if it still holds the task numbered `seq`.
fn current(entries: &Slab<Entry>, slot: Slot, seq: u64) -> Option<&Entry> {
    entries.get(slot as usize).filter(|e| e.job.seq() == seq)
}

fn is_live(entries: &Slab<Entry>, item: &Item) -> bool {
    current(entries, item.slot, item.seq).is_some_and(|e| e.state == State::Queued)
}

impl Engine {
    pub(crate) fn new(clock: Clock, workers: usize) -> Self {
        Engine {
            clock,
            entries: Slab::new(),
            names: Names::default(),
            queue: Queue::default(),
            expiries: Expiries::default(),
            next_seq: 0,
            seq_end: 0,
            phase: Phase::Idle,
            running: 0,
            cached: 0,
            idle: IdleWorkers::new(workers),
            flow: Flow::new(workers),
            timer_at: i64::MAX,
            wake_timer: false,
            shrink_mark: 0,
            deps: None,
            outbox: Vec::new(),
            watchers: None,
            parking: None,
            capacity: None,
            limits: None,
            keys: None,
            trash: Vec::new(),
            has_outbox: false,
        }
    }

    /// The outcomes decided besides the caller's own, to deliver after
    /// unlocking (engine invariant 2), and what to drop then.
    pub(crate) fn take_outbox(&mut self) -> Outbox {
        if self.capacity.is_some() {
            // Rooms freed in this lock section go to waiting submits.
            self.grant_rooms();
        }
        self.has_outbox = false;
        let out = (
            std::mem::take(&mut self.outbox),
            std::mem::take(&mut self.trash),
        );
        if self.capacity.is_some() {
            // While a submit waits for room, every unlock comes here.
            self.has_outbox = self.room_awaited();
        }
        out
    }

    /// Whether [`take_outbox`](Self::take_outbox) has anything: one flag,
    /// tested by every unlock.
    #[inline]
    pub(crate) fn has_outbox(&self) -> bool {
        self.has_outbox
    }

    /// Queues a delivery for `Shared::unlock` (engine invariant 2).
    fn send_later(&mut self, d: Delivery) {
        self.outbox.push(d);
        self.has_outbox = true;
    }

    /// Queues something to drop after unlocking (see `trash`).
    fn drop_later(&mut self, x: Box<dyn Send>) {
        self.trash.push(x);
        self.has_outbox = true;
    }

    /// The wake-ups decided under the lock, to send after it is released:
    /// the idle workers picked, and whether the timekeeper must re-arm.
    pub(crate) fn take_wakeups(&mut self) -> (Option<Picked>, bool) {
        (
            self.idle.take_picked(),
            std::mem::take(&mut self.wake_timer),
        )
    }

    fn accepts_workers(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Draining)
    }

    /// Wakes idle workers for `n` newly due tasks.
    #[inline]
    pub(crate) fn note_ready(&mut self, n: usize) {
        self.idle.pick(n);
    }

    /// Re-arms the timekeeper if `tick` is earlier than its wake-up.
    pub(crate) fn note_timer(&mut self, tick: i64) {
        if tick < self.timer_at && self.accepts_workers() {
            self.timer_at = tick;
            self.wake_timer = true;
        }
    }

    /// Queues a task. `stamped`: its start is `now`, the time read just
    /// before the lock was taken, which the queue may raise (see [`Stamp`]).
    #[inline]
    fn push(&mut self, item: Item, now: i64, stamped: bool) {
        if self.keys.is_some() {
            self.key_queued(item.slot);
        }
        if stamped {
            self.queue.push_now(item);
        } else {
            self.queue.push(item, now);
        }
        if item.start <= now {
            self.note_ready(1);
        } else {
            self.note_timer(item.start);
        }
    }

    fn lookup(&self, id: &TaskId) -> Option<Slot> {
        self.lookup_ref(id.as_ref())
    }

    /// The slot of the task holding the user-given id `name`, if any.
    #[inline]
    fn slot_named(&self, name: &str) -> Option<Slot> {
        let entries = &self.entries;
        self.names.get(name, |slot| {
            entries.get(slot as usize)?.job.name().map(|n| &**n)
        })
    }

    /// Whether the task in `slot`, found by its user-given id, still holds
    /// that id at `now`: unfinished, or finished within its dedup window.
    fn still_holds_id(&self, slot: Slot, now: i64) -> bool {
        let e = &self.entries[slot as usize];
        e.state != State::Retained || e.job.holds_id(now)
    }

    fn lookup_ref(&self, id: IdRef<'_>) -> Option<Slot> {
        match id {
            IdRef::Generated { seq, slot } => current(&self.entries, slot, seq).map(|_| slot),
            IdRef::Named(n) => self.slot_named(n),
        }
    }

    /// Admits a new task: checks the phase and the id, picks its sequence
    /// number and slot, and queues it. A cached task with the same id is
    /// dropped from the cache (returned, to be released after unlocking).
    ///
    /// `name` is `job.name()`, and `assign` records the sequence number and
    /// slot in the (typed) task before anyone else can see it: the caller
    /// knows both without virtual calls, on the hottest path there is.
    pub(crate) fn submit(
        &mut self,
        job: Arc<dyn Job>,
        name: Option<&Arc<str>>,
        assign: impl FnOnce(u64, u32),
        priority: i32,
        start: Stamp,
        now: i64,
    ) -> Result<Option<Arc<dyn Job>>, SubmitError> {
        if !matches!(self.phase, Phase::Idle | Phase::Running) {
            return Err(SubmitError::ShuttingDown);
        }
        // Slots are u32 (ids and queue entries carry them); checked before
        // anything is touched, so a refusal changes nothing.
        if self.entries.len() >= u32::MAX as usize {
            return Err(SubmitError::TooManyTasks);
        }
        if self.capacity.is_some() {
            self.admit_bounded(name, priority, now)?;
        }
        let mut replaced = None;
        if let Some(name) = name {
            if let Some(old) = self.slot_named(name) {
                // A finished task holds its id through its dedup window.
                if self.still_holds_id(old, now) {
                    return Err(SubmitError::DuplicateId(TaskId::named(name.clone())));
                }
                replaced = Some(self.remove(old));
                self.cached -= 1;
            }
        }
        // `vacant_key() <= len() < u32::MAX` (checked above).
        let slot = self.entries.vacant_key() as u32;
        if self.next_seq == self.seq_end {
            // See `SEQ_BLOCK`: one atomic add per block, not per task.
            self.next_seq = NEXT_SEQ_BLOCK.fetch_add(SEQ_BLOCK, Relaxed);
            self.seq_end = self.next_seq + SEQ_BLOCK;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        assign(seq, slot);
        if let Some(name) = name {
            // `Names::insert`'s precondition: no task holds the name now.
            debug_assert!(self.slot_named(name).is_none(), "{name} is held twice");
            self.names.insert(name, slot);
        }
        self.entries.insert(Entry {
            job,
            attempts: 0,
            state: State::Queued,
            forced: None,
            worker: 0,
        });
        if let Some(name) = name {
            if self.watchers.is_some() {
                self.attach_watchers(name, slot);
            }
        }
        self.push(
            Item {
                slot,
                seq,
                start: start.start,
                priority,
            },
            now,
            start.now,
        );
        Ok(replaced)
    }

    /// The next due task for worker `worker`.
    #[inline]
    pub(crate) fn claim(&mut self, worker: u16) -> Next {
        // Nothing queued at all (the claim after the last task of a burst,
        // once per W4 round trip): straight to the idle set, as the full
        // claim would (about 60 instructions less).
        if self.queue.holds_nothing()
            && self.parking.is_none()
            && matches!(self.phase, Phase::Idle | Phase::Running)
            && usize::from(worker) < self.flow.open
        {
            self.idle.park(worker);
            return Next::Idle;
        }
        self.claim_queued(worker)
    }

    /// [`claim`](Self::claim) with something queued (or a phase, a gate or
    /// parked attempts to see to).
    #[inline(never)]
    fn claim_queued(&mut self, worker: u16) -> Next {
        if self.parking.is_some() {
            if let Some(next) = self.claim_parked(worker) {
                return next;
            }
        }
        match self.phase {
            Phase::Stopping | Phase::Cancelled => {
                self.flow.left(worker);
                return Next::Exit;
            }
            Phase::Idle | Phase::Running | Phase::Draining => {}
        }
        // Paused, or a surplus worker after a shrink (`crate::flow`).
        if usize::from(worker) >= self.flow.open {
            return self.gate(worker);
        }
        let entries = &self.entries;
        let promoted = if self.queue.has_scheduled() {
            self.queue
                .promote(self.clock.now(), |i| is_live(entries, i))
        } else {
            0
        };
        let popped = loop {
            let entries = &self.entries;
            let Some(item) = self.queue.pop(|i| is_live(entries, i)) else {
                break None;
            };
            // A task whose key is paused or full waits on it (`keys`); this
            // takes no slot of the key, so a limiter's refusal next costs
            // the key nothing.
            if self.keys.is_some() && self.key_blocked(&item) {
                // A task a limiter's bucket woke stops counting there while
                // it waits on its key (it meets the limiter again when the
                // key releases it): else the bucket keeps its turn for it,
                // and for good if it is cancelled there.
                if self.limits.is_some() {
                    self.unwake_limited(item.slot);
                }
                continue;
            }
            // Set aside by a rate limiter (`limit`), which charges its
            // buckets only when it admits.
            if self.limits.is_some() && !self.limits_admit(&item) {
                // A keyed task set aside took no slot of its key: the room
                // its key released it for goes to the key's next waiter
                // (else the key stays idle until the limiter admits it).
                if self.keys.is_some() {
                    self.key_set_aside(item.slot);
                }
                continue;
            }
            break Some(item);
        };
        if let Some(item) = popped {
            self.idle.unpark(worker);
            if self.keys.is_some() {
                self.key_took(item.slot);
            }
            let e = &mut self.entries[item.slot as usize];
            e.state = State::Running;
            e.worker = worker;
            self.running += 1;
            let claim = Claim {
                slot: item.slot,
                seq: item.seq,
                job: e.job.clone(),
                attempts: e.attempts,
            };
            // Tasks this pop promoted may be waiting while others sleep.
            if promoted > 1 {
                self.note_ready(promoted - 1);
            }
            return Next::Run(claim);
        }
        if self.phase == Phase::Draining && self.drained() {
            self.flow.left(worker);
            return Next::ExitAll;
        }
        self.idle.park(worker);
        Next::Idle
    }

    /// Applies a worker's plan for the task it claimed. `now` is the time
    /// of a requeue, read before locking (see [`Plan::now`]).
    pub(crate) fn settle(
        &mut self,
        claim: Claim,
        plan: Plan,
        now: Option<i64>,
    ) -> Option<Delivery> {
        let slot = claim.slot;
        let e = self.entries.get_mut(slot as usize)?;
        debug_assert!(e.state == State::Running && e.job.seq() == claim.seq);
        self.running -= 1;
        let retry_ok = matches!(self.phase, Phase::Running | Phase::Draining);
        match (e.forced, plan) {
            (None, Plan::Requeue(delay)) if retry_ok => {
                let now = now.unwrap_or_else(|| self.clock.now());
                let start = now.saturating_add(duration_ticks(delay));
                // A drain runs retries to the end; one that never comes
                // would keep it waiting to its timeout, so it is refused.
                if start == NEVER && self.phase == Phase::Draining {
                    return Some(self.finalize(slot, Some(Forced::Shutdown)));
                }
                e.state = State::Queued;
                e.attempts = claim.attempts;
                let item = Item {
                    slot,
                    seq: claim.seq,
                    start,
                    priority: e.job.priority(),
                };
                if self.keys.is_some() {
                    self.key_requeued(slot);
                }
                // A retry without delay starts at `now`, read before locking.
                self.push(item, now, start == now);
                None
            }
            (None, Plan::Requeue(_)) => Some(self.finalize(slot, Some(Forced::Shutdown))),
            (None, Plan::Final(f)) => Some(self.finalize(slot, f)),
            (Some(f), _) => Some(self.finalize(slot, Some(f))),
        }
    }

    /// Ends a queued, running or waiting task (invariant 2): retains it if
    /// its outcome is cached, else removes it from the registry. Its
    /// dependents, if any, hear of it (the cascade).
    #[inline]
    fn finalize(&mut self, slot: Slot, forced: Option<Forced>) -> Delivery {
        if self.keys.is_some() {
            self.key_left(slot);
        }
        if self.deps.is_some() {
            return self.finalize_with_deps(slot, forced);
        }
        self.finalize_entry(slot, forced)
    }

    /// `finalize` once any dependent was seen: out of the plain path.
    #[inline(never)]
    fn finalize_with_deps(&mut self, slot: Slot, forced: Option<Forced>) -> Delivery {
        let cascade = self.note_final(slot, forced);
        let d = self.finalize_entry(slot, forced);
        if cascade {
            self.cascade();
        }
        d
    }

    #[inline(always)]
    fn finalize_entry(&mut self, slot: Slot, forced: Option<Forced>) -> Delivery {
        let e = &mut self.entries[slot as usize];
        let retention = e.job.retention();
        match retention {
            Some(r) => {
                e.state = State::Retained;
                // How it ended, for dependents submitted later.
                e.forced = forced;
                let now = self.clock.now();
                let until = now.saturating_add(duration_ticks(r));
                e.job.start_window(now);
                let seq = e.job.seq();
                let job = e.job.clone();
                self.cached += 1;
                self.expiries.push(until, seq, slot);
                self.note_timer(until);
                Delivery {
                    job,
                    forced,
                    retain: true,
                }
            }
            None => Delivery {
                job: self.remove(slot),
                forced,
                retain: false,
            },
        }
    }

    /// Removes a task from the registry (not from the queue).
    #[inline]
    fn remove(&mut self, slot: Slot) -> Arc<dyn Job> {
        let e = self.entries.remove(slot as usize);
        // Without a named task there is no name to ask for (a virtual call
        // per task that ends).
        if !self.names.is_empty() && !self.names.remove_found(slot) {
            if let Some(name) = e.job.name() {
                self.names.remove(name, slot);
            }
        }
        self.maybe_shrink();
        e.job
    }

    /// Gives memory back after a mass removal (a cancel storm must not leave
    /// the registry at its peak size).
    ///
    /// An empty registry lets go of all of it at once. A registry that still
    /// holds tasks can only lose its trailing free slots (slab keys stay
    /// valid), which leaves an arbitrary capacity; reallocating to such sizes
    /// over and over, as every wave of tasks drained through, fragmented the
    /// heap (measured: W9's peak RSS grew 1.2-1.4x from 1M to 10M tasks, with
    /// about seven reallocations per wave of 100k; 1.00-1.07x when only an
    /// empty registry lets go). So that is kept for large registries
    /// (`SHRINK_NONEMPTY` slots and more), and tried again only after the
    /// size has fallen to a quarter of the last try (or of the peak):
    /// amortised O(1) per removal.
    ///
    /// The checks are inlined into every removal and the shrinking is not:
    /// a small registry (the common case) never shrinks, and a call per
    /// task cost about 40 instructions (W1, W4).
    #[inline]
    fn maybe_shrink(&mut self) {
        let len = self.entries.len();
        if len > self.shrink_mark {
            self.shrink_mark = len;
        } else if len <= self.shrink_mark / 4 && self.entries.capacity() > SHRINK_EMPTY {
            self.shrink(len);
        }
    }

    #[cold]
    #[inline(never)]
    fn shrink(&mut self, len: usize) {
        if len == 0 {
            self.entries = Slab::new();
            self.names.shrink_to_fit();
            self.shrink_mark = 0;
        } else {
            if self.entries.capacity() >= SHRINK_NONEMPTY {
                self.entries.shrink_to_fit();
                self.names.shrink_to_fit();
            }
            // Tried at this size: next at a quarter of it, or when empty.
            self.shrink_mark = len;
        }
    }

    /// Cancels by id (see [`Cluster::cancel_task`](crate::Cluster::cancel_task)).
    /// Returns what happened, the delivery for a queued task, and the job
    /// and worker to signal for a running one.
    pub(crate) fn cancel(
        &mut self,
        id: IdRef<'_>,
    ) -> (CancelOutcome, Option<Delivery>, Option<Running>) {
        let Some(slot) = self.lookup_ref(id) else {
            return (CancelOutcome::NotFound, None, None);
        };
        let e = &mut self.entries[slot as usize];
        match e.state {
            State::Queued => {
                if self.limits.is_some() {
                    self.unwake_limited(slot);
                }
                // Finalize first: the queue entry then reads as dead. The
                // registry entry, which holds the task's memory, goes at once.
                let d = self.finalize(slot, Some(Forced::Cancelled));
                let entries = &self.entries;
                self.queue.forget(|i| is_live(entries, i));
                if self.phase == Phase::Draining && self.drained() {
                    // The drain just ran out of work: wake a parked worker so
                    // that its claim returns `ExitAll`.
                    self.note_ready(1);
                }
                (CancelOutcome::Cancelled, Some(d), None)
            }
            State::Running => match *e.forced.get_or_insert(Forced::Cancelled) {
                Forced::Cancelled => (
                    CancelOutcome::Requested,
                    None,
                    Some((e.job.clone(), e.worker)),
                ),
                // A shutdown decided the outcome first (a running task is
                // never dropped or replaced: only queued ones are).
                Forced::Shutdown | Forced::Dropped | Forced::Replaced => {
                    (CancelOutcome::AlreadyFinished, None, None)
                }
            },
            State::Waiting => {
                let d = self.finalize(slot, Some(Forced::Cancelled));
                (CancelOutcome::Cancelled, Some(d), None)
            }
            State::Limited | State::OnKey => {
                let limited = e.state == State::Limited;
                let d = self.finalize(slot, Some(Forced::Cancelled));
                if limited {
                    self.forget_limited();
                }
                if self.phase == Phase::Draining && self.drained() {
                    self.note_ready(1);
                }
                (CancelOutcome::Cancelled, Some(d), None)
            }
            State::Retained => (CancelOutcome::AlreadyFinished, None, None),
        }
    }

    /// The task holding `name` at tick `now`, registering `req` (a
    /// `SubscribeRequest`) as its subscriber: a pending or running task, or
    /// a finished one within its dedup window. `None` if the id is free
    /// (see `crate::dedup`). `Err` names the task's `Result<T, E>` on a type
    /// mismatch.
    #[allow(clippy::type_complexity)]
    pub(crate) fn join(
        &self,
        name: &Arc<str>,
        now: i64,
        req: &mut dyn std::any::Any,
    ) -> Option<(Arc<dyn Job>, Result<(), &'static str>)> {
        let slot = self.slot_named(name)?;
        if !self.still_holds_id(slot, now) {
            return None;
        }
        let job = self.entries[slot as usize].job.clone();
        let joined = job.clone().subscribe(req);
        Some((job, joined))
    }

    /// The task `id`, if the cluster holds it (pending, running or cached).
    pub(crate) fn find(&self, id: &TaskId) -> Option<Arc<dyn Job>> {
        let slot = self.lookup(id)?;
        Some(self.entries[slot as usize].job.clone())
    }

    /// Registers a typed subscriber under the lock, so that it cannot miss
    /// the delivery of a task it found.
    /// `Some(Err(type))` names the task's `Result<T, E>` on a type mismatch.
    pub(crate) fn subscribe(
        &self,
        id: &TaskId,
        req: &mut dyn std::any::Any,
    ) -> Option<Result<(), &'static str>> {
        let slot = self.lookup(id)?;
        Some(self.entries[slot as usize].job.clone().subscribe(req))
    }

    /// Shuts down every queued task (all of them, or only scheduled first
    /// attempts after `cutoff` for a drain).
    /// A stop or cancel also shuts down every task waiting for its parents;
    /// a drain leaves them to run if their parents finish meanwhile.
    pub(crate) fn shut_down_queued(&mut self, drain_cutoff: Option<i64>) -> Vec<Delivery> {
        let mut out = Vec::new();
        // No task can come any more: watches for ids not yet submitted end.
        if let Some(w) = self.close_watchers() {
            self.drop_later(w);
        }
        if drain_cutoff.is_none() {
            self.shut_down_waiting(&mut out);
            // A drain runs tasks set aside by a limiter as it admits them.
            self.shut_down_limited(&mut out);
        }
        if self.keys.is_some() {
            match drain_cutoff {
                None => self.shut_down_on_keys(&mut out),
                // A drain runs what is due, so no key stays paused.
                Some(_) => self.resume_all_keys(),
            }
        }
        let items = match drain_cutoff {
            None => self.queue.drain(),
            Some(cutoff) => {
                let entries = &self.entries;
                self.queue.take_scheduled_after(
                    cutoff,
                    |i| is_live(entries, i),
                    // First attempts, and retries that never come.
                    |i| {
                        i.start == NEVER
                            || entries
                                .get(i.slot as usize)
                                .is_some_and(|e| e.attempts == 0)
                    },
                )
            }
        };
        for item in items {
            if is_live(&self.entries, &item) {
                out.push(self.finalize(item.slot, Some(Forced::Shutdown)));
            }
        }
        out
    }

    /// Marks every running task as shut down and returns them to signal.
    pub(crate) fn shut_down_running(&mut self) -> Vec<Running> {
        self.entries
            .iter_mut()
            .filter(|(_, e)| e.state == State::Running)
            .map(|(_, e)| {
                e.forced.get_or_insert(Forced::Shutdown);
                (e.job.clone(), e.worker)
            })
            .collect()
    }

    /// Drops cached outcomes whose retention has passed; returns them to
    /// release after unlocking ([`crate::cache::release`]).
    ///
    /// Inlined, with the sweep out of line: every `Shared::locked` section
    /// calls it (a cancel by id among them, W6), almost always with nothing
    /// cached, and a call for that cost about 29 instructions.
    #[inline]
    pub(crate) fn sweep(&mut self) -> Vec<Arc<dyn Job>> {
        if self.expiries.is_empty() {
            return Vec::new();
        }
        self.sweep_due()
    }

    #[inline(never)]
    fn sweep_due(&mut self) -> Vec<Arc<dyn Job>> {
        let mut out = Vec::new();
        let now = self.clock.now();
        while let Some((seq, slot)) = self.expiries.pop_due(now) {
            let retained =
                current(&self.entries, slot, seq).is_some_and(|e| e.state == State::Retained);
            if retained {
                self.cached -= 1;
                out.push(self.remove(slot));
            }
        }
        self.expiries.shrink();
        out
    }

    /// When the timekeeper must wake next, and records it.
    pub(crate) fn arm_timer(&mut self) -> Option<i64> {
        let entries = &self.entries;
        let next_start = self
            .queue
            .next_start(|i| is_live(entries, i))
            .filter(|&t| t != NEVER);
        let next_expiry = self.expiries.next();
        let next_limited = self.next_limited_wake();
        let next_key = self.keys_resume_at();
        let next = [
            next_start,
            next_expiry,
            self.flow.resume_at(),
            next_limited,
            next_key,
        ]
        .into_iter()
        .flatten()
        .min();
        self.timer_at = next.unwrap_or(i64::MAX);
        next
    }

    /// Moves due tasks into the ready levels and wakes idle workers for
    /// them; sends back to the queue the tasks a limiter set aside whose
    /// bucket admits again (`limit`).
    pub(crate) fn promote(&mut self) {
        if self.limits.is_some() {
            self.wake_limited(self.clock.now());
        }
        if !self.queue.has_scheduled() {
            return;
        }
        let entries = &self.entries;
        let n = self
            .queue
            .promote(self.clock.now(), |i| is_live(entries, i));
        self.note_ready(n);
    }

    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Nothing left for a drain to run: nothing queued, running or waiting.
    pub(crate) fn drained(&self) -> bool {
        self.queue.len() == 0
            && self.running == 0
            && self.waiting() == 0
            && self.keys_waiting() == 0
            && self.limited() == 0
    }

    pub(crate) fn stats(&self) -> ClusterStats {
        let (capacity, rejected, dropped) = self.capacity_stats();
        ClusterStats {
            queued: self.queue.len() + self.keys_waiting() + self.limited(),
            running: self.running,
            cached: self.cached,
            waiting: self.waiting(),
            held: self.entries.len(),
            watchers: self.watchers(),
            paused: self.flow.paused(),
            capacity,
            rejected: rejected + self.keys_rejected(),
            dropped,
            waiting_on_limiter: self.limited(),
            waiting_on_key: self.keys_waiting(),
            replaced: self.keys.as_ref().map_or(0, |k| k.replaced()),
        }
    }
}

impl Drop for Engine {
    /// Last resort (the runtime died under the workers): nothing pending may
    /// leave a handle waiting forever.
    fn drop(&mut self) {
        for (_, e) in self.entries.iter() {
            if e.state != State::Retained {
                e.job.complete(Some(Forced::Shutdown), false);
            }
        }
        self.abandon_parked();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_entry_is_three_words() {
        // Pending memory per task (W5, `bench/README.md#w5-pending-memory`): the slab stores its
        // vacancy tag in `state`'s spare values, so a slot is an `Entry`.
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<Item>(), 24);
    }
}
