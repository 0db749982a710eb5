//! The lease: heartbeats, and the leader's duties.
//!
//! A lease is lost for good once its TTL passes without a heartbeat (the
//! store never renews an expired lease). The worker then cuts its local
//! attempts short (their writes would be refused: another worker may run
//! them now) and registers a new lease to go on claiming.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::id::JobId;

/// Prune statements per round at most (bounded work per round).
const PRUNE_ROUNDS: usize = 10;
/// The pause before the next round when a round deleted all it could (a
/// backlog): rounds follow each other at once, in bounded batches, until
/// the backlog is gone.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);

pub(crate) async fn heartbeat(shared: Arc<Shared>) {
    let period = shared.ttl / 3;
    // The first beat goes at once: it decides leadership, and the leader
    // stages scheduled jobs, so a fresh worker must not wait a period.
    let mut next = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut cancels = shared.store.signals().cancels();
    loop {
        tokio::select! {
            () = shared.halt.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
            heard = cancels.recv() => {
                if let Ok(id) = heard {
                    shared.cancel_local(id);
                }
                continue;
            }
        }
        let lease = shared.lease();
        // A stop never waits on a statement (the store may hang).
        let beat = tokio::select! {
            () = shared.halt.cancelled() => return,
            beat = shared.store.heartbeat(lease, shared.ttl) => beat,
        };
        match beat {
            Ok(beat) if beat.alive => {
                backoff = Duration::from_millis(50);
                next = Instant::now() + period;
                if shared.leader.swap(beat.leader, Ordering::AcqRel) != beat.leader {
                    shared.leader_changed.notify_one();
                }
                beat.cancels
                    .into_iter()
                    .for_each(|id| shared.cancel_local(id));
            }
            Ok(_) => {
                shared.counters.leases_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(lease, "corral-durable worker lost its lease (expired); its running attempts are cut short");
                shared.leader.store(false, Ordering::Release);
                let ids: Vec<JobId> = shared.running.lock().keys().copied().collect();
                ids.into_iter().for_each(|id| shared.cancel_local(id));
                loop {
                    let registered = tokio::select! {
                        () = shared.halt.cancelled() => return,
                        r = shared.store.register(shared.ttl) => r,
                    };
                    match registered {
                        Ok(new) => {
                            shared.lease.store(new, Ordering::Release);
                            // Claims made with the lost lease came back
                            // empty: wake every claim loop.
                            shared.lease_renewed.send_modify(|g| *g = g.wrapping_add(1));
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "corral-durable worker cannot register a lease");
                            tokio::select! {
                                () = shared.halt.cancelled() => return,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                next = Instant::now() + period;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "corral-durable heartbeat failed");
                next = Instant::now() + backoff.min(period);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A rescue runs this long after the next lease is due to expire (its
/// heartbeat may be in flight), and at the latest every lease TTL.
const RESCUE_SLACK: Duration = Duration::from_millis(50);

/// The leader's duties, while this worker holds the leader row: stage
/// scheduled rows at their start time, rescue leases as they expire,
/// prune. Each statement runs only when it can have work: staging when a
/// scheduled row is due or was inserted, a rescue when the earliest live
/// lease expires, pruning every `prune_every`; an idle leader sends a
/// statement about once per two thirds of a TTL.
pub(crate) async fn lead(shared: Arc<Shared>) {
    let mut scheduled = shared.store.signals().scheduled();
    let mut next_stage = Some(Instant::now());
    let mut next_rescue = Instant::now();
    let mut next_prune = Instant::now() + shared.prune_every;
    let mut backoff = Duration::from_millis(50);
    loop {
        if !shared.leader.load(Ordering::Acquire) {
            tokio::select! {
                () = shared.halt.cancelled() => return,
                () = shared.leader_changed.notified() => {}
            }
            // A new leader knows nothing of the schedule: look at once.
            next_stage = Some(Instant::now());
            next_rescue = Instant::now();
            continue;
        }
        scheduled.borrow_and_update();
        let duties = async {
            if next_stage.is_some_and(|t| Instant::now() >= t) {
                let (staged, next_due) = shared.store.stage(shared.stage_batch).await?;
                next_stage = if staged >= shared.stage_batch as u64 {
                    // A full batch: more rows may be due now.
                    Some(Instant::now())
                } else {
                    next_due.map(|d| Instant::now() + d)
                };
            }
            if Instant::now() >= next_rescue {
                let (n, next_expiry) = shared.store.rescue().await?;
                if n > 0 {
                    tracing::info!(
                        jobs = n,
                        "corral-durable leader rescued jobs of expired leases"
                    );
                }
                let wait = next_expiry.map_or(shared.ttl, |d| (d + RESCUE_SLACK).min(shared.ttl));
                next_rescue = Instant::now() + wait;
            }
            if Instant::now() >= next_prune {
                let mut backlog = true;
                for _ in 0..PRUNE_ROUNDS {
                    let batch = shared.prune_batch;
                    if shared.store.prune(batch).await? < batch as u64 {
                        backlog = false;
                        break;
                    }
                }
                next_prune = Instant::now()
                    + if backlog {
                        PRUNE_PAUSE
                    } else {
                        shared.prune_every
                    };
            }
            Ok::<(), crate::StoreError>(())
        };
        // A stop never waits on a statement (the store may hang).
        let result = tokio::select! {
            () = shared.halt.cancelled() => return,
            r = duties => r,
        };
        let mut wake_at = next_rescue.min(next_prune);
        if let Some(t) = next_stage {
            wake_at = wake_at.min(t);
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, retry_in = ?backoff, "corral-durable leader duty failed");
            wake_at = Instant::now() + backoff;
            next_stage = Some(wake_at);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            backoff = Duration::from_millis(50);
        }
        tokio::select! {
            () = shared.halt.cancelled() => return,
            () = tokio::time::sleep_until(wake_at) => {}
            _ = scheduled.changed() => next_stage = Some(Instant::now()),
            () = shared.leader_changed.notified() => {}
        }
    }
}
