//! The result cache's clock: when each retained outcome expires. One heap
//! and one sweeper (the timekeeper) for the whole cluster, not a timer per
//! entry. What expires is decided here; what it means for the task is the
//! engine's ([`Engine::sweep`](crate::engine::Engine::sweep)) and the
//! cell's (`release`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::clock::{is_due, NEVER};
use crate::job::Job;
use crate::queue::Slot;

/// Expiry times of retained outcomes, earliest first. Entries are never
/// removed early: one whose task was replaced or removed meanwhile is
/// skipped by the sweep (the `seq` no longer matches).
#[derive(Default)]
pub(crate) struct Expiries {
    heap: BinaryHeap<Reverse<(i64, u64, Slot)>>,
}

impl Expiries {
    /// Records that the task `seq` in `slot` expires at tick `until`.
    pub(crate) fn push(&mut self, until: i64, seq: u64, slot: Slot) {
        self.heap.push(Reverse((until, seq, slot)));
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest expiry, unless it is never.
    pub(crate) fn next(&self) -> Option<i64> {
        self.heap
            .peek()
            .map(|Reverse((t, _, _))| *t)
            .filter(|&t| t != NEVER)
    }

    /// Takes the next entry due by `now`, if any.
    pub(crate) fn pop_due(&mut self, now: i64) -> Option<(u64, Slot)> {
        let &Reverse((until, seq, slot)) = self.heap.peek()?;
        if !is_due(until, now) {
            return None;
        }
        self.heap.pop();
        Some((seq, slot))
    }

    /// Gives memory back after a mass expiry.
    pub(crate) fn shrink(&mut self) {
        if self.heap.capacity() > 64 && self.heap.len() < self.heap.capacity() / 4 {
            self.heap.shrink_to(self.heap.len() * 2);
        }
    }
}

/// Drops cached outcomes the sweep removed (outside the lock: engine invariant 4).
///
/// Inlined, with the loop out of line: every `Shared::locked` section (a
/// cancel by id among them, W6) calls it, almost always with nothing to
/// release, and a call for that cost about 18 instructions.
#[inline]
pub(crate) fn release(expired: Vec<Arc<dyn Job>>) {
    if !expired.is_empty() {
        release_all(expired);
    }
}

#[cold]
#[inline(never)]
fn release_all(expired: Vec<Arc<dyn Job>>) {
    for job in expired {
        job.release();
    }
}
