//! Tenants: keys from the database and the CLI, roles, and isolation between tenants on every
//! job route.

use crate::helpers::*;
use meshroom_svc::error::Code;
use meshroom_svc::http::{ErrorBody, JobPage};
use meshroom_svc::jobs::Status;
use meshroom_svc::tenants::Role;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::time::Duration;

/// A client of the app's address with this key.
fn as_key(app: &TestApp, key: &str) -> Api {
    let mut api = Api::new(app.base.clone());
    api.api_key = Some(key.to_string());
    api
}

async fn key(app: &TestApp, tenant: &str, role: Role) -> Api {
    let (_, key) = app.app.keys.create(tenant, role, "test", None).await.unwrap();
    as_key(app, key.expose_secret())
}

/// Status and body of an answer, for comparing two answers byte for byte.
async fn answer(resp: reqwest::Response) -> (u16, String) {
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn page(api: &Api) -> JobPage {
    api.get("/api/v1/jobs").await.json().await.unwrap()
}

async fn code_of(resp: reqwest::Response) -> (u16, Code) {
    let status = resp.status().as_u16();
    let body: ErrorBody = resp.json().await.unwrap();
    (status, body.error.code)
}

#[tokio::test]
async fn keys_made_by_the_cli_work_on_the_running_service() {
    let app = spawn_app().await;
    let data = app.dir.path().join("data");
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_meshroom-svc"));
        c.arg("keys").arg("--data-dir").arg(&data).args(args);
        async move {
            let out = run_command(c).await;
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let made = cli(&["create", "--tenant", "acme", "--role", "submit", "--name", "ci"]).await;
    let key = made.lines().last().unwrap().to_string();
    assert!(key.starts_with("msk_"), "{made}");
    let acme = as_key(&app, &key);
    let edge = Edge::start().await;
    let id = acme.submit(json!({"image_urls": [edge.add("a.jpg", photo(0))]})).await;
    assert_eq!(acme.view(&id).await.tenant, "acme");
    // Once a key exists, requests without one are refused (within the keys' cache time).
    let anonymous = Api::new(app.base.clone());
    let mut refused = false;
    for _ in 0..70 {
        if anonymous.get("/api/v1/jobs").await.status() == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "anonymous requests refused once a key exists");
    let listed = cli(&["list"]).await;
    assert!(listed.contains("tenant=acme role=submit state=active"), "{listed}");
    assert!(!listed.contains(&key), "the key is never shown again");
    let id_part = key.split('_').nth(1).unwrap();
    cli(&["revoke", id_part]).await;
    let mut revoked = false;
    for _ in 0..70 {
        let resp = acme.get("/api/v1/jobs").await;
        if resp.status() == 401 {
            assert_eq!(code_of(resp).await, (401, Code::InvalidApiKey));
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(revoked, "a revoked key is refused within the cache time");
    assert!(cli(&["list"]).await.contains("state=revoked"));
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_jobs_on_every_route() {
    let app = spawn_app().await;
    let acme = key(&app, "acme", Role::Submit).await;
    let beta = key(&app, "beta", Role::Submit).await;
    let reader = key(&app, "acme", Role::Read).await;
    let admin = key(&app, "ops", Role::Admin).await;
    let edge = Edge::start().await;
    let body = json!({"image_urls": [edge.add("a.jpg", photo(0))]});
    let post_keyed = |api: &Api, k: &str| {
        api.client
            .post(api.url("/api/v1/jobs"))
            .header("x-api-key", api.api_key.clone().unwrap())
            .header("idempotency-key", k.to_string())
            .json(&body)
    };
    let resp = post_keyed(&acme, "same").send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let a: meshroom_svc::jobs::JobView = resp.json().await.unwrap();
    let a_id = a.id.to_string();
    // The same Idempotency-Key from another tenant makes that tenant's own job.
    let resp = post_keyed(&beta, "same").send().await.unwrap();
    assert!(resp.headers().get("idempotent-replayed").is_none());
    let b: meshroom_svc::jobs::JobView = resp.json().await.unwrap();
    assert_ne!(a.id, b.id);
    let b_id = b.id.to_string();
    acme.finished(&a_id, 30).await;
    beta.finished(&b_id, 30).await;
    let result = acme.view(&a_id).await.results[0].name.clone();

    // Every route on another tenant's job answers as on a job that does not exist, byte for byte.
    let missing = uuid::Uuid::now_v7().to_string();
    for (method, path) in [
        ("GET", "/api/v1/jobs/{id}".to_string()),
        ("GET", "/api/v1/jobs/{id}/log".to_string()),
        ("GET", format!("/api/v1/jobs/{{id}}/files/{result}")),
        ("POST", "/api/v1/jobs/{id}/cancel".to_string()),
        ("POST", "/api/v1/jobs/{id}/retry".to_string()),
        ("DELETE", "/api/v1/jobs/{id}".to_string()),
    ] {
        let call = |api: &Api, id: &str| {
            let url = api.url(&path.replace("{id}", id));
            let req = match method {
                "GET" => api.client.get(url),
                "POST" => api.client.post(url),
                _ => api.client.delete(url),
            };
            req.header("x-api-key", api.api_key.clone().unwrap()).send()
        };
        let foreign = answer(call(&beta, &a_id).await.unwrap()).await;
        let absent = answer(call(&beta, &missing).await.unwrap()).await;
        assert_eq!(foreign.0, 404, "{method} {path}: {}", foreign.1);
        assert_eq!(foreign, absent, "{method} {path}: no existence leak");
    }
    assert_eq!(acme.view(&a_id).await.id, a.id, "still there after beta's tries");

    // Lists: each tenant its own; admins every tenant.
    let ids = |page: JobPage| page.jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(page(&acme).await), vec![a.id]);
    assert_eq!(ids(page(&beta).await), vec![b.id]);
    assert_eq!(ids(page(&reader).await), vec![a.id]);
    assert_eq!(ids(page(&admin).await), vec![b.id, a.id]);
    assert_eq!(admin.view(&b_id).await.tenant, "beta");

    // A read key reads, and may not change anything.
    assert_eq!(reader.view(&a_id).await.id, a.id);
    assert_eq!(
        code_of(reader.post_json("/api/v1/jobs", &body).await).await,
        (403, Code::Forbidden)
    );
    for path in [
        format!("/api/v1/jobs/{a_id}/retry"),
        format!("/api/v1/jobs/{a_id}/cancel"),
    ] {
        assert_eq!(
            code_of(reader.post(&path).await).await,
            (403, Code::Forbidden),
            "{path}"
        );
    }
    assert_eq!(
        code_of(reader.delete(&format!("/api/v1/jobs/{a_id}")).await).await,
        (403, Code::Forbidden)
    );
    assert_eq!(reader.get(&format!("/api/v1/jobs/{b_id}")).await.status(), 404);

    // Files are kept under the tenant's prefix.
    let store = app.dir.path().join("data/store");
    assert!(store
        .join(format!("tenants/acme/jobs/{a_id}/results/{result}"))
        .is_file());
    assert!(!store.join(format!("jobs/{a_id}")).exists());

    // Admins act on every tenant's jobs.
    assert_eq!(admin.delete(&format!("/api/v1/jobs/{b_id}")).await.status(), 204);
    assert!(
        !store.join(format!("tenants/beta/jobs/{b_id}")).exists(),
        "files deleted with the job"
    );
    assert_eq!(beta.get(&format!("/api/v1/jobs/{b_id}")).await.status(), 404);
}

#[tokio::test]
async fn env_keys_are_the_default_tenant_and_metrics_need_an_admin() {
    let app = spawn_app_with(
        |c| {
            c.secrets.api_keys = vec!["env-key-1".into()];
            c.server.metrics_public = false;
        },
        vec![],
    )
    .await;
    let edge = Edge::start().await;
    let id = app.submit(json!({"image_urls": [edge.add("a.jpg", photo(0))]})).await;
    assert_eq!(app.view(&id).await.tenant, "default");
    assert_eq!(code_of(app.get("/metrics").await).await, (403, Code::Forbidden));
    let admin = key(&app, "ops", Role::Admin).await;
    assert_eq!(admin.get("/metrics").await.status(), 200);
    // A bearer token is a key too.
    let bearer = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{id}")))
        .bearer_auth("env-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let wrong = app
        .client
        .get(app.url("/api/v1/jobs"))
        .bearer_auth("env-key-2")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(wrong).await, (401, Code::InvalidApiKey));
}

#[tokio::test]
async fn another_tenants_job_does_not_wait_for_a_flood() {
    // Two worker slots, each job one second of engine time.
    let app = spawn_app_with(
        |c| {
            c.engine.env = vec![
                "FAKE_MESHROOM_MODE=instant".into(),
                "FAKE_MESHROOM_RUN_SECONDS=1".into(),
            ];
        },
        vec![0, 1],
    )
    .await;
    let flood = key(&app, "flood", Role::Submit).await;
    let other = key(&app, "other", Role::Submit).await;
    let edge = Edge::start().await;
    let body = json!({"image_urls": [edge.add("a.jpg", photo(0))]});
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(flood.submit(body.clone()).await);
    }
    assert!(
        app.app.jobs.held_count("flood").await.unwrap() >= 190,
        "the flood waits in the database"
    );
    let urgent = flood
        .submit(json!({"image_urls": [edge.add("a.jpg", photo(0))], "priority": "high"}))
        .await;
    let mine = other.submit(body.clone()).await;
    let mine = other.wait_until(&mine, 60, |j| j.started_at.is_some()).await;
    let urgent = flood.wait_until(&urgent, 60, |j| j.started_at.is_some()).await;
    // How many of the flood's jobs started while a job waited (between its submit and its start).
    let mut flood_starts = Vec::new();
    for id in &ids {
        flood_starts.extend(flood.view(id).await.started_at);
    }
    let overtaken_by = |job: &meshroom_svc::jobs::JobView| {
        let (from, to) = (job.created_at, job.started_at.unwrap());
        flood_starts.iter().filter(|t| **t > from && **t < to).count()
    };
    let (before_mine, before_urgent) = (overtaken_by(&mine), overtaken_by(&urgent));
    let waited = mine.started_at.unwrap() - mine.created_at;
    app.app.shutdown.cancel();
    println!(
        "the other tenant's job waited {} ms, while {before_mine} of the flood's 200 jobs started; \
         the flood's high-priority job waited for {before_urgent}",
        waited.num_milliseconds()
    );
    // Two slots busy and two jobs queued when it came: about two job lengths, not a hundred.
    assert!(before_mine <= 6, "{before_mine} of the flood's jobs started first");
    // Within a tenant, priorities still order its jobs.
    assert!(
        before_urgent <= 6,
        "{before_urgent} normal jobs went before the high one"
    );
}

#[tokio::test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (PostgreSQL): scripts/test")]
async fn quotas_and_shares_hold_across_replicas_on_postgres() {
    use meshroom_svc::jobs::{Db, Job, Quota, Store};
    let services = crate::procs::Services::from_env();
    let db = crate::procs::TestDatabase::create(&services, &crate::procs::namespace()).await;
    // Two replicas: two stores, each with a pool of its own, on one database.
    let a = std::sync::Arc::new(Store::sharing(Db::open(&db.url, 8).await.unwrap(), 2));
    let b = std::sync::Arc::new(Store::sharing(Db::open(&db.url, 8).await.unwrap(), 2));
    let job = |tenant: &str| {
        let mut job = Job::new("draft".into(), 60);
        job.tenant = tenant.into();
        job
    };
    let quota = Quota {
        max_active_jobs: 5,
        ..Quota::default()
    };
    let submits: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let job = job("q");
            tokio::spawn(async move { store.insert_within(job, &quota).await.unwrap().is_ok() })
        })
        .collect();
    let mut taken = 0;
    for s in submits {
        taken += s.await.unwrap() as u32;
    }
    assert_eq!(taken, 5, "40 concurrent submits on two replicas for 5 slots");
    // Shares: 30 jobs, all held but 2; workers take those two, then both replicas release at once.
    let mut queued = Vec::new();
    for _ in 0..30 {
        let inserted = a.insert(job("s")).await.unwrap();
        if !inserted.held {
            queued.push(inserted.job.id);
        }
    }
    assert_eq!((queued.len(), a.held_count("s").await.unwrap()), (2, 28));
    for id in queued {
        a.update(id, |j| j.status = Status::Processing).await.unwrap();
    }
    let releases: Vec<_> = (0..10)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { store.release(None).await.unwrap().len() })
        })
        .collect();
    let mut released = 0;
    for r in releases {
        released += r.await.unwrap();
    }
    assert_eq!(
        released, 2,
        "ten concurrent releases on two replicas fill the share once"
    );
    assert_eq!(a.held_count("s").await.unwrap(), 26);
    // The stores' pools close before the database is dropped (at the end of the test).
    drop((a, b));
    drop(db);
}

