//! Figures of a worker moving bytes: staging images from S3 and from HTTP into the job folder,
//! and uploading results to S3, each against the raw transfer of the same bytes.

use crate::cluster::Cluster;
use crate::helpers::tiny_png;
use crate::procs::{Proc, Services};
use crate::report::{mb_per_s, peak_rss_mib, sample, Row};
use crate::{raw, Scale};
use serde_json::{json, Value};

/// The worker's `/metrics` text.
pub async fn metrics(p: &Proc) -> String {
    p.api().get("/metrics").await.text().await.unwrap()
}

/// Seconds the worker spent in a stage, all jobs together.
fn stage_secs(metrics: &str, stage: &str) -> f64 {
    sample(
        metrics,
        &format!("meshroom_stage_duration_seconds_sum{{stage=\"{stage}\"}}"),
    )
}

/// Runs a submitted job to success and returns the seconds the worker spent in `stage` for it.
async fn timed(serve: &Proc, worker: &Proc, id: &str, stage: &str, before: f64) -> f64 {
    let job = serve.api().finished(id, 1800).await;
    assert_eq!(job.status, meshroom_svc::jobs::Status::Succeeded, "{job:#?}");
    stage_secs(&metrics(worker).await, stage) - before
}

/// A PNG of about `bytes` bytes of noise, so that nothing on the way compresses it.
fn noise_png(bytes: usize) -> Vec<u8> {
    let side = ((bytes / 3) as f64).sqrt() as u32;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let pixels: Vec<u8> = (0..side * side * 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_compression(png::Compression::Fast);
    encoder.write_header().unwrap().write_image_data(&pixels).unwrap();
    out
}

/// Image staging from S3 (uploaded with the job) and from HTTP (image URLs), against raw
/// parallel GETs of the same objects, and the worker's peak RSS.
pub async fn staging(scale: &Scale, s: &Services, rows: &mut Vec<Row>) {
    let c = Cluster::new(&[("FAKE_MESHROOM_MODE", "instant")]).await;
    let serve = c.serve("serve").await;
    let api = serve.api();
    let image = noise_png(scale.image_bytes);
    let (n, total) = (scale.images, (image.len() * scale.images) as u64);
    let names: Vec<String> = (0..n).map(|i| format!("photo-{i:04}.png")).collect();
    let upload = || async {
        let files = names.iter().map(|name| (name.as_str(), image.clone())).collect();
        let resp = api.upload(files, &[("pipeline", "draft")]).await;
        assert_eq!(resp.status(), 202);
        let job: Value = resp.json().await.unwrap();
        let id = job["id"].as_str().unwrap().to_string();
        let keys: Vec<String> = job["uploads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| format!("{}/jobs/{id}/inputs/{}", c.namespace, u["name"].as_str().unwrap()))
            .collect();
        (id, keys)
    };
    let (first_s3_job, keys) = upload().await;
    let urls: Vec<String> = names.iter().map(|name| c.edge.add(name, image.clone())).collect();
    // worker.download_concurrency, default 8.
    let (bucket, concurrency) = (raw::bucket(s), 8);
    let scratch = c.dir.path().join("raw");
    std::fs::create_dir_all(&scratch).unwrap();
    // Each transfer, raw and the worker's, runs twice (the raw ones before and after the
    // worker's); the faster run counts on both sides.
    let mut raw_s3 = raw::s3_gets(&bucket, &keys, &scratch, concurrency).await;
    let mut raw_http = raw::http_gets(&urls, &scratch, concurrency).await;
    let worker = c.work("work", "none").await;
    let (mut s3_secs, mut http_secs) = (f64::INFINITY, f64::INFINITY);
    for round in 0..2 {
        let id = if round == 0 {
            first_s3_job.clone()
        } else {
            upload().await.0
        };
        let before = stage_secs(&metrics(&worker).await, "downloading");
        s3_secs = s3_secs.min(timed(&serve, &worker, &id, "downloading", before).await);
        let before = stage_secs(&metrics(&worker).await, "downloading");
        let id = api.submit(json!({"image_urls": urls, "pipeline": "draft"})).await;
        http_secs = http_secs.min(timed(&serve, &worker, &id, "downloading", before).await);
    }
    raw_s3 = raw_s3.min(raw::s3_gets(&bucket, &keys, &scratch, concurrency).await);
    raw_http = raw_http.min(raw::http_gets(&urls, &scratch, concurrency).await);
    let rss = peak_rss_mib(worker.pid());
    let size = format!("{n} images × {:.1} MB", image.len() as f64 / 1e6);
    for (from, secs, raw_secs) in [("S3", s3_secs, raw_s3), ("HTTP", http_secs, raw_http)] {
        let ratio = raw_secs / secs;
        rows.push(Row::versus(
            format!("image staging from {from}, {size}, into the job folder"),
            format!("{:.0} MB/s ({secs:.2} s)", mb_per_s(total, secs)),
            format!(
                "raw parallel GET to files, {concurrency} at once: {:.0} MB/s ({raw_secs:.2} s)",
                mb_per_s(total, raw_secs)
            ),
            (ratio, 0.8),
        ));
    }
    rows.push(Row::limit(
        "worker peak RSS, both stagings".into(),
        format!("{rss:.0} MiB"),
        "< 100 MB".into(),
        rss * 1.048_576 < 100.0,
    ));
}

/// Result upload of a big output (the fake engine's `big<N>` mode) against a raw multipart PUT
/// of a file of the same size and bytes, and the worker's peak RSS after a smaller and a larger one.
pub async fn upload(scale: &Scale, s: &Services, rows: &mut Vec<Row>) {
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let worker = c.work("work", "none").await;
    let (small, large) = scale.upload_mib;
    let bucket = raw::bucket(s);
    let file = raw::big_file(&c.dir.path().join("raw.bin"), large);
    let raw_secs = raw::multipart_put(&bucket, &format!("{}/raw-multipart", c.namespace), &file).await;
    std::fs::remove_file(&file).unwrap();
    let mut runs = Vec::new();
    for mib in [small, large] {
        let url = c.edge.add(&format!("fake-big{mib}.png"), tiny_png());
        let before = stage_secs(&metrics(&worker).await, "uploading");
        let id = serve
            .api()
            .submit(json!({"image_urls": [url], "pipeline": "draft"}))
            .await;
        let secs = timed(&serve, &worker, &id, "uploading", before).await;
        runs.push((mib, secs, peak_rss_mib(worker.pid())));
        // Frees the bucket's disk.
        assert_eq!(serve.api().delete(&format!("/api/v1/jobs/{id}")).await.status(), 204);
    }
    let bytes = large << 20;
    let (_, secs, rss_large) = runs[1];
    let ratio = raw_secs / secs;
    rows.push(Row::versus(
        format!("result upload, {large} MiB of outputs to S3"),
        format!("{:.0} MB/s ({secs:.2} s)", mb_per_s(bytes, secs)),
        format!(
            "raw multipart PUT (rust-s3 defaults): {:.0} MB/s ({raw_secs:.2} s)",
            mb_per_s(bytes, raw_secs)
        ),
        (ratio, 0.8),
    ));
    let rss_small = runs[0].2;
    rows.push(Row::limit(
        format!("worker peak RSS after a {small} MiB and then a {large} MiB result"),
        format!("{rss_small:.0} MiB, then {rss_large:.0} MiB"),
        "bounded: no growth with size".into(),
        rss_large <= rss_small * 1.1 + 8.0,
    ));
}
