//! Job records in storage, read through on every call so that every process sees the same state.
//!
//! - `jobs/{id}/job.json`: the record.
//! - `jobs/{id}/cancel`: a cancel marker, written by the API, polled by the worker running the job.
//! - `index/{inverted id}`: one empty object per job; ids are UUIDv7, so ascending inverted ids
//!   list newest first, as S3 can only list in ascending order.
//! - `idempotency/{sha256 of key}`: the id of the job submitted with that `Idempotency-Key`.
//! - `webhooks/gone/{sha256 of URL}`: a webhook endpoint that answered 410 Gone.

use super::{Job, Status};
use crate::storage::{Storage, StorageError};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Job store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Storage could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A record could not be encoded or decoded.
    #[error("job record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Index entries read per list call at most, so a rare status filter cannot scan forever: the page
/// may then hold fewer jobs than asked, with a cursor to go on.
const SCAN_LIMIT: usize = 1000;

/// Reads and writes job records.
#[derive(Debug)]
pub struct Store {
    storage: Storage,
    // Read-modify-write of a record within this process is serialized; across processes each
    // record has one writer at a time (the API before and after a run, the worker during it).
    writes: Mutex<()>,
}

fn record_key(id: Uuid) -> String {
    Job::key(id, "job.json")
}

fn index_name(id: Uuid) -> String {
    format!("{:032x}", u128::MAX - id.as_u128())
}

fn index_id(name: &str) -> Option<Uuid> {
    u128::from_str_radix(name, 16)
        .ok()
        .map(|inv| Uuid::from_u128(u128::MAX - inv))
}

fn gone_key(url: &str) -> String {
    format!("webhooks/gone/{:x}", Sha256::digest(url.as_bytes()))
}

fn idempotency_key(key: &str) -> String {
    format!("idempotency/{:x}", Sha256::digest(key.as_bytes()))
}

impl Store {
    /// A store over `storage`.
    pub fn new(storage: Storage) -> Store {
        Store {
            storage,
            writes: Mutex::new(()),
        }
    }

    /// Stores a new job. With an idempotency key already used, returns the earlier job instead
    /// (compare ids to tell).
    pub async fn insert(&self, job: Job) -> Result<Job, StoreError> {
        let _guard = self.writes.lock().await;
        if let Some(key) = &job.idempotency_key {
            if let Some(earlier) = self.find_idempotent(key).await? {
                return Ok(earlier);
            }
        }
        self.write(&job).await?;
        self.storage
            .put_bytes(&format!("index/{}", index_name(job.id)), b"")
            .await?;
        if let Some(key) = &job.idempotency_key {
            self.storage
                .put_bytes(&idempotency_key(key), job.id.to_string().as_bytes())
                .await?;
        }
        Ok(job)
    }

    /// The job submitted with this idempotency key, if any.
    pub async fn find_idempotent(&self, key: &str) -> Result<Option<Job>, StoreError> {
        let Some(bytes) = self.storage.get_bytes(&idempotency_key(key)).await? else {
            return Ok(None);
        };
        match String::from_utf8_lossy(&bytes).parse::<Uuid>() {
            Ok(id) => self.get(id).await,
            Err(_) => Ok(None),
        }
    }

    /// One job.
    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        match self.storage.get_bytes(&record_key(id)).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Applies `f` to a job and stores the result; `None` if the job does not exist. Nothing is
    /// written when `f` changes nothing.
    pub async fn update<R>(&self, id: Uuid, f: impl FnOnce(&mut Job) -> R) -> Result<Option<R>, StoreError> {
        let _guard = self.writes.lock().await;
        let Some(current) = self.get(id).await? else {
            return Ok(None);
        };
        let mut job = current.clone();
        let out = f(&mut job);
        if job != current {
            job.updated_at = chrono::Utc::now();
            self.write(&job).await?;
        }
        Ok(Some(out))
    }

