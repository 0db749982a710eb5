//! The engine's side of a bounded queue (`crate::capacity` is the user's
//! side): counting pending tasks against the capacity, refusing or dropping
//! at a full queue, and the rooms held for the submits about to use them.
//!
//! Costs nothing to a cluster without a capacity: `Engine::capacity` is
//! `None`, and a submit tests only that.
//!
//! Pending tasks are the queued ones (due, scheduled, requeued retries, set
//! aside by a rate limiter, waiting on a key) and
//! the dependents waiting for their parents: everything admitted that no
//! worker holds. Running and parked attempts are not pending.
//!
//! Invariants:
//! 1. A submit is admitted when `pending + reserved < limit`, or when it
//!    holds a reserved room (then it uses it: `reserved` falls by one as
//!    `pending` rises by one). A requeued retry and a released dependent
//!    never pass here: they keep the place they had.
//! 2. Rooms go to waiters in the order they came (`order`), and only while
//!    `pending + reserved < limit`: a granted room is counted in
//!    `reserved` until its submit uses it or its future is dropped, so no
//!    later submit can take it. Rooms are granted when the lock is released
//!    (`take_outbox`, which every unlock calls while anyone waits), so no
//!    place that frees room needs to know about waiters.
//! 3. A dropped future gives back what it held: its place in line, or its
//!    granted room (which the next unlock grants to the next waiter).
//! 4. A victim of `Overflow::DropLowest` is finalized like a cancelled
//!    queued task (engine invariant 2): its outcome, `TaskError::Dropped`,
//!    is delivered exactly once.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::task::Waker;

use super::{is_live, Engine, Phase};
use crate::capacity::Overflow;
use crate::error::SubmitError;
use crate::job::Forced;

thread_local! {
    /// The capacity state (by address) whose reserved room the next submit
    /// on this thread uses; 0: none. Set by `crate::capacity` around one
    /// `submit` call, which runs no user code before the engine reads it.
    static HOLDS_ROOM: Cell<usize> = const { Cell::new(0) };
}

/// The engine's bounded-queue state, made at build when a capacity is set.
pub(crate) struct Capacity {
    limit: usize,
    overflow: Overflow,
    /// Rooms held for submits about to use them (invariant 2).
    reserved: usize,
    next_ticket: u64,
    /// Waiters in the order they came; tickets no longer in `waiting` are
    /// skipped (their futures were dropped).
    order: VecDeque<u64>,
    waiting: HashMap<u64, Waker>,
    /// Waiters whose room is reserved, until their future takes it.
    granted: HashSet<u64>,
    rejected: u64,
    dropped: u64,
}

impl Capacity {
    pub(crate) fn new(limit: usize, overflow: Overflow) -> Self {
        Capacity {
            limit,
            overflow,
            reserved: 0,
            next_ticket: 0,
            order: VecDeque::new(),
            waiting: HashMap::new(),
            granted: HashSet::new(),
            rejected: 0,
            dropped: 0,
        }
    }

    fn key(&self) -> usize {
        self as *const Capacity as usize
    }
}

/// What a request for room found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// No capacity, or the cluster takes no tasks: submit as usual (it
    /// then reports its own error, if any).
    Free,
    /// A room is reserved for the next submit on this thread: call it
    /// through [`hold_room`].
    Reserved(usize),
    /// Full, and the policy does not wait.
    Full(usize),
    /// In line for a room; the waker is called when it comes.
    Waiting,
}

/// Runs `submit` using the room reserved under `key` (see [`Room`]), and
/// gives the room back if the submit did not use it (it was refused for
/// another reason, or joined another task).
///
/// The mark is saved and restored around the call: user code the submit
/// runs after unlocking (the `Drop` of a refused body) may submit again on
/// this thread, and each call must account for its own room only.
pub(crate) fn hold_room<R>(key: usize, release: impl FnOnce(), submit: impl FnOnce() -> R) -> R {
    let outer = HOLDS_ROOM.with(|h| h.replace(key));
    let r = submit();
    if HOLDS_ROOM.with(|h| h.replace(outer)) == key {
        release();
    }
    r
}

/// Wakes a waiter when dropped: wakers go in the engine's trash, dropped
/// after unlocking.
struct WakeOnDrop(Waker);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.wake_by_ref();
    }
}

impl Engine {
    /// Sets the cluster's capacity (at build, before any submit).
    pub(crate) fn set_capacity(&mut self, limit: usize, overflow: Overflow) {
        self.capacity = Some(Box::new(Capacity::new(limit, overflow)));
    }

