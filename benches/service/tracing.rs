//! What tracing costs: the durable accept rate and the engine gap with every span exported to a
//! local OTLP/HTTP receiver, against the same with tracing off, in one run.

use crate::api::{request, serve_logged};
use crate::cluster::Cluster;
use crate::files::metrics;
use crate::report::Row;
use crate::runs::{all_succeed, submit};
use crate::{wrk, Scale};
use actix_web::web;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An OTLP/HTTP receiver that counts what it gets and answers at once.
async fn sink() -> (String, Arc<AtomicU64>) {
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    let server = actix_web::HttpServer::new(move || {
        let counted = counted.clone();
        actix_web::App::new().app_data(web::PayloadConfig::new(64 << 20)).route(
            "/v1/traces",
            web::post().to(move |body: web::Bytes| {
                counted.fetch_add(body.len() as u64, Ordering::Relaxed);
                async { actix_web::HttpResponse::Ok().finish() }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    (url, bytes)
}

/// Mean of a histogram, from its `_sum` and `_count`.
fn mean(metrics: &str, name: &str) -> f64 {
    let value = |suffix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{suffix} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    value("_sum") / value("_count").max(1.0)
}

/// Accept rate and engine gap, tracing on against off.
pub async fn tracing(scale: &Scale, rows: &mut Vec<Row>) {
    let (endpoint, received) = sink().await;
    let mut c = Cluster::new(&[]).await;
    let off = serve_logged(&c, "serve-off").await;
    // Processes take the cluster's environment as they start: the endpoint for this one only.
    c.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
    let on = serve_logged(&c, "serve-on").await;
    c.env.pop();
    let script = wrk::post_json_script(c.dir.path(), &request(&c, 20).to_string());
    // Off, on, off, on: a drift of the machine falls on both.
    let mut rates = [0.0, 0.0];
    for _ in 0..2 {
        for (i, p) in [&off, &on].into_iter().enumerate() {
            let run = wrk::run(&p.api().url("/api/v1/jobs"), scale.clients, scale.secs, Some(&script));
            assert_eq!(run.errors, 0);
            rates[i] += run.rate / 2.0;
        }
    }
    rows.push(Row::versus(
        format!(
            "durable accept rate, {} clients, tracing on (every span exported to a local OTLP receiver)",
            scale.clients
        ),
        format!("{:.0}/s", rates[1]),
        format!("tracing off: {:.0}/s (alternated, twice each)", rates[0]),
        (rates[1] / rates[0], 0.95),
    ));
    drop((on, off, c));

    // The gap: the same queued jobs for a worker with tracing off, then one with it on.
    let n = scale.gap_jobs;
    let mut c = Cluster::new(&[("FAKE_MESHROOM_MODE", "instant")]).await;
    let serve = c.serve("serve").await;
    let mut gaps = Vec::new();
    for on in [false, true] {
        let ids = submit(serve.api(), &c.edge, n).await;
        if on {
            c.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
        }
        let worker = c.work(if on { "work-on" } else { "work-off" }, "none").await;
        if on {
            c.env.pop();
        }
        all_succeed(serve.api(), &ids).await;
        gaps.push(mean(&metrics(&worker).await, "meshroom_engine_gap_seconds") * 1e3);
    }
    rows.push(Row::versus(
        format!("mean gap between engine runs, {n} queued jobs, zero-time fake, tracing on (RabbitMQ + S3)"),
        format!("{:.1} ms", gaps[1]),
        format!(
            "tracing off: {:.1} ms ({:.1} MB of spans received in all)",
            gaps[0],
            received.load(Ordering::Relaxed) as f64 / 1e6
        ),
        (gaps[0] / gaps[1], 0.95),
    ));
}
