//! Distributed mode with real processes, a real RabbitMQ and a real S3 server (Garage): `serve`
//! replicas and `work` nodes that share nothing but the broker and the bucket.

use crate::helpers::*;
use crate::procs::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// Tests that restart the broker take it alone; the others share it.
pub static BROKER: RwLock<()> = RwLock::const_new(());

/// Processes sharing one namespace (queue prefix and key prefix).
struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    edge: Edge,
    namespace: String,
}

impl Cluster {
    async fn new(extra: &[(&str, &str)]) -> Cluster {
        let namespace = namespace();
        let mut env = Services::from_env().env(&namespace);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            env,
            edge: Edge::start().await,
            namespace,
        }
    }

    async fn serve(&self, name: &str) -> Proc {
        let data = self.dir.path().join(name).display().to_string();
        Proc::start(
            self.dir.path(),
            &["serve", "--data-dir", &data],
            Some(free_port()),
            &self.env,
        )
        .await
    }

    /// A worker, with its /health, /ready and /metrics on a port of its own.
    async fn work(&self, name: &str, gpu: &str) -> Proc {
        let data = self.dir.path().join(name).display().to_string();
        Proc::start(
            self.dir.path(),
            &["work", "--gpu", gpu, "--data-dir", &data],
            Some(free_port()),
            &self.env,
        )
        .await
    }

    /// The queues of this namespace, deleted when the test ends: the broker is shared, and must
    /// not pile up queues from run to run.
    fn queue_names(&self) -> Vec<String> {
        [
            "jobs.gpu",
            "jobs.cpu",
            "dead",
            "webhooks",
            "webhooks.wait.1",
            "webhooks.wait.4",
        ]
        .iter()
        .map(|q| format!("{}.{q}", self.namespace))
        .collect()
    }

    /// Ready and unacknowledged messages of one of this cluster's queues.
    fn queue_counts(&self, suffix: &str) -> (u64, u64) {
        let out = std::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ])
            .output()
            .expect("rabbitmqctl runs");
        let name = format!("{}.{suffix}", self.namespace);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&name.as_str())).then(|| (f[1].parse().unwrap(), f[2].parse().unwrap()))
            })
            .unwrap_or_else(|| panic!("queue {name} not found"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for name in self.queue_names() {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", &name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn pid_of(job: &Value) -> Option<u32> {
    job["worker"].as_str()?.rsplit(':').next()?.parse().ok()
}

#[tokio::test]
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
    let job = b.wait_final(&id, 60).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let obj = result(&job, "texturedMesh.obj");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(b.url(obj["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302, "{:?} {:?}", obj, resp.text().await);
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .contains("X-Amz-Signature="));
    let body = b.get(obj["url"].as_str().unwrap()).await.text().await.unwrap();
    assert!(body.starts_with("mtllib texturedMesh.mtl"), "{body}");
    let log = b.get(&format!("/api/v1/jobs/{id}/log")).await.text().await.unwrap();
    assert!(log.contains("Publish"), "{log}");

    // Uploaded through B, listed through A, newest first.
    let resp = b.upload(vec![("u.jpg", photo(1))], &[]).await;
    assert_eq!(resp.status(), 202);
    let up = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(a.wait_final(&up, 60).await["status"], "succeeded");
    let page: Value = a.get("/api/v1/jobs?limit=1").await.json().await.unwrap();
    assert_eq!(page["jobs"][0]["id"], up.as_str());
    assert_eq!(page["next_cursor"], up.as_str());

    // A running job canceled through the other replica: the worker hears of it within 2 s.
    let hang = a
        .submit(json!({"image_urls": [c.edge.add("fake-hang.jpg", photo(2))]}))
        .await;
    b.wait_for(&hang, 30, |_| job_processes(&hang).len() >= 3).await;
    let asked = Instant::now();
    assert_eq!(b.post(&format!("/api/v1/jobs/{hang}/cancel")).await.status(), 202);
    a.wait_for(&hang, 10, |j| {
        j["cancel_requested"] == true || j["status"] == "canceled"
    })
    .await;
    let heard = asked.elapsed();
    eprintln!("cancel reached the worker after {heard:?}");
    assert!(
        heard < Duration::from_secs(2),
        "cancel reached the worker after {heard:?}"
    );
    assert_eq!(a.wait_final(&hang, 20).await["status"], "canceled");
    assert!(job_processes(&hang).is_empty());
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0));

    // Each worker exports its own metrics; together they finished the three jobs.
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
    assert_eq!(finished, 3);
}

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_it_to_another() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let (w1, w2) = (c.work("work-1", "none").await, c.work("work-2", "none").await);
    let api = serve.api();
    let id = api
        .submit(json!({"image_urls": [c.edge.add("fake-slow.jpg", photo(0))]}))
        .await;
    let running = api
        .wait_for(&id, 30, |j| j["progress"]["node_index"].as_u64() >= Some(2))
        .await;
    let victim = pid_of(&running).unwrap();
    let survivor = if w1.pid() == victim {
        w1.kill();
        w2
    } else {
        w2.kill();
        w1
    };
    let job = api.wait_final(&id, 60).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["attempts"], 2);
    assert_eq!(pid_of(&job), Some(survivor.pid()));
    assert_eq!(job["results"].as_array().unwrap().len(), 3, "one result set");
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0));
}

