//! The one LISTEN connection of a store instance, and the fallback poll.
//!
//! It reconnects by itself with capped exponential backoff (never in a
//! tight loop: the backoff resets only after a connection stayed up 30 s),
//! checks its connection every 30 s (`SELECT 1`, plus TCP keepalives) so a
//! half-open socket is noticed, and after each (re)connect wakes every waiter, since notices
//! sent while it was away are lost. The fallback poll does the same every
//! `fallback` (minutes by default): an idle process sends nothing else. In
//! poll-only mode (for poolers that break LISTEN) it only polls.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::id::JobId;
use crate::store::signals::Signals;

/// Hands one notice to the waiters it concerns.
pub(crate) fn dispatch(signals: &Signals, payload: &str) {
    if let Some(queue) = payload.strip_prefix("q:") {
        signals.wake_queue(queue);
    } else if let Some(ids) = payload.strip_prefix("d:") {
        ids.split(',')
            .filter_map(|id| id.parse().ok())
            .for_each(|id| signals.job_done(JobId(id)));
        signals.rows_finished();
    } else if let Some(id) = payload.strip_prefix("c:") {
        if let Ok(id) = id.parse() {
            signals.cancel_requested(JobId(id));
        }
    } else if payload == "s" {
        signals.wake_scheduled();
    } else if payload == "l" {
        signals.wake_leader_vacant();
    }
}

/// Polls only: wakes every waiter each `every`.
pub(crate) async fn poll_only(signals: Arc<Signals>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => signals.wake_all(),
        }
    }
}

/// How often the listener checks that its connection still answers: a
/// half-open socket (a peer gone without a FIN) delivers no notices and no
/// error, so it must be asked.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a check may take before the connection is deemed dead.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens on `channel` until `stop`, reconnecting as needed.
pub(crate) async fn listen(
    mut config: tokio_postgres::Config,
    channel: String,
    signals: Arc<Signals>,
    fallback: Duration,
    stop: CancellationToken,
) {
    // The kernel notices a dead peer too (besides the periodic check).
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            c = config.connect(NoTls) => c,
        };
        let (client, mut connection) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "corral-durable listener cannot connect");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // The connection future delivers notices; it ends when the socket does.
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "corral-durable listener connection lost");
                        return;
                    }
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
            tracing::warn!(error = %e, "corral-durable listener cannot LISTEN");
            driver.abort();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        tracing::debug!(channel, "corral-durable listener connected");
        let connected_at = tokio::time::Instant::now();
        // Whatever was sent while we were not listening is lost: look again.
        signals.wake_all();
        let mut ping = tokio::time::interval_at(connected_at + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval_at(connected_at + fallback, fallback);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    driver.abort();
                    return;
                }
                note = rx.recv() => match note {
                    Some(payload) => dispatch(&signals, &payload),
                    None => break,
                },
                _ = poll.tick() => signals.wake_all(),
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "corral-durable listener check failed");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("corral-durable listener connection does not answer");
                            break;
                        }
                    }
                }
            }
        }
        driver.abort();
        drop(client);
        // Never a tight loop: a connection that drops at once (a server
        // refusing after the handshake, a proxy) backs off like a failed
        // connect; one that stayed up a while reconnects almost at once.
        if connected_at.elapsed() >= STABLE_AFTER {
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(retry_in = ?backoff, "corral-durable listener disconnected; reconnecting");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
