//! Puts a job's images in its working folder: uploads from storage, URLs over HTTP, several at once,
//! streamed to disk with the size and type limits enforced as bytes arrive. Transient failures are
//! retried with exponential backoff.

use crate::config::{LimitsConfig, WorkerConfig};
use crate::egress;
use crate::egress::Egress;
use crate::error::Code;
use crate::images;
use crate::jobs::{ErrorInfo, Job};
use crate::storage::Storage;
use crate::trace;
use backon::{ExponentialBuilder, Retryable};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Exponential backoff from `[worker]`: `retries` retries from `retry_delay_ms`, doubling.
pub fn backoff(worker: &WorkerConfig) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(worker.retry_delay_ms))
        .with_max_times(worker.retries as usize)
        .with_jitter()
}

/// What downloads use, and nothing else: the stored uploads, the HTTP client and the egress
/// policy it applies, the limits and the retry settings.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Where uploaded images were stored by the API.
    pub files: Storage,
    /// The client for image URLs, with the egress policy in its resolver.
    pub client: reqwest::Client,
    /// The egress policy, checked on each URL before it is asked.
    pub egress: Egress,
    /// Size, count and pixel limits, enforced as bytes arrive.
    pub limits: LimitsConfig,
    /// Concurrency, timeout and retry settings.
    pub worker: WorkerConfig,
}

/// A failed download, and whether trying again may help.
struct Failed {
    info: ErrorInfo,
    transient: bool,
}

impl Failed {
    fn permanent(info: ErrorInfo) -> Self {
        Failed { info, transient: false }
    }
}

