//! The state every role shares, built from the config: storage, job records, queue, presets,
//! webhooks; and the upkeep every role runs (recovery, retention, the outbox sweep). The roles
//! themselves start in `crate::roles`, which wires this state to the worker and the HTTP API.

use crate::config::{Config, QueueKind, StorageKind, DEFAULT_AMQP_URL};
use crate::jobs::{Db, Job, Store, StoreError};
use crate::pipelines::{PipelineError, Pipelines};
use crate::queue::{amqp, Amqp, Queue, QueueError};
use crate::storage::{Storage, StorageError};
use crate::trace::{self, SpanKind};
use crate::webhook::Webhooks;
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod outbox;
mod upkeep;

/// Publishes that submits may leave under way at once; past that, submits wait for the broker.
const PUBLISHING: usize = 1024;

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Job records could not be loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A pipeline preset is invalid.
    #[error(transparent)]
    Pipelines(#[from] PipelineError),
    /// The job database could not be opened or migrated.
    #[error("cannot open the job database {0}: {1}")]
    Database(String, sqlx::Error),
    /// The listener could not be bound, or the data folder made.
    #[error("cannot use {0}: {1}")]
    Bind(String, std::io::Error),
    /// A setting that is unsafe or impossible for this role.
    #[error("{0}")]
    Refused(String),
}

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API and worker.
    AllInOne,
    /// API only.
    Serve,
    /// Worker only.
    Work,
}

/// Shared state of a process.
#[derive(Debug)]
pub struct App {
    /// Settings.
    pub config: Config,
    /// The bytes: input images, results, logs (local folder or S3).
    pub files: Storage,
    /// The job records (SQLite or PostgreSQL).
    pub jobs: Arc<Store>,
    /// API keys in the job database.
    pub keys: Arc<crate::tenants::Keys>,
    /// Bearer-token verifier, when `[oidc]` is set.
    pub tokens: Option<Arc<crate::tenants::tokens::Tokens>>,
    /// Jobs waiting for a worker.
    pub queue: Arc<Queue>,
    /// Presets.
    pub pipelines: Pipelines,
    /// Webhook sender.
    pub webhooks: Webhooks,
    /// Where outbound requests may go.
    pub egress: crate::egress::Egress,
    /// GPUs of this process's worker slots; empty means CPU only.
    pub gpus: Vec<u32>,
    /// Whether the API accepts jobs whose pipeline needs a GPU.
    accepts_gpu_jobs: bool,
    /// Whether this process serves the API and the console (not `work`).
    serves_api: bool,
    /// Cancel handles of the jobs running in this process.
    pub running: Arc<crate::worker::CancelHandles>,
    /// Cancelled when the process stops: running jobs are stopped and queued again.
    pub shutdown: CancellationToken,
    /// Prometheus metrics of this process.
    pub metrics: crate::metrics::Metrics,
    /// Job changes for the live event streams of this process.
    pub feed: crate::events::Feed,
    /// Jobs just published, to be marked so in the database.
    published: tokio::sync::mpsc::UnboundedSender<Uuid>,
    /// Permits of the publishes submits left to `outbox::publisher` (`publish_soon`).
    publishing: Arc<tokio::sync::Semaphore>,
    /// Jobs for `outbox::publisher`, each with its permit.
    to_publish: tokio::sync::mpsc::UnboundedSender<(Job, tokio::sync::OwnedSemaphorePermit)>,
    owner: String,
    /// Whether COLMAP jobs can be meshed, and with which Python (for `/ready`).
    mesher: String,
}

/// Opens (and migrates) the job database a role uses: MESHROOM_SVC_DATABASE_URL when set, else
/// for all-in-one (and the `keys` commands) `meshroom.db` in the data folder, where a write waits
/// up to `busy` for another process's.
pub async fn open_database(config: &Config, role: Role, busy: std::time::Duration) -> Result<Db, StartError> {
    let data_dir = &config.server.data_dir;
    let database_url = config.secrets.database_url.as_ref().map(ExposeSecret::expose_secret);
    match (database_url, role) {
        (Some(url), _) => Db::open(url, config.database.max_connections)
            .await
            .map_err(|e| StartError::Database(crate::jobs::db::redacted(url), e)),
        (None, Role::AllInOne) => {
            std::fs::create_dir_all(data_dir).map_err(|e| StartError::Bind(data_dir.display().to_string(), e))?;
            let path = data_dir.join("meshroom.db");
            Db::open_file(&path, config.database.max_connections, busy)
                .await
                .map_err(|e| StartError::Database(path.display().to_string(), e))
        }
        (None, _) => Err(StartError::Refused(
            "set MESHROOM_SVC_DATABASE_URL (postgres://user:password@host:5432/db): every serve and \
             work process must share one job database"
                .into(),
        )),
    }
}

