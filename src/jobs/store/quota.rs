//! Inserts checked against a tenant's quotas in the same atomic step: the counts are read by the
//! statement that inserts, so two concurrent submits cannot both take the last slot (SQLite runs
//! one writer at a time; on PostgreSQL a per-tenant advisory lock makes them take turns).

use super::{gpu_ms, hold, key, millis, priority, webhook_pending, Inserted, Store, StoreError};
use crate::jobs::db::{on, Db};
use crate::jobs::Job;
use chrono::Utc;

/// A tenant's quotas; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Jobs enqueued or processing.
    pub max_active_jobs: u64,
    /// Bytes of inputs and results kept.
    pub max_stored_bytes: u64,
    /// Engine seconds of GPU pipelines over the last 24 hours.
    pub max_gpu_seconds_per_day: u64,
}

impl Quota {
    /// True when some quota applies.
    pub fn any(&self) -> bool {
        *self != Quota::default()
    }
}

/// Which quota a submit would exceed, its value and the tenant's use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    /// `quota.max_active_jobs`.
    #[error("quota.max_active_jobs is {limit}, and the tenant has {used} jobs enqueued or processing")]
    ActiveJobs {
        /// The quota.
        limit: u64,
        /// The use.
        used: u64,
    },
    /// `quota.max_stored_bytes`.
    #[error("quota.max_stored_bytes is {limit}; the tenant keeps {used} bytes and this job adds {adding}")]
    StoredBytes {
        /// The quota.
        limit: u64,
        /// The use.
        used: u64,
        /// The job's inputs.
        adding: u64,
    },
    /// `quota.max_gpu_seconds_per_day`.
    #[error("quota.max_gpu_seconds_per_day is {limit}, and the tenant's GPU jobs ran {used} s in the last 24 hours")]
    GpuSeconds {
        /// The quota.
        limit: u64,
        /// The use.
        used: u64,
    },
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The tenant's use: jobs active, bytes stored, GPU milliseconds in the last day.
async fn usage(db: &Db, tenant: &str) -> Result<(i64, i64, i64), StoreError> {
    let sql = "SELECT \
        (SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND status IN ('enqueued', 'processing')), \
        (SELECT CAST(COALESCE(SUM(stored_bytes), 0) AS BIGINT) FROM jobs WHERE tenant = $1), \
        (SELECT CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT) FROM jobs WHERE tenant = $1 \
         AND (finished_at IS NULL OR finished_at >= $2))";
    let since = Utc::now().timestamp_millis() - DAY_MS;
    let row: (i64, i64, i64) = on!(db, pool => sqlx::query_as(sql).bind(tenant).bind(since).fetch_one(pool).await?);
    Ok(row)
}

impl Store {
    /// Stores a new job if the tenant's quotas allow it, as `insert` does otherwise.
    pub async fn insert_within(&self, job: Job, quota: &Quota) -> Result<Result<Inserted, Exceeded>, StoreError> {
        let hold = self.queued_per_tenant > 0 && job.status == crate::jobs::Status::Enqueued;
        let doc = serde_json::to_string(&job)?;
        // The row is selected into the table only when every quota holds, all in one statement.
        let sql = "INSERT INTO jobs (id, status, pipeline, idempotency_key, finished_at, webhook_pending, \
            doc, tenant, held, priority, stored_bytes, gpu_ms, images, version, changed_at) \
            SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, $19 WHERE \
              ($14 = 0 OR (SELECT COUNT(*) FROM jobs WHERE tenant = $8 AND status IN ('enqueued', 'processing')) < $14) \
              AND ($15 = 0 OR (SELECT COALESCE(SUM(stored_bytes), 0) FROM jobs WHERE tenant = $8) + $11 <= $15) \
              AND ($16 = 0 OR NOT $17 OR (SELECT COALESCE(SUM(gpu_ms), 0) FROM jobs WHERE tenant = $8 \
                   AND (finished_at IS NULL OR finished_at >= $18)) < $16) \
            ON CONFLICT (idempotency_key) DO NOTHING RETURNING id";
        let now = Utc::now().timestamp_millis();
        let scoped = job
            .idempotency_key
            .as_ref()
            .map(|k| Job::idempotency_scope(&job.tenant, k));
        macro_rules! bound {
            ($q:expr) => {
                $q.bind(key(job.id))
                    .bind(job.status.as_str())
                    .bind(job.pipeline.clone())
                    .bind(scoped.clone())
                    .bind(millis(job.finished_at))
                    .bind(webhook_pending(&job))
                    .bind(doc.clone())
                    .bind(job.tenant.clone())
                    .bind(hold)
                    .bind(priority(&job))
                    .bind(job.stored_bytes() as i64)
                    .bind(gpu_ms(&job))
                    .bind(job.image_count() as i64)
                    .bind(quota.max_active_jobs as i64)
                    .bind(quota.max_stored_bytes as i64)
                    .bind(quota.max_gpu_seconds_per_day.saturating_mul(1000) as i64)
                    .bind(job.gpu)
                    .bind(now - DAY_MS)
                    .bind(now)
            };
        }
        // The row and its outbox mark (when not held) commit together.
        let inserted: Option<Vec<u8>> = on!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            if let Db::Postgres(_) = &self.db {
                // PostgreSQL checks the quota against the statement's snapshot: two submits of a
                // tenant at once could both fit. SQLite runs one writer at a time.
                sqlx::query("SELECT pg_advisory_xact_lock(7142002, hashtext($1))")
                    .bind(&job.tenant)
                    .execute(&mut *tx)
                    .await?;
            }
            let id: Option<Vec<u8>> = bound!(sqlx::query_scalar(sql)).fetch_optional(&mut *tx).await?;
            if let (Some(id), false) = (&id, hold) {
                sqlx::query(super::outbox::MARK).bind(id).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            id
        });
        if inserted.is_some() {
            self.changed.notify_one();
            let released = hold::release(
                &self.db,
                self.queued_per_tenant,
                Some(std::slice::from_ref(&job.tenant)),
            )
            .await?;
            let (mine, released): (Vec<Job>, Vec<Job>) = released.into_iter().partition(|j| j.id == job.id);
            let held = hold && mine.is_empty();
            return Ok(Ok(Inserted { job, held, released }));
        }
        if let Some(k) = &job.idempotency_key {
            if let Some(earlier) = self.find_idempotent(&job.tenant, k).await? {
                return Ok(Ok(Inserted {
                    job: earlier,
                    held: false,
                    released: Vec::new(),
                }));
            }
        }
        // Refused: say which quota, from the use as it is now.
        let (active, stored, gpu) = usage(&self.db, &job.tenant).await?;
        let (active, stored, gpu) = (active as u64, stored as u64, gpu as u64 / 1000);
        Ok(Err(if quota.max_active_jobs > 0 && active >= quota.max_active_jobs {
            Exceeded::ActiveJobs {
                limit: quota.max_active_jobs,
                used: active,
            }
        } else if quota.max_stored_bytes > 0 && stored + job.stored_bytes() > quota.max_stored_bytes {
            Exceeded::StoredBytes {
                limit: quota.max_stored_bytes,
                used: stored,
                adding: job.stored_bytes(),
            }
        } else {
            Exceeded::GpuSeconds {
                limit: quota.max_gpu_seconds_per_day,
                used: gpu,
            }
        }))
    }
}
