//! Meshroom as it really behaves (issue 11): what the engine processes see and how runs resume.

use crate::helpers::*;
use crate::procs::*;
use meshroom_svc::error::Code;
use meshroom_svc::jobs::Status;
use serde_json::json;

#[tokio::test]
async fn engines_never_see_the_services_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let secrets = [
        ("MESHROOM_SVC_API_KEYS", "k-very-secret"),
        ("AWS_ACCESS_KEY_ID", "GKsecretid"),
        ("AWS_SECRET_ACCESS_KEY", "aws-very-secret"),
        ("MESHROOM_SVC_AMQP_URL", "amqp://u:p@127.0.0.1:1/%2f"),
        ("UNRELATED_TOKEN", "x"),
        ("ALICEVISION_SENSOR_DB", "/opt/sensors.db"),
    ];
    let env: Vec<(String, String)> = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut proc = Proc::all_in_one(dir.path(), &dir.path().join("data"), port, &env).await;
    proc.api.as_mut().unwrap().api_key = Some("k-very-secret".into());
    let edge = Edge::start().await;
    let id = proc
        .api()
        .submit(json!({"image_urls": [edge.add("p.jpg", photo(0))]}))
        .await;
    let job = proc.api().finished(&id, 30).await;
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    let runs = invocations(dir.path());
    let names: Vec<&str> = runs[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for hidden in [
        "MESHROOM_SVC_API_KEYS",
        "MESHROOM_SVC_WEBHOOK_SECRET",
        "MESHROOM_SVC_AMQP_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "UNRELATED_TOKEN",
        "RUST_LOG",
    ] {
        assert!(!names.contains(&hidden), "{hidden} reached the engine: {names:?}");
    }
    for passed in [
        "PATH",
        "HOME",
        "CUDA_VISIBLE_DEVICES",
        "MESHROOM_SVC_JOB",
        "ALICEVISION_SENSOR_DB",
    ] {
        assert!(names.contains(&passed), "{passed} missing: {names:?}");
    }
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("MESHROOM_SVC_") || ["MESHROOM_SVC_JOB", "MESHROOM_SVC_OWNER"].contains(n)),
        "{names:?}"
    );
}

#[tokio::test]
async fn every_preset_and_parameter_is_accepted_by_the_engine() {
    // The fake refuses unknown node types, attribute names and values of the wrong type as the
    // real tool does, so a typo in a preset fails here rather than in a production job.
    use meshroom_svc::pipelines::{Engine, Param};
    let app = spawn_app_with(|_| {}, vec![0]).await;
    let edge = Edge::start().await;
    let url = edge.add("p.jpg", photo(0));
    let mut ids = Vec::new();
    for name in app.app.pipelines.names() {
        let preset = app.app.pipelines.get(name).unwrap();
        if preset.engine != Engine::Meshroom {
            continue;
        }
        let params: serde_json::Map<String, serde_json::Value> = preset
            .params
            .iter()
            .map(|(key, param)| {
                let value = match param {
                    Param::Int { min, .. } => json!(min),
                    Param::Float { min, .. } => json!(min),
                    Param::Bool => json!(true),
                    Param::Choice { values } => match &values[0] {
                        toml::Value::Integer(i) => json!(i),
                        other => json!(other.as_str().unwrap()),
                    },
                };
                (key.clone(), value)
            })
            .collect();
        let id = app
            .submit(json!({"image_urls": [url], "pipeline": name, "params": params}))
            .await;
        ids.push((name.to_string(), id));
    }
    assert!(ids.len() >= 3, "{ids:?}");
    for (name, id) in ids {
        let job = app.finished(&id, 60).await;
        assert_eq!(job.status, Status::Succeeded, "preset {name}: {job:#?}");
    }
}

#[tokio::test]
async fn a_bad_override_fails_the_job_with_the_engines_message() {
    // A preset folder with a typo in an attribute name: the engine refuses it (exit 1).
    let app = spawn_app_with(
        |c| {
            let dir = c.server.data_dir.parent().unwrap().join("presets");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("typo.toml"),
                "description = \"x\"\nengine = \"meshroom\"\npipeline = \"photogrammetryDraft\"\ngpu = false\n\
                 overrides = [\"Texturing:textureSize=2048\"]\n",
            )
            .unwrap();
            c.engine.pipelines_dir = dir;
        },
        vec![],
    )
    .await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add("p.jpg", photo(0))], "pipeline": "typo"}))
        .await;
    let job = app.finished(&id, 30).await;
    assert_eq!(job.status, Status::Failed);
    assert_eq!(job.error.as_ref().unwrap().code, Code::EngineFailed, "{job:#?}");
    assert!(job.log_tail.as_deref().unwrap().contains("textureSize"), "{job:#?}");
}
