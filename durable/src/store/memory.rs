//! `MemoryStore`: the embedded store. Same states, fences and leases as
//! PostgreSQL, inside one process and not durable. One mutex guards the
//! table; every operation is one critical section, which is what one SQL
//! statement is for the PostgreSQL store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::signals::Signals;
use super::{
    Action, Beat, BoxFut, CancelResult, ClaimBatch, ClaimCursor, Claimed, Fate, Finish, LeaseId,
    Lookup, NewJob, RawOutcome, RawStats, Staged, Start, Store, StoreResult,
};
use crate::error::StoreError;
use crate::id::JobId;
use crate::MAX_LOST_ATTEMPTS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Scheduled,
    Available,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Available => "available",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    fn is_live(self) -> bool {
        matches!(self, State::Scheduled | State::Available | State::Running)
    }
}

#[derive(Debug)]
struct Row {
    job: NewJob,
    state: State,
    run_at: Instant,
    attempt: i32,
    lost: i32,
    lease: Option<LeaseId>,
    /// The number of the claim that made it running.
    claim: i64,
    cancel_requested: bool,
    output: Option<String>,
    error: Option<String>,
    prune_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Table {
    rows: BTreeMap<i64, Row>,
    last_id: i64,
    live_keys: HashMap<String, i64>,
    leases: HashMap<LeaseId, Instant>,
    last_lease: LeaseId,
    leader: Option<(LeaseId, Instant)>,
}

impl Table {
    fn lease_alive(&self, lease: LeaseId, now: Instant) -> bool {
        self.leases.get(&lease).is_some_and(|&exp| exp > now)
    }
}

/// The embedded store: no setup, same API and contract as [`PgStore`](crate::PgStore)
/// within one process, and not durable (everything is gone with the process).
///
/// Cheap to clone; clones share the table. Start times given as wall-clock
/// times are converted to this process's monotonic clock at submit.
///
/// ```
/// use corral_durable::{Client, MemoryStore};
/// let store = MemoryStore::new();
/// let client = Client::new(&store);
/// # let _ = client;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    table: Mutex<Table>,
    signals: Arc<Signals>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Expires `lease` now, as if its worker had been paused past its TTL
    /// (the protocol model test drives leases by hand).
    #[cfg(test)]
    pub(crate) fn expire(&self, lease: LeaseId) {
        let mut t = self.inner.table.lock();
        if let Some(exp) = t.leases.get_mut(&lease) {
            *exp = Instant::now() - Duration::from_millis(1);
        }
    }

    /// Every row's id, state, attempt and lease (model test helper).
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<(JobId, String, i32, Option<LeaseId>)> {
        let t = self.inner.table.lock();
        t.rows
            .iter()
            .map(|(id, r)| (JobId(*id), r.state.name().to_owned(), r.attempt, r.lease))
            .collect()
    }
}

fn run_at(start: Start, now: Instant) -> Instant {
    match start {
        Start::Now => now,
        Start::After(d) => now
            .checked_add(d)
            .unwrap_or(now + Duration::from_secs(1 << 40)),
        Start::At(at) => match at.duration_since(SystemTime::now()) {
            Ok(ahead) => now
                .checked_add(ahead)
                .unwrap_or(now + Duration::from_secs(1 << 40)),
            Err(e) => now.checked_sub(e.duration()).unwrap_or(now),
        },
    }
}

/// When a row finished at `now` is pruned; saturates far in the future.
fn expiry(now: Instant, retention_ms: i64) -> Instant {
    let retention = Duration::from_millis(u64::try_from(retention_ms).unwrap_or(0));
    now.checked_add(retention)
        .unwrap_or(now + Duration::from_secs(1 << 40))
}

fn ready<T: Send + 'static>(v: T) -> BoxFut<'static, T> {
    Box::pin(std::future::ready(v))
}

