//! Faults under load, with real processes, RabbitMQ and Garage: crashes of workers, the broker and
//! storage, forced disconnects, duplicate and poison deliveries. Each test states its figure.

use crate::cluster::*;
use crate::helpers::*;
use crate::procs::*;
use meshroom_svc::error::Code;
use meshroom_svc::http::JobPage;
use meshroom_svc::jobs::{DeliveryState, JobView, Stage, Status};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn poison_jobs_are_dead_lettered_after_the_configured_deliveries() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[("MESHROOM_SVC_QUEUE_MAX_DELIVERIES", "2")]).await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let body = json!({"image_urls": [c.edge.add(&Fake::Slow.image(), photo(0))], "callback_url": c.edge.hook_url()});
    let id = api.submit(body).await;
    // The worker dies on this job every time.
    for round in 1..=2 {
        let worker = c.work(&format!("w{round}"), "none").await;
        // Killed while its engine runs: its run is the round-th.
        let runs = || {
            invocations(c.dir.path())
                .iter()
                .filter(|r| r["job"] == id.as_str())
                .count()
        };
        api.wait_until(&id, 30, |j| runs() == round && j.stage == Some(Stage::Reconstructing))
            .await;
        assert_eq!(c.worker_pid(&id).await, Some(worker.pid()));
        worker.kill();
    }
    let _last = c.work("w3", "none").await;
    let job = api.finished(&id, 30).await;
    assert_eq!(job.status, Status::Failed);
    assert_eq!(job.error.as_ref().unwrap().code, Code::PoisonJob, "{job:#?}");
    let runs = invocations(c.dir.path())
        .iter()
        .filter(|r| r["job"] == id.as_str())
        .count();
    assert_eq!(runs, 2, "the engine ran exactly the configured number of times");
    assert_eq!(c.queue_counts("dead"), (1, 0));
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0));
    let hooks = c.edge.wait_hooks(1, 20).await;
    let event: Value = serde_json::from_slice(&hooks[0].body).unwrap();
    assert_eq!(event["event"], "job.failed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.edge.hooks().len(), 1, "one failure webhook");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_broker_restart_under_load_loses_no_accepted_job() {
    let _broker = BROKER.write().await;
    let (c, serve, _worker) = Cluster::with_serve_and_worker(&[]).await;
    let api = serve.api();
    let url = c.edge.add("p.jpg", photo(0));
    let restart = tokio::task::spawn_blocking(|| {
        std::thread::sleep(Duration::from_millis(500));
        let ctl = |args: &[&str]| {
            assert!(std::process::Command::new("rabbitmqctl")
                .args(args)
                .status()
                .unwrap()
                .success())
        };
        ctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(2));
        ctl(&["start_app"]);
        ctl(&["eval", "application:set_env(rabbit, consumer_timeout, 36000000)."]);
    });
    // The database accepts: a job submitted while the broker is down is stored, answered 202, and
    // published by the outbox sweep once the broker is back.
    let (mut accepted, mut seen_down) = (Vec::new(), 0);
    for _ in 0..40 {
        let resp = api.post_json("/api/v1/jobs", &json!({"image_urls": [url]})).await;
        match resp.status().as_u16() {
            202 => accepted.push(resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()),
            other => panic!("the API answered {other} while the broker restarted"),
        }
        if api.get("/ready").await.status() == 503 {
            seen_down += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restart.await.unwrap();
    assert!(seen_down > 0, "the broker was down for part of the run");
    // The worker consumes again soon after the broker is back.
    let back = Instant::now();
    let resp = api
        .post_json("/api/v1/jobs", &json!({"image_urls": [url], "priority": "high"}))
        .await;
    assert_eq!(resp.status(), 202);
    let probe = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    api.wait_until(&probe, 30, |j| j.status != Status::Enqueued).await;
    let resumed = back.elapsed();
    eprintln!("broker restart: the worker took a new job {resumed:?} after the broker was back");
    for id in &accepted {
        let job = api.finished(id, 90).await;
        assert_eq!(job.status, Status::Succeeded, "{job:#?}");
        let runs = invocations(c.dir.path())
            .iter()
            .filter(|r| r["job"] == id.as_str())
            .count();
        assert_eq!(runs, 1, "{id} ran once");
    }
    let page: JobPage = api.get("/api/v1/jobs?limit=100").await.json().await.unwrap();
    assert_eq!(page.jobs.len(), accepted.len() + 1, "and the probe");
    eprintln!(
        "broker restart: {} of 40 accepted (the broker was seen down {seen_down} times), all succeeded once, {:?} after its return",
        accepted.len(),
        back.elapsed()
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_restarted_worker_stops_what_its_killed_predecessor_left_running() {
    let _broker = BROKER.read().await;
    // One delivery allowed: the restarted worker dead-letters the job without running it, so only
    // its start-up clean-up can stop the orphans.
    let c = Cluster::new(&[("MESHROOM_SVC_QUEUE_MAX_DELIVERIES", "1")]).await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let worker = c.work("node-a", "none").await;
    let id = api
        .submit(json!({"image_urls": [c.edge.add(&Fake::Hang.image(), photo(0))]}))
        .await;
    api.wait_for(&id, 30, |_| job_processes(&id).len() >= 3).await;
    // Let the run settle before the kill.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let orphans = process_tree(&job_processes(&id));
    worker.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = still_running(&orphans);
    assert!(
        !left.is_empty(),
        "the engine outlives a SIGKILLed worker: none of {orphans:?}"
    );
    let _restarted = c.work("node-a", "none").await;
    assert!(
        job_processes(&id).is_empty(),
        "the new worker stopped them before taking jobs"
    );
    assert_eq!(still_running(&orphans), Vec::<i32>::new(), "by parent and session too");
    assert_eq!(api.finished(&id, 30).await.error.unwrap().code, Code::PoisonJob);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_job_delivered_twice_runs_once() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let _workers = (c.work("w1", "none").await, c.work("w2", "none").await);
    let api = serve.api();
    let id = api
        .submit(json!({"image_urls": [c.edge.add(&Fake::Slow.image(), photo(0))]}))
        .await;
    api.wait_until(&id, 30, |j| j.stage == Some(Stage::Reconstructing))
        .await;
    publish_again(&c, &id).await; // while it runs on one worker: the other must not run it too
    let job = api.finished(&id, 90).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    publish_again(&c, &id).await; // after it ended
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = invocations(c.dir.path())
        .iter()
        .filter(|r| r["job"] == id.as_str())
        .count();
    assert_eq!(runs, 1, "the engine ran once");
    let after = api.view(&id).await;
    assert_eq!(after.attempts, 1);
    assert_eq!(after.results, job.results, "stored results unchanged");
    assert_eq!(after.finished_at, job.finished_at);
    // The worker that held the duplicate acks it at its next look (every 3 s) after the outcome.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.queue_counts("jobs.cpu") != (0, 0) {
        assert!(Instant::now() < deadline, "{:?}", c.queue_counts("jobs.cpu"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn forced_disconnects_during_submits_give_quick_answers_and_lose_nothing() {
    let _broker = BROKER.write().await;
    // Jobs of a fraction of a second: the point is the submits, not the engine.
    let (c, serve, _worker) = Cluster::with_serve_and_worker(&[("FAKE_MESHROOM_MODE", "instant")]).await;
    let url = c.edge.add("p.jpg", photo(0));
    let t0 = Instant::now();
    let closing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Two clients submit until the last disconnect, so that every disconnect meets requests in
    // flight.
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (api, url, closing) = (Api::new(serve.api().base.clone()), url.clone(), closing.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                while closing.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = t0.elapsed();
                    let resp = api.post_json("/api/v1/jobs", &json!({"image_urls": [url]})).await;
                    let status = resp.status().as_u16();
                    let id = resp
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|j| j["id"].as_str().map(String::from));
                    done.push((started, t0.elapsed(), status, id));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done
            })
        })
        .collect();
    let flag = closing.clone();
    let closer = tokio::task::spawn_blocking(move || {
        let mut windows = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(700));
            // The connections close somewhere within the command's run.
            let before = t0.elapsed();
            let status = std::process::Command::new("rabbitmqctl")
                .args(["close_all_connections", "closed by the test"])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            windows.push((before, t0.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(300));
        flag.store(false, std::sync::atomic::Ordering::SeqCst);
        windows
    });
    let closes = closer.await.unwrap();
    let mut requests = Vec::new();
    for client in clients {
        requests.extend(client.await.unwrap());
    }
    for (before, after) in &closes {
        let in_flight = requests.iter().filter(|(s, e, ..)| s <= after && before <= e).count();
        assert!(
            in_flight > 0,
            "no request in flight during the disconnect at {before:?}-{after:?}"
        );
    }
    let slowest = requests.iter().map(|(s, e, ..)| *e - *s).max().unwrap();
    let mut accepted = Vec::new();
    for (_, _, status, id) in &requests {
        assert_eq!(*status, 202, "a stored job is accepted, broker or not");
        accepted.push(id.clone().unwrap());
    }
    assert!(slowest < Duration::from_secs(6), "an answer took {slowest:?}");
    let back = Instant::now();
    for id in &accepted {
        assert_eq!(serve.api().finished(id, 90).await.status, Status::Succeeded, "{id}");
        let runs = invocations(c.dir.path())
            .iter()
            .filter(|r| r["job"] == id.as_str())
            .count();
        assert_eq!(runs, 1, "{id} ran once");
    }
    eprintln!(
        "forced disconnects: {} submits, 3 disconnects each during requests, all accepted and done once {:?} later; slowest answer {slowest:?}",
        accepted.len(),
        back.elapsed()
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn jobs_survive_workers_killed_at_random() {
    let _broker = BROKER.read().await;
    // Jobs of about 5 s; a job may be hit several times, so no poison limit here.
    let extra = [
        ("MESHROOM_SVC_QUEUE_MAX_DELIVERIES", "50"),
        ("FAKE_MESHROOM_NODE_SECONDS", "0.5"),
    ];
    let c = Cluster::new(&extra).await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let mut workers = [Some(c.work("w0", "none").await), Some(c.work("w1", "none").await)];
    let url = c.edge.add("p.jpg", photo(0));
    let body = json!({"image_urls": [url], "callback_url": c.edge.hook_url()});
    let ids: Vec<String> = futures_util::future::join_all((0..20).map(|_| api.submit(body.clone()))).await;

    // Ten SIGKILLs at pseudo-random moments (fixed seed), each worker restarted on its folder.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1500 + next() % 3500)).await;
        let i = (next() % 2) as usize;
        workers[i].take().unwrap().kill();
        workers[i] = Some(c.work(&format!("w{i}"), "none").await);
    }
    let mut attempts = 0;
    for id in &ids {
        let job = api.finished(id, 300).await;
        assert_eq!(job.status, Status::Succeeded, "{job:#?}");
        assert_eq!(job.results.len(), 3, "one result set");
        attempts += job.attempts as u64;
    }
    // One job.succeeded webhook id per job (a retry of a delivery keeps its id).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ids_by_job: std::collections::HashMap<String, std::collections::HashSet<String>> = Default::default();
    for hook in c.edge.hooks() {
        let event: Value = serde_json::from_slice(&hook.body).unwrap();
        assert_eq!(event["event"], "job.succeeded");
        let job = event["id"].as_str().unwrap().to_string();
        ids_by_job
            .entry(job)
            .or_default()
            .insert(hook.headers["webhook-id"].clone());
    }
    for id in &ids {
        assert_eq!(
            ids_by_job.get(id).map(|s| s.len()),
            Some(1),
            "job {id}: webhook ids {:?}",
            ids_by_job.get(id)
        );
    }
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0), "queue empty at the end");
    eprintln!("random kills: 20 of 20 succeeded after 10 SIGKILLs, {attempts} attempts in all");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_thousand_accepted_jobs_survive_a_broker_sigkill() {
    use futures_util::StreamExt;
    let _broker = BROKER.write().await;
    // Every job in the broker (none held back for fairness): the broker's durability is under test.
    let c = Cluster::new(&[
        ("FAKE_MESHROOM_MODE", "instant"),
        ("MESHROOM_SVC_SCHEDULING_QUEUED_PER_TENANT", "0"),
    ])
    .await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let url = c.edge.add("p.png", tiny_png());
    let ids: Vec<String> = futures_util::stream::iter(0..1000)
        .map(|_| api.submit(json!({"image_urls": [url]})))
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(ids.len(), 1000, "1,000 jobs accepted with 202");
    assert_eq!(c.queue_counts("jobs.cpu").0, 1000);

    tokio::task::spawn_blocking(crash_and_restart_broker).await.unwrap();
    assert_eq!(c.queue_counts("jobs.cpu").0, 1000, "every accepted job is still queued");

    let started = Instant::now();
    let _workers = (c.work("w1", "none").await, c.work("w2", "none").await);
    let mut attempts = 0;
    for id in &ids {
        let job = api.finished(id, 600).await;
        assert_eq!(job.status, Status::Succeeded, "{job:#?}");
        attempts += job.attempts as u64;
    }
    assert_eq!(attempts, 1000, "one outcome per job");
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0));
    eprintln!(
        "broker SIGKILL: 1000 of 1000 accepted jobs completed, in {:?} after the restart",
        started.elapsed()
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn storage_stopped_mid_upload_never_leaves_a_job_succeeded_with_missing_files() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let mut garage = PrivateGarage::start(&c.dir.path().join("garage")).await;
    let mut env = c.env.clone();
    for (k, v) in [
        ("MESHROOM_SVC_STORAGE_ENDPOINT", garage.endpoint()),
        ("MESHROOM_SVC_STORAGE_BUCKET", "private".to_string()),
        ("AWS_ACCESS_KEY_ID", garage.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret_key.clone()),
        // Retries that outlast the 3 s outage: the job should succeed, and its files be whole.
        ("MESHROOM_SVC_WORKER_RETRIES", "8".to_string()),
        ("MESHROOM_SVC_WORKER_RETRY_DELAY_MS", "300".to_string()),
    ] {
        env.push((k.to_string(), v));
    }
    let start = |name: &str, args: Vec<String>, port| {
        let (dir, env) = (c.dir.path().to_path_buf(), env.clone());
        let data = dir.join(name).display().to_string();
        async move {
            let mut all: Vec<String> = args;
            all.extend(["--data-dir".into(), data]);
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            Proc::start(&dir, &args, port, &env).await
        }
    };
    let serve = start("serve", vec!["serve".into()], Some(free_port())).await;
    let _worker = start(
        "work",
        vec!["work".into(), "--gpu".into(), "none".into()],
        Some(free_port()),
    )
    .await;
    let api = serve.api();
    let mib = 200;
    let id = api
        .submit(json!({"image_urls": [c.edge.add(&Fake::Big(mib).image(), photo(0))]}))
        .await;
    api.wait_until(&id, 60, |j| j.stage == Some(Stage::Uploading)).await;
    garage.crash();
    // Job state lives in the database: it stays readable while storage is down.
    let during = api.get(&format!("/api/v1/jobs/{id}")).await.status().as_u16();
    assert_eq!(during, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    garage.resume().await;
    let mut job = None;
    for _ in 0..1200 {
        let resp = api.get(&format!("/api/v1/jobs/{id}")).await;
        let status = resp.status().as_u16();
        assert!(
            status == 200 || status == 503,
            "200, or 503 while storage is down: {status}"
        );
        if resp.status() == 200 {
            let seen: JobView = resp.json().await.unwrap();
            let done = seen.status.is_final();
            job = Some(seen);
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = job.expect("the job was read");
    match job.status {
        Status::Succeeded => {
            // Every listed file is really there, whole.
            for r in &job.results {
                let resp = api.get(&r.url).await;
                assert_eq!(resp.status(), 200, "{r:?}");
                assert_eq!(resp.content_length(), Some(r.size), "{r:?}");
            }
            assert_eq!(file(&job, "dense.ply").size, mib << 20);
            // And its bytes are the engine's, in order: the fake writes byte i as i mod 256.
            let url = file(&job, "dense.ply").url.clone();
            let mut body = api.get(&url).await.bytes_stream();
            let mut offset = 0u64;
            while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                for b in chunk.unwrap() {
                    assert_eq!(b as u64, offset % 256, "dense.ply differs at byte {offset}");
                    offset += 1;
                }
            }
            assert_eq!(offset, mib << 20);
        }
        Status::Failed => assert_eq!(job.error.as_ref().unwrap().code, Code::StorageError, "{job:#?}"),
        _ => panic!("the job did not end: {job:#?}"),
    }
    eprintln!(
        "S3 stopped mid-upload: job {} after {} attempt(s)",
        job.status.as_str(),
        job.attempts
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_pending_webhook_outlives_every_process() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[("MESHROOM_SVC_WEBHOOK_SCHEDULE_SECS", "0,4")]).await;
    c.edge.answer_hooks_with(&[503]);
    let serve = c.serve("serve").await;
    let worker = c.work("work", "none").await;
    let body = json!({"image_urls": [c.edge.add("p.jpg", photo(0))], "callback_url": c.edge.hook_url()});
    let id = serve.api().submit(body).await;
    c.edge.wait_hooks(1, 30).await;
    serve
        .api()
        .wait_until(&id, 10, |j| j.webhook.as_ref().is_some_and(|w| w.attempts.len() == 1))
        .await;
    // Every process dies between the attempts; the next attempt waits in RabbitMQ.
    worker.kill();
    serve.kill();
    let serve = c.serve("serve-2").await;
    let hooks = c.edge.wait_hooks(2, 30).await;
    assert_eq!(hooks[0].headers["webhook-id"], hooks[1].headers["webhook-id"]);
    assert!(signature_valid(&hooks[1]));
    serve
        .api()
        .wait_until(&id, 10, webhook_is(DeliveryState::Delivered))
        .await;
}
