//! The nodes a Meshroom run went through, with their real start and end, from the status files
//! of its cache: a chunk's file is last written as it ends, and says how long it ran
//! (`elapsedTime`); `startDateTime` (local time, whole seconds) serves when that is missing.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use std::path::Path;

/// One node of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRun {
    /// Its name, e.g. `DepthMap_1`.
    pub name: String,
    /// Its type, e.g. `DepthMap`.
    pub node_type: String,
    /// When its first chunk started.
    pub start: DateTime<Utc>,
    /// When its last chunk ended.
    pub end: DateTime<Utc>,
    /// Whether every chunk ended in SUCCESS.
    pub ok: bool,
}

/// The nodes with a start and an end at or after `since` (nodes cached by an earlier attempt keep
/// their old times and are left out), in the order they started.
pub fn node_runs(cache: &Path, since: DateTime<Utc>) -> Vec<NodeRun> {
    let node_dirs = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|t| std::fs::read_dir(t.path()))
        .flatten()
        .flatten();
    let mut runs: Vec<NodeRun> = node_dirs.filter_map(|d| node_run(&d.path())).collect();
    // Stamps are whole seconds: a node that started in the second `since` falls in it.
    let floor = since - chrono::Duration::seconds(1);
    runs.retain(|n| n.start >= floor);
    runs.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    // The tool runs one node at a time; file times follow the kernel's coarse clock (a few ms),
    // so a node can seem to start a moment before the previous one ended.
    for i in 1..runs.len() {
        let previous_end = runs[i - 1].end;
        if runs[i].start < previous_end {
            runs[i].start = previous_end.min(runs[i].end);
        }
    }
    runs
}

/// A node's run from the status files of its chunks; `None` until one has started and every
/// started one has ended.
fn node_run(dir: &Path) -> Option<NodeRun> {
    let mut run: Option<NodeRun> = None;
    for file in std::fs::read_dir(dir).ok()?.flatten() {
        let name = file.file_name();
        let name = name.to_string_lossy();
        if name != "status" && !name.ends_with(".status") {
            continue;
        }
        let bytes = std::fs::read(file.path()).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        // Chunks that never started (waiting, or reset after another failed) say nothing; one
        // started and not ended means the node has not ended.
        let Some(started) = v.get("startDateTime").and_then(|s| s.as_str()).and_then(local_time) else {
            continue;
        };
        v.get("endDateTime")?;
        // The file was last written as the chunk ended: its time is the end, to the nanosecond
        // (the stamps inside are whole seconds), and the elapsed time gives the start.
        let end: DateTime<Utc> = file.metadata().ok()?.modified().ok()?.into();
        let start = match v.get("elapsedTime").and_then(|e| e.as_f64()) {
            Some(secs) if secs >= 0.0 => end - chrono::Duration::microseconds((secs * 1e6) as i64),
            _ => started,
        };
        let text = |key: &str| v.get(key).and_then(|s| s.as_str()).unwrap_or("").to_string();
        let ok = text("status") == "SUCCESS";
        let r = run.get_or_insert_with(|| NodeRun {
            name: text("nodeName"),
            node_type: text("nodeType"),
            start,
            end,
            ok,
        });
        (r.start, r.end, r.ok) = (r.start.min(start), r.end.max(end), r.ok && ok);
    }
    run
}

/// `2026-12-03 10:00:01` (optionally with a fraction), in this host's time zone.
fn local_time(s: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Some(Local.from_local_datetime(&naive).earliest()?.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_come_from_their_chunks_in_start_order() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        // A chunk's status as written when it ended, `ended` seconds after t0.
        let write = |rel: &str, node: &str, state: &str, elapsed: Option<f64>, ended: Option<u64>| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let mut v = serde_json::json!({"status": state, "nodeName": format!("{node}_1"), "nodeType": node,
                "startDateTime": "2026-12-03 10:00:00"});
            if let Some(e) = elapsed {
                v["elapsedTime"] = e.into();
            }
            if ended.is_some() {
                v["endDateTime"] = "2026-12-03 10:00:00".into();
            }
            std::fs::write(&p, v.to_string()).unwrap();
            let at = t0 + std::time::Duration::from_secs(ended.unwrap_or(30));
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        // Two nodes in the same second of the stamps: the files' times order them.
        write("Zeta/u1/status", "Zeta", "SUCCESS", Some(0.5), Some(1));
        write("Alpha/u2/status", "Alpha", "SUCCESS", Some(0.25), Some(2));
        write("DepthMap/u3/0.status", "DepthMap", "SUCCESS", Some(4.0), Some(7));
        write("DepthMap/u3/1.status", "DepthMap", "ERROR", Some(6.0), Some(9));
        // Running (no end yet), and never started: no node, no part of one.
        write("Meshing/u4/status", "Meshing", "RUNNING", None, None);
        std::fs::write(dir.path().join("DepthMap/u3/2.status"), r#"{"status": "NONE"}"#).unwrap();
        std::fs::write(dir.path().join("DepthMap/u3/log"), "not a status").unwrap();
        let runs = node_runs(dir.path(), DateTime::<Utc>::from(t0));
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["Zeta_1", "Alpha_1", "DepthMap_1"]);
        let depth = &runs[2];
        assert_eq!((depth.node_type.as_str(), depth.ok), ("DepthMap", false));
        assert_eq!(depth.start, DateTime::<Utc>::from(t0) + chrono::Duration::seconds(3));
        assert_eq!(depth.end, DateTime::<Utc>::from(t0) + chrono::Duration::seconds(9));
        // Cached by an earlier attempt: left out.
        assert!(node_runs(dir.path(), DateTime::<Utc>::from(t0) + chrono::Duration::seconds(20)).is_empty());
        assert_eq!(
            local_time("2026-12-03 10:00:01.250").unwrap() - local_time("2026-12-03 10:00:01").unwrap(),
            chrono::Duration::milliseconds(250)
        );
        assert_eq!(local_time("yesterday"), None);
    }
}
