//! OAuth2 / OpenID Connect bearer tokens: JWTs signed by the configured issuer, checked with its
//! public keys (a JWKS document fetched under the egress rules and cached, or one PEM key). The
//! issuer, audience, expiry and not-before are checked, the algorithm must be in the allow-list
//! and match the key (so never `none`, never HMAC keyed with a public key), and the tenant and
//! role come from the configured claims.

use super::{check_name, Principal, Role};
use crate::config::OidcConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// An unknown `kid` fetches the JWKS again at most this often.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(2);

/// Why a token is refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours: bad signature, issuer, audience, algorithm, claims...
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    /// Its `exp` has passed.
    #[error("the bearer token has expired")]
    Expired,
    /// The issuer's keys could not be fetched.
    #[error("the token issuer's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

/// Where the keys come from.
enum Keys {
    /// One key from a PEM file.
    Pem(DecodingKey),
    /// A JWKS document, by `kid`, and when it was fetched.
    Jwks {
        url: String,
        client: reqwest::Client,
        cache: Mutex<(Option<Instant>, HashMap<String, DecodingKey>)>,
    },
}

/// Verifies bearer tokens.
pub struct Tokens {
    config: OidcConfig,
    algorithms: Vec<Algorithm>,
    keys: Keys,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({})", self.config.issuer)
    }
}

impl Tokens {
    /// A verifier for `[oidc]` (checked at config load), fetching keys with `client`.
    pub fn new(config: &OidcConfig, client: reqwest::Client) -> Result<Tokens, String> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| Algorithm::from_str(a).map_err(|e| format!("oidc.algorithms: {a}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = if config.public_key_file.is_empty() {
            Keys::Jwks {
                url: config.jwks_url.clone(),
                client,
                cache: Mutex::new((None, HashMap::new())),
            }
        } else {
            let pem = std::fs::read(&config.public_key_file)
                .map_err(|e| format!("oidc.public_key_file {}: {e}", config.public_key_file))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|e| format!("oidc.public_key_file: not an RSA, EC or Ed25519 public key: {e}"))?;
            Keys::Pem(key)
        };
        Ok(Tokens {
            config: config.clone(),
            algorithms,
            keys,
        })
    }

    /// Who a token acts for, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let invalid = |e: &dyn std::fmt::Display| TokenError::Invalid(e.to_string());
        let header = decode_header(token).map_err(|e| invalid(&e))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_secs;
        let data = decode::<serde_json::Value>(token, &key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => invalid(&e),
        })?;
        let claim = |name: &str| data.claims.get(name).and_then(|v| v.as_str()).map(String::from);
        let tenant = claim(&self.config.tenant_claim)
            .ok_or_else(|| TokenError::Invalid(format!("no '{}' claim", self.config.tenant_claim)))?;
        check_name(&tenant).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let role = claim(&self.config.role_claim)
            .ok_or_else(|| TokenError::Invalid(format!("no '{}' claim", self.config.role_claim)))?;
        let role = Role::from_str(&role).map_err(TokenError::Invalid)?;
        let subject = claim("sub").unwrap_or_else(|| "-".into());
        Ok(Principal {
            tenant,
            role,
            credential: format!("token:{subject}"),
        })
    }

    /// The key for a `kid`: the PEM key, or the JWKS's (fetched again when stale or unknown).
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, TokenError> {
        let (url, client, cache) = match &self.keys {
            Keys::Pem(key) => return Ok(key.clone()),
            Keys::Jwks { url, client, cache } => (url, client, cache),
        };
        let kid = kid.ok_or_else(|| TokenError::Invalid("no 'kid' in the token header".into()))?;
        let mut cache = cache.lock().await;
        let refresh = Duration::from_secs(self.config.jwks_refresh_secs);
        let stale = cache.0.is_none_or(|at| at.elapsed() >= refresh);
        let unknown = !cache.1.contains_key(kid) && cache.0.is_none_or(|at| at.elapsed() >= REFETCH_AT_MOST_EVERY);
        if stale || unknown {
            match fetch(client, url).await {
                Ok(keys) => *cache = (Some(Instant::now()), keys),
                // Keys fetched before keep working while the issuer is unreachable.
                Err(e) if !cache.1.is_empty() => log::warn!("oidc: JWKS not refreshed: {e}"),
                Err(e) => return Err(TokenError::KeysUnavailable(e)),
            }
        }
        cache
            .1
            .get(kid)
            .cloned()
            .ok_or_else(|| TokenError::Invalid(format!("no key '{}' at the issuer", crate::http::quote(kid))))
    }
}

/// The keys of a JWKS document, by `kid`.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<HashMap<String, DecodingKey>, String> {
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!("the JWKS URL answered {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n as usize > MAX_JWKS_BYTES) {
        return Err("the JWKS document is too large".into());
    }
    let body = resp.bytes().await.map_err(|e| e.without_url().to_string())?;
    if body.len() > MAX_JWKS_BYTES {
        return Err("the JWKS document is too large".into());
    }
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
    Ok(set
        .keys
        .iter()
        .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
        .collect())
}
