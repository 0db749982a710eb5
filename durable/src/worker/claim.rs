//! The claim loop of one queue.
//!
//! No lost wake-up: the queue's notice counter is marked seen *before* each
//! claim, so a notice arriving during the claim, or while every slot is
//! busy, leaves it changed; `maybe_more` then stays set until a claim comes
//! back short, and a freed slot claims again while it is set. Likewise the
//! lease generation: a claim made with a lease that expired comes back
//! empty, and the new lease's registration wakes every claim loop.
//!
//! While a backlog lasts (each claim full, no notice between), the next
//! claim starts past the last row claimed (a cursor), not from the front of
//! the claim index: with vacuum held back by an open snapshot, the front is
//! the dead entries of every row claimed so far, and walking them each time
//! made a burn-down quadratic. Any notice, a new lease, or a short claim
//! past the cursor sends the next claim to the front again.
//!
//! A row another session holds locked (a `SELECT ... FOR UPDATE` in an open
//! transaction) is passed over by the claim's `SKIP LOCKED`, and no notice
//! comes when the lock goes. A short claim from the front that passed over
//! such rows says so, and the loop claims again after a backoff (doubling
//! to [`LOCKED_RETRY_MAX`]) while they remain; a claim that passed over
//! nothing sets no timer, so an idle worker stays quiet.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::attempt::Hooks;
use super::finalize::Item;
use super::lease::{sleep_until, LOCKED_RETRY_MAX, LOCKED_RETRY_MIN};
use super::Shared;
use crate::error::JobError;
use crate::job::{InBody, StoredError};
use crate::store::{Action, ClaimCursor, Claimed, Finish};

/// How long a stop waits for a claim in flight to answer.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Free slots of one queue; attempt tasks give theirs back.
#[derive(Debug)]
pub(crate) struct Slots {
    free: AtomicUsize,
    freed: Notify,
}

impl Slots {
    fn give_back(&self) {
        self.free.fetch_add(1, Ordering::AcqRel);
        // `notify_one` keeps a permit if the loop is not waiting yet.
        self.freed.notify_one();
    }
}

