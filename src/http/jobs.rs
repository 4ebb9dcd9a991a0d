//! Job routes: submit, read, list, cancel, retry, delete (what a job gives back is in `outputs`).

use super::auth::require;
use super::{submit, ApiError};
use crate::app::App;
use crate::error::Code;
use crate::jobs::lifecycle::{self, Cancel};
use crate::jobs::{Filter, Job, JobView, Status, Store};
use crate::tenants::{Principal, Role};
use crate::worker;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    use super::resource;
    cfg.service(
        resource("/jobs", "GET, POST")
            .route(web::get().to(list))
            .route(web::post().to(submit::submit)),
    )
    .service(resource("/reconstruct", "POST").route(web::post().to(submit::reconstruct)))
    .service(
        resource("/jobs/{id}", "GET, DELETE")
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    )
    .service(resource("/jobs/{id}/cancel", "POST").route(web::post().to(cancel)))
    .service(resource("/jobs/{id}/retry", "POST").route(web::post().to(retry)));
}

/// A tenant's queued job left the queue: its next held job may go (see `scheduling`).
async fn release_turn(app: &App, tenant: &str) {
    let tenants = [tenant.to_string()];
    crate::scheduling::release(&app.jobs, &app.queue, &app.pipelines, Some(&tenants)).await;
}

/// A job id from the path; any text that is no id names no job.
fn job_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::job_not_found())
}

/// The job, if it exists and the principal may see it: another tenant's job answers exactly as
/// a job that does not exist, after the same one read.
pub(super) async fn find(jobs: &Store, who: &Principal, id: &str) -> Result<Job, ApiError> {
    jobs.get(job_id(id)?)
        .await?
        .filter(|job| who.sees(&job.tenant))
        .ok_or_else(ApiError::job_not_found)
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 401, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn get(
    jobs: web::Data<Store>,
    who: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(JobView::from(find(&jobs, &who, &id).await?)))
}

/// `GET /jobs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only jobs with this status.
    status: Option<Status>,
    /// Only jobs of this preset.
    pipeline: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only jobs created before this time (RFC 3339).
    created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    /// `full` (default), or `summary`: `image_urls`, `uploads`, `params`, `metadata`, `results`
    /// and `log_tail` left empty, so that a page stays small; GET the job for them.
    #[param(inline)]
    view: Option<View>,
}

/// How much of each job a list page carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum View {
    /// Every field.
    Full,
    /// The lifecycle fields only.
    Summary,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<Uuid>,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobPage), (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn list(
    jobs: web::Data<Store>,
    who: Principal,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(Code::InvalidQuery, "limit must be 1 to 100"));
    }
    let filter = Filter {
        tenant: who.scope().map(String::from),
        status: q.status,
        pipeline: q.pipeline.clone(),
        created_after: q.created_after,
        created_before: q.created_before,
    };
    let (page, next_cursor) = jobs.list(&filter, limit, q.cursor).await?;
    let mut jobs: Vec<JobView> = page.into_iter().map(JobView::from).collect();
    if q.view == Some(View::Summary) {
        for job in &mut jobs {
            job.image_urls = Vec::new();
            job.uploads = Vec::new();
            job.params = Default::default();
            job.metadata = None;
            job.results = Vec::new();
            job.log_tail = None;
        }
    }
    Ok(HttpResponse::Ok().json(JobPage { jobs, next_cursor }))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "Canceled (it was queued)", body = JobView),
        (status = 202, description = "Stopping (it is running)", body = JobView),
        (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn cancel(
    app: web::Data<App>,
    who: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&who, Role::Submit)?;
    let id = find(&app.jobs, &who, &id).await?.id;
    let canceled = lifecycle::cancel(&app.jobs, &app.webhooks, id)
        .await?
        .ok_or_else(ApiError::job_not_found)?;
    match canceled {
        Cancel::Canceled(job) => {
            log::info!("job {}: canceled while queued", job.id);
            app.start_webhook(job.id).await?;
            release_turn(&app, &job.tenant).await;
            Ok(HttpResponse::Ok().json(JobView::from(job)))
        }
        Cancel::Stopping(job) => {
            // Its worker sees the request within a second, wherever it runs; here, at once.
            worker::cancel(&app.running, job.id);
            log::info!("job {}: cancel requested while running", job.id);
            Ok(HttpResponse::Accepted().json(JobView::from(job)))
        }
        Cancel::Final(status) => Err(ApiError::new(
            Code::JobNotCancelable,
            format!("the job is already {}", status.as_str()),
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = JobView), (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn retry(
    app: web::Data<App>,
    who: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&who, Role::Submit)?;
    let id = find(&app.jobs, &who, &id).await?.id;
    let retried = lifecycle::retry(&app.jobs, id)
        .await?
        .ok_or_else(ApiError::job_not_found)?
        .map_err(|_| ApiError::new(Code::JobNotRetryable, "only failed or canceled jobs can be retried"))?;
    // Committed: when the queue refuses now, the outbox sweep queues it later.
    if let Err(e) = app.publish(&retried).await {
        log::warn!("job {id}: retried, queued later ({e})");
    }
    log::info!("job {id}: retried");
    Ok(HttpResponse::Accepted().json(JobView::from(retried)))
}

#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 204, description = "Deleted with its files"), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn delete(
    app: web::Data<App>,
    who: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&who, Role::Submit)?;
    let job = find(&app.jobs, &who, &id).await?;
    let id = job.id;
    if !app.remove_job(id).await? {
        // A worker runs it (the store never deletes a processing job), or another request
        // deleted it meanwhile.
        return match app.jobs.get(id).await? {
            Some(_) => Err(ApiError::new(Code::JobRunning, "cancel the job before deleting it")),
            None => Err(ApiError::job_not_found()),
        };
    }
    log::info!("job {id}: deleted");
    release_turn(&app, &job.tenant).await;
    Ok(HttpResponse::NoContent().finish())
}