    /// Tasks that count against the capacity (see the module docs).
    pub(crate) fn pending(&self) -> usize {
        self.queue.len() + self.waiting() - self.parked() + self.limited() + self.keys_waiting()
    }

    /// The capacity, and the counts of refused and dropped tasks.
    pub(crate) fn capacity_stats(&self) -> (Option<usize>, u64, u64) {
        match self.capacity.as_deref() {
            None => (None, 0, 0),
            Some(c) => (Some(c.limit), c.rejected, c.dropped),
        }
    }

    /// Whether this thread holds a room here (see [`hold_room`]).
    fn holds_room(&self) -> bool {
        self.capacity
            .as_deref()
            .is_some_and(|c| HOLDS_ROOM.with(|h| h.get()) == c.key())
    }

    /// Uses the room this thread holds, if it holds one here.
    fn take_held_room(&mut self) -> bool {
        if !self.holds_room() {
            return false;
        }
        HOLDS_ROOM.with(|h| h.set(0));
        self.capacity.as_deref_mut().expect("bounded").reserved -= 1;
        true
    }

    /// Whether a task named `name` would be refused as a duplicate at `now`.
    fn name_taken_at(&self, name: Option<&Arc<str>>, now: i64) -> bool {
        name.and_then(|n| self.slot_named(n))
            .is_some_and(|old| self.still_holds_id(old, now))
    }

    /// [`name_taken_at`](Self::name_taken_at) now: one lookup, and the
    /// clock is read only when the name is held.
    fn name_taken(&self, name: Option<&Arc<str>>) -> bool {
        name.and_then(|n| self.slot_named(n))
            .is_some_and(|old| self.still_holds_id(old, self.clock.now()))
    }

    /// Whether `n` more tasks fit now (rooms reserved for others count as taken).
    fn fits(&self, n: usize) -> bool {
        let cap = self.capacity.as_deref().expect("bounded");
        self.pending()
            .saturating_add(cap.reserved)
            .saturating_add(n)
            <= cap.limit
    }

    fn refuse(&mut self) -> SubmitError {
        let cap = self.capacity.as_deref_mut().expect("bounded");
        cap.rejected += 1;
        SubmitError::Full {
            capacity: cap.limit,
        }
    }

    /// The capacity check of `Engine::submit` (invariant 1), after its
    /// phase check and before anything changes: admits, drops the lowest
    /// queued task for this one, or refuses. A submit the normal path will
    /// refuse for its id passes here untouched.
    #[cold]
    #[inline(never)]
    pub(super) fn admit_bounded(
        &mut self,
        name: Option<&Arc<str>>,
        priority: i32,
        now: i64,
    ) -> Result<(), SubmitError> {
        if self.name_taken_at(name, now) {
            return Ok(()); // `submit` refuses it as a duplicate
        }
        if self.take_held_room() || self.fits(1) {
            return Ok(());
        }
        let overflow = self.capacity.as_deref().expect("bounded").overflow;
        if overflow == Overflow::DropLowest && self.drop_lower_than(priority) {
            return Ok(());
        }
        Err(self.refuse())
    }

    /// The capacity check of a group admission (dependents, graphs): all
    /// `n` fit, or none is admitted. A full queue drops nothing for a group.
    #[cold]
    #[inline(never)]
    pub(super) fn admit_group_bounded(&mut self, n: usize) -> Result<(), SubmitError> {
        // A held room counts as one of the `n` (and is given back by its
        // holder if the group is refused).
        let held = usize::from(self.holds_room());
        if !self.fits(n.saturating_sub(held)) {
            return Err(self.refuse());
        }
        self.take_held_room();
        Ok(())
    }

    /// Drops the lowest-ranked queued task if its priority is below
    /// `priority` (see `Queue::worst`); returns whether one was dropped.
    fn drop_lower_than(&mut self, priority: i32) -> bool {
        let entries = &self.entries;
        let Some(victim) = self.queue.worst(|i| is_live(entries, i)) else {
            return false;
        };
        if victim.priority >= priority {
            return false;
        }
        // As a cancel of a queued task: a limiter's bucket that woke it
        // gets its turn back (else it keeps it for good); finalized first,
        // so that its queue entry reads as dead.
        if self.limits.is_some() {
            self.unwake_limited(victim.slot);
        }
        let d = self.finalize(victim.slot, Some(Forced::Dropped));
        self.send_later(d);
        let entries = &self.entries;
        self.queue.forget(|i| is_live(entries, i));
        self.capacity.as_deref_mut().expect("bounded").dropped += 1;
        true
    }

