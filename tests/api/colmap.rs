//! A real reconstruction on CPU: COLMAP on the buddha13 photos, through the HTTP API.

use crate::helpers::*;
use meshroom_svc::error::Code;
use meshroom_svc::jobs::{JobView, Status};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// COLMAP and Debian's Python with Open3D must be installed (scripts/test installs both): fail,
/// never skip, without them.
pub fn engines(c: &mut meshroom_svc::config::Config) {
    assert!(
        Path::new("/usr/bin/colmap").exists(),
        "COLMAP is missing: run scripts/test, which installs it (apt-get install colmap)"
    );
    c.engine.colmap = "/usr/bin/colmap".into();
    // Debian's python3 has python3-open3d; another python3 may come first on PATH.
    c.engine.python = "/usr/bin/python3".into();
}

fn all_photos() -> Vec<(String, Vec<u8>)> {
    crate::photos::real_photos()
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(p).unwrap(),
            )
        })
        .collect()
}

/// A PNG of random pixels: nothing in it matches a photo.
fn noise_png() -> Vec<u8> {
    let (w, h) = (640u32, 480u32);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let pixels: Vec<u8> = (0..w * h * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.write_header().unwrap().write_image_data(&pixels).unwrap();
    out
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (COLMAP and the buddha13 photos): scripts/test"
)]
async fn buddha13_is_reconstructed_on_cpu() {
    let app = spawn_app_with(engines, vec![]).await;
    let photos = all_photos();
    let files: Vec<(&str, Vec<u8>)> = photos.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let resp = app.upload(files, &[("pipeline", "colmap-sparse")]).await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let id = resp.json::<JobView>().await.unwrap().id.to_string();

    // Watch the stages go by.
    let mut stages = BTreeSet::new();
    let job = loop {
        let job = app.view(&id).await;
        if let Some(node) = &job.progress.node {
            stages.insert(node.clone());
        }
        if job.status.is_final() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job.status, Status::Succeeded, "{job:#?}");
    for stage in ["FeatureExtraction", "FeatureMatching"] {
        assert!(stages.contains(stage), "stage {stage} never seen in {stages:?}");
    }
    let summary = job.summary.clone().expect("a COLMAP job has a summary");
    eprintln!("buddha13 with COLMAP: {summary:?}");
    assert_eq!(summary.images, 13);
    assert!(summary.registered_images >= 10, "{summary:?}");
    assert!(summary.points > 400, "{summary:?}");
    assert!(summary.mean_reprojection_error_px < 2.0, "{summary:?}");
    assert!(summary.mesh, "Open3D meshes the points on CPU");

    // The downloaded point cloud holds the points.
    let ply = app.get(&file(&job, "sparse.ply").url).await.bytes().await.unwrap();
    let header = String::from_utf8_lossy(&ply[..ply.len().min(1000)]).into_owned();
    let vertices: u64 = header
        .lines()
        .find_map(|l| l.strip_prefix("element vertex "))
        .expect("a PLY header")
        .trim()
        .parse()
        .unwrap();
    assert!(vertices > 400, "{header}");
    assert_eq!(vertices, summary.points);
    for name in [
        "mesh.ply",
        "sparse/cameras.txt",
        "sparse/images.txt",
        "sparse/points3D.txt",
    ] {
        assert!(file(&job, name).size > 0, "{name}");
    }
    // The cameras, for the console's viewer: one per registered photo, named after it (staged
    // as `NNNN_<name>`).
    let cameras: Vec<serde_json::Value> = app.get(&file(&job, "cameras.json").url).await.json().await.unwrap();
    assert_eq!(cameras.len() as u32, summary.registered_images);
    assert!(
        cameras.iter().all(|c| c["name"].as_str().unwrap().contains("_buddha_")),
        "{:?}",
        &cameras[0]
    );
    assert!(cameras.iter().all(|c| c["center"].as_array().unwrap().len() == 3));
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (COLMAP and the buddha13 photos): scripts/test"
)]
async fn images_that_cannot_be_reconstructed_together_fail_clearly() {
    let app = spawn_app_with(engines, vec![]).await;
    let photos = all_photos();
    let resp = app
        .upload(
            vec![(photos[0].0.as_str(), photos[0].1.clone()), ("noise.png", noise_png())],
            &[("pipeline", "colmap-sparse")],
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<JobView>().await.unwrap().id.to_string();
    let job = app.finished(&id, 180).await;
    assert_eq!(job.status, Status::Failed, "{job:#?}");
    assert_eq!(
        job.error.as_ref().unwrap().code,
        Code::TooFewImagesRegistered,
        "{job:#?}"
    );
    assert!(job.results.is_empty(), "no empty model is published");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (COLMAP and the buddha13 photos): scripts/test"
)]
async fn colmap_runs_are_supervised_like_meshroom() {
    let app = spawn_app_with(engines, vec![]).await;
    let photos = all_photos();
    let files: Vec<(&str, Vec<u8>)> = photos.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let resp = app
        .upload(files, &[("pipeline", "colmap-sparse"), ("timeout_secs", "2")])
        .await;
    let id = resp.json::<JobView>().await.unwrap().id.to_string();
    // COLMAP runs before the limit ends it.
    app.wait_until(&id, 30, |j| !job_processes(&id).is_empty() || j.status.is_final())
        .await;
    let tree = process_tree(&job_processes(&id));
    assert!(!tree.is_empty(), "COLMAP was running");
    let job = app.finished(&id, 60).await;
    assert_eq!(job.error.as_ref().unwrap().code, Code::EngineTimeout, "{job:#?}");
    assert_eq!(still_running(&tree), Vec::<i32>::new());
    // The tail holds what COLMAP printed before it was stopped.
    assert!(
        job.log_tail.as_deref().unwrap().contains("Feature extraction"),
        "{job:#?}"
    );
    assert!(job_processes(&id).is_empty(), "no COLMAP process outlives its job");
}