#[tokio::test]
async fn sigterm_requeues_the_job_and_exits_zero() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let mut worker = c.work("work-1", "none").await;
    let api = serve.api();
    let id = api
        .submit(json!({"image_urls": [c.edge.add("fake-hang.jpg", photo(0))]}))
        .await;
    api.wait_for(&id, 30, |_| job_processes(&id).len() >= 3).await;
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(20).await;
    assert!(status.success(), "{status}");
    assert!(job_processes(&id).is_empty());
    let job = api.job(&id).await;
    assert_eq!(job["status"], "enqueued", "{job:#}");
    assert_eq!(c.queue_counts("jobs.cpu").0, 1, "back in the queue");
    // Another worker takes it; a requeue on shutdown is not a lost attempt.
    let _next = c.work("work-2", "none").await;
    let again = api.wait_for(&id, 30, |j| j["status"] == "processing").await;
    assert_eq!(
        (again["attempts"].as_u64(), again["lost_attempts"].as_u64()),
        (Some(2), Some(0))
    );
    api.post(&format!("/api/v1/jobs/{id}/cancel")).await;
    api.wait_final(&id, 20).await;
}

#[tokio::test]
async fn gpu_jobs_wait_for_gpu_workers_and_high_priority_goes_first() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
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
        let job = api.wait_final(id, 60).await;
        assert_eq!(job["status"], "succeeded");
        started.push((job["started_at"].as_str().unwrap().to_string(), id.clone()));
    }
    started.sort();
    assert_eq!(started[0].1, high, "the high-priority job runs first");
    assert_eq!(
        api.job(&gpu_job).await["status"],
        "enqueued",
        "a CPU worker never takes a GPU job"
    );

    let _gpu = c.work("gpu", "0").await;
    assert_eq!(api.wait_final(&gpu_job, 60).await["status"], "succeeded");
    let runs = invocations(c.dir.path());
    let run = runs.iter().find(|r| r["job"] == gpu_job.as_str()).unwrap();
    assert_eq!(run["cuda"], "0", "pinned to its GPU");
    assert!(run["argv"].to_string().contains("\"photogrammetry\""));
}

