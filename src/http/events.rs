//! Server-Sent Events: `GET /jobs/{id}/events` follows one job (and its engine log when asked),
//! `GET /events` every job the caller may see. Event ids let a reconnect with `Last-Event-ID`
//! resume without loss; a comment line every 15 s keeps proxies from closing an idle stream.

use super::jobs::find;
use super::ApiError;
use crate::app::App;
use crate::events::{now_ms, Event, LOOKBACK_MS};
use crate::tenants::Principal;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use utoipa::IntoParams;
use uuid::Uuid;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    use super::resource;
    cfg.service(resource("/jobs/{id}/events", "GET").route(web::get().to(job_events)))
        .service(resource("/events", "GET").route(web::get().to(all_events)));
}

const HEARTBEAT: Duration = Duration::from_secs(15);
/// Log lines are read from the database this often while a stream follows them.
const LOG_POLL: Duration = Duration::from_secs(1);

/// `GET /jobs/{id}/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Also send the engine log, line by line (`log` events).
    #[serde(default)]
    log: bool,
}

/// Frames of a stream; the producer ends when the client has gone (the channel is closed).
struct Sink(mpsc::Sender<Bytes>);

impl Sink {
    async fn event(&self, id: &str, event: &str, data: &str) -> bool {
        let frame = format!("id: {id}\nevent: {event}\ndata: {data}\n\n");
        self.0.send(Bytes::from(frame)).await.is_ok()
    }