    /// Jobs newest first, optionally of one status, after the `after` id; and the cursor of the
    /// next page, if there may be one.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<(Vec<Job>, Option<Uuid>), StoreError> {
        let mut cursor = after.map(index_name);
        let mut jobs = Vec::new();
        let mut scanned = 0;
        while scanned < SCAN_LIMIT {
            let batch = (limit + 1).max(50).min(SCAN_LIMIT - scanned);
            let names = self.storage.list_after("index/", cursor.as_deref(), batch).await?;
            let exhausted = names.len() < batch;
            for name in names {
                scanned += 1;
                cursor = Some(name.clone());
                let Some(id) = index_id(&name) else { continue };
                // A deleted job may leave its index entry for a moment: skip it.
                let Some(job) = self.get(id).await? else { continue };
                if status.is_none_or(|s| job.status == s) {
                    if jobs.len() == limit {
                        return Ok((jobs.clone(), jobs.last().map(|j: &Job| j.id)));
                    }
                    jobs.push(job);
                }
            }
            if exhausted {
                return Ok((jobs, None));
            }
        }
        Ok((jobs, cursor.and_then(|c| index_id(&c))))
    }

    /// Every job id, newest first (start-up recovery and retention).
    pub async fn all_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let names = self.storage.list_after("index/", cursor.as_deref(), 1000).await?;
            let done = names.len() < 1000;
            cursor = names.last().cloned();
            ids.extend(names.iter().filter_map(|n| index_id(n)));
            if done {
                return Ok(ids);
            }
        }
    }

    /// Deletes a job and every file it has in storage.
    pub async fn remove(&self, id: Uuid) -> Result<(), StoreError> {
        let _guard = self.writes.lock().await;
        let job = self.get(id).await?;
        // The index entry first: a crash half-way leaves files no listing shows, never a listed
        // job without its record.
        self.storage.delete(&format!("index/{}", index_name(id))).await?;
        if let Some(key) = job.and_then(|j| j.idempotency_key) {
            self.storage.delete(&idempotency_key(&key)).await?;
        }
        self.storage.delete_prefix(&Job::key(id, "")).await?;
        Ok(())
    }

    /// Records that a webhook endpoint answered 410 Gone.
    pub async fn mark_endpoint_gone(&self, url: &str) -> Result<(), StoreError> {
        Ok(self.storage.put_bytes(&gone_key(url), url.as_bytes()).await?)
    }

    /// True when a webhook endpoint answered 410 Gone before.
    pub async fn endpoint_gone(&self, url: &str) -> Result<bool, StoreError> {
        Ok(self.storage.exists(&gone_key(url)).await?)
    }

    /// Leaves a cancel marker for whichever worker runs the job.
    pub async fn request_cancel(&self, id: Uuid) -> Result<(), StoreError> {
        Ok(self.storage.put_bytes(&Job::key(id, "cancel"), b"").await?)
    }

    /// True when a cancel marker is present.
    pub async fn cancel_requested(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.storage.exists(&Job::key(id, "cancel")).await?)
    }

    /// Removes the cancel marker (on retry).
    pub async fn clear_cancel(&self, id: Uuid) -> Result<(), StoreError> {
        Ok(self.storage.delete(&Job::key(id, "cancel")).await?)
    }

    async fn write(&self, job: &Job) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job)?;
        Ok(self.storage.put_bytes(&record_key(job.id), &bytes).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> Store {
        Store::new(Storage::local(dir).unwrap())
    }

    async fn ids(page: (Vec<Job>, Option<Uuid>)) -> (Vec<Uuid>, Option<Uuid>) {
        (page.0.iter().map(|j| j.id).collect(), page.1)
    }

    #[test]
    fn index_names_sort_newest_first() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(a < b && index_name(b) < index_name(a));
        assert_eq!(index_id(&index_name(a)), Some(a));
    }

    #[tokio::test]
    async fn lists_newest_first_with_cursors_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut all = Vec::new();
        for _ in 0..5 {
            all.push(s.insert(Job::new("draft".into(), 60)).await.unwrap().id);
        }
        s.update(all[1], |j| j.finish(Status::Failed, None)).await.unwrap();
        let s = store(dir.path());
        assert_eq!(
            ids(s.list(None, 2, None).await.unwrap()).await,
            (vec![all[4], all[3]], Some(all[3]))
        );
        assert_eq!(
            ids(s.list(None, 2, Some(all[3])).await.unwrap()).await,
            (vec![all[2], all[1]], Some(all[1]))
        );
        assert_eq!(
            ids(s.list(None, 2, Some(all[1])).await.unwrap()).await,
            (vec![all[0]], None)
        );
        assert_eq!(
            ids(s.list(Some(Status::Failed), 10, None).await.unwrap()).await,
            (vec![all[1]], None)
        );
        assert_eq!(
            s.all_ids().await.unwrap(),
            all.iter().rev().copied().collect::<Vec<_>>()
        );
        s.remove(all[2]).await.unwrap();
        assert_eq!(s.all_ids().await.unwrap().len(), 4);
        assert!(s.get(all[2]).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn idempotency_key_returns_the_first_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut a = Job::new("draft".into(), 60);
        a.idempotency_key = Some("k".into());
        let mut b = Job::new("draft".into(), 60);
        b.idempotency_key = Some("k".into());
        let first = s.insert(a).await.unwrap();
        assert_eq!(s.insert(b).await.unwrap().id, first.id);
        assert_eq!(
            store(dir.path()).find_idempotent("k").await.unwrap().unwrap().id,
            first.id
        );
        s.remove(first.id).await.unwrap();
        assert!(s.find_idempotent("k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn cancel_markers() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let id = s.insert(Job::new("draft".into(), 60)).await.unwrap().id;
        assert!(!s.cancel_requested(id).await.unwrap());
        s.request_cancel(id).await.unwrap();
        assert!(s.cancel_requested(id).await.unwrap());
        s.clear_cancel(id).await.unwrap();
        assert!(!s.cancel_requested(id).await.unwrap());
    }
}
