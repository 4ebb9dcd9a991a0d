//! RabbitMQ (amqprs). A supervisor task keeps one connection: it (re)connects with backoff,
//! declares the queues, and re-subscribes, since amqprs does not reconnect by itself.
//!
//! Topology, all durable classic queues of version 2 (see `broker::classic`), under the
//! configured prefix P:
//! - `P.jobs.gpu`, `P.jobs.cpu`: classic queues with `x-max-priority` (quorum queues take no
//!   priorities before RabbitMQ 4.0) that dead-letter to `P.dlx` → `P.dead`;
//! - `P.webhooks`, and `P.webhooks.wait.N`: one per delay N of the schedule, whose messages expire
//!   after N seconds back into `P.webhooks`.

use super::{QueueError, Settle};
use crate::jobs::Priority;
use amqprs::channel::{BasicAckArguments, BasicNackArguments, BasicRejectArguments, Channel};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod broker;
mod link;
pub use broker::{connection_args, honours_queue_consumer_timeout};
use link::Link;

/// How long a publish waits for a connection being made before it reports the broker unavailable.
const LINK_WAIT: Duration = Duration::from_secs(1);

/// What this process consumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Consume {
    /// Worker slots: the prefetch of the job queues; 0 takes no jobs.
    pub slots: u16,
    /// Whether GPU jobs are taken too (CPU jobs always are).
    pub gpu: bool,
    /// Whether webhook attempts are run here.
    pub webhooks: bool,
}

/// Names and settings of the topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Name prefix.
    pub prefix: String,
    /// Every delay of the webhook schedule, seconds.
    pub webhook_delays: Vec<u64>,
    /// Per-queue consumer timeout, set on brokers that honour it (3.12+).
    pub consumer_timeout: Duration,
}

impl Topology {
    fn jobs(&self, gpu: bool) -> String {
        format!("{}.jobs.{}", self.prefix, if gpu { "gpu" } else { "cpu" })
    }
    fn webhooks(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }
    fn wait(&self, secs: u64) -> String {
        format!("{}.webhooks.wait.{secs}", self.prefix)
    }
}

/// A job or webhook message held by this process until it is settled.
pub struct BrokerMessage {
    /// The job.
    pub id: Uuid,
    /// The W3C trace context of its publish, from its headers.
    pub traceparent: Option<String>,
    tag: u64,
    channel: Channel,
}

impl std::fmt::Debug for BrokerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMessage")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .finish()
    }
}

impl BrokerMessage {
    /// Acks, requeues or dead-letters the message. A failure means the channel is gone, and
    /// the broker gives the message to another consumer: nothing is lost.
    pub async fn settle(self, how: Settle) {
        let result = match how {
            Settle::Ack => self.channel.basic_ack(BasicAckArguments::new(self.tag, false)).await,
            Settle::Requeue => {
                self.channel
                    .basic_nack(BasicNackArguments::new(self.tag, false, true))
                    .await
            }
            Settle::DeadLetter => {
                self.channel
                    .basic_reject(BasicRejectArguments::new(self.tag, false))
                    .await
            }
        };
        if let Err(e) = result {
            log::warn!(
                "job {}: {how:?} not sent ({e}); the broker will deliver it again",
                self.id
            );
        }
    }
}

/// A RabbitMQ connection, kept up by a supervisor task.
#[derive(Debug)]
pub struct Amqp {
    topology: Topology,
    link: watch::Sender<Option<Arc<Link>>>,
    jobs: Mutex<mpsc::Receiver<BrokerMessage>>,
    webhooks: Mutex<mpsc::Receiver<BrokerMessage>>,
}

