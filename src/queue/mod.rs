//! The job queue, and the scheduling of webhook attempts: in-process, or RabbitMQ.
//!
//! The in-process queue keeps only ids in memory. It is durable because the job records are: at
//! start-up every job still enqueued or processing is pushed again, oldest first.

use crate::jobs::Priority;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod amqp;
mod timer;
pub use amqp::Amqp;

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker cannot be reached now; the request can be retried.
    #[error("the message broker is unavailable")]
    Unavailable,
    /// The broker refused the message.
    #[error("the message broker refused the message")]
    Refused,
}

/// The configured backend.
#[derive(Debug)]
pub enum Queue {
    /// Ids in memory, rebuilt from job records at start-up.
    Local(Box<LocalQueue>),
    /// RabbitMQ.
    Rabbitmq(std::sync::Arc<Amqp>),
}

/// Two FIFOs of job ids (high priority first) that wake one waiting worker per push, and the
/// schedule of webhook attempts.
#[derive(Debug, Default)]
pub struct LocalQueue {
    ids: Mutex<[VecDeque<Uuid>; 2]>,
    ready: Notify,
    webhooks: timer::WebhookTimer,
}

/// A webhook attempt that is due, taken from the queue; settle it when it is done.
#[derive(Debug)]
pub struct WebhookTurn {
    /// The job whose webhook is due.
    pub id: Uuid,
    message: Option<amqp::BrokerMessage>,
}

/// A job taken from the queue; settle it once its outcome is recorded.
#[derive(Debug)]
pub struct Taken {
    /// The job.
    pub id: Uuid,
    /// The trace context its message carried (RabbitMQ).
    pub traceparent: Option<String>,
    delivery: Option<amqp::BrokerMessage>,
    /// In-process queue: the FIFO it came from (0: high priority).
    lane: usize,
}

/// What to do with a taken job's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with (its outcome is recorded, or there was nothing to do).
    Ack,
    /// Give it back for another worker (shutdown).
    Requeue,
    /// Poison job: to the dead-letter queue.
    DeadLetter,
}

impl Queue {
    /// An empty in-process queue.
    pub fn local() -> Queue {
        Queue::Local(Box::default())
    }

    /// Adds a job; with RabbitMQ, returns once the broker confirmed it. The message carries
    /// `traceparent` (RabbitMQ; in process, the worker reads the job's own).
    pub async fn push(
        &self,
        id: Uuid,
        gpu: bool,
        priority: Priority,
        traceparent: Option<&str>,
    ) -> Result<(), QueueError> {
        match self {
            Queue::Local(q) => {
                q.ids.lock().expect("queue lock")[(priority == Priority::Normal) as usize].push_back(id);
                q.ready.notify_one();
                Ok(())
            }
            Queue::Rabbitmq(q) => q.publish_job(id, gpu, priority, traceparent).await,
        }
    }

    /// Waits for the next job; `None` once `stop` is cancelled.
    pub async fn take(&self, stop: &CancellationToken) -> Option<Taken> {
        match self {
            Queue::Local(q) => loop {
                // Register interest before checking, so a push in between is not missed.
                let notified = q.ready.notified();
                let next = q
                    .ids
                    .lock()
                    .expect("queue lock")
                    .iter_mut()
                    .enumerate()
                    .find_map(|(lane, ids)| Some((lane, ids.pop_front()?)));
                if let Some((lane, id)) = next {
                    return Some(Taken {
                        id,
                        traceparent: None,
                        delivery: None,
                        lane,
                    });
                }
                tokio::select! {
                    _ = notified => {}
                    _ = stop.cancelled() => return None,
                }
            },
            Queue::Rabbitmq(q) => {
                let delivery = q.next_job(stop).await?;
                Some(Taken {
                    id: delivery.id,
                    traceparent: delivery.traceparent.clone(),
                    delivery: Some(delivery),
                    lane: 0,
                })
            }
        }
    }

    /// Settles a taken job.
    pub async fn settle(&self, taken: Taken, how: Settle) {
        if let Some(d) = taken.delivery {
            d.settle(how).await;
        }
    }

    /// Gives a job back untouched, first in line: to the broker, which may offer it to another
    /// worker, or to the front of its in-process FIFO.
    pub async fn give_back(&self, taken: Taken) {
        match (self, taken.delivery) {
            (_, Some(d)) => d.settle(Settle::Requeue).await,
            (Queue::Local(q), None) => {
                q.ids.lock().expect("queue lock")[taken.lane].push_front(taken.id);
                q.ready.notify_one();
            }
            (Queue::Rabbitmq(_), None) => {}
        }
    }

