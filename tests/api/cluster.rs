//! The distributed-mode harness: processes sharing one namespace (queue prefix and key prefix) on
//! the real RabbitMQ and Garage, and helpers to disturb them.

use crate::helpers::*;
use crate::procs::*;
use std::time::Duration;
use tokio::sync::RwLock;

/// Tests that restart the broker take it alone; the others share it.
pub static BROKER: RwLock<()> = RwLock::const_new(());

/// Processes sharing one namespace (queue prefix and key prefix).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    pub edge: Edge,
    pub namespace: String,
    pub db: TestDatabase,
    store: meshroom_svc::jobs::Store,
}

impl Cluster {
    pub async fn new(extra: &[(&str, &str)]) -> Cluster {
        let namespace = namespace();
        let services = Services::from_env();
        let db = TestDatabase::create(&services, &namespace).await;
        let store = meshroom_svc::jobs::Store::new(meshroom_svc::jobs::Db::open(&db.url, 2).await.unwrap());
        let mut env = services.env(&namespace);
        env.push(("MESHROOM_SVC_DATABASE_URL".into(), db.url.clone()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            env,
            edge: Edge::start().await,
            namespace,
            db,
            store,
        }
    }

    /// The stored record of a job, with what the API does not show (its worker, lost attempts).
    pub async fn record(&self, id: &str) -> meshroom_svc::jobs::Job {
        self.store
            .get(id.parse().unwrap())
            .await
            .unwrap()
            .expect("the job exists")
    }

    /// The pid of the worker that took the job last.
    pub async fn worker_pid(&self, id: &str) -> Option<u32> {
        pid_of(&self.record(id).await)
    }

    /// A cluster with one `serve` and one CPU `work` process.
    pub async fn with_serve_and_worker(extra: &[(&str, &str)]) -> (Cluster, Proc, Proc) {
        let c = Cluster::new(extra).await;
        let serve = c.serve("serve").await;
        let worker = c.work("work", "none").await;
        (c, serve, worker)
    }

    pub async fn serve(&self, name: &str) -> Proc {
        let data = self.dir.path().join(name).display().to_string();
        Proc::start(
            self.dir.path(),
            &["serve", "--data-dir", &data],
            Some(free_port()),
            &self.env,
        )
        .await
    }

    /// A worker, with its /health, /ready and /metrics on a port of its own.
    pub async fn work(&self, name: &str, gpu: &str) -> Proc {
        let data = self.dir.path().join(name).display().to_string();
        Proc::start(
            self.dir.path(),
            &["work", "--gpu", gpu, "--data-dir", &data],
            Some(free_port()),
            &self.env,
        )
        .await
    }

    /// The queues of this namespace, deleted when the test ends: the broker is shared, and must
    /// not pile up queues from run to run.
    pub fn queue_names(&self) -> Vec<String> {
        [
            "jobs.gpu",
            "jobs.cpu",
            "dead",
            "webhooks",
            "webhooks.wait.1",
            "webhooks.wait.4",
        ]
        .iter()
        .map(|q| format!("{}.{q}", self.namespace))
        .collect()
    }

    /// Ready and unacknowledged messages of one of this cluster's queues.
    pub fn queue_counts(&self, suffix: &str) -> (u64, u64) {
        let out = std::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ])
            .output()
            .expect("rabbitmqctl runs");
        let name = format!("{}.{suffix}", self.namespace);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&name.as_str())).then(|| (f[1].parse().unwrap(), f[2].parse().unwrap()))
            })
            .unwrap_or_else(|| panic!("queue {name} not found"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for name in self.queue_names() {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", &name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

pub fn pid_of(job: &meshroom_svc::jobs::Job) -> Option<u32> {
    job.worker.as_deref()?.rsplit(':').next()?.parse().ok()
}

/// VmHWM: the peak resident set of a process.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Publishes a job's message again, as a duplicate from the broker would arrive.
pub async fn publish_again(c: &Cluster, id: &str) {
    use meshroom_svc::queue::amqp::{Consume, Topology};
    let services = Services::from_env();
    let topology = Topology {
        prefix: c.namespace.clone(),
        webhook_delays: vec![0, 1, 1, 1], // as the cluster's processes declare them
        consumer_timeout: Duration::from_secs(7200),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let amqp = meshroom_svc::queue::Amqp::start(services.amqp_url, topology, Consume::default(), stop.clone());
    for _ in 0..20 {
        if amqp
            .publish_job(id.parse().unwrap(), false, meshroom_svc::jobs::Priority::Normal, None)
            .await
            .is_ok()
        {
            stop.cancel();
            return;
        }
    }
    panic!("could not publish the duplicate");
}

/// Kills the RabbitMQ node with SIGKILL and starts it again, as a crash would.
pub fn crash_and_restart_broker() {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap()
            .success()
    };
    assert!(sh("pkill -9 -x beam.smp"), "no RabbitMQ node to kill");
    std::thread::sleep(Duration::from_secs(1));
    assert!(sh("rabbitmq-server -detached >/dev/null 2>&1"));
    assert!(sh("for i in $(seq 1 60); do rabbitmqctl await_startup --timeout 10 >/dev/null 2>&1 && exit 0; sleep 2; done; exit 1"));
    assert!(sh(
        "rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, 36000000).' >/dev/null"
    ));
}
