//! The claim loop's no-lost-wake-up rule, with a notice injected while a
//! claim is in flight (a store that holds a claim at a gate).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::client::Backend;
use crate::id::JobId;
use crate::store::signals::Signals;
use crate::store::{
    Beat, BoxFut, CancelResult, ClaimBatch, ClaimCursor, Fate, Finish, LeaseId, Lookup, NewJob,
    RawStats, Staged, Store, StoreResult,
};
use crate::{Client, Job, JobContext, JobResult, MemoryStore, Worker};

/// A memory store whose next claim, once armed, waits at a gate after it
/// read the table and before it answers.
#[derive(Default)]
struct Gated {
    inner: MemoryStore,
    armed: AtomicBool,
    entered: Notify,
    release: Notify,
    /// The next claim commits, but its caller gets an error.
    lose_reply: AtomicBool,
    /// The next finish commits, then waits at a gate before it answers.
    hold_finish: AtomicBool,
    finish_entered: Notify,
    finish_release: Notify,
    /// Claims sent.
    claims: AtomicUsize,
    /// Statements of the lease and the leader's duties, by kind.
    beats: AtomicUsize,
    stages: AtomicUsize,
    rescues: AtomicUsize,
    prunes: AtomicUsize,
}

impl Store for Gated {
    fn insert(&self, jobs: Vec<NewJob>) -> BoxFut<'_, StoreResult<Vec<JobId>>> {
        self.inner.insert(jobs)
    }
    fn register(&self, ttl: Duration) -> BoxFut<'_, StoreResult<LeaseId>> {
        self.inner.register(ttl)
    }
    fn heartbeat(
        &self,
        lease: LeaseId,
        ttl: Duration,
        held: Vec<i64>,
        settled_below: i64,
    ) -> BoxFut<'_, StoreResult<Beat>> {
        self.beats.fetch_add(1, Ordering::Relaxed);
        self.inner.heartbeat(lease, ttl, held, settled_below)
    }
    fn retire(&self, lease: LeaseId) -> BoxFut<'_, StoreResult<()>> {
        self.inner.retire(lease)
    }
    fn claim<'a>(
        &'a self,
        lease: LeaseId,
        queue: &'a str,
        kinds: &'a [String],
        limit: usize,
        after: Option<ClaimCursor>,
        claim_no: i64,
    ) -> BoxFut<'a, StoreResult<ClaimBatch>> {
        self.claims.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let claimed = self
                .inner
                .claim(lease, queue, kinds, limit, after, claim_no)
                .await;
            if self.lose_reply.swap(false, Ordering::AcqRel) {
                // Committed, but the answer never arrives.
                return Err(crate::StoreError::Pool("the connection dropped".into()));
            }
            if self.armed.swap(false, Ordering::AcqRel) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            claimed
        })
    }
    fn finish(&self, lease: LeaseId, batch: Vec<Finish>) -> BoxFut<'_, StoreResult<Vec<Fate>>> {
        Box::pin(async move {
            let fates = self.inner.finish(lease, batch).await;
            if self.hold_finish.swap(false, Ordering::AcqRel) {
                self.finish_entered.notify_one();
                self.finish_release.notified().await;
            }
            fates
        })
    }
    fn lookup(&self, id: JobId) -> BoxFut<'_, StoreResult<Lookup>> {
        self.inner.lookup(id)
    }
    fn find_key<'a>(&'a self, key: &'a str) -> BoxFut<'a, StoreResult<Option<JobId>>> {
        self.inner.find_key(key)
    }
    fn cancel(&self, id: JobId) -> BoxFut<'_, StoreResult<CancelResult>> {
        self.inner.cancel(id)
    }
    fn stats(&self) -> BoxFut<'_, StoreResult<RawStats>> {
        self.inner.stats()
    }
    fn stage(&self, limit: i64) -> BoxFut<'_, StoreResult<Staged>> {
        self.stages.fetch_add(1, Ordering::Relaxed);
        self.inner.stage(limit)
    }
    fn rescue(&self, own: LeaseId) -> BoxFut<'_, StoreResult<(u64, Option<Duration>)>> {
        self.rescues.fetch_add(1, Ordering::Relaxed);
        self.inner.rescue(own)
    }
    fn prune(&self, limit: i64) -> BoxFut<'_, StoreResult<u64>> {
        self.prunes.fetch_add(1, Ordering::Relaxed);
        self.inner.prune(limit)
    }
    fn signals(&self) -> &Arc<Signals> {
        self.inner.signals()
    }
}

