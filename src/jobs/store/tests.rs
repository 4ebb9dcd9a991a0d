//! Store tests on local storage.

use super::*;

fn store(dir: &std::path::Path) -> Store {
    Store::new(Storage::local(dir).unwrap())
}

async fn ids(page: (Vec<Job>, Option<Uuid>)) -> (Vec<Uuid>, Option<Uuid>) {
    (page.0.iter().map(|j| j.id).collect(), page.1)
}

#[test]
fn index_names_sort_newest_first() {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(a < b && index_name(b) < index_name(a));
    assert_eq!(index_id(&index_name(a)), Some(a));
}

#[tokio::test]
async fn lists_newest_first_with_cursors_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(s.insert(Job::new("draft".into(), 60)).await.unwrap().id);
    }
    s.update(all[1], |j| j.finish(Status::Failed, None)).await.unwrap();
    let s = store(dir.path());
    assert_eq!(
        ids(s.list(None, 2, None).await.unwrap()).await,
        (vec![all[4], all[3]], Some(all[3]))
    );
    assert_eq!(
        ids(s.list(None, 2, Some(all[3])).await.unwrap()).await,
        (vec![all[2], all[1]], Some(all[1]))
    );
    assert_eq!(
        ids(s.list(None, 2, Some(all[1])).await.unwrap()).await,
        (vec![all[0]], None)
    );
    assert_eq!(
        ids(s.list(Some(Status::Failed), 10, None).await.unwrap()).await,
        (vec![all[1]], None)
    );
    assert_eq!(
        s.all_ids().await.unwrap(),
        all.iter().rev().copied().collect::<Vec<_>>()
    );
    s.remove(all[2]).await.unwrap();
    assert_eq!(s.all_ids().await.unwrap().len(), 4);
    assert!(s.get(all[2]).await.unwrap().is_none());
}

#[tokio::test]
async fn idempotency_key_returns_the_first_job() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut a = Job::new("draft".into(), 60);
    a.idempotency_key = Some("k".into());
    let mut b = Job::new("draft".into(), 60);
    b.idempotency_key = Some("k".into());
    let first = s.insert(a).await.unwrap();
    assert_eq!(s.insert(b).await.unwrap().id, first.id);
    assert_eq!(
        store(dir.path()).find_idempotent("k").await.unwrap().unwrap().id,
        first.id
    );
    s.remove(first.id).await.unwrap();
    assert!(s.find_idempotent("k").await.unwrap().is_none());
}

#[tokio::test]
async fn cancel_markers() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let id = s.insert(Job::new("draft".into(), 60)).await.unwrap().id;
    assert!(!s.cancel_requested(id).await.unwrap());
    s.request_cancel(id).await.unwrap();
    assert!(s.cancel_requested(id).await.unwrap());
    s.clear_cancel(id).await.unwrap();
    assert!(!s.cancel_requested(id).await.unwrap());
}
