//! The real binary, killed and restarted: nothing acknowledged is lost.

use crate::helpers::*;
use crate::procs::*;
use meshroom_svc::jobs::{DeliveryState, JobView, Status};
use serde_json::{json, Value};
use std::path::Path;

/// `meshroom-svc all-in-one` on a fixed data folder and port.
async fn all_in_one(dir: &Path, port: u16, env: &[(&str, &str)]) -> Proc {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Proc::all_in_one(dir, &dir.join("data"), port, &env).await
}

fn done(j: &JobView) -> bool {
    j.status.is_final()
}

#[tokio::test]
async fn sigkill_mid_job_loses_nothing_and_resumes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start().await;
    let port = free_port();
    let svc = all_in_one(dir.path(), port, &[]).await;
    let slow = svc
        .api()
        .submit(json!({"image_urls": [edge.add(&Fake::Slow.image(), photo(0))]}))
        .await;
    let queued: Vec<String> = futures_util::future::join_all((0..2).map(|i| {
        svc.api()
            .submit(json!({"image_urls": [edge.add(&format!("q{i}.jpg"), photo(i))]}))
    }))
    .await;
    svc.api()
        .wait_until(&slow, 30, |j| j.progress.node_index >= Some(4))
        .await;
    let orphans = process_tree(&job_processes(&slow));
    svc.kill();
    // The engine outlives the service it was started by (its own process group and sessions), and
    // its closed output (it block-buffers, as the real tool does) does not end it either.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let left = still_running(&orphans);
    assert!(!left.is_empty(), "the engine should still be running after SIGKILL");

    let svc = all_in_one(dir.path(), port, &[]).await;
    // Stopped by the new process before it serves, not by themselves.
    assert_eq!(
        still_running(&orphans),
        Vec::<i32>::new(),
        "{left:?} outlived the restart"
    );
    // The resumed run's percent counts the nodes the first attempt finished as done, against the
    // whole graph: neither back to 0 nor at 99% at once.
    let resumed = svc
        .api()
        .wait_until(&slow, 60, |j| {
            done(j) || (j.attempts == 2 && j.progress.node_count.is_some())
        })
        .await;
    assert_eq!(resumed.status, Status::Processing, "{resumed:#?}");
    let percent = resumed.progress.percent;
    assert!((30.0..90.0).contains(&percent), "resumed at {percent}%: {resumed:#?}");
    assert_eq!(resumed.progress.node_count, Some(10));
    let job = svc.api().wait_until(&slow, 60, done).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    assert_eq!(job.attempts, 2);
    for id in &queued {
        assert_eq!(svc.api().wait_until(id, 30, done).await.status, Status::Succeeded);
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
    let log = reqwest::get(svc.api().url(&format!("/api/v1/jobs/{slow}/log")))
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
    let svc = all_in_one(dir.path(), port, &env).await;
    let id = svc
        .api()
        .submit(json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": edge.hook_url()}))
        .await;
    edge.wait_hooks(1, 20).await;
    svc.api()
        .wait_until(&id, 10, |j| j.webhook.as_ref().is_some_and(|w| w.attempts.len() == 1))
        .await;
    svc.kill();
    let svc = all_in_one(dir.path(), port, &env).await;
    let hooks = edge.wait_hooks(2, 20).await;
    assert_eq!(hooks[0].headers["webhook-id"], hooks[1].headers["webhook-id"]);
    assert!(signature_valid(&hooks[1]));
    svc.api()
        .wait_until(&id, 10, webhook_is(DeliveryState::Delivered))
        .await;
    svc.kill();
}

#[tokio::test]
async fn sigterm_stops_the_engine_and_requeues_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start().await;
    let port = free_port();
    let mut svc = all_in_one(dir.path(), port, &[]).await;
    let id = svc
        .api()
        .submit(json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(0))]}))
        .await;
    svc.api().wait_for(&id, 20, |_| job_processes(&id).len() >= 3).await;
    svc.signal(libc::SIGTERM);
    let status = svc.wait_exit(20).await;
    assert!(status.success(), "exit status {status}");
    assert!(job_processes(&id).is_empty(), "SIGTERM leaves no engine process behind");
    let url = format!("sqlite://{}", dir.path().join("data/meshroom.db").display());
    let store = meshroom_svc::jobs::Store::new(meshroom_svc::jobs::Db::open(&url, 1).await.unwrap());
    let record = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(record.status.as_str(), "enqueued", "the job goes back to the queue");
}
