//! Fair scheduling between tenants. The queue is first come, first served (with priorities), so
//! a tenant that submits a thousand jobs would delay everyone else by a thousand jobs. Instead a
//! tenant has at most `scheduling.queued_per_tenant` jobs in the queue at once; the others are
//! stored *held* (`jobs::Store`). Whenever a tenant's queued job is taken by a worker, canceled
//! or deleted, its next held job (highest priority, then oldest) is released into the queue; a
//! sweep in every process does the same every few seconds, in case a process died in between.
//! Another tenant's new job thus waits behind a bounded number of jobs.

use crate::jobs::Store;
use crate::pipelines::Pipelines;
use crate::queue::Queue;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often every process releases what the share allows.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Releases held jobs of these tenants (every tenant: `None`) and publishes them; returns how
/// many went to the queue. A job whose publish fails stays marked unpublished: the outbox sweep
/// publishes it later.
pub async fn release(store: &Store, queue: &Queue, pipelines: &Pipelines, tenants: Option<&[String]>) -> usize {
    let jobs = match store.release(tenants).await {
        Ok(jobs) => jobs,
        Err(e) => {
            log::warn!("held jobs not released: {e}");
            return 0;
        }
    };
    let mut published = Vec::new();
    for job in &jobs {
        let gpu = pipelines.get(&job.pipeline).is_some_and(|p| p.gpu);
        if let Err(e) = queue.push(job.id, gpu, job.priority, job.traceparent.as_deref()).await {
            log::warn!("job {}: released, to be queued by the outbox ({e})", job.id);
            break;
        }
        log::debug!("job {}: released for tenant {}", job.id, job.tenant);
        published.push(job.id);
    }
    if let Err(e) = store.published(&published).await {
        log::warn!("{} released job(s) not marked published: {e}", published.len());
    }
    published.len()
}

/// Releases what the share allows every `SWEEP_EVERY`, until `stop`.
pub async fn sweep(store: &Store, queue: &Queue, pipelines: &Pipelines, stop: &CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        release(store, queue, pipelines, None).await;
    }
}
