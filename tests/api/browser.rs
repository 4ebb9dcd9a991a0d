//! The web console in a real browser: Debian's chromium, headless, driven over WebDriver by
//! Debian's chromedriver (scripts/test installs both). Screenshots go to
//! `target/tmp/browser-artifacts/`, kept as the CI run's artifacts.

use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use thirtyfour::prelude::*;
use thirtyfour::ChromiumLikeCapabilities;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless chromium and the chromedriver that drives it; both end with it.
pub struct Browser {
    driver: Option<WebDriver>,
    chromedriver: Child,
    name: String,
    _profile: tempfile::TempDir,
}

/// Where the screenshots go.
pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// A browser with a window of this size; `name` prefixes its screenshots.
    pub async fn start(name: &str, width: u32, height: u32) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/test, which installs chromium and chromium-driver"
            );
        }
        let port = crate::procs::free_port();
        // In a process group of its own, with chromium, so that Drop ends both whatever happens.
        let chromedriver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The profile (and chromium's own log) in a folder that goes with the browser.
        let profile = tempfile::tempdir().unwrap();
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(CHROMIUM).unwrap();
        // WebGL on the CPU (SwiftShader): the viewer draws with no GPU.
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--enable-unsafe-swiftshader",
            "--use-angle=swiftshader",
            "--hide-scrollbars",
            &format!("--window-size={width},{height}"),
            &format!("--user-data-dir={}", profile.path().display()),
        ] {
            caps.add_arg(arg).unwrap();
        }
        if width < 500 {
            // Chromium's windows are at least 500 px wide: a phone's screen is emulated instead.
            let metrics = serde_json::json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0}});
            caps.add_experimental_option("mobileEmulation", metrics).unwrap();
        }
        let driver = WebDriver::new(format!("http://127.0.0.1:{port}"), caps).await.unwrap();
        Browser {
            driver: Some(driver),
            chromedriver,
            name: name.to_string(),
            _profile: profile,
        }
    }

    /// Saves a screenshot of the page as `<name>-<what>.png`.
    pub async fn snap(&self, what: &str) -> PathBuf {
        let path = artifacts().join(format!("{}-{what}.png", self.name));
        std::fs::write(&path, self.driver().screenshot_as_png().await.unwrap()).unwrap();
        path
    }

    /// The value of a script (`return ...`).
    pub async fn js(&self, script: &str) -> Value {
        self.driver().execute(script, vec![]).await.unwrap().json().clone()
    }

    /// Waits until the script returns something truthy, and returns it.
    pub async fn wait(&self, script: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.js(script).await;
            let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                self.snap("timeout").await;
                panic!("timed out after {secs} s waiting for `{script}`");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of an element.
    pub async fn text(&self, css: &str) -> String {
        self.driver().find(By::Css(css)).await.unwrap().text().await.unwrap()
    }

    /// Clicks an element.
    pub async fn click(&self, css: &str) {
        self.driver().find(By::Css(css)).await.unwrap().click().await.unwrap();
    }

    /// Chooses these files in a file input.
    pub async fn choose(&self, css: &str, files: &[PathBuf]) {
        // chromedriver takes canonical paths only.
        let paths: Vec<String> = files
            .iter()
            .map(|p| p.canonicalize().unwrap().display().to_string())
            .collect();
        let input = self.driver().find(By::Css(css)).await.unwrap();
        input.send_keys(paths.join("\n")).await.unwrap();
    }

    /// Selects an option of a <select> by value, as a user would (the change event fires).
    pub async fn select(&self, css: &str, value: &str) {
        let option = format!("{css} option[value=\"{value}\"]");
        self.wait(&format!("return document.querySelector('{option}')"), 10)
            .await;
        self.click(&option).await;
    }

    /// Ids (or tags) of the elements the Tab key reaches, in order, from the top of the page.
    pub async fn tab_order(&self, presses: usize) -> Vec<String> {
        self.js("document.activeElement.blur(); window.scrollTo(0, 0); return 1")
            .await;
        let mut seen = Vec::new();
        for _ in 0..presses {
            self.driver()
                .action_chain()
                .send_keys(Key::Tab)
                .perform()
                .await
                .unwrap();
            let id = self
                .js("const e = document.activeElement; return e.id || e.getAttribute('aria-label') || e.tagName")
                .await;
            seen.push(id.as_str().unwrap_or_default().to_string());
        }
        seen
    }

    /// Form controls on the page with no label and no aria-label.
    pub async fn unlabelled(&self) -> Vec<Value> {
        let v = self
            .js(
                "return [...document.querySelectorAll('input, select, textarea, progress')]\
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))\
                 .map(e => e.id || e.outerHTML)",
            )
            .await;
        v.as_array().unwrap().clone()
    }

    /// True when nothing sticks out sideways (no horizontal scrolling).
    pub async fn fits_width(&self) -> bool {
        let v = self
            .js("return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
            .await;
        v == json!(true)
    }
}

impl Browser {
    /// Ends the browser session (call at the end of a test).
    pub async fn quit(mut self) {
        self.driver.take().unwrap().quit().await.unwrap();
    }

    /// The WebDriver session.
    pub fn driver(&self) -> &WebDriver {
        self.driver.as_ref().unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session itself is not dropped: thirtyfour would end it synchronously, which stalls
        // a test's runtime for minutes after a failure.
        if let Some(driver) = self.driver.take() {
            std::mem::forget(driver);
        }
        // Chromium outlives a killed chromedriver (and would go on writing its log): the whole
        // process group goes.
        unsafe { libc::kill(-(self.chromedriver.id() as i32), libc::SIGKILL) };
        let _ = self.chromedriver.wait();
    }
}

/// Mean and standard deviation of the luminance of a PNG's pixels.
pub fn luminance_spread(png_bytes: &[u8]) -> (f64, f64) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let lum: Vec<f64> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| 0.2126 * p[0] as f64 + 0.7152 * p[1.min(channels - 1)] as f64 + 0.0722 * p[2.min(channels - 1)] as f64)
        .collect();
    let mean = lum.iter().sum::<f64>() / lum.len() as f64;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64;
    (mean, var.sqrt())
}

