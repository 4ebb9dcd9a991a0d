//! Configuration: `meshroom.toml`, `MESHROOM_SVC_<SECTION>_<KEY>` overrides, and secrets from the
//! environment only. Every problem is collected so that start-up reports them all at once.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// Secrets, read from the environment only and never printed.
    #[serde(skip)]
    pub secrets: Secrets,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the API binds.
    pub listen: String,
    /// Folder for job state, stored files and working folders.
    pub data_dir: PathBuf,
    /// Largest JSON request body, bytes.
    pub max_json_bytes: u64,
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most images in one job.
    pub max_images: u64,
    /// Largest single image, bytes.
    pub max_image_bytes: u64,
    /// Largest sum of a job's images, bytes.
    pub max_total_bytes: u64,
}

/// `[engine]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Path of `meshroom_batch`; empty means `$MESHROOM_BATCH`, then `PATH`.
    pub meshroom_batch: String,
    /// Folder of pipeline presets (`*.toml`); the built-in presets are used when it is missing.
    pub pipelines_dir: PathBuf,
    /// Default and largest per-job timeout, seconds.
    pub timeout_secs: u64,
    /// Time between SIGTERM and SIGKILL when a run is stopped, seconds.
    pub kill_grace_secs: u64,
    /// Bytes of the engine log kept as the "tail" in errors and `GET /jobs/{id}/log`.
    pub log_tail_bytes: u64,
}

/// `[worker]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Images downloaded at once per job.
    pub download_concurrency: u64,
    /// Timeout of one image download, seconds.
    pub download_timeout_secs: u64,
    /// Keep the working folder of failed jobs for debugging.
    pub keep_failed_workdir: bool,
    /// Finished jobs and their files are deleted this many seconds after they end (0 = never).
    pub retention_secs: u64,
}

/// `[webhook]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Delay before each attempt, seconds; its length is the number of attempts.
    pub schedule_secs: Vec<u64>,
    /// Timeout of one attempt, seconds.
    pub timeout_secs: u64,
}

/// Secrets from the environment (`MESHROOM_SVC_API_KEYS`, `MESHROOM_SVC_WEBHOOK_SECRET`).
#[derive(Clone, Default, PartialEq)]
pub struct Secrets {
    /// Accepted `X-API-Key` values; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Standard Webhooks signing secret (`whsec_...`).
    pub webhook_secret: Option<String>,
}

impl std::fmt::Debug for Secrets {
    // Never print secret values, only whether they are set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("api_keys", &format!("{} key(s)", self.api_keys.len()))
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "set"))
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "./data".into(),
            max_json_bytes: 1 << 20,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_images: 500,
            max_image_bytes: 100 << 20,
            max_total_bytes: 10 << 30,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            meshroom_batch: String::new(),
            pipelines_dir: "pipelines".into(),
            timeout_secs: 24 * 3600,
            kill_grace_secs: 10,
            log_tail_bytes: 16 << 10,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            download_concurrency: 8,
            download_timeout_secs: 300,
            keep_failed_workdir: false,
            retention_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        // The Svix schedule from the Standard Webhooks spec: about 27.6 hours in 8 tries.
        Self {
            schedule_secs: vec![0, 5, 300, 1800, 7200, 18000, 36000, 36000],
            timeout_secs: 15,
        }
    }
}

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
        config.secrets = Secrets::from_env(env);
        config.check(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
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
        if self.webhook.schedule_secs.is_empty() {
            problems.push("webhook.schedule_secs: needs at least one attempt".into());
        }
        if let Some(secret) = &self.secrets.webhook_secret {
            if crate::webhook::decode_secret(secret).is_err() {
                problems.push("MESHROOM_SVC_WEBHOOK_SECRET: expected whsec_ followed by base64".into());
            }
        }
    }
}

impl Secrets {
    fn from_env(env: &[(String, String)]) -> Secrets {
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Secrets {
            api_keys: get("MESHROOM_SVC_API_KEYS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            webhook_secret: get("MESHROOM_SVC_WEBHOOK_SECRET").filter(|s| !s.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_parts("", &[]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn sample_config_matches_defaults() {
        // meshroom.toml documents every key with its default: loading it must change nothing.
        let text = include_str!("../meshroom.toml");
        assert_eq!(Config::from_parts(text, &[]).unwrap(), Config::default());
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::from_parts(
            "[limits]\nmax_images = 10\n",
            &env(&[
                ("MESHROOM_SVC_LIMITS_MAX_IMAGES", "20"),
                ("MESHROOM_SVC_WEBHOOK_SCHEDULE_SECS", "0,1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.max_images, 20);
        assert_eq!(c.webhook.schedule_secs, vec![0, 1]);
    }

    #[test]
    fn all_problems_are_listed_at_once() {
        let err = Config::from_parts(
            "[server]\nlisten = \"nowhere\"\nbogus = 1\n[limits]\nmax_images = \"many\"\n[nope]\n",
            &env(&[("MESHROOM_SVC_WORKER_KEEP_FAILED_WORKDIR", "maybe")]),
        )
        .unwrap_err();
        let all = err.0.join("\n");
        for needle in [
            "server.bogus",
            "limits.max_images",
            "[nope]",
            "MESHROOM_SVC_WORKER_KEEP_FAILED_WORKDIR",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[test]
    fn secrets_come_from_env_and_are_not_printed() {
        let c = Config::from_parts(
            "",
            &env(&[
                ("MESHROOM_SVC_API_KEYS", "k1, k2,"),
                ("MESHROOM_SVC_WEBHOOK_SECRET", "whsec_c2VjcmV0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.secrets.api_keys, vec!["k1", "k2"]);
        let printed = format!("{c:?}");
        assert!(!printed.contains("k1") && !printed.contains("c2VjcmV0"), "{printed}");
    }
}
