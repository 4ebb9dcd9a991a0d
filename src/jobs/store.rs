//! Job records in the database (`db`): one row per job, every change one statement.
//!
//! A row holds the whole record as JSON (`doc`) and the columns derived from it that lists and
//! sweeps select on. Changes are compare-and-set on `version`: read, change, write back only if
//! nobody wrote in between, else apply the change again to the newer record. So two processes
//! never lose each other's writes, with no lock held across a network call.

use super::db::{on, Db};
use super::{DeliveryState, Job, JobView, Status};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Job store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused a statement.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A record could not be encoded or decoded.
    #[error("job record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Which jobs a list shows; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this tenant's jobs (none: every tenant's, for admins).
    pub tenant: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this preset.
    pub pipeline: Option<String>,
    /// Created at or after this time (to the millisecond).
    pub created_after: Option<DateTime<Utc>>,
    /// Created before this time (to the millisecond).
    pub created_before: Option<DateTime<Utc>>,
}

/// A job as `Store::insert` left it.
#[derive(Debug)]
pub struct Inserted {
    /// The job stored: the new one, or the earlier job of the same idempotency key.
    pub job: Job,
    /// True when the new job waits out of the queue for its tenant's turn.
    pub held: bool,
    /// Other jobs this insert released from the hold (its tenant's older ones): the caller
    /// publishes them, as it does the new job when it is not held.
    pub released: Vec<Job>,
}

/// Reads and writes job records.
#[derive(Debug)]
pub struct Store {
    db: Db,
    /// `scheduling.queued_per_tenant`: 0 means no job is ever held.
    queued_per_tenant: u32,
    /// New jobs, to the group commit (`group`).
    inserts: tokio::sync::mpsc::UnboundedSender<group::Pending>,
    /// Signalled after each insert and write of this process, so the live event feed of this
    /// process needs no poll to see them (others' writes it polls for).
    changed: std::sync::Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for group::Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pending({})", self.job.id)
    }
}

/// A row's key: the id's 16 bytes, whose order is creation order.
fn key(id: Uuid) -> Vec<u8> {
    id.as_bytes().to_vec()
}

/// The smallest id minted at `t`: ids below it were made before.
fn id_floor(t: DateTime<Utc>) -> Vec<u8> {
    // A UUIDv7 holds 48 bits of milliseconds (until the year 10889).
    let ms = t.timestamp_millis().clamp(0, (1 << 48) - 1) as u128;
    key(Uuid::from_u128(ms << 80))
}

