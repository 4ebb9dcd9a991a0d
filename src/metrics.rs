//! Prometheus metrics of this process, served at `GET /metrics`.

use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The metrics a process keeps; each process exports its own (sum them across replicas).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Tenants that get a label of their own (those with a `[tenants.<name>]` table, and
    /// `default`); the others are counted as `other`, so that the series stay bounded.
    tenants: std::sync::Arc<std::collections::BTreeSet<String>>,
    /// Jobs accepted by this API process, by tenant.
    pub submitted: IntCounterVec,
    /// Requests refused for their key's rate, by tenant and kind (`submit`, `read`).
    pub rate_limited: IntCounterVec,
    /// Submits refused by a quota, by tenant.
    pub quota_exceeded: IntCounterVec,
    /// Jobs running in this process now.
    pub running: IntGauge,
    /// Jobs that ended here, by status, error code and tenant.
    pub finished: IntCounterVec,
    /// Time spent in each stage, seconds.
    pub stage_seconds: HistogramVec,
    /// How long each engine node took, seconds, by node type and preset (for ETA and capacity
    /// planning).
    pub node_seconds: HistogramVec,
    /// Time from one engine run's end to the next one's start on the same worker slot, seconds.
    pub engine_gap_seconds: Histogram,
    /// Webhook attempts made here, by outcome.
    pub webhook_attempts: IntCounterVec,
    /// Jobs waiting in the queue, as last read.
    pub queue_depth: IntGauge,
    /// 1 while this worker takes no job for lack of disk space (`worker.min_free_bytes`).
    pub low_disk: IntGauge,
    /// Worker slots of this process by route (`gpu`: one per GPU; `cpu`: one, on a node without
    /// GPUs; none in `serve`): with `jobs_running`, busy and idle slots.
    pub worker_slots: prometheus::IntGaugeVec,
    /// Time from a job's submit to its first claim, seconds.
    pub queue_wait_seconds: Histogram,
    /// Webhook deliveries with attempts to come, read at each scrape.
    pub webhooks_pending: IntGauge,
    /// Age of the oldest pending webhook delivery (since its job ended), seconds; 0 for none.
    pub webhook_backlog_age_seconds: IntGauge,
    /// Free bytes in the data folder, read at each scrape.
    pub data_free_bytes: IntGauge,
    /// GPU utilisation, 0 to 1, by GPU index (only where `nvidia-smi` answers).
    pub gpu_utilization: prometheus::GaugeVec,
    /// GPU memory in use and in all, bytes, by GPU index.
    pub gpu_memory_used_bytes: prometheus::IntGaugeVec,
    pub gpu_memory_total_bytes: prometheus::IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new_custom(Some("meshroom".into()), None).expect("static prefix");
        let submitted = IntCounterVec::new(
            Opts::new("jobs_submitted_total", "Jobs accepted by this API process, by tenant"),
            &["tenant"],
        )
        .unwrap();
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused for their key's rate, by tenant and kind",
            ),
            &["tenant", "kind"],
        )
        .unwrap();
        let quota_exceeded = IntCounterVec::new(
            Opts::new("quota_exceeded_total", "Submits refused by a quota, by tenant"),
            &["tenant"],
        )
        .unwrap();
        let running = IntGauge::new("jobs_running", "Jobs running in this process").unwrap();
        let finished = IntCounterVec::new(
            Opts::new(
                "jobs_finished_total",
                "Jobs that ended in this process, by status, error code and tenant",
            ),
            &["status", "code", "tenant"],
        )
        .unwrap();
        // Stages last from seconds (downloads) to many hours (reconstruction).
        let buckets = vec![
            1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
        ];
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("stage_duration_seconds", "Time spent in each job stage").buckets(buckets.clone()),
            &["stage"],
        )
        .unwrap();
        let node_seconds = HistogramVec::new(
            HistogramOpts::new(
                "engine_node_duration_seconds",
                "Time each engine node took, by node type and preset",
            )
            // Nodes also take fractions of a second (a small COLMAP job's steps).
            .buckets([vec![0.1, 0.5], buckets].concat()),
            &["node_type", "preset"],
        )
        .unwrap();
        // What a slot does between two runs (record, upload, ack, claim, download) with jobs
        // waiting; with an empty queue it includes the wait for the next job.
        let gap_buckets = vec![
            0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
        ];
        let engine_gap_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "engine_gap_seconds",
                "Time from one engine run's end to the next one's start on a worker slot",
            )
            .buckets(gap_buckets),
        )
        .unwrap();
        let webhook_attempts = IntCounterVec::new(
            Opts::new("webhook_attempts_total", "Webhook delivery attempts, by outcome"),
            &["outcome"],
        )
        .unwrap();
        let queue_depth = IntGauge::new("queue_depth", "Jobs waiting in the queue").unwrap();
        let low_disk = IntGauge::new(
            "worker_low_disk",
            "1 while this worker takes no job: its data folder has less free space than worker.min_free_bytes",
        )
        .unwrap();
        let worker_slots = prometheus::IntGaugeVec::new(
            Opts::new("worker_slots", "Worker slots of this process, by route (gpu, cpu)"),
            &["route"],
        )
        .unwrap();
        let queue_wait_seconds = Histogram::with_opts(
            HistogramOpts::new("queue_wait_seconds", "Time from a job's submit to its first claim").buckets(vec![
                0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0,
            ]),
        )
        .unwrap();
        let webhooks_pending = IntGauge::new("webhooks_pending", "Webhook deliveries with attempts to come").unwrap();
        let webhook_backlog_age_seconds = IntGauge::new(
            "webhook_backlog_age_seconds",
            "Age of the oldest pending webhook delivery, since its job ended (0: none)",
        )
        .unwrap();
        let data_free_bytes = IntGauge::new("data_free_bytes", "Free bytes in the data folder").unwrap();
        let gpu_utilization = prometheus::GaugeVec::new(
            Opts::new("gpu_utilization_ratio", "GPU utilisation, 0 to 1 (nvidia-smi)"),
            &["gpu"],
        )
        .unwrap();
        let gpu_memory_used_bytes = prometheus::IntGaugeVec::new(
            Opts::new("gpu_memory_used_bytes", "GPU memory in use (nvidia-smi)"),
            &["gpu"],
        )
        .unwrap();
        let gpu_memory_total_bytes = prometheus::IntGaugeVec::new(
            Opts::new("gpu_memory_total_bytes", "GPU memory in all (nvidia-smi)"),
            &["gpu"],
        )
        .unwrap();
        for c in [
            Box::new(worker_slots.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queue_wait_seconds.clone()),
            Box::new(webhooks_pending.clone()),
            Box::new(webhook_backlog_age_seconds.clone()),
            Box::new(data_free_bytes.clone()),
            Box::new(gpu_utilization.clone()),
            Box::new(gpu_memory_used_bytes.clone()),
            Box::new(gpu_memory_total_bytes.clone()),
            Box::new(submitted.clone()),
            Box::new(rate_limited.clone()),
            Box::new(quota_exceeded.clone()),
            Box::new(running.clone()),
            Box::new(finished.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(node_seconds.clone()),
            Box::new(engine_gap_seconds.clone()),
            Box::new(webhook_attempts.clone()),
            Box::new(queue_depth.clone()),
            Box::new(low_disk.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            tenants: Default::default(),
            submitted,
            rate_limited,
            quota_exceeded,
            running,
            finished,
            stage_seconds,
            node_seconds,
            engine_gap_seconds,
            webhook_attempts,
            queue_depth,
            low_disk,
            worker_slots,
            queue_wait_seconds,
            webhooks_pending,
            webhook_backlog_age_seconds,
            data_free_bytes,
            gpu_utilization,
            gpu_memory_used_bytes,
            gpu_memory_total_bytes,
        }
    }
}

