//! The error catalogue: every machine-readable code the service gives, in API answers and in
//! failed jobs, with its HTTP status and a one-line meaning. README's table of codes is rendered
//! from it (`markdown_table`, checked by a test) and the OpenAPI document lists it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a code appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Only as an HTTP answer.
    Answer,
    /// Only as a failed job's error.
    Job,
    /// Both: a check made on submit, and again by the worker (on a downloaded image, say).
    Both,
}

macro_rules! codes {
    ($($variant:ident = $name:literal, $status:literal, $seen:ident, $meaning:literal;)*) => {
        /// A stable machine-readable error code (`error.code` in answers and in failed jobs).
        // The serialized name comes from rename_all (which utoipa reads too); a unit test checks
        // that it is the catalogue's name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum Code {
            $(
                #[doc = $meaning]
                $variant,
            )*
        }

        impl Code {
            /// Every code, in the catalogue's order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The code as clients see it, e.g. `job_not_found`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }

            /// The HTTP status of an answer with this code (500 for codes that only failed
            /// jobs carry; none of those is ever answered).
            pub fn status(self) -> u16 {
                match self { $(Code::$variant => $status,)* }
            }

            /// Where the code appears.
            pub fn seen(self) -> Seen {
                match self { $(Code::$variant => Seen::$seen,)* }
            }

            /// What it means, in one line.
            pub fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning,)* }
            }
        }
    };
}

