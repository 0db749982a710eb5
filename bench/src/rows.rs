//! The rows of the report: for each workload, which child values are
//! compared, how repetitions are folded, and the target from
//! `bench/README.md#workloads`. Ratios are always corral/floor (see [`crate::report`]).

use crate::parent::Options;
use crate::report::{Cell, Results, Row, Target, Unit};
use crate::spec::{
    Driver, Side, Spec, W10_CHAIN, W10_FAN, W10_PENDING, W10_PENDING_ANY, W10_REFERENCE,
    W11_BURST1, W11_IDLE_LIMITER, W11_REFERENCE, W12_COLD, W12_HOT, W12_MANY, W12_REFERENCE,
    W12_WAITING, W2_REFERENCE, W6_NAMED,
};
use crate::stats::median;
use crate::workloads::Sizes;

/// How repetitions are folded into one value.
#[derive(Debug, Clone, Copy)]
enum Fold {
    Median,
    Max,
}

/// One side of a row: whose runs, which value.
type Source<'a> = Option<(&'a Spec, &'static str)>;

fn series(res: &Results, spec: &Spec, key: &str) -> Vec<Option<f64>> {
    res.get(spec).map_or_else(Vec::new, |runs| {
        runs.iter()
            .map(|r| r.as_ref().and_then(|m| m.get(key).copied()))
            .map(|v| v.filter(|v| v.is_finite()))
            .collect()
    })
}

fn row(
    res: &Results,
    name: String,
    unit: Unit,
    (corral, floor): (Source<'_>, Source<'_>),
    target: Target,
    fold: Fold,
) -> Row {
    let c = corral.map(|(s, k)| series(res, s, k));
    let f = floor.map(|(s, k)| series(res, s, k));
    let cell = |v: &Option<Vec<Option<f64>>>| match v {
        None => Cell::Absent,
        Some(v) => {
            let vals: Vec<f64> = v.iter().flatten().copied().collect();
            let folded = match fold {
                Fold::Median => median(&vals),
                Fold::Max => vals.into_iter().reduce(f64::max),
            };
            folded.map_or(Cell::Missing, Cell::Value)
        }
    };
    // A ratio of counts or of percentages says nothing: those rows are
    // judged on corral's own value.
    let comparable = !matches!(unit, Unit::Int | Unit::Pct);
    let ratio = match (&c, &f) {
        (Some(c), Some(f)) if comparable => {
            let ratios: Vec<f64> = c
                .iter()
                .zip(f)
                .filter_map(|(a, b)| Some(a.as_ref()? / b.as_ref()?))
                .filter(|r| r.is_finite())
                .collect();
            median(&ratios)
        }
        _ => None,
    };
    Row {
        name,
        unit,
        corral: cell(&c),
        floor: cell(&f),
        ratio,
        target,
    }
}

/// A row comparing the same value of a corral spec and its floor.
fn paired(res: &Results, name: String, unit: Unit, c: &Spec, key: &'static str, t: Target) -> Row {
    let f = Spec {
        side: Side::Floor,
        ..c.clone()
    };
    row(
        res,
        name,
        unit,
        (Some((c, key)), Some((&f, key))),
        t,
        Fold::Median,
    )
}

/// W2's child runs: both variants on both sides, and the W1 floor at 1
/// worker that W2's drain rate is compared with.
pub fn w2_specs() -> Vec<Spec> {
    let w2 = |side, v| Spec::new("W2", side, 1).variant(v);
    vec![
        w2(Side::Corral, "distinct"),
        w2(Side::Corral, "same"),
        w2(Side::Floor, "distinct"),
        w2(Side::Floor, "same"),
        Spec::new("W1", Side::Floor, 1).variant(W2_REFERENCE),
    ]
}

/// W10's child runs: each variant on both sides, and the W1 corral program
/// at 2 workers (`block_on`) that the chain and fan rates are compared with.
pub fn w10_specs() -> Vec<Spec> {
    let w10 = |side, v| Spec::new("W10", side, 2).variant(v);
    let mut specs = Vec::new();
    for v in [W10_CHAIN, W10_FAN, W10_PENDING, W10_PENDING_ANY] {
        specs.push(w10(Side::Corral, v));
        specs.push(w10(Side::Floor, v));
    }
    specs.push(Spec::new("W1", Side::Corral, 2).variant(W10_REFERENCE));
    specs
}

