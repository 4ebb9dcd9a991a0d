use super::*;
use proptest::prelude::*;

use super::photos;

fn photo() -> Vec<u8> {
    photos::jpeg(6)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(&vec![7u8; (width * height) as usize])
        .unwrap();
    out
}

fn inspect(bytes: &[u8], chunk: usize) -> Result<Kind, ImageError> {
    let mut i = Inspector::new(250_000_000);
    for c in bytes.chunks(chunk.max(1)) {
        i.feed(c)?;
    }
    i.finish_stream()
}

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
fn real_images_pass_in_any_chunking() {
    let jpeg = photo();
    for chunk in [1, 7, 4096, jpeg.len()] {
        assert_eq!(inspect(&jpeg, chunk), Ok(Kind::Jpeg), "chunk {chunk}");
    }
    assert_eq!(inspect(&png(8, 8), 3), Ok(Kind::Png));
}

#[test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (the buddha13 photos): scripts/test")]
fn every_real_camera_photo_passes() {
    for path in photos::real_photos() {
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(inspect(&bytes, 65536), Ok(Kind::Jpeg), "{}", path.display());
    }
}

#[test]
fn a_pixel_bomb_is_refused_from_its_header() {
    // A valid PNG header declaring 100000×100000 pixels, and a few bytes of data.
    let mut bomb = png(8, 8);
    bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]);
    let ihdr = png_chunk(b"IHDR", &bomb[16..29]);
    bomb[8..33].copy_from_slice(&ihdr);
    let started = std::time::Instant::now();
    let mut i = Inspector::new(250_000_000);
    let err = i.feed(&bomb[..64]).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::ImageTooManyPixels);
    assert!(started.elapsed() < std::time::Duration::from_millis(100));
}

#[test]
fn truncated_and_polyglot_files_are_refused() {
    let jpeg = photo();
    assert_eq!(inspect(&jpeg[..jpeg.len() - 100], 4096), Err(ImageError::BadEnd));
    let mut zip_after = jpeg.clone();
    zip_after.extend_from_slice(b"PK\x03\x04\x14\0\0\0\x08\0payload.php<?php system($_GET['c']); ?>PK\x05\x06");
    assert_eq!(inspect(&zip_after, 4096), Err(ImageError::BadEnd));
    let mut padded = jpeg.clone();
    padded.extend_from_slice(&[0; 8]);
    assert_eq!(inspect(&padded, 4096), Ok(Kind::Jpeg), "zero padding after EOI is fine");
    let p = png(8, 8);
    assert_eq!(inspect(&p[..p.len() - 4], 5), Err(ImageError::BadEnd));
    // JPEG magic bytes in front of HTML: no readable header.
    let fake = b"\xFF\xD8\xFF\xE0<html><script>alert(1)</script></html>\xFF\xD9";
    assert_eq!(inspect(fake, 8), Err(ImageError::BadHeader));
    for other in [
        &b"<svg xmlns='http://www.w3.org/2000/svg'/>"[..],
        b"%PDF-1.4 1 0 obj<<>>endobj",
        b"GIF89a........",
    ] {
        assert_eq!(inspect(other, 4), Err(ImageError::NotAnImage));
    }
}

/// A little-endian 8-bit grey TIFF of `w`×`h` with one strip, its directory before the pixels.
fn tiff(w: u16, h: u16) -> Vec<u8> {
    let entries: [(u16, u16, u32, u32); 8] = [
        (256, 3, 1, w as u32),
        (257, 3, 1, h as u32),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 8 * 12 + 4),
        (278, 3, 1, h as u32),
        (279, 4, 1, w as u32 * h as u32),
    ];
    let mut out = b"II*\0\x08\0\0\0".to_vec();
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, count, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&[0; 4]);
    out.extend(std::iter::repeat_n(9u8, w as usize * h as usize));
    out
}

fn tiff_check(bytes: &[u8]) -> Result<(), ImageError> {
    check_tiff(std::io::Cursor::new(bytes))
}

/// A PNG chunk with its length and CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

