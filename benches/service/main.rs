//! The benchmark of meshroom-svc (BENCHMARKS.md): each figure is measured side by side, in the
//! same run, with the raw limit it is compared to, so the ratio holds on a noisy shared machine.
//!
//! `scripts/bench` installs and starts what it needs and runs `cargo bench --features full --bench service`.
//! Under `cargo test --features full` (no `--bench` argument) the same code runs at reduced sizes as a smoke test:
//! it proves the benchmark works, not that the targets are met.

#[allow(dead_code)]
#[path = "../../tests/api/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../../tests/api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../../tests/fixtures/photos.rs"]
mod photos;
#[allow(dead_code)]
#[path = "../../tests/api/procs.rs"]
mod procs;

mod api;
mod db;
mod fair;
mod files;
mod raw;
mod report;
mod runs;
mod tracing;
mod wrk;

/// Sizes of one run.
pub struct Scale {
    /// Concurrent HTTP, broker and S3 clients of the accept figure.
    pub clients: usize,
    /// Seconds of each load phase.
    pub secs: u64,
    /// Jobs recorded before the read figures.
    pub records: usize,
    /// Images staged per job, and bytes per image.
    pub images: usize,
    pub image_bytes: usize,
    /// Result sizes uploaded, MiB: a smaller one, then the one compared with the raw PUT.
    pub upload_mib: (u64, u64),
    /// Jobs queued for the engine gap figure.
    pub gap_jobs: usize,
    /// Jobs per throughput run, and the fake engine's fixed run time, seconds.
    pub scale_jobs: usize,
    pub run_secs: f64,
    /// Jobs one tenant submits before another tenant's one, for the fairness figure.
    pub fair_flood: usize,
}

const FULL: Scale = Scale {
    clients: 64,
    secs: 10,
    records: 100_000,
    images: 200,
    image_bytes: 2_000_000,
    upload_mib: (256, 1024),
    gap_jobs: 100,
    scale_jobs: 30,
    run_secs: 1.0,
    fair_flood: 60,
};

const SMOKE: Scale = Scale {
    clients: 8,
    secs: 1,
    records: 200,
    images: 10,
    image_bytes: 200_000,
    upload_mib: (4, 16),
    gap_jobs: 10,
    scale_jobs: 3,
    run_secs: 0.2,
    fair_flood: 10,
};

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let scale = if full { FULL } else { SMOKE };
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let services = procs::Services::from_env();
    let mut rows = Vec::new();
    if wanted("accept") {
        api::accept(&scale, &services, &mut rows).await;
    }
    if wanted("records") {
        db::records(&scale, &mut rows).await;
    }
    if wanted("sqlite") {
        db::sqlite_accept(&scale, &mut rows).await;
    }
    if wanted("restart") {
        db::restart(&mut rows).await;
    }
    if wanted("staging") {
        files::staging(&scale, &services, &mut rows).await;
    }
    if wanted("upload") {
        files::upload(&scale, &services, &mut rows).await;
    }
    if wanted("gap") {
        runs::gap(&scale, &mut rows).await;
    }
    if wanted("tracing") {
        tracing::tracing(&scale, &mut rows).await;
    }
    if wanted("scaling") {
        runs::scaling(&scale, &mut rows).await;
    }
    if wanted("fairness") {
        fair::fairness(&scale, &mut rows).await;
    }
    report::print(&rows, full);
}
