//! Every subprocess the service starts goes through here, and so does killing them.
//!
//! Meshroom starts each node's command in a session of its own, so killing the batch tool's process
//! group misses them. Each job's processes are therefore marked with `MESHROOM_SVC_JOB=<id>` in
//! their environment (inherited by every descendant) and found again by scanning `/proc`, together
//! with the descendants of the engine's pid. This also finds processes left by a worker that died.

use nix::sys::signal::Signal;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Environment variable that marks every process of a job.
pub const JOB_ENV: &str = "MESHROOM_SVC_JOB";

/// Environment variable that marks every engine process of a worker (its data folder), so that
/// the next worker on that folder can stop what a killed predecessor left running.
pub const OWNER_ENV: &str = "MESHROOM_SVC_OWNER";

/// Whether an engine inherits the service's variable `name`: what programs need to run (search
/// path, home, user, locale, time zone, temporary folder, libraries) and the engines' own settings.
/// Nothing else: the service's environment holds its secrets (API keys, webhook secret, S3 keys,
/// broker URL), and every node command of the engine would inherit them.
pub fn inherited(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "USER" | "LOGNAME" | "LANG" | "LANGUAGE" | "TZ" | "TMPDIR" | "LD_LIBRARY_PATH"
    ) || name.starts_with("LC_")
        || name.starts_with("ALICEVISION_")
        || (name.starts_with("MESHROOM_") && !name.starts_with("MESHROOM_SVC_"))
}

/// Starts an engine command for a job: a cleared environment with the [`inherited`] variables and
/// `env`, its own process group (so a terminal's Ctrl-C reaches the service, which then stops the
/// job properly), the job marker, no stdin, stderr piped, and stdout on a pseudo-terminal, whose
/// reading end is returned.
///
/// The terminal is there because the official image's `meshroom_batch` is a frozen Python
/// executable: it ignores `PYTHONUNBUFFERED` and block-buffers its stdout into a pipe, so its
/// progress lines would arrive late and a killed run would lose its last ones. On a terminal it
/// writes each line as it is printed.
pub fn spawn_engine(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    job: Uuid,
    owner: &str,
) -> std::io::Result<(Child, tokio::fs::File)> {
    use nix::sys::termios::{self, LocalFlags, OutputFlags, SetArg};
    let pty = nix::pty::openpty(None, None)?;
    // Bytes as written: no "\r\n" for "\n", no echo.
    let mut mode = termios::tcgetattr(&pty.slave)?;
    mode.output_flags.remove(OutputFlags::OPOST);
    mode.local_flags.remove(LocalFlags::ECHO);
    termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &mode)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(inherited)))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(JOB_ENV, job.to_string())
        .env(OWNER_ENV, owner)
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave))
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    // Our copy of the terminal's slave end closes with the command: reads of the master end then
    // stop once every process holding it is gone.
    drop(cmd);
    Ok((child, tokio::fs::File::from_std(std::fs::File::from(pty.master))))
}

/// One engine command of a job, run to its end under supervision.
#[derive(Debug)]
pub struct Supervised<'a> {
    /// The executable.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Environment beyond the [`inherited`] variables.
    pub env: &'a [(String, String)],
    /// The job, for the process marker.
    pub job: Uuid,
    /// The worker's owner marker (see [`OWNER_ENV`]).
    pub owner: &'a str,
    /// stdout and stderr are appended here.
    pub log: &'a Path,
    /// SIGTERM to SIGKILL delay when the run is stopped.
    pub grace: Duration,
}

/// How a supervised command ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited by itself.
    Exited(ExitStatus),
    /// `cancel` fired.
    Canceled,
    /// The deadline passed.
    TimedOut,
}

/// Failures of supervision itself.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The program could not be started.
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// The log could not be written.
    #[error("engine log: {0}")]
    Log(#[from] std::io::Error),
}

