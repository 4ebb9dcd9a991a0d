//! RabbitMQ (amqprs). A supervisor task keeps one connection: it (re)connects with backoff,
//! declares the queues, and re-subscribes, since amqprs does not reconnect by itself.
//!
//! Topology, all durable, under the configured prefix P:
//! - `P.jobs.gpu`, `P.jobs.cpu`: classic queues with `x-max-priority` (quorum queues take no
//!   priorities before RabbitMQ 4.0) that dead-letter to `P.dlx` → `P.dead`;
//! - `P.webhooks`, and `P.webhooks.wait.N`: one per delay N of the schedule, whose messages expire
//!   after N seconds back into `P.webhooks`.

use super::{QueueError, Settle};
use crate::jobs::Priority;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicNackArguments, BasicPublishArguments, BasicQosArguments,
    BasicRejectArguments, Channel, ConfirmSelectArguments, ExchangeDeclareArguments, QueueBindArguments,
    QueueDeclareArguments,
};
use amqprs::connection::OpenConnectionArguments;
use amqprs::{BasicProperties, FieldTable, FieldValue};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod link;
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
pub struct Delivery {
    /// The job.
    pub id: Uuid,
    tag: u64,
    channel: Channel,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("tag", &self.tag)
            .finish()
    }
}

impl Delivery {
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
    jobs: Mutex<mpsc::Receiver<Delivery>>,
    webhooks: Mutex<mpsc::Receiver<Delivery>>,
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
    pub async fn publish_job(&self, id: Uuid, gpu: bool, priority: Priority) -> Result<(), QueueError> {
        let level = match priority {
            Priority::Normal => 1,
            Priority::High => 2,
        };
        self.current().await?.publish(&self.topology.jobs(gpu), id, level).await
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
        self.current().await?.publish(&queue, id, 0).await
    }

    /// Waits for the next job delivery; `None` once `stop` is cancelled.
    pub async fn next_job(&self, stop: &CancellationToken) -> Option<Delivery> {
        let mut rx = self.jobs.lock().await;
        tokio::select! {
            d = rx.recv() => d,
            _ = stop.cancelled() => None,
        }
    }

    /// Waits for the next webhook delivery; `None` once `stop` is cancelled.
    pub async fn next_webhook(&self, stop: &CancellationToken) -> Option<Delivery> {
        let mut rx = self.webhooks.lock().await;
        tokio::select! {
            d = rx.recv() => d,
            _ = stop.cancelled() => None,
        }
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

/// Declares the queues and exchanges (idempotent; run on every connect).
async fn declare(ch: &Channel, t: &Topology, version: &str) -> Result<(), amqprs::error::Error> {
    let dlx = format!("{}.dlx", t.prefix);
    let dead = format!("{}.dead", t.prefix);
    ch.exchange_declare(ExchangeDeclareArguments::new(&dlx, "fanout").durable(true).finish())
        .await?;
    ch.queue_declare(QueueDeclareArguments::durable_client_named(&dead))
        .await?;
    ch.queue_bind(QueueBindArguments::new(&dead, &dlx, "")).await?;
    for gpu in [false, true] {
        let mut args = FieldTable::new();
        args.insert("x-max-priority".try_into().unwrap(), FieldValue::s(2));
        args.insert("x-dead-letter-exchange".try_into().unwrap(), dlx.as_str().into());
        if honours_queue_consumer_timeout(version) {
            args.insert(
                "x-consumer-timeout".try_into().unwrap(),
                FieldValue::l(t.consumer_timeout.as_millis() as i64),
            );
        }
        let q = t.jobs(gpu);
        ch.queue_declare(QueueDeclareArguments::durable_client_named(&q).arguments(args).finish())
            .await?;
    }
    ch.queue_declare(QueueDeclareArguments::durable_client_named(&t.webhooks()))
        .await?;
    for secs in t.webhook_delays.iter().filter(|s| **s > 0) {
        let mut args = FieldTable::new();
        args.insert("x-message-ttl".try_into().unwrap(), FieldValue::l(*secs as i64 * 1000));
        args.insert("x-dead-letter-exchange".try_into().unwrap(), "".into());
        args.insert(
            "x-dead-letter-routing-key".try_into().unwrap(),
            t.webhooks().as_str().into(),
        );
        let q = t.wait(*secs);
        ch.queue_declare(QueueDeclareArguments::durable_client_named(&q).arguments(args).finish())
            .await?;
    }
    Ok(())
}

/// Connection settings from an AMQP URI, decoding its parts (amqprs leaves `%2f` as is, and the
/// default vhost `/` must be written `%2f`).
pub fn connection_args(url: &str) -> Result<OpenConnectionArguments, String> {
    let u = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if u.scheme() != "amqp" {
        return Err(format!("scheme {}: only amqp:// is supported", u.scheme()));
    }
    let decode = |s: &str| percent_decode(s).ok_or_else(|| "invalid percent-encoding".to_string());
    let vhost = match u.path() {
        "" | "/" => "/".to_string(),
        p => decode(&p[1..])?,
    };
    let user = if u.username().is_empty() {
        "guest".to_string()
    } else {
        decode(u.username())?
    };
    let password = decode(u.password().unwrap_or("guest"))?;
    let host = u.host_str().ok_or("no host")?;
    let mut args = OpenConnectionArguments::new(host, u.port().unwrap_or(5672), &user, &password);
    args.virtual_host(&vhost)
        .connection_name(concat!("meshroom-svc ", env!("CARGO_PKG_VERSION")));
    Ok(args.finish())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// RabbitMQ honours the per-queue `x-consumer-timeout` from 3.12 on.
pub fn honours_queue_consumer_timeout(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (3, 12)
}

fn persistent(priority: u8) -> BasicProperties {
    let mut props = BasicProperties::default();
    props.with_persistence(true).with_content_type("application/json");
    if priority > 0 {
        props.with_priority(priority);
    }
    props.finish()
}

fn publish_args(queue: &str) -> BasicPublishArguments {
    BasicPublishArguments::new("", queue)
}

fn qos(prefetch: u16) -> BasicQosArguments {
    // global = true: RabbitMQ applies the limit to the whole channel, across both job queues.
    BasicQosArguments::new(0, prefetch, true)
}

fn consume_args(queue: &str) -> BasicConsumeArguments {
    BasicConsumeArguments::new(queue, "").manual_ack(true).finish()
}

fn confirm_args() -> ConfirmSelectArguments {
    ConfirmSelectArguments::new(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_decoded() {
        let a = super::connection_args("amqp://us%40er:p%2Fw@broker:5673/%2f").unwrap();
        assert_eq!(
            (a.get_host(), a.get_port(), a.get_virtual_host()),
            ("broker", 5673, "/")
        );
        assert!(a.get_credentials() == &amqprs::security::SecurityCredentials::new_plain("us@er", "p/w"));
        let b = super::connection_args("amqp://h/jobs").unwrap();
        assert_eq!((b.get_port(), b.get_virtual_host()), (5672, "jobs"));
        assert!(super::connection_args("amqps://h/").is_err());
        assert!(super::connection_args("not a url").is_err());
    }

    #[test]
    fn consumer_timeout_argument_needs_3_12() {
        assert!(!super::honours_queue_consumer_timeout("3.10.8"));
        assert!(!super::honours_queue_consumer_timeout("3.11.28"));
        assert!(super::honours_queue_consumer_timeout("3.12.0"));
        assert!(super::honours_queue_consumer_timeout("4.0.5"));
        assert!(!super::honours_queue_consumer_timeout("garbage"));
    }
}
