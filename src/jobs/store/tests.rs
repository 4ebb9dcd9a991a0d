//! Store tests on SQLite in memory (the distributed tests run the same statements on PostgreSQL).

use super::*;
use crate::error::Code;
use crate::jobs::ErrorInfo;

async fn store() -> Store {
    Store::new(Db::open("sqlite::memory:", 1).await.unwrap())
}

fn ids(page: &(Vec<Job>, Option<Uuid>)) -> (Vec<Uuid>, Option<Uuid>) {
    (page.0.iter().map(|j| j.id).collect(), page.1)
}

#[test]
fn keys_sort_by_creation_time() {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(key(a) < key(b));
    let t = Utc::now();
    assert!(id_floor(t - chrono::Duration::milliseconds(1)) <= key(Uuid::now_v7()));
    assert!(key(a) < id_floor(t + chrono::Duration::milliseconds(2)));
    // Times outside what an id can hold sort before or after every id.
    assert!(id_floor(DateTime::<Utc>::MAX_UTC) > key(b));
    assert!(id_floor(DateTime::<Utc>::MIN_UTC) < key(a));
}

#[tokio::test]
async fn lists_newest_first_with_cursors_and_filters() {
    let s = store().await;
    let mut all = Vec::new();
    for i in 0..5 {
        let pipeline = if i == 2 { "colmap-sparse" } else { "draft" };
        all.push(s.insert(Job::new(pipeline.into(), 60)).await.unwrap().job.id);
    }
    s.update(all[1], |j| j.finish(Status::Failed, None)).await.unwrap();
    let all_jobs = Filter::default();
    assert_eq!(
        ids(&s.list(&all_jobs, 2, None).await.unwrap()),
        (vec![all[4], all[3]], Some(all[3]))
    );
    assert_eq!(
        ids(&s.list(&all_jobs, 2, Some(all[3])).await.unwrap()),
        (vec![all[2], all[1]], Some(all[1]))
    );
    // The last page has no cursor, also when it is exactly full.
    assert_eq!(
        ids(&s.list(&all_jobs, 1, Some(all[1])).await.unwrap()),
        (vec![all[0]], None)
    );
    let failed = Filter {
        status: Some(Status::Failed),
        ..Filter::default()
    };
    assert_eq!(ids(&s.list(&failed, 10, None).await.unwrap()), (vec![all[1]], None));
    let colmap = Filter {
        pipeline: Some("colmap-sparse".into()),
        ..Filter::default()
    };
    assert_eq!(ids(&s.list(&colmap, 10, None).await.unwrap()), (vec![all[2]], None));
    let later = Filter {
        created_after: Some(Utc::now() + chrono::Duration::seconds(1)),
        ..Filter::default()
    };
    assert_eq!(ids(&s.list(&later, 10, None).await.unwrap()), (vec![], None));
    let earlier = Filter {
        created_before: Some(Utc::now() + chrono::Duration::seconds(1)),
        ..Filter::default()
    };
    assert_eq!(s.list(&earlier, 10, None).await.unwrap().0.len(), 5);
    assert_eq!(s.remove(all[2]).await.unwrap().as_deref(), Some("default"));
    assert!(s.remove(all[2]).await.unwrap().is_none());
    assert!(s.get(all[2]).await.unwrap().is_none());
}

#[tokio::test]
async fn a_filtered_page_is_full_however_rare_the_match() {
    let s = store().await;
    let mut failed = Vec::new();
    for i in 0..300 {
        let id = s.insert(Job::new("draft".into(), 60)).await.unwrap().job.id;
        if i % 100 == 0 {
            s.update(id, |j| j.finish(Status::Failed, None)).await.unwrap();
            failed.push(id);
        }
    }
    let filter = Filter {
        status: Some(Status::Failed),
        ..Filter::default()
    };
    let (page, next) = s.list(&filter, 2, None).await.unwrap();
    assert_eq!(
        page.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![failed[2], failed[1]]
    );
    let (page, next) = s.list(&filter, 2, next).await.unwrap();
    assert_eq!((page.len(), next), (1, None));
}

#[tokio::test]
async fn idempotency_key_returns_the_first_job() {
    let s = store().await;
    let mut a = Job::new("draft".into(), 60);
    a.idempotency_key = Some("k".into());
    let mut b = Job::new("draft".into(), 60);
    b.idempotency_key = Some("k".into());
    let first = s.insert(a).await.unwrap().job;
    assert_eq!(s.insert(b.clone()).await.unwrap().job.id, first.id);
    assert_eq!(s.find_idempotent("default", "k").await.unwrap().unwrap().id, first.id);
    s.remove(first.id).await.unwrap();
    assert!(s.find_idempotent("default", "k").await.unwrap().is_none());
    // Once the first is deleted, the key is free again.
    assert_eq!(s.insert(b.clone()).await.unwrap().job.id, b.id);
}