/// W11's child runs: the paced workload on both sides, and W1's corral
/// program at 2 workers with and without an idle limiter.
pub fn w11_specs() -> Vec<Spec> {
    vec![
        Spec::new("W11", Side::Corral, 2),
        Spec::new("W11", Side::Floor, 2),
        Spec::new("W11", Side::Corral, 2).variant(W11_BURST1),
        Spec::new("W11", Side::Floor, 2).variant(W11_BURST1),
        Spec::new("W1", Side::Corral, 2).variant(W11_IDLE_LIMITER),
        Spec::new("W1", Side::Corral, 2).variant(W11_REFERENCE),
    ]
}

/// W12's child runs: the rate variants (corral only), the waiting variant
/// on both sides, and the W1 corral program at 2 workers (`block_on`) that
/// the rates are compared with.
pub fn w12_specs() -> Vec<Spec> {
    let w12 = |side, v| Spec::new("W12", side, 2).variant(v);
    vec![
        w12(Side::Corral, W12_MANY),
        w12(Side::Corral, W12_HOT),
        w12(Side::Corral, W12_COLD),
        w12(Side::Corral, W12_WAITING),
        w12(Side::Floor, W12_WAITING),
        Spec::new("W1", Side::Corral, 2).variant(W12_REFERENCE),
    ]
}

