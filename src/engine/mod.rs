//! The reconstruction engines: Meshroom (`meshroom_batch`) and COLMAP. Each preset names one; both
//! run under the same supervision (timeout, cancel, whole-tree kill) and report progress, errors
//! and log tails the same way.

use crate::config::EngineConfig;
use crate::error::Code;
use crate::jobs::{ErrorInfo, Progress, Summary};
use crate::pipelines::Engine;
use crate::process::{Ended, SuperviseError};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod colmap;
pub mod meshroom;

/// Why a run did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's program could not be found.
    #[error("{0}")]
    NotFound(String),
    /// The program could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// It exited non-zero.
    #[error("{program} exited with {status}{}", node.as_ref().map(|n| format!(" (node {n} failed)")).unwrap_or_default())]
    Failed {
        /// The program or stage.
        program: String,
        /// Exit status as printed.
        status: String,
        /// The Meshroom node whose status file says ERROR.
        node: Option<String>,
    },
    /// It exited 0 without the expected output.
    #[error("{0}")]
    OutputMissing(String),
    /// Too few images could be put together into one model.
    #[error("only {registered} of {images} images could be registered in one model (at least {needed} needed)")]
    TooFewRegistered {
        /// Images in the model.
        registered: u32,
        /// Images given.
        images: u32,
        /// `engine.min_registered_images`.
        needed: u32,
    },
    /// The job's time limit passed.
    #[error("the engine ran longer than the job's timeout of {0} s")]
    Timeout(u64),
    /// Cancel was asked.
    #[error("canceled")]
    Canceled,
    /// The working folder or the log could not be used.
    #[error("working folder: {0}")]
    Io(#[from] std::io::Error),
}

impl EngineError {
    /// The job error this becomes.
    pub fn to_error_info(&self) -> ErrorInfo {
        let code = match self {
            EngineError::NotFound(_) => Code::EngineNotFound,
            EngineError::Spawn(..) => Code::EngineSpawnFailed,
            EngineError::Failed { .. } => Code::EngineFailed,
            EngineError::OutputMissing(_) => Code::EngineOutputMissing,
            EngineError::TooFewRegistered { .. } => Code::TooFewImagesRegistered,
            EngineError::Timeout(_) => Code::EngineTimeout,
            EngineError::Canceled => Code::Canceled,
            EngineError::Io(_) => Code::EngineIoError,
        };
        ErrorInfo::new(code, self.to_string())
    }
}

impl From<SuperviseError> for EngineError {
    fn from(e: SuperviseError) -> Self {
        match e {
            SuperviseError::Spawn(program, e) => EngineError::Spawn(program, e),
            SuperviseError::Log(e) => EngineError::Io(e),
        }
    }
}

/// One run's inputs. Folders live in the job's working folder: `images/` in, `output/` out,
/// `engine.log` for the combined output of every command.
#[derive(Debug)]
pub struct Run<'a> {
    /// The job, for the process marker and logs.
    pub job: Uuid,
    /// The worker's owner marker (its data folder).
    pub owner: &'a str,
    /// The engine's program.
    pub binary: &'a Path,
    /// The job's working folder.
    pub dir: &'a Path,
    /// The preset's pipeline (a Meshroom template or `.mg` file; a COLMAP mode).
    pub pipeline: &'a str,
    /// `Name:param=value` / `Section.option=value` overrides.
    pub overrides: &'a [String],
    /// GPU to pin with `CUDA_VISIBLE_DEVICES`; `None` hides every GPU.
    pub gpu: Option<u32>,
    /// Time limit of the whole run.
    pub timeout: Duration,
    /// SIGTERM to SIGKILL delay.
    pub grace: Duration,
    /// Settings of `[engine]`.
    pub config: &'a EngineConfig,
}

