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
use crate::store::{Action, Beat, Finish, LeaseId};

/// Prune statements per round at most (bounded work per round).
const PRUNE_ROUNDS: usize = 10;
/// The pause before the next round when a round deleted all it could (a
/// backlog): rounds follow each other at once, in bounded batches, until
/// the backlog is gone.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);

/// What the leader's heartbeat learned: when a rescue or a prune can next
/// have work (`None`: not before something changes).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hints {
    pub(crate) rescue_at: Option<Instant>,
    pub(crate) prune_at: Option<Instant>,
}

/// `at + d`, saturating far in the future: `d` may come from an option
/// (`prune_interval(Duration::MAX)` means never on a schedule) or from the
/// store, and an overflow would kill the task that computes it.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The first and the longest pause before staging again while due rows
/// stay scheduled because another session holds them locked (no notice
/// comes when that lock goes). Doubling: a lock held long costs a stage
/// per `LOCKED_RETRY_MAX`, not a spin; a job whose lock goes starts at most
/// that long after.
pub(crate) const LOCKED_RETRY_MIN: Duration = Duration::from_millis(25);
pub(crate) const LOCKED_RETRY_MAX: Duration = Duration::from_secs(1);

/// Sleeps until `at`; never wakes for `None` (a retry timer that is not
/// set: the claim loop's and the finalizer's for rows held locked).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A worker that does not lead contends again this long after the leader
/// row expires (the holder's last heartbeat may be in flight).
const LEADER_SLACK: Duration = Duration::from_millis(50);

