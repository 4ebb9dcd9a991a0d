//! Server-Sent Events: one job's changes and log in order, a reconnect with `Last-Event-ID`
//! that loses nothing, and the all-jobs stream limited to what the caller may see.

use crate::helpers::*;
use futures_util::StreamExt;
use meshroom_svc::jobs::Status;
use meshroom_svc::tenants::Role;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::time::Duration;

/// One event of a stream.
#[derive(Debug, Clone)]
struct Sse {
    id: String,
    event: String,
    data: Value,
}

/// A client's side of an event stream.
struct Stream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<actix_web::web::Bytes>>,
    buf: String,
    /// The comment lines read so far.
    comments: Vec<String>,
}

impl Stream {
    async fn open(api: &Api, path: &str, last_id: Option<&str>) -> Stream {
        let mut req = api.client.get(api.url(path)).header("accept", "text/event-stream");
        if let Some(k) = &api.api_key {
            req = req.header("x-api-key", k);
        }
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Stream {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
            comments: Vec::new(),
        }
    }

    /// The next event (comments skipped), or None when the stream ends or none comes in `secs`.
    async fn next(&mut self, secs: u64) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.into();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if event.is_empty() {
                    // A comment: "following" or a heartbeat.
                    self.comments
                        .extend(frame.lines().filter_map(|l| l.strip_prefix(": ")).map(String::from));
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap();
                return Some(Sse { id, event, data });
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return None,
            }
        }
    }

    /// Every event up to and including `end` (panics if the stream stalls first).
    async fn until_end(&mut self) -> Vec<Sse> {
        let mut all = Vec::new();
        loop {
            let e = self
                .next(30)
                .await
                .unwrap_or_else(|| panic!("stream ended without `end`: {all:#?}"));
            let end = e.event == "end";
            all.push(e);
            if end {
                return all;
            }
        }
    }
}

fn log_seqs(events: &[Sse]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| e.data["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_job_stream_sends_changes_and_log_in_order_and_resumes_without_loss() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add("a.jpg", photo(0)), edge.add("b.jpg", photo(1))]}))
        .await;
    let path = format!("/api/v1/jobs/{id}/events?log=true");
    let events = Stream::open(&app, &path, None).await.until_end().await;

    let states: Vec<&Sse> = events.iter().filter(|e| e.event == "job").collect();
    let versions: Vec<i64> = states.iter().map(|e| e.data["version"].as_i64().unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions rise: {versions:?}");
    let last = &states.last().unwrap().data["job"];
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["id"], id.as_str());
    // Progress was seen on the way, not only the outcome.
    assert!(states.len() >= 3, "{states:#?}");
    assert!(states.iter().any(|e| e.data["job"]["status"] == "processing"));

    // Every line of the engine log, numbered from 1 without a gap, as the log file has them.
    let seqs = log_seqs(&events);
    assert!(seqs.len() >= 5, "{seqs:?}");
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let lines: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| e.data["line"].as_str().unwrap())
        .collect();
    let file = app.get(&format!("/api/v1/jobs/{id}/log")).await.text().await.unwrap();
    assert_eq!(lines, file.lines().collect::<Vec<_>>(), "the streamed log is the log");
    // Ids name the state and the line a client had: each new one names a new position (`end`
    // repeats the last, as it adds nothing to resume from).
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len() - 1);
    assert_eq!(events[events.len() - 1].id, events[events.len() - 2].id);

    // A reconnect from the middle of the log gets the lines after it, the current state and the end.
    let middle = events.iter().filter(|e| e.event == "log").nth(seqs.len() / 2).unwrap();
    let from = middle.data["seq"].as_i64().unwrap();
    let resumed = Stream::open(&app, &path, Some(&middle.id)).await.until_end().await;
    assert_eq!(log_seqs(&resumed), ((from + 1)..=seqs.len() as i64).collect::<Vec<_>>());
    // The final state comes again only if the client had an older one.
    let had: i64 = middle.id.split_once('.').unwrap().0.parse().unwrap();
    let resumed_states: Vec<&Sse> = resumed.iter().filter(|e| e.event == "job").collect();
    let newer = usize::from(had < *versions.last().unwrap());
    assert_eq!(resumed_states.len(), newer, "{resumed:#?}");
    assert!(resumed_states.iter().all(|e| e.data["job"]["status"] == "succeeded"));

    // A reconnect from the last event has nothing more to learn.
    let last_id = &events.iter().rev().find(|e| e.event != "end").unwrap().id;
    let again = Stream::open(&app, &path, Some(last_id)).await.until_end().await;
    assert_eq!(again.len(), 1, "{again:#?}");
    println!(
        "job stream: {} states, {} log lines; resumed from line {from}",
        states.len(),
        seqs.len()
    );

    // Without `log`, no log events.
    let quiet = Stream::open(&app, &format!("/api/v1/jobs/{id}/events"), None)
        .await
        .until_end()
        .await;
    assert!(log_seqs(&quiet).is_empty() && quiet.len() == 2, "{quiet:#?}");
}

