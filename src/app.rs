//! The state every role shares, and how a process starts: open storage, recover jobs, start the
//! worker slots and the HTTP server.

use crate::config::Config;
use crate::jobs::{DeliveryState, Status, Store, StoreError};
use crate::pipelines::{PipelineError, Pipelines};
use crate::queue::Queue;
use crate::storage::{Storage, StorageError};
use crate::webhook::Webhooks;
use crate::{http, worker};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

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
    /// The listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// A setting that is unsafe for this role.
    #[error("{0}")]
    Refused(String),
}

/// Shared state of a process.
#[derive(Debug)]
pub struct App {
    /// Settings.
    pub config: Config,
    /// Files and job records.
    pub storage: Storage,
    /// Job records.
    pub store: Arc<Store>,
    /// Jobs waiting for a worker.
    pub queue: Arc<Queue>,
    /// Presets.
    pub pipelines: Pipelines,
    /// Webhook sender.
    pub webhooks: Webhooks,
    /// HTTP client for image downloads.
    pub downloads: reqwest::Client,
    /// GPUs of this process's worker slots; empty means CPU only.
    pub gpus: Vec<u32>,
    /// Cancel handles of the jobs running in this process.
    pub running: worker::Running,
    /// Cancelled when the process stops: running jobs are stopped and queued again.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl App {
    /// Opens storage and job records.
    pub async fn open(config: Config, gpus: Vec<u32>) -> Result<Arc<App>, StartError> {
        let storage = Storage::local(config.server.data_dir.join("store"))?;
        let store = Arc::new(Store::open(storage.clone()).await?);
        let pipelines = Pipelines::load(&config.engine.pipelines_dir)?;
        let webhooks = Webhooks::new(&config.webhook, config.secrets.webhook_secret.as_deref());
        Ok(Arc::new(App {
            storage,
            store,
            queue: Arc::new(Queue::local()),
            pipelines,
            webhooks,
            downloads: worker::download::client(Duration::from_secs(config.worker.download_timeout_secs)),
            gpus,
            running: Default::default(),
            shutdown: Default::default(),
            config,
        }))
    }

    /// Folder for a job's working files.
    pub fn work_dir(&self, id: Uuid) -> PathBuf {
        self.config.server.data_dir.join("work").join(id.to_string())
    }

    /// Folder for uploads in progress.
    pub fn tmp_dir(&self) -> PathBuf {
        self.config.server.data_dir.join("tmp")
    }

    /// True when this deployment can run GPU pipelines.
    pub fn gpu_available(&self) -> bool {
        !self.gpus.is_empty()
    }

    /// Puts jobs that were enqueued or processing when the process stopped back in the queue,
    /// oldest first, and resumes pending webhook deliveries.
    pub async fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
        let _ = tokio::fs::remove_dir_all(self.tmp_dir()).await; // half-received uploads
        for job in self.store.all().await {
            match job.status {
                Status::Enqueued => self.queue.push(job.id),
                Status::Processing => {
                    log::warn!("job {}: was processing when the service stopped; queued again", job.id);
                    self.store
                        .update(job.id, |j| {
                            j.status = Status::Enqueued;
                            j.stage = None;
                        })
                        .await?;
                    self.queue.push(job.id);
                }
                _ => {}
            }
            if job.webhook.is_some_and(|w| w.state == DeliveryState::Pending) {
                self.webhooks.spawn(self.store.clone(), job.id);
            }
        }
        Ok(())
    }

    /// Deletes finished jobs older than the retention, now and then.
    pub fn spawn_retention(self: &Arc<Self>) {
        let retention = self.config.worker.retention_secs;
        if retention == 0 {
            return;
        }
        let app = self.clone();
        let every = Duration::from_secs((retention / 10).clamp(1, 600));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let cutoff = chrono::Utc::now() - chrono::Duration::seconds(retention as i64);
                for job in app.store.all().await {
                    let pending = job.webhook.as_ref().is_some_and(|w| w.state == DeliveryState::Pending);
                    if job.finished_at.is_some_and(|t| t < cutoff) && job.status.is_final() && !pending {
                        log::info!("job {}: deleted after the retention period", job.id);
                        if let Err(e) = app.store.remove(job.id).await {
                            log::error!("job {}: retention delete failed: {e}", job.id);
                        }
                        let _ = tokio::fs::remove_dir_all(app.work_dir(job.id)).await;
                    }
                }
            }
        });
    }
}

/// A running all-in-one process: the API and the worker slots.
pub struct AllInOne {
    /// The shared state.
    pub app: Arc<App>,
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    /// The HTTP server; it stops on SIGINT or SIGTERM.
    pub server: actix_web::dev::Server,
    /// The worker slots.
    pub workers: Vec<tokio::task::JoinHandle<()>>,
}

impl AllInOne {
    /// Serves until the server stops (a signal), then stops running jobs, queuing them again.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        log::info!("stopping: running jobs go back to the queue");
        self.app.shutdown.cancel();
        for w in self.workers {
            let _ = w.await;
        }
        served
    }
}

/// Starts everything in one process, on the embedded queue and local storage.
pub async fn start_all_in_one(config: Config, gpus: Vec<u32>) -> Result<AllInOne, StartError> {
    let listen = config.listen_addr();
    if !listen.ip().is_loopback() && config.secrets.api_keys.is_empty() {
        return Err(StartError::Refused(format!(
            "refusing to listen on {listen} without an API key: set MESHROOM_SVC_API_KEYS or listen on 127.0.0.1"
        )));
    }
    let listener = TcpListener::bind(listen).map_err(|e| StartError::Bind(listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(listen.to_string(), e))?;
    let app = App::open(config, gpus).await?;
    if crate::meshroom::find_binary(&app.config.engine.meshroom_batch).is_none() {
        log::warn!("meshroom_batch not found: jobs will fail with engine_not_found until it is installed");
    }
    if app.config.secrets.webhook_secret.is_none() {
        log::warn!("MESHROOM_SVC_WEBHOOK_SECRET is not set: webhooks are sent unsigned");
    }
    app.recover().await?;
    app.spawn_retention();
    let slots: Vec<Option<u32>> = if app.gpus.is_empty() {
        vec![None]
    } else {
        app.gpus.iter().map(|g| Some(*g)).collect()
    };
    let workers = worker::start(&app, slots);
    let server = http::server(app.clone(), listener).map_err(|e| StartError::Bind(listen.to_string(), e))?;
    log::info!(
        "meshroom-svc all-in-one listening on http://{addr} (queue: {})",
        app.queue.kind()
    );
    Ok(AllInOne {
        app,
        addr,
        server,
        workers,
    })
}
