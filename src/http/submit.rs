//! `POST /jobs` (and its alias `POST /reconstruct`): JSON with image URLs, or multipart with the
//! images streamed to disk as they arrive, checked against the limits before they are kept.

use super::auth::require;
use super::job_request::{fill_job, SubmitForm, SubmitRequest};
use super::request_log::RequestId;
use super::staging::{next_within, Staging};
use super::{multipart, ApiError};
use crate::app::App;
use crate::config::TenantLimits;
use crate::error::Code;
use crate::jobs::{Inserted, Job, JobView, Quota, Upload};
use crate::tenants::{Principal, Role};
use crate::trace::{self, SpanKind};
use actix_multipart::Multipart;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use std::path::{Path, PathBuf};

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body(content(
        (SubmitRequest = "application/json"),
        (SubmitForm = "multipart/form-data"),
    )),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe submit: the same key returns the same job")),
    responses(
        (status = 202, description = "Accepted and stored", body = JobView),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 408, body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 415, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody), (status = 429, description = "rate_limited or quota_exceeded", body = super::ErrorBody),
        (status = 503, body = super::ErrorBody),
    ),
    security(("api_key" = [])))]
pub(super) async fn submit(
    app: web::Data<App>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require(&who, Role::Submit)?;
    let idempotency_key = idempotency_key(&req)?;
    if let Some(key) = &idempotency_key {
        // Keys are per tenant: another tenant's key names nothing here.
        if let Some(job) = app.jobs.find_idempotent(&who.tenant, key).await? {
            return Ok(accepted(job, true));
        }
    }
    let mut job = Job::new(String::new(), 0);
    job.tenant = who.tenant.clone();
    // The job's trace starts here, under the caller's own when it sent one; the span ends when
    // this request does, however it ends.
    let incoming = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
    let accept = trace::start("accept", SpanKind::Server, &trace::parent(incoming), Vec::new());
    job.traceparent = trace::traceparent(&accept);
    // Removed however this request ends, a client reset included (see `staging`).
    let staging = Staging::new(app.tmp_dir().join(job.id.to_string()));
    let (request, uploads) = read_body(&app, &req, payload, staging.dir()).await?;
    let (uploads, staged): (Vec<_>, Vec<PathBuf>) = uploads.into_iter().unzip();
    fill_job(&app, &mut job, request, uploads)?;
    let limits = app.config.limits_of(&job.tenant);
    check_images(&limits, &job)?;
    job.idempotency_key = idempotency_key;
    trace::annotate(&accept, trace::job(&job));
    if !staged.is_empty() {
        // A span only when there is something to store: most submits name URLs.
        let storing = trace::start("store inputs", SpanKind::Internal, &accept, Vec::new());
        store_inputs(&app, &job, &staged).await?;
        trace::end(&storing, None, None);
    }
    drop(staging);
    let new_id = job.id;
    // Committed before it is queued: a worker never gets a message for a job it cannot read.
    // An event, not a span: on the busiest path a span more cost about 4 us of CPU per accept.
    let inserted = insert(&app, job, &limits).await?;
    trace::event(&accept, "committed");
    // Older jobs of the tenant this insert let out of the hold (see `scheduling`).
    for released in inserted.released {
        app.publish_soon(released).await;
    }
    let stored = inserted.job;
    if stored.id != new_id {
        // A concurrent request with the same Idempotency-Key won the race: drop our copy.
        let _ = app.files.delete_prefix(&Job::key(&stored.tenant, new_id, "")).await;
        return Ok(accepted(stored, true));
    }
    if inserted.held {
        // Its tenant has its share of jobs in the queue: it goes there as they are taken.
        log::debug!("job {}: held for its tenant's turn", stored.id);
    } else {
        // Stored, so accepted: the message follows this answer (see `App::publish_soon`).
        app.publish_soon(stored.clone()).await;
    }
    app.metrics
        .submitted
        .with_label_values(&[app.metrics.tenant(&stored.tenant)])
        .inc();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    crate::logging::with_trace(stored.id, stored.traceparent.as_deref(), || {
        log::info!(
            "job {}: enqueued ({} URLs, {} uploads, pipeline {}; request {request_id})",
            stored.id,
            stored.image_urls.len(),
            stored.uploads.len(),
            stored.pipeline
        )
    });
    Ok(accepted(stored, false))
}

/// `quota.max_images_per_job`, checked before any input is stored.
fn check_images(limits: &TenantLimits, job: &Job) -> Result<(), ApiError> {
    if limits.max_images_per_job == 0 || job.image_count() as u64 <= limits.max_images_per_job {
        return Ok(());
    }
    Err(ApiError::new(
        Code::QuotaExceeded,
        format!(
            "quota.max_images_per_job is {}, and this job names {} images",
            limits.max_images_per_job,
            job.image_count()
        ),
    ))
}

