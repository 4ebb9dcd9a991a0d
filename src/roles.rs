//! Starting each role: `all-in-one`, `serve` and `work`.

use crate::app::{outbox, App, Role, StartError};
use crate::config::{Config, QueueKind, StorageKind};
use crate::pipelines::Engine;
use crate::{http, worker};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A started process: its state, its HTTP server (not for `work`) and its background tasks.
pub struct Started {
    /// The shared state.
    pub app: Arc<App>,
    /// The bound API address (port 0 resolved), when this role serves HTTP.
    pub addr: Option<SocketAddr>,
    server: Option<actix_web::dev::Server>,
    tasks: Vec<JoinHandle<()>>,
}

impl Started {
    /// Runs until SIGINT or SIGTERM, then stops taking jobs, stops running engines (their jobs go
    /// back to the queue) and waits for the background tasks. The HTTP server drains its requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = match self.server {
            Some(server) => server.await,
            None => wait_for_signal().await,
        };
        log::info!("stopping: running jobs go back to the queue");
        // The broker's confirm timeout: the submits answered last have their messages out.
        self.app.publishes_done(Duration::from_secs(5)).await;
        self.app.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.app.jobs.db().close().await;
        served
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// API and worker in one process: the embedded queue and local storage by default, or RabbitMQ and
/// S3 when configured.
pub async fn start_all_in_one(config: Config, gpus: Vec<u32>) -> Result<Started, StartError> {
    let listen = config.listen_addr();
    let listener = bind(listen)?;
    let app = App::open(config, gpus, Role::AllInOne).await?;
    let keyed =
        !app.config.secrets.api_keys.is_empty() || app.tokens.is_some() || app.keys.any_active().await.unwrap_or(false);
    if !listen.ip().is_loopback() && !keyed {
        return Err(StartError::Refused(format!(
            "refusing to listen on {listen} without an API key: make one (meshroom-svc keys create \
             --tenant NAME), set MESHROOM_SVC_API_KEYS, or listen on 127.0.0.1"
        )));
    }
    if app.pipelines.get(app.default_pipeline()).is_some_and(|p| p.gpu) && !app.gpu_available() {
        return Err(StartError::Refused(format!(
            "server.default_pipeline = \"{}\" needs a GPU and this process has none (--gpu none, or \
             none found): every job naming no pipeline would be refused. Use a CPU preset (draft, \
             colmap-sparse) or give --gpu",
            app.default_pipeline()
        )));
    }
    warn_about_setup(&app);
    if app.queue.held_in_memory() {
        app.recover().await?;
    }
    let mut tasks = worker::start(&worker_context(&app)).await;
    tasks.extend(start_common(&app));
    serve_http(app, listener, tasks)
}

/// The HTTP API only; jobs go to RabbitMQ for `work` processes.
pub async fn start_serve(config: Config) -> Result<Started, StartError> {
    require_distributed(&config, "serve")?;
    let listener = bind(config.listen_addr())?;
    let app = App::open(config, Vec::new(), Role::Serve).await?;
    let tasks = start_common(&app);
    serve_http(app, listener, tasks)
}

/// A worker: one job at a time per GPU, taken from RabbitMQ. With `ops`, it also serves
/// `/health`, `/ready` and `/metrics` on `server.listen`.
pub async fn start_work(config: Config, gpus: Vec<u32>, ops: bool) -> Result<Started, StartError> {
    require_distributed(&config, "work")?;
    let listener = if ops { Some(bind(config.listen_addr())?) } else { None };
    let app = App::open(config, gpus, Role::Work).await?;
    warn_about_setup(&app);
    let default = &app.config.server.default_pipeline;
    if app.gpus.is_empty() && app.pipelines.get(default).is_some_and(|p| p.gpu) {
        log::warn!(
            "server.default_pipeline = \"{default}\" needs a GPU, and this worker has none: it takes CPU \
             jobs only, so such jobs wait for a `work --gpu N` node"
        );
    }
    let mut tasks = worker::start(&worker_context(&app)).await;
    tasks.extend(start_common(&app));
    log::info!(
        "meshroom-svc work: {} slot(s), GPUs {:?}",
        app.gpus.len().max(1),
        app.gpus
    );
    let Some(listener) = listener else {
        return Ok(Started {
            app,
            addr: None,
            server: None,
            tasks,
        });
    };
    let addr = listener.local_addr().map_err(|e| StartError::Bind("?".into(), e))?;
    let server = http::ops_server(app.clone(), listener).map_err(|e| StartError::Bind(addr.to_string(), e))?;
    Ok(Started {
        app,
        addr: Some(addr),
        server: Some(server),
        tasks,
    })
}

