//! Meshroom as it really behaves (issue 11): what the engine processes see and how runs resume.

use crate::helpers::*;
use crate::procs::*;
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
    let job = proc.api().wait_final(&id, 30).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
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