/// Runs a command until it exits, `cancel` fires or `deadline` passes, feeding each output line
/// to `on_line` and calling `on_tick` every second. Whatever happens, no process of the job is
/// left running when it returns: engines start children in sessions of their own, which can
/// outlive them.
pub async fn supervise(
    cmd: &Supervised<'_>,
    deadline: Instant,
    cancel: &CancellationToken,
    mut on_line: impl FnMut(&str),
    mut on_tick: impl FnMut(),
) -> Result<Ended, SuperviseError> {
    let (mut child, terminal) = spawn_engine(cmd.program, cmd.args, cmd.env, cmd.job, cmd.owner)
        .map_err(|e| SuperviseError::Spawn(cmd.program.display().to_string(), e))?;
    let root = child.id();
    let mut log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cmd.log)
        .await?;
    let (tx, mut lines) = mpsc::channel::<String>(256);
    forward_lines(Some(terminal), tx.clone());
    forward_lines(child.stderr.take(), tx);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            Some(line) = lines.recv() => {
                log.write_all(line.as_bytes()).await?;
                on_line(&line);
            }
            _ = tick.tick() => on_tick(),
            status = child.wait() => break Ended::Exited(status?),
            _ = cancel.cancelled() => break Ended::Canceled,
            _ = tokio::time::sleep_until(deadline) => break Ended::TimedOut,
        }
    };
    let killed = kill_job_tree(cmd.job, root, cmd.grace).await;
    if killed > 0 {
        log::info!("job {}: stopped {killed} engine process(es)", cmd.job);
    }
    let _ = child.wait().await;
    // The pipes close once every process is gone; bound the wait all the same.
    let drain = async {
        while let Some(line) = lines.recv().await {
            log.write_all(line.as_bytes()).await?;
            on_line(&line);
        }
        Ok::<_, std::io::Error>(())
    };
    if let Ok(written) = tokio::time::timeout(Duration::from_secs(2), drain).await {
        written?;
    }
    log.flush().await?;
    Ok(outcome)
}

fn forward_lines(stream: Option<impl AsyncRead + Unpin + Send + 'static>, tx: mpsc::Sender<String>) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        // Lines may not be UTF-8; keep them, lossily. A terminal's master end reports EIO, not
        // end of file, once the last writer is gone: any error ends the stream.
        while reader.read_until(b'\n', &mut buf).await.unwrap_or(0) > 0 {
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).await.is_err() {
                break;
            }
            buf.clear();
        }
    });
}

/// GPU indices that `nvidia-smi` lists; empty when it is missing or fails.
pub async fn list_gpus() -> Vec<u32> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=index", "--format=csv,noheader"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// One GPU's utilisation (0 to 1) and memory in use and in all (bytes), as `nvidia-smi` reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    /// Its index.
    pub index: u32,
    /// Busy fraction over the last sample period.
    pub utilization: f64,
    /// Memory in use, bytes.
    pub memory_used: i64,
    /// Memory in all, bytes.
    pub memory_total: i64,
}

/// The readings of every GPU `nvidia-smi` knows; empty when it is missing, fails or takes over
/// 2 s (a machine without GPUs gives no error).
pub async fn read_gpus() -> Vec<GpuReading> {
    let run = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(2), run).await {
        Ok(Ok(o)) if o.status.success() => parse_gpu_readings(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

/// `0, 87, 10240, 24576` lines (index, %, MiB, MiB); lines that do not parse (`[N/A]`) are skipped.
fn parse_gpu_readings(text: &str) -> Vec<GpuReading> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let [index, util, used, total] = f.as_slice() else {
                return None;
            };
            Some(GpuReading {
                index: index.parse().ok()?,
                utilization: util.parse::<f64>().ok()? / 100.0,
                memory_used: used.parse::<i64>().ok()? << 20,
                memory_total: total.parse::<i64>().ok()? << 20,
            })
        })
        .collect()
}

/// Whether `python` can find the `module` (without importing it: Open3D takes seconds to load).
/// False when the program is missing, fails or takes over 10 s.
pub async fn python_has_module(python: &str, module: &str) -> bool {
    let probe = format!("import importlib.util, sys; sys.exit(importlib.util.find_spec('{module}') is None)");
    let run = Command::new(python)
        .args(["-c", &probe])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(tokio::time::timeout(Duration::from_secs(10), run).await, Ok(Ok(s)) if s.success())
}

/// Live processes of a job: those carrying its marker, and the descendants of `root`.
pub fn job_pids(job: Uuid, root: Option<u32>) -> Vec<i32> {
    marked_pids(&format!("{JOB_ENV}={job}"), root)
}

/// Live engine processes started by the worker on the data folder `owner`.
pub fn owner_pids(owner: &str) -> Vec<i32> {
    marked_pids(&format!("{OWNER_ENV}={owner}"), None)
}