static A_STARTED: AtomicBool = AtomicBool::new(false);

#[derive(Serialize, Deserialize)]
struct Nap {
    first: bool,
}

impl Job for Nap {
    const KIND: &'static str = "nap";
    type Output = ();
    type Error = ();

    async fn run(&self, _ctx: JobContext) -> JobResult<(), ()> {
        if self.first {
            A_STARTED.store(true, Ordering::Release);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(())
    }
}

/// Two slots: the claim of `a` comes back short (no more work thought to
/// be there). A claim then in flight finds nothing; `b`'s notice arrives
/// before it answers. The loop must claim again: the memory store has no
/// fallback poll, so a lost notice leaves `b` waiting for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_during_a_claim_in_flight_is_not_lost() {
    let gated = Arc::new(Gated::default());
    let backend = Backend(gated.clone());
    let w = Worker::builder(backend.clone())
        .register::<Nap>()
        .queue("q", 2)
        .start()
        .await
        .unwrap();
    let client = Client::new(backend);
    let a = client
        .enqueue(Nap { first: true })
        .queue("q")
        .submit()
        .await
        .unwrap();
    while !A_STARTED.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A claim in flight (woken by hand: nothing new is due)...
    gated.armed.store(true, Ordering::Release);
    let entered = gated.entered.notified();
    gated.signals().wake_queue("q");
    tokio::time::timeout(Duration::from_secs(10), entered)
        .await
        .expect("no claim started");
    // ...while `b` is inserted and notified; then the claim answers empty.
    let b = client
        .enqueue(Nap { first: false })
        .queue("q")
        .submit()
        .await
        .unwrap();
    gated.release.notify_one();
    // Bound only against a hang: lost, `b` would never run.
    tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("the notice that came during the claim was lost")
        .unwrap();
    a.await.unwrap();
    w.stop(Duration::from_secs(10)).await;
}

#[derive(Serialize, Deserialize)]
struct Sleepy {
    secs: u64,
}

impl Job for Sleepy {
    const KIND: &'static str = "sleepy";
    type Output = ();
    type Error = ();

    async fn run(&self, _ctx: JobContext) -> JobResult<(), ()> {
        tokio::time::sleep(Duration::from_secs(self.secs)).await;
        Ok(())
    }
}

impl Gated {
    /// Heartbeats, stages, rescues and prunes so far.
    fn counts(&self) -> [usize; 4] {
        [&self.beats, &self.stages, &self.rescues, &self.prunes].map(|c| c.load(Ordering::Relaxed))
    }
}

