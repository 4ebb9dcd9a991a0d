//! The in-process schedule of webhook attempts: job ids that come due after a delay, one entry
//! per job (RabbitMQ does the same with its delay queues).

use std::collections::HashMap;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue::Key, DelayQueue};
use uuid::Uuid;

/// Ids due after a delay.
#[derive(Default)]
pub struct WebhookTimer {
    inner: Mutex<Due>,
    added: Notify,
}

#[derive(Default)]
struct Due {
    queue: DelayQueue<Uuid>,
    keys: HashMap<Uuid, Key>,
}

impl std::fmt::Debug for WebhookTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheduled = self.inner.lock().map(|d| d.keys.len()).unwrap_or(0);
        f.debug_struct("WebhookTimer").field("scheduled", &scheduled).finish()
    }
}

impl WebhookTimer {
    /// Job `id` comes due after `delay`; one already scheduled keeps the earlier of the two times.
    pub fn schedule(&self, id: Uuid, delay: Duration) {
        let mut due = self.inner.lock().expect("timer lock");
        match due.keys.get(&id).copied() {
            Some(key) => {
                let at = tokio::time::Instant::now() + delay;
                if at < due.queue.deadline(&key) {
                    due.queue.reset_at(&key, at);
                }
            }
            None => {
                let key = due.queue.insert(id, delay);
                due.keys.insert(id, key);
            }
        }
        drop(due);
        self.added.notify_one();
    }

    /// Waits for the next id that is due; `None` once `stop` is cancelled.
    pub async fn next(&self, stop: &CancellationToken) -> Option<Uuid> {
        loop {
            // Registered before polling, so an id scheduled in between wakes us.
            let added = self.added.notified();
            let expired = std::future::poll_fn(|cx| {
                let mut due = self.inner.lock().expect("timer lock");
                match due.queue.poll_expired(cx) {
                    Poll::Ready(Some(entry)) => {
                        let id = entry.into_inner();
                        due.keys.remove(&id);
                        Poll::Ready(Some(id))
                    }
                    // Nothing scheduled: only `added` or `stop` can end the wait.
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            });
            tokio::select! {
                Some(id) = expired => return Some(id),
                _ = added => {}
                _ = stop.cancelled() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ids_come_due_in_time_order_once_each() {
        let timer = WebhookTimer::default();
        let stop = CancellationToken::new();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        timer.schedule(a, Duration::from_secs(10));
        timer.schedule(b, Duration::from_secs(5));
        // Scheduling again keeps the earlier time, and one entry.
        timer.schedule(a, Duration::from_secs(60));
        timer.schedule(b, Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        assert_eq!(timer.next(&stop).await, Some(b));
        assert_eq!(start.elapsed().as_secs(), 1);
        assert_eq!(timer.next(&stop).await, Some(a));
        assert_eq!(start.elapsed().as_secs(), 10);
    }

    #[tokio::test]
    async fn a_waiting_taker_wakes_for_a_new_id_and_stops() {
        let timer = std::sync::Arc::new(WebhookTimer::default());
        let stop = CancellationToken::new();
        let waiter = tokio::spawn({
            let (timer, stop) = (timer.clone(), stop.clone());
            async move { timer.next(&stop).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let id = Uuid::now_v7();
        timer.schedule(id, Duration::ZERO);
        assert_eq!(waiter.await.unwrap(), Some(id));
        stop.cancel();
        assert_eq!(timer.next(&stop).await, None);
    }
}
