//! The client subcommands, run as a user would: the real binary against all-in-one on port 0.

use crate::helpers::*;
use meshroom_svc::jobs::{JobView, Status};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The binary, pointed at `server`, with no terminal (stdin from /dev/null).
fn cli(server: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshroom-svc"));
    c.args(args)
        .env("MESHROOM_SVC_URL", server)
        .env_remove("MESHROOM_SVC_API_KEY")
        .stdin(Stdio::null());
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A folder of `n` photos, one in a subfolder (folders are read recursively).
fn photo_folder(dir: &Path, n: usize) -> std::path::PathBuf {
    let folder = dir.join("photos");
    std::fs::create_dir_all(folder.join("more")).unwrap();
    for i in 0..n {
        let at = if i == 0 { folder.join("more") } else { folder.clone() };
        std::fs::write(at.join(format!("p{i}.jpg")), photo(i)).unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "not a photo").unwrap();
    folder
}

#[tokio::test]
async fn submit_wait_downloads_every_result_whole() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let folder = photo_folder(dir.path(), 3);
    let out = dir.path().join("out");
    let o = run_command(cli(
        &app.base,
        &[
            "submit",
            folder.to_str().unwrap(),
            "--wait",
            "--out",
            out.to_str().unwrap(),
        ],
    ))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // The id alone on stdout.
    let id = text(&o.stdout).trim().to_string();
    let job = app.view(&id).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.uploads.len(), 3, "the photos of the folder, not the text file");
    for r in &job.results {
        let got = std::fs::read(out.join(&r.name)).unwrap();
        let want = app
            .get(&format!("/api/v1/jobs/{id}/files/{}", r.name))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(got, want.to_vec(), "{}", r.name);
    }
    // And as JSON for scripts, everywhere.
    let o = run_command(cli(&app.base, &["jobs", "list", "--json"])).await;
    let list: Vec<JobView> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0].id.to_string(), id);
    let o = run_command(cli(&app.base, &["jobs", "show", &id, "--json"])).await;
    assert_eq!(serde_json::from_slice::<JobView>(&o.stdout).unwrap().id.to_string(), id);
    let o = run_command(cli(&app.base, &["jobs", "wait", &id, "--json"])).await;
    assert_eq!(o.status.code(), Some(0));
    serde_json::from_slice::<Value>(&o.stdout).unwrap();
    let again = dir.path().join("again");
    let o = run_command(cli(
        &app.base,
        &["jobs", "download", &id, "--out", again.to_str().unwrap()],
    ))
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_dir(&again).unwrap().count(), job.results.len());
}

#[tokio::test]
async fn exit_codes_say_how_it_ended() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let failing = dir.path().join(Fake::Fail.image());
    std::fs::write(&failing, photo(0)).unwrap();
    let o = run_command(cli(&app.base, &["submit", failing.to_str().unwrap(), "--wait"])).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("engine_failed") && err.contains("FeatureMatching"),
        "{err}"
    );
    // Its log, whole and followed (the job is over: every line, then the end).
    let id = text(&o.stdout).trim().to_string();
    for args in [vec!["jobs", "logs", &id], vec!["jobs", "logs", &id, "--follow"]] {
        let o = run_command(cli(&app.base, &args)).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let out = text(&o.stdout);
        assert!(out.contains("[4/10] FeatureMatching"), "{args:?}: {out}");
    }

    // Usage errors: 2.
    let o = run_command(cli(&app.base, &["submit", "/no/such/photo.jpg"])).await;
    assert_eq!(o.status.code(), Some(2));
    let o = run_command(cli(&app.base, &["submit"])).await;
    assert_eq!(o.status.code(), Some(2));
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, "text").unwrap();
    let o = run_command(cli(&app.base, &["submit", bad.to_str().unwrap()])).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("unsupported_image_type"),
        "{}",
        text(&o.stderr)
    );

    // Nobody listening: 4, after retries.
    let closed = format!("http://127.0.0.1:{}", crate::procs::free_port());
    let o = run_command(cli(&closed, &["jobs", "list"])).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
}

