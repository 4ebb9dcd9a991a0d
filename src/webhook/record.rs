//! A delivery's state in its job's row: whether an attempt is due, and recording one.

use crate::jobs::{Attempt, Delivery, DeliveryState, Job, Store, StoreError};
use chrono::Utc;
use std::time::Duration;
use uuid::Uuid;

/// Where a job's delivery stands.
pub(super) enum Due {
    /// No pending delivery (none, finished, or the job is gone).
    Nothing,
    /// Pending, not due for this long (an early message, or a restart).
    Later(Duration),
    /// Due now: the job, its delivery and the URL.
    Now(Box<Job>, Delivery, String),
}

/// Reads where job `id`'s delivery stands.
pub(super) async fn due(store: &Store, id: Uuid) -> Result<Due, StoreError> {
    let Some(job) = store.get(id).await? else {
        return Ok(Due::Nothing);
    };
    let (Some(d), Some(url)) = (job.webhook.clone(), job.callback_url.clone()) else {
        return Ok(Due::Nothing);
    };
    if d.state != DeliveryState::Pending {
        return Ok(Due::Nothing);
    }
    match d.next_attempt_at.and_then(|at| (at - Utc::now()).to_std().ok()) {
        Some(wait) if wait > Duration::from_millis(500) => Ok(Due::Later(wait)),
        _ => Ok(Due::Now(Box::new(job), d, url)),
    }
}

/// Records an attempt (if one was made) and the delivery's new state; the next attempt, if
/// pending, after `delay`. A retry of the job may have replaced the delivery meanwhile: then
/// nothing is written.
pub(super) async fn save(
    store: &Store,
    id: Uuid,
    d: &Delivery,
    attempt: Option<Attempt>,
    state: DeliveryState,
    delay: Duration,
) -> Result<(), StoreError> {
    store
        .update(id, |j| {
            if let Some(w) = j.webhook.as_mut().filter(|w| w.id == d.id) {
                w.attempts.extend(attempt.clone());
                w.state = state;
                w.next_attempt_at = (state == DeliveryState::Pending).then(|| Utc::now() + delay);
            }
        })
        .await?;
    Ok(())
}
