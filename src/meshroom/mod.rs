//! Runs `meshroom_batch` for one job as ../shared/docs/meshroom-contract.md describes: supervised,
//! pinned to its GPU, with progress, a timeout, cancel, and a whole-tree kill.

use crate::jobs::{ErrorInfo, Progress};
use crate::process;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod progress;

/// Why a run did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No `meshroom_batch` could be found.
    #[error("meshroom_batch not found: set engine.meshroom_batch, MESHROOM_BATCH, or put it on PATH")]
    NotFound,
    /// The binary could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// It exited non-zero.
    #[error("meshroom_batch exited with {status}{}", node.as_ref().map(|n| format!(" (node {n} failed)")).unwrap_or_default())]
    Failed {
        /// Exit status as printed.
        status: String,
        /// The node whose status file says ERROR.
        node: Option<String>,
    },
    /// It exited 0 without a textured mesh in the output folder.
    #[error("meshroom_batch succeeded but wrote no .obj mesh to its output folder")]
    OutputMissing,
    /// The job's time limit passed.
    #[error("the engine ran longer than the job's timeout of {0} s")]
    Timeout(u64),
    /// Cancel was asked.
    #[error("canceled")]
    Canceled,
    /// The working folder could not be used.
    #[error("working folder: {0}")]
    Io(#[from] std::io::Error),
}

impl EngineError {
    /// The job error this becomes.
    pub fn to_error_info(&self) -> ErrorInfo {
        let code = match self {
            EngineError::NotFound => "engine_not_found",
            EngineError::Spawn(..) => "engine_spawn_failed",
            EngineError::Failed { .. } => "engine_failed",
            EngineError::OutputMissing => "engine_output_missing",
            EngineError::Timeout(_) => "engine_timeout",
            EngineError::Canceled => "canceled",
            EngineError::Io(_) => "engine_io_error",
        };
        ErrorInfo::new(code, self.to_string())
    }
}

/// Finds the batch tool: the configured path, then `$MESHROOM_BATCH`, then `PATH`.
pub fn find_binary(configured: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let from_env = std::env::var("MESHROOM_BATCH").unwrap_or_default();
    for candidate in [configured, from_env.as_str()] {
        if !candidate.is_empty() {
            let p = PathBuf::from(candidate);
            return executable(&p).then_some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("meshroom_batch"))
        .find(|p| executable(p))
}

/// One run's inputs. Folders live in the job's working folder.
#[derive(Debug)]
pub struct Run<'a> {
    /// The job, for the process marker and logs.
    pub job: Uuid,
    /// `meshroom_batch` path.
    pub binary: &'a Path,
    /// The job's working folder: images/, output/, project.mg, MeshroomCache/, engine.log.
    pub dir: &'a Path,
    /// Template name or `.mg` path.
    pub pipeline: &'a str,
    /// `--paramOverrides` entries.
    pub overrides: &'a [String],
    /// GPU to pin with `CUDA_VISIBLE_DEVICES`; `None` hides every GPU.
    pub gpu: Option<u32>,
    /// Time limit.
    pub timeout: Duration,
    /// SIGTERM to SIGKILL delay.
    pub grace: Duration,
}

impl Run<'_> {
    /// Where the engine writes its published model.
    pub fn output_dir(&self) -> PathBuf {
        self.dir.join("output")
    }

    /// The combined stdout and stderr of the engine.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("engine.log")
    }

    fn args(&self, resume: bool) -> Vec<String> {
        let mut args = vec![
            "--input".into(),
            self.dir.join("images").display().to_string(),
            "--output".into(),
            self.output_dir().display().to_string(),
            // Never --cache (ignored or nested in some releases): the cache follows --save.
            "--save".into(),
            self.dir.join("project.mg").display().to_string(),
            "--pipeline".into(),
            self.pipeline.to_string(),
        ];
        if resume {
            // A previous attempt crashed and left chunks RUNNING; resume what it finished.
            args.push("--forceStatus".into());
        }
        if !self.overrides.is_empty() {
            args.push("--paramOverrides".into());
            args.extend(self.overrides.iter().cloned());
        }
        args
    }
}

