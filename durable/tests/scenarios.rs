//! One suite of scenarios run against both stores (durable.md's producer,
//! order, time and crash-safety rows that a store can show, and bad input).

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{eventually, recorded, started_at, Env, Probe, Step};
use corral_durable::{
    Backoff, CancelOutcome, Client, Job, JobContext, JobError, JobResult, RetryMode, SubmitError,
    SubscribeError, Worker, WorkerError, MAX_LEASE_TTL, MAX_QUEUE_LEN,
};
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(30);

async fn worker(env: &Env, slots: usize) -> Worker {
    Worker::builder(env.backend())
        .register::<Probe>()
        .queue("default", slots)
        .lease_ttl(Duration::from_secs(10))
        .start()
        .await
        .unwrap()
}

async fn within<T>(what: &str, f: impl std::future::IntoFuture<Output = T>) -> T {
    tokio::time::timeout(LONG, f)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

both_stores!(
    submit_await_and_subscribe_elsewhere,
    live_key_is_unique_and_reusable_after,
    cancel_says_what_happened,
    priority_then_start_then_insertion_order,
    retries_backoff_and_endings,
    timeouts_and_panics_are_retried_then_final,
    delayed_and_wall_clock_starts,
    unknown_kind_waits_for_a_worker_that_knows_it,
    stop_gives_back_attempts,
    batch_insert_and_stats,
    bad_input_gets_typed_errors,
    undecodable_rows_are_typed_outcomes,
    immediate_retry_mode_holds_the_slot,
    outcomes_expire_after_retention,
    hooks_run_once_after_the_final_write,
    a_notice_while_every_slot_is_busy_is_not_lost,
    a_renamed_kind_runs_its_old_rows_through_an_alias,
    an_enormous_retry_delay_is_stored_not_fatal,
    nul_characters_are_typed_errors,
    staging_more_than_a_batch_strands_nothing,
    a_panic_after_the_body_fails_the_job_and_frees_the_slot,
    a_prune_backlog_is_cleared_without_waiting_a_period,
    a_cancel_ends_an_immediate_retry_wait,
    a_lease_ttl_over_the_maximum_is_refused,
    a_prune_interval_of_duration_max_leaves_the_leader_alive,
    start_times_far_in_the_past_are_due_now,
    queue_names_are_checked_at_submit_and_start,
);

async fn submit_await_and_subscribe_elsewhere(env: Env) {
    let tag = format!("await-{}", env.is_pg());
    let w = worker(&env, 2).await;
    let client = Client::new(env.backend());
    let h = client
        .enqueue(Probe::new(&tag, "a", vec![Step::SleepMs(50)]))
        .id(format!("{tag}-a"))
        .submit()
        .await
        .unwrap();
    // Another "process" (its own pool and listener) subscribes by id and by key.
    let other = Client::new(env.other().await);
    let by_id = other.subscribe::<Probe>(h.id()).await.unwrap();
    let by_key = other.subscribe::<Probe>(format!("{tag}-a")).await.unwrap();
    assert_eq!(within("handle", h).await, Ok("a@1".to_string()));
    assert_eq!(within("by id", by_id).await, Ok("a@1".to_string()));
    assert_eq!(within("by key", by_key).await, Ok("a@1".to_string()));
    // After completion, while retained.
    let late = other.subscribe::<Probe>(format!("{tag}-a")).await.unwrap();
    assert_eq!(within("late", late).await, Ok("a@1".to_string()));
    w.stop(LONG).await;
    assert_eq!(w.stats().lost, 0);
}

async fn live_key_is_unique_and_reusable_after(env: Env) {
    let tag = format!("key-{}", env.is_pg());
    let client = Client::new(env.backend());
    let first = client
        .enqueue(Probe::new(&tag, "1", vec![Step::Ok]))
        .id("same")
        .submit()
        .await
        .unwrap();
    let dup = client
        .enqueue(Probe::new(&tag, "2", vec![Step::Ok]))
        .id("same")
        .submit()
        .await;
    assert!(
        matches!(&dup, Err(SubmitError::DuplicateId(k)) if k == "same"),
        "{dup:?}"
    );
    let w = worker(&env, 1).await;
    assert_eq!(within("first", first).await, Ok("1@1".into()));
    let again = client
        .enqueue(Probe::new(&tag, "3", vec![Step::Ok]))
        .id("same")
        .submit()
        .await
        .unwrap();
    assert_eq!(within("again", again).await, Ok("3@1".into()));
    w.stop(LONG).await;
}

async fn cancel_says_what_happened(env: Env) {
    let tag = format!("cancel-{}", env.is_pg());
    let client = Client::new(env.backend());
    let queued = client
        .enqueue(Probe::new(&tag, "queued", vec![Step::Ok]))
        .delay(Duration::from_secs(3600))
        .submit()
        .await
        .unwrap();
    assert_eq!(
        client.cancel(queued.id()).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        within("queued", queued.clone()).await,
        Err(JobError::Cancelled)
    );
    assert_eq!(
        client.cancel(queued.id()).await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
    assert_eq!(
        client.cancel("no-such-key").await.unwrap(),
        CancelOutcome::NotFound
    );

    let w = worker(&env, 1).await;
    let running = client
        .enqueue(Probe::new(&tag, "running", vec![Step::SleepMs(60_000)]))
        .submit()
        .await
        .unwrap();
    eventually(LONG, "the job starts", || recorded(&tag).len() == 1).await;
    // Cancelled from another "process": the owner cuts it short.
    let other = Client::new(env.other().await);
    assert_eq!(
        other.cancel(running.id()).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(within("running", running).await, Err(JobError::Cancelled));
    w.stop(LONG).await;
}

async fn priority_then_start_then_insertion_order(env: Env) {
    let tag = format!("order-{}", env.is_pg());
    let client = Client::new(env.backend());
    let mut handles = Vec::new();
    for (label, prio) in [
        ("p0-a", 0),
        ("p5-a", 5),
        ("min", i32::MIN),
        ("p0-b", 0),
        ("max", i32::MAX),
        ("p9", 9),
        ("p5-b", 5),
    ] {
        let h = client
            .enqueue(Probe::new(&tag, label, vec![Step::Ok]))
            .priority(prio)
            .submit()
            .await
            .unwrap();
        handles.push(h);
    }
    // An earlier start time runs first among equal priorities.
    let past = SystemTime::now() - Duration::from_secs(60);
    handles.push(
        client
            .enqueue(Probe::new(&tag, "p0-early", vec![Step::Ok]))
            .start_at(past)
            .submit()
            .await
            .unwrap(),
    );
    let w = worker(&env, 1).await;
    for h in handles {
        within("order job", h).await.unwrap();
    }
    let order: Vec<String> = recorded(&tag).into_iter().map(|(l, _)| l).collect();
    assert_eq!(
        order,
        ["max", "p9", "p5-a", "p5-b", "p0-early", "p0-a", "p0-b", "min"]
    );
    w.stop(LONG).await;
}

async fn retries_backoff_and_endings(env: Env) {
    let tag = format!("retry-{}", env.is_pg());
    let w = worker(&env, 4).await;
    let client = Client::new(env.backend());
    let flaky = client
        .enqueue(Probe::new(
            &tag,
            "flaky",
            vec![Step::Retry, Step::Retry, Step::Ok],
        ))
        .retry(3)
        .backoff(
            Backoff::exponential(Duration::from_millis(20), 2.0)
                .with_max(Duration::from_millis(50)),
        )
        .jitter(0.1)
        .submit()
        .await
        .unwrap();
    let exhausted = client
        .enqueue(Probe::new(&tag, "exhausted", vec![Step::Retry]))
        .retry(1)
        .submit()
        .await
        .unwrap();
    let permanent = client
        .enqueue(Probe::new(
            &tag,
            "permanent",
            vec![Step::Permanent, Step::Ok],
        ))
        .retry(5)
        .submit()
        .await
        .unwrap();
    let after = client
        .enqueue(Probe::new(
            &tag,
            "after",
            vec![Step::RetryAfterMs(200), Step::Ok],
        ))
        .retry(1)
        .submit()
        .await
        .unwrap();
    let snooze = client
        .enqueue(Probe::new(
            &tag,
            "snooze",
            vec![Step::SnoozeMs(10), Step::Ok],
        ))
        .submit()
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(within("flaky", flaky).await, Ok("flaky@3".into()));
    assert_eq!(
        within("exhausted", exhausted).await,
        Err(JobError::Failed("retry 2".into()))
    );
    assert_eq!(
        within("permanent", permanent).await,
        Err(JobError::Failed("permanent".into()))
    );
    assert_eq!(within("after", after).await, Ok("after@2".into()));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "retry-after waited"
    );
    // A snooze gives its attempt back: the next run is attempt 1 again, and
    // it succeeds although the job has no retries.
    assert_eq!(within("snooze", snooze).await, Ok("snooze@1".into()));
    let attempts = |label: &str| {
        recorded(&tag)
            .into_iter()
            .filter(|(l, _)| l == label)
            .map(|(_, a)| a)
            .collect::<Vec<_>>()
    };
    assert_eq!(attempts("flaky"), [1, 2, 3]);
    assert_eq!(attempts("permanent"), [1]);
    assert_eq!(attempts("snooze"), [1, 1]);
    w.stop(LONG).await;
}

/// A job whose retry decision refuses timeouts.
#[derive(Serialize, Deserialize)]
struct Slow {
    ms: u64,
    retry_timeouts: bool,
}

impl Job for Slow {
    const KIND: &'static str = "slow";
    type Output = u32;
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<u32, String> {
        if ctx.attempt() == 99 {
            panic!("never");
        }
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(ctx.attempt())
    }

    fn retry_if(&self, error: &JobError<String>, _attempt: u32) -> bool {
        !matches!(error, JobError::TimedOut { .. }) || self.retry_timeouts
    }
}

#[derive(Serialize, Deserialize)]
struct Panicky;

impl Job for Panicky {
    const KIND: &'static str = "panicky";
    type Output = ();
    type Error = ();

    async fn run(&self, ctx: JobContext) -> JobResult<(), ()> {
        panic!("attempt {} panicked", ctx.attempt());
    }
}

async fn timeouts_and_panics_are_retried_then_final(env: Env) {
    let w = Worker::builder(env.backend())
        .register::<Slow>()
        .register::<Panicky>()
        .queue("default", 4)
        .start()
        .await
        .unwrap();
    let client = Client::new(env.backend());
    let refused = client
        .enqueue(Slow {
            ms: 10_000,
            retry_timeouts: false,
        })
        .timeout(Duration::from_millis(50))
        .retry(3)
        .submit()
        .await
        .unwrap();
    let retried = client
        .enqueue(Slow {
            ms: 10_000,
            retry_timeouts: true,
        })
        .timeout(Duration::from_millis(50))
        .retry(1)
        .submit()
        .await
        .unwrap();
    let panics = client.enqueue(Panicky).retry(1).submit().await.unwrap();
    let limit = Duration::from_millis(50);
    assert_eq!(
        within("refused", refused).await,
        Err(JobError::TimedOut { limit })
    );
    assert_eq!(
        within("retried", retried).await,
        Err(JobError::TimedOut { limit })
    );
    match within("panics", panics).await {
        Err(JobError::Panicked { message }) => assert!(message.contains("attempt 2"), "{message}"),
        other => panic!("{other:?}"),
    }
    w.stop(LONG).await;
}

async fn delayed_and_wall_clock_starts(env: Env) {
    let tag = format!("time-{}", env.is_pg());
    let w = worker(&env, 2).await;
    let client = Client::new(env.backend());
    // The worker is idle: each job starts when due, within a few ms (the
    // leader stages at the earliest start time, not on a polling period).
    // Start times are recorded inside the jobs; 500 ms of slack for a busy
    // machine still tells "at its time" from "a period late".
    let slack = Duration::from_millis(500);
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let delayed = client
        .enqueue(Probe::new(&tag, "delayed", vec![Step::Ok]))
        .delay(Duration::from_millis(400))
        .submit()
        .await
        .unwrap();
    let t1 = Instant::now();
    let at = client
        .enqueue(Probe::new(&tag, "at", vec![Step::Ok]))
        .start_at(wall0 + Duration::from_millis(600))
        .submit()
        .await
        .unwrap();
    within("delayed", delayed).await.unwrap();
    within("at", at).await.unwrap();
    let d = started_at(&tag, "delayed", 1).unwrap();
    let a = started_at(&tag, "at", 1).unwrap();
    // Not before its time (the delay is added at the insert, between t0
    // and t1)...
    assert!(d - t0 >= Duration::from_millis(395), "{:?}", d - t0);
    assert!(a - t0 >= Duration::from_millis(595), "{:?}", a - t0);
    // ...and soon after it.
    assert!(d - t1 < Duration::from_millis(400) + slack, "{:?}", d - t1);
    assert!(a - t0 < Duration::from_millis(600) + slack, "{:?}", a - t0);
    w.stop(LONG).await;
}

#[derive(Serialize, Deserialize)]
struct Unknown;

impl Job for Unknown {
    const KIND: &'static str = "unknown-to-the-first-worker";
    type Output = u32;
    type Error = ();

    async fn run(&self, ctx: JobContext) -> JobResult<u32, ()> {
        Ok(ctx.attempt())
    }
}

async fn unknown_kind_waits_for_a_worker_that_knows_it(env: Env) {
    let w = worker(&env, 2).await;
    let client = Client::new(env.backend());
    let h = client.enqueue(Unknown).submit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["default"].available, 1, "{stats:?}");
    let knows = Worker::builder(env.backend())
        .register::<Unknown>()
        .queue("default", 1)
        .start()
        .await
        .unwrap();
    // Never burned an attempt while it waited.
    assert_eq!(within("unknown", h).await, Ok(1));
    knows.stop(LONG).await;
    w.stop(LONG).await;
}

async fn stop_gives_back_attempts(env: Env) {
    let tag = format!("stop-{}", env.is_pg());
    let client = Client::new(env.backend());
    let w = worker(&env, 1).await;
    let h = client
        .enqueue(Probe::new(&tag, "long", vec![Step::SleepMs(60_000)]))
        .submit()
        .await
        .unwrap();
    eventually(LONG, "started", || recorded(&tag).len() == 1).await;
    // Cut short at the stop timeout: requeued, attempt not spent.
    w.stop(Duration::from_millis(100)).await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["default"].available, 1, "{stats:?}");
    let w2 = worker(&env, 1).await;
    // Attempt 1 again (given back) sleeps again; cancel it to finish the test,
    // which also shows the run restarted at attempt 1.
    eventually(LONG, "restarted", || recorded(&tag).len() == 2).await;
    assert_eq!(recorded(&tag)[1], ("long".into(), 1));
    assert_eq!(
        client.cancel(h.id()).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(within("cancelled", h).await, Err(JobError::Cancelled));
    w2.stop(LONG).await;
}

async fn batch_insert_and_stats(env: Env) {
    let tag = format!("batch-{}", env.is_pg());
    let client = Client::new(env.backend());
    let jobs = (0..200)
        .map(|i| {
            client
                .enqueue(Probe::new(&tag, &i.to_string(), vec![Step::Ok]))
                .queue(if i % 2 == 0 { "even" } else { "odd" })
        })
        .collect();
    let handles = client.submit_batch(jobs).await.unwrap();
    assert_eq!(handles.len(), 200);
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["even"].available, 100);
    assert_eq!(stats["odd"].available, 100);
    let w = Worker::builder(env.backend())
        .register::<Probe>()
        .queue("even", 4)
        .queue("odd", 4)
        .start()
        .await
        .unwrap();
    for h in handles {
        within("batch job", h).await.unwrap();
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["even"].completed, 100);
    assert_eq!(stats["odd"].completed, 100);
    assert_eq!(recorded(&tag).len(), 200, "each ran once");
    w.stop(LONG).await;
}

