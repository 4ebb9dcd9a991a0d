//! Service routes outside `/api/v1`: liveness, readiness and a summary. Open without an API key.

use crate::app::App;
use crate::engine;
use crate::pipelines::Engine;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    use super::resource;
    cfg.service(resource("/", "GET").route(web::get().to(root)))
        .service(resource("/health", "GET").route(web::get().to(health)))
        .service(resource("/ready", "GET").route(web::get().to(ready)))
        .service(resource("/metrics", "GET").route(web::get().to(metrics)));
}

#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, description = "The process is alive")))]
pub(super) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/ready", tag = "service",
    responses((status = 200, description = "Database, storage, queue and engine are usable"), (status = 503, description = "Something is not; see checks")))]
pub(super) async fn ready(app: web::Data<App>) -> HttpResponse {
    let storage = match app.files.check().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let database = match app.jobs.db().ping().await {
        Ok(()) => format!("ok: {}", app.jobs.db().kind()),
        Err(e) => format!("error: {e}"),
    };
    // Ready means the engine of the default pipeline can run; the other one is reported.
    let default_engine = app
        .pipelines
        .get(app.default_pipeline())
        .map_or(Engine::Meshroom, |p| p.engine);
    let engine = match engine::find_binary(default_engine, &app.config.engine) {
        Ok(p) => format!("ok: {}", p.display()),
        Err(e) => format!("error: {e}"),
    };
    let queue = match app.queue.is_available() {
        true => "ok".to_string(),
        false => "error: the message broker is unreachable; reconnecting".to_string(),
    };
    let disk = match crate::worker::disk_check(&app.config.server.data_dir, app.config.worker.min_free_bytes) {
        Ok(line) => line,
        Err(why) => format!("error: {why}"),
    };
    let ok = [&database, &storage, &engine, &queue, &disk]
        .iter()
        .all(|s| s.starts_with("ok"));
    // Meshing is optional (COLMAP jobs still succeed without it): reported, never a reason to be unready.
    let body = json!({"status": if ok { "ready" } else { "not_ready" }, "checks": {
        "database": database, "storage": storage, "queue": queue, "engine": engine, "disk": disk, "mesher": app.mesher()}});
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(get, path = "/", tag = "service", responses((status = 200, description = "Name, version, engine, queue"),
    (status = 302, description = "To the web console (`console/`), when the request accepts text/html")))]
pub(super) async fn root(app: web::Data<App>, req: HttpRequest) -> HttpResponse {
    // Browsers (asking for HTML) get the console; API clients the summary.
    if super::console::wants_html(&req) && app.serves_console() {
        return super::console::from_root();
    }
    let binary = |e| {
        engine::find_binary(e, &app.config.engine)
            .ok()
            .map(|p| p.display().to_string())
    };
    HttpResponse::Ok().json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "engines": {"meshroom": binary(Engine::Meshroom), "colmap": binary(Engine::Colmap)},
        "queue": {"kind": app.queue.kind(), "depth": app.queue.depth().await},
        "storage": app.files.kind(),
        "database": app.jobs.db().kind(),
        "running_here": app.running.lock().expect("lock").len(),
        "gpus": app.gpus,
        "pipelines": app.pipelines.names(),
        "default_pipeline": app.default_pipeline(),
    }))
}

/// Gauges read at each scrape: the webhook backlog (shared by every process: a query on the
/// partial index of pending deliveries), free space in the data folder, this process's GPUs.
async fn refresh(app: &App) {
    let m = &app.metrics;
    if let Ok((pending, oldest)) = app.jobs.webhook_backlog().await {
        m.webhooks_pending.set(pending);
        let age = oldest.map_or(0, |t| (crate::events::now_ms() - t).max(0) / 1000);
        m.webhook_backlog_age_seconds.set(age);
    }
    if let Ok(s) = nix::sys::statvfs::statvfs(&app.config.server.data_dir) {
        m.data_free_bytes
            .set((s.blocks_available() as i64).saturating_mul(s.fragment_size() as i64));
    }
    if !app.gpus.is_empty() {
        for gpu in crate::process::read_gpus().await {
            if app.gpus.contains(&gpu.index) {
                let label = [gpu.index.to_string()];
                m.gpu_utilization.with_label_values(&label).set(gpu.utilization);
                m.gpu_memory_used_bytes.with_label_values(&label).set(gpu.memory_used);
                m.gpu_memory_total_bytes.with_label_values(&label).set(gpu.memory_total);
            }
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus metrics of this process", content_type = "text/plain"),
        (status = 401, description = "server.metrics_public = false and no admin key", body = super::ErrorBody)))]
pub(super) async fn metrics(app: web::Data<App>, req: HttpRequest) -> Result<HttpResponse, super::ApiError> {
    if !app.config.server.metrics_public {
        let who = super::auth::resolve(&app, &req).await?;
        super::auth::require(&who, crate::tenants::Role::Admin)?;
    }
    if let Some(depth) = app.queue.depth().await {
        app.metrics.queue_depth.set(depth as i64);
    }
    app.metrics.running.set(app.running.lock().expect("lock").len() as i64);
    refresh(&app).await;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(app.metrics.render()))
}
