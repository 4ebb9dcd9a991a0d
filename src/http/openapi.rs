//! `GET /api/v1/openapi.json`: the OpenAPI 3 document, generated from the handlers and types.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "meshroom-svc", description = "Photogrammetry jobs: photos in, 3D models out."),
    paths(
        super::submit::submit, super::submit::reconstruct, super::jobs::get, super::jobs::list, super::jobs::cancel, super::jobs::retry,
        super::jobs::delete, super::outputs::file, super::outputs::log_tail, super::outputs::estimate, super::events::job_events, super::events::all_events,
        super::archive::archive, super::pipelines::list,
        super::usage::usage, super::keys::list, super::keys::create, super::keys::revoke, super::meta::health, super::meta::ready, super::meta::root, super::meta::metrics,
    ),
    modifiers(&ApiKeyScheme)
)]
struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/openapi.json", "GET").route(web::get().to(|| async { HttpResponse::Ok().json(document()) })),
    );
}
