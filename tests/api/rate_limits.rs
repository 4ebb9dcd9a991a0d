//! Rate limits per key: the headers, the refusal, and (full tier) three `serve` replicas drawing
//! from one bucket.

use crate::cluster::Cluster;
use crate::helpers::*;
use meshroom_svc::error::Code;
use meshroom_svc::http::ErrorBody;
use std::time::{Duration, Instant};

#[tokio::test]
async fn over_the_rate_is_429_with_retry_after_and_ratelimit_headers() {
    let app = spawn_app_with(
        |c| {
            c.secrets.api_keys = vec!["key-a".into(), "key-b".into()];
            c.rate_limit.reads_per_minute = 60;
            c.rate_limit.submits_per_minute = 6;
            c.rate_limit.burst_secs = 5;
        },
        vec![],
    )
    .await;
    for n in 0..5 {
        let resp = app.get("/api/v1/jobs").await;
        assert_eq!(resp.status(), 200, "request {n}");
        assert_eq!(resp.headers()["ratelimit-limit"], "60");
        assert_eq!(resp.headers()["ratelimit-remaining"], (4 - n).to_string().as_str());
        assert_eq!(resp.headers()["ratelimit-policy"], "60;w=60");
    }
    let refused = app.get("/api/v1/jobs").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    let body: ErrorBody = refused.json().await.unwrap();
    assert_eq!(body.error.code, Code::RateLimited);
    // Another key has a bucket of its own; submits are counted apart from reads.
    let mut b = Api::new(app.base.clone());
    b.api_key = Some("key-b".into());
    assert_eq!(b.get("/api/v1/jobs").await.status(), 200);
    let edge = Edge::start().await;
    let resp = app
        .post_json(
            "/api/v1/jobs",
            &serde_json::json!({"image_urls": [edge.add("a.jpg", photo(0))]}),
        )
        .await;
    assert_eq!(resp.status(), 202, "the submit bucket is separate");
    // /health is never limited.
    for _ in 0..10 {
        assert_eq!(app.get("/health").await.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.get("/api/v1/jobs").await.status(),
        200,
        "a token is back after a second"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn three_replicas_together_admit_the_configured_rate() {
    let _broker = crate::cluster::BROKER.read().await;
    // 600 a minute (10 a second), a 2 s burst.
    let c = Cluster::new(&[
        ("MESHROOM_SVC_API_KEYS", "shared-key"),
        ("MESHROOM_SVC_RATE_LIMIT_READS_PER_MINUTE", "600"),
        ("MESHROOM_SVC_RATE_LIMIT_BURST_SECS", "2"),
    ])
    .await;
    let replicas = [c.serve("a").await, c.serve("b").await, c.serve("c").await];
    let apis: Vec<Api> = replicas
        .iter()
        .map(|p| {
            let mut api = Api::new(p.api.as_ref().unwrap().base.clone());
            api.api_key = Some("shared-key".into());
            api
        })
        .collect();
    // Three clients per replica, each as fast as it can, for 3 s of burst and 15 s measured.
    let start = Instant::now();
    let (warm, measured) = (Duration::from_secs(3), Duration::from_secs(15));
    let mut tasks = Vec::new();
    for api in apis.iter().cycle().take(9) {
        let api = Api {
            base: api.base.clone(),
            client: api_client(),
            api_key: api.api_key.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut refused) = (0u32, 0u32);
            while start.elapsed() < warm + measured {
                let status = api.get("/api/v1/jobs").await.status().as_u16();
                if start.elapsed() >= warm {
                    match status {
                        200 => admitted += 1,
                        429 => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
            }
            (admitted, refused)
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        admitted += a;
        refused += r;
    }
    let allowed = 10.0 * measured.as_secs_f64();
    let ratio = f64::from(admitted) / allowed;
    println!(
        "three replicas admitted {admitted} of {} requests in {measured:?}: {ratio:.3} of the rate",
        admitted + refused
    );
    assert!(refused > admitted, "the clients asked for more than the rate");
    assert!(ratio <= 1.10, "admitted {ratio:.3} of the configured rate");
    assert!(ratio >= 0.90, "admitted only {ratio:.3} of the configured rate");
}
