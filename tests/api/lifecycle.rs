//! The job lifecycle end to end: submit, progress, success, failure, timeout, cancel, retry, delete.

use crate::helpers::*;
use meshroom_svc::error::Code;
use meshroom_svc::http::JobPage;
use meshroom_svc::jobs::{DeliveryState, JobView, Stage, Status};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn submit_by_url_succeeds_with_downloadable_files() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let urls: Vec<String> = (0..3).map(|i| edge.add(&format!("p{i}.jpg"), photo(i))).collect();
    let resp = app
        .post_json(
            "/api/v1/jobs",
            &json!({"image_urls": urls, "metadata": {"order": 42}, "callback_url": edge.hook_url()}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/api/v1/jobs/"));
    let job: JobView = resp.json().await.unwrap();
    assert_eq!(job.status, Status::Enqueued);
    assert_eq!(job.pipeline, "draft", "no GPU: the default preset is draft");
    let id = job.id.to_string();
    let id = id.as_str();

    let job = app.finished(id, 30).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    assert_eq!(job.progress.percent, 100.0);
    assert_eq!(job.metadata, Some(json!({"order": 42})));
    let names: Vec<&str> = job.results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["texture_1001.png", "texturedMesh.mtl", "texturedMesh.obj"]);

    // Download a result, whole and by range.
    let obj = job.results.iter().find(|r| r.name == "texturedMesh.obj").unwrap();
    let body = app.get(&obj.url).await.text().await.unwrap();
    assert!(body.starts_with("mtllib texturedMesh.mtl"));
    assert_eq!(body.len() as u64, obj.size);
    let part = app
        .client
        .get(app.url(&obj.url))
        .header("range", "bytes=0-5")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.text().await.unwrap(), "mtllib");

    // The engine ran as the contract says: pinned to no GPU, --save in the job folder, never --cache.
    let runs = app.invocations();
    assert_eq!(runs.len(), 1);
    let argv: Vec<&str> = runs[0]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv.contains(&"--save") && argv.contains(&"photogrammetryDraft") && !argv.contains(&"--cache"));
    assert_eq!(runs[0]["cuda"], "");
    assert_eq!(runs[0]["job"], id);

    // The log is kept, the working folder is gone.
    let log = app.get(&format!("/api/v1/jobs/{id}/log")).await.text().await.unwrap();
    assert!(log.contains("[10/10] Publish"), "{log}");
    assert!(!app.app.work_dir(id.parse().unwrap()).exists());

    app.wait_until(id, 10, |j| {
        j.webhook.as_ref().is_some_and(|w| w.state == DeliveryState::Delivered)
    })
    .await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"meshroom_jobs_submitted_total{tenant="default"} 1"#,
        r#"meshroom_jobs_finished_total{code="",status="succeeded",tenant="default"} 1"#,
        r#"meshroom_stage_duration_seconds_count{stage="reconstructing"} 1"#,
        r#"meshroom_webhook_attempts_total{outcome="delivered"} 1"#,
        "meshroom_queue_depth 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn submit_by_upload_succeeds() {
    let app = spawn_app().await;
    let resp = app
        .upload(
            vec![("a.jpg", photo(0)), ("b.jpg", photo(1))],
            &[
                ("metadata", r#"{"source": "upload"}"#),
                ("params", r#"{"Texturing:textureSide": 2048}"#),
            ],
        )
        .await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let job: JobView = resp.json().await.unwrap();
    assert_eq!(job.uploads[0].name, "0000_a.jpg");
    assert_eq!(job.uploads[1].size, photo(1).len() as u64);
    assert_eq!(job.params["Texturing:textureSide"], "2048");
    let job = app.finished(&job.id.to_string(), 30).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    let argv = app.invocations()[0]["argv"].to_string();
    assert!(argv.contains("Texturing:textureSide=2048"), "{argv}");
    // Nothing left in the upload staging folder.
    let tmp = app.app.tmp_dir();
    assert!(!tmp.exists() || std::fs::read_dir(tmp).unwrap().next().is_none());
}

#[tokio::test]
async fn progress_is_visible_while_running() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add(&Fake::Slow.image(), photo(0))]}))
        .await;
    let running = app
        .wait_until(&id, 30, |j| {
            j.stage == Some(Stage::Reconstructing) && j.progress.node_index >= Some(2)
        })
        .await;
    assert_eq!(running.status, Status::Processing);
    assert_eq!(running.progress.node_count, Some(10));
    assert!(running.progress.node.as_deref().unwrap().ends_with("_1"));
    let percent = running.progress.percent;
    assert!(percent > 0.0 && percent < 100.0, "{percent}");
    // The fake block-buffers its stdout like the real frozen tool: the lines still arrive live,
    // as the engine runs on a terminal.
    let log = app.get(&format!("/api/v1/jobs/{id}/log")).await.text().await.unwrap();
    assert!(log.contains("Nodes to execute") && log.contains("[2/10]"), "{log}");
    app.post(&format!("/api/v1/jobs/{id}/cancel")).await;
    app.finished(&id, 30).await;
}

