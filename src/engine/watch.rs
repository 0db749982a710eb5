//! Watches for ids not yet submitted (`crate::wait::Watch` is the user's
//! side): kept by name until a task with that name is submitted (the
//! watch is then turned into a subscription, under the same lock as the
//! submit, so it cannot miss the outcome), the watch is dropped (its entry
//! goes with it), or the cluster stops taking tasks (every watch is told).
//!
//! Costs a plain task nothing: only a submit with a user id looks here,
//! and only if any watch was ever made.

use std::collections::HashMap;
use std::sync::Arc;

use super::Engine;
use crate::job::Job;

/// A watch's typed end, erased: subscribes it to the task when it comes.
pub(crate) trait PendingWatch: Send {
    /// Subscribes to `job` (under the engine's lock: no user code).
    /// Returns what hands the subscription, or a type mismatch, to the
    /// watch when dropped, after unlocking (it may wake a parked attempt,
    /// which takes the lock).
    fn attach(self: Box<Self>, job: Arc<dyn Job>) -> Box<dyn Send>;
}

/// A watch and its key.
type Keyed = (u64, Box<dyn PendingWatch>);

#[derive(Default)]
pub(super) struct Watchers {
    by_name: HashMap<Arc<str>, Vec<Keyed>>,
    next_key: u64,
    count: usize,
}

impl Engine {
    /// Registers a watch for the user id `name`; returns its key, to
    /// [`unwatch`](Self::unwatch) when the watch is dropped.
    pub(crate) fn watch(&mut self, name: Arc<str>, w: Box<dyn PendingWatch>) -> u64 {
        let ws = self.watchers.get_or_insert_with(Box::default);
        let key = ws.next_key;
        ws.next_key += 1;
        ws.count += 1;
        ws.by_name.entry(name).or_default().push((key, w));
        key
    }

    /// Forgets a watch that was dropped or timed out before its task came.
    /// Returns it, to drop after unlocking.
    pub(crate) fn unwatch(&mut self, name: &Arc<str>, key: u64) -> Option<Box<dyn PendingWatch>> {
        let ws = self.watchers.as_deref_mut()?;
        let list = ws.by_name.get_mut(name)?;
        let i = list.iter().position(|(k, _)| *k == key)?;
        let (_, w) = list.swap_remove(i);
        if list.is_empty() {
            ws.by_name.remove(name);
            if ws.by_name.is_empty() {
                ws.by_name.shrink_to_fit();
            }
        }
        ws.count -= 1;
        Some(w)
    }

    /// A task named `name` was just admitted in `slot`: its watches
    /// become subscriptions.
    pub(super) fn attach_watchers(&mut self, name: &Arc<str>, slot: u32) {
        let Some(ws) = self.watchers.as_deref_mut() else {
            return;
        };
        let Some(list) = ws.by_name.remove(name) else {
            return;
        };
        ws.count -= list.len();
        let job = self.entries[slot as usize].job.clone();
        for (_, w) in list {
            let send = w.attach(job.clone());
            self.drop_later(send);
        }
    }

    /// The cluster takes no more tasks: every watch still waiting is told
    /// (its channel closes). Returned, to drop after unlocking.
    pub(super) fn close_watchers(&mut self) -> Option<Box<Watchers>> {
        self.watchers.take()
    }

    /// Watches waiting for an id not yet submitted.
    pub(crate) fn watchers(&self) -> usize {
        self.watchers.as_ref().map_or(0, |w| w.count)
    }
}
