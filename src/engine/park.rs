//! The engine's side of parked attempts (`crate::park` is the mechanism):
//! how many there are, the ready list workers resume them from, and the
//! wait edges that tell a wait which would close a cycle.
//!
//! A parked task stays `Running` in the registry (cancel and shutdown
//! reach it as any running task), but it is counted as parked, not running:
//! it holds no worker. Costs nothing to a cluster that never parked:
//! `Engine::parking` is `None` until the first park, and `claim` only
//! checks that.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Engine, Next, Phase, State};
use crate::error::DependencyCause;
use crate::park::ParkSlot;
use crate::task::TaskId;

#[derive(Default)]
pub(super) struct Parking {
    /// Parked attempts whose wait is over, to resume, oldest first.
    ready: VecDeque<Arc<ParkSlot>>,
    /// Parked attempts, ready or not.
    parked: usize,
    /// Waiter `seq` to the `seq`s of the tasks it waits for (a body may
    /// wait for several at once).
    waits: HashMap<u64, Vec<u64>>,
}

impl Engine {
    fn parking(&mut self) -> &mut Parking {
        self.parking.get_or_insert_with(Box::default)
    }

    /// Attempts parked now.
    pub(crate) fn parked(&self) -> usize {
        self.parking.as_ref().map_or(0, |p| p.parked)
    }

    /// Parked attempts whose wait is over, waiting for a worker.
    pub(crate) fn parked_ready(&self) -> usize {
        self.parking.as_ref().map_or(0, |p| p.ready.len())
    }

    /// A worker parks the attempt it ran: it no longer counts as running.
    pub(crate) fn park(&mut self) {
        self.running -= 1;
        self.parking().parked += 1;
    }

    /// A parked attempt's wait is over: a worker is to resume it.
    pub(crate) fn resume_later(&mut self, slot: Arc<ParkSlot>) {
        self.parking().ready.push_back(slot);
        self.note_ready(1);
    }

    /// Called by `claim` when anything was ever parked: the oldest ready
    /// attempt, which then counts as running again. In a stop, workers stay
    /// while attempts are parked (idle until one is ready), and all leave
    /// once the last is resumed.
    pub(super) fn claim_parked(&mut self, worker: u16) -> Option<Next> {
        let p = self.parking.as_deref_mut()?;
        let terminal = matches!(self.phase, Phase::Stopping | Phase::Cancelled);
        if let Some(slot) = p.ready.pop_front() {
            p.parked -= 1;
            if p.parked == 0 && terminal {
                // Every idle worker leaves now.
                self.idle.pick(usize::MAX);
            }
            self.running += 1;
            self.idle.unpark(worker);
            return Some(Next::Resume(slot));
        }
        if terminal && p.parked > 0 {
            self.idle.park(worker);
            return Some(Next::Idle);
        }
        None
    }

    /// Records that `waiter` waits for `target` unless that would close a
    /// cycle of waits and dependencies (a deadlock): `Err(Cycle)` then, or
    /// `Err(Unknown)` if `target` is not known. Returns the target's `seq`,
    /// to [`unwait`](Self::unwait) when the wait ends.
    pub(crate) fn add_wait(
        &mut self,
        waiter: u64,
        target: &TaskId,
    ) -> Result<u64, DependencyCause> {
        let slot = self.lookup(target).ok_or(DependencyCause::Unknown)?;
        let e = &self.entries[slot as usize];
        let target_seq = e.job.seq();
        if target_seq == waiter {
            return Err(DependencyCause::Cycle);
        }
        if e.state != State::Retained {
            // Whatever `target` waits for, transitively (its waits, and its
            // parents if it is a waiting dependent), must not be `waiter`.
            let mut stack = vec![target_seq];
            let mut seen = std::collections::HashSet::new();
            while let Some(s) = stack.pop() {
                if s == waiter {
                    return Err(DependencyCause::Cycle);
                }
                if !seen.insert(s) {
                    continue;
                }
                if let Some(ts) = self.parking.as_ref().and_then(|p| p.waits.get(&s)) {
                    stack.extend(ts.iter().copied());
                }
                stack.extend(self.parents_of(s));
            }
            self.parking()
                .waits
                .entry(waiter)
                .or_default()
                .push(target_seq);
        }
        Ok(target_seq)
    }

    /// The wait of `waiter` for `target` ended.
    pub(crate) fn unwait(&mut self, waiter: u64, target: u64) {
        let Some(p) = self.parking.as_deref_mut() else {
            return;
        };
        if let Some(ts) = p.waits.get_mut(&waiter) {
            if let Some(i) = ts.iter().position(|&t| t == target) {
                ts.swap_remove(i);
            }
            if ts.is_empty() {
                p.waits.remove(&waiter);
            }
        }
    }

    /// Drops the parked attempts still queued (the engine is going away).
    pub(super) fn abandon_parked(&mut self) {
        if let Some(p) = self.parking.as_deref_mut() {
            for slot in p.ready.drain(..) {
                slot.abandon();
            }
        }
    }
}