#[tokio::test]
async fn poison_jobs_are_dead_lettered_after_the_configured_deliveries() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[("MESHROOM_SVC_QUEUE_MAX_DELIVERIES", "2")]).await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let body = json!({"image_urls": [c.edge.add("fake-slow.jpg", photo(0))], "callback_url": c.edge.hook_url()});
    let id = api.submit(body).await;
    // The worker dies on this job every time.
    for round in 1..=2 {
        let worker = c.work(&format!("w{round}"), "none").await;
        // Killed while its engine runs.
        let mine = |j: &Value| pid_of(j) == Some(worker.pid()) && j["stage"] == "reconstructing";
        api.wait_for(&id, 30, mine).await;
        let runs = || {
            invocations(c.dir.path())
                .iter()
                .filter(|r| r["job"] == id.as_str())
                .count()
        };
        api.wait_for(&id, 30, |_| runs() == round).await;
        worker.kill();
    }
    let _last = c.work("w3", "none").await;
    let job = api.wait_final(&id, 30).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "poison_job", "{job:#}");
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
async fn the_api_answers_503_while_the_broker_is_unreachable() {
    // A broker address where nothing listens: no need to stop the shared one.
    let c = Cluster::new(&[("MESHROOM_SVC_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")]).await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let started = Instant::now();
    let resp = api
        .post_json("/api/v1/jobs", &json!({"image_urls": [c.edge.add("p.jpg", photo(0))]}))
        .await;
    assert_eq!(resp.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "queue_unavailable"
    );
    assert_eq!(api.get("/ready").await.status(), 503);
    let list: Value = api.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        0,
        "a job not queued is not kept"
    );
}

