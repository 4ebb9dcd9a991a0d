//! What a submit asks for (JSON, or the same fields as a multipart form) and the checks that
//! turn it into a job: images, URLs (and the egress policy), pipeline and parameters, limits.

use super::{multipart, quote, ApiError};
use crate::app::App;
use crate::error::Code;
use crate::jobs::{Job, Upload};
use crate::pipelines::PipelineError;
use serde::Deserialize;
use std::collections::BTreeMap;
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

/// Checks a request and fills the job from it.
pub(super) fn fill_job(app: &App, job: &mut Job, req: SubmitRequest, uploads: Vec<Upload>) -> Result<(), ApiError> {
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
        check_url(app, url, Code::InvalidImageUrl).map_err(|e| e.at("image_urls"))?;
    }
    if let Some(url) = &req.callback_url {
        if url.len() > multipart::MAX_URL_BYTES {
            return Err(ApiError::new(
                Code::InvalidCallbackUrl,
                format!("a callback URL is at most {} bytes", multipart::MAX_URL_BYTES),
            )
            .at("callback_url"));
        }
        check_url(app, url, Code::InvalidCallbackUrl).map_err(|e| e.at("callback_url"))?;
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
            )
            .at("metadata"));
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
        )
        .at("pipeline"));
    };
    if preset.gpu && !app.gpu_available() {
        return Err(ApiError::new(
            Code::GpuUnavailable,
            format!("pipeline '{pipeline}' needs a GPU and this deployment has none; use 'draft'"),
        )
        .at("pipeline"));
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
                )
                .at(format!("params.{k}")))
            }
        };
        params.insert(k, value);
    }
    preset.overrides_with(&params).map_err(|e| match &e {
        PipelineError::ParamNotAllowed(name, ..) => {
            ApiError::new(Code::ParamNotAllowed, e.to_string()).at(format!("params.{name}"))
        }
        PipelineError::InvalidParam(name, _) => {
            ApiError::new(Code::InvalidParam, e.to_string()).at(format!("params.{name}"))
        }
        _ => ApiError::new(Code::InvalidParam, e.to_string()).at("params"),
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
    job.gpu = preset.gpu;
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
