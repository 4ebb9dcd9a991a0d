//! The real binary, killed and restarted: nothing acknowledged is lost.

use crate::helpers::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `meshroom-svc all-in-one` process on a fixed data folder.
struct Service {
    child: Child,
    base: String,
}

impl Service {
    async fn start(dir: &Path, port: u16, extra_env: &[(&str, &str)]) -> Service {
        // test_config writes the engine wrapper; the binary gets the same settings from the environment.
        let config = test_config(dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshroom-svc"));
        cmd.args(["all-in-one", "--gpu", "none", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&config.server.data_dir)
            .env("MESHROOM_SVC_ENGINE_MESHROOM_BATCH", &config.engine.meshroom_batch)
            .env("MESHROOM_SVC_ENGINE_KILL_GRACE_SECS", "1")
            .env("MESHROOM_SVC_WEBHOOK_SECRET", SECRET)
            .envs(extra_env.iter().copied())
            .env("RUST_LOG", "info")
            .current_dir(dir)
            .stdin(Stdio::null());
        let svc = Service {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if reqwest::get(format!("{}/health", svc.base)).await.is_ok() {
                return svc;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the service did not start");
    }

    async fn submit(&self, body: Value) -> String {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/jobs", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    }

    async fn job(&self, id: &str) -> Value {
        reqwest::get(format!("{}/api/v1/jobs/{id}", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait_for(&self, id: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..secs * 20 {
            let job = self.job(id).await;
            if pred(&job) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out; job is {:#}", self.job(id).await);
    }

    /// SIGKILL, as a crash would.
    fn kill(self) {
        drop(self);
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Service {
    // Also on a failed assertion: never leave a service running after its test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn done(j: &Value) -> bool {
    ["succeeded", "failed", "canceled"].contains(&j["status"].as_str().unwrap())
}

#[tokio::test]
async fn sigkill_mid_job_loses_nothing_and_resumes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start().await;
    let port = free_port();
    let svc = Service::start(dir.path(), port, &[]).await;
    let slow = svc
        .submit(json!({"image_urls": [edge.add("fake-slow.jpg", photo(0))]}))
        .await;
    let queued: Vec<String> = futures_util::future::join_all(
        (0..2).map(|i| svc.submit(json!({"image_urls": [edge.add(&format!("q{i}.jpg"), photo(i))]}))),
    )
    .await;
    svc.wait_for(&slow, 30, |j| j["progress"]["node_index"].as_u64() >= Some(4))
        .await;
    svc.kill();
    // The engine outlives the service it was started by (its own process group and sessions).
    assert!(
        !job_processes(&slow).is_empty(),
        "the engine should still be running after SIGKILL"
    );

    let svc = Service::start(dir.path(), port, &[]).await;
    let job = svc.wait_for(&slow, 60, done).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["attempts"], 2);
    for id in &queued {
        assert_eq!(svc.wait_for(id, 30, done).await["status"], "succeeded");
    }
    // The second run cleaned up the first one's processes and resumed its finished nodes.
    assert!(job_processes(&slow).is_empty());
    let runs: Vec<Value> = std::fs::read_to_string(dir.path().join("invocations.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["job"] == slow.as_str())
        .collect();
    assert_eq!(runs.len(), 2);
    assert!(runs[1]["argv"].to_string().contains("--forceStatus"), "{:?}", runs[1]);
    let log = reqwest::get(format!("{}/api/v1/jobs/{slow}/log", svc.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resumed = log.lines().rfind(|l| l.starts_with("Nodes to execute")).unwrap();
    assert!(
        !resumed.contains("'CameraInit_1'"),
        "finished nodes are not run again: {log}"
    );
    svc.kill();
}

#[tokio::test]
async fn a_pending_webhook_is_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start().await;
    edge.answer_hooks_with(&[503]);
    let port = free_port();
    let env = [("MESHROOM_SVC_WEBHOOK_SCHEDULE_SECS", "0,4")];
    let svc = Service::start(dir.path(), port, &env).await;
    let id = svc
        .submit(json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": edge.hook_url()}))
        .await;
    edge.wait_hooks(1, 20).await;
    svc.wait_for(&id, 10, |j| {
        j["webhook"]["attempts"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    svc.kill();
    let svc = Service::start(dir.path(), port, &env).await;
    let hooks = edge.wait_hooks(2, 20).await;
    assert_eq!(hooks[0].headers["webhook-id"], hooks[1].headers["webhook-id"]);
    assert!(signature_valid(&hooks[1]));
    svc.wait_for(&id, 10, |j| j["webhook"]["state"] == "delivered").await;
    svc.kill();
}

#[tokio::test]
async fn sigterm_stops_the_engine_and_requeues_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start().await;
    let port = free_port();
    let svc = Service::start(dir.path(), port, &[]).await;
    let id = svc
        .submit(json!({"image_urls": [edge.add("fake-hang.jpg", photo(0))]}))
        .await;
    svc.wait_for(&id, 20, |_| job_processes(&id).len() >= 3).await;
    svc.signal(libc::SIGTERM);
    let mut svc = svc;
    let mut status = None;
    for _ in 0..400 {
        status = svc.child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("the service exits within 20 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(job_processes(&id).is_empty(), "SIGTERM leaves no engine process behind");
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("data/store/jobs/{id}/job.json"))).unwrap())
            .unwrap();
    assert_eq!(record["status"], "enqueued", "the job goes back to the queue");
}
