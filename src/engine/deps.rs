//! The engine's side of dependencies (`crate::deps` is the user's side):
//! admitting dependents (alone or as a graph, all or nothing), keeping them
//! `Waiting` until their parents are decided, and the cascade that tells
//! children when a parent's outcome is decided.
//!
//! Costs nothing to a cluster that never saw a dependent: `Engine::deps` is
//! `None` until the first one, and `finalize` only checks that.
//!
//! Exactly once: a waiting child has one `Waiter` record; whatever decides
//! it first (its last parent, a failed parent, a cancel, a shutdown)
//! removes the record, and every later event for it finds none.

use std::collections::HashMap;
use std::sync::Arc;

use super::{current, Delivery, Engine, Entry, Phase, State, NEXT_SEQ_BLOCK, SEQ_BLOCK};
use crate::clock::is_due;
use crate::deps::{OnParentFailure, Subscribed, Target};
use crate::error::{DependencyCause, SubmitError};
use crate::job::{Forced, Job};
use crate::queue::{Item, Slot};
use crate::task::TaskId;

/// A task ready to be admitted: its cell, and its start (read before locking).
pub(crate) struct NewTask {
    pub(crate) job: Arc<dyn Job>,
    pub(crate) start: i64,
}

#[derive(Default)]
pub(super) struct Deps {
    /// Parent `seq` to the edges of its waiting children. Edges of children
    /// decided meanwhile stay until the parent ends (they then find no
    /// `Waiter`).
    children: HashMap<u64, Vec<Edge>>,
    /// Child `seq` to what it waits for.
    waiting: HashMap<u64, Waiter>,
    /// Parents whose outcome is decided, to tell their children: a work
    /// list, so that a long chain failing does not recurse.
    done: Vec<Done>,
    cascading: bool,
}

#[derive(Clone, Copy)]
struct Edge {
    child_slot: Slot,
    child_seq: u64,
    policy: OnParentFailure,
}

struct Waiter {
    slot: Slot,
    /// Its parents still running or waiting (for the cycle check of waits).
    parents: Vec<u64>,
    /// Parents not yet finished, plus lent outcomes not yet copied.
    left: u32,
    start: i64,
}

struct Done {
    seq: u64,
    id: TaskId,
    /// `None`: it produced a value.
    cause: Option<DependencyCause>,
}

/// What a group admission leaves to do after unlocking.
pub(crate) struct Admitted {
    /// Cached tasks whose ids the new ones took (to release).
    pub(crate) replaced: Vec<Arc<dyn Job>>,
    /// Lent parent outcomes to copy; then `Engine::copied` with `(slot, seq)`.
    pub(crate) later: Vec<(Slot, u64, CopyLater)>,
}

/// Copies a lent parent outcome into a child's slot (after unlocking).
pub(crate) type CopyLater = Box<dyn FnOnce() + Send>;

/// A parent as found at submit.
enum ParentRef {
    Live {
        seq: u64,
    },
    /// Finished and retained: it counts as it stands.
    Done {
        id: TaskId,
        cause: Option<DependencyCause>,
    },
    /// An earlier node of the same group.
    Node(usize),
}

fn id_of(job: &dyn Job, slot: Slot) -> TaskId {
    match job.name() {
        Some(n) => TaskId::named(n.clone()),
        None => TaskId::generated(job.seq(), slot),
    }
}

fn forced_cause(f: Forced) -> DependencyCause {
    match f {
        Forced::Cancelled => DependencyCause::Cancelled,
        Forced::Shutdown => DependencyCause::Shutdown,
        Forced::Dropped => DependencyCause::Dropped,
        Forced::Replaced => DependencyCause::Replaced,
    }
}

impl Engine {
    /// Dependents waiting for their parents, and parked attempts.
    pub(crate) fn waiting(&self) -> usize {
        self.deps.as_ref().map_or(0, |d| d.waiting.len()) + self.parked()
    }

    /// The parents the waiting dependent `seq` still waits for.
    pub(super) fn parents_of(&self, seq: u64) -> Vec<u64> {
        self.deps
            .as_ref()
            .and_then(|d| d.waiting.get(&seq))
            .map(|w| w.parents.clone())
            .unwrap_or_default()
    }

