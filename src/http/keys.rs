//! `/api/v1/keys`: key management for admin keys (the `keys` CLI does the same on the database).

use super::auth::require;
use super::ApiError;
use crate::app::App;
use crate::error::Code;
use crate::tenants::{check_name, KeyError, KeyRecord, Principal, Role};
use actix_web::{web, HttpResponse};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/keys", "GET, POST")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(super::resource("/keys/{id}", "DELETE").route(web::delete().to(revoke)));
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Db(e) => crate::jobs::StoreError::Db(e).into(),
            other => ApiError::new(Code::InvalidApiKey, other.to_string()),
        }
    }
}

/// `POST /keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// The tenant it acts for.
    pub tenant: String,
    /// `read`, `submit` (default) or `admin`.
    #[serde(default)]
    pub role: Option<Role>,
    /// A label for people.
    #[serde(default)]
    pub name: String,
    /// Lifetime in seconds; none: no expiry.
    pub expires_in_secs: Option<u64>,
}

/// A key just made: its record and, this once, the key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The key's record.
    pub record: KeyRecord,
    /// The key itself: shown once, stored only as a hash.
    pub key: String,
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "tenants",
    responses((status = 200, description = "Every key (never the keys themselves)", body = Vec<KeyRecord>),
        (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn list(app: web::Data<App>, who: Principal) -> Result<HttpResponse, ApiError> {
    require(&who, Role::Admin)?;
    Ok(HttpResponse::Ok().json(app.keys.list().await?))
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "tenants", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn create(
    app: web::Data<App>,
    who: Principal,
    body: web::Json<NewKey>,
) -> Result<HttpResponse, ApiError> {
    require(&who, Role::Admin)?;
    check_name(&body.tenant).map_err(|e| ApiError::new(Code::InvalidJson, e))?;
    if body.name.len() > 200 {
        return Err(ApiError::new(Code::InvalidJson, "name: at most 200 bytes"));
    }
    let expires = body.expires_in_secs.map(std::time::Duration::from_secs);
    let role = body.role.unwrap_or(Role::Submit);
    let (record, key) = app.keys.create(&body.tenant, role, &body.name, expires).await?;
    log::info!(
        "key {}: made for tenant {} ({}) by {}",
        record.id,
        record.tenant,
        role.as_str(),
        who.credential
    );
    Ok(HttpResponse::Created().json(CreatedKey {
        record,
        key: key.expose_secret().to_string(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "tenants", params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked"), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn revoke(
    app: web::Data<App>,
    who: Principal,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require(&who, Role::Admin)?;
    if !app.keys.revoke(&id).await? {
        return Err(ApiError::new(Code::NotFound, "no active key with this id"));
    }
    log::info!("key {id}: revoked by {}", who.credential);
    Ok(HttpResponse::NoContent().finish())
}
