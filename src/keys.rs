//! Concurrency limits and pauses per key: tenants, hosts, upstream APIs
//! that share the cluster's workers ([`TaskBuilder::key`],
//! [`Cluster::set_key_limit`], [`Cluster::pause_key`]).
//!
//! A task may carry a key (any string). A key's **limit** caps how much of
//! it is claimed at once: each claimed task of the key takes its
//! [cost](TaskBuilder::key_cost) (1 by default) from the limit, from the
//! moment a worker claims it until its claim settles. So:
//! - a running attempt counts, and so does an immediate retry waiting on
//!   its worker ([`RetryMode::Immediate`](crate::RetryMode::Immediate)), and
//!   an attempt parked in a [`TaskContext::wait_for`](crate::TaskContext::wait_for);
//! - a retry requeued with a delay ([`RetryMode::Requeue`](crate::RetryMode::Requeue),
//!   the default) does not count while it sits in the queue; it is checked
//!   again when it is due.
//!
//! A due task whose key is full or paused **waits on its key**: it is
//! taken out of the queue, holds no worker and is never polled, and the
//! workers go on with tasks of other keys (or without a key). When room
//! frees, the best waiting tasks of the key go back into the queue with
//! their original priority, start time and submission order, so the
//! cluster's order stays exact: within a key, tasks start in the order
//! they would have without the limit (a task of the key never overtakes a
//! better one waiting on it, even if it is cheaper), and across keys, the
//! next task in the global order that its key allows runs.
//!
//! Limits: a default for every key ([`ClusterBuilder::key_limit`], none if
//! unset) and per-key overrides at any time ([`Cluster::set_key_limit`],
//! [`Cluster::clear_key_limit`]). Raising a limit starts waiting tasks at
//! once; lowering it stops nothing that runs. A task costlier than its
//! key's limit is refused at submit; if the limit is lowered below the
//! cost of a task already submitted, that task runs alone (when nothing
//! else of its key runs) rather than never.
//!
//! Pauses: [`Cluster::pause_key`] (and [`pause_key_for`](Cluster::pause_key_for))
//! let the key's running attempts finish, and start nothing new of it until
//! [`Cluster::resume_key`]: as with [`Cluster::pause`], a retry in
//! [`RetryMode::Immediate`](crate::RetryMode::Immediate) waits out its delay
//! on its worker and then holds its next attempt (keeping its worker and
//! its share of the limit) until the resume. Other keys are not affected.
//!
//! When a key is full at submit, the task's [`KeyFull`] policy decides: queue
//! it (the default), refuse it ([`SubmitError::KeyFull`]), or keep only the
//! newest ([`KeyFull::Replace`]: older unstarted tasks of the key resolve as
//! [`TaskError::Replaced`](crate::TaskError::Replaced)).
//!
//! Memory: the cluster holds state for a key only while the key has
//! unfinished tasks; it goes with the last one. Limits and pauses set by
//! hand stay until cleared ([`Cluster::clear_key_limit`],
//! [`Cluster::resume_key`]). A cluster that never sees a key pays nothing
//! for any of this: one test of an empty option on the claim, submit and
//! settle paths.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use corral::Cluster;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let cluster = Cluster::builder().workers(4).key_limit(2).build().unwrap();
//! let running = Arc::new(AtomicUsize::new(0));
//! let most = Arc::new(AtomicUsize::new(0));
//! let handles: Vec<_> = (0..6)
//!     .map(|_| {
//!         let (running, most) = (running.clone(), most.clone());
//!         cluster
//!             .task(move |_| {
//!                 let (running, most) = (running.clone(), most.clone());
//!                 async move {
//!                     let now = running.fetch_add(1, Ordering::SeqCst) + 1;
//!                     most.fetch_max(now, Ordering::SeqCst);
//!                     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//!                     running.fetch_sub(1, Ordering::SeqCst);
//!                     Ok::<_, String>(())
//!                 }
//!             })
//!             .key("api.example.com")
//!             .submit()
//!             .unwrap()
//!     })
//!     .collect();
//! for h in handles {
//!     h.await.unwrap();
//! }
//! assert_eq!(most.load(Ordering::SeqCst), 2); // never more than the limit
//! assert!(cluster.key_stats("api.example.com").is_none()); // nothing left
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::body::Body;
use crate::builder::TaskBuilder;
use crate::clock::{duration_ticks, NEVER};
use crate::cluster::{Cluster, ClusterBuilder};
use crate::error::SubmitError;
use crate::job::Job;
use crate::shared::Shared;

