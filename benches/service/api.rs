//! The durable accept rate of the HTTP API over RabbitMQ and PostgreSQL, against the raw broker
//! and database limits.

use crate::cluster::Cluster;
use crate::procs::Services;
use crate::report::{cpu_per_op_ms, Cpu, Row};
use crate::{raw, wrk, Scale};
use serde_json::{json, Value};

/// A job request with `n` image URLs, as a client would send it.
pub fn request(c: &Cluster, n: usize) -> Value {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("{}/files/photo-{i:04}.jpg", c.edge.base))
        .collect();
    json!({"image_urls": urls, "pipeline": "draft", "metadata": {"customer": "bench"}})
}

/// Durable accept rate (202 after the committed row and the broker's confirm) against raw
/// confirmed publishes and raw inserts of the same row, same concurrency, one after the other.
pub async fn accept(scale: &Scale, s: &Services, rows: &mut Vec<Row>) {
    let c = Cluster::new(&[]).await;
    let serve = serve_logged(&c, "serve").await;
    let body = request(&c, 20);
    // One submit first: its stored row is what the raw inserts write, byte for byte in size.
    let id = serve.api().submit(body.clone()).await;
    let store = meshroom_svc::jobs::Store::new(meshroom_svc::jobs::Db::open(&c.db.url, 1).await.unwrap());
    let record = serde_json::to_string(&store.get(id.parse().unwrap()).await.unwrap().unwrap()).unwrap();
    let raw_db = crate::procs::TestDatabase::create(s, &format!("{}raw", c.namespace)).await;
    let message = serde_json::to_vec(&json!({ "id": id })).unwrap();
    let (clients, secs) = (scale.clients, scale.secs);
    // Where the CPU goes, per operation: the machine's cores are shared by everything here.
    let cpu = Cpu::of(&[serve.pid()], &["postgres", "beam.smp"]);
    let t0 = cpu.now();
    let queue = format!("{}.raw", c.namespace);
    let mut publish = raw::confirmed_publishes(s, &queue, &message, (clients, secs as f64), None).await;
    let t1 = cpu.now();
    let mut put = crate::db::pg_inserts(&raw_db.url, &record, clients, secs as f64).await;
    let t2 = cpu.now();
    // Each phase starts on a settled database: not during the vacuum of the rows of the last one.
    crate::db::settle(&raw_db.url).await;
    let t2s = cpu.now();
    // One after the other per client, as a submit does them: the raw work of an accept, without HTTP.
    let also = Some((raw_db.url.clone(), record.clone()));
    let mut both = raw::confirmed_publishes(s, &queue, &message, (clients, secs as f64), also).await;
    let t3 = cpu.now();
    crate::db::settle(&raw_db.url).await;
    let t3s = cpu.now();
    let script = wrk::post_json_script(c.dir.path(), &body.to_string());
    let accepted = wrk::run(&serve.api().url("/api/v1/jobs"), clients, secs, Some(&script));
    let t4 = cpu.now();
    // The same with every job published at once (`queued_per_tenant = 0`, first come first
    // served): above, the benchmark's one tenant has all but its first jobs held (fair
    // scheduling), so those submits publish nothing.
    drop(serve);
    let fcfs = Cluster::new(&[("MESHROOM_SVC_SCHEDULING_QUEUED_PER_TENANT", "0")]).await;
    let serve = serve_logged(&fcfs, "serve").await;
    let cpu0 = Cpu::of(&[serve.pid()], &["postgres", "beam.smp"]);
    let t5 = cpu0.now();
    let all = wrk::run(&serve.api().url("/api/v1/jobs"), clients, secs, Some(&script));
    let t6 = cpu0.now();
    let per_op = |a: &[f64], b: &[f64], ops: usize| {
        let ms = cpu_per_op_ms(a, b, ops as f64);
        // serve, PostgreSQL, RabbitMQ, then the client: wrk (a waited-for child) or this process.
        let client = ms[3] + ms[4];
        format!(
            "serve {:.2} + PostgreSQL {:.2} + RabbitMQ {:.2} + client {:.2} = {:.2} ms",
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
        figure: format!("durable accept rate, {clients} clients, 20-URL jobs (`serve`, RabbitMQ + PostgreSQL)"),
        measured: format!(
            "{:.0}/s ({} accepted, {} errors)",
            accepted.rate, accepted.requests, accepted.errors
        ),
        compared: format!(
            "raw confirmed publish {:.0}/s (p99 {:.1} ms), raw insert of the row {:.0}/s (p99 {:.1} ms)",
            publish.rate(),
            publish.quantile_ms(0.99),
            put.rate(),
            put.quantile_ms(0.99)
        ),
        ratio: Some(ratio),
        target: "≥ 0.7× the lower".into(),
        met: Some(ratio >= 0.7 && accepted.errors == 0),
    });
    let ratio0 = all.rate / limit;
    rows.push(Row {
        figure: "the same, every job published (`queued_per_tenant = 0`)".into(),
        measured: format!("{:.0}/s ({} accepted, {} errors)", all.rate, all.requests, all.errors),
        compared: "the lower raw limit above".into(),
        ratio: Some(ratio0),
        target: "≥ 0.7× the lower".into(),
        met: Some(ratio0 >= 0.7 && all.errors == 0),
    });
    rows.push(Row {
        figure: "CPU per operation (2 cores shared by all)".into(),
        measured: format!(
            "accept: {}; every job published: {}",
            per_op(&t3s, &t4, accepted.requests as usize),
            per_op(&t5, &t6, all.requests as usize)
        ),
        compared: format!(
            "publish: {}; insert: {}; both: {}",
            per_op(&t0, &t1, publish.latencies.len()),
            per_op(&t1, &t2, put.latencies.len()),
            per_op(&t2s, &t3, both.latencies.len())
        ),
        ratio: None,
        target: "(explains the row above)".into(),
        met: None,
    });
    rows.push(Row {
        figure: "the same accept rate against raw insert then confirmed publish, per client".into(),
        measured: format!("{:.0}/s", accepted.rate),
        compared: format!(
            "raw insert + publish: {:.0}/s (p50 {:.1} ms, p99 {:.1} ms)",
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
        "< 30 ms".into(),
        accepted.p99_ms < 30.0,
    ));
    rows.push(Row::limit(
        "accept latency p99, every job published (same run)".into(),
        format!("{:.1} ms (p50 {:.1} ms)", all.p99_ms, all.p50_ms),
        "< 30 ms".into(),
        all.p99_ms < 30.0,
    ));
}

/// A `serve` logging as in production (one line per request, `RUST_LOG=info`) into
/// `<dir>/<name>.log`: the figures include what logging costs.
pub async fn serve_logged(c: &Cluster, name: &str) -> crate::procs::Proc {
    let data = c.dir.path().join(name).display().to_string();
    let mut env = c.env.clone();
    env.push(("RUST_LOG".into(), "info".into()));
    let log = c.dir.path().join(format!("{name}.log"));
    crate::procs::Proc::start_logged(
        c.dir.path(),
        &["serve", "--data-dir", &data],
        Some(crate::procs::free_port()),
        &env,
        Some(&log),
    )
    .await
}
