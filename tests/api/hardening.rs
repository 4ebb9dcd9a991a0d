//! What a hostile client tries on uploads: resets mid-upload, stalled bodies, floods of form
//! parts, polyglot images; and what a careful operator needs: HEAD, ranges, disk and start-up checks.

use crate::helpers::*;
use crate::procs::*;
use meshroom_svc::error::Code;
use meshroom_svc::http::{ErrorBody, JobPage};
use meshroom_svc::jobs::Status;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUNDARY: &str = "hardening-boundary";

/// The head of a multipart POST /api/v1/jobs announcing `length` bytes of body.
fn multipart_head(addr: &str, length: u64) -> String {
    format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

fn file_part_head(name: &str) -> String {
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{name}\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
}

fn text_part(name: &str, value: &str) -> String {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

/// Entries of the app's upload staging folder.
fn staged(data: &Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(data.join("tmp")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

async fn wait_until(secs: f64, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed().as_secs_f64() < secs, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Sends the head and half of a photo as an upload, and waits until the server stages it.
async fn half_an_upload(app: &TestApp) -> TcpStream {
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let photo = photo(0);
    stream
        .write_all(multipart_head(&addr, 50 << 20).as_bytes())
        .await
        .unwrap();
    stream.write_all(file_part_head("a.jpg").as_bytes()).await.unwrap();
    stream.write_all(&photo[..photo.len() / 2]).await.unwrap();
    let data = app.app.config.server.data_dir.clone();
    wait_until(10.0, "the upload is staged", || {
        staged(&data)
            .iter()
            .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()))
    })
    .await;
    stream
}

#[tokio::test]
async fn an_upload_reset_mid_way_leaves_nothing_on_disk() {
    let app = spawn_app().await;
    let data = app.app.config.server.data_dir.clone();
    for _ in 0..3 {
        let stream = half_an_upload(&app).await;
        // SO_LINGER 0: closing sends a TCP reset, as a killed client or a middlebox would.
        stream.set_zero_linger().unwrap();
        drop(stream);
        let took = wait_until(2.0, "the staging folder is removed", || staged(&data).is_empty()).await;
        println!("reset mid-upload: staging folder gone after {took:?}");
    }
    let page: JobPage = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(page.jobs.len(), 0);
    assert_eq!(app.get("/health").await.status(), 200);
}

#[tokio::test]
async fn a_stalled_upload_times_out_and_is_removed() {
    let app = spawn_app_with(|c| c.server.body_timeout_secs = 1, vec![]).await;
    let data = app.app.config.server.data_dir.clone();
    let mut stream = half_an_upload(&app).await;
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    wait_until(2.0, "the staging folder is removed", || staged(&data).is_empty()).await;
}

/// Sends a multipart body of `parts` as fast as the server takes it, and returns the server's
/// answer (status line and body) however early it comes.
async fn flood(addr: &str, parts: impl Iterator<Item = String> + Send + 'static, length: u64) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let head = multipart_head(addr, length);
    let writer = tokio::spawn(async move {
        if tx.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for part in parts {
            // The server may answer and close early: that is the point.
            if tx.write_all(part.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = vec![0; 64 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within 30 s"),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(String::from)
                })
                .and_then(|l| l.trim().parse::<usize>().ok());
            if length.is_some_and(|l| body.len() >= l) {
                break;
            }
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

#[tokio::test]
async fn floods_of_form_parts_are_refused_early_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let proc = Proc::all_in_one(dir.path(), &dir.path().join("data"), port, &[]).await;
    let addr = format!("127.0.0.1:{port}");
    let before = crate::cluster::peak_rss_kib(proc.pid());

    // 300 URL parts of 1 MiB: the first one is over the URL length cap.
    let mib_url = format!("http://127.0.0.1/{}", "a".repeat(1 << 20));
    let parts = std::iter::repeat_n(text_part("image_urls", &mib_url), 300);
    let (status, body) = flood(&addr, parts, 300 * (1 << 20) + 300 * 200).await;
    assert_eq!(status, 400, "{body}");
    let error: ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(error.error.code, Code::InvalidImageUrl);
    assert!(
        body.len() < 300,
        "the answer must not echo the URL: {} bytes",
        body.len()
    );

    // 300 URL parts of 7 KiB each: under the URL cap, over the form's text budget (1 MiB).
    let url = format!("http://127.0.0.1/{}", "b".repeat(7 << 10));
    let parts = std::iter::repeat_n(text_part("image_urls", &url), 300);
    let (status, body) = flood(&addr, parts, 300 * (8 << 10)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");

    // More URL parts than limits.max_images (500): refused at the 501st.
    let parts = std::iter::repeat_n(text_part("image_urls", "http://127.0.0.1/p.jpg"), 2000);
    let (status, body) = flood(&addr, parts, 2000 * 120).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too_many_images"), "{body}");

    let peak = crate::cluster::peak_rss_kib(proc.pid());
    println!(
        "form floods: peak RSS {} MiB (at start {} MiB)",
        peak >> 10,
        before >> 10
    );
    assert!(peak < 64 << 10, "peak RSS {peak} KiB");
    let page: JobPage = proc.api().get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(page.jobs.len(), 0);
}

/// A PNG chunk with its length and CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

#[tokio::test]
async fn polyglots_that_mimic_an_end_are_refused() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let mut jpeg = photo(0);
    jpeg.extend_from_slice(b"<script>alert(1)</script>\xFF\xD9");
    let png = tiny_png();
    let mut png_tricky = png.clone();
    png_tricky.extend_from_slice(&png_chunk(b"tEXt", b"c\0<?php system($_GET['c']); ?>"));
    png_tricky.extend_from_slice(&png[png.len() - 12..]);
    // A TIFF header and one directory giving 8×8 pixels, and no pixel data at all (38 bytes).
    let mut tiff = b"II*\0\x08\0\0\0\x02\0".to_vec();
    tiff.extend_from_slice(&[0, 1, 3, 0, 1, 0, 0, 0, 8, 0, 0, 0]); // ImageWidth 8
    tiff.extend_from_slice(&[1, 1, 3, 0, 1, 0, 0, 0, 8, 0, 0, 0]); // ImageLength 8
    tiff.extend_from_slice(&[0; 4]);
    assert_eq!(tiff.len(), 38);
    for (name, bytes) in [("j.jpg", jpeg), ("p.png", png_tricky), ("t.tif", tiff)] {
        let resp = app.upload(vec![(name, bytes.clone())], &[]).await;
        assert!(resp.status().is_client_error(), "{name}: {}", resp.status());
        let body: ErrorBody = resp.json().await.unwrap();
        assert!(
            [Code::InvalidImage, Code::UnsupportedImageType].contains(&body.error.code),
            "{name}: {body:?}"
        );
        let id = app.submit(json!({"image_urls": [edge.add(name, bytes)]})).await;
        let job = app.finished(&id, 30).await;
        assert_eq!(job.status, Status::Failed, "{name}");
        assert!(
            [Code::InvalidImage, Code::UnsupportedImageType].contains(&job.error.as_ref().unwrap().code),
            "{name}: {job:#?}"
        );
    }
    assert!(staged(&app.app.config.server.data_dir).is_empty());
}

/// A succeeded job of the fake engine, and the URL of its OBJ result.
async fn finished_job(app: &TestApp) -> (String, String) {
    let edge = Edge::start().await;
    let id = app.submit(json!({"image_urls": [edge.add("p.jpg", photo(0))]})).await;
    let job = app.finished(&id, 30).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    (id, file(&job, "texturedMesh.obj").url.clone())
}

#[tokio::test]
async fn head_answers_every_get_route() {
    let app = spawn_app().await;
    let (id, obj) = finished_job(&app).await;
    let obj_len = app.get(&obj).await.bytes().await.unwrap().len();
    for path in [
        "/health".to_string(),
        "/ready".into(),
        "/metrics".into(),
        "/".into(),
        "/api/v1/openapi.json".into(),
        "/api/v1/jobs".into(),
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/jobs/{id}/log"),
        obj.clone(),
    ] {
        let get = app.get(&path).await;
        let (status, get_type) = (get.status(), get.headers().get("content-type").cloned());
        let get_len = get.bytes().await.unwrap().len();
        let head = app.client.head(app.url(&path)).send().await.unwrap();
        assert_eq!(head.status(), status, "HEAD {path}");
        assert_eq!(head.headers().get("content-type").cloned(), get_type, "HEAD {path}");
        let length = head
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            length,
            Some(get_len.to_string()),
            "HEAD {path}: the length GET would send"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path} has no body");
    }
    let head = app.client.head(app.url(&obj)).send().await.unwrap();
    assert_eq!(head.headers()["accept-ranges"], "bytes");
    assert_eq!(head.headers()["content-length"], obj_len.to_string().as_str());
    let post_only = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(post_only.status(), 405);
    let allow = app.client.delete(app.url("/health")).send().await.unwrap();
    assert_eq!(allow.headers()["allow"], "GET, HEAD");
}

type Headers = Vec<(&'static str, String)>;

#[tokio::test]
async fn downloads_follow_rfc_9110_ranges_and_conditions() {
    let app = spawn_app().await;
    let (_, obj) = finished_job(&app).await;
    let whole = app.get(&obj).await;
    assert_eq!(whole.headers()["content-type"], "model/obj");
    let etag = whole.headers()["etag"].to_str().unwrap().to_string();
    let modified = whole.headers()["last-modified"].to_str().unwrap().to_string();
    let body = whole.bytes().await.unwrap();
    let get = |headers: Headers| {
        let mut req = app.client.get(app.url(&obj));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let cases: Vec<(Headers, u16, Option<&[u8]>)> = vec![
        (vec![("range", "bytes=0-5".into())], 206, Some(&body[..6])),
        (vec![("range", "bytes=-4".into())], 206, Some(&body[body.len() - 4..])),
        // Several ranges: the whole file. Invalid ones are ignored, never 416.
        (vec![("range", "bytes=0-1,4-5".into())], 200, Some(&body[..])),
        (vec![("range", "bytes=abc".into())], 200, Some(&body[..])),
        (vec![("range", "pages=1-2".into())], 200, Some(&body[..])),
        (vec![("range", format!("bytes={}-", body.len() + 10))], 416, None),
        // If-Range: the range for the version named, else the whole file.
        (
            vec![("range", "bytes=0-5".into()), ("if-range", etag.clone())],
            206,
            Some(&body[..6]),
        ),
        (
            vec![("range", "bytes=0-5".into()), ("if-range", "\"stale\"".into())],
            200,
            Some(&body[..]),
        ),
        (
            vec![("range", "bytes=0-5".into()), ("if-range", modified.clone())],
            206,
            Some(&body[..6]),
        ),
        (
            vec![
                ("range", "bytes=0-5".into()),
                ("if-range", "Mon, 01 Jan 2001 00:00:00 GMT".into()),
            ],
            200,
            Some(&body[..]),
        ),
        (vec![("if-none-match", etag.clone())], 304, None),
        (vec![("if-modified-since", modified.clone())], 304, None),
        (vec![("if-match", "\"other\"".into())], 412, None),
    ];
    for (headers, status, want) in cases {
        let shown = format!("{headers:?}");
        let resp = get(headers).await.unwrap();
        assert_eq!(resp.status(), status, "{shown}");
        if status == 416 {
            assert_eq!(
                resp.headers()["content-range"],
                format!("bytes */{}", body.len()).as_str()
            );
        }
        if let Some(want) = want {
            assert_eq!(&resp.bytes().await.unwrap()[..], want, "{shown}");
        }
    }
    let mtl = obj.replace(".obj", ".mtl");
    assert_eq!(app.get(&mtl).await.headers()["content-type"], "model/mtl");
}

#[tokio::test]
async fn metrics_can_require_an_admin_key() {
    let key = "k-metrics".to_string();
    let open = spawn_app_with(|c| c.secrets.api_keys = vec![key.clone().into()], vec![]).await;
    let anonymous = reqwest::Client::new();
    assert_eq!(anonymous.get(open.url("/metrics")).send().await.unwrap().status(), 200);
    let closed = spawn_app_with(
        |c| {
            c.secrets.api_keys = vec![key.clone().into()];
            c.server.metrics_public = false;
        },
        vec![],
    )
    .await;
    let resp = anonymous.get(closed.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(closed.get("/metrics").await.status(), 403, "a submit key is not enough");
    let (_, admin) = closed
        .app
        .keys
        .create("ops", meshroom_svc::tenants::Role::Admin, "", None)
        .await
        .unwrap();
    let resp = anonymous
        .get(closed.url("/metrics"))
        .header("x-api-key", secrecy::ExposeSecret::expose_secret(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "with an admin key");
    assert_eq!(anonymous.get(closed.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn list_pages_stay_small() {
    let app = spawn_app().await;
    let big = json!({"image_urls": ["http://127.0.0.1:1/a.jpg"], "metadata": {"x": "y".repeat(20_000)}});
    let resp = app.post_json("/api/v1/jobs", &big).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.json::<ErrorBody>().await.unwrap().error.code,
        Code::MetadataTooLarge
    );
    let urls: Vec<String> = (0..50)
        .map(|i| format!("http://127.0.0.1:1/{i}-{}.jpg", "u".repeat(500)))
        .collect();
    let meta = json!({"x": "y".repeat(15_000)});
    for _ in 0..3 {
        app.submit(json!({"image_urls": urls, "metadata": meta})).await;
    }
    let full = app.get("/api/v1/jobs").await.text().await.unwrap();
    let summary = app.get("/api/v1/jobs?view=summary").await.text().await.unwrap();
    println!(
        "list of 3 jobs: {} bytes full, {} bytes summary",
        full.len(),
        summary.len()
    );
    let page: JobPage = serde_json::from_str(&summary).unwrap();
    assert_eq!(page.jobs.len(), 3);
    assert!(page.jobs[0].metadata.is_none() && page.jobs[0].image_urls.is_empty());
    assert!(summary.len() * 20 < full.len(), "{} vs {}", summary.len(), full.len());
    let doc = app.get("/api/v1/openapi.json").await.text().await.unwrap();
    assert!(doc.contains("/api/v1/reconstruct"), "the alias is documented");
}

#[tokio::test]
async fn a_full_disk_takes_no_job_and_says_why() {
    let app = spawn_app_with(|c| c.worker.min_free_bytes = u64::MAX / 2, vec![]).await;
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["checks"]["disk"]
            .as_str()
            .unwrap()
            .contains("worker.min_free_bytes"),
        "{body}"
    );
    let edge = Edge::start().await;
    let id = app.submit(json!({"image_urls": [edge.add("p.jpg", photo(0))]})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.view(&id).await.status, Status::Enqueued, "left in the queue");
    assert!(app.invocations().is_empty());
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("meshroom_worker_low_disk 1"), "{metrics}");
}

#[tokio::test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (Debian's python3-open3d): scripts/test")]
async fn open3d_is_looked_for_where_debian_puts_it() {
    let app = spawn_app_with(|c| c.engine.python = "/nonexistent/python3".into(), vec![]).await;
    assert_eq!(
        app.app.config.engine.python, "/usr/bin/python3",
        "fell back to Debian's Python"
    );
    let ready: Value = app.get("/ready").await.json().await.unwrap();
    assert!(
        ready["checks"]["mesher"]
            .as_str()
            .unwrap()
            .starts_with("ok: /usr/bin/python3"),
        "{ready}"
    );
    let off = spawn_app_with(|c| c.engine.python = "/bin/false".into(), vec![]).await;
    let ready: Value = off.get("/ready").await.json().await.unwrap();
    let mesher = ready["checks"]["mesher"].as_str().unwrap();
    // /bin/false is not a Python; Debian's has Open3D on the test machines (scripts/test installs it).
    assert!(mesher.starts_with("ok: /usr/bin/python3"), "{mesher}");
    assert_eq!(ready["status"], "ready", "meshing is optional: {ready}");
}

#[tokio::test]
async fn start_up_refuses_typos_and_impossible_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let run = |env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshroom-svc"))
            .args([
                "all-in-one",
                "--gpu",
                "none",
                "--data-dir",
                &data,
                "--listen",
                "127.0.0.1:0",
            ])
            .envs(env.iter().copied())
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("MESHROOM_SVC_LIMITS_MAX_IMAGE", "3")],
            "MESHROOM_SVC_LIMITS_MAX_IMAGE: no such setting",
        ),
        (
            &[("MESHROOM_SVC_LIMITS_MAX_IMAGE_PIXELS", "0")],
            "limits.max_image_pixels: must be greater than 0",
        ),
        (&[("MESHROOM_SVC_SERVER_DEFAULT_PIPELINE", "default")], "needs a GPU"),
    ];
    for (env, want) in cases {
        let out = run(env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} must not start");
        assert!(stderr.contains(want), "{env:?}: {stderr}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_worker_with_a_full_disk_leaves_jobs_to_the_others() {
    use crate::cluster::*;
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let serve = c.serve("serve").await;
    let mut full_env = c.env.clone();
    full_env.push(("MESHROOM_SVC_WORKER_MIN_FREE_BYTES".into(), (u64::MAX / 2).to_string()));
    let data = c.dir.path().join("full").display().to_string();
    let full = Proc::start(
        c.dir.path(),
        &["work", "--gpu", "none", "--data-dir", &data],
        Some(free_port()),
        &full_env,
    )
    .await;
    let ready = full.api().get("/ready").await;
    assert_eq!(ready.status(), 503, "the full worker says it is not ready");
    let ids: Vec<String> = futures_util::future::join_all((0..3).map(|i| {
        serve
            .api()
            .submit(json!({"image_urls": [c.edge.add(&format!("p{i}.jpg"), photo(i))]}))
    }))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ok = c.work("ok", "none").await;
    for id in &ids {
        let job = serve.api().finished(id, 60).await;
        assert_eq!(job.status, Status::Succeeded, "{job:#?}");
        assert_eq!(job.attempts, 1, "only the worker with room ran it: {job:#?}");
        assert_ne!(c.worker_pid(id).await, Some(full.pid()));
    }
    let metrics = full.api().get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("meshroom_worker_low_disk 1"), "{metrics}");
}
