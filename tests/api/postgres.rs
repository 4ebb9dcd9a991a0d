//! PostgreSQL killed and restarted under submit load, on a private server of the test's own (the
//! shared one serves the other tests); and what a confirmed publish leaves on a pooled connection.

use crate::cluster::*;
use crate::helpers::*;
use crate::procs::{namespace, Services, TestDatabase};
use meshroom_svc::error::Code;
use meshroom_svc::http::{ErrorBody, JobPage};
use meshroom_svc::jobs::{JobView, Status};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A PostgreSQL server in a temp folder, run as the `postgres` user when the tests run as root
/// (PostgreSQL refuses root).
struct PrivatePostgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivatePostgres {
    async fn start() -> PrivatePostgres {
        let root = std::path::Path::new("/usr/lib/postgresql");
        let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
            .unwrap_or_else(|e| panic!("PostgreSQL must be installed (scripts/services does it): {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        versions.sort();
        let bin = versions.pop().expect("a PostgreSQL version").join("bin");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some((uid, gid)) = postgres_user() {
            nix::unistd::chown(&data, Some(uid.into()), Some(gid.into())).unwrap();
        }
        let status = as_postgres(Command::new(bin.join("initdb")))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let mut pg = PrivatePostgres {
            _dir: dir,
            data,
            bin,
            port: crate::procs::free_port(),
            child: None,
        };
        pg.resume().await;
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server again on the same data (recovering after a SIGKILL).
    async fn resume(&mut self) {
        for _ in 0..100 {
            let child = as_postgres(Command::new(self.bin.join("postgres")))
                .args(["-D", self.data.to_str().unwrap(), "-p", &self.port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", &format!("unix_socket_directories={}", self.data.display())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.child = Some(child);
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    return;
                }
                if let Ok(Some(_)) = self.child.as_mut().unwrap().try_wait() {
                    break; // the backends of a killed server are still leaving: try again
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the private PostgreSQL did not start");
    }

    fn signal(&mut self, sig: i32) {
        if let Some(child) = &mut self.child {
            unsafe { libc::kill(child.id() as i32, sig) };
            let _ = child.wait();
        }
        self.child = None;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.signal(libc::SIGQUIT);
    }
}

fn postgres_user() -> Option<(u32, u32)> {
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user");
        Some((user.uid.as_raw(), user.gid.as_raw()))
    } else {
        None
    }
}

fn as_postgres(mut cmd: Command) -> Command {
    if let Some((uid, gid)) = postgres_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn postgres_killed_and_restarted_under_submit_load_loses_no_accepted_job() {
    let _broker = BROKER.read().await;
    let mut pg = PrivatePostgres::start().await;
    let (c, serve, _worker) = Cluster::with_serve_and_worker(&[
        ("MESHROOM_SVC_DATABASE_URL", &pg.url()),
        ("FAKE_MESHROOM_MODE", "instant"),
    ])
    .await;
    let url = c.edge.add("p.jpg", photo(0));
    let t0 = Instant::now();
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (api, url, running) = (Api::new(serve.api().base.clone()), url.clone(), running.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while running.load(std::sync::atomic::Ordering::SeqCst) {
                    let started = Instant::now();
                    let resp = api.post_json("/api/v1/jobs", &json!({"image_urls": [url]})).await;
                    let status = resp.status().as_u16();
                    let body: Value = resp.json().await.unwrap();
                    answers.push((status, started.elapsed(), body));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Each outage outlasts the 3 s a request waits for a connection.
    pg.signal(libc::SIGKILL);
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.resume().await;
    let back = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.signal(libc::SIGINT); // a fast shutdown, as a restart does
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.resume().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let slowest = answers.iter().map(|a| a.1).max().unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for (status, took, body) in &answers {
        assert!(*took < Duration::from_secs(8), "an answer took {took:?}");
        match status {
            202 => accepted.push(serde_json::from_value::<JobView>(body.clone()).unwrap().id.to_string()),
            503 => {
                let error = serde_json::from_value::<ErrorBody>(body.clone()).unwrap().error;
                assert_eq!(error.code, Code::DatabaseUnavailable, "{body}");
                refused += 1;
            }
            other => panic!("the API answered {other} while PostgreSQL was down: {body}"),
        }
    }
    assert!(refused > 0, "PostgreSQL was down for part of the run");
    // Recovered on its own: the last answers were accepted.
    assert_eq!(answers.last().unwrap().0, 202);
    let mut twice = 0;
    for id in &accepted {
        let job = serve.api().finished(id, 120).await;
        assert_eq!(job.status, Status::Succeeded, "{job:#?}");
        let runs = invocations(c.dir.path())
            .iter()
            .filter(|r| r["job"] == id.as_str())
            .count();
        assert!(runs >= 1);
        twice += usize::from(runs > 1);
    }
    let page: JobPage = serve.api().get("/api/v1/jobs?limit=100").await.json().await.unwrap();
    let listed = page.jobs.len();
    assert!(
        listed >= accepted.len() && listed <= answers.len(),
        "{listed} jobs listed"
    );
    eprintln!(
        "PostgreSQL SIGKILL + restart under load: {} submits, {} accepted and all succeeded ({twice} ran the \
         engine twice: an outcome that could not be recorded), {refused} refused with 503; slowest answer {slowest:?}; back at {back:?}",
        answers.len(),
        accepted.len()
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (RabbitMQ, Garage, PostgreSQL): scripts/test"
)]
async fn a_confirmed_publish_clears_its_mark_and_leaves_the_connection_durable() {
    use meshroom_svc::jobs::{Db, Job, Store};
    let db = TestDatabase::create(&Services::from_env(), &namespace()).await;
    // One connection: the statement that clears the marks and the query after it share it.
    let store = Store::new(Db::open(&db.url, 1).await.unwrap());
    let soon = chrono::Utc::now() + chrono::Duration::seconds(5);
    let ids: Vec<_> = futures_util::future::join_all((0..3).map(|_| store.insert(Job::new("draft".into(), 60))))
        .await
        .into_iter()
        .map(|i| i.unwrap().job.id)
        .collect();
    assert_eq!(store.unpublished(soon).await.unwrap().len(), 3);
    store.published(&ids[..2]).await.unwrap();
    let left: Vec<_> = store.unpublished(soon).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(left, vec![ids[2]]);
    // The clearing commits without waiting for its WAL flush; that is its own transaction's
    // setting, not the pooled connection's: the next submit's commit is durable again.
    let Db::Postgres(pool) = store.db() else { unreachable!() };
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(setting, "on");
}
