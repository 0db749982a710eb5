//! When the workers start: at `build` inside a runtime, at `run` for a
//! paused cluster or one built outside a runtime; and a forgotten `run` is
//! reported, not a silent hang.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{Cluster, RunError};

use common::{resolve, yield_until, SEC};

#[tokio::test(start_paused = true)]
async fn a_cluster_built_in_a_runtime_runs_without_run() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(7) })
        .submit()
        .unwrap();
    assert_eq!(resolve(SEC, "no run() called", h).await, Ok(7));
    // `run` on a running cluster is a no-op.
    assert_eq!(cluster.run(), Ok(()));
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_paused_cluster_waits_for_run_then_keeps_exact_order() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let order = common::log();
    let handles: Vec<_> = [1, 3, 2]
        .into_iter()
        .map(|p| {
            let order = order.clone();
            cluster
                .task(move |_| {
                    order.lock().unwrap().push(p);
                    async { Ok::<_, String>(()) }
                })
                .priority(p)
                .submit()
                .unwrap()
        })
        .collect();
    tokio::time::sleep(SEC).await;
    assert_eq!(cluster.stats().queued, 3, "nothing starts before run");
    assert!(common::snapshot(&order).is_empty());
    cluster.run().unwrap();
    for h in handles {
        resolve(SEC, "after run", h).await.unwrap();
    }
    assert_eq!(common::snapshot(&order), vec![3, 2, 1]);
    cluster.stop(SEC).await.unwrap();
}

#[test]
fn a_cluster_built_outside_a_runtime_starts_at_run() {
    let cluster = Cluster::new(1).unwrap();
    // Submitting needs no runtime; running does.
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .submit()
        .unwrap();
    assert_eq!(cluster.run(), Err(RunError::NoRuntime));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(cluster.stats().queued, 1, "not started before run");
        cluster.run().unwrap();
        assert_eq!(resolve(SEC, "after run", h).await, Ok(1));
        yield_until("idle", || cluster.stats().held == 0).await;
        cluster.stop(SEC).await.unwrap();
    });
}

/// Collects the messages of `tracing` events of every thread.
struct Capture(Arc<Mutex<Vec<String>>>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut msg = String::new();
            event.record(&mut Message(&mut msg));
            self.0.lock().unwrap().push(msg);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The only test of this binary that installs a global subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_run_is_reported_within_a_second() {
    let warnings = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(Capture(warnings.clone())).unwrap();

    let forgotten = Cluster::builder().workers(1).paused().build().unwrap();
    let _h = forgotten
        .task(|_| async { Ok::<_, String>(()) })
        .submit()
        .unwrap();
    // Started in time: no warning for this one.
    let started = Cluster::builder().workers(1).paused().build().unwrap();
    let h = started
        .task(|_| async { Ok::<_, String>(()) })
        .submit()
        .unwrap();
    started.run().unwrap();
    h.await.unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("1 task(s) wait in a cluster whose workers never started")
            && warnings[0].contains("Cluster::run()"),
        "{warnings:?}"
    );
}
