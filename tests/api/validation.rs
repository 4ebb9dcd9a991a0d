//! Bad input gets a 4xx with the `{error: {message, code}}` shape; auth; idempotency; service routes.

use crate::helpers::*;
use meshroom_svc::error::Code;
use meshroom_svc::http::{ErrorBody, JobPage};
use meshroom_svc::jobs::Status;
use serde_json::{json, Value};

/// The answer has this status and, in the one error shape, this code and a message.
async fn expect_error(resp: reqwest::Response, status: u16, code: Code) {
    assert_eq!(resp.status(), status, "expected {code}");
    let text = resp.text().await.unwrap();
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not the error shape ({e}): {text}"));
    assert_eq!(body.error.code, code, "{text}");
    assert!(!body.error.message.is_empty());
}

#[tokio::test]
async fn json_submits_are_checked() {
    let app = spawn_app_with(|c| c.limits.max_images = 2, vec![]).await;
    let ok = "http://127.0.0.1:1/a.jpg";
    let cases = [
        (json!({}), 400, Code::InvalidJson),
        (json!({"image_urls": []}), 400, Code::NoImages),
        (json!({"image_urls": ["ftp://x/a.jpg"]}), 400, Code::InvalidImageUrl),
        (
            json!({"image_urls": ["file:///etc/passwd"]}),
            400,
            Code::InvalidImageUrl,
        ),
        (json!({"image_urls": ["not a url"]}), 400, Code::InvalidImageUrl),
        (
            json!({"image_urls": [ok], "callback_url": "javascript:alert(1)"}),
            400,
            Code::InvalidCallbackUrl,
        ),
        (json!({"image_urls": [ok, ok, ok]}), 413, Code::TooManyImages),
        (
            json!({"image_urls": [ok], "pipeline": "nope"}),
            400,
            Code::UnknownPipeline,
        ),
        (
            json!({"image_urls": [ok], "pipeline": "default"}),
            422,
            Code::GpuUnavailable,
        ),
        (
            json!({"image_urls": [ok], "params": {"DepthMap:downscale": 1}}),
            400,
            Code::ParamNotAllowed,
        ),
        (
            json!({"image_urls": [ok], "params": {"Texturing:textureSide": [1]}}),
            400,
            Code::InvalidParam,
        ),
        (
            json!({"image_urls": [ok], "params": {"Texturing:textureSide": 3000}}),
            400,
            Code::InvalidParam,
        ),
        (
            json!({"image_urls": [ok], "params": {"Meshing:maxPoints": "{Texturing_1.textureSide}"}}),
            400,
            Code::InvalidParam,
        ),
        (
            json!({"image_urls": [ok], "timeout_secs": 0}),
            400,
            Code::InvalidTimeout,
        ),
        (json!({"image_urls": [ok], "surprise": true}), 400, Code::InvalidJson),
        (json!({"image_urls": "http://x/a.jpg"}), 400, Code::InvalidJson),
    ];
    for (body, status, code) in cases {
        expect_error(app.post_json("/api/v1/jobs", &body).await, status, code).await;
    }
    // The message names what the parameter accepts.
    let resp = app
        .post_json(
            "/api/v1/jobs",
            &json!({"image_urls": [ok], "params": {"Texturing:textureSide": 3000}}),
        )
        .await;
    let body: ErrorBody = resp.json().await.unwrap();
    assert!(
        body.error.message.contains("one of 1024, 2048, 4096, 8192, 16384"),
        "{body:?}"
    );
    let resp = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("content-type", "application/json")
        .body("{")
        .send();
    expect_error(resp.await.unwrap(), 400, Code::InvalidJson).await;
    let resp = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("content-type", "text/plain")
        .body("hi")
        .send();
    expect_error(resp.await.unwrap(), 415, Code::UnsupportedMediaType).await;
    let big = json!({"image_urls": [ok], "metadata": "x".repeat(2 << 20)});
    expect_error(app.post_json("/api/v1/jobs", &big).await, 413, Code::PayloadTooLarge).await;
    // Nothing was stored.
    let list: JobPage = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(list.jobs.len(), 0);
}