#[tokio::test]
async fn engine_failure_fails_the_job_with_code_and_log_tail() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add(&Fake::Fail.image(), photo(0))]}))
        .await;
    let job = app.finished(&id, 30).await;
    assert_eq!(job.status, Status::Failed);
    let error = job.error.as_ref().unwrap();
    assert_eq!(error.code, Code::EngineFailed);
    assert!(error.message.contains("FeatureMatching_1"), "{job:#?}");
    assert!(job.log_tail.as_deref().unwrap().contains("no matches"), "{job:#?}");
}

#[tokio::test]
async fn failed_work_folders_are_kept_when_configured() {
    let app = spawn_app_with(|c| c.worker.keep_failed_workdir = true, vec![]).await;
    let edge = Edge::start().await;
    let failed = app
        .submit(json!({"image_urls": [edge.add(&Fake::Fail.image(), photo(0))]}))
        .await;
    let ok = app
        .submit(json!({"image_urls": [edge.add("fine.jpg", photo(1))]}))
        .await;
    app.finished(&failed, 30).await;
    app.finished(&ok, 30).await;
    let kept = app.app.work_dir(failed.parse().unwrap());
    assert!(
        kept.join("MeshroomCache/FeatureMatching").is_dir(),
        "the failed job's cache is kept for debugging"
    );
    // The folder goes just after the outcome is recorded, so it may outlive `finished` briefly.
    let done = app.app.work_dir(ok.parse().unwrap());
    for _ in 0..50 {
        if !done.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!done.exists(), "successful jobs are cleaned up");
}

#[tokio::test]
async fn missing_outputs_fail_the_job() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add(&Fake::NoOutput.image(), photo(0))]}))
        .await;
    let job = app.finished(&id, 30).await;
    assert_eq!(job.error.unwrap().code, Code::EngineOutputMissing);
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(0))], "timeout_secs": 4}))
        .await;
    // The tree exists first: the engine, the hanging node and its grandchild in another session
    // (one reading of /proc: short-lived helpers come and go between two).
    let seen = std::cell::RefCell::new(Default::default());
    app.wait_for(&id, 20, |_| {
        *seen.borrow_mut() = process_tree(&job_processes(&id));
        seen.borrow().len() >= 3
    })
    .await;
    let tree = seen.into_inner();
    assert!(tree.len() >= 3, "{tree:?}");
    let job = app.finished(&id, 30).await;
    assert_eq!(job.status, Status::Failed);
    assert_eq!(job.error.unwrap().code, Code::EngineTimeout);
    assert_eq!(
        job_processes(&id),
        Vec::<i32>::new(),
        "no process of the job may survive"
    );
    assert_eq!(still_running(&tree), Vec::<i32>::new(), "by parent and session too");
}

