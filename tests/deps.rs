//! Dependencies between tasks: `TaskBuilder::after`, `After`,
//! `OnParentFailure`, `TaskContext::parent` and `Graph`.

mod common;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use corral::{
    After, CancelOutcome, Cluster, DependencyCause, DependencyError, Graph, OnParentFailure,
    SubmitError, TaskError, TaskId,
};

use common::{resolve, yield_until, HOUR, SEC};

type Log = Arc<Mutex<Vec<String>>>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn dep(task: &str, cause: DependencyCause) -> TaskError<String> {
    DependencyError::new(TaskId::from(task), cause).into()
}

#[tokio::test(start_paused = true)]
async fn a_dependent_reads_its_parent_and_holds_no_worker_while_it_waits() {
    let cluster = Cluster::new(1).unwrap();
    let parent = cluster
        .task(|_| async {
            tokio::time::sleep(SEC).await;
            Ok::<u32, String>(20)
        })
        .id("p")
        .delay(SEC)
        .submit()
        .unwrap();
    let child = cluster
        .task(|ctx| async move { ctx.parent::<u32, String>("p").await.map(|v| v + 1) })
        .after(&parent)
        .submit()
        .unwrap();
    // Waiting: in no queue and on no worker, so an independent task runs
    // on the only worker meanwhile.
    let stats = cluster.stats();
    assert_eq!((stats.waiting, stats.queued, stats.running), (1, 1, 0));
    let other = cluster
        .task(|_| async { Ok::<_, String>("free") })
        .submit()
        .unwrap();
    assert_eq!(resolve(SEC / 2, "other", other).await, Ok("free"));
    assert_eq!(resolve(HOUR, "child", child).await, Ok(21));
    assert_eq!(parent.await, Ok(20));
    assert_eq!(cluster.stats().held, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_parent_propagates_by_default_transitively_and_once_each() {
    let cluster = Cluster::new(2).unwrap();
    let ran = Arc::new(AtomicU32::new(0));
    let completions = log();
    let a = cluster
        .task(|_| async {
            tokio::time::sleep(SEC).await;
            Err::<u32, _>("boom".to_string())
        })
        .id("a")
        .submit()
        .unwrap();
    let (r1, c1) = (ran.clone(), completions.clone());
    let b = cluster
        .task(move |_| {
            r1.fetch_add(1, SeqCst);
            async { Ok::<u32, String>(1) }
        })
        .id("b")
        .after(&a)
        .on_complete(move |id, o| c1.lock().unwrap().push(format!("{id}: {o:?}")))
        .submit()
        .unwrap();
    let (r2, c2) = (ran.clone(), completions.clone());
    let c = cluster
        .task(move |_| {
            r2.fetch_add(1, SeqCst);
            async { Ok::<u32, String>(2) }
        })
        .id("c")
        .after(&b)
        .on_complete(move |id, o| c2.lock().unwrap().push(format!("{id}: {o:?}")))
        .submit()
        .unwrap();
    assert_eq!(a.await, Err(TaskError::Failed("boom".into())));
    assert_eq!(b.await, Err(dep("a", DependencyCause::Failed)));
    assert_eq!(c.await, Err(dep("b", DependencyCause::Dependency)));
    assert_eq!(ran.load(SeqCst), 0, "no dependent ran");
    let completions = completions.lock().unwrap().clone();
    assert_eq!(
        completions.len(),
        2,
        "each dependent completed once: {completions:?}"
    );
    assert_eq!(cluster.stats().held, 0);
}

#[tokio::test(start_paused = true)]
async fn run_policy_runs_the_dependent_with_the_parents_error() {
    let cluster = Cluster::new(1).unwrap();
    let a = cluster
        .task(|_| async { Err::<u32, _>("bad".to_string()) })
        .id("a")
        .submit()
        .unwrap();
    let b = cluster
        .task(|ctx| async move {
            let seen = ctx.parent::<u32, String>("a").await;
            Ok::<_, String>(format!("{seen:?}"))
        })
        .after(After::id::<u32, String>("a").on_failure(OnParentFailure::Run))
        .submit()
        .unwrap();
    assert_eq!(
        b.await,
        Ok(format!(
            "{:?}",
            Err::<u32, _>(TaskError::Failed("bad".to_string()))
        ))
    );
    let _ = a.await;
}

#[tokio::test(start_paused = true)]
async fn skip_policy_gives_a_distinct_outcome_and_propagates_to_its_children() {
    let cluster = Cluster::new(1).unwrap();
    let a = cluster
        .task(|_| async {
            tokio::time::sleep(HOUR).await;
            Ok::<u32, String>(1)
        })
        .id("a")
        .submit()
        .unwrap();
    let b = cluster
        .task(|_| async { Ok::<u32, String>(2) })
        .id("b")
        .after(After::any("a").on_failure(OnParentFailure::Skip))
        .submit()
        .unwrap();
    let c = cluster
        .task(|_| async { Ok::<u32, String>(3) })
        .after(After::any("b"))
        .submit()
        .unwrap();
    tokio::task::yield_now().await;
    assert_eq!(cluster.cancel_task("a"), CancelOutcome::Requested);
    assert_eq!(a.await, Err(TaskError::Cancelled));
    assert_eq!(
        b.await,
        Err(DependencyError::new("a", DependencyCause::Cancelled).skipped())
    );
    assert_eq!(c.await, Err(dep("b", DependencyCause::Skipped)));
}

#[tokio::test(start_paused = true)]
async fn a_chain_runs_in_order_on_one_worker() {
    let cluster = Cluster::new(1).unwrap();
    let order = log();
    let mut handles = Vec::new();
    // Submitted last to first would be refused (unknown parent), so first
    // to last; the first one is delayed so that the whole chain waits.
    for i in 0..50u32 {
        let o = order.clone();
        let mut b = cluster
            .task(move |ctx| {
                let o = o.clone();
                async move {
                    let before = if i == 0 {
                        0
                    } else {
                        ctx.parent::<u32, String>(format!("n{}", i - 1))
                            .await
                            .map_err(|e| e.to_string())?
                    };
                    o.lock().unwrap().push(i.to_string());
                    Ok::<u32, String>(before + i)
                }
            })
            .id(format!("n{i}"));
        if i == 0 {
            b = b.delay(SEC);
        } else {
            b = b.after(After::id::<u32, String>(format!("n{}", i - 1)));
        }
        handles.push(b.submit().unwrap());
    }
    assert_eq!(cluster.stats().waiting, 49);
    let mut total = 0;
    for (i, h) in handles.into_iter().enumerate() {
        total += i as u32;
        assert_eq!(resolve(HOUR, "link", h).await, Ok(total));
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_diamond_joins_both_branches() {
    let cluster = Cluster::new(2).unwrap();
    let top = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("top")
        .submit()
        .unwrap();
    let left = cluster
        .task(|ctx| async move {
            let v = ctx
                .parent::<u32, String>("top")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u32, String>(v + 10)
        })
        .id("left")
        .after(&top)
        .submit()
        .unwrap();
    let right = cluster
        .task(|ctx| async move {
            tokio::time::sleep(SEC).await;
            let v = ctx
                .parent::<u32, String>("top")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u32, String>(v + 100)
        })
        .id("right")
        .after(&top)
        .submit()
        .unwrap();
    let bottom = cluster
        .task(|ctx| async move {
            let l = ctx.parent::<u32, String>("left").await?;
            let r = ctx.parent::<u32, String>("right").await?;
            Ok::<u32, TaskError<String>>(l + r)
        })
        .after(&left)
        .after(&right)
        .submit()
        .unwrap();
    assert_eq!(resolve(HOUR, "bottom", bottom).await, Ok(112));
    assert_eq!(
        (top.await, left.await, right.await),
        (Ok(1), Ok(11), Ok(101))
    );
}

#[tokio::test(start_paused = true)]
async fn a_diamond_with_a_failed_branch_resolves_the_join_once() {
    let cluster = Cluster::new(2).unwrap();
    let top = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("top")
        .submit()
        .unwrap();
    let left = cluster
        .task(|_| async { Err::<u32, String>("left failed".into()) })
        .id("left")
        .after(&top)
        .submit()
        .unwrap();
    let right = cluster
        .task(|_| async { Err::<u32, String>("right failed".into()) })
        .id("right")
        .after(&top)
        .submit()
        .unwrap();
    let completions = Arc::new(AtomicU32::new(0));
    let c = completions.clone();
    let bottom = cluster
        .task(|_| async { Ok::<u32, String>(0) })
        .after(&left)
        .after(&right)
        .on_complete(move |_, _| {
            c.fetch_add(1, SeqCst);
        })
        .submit()
        .unwrap();
    let out = resolve(HOUR, "bottom", bottom).await.unwrap_err();
    assert!(
        out == dep("left", DependencyCause::Failed) || out == dep("right", DependencyCause::Failed),
        "{out:?}"
    );
    let _ = (top.await, left.await, right.await);
    assert_eq!(completions.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dependent_cancelled_while_it_waits_resolves_once_and_its_children_follow() {
    let cluster = Cluster::new(1).unwrap();
    let a = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("a")
        .delay(HOUR)
        .submit()
        .unwrap();
    let b = cluster
        .task(|_| async { Ok::<u32, String>(2) })
        .id("b")
        .after(&a)
        .submit()
        .unwrap();
    let c = cluster
        .task(|_| async { Ok::<u32, String>(3) })
        .after(&b)
        .submit()
        .unwrap();
    assert_eq!(cluster.stats().waiting, 2);
    assert_eq!(cluster.cancel_task("b"), CancelOutcome::Cancelled);
    assert_eq!(b.await, Err(TaskError::Cancelled));
    assert_eq!(c.await, Err(dep("b", DependencyCause::Cancelled)));
    assert_eq!(cluster.cancel_task("b"), CancelOutcome::NotFound);
    // The parent still runs, and tells nobody twice.
    assert_eq!(resolve(2 * HOUR, "a", a).await, Ok(1));
    assert_eq!(cluster.stats().held, 0);
}

#[tokio::test(start_paused = true)]
async fn stop_shuts_down_waiting_dependents_at_once() {
    let cluster = Cluster::new(1).unwrap();
    let a = cluster
        .task(|_| async {
            tokio::time::sleep(SEC).await;
            Ok::<u32, String>(1)
        })
        .id("a")
        .submit()
        .unwrap();
    let b = cluster
        .task(|_| async { Ok::<u32, String>(2) })
        .after(After::any("a").on_failure(OnParentFailure::Run))
        .submit()
        .unwrap();
    tokio::task::yield_now().await; // `a` starts
    cluster.stop(HOUR).await.unwrap();
    assert_eq!(a.await, Ok(1), "a running parent is left to finish");
    assert_eq!(b.await, Err(TaskError::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn drain_runs_dependents_whose_parents_finish_during_it() {
    let cluster = Cluster::new(1).unwrap();
    let a = cluster
        .task(|_| async {
            tokio::time::sleep(SEC).await;
            Ok::<u32, String>(1)
        })
        .id("a")
        .submit()
        .unwrap();
    let b = cluster
        .task(|ctx| async move { ctx.parent::<u32, String>("a").await.map(|v| v * 7) })
        .after(&a)
        .submit()
        .unwrap();
    let later = cluster
        .task(|_| async { Ok::<u32, String>(0) })
        .id("later")
        .delay(HOUR)
        .submit()
        .unwrap();
    let after_later = cluster
        .task(|_| async { Ok::<u32, String>(0) })
        .after(&later)
        .submit()
        .unwrap();
    cluster.drain(2 * HOUR).await.unwrap();
    assert_eq!(a.await, Ok(1));
    assert_eq!(b.await, Ok(7));
    assert_eq!(later.await, Err(TaskError::Shutdown));
    assert_eq!(
        after_later.await,
        Err(dep("later", DependencyCause::Shutdown))
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_shuts_down_waiting_dependents() {
    let cluster = Cluster::new(1).unwrap();
    let a = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("a")
        .delay(HOUR)
        .submit()
        .unwrap();
    let b = cluster
        .task(|_| async { Ok::<u32, String>(2) })
        .after(After::any("a").on_failure(OnParentFailure::Run))
        .submit()
        .unwrap();
    cluster.cancel();
    assert_eq!(a.await, Err(TaskError::Shutdown));
    assert_eq!(b.await, Err(TaskError::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn unknown_and_mistyped_parents_are_submit_errors() {
    let cluster = Cluster::new(1).unwrap();
    let err = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .after(After::any("nobody"))
        .submit()
        .unwrap_err();
    assert_eq!(err, SubmitError::UnknownParent("nobody".into()));
    let a = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("a")
        .delay(HOUR)
        .submit()
        .unwrap();
    let err = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("x")
        .after(After::id::<String, String>("a"))
        .submit()
        .unwrap_err();
    assert!(
        matches!(&err, SubmitError::ParentTypeMismatch { id, .. } if *id == "a"),
        "{err}"
    );
    assert!(err.to_string().contains("Result<u32, String>"), "{err}");
    // Nothing was admitted: the id is free.
    assert_eq!(cluster.stats().held, 1);
    cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("x")
        .submit()
        .unwrap()
        .await
        .unwrap();
    drop(a);
}

#[tokio::test(start_paused = true)]
async fn a_cached_parent_counts_as_it_stands() {
    let cluster = Cluster::new(1).unwrap();
    let ok = cluster
        .task(|_| async { Ok::<u32, String>(5) })
        .id("ok")
        .cacheable(true)
        .submit()
        .unwrap();
    let bad = cluster
        .task(|_| async { Err::<u32, String>("no".into()) })
        .id("bad")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(ok.await, Ok(5));
    assert!(bad.await.is_err());
    let reads = cluster
        .task(|ctx| async move { ctx.parent::<u32, String>("ok").await.map(|v| v * 2) })
        .after(After::id::<u32, String>("ok"))
        .submit()
        .unwrap();
    assert_eq!(reads.await, Ok(10));
    let fails = cluster
        .task(|_| async { Ok::<u32, String>(0) })
        .after(After::any("bad"))
        .submit()
        .unwrap();
    assert_eq!(fails.await, Err(dep("bad", DependencyCause::Failed)));
    // A finished, uncached task is unknown.
    let gone = cluster
        .task(|_| async { Ok::<u32, String>(0) })
        .id("gone")
        .submit()
        .unwrap();
    gone.await.unwrap();
    assert_eq!(
        cluster
            .task(|_| async { Ok::<u32, String>(0) })
            .after(After::any("gone"))
            .submit()
            .unwrap_err(),
        SubmitError::UnknownParent("gone".into())
    );
}

#[tokio::test(start_paused = true)]
async fn parent_misuse_is_an_error_not_a_panic() {
    let cluster = Cluster::new(1).unwrap();
    let a = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("a")
        .delay(SEC)
        .submit()
        .unwrap();
    let b = cluster
        .task(|ctx| async move {
            let untyped = ctx.parent::<u32, String>("a").await;
            let unknown = ctx.parent::<u32, String>("zzz").await;
            Ok::<_, String>((untyped, unknown))
        })
        .after(After::any("a"))
        .submit()
        .unwrap();
    let (untyped, unknown) = b.await.unwrap();
    assert_eq!(untyped, Err(dep("a", DependencyCause::Untyped)));
    assert_eq!(unknown, Err(dep("zzz", DependencyCause::Unknown)));
    let _ = a.await;
}

#[tokio::test(start_paused = true)]
async fn a_graph_is_admitted_all_or_nothing() {
    let cluster = Cluster::new(1).unwrap();
    // One bad node (a duplicate id) refuses the whole graph.
    let _busy = cluster
        .task(|_| async { Ok::<u32, String>(0) })
        .id("busy")
        .delay(HOUR)
        .submit()
        .unwrap();
    let mut g = Graph::new(&cluster);
    let a = g
        .add(cluster.task(|_| async { Ok::<u32, String>(1) }).id("ga"))
        .unwrap();
    g.add(
        cluster
            .task(|_| async { Ok::<u32, String>(2) })
            .id("busy")
            .after(&a),
    )
    .unwrap();
    assert_eq!(
        g.submit().unwrap_err(),
        SubmitError::DuplicateId("busy".into())
    );
    assert_eq!(cluster.stats().held, 1, "nothing of the graph was admitted");

    // A fan-out and fan-in built at once, on generated ids.
    let mut g = Graph::new(&cluster);
    let root = g
        .add(cluster.task(|_| async { Ok::<u32, String>(1) }))
        .unwrap();
    let mut leaves = Vec::new();
    for i in 0..10u32 {
        leaves.push(
            g.add(
                cluster
                    .task(move |_| async move { Ok::<u32, String>(i) })
                    .after(&root),
            )
            .unwrap(),
        );
    }
    let mut join = cluster.task(|_| async { Ok::<u32, String>(100) });
    for l in &leaves {
        join = join.after(l);
    }
    let join = g.add(join).unwrap();
    let mut handles = g.submit().unwrap();
    assert_eq!(handles.take(&join).unwrap().await, Ok(100));
    assert!(handles.take(&join).is_none(), "taken once");
    for (i, l) in leaves.iter().enumerate() {
        assert_eq!(handles.take(l).unwrap().await, Ok(i as u32));
    }
}

#[tokio::test(start_paused = true)]
async fn a_graph_node_cannot_be_a_parent_outside_its_graph() {
    let cluster = Cluster::new(1).unwrap();
    let mut g1 = Graph::new(&cluster);
    let n = g1
        .add(cluster.task(|_| async { Ok::<u32, String>(1) }))
        .unwrap();
    let mut g2 = Graph::new(&cluster);
    assert!(matches!(
        g2.add(cluster.task(|_| async { Ok::<u32, String>(1) }).after(&n)),
        Err(SubmitError::InvalidOption {
            option: "after",
            ..
        })
    ));
    assert!(matches!(
        cluster
            .task(|_| async { Ok::<u32, String>(1) })
            .after(&n)
            .submit(),
        Err(SubmitError::InvalidOption {
            option: "after",
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn many_dependents_of_one_parent_each_resolve_once() {
    let cluster = Cluster::new(2).unwrap();
    let parent = cluster
        .task(|_| async {
            tokio::time::sleep(SEC).await;
            Err::<u32, String>("x".into())
        })
        .id("p")
        .submit()
        .unwrap();
    let count = Arc::new(AtomicU32::new(0));
    let mut hs = Vec::new();
    for i in 0..300 {
        let c = count.clone();
        let policy = match i % 3 {
            0 => OnParentFailure::Propagate,
            1 => OnParentFailure::Run,
            _ => OnParentFailure::Skip,
        };
        hs.push((
            policy,
            cluster
                .task(|_| async { Ok::<u32, String>(7) })
                .after(After::any("p").on_failure(policy))
                .on_complete(move |_, _| {
                    c.fetch_add(1, SeqCst);
                })
                .submit()
                .unwrap(),
        ));
    }
    let _ = parent.await;
    for (policy, h) in hs {
        let out = resolve(HOUR, "dependent", h).await;
        match policy {
            OnParentFailure::Propagate => assert_eq!(out, Err(dep("p", DependencyCause::Failed))),
            OnParentFailure::Run => assert_eq!(out, Ok(7)),
            _ => assert!(out.unwrap_err().is_skipped()),
        }
    }
    yield_until("every completion counted", || count.load(SeqCst) == 300).await;
    assert_eq!(cluster.stats().held, 0);
}

mod model {
    //! Random graphs of dependencies against the rules: every task resolves
    //! exactly once, and its outcome follows from its parents' outcomes and
    //! its edges' policies (whichever failing parent the engine heard of
    //! first, when there are several).

    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::Arc;

    use corral::{After, Cluster, DependencyCause, Graph, OnParentFailure, TaskError};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Node {
        fails: bool,
        /// (earlier node, policy 0..3)
        parents: Vec<(usize, u8)>,
        delay_ms: u64,
        cancel: bool,
    }

    fn policy(p: u8) -> OnParentFailure {
        match p {
            0 => OnParentFailure::Propagate,
            1 => OnParentFailure::Run,
            _ => OnParentFailure::Skip,
        }
    }

    fn graph() -> impl Strategy<Value = (Vec<Node>, bool, usize)> {
        let node = (
            any::<bool>().prop_map(|b| b),
            prop::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..4),
            0u64..3,
            prop::bool::weighted(0.1),
        );
        (prop::collection::vec(node, 1..30), any::<bool>(), 1usize..3).prop_map(
            |(raw, as_graph, workers)| {
                let nodes = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (fails, ps, delay_ms, cancel))| Node {
                        fails,
                        parents: if i == 0 {
                            Vec::new()
                        } else {
                            let mut v: Vec<(usize, u8)> =
                                ps.into_iter().map(|(ix, p)| (ix.index(i), p)).collect();
                            v.sort();
                            v.dedup_by_key(|(j, _)| *j);
                            v
                        },
                        delay_ms,
                        cancel,
                    })
                    .collect();
                (nodes, as_graph, workers)
            },
        )
    }

    fn cause_of(e: &TaskError<String>) -> DependencyCause {
        match e {
            TaskError::Failed(_) => DependencyCause::Failed,
            TaskError::Cancelled => DependencyCause::Cancelled,
            TaskError::Dependency(_) => DependencyCause::Dependency,
            TaskError::Skipped(_) => DependencyCause::Skipped,
            TaskError::Shutdown => DependencyCause::Shutdown,
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 96,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0xde95),
            ..ProptestConfig::default()
        })]

        #[test]
        fn outcomes_follow_from_parents_and_policies((nodes, as_graph, workers) in graph()) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async move {
                let cluster = Cluster::new(workers).unwrap();
                let counts: Vec<Arc<AtomicU32>> = nodes.iter().map(|_| Arc::new(AtomicU32::new(0))).collect();
                let build = |i: usize, n: &Node| {
                    let fails = n.fails;
                    let delay = std::time::Duration::from_millis(n.delay_ms);
                    let count = counts[i].clone();
                    let mut b = cluster
                        .task(move |_| async move {
                            tokio::time::sleep(delay).await;
                            if fails { Err(format!("n{i}")) } else { Ok::<usize, String>(i) }
                        })
                        .id(format!("n{i}"))
                        .on_complete(move |_, _| {
                            count.fetch_add(1, SeqCst);
                        });
                    for &(j, p) in &n.parents {
                        let a = if p == 1 {
                            After::id::<usize, String>(format!("n{j}"))
                        } else {
                            After::any(format!("n{j}"))
                        };
                        b = b.after(a.on_failure(policy(p)));
                    }
                    b
                };
                let mut handles = Vec::new();
                if as_graph {
                    let mut g = Graph::new(&cluster);
                    let mut ns = Vec::new();
                    for (i, n) in nodes.iter().enumerate() {
                        ns.push(g.add(build(i, n)).unwrap());
                    }
                    let mut hs = g.submit().unwrap();
                    for n in &ns {
                        handles.push(hs.take(n).unwrap());
                    }
                } else {
                    for (i, n) in nodes.iter().enumerate() {
                        handles.push(build(i, n).submit().unwrap());
                    }
                }
                for (i, n) in nodes.iter().enumerate() {
                    if n.cancel {
                        cluster.cancel_task(format!("n{i}"));
                    }
                }
                let mut outs: Vec<Result<usize, TaskError<String>>> = Vec::new();
                for h in handles {
                    outs.push(tokio::time::timeout(std::time::Duration::from_secs(3600), h).await.expect("resolves"));
                }
                tokio::task::yield_now().await;
                for (i, n) in nodes.iter().enumerate() {
                    assert_eq!(counts[i].load(SeqCst), 1, "n{i} completed once");
                    let out = &outs[i];
                    if n.cancel && matches!(out, Err(TaskError::Cancelled)) {
                        continue;
                    }
                    let blocking: Vec<(usize, u8)> = n
                        .parents
                        .iter()
                        .copied()
                        .filter(|&(j, p)| p != 1 && outs[j].is_err())
                        .collect();
                    match out {
                        Err(TaskError::Dependency(d)) | Err(TaskError::Skipped(d)) => {
                            let j: usize = d.task.as_str().unwrap()[1..].parse().unwrap();
                            let edge = blocking.iter().find(|&&(k, _)| k == j);
                            assert!(edge.is_some(), "n{i}: {out:?} names a parent that does not block it");
                            let (_, p) = *edge.unwrap();
                            assert_eq!(matches!(out, Err(TaskError::Skipped(_))), p == 2, "n{i}: policy");
                            assert_eq!(d.cause, cause_of(outs[j].as_ref().unwrap_err()), "n{i}: cause");
                        }
                        other => {
                            assert!(blocking.is_empty(), "n{i} ran although {blocking:?} failed: {other:?}");
                            if n.fails {
                                assert_eq!(other, &Err(TaskError::Failed(format!("n{i}"))));
                            } else {
                                assert_eq!(other, &Ok(i));
                            }
                        }
                    }
                }
                let stats = cluster.stats();
                assert_eq!((stats.held, stats.waiting), (0, 0));
            });
        }
    }
}
