//! Worker slots: one job at a time per GPU (one in all on CPU). Per job: download the images, run
//! the engine, store the results, record the outcome, start the webhook.

use crate::jobs::lifecycle::{self, Claim, Claimant, Outcome};
use crate::jobs::{ErrorInfo, Job, Store};
use crate::queue::Settle;
use crate::trace;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod context;
pub mod download;
mod log_ship;
mod nodes;
mod run;

pub use context::{CancelHandles, Context, Settings};

use run::execute;

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
pub async fn start(ctx: &Arc<Context>) -> Vec<JoinHandle<()>> {
    let stopped = crate::process::kill_owned(
        &ctx.settings.owner,
        Duration::from_secs(ctx.settings.engine.kill_grace_secs),
    )
    .await;
    if stopped > 0 {
        log::warn!("stopped {stopped} engine process(es) left by the previous worker on this data folder");
    }
    let slots: Vec<Option<u32>> = if ctx.settings.gpus.is_empty() {
        vec![None]
    } else {
        ctx.settings.gpus.iter().map(|g| Some(*g)).collect()
    };
    let route = if ctx.settings.gpus.is_empty() { "cpu" } else { "gpu" };
    ctx.metrics
        .worker_slots
        .with_label_values(&[route])
        .set(slots.len() as i64);
    slots
        .into_iter()
        .map(|gpu| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut slot = Slot {
                    gpu,
                    engine_ended: None,
                };
                let mut low_disk = false;
                while let Some(taken) = ctx.queue.take(&ctx.shutdown).await {
                    if !room_for_a_job(&ctx, &mut low_disk) {
                        // Held a moment, then given back: RabbitMQ offers it to the other
                        // workers (a worker that just waited would keep it as its prefetch).
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = ctx.shutdown.cancelled() => {}
                        }
                        ctx.queue.give_back(taken).await;
                        continue;
                    }
                    let how = process(&ctx, taken.id, taken.traceparent.as_deref(), &mut slot).await;
                    ctx.queue.settle(taken, how).await;
                }
            })
        })
        .collect()
}

