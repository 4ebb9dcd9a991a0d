//! Staging folders of uploads in progress (`data_dir/tmp/{job id}`): removed however the request
//! ends, and swept now and then in case something outlived its request.
//!
//! actix drops a handler's future when its client resets the connection, so clean-up written
//! after an `.await` never runs then; a guard's `Drop` always does.

use futures_util::{Stream, StreamExt};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Staging folders of the requests being served by this process: the sweep leaves them alone.
static ACTIVE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// A staging folder, removed with its files when dropped.
#[derive(Debug)]
pub(super) struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Registers `dir` (not created until the first file arrives).
    pub(super) fn new(dir: PathBuf) -> Staging {
        ACTIVE
            .lock()
            .expect("staging lock")
            .get_or_insert_with(HashSet::new)
            .insert(dir.clone());
        Staging { dir }
    }

    /// The folder.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.dir);
        if let Some(active) = ACTIVE.lock().expect("staging lock").as_mut() {
            active.remove(&dir);
        }
        // Most requests (JSON submits) never made their folder: one stat, rather than a trip to
        // the blocking pool and back for each of them.
        if !dir.exists() {
            return;
        }
        // Off the async threads when there are any: a folder can hold hundreds of files.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || remove(&dir))),
            Err(_) => remove(&dir),
        }
    }
}

fn remove(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => log::debug!("staging folder {} removed", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("staging folder {} not removed: {e}", dir.display()),
    }
}

/// Removes, every `every`, the folders of `tmp` that no request of this process owns and that
/// have not changed for `every`: left by a panic, or by a request the guard could not clean.
pub fn spawn_sweep(tmp: PathBuf, every: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let tmp = tmp.clone();
            let _ = tokio::task::spawn_blocking(move || sweep(&tmp, every)).await;
        }
    });
}

fn sweep(tmp: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let owned = ACTIVE
            .lock()
            .expect("staging lock")
            .as_ref()
            .is_some_and(|a| a.contains(&path));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e >= age));
        if !owned && old {
            log::warn!("removing the abandoned staging folder {}", path.display());
            remove(&path);
        }
    }
}

/// The next item of a request body, or `None` when the client sent nothing for `idle`.
pub(super) async fn next_within<S: Stream + Unpin>(body: &mut S, idle: Duration) -> Result<Option<S::Item>, ()> {
    tokio::time::timeout(idle, body.next()).await.map_err(|_| ())
}

/// Whether a folder is registered as a request's own.
#[cfg(test)]
fn is_active(dir: &Path) -> bool {
    ACTIVE.lock().unwrap().as_ref().is_some_and(|a| a.contains(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_guard_removes_its_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        let staging = Staging::new(dir.clone());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0"), b"x").unwrap();
        assert!(is_active(&dir));
        drop(staging);
        for _ in 0..100 {
            if !dir.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!dir.exists());
        assert!(!is_active(&dir));
    }

    #[test]
    fn the_sweep_spares_active_and_recent_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let (active, orphan) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&orphan).unwrap();
        let guard = Staging::new(active.clone());
        std::fs::create_dir_all(&active).unwrap();
        sweep(tmp.path(), Duration::from_secs(3600));
        assert!(orphan.exists(), "recent folders stay");
        sweep(tmp.path(), Duration::ZERO);
        assert!(!orphan.exists(), "old unowned folders go");
        assert!(active.exists(), "a request's own folder stays");
        drop(guard);
    }
}