async fn bad_input_gets_typed_errors(env: Env) {
    let client = Client::new(env.backend()).with_max_payload(1000);
    let p = || Probe::new("bad", "x", vec![Step::Ok]);
    let too_big = Probe::new("bad", &"x".repeat(2000), vec![Step::Ok]);
    assert!(matches!(
        client.enqueue(too_big).submit().await,
        Err(SubmitError::PayloadTooLarge { limit: 1000, .. })
    ));
    let invalid = [
        client.enqueue(p()).timeout(Duration::ZERO).submit().await,
        client.enqueue(p()).jitter(1.5).submit().await,
        client.enqueue(p()).queue("").submit().await,
        client.enqueue(p()).retention(Duration::MAX).submit().await,
        client.enqueue(p()).delay(Duration::MAX).submit().await,
        client
            .enqueue(p())
            .start_at(SystemTime::now() + Duration::from_secs(101 * 366 * 24 * 3600))
            .submit()
            .await,
        client
            .enqueue(p())
            .backoff(Backoff::exponential(Duration::from_millis(1), 0.5))
            .submit()
            .await,
    ];
    for r in invalid {
        assert!(matches!(r, Err(SubmitError::InvalidOption { .. })), "{r:?}");
    }
    assert!(matches!(
        client.enqueue(p()).id("").submit().await,
        Err(SubmitError::InvalidId(_))
    ));
    assert!(matches!(
        client
            .subscribe::<Probe>(corral_durable::JobId(987_654_321))
            .await,
        Err(SubscribeError::NotFound(_))
    ));
    assert!(matches!(
        client.subscribe::<Probe>("never-existed").await,
        Err(SubscribeError::NotFound(_))
    ));
    let h = client.enqueue(p()).submit().await.unwrap();
    assert!(matches!(
        client.subscribe::<Slow>(h.id()).await,
        Err(SubscribeError::KindMismatch { .. })
    ));
    // Nothing was inserted by the failed submits.
    let stats = client.stats().await.unwrap();
    assert_eq!(stats["default"].available, 1, "{stats:?}");
}

