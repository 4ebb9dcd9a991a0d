//! Rate limits on the API: per key, submits and other requests counted apart, in buckets shared
//! by every replica (`tenants::rate`). Answers carry the `RateLimit-*` headers of the IETF
//! draft (draft-ietf-httpapi-ratelimit-headers); a refusal is 429 `rate_limited` with
//! `Retry-After`.

use super::ApiError;
use crate::app::App;
use crate::error::Code;
use crate::tenants::rate::{self, Decision};
use crate::tenants::Principal;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{HttpRequest, ResponseError};

/// Takes the request from its key's bucket; `None` when no limit applies. A refusal is an
/// error response of its own, headers and all.
pub(super) async fn check(app: &App, who: &Principal, req: &HttpRequest) -> Result<Option<Decision>, actix_web::Error> {
    let submit = req.method() == Method::POST && matches!(req.path(), "/api/v1/jobs" | "/api/v1/reconstruct");
    let limits = app.config.limits_of(&who.tenant);
    let (kind, per_minute) = match submit {
        true => ("submit", limits.submits_per_minute),
        false => ("read", limits.reads_per_minute),
    };
    if per_minute == 0 {
        return Ok(None);
    }
    let bucket = format!("{kind}:{}", who.credential);
    let decision = rate::take(app.jobs.db(), &bucket, per_minute, app.config.rate_limit.burst_secs)
        .await
        .map_err(|e| ApiError::from(crate::jobs::StoreError::Db(e)))?;
    if decision.allowed {
        return Ok(Some(decision));
    }
    app.metrics
        .rate_limited
        .with_label_values(&[app.metrics.tenant(&who.tenant), kind])
        .inc();
    let error = ApiError::new(
        Code::RateLimited,
        format!(
            "this key may send {per_minute} {kind} requests a minute; try again in {} s",
            decision.retry_after_secs
        ),
    );
    let mut resp = error.error_response();
    set_headers(resp.headers_mut(), &decision);
    insert(resp.headers_mut(), "retry-after", decision.retry_after_secs.to_string());
    Err(actix_web::error::InternalError::from_response(error, resp).into())
}

/// The `RateLimit-*` headers of a decision.
pub(super) fn set_headers(headers: &mut HeaderMap, d: &Decision) {
    insert(headers, "ratelimit-limit", d.per_minute.to_string());
    insert(headers, "ratelimit-remaining", d.remaining.to_string());
    insert(headers, "ratelimit-reset", d.reset_secs.to_string());
    insert(headers, "ratelimit-policy", format!("{};w=60", d.per_minute));
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}
