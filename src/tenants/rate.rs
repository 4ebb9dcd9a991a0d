//! Rate limits per key, shared by every replica: the bucket lives in the job database, as a
//! generic cell rate algorithm (GCRA) cell: one "theoretical arrival time" per bucket, moved on by
//! one interval per admitted request, in a single conditional upsert. A request is admitted when
//! that time stays within the burst ahead of now. No replica keeps a count of its own, so three
//! replicas admit what one would.

use crate::jobs::db::Db;
use chrono::Utc;

/// The verdict on one request, and what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests per minute of the policy.
    pub per_minute: u32,
    /// Requests the key may still send at once.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When refused: seconds until one more request is admitted.
    pub retry_after_secs: u64,
}

/// Takes one request from the bucket `bucket` of a limit of `per_minute` (more than 0), whose
/// burst is `burst_secs` seconds' worth of requests (at least one).
pub async fn take(db: &Db, bucket: &str, per_minute: u32, burst_secs: u32) -> Result<Decision, sqlx::Error> {
    // Microseconds, so that even 60,000 a minute has a whole interval.
    let interval = 60_000_000 / i64::from(per_minute.max(1));
    let capacity = (u64::from(per_minute) * u64::from(burst_secs) / 60).max(1) as i64;
    let tolerance = capacity * interval;
    let now = Utc::now().timestamp_micros();
    let greatest = match db {
        Db::Sqlite(_) => "MAX",
        Db::Postgres(_) => "GREATEST",
    };
    let sql = format!(
        "INSERT INTO rate_buckets (bucket, tat) VALUES ($1, $2 + $3) \
         ON CONFLICT (bucket) DO UPDATE SET tat = {greatest}(rate_buckets.tat, $2) + $3 \
         WHERE {greatest}(rate_buckets.tat, $2) + $3 - $2 <= $4 RETURNING tat"
    );
    let admitted: Option<i64> = crate::jobs::db::on!(db, pool => sqlx::query_scalar(&sql)
        .bind(bucket).bind(now).bind(interval).bind(tolerance)
        .fetch_optional(pool).await?);
    let tat = match admitted {
        Some(tat) => tat,
        None => {
            let sql = "SELECT tat FROM rate_buckets WHERE bucket = $1";
            crate::jobs::db::on!(db, pool => sqlx::query_scalar(sql).bind(bucket).fetch_one(pool).await?)
        }
    };
    let ahead = (tat - now).max(0);
    let secs = |us: i64| (us.max(0) as u64).div_ceil(1_000_000);
    Ok(Decision {
        allowed: admitted.is_some(),
        per_minute,
        remaining: ((tolerance - ahead).max(0) / interval) as u64,
        reset_secs: secs(ahead),
        // The next request is admitted once `tat + interval - now <= tolerance`.
        retry_after_secs: secs(ahead + interval - tolerance).max(u64::from(admitted.is_none())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_then_the_rate() {
        let db = Db::open("sqlite::memory:", 1).await.unwrap();
        // 60 a minute with a 5 s burst: 5 at once, then one a second.
        let mut allowed = 0;
        for _ in 0..8 {
            allowed += take(&db, "k", 60, 5).await.unwrap().allowed as u32;
        }
        assert_eq!(allowed, 5);
        let refused = take(&db, "k", 60, 5).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!((refused.remaining, refused.retry_after_secs), (0, 1));
        assert!((4..=5).contains(&refused.reset_secs), "{refused:?}");
        assert!(take(&db, "other", 60, 5).await.unwrap().allowed, "buckets are separate");
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let again = take(&db, "k", 60, 5).await.unwrap();
        assert!(again.allowed, "{again:?}");
        assert!(!take(&db, "k", 60, 5).await.unwrap().allowed, "one per second");
    }
}
