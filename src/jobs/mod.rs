//! Jobs: the record every part of the service reads and writes, the database that keeps it, the
//! lifecycle rules that change it, and the view clients get.

use crate::error::Code;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

pub mod db;
pub mod estimate;
pub mod lifecycle;
mod store;
mod view;
pub use db::Db;
pub use store::{Changed, Exceeded, Filter, Inserted, Quota, Store, StoreError, TenantUsage};
pub use view::JobView;

/// Lifecycle of a job (the same names as meilisearch tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting in the queue.
    Enqueued,
    /// Taken by a worker.
    Processing,
    /// Results are stored.
    Succeeded,
    /// Ended with an error; see `error`.
    Failed,
    /// Stopped on request.
    Canceled,
}

impl Status {
    /// The name used in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enqueued => "enqueued",
            Status::Processing => "processing",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
        }
    }

    /// True once the job can no longer change by itself.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Canceled)
    }
}

/// Queue priority, chosen at submit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// The default.
    #[default]
    Normal,
    /// Taken before every normal job.
    High,
}

/// What a processing job is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Fetching the images into the working folder.
    Downloading,
    /// The engine is running.
    Reconstructing,
    /// Results are being stored.
    Uploading,
}

/// Progress of the engine, from its printed `[n/N](c/C) Node` lines and its status files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// 0 to 100.
    pub percent: f32,
    /// Node running now, e.g. `FeatureMatching`.
    pub node: Option<String>,
    /// 1-based index of that node.
    pub node_index: Option<u32>,
    /// Number of nodes the engine will run.
    pub node_count: Option<u32>,
    /// 1-based chunk of the node running now, for nodes split into chunks (Meshroom).
    #[serde(default)]
    pub chunk_index: Option<u32>,
    /// Chunks of that node.
    #[serde(default)]
    pub chunk_count: Option<u32>,
    /// When the node running now started (set by the worker).
    #[serde(default)]
    pub node_started_at: Option<DateTime<Utc>>,
}

/// The one error shape, used by API errors and failed jobs alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    /// Human-readable explanation.
    pub message: String,
    /// Stable machine-readable code, e.g. `engine_timeout`.
    pub code: Code,
    /// The part of the request it concerns, when one does: a field (`pipeline`, `params.quality`,
    /// `metadata`, `callback_url`, `image_urls`) or an uploaded file (`images/<its file name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorInfo {
    /// Builds an error from a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
            field: None,
        }
    }
}

/// What a COLMAP reconstruction holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    /// Images given.
    pub images: u32,
    /// Images placed in the model.
    pub registered_images: u32,
    /// 3D points in the sparse model.
    pub points: u64,
    /// Mean reprojection error, pixels.
    pub mean_reprojection_error_px: f64,
    /// Whether a mesh was made from the points.
    pub mesh: bool,
}

/// An image uploaded with the job and kept in storage under `inputs/{name}` of the job's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Upload {
    /// File name in storage.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A result file kept in storage under `results/{name}` of the job's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResultFile {
    /// Path relative to the result folder.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Download link (supports Range).
    pub url: String,
}

/// State of the webhook delivery for the job's last final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// More attempts are scheduled.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every scheduled attempt failed.
    Failed,
    /// The receiver answered 410 Gone: no more attempts.
    Gone,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// HTTP status received, if any.
    pub status: Option<u16>,
    /// Transport error or reason, if any.
    pub error: Option<String>,
}

/// Webhook delivery of a final state (Standard Webhooks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// `webhook-id` header: the same on every attempt.
    pub id: String,
    /// `job.succeeded`, `job.failed` or `job.canceled`.
    pub event: String,
    /// Delivery state.
    pub state: DeliveryState,
    /// Next attempt time while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Attempts so far.
    pub attempts: Vec<Attempt>,
}