#[tokio::test]
async fn refused_keys_exit_5() {
    let app = spawn_app_with(|c| c.secrets.api_keys = vec!["key-cli-3f9a".to_string().into()], vec![]).await;
    let o = run_command(cli(&app.base, &["jobs", "list"])).await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let o = run_command(cli(&app.base, &["jobs", "list", "--api-key", "key-cli-3f9a"])).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

#[tokio::test]
async fn ctrl_c_without_a_terminal_leaves_the_job_running() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let hang = dir.path().join(Fake::Hang.image());
    std::fs::write(&hang, photo(0)).unwrap();
    let mut c = cli(&app.base, &["submit", hang.to_str().unwrap(), "--wait"]);
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id() as i32;
    let id = loop {
        let list = app.get("/api/v1/jobs").await.json::<Value>().await.unwrap();
        match list["jobs"][0]["id"].as_str() {
            Some(id) => break id.to_string(),
            None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    app.wait_until(&id, 30, |j| j.status == Status::Processing).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains(&format!("jobs cancel {id}")),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(app.view(&id).await.status, Status::Processing, "the job keeps running");
    let o = run_command(cli(&app.base, &["jobs", "cancel", &id])).await;
    assert_eq!(o.status.code(), Some(0));
    let o = run_command(cli(&app.base, &["jobs", "wait", &id])).await;
    assert_eq!(o.status.code(), Some(3), "canceled");
}

/// A proxy to `upstream` whose first connection fails: after `cut` bytes of the request, or
/// (with `cut` = None) after the whole exchange, without passing the answer on.
async fn flaky_proxy(upstream: std::net::SocketAddr, cut: Option<usize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            if !std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                continue;
            }
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut answer = [0u8; 1024];
                let mut sent = 0;
                loop {
                    tokio::select! {
                        n = client.read(&mut buf) => {
                            let Ok(n) = n else { return };
                            if n == 0 { return; }
                            let n = cut.map_or(n, |c| n.min(c - sent));
                            let _ = server.write_all(&buf[..n]).await;
                            sent += n;
                            if cut == Some(sent) { return; } // dropped mid-upload
                        }
                        n = server.read(&mut answer) => {
                            // The answer came: dropped instead of passed on.
                            let _ = n;
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_connection_lost_during_submit_makes_one_job() {
    let app = spawn_app().await;
    let upstream: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = photo_folder(dir.path(), 4);
    for cut in [Some(3000), None] {
        let before = app.get("/api/v1/jobs?limit=100").await.json::<Value>().await.unwrap()["jobs"]
            .as_array()
            .unwrap()
            .len();
        let proxy = flaky_proxy(upstream, cut).await;
        let o = run_command(cli(&proxy, &["submit", folder.to_str().unwrap()])).await;
        assert_eq!(o.status.code(), Some(0), "{cut:?}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("trying again"), "{}", text(&o.stderr));
        let id = text(&o.stdout).trim().to_string();
        let jobs = app.get("/api/v1/jobs?limit=100").await.json::<Value>().await.unwrap();
        let jobs = jobs["jobs"].as_array().unwrap().clone();
        assert_eq!(jobs.len(), before + 1, "{cut:?}: one job, not two");
        assert_eq!(jobs[0]["id"], id.as_str());
        assert_eq!(app.view(&id).await.uploads.len(), 4);
    }
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(env!("CARGO_BIN_EXE_meshroom-svc"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success() && text(&o.stdout).contains("submit"), "{shell}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_meshroom-svc"))
        .arg("man")
        .output()
        .unwrap();
    assert!(o.status.success() && text(&o.stdout).contains(".TH meshroom-svc"));
}

#[tokio::test]
async fn ctrl_c_on_a_terminal_asks_and_cancels_on_yes() {
    use std::io::{Read, Write};
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let hang = dir.path().join(Fake::Hang.image());
    std::fs::write(&hang, photo(0)).unwrap();
    // stdin and stderr on a pseudo-terminal, as in a shell; stdout piped, as in ID=$(...).
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut c = cli(&app.base, &["submit", hang.to_str().unwrap(), "--wait"]);
    c.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::piped());
    let child = c.spawn().unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    // What the terminal shows, read all along so that the child never blocks on it.
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let shown = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let id = loop {
        let list = app.get("/api/v1/jobs").await.json::<Value>().await.unwrap();
        match list["jobs"][0]["id"].as_str() {
            Some(id) => break id.to_string(),
            None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    app.wait_until(&id, 30, |j| j.status == Status::Processing).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !screen.lock().unwrap().contains("[y/N]") {
        assert!(
            std::time::Instant::now() < deadline,
            "no question: {}",
            screen.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    master.write_all(b"y\n").unwrap();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", screen.lock().unwrap());
    assert_eq!(text(&o.stdout).trim(), id, "the id alone on stdout");
    assert_eq!(app.view(&id).await.status, Status::Canceled);
}