/// "10M", "200k", "1000".
fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// Builds every row for the workloads that were run.
pub fn rows(res: &Results, o: &Options) -> Vec<Row> {
    let s = Sizes::new(o.quick);
    let mut rows = Vec::new();
    let drivers = [Driver::BlockOn, Driver::Spawned];
    if o.wants("W1") {
        for w in [1, 2, 8] {
            for d in drivers {
                let c = Spec::new("W1", Side::Corral, w).driver(d);
                let name = format!("W1 throughput, {w} worker(s), {d}");
                rows.push(paired(
                    res,
                    name,
                    Unit::Rate,
                    &c,
                    "rate",
                    Target::AtLeast(1.5),
                ));
            }
        }
    }
    if o.wants("W2") {
        let w1_floor = Spec::new("W1", Side::Floor, 1).variant(W2_REFERENCE);
        for v in ["distinct", "same"] {
            let c = Spec::new("W2", Side::Corral, 1).variant(v);
            let f = Spec::new("W2", Side::Floor, 1).variant(v);
            let zero = Target::Corral(0.0, "= 0");
            rows.push(row(
                res,
                format!("W2 {v} start times: inversions (max)"),
                Unit::Int,
                (Some((&c, "inversions")), Some((&f, "inversions"))),
                zero,
                Fold::Max,
            ));
            rows.push(row(
                res,
                format!("W2 {v}: drain rate vs W1 floor w=1"),
                Unit::Rate,
                (Some((&c, "rate")), Some((&w1_floor, "rate"))),
                Target::AtLeast(1.0),
                Fold::Median,
            ));
            rows.push(row(
                res,
                format!("W2 {v}: BinaryHeap push+pop (floor)"),
                Unit::Rate,
                (None, Some((&f, "rate"))),
                Target::Info,
                Fold::Median,
            ));
        }
    }
    if o.wants("W3") {
        let c = Spec::new("W3", Side::Corral, 8);
        let one = Target::AtMost(1.0);
        rows.push(paired(
            res,
            "W3 timer lateness p50".into(),
            Unit::Ms,
            &c,
            "p50_ms",
            one,
        ));
        rows.push(paired(
            res,
            "W3 timer lateness p99".into(),
            Unit::Ms,
            &c,
            "p99_ms",
            one,
        ));
        rows.push(paired(
            res,
            "W3 process CPU".into(),
            Unit::Secs,
            &c,
            "cpu_s",
            one,
        ));
    }
    if o.wants("W4") {
        for d in drivers {
            let c = Spec::new("W4", Side::Corral, 2).driver(d);
            let t = Target::AtMost(1.3);
            rows.push(paired(
                res,
                format!("W4 round trip p50, {d}"),
                Unit::Us,
                &c,
                "p50_us",
                t,
            ));
            rows.push(paired(
                res,
                format!("W4 round trip p99, {d}"),
                Unit::Us,
                &c,
                "p99_us",
                t,
            ));
        }
    }
    if o.wants("W5") {
        let c = Spec::new("W5", Side::Corral, 2);
        let n = count(s.w5);
        rows.push(paired(
            res,
            format!("W5 submit rate ({n} pending)"),
            Unit::Rate,
            &c,
            "submit_rate",
            Target::AtLeast(3.0),
        ));
        rows.push(paired(
            res,
            "W5 live heap per pending task".into(),
            Unit::Bytes,
            &c,
            "heap_per_task",
            Target::AtMost(0.75),
        ));
        rows.push(paired(
            res,
            "W5 allocations per task".into(),
            Unit::PerTask,
            &c,
            "allocs_per_task",
            Target::Corral(1.0, "<= 1"),
        ));
        rows.push(paired(
            res,
            "W5 peak heap per task (info)".into(),
            Unit::Bytes,
            &c,
            "peak_heap_per_task",
            Target::Info,
        ));
        rows.push(paired(
            res,
            "W5 peak RSS (info)".into(),
            Unit::MiB,
            &c,
            "rss_mib",
            Target::Info,
        ));
    }
    if o.wants("W6") {
        let n = count(s.w6);
        for (variant, by, prefix) in [
            ("-", "id", "W6"),
            (W6_NAMED, "user string id", "W6 by user string id:"),
        ] {
            let c = Spec::new("W6", Side::Corral, 2).variant(variant);
            rows.push(paired(
                res,
                format!("W6 time to cancel {n} by {by}"),
                Unit::Ms,
                &c,
                "cancel_ms",
                Target::AtMost(0.5),
            ));
            rows.push(paired(
                res,
                format!("{prefix} time until every awaiter answered"),
                Unit::Ms,
                &c,
                "answered_ms",
                Target::AtMost(0.5),
            ));
            rows.push(paired(
                res,
                format!("{prefix} live heap after, % of peak"),
                Unit::Pct,
                &c,
                "after_pct",
                Target::Corral(5.0, "<= 5 %"),
            ));
        }
    }
    if o.wants("W7") {
        let c = Spec::new("W7", Side::Corral, 2);
        rows.push(paired(
            res,
            "W7 4 producers, throughput".into(),
            Unit::Rate,
            &c,
            "rate",
            Target::AtLeast(1.2),
        ));
    }
    if o.wants("W8") {
        let c = Spec::new("W8", Side::Corral, 2);
        rows.push(paired(
            res,
            "W8 retries (2 fails + 1), throughput".into(),
            Unit::Rate,
            &c,
            "rate",
            Target::AtLeast(0.5),
        ));
    }
    if o.wants("W9") {
        let c = Spec::new("W9", Side::Corral, 2);
        let (n1, n2) = (count(s.w9_checkpoint), count(s.w9));
        let one = |name: String, unit, key, t| {
            row(res, name, unit, (Some((&c, key)), None), t, Fold::Median)
        };
        rows.push(one(
            format!("W9 peak RSS after {n1} (info)"),
            Unit::MiB,
            "rss_1_mib",
            Target::Info,
        ));
        rows.push(one(
            format!("W9 peak RSS after {n2} (info)"),
            Unit::MiB,
            "rss_end_mib",
            Target::Info,
        ));
        rows.push(one(
            format!("W9 peak RSS {n2} / {n1}"),
            Unit::Ratio,
            "rss_ratio",
            Target::Corral(1.2, "<= 1.2"),
        ));
        rows.push(one(
            "W9 soak throughput (info)".into(),
            Unit::Rate,
            "rate",
            Target::Info,
        ));
    }
    if o.wants("W10") {
        w10_rows(res, &s, &mut rows);
    }
    if o.wants("W11") {
        w11_rows(res, &s, &mut rows);
    }
    if o.wants("W12") {
        w12_rows(res, &s, &mut rows);
    }
    rows
}

/// W11's rows, all informational (the spec sets no target).
fn w11_rows(res: &Results, s: &Sizes, rows: &mut Vec<Row>) {
    let c = Spec::new("W11", Side::Corral, 2);
    let info = Target::Info;
    let what = format!("{} tasks at 1,000/s burst 10", count(s.w11));
    rows.push(paired(
        res,
        format!("W11 {what}, achieved rate vs tokio timers"),
        Unit::Rate,
        &c,
        "rate",
        info,
    ));
    rows.push(paired(
        res,
        format!("W11 {what}, achieved / limit"),
        Unit::Ratio,
        &c,
        "accuracy",
        info,
    ));
    rows.push(paired(
        res,
        format!("W11 {what}, start lag p99 vs tokio timers"),
        Unit::Ms,
        &c,
        "lag_p99_ms",
        info,
    ));
    rows.push(paired(
        res,
        format!("W11 {what}, process CPU while they wait vs tokio timers"),
        Unit::Secs,
        &c,
        "cpu_s",
        info,
    ));
    let b1 = Spec::new("W11", Side::Corral, 2).variant(W11_BURST1);
    rows.push(paired(
        res,
        format!(
            "W11 {} tasks at 1,000/s burst 1, achieved rate vs tokio timers",
            count(s.w11)
        ),
        Unit::Rate,
        &b1,
        "rate",
        info,
    ));
    rows.push(paired(
        res,
        format!(
            "W11 {} tasks at 1,000/s burst 1, achieved / limit",
            count(s.w11)
        ),
        Unit::Ratio,
        &b1,
        "accuracy",
        info,
    ));
    let idle = Spec::new("W1", Side::Corral, 2).variant(W11_IDLE_LIMITER);
    let plain = Spec::new("W1", Side::Corral, 2).variant(W11_REFERENCE);
    rows.push(row(
        res,
        "W11 W1 corral w=2 with an idle limiter, tasks/s vs without".into(),
        Unit::Rate,
        (Some((&idle, "rate")), Some((&plain, "rate"))),
        info,
        Fold::Median,
    ));
}

