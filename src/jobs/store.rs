//! Job records, kept as `jobs/{id}/job.json` in storage with an in-memory index for reads.
//! Every change is written to storage before it is visible, so a crash loses nothing acknowledged.

use super::{Job, Status};
use crate::storage::{Storage, StorageError};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Job store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Storage could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A record could not be encoded.
    #[error("job record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Reads and writes job records.
#[derive(Debug)]
pub struct Store {
    storage: Storage,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: BTreeMap<Uuid, Job>,
    idempotency: HashMap<String, Uuid>,
}

fn record_key(id: Uuid) -> String {
    Job::key(id, "job.json")
}

impl Store {
    /// Loads every job record from storage; folders without a record (a submit that crashed before
    /// answering) are removed.
    pub async fn open(storage: Storage) -> Result<Store, StoreError> {
        let mut inner = Inner::default();
        for name in storage.list_children("jobs/").await? {
            let Ok(id) = name.parse::<Uuid>() else {
                continue;
            };
            match storage.get_bytes(&record_key(id)).await? {
                Some(bytes) => match serde_json::from_slice::<Job>(&bytes) {
                    Ok(job) => inner.add(job),
                    Err(e) => log::error!("job {id}: unreadable record left in place: {e}"),
                },
                None => {
                    log::warn!("job {id}: removing files of a submit that never completed");
                    storage.delete_prefix(&Job::key(id, "")).await?;
                }
            }
        }
        Ok(Store {
            storage,
            inner: Mutex::new(inner),
        })
    }

    /// Stores a new job. With an idempotency key already used, returns the earlier job instead
    /// (compare ids to tell).
    pub async fn insert(&self, job: Job) -> Result<Job, StoreError> {
        let mut inner = self.inner.lock().await;
        if let Some(earlier) = job.idempotency_key.as_ref().and_then(|k| inner.idempotency.get(k)) {
            return Ok(inner.jobs[earlier].clone());
        }
        self.write(&job).await?;
        inner.add(job.clone());
        Ok(job)
    }

    /// The job submitted with this idempotency key, if any.
    pub async fn find_idempotent(&self, key: &str) -> Option<Job> {
        let inner = self.inner.lock().await;
        inner.idempotency.get(key).map(|id| inner.jobs[id].clone())
    }

    /// One job.
    pub async fn get(&self, id: Uuid) -> Option<Job> {
        self.inner.lock().await.jobs.get(&id).cloned()
    }

    /// Applies `f` to a job and stores the result; `None` if the job does not exist. Nothing is
    /// written when `f` changes nothing, and memory is unchanged if the write fails.
    pub async fn update<R>(&self, id: Uuid, f: impl FnOnce(&mut Job) -> R) -> Result<Option<R>, StoreError> {
        let mut inner = self.inner.lock().await;
        let Some(current) = inner.jobs.get(&id) else {
            return Ok(None);
        };
        let mut job = current.clone();
        let out = f(&mut job);
        if job != *current {
            job.updated_at = chrono::Utc::now();
            self.write(&job).await?;
            inner.jobs.insert(id, job);
        }
        Ok(Some(out))
    }

    /// Jobs newest first, optionally of one status, starting after the `after` id (the cursor).
    pub async fn list(&self, status: Option<Status>, limit: usize, after: Option<Uuid>) -> Vec<Job> {
        let inner = self.inner.lock().await;
        let range = match after {
            Some(cursor) => inner.jobs.range(..cursor),
            None => inner.jobs.range(..),
        };
        range
            .rev()
            .map(|(_, j)| j)
            .filter(|j| status.is_none_or(|s| j.status == s))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every job, oldest first (start-up recovery and retention).
    pub async fn all(&self) -> Vec<Job> {
        self.inner.lock().await.jobs.values().cloned().collect()
    }

    /// Number of jobs with this status.
    pub async fn count(&self, status: Status) -> usize {
        self.inner
            .lock()
            .await
            .jobs
            .values()
            .filter(|j| j.status == status)
            .count()
    }

    /// Deletes a job and every file it has in storage.
    pub async fn remove(&self, id: Uuid) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().await;
        self.storage.delete_prefix(&Job::key(id, "")).await?;
        if let Some(job) = inner.jobs.remove(&id) {
            if let Some(key) = job.idempotency_key {
                inner.idempotency.remove(&key);
            }
        }
        Ok(())
    }

    async fn write(&self, job: &Job) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job)?;
        Ok(self.storage.put_bytes(&record_key(job.id), &bytes).await?)
    }
}

impl Inner {
    fn add(&mut self, job: Job) {
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert(key.clone(), job.id);
        }
        self.jobs.insert(job.id, job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &std::path::Path) -> Store {
        Store::open(Storage::local(dir).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn survives_reopen_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(s.insert(Job::new("draft".into(), 60)).await.unwrap().id);
        }
        s.update(ids[1], |j| j.finish(Status::Failed, None)).await.unwrap();
        drop(s);
        let s = store(dir.path()).await;
        let page: Vec<Uuid> = s.list(None, 2, None).await.iter().map(|j| j.id).collect();
        assert_eq!(page, vec![ids[4], ids[3]]);
        let next: Vec<Uuid> = s.list(None, 2, Some(ids[3])).await.iter().map(|j| j.id).collect();
        assert_eq!(next, vec![ids[2], ids[1]]);
        let failed: Vec<Uuid> = s
            .list(Some(Status::Failed), 10, None)
            .await
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(failed, vec![ids[1]]);
    }

    #[tokio::test]
    async fn idempotency_key_returns_the_first_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let mut a = Job::new("draft".into(), 60);
        a.idempotency_key = Some("k".into());
        let mut b = Job::new("draft".into(), 60);
        b.idempotency_key = Some("k".into());
        let first = s.insert(a).await.unwrap();
        assert_eq!(s.insert(b).await.unwrap().id, first.id);
        drop(s);
        assert_eq!(store(dir.path()).await.find_idempotent("k").await.unwrap().id, first.id);
    }

    #[tokio::test]
    async fn half_submitted_folders_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let id = Uuid::now_v7();
        storage.put_bytes(&Job::key(id, "inputs/a.jpg"), b"x").await.unwrap();
        let s = Store::open(storage.clone()).await.unwrap();
        assert!(s.get(id).await.is_none());
        assert!(storage.list_children("jobs/").await.unwrap().is_empty());
    }
}