impl Metrics {
    /// Metrics whose tenant labels name these tenants (and `default`); others are `other`.
    pub fn for_tenants<'a>(names: impl IntoIterator<Item = &'a String>) -> Metrics {
        let mut tenants: std::collections::BTreeSet<String> = names.into_iter().cloned().collect();
        tenants.insert(crate::tenants::DEFAULT_TENANT.into());
        Metrics {
            tenants: std::sync::Arc::new(tenants),
            ..Metrics::default()
        }
    }

    /// The label of a tenant: its name if configured, else `other`.
    pub fn tenant<'a>(&self, tenant: &'a str) -> &'a str {
        match self.tenants.contains(tenant) {
            true => tenant,
            false => "other",
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("UTF-8 text")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_prometheus_text() {
        let m = super::Metrics::for_tenants(&["acme".to_string()]);
        m.submitted.with_label_values(&[m.tenant("acme")]).inc();
        m.submitted.with_label_values(&[m.tenant("unlisted")]).inc();
        m.finished
            .with_label_values(&["failed", "engine_timeout", m.tenant("default")])
            .inc();
        m.stage_seconds.with_label_values(&["reconstructing"]).observe(42.0);
        let text = m.render();
        assert!(
            text.contains(r#"meshroom_jobs_submitted_total{tenant="acme"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshroom_jobs_submitted_total{tenant="other"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshroom_jobs_finished_total{code="engine_timeout",status="failed",tenant="default"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"meshroom_stage_duration_seconds_bucket{stage="reconstructing",le="60"} 1"#));
    }
}