fn millis(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

/// True when the job's webhook has attempts to come.
pub(super) fn webhook_pending(job: &Job) -> bool {
    job.webhook.as_ref().is_some_and(|w| w.state == DeliveryState::Pending)
}

/// Engine milliseconds on a GPU (the `gpu_ms` column).
pub(super) fn gpu_ms(job: &Job) -> i64 {
    if job.gpu {
        job.engine_ms as i64
    } else {
        0
    }
}

/// The `priority` column: high jobs leave the hold first.
pub(super) fn priority(job: &Job) -> i32 {
    match job.priority {
        super::Priority::High => 1,
        super::Priority::Normal => 0,
    }
}

/// A bound value of a list query.
enum Param {
    Text(String),
    Bytes(Vec<u8>),
}

impl Store {
    /// A store on an open database (from a Tokio runtime: its group commit runs as a task) that
    /// holds no job back: every new job goes to the queue.
    pub fn new(db: Db) -> Store {
        Store::sharing(db, 0)
    }

    /// A store that keeps at most `queued_per_tenant` jobs of a tenant in the queue and holds
    /// the others (see `hold`); 0 holds none.
    pub fn sharing(db: Db, queued_per_tenant: u32) -> Store {
        let (inserts, rows) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(group::run(db.clone(), rows, queued_per_tenant));
        Store {
            db,
            queued_per_tenant,
            inserts,
            changed: Default::default(),
        }
    }

    /// The database, for `/ready`.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Signalled after this process inserted or changed a job (a permit is kept when nobody waits).
    pub fn changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Stores a new job, marked in the outbox for the queue (see `unpublished`); `held` says whether
    /// it waits for its tenant's turn instead (then the caller publishes nothing). With an
    /// idempotency key already used, stores nothing and returns the earlier job (compare ids to
    /// tell): the unique column decides between concurrent submits, on any number of replicas.
    pub async fn insert(&self, job: Job) -> Result<Inserted, StoreError> {
        let doc = serde_json::to_string(&job)?;
        let mut released = Vec::new();
        for _ in 0..3 {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let pending = group::Pending {
                job: job.clone(),
                doc: doc.clone(),
                reply,
            };
            let lost = || StoreError::Db(sqlx::Error::PoolClosed);
            self.inserts.send(pending).map_err(|_| lost())?;
            let reply = answer.await.map_err(|_| lost())?;
            let mut reply = reply.map_err(|e| StoreError::Db(sqlx::Error::Protocol(e)))?;
            released.append(&mut reply.released);
            if let Some(held) = reply.inserted {
                self.changed.notify_one();
                return Ok(Inserted { job, held, released });
            }
            let Some(k) = &job.idempotency_key else { break };
            // The key's job may be deleted between the two statements: then insert again.
            if let Some(earlier) = self.find_idempotent(&job.tenant, k).await? {
                return Ok(Inserted {
                    job: earlier,
                    held: false,
                    released,
                });
            }
        }
        Err(StoreError::Db(sqlx::Error::Protocol(format!(
            "job {} could not be inserted",
            job.id
        ))))
    }

    /// The job a tenant submitted with this idempotency key, if any.
    pub async fn find_idempotent(&self, tenant: &str, idempotency_key: &str) -> Result<Option<Job>, StoreError> {
        let sql = "SELECT doc FROM jobs WHERE idempotency_key = $1";
        let scoped = Job::idempotency_scope(tenant, idempotency_key);
        let doc: Option<String> =
            on!(&self.db, pool => sqlx::query_scalar(sql).bind(scoped).fetch_optional(pool).await?);
        Ok(doc.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    /// One job.
    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        Ok(self.read(id).await?.map(|(_, job)| job))
    }

    async fn read(&self, id: Uuid) -> Result<Option<(i64, Job)>, StoreError> {
        let sql = "SELECT version, doc FROM jobs WHERE id = $1";
        let row: Option<(i64, String)> =
            on!(&self.db, pool => sqlx::query_as(sql).bind(key(id)).fetch_optional(pool).await?);
        row.map(|(v, doc)| Ok((v, serde_json::from_str(&doc)?))).transpose()
    }

    /// Applies `f` to a job and stores the result; `None` if the job does not exist. Nothing is
    /// written when `f` changes nothing. When another process wrote the job in between, `f` runs
    /// again on its newer state, so `f` must decide from the job it is given.
    pub async fn update<R>(&self, id: Uuid, mut f: impl FnMut(&mut Job) -> R) -> Result<Option<R>, StoreError> {
        loop {
            let Some((version, current)) = self.read(id).await? else {
                return Ok(None);
            };
            let mut job = current.clone();
            let out = f(&mut job);
            if job == current {
                return Ok(Some(out));
            }
            // Lease refreshes and other internal changes are not news to clients: `updated_at`
            // and the change feed (`changed_at`) move only when what they see changes.
            let seen = JobView::from(job.clone()) != JobView::from(current.clone());
            if seen {
                job.updated_at = Utc::now();
            }
            // A retry puts a final job back in the queue: it needs a message again.
            let republish = current.status.is_final() && job.status == Status::Enqueued;
            if self.write(&job, version, republish, seen).await? {
                return Ok(Some(out));
            }
        }
    }

    async fn write(&self, job: &Job, version: i64, republish: bool, seen: bool) -> Result<bool, StoreError> {
        let sql = "UPDATE jobs SET status = $2, finished_at = $3, webhook_pending = $4, doc = $5, \
                   version = version + 1, \
                   stored_bytes = $8, engine_ms = $9, gpu_ms = $10, \
                   changed_at = CASE WHEN $11 THEN $6 ELSE changed_at END, \
                   held = CASE WHEN $2 = 'enqueued' THEN held ELSE FALSE END \
                   WHERE id = $1 AND version = $7";
        let doc = serde_json::to_string(job)?;
        let now = Utc::now().timestamp_millis();
        macro_rules! update {
            () => {
                sqlx::query(sql)
                    .bind(key(job.id))
                    .bind(job.status.as_str())
                    .bind(millis(job.finished_at))
                    .bind(webhook_pending(job))
                    .bind(&doc)
                    .bind(now)
                    .bind(version)
                    .bind(job.stored_bytes() as i64)
                    .bind(job.engine_ms as i64)
                    .bind(gpu_ms(job))
                    .bind(seen)
            };
        }
        let written = on!(&self.db, pool => if republish {
            // A retry needs its queue message: its outbox mark commits with it, or neither does.
            let mut tx = pool.begin().await?;
            let written = update!().execute(&mut *tx).await?.rows_affected();
            if written == 1 {
                sqlx::query(outbox::MARK).bind(key(job.id)).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            written
        } else {
            // Heartbeats and progress: one round trip, no transaction.
            update!().execute(pool).await?.rows_affected()
        });
        if written == 1 && seen {
            self.changed.notify_one();
        }
        Ok(written == 1)
    }

    /// Jobs newest first, as `filter` selects, after the `after` id; and the cursor of the next
    /// page when there is one. Keyset pagination: each page is one indexed range read, full when
    /// enough jobs match, and stable while jobs are added.
    pub async fn list(
        &self,
        filter: &Filter,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<(Vec<Job>, Option<Uuid>), StoreError> {
        let mut sql = String::from("SELECT doc FROM jobs WHERE TRUE");
        let mut params = Vec::new();
        let mut cond = |column: &str, op: &str, p: Param| {
            params.push(p);
            sql.push_str(&format!(" AND {column} {op} ${}", params.len()));
        };
        if let Some(t) = &filter.tenant {
            cond("tenant", "=", Param::Text(t.clone()));
        }
        if let Some(s) = filter.status {
            cond("status", "=", Param::Text(s.as_str().into()));
        }
        if let Some(p) = &filter.pipeline {
            cond("pipeline", "=", Param::Text(p.clone()));
        }
        if let Some(t) = filter.created_after {
            cond("id", ">=", Param::Bytes(id_floor(t)));
        }
        if let Some(t) = filter.created_before {
            cond("id", "<", Param::Bytes(id_floor(t)));
        }
        if let Some(a) = after {
            cond("id", "<", Param::Bytes(key(a)));
        }
        // One more than asked tells whether another page follows.
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
        let docs: Vec<String> = on!(&self.db, pool => {
            // Planned for its values each time, not once for any: a generic plan cannot tell a
            // status held by 1% of the jobs from one held by 99%, and walks the primary key
            // through every job of the other statuses.
            let mut q = sqlx::query_scalar(&sql).persistent(false);
            for p in params {
                q = match p {
                    Param::Text(t) => q.bind(t),
                    Param::Bytes(b) => q.bind(b),
                };
            }
            q.fetch_all(pool).await?
        });
        let more = docs.len() > limit;
        let jobs = docs
            .iter()
            .take(limit)
            .map(|d| serde_json::from_str::<Job>(d))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if more { jobs.last().map(|j| j.id) } else { None };
        Ok((jobs, next))
    }

    /// Deletes a job's record unless a worker is running it; returns its tenant, or none if there
    /// was none to delete. Its files are the caller's to delete, after: a crash in between leaves
    /// files no record names, never a record without files.
    pub async fn remove(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let sql = "DELETE FROM jobs WHERE id = $1 AND status <> 'processing' RETURNING tenant";
        let tenant: Option<String> = on!(&self.db, pool => {
            // Its outbox mark goes with it: a mark without a job would stay forever.
            let mut tx = pool.begin().await?;
            let tenant = sqlx::query_scalar(sql).bind(key(id)).fetch_optional(&mut *tx).await?;
            sqlx::query("DELETE FROM outbox WHERE id = $1").bind(key(id)).execute(&mut *tx).await?;
            tx.commit().await?;
            tenant
        });
        if tenant.is_some() {
            self.log_remove(id).await?;
        }
        Ok(tenant)
    }

    /// Records that a webhook endpoint answered 410 Gone.
    pub async fn mark_endpoint_gone(&self, url: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO webhook_gone (url_hash, url) VALUES ($1, $2) ON CONFLICT (url_hash) DO NOTHING";
        let hash = format!("{:x}", Sha256::digest(url.as_bytes()));
        on!(&self.db, pool => sqlx::query(sql).bind(hash).bind(url).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// True when a webhook endpoint answered 410 Gone before.
    pub async fn endpoint_gone(&self, url: &str) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) FROM webhook_gone WHERE url_hash = $1";
        let hash = format!("{:x}", Sha256::digest(url.as_bytes()));
        let n: i64 = on!(&self.db, pool => sqlx::query_scalar(sql).bind(hash).fetch_one(pool).await?);
        Ok(n > 0)
    }
}

mod feed;
mod group;
mod hold;
mod outbox;
mod quota;
mod sweeps;
mod usage;

pub use feed::Changed;
pub use quota::{Exceeded, Quota};
pub use usage::TenantUsage;

#[cfg(test)]
mod tenancy_tests;
#[cfg(test)]
mod tests;
