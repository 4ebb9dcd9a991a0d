//! Image checks on untrusted bytes, made while they stream in: the type comes from the content
//! (magic bytes), never the name; the dimensions from the header, before anything is decoded; and
//! the container structure is walked to its real end (`structure`), so truncated files, broken
//! structures and polyglots (an image with an archive or a script appended) are refused.

use crate::error::Code;
use std::path::Path;

mod intake;
// The test photos (made on the spot; shared with the integration tests).
#[cfg(test)]
#[path = "../tests/fixtures/photos.rs"]
mod photos;
mod structure;
pub use intake::{Intake, IntakeError};
pub use structure::check_tiff;

/// Accepted image types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// TIFF.
    Tiff,
}

/// Bytes needed to recognise a type.
pub const SNIFF_LEN: usize = 16;

/// The header must give the dimensions within this many bytes (JPEG metadata may come first).
const HEADER_LIMIT: usize = 1 << 20;

/// Why bytes are not an acceptable image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not JPEG, PNG or TIFF.
    #[error("not a JPEG, PNG or TIFF file")]
    NotAnImage,
    /// The header is unreadable or incomplete.
    #[error("the image header cannot be read")]
    BadHeader,
    /// More pixels than allowed.
    #[error("{width}×{height} pixels is over limits.max_image_pixels ({max})")]
    TooManyPixels {
        /// Declared width.
        width: usize,
        /// Declared height.
        height: usize,
        /// The limit.
        max: u64,
    },
    /// The file does not end where its format says (truncated, or something appended).
    #[error("the file is truncated or has data after the image")]
    BadEnd,
    /// The container structure does not hold (a bad checksum, length, marker or offset).
    #[error("the image's structure is broken")]
    Corrupt,
}

impl ImageError {
    /// The API error code.
    pub fn code(&self) -> Code {
        match self {
            ImageError::NotAnImage => Code::UnsupportedImageType,
            ImageError::TooManyPixels { .. } => Code::ImageTooManyPixels,
            ImageError::BadHeader | ImageError::BadEnd | ImageError::Corrupt => Code::InvalidImage,
        }
    }
}

/// The type of an image from its first bytes; `None` for anything else.
pub fn sniff(header: &[u8]) -> Option<Kind> {
    match imagesize::image_type(header).ok()? {
        imagesize::ImageType::Jpeg => Some(Kind::Jpeg),
        imagesize::ImageType::Png => Some(Kind::Png),
        imagesize::ImageType::Tiff => Some(Kind::Tiff),
        _ => None,
    }
}

/// Checks an image as its bytes arrive: feed every chunk, then call [`Inspector::finish_file`].
#[derive(Debug)]
pub struct Inspector {
    max_pixels: u64,
    head: Vec<u8>,
    kind: Option<Kind>,
    sized: bool,
    walker: Option<structure::Walker>,
}

impl Inspector {
    /// A new inspector with a pixel limit.
    pub fn new(max_pixels: u64) -> Inspector {
        Inspector {
            max_pixels,
            head: Vec::new(),
            kind: None,
            sized: false,
            walker: None,
        }
    }

    /// The type, once known.
    pub fn kind(&self) -> Option<Kind> {
        self.kind
    }

    /// Takes the next chunk; fails as soon as the bytes cannot be an acceptable image.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        // The size is checked before the structure, so that a pixel bomb is named as one.
        let walking = self.walker.is_some();
        if !self.sized {
            self.read_header(chunk)?;
        }
        match &mut self.walker {
            Some(walker) if walking => walker.feed(chunk),
            _ => Ok(()),
        }
    }

    fn read_header(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        let room = HEADER_LIMIT.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let newly_known = self.kind.is_none() && self.head.len() >= SNIFF_LEN;
        if newly_known {
            self.kind = Some(sniff(&self.head).ok_or(ImageError::NotAnImage)?);
        }
        if self.kind.is_some() {
            if let Ok(size) = imagesize::blob_size(&self.head) {
                self.check_size(size)?;
            } else if self.head.len() >= HEADER_LIMIT {
                return Err(ImageError::BadHeader);
            }
        }
        if let (true, Some(kind)) = (newly_known, self.kind) {
            // The type is known within the first bytes, long before the head is full: the
            // walker starts from the first byte.
            let mut walker = structure::Walker::new(kind);
            walker.feed(&self.head)?;
            walker.feed(&chunk[chunk.len().min(room)..])?;
            self.walker = Some(walker);
        }
        if self.sized {
            self.head = Vec::new();
        }
        Ok(())
    }

    fn check_size(&mut self, size: imagesize::ImageSize) -> Result<(), ImageError> {
        let pixels = size.width as u64 * size.height as u64;
        if size.width == 0 || size.height == 0 {
            return Err(ImageError::BadHeader);
        }
        if pixels > self.max_pixels {
            return Err(ImageError::TooManyPixels {
                width: size.width,
                height: size.height,
                max: self.max_pixels,
            });
        }
        self.sized = true;
        Ok(())
    }

    /// After the last chunk, with the bytes written to `file`: the type, once the header and the
    /// structure are checked (TIFF's from the file, as its directories may be anywhere in it).
    pub async fn finish_file(self, file: &Path) -> Result<Kind, ImageError> {
        let kind = self.finish_stream()?;
        if kind == Kind::Tiff {
            let file = file.to_path_buf();
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(file).map_err(|_| ImageError::BadEnd)?;
                check_tiff(std::io::BufReader::new(f))
            })
            .await
            .map_err(|_| ImageError::BadEnd)??;
        }
        Ok(kind)
    }

    /// The checks that need no file: header read, JPEG and PNG structure ended.
    fn finish_stream(self) -> Result<Kind, ImageError> {
        let kind = match self.kind {
            Some(k) => k,
            None => sniff(&self.head).ok_or(ImageError::NotAnImage)?,
        };
        if !self.sized {
            return Err(ImageError::BadHeader);
        }
        match self.walker {
            Some(w) if w.ended() => Ok(kind),
            _ => Err(ImageError::BadEnd),
        }
    }
}

impl Kind {
    /// File extension the engines recognise.
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Jpeg => "jpg",
            Kind::Png => "png",
            Kind::Tiff => "tif",
        }
    }
}

/// A safe file name for the `index`-th image: a zero-padded index (keeps names unique and in
/// submit order), the original stem reduced to `[A-Za-z0-9_-]`, and the extension of its real type.
pub fn file_name(index: usize, original: &str, kind: Kind) -> String {
    let base = original.rsplit(['/', '\\']).next().unwrap_or("");
    let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
    let clean: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    let stem = if clean.is_empty() { "image".to_string() } else { clean };
    format!("{index:04}_{stem}.{}", kind.extension())
}

#[cfg(test)]
mod tests;
