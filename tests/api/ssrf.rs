//! SSRF: image and callback URLs never reach internal addresses, whatever the spelling, name,
//! redirect or proxy setting. A trap listening on 127.0.0.1, 127.0.0.3 and [::1] (one port) counts
//! every connection it receives.

use crate::helpers::*;
use crate::procs::*;
use actix_web::{web, HttpResponse};
use meshroom_svc::error::Code;
use meshroom_svc::http::ErrorBody;
use meshroom_svc::jobs::{DeliveryState, Status};
use serde_json::json;
use std::net::{TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts accepted connections, on one port of several loopback addresses.
struct Trap {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Trap {
    fn start() -> Trap {
        // The same port on every address: a URL naming any of them would reach the trap.
        let listeners = (0..50)
            .find_map(|_| {
                let first = TcpListener::bind("127.0.0.1:0").unwrap();
                let port = first.local_addr().unwrap().port();
                let others = ["127.0.0.3", "[::1]"].map(|h| TcpListener::bind(format!("{h}:{port}")));
                match others {
                    [Ok(a), Ok(b)] => Some(vec![first, a, b]),
                    _ => None,
                }
            })
            .expect("a port free on 127.0.0.1, 127.0.0.3 and ::1");
        let port = listeners[0].local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        for listener in listeners {
            let counter = hits.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    counter.fetch_add(1, Ordering::SeqCst);
                    drop(conn);
                }
            });
        }
        Trap { port, hits }
    }
}

/// Internal targets, in every spelling the URL parser accepts.
fn internal_urls(p: u16) -> Vec<String> {
    let hosts = [
        "127.0.0.1",
        "127.0.0.3",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "017700000001",
        "0x7f.0.0.1",
        "0.0.0.0",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
        "localhost",
        "localhost.",
        "LocalHost",
        "a.localhost",
        "169.254.169.254",
        "10.0.0.1",
        "192.168.0.1",
        "172.16.0.1",
        "100.64.0.1",
        "224.0.0.1",
        "[fe80::1]",
        "[fd00::1]",
        "[ff02::1]",
    ];
    let mut urls: Vec<String> = hosts.iter().map(|h| format!("http://{h}:{p}/a.jpg")).collect();
    urls.extend([
        format!("https://127.0.0.1:{p}/a.jpg"),
        format!("http://user:pw@127.0.0.1:{p}/a.jpg"),
    ]);
    urls
}

/// Other schemes, never fetched.
fn other_schemes(p: u16) -> Vec<String> {
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1:{p}/a.jpg",
        "gopher://127.0.0.1:{p}/",
        "dict://127.0.0.1:{p}/x",
    ]
    .iter()
    .map(|u| u.replace("{p}", &p.to_string()))
    .collect()
}

/// Names this machine resolves to an internal address (its own host name, usually).
fn internal_names(p: u16) -> Vec<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    [host.as_str(), "ip6-localhost", "ip6-loopback"]
        .iter()
        .filter(|h| !h.is_empty())
        .filter(|h| {
            (h.to_string(), 0u16)
                .to_socket_addrs()
                .is_ok_and(|mut a| a.any(|a| !meshroom_svc::egress::is_public(a.ip())))
        })
        .map(|h| format!("http://{h}:{p}/a.jpg"))
        .collect()
}

/// A server on 127.0.0.2 (the one allowed address): an image, and redirects to `targets`.
async fn allowed_server(targets: Vec<String>) -> String {
    let targets = web::Data::new(targets);
    let image = web::Data::new(photo(0));
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(targets.clone())
            .app_data(image.clone())
            .route(
                "/ok.jpg",
                web::get().to(|img: web::Data<Vec<u8>>| async move { HttpResponse::Ok().body(img.to_vec()) }),
            )
            .route(
                "/r/{n}",
                web::get().to(|t: web::Data<Vec<String>>, n: web::Path<usize>| async move {
                    HttpResponse::Found()
                        .insert_header(("location", t[*n].clone()))
                        .finish()
                }),
            )
    })
    .workers(1)
    .bind("127.0.0.2:0")
    .unwrap();
    let base = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    base
}

