//! Configuration: `meshroom.toml`, `MESHROOM_SVC_<SECTION>_<KEY>` overrides, and secrets from the
//! environment only. Every problem is collected so that start-up reports them all at once.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

mod overrides;

/// All settings; sections mirror `meshroom.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener and local folders.
    pub server: ServerConfig,
    /// Input limits enforced at submit.
    pub limits: LimitsConfig,
    /// How the reconstruction engine is run.
    pub engine: EngineConfig,
    /// Worker behaviour: downloads, clean-up, retention.
    pub worker: WorkerConfig,
    /// Webhook delivery.
    pub webhook: WebhookConfig,
    /// Job queue backend.
    pub queue: QueueConfig,
    /// Storage backend.
    pub storage: StorageConfig,
    /// Job state database.
    pub database: DatabaseConfig,
    /// Outbound request policy.
    pub security: SecurityConfig,
    /// Request rates per key.
    pub rate_limit: RateLimitConfig,
    /// Per-tenant quotas.
    pub quota: QuotaConfig,
    /// Sharing workers between tenants.
    pub scheduling: SchedulingConfig,
    /// Bearer tokens from an OpenID Connect provider.
    pub oidc: OidcConfig,
    /// Per-tenant overrides, by tenant name (`[tenants.acme]`).
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Secrets, read from the environment only and never printed.
    #[serde(skip)]
    pub secrets: Secrets,
}

mod sections;
mod tenancy;
mod values;
pub use sections::*;
pub use tenancy::*;
pub use values::{AllowedNetworks, WebhookSecret};

/// Secrets from the environment (`MESHROOM_SVC_API_KEYS`, `MESHROOM_SVC_WEBHOOK_SECRET`,
/// `MESHROOM_SVC_AMQP_URL`, `MESHROOM_SVC_DATABASE_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
// Debug prints `[REDACTED]` for each secret (secrecy); values are read with `expose_secret()`.
#[derive(Clone, Default, Debug)]
pub struct Secrets {
    /// Accepted `X-API-Key` values; empty means no authentication.
    pub api_keys: Vec<SecretString>,
    /// Standard Webhooks signing secret (`whsec_...`), checked when read.
    pub webhook_secret: Option<WebhookSecret>,
    /// RabbitMQ URL with credentials, e.g. `amqp://user:pass@host:5672/%2f`.
    pub amqp_url: Option<SecretString>,
    /// Job state database, `postgres://user:pass@host/db` or `sqlite://PATH`.
    pub database_url: Option<SecretString>,
    /// S3 access key id (an identifier, not a secret).
    pub aws_access_key_id: Option<String>,
    /// S3 secret key.
    pub aws_secret_access_key: Option<SecretString>,
    /// Webhook secrets of tenants, from the variables their `webhook_secret_env` names.
    pub tenant_webhook_secrets: BTreeMap<String, WebhookSecret>,
}

impl PartialEq for Secrets {
    // For tests comparing whole configurations; secrecy's types do not compare themselves.
    fn eq(&self, other: &Self) -> bool {
        fn shown(s: &Option<SecretString>) -> Option<&str> {
            s.as_ref().map(ExposeSecret::expose_secret)
        }
        let keys = |s: &Secrets| {
            s.api_keys
                .iter()
                .map(|k| k.expose_secret().to_string())
                .collect::<Vec<_>>()
        };
        keys(self) == keys(other)
            && self.webhook_secret == other.webhook_secret
            && shown(&self.amqp_url) == shown(&other.amqp_url)
            && shown(&self.database_url) == shown(&other.database_url)
            && self.aws_access_key_id == other.aws_access_key_id
            && shown(&self.aws_secret_access_key) == shown(&other.aws_secret_access_key)
            && self.tenant_webhook_secrets == other.tenant_webhook_secrets
    }
}

