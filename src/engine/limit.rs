//! The engine's side of rate limits (`crate::limit` is the user's side):
//! the limiters' buckets, admission at claim, the tasks a limiter set
//! aside, and their wake-ups.
//!
//! Costs nothing to a cluster that never saw a limiter: `Engine::limits`
//! is `None` until the first `add_limiter`, and a claim only checks that.
//! Once it exists, a claim reads the popped task's limiters (one virtual
//! call; `None` for a task that names none) and goes on as before.
//!
//! # Admission
//! A claim pops the best due task, as always; if it names limiters, every
//! one of its buckets is checked first, and only if all allow is it
//! charged to all (no partial charge). A refused task is **set aside**
//! (`State::Limited`): it leaves the queue, holds no worker and is never
//! polled, and the claim pops again.
//!
//! # Waiting without a thundering herd
//! A task set aside waits in the list of the bucket that refused it (the
//! one whose admission is latest, if several did), ordered as the queue
//! orders (priority, start, sequence). Each bucket with waiters has one
//! timer, at the instant it has room for one more task than those it
//! already sent back and that no worker has claimed yet (`pending`). When
//! the timekeeper fires it, the bucket's best waiters go back to the queue
//! with their original `Item`, as many as it has room for beyond those
//! pending, so the queue's exact order decides among them and the other
//! due tasks. A woken task stops being pending when a claim pops it
//! (admitted, set aside again if another task took the room meanwhile, or
//! diverted to its full or paused key) or when it is cancelled, dropped or
//! replaced; the bucket's timer is then set again. So a
//! bucket with 10,000 waiters costs one wake-up per admission, not 10,000,
//! and a turn a cancelled task did not use goes to the next waiter at once.
//!
//! A claim that finds a bucket timer due before the timekeeper got to it
//! wakes those waiters first and puts the task it popped back, so a task
//! that did not wait never passes one that did, at the instant they meet.
//!
//! Exact for tasks naming one limiter. A task naming several waits in the
//! list of one bucket at a time and is checked against all when woken; a
//! bucket that woke it and was not charged finds out when it is popped.
//!
//! # Bounded state
//! - A per-key-value bucket whose TAT is not after now behaves as a fresh
//!   one, so it is dropped: each limiter sweeps its keyed buckets when a
//!   new key value arrives and their number has doubled since the last
//!   sweep (at least 64). So a limiter holds at most
//!   `max(64, 2 * b)` keyed buckets, `b` being the most buckets busy (TAT
//!   in the future) at once since the last sweep: with `n` key values used
//!   per `burst * interval`, about `2 * n`. Amortised O(1) per new key.
//! - Waiter entries of tasks cancelled or shut down while set aside are
//!   skipped when they come up, and compacted away once they outnumber
//!   live ones (at least 1,024): a cancel storm does not keep them.
//!
//! Exactly once: a task set aside is in exactly one waiter list, in state
//! `Limited`; whatever ends it (a cancel, a shutdown) finalizes it and
//! leaves a dead entry behind; a wake-up moves it back to `Queued` first.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::{current, Delivery, Engine, State};
use crate::clock::duration_ticks;
use crate::error::SubmitError;
use crate::job::{Forced, Job};
use crate::limit::{Gcra, LimitRef, LimiterError, LimiterStats, Rate, Tat, FRESH};
use crate::queue::{Item, Slot};

/// Keyed buckets are first swept when a limiter holds this many.
const SWEEP_MIN: usize = 64;
/// Dead waiter entries are compacted once there are this many and they
/// outnumber live ones.
const COMPACT_MIN_DEAD: usize = 1024;

