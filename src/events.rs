//! Live job events, for the Server-Sent Events routes: one feed per process reads the jobs
//! changed in the database and broadcasts them to every stream the process holds open.
//!
//! Every write of this process wakes the feed at once (all-in-one needs no poll); writes of
//! other processes (workers, other `serve` replicas) are polled for every 500 ms. A poll reads the
//! changes after its watermark minus `LOOKBACK_MS`, since `changed_at` comes from each writer's
//! clock and a write may commit a little after its stamp; a change already sent (same version)
//! is not sent twice.

use crate::jobs::{JobView, Status, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How far back each poll looks, ms: more than commit delays and clock skew between hosts.
pub const LOOKBACK_MS: i64 = 5_000;
/// Polls for other processes' writes this often.
const POLL: Duration = Duration::from_millis(500);
/// Rows per query.
const PAGE: i64 = 2_000;

/// One job's new state.
#[derive(Debug)]
pub struct Event {
    /// The job.
    pub id: Uuid,
    /// Its tenant, to filter streams by who may see it.
    pub tenant: String,
    /// Its status.
    pub status: Status,
    /// Its write counter: a higher one is a later state.
    pub version: i64,
    /// When it changed, unix ms.
    pub changed_at: i64,
    /// The job's `updated_at`: the same one means the same view (internal changes, such as
    /// lease refreshes, bump the version but not this).
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// `{"version": v, "job": JobView}`, serialized once for every stream.
    pub data: String,
}

impl Event {
    /// The event of a job's current state.
    pub fn new(version: i64, changed_at: i64, job: crate::jobs::Job) -> Event {
        let (id, tenant, status, updated_at) = (job.id, job.tenant.clone(), job.status, job.updated_at);
        let data = serde_json::json!({"version": version, "job": JobView::from(job)}).to_string();
        Event {
            id,
            tenant,
            status,
            version,
            changed_at,
            updated_at,
            data,
        }
    }
}

/// The broadcast of job changes of one process.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Feed {
    /// Starts polling `store` (until `shutdown`) whenever a stream listens.
    pub fn start(store: Arc<Store>, shutdown: CancellationToken) -> Feed {
        let (tx, _) = broadcast::channel(4096);
        tokio::spawn(run(store, tx.clone(), shutdown));
        Feed { tx }
    }

    /// Changes from now on. A receiver that falls behind gets `Lagged`: it re-reads what it shows.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn run(store: Arc<Store>, tx: broadcast::Sender<Arc<Event>>, shutdown: CancellationToken) {
    let wake = store.changes();
    let mut watermark = now_ms();
    let mut sent: HashMap<Uuid, Sent> = HashMap::new();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
        if tx.receiver_count() == 0 {
            // Nobody listens: streams opened later catch up from the database themselves.
            watermark = now_ms();
            sent.clear();
            continue;
        }
        match poll(&store, &tx, watermark, &mut sent).await {
            Ok(w) => {
                watermark = w;
                failing = false;
            }
            Err(e) if !failing => {
                failing = true;
                log::warn!("live events: cannot read job changes: {e}");
            }
            Err(_) => {}
        }
        sent.retain(|_, s| s.changed_at > watermark - 2 * LOOKBACK_MS);
    }
}

/// What the feed last sent of a job.
#[derive(Debug)]
struct Sent {
    version: i64,
    changed_at: i64,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// Sends the changes after `watermark - LOOKBACK_MS` not sent yet; returns the new watermark.
async fn poll(
    store: &Store,
    tx: &broadcast::Sender<Arc<Event>>,
    mut watermark: i64,
    sent: &mut HashMap<Uuid, Sent>,
) -> Result<i64, crate::jobs::StoreError> {
    let mut since = watermark - LOOKBACK_MS;
    loop {
        let page = store.changed_since(since, PAGE).await?;
        for c in &page {
            watermark = watermark.max(c.changed_at);
            if sent.get(&c.id).is_some_and(|s| s.version >= c.version) {
                continue;
            }
            // The job may have changed again (or gone) since: send what it is now, unless only
            // internal fields moved (a lease refresh in the look-back window).
            if let Some((version, job)) = store.get_versioned(c.id).await? {
                let updated_at = job.updated_at;
                let news = sent.get(&c.id).is_none_or(|s| s.updated_at != updated_at);
                sent.insert(
                    c.id,
                    Sent {
                        version,
                        changed_at: c.changed_at,
                        updated_at,
                    },
                );
                if news {
                    let _ = tx.send(Arc::new(Event::new(version, c.changed_at, job)));
                }
            }
        }
        match page.last() {
            // Rows stamped in the same ms as the page's last come again; they are known.
            Some(last) if page.len() as i64 == PAGE && last.changed_at > since => since = last.changed_at - 1,
            _ => return Ok(watermark),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Db, Job};

    #[tokio::test]
    async fn a_write_reaches_subscribers_once_with_its_version() {
        let store = Arc::new(Store::new(Db::open("sqlite::memory:", 1).await.unwrap()));
        let feed = Feed::start(store.clone(), CancellationToken::new());
        let mut rx = feed.subscribe();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let job = store.insert(Job::new("p".into(), 60)).await.unwrap().job;
        let first = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.id, first.version), (job.id, 1));
        store.update(job.id, |j| j.progress.percent = 10.0).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.version, 2);
        let v: serde_json::Value = serde_json::from_str(&second.data).unwrap();
        assert_eq!(v["job"]["progress"]["percent"], 10.0);
        // Later polls look back over the same rows and send nothing again.
        let again = tokio::time::timeout(Duration::from_millis(1200), rx.recv()).await;
        assert!(again.is_err(), "sent twice: {again:?}");
    }
}
