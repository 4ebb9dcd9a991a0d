//! Image checks on untrusted bytes: the type comes from the content (magic bytes), never the name.

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

/// The type of an image from its first bytes; `None` for anything else.
pub fn sniff(header: &[u8]) -> Option<Kind> {
    match imagesize::image_type(header).ok()? {
        imagesize::ImageType::Jpeg => Some(Kind::Jpeg),
        imagesize::ImageType::Png => Some(Kind::Png),
        imagesize::ImageType::Tiff => Some(Kind::Tiff),
        _ => None,
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
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_content() {
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1]),
            Some(Kind::Jpeg)
        );
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(Kind::Png));
        assert_eq!(sniff(b"II*\0\x08\0\0\0\0\0\0\0\0\0\0\0"), Some(Kind::Tiff));
        assert_eq!(sniff(b"MM\0*\0\0\0\x08\0\0\0\0\0\0\0\0"), Some(Kind::Tiff));
        for bad in [
            &b"<html><body>hi</body></html>"[..],
            b"%PDF-1.7\n",
            b"<svg xmlns=",
            b"GIF89a\x01\0\x01\0\0\0\0\0",
            b"",
        ] {
            assert_eq!(sniff(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_are_safe_and_typed_by_content() {
        assert_eq!(file_name(3, "../../etc/passwd.jpg", Kind::Png), "0003_passwd.png");
        assert_eq!(file_name(0, "photo 1 (copy).JPG", Kind::Jpeg), "0000_photo1copy.jpg");
        assert_eq!(file_name(12, "", Kind::Tiff), "0012_image.tif");
        assert_eq!(file_name(1, "C:\\x\\a.b.c.tiff", Kind::Tiff), "0001_abc.tif");
    }
}