impl Fetcher {
    /// Fetches every image of the job into `dir`, `worker.download_concurrency` at a time.
    pub async fn fetch_all(&self, job: &Job, dir: &Path, cx: &trace::Context) -> Result<(), ErrorInfo> {
        let total = AtomicU64::new(job.uploads.iter().map(|u| u.size).sum());
        let total = &total;
        let offset = job.uploads.len();
        // Built eagerly and boxed: a stream whose closures borrow is not provably Send.
        let mut fetches: Vec<BoxFuture<'_, Result<(), ErrorInfo>>> = Vec::new();
        for upload in &job.uploads {
            fetches.push(
                async move {
                    let key = job.file_key(&format!("inputs/{}", upload.name));
                    let dest = dir.join(&upload.name);
                    let _span = image_span(cx, &upload.name); // ends with this fetch
                    (|| self.files.fetch_to_file(&key, &dest))
                        .retry(backoff(&self.worker))
                        .notify(|e, wait| {
                            log::warn!(
                                "job {}: input {} not fetched ({e}); retry in {wait:?}",
                                job.id,
                                upload.name
                            )
                        })
                        .await
                        .map(|_| ())
                        .map_err(|e| ErrorInfo::new(Code::StorageError, e.to_string()))
                }
                .boxed(),
            );
        }
        for (i, url) in job.image_urls.iter().enumerate() {
            fetches.push(
                async move {
                    let _span = image_span(cx, url); // ends with this fetch
                    (|| self.fetch_url(url, offset + i, dir, total))
                        .retry(backoff(&self.worker))
                        .when(|f: &Failed| f.transient)
                        .notify(|f: &Failed, wait| log::warn!("job {}: {}; retry in {wait:?}", job.id, f.info.message))
                        .await
                        .map_err(|f| f.info)
                }
                .boxed(),
            );
        }
        futures_util::stream::iter(fetches)
            .buffer_unordered(self.worker.download_concurrency as usize)
            .try_collect::<Vec<()>>()
            .await?;
        let (dir, when) = (dir.to_path_buf(), std::time::SystemTime::from(job.created_at));
        tokio::task::spawn_blocking(move || stable_times(&dir, when))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| ErrorInfo::new(Code::WorkerIoError, format!("working folder: {e}")))
    }

    /// Downloads one image into `dir`, checked as it streams; its bytes count in the job's `total`
    /// only if it succeeds.
    async fn fetch_url(&self, url: &str, index: usize, dir: &Path, total: &AtomicU64) -> Result<(), Failed> {
        let shown = display_url(url);
        let transport = |e: reqwest::Error| match egress::is_blocked(&e) {
            // The egress policy refused the address: trying again changes nothing.
            Some(why) => Failed::permanent(ErrorInfo::new(Code::UrlNotAllowed, format!("image {shown}: {why}"))),
            None => Failed {
                info: ErrorInfo::new(Code::DownloadFailed, format!("image {shown}: {}", e.without_url())),
                transient: true,
            },
        };
        if let Err(why) = reqwest::Url::parse(url)
            .map_err(|_| egress::Blocked::Host)
            .and_then(|u| self.egress.check(&u))
        {
            return Err(Failed::permanent(ErrorInfo::new(
                Code::UrlNotAllowed,
                format!("image {shown}: {why}"),
            )));
        }
        let timeout = Duration::from_secs(self.worker.download_timeout_secs);
        let resp = self.client.get(url).timeout(timeout).send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let transient = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
            let info = ErrorInfo::new(Code::DownloadFailed, format!("image {shown}: HTTP {status}"));
            return Err(Failed { info, transient });
        }
        let name_hint = resp.url().path().to_string();
        let mut body = resp.bytes_stream();
        // Streamed to a temporary name: the file is named after its real type, known at the end.
        let partial = dir.join(format!("{index:04}.part"));
        let io =
            |e: std::io::Error| Failed::permanent(ErrorInfo::new(Code::WorkerIoError, format!("working folder: {e}")));
        let refused = |e: images::IntakeError| {
            Failed::permanent(match e {
                images::IntakeError::Image(e) => ErrorInfo::new(e.code(), format!("image {shown}: {e}")),
                images::IntakeError::TooLarge(_) => ErrorInfo::new(Code::ImageTooLarge, format!("image {shown}: {e}")),
                images::IntakeError::TotalTooLarge(_) => ErrorInfo::new(Code::ImagesTooLarge, e.to_string()),
                images::IntakeError::Io(e) => ErrorInfo::new(Code::WorkerIoError, format!("working folder: {e}")),
            })
        };
        let mut intake = images::Intake::create(&partial, &self.limits, total)
            .await
            .map_err(io)?;
        while let Some(chunk) = body.next().await {
            intake.feed(&chunk.map_err(transport)?).await.map_err(refused)?;
        }
        let (kind, _) = intake.finish().await.map_err(refused)?;
        tokio::fs::rename(&partial, dir.join(images::file_name(index, &name_hint, kind)))
            .await
            .map_err(io)?;
        Ok(())
    }
}

/// Gives every staged image the job's creation time. AliceVision's node uids depend on an image's
/// file time when it carries no Exif date, so a new attempt (which stages the images again) finds
/// the previous attempt's cache valid and resumes instead of recomputing everything.
fn stable_times(dir: &Path, when: std::time::SystemTime) -> std::io::Result<()> {
    let times = std::fs::FileTimes::new().set_modified(when).set_accessed(when);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::File::options().write(true).open(&path)?.set_times(times)?;
        }
    }
    Ok(())
}

/// A URL as shown in errors: without credentials or query string (signed URLs carry tokens there).
fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or(""), u.path()),
        Err(_) => "(invalid URL)".into(),
    }
}

/// The span of one image taken in, under the staging span; it ends when dropped.
fn image_span(cx: &trace::Context, source: &str) -> trace::Context {
    let attrs = match trace::enabled() {
        // The path only: a signed URL's query is a credential.
        true => vec![trace::KeyValue::new(
            "meshroom.image",
            source.split('?').next().unwrap_or("").to_string(),
        )],
        false => Vec::new(),
    };
    trace::start("image", trace::SpanKind::Internal, cx, attrs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shown_urls_carry_no_secrets() {
        let shown = super::display_url("https://user:pw@example.com/a/b.jpg?X-Amz-Signature=abc");
        assert_eq!(shown, "https://example.com/a/b.jpg");
    }
}
