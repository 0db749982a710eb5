//! The one scheduling structure for due and future tasks.
//!
//! This is the seam a durable backend fills later: the rest of the engine
//! only pushes `(slot, seq, start, priority)` items, pops the next due slot,
//! removes a slot, and asks when the next one falls due.
//!
//! Order (exact and deterministic): among tasks whose start time has come,
//! higher priority first; equal priority, earlier start first; equal start,
//! lower `seq` (earlier submission) first.
//!
//! Shape, chosen by measurement (see `benchmarks.md`):
//! - Future tasks sit in one indexed binary min-heap on `(start, seq)`. The
//!   index (`sched_pos`) makes removal O(log n) and immediate, so a cancelled
//!   task never lingers until its start time.
//! - Due tasks sit in one FIFO per priority level. Keys almost always arrive
//!   in order (submission `seq` and `now` only grow), so a FIFO is exact and
//!   far cheaper than a heap; a key that arrives out of order (a start time
//!   in the past, a promoted task older than the FIFO's tail) goes to a small
//!   per-level heap, and pop takes the smaller of the two heads.
//! - A due task that is cancelled is not searched for: the caller forgets
//!   it, and pop skips entries the caller no longer recognises (it passes an
//!   `is_live` check). Tombstones are compacted once they outnumber live
//!   entries, so they cannot pile up.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// Index of a task in the registry.
pub(crate) type Slot = u32;

const NOT_SCHEDULED: u32 = u32::MAX;
/// Keep at most this many empty priority levels around, so a level that
/// empties and refills (the common case) does not reallocate its FIFO.
const KEEP_EMPTY_LEVELS: usize = 8;
const COMPACT_MIN_TOMBSTONES: usize = 1024;

/// A task as the queue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) slot: Slot,
    pub(crate) seq: u64,
    /// Start time in ticks (nanoseconds from the cluster's epoch).
    pub(crate) start: i64,
    pub(crate) priority: i32,
}

impl Item {
    fn key(&self) -> (i64, u64) {
        (self.start, self.seq)
    }
}

/// Orders items by `(start, seq)` only; priority is the level.
#[derive(Debug, Clone, Copy)]
struct ByKey(Item);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key() == other.0.key()
    }
}
impl Eq for ByKey {}
impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.key().cmp(&other.0.key())
    }
}

#[derive(Debug, Default)]
struct Level {
    fifo: VecDeque<Item>,
    late: BinaryHeap<Reverse<ByKey>>,
}

impl Level {
    fn len(&self) -> usize {
        self.fifo.len() + self.late.len()
    }

    fn push(&mut self, item: Item) {
        match self.fifo.back() {
            Some(tail) if item.key() < tail.key() => self.late.push(Reverse(ByKey(item))),
            _ => self.fifo.push_back(item),
        }
    }

    /// Drops dead heads, then pops the smaller live head. Returns the popped
    /// item and how many dead entries were dropped.
    fn pop(&mut self, is_live: &mut impl FnMut(&Item) -> bool) -> (Option<Item>, usize) {
        let mut dead = 0;
        while let Some(h) = self.fifo.front() {
            if is_live(h) {
                break;
            }
            self.fifo.pop_front();
            dead += 1;
        }
        while let Some(Reverse(ByKey(h))) = self.late.peek() {
            if is_live(h) {
                break;
            }
            self.late.pop();
            dead += 1;
        }
        let take_late = match (self.fifo.front(), self.late.peek()) {
            (Some(f), Some(Reverse(ByKey(l)))) => l.key() < f.key(),
            (None, Some(_)) => true,
            _ => false,
        };
        let item = if take_late {
            self.late.pop().map(|Reverse(ByKey(i))| i)
        } else {
            self.fifo.pop_front()
        };
        (item, dead)
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Min-heap on `(start, seq)` of tasks not yet due.
    sched: Vec<Item>,
    /// `sched_pos[slot]` is the slot's index in `sched`, or `NOT_SCHEDULED`.
    sched_pos: Vec<u32>,
    /// Due tasks, highest priority first.
    levels: BTreeMap<Reverse<i32>, Level>,
    /// Entries in `levels`, tombstones included.
    ready_entries: usize,
    tombstones: usize,
}

impl Queue {
    /// Queues `item`: due now if `item.start <= now`, else scheduled.
    pub(crate) fn push(&mut self, item: Item, now: i64) {
        if item.start <= now {
            self.push_ready(item);
        } else {
            self.push_scheduled(item);
        }
    }

    /// Moves every scheduled task whose start has come into the ready levels,
    /// in `(start, seq)` order. Returns how many moved.
    pub(crate) fn promote(&mut self, now: i64) -> usize {
        let mut moved = 0;
        while let Some(head) = self.sched.first() {
            if head.start > now {
                break;
            }
            let item = self.remove_sched_at(0);
            self.push_ready(item);
            moved += 1;
        }
        moved
    }

