//! Distributed mode with real processes, a real RabbitMQ and a real S3 server (Garage): `serve`
//! replicas and `work` nodes that share nothing but the broker and the bucket.

use crate::cluster::*;
use crate::helpers::*;
use crate::procs::*;
use meshroom_svc::http::JobPage;
use meshroom_svc::jobs::{JobView, Status};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn replicas_share_jobs_cancel_and_downloads() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.serve("serve-a").await, c.serve("serve-b").await);
    let workers = (c.work("work-1", "none").await, c.work("work-2", "none").await);
    let (a, b) = (a.api(), b.api());

    // Submitted to A, visible through B at once, done by a worker, downloaded through B.
    let id = a
        .submit(json!({"image_urls": [c.edge.add("p.jpg", photo(0))], "metadata": {"n": 1}}))
        .await;
    assert_eq!(b.job(&id).await["metadata"]["n"], 1);
    let job = b.finished(&id, 60).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    let obj = job.results.iter().find(|r| r.name == "texturedMesh.obj").unwrap();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects.get(b.url(&obj.url)).send().await.unwrap();
    assert_eq!(resp.status(), 302, "{:?} {:?}", obj, resp.text().await);
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .contains("X-Amz-Signature="));
    let body = b.get(&obj.url).await.text().await.unwrap();
    assert!(body.starts_with("mtllib texturedMesh.mtl"), "{body}");
    let log = b.get(&format!("/api/v1/jobs/{id}/log")).await.text().await.unwrap();
    assert!(log.contains("Publish"), "{log}");

    // Uploaded through B, listed through A, newest first.
    let resp = b.upload(vec![("u.jpg", photo(1))], &[]).await;
    assert_eq!(resp.status(), 202);
    let up = resp.json::<JobView>().await.unwrap().id.to_string();
    assert_eq!(a.finished(&up, 60).await.status, Status::Succeeded);
    let page: JobPage = a.get("/api/v1/jobs?limit=1").await.json().await.unwrap();
    assert_eq!(page.jobs[0].id.to_string(), up);
    assert_eq!(page.next_cursor.map(|c| c.to_string()), Some(up.clone()));

    // A running job canceled through the other replica: the worker hears of it within 2 s.
    let hang = a
        .submit(json!({"image_urls": [c.edge.add(&Fake::Hang.image(), photo(2))]}))
        .await;
    b.wait_for(&hang, 30, |_| job_processes(&hang).len() >= 3).await;
    let asked = Instant::now();
    assert_eq!(b.post(&format!("/api/v1/jobs/{hang}/cancel")).await.status(), 202);
    a.wait_until(&hang, 10, |j| j.cancel_requested || j.status == Status::Canceled)
        .await;
    let heard = asked.elapsed();
    eprintln!("cancel reached the worker after {heard:?}");
    assert!(
        heard < Duration::from_secs(2),
        "cancel reached the worker after {heard:?}"
    );
    assert_eq!(a.finished(&hang, 20).await.status, Status::Canceled);
    assert!(job_processes(&hang).is_empty());
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0));

    // Each worker exports its own metrics; together they finished the three jobs (each counts
    // just after recording, so a moment after the job reads final).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut finished = 0;
        for w in [&workers.0, &workers.1] {
            assert_eq!(w.api().get("/ready").await.status(), 200);
            let text = w.api().get("/metrics").await.text().await.unwrap();
            finished += text
                .lines()
                .filter(|l| l.starts_with("meshroom_jobs_finished_total"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum::<u64>();
        }
        assert!(finished <= 3, "{finished} jobs counted finished");
        if finished == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{finished} of 3 jobs counted finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_worker_killed_mid_job_leaves_it_to_another() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let (w1, w2) = (c.work("work-1", "none").await, c.work("work-2", "none").await);
    let api = serve.api();
    let id = api
        .submit(json!({"image_urls": [c.edge.add(&Fake::Slow.image(), photo(0))]}))
        .await;
    api.wait_until(&id, 30, |j| j.progress.node_index >= Some(2)).await;
    let victim = c.worker_pid(&id).await.unwrap();
    let survivor = if w1.pid() == victim {
        w1.kill();
        w2
    } else {
        w2.kill();
        w1
    };
    let job = api.finished(&id, 60).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    assert_eq!(job.attempts, 2);
    assert_eq!(c.worker_pid(&id).await, Some(survivor.pid()));
    assert_eq!(job.results.len(), 3, "one result set");
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn sigterm_requeues_the_job_and_exits_zero() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let mut worker = c.work("work-1", "none").await;
    let api = serve.api();
    let id = api
        .submit(json!({"image_urls": [c.edge.add(&Fake::Hang.image(), photo(0))]}))
        .await;
    api.wait_for(&id, 30, |_| job_processes(&id).len() >= 3).await;
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(20).await;
    assert!(status.success(), "{status}");
    assert!(job_processes(&id).is_empty());
    let job = api.view(&id).await;
    assert_eq!(job.status, Status::Enqueued, "{job:#?}");
    assert_eq!(c.queue_counts("jobs.cpu").0, 1, "back in the queue");
    // Another worker takes it; a requeue on shutdown is not a lost attempt.
    let _next = c.work("work-2", "none").await;
    api.wait_until(&id, 30, |j| j.status == Status::Processing).await;
    let again = c.record(&id).await;
    assert_eq!((again.attempts, again.lost_attempts), (2, 0));
    api.post(&format!("/api/v1/jobs/{id}/cancel")).await;
    api.finished(&id, 20).await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn gpu_jobs_wait_for_gpu_workers_and_high_priority_goes_first() {
    let _broker = BROKER.read().await;
    // The broker's priorities are under test: no job of the one tenant is held back.
    let c = Cluster::new(&[("MESHROOM_SVC_SCHEDULING_QUEUED_PER_TENANT", "0")]).await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let url = c.edge.add("p.jpg", photo(0));
    let gpu_job = api.submit(json!({"image_urls": [url], "pipeline": "default"})).await;
    let normal: Vec<String> =
        futures_util::future::join_all((0..2).map(|_| api.submit(json!({"image_urls": [url]})))).await;
    let high = api.submit(json!({"image_urls": [url], "priority": "high"})).await;
    assert_eq!(c.queue_counts("jobs.cpu").0, 3);
    assert_eq!(c.queue_counts("jobs.gpu").0, 1);

    let _cpu = c.work("cpu", "none").await;
    let mut started = Vec::new();
    for id in normal.iter().chain([&high]) {
        let job = api.finished(id, 60).await;
        assert_eq!(job.status, Status::Succeeded);
        started.push((job.started_at.unwrap(), id.clone()));
    }
    started.sort();
    assert_eq!(started[0].1, high, "the high-priority job runs first");
    assert_eq!(
        api.view(&gpu_job).await.status,
        Status::Enqueued,
        "a CPU worker never takes a GPU job"
    );

    let _gpu = c.work("gpu", "0").await;
    assert_eq!(api.finished(&gpu_job, 60).await.status, Status::Succeeded);
    let runs = invocations(c.dir.path());
    let run = runs.iter().find(|r| r["job"] == gpu_job.as_str()).unwrap();
    assert_eq!(run["cuda"], "0", "pinned to its GPU");
    assert!(run["argv"].to_string().contains("\"photogrammetry\""));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_large_result_round_trips_through_s3_with_bounded_worker_memory() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let worker = c.work("work", "none").await;
    let api = serve.api();
    let mib = 300;
    let id = api
        .submit(json!({"image_urls": [c.edge.add(&Fake::Big(mib).image(), photo(0))]}))
        .await;
    let job = api.finished(&id, 120).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    let peak_kib = peak_rss_kib(worker.pid());
    let dense = job.results.iter().find(|r| r.name == "dense.ply").unwrap();
    assert_eq!(dense.size, mib << 20);
    // Download through the API's redirect, streaming, and compare with the fake's pattern.
    let resp = api.get(&dense.url).await;
    assert_eq!(resp.status(), 200);
    let pattern: Vec<u8> = (0..=255u8).collect();
    let (mut offset, mut stream) = (0usize, resp.bytes_stream());
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        for b in chunk.unwrap().iter() {
            assert_eq!(*b, pattern[offset % 256], "byte {offset}");
            offset += 1;
        }
    }
    assert_eq!(offset as u64, mib << 20);
    eprintln!("{mib} MiB result: worker peak RSS {} MiB", peak_kib / 1024);
    assert!(
        peak_kib < 100 * 1024,
        "worker peak RSS {peak_kib} KiB for a {mib} MiB result"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn all_in_one_runs_on_rabbitmq_and_s3_too() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let aio = Proc::all_in_one(c.dir.path(), &c.dir.path().join("aio"), free_port(), &c.env).await;
    let api = aio.api();
    let root: Value = api.get("/").await.json().await.unwrap();
    assert_eq!(
        (root["queue"]["kind"].as_str(), root["storage"].as_str()),
        (Some("rabbitmq"), Some("s3"))
    );
    let id = api
        .submit(json!({"image_urls": [c.edge.add("p.jpg", photo(0))], "callback_url": c.edge.hook_url()}))
        .await;
    assert_eq!(api.finished(&id, 60).await.status, Status::Succeeded);
    let hooks = c.edge.wait_hooks(1, 20).await;
    assert!(signature_valid(&hooks[0]));
}
