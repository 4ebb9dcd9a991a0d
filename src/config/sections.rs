//! The sections of `meshroom.toml`, with their defaults.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Preset for jobs that name none; empty: `default` where GPUs are available, else `draft`.
    pub default_pipeline: String,
    /// A request body that sends nothing for this long is answered 408 and dropped, seconds.
    pub body_timeout_secs: u64,
    /// Whether `/metrics` answers without an API key.
    pub metrics_public: bool,
    /// Threads answering HTTP requests; 0: one per core.
    pub http_workers: u32,
}

impl ServerConfig {
    /// The HTTP threads to start, besides the main thread (which publishes accepted jobs to the
    /// broker and runs the background tasks). One per core by default: on 2 cores, one thread
    /// fewer cut the tail of accepts that publish but tripled that of reads (BENCHMARKS.md,
    /// session 16), so the trade is the operator's.
    pub fn workers(&self) -> usize {
        match self.http_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        }
    }
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
    /// Most pixels in one image (width × height from its header), against decompression bombs.
    pub max_image_pixels: u64,
    /// Largest `metadata` of a job, bytes of JSON (it is returned with every read of the job).
    pub max_metadata_bytes: u64,
}

/// `[engine]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Path of `meshroom_batch`; empty means `$MESHROOM_BATCH`, then `PATH`.
    pub meshroom_batch: String,
    /// Path of `colmap`; empty means `$COLMAP`, then `PATH`.
    pub colmap: String,
    /// Python with Open3D, to mesh COLMAP's sparse points (Poisson); empty skips meshing.
    pub python: String,
    /// Fewest images a COLMAP model must register for the job to succeed.
    pub min_registered_images: u64,
    /// Folder of pipeline presets (`*.toml`); the built-in presets are used when it is missing.
    pub pipelines_dir: PathBuf,
    /// Default and largest per-job timeout, seconds.
    pub timeout_secs: u64,
    /// Time between SIGTERM and SIGKILL when a run is stopped, seconds.
    pub kill_grace_secs: u64,
    /// Bytes of the engine log kept as the "tail" in errors and `GET /jobs/{id}/log`.
    pub log_tail_bytes: u64,
    /// Environment of engine runs beyond the allow-list: `NAME=VALUE`, or `NAME` to pass the
    /// service's own value on.
    pub env: Vec<String>,
}

/// `[worker]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Images fetched at once per job (from URLs and from storage).
    pub download_concurrency: u64,
    /// Timeout of one image download, seconds.
    pub download_timeout_secs: u64,
    /// Keep the working folder of failed jobs for debugging.
    pub keep_failed_workdir: bool,
    /// Retries of a transient download or storage failure before the job fails.
    pub retries: u64,
    /// Delay before the first retry, milliseconds; it doubles at each retry.
    pub retry_delay_ms: u64,
    /// Finished jobs and their files are deleted this many seconds after they end (0 = never).
    pub retention_secs: u64,
    /// A worker takes no new job while its data folder has less free space than this, bytes (0 = no check).
    pub min_free_bytes: u64,
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

/// `[security]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Networks (CIDR or address) that image and callback URLs may reach besides public ones.
    pub allowed_networks: super::AllowedNetworks,
}

/// Queue backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// In-process, rebuilt from job records at start-up (all-in-one only).
    Local,
    /// RabbitMQ, shared by any number of `serve` and `work` processes.
    Rabbitmq,
}

/// `[queue]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `local` or `rabbitmq`.
    pub kind: QueueKind,
    /// Prefix of every queue and exchange name.
    pub name: String,
    /// Times a job may be taken by a worker before it is dead-lettered as a poison job.
    pub max_deliveries: u64,
    /// The broker's node-wide `consumer_timeout` (RabbitMQ before 3.12 has no per-queue value).
    pub broker_consumer_timeout_secs: u64,
    /// A running job's lease: another worker takes over a job whose worker fell silent this long.
    pub lease_secs: u64,
}

/// `[database]`: where job state lives. The URL is a secret (`MESHROOM_SVC_DATABASE_URL`); without
/// it, all-in-one keeps a SQLite file in `server.data_dir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connections this process keeps open to the database, at most.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { max_connections: 16 }
    }
}

/// Storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// Files under `server.data_dir/store`.
    Local,
    /// An S3-compatible bucket (AWS, MinIO, Garage).
    S3,
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `local` or `s3`.
    pub kind: StorageKind,
    /// S3 bucket.
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `meshroom/` (lets services share a bucket).
    pub prefix: String,
    /// Custom S3 endpoint (MinIO, Garage); empty means AWS.
    pub endpoint: String,
    /// S3 region.
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO and Garage expect.
    pub path_style: bool,
    /// Lifetime of presigned download links, seconds.
    pub presign_expiry_secs: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Local,
            name: "meshroom".into(),
            max_deliveries: 3,
            broker_consumer_timeout_secs: 1800,
            lease_secs: 15,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            kind: StorageKind::Local,
            bucket: String::new(),
            prefix: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            path_style: true,
            presign_expiry_secs: 3600,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "./data".into(),
            max_json_bytes: 1 << 20,
            default_pipeline: String::new(),
            body_timeout_secs: 60,
            metrics_public: true,
            http_workers: 0,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_images: 500,
            max_image_bytes: 100 << 20,
            max_total_bytes: 10 << 30,
            max_image_pixels: 250_000_000,
            max_metadata_bytes: 16 << 10,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            meshroom_batch: String::new(),
            colmap: String::new(),
            python: "python3".into(),
            min_registered_images: 3,
            pipelines_dir: "pipelines".into(),
            timeout_secs: 24 * 3600,
            kill_grace_secs: 10,
            log_tail_bytes: 16 << 10,
            env: Vec::new(),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            download_concurrency: 8,
            download_timeout_secs: 300,
            keep_failed_workdir: false,
            retries: 3,
            retry_delay_ms: 1000,
            retention_secs: 7 * 24 * 3600,
            min_free_bytes: 4 << 30,
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
