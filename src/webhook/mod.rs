//! Webhooks on final states, signed as Standard Webhooks, retried on a schedule. The delivery state
//! lives in the job record, so a pending delivery carries on after a restart.

mod record;
mod signing;
use record::{due, save, Due};
pub use signing::sign;

use crate::config::WebhookConfig;
use crate::egress::{self, Egress};
use crate::jobs::{Attempt, Delivery, DeliveryState, Job, Store};
use crate::queue::{Queue, Settle};
use chrono::Utc;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Sends deliveries; one attempt per job at a time.
#[derive(Debug, Clone)]
pub struct Webhooks {
    client: reqwest::Client,
    key: Option<Vec<u8>>,
    /// Tenants' own signing keys, used for their jobs instead of `key`.
    tenant_keys: std::collections::BTreeMap<String, Vec<u8>>,
    schedule: Vec<Duration>,
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
    attempts: prometheus::IntCounterVec,
    egress: Egress,
}

/// How an attempt refused by the egress policy is recorded.
const BLOCKED: &str = "not sent: ";

impl Webhooks {
    /// A sender with the configured schedule and secret (checked at config load).
    pub fn new(
        config: &WebhookConfig,
        secret: Option<&crate::config::WebhookSecret>,
        tenant_secrets: &std::collections::BTreeMap<String, crate::config::WebhookSecret>,
        attempts: prometheus::IntCounterVec,
        egress: &Egress,
    ) -> Webhooks {
        // Public addresses only; a redirect is a failure, per the spec.
        let client = egress
            .client(0)
            .timeout(Duration::from_secs(config.timeout_secs))
            .user_agent(concat!("meshroom-svc/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static client settings");
        Webhooks {
            client,
            key: secret.map(|s| s.key()),
            tenant_keys: tenant_secrets.iter().map(|(t, s)| (t.clone(), s.key())).collect(),
            schedule: config.schedule_secs.iter().map(|s| Duration::from_secs(*s)).collect(),
            in_flight: Default::default(),
            attempts,
            egress: egress.clone(),
        }
    }

    /// Called as a job reaches a final state: schedules a delivery when it has a callback URL.
    pub fn begin(&self, job: &mut Job) {
        let (Some(event), Some(_)) = (job.event(), &job.callback_url) else {
            return;
        };
        job.webhook = Some(Delivery {
            id: format!("msg_{}", Uuid::now_v7().simple()),
            event: event.into(),
            state: DeliveryState::Pending,
            next_attempt_at: Some(Utc::now() + self.schedule[0]),
            attempts: Vec::new(),
        });
    }

    /// Runs the webhook attempts the queue hands to this process, until `stop`: each in a task
    /// of its own, so that a slow receiver holds up no other; one at a time per job.
    pub async fn consume(&self, store: &Arc<Store>, queue: &Arc<Queue>, stop: &CancellationToken) {
        while let Some(turn) = queue.take_webhook(stop).await {
            if !self.in_flight.lock().expect("lock").insert(turn.id) {
                // An attempt for this job is under way. This turn may be for a delivery that
                // replaced it (the job was retried meanwhile): look again shortly; a turn with
                // nothing due does nothing.
                let how = match queue.schedule_webhook(turn.id, Duration::from_secs(1)).await {
                    Ok(()) => Settle::Ack,
                    Err(_) => Settle::Requeue,
                };
                queue.settle_webhook(turn, how).await;
                continue;
            }
            let (this, store, queue) = (self.clone(), store.clone(), queue.clone());
            tokio::spawn(async move {
                let id = turn.id;
                this.take_turn(&store, &queue, turn).await;
                this.in_flight.lock().expect("lock").remove(&id);
            });
        }
    }

    /// One due attempt: made, recorded, and the next one scheduled if the delivery goes on.
    async fn take_turn(&self, store: &Store, queue: &Queue, turn: crate::queue::WebhookTurn) {
        let id = turn.id;
        let how = match self.step(store, id).await {
            Ok(None) => Settle::Ack,
            Ok(Some(wait)) => match queue.schedule_webhook(id, wait).await {
                Ok(()) => Settle::Ack,
                Err(e) => {
                    log::warn!("job {id}: next webhook attempt not queued ({e})");
                    Settle::Requeue
                }
            },
            Err(e) => {
                log::warn!("job {id}: webhook state unavailable ({e})");
                Settle::Requeue
            }
        };
        if how == Settle::Requeue {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        queue.settle_webhook(turn, how).await;
    }

    /// Makes the attempt of a job's pending delivery if it is due and records it. Returns how
    /// long to wait before calling again, or `None` when nothing is pending any more.
    pub async fn step(&self, store: &Store, id: Uuid) -> Result<Option<Duration>, crate::jobs::StoreError> {
        let (job, d, url) = match due(store, id).await? {
            Due::Now(job, d, url) => (job, d, url),
            Due::Later(wait) => return Ok(Some(wait)),
            Due::Nothing => return Ok(None),
        };
        // An endpoint that answered 410 Gone gets nothing more, from any job.
        if store.endpoint_gone(&url).await? {
            save(store, id, &d, None, DeliveryState::Gone, Duration::ZERO).await?;
            return Ok(None);
        }
        // Each attempt is a span of the job's trace, with the receiver's answer.
        let parent = crate::trace::parent(job.traceparent.as_deref());
        let attrs = match crate::trace::enabled() {
            true => vec![
                crate::trace::KeyValue::new("meshroom.job.id", id.to_string()),
                crate::trace::KeyValue::new("meshroom.webhook.attempt", d.attempts.len() as i64 + 1),
            ],
            false => Vec::new(),
        };
        let span = crate::trace::start("webhook attempt", crate::trace::SpanKind::Client, &parent, attrs);
        let (attempt, retry_after) = self.send(&url, &d, &job).await;
        if let Some(s) = attempt.status {
            crate::trace::annotate(
                &span,
                vec![crate::trace::KeyValue::new("http.response.status_code", s as i64)],
            );
        }
        let failed = !attempt.status.is_some_and(|s| (200..300).contains(&s));
        crate::trace::end(&span, failed.then_some("not delivered"), None);
        if attempt.status == Some(410) {
            store.mark_endpoint_gone(&url).await?;
        }
        let done = d.attempts.len() + 1;
        let state = self.judge(&attempt, done);
        crate::logging::with_trace(id, job.traceparent.as_deref(), || {
            self.observe(id, &d, done, &attempt, state)
        });
        let delay = self.schedule.get(done).copied().unwrap_or_default().max(retry_after);
        save(store, id, &d, Some(attempt), state, delay).await?;
        Ok((state == DeliveryState::Pending).then_some(delay))
    }

    /// The attempt, unless the egress policy refuses the address: then none is made, for good.
    async fn send(&self, url: &str, d: &Delivery, job: &Job) -> (Attempt, Duration) {
        let allowed = reqwest::Url::parse(url)
            .map_err(|_| egress::Blocked::Host)
            .and_then(|u| self.egress.check(&u));
        match allowed {
            Ok(()) => self.attempt(&job.tenant, url, d, &payload(job, &d.event)).await,
            Err(why) => {
                let error = Some(format!("{BLOCKED}{why}"));
                let attempt = Attempt {
                    at: Utc::now(),
                    status: None,
                    error,
                };
                (attempt, Duration::ZERO)
            }
        }
    }

    /// The delivery's state after its `done`-th attempt.
    fn judge(&self, attempt: &Attempt, done: usize) -> DeliveryState {
        let blocked = attempt.error.as_deref().is_some_and(|e| e.starts_with(BLOCKED));
        match attempt.status {
            Some(s) if (200..300).contains(&s) => DeliveryState::Delivered,
            Some(410) => DeliveryState::Gone,
            _ if done >= self.schedule.len() || blocked => DeliveryState::Failed,
            _ => DeliveryState::Pending,
        }
    }

    /// The attempt's log line and metric.
    fn observe(&self, id: Uuid, d: &Delivery, done: usize, attempt: &Attempt, state: DeliveryState) {
        let answer = attempt.status.map(|s| s.to_string()).or(attempt.error.clone());
        log::info!(
            "job {id}: webhook {} attempt {done}: {}",
            d.event,
            answer.unwrap_or_default()
        );
        let outcome = match (state, attempt.status) {
            (DeliveryState::Delivered, _) => "delivered",
            (DeliveryState::Gone, _) => "gone",
            (_, Some(_)) => "refused",
            (_, None) => "unreachable",
        };
        self.attempts.with_label_values(&[outcome]).inc();
    }

    /// The delay before the first attempt of a delivery just begun.
    pub fn first_delay(&self) -> Duration {
        self.schedule[0]
    }

    /// One POST; returns the recorded attempt and any Retry-After the receiver asked for.
    async fn attempt(&self, tenant: &str, url: &str, d: &Delivery, body: &[u8]) -> (Attempt, Duration) {
        let at = Utc::now();
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", at.timestamp().to_string());
        if let Some(key) = self.tenant_keys.get(tenant).or(self.key.as_ref()) {
            req = req.header("webhook-signature", sign(key, &d.id, at.timestamp(), body));
        }
        match req.body(body.to_vec()).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = match status {
                    429 | 502 | 503 | 504 => resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(86_400)))
                        .unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                let error = resp
                    .status()
                    .is_redirection()
                    .then(|| "redirect not followed".to_string());
                (
                    Attempt {
                        at,
                        status: Some(status),
                        error,
                    },
                    retry_after,
                )
            }
            Err(e) => {
                let reason = match egress::is_blocked(&e) {
                    Some(why) => format!("{BLOCKED}{why}"),
                    None if e.is_timeout() => "timed out".to_string(),
                    None => e.without_url().to_string(),
                };
                (
                    Attempt {
                        at,
                        status: None,
                        error: Some(reason),
                    },
                    Duration::ZERO,
                )
            }
        }
    }
}

