//! Following a job to its end: the job's Server-Sent Events when the server has them, else
//! polling; a bar for the stage and node n/N; Ctrl-C asks whether to cancel.

use super::{download, Client, ClientError, Exit};
use crate::jobs::{JobView, Status};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

/// Follows the job to its end, then downloads its results into `out` when it succeeded.
pub async fn wait_and_download(client: &Client, id: &str, out: &Path) -> Result<Exit, ClientError> {
    let job = match wait(client, id).await? {
        Ok(job) => job,
        Err(exit) => return Ok(exit),
    };
    match outcome(client, &job).await {
        Exit::Ok => download::results(client, &job, out, &[]).await.map(|_| Exit::Ok),
        other => Ok(other),
    }
}

/// The job once final; `Err(exit)` when Ctrl-C left it running.
pub async fn wait(client: &Client, id: &str) -> Result<Result<JobView, Exit>, ClientError> {
    let bar = node_bar();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut follow = std::pin::pin!(follow(client, id, &bar));
    let result = tokio::select! {
        job = &mut follow => Ok(job?),
        _ = &mut interrupted => {
            // The prompt and the messages after it on a quiet terminal: no bar from here on.
            bar.disable_steady_tick();
            bar.finish_and_clear();
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            match ask_cancel(id).await {
                true => {
                    eprintln!("Canceling {id}...");
                    let url = client.url(&format!("jobs/{id}/cancel"));
                    client.send(|| client.request(Method::POST, &url)).await?;
                    Ok(follow.await?)
                }
                false => {
                    eprintln!("Left running. Cancel it with: meshroom-svc jobs cancel {id}");
                    Err(Exit::Interrupted)
                }
            }
        }
    };
    bar.finish_and_clear();
    Ok(result)
}

/// Asks on the terminal whether to cancel; without one (or on a second Ctrl-C), no.
async fn ask_cancel(id: &str) -> bool {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return false;
    }
    eprint!("\nCancel job {id}? [y/N] (Ctrl-C again leaves it running) ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    });
    tokio::select! {
        line = answer => matches!(line, Ok(Ok(l)) if l.trim().eq_ignore_ascii_case("y")),
        _ = tokio::signal::ctrl_c() => false,
    }
}

/// What a final job means: prints why it did not succeed; the exit code.
pub async fn outcome(client: &Client, job: &JobView) -> Exit {
    match job.status {
        Status::Succeeded => Exit::Ok,
        Status::Canceled => {
            eprintln!("job {} was canceled", job.id);
            Exit::Canceled
        }
        _ => {
            let (code, message) = job.error.as_ref().map_or(("unknown".to_string(), String::new()), |e| {
                (format!("{:?}", e.code), e.message.clone())
            });
            let code = serde_json::to_value(job.error.as_ref().map(|e| e.code))
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or(code);
            eprintln!("job {} failed: {code}: {message}", job.id);
            let tail = match &job.log_tail {
                Some(t) => Some(t.clone()),
                None => log_tail(client, &job.id.to_string()).await,
            };
            if let Some(t) = tail {
                eprintln!("--- end of the engine log ---\n{}", t.trim_end());
            }
            Exit::JobFailed
        }
    }
}

async fn log_tail(client: &Client, id: &str) -> Option<String> {
    let url = client.url(&format!("jobs/{id}/log"));
    let text = client
        .send(|| client.request(Method::GET, &url))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(20)..].join("\n"))
}

/// The job once final, from its event stream (reconnecting where it left off) or by polling.
async fn follow(client: &Client, id: &str, bar: &ProgressBar) -> Result<JobView, ClientError> {
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let url = client.url(&format!("jobs/{id}/events"));
        let mut req = client.request(Method::GET, &url).header("accept", "text/event-stream");
        if let Some(l) = &last_id {
            req = req.header("last-event-id", l);
        }
        let resp = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            // A server without events: poll.
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND && client.job(id).await.is_ok() => {
                return poll(client, id, bar).await;
            }
            Ok(r) if !r.status().is_server_error() => return Err(super::api_error(r).await),
            other => {
                failures += 1;
                if failures >= 5 {
                    let why = other.map_or_else(|e| e.to_string(), |r| format!("HTTP {}", r.status()));
                    return Err(ClientError::Unreachable(why));
                }
                tokio::time::sleep(Duration::from_secs(1 << failures.min(4))).await;
                continue;
            }
        };
        failures = 0;
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let (mut event, mut data) = ("", String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        last_id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = if v == "job" {
                            "job"
                        } else if v == "end" {
                            "end"
                        } else {
                            "other"
                        };
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                match event {
                    "job" => {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) {
                            if let Ok(job) = serde_json::from_value::<JobView>(v["job"].clone()) {
                                show(bar, &job);
                            }
                        }
                    }
                    // The stream says the job is final: its state, once more, from the API.
                    "end" => return client.job(id).await,
                    _ => {}
                }
            }
        }
        // The stream broke: reconnect after what we had.
    }
}

async fn poll(client: &Client, id: &str, bar: &ProgressBar) -> Result<JobView, ClientError> {
    loop {
        let job = client.job(id).await?;
        show(bar, &job);
        if job.status.is_final() {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A bar for node n/N on a terminal; elsewhere a line per change on stderr.
fn node_bar() -> ProgressBar {
    if !super::fancy() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    let style = ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed_precise}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

fn show(bar: &ProgressBar, job: &JobView) {
    let p = &job.progress;
    let stage = job
        .stage
        .map_or_else(|| job.status.as_str().to_string(), |s| format!("{s:?}").to_lowercase());
    let msg = match job.status.is_final() {
        true => job.status.as_str().to_string(),
        false => format!("{stage} {}", p.node.clone().unwrap_or_default()),
    };
    if bar.is_hidden() {
        if bar.message() != msg {
            eprintln!("{}: {msg} ({:.0}%)", job.status.as_str(), p.percent);
            bar.set_message(msg);
        }
        return;
    }
    bar.set_length(p.node_count.unwrap_or(1).max(1) as u64);
    bar.set_position(p.node_index.unwrap_or(0) as u64);
    bar.set_message(msg);
}
