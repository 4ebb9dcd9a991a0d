//! Multipart submits: image parts streamed to a staging folder and checked (type by content,
//! size and count limits) as the bytes arrive; the other parts are the fields of a JSON submit.

use super::job_request::SubmitRequest;
use super::staging::next_within;
use super::ApiError;
use crate::app::App;
use crate::error::Code;
use crate::images;
use crate::jobs::Upload;
use actix_multipart::Multipart;
use std::path::PathBuf;
use std::time::Duration;

/// Longest image URL, bytes: real URLs, signed ones included, fit with room to spare.
pub(super) const MAX_URL_BYTES: usize = 8 << 10;

/// Reads the form; image files are streamed to `staging` and checked as they arrive. Every limit
/// holds while the form streams: nothing is held in memory beyond `server.max_json_bytes` of text.
pub(super) async fn read_multipart(
    app: &App,
    mut form: Multipart,
    staging: &std::path::Path,
) -> Result<(SubmitRequest, Vec<(Upload, PathBuf)>), ApiError> {
    let limits = &app.config.limits;
    let idle = Duration::from_secs(app.config.server.body_timeout_secs);
    let mut request = SubmitRequest::default();
    let mut uploads: Vec<(Upload, PathBuf)> = Vec::new();
    let total = std::sync::atomic::AtomicU64::new(0);
    // Text parts share the JSON body's budget, so a form cannot hold more in memory than a JSON submit.
    let mut text_left = app.config.server.max_json_bytes as usize;
    while let Some(field) = next_within(&mut form, idle).await.map_err(|_| body_timeout(idle))? {
        let mut field = field.map_err(bad_multipart)?;
        let name = field.name().unwrap_or("").to_string();
        if name != "images" {
            let is_url = name == "image_urls";
            if is_url && uploads.len() + request.image_urls.len() >= limits.max_images as usize {
                return Err(too_many(limits.max_images));
            }
            let max = if is_url {
                text_left.min(MAX_URL_BYTES)
            } else {
                text_left
            };
            let text = read_text_field(&mut field, max, idle).await.map_err(|e| match e {
                TextError::TooLong if is_url && max == MAX_URL_BYTES => url_too_long(),
                TextError::TooLong => too_large(
                    Code::PayloadTooLarge,
                    "server.max_json_bytes, for all text parts",
                    app.config.server.max_json_bytes,
                ),
                TextError::Api(e) => e,
            })?;
            text_left -= text.len();
            set_field(&mut request, &name, text)?;
            continue;
        }
        if uploads.len() + request.image_urls.len() >= limits.max_images as usize {
            return Err(too_many(limits.max_images));
        }
        let original = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .unwrap_or("")
            .to_string();
        tokio::fs::create_dir_all(staging).await.map_err(staging_error)?;
        let path = staging.join(uploads.len().to_string());
        let mut intake = images::Intake::create(&path, limits, &total)
            .await
            .map_err(staging_error)?;
        let refused = |e: images::IntakeError| intake_error(&original, e);
        while let Some(chunk) = next_within(&mut field, idle).await.map_err(|_| body_timeout(idle))? {
            intake.feed(&chunk.map_err(bad_multipart)?).await.map_err(refused)?;
        }
        let (kind, size) = intake.finish().await.map_err(refused)?;
        let upload = Upload {
            name: images::file_name(uploads.len(), &original, kind),
            size,
        };
        uploads.push((upload, path));
    }
    Ok((request, uploads))
}

enum TextError {
    TooLong,
    Api(ApiError),
}

/// A text part, refused as soon as it passes `max` bytes.
async fn read_text_field(field: &mut actix_multipart::Field, max: usize, idle: Duration) -> Result<String, TextError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = next_within(field, idle)
        .await
        .map_err(|_| TextError::Api(body_timeout(idle)))?
    {
        let chunk = chunk.map_err(|e| TextError::Api(bad_multipart(e)))?;
        if bytes.len() + chunk.len() > max {
            return Err(TextError::TooLong);
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| TextError::Api(ApiError::new(Code::InvalidMultipart, "form fields must be UTF-8")))
}

fn bad_multipart(e: actix_multipart::MultipartError) -> ApiError {
    ApiError::new(Code::InvalidMultipart, e.to_string())
}

/// 408: the client stopped sending in the middle of its request.
pub(super) fn body_timeout(idle: Duration) -> ApiError {
    ApiError::new(
        Code::BodyTimeout,
        format!(
            "the request body stalled for {} s (server.body_timeout_secs)",
            idle.as_secs()
        ),
    )
}

/// 400 for an image URL over [`MAX_URL_BYTES`].
pub(super) fn url_too_long() -> ApiError {
    ApiError::new(
        Code::InvalidImageUrl,
        format!("an image URL is at most {MAX_URL_BYTES} bytes"),
    )
}

fn set_field(request: &mut SubmitRequest, name: &str, text: String) -> Result<(), ApiError> {
    fn json<T: serde::de::DeserializeOwned>(field: &str, text: &str) -> Result<T, ApiError> {
        serde_json::from_str(text).map_err(|e| ApiError::new(Code::InvalidJson, format!("{field}: {e}")).at(field))
    }
    match name {
        "image_urls" => request.image_urls.push(text),
        "callback_url" => request.callback_url = Some(text),
        "metadata" => request.metadata = Some(json(name, &text)?),
        "pipeline" => request.pipeline = Some(text),
        "priority" => request.priority = Some(json(name, &format!("{text:?}"))?),
        "params" => request.params = json(name, &text)?,
        "timeout_secs" => {
            request.timeout_secs = Some(
                text.trim()
                    .parse()
                    .map_err(|_| ApiError::new(Code::InvalidTimeout, "timeout_secs must be a positive whole number"))?,
            )
        }
        other => {
            return Err(ApiError::new(
                Code::UnknownField,
                format!("unknown form field '{}'", super::quote(other)),
            ))
        }
    }
    Ok(())
}

pub(super) fn too_many(max: u64) -> ApiError {
    ApiError::new(
        Code::TooManyImages,
        format!("a job takes at most {max} images (limits.max_images)"),
    )
}

fn too_large(code: Code, key: &str, max: u64) -> ApiError {
    ApiError::new(code, format!("over the limit of {max} bytes ({key})"))
}

fn staging_error(e: std::io::Error) -> ApiError {
    log::error!("upload staging: {e}");
    ApiError::new(Code::StorageUnavailable, "cannot store the upload; try again")
}

/// An image not taken in: refused by its content (its code gives the status: 415, 413 or 400),
/// over a limit, or not stored.
fn intake_error(name: &str, e: images::IntakeError) -> ApiError {
    match e {
        images::IntakeError::Image(e) => {
            at_file(ApiError::new(e.code(), format!("'{}': {e}", super::quote(name))), name)
        }
        images::IntakeError::TooLarge(max) => {
            at_file(too_large(Code::ImageTooLarge, "limits.max_image_bytes", max), name)
        }
        images::IntakeError::TotalTooLarge(max) => too_large(Code::ImagesTooLarge, "limits.max_total_bytes", max),
        images::IntakeError::Io(e) => staging_error(e),
    }
}

/// Names the uploaded file an error concerns (names over 255 bytes, which no file system keeps,
/// are not echoed back).
fn at_file(e: ApiError, name: &str) -> ApiError {
    match name.len() {
        1..=255 => e.at(format!("images/{name}")),
        _ => e,
    }
}