    /// Pops the next due task (promoting first). `is_live` tells whether a
    /// ready entry still stands for a queued task (see the module docs).
    pub(crate) fn pop(&mut self, now: i64, mut is_live: impl FnMut(&Item) -> bool) -> Option<Item> {
        self.promote(now);
        let mut found = None;
        let mut emptied = None;
        for (prio, level) in self.levels.iter_mut() {
            if level.len() == 0 {
                continue;
            }
            let (item, dead) = level.pop(&mut is_live);
            self.tombstones = self.tombstones.saturating_sub(dead);
            self.ready_entries -= dead + usize::from(item.is_some());
            if level.len() == 0 {
                emptied = Some(*prio);
            }
            if item.is_some() {
                found = item;
                break;
            }
        }
        if let Some(p) = emptied {
            if self.levels.len() > KEEP_EMPTY_LEVELS {
                self.levels.remove(&p);
            }
        }
        found
    }

    /// Removes a scheduled task at once. Returns `false` if the slot is not
    /// scheduled (it may be due: then call [`forget_ready`](Self::forget_ready)).
    pub(crate) fn remove_scheduled(&mut self, slot: Slot) -> bool {
        let pos = match self.sched_pos.get(slot as usize) {
            Some(&p) if p != NOT_SCHEDULED => p as usize,
            _ => return false,
        };
        self.remove_sched_at(pos);
        self.shrink_sched();
        true
    }

    /// Records that a due task's entry is now a tombstone, and compacts the
    /// levels when tombstones outnumber live entries.
    pub(crate) fn forget_ready(&mut self, is_live: impl FnMut(&Item) -> bool) {
        self.tombstones += 1;
        if self.tombstones >= COMPACT_MIN_TOMBSTONES && self.tombstones * 2 > self.ready_entries {
            self.compact(is_live);
        }
    }

    /// When the earliest scheduled task falls due.
    pub(crate) fn next_start(&self) -> Option<i64> {
        self.sched.first().map(|i| i.start)
    }

    /// Live-or-not entries still counted: scheduled plus ready (tombstones excluded).
    pub(crate) fn len(&self) -> usize {
        self.sched.len() + self.ready_entries.saturating_sub(self.tombstones)
    }

    #[cfg(test)]
    pub(crate) fn scheduled_len(&self) -> usize {
        self.sched.len()
    }

    /// Removes every scheduled task whose start is after `cutoff` and matches
    /// `pred`, returning them.
    pub(crate) fn take_scheduled_after(
        &mut self,
        cutoff: i64,
        mut pred: impl FnMut(&Item) -> bool,
    ) -> Vec<Item> {
        let (taken, kept): (Vec<Item>, Vec<Item>) = std::mem::take(&mut self.sched)
            .into_iter()
            .partition(|i| i.start > cutoff && pred(i));
        for i in &taken {
            self.sched_pos[i.slot as usize] = NOT_SCHEDULED;
        }
        for i in kept {
            self.sched_pos[i.slot as usize] = NOT_SCHEDULED;
            self.push_scheduled(i);
        }
        self.shrink_sched();
        taken
    }

    /// Empties the queue, returning every entry (tombstones included: the
    /// caller filters them as it does on pop).
    pub(crate) fn drain(&mut self) -> Vec<Item> {
        let mut all = std::mem::take(&mut self.sched);
        for level in std::mem::take(&mut self.levels).into_values() {
            all.extend(level.fifo);
            all.extend(level.late.into_iter().map(|Reverse(ByKey(i))| i));
        }
        self.sched_pos = Vec::new();
        self.ready_entries = 0;
        self.tombstones = 0;
        all
    }

    fn push_ready(&mut self, item: Item) {
        self.levels
            .entry(Reverse(item.priority))
            .or_default()
            .push(item);
        self.ready_entries += 1;
    }

    fn compact(&mut self, mut is_live: impl FnMut(&Item) -> bool) {
        for level in self.levels.values_mut() {
            level.fifo.retain(&mut is_live);
            let late = std::mem::take(&mut level.late);
            level.late = late
                .into_iter()
                .filter(|Reverse(ByKey(i))| is_live(i))
                .collect();
            level.fifo.shrink_to(level.fifo.len() * 2);
        }
        self.levels.retain(|_, l| l.len() > 0);
        self.ready_entries = self.levels.values().map(Level::len).sum();
        self.tombstones = 0;
    }

    // ---- the indexed heap ----

    fn push_scheduled(&mut self, item: Item) {
        let slot = item.slot as usize;
        if self.sched_pos.len() <= slot {
            self.sched_pos.resize(slot + 1, NOT_SCHEDULED);
        }
        self.sched.push(item);
        let pos = self.sched.len() - 1;
        self.sched_pos[slot] = pos as u32;
        self.sift_up(pos);
    }

