//! `meshroom-svc submit`: photos (files, folders, URLs) to a job; its id alone on stdout.

use super::args::SubmitArgs;
use super::{follow, print_json, say, Client, ClientError, Exit};
use crate::jobs::JobView;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Extensions of the photos taken from a folder.
const IMAGES: &[&str] = &["jpg", "jpeg", "png", "tif", "tiff"];

/// Runs `submit`; the exit code.
pub async fn run(args: SubmitArgs) -> Result<Exit, ClientError> {
    let client = Client::new(&args.server.server, args.server.api_key.clone(), args.server.json)?;
    let fields = fields(&args)?;
    let (urls, paths): (Vec<&String>, Vec<&String>) = args
        .photos
        .iter()
        .partition(|p| p.starts_with("http://") || p.starts_with("https://"));
    // One key for every attempt: a submit retried after a lost answer returns the same job.
    let key = uuid::Uuid::now_v7().to_string();
    let job: JobView = match (urls.is_empty(), paths.is_empty()) {
        (false, false) => return Err(ClientError::Usage("give photo files or URLs, not both".into())),
        (false, true) => {
            let mut body = fields;
            body.insert("image_urls".into(), json!(urls));
            let url = client.url("jobs");
            let resp = client
                .send(|| {
                    client
                        .request(Method::POST, &url)
                        .header("idempotency-key", &key)
                        .json(&body)
                })
                .await?;
            resp.json().await.map_err(|e| ClientError::Unreachable(e.to_string()))?
        }
        _ => upload(&client, &photos(&paths)?, &fields, &key).await?,
    };
    if client.json {
        print_json(&job);
    } else {
        say(format!("{}", job.id));
    }
    if !args.wait {
        eprintln!("Follow it with: meshroom-svc jobs wait {}", job.id);
        return Ok(Exit::Ok);
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(job.id.to_string()));
    follow::wait_and_download(&client, &job.id.to_string(), &out).await
}

/// The form fields besides the photos.
fn fields(args: &SubmitArgs) -> Result<Map<String, Value>, ClientError> {
    let mut f = Map::new();
    if let Some(p) = &args.pipeline {
        f.insert("pipeline".into(), json!(p));
    }
    if !args.params.is_empty() {
        let mut params = Map::new();
        for kv in &args.params {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ClientError::Usage(format!("--param {kv}: use NAME=VALUE")))?;
            // Numbers and booleans as such, anything else as text.
            let value = serde_json::from_str::<Value>(v)
                .ok()
                .filter(|v| !v.is_object() && !v.is_array());
            params.insert(k.to_string(), value.unwrap_or_else(|| json!(v)));
        }
        f.insert("params".into(), Value::Object(params));
    }
    if let Some(p) = &args.priority {
        f.insert("priority".into(), json!(p));
    }
    if let Some(m) = &args.metadata {
        let m: Value =
            serde_json::from_str(m).map_err(|e| ClientError::Usage(format!("--metadata is not JSON: {e}")))?;
        f.insert("metadata".into(), m);
    }
    if let Some(c) = &args.callback_url {
        f.insert("callback_url".into(), json!(c));
    }
    Ok(f)
}

/// The photo files: each file named, and each folder's images, recursively, in path order.
fn photos(paths: &[&String]) -> Result<Vec<(PathBuf, u64)>, ClientError> {
    let mut out = Vec::new();
    for p in paths {
        let path = Path::new(p.as_str());
        let meta = std::fs::metadata(path).map_err(|e| ClientError::Usage(format!("{p}: {e}")))?;
        if meta.is_file() {
            out.push((path.to_path_buf(), meta.len()));
            continue;
        }
        let mut found: Vec<(PathBuf, u64)> = walkdir::WalkDir::new(path)
            .sort_by_file_name()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file() && is_image(e.path()))
            .filter_map(|e| Some((e.path().to_path_buf(), e.metadata().ok()?.len())))
            .collect();
        if found.is_empty() {
            return Err(ClientError::Usage(format!("{p}: no photos in this folder")));
        }
        out.append(&mut found);
    }
    let mut names: Vec<String> = out.iter().map(|(p, _)| file_name(p)).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ClientError::Usage(format!("two photos are named {}: rename one", w[0])));
    }
    Ok(out)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGES.contains(&e.to_ascii_lowercase().as_str()))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Uploads the photos as one multipart request, streamed from disk, with a progress bar.
async fn upload(
    client: &Client,
    photos: &[(PathBuf, u64)],
    fields: &Map<String, Value>,
    key: &str,
) -> Result<JobView, ClientError> {
    let total: u64 = photos.iter().map(|(_, n)| n).sum();
    let bar = bar(total, "uploading");
    let url = client.url("jobs");
    let form = || -> Result<reqwest::multipart::Form, ClientError> {
        // A new attempt sends every byte again.
        bar.set_position(0);
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            form = form.text(k.clone(), text);
        }
        for (path, len) in photos {
            let file = std::fs::File::open(path).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
            let counted = bar.clone();
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)).inspect(move |c| {
                if let Ok(c) = c {
                    counted.inc(c.len() as u64);
                }
            });
            let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), *len)
                .file_name(file_name(path));
            form = form.part("images", part);
        }
        Ok(form)
    };
    // Opening the files is checked once before the first attempt.
    form()?;
    let resp = client
        .send(|| {
            let req = client.request(Method::POST, &url).header("idempotency-key", key);
            match form() {
                Ok(f) => req.multipart(f),
                // A file gone between attempts: the request fails, as it should.
                Err(e) => req.body(e.to_string()),
            }
        })
        .await;
    bar.finish_and_clear();
    let resp = resp?;
    resp.json().await.map_err(|e| ClientError::Unreachable(e.to_string()))
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
pub(super) fn bar(total: u64, what: &str) -> ProgressBar {
    if !super::fancy() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg:12} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}
