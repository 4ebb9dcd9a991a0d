//! Walks the container structure of an image to its real end: JPEG segments and entropy-coded
//! scans to the EOI marker, PNG chunks (each CRC checked) to the one IEND, and TIFF directories
//! with every strip or tile inside the file. Data after the real end (an appended archive or
//! script), a missing end (truncated) and a structure that does not hold are refused.

use super::{ImageError, Kind};
use std::collections::{HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};

/// A streaming walker of JPEG or PNG bytes (TIFF needs random access: see [`check_tiff`]).
#[derive(Debug)]
pub(super) enum Walker {
    /// JPEG.
    Jpeg(Jpeg),
    /// PNG.
    Png(Png),
    /// TIFF: checked from the file at the end.
    Tiff,
}

impl Walker {
    /// A walker for `kind`, before its first byte.
    pub(super) fn new(kind: Kind) -> Walker {
        match kind {
            Kind::Jpeg => Walker::Jpeg(Jpeg::Soi(0)),
            Kind::Png => Walker::Png(Png {
                state: PngState::Signature(0),
                chunks: 0,
                crc: crc32fast::Hasher::new(),
            }),
            Kind::Tiff => Walker::Tiff,
        }
    }

    /// Takes the next bytes.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        match self {
            Walker::Jpeg(j) => j.feed(bytes),
            Walker::Png(p) => p.feed(bytes),
            Walker::Tiff => Ok(()),
        }
    }

    /// Whether the bytes so far end exactly where the format says.
    pub(super) fn ended(&self) -> bool {
        match self {
            Walker::Jpeg(j) => matches!(j, Jpeg::Done),
            Walker::Png(p) => matches!(p.state, PngState::Done),
            Walker::Tiff => true,
        }
    }
}

/// Where a JPEG walk is.
#[derive(Debug)]
pub(super) enum Jpeg {
    /// Bytes of the SOI marker seen.
    Soi(u8),
    /// Expecting the 0xFF of the next marker.
    Marker,
    /// After 0xFF: the marker code (more 0xFF are fill).
    Code,
    /// The segment length's bytes; `then_scan` for SOS, whose header is followed by a scan.
    Length { high: Option<u8>, then_scan: bool },
    /// Inside a segment.
    Skip { left: usize, then_scan: bool },
    /// Entropy-coded data, up to the next marker.
    Scan,
    /// An 0xFF inside a scan.
    ScanFf,
    /// After EOI: only zero padding may follow.
    Done,
}

