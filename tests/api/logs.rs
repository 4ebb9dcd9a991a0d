//! What the service writes to its log: one line per request under a request id, the job id in
//! job lines, and never a secret.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn requests_are_logged_with_an_id_and_secrets_never_are() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start().await;
    let keys = ["key-alpha-5f1c9e", "key-beta-77d2a0"];
    let env: Vec<(String, String)> = [
        ("MESHROOM_SVC_API_KEYS", keys.join(",")),
        ("MESHROOM_SVC_WEBHOOK_SECRET", SECRET.to_string()),
        ("RUST_LOG", "debug".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let log = dir.path().join("service.log");
    let data = dir.path().join("data").display().to_string();
    let svc = crate::procs::Proc::start_logged(
        dir.path(),
        &["all-in-one", "--gpu", "none", "--data-dir", &data],
        Some(crate::procs::free_port()),
        &env,
        Some(&log),
    )
    .await;
    let mut api = crate::helpers::Api::new(svc.api().base.clone());
    let wrong = api
        .client
        .get(api.url("/api/v1/jobs"))
        .header("x-api-key", "guess-9a8b7c")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    api.api_key = Some(keys[1].to_string());
    let id = api
        .submit(json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": edge.hook_url()}))
        .await;
    api.wait_until(&id, 30, webhook_is(meshroom_svc::jobs::DeliveryState::Delivered))
        .await;
    // One line per request, under the id the answer gives, without the query (it may carry a
    // token); a client's own short id is kept, a hostile one replaced.
    let resp = api
        .client
        .get(api.url(&format!("/api/v1/jobs/{id}?token=query-secret-41")))
        .header("x-api-key", keys[1])
        .header("x-request-id", "trace-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-1234");
    let forged = api
        .client
        .get(api.url("/api/v1/jobs"))
        .header("x-api-key", keys[1])
        .header("x-request-id", "x\" 200 fake")
        .send()
        .await
        .unwrap();
    let assigned = forged.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(assigned.parse::<uuid::Uuid>().is_ok(), "{assigned}");
    // A key from the database, sent as a bearer token, and a token-shaped guess.
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_meshroom-svc"))
        .args(["keys", "--data-dir", &data, "create", "--tenant", "acme"])
        .output()
        .unwrap();
    let db_key = String::from_utf8(made.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let with_bearer = |token: &str| api.client.get(api.url("/api/v1/jobs")).bearer_auth(token).send();
    assert_eq!(with_bearer(&db_key).await.unwrap().status(), 200);
    let guess = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXRva2VuLTk5";
    assert_eq!(with_bearer(guess).await.unwrap().status(), 401);
    drop(svc);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&id), "the log has the job's lines");
    assert!(
        text.contains(&format!("trace-1234 \"GET /api/v1/jobs/{id}\" 200 ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{assigned} \"GET /api/v1/jobs\" 200 ")),
        "{text}"
    );
    assert!(!text.contains("fake"), "a forged id reaches the log:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("job {id}: enqueued")) && l.contains("request ")),
        "the submit line names the job and its request:\n{text}"
    );
    assert!(!text.contains("query-secret-41"), "a query string reaches the log");
    let secret_b64 = SECRET.trim_start_matches("whsec_");
    let db_secret = db_key.splitn(3, '_').nth(2).unwrap();
    for secret in [keys[0], keys[1], "guess-9a8b7c", secret_b64, db_secret, guess] {
        assert!(!text.contains(secret), "{secret} appears in the log");
    }
}
