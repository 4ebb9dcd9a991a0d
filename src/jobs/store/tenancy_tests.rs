//! Tests of holding and quotas on a SQLite file with several connections, as all-in-one runs it
//! (the full tier runs the PostgreSQL side in tests/api/database.rs).

use super::*;
use crate::jobs::{Priority, Status};

async fn store(share: u32) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_file(&dir.path().join("jobs.db"), 8, crate::jobs::db::BUSY_TIMEOUT)
        .await
        .unwrap();
    (Store::sharing(db, share), dir)
}

fn job(tenant: &str) -> Job {
    let mut job = Job::new("draft".into(), 60);
    job.tenant = tenant.into();
    job
}

#[tokio::test]
async fn a_tenant_keeps_its_share_queued_and_the_rest_held() {
    let (s, _dir) = store(2).await;
    let mut held = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let inserted = s.insert(job("a")).await.unwrap();
        held.push(inserted.held);
        ids.push(inserted.job.id);
    }
    assert_eq!(held, [false, false, true, true, true]);
    assert!(!s.insert(job("b")).await.unwrap().held, "another tenant goes at once");
    let mut urgent = job("a");
    urgent.priority = Priority::High;
    let urgent = s.insert(urgent).await.unwrap();
    assert!(urgent.held);
    assert!(s.release(None).await.unwrap().is_empty(), "no room yet");
    // A worker takes one of a's queued jobs: the high-priority job goes next, then the oldest.
    s.update(ids[0], |j| j.status = Status::Processing).await.unwrap();
    let released = s.release(Some(&["a".to_string()])).await.unwrap();
    assert_eq!(released.iter().map(|j| j.id).collect::<Vec<_>>(), vec![urgent.job.id]);
    assert_eq!(s.held_count("a").await.unwrap(), 3);
    // A canceled held job is no longer held, and never released.
    s.update(ids[4], |j| j.finish(Status::Canceled, None)).await.unwrap();
    assert_eq!(s.held_count("a").await.unwrap(), 2);
}

#[tokio::test]
async fn an_insert_hands_over_the_older_jobs_it_releases() {
    let (s, _dir) = store(2).await;
    let quota = Quota {
        max_active_jobs: 100,
        ..Quota::default()
    };
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.insert(job("a")).await.unwrap().job.id);
    }
    // A worker took a queued job, and the release that should follow has not run (a replica
    // died in between, or the insert's release came first): the next insert makes room, and the
    // job it lets go is the oldest held one, not itself. Its submit must publish it: nobody else
    // would until the outbox sweep, and until then the tenant's turn is spent on a job with
    // no message.
    for (taken, older, quota) in [(ids[0], ids[2], None), (ids[1], ids[3], Some(&quota))] {
        s.update(taken, |j| j.status = Status::Processing).await.unwrap();
        let inserted = match quota {
            None => s.insert(job("a")).await.unwrap(),
            Some(q) => s.insert_within(job("a"), q).await.unwrap().unwrap(),
        };
        assert!(inserted.held);
        assert_eq!(inserted.released.iter().map(|j| j.id).collect::<Vec<_>>(), [older]);
    }
    assert!(s.insert(job("b")).await.unwrap().released.is_empty());
}

#[tokio::test]
async fn concurrent_releases_never_exceed_the_share() {
    let (s, _dir) = store(3).await;
    for _ in 0..30 {
        s.insert(job("a")).await.unwrap();
    }
    let queued = |s: &Store| {
        let db = s.db.clone();
        async move {
            let sql = "SELECT COUNT(*) FROM jobs WHERE status = 'enqueued' AND NOT held";
            let n: i64 = on!(&db, pool => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap());
            n
        }
    };
    assert_eq!(queued(&s).await, 3);
    let sql = "UPDATE jobs SET status = 'processing' WHERE status = 'enqueued' AND NOT held";
    on!(&s.db, pool => sqlx::query(sql).execute(pool).await.map(|_| ()).unwrap());
    let s = std::sync::Arc::new(s);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.release(None).await.unwrap().len() })
        })
        .collect();
    let mut released = 0;
    for t in tasks {
        released += t.await.unwrap();
    }
    assert_eq!(released, 3);
    assert_eq!(queued(&s).await, 3);
}

#[tokio::test]
async fn concurrent_submits_cannot_both_take_the_last_slot() {
    let (s, _dir) = store(0).await;
    let s = std::sync::Arc::new(s);
    let quota = Quota {
        max_active_jobs: 4,
        ..Quota::default()
    };
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.insert_within(job("a"), &quota).await.unwrap() })
        })
        .collect();
    let mut refused = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            refused.push(e);
        }
    }
    assert_eq!(refused.len(), 16);
    assert_eq!(refused[0], Exceeded::ActiveJobs { limit: 4, used: 4 });
    assert!(s.insert_within(job("b"), &quota).await.unwrap().is_ok(), "per tenant");
}

#[tokio::test]
async fn stored_bytes_and_gpu_seconds_have_quotas() {
    let (s, _dir) = store(0).await;
    let mut big = job("a");
    big.uploads.push(crate::jobs::Upload {
        name: "a.jpg".into(),
        size: 600,
    });
    let bytes = Quota {
        max_stored_bytes: 1000,
        ..Quota::default()
    };
    assert!(s.insert_within(big.clone(), &bytes).await.unwrap().is_ok());
    big.id = Uuid::now_v7();
    let refused = s.insert_within(big.clone(), &bytes).await.unwrap().unwrap_err();
    assert_eq!(
        refused,
        Exceeded::StoredBytes {
            limit: 1000,
            used: 600,
            adding: 600
        }
    );
    assert!(refused.to_string().contains("quota.max_stored_bytes is 1000"));
    let gpu = Quota {
        max_gpu_seconds_per_day: 10,
        ..Quota::default()
    };
    let mut ran = job("g");
    ran.gpu = true;
    ran.engine_ms = 12_000;
    ran.finish(Status::Succeeded, None);
    s.insert(ran).await.unwrap();
    let mut next = job("g");
    next.gpu = true;
    let refused = s.insert_within(next.clone(), &gpu).await.unwrap().unwrap_err();
    assert_eq!(refused, Exceeded::GpuSeconds { limit: 10, used: 12 });
    next.gpu = false;
    assert!(
        s.insert_within(next, &gpu).await.unwrap().is_ok(),
        "CPU jobs are not counted"
    );
}
