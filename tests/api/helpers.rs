//! Test harness: the real app on port 0 with the fake engine, an image server and a webhook
//! receiver, all on loopback.

use actix_web::{web, HttpRequest, HttpResponse};
use meshroom_svc::app::App;
use meshroom_svc::config::Config;
use meshroom_svc::jobs::JobView;
use meshroom_svc::roles::start_all_in_one;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The webhook secret every test app signs with.
pub const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A running all-in-one app, in this process.
pub struct TestApp {
    pub api: Api,
    pub app: Arc<App>,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// An HTTP client of one API address.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub api_key: Option<String>,
}

/// An HTTP client as users have one: reqwest's defaults (idle connections kept 90 s, under the
/// server's keep-alive of 120 s).
pub fn api_client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Settings of the fake engine that tests and benchmarks give through the service's environment.
pub const FAKE_VARIABLES: &str = "FAKE_MESHROOM_MODE,FAKE_MESHROOM_NODE_SECONDS,FAKE_MESHROOM_RUN_SECONDS";

/// How the fake engine (tests/fixtures/meshroom_batch) behaves for a job: it reads the mode from
/// the name of one of the job's images, so a test asks for one by naming an image `Fake::X.image()`.
#[derive(Debug, Clone, Copy)]
pub enum Fake {
    /// One second per node (unless FAKE_MESHROOM_NODE_SECONDS says otherwise), then success.
    Slow,
    /// A node that ignores SIGTERM and forks a grandchild in yet another session, and never ends.
    Hang,
    /// FeatureMatching fails: exit 1 with Meshroom's error line.
    Fail,
    /// Exits 0 without publishing a mesh.
    NoOutput,
    /// Also writes a dense point cloud of this many MiB.
    Big(u64),
}

impl Fake {
    /// The image name that selects this mode.
    pub fn image(self) -> String {
        match self {
            Fake::Slow => "fake-slow.jpg".into(),
            Fake::Hang => "fake-hang.jpg".into(),
            Fake::Fail => "fake-fail.jpg".into(),
            Fake::NoOutput => "fake-nooutput.jpg".into(),
            Fake::Big(mib) => format!("fake-big{mib}.jpg"),
        }
    }
}

/// The fake engine, from tests/fixtures.
pub fn fake_engine() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/meshroom_batch")
}

/// A test photo, made on the spot: each `n` gives a different small JPEG.
pub fn photo(n: usize) -> Vec<u8> {
    crate::photos::jpeg(n)
}

/// A small valid PNG (a few hundred bytes).
pub fn tiny_png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 8, 8);
    encoder.set_color(png::ColorType::Rgb);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(&[120u8; 8 * 8 * 3])
        .unwrap();
    out
}

/// Test config: port 0, a temp data folder, the fake engine behind a wrapper that logs every
/// invocation to `<dir>/invocations.jsonl`, fast webhook retries.
pub fn test_config(dir: &Path) -> Config {
    let wrapper = dir.join("meshroom_batch");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport FAKE_MESHROOM_LOG='{}'\nexec '{}' \"$@\"\n",
            dir.join("invocations.jsonl").display(),
            fake_engine().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.data_dir = dir.join("data");
    c.engine.meshroom_batch = wrapper.display().to_string();
    c.engine.pipelines_dir = dir.join("no-pipelines");
    c.engine.kill_grace_secs = 1;
    c.worker.retry_delay_ms = 50;
    // The machine's free space is not under test here (see `hardening`).
    c.worker.min_free_bytes = 0;
    c.engine.env = FAKE_VARIABLES.split(',').map(String::from).collect();
    // The fixture servers run on loopback.
    c.security.allowed_networks = "127.0.0.0/8".parse().unwrap();
    c.webhook.schedule_secs = vec![0, 1, 1, 1];
    c.webhook.timeout_secs = 2;
    c.secrets.webhook_secret = Some(meshroom_svc::config::WebhookSecret::parse(SECRET).unwrap());
    c
}

/// Runs a command to its end off the test's thread: an app from `spawn_app` runs its tasks on
/// that thread, and a blocking wait there can freeze one inside a SQLite transaction that the
/// command then waits for (the `keys` commands did, until their busy timeout).
pub async fn run_command(mut c: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
}

/// Starts the app with no GPU and the default test config.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}, vec![]).await
}

/// Starts the app after `tweak` changed the test config, with these GPUs.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config), gpus: Vec<u32>) -> TestApp {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let api_key = config
        .secrets
        .api_keys
        .first()
        .map(|k| secrecy::ExposeSecret::expose_secret(k).to_string());
    let running = start_all_in_one(config, gpus).await.expect("app starts");
    let base = format!("http://{}", running.addr.expect("all-in-one serves HTTP"));
    let app = running.app.clone();
    tokio::spawn(running.run_until_stopped());
    TestApp {
        api: Api {
            base,
            client: api_client(),
            api_key,
        },
        app,
        dir,
    }
}

