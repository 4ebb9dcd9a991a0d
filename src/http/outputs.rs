//! What a job gives back: its result files, its engine log (live or final) and the time it has
//! left.

use super::jobs::find;
use super::ApiError;
use crate::app::App;
use crate::engine;
use crate::error::Code;
use crate::jobs::{Status, Store};
use crate::storage::Storage;
use crate::tenants::Principal;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    use super::resource;
    cfg.service(resource("/jobs/{id}/log", "GET").route(web::get().to(log_tail)))
        .service(resource("/jobs/{id}/estimate", "GET").route(web::get().to(estimate)))
        .service(resource("/jobs/{id}/files/{name:.+}", "GET").route(web::get().to(file)));
}

/// `GET /jobs/{id}/files/{name}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct FileQuery {
    /// With S3 storage, answer 302 to a presigned link (default); false sends the bytes through
    /// the service (for pages whose Content-Security-Policy allows only their own origin).
    #[serde(default = "yes")]
    redirect: bool,
}

fn yes() -> bool {
    true
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/files/{name}", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), ("name" = String, Path, description = "Result file name"), FileQuery),
    responses((status = 200, description = "The file (Range supported)", content_type = "application/octet-stream"),
        (status = 206, description = "Part of the file"),
        (status = 302, description = "S3 storage: a presigned link to the file"),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn file(
    jobs: web::Data<Store>,
    files: web::Data<Storage>,
    who: Principal,
    path: web::Path<(String, String)>,
    query: web::Query<FileQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    let job = find(&jobs, &who, &id).await?;
    let not_found = || ApiError::new(Code::FileNotFound, format!("the job has no result file '{name}'"));
    if !job.results.iter().any(|r| r.name == name) {
        return Err(not_found());
    }
    let key = job.file_key(&format!("results/{name}"));
    if !query.redirect && files.local_path(&key).is_none() {
        // Through this service: for browsers whose page may only connect to its own origin.
        let size = job.results.iter().find(|r| r.name == name).map_or(0, |r| r.size);
        let reader = files.reader(&key).await?;
        return Ok(HttpResponse::Ok()
            .content_type(mime_guess::from_path(&name).first_or_octet_stream().essence_str())
            .no_chunking(size)
            .streaming(tokio_util::io::ReaderStream::new(reader)));
    }
    if let Some(url) = files.presigned_url(&key).await? {
        // S3: the client downloads straight from the bucket, Range and all.
        return Ok(HttpResponse::Found().insert_header(("location", url)).finish());
    }
    let local = files.local_path(&key).ok_or_else(not_found)?;
    match super::files::respond(&req, &local).await {
        Ok(resp) => Ok(resp),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_found()),
        Err(source) => Err(crate::storage::StorageError::Io { key, source }.into()),
    }
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/log", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "Tail of the engine log", content_type = "text/plain"),
        (status = 401, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn log_tail(
    app: web::Data<App>,
    who: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = find(&app.jobs, &who, &id).await?;
    let max = app.config.engine.log_tail_bytes;
    let live = app.work_dir(job.id).join("engine.log");
    let text = match job.status {
        // The worker may run on another host: then its lines are in the database.
        Status::Processing => match engine::tail(&live, max) {
            Some(t) => Some(t),
            None => shipped_tail(&app.jobs, job.id, max).await,
        },
        _ => None,
    };
    let text = match text {
        Some(t) => t,
        None => match app.files.get_bytes(&job.file_key("engine.log")).await {
            Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => return Err(ApiError::new(Code::LogNotFound, "the engine has not run for this job")),
        },
    };
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(text))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/estimate", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = crate::jobs::estimate::Estimate, description = "Time left, from the node timings of up to 20 \
        earlier succeeded jobs of the same preset with half to twice the images; `remaining_secs` null when there are none"),
        (status = 401, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn estimate(
    jobs: web::Data<Store>,
    who: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = find(&jobs, &who, &id).await?;
    Ok(HttpResponse::Ok().json(jobs.estimate(&job).await?))
}

/// The last `max` bytes (whole lines) of the log lines the worker shipped, if any.
async fn shipped_tail(jobs: &Store, id: uuid::Uuid, max: u64) -> Option<String> {
    let end = jobs.log_end(id).await.ok()?;
    let lines = jobs.log_after(id, (end - 1000).max(0), 1000).await.ok()?;
    let mut kept = Vec::new();
    let mut bytes = 0;
    for (_, line) in lines.iter().rev() {
        bytes += line.len() as u64 + 1;
        if bytes > max {
            break;
        }
        kept.push(line.as_str());
    }
    kept.reverse();
    (!kept.is_empty()).then(|| kept.join("\n") + "\n")
}