/// Processes whose environment holds `marker` (`NAME=value`), and the descendants of `root`.
fn marked_pids(marker: &str, root: Option<u32>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let (name, value) = marker.split_once('=').expect("NAME=value");
    let mut parents: HashMap<i32, i32> = HashMap::new();
    let mut found: HashSet<i32> = HashSet::new();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    // A process may end while we read it: whatever cannot be read is skipped.
    for process in all.flatten() {
        let Ok(stat) = process.stat() else { continue };
        if stat.pid == me || stat.state == 'Z' {
            continue; // ourselves, or already dead and waiting to be reaped
        }
        parents.insert(stat.pid, stat.ppid);
        let marked = process
            .environ()
            .is_ok_and(|env| env.get(std::ffi::OsStr::new(name)).is_some_and(|v| v == value));
        if marked {
            found.insert(stat.pid);
        }
    }
    if let Some(root) = root.map(|r| r as i32) {
        if parents.contains_key(&root) {
            found.insert(root);
        }
        // Descendants: repeat until no new child of a found process appears.
        loop {
            let before = found.len();
            for (pid, ppid) in &parents {
                if found.contains(ppid) {
                    found.insert(*pid);
                }
            }
            if found.len() == before {
                break;
            }
        }
    }
    found.into_iter().collect()
}

/// Stops every process of a job: SIGTERM, then SIGKILL after `grace`, repeated until none is left
/// (new children may appear while it works). Returns how many processes were signalled.
pub async fn kill_job_tree(job: Uuid, root: Option<u32>, grace: Duration) -> usize {
    kill_all(&format!("job {job}"), || job_pids(job, root), grace).await
}

/// Stops every engine process a previous worker on the data folder `owner` left running.
pub async fn kill_owned(owner: &str, grace: Duration) -> usize {
    kill_all(&format!("worker {owner}"), || owner_pids(owner), grace).await
}

async fn kill_all(what: &str, find: impl Fn() -> Vec<i32>, grace: Duration) -> usize {
    let mut signalled: HashSet<i32> = HashSet::new();
    let started = tokio::time::Instant::now();
    loop {
        let pids = find();
        if pids.is_empty() {
            return signalled.len();
        }
        if started.elapsed() >= grace + Duration::from_secs(30) {
            // Only a process stuck in the kernel survives SIGKILL this long; say so, do not hang.
            log::error!("{what}: processes {pids:?} survive SIGKILL");
            return signalled.len();
        }
        let sig = if started.elapsed() >= grace {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        for pid in pids {
            if sig == Signal::SIGKILL || signalled.insert(pid) {
                // It may have ended since the scan: ESRCH is fine.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_readings_parse_and_skip_what_is_not_a_number() {
        let text = "0, 87, 10240, 24576\n1, [N/A], 0, 24576\ngarbage\n";
        assert_eq!(
            parse_gpu_readings(text),
            vec![GpuReading {
                index: 0,
                utilization: 0.87,
                memory_used: 10240 << 20,
                memory_total: 24576 << 20
            }]
        );
    }

    #[tokio::test]
    async fn kills_children_in_their_own_sessions_even_if_they_ignore_term() {
        let job = Uuid::now_v7();
        // The parent starts a child in a new session that ignores SIGTERM, then waits.
        let script = "setsid sh -c 'trap \"\" TERM; sleep 300' & sleep 300";
        let (mut child, _) =
            spawn_engine(Path::new("sh"), &["-c".into(), script.into()], &[], job, "test-owner").unwrap();
        let root = child.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(job_pids(job, root).len() >= 3, "{:?}", job_pids(job, root));
        let n = kill_job_tree(job, root, Duration::from_millis(500)).await;
        assert!(n >= 3);
        let _ = child.wait().await;
        assert!(job_pids(job, None).is_empty());
    }

    #[tokio::test]
    async fn output_lines_arrive_as_printed() {
        // Python block-buffers a pipe (and a frozen build ignores PYTHONUNBUFFERED); on the
        // terminal the engine gets, each line arrives when it is printed.
        let dir = tempfile::tempdir().unwrap();
        let script = "import time\nprint('first')\nprint('second')\ntime.sleep(3)\nprint('last')";
        let args = ["-c".to_string(), script.to_string()];
        let cmd = Supervised {
            program: Path::new("python3"),
            args: &args,
            env: &[("PYTHONUNBUFFERED".into(), String::new())],
            job: Uuid::now_v7(),
            owner: "test-owner",
            log: &dir.path().join("log"),
            grace: Duration::from_millis(100),
        };
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let ended = supervise(
            &cmd,
            deadline,
            &CancellationToken::new(),
            |l| seen.push((l.to_string(), started.elapsed())),
            || {},
        )
        .await
        .unwrap();
        assert!(matches!(ended, Ended::Exited(s) if s.success()), "{ended:?}");
        let lines: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(lines, ["first\n", "second\n", "last\n"], "no carriage returns");
        assert!(
            seen[0].1 < Duration::from_secs(2),
            "the first line waited for the end: {:?}",
            seen[0].1
        );
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(log, "first\nsecond\nlast\n");
    }
}
