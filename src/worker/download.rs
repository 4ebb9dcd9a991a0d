//! Puts a job's images in its working folder: uploads from storage, URLs over HTTP, several at once,
//! streamed to disk with the size and type limits enforced as bytes arrive.

use crate::app::App;
use crate::images;
use crate::jobs::{ErrorInfo, Job};
use futures_util::{StreamExt, TryStreamExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The HTTP client for image downloads: a few redirects, bounded waits.
pub fn client(read_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(read_timeout)
        .user_agent(concat!("meshroom-svc/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static client settings")
}

/// Fetches every image of the job into `dir`.
pub async fn fetch_all(app: &App, job: &Job, dir: &Path) -> Result<(), ErrorInfo> {
    for upload in &job.uploads {
        app.storage
            .fetch_to_file(
                &Job::key(job.id, &format!("inputs/{}", upload.name)),
                &dir.join(&upload.name),
            )
            .await
            .map_err(|e| ErrorInfo::new("storage_error", e.to_string()))?;
    }
    let total = AtomicU64::new(job.uploads.iter().map(|u| u.size).sum());
    let offset = job.uploads.len();
    let total = &total;
    // Owned URLs: a stream of futures borrowing its items is not Send.
    futures_util::stream::iter(job.image_urls.clone().into_iter().enumerate())
        .map(|(i, url)| async move { fetch_url(app, &url, offset + i, dir, total).await })
        .buffer_unordered(app.config.worker.download_concurrency as usize)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn fetch_url(app: &App, url: &str, index: usize, dir: &Path, total: &AtomicU64) -> Result<(), ErrorInfo> {
    let limits = &app.config.limits;
    let shown = display_url(url);
    let failed = |why: String| ErrorInfo::new("download_failed", format!("image {shown}: {why}"));
    let timeout = Duration::from_secs(app.config.worker.download_timeout_secs);
    let resp = app
        .downloads
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(failed(format!("HTTP {}", resp.status())));
    }
    let name_hint = resp.url().path().to_string();
    let mut body = resp.bytes_stream();
    // Hold the first bytes until the type is known: the file is named after its real type.
    let mut head = Vec::new();
    while head.len() < images::SNIFF_LEN {
        match body.next().await {
            Some(chunk) => {
                let chunk = chunk.map_err(|e| failed(e.without_url().to_string()))?;
                head.extend_from_slice(&chunk);
            }
            None => break,
        }
    }
    let kind = images::sniff(&head).ok_or_else(|| {
        ErrorInfo::new(
            "unsupported_image_type",
            format!("image {shown}: not a JPEG, PNG or TIFF file"),
        )
    })?;
    let path = dir.join(images::file_name(index, &name_hint, kind));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut size = 0u64;
    let mut pending = Some(bytes::Bytes::from(head));
    loop {
        let chunk = match pending.take() {
            Some(c) => c,
            None => match body.next().await {
                Some(c) => c.map_err(|e| failed(e.without_url().to_string()))?,
                None => break,
            },
        };
        size += chunk.len() as u64;
        let sum = total.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if size > limits.max_image_bytes {
            return Err(ErrorInfo::new(
                "image_too_large",
                format!(
                    "image {shown}: larger than limits.max_image_bytes ({})",
                    limits.max_image_bytes
                ),
            ));
        }
        if sum > limits.max_total_bytes {
            return Err(ErrorInfo::new(
                "images_too_large",
                format!(
                    "the job's images exceed limits.max_total_bytes ({})",
                    limits.max_total_bytes
                ),
            ));
        }
        file.write_all(&chunk).await.map_err(|e| failed(e.to_string()))?;
    }
    file.flush().await.map_err(|e| failed(e.to_string()))?;
    Ok(())
}

/// A URL as shown in errors: without credentials or query string (signed URLs carry tokens there).
fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or(""), u.path()),
        Err(_) => "(invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shown_urls_carry_no_secrets() {
        let shown = super::display_url("https://user:pw@example.com/a/b.jpg?X-Amz-Signature=abc");
        assert_eq!(shown, "https://example.com/a/b.jpg");
    }
}
