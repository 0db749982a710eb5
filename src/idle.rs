//! Which workers wait for work, and which of them to wake once the
//! cluster's lock is released.
//!
//! Each worker has its own wake slot ([`WorkerWake`](crate::signal::WorkerWake)),
//! so a submit wakes one chosen worker directly: one flag and one waker,
//! instead of a shared `Notify`'s waiter list and its second lock (measured:
//! about 300 fewer instructions per idle-to-busy round trip, W4: `bench/README.md#w4-round-trip`).
//!
//! Invariant: a worker is in the set from the claim that found nothing until
//! something that makes a task due (a submit, a requeue, a promotion, or a
//! cancel that ends a drain) picks it, or until its own next claim finds
//! work. Picking happens under the cluster's lock, in the same critical
//! section that made the work due, so no due task is left while a worker
//! sleeps. (A worker that left for good at a shutdown may stay in the set;
//! the phase keeps anything from waiting on it. One sent home by a shrink,
//! and every worker while the cluster is paused, is kept out of it: see
//! `crate::flow`.)

/// See the module docs. Lives in [`Engine`](crate::engine::Engine), under its lock.
#[derive(Debug)]
pub(crate) struct IdleWorkers {
    /// One bit per worker.
    bits: Vec<u64>,
    count: usize,
    /// Picked under the lock, woken after it. Usually one per critical
    /// section, kept inline so that a wake-up allocates nothing.
    first: Option<u16>,
    more: Vec<u16>,
}

/// The workers picked in one critical section (at least one).
pub(crate) struct Picked {
    first: u16,
    more: Vec<u16>,
}

impl Picked {
    /// Calls `f` with each picked worker: the first inline, the rest (rare)
    /// out of line, so that waking the usual single worker walks no
    /// iterator (a chain of `once` and a `Vec`'s cost about 20 instructions
    /// per wake-up, W4).
    #[inline]
    pub(crate) fn each(self, mut f: impl FnMut(u16)) {
        f(self.first);
        if !self.more.is_empty() {
            self.more.into_iter().for_each(f);
        }
    }
}

/// Clears the lowest set bit of `word`, the `i`-th word of the set (not
/// zero), and returns the worker it stood for. (`bits` holds one bit per
/// worker, and workers are numbered by u16.)
#[inline]
fn take_lowest(word: &mut u64, i: usize) -> u16 {
    let bit = word.trailing_zeros();
    *word &= !(1 << bit);
    (i * 64) as u16 + bit as u16
}

impl IdleWorkers {
    pub(crate) fn new(workers: usize) -> Self {
        IdleWorkers {
            bits: vec![0; workers.div_ceil(64)],
            count: 0,
            first: None,
            more: Vec::new(),
        }
    }

    fn word_bit(w: u16) -> (usize, u64) {
        (usize::from(w / 64), 1 << (w % 64))
    }

    /// Worker `w` found nothing to do and will wait.
    pub(crate) fn park(&mut self, w: u16) {
        let (i, b) = Self::word_bit(w);
        if self.bits[i] & b == 0 {
            self.bits[i] |= b;
            self.count += 1;
        }
    }

    /// Worker `w` claimed work: it is no longer waiting, even if nobody
    /// picked it (it was woken for another reason and found work).
    pub(crate) fn unpark(&mut self, w: u16) {
        if self.count == 0 {
            // Every claim asks: under load nobody waits, so skip the bits.
            return;
        }
        let (i, b) = Self::word_bit(w);
        if self.bits[i] & b != 0 {
            self.bits[i] &= !b;
            self.count -= 1;
        }
    }

    /// Picks up to `n` waiting workers to wake (lowest index first: the
    /// same few workers stay warm under light load). One pass over the bits.
    /// Inline up to the count: under load nobody waits, and every submit asks.
    #[inline]
    pub(crate) fn pick(&mut self, n: usize) {
        if self.count != 0 {
            self.pick_waiting(n);
        }
    }

