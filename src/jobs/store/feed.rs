//! The store's queries for live events: jobs changed since a time, and the engine log lines that
//! workers ship to the database so that any replica can follow a running job.

use super::{key, Store, StoreError};
use crate::jobs::db::on;
use uuid::Uuid;

/// A job's change, as the feed polls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// The job.
    pub id: Uuid,
    /// Its write counter: a higher one is a later state.
    pub version: i64,
    /// When it changed, unix ms (the writer's clock).
    pub changed_at: i64,
}

/// Lines kept per job: the console follows the end of the log; the whole of it is stored with
/// the results.
pub const LOG_LINES_KEPT: i64 = 5000;

impl Store {
    /// Jobs changed after `since` (unix ms), oldest change first, at most `limit`.
    pub async fn changed_since(&self, since: i64, limit: i64) -> Result<Vec<Changed>, StoreError> {
        let sql = "SELECT id, version, changed_at FROM jobs WHERE changed_at > $1 ORDER BY changed_at LIMIT $2";
        let rows: Vec<(Vec<u8>, i64, i64)> =
            on!(self.db(), pool => sqlx::query_as(sql).bind(since).bind(limit).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .filter_map(|(id, version, changed_at)| {
                Some(Changed {
                    id: Uuid::from_slice(&id).ok()?,
                    version,
                    changed_at,
                })
            })
            .collect())
    }

    /// A job with its version.
    pub async fn get_versioned(&self, id: Uuid) -> Result<Option<(i64, crate::jobs::Job)>, StoreError> {
        self.read(id).await
    }

    /// The last line number of a job's log (0 when it has none).
    pub async fn log_end(&self, id: Uuid) -> Result<i64, StoreError> {
        let sql = "SELECT COALESCE(MAX(seq), 0) FROM job_log WHERE job_id = $1";
        Ok(on!(self.db(), pool => sqlx::query_scalar(sql).bind(key(id)).fetch_one(pool).await?))
    }

    /// Appends lines numbered from `first` on, then forgets those older than the last
    /// `LOG_LINES_KEPT`. Only the worker running the job calls it.
    pub async fn log_append(&self, id: Uuid, first: i64, lines: &[String]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        // A few hundred rows per statement stays under both backends' parameter limits.
        for (n, chunk) in lines.chunks(500).enumerate() {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3))
                .collect();
            let sql = format!(
                "INSERT INTO job_log (job_id, seq, line) VALUES {} ON CONFLICT (job_id, seq) DO NOTHING",
                values.join(", ")
            );
            let base = first + (n * 500) as i64;
            on!(self.db(), pool => {
                let mut q = sqlx::query(&sql).bind(key(id));
                for (i, line) in chunk.iter().enumerate() {
                    q = q.bind(base + i as i64).bind(line);
                }
                q.execute(pool).await.map(|_| ())?
            });
        }
        let last = first + lines.len() as i64 - 1;
        let sql = "DELETE FROM job_log WHERE job_id = $1 AND seq <= $2";
        on!(self.db(), pool => sqlx::query(sql).bind(key(id)).bind(last - LOG_LINES_KEPT).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Lines of a job's log after line `after`, at most `limit`, as (number, text).
    pub async fn log_after(&self, id: Uuid, after: i64, limit: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let sql = "SELECT seq, line FROM job_log WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
        Ok(on!(self.db(), pool => sqlx::query_as(sql).bind(key(id)).bind(after).bind(limit).fetch_all(pool).await?))
    }

    /// Forgets a job's log lines (with the job).
    pub(super) async fn log_remove(&self, id: Uuid) -> Result<(), StoreError> {
        let sql = "DELETE FROM job_log WHERE job_id = $1";
        on!(self.db(), pool => sqlx::query(sql).bind(key(id)).execute(pool).await.map(|_| ())?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::jobs::{Db, Job, Store};

    async fn store() -> Store {
        Store::new(Db::open("sqlite::memory:", 1).await.unwrap())
    }

    #[tokio::test]
    async fn changes_are_seen_after_their_time_with_their_version() {
        let store = store().await;
        let before = chrono::Utc::now().timestamp_millis() - 1;
        let job = store.insert(Job::new("p".into(), 60)).await.unwrap().job;
        let seen = store.changed_since(before, 10).await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].id, seen[0].version), (job.id, 1));
        store.update(job.id, |j| j.progress.percent = 5.0).await.unwrap();
        let seen = store.changed_since(before, 10).await.unwrap();
        assert_eq!(seen[0].version, 2);
        assert!(store.changed_since(seen[0].changed_at, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn log_keeps_order_and_its_last_lines() {
        let store = store().await;
        let id = uuid::Uuid::now_v7();
        assert_eq!(store.log_end(id).await.unwrap(), 0);
        let lines: Vec<String> = (1..=6000).map(|i| format!("line {i}")).collect();
        store.log_append(id, 1, &lines).await.unwrap();
        assert_eq!(store.log_end(id).await.unwrap(), 6000);
        let after = store.log_after(id, 0, 3).await.unwrap();
        assert_eq!(after[0], (1001, "line 1001".to_string()), "only the last 5000 kept");
        let tail = store.log_after(id, 5998, 10).await.unwrap();
        assert_eq!(tail.len(), 2);
        store.log_remove(id).await.unwrap();
        assert_eq!(store.log_end(id).await.unwrap(), 0);
    }
}