    fn deps_mut(&mut self) -> &mut Deps {
        self.deps.get_or_insert_with(Box::default)
    }

    /// Called by `finalize` (when any dependent was ever seen) before the
    /// entry goes: forgets a waiting task's record, and queues the task's
    /// outcome for its children. Returns whether to run the cascade now.
    pub(super) fn note_final(&mut self, slot: Slot, forced: Option<Forced>) -> bool {
        let e = &self.entries[slot as usize];
        let seq = e.job.seq();
        let Some(deps) = self.deps.as_deref_mut() else {
            return false;
        };
        if e.state == State::Waiting {
            deps.waiting.remove(&seq);
        }
        if !deps.children.contains_key(&seq) {
            return false;
        }
        let cause = match forced {
            Some(f) => Some(forced_cause(f)),
            None => e.job.outcome_cause(),
        };
        deps.done.push(Done {
            seq,
            id: id_of(&*e.job, slot),
            cause,
        });
        !deps.cascading
    }

    /// Tells the children of every decided parent, until none is left.
    pub(super) fn cascade(&mut self) {
        self.deps_mut().cascading = true;
        while let Some(done) = self.deps_mut().done.pop() {
            let Some(edges) = self.deps_mut().children.remove(&done.seq) else {
                continue;
            };
            for edge in edges {
                self.parent_done(edge, &done.id, done.cause);
            }
        }
        self.deps_mut().cascading = false;
    }

    /// One parent of `edge`'s child is decided.
    fn parent_done(&mut self, edge: Edge, parent: &TaskId, cause: Option<DependencyCause>) {
        let Some(w) = self.deps_mut().waiting.get_mut(&edge.child_seq) else {
            return; // decided already (cancelled, shut down, another parent)
        };
        match (cause, edge.policy) {
            (Some(cause), OnParentFailure::Propagate | OnParentFailure::Skip) => {
                let skipped = edge.policy == OnParentFailure::Skip;
                self.entries[edge.child_slot as usize]
                    .job
                    .impose(parent.clone(), cause, skipped);
                // Removes the `Waiter` (`note_final`) and tells its children.
                let d = self.finalize(edge.child_slot, None);
                self.send_later(d);
            }
            _ => {
                w.left -= 1;
                if w.left == 0 {
                    self.release(edge.child_seq);
                }
            }
        }
    }

    /// Queues a child whose parents are all done (or shuts it down if the
    /// cluster no longer starts tasks; a drain runs it only if it is due).
    fn release(&mut self, child_seq: u64) {
        let Some(w) = self.deps_mut().waiting.remove(&child_seq) else {
            return;
        };
        let e = &mut self.entries[w.slot as usize];
        e.state = State::Queued;
        let item = Item {
            slot: w.slot,
            seq: child_seq,
            start: w.start,
            priority: e.job.priority(),
        };
        let now = self.clock.now();
        let admit = match self.phase {
            Phase::Idle | Phase::Running => true,
            Phase::Draining => is_due(w.start, now),
            Phase::Stopping | Phase::Cancelled => false,
        };
        if admit {
            self.push(item, now, false);
        } else {
            let d = self.finalize(w.slot, Some(Forced::Shutdown));
            self.send_later(d);
        }
    }

    /// Shuts down every waiting dependent (stop, cancel).
    pub(super) fn shut_down_waiting(&mut self, out: &mut Vec<Delivery>) {
        let Some(deps) = self.deps.as_deref() else {
            return;
        };
        let waiting: Vec<(u64, Slot)> = deps.waiting.iter().map(|(&s, w)| (s, w.slot)).collect();
        for (seq, slot) in waiting {
            if self.deps_mut().waiting.contains_key(&seq) {
                out.push(self.finalize(slot, Some(Forced::Shutdown)));
            }
        }
    }