    fn remove_sched_at(&mut self, pos: usize) -> Item {
        let last = self.sched.len() - 1;
        self.sched.swap(pos, last);
        let item = self.sched.pop().expect("pos is in bounds");
        self.sched_pos[item.slot as usize] = NOT_SCHEDULED;
        if pos < self.sched.len() {
            self.sched_pos[self.sched[pos].slot as usize] = pos as u32;
            let pos = self.sift_up(pos);
            self.sift_down(pos);
        }
        item
    }

    fn sift_up(&mut self, mut pos: usize) -> usize {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.sched[pos].key() >= self.sched[parent].key() {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
        pos
    }

    fn sift_down(&mut self, mut pos: usize) {
        let len = self.sched.len();
        loop {
            let l = 2 * pos + 1;
            if l >= len {
                break;
            }
            let r = l + 1;
            let child = if r < len && self.sched[r].key() < self.sched[l].key() {
                r
            } else {
                l
            };
            if self.sched[child].key() >= self.sched[pos].key() {
                break;
            }
            self.swap(pos, child);
            pos = child;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.sched.swap(a, b);
        self.sched_pos[self.sched[a].slot as usize] = a as u32;
        self.sched_pos[self.sched[b].slot as usize] = b as u32;
    }

    /// Gives memory back after mass removal (a cancel storm must not leave
    /// the heap at its peak size).
    fn shrink_sched(&mut self) {
        if self.sched.capacity() > 64 && self.sched.len() < self.sched.capacity() / 4 {
            self.sched.shrink_to(self.sched.len() * 2);
        }
        if self.sched.is_empty() && self.sched_pos.capacity() > 64 {
            self.sched_pos = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(slot: Slot, seq: u64, start: i64, priority: i32) -> Item {
        Item {
            slot,
            seq,
            start,
            priority,
        }
    }

    fn drain_order(q: &mut Queue, now: i64) -> Vec<Slot> {
        std::iter::from_fn(|| q.pop(now, |_| true).map(|i| i.slot)).collect()
    }

    #[test]
    fn priority_then_start_then_seq() {
        let mut q = Queue::default();
        q.push(item(0, 0, 5, 1), 10);
        q.push(item(1, 1, 3, 1), 10); // out of order in its level
        q.push(item(2, 2, 3, 1), 10);
        q.push(item(3, 3, 9, 7), 10);
        q.push(item(4, 4, 0, -3), 10);
        assert_eq!(drain_order(&mut q, 10), vec![3, 1, 2, 0, 4]);
    }

    #[test]
    fn future_tasks_wait_for_their_start() {
        let mut q = Queue::default();
        q.push(item(0, 0, 20, 0), 0);
        q.push(item(1, 1, 10, 0), 0);
        assert_eq!(q.pop(5, |_| true), None);
        assert_eq!(q.next_start(), Some(10));
        assert_eq!(q.pop(10, |_| true).map(|i| i.slot), Some(1));
        assert_eq!(q.pop(15, |_| true), None);
        assert_eq!(q.pop(25, |_| true).map(|i| i.slot), Some(0));
    }

    #[test]
    fn scheduled_removal_is_immediate_and_keeps_heap_valid() {
        let mut q = Queue::default();
        for s in 0..100u32 {
            q.push(item(s, s as u64, 1000 - i64::from(s), 0), 0);
        }
        for s in (0..100u32).step_by(3) {
            assert!(q.remove_scheduled(s));
            assert!(!q.remove_scheduled(s));
        }
        assert_eq!(q.scheduled_len(), 66);
        let order = drain_order(&mut q, 10_000);
        let mut expected: Vec<Slot> = (0..100u32).filter(|s| s % 3 != 0).collect();
        expected.reverse(); // later slots start earlier
        assert_eq!(order, expected);
    }

    #[test]
    fn dead_ready_entries_are_skipped_and_compacted() {
        let mut q = Queue::default();
        let n = 4000u32;
        for s in 0..n {
            q.push(item(s, s as u64, 0, 0), 0);
        }
        let mut dead = std::collections::HashSet::new();
        for s in (0..n).filter(|s| s % 4 != 0) {
            dead.insert(s);
            q.forget_ready(|i| !dead.contains(&i.slot));
        }
        assert_eq!(q.len(), (n / 4) as usize);
        // Compaction ran (3000 tombstones > 1000 live), so few entries remain.
        assert!(q.ready_entries < 2 * (n as usize / 4) + COMPACT_MIN_TOMBSTONES);
        let order: Vec<Slot> =
            std::iter::from_fn(|| q.pop(0, |i| !dead.contains(&i.slot)).map(|i| i.slot)).collect();
        assert_eq!(order, (0..n).step_by(4).collect::<Vec<_>>());
        assert_eq!(q.len(), 0);
    }
}
