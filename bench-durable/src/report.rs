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

/// The peer sides that may appear as columns, in order.
const PEERS: [&str; 3] = ["awa", "apalis", "underway"];

/// One row of the table.
#[derive(Debug)]
pub struct Row {
    name: String,
    corral: String,
    floor: String,
    /// The peer columns of the table.
    peer_names: Vec<&'static str>,
    /// One figure per peer column.
    peers: Vec<String>,
    ratio: String,
    /// corral/peer, one per peer column.
    peer_ratios: Vec<String>,
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

/// The peers measured in this run (the table's extra columns).
fn peers_in(r: &Results) -> Vec<&'static str> {
    PEERS
        .into_iter()
        .filter(|p| r.keys().any(|k| k.split('/').nth(1) == Some(*p)))
        .collect()
}

/// The peers' figures and corral/peer ratios of one field of one
/// workload (`key` is corral's result key), formatted.
fn peer_cells(
    r: &Results,
    peers: &[&str],
    key: Option<(&str, &str)>,
    unit: &str,
) -> (Vec<String>, Vec<String>) {
    let Some((ck, field)) = key else {
        return (vec!["-".into(); peers.len()], vec!["-".into(); peers.len()]);
    };
    peers
        .iter()
        .map(|p| {
            let pk = ck.replace("/corral/", &format!("/{p}/"));
            let q = ratio(r, (ck, field), (&pk, field));
            (
                fmt(med(r, &pk, field), unit),
                q.map_or("-".into(), |x| format!("{x:.2}")),
            )
        })
        .unzip()
}

/// corral/peer ratios of `field` for every peer measured (for targets).
fn peer_ratios(r: &Results, ck: &str, field: &str) -> Vec<(&'static str, Option<f64>)> {
    peers_in(r)
        .into_iter()
        .map(|p| {
            let pk = ck.replace("/corral/", &format!("/{p}/"));
            (p, ratio(r, (ck, field), (&pk, field)))
        })
        .collect()
}

