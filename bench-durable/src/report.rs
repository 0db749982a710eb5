//! The table: medians per side, the median of the run-by-run ratios
//! corral/floor, the spec's target and whether it is met.

use std::collections::HashMap;

type Results = HashMap<String, Vec<Option<HashMap<String, f64>>>>;

/// What the columns mean.
pub const LEGEND: &str = "\
Medians over repetitions; ratio = median of the run-by-run ratios corral/floor. \
Round trips, statements and \"wire\" transactions are counted by the harness's proxy on the \
measured side's own connections (pg_stat_statements is not loaded on this server); commits are \
pg_stat_database.xact_commit deltas of the database (other sessions on it add noise). Server CPU is \
the sum of /proc/<pid>/stat of the measured side's own backends (not the WAL writer, checkpointer or \
autovacuum). D6's repetitions run side by side (idle). D8 runs corral only, once.";

/// One row of the table.
#[derive(Debug)]
pub struct Row {
    name: String,
    corral: String,
    floor: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn series(r: &Results, key: &str, field: &str) -> Vec<Option<f64>> {
    r.get(key)
        .map(|runs| {
            runs.iter()
                .map(|v| v.as_ref().and_then(|v| v.get(field).copied()))
                .collect()
        })
        .unwrap_or_default()
}

fn med(r: &Results, key: &str, field: &str) -> Option<f64> {
    median(series(r, key, field).into_iter().flatten().collect())
}

fn ratio(r: &Results, a: (&str, &str), b: (&str, &str)) -> Option<f64> {
    let (x, y) = (series(r, a.0, a.1), series(r, b.0, b.1));
    median(
        x.iter()
            .zip(&y)
            .filter_map(|(x, y)| Some((*x)? / (*y)?))
            .collect(),
    )
}

/// A number with a unit, to 3 significant figures or so.
fn fmt(v: Option<f64>, unit: &str) -> String {
    let Some(v) = v else { return "-".into() };
    let s = if unit == "/s" && v >= 1000.0 {
        let n = v.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 || v == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    };
    if unit.is_empty() {
        s
    } else if unit == "/s" {
        format!("{s}/s")
    } else {
        format!("{s} {unit}")
    }
}

/// Every row, from what the children reported.
pub fn rows(r: &Results, quick: bool) -> Vec<Row> {
    let mut out = Vec::new();
    let judge = |ok: Option<bool>| if quick { None } else { ok };
    let mut push = |name: String,
                    c: Option<f64>,
                    f: Option<f64>,
                    unit: &str,
                    ratio_v: Option<f64>,
                    target: &str,
                    met: Option<bool>| {
        out.push(Row {
            name,
            corral: fmt(c, unit),
            floor: fmt(f, unit),
            ratio: ratio_v.map_or("-".into(), |x| format!("{x:.2}")),
            target: target.into(),
            met: judge(met),
        });
    };
    let (c1, f1) = ("D1/corral/-", "D1/floor/-");
    if r.contains_key(c1) {
        let (c, f) = (med(r, c1, "rate"), med(r, f1, "rate"));
        let q = ratio(r, (c1, "rate"), (f1, "rate"));
        let ok = q.zip(c).map(|(q, c)| q >= 0.5 && c >= 5000.0);
        push(
            "D1 burn-down, jobs/s".into(),
            c,
            f,
            "/s",
            q,
            "ratio >= 0.5; >= 5,000/s",
            ok,
        );
        for (field, label) in [
            ("round_trips", "D1 round trips per job (wire)"),
            ("statements", "D1 statements per job (wire)"),
            ("commits", "D1 commits per job (xact_commit delta)"),
            ("wire_commits", "D1 transactions per job (wire)"),
            ("rows_per_claim", "D1 rows per claim statement"),
            ("rows_per_done", "D1 rows per completion statement"),
        ] {
            let (c, f) = (med(r, c1, field), med(r, f1, field));
            push(
                label.into(),
                c,
                f,
                "",
                ratio(r, (c1, field), (f1, field)),
                "(info)",
                None,
            );
        }
        for (field, label) in [
            ("cpu_worker_10k", "D7 worker process CPU per 10k jobs"),
            ("cpu_server_10k", "D7 server backends CPU per 10k jobs"),
        ] {
            let (c, f) = (med(r, c1, field), med(r, f1, field));
            push(
                label.into(),
                c,
                f,
                "s",
                ratio(r, (c1, field), (f1, field)),
                "< every peer (no peer measured)",
                None,
            );
        }
    }
    for (v, label) in [
        ("single", "D2 enqueue, single submits from 8 tasks"),
        ("batch", "D2 enqueue, batches of 1,000"),
    ] {
        let (ck, fk) = (format!("D2/corral/{v}"), format!("D2/floor/{v}"));
        if !r.contains_key(&ck) {
            continue;
        }
        let (c, f) = (med(r, &ck, "rate"), med(r, &fk, "rate"));
        let q = ratio(r, (&ck, "rate"), (&fk, "rate"));
        if v == "single" {
            push(
                label.into(),
                c,
                f,
                "/s",
                q,
                "ratio >= 0.8",
                q.map(|q| q >= 0.8),
            );
        } else {
            push(
                label.into(),
                c,
                f,
                "/s",
                q,
                ">= 50,000/s",
                c.map(|c| c >= 50_000.0),
            );
        }
    }
    let (c3, f3) = ("D3/corral/-", "D3/floor/-");
    if r.contains_key(c3) {
        for (what, name) in [
            ("start", "enqueue -> start"),
            ("done", "enqueue -> resolved"),
        ] {
            for (p, limit) in [("p50", 5.0), ("p99", 20.0), ("max", 100.0)] {
                let field = format!("{what}_{p}");
                let (c, f) = (med(r, c3, &field), med(r, f3, &field));
                push(
                    format!("D3 {name} {p} (idle, other process)"),
                    c,
                    f,
                    "ms",
                    ratio(r, (c3, &field), (f3, &field)),
                    &format!("<= {limit} ms"),
                    c.map(|c| c <= limit),
                );
            }
        }
    }
    let (c6, f6) = ("D6/corral/-", "D6/floor/-");
    if r.contains_key(c6) {
        let (c, f) = (
            med(r, c6, "statements_per_s"),
            med(r, f6, "statements_per_s"),
        );
        push(
            "D6 idle: statements per second".into(),
            c,
            f,
            "",
            None,
            "<= 0.1/s",
            c.map(|c| c <= 0.1),
        );
        for (field, label) in [
            ("cpu_worker_per_min", "D6 idle: worker CPU per minute"),
            (
                "cpu_server_per_min",
                "D6 idle: server backends CPU per minute",
            ),
        ] {
            push(
                label.into(),
                med(r, c6, field),
                med(r, f6, field),
                "s",
                None,
                "(info)",
                None,
            );
        }
    }
    let (c4, f4) = ("D4/corral/-", "D4/floor/-");
    if r.contains_key(c4) {
        for (p, target) in [("p50", None), ("p99", Some(20.0)), ("max", None)] {
            let field = format!("late_{p}");
            let (c, f) = (med(r, c4, &field), med(r, f4, &field));
            let t = target.map_or("(info)".to_string(), |t| format!("<= {t} ms"));
            let ok = target.and_then(|t| c.map(|c| c <= t));
            push(
                format!("D4 scheduled start lateness {p}"),
                c,
                f,
                "ms",
                None,
                &t,
                ok,
            );
        }
    }
    let (c5, f5) = ("D5/corral/-", "D5/floor/-");
    if r.contains_key(c5) {
        let (c, f) = (med(r, c5, "rate"), med(r, f5, "rate"));
        push(
            "D5 burn-down beside an open transaction, jobs/s".into(),
            c,
            f,
            "/s",
            ratio(r, (c5, "rate"), (f5, "rate")),
            "(info)",
            None,
        );
        for (field, label) in [
            ("rows_per_claim", "D5 rows per claim statement"),
            ("rows_per_done", "D5 rows per completion statement"),
        ] {
            push(
                label.into(),
                med(r, c5, field),
                med(r, f5, field),
                "",
                ratio(r, (c5, field), (f5, field)),
                "(info)",
                None,
            );
        }
        let vs_clean = |side: &str| -> Option<f64> {
            Some(
                med(r, &format!("D5/{side}/-"), "rate")? / med(r, &format!("D1/{side}/-"), "rate")?,
            )
        };
        let (qc, qf) = (vs_clean("corral"), vs_clean("floor"));
        push(
            "D5 jobs/s against clean D1 (x)".into(),
            qc,
            qf,
            "",
            None,
            "corral >= 0.5",
            qc.map(|q| q >= 0.5),
        );
    }
    let c8 = "D8/corral/-";
    if r.contains_key(c8) {
        let lost = med(r, c8, "lost");
        let ttl = med(r, c8, "ttl_s").unwrap_or(0.0);
        let rescue = med(r, c8, "rescue_s");
        push(
            "D8 crash: jobs lost".into(),
            lost,
            None,
            "",
            None,
            "0",
            lost.map(|l| l == 0.0),
        );
        push(
            "D8 crash: jobs run twice".into(),
            med(r, c8, "dups"),
            None,
            "",
            None,
            "(info)",
            None,
        );
        push(
            "D8 crash: attempts running at the kill".into(),
            med(r, c8, "running_at_kill"),
            None,
            "",
            None,
            "(info)",
            None,
        );
        let out_dups = med(r, c8, "dups_outside");
        push(
            "D8 crash: run twice but not running at the kill".into(),
            out_dups,
            None,
            "",
            None,
            "0",
            out_dups.map(|d| d == 0.0),
        );
        push(
            "D8 crash: time until the rescue".into(),
            rescue,
            None,
            "s",
            None,
            &format!("<= TTL + 1 s = {:.0} s", ttl + 1.0),
            rescue.map(|x| x <= ttl + 1.0),
        );
    }
    out
}

/// The table as markdown.
pub fn render(rows: &[Row]) -> String {
    let mut s = String::from("| workload | corral | floor | corral/floor | target | met? |\n|---|---:|---:|---:|---|---|\n");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {met} |\n",
            r.name, r.corral, r.floor, r.ratio, r.target
        ));
    }
    s
}

/// (met, judged).
pub fn score(rows: &[Row]) -> (usize, usize) {
    let judged = rows.iter().filter(|r| r.met.is_some()).count();
    let met = rows.iter().filter(|r| r.met == Some(true)).count();
    (met, judged)
}