impl Jpeg {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self {
                Jpeg::Skip { left, then_scan } => {
                    let n = (*left).min(bytes.len() - i);
                    *left -= n;
                    i += n;
                    if *left == 0 {
                        *self = if *then_scan { Jpeg::Scan } else { Jpeg::Marker };
                    }
                    continue;
                }
                Jpeg::Scan => {
                    // Most of a JPEG is scan data: jump to the next 0xFF.
                    match memchr::memchr(0xFF, &bytes[i..]) {
                        Some(at) => {
                            i += at + 1;
                            *self = Jpeg::ScanFf;
                        }
                        None => i = bytes.len(),
                    }
                    continue;
                }
                Jpeg::Soi(seen) => {
                    let want = [0xFF, 0xD8][*seen as usize];
                    if b != want {
                        return Err(ImageError::BadHeader);
                    }
                    *seen += 1;
                    if *seen == 2 {
                        *self = Jpeg::Marker;
                    }
                }
                Jpeg::Marker => {
                    if b != 0xFF {
                        return Err(ImageError::Corrupt);
                    }
                    *self = Jpeg::Code;
                }
                Jpeg::ScanFf => {
                    *self = match b {
                        // Stuffed zero, restart markers and fill bytes belong to the scan.
                        0x00 | 0xD0..=0xD7 => Jpeg::Scan,
                        0xFF => Jpeg::ScanFf,
                        code => Self::after_code(code)?,
                    };
                }
                Jpeg::Code => {
                    *self = match b {
                        0xFF => Jpeg::Code,
                        code => Self::after_code(code)?,
                    };
                }
                Jpeg::Length { high, then_scan } => match high {
                    None => *high = Some(b),
                    Some(h) => {
                        let length = u16::from_be_bytes([*h, b]) as usize;
                        if length < 2 {
                            return Err(ImageError::Corrupt);
                        }
                        *self = match length - 2 {
                            0 if *then_scan => Jpeg::Scan,
                            0 => Jpeg::Marker,
                            left => Jpeg::Skip {
                                left,
                                then_scan: *then_scan,
                            },
                        };
                    }
                },
                Jpeg::Done => {
                    if b != 0 {
                        return Err(ImageError::BadEnd);
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// The state after a marker code outside entropy-coded data.
    fn after_code(code: u8) -> Result<Jpeg, ImageError> {
        Ok(match code {
            0xD9 => Jpeg::Done,
            // TEM and stray restart markers carry no length.
            0x01 | 0xD0..=0xD7 => Jpeg::Marker,
            0x00 | 0xD8 => return Err(ImageError::Corrupt),
            0xDA => Jpeg::Length {
                high: None,
                then_scan: true,
            },
            _ => Jpeg::Length {
                high: None,
                then_scan: false,
            },
        })
    }
}

const PNG_SIGNATURE: [u8; 8] = *b"\x89PNG\r\n\x1a\n";

/// Where a PNG walk is.
#[derive(Debug)]
pub(super) struct Png {
    state: PngState,
    chunks: u64,
    crc: crc32fast::Hasher,
}

#[derive(Debug)]
enum PngState {
    Signature(usize),
    /// Length and type of the next chunk.
    Header([u8; 8], usize),
    Data {
        left: usize,
        iend: bool,
    },
    Crc([u8; 4], usize, bool),
    /// After IEND's CRC: nothing may follow.
    Done,
}

impl Png {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match &mut self.state {
                PngState::Data { left, iend } => {
                    let n = (*left).min(bytes.len() - i);
                    self.crc.update(&bytes[i..i + n]);
                    *left -= n;
                    i += n;
                    if *left == 0 {
                        self.state = PngState::Crc([0; 4], 0, *iend);
                    }
                    continue;
                }
                PngState::Signature(seen) => {
                    if b != PNG_SIGNATURE[*seen] {
                        return Err(ImageError::BadHeader);
                    }
                    *seen += 1;
                    if *seen == PNG_SIGNATURE.len() {
                        self.state = PngState::Header([0; 8], 0);
                    }
                }
                PngState::Header(buf, got) => {
                    buf[*got] = b;
                    *got += 1;
                    if *got == 8 {
                        let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        let kind = [buf[4], buf[5], buf[6], buf[7]];
                        let first = self.chunks == 0;
                        self.chunks += 1;
                        let iend = &kind == b"IEND";
                        if length > i32::MAX as u32
                            || !kind.iter().all(u8::is_ascii_alphabetic)
                            || first != (&kind == b"IHDR")
                            || (iend && length != 0)
                        {
                            return Err(ImageError::Corrupt);
                        }
                        self.crc = crc32fast::Hasher::new();
                        self.crc.update(&kind);
                        self.state = match length {
                            0 => PngState::Crc([0; 4], 0, iend),
                            left => PngState::Data {
                                left: left as usize,
                                iend,
                            },
                        };
                    }
                }
                PngState::Crc(buf, got, iend) => {
                    buf[*got] = b;
                    *got += 1;
                    if *got == 4 {
                        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new());
                        if crc.finalize() != u32::from_be_bytes(*buf) {
                            return Err(ImageError::Corrupt);
                        }
                        self.state = match iend {
                            true => PngState::Done,
                            false => PngState::Header([0; 8], 0),
                        };
                    }
                }
                PngState::Done => return Err(ImageError::BadEnd),
            }
            i += 1;
        }
        Ok(())
    }
}

/// Most directories followed in one TIFF (pages, EXIF, GPS and sub-images together).
const MAX_IFDS: usize = 256;
/// Most offsets in one strip or tile table.
const MAX_PIECES: u64 = 1 << 20;

/// Checks a whole TIFF: every directory and every value, strip and tile it points to lie inside
/// the file, at least one image has pixel data, and nothing follows the last of them (but one
/// byte of word-alignment padding).
pub fn check_tiff<R: Read + Seek>(mut file: R) -> Result<(), ImageError> {
    let len = file.seek(SeekFrom::End(0)).map_err(|_| ImageError::BadEnd)?;
    let mut t = Tiff {
        file: &mut file,
        len,
        little: true,
        end: 8,
    };
    let header = t.read(0, 8)?;
    t.little = match &header[..4] {
        b"II*\0" => true,
        b"MM\0*" => false,
        // BigTIFF (43) and anything else.
        _ => return Err(ImageError::BadHeader),
    };
    let first = t.u32(&header[4..8]) as u64;
    let mut queue = VecDeque::from([first]);
    let (mut seen, mut pixels) = (HashSet::new(), false);
    while let Some(offset) = queue.pop_front() {
        if offset == 0 {
            continue;
        }
        if !seen.insert(offset) || seen.len() > MAX_IFDS {
            return Err(ImageError::Corrupt);
        }
        pixels |= t.directory(offset, &mut queue)?;
    }
    if !pixels {
        return Err(ImageError::Corrupt);
    }
    if len > t.end + 1 {
        return Err(ImageError::BadEnd);
    }
    Ok(())
}