#[test]
fn structures_are_walked_to_their_real_end() {
    let jpeg = photo();
    // An appended script that ends in a copy of the EOI marker.
    let mut tricky = jpeg.clone();
    tricky.extend_from_slice(b"<?php system($_GET['c']); ?>\xFF\xD9");
    assert_eq!(inspect(&tricky, 4096), Err(ImageError::BadEnd));
    // An EOI inside a segment (an EXIF thumbnail) is not the end.
    let mut thumb = b"Exif\0\0".to_vec();
    thumb.extend_from_slice(&jpeg[..300]);
    thumb.extend_from_slice(b"\xFF\xD9");
    let mut with_thumb = jpeg[..2].to_vec();
    with_thumb.extend_from_slice(&[0xFF, 0xE1]);
    with_thumb.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
    with_thumb.extend_from_slice(&thumb);
    with_thumb.extend_from_slice(&jpeg[2..]);
    assert_eq!(inspect(&with_thumb, 333), Ok(Kind::Jpeg));

    let p = png(8, 8);
    // A script, then a copy of the IEND chunk: data after the real end.
    let mut tricky = p.clone();
    tricky.extend_from_slice(&png_chunk(b"tEXt", b"c\0<?php system($_GET['c']); ?>"));
    tricky.extend_from_slice(&p[p.len() - 12..]);
    assert_eq!(inspect(&tricky, 64), Err(ImageError::BadEnd));
    // A chunk whose CRC does not hold.
    let mut bad_crc = p.clone();
    let at = p.len() - 20;
    bad_crc[at] ^= 0x55;
    assert_eq!(inspect(&bad_crc, 64), Err(ImageError::Corrupt));
    assert_eq!(ImageError::Corrupt.code(), Code::InvalidImage);

    let t = tiff(8, 8);
    assert_eq!(tiff_check(&t), Ok(()));
    assert_eq!(
        inspect(&t, 5),
        Ok(Kind::Tiff),
        "the stream part passes; the file part decides"
    );
    let mut appended = t.clone();
    appended.extend_from_slice(b"PK\x03\x04 an archive");
    assert_eq!(tiff_check(&appended), Err(ImageError::BadEnd));
    // Just the header and directory (no pixel data): the strip lies outside the file.
    assert_eq!(tiff_check(&t[..t.len() - 64]), Err(ImageError::BadEnd));
    let mut no_strips = t.clone();
    no_strips[8 + 2 + 5 * 12..8 + 2 + 6 * 12].fill(0); // StripOffsets gone, counts stay
    assert_eq!(tiff_check(&no_strips), Err(ImageError::Corrupt));
    let mut looped = t.clone();
    looped[8 + 2 + 8 * 12..8 + 2 + 8 * 12 + 4].copy_from_slice(&8u32.to_le_bytes());
    assert_eq!(
        tiff_check(&looped),
        Err(ImageError::Corrupt),
        "a directory that points to itself"
    );
}

#[tokio::test]
async fn tiff_is_checked_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (bytes, want) in [
        (tiff(8, 8), Ok(Kind::Tiff)),
        (tiff(8, 8)[..120].to_vec(), Err(ImageError::BadEnd)),
    ] {
        let path = dir.path().join("t.tif");
        std::fs::write(&path, &bytes).unwrap();
        let mut i = Inspector::new(1000);
        i.feed(&bytes).unwrap();
        assert_eq!(i.finish_file(&path).await, want);
    }
}

#[test]
fn names_are_safe_and_typed_by_content() {
    assert_eq!(file_name(3, "../../etc/passwd.jpg", Kind::Png), "0003_passwd.png");
    assert_eq!(file_name(0, "photo 1 (copy).JPG", Kind::Jpeg), "0000_photo1copy.jpg");
    assert_eq!(file_name(12, "", Kind::Tiff), "0012_image.tif");
    assert_eq!(file_name(1, "C:\\x\\a.b.c.tiff", Kind::Tiff), "0001_abc.tif");
}

proptest! {
    /// Untrusted bytes in any chunking never panic the inspector.
    #[test]
    fn any_bytes_in_any_chunks(bytes in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..600) {
        let _ = inspect(&bytes, chunk);
    }

    /// Corrupting a real header anywhere never panics it either.
    #[test]
    fn corrupted_headers(offset in 0usize..2048, value in any::<u8>(), cut in 0usize..4096) {
        let mut jpeg = photo();
        jpeg[offset] = value;
        jpeg.truncate(jpeg.len() - cut);
        let _ = inspect(&jpeg, 1000);
    }

    /// Untrusted TIFF directories never panic the walker.
    #[test]
    fn any_tiff_bytes(offset in 0usize..200, value in any::<u8>(), cut in 0usize..100) {
        let mut t = tiff(8, 8);
        let at = offset % t.len();
        t[at] = value;
        t.truncate(t.len() - cut);
        let _ = tiff_check(&t);
    }

    /// Nor corrupted PNG chunks the streaming walker.
    #[test]
    fn corrupted_pngs(offset in 0usize..60, value in any::<u8>(), chunk in 1usize..64) {
        let mut p = png(8, 8);
        let at = offset % p.len();
        p[at] = value;
        let _ = inspect(&p, chunk);
    }

    /// File names from clients always become safe names.
    #[test]
    fn any_name_is_made_safe(name in ".*") {
        let safe = file_name(1, &name, Kind::Jpeg);
        prop_assert!(safe.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)));
        prop_assert!(!safe.contains(".."));
    }
}