#[tokio::test]
async fn uploads_are_checked_by_content_and_size() {
    let photo_len = photo(0).len() as u64;
    let app = spawn_app_with(
        |c| {
            c.limits.max_images = 2;
            c.limits.max_image_bytes = photo_len;
            c.limits.max_total_bytes = photo_len + photo_len / 2;
        },
        vec![],
    )
    .await;
    let html = b"<html><body>not a photo</body></html>".to_vec();
    expect_error(
        app.upload(vec![("x.jpg", html)], &[]).await,
        415,
        Code::UnsupportedImageType,
    )
    .await;
    let pdf = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n".to_vec();
    expect_error(
        app.upload(vec![("x.jpg", pdf)], &[]).await,
        415,
        Code::UnsupportedImageType,
    )
    .await;
    let mut over = photo(0);
    over.push(0);
    expect_error(app.upload(vec![("big.jpg", over)], &[]).await, 413, Code::ImageTooLarge).await;
    let three = vec![("a.png", tiny_png()), ("b.png", tiny_png()), ("c.png", tiny_png())];
    expect_error(app.upload(three, &[]).await, 413, Code::TooManyImages).await;
    let two = vec![("a.jpg", photo(0)), ("b.jpg", photo(0))];
    expect_error(app.upload(two, &[]).await, 413, Code::ImagesTooLarge).await;
    expect_error(
        app.upload(vec![("a.jpg", photo(0))], &[("colour", "red")]).await,
        400,
        Code::UnknownField,
    )
    .await;
    expect_error(
        app.upload(vec![("a.jpg", photo(0))], &[("params", "{")]).await,
        400,
        Code::InvalidJson,
    )
    .await;
    expect_error(app.upload(vec![], &[("metadata", "{}")]).await, 400, Code::NoImages).await;
    // Nothing left behind: no job, no staged file.
    let list: JobPage = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(list.jobs.len(), 0);
    let staged = std::fs::read_dir(app.app.tmp_dir()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staged, 0);
    let stored = std::fs::read_dir(app.app.config.server.data_dir.join("store/jobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn unknown_ids_routes_and_queries_are_4xx() {
    let app = spawn_app().await;
    let missing = uuid::Uuid::now_v7();
    expect_error(
        app.get(&format!("/api/v1/jobs/{missing}")).await,
        404,
        Code::JobNotFound,
    )
    .await;
    expect_error(app.get("/api/v1/jobs/not-a-uuid").await, 404, Code::JobNotFound).await;
    expect_error(
        app.post(&format!("/api/v1/jobs/{missing}/cancel")).await,
        404,
        Code::JobNotFound,
    )
    .await;
    expect_error(
        app.get(&format!("/api/v1/jobs/{missing}/files/x.obj")).await,
        404,
        Code::JobNotFound,
    )
    .await;
    expect_error(app.get("/api/v1/jobs?status=done").await, 400, Code::InvalidQuery).await;
    expect_error(app.get("/api/v1/jobs?limit=0").await, 400, Code::InvalidQuery).await;
    expect_error(app.get("/api/v1/jobs?cursor=zzz").await, 400, Code::InvalidQuery).await;
    expect_error(app.get("/api/v2/nothing").await, 404, Code::NotFound).await;
}

#[tokio::test]
async fn api_keys_guard_every_job_route_but_not_health() {
    let app = spawn_app_with(
        |c| c.secrets.api_keys = vec!["key-one".into(), "key-two".into()],
        vec![],
    )
    .await;
    let plain = reqwest::Client::new();
    let id = uuid::Uuid::now_v7();
    for (method, path) in [
        ("GET", "/api/v1/jobs".to_string()),
        ("POST", "/api/v1/jobs".to_string()),
        ("POST", "/api/v1/reconstruct".to_string()),
        ("GET", format!("/api/v1/jobs/{id}")),
        ("DELETE", format!("/api/v1/jobs/{id}")),
        ("POST", format!("/api/v1/jobs/{id}/cancel")),
        ("POST", format!("/api/v1/jobs/{id}/retry")),
        ("GET", format!("/api/v1/jobs/{id}/log")),
        ("GET", format!("/api/v1/jobs/{id}/files/a.obj")),
    ] {
        let req = plain.request(method.parse().unwrap(), app.url(&path));
        expect_error(req.send().await.unwrap(), 401, Code::MissingApiKey).await;
        let req = plain
            .request(method.parse().unwrap(), app.url(&path))
            .header("x-api-key", "key-three");
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(
            !resp.text().await.unwrap().contains("key-"),
            "keys never appear in error bodies"
        );
    }
    // The second key works; health, readiness and the API document are open.
    let resp = plain
        .get(app.url("/api/v1/jobs"))
        .header("x-api-key", "key-two")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for open in ["/health", "/ready", "/", "/api/v1/openapi.json"] {
        assert_eq!(plain.get(app.url(open)).send().await.unwrap().status(), 200, "{open}");
    }
}

#[tokio::test]
async fn all_in_one_refuses_a_public_address_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.listen = "0.0.0.0:0".into();
    let err = meshroom_svc::roles::start_all_in_one(config, vec![])
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("MESHROOM_SVC_API_KEYS"), "{err}");
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let body = json!({"image_urls": [edge.add("a.jpg", photo(0))]});
    let send = || {
        app.client
            .post(app.url("/api/v1/jobs"))
            .header("idempotency-key", "order-7")
            .json(&body)
            .send()
    };
    // Concurrent first requests, then a late repeat: one job in all.
    let (a, b) = tokio::join!(send(), send());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (202, 202));
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["id"], b["id"]);
    let c = send().await.unwrap();
    assert_eq!(c.headers()["idempotent-replayed"], "true");
    assert_eq!(c.json::<Value>().await.unwrap()["id"], a["id"]);
    let list: JobPage = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(list.jobs.len(), 1);
    // The alias route accepts the same requests.
    let alias = app
        .post_json(
            "/api/v1/reconstruct",
            &json!({"image_urls": [edge.add("b.jpg", photo(1))]}),
        )
        .await;
    assert_eq!(alias.status(), 202);
}

