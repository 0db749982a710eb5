//! The engine's side of per-key concurrency limits and pauses
//! (`crate::keys` is the user's side).
//!
//! A keyed task is checked where a worker claims it, after the pop and
//! under the lock the claim already holds ([`Engine::key_blocked`]): if its
//! key is paused, has no room for its cost, or holds a better task waiting,
//! the item is moved to its key's waiting heap (the task is then
//! `State::OnKey`) and the claim pops again. The task holds no worker and
//! is never polled meanwhile. When room may have freed (a settle, any task
//! of the key leaving, a divert, a claim a rate limiter set aside, a raised
//! limit, a resume), the best waiting
//! items go back into the queue with their original `(seq, start,
//! priority)` while they fit: the global order stays exact. The claim
//! checks again, so a release is only ever a hint; releasing at every such
//! event is what guarantees that a key with room and waiters never stays
//! idle (a task released and then cancelled before its claim frees no slot
//! a settle would announce).
//!
//! The check and the count are split on purpose: `key_blocked` checks for
//! room and diverts but takes nothing, `key_took` counts the task once it
//! is marked running, so other claim-time gates can sit between the two.
//!
//! Costs nothing to a cluster that never saw a key: `Engine::keys` is
//! `None` until the first keyed submit (or a key setting), and the hot
//! paths only test that.
//!
//! Invariants:
//! 1. A key's `used` is the cost of its tasks that are `Running` (claimed:
//!    an attempt running, an immediate retry waiting, or an attempt parked),
//!    counted by [`Engine::key_took`] at claim and given back by
//!    `key_freed` when the claim settles (requeue or final). A requeued
//!    retry sitting in the queue does not count.
//! 2. `pending` counts the key's tasks that are `Queued` (main queue) or
//!    `OnKey` (its waiting heap): added when pushed into the queue
//!    (`key_queued`), taken when claimed or finalized. An item moved between
//!    the queue and the waiting heap stays pending.
//! 3. A key's `KeyTasks` exists exactly while `running + pending > 0`:
//!    removed by the finalize of its last task.
//!    Limits and pauses set by the user live apart (`limits`, `paused`)
//!    and are kept until the user clears them.
//! 4. Waiting heap entries of tasks finalized meanwhile (cancel, shutdown)
//!    stay until they reach the head or are compacted (`dead`), as in the
//!    queue; `live` counts the others, and `Keys::waiting` their sum.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use super::{current, Delivery, Engine, Phase, State};
use crate::clock::{is_due, NEVER};
use crate::error::SubmitError;
use crate::job::Forced;
use crate::keys::{KeyFull, KeyStats};
use crate::queue::{Item, Slot};

/// Dead waiting entries of a key are compacted away past this many, once
/// they outnumber the live ones.
const COMPACT_MIN_DEAD: usize = 64;

/// A waiting item, ordered best first in a max-heap: higher priority, then
/// earlier start, then lower `seq` (the queue's order).
#[derive(Debug, Clone, Copy)]
struct Waiter(Item);

impl Waiter {
    fn rank(&self) -> (i32, std::cmp::Reverse<(i64, u64)>) {
        (
            self.0.priority,
            std::cmp::Reverse((self.0.start, self.0.seq)),
        )
    }
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// Per-key settings and the state of the keys that have tasks.
pub(super) struct Keys {
    tasks: HashMap<Arc<str>, KeyTasks>,
    /// The limit of a key without an override (`u32::MAX`: none).
    default_limit: u32,
    /// Limits set with `Cluster::set_key_limit`.
    limits: HashMap<Arc<str>, u32>,
    /// Paused keys, with the tick their pause ends ([`NEVER`]: untimed).
    paused: HashMap<Arc<str>, i64>,
    /// Live waiting items, over all keys.
    waiting: usize,
    /// Submits refused by [`KeyFull::Reject`].
    rejected: u64,
    /// Tasks replaced under [`KeyFull::Replace`].
    replaced: u64,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            tasks: HashMap::new(),
            default_limit: u32::MAX,
            limits: HashMap::new(),
            paused: HashMap::new(),
            waiting: 0,
            rejected: 0,
            replaced: 0,
        }
    }
}