    /// A request for room by a submit about to happen (`try_submit`,
    /// `submit_wait`) for a task of `priority`. `ticket` is the caller's
    /// place in line, `waker` its waker if it may wait (only under
    /// `Overflow::Wait`).
    pub(crate) fn request_room(
        &mut self,
        name: Option<&Arc<str>>,
        priority: i32,
        ticket: &mut Option<u64>,
        waker: Option<&Waker>,
    ) -> Room {
        let accepting = matches!(self.phase, Phase::Idle | Phase::Running);
        if ticket.is_none() && self.capacity.is_some() && self.name_taken(name) {
            // The submit will be refused for its id: nothing to reserve,
            // and above all nothing to drop for it.
            return Room::Free;
        }
        let Some(cap) = self.capacity.as_deref_mut() else {
            return Room::Free;
        };
        let key = cap.key();
        if let Some(t) = *ticket {
            if cap.granted.remove(&t) {
                *ticket = None;
                return Room::Reserved(key);
            }
            match (cap.waiting.get_mut(&t), waker) {
                (Some(w), Some(new)) if accepting => {
                    if !w.will_wake(new) {
                        *w = new.clone();
                    }
                    return Room::Waiting;
                }
                _ => {
                    // Sent away by a shutdown: submit, to be refused.
                    cap.waiting.remove(&t);
                    *ticket = None;
                    return Room::Free;
                }
            }
        }
        if !accepting {
            return Room::Free;
        }
        let line_empty = cap.waiting.is_empty();
        if line_empty && self.fits(1) {
            self.capacity.as_deref_mut().expect("bounded").reserved += 1;
            return Room::Reserved(key);
        }
        let cap = self.capacity.as_deref_mut().expect("bounded");
        match (cap.overflow, waker) {
            (Overflow::Wait, Some(w)) => {
                let t = cap.next_ticket;
                cap.next_ticket += 1;
                cap.order.push_back(t);
                cap.waiting.insert(t, w.clone());
                *ticket = Some(t);
                // Every unlock now grants rooms (invariant 2).
                self.has_outbox = true;
                Room::Waiting
            }
            (Overflow::DropLowest, _) if self.drop_lower_than(priority) => {
                self.capacity.as_deref_mut().expect("bounded").reserved += 1;
                Room::Reserved(key)
            }
            _ => {
                let _ = self.refuse();
                Room::Full(self.capacity.as_deref().expect("bounded").limit)
            }
        }
    }

    /// Gives back what a submit about to happen held (invariant 3): its
    /// place in line (`ticket`), its granted room, or (`held`) the room
    /// reserved for it that its submit did not use.
    pub(crate) fn release_room(&mut self, ticket: Option<u64>, held: bool) {
        let Some(cap) = self.capacity.as_deref_mut() else {
            return;
        };
        if let Some(t) = ticket {
            cap.waiting.remove(&t);
            if cap.granted.remove(&t) {
                cap.reserved -= 1;
            }
        }
        if held {
            cap.reserved -= 1;
        }
        if !cap.waiting.is_empty() {
            self.has_outbox = true;
        }
    }

    /// Grants free rooms to waiters, first come first served, or sends them
    /// all away once the cluster takes no more tasks. Called by
    /// `take_outbox` (invariant 2); the wakers go in the trash.
    pub(super) fn grant_rooms(&mut self) {
        let accepting = matches!(self.phase, Phase::Idle | Phase::Running);
        let pending = self.pending();
        let Some(cap) = self.capacity.as_deref_mut() else {
            return;
        };
        let mut woken = Vec::new();
        while let Some(&t) = cap.order.front() {
            if !cap.waiting.contains_key(&t) {
                cap.order.pop_front(); // its future was dropped
                continue;
            }
            if accepting && pending.saturating_add(cap.reserved) >= cap.limit {
                break;
            }
            cap.order.pop_front();
            if let Some(w) = cap.waiting.remove(&t) {
                if accepting {
                    cap.granted.insert(t);
                    cap.reserved += 1;
                } else {
                    // Kept in `waiting`: its next poll learns it was sent away.
                    cap.waiting.insert(t, w.clone());
                }
                woken.push(w);
            }
            if !accepting && cap.order.is_empty() {
                break;
            }
        }
        for w in woken {
            self.drop_later(Box::new(WakeOnDrop(w)));
        }
    }

    /// Whether any submit waits for room: every unlock must then grant.
    pub(super) fn room_awaited(&self) -> bool {
        self.capacity
            .as_deref()
            .is_some_and(|c| !c.order.is_empty())
    }
}
