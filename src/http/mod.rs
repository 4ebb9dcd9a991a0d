//! The HTTP API (actix-web): routes under `/api/v1`, one error shape, API-key auth.

use crate::app::App;
use crate::error::Code;
use crate::jobs::{ErrorInfo, StoreError};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use std::net::TcpListener;
use std::sync::Arc;
use utoipa::ToSchema;

mod archive;
mod auth;
mod console;
mod events;
mod files;
mod job_request;
mod jobs;
mod keys;
mod meta;
mod multipart;
mod openapi;
mod outputs;
mod pipelines;
mod rate_limit;
pub mod request_log;
mod staging;
mod submit;
mod usage;

pub use jobs::JobPage;
pub use staging::spawn_sweep as spawn_staging_sweep;
pub use usage::UsageReport;

/// An API error: the `{message, code}` shape; the code gives the HTTP status.
#[derive(Debug)]
pub struct ApiError {
    info: ErrorInfo,
}

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorInfo,
}

impl ApiError {
    /// An error with a code (which gives its HTTP status) and a message.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            info: ErrorInfo::new(code, message),
        }
    }

    /// The same error, naming the request field or file it concerns (`ErrorInfo::field`).
    pub fn at(mut self, field: impl Into<String>) -> ApiError {
        self.info.field = Some(field.into());
        self
    }

    /// 404 for a job id that does not exist.
    pub fn job_not_found() -> ApiError {
        Self::new(Code::JobNotFound, "no job with this id")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.info.code, self.info.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.info.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.info.clone(),
        })
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(e: crate::queue::QueueError) -> Self {
        log::warn!("queue: {e}");
        Self::new(Code::QueueUnavailable, "the job queue is unavailable; try again")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        log::error!("job store: {e}");
        Self::new(Code::DatabaseUnavailable, "the job database is unavailable; try again")
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(e: crate::storage::StorageError) -> Self {
        log::error!("storage: {e}");
        Self::new(Code::StorageUnavailable, "storage is unavailable; try again")
    }
}

/// Client text as quoted in an error message: at most 100 characters, so that an answer never
/// echoes a large field back.
pub(crate) fn quote(text: &str) -> String {
    const SHOWN: usize = 100;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

/// How long an idle keep-alive connection stays open. Longer than the idle timeouts of common
/// client pools (reqwest and Go 90 s, browsers 60 s or less), so that a client never sends a
/// request on a connection the server is closing at that moment (actix's default is 5 s).
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(120);

/// Builds the server on a bound listener; it stops gracefully on SIGINT and SIGTERM.
pub fn server(app: Arc<App>, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    // Handlers take what they use: the job records, the files, or (for operations that span
    // several backends, like submit and cancel) the whole state.
    let jobs = web::Data::from(app.jobs.clone());
    let files = web::Data::new(app.files.clone());
    let workers = app.config.server.workers();
    let data = web::Data::from(app);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap(from_fn(head_as_get))
            .wrap(from_fn(request_log::assign))
            .wrap(request_log::logger())
            .app_data(data.clone())
            .app_data(jobs.clone())
            .app_data(files.clone())
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::new(Code::InvalidQuery, e.to_string()).into()),
            )
            .app_data(
                web::JsonConfig::default()
                    .limit(64 << 10)
                    .error_handler(|e, _| ApiError::new(Code::InvalidJson, e.to_string()).into()),
            )
            .app_data(
                web::PathConfig::default().error_handler(|e, _| ApiError::new(Code::NotFound, e.to_string()).into()),
            )
            .configure(meta::configure)
            .configure(console::configure)
            .service(
                web::scope("/api/v1").configure(openapi::configure).service(
                    web::scope("")
                        .wrap(from_fn(auth::authenticate))
                        .configure(jobs::configure)
                        .configure(outputs::configure)
                        .configure(events::configure)
                        .configure(archive::configure)
                        .configure(pipelines::configure)
                        .configure(usage::configure)
                        .configure(keys::configure),
                ),
            )
            .default_service(web::to(|| async {
                ApiError::new(Code::NotFound, "no such route").error_response()
            }))
    })
    .keep_alive(KEEP_ALIVE)
    .workers(workers)
    .listen(listener)?
    .shutdown_timeout(30)
    .run();
    Ok(server)
}

/// The service routes only (`/health`, `/ready`, `/metrics`, `/`), for `work --listen`.
pub fn ops_server(app: Arc<App>, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(app);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap(from_fn(head_as_get))
            .app_data(data.clone())
            .configure(meta::configure)
            .default_service(web::to(|| async {
                ApiError::new(Code::NotFound, "a worker serves /health, /ready and /metrics only").error_response()
            }))
    })
    .workers(1)
    .keep_alive(KEEP_ALIVE)
    .listen(listener)?
    .shutdown_timeout(5)
    .run();
    Ok(server)
}

/// A route taking the methods in `allow` (e.g. `"GET, POST"`; HEAD goes with GET); others answer
/// 405 with the error shape and an `Allow` header.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    let allow = match allow.contains("GET") {
        true => format!("{allow}, HEAD"),
        false => allow.to_string(),
    };
    web::resource(path).default_service(web::to(move || {
        let allow = allow.clone();
        async move {
            let mut resp = ApiError::new(Code::MethodNotAllowed, format!("this route takes {allow}")).error_response();
            if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(actix_web::http::header::ALLOW, value);
            }
            resp
        }
    }))
}

/// HEAD is GET without the body (RFC 9110 §9.3.2): routed as GET; actix's HTTP layer remembers
/// the request was HEAD and sends the headers, Content-Length included, without the body.
async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.method() == actix_web::http::Method::HEAD {
        req.head_mut().method = actix_web::http::Method::GET;
    }
    next.call(req).await
}