#[tokio::test]
async fn the_log_follows_a_running_engine_and_a_canceled_job_ends_its_stream() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(0))]}))
        .await;
    let mut stream = Stream::open(&app, &format!("/api/v1/jobs/{id}/events?log=true"), None).await;
    let first = stream.next(10).await.unwrap();
    assert_eq!(first.event, "job");
    // The log follows the engine while it runs, not only once it is over.
    loop {
        let e = stream.next(10).await.expect("a log line while the engine runs");
        if e.event == "log" {
            break;
        }
    }
    assert_eq!(app.view(&id).await.status, Status::Processing);
    assert_eq!(app.post(&format!("/api/v1/jobs/{id}/cancel")).await.status(), 202);
    app.wait_until(&id, 30, |j| j.status == Status::Canceled).await;
    assert_eq!(app.delete(&format!("/api/v1/jobs/{id}")).await.status(), 204);
    let mut rest = Vec::new();
    while let Some(e) = stream.next(30).await {
        rest.push(e);
    }
    // Canceled is final: the stream says so and ends (a later delete is not waited for).
    let last = rest.last().unwrap();
    assert!(last.event == "end" || last.event == "deleted", "{rest:#?}");
    assert!(rest.iter().any(|e| e.data["job"]["status"] == "canceled") || last.event == "deleted");

    let resp = app.get(&format!("/api/v1/jobs/{}/events", uuid::Uuid::now_v7())).await;
    assert_eq!(resp.status(), 404);
    for bad in ["log=maybe", "log=true&log=false", "follow=1"] {
        let resp = app.get(&format!("/api/v1/jobs/{id}/events?{bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let resp = app.get(&format!("/api/v1/jobs/{id}/events")).await;
    assert_eq!(resp.status(), 404, "deleted");
}

#[tokio::test]
async fn the_all_jobs_stream_shows_only_the_callers_jobs_and_resumes() {
    let app = spawn_app().await;
    let keyed = |tenant: &'static str, role| {
        let app = &app;
        async move {
            let (_, key) = app.app.keys.create(tenant, role, "test", None).await.unwrap();
            let mut api = Api::new(app.base.clone());
            api.api_key = Some(key.expose_secret().to_string());
            api
        }
    };
    let acme = keyed("acme", Role::Submit).await;
    let beta = keyed("beta", Role::Submit).await;
    let edge = Edge::start().await;
    let body = |n: usize| json!({"image_urls": [edge.add(&format!("{n}.jpg"), photo(n))]});

    let mut stream = Stream::open(&acme, "/api/v1/events", None).await;
    let ready = stream.next(10).await.unwrap();
    assert_eq!(ready.event, "ready");
    let theirs = beta.submit(body(0)).await;
    let ours = acme.submit(body(1)).await;
    let mut seen = Vec::new();
    loop {
        let e = stream.next(30).await.expect("events until our job succeeds");
        let job = &e.data["job"];
        assert_ne!(job["id"], theirs.as_str(), "another tenant's job leaked");
        assert_eq!(job["tenant"], "acme");
        seen.push(e.clone());
        if job["id"] == ours.as_str() && job["status"] == "succeeded" {
            break;
        }
    }
    beta.finished(&theirs, 30).await;
    let mark = seen.last().unwrap().id.clone();
    drop(stream);

    // While nobody listens, another job of ours runs from start to end; the reconnect replays it.
    let missed = acme.submit(body(2)).await;
    acme.finished(&missed, 30).await;
    let mut stream = Stream::open(&acme, "/api/v1/events", Some(&mark)).await;
    assert_eq!(stream.next(10).await.unwrap().event, "ready");
    let mut replayed = Vec::new();
    while let Some(e) = stream.next(2).await {
        replayed.push(e);
    }
    let of_missed: Vec<&Sse> = replayed
        .iter()
        .filter(|e| e.data["job"]["id"] == missed.as_str())
        .collect();
    assert!(!of_missed.is_empty(), "{replayed:#?}");
    assert_eq!(of_missed.last().unwrap().data["job"]["status"], "succeeded");
    assert!(
        replayed.iter().all(|e| e.data["job"]["tenant"] == "acme"),
        "{replayed:#?}"
    );
    // Ids are times that never go back.
    let times: Vec<i64> = replayed.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    println!(
        "all-jobs stream: {} events live, {} replayed after reconnect",
        seen.len(),
        replayed.len()
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn events_reach_every_replica_from_a_worker_elsewhere() {
    use crate::cluster::{Cluster, BROKER};
    let _broker = BROKER.read().await;
    let c = Cluster::new(&[]).await;
    let (a, b) = (c.serve("serve-a").await, c.serve("serve-b").await);
    let _worker = c.work("work-1", "none").await;
    let (a, b) = (a.api(), b.api());
    let mut all = Stream::open(a, "/api/v1/events", None).await;
    assert_eq!(all.next(10).await.unwrap().event, "ready");

    // Submitted to A, followed on B: the worker writes only to PostgreSQL.
    let id = a
        .submit(json!({"image_urls": [c.edge.add(&Fake::Slow.image(), photo(0))]}))
        .await;
    let path = format!("/api/v1/jobs/{id}/events?log=true");
    let started = std::time::Instant::now();
    let events = Stream::open(b, &path, None).await.until_end().await;
    let took = started.elapsed();
    let states: Vec<&Sse> = events.iter().filter(|e| e.event == "job").collect();
    assert_eq!(states.last().unwrap().data["job"]["status"], "succeeded");
    let nodes: std::collections::BTreeSet<&str> = states
        .iter()
        .filter_map(|e| e.data["job"]["progress"]["node"].as_str())
        .collect();
    assert!(nodes.len() >= 3, "progress node by node: {nodes:?}");
    // Log lines came while the engine ran, not only at the end.
    let first_log = events.iter().position(|e| e.event == "log").expect("log lines");
    let last_state = events.iter().rposition(|e| e.event == "job").unwrap();
    assert!(first_log < last_state, "the log only came at the end");
    let seqs = log_seqs(&events);
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());

    // A reconnect to the other replica resumes where the client was.
    let middle = events.iter().filter(|e| e.event == "log").nth(seqs.len() / 2).unwrap();
    let from = middle.data["seq"].as_i64().unwrap();
    let resumed = Stream::open(a, &path, Some(&middle.id)).await.until_end().await;
    assert_eq!(log_seqs(&resumed), ((from + 1)..=seqs.len() as i64).collect::<Vec<_>>());

    // The all-jobs stream on A saw the job through to its outcome.
    let mut outcome = None;
    while let Some(e) = all.next(5).await {
        if e.data["job"]["id"] == id.as_str() && e.data["job"]["status"] == "succeeded" {
            outcome = Some(e);
            break;
        }
    }
    assert!(outcome.is_some(), "the all-jobs stream missed the outcome");
    println!(
        "events across replicas: {} states over {nodes:?} nodes, {} log lines, stream of {:.1} s",
        states.len(),
        seqs.len(),
        took.as_secs_f64()
    );
}

#[tokio::test]
async fn idle_streams_get_a_heartbeat_every_15_seconds() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(0))]}))
        .await;
    let mut job = Stream::open(&app, &format!("/api/v1/jobs/{id}/events"), None).await;
    let mut all = Stream::open(&app, "/api/v1/events", None).await;
    let opened = std::time::Instant::now();
    app.wait_until(&id, 30, |j| j.status == Status::Processing && j.progress.node.is_some())
        .await;
    // What came up to now (`ready`, the job until its first node); then the engine hangs.
    for stream in [&mut job, &mut all] {
        while stream.next(1).await.is_some() {}
    }
    let started = std::time::Instant::now();
    // Nothing changes while the engine hangs (the lease refreshes every 3 s are not news): only
    // heartbeats come.
    for stream in [&mut job, &mut all] {
        while !stream.comments.iter().any(|c| c == "heartbeat") {
            // Returns each second without an event, having kept the comments that came.
            if let Some(e) = stream.next(1).await {
                assert!(started.elapsed() < Duration::from_secs(1), "an event while idle: {e:?}");
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no heartbeat in 20 s");
        }
    }
    let waited = opened.elapsed().as_secs_f64();
    assert!(waited > 14.0, "heartbeats every 15 s, not more often ({waited:.1} s)");
    assert_eq!(app.post(&format!("/api/v1/jobs/{id}/cancel")).await.status(), 202);
}