/// An idle worker (alone, so it leads) sends a heartbeat every two thirds
/// of its TTL and nothing else: no rescue (no other lease can expire), no
/// prune (no row finished), no staging (none scheduled). While it holds a
/// job it beats every third of the TTL.
#[tokio::test(start_paused = true)]
async fn an_idle_worker_only_beats_every_two_thirds_of_its_ttl() {
    let gated = Arc::new(Gated::default());
    let backend = Backend(gated.clone());
    let w = Worker::builder(backend.clone())
        .register::<Sleepy>()
        .queue("q", 1)
        .lease_ttl(Duration::from_secs(30))
        .prune_interval(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    // The start: one beat (leadership), one stage and one rescue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gated.counts(), [1, 1, 1, 0]);
    // Beats at 20, 40, ... 120 s.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(gated.counts(), [7, 1, 1, 0], "idle: beats every 20 s only");
    let client = Client::new(backend);
    let h = client
        .enqueue(Sleepy { secs: 55 })
        .queue("q")
        .submit()
        .await
        .unwrap();
    h.await.unwrap();
    // Held from about 121 s to 176 s: the last idle beat (120 s) is a
    // third of the TTL old at 130 s, then every 10 s: 130, ..., 170.
    let [beats, stages, rescues, _] = gated.counts();
    assert_eq!(beats - 7, 5, "busy: beats every 10 s");
    assert_eq!((stages, rescues), (1, 1));
    w.stop(Duration::from_secs(10)).await;
}

/// A claim that committed but whose answer never arrived leaves its row
/// running under the worker's live lease: renewed by every heartbeat, it
/// would never be rescued. The heartbeat reports it (claimed by a claim
/// that has answered, not held), the worker gives it back, claims it again
/// and runs it.
#[tokio::test(start_paused = true)]
async fn a_claim_whose_answer_was_lost_is_given_back() {
    let gated = Arc::new(Gated::default());
    let backend = Backend(gated.clone());
    let w = Worker::builder(backend.clone())
        .register::<Sleepy>()
        .queue("q", 1)
        .lease_ttl(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gated.lose_reply.store(true, Ordering::Release);
    let client = Client::new(backend);
    let h = client
        .enqueue(Sleepy { secs: 0 })
        .queue("q")
        .submit()
        .await
        .unwrap();
    // Idle heartbeats go every 2 s; the lease would be renewed for ever.
    tokio::time::timeout(Duration::from_secs(10), h)
        .await
        .expect("the row of the lost answer was never given back")
        .unwrap();
    assert!(
        !gated.lose_reply.load(Ordering::Acquire),
        "a claim's answer was lost"
    );
    assert_eq!(w.stats().lost, 0);
    w.stop(Duration::from_secs(10)).await;
}

static SNOOZY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Snoozes at once on its first run; later runs take a while.
#[derive(Serialize, Deserialize)]
struct Snoozy;

impl Job for Snoozy {
    const KIND: &'static str = "snoozy";
    type Output = ();
    type Error = ();

    async fn run(&self, _ctx: JobContext) -> JobResult<(), ()> {
        if SNOOZY_RUNS.fetch_add(1, Ordering::AcqRel) == 0 {
            return Err(crate::Ending::Snooze(Duration::ZERO));
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(())
    }
}

/// A snooze gives the attempt back: the worker claims the same (job,
/// attempt) again as soon as the snooze is written, and here before the
/// finalizer unholds the snoozed run (its write is held at a gate after it
/// committed). That late unhold must not forget the new run: a heartbeat
/// would then report the running row as a claim whose answer was lost,
/// give it back while it runs, and the job would run a third time.
#[tokio::test(start_paused = true)]
async fn a_snoozed_run_unheld_late_does_not_release_its_next_run() {
    let gated = Arc::new(Gated::default());
    let backend = Backend(gated.clone());
    let w = Worker::builder(backend.clone())
        .register::<Snoozy>()
        .queue("q", 1)
        .lease_ttl(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    gated.hold_finish.store(true, Ordering::Release);
    let client = Client::new(backend);
    let h = client.enqueue(Snoozy).queue("q").submit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), gated.finish_entered.notified())
        .await
        .expect("the snooze was never written");
    // The snooze committed; its unhold waits. The worker claims the row
    // again (same attempt, same lease) and runs it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while SNOOZY_RUNS.load(Ordering::Acquire) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the snoozed job was not claimed again");
    gated.finish_release.notify_one();
    // The second run takes 10 s: heartbeats go every second meanwhile.
    tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .expect("the job never finished")
        .unwrap();
    assert_eq!(
        SNOOZY_RUNS.load(Ordering::Acquire),
        2,
        "one snoozed run, then exactly one more"
    );
    assert_eq!(w.stats().lost, 0, "no write was refused");
    w.stop(Duration::from_secs(10)).await;
}

/// The engine refuses a run's task id (held here by a task of the test's,
/// under both the id a first run of job 1 gets now and the one it got when
/// ids were "job/attempt", which a snoozed run's next claim could reuse).
/// The row is neither lost nor given back at once to be claimed and
/// refused again in a hot loop: it runs once the engine accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_engine_task_id_does_not_loop_claims() {
    let gated = Arc::new(Gated::default());
    let backend = Backend(gated.clone());
    let w = Worker::builder(backend.clone())
        .register::<Sleepy>()
        .queue("q", 1)
        .start()
        .await
        .unwrap();
    let taken = ["1/1", "1/1/0"];
    let mut holders = Vec::new();
    for id in taken {
        let holder = w
            .shared
            .cluster
            .task(|_ctx| async { Ok::<(), ()>(()) })
            .id(id)
            // Pending, not running: the engine's one slot stays free.
            .delay(Duration::from_secs(3600))
            .submit()
            .unwrap();
        holders.push(holder);
    }
    let client = Client::new(backend);
    let h = client
        .enqueue(Sleepy { secs: 0 })
        .queue("q")
        .submit()
        .await
        .unwrap();
    assert_eq!(h.id(), JobId(1), "the engine holds this job's task ids");
    tokio::time::timeout(Duration::from_secs(30), h)
        .await
        .expect("the refused job never ran")
        .unwrap();
    let claims = gated.claims.load(Ordering::Relaxed);
    assert!(claims < 20, "{claims} claims: a claim/release loop");
    for id in taken {
        w.shared.cluster.cancel_task(id);
    }
    drop(holders);
    w.stop(Duration::from_secs(10)).await;
}
