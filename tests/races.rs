//! Real-thread races, each repeated many times on the multi-thread runtime.
//!
//! Every scenario asserts exactly-one-outcome semantics: each handle resolves
//! (a lost outcome becomes a timeout failure with a message, never a hang),
//! `on_complete` runs exactly once per task, and the outcome is the one the
//! race allows (e.g. `cancel_task` returning `true` guarantees `Cancelled`).
//!
//! Racers are lined up with a spin barrier (which gives up with a message
//! after a while instead of hanging), then each waits a random short time so
//! that the race window is swept from both sides.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use corral::{
    Body, Cluster, FixedBackoff, RetryMode, SubmitError, SubscribeError, TaskBuilder, TaskError,
    TaskHandle, TaskId,
};

use common::{resolve, HOUR};

/// How long any single await may take before it counts as a lost outcome.
const LIMIT: Duration = Duration::from_secs(30);

/// A barrier for `n` threads that spins (the racers leave it within
/// nanoseconds of each other) and fails loudly instead of waiting forever.
struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
}

impl SpinBarrier {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(SpinBarrier {
            n,
            arrived: AtomicUsize::new(0),
        })
    }

    fn wait(&self) {
        self.arrived.fetch_add(1, SeqCst);
        let start = std::time::Instant::now();
        let mut spins = 0u32;
        while self.arrived.load(SeqCst) < self.n {
            spins += 1;
            if spins % 64 == 0 {
                std::thread::yield_now();
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "spin barrier: a racer never arrived (task never started?)"
                );
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Busy-waits `n` spin-loop hints (a few nanoseconds each).
fn spin(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// A small deterministic PRNG (xorshift64*), so every run sweeps the same
/// spread of offsets.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32 % n.max(1)
    }
}

/// Adds an `on_complete` counter (the outcome is delivered exactly once) and submits.
fn submit_counted<B, T>(
    b: TaskBuilder<'_, B, T, String>,
    completions: &Arc<AtomicUsize>,
) -> TaskHandle<T, String>
where
    B: Body<T, String>,
    T: Send + 'static,
{
    let c = completions.clone();
    b.on_complete(move |_, _| {
        c.fetch_add(1, SeqCst);
    })
    .submit()
    .expect("submit to a running cluster")
}

fn assert_idle(cluster: &Cluster, cached: usize) {
    let s = cluster.stats();
    assert_eq!(s.queued, 0, "nothing may stay queued: {s:?}");
    assert_eq!(s.running, 0, "nothing may stay running: {s:?}");
    assert_eq!(s.cached, cached, "cached outcomes: {s:?}");
    assert_eq!(s.held, cached, "only cached outcomes may be held: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_vs_completion() {
    const ITER: usize = 400;
    let cluster = Cluster::new(1).unwrap();
    let completions = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(1);
    let (mut n_cancelled, mut n_value, mut cached) = (0, 0, 0);
    for i in 0..ITER {
        let bar = SpinBarrier::new(2);
        let body_spin = rng.below(4000);
        let cancel_spin = rng.below(4000);
        let cacheable = i % 4 == 0;
        let b = bar.clone();
        let h = if i % 3 == 1 {
            let builder = cluster
                .blocking_task(move |_| {
                    b.wait();
                    spin(body_spin);
                    Ok::<usize, String>(i)
                })
                .cacheable(cacheable);
            submit_counted(builder, &completions)
        } else {
            let builder = cluster
                .task(move |_| {
                    let b = b.clone();
                    async move {
                        b.wait();
                        spin(body_spin);
                        Ok::<usize, String>(i)
                    }
                })
                .cacheable(cacheable);
            submit_counted(builder, &completions)
        };
        let id = h.id().clone();
        let (c, b, cid) = (cluster.clone(), bar.clone(), id.clone());
        let canceller = std::thread::spawn(move || {
            b.wait();
            spin(cancel_spin);
            c.cancel_task(cid).took_effect()
        });
        let out = resolve(LIMIT, &format!("iteration {i}"), h).await;
        let cancelled = canceller.join().expect("canceller thread panicked");
        if cancelled {
            assert_eq!(
                out,
                Err(TaskError::Cancelled),
                "iteration {i}: cancel_task returned true, so the outcome must be Cancelled"
            );
            n_cancelled += 1;
        } else {
            assert_eq!(
                out,
                Ok(i),
                "iteration {i}: cancel_task returned false, so the task had finished with its value"
            );
            n_value += 1;
        }
        // A second cancel of a finished task finds nothing.
        assert!(
            !cluster.cancel_task(id.clone()).took_effect(),
            "iteration {i}"
        );
        if cacheable {
            cached += 1;
            let sub = cluster
                .subscribe::<usize, String>(id.clone())
                .unwrap_or_else(|e| panic!("iteration {i}: cached task not found: {e}"));
            let late = tokio::time::timeout(LIMIT, sub)
                .await
                .expect("cached subscription never resolved");
            assert_eq!(late, out, "iteration {i}: cached outcome differs");
        }
    }
    eprintln!("cancel_vs_completion: {n_cancelled} cancelled, {n_value} values");
    assert_eq!(
        completions.load(SeqCst),
        ITER,
        "on_complete runs once per task"
    );
    assert_idle(&cluster, cached);
    cluster.stop(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_vs_requeue_retry() {
    const ITER: usize = 400;
    let cluster = Cluster::new(1).unwrap();
    let completions = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(2);
    let (mut n_cancelled, mut n_value) = (0, 0);
    for i in 0..ITER {
        let bar = SpinBarrier::new(2);
        let body_spin = rng.below(3000);
        let cancel_spin = rng.below(20_000);
        // Fails once or twice; each failure requeues with zero backoff.
        let fails = 1 + (i % 2) as u32;
        let runs = Arc::new(AtomicU32::new(0));
        let (b, r) = (bar.clone(), runs.clone());
        let builder = cluster
            .task(move |ctx| {
                r.fetch_add(1, SeqCst);
                let b = b.clone();
                async move {
                    if ctx.attempt() == 1 {
                        b.wait();
                        spin(body_spin);
                    }
                    if ctx.attempt() <= fails {
                        Err(format!("attempt {}", ctx.attempt()))
                    } else {
                        Ok(i)
                    }
                }
            })
            .retry(fails)
            .retry_mode(RetryMode::Requeue)
            .backoff(FixedBackoff::new(Duration::ZERO));
        let h = submit_counted(builder, &completions);
        let (c, b, id) = (cluster.clone(), bar.clone(), h.id().clone());
        let canceller = std::thread::spawn(move || {
            b.wait();
            spin(cancel_spin);
            c.cancel_task(id).took_effect()
        });
        let out = resolve(LIMIT, &format!("iteration {i}"), h).await;
        let cancelled = canceller.join().expect("canceller thread panicked");
        if cancelled {
            assert_eq!(
                out,
                Err(TaskError::Cancelled),
                "iteration {i}: cancel_task returned true"
            );
            n_cancelled += 1;
        } else {
            assert_eq!(out, Ok(i), "iteration {i}: cancel_task returned false");
            assert_eq!(runs.load(SeqCst), fails + 1, "iteration {i}: attempts");
            n_value += 1;
        }
        assert!(
            runs.load(SeqCst) <= fails + 1,
            "iteration {i}: too many attempts"
        );
    }
    eprintln!("cancel_vs_requeue_retry: {n_cancelled} cancelled, {n_value} values");
    assert_eq!(
        completions.load(SeqCst),
        ITER,
        "on_complete runs once per task"
    );
    assert_idle(&cluster, 0);
    cluster.stop(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_immediate_retry_backoff() {
    const ITER: usize = 300;
    let cluster = Cluster::new(1).unwrap();
    let completions = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(3);
    let (mut n_cancelled, mut n_value) = (0, 0);
    for i in 0..ITER {
        // Even iterations: a backoff that never ends in this test, so the
        // cancel always lands (in the attempt or in the wait) and must end
        // the wait at once. Odd ones: 1 ms, so the retry may win.
        let long = i % 2 == 0;
        let backoff = if long { HOUR } else { Duration::from_millis(1) };
        let bar = SpinBarrier::new(2);
        let body_spin = rng.below(3000);
        let cancel_wait = Duration::from_micros(u64::from(rng.below(3000)));
        let runs = Arc::new(AtomicU32::new(0));
        let (b, r) = (bar.clone(), runs.clone());
        let builder = cluster
            .task(move |ctx| {
                r.fetch_add(1, SeqCst);
                let b = b.clone();
                async move {
                    if ctx.attempt() == 1 {
                        b.wait();
                        spin(body_spin);
                        Err("first attempt fails".to_string())
                    } else {
                        Ok(i)
                    }
                }
            })
            .retry(1)
            .retry_mode(RetryMode::Immediate)
            .backoff(FixedBackoff::new(backoff));
        let h = submit_counted(builder, &completions);
        let (c, b, id) = (cluster.clone(), bar.clone(), h.id().clone());
        let canceller = std::thread::spawn(move || {
            b.wait();
            std::thread::sleep(cancel_wait);
            c.cancel_task(id).took_effect()
        });
        let out = resolve(LIMIT, &format!("iteration {i}"), h).await;
        let cancelled = canceller.join().expect("canceller thread panicked");
        if long {
            assert!(
                cancelled,
                "iteration {i}: the task was running or waiting for its retry"
            );
            assert_eq!(out, Err(TaskError::Cancelled), "iteration {i}");
            assert_eq!(
                runs.load(SeqCst),
                1,
                "iteration {i}: the retry must not run"
            );
        } else if cancelled {
            assert_eq!(out, Err(TaskError::Cancelled), "iteration {i}");
        } else {
            assert_eq!(out, Ok(i), "iteration {i}");
            assert_eq!(runs.load(SeqCst), 2, "iteration {i}");
        }
        if cancelled {
            n_cancelled += 1;
        } else {
            n_value += 1;
        }
    }
    eprintln!("cancel_during_immediate_retry_backoff: {n_cancelled} cancelled, {n_value} values");
    assert_eq!(
        completions.load(SeqCst),
        ITER,
        "on_complete runs once per task"
    );
    assert_idle(&cluster, 0);
    cluster.stop(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_vs_completion() {
    const BATCHES: usize = 15;
    const PER_BATCH: usize = 20;
    const LIMIT_1MS: Duration = Duration::from_millis(1);
    let cluster = Cluster::new(4).unwrap();
    let completions = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(4);
    let (mut n_timed_out, mut n_value) = (0, 0);
    for batch in 0..BATCHES {
        let mut handles = Vec::new();
        for k in 0..PER_BATCH {
            let i = batch * PER_BATCH + k;
            // Around the 1 ms timeout, on both sides of it.
            let nap = Duration::from_micros(300 + u64::from(rng.below(2200)));
            let retries = u32::from(i % 3 == 0);
            let h = if i % 4 == 3 {
                let builder = cluster
                    .blocking_task(move |_| {
                        std::thread::sleep(nap);
                        Ok::<usize, String>(i)
                    })
                    .timeout(LIMIT_1MS)
                    .retry(retries);
                submit_counted(builder, &completions)
            } else {
                let builder = cluster
                    .task(move |_| async move {
                        tokio::time::sleep(nap).await;
                        Ok::<usize, String>(i)
                    })
                    .timeout(LIMIT_1MS)
                    .retry(retries);
                submit_counted(builder, &completions)
            };
            handles.push((i, h));
        }
        for (i, h) in handles {
            match resolve(LIMIT, &format!("task {i}"), h).await {
                Ok(v) => {
                    assert_eq!(v, i, "task {i}: wrong value");
                    n_value += 1;
                }
                Err(TaskError::TimedOut { limit }) => {
                    assert_eq!(limit, LIMIT_1MS, "task {i}");
                    n_timed_out += 1;
                }
                Err(e) => panic!("task {i}: unexpected outcome {e:?}"),
            }
        }
    }
    eprintln!("timeout_vs_completion: {n_timed_out} timed out, {n_value} values");
    assert_eq!(
        completions.load(SeqCst),
        BATCHES * PER_BATCH,
        "on_complete runs once per task"
    );
    assert_idle(&cluster, 0);
    cluster.stop(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_vs_submit() {
    const ITER: usize = 200;
    const SUBMITS: usize = 64;
    let rt = tokio::runtime::Handle::current();
    let mut rng = Rng::new(5);
    let (mut n_accepted, mut n_refused, mut n_value, mut n_shutdown) = (0, 0, 0, 0);
    for iter in 0..ITER {
        let cluster = Cluster::new(2).unwrap();
        let completions = Arc::new(AtomicUsize::new(0));
        // Something for the stop to find: a scheduled task and a short one.
        let early = vec![
            submit_counted(
                cluster
                    .task(|_| async { Ok::<usize, String>(usize::MAX) })
                    .delay(HOUR),
                &completions,
            ),
            submit_counted(
                cluster.task(|_| async {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    Ok::<usize, String>(usize::MAX)
                }),
                &completions,
            ),
        ];
        let bar = SpinBarrier::new(2);
        let stop_spin = rng.below(20_000);
        let (c, b, comp) = (cluster.clone(), bar.clone(), completions.clone());
        let submitter = std::thread::spawn(move || {
            b.wait();
            let mut results = Vec::new();
            for k in 0..SUBMITS {
                let c2 = comp.clone();
                let r = c
                    .task(move |_| async move {
                        tokio::task::yield_now().await;
                        Ok::<usize, String>(k)
                    })
                    .on_complete(move |_, _| {
                        c2.fetch_add(1, SeqCst);
                    })
                    .submit();
                results.push(r);
            }
            results
        });
        let (c, b, rt2) = (cluster.clone(), bar.clone(), rt.clone());
        let stopper = std::thread::spawn(move || {
            b.wait();
            spin(stop_spin);
            rt2.block_on(async move { tokio::time::timeout(LIMIT, c.stop(LIMIT)).await })
        });
        let results = submitter.join().expect("submitter thread panicked");
        let stopped = stopper.join().expect("stopper thread panicked");
        assert_eq!(
            stopped,
            Ok(Ok(())),
            "iteration {iter}: graceful stop of short tasks"
        );
        let mut accepted = 0;
        let mut refused = false;
        for (k, r) in results.into_iter().enumerate() {
            match r {
                Ok(h) => {
                    assert!(
                        !refused,
                        "iteration {iter}: submit {k} accepted after an earlier one was refused"
                    );
                    accepted += 1;
                    match resolve(LIMIT, &format!("iteration {iter} task {k}"), h).await {
                        Ok(v) => {
                            assert_eq!(v, k, "iteration {iter}");
                            n_value += 1;
                        }
                        Err(TaskError::Shutdown) => n_shutdown += 1,
                        Err(e) => panic!("iteration {iter} task {k}: unexpected {e:?}"),
                    }
                }
                Err(SubmitError::ShuttingDown) => {
                    refused = true;
                    n_refused += 1;
                }
                Err(e) => panic!("iteration {iter} submit {k}: unexpected error {e:?}"),
            }
        }
        n_accepted += accepted;
        for (k, h) in early.into_iter().enumerate() {
            let out = resolve(LIMIT, &format!("iteration {iter} early {k}"), h).await;
            assert!(
                out == Ok(usize::MAX) || out == Err(TaskError::Shutdown),
                "iteration {iter} early {k}: {out:?}"
            );
            if k == 0 {
                assert_eq!(
                    out,
                    Err(TaskError::Shutdown),
                    "a scheduled task is shut down"
                );
            }
        }
        // After stop, every further submit is refused.
        assert_eq!(
            cluster
                .task(|_| async { Ok::<usize, String>(0) })
                .submit()
                .map(drop),
            Err(SubmitError::ShuttingDown),
            "iteration {iter}"
        );
        assert_eq!(
            completions.load(SeqCst),
            accepted + 2,
            "iteration {iter}: on_complete once per accepted task"
        );
        assert_idle(&cluster, 0);
    }
    eprintln!(
        "stop_vs_submit: {n_accepted} accepted ({n_value} values, {n_shutdown} shut down), {n_refused} refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_vs_retry() {
    const ITER: usize = 200;
    const TASKS: usize = 8;
    let mut rng = Rng::new(6);
    let signal_fired = Arc::new(AtomicBool::new(false));
    let (mut n_value, mut n_failed, mut n_shutdown) = (0, 0, 0);
    for iter in 0..ITER {
        let cluster = Cluster::new(2).unwrap();
        let completions = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for k in 0..TASKS {
            let fails = 1 + (k % 3) as u32;
            // Every fourth task runs out of retries and fails for good.
            let retries = if k % 4 == 3 { fails - 1 } else { fails };
            let mode = if k % 2 == 0 {
                RetryMode::Requeue
            } else {
                RetryMode::Immediate
            };
            let backoff = if k % 3 == 0 {
                Duration::from_micros(300)
            } else {
                Duration::ZERO
            };
            let fired = signal_fired.clone();
            let builder = cluster
                .task(move |ctx| {
                    let fired = fired.clone();
                    async move {
                        tokio::task::yield_now().await;
                        // A graceful stop never fires the signal of a running attempt.
                        if ctx.is_cancelled() {
                            fired.store(true, SeqCst);
                        }
                        let a = ctx.attempt();
                        if a <= fails {
                            Err(format!("{k}/{a}"))
                        } else {
                            Ok((k, a))
                        }
                    }
                })
                .retry(retries)
                .retry_mode(mode)
                .backoff(FixedBackoff::new(backoff));
            handles.push((k, fails, retries, submit_counted(builder, &completions)));
        }
        let stop_wait = Duration::from_micros(u64::from(rng.below(3000)));
        let c = cluster.clone();
        let stopper = tokio::spawn(async move {
            std::thread::sleep(stop_wait);
            tokio::time::timeout(LIMIT, c.stop(LIMIT)).await
        });
        for (k, fails, retries, h) in handles {
            let what = format!("iteration {iter} task {k}");
            match resolve(LIMIT, &what, h).await {
                Ok((v, a)) => {
                    assert_eq!(v, k, "{what}");
                    assert!(fails <= retries, "{what}: succeeded without enough retries");
                    assert_eq!(a, fails + 1, "{what}: succeeded on the wrong attempt");
                    n_value += 1;
                }
                Err(TaskError::Failed(e)) => {
                    assert!(
                        fails > retries,
                        "{what}: failed though retries remained: {e}"
                    );
                    assert_eq!(
                        e,
                        format!("{k}/{}", retries + 1),
                        "{what}: not the last attempt's error"
                    );
                    n_failed += 1;
                }
                Err(TaskError::Shutdown) => n_shutdown += 1,
                Err(e) => panic!("{what}: unexpected outcome {e:?}"),
            }
        }
        let stopped = stopper.await.expect("stop task panicked");
        assert_eq!(stopped, Ok(Ok(())), "iteration {iter}: graceful stop");
        assert_eq!(
            completions.load(SeqCst),
            TASKS,
            "iteration {iter}: on_complete once per task"
        );
        assert_idle(&cluster, 0);
    }
    assert!(
        !signal_fired.load(SeqCst),
        "a graceful stop fired the cancellation signal of a running attempt"
    );
    eprintln!("stop_vs_retry: {n_value} values, {n_failed} failed, {n_shutdown} shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_vs_completion_without_cache() {
    const ITER: usize = 400;
    let cluster = Cluster::new(1).unwrap();
    let completions = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(7);
    let (mut n_unknown, mut n_subscribed) = (0, 0);
    for i in 0..ITER {
        let bar = SpinBarrier::new(2);
        let body_spin = rng.below(3000);
        let sub_spin = rng.below(6000);
        let b = bar.clone();
        let mut builder = cluster.task(move |_| {
            let b = b.clone();
            async move {
                b.wait();
                spin(body_spin);
                Ok::<usize, String>(i)
            }
        });
        if i % 2 == 0 {
            builder = builder.id(format!("sub-{i}"));
        }
        let h = submit_counted(builder, &completions);
        let (c, b, id) = (cluster.clone(), bar.clone(), h.id().clone());
        let subscriber = std::thread::spawn(move || {
            b.wait();
            spin(sub_spin);
            c.subscribe::<usize, String>(id)
        });
        let id = h.id().clone();
        let out = resolve(LIMIT, &format!("iteration {i}"), h).await;
        assert_eq!(out, Ok(i), "iteration {i}");
        match subscriber.join().expect("subscriber thread panicked") {
            Ok(sub) => {
                let got = tokio::time::timeout(LIMIT, sub).await.unwrap_or_else(|_| {
                    panic!("iteration {i}: a subscription that found the task never resolved")
                });
                assert_eq!(
                    got, out,
                    "iteration {i}: subscription differs from the handle"
                );
                n_subscribed += 1;
            }
            Err(SubscribeError::UnknownId(unknown)) => {
                assert_eq!(unknown, id, "iteration {i}");
                n_unknown += 1;
            }
            Err(e) => panic!("iteration {i}: unexpected subscribe error {e:?}"),
        }
        // Not cacheable: forgotten once finished.
        assert!(
            matches!(
                cluster.subscribe::<usize, String>(id),
                Err(SubscribeError::UnknownId(_))
            ),
            "iteration {i}: a finished non-cacheable task must be forgotten"
        );
    }
    eprintln!(
        "subscribe_vs_completion_without_cache: {n_subscribed} subscribed, {n_unknown} unknown"
    );
    assert_eq!(
        completions.load(SeqCst),
        ITER,
        "on_complete runs once per task"
    );
    assert_idle(&cluster, 0);
    cluster.stop(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_id_from_two_threads() {
    const ITER: usize = 300;
    let cluster = Cluster::new(2).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::new(8);
    // The same id every iteration: reused once the previous holder is gone
    // (cancelled, or cached after its cancel: then the racers replace it).
    let name = TaskId::from("dup");
    let mut cached = false;
    for i in 0..ITER {
        let racers = 2 + i % 2;
        let cacheable = i % 3 == 0;
        let bar = SpinBarrier::new(racers);
        let threads: Vec<_> = (0..racers)
            .map(|t| {
                let (c, b, r) = (cluster.clone(), bar.clone(), ran.clone());
                let racer_spin = rng.below(500);
                std::thread::spawn(move || {
                    b.wait();
                    spin(racer_spin);
                    c.task(move |_| {
                        r.store(true, SeqCst);
                        async move { Ok::<usize, String>(t) }
                    })
                    .id("dup")
                    .delay(HOUR)
                    .cacheable(cacheable)
                    .submit()
                })
            })
            .collect();
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("racer thread panicked"))
            .collect();
        let mut winner = None;
        for (t, r) in results.into_iter().enumerate() {
            match r {
                Ok(h) => {
                    assert!(winner.is_none(), "iteration {i}: two submits of one id won");
                    assert_eq!(h.id(), name);
                    winner = Some(h);
                }
                Err(SubmitError::DuplicateId(id)) => assert_eq!(id, name, "iteration {i}"),
                Err(e) => panic!("iteration {i} racer {t}: unexpected {e:?}"),
            }
        }
        let winner = winner.unwrap_or_else(|| panic!("iteration {i}: no submit won"));
        let s = cluster.stats();
        assert_eq!(
            (s.queued, s.held),
            (1, 1),
            "iteration {i}: one task (any previous cached one replaced): {s:?} (previous cached: {cached})"
        );
        assert!(
            cluster.cancel_task(name.clone()).took_effect(),
            "iteration {i}"
        );
        assert_eq!(
            resolve(LIMIT, &format!("iteration {i}"), winner).await,
            Err(TaskError::Cancelled),
            "iteration {i}"
        );
        cached = cacheable;
    }
    assert!(!ran.load(SeqCst), "no racer's body may run");
    assert_idle(&cluster, usize::from(cached));
    cluster.stop(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_wake_idle_workers() {
    // Several threads submit at once, in short bursts, while the workers
    // finish short tasks and go idle (some tasks are due now, some a
    // millisecond ahead). A lost wake-up would leave a task queued while
    // every worker sleeps (a timeout here), or leave a worker asleep for good
    // (the pair check below).
    const ITER: usize = 300;
    const THREADS: usize = 4;
    const PER_THREAD: usize = 3;
    let cluster = Cluster::new(2).unwrap();
    let completions = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(9);
    for i in 0..ITER {
        let bar = SpinBarrier::new(THREADS);
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (c, b, comp) = (cluster.clone(), bar.clone(), completions.clone());
                let spins: Vec<(u32, u32)> = (0..PER_THREAD)
                    .map(|_| (rng.below(3000), rng.below(3000)))
                    .collect();
                std::thread::spawn(move || {
                    b.wait();
                    let mut out = Vec::new();
                    for (k, (gap, work)) in spins.into_iter().enumerate() {
                        spin(gap);
                        let v = (i * THREADS + t) * PER_THREAD + k;
                        let mut builder = c.task(move |_| async move {
                            spin(work);
                            Ok::<usize, String>(v)
                        });
                        if (v % 5) == 0 {
                            builder = builder.delay(Duration::from_millis(1));
                        }
                        out.push((v, submit_counted(builder, &comp)));
                    }
                    out
                })
            })
            .collect();
        for t in threads {
            for (v, h) in t.join().expect("submitter thread panicked") {
                assert_eq!(
                    resolve(LIMIT, &format!("iteration {i} task {v}"), h).await,
                    Ok(v)
                );
            }
        }
        // Both workers are still there: two tasks that can only finish
        // together (a lost wake-up can leave a worker asleep for good).
        let together = Arc::new(tokio::sync::Barrier::new(2));
        let pair: Vec<_> = (0..2)
            .map(|_| {
                let together = together.clone();
                let builder = cluster.task(move |_| {
                    let together = together.clone();
                    async move {
                        tokio::time::timeout(Duration::from_secs(10), together.wait())
                            .await
                            .map(drop)
                            .map_err(|_| "the two tasks never ran at the same time".to_string())
                    }
                });
                submit_counted(builder, &completions)
            })
            .collect();
        for h in pair {
            assert_eq!(
                resolve(LIMIT, &format!("iteration {i} pair"), h).await,
                Ok(()),
                "iteration {i}: a worker was lost"
            );
        }
    }
    assert_eq!(completions.load(SeqCst), ITER * (THREADS * PER_THREAD + 2));
    assert_idle(&cluster, 0);
    cluster.stop(LIMIT).await.unwrap();
}
