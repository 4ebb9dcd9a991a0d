//! Traces: an OTLP/HTTP receiver in the test decodes what `serve` and `work` export (protobuf,
//! with the `opentelemetry-proto` types), and checks that one job makes one trace across both
//! processes, with its spans parented as the job flowed.

use crate::cluster::*;
use crate::helpers::*;
use crate::procs::*;
use actix_web::web;
use meshroom_svc::jobs::Status;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    start: u64,
    end: u64,
    attrs: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP trace receiver on port 0.
#[derive(Clone, Default)]
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
    posts: Arc<Mutex<u32>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let mut r = Receiver::default();
        let state = r.clone();
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(web::Data::new(state.clone()))
                .app_data(web::PayloadConfig::new(64 << 20))
                .route("/v1/traces", web::post().to(receive))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        r.url = format!("http://{}", server.addrs()[0]);
        tokio::spawn(server.run());
        r
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans received (the exporters send every 100 ms here).
    async fn wait(&self, secs: u64, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(std::time::Instant::now() < deadline, "spans received: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn receive(r: web::Data<Receiver>, body: web::Bytes) -> actix_web::HttpResponse {
    let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
    *r.posts.lock().unwrap() += 1;
    let mut spans = r.spans.lock().unwrap();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|res| &res.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            let attrs = span
                .attributes
                .iter()
                .map(|kv| {
                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(AnyValue::StringValue(s)) => s.clone(),
                        Some(AnyValue::IntValue(i)) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), v)
                })
                .collect();
            spans.push(Got {
                service: service.clone(),
                name: span.name,
                trace: span.trace_id,
                id: span.span_id,
                parent: span.parent_span_id,
                start: span.start_time_unix_nano,
                end: span.end_time_unix_nano,
                attrs,
            });
        }
    }
    actix_web::HttpResponse::Ok().finish()
}

