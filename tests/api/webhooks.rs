//! Webhooks: Standard Webhooks signatures, retries with one id, 410, redirects.

use crate::helpers::*;
use meshroom_svc::jobs::DeliveryState::{Delivered, Failed, Gone};
use serde_json::{json, Value};

#[tokio::test]
async fn signed_and_retried_until_delivered_with_one_id() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    edge.answer_hooks_with(&[503, 503, 503]);
    let body =
        json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": edge.hook_url(), "metadata": {"k": 1}});
    let id = app.submit(body).await;
    let hooks = edge.wait_hooks(4, 20).await;
    assert_eq!(hooks.len(), 4, "three 503s, then 200");
    let webhook_id = &hooks[0].headers["webhook-id"];
    for h in &hooks {
        assert_eq!(&h.headers["webhook-id"], webhook_id, "one id across retries");
        assert!(signature_valid(h), "bad signature: {:?}", h.headers);
        assert_eq!(h.body, hooks[0].body, "same body on every attempt");
    }
    // The verifier does refuse: a changed body, or another message's id, fails.
    let mut changed = hooks[0].clone();
    changed.body.push(b' ');
    assert!(!signature_valid(&changed));
    let mut other = hooks[0].clone();
    other.headers.insert("webhook-id".into(), "msg_other".into());
    assert!(!signature_valid(&other));
    let payload: Value = serde_json::from_slice(&hooks[0].body).unwrap();
    assert_eq!(payload["event"], "job.succeeded");
    assert_eq!(payload["id"], id.as_str());
    assert_eq!(payload["metadata"]["k"], 1);
    assert_eq!(payload["results"].as_array().unwrap().len(), 3);
    let job = app.wait_until(&id, 10, webhook_is(Delivered)).await;
    let webhook = job.webhook.unwrap();
    let statuses: Vec<Option<u16>> = webhook.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(503), Some(503), Some(503), Some(200)]);
    assert_eq!(webhook.next_attempt_at, None);
}

#[tokio::test]
async fn gone_stops_and_redirects_are_not_followed() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    edge.answer_hooks_with(&[410]);
    let url = edge.add(&Fake::Fail.image(), photo(0));
    let id = app
        .submit(json!({"image_urls": [url], "callback_url": edge.hook_url()}))
        .await;
    let webhook = app.wait_until(&id, 20, webhook_is(Gone)).await.webhook.unwrap();
    assert_eq!(webhook.event, "job.failed");
    assert_eq!(webhook.attempts.len(), 1);
    // The endpoint said it is gone: a later job sends it nothing.
    let later = app
        .submit(json!({"image_urls": [url], "callback_url": edge.hook_url()}))
        .await;
    let webhook = app.wait_until(&later, 20, webhook_is(Gone)).await.webhook.unwrap();
    assert!(webhook.attempts.is_empty(), "{webhook:#?}");
    assert_eq!(edge.hooks().len(), 1);

    edge.answer_hooks_with(&[302, 302, 302, 302]);
    let other_endpoint = format!("{}?tenant=2", edge.hook_url());
    let id = app
        .submit(json!({"image_urls": [url], "callback_url": other_endpoint}))
        .await;
    let attempts = app.attempts_when(&id, 30, Failed).await;
    assert_eq!(attempts.len(), 4, "the configured schedule has 4 attempts");
    assert!(attempts
        .iter()
        .all(|a| a.status == Some(302) && a.error.as_deref() == Some("redirect not followed")));
    assert_eq!(edge.hooks().len(), 5);
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_then_given_up() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    // Nothing listens on port 9 of loopback (discard): connection refused at every attempt.
    let body = json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": "http://127.0.0.1:9/hook"});
    let id = app.submit(body).await;
    let attempts = app.attempts_when(&id, 30, Failed).await;
    assert_eq!(attempts.len(), 4);
    assert!(attempts.iter().all(|a| a.status.is_none() && a.error.is_some()));
}

#[tokio::test]
async fn a_hanging_receiver_times_out_and_is_retried() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    edge.hang_hooks(2);
    let body = json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": edge.hook_url()});
    let id = app.submit(body).await;
    // webhook.timeout_secs is 2 in the tests: two attempts time out, the third is answered.
    let attempts = app.attempts_when(&id, 30, Delivered).await;
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    assert!(
        attempts[..2]
            .iter()
            .all(|a| a.error.as_deref() == Some("timed out") && a.status.is_none()),
        "{attempts:#?}"
    );
    assert_eq!(attempts[2].status, Some(200));
}