#[tokio::test]
async fn a_broker_restart_under_load_loses_no_accepted_job() {
    let _broker = BROKER.write().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let _worker = c.work("work", "none").await;
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
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let resp = api.post_json("/api/v1/jobs", &json!({"image_urls": [url]})).await;
        match resp.status().as_u16() {
            202 => accepted.push(resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()),
            503 => refused += 1,
            other => panic!("the API answered {other} while the broker restarted"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restart.await.unwrap();
    assert!(refused > 0, "the broker was down for part of the run");
    // The worker consumes again soon after the broker is back.
    let back = Instant::now();
    let probe = loop {
        let resp = api
            .post_json("/api/v1/jobs", &json!({"image_urls": [url], "priority": "high"}))
            .await;
        if resp.status() == 202 {
            break resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the API refused jobs for 30 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    api.wait_for(&probe, 30, |j| j["status"] != "enqueued").await;
    let resumed = back.elapsed();
    assert!(
        resumed < Duration::from_secs(30),
        "the worker took {resumed:?} to consume again"
    );
    eprintln!("broker restart: the worker took a job {resumed:?} after the broker was back");
    for id in &accepted {
        let job = api.wait_final(id, 90).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
    }
    let page: Value = api.get("/api/v1/jobs?limit=100").await.json().await.unwrap();
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        accepted.len() + 1, // and the probe
        "refused submits leave no job"
    );
    eprintln!(
        "broker restart: {} accepted and all succeeded, {refused} refused with 503",
        accepted.len()
    );
}

#[tokio::test]
async fn a_large_result_round_trips_through_s3_with_bounded_worker_memory() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let worker = c.work("work", "none").await;
    let api = serve.api();
    let mib = 300;
    let id = api
        .submit(json!({"image_urls": [c.edge.add(&format!("fake-big{mib}.jpg"), photo(0))]}))
        .await;
    let job = api.wait_final(&id, 120).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let peak_kib = peak_rss_kib(worker.pid());
    let dense = result(&job, "dense.ply");
    assert_eq!(dense["size"].as_u64(), Some(mib << 20));
    // Download through the API's redirect, streaming, and compare with the fake's pattern.
    let resp = api.get(dense["url"].as_str().unwrap()).await;
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

/// VmHWM: the peak resident set of a process.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn all_in_one_runs_on_rabbitmq_and_s3_too() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let data = c.dir.path().join("aio").display().to_string();
    let aio = Proc::start(
        c.dir.path(),
        &["all-in-one", "--gpu", "none", "--data-dir", &data],
        Some(free_port()),
        &c.env,
    )
    .await;
    let api = aio.api();
    let root: Value = api.get("/").await.json().await.unwrap();
    assert_eq!(
        (root["queue"]["kind"].as_str(), root["storage"].as_str()),
        (Some("rabbitmq"), Some("s3"))
    );
    let id = api
        .submit(json!({"image_urls": [c.edge.add("p.jpg", photo(0))], "callback_url": c.edge.hook_url()}))
        .await;
    assert_eq!(api.wait_final(&id, 60).await["status"], "succeeded");
    let hooks = c.edge.wait_hooks(1, 20).await;
    assert!(signature_valid(&hooks[0]));
}

#[tokio::test]
async fn a_restarted_worker_stops_what_its_killed_predecessor_left_running() {
    let _broker = BROKER.read().await;
    // One delivery allowed: the restarted worker dead-letters the job without running it, so only
    // its start-up clean-up can stop the orphans.
    let c = Cluster::new(&[("MESHROOM_SVC_QUEUE_MAX_DELIVERIES", "1")]).await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let worker = c.work("node-a", "none").await;
    let id = api
        .submit(json!({"image_urls": [c.edge.add("fake-hang.jpg", photo(0))]}))
        .await;
    api.wait_for(&id, 30, |_| job_processes(&id).len() >= 3).await;
    // Let the run settle: a batch tool killed while it still prints dies of the broken pipe.
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!job_processes(&id).is_empty(), "the engine outlives a SIGKILLed worker");
    let _restarted = c.work("node-a", "none").await;
    assert!(
        job_processes(&id).is_empty(),
        "the new worker stopped them before taking jobs"
    );
    assert_eq!(api.wait_final(&id, 30).await["error"]["code"], "poison_job");
}

/// Publishes a job's message again, as a duplicate from the broker would arrive.
async fn publish_again(c: &Cluster, id: &str) {
    use meshroom_svc::queue::amqp::{Consume, Topology};
    let services = Services::from_env();
    let topology = Topology {
        prefix: c.namespace.clone(),
        webhook_delays: vec![0, 1, 1, 1], // as the cluster's processes declare them
        consumer_timeout: Duration::from_secs(7200),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let amqp = meshroom_svc::queue::Amqp::start(services.amqp_url, topology, Consume::default(), stop.clone());
    for _ in 0..20 {
        if amqp
            .publish_job(id.parse().unwrap(), false, meshroom_svc::jobs::Priority::Normal)
            .await
            .is_ok()
        {
            stop.cancel();
            return;
        }
    }
    panic!("could not publish the duplicate");
}

#[tokio::test]
async fn a_job_delivered_twice_runs_once() {
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let _workers = (c.work("w1", "none").await, c.work("w2", "none").await);
    let api = serve.api();
    let id = api
        .submit(json!({"image_urls": [c.edge.add("fake-slow.jpg", photo(0))]}))
        .await;
    api.wait_for(&id, 30, |j| j["stage"] == "reconstructing").await;
    publish_again(&c, &id).await; // while it runs on one worker: the other must not run it too
    let job = api.wait_final(&id, 90).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    publish_again(&c, &id).await; // after it ended
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = invocations(c.dir.path())
        .iter()
        .filter(|r| r["job"] == id.as_str())
        .count();
    assert_eq!(runs, 1, "the engine ran once");
    let after = api.job(&id).await;
    assert_eq!(after["attempts"], 1);
    assert_eq!(after["results"], job["results"], "stored results unchanged");
    assert_eq!(after["finished_at"], job["finished_at"]);
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0));
}