codes! {
    NoImages = "no_images", 400, Answer, "the job names no image";
    InvalidImageUrl = "invalid_image_url", 400, Answer, "an image URL is not http(s), or is over 8 KiB";
    InvalidCallbackUrl = "invalid_callback_url", 400, Answer, "the callback URL is not http(s), or is over 8 KiB";
    UrlNotAllowed = "url_not_allowed", 400, Both, "a URL reaches an internal address (see Security)";
    InvalidImage = "invalid_image", 400, Both, "an unreadable header, a broken structure, a truncated file, or data after the image";
    UnknownPipeline = "unknown_pipeline", 400, Both, "no pipeline has this name";
    ParamNotAllowed = "param_not_allowed", 400, Answer, "the pipeline does not let clients set this parameter";
    InvalidParam = "invalid_param", 400, Both, "a parameter's value is out of its range or of the wrong type";
    InvalidTimeout = "invalid_timeout", 400, Answer, "timeout_secs is not a positive whole number within the limit";
    InvalidJson = "invalid_json", 400, Answer, "the body (or a form field) is not the JSON expected";
    InvalidMultipart = "invalid_multipart", 400, Answer, "the multipart form is malformed";
    InvalidBody = "invalid_body", 400, Answer, "the request body could not be read";
    UnknownField = "unknown_field", 400, Answer, "a form field this API does not know";
    InvalidIdempotencyKey = "invalid_idempotency_key", 400, Answer, "the Idempotency-Key header is not 1 to 255 visible ASCII characters";
    InvalidQuery = "invalid_query", 400, Answer, "a query parameter is malformed or out of range";
    MissingApiKey = "missing_api_key", 401, Answer, "the route needs an API key (X-API-Key, or Authorization: Bearer)";
    InvalidApiKey = "invalid_api_key", 401, Answer, "the API key is unknown, revoked or expired";
    InvalidToken = "invalid_token", 401, Answer, "the bearer token's signature, issuer, audience, algorithm or claims are not accepted";
    TokenExpired = "token_expired", 401, Answer, "the bearer token's exp has passed";
    Forbidden = "forbidden", 403, Answer, "the key's role may not do this (a read key submitting, say)";
    RateLimited = "rate_limited", 429, Answer, "the key sent more requests than its rate allows; see Retry-After";
    AuthUnavailable = "auth_unavailable", 503, Answer, "the token issuer's signing keys could not be fetched; try again";
    QuotaExceeded = "quota_exceeded", 429, Answer, "the tenant is at a quota; the message names it, its value and the use";
    JobNotFound = "job_not_found", 404, Answer, "no job has this id";
    FileNotFound = "file_not_found", 404, Answer, "the job has no result file of this name";
    NoResults = "no_results", 404, Answer, "the job has no result files to archive: it has not succeeded";
    LogNotFound = "log_not_found", 404, Answer, "the engine has not run for this job";
    NotFound = "not_found", 404, Answer, "no such route";
    MethodNotAllowed = "method_not_allowed", 405, Answer, "the route does not take this method (the Allow header lists those it takes)";
    BodyTimeout = "body_timeout", 408, Answer, "the body sent nothing for server.body_timeout_secs (the partial upload is deleted)";
    JobNotCancelable = "job_not_cancelable", 409, Answer, "the job has already finished";
    JobNotRetryable = "job_not_retryable", 409, Answer, "only failed or canceled jobs can be retried";
    JobRunning = "job_running", 409, Answer, "a running job cannot be deleted: cancel it first";
    TooManyImages = "too_many_images", 413, Answer, "more images than limits.max_images";
    ImageTooLarge = "image_too_large", 413, Both, "an image is over limits.max_image_bytes";
    ImagesTooLarge = "images_too_large", 413, Both, "the images together are over limits.max_total_bytes";
    ImageTooManyPixels = "image_too_many_pixels", 413, Both, "an image's header declares more than limits.max_image_pixels (nothing is decoded)";
    PayloadTooLarge = "payload_too_large", 413, Answer, "a JSON body, or a form's text fields together, over server.max_json_bytes";
    MetadataTooLarge = "metadata_too_large", 413, Answer, "metadata over limits.max_metadata_bytes";
    UnsupportedMediaType = "unsupported_media_type", 415, Answer, "the body is neither JSON nor multipart";
    UnsupportedImageType = "unsupported_image_type", 415, Both, "not JPEG, PNG or TIFF by its bytes, whatever its name";
    GpuUnavailable = "gpu_unavailable", 422, Answer, "the pipeline needs a GPU and this deployment has none";
    DatabaseUnavailable = "database_unavailable", 503, Answer, "the job database did not answer within 3 s; nothing was accepted: try again";
    StorageUnavailable = "storage_unavailable", 503, Answer, "storage did not answer; nothing was accepted: try again";
    QueueUnavailable = "queue_unavailable", 503, Answer, "the job queue is unavailable: try again";
    DownloadFailed = "download_failed", 500, Job, "an image could not be downloaded (after the retries, for transient errors)";
    StorageError = "storage_error", 500, Job, "storage failed while the worker read inputs or wrote results (after the retries)";
    WorkerIoError = "worker_io_error", 500, Job, "the worker could not use its working folder";
    EngineNotFound = "engine_not_found", 500, Job, "the engine (meshroom_batch or COLMAP) is not installed where the configuration says";
    EngineSpawnFailed = "engine_spawn_failed", 500, Job, "the engine could not be started";
    EngineFailed = "engine_failed", 500, Job, "the engine exited non-zero; the message names the failed node and log_tail has its last lines";
    EngineOutputMissing = "engine_output_missing", 500, Job, "the engine exited 0 but left no mesh";
    EngineTimeout = "engine_timeout", 500, Job, "the engine ran past the job's timeout and was stopped";
    EngineIoError = "engine_io_error", 500, Job, "reading the engine's output or status failed";
    TooFewImagesRegistered = "too_few_images_registered", 500, Job, "COLMAP placed too few of the images to build a model";
    PoisonJob = "poison_job", 500, Job, "workers died queue.max_deliveries times running the job; it is dead-lettered";
    Canceled = "canceled", 500, Job, "the engine was stopped by a cancel (never shown: a canceled job has no error)";
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// README's table of codes, rendered from the catalogue.
pub fn markdown_table() -> String {
    let mut out = String::from("| code | HTTP | where | meaning |\n|---|---|---|---|\n");
    for code in Code::ALL {
        let (status, seen) = match code.seen() {
            Seen::Answer => (code.status().to_string(), "answer"),
            Seen::Job => ("-".to_string(), "failed job"),
            Seen::Both => (code.status().to_string(), "answer, failed job"),
        };
        out.push_str(&format!("| `{code}` | {status} | {seen} | {} |\n", code.meaning()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert!(code.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<Code>(&json).unwrap(), *code);
            assert!((400..600).contains(&code.status()));
        }
    }

    #[test]
    fn readme_table_matches_the_catalogue() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        assert!(
            readme.contains(&markdown_table()),
            "README's table of error codes differs from src/error.rs; paste this in its place:\n{}",
            markdown_table()
        );
    }
}
