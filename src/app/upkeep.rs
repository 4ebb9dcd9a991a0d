//! Upkeep of the stored jobs: recovery at start (all-in-one), deletion with their files, and the
//! retention sweep.

use super::{App, StartError};
use crate::jobs::{Job, Status, StoreError};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

impl App {
    /// In-process queue only: puts jobs that were enqueued or processing when the process
    /// stopped back in the queue, oldest first, and resumes pending webhook deliveries.
    pub async fn recover(self: &Arc<Self>) -> Result<(), StartError> {
        let _ = tokio::fs::remove_dir_all(self.tmp_dir()).await; // half-received uploads
        for job in self.jobs.unfinished().await? {
            if job.status == Status::Processing {
                log::warn!("job {}: was processing when the service stopped; resumed", job.id);
                // This process owns the data folder and has stopped its predecessor's engines:
                // the dead process's lease protects nothing, so the job is taken over at once.
                crate::jobs::lifecycle::release(&self.jobs, job.id).await?;
            }
            self.enqueue(&job)
                .await
                .map_err(|e| StartError::Refused(e.to_string()))?;
        }
        for id in self.jobs.pending_webhooks().await? {
            // Due now, or at the time the record says (the attempt checks it).
            self.queue
                .schedule_webhook(id, std::time::Duration::ZERO)
                .await
                .map_err(|e| StartError::Refused(e.to_string()))?;
        }
        Ok(())
    }

    /// Deletes a job: its record first, then its files (a crash in between leaves files that no
    /// record names, never a job without its files). False, with nothing deleted, if it did not
    /// exist or a worker is running it.
    pub async fn remove_job(&self, id: Uuid) -> Result<bool, StoreError> {
        let Some(tenant) = self.jobs.remove(id).await? else {
            return Ok(false);
        };
        if let Err(e) = self.files.delete_prefix(&Job::key(&tenant, id, "")).await {
            log::warn!("job {id}: record deleted, but not all its files: {e}");
        }
        let _ = tokio::fs::remove_dir_all(self.work_dir(id)).await;
        Ok(true)
    }

    /// Deletes finished jobs older than the retention, now and then.
    pub fn spawn_retention(self: &Arc<Self>) {
        let retention = self.config.worker.retention_secs;
        if retention == 0 {
            return;
        }
        let app = self.clone();
        let every = Duration::from_secs((retention / 10).clamp(1, 600));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = app.shutdown.cancelled() => return,
                }
                if let Err(e) = app.expire(retention).await {
                    log::warn!("retention sweep: {e}");
                }
            }
        });
    }

    async fn expire(&self, retention: u64) -> Result<(), StoreError> {
        let cutoff = chrono::Utc::now() - chrono::Duration::seconds(retention as i64);
        loop {
            let expired = self.jobs.expired(cutoff).await?;
            for id in &expired {
                log::info!("job {id}: deleted after the retention period");
                self.remove_job(*id).await?;
            }
            if expired.len() < 100 {
                return Ok(());
            }
        }
    }
}
