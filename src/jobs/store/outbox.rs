//! The outbox: a narrow row per job stored for the queue whose message is not confirmed yet
//! (table `outbox`, migration 0006/0007). It is written in the same transaction as the change
//! that puts a job in the queue (a submit, a release, a retry), and deleted once the broker has
//! confirmed the message; a row left too long is the sweep's (`app::outbox`). A table of its own
//! so that confirming deletes a small row instead of writing the job row, and each of its
//! indexes, a second time.

use super::{key, Store, StoreError};
use crate::jobs::db::{on, Db};
use crate::jobs::Job;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Marks a job for the queue, or stamps its mark anew (a retry of a job marked before).
pub(super) const MARK: &str =
    "INSERT INTO outbox (id, since) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET since = excluded.since";

/// Marks each of `ids` in the caller's SQLite transaction: SQLite has no statement that writes
/// two tables, so a change and its marks commit together this way (one fsync).
pub(super) async fn mark_each(tx: &mut sqlx::SqliteConnection, ids: &[&[u8]], now: i64) -> Result<(), sqlx::Error> {
    for id in ids {
        sqlx::query(MARK).bind(*id).bind(now).execute(&mut *tx).await?;
    }
    Ok(())
}

impl Store {
    /// Up to 100 jobs stored for the queue whose message was not confirmed published since
    /// `before` (a crash or a broker outage between commit and publish), oldest first.
    pub async fn unpublished(&self, before: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        let sql = "SELECT jobs.doc FROM outbox JOIN jobs ON jobs.id = outbox.id \
                   WHERE outbox.since < $1 ORDER BY outbox.id LIMIT 100";
        self.docs(sql, Some(before.timestamp_millis())).await
    }

    /// Takes the publishing of an unpublished job for this process: true for exactly one of
    /// several processes that try, until `before` passes again.
    pub async fn take_unpublished(&self, id: Uuid, before: DateTime<Utc>) -> Result<bool, StoreError> {
        let sql = "UPDATE outbox SET since = $2 WHERE id = $1 AND since < $3";
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
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| key(*id)).collect();
        match &self.db {
            // One statement text for any number of ids: prepared once per connection. Its commit
            // does not wait for the WAL flush (`synchronous_commit` off for this transaction
            // only, set inside the statement to keep one round trip): a delete lost in a crash
            // only leaves a mark, whose job the sweep publishes again, and the claim runs a job
            // once however many messages it has. The flushes saved are the submits' to share.
            Db::Postgres(pool) => {
                let sql = "DELETE FROM outbox WHERE id = ANY($1) \
                           AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'";
                sqlx::query(sql).bind(keys).execute(pool).await?;
            }
            // SQLite has no arrays; its statements are prepared in process.
            Db::Sqlite(pool) => {
                let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
                let sql = format!("DELETE FROM outbox WHERE id IN ({})", marks.join(", "));
                let mut q = sqlx::query(&sql);
                for k in keys {
                    q = q.bind(k);
                }
                q.execute(pool).await?;
            }
        }
        Ok(())
    }

    /// True while a job has a mark in the outbox.
    #[cfg(test)]
    pub(crate) async fn is_unpublished(&self, id: Uuid) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) FROM outbox WHERE id = $1";
        let n: i64 = on!(&self.db, pool => sqlx::query_scalar(sql).bind(key(id)).fetch_one(pool).await?);
        Ok(n > 0)
    }
}
