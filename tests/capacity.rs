//! The bounded queue: each overflow policy at the boundary, what counts as
//! pending, the waits' order and cancel-safety, dropped tasks, and stats.

mod common;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use corral::{
    After, BuildError, Cluster, FixedBackoff, Overflow, SubmitError, TaskError, TaskHandle,
    TrySubmitError,
};
use tokio::sync::Notify;
use tokio::time::sleep;

use common::{log, snapshot, yield_until, DropFlag, Log, MS, SEC};

/// A cluster whose workers have not started: everything submitted stays pending.
fn held(capacity: usize, overflow: Overflow) -> Cluster {
    Cluster::builder()
        .workers(1)
        .paused()
        .capacity(capacity, overflow)
        .build()
        .unwrap()
}

/// A task that logs `n` when it runs and returns it.
fn logged<'c>(
    c: &'c Cluster,
    log: &Log<u32>,
    n: u32,
) -> corral::TaskBuilder<'c, impl corral::Body<u32, String>, u32, String> {
    let log = log.clone();
    c.task(move |_| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(n);
            Ok::<_, String>(n)
        }
    })
}

/// A task that runs until `gate` is notified.
fn gated(c: &Cluster, gate: &Arc<Notify>) -> TaskHandle<(), String> {
    let gate = gate.clone();
    c.task(move |_| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok(())
        }
    })
    .submit()
    .unwrap()
}

/// Polls `f` once (with the test task's waker).
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
}

#[tokio::test(start_paused = true)]
async fn reject_admits_up_to_the_capacity_and_refuses_one_more() {
    let c = held(3, Overflow::Reject);
    let l = log();
    let hs: Vec<_> = (0..3)
        .map(|n| logged(&c, &l, n).submit().unwrap())
        .collect();
    assert_eq!(c.stats().queued, 3);
    let err = logged(&c, &l, 3).submit().unwrap_err();
    assert_eq!(err, SubmitError::Full { capacity: 3 });
    let s = c.stats();
    assert_eq!(
        (s.queued, s.capacity, s.rejected, s.dropped),
        (3, Some(3), 1, 0)
    );
    c.run().unwrap();
    for (n, h) in hs.into_iter().enumerate() {
        assert_eq!(h.await, Ok(n as u32));
    }
    // Room again.
    assert_eq!(logged(&c, &l, 4).submit().unwrap().await, Ok(4));
    assert_eq!(snapshot(&l), [0, 1, 2, 4]);
}