pub(crate) async fn heartbeat(shared: Arc<Shared>) {
    // While rows are held the lease guards them: renew every third of the
    // TTL (two chances before it lapses). While none is held it guards
    // nothing: every two thirds. A claim that takes rows wakes this loop,
    // which then renews at once if the last renewal is older than a third
    // of the TTL: held rows always have at least two thirds of a TTL ahead.
    let busy_period = shared.ttl / 3;
    let idle_period = shared.ttl.saturating_mul(2) / 3;
    // The first beat goes at once: it decides leadership, and the leader
    // stages scheduled jobs, so a fresh worker must not wait a period.
    let mut last: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut leader_expiry: Option<Instant> = None;
    // When the lease has expired for sure unless renewed again (a TTL after
    // the last renewal's answer arrived).
    let mut expired_by: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    let mut cancels = shared.store.signals().cancels();
    let mut vacant = shared.store.signals().leader_vacant();
    loop {
        let due = match (retry_at, last) {
            (Some(at), _) => at,
            (None, None) => Instant::now(),
            (None, Some(last)) => {
                let period = if shared.is_busy() {
                    busy_period
                } else {
                    idle_period
                };
                let mut due = later(last, period);
                if let Some(at) = leader_expiry {
                    due = due.min(later(at, LEADER_SLACK));
                }
                due
            }
        };
        if Instant::now() < due {
            tokio::select! {
                () = shared.halt.cancelled() => return,
                () = tokio::time::sleep_until(due) => {}
                () = shared.busy.notified() => {}
                r = vacant.changed() => {
                    if r.is_ok() {
                        leader_expiry = Some(Instant::now());
                    }
                }
                heard = cancels.recv() => {
                    if let Ok(id) = heard {
                        shared.cancel_local(id);
                    }
                }
            }
            // Busy or idle may have changed: compute the due time again.
            continue;
        }
        let started = Instant::now();
        let lease = shared.lease();
        let beat = if expired_by.is_some_and(|at| started >= at) {
            // No renewal for a whole TTL (the process was paused or
            // starved): the lease has expired for sure. Known without a
            // round trip, so local attempts are cut short at once.
            Ok(Beat::default())
        } else {
            let (held, settled_below) = shared.held_and_settled();
            // A stop never waits on a statement (the store may hang).
            tokio::select! {
                () = shared.halt.cancelled() => return,
                beat = shared.store.heartbeat(lease, shared.ttl, held, settled_below) => beat,
            }
        };
        match beat {
            Ok(beat) if beat.alive => {
                backoff = Duration::from_millis(50);
                // The store renewed before its answer arrived.
                expired_by = Some(later(Instant::now(), shared.ttl));
                last = Some(started);
                retry_at = None;
                leader_expiry = beat.leader_expires_in.map(|d| later(started, d));
                if beat.leader {
                    shared.hints.send_replace(Hints {
                        rescue_at: beat.rescue_in.map(|d| later(started, d)),
                        prune_at: beat.prune_in.map(|d| later(started, d)),
                    });
                }
                if shared.leader.swap(beat.leader, Ordering::AcqRel) != beat.leader {
                    shared.leader_changed.notify_one();
                }
                beat.cancels
                    .into_iter()
                    .for_each(|id| shared.cancel_local(id));
                if !beat.unknown.is_empty() {
                    give_back_unknown(&shared, lease, beat.unknown).await;
                }
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
                // The new lease was just registered: renewed now.
                last = Some(Instant::now());
                expired_by = Some(later(Instant::now(), shared.ttl));
                retry_at = None;
                leader_expiry = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "corral-durable heartbeat failed");
                retry_at = Some(later(Instant::now(), backoff.min(busy_period)));
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Gives back rows claimed under `lease` whose claim's answer never
/// arrived (the worker does not know them; renewing the lease would keep
/// them running for good). Fenced like any write: the attempt given back
/// is the unknown one.
async fn give_back_unknown(shared: &Shared, lease: LeaseId, unknown: Vec<(JobId, i32)>) {
    tracing::warn!(
        jobs = unknown.len(),
        "corral-durable worker gives back rows of a claim whose answer was lost"
    );
    let batch = unknown
        .into_iter()
        .map(|(id, attempt)| Finish {
            id,
            attempt,
            action: Action::Release,
        })
        .collect();
    let given = tokio::select! {
        () = shared.halt.cancelled() => return,
        r = shared.store.finish(lease, batch) => r,
    };
    if let Err(e) = given {
        // The next heartbeat reports them again.
        tracing::warn!(error = %e, "corral-durable worker could not give back unknown rows");
    }
}

/// A rescue runs this long after the next lease is due to expire (its
/// heartbeat may be in flight).
const RESCUE_SLACK: Duration = Duration::from_millis(50);

/// A rescue runs at least once per this many TTLs, whatever the hints say
/// (a safety net: the leader's heartbeats report every lease's expiry, and
/// every lease is seen by one of them before it can expire).
const RESCUE_FALLBACK_TTLS: u32 = 10;

/// The leader's duties, while this worker holds the leader row: stage
/// scheduled rows at their start time, rescue leases as they expire,
/// prune. Each statement runs only when it can have work: staging when a
/// scheduled row is due or was inserted, or again after a backoff while
/// due rows are held locked by another session; a rescue at once on taking the
/// lead, then when another lease expires (the leader's heartbeat reports
/// the next expiry, and each rescue the one after it); pruning every
/// `prune_every` while rows finish (this process's own, or heard of) or the
/// heartbeat saw a finished row due (a backlog is cleared in rounds that
/// follow each other at once). An idle leader alone sends nothing besides
/// its heartbeat.
pub(crate) async fn lead(shared: Arc<Shared>) {
    let mut scheduled = shared.store.signals().scheduled();
    let mut hints = shared.hints.subscribe();
    let mut finished = shared.store.signals().finished();
    let fallback = shared.ttl.saturating_mul(RESCUE_FALLBACK_TTLS);
    let mut next_stage = Some(Instant::now());
    let mut next_rescue = Instant::now();
    let mut next_prune: Option<Instant> = None;
    // The earliest a regular prune round may run (the last round's end
    // plus `prune_every`, or at once after a round that hit its bound).
    let mut prune_floor = later(Instant::now(), shared.prune_every);
    let mut backoff = Duration::from_millis(50);
    let mut locked_retry = LOCKED_RETRY_MIN;
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
        // A notice of scheduled rows that came while the last wait ended
        // on another branch must still lead to a stage: marking it seen
        // without staging would strand those rows until the fallback poll.
        if scheduled.has_changed().unwrap_or(false) {
            scheduled.borrow_and_update();
            next_stage = Some(Instant::now());
        }
        let duties = async {
            if next_stage.is_some_and(|t| Instant::now() >= t) {
                let s = shared.store.stage(shared.stage_batch).await?;
                next_stage = if s.staged >= shared.stage_batch as u64 {
                    // A full batch: more rows may be due now.
                    Some(Instant::now())
                } else {
                    let due = s.next_due.map(|d| later(Instant::now(), d));
                    if s.skipped {
                        // Due rows were held locked by another session:
                        // nothing tells when that lock goes, so look again.
                        let retry = later(Instant::now(), locked_retry);
                        locked_retry = (locked_retry * 2).min(LOCKED_RETRY_MAX);
                        Some(due.map_or(retry, |d| d.min(retry)))
                    } else {
                        locked_retry = LOCKED_RETRY_MIN;
                        due
                    }
                };
            }
            if Instant::now() >= next_rescue {
                let (n, next_expiry) = shared.store.rescue(shared.lease()).await?;
                if n > 0 {
                    tracing::info!(
                        jobs = n,
                        "corral-durable leader rescued jobs of expired leases"
                    );
                }
                let wait =
                    next_expiry.map_or(fallback, |d| d.saturating_add(RESCUE_SLACK).min(fallback));
                next_rescue = later(Instant::now(), wait);
            }
            if next_prune.is_some_and(|t| Instant::now() >= t) {
                let mut backlog = true;
                for _ in 0..PRUNE_ROUNDS {
                    let batch = shared.prune_batch;
                    if shared.store.prune(batch).await? < batch as u64 {
                        backlog = false;
                        break;
                    }
                }
                if backlog {
                    prune_floor = Instant::now() + PRUNE_PAUSE;
                    next_prune = Some(prune_floor);
                } else {
                    // The next heartbeat says when a row is due next.
                    prune_floor = later(Instant::now(), shared.prune_every);
                    next_prune = None;
                }
            }
            Ok::<(), crate::StoreError>(())
        };
        // A stop never waits on a statement (the store may hang).
        let result = tokio::select! {
            () = shared.halt.cancelled() => return,
            r = duties => r,
        };
        let mut wake_at = next_rescue;
        if let Some(t) = next_stage {
            wake_at = wake_at.min(t);
        }
        if let Some(t) = next_prune {
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
            r = hints.changed() => {
                if r.is_ok() {
                    let h = *hints.borrow_and_update();
                    if let Some(at) = h.rescue_at {
                        next_rescue = next_rescue.min(later(at, RESCUE_SLACK));
                    }
                    if let Some(at) = h.prune_at {
                        next_prune = Some(at.max(prune_floor));
                    }
                }
            }
            r = finished.changed() => {
                // Rows finished: some may be due once their retention
                // passes; prune at the next regular round.
                if r.is_ok() && next_prune.is_none() {
                    next_prune = Some(prune_floor.max(Instant::now()));
                }
            }
            () = shared.leader_changed.notified() => {}
        }
    }
}
