//! Group commit of new jobs: the inserts of concurrent submits go to the database as one
//! statement and one commit, so a burst of submits costs one log flush, not one each. A submit
//! waits for the statement that carries its row; that statement starts as soon as the previous
//! one ends, with every row that arrived meanwhile.

use super::{key, millis, webhook_pending};
use crate::jobs::db::Db;
use crate::jobs::{Job, Status};
use chrono::Utc;
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

/// Rows in one statement at most (14 parameters each, well under both backends' limits).
const MAX_ROWS: usize = 200;

/// A row waiting for its statement, and where to send the [`Reply`] or why the statement failed.
pub(super) struct Pending {
    pub job: Job,
    pub doc: String,
    pub reply: oneshot::Sender<Result<Reply, String>>,
}

/// What became of a row.
#[derive(Debug)]
pub(super) struct Reply {
    /// None: its idempotency key was taken; else whether it is held.
    pub inserted: Option<bool>,
    /// Jobs of earlier statements released by this one, for the receiver to publish: the
    /// release takes a tenant's *oldest* held jobs, which need not be in this statement.
    pub released: Vec<Job>,
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
        let mut released = Vec::new();
        if let (true, Ok(ids)) = (hold, &inserted) {
            let mut tenants: Vec<String> = batch
                .iter()
                .filter(|p| ids.contains(&key(p.job.id)))
                .map(|p| p.job.tenant.clone())
                .collect();
            tenants.sort();
            tenants.dedup();
            match super::hold::release(&db, queued_per_tenant, Some(&tenants)).await {
                Ok(jobs) => released = jobs,
                // Held rows are released by the next sweep.
                Err(e) => log::warn!("new jobs held, not released yet: {e}"),
            }
        }
        reply_all(&mut batch, inserted.map_err(|e| e.to_string()), released, hold);
    }
}

/// Answers every row of a statement. A released job is published by its own submit when in
/// this statement, else by the first submit still waiting for its answer (a submit whose
/// client left passes its own on too); one left unpublished is the outbox sweep's.
fn reply_all(batch: &mut Vec<Pending>, inserted: Result<HashSet<Vec<u8>>, String>, released: Vec<Job>, hold: bool) {
    let (mine, mut others): (Vec<Job>, Vec<Job>) = released
        .into_iter()
        .partition(|j| inserted.as_ref().is_ok_and(|ids| ids.contains(&key(j.id))));
    for p in batch.drain(..) {
        let id = key(p.job.id);
        let answer = match &inserted {
            Ok(ids) => Ok(Reply {
                inserted: ids
                    .contains(&id)
                    .then(|| held(&p, hold) && !mine.iter().any(|j| j.id == p.job.id)),
                released: std::mem::take(&mut others),
            }),
            Err(e) => Err(e.clone()),
        };
        if let Err(Ok(mut lost)) = p.reply.send(answer) {
            others.append(&mut lost.released);
            if lost.inserted == Some(false) {
                others.push(p.job);
            }
        }
    }
    if !others.is_empty() {
        log::debug!("{} released job(s) left to the outbox sweep", others.len());
    }
}

/// The columns a new row fills, in the order both statements give them: 14 values per job, then
/// `version` and `changed_at`.
macro_rules! columns {
    () => {
        "(id, status, pipeline, idempotency_key, finished_at, webhook_pending, doc, \
         tenant, held, priority, stored_bytes, gpu_ms, images, version, changed_at)"
    };
}

/// One multi-row insert; returns the ids of the rows inserted (a row whose idempotency key is
/// taken, by an earlier job or by an earlier row of the same statement, is left out).
async fn insert(db: &Db, batch: &[Pending], hold: bool) -> Result<HashSet<Vec<u8>>, sqlx::Error> {
    let now = Utc::now().timestamp_millis();
    match db {
        Db::Postgres(pool) => insert_arrays(pool, batch, hold, now).await,
        Db::Sqlite(pool) => insert_values(pool, batch, hold, now).await,
    }
}

/// Whether a new row is held (its tenant's turn not come), and so not the outbox's: a held row
/// has no message to come until it is released.
fn held(p: &Pending, hold: bool) -> bool {
    hold && p.job.status == Status::Enqueued
}

