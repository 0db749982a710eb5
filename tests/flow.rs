//! Flow control: pausing and resuming a running cluster, timed pauses,
//! resizing its worker pool, and how both meet retries and shutdowns.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use corral::{Cluster, FixedBackoff, ResizeError, RetryMode, TaskError, TaskHandle};
use tokio::time::{sleep, Instant};

use common::{log, snapshot, yield_until, HOUR, MS, SEC};

/// Counts attempts running at once, and the most seen.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

impl Gauge {
    fn now(&self) -> usize {
        self.now.load(SeqCst)
    }
    fn max(&self) -> usize {
        self.max.load(SeqCst)
    }
    fn started(&self) -> usize {
        self.started.load(SeqCst)
    }
}

/// Submits a task that runs for `d` (paused clock), counted by `g`.
fn timed(c: &Cluster, g: &Gauge, d: Duration) -> TaskHandle<(), String> {
    let g = g.clone();
    c.task(move |_| {
        let g = g.clone();
        async move {
            g.started.fetch_add(1, SeqCst);
            let n = g.now.fetch_add(1, SeqCst) + 1;
            g.max.fetch_max(n, SeqCst);
            sleep(d).await;
            g.now.fetch_sub(1, SeqCst);
            Ok(())
        }
    })
    .submit()
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn pause_stops_new_claims_while_a_running_attempt_finishes() {
    let c = Cluster::new(2).unwrap();
    let g = Gauge::default();
    let running = timed(&c, &g, 10 * MS);
    yield_until("first attempt started", || g.started() == 1).await;
    assert!(c.pause());
    assert!(c.is_paused());
    let queued = timed(&c, &g, MS);
    // An hour of (virtual) time: a spinning worker would keep the runtime
    // busy and this sleep would never end.
    sleep(HOUR).await;
    assert_eq!(g.started(), 1, "nothing new starts while paused");
    let s = c.stats();
    assert!(s.paused);
    assert_eq!((s.queued, s.running), (1, 0));
    assert_eq!(running.await, Ok(()), "the running attempt finished");
    assert!(c.resume());
    assert!(!c.resume(), "not paused any more");
    assert_eq!(queued.await, Ok(()));
    assert!(!c.stats().paused);
    c.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn resume_starts_queued_tasks_in_exact_priority_order() {
    let c = Cluster::new(1).unwrap();
    c.pause();
    let order = log();
    let mut handles = Vec::new();
    for (name, prio) in [("a", 1), ("b", 5), ("c", 3), ("d", 5), ("e", 0), ("f", 3)] {
        let order = order.clone();
        handles.push(
            c.task(move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(name);
                    Ok::<_, String>(())
                }
            })
            .priority(prio)
            .submit()
            .unwrap(),
        );
    }
    sleep(SEC).await;
    assert!(snapshot(&order).is_empty());
    c.resume();
    for h in handles {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(snapshot(&order), vec!["b", "d", "c", "f", "a", "e"]);
}

#[tokio::test(start_paused = true)]
async fn timed_pause_resumes_on_the_clusters_clock() {
    let c = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    assert!(c.pause_for(10 * SEC));
    let started = log();
    let s = started.clone();
    let h = c
        .task(move |_| {
            s.lock().unwrap().push(Instant::now());
            async { Ok::<_, String>(()) }
        })
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(()));
    assert_eq!(snapshot(&started), vec![t0 + 10 * SEC]);
    assert!(!c.is_paused());

    // A later `pause` makes a timed pause last until `resume`.
    c.pause_for(SEC);
    c.pause();
    let g = Gauge::default();
    let h = timed(&c, &g, MS);
    sleep(HOUR).await;
    assert_eq!(g.started(), 0);
    c.resume();
    assert_eq!(h.await, Ok(()));

    // A later `pause_for` replaces the deadline.
    let t1 = Instant::now();
    c.pause_for(HOUR);
    c.pause_for(2 * SEC);
    let s = started.clone();
    let h = c
        .task(move |_| {
            s.lock().unwrap().push(Instant::now());
            async { Ok::<_, String>(()) }
        })
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(()));
    assert_eq!(snapshot(&started)[1], t1 + 2 * SEC);
}

