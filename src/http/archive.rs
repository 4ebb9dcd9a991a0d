//! `GET /jobs/{id}/archive`: every result file of a job in one zip, streamed from storage as it
//! is written, with no copy on disk or in memory.
//!
//! Entries are stored, not compressed (meshes, point clouds and PNG textures barely compress,
//! and stored entries cost no CPU), so the archive's length follows from the names and sizes
//! alone: it is found by writing the same archive with zeros in place of the files into a byte
//! counter, and sent as `Content-Length`, so clients show a real download progress.

use super::jobs::find;
use super::ApiError;
use crate::app::App;
use crate::error::Code;
use crate::jobs::Status;
use crate::storage::Storage;
use crate::tenants::Principal;
use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use async_zip::base::write::ZipFileWriter;
use async_zip::{Compression, ZipDateTime, ZipEntryBuilder};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::compat::TokioAsyncReadCompatExt;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/jobs/{id}/archive", "GET").route(web::get().to(archive)));
}

/// Archives over this size are sent without a length: counting them would read that many zeros.
const COUNTED_UP_TO: u64 = 8 << 30;

/// One file of the archive.
struct Entry {
    name: String,
    size: u64,
    key: String,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/archive", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "A zip of every result file (stored entries, Content-Length known in advance)",
            content_type = "application/zip"),
        (status = 401, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn archive(
    app: web::Data<App>,
    who: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = find(&app.jobs, &who, &id).await?;
    if job.status != Status::Succeeded || job.results.is_empty() {
        return Err(ApiError::new(
            Code::NoResults,
            "the job has no result files (it has not succeeded)",
        ));
    }
    let entries: Vec<Entry> = job
        .results
        .iter()
        .map(|r| Entry {
            name: r.name.clone(),
            size: r.size,
            key: job.file_key(&format!("results/{}", r.name)),
        })
        .collect();
    let date = ZipDateTime::from_chrono(&job.finished_at.unwrap_or(job.created_at));
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let length = match total <= COUNTED_UP_TO {
        true => counted_length(&entries, date).await,
        false => None,
    };
    let (writer, reader) = tokio::io::duplex(256 << 10);
    let files = app.files.clone();
    let job_id = job.id;
    let task = tokio::spawn(async move {
        let written = write(writer, &entries, date, |key: String| {
            let files: &Storage = &files;
            async move { files.reader(&key).await.map_err(std::io::Error::other) }
        })
        .await;
        if let Err(e) = &written {
            log::warn!("job {job_id}: archive cut short: {e}");
        }
        written
    });
    // A failure while streaming ends the body with an error, so the client sees a broken
    // download (a short body, a reset), never a valid-looking truncated archive.
    let tail = futures_util::stream::once(async move {
        match task.await {
            Ok(Ok(())) => None,
            _ => Some(Err(std::io::Error::other("the archive could not be completed"))),
        }
    })
    .filter_map(std::future::ready);
    let body = tokio_util::io::ReaderStream::new(reader).chain(tail);
    let mut resp = HttpResponse::Ok();
    resp.content_type("application/zip").insert_header((
        "content-disposition",
        format!("attachment; filename=\"meshroom-{job_id}.zip\""),
    ));
    if let Some(n) = length {
        resp.no_chunking(n);
    }
    Ok(resp.streaming(body.map(|r: std::io::Result<Bytes>| r)))
}

/// The archive's length, from writing it with zeros into a counter.
async fn counted_length(entries: &[Entry], date: ZipDateTime) -> Option<u64> {
    let mut counter = Counter(0);
    let zeros = |key: String| {
        let size = entries.iter().find(|e| e.key == key).map_or(0, |e| e.size);
        async move { Ok(tokio::io::AsyncReadExt::take(tokio::io::repeat(0), size)) }
    };
    write(&mut counter, entries, date, zeros).await.ok()?;
    Some(counter.0)
}

/// Writes the zip of `entries` to `out`, each file's bytes from `open(key)`.
async fn write<W, R, F, O>(out: W, entries: &[Entry], date: ZipDateTime, open: O) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    F: std::future::Future<Output = std::io::Result<R>>,
    O: Fn(String) -> F,
{
    let mut zip = ZipFileWriter::with_tokio(out);
    for e in entries {
        let entry = ZipEntryBuilder::new(e.name.clone().into(), Compression::Stored)
            .last_modification_date(date)
            .unix_permissions(0o644);
        let mut file = open(e.key.clone()).await?.compat();
        let mut into = zip.write_entry_stream(entry).await.map_err(std::io::Error::other)?;
        let copied = futures_util::io::copy(&mut file, &mut into).await?;
        if copied != e.size {
            return Err(std::io::Error::other(format!(
                "{}: {copied} bytes, {} expected",
                e.name, e.size
            )));
        }
        into.close().await.map_err(std::io::Error::other)?;
    }
    let mut out = zip.close().await.map_err(std::io::Error::other)?;
    futures_util::AsyncWriteExt::close(&mut out).await
}

/// Counts the bytes written to it.
struct Counter(u64);

impl AsyncWrite for Counter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0 += buf.len() as u64;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