/// A file in a fresh temporary folder.
pub fn temp_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_blank_picture_has_no_spread_and_a_drawn_one_has() {
    let image = |f: &dyn Fn(u32, u32) -> u8| {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 64, 64);
        enc.set_color(png::ColorType::Rgba);
        let px: Vec<u8> = (0..64 * 64)
            .flat_map(|i| {
                let v = f(i % 64, i / 64);
                [v, v, v, 255]
            })
            .collect();
        enc.write_header().unwrap().write_image_data(&px).unwrap();
        out
    };
    assert_eq!(luminance_spread(&image(&|_, _| 40)).1, 0.0);
    assert!(
        luminance_spread(&image(&|x, y| if (16..48).contains(&x) && (16..48).contains(&y) {
            220
        } else {
            40
        }))
        .1 > 50.0
    );
}

/// A reverse proxy that serves `upstream` under a path prefix (`http://127.0.0.1:<port><prefix>/`),
/// streaming answers (Server-Sent Events pass as they come) and passing redirects on as they are.
pub async fn prefix_proxy(upstream: String, prefix: &'static str) -> String {
    use actix_web::{web, HttpRequest, HttpResponse};
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let forward = move |req: HttpRequest, body: web::Bytes| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let Some(rest) = path.strip_prefix(prefix) else {
                return HttpResponse::NotFound().finish();
            };
            let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
            let mut out = client.request(method, format!("{upstream}{rest}"));
            for (k, v) in req.headers().iter().filter(|(k, _)| *k != "host") {
                out = out.header(k.as_str(), v.as_bytes());
            }
            let Ok(resp) = out.body(body).send().await else {
                return HttpResponse::BadGateway().finish();
            };
            let mut answer =
                HttpResponse::build(actix_web::http::StatusCode::from_u16(resp.status().as_u16()).unwrap());
            for (k, v) in resp.headers() {
                if !["content-length", "transfer-encoding", "connection"].contains(&k.as_str()) {
                    answer.append_header((k.as_str(), v.as_bytes()));
                }
            }
            answer.streaming(resp.bytes_stream())
        }
    };
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(web::PayloadConfig::new(1 << 30))
            .default_service(web::to(forward.clone()))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    format!("http://{addr}{prefix}")
}
