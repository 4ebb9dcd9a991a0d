use super::*;
use proptest::prelude::*;

fn photo() -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/buddha13/images");
    std::fs::read(dir.join("buddha_00006.jpg")).expect("the buddha13 photos next to the checkout")
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
    i.finish()
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
fn a_pixel_bomb_is_refused_from_its_header() {
    // A valid PNG header declaring 100000×100000 pixels, and a few bytes of data.
    let mut bomb = png(8, 8);
    bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]);
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
    assert_eq!(err.code(), "image_too_many_pixels");
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

    /// File names from clients always become safe names.
    #[test]
    fn any_name_is_made_safe(name in ".*") {
        let safe = file_name(1, &name, Kind::Jpeg);
        prop_assert!(safe.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)));
        prop_assert!(!safe.contains(".."));
    }
}