/// Same kind as `Probe`, other shapes: its rows do not decode as a `Probe`.
#[derive(Serialize, Deserialize)]
struct ProbeV2 {
    renamed: u64,
}

impl Job for ProbeV2 {
    const KIND: &'static str = "probe";
    type Output = u64;
    type Error = String;

    async fn run(&self, _ctx: JobContext) -> JobResult<u64, String> {
        Ok(self.renamed)
    }
}

async fn undecodable_rows_are_typed_outcomes(env: Env) {
    let tag = format!("decode-{}", env.is_pg());
    let w = worker(&env, 1).await;
    let client = Client::new(env.backend());
    // Arguments the worker's `Probe` cannot decode: a typed failure, no panic.
    let bad_args = client
        .enqueue(ProbeV2 { renamed: 7 })
        .submit()
        .await
        .unwrap();
    match within("bad args", bad_args).await {
        Err(JobError::Undecodable { message }) => {
            assert!(message.contains("arguments"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // An output that does not decode as the subscriber's type.
    let ok = client
        .enqueue(Probe::new(&tag, "s", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    let id = ok.id();
    within("ok", ok).await.unwrap();
    let as_v2 = client.subscribe::<ProbeV2>(id).await.unwrap();
    assert!(matches!(
        within("v2", as_v2).await,
        Err(JobError::Undecodable { .. })
    ));
    w.stop(LONG).await;
}

async fn immediate_retry_mode_holds_the_slot(env: Env) {
    let tag = format!("immediate-{}", env.is_pg());
    let w = worker(&env, 1).await;
    let client = Client::new(env.backend());
    let a = client
        .enqueue(Probe::new(&tag, "a", vec![Step::Retry, Step::Ok]))
        .retry(1)
        .backoff(Backoff::Fixed(Duration::from_millis(400)))
        .retry_mode(RetryMode::Immediate)
        .submit()
        .await
        .unwrap();
    eventually(LONG, "a starts", || recorded(&tag).len() == 1).await;
    let b = client
        .enqueue(Probe::new(&tag, "b", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    assert_eq!(within("a", a).await, Ok("a@2".into()));
    within("b", b).await.unwrap();
    // The only slot stayed with `a` during its backoff: `b` (due at once)
    // started only after it, by the times recorded inside the jobs.
    let a1 = started_at(&tag, "a", 1).unwrap();
    let b1 = started_at(&tag, "b", 1).unwrap();
    assert!(b1 - a1 >= Duration::from_millis(395), "{:?}", b1 - a1);
    w.stop(LONG).await;
}

async fn outcomes_expire_after_retention(env: Env) {
    let tag = format!("expire-{}", env.is_pg());
    let w = Worker::builder(env.backend())
        .register::<Probe>()
        .queue("default", 1)
        .prune_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let client = Client::new(env.backend());
    let h = client
        .enqueue(Probe::new(&tag, "gone", vec![Step::Ok]))
        .id(format!("{tag}-gone"))
        .retention(Duration::ZERO)
        .submit()
        .await
        .unwrap();
    let id = h.id();
    let end = Instant::now() + LONG;
    loop {
        match client.subscribe::<Probe>(id).await {
            Err(SubscribeError::Expired(got)) => {
                assert_eq!(got, id);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < end, "never pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A handle awaited after the prune answers "expired", never hangs.
    assert_eq!(within("expired handle", h).await, Err(JobError::Expired));
    // The key no longer names anything: a key is forgotten with its pruned
    // row, so by key the job is `NotFound` (by id `Expired`), as
    // `SubscribeError` documents.
    assert!(matches!(
        client.subscribe::<Probe>(format!("{tag}-gone")).await,
        Err(SubscribeError::NotFound(_))
    ));
    w.stop(LONG).await;
}

/// Records its hooks; ends as its plan says (like `Probe`).
#[derive(Serialize, Deserialize)]
struct Hooked(Probe);

impl Job for Hooked {
    const KIND: &'static str = "hooked";
    type Output = String;
    type Error = String;

    async fn run(&self, ctx: JobContext) -> JobResult<String, String> {
        self.0.run(ctx).await
    }

    fn on_failure(&self, _id: corral_durable::JobId, error: &JobError<String>) {
        common::record(&self.0.tag, &format!("on_failure {error}"), 0);
    }

    fn on_complete(&self, _id: corral_durable::JobId, outcome: &Result<String, JobError<String>>) {
        common::record(&self.0.tag, &format!("on_complete {}", outcome.is_ok()), 0);
    }
}

async fn hooks_run_once_after_the_final_write(env: Env) {
    let tag = format!("hooks-{}", env.is_pg());
    let ok_tag = format!("{tag}-ok");
    let w = Worker::builder(env.backend())
        .register::<Hooked>()
        .queue("default", 2)
        .start()
        .await
        .unwrap();
    let client = Client::new(env.backend());
    let failing = client
        .enqueue(Hooked(Probe::new(
            &tag,
            "f",
            vec![Step::Retry, Step::Permanent],
        )))
        .retry(3)
        .submit()
        .await
        .unwrap();
    let ok = client
        .enqueue(Hooked(Probe::new(&ok_tag, "ok", vec![Step::Ok])))
        .submit()
        .await
        .unwrap();
    assert_eq!(
        within("failing", failing).await,
        Err(JobError::Failed("permanent".into()))
    );
    within("ok", ok).await.unwrap();
    // Hooks run on the worker once the final write is accepted; not per attempt.
    eventually(LONG, "hooks ran", || {
        recorded(&tag).len() == 4 && recorded(&ok_tag).len() == 2
    })
    .await;
    let labels = |t: &str| recorded(t).into_iter().map(|(l, _)| l).collect::<Vec<_>>();
    assert_eq!(
        labels(&tag),
        [
            "f",
            "f",
            "on_failure job failed: permanent",
            "on_complete false"
        ]
    );
    assert_eq!(labels(&ok_tag), ["ok", "on_complete true"]);
    w.stop(LONG).await;
}

async fn a_notice_while_every_slot_is_busy_is_not_lost(env: Env) {
    let tag = format!("busy-{}", env.is_pg());
    let w = worker(&env, 1).await;
    let client = Client::new(env.backend());
    let a = client
        .enqueue(Probe::new(&tag, "a", vec![Step::SleepMs(500)]))
        .submit()
        .await
        .unwrap();
    eventually(LONG, "a starts", || recorded(&tag).len() == 1).await;
    // Its notice arrives while the only slot is busy; the fallback poll is
    // minutes away (the memory store has none), so `b` runs once `a` freed
    // the slot only if the notice (or the full claim before it) was kept.
    // The harder case, a notice during a claim that comes back short, is
    // `worker::tests::a_notice_during_a_claim_in_flight_is_not_lost`, which
    // holds a claim at a gate.
    let b = client
        .enqueue(Probe::new(&tag, "b", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    within("a", a).await.unwrap();
    within("b", b).await.unwrap();
    w.stop(LONG).await;
}

/// The job type before a rename of its kind.
#[derive(Serialize, Deserialize)]
struct Greet {
    name: String,
}

impl Job for Greet {
    const KIND: &'static str = "greet";
    type Output = String;
    type Error = String;

    async fn run(&self, _ctx: JobContext) -> JobResult<String, String> {
        Ok(format!("old {}", self.name))
    }
}

/// The same job after the rename: old rows still run, through the alias.
#[derive(Serialize, Deserialize)]
struct Welcome {
    name: String,
}

impl Job for Welcome {
    const KIND: &'static str = "welcome";
    const ALIASES: &'static [&'static str] = &["greet"];
    type Output = String;
    type Error = String;

    async fn run(&self, _ctx: JobContext) -> JobResult<String, String> {
        Ok(format!("hello {}", self.name))
    }
}

async fn a_renamed_kind_runs_its_old_rows_through_an_alias(env: Env) {
    let client = Client::new(env.backend());
    // Enqueued by an old producer, before any worker knows the new name.
    let old = client
        .enqueue(Greet { name: "ada".into() })
        .submit()
        .await
        .unwrap();
    let w = Worker::builder(env.backend())
        .register::<Welcome>()
        .queue("default", 1)
        .start()
        .await
        .unwrap();
    let new = client
        .enqueue(Welcome { name: "bob".into() })
        .submit()
        .await
        .unwrap();
    // Subscribing with the new type accepts the old kind.
    let via_alias = client.subscribe::<Welcome>(old.id()).await.unwrap();
    assert_eq!(within("alias", via_alias).await, Ok("hello ada".into()));
    assert_eq!(within("old handle", old).await, Ok("hello ada".into()));
    assert_eq!(within("new", new).await, Ok("hello bob".into()));
    w.stop(LONG).await;
}

async fn an_enormous_retry_delay_is_stored_not_fatal(env: Env) {
    let tag = format!("huge-{}", env.is_pg());
    let w = worker(&env, 1).await;
    let client = Client::new(env.backend());
    let far = client
        .enqueue(Probe::new(&tag, "far", vec![Step::RetryAfterMs(u64::MAX)]))
        .retry(1)
        .submit()
        .await
        .unwrap();
    let end = Instant::now() + LONG;
    while client.stats().await.unwrap()["default"].scheduled != 1 {
        assert!(Instant::now() < end, "the retry was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker is still healthy, and the far retry can be cancelled.
    let next = client
        .enqueue(Probe::new(&tag, "next", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    assert_eq!(within("next", next).await, Ok("next@1".into()));
    assert_eq!(
        client.cancel(far.id()).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(within("far", far).await, Err(JobError::Cancelled));
    w.stop(LONG).await;
}

async fn nul_characters_are_typed_errors(env: Env) {
    let tag = format!("nul-{}", env.is_pg());
    let client = Client::new(env.backend());
    // PostgreSQL's jsonb cannot keep a NUL: both stores refuse it the same way.
    let r = client
        .enqueue(Probe::new(&tag, "args\0", vec![Step::Ok]))
        .submit()
        .await;
    assert!(matches!(r, Err(SubmitError::Encode(_))), "{r:?}");
    let w = worker(&env, 1).await;
    let out = client
        .enqueue(Probe::new(&tag, "out", vec![Step::NulOutput]))
        .submit()
        .await
        .unwrap();
    assert!(
        matches!(
            within("nul output", out).await,
            Err(JobError::Undecodable { .. })
        ),
        "an unstorable output is a typed failure"
    );
    let next = client
        .enqueue(Probe::new(&tag, "next", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    assert_eq!(within("next", next).await, Ok("next@1".into()));
    w.stop(LONG).await;
}

/// More rows due at once than the leader stages per statement: a full batch
/// is followed by another at once, not left for the fallback poll.
async fn staging_more_than_a_batch_strands_nothing(env: Env) {
    let tag = format!("stage-{}", env.is_pg());
    let w = Worker::builder(env.backend())
        .register::<Probe>()
        .queue("default", 4)
        .lease_ttl(Duration::from_secs(10))
        .stage_batch(2)
        .start()
        .await
        .unwrap();
    let client = Client::new(env.backend());
    let jobs = (0..7)
        .map(|i| {
            client
                .enqueue(Probe::new(&tag, &format!("s{i}"), vec![Step::Ok]))
                .delay(Duration::from_millis(200))
        })
        .collect();
    let handles = client.submit_batch(jobs).await.unwrap();
    for h in handles {
        // Bound only against a hang (the fallback poll is minutes away).
        within("a due scheduled row beyond the staging batch", h)
            .await
            .unwrap();
    }
    w.stop(LONG).await;
}

/// An output whose `Serialize` panics.
#[derive(Debug, Deserialize)]
struct Exploding;

impl Serialize for Exploding {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("this output cannot be serialized")
    }
}

#[derive(Serialize, Deserialize)]
struct ExplodingOutput;

impl Job for ExplodingOutput {
    const KIND: &'static str = "exploding_output";
    type Output = Exploding;
    type Error = ();

    async fn run(&self, _ctx: JobContext) -> JobResult<Exploding, ()> {
        Ok(Exploding)
    }
}

/// A panic after the engine ran the body (here in the output's
/// `Serialize`) ends the job failed with a typed error and gives the slot
/// back: the one slot then runs the next job.
async fn a_panic_after_the_body_fails_the_job_and_frees_the_slot(env: Env) {
    let tag = format!("explode-{}", env.is_pg());
    let w = Worker::builder(env.backend())
        .register::<Probe>()
        .register::<ExplodingOutput>()
        .queue("default", 1)
        .lease_ttl(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let client = Client::new(env.backend());
    let bad = client.enqueue(ExplodingOutput).submit().await.unwrap();
    match within("the job whose output panics", bad).await {
        Err(JobError::Panicked { message }) => {
            assert!(message.contains("cannot be serialized"), "{message}")
        }
        other => panic!("expected a typed panic, got {other:?}"),
    }
    let next = client
        .enqueue(Probe::new(&tag, "after", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    assert_eq!(
        within("the next job on the freed slot", next)
            .await
            .unwrap(),
        "after@1"
    );
    w.stop(LONG).await;
    assert_eq!(w.stats().lost, 0);
}

/// More expired rows than one prune round deletes: the next rounds follow
/// at once, not a prune interval later.
async fn a_prune_backlog_is_cleared_without_waiting_a_period(env: Env) {
    const JOBS: usize = 60;
    // A round deletes at most 10 statements x 2 rows: three rounds' worth.
    let every = Duration::from_secs(6);
    let tag = format!("prune-{}", env.is_pg());
    let w = Worker::builder(env.backend())
        .register::<Probe>()
        .queue("default", 4)
        .lease_ttl(Duration::from_secs(10))
        .prune_interval(every)
        .prune_batch(2)
        .start()
        .await
        .unwrap();
    let client = Client::new(env.backend());
    let jobs = (0..JOBS)
        .map(|i| {
            client
                .enqueue(Probe::new(&tag, &format!("p{i}"), vec![Step::Ok]))
                .retention(Duration::from_millis(1))
        })
        .collect();
    for h in client.submit_batch(jobs).await.unwrap() {
        within("a job", h).await.unwrap();
    }
    let completed = |client: Client| async move {
        let stats = client.stats().await.unwrap();
        stats.get("default").map_or(0, |q| q.completed)
    };
    // The first round (one interval after the start) deletes 20 rows...
    let mut first = None;
    let end = Instant::now() + LONG;
    loop {
        let left = completed(client.clone()).await;
        if left < JOBS as u64 && first.is_none() {
            first = Some(Instant::now());
        }
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the pruner never finished: {left} left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the backlog is gone long before the next interval (without
    // the follow-up rounds it would take two more intervals).
    let took = first.expect("rows were pruned").elapsed();
    assert!(took < every / 2, "the backlog took {took:?}");
    w.stop(LONG).await;
}

/// A cancel while an attempt waits out its backoff in its slot
/// (`RetryMode::Immediate`) answers `Requested` and ends the wait: the job
/// resolves cancelled at once, not after the backoff.
async fn a_cancel_ends_an_immediate_retry_wait(env: Env) {
    let tag = format!("immcancel-{}", env.is_pg());
    let w = worker(&env, 1).await;
    let client = Client::new(env.backend());
    let a = client
        .enqueue(Probe::new(&tag, "a", vec![Step::Retry, Step::Ok]))
        .retry(1)
        .backoff(Backoff::Fixed(Duration::from_secs(3600)))
        .retry_mode(RetryMode::Immediate)
        .submit()
        .await
        .unwrap();
    eventually(LONG, "a runs", || recorded(&tag).len() == 1).await;
    assert_eq!(
        client.cancel(a.id()).await.unwrap(),
        CancelOutcome::Requested
    );
    // Bound only against a hang: the backoff is an hour.
    assert_eq!(
        within("the cancelled wait", a).await,
        Err(JobError::Cancelled)
    );
    assert_eq!(recorded(&tag).len(), 1, "no second attempt");
    w.stop(LONG).await;
}

/// The same refusal from both stores (the memory store's clock overflowed
/// at `Duration::MAX`; PostgreSQL's interval did not), and the maximum
/// itself works.
async fn a_lease_ttl_over_the_maximum_is_refused(env: Env) {
    for ttl in [MAX_LEASE_TTL + Duration::from_millis(1), Duration::MAX] {
        let started = Worker::builder(env.backend())
            .register::<Probe>()
            .queue("default", 1)
            .lease_ttl(ttl)
            .start()
            .await;
        assert!(
            matches!(started, Err(WorkerError::Config(_))),
            "{ttl:?}: {started:?}"
        );
    }
    let w = Worker::builder(env.backend())
        .register::<Probe>()
        .queue("default", 1)
        .lease_ttl(MAX_LEASE_TTL)
        .start()
        .await
        .unwrap();
    let client = Client::new(env.backend());
    let h = client
        .enqueue(Probe::new("maxttl", "a", vec![Step::Ok]))
        .submit()
        .await
        .unwrap();
    assert_eq!(
        within("a job under the longest TTL", h).await,
        Ok("a@1".into())
    );
    w.stop(LONG).await;
}

/// `prune_interval(Duration::MAX)` is accepted (no rounds on a schedule);
/// the leader goes on staging: a delayed job runs.
async fn a_prune_interval_of_duration_max_leaves_the_leader_alive(env: Env) {
    let w = Worker::builder(env.backend())
        .register::<Probe>()
        .queue("default", 1)
        .lease_ttl(Duration::from_secs(10))
        .prune_interval(Duration::MAX)
        .start()
        .await
        .unwrap();
    let client = Client::new(env.backend());
    let h = client
        .enqueue(Probe::new("prunemax", "a", vec![Step::Ok]))
        .delay(Duration::from_millis(100))
        .submit()
        .await
        .unwrap();
    assert_eq!(
        within("a delayed job (the leader died?)", h).await,
        Ok("a@1".into())
    );
    w.stop(LONG).await;
}

/// A start time in the past means due now, however far back (before
/// PostgreSQL's range, or so far that encoding it overflowed).
async fn start_times_far_in_the_past_are_due_now(env: Env) {
    let w = worker(&env, 2).await;
    let client = Client::new(env.backend());
    let epoch = SystemTime::UNIX_EPOCH;
    let pasts = [
        (
            "before-4713bc",
            epoch - Duration::from_secs(7000 * 366 * 24 * 3600),
        ),
        ("2^62s-before-1970", epoch - Duration::from_secs(1 << 62)),
        ("an-hour-ago", SystemTime::now() - Duration::from_secs(3600)),
    ];
    for (label, at) in pasts {
        let h = client
            .enqueue(Probe::new("pastat", label, vec![Step::Ok]))
            .start_at(at)
            .submit()
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(within(label, h).await, Ok(format!("{label}@1")));
    }
    w.stop(LONG).await;
}

/// A queue name too long for PostgreSQL's notices (8000 bytes) once
/// failed the leader's staging of every queue's rows, for good; both
/// stores now refuse it, and a NUL, at submit and at a worker's start. The
/// longest name allowed is staged, notified and claimed.
async fn queue_names_are_checked_at_submit_and_start(env: Env) {
    let client = Client::new(env.backend());
    let p = || Probe::new("queuename", "bad", vec![Step::Ok]);
    let too_long = "q".repeat(MAX_QUEUE_LEN + 1);
    let refused = [
        client.enqueue(p()).queue(too_long.as_str()).submit().await,
        client
            .enqueue(p())
            .queue(too_long.as_str())
            .delay(Duration::from_millis(10))
            .submit()
            .await,
        client.enqueue(p()).queue("a\0b").submit().await,
    ];
    for r in refused {
        assert!(
            matches!(
                r,
                Err(SubmitError::InvalidOption {
                    option: "queue",
                    ..
                })
            ),
            "{r:?}"
        );
    }
    for name in [too_long.as_str(), "a\0b", ""] {
        let started = Worker::builder(env.backend())
            .register::<Probe>()
            .queue(name, 1)
            .start()
            .await;
        assert!(
            matches!(started, Err(WorkerError::Config(_))),
            "{started:?}"
        );
    }
    let longest = "q".repeat(MAX_QUEUE_LEN);
    let w = Worker::builder(env.backend())
        .register::<Probe>()
        .queue("default", 1)
        .queue(longest.as_str(), 1)
        .lease_ttl(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let delayed = |label: &str, queue: &str| {
        client
            .enqueue(Probe::new("queuename", label, vec![Step::Ok]))
            .queue(queue)
            .delay(Duration::from_millis(50))
            .submit()
    };
    let long = delayed("long", &longest).await.unwrap();
    let default = delayed("default", "default").await.unwrap();
    assert_eq!(within("the longest queue", long).await, Ok("long@1".into()));
    assert_eq!(within("default", default).await, Ok("default@1".into()));
    w.stop(LONG).await;
}
