//! Group commit of new jobs: the inserts of concurrent submits go to the database as one
//! statement and one commit, so a burst of submits costs one log flush, not one each. A submit
//! waits for the statement that carries its row; that statement starts as soon as the previous
//! one ends, with every row that arrived meanwhile.

use super::{key, millis, webhook_pending};
use crate::jobs::db::{on, Db};
use crate::jobs::{Job, Status};
use chrono::Utc;
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

/// Rows in one statement at most (14 parameters each, well under both backends' limits).
const MAX_ROWS: usize = 200;

/// A row waiting for its statement, and where to say whether it was inserted (none: its
/// idempotency key was taken; else whether it is held) or why the statement failed.
pub(super) struct Pending {
    pub job: Job,
    pub doc: String,
    pub reply: oneshot::Sender<Result<Option<bool>, String>>,
}

/// Runs the statements until every sender is gone.
pub(super) async fn run(db: Db, mut rows: mpsc::UnboundedReceiver<Pending>, queued_per_tenant: u32) {
    let mut batch = Vec::new();
    while rows.recv_many(&mut batch, MAX_ROWS).await > 0 {
        // Every statement takes the unique keys in the same order, so that two replicas inserting
        // the same keys at once wait for each other instead of deadlocking.
        batch.sort_by(|a: &Pending, b: &Pending| a.job.idempotency_key.cmp(&b.job.idempotency_key));
        let hold = queued_per_tenant > 0;
        let mut inserted = insert(&db, &batch, hold).await;
        if let Err(sqlx::Error::Database(e)) = &inserted {
            // A deadlock or serialization failure chose this statement: it can only succeed anew.
            log::warn!("inserting {} job(s) failed ({e}); trying once more", batch.len());
            inserted = insert(&db, &batch, hold).await;
        }
        // Held rows go to the queue at once as far as their tenants' turns allow; the rest wait.
        let mut released = HashSet::new();
        if let (true, Ok(ids)) = (hold, &inserted) {
            let mut tenants: Vec<String> = batch
                .iter()
                .filter(|p| ids.contains(&key(p.job.id)))
                .map(|p| p.job.tenant.clone())
                .collect();
            tenants.sort();
            tenants.dedup();
            match super::hold::release(&db, queued_per_tenant, Some(&tenants)).await {
                Ok(jobs) => released.extend(jobs.into_iter().map(|j| key(j.id))),
                // Held rows are released by the next sweep.
                Err(e) => log::warn!("new jobs held, not released yet: {e}"),
            }
        }
        let inserted = inserted.map_err(|e| e.to_string());
        for p in batch.drain(..) {
            let id = key(p.job.id);
            let answer = match &inserted {
                Ok(ids) => Ok(ids
                    .contains(&id)
                    .then(|| hold && p.job.status == Status::Enqueued && !released.contains(&id))),
                Err(e) => Err(e.clone()),
            };
            let _ = p.reply.send(answer);
        }
    }
}

/// One multi-row insert; returns the ids of the rows inserted (a row whose idempotency key is
/// taken, by an earlier job or by an earlier row of the same statement, is left out).
async fn insert(db: &Db, batch: &[Pending], hold: bool) -> Result<HashSet<Vec<u8>>, sqlx::Error> {
    const N: usize = 14;
    let now = Utc::now().timestamp_millis();
    let rows: Vec<String> = (0..batch.len())
        .map(|r| {
            let p: Vec<String> = (1..=N).map(|i| format!("${}", r * N + i)).collect();
            format!("({}, 1, {now})", p.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO jobs (id, status, pipeline, idempotency_key, finished_at, webhook_pending, \
         unpublished_since, doc, tenant, held, priority, stored_bytes, gpu_ms, images, version, changed_at) VALUES {} \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        rows.join(", ")
    );
    let ids: Vec<Vec<u8>> = on!(db, pool => {
        let mut q = sqlx::query_scalar(&sql);
        for p in batch {
            q = q
                .bind(key(p.job.id))
                .bind(p.job.status.as_str())
                .bind(p.job.pipeline.clone())
                .bind(p.job.idempotency_key.as_ref().map(|k| Job::idempotency_scope(&p.job.tenant, k)))
                .bind(millis(p.job.finished_at))
                .bind(webhook_pending(&p.job))
                // A held row has no message to come until it is released: not the outbox's.
                .bind((!(hold && p.job.status == Status::Enqueued)).then_some(now))
                .bind(p.doc.clone())
                .bind(p.job.tenant.clone())
                .bind(hold && p.job.status == Status::Enqueued)
                .bind(super::priority(&p.job))
                .bind(p.job.stored_bytes() as i64)
                .bind(super::gpu_ms(&p.job))
                .bind(p.job.image_count() as i64);
        }
        q.fetch_all(pool).await?
    });
    Ok(ids.into_iter().collect())
}