/// The parts of the process state a worker uses (see `worker::Context`).
fn worker_context(app: &App) -> Arc<worker::Context> {
    let config = &app.config;
    Arc::new(worker::Context {
        jobs: app.jobs.clone(),
        queue: app.queue.clone(),
        files: app.files.clone(),
        webhooks: app.webhooks.clone(),
        pipelines: app.pipelines.clone(),
        metrics: app.metrics.clone(),
        fetcher: worker::download::Fetcher {
            files: app.files.clone(),
            client: app
                .egress
                .download_client(Duration::from_secs(config.worker.download_timeout_secs)),
            egress: app.egress.clone(),
            limits: config.limits.clone(),
            worker: config.worker.clone(),
        },
        running: app.running.clone(),
        shutdown: app.shutdown.clone(),
        settings: worker::Settings {
            engine: config.engine.clone(),
            worker: config.worker.clone(),
            data_dir: config.server.data_dir.clone(),
            lease: Duration::from_secs(config.queue.lease_secs),
            max_deliveries: config.queue.max_deliveries as u32,
            owner: app.owner(),
            gpus: app.gpus.clone(),
        },
    })
}

fn require_distributed(config: &Config, role: &str) -> Result<(), StartError> {
    if config.queue.kind != QueueKind::Rabbitmq {
        return Err(StartError::Refused(format!(
            "`{role}` needs queue.kind = \"rabbitmq\" (MESHROOM_SVC_QUEUE_KIND=rabbitmq); \
             for one machine without a broker, run `meshroom-svc all-in-one`"
        )));
    }
    if config.storage.kind == StorageKind::Local {
        log::warn!("storage.kind = \"local\": every serve and work process must share server.data_dir");
    }
    Ok(())
}

fn bind(listen: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(listen).map_err(|e| StartError::Bind(listen.to_string(), e))
}

fn serve_http(app: Arc<App>, listener: TcpListener, tasks: Vec<JoinHandle<()>>) -> Result<Started, StartError> {
    // Uploads clean up after themselves; the sweep catches what a panic could leave.
    http::spawn_staging_sweep(app.tmp_dir(), Duration::from_secs(60), app.shutdown.clone());
    let addr = listener.local_addr().map_err(|e| StartError::Bind("?".into(), e))?;
    let server = http::server(app.clone(), listener).map_err(|e| StartError::Bind(addr.to_string(), e))?;
    log::info!(
        "meshroom-svc listening on http://{addr} (queue: {}, storage: {})",
        app.queue.kind(),
        app.files.kind()
    );
    Ok(Started {
        app,
        addr: Some(addr),
        server: Some(server),
        tasks,
    })
}

/// Retention, the outbox sweep, the release of held jobs and webhook attempts: every role runs them.
fn start_common(app: &Arc<App>) -> Vec<JoinHandle<()>> {
    app.spawn_retention();
    // Jobs left unpublished (a broker outage, or released by a submit for an older job of the
    // same tenant) are published by the outbox sweep, for the in-memory queue too.
    let mut tasks = vec![tokio::spawn(outbox::run(app.clone()))];
    if app.config.scheduling.queued_per_tenant > 0 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            crate::scheduling::sweep(&app.jobs, &app.queue, &app.pipelines, &app.shutdown).await
        }));
    }
    let app = app.clone();
    tasks.push(tokio::spawn(async move {
        app.webhooks.consume(&app.jobs, &app.queue, &app.shutdown).await
    }));
    tasks
}

fn warn_about_setup(app: &Arc<App>) {
    for engine in [Engine::Meshroom, Engine::Colmap] {
        if let Err(e) = crate::engine::find_binary(engine, &app.config.engine) {
            log::warn!("{e}: its pipelines will fail with engine_not_found");
        }
    }
    if app.config.secrets.webhook_secret.is_none() {
        log::warn!("MESHROOM_SVC_WEBHOOK_SECRET is not set: webhooks are sent unsigned");
    }
    app.queue.warn_about_broker(
        app.config.engine.timeout_secs,
        app.config.queue.broker_consumer_timeout_secs,
    );
}