    /// Lent parent outcomes were copied for these children: each may go.
    pub(crate) fn copied(&mut self, children: &[(Slot, u64)]) {
        for &(_, seq) in children {
            let Some(w) = self.deps_mut().waiting.get_mut(&seq) else {
                continue;
            };
            w.left -= 1;
            if w.left == 0 {
                self.release(seq);
            }
        }
    }

    fn take_seq(&mut self) -> u64 {
        if self.next_seq == self.seq_end {
            self.next_seq =
                NEXT_SEQ_BLOCK.fetch_add(SEQ_BLOCK, std::sync::atomic::Ordering::Relaxed);
            self.seq_end = self.next_seq + SEQ_BLOCK;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Admits `tasks` (each may have parents, in the cluster or earlier in
    /// `tasks`) all at once, or none of them: everything is checked before
    /// anything changes.
    pub(crate) fn submit_group(&mut self, tasks: &[NewTask]) -> Result<Admitted, SubmitError> {
        if !matches!(self.phase, Phase::Idle | Phase::Running) {
            return Err(SubmitError::ShuttingDown);
        }
        if self.entries.len().saturating_add(tasks.len()) >= u32::MAX as usize {
            return Err(SubmitError::TooManyTasks);
        }
        if self.capacity.is_some() {
            self.admit_group_bounded(tasks.len())?;
        }
        // The group's own ids: an edge by id to an earlier task of the group
        // is an edge to that task (it is not in the cluster yet).
        let mut names: HashMap<Arc<str>, usize> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if let Some(name) = t.job.name() {
                let taken = self
                    .slot_named(name)
                    .is_some_and(|old| self.entries[old as usize].state != State::Retained);
                if taken || names.insert(name.clone(), i).is_some() {
                    return Err(SubmitError::DuplicateId(TaskId::named(name.clone())));
                }
            }
        }
        // Parents: found, and of the types their edges name.
        let mut found: Vec<Vec<ParentRef>> = Vec::with_capacity(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            let mut refs = Vec::new();
            for a in t.job.parents() {
                let in_group = match &a.target {
                    Target::Id(id) => id.name().and_then(|n| names.get(n)).copied(),
                    Target::Node { .. } => None,
                };
                let (job, r) = match &a.target {
                    Target::Id(_) if in_group.is_some_and(|j| j < i) => {
                        let j = in_group.unwrap_or_default();
                        (&tasks[j].job, ParentRef::Node(j))
                    }
                    Target::Id(id) => {
                        let slot = self
                            .lookup(id)
                            .ok_or_else(|| SubmitError::UnknownParent(id.clone()))?;
                        let e = &self.entries[slot as usize];
                        let r = if e.state == State::Retained {
                            let cause = match e.forced {
                                Some(f) => Some(forced_cause(f)),
                                None => e.job.outcome_cause(),
                            };
                            ParentRef::Done {
                                id: id.clone(),
                                cause,
                            }
                        } else {
                            ParentRef::Live { seq: e.job.seq() }
                        };
                        (&e.job, r)
                    }
                    Target::Node { index, .. } if *index < i => {
                        (&tasks[*index].job, ParentRef::Node(*index))
                    }
                    Target::Node { .. } => {
                        return Err(SubmitError::InvalidOption {
                            option: "after",
                            reason: "a graph node can only follow an earlier node of its own graph",
                        })
                    }
                };
                if let Some(typed) = &a.typed {
                    let (want, expected) = typed.expected();
                    let (got, found) = job.result_type();
                    if want != got {
                        let id = match (&a.target, a.id_now()) {
                            (_, Some(id)) => id.clone(),
                            (Target::Node { index, .. }, None) => {
                                TaskId::from(format!("graph node {index}"))
                            }
                            (Target::Id(id), None) => id.clone(),
                        };
                        return Err(SubmitError::ParentTypeMismatch {
                            id,
                            expected,
                            found,
                        });
                    }
                }
                refs.push(r);
            }
            found.push(refs);
        }

        // Nothing can fail from here on. Typed edges to tasks already in the
        // cluster subscribe first, before a new task may take a cached
        // parent's id (and its slot).
        let mut admitted = Admitted {
            replaced: Vec::new(),
            later: Vec::new(),
        };
        let mut holds: Vec<Vec<CopyLater>> = Vec::with_capacity(tasks.len());
        for (t, refs) in tasks.iter().zip(&found) {
            let mut mine = Vec::new();
            for (a, r) in t.job.parents().iter().zip(refs) {
                let (Some(typed), Target::Id(id)) = (&a.typed, &a.target) else {
                    continue;
                };
                if matches!(r, ParentRef::Node(_)) {
                    continue;
                }
                let Some(slot) = self.lookup(id) else {
                    continue;
                };
                let parent = self.entries[slot as usize].job.clone();
                if let Subscribed::Later(copy) = typed.clone().subscribe(parent) {
                    mine.push(copy);
                }
            }
            holds.push(mine);
        }

        // Admit every task as waiting, with its edges.
        let mut placed: Vec<(Slot, u64)> = Vec::with_capacity(tasks.len());
        let mut dones: Vec<Vec<(TaskId, Option<DependencyCause>, OnParentFailure)>> =
            Vec::with_capacity(tasks.len());
        for ((t, refs), mine) in tasks.iter().zip(found).zip(holds) {
            if let Some(name) = t.job.name() {
                if let Some(old) = self.slot_named(name) {
                    admitted.replaced.push(self.remove(old));
                    self.cached -= 1;
                }
            }
            let slot = self.entries.vacant_key() as u32;
            let seq = self.take_seq();
            t.job.assign(seq, slot);
            if let Some(name) = t.job.name() {
                // `Names::insert`'s precondition: no task holds the name now.
                debug_assert!(self.slot_named(name).is_none(), "{name} is held twice");
                self.names.insert(name, slot);
            }
            self.entries.insert(Entry {
                job: t.job.clone(),
                attempts: 0,
                state: State::Waiting,
                forced: None,
                worker: 0,
            });
            if let Some(name) = t.job.name() {
                self.attach_watchers(name, slot);
            }
            let mut left = 0u32;
            let mut my_dones = Vec::new();
            let mut parents = Vec::new();
            for (a, r) in t.job.parents().iter().zip(refs) {
                let edge = Edge {
                    child_slot: slot,
                    child_seq: seq,
                    policy: a.policy,
                };
                left += 1;
                match r {
                    ParentRef::Live { seq: p } => {
                        parents.push(p);
                        self.deps_mut().children.entry(p).or_default().push(edge);
                    }
                    ParentRef::Done { id, cause } => my_dones.push((id, cause, a.policy)),
                    ParentRef::Node(j) => {
                        let (ps, pseq) = placed[j];
                        let parent = self.entries[ps as usize].job.clone();
                        a.resolve(id_of(&*parent, ps));
                        parents.push(pseq);
                        self.deps_mut().children.entry(pseq).or_default().push(edge);
                        if let Some(typed) = &a.typed {
                            // Not finished (every node waits until the end
                            // of this admission): the receiver goes in now.
                            let _ = typed.clone().subscribe(parent);
                        }
                    }
                }
            }
            left += mine.len() as u32;
            for copy in mine {
                admitted.later.push((slot, seq, copy));
            }
            self.deps_mut().waiting.insert(
                seq,
                Waiter {
                    slot,
                    parents,
                    left,
                    start: t.start,
                },
            );
            placed.push((slot, seq));
            dones.push(my_dones);
        }
        self.maybe_shrink();

        // Parents that finished before: they count as they stand. Then
        // every task with nothing left to wait for goes to the queue.
        for ((slot, seq), my_dones) in placed.iter().copied().zip(dones) {
            for (id, cause, policy) in my_dones {
                let edge = Edge {
                    child_slot: slot,
                    child_seq: seq,
                    policy,
                };
                self.parent_done(edge, &id, cause);
            }
            let ready = self
                .deps
                .as_ref()
                .and_then(|d| d.waiting.get(&seq))
                .is_some_and(|w| w.left == 0);
            if ready && current(&self.entries, slot, seq).is_some() {
                self.release(seq);
            }
        }
        if self.deps.as_ref().is_some_and(|d| !d.done.is_empty()) {
            self.cascade();
        }
        Ok(admitted)
    }
}