impl Keys {
    fn limit_of(&self, key: &str) -> u32 {
        self.limits.get(key).copied().unwrap_or(self.default_limit)
    }

    pub(super) fn replaced(&self) -> u64 {
        self.replaced
    }
}

/// The tasks of one key (invariants 1 to 4).
struct KeyTasks {
    /// Cost of the claimed tasks.
    used: u32,
    /// Claimed tasks.
    running: u32,
    /// Tasks queued or waiting here.
    pending: u32,
    /// Their cost.
    pending_cost: u64,
    /// Items waiting for room, best first (dead ones included).
    waiting: BinaryHeap<Waiter>,
    live: usize,
    dead: usize,
    /// Copies of the key's settings, kept current by the setters.
    limit: u32,
    paused: bool,
    /// Tasks submitted with [`KeyFull::Replace`], oldest first, as
    /// `(slot, seq)`: those that started or ended meanwhile are skipped,
    /// and pruned when they outnumber the pending tasks.
    fresh: VecDeque<(Slot, u64)>,
}

impl KeyTasks {
    /// Whether a task of `cost` fits now. A task costlier than the limit
    /// (the limit was lowered after it was submitted) runs alone.
    fn fits(&self, cost: u32) -> bool {
        self.used == 0 || self.used.saturating_add(cost) <= self.limit
    }
}

fn is_waiting(entries: &slab::Slab<super::Entry>, item: &Item) -> bool {
    current(entries, item.slot, item.seq).is_some_and(|e| e.state == State::OnKey)
}

impl Engine {
    /// The key state, made on first use.
    pub(super) fn keys_on(&mut self) -> &mut Keys {
        self.keys.get_or_insert_with(Box::default)
    }