/// The stored record of a job: what was asked, where it is, what came out, and what workers need
/// to hold it (lease, lost attempts). Clients see a `JobView` of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// UUIDv7: ids sort by creation time.
    pub id: Uuid,
    /// The tenant it belongs to (jobs from before tenants: `default`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Lifecycle state.
    pub status: Status,
    /// Stage while processing.
    pub stage: Option<Stage>,
    /// Engine progress.
    pub progress: Progress,
    /// Pipeline preset name.
    pub pipeline: String,
    /// Queue priority.
    #[serde(default)]
    pub priority: Priority,
    /// Per-job parameter overrides (checked against the preset's allow-list).
    pub params: BTreeMap<String, String>,
    /// Images to download.
    pub image_urls: Vec<String>,
    /// Images uploaded with the request.
    pub uploads: Vec<Upload>,
    /// Where the webhook goes.
    pub callback_url: Option<String>,
    /// Free JSON given by the client, returned as is.
    pub metadata: Option<serde_json::Value>,
    /// Engine time limit, seconds.
    pub timeout_secs: u64,
    /// The `Idempotency-Key` the job was submitted with.
    pub idempotency_key: Option<String>,
    /// Times the job was taken by a worker.
    pub attempts: u32,
    /// Attempts since the last retry whose worker died before recording an outcome.
    #[serde(default)]
    pub lost_attempts: u32,
    /// The worker (`host:pid`) that took the job last.
    #[serde(default)]
    pub worker: Option<String>,
    /// Refreshed every few seconds by the worker running the job: its lease.
    #[serde(default)]
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// Set when a cancel was asked while processing.
    pub cancel_requested: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<ErrorInfo>,
    /// End of the engine log when the engine failed.
    pub log_tail: Option<String>,
    /// Files produced, once succeeded.
    pub results: Vec<ResultFile>,
    /// What the model holds (COLMAP presets).
    #[serde(default)]
    pub summary: Option<Summary>,
    /// Webhook delivery of the last final state.
    pub webhook: Option<Delivery>,
    /// Whether its pipeline runs on a GPU (for GPU-second quotas and usage).
    #[serde(default)]
    pub gpu: bool,
    /// Engine time of all its attempts, milliseconds.
    #[serde(default)]
    pub engine_ms: u64,
    /// How long each engine node took in the last attempt, in order (for time-left estimates).
    #[serde(default)]
    pub node_timings: Vec<estimate::NodeTiming>,
    /// W3C `traceparent` of the submit's span (when tracing is on): a redelivered or retried job
    /// continues its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Job {
    /// A new enqueued job with a fresh UUIDv7.
    pub fn new(pipeline: String, timeout_secs: u64) -> Job {
        let now = Utc::now();
        Job {
            id: Uuid::now_v7(),
            tenant: crate::tenants::DEFAULT_TENANT.to_string(),
            status: Status::Enqueued,
            stage: None,
            progress: Progress::default(),
            pipeline,
            priority: Priority::Normal,
            params: BTreeMap::new(),
            image_urls: Vec::new(),
            uploads: Vec::new(),
            callback_url: None,
            metadata: None,
            timeout_secs,
            idempotency_key: None,
            attempts: 0,
            lost_attempts: 0,
            worker: None,
            heartbeat_at: None,
            cancel_requested: false,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            error: None,
            log_tail: None,
            results: Vec::new(),
            summary: None,
            webhook: None,
            gpu: false,
            engine_ms: 0,
            node_timings: Vec::new(),
            traceparent: None,
        }
    }

    /// Images it names: URLs and uploads.
    pub fn image_count(&self) -> usize {
        self.image_urls.len() + self.uploads.len()
    }

    /// Bytes it keeps in storage: its uploaded inputs and its results.
    pub fn stored_bytes(&self) -> u64 {
        self.uploads.iter().map(|u| u.size).sum::<u64>() + self.results.iter().map(|r| r.size).sum::<u64>()
    }

    /// Moves to a final state, recording the time and the error.
    pub fn finish(&mut self, status: Status, error: Option<ErrorInfo>) {
        debug_assert!(status.is_final());
        self.status = status;
        self.stage = None;
        self.error = error;
        self.cancel_requested = false;
        self.finished_at = Some(Utc::now());
        if status == Status::Succeeded {
            self.progress.percent = 100.0;
        }
    }

    /// Puts a failed or canceled job back in the queue.
    pub fn reset_for_retry(&mut self) {
        self.status = Status::Enqueued;
        self.stage = None;
        self.progress = Progress::default();
        self.error = None;
        self.log_tail = None;
        self.results.clear();
        self.summary = None;
        self.node_timings.clear();
        self.started_at = None;
        self.finished_at = None;
        self.cancel_requested = false;
        self.lost_attempts = 0;
    }

    /// The webhook event name of a final state.
    pub fn event(&self) -> Option<&'static str> {
        match self.status {
            Status::Succeeded => Some("job.succeeded"),
            Status::Failed => Some("job.failed"),
            Status::Canceled => Some("job.canceled"),
            _ => None,
        }
    }

    /// Storage key of a file of this job (see `Job::key`).
    pub fn file_key(&self, rest: &str) -> String {
        Job::key(&self.tenant, self.id, rest)
    }

    /// Storage key of a file of a job: `tenants/{tenant}/jobs/{id}/{rest}`, and for the default
    /// tenant `jobs/{id}/{rest}`, where jobs from before tenants keep their files.
    pub fn key(tenant: &str, id: Uuid, rest: &str) -> String {
        match tenant {
            crate::tenants::DEFAULT_TENANT => format!("jobs/{id}/{rest}"),
            _ => format!("tenants/{tenant}/jobs/{id}/{rest}"),
        }
    }

    /// The value of the unique `idempotency_key` column: the key within its tenant.
    pub fn idempotency_scope(tenant: &str, key: &str) -> String {
        format!("{tenant}/{key}")
    }
}

fn default_tenant() -> String {
    crate::tenants::DEFAULT_TENANT.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_snake_case_with_rfc3339_times() {
        let job = Job::new("draft".into(), 60);
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["status"], "enqueued");
        let created = v["created_at"].as_str().unwrap();
        assert!(DateTime::parse_from_rfc3339(created).is_ok(), "{created}");
        assert_eq!(job.id.get_version_num(), 7);
    }

    #[test]
    fn retry_clears_the_outcome() {
        let mut job = Job::new("draft".into(), 60);
        job.finish(Status::Failed, Some(ErrorInfo::new(Code::EngineFailed, "boom")));
        assert_eq!(job.event(), Some("job.failed"));
        job.reset_for_retry();
        assert_eq!(job.status, Status::Enqueued);
        assert!(job.error.is_none() && job.finished_at.is_none());
    }
}
