//! Held jobs: stored, but kept out of the queue while their tenant has its share of jobs waiting
//! there (`scheduling.queued_per_tenant`). Releasing is one atomic step in the database, so that
//! however many processes release at once, a tenant never has more than its share queued.

use super::{Store, StoreError};
use crate::jobs::db::Db;
use crate::jobs::Job;
use chrono::Utc;

/// Releases, for each tenant (or every tenant with `None`), its held jobs, highest priority then
/// oldest first, until it has `share` jobs in the queue; returns them, to be published (their
/// `unpublished_since` is set, so the outbox publishes them if the caller cannot).
pub(super) async fn release(db: &Db, share: u32, tenants: Option<&[String]>) -> Result<Vec<Job>, StoreError> {
    if share == 0 || tenants.is_some_and(|t| t.is_empty()) {
        return Ok(Vec::new());
    }
    let filter = match tenants {
        Some(t) => {
            let marks: Vec<String> = (0..t.len()).map(|i| format!("${}", i + 3)).collect();
            format!("AND h.tenant IN ({})", marks.join(", "))
        }
        None => String::new(),
    };
    // Each held job is ranked within its tenant; it goes when its rank plus the tenant's jobs
    // already queued stays within the share.
    let sql = format!(
        "UPDATE jobs SET held = FALSE, unpublished_since = $1 WHERE id IN (\
           SELECT id FROM (\
             SELECT h.id, ROW_NUMBER() OVER (PARTITION BY h.tenant ORDER BY h.priority DESC, h.id) AS n, \
               (SELECT COUNT(*) FROM jobs q WHERE q.tenant = h.tenant AND q.status = 'enqueued' AND NOT q.held) AS queued \
             FROM jobs h WHERE h.held AND h.status = 'enqueued' {filter}\
           ) ranked WHERE ranked.n + ranked.queued <= $2\
         ) RETURNING doc"
    );
    let now = Utc::now().timestamp_millis();
    let names = tenants.unwrap_or_default();
    let docs: Vec<String> = match db {
        // One statement: SQLite runs one writer at a time.
        Db::Sqlite(pool) => {
            let mut q = sqlx::query_scalar(&sql).bind(now).bind(share as i64);
            for t in names {
                q = q.bind(t);
            }
            q.fetch_all(pool).await?
        }
        // PostgreSQL reads the counts at the statement's start: two concurrent releases could
        // both see room. A transaction-scoped advisory lock makes them take turns.
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7142001)")
                .execute(&mut *tx)
                .await?;
            let mut q = sqlx::query_scalar(&sql).bind(now).bind(share as i64);
            for t in names {
                q = q.bind(t);
            }
            let docs = q.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            docs
        }
    };
    Ok(docs.iter().map(|d| serde_json::from_str(d)).collect::<Result<_, _>>()?)
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
        Ok(crate::jobs::db::on!(&self.db, pool => sqlx::query_scalar(sql).bind(tenant).fetch_one(pool).await?))
    }
}