/// Free space in the data folder against `worker.min_free_bytes`: a line for `/ready`, or why
/// this worker takes no job.
pub fn disk_check(dir: &Path, min: u64) -> Result<String, String> {
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
fn room_for_a_job(ctx: &Context, low: &mut bool) -> bool {
    match disk_check(&ctx.settings.data_dir, ctx.settings.worker.min_free_bytes) {
        Ok(_) => {
            if std::mem::take(low) {
                log::info!("disk space is back: taking jobs again");
            }
            ctx.metrics.low_disk.set(0);
            true
        }
        Err(why) => {
            if !std::mem::replace(low, true) {
                log::warn!("{why}");
            }
            ctx.metrics.low_disk.set(1);
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
pub fn cancel(running: &CancelHandles, id: Uuid) -> bool {
    match running.lock().expect("lock").get(&id) {
        Some(token) => {
            token.cancel();
            true
        }
        None => false,
    }
}

/// A running job's lease is refreshed this often; another worker takes the job over once the
/// lease is `queue.lease_secs` old.
const HEARTBEAT: Duration = Duration::from_secs(3);

/// Runs one delivered job to its end and says what to do with the message. Its spans go under
/// the context its message carried, else under the job's own (in-process queue).
async fn process(ctx: &Arc<Context>, id: Uuid, traceparent: Option<&str>, slot: &mut Slot) -> Settle {
    let delivered = SystemTime::now();
    let job = match claim(ctx, id).await {
        Ok(job) => job,
        Err(settle) => return settle,
    };
    if job.attempts == 1 {
        let waited = (chrono::Utc::now() - job.created_at).num_milliseconds().max(0);
        ctx.metrics.queue_wait_seconds.observe(waited as f64 / 1000.0);
    }
    let parent = trace::parent(traceparent.or(job.traceparent.as_deref()));
    let mut attrs = trace::job(&job);
    if trace::enabled() {
        attrs.push(trace::KeyValue::new("meshroom.attempt", job.attempts as i64));
        attrs.push(trace::KeyValue::new("meshroom.gpu", slot.gpu.map_or(-1, i64::from)));
    }
    let cx = trace::start_at("attempt", trace::SpanKind::Consumer, &parent, attrs, Some(delivered));
    trace::record("claim", &cx, Vec::new(), delivered, SystemTime::now());
    crate::logging::job_started(id, job.traceparent.as_deref());
    log::info!("job {id}: started (attempt {}, gpu {:?})", job.attempts, slot.gpu);
    let outcome = run_attempt(ctx, &job, slot, &cx).await;
    let failed = match &outcome {
        Outcome::Failed(e, _) => Some(e.code.to_string()),
        _ => None,
    };
    let settle = finish(ctx, id, outcome).await;
    trace::end(&cx, failed.as_deref(), None);
    crate::logging::job_ended(id);
    settle
}

/// Takes the job for this worker, or says what to do with its message instead.
async fn claim(ctx: &Arc<Context>, id: Uuid) -> Result<Box<Job>, Settle> {
    // After a broker reconnect, a job this process is still running can be delivered again: wait
    // for that run to record its outcome, then this delivery finds the job done.
    while ctx.running.lock().expect("lock").contains_key(&id) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let me = worker_name();
    let who = Claimant {
        worker: &me,
        lease: ctx.settings.lease,
        max_lost: ctx.settings.max_deliveries,
    };
    // The record is committed before its message is published, so a missing record is a
    // deleted job: nothing to wait for.
    let mut claimed = lifecycle::claim(&ctx.jobs, &ctx.webhooks, id, &who).await;
    // Another worker runs it: the broker delivered it twice. Wait for its outcome, or its lease
    // to lapse (it died), without giving the message back.
    while let Ok(Some(Claim::Held)) = claimed {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = ctx.shutdown.cancelled() => return Err(Settle::Requeue),
        }
        claimed = lifecycle::claim(&ctx.jobs, &ctx.webhooks, id, &who).await;
    }
    match claimed {
        Ok(Some(Claim::Run(job))) => {
            // Its tenant has one job fewer in the queue: the next of its held jobs may go.
            let tenant = [job.tenant.clone()];
            crate::scheduling::release(&ctx.jobs, &ctx.queue, &ctx.pipelines, Some(&tenant)).await;
            Ok(job)
        }
        Ok(Some(Claim::Done { webhook: true })) => Err(queue_webhook(ctx, id).await),
        Ok(Some(Claim::Done { webhook: false })) | Ok(None) | Ok(Some(Claim::Held)) => Err(Settle::Ack),
        Ok(Some(Claim::Poison)) => {
            log::error!("job {id}: poison job, dead-lettered");
            // Dead-letter once the webhook is queued; otherwise the next delivery queues it.
            Err(match queue_webhook(ctx, id).await {
                Settle::Ack => Settle::DeadLetter,
                other => other,
            })
        }
        Err(e) => {
            log::error!("job {id}: cannot claim ({e}); handing it back");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(Settle::Requeue)
        }
    }
}

/// Runs one attempt of a claimed job, cancelable, with its lease kept fresh meanwhile.
async fn run_attempt(ctx: &Arc<Context>, job: &Job, slot: &mut Slot, cx: &trace::Context) -> Outcome {
    let token = ctx.shutdown.child_token();
    ctx.running.lock().expect("lock").insert(job.id, token.clone());
    let watcher = tokio::spawn(watch_cancel(ctx.jobs.clone(), job.id, token.clone()));
    let outcome = match execute(ctx, job, slot, &token, cx).await {
        Ok((results, summary)) => Outcome::Succeeded(results, summary),
        Err(Failure::Canceled) => Outcome::Canceled,
        Err(Failure::Interrupted) => Outcome::Interrupted,
        Err(Failure::Error(e, tail)) => Outcome::Failed(e, tail),
    };
    watcher.abort();
    ctx.running.lock().expect("lock").remove(&job.id);
    outcome
}

/// Records an attempt's outcome, tidies its folder and starts the webhook.
async fn finish(ctx: &Arc<Context>, id: Uuid, outcome: Outcome) -> Settle {
    let recorded = match lifecycle::record(&ctx.jobs, &ctx.webhooks, id, &outcome).await {
        Ok(job) => job,
        Err(e) => {
            // Not acked: the broker gives the job again and the next attempt records it.
            log::error!("job {id}: outcome could not be stored: {e}");
            return Settle::Requeue;
        }
    };
    // Counted as soon as recorded, before the folder is tidied, from the row just written.
    if let Some(j) = recorded.filter(|j| j.status.is_final()) {
        let code = j.error.as_ref().map_or("", |e| e.code.as_str());
        ctx.metrics
            .finished
            .with_label_values(&[j.status.as_str(), code, ctx.metrics.tenant(&j.tenant)])
            .inc();
        log::info!(
            "job {id}: {}{}",
            j.status.as_str(),
            j.error.map(|e| format!(" ({})", e.code)).unwrap_or_default()
        );
    }
    let failed = matches!(outcome, Outcome::Failed(..));
    let interrupted = matches!(outcome, Outcome::Interrupted);
    let keep = (failed && ctx.settings.worker.keep_failed_workdir) || interrupted;
    // On shutdown the folder stays: the next attempt here resumes from Meshroom's cache.
    if !keep {
        let _ = tokio::fs::remove_dir_all(ctx.work_dir(id)).await;
    }
    if interrupted {
        return Settle::Requeue;
    }
    queue_webhook(ctx, id).await
}

/// `host:pid` of this process, as recorded in the jobs it takes.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// Starts the webhook of a final job; the job's message is settled only once that is done.
async fn queue_webhook(ctx: &Context, id: Uuid) -> Settle {
    match ctx.queue.schedule_webhook(id, ctx.webhooks.first_delay()).await {
        Ok(()) => Settle::Ack,
        Err(e) => {
            log::warn!("job {id}: webhook not queued ({e}); handing the job back to do it later");
            Settle::Requeue
        }
    }
}

/// Keeps the job's lease fresh, and cancels the run once a cancel is asked (by whichever API
/// replica) or the job is deleted.
async fn watch_cancel(jobs: Arc<Store>, id: Uuid, token: CancellationToken) {
    let mut beat = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let asked = if beat.elapsed() >= HEARTBEAT {
            beat = tokio::time::Instant::now();
            lifecycle::heartbeat(&jobs, id).await
        } else {
            jobs.get(id).await.map(|j| j.map(|j| j.cancel_requested))
        };
        match asked {
            Ok(Some(false)) => {}
            Ok(Some(true)) | Ok(None) => {
                log::info!("job {id}: cancel requested");
                token.cancel();
                return;
            }
            Err(e) => log::warn!("job {id}: lease not refreshed: {e}"),
        }
    }
}