struct Tiff<'a, R> {
    file: &'a mut R,
    len: u64,
    little: bool,
    /// The end of the furthest structure seen so far.
    end: u64,
}

impl<R: Read + Seek> Tiff<'_, R> {
    /// Reads `n` bytes at `at`; the region must lie inside the file. It counts towards the end.
    fn read(&mut self, at: u64, n: u64) -> Result<Vec<u8>, ImageError> {
        self.inside(at, n)?;
        let mut buf = vec![0; n as usize];
        self.file.seek(SeekFrom::Start(at)).map_err(|_| ImageError::BadEnd)?;
        self.file.read_exact(&mut buf).map_err(|_| ImageError::BadEnd)?;
        Ok(buf)
    }

    /// A region that must lie inside the file (truncated otherwise).
    fn inside(&mut self, at: u64, n: u64) -> Result<(), ImageError> {
        let end = at.checked_add(n).ok_or(ImageError::Corrupt)?;
        if end > self.len {
            return Err(ImageError::BadEnd);
        }
        self.end = self.end.max(end);
        Ok(())
    }

    fn u16(&self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    }

    /// Walks one directory: queues the next one and those it points to (EXIF, GPS, sub-images);
    /// true when it holds pixel data.
    fn directory(&mut self, offset: u64, queue: &mut VecDeque<u64>) -> Result<bool, ImageError> {
        let raw = self.read(offset, 2)?;
        let count = self.u16(&raw) as u64;
        let entries = self.read(offset + 2, count * 12 + 4)?;
        queue.push_back(self.u32(&entries[count as usize * 12..]) as u64);
        let (mut offsets, mut counts) = (Vec::new(), Vec::new());
        for entry in entries[..count as usize * 12].chunks_exact(12) {
            let (tag, kind, n) = (
                self.u16(&entry[0..2]),
                self.u16(&entry[2..4]),
                self.u32(&entry[4..8]) as u64,
            );
            // Unknown types are skipped, as the specification asks readers to.
            let Some(width) = type_width(kind) else { continue };
            let size = width.checked_mul(n).ok_or(ImageError::Corrupt)?;
            let values = if size <= 4 {
                entry[8..8 + size as usize].to_vec()
            } else if matches!(tag, 273 | 279 | 324 | 325 | 330) {
                if n > MAX_PIECES {
                    return Err(ImageError::Corrupt);
                }
                self.read(self.u32(&entry[8..12]) as u64, size)?
            } else {
                self.inside(self.u32(&entry[8..12]) as u64, size)?;
                Vec::new()
            };
            let numbers = || -> Vec<u64> {
                match kind {
                    3 => values.chunks_exact(2).map(|v| self.u16(v) as u64).collect(),
                    4 | 13 => values.chunks_exact(4).map(|v| self.u32(v) as u64).collect(),
                    _ => Vec::new(),
                }
            };
            match tag {
                273 | 324 => offsets = numbers(),
                279 | 325 => counts = numbers(),
                // Sub-images, EXIF and GPS directories.
                330 | 34665 | 34853 => queue.extend(numbers()),
                _ => {}
            }
        }
        if offsets.len() != counts.len() {
            return Err(ImageError::Corrupt);
        }
        for (at, n) in offsets.iter().zip(&counts) {
            self.inside(*at, *n)?;
        }
        Ok(counts.iter().any(|n| *n > 0))
    }
}

/// Bytes per value of a TIFF field type; `None` for types this reader does not know.
fn type_width(kind: u16) -> Option<u64> {
    match kind {
        1 | 2 | 6 | 7 => Some(1),
        3 | 8 => Some(2),
        4 | 9 | 11 | 13 => Some(4),
        5 | 10 | 12 => Some(8),
        _ => None,
    }
}
