//! One attempt of a claimed job: images in, engine run with progress, results out.

use super::nodes::NodeSpans;
use super::{download, Context, Failure, Slot};
use crate::engine::{self, EngineError};
use crate::error::Code;
use crate::jobs::estimate::Timer;
use crate::jobs::{ErrorInfo, Job, Progress, ResultFile, Stage, Store, Summary};
use crate::pipelines::{Engine, Preset};
use crate::trace::{self, SpanKind};
use backon::Retryable;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Downloads, runs the engine and stores the results of a claimed job.
pub(super) async fn execute(
    ctx: &Arc<Context>,
    job: &Job,
    slot: &mut Slot,
    token: &CancellationToken,
    cx: &trace::Context,
) -> Result<(Vec<ResultFile>, Option<Summary>), Failure> {
    let dir = ctx.work_dir(job.id);
    let stopped = || match ctx.shutdown.is_cancelled() {
        true => Failure::Interrupted,
        false => Failure::Canceled,
    };
    let io = |e: std::io::Error| ErrorInfo::new(Code::WorkerIoError, format!("working folder: {e}"));
    let images = dir.join("images");
    let mut clock = StageClock {
        ctx,
        id: job.id,
        stage: Stage::Downloading,
        since: Instant::now(),
    };
    tokio::fs::create_dir_all(&images).await.map_err(io)?;
    let staging = trace::start("stage images", SpanKind::Internal, cx, Vec::new());
    tokio::select! {
        r = ctx.fetcher.fetch_all(job, &images, &staging) => r?,
        _ = token.cancelled() => return Err(stopped()),
    }
    trace::end(&staging, None, None);
    let (preset, overrides, binary) = what_to_run(ctx, job)?;
    clock.enter(Stage::Reconstructing).await;
    let run = engine::Run {
        job: job.id,
        owner: &ctx.settings.owner,
        binary: &binary,
        dir: &dir,
        pipeline: &preset.pipeline,
        overrides: &overrides,
        gpu: slot.gpu,
        timeout: Duration::from_secs(job.timeout_secs),
        grace: Duration::from_secs(ctx.settings.engine.kill_grace_secs),
        config: &ctx.settings.engine,
    };
    let engine_cx = trace::start("engine", SpanKind::Internal, cx, Vec::new());
    let nodes = NodeSpans {
        cx: engine_cx.clone(),
        preset: job.pipeline.clone(),
        metrics: ctx.metrics.clone(),
        // Meshroom's status files give each node's real times once the run ends.
        as_reported: preset.engine == Engine::Colmap,
    };
    let (result, tail) = run_engine(ctx, slot, token, preset.engine, &run, job.file_key("engine.log"), nodes).await;
    trace::end(
        &engine_cx,
        result.as_ref().err().map(|e| e.to_string()).as_deref(),
        None,
    );
    let summary = match result {
        Err(EngineError::Canceled) => return Err(stopped()),
        Err(e) => return Err(Failure::Error(e.to_error_info(), tail)),
        Ok(summary) => summary,
    };
    clock.enter(Stage::Uploading).await;
    let storing = trace::start("store results", SpanKind::Internal, cx, Vec::new());
    let results = store_results(ctx, job, &run.output_dir())
        .await
        .map_err(Failure::from)?;
    trace::end(&storing, None, None);
    Ok((results, summary))
}

/// The preset a job names, its parameters as engine overrides, and the engine's program.
fn what_to_run<'a>(ctx: &'a Context, job: &Job) -> Result<(&'a Preset, Vec<String>, PathBuf), ErrorInfo> {
    let preset = ctx.pipelines.get(&job.pipeline).ok_or_else(|| {
        ErrorInfo::new(
            Code::UnknownPipeline,
            format!("pipeline '{}' is not configured", job.pipeline),
        )
    })?;
    let overrides = preset
        .overrides_with(&job.params)
        .map_err(|e| ErrorInfo::new(Code::InvalidParam, e.to_string()))?;
    let binary = engine::find_binary(preset.engine, &ctx.settings.engine).map_err(|e| e.to_error_info())?;
    Ok((preset, overrides, binary))
}