fn env_for(r: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", r.url.clone()),
        // Batches go out every 100 ms, so that the test does not wait 5 s for them.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

fn one<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {spans:#?}");
    found[0]
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn one_job_is_one_trace_across_serve_and_work() {
    let _broker = BROKER.read().await;
    let receiver = Receiver::start().await;
    let env = env_for(&receiver);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (c, serve, _worker) = Cluster::with_serve_and_worker(&extra).await;
    let api = serve.api();
    // The caller's own trace is continued.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = api
        .client
        .post(api.url("/api/v1/jobs"))
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .json(&json!({"image_urls": [c.edge.add("a.jpg", photo(0)), c.edge.add("b.jpg", photo(1))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(api.finished(&id, 60).await.status, Status::Succeeded);

    let spans = receiver
        .wait(30, |s| {
            s.iter().any(|s| s.name == "store results") && s.iter().any(|s| s.name == "attempt")
        })
        .await;
    let trace = hex(&one(&spans, "accept").trace);
    assert_eq!(trace, caller_trace);
    let ours: Vec<Got> = spans.into_iter().filter(|s| hex(&s.trace) == trace).collect();
    let services: std::collections::BTreeSet<&str> = ours.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        ["meshroom-svc-serve", "meshroom-svc-work"].into(),
        "{ours:#?}"
    );
    // accept (serve) > publish (serve) > attempt (work) > claim, stage images > image x2,
    // engine > node..., store results.
    let accept = one(&ours, "accept");
    assert_eq!(hex(&accept.parent), "00f067aa0ba902b7");
    assert_eq!(accept.attr("meshroom.job.id"), Some(id.as_str()));
    let publish = one(&ours, "publish");
    assert_eq!(
        (publish.service.as_str(), &publish.parent),
        ("meshroom-svc-serve", &accept.id)
    );
    let attempt = one(&ours, "attempt");
    assert_eq!(
        (attempt.service.as_str(), &attempt.parent),
        ("meshroom-svc-work", &publish.id)
    );
    for child in ["claim", "stage images", "engine", "store results"] {
        assert_eq!(one(&ours, child).parent, attempt.id, "{child}");
    }
    let staging = one(&ours, "stage images");
    let images: Vec<&Got> = ours.iter().filter(|s| s.name == "image").collect();
    assert_eq!(images.len(), 2, "{ours:#?}");
    assert!(images
        .iter()
        .all(|s| s.parent == staging.id && s.attr("meshroom.image").is_some()));
    let engine = one(&ours, "engine");
    let mut nodes: Vec<&Got> = ours.iter().filter(|s| s.name == "node").collect();
    nodes.sort_by_key(|s| s.start);
    let names: Vec<&str> = nodes.iter().filter_map(|s| s.attr("meshroom.node")).collect();
    eprintln!("node spans: {names:?}");
    assert!(names.len() >= 5, "{names:?}");
    assert_eq!(names.first(), Some(&"CameraInit_1"), "{names:?}");
    assert_eq!(names.last(), Some(&"Publish_1"), "{names:?}");
    for pair in nodes.windows(2) {
        assert!(pair[0].end <= pair[1].start, "nodes overlap: {pair:#?}");
    }
    for n in &nodes {
        assert_eq!(n.parent, engine.id);
        assert!(
            n.start >= engine.start && n.end <= engine.end,
            "{n:#?} outside {engine:#?}"
        );
    }
    // The node durations are metrics too.
    let metrics = reqwest::get(api.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(!metrics.is_empty());
    drop(c);
}

#[tokio::test]
async fn all_in_one_exports_only_when_asked() {
    let receiver = Receiver::start().await;
    let edge = Edge::start().await;
    // Asked: the job's spans arrive, a webhook attempt among them.
    let (dir, app) = all_in_one(&env_for(&receiver)).await;
    let api = app.api();
    let id = api
        .submit(json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": edge.hook_url()}))
        .await;
    assert_eq!(api.finished(&id, 60).await.status, Status::Succeeded);
    let spans = receiver
        .wait(30, |s| s.iter().any(|s| s.name == "webhook attempt"))
        .await;
    let trace = one(&spans, "accept").trace.clone();
    assert!(spans
        .iter()
        .all(|s| s.trace == trace && s.service == "meshroom-svc-all-in-one"));
    assert_eq!(
        one(&spans, "webhook attempt").attr("http.response.status_code"),
        Some("200")
    );

    // A retried job continues its trace: the second attempt joins the first one's.
    let failing = api
        .submit(json!({"image_urls": [edge.add(&Fake::Fail.image(), photo(1))]}))
        .await;
    assert_eq!(api.finished(&failing, 60).await.status, Status::Failed);
    assert_eq!(api.post(&format!("/api/v1/jobs/{failing}/retry")).await.status(), 202);
    let spans = receiver
        .wait(60, |s| {
            s.iter()
                .filter(|s| s.name == "attempt" && s.attr("meshroom.job.id") == Some(failing.as_str()))
                .count()
                == 2
        })
        .await;
    let attempts: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name == "attempt" && s.attr("meshroom.job.id") == Some(failing.as_str()))
        .collect();
    assert_eq!(attempts[0].trace, attempts[1].trace);
    assert_ne!(attempts[0].trace, trace, "one trace per job");
    drop((app, dir));

    // Not asked (OTEL_SERVICE_NAME alone asks for nothing): nothing is sent.
    let before = *receiver.posts.lock().unwrap();
    let (dir, app) = all_in_one(&[("OTEL_SERVICE_NAME", "quiet".into())]).await;
    let id = app
        .api()
        .submit(json!({"image_urls": [edge.add("b.jpg", photo(1))]}))
        .await;
    assert_eq!(app.api().finished(&id, 60).await.status, Status::Succeeded);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*receiver.posts.lock().unwrap(), before);
    drop((app, dir));
}

/// A real all-in-one process (tracing is per process: the test binary's own stays off).
async fn all_in_one(env: &[(&str, String)]) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let proc = Proc::all_in_one(dir.path(), &dir.path().join("data"), free_port(), &env).await;
    (dir, proc)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