    /// Tasks waiting on a full or paused key.
    pub(crate) fn keys_waiting(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.waiting)
    }

    /// Submits refused by [`KeyFull::Reject`].
    pub(crate) fn keys_rejected(&self) -> u64 {
        self.keys.as_ref().map_or(0, |k| k.rejected)
    }

    /// The key and cost of the task at `slot`, if it has a key.
    fn key_of(&self, slot: Slot) -> Option<(Arc<str>, u32)> {
        let e = self.entries.get(slot as usize)?;
        e.job.key().map(|(k, c)| (k.clone(), c))
    }

    /// The checks of a keyed submit, before it is admitted: the cost must
    /// fit the key's limit, and [`KeyFull::Reject`] refuses a task that
    /// would not fit beside the key's unfinished tasks.
    pub(crate) fn key_admit(
        &mut self,
        key: &Arc<str>,
        cost: u32,
        policy: KeyFull,
    ) -> Result<(), SubmitError> {
        let keys = self.keys_on();
        let limit = keys.limit_of(key);
        if cost > limit {
            return Err(SubmitError::InvalidOption {
                option: "key_cost",
                reason: "greater than the key's limit",
            });
        }
        if policy == KeyFull::Reject {
            let taken = keys
                .tasks
                .get(key)
                .map_or(0, |t| u64::from(t.used) + t.pending_cost);
            if taken + u64::from(cost) > u64::from(limit) {
                keys.rejected += 1;
                return Err(SubmitError::KeyFull {
                    key: key.clone(),
                    limit,
                });
            }
        }
        Ok(())
    }

    /// After a keyed submit is admitted as `(seq, slot)`: under
    /// [`KeyFull::Replace`], replaces the key's older unstarted tasks while
    /// the key is over its limit (see [`KeyFull::Replace`]); their outcomes
    /// go to the outbox.
    pub(crate) fn key_admitted(
        &mut self,
        key: &Arc<str>,
        policy: KeyFull,
        (seq, slot): (u64, Slot),
    ) {
        if policy != KeyFull::Replace {
            return;
        }
        loop {
            let keys = self.keys.as_deref_mut().expect("made by key_admit");
            let Some(t) = keys.tasks.get_mut(key) else {
                return;
            };
            let over = u64::from(t.used) + t.pending_cost > u64::from(t.limit);
            let old = match t.fresh.front() {
                Some(&(s, q)) if over && q != seq => {
                    t.fresh.pop_front();
                    (s, q)
                }
                _ => break,
            };
            let state = current(&self.entries, old.0, old.1)
                .filter(|e| e.attempts == 0)
                .map(|e| e.state);
            match state {
                Some(State::Queued) => {
                    // As a cancel: a limiter's bucket that woke it gets its
                    // turn back.
                    if self.limits.is_some() {
                        self.unwake_limited(old.0);
                    }
                    let d = self.finalize(old.0, Some(Forced::Replaced));
                    let entries = &self.entries;
                    self.queue.forget(|i| super::is_live(entries, i));
                    self.send_later(d);
                }
                Some(State::OnKey) => {
                    let d = self.finalize(old.0, Some(Forced::Replaced));
                    self.send_later(d);
                }
                // Set aside by a limiter: unstarted too (review fix: it was
                // skipped, and dropped from `fresh` for good). As a cancel
                // of a set-aside task: its waiter entry goes dead.
                Some(State::Limited) => {
                    let d = self.finalize(old.0, Some(Forced::Replaced));
                    self.forget_limited();
                    self.send_later(d);
                }
                // Started or ended meanwhile: not replaceable.
                _ => continue,
            }
            self.keys_on().replaced += 1;
        }
        let entries = &self.entries;
        let keys = self.keys.as_deref_mut().expect("made by key_admit");
        if let Some(t) = keys.tasks.get_mut(key) {
            if t.fresh.len() > 2 * t.pending as usize + 8 {
                t.fresh.retain(|&(s, q)| {
                    current(entries, s, q).is_some_and(|e| {
                        e.attempts == 0
                            && matches!(e.state, State::Queued | State::OnKey | State::Limited)
                    })
                });
            }
            t.fresh.push_back((slot, seq));
        }
    }

    /// A keyed task was pushed into the queue (submit, requeue, a released
    /// dependent): it is pending on its key (invariant 2).
    pub(super) fn key_queued(&mut self, slot: Slot) {
        let Some((key, cost)) = task_key(&self.entries, slot) else {
            return;
        };
        let keys = self.keys.as_deref_mut().expect("checked by the caller");
        let t = match keys.tasks.get_mut(key) {
            Some(t) => t,
            None => {
                let limit = keys.limit_of(key);
                let paused = keys.paused.contains_key(key);
                keys.tasks.entry(key.clone()).or_insert(KeyTasks {
                    used: 0,
                    running: 0,
                    pending: 0,
                    pending_cost: 0,
                    waiting: BinaryHeap::new(),
                    live: 0,
                    dead: 0,
                    limit,
                    paused,
                    fresh: VecDeque::new(),
                })
            }
        };
        t.pending += 1;
        t.pending_cost += u64::from(cost);
    }

    /// Called by `claim` for each popped item while keys exist: if the
    /// item's key cannot start it now (paused, no room for its cost, or a
    /// better task of the key waits), moves it to the key's waiting heap
    /// and returns `true` (the claim pops again). Takes no slot: see
    /// [`key_took`](Self::key_took).
    pub(crate) fn key_blocked(&mut self, item: &Item) -> bool {
        // Borrowed, not cloned, on the path that lets the task run.
        let Some((key, cost)) = task_key(&self.entries, item.slot) else {
            return false;
        };
        let keys = self.keys.as_deref_mut().expect("checked by the caller");
        let Some(t) = keys.tasks.get_mut(key) else {
            debug_assert!(false, "a queued keyed task has key state");
            return false;
        };
        let entries = &self.entries;
        if t.dead > 0 {
            drop_dead_heads(t, |i| is_waiting(entries, i));
        }
        let behind = t.waiting.peek().is_some_and(|w| *w > Waiter(*item));
        if !t.paused && !behind && t.fits(cost) {
            return false;
        }
        t.waiting.push(Waiter(*item));
        t.live += 1;
        keys.waiting += 1;
        let paused = t.paused;
        let key = key.clone();
        self.entries[item.slot as usize].state = State::OnKey;
        if !paused {
            // A better waiter may fit although nothing of the key runs
            // (its release went to a task cancelled before its claim):
            // whatever fits goes back now, so nothing waits for a settle
            // that will not come.
            self.key_release(&key);
        }
        true
    }

    /// The task at `slot` was claimed: its cost counts against its key
    /// until it settles (invariant 1).
    pub(crate) fn key_took(&mut self, slot: Slot) {
        let Some((key, cost)) = task_key(&self.entries, slot) else {
            return;
        };
        let keys = self.keys.as_deref_mut().expect("checked by the caller");
        if let Some(t) = keys.tasks.get_mut(key) {
            t.pending -= 1;
            t.pending_cost -= u64::from(cost);
            t.used = t.used.saturating_add(cost);
            t.running += 1;
        }
    }

    /// The popped task at `slot` passed its key's check and was then set
    /// aside by a limiter (or put back by it): it takes no slot, so the
    /// room it was released for is free for the key's next waiters.
    pub(crate) fn key_set_aside(&mut self, slot: Slot) {
        if let Some((key, _)) = self.key_of(slot) {
            self.key_release(&key);
        }
    }

    /// The claimed task at `slot` settles with a requeue: its slot frees.
    pub(crate) fn key_requeued(&mut self, slot: Slot) {
        if let Some((key, cost)) = self.key_of(slot) {
            self.key_freed(&key, cost);
        }
    }

    fn key_freed(&mut self, key: &Arc<str>, cost: u32) {
        let keys = self.keys.as_deref_mut().expect("checked by the caller");
        if let Some(t) = keys.tasks.get_mut(key) {
            t.used = t.used.saturating_sub(cost);
            t.running -= 1;
            self.key_release(key);
        }
    }

    /// Called by `finalize` while keys exist, before the entry goes: the
    /// task leaves its key (invariants 1 to 3).
    pub(super) fn key_left(&mut self, slot: Slot) {
        let Some(e) = self.entries.get(slot as usize) else {
            return;
        };
        let state = e.state;
        let Some((key, cost)) = e.job.key() else {
            return;
        };
        let keys = self.keys.as_deref_mut().expect("checked by the caller");
        let Some(t) = keys.tasks.get_mut(key) else {
            return;
        };
        match state {
            State::Running => {
                t.used = t.used.saturating_sub(cost);
                t.running -= 1;
            }
            // A task set aside by a limiter is pending on its key too.
            State::Queued | State::Limited | State::OnKey => {
                t.pending -= 1;
                t.pending_cost -= u64::from(cost);
                if state == State::OnKey {
                    t.live -= 1;
                    t.dead += 1;
                    keys.waiting -= 1;
                }
            }
            // Not yet queued: not counted.
            State::Waiting | State::Retained => return,
        }
        if t.running == 0 && t.pending == 0 {
            // Invariant 3 (what the heap still holds is dead).
            keys.tasks.remove(key);
            return;
        }
        if state != State::Running && t.dead >= COMPACT_MIN_DEAD && t.dead > t.live {
            let entries = &self.entries;
            let items = std::mem::take(&mut t.waiting).into_vec();
            t.waiting = items
                .into_iter()
                .filter(|w| w.0.slot != slot && is_waiting(entries, &w.0))
                .collect();
            t.dead = 0;
        }
        if t.live == 0 {
            return;
        }
        // Room may have freed (a claimed task settled, or a task released
        // to the queue left before its claim), or the best waiter left.
        // This task's own heap entry still reads as waiting: skipped.
        let key = key.clone();
        self.key_release_but(&key, Some(slot));
    }

    /// Moves the best waiting items of `key` back into the queue while
    /// they fit (not while the key is paused). A claim checks the room
    /// again, so releasing one too many only sends it back to wait.
    fn key_release(&mut self, key: &Arc<str>) {
        self.key_release_but(key, None);
    }

    /// [`key_release`](Self::key_release), taking the entry at `leaving`
    /// (being finalized) as dead.
    fn key_release_but(&mut self, key: &Arc<str>, leaving: Option<Slot>) {
        if matches!(self.phase, Phase::Stopping | Phase::Cancelled) {
            // Nothing starts any more; the shutdown resolves the waiters.
            return;
        }
        let Some(keys) = self.keys.as_deref_mut() else {
            return;
        };
        let Some(t) = keys.tasks.get_mut(key) else {
            return;
        };
        if t.paused || t.live == 0 {
            return;
        }
        let entries = &mut self.entries;
        let mut room = t.used;
        loop {
            drop_dead_heads(t, |i| Some(i.slot) != leaving && is_waiting(entries, i));
            let Some(&Waiter(item)) = t.waiting.peek() else {
                break;
            };
            let Some(cost) = entries[item.slot as usize].job.key().map(|(_, c)| c) else {
                break;
            };
            if !(room == 0 || room.saturating_add(cost) <= t.limit) {
                break;
            }
            room = room.saturating_add(cost);
            t.waiting.pop();
            t.live -= 1;
            keys.waiting -= 1;
            entries[item.slot as usize].state = State::Queued;
            // It was due when it was diverted: back among the due tasks.
            self.queue.push(item, item.start);
            if is_due(item.start, item.start) {
                self.idle.pick(1);
            }
        }
    }

    /// Sets the limit of `key` (`None`: back to the cluster's default);
    /// releases waiting tasks that now fit.
    pub(crate) fn set_key_limit(&mut self, key: &Arc<str>, limit: Option<u32>) {
        let keys = self.keys_on();
        match limit {
            Some(n) => {
                keys.limits.insert(key.clone(), n);
            }
            None => {
                keys.limits.remove(key);
            }
        }
        let limit = keys.limit_of(key);
        if let Some(t) = keys.tasks.get_mut(key) {
            t.limit = limit;
            self.key_release(key);
        }
    }

    /// Sets the limit of keys without an override.
    pub(crate) fn set_default_key_limit(&mut self, limit: u32) {
        let keys = self.keys_on();
        keys.default_limit = limit;
        let changed: Vec<Arc<str>> = keys
            .tasks
            .keys()
            .filter(|k| !keys.limits.contains_key(*k))
            .cloned()
            .collect();
        for key in changed {
            if let Some(t) = self.keys_on().tasks.get_mut(&key) {
                t.limit = limit;
            }
            self.key_release(&key);
        }
    }

    /// Pauses `key` until `until` ([`NEVER`]: until resumed). Refused (no
    /// change, `false`) once a drain, stop or cancel has begun.
    pub(crate) fn pause_key(&mut self, key: &Arc<str>, until: i64) -> bool {
        if !matches!(self.phase, Phase::Idle | Phase::Running) {
            return false;
        }
        let keys = self.keys_on();
        keys.paused.insert(key.clone(), until);
        if let Some(t) = keys.tasks.get_mut(key) {
            t.paused = true;
        }
        if until != NEVER {
            self.note_timer(until);
        }
        true
    }

    /// Resumes `key`; returns whether it was paused.
    pub(crate) fn resume_key(&mut self, key: &Arc<str>) -> bool {
        let Some(keys) = self.keys.as_deref_mut() else {
            return false;
        };
        if keys.paused.remove(key).is_none() {
            return false;
        }
        if let Some(t) = keys.tasks.get_mut(key) {
            t.paused = false;
            self.key_release(key);
        }
        true
    }

    /// Ends the timed key pauses whose time has come (the timekeeper's
    /// call); returns whether any ended (then wake the waiters of
    /// `FlowShared::resumed` after unlocking).
    pub(crate) fn resume_keys_due(&mut self) -> bool {
        let Some(keys) = self.keys.as_deref() else {
            return false;
        };
        if keys.paused.is_empty() {
            return false;
        }
        let now = self.clock.now();
        let due: Vec<Arc<str>> = keys
            .paused
            .iter()
            .filter(|(_, &t)| is_due(t, now))
            .map(|(k, _)| k.clone())
            .collect();
        let any = !due.is_empty();
        for key in due {
            self.resume_key(&key);
        }
        any
    }

    /// Whether any key is paused.
    pub(crate) fn keys_paused_any(&self) -> bool {
        self.keys.as_deref().is_some_and(|k| !k.paused.is_empty())
    }

    /// When the next timed key pause ends.
    pub(crate) fn keys_resume_at(&self) -> Option<i64> {
        let keys = self.keys.as_deref()?;
        keys.paused.values().copied().filter(|&t| t != NEVER).min()
    }

    /// A drain runs what is due: every key pause ends.
    pub(crate) fn resume_all_keys(&mut self) {
        let Some(keys) = self.keys.as_deref() else {
            return;
        };
        let paused: Vec<Arc<str>> = keys.paused.keys().cloned().collect();
        for key in paused {
            self.resume_key(&key);
        }
    }

    /// Whether `key` is paused.
    pub(crate) fn key_paused(&self, key: &str) -> bool {
        self.keys
            .as_deref()
            .is_some_and(|k| k.paused.contains_key(key))
    }

    /// Shuts down every task waiting on a key (a stop or cancel).
    pub(super) fn shut_down_on_keys(&mut self, out: &mut Vec<Delivery>) {
        let Some(keys) = self.keys.as_deref() else {
            return;
        };
        let entries = &self.entries;
        let slots: Vec<Slot> = keys
            .tasks
            .values()
            .flat_map(|t| t.waiting.iter())
            .filter(|w| is_waiting(entries, &w.0))
            .map(|w| w.0.slot)
            .collect();
        for slot in slots {
            out.push(self.finalize(slot, Some(Forced::Shutdown)));
        }
    }

    /// See [`Cluster::key_stats`](crate::Cluster::key_stats).
    pub(crate) fn key_stats(&self, key: &str) -> Option<KeyStats> {
        let keys = self.keys.as_deref()?;
        let t = keys.tasks.get(key)?;
        Some(KeyStats {
            running: t.running as usize,
            used: t.used,
            queued: (t.pending as usize).saturating_sub(t.live),
            waiting: t.live,
            limit: (t.limit != u32::MAX).then_some(t.limit),
            paused: t.paused,
        })
    }

    /// The limit set for `key` by hand, if any.
    pub(crate) fn key_limit_override(&self, key: &str) -> Option<u32> {
        self.keys.as_deref()?.limits.get(key).copied()
    }

    /// The limit that applies to `key`.
    pub(crate) fn key_limit_of(&self, key: &str) -> Option<u32> {
        let l = self.keys.as_deref()?.limit_of(key);
        (l != u32::MAX).then_some(l)
    }

    /// Keys that have tasks now.
    pub(crate) fn active_keys(&self) -> usize {
        self.keys.as_deref().map_or(0, |k| k.tasks.len())
    }
}

/// The key and cost of the task at `slot`, borrowed.
fn task_key(entries: &slab::Slab<super::Entry>, slot: Slot) -> Option<(&Arc<str>, u32)> {
    entries.get(slot as usize)?.job.key()
}

/// Pops dead heads off a key's waiting heap.
fn drop_dead_heads(t: &mut KeyTasks, is_live: impl Fn(&Item) -> bool) {
    while let Some(w) = t.waiting.peek() {
        if is_live(&w.0) {
            break;
        }
        t.waiting.pop();
        t.dead = t.dead.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(slot: u32, seq: u64, start: i64, priority: i32) -> Waiter {
        Waiter(Item {
            slot,
            seq,
            start,
            priority,
        })
    }

    #[test]
    fn waiters_pop_in_queue_order() {
        let mut h = BinaryHeap::new();
        h.push(item(0, 5, 10, 0));
        h.push(item(1, 3, 10, 0));
        h.push(item(2, 9, 5, 0));
        h.push(item(3, 20, 30, 2));
        let order: Vec<u32> = std::iter::from_fn(|| h.pop().map(|w| w.0.slot)).collect();
        assert_eq!(order, vec![3, 2, 1, 0]);
    }
}