#[tokio::test]
async fn cancel_while_running_kills_every_process() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let body = json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(0))], "callback_url": edge.hook_url()});
    let id = app.submit(body).await;
    // The hanging node ignores SIGTERM and has a grandchild in another session: 3+ processes.
    app.wait_for(&id, 20, |_| job_processes(&id).len() >= 3).await;
    let tree = process_tree(&job_processes(&id));
    let resp = app.post(&format!("/api/v1/jobs/{id}/cancel")).await;
    assert_eq!(resp.status(), 202);
    let job = app.finished(&id, 20).await;
    assert_eq!(job.status, Status::Canceled);
    assert_eq!(job_processes(&id), Vec::<i32>::new());
    assert_eq!(still_running(&tree), Vec::<i32>::new(), "by parent and session too");
    let hooks = edge.wait_hooks(1, 10).await;
    let body: Value = serde_json::from_slice(&hooks[0].body).unwrap();
    assert_eq!(body["event"], "job.canceled");
    // A canceled job cannot be canceled again.
    assert_eq!(app.post(&format!("/api/v1/jobs/{id}/cancel")).await.status(), 409);
}

#[tokio::test]
async fn cancel_while_queued_never_runs_the_engine() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let blocker = app
        .submit(json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(0))]}))
        .await;
    let queued = app.submit(json!({"image_urls": [edge.add("ok.jpg", photo(1))]})).await;
    let resp = app.post(&format!("/api/v1/jobs/{queued}/cancel")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<JobView>().await.unwrap().status, Status::Canceled);
    app.post(&format!("/api/v1/jobs/{blocker}/cancel")).await;
    app.finished(&blocker, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.invocations().iter().all(|r| r["job"] != queued.as_str()));
}

#[tokio::test]
async fn transient_download_failures_are_retried_and_permanent_ones_are_not() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let flaky = edge.add("flaky.jpg", photo(0));
    edge.fail_next("flaky.jpg", 2);
    let id = app.submit(json!({"image_urls": [flaky]})).await;
    assert_eq!(app.finished(&id, 30).await.status, Status::Succeeded);
    assert_eq!(edge.requests.lock().unwrap()["flaky.jpg"], 3, "two 503s, then the file");

    let missing = format!("{}/files/missing.jpg", edge.base);
    let id = app.submit(json!({"image_urls": [missing]})).await;
    let job = app.finished(&id, 30).await;
    assert_eq!(job.error.unwrap().code, Code::DownloadFailed);
    assert_eq!(edge.requests.lock().unwrap()["missing.jpg"], 1, "a 404 is not retried");

    edge.fail_next("flaky.jpg", 10);
    let id = app.submit(json!({"image_urls": [flaky]})).await;
    let job = app.finished(&id, 30).await;
    assert_eq!(job.error.unwrap().code, Code::DownloadFailed);
    assert_eq!(
        edge.requests.lock().unwrap()["flaky.jpg"],
        3 + 4,
        "the first try and 3 retries"
    );
}

#[tokio::test]
async fn retry_runs_a_failed_job_again() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    // The image is missing at first: the download fails.
    let url = format!("{}/files/late.jpg", edge.base);
    let id = app.submit(json!({"image_urls": [url]})).await;
    let job = app.finished(&id, 30).await;
    assert_eq!(job.error.unwrap().code, Code::DownloadFailed);
    // There by the retry (added after it, the retried attempt may look first and fail again).
    edge.add("late.jpg", photo(0));
    assert_eq!(app.post(&format!("/api/v1/jobs/{id}/retry")).await.status(), 202);
    let job = app.finished(&id, 30).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    assert_eq!(job.attempts, 2);
    assert_eq!(job.error, None);
    // Only failed or canceled jobs are retried.
    assert_eq!(app.post(&format!("/api/v1/jobs/{id}/retry")).await.status(), 409);
}

