//! One live connection: a confirm-mode channel to publish on, channels to consume from, and
//! callbacks that mark the link closed so the supervisor reconnects.

use super::broker::{confirm_args, consume_args, declare, persistent, publish_args, qos, traceparent_of};
use super::{BrokerMessage, Consume, Topology};
use crate::queue::QueueError;
use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{BasicRejectArguments, Channel, ConsumerMessage, QueueDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a publish waits for the broker's confirm; with the wait for a link, a publish gives
/// up within 4 s when the broker is gone (its job is then the outbox sweep's).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

type Result<T> = std::result::Result<T, amqprs::error::Error>;

/// A connected link.
pub(super) struct Link {
    connection: Connection,
    publish: Channel,
    confirms: Arc<Confirms>,
    // Publishes are numbered by the broker in arrival order: number and send under one lock.
    publishing: Mutex<()>,
    pub version: String,
    pub closed: CancellationToken,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("version", &self.version).finish()
    }
}

/// Publisher confirms waiting for the broker, by delivery tag.
#[derive(Default)]
struct Confirms {
    next: SyncMutex<u64>,
    pending: SyncMutex<BTreeMap<u64, oneshot::Sender<bool>>>,
}

impl Confirms {
    fn register(&self) -> oneshot::Receiver<bool> {
        let mut next = self.next.lock().expect("lock");
        *next += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("lock").insert(*next, tx);
        rx
    }

    fn settle(&self, tag: u64, multiple: bool, ok: bool) {
        let mut pending = self.pending.lock().expect("lock");
        let tags: Vec<u64> = if multiple {
            pending.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        for t in tags {
            if let Some(tx) = pending.remove(&t) {
                let _ = tx.send(ok);
            }
        }
    }

    /// Dropping the senders wakes every waiter with an error: the broker never confirmed.
    fn fail_all(&self) {
        self.pending.lock().expect("lock").clear();
    }
}

impl Link {
    pub async fn open(
        args: &OpenConnectionArguments,
        topology: &Topology,
        consume: Consume,
        (jobs, hooks): (mpsc::Sender<BrokerMessage>, mpsc::Sender<BrokerMessage>),
    ) -> Result<Link> {
        let connection = Connection::open(args).await?;
        let closed = CancellationToken::new();
        connection
            .register_callback(Watch {
                closed: closed.clone(),
                confirms: None,
            })
            .await?;
        let version = connection.server_properties().version().to_string();
        let publish = connection.open_channel(None).await?;
        let confirms = Arc::new(Confirms::default());
        publish
            .register_callback(Watch {
                closed: closed.clone(),
                confirms: Some(confirms.clone()),
            })
            .await?;
        publish.confirm_select(confirm_args()).await?;
        declare(&publish, topology, &version).await?;
        if consume.slots > 0 {
            let queues: Vec<String> = [false, true]
                .iter()
                .filter(|g| !**g || consume.gpu)
                .map(|g| topology.jobs(*g))
                .collect();
            subscribe(&connection, &queues, consume.slots, jobs, &closed).await?;
        }
        if consume.webhooks {
            subscribe(&connection, &[topology.webhooks()], 16, hooks, &closed).await?;
        }
        let (conn, watch) = (connection.clone(), closed.clone());
        tokio::spawn(async move {
            conn.listen_network_io_failure().await;
            watch.cancel();
        });
        Ok(Link {
            connection,
            publish,
            confirms,
            publishing: Mutex::new(()),
            version,
            closed,
        })
    }

    /// Publishes a persistent message `{"id": …}` (with the `traceparent` header when given) and
    /// waits for its confirm.
    pub async fn publish(
        &self,
        queue: &str,
        id: Uuid,
        priority: u8,
        traceparent: Option<&str>,
    ) -> std::result::Result<(), QueueError> {
        let body = serde_json::to_vec(&serde_json::json!({ "id": id })).expect("static shape");
        let confirmed = {
            let _turn = self.publishing.lock().await;
            let confirmed = self.confirms.register();
            if let Err(e) = self
                .publish
                .basic_publish(persistent(priority, traceparent), body, publish_args(queue))
                .await
            {
                log::warn!("job {id}: publish to {queue} failed: {e}");
                self.closed.cancel(); // numbering is off now: start a fresh link
                return Err(QueueError::Unavailable);
            }
            confirmed
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirmed).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(QueueError::Refused),
            _ => Err(QueueError::Unavailable),
        }
    }