/// W10's rows, all informational (the spec sets no target).
fn w10_rows(res: &Results, s: &Sizes, rows: &mut Vec<Row>) {
    let w1 = Spec::new("W1", Side::Corral, 2).variant(W10_REFERENCE);
    let info = Target::Info;
    for (v, what) in [
        (W10_CHAIN, format!("chain of {}", count(s.w10))),
        (W10_FAN, format!("fan 1 -> {} -> 1", count(s.w10))),
    ] {
        let c = Spec::new("W10", Side::Corral, 2).variant(v);
        let name = format!("W10 {what}, tasks/s vs tokio floor");
        rows.push(paired(res, name, Unit::Rate, &c, "rate", info));
        rows.push(row(
            res,
            format!("W10 {what}, tasks/s vs W1 corral w=2"),
            Unit::Rate,
            (Some((&c, "rate")), Some((&w1, "rate"))),
            info,
            Fold::Median,
        ));
    }
    let n = count(s.w10_pending);
    for (v, edge) in [(W10_PENDING, "typed"), (W10_PENDING_ANY, "ordering-only")] {
        let c = Spec::new("W10", Side::Corral, 2).variant(v);
        rows.push(paired(
            res,
            format!("W10 heap per waiting dependent ({edge}, {n}) vs plain pending"),
            Unit::Bytes,
            &c,
            "heap_per_task",
            info,
        ));
        rows.push(paired(
            res,
            format!("W10 allocations per dependent ({edge}) vs plain"),
            Unit::PerTask,
            &c,
            "allocs_per_task",
            info,
        ));
        rows.push(paired(
            res,
            format!("W10 submit rate, dependent ({edge}) vs plain pending"),
            Unit::Rate,
            &c,
            "submit_rate",
            info,
        ));
    }
}

/// W12's rows, all informational.
fn w12_rows(res: &Results, s: &Sizes, rows: &mut Vec<Row>) {
    let w1 = Spec::new("W1", Side::Corral, 2).variant(W12_REFERENCE);
    let info = Target::Info;
    let n = count(s.w12);
    for (v, what) in [
        (W12_MANY, format!("{n} tasks over 1000 keys of limit 1")),
        (
            W12_HOT,
            format!("{n} tasks of other keys beside a key of limit 2"),
        ),
    ] {
        let c = Spec::new("W12", Side::Corral, 2).variant(v);
        rows.push(row(
            res,
            format!("W12 {what}, tasks/s vs W1 corral w=2"),
            Unit::Rate,
            (Some((&c, "rate")), Some((&w1, "rate"))),
            info,
            Fold::Median,
        ));
    }
    let hot = Spec::new("W12", Side::Corral, 2).variant(W12_HOT);
    let cold = Spec::new("W12", Side::Corral, 2).variant(W12_COLD);
    rows.push(row(
        res,
        format!("W12 {n} tasks of other keys, tasks/s with vs without the hot key"),
        Unit::Rate,
        (Some((&hot, "rate")), Some((&cold, "rate"))),
        info,
        Fold::Median,
    ));
    let c = Spec::new("W12", Side::Corral, 2).variant(W12_WAITING);
    let n = count(s.w12_waiting);
    rows.push(paired(
        res,
        format!("W12 heap per task waiting on a key ({n}) vs plain pending"),
        Unit::Bytes,
        &c,
        "heap_per_task",
        info,
    ));
    rows.push(paired(
        res,
        "W12 allocations per task waiting on a key vs plain".into(),
        Unit::PerTask,
        &c,
        "allocs_per_task",
        info,
    ));
}
