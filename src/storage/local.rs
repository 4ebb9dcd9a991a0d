//! Local-folder storage: keys map to files below a root; writes go through a temp file and a
//! rename so readers never see half a file.

use super::{io, valid_key, Storage, StorageError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Files below `root`.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl Storage {
    /// Local storage rooted at `root` (created if missing).
    pub fn local(root: impl Into<PathBuf>) -> Result<Storage, StorageError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io(""))?;
        Ok(Storage::Local(LocalStorage { root }))
    }
}

impl LocalStorage {
    pub(super) fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if !valid_key(key) {
            return Err(StorageError::InvalidKey(key.into()));
        }
        Ok(self.root.join(key))
    }

    fn temp_beside(path: &Path) -> PathBuf {
        path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7()))
    }

    pub(super) async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.path(key)?;
        create_parent(&path).await.map_err(io(key))?;
        let tmp = Self::temp_beside(&path);
        tokio::fs::write(&tmp, bytes).await.map_err(io(key))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io(key))
    }

    pub(super) async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(key)(e)),
        }
    }

    pub(super) async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        tokio::fs::try_exists(self.path(key)?).await.map_err(io(key))
    }

    /// Moves `src` in under `key`, its data on disk when this returns; the folder entries are made
    /// durable by `sync_folders`, once for all the files of a job.
    pub(super) async fn store_file(&self, key: &str, src: &Path) -> Result<u64, StorageError> {
        let path = self.path(key)?;
        let src = src.to_path_buf();
        // One trip to the blocking pool for the whole move, not one per system call: a submit
        // of a dozen photos made some sixty of them, each a thread wake-up.
        let moved = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::File::open(&src)?;
            let size = file.metadata()?.len();
            file.sync_all()?;
            drop(file);
            if std::fs::rename(&src, &path).is_err() {
                // Another filesystem: copy through a temp name, then drop the source.
                let tmp = Self::temp_beside(&path);
                std::fs::copy(&src, &tmp)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::remove_file(&src)?;
            }
            Ok(size)
        })
        .await
        .map_err(|e| io(key)(std::io::Error::other(e)))?;
        moved.map_err(io(key))
    }

    /// fsyncs the folder of `prefix` and every folder above it up to the root, so that the
    /// entries of files stored below survive a power loss.
    pub(super) async fn sync_folders(&self, prefix: &str) -> Result<(), StorageError> {
        let folder = self.path(prefix.trim_end_matches('/'))?;
        let root = self.root.clone();
        // In one blocking task: the first fsync commits the file system's journal, with the
        // entries of the folders above in it, so the later ones find little left to do.
        let synced = tokio::task::spawn_blocking(move || {
            for dir in folder.ancestors().take_while(|d| d.starts_with(&root)) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| io(prefix)(std::io::Error::other(e)))?;
        synced.map_err(io(prefix))
    }

    pub(super) async fn put_file(&self, key: &str, src: &Path) -> Result<u64, StorageError> {
        let path = self.path(key)?;
        create_parent(&path).await.map_err(io(key))?;
        let tmp = Self::temp_beside(&path);
        // A hard link costs nothing; fall back to a copy across filesystems.
        if tokio::fs::hard_link(src, &tmp).await.is_err() {
            tokio::fs::copy(src, &tmp).await.map_err(io(key))?;
        }
        tokio::fs::rename(&tmp, &path).await.map_err(io(key))?;
        Ok(tokio::fs::metadata(&path).await.map_err(io(key))?.len())
    }

    pub(super) async fn fetch_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        let src = self.path(key)?;
        let _ = tokio::fs::remove_file(dest).await;
        // A hard link costs nothing; fall back to a copy across filesystems.
        if tokio::fs::hard_link(&src, dest).await.is_err() {
            tokio::fs::copy(&src, dest).await.map_err(io(key))?;
        }
        Ok(tokio::fs::metadata(dest).await.map_err(io(key))?.len())
    }

    pub(super) async fn reader(&self, key: &str) -> Result<super::Reader, StorageError> {
        let file = tokio::fs::File::open(self.path(key)?).await.map_err(io(key))?;
        Ok(Box::new(file))
    }

    pub(super) async fn list_children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(prefix)(e)),
        };
        let mut names = Vec::new();
        while let Some(e) = entries.next_entry().await.map_err(io(prefix))? {
            // Skip temp files of writes in progress.
            names.extend(
                e.file_name()
                    .to_str()
                    .filter(|n| !n.contains(".tmp-"))
                    .map(String::from),
            );
        }
        Ok(names)
    }

    pub(super) async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<String>, StorageError> {
        let mut names = self.list_children(prefix).await?;
        names.sort_unstable();
        let start = after.map_or(0, |a| names.partition_point(|n| n.as_str() <= a));
        Ok(names.into_iter().skip(start).take(max).collect())
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io(key)(e)),
            _ => Ok(()),
        }
    }

    pub(super) async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_dir_all(self.path(prefix.trim_end_matches('/'))?).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io(prefix)(e)),
            _ => Ok(()),
        }
    }
}

