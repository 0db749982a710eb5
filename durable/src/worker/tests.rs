//! The claim loop's no-lost-wake-up rule, with a notice injected while a
//! claim is in flight (a store that holds a claim at a gate).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::client::Backend;
use crate::id::JobId;
use crate::store::signals::Signals;
use crate::store::{
    Beat, BoxFut, CancelResult, ClaimCursor, Claimed, Fate, Finish, LeaseId, Lookup, NewJob,
    RawStats, Store, StoreResult,
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
}

impl Store for Gated {
    fn insert(&self, jobs: Vec<NewJob>) -> BoxFut<'_, StoreResult<Vec<JobId>>> {
        self.inner.insert(jobs)
    }
    fn register(&self, ttl: Duration) -> BoxFut<'_, StoreResult<LeaseId>> {
        self.inner.register(ttl)
    }
    fn heartbeat(&self, lease: LeaseId, ttl: Duration) -> BoxFut<'_, StoreResult<Beat>> {
        self.inner.heartbeat(lease, ttl)
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
    ) -> BoxFut<'a, StoreResult<Vec<Claimed>>> {
        Box::pin(async move {
            let claimed = self.inner.claim(lease, queue, kinds, limit, after).await;
            if self.armed.swap(false, Ordering::AcqRel) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            claimed
        })
    }
    fn finish(&self, lease: LeaseId, batch: Vec<Finish>) -> BoxFut<'_, StoreResult<Vec<Fate>>> {
        self.inner.finish(lease, batch)
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
    fn stage(&self, limit: i64) -> BoxFut<'_, StoreResult<(u64, Option<Duration>)>> {
        self.inner.stage(limit)
    }
    fn rescue(&self, own: LeaseId) -> BoxFut<'_, StoreResult<(u64, Option<Duration>)>> {
        self.inner.rescue(own)
    }
    fn prune(&self, limit: i64) -> BoxFut<'_, StoreResult<u64>> {
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