impl App {
    /// Opens storage, presets and the queue for a role.
    pub async fn open(mut config: Config, gpus: Vec<u32>, role: Role) -> Result<Arc<App>, StartError> {
        let data_dir = &config.server.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|e| StartError::Bind(data_dir.display().to_string(), e))?;
        let owner = std::fs::canonicalize(data_dir)
            .unwrap_or_else(|_| data_dir.clone())
            .display()
            .to_string();
        let storage = match config.storage.kind {
            StorageKind::Local => Storage::local(config.server.data_dir.join("store"))?,
            StorageKind::S3 => Storage::s3(&config.storage, &config.secrets)?,
        };
        let db = open_database(&config, role, crate::jobs::db::BUSY_TIMEOUT).await?;
        log::info!("job database: {}", db.kind());
        let pipelines = Pipelines::load(&config.engine.pipelines_dir)?;
        let default = &config.server.default_pipeline;
        if !default.is_empty() && pipelines.get(default).is_none() {
            let known = pipelines.names().join(", ");
            return Err(StartError::Refused(format!(
                "server.default_pipeline: no preset '{default}' ({known})"
            )));
        }
        let mesher = match role {
            Role::Serve => "not used: serve runs no engine".to_string(),
            _ => {
                let (python, mesher) = crate::engine::colmap::resolve_mesher(&config.engine.python).await;
                config.engine.python = python;
                mesher
            }
        };
        let metrics = crate::metrics::Metrics::for_tenants(config.tenants.keys());
        let egress = crate::egress::Egress::new(config.security.allowed_networks.nets());
        let webhooks = Webhooks::new(
            &config.webhook,
            config.secrets.webhook_secret.as_ref(),
            &config.secrets.tenant_webhook_secrets,
            metrics.webhook_attempts.clone(),
            &egress,
        );
        let shutdown = CancellationToken::new();
        let queue = match config.queue.kind {
            QueueKind::Local => Queue::local(),
            QueueKind::Rabbitmq => {
                let topology = amqp::Topology {
                    prefix: config.queue.name.clone(),
                    webhook_delays: config.webhook.schedule_secs.clone(),
                    // Longer than any job may run, with an hour for downloads and uploads.
                    consumer_timeout: Duration::from_secs(config.engine.timeout_secs + 3600),
                };
                let consume = amqp::Consume {
                    slots: if role == Role::Serve {
                        0
                    } else {
                        gpus.len().max(1) as u16
                    },
                    gpu: !gpus.is_empty(),
                    webhooks: true,
                };
                let url = config
                    .secrets
                    .amqp_url
                    .as_ref()
                    .map_or(DEFAULT_AMQP_URL, ExposeSecret::expose_secret)
                    .to_string();
                Queue::Rabbitmq(Amqp::start(url, topology, consume, shutdown.clone()))
            }
        };
        let keys = Arc::new(crate::tenants::Keys::new(db.clone()));
        let tokens = match config.oidc.enabled() {
            false => None,
            true => {
                // The JWKS is fetched under the egress rules, like every outbound request.
                let client = egress.client(2).build().expect("static client settings");
                let tokens = crate::tenants::tokens::Tokens::new(&config.oidc, client).map_err(StartError::Refused)?;
                Some(Arc::new(tokens))
            }
        };
        let store = Arc::new(Store::sharing(db, config.scheduling.queued_per_tenant));
        let (published, marks) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(outbox::mark_published(store.clone(), marks));
        let feed = crate::events::Feed::start(store.clone(), shutdown.clone());
        let (to_publish, publishes) = tokio::sync::mpsc::unbounded_channel();
        let app = Arc::new(App {
            feed,
            jobs: store,
            keys,
            tokens,
            published,
            publishing: Arc::new(tokio::sync::Semaphore::new(PUBLISHING)),
            to_publish,
            files: storage,
            queue: Arc::new(queue),
            pipelines,
            webhooks,
            egress,
            // Behind `serve`, GPU jobs wait in their own queue for `work --gpu N` nodes.
            accepts_gpu_jobs: role == Role::Serve || !gpus.is_empty(),
            serves_api: role != Role::Work,
            gpus,
            running: Default::default(),
            shutdown,
            metrics,
            owner,
            mesher,
            config,
        });
        // Started here, on the runtime that opened the queue, not on an HTTP worker's runtime
        // (which ends with its worker when the server stops).
        tokio::spawn(outbox::publisher(Arc::downgrade(&app), publishes));
        Ok(app)
    }

    /// Folder for a job's working files.
    pub fn work_dir(&self, id: Uuid) -> PathBuf {
        self.config.server.data_dir.join("work").join(id.to_string())
    }

    /// Whether COLMAP's points can be meshed here: `ok: ...`, `off: ...` or `warning: ...`.
    pub fn mesher(&self) -> &str {
        &self.mesher
    }

    /// This worker's owner marker: its data folder, as an absolute path.
    pub fn owner(&self) -> String {
        self.owner.clone()
    }

    /// Folder for uploads in progress.
    pub fn tmp_dir(&self) -> PathBuf {
        self.config.server.data_dir.join("tmp")
    }

    /// True when this process serves the API and the web console.
    pub fn serves_console(&self) -> bool {
        self.serves_api
    }

    /// True when this deployment can run GPU pipelines.
    pub fn gpu_available(&self) -> bool {
        self.accepts_gpu_jobs
    }

    /// The preset of jobs that name none.
    pub fn default_pipeline(&self) -> &str {
        match self.config.server.default_pipeline.as_str() {
            "" => Pipelines::default_name(self.accepts_gpu_jobs),
            name => name,
        }
    }

    /// Queues a job, to the GPU or CPU queue as its pipeline needs.
    pub async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        let gpu = self.pipelines.get(&job.pipeline).is_some_and(|p| p.gpu);
        // The message carries the publish's span, under the job's trace; the worker's spans go
        // under it.
        let parent = trace::parent(job.traceparent.as_deref());
        let cx = trace::start("publish", SpanKind::Producer, &parent, trace::job(job));
        let traceparent = trace::traceparent(&cx).or_else(|| job.traceparent.clone());
        let pushed = self.queue.push(job.id, gpu, job.priority, traceparent.as_deref()).await;
        trace::end(&cx, pushed.as_ref().err().map(|e| e.to_string()).as_deref(), None);
        pushed
    }

    /// Queues a stored job and records that its message is out. When the queue refuses, the job
    /// stays stored, and the outbox sweep (`outbox`) publishes it once the queue is back.
    pub async fn publish(&self, job: &Job) -> Result<(), QueueError> {
        self.enqueue(job).await?;
        // Marked off the answer's path, in batches (see `outbox::mark_published`).
        let _ = self.published.send(job.id);
        Ok(())
    }

    /// Publishes a just-stored job in the background, so that its submit answers without waiting
    /// for the broker's confirm. The answer promises no more with the confirm than without it:
    /// the committed row is what makes the job exist, and a job whose message fails (or whose
    /// process dies first) is published by the outbox sweep. Waits only when `PUBLISHING`
    /// publishes are already under way, that is when the broker is slow.
    pub async fn publish_soon(&self, job: Job) {
        let Ok(permit) = self.publishing.clone().acquire_owned().await else {
            return;
        };
        let _ = self.to_publish.send((job, permit));
    }

    /// Waits, at most `limit`, for the publishes `publish_soon` left running: a process that
    /// stops leaves none of its jobs to the outbox sweep's delay.
    pub async fn publishes_done(&self, limit: Duration) {
        let all = self.publishing.acquire_many(PUBLISHING as u32);
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// Starts the delivery of a job's pending webhook: its first attempt goes in the queue.
    pub async fn start_webhook(&self, id: Uuid) -> Result<(), QueueError> {
        self.queue.schedule_webhook(id, self.webhooks.first_delay()).await
    }
}
