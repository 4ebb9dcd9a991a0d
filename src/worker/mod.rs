//! Worker slots: one job at a time per GPU (one in all on CPU). Per job: download the images, run
//! the engine, store the results, record the outcome, start the webhook.

use crate::app::App;
use crate::jobs::{DeliveryState, ErrorInfo, Job, Progress, Stage, Status};
use crate::queue::Settle;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod download;
mod run;

use run::execute;

/// Cancel handles of the jobs running in this process, by job id.
pub type Running = Mutex<HashMap<Uuid, CancellationToken>>;

/// How an attempt ended, short of success.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Canceled by a user.
    Canceled,
    /// The process is stopping: the job goes back to the queue.
    Interrupted,
    /// A failed job; with the engine log tail when the engine ran.
    Error(ErrorInfo, Option<String>),
}

impl From<ErrorInfo> for Failure {
    fn from(e: ErrorInfo) -> Self {
        Failure::Error(e, None)
    }
}

/// Stops the engine processes that a killed predecessor on this data folder left running, then
/// starts one task per worker slot: one per GPU, or one on CPU.
pub async fn start(app: &Arc<App>) -> Vec<JoinHandle<()>> {
    let stopped =
        crate::process::kill_owned(&app.owner(), Duration::from_secs(app.config.engine.kill_grace_secs)).await;
    if stopped > 0 {
        log::warn!("stopped {stopped} engine process(es) left by the previous worker on this data folder");
    }
    let slots: Vec<Option<u32>> = if app.gpus.is_empty() {
        vec![None]
    } else {
        app.gpus.iter().map(|g| Some(*g)).collect()
    };
    slots
        .into_iter()
        .map(|gpu| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut slot = Slot {
                    gpu,
                    engine_ended: None,
                };
                let mut low_disk = false;
                while let Some(taken) = app.queue.take(&app.shutdown).await {
                    if !room_for_a_job(&app, &mut low_disk) {
                        // Held a moment, then given back: RabbitMQ offers it to the other
                        // workers (a worker that just waited would keep it as its prefetch).
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = app.shutdown.cancelled() => {}
                        }
                        app.queue.give_back(taken).await;
                        continue;
                    }
                    let how = process(&app, taken.id, &mut slot).await;
                    app.queue.settle(taken, how).await;
                }
            })
        })
        .collect()
}

/// Free space in the data folder against `worker.min_free_bytes`: a line for `/ready`, or why
/// this worker takes no job.
pub fn disk_check(app: &App) -> Result<String, String> {
    let min = app.config.worker.min_free_bytes;
    let dir = &app.config.server.data_dir;
    if min == 0 {
        return Ok("ok: not checked (worker.min_free_bytes = 0)".into());
    }
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .map_err(|e| format!("cannot read the free space of {}: {e}", dir.display()))?;
    if free < min {
        return Err(format!(
            "{} has {} MiB free, under worker.min_free_bytes ({} MiB): no new job is taken",
            dir.display(),
            free >> 20,
            min >> 20
        ));
    }
    Ok(format!("ok: {} MiB free", free >> 20))
}

/// Whether the data folder has room for a job; logs when that changes, and sets the metric.
fn room_for_a_job(app: &App, low: &mut bool) -> bool {
    match disk_check(app) {
        Ok(_) => {
            if std::mem::take(low) {
                log::info!("disk space is back: taking jobs again");
            }
            app.metrics.low_disk.set(0);
            true
        }
        Err(why) => {
            if !std::mem::replace(low, true) {
                log::warn!("{why}");
            }
            app.metrics.low_disk.set(1);
            false
        }
    }
}

/// A worker slot: its GPU, and when its last engine run ended (for the engine gap metric).
pub(crate) struct Slot {
    gpu: Option<u32>,
    engine_ended: Option<std::time::Instant>,
}

/// Asks the job's worker in this process to stop it; false if it is not running here.
pub fn cancel(app: &App, id: Uuid) -> bool {
    match app.running.lock().expect("lock").get(&id) {
        Some(token) => {
            token.cancel();
            true
        }
        None => false,
    }
}

