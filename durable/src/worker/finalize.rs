//! The finalizer: every finished attempt waiting is written in one fenced
//! statement per lease (batches, not one round trip per job). A refused
//! write is reported: this worker lost the job with its lease. A row
//! another session holds locked is not waited on (the statement skips it):
//! its result is written again after a backoff while the later results go
//! on being written.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::attempt::{Hooks, Written};
use super::lease::sleep_until;
use super::Shared;
use crate::error::JobError;
use crate::job::StoredError;
use crate::store::{Action, Claimed, Fate, Finish, LeaseId};

/// The largest batch written in one statement.
const MAX_BATCH: usize = 1000;

pub(crate) struct Item {
    pub(crate) lease: LeaseId,
    pub(crate) finish: Finish,
    pub(crate) hooks: Hooks,
    /// The id of the body's transaction in which `JobContext::complete_in`
    /// applied a completion. A refusal of this write is then no lost job if
    /// that transaction committed: it completed the row itself. Had it
    /// rolled back, the row stayed running, and a refusal means the lease
    /// was lost (the rescued job runs again).
    pub(crate) completed_in: Option<i64>,
}

impl Item {
    pub(crate) fn release(lease: LeaseId, job: &Claimed) -> Item {
        Item {
            lease,
            finish: Finish {
                id: job.id,
                attempt: job.attempt,
                action: Action::Release,
            },
            hooks: Box::new(|_, _| {}),
            completed_in: None,
        }
    }
}

/// The first and the longest pause before writing again results whose
/// rows another session held locked (`Fate::Busy`). Doubling while they
/// stay locked: a lock held long costs a statement per `BUSY_RETRY_MAX`.
const BUSY_RETRY_MIN: Duration = Duration::from_millis(50);
const BUSY_RETRY_MAX: Duration = Duration::from_secs(1);

pub(crate) async fn finalizer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Item>) {
    // Results whose rows were held locked, written again at `busy_at` (with
    // the next batch, or alone): they never hold up the results after them.
    let mut busy: Vec<Item> = Vec::new();
    let mut busy_at: Option<Instant> = None;
    let mut busy_wait = BUSY_RETRY_MIN;
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(item) => Some(item),
                None => return,
            },
            () = sleep_until(busy_at) => None,
            () = shared.halt.cancelled() => {
                // Stop: every attempt has queued its write; drain and end.
                // Rows still held locked are tried again until the stop's
                // timeout gives up on this task (they are rescued then).
                let mut rest = std::mem::take(&mut busy);
                while let Ok(item) = rx.try_recv() {
                    rest.push(item);
                }
                let mut wait = BUSY_RETRY_MIN;
                loop {
                    let mut again = Vec::new();
                    for chunk in chunks(rest) {
                        again.extend(write(&shared, chunk).await);
                    }
                    if again.is_empty() {
                        return;
                    }
                    rest = again;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BUSY_RETRY_MAX);
                }
            }
        };
        let mut batch: Vec<Item> = first.into_iter().collect();
        if busy_at.is_some_and(|at| Instant::now() >= at) {
            busy_at = None;
            batch.append(&mut busy);
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut again = Vec::new();
        for chunk in chunks(batch) {
            again.extend(write(&shared, chunk).await);
        }
        if !again.is_empty() {
            busy.extend(again);
            if busy_at.is_none() {
                busy_at = Some(Instant::now() + busy_wait);
                busy_wait = (busy_wait * 2).min(BUSY_RETRY_MAX);
            }
        } else if busy.is_empty() {
            busy_wait = BUSY_RETRY_MIN;
        }
    }
}

fn chunks(mut items: Vec<Item>) -> Vec<Vec<Item>> {
    let mut out = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(MAX_BATCH));
        out.push(items);
        items = rest;
    }
    out
}

