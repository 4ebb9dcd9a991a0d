//! What a worker slot works with, handed over by `crate::roles` at start-up. The worker never
//! sees the whole process state (`crate::app::App`) nor the whole config: only the parts a job's
//! run reads or writes, so what it can touch is written here.

use super::download::Fetcher;
use crate::config::{EngineConfig, WorkerConfig};
use crate::jobs::Store;
use crate::metrics::Metrics;
use crate::pipelines::Pipelines;
use crate::queue::Queue;
use crate::storage::Storage;
use crate::webhook::Webhooks;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Cancel handles of the jobs running in this process, by job id; the API cancels through them.
pub type CancelHandles = Mutex<HashMap<Uuid, CancellationToken>>;

/// The shared parts a worker uses.
#[derive(Debug)]
pub struct Context {
    /// Job records: claims, leases, progress and outcomes.
    pub jobs: Arc<Store>,
    /// Where jobs are taken from and webhooks scheduled.
    pub queue: Arc<Queue>,
    /// Where results and engine logs go.
    pub files: Storage,
    /// Builds the webhook body an outcome leaves pending.
    pub webhooks: Webhooks,
    /// The presets jobs name.
    pub pipelines: Pipelines,
    /// Stage durations, finished jobs, disk state.
    pub metrics: Metrics,
    /// Puts a job's images in its working folder.
    pub fetcher: Fetcher,
    /// Cancel handles of the jobs running here.
    pub running: Arc<CancelHandles>,
    /// Cancelled when the process stops: running jobs are stopped and queued again.
    pub shutdown: CancellationToken,
    /// The settings a worker reads.
    pub settings: Settings,
}

/// The settings a worker reads, out of the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[engine]`: binaries, timeouts, log tail.
    pub engine: EngineConfig,
    /// `[worker]`: retries, disk floor, failed-folder policy.
    pub worker: WorkerConfig,
    /// `server.data_dir`: working folders live in `work/` below it.
    pub data_dir: PathBuf,
    /// `queue.lease_secs`: how long a claim holds without a heartbeat.
    pub lease: Duration,
    /// `queue.max_deliveries`: lost attempts before a job is poison.
    pub max_deliveries: u32,
    /// This worker's owner marker: its data folder, as an absolute path. Engine processes carry
    /// it, so a restarted worker finds the ones its predecessor left.
    pub owner: String,
    /// GPUs of this process's slots; empty means one CPU slot.
    pub gpus: Vec<u32>,
}

impl Context {
    /// Folder for a job's working files.
    pub fn work_dir(&self, id: Uuid) -> PathBuf {
        self.settings.data_dir.join("work").join(id.to_string())
    }
}
