//! Tasks that need other tasks' results, on a one-worker cluster, without
//! deadlocking it:
//!
//! 1. `sitemap` fetches the list of links.
//! 2. `plan` depends on it (`after`): it is in no queue and holds no worker
//!    until the sitemap is done, then reads its links (`ctx.parent`) and
//!    submits, as one graph, a check per link and a `report` that depends
//!    on every check (running even if some fail: `OnParentFailure::Run`).
//!    It then waits for the report inside its body (`ctx.wait`), which
//!    frees the only worker for the checks meanwhile.
//! 3. `main` watches the id "report" before anything has submitted it
//!    (`Cluster::watch`).
//!
//! Run it with `cargo run --example dependent`.

use std::time::Duration;

use corral::{After, Cluster, Graph, OnParentFailure};

type Links = Vec<String>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One worker: the harshest case for tasks that wait for tasks.
    let cluster = Cluster::new(1)?;

    // Nobody has submitted "report" yet; this waits for it, and then for its outcome.
    let report_watch = cluster.watch::<String, String>("report", Duration::from_secs(10));

    let sitemap = cluster
        .task(|_ctx| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            println!("sitemap: 4 links");
            Ok::<Links, String>(
                ["/", "/about", "/broken", "/contact"]
                    .map(String::from)
                    .to_vec(),
            )
        })
        .id("sitemap")
        .submit()?;

    let c = cluster.clone();
    let plan = cluster
        .task(move |ctx| {
            let cluster = c.clone();
            async move {
                let links = ctx
                    .parent::<Links, String>("sitemap")
                    .await
                    .map_err(|e| e.to_string())?;
                // One check per link, then the report, admitted together.
                let mut graph = Graph::new(&cluster);
                let mut report = cluster
                    .task(|ctx| async move {
                        let mut lines = Vec::new();
                        for i in 0.. {
                            let id = format!("check-{i}");
                            match ctx.parent::<u16, String>(id.as_str()).await {
                                Ok(status) => lines.push(format!("{id}: {status}")),
                                Err(e) if e.dependency().is_some() => break, // no such check
                                Err(e) => lines.push(format!("{id}: {e}")),
                            }
                        }
                        Ok::<String, String>(lines.join("\n"))
                    })
                    .id("report");
                for (i, link) in links.into_iter().enumerate() {
                    let check = cluster
                        .task(move |_ctx| {
                            let link = link.clone();
                            async move {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                println!("check {link}");
                                if link.contains("broken") {
                                    Err(format!("{link}: 404"))
                                } else {
                                    Ok::<u16, String>(200)
                                }
                            }
                        })
                        .id(format!("check-{i}"));
                    let node = graph.add(check).map_err(|e| e.to_string())?;
                    report = report.after(After::from(&node).on_failure(OnParentFailure::Run));
                }
                let report = graph.add(report).map_err(|e| e.to_string())?;
                let mut handles = graph.submit().map_err(|e| e.to_string())?;
                let report = handles.take(&report).ok_or("no report handle")?;
                // Waits without holding the only worker: the checks run meanwhile.
                let text = ctx.wait(report).await.map_err(|e| e.to_string())?;
                Ok::<usize, String>(text.lines().count())
            }
        })
        .after(&sitemap)
        .submit()?;

    println!("sitemap -> {:?}", sitemap.await.map(|l| l.len()));
    println!("plan -> {:?} report lines", plan.await);
    match report_watch.await? {
        Ok(report) => println!("report:\n{report}"),
        Err(e) => println!("report failed: {e}"),
    }
    cluster.stop(Duration::from_secs(1)).await?;
    Ok(())
}
