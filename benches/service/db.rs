//! Figures of job state in SQL: raw inserts of a job's row (the limits the accept rates are held
//! against), reads with many recorded jobs, all-in-one's durable upload accept on SQLite with its
//! fsync cost, and all-in-one's restart to a resumed engine.

use crate::cluster::Cluster;
use crate::helpers::{invocations, photo, Edge, Fake};
use crate::procs::{free_port, Proc};
use crate::report::{peak_rss_mib, Load, Row};
use crate::{raw, wrk, Scale};
use futures_util::StreamExt;
use meshroom_svc::jobs::{Db, Job, Status, Store};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A job row as the store inserts it, on the service's own schema (its outbox mark, a narrow row of
/// another table, left out: the raw limit is the row alone).
pub const INSERT: &str = "INSERT INTO jobs (id, status, pipeline, idempotency_key, finished_at, webhook_pending, \
                      changed_at, version, doc) VALUES ($1, 'enqueued', 'draft', NULL, NULL, FALSE, $2, 1, $3)";

/// Raw inserts of `doc` as a job row, by `clients` connections for `secs`, into a database with
/// the service's schema (`url` is migrated first).
pub async fn pg_inserts(url: &str, doc: &str, clients: usize, secs: f64) -> Load {
    let Db::Postgres(_) = Db::open(url, 1).await.unwrap() else {
        panic!("a PostgreSQL URL")
    };
    let pool = raw_pool(url, clients).await;
    let doc = doc.to_string();
    raw::closed_loop(clients, secs, move |_, _| {
        let (pool, doc) = (pool.clone(), doc.clone());
        async move {
            let id = uuid::Uuid::now_v7().as_bytes().to_vec();
            let q = sqlx::query(INSERT)
                .bind(id)
                .bind(chrono::Utc::now().timestamp_millis())
                .bind(doc);
            q.execute(&pool).await.is_ok()
        }
    })
    .await
}

/// A pool of `clients` connections for raw statements: like the service's, it does not ping a
/// busy connection before each use.
pub async fn raw_pool(url: &str, clients: usize) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(clients as u32)
        .test_before_acquire(false)
        .connect(url)
        .await
        .unwrap()
}