#[tokio::test]
async fn delete_removes_the_job_and_its_files() {
    let app = spawn_app().await;
    let resp = app.upload(vec![("a.jpg", photo(0))], &[]).await;
    let id = resp.json::<JobView>().await.unwrap().id.to_string();
    app.finished(&id, 30).await;
    let folder = app.app.config.server.data_dir.join("store/jobs").join(&id);
    assert!(folder.exists());
    assert_eq!(app.delete(&format!("/api/v1/jobs/{id}")).await.status(), 204);
    assert!(!folder.exists());
    assert_eq!(app.get(&format!("/api/v1/jobs/{id}")).await.status(), 404);
}

#[tokio::test]
async fn list_is_newest_first_and_paginated() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let url = edge.add(&Fake::Fail.image(), photo(0));
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.submit(json!({"image_urls": [url]})).await);
    }
    for id in &ids {
        app.finished(id, 30).await;
    }
    let page: JobPage = app.get("/api/v1/jobs?limit=2").await.json().await.unwrap();
    let got: Vec<String> = page.jobs.iter().map(|j| j.id.to_string()).collect();
    assert_eq!(got, [ids[4].as_str(), ids[3].as_str()]);
    let cursor = page.next_cursor.unwrap();
    let page: JobPage = app
        .get(&format!("/api/v1/jobs?limit=3&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 3);
    assert_eq!(page.next_cursor, None);
    let failed: JobPage = app.get("/api/v1/jobs?status=failed").await.json().await.unwrap();
    assert_eq!(failed.jobs.len(), 5);
    let none: JobPage = app.get("/api/v1/jobs?status=succeeded").await.json().await.unwrap();
    assert_eq!(none.jobs.len(), 0);
}

#[tokio::test]
async fn each_gpu_runs_its_own_job_pinned_to_it() {
    let app = spawn_app_with(|_| {}, vec![0, 1]).await;
    let edge = Edge::start().await;
    let url = edge.add(&Fake::Slow.image(), photo(0));
    let a = app.submit(json!({"image_urls": [url]})).await;
    let b = app.submit(json!({"image_urls": [url]})).await;
    // Both run at once, one per GPU, with the full (GPU) pipeline by default.
    app.wait_for(&a, 20, |_| app.invocations().len() == 2).await;
    assert_eq!(app.view(&a).await.status, Status::Processing);
    assert_eq!(app.view(&b).await.status, Status::Processing);
    let mut cuda: Vec<String> = app
        .invocations()
        .iter()
        .map(|r| r["cuda"].as_str().unwrap().to_string())
        .collect();
    cuda.sort();
    assert_eq!(cuda, ["0", "1"]);
    assert!(app
        .invocations()
        .iter()
        .all(|r| r["argv"].to_string().contains("\"photogrammetry\"")));
    for id in [&a, &b] {
        app.post(&format!("/api/v1/jobs/{id}/cancel")).await;
        app.finished(id, 20).await;
    }
}

#[tokio::test]
async fn finished_jobs_are_deleted_after_the_retention() {
    let app = spawn_app_with(|c| c.worker.retention_secs = 1, vec![]).await;
    let edge = Edge::start().await;
    let id = app.submit(json!({"image_urls": [edge.add("a.jpg", photo(0))]})).await;
    app.finished(&id, 30).await;
    for _ in 0..100 {
        if app.get(&format!("/api/v1/jobs/{id}")).await.status() == 404 {
            // The row goes first, then the files (a crash in between leaves files, never a
            // job without them): the folder follows within a moment.
            let folder = app.app.config.server.data_dir.join("store/jobs").join(&id);
            for _ in 0..50 {
                if !folder.exists() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{} still exists after its job was deleted", folder.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job not deleted after its retention");
}

#[tokio::test]
async fn a_missing_engine_fails_jobs_clearly_and_shows_in_ready() {
    let app = spawn_app_with(
        |c| c.engine.meshroom_batch = "/nonexistent/meshroom_batch".into(),
        vec![],
    )
    .await;
    let edge = Edge::start().await;
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("meshroom_batch not found"));
    let id = app.submit(json!({"image_urls": [edge.add("a.jpg", photo(0))]})).await;
    let job = app.finished(&id, 30).await;
    assert_eq!(job.error.unwrap().code, Code::EngineNotFound);
}