    /// Asks for a webhook attempt of job `id` after `delay`.
    pub async fn schedule_webhook(&self, id: Uuid, delay: Duration) -> Result<(), QueueError> {
        match self {
            Queue::Local(q) => {
                q.webhooks.schedule(id, delay);
                Ok(())
            }
            Queue::Rabbitmq(q) => q.publish_webhook(id, delay).await,
        }
    }

    /// Waits for the next webhook attempt that is due; `None` once `stop` is cancelled.
    pub async fn take_webhook(&self, stop: &CancellationToken) -> Option<WebhookTurn> {
        match self {
            Queue::Local(q) => q.webhooks.next(stop).await.map(|id| WebhookTurn { id, message: None }),
            Queue::Rabbitmq(q) => {
                let message = q.next_webhook(stop).await?;
                Some(WebhookTurn {
                    id: message.id,
                    message: Some(message),
                })
            }
        }
    }

    /// Settles a webhook turn: `Requeue` offers it again shortly (the job store did not answer).
    pub async fn settle_webhook(&self, turn: WebhookTurn, how: Settle) {
        match (self, turn.message) {
            (_, Some(message)) => message.settle(how).await,
            (Queue::Local(q), None) if how == Settle::Requeue => q.webhooks.schedule(turn.id, Duration::from_secs(1)),
            _ => {}
        }
    }

    /// Jobs waiting; `None` when the broker cannot say now.
    pub async fn depth(&self) -> Option<u64> {
        match self {
            Queue::Local(q) => Some(q.ids.lock().expect("queue lock").iter().map(|i| i.len() as u64).sum()),
            Queue::Rabbitmq(q) => q.depth().await,
        }
    }

    /// True when jobs can be queued now (for `/ready`).
    pub fn is_available(&self) -> bool {
        match self {
            Queue::Local(_) => true,
            Queue::Rabbitmq(q) => q.is_connected(),
        }
    }

    /// True when the queue lives in this process and dies with it (then the job records refill
    /// it at start, and a publish cannot fail).
    pub fn held_in_memory(&self) -> bool {
        matches!(self, Queue::Local(_))
    }

    /// RabbitMQ: warns, once the broker is reached, when its node-wide consumer timeout
    /// (`broker_timeout_secs`, RabbitMQ before 3.12) would take long jobs (`job_secs`) away.
    pub fn warn_about_broker(&self, job_secs: u64, broker_timeout_secs: u64) {
        if let Queue::Rabbitmq(q) = self {
            q.clone().warn_if_consumer_timeout_short(job_secs, broker_timeout_secs);
        }
    }

    /// Short name for `/` and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Queue::Local(_) => "in-process",
            Queue::Rabbitmq(_) => "rabbitmq",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn high_priority_first_then_fifo() {
        let q = Arc::new(Queue::local());
        let stop = CancellationToken::new();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        q.push(a, false, Priority::Normal, None).await.unwrap();
        q.push(b, false, Priority::Normal, None).await.unwrap();
        q.push(c, false, Priority::High, None).await.unwrap();
        assert_eq!(q.depth().await, Some(3));
        let order: Vec<Uuid> = [q.take(&stop).await, q.take(&stop).await, q.take(&stop).await]
            .into_iter()
            .map(|t| t.unwrap().id)
            .collect();
        assert_eq!(order, vec![c, a, b]);
        // A job given back is taken first again, in its own lane.
        q.push(a, false, Priority::High, None).await.unwrap();
        q.push(b, false, Priority::Normal, None).await.unwrap();
        let taken = q.take(&stop).await.unwrap();
        q.give_back(taken).await;
        assert_eq!(q.take(&stop).await.unwrap().id, a);
    }

    #[tokio::test]
    async fn wakes_waiters_and_stops() {
        let q = Arc::new(Queue::local());
        let stop = CancellationToken::new();
        let id = Uuid::now_v7();
        let waiter = tokio::spawn({
            let (q, stop) = (q.clone(), stop.clone());
            async move { q.take(&stop).await.map(|t| t.id) }
        });
        tokio::task::yield_now().await;
        q.push(id, false, Priority::Normal, None).await.unwrap();
        assert_eq!(waiter.await.unwrap(), Some(id));
        stop.cancel();
        assert!(q.take(&stop).await.is_none());
    }
}