/// Vacuums, analyzes and checkpoints the jobs of a database just loaded, so that the next
/// figure does not pay for the last one's autovacuum and dirty pages.
pub async fn settle(url: &str) {
    let pool = raw_pool(url, 1).await;
    for sql in ["VACUUM ANALYZE jobs", "CHECKPOINT"] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

/// GET one job and the first list page (unfiltered, and filtered to 1% of the jobs) with
/// `scale.records` recorded jobs, and `serve`'s peak RSS.
pub async fn records(scale: &Scale, rows: &mut Vec<Row>) {
    let c = Cluster::new(&[]).await;
    let serve = crate::api::serve_logged(&c, "serve").await;
    let api = serve.api();
    // Recorded straight into the database, 1% of them failed: the reads are under test here.
    let store = std::sync::Arc::new(Store::new(Db::open(&c.db.url, 16).await.unwrap()));
    let urls: Vec<String> = (0..20)
        .map(|i| format!("{}/files/photo-{i:04}.jpg", c.edge.base))
        .collect();
    let ids: Vec<uuid::Uuid> = futures_util::stream::iter(0..scale.records)
        .map(|i| {
            let (store, urls) = (store.clone(), urls.clone());
            async move {
                let mut job = Job::new("draft".into(), 3600);
                job.image_urls = urls;
                job.metadata = Some(json!({"customer": "bench"}));
                if i % 100 == 0 {
                    job.finish(Status::Failed, None);
                }
                store.insert(job).await.unwrap().job.id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    // Their messages confirmed, as a service's would have been long ago: otherwise the outbox
    // sweep takes them for lost ones and publishes 100 every 5 s during the reads.
    for chunk in ids.chunks(1000) {
        store.published(chunk).await.unwrap();
    }
    let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    // Settled as a service that recorded them over days would be: the bulk load's dead tuples
    // vacuumed, statistics fresh, its dirty pages written. Otherwise autovacuum and the
    // checkpointer run during the first reads and their stalls are measured instead.
    settle(&c.db.url).await;
    let connections = 8;
    let sample: Vec<String> = ids.iter().step_by((ids.len() / 10_000).max(1)).cloned().collect();
    let script = wrk::get_jobs_script(c.dir.path(), &sample);
    let get = wrk::run(&api.url("/api/v1/jobs/"), connections, scale.secs, Some(&script));
    // The same reads by 2 connections: about as many per second on these 2 cores, so the rest
    // of the 8-connection latency is waiting for a core (see BENCHMARKS.md).
    let get2 = wrk::run(&api.url("/api/v1/jobs/"), 2, scale.secs, Some(&script));
    let list = wrk::run(&api.url("/api/v1/jobs"), connections, scale.secs, None);
    let failed = wrk::run(&api.url("/api/v1/jobs?status=failed"), connections, scale.secs, None);
    let rss = peak_rss_mib(serve.pid());
    let n = scale.records;
    rows.push(Row::limit(
        format!("GET one job of {n}, {connections} connections, random ids (PostgreSQL)"),
        format!("p99 {:.1} ms (p50 {:.1} ms, {:.0}/s)", get.p99_ms, get.p50_ms, get.rate),
        "p99 < 5 ms".into(),
        get.p99_ms < 5.0 && get.errors == 0,
    ));
    rows.push(Row {
        figure: "the same GET by 2 connections".into(),
        measured: format!(
            "p99 {:.1} ms (p50 {:.1} ms, {:.0}/s)",
            get2.p99_ms, get2.p50_ms, get2.rate
        ),
        compared: String::new(),
        ratio: None,
        target: "(explains the row above)".into(),
        met: None,
    });
    for (what, run) in [("", &list), (", `status=failed` (1% of jobs)", &failed)] {
        rows.push(Row::limit(
            format!("first list page (20 jobs) of {n}{what}, {connections} connections"),
            format!("p99 {:.1} ms (p50 {:.1} ms, {:.0}/s)", run.p99_ms, run.p50_ms, run.rate),
            "p99 < 20 ms".into(),
            run.p99_ms < 20.0 && run.errors == 0,
        ));
    }
    rows.push(Row::limit(
        format!("`serve` peak RSS with {n} recorded jobs, after the reads above"),
        format!("{rss:.0} MiB"),
        "< 150 MB".into(),
        rss * 1.048_576 < 150.0,
    ));
}

/// The 13 buddha13 photos, as a multipart form.
fn photos_form(photos: &[Vec<u8>]) -> reqwest::multipart::Form {
    photos.iter().enumerate().fold(
        reqwest::multipart::Form::new().text("pipeline", "draft"),
        |form, (i, bytes)| {
            let part = reqwest::multipart::Part::bytes(bytes.clone()).file_name(format!("photo-{i:02}.jpg"));
            form.part("images", part)
        },
    )
}

/// What an accept writes, done directly: the photos as files (with or without fsync of each and
/// of their folder) and a job row in SQLite (synchronous FULL or OFF).
async fn raw_sqlite_accepts(dir: &Path, photos: &[Vec<u8>], durable: bool, clients: usize, secs: f64) -> Load {
    let db = dir.join(if durable { "durable.db" } else { "fast.db" });
    let Db::Sqlite(pool) = Db::open(&format!("sqlite://{}", db.display()), clients as u32)
        .await
        .unwrap()
    else {
        unreachable!()
    };
    if !durable {
        for _ in 0..clients {
            sqlx::query("PRAGMA synchronous = OFF").execute(&pool).await.unwrap();
        }
    }
    let doc = serde_json::to_string(&Job::new("draft".into(), 3600)).unwrap();
    let (dir, photos) = (dir.to_path_buf(), photos.to_vec());
    raw::closed_loop(clients, secs, move |c, n| {
        let (pool, doc, photos) = (pool.clone(), doc.clone(), photos.clone());
        let folder = dir.join(format!("raw-{durable}-{c}-{n}"));
        async move {
            tokio::fs::create_dir_all(&folder).await.unwrap();
            for (i, bytes) in photos.iter().enumerate() {
                let path = folder.join(format!("{i}.jpg"));
                tokio::fs::write(&path, bytes).await.unwrap();
                if durable {
                    tokio::fs::File::open(&path).await.unwrap().sync_all().await.unwrap();
                }
            }
            if durable {
                tokio::fs::File::open(&folder).await.unwrap().sync_all().await.unwrap();
            }
            let id = uuid::Uuid::now_v7().as_bytes().to_vec();
            let q = sqlx::query(INSERT).bind(id).bind(0i64).bind(doc);
            q.execute(&pool).await.is_ok()
        }
    })
    .await
}

/// all-in-one's durable accept of 13-photo uploads on SQLite, against the raw writes of the same
/// bytes and row, with and without fsync.
pub async fn sqlite_accept(scale: &Scale, rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos_cache();
    let bytes: usize = photos.iter().map(Vec::len).sum();
    // The worker takes no job (its disk check never passes): the accept is measured, not the
    // fake engine. Jobs stay queued.
    let env: Vec<(String, String)> = vec![("MESHROOM_SVC_WORKER_MIN_FREE_BYTES".into(), (1u64 << 60).to_string())];
    let svc = Proc::all_in_one(dir.path(), &dir.path().join("data"), free_port(), &env).await;
    let clients = 8;
    let secs = scale.secs as f64;
    let (client, url) = (reqwest::Client::new(), svc.api().url("/api/v1/jobs"));
    let accepted = raw::closed_loop(clients, secs, move |_, _| {
        let (client, url, form) = (client.clone(), url.clone(), photos_form(&photos_cache()));
        async move {
            let resp = client.post(url).multipart(form).send().await;
            resp.is_ok_and(|r| r.status() == 202)
        }
    })
    .await;
    let mut durable = raw_sqlite_accepts(dir.path(), &photos, true, clients, secs).await;
    let mut fast = raw_sqlite_accepts(dir.path(), &photos, false, clients, secs).await;
    let mut accepted = accepted;
    let ratio = accepted.rate() / durable.rate();
    rows.push(Row::versus(
        format!(
            "all-in-one accept, uploads of 13 photos ({:.1} MB), {clients} clients, SQLite",
            bytes as f64 / 1e6
        ),
        format!(
            "{:.1}/s (p99 {:.0} ms, {} errors)",
            accepted.rate(),
            accepted.quantile_ms(0.99),
            accepted.errors
        ),
        format!(
            "raw write of the files + fsync + SQLite insert (synchronous FULL): {:.1}/s (p99 {:.0} ms)",
            durable.rate(),
            durable.quantile_ms(0.99)
        ),
        (ratio, 0.7),
    ));
    rows.push(Row {
        figure: "the cost of fsync in that raw write".into(),
        measured: format!("{:.1}/s durable", durable.rate()),
        compared: format!(
            "without fsync and with synchronous OFF: {:.1}/s (p99 {:.0} ms): fsync costs {:.0}%",
            fast.rate(),
            fast.quantile_ms(0.99),
            (1.0 - durable.rate() / fast.rate()) * 100.0
        ),
        ratio: Some(durable.rate() / fast.rate()),
        target: "(explains the row above)".into(),
        met: None,
    });
}

/// The 13 real buddha13 photos (about 1.9 MB), read once.
fn photos_cache() -> Vec<Vec<u8>> {
    static PHOTOS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    PHOTOS
        .get_or_init(|| {
            crate::photos::real_photos()
                .iter()
                .map(|p| std::fs::read(p).unwrap())
                .collect()
        })
        .clone()
}

/// all-in-one SIGKILLed while its engine runs, then started again: the time from the new
/// process's start to the engine running the interrupted job again.
pub async fn restart(rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let edge = Edge::start().await;
    let port = free_port();
    let svc = Proc::all_in_one(dir.path(), &data, port, &[]).await;
    let id = svc
        .api()
        .submit(json!({"image_urls": [edge.add(&Fake::Slow.image(), photo(0))], "pipeline": "draft"}))
        .await;
    let runs = || {
        invocations(dir.path())
            .iter()
            .filter(|r| r["job"] == id.as_str())
            .count()
    };
    svc.api()
        .wait_for(&id, 30, |j: &Value| j["stage"] == "reconstructing")
        .await;
    unsafe { libc::kill(svc.pid() as i32, libc::SIGKILL) };
    drop(svc);
    let started = Instant::now();
    let svc = Proc::all_in_one(dir.path(), &data, port, &[]).await;
    while runs() < 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "not resumed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resumed = started.elapsed();
    svc.api().post(&format!("/api/v1/jobs/{id}/cancel")).await;
    rows.push(Row::limit(
        "all-in-one SIGKILLed mid-run: restart to the engine running the job again".into(),
        format!("{:.0} ms", resumed.as_secs_f64() * 1e3),
        "< 1 s".into(),
        resumed < Duration::from_secs(1),
    ));
}