#[tokio::test]
async fn forced_disconnects_give_quick_503s_and_lose_nothing() {
    let _broker = BROKER.write().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let _worker = c.work("work", "none").await;
    let api = serve.api();
    let url = c.edge.add("p.jpg", photo(0));
    let closer = tokio::task::spawn_blocking(|| {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(700));
            let status = std::process::Command::new("rabbitmqctl")
                .args(["close_all_connections", "closed by the test"])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
    });
    let (mut accepted, mut slowest) = (Vec::new(), Duration::ZERO);
    for _ in 0..30 {
        let started = Instant::now();
        let resp = api.post_json("/api/v1/jobs", &json!({"image_urls": [url]})).await;
        slowest = slowest.max(started.elapsed());
        match resp.status().as_u16() {
            202 => accepted.push(resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()),
            503 => {}
            other => panic!("the API answered {other} while connections were closed"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closer.await.unwrap();
    assert!(slowest < Duration::from_secs(5), "an answer took {slowest:?}");
    let back = Instant::now();
    for id in &accepted {
        assert_eq!(api.wait_final(id, 60).await["status"], "succeeded", "{id}");
    }
    eprintln!(
        "forced disconnects: {} accepted, all done {:?} later; slowest answer {slowest:?}",
        accepted.len(),
        back.elapsed()
    );
}

#[tokio::test]
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
        let job = api.wait_final(id, 300).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_eq!(job["results"].as_array().unwrap().len(), 3, "one result set");
        attempts += job["attempts"].as_u64().unwrap();
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

/// Kills the RabbitMQ node with SIGKILL and starts it again, as a crash would.
fn crash_and_restart_broker() {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap()
            .success()
    };
    assert!(sh("pkill -9 -x beam.smp"), "no RabbitMQ node to kill");
    std::thread::sleep(Duration::from_secs(1));
    assert!(sh("rabbitmq-server -detached >/dev/null 2>&1"));
    assert!(sh("for i in $(seq 1 60); do rabbitmqctl await_startup --timeout 10 >/dev/null 2>&1 && exit 0; sleep 2; done; exit 1"));
    assert!(sh(
        "rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, 36000000).' >/dev/null"
    ));
}

#[tokio::test]
async fn a_thousand_accepted_jobs_survive_a_broker_sigkill() {
    use futures_util::StreamExt;
    let _broker = BROKER.write().await;
    let c = Cluster::new(&[("FAKE_MESHROOM_MODE", "instant")]).await;
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
        let job = api.wait_final(id, 600).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        attempts += job["attempts"].as_u64().unwrap();
    }
    assert_eq!(attempts, 1000, "one outcome per job");
    assert_eq!(c.queue_counts("jobs.cpu"), (0, 0));
    eprintln!(
        "broker SIGKILL: 1000 of 1000 accepted jobs completed, in {:?} after the restart",
        started.elapsed()
    );
}

#[tokio::test]
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
        .submit(json!({"image_urls": [c.edge.add(&format!("fake-big{mib}.jpg"), photo(0))]}))
        .await;
    api.wait_for(&id, 60, |j| j["stage"] == "uploading").await;
    garage.crash();
    // Meanwhile the API answers 503, never 500.
    let during = api.get(&format!("/api/v1/jobs/{id}")).await.status().as_u16();
    assert_eq!(during, 503);
    tokio::time::sleep(Duration::from_secs(3)).await;
    garage.resume().await;
    let mut job = Value::Null;
    for _ in 0..1200 {
        let resp = api.get(&format!("/api/v1/jobs/{id}")).await;
        assert_ne!(resp.status().as_u16(), 500, "503 while storage is down, never 500");
        if resp.status() == 200 {
            job = resp.json().await.unwrap();
            if ["succeeded", "failed"].contains(&job["status"].as_str().unwrap()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match job["status"].as_str() {
        Some("succeeded") => {
            // Every listed file is really there, whole.
            for r in job["results"].as_array().unwrap() {
                let resp = api.get(r["url"].as_str().unwrap()).await;
                assert_eq!(resp.status(), 200, "{r}");
                assert_eq!(resp.content_length(), r["size"].as_u64(), "{r}");
            }
            assert_eq!(result(&job, "dense.ply")["size"].as_u64(), Some(mib << 20));
        }
        Some("failed") => assert_eq!(job["error"]["code"], "storage_error", "{job:#}"),
        _ => panic!("the job did not end: {job:#}"),
    }
    eprintln!(
        "S3 stopped mid-upload: job {} after {} attempt(s)",
        job["status"], job["attempts"]
    );
}

#[tokio::test]
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
        .wait_for(&id, 10, |j| {
            j["webhook"]["attempts"].as_array().is_some_and(|a| a.len() == 1)
        })
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
        .wait_for(&id, 10, |j| j["webhook"]["state"] == "delivered")
        .await;
}