#[tokio::test]
async fn service_routes_describe_the_service() {
    let app = spawn_app().await;
    let root: Value = app.get("/").await.json().await.unwrap();
    assert_eq!(root["name"], "meshroom-svc");
    assert_eq!(root["queue"]["kind"], "in-process");
    assert_eq!(root["default_pipeline"], "draft");
    let ready: Value = app.get("/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/cancel",
        "/api/v1/jobs/{id}/files/{name}",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Job"].is_object());
    // The error codes are listed, all of them.
    let codes: Vec<&str> = doc["components"]["schemas"]["Code"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no Code schema: {:#}", doc["components"]["schemas"]["ErrorInfo"]))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let all: Vec<&str> = meshroom_svc::error::Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, all);
}

/// A few-KB PNG whose header declares 100000×100000 pixels.
fn pixel_bomb() -> Vec<u8> {
    let mut bomb = tiny_png();
    bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]);
    bomb
}

#[tokio::test]
async fn hostile_images_are_refused_as_uploads_and_as_urls() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let jpeg = photo(0);
    let mut zip_after = jpeg.clone();
    zip_after.extend_from_slice(b"PK\x03\x04\x14\0\0\0\x08\0evil.sh#!/bin/sh\nrm -rf /\nPK\x05\x06");
    let cases: Vec<(&str, Vec<u8>, u16, Code)> = vec![
        ("bomb.jpg", pixel_bomb(), 413, Code::ImageTooManyPixels),
        ("cut.jpg", jpeg[..jpeg.len() / 2].to_vec(), 400, Code::InvalidImage),
        ("polyglot.jpg", zip_after, 400, Code::InvalidImage),
        (
            "page.jpg",
            b"<!DOCTYPE html><html><body>hi</body></html>".to_vec(),
            415,
            Code::UnsupportedImageType,
        ),
        (
            "vector.jpg",
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>1</script></svg>".to_vec(),
            415,
            Code::UnsupportedImageType,
        ),
        (
            "doc.jpg",
            b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF".to_vec(),
            415,
            Code::UnsupportedImageType,
        ),
        (
            "magic.jpg",
            b"\xFF\xD8\xFF\xE0<script>alert(1)</script>\xFF\xD9".to_vec(),
            400,
            Code::InvalidImage,
        ),
    ];
    for (name, bytes, status, code) in &cases {
        let started = std::time::Instant::now();
        expect_error(app.upload(vec![(name, bytes.clone())], &[]).await, *status, *code).await;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{name} took {:?}",
            started.elapsed()
        );
        // The same bytes behind a URL fail the job with the same code.
        let id = app.submit(json!({"image_urls": [edge.add(name, bytes.clone())]})).await;
        let job = app.finished(&id, 30).await;
        assert_eq!(
            (job.status, job.error.map(|e| e.code)),
            (Status::Failed, Some(*code)),
            "{name}"
        );
    }
    // Nothing of the refused uploads stays on disk.
    let staged = std::fs::read_dir(app.app.tmp_dir()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staged, 0);
}