/// Used when `MESHROOM_SVC_AMQP_URL` is unset: a broker on this machine with RabbitMQ's default user.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Start-up configuration problems, all of them.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Loads `path` (or the built-in defaults when `None`), applies environment overrides and checks it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", p.display())]))?,
            None => String::new(),
        };
        Self::from_parts(&text, &env)
    }

    /// Builds a config from TOML text and environment pairs; pure, for tests.
    pub fn from_parts(text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e| ConfigError(vec![format!("meshroom.toml: {e}")]))?;
        let mut problems = Vec::new();
        let merged = overrides::merge(table, env, &mut problems);
        let mut config = match Config::deserialize(toml::Value::Table(merged)) {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string());
                return Err(ConfigError(problems));
            }
        };
        config.secrets = Secrets::from_env(env, &config.tenants, &mut problems);
        config.check(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The rate limits and quotas of a tenant: its `[tenants.<name>]` values, else the defaults.
    pub fn limits_of(&self, tenant: &str) -> TenantLimits {
        limits_of(&self.rate_limit, &self.quota, &self.tenants, tenant)
    }

    /// Checks a config again after command-line flags changed it.
    pub fn checked(self) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        self.check(&mut problems);
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The listen address, checked at load.
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("checked at load")
    }

    fn check(&self, problems: &mut Vec<String>) {
        if self.server.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!("server.listen: '{}' is not ADDR:PORT", self.server.listen));
        }
        let positive = [
            ("server.max_json_bytes", self.server.max_json_bytes),
            ("limits.max_images", self.limits.max_images),
            ("limits.max_image_bytes", self.limits.max_image_bytes),
            ("limits.max_total_bytes", self.limits.max_total_bytes),
            ("limits.max_image_pixels", self.limits.max_image_pixels),
            ("limits.max_metadata_bytes", self.limits.max_metadata_bytes),
            ("server.body_timeout_secs", self.server.body_timeout_secs),
            ("engine.timeout_secs", self.engine.timeout_secs),
            ("worker.download_concurrency", self.worker.download_concurrency),
            ("worker.download_timeout_secs", self.worker.download_timeout_secs),
            ("webhook.timeout_secs", self.webhook.timeout_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(format!("{key}: must be greater than 0"));
            }
        }
        if self.limits.max_image_bytes > self.limits.max_total_bytes {
            problems
                .push("limits.max_image_bytes: larger than limits.max_total_bytes, which caps a job's images".into());
        }
        if self.storage.kind == StorageKind::S3 {
            if self.storage.bucket.is_empty() {
                problems.push("storage.bucket: required when storage.kind = \"s3\"".into());
            }
            if self.secrets.aws_access_key_id.is_none() || self.secrets.aws_secret_access_key.is_none() {
                problems
                    .push("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: required when storage.kind = \"s3\"".into());
            }
        }
        if !self.storage.prefix.is_empty() && !self.storage.prefix.ends_with('/') {
            problems.push("storage.prefix: must end with '/'".into());
        }
        if !(1..=604_800).contains(&self.storage.presign_expiry_secs) {
            problems.push("storage.presign_expiry_secs: must be 1 to 604800 (7 days, the S3 maximum)".into());
        }
        if self.queue.lease_secs < 6 {
            problems.push("queue.lease_secs: must be at least 6 (the lease is refreshed every 3 s)".into());
        }
        if self.queue.max_deliveries == 0 {
            problems.push("queue.max_deliveries: must be greater than 0".into());
        }
        if let Some(url) = self.secrets.amqp_url.as_ref().map(ExposeSecret::expose_secret) {
            if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
                problems.push("MESHROOM_SVC_AMQP_URL: expected amqp://user:password@host:port/vhost".into());
            }
        }
        for entry in &self.engine.env {
            let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                problems.push(format!(
                    "engine.env: '{name}' is not a variable name (give NAME or NAME=VALUE)"
                ));
            }
        }
        if let Some(url) = self.secrets.database_url.as_ref().map(ExposeSecret::expose_secret) {
            let known = ["postgres://", "postgresql://", "sqlite:"];
            if !known.iter().any(|k| url.starts_with(k)) {
                problems.push(
                    "MESHROOM_SVC_DATABASE_URL: expected postgres://user:password@host:port/db or sqlite://PATH".into(),
                );
            }
        }
        if self.server.http_workers > 1024 {
            problems.push("server.http_workers: must be 0 (one per core) to 1024".into());
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections: must be greater than 0".into());
        }
        problems.extend(self.oidc.problems());
        for name in self.tenants.keys() {
            if let Err(e) = crate::tenants::check_name(name) {
                problems.push(format!("[tenants.{name}]: {e}"));
            }
        }
        if self.webhook.schedule_secs.is_empty() {
            problems.push("webhook.schedule_secs: needs at least one attempt".into());
        }
    }
}

impl Secrets {
    /// Reads the secrets; a malformed one is reported in `problems` (without its value).
    fn from_env(
        env: &[(String, String)],
        tenants: &BTreeMap<String, TenantConfig>,
        problems: &mut Vec<String>,
    ) -> Secrets {
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let secret = |name: &str| get(name).filter(|s| !s.is_empty()).map(SecretString::from);
        Secrets {
            api_keys: get("MESHROOM_SVC_API_KEYS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(SecretString::from)
                        .collect()
                })
                .unwrap_or_default(),
            webhook_secret: get("MESHROOM_SVC_WEBHOOK_SECRET")
                .filter(|s| !s.is_empty())
                .and_then(|s| WebhookSecret::parse(&s).map_err(|e| problems.push(e)).ok()),
            amqp_url: secret("MESHROOM_SVC_AMQP_URL"),
            database_url: secret("MESHROOM_SVC_DATABASE_URL"),
            aws_access_key_id: get("AWS_ACCESS_KEY_ID").filter(|s| !s.is_empty()),
            aws_secret_access_key: secret("AWS_SECRET_ACCESS_KEY"),
            tenant_webhook_secrets: tenants
                .iter()
                .filter_map(|(name, t)| Some((name, t.webhook_secret_env.as_ref()?)))
                .filter_map(|(name, var)| match get(var).filter(|s| !s.is_empty()) {
                    None => {
                        problems.push(format!("tenants.{name}.webhook_secret_env: {var} is not set"));
                        None
                    }
                    Some(s) => WebhookSecret::parse(&s)
                        .map_err(|e| problems.push(format!("{var}: {e}")))
                        .ok()
                        .map(|secret| (name.clone(), secret)),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