    fn pick_waiting(&mut self, n: usize) {
        // One task made due and nothing picked yet in this section (a
        // submit, W4): the lowest waiting worker, without the loop's
        // bookkeeping.
        if n == 1 && self.first.is_none() {
            if let Some((i, word)) = self.bits.iter_mut().enumerate().find(|(_, w)| **w != 0) {
                self.count -= 1;
                self.first = Some(take_lowest(word, i));
            }
            return;
        }
        let mut left = n.min(self.count);
        for (i, word) in self.bits.iter_mut().enumerate() {
            while left > 0 && *word != 0 {
                left -= 1;
                self.count -= 1;
                let w = take_lowest(word, i);
                if self.first.is_none() {
                    self.first = Some(w);
                } else {
                    self.more.push(w);
                }
            }
            if left == 0 {
                break;
            }
        }
    }

    /// Makes room for workers numbered below `workers` (a grown pool).
    pub(crate) fn ensure(&mut self, workers: usize) {
        let words = workers.div_ceil(64);
        if self.bits.len() < words {
            self.bits.resize(words, 0);
        }
    }

    /// Takes worker `w` out of the set; `true` if it was waiting there.
    pub(crate) fn remove(&mut self, w: u16) -> bool {
        let (i, b) = Self::word_bit(w);
        match self.bits.get_mut(i) {
            Some(word) if *word & b != 0 => {
                *word &= !b;
                self.count -= 1;
                true
            }
            _ => false,
        }
    }

    /// Moves every worker waiting in `other` into this set.
    pub(crate) fn absorb(&mut self, other: &mut IdleWorkers) {
        self.ensure(other.bits.len() * 64);
        for (mine, theirs) in self.bits.iter_mut().zip(other.bits.iter_mut()) {
            let new = *theirs & !*mine;
            self.count += new.count_ones() as usize;
            *mine |= std::mem::take(theirs);
        }
        other.count = 0;
    }

    /// How many workers wait in the set.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Takes the workers picked since the last call, to wake after
    /// unlocking; `None` (the common case, and cheap) if there are none.
    pub(crate) fn take_picked(&mut self) -> Option<Picked> {
        let first = self.first.take()?;
        Some(Picked {
            first,
            more: std::mem::take(&mut self.more),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picked(idle: &mut IdleWorkers) -> Vec<u16> {
        let mut out = Vec::new();
        if let Some(p) = idle.take_picked() {
            p.each(|w| out.push(w));
        }
        out
    }

    #[test]
    fn picks_each_waiting_worker_once() {
        let mut idle = IdleWorkers::new(130);
        for w in [129, 3, 64, 3] {
            idle.park(w);
        }
        idle.pick(1);
        assert_eq!(picked(&mut idle), vec![3]);
        idle.pick(10);
        assert_eq!(picked(&mut idle), vec![64, 129]);
        idle.pick(1);
        assert_eq!(picked(&mut idle), Vec::<u16>::new());
    }

    #[test]
    fn single_picks_take_the_lowest_waiting_worker_each() {
        let mut idle = IdleWorkers::new(200);
        for w in [150, 70, 2] {
            idle.park(w);
        }
        // Two tasks made due in one section: the second pick adds to the first.
        idle.pick(1);
        idle.pick(1);
        assert_eq!(picked(&mut idle), vec![2, 70]);
        idle.pick(1);
        assert_eq!(picked(&mut idle), vec![150]);
        assert_eq!(idle.len(), 0);
        idle.pick(1);
        assert_eq!(picked(&mut idle), Vec::<u16>::new());
    }

    #[test]
    fn a_worker_that_claimed_work_is_not_picked() {
        let mut idle = IdleWorkers::new(2);
        idle.park(0);
        idle.park(1);
        idle.unpark(0);
        idle.unpark(0);
        idle.pick(2);
        assert_eq!(picked(&mut idle), vec![1]);
    }

    #[test]
    fn absorb_moves_waiting_workers_and_remove_takes_one_out() {
        let mut held = IdleWorkers::new(200);
        let mut idle = IdleWorkers::new(2);
        held.park(150);
        held.park(1);
        idle.park(1);
        idle.absorb(&mut held);
        assert_eq!((idle.len(), held.len()), (2, 0));
        assert!(idle.remove(150));
        assert!(!idle.remove(150));
        assert!(!idle.remove(9999));
        idle.pick(5);
        assert_eq!(picked(&mut idle), vec![1]);
    }
}
