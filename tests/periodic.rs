//! Periodic schedules: firing ids, each overlap policy, missed firings
//! across a pause (and, for cron, a restart), cancel and stop; cron across
//! daylight-saving changes in both directions (feature `cron`, which the
//! crate's own dev-dependency turns on for its tests).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{
    Cluster, Firing, FiringTime, Missed, Overlap, ScheduleError, ScheduleHandle, TaskError, Trigger,
};

use common::SEC;

type Log = Arc<Mutex<Vec<String>>>;

fn ids(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// Starts `name` every 10 s on `cluster`; each run logs its id at its start
/// and then takes `run_for`.
fn every_10s(
    cluster: &Cluster,
    name: &str,
    run_for: Duration,
    overlap: Overlap,
    missed: Missed,
    log: &Log,
) -> ScheduleHandle {
    let log = log.clone();
    cluster
        .schedule(
            name,
            Trigger::every(10 * SEC),
            move |_ctx, firing: Firing| {
                log.lock().unwrap().push(firing.id.to_string());
                async move {
                    tokio::time::sleep(run_for).await;
                    Ok::<_, String>(())
                }
            },
        )
        .overlap(overlap)
        .missed(missed)
        .start()
        .unwrap()
}

/// Sleeps until `secs` seconds after `t0` (paused clock: no real wait).
async fn at(t0: tokio::time::Instant, secs: u64) {
    tokio::time::sleep_until(t0 + Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn interval_firings_have_their_own_ids() {
    let cluster = Cluster::new(2).unwrap();
    let log: Log = Default::default();
    let t0 = tokio::time::Instant::now();
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Default::default();
    let s = seen.clone();
    let l = log.clone();
    let handle = cluster
        .schedule(
            "tick",
            Trigger::every(10 * SEC),
            move |ctx, firing: Firing| {
                // The task's id is the firing's.
                assert_eq!(ctx.id(), firing.id);
                s.lock()
                    .unwrap()
                    .push((firing.schedule.to_string(), firing.catch_up));
                l.lock()
                    .unwrap()
                    .push(format!("{} at {:?}", firing.id, t0.elapsed()));
                async { Ok::<_, String>(()) }
            },
        )
        .start()
        .unwrap();
    at(t0, 35).await;
    assert_eq!(
        ids(&log),
        ["tick@1 at 10s", "tick@2 at 20s", "tick@3 at 30s"],
        "firing n is due n periods after the start"
    );
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|(s, late)| s == "tick" && !late));
    assert_eq!(handle.stats().fired, 3);
    assert_eq!(handle.name(), "tick");
    // One queue entry at most: nothing waits in the cluster between firings.
    assert_eq!(cluster.stats().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn overlap_skip_drops_firings_while_a_run_goes_on() {
    let cluster = Cluster::new(4).unwrap();
    let log: Log = Default::default();
    let t0 = tokio::time::Instant::now();
    let h = every_10s(&cluster, "s", 25 * SEC, Overlap::Skip, Missed::Skip, &log);
    at(t0, 55).await;
    // 1 runs 10..35 (2 and 3 skipped), 4 runs 40..65 (5 skipped).
    assert_eq!(ids(&log), ["s@1", "s@4"]);
    assert_eq!((h.stats().fired, h.stats().skipped), (2, 3));
}

#[tokio::test(start_paused = true)]
async fn overlap_queue_runs_one_waiting_firing_after_the_run() {
    let cluster = Cluster::new(4).unwrap();
    let log: Log = Default::default();
    let t0 = tokio::time::Instant::now();
    let h = every_10s(&cluster, "q", 25 * SEC, Overlap::Queue, Missed::Skip, &log);
    at(t0, 34).await;
    assert_eq!(
        ids(&log),
        ["q@1"],
        "2 waits in the backlog, not in the cluster"
    );
    assert_eq!(cluster.stats().queued, 0);
    at(t0, 55).await;
    // 1 runs 10..35; 2 waits and runs 35..60; 3 (backlog full) is dropped;
    // 4 waits; 5 (backlog full) is dropped.
    assert_eq!(ids(&log), ["q@1", "q@2"]);
    assert_eq!(h.stats().skipped, 2);
    at(t0, 61).await;
    assert_eq!(ids(&log), ["q@1", "q@2", "q@4"]);
}

#[tokio::test(start_paused = true)]
async fn overlap_allow_runs_firings_side_by_side() {
    let cluster = Cluster::new(4).unwrap();
    let log: Log = Default::default();
    let t0 = tokio::time::Instant::now();
    let h = every_10s(&cluster, "a", 25 * SEC, Overlap::Allow, Missed::Skip, &log);
    at(t0, 52).await;
    assert_eq!(ids(&log), ["a@1", "a@2", "a@3", "a@4", "a@5"]);
    assert_eq!(cluster.stats().running, 3, "3, 4 and 5 run at once");
    assert_eq!(h.stats().skipped, 0);
}

#[tokio::test(start_paused = true)]
async fn overlap_replace_cancels_the_running_firing() {
    let cluster = Cluster::new(4).unwrap();
    let outcomes: Log = Default::default();
    let o = outcomes.clone();
    let t0 = tokio::time::Instant::now();
    let h = cluster
        .schedule("r", Trigger::every(10 * SEC), |_ctx, _firing| async {
            tokio::time::sleep(25 * SEC).await;
            Ok::<_, String>(())
        })
        .overlap(Overlap::Replace)
        .each_task(move |task| {
            let o = o.clone();
            task.on_complete(move |id, outcome| o.lock().unwrap().push(format!("{id} {outcome:?}")))
        })
        .start()
        .unwrap();
    at(t0, 55).await;
    assert_eq!(
        ids(&outcomes),
        [
            "r@1 Err(Cancelled)",
            "r@2 Err(Cancelled)",
            "r@3 Err(Cancelled)",
            "r@4 Err(Cancelled)"
        ]
    );
    assert_eq!(cluster.stats().running, 1, "5 runs");
    h.cancel();
    at(t0, 100).await;
    // Once the schedule ends, nothing replaces the last run: it finishes.
    assert_eq!(ids(&outcomes).len(), 5);
    assert_eq!(ids(&outcomes).last().unwrap(), "r@5 Ok(())");
}

/// Pauses at 15 s (after firing 1), resumes at 55 s (2 to 5 missed).
async fn across_a_pause(missed: Missed, overlap: Overlap) -> (Vec<String>, Vec<bool>) {
    let cluster = Cluster::new(2).unwrap();
    let log: Log = Default::default();
    let late: Arc<Mutex<Vec<bool>>> = Default::default();
    let (l, lt) = (log.clone(), late.clone());
    let t0 = tokio::time::Instant::now();
    let h = cluster
        .schedule(
            "p",
            Trigger::every(10 * SEC),
            move |_ctx, firing: Firing| {
                l.lock()
                    .unwrap()
                    .push(format!("{}@{}s", firing.id, t0.elapsed().as_secs()));
                lt.lock().unwrap().push(firing.catch_up);
                async {
                    tokio::time::sleep(SEC).await;
                    Ok::<_, String>(())
                }
            },
        )
        .missed(missed)
        .overlap(overlap)
        .start()
        .unwrap();
    at(t0, 15).await;
    h.pause();
    assert!(h.is_paused());
    at(t0, 55).await;
    assert_eq!(ids(&log), ["p@1@10s"], "nothing fires while paused");
    h.resume();
    at(t0, 65).await;
    h.cancel();
    let late = late.lock().unwrap().clone();
    (ids(&log), late)
}

#[tokio::test(start_paused = true)]
async fn missed_skip_drops_what_came_due_while_paused() {
    let (log, late) = across_a_pause(Missed::Skip, Overlap::Skip).await;
    assert_eq!(log, ["p@1@10s", "p@6@60s"]);
    assert_eq!(late, [false, false]);
}

#[tokio::test(start_paused = true)]
async fn missed_run_once_runs_the_latest_missed_at_the_resume() {
    let (log, late) = across_a_pause(Missed::RunOnce, Overlap::Skip).await;
    assert_eq!(log, ["p@1@10s", "p@5@55s", "p@6@60s"]);
    assert_eq!(late, [false, true, false]);
}

#[tokio::test(start_paused = true)]
async fn missed_run_all_is_bounded_and_runs_in_order() {
    // Queue: the missed firings run one after another.
    let (log, late) = across_a_pause(Missed::RunAll(3), Overlap::Queue).await;
    assert_eq!(log, ["p@1@10s", "p@3@55s", "p@4@56s", "p@5@57s", "p@6@60s"]);
    assert_eq!(late, [false, true, true, true, false]);
    // Allow: all at once.
    let (log, _) = across_a_pause(Missed::RunAll(2), Overlap::Allow).await;
    assert_eq!(log, ["p@1@10s", "p@4@55s", "p@5@55s", "p@6@60s"]);
}

/// The runtime is late: the clock jumps 35 s at once (no timer runs in
/// between), so firings 1 to 3 are all due when the driver wakes.
async fn late_runtime(missed: Missed) -> Vec<String> {
    let cluster = Cluster::new(2).unwrap();
    let log: Log = Default::default();
    let l = log.clone();
    let t0 = tokio::time::Instant::now();
    let h = cluster
        .schedule("l", Trigger::every(10 * SEC), move |_ctx, f: Firing| {
            l.lock()
                .unwrap()
                .push(format!("{}{}", f.id, if f.catch_up { " late" } else { "" }));
            async { Ok::<_, String>(()) }
        })
        .missed(missed)
        .overlap(Overlap::Allow)
        .start()
        .unwrap();
    tokio::task::yield_now().await; // the driver is asleep until 10 s
    tokio::time::advance(35 * SEC).await;
    at(t0, 36).await;
    h.cancel();
    ids(&log)
}

#[tokio::test(start_paused = true)]
async fn a_late_runtime_runs_the_on_time_firing_and_applies_the_missed_policy() {
    assert_eq!(late_runtime(Missed::Skip).await, ["l@3"]);
    assert_eq!(late_runtime(Missed::RunOnce).await, ["l@3"]);
    assert_eq!(late_runtime(Missed::RunAll(2)).await, ["l@2 late", "l@3"]);
    assert_eq!(
        late_runtime(Missed::RunAll(5)).await,
        ["l@1 late", "l@2 late", "l@3"]
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_ends_the_schedule_and_leaves_the_running_firing() {
    let cluster = Cluster::new(2).unwrap();
    let log: Log = Default::default();
    let t0 = tokio::time::Instant::now();
    let h = every_10s(&cluster, "c", 5 * SEC, Overlap::Skip, Missed::Skip, &log);
    at(t0, 12).await;
    h.cancel();
    h.finished().await;
    assert!(h.is_finished());
    assert_eq!(cluster.stats().running, 1, "c@1 goes on");
    at(t0, 100).await;
    assert_eq!(ids(&log), ["c@1"]);
    assert_eq!(cluster.stats().held, 0, "c@1 finished");
}

#[tokio::test(start_paused = true)]
async fn stopping_or_dropping_the_cluster_ends_its_schedules() {
    let cluster = Cluster::new(1).unwrap();
    let log: Log = Default::default();
    let t0 = tokio::time::Instant::now();
    let h = every_10s(&cluster, "x", SEC, Overlap::Skip, Missed::Skip, &log);
    at(t0, 15).await;
    cluster.stop(SEC).await.unwrap();
    h.finished().await;
    assert_eq!(ids(&log), ["x@1"]);
    assert!(matches!(
        cluster
            .schedule("late", Trigger::every(SEC), |_, _| async {
                Ok::<_, String>(())
            })
            .start(),
        Err(ScheduleError::ShuttingDown)
    ));

    // The schedule holds no strong reference: dropping the last clone
    // cancels the cluster and ends the schedule.
    let cluster = Cluster::new(1).unwrap();
    let h = every_10s(&cluster, "y", SEC, Overlap::Skip, Missed::Skip, &log);
    drop(cluster);
    tokio::time::timeout(SEC, h.finished()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bad_names_and_triggers_are_refused() {
    let cluster = Cluster::new(1).unwrap();
    let body = |_, _| async { Ok::<_, String>(()) };
    for name in ["", "#x", "a@b"] {
        let r = cluster.schedule(name, Trigger::every(SEC), body).start();
        assert!(matches!(r, Err(ScheduleError::InvalidName(_))), "{name:?}");
    }
    let long = "n".repeat(corral::MAX_SCHEDULE_NAME_LEN + 1);
    assert!(matches!(
        cluster.schedule(long, Trigger::every(SEC), body).start(),
        Err(ScheduleError::InvalidName(_))
    ));
    assert!(matches!(
        cluster
            .schedule("z", Trigger::every(Duration::ZERO), body)
            .start(),
        Err(ScheduleError::InvalidTrigger(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_taken_firing_id_is_skipped_not_run_twice() {
    let cluster = Cluster::new(2).unwrap();
    // Someone else holds the id of firing 1.
    let squatter = cluster
        .task(|_| async {
            tokio::time::sleep(60 * SEC).await;
            Ok::<_, String>(())
        })
        .id("d@1")
        .submit()
        .unwrap();
    let log: Log = Default::default();
    let t0 = tokio::time::Instant::now();
    let h = every_10s(&cluster, "d", SEC, Overlap::Allow, Missed::Skip, &log);
    at(t0, 25).await;
    assert_eq!(ids(&log), ["d@2"]);
    assert_eq!(h.stats().skipped, 1);
    cluster.cancel_task("d@1");
    assert_eq!(squatter.await, Err(TaskError::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_each_task_drops_that_firing_only() {
    let cluster = Cluster::new(1).unwrap();
    let log: Log = Default::default();
    let l = log.clone();
    let t0 = tokio::time::Instant::now();
    let h = cluster
        .schedule("e", Trigger::every(10 * SEC), move |_ctx, f: Firing| {
            l.lock().unwrap().push(f.id.to_string());
            async { Ok::<_, String>(()) }
        })
        .each_task(|task| {
            if task_is_second() {
                panic!("configure panics");
            }
            task
        })
        .start()
        .unwrap();
    at(t0, 35).await;
    assert_eq!(ids(&log), ["e@1", "e@3"]);
    assert_eq!((h.stats().fired, h.stats().skipped), (2, 1));
    assert!(!h.is_finished(), "the schedule goes on");
}

/// `true` on the second call (in the test that uses it).
fn task_is_second() -> bool {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    CALLS.fetch_add(1, SeqCst) == 1
}

#[cfg(feature = "cron")]
mod cron {
    use std::time::{Duration, SystemTime};

    use corral::{
        AnchoredClock, Cluster, CronSchedule, Firing, FiringTime, Missed, Overlap, ScheduleError,
        Trigger,
    };

    use super::{at, ids, Log};
    use crate::common::SEC;

    /// The Unix time of a UTC civil date and time.
    fn utc(y: i64, m: i64, d: i64, h: i64, min: i64) -> SystemTime {
        // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + h * 3600 + min * 60;
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    /// The next `n` firings after `from`, as local labels.
    fn firings(expr: &str, zone: &str, from: SystemTime, n: usize) -> Vec<String> {
        let cron = CronSchedule::parse(expr, zone).unwrap();
        let mut t = from;
        (0..n)
            .map(|_| {
                t = cron.next_after(t).unwrap();
                cron.label(t)
            })
            .collect()
    }

    #[test]
    fn spring_forward_berlin_fixed_time_in_the_gap_fires_once_after_it() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
        assert_eq!(
            firings("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 0, 0), 3),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00"
            ]
        );
        // Step jobs have nothing in the gap.
        assert_eq!(
            firings("*/30 * * * *", "Europe/Berlin", utc(2026, 3, 28, 23, 59), 4),
            [
                "2026-03-29T01:00:00+01:00",
                "2026-03-29T01:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:30:00+02:00"
            ]
        );
    }

    #[test]
    fn fall_back_berlin_fixed_time_in_the_repeated_hour_fires_once() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC).
        assert_eq!(
            firings("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12, 0), 2),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // Step jobs fire on both passes, each with its own id.
        assert_eq!(
            firings(
                "*/30 * * * *",
                "Europe/Berlin",
                utc(2026, 10, 24, 23, 45),
                4
            ),
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00"
            ]
        );
    }

    #[test]
    fn new_york_both_directions() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
        assert_eq!(
            firings("30 2 * * *", "America/New_York", utc(2026, 3, 8, 0, 0), 2),
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
        );
        // 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00 UTC).
        assert_eq!(
            firings("30 1 * * *", "America/New_York", utc(2026, 11, 1, 0, 0), 2),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        assert_eq!(
            firings(
                "*/30 1 * * *",
                "America/New_York",
                utc(2026, 11, 1, 0, 0),
                4
            ),
            [
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:30:00-05:00"
            ]
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        assert!(matches!(
            CronSchedule::parse("61 * * * *", "UTC"),
            Err(ScheduleError::InvalidCron { .. })
        ));
        assert!(matches!(
            CronSchedule::parse("* * * * *", "Mars/Olympus"),
            Err(ScheduleError::UnknownTimeZone(_))
        ));
        assert!(Trigger::cron("0 0 * * *", "UTC").is_ok());
    }

    /// Runs `expr` in Berlin on a wall clock starting at `start`, for
    /// `hours` of the paused clock; returns the firing ids.
    async fn run_cron(expr: &str, start: SystemTime, hours: u64) -> Vec<String> {
        let cluster = Cluster::new(1).unwrap();
        let log: Log = Default::default();
        let l = log.clone();
        let t0 = tokio::time::Instant::now();
        let h = cluster
            .schedule(
                "job",
                Trigger::cron(expr, "Europe/Berlin").unwrap(),
                move |_ctx, f: Firing| {
                    l.lock().unwrap().push(f.id.to_string());
                    async { Ok::<_, String>(()) }
                },
            )
            .wall_clock(AnchoredClock::new(start))
            .start()
            .unwrap();
        at(t0, hours * 3600).await;
        h.cancel();
        ids(&log)
    }

    #[tokio::test(start_paused = true)]
    async fn engine_runs_cron_across_both_dst_changes_on_a_test_clock() {
        assert_eq!(
            run_cron("30 2 * * *", utc(2026, 3, 28, 12, 0), 48).await,
            [
                "job@2026-03-29T03:00:00+02:00",
                "job@2026-03-30T02:30:00+02:00"
            ]
        );
        assert_eq!(
            run_cron("0,30 * * * *", utc(2026, 10, 24, 23, 50), 2).await,
            [
                "job@2026-10-25T02:00:00+02:00",
                "job@2026-10-25T02:30:00+02:00",
                "job@2026-10-25T02:00:00+01:00",
                "job@2026-10-25T02:30:00+01:00",
            ]
        );
    }

    /// A restart at 2026-03-30 12:00 UTC of a nightly job whose last
    /// firing before the stop was 2026-03-27 02:30 (CET).
    async fn restarted(missed: Missed) -> (Vec<String>, Vec<bool>) {
        let cluster = Cluster::new(1).unwrap();
        let log: Log = Default::default();
        let late: std::sync::Arc<std::sync::Mutex<Vec<bool>>> = Default::default();
        let (l, lt) = (log.clone(), late.clone());
        let t0 = tokio::time::Instant::now();
        let h = cluster
            .schedule(
                "nightly",
                Trigger::cron("30 2 * * *", "Europe/Berlin").unwrap(),
                move |_ctx, f: Firing| {
                    assert!(matches!(f.due, FiringTime::Wall(_)));
                    l.lock().unwrap().push(f.id.to_string());
                    lt.lock().unwrap().push(f.catch_up);
                    async {
                        tokio::time::sleep(SEC).await;
                        Ok::<_, String>(())
                    }
                },
            )
            .wall_clock(AnchoredClock::new(utc(2026, 3, 30, 12, 0)))
            .catch_up_from(utc(2026, 3, 27, 1, 30))
            .missed(missed)
            .overlap(Overlap::Queue)
            .start()
            .unwrap();
        at(t0, 24 * 3600).await;
        h.cancel();
        let late = late.lock().unwrap().clone();
        (ids(&log), late)
    }

    #[tokio::test(start_paused = true)]
    async fn across_a_restart_missed_firings_follow_the_policy() {
        let next = "nightly@2026-03-31T02:30:00+02:00";
        let (log, late) = restarted(Missed::Skip).await;
        assert_eq!(log, [next]);
        assert_eq!(late, [false]);
        let (log, late) = restarted(Missed::RunOnce).await;
        assert_eq!(log, ["nightly@2026-03-30T02:30:00+02:00", next]);
        assert_eq!(late, [true, false]);
        let (log, _) = restarted(Missed::RunAll(10)).await;
        assert_eq!(
            log,
            [
                "nightly@2026-03-28T02:30:00+01:00",
                "nightly@2026-03-29T03:00:00+02:00",
                "nightly@2026-03-30T02:30:00+02:00",
                next
            ]
        );
        let (log, _) = restarted(Missed::RunAll(2)).await;
        assert_eq!(log.len(), 3, "bounded: the latest 2 missed, then the next");
    }
}

/// An interval schedule has no cap on its firing count: a 1 ms schedule
/// fires on past its 2^32nd firing (about 49.7 days), numbered and timed
/// as `n * period` after its start.
#[tokio::test(start_paused = true)]
async fn an_interval_fires_past_two_to_the_32_firings() {
    let cluster = Cluster::new(1).unwrap();
    let t0 = tokio::time::Instant::now();
    let last: Arc<Mutex<Option<FiringTime>>> = Default::default();
    let l = last.clone();
    let handle = cluster
        .schedule(
            "tick",
            Trigger::every(Duration::from_millis(1)),
            move |_ctx, firing: Firing| {
                *l.lock().unwrap() = Some(firing.due);
                async { Ok::<_, String>(()) }
            },
        )
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    tokio::time::advance(Duration::from_secs(50 * 86_400)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = handle.stats().fired;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!handle.is_finished(), "the schedule ended");
    assert!(handle.stats().fired > before, "no firing after 50 days");
    let Some(FiringTime::Interval { number, at }) = *last.lock().unwrap() else {
        panic!("no interval firing recorded");
    };
    assert!(number > u64::from(u32::MAX), "firing {number}");
    assert_eq!(
        at - t0,
        Duration::from_millis(number),
        "firing {number} at {:?}",
        at - t0
    );
}

/// Every 10 s; paused at 3 s and resumed at 5 s (no firing came due in
/// between); watched until 25 s. Returns (id, catch_up) of each firing.
async fn pause_between_firings(missed: Missed) -> Vec<(String, bool)> {
    let cluster = Cluster::new(1).unwrap();
    let log: Arc<Mutex<Vec<(String, bool)>>> = Default::default();
    let l = log.clone();
    let t0 = tokio::time::Instant::now();
    let h = cluster
        .schedule(
            "p",
            Trigger::every(10 * SEC),
            move |_ctx, firing: Firing| {
                l.lock()
                    .unwrap()
                    .push((firing.id.to_string(), firing.catch_up));
                async { Ok::<_, String>(()) }
            },
        )
        .missed(missed)
        .start()
        .unwrap();
    at(t0, 3).await;
    h.pause();
    at(t0, 5).await;
    h.resume();
    at(t0, 25).await;
    h.cancel();
    let seen = log.lock().unwrap().clone();
    seen
}

/// A pause that missed nothing leaves the next firing on time: run (not
/// skipped as missed) and not marked as a catch-up, whatever the policy.
#[tokio::test(start_paused = true)]
async fn a_pause_between_firings_misses_nothing() {
    for missed in [Missed::Skip, Missed::RunOnce, Missed::RunAll(3)] {
        let log = pause_between_firings(missed).await;
        assert_eq!(
            log,
            [("p@1".to_string(), false), ("p@2".to_string(), false)],
            "{missed:?}"
        );
    }
}

/// With `Overlap::Queue`, a firing queued behind a run does not start while
/// the schedule is paused: it starts at the resume.
#[tokio::test(start_paused = true)]
async fn a_queued_firing_waits_for_the_resume() {
    let cluster = Cluster::new(2).unwrap();
    let log: Arc<Mutex<Vec<(String, u64)>>> = Default::default();
    let l = log.clone();
    let t0 = tokio::time::Instant::now();
    let h = cluster
        .schedule(
            "q",
            Trigger::every(10 * SEC),
            move |_ctx, firing: Firing| {
                l.lock()
                    .unwrap()
                    .push((firing.id.to_string(), t0.elapsed().as_secs()));
                async {
                    tokio::time::sleep(15 * SEC).await;
                    Ok::<_, String>(())
                }
            },
        )
        .overlap(Overlap::Queue)
        .start()
        .unwrap();
    // Firing 1 runs 10..25 s; firing 2 is queued at 20 s.
    at(t0, 21).await;
    h.pause();
    at(t0, 60).await;
    assert_eq!(
        ids_at(&log),
        [("q@1".to_string(), 10)],
        "started while paused"
    );
    h.resume();
    at(t0, 61).await;
    assert_eq!(
        ids_at(&log),
        [("q@1".to_string(), 10), ("q@2".to_string(), 60)]
    );
    h.cancel();
}

fn ids_at(log: &Arc<Mutex<Vec<(String, u64)>>>) -> Vec<(String, u64)> {
    log.lock().unwrap().clone()
}
