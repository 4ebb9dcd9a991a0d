//! Lifecycle transitions on SQLite in memory: no broker, no storage.

use super::*;
use crate::error::Code;
use crate::jobs::{Db, DeliveryState};

async fn setup() -> (Store, Webhooks) {
    let store = Store::new(Db::open("sqlite::memory:", 1).await.unwrap());
    let hooks = Webhooks::new(
        &crate::config::WebhookConfig::default(),
        None,
        &Default::default(),
        crate::metrics::Metrics::default().webhook_attempts,
        &crate::egress::Egress::new(&[]),
    );
    (store, hooks)
}

async fn new_job(store: &Store, callback: bool) -> Uuid {
    let mut job = Job::new("draft".into(), 60);
    job.callback_url = callback.then(|| "https://example.com/hook".into());
    store.insert(job).await.unwrap().job.id
}

fn worker(name: &str) -> Claimant<'_> {
    Claimant {
        worker: name,
        lease: Duration::from_secs(15),
        max_lost: 3,
    }
}

#[tokio::test]
async fn a_job_is_claimed_once_and_a_duplicate_delivery_waits() {
    let (s, h) = setup().await;
    let id = new_job(&s, false).await;
    let Some(Claim::Run(job)) = claim(&s, &h, id, &worker("a:1")).await.unwrap() else {
        panic!("the first claim runs it")
    };
    assert_eq!((job.status, job.attempts), (Status::Processing, 1));
    assert!(matches!(
        claim(&s, &h, id, &worker("b:2")).await.unwrap(),
        Some(Claim::Held)
    ));
    // The same worker (a redelivery after a reconnect) takes it again.
    assert!(matches!(
        claim(&s, &h, id, &worker("a:1")).await.unwrap(),
        Some(Claim::Run(_))
    ));
    assert!(claim(&s, &h, Uuid::now_v7(), &worker("a:1")).await.unwrap().is_none());
}

#[tokio::test]
async fn concurrent_claims_have_one_winner() {
    let (s, h) = setup().await;
    let id = new_job(&s, false).await;
    let names: Vec<String> = (0..8).map(|i| format!("w:{i}")).collect();
    let claims = futures_util::future::join_all(names.iter().map(|n| {
        let (s, h) = (&s, &h);
        async move { claim(s, h, id, &worker(n)).await.unwrap() }
    }))
    .await;
    let runs = claims.iter().filter(|c| matches!(c, Some(Claim::Run(_)))).count();
    assert_eq!(runs, 1, "{claims:?}");
}

#[tokio::test]
async fn a_stale_lease_is_taken_over_and_counted_then_poison() {
    let (s, h) = setup().await;
    let id = new_job(&s, true).await;
    // Three workers take it and die; the fourth delivery finds it poison.
    for attempt in 1..=4u32 {
        let name = format!("w:{attempt}");
        let claimed = claim(&s, &h, id, &worker(&name)).await.unwrap().unwrap();
        if attempt == 4 {
            assert!(matches!(claimed, Claim::Poison), "{claimed:?}");
            break;
        }
        assert!(matches!(claimed, Claim::Run(_)));
        release(&s, id).await.unwrap(); // its worker died: the lease lapses
    }
    let job = s.get(id).await.unwrap().unwrap();
    assert_eq!(job.status, Status::Failed);
    assert_eq!(job.error.unwrap().code, Code::PoisonJob);
    assert_eq!(job.webhook.unwrap().state, DeliveryState::Pending);
    assert!(matches!(
        claim(&s, &h, id, &worker("w:9")).await.unwrap(),
        Some(Claim::Done { webhook: true })
    ));
}

#[tokio::test]
async fn outcomes_are_recorded_with_their_webhook() {
    let (s, h) = setup().await;
    let id = new_job(&s, true).await;
    claim(&s, &h, id, &worker("a:1")).await.unwrap();
    record(&s, &h, id, &Outcome::Interrupted).await.unwrap();
    let job = s.get(id).await.unwrap().unwrap();
    assert_eq!((job.status, job.webhook.is_none()), (Status::Enqueued, true));
    assert!(matches!(
        claim(&s, &h, id, &worker("b:2")).await.unwrap(),
        Some(Claim::Run(_))
    ));
    let failure = Outcome::Failed(ErrorInfo::new(Code::EngineFailed, "boom"), Some("tail".into()));
    record(&s, &h, id, &failure).await.unwrap();
    let job = s.get(id).await.unwrap().unwrap();
    assert_eq!(job.status, Status::Failed);
    assert_eq!(job.log_tail.as_deref(), Some("tail"));
    assert_eq!(job.webhook.unwrap().event, "job.failed");
}

#[tokio::test]
async fn cancel_and_retry() {
    let (s, h) = setup().await;
    let queued = new_job(&s, false).await;
    assert!(matches!(
        cancel(&s, &h, queued).await.unwrap(),
        Some(Cancel::Canceled(_))
    ));
    assert!(matches!(
        cancel(&s, &h, queued).await.unwrap(),
        Some(Cancel::Final(Status::Canceled))
    ));
    let Some(Ok(job)) = retry(&s, queued).await.unwrap() else {
        panic!("retryable")
    };
    assert_eq!(job.status, Status::Enqueued);
    assert_eq!(retry(&s, queued).await.unwrap().unwrap().unwrap_err(), Status::Enqueued);

    let running = new_job(&s, false).await;
    claim(&s, &h, running, &worker("a:1")).await.unwrap();
    assert_eq!(heartbeat(&s, running).await.unwrap(), Some(false));
    assert!(matches!(
        cancel(&s, &h, running).await.unwrap(),
        Some(Cancel::Stopping(_))
    ));
    assert_eq!(heartbeat(&s, running).await.unwrap(), Some(true), "the worker sees it");
    record(&s, &h, running, &Outcome::Canceled).await.unwrap();
    let job = s.get(running).await.unwrap().unwrap();
    assert_eq!((job.status, job.cancel_requested), (Status::Canceled, false));
    assert!(s.remove(running).await.unwrap().is_some());
    assert_eq!(heartbeat(&s, running).await.unwrap(), None);
}
