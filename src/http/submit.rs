//! `POST /jobs` (and its alias `POST /reconstruct`): JSON with image URLs, or multipart with the
//! images streamed to disk as they arrive, checked against the limits before they are kept.

use super::request_log::RequestId;
use super::staging::{next_within, Staging};
use super::{multipart, quote, ApiError};
use crate::app::App;
use crate::error::Code;
use crate::jobs::{Job, JobView, Upload};
use crate::pipelines::PipelineError;
use actix_multipart::Multipart;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use utoipa::ToSchema;

/// A job request. In multipart form, the same fields are parts of the same names (`metadata` and
/// `params` as JSON text; `image_urls` may repeat) and the files are parts named `images`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// http(s) URLs of JPEG, PNG or TIFF images (public addresses, see `security.allowed_networks`).
    #[schema(min_items = 1, max_items = 500)]
    pub image_urls: Vec<String>,
    /// Where the signed webhook goes when the job ends.
    pub callback_url: Option<String>,
    /// Any JSON; returned with the job and in webhooks.
    pub metadata: Option<serde_json::Value>,
    /// Preset name (`GET /` lists them); `default`, or `draft` on a deployment without GPUs.
    pub pipeline: Option<String>,
    /// Parameter overrides allowed by the preset, e.g. `{"Texturing:textureSide": 4096}`.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Engine time limit in seconds (at most `engine.timeout_secs`).
    #[schema(minimum = 1)]
    pub timeout_secs: Option<u64>,
    /// `normal` (default) or `high`: high-priority jobs are taken first.
    pub priority: Option<crate::jobs::Priority>,
}

/// Multipart form of a job request (for the OpenAPI document).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SubmitForm {
    /// Image files.
    images: Vec<Vec<u8>>,
    /// As in the JSON request; may repeat.
    image_urls: Option<Vec<String>>,
    /// As in the JSON request.
    callback_url: Option<String>,
    /// JSON text.
    metadata: Option<String>,
    /// As in the JSON request.
    pipeline: Option<String>,
    /// JSON text.
    params: Option<String>,
    /// As in the JSON request.
    timeout_secs: Option<u64>,
    /// As in the JSON request.
    priority: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body(content(
        (SubmitRequest = "application/json"),
        (SubmitForm = "multipart/form-data"),
    )),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe submit: the same key returns the same job")),
    responses(
        (status = 202, description = "Accepted and stored", body = JobView),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 408, body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 415, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody), (status = 503, body = super::ErrorBody),
    ),
    security(("api_key" = [])))]
pub(super) async fn submit(
    app: web::Data<App>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let idempotency_key = idempotency_key(&req)?;
    if let Some(key) = &idempotency_key {
        if let Some(job) = app.jobs.find_idempotent(key).await? {
            return Ok(accepted(&job, true));
        }
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let mut job = Job::new(String::new(), 0);
    // Removed however this request ends, a client reset included (see `staging`).
    let staging = Staging::new(app.tmp_dir().join(job.id.to_string()));
    let (request, uploads) = match mime.as_str() {
        "application/json" => (read_json(&app, payload).await?, Vec::new()),
        "multipart/form-data" => {
            multipart::read_multipart(&app, Multipart::new(req.headers(), payload), staging.dir()).await?
        }
        _ => {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "send application/json or multipart/form-data",
            ))
        }
    };
    let staged: Vec<PathBuf> = uploads.iter().map(|(_, p)| p.clone()).collect();
    fill_job(
        &app,
        &mut job,
        request,
        uploads.iter().map(|(u, _)| u.clone()).collect(),
    )?;
    job.idempotency_key = idempotency_key;
    // Inputs first, record last: a crash in between leaves inputs that no record names (unlisted,
    // never run), and never a job whose inputs are missing.
    for (upload, path) in job.uploads.iter().zip(&staged) {
        app.files
            .store_file(&Job::key(job.id, &format!("inputs/{}", upload.name)), path)
            .await
            .map_err(|e| {
                log::error!("job {}: storing an upload failed: {e}", job.id);
                ApiError::new(Code::StorageUnavailable, "storage is unavailable; try again")
            })?;
    }
    if !job.uploads.is_empty() {
        app.files
            .sync_folders(&Job::key(job.id, "inputs"))
            .await
            .map_err(ApiError::from)?;
    }
    drop(staging);
    let new_id = job.id;
    // Committed before it is queued: a worker never gets a message for a job it cannot read.
    let stored = app.jobs.insert(job).await?;
    if stored.id != new_id {
        // A concurrent request with the same Idempotency-Key won the race: drop our copy.
        let _ = app.files.delete_prefix(&Job::key(new_id, "")).await;
        return Ok(accepted(&stored, true));
    }
    if let Err(e) = app.publish(&stored).await {
        // The job is stored, so it is accepted: the outbox sweep queues it once the broker is back.
        log::warn!("job {}: stored, to be queued later ({e})", stored.id);
    }
    app.metrics.submitted.inc();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    log::info!(
        "job {}: enqueued ({} URLs, {} uploads, pipeline {}; request {request_id})",
        stored.id,
        stored.image_urls.len(),
        stored.uploads.len(),
        stored.pipeline
    );
    Ok(accepted(&stored, false))
}

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
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    submit(app, req, payload).await
}