#[tokio::test]
async fn internal_addresses_are_never_reached() {
    let trap = Trap::start();
    let p = trap.port;
    let app = spawn_app_with(
        |c| c.security.allowed_networks = "127.0.0.2/32".parse().unwrap(),
        vec![],
    )
    .await;
    let refused_at_submit: Vec<String> = internal_urls(p).into_iter().chain(other_schemes(p)).collect();
    let names = internal_names(p);
    let redirects: Vec<String> = internal_urls(p)
        .into_iter()
        .chain(names.clone())
        .chain(other_schemes(p))
        .collect();
    let server = allowed_server(redirects.clone()).await;
    let ok_image = format!("{server}/ok.jpg");
    let mut cases = 0;

    // Addresses and localhost names: refused at submit, as images and as callbacks.
    for url in &refused_at_submit {
        for body in [
            json!({"image_urls": [url]}),
            json!({"image_urls": [ok_image], "callback_url": url}),
        ] {
            let resp = app.post_json("/api/v1/jobs", &body).await;
            assert_eq!(resp.status(), 400, "{body}");
            let code = resp.json::<ErrorBody>().await.unwrap().error.code;
            assert!(
                [Code::UrlNotAllowed, Code::InvalidImageUrl, Code::InvalidCallbackUrl].contains(&code),
                "{code}"
            );
            cases += 1;
        }
    }
    // Names that resolve internally, and redirects to anything internal: the job fails.
    let mut jobs = Vec::new();
    for url in names
        .iter()
        .cloned()
        .chain((0..redirects.len()).map(|n| format!("{server}/r/{n}")))
    {
        jobs.push((url.clone(), app.submit(json!({"image_urls": [url]})).await));
        cases += 1;
    }
    for (url, id) in &jobs {
        let job = app.finished(id, 30).await;
        assert_eq!(job.status, Status::Failed, "{url}");
        let code = job.error.as_ref().unwrap().code;
        assert!(
            [Code::UrlNotAllowed, Code::DownloadFailed].contains(&code),
            "{url}: {job:#?}"
        );
        // download_failed alone cannot tell a refused redirect from a followed one: the trap can.
        assert_eq!(trap.hits.load(Ordering::SeqCst), 0, "{url} reached the trap");
    }
    // A callback whose name resolves internally: never sent, and given up at once.
    for url in &names {
        let id = app.submit(json!({"image_urls": [ok_image], "callback_url": url})).await;
        let job = app.wait_until(&id, 30, webhook_is(DeliveryState::Failed)).await;
        assert_eq!(job.webhook.as_ref().unwrap().attempts.len(), 1, "{job:#?}");
        cases += 1;
    }
    // The one allowed address works.
    let id = app.submit(json!({"image_urls": [ok_image]})).await;
    assert_eq!(app.finished(&id, 30).await.status, Status::Succeeded);

    eprintln!(
        "SSRF: {cases} cases, {} connection(s) reached the internal listener",
        trap.hits.load(Ordering::SeqCst)
    );
    let expected = 2 * refused_at_submit.len() + names.len() + redirects.len() + names.len();
    assert_eq!(cases, expected);
    assert!(cases >= 100, "README promises over 100 cases: {cases}");
    assert_eq!(trap.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn proxy_environment_variables_are_ignored() {
    let trap = Trap::start();
    let proxy = format!("http://127.0.0.1:{}", trap.port);
    let server = allowed_server(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .iter()
    .map(|k| (k.to_string(), proxy.clone()))
    .collect();
    env.push(("MESHROOM_SVC_SECURITY_ALLOWED_NETWORKS".into(), "127.0.0.2/32".into()));
    let svc = Proc::all_in_one(dir.path(), &dir.path().join("data"), free_port(), &env).await;
    let id = svc
        .api()
        .submit(json!({"image_urls": [format!("{server}/ok.jpg")]}))
        .await;
    assert_eq!(svc.api().finished(&id, 30).await.status, Status::Succeeded);
    assert_eq!(trap.hits.load(Ordering::SeqCst), 0, "the proxy was used");
}
