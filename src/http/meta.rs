//! Service routes outside `/api/v1`: liveness, readiness and a summary. Open without an API key.

use crate::app::App;
use actix_web::{web, HttpResponse};
use serde_json::json;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics));
}

#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, description = "The process is alive")))]
pub(super) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/ready", tag = "service",
    responses((status = 200, description = "Storage, queue and engine are usable"), (status = 503, description = "Something is not; see checks")))]
pub(super) async fn ready(app: web::Data<App>) -> HttpResponse {
    let storage = match app.storage.check().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    let engine = match crate::meshroom::find_binary(&app.config.engine.meshroom_batch) {
        Some(p) => format!("ok: {}", p.display()),
        None => "error: meshroom_batch not found (engine.meshroom_batch, MESHROOM_BATCH or PATH)".to_string(),
    };
    let queue = match app.queue.is_available() {
        true => "ok".to_string(),
        false => "error: the message broker is unreachable; reconnecting".to_string(),
    };
    let ok = [&storage, &engine, &queue].iter().all(|s| s.starts_with("ok"));
    let body = json!({"status": if ok { "ready" } else { "not_ready" }, "checks": {"storage": storage, "queue": queue, "engine": engine}});
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(get, path = "/", tag = "service", responses((status = 200, description = "Name, version, engine, queue")))]
pub(super) async fn root(app: web::Data<App>) -> HttpResponse {
    let binary = crate::meshroom::find_binary(&app.config.engine.meshroom_batch);
    HttpResponse::Ok().json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "engine": {"name": "meshroom", "binary": binary.map(|p| p.display().to_string())},
        "queue": {"kind": app.queue.kind(), "depth": app.queue.depth().await},
        "storage": app.storage.kind(),
        "running_here": app.running.lock().expect("lock").len(),
        "gpus": app.gpus,
        "pipelines": app.pipelines.names(),
        "default_pipeline": app.default_pipeline(),
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus metrics of this process", content_type = "text/plain")))]
pub(super) async fn metrics(app: web::Data<App>) -> HttpResponse {
    if let Some(depth) = app.queue.depth().await {
        app.metrics.queue_depth.set(depth as i64);
    }
    app.metrics.running.set(app.running.lock().expect("lock").len() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(app.metrics.render())
}