/// The body: the job as `GET /jobs/{id}` shows it, plus the event, without the delivery record
/// itself (so every attempt sends the same bytes).
pub fn payload(job: &Job, event: &str) -> Vec<u8> {
    let mut v = serde_json::to_value(crate::jobs::JobView::from(job.clone())).expect("jobs serialize");
    if let Some(map) = v.as_object_mut() {
        map.remove("webhook");
        map.remove("updated_at");
        map.insert("event".into(), event.into());
    }
    serde_json::to_vec(&v).expect("values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_event_and_is_stable_across_attempts() {
        let mut job = Job::new("draft".into(), 60);
        job.callback_url = Some("http://127.0.0.1:1/hook".into());
        job.finish(crate::jobs::Status::Succeeded, None);
        let hooks = Webhooks::new(
            &Default::default(),
            None,
            &Default::default(),
            crate::metrics::Metrics::default().webhook_attempts,
            &Egress::default(),
        );
        hooks.begin(&mut job);
        let first = payload(&job, "job.succeeded");
        job.webhook.as_mut().unwrap().attempts.push(Attempt {
            at: Utc::now(),
            status: Some(503),
            error: None,
        });
        job.updated_at = Utc::now();
        assert_eq!(payload(&job, "job.succeeded"), first);
        let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(v["event"], "job.succeeded");
        assert_eq!(v["status"], "succeeded");
    }
}