#[tokio::test(start_paused = true)]
async fn try_submit_hands_the_task_back_and_it_can_be_submitted_later() {
    let c = held(1, Overflow::Reject);
    let first = c.task(|_| async { Ok::<_, String>(1) }).submit().unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(released.clone());
    let second = c
        .task(move |_| {
            let _keep = &flag;
            async { Ok::<_, String>(2) }
        })
        .id("second")
        .priority(7);
    let err = second.try_submit().unwrap_err();
    assert!(err.is_full());
    assert_eq!(
        err.to_string(),
        "the cluster's queue is full (1 pending tasks)"
    );
    let second = err.into_task().expect("the task comes back");
    assert!(!released.load(SeqCst), "the body was not dropped");
    assert_eq!(c.stats().rejected, 1);
    c.run().unwrap();
    assert_eq!(first.await, Ok(1));
    let h = second.try_submit().expect("room again");
    assert_eq!(
        h.id().to_string(),
        "second",
        "its options came back with it"
    );
    assert_eq!(h.await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn try_submit_reports_other_refusals_without_the_task() {
    let c = held(4, Overflow::Reject);
    let _a = c
        .task(|_| async { Ok::<_, String>(()) })
        .id("a")
        .submit()
        .unwrap();
    let err = c
        .task(|_| async { Ok::<_, String>(()) })
        .id("a")
        .try_submit()
        .unwrap_err();
    assert!(!err.is_full());
    assert!(matches!(err.into_error(), SubmitError::DuplicateId(_)));
    // A refusal that is not for capacity gives the room back.
    assert_eq!(c.stats().rejected, 0);
    for _ in 0..3 {
        drop(
            c.task(|_| async { Ok::<_, String>(()) })
                .try_submit()
                .unwrap(),
        );
    }
    assert_eq!(c.stats().queued, 4);
}

#[tokio::test(start_paused = true)]
async fn running_tasks_are_not_pending() {
    let c = Cluster::builder()
        .workers(1)
        .capacity(1, Overflow::Reject)
        .build()
        .unwrap();
    let gate = Arc::new(Notify::new());
    let running = gated(&c, &gate);
    yield_until("the first task runs", || c.stats().running == 1).await;
    let queued = c.task(|_| async { Ok::<_, String>(()) }).submit().unwrap();
    let refused = c.task(|_| async { Ok::<_, String>(()) }).submit();
    assert_eq!(refused.unwrap_err(), SubmitError::Full { capacity: 1 });
    gate.notify_one();
    assert_eq!(running.await, Ok(()));
    assert_eq!(queued.await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn a_plain_submit_under_wait_is_refused_when_full() {
    let c = held(1, Overflow::Wait);
    let _queued = c.task(|_| async { Ok::<_, String>(()) }).submit().unwrap();
    let err = c
        .task(|_| async { Ok::<_, String>(()) })
        .submit()
        .unwrap_err();
    assert_eq!(err, SubmitError::Full { capacity: 1 });
}

#[tokio::test(start_paused = true)]
async fn waiters_get_rooms_in_the_order_they_came() {
    let c = Cluster::builder()
        .workers(1)
        .capacity(1, Overflow::Wait)
        .build()
        .unwrap();
    let l = log();
    let gate = Arc::new(Notify::new());
    let running = gated(&c, &gate);
    yield_until("the gate task runs", || c.stats().running == 1).await;
    let queued = logged(&c, &l, 0).submit().unwrap(); // full now
    let mut waits: Vec<_> = (1..=3)
        .map(|n| Box::pin(logged(&c, &l, n).submit_wait()))
        .collect();
    for w in &mut waits {
        assert!(poll_once(w).await.is_pending(), "full: it waits");
    }
    // A plain submit does not jump the line.
    assert!(matches!(
        logged(&c, &l, 9).submit(),
        Err(SubmitError::Full { .. })
    ));
    gate.notify_one();
    assert_eq!(running.await, Ok(()));
    // Each room goes to the earliest waiter; polled in reverse, the later
    // ones keep waiting until theirs comes.
    let mut handles = Vec::new();
    while !waits.is_empty() {
        let mut ready = None;
        for _ in 0..100 {
            for (i, w) in waits.iter_mut().enumerate().rev() {
                if let Poll::Ready(r) = poll_once(w).await {
                    ready = Some((i, r));
                    break;
                }
            }
            if ready.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (i, r) = ready.expect("a room comes");
        assert_eq!(i, 0, "the earliest waiter gets the room");
        drop(waits.remove(0));
        handles.push(r.unwrap());
    }
    assert_eq!(queued.await, Ok(0));
    for (n, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await, Ok(n as u32 + 1));
    }
    assert_eq!(snapshot(&l), [0, 1, 2, 3]);
    assert_eq!(c.stats().rejected, 1, "only the plain submit");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_wait_passes_its_place_and_its_room_on() {
    let c = held(1, Overflow::Wait);
    let l = log();
    let first = logged(&c, &l, 0).id("first").submit().unwrap();
    let mut w1 = Box::pin(logged(&c, &l, 1).submit_wait());
    let mut w2 = Box::pin(logged(&c, &l, 2).submit_wait());
    let mut w3 = Box::pin(logged(&c, &l, 3).submit_wait());
    assert!(poll_once(&mut w1).await.is_pending());
    assert!(poll_once(&mut w2).await.is_pending());
    assert!(poll_once(&mut w3).await.is_pending());
    // Dropped while waiting: its place goes.
    drop(w1);
    // A room appears (a cancel) and is held for w2, the earliest waiter...
    assert!(c.cancel_task("first").took_effect());
    assert_eq!(first.await, Err(TaskError::Cancelled));
    assert!(poll_once(&mut w3).await.is_pending(), "not w3's turn");
    // ...which is dropped before it takes it: the room goes on to w3.
    drop(w2);
    let h3 = match poll_once(&mut w3).await {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("the room w2 left goes to w3"),
    };
    c.run().unwrap();
    assert_eq!(h3.await, Ok(3));
    assert_eq!(snapshot(&l), [3], "dropped waits submitted nothing");
    assert_eq!(c.stats().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn a_wait_wakes_when_a_running_task_frees_the_queue() {
    let c = Cluster::builder()
        .workers(1)
        .capacity(1, Overflow::Wait)
        .build()
        .unwrap();
    let gate = Arc::new(Notify::new());
    let running = gated(&c, &gate);
    yield_until("the gate task runs", || c.stats().running == 1).await;
    let queued = c.task(|_| async { Ok::<_, String>(1) }).submit().unwrap();
    let c2 = c.clone();
    // Spawned: it must be woken, not polled by the test.
    let waiter = tokio::spawn(async move {
        let h = c2
            .task(|_| async { Ok::<_, String>(2) })
            .submit_wait()
            .await
            .unwrap();
        h.await
    });
    sleep(SEC).await;
    assert!(!waiter.is_finished(), "still full");
    gate.notify_one();
    assert_eq!(running.await, Ok(()));
    assert_eq!(queued.await, Ok(1));
    assert_eq!(waiter.await.unwrap(), Ok(2));
}

#[tokio::test(start_paused = true)]
async fn a_stop_ends_every_wait_with_shutting_down() {
    let c = held(1, Overflow::Wait);
    let _q = c.task(|_| async { Ok::<_, String>(()) }).submit().unwrap();
    let c2 = c.clone();
    let waiter = tokio::spawn(async move {
        c2.task(|_| async { Ok::<_, String>(()) })
            .submit_wait()
            .await
            .map(|_| ())
    });
    sleep(SEC).await;
    assert!(!waiter.is_finished());
    c.cancel();
    assert_eq!(waiter.await.unwrap(), Err(SubmitError::ShuttingDown));
}

#[tokio::test(start_paused = true)]
async fn submit_wait_without_a_wait_policy_submits_at_once() {
    let unbounded = Cluster::builder().workers(1).paused().build().unwrap();
    for _ in 0..10 {
        let h = unbounded
            .task(|_| async { Ok::<_, String>(()) })
            .submit_wait()
            .await;
        drop(h.unwrap());
    }
    assert_eq!(unbounded.stats().capacity, None);
    let c = held(1, Overflow::Reject);
    let _queued = c
        .task(|_| async { Ok::<_, String>(()) })
        .submit_wait()
        .await
        .unwrap();
    let err = c
        .task(|_| async { Ok::<_, String>(()) })
        .submit_wait()
        .await;
    assert_eq!(err.unwrap_err(), SubmitError::Full { capacity: 1 });
}

#[tokio::test(start_paused = true)]
async fn drop_lowest_drops_the_lowest_latest_task_exactly_once() {
    let c = held(3, Overflow::DropLowest);
    let l = log();
    let completions = Arc::new(AtomicUsize::new(0));
    let done = completions.clone();
    let early_low = logged(&c, &l, 0).priority(1).submit().unwrap();
    let late_low = logged(&c, &l, 1)
        .priority(1)
        .id("late-low")
        .cacheable(true)
        .on_complete(move |_, _| {
            done.fetch_add(1, SeqCst);
        })
        .submit()
        .unwrap();
    let high = logged(&c, &l, 2).priority(5).submit().unwrap();
    // Full. A newcomer above the lowest priority drops the latest of the lowest.
    let newcomer = logged(&c, &l, 3).priority(2).submit().unwrap();
    assert_eq!(late_low.await, Err(TaskError::Dropped));
    assert_eq!(completions.load(SeqCst), 1);
    let sub = c.subscribe::<u32, String>("late-low").unwrap();
    assert_eq!(sub.await, Err(TaskError::Dropped), "cached as it ended");
    let s = c.stats();
    assert_eq!((s.queued, s.dropped, s.rejected), (3, 1, 0));
    c.run().unwrap();
    assert_eq!(high.await, Ok(2));
    assert_eq!(newcomer.await, Ok(3));
    assert_eq!(early_low.await, Ok(0));
    assert_eq!(snapshot(&l), [2, 3, 0]);
    assert_eq!(completions.load(SeqCst), 1, "the victim completed once");
}

#[tokio::test(start_paused = true)]
async fn drop_lowest_never_displaces_an_equal_or_higher_priority() {
    let c = held(2, Overflow::DropLowest);
    let l = log();
    let a = logged(&c, &l, 0).priority(3).submit().unwrap();
    let b = logged(&c, &l, 1).priority(5).submit().unwrap();
    // Equal to the lowest: refused, nothing dropped.
    assert_eq!(
        logged(&c, &l, 2).priority(3).submit().unwrap_err(),
        SubmitError::Full { capacity: 2 }
    );
    // Below the lowest: refused too; try_submit hands it back.
    let back = logged(&c, &l, 3).priority(-1).try_submit().unwrap_err();
    assert!(back.is_full());
    let s = c.stats();
    assert_eq!((s.queued, s.dropped, s.rejected), (2, 0, 2));
    c.run().unwrap();
    assert_eq!(b.await, Ok(1));
    assert_eq!(a.await, Ok(0));
}

#[tokio::test(start_paused = true)]
async fn drop_lowest_counts_a_later_start_as_lower() {
    let c = held(2, Overflow::DropLowest);
    let l = log();
    let scheduled = logged(&c, &l, 0).delay(SEC).submit().unwrap();
    let due = logged(&c, &l, 1).submit().unwrap();
    let newcomer = logged(&c, &l, 2).priority(1).try_submit().unwrap();
    assert_eq!(scheduled.await, Err(TaskError::Dropped));
    c.run().unwrap();
    assert_eq!(newcomer.await, Ok(2));
    assert_eq!(due.await, Ok(1));
}

#[tokio::test(start_paused = true)]
async fn a_requeued_retry_is_never_refused_for_capacity() {
    let c = Cluster::builder()
        .workers(1)
        .capacity(1, Overflow::Reject)
        .build()
        .unwrap();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let retried = c
        .task(move |ctx| {
            let g = g.clone();
            async move {
                if ctx.attempt() == 1 {
                    g.notified().await;
                    Err("once".to_string())
                } else {
                    Ok(ctx.attempt())
                }
            }
        })
        .retry(1)
        .backoff(FixedBackoff::new(10 * MS))
        .submit()
        .unwrap();
    yield_until("the first attempt runs", || c.stats().running == 1).await;
    let queued = c
        .task(|_| async { Ok::<_, String>(0) })
        .delay(SEC)
        .submit()
        .unwrap();
    gate.notify_one();
    // The retry went back although the queue was full: two pending.
    yield_until("the retry is requeued", || c.stats().queued == 2).await;
    assert!(matches!(
        c.task(|_| async { Ok::<_, String>(0) }).submit(),
        Err(SubmitError::Full { .. })
    ));
    assert_eq!(retried.await, Ok(2));
    assert_eq!(queued.await, Ok(0));
    assert_eq!(c.stats().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn dependents_count_as_pending_and_a_group_fits_whole() {
    let c = held(3, Overflow::DropLowest);
    let _parent = c
        .task(|_| async { Ok::<_, String>(()) })
        .id("p")
        .submit()
        .unwrap();
    let _child = c
        .task(|_| async { Ok::<_, String>(()) })
        .after(After::any("p"))
        .submit()
        .unwrap();
    let s = c.stats();
    assert_eq!((s.queued, s.waiting), (1, 1));
    // One room left: a dependent fits, a second does not (a group drops nothing).
    let _fits = c
        .task(|_| async { Ok::<_, String>(()) })
        .after(After::any("p"))
        .submit()
        .unwrap();
    let err = c
        .task(|_| async { Ok::<_, String>(()) })
        .after(After::any("p"))
        .priority(100)
        .submit()
        .unwrap_err();
    assert_eq!(err, SubmitError::Full { capacity: 3 });
    assert_eq!(c.stats().dropped, 0);
}

#[tokio::test(start_paused = true)]
async fn zero_capacity_and_zero_aging_are_refused_at_build() {
    let err = Cluster::builder()
        .capacity(0, Overflow::Reject)
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        BuildError::InvalidOption {
            option: "capacity",
            ..
        }
    ));
    let err = Cluster::builder()
        .aging(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        BuildError::InvalidOption {
            option: "aging",
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn submit_wait_is_send() {
    fn send<F: Future + Send>(f: F) -> F {
        f
    }
    let c = held(1, Overflow::Wait);
    let h = send(c.task(|_| async { Ok::<_, String>(()) }).submit_wait())
        .await
        .unwrap();
    drop(h);
    let err: TrySubmitError<()> = TrySubmitError::Refused(SubmitError::ShuttingDown);
    assert_eq!(format!("{err:?}"), "Refused(ShuttingDown)");
}

#[tokio::test(start_paused = true)]
async fn a_submit_refused_for_its_id_drops_nothing() {
    let c = held(2, Overflow::DropLowest);
    let low = c.task(|_| async { Ok::<_, String>(0) }).submit().unwrap();
    let _taken = c
        .task(|_| async { Ok::<_, String>(1) })
        .id("taken")
        .priority(5)
        .submit()
        .unwrap();
    for attempt in 0..2 {
        let dup = c
            .task(|_| async { Ok::<_, String>(2) })
            .id("taken")
            .priority(9);
        let err = if attempt == 0 {
            dup.submit().unwrap_err()
        } else {
            dup.try_submit().unwrap_err().into_error()
        };
        assert!(matches!(err, SubmitError::DuplicateId(_)));
    }
    let s = c.stats();
    assert_eq!((s.queued, s.dropped, s.rejected), (2, 0, 0));
    c.run().unwrap();
    assert_eq!(low.await, Ok(0));
}

#[tokio::test(start_paused = true)]
async fn a_dependent_waits_for_room_and_uses_it() {
    let c = held(1, Overflow::Wait);
    let parent = c
        .task(|_| async { Ok::<u32, String>(1) })
        .id("parent")
        .cacheable(true)
        .submit()
        .unwrap();
    let c2 = c.clone();
    let child = tokio::spawn(async move {
        let h = c2
            .task(|ctx| async move {
                let v = ctx
                    .parent::<u32, String>("parent")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(v + 1)
            })
            .after(After::id::<u32, String>("parent"))
            .submit_wait()
            .await
            .unwrap();
        h.await
    });
    sleep(SEC).await;
    assert!(
        !child.is_finished(),
        "the queue is full until the parent runs"
    );
    c.run().unwrap();
    assert_eq!(parent.await, Ok(1));
    assert_eq!(child.await.unwrap(), Ok(2));
    assert_eq!(c.stats().rejected, 0);
}
