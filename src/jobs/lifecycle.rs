//! The job lifecycle in one place: every transition of a stored job, each one compare-and-set
//! write of the store (see `store`), so processes racing on one job never both win.
//!
//! ```text
//! submit ──> enqueued ──claim──> processing ──record──> succeeded | failed | canceled
//!              │  ^                  │  (interrupted: back to enqueued)        │
//!              │  └──────────────────┴─────────── retry <─────────────────────┘
//!              └──cancel──> canceled          (cancel while processing: a flag the worker's
//!                                              heartbeat reads; it stops and records canceled)
//! ```
//! A worker holds a processing job through a lease (`heartbeat_at`, refreshed every few seconds).
//! A delivery of a job whose lease is fresh waits; a stale lease means its worker died: the next
//! claim takes over and counts a lost attempt, and too many lost attempts fail it as a poison job.

use super::{ErrorInfo, Job, Progress, ResultFile, Stage, Status, Store, StoreError, Summary};
use crate::error::Code;
use crate::webhook::Webhooks;
use chrono::Utc;
use std::time::Duration;
use uuid::Uuid;

/// What a delivery of a job leads to.
#[derive(Debug)]
pub enum Claim {
    /// Taken: run it.
    Run(Box<Job>),
    /// Final already; `webhook` when its delivery may still need queuing (a worker died between).
    Done {
        /// A webhook delivery is pending.
        webhook: bool,
    },
    /// Taken too many times by workers that died: now failed with `poison_job`.
    Poison,
    /// Running on another worker whose lease is fresh (a duplicate delivery): wait.
    Held,
}

/// Who claims, and the rules they claim by.
#[derive(Debug, Clone)]
pub struct Claimant<'a> {
    /// `host:pid` of the worker.
    pub worker: &'a str,
    /// A lease older than this belongs to a dead worker.
    pub lease: Duration,
    /// Lost attempts after which a job is a poison job.
    pub max_lost: u32,
}

/// Takes job `id` for a worker: enqueued, or processing under a stale lease (or this worker's).
/// `None` when the job does not exist (deleted).
pub async fn claim(store: &Store, hooks: &Webhooks, id: Uuid, who: &Claimant<'_>) -> Result<Option<Claim>, StoreError> {
    store
        .update(id, |j| match j.status {
            Status::Processing if j.worker.as_deref() != Some(who.worker) && lease_held(j, who.lease) => Claim::Held,
            Status::Enqueued | Status::Processing => {
                if j.status == Status::Processing {
                    j.lost_attempts += 1; // its last worker died without recording an outcome
                }
                if j.lost_attempts >= who.max_lost {
                    let why = format!(
                        "the job was taken {} times and its worker stopped each time",
                        j.lost_attempts
                    );
                    j.finish(Status::Failed, Some(ErrorInfo::new(Code::PoisonJob, why)));
                    hooks.begin(j);
                    return Claim::Poison;
                }
                let now = Utc::now();
                j.status = Status::Processing;
                j.stage = Some(Stage::Downloading);
                j.progress = Progress::default();
                j.started_at = Some(now);
                j.attempts += 1;
                j.worker = Some(who.worker.to_string());
                j.heartbeat_at = Some(now);
                Claim::Run(Box::new(j.clone()))
            }
            _ => Claim::Done {
                webhook: super::store::webhook_pending(j),
            },
        })
        .await
}

/// True when the job's worker refreshed its lease recently.
fn lease_held(job: &Job, lease: Duration) -> bool {
    let age = job.heartbeat_at.map(|t| Utc::now() - t);
    age.is_some_and(|a| a.to_std().map_or(true, |a| a < lease))
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Results stored.
    Succeeded(Vec<ResultFile>, Option<Summary>),
    /// Stopped on a user's request.
    Canceled,
    /// The worker is shutting down: back to the queue, resumable.
    Interrupted,
    /// Failed, with the engine log tail when the engine ran.
    Failed(ErrorInfo, Option<String>),
}

/// Records the outcome of an attempt and schedules the webhook of a final state; gives the job
/// as recorded (`None`: deleted meanwhile).
pub async fn record(store: &Store, hooks: &Webhooks, id: Uuid, outcome: &Outcome) -> Result<Option<Job>, StoreError> {
    store
        .update(id, |j| {
            match outcome.clone() {
                Outcome::Succeeded(results, summary) => {
                    j.results = results;
                    j.summary = summary;
                    j.finish(Status::Succeeded, None);
                }
                Outcome::Interrupted => {
                    j.status = Status::Enqueued;
                    j.stage = None;
                    j.heartbeat_at = None; // free for the next claim at once
                    return j.clone();
                }
                Outcome::Canceled => j.finish(Status::Canceled, None),
                Outcome::Failed(e, tail) => {
                    j.log_tail = tail;
                    j.finish(Status::Failed, Some(e));
                }
            }
            hooks.begin(j);
            j.clone()
        })
        .await
}

/// Refreshes the lease of a running job; says whether a cancel was asked (`None`: deleted).
pub async fn heartbeat(store: &Store, id: Uuid) -> Result<Option<bool>, StoreError> {
    store
        .update(id, |j| {
            j.heartbeat_at = Some(Utc::now());
            j.cancel_requested
        })
        .await
}

/// Ends the lease of a job whose worker is known dead (all-in-one's predecessor), so that the next
/// claim takes it over without waiting for the lease to lapse.
pub async fn release(store: &Store, id: Uuid) -> Result<Option<()>, StoreError> {
    store.update(id, |j| j.heartbeat_at = None).await
}

/// What a cancel request did.
#[derive(Debug)]
pub enum Cancel {
    /// It was queued: canceled now.
    Canceled(Job),
    /// It is running: its worker stops it within a second or so.
    Stopping(Job),
    /// It had ended already.
    Final(Status),
}

/// A client's cancel request.
pub async fn cancel(store: &Store, hooks: &Webhooks, id: Uuid) -> Result<Option<Cancel>, StoreError> {
    store
        .update(id, |j| match j.status {
            Status::Enqueued => {
                j.finish(Status::Canceled, None);
                hooks.begin(j);
                Cancel::Canceled(j.clone())
            }
            Status::Processing => {
                j.cancel_requested = true;
                Cancel::Stopping(j.clone())
            }
            done => Cancel::Final(done),
        })
        .await
}

/// A client's retry request: a failed or canceled job goes back to the queue (the store marks it
/// unpublished in the same write, so the outbox sweep queues it if the caller cannot).
pub async fn retry(store: &Store, id: Uuid) -> Result<Option<Result<Job, Status>>, StoreError> {
    store
        .update(id, |j| match j.status {
            Status::Failed | Status::Canceled => {
                j.reset_for_retry();
                Ok(j.clone())
            }
            other => Err(other),
        })
        .await
}

#[cfg(test)]
mod tests;