    /// Ready messages in a queue.
    pub async fn depth(&self, queue: &str) -> Option<u64> {
        let args = QueueDeclareArguments::new(queue).passive(true).finish();
        let (_, ready, _) = self.publish.queue_declare(args).await.ok()??;
        Some(ready as u64)
    }

    /// Closes the connection and fails pending confirms.
    pub async fn shut(&self) {
        self.closed.cancel();
        self.confirms.fail_all();
        let _ = self.connection.clone().close().await;
    }
}

/// Consumes `queues` on a channel of their own with `prefetch` for the whole channel, forwarding
/// deliveries to `tx`.
async fn subscribe(
    connection: &Connection,
    queues: &[String],
    prefetch: u16,
    tx: mpsc::Sender<BrokerMessage>,
    closed: &CancellationToken,
) -> Result<()> {
    let channel = connection.open_channel(None).await?;
    channel
        .register_callback(Watch {
            closed: closed.clone(),
            confirms: None,
        })
        .await?;
    channel.basic_qos(qos(prefetch)).await?;
    for queue in queues {
        let (_, rx) = channel.basic_consume_rx(consume_args(queue)).await?;
        tokio::spawn(forward(rx, channel.clone(), tx.clone(), closed.clone()));
    }
    Ok(())
}

async fn forward(
    mut rx: mpsc::UnboundedReceiver<ConsumerMessage>,
    channel: Channel,
    tx: mpsc::Sender<BrokerMessage>,
    closed: CancellationToken,
) {
    while let Some(msg) = rx.recv().await {
        let Some(deliver) = msg.deliver else { continue };
        let tag = deliver.delivery_tag();
        let id = msg
            .content
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v["id"].as_str()?.parse::<Uuid>().ok());
        match id {
            Some(id) => {
                if tx
                    .send(BrokerMessage {
                        id,
                        traceparent: traceparent_of(msg.basic_properties.as_ref()),
                        tag,
                        channel: channel.clone(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            None => {
                log::error!("dead-lettering a message that names no job");
                let _ = channel.basic_reject(BasicRejectArguments::new(tag, false)).await;
            }
        }
    }
    // The consumer ended: its channel closed or the broker cancelled it. Reconnect.
    closed.cancel();
}

/// Marks the link closed on any close or cancel from the broker; routes publisher confirms.
struct Watch {
    closed: CancellationToken,
    confirms: Option<Arc<Confirms>>,
}

#[async_trait::async_trait]
impl ConnectionCallback for Watch {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<()> {
        log::warn!("RabbitMQ closed the connection: {close}");
        self.closed.cancel();
        Ok(())
    }
    async fn blocked(&mut self, _: &Connection, reason: String) {
        log::warn!("RabbitMQ blocks publishing: {reason}");
    }
    async fn unblocked(&mut self, _: &Connection) {
        log::info!("RabbitMQ unblocked publishing");
    }
    async fn secret_updated(&mut self, _: &Connection) {}
}

#[async_trait::async_trait]
impl ChannelCallback for Watch {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> Result<()> {
        log::warn!("RabbitMQ closed a channel: {close}");
        self.closed.cancel();
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<()> {
        log::warn!("RabbitMQ cancelled a consumer");
        self.closed.cancel();
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        if let Some(c) = &self.confirms {
            c.settle(ack.delivery_tag(), ack.mutiple(), true);
        }
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        if let Some(c) = &self.confirms {
            c.settle(nack.delivery_tag(), nack.multiple(), false);
        }
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn confirms_settle_single_multiple_and_failures() {
        let c = Confirms::default();
        let (a, b, d) = (c.register(), c.register(), c.register());
        c.settle(2, true, true);
        assert_eq!((a.await, b.await), (Ok(true), Ok(true)));
        let e = c.register();
        c.settle(4, false, false);
        assert_eq!(e.await, Ok(false));
        c.fail_all();
        assert!(d.await.is_err());
    }
}
