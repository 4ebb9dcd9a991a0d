//! What tracing costs: the durable accept rate and the engine gap with every span exported to a
//! local OTLP/HTTP receiver, against the same with tracing off, in one run.

use crate::api::{request, serve_logged};
use crate::cluster::Cluster;
use crate::files::metrics;
use crate::report::{cpu_per_op_ms, Cpu, Row};
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

/// A histogram's `_sum` and `_count`.
fn sum_count(metrics: &str, name: &str) -> [f64; 2] {
    let value = |suffix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{suffix} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    [value("_sum"), value("_count")]
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
    // Off, on, on, off, three times, in runs of half the usual length: a drift of the machine
    // (and the table growing) falls on both alike. Runs alone vary by +-10% here.
    let secs = (scale.secs / 2).max(1);
    let (mut sums, mut runs) = ([0.0, 0.0], Vec::new());
    // CPU per accept of the serve under load, and of PostgreSQL + RabbitMQ + this process (the
    // receiver): a steadier view of the cost than the rate on shared cores.
    let cpu = Cpu::of(&[off.pid(), on.pid()], &["postgres", "beam.smp"]);
    let mut spent = [[0.0; 2]; 2];
    let mut accepted = [0.0; 2];
    for _ in 0..3 {
        for i in [0, 1, 1, 0] {
            let p = [&off, &on][i];
            let before = cpu.now();
            let run = wrk::run(&p.api().url("/api/v1/jobs"), scale.clients, secs, Some(&script));
            let ms = cpu_per_op_ms(&before, &cpu.now(), 1.0);
            assert_eq!(run.errors, 0);
            sums[i] += run.rate;
            runs.push(run.rate);
            spent[i][0] += ms[i];
            // PostgreSQL, RabbitMQ, this process (not wrk: the same work either way).
            spent[i][1] += ms[2] + ms[3] + ms[5];
            accepted[i] += run.requests as f64;
        }
    }
    let [cpu_off, cpu_on] = [0, 1].map(|i| spent[i].map(|ms| ms / accepted[i]));
    let (low, high) = runs.iter().fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
    rows.push(Row::versus(
        format!(
            "durable accept rate, {} clients, tracing on (every span exported to a local OTLP receiver)",
            scale.clients
        ),
        format!(
            "{:.0}/s; CPU per accept: serve {:.3} ms, the rest {:.3} ms",
            sums[1] / 6.0,
            cpu_on[0],
            cpu_on[1]
        ),
        format!(
            "tracing off: {:.0}/s; serve {:.3} ms, the rest {:.3} ms (off, on, on, off x 3, {secs} s each; runs {low:.0}-{high:.0}/s)",
            sums[0] / 6.0,
            cpu_off[0],
            cpu_off[1]
        ),
        (sums[1] / sums[0], 0.95),
    ));
    drop((on, off, c));

    // The gap: queued jobs for a worker with tracing off, then on, on, off (half of them each).
    let n = scale.gap_jobs;
    let mut c = Cluster::new(&[("FAKE_MESHROOM_MODE", "instant")]).await;
    let serve = c.serve("serve").await;
    let mut gaps = [[0.0; 2]; 2];
    for (k, on) in [false, true, true, false].into_iter().enumerate() {
        let ids = submit(serve.api(), &c.edge, n / 2).await;
        if on {
            c.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
        }
        let worker = c
            .work(&format!("work-{}-{k}", if on { "on" } else { "off" }), "none")
            .await;
        if on {
            c.env.pop();
        }
        all_succeed(serve.api(), &ids).await;
        let [sum, count] = sum_count(&metrics(&worker).await, "meshroom_engine_gap_seconds");
        gaps[on as usize][0] += sum;
        gaps[on as usize][1] += count;
    }
    let [off_ms, on_ms] = gaps.map(|[sum, count]| sum / count.max(1.0) * 1e3);
    rows.push(Row::versus(
        format!("mean gap between engine runs, {n} queued jobs, zero-time fake, tracing on (RabbitMQ + S3)"),
        format!("{on_ms:.1} ms"),
        format!(
            "tracing off: {off_ms:.1} ms (off, on, on, off, {} jobs each; {:.1} MB of spans received in all)",
            n / 2,
            received.load(Ordering::Relaxed) as f64 / 1e6
        ),
        (off_ms / on_ms, 0.95),
    ));
}