/// The limiters and the tasks they set aside (see the module docs).
#[derive(Default)]
pub(super) struct Limits {
    limiters: HashMap<Arc<str>, Limiter>,
    /// Tasks set aside, by the bucket they wait for.
    waiting: HashMap<LimitRef, Waiters>,
    /// When each bucket with waiters admits again. An entry whose time is
    /// not its bucket's `wake_at` is stale (the bucket was rescheduled).
    timers: BinaryHeap<Reverse<(i64, LimitRef)>>,
    /// Tasks woken from a bucket's waiters and not yet claimed, by `seq`:
    /// they count against that bucket's room until claimed or cancelled.
    woken: HashMap<u64, LimitRef>,
    /// Tasks set aside now.
    held: usize,
    /// Waiter entries of tasks no longer set aside.
    dead: usize,
}

struct Limiter {
    rate: Rate,
    gcra: Gcra,
    /// The global bucket.
    global: Tat,
    /// Per-key-value buckets; an absent key is a fresh bucket.
    keyed: HashMap<Arc<str>, Tat>,
    /// Sweep idle keyed buckets when a new key arrives at this many.
    sweep_at: usize,
}

impl Limiter {
    fn tat(&self, key: Option<&Arc<str>>) -> Tat {
        match key {
            None => self.global,
            Some(k) => self.keyed.get(k).copied().unwrap_or(FRESH),
        }
    }

    /// How many requests in a row the bucket admits at `now` (at most the
    /// burst: an idle bucket is full).
    fn room(&self, key: Option<&Arc<str>>, now: i64) -> u64 {
        let earliest = self.gcra.earliest(self.tat(key));
        if earliest > now {
            return 0;
        }
        let gaps = now.saturating_sub(earliest) / self.gcra.t;
        (gaps.unsigned_abs().saturating_add(1)).min(self.gcra.burst())
    }

    /// When the bucket first has room for `pending + 1` requests in a row
    /// (`None`: never, that is more than its burst).
    fn room_for(&self, key: Option<&Arc<str>>, pending: usize) -> Option<i64> {
        let pending = pending as u64;
        if pending >= self.gcra.burst() {
            return None;
        }
        let wait = i64::try_from(pending)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.gcra.t);
        Some(self.gcra.earliest(self.tat(key)).saturating_add(wait))
    }

    /// Sets a bucket's TAT, forgetting idle keyed buckets now and then.
    fn set(&mut self, key: Option<&Arc<str>>, tat: Tat, now: i64) {
        let Some(k) = key else {
            self.global = tat;
            return;
        };
        if let Some(t) = self.keyed.get_mut(k) {
            *t = tat;
            return;
        }
        if self.keyed.len() >= self.sweep_at {
            self.keyed.retain(|_, t| !Gcra::is_idle(*t, now));
            if self.keyed.capacity() > 4 * self.keyed.len().max(SWEEP_MIN) {
                self.keyed.shrink_to(2 * self.keyed.len());
            }
            self.sweep_at = (2 * self.keyed.len()).max(SWEEP_MIN);
        }
        self.keyed.insert(k.clone(), tat);
    }
}

/// A bucket's waiters, best first, and when its timer is set.
struct Waiters {
    heap: BinaryHeap<Waiter>,
    /// The bucket's one valid timer ([`UNARMED`]: none).
    wake_at: i64,
    /// Waiters sent back to the queue and not yet claimed.
    pending: usize,
}

/// A bucket timer that is not set.
const UNARMED: i64 = i64::MAX;

/// A task set aside, with its queue key: the heap's greatest is the one
/// the queue would pop first.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Waiter(Item);

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        let key = |i: &Item| (i.priority, Reverse(i.start), Reverse(i.seq));
        key(&self.0).cmp(&key(&other.0))
    }
}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn is_set_aside(entries: &slab::Slab<super::Entry>, item: &Item) -> bool {
    current(entries, item.slot, item.seq).is_some_and(|e| e.state == State::Limited)
}

impl Engine {
    fn limits_mut(&mut self) -> &mut Limits {
        self.limits.get_or_insert_with(Box::default)
    }