/// Holds an immediate retry's next attempt while its task's key is paused
/// (as `FlowShared::until_resumed` does for the cluster's pause). Its task
/// keeps its worker and its share of the key's limit meanwhile.
pub(crate) async fn until_key_resumed(shared: &Shared, job: &dyn Job) {
    let Some((key, _)) = job.key() else {
        return;
    };
    loop {
        let notified = shared.flow.resumed().notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check: a resume in between is not lost.
        notified.as_mut().enable();
        if !shared.locked(|core| core.key_paused(key)) {
            return;
        }
        notified.await;
    }
}

/// What a submit does when its key is full: see [`TaskBuilder::on_key_full`].
///
/// A key is full for a new task when the key's unfinished tasks (claimed,
/// queued, or waiting on the key, retries included) together with the new
/// one would cost more than the key's limit.
///
/// # Default
/// [`KeyFull::Queue`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyFull {
    /// Accept the task; it waits on its key until there is room.
    #[default]
    Queue,
    /// Refuse the submit with [`SubmitError::KeyFull`]; nothing is queued.
    /// (Counted in [`ClusterStats::rejected`](crate::ClusterStats::rejected).)
    Reject,
    /// Keep only the newest: accept the task, and resolve the key's older
    /// tasks that have not started, oldest first, with
    /// [`TaskError::Replaced`](crate::TaskError::Replaced) (each exactly
    /// once) until the new one fits beside the rest. Only tasks submitted
    /// with `Replace` themselves are replaced, and never one that has
    /// started (a running task, or one waiting for a retry). If the running
    /// tasks alone take the limit, the new task waits, alone, for room.
    /// (Counted in [`ClusterStats::replaced`](crate::ClusterStats::replaced).)
    /// A bounded queue's [capacity](crate::ClusterBuilder::capacity) is
    /// checked first, with the tasks it would replace still counted: at a
    /// full queue the submit is refused, waits or drops as its
    /// [`Overflow`](crate::Overflow) says, like any other.
    ///
    /// ```
    /// use corral::{Cluster, KeyFull, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(1).key_limit(1).paused().build().unwrap();
    /// let refresh = |n| {
    ///     cluster
    ///         .task(move |_| async move { Ok::<_, String>(n) })
    ///         .key("refresh-cache")
    ///         .on_key_full(KeyFull::Replace)
    ///         .submit()
    ///         .unwrap()
    /// };
    /// let (first, second, third) = (refresh(1), refresh(2), refresh(3));
    /// cluster.run().unwrap();
    /// assert_eq!(first.await, Err(TaskError::Replaced));
    /// assert_eq!(second.await, Err(TaskError::Replaced));
    /// assert_eq!(third.await, Ok(3));
    /// # }
    /// ```
    Replace,
}

/// A task's key options, in its boxed extras.
#[derive(Debug, Clone)]
pub(crate) struct KeyOptions {
    /// `None` until [`TaskBuilder::key`] is called (a cost or policy may be
    /// set first); refused at submit if still unset.
    pub(crate) key: Option<Arc<str>>,
    pub(crate) cost: u32,
    pub(crate) on_full: KeyFull,
}

impl KeyOptions {
    pub(crate) fn unset() -> Self {
        KeyOptions {
            key: None,
            cost: 1,
            on_full: KeyFull::Queue,
        }
    }

    /// The checks that do not depend on the cluster.
    pub(crate) fn validate(&self) -> Result<(), SubmitError> {
        if self.key.is_none() {
            return Err(SubmitError::InvalidOption {
                option: "key_cost",
                reason: "key_cost and on_key_full need a key (TaskBuilder::key)",
            });
        }
        if self.cost == 0 {
            return Err(SubmitError::InvalidOption {
                option: "key_cost",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}

/// A key's state: see [`Cluster::key_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStats {
    /// Tasks of the key claimed by a worker (attempt running, immediate
    /// retry waiting, or attempt parked).
    pub running: usize,
    /// The cost those take of the limit (equal to `running` when every
    /// task costs 1).
    pub used: u32,
    /// Tasks of the key in the queue (not yet due, due but not yet
    /// claimed, or a retry waiting for its delay).
    pub queued: usize,
    /// Tasks of the key waiting on it: due, but the key is full or paused.
    pub waiting: usize,
    /// The key's limit (`None`: no limit).
    pub limit: Option<u32>,
    /// The key is paused ([`Cluster::pause_key`]).
    pub paused: bool,
}

/// Why a key setting was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A limit must be at least 1 (to stop a key, [pause](Cluster::pause_key) it).
    #[error("a key limit must be at least 1")]
    ZeroLimit,
}

impl<B, T, E> TaskBuilder<'_, B, T, E>
where
    B: Body<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    /// Gives the task a key: its key's limit ([`ClusterBuilder::key_limit`],
    /// [`Cluster::set_key_limit`]) and pause ([`Cluster::pause_key`]) apply
    /// to it. See the [module docs](crate::keys) for what counts against the limit.
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(2).unwrap();
    /// cluster.set_key_limit("tenant-7", 1).unwrap();
    /// let h = cluster.task(|_| async { Ok::<_, String>(7) }).key("tenant-7").submit().unwrap();
    /// assert_eq!(h.await, Ok(7));
    /// # }
    /// ```
    pub fn key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.key_slot().key = Some(key.into());
        self
    }

