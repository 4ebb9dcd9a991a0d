//! The tenancy sections of `meshroom.toml`: `[rate_limit]`, `[quota]`, `[scheduling]` and the
//! per-tenant overrides `[tenants.<name>]`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[rate_limit]`: requests per minute per key, in a token bucket shared by every replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Submits (`POST /jobs`, `/reconstruct`) per minute per key; 0: no limit.
    pub submits_per_minute: u32,
    /// Other API requests per minute per key; 0: no limit.
    pub reads_per_minute: u32,
    /// The bucket holds this many seconds' worth of requests (at least one): the burst allowed.
    pub burst_secs: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            submits_per_minute: 0,
            reads_per_minute: 0,
            burst_secs: 5,
        }
    }
}

/// `[quota]`: per tenant; 0 means no limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Most jobs enqueued or processing at once.
    pub max_active_jobs: u64,
    /// Most images in one job (`limits.max_images` applies too).
    pub max_images_per_job: u64,
    /// Most bytes kept in storage: the inputs and results of the tenant's jobs.
    pub max_stored_bytes: u64,
    /// Most engine seconds of GPU pipelines in the last 24 hours.
    pub max_gpu_seconds_per_day: u64,
}

/// `[scheduling]`: how workers are shared between tenants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// Most jobs of one tenant waiting in the queue at once; the others wait in the database and
    /// go to the queue as these are taken. Another tenant's job thus waits behind at most this
    /// many of each tenant's. 0: no holding back (first come, first served).
    pub queued_per_tenant: u32,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        Self { queued_per_tenant: 2 }
    }
}

/// `[tenants.<name>]`: one tenant's own limits (each key of `[rate_limit]` and `[quota]`
/// but `burst_secs`), and its webhook secret.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Overrides `rate_limit.submits_per_minute`.
    pub submits_per_minute: Option<u32>,
    /// Overrides `rate_limit.reads_per_minute`.
    pub reads_per_minute: Option<u32>,
    /// Overrides `quota.max_active_jobs`.
    pub max_active_jobs: Option<u64>,
    /// Overrides `quota.max_images_per_job`.
    pub max_images_per_job: Option<u64>,
    /// Overrides `quota.max_stored_bytes`.
    pub max_stored_bytes: Option<u64>,
    /// Overrides `quota.max_gpu_seconds_per_day`.
    pub max_gpu_seconds_per_day: Option<u64>,
    /// The environment variable holding this tenant's webhook secret (`whsec_...`); its jobs'
    /// webhooks are signed with it instead of MESHROOM_SVC_WEBHOOK_SECRET.
    pub webhook_secret_env: Option<String>,
}

/// The limits that apply to one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    /// Submits per minute per key (0: none).
    pub submits_per_minute: u32,
    /// Other requests per minute per key (0: none).
    pub reads_per_minute: u32,
    /// See `QuotaConfig`.
    pub max_active_jobs: u64,
    /// See `QuotaConfig`.
    pub max_images_per_job: u64,
    /// See `QuotaConfig`.
    pub max_stored_bytes: u64,
    /// See `QuotaConfig`.
    pub max_gpu_seconds_per_day: u64,
}

/// The limits of `tenant`: its overrides, else the defaults.
pub fn limits_of(
    rate: &RateLimitConfig,
    quota: &QuotaConfig,
    tenants: &BTreeMap<String, TenantConfig>,
    tenant: &str,
) -> TenantLimits {
    // Borrowed, not cloned: this runs on every API request.
    let own = tenants.get(tenant);
    TenantLimits {
        submits_per_minute: own
            .and_then(|o| o.submits_per_minute)
            .unwrap_or(rate.submits_per_minute),
        reads_per_minute: own.and_then(|o| o.reads_per_minute).unwrap_or(rate.reads_per_minute),
        max_active_jobs: own.and_then(|o| o.max_active_jobs).unwrap_or(quota.max_active_jobs),
        max_images_per_job: own
            .and_then(|o| o.max_images_per_job)
            .unwrap_or(quota.max_images_per_job),
        max_stored_bytes: own.and_then(|o| o.max_stored_bytes).unwrap_or(quota.max_stored_bytes),
        max_gpu_seconds_per_day: own
            .and_then(|o| o.max_gpu_seconds_per_day)
            .unwrap_or(quota.max_gpu_seconds_per_day),
    }
}

/// `[oidc]`: OAuth2 / OpenID Connect bearer tokens (JWTs) beside API keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The `iss` tokens must carry; empty: tokens are not accepted.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Where the signing keys are (a JWKS document), fetched under the egress rules.
    pub jwks_url: String,
    /// Or a PEM file with the one public key (instead of `jwks_url`).
    pub public_key_file: String,
    /// Signature algorithms accepted: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
    /// EdDSA. Never `none`, never HMAC (a public key is not a shared secret).
    pub algorithms: Vec<String>,
    /// The claim naming the tenant.
    pub tenant_claim: String,
    /// The claim naming the role (`read`, `submit` or `admin`).
    pub role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
    /// The JWKS is fetched again after this long (and at once for an unknown `kid`), seconds.
    pub jwks_refresh_secs: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: String::new(),
            public_key_file: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            tenant_claim: "tenant".into(),
            role_claim: "role".into(),
            leeway_secs: 30,
            jwks_refresh_secs: 3600,
        }
    }
}

impl OidcConfig {
    /// Whether bearer tokens are accepted.
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }

    /// The settings' problems, if tokens are on.
    pub fn problems(&self) -> Vec<String> {
        if !self.enabled() {
            return Vec::new();
        }
        let mut problems = Vec::new();
        if self.audience.is_empty() {
            problems.push("oidc.audience: required with oidc.issuer".to_string());
        }
        if self.jwks_url.is_empty() == self.public_key_file.is_empty() {
            problems.push("oidc: set one of jwks_url and public_key_file".to_string());
        }
        for alg in &self.algorithms {
            if ![
                "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            ]
            .contains(&alg.as_str())
            {
                problems.push(format!(
                    "oidc.algorithms: '{alg}' is not accepted (asymmetric signatures only: RS*, PS*, ES256, ES384, EdDSA)"
                ));
            }
        }
        if self.algorithms.is_empty() {
            problems.push("oidc.algorithms: at least one".to_string());
        }
        problems
    }
}