    /// Adds a limiter (see [`Cluster::add_limiter`](crate::Cluster::add_limiter)).
    pub(crate) fn add_limiter(&mut self, name: Arc<str>, rate: Rate) -> Result<(), LimiterError> {
        if name.is_empty() {
            return Err(LimiterError::EmptyName);
        }
        let gcra = rate.validate()?;
        let limits = self.limits_mut();
        if limits.limiters.contains_key(&name) {
            return Err(LimiterError::Exists(name));
        }
        limits.limiters.insert(
            name,
            Limiter {
                rate,
                gcra,
                global: FRESH,
                keyed: HashMap::new(),
                sweep_at: SWEEP_MIN,
            },
        );
        Ok(())
    }

    /// A limiter's state (see [`Cluster::limiter`](crate::Cluster::limiter)).
    pub(crate) fn limiter_stats(&self, name: &str) -> Option<LimiterStats> {
        let l = self.limits.as_deref()?.limiters.get(name)?;
        let now = self.clock.now();
        let wait = l.gcra.earliest(l.global).saturating_sub(now).max(0);
        Some(LimiterStats {
            rate: l.rate,
            global_wait: Duration::from_nanos(wait.unsigned_abs()),
            buckets: l.keyed.len(),
        })
    }

    /// Checks at submit that every limiter `job` names exists.
    pub(crate) fn check_limiters(&self, job: &dyn Job) -> Result<(), SubmitError> {
        let Some(tl) = job.limits() else {
            return Ok(());
        };
        let limiters = self.limits.as_deref().map(|l| &l.limiters);
        for r in &tl.refs {
            if !limiters.is_some_and(|l| l.contains_key(&r.limiter)) {
                return Err(SubmitError::UnknownLimiter(r.limiter.clone()));
            }
        }
        Ok(())
    }

    /// Tasks set aside by a limiter now.
    pub(crate) fn limited(&self) -> usize {
        self.limits.as_deref().map_or(0, |l| l.held)
    }

    /// Admits the popped `item` if every limiter it names allows, charging
    /// all of them; otherwise sets it aside and returns `false` (nothing
    /// charged). Also `false`, with the item queued again, when bucket
    /// timers were due: their waiters go first (see the module docs).
    pub(super) fn limits_admit(&mut self, item: &Item) -> bool {
        let Some(limits) = self.limits.as_deref_mut() else {
            return true;
        };
        let tl = self.entries[item.slot as usize].job.limits();
        if tl.is_none() && limits.timers.is_empty() {
            return true;
        }
        let now = self.clock.now();
        if limits
            .timers
            .peek()
            .is_some_and(|Reverse((t, _))| *t <= now)
        {
            // Still `Queued`; no worker to wake: this one pops again.
            self.queue.push(*item, now);
            self.wake_limited(now);
            return false;
        }
        let Some(tl) = tl else {
            return true;
        };
        // Woken from a bucket's waiters: it stops counting there now,
        // admitted or not.
        let from = if limits.woken.is_empty() {
            None
        } else {
            limits.woken.remove(&item.seq)
        };
        if let Some(w) = from.as_ref().and_then(|b| limits.waiting.get_mut(b)) {
            w.pending = w.pending.saturating_sub(1);
        }
        // Check all first: the bucket that admits latest binds.
        let mut binding: Option<(i64, usize)> = None;
        for (i, r) in tl.refs.iter().enumerate() {
            // Names were checked at submit, and limiters are never removed.
            let Some(l) = limits.limiters.get(&r.limiter) else {
                continue;
            };
            let earliest = l.gcra.earliest(l.tat(r.key.as_ref()));
            if earliest > now && binding.is_none_or(|(b, _)| earliest > b) {
                binding = Some((earliest, i));
            }
        }
        let admitted = match binding {
            None => {
                for r in &tl.refs {
                    if let Some(l) = limits.limiters.get_mut(&r.limiter) {
                        let tat = l.gcra.charge(l.tat(r.key.as_ref()), now);
                        l.set(r.key.as_ref(), tat, now);
                    }
                }
                true
            }
            Some((_, i)) => {
                let bucket = tl.refs[i].clone();
                self.entries[item.slot as usize].state = State::Limited;
                self.set_aside(bucket, *item);
                false
            }
        };
        if let Some(b) = from {
            self.rearm(&b);
        }
        admitted
    }

