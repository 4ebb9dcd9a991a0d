//! `meshroom-svc jobs ...`: list, show, cancel, retry, delete, logs, download, wait.

use super::args::{JobsAction, JobsArgs};
use super::{download, follow, print_json, say, Client, ClientError, Exit};
use crate::http::JobPage;
use crate::jobs::{JobView, Status};
use futures_util::StreamExt;
use reqwest::Method;
use std::path::PathBuf;

/// Runs a `jobs` subcommand; the exit code.
pub async fn run(args: JobsArgs) -> Result<Exit, ClientError> {
    let c = Client::new(&args.server.server, args.server.api_key.clone(), args.server.json)?;
    match args.action {
        JobsAction::List { status, limit } => {
            let mut path = format!("jobs?view=summary&limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={s}"));
            }
            let page: JobPage = c.get(&path).await?;
            match c.json {
                true => print_json(&page.jobs),
                false => table(&page.jobs),
            }
        }
        JobsAction::Show { id } => {
            let job = c.job(&id).await?;
            match c.json {
                true => print_json(&job),
                false => describe(&job),
            }
        }
        JobsAction::Cancel { id } => act(&c, Method::POST, &format!("jobs/{id}/cancel"), "cancel requested").await?,
        JobsAction::Retry { id } => act(&c, Method::POST, &format!("jobs/{id}/retry"), "queued again").await?,
        JobsAction::Delete { id } => act(&c, Method::DELETE, &format!("jobs/{id}"), "deleted").await?,
        JobsAction::Logs { id, follow } => logs(&c, &id, follow).await?,
        JobsAction::Download { id, out, files } => {
            let job = c.job(&id).await?;
            if job.status != Status::Succeeded {
                return Err(ClientError::Usage(format!(
                    "job {id} is {}: no results",
                    job.status.as_str()
                )));
            }
            let out = out.unwrap_or_else(|| PathBuf::from(&id));
            let paths = download::results(&c, &job, &out, &files).await?;
            if c.json {
                print_json(&paths);
            }
        }
        JobsAction::Wait { id } => {
            let job = match follow::wait(&c, &id).await? {
                Ok(job) => job,
                Err(exit) => return Ok(exit),
            };
            if c.json {
                print_json(&job);
            } else {
                say(job.status.as_str());
            }
            return Ok(follow::outcome(&c, &job).await);
        }
    }
    Ok(Exit::Ok)
}

/// A request whose answer is the job (or nothing); prints it.
async fn act(c: &Client, method: Method, path: &str, done: &str) -> Result<(), ClientError> {
    let url = c.url(path);
    let resp = c.send(|| c.request(method.clone(), &url)).await?;
    if c.json {
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        print_json(&body);
    } else {
        eprintln!("{done}");
    }
    Ok(())
}

/// The engine log; with `follow`, its lines as they come (from the job's events) until the end.
async fn logs(c: &Client, id: &str, follow: bool) -> Result<(), ClientError> {
    if !follow {
        let url = c.url(&format!("jobs/{id}/log"));
        let text = c
            .send(|| c.request(Method::GET, &url))
            .await?
            .text()
            .await
            .unwrap_or_default();
        say(text.trim_end_matches('\n'));
        return Ok(());
    }
    let url = c.url(&format!("jobs/{id}/events?log=true"));
    let resp = c.send(|| c.request(Method::GET, &url)).await?;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if frame.contains("\nevent: end\n") {
                return Ok(());
            }
            if !frame.contains("\nevent: log\n") {
                continue;
            }
            let data = frame.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("{}");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                say(v["line"].as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

fn paint(status: Status) -> String {
    let s = console::style(status.as_str());
    let s = match status {
        Status::Succeeded => s.green(),
        Status::Failed => s.red(),
        Status::Canceled => s.yellow(),
        _ => s.cyan(),
    };
    // Colours only on a terminal, and never with NO_COLOR (console checks both for stdout).
    s.for_stdout().to_string()
}

fn table(jobs: &[JobView]) {
    say(format!(
        "{:<36}  {:<10}  {:>5}  {:<14}  CREATED",
        "ID", "STATUS", "DONE", "PIPELINE"
    ));
    for j in jobs {
        let status = format!("{:<10}", j.status.as_str());
        say(format!(
            "{:<36}  {}  {:>4.0}%  {:<14}  {}",
            j.id,
            status.replace(j.status.as_str(), &paint(j.status)),
            j.progress.percent,
            j.pipeline,
            j.created_at.format("%Y-%m-%d %H:%M:%S")
        ));
    }
}

fn describe(j: &JobView) {
    say(format!("id:        {}", j.id));
    say(format!("status:    {}", paint(j.status)));
    say(format!("pipeline:  {}", j.pipeline));
    say(format!(
        "progress:  {:.0}% {}",
        j.progress.percent,
        j.progress.node.clone().unwrap_or_default()
    ));
    say(format!("created:   {}", j.created_at.to_rfc3339()));
    if let Some(f) = j.finished_at {
        say(format!("finished:  {}", f.to_rfc3339()));
    }
    if let Some(e) = &j.error {
        say(format!("error:     {}", e.message));
    }
    for r in &j.results {
        say(format!("result:    {} ({} bytes)", r.name, r.size));
    }
}
