//! Image checks on untrusted bytes, made while they stream in: the type comes from the content
//! (magic bytes), never the name; the dimensions from the header, before anything is decoded; and
//! JPEG and PNG files must end where their format says, so truncated files and polyglots (an
//! image with an archive or a script appended) are refused.

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
}

impl ImageError {
    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::NotAnImage => "unsupported_image_type",
            ImageError::TooManyPixels { .. } => "image_too_many_pixels",
            ImageError::BadHeader | ImageError::BadEnd => "invalid_image",
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

/// Checks an image as its bytes arrive: feed every chunk, then call [`Inspector::finish`].
#[derive(Debug)]
pub struct Inspector {
    max_pixels: u64,
    head: Vec<u8>,
    kind: Option<Kind>,
    sized: bool,
    tail: Vec<u8>,
}

impl Inspector {
    /// A new inspector with a pixel limit.
    pub fn new(max_pixels: u64) -> Inspector {
        Inspector {
            max_pixels,
            head: Vec::new(),
            kind: None,
            sized: false,
            tail: Vec::new(),
        }
    }

    /// The type, once known.
    pub fn kind(&self) -> Option<Kind> {
        self.kind
    }

    /// Takes the next chunk; fails as soon as the bytes cannot be an acceptable image.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        // Keep the last bytes for the end check.
        self.tail.extend_from_slice(&chunk[chunk.len().saturating_sub(16)..]);
        let excess = self.tail.len().saturating_sub(16);
        self.tail.drain(..excess);
        if self.sized {
            return Ok(());
        }
        let room = HEADER_LIMIT.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if self.kind.is_none() && self.head.len() >= SNIFF_LEN {
            self.kind = Some(sniff(&self.head).ok_or(ImageError::NotAnImage)?);
        }
        if self.kind.is_some() {
            if let Ok(size) = imagesize::blob_size(&self.head) {
                self.check_size(size)?;
            } else if self.head.len() >= HEADER_LIMIT {
                return Err(ImageError::BadHeader);
            }
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
        self.head = Vec::new();
        Ok(())
    }

    /// After the last chunk: the type, once the header and the end are checked.
    pub fn finish(self) -> Result<Kind, ImageError> {
        let kind = match self.kind {
            Some(k) => k,
            None => sniff(&self.head).ok_or(ImageError::NotAnImage)?,
        };
        if !self.sized {
            return Err(ImageError::BadHeader);
        }
        let ends_well = match kind {
            // End Of Image; some writers pad with zeros after it.
            Kind::Jpeg => {
                let trimmed = self
                    .tail
                    .iter()
                    .rposition(|b| *b != 0)
                    .map_or(&[][..], |i| &self.tail[..=i]);
                trimmed.ends_with(&[0xFF, 0xD9])
            }
            // The IEND chunk, with its CRC.
            Kind::Png => self
                .tail
                .ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]),
            // TIFF has no end marker; its data is found through offsets.
            Kind::Tiff => true,
        };
        if ends_well {
            Ok(kind)
        } else {
            Err(ImageError::BadEnd)
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