/// PostgreSQL: the rows as one array per column, so that the statement's text is the same for
/// any number of rows. It is prepared once per connection; a statement per batch size would be
/// prepared again (one more round trip, and parsing a statement of hundreds of parameters) each
/// time a connection met a size it had not seen.
async fn insert_arrays(
    pool: &sqlx::PgPool,
    batch: &[Pending],
    hold: bool,
    now: i64,
) -> Result<HashSet<Vec<u8>>, sqlx::Error> {
    // The rows and the outbox marks of those not held, in one statement.
    const SQL: &str = concat!(
        "WITH ins AS (INSERT INTO jobs ",
        columns!(),
        " SELECT r.*, 1, $14 FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::bool[], \
         $7::text[], $8::text[], $9::bool[], $10::int4[], $11::int8[], $12::int8[], $13::int8[]) AS r \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, held), \
         marked AS (INSERT INTO outbox (id, since) SELECT id, $14 FROM ins WHERE NOT held) \
         SELECT id FROM ins"
    );
    let ids: Vec<Vec<u8>> = sqlx::query_scalar(SQL)
        .bind(batch.iter().map(|p| key(p.job.id)).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.job.status.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.job.pipeline.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(scoped_key).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| millis(p.job.finished_at)).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| webhook_pending(&p.job)).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.doc.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.job.tenant.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| held(p, hold)).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| super::priority(&p.job)).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.job.stored_bytes() as i64).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| super::gpu_ms(&p.job)).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.job.image_count() as i64).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(pool)
        .await?;
    Ok(ids.into_iter().collect())
}

/// The idempotency key as stored: scoped to the tenant.
fn scoped_key(p: &Pending) -> Option<String> {
    p.job
        .idempotency_key
        .as_ref()
        .map(|k| Job::idempotency_scope(&p.job.tenant, k))
}

/// SQLite: one `VALUES` row per job (statements are prepared in process: no round trip).
async fn insert_values(
    pool: &sqlx::SqlitePool,
    batch: &[Pending],
    hold: bool,
    now: i64,
) -> Result<HashSet<Vec<u8>>, sqlx::Error> {
    const N: usize = 13;
    let rows: Vec<String> = (0..batch.len())
        .map(|r| {
            let p: Vec<String> = (1..=N).map(|i| format!("${}", r * N + i)).collect();
            format!("({}, 1, {now})", p.join(", "))
        })
        .collect();
    let sql = format!(
        concat!(
            "INSERT INTO jobs ",
            columns!(),
            " VALUES {} ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, held"
        ),
        rows.join(", ")
    );
    let mut q = sqlx::query_as(&sql);
    for p in batch {
        q = q
            .bind(key(p.job.id))
            .bind(p.job.status.as_str())
            .bind(p.job.pipeline.clone())
            .bind(scoped_key(p))
            .bind(millis(p.job.finished_at))
            .bind(webhook_pending(&p.job))
            .bind(p.doc.clone())
            .bind(p.job.tenant.clone())
            .bind(held(p, hold))
            .bind(super::priority(&p.job))
            .bind(p.job.stored_bytes() as i64)
            .bind(super::gpu_ms(&p.job))
            .bind(p.job.image_count() as i64);
    }
    // SQLite has no statement that inserts into two tables: the rows and their outbox marks
    // commit in one transaction (one fsync, as before).
    let mut tx = pool.begin().await?;
    let rows: Vec<(Vec<u8>, bool)> = q.fetch_all(&mut *tx).await?;
    let marks: Vec<&[u8]> = rows.iter().filter(|(_, held)| !held).map(|(id, _)| &id[..]).collect();
    super::outbox::mark_each(&mut tx, &marks, now).await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(|(id, _)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(job: &Job) -> (Pending, oneshot::Receiver<Result<Reply, String>>) {
        let (reply, rx) = oneshot::channel();
        let p = Pending {
            job: job.clone(),
            doc: String::new(),
            reply,
        };
        (p, rx)
    }

    #[test]
    fn a_submit_whose_client_left_passes_its_jobs_on() {
        let [gone, waiting, older] = [0, 1, 2].map(|_| Job::new("draft".into(), 60));
        let (p1, rx1) = pending(&gone);
        let (p2, mut rx2) = pending(&waiting);
        drop(rx1);
        let ids = HashSet::from([key(gone.id), key(waiting.id)]);
        // Both new rows and an older one released: the first row's submit is gone.
        reply_all(&mut vec![p1, p2], Ok(ids), vec![gone.clone(), older.clone()], true);
        let reply = rx2.try_recv().unwrap().unwrap();
        assert_eq!(reply.inserted, Some(true), "its own row stays held");
        let handed: Vec<_> = reply.released.iter().map(|j| j.id).collect();
        assert_eq!(handed, [older.id, gone.id]);
    }
}