pub(crate) async fn claim_loop(shared: Arc<Shared>, queue: String, slots: usize) {
    let slots = Arc::new(Slots {
        free: AtomicUsize::new(slots),
        freed: Notify::new(),
    });
    let mut wake = shared.store.signals().queue(&queue);
    let mut renewed = shared.lease_renewed.subscribe();
    let mut maybe_more = true;
    let mut cursor: Option<ClaimCursor> = None;
    let mut backoff = Duration::from_millis(50);
    // When to claim again for rows a claim passed over as locked.
    let mut locked_at: Option<tokio::time::Instant> = None;
    let mut locked_retry = LOCKED_RETRY_MIN;
    loop {
        if shared.claiming.is_cancelled() {
            return;
        }
        let free = slots.free.load(Ordering::Acquire);
        if free > 0 && maybe_more {
            // Any notice (an insert, a staged, retried, released or rescued
            // row, a listener reconnect) or a new lease may have put rows
            // before the cursor: look from the front.
            if wake.has_changed().unwrap_or(true) || renewed.has_changed().unwrap_or(true) {
                cursor = None;
            }
            wake.borrow_and_update();
            // Seen before the lease is read: a claim with a lease lost
            // meanwhile comes back empty, and the renewal wakes this loop.
            renewed.borrow_and_update();
            let lease = shared.lease();
            let no = shared.begin_claim();
            let claim = shared
                .store
                .claim(lease, &queue, &shared.kinds, free, cursor, no);
            tokio::pin!(claim);
            let claimed = tokio::select! {
                r = &mut claim => r,
                () = shared.claiming.cancelled() => {
                    // A stop does not wait on a claim without bound (the
                    // store may hang); one that answers soon has its rows
                    // given back at once, else they are rescued with the
                    // retired lease.
                    if let Ok(Ok(batch)) = tokio::time::timeout(STOP_GRACE, claim).await {
                        let jobs = batch.rows;
                        shared.end_claim(no, &jobs);
                        for job in &jobs {
                            let _ = shared.finish_tx.send(Item::release(lease, job));
                        }
                    } else {
                        shared.end_claim(no, &[]);
                    }
                    return;
                }
            };
            match claimed {
                Ok(batch) => {
                    backoff = Duration::from_millis(50);
                    if batch.skipped {
                        locked_at = Some(tokio::time::Instant::now() + locked_retry);
                        locked_retry = (locked_retry * 2).min(LOCKED_RETRY_MAX);
                    } else if cursor.is_none() {
                        // From the front, nothing passed over: no timer.
                        locked_at = None;
                        locked_retry = LOCKED_RETRY_MIN;
                    }
                    let jobs = batch.rows;
                    // A full claim: a backlog, whose next claim starts past
                    // this one's last row. A short claim past a cursor may
                    // have missed rows before it (a claim of another worker
                    // that rolled back, rows that came without a notice
                    // yet): the next claim looks from the front, and only a
                    // short claim from the front ends the backlog.
                    if jobs.len() == free {
                        maybe_more = true;
                        cursor = jobs.last().map(|j| j.cursor);
                    } else {
                        maybe_more = cursor.is_some();
                        cursor = None;
                    }
                    shared.end_claim(no, &jobs);
                    slots.free.fetch_sub(jobs.len(), Ordering::AcqRel);
                    for job in jobs {
                        start_attempt(&shared, &slots, lease, job);
                    }
                    continue;
                }
                Err(e) => {
                    shared.end_claim(no, &[]);
                    tracing::warn!(error = %e, queue, retry_in = ?backoff, "corral-durable claim failed");
                    tokio::select! {
                        () = shared.claiming.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        tokio::select! {
            () = shared.claiming.cancelled() => return,
            r = wake.changed() => {
                if r.is_err() {
                    return;
                }
                maybe_more = true;
                cursor = None;
            }
            r = renewed.changed() => {
                if r.is_err() {
                    return;
                }
                maybe_more = true;
                cursor = None;
            }
            () = slots.freed.notified() => {}
            () = sleep_until(locked_at) => {
                locked_at = None;
                maybe_more = true;
                cursor = None;
            }
        }
    }
}

fn start_attempt(shared: &Arc<Shared>, slots: &Arc<Slots>, lease: i64, job: Claimed) {
    let Some(erased) = shared.jobs.get(&job.kind).cloned() else {
        // Cannot happen: the claim filters on registered kinds. Give it back.
        tracing::error!(kind = job.kind, "claimed a kind this worker does not know");
        let _ = shared.finish_tx.send(Item::release(lease, &job));
        slots.give_back();
        return;
    };
    let run = shared.runs.fetch_add(1, Ordering::Relaxed);
    let task_id = format!("{}/{}/{run}", job.id, job.attempt);
    let interrupt = CancellationToken::new();
    shared
        .running
        .lock()
        .insert(job.id, (task_id.clone(), interrupt.clone()));
    let key = task_id.clone();
    let shared2 = shared.clone();
    let slots = slots.clone();
    shared.attempts.spawn(async move {
        let shared = shared2;
        let (id, attempt) = (job.id, job.attempt);
        let stopping = shared.claiming.clone();
        let interrupt = interrupt.clone();
        let in_body = shared.store.pg().map(|pg| {
            Arc::new(InBody {
                store: pg.clone(),
                lease,
                attempt,
                applied_in: AtomicI64::new(0),
            })
        });
        // Everything after the engine (decoding, the retry decision, the
        // output's `Serialize`) is user code or stored data: a panic there
        // must still free the slot and finish the job, or the row stays
        // running under a live lease for good.
        let ran = AssertUnwindSafe(erased.run(
            shared.cluster.clone(),
            job,
            task_id,
            stopping,
            interrupt,
            in_body.clone(),
        ))
        .catch_unwind()
        .await;
        let (action, hooks) = ran.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
            tracing::error!(job = %id, attempt, message, "corral-durable attempt panicked after its body; the job fails");
            let error: JobError<()> = JobError::Panicked {
                message: format!("while finishing the attempt: {message}"),
            };
            let action = Action::Fail {
                error: StoredError::encode(&error),
            };
            (action, Box::new(|_, _| {}) as Hooks)
        });
        let completed_in = in_body
            .map(|b| b.applied_in.load(Ordering::Acquire))
            .filter(|xid| *xid != 0);
        {
            // Only this attempt's entry: a later claim of the same job (after
            // a lost lease) may have replaced it.
            let mut running = shared.running.lock();
            if running.get(&id).is_some_and(|(t, _)| *t == key) {
                running.remove(&id);
            }
        }
        slots.give_back();
        let item = Item {
            lease,
            finish: Finish {
                id,
                attempt,
                action,
            },
            hooks,
            completed_in,
        };
        let _ = shared.finish_tx.send(item);
    });
}
