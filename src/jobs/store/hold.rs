//! Held jobs: stored, but kept out of the queue while their tenant has its share of jobs waiting
//! there (`scheduling.queued_per_tenant`). Releasing is one atomic step in the database, so that
//! however many processes release at once, a tenant never has more than its share queued.

use super::{Store, StoreError};
use crate::jobs::db::{on, Db};
use crate::jobs::Job;
use chrono::Utc;

/// Releases, for each tenant (or every tenant with held jobs, with `None`), its held jobs,
/// highest priority then oldest first, until it has `share` jobs in the queue; returns them, to
/// be published (they are marked in the outbox, so the sweep publishes them if the caller
/// cannot).
pub(super) async fn release(db: &Db, share: u32, tenants: Option<&[String]>) -> Result<Vec<Job>, StoreError> {
    if share == 0 {
        return Ok(Vec::new());
    }
    let tenants = match tenants {
        Some(t) => t.to_vec(),
        None => {
            let sql = "SELECT DISTINCT tenant FROM jobs WHERE held";
            on!(db, pool => sqlx::query_scalar(sql).fetch_all(pool).await?)
        }
    };
    let mut released = Vec::new();
    for tenant in &tenants {
        for doc in release_one(db, share, tenant).await? {
            released.push(serde_json::from_str(&doc)?);
        }
    }
    Ok(released)
}

/// One tenant's release: one statement that counts the tenant's queued jobs and takes that many
/// fewer than the share from the head of its held ones (an index range, however many are held).
async fn release_one(db: &Db, share: u32, tenant: &str) -> Result<Vec<String>, StoreError> {
    let sql = "UPDATE jobs SET held = FALSE WHERE id IN (\
                 SELECT id FROM jobs WHERE tenant = $2 AND held AND status = 'enqueued' \
                 ORDER BY priority DESC, id \
                 LIMIT (SELECT CASE WHEN COUNT(*) < $1 THEN $1 - COUNT(*) ELSE 0 END \
                        FROM jobs WHERE tenant = $2 AND status = 'enqueued' AND NOT held)\
               ) RETURNING id, doc";
    let now = Utc::now().timestamp_millis();
    let docs = match db {
        // SQLite runs one writer at a time: the update and the outbox marks of what it released,
        // in one transaction.
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let rows: Vec<(Vec<u8>, String)> = sqlx::query_as(sql)
                .bind(share as i64)
                .bind(tenant)
                .fetch_all(&mut *tx)
                .await?;
            let marks: Vec<&[u8]> = rows.iter().map(|(id, _)| &id[..]).collect();
            super::outbox::mark_each(&mut tx, &marks, now).await?;
            tx.commit().await?;
            rows.into_iter().map(|(_, doc)| doc).collect()
        }
        // PostgreSQL reads the count at the statement's start: two concurrent releases could
        // both see room. `release_held` (migrations 0006, 0007) takes a per-tenant advisory lock
        // first, then runs the same update and the outbox marks, in one round trip.
        Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT release_held($3, $2, $1)")
                .bind(now)
                .bind(share as i64)
                .bind(tenant)
                .fetch_all(pool)
                .await?
        }
    };
    Ok(docs)
}

impl Store {
    /// Releases held jobs of these tenants (every tenant: `None`) as far as their share allows;
    /// returns them, to be published.
    pub async fn release(&self, tenants: Option<&[String]>) -> Result<Vec<Job>, StoreError> {
        release(&self.db, self.queued_per_tenant, tenants).await
    }

    /// Jobs of a tenant held out of the queue, for tests and `/ready`-style checks.
    pub async fn held_count(&self, tenant: &str) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND held";
        Ok(on!(&self.db, pool => sqlx::query_scalar(sql).bind(tenant).fetch_one(pool).await?))
    }
}