/// Runs the engine, its progress written to the job as it changes; the tail of its log is kept
/// in storage whatever happened (for `GET /jobs/{id}/log`) and returned with the result.
async fn run_engine(
    ctx: &Arc<Context>,
    slot: &mut Slot,
    token: &CancellationToken,
    which: Engine,
    run: &engine::Run<'_>,
    log_key: String,
    nodes: NodeSpans,
) -> (Result<Option<Summary>, EngineError>, Option<String>) {
    let (progress, writer) = progress_writer(ctx.jobs.clone(), run.job, nodes.clone());
    let (shipped, shipper) = super::log_ship::start(ctx.jobs.clone(), run.job, run.log_path());
    if let Some(ended) = slot.engine_ended.take() {
        ctx.metrics.engine_gap_seconds.observe(ended.elapsed().as_secs_f64());
    }
    let started = Instant::now();
    let result = engine::reconstruct(which, run, token, |p| {
        let _ = progress.send(p);
    })
    .await;
    slot.engine_ended = Some(Instant::now());
    drop(progress);
    let timer = writer.await.unwrap_or_default();
    // The node running when the engine stopped ends now.
    let last = timer.current().map(|(name, since)| (name.to_string(), since));
    shipped.cancel();
    let _ = shipper.await;
    // Every attempt's engine time counts, for usage and GPU-second quotas; a run that ended well
    // leaves its node timings for later estimates.
    let ms = started.elapsed().as_millis() as u64;
    let now = chrono::Utc::now();
    let error = result.as_ref().err().map(|e| e.to_string());
    if let Some((name, since)) = last {
        nodes.reported(&name, since, now, error.as_deref());
    }
    let began = now - chrono::Duration::milliseconds(started.elapsed().as_millis() as i64);
    for n in engine::node_runs(which, run, began).unwrap_or_default() {
        // Whole-second stamps: the first node seems to start before the run did.
        let start = n.start.max(began);
        nodes.ended(
            &n.name,
            &n.node_type,
            start,
            n.end.max(start),
            (!n.ok).then_some("failed"),
        );
    }
    let timings = result.is_ok().then(|| timer.finish(now));
    let recorded = ctx
        .jobs
        .update(run.job, |j| {
            j.engine_ms += ms;
            if let Some(t) = &timings {
                j.node_timings = t.clone();
            }
        })
        .await;
    if let Err(e) = recorded {
        log::warn!("job {}: engine time not recorded: {e}", run.job);
    }
    let tail = engine::tail(&run.log_path(), ctx.settings.engine.log_tail_bytes);
    let log = tail.as_deref().unwrap_or("").as_bytes();
    if let Err(e) = ctx.files.put_bytes(&log_key, log).await {
        log::warn!("job {}: engine log not stored: {e}", run.job);
    }
    (result, tail)
}

/// A channel whose progress reports are written to the job record by a task of their own, so a
/// chatty engine never waits on storage: reports that arrive during a write are coalesced. The
/// task also times the nodes (for estimates); it returns its timer when the channel closes.
fn progress_writer(
    store: Arc<Store>,
    id: Uuid,
    nodes: NodeSpans,
) -> (tokio::sync::watch::Sender<Progress>, JoinHandle<Timer>) {
    let (tx, mut rx) = tokio::sync::watch::channel(Progress::default());
    let writer = tokio::spawn(async move {
        let mut timer = Timer::default();
        // This attempt's timings replace those of an earlier, interrupted one.
        let mut first = true;
        while rx.changed().await.is_ok() {
            let mut p = rx.borrow_and_update().clone();
            let now = chrono::Utc::now();
            let before = timer.current().map(|(name, since)| (name.to_string(), since));
            let ended = timer.observe(&mut p, now);
            if let (Some(_), Some((name, since))) = (&ended, before) {
                nodes.reported(&name, since, now, None);
            }
            let reset = std::mem::take(&mut first);
            let written = store
                .update(id, |j| {
                    j.progress = p.clone();
                    if reset {
                        j.node_timings.clear();
                    }
                    if let Some(t) = &ended {
                        j.node_timings = t.clone();
                    }
                })
                .await;
            if let Err(e) = written {
                log::warn!("job {id}: progress not stored: {e}");
            }
        }
        timer
    });
    (tx, writer)
}

/// Records stage changes in the job and stage durations in the metrics (the last one on drop,
/// whichever way the attempt ends).
struct StageClock<'a> {
    ctx: &'a Context,
    id: Uuid,
    stage: Stage,
    since: Instant,
}

impl StageClock<'_> {
    async fn enter(&mut self, stage: Stage) {
        self.observe();
        (self.stage, self.since) = (stage, Instant::now());
        if let Err(e) = self.ctx.jobs.update(self.id, |j| j.stage = Some(stage)).await {
            log::warn!("job {}: stage not stored: {e}", self.id);
        }
    }

    fn observe(&self) {
        let name = serde_json::to_value(self.stage)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        self.ctx
            .metrics
            .stage_seconds
            .with_label_values(&[name.as_str()])
            .observe(self.since.elapsed().as_secs_f64());
    }
}

impl Drop for StageClock<'_> {
    fn drop(&mut self) {
        self.observe();
    }
}

/// Copies every output file into storage, under `results/` of the job's files.
async fn store_results(ctx: &Context, job: &Job, output: &Path) -> Result<Vec<ResultFile>, ErrorInfo> {
    let id = job.id;
    let mut files = collect_files(output).map_err(|e| ErrorInfo::new(Code::WorkerIoError, e.to_string()))?;
    files.sort();
    let mut results = Vec::new();
    for (name, path) in files {
        let key = job.file_key(&format!("results/{name}"));
        // Copied, not moved: if this attempt dies half-way, the next one still has every file.
        let size = (|| ctx.files.put_file(&key, &path))
            .retry(download::backoff(&ctx.settings.worker))
            .notify(|e, wait| log::warn!("job {id}: result {name} not stored ({e}); retry in {wait:?}"))
            .await
            .map_err(|e| ErrorInfo::new(Code::StorageError, e.to_string()))?;
        let url = format!("/api/v1/jobs/{id}/files/{name}");
        results.push(ResultFile { name, size, url });
    }
    Ok(results)
}

/// Every regular file below `root`, with its path relative to it.
fn collect_files(root: &Path) -> Result<Vec<(String, PathBuf)>, walkdir::Error> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry?;
        // Links are not followed and skipped: an engine output must not make us publish files
        // outside it.
        if entry.file_type().is_file() {
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, entry.into_path()));
        }
    }
    Ok(out)
}
