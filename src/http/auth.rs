//! Who a request acts for: an API key (`X-API-Key`, or `Authorization: Bearer`) from the
//! database or from MESHROOM_SVC_API_KEYS, or an OpenID Connect bearer token (`[oidc]`),
//! resolved to a `Principal` that handlers take as an argument. With no credential configured at all, requests act as the default tenant's admin
//! (a laptop's all-in-one on loopback; `roles` refuses other addresses then).

use super::ApiError;
use crate::app::App;
use crate::error::Code;
use crate::tenants::tokens::TokenError;
use crate::tenants::{KeyError, Principal, Role, DEFAULT_TENANT};
use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::future::{ready, Ready};
use subtle::ConstantTimeEq;

/// Resolves the request's principal (or answers 401) and applies its rate limit (or answers 429).
pub(super) async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let app = req.app_data::<web::Data<App>>().expect("app data").clone();
    let principal = resolve(&app, req.request()).await?;
    let decision = super::rate_limit::check(&app, &principal, req.request()).await?;
    req.extensions_mut().insert(principal);
    let mut resp = next.call(req).await?;
    if let Some(d) = decision {
        super::rate_limit::set_headers(resp.headers_mut(), &d);
    }
    Ok(resp)
}

/// The principal of a request that carries a credential; `Ok(None)` when it carries none.
pub(super) async fn resolve_given(app: &App, req: &HttpRequest) -> Result<Option<Principal>, ApiError> {
    let Some(given) = presented(req) else {
        return Ok(None);
    };
    if given.starts_with("msk_") {
        return match app.keys.verify(given).await {
            Ok(p) => Ok(Some(p)),
            Err(KeyError::Db(e)) => Err(crate::jobs::StoreError::Db(e).into()),
            Err(e @ KeyError::Expired(_)) => Err(ApiError::new(Code::InvalidApiKey, e.to_string())),
            Err(KeyError::Invalid) => Err(invalid()),
        };
    }
    if let (Some(tokens), true) = (&app.tokens, given.matches('.').count() == 2) {
        return match tokens.verify(given).await {
            Ok(p) => Ok(Some(p)),
            Err(e @ TokenError::Expired) => Err(ApiError::new(Code::TokenExpired, e.to_string())),
            Err(e @ TokenError::KeysUnavailable(_)) => {
                log::warn!("{e}");
                Err(ApiError::new(
                    Code::AuthUnavailable,
                    "the token issuer's keys are unavailable; try again",
                ))
            }
            Err(e) => Err(ApiError::new(Code::InvalidToken, e.to_string())),
        };
    }
    match env_key_index(&app.config.secrets.api_keys, given.as_bytes()) {
        Some(n) => Ok(Some(Principal {
            tenant: DEFAULT_TENANT.into(),
            role: Role::Submit,
            credential: format!("env:{n}"),
        })),
        None => Err(invalid()),
    }
}

/// The principal of a request: its credential's, or the anonymous admin when none is configured.
pub(super) async fn resolve(app: &App, req: &HttpRequest) -> Result<Principal, ApiError> {
    if let Some(p) = resolve_given(app, req).await? {
        return Ok(p);
    }
    let open = app.config.secrets.api_keys.is_empty()
        && app.tokens.is_none()
        && !app
            .keys
            .any_active_recently()
            .await
            .map_err(|e| ApiError::from(crate::jobs::StoreError::Db(db_error(e))))?;
    if !open {
        return Err(ApiError::new(
            Code::MissingApiKey,
            "send an API key: X-API-Key: <key>, or Authorization: Bearer <key>",
        ));
    }
    Ok(Principal {
        tenant: DEFAULT_TENANT.into(),
        role: Role::Admin,
        credential: "anonymous".into(),
    })
}

fn db_error(e: KeyError) -> sqlx::Error {
    match e {
        KeyError::Db(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

fn invalid() -> ApiError {
    ApiError::new(Code::InvalidApiKey, "the API key is not valid")
}

/// The credential a request carries: `X-API-Key`, else an `Authorization: Bearer` token.
fn presented(req: &HttpRequest) -> Option<&str> {
    if let Some(key) = req.headers().get("x-api-key") {
        return Some(key.to_str().unwrap_or("\u{0}"));
    }
    let auth = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    let auth = auth.to_str().unwrap_or("\u{0}");
    let (scheme, token) = auth.split_once(' ').unwrap_or((auth, ""));
    Some(match scheme.eq_ignore_ascii_case("bearer") {
        true => token.trim(),
        false => "\u{0}",
    })
}

/// Which configured key matches, comparing digests in constant time against every key, so that
/// neither the match nor its position nor the key lengths show in the timing.
fn env_key_index(keys: &[SecretString], given: &[u8]) -> Option<usize> {
    let given = Sha256::digest(given);
    keys.iter().enumerate().fold(None, |found, (n, k)| {
        let hit = bool::from(Sha256::digest(k.expose_secret().as_bytes()).ct_eq(&given));
        if hit {
            Some(n)
        } else {
            found
        }
    })
}

/// 403 unless the principal's role is at least `needed`.
pub(super) fn require(p: &Principal, needed: Role) -> Result<(), ApiError> {
    if p.role >= needed {
        return Ok(());
    }
    Err(ApiError::new(
        Code::Forbidden,
        format!(
            "this key's role is {}; this needs {} or above",
            p.role.as_str(),
            needed.as_str()
        ),
    ))
}

/// Handlers take the principal `authenticate` resolved.
impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Principal, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .ok_or_else(|| ApiError::new(Code::MissingApiKey, "this route needs an API key")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys_match_exactly() {
        let keys = vec![SecretString::from("alpha"), SecretString::from("beta")];
        assert_eq!(env_key_index(&keys, b"beta"), Some(1));
        assert_eq!(env_key_index(&keys, b"bet"), None);
        assert_eq!(env_key_index(&keys, b"betaa"), None);
        assert_eq!(env_key_index(&[], b""), None);
    }
}