    /// How much of its key's limit the task takes while claimed (1 by
    /// default). A cost of 0, or above the key's limit at submit, is
    /// refused ([`SubmitError::InvalidOption`]). Needs a [`key`](Self::key).
    ///
    /// ```
    /// use corral::{Cluster, SubmitError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(2).key_limit(4).build().unwrap();
    /// let big = cluster.task(|_| async { Ok::<_, String>(()) }).key("gpu").key_cost(3).submit();
    /// assert!(big.is_ok());
    /// let too_big = cluster.task(|_| async { Ok::<_, String>(()) }).key("gpu").key_cost(5).submit();
    /// assert!(matches!(too_big, Err(SubmitError::InvalidOption { option: "key_cost", .. })));
    /// # }
    /// ```
    pub fn key_cost(mut self, cost: u32) -> Self {
        self.key_slot().cost = cost;
        self
    }

    /// What the submit does when the task's key is full (see [`KeyFull`]).
    /// Needs a [`key`](Self::key).
    ///
    /// ```
    /// use corral::{Cluster, KeyFull, SubmitError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    /// let submit = || {
    ///     cluster
    ///         .task(|_| async { Ok::<_, String>(()) })
    ///         .key("report")
    ///         .on_key_full(KeyFull::Reject)
    ///         .submit()
    /// };
    /// let first = submit().unwrap();
    /// assert!(matches!(submit(), Err(SubmitError::KeyFull { limit: 1, .. })));
    /// first.await.unwrap();
    /// assert!(submit().is_ok()); // room again
    /// # }
    /// ```
    pub fn on_key_full(mut self, policy: KeyFull) -> Self {
        self.key_slot().on_full = policy;
        self
    }
}

impl ClusterBuilder {
    /// The limit of every key without its own ([`Cluster::set_key_limit`]):
    /// at most this much of one key's tasks (by [cost](TaskBuilder::key_cost))
    /// is claimed at once. Unset: keys have no limit unless given one.
    /// 0 is refused by `build` ([`BuildError::ZeroKeyLimit`](crate::BuildError::ZeroKeyLimit)).
    pub fn key_limit(mut self, limit: u32) -> Self {
        self.key_limit = Some(limit);
        self
    }
}

