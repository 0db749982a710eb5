//! The finalizer: every finished attempt waiting is written in one fenced
//! statement per lease (batches, not one round trip per job). A refused
//! write is reported: this worker lost the job with its lease.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::attempt::Hooks;
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
    /// A completion written by `JobContext::complete_in` was applied: a
    /// refusal then means its own transaction completed the row (had it
    /// rolled back, the row would still be running and this write apply).
    pub(crate) completed_in_body: bool,
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
            completed_in_body: false,
        }
    }
}

pub(crate) async fn finalizer(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Item>) {
    loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => match item {
                Some(item) => item,
                None => return,
            },
            () = shared.halt.cancelled() => {
                // Stop: every attempt has queued its write; drain and end.
                let mut rest = Vec::new();
                while let Ok(item) = rx.try_recv() {
                    rest.push(item);
                }
                for chunk in chunks(rest) {
                    write(&shared, chunk).await;
                }
                return;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        write(&shared, batch).await;
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
async fn write_group(shared: &Shared, lease: LeaseId, mut finishes: Vec<Finish>) -> Vec<Fate> {
    let mut backoff = Duration::from_millis(50);
    // Failures put in place of a refused single write so far.
    let mut replaced = 0;
    loop {
        match shared.store.finish(lease, finishes.clone()).await {
            Ok(fates) => return fates,
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
                let error: JobError<()> = JobError::Undecodable { message };
                finishes[0].action = Action::Fail {
                    error: StoredError::encode(&error),
                };
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
async fn write(shared: &Shared, batch: Vec<Item>) {
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
        for (item, fate) in items.into_iter().zip(fates) {
            shared.unhold(item.finish.id, item.finish.attempt);
            let id = item.finish.id;
            match fate {
                Fate::Refused if item.completed_in_body => {
                    shared.counters.finalized.fetch_add(1, Ordering::Relaxed);
                    (item.hooks)(id, false);
                }
                Fate::Refused => {
                    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        job = %id,
                        attempt = item.finish.attempt,
                        "corral-durable worker lost this job with its lease: its result was refused"
                    );
                }
                Fate::Applied => {
                    shared.counters.finalized.fetch_add(1, Ordering::Relaxed);
                    (item.hooks)(id, false);
                }
                Fate::CancelledInstead => {
                    shared.counters.finalized.fetch_add(1, Ordering::Relaxed);
                    (item.hooks)(id, true);
                }
            }
        }
    }
}
