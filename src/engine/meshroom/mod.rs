//! Runs `meshroom_batch` for one job as docs/meshroom-contract.md describes: pinned to
//! its GPU, with progress from its status files (refined by its printed lines), never with `--cache`.

use super::{check_ended, EngineError, Run};
use crate::jobs::Progress;
use crate::process::{self, Supervised};
use std::path::Path;
use tokio_util::sync::CancellationToken;

pub mod nodes;
pub mod progress;

/// The command line, as the contract gives it.
fn args(run: &Run<'_>, resume: bool) -> Vec<String> {
    let mut args = vec![
        "--input".into(),
        run.dir.join("images").display().to_string(),
        "--output".into(),
        run.output_dir().display().to_string(),
        // Never --cache (ignored or nested in some releases): the cache follows --save.
        "--save".into(),
        run.dir.join("project.mg").display().to_string(),
        "--pipeline".into(),
        run.pipeline.to_string(),
    ];
    if resume {
        // A previous attempt crashed and left chunks RUNNING; resume what it finished.
        args.push("--forceStatus".into());
    }
    if !run.overrides.is_empty() {
        args.push("--paramOverrides".into());
        args.extend(run.overrides.iter().cloned());
    }
    args
}

/// Runs the engine to the end, reporting progress as it changes.
pub async fn reconstruct(
    run: &Run<'_>,
    cancel: &CancellationToken,
    mut on_progress: impl FnMut(Progress),
) -> Result<(), EngineError> {
    // A crashed predecessor may have left processes of this job behind.
    process::kill_job_tree(run.job, None, run.grace).await;
    tokio::fs::create_dir_all(run.output_dir()).await?;
    let resume = tokio::fs::try_exists(run.dir.join("project.mg")).await.unwrap_or(false);
    let cache_state = progress::scan_cache(&run.dir.join("MeshroomCache"));
    if resume && has_mesh(&run.output_dir()) && cache_state.succeeded > 0 && cache_state.unfinished == 0 {
        // The previous attempt published its model, then died storing it: every node is done, and
        // its outputs are complete. (meshroom_batch would print `Nodes to execute:  []`, exit 0
        // and publish nothing; not starting it saves its start-up.)
        log::info!(
            "job {}: the previous attempt's outputs are complete; not running the engine again",
            run.job
        );
        return Ok(());
    }
    let (args, env, log) = (args(run, resume), run.env(), run.log_path());
    let cmd = Supervised {
        program: run.binary,
        args: &args,
        env: &env,
        job: run.job,
        owner: run.owner,
        log: &log,
        grace: run.grace,
    };
    let cache = run.dir.join("MeshroomCache");
    // Both callbacks report progress: they share the tracker and the reporter.
    let state = std::sync::Mutex::new((progress::Tracker::default(), &mut on_progress));
    let on_line = |line: &str| {
        let (tracker, report) = &mut *state.lock().expect("lock");
        if tracker.line(line) {
            report(tracker.progress());
        }
    };
    let project = run.dir.join("project.mg");
    let on_tick = || {
        let (graph, scanned) = (progress::graph_size(&project), progress::scan_cache(&cache));
        let (tracker, report) = &mut *state.lock().expect("lock");
        if tracker.cache(graph, scanned) {
            report(tracker.progress());
        }
    };
    let deadline = tokio::time::Instant::now() + run.timeout;
    let ended = process::supervise(&cmd, deadline, cancel, on_line, on_tick).await?;
    match check_ended(ended, "meshroom_batch", run.timeout) {
        Err(EngineError::Failed { program, status, .. }) => {
            let node = progress::scan_cache(&cache).failed.into_iter().next();
            Err(EngineError::Failed { program, status, node })
        }
        Err(e) => Err(e),
        Ok(()) if !has_mesh(&run.output_dir()) => Err(EngineError::OutputMissing(
            "meshroom_batch succeeded but wrote no .obj mesh to its output folder".into(),
        )),
        Ok(()) => Ok(()),
    }
}

fn has_mesh(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x.eq_ignore_ascii_case("obj")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn arguments_follow_the_contract() {
        let overrides = vec!["Texturing:textureSide=4096".to_string()];
        let config = Default::default();
        let run = Run {
            job: uuid::Uuid::now_v7(),
            owner: "test",
            binary: Path::new("meshroom_batch"),
            dir: Path::new("/w/j"),
            pipeline: "photogrammetryDraft",
            overrides: &overrides,
            gpu: Some(1),
            timeout: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            config: &config,
        };
        let joined = args(&run, false).join(" ");
        assert_eq!(
            joined,
            "--input /w/j/images --output /w/j/output --save /w/j/project.mg --pipeline photogrammetryDraft \
             --paramOverrides Texturing:textureSide=4096"
        );
        assert!(!joined.contains("--cache"));
        assert!(args(&run, true).contains(&"--forceStatus".to_string()));
        assert_eq!(run.env()[0], ("CUDA_VISIBLE_DEVICES".to_string(), "1".to_string()));
    }
}
