//! compose.yaml and the Dockerfile, checked with a real Compose parser (Debian's docker-compose can
//! run `config` without a Docker engine).

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `docker-compose config` with the example secrets, as JSON.
fn compose_config(env_file: &Path) -> Result<Value, String> {
    let out = Command::new("docker-compose")
        .args(["--env-file"])
        .arg(env_file)
        .args(["-f", "compose.yaml", "config"])
        .current_dir(repo())
        .output()
        .expect("docker-compose must be installed (scripts/test installs it)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // PyYAML comes with docker-compose: YAML to JSON.
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let json = py.wait_with_output().unwrap();
    Ok(serde_json::from_slice(&json.stdout).unwrap())
}

#[test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (docker-compose): scripts/test")]
fn compose_file_is_valid_and_keeps_its_promises() {
    let c = compose_config(&repo().join(".env.example")).unwrap();
    let services = c["services"].as_object().unwrap();
    for name in ["rabbitmq", "postgres", "minio", "minio-init", "serve", "work"] {
        let s = &services[name];
        assert!(s["restart"].is_string(), "{name} has a restart policy");
        assert!(s["healthcheck"]["test"].is_array(), "{name} has a health check");
    }
    // Only the API is published; broker and storage stay on the internal network.
    assert_eq!(c["networks"]["internal"]["internal"], true);
    for (name, s) in services {
        let ports: Vec<&Value> = s
            .get("ports")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .collect();
        let networks: Vec<&String> = s["networks"].as_object().unwrap().keys().collect();
        let observability = s["profiles"].to_string().contains("observability");
        if name == "serve" {
            assert_eq!(ports.len(), 1, "{name} ports");
        } else if observability {
            // Grafana's and Jaeger's pages, on the host's loopback only.
            for p in &ports {
                let loopback = p.as_str().is_some_and(|p| p.starts_with("127.0.0.1:")) || p["host_ip"] == "127.0.0.1";
                assert!(loopback, "{name} publishes {p} beyond the host");
            }
        } else {
            assert!(ports.is_empty(), "{name} ports");
            assert_eq!(networks, ["internal"], "{name} is internal only");
        }
    }
    // The observability profile: Prometheus with the rules, Grafana with the dashboard, a trace
    // viewer that takes OTLP; off unless asked for.
    for name in ["prometheus", "grafana", "jaeger"] {
        assert_eq!(services[name]["profiles"][0], "observability", "{name}");
    }
    let mounts = format!(
        "{} {}",
        services["prometheus"]["volumes"], services["grafana"]["volumes"]
    );
    for file in [
        "alerts.yml",
        "prometheus.yml",
        "deploy/grafana/dashboards",
        "deploy/grafana/provisioning",
    ] {
        assert!(mounts.contains(file), "{file} in {mounts}");
    }
    assert_eq!(services["serve"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"], "");
    assert_eq!(services["serve"]["ports"][0]["target"], 8080);
    // serve and work share one job database, which they refuse to start without.
    for name in ["serve", "work"] {
        let url = services[name]["environment"]["MESHROOM_SVC_DATABASE_URL"]
            .as_str()
            .unwrap();
        assert!(
            url.starts_with("postgres://") && url.contains("@postgres:5432/"),
            "{name}: {url}"
        );
        assert!(
            services[name]["depends_on"].get("postgres").is_some(),
            "{name} waits for postgres"
        );
    }
    // Workers scale (no fixed name) and reserve a GPU.
    let work = &services["work"];
    assert!(work.get("container_name").is_none());
    assert_eq!(
        work["deploy"]["resources"]["reservations"]["devices"][0]["driver"],
        "nvidia"
    );
    assert_eq!(work["init"], true);
    // The broker gets the long consumer timeout.
    let mounts = services["rabbitmq"]["volumes"].to_string();
    assert!(mounts.contains("rabbitmq.conf"), "{mounts}");
    let conf = std::fs::read_to_string(repo().join("docker/rabbitmq.conf")).unwrap();
    assert!(conf.lines().any(|l| l.trim() == "consumer_timeout = 36000000"));
}

#[test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (docker-compose): scripts/test")]
fn compose_refuses_to_start_without_secrets() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let err = compose_config(empty.path()).unwrap_err();
    assert!(
        err.contains("RABBITMQ_PASSWORD") || err.contains("MINIO_ROOT_PASSWORD"),
        "{err}"
    );
}

#[test]
fn dockerfile_runs_the_service_on_a_pinned_meshroom_image() {
    let d = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage");
    let runtime = froms[1].trim_start_matches("FROM ").trim();
    let (image, tag) = runtime.split_once(':').expect("a pinned tag");
    assert_eq!(image, "alicevision/meshroom");
    assert!(tag != "latest" && tag.contains("-av"), "{tag}");
    assert!(d.contains(r#"ENTRYPOINT ["/usr/local/bin/meshroom-svc"]"#));
    assert!(d.contains("MESHROOM_BATCH=/opt/Meshroom_bundle/meshroom_batch"));
}
