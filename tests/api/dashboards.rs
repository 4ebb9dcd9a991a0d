//! The Grafana dashboard and the Prometheus alert rules under deploy/: every metric they query
//! exists in `/metrics`, and the rules are valid (`promtool check rules`).

use crate::helpers::*;
use meshroom_svc::jobs::Status;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `meshroom_*` metric names in a text of queries, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("meshroom_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        names.insert(base.to_string());
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries() -> String {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/dashboards/meshroom-svc.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_rules_is_exported() {
    let (app, edge) = (spawn_app().await, Edge::start().await);
    // One job through, with a webhook: the labelled series (node durations, outcomes) exist
    // once something was counted.
    let id = app
        .submit(json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": edge.hook_url()}))
        .await;
    assert_eq!(app.finished(&id, 60).await.status, Status::Succeeded);
    let metrics = app
        .metrics_when(10, |m| m.contains("meshroom_jobs_finished_total{"))
        .await;
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .filter_map(|l| l.split(' ').nth(2).map(String::from))
        .collect();
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let queried: BTreeSet<String> = metric_names(&dashboard_queries())
        .union(&metric_names(&rules))
        .cloned()
        .collect();
    assert!(queried.len() >= 12, "{queried:?}");
    // GPU series exist only where nvidia-smi reads GPUs (process::read_gpus, unit-tested);
    // this machine has none.
    let missing: Vec<&String> = queried
        .iter()
        .filter(|m| !exported.contains(*m) && !m.starts_with("meshroom_gpu_"))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}\n{metrics}");
    assert!(metrics.contains(r#"meshroom_worker_slots{route="cpu"} 1"#), "{metrics}");
    assert!(metrics.contains("meshroom_engine_node_duration_seconds_bucket{node_type=\"Meshing\",preset="));
}

#[test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (promtool, from Debian's prometheus package): scripts/test"
)]
fn alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo().join("deploy/prometheus/alerts.yml"))
        .output()
        .expect("promtool must be installed (scripts/test installs Debian's prometheus package)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 6 rules found"), "{said}");
    let config = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(repo().join("deploy/prometheus/prometheus.yml"))
        .output()
        .unwrap();
    // The config names the rules by their path in the container; the syntax is what is checked.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&config.stdout),
        String::from_utf8_lossy(&config.stderr)
    );
    assert!(config.status.success(), "{said}");
}
