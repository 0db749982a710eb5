//! The workers' wake slots, by worker index, in a table that can grow
//! while the cluster runs ([`Cluster::resize`](crate::Cluster::resize))
//! without a lock on the way to a slot.
//!
//! The workers the cluster was built with keep their slots in one boxed
//! slice, so finding one costs what indexing a slice costs (the bounds
//! check is the only branch). Workers added later find theirs in segments
//! allocated once, on the first grow that needs them, and never freed
//! (a shrink keeps them for the next grow): segment `s` (from 1) holds
//! `base << (s - 1)` slots, so 16 segments cover every u16 index for any
//! `base >= 1`.
//!
//! Invariant: a slot exists before any worker with its index is spawned,
//! and so before anything can look it up (a wake-up needs a worker that
//! parked or claimed, which needs the worker).

use std::sync::OnceLock;

use crate::signal::WorkerWake;

const SEGMENTS: usize = 16;

pub(crate) struct WakeTable {
    first: Box<[WorkerWake]>,
    more: [OnceLock<Box<[WorkerWake]>>; SEGMENTS],
}

/// Segment (from 0 in `more`) and offset in it of the `j`th slot after `first`.
fn locate(base: usize, j: usize) -> (usize, usize) {
    // Segment s (1-based) starts at base * (2^(s-1) - 1).
    let q = j / base + 1;
    let s = (usize::BITS - q.leading_zeros()) as usize;
    let start = base * ((1 << (s - 1)) - 1);
    (s - 1, j - start)
}

impl WakeTable {
    pub(crate) fn new(workers: usize) -> Self {
        WakeTable {
            first: (0..workers.max(1)).map(|_| WorkerWake::default()).collect(),
            more: Default::default(),
        }
    }

    /// Allocates the slots of workers numbered below `workers`.
    pub(crate) fn ensure(&self, workers: usize) {
        let base = self.first.len();
        if workers <= base {
            return;
        }
        let (last, _) = locate(base, workers - 1 - base);
        for (s, seg) in self.more.iter().enumerate().take(last + 1) {
            seg.get_or_init(|| (0..base << s).map(|_| WorkerWake::default()).collect());
        }
    }

    /// Worker `w`'s slot, if it was allocated.
    pub(crate) fn get(&self, w: usize) -> Option<&WorkerWake> {
        match self.first.get(w) {
            Some(wake) => Some(wake),
            None => self.get_more(w),
        }
    }

    #[cold]
    fn get_more(&self, w: usize) -> Option<&WorkerWake> {
        let base = self.first.len();
        let (s, i) = locate(base, w.checked_sub(base)?);
        self.more.get(s)?.get()?.get(i)
    }

    /// Every allocated slot.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &WorkerWake> {
        self.first.iter().chain(
            self.more
                .iter()
                .filter_map(OnceLock::get)
                .flat_map(|s| s.iter()),
        )
    }
}

impl std::ops::Index<usize> for WakeTable {
    type Output = WorkerWake;

    /// Panics on a slot never allocated: the invariant rules it out.
    fn index(&self, w: usize) -> &WorkerWake {
        self.get(w)
            .expect("a worker's wake slot exists before the worker")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_u16_index_has_one_distinct_slot_once_allocated() {
        for base in [1usize, 3, 64] {
            let t = WakeTable::new(base);
            assert!(t.get(base).is_none());
            t.ensure(usize::from(u16::MAX));
            let mut seen = std::collections::HashSet::new();
            for w in 0..usize::from(u16::MAX) {
                let p = t.get(w).expect("allocated") as *const WorkerWake;
                assert!(seen.insert(p as usize), "slot {w} shared (base {base})");
            }
        }
    }

    #[test]
    fn grows_by_segments() {
        let t = WakeTable::new(2);
        t.ensure(3);
        assert!(t.get(2).is_some() && t.get(3).is_some());
        assert!(t.get(4).is_none());
        assert_eq!(t.iter().count(), 4);
    }
}
