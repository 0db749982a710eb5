use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{Cluster, RetryMode, TaskError};

#[tokio::test(start_paused = true)]
async fn basic_flow() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    for (i, p) in [(0, 1), (1, 5), (2, 3), (3, 5)] {
        let order = order.clone();
        hs.push(
            cluster
                .task(move |_| {
                    let order = order.clone();
                    async move {
                        order.lock().unwrap().push(i);
                        Ok::<_, String>(i)
                    }
                })
                .priority(p)
                .submit()
                .unwrap(),
        );
    }
    cluster.run().unwrap();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.await, Ok(i));
    }
    assert_eq!(*order.lock().unwrap(), vec![1, 3, 2, 0]);

    let h = cluster
        .task(|ctx| async move {
            if ctx.attempt() < 3 {
                Err("no")
            } else {
                Ok(ctx.attempt())
            }
        })
        .retry(3)
        .retry_mode(RetryMode::Immediate)
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(3));

    let h = cluster
        .task(|_| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, String>(())
        })
        .timeout(Duration::from_secs(1))
        .submit()
        .unwrap();
    assert_eq!(
        h.await,
        Err(TaskError::TimedOut {
            limit: Duration::from_secs(1)
        })
    );

    let h = cluster.task(|_| async { panic!("boom") }).submit().unwrap();
    let r: Result<(), TaskError<String>> = h.await;
    assert_eq!(
        r,
        Err(TaskError::Panicked {
            message: "boom".into()
        })
    );

    let h = cluster
        .task(|_| async { Ok::<_, String>(5) })
        .id("x")
        .delay(Duration::from_secs(100))
        .submit()
        .unwrap();
    assert!(cluster.cancel_task("x").took_effect());
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert_eq!(cluster.stats().held, 0);

    let h = cluster
        .blocking_task(|ctx| Ok::<_, String>(ctx.attempt() * 2))
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(2));

    let h = cluster
        .task(|_| async { Ok::<_, String>(9) })
        .id("c")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(9));
    let s = cluster.subscribe::<i32, String>("c").unwrap();
    assert_eq!(s.await, Ok(9));
    tokio::time::sleep(Duration::from_secs(301)).await;
    assert!(cluster.subscribe::<i32, String>("c").is_err());
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}