impl TestApp {
    /// Engine invocations recorded by the fake, in order.
    pub fn invocations(&self) -> Vec<Value> {
        invocations(self.dir.path())
    }
}

/// Engine invocations recorded by the fake (through the wrapper in `dir`), in order.
pub fn invocations(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("invocations.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

impl Api {
    pub fn new(base: String) -> Api {
        Api {
            base,
            client: api_client(),
            api_key: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => req.header("x-api-key", k),
            None => req,
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.auth(self.client.post(self.url(path)))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.auth(self.client.post(self.url(path))).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.auth(self.client.get(self.url(path))).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.auth(self.client.delete(self.url(path))).send().await.unwrap()
    }

    pub async fn upload(&self, files: Vec<(&str, Vec<u8>)>, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            form = form.part(
                "images",
                reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
            );
        }
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        self.auth(self.client.post(self.url("/api/v1/jobs")))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Submits by URL and returns the job id.
    pub async fn submit(&self, body: Value) -> String {
        let resp = self.post_json("/api/v1/jobs", &body).await;
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
        resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    }

    pub async fn job(&self, id: &str) -> Value {
        let resp = self.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(resp.status(), 200);
        let job: Value = resp.json().await.unwrap();
        // Every answer read is also the API's own type, field for field (no unknown field).
        if let Err(e) = serde_json::from_value::<JobView>(job.clone()) {
            panic!("GET /jobs/{id} is not a JobView ({e}): {job:#}");
        }
        job
    }

    /// The job, typed.
    pub async fn view(&self, id: &str) -> JobView {
        serde_json::from_value(self.job(id).await).unwrap()
    }

    /// Polls until `pred` holds for the typed job, or panics after `secs`.
    pub async fn wait_until(&self, id: &str, secs: u64, pred: impl Fn(&JobView) -> bool) -> JobView {
        let job = self
            .wait_for(id, secs, |j| pred(&serde_json::from_value(j.clone()).unwrap()))
            .await;
        serde_json::from_value(job).unwrap()
    }

    /// Polls until the job's webhook delivery is in `state`; returns its attempts.
    pub async fn attempts_when(
        &self,
        id: &str,
        secs: u64,
        state: meshroom_svc::jobs::DeliveryState,
    ) -> Vec<meshroom_svc::jobs::Attempt> {
        let job = self.wait_until(id, secs, webhook_is(state)).await;
        job.webhook.expect("a delivery").attempts
    }

    /// Polls until the job is final; typed.
    pub async fn finished(&self, id: &str, secs: u64) -> JobView {
        self.wait_until(id, secs, |j| j.status.is_final()).await
    }

    /// Polls `/metrics` until `pred` holds for its text, or panics after `secs`: a worker counts
    /// a job's outcome just after recording it, so a reader that saw the job final may be early.
    pub async fn metrics_when(&self, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let fetch = || async { self.get("/metrics").await.text().await.unwrap() };
        poll(secs, fetch, |t| pred(t), |t| format!("metrics are\n{t}")).await
    }

    /// Polls until `pred` holds for the job, or panics after `secs`.
    pub async fn wait_for(&self, id: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        poll(secs, || self.job(id), pred, |j| format!("job is {j:#}")).await
    }
}

/// Calls `fetch` every 50 ms until `pred` holds for its answer, or panics after `secs` with
/// `show` of the last one.
async fn poll<T, F: std::future::Future<Output = T>>(
    secs: u64,
    mut fetch: impl FnMut() -> F,
    pred: impl Fn(&T) -> bool,
    show: impl Fn(&T) -> String,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let got = fetch().await;
        if pred(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting; {}",
            show(&got)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A predicate for `wait_until`: the job's webhook delivery is in this state.
pub fn webhook_is(state: meshroom_svc::jobs::DeliveryState) -> impl Fn(&JobView) -> bool {
    move |j| j.webhook.as_ref().is_some_and(|w| w.state == state)
}

/// The result file of a typed job with this name.
pub fn file<'a>(job: &'a JobView, name: &str) -> &'a meshroom_svc::jobs::ResultFile {
    job.results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no result {name} in {:?}", job.results))
}

/// A webhook request as received.
#[derive(Debug, Clone)]
pub struct Hook {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Serves images at `/files/{name}` and receives webhooks at `/hook`.
#[derive(Clone, Default)]
pub struct Edge {
    pub base: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hooks: Arc<Mutex<Vec<Hook>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
    hanging: Arc<Mutex<u32>>,
    pub requests: Arc<Mutex<HashMap<String, u32>>>,
}

impl Edge {
    pub async fn start() -> Edge {
        let mut edge = Edge::default();
        let state = edge.clone();
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(web::Data::new(state.clone()))
                .route("/files/{name}", web::get().to(serve_file))
                .route("/hook", web::post().to(receive_hook))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        edge.base = format!("http://{}", server.addrs()[0]);
        tokio::spawn(server.run());
        edge
    }

    /// Makes `bytes` available at the returned URL.
    pub fn add(&self, name: &str, bytes: Vec<u8>) -> String {
        self.files.lock().unwrap().insert(name.into(), bytes);
        format!("{}/files/{name}", self.base)
    }

    /// The next `n` webhooks get no answer for a minute.
    pub fn hang_hooks(&self, n: u32) {
        *self.hanging.lock().unwrap() = n;
    }

    /// The next `n` requests for `name` get a 503.
    pub fn fail_next(&self, name: &str, n: u32) {
        self.failures.lock().unwrap().insert(name.into(), n);
    }

    pub fn hook_url(&self) -> String {
        format!("{}/hook", self.base)
    }

    /// The next webhook answers get these statuses, then 200.
    pub fn answer_hooks_with(&self, statuses: &[u16]) {
        self.statuses.lock().unwrap().extend(statuses);
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// Waits until at least `n` webhooks arrived.
    pub async fn wait_hooks(&self, n: usize, secs: u64) -> Vec<Hook> {
        for _ in 0..secs * 20 {
            if self.hooks().len() >= n {
                return self.hooks();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} webhooks, got {:?}", self.hooks());
    }
}

async fn serve_file(edge: web::Data<Edge>, name: web::Path<String>) -> HttpResponse {
    *edge.requests.lock().unwrap().entry(name.to_string()).or_default() += 1;
    if let Some(left) = edge.failures.lock().unwrap().get_mut(name.as_str()).filter(|n| **n > 0) {
        *left -= 1;
        return HttpResponse::ServiceUnavailable().finish();
    }
    match edge.files.lock().unwrap().get(name.as_str()) {
        Some(b) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(b.clone()),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn receive_hook(edge: web::Data<Edge>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    edge.hooks.lock().unwrap().push(Hook {
        headers,
        body: body.to_vec(),
    });
    let hang = {
        let mut left = edge.hanging.lock().unwrap();
        let hang = *left > 0;
        *left = left.saturating_sub(1);
        hang
    };
    if hang {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
    let status = edge.statuses.lock().unwrap().pop_front().unwrap_or(200);
    let mut resp = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    if status == 302 {
        resp.insert_header(("location", "http://127.0.0.1:9/elsewhere"));
    }
    resp.finish()
}

/// Checks a delivery as a Standard Webhooks receiver would, with the test secret, using the
/// reference library (not our own code, which is what is under test).
pub fn signature_valid(hook: &Hook) -> bool {
    signed_with(hook, SECRET)
}

/// Whether the hook's signature verifies with `secret` (an independent implementation).
pub fn signed_with(hook: &Hook, secret: &str) -> bool {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &hook.headers {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let receiver = standardwebhooks::Webhook::new(secret).unwrap();
    receiver.verify(&hook.body, &headers).is_ok()
}

/// Live processes of a job (by its environment marker), from any process on this machine.
pub fn job_processes(id: &str) -> Vec<i32> {
    meshroom_svc::process::job_pids(id.parse().unwrap(), None)
}

/// `(pid, parent, session)` of every process, read from /proc.
fn all_processes() -> Vec<(i32, i32, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name in parentheses: state, ppid, pgrp, session.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(ppid), Some(sid)) = (fields.get(1), fields.get(3)) {
            out.push((pid, ppid.parse().unwrap_or(0), sid.parse().unwrap_or(0)));
        }
    }
    out
}

/// The real process tree of `roots`, independent of the service's own marker scan: their
/// descendants by parent, and every member of a session one of them leads (the engine's node
/// commands start sessions of their own). The test process's session is left out.
pub fn process_tree(roots: &[i32]) -> std::collections::BTreeSet<i32> {
    let own_session = all_processes()
        .iter()
        .find(|p| p.0 == std::process::id() as i32)
        .map_or(0, |p| p.2);
    let mut tree: std::collections::BTreeSet<i32> = roots.iter().copied().collect();
    loop {
        let procs = all_processes();
        let sessions: Vec<i32> = procs
            .iter()
            .filter(|p| tree.contains(&p.0) && p.2 != own_session)
            .map(|p| p.2)
            .collect();
        let before = tree.len();
        for (pid, ppid, sid) in procs {
            if tree.contains(&ppid) || (sid != own_session && sessions.contains(&sid)) {
                tree.insert(pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// Those of `pids` that still run (zombies count as gone: only their exit status is left).
pub fn still_running(pids: &std::collections::BTreeSet<i32>) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')))
                == Some(false)
        })
        .collect()
}
