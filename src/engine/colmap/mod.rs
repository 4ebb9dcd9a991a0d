//! COLMAP on CPU: feature extraction, exhaustive matching, mapping, export, and a coarse mesh.
//!
//! Each stage is one `colmap` command under the same supervision as Meshroom. COLMAP's exit code
//! cannot be trusted (a mapper that builds nothing may still exit 0), so success is judged by the
//! model: the largest one must register at least `engine.min_registered_images` images.

use super::{check_ended, EngineError, Run};
use crate::jobs::{Progress, Summary};
use crate::process::{self, Ended, Supervised};
use std::path::{Path, PathBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod parse;
mod steps;
use steps::{Folders, Step};

/// Meshes the sparse points with Open3D; written next to the job's files when needed.
const MESHER: &str = include_str!("mesh.py");

/// Runs every stage; returns what the model holds.
pub async fn reconstruct(
    run: &Run<'_>,
    cancel: &CancellationToken,
    mut on_progress: impl FnMut(Progress),
) -> Result<Summary, EngineError> {
    process::kill_job_tree(run.job, None, run.grace).await;
    let folders = Folders::prepare(run).await?;
    let image_count = std::fs::read_dir(&folders.images)?.count() as u32;
    let mut steps = StageRunner {
        run,
        cancel,
        deadline: Instant::now() + run.timeout,
        report: &mut on_progress,
    };
    steps
        .checked(
            Step::FeatureExtraction,
            folders.extract(),
            "SiftExtraction.",
            parse::extraction,
        )
        .await?;
    steps
        .checked(
            Step::FeatureMatching,
            folders.match_all(),
            "SiftMatching.",
            parse::matching,
        )
        .await?;
    let registering = move |line: &str| parse::registering(line, image_count);
    match steps
        .command(Step::Mapping, folders.map(), "Mapper.", registering)
        .await?
    {
        // No model is judged below: mapper exits 1 when no image pair matches.
        Ended::Exited(_) => {}
        other => check(other, "mapper", run)?,
    }
    let (model, mut summary) = steps.best_model(&folders.sparse, image_count).await?;
    let needed = run.config.min_registered_images as u32;
    if summary.registered_images < needed {
        let registered = summary.registered_images;
        return Err(EngineError::TooFewRegistered {
            registered,
            images: image_count,
            needed,
        });
    }
    let ply = folders.out.join("sparse.ply");
    for args in folders.export(&model, &ply) {
        steps.checked(Step::Export, args, "", |_| None).await?;
    }
    summary.mesh = steps.mesh(&ply, &folders.out.join("mesh.ply")).await?;
    write_cameras(&folders.out).await;
    Ok(summary)
}

/// `cameras.json` beside the model, for the console's viewer. Optional: the model stands without it.
async fn write_cameras(out: &std::path::Path) {
    let Ok(text) = tokio::fs::read_to_string(out.join("sparse/images.txt")).await else {
        return;
    };
    let json = serde_json::to_vec(&parse::cameras(&text)).unwrap_or_default();
    if let Err(e) = tokio::fs::write(out.join("cameras.json"), json).await {
        log::warn!("cameras.json not written: {e}");
    }
}

/// A clean exit, or the matching error.
fn check(ended: Ended, program: &str, run: &Run<'_>) -> Result<(), EngineError> {
    check_ended(ended, &format!("colmap {program}"), run.timeout)
}

/// Runs stage commands of one job against one deadline, reporting progress.
struct StageRunner<'a, 'r, F> {
    run: &'a Run<'r>,
    cancel: &'a CancellationToken,
    deadline: Instant,
    report: &'a mut F,
}

impl<F: FnMut(Progress)> StageRunner<'_, '_, F> {
    /// Runs a stage command that must exit 0 (named after its first argument in errors).
    async fn checked(
        &mut self,
        step: Step,
        args: Vec<String>,
        section: &str,
        within: impl Fn(&str) -> Option<f32>,
    ) -> Result<(), EngineError> {
        let program = args[0].clone();
        let ended = self.command(step, args, section, within).await?;
        check(ended, &program, self.run)
    }

    /// Runs `colmap ARGS` (plus the job's overrides whose name starts with `section`) as `step`;
    /// `within` reads a line into the fraction of the step done.
    async fn command(
        &mut self,
        step: Step,
        mut args: Vec<String>,
        section: &str,
        within: impl Fn(&str) -> Option<f32>,
    ) -> Result<Ended, EngineError> {
        if !section.is_empty() {
            for o in self.run.overrides.iter().filter(|o| o.starts_with(section)) {
                let (key, value) = o.split_once('=').unwrap_or((o, ""));
                args.extend([format!("--{key}"), value.to_string()]);
            }
        }
        let (run, deadline, cancel) = (self.run, self.deadline, self.cancel);
        let report = &mut *self.report;
        report(step.progress(0.0));
        supervised(run, deadline, cancel, run.binary, &args, |line| {
            if let Some(done) = within(line) {
                report(step.progress(done));
            }
        })
        .await
    }

    async fn supervised(
        &self,
        program: &Path,
        args: &[String],
        on_line: impl FnMut(&str),
    ) -> Result<Ended, EngineError> {
        supervised(self.run, self.deadline, self.cancel, program, args, on_line).await
    }

    /// The model with the most registered images, and its summary (`model_analyzer`).
    async fn best_model(&mut self, sparse: &Path, images: u32) -> Result<(PathBuf, Summary), EngineError> {
        let mut best: Option<(PathBuf, Summary)> = None;
        let mut models: Vec<PathBuf> = std::fs::read_dir(sparse)?.flatten().map(|e| e.path()).collect();
        models.sort();
        for model in models {
            let args = vec!["model_analyzer".into(), "--path".into(), model.display().to_string()];
            let mut lines = Vec::new();
            let ended = self
                .supervised(self.run.binary, &args, |l| lines.push(l.to_string()))
                .await?;
            check(ended, "model_analyzer", self.run)?;
            let summary = parse::summary(&lines, images);
            if best
                .as_ref()
                .is_none_or(|(_, b)| summary.registered_images > b.registered_images)
            {
                best = Some((model, summary));
            }
        }
        best.ok_or(EngineError::TooFewRegistered {
            registered: 0,
            images,
            needed: self.run.config.min_registered_images as u32,
        })
    }

    /// Poisson mesh of the sparse points; `false` when it cannot be made here (no Open3D, too
    /// few points), which leaves the job successful with the sparse model.
    async fn mesh(&mut self, points: &Path, mesh: &Path) -> Result<bool, EngineError> {
        (self.report)(Step::Meshing.progress(0.0));
        let python = &self.run.config.python;
        if python.is_empty() {
            return Ok(false);
        }
        let script = self.run.dir.join("mesh.py");
        tokio::fs::write(&script, MESHER).await?;
        let args = [script, points.to_path_buf(), mesh.to_path_buf()].map(|p| p.display().to_string());
        match self.supervised(Path::new(python), &args, |_| {}).await {
            Ok(Ended::Exited(status)) if status.success() => Ok(true),
            Ok(Ended::Exited(_)) | Err(EngineError::Spawn(..)) => {
                log::warn!(
                    "job {}: no mesh from the sparse points (see the engine log)",
                    self.run.job
                );
                Ok(false)
            }
            Ok(other) => check(other, "mesh", self.run).map(|()| false),
            Err(e) => Err(e),
        }
    }
}

/// One command of the job, logged to its engine log, stopped by `cancel` or `deadline`.
async fn supervised(
    run: &Run<'_>,
    deadline: Instant,
    cancel: &CancellationToken,
    program: &Path,
    args: &[String],
    on_line: impl FnMut(&str),
) -> Result<Ended, EngineError> {
    let (env, log) = (run.env(), run.log_path());
    let cmd = Supervised {
        program,
        args,
        env: &env,
        job: run.job,
        owner: run.owner,
        log: &log,
        grace: run.grace,
    };
    Ok(process::supervise(&cmd, deadline, cancel, on_line, || {}).await?)
}

/// Which Python meshes COLMAP's points: the configured one when it has Open3D, else Debian's
/// `/usr/bin/python3` when that one has it (a pyenv, conda or venv Python often comes first on
/// PATH). Returns the Python to use and a line for `/ready`.
pub async fn resolve_mesher(configured: &str) -> (String, String) {
    const SYSTEM: &str = "/usr/bin/python3";
    if configured.is_empty() {
        return (
            String::new(),
            "off: engine.python is empty, COLMAP jobs give no mesh".into(),
        );
    }
    if crate::process::python_has_module(configured, "open3d").await {
        return (configured.into(), format!("ok: {configured} has open3d"));
    }
    if configured != SYSTEM && crate::process::python_has_module(SYSTEM, "open3d").await {
        log::warn!(
            "engine.python '{configured}' cannot import open3d; meshing with {SYSTEM}, which can \
             (set engine.python = \"{SYSTEM}\" to say so)"
        );
        return (
            SYSTEM.into(),
            format!("ok: {SYSTEM} has open3d ('{configured}' has not)"),
        );
    }
    let why = format!(
        "engine.python '{configured}' cannot import open3d: COLMAP jobs give no mesh (\"mesh\": false). \
         Install it (Debian: apt-get install python3-open3d, then engine.python = \"{SYSTEM}\"; \
         or pip install open3d into that Python)"
    );
    log::warn!("{why}");
    (configured.into(), format!("warning: {why}"))
}
