//! Job records in storage, read through on every call so that every process sees the same state
//! (listings reuse a record only when the listing shows its content unchanged).
//!
//! - `records/{inverted id}`: the record, as JSON. Ids are UUIDv7, so ascending inverted ids list
//!   newest first, as S3 can only list in ascending order; and one object per job means a submit
//!   costs one storage write.
//! - `jobs/{id}/cancel`: a cancel marker, written by the API, polled by the worker running the job.
//! - `idempotency/{sha256 of key}`: the id of the job submitted with that `Idempotency-Key`.
//! - `webhooks/gone/{sha256 of URL}`: a webhook endpoint that answered 410 Gone.

use super::{Job, Status};
use crate::storage::{Storage, StorageError};
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
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

/// Records read at once when a page is listed.
const READ_AHEAD: usize = 16;

/// Read-modify-write turns of records within this process; a job always takes the same one.
const TURNS: usize = 64;

/// Records kept from listings, at most (a few KiB each).
const LISTED: usize = 4096;

/// Reads and writes job records.
#[derive(Debug)]
pub struct Store {
    storage: Storage,
    // Read-modify-write of a record within this process is serialized, per record (striped, so
    // unrelated jobs rarely wait on each other); across processes each record has one writer at a
    // time (the API before and after a run, the worker during it).
    turns: Vec<Mutex<()>>,
    // Submits with an Idempotency-Key look the key up and store it as one step.
    idempotent: Mutex<()>,
    // Records read for listings, with the entity tag they were listed with: a listing that shows
    // the same tag again needs no read, so a page costs one request when nothing changed. Every
    // write changes `updated_at`, hence the content and the tag; local storage gives no tags.
    listed: std::sync::Mutex<HashMap<Uuid, (String, Job)>>,
}

/// The storage key of a job's record.
pub fn record_key(id: Uuid) -> String {
    format!("records/{}", index_name(id))
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
            turns: (0..TURNS).map(|_| Mutex::new(())).collect(),
            idempotent: Mutex::new(()),
            listed: Default::default(),
        }
    }

    fn turn(&self, id: Uuid) -> &Mutex<()> {
        // The low bits of a UUIDv7 are random.
        &self.turns[(id.as_u128() % TURNS as u128) as usize]
    }

    /// Stores a new job. With an idempotency key already used, returns the earlier job instead
    /// (compare ids to tell).
    pub async fn insert(&self, job: Job) -> Result<Job, StoreError> {
        let Some(key) = &job.idempotency_key else {
            self.write(&job).await?;
            return Ok(job);
        };
        let _guard = self.idempotent.lock().await;
        if let Some(earlier) = self.find_idempotent(key).await? {
            return Ok(earlier);
        }
        self.write(&job).await?;
        self.storage
            .put_bytes(&idempotency_key(key), job.id.to_string().as_bytes())
            .await?;
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
        let _guard = self.turn(id).lock().await;
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
        if status.is_none() {
            // Unfiltered, a page is the next `limit` records, and one name more tells that
            // another page follows: no record is read in vain.
            let mut names = self
                .storage
                .list_tagged("records/", cursor.as_deref(), limit + 1)
                .await?;
            let more = names.len() > limit;
            names.truncate(limit);
            let next = more.then(|| names.last().and_then(|(n, _)| index_id(n))).flatten();
            let jobs: Vec<Option<Job>> = futures_util::stream::iter(names)
                .map(|(name, tag)| async move { self.record(&name, tag).await })
                .buffered(READ_AHEAD)
                .try_collect()
                .await?;
            // A job deleted since the listing is left out.
            return Ok((jobs.into_iter().flatten().collect(), next));
        }
        let mut jobs = Vec::new();
        let mut scanned = 0;
        while scanned < SCAN_LIMIT {
            let batch = (limit + 1).max(50).min(SCAN_LIMIT - scanned);
            let names = self.storage.list_tagged("records/", cursor.as_deref(), batch).await?;
            let exhausted = names.len() < batch;
            // Records are read several at a time, in order.
            let mut records = futures_util::stream::iter(names)
                .map(|(name, tag)| async move { (name.clone(), self.record(&name, tag).await) })
                .buffered(READ_AHEAD);
            while let Some((name, record)) = records.next().await {
                scanned += 1;
                cursor = Some(name);
                // A job deleted since the listing is skipped.
                let Some(job) = record? else { continue };
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

    /// The record listed under `name` with entity tag `tag`; `None` if it is gone, or if the
    /// name is no record's.
    async fn record(&self, name: &str, tag: Option<String>) -> Result<Option<Job>, StoreError> {
        let Some(id) = index_id(name) else { return Ok(None) };
        if let Some(tag) = &tag {
            if let Some((seen, job)) = self.listed.lock().expect("lock").get(&id) {
                if seen == tag {
                    return Ok(Some(job.clone()));
                }
            }
        }
        let job = self.get(id).await?;
        if let (Some(tag), Some(job)) = (tag, &job) {
            let mut listed = self.listed.lock().expect("lock");
            if listed.len() >= LISTED {
                listed.clear(); // rare: a hot first page is read again once
            }
            listed.insert(id, (tag, job.clone()));
        }
        Ok(job)
    }

    /// Every job id, newest first (start-up recovery and retention).
    pub async fn all_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let names = self.storage.list_after("records/", cursor.as_deref(), 1000).await?;
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
        let _guard = self.turn(id).lock().await;
        self.listed.lock().expect("lock").remove(&id);
        let job = self.get(id).await?;
        // The record first: a crash half-way leaves files no listing shows, never a listed job
        // without its files.
        self.storage.delete(&record_key(id)).await?;
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
mod tests;
