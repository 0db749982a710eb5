//! Many user ids at once: the registry's name table through cancels by
//! name (each finds its entry once and removes it by the bucket found),
//! removals after other lookups, reuse, and the shrink after a mass cancel.

use std::time::Duration;

use corral::{CancelOutcome, Cluster, SubmitError, TaskError, TaskHandle};

const N: usize = 3000;

fn name(i: usize) -> String {
    format!("name-{i}")
}

/// Submits task `i` named `name(i)`, an hour ahead, answering `value`.
fn submit(cluster: &Cluster, i: usize, value: usize) -> TaskHandle<usize, String> {
    cluster
        .task(move |_| async move { Ok::<_, String>(value) })
        .id(name(i))
        .delay(Duration::from_secs(3600))
        .submit()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn many_names_cancelled_reused_and_shrunk_stay_exact() {
    let cluster = Cluster::new(2).unwrap();
    let mut handles: Vec<Option<TaskHandle<usize, String>>> =
        (0..N).map(|i| Some(submit(&cluster, i, i))).collect();
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(h.as_ref().unwrap().id().as_str(), Some(name(i).as_str()));
    }
    // Every third by name (&str), with lookups of other names between
    // (a lookup's remembered bucket is for another task then).
    for i in (0..N).step_by(3) {
        assert!(cluster.subscribe::<usize, String>(name(i + 1)).is_ok());
        assert_eq!(
            cluster.cancel_task(name(i).as_str()),
            CancelOutcome::Cancelled
        );
        assert_eq!(
            cluster.cancel_task(name(i).as_str()),
            CancelOutcome::NotFound
        );
        let h = handles[i].take().unwrap();
        assert_eq!(h.await, Err(TaskError::Cancelled));
    }
    // The cancelled names are free at once; the others are still held.
    for (i, slot) in handles.iter_mut().enumerate() {
        let fresh = cluster
            .task(|_| async { Ok::<_, String>(0) })
            .id(name(i))
            .delay(Duration::from_secs(3600))
            .submit();
        match fresh {
            Ok(h) => {
                assert_eq!(i % 3, 0, "{} was still held", name(i));
                *slot = Some(h);
            }
            Err(e) => {
                assert_ne!(i % 3, 0, "{} was free: {e}", name(i));
                assert!(matches!(e, SubmitError::DuplicateId(id) if id == name(i).as_str()));
            }
        }
    }
    // A mass cancel (the table shrinks on the way down), then every name
    // is free and addresses nothing.
    for i in 0..N {
        assert_eq!(
            cluster.cancel_task(name(i)),
            CancelOutcome::Cancelled,
            "{}",
            name(i)
        );
    }
    for h in handles.into_iter().flatten() {
        assert_eq!(h.await, Err(TaskError::Cancelled));
    }
    assert_eq!(cluster.stats().held, 0);
    for i in 0..N {
        assert_eq!(cluster.cancel_task(name(i)), CancelOutcome::NotFound);
    }
    let h = submit(&cluster, 7, 7);
    assert_eq!(cluster.cancel_task(name(7)), CancelOutcome::Cancelled);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}