/// Writes one lease's batch, retrying through store outages. A batch the
/// database refuses for its data is split, and a single write it refuses is
/// turned into a failure saying why: one bad row never blocks the others.
/// Each write's fate comes back with what was kept of it.
async fn write_group(
    shared: &Shared,
    lease: LeaseId,
    mut finishes: Vec<Finish>,
) -> Vec<(Fate, Written)> {
    let mut backoff = Duration::from_millis(50);
    // Failures put in place of a refused single write so far, and the
    // message of the last one.
    let mut replaced = 0;
    let mut written = Written::AsAsked;
    loop {
        match shared.store.finish(lease, finishes.clone()).await {
            Ok(fates) => {
                return fates
                    .into_iter()
                    .map(|fate| match fate {
                        Fate::CancelledInstead => (fate, Written::Cancelled),
                        _ => (fate, written.clone()),
                    })
                    .collect()
            }
            Err(e) if e.is_data() && finishes.len() > 1 => {
                tracing::warn!(error = %e, "corral-durable finalize refused a batch's data; writing one by one");
                let mut fates = Vec::with_capacity(finishes.len());
                for f in finishes {
                    fates.extend(Box::pin(write_group(shared, lease, vec![f])).await);
                }
                return fates;
            }
            // Any action's data may be refused (a body's own error too, in
            // a failure or a retry): it becomes a failure saying why, then,
            // should that be refused as well, one with no detail at all.
            Err(e) if e.is_data() && replaced < 2 => {
                tracing::error!(error = %e, job = %finishes[0].id, "corral-durable cannot store this result; the job fails");
                let message = if replaced == 0 {
                    format!("the result could not be stored: {}", e.why())
                } else {
                    "the result could not be stored".to_owned()
                };
                let error: JobError<()> = JobError::Undecodable {
                    message: message.clone(),
                };
                finishes[0].action = Action::Fail {
                    error: StoredError::encode(&error),
                };
                written = Written::Failed(message);
                replaced += 1;
            }
            Err(e) => {
                // Keep the results: the lease may still be alive when the
                // store is back; if not, the fence refuses them.
                tracing::warn!(error = %e, retry_in = ?backoff, "corral-durable finalize failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes one batch, retrying through store outages. Items of different
/// leases (a lease lost and renewed meanwhile) are written per lease.
/// Returns the items whose rows another session held locked, to write
/// again later (their rows stay held: still running under the lease).
async fn write(shared: &Shared, batch: Vec<Item>) -> Vec<Item> {
    let mut busy = Vec::new();
    let mut by_lease: Vec<(LeaseId, Vec<Item>)> = Vec::new();
    for item in batch {
        match by_lease.iter_mut().find(|(l, _)| *l == item.lease) {
            Some((_, items)) => items.push(item),
            None => by_lease.push((item.lease, vec![item])),
        }
    }
    for (lease, items) in by_lease {
        let finishes: Vec<Finish> = items.iter().map(|i| i.finish.clone()).collect();
        let fates = write_group(shared, lease, finishes).await;
        for (item, (fate, written)) in items.into_iter().zip(fates) {
            let fate = match (fate, item.completed_in) {
                (Fate::Refused, Some(xid)) => match committed_in_body(shared, xid).await {
                    Some(true) => Fate::Applied,
                    Some(false) => Fate::Refused,
                    // Still open (or not known now): asked again later.
                    None => Fate::Busy,
                },
                (fate, _) => fate,
            };
            if fate == Fate::Busy {
                busy.push(item);
                continue;
            }
            shared.unhold(item.finish.id, item.finish.attempt);
            let id = item.finish.id;
            match fate {
                Fate::Refused => {
                    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        job = %id,
                        attempt = item.finish.attempt,
                        "corral-durable worker lost this job with its lease: its result was refused"
                    );
                }
                Fate::Applied | Fate::CancelledInstead => {
                    shared.counters.finalized.fetch_add(1, Ordering::Relaxed);
                    (item.hooks)(id, written);
                }
                Fate::Busy => unreachable!("kept above"),
            }
        }
    }
    busy
}

/// Whether the body's transaction `xid`, which applied its completion,
/// committed; `None` while it is open or the store cannot say (then asked
/// again later, like a row held locked).
async fn committed_in_body(shared: &Shared, xid: i64) -> Option<bool> {
    let pg = shared.store.pg()?;
    match pg.committed(xid).await {
        Ok(status) => status,
        Err(e) => {
            tracing::warn!(error = %e, "corral-durable cannot ask whether a body's transaction committed");
            None
        }
    }
}
