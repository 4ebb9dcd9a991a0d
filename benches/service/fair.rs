//! Fair scheduling: how long one tenant's job waits behind another tenant's flood, with holding
//! (`scheduling.queued_per_tenant = 2`) against first come, first served (0), side by side.

use crate::helpers::*;
use crate::report::Row;
use crate::Scale;
use meshroom_svc::tenants::Role;
use secrecy::ExposeSecret;
use serde_json::json;

/// Seconds the other tenant's job waited (submit to start), in an all-in-one with two slots.
async fn wait_behind_flood(share: u32, flood: usize, run_secs: f64) -> f64 {
    let app = spawn_app_with(
        move |c| {
            c.scheduling.queued_per_tenant = share;
            c.engine.env = vec![
                "FAKE_MESHROOM_MODE=instant".into(),
                format!("FAKE_MESHROOM_RUN_SECONDS={run_secs}"),
            ];
        },
        vec![0, 1],
    )
    .await;
    let client = |tenant: &'static str| {
        let app = &app;
        async move {
            let (_, key) = app.app.keys.create(tenant, Role::Submit, "bench", None).await.unwrap();
            let mut api = Api::new(app.base.clone());
            api.api_key = Some(key.expose_secret().to_string());
            api
        }
    };
    let (a, b) = (client("flood").await, client("other").await);
    let edge = Edge::start().await;
    let body = json!({"image_urls": [edge.add("a.jpg", photo(0))]});
    for _ in 0..flood {
        a.submit(body.clone()).await;
    }
    let id = b.submit(body).await;
    let job = b
        .wait_until(&id, (flood as f64 * run_secs * 2.0) as u64 + 60, |j| {
            j.started_at.is_some()
        })
        .await;
    app.app.shutdown.cancel();
    (job.started_at.unwrap() - job.created_at).num_milliseconds() as f64 / 1000.0
}

/// The row: the wait with fair scheduling against the wait first come, first served.
pub async fn fairness(scale: &Scale, rows: &mut Vec<Row>) {
    let flood = scale.fair_flood;
    let run = scale.run_secs;
    let fair = wait_behind_flood(2, flood, run).await;
    let fifo = wait_behind_flood(0, flood, run).await;
    rows.push(Row::versus(
        format!("another tenant's job behind a flood of {flood} jobs (2 slots, {run} s jobs): wait"),
        format!("fair: {fair:.1} s ({:.1} job lengths)", fair / run),
        format!("first come, first served: {fifo:.1} s"),
        (fifo / fair.max(0.001), 5.0),
    ));
}