#[tokio::test(start_paused = true)]
async fn pause_during_an_immediate_retry_holds_the_next_attempt() {
    let c = Cluster::new(1).unwrap();
    let times = log();
    let t = times.clone();
    let t0 = Instant::now();
    let h = c
        .task(move |ctx| {
            t.lock().unwrap().push(Instant::now());
            async move {
                if ctx.attempt() < 3 {
                    Err(format!("fail {}", ctx.attempt()))
                } else {
                    Ok(ctx.attempt())
                }
            }
        })
        .retry(5)
        .backoff(FixedBackoff::new(100 * MS))
        .retry_mode(RetryMode::Immediate)
        .submit()
        .unwrap();
    yield_until("first attempt", || snapshot(&times).len() == 1).await;
    c.pause();
    sleep(SEC).await;
    // The delay (100 ms) is long over, but the next attempt waits.
    assert_eq!(snapshot(&times).len(), 1);
    let s = c.stats();
    assert_eq!(
        (s.running, s.queued),
        (1, 0),
        "it keeps its place and worker"
    );
    c.resume();
    assert_eq!(h.await, Ok(3));
    assert_eq!(
        snapshot(&times),
        vec![t0, t0 + SEC, t0 + SEC + 100 * MS],
        "attempt 2 at the resume, attempt 3 a delay later"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_and_cancel_work_while_paused() {
    // A waiting immediate retry is ended by a stop while paused.
    let c = Cluster::new(1).unwrap();
    let retried = c
        .task(|_| async { Err::<(), _>("no".to_string()) })
        .retry(3)
        .backoff(FixedBackoff::new(MS))
        .retry_mode(RetryMode::Immediate)
        .submit()
        .unwrap();
    yield_until("a retry is waiting", || c.stats().running == 1).await;
    c.pause();
    sleep(SEC).await;
    c.stop(SEC).await.unwrap();
    assert_eq!(retried.await, Err(TaskError::Shutdown));

    // Stop: the running attempt finishes, the queued task is shut down.
    let c = Cluster::new(2).unwrap();
    let g = Gauge::default();
    let running = timed(&c, &g, 10 * MS);
    yield_until("started", || g.started() == 1).await;
    c.pause();
    let queued = timed(&c, &g, MS);
    c.stop(SEC).await.unwrap();
    assert_eq!(running.await, Ok(()));
    assert_eq!(queued.await, Err(TaskError::Shutdown));
    assert_eq!(g.started(), 1);
    assert_eq!(c.live_workers(), 0);

    // Cancel: queued tasks resolve as shut down, `cancel_task` as cancelled.
    let c = Cluster::new(1).unwrap();
    c.pause();
    let g = Gauge::default();
    let one = c
        .task(|_| async { Ok::<_, String>(()) })
        .id("one")
        .submit()
        .unwrap();
    let two = timed(&c, &g, MS);
    assert!(c.cancel_task("one").took_effect());
    assert_eq!(one.await, Err(TaskError::Cancelled));
    c.cancel();
    assert_eq!(two.await, Err(TaskError::Shutdown));
    c.stop(SEC).await.unwrap();
    assert_eq!(g.started(), 0);
}

#[tokio::test(start_paused = true)]
async fn drain_while_paused_resumes_and_runs_what_is_due() {
    let c = Cluster::new(1).unwrap();
    c.pause();
    let g = Gauge::default();
    let hs: Vec<_> = (0..3).map(|_| timed(&c, &g, MS)).collect();
    c.drain(SEC).await.unwrap();
    assert!(!c.is_paused(), "the drain ended the pause");
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert!(!c.pause(), "a pause after a drain began does nothing");
    assert!(!c.is_paused());
}

#[tokio::test(start_paused = true)]
async fn grow_starts_work_at_once() {
    let c = Cluster::new(1).unwrap();
    let g = Gauge::default();
    let hs: Vec<_> = (0..4).map(|_| timed(&c, &g, 10 * SEC)).collect();
    yield_until("one started", || g.started() == 1).await;
    let t0 = Instant::now();
    c.resize(4).unwrap();
    assert_eq!(c.workers(), 4);
    yield_until("all started", || g.started() == 4).await;
    assert_eq!(Instant::now(), t0, "no time passed");
    assert_eq!(c.live_workers(), 4);
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.max(), 4);
    c.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shrink_during_running_attempts_cancels_nothing() {
    let c = Cluster::new(4).unwrap();
    let g = Gauge::default();
    let first: Vec<_> = (0..4).map(|_| timed(&c, &g, 10 * MS)).collect();
    yield_until("four running", || g.now() == 4).await;
    c.resize(1).unwrap();
    assert_eq!(c.workers(), 1);
    assert_eq!((c.live_workers(), c.stats().running), (4, 4));
    for h in first {
        assert_eq!(h.await, Ok(()), "nothing was cancelled");
    }
    yield_until("surplus workers left", || c.live_workers() == 1).await;
    let g2 = Gauge::default();
    let next: Vec<_> = (0..4).map(|_| timed(&c, &g2, 10 * MS)).collect();
    for h in next {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g2.max(), 1, "the new count works");
    c.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_surplus_workers_leave_at_once_and_a_regrow_reuses_nothing_twice() {
    let c = Cluster::new(3).unwrap();
    yield_until("started", || c.live_workers() == 3).await;
    c.resize(1).unwrap();
    yield_until("idle surplus left", || c.live_workers() == 1).await;
    let g = Gauge::default();
    // Shrink and grow again while the surplus is still busy.
    c.resize(3).unwrap();
    let hs: Vec<_> = (0..3).map(|_| timed(&c, &g, 10 * MS)).collect();
    yield_until("three running", || g.now() == 3).await;
    c.resize(1).unwrap();
    c.resize(3).unwrap();
    assert_eq!(c.live_workers(), 3, "busy workers were kept, none added");
    let more: Vec<_> = (0..3).map(|_| timed(&c, &g, 10 * MS)).collect();
    for h in hs.into_iter().chain(more) {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.max(), 3);
    c.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn resize_to_zero_or_too_many_is_an_error() {
    // Not started: the limit is checked without spawning 65,535 workers.
    let c = Cluster::builder().workers(2).paused().build().unwrap();
    assert_eq!(c.resize(0), Err(ResizeError::ZeroWorkers));
    assert_eq!(c.resize(65_536), Err(ResizeError::TooManyWorkers));
    assert_eq!(c.workers(), 2, "a refused resize changes nothing");
    c.resize(65_535).unwrap();
    assert_eq!(c.workers(), 65_535);
    c.resize(2).unwrap();
    c.run().unwrap();
    assert_eq!(c.resize(0), Err(ResizeError::ZeroWorkers));
    assert_eq!(c.live_workers(), 2);
    c.stop(SEC).await.unwrap();
    assert_eq!(c.resize(3), Err(ResizeError::ShutDown));
}

#[tokio::test(start_paused = true)]
async fn resize_before_run_sets_how_many_start() {
    let c = Cluster::builder().workers(1).paused().build().unwrap();
    c.resize(3).unwrap();
    let g = Gauge::default();
    let hs: Vec<_> = (0..3).map(|_| timed(&c, &g, MS)).collect();
    assert_eq!(c.live_workers(), 0, "not started");
    assert!(!c.is_paused(), "not started is not paused");
    c.run().unwrap();
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.max(), 3);
    assert_eq!(c.live_workers(), 3);
}

#[tokio::test(start_paused = true)]
async fn resize_then_pause_mixes() {
    let c = Cluster::new(1).unwrap();
    c.resize(3).unwrap();
    c.pause();
    let g = Gauge::default();
    let hs: Vec<_> = (0..6).map(|_| timed(&c, &g, 10 * MS)).collect();
    c.resize(4).unwrap();
    sleep(SEC).await;
    assert_eq!(g.started(), 0, "new workers wait for the resume too");
    assert_eq!(c.live_workers(), 4);
    c.resume();
    yield_until("four started", || g.started() == 4).await;
    // Shrink while paused: the surplus leaves, the rest resume with one.
    c.pause();
    c.resize(1).unwrap();
    for h in hs.into_iter().take(4) {
        assert_eq!(h.await, Ok(()));
    }
    yield_until("surplus left", || c.live_workers() == 1).await;
    assert_eq!(g.started(), 4);
    c.resume();
    c.drain(SEC).await.unwrap();
    assert_eq!(g.started(), 6);
    assert_eq!(g.max(), 4);
}

#[tokio::test(start_paused = true)]
async fn pause_before_run_starts_workers_paused() {
    let c = Cluster::builder().workers(2).paused().build().unwrap();
    c.pause();
    let g = Gauge::default();
    let h = timed(&c, &g, MS);
    c.run().unwrap();
    sleep(SEC).await;
    assert_eq!(g.started(), 0);
    c.resume();
    assert_eq!(h.await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn resize_during_a_drain_helps_finish_it() {
    let c = Cluster::new(1).unwrap();
    let g = Gauge::default();
    let hs: Vec<_> = (0..4).map(|_| timed(&c, &g, 10 * MS)).collect();
    yield_until("one started", || g.started() == 1).await;
    let t0 = Instant::now();
    let drain = tokio::spawn({
        let c = c.clone();
        async move { c.drain(SEC).await }
    });
    tokio::task::yield_now().await;
    assert!(!c.pause(), "draining: a pause does nothing");
    c.resize(4).unwrap();
    drain.await.unwrap().unwrap();
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.max(), 4, "the new workers ran the rest at once");
    assert_eq!(Instant::now(), t0 + 10 * MS);
    assert_eq!(c.live_workers(), 0, "all went home with the drain");
    assert_eq!(c.resize(2), Err(ResizeError::ShutDown));
}
