//! Job state in SQL: idempotency across replicas, full filtered pages, no stall on deleted jobs,
//! nothing lost between commit and publish, and an all-in-one killed mid-burst. Each test prints
//! its figures.

use crate::cluster::*;
use crate::helpers::*;
use meshroom_svc::http::JobPage;

use crate::procs::*;
use meshroom_svc::jobs::{Db, Job, JobView, Stage, Status, Store};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn idempotency_holds_across_two_serve_replicas() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.serve("a").await, c.serve("b").await);
    let url = c.edge.add("p.jpg", photo(0));
    let started = Instant::now();
    let mut answers: HashMap<String, BTreeSet<String>> = HashMap::new();
    // 100 keys, ten at a time; each key gets 8 concurrent submits, half to each replica.
    for chunk in (0..100).collect::<Vec<_>>().chunks(10) {
        let sends = chunk.iter().flat_map(|k| {
            let key = format!("key-{k}");
            (0..8).map(move |i| (key.clone(), i))
        });
        let results = futures_util::future::join_all(sends.map(|(key, i)| {
            let api = if i % 2 == 0 { a.api() } else { b.api() };
            let body = json!({"image_urls": [url]});
            async move {
                let resp = api
                    .client
                    .post(api.url("/api/v1/jobs"))
                    .header("idempotency-key", &key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 202, "{key}");
                let job: JobView = resp.json().await.unwrap();
                (key, job.id.to_string())
            }
        }))
        .await;
        for (key, id) in results {
            answers.entry(key).or_default().insert(id);
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(answers.len(), 100);
    for (key, ids) in &answers {
        assert_eq!(ids.len(), 1, "{key} named {ids:?}");
    }
    let store = Store::new(Db::open(&c.db.url, 2).await.unwrap());
    let (jobs, next) = store.list(&Default::default(), 1000, None).await.unwrap();
    assert_eq!((jobs.len(), next), (100, None), "exactly one job per key");
    eprintln!("idempotency across replicas: 800 submits of 100 keys made 100 jobs in {elapsed:?}");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn filtered_pages_are_full_and_stable_under_inserts_on_sqlite_and_postgres() {
    let services = Services::from_env();
    let db = TestDatabase::create(&services, &namespace()).await;
    let sqlite = spawn_app().await;
    let url = db.url.clone();
    let postgres = spawn_app_with(move |c| c.secrets.database_url = Some(url.into()), vec![]).await;
    for app in [&sqlite, &postgres] {
        let kind = app.app.jobs.db().kind();
        // 1,000 jobs, 1% failed, the others canceled, stored directly: final, so no worker
        // takes them (the outbox would queue enqueued ones).
        let mut failed = Vec::new();
        for i in 0..1000 {
            let mut job = Job::new("draft".into(), 60);
            if i % 100 == 7 {
                job.finish(Status::Failed, None);
                failed.push(job.id);
            } else {
                job.finish(Status::Canceled, None);
            }
            app.app.jobs.insert(job).await.unwrap();
        }
        failed.reverse(); // newest first
                          // Pages of 3 while jobs keep arriving: every page full until the last, no job twice.
        let inserter = {
            let store = app.app.jobs.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let mut job = Job::new("draft".into(), 60);
                    job.finish(Status::Failed, None);
                    store.insert(job).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let first: JobPage = app
            .get("/api/v1/jobs?status=failed&limit=3")
            .await
            .json()
            .await
            .unwrap();
        let mut seen: Vec<String> = Vec::new();
        let mut page = first;
        let mut requests = 1;
        loop {
            let jobs = &page.jobs;
            seen.extend(jobs.iter().map(|j| j.id.to_string()));
            assert!(jobs.iter().all(|j| j.status == Status::Failed));
            let Some(cursor) = page.next_cursor else {
                break;
            };
            assert_eq!(jobs.len(), 3, "{kind}: a page with a cursor is full");
            page = app
                .get(&format!("/api/v1/jobs?status=failed&limit=3&cursor={cursor}"))
                .await
                .json()
                .await
                .unwrap();
            requests += 1;
        }
        inserter.await.unwrap();
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{kind}: no job twice");
        // The 10 failed jobs that existed before paging began are all there, in order, at the end.
        let tail: Vec<String> = failed.iter().map(|id| id.to_string()).collect();
        assert_eq!(seen[seen.len() - 10..], tail[..], "{kind}");
        // A filter that matches nothing answers at once, with no cursor.
        let none: Value = app
            .get("/api/v1/jobs?status=succeeded&limit=20")
            .await
            .json()
            .await
            .unwrap();
        assert!(none.get("next_cursor").is_none(), "no cursor, not even null: {none}");
        let none: JobPage = serde_json::from_value(none).unwrap();
        assert_eq!(none.jobs.len(), 0);
        let by_pipeline: JobPage = app
            .get("/api/v1/jobs?pipeline=colmap-sparse")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(by_pipeline.jobs.len(), 0);
        eprintln!(
            "{kind}: {} failed jobs in {requests} pages of 3 while 50 were added",
            seen.len()
        );
    }
}

#[tokio::test]
async fn a_deleted_queued_job_causes_no_stall() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let first = app
        .submit(json!({"image_urls": [edge.add(&Fake::Slow.image(), photo(0))]}))
        .await;
    let deleted = app.submit(json!({"image_urls": [edge.add("p.jpg", photo(1))]})).await;
    let next = app.submit(json!({"image_urls": [edge.add("q.jpg", photo(2))]})).await;
    assert_eq!(app.delete(&format!("/api/v1/jobs/{deleted}")).await.status(), 204);
    let done = app.finished(&first, 60).await;
    let after = app.finished(&next, 30).await;
    let gap = after.started_at.unwrap() - done.finished_at.unwrap();
    assert!(
        gap < chrono::Duration::seconds(2),
        "the worker idled {gap} after a deleted job"
    );
    eprintln!(
        "deleted queued job: the next job started {} ms after the previous one ended",
        gap.num_milliseconds()
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_job_stored_while_the_broker_is_unreachable_is_queued_once_it_is_back() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    // A replica whose broker is unreachable: it stores the job, cannot publish, and then dies.
    let mut env = c.env.clone();
    env.push((
        "MESHROOM_SVC_AMQP_URL".into(),
        "amqp://guest:guest@127.0.0.1:1/%2f".into(),
    ));
    let data = c.dir.path().join("lonely").display().to_string();
    let lonely = Proc::start(c.dir.path(), &["serve", "--data-dir", &data], Some(free_port()), &env).await;
    let started = Instant::now();
    let resp = lonely
        .api()
        .post_json("/api/v1/jobs", &json!({"image_urls": [c.edge.add("p.jpg", photo(0))]}))
        .await;
    let answered = started.elapsed();
    assert_eq!(resp.status(), 202, "stored is accepted");
    assert!(answered < Duration::from_secs(6), "answered in {answered:?}");
    let id = resp.json::<JobView>().await.unwrap().id.to_string();
    assert_eq!(
        lonely.api().get("/ready").await.status(),
        503,
        "not ready without a broker"
    );
    lonely.kill(); // between the commit and any publish
                   // A healthy replica and a worker: the outbox sweep publishes the job.
    let serve = c.serve("serve").await;
    let _worker = c.work("work", "none").await;
    let back = Instant::now();
    let job = serve.api().finished(&id, 60).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    let runs = invocations(c.dir.path())
        .iter()
        .filter(|r| r["job"] == id.as_str())
        .count();
    assert_eq!(runs, 1, "run once");
    eprintln!(
        "unpublished job: answered 202 in {answered:?} without a broker; done {:?} after a healthy replica started",
        back.elapsed()
    );
}

#[tokio::test]
async fn all_in_one_killed_mid_burst_keeps_every_accepted_job_and_resumes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let edge = Edge::start().await;
    let port = free_port();
    let svc = Proc::all_in_one(dir.path(), &data, port, &[]).await;
    let running = svc
        .api()
        .submit(json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(0))]}))
        .await;
    svc.api()
        .wait_until(&running, 20, |j| j.stage == Some(Stage::Reconstructing))
        .await;
    // Eight clients submit as fast as they can; the process is killed in the middle.
    let url = edge.add("p.jpg", photo(1));
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (api, accepted, url) = (Api::new(svc.api().base.clone()), accepted.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let sent = api
                        .client
                        .post(api.url("/api/v1/jobs"))
                        .json(&json!({"image_urls": [url]}))
                        .send();
                    // The kill cuts requests off: those are not counted as accepted.
                    let Ok(resp) = sent.await else { return };
                    if resp.status() != 202 {
                        return;
                    }
                    match resp.json::<JobView>().await {
                        Ok(job) => accepted.lock().unwrap().push(job.id.to_string()),
                        Err(_) => return, // killed while answering: not counted as accepted
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = svc.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for c in clients {
        let _ = c.await;
    }
    drop(svc);
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() > 10, "only {} accepted before the kill", accepted.len());
    // The SQLite file is intact.
    let url = format!("sqlite://{}", data.join("meshroom.db").display());
    let Db::Sqlite(pool) = Db::open(&url, 1).await.unwrap() else {
        unreachable!()
    };
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    pool.close().await;
    let restarted_at = Instant::now();
    let svc = Proc::all_in_one(dir.path(), &data, port, &[]).await;
    let up = restarted_at.elapsed();
    let api = svc.api();
    let up_at = Instant::now();
    // The interrupted job is taken again at once: no lease of the dead process to wait out.
    api.wait_until(&running, 10, |j| j.attempts == 2).await;
    let resumed = up_at.elapsed();
    assert!(
        resumed < Duration::from_secs(1),
        "resumed {resumed:?} after the API was up"
    );
    for id in &accepted {
        let job = api.job(id).await;
        assert_eq!(job["id"], id.as_str(), "accepted job {id} is there");
    }
    eprintln!(
        "all-in-one SIGKILL mid-burst: {} accepted jobs all present, integrity ok; API up {up:?} after restart, \
         interrupted job resumed {resumed:?} later",
        accepted.len()
    );
    api.post(&format!("/api/v1/jobs/{running}/cancel")).await;
}
