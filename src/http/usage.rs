//! `GET /api/v1/usage`: what each tenant used over a period, for billing.

use super::auth::require;
use super::ApiError;
use crate::error::Code;
use crate::jobs::{Store, TenantUsage};
use crate::tenants::{Principal, Role};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/usage", "GET").route(web::get().to(usage)));
}

/// `GET /usage` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct UsageQuery {
    /// Jobs created at or after this time (RFC 3339; default: 30 days before `to`).
    from: Option<DateTime<Utc>>,
    /// Jobs created before this time (RFC 3339; default: now).
    to: Option<DateTime<Utc>>,
    /// Admins: one tenant only (default: every tenant). Others see their own tenant.
    tenant: Option<String>,
}

/// Use per tenant over a period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// Start of the period.
    pub from: DateTime<Utc>,
    /// End of the period (excluded).
    pub to: DateTime<Utc>,
    /// One entry per tenant with jobs or stored bytes.
    pub tenants: Vec<TenantUsage>,
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "tenants", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn usage(
    jobs: web::Data<Store>,
    who: Principal,
    q: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    require(&who, Role::Read)?;
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q.from.unwrap_or(to - chrono::Duration::days(30));
    if from >= to {
        return Err(ApiError::new(Code::InvalidQuery, "from must be before to"));
    }
    let tenant = match (who.scope(), q.tenant.as_deref()) {
        (None, wanted) => wanted,
        (Some(own), None) => Some(own),
        (Some(own), Some(wanted)) if wanted == own => Some(own),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                Code::Forbidden,
                "only admin keys see other tenants' usage",
            ));
        }
    };
    let mut tenants = jobs.usage(tenant, from, to).await?;
    if let (Some(t), true) = (tenant, tenants.is_empty()) {
        tenants.push(TenantUsage {
            tenant: t.to_string(),
            ..TenantUsage::default()
        });
    }
    Ok(HttpResponse::Ok().json(UsageReport { from, to, tenants }))
}
