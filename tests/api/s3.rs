//! The S3 backend against a real S3 server (Garage).

use crate::procs::*;
use meshroom_svc::storage::Storage;

fn storage(services: &Services) -> Storage {
    Storage::s3(
        &services.storage_config(&format!("{}/", namespace())),
        &services.secrets(),
    )
    .unwrap()
}

#[tokio::test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (Garage): scripts/test")]
async fn objects_round_trip_list_and_delete() {
    let s = storage(&Services::from_env());
    s.put_bytes("jobs/a/job.json", b"{}").await.unwrap();
    s.put_bytes("jobs/b/job.json", b"[]").await.unwrap();
    s.put_bytes("jobs/b/results/x.obj", b"v 0 0 0").await.unwrap();
    assert_eq!(s.get_bytes("jobs/a/job.json").await.unwrap().unwrap(), b"{}");
    assert!(s.get_bytes("jobs/c/job.json").await.unwrap().is_none());
    assert!(s.exists("jobs/b/results/x.obj").await.unwrap());
    assert!(!s.exists("jobs/b/nothing").await.unwrap());
    let mut children = s.list_children("jobs/").await.unwrap();
    children.sort();
    assert_eq!(children, vec!["a", "b"]);
    for name in ["c", "a", "d", "b"] {
        s.put_bytes(&format!("index/{name}"), b"").await.unwrap();
    }
    assert_eq!(s.list_after("index/", None, 2).await.unwrap(), vec!["a", "b"]);
    assert_eq!(s.list_after("index/", Some("b"), 5).await.unwrap(), vec!["c", "d"]);
    s.delete_prefix("jobs/b/").await.unwrap();
    assert_eq!(s.list_children("jobs/").await.unwrap(), vec!["a"]);
    s.delete("jobs/a/job.json").await.unwrap();
    s.delete("jobs/a/job.json").await.unwrap();
    assert!(s.list_children("jobs/").await.unwrap().is_empty());
    s.check().await.unwrap();
}

#[tokio::test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (Garage): scripts/test")]
async fn large_files_stream_both_ways_and_presigned_links_work() {
    let s = storage(&Services::from_env());
    let dir = tempfile::tempdir().unwrap();
    // 20 MiB + 1 byte: three multipart parts, the last one short.
    let data: Vec<u8> = (0..20 * 1024 * 1024 + 1).map(|i| (i % 251) as u8).collect();
    let src = dir.path().join("mesh.ply");
    std::fs::write(&src, &data).unwrap();
    assert_eq!(
        s.store_file("jobs/x/results/mesh.ply", &src).await.unwrap(),
        data.len() as u64
    );
    assert!(!src.exists(), "the source is moved into storage");
    let dest = dir.path().join("back.ply");
    assert_eq!(
        s.fetch_to_file("jobs/x/results/mesh.ply", &dest).await.unwrap(),
        data.len() as u64
    );
    assert!(std::fs::read(&dest).unwrap() == data);

    let url = s.presigned_url("jobs/x/results/mesh.ply").await.unwrap().unwrap();
    let resp = reqwest::Client::new()
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[10..20]);
    let tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 403);
}