impl Amqp {
    /// Connects in the background (and again whenever the connection drops).
    pub fn start(url: String, topology: Topology, consume: Consume, stop: CancellationToken) -> Arc<Amqp> {
        let (jobs_tx, jobs_rx) = mpsc::channel(consume.slots.max(1) as usize);
        let (hooks_tx, hooks_rx) = mpsc::channel(16);
        let amqp = Arc::new(Amqp {
            topology,
            link: watch::Sender::new(None),
            jobs: Mutex::new(jobs_rx),
            webhooks: Mutex::new(hooks_rx),
        });
        let supervisor = amqp.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let args = match connection_args(&url) {
                    Ok(a) => a,
                    Err(e) => return log::error!("MESHROOM_SVC_AMQP_URL is not usable: {e}"),
                };
                let senders = (jobs_tx.clone(), hooks_tx.clone());
                match Link::open(&args, &supervisor.topology, consume, senders).await {
                    Ok(link) => {
                        backoff = Duration::from_millis(250);
                        let link = Arc::new(link);
                        log::info!("connected to RabbitMQ {}", link.version);
                        supervisor.link.send_replace(Some(link.clone()));
                        tokio::select! {
                            _ = link.closed.cancelled() => {}
                            _ = stop.cancelled() => {}
                        }
                        supervisor.link.send_replace(None);
                        link.shut().await;
                        if stop.is_cancelled() {
                            return;
                        }
                        log::warn!("RabbitMQ connection lost; reconnecting");
                    }
                    Err(e) => {
                        log::warn!("cannot reach RabbitMQ ({e}); retrying in {backoff:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
        amqp
    }

    /// The broker's version, once connected.
    pub async fn broker_version(&self) -> Option<String> {
        self.link.borrow().as_ref().map(|l| l.version.clone())
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.link.borrow().as_ref().is_some_and(|l| !l.closed.is_cancelled())
    }

    /// The live link; waits a little for one (a connect in progress), then gives up: callers
    /// answer 503 rather than hang.
    async fn current(&self) -> Result<Arc<Link>, QueueError> {
        let mut rx = self.link.subscribe();
        let live = |l: &Option<Arc<Link>>| l.as_ref().is_some_and(|l| !l.closed.is_cancelled());
        let found = match tokio::time::timeout(LINK_WAIT, rx.wait_for(live)).await {
            Ok(Ok(link)) => link.clone(),
            _ => None,
        };
        found.ok_or(QueueError::Unavailable)
    }

    /// Publishes a persistent job message and waits for the broker's confirm.
    pub async fn publish_job(
        &self,
        id: Uuid,
        gpu: bool,
        priority: Priority,
        traceparent: Option<&str>,
    ) -> Result<(), QueueError> {
        let level = match priority {
            Priority::Normal => 1,
            Priority::High => 2,
        };
        self.current()
            .await?
            .publish(&self.topology.jobs(gpu), id, level, traceparent)
            .await
    }

    /// Publishes a webhook attempt for after `delay` (rounded up to a delay of the schedule).
    pub async fn publish_webhook(&self, id: Uuid, delay: Duration) -> Result<(), QueueError> {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        let queue = match self.topology.webhook_delays.iter().filter(|d| **d >= secs).min() {
            _ if secs == 0 => self.topology.webhooks(),
            Some(d) => self.topology.wait(*d),
            None => self
                .topology
                .wait(*self.topology.webhook_delays.iter().max().unwrap_or(&0)),
        };
        self.current().await?.publish(&queue, id, 0, None).await
    }

    /// Waits for the next job delivery; `None` once `stop` is cancelled.
    pub async fn next_job(&self, stop: &CancellationToken) -> Option<BrokerMessage> {
        let mut rx = self.jobs.lock().await;
        tokio::select! {
            d = rx.recv() => d,
            _ = stop.cancelled() => None,
        }
    }

    /// Waits for the next webhook delivery; `None` once `stop` is cancelled.
    pub async fn next_webhook(&self, stop: &CancellationToken) -> Option<BrokerMessage> {
        let mut rx = self.webhooks.lock().await;
        tokio::select! {
            d = rx.recv() => d,
            _ = stop.cancelled() => None,
        }
    }

    /// Warns, once the broker is reached, when its node-wide consumer timeout (RabbitMQ before
    /// 3.12 ignores the per-queue one) is shorter than a job may hold its message.
    pub fn warn_if_consumer_timeout_short(self: Arc<Self>, job_secs: u64, broker_timeout_secs: u64) {
        tokio::spawn(async move {
            for _ in 0..600 {
                if let Some(version) = self.broker_version().await {
                    if !broker::honours_queue_consumer_timeout(&version) && broker_timeout_secs < job_secs {
                        log::warn!(
                            "RabbitMQ {version} has a node-wide consumer_timeout ({broker_timeout_secs} s per \
                             queue.broker_consumer_timeout_secs) shorter than engine.timeout_secs ({job_secs} s): \
                             long jobs would be taken away from their worker. Raise consumer_timeout on the \
                             broker (see README) and set queue.broker_consumer_timeout_secs."
                        );
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Ready job messages in both job queues.
    pub async fn depth(&self) -> Option<u64> {
        let link = self.current().await.ok()?;
        let mut total = 0;
        for gpu in [false, true] {
            total += link.depth(&self.topology.jobs(gpu)).await?;
        }
        Some(total)
    }
}