    /// Puts `item` in `bucket`'s waiters.
    fn set_aside(&mut self, bucket: LimitRef, item: Item) {
        let limits = self.limits.as_deref_mut().expect("limits exist");
        limits.held += 1;
        let w = limits
            .waiting
            .entry(bucket.clone())
            .or_insert_with(|| Waiters {
                heap: BinaryHeap::new(),
                wake_at: UNARMED,
                pending: 0,
            });
        w.heap.push(Waiter(item));
        self.rearm(&bucket);
    }

    /// Sets `bucket`'s timer for when its room first exceeds the tasks
    /// woken from it and not yet claimed; none while it has no waiters
    /// (its entry goes once nothing is pending either).
    fn rearm(&mut self, bucket: &LimitRef) {
        let Some(limits) = self.limits.as_deref_mut() else {
            return;
        };
        let Some(w) = limits.waiting.get_mut(bucket) else {
            return;
        };
        if w.heap.is_empty() {
            w.wake_at = UNARMED;
            if w.pending == 0 {
                limits.waiting.remove(bucket);
            }
            return;
        }
        let at = limits
            .limiters
            .get(&bucket.limiter)
            .and_then(|l| l.room_for(bucket.key.as_ref(), w.pending))
            .unwrap_or(UNARMED);
        if at != w.wake_at {
            w.wake_at = at;
            if at != UNARMED {
                limits.timers.push(Reverse((at, bucket.clone())));
                self.note_timer(at);
            }
        }
    }

    /// Sends back to the queue the best waiters of every bucket whose
    /// timer is due at `now`, as many as the bucket has room for beyond
    /// those already sent (the timekeeper's call, through `promote`; and a
    /// claim's, see `limits_admit`).
    pub(super) fn wake_limited(&mut self, now: i64) {
        let mut woken = 0;
        loop {
            let Some(limits) = self.limits.as_deref_mut() else {
                return;
            };
            let Some(Reverse((t, _))) = limits.timers.peek() else {
                break;
            };
            if *t > now {
                break;
            }
            let Some(Reverse((t, bucket))) = limits.timers.pop() else {
                break;
            };
            let Some(w) = limits.waiting.get_mut(&bucket) else {
                continue;
            };
            if w.wake_at != t {
                continue; // stale: rearmed since
            }
            w.wake_at = UNARMED;
            let room = limits
                .limiters
                .get(&bucket.limiter)
                .map_or(0, |l| l.room(bucket.key.as_ref(), now));
            let can = room.saturating_sub(w.pending as u64);
            let mut items = Vec::new();
            while (items.len() as u64) < can {
                let Some(Waiter(item)) = w.heap.pop() else {
                    break;
                };
                if is_set_aside(&self.entries, &item) {
                    items.push(item);
                } else {
                    limits.dead -= 1;
                }
            }
            // Drop dead heads, so that an empty list goes at once.
            while let Some(Waiter(item)) = w.heap.peek() {
                if is_set_aside(&self.entries, item) {
                    break;
                }
                w.heap.pop();
                limits.dead -= 1;
            }
            w.pending += items.len();
            limits.held -= items.len();
            for item in &items {
                limits.woken.insert(item.seq, bucket.clone());
            }
            for item in items {
                self.entries[item.slot as usize].state = State::Queued;
                self.queue.push(item, now);
                woken += 1;
            }
            self.rearm(&bucket);
        }
        if woken > 0 {
            self.note_ready(woken);
        }
    }

    /// When the earliest bucket timer is due (for `arm_timer`).
    pub(super) fn next_limited_wake(&mut self) -> Option<i64> {
        let limits = self.limits.as_deref_mut()?;
        while let Some(Reverse((t, bucket))) = limits.timers.peek() {
            if limits.waiting.get(bucket).is_some_and(|w| w.wake_at == *t) {
                return Some(*t);
            }
            limits.timers.pop();
        }
        None
    }

