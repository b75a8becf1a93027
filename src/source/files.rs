//! Still images and folders of images, decoded with the `image` crate.

use std::fs::Metadata;
use std::io::{self, Cursor, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use super::{FrameSource, SourceError};
use crate::frame::{Frame, PixelFormat};

/// Largest accepted image side. Larger images are refused before any pixel
/// buffer is allocated: a 20000×20000 RGB image would need 1.2 GB.
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// Largest still image file read: 64 MiB. The file is read whole before
/// decoding, so this bounds that buffer. A photo at the largest accepted
/// size ([`MAX_IMAGE_SIDE`] squared) is about 30 MB as a high-quality
/// JPEG and rarely over 64 MB as PNG; anything bigger is not a picture ferd
/// could use, or not a picture (a disk image, a log), and re-encoding it is
/// the user's job, not a reason to hold hundreds of MB on a Pi.
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Largest decoded pixel buffer the image decoder may allocate: an
/// 8192×8192 RGB image is 192 MiB, and 16-bit PNGs need twice that while
/// they are converted.
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// File extensions picked up from a directory.
const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "pgm"];

/// A list of still images, each one frame, one second apart on the frame
/// clock (so rule timings on a folder are meaningful and deterministic).
pub struct ImageSource {
    paths: Vec<PathBuf>,
    next: usize,
    description: String,
}

impl ImageSource {
    /// The given files, in the given order.
    pub fn from_paths(paths: Vec<PathBuf>) -> ImageSource {
        let description = match paths.as_slice() {
            [one] => format!("image {}", one.display()),
            many => format!("{} images", many.len()),
        };
        ImageSource {
            paths,
            next: 0,
            description,
        }
    }

    /// Every image file directly inside `dir`, sorted by name.
    ///
    /// Entries are chosen by extension alone: one that is not a regular
    /// file (a FIFO or device named `x.png`, a dangling link) stays in the
    /// list and becomes an error for that item, naming it, when its turn
    /// comes ([`decode_image`] refuses it without opening it), so the rest
    /// of the folder is still processed and nothing blocks. Subdirectories
    /// are skipped: folders are not searched recursively.
    pub fn from_dir(dir: &Path) -> Result<ImageSource, SourceError> {
        let io = |source| SourceError::Io {
            path: dir.to_path_buf(),
            error: source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
                .unwrap_or(false);
            if is_image && !path.is_dir() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut s = ImageSource::from_paths(paths);
        s.description = format!("{} images in {}", s.paths.len(), dir.display());
        Ok(s)
    }
}

impl FrameSource for ImageSource {
    fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
        let index = self.next;
        let path = self.paths.get(index)?;
        self.next += 1;
        Some(decode_image(path).map(|mut f| {
            f.sequence = index as u64;
            f.timestamp = Duration::from_secs(index as u64);
            f
        }))
    }

    fn frame_interval(&self) -> Option<Duration> {
        None
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// Checks that `meta` (a path's metadata, links followed) is a regular file
/// of at most `limit` bytes. The error says what the file is instead (a
/// FIFO, a device, ...) or how large it is against the limit.
pub fn check_regular_file(meta: &Metadata, limit: u64) -> io::Result<()> {
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a special file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file but {what}; only regular files are read"),
        ));
    }
    if meta.len() > limit {
        return Err(too_large(meta.len(), limit));
    }
    Ok(())
}

fn too_large(len: u64, limit: u64) -> io::Error {
    let limit = if limit % (1024 * 1024) == 0 {
        format!("{} MiB", limit / (1024 * 1024))
    } else {
        format!("{limit}-byte")
    };
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("file is {len} bytes, larger than the {limit} limit"),
    )
}

/// Reads a whole file that must be a regular file of at most `limit`
/// bytes. The type and size are checked before the file is opened (a FIFO
/// would block `open` until a writer came; `/dev/zero` would never end),
/// again on the open file (the path may have changed in between), and the
/// read itself stops after `limit` bytes (the file may grow while read).
pub fn read_regular_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    check_regular_file(&std::fs::metadata(path)?, limit)?;
    // O_NONBLOCK: should the path have become a FIFO since the check,
    // `open` returns at once instead of waiting for a writer, and the
    // second check refuses it. It changes nothing for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check_regular_file(&meta, limit)?;
    // At most `limit` (checked above), so the capacity is bounded too.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    let read = bytes.len() as u64;
    if read > limit {
        return Err(too_large(read, limit));
    }
    Ok(bytes)
}

/// Decodes one image file into a grey or RGB frame.
///
/// The file must be a regular file of at most [`MAX_IMAGE_FILE_BYTES`].
/// The dimensions are read from the header first and checked against
/// [`MAX_IMAGE_SIDE`], so an oversized image is refused without allocating.
pub fn decode_image(path: &Path) -> Result<Frame, SourceError> {
    let bytes =
        read_regular_file(path, MAX_IMAGE_FILE_BYTES).map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
    let mut frame = decode_image_bytes(&bytes).map_err(|message| SourceError::Format {
        path: path.to_path_buf(),
        message,
    })?;
    frame.origin = path.display().to_string();
    Ok(frame)
}