fn accepted(job: &Job, replayed: bool) -> HttpResponse {
    let mut resp = HttpResponse::Accepted();
    resp.insert_header(("location", format!("/api/v1/jobs/{}", job.id)));
    if replayed {
        resp.insert_header(("idempotent-replayed", "true"));
    }
    resp.json(JobView::from(job.clone()))
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

/// Checks a request and fills the job from it.
fn fill_job(app: &App, job: &mut Job, req: SubmitRequest, uploads: Vec<Upload>) -> Result<(), ApiError> {
    let limits = &app.config.limits;
    let count = req.image_urls.len() + uploads.len();
    if count == 0 {
        return Err(ApiError::new(
            Code::NoImages,
            "give image_urls or upload files in 'images' parts",
        ));
    }
    if count > limits.max_images as usize {
        return Err(multipart::too_many(limits.max_images));
    }
    for url in &req.image_urls {
        if url.len() > multipart::MAX_URL_BYTES {
            return Err(multipart::url_too_long());
        }
        check_url(app, url, Code::InvalidImageUrl)?;
    }
    if let Some(url) = &req.callback_url {
        if url.len() > multipart::MAX_URL_BYTES {
            return Err(ApiError::new(
                Code::InvalidCallbackUrl,
                format!("a callback URL is at most {} bytes", multipart::MAX_URL_BYTES),
            ));
        }
        check_url(app, url, Code::InvalidCallbackUrl)?;
    }
    if let Some(metadata) = &req.metadata {
        let size = serde_json::to_vec(metadata).map_or(0, |v| v.len()) as u64;
        if size > limits.max_metadata_bytes {
            return Err(ApiError::new(
                Code::MetadataTooLarge,
                format!(
                    "metadata is {size} bytes of JSON, over limits.max_metadata_bytes ({})",
                    limits.max_metadata_bytes
                ),
            ));
        }
    }
    let pipeline = req.pipeline.unwrap_or_else(|| app.default_pipeline().into());
    let Some(preset) = app.pipelines.get(&pipeline) else {
        return Err(ApiError::new(
            Code::UnknownPipeline,
            format!(
                "no pipeline '{}'; available: {}",
                quote(&pipeline),
                app.pipelines.names().join(", ")
            ),
        ));
    };
    if preset.gpu && !app.gpu_available() {
        return Err(ApiError::new(
            Code::GpuUnavailable,
            format!("pipeline '{pipeline}' needs a GPU and this deployment has none; use 'draft'"),
        ));
    }
    let mut params = BTreeMap::new();
    for (k, v) in req.params {
        let value = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::new(
                    Code::InvalidParam,
                    format!("parameter '{}' must be a string, number or boolean", quote(&k)),
                ))
            }
        };
        params.insert(k, value);
    }
    preset.overrides_with(&params).map_err(|e| match e {
        PipelineError::ParamNotAllowed(..) => ApiError::new(Code::ParamNotAllowed, e.to_string()),
        _ => ApiError::new(Code::InvalidParam, e.to_string()),
    })?;
    let max_timeout = app.config.engine.timeout_secs;
    let timeout_secs = match req.timeout_secs {
        None => max_timeout,
        Some(t) if t >= 1 && t <= max_timeout => t,
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidTimeout,
                format!("timeout_secs must be 1 to {max_timeout}"),
            ))
        }
    };
    job.pipeline = pipeline;
    job.params = params;
    job.image_urls = req.image_urls;
    job.uploads = uploads;
    job.callback_url = req.callback_url;
    job.metadata = req.metadata;
    job.timeout_secs = timeout_secs;
    job.priority = req.priority.unwrap_or_default();
    Ok(())
}

/// An http(s) URL whose host the egress policy allows (names are checked again when resolved).
fn check_url(app: &App, url: &str, code: Code) -> Result<(), ApiError> {
    let bad = || ApiError::new(code, format!("'{}' is not an http or https URL", quote(url)));
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    match app.egress.check(&parsed) {
        Ok(()) => Ok(()),
        Err(crate::egress::Blocked::Internal(why)) => Err(ApiError::new(
            Code::UrlNotAllowed,
            format!("'{}' reaches {why}", quote(url)),
        )),
        Err(_) => Err(bad()),
    }
}