    /// The queued task at `slot` is being cancelled: if a bucket woke it,
    /// it no longer counts there (call before finalizing it).
    pub(super) fn unwake_limited(&mut self, slot: Slot) {
        let seq = self.entries[slot as usize].job.seq();
        let Some(limits) = self.limits.as_deref_mut() else {
            return;
        };
        if limits.woken.is_empty() {
            return;
        }
        let Some(bucket) = limits.woken.remove(&seq) else {
            return;
        };
        if let Some(w) = limits.waiting.get_mut(&bucket) {
            w.pending = w.pending.saturating_sub(1);
        }
        self.rearm(&bucket);
    }

    /// A task set aside was finalized (cancelled): its waiter entry is dead.
    pub(super) fn forget_limited(&mut self) {
        let Some(limits) = self.limits.as_deref_mut() else {
            return;
        };
        limits.held -= 1;
        limits.dead += 1;
        if limits.dead >= COMPACT_MIN_DEAD && limits.dead > limits.held {
            let entries = &self.entries;
            limits.waiting.retain(|_, w| {
                w.heap.retain(|Waiter(i)| is_set_aside(entries, i));
                !w.heap.is_empty() || w.pending > 0
            });
            limits.dead = 0;
        }
    }

    /// Shuts down every task set aside (a stop or cancel).
    pub(super) fn shut_down_limited(&mut self, out: &mut Vec<Delivery>) {
        let Some(limits) = self.limits.as_deref_mut() else {
            return;
        };
        let waiting = std::mem::take(&mut limits.waiting);
        limits.timers.clear();
        limits.woken.clear();
        limits.held = 0;
        limits.dead = 0;
        for (_, w) in waiting {
            for Waiter(item) in w.heap {
                if is_set_aside(&self.entries, &item) {
                    out.push(self.finalize(item.slot, Some(Forced::Shutdown)));
                }
            }
        }
    }

    /// Applies a body's slow-down request (see
    /// [`TaskContext::slow_down`](crate::TaskContext::slow_down)): the
    /// bucket `job` is charged to under its limiter `index` admits nothing
    /// until `delay` from now.
    pub(crate) fn slow_limiter(&mut self, job: &dyn Job, index: usize, delay: Duration) {
        let Some(r) = job.limits().and_then(|tl| tl.refs.get(index)) else {
            return;
        };
        let now = self.clock.now();
        let Some(l) = self
            .limits
            .as_deref_mut()
            .and_then(|l| l.limiters.get_mut(&r.limiter))
        else {
            return;
        };
        let until = now.saturating_add(duration_ticks(delay));
        let tat = l.gcra.hold(l.tat(r.key.as_ref()), until);
        l.set(r.key.as_ref(), tat, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_come_out_in_queue_order() {
        let item = |seq, start, priority| Item {
            slot: seq as u32,
            seq,
            start,
            priority,
        };
        let mut h = BinaryHeap::new();
        for i in [item(3, 5, 0), item(1, 5, 0), item(2, 1, 0), item(4, 9, 2)] {
            h.push(Waiter(i));
        }
        let order: Vec<u64> = std::iter::from_fn(|| h.pop().map(|w| w.0.seq)).collect();
        assert_eq!(order, vec![4, 2, 1, 3]);
    }

    #[test]
    fn idle_keyed_buckets_are_swept() {
        let rate = Rate::per_second(1000).burst(1);
        let mut l = Limiter {
            rate,
            gcra: rate.validate().unwrap(),
            global: FRESH,
            keyed: HashMap::new(),
            sweep_at: SWEEP_MIN,
        };
        // One new key per millisecond, each busy for one millisecond.
        for i in 0..100_000i64 {
            let now = i * 1_000_000;
            let key: Arc<str> = i.to_string().into();
            let tat = l.gcra.charge(FRESH, now);
            l.set(Some(&key), tat, now);
            assert!(l.keyed.len() <= SWEEP_MIN + 1, "{} buckets", l.keyed.len());
        }
    }
}