#[tokio::test]
async fn concurrent_inserts_share_commits_and_one_key_makes_one_job() {
    let s = std::sync::Arc::new(store().await);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut job = Job::new("draft".into(), 60);
                job.idempotency_key = (i % 2 == 0).then(|| format!("k{}", i % 4));
                (job.id, s.insert(job).await.unwrap().job.id)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    // 20 jobs without a key, and one for each of the keys k0 and k2.
    let (page, _) = s.list(&Filter::default(), 100, None).await.unwrap();
    assert_eq!(page.len(), 22);
    for key in ["k0", "k2"] {
        let first = s.find_idempotent("default", key).await.unwrap().unwrap().id;
        let named = answers.iter().filter(|(_, got)| *got == first).count();
        assert_eq!(named, 10, "every submit with {key} got its one job");
    }
}

#[tokio::test]
async fn concurrent_updates_are_all_kept() {
    let s = std::sync::Arc::new(store().await);
    let id = s.insert(Job::new("draft".into(), 60)).await.unwrap().job.id;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.update(id, |j| j.attempts += 1).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.get(id).await.unwrap().unwrap().attempts, 20);
}

#[tokio::test]
async fn outbox_hands_each_unpublished_job_to_one_taker() {
    let s = store().await;
    let id = s.insert(Job::new("draft".into(), 60)).await.unwrap().job.id;
    let soon = Utc::now() + chrono::Duration::seconds(1);
    assert!(s
        .unpublished(Utc::now() - chrono::Duration::seconds(5))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.unpublished(soon).await.unwrap()[0].id, id);
    assert!(s.take_unpublished(id, soon).await.unwrap());
    assert!(!s
        .take_unpublished(id, Utc::now() - chrono::Duration::seconds(5))
        .await
        .unwrap());
    s.published(&[id]).await.unwrap();
    assert!(s.unpublished(soon).await.unwrap().is_empty());
    // A retried job needs a message again.
    s.update(id, |j| {
        j.finish(Status::Failed, Some(ErrorInfo::new(Code::EngineFailed, "x")))
    })
    .await
    .unwrap();
    assert!(s.unpublished(soon).await.unwrap().is_empty());
    s.update(id, |j| j.reset_for_retry()).await.unwrap();
    assert_eq!(
        s.unpublished(Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn outbox_marks_live_in_their_own_rows_and_go_with_their_job() {
    let s = store().await;
    let id = s.insert(Job::new("draft".into(), 60)).await.unwrap().job.id;
    assert!(s.is_unpublished(id).await.unwrap(), "marked in the insert's commit");
    // Progress and heartbeats leave the mark alone; confirming removes it.
    s.update(id, |j| j.progress.percent = 50.0).await.unwrap();
    assert!(s.is_unpublished(id).await.unwrap());
    s.published(&[id, id, Uuid::now_v7()]).await.unwrap();
    assert!(!s.is_unpublished(id).await.unwrap());
    // A retry marks the job again, even when an older mark of it is still there.
    for _ in 0..2 {
        s.update(id, |j| j.finish(Status::Canceled, None)).await.unwrap();
        s.update(id, |j| j.reset_for_retry()).await.unwrap();
        assert!(s.is_unpublished(id).await.unwrap());
    }
    // Deleting the job deletes its mark: the sweep never meets a mark without a job.
    s.update(id, |j| j.finish(Status::Canceled, None)).await.unwrap();
    assert!(s.remove(id).await.unwrap().is_some());
    assert!(!s.is_unpublished(id).await.unwrap());
    let n: i64 = on!(s.db(), pool => sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(pool).await.unwrap());
    assert_eq!(n, 0);
}

#[tokio::test]
async fn sweeps_find_unfinished_expired_and_pending_webhook_jobs() {
    let s = store().await;
    let queued = s.insert(Job::new("draft".into(), 60)).await.unwrap().job.id;
    let done = s.insert(Job::new("draft".into(), 60)).await.unwrap().job.id;
    s.update(done, |j| j.finish(Status::Succeeded, None)).await.unwrap();
    assert_eq!(
        s.unfinished().await.unwrap().iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![queued]
    );
    let later = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(s.expired(later).await.unwrap(), vec![done]);
    s.update(done, |j| {
        j.webhook = Some(crate::jobs::Delivery {
            id: "msg".into(),
            event: "job.succeeded".into(),
            state: DeliveryState::Pending,
            next_attempt_at: None,
            attempts: vec![],
        })
    })
    .await
    .unwrap();
    assert!(
        s.expired(later).await.unwrap().is_empty(),
        "a pending webhook keeps its job"
    );
    assert_eq!(s.pending_webhooks().await.unwrap(), vec![done]);
}

#[tokio::test]
async fn gone_endpoints() {
    let s = store().await;
    assert!(!s.endpoint_gone("http://a/").await.unwrap());
    s.mark_endpoint_gone("http://a/").await.unwrap();
    s.mark_endpoint_gone("http://a/").await.unwrap();
    assert!(s.endpoint_gone("http://a/").await.unwrap());
    assert!(!s.endpoint_gone("http://b/").await.unwrap());
}
