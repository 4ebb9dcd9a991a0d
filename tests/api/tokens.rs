//! OpenID Connect bearer tokens: the tests sign their own with a test-only RSA key
//! (tests/fixtures/oidc) and serve its JWKS on loopback.

use crate::helpers::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use meshroom_svc::error::Code;
use meshroom_svc::http::ErrorBody;
use serde_json::{json, Value};
use std::time::Duration;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "meshroom-svc";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/oidc")
            .join(name),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a good token for `tenant` and `role`, valid for an hour.
fn claims(tenant: &str, role: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": now() + 3600, "nbf": now() - 10,
           "tenant": tenant, "role": role})
}

fn sign(claims: &Value, kid: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&fixture("test-signing-key.pem")).unwrap(),
    )
    .unwrap()
}

/// The JWKS fixture with its key under another `kid`.
fn jwks_with_kid(kid: &str) -> Vec<u8> {
    let mut jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    jwks["keys"][0]["kid"] = json!(kid);
    serde_json::to_vec(&jwks).unwrap()
}

async fn with_token(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client.get(app.url(path)).bearer_auth(token).send().await.unwrap()
}

async fn refused(resp: reqwest::Response) -> (u16, Code, String) {
    let status = resp.status().as_u16();
    let body: ErrorBody = resp.json().await.unwrap();
    (status, body.error.code, body.error.message)
}

#[tokio::test]
async fn tokens_from_the_issuer_act_for_their_tenant_and_role() {
    let edge = Edge::start().await;
    let jwks = edge.add("jwks.json", fixture("jwks.json"));
    let app = spawn_app_with(
        move |c| {
            c.oidc.issuer = ISSUER.into();
            c.oidc.audience = AUDIENCE.into();
            c.oidc.jwks_url = jwks;
        },
        vec![],
    )
    .await;
    let submitter = sign(&claims("acme", "submit"), "test-1");
    let resp = app
        .client
        .post(app.url("/api/v1/jobs"))
        .bearer_auth(&submitter)
        .json(&json!({"image_urls": [edge.add("a.jpg", photo(0))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: meshroom_svc::jobs::JobView = resp.json().await.unwrap();
    assert_eq!(job.tenant, "acme");
    let path = format!("/api/v1/jobs/{}", job.id);
    assert_eq!(
        with_token(&app, &path, &sign(&claims("acme", "read"), "test-1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        with_token(&app, &path, &sign(&claims("beta", "admin"), "test-1"))
            .await
            .status(),
        200
    );
    let other = with_token(&app, &path, &sign(&claims("beta", "submit"), "test-1")).await;
    assert_eq!(refused(other).await.1, Code::JobNotFound, "another tenant's job");
    // Without a credential: refused, since tokens are configured.
    assert_eq!(app.get("/api/v1/jobs").await.status(), 401);

    // Every way a token can be wrong.
    let mut expired = claims("acme", "submit");
    expired["exp"] = json!(now() - 120);
    let mut early = claims("acme", "submit");
    early["nbf"] = json!(now() + 600);
    let mut wrong_aud = claims("acme", "submit");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims("acme", "submit");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_tenant = claims("acme", "submit");
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let bad_role = claims("acme", "root");
    let bad_tenant = claims("Not/A/Tenant", "submit");
    let (status, code, _) = refused(with_token(&app, "/api/v1/jobs", &sign(&expired, "test-1")).await).await;
    assert_eq!((status, code), (401, Code::TokenExpired));
    for (what, claims) in [
        ("nbf", early),
        ("aud", wrong_aud),
        ("iss", wrong_iss),
        ("tenant claim", no_tenant),
        ("role", bad_role),
        ("tenant name", bad_tenant),
    ] {
        let token = sign(&claims, "test-1");
        let (status, code, message) = refused(with_token(&app, "/api/v1/jobs", &token).await).await;
        assert_eq!((status, code), (401, Code::InvalidToken), "{what}: {message}");
        assert!(!message.contains(&token), "the token is not echoed");
    }
    // alg none, and HS256 keyed with the public key: refused, whatever they claim.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "test-1"})),
        b64(&claims("acme", "admin"))
    );
    let hs = encode(
        &Header {
            kid: Some("test-1".into()),
            ..Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims("acme", "admin"),
        &EncodingKey::from_secret(&fixture("test-public-key.pem")),
    )
    .unwrap();
    for token in [none, hs] {
        let (status, code, _) = refused(with_token(&app, "/api/v1/jobs", &token).await).await;
        assert_eq!((status, code), (401, Code::InvalidToken));
    }
    // A tampered signature.
    let good = sign(&claims("acme", "admin"), "test-1");
    let tampered = format!("{}x", &good[..good.len() - 1]);
    assert_eq!(
        refused(with_token(&app, "/api/v1/jobs", &tampered).await).await.1,
        Code::InvalidToken
    );

    // Key rotation: an unknown kid fetches the JWKS again.
    edge.add("jwks.json", jwks_with_kid("test-2"));
    let rotated = sign(&claims("acme", "read"), "test-2");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        with_token(&app, "/api/v1/jobs", &rotated).await.status(),
        200,
        "after rotation"
    );
    let (_, code, _) = refused(with_token(&app, "/api/v1/jobs", &sign(&claims("acme", "read"), "gone")).await).await;
    assert_eq!(code, Code::InvalidToken);
}

#[tokio::test]
async fn a_configured_public_key_and_an_unreachable_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("issuer.pem");
    std::fs::write(&pem, fixture("test-public-key.pem")).unwrap();
    let app = spawn_app_with(
        move |c| {
            c.oidc.issuer = ISSUER.into();
            c.oidc.audience = AUDIENCE.into();
            c.oidc.public_key_file = pem.display().to_string();
        },
        vec![],
    )
    .await;
    let token = sign(&claims("acme", "read"), "any");
    assert_eq!(with_token(&app, "/api/v1/jobs", &token).await.status(), 200);
    // An issuer whose JWKS cannot be fetched: 503, not a 401 that would send users to log in.
    let down = spawn_app_with(
        |c| {
            c.oidc.issuer = ISSUER.into();
            c.oidc.audience = AUDIENCE.into();
            c.oidc.jwks_url = "http://127.0.0.1:9/jwks.json".into();
        },
        vec![],
    )
    .await;
    let (status, code, _) = refused(with_token(&down, "/api/v1/jobs", &token).await).await;
    assert_eq!((status, code), (503, Code::AuthUnavailable));
}