#[tokio::test]
async fn quotas_refuse_with_which_quota_its_value_and_the_use() {
    let app = spawn_app_with(
        |c| {
            c.quota.max_images_per_job = 2;
            c.tenants.insert(
                "acme".into(),
                meshroom_svc::config::TenantConfig {
                    max_active_jobs: Some(2),
                    ..Default::default()
                },
            );
        },
        vec![],
    )
    .await;
    let acme = key(&app, "acme", Role::Submit).await;
    let beta = key(&app, "beta", Role::Submit).await;
    let edge = Edge::start().await;
    let slow = json!({"image_urls": [edge.add(&Fake::Slow.image(), photo(0))]});
    acme.submit(slow.clone()).await;
    acme.submit(slow.clone()).await;
    let refused = acme.post_json("/api/v1/jobs", &slow).await;
    assert_eq!(refused.status(), 429);
    let body: ErrorBody = refused.json().await.unwrap();
    assert_eq!(body.error.code, Code::QuotaExceeded);
    assert!(
        body.error
            .message
            .contains("quota.max_active_jobs is 2, and the tenant has 2"),
        "{}",
        body.error.message
    );
    beta.submit(slow.clone()).await;
    let three =
        json!({"image_urls": [edge.add("1.jpg", photo(1)), edge.add("2.jpg", photo(2)), edge.add("3.jpg", photo(3))]});
    let refused = beta.post_json("/api/v1/jobs", &three).await;
    let body: ErrorBody = refused.json().await.unwrap();
    assert_eq!(body.error.code, Code::QuotaExceeded);
    assert!(
        body.error.message.contains("max_images_per_job is 2"),
        "{}",
        body.error.message
    );
    app.app.shutdown.cancel();
}

