//! A task that needs another task's result, without deadlocking the pool.
//!
//! The trap: a body that awaits another task's result holds its worker while
//! it waits. On a one-worker cluster, if the waiting task is claimed first,
//! the task it waits for can never run. (The reference Go library warns
//! about exactly this.)
//!
//! The way out: wait outside the pool. Subscribe to the first task and
//! submit the second when its result is in, so no worker ever waits.
//!
//! Run it with `cargo run --example dependent`.

use std::time::Duration;

use corral::{Cluster, TaskError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One worker: the harshest case for dependent tasks.
    let cluster = Cluster::new(1)?;

    // The dependency: fetch a price.
    let fetch = cluster
        .task(|_ctx| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            println!("fetch-price: done");
            Ok::<u64, String>(1999)
        })
        .id("fetch-price")
        // Cached, so the continuation gets the price even if it subscribes
        // after the fetch has finished.
        .cacheable(true)
        .submit()?;

    // The dependent task is submitted only once the price is known, from a
    // plain tokio task that waits instead of a worker.
    let c = cluster.clone();
    let render = tokio::spawn(async move {
        let price = c.subscribe::<u64, String>("fetch-price")?.await;
        let price = match price {
            Ok(p) => p,
            Err(e) => {
                return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Err(format!(
                    "no price: {e}"
                )))
            }
        };
        let page = c
            .task(move |_ctx| async move {
                println!("render-page: rendering with price {price}");
                Ok::<String, String>(format!("<p>${}.{:02}</p>", price / 100, price % 100))
            })
            .id("render-page")
            .submit()?;
        Ok(page.await.map_err(|e: TaskError<String>| e.to_string()))
    });

    // Meanwhile the single worker is free for other work too.
    let other = cluster
        .task(|_ctx| async { Ok::<_, String>("other work done") })
        .submit()?;

    println!("fetch handle -> {:?}", fetch.await);
    println!("render -> {:?}", render.await?.map_err(|e| e.to_string())?);
    println!("other -> {:?}", other.await);
    cluster.stop(Duration::from_secs(1)).await?;
    Ok(())
}