impl Store for MemoryStore {
    fn insert(&self, jobs: Vec<NewJob>) -> BoxFut<'_, StoreResult<Vec<JobId>>> {
        let now = Instant::now();
        let mut t = self.inner.table.lock();
        let mut seen = std::collections::HashSet::new();
        for job in &jobs {
            if let Some(key) = &job.key {
                if t.live_keys.contains_key(key) || !seen.insert(key.clone()) {
                    return ready(Err(StoreError::DuplicateKey(key.clone())));
                }
            }
        }
        let mut ids = Vec::with_capacity(jobs.len());
        let mut woken = Vec::new();
        let mut scheduled = false;
        for job in jobs {
            t.last_id += 1;
            let id = t.last_id;
            let at = run_at(job.start, now);
            let state = if at <= now {
                woken.push(job.queue.clone());
                State::Available
            } else {
                scheduled = true;
                State::Scheduled
            };
            if let Some(key) = &job.key {
                t.live_keys.insert(key.clone(), id);
            }
            t.rows.insert(
                id,
                Row {
                    job,
                    state,
                    run_at: at,
                    attempt: 0,
                    lost: 0,
                    lease: None,
                    claim: 0,
                    cancel_requested: false,
                    output: None,
                    error: None,
                    prune_at: None,
                },
            );
            ids.push(JobId(id));
        }
        drop(t);
        woken.iter().for_each(|q| self.inner.signals.wake_queue(q));
        if scheduled {
            self.inner.signals.wake_scheduled();
        }
        ready(Ok(ids))
    }

    fn register(&self, ttl: Duration) -> BoxFut<'_, StoreResult<LeaseId>> {
        let mut t = self.inner.table.lock();
        t.last_lease += 1;
        let lease = t.last_lease;
        t.leases.insert(lease, Instant::now() + ttl);
        ready(Ok(lease))
    }

    fn heartbeat(
        &self,
        lease: LeaseId,
        ttl: Duration,
        held: Vec<i64>,
        settled_below: i64,
    ) -> BoxFut<'_, StoreResult<Beat>> {
        let now = Instant::now();
        let mut t = self.inner.table.lock();
        if !t.lease_alive(lease, now) {
            return ready(Ok(Beat::default()));
        }
        t.leases.insert(lease, now + ttl);
        let leader = match t.leader {
            Some((holder, exp)) if holder != lease && exp > now => false,
            _ => {
                t.leader = Some((lease, now + ttl));
                true
            }
        };
        let cancels = t
            .rows
            .iter()
            .filter(|(_, r)| r.state == State::Running && r.lease == Some(lease))
            .filter(|(_, r)| r.cancel_requested)
            .map(|(id, _)| JobId(*id))
            .collect();
        let unknown = t
            .rows
            .iter()
            .filter(|(id, r)| {
                r.state == State::Running
                    && r.lease == Some(lease)
                    && r.claim < settled_below
                    && !held.contains(id)
            })
            .map(|(id, r)| (JobId(*id), r.attempt))
            .collect();
        let until = |at: Instant| at.saturating_duration_since(now);
        let (leader_expires_in, rescue_in, prune_in) = if leader {
            // Rows running under a lease no longer alive (expired or
            // retired) need a rescue now; else the next other expiry.
            let stranded = t.rows.values().any(|r| {
                r.state == State::Running && !r.lease.is_some_and(|l| t.lease_alive(l, now))
            });
            let rescue = if stranded {
                Some(Duration::ZERO)
            } else {
                t.leases
                    .iter()
                    .filter(|&(&l, &e)| l != lease && e > now)
                    .map(|(_, &e)| until(e))
                    .min()
            };
            let prune = t.rows.values().filter_map(|r| r.prune_at).min().map(until);
            (None, rescue, prune)
        } else {
            (t.leader.map(|(_, e)| until(e)), None, None)
        };
        ready(Ok(Beat {
            alive: true,
            leader,
            cancels,
            leader_expires_in,
            rescue_in,
            prune_in,
            unknown,
        }))
    }

    fn retire(&self, lease: LeaseId) -> BoxFut<'_, StoreResult<()>> {
        let mut t = self.inner.table.lock();
        t.leases.remove(&lease);
        if t.leader.is_some_and(|(l, _)| l == lease) {
            t.leader = None;
            drop(t);
            self.inner.signals.wake_leader_vacant();
        }
        ready(Ok(()))
    }

    fn claim<'a>(
        &'a self,
        lease: LeaseId,
        queue: &'a str,
        kinds: &'a [String],
        limit: usize,
        // A hint only: this table is small and has no dead entries to skip.
        _after: Option<ClaimCursor>,
        claim_no: i64,
    ) -> BoxFut<'a, StoreResult<ClaimBatch>> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut t = self.inner.table.lock();
        if !t.lease_alive(lease, now) {
            return ready(Ok(ClaimBatch::default()));
        }
        let mut due: Vec<(std::cmp::Reverse<i32>, Instant, i64)> = t
            .rows
            .iter()
            .filter(|(_, r)| {
                r.state == State::Available
                    && r.job.queue == queue
                    && r.run_at <= now
                    && kinds.iter().any(|k| *k == r.job.kind)
            })
            .map(|(id, r)| (std::cmp::Reverse(r.job.priority), r.run_at, *id))
            .collect();
        due.sort_unstable();
        let mut out = Vec::new();
        for (_, _, id) in due.into_iter().take(limit) {
            let r = t.rows.get_mut(&id).expect("row exists");
            r.state = State::Running;
            r.attempt += 1;
            r.lease = Some(lease);
            r.claim = claim_no;
            out.push(Claimed {
                id: JobId(id),
                key: r.job.key.clone(),
                queue: r.job.queue.to_string(),
                kind: r.job.kind.to_string(),
                args: r.job.args.clone(),
                attempt: r.attempt,
                lost: r.lost,
                max_attempts: r.job.max_attempts,
                timeout_ms: r.job.timeout_ms,
                backoff: r.job.backoff.to_string(),
                jitter: r.job.jitter,
                immediate: r.job.immediate,
                cursor: ClaimCursor {
                    priority: r.job.priority,
                    run_at: wall - now.saturating_duration_since(r.run_at),
                    id: JobId(id),
                },
            });
        }
        // No row locks here: nothing due is ever passed over.
        ready(Ok(ClaimBatch {
            rows: out,
            skipped: false,
        }))
    }

    fn finish(&self, lease: LeaseId, batch: Vec<Finish>) -> BoxFut<'_, StoreResult<Vec<Fate>>> {
        let now = Instant::now();
        let mut guard = self.inner.table.lock();
        let t = &mut *guard;
        let alive = t.lease_alive(lease, now);
        let mut accepted = Vec::with_capacity(batch.len());
        let mut done = Vec::new();
        let mut woken = Vec::new();
        let mut scheduled = false;
        for f in batch {
            let Some(r) = t.rows.get_mut(&f.id.0) else {
                accepted.push(Fate::Refused);
                continue;
            };
            let fenced = alive
                && r.state == State::Running
                && r.attempt == f.attempt
                && r.lease == Some(lease);
            if !fenced {
                accepted.push(Fate::Refused);
                continue;
            }
            accepted.push(if r.cancel_requested && f.action != Action::Cancel {
                Fate::CancelledInstead
            } else {
                Fate::Applied
            });
            r.lease = None;
            let requeue = |r: &mut Row, delay: Duration| {
                r.run_at = now
                    .checked_add(delay)
                    .unwrap_or(now + Duration::from_secs(1 << 40));
                r.state = if delay.is_zero() {
                    State::Available
                } else {
                    State::Scheduled
                };
            };
            match (r.cancel_requested, f.action) {
                (true, _) | (_, Action::Cancel) => r.state = State::Cancelled,
                (_, Action::Complete { output }) => {
                    r.state = State::Completed;
                    r.output = Some(output);
                }
                (_, Action::Fail { error }) => {
                    r.state = State::Failed;
                    r.error = Some(error);
                }
                (_, Action::Retry { delay, error }) => {
                    r.error = Some(error);
                    requeue(r, delay);
                }
                (_, Action::Snooze { delay }) => {
                    r.attempt -= 1;
                    requeue(r, delay);
                }
                (_, Action::Release) => {
                    // The attempt is given back and the start time kept, so
                    // the job keeps its place in the order.
                    r.attempt -= 1;
                    r.state = State::Available;
                }
            }
            match r.state {
                State::Available => woken.push(r.job.queue.clone()),
                State::Scheduled => scheduled = true,
                _ => {
                    r.prune_at = Some(expiry(now, r.job.retention_ms));
                    if let Some(key) = &r.job.key {
                        t.live_keys.remove(key);
                    }
                    done.push(f.id);
                }
            }
        }
        drop(guard);
        let s = &self.inner.signals;
        woken.iter().for_each(|q| s.wake_queue(q));
        if !done.is_empty() {
            s.rows_finished();
        }
        done.into_iter().for_each(|id| s.job_done(id));
        if scheduled {
            s.wake_scheduled();
        }
        ready(Ok(accepted))
    }

    fn lookup(&self, id: JobId) -> BoxFut<'_, StoreResult<Lookup>> {
        let t = self.inner.table.lock();
        let found = match t.rows.get(&id.0) {
            Some(r) => {
                let kind = r.job.kind.to_string();
                match r.state {
                    s if s.is_live() => Lookup::Pending { kind },
                    State::Completed => Lookup::Done {
                        kind,
                        outcome: RawOutcome::Completed(r.output.clone().unwrap_or_default()),
                    },
                    State::Failed => Lookup::Done {
                        kind,
                        outcome: RawOutcome::Failed(r.error.clone().unwrap_or_default()),
                    },
                    _ => Lookup::Done {
                        kind,
                        outcome: RawOutcome::Cancelled,
                    },
                }
            }
            None if id.0 >= 1 && id.0 <= t.last_id => Lookup::Expired,
            None => Lookup::NotFound,
        };
        ready(Ok(found))
    }

    fn find_key<'a>(&'a self, key: &'a str) -> BoxFut<'a, StoreResult<Option<JobId>>> {
        let t = self.inner.table.lock();
        let id = t.live_keys.get(key).copied().or_else(|| {
            t.rows
                .iter()
                .rev()
                .find(|(_, r)| r.job.key.as_deref() == Some(key))
                .map(|(id, _)| *id)
        });
        ready(Ok(id.map(JobId)))
    }

    fn cancel(&self, id: JobId) -> BoxFut<'_, StoreResult<CancelResult>> {
        let now = Instant::now();
        let mut t = self.inner.table.lock();
        let Some(r) = t.rows.get_mut(&id.0) else {
            return ready(Ok(CancelResult::NotFound));
        };
        let result = match r.state {
            State::Scheduled | State::Available => {
                r.state = State::Cancelled;
                r.prune_at = Some(expiry(now, r.job.retention_ms));
                if let Some(key) = r.job.key.clone() {
                    t.live_keys.remove(&key);
                }
                CancelResult::Cancelled
            }
            State::Running => {
                r.cancel_requested = true;
                CancelResult::Requested
            }
            _ => CancelResult::AlreadyFinished,
        };
        drop(t);
        match result {
            CancelResult::Cancelled => {
                self.inner.signals.job_done(id);
                self.inner.signals.rows_finished();
            }
            CancelResult::Requested => self.inner.signals.cancel_requested(id),
            _ => {}
        }
        ready(Ok(result))
    }

    fn stats(&self) -> BoxFut<'_, StoreResult<RawStats>> {
        let t = self.inner.table.lock();
        let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for r in t.rows.values() {
            *counts
                .entry((r.job.queue.to_string(), r.state.name()))
                .or_default() += 1;
        }
        let rows = counts
            .into_iter()
            .map(|((q, s), n)| (q, s.to_owned(), n))
            .collect();
        ready(Ok(RawStats { rows }))
    }

    fn stage(&self, limit: i64) -> BoxFut<'_, StoreResult<Staged>> {
        let now = Instant::now();
        let mut t = self.inner.table.lock();
        let limit = u64::try_from(limit).unwrap_or(0);
        let mut staged = 0;
        let mut next: Option<Instant> = None;
        let mut woken = Vec::new();
        for r in t.rows.values_mut().filter(|r| r.state == State::Scheduled) {
            if r.run_at <= now {
                if staged >= limit {
                    continue;
                }
                r.state = State::Available;
                staged += 1;
                woken.push(r.job.queue.clone());
            } else {
                next = Some(next.map_or(r.run_at, |n| n.min(r.run_at)));
            }
        }
        drop(t);
        woken.iter().for_each(|q| self.inner.signals.wake_queue(q));
        // No row locks here: nothing due is ever passed over.
        ready(Ok(Staged {
            staged,
            next_due: next.map(|n| n - now),
            skipped: false,
        }))
    }

    fn rescue(&self, own: LeaseId) -> BoxFut<'_, StoreResult<(u64, Option<Duration>)>> {
        let now = Instant::now();
        let mut t = self.inner.table.lock();
        let dead: Vec<i64> = t
            .rows
            .iter()
            .filter(|(_, r)| {
                r.state == State::Running && !r.lease.is_some_and(|l| t.lease_alive(l, now))
            })
            .map(|(id, _)| *id)
            .collect();
        let mut woken = Vec::new();
        let mut done = Vec::new();
        for id in &dead {
            let r = t.rows.get_mut(id).expect("row exists");
            r.lease = None;
            r.lost += 1;
            if r.cancel_requested {
                r.state = State::Cancelled;
            } else if r.lost >= MAX_LOST_ATTEMPTS {
                r.state = State::Failed;
                r.error = Some(crate::job::StoredError::encode::<()>(
                    &crate::JobError::Abandoned {
                        attempts: r.attempt as u32,
                    },
                ));
            } else {
                r.state = State::Available;
                woken.push(r.job.queue.clone());
                continue;
            }
            r.prune_at = Some(expiry(now, r.job.retention_ms));
            if let Some(key) = r.job.key.clone() {
                t.live_keys.remove(&key);
            }
            done.push(JobId(*id));
        }
        let next = t
            .leases
            .iter()
            .filter(|&(&l, &e)| l != own && e > now)
            .map(|(_, &e)| e - now)
            .min();
        drop(t);
        woken.iter().for_each(|q| self.inner.signals.wake_queue(q));
        if !done.is_empty() {
            self.inner.signals.rows_finished();
        }
        done.into_iter()
            .for_each(|id| self.inner.signals.job_done(id));
        ready(Ok((dead.len() as u64, next)))
    }

    fn prune(&self, limit: i64) -> BoxFut<'_, StoreResult<u64>> {
        let now = Instant::now();
        let mut t = self.inner.table.lock();
        let old: Vec<i64> = t
            .rows
            .iter()
            .filter(|(_, r)| r.prune_at.is_some_and(|p| p <= now))
            .map(|(id, _)| *id)
            .take(usize::try_from(limit).unwrap_or(0))
            .collect();
        for id in &old {
            t.rows.remove(id);
        }
        drop(t);
        old.iter()
            .for_each(|id| self.inner.signals.job_done(JobId(*id)));
        ready(Ok(old.len() as u64))
    }

    fn signals(&self) -> &Arc<Signals> {
        &self.inner.signals
    }
}