#[tokio::test]
async fn a_tenant_can_have_its_own_webhook_secret() {
    let own = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let app = spawn_app_with(
        |c| {
            let secret = meshroom_svc::config::WebhookSecret::parse(own).unwrap();
            c.secrets.tenant_webhook_secrets.insert("acme".into(), secret);
        },
        vec![],
    )
    .await;
    let acme = key(&app, "acme", Role::Submit).await;
    let beta = key(&app, "beta", Role::Submit).await;
    let edge = Edge::start().await;
    let body = json!({"image_urls": [edge.add("a.jpg", photo(0))], "callback_url": edge.hook_url()});
    let a = acme.submit(body.clone()).await;
    acme.finished(&a, 30).await;
    let hooks = edge.wait_hooks(1, 30).await;
    assert!(
        signed_with(&hooks[0], own) && !signature_valid(&hooks[0]),
        "acme's hook, acme's secret"
    );
    let b = beta.submit(body).await;
    beta.finished(&b, 30).await;
    let hooks = edge.wait_hooks(2, 30).await;
    assert!(
        signature_valid(&hooks[1]) && !signed_with(&hooks[1], own),
        "others: the deployment's secret"
    );
}

#[tokio::test]
async fn usage_per_tenant_for_billing() {
    use meshroom_svc::http::UsageReport;
    let app = spawn_app().await;
    let acme = key(&app, "acme", Role::Read).await;
    let acme_submit = key(&app, "acme", Role::Submit).await;
    let beta = key(&app, "beta", Role::Submit).await;
    let admin = key(&app, "ops", Role::Admin).await;
    let edge = Edge::start().await;
    let two = json!({"image_urls": [edge.add("1.jpg", photo(1)), edge.add("2.jpg", photo(2))]});
    for id in [acme_submit.submit(two.clone()).await, beta.submit(two.clone()).await] {
        admin.finished(&id, 30).await;
    }
    let failed = acme_submit
        .submit(json!({"image_urls": [edge.add(&Fake::Fail.image(), photo(3))]}))
        .await;
    admin.finished(&failed, 30).await;
    let report: UsageReport = acme.get("/api/v1/usage").await.json().await.unwrap();
    assert_eq!(report.tenants.len(), 1, "{report:?}");
    let mine = &report.tenants[0];
    assert_eq!(mine.tenant, "acme");
    assert_eq!((mine.jobs["succeeded"], mine.jobs["failed"]), (1, 1));
    assert_eq!(mine.images, 3);
    assert!(mine.engine_seconds.values().sum::<f64>() > 0.0, "{mine:?}");
    assert!(mine.stored_bytes > 0, "results are kept: {mine:?}");
    let all: UsageReport = admin.get("/api/v1/usage").await.json().await.unwrap();
    let names: Vec<_> = all.tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(names, ["acme", "beta"]);
    let resp = acme.get("/api/v1/usage?tenant=beta").await;
    assert_eq!(resp.status(), 403);
    let at = |h| {
        let t = chrono::Utc::now() + chrono::Duration::hours(h);
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let empty: UsageReport = admin
        .get(&format!("/api/v1/usage?from={}&to={}", at(1), at(2)))
        .await
        .json()
        .await
        .unwrap();
    assert!(empty.tenants.iter().all(|t| t.jobs.is_empty()), "{empty:?}");
    let bad = acme
        .get("/api/v1/usage?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z")
        .await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn admins_manage_keys_over_the_api() {
    let app = spawn_app().await;
    let admin = key(&app, "ops", Role::Admin).await;
    let submit = key(&app, "acme", Role::Submit).await;
    let made = admin
        .post_json(
            "/api/v1/keys",
            &json!({"tenant": "acme", "role": "read", "name": "dashboard"}),
        )
        .await;
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    let new_key = made["key"].as_str().unwrap().to_string();
    let id = made["record"]["id"].as_str().unwrap().to_string();
    let reader = as_key(&app, &new_key);
    assert_eq!(reader.get("/api/v1/jobs").await.status(), 200);
    assert_eq!(
        code_of(reader.post_json("/api/v1/jobs", &json!({})).await).await,
        (403, Code::Forbidden)
    );
    // Only admins manage keys.
    assert_eq!(code_of(submit.get("/api/v1/keys").await).await, (403, Code::Forbidden));
    let resp = submit
        .post_json("/api/v1/keys", &json!({"tenant": "acme", "role": "admin"}))
        .await;
    assert_eq!(code_of(resp).await, (403, Code::Forbidden));
    let listed = admin.get("/api/v1/keys").await.text().await.unwrap();
    assert!(
        listed.contains(&id) && !listed.contains(&new_key),
        "records, never keys"
    );
    let bad = admin.post_json("/api/v1/keys", &json!({"tenant": "Bad Name"})).await;
    assert_eq!(bad.status(), 400);
    let no_body = admin.post("/api/v1/keys").await;
    assert_eq!(
        code_of(no_body).await,
        (400, Code::InvalidJson),
        "the error shape, not text"
    );
    for secs in [u64::MAX, 1_000_000_000_000_000] {
        let forever = json!({"tenant": "acme", "expires_in_secs": secs});
        let made = admin.post_json("/api/v1/keys", &forever).await;
        assert_eq!(made.status(), 201, "a lifetime too long to hold is no expiry");
    }
    assert_eq!(admin.delete(&format!("/api/v1/keys/{id}")).await.status(), 204);
    assert_eq!(admin.delete(&format!("/api/v1/keys/{id}")).await.status(), 404);
    assert_eq!(reader.get("/api/v1/jobs").await.status(), 401, "revoked here at once");
}
