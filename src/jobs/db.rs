//! The database that holds job state: SQLite (a file in the data folder, all-in-one's default) or
//! PostgreSQL (`MESHROOM_SVC_DATABASE_URL`, shared by every `serve` and `work` process). The
//! schema is applied at start-up from `migrations/`, one folder per backend.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// A connection pool to one of the two backends.
#[derive(Debug, Clone)]
pub enum Db {
    /// Embedded: one file, one process (or processes sharing its folder).
    Sqlite(SqlitePool),
    /// Shared by every process of a deployment.
    Postgres(PgPool),
}

/// Runs the same statement text on either backend: `$pool` is bound to the typed pool. Both accept
/// `$1`-style parameters, and every statement is written in the SQL they share.
macro_rules! on {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::jobs::db::Db::Sqlite($pool) => $body,
            $crate::jobs::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on;

/// A request waits this long for a connection before it fails (503 to API clients), so that an
/// unreachable database gives a quick answer, not a hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A PostgreSQL connection idle this long is pinged before a request uses it.
const IDLE_PING: Duration = Duration::from_secs(1);

/// SQLite waits this long for another writer (another process on the same file) before it fails:
/// a request answers 503 rather than hang.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What an operator's command (`keys ...`) waits for a running all-in-one's write: no client
/// is waiting on a 503 there, so it would rather wait out a slow disk or a burst than fail.
pub const OPERATOR_BUSY_TIMEOUT: Duration = Duration::from_secs(60);

impl Db {
    /// Connects and applies the migrations. `url` is `sqlite://PATH`, `sqlite::memory:` or
    /// `postgres://...`.
    pub async fn open(url: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // sqlx pings every connection it hands out: a second round trip on each request.
                // The pool already pings each one it takes back (a broken one is dropped there),
                // so only a connection idle a while, that may have lost its server meanwhile
                // (a restart, a network cut), is pinged before use.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= IDLE_PING {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await?;
            // Concurrent start-ups are serialized by the migrator's advisory lock.
            sqlx::migrate!("src/jobs/migrations/postgres").run(&pool).await?;
            return Ok(Db::Postgres(pool));
        }
        Self::sqlite(
            SqliteConnectOptions::from_str(url)?.busy_timeout(BUSY_TIMEOUT),
            url.contains(":memory:"),
            max_connections,
        )
        .await
    }

    /// Opens (or makes) a SQLite file at `path`, whatever characters the path holds; a write waits
    /// up to `busy` for another process's write.
    pub async fn open_file(path: &std::path::Path, max_connections: u32, busy: Duration) -> Result<Db, sqlx::Error> {
        let options = SqliteConnectOptions::new().filename(path).busy_timeout(busy);
        Self::sqlite(options, false, max_connections).await
    }

    /// A pool on `options` (which carry the busy timeout) with the service's durability settings.
    async fn sqlite(options: SqliteConnectOptions, memory: bool, max_connections: u32) -> Result<Db, sqlx::Error> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A commit is on disk when it returns: a 202 survives a power loss.
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            // Each connection to `:memory:` would be a database of its own.
            .max_connections(if memory { 1 } else { max_connections })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection to a file cannot lose its server: no ping before each use.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("src/jobs/migrations/sqlite").run(&pool).await?;
        Ok(Db::Sqlite(pool))
    }

    /// `sqlite` or `postgres`, for logs and `/ready`.
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// One round trip, for `/ready`.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }

    /// Closes the pool (SQLite checkpoints its journal into the file).
    pub async fn close(&self) {
        on!(self, pool => pool.close().await)
    }
}

/// A database URL with any password replaced, for logs.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redacted("postgres://svc:s3cret@db:5432/jobs"),
            "postgres://svc:***@db:5432/jobs"
        );
        assert_eq!(redacted("sqlite:///data/jobs.db"), "sqlite:///data/jobs.db");
    }

    #[tokio::test]
    async fn sqlite_file_is_made_and_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let db = Db::open(&url, 2).await.unwrap();
        db.ping().await.unwrap();
        db.close().await;
        // Opening again applies nothing twice.
        Db::open(&url, 2).await.unwrap().ping().await.unwrap();
    }

    #[tokio::test]
    async fn a_write_waits_for_another_writer_up_to_its_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let Db::Sqlite(service) = Db::open_file(&path, 1, BUSY_TIMEOUT).await.unwrap() else {
            unreachable!()
        };
        let Db::Sqlite(impatient) = Db::open_file(&path, 1, Duration::from_millis(100)).await.unwrap() else {
            unreachable!()
        };
        let Db::Sqlite(patient) = Db::open_file(&path, 1, Duration::from_secs(30)).await.unwrap() else {
            unreachable!()
        };
        let write = "CREATE TABLE IF NOT EXISTS t(x)";
        // The service holds the write lock, as through a slow commit.
        let mut held = service.begin().await.unwrap();
        sqlx::query("CREATE TABLE held(x)").execute(&mut *held).await.unwrap();
        let err = sqlx::query(write).execute(&impatient).await.unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        let waiting = tokio::spawn(async move { sqlx::query(write).execute(&patient).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "the patient write waits");
        held.commit().await.unwrap();
        waiting
            .await
            .unwrap()
            .expect("the write goes through once the lock is free");
    }
}
