//! Log lines, through `log` and env_logger: human by default, or one JSON object per line for log
//! shippers (`--log-format json`: time, level, target, message, and job_id, request_id, trace_id
//! when the line has them). Job-scoped lines are those that begin `job <id>:`; while this process
//! runs a job whose trace is known, they carry its trace id. Access-log lines begin with their
//! request id.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{LazyLock, Mutex};
use uuid::Uuid;

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`, coloured on a terminal.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Trace ids of the jobs running in this process.
static TRACES: LazyLock<Mutex<HashMap<Uuid, String>>> = LazyLock::new(Default::default);

/// The access log's target: its lines begin with the request id.
const ACCESS_LOG: &str = "actix_web::middleware::logger";

/// Starts logging to stderr; `RUST_LOG` filters as usual (default: info, sqlx at warn: it logs
/// PostgreSQL's notices and slow statements at info).
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,sqlx=warn"));
    match format {
        LogFormat::Human => builder.format(|buf, record| {
            let message = record.args().to_string();
            let style = buf.default_level_style(record.level());
            write!(
                buf,
                "[{} {style}{:<5}{style:#} {}] {message}",
                buf.timestamp(),
                record.level(),
                record.target()
            )?;
            match job_of(&message).and_then(trace_of) {
                Some(trace) => writeln!(buf, " trace_id={trace}"),
                None => writeln!(buf),
            }
        }),
        LogFormat::Json => builder.format(|buf, record| {
            let line = json_line(
                record.level(),
                record.target(),
                &record.args().to_string(),
                chrono::Utc::now(),
            );
            writeln!(buf, "{line}")
        }),
    };
    builder.init();
}

/// Notes the trace of a job this process now runs, for its log lines.
pub fn job_started(id: Uuid, traceparent: Option<&str>) {
    if let Some(trace) = traceparent.and_then(crate::trace::trace_id) {
        TRACES.lock().expect("lock").insert(id, trace.to_string());
    }
}

/// Forgets the trace of a job this process no longer runs.
pub fn job_ended(id: Uuid) {
    TRACES.lock().expect("lock").remove(&id);
}

/// Runs `log` (which writes lines about job `id`) with the job's trace known, for a process that
/// does not run the job (the API's accept line, a webhook attempt).
pub fn with_trace(id: Uuid, traceparent: Option<&str>, log: impl FnOnce()) {
    let trace = traceparent.and_then(crate::trace::trace_id);
    let added = trace.is_some_and(|t| {
        let mut traces = TRACES.lock().expect("lock");
        !traces.contains_key(&id) && traces.insert(id, t.to_string()).is_none()
    });
    log();
    if added {
        job_ended(id);
    }
}

/// One JSON log line.
fn json_line(level: log::Level, target: &str, message: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    let mut line = serde_json::json!({
        "time": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "level": level.as_str(),
        "target": target,
        "message": message,
    });
    if let Some(job) = job_of(message) {
        line["job_id"] = job.to_string().into();
        if let Some(trace) = trace_of(job) {
            line["trace_id"] = trace.into();
        }
    }
    if target == ACCESS_LOG {
        if let Some(id) = message.split(' ').next().filter(|id| !id.is_empty() && *id != "-") {
            line["request_id"] = id.into();
        }
    }
    line.to_string()
}

/// The job a line is about: lines about one job begin `job <uuid>:`.
fn job_of(message: &str) -> Option<Uuid> {
    let rest = message.strip_prefix("job ")?;
    rest.get(..36).filter(|_| rest[36..].starts_with(':'))?.parse().ok()
}

fn trace_of(job: Uuid) -> Option<String> {
    TRACES.lock().expect("lock").get(&job).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_job_request_and_trace_ids() {
        let id = Uuid::now_v7();
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-03T10:00:00.123Z")
            .unwrap()
            .to_utc();
        job_started(id, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let line: serde_json::Value = serde_json::from_str(&json_line(
            log::Level::Info,
            "meshroom_svc::worker",
            &format!("job {id}: started"),
            at,
        ))
        .unwrap();
        assert_eq!(line["time"], "2026-12-03T10:00:00.123Z");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["job_id"], id.to_string());
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        job_ended(id);
        let after: serde_json::Value =
            serde_json::from_str(&json_line(log::Level::Warn, "x", &format!("job {id}: done"), at)).unwrap();
        assert!(after.get("trace_id").is_none());
        // A line of a process that does not run the job names its trace too, for that line only.
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut inside = String::new();
        with_trace(id, Some(tp), || {
            inside = json_line(log::Level::Info, "x", &format!("job {id}: enqueued"), at);
        });
        let inside: serde_json::Value = serde_json::from_str(&inside).unwrap();
        assert_eq!(inside["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(trace_of(id), None);
        let access: serde_json::Value = serde_json::from_str(&json_line(
            log::Level::Info,
            ACCESS_LOG,
            "req-42 \"GET /api/v1/jobs\" 200 12B 0.5ms",
            at,
        ))
        .unwrap();
        assert_eq!(access["request_id"], "req-42");
        assert!(access.get("job_id").is_none());
        // A message that merely mentions a job is not about it; quotes and newlines stay escaped.
        let other: serde_json::Value =
            serde_json::from_str(&json_line(log::Level::Info, "x", "jobs: \"a\"\nb", at)).unwrap();
        assert_eq!(other["message"], "jobs: \"a\"\nb");
        assert!(other.get("job_id").is_none());
    }
}
