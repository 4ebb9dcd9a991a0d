//! Real `meshroom-svc` processes for tests that kill, restart and scale them, and the real
//! services (RabbitMQ, Garage) they use.

use crate::helpers::*;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A `meshroom-svc` process; killed (SIGKILL) when dropped, also on a failed assertion.
pub struct Proc {
    child: Child,
    /// The API of `serve` and `all-in-one` processes.
    pub api: Option<Api>,
}

impl Proc {
    /// Starts `meshroom-svc ARGS` with the test engine and settings from `env`; for roles that
    /// serve HTTP (`port` given), waits until `/health` answers.
    pub async fn start(dir: &Path, args: &[&str], port: Option<u16>, env: &[(String, String)]) -> Proc {
        Self::start_logged(dir, args, port, env, None).await
    }

    /// As `start`, with stdout and stderr written to `log`.
    pub async fn start_logged(
        dir: &Path,
        args: &[&str],
        port: Option<u16>,
        env: &[(String, String)],
        log: Option<&Path>,
    ) -> Proc {
        // test_config writes the engine wrapper; the process gets the same settings from the environment.
        let config = test_config(dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshroom-svc"));
        cmd.args(args)
            .env("MESHROOM_SVC_ENGINE_MESHROOM_BATCH", &config.engine.meshroom_batch)
            .env("MESHROOM_SVC_ENGINE_KILL_GRACE_SECS", "1")
            .env("MESHROOM_SVC_WORKER_RETRY_DELAY_MS", "50")
            .env("MESHROOM_SVC_WORKER_MIN_FREE_BYTES", "0")
            .env("MESHROOM_SVC_ENGINE_ENV", FAKE_VARIABLES)
            .env("MESHROOM_SVC_SECURITY_ALLOWED_NETWORKS", "127.0.0.0/8")
            // Crashed workers' jobs are taken over sooner than in production.
            .env("MESHROOM_SVC_QUEUE_LEASE_SECS", "6")
            .env("MESHROOM_SVC_WEBHOOK_SECRET", SECRET)
            .env("MESHROOM_SVC_WEBHOOK_SCHEDULE_SECS", "0,1,1,1")
            // Job lines, not one per request (tests poll): the output stays readable in CI.
            .env("RUST_LOG", "info,actix_web::middleware::logger=warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(dir)
            .stdin(Stdio::null());
        if let Some(port) = port {
            cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        }
        if let Some(log) = log {
            let file = std::fs::File::create(log).unwrap();
            cmd.stdout(file.try_clone().unwrap()).stderr(file);
        }
        let mut proc = Proc {
            child: cmd.spawn().unwrap(),
            api: port.map(|p| Api::new(format!("http://127.0.0.1:{p}"))),
        };
        if let Some(api) = &proc.api {
            for _ in 0..200 {
                if reqwest::get(api.url("/health")).await.is_ok() {
                    return proc;
                }
                if let Ok(Some(status)) = proc.child.try_wait() {
                    panic!("meshroom-svc {args:?} exited at start: {status}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("meshroom-svc {args:?} did not start");
        }
        proc
    }

    /// `meshroom-svc all-in-one` without GPUs, its data in `data`, serving on `port`.
    pub async fn all_in_one(dir: &Path, data: &Path, port: u16, env: &[(String, String)]) -> Proc {
        let data = data.display().to_string();
        Self::start(
            dir,
            &["all-in-one", "--gpu", "none", "--data-dir", &data],
            Some(port),
            env,
        )
        .await
    }

    pub fn api(&self) -> &Api {
        self.api.as_ref().expect("this process serves HTTP")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal, e.g. `libc::SIGTERM`.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit, at most `secs`.
    pub async fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        for _ in 0..secs * 20 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the process did not exit within {secs} s");
    }

    /// SIGKILL, as a crash would.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// RabbitMQ and Garage, as `scripts/services` starts them. A test that needs them fails loudly
/// when they are missing: never skipped.
pub struct Services {
    pub amqp_url: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// A PostgreSQL URL whose user may create databases.
    pub database_url: String,
}

impl Services {
    pub fn from_env() -> Services {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: these tests need RabbitMQ, Garage and PostgreSQL; run scripts/test, which starts them")
            })
        };
        Services {
            amqp_url: var("MESHROOM_TEST_AMQP_URL"),
            s3_endpoint: var("MESHROOM_TEST_S3_ENDPOINT"),
            s3_region: var("MESHROOM_TEST_S3_REGION"),
            s3_bucket: var("MESHROOM_TEST_S3_BUCKET"),
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
            database_url: var("MESHROOM_TEST_DATABASE_URL"),
        }
    }

    /// Settings for processes that share a RabbitMQ prefix and an S3 key prefix of their own.
    pub fn env(&self, namespace: &str) -> Vec<(String, String)> {
        [
            ("MESHROOM_SVC_QUEUE_KIND", "rabbitmq"),
            // The test workers have no GPU.
            ("MESHROOM_SVC_SERVER_DEFAULT_PIPELINE", "draft"),
            ("MESHROOM_SVC_QUEUE_NAME", namespace),
            ("MESHROOM_SVC_AMQP_URL", &self.amqp_url),
            // scripts/services raises the broker's consumer_timeout to 10 h; jobs here take seconds.
            ("MESHROOM_SVC_QUEUE_BROKER_CONSUMER_TIMEOUT_SECS", "36000"),
            ("MESHROOM_SVC_ENGINE_TIMEOUT_SECS", "3600"),
            ("MESHROOM_SVC_STORAGE_KIND", "s3"),
            ("MESHROOM_SVC_STORAGE_BUCKET", &self.s3_bucket),
            ("MESHROOM_SVC_STORAGE_PREFIX", &format!("{namespace}/")),
            ("MESHROOM_SVC_STORAGE_ENDPOINT", &self.s3_endpoint),
            ("MESHROOM_SVC_STORAGE_REGION", &self.s3_region),
            ("AWS_ACCESS_KEY_ID", &self.access_key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The `[storage]` section for the same bucket and a prefix.
    pub fn storage_config(&self, prefix: &str) -> meshroom_svc::config::StorageConfig {
        meshroom_svc::config::StorageConfig {
            kind: meshroom_svc::config::StorageKind::S3,
            bucket: self.s3_bucket.clone(),
            prefix: prefix.to_string(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: true,
            presign_expiry_secs: 600,
        }
    }

    pub fn secrets(&self) -> meshroom_svc::config::Secrets {
        meshroom_svc::config::Secrets {
            aws_access_key_id: Some(self.access_key.clone()),
            aws_secret_access_key: Some(self.secret_key.clone().into()),
            ..Default::default()
        }
    }
}

/// A PostgreSQL database of one test's own, dropped when the test ends.
pub struct TestDatabase {
    admin: String,
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create(services: &Services, name: &str) -> TestDatabase {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&services.database_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at MESHROOM_TEST_DATABASE_URL: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&services.database_url).unwrap();
        url.set_path(name);
        TestDatabase {
            admin: services.database_url.clone(),
            name: name.to_string(),
            url: url.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on a future: a thread of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&drop).execute(&mut conn).await;
                }
            })
        })
        .join();
    }
}

/// A fresh namespace (queue and key prefix) for one test.
pub fn namespace() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// A Garage S3 server of one test's own, to stop and start without disturbing the shared one.
pub struct PrivateGarage {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<Child>,
    pub access_key: String,
    pub secret_key: String,
}

impl PrivateGarage {
    /// Starts a single node on free ports, with a key and the bucket `private`.
    pub async fn start(dir: &Path) -> PrivateGarage {
        let (port, rpc) = (free_port(), free_port());
        std::fs::create_dir_all(dir).unwrap();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + port as usize) % 256))
            .collect();
        std::fs::write(
            dir.join("garage.toml"),
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{port}\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut g = PrivateGarage {
            dir: dir.to_path_buf(),
            port,
            child: None,
            access_key: format!("GK{}", &secret[..24]),
            secret_key: secret.chars().rev().collect(),
        };
        g.resume().await;
        g
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again), on the same data.
    pub async fn resume(&mut self) {
        let garage = std::env::var("HOME")
            .map(|h| format!("{h}/.cargo/bin/garage"))
            .unwrap_or_default();
        assert!(
            Path::new(&garage).exists(),
            "Garage is missing: run scripts/test, which builds it"
        );
        let child = Command::new(garage)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_CONFIG_FILE", self.dir.join("garage.toml"))
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", "private")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the private Garage did not start");
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        self.crash();
    }
}
