//! What clients see of a job: API bodies, list entries and webhook payloads. The stored record
//! (`Job`) also holds what only workers need (lease, worker name, lost attempts, idempotency
//! key); those never leave the service.

use super::estimate::NodeTiming;
use super::{Delivery, ErrorInfo, Job, Priority, Progress, ResultFile, Stage, Status, Summary, Upload};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// A reconstruction job: what was asked, where it is, and what came out. Clients (and the
/// tests) can read an answer back into it: unknown fields are refused, so it is the whole answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Job)]
pub struct JobView {
    /// UUIDv7: ids sort by creation time.
    pub id: Uuid,
    /// The tenant it belongs to.
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
    pub priority: Priority,
    /// Per-job parameter overrides (checked against the preset's parameters).
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
    /// Times the job was taken by a worker.
    pub attempts: u32,
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
    pub summary: Option<Summary>,
    /// Webhook delivery of the last final state.
    pub webhook: Option<Delivery>,
    /// How long each engine node took in the last attempt, in order.
    pub node_timings: Vec<NodeTiming>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> JobView {
        JobView {
            id: j.id,
            tenant: j.tenant,
            status: j.status,
            stage: j.stage,
            progress: j.progress,
            pipeline: j.pipeline,
            priority: j.priority,
            params: j.params,
            image_urls: j.image_urls,
            uploads: j.uploads,
            callback_url: j.callback_url,
            metadata: j.metadata,
            timeout_secs: j.timeout_secs,
            attempts: j.attempts,
            cancel_requested: j.cancel_requested,
            created_at: j.created_at,
            updated_at: j.updated_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            error: j.error,
            log_tail: j.log_tail,
            results: j.results,
            summary: j.summary,
            webhook: j.webhook,
            node_timings: j.node_timings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_fields_stay_inside() {
        let mut job = Job::new("draft".into(), 60);
        job.idempotency_key = Some("k".into());
        job.worker = Some("host:1".into());
        job.heartbeat_at = Some(Utc::now());
        job.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let v = serde_json::to_value(JobView::from(job)).unwrap();
        for internal in [
            "idempotency_key",
            "worker",
            "heartbeat_at",
            "lost_attempts",
            "traceparent",
        ] {
            assert!(v.get(internal).is_none(), "{internal} in {v}");
        }
        assert_eq!(v["status"], "enqueued");
    }
}
