//! The store's queries for sweeps: recovery, retention, pending webhooks and the outbox.

use super::{key, Store, StoreError};
use crate::jobs::db::{on, Db};
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

    /// Up to 100 jobs stored for the queue whose message was not confirmed published since
    /// `before` (a crash or a broker outage between commit and publish), oldest first.
    pub async fn unpublished(&self, before: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        let sql = "SELECT doc FROM jobs WHERE unpublished_since < $1 ORDER BY id LIMIT 100";
        self.docs(sql, Some(before.timestamp_millis())).await
    }

    /// Takes the publishing of an unpublished job for this process: true for exactly one of
    /// several processes that try, until `before` passes again.
    pub async fn take_unpublished(&self, id: Uuid, before: DateTime<Utc>) -> Result<bool, StoreError> {
        let sql = "UPDATE jobs SET unpublished_since = $2 WHERE id = $1 AND unpublished_since < $3";
        let now = Utc::now().timestamp_millis();
        let taken = on!(&self.db, pool => sqlx::query(sql)
            .bind(key(id)).bind(now).bind(before.timestamp_millis())
            .execute(pool).await?.rows_affected());
        Ok(taken == 1)
    }

    /// Records that these jobs' messages are with the queue, in one statement.
    pub async fn published(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // A row already marked is left alone: writing it again would only make a dead version.
        const WHERE: &str = "UPDATE jobs SET unpublished_since = NULL WHERE unpublished_since IS NOT NULL AND id";
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| key(*id)).collect();
        match &self.db {
            // One statement text for any number of ids: prepared once per connection.
            Db::Postgres(pool) => {
                let sql = format!("{WHERE} = ANY($1)");
                sqlx::query(&sql).bind(keys).execute(pool).await?;
            }
            // SQLite has no arrays; its statements are prepared in process.
            Db::Sqlite(pool) => {
                let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
                let sql = format!("{WHERE} IN ({})", marks.join(", "));
                let mut q = sqlx::query(&sql);
                for k in keys {
                    q = q.bind(k);
                }
                q.execute(pool).await?;
            }
        }
        Ok(())
    }

    async fn docs(&self, sql: &str, param: Option<i64>) -> Result<Vec<Job>, StoreError> {
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
