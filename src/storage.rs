//! Where job state, inputs, results and engine logs are kept, by key (`jobs/{id}/...`).
//! Local filesystem now; S3 is the other arm of the enum.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key would leave the storage root or is malformed.
    #[error("invalid storage key '{0}'")]
    InvalidKey(String),
    /// A filesystem error on a key.
    #[error("storage I/O on '{key}': {source}")]
    Io {
        /// The key being read or written.
        key: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The configured backend.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Files under a local folder.
    Local(LocalStorage),
}

/// Keys map to files below `root`; writes go through a temp file and a rename so readers never see
/// half a file.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl Storage {
    /// Local storage rooted at `root` (created if missing).
    pub fn local(root: impl Into<PathBuf>) -> Result<Storage, StorageError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StorageError::Io {
            key: String::new(),
            source,
        })?;
        Ok(Storage::Local(LocalStorage { root }))
    }

    /// Writes a small object atomically.
    pub async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => {
                let path = s.path(key)?;
                let io = |source| StorageError::Io {
                    key: key.into(),
                    source,
                };
                create_parent(&path).await.map_err(io)?;
                let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7()));
                tokio::fs::write(&tmp, bytes).await.map_err(io)?;
                tokio::fs::rename(&tmp, &path).await.map_err(io)
            }
        }
    }

    /// Reads a small object; `None` when it does not exist.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Storage::Local(s) => match tokio::fs::read(s.path(key)?).await {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(source) => Err(StorageError::Io {
                    key: key.into(),
                    source,
                }),
            },
        }
    }

    /// Moves a local file into storage under `key`; returns its size.
    pub async fn store_file(&self, key: &str, src: &Path) -> Result<u64, StorageError> {
        let io = |source| StorageError::Io {
            key: key.into(),
            source,
        };
        match self {
            Storage::Local(s) => {
                let path = s.path(key)?;
                create_parent(&path).await.map_err(io)?;
                let size = tokio::fs::metadata(src).await.map_err(io)?.len();
                if tokio::fs::rename(src, &path).await.is_err() {
                    // Another filesystem: copy through a temp name, then drop the source.
                    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7()));
                    tokio::fs::copy(src, &tmp).await.map_err(io)?;
                    tokio::fs::rename(&tmp, &path).await.map_err(io)?;
                    tokio::fs::remove_file(src).await.map_err(io)?;
                }
                Ok(size)
            }
        }
    }

    /// Copies an object to a local file (the worker's working folder); returns its size.
    pub async fn fetch_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        let io = |source| StorageError::Io {
            key: key.into(),
            source,
        };
        match self {
            Storage::Local(s) => {
                let src = s.path(key)?;
                let _ = tokio::fs::remove_file(dest).await;
                // A hard link costs nothing; fall back to a copy across filesystems.
                if tokio::fs::hard_link(&src, dest).await.is_err() {
                    tokio::fs::copy(&src, dest).await.map_err(io)?;
                }
                Ok(tokio::fs::metadata(dest).await.map_err(io)?.len())
            }
        }
    }

    /// Names directly below a prefix ending in `/` (like an S3 listing with a `/` delimiter).
    pub async fn list_children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Storage::Local(s) => {
                let dir = s.path(prefix.trim_end_matches('/'))?;
                let mut entries = match tokio::fs::read_dir(&dir).await {
                    Ok(e) => e,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(source) => {
                        return Err(StorageError::Io {
                            key: prefix.into(),
                            source,
                        })
                    }
                };
                let mut names = Vec::new();
                while let Some(e) = entries.next_entry().await.map_err(|source| StorageError::Io {
                    key: prefix.into(),
                    source,
                })? {
                    names.extend(e.file_name().to_str().map(String::from));
                }
                Ok(names)
            }
        }
    }

    /// Deletes every object below a prefix ending in `/`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => match tokio::fs::remove_dir_all(s.path(prefix.trim_end_matches('/'))?).await {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(StorageError::Io {
                    key: prefix.into(),
                    source: e,
                }),
                _ => Ok(()),
            },
        }
    }

    /// The local file behind a key, when the backend is local (served directly with Range support).
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        match self {
            Storage::Local(s) => s.path(key).ok(),
        }
    }

    /// Checks that storage can be written and read back (for `/ready`).
    pub async fn check(&self) -> Result<(), StorageError> {
        let key = "health/probe";
        self.put_bytes(key, b"ok").await?;
        match self.get_bytes(key).await? {
            Some(b) if b == b"ok" => Ok(()),
            _ => Err(StorageError::Io {
                key: key.into(),
                source: ErrorKind::InvalidData.into(),
            }),
        }
    }
}

impl LocalStorage {
    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        let valid = !key.is_empty()
            && key
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'));
        if !valid {
            return Err(StorageError::InvalidKey(key.into()));
        }
        Ok(self.root.join(key))
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
        let mut ids = s.list_children("jobs/").await.unwrap();
        ids.sort();
        assert_eq!(ids, vec!["a", "b"]);
        s.delete_prefix("jobs/a/").await.unwrap();
        assert_eq!(s.list_children("jobs/").await.unwrap(), vec!["b"]);
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