/// What a delivery of a job leads to.
enum Claim {
    Run(Box<Job>),
    /// Final already; its webhook may still need queuing (the last worker died in between).
    Done {
        webhook: bool,
    },
    /// Taken too many times by workers that died: failed, and dead-lettered.
    Poison,
    /// Running on another worker whose lease is fresh (a duplicate delivery): wait.
    Held,
}

/// A running job's lease is refreshed this often; another worker takes the job over once the
/// lease is `queue.lease_secs` old.
const HEARTBEAT: Duration = Duration::from_secs(3);

/// Runs one delivered job to its end and says what to do with the message.
async fn process(app: &Arc<App>, id: Uuid, slot: &mut Slot) -> Settle {
    // After a broker reconnect, a job this process is still running can be delivered again: wait
    // for that run to record its outcome, then this delivery finds the job done.
    while app.running.lock().expect("lock").contains_key(&id) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let max = app.config.queue.max_deliveries as u32;
    let me = worker_name();
    let lease = Duration::from_secs(app.config.queue.lease_secs);
    let claim = |j: &mut Job| match j.status {
        Status::Processing if j.worker.as_ref() != Some(&me) && lease_held(j, lease) => Claim::Held,
        Status::Enqueued | Status::Processing => {
            if j.status == Status::Processing {
                j.lost_attempts += 1; // its last worker died without recording an outcome
            }
            if j.lost_attempts >= max {
                let why = format!(
                    "the job was taken {} times and its worker stopped each time",
                    j.lost_attempts
                );
                j.finish(Status::Failed, Some(ErrorInfo::new("poison_job", why)));
                app.webhooks.begin(j);
                return Claim::Poison;
            }
            j.status = Status::Processing;
            j.stage = Some(Stage::Downloading);
            j.progress = Progress::default();
            j.started_at = Some(chrono::Utc::now());
            j.attempts += 1;
            j.worker = Some(me.clone());
            j.heartbeat_at = Some(chrono::Utc::now());
            Claim::Run(Box::new(j.clone()))
        }
        _ => Claim::Done {
            webhook: j.webhook.as_ref().is_some_and(|w| w.state == DeliveryState::Pending),
        },
    };
    let mut claimed = app.store.update(id, claim).await;
    // Submits store the record and publish at once: the message may come first. Waits grow, as
    // the record of a submit that failed half-way never comes.
    let mut wait = Duration::from_millis(10);
    while matches!(claimed, Ok(None)) && just_submitted(id) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.cancelled() => return Settle::Requeue,
        }
        wait = (wait * 2).min(Duration::from_secs(1));
        claimed = app.store.update(id, claim).await;
    }
    // Another worker runs it: the broker delivered it twice. Wait for its outcome, or its lease
    // to lapse (it died), without giving the message back.
    while let Ok(Some(Claim::Held)) = claimed {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = app.shutdown.cancelled() => return Settle::Requeue,
        }
        claimed = app.store.update(id, claim).await;
    }
    let job = match claimed {
        Ok(Some(Claim::Run(job))) => job,
        Ok(Some(Claim::Done { webhook: true })) => return queue_webhook(app, id).await,
        // Deleted, or a submit whose record was never stored (it answered 503).
        Ok(Some(Claim::Done { webhook: false })) | Ok(None) | Ok(Some(Claim::Held)) => return Settle::Ack,
        Ok(Some(Claim::Poison)) => {
            log::error!("job {id}: poison job, dead-lettered");
            // Dead-letter once the webhook is queued; otherwise the next delivery queues it.
            return match queue_webhook(app, id).await {
                Settle::Ack => Settle::DeadLetter,
                other => other,
            };
        }
        Err(e) => {
            log::error!("job {id}: cannot claim ({e}); handing it back");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Settle::Requeue;
        }
    };
    log::info!("job {id}: started (attempt {}, gpu {:?})", job.attempts, slot.gpu);
    let token = app.shutdown.child_token();
    app.running.lock().expect("lock").insert(id, token.clone());
    let watcher = tokio::spawn(watch_cancel(app.clone(), id, token.clone()));
    let outcome = execute(app, &job, slot, &token).await;
    watcher.abort();
    app.running.lock().expect("lock").remove(&id);
    let failed = matches!(outcome, Err(Failure::Error(..)));
    let interrupted = matches!(outcome, Err(Failure::Interrupted));
    let recorded = app.store.update(id, |j| {
        match outcome {
            Ok((results, summary)) => {
                j.results = results;
                j.summary = summary;
                j.finish(Status::Succeeded, None);
            }
            Err(Failure::Interrupted) => {
                j.status = Status::Enqueued;
                j.stage = None;
                return;
            }
            Err(Failure::Canceled) => j.finish(Status::Canceled, None),
            Err(Failure::Error(e, tail)) => {
                j.log_tail = tail;
                j.finish(Status::Failed, Some(e));
            }
        }
        app.webhooks.begin(j);
    });
    if let Err(e) = recorded.await {
        // Not acked: the broker gives the job again and the next attempt records it.
        log::error!("job {id}: outcome could not be stored: {e}");
        return Settle::Requeue;
    }
    let keep = (failed && app.config.worker.keep_failed_workdir) || interrupted;
    // On shutdown the folder stays: the next attempt here resumes from Meshroom's cache.
    if !keep {
        let _ = tokio::fs::remove_dir_all(app.work_dir(id)).await;
    }
    if interrupted {
        return Settle::Requeue;
    }
    if let Some(j) = app.store.get(id).await.ok().flatten() {
        let code = j.error.as_ref().map_or("", |e| e.code.as_str());
        app.metrics.finished.with_label_values(&[j.status.as_str(), code]).inc();
        log::info!(
            "job {id}: {}{}",
            j.status.as_str(),
            j.error.map(|e| format!(" ({})", e.code)).unwrap_or_default()
        );
    }
    queue_webhook(app, id).await
}

