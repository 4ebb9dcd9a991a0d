//! The web console's server side: the embedded page and its policy, the pipelines list, the
//! archive of results, estimates and the `field` of errors the page shows next to a file.

use crate::helpers::*;
use meshroom_svc::error::Code;
use meshroom_svc::http::ErrorBody;
use meshroom_svc::jobs::estimate::Estimate;
use meshroom_svc::jobs::Status;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A client that does not follow redirects, to see them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_console_is_embedded_and_served_under_a_strict_policy() {
    let app = spawn_app().await;
    let client = no_redirects();
    // Browsers asking for `/` or `/console` land on the page, by a relative redirect that keeps
    // any path prefix of a reverse proxy.
    for path in ["/", "/console"] {
        let resp = client
            .get(app.url(path))
            .header("accept", "text/html,application/xhtml+xml")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302, "{path}");
        assert_eq!(resp.headers()["location"], "console/", "{path}");
    }
    // A program asking for `/` still gets the service's description, not a redirect.
    let resp = client
        .get(app.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 302);

    let page = client.get(app.url("/console/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    // No inline script, and every asset named relative to the page (a path prefix works).
    assert!(html.contains("<script src=\"app.js\""), "{html}");
    assert!(!html.contains("<script>") && !html.contains("src=\"/") && !html.contains("href=\"/"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );

    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("LICENSES.txt", "text/plain"),
    ] {
        let resp = client.get(app.url(&format!("/console/{file}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with(kind));
        let etag = resp.headers()["etag"].clone();
        assert!(!resp.bytes().await.unwrap().is_empty());
        let again = client
            .get(app.url(&format!("/console/{file}")))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file}");
    }
    let licenses = client.get(app.url("/console/LICENSES.txt")).send().await.unwrap();
    assert!(licenses.text().await.unwrap().contains("three"));
    for missing in [
        "/console/nope.js",
        "/console/../Cargo.toml",
        "/console/%2e%2e/Cargo.toml",
    ] {
        let resp = client.get(app.url(missing)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{missing}");
    }
}

#[tokio::test]
async fn the_console_is_public_but_the_api_it_calls_is_not() {
    let app = spawn_app_with(
        |c| c.secrets.api_keys = vec!["key-console-1a2b".to_string().into()],
        vec![],
    )
    .await;
    let plain = reqwest::Client::new();
    for path in ["/console/", "/console/app.js"] {
        assert_eq!(plain.get(app.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    for path in ["/api/v1/jobs", "/api/v1/pipelines", "/api/v1/events"] {
        assert_eq!(plain.get(app.url(path)).send().await.unwrap().status(), 401, "{path}");
    }
}

#[tokio::test]
async fn pipelines_are_listed_with_their_parameters() {
    let app = spawn_app().await;
    let resp = app.get("/api/v1/pipelines").await;
    assert_eq!(resp.status(), 200);
    let list: Vec<Value> = resp.json().await.unwrap();
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"default") && names.contains(&"colmap-sparse"),
        "{names:?}"
    );
    assert_eq!(list.iter().filter(|p| p["default"] == true).count(), 1, "one default");
    for p in &list {
        assert!(p["description"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
        assert!(["meshroom", "colmap"].contains(&p["engine"].as_str().unwrap()), "{p}");
        assert!(p["gpu"].is_boolean() && p["available"].is_boolean(), "{p}");
        for (name, param) in p["params"].as_object().unwrap() {
            let kind = param["type"].as_str().unwrap();
            assert!(["int", "float", "bool", "choice"].contains(&kind), "{name}: {param}");
            if kind == "choice" {
                assert!(!param["values"].as_array().unwrap().is_empty(), "{name}");
            }
            if let Some(min) = param.get("min") {
                assert!(min.is_number(), "{name}: {param}");
            }
        }
    }
    // The CPU preset is available everywhere.
    let colmap = list.iter().find(|p| p["name"] == "colmap-sparse").unwrap();
    assert_eq!(
        (colmap["gpu"].clone(), colmap["available"].clone()),
        (json!(false), json!(true))
    );
}

/// The names and SHA-256 of the entries of a zip, as Python's zipfile reads them (an
/// independent reader, which also checks each entry's CRC).
pub fn unzip(bytes: &[u8]) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.zip");
    std::fs::write(&path, bytes).unwrap();
    let script = "import hashlib,json,sys,zipfile\nz=zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\n\
        print(json.dumps({i.filename: hashlib.sha256(z.read(i)).hexdigest() for i in z.infolist()}))";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_archive_holds_every_result_with_its_length_known() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let urls: Vec<String> = (0..3).map(|i| edge.add(&format!("{i}.jpg"), photo(i))).collect();
    let id = app.submit(json!({"image_urls": urls})).await;
    let job = app.finished(&id, 60).await;
    assert!(job.results.len() >= 3, "{job:?}");

    let resp = app.get(&format!("/api/v1/jobs/{id}/archive")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/zip");
    assert!(resp.headers()["content-disposition"].to_str().unwrap().contains(".zip"));
    let length: usize = resp.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len(), length, "Content-Length is exact");
    let entries = unzip(&bytes);
    let mut expected = BTreeMap::new();
    for r in &job.results {
        let file = app
            .get(&format!("/api/v1/jobs/{id}/files/{}?redirect=false", r.name))
            .await;
        assert_eq!(file.status(), 200);
        let body = file.bytes().await.unwrap();
        assert_eq!(body.len() as u64, r.size, "{}", r.name);
        expected.insert(r.name.clone(), format!("{:x}", Sha256::digest(&body)));
    }
    assert_eq!(entries, expected, "the archive is the listed files, byte for byte");
    println!(
        "archive: {} files, {} bytes, Content-Length exact",
        entries.len(),
        length
    );

    // A job that has not succeeded has nothing to archive: a 404 that says so.
    let queued = app
        .submit(json!({"image_urls": [edge.add(&Fake::Fail.image(), photo(9))]}))
        .await;
    let failed = app.finished(&queued, 60).await;
    assert_eq!(failed.status, Status::Failed);
    let resp = app.get(&format!("/api/v1/jobs/{queued}/archive")).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<ErrorBody>().await.unwrap().error.code, Code::NoResults);
}

async fn estimate(api: &Api, id: &str) -> Estimate {
    let resp = api.get(&format!("/api/v1/jobs/{id}/estimate")).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn estimates_are_unknown_until_a_similar_job_has_run() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let urls = |from: usize| -> Vec<String> {
        (from..from + 2)
            .map(|i| edge.add(&format!("{i}.jpg"), photo(i)))
            .collect()
    };
    let first = app.submit(json!({"image_urls": urls(0)})).await;
    let before = estimate(&app, &first).await;
    assert_eq!(
        before,
        Estimate {
            remaining_secs: None,
            based_on: 0
        },
        "unknown"
    );
    let done = app.finished(&first, 60).await;
    // The nodes the worker saw run have their recorded durations (on a loaded machine a fast
    // node may pass between two looks at the engine's status).
    assert!(!done.node_timings.is_empty(), "{:?}", done.node_timings);
    assert!(done.node_timings.iter().all(|t| t.secs >= 0.0));

    // A job that never ends holds the one worker slot, so the next one waits in the queue: its
    // estimate is then the whole of the earlier run (same number of photos: no scaling).
    let blocker = app
        .submit(json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(20))]}))
        .await;
    app.wait_until(&blocker, 30, |j| j.status == Status::Processing).await;
    let second = app.submit(json!({"image_urls": urls(10)})).await;
    let after = estimate(&app, &second).await;
    assert_eq!(app.view(&second).await.status, Status::Enqueued);
    assert_eq!(after.based_on, 1, "{after:?}");
    let left = after.remaining_secs.expect("a number once a similar job ran");
    let total: f64 = done.node_timings.iter().map(|t| t.secs).sum();
    assert!((left - total).abs() < 1e-6, "{left} of {total}");
    assert_eq!(app.post(&format!("/api/v1/jobs/{blocker}/cancel")).await.status(), 202);
    app.finished(&second, 60).await;
    // A finished job has nothing left.
    assert_eq!(estimate(&app, &second).await.remaining_secs, Some(0.0));
}

#[tokio::test]
async fn errors_name_the_file_or_field_they_concern() {
    let app = spawn_app().await;
    let resp = app
        .upload(
            vec![("good.jpg", photo(0)), ("notes.jpg", b"just some text\n".to_vec())],
            &[],
        )
        .await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.field.as_deref(), Some("images/notes.jpg"), "{body:?}");
    assert!(body.error.message.contains("notes.jpg"), "{}", body.error.message);

    let resp = app
        .upload(
            vec![("a.jpg", photo(0))],
            &[("params", r#"{"FeatureExtraction:describerPreset": "enormous"}"#)],
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(
        body.error.field.as_deref(),
        Some("params.FeatureExtraction:describerPreset"),
        "{body:?}"
    );

    let resp = app
        .post_json(
            "/api/v1/jobs",
            &json!({"image_urls": ["http://x/a.jpg"], "pipeline": "nope"}),
        )
        .await;
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.field.as_deref(), Some("pipeline"), "{body:?}");
    // Errors about no field in particular have none.
    let resp = app.get(&format!("/api/v1/jobs/{}", uuid::Uuid::now_v7())).await;
    let raw: Value = resp.json().await.unwrap();
    assert!(raw["error"].get("field").is_none(), "{raw}");
}
