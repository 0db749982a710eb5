//! Wake-ups inside one process: what a store's listener (or the memory
//! store itself) heard, handed to the loops that wait for it.
//!
//! Every signal is a generation counter in a `watch` channel, never an
//! edge: a waiter marks the generation seen *before* it looks at the store,
//! then waits for a change. A notice that arrives while it looks (a claim in
//! flight, every slot busy) leaves the counter changed, so the next wait
//! returns at once: no wake-up is lost.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{broadcast, watch};

use crate::id::JobId;

/// The signals of one store instance (shared by its clients and workers).
#[derive(Debug)]
pub(crate) struct Signals {
    queues: Mutex<HashMap<String, watch::Sender<u64>>>,
    done: Mutex<HashMap<JobId, (watch::Sender<u64>, usize)>>,
    scheduled: watch::Sender<u64>,
    leader_vacant: watch::Sender<u64>,
    finished: watch::Sender<u64>,
    cancels: broadcast::Sender<JobId>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            queues: Mutex::default(),
            done: Mutex::default(),
            scheduled: watch::Sender::new(0),
            leader_vacant: watch::Sender::new(0),
            finished: watch::Sender::new(0),
            cancels: broadcast::Sender::new(1024),
        }
    }
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|g| *g = g.wrapping_add(1));
}

impl Signals {
    /// The work signal of `queue`.
    pub(crate) fn queue(&self, queue: &str) -> watch::Receiver<u64> {
        let mut map = self.queues.lock();
        map.entry(queue.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// New work may be available in `queue`.
    pub(crate) fn wake_queue(&self, queue: &str) {
        if let Some(tx) = self.queues.lock().get(queue) {
            bump(tx);
        }
    }

    /// Waits for `id` to finish; the guard forgets the waiter when dropped.
    pub(crate) fn done(self: &Arc<Self>, id: JobId) -> DoneWaiter {
        let rx = {
            let mut map = self.done.lock();
            let entry = map.entry(id).or_insert_with(|| (watch::Sender::new(0), 0));
            entry.1 += 1;
            entry.0.subscribe()
        };
        DoneWaiter {
            signals: self.clone(),
            id,
            rx,
        }
    }

    /// `id` reached a final state (or was pruned).
    pub(crate) fn job_done(&self, id: JobId) {
        if let Some((tx, _)) = self.done.lock().get(&id) {
            bump(tx);
        }
    }

    /// Someone asked to cancel `id`.
    pub(crate) fn cancel_requested(&self, id: JobId) {
        // No receiver is fine: no worker of this process runs it.
        let _ = self.cancels.send(id);
    }

    /// Cancel requests heard by this process.
    pub(crate) fn cancels(&self) -> broadcast::Receiver<JobId> {
        self.cancels.subscribe()
    }

    /// A scheduled row was inserted (the leader may have to wake earlier).
    pub(crate) fn wake_scheduled(&self) {
        bump(&self.scheduled);
    }

    /// The leader's signal.
    pub(crate) fn scheduled(&self) -> watch::Receiver<u64> {
        self.scheduled.subscribe()
    }

    /// Rows reached a final state (once per batch, not per row): the
    /// leader's pruner may have work once their retention passes.
    pub(crate) fn rows_finished(&self) {
        bump(&self.finished);
    }

    /// The pruner's signal.
    pub(crate) fn finished(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// The leader retired: every worker contends for the row at once.
    pub(crate) fn wake_leader_vacant(&self) {
        bump(&self.leader_vacant);
    }

    /// The heartbeat's signal of a vacant leader row.
    pub(crate) fn leader_vacant(&self) -> watch::Receiver<u64> {
        self.leader_vacant.subscribe()
    }

    /// Notices may have been missed (the listener reconnected): every waiter
    /// looks again.
    pub(crate) fn wake_all(&self) {
        self.queues.lock().values().for_each(bump);
        self.done.lock().values().for_each(|(tx, _)| bump(tx));
        bump(&self.scheduled);
    }
}

/// One waiter for a job's end (see [`Signals::done`]).
#[derive(Debug)]
pub(crate) struct DoneWaiter {
    signals: Arc<Signals>,
    id: JobId,
    rx: watch::Receiver<u64>,
}

impl DoneWaiter {
    /// Marks the current generation seen; call before looking at the store.
    pub(crate) fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Resolves when a notice came after the last `mark_seen`.
    pub(crate) async fn changed(&mut self) {
        // The sender lives in the map as long as this waiter does.
        let _ = self.rx.changed().await;
    }
}

impl Drop for DoneWaiter {
    fn drop(&mut self) {
        let mut map = self.signals.done.lock();
        if let Some(entry) = map.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.id);
            }
        }
    }
}