impl Run<'_> {
    /// Where the engine writes the results.
    pub fn output_dir(&self) -> PathBuf {
        self.dir.join("output")
    }

    /// The combined stdout and stderr of the engine.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("engine.log")
    }

    /// Environment of every engine command: pinned GPU, headless Qt, unbuffered Python.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "CUDA_VISIBLE_DEVICES".to_string(),
                self.gpu.map(|g| g.to_string()).unwrap_or_default(),
            ),
            ("QT_QPA_PLATFORM".into(), "offscreen".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ];
        // `engine.env`: NAME=VALUE sets, a bare NAME passes the service's own value on.
        for entry in &self.config.env {
            match entry.split_once('=') {
                Some((name, value)) => env.push((name.into(), value.into())),
                None => {
                    if let Ok(value) = std::env::var(entry) {
                        env.push((entry.clone(), value));
                    }
                }
            }
        }
        env
    }
}

/// Runs a preset's engine to the end; COLMAP runs also return a summary of the model.
pub async fn reconstruct(
    engine: Engine,
    run: &Run<'_>,
    cancel: &CancellationToken,
    on_progress: impl FnMut(Progress),
) -> Result<Option<Summary>, EngineError> {
    match engine {
        Engine::Meshroom => meshroom::reconstruct(run, cancel, on_progress).await.map(|()| None),
        Engine::Colmap => colmap::reconstruct(run, cancel, on_progress).await.map(Some),
    }
}

/// The nodes of a run that ended, with their real start and end, for engines that record them
/// (Meshroom's status files, from `since` on); `None` for COLMAP, whose steps are timed as they
/// report.
pub fn node_runs(
    engine: Engine,
    run: &Run<'_>,
    since: chrono::DateTime<chrono::Utc>,
) -> Option<Vec<meshroom::nodes::NodeRun>> {
    match engine {
        Engine::Meshroom => Some(meshroom::nodes::node_runs(&run.dir.join("MeshroomCache"), since)),
        Engine::Colmap => None,
    }
}

/// Finds an engine's program: the configured path, then its environment variable, then `PATH`.
pub fn find_binary(engine: Engine, config: &EngineConfig) -> Result<PathBuf, EngineError> {
    let (configured, var, name, key) = match engine {
        Engine::Meshroom => (
            &config.meshroom_batch,
            "MESHROOM_BATCH",
            "meshroom_batch",
            "engine.meshroom_batch",
        ),
        Engine::Colmap => (&config.colmap, "COLMAP", "colmap", "engine.colmap"),
    };
    let from_env = std::env::var(var).unwrap_or_default();
    // The first one given wins, found or not: a set path that is wrong must say so, not fall back.
    let wanted = [configured.as_str(), from_env.as_str()]
        .into_iter()
        .find(|c| !c.is_empty())
        .unwrap_or(name);
    // `which` takes a path as it is (if executable) and looks a bare name up on PATH.
    which::which(wanted)
        .map_err(|_| EngineError::NotFound(format!("{name} not found: set {key}, {var}, or put it on PATH")))
}

/// Maps how a supervised command ended to an error, `Ok(())` for a clean exit.
fn check_ended(ended: Ended, program: &str, timeout: Duration) -> Result<(), EngineError> {
    match ended {
        Ended::Exited(status) if status.success() => Ok(()),
        Ended::Exited(status) => Err(EngineError::Failed {
            program: program.into(),
            status: describe(status),
            node: None,
        }),
        Ended::Canceled => Err(EngineError::Canceled),
        Ended::TimedOut => Err(EngineError::Timeout(timeout.as_secs())),
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "an unknown status".into(),
    }
}

/// The last `max` bytes of a log, starting at a line boundary.
pub fn tail(path: &Path, max: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    Some(match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(tail(&p, 15).unwrap(), "third\n");
        assert_eq!(tail(&p, 1000).unwrap(), "first line\nsecond line\nthird\n");
    }

    #[test]
    fn missing_binaries_say_how_to_configure_them() {
        let config = EngineConfig {
            colmap: "/nonexistent/colmap".into(),
            ..Default::default()
        };
        let err = find_binary(Engine::Colmap, &config).unwrap_err();
        assert_eq!(err.to_error_info().code, Code::EngineNotFound);
        assert!(err.to_string().contains("engine.colmap"), "{err}");
    }
}