    async fn comment(&self, text: &str) -> bool {
        self.0.send(Bytes::from(format!(": {text}\n\n"))).await.is_ok()
    }
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> HttpResponse {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        // nginx would otherwise buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

fn last_event_id(req: &HttpRequest) -> Option<&str> {
    req.headers().get("last-event-id").and_then(|v| v.to_str().ok())
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs", params(("id" = String, Path, description = "Job id"), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (`version.line`)")),
    responses((status = 200, content_type = "text/event-stream", description = "Server-Sent Events: `job` (data `{version, job}`) \
        on each change, `log` (data `{seq, line}`) with `log=true`, `deleted`, and `end` once the job is final; \
        ids are `version.line`"),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn job_events(
    app: web::Data<App>,
    who: Principal,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let job = find(&app.jobs, &who, &id).await?;
    // `version.line`: the state and the log line the client had.
    let (version, line) = last_event_id(&req)
        .and_then(|s| s.split_once('.'))
        .and_then(|(v, l)| Some((v.parse().ok()?, l.parse().ok()?)))
        .unwrap_or((0, 0));
    let (tx, rx) = mpsc::channel(64);
    let app = app.into_inner();
    let follow = Follow {
        id: job.id,
        version,
        line,
        log: query.log,
        sent: None,
    };
    tokio::spawn(follow.run(app, Sink(tx)));
    Ok(stream_response(rx))
}

/// What one job's stream has sent.
struct Follow {
    id: Uuid,
    version: i64,
    line: i64,
    log: bool,
    /// The `updated_at` of the state sent last.
    sent: Option<chrono::DateTime<chrono::Utc>>,
}

impl Follow {
    fn event_id(&self) -> String {
        format!("{}.{}", self.version, self.line)
    }

    async fn run(mut self, app: Arc<App>, sink: Sink) {
        // Subscribed before the first read: no change falls between the two.
        let mut changes = app.feed.subscribe();
        if !sink.comment("following").await {
            return;
        }
        let mut log_tick = tokio::time::interval(LOG_POLL);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.reset();
        let mut final_state = match self.reread(&app, &sink).await {
            Some(f) => f,
            None => return,
        };
        loop {
            if final_state {
                // The worker ships the last lines before it records the outcome.
                if self.log {
                    let _ = self.send_log(&app, &sink).await;
                }
                let _ = sink.event(&self.event_id(), "end", "{}").await;
                return;
            }
            let alive = tokio::select! {
                change = changes.recv() => match change {
                    Ok(e) if e.id == self.id => match self.send_state(&sink, &e).await {
                        Some(f) => { final_state = f; true }
                        None => false,
                    },
                    Ok(_) => true,
                    Err(RecvError::Lagged(_)) => match self.reread(&app, &sink).await {
                        Some(f) => { final_state = f; true }
                        None => false,
                    },
                    Err(RecvError::Closed) => false,
                },
                _ = log_tick.tick(), if self.log => self.send_log(&app, &sink).await,
                _ = heartbeat.tick() => {
                    // Also notices a job deleted meanwhile (deletes make no change event).
                    match self.reread(&app, &sink).await {
                        Some(f) => { final_state = f; sink.comment("heartbeat").await }
                        None => false,
                    }
                }
                _ = app.shutdown.cancelled() => false,
            };
            if !alive {
                return;
            }
        }
    }

    /// Sends the job as it is now if the client has not seen it; `Some(is final)`, or `None`
    /// when the stream is over (client gone, job deleted).
    async fn reread(&mut self, app: &App, sink: &Sink) -> Option<bool> {
        match app.jobs.get_versioned(self.id).await {
            Ok(Some((version, job))) => {
                let e = Event::new(version, 0, job);
                self.send_state(sink, &e).await
            }
            Ok(None) => {
                let data = serde_json::json!({ "id": self.id }).to_string();
                let _ = sink.event(&self.event_id(), "deleted", &data).await;
                None
            }
            // The database is away for a moment: try again on the next heartbeat.
            Err(_) => Some(false),
        }
    }

    async fn send_state(&mut self, sink: &Sink, e: &Event) -> Option<bool> {
        // The state the client has already (as on a resume after the outcome) may be final too;
        // an older one says nothing about now (a retry follows a final state).
        if e.version <= self.version {
            return Some(e.version == self.version && e.status.is_final());
        }
        self.version = e.version;
        // A lease refresh is a new version of the same view: nothing to send.
        if self.sent == Some(e.updated_at) {
            return Some(e.status.is_final());
        }
        self.sent = Some(e.updated_at);
        if !sink.event(&self.event_id(), "job", &e.data).await {
            return None;
        }
        Some(e.status.is_final())
    }

    /// Sends the log lines after the last one sent; false when the client has gone.
    async fn send_log(&mut self, app: &App, sink: &Sink) -> bool {
        loop {
            let Ok(lines) = app.jobs.log_after(self.id, self.line, 500).await else {
                return true;
            };
            for (seq, line) in &lines {
                self.line = *seq;
                let data = serde_json::json!({"seq": seq, "line": line}).to_string();
                if !sink.event(&self.event_id(), "log", &data).await {
                    return false;
                }
            }
            if lines.len() < 500 {
                return true;
            }
        }
    }
}

#[utoipa::path(get, path = "/api/v1/events", tag = "jobs",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (its id, a time in unix ms)")),
    responses((status = 200, content_type = "text/event-stream", description = "Server-Sent Events: `job` (data `{version, job}`) \
        for each change of a job the caller may see, first a `ready` event. Ids are times; on resume, changes of the \
        few seconds before the id come again: keep the highest `version` per job"),
        (status = 401, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn all_events(app: web::Data<App>, who: Principal, req: HttpRequest) -> HttpResponse {
    let resume = last_event_id(&req).and_then(|s| s.parse::<i64>().ok());
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(all(app.into_inner(), who, resume, Sink(tx)));
    stream_response(rx)
}

async fn all(app: Arc<App>, who: Principal, resume: Option<i64>, sink: Sink) {
    let mut changes = app.feed.subscribe();
    let mut mark = now_ms();
    if !sink.event(&mark.to_string(), "ready", "{}").await {
        return;
    }
    if let Some(from) = resume {
        if !catch_up(&app, &who, from - LOOKBACK_MS, &mut mark, &sink).await {
            return;
        }
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.reset();
    loop {
        let alive = tokio::select! {
            change = changes.recv() => match change {
                Ok(e) if who.sees(&e.tenant) => {
                    mark = mark.max(e.changed_at);
                    sink.event(&mark.to_string(), "job", &e.data).await
                }
                Ok(_) => true,
                Err(RecvError::Lagged(_)) => catch_up(&app, &who, mark - LOOKBACK_MS, &mut mark, &sink).await,
                Err(RecvError::Closed) => false,
            },
            _ = heartbeat.tick() => sink.comment("heartbeat").await,
            _ = app.shutdown.cancelled() => false,
        };
        if !alive {
            return;
        }
    }
}

/// Sends every job the caller may see changed after `since`; false when the client has gone.
async fn catch_up(app: &App, who: &Principal, since: i64, mark: &mut i64, sink: &Sink) -> bool {
    let Ok(changed) = app.jobs.changed_since(since, 10_000).await else {
        return true;
    };
    for c in changed {
        let Ok(Some((version, job))) = app.jobs.get_versioned(c.id).await else {
            continue;
        };
        if !who.sees(&job.tenant) {
            continue;
        }
        *mark = (*mark).max(c.changed_at);
        if !sink
            .event(&mark.to_string(), "job", &Event::new(version, c.changed_at, job).data)
            .await
        {
            return false;
        }
    }
    true
}