/// Decodes an encoded still image (PNG or JPEG, told apart by its bytes)
/// held in memory, with the checks of [`decode_image`]: sides against
/// [`MAX_IMAGE_SIDE`] before decoding, a cut-off JPEG refused, the
/// decoder's allocation bounded. The error does not name a file; callers
/// that have one add it ([`decode_image`] does).
pub fn decode_image_bytes(bytes: &[u8]) -> Result<Frame, String> {
    decode_bytes(bytes, None)
}

/// Decodes an encoded image held in memory (`format`, or guessed from the
/// bytes when `None`): header first, sides checked against
/// [`MAX_IMAGE_SIDE`] before any pixel buffer exists, a cut-off JPEG
/// refused, the decoder's own allocation bounded. Shared by still images
/// and MJPEG camera frames, whose headers are just as untrusted.
pub(crate) fn decode_bytes(bytes: &[u8], format: Option<ImageFormat>) -> Result<Frame, String> {
    let reader = || match format {
        Some(f) => Ok(ImageReader::with_format(Cursor::new(bytes), f)),
        None => ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read image: {e}")),
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| format!("not a readable image: {e}"))?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(format!(
            "image is {w}×{h}, larger than the {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} limit; downscale it first"
        ));
    }
    let mut r = reader()?;
    if r.format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a cut-off scan with grey and succeeds;
        // classifying that would be a silent garbage result.
        return Err("truncated JPEG: no end-of-image marker".into());
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    r.limits(limits);
    let img = r
        .decode()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    // The decoded size, not the header's: they agree for a sane file, and
    // `try_new` checks the buffer against whichever is used.
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageLuma8(g) => Frame::try_new(w, h, PixelFormat::Grey, g.into_raw()),
        other if !other.color().has_color() => {
            Frame::try_new(w, h, PixelFormat::Grey, other.into_luma8().into_raw())
        }
        other => Frame::try_new(w, h, PixelFormat::Rgb, other.into_rgb8().into_raw()),
    }
}

/// Whether JPEG data ends with the end-of-image marker (FF D9), allowing
/// the trailing padding some encoders and cameras append.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0 && b != b'\n' && b != b'\r' && b != b' ')
        .map_or(0, |i| i + 1);
    end >= 2 && bytes[end - 2..end] == [0xFF, 0xD9]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_png_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.png");
        let mut png = Vec::new();
        image::GrayImage::from_pixel(64, 64, image::Luma([7]))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        std::fs::write(&path, &png[..png.len() / 2]).unwrap();
        let err = decode_image(&path).unwrap_err().to_string();
        assert!(err.contains("cut.png"), "{err}");
    }

    #[test]
    fn non_regular_entries_of_a_folder_are_per_item_errors() {
        let dir = tempfile::tempdir().unwrap();
        image::GrayImage::from_pixel(4, 4, image::Luma([1]))
            .save(dir.path().join("a.png"))
            .unwrap();
        let fifo = dir.path().join("b.png");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other inputs.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("c.jpg")).unwrap();
        image::GrayImage::from_pixel(4, 4, image::Luma([1]))
            .save(dir.path().join("d.png"))
            .unwrap();
        let mut s = ImageSource::from_dir(dir.path()).unwrap();
        let mut seen = Vec::new();
        while let Some(item) = s.next_frame() {
            seen.push(match item {
                Ok(f) => format!("ok {}", f.origin.rsplit('/').next().unwrap()),
                Err(e) => e.to_string(),
            });
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(
            (seen[0].as_str(), seen[3].as_str()),
            ("ok a.png", "ok d.png")
        );
        assert!(
            seen[1].contains("b.png") && seen[1].contains("a FIFO"),
            "{seen:?}"
        );
        assert!(
            seen[2].contains("c.jpg") && seen[2].contains("a character device"),
            "{seen:?}"
        );
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, [7u8; 100]).unwrap();
        assert_eq!(read_regular_file(&path, 100).unwrap().len(), 100);
        let err = read_regular_file(&path, 99).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("99-byte limit"), "{err}");
        let err = read_regular_file(Path::new("/dev/urandom"), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
    }

    #[test]
    fn jpeg_completeness() {
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 0xFF, 0xD9]));
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xD9, 0, 0]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 3]));
        assert!(!jpeg_is_complete(&[]));
    }

    #[test]
    fn directory_is_sorted_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.png", "a.png"] {
            image::GrayImage::from_pixel(4, 4, image::Luma([1]))
                .save(dir.path().join(name))
                .unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let mut s = ImageSource::from_dir(dir.path()).unwrap();
        let first = s.next_frame().unwrap().unwrap();
        assert!(first.origin.ends_with("a.png"));
        let second = s.next_frame().unwrap().unwrap();
        assert_eq!(second.timestamp, Duration::from_secs(1));
        assert!(s.next_frame().is_none());
    }
}