/// Runs the engine to the end, reporting progress as it changes.
pub async fn run(
    run: &Run<'_>,
    cancel: &CancellationToken,
    mut on_progress: impl FnMut(Progress),
) -> Result<(), EngineError> {
    // A crashed predecessor may have left processes of this job behind.
    process::kill_job_tree(run.job, None, run.grace).await;
    tokio::fs::create_dir_all(run.output_dir()).await?;
    let resume = tokio::fs::try_exists(run.dir.join("project.mg")).await.unwrap_or(false);
    let env = [
        (
            "CUDA_VISIBLE_DEVICES",
            run.gpu.map(|g| g.to_string()).unwrap_or_default(),
        ),
        ("QT_QPA_PLATFORM", "offscreen".to_string()),
        ("PYTHONUNBUFFERED", "1".to_string()),
    ];
    let mut child = process::spawn_engine(run.binary, &run.args(resume), &env, run.job)
        .map_err(|e| EngineError::Spawn(run.binary.display().to_string(), e))?;
    let root = child.id();
    let mut log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.log_path())
        .await?;
    let (tx, mut lines) = mpsc::channel::<String>(256);
    forward_lines(child.stdout.take(), tx.clone());
    forward_lines(child.stderr.take(), tx);

    let mut tracker = progress::Tracker::default();
    let cache = run.dir.join("MeshroomCache");
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::sleep(run.timeout);
    tokio::pin!(deadline);
    let outcome = loop {
        tokio::select! {
            Some(line) = lines.recv() => {
                log.write_all(line.as_bytes()).await?;
                if tracker.line(&line) {
                    on_progress(tracker.progress());
                }
            }
            _ = poll.tick() => {
                if tracker.succeeded(progress::scan_cache(&cache).succeeded) {
                    on_progress(tracker.progress());
                }
            }
            status = child.wait() => break Ok(status?),
            _ = cancel.cancelled() => break Err(EngineError::Canceled),
            _ = &mut deadline => break Err(EngineError::Timeout(run.timeout.as_secs())),
        }
    };
    // Whatever happened, nothing of the job keeps running: node commands live in their own
    // sessions and can outlive the batch tool.
    let killed = process::kill_job_tree(run.job, root, run.grace).await;
    if killed > 0 {
        log::info!("job {}: stopped {killed} engine process(es)", run.job);
    }
    let _ = child.wait().await;
    // The pipes close once every process is gone; bound the wait all the same.
    let drain = async {
        while let Some(line) = lines.recv().await {
            log.write_all(line.as_bytes()).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    if let Ok(written) = tokio::time::timeout(Duration::from_secs(2), drain).await {
        written?;
    }
    log.flush().await?;
    let status = outcome?;
    if !status.success() {
        let node = progress::scan_cache(&cache).failed.into_iter().next();
        let status = match status.code() {
            Some(code) => format!("exit code {code}"),
            None => format!(
                "signal {}",
                std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            ),
        };
        return Err(EngineError::Failed { status, node });
    }
    if !has_mesh(&run.output_dir()) {
        return Err(EngineError::OutputMissing);
    }
    Ok(())
}

fn forward_lines(stream: Option<impl AsyncRead + Unpin + Send + 'static>, tx: mpsc::Sender<String>) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        // Lines may not be UTF-8; keep them, lossily.
        while reader.read_until(b'\n', &mut buf).await.unwrap_or(0) > 0 {
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).await.is_err() {
                break;
            }
            buf.clear();
        }
    });
}

fn has_mesh(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x.eq_ignore_ascii_case("obj")))
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
    fn arguments_follow_the_contract() {
        let dir = Path::new("/w/j");
        let overrides = vec!["Texturing:textureSide=4096".to_string()];
        let run = Run {
            job: Uuid::now_v7(),
            binary: Path::new("meshroom_batch"),
            dir,
            pipeline: "photogrammetryDraft",
            overrides: &overrides,
            gpu: Some(1),
            timeout: Duration::from_secs(1),
            grace: Duration::from_secs(1),
        };
        let args = run.args(false).join(" ");
        assert_eq!(
            args,
            "--input /w/j/images --output /w/j/output --save /w/j/project.mg --pipeline photogrammetryDraft \
             --paramOverrides Texturing:textureSide=4096"
        );
        assert!(!args.contains("--cache"));
        assert!(run.args(true).contains(&"--forceStatus".to_string()));
    }

    #[test]
    fn tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(tail(&p, 15).unwrap(), "third\n");
        assert_eq!(tail(&p, 1000).unwrap(), "first line\nsecond line\nthird\n");
    }
}