/// True for a job id minted in the last minute (ids are UUIDv7: they carry their time), while
/// its submit may still be storing the record.
fn just_submitted(id: Uuid) -> bool {
    let minted = id.get_timestamp().map_or(0, |t| t.to_unix().0);
    let now = chrono::Utc::now().timestamp() as u64;
    now.saturating_sub(minted) < 60
}

/// True when the job's worker refreshed its lease recently.
fn lease_held(job: &Job, lease: Duration) -> bool {
    let age = job.heartbeat_at.map(|t| chrono::Utc::now() - t);
    age.is_some_and(|a| a.to_std().map_or(true, |a| a < lease))
}

/// `host:pid` of this process, as recorded in the jobs it takes.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// Starts the webhook of a final job; the job's message is settled only once that is done.
async fn queue_webhook(app: &App, id: Uuid) -> Settle {
    match app.start_webhook(id).await {
        Ok(()) => Settle::Ack,
        Err(e) => {
            log::warn!("job {id}: webhook not queued ({e}); handing the job back to do it later");
            Settle::Requeue
        }
    }
}

/// Cancels the run when a cancel marker appears, whichever API replica wrote it, and keeps the
/// job's lease fresh meanwhile.
async fn watch_cancel(app: Arc<App>, id: Uuid, token: CancellationToken) {
    let mut beat = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if beat.elapsed() >= HEARTBEAT {
            beat = tokio::time::Instant::now();
            if let Err(e) = app
                .store
                .update(id, |j| j.heartbeat_at = Some(chrono::Utc::now()))
                .await
            {
                log::warn!("job {id}: lease not refreshed: {e}");
            }
        }
        if let Ok(true) = app.store.cancel_requested(id).await {
            log::info!("job {id}: cancel requested");
            let _ = app.store.update(id, |j| j.cancel_requested = true).await;
            token.cancel();
            return;
        }
    }
}
