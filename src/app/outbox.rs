//! The outbox sweep: a job is stored before its queue message is published, so a crash or a broker
//! outage in between leaves a stored job with no message. Every process on RabbitMQ looks for such
//! jobs now and then and publishes them; the database hands each one to a single process.

use super::App;
use crate::jobs::{Job, Status};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// A job unpublished this long is published by the sweep (a submit's publish ends within 4 s: the
/// wait for a link and the broker's confirm timeout).
pub const GRACE: Duration = Duration::from_secs(10);

/// How often the sweep looks.
const EVERY: Duration = Duration::from_secs(5);

/// Runs the sweep until shutdown.
pub async fn run(app: Arc<App>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = app.shutdown.cancelled() => return,
        }
        if let Err(e) = sweep(&app).await {
            log::warn!("outbox sweep: {e}");
        }
    }
}

/// Publishes the jobs whose message is overdue; returns how many.
pub async fn sweep(app: &App) -> Result<usize, crate::jobs::StoreError> {
    let before = chrono::Utc::now() - chrono::Duration::from_std(GRACE).expect("small");
    let mut published = 0;
    for job in app.jobs.unpublished(before).await? {
        // Another replica may be at the same job: only the one whose claim lands publishes it.
        if !app.jobs.take_unpublished(job.id, before).await? {
            continue;
        }
        if job.status != Status::Enqueued {
            // Canceled or deleted meanwhile: nothing to publish.
            app.jobs.published(&[job.id]).await?;
            continue;
        }
        match app.publish(&job).await {
            Ok(()) => {
                log::warn!("job {}: its queue message was missing; published now", job.id);
                published += 1;
            }
            Err(e) => {
                log::warn!("job {}: still not published ({e}); trying again later", job.id);
                return Ok(published);
            }
        }
    }
    Ok(published)
}

/// Marks published jobs in batches: one statement for the jobs published while the last one ran,
/// so that a submit costs the database one write on its answer's path, and this one shared write
/// off it. A mark that is lost only makes the sweep publish the job again: a duplicate message
/// finds it taken or done.
pub async fn mark_published(
    store: std::sync::Arc<crate::jobs::Store>,
    mut ids: tokio::sync::mpsc::UnboundedReceiver<uuid::Uuid>,
) {
    let mut batch = Vec::new();
    while ids.recv_many(&mut batch, 500).await > 0 {
        if let Err(e) = store.published(&batch).await {
            log::warn!("{} queued job(s) not marked published: {e}", batch.len());
        }
        batch.clear();
    }
}

/// Publishes the jobs that submits answered without waiting (`App::publish_soon`), as they come,
/// from one task that awaits all their confirms: a burst of submits costs a wake-up per confirm
/// the broker sends (one confirms many messages), not one per job. Ends when the `App` does.
pub async fn publisher(app: Weak<App>, mut jobs: tokio::sync::mpsc::UnboundedReceiver<(Job, OwnedSemaphorePermit)>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = jobs.recv() => {
                let Some((job, permit)) = next else { break };
                let Some(app) = app.upgrade() else { break };
                running.push(async move {
                    if let Err(e) = app.publish(&job).await {
                        log::warn!("job {}: stored, to be queued later ({e})", job.id);
                    }
                    drop(permit);
                });
            }
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}
