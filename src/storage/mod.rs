//! Where job records, inputs, results and engine logs are kept, by key (`jobs/{id}/...`): a local
//! folder or an S3-compatible bucket. Small objects are written whole; files stream both ways.

use std::path::{Path, PathBuf};

/// An object's bytes as they arrive.
pub type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

mod local;
mod s3;

pub use local::LocalStorage;
pub use s3::S3Storage;

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
    /// The S3 server refused or could not be reached.
    #[error("S3 request on '{key}': {reason}")]
    S3 {
        /// The key being read or written.
        key: String,
        /// What went wrong (never includes credentials).
        reason: String,
    },
}

/// The configured backend.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Files under a local folder.
    Local(LocalStorage),
    /// An S3 bucket.
    S3(S3Storage),
}

impl Storage {
    /// Writes a small object atomically.
    pub async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => s.put_bytes(key, bytes).await,
            Storage::S3(s) => s.put_bytes(key, bytes).await,
        }
    }

    /// Reads a small object; `None` when it does not exist.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Storage::Local(s) => s.get_bytes(key).await,
            Storage::S3(s) => s.get_bytes(key).await,
        }
    }

    /// True when the object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self {
            Storage::Local(s) => s.exists(key).await,
            Storage::S3(s) => s.exists(key).await,
        }
    }

    /// Moves a local file into storage under `key`, streaming it; returns its size.
    pub async fn store_file(&self, key: &str, src: &Path) -> Result<u64, StorageError> {
        match self {
            Storage::Local(s) => s.store_file(key, src).await,
            Storage::S3(s) => s.store_file(key, src).await,
        }
    }

    /// Makes files stored under `prefix` durable where that is this backend's job: local storage
    /// fsyncs the folders (each file's data is fsync'd as it is stored); S3 has answered each PUT
    /// once it is durable.
    pub async fn sync_folders(&self, prefix: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => s.sync_folders(prefix).await,
            Storage::S3(_) => Ok(()),
        }
    }

    /// Copies a local file into storage under `key`, streaming it, and keeps the source; returns
    /// its size.
    pub async fn put_file(&self, key: &str, src: &Path) -> Result<u64, StorageError> {
        match self {
            Storage::Local(s) => s.put_file(key, src).await,
            Storage::S3(s) => s.upload(key, src).await,
        }
    }

    /// Copies an object to a local file, streaming it; returns its size.
    pub async fn fetch_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        match self {
            Storage::Local(s) => s.fetch_to_file(key, dest).await,
            Storage::S3(s) => s.fetch_to_file(key, dest).await,
        }
    }

    /// Reads an object as a stream (for responses that pass it on without a copy).
    pub async fn reader(&self, key: &str) -> Result<Reader, StorageError> {
        match self {
            Storage::Local(s) => s.reader(key).await,
            Storage::S3(s) => s.reader(key).await,
        }
    }

    /// Names directly below a prefix ending in `/` (an S3 listing with a `/` delimiter).
    pub async fn list_children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Storage::Local(s) => s.list_children(prefix).await,
            Storage::S3(s) => s.list_children(prefix).await,
        }
    }

    /// Up to `max` names below a flat prefix ending in `/`, in ascending order, after `after`.
    pub async fn list_after(&self, prefix: &str, after: Option<&str>, max: usize) -> Result<Vec<String>, StorageError> {
        let tagged = self.list_tagged(prefix, after, max).await?;
        Ok(tagged.into_iter().map(|(name, _)| name).collect())
    }

    /// As `list_after`, with each object's entity tag where the backend gives one (S3): a
    /// different tag means different content.
    pub async fn list_tagged(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Option<String>)>, StorageError> {
        match self {
            Storage::Local(s) => {
                let names = s.list_after(prefix, after, max).await?;
                Ok(names.into_iter().map(|n| (n, None)).collect())
            }
            Storage::S3(s) => s.list_after(prefix, after, max).await,
        }
    }

    /// Deletes one object (no error if it is missing).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => s.delete(key).await,
            Storage::S3(s) => s.delete(key).await,
        }
    }

    /// Deletes every object below a prefix ending in `/`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => s.delete_prefix(prefix).await,
            Storage::S3(s) => s.delete_prefix(prefix).await,
        }
    }

    /// The local file behind a key (local storage): served directly, with Range support.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        match self {
            Storage::Local(s) => s.path(key).ok(),
            Storage::S3(_) => None,
        }
    }

    /// A presigned GET link (S3 storage): downloads go straight to the bucket.
    pub async fn presigned_url(&self, key: &str) -> Result<Option<String>, StorageError> {
        match self {
            Storage::Local(_) => Ok(None),
            Storage::S3(s) => s.presign_get(key).await.map(Some),
        }
    }

    /// Short description for logs and `/`.
    pub fn kind(&self) -> &'static str {
        match self {
            Storage::Local(_) => "local",
            Storage::S3(_) => "s3",
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
                source: std::io::ErrorKind::InvalidData.into(),
            }),
        }
    }
}

/// Maps an I/O error on `key` to a storage error.
pub(crate) fn io(key: &str) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        key: key.into(),
        source,
    }
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segment.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'))
}
