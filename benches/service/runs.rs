//! Figures of job turnover with the fake engine: the gap between one engine run and the next
//! with jobs waiting, and throughput with one and with three workers.

use crate::cluster::Cluster;
use crate::files::metrics;
use crate::helpers::{tiny_png, Api, Edge};
use crate::procs::{free_port, Proc};
use crate::report::{at_most, buckets, histogram_quantile, Row};
use crate::Scale;
use futures_util::StreamExt;
use meshroom_svc::jobs::{JobView, Status};
use serde_json::json;

/// Submits `n` jobs of one small image each; returns their ids.
pub async fn submit(api: &Api, edge: &Edge, n: usize) -> Vec<String> {
    let url = edge.add("photo.png", tiny_png());
    let body = json!({"image_urls": [url], "pipeline": "draft"});
    futures_util::stream::iter(0..n)
        .map(|_| api.submit(body.clone()))
        .buffered(16)
        .collect()
        .await
}

/// Waits until every job succeeded; returns the records.
pub async fn all_succeed(api: &Api, ids: &[String]) -> Vec<JobView> {
    let mut jobs = Vec::new();
    for id in ids {
        let job = api.finished(id, 1800).await;
        assert_eq!(job.status, Status::Succeeded, "{job:#?}");
        jobs.push(job);
    }
    jobs
}

/// The engine gap histogram of a process, as a table row.
fn gap_row(metrics: &str, setting: &str, jobs: usize, target_ms: f64) -> Row {
    let b = buckets(metrics, "meshroom_engine_gap_seconds");
    let median_ms = histogram_quantile(&b, 0.5) * 1e3;
    let total = b.last().map_or(0.0, |x| x.1);
    Row::limit(
        format!("gap between engine runs, {jobs} queued jobs, zero-time fake ({setting})"),
        format!(
            "median {median_ms:.1} ms; {} of {total} gaps ≤ {target_ms} ms, {} ≤ 10 ms",
            at_most(&b, target_ms / 1e3),
            at_most(&b, 0.01)
        ),
        format!("median < {target_ms} ms"),
        total > 0.0 && median_ms < target_ms,
    )
}

/// The gap between one engine run ending and the next starting, all-in-one and with RabbitMQ + S3.
pub async fn gap(scale: &Scale, rows: &mut Vec<Row>) {
    let n = scale.gap_jobs;
    // All-in-one: a first, slow job holds the worker while the others are queued behind it.
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [("FAKE_MESHROOM_MODE", "instant"), ("FAKE_MESHROOM_NODE_SECONDS", "0.3")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let svc = Proc::all_in_one(dir.path(), &dir.path().join("data"), free_port(), &env).await;
    let edge = Edge::start().await;
    let slow = edge.add("fake-slow.png", tiny_png());
    let first = svc
        .api()
        .submit(json!({"image_urls": [slow], "pipeline": "draft"}))
        .await;
    svc.api().wait_for(&first, 60, |j| j["status"] == "processing").await;
    let ids = submit(svc.api(), &edge, n).await;
    all_succeed(svc.api(), &ids).await;
    rows.push(gap_row(&metrics(&svc).await, "all-in-one", n, 20.0));
    drop(svc);
    // RabbitMQ + S3: every job is queued before the worker starts.
    let c = Cluster::new(&[("FAKE_MESHROOM_MODE", "instant")]).await;
    let serve = c.serve("serve").await;
    let ids = submit(serve.api(), &c.edge, n).await;
    let worker = c.work("work", "none").await;
    all_succeed(serve.api(), &ids).await;
    rows.push(gap_row(&metrics(&worker).await, "RabbitMQ + S3", n, 50.0));
}

/// Jobs per second from the records: the first start to the last finish.
fn throughput(jobs: &[JobView]) -> f64 {
    let first = jobs.iter().filter_map(|j| j.started_at).min().unwrap();
    let last = jobs.iter().filter_map(|j| j.finished_at).max().unwrap();
    jobs.len() as f64 / ((last - first).num_microseconds().unwrap() as f64 / 1e6)
}

/// Throughput of one worker against three, with a fake engine that takes a fixed time per job.
pub async fn scaling(scale: &Scale, rows: &mut Vec<Row>) {
    let secs = scale.run_secs.to_string();
    let c = Cluster::new(&[("FAKE_MESHROOM_MODE", "instant"), ("FAKE_MESHROOM_RUN_SECONDS", &secs)]).await;
    let serve = c.serve("serve").await;
    let n = scale.scale_jobs;
    let mut rates = Vec::new();
    for workers in [1, 3] {
        // Workers first, then the jobs: they all start within the first job's run.
        let mut procs = Vec::new();
        for w in 0..workers {
            procs.push(c.work(&format!("work-{workers}-{w}"), "none").await);
        }
        let ids = submit(serve.api(), &c.edge, n).await;
        rates.push(throughput(&all_succeed(serve.api(), &ids).await));
    }
    let ratio = rates[1] / rates[0];
    rows.push(Row::versus(
        format!("throughput, {n} jobs, fake engine of a fixed {secs} s (RabbitMQ + S3)"),
        format!("3 workers: {:.2} jobs/s", rates[1]),
        format!("1 worker: {:.2} jobs/s", rates[0]),
        (ratio, 2.7),
    ));
}
