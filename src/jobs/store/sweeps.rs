//! The store's queries for sweeps: recovery, retention and pending webhooks (the outbox's are in
//! `outbox`).

use super::{Store, StoreError};
use crate::jobs::db::on;
use crate::jobs::Job;
use chrono::{DateTime, Utc};
use uuid::Uuid;

impl Store {
    /// Jobs enqueued (and not held) or processing, oldest first (all-in-one's recovery at start).
    pub async fn unfinished(&self) -> Result<Vec<Job>, StoreError> {
        let sql = "SELECT doc FROM jobs WHERE status IN ('enqueued', 'processing') AND NOT held ORDER BY id";
        self.docs(sql, None).await
    }

    /// Jobs whose webhook has attempts to come.
    pub async fn pending_webhooks(&self) -> Result<Vec<Uuid>, StoreError> {
        let jobs = self
            .docs("SELECT doc FROM jobs WHERE webhook_pending ORDER BY id", None)
            .await?;
        Ok(jobs.into_iter().map(|j| j.id).collect())
    }

    /// The webhook backlog: deliveries with attempts to come, and when the oldest of their jobs
    /// finished (unix ms).
    pub async fn webhook_backlog(&self) -> Result<(i64, Option<i64>), StoreError> {
        let sql = "SELECT COUNT(*), MIN(finished_at) FROM jobs WHERE webhook_pending";
        Ok(on!(self.db(), pool => sqlx::query_as(sql).fetch_one(pool).await?))
    }

    /// Up to 100 final jobs that finished before `cutoff` and have no webhook attempt to come.
    pub async fn expired(&self, cutoff: DateTime<Utc>) -> Result<Vec<Uuid>, StoreError> {
        let sql = "SELECT doc FROM jobs WHERE finished_at < $1 AND NOT webhook_pending ORDER BY finished_at LIMIT 100";
        let jobs = self.docs(sql, Some(cutoff.timestamp_millis())).await?;
        Ok(jobs.into_iter().map(|j| j.id).collect())
    }

    pub(super) async fn docs(&self, sql: &str, param: Option<i64>) -> Result<Vec<Job>, StoreError> {
        let docs: Vec<String> = on!(&self.db, pool => {
            let mut q = sqlx::query_scalar(sql);
            if let Some(p) = param {
                q = q.bind(p);
            }
            q.fetch_all(pool).await?
        });
        Ok(docs.iter().map(|d| serde_json::from_str(d)).collect::<Result<_, _>>()?)
    }
}
