//! One image streamed into a file while it is checked: its content (`Inspector`), its size and the
//! job's running total against the limits. Uploads (`http::multipart`) and downloads
//! (`worker::download`) both take images in through it.

use super::{ImageError, Inspector, Kind};
use crate::config::LimitsConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;

/// Bytes gathered before a write to the file.
const WRITE_BUFFER: usize = 256 << 10;

/// Why an image was not taken in.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The bytes are not an acceptable image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Over `limits.max_image_bytes` (the limit).
    #[error("larger than limits.max_image_bytes ({0})")]
    TooLarge(u64),
    /// The job's images together over `limits.max_total_bytes` (the limit).
    #[error("the job's images exceed limits.max_total_bytes ({0})")]
    TotalTooLarge(u64),
    /// The file could not be written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// An image being written to `path`. Its bytes count in `total` from the first chunk; dropped
/// before `finish` succeeds, it takes them back out (a failed download does not count).
pub struct Intake<'a> {
    file: tokio::io::BufWriter<tokio::fs::File>,
    path: PathBuf,
    inspector: Inspector,
    size: u64,
    limits: &'a LimitsConfig,
    total: &'a AtomicU64,
    done: bool,
}

impl<'a> Intake<'a> {
    /// Starts an image at `path`, counting into the job's `total`.
    pub async fn create(path: &Path, limits: &'a LimitsConfig, total: &'a AtomicU64) -> std::io::Result<Intake<'a>> {
        Ok(Intake {
            // Network chunks are small (a few KiB); each write to a tokio file is a hop to the
            // blocking pool, so they are gathered into writes of `WRITE_BUFFER` bytes.
            file: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::create(path).await?),
            path: path.to_path_buf(),
            inspector: Inspector::new(limits.max_image_pixels),
            size: 0,
            limits,
            total,
            done: false,
        })
    }

    /// Checks and writes the next chunk; refuses as soon as a limit or the content says no.
    pub async fn feed(&mut self, chunk: &[u8]) -> Result<(), IntakeError> {
        let n = chunk.len() as u64;
        self.size += n;
        let sum = self.total.fetch_add(n, Ordering::Relaxed) + n;
        if self.size > self.limits.max_image_bytes {
            return Err(IntakeError::TooLarge(self.limits.max_image_bytes));
        }
        if sum > self.limits.max_total_bytes {
            return Err(IntakeError::TotalTooLarge(self.limits.max_total_bytes));
        }
        self.inspector.feed(chunk)?;
        self.file.write_all(chunk).await?;
        Ok(())
    }

    /// Ends the image: flushed, its structure checked to its end. Returns its type and size.
    pub async fn finish(mut self) -> Result<(Kind, u64), IntakeError> {
        self.file.flush().await?;
        // Taken out (Drop forbids moving a field out of self); the placeholder is never used.
        let inspector = std::mem::replace(&mut self.inspector, Inspector::new(0));
        let kind = inspector.finish_file(&self.path).await?;
        self.done = true;
        Ok((kind, self.size))
    }
}

impl Drop for Intake<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.total.fetch_sub(self.size, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::photos;
    use super::*;

    fn limits(image: u64, total: u64) -> LimitsConfig {
        LimitsConfig {
            max_image_bytes: image,
            max_total_bytes: total,
            ..LimitsConfig::default()
        }
    }

    #[tokio::test]
    async fn a_kept_image_counts_and_an_abandoned_one_gives_its_bytes_back() {
        let dir = tempfile::tempdir().unwrap();
        let jpeg = photos::jpeg(1);
        let (limits, total) = (limits(1 << 20, 1 << 20), AtomicU64::new(0));
        let mut kept = Intake::create(&dir.path().join("a"), &limits, &total).await.unwrap();
        for chunk in jpeg.chunks(1000) {
            kept.feed(chunk).await.unwrap();
        }
        assert_eq!(kept.finish().await.unwrap(), (Kind::Jpeg, jpeg.len() as u64));
        let mut abandoned = Intake::create(&dir.path().join("b"), &limits, &total).await.unwrap();
        abandoned.feed(&jpeg[..5000]).await.unwrap();
        assert_eq!(total.load(Ordering::Relaxed), jpeg.len() as u64 + 5000);
        drop(abandoned); // a download that failed mid-way
        assert_eq!(total.load(Ordering::Relaxed), jpeg.len() as u64);
    }

    #[tokio::test]
    async fn limits_and_content_refuse_as_the_bytes_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let jpeg = photos::jpeg(2);
        let total = AtomicU64::new(0);
        let small = limits(1000, 1 << 20);
        let mut one = Intake::create(&dir.path().join("a"), &small, &total).await.unwrap();
        assert!(matches!(
            one.feed(&jpeg[..1500]).await,
            Err(IntakeError::TooLarge(1000))
        ));
        let tight = limits(1 << 20, jpeg.len() as u64 + 10);
        total.store(jpeg.len() as u64, Ordering::Relaxed); // an image already taken
        let mut two = Intake::create(&dir.path().join("b"), &tight, &total).await.unwrap();
        assert!(matches!(
            two.feed(&jpeg[..100]).await,
            Err(IntakeError::TotalTooLarge(_))
        ));
        let lax = limits(1 << 20, 1 << 30);
        let mut html = Intake::create(&dir.path().join("c"), &lax, &total).await.unwrap();
        assert!(matches!(
            html.feed(b"<html><body>not a photo</body></html>").await,
            Err(IntakeError::Image(ImageError::NotAnImage))
        ));
    }
}