async fn create_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => tokio::fs::create_dir_all(dir).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_list_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        s.put_bytes("jobs/a/job.json", b"{}").await.unwrap();
        s.put_bytes("jobs/b/job.json", b"[]").await.unwrap();
        assert_eq!(s.get_bytes("jobs/a/job.json").await.unwrap().unwrap(), b"{}");
        assert!(s.get_bytes("jobs/c/job.json").await.unwrap().is_none());
        assert!(s.exists("jobs/b/job.json").await.unwrap());
        let mut ids = s.list_children("jobs/").await.unwrap();
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
        s.delete_prefix("jobs/a/").await.unwrap();
        assert_eq!(s.list_children("jobs/").await.unwrap(), vec!["b"]);
        s.delete("jobs/b/job.json").await.unwrap();
        s.delete("jobs/b/job.json").await.unwrap();
        assert!(!s.exists("jobs/b/job.json").await.unwrap());
    }

    #[tokio::test]
    async fn stored_files_and_their_folders_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path().join("store")).unwrap();
        let src = dir.path().join("upload");
        std::fs::write(&src, b"photo").unwrap();
        assert_eq!(s.store_file("jobs/x/inputs/a.jpg", &src).await.unwrap(), 5);
        assert!(!src.exists(), "moved, not copied");
        s.sync_folders("jobs/x/inputs").await.unwrap();
        assert!(s.sync_folders("jobs/missing/inputs").await.is_err());
    }

    #[tokio::test]
    async fn pages_in_ascending_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        for name in ["c", "a", "d", "b"] {
            s.put_bytes(&format!("index/{name}"), b"").await.unwrap();
        }
        assert_eq!(s.list_after("index/", None, 2).await.unwrap(), vec!["a", "b"]);
        assert_eq!(s.list_after("index/", Some("b"), 5).await.unwrap(), vec!["c", "d"]);
        assert!(s.list_after("nothing/", None, 5).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path()).unwrap();
        for key in ["../x", "jobs/../../x", "/etc/passwd", "a//b", "a\\..\\b", ""] {
            assert!(
                matches!(s.put_bytes(key, b"x").await, Err(StorageError::InvalidKey(_))),
                "{key}"
            );
        }
    }

    #[tokio::test]
    async fn store_moves_and_fetch_copies() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::local(dir.path().join("store")).unwrap();
        let src = dir.path().join("upload.bin");
        std::fs::write(&src, b"12345").unwrap();
        assert_eq!(s.store_file("jobs/a/inputs/x.jpg", &src).await.unwrap(), 5);
        assert!(!src.exists());
        let dest = dir.path().join("copy.jpg");
        assert_eq!(s.fetch_to_file("jobs/a/inputs/x.jpg", &dest).await.unwrap(), 5);
        assert_eq!(std::fs::read(dest).unwrap(), b"12345");
    }
}
