//! Figures of the HTTP API over RabbitMQ and S3: durable accept rate against the raw broker and
//! S3 limits, and reads with 10,000 recorded jobs.

use crate::cluster::Cluster;
use crate::procs::Services;
use crate::report::{cpu_per_op_ms, peak_rss_mib, Cpu, Row};
use crate::{raw, wrk, Scale};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A job request with `n` image URLs, as a client would send it.
fn request(c: &Cluster, n: usize) -> Value {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("{}/files/photo-{i:04}.jpg", c.edge.base))
        .collect();
    json!({"image_urls": urls, "pipeline": "draft", "metadata": {"customer": "bench"}})
}

/// Durable accept rate (202 after the broker's confirm and the stored record) against raw
/// confirmed publishes and raw small-object PUTs, same concurrency, one after the other.
pub async fn accept(scale: &Scale, s: &Services, rows: &mut Vec<Row>) {
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let body = request(&c, 20);
    // One submit first: its stored record is what the raw PUTs write, byte for byte in size.
    let id = serve.api().submit(body.clone()).await;
    let record = serde_json::to_vec(&serve.api().job(&id).await).unwrap();
    let message = serde_json::to_vec(&json!({ "id": id })).unwrap();
    let (clients, secs) = (scale.clients, scale.secs);
    // Where the CPU goes, per operation: the machine's cores are shared by everything here.
    let cpu = Cpu::of(&[serve.pid()], &["garage", "beam.smp"]);
    let t0 = cpu.now();
    let queue = format!("{}.raw", c.namespace);
    let mut publish = raw::confirmed_publishes(s, &queue, &message, (clients, secs as f64), None).await;
    let t1 = cpu.now();
    let mut put = raw::small_puts(s, &c.namespace, &record, clients, secs as f64).await;
    let t2 = cpu.now();
    // Both at once per client, as a submit does them: the raw work of an accept, without HTTP.
    let also = Some((raw::bucket(s), c.namespace.clone(), record.clone()));
    let mut both = raw::confirmed_publishes(s, &queue, &message, (clients, secs as f64), also).await;
    let t3 = cpu.now();
    let script = wrk::post_json_script(c.dir.path(), &body.to_string());
    let accepted = wrk::run(&serve.api().url("/api/v1/jobs"), clients, secs, Some(&script));
    let t4 = cpu.now();
    let per_op = |a: &[f64], b: &[f64], ops: usize| {
        let ms = cpu_per_op_ms(a, b, ops as f64);
        // serve, Garage, RabbitMQ, then the client: wrk (a waited-for child) or this process.
        let client = ms[3] + ms[4];
        format!(
            "serve {:.2} + Garage {:.2} + RabbitMQ {:.2} + client {:.2} = {:.2} ms",
            ms[0],
            ms[1],
            ms[2],
            client,
            ms[..3].iter().sum::<f64>() + client
        )
    };
    let limit = publish.rate().min(put.rate());
    let ratio = accepted.rate / limit;
    rows.push(Row {
        figure: format!("durable accept rate, {clients} clients, 20-URL jobs (`serve`, RabbitMQ + S3)"),
        measured: format!(
            "{:.0}/s ({} accepted, {} errors)",
            accepted.rate, accepted.requests, accepted.errors
        ),
        compared: format!(
            "raw confirmed publish {:.0}/s (p99 {:.1} ms), raw PUT {:.0}/s (p99 {:.1} ms)",
            publish.rate(),
            publish.quantile_ms(0.99),
            put.rate(),
            put.quantile_ms(0.99)
        ),
        ratio: Some(ratio),
        target: "≥ 0.7× the lower".into(),
        met: Some(ratio >= 0.7 && accepted.errors == 0),
    });
    rows.push(Row {
        figure: "CPU per operation (2 cores shared by all)".into(),
        measured: format!("accept: {}", per_op(&t3, &t4, accepted.requests as usize)),
        compared: format!(
            "publish: {}; PUT: {}; both: {}",
            per_op(&t0, &t1, publish.latencies.len()),
            per_op(&t1, &t2, put.latencies.len()),
            per_op(&t2, &t3, both.latencies.len())
        ),
        ratio: None,
        target: "(explains the row above)".into(),
        met: None,
    });
    rows.push(Row {
        figure: "the same accept rate against raw PUT and confirmed publish together, per client".into(),
        measured: format!("{:.0}/s", accepted.rate),
        compared: format!(
            "raw PUT + publish at once: {:.0}/s (p50 {:.1} ms, p99 {:.1} ms)",
            both.rate(),
            both.quantile_ms(0.5),
            both.quantile_ms(0.99)
        ),
        ratio: Some(accepted.rate / both.rate()),
        target: "(explains the row above)".into(),
        met: None,
    });
    rows.push(Row::limit(
        "accept latency p99 (same run)".into(),
        format!("{:.1} ms (p50 {:.1} ms)", accepted.p99_ms, accepted.p50_ms),
        "< 20 ms".into(),
        accepted.p99_ms < 20.0,
    ));
}

/// GET one job and the first list page with `scale.records` recorded jobs, and `serve`'s peak RSS.
pub async fn records(scale: &Scale, rows: &mut Vec<Row>) {
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let body = request(&c, 20);
    let api = serve.api();
    let ids: Vec<String> = futures_util::stream::iter(0..scale.records)
        .map(|_| api.submit(body.clone()))
        .buffer_unordered(scale.clients)
        .collect()
        .await;
    let connections = 8;
    let script = wrk::get_jobs_script(c.dir.path(), &ids);
    let get = wrk::run(&api.url("/api/v1/jobs/"), connections, scale.secs, Some(&script));
    let list = wrk::run(&api.url("/api/v1/jobs"), connections, scale.secs, None);
    let rss = peak_rss_mib(serve.pid());
    let n = scale.records;
    rows.push(Row::limit(
        format!("GET one job of {n}, {connections} connections, random ids (S3)"),
        format!("p99 {:.1} ms (p50 {:.1} ms, {:.0}/s)", get.p99_ms, get.p50_ms, get.rate),
        "p99 < 10 ms".into(),
        get.p99_ms < 10.0 && get.errors == 0,
    ));
    rows.push(Row::limit(
        format!("first list page (20 jobs) of {n}, {connections} connections (S3)"),
        format!(
            "p99 {:.1} ms (p50 {:.1} ms, {:.0}/s)",
            list.p99_ms, list.p50_ms, list.rate
        ),
        "p99 < 50 ms".into(),
        list.p99_ms < 50.0 && list.errors == 0,
    ));
    rows.push(Row::limit(
        format!("`serve` peak RSS after {n} submits and the reads above"),
        format!("{rss:.0} MiB"),
        "< 150 MB".into(),
        rss * 1.048_576 < 150.0,
    ));
}