/// Stores the job, within its tenant's quotas when it has any (checked by the insert itself).
async fn insert(app: &App, job: Job, limits: &TenantLimits) -> Result<Inserted, ApiError> {
    let quota = Quota {
        max_active_jobs: limits.max_active_jobs,
        max_stored_bytes: limits.max_stored_bytes,
        max_gpu_seconds_per_day: limits.max_gpu_seconds_per_day,
    };
    if !quota.any() {
        return Ok(app.jobs.insert(job).await?);
    }
    let inputs = job.file_key("");
    let tenant = job.tenant.clone();
    app.jobs
        .insert_within(job, &quota)
        .await?
        .map_err(|e| {
            // Its inputs are stored already: they go with the refusal.
            let files = app.files.clone();
            tokio::spawn(async move { files.delete_prefix(&inputs).await });
            ApiError::new(Code::QuotaExceeded, e.to_string())
        })
        .inspect_err(|_| {
            app.metrics
                .quota_exceeded
                .with_label_values(&[app.metrics.tenant(&tenant)])
                .inc()
        })
}

/// The request, from a JSON body or a multipart form (whose files are staged in `staging`).
async fn read_body(
    app: &App,
    req: &HttpRequest,
    payload: web::Payload,
    staging: &Path,
) -> Result<(SubmitRequest, Vec<(Upload, PathBuf)>), ApiError> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok((read_json(app, payload).await?, Vec::new())),
        "multipart/form-data" => multipart::read_multipart(app, Multipart::new(req.headers(), payload), staging).await,
        _ => Err(ApiError::new(
            Code::UnsupportedMediaType,
            "send application/json or multipart/form-data",
        )),
    }
}

/// Moves the staged uploads into storage, made durable. Inputs first, record last: a crash in
/// between leaves inputs that no record names (unlisted, never run), never a job without them.
async fn store_inputs(app: &App, job: &Job, staged: &[PathBuf]) -> Result<(), ApiError> {
    use futures_util::{StreamExt, TryStreamExt};
    // Several at once: concurrent fsyncs share the file system's journal commits (local), and
    // PUTs overlap their round trips (S3).
    futures_util::stream::iter(job.uploads.iter().zip(staged))
        .map(|(upload, path)| async move {
            app.files
                .store_file(&job.file_key(&format!("inputs/{}", upload.name)), path)
                .await
                .map_err(|e| {
                    log::error!("job {}: storing an upload failed: {e}", job.id);
                    ApiError::new(Code::StorageUnavailable, "storage is unavailable; try again")
                })
        })
        .buffer_unordered(STORE_AT_ONCE)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    if !job.uploads.is_empty() {
        app.files
            .sync_folders(&job.file_key("inputs"))
            .await
            .map_err(ApiError::from)?;
    }
    Ok(())
}

/// Uploads stored at once by one submit.
const STORE_AT_ONCE: usize = 8;

/// `POST /api/v1/reconstruct`: the same as `POST /api/v1/jobs`, under the name some clients know.
#[utoipa::path(post, path = "/api/v1/reconstruct", tag = "jobs",
    request_body(content((SubmitRequest = "application/json"), (SubmitForm = "multipart/form-data"))),
    params(("Idempotency-Key" = Option<String>, Header, description = "As for POST /api/v1/jobs")),
    responses((status = 202, description = "As for POST /api/v1/jobs", body = JobView),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 408, body = super::ErrorBody), (status = 413, body = super::ErrorBody),
        (status = 415, body = super::ErrorBody), (status = 422, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn reconstruct(
    app: web::Data<App>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    submit(app, who, req, payload).await
}

/// The 202 answer; takes the job, so that its view needs no copy of it.
fn accepted(job: Job, replayed: bool) -> HttpResponse {
    let mut resp = HttpResponse::Accepted();
    resp.insert_header(("location", format!("/api/v1/jobs/{}", job.id)));
    if replayed {
        resp.insert_header(("idempotent-replayed", "true"));
    }
    resp.json(JobView::from(job))
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(k.to_string())),
        _ => Err(ApiError::new(
            Code::InvalidIdempotencyKey,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

async fn read_json(app: &App, mut payload: web::Payload) -> Result<SubmitRequest, ApiError> {
    let max = app.config.server.max_json_bytes as usize;
    let idle = std::time::Duration::from_secs(app.config.server.body_timeout_secs);
    let mut body = web::BytesMut::new();
    while let Some(chunk) = next_within(&mut payload, idle)
        .await
        .map_err(|_| multipart::body_timeout(idle))?
    {
        let chunk = chunk.map_err(|e| ApiError::new(Code::InvalidBody, e.to_string()))?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!("JSON bodies are limited to {max} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::new(Code::InvalidJson, e.to_string()))
}
