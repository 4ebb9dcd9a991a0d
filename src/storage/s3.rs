//! S3-compatible storage (AWS, MinIO, Garage) with rust-s3. Large files stream as multipart
//! uploads with a bounded number of 8 MiB parts in flight, and downloads stream to disk, so a
//! multi-gigabyte mesh never sits in memory.

use super::{io, valid_key, Storage, StorageError};
use crate::config::{Secrets, StorageConfig};
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};
use secrecy::ExposeSecret;
use std::path::Path;
use std::time::Duration;

/// Multipart parts uploaded at once per file: memory stays near this many × 8 MiB.
const PARTS_IN_FLIGHT: usize = 2;

/// A bucket and a key prefix.
#[derive(Debug, Clone)]
pub struct S3Storage {
    bucket: Box<Bucket>,
    prefix: String,
    presign_expiry_secs: u32,
}

impl Storage {
    /// S3 storage from `[storage]` and the AWS keys.
    pub fn s3(config: &StorageConfig, secrets: &Secrets) -> Result<Storage, StorageError> {
        let err = |e: &dyn std::fmt::Display| StorageError::S3 {
            key: String::new(),
            reason: e.to_string(),
        };
        let region = if config.endpoint.is_empty() {
            config.region.parse::<Region>().map_err(|e| err(&e))?
        } else {
            Region::Custom {
                region: config.region.clone(),
                endpoint: config.endpoint.clone(),
            }
        };
        let credentials = Credentials::new(
            secrets.aws_access_key_id.as_deref(),
            secrets.aws_secret_access_key.as_ref().map(ExposeSecret::expose_secret),
            None,
            None,
            None,
        )
        .map_err(|e| err(&e))?;
        let mut bucket = Bucket::new(&config.bucket, region, credentials).map_err(|e| err(&e))?;
        if config.path_style {
            bucket.set_path_style();
        }
        bucket.set_request_timeout(Some(Duration::from_secs(60)));
        Ok(Storage::S3(S3Storage {
            bucket,
            prefix: config.prefix.clone(),
            presign_expiry_secs: config.presign_expiry_secs as u32,
        }))
    }
}

/// 404 from the server.
fn not_found(e: &S3Error) -> bool {
    matches!(e, S3Error::HttpFailWithBody(404, _))
}

impl S3Storage {
    fn path(&self, key: &str) -> Result<String, StorageError> {
        if !valid_key(key.trim_end_matches('/')) {
            return Err(StorageError::InvalidKey(key.into()));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn fail(key: &str, e: impl std::fmt::Display) -> StorageError {
        StorageError::S3 {
            key: key.into(),
            reason: e.to_string(),
        }
    }

    pub(super) async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.bucket
            .put_object(self.path(key)?, bytes)
            .await
            .map_err(|e| Self::fail(key, e))?;
        Ok(())
    }

    pub(super) async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self.bucket.get_object(self.path(key)?).await {
            Ok(r) => Ok(Some(r.to_vec())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Self::fail(key, e)),
        }
    }

    pub(super) async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.bucket.head_object(self.path(key)?).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(Self::fail(key, e)),
        }
    }

    pub(super) async fn store_file(&self, key: &str, src: &Path) -> Result<u64, StorageError> {
        let size = self.upload(key, src).await?;
        tokio::fs::remove_file(src).await.map_err(io(key))?;
        Ok(size)
    }

    pub(super) async fn upload(&self, key: &str, src: &Path) -> Result<u64, StorageError> {
        let mut file = tokio::fs::File::open(src).await.map_err(io(key))?;
        let size = file.metadata().await.map_err(io(key))?.len();
        self.bucket
            .put_object_stream_builder(self.path(key)?)
            .with_max_concurrent_chunks(PARTS_IN_FLIGHT)
            .execute_stream(&mut file)
            .await
            .map_err(|e| Self::fail(key, e))?;
        Ok(size)
    }

    pub(super) async fn fetch_to_file(&self, key: &str, dest: &Path) -> Result<u64, StorageError> {
        let mut file = tokio::fs::File::create(dest).await.map_err(io(key))?;
        self.bucket
            .get_object_to_writer(self.path(key)?, &mut file)
            .await
            .map_err(|e| Self::fail(key, e))?;
        use tokio::io::AsyncWriteExt;
        file.flush().await.map_err(io(key))?;
        Ok(file.metadata().await.map_err(io(key))?.len())
    }

    pub(super) async fn reader(&self, key: &str) -> Result<super::Reader, StorageError> {
        use futures_util::TryStreamExt;
        let stream = self
            .bucket
            .get_object_stream(self.path(key)?)
            .await
            .map_err(|e| Self::fail(key, e))?;
        let bytes = stream.bytes.map_err(std::io::Error::other);
        Ok(Box::new(tokio_util::io::StreamReader::new(bytes)))
    }

    pub(super) async fn list_children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let full = self.path(prefix)?;
        let pages = self
            .bucket
            .list(full.clone(), Some("/".into()))
            .await
            .map_err(|e| Self::fail(prefix, e))?;
        let mut names = Vec::new();
        for page in pages {
            for p in page.common_prefixes.unwrap_or_default() {
                names.push(p.prefix.trim_start_matches(&full).trim_end_matches('/').to_string());
            }
            names.extend(
                page.contents
                    .into_iter()
                    .map(|o| o.key.trim_start_matches(&full).to_string()),
            );
        }
        Ok(names)
    }

    pub(super) async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Option<String>)>, StorageError> {
        let full = self.path(prefix)?;
        let (page, _) = self
            .bucket
            .list_page(
                full.clone(),
                Some("/".into()),
                None,
                after.map(|a| format!("{full}{a}")),
                Some(max),
            )
            .await
            .map_err(|e| Self::fail(prefix, e))?;
        Ok(page
            .contents
            .into_iter()
            .map(|o| (o.key.trim_start_matches(&full).to_string(), o.e_tag))
            .collect())
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.bucket.delete_object(self.path(key)?).await {
            Err(e) if !not_found(&e) => Err(Self::fail(key, e)),
            _ => Ok(()),
        }
    }

    pub(super) async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let full = self.path(prefix)?;
        let pages = self.bucket.list(full, None).await.map_err(|e| Self::fail(prefix, e))?;
        for object in pages.into_iter().flat_map(|p| p.contents) {
            match self.bucket.delete_object(&object.key).await {
                Err(e) if !not_found(&e) => return Err(Self::fail(&object.key, e)),
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) async fn presign_get(&self, key: &str) -> Result<String, StorageError> {
        self.bucket
            .presign_get(self.path(key)?, self.presign_expiry_secs, None)
            .await
            .map_err(|e| Self::fail(key, e))
    }
}
