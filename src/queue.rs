//! The job queue: in-process now; RabbitMQ is the other arm of the enum.
//!
//! The in-process queue keeps only ids in memory. It is durable because the job records are: at
//! start-up every job still enqueued or processing is pushed again, oldest first.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

/// The configured backend.
#[derive(Debug)]
pub enum Queue {
    /// Ids in memory, rebuilt from job records at start-up.
    Local(LocalQueue),
}

/// A FIFO of job ids that wakes one waiting worker per push.
#[derive(Debug, Default)]
pub struct LocalQueue {
    ids: Mutex<VecDeque<Uuid>>,
    ready: Notify,
}

impl Queue {
    /// An empty in-process queue.
    pub fn local() -> Queue {
        Queue::Local(LocalQueue::default())
    }

    /// Adds a job.
    pub fn push(&self, id: Uuid) {
        match self {
            Queue::Local(q) => {
                q.ids.lock().expect("queue lock").push_back(id);
                q.ready.notify_one();
            }
        }
    }

    /// Waits for the next job.
    pub async fn pop(&self) -> Uuid {
        match self {
            Queue::Local(q) => loop {
                // Register interest before checking, so a push between the check and the wait
                // is not missed.
                let notified = q.ready.notified();
                if let Some(id) = q.ids.lock().expect("queue lock").pop_front() {
                    return id;
                }
                notified.await;
            },
        }
    }

    /// Jobs waiting.
    pub fn depth(&self) -> usize {
        match self {
            Queue::Local(q) => q.ids.lock().expect("queue lock").len(),
        }
    }

    /// Short name for `/` and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Queue::Local(_) => "in-process",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn fifo_and_wakes_waiters() {
        let q = Arc::new(Queue::local());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { (q.pop().await, q.pop().await) }
        });
        tokio::task::yield_now().await;
        q.push(a);
        q.push(b);
        assert_eq!(waiter.await.unwrap(), (a, b));
        assert_eq!(q.depth(), 0);
    }
}