/// Every row, from what the children reported.
pub fn rows(r: &Results, quick: bool) -> Vec<Row> {
    let mut out = Vec::new();
    let peers = peers_in(r);
    let judge = |ok: Option<bool>| if quick { None } else { ok };
    // `key`: corral's result key and field, for the peers' columns.
    let mut push_k = |name: String,
                      key: Option<(&str, &str)>,
                      c: Option<f64>,
                      f: Option<f64>,
                      unit: &str,
                      ratio_v: Option<f64>,
                      target: &str,
                      met: Option<bool>| {
        let (pv, pq) = peer_cells(r, &peers, key, unit);
        out.push(Row {
            name,
            corral: fmt(c, unit),
            floor: fmt(f, unit),
            peer_names: peers.clone(),
            peers: pv,
            ratio: ratio_v.map_or("-".into(), |x| format!("{x:.2}")),
            peer_ratios: pq,
            target: target.into(),
            met: judge(met),
        });
    };
    let (c1, f1) = ("D1/corral/-", "D1/floor/-");
    if r.contains_key(c1) {
        let (c, f) = (med(r, c1, "rate"), med(r, f1, "rate"));
        let q = ratio(r, (c1, "rate"), (f1, "rate"));
        let mut ok = q.zip(c).map(|(q, c)| q >= 0.5 && c >= 5000.0);
        let mut target = "ratio >= 0.5; >= 5,000/s".to_string();
        // The spec's targets against the peers: 1.5x awa, 3x the others.
        for (p, pq) in peer_ratios(r, c1, "rate") {
            let need = if p == "awa" { 1.5 } else { 3.0 };
            target.push_str(&format!("; >= {need}x {p}"));
            ok = ok.zip(pq).map(|(ok, pq)| ok && pq >= need);
        }
        push_k(
            "D1 burn-down, jobs/s".into(),
            Some((c1, "rate")),
            c,
            f,
            "/s",
            q,
            &target,
            ok,
        );
        // Rows that only matter beside a peer (the table without peers is
        // unchanged).
        let extra: &[(&str, &str)] = if peers.is_empty() {
            &[]
        } else {
            &[("drained", "D1 jobs drained (a peer: in 90 s at most)")]
        };
        for &(field, label) in extra.iter().chain(&[
            ("round_trips", "D1 round trips per job (wire)"),
            ("statements", "D1 statements per job (wire)"),
            ("commits", "D1 commits per job (xact_commit delta)"),
            ("wire_commits", "D1 transactions per job (wire)"),
            ("rows_per_claim", "D1 rows per claim statement"),
            ("rows_per_done", "D1 rows per completion statement"),
        ]) {
            let (c, f) = (med(r, c1, field), med(r, f1, field));
            push_k(
                label.into(),
                Some((c1, field)),
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
            // Lower than every peer: corral/peer below 1 for each.
            let pr = peer_ratios(r, c1, field);
            let (target, ok) = if pr.is_empty() {
                ("< every peer (no peer measured)", None)
            } else {
                let ok = pr
                    .iter()
                    .try_fold(true, |acc, (_, q)| Some(acc && (*q)? < 1.0));
                ("< every peer", ok)
            };
            push_k(
                label.into(),
                Some((c1, field)),
                c,
                f,
                "s",
                ratio(r, (c1, field), (f1, field)),
                target,
                ok,
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
            push_k(
                label.into(),
                Some((&ck, "rate")),
                c,
                f,
                "/s",
                q,
                "ratio >= 0.8",
                q.map(|q| q >= 0.8),
            );
        } else {
            push_k(
                label.into(),
                Some((&ck, "rate")),
                c,
                f,
                "/s",
                q,
                ">= 50,000/s",
                c.map(|c| c >= 50_000.0),
            );
        }
        // Where a batch's time goes, independent of the machine's load.
        if v == "batch" {
            for (field, what) in [
                ("cpu_client_10k", "client process CPU"),
                ("cpu_server_10k", "server backends CPU"),
            ] {
                let (c, f) = (med(r, &ck, field), med(r, &fk, field));
                if c.is_none() {
                    continue;
                }
                push_k(
                    format!("D2 batches: {what} per 10k jobs"),
                    None,
                    c,
                    f,
                    "s",
                    ratio(r, (&ck, field), (&fk, field)),
                    "-",
                    None,
                );
            }
        }
    }
    let (c3, f3) = ("D3/corral/-", "D3/floor/-");
    if r.contains_key(c3) {
        let extra: &[(&str, &str)] = if peers.is_empty() {
            &[]
        } else {
            &[
                ("measured", "D3 jobs measured (a peer: for 100 s at most)"),
                (
                    "stalled",
                    "D3 jobs not finished within 65 s (lost wake-up; ends a peer's run)",
                ),
            ]
        };
        for &(field, label) in extra {
            push_k(
                label.into(),
                Some((c3, field)),
                med(r, c3, field),
                med(r, f3, field),
                "",
                None,
                "(info)",
                None,
            );
        }
        for (what, name) in [
            ("start", "enqueue -> start"),
            ("done", "enqueue -> resolved"),
        ] {
            for (p, limit) in [("p50", 5.0), ("p99", 20.0), ("max", 100.0)] {
                let field = format!("{what}_{p}");
                let (c, f) = (med(r, c3, &field), med(r, f3, &field));
                push_k(
                    format!("D3 {name} {p} (idle, other process)"),
                    Some((c3, &field)),
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
        push_k(
            "D6 idle: statements per second".into(),
            Some((c6, "statements_per_s")),
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
            push_k(
                label.into(),
                Some((c6, field)),
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
            push_k(
                format!("D4 scheduled start lateness {p}"),
                None,
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
        push_k(
            "D5 burn-down beside an open transaction, jobs/s".into(),
            None,
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
            push_k(
                label.into(),
                None,
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
        push_k(
            "D5 jobs/s against clean D1 (x)".into(),
            None,
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
        push_k(
            "D8 crash: jobs lost".into(),
            None,
            lost,
            None,
            "",
            None,
            "0",
            lost.map(|l| l == 0.0),
        );
        push_k(
            "D8 crash: jobs run twice".into(),
            None,
            med(r, c8, "dups"),
            None,
            "",
            None,
            "(info)",
            None,
        );
        push_k(
            "D8 crash: attempts running at the kill".into(),
            None,
            med(r, c8, "running_at_kill"),
            None,
            "",
            None,
            "(info)",
            None,
        );
        let out_dups = med(r, c8, "dups_outside");
        push_k(
            "D8 crash: run twice but not running at the kill".into(),
            None,
            out_dups,
            None,
            "",
            None,
            "0",
            out_dups.map(|d| d == 0.0),
        );
        push_k(
            "D8 crash: time until the rescue".into(),
            None,
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

/// The table as markdown: corral, the floor, the peers measured, corral's
/// ratios to each, the target and whether it is met.
pub fn render(rows: &[Row]) -> String {
    let names: &[&str] = rows.first().map_or(&[], |r| &r.peer_names);
    let n = names.len();
    let mut s = String::from("| workload | corral | floor |");
    for p in names.iter().take(n) {
        s.push_str(&format!(" {p} |"));
    }
    s.push_str(" corral/floor |");
    for p in names.iter().take(n) {
        s.push_str(&format!(" corral/{p} |"));
    }
    s.push_str(" target | met? |\n|---|---:|---:|");
    for _ in 0..2 * n {
        s.push_str("---:|");
    }
    s.push_str("---:|---|---|\n");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        s.push_str(&format!("| {} | {} | {} |", r.name, r.corral, r.floor));
        for v in &r.peers {
            s.push_str(&format!(" {v} |"));
        }
        s.push_str(&format!(" {} |", r.ratio));
        for v in &r.peer_ratios {
            s.push_str(&format!(" {v} |"));
        }
        s.push_str(&format!(" {} | {met} |\n", r.target));
    }
    s
}

/// (met, judged).
pub fn score(rows: &[Row]) -> (usize, usize) {
    let judged = rows.iter().filter(|r| r.met.is_some()).count();
    let met = rows.iter().filter(|r| r.met == Some(true)).count();
    (met, judged)
}