/// Per-key limits, pauses and state (see [`crate::keys`]).
impl Cluster {
    /// Sets the limit of `key`, replacing the cluster's default for it,
    /// while the cluster runs (or before). Raising it starts waiting tasks
    /// of the key at once; lowering it stops nothing (claimed tasks finish,
    /// and no new one starts until the key is under its new limit). The
    /// setting stays until [`clear_key_limit`](Self::clear_key_limit),
    /// whether or not the key has tasks.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(4).unwrap();
    /// cluster.set_key_limit("db", 1).unwrap();
    /// let slow = || cluster.task(|_| async {
    ///     tokio::time::sleep(Duration::from_secs(1)).await;
    ///     Ok::<_, String>(())
    /// });
    /// let a = slow().key("db").submit().unwrap();
    /// let b = slow().key("db").submit().unwrap();
    /// tokio::time::sleep(Duration::from_millis(10)).await;
    /// assert_eq!(cluster.key_stats("db").unwrap().waiting, 1);
    /// cluster.set_key_limit("db", 2).unwrap(); // b starts now
    /// tokio::time::sleep(Duration::from_millis(10)).await;
    /// assert_eq!(cluster.key_stats("db").unwrap().running, 2);
    /// # let _ = (a.await, b.await);
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`KeyError::ZeroLimit`] for 0 (nothing changes).
    pub fn set_key_limit(&self, key: impl Into<Arc<str>>, limit: u32) -> Result<(), KeyError> {
        if limit == 0 {
            return Err(KeyError::ZeroLimit);
        }
        let key = key.into();
        let shared = self.shared();
        shared.locked(|core| core.set_key_limit(&key, Some(limit)));
        Ok(())
    }

    /// Removes the limit set by [`set_key_limit`](Self::set_key_limit):
    /// the key is back to the cluster's default ([`ClusterBuilder::key_limit`]).
    /// Returns whether it had one.
    pub fn clear_key_limit(&self, key: &str) -> bool {
        let key: Arc<str> = Arc::from(key);
        let shared = self.shared();
        shared.locked(|core| {
            let had = core.key_limit_override(&key).is_some();
            if had {
                core.set_key_limit(&key, None);
            }
            had
        })
    }

    /// The limit that applies to `key` now (its own, or the default);
    /// `None` if it has none.
    pub fn key_limit(&self, key: &str) -> Option<u32> {
        let shared = self.shared();
        shared.locked(|core| core.key_limit_of(key))
    }

    /// Pauses `key`: its running attempts finish, nothing new of it starts
    /// until [`resume_key`](Self::resume_key) (an immediate retry holds its
    /// next attempt, on its worker, as [`pause`](Self::pause) makes it do),
    /// and tasks of other keys are not held. Its tasks still submit and
    /// queue; due ones wait on the key, on no worker.
    /// [`cancel_task`](Self::cancel_task), [`stop`](Self::stop) and
    /// [`cancel`](Self::cancel) work as always, and a [`drain`](Self::drain)
    /// resumes every key (it must run what is due).
    ///
    /// Returns whether the key is paused now: `false` once a drain, stop
    /// or cancel has begun. Pausing a paused key makes a timed pause last
    /// until `resume_key`.
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// assert!(cluster.pause_key("billing"));
    /// let held = cluster.task(|_| async { Ok::<_, String>(1) }).key("billing").submit().unwrap();
    /// let other = cluster.task(|_| async { Ok::<_, String>(2) }).key("search").submit().unwrap();
    /// assert_eq!(other.await, Ok(2)); // not blocked by the paused key
    /// assert_eq!(cluster.key_stats("billing").unwrap().waiting, 1);
    /// assert!(cluster.resume_key("billing"));
    /// assert_eq!(held.await, Ok(1));
    /// # }
    /// ```
    pub fn pause_key(&self, key: impl Into<Arc<str>>) -> bool {
        let key = key.into();
        let shared = self.shared();
        shared.locked(|core| core.pause_key(&key, NEVER))
    }

    /// Pauses `key` as [`pause_key`](Self::pause_key) does, for `duration`
    /// on the cluster's clock, then resumes it. A later `pause_key_for`
    /// replaces the deadline, a later `pause_key` makes it last until
    /// `resume_key`, and `resume_key` ends it at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// cluster.pause_key_for("mail", Duration::from_secs(30));
    /// let start = tokio::time::Instant::now();
    /// cluster.task(|_| async { Ok::<_, String>(()) }).key("mail").submit().unwrap().await.unwrap();
    /// assert!(start.elapsed() >= Duration::from_secs(30));
    /// assert!(!cluster.is_key_paused("mail"));
    /// # }
    /// ```
    pub fn pause_key_for(&self, key: impl Into<Arc<str>>, duration: Duration) -> bool {
        let key = key.into();
        let shared = self.shared();
        let until = shared.clock.now().saturating_add(duration_ticks(duration));
        shared.locked(|core| core.pause_key(&key, until))
    }

    /// Ends a pause of `key`: its waiting tasks start at once, as far as
    /// its limit allows, in their order. Returns whether it was paused.
    pub fn resume_key(&self, key: &str) -> bool {
        let key: Arc<str> = Arc::from(key);
        let shared = self.shared();
        let resumed = shared.locked(|core| core.resume_key(&key));
        if resumed {
            // Immediate retries held by the pause go on.
            shared.flow.wake_resumed();
        }
        resumed
    }

    /// Whether `key` is paused ([`pause_key`](Self::pause_key)).
    pub fn is_key_paused(&self, key: &str) -> bool {
        let shared = self.shared();
        shared.locked(|core| core.key_paused(key))
    }

    /// The state of `key`: its running, queued and waiting tasks, its limit
    /// and whether it is paused. `None` if it has no unfinished task (the
    /// cluster then holds nothing for it, see the [module docs](crate::keys)).
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(1).key_limit(3).paused().build().unwrap();
    /// let h = cluster.task(|_| async { Ok::<_, String>(()) }).key("k").submit().unwrap();
    /// let stats = cluster.key_stats("k").unwrap();
    /// assert_eq!((stats.queued, stats.running, stats.limit), (1, 0, Some(3)));
    /// cluster.run().unwrap();
    /// h.await.unwrap();
    /// assert_eq!(cluster.key_stats("k"), None);
    /// # }
    /// ```
    pub fn key_stats(&self, key: &str) -> Option<KeyStats> {
        let shared = self.shared();
        shared.locked(|core| core.key_stats(key))
    }

    /// How many keys have unfinished tasks now (the keys the cluster holds
    /// state for).
    pub fn active_keys(&self) -> usize {
        let shared = self.shared();
        shared.locked(|core| core.active_keys())
    }
}
