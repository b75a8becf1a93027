//! Still images and folders of images, decoded with the `image` crate.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::{DynamicImage, ImageReader, Limits};

use super::{FrameSource, SourceError};
use crate::frame::{Frame, PixelFormat};

/// Largest accepted image side. Larger images are refused before any pixel
/// buffer is allocated: a 20000×20000 RGB image would need 1.2 GB.
pub const MAX_IMAGE_SIDE: u32 = 8192;

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
    pub fn from_dir(dir: &Path) -> Result<ImageSource, SourceError> {
        let io = |source| SourceError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
                .unwrap_or(false);
            if is_image && path.is_file() {
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

/// Decodes one image file into a grey or RGB frame.
///
/// The dimensions are read from the header first and checked against
/// [`MAX_IMAGE_SIDE`], so an oversized image is refused without allocating.
pub fn decode_image(path: &Path) -> Result<Frame, SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format_err = |message: String| SourceError::Format {
        path: path.to_path_buf(),
        message,
    };
    let reader = || {
        ImageReader::new(Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| format_err(format!("cannot read image: {e}")))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| format_err(format!("not a readable image: {e}")))?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(format_err(format!(
            "image is {w}×{h}, larger than the {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} limit; downscale it first"
        )));
    }
    let mut r = reader()?;
    if r.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        // The JPEG decoder fills a cut-off scan with grey and succeeds;
        // classifying that would be a silent garbage result.
        return Err(format_err("truncated JPEG: no end-of-image marker".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(512 * 1024 * 1024);
    r.limits(limits);
    let img = r
        .decode()
        .map_err(|e| format_err(format!("cannot decode image: {e}")))?;
    let mut frame = match img {
        DynamicImage::ImageLuma8(g) => Frame::new(w, h, PixelFormat::Grey, g.into_raw()),
        other if !other.color().has_color() => {
            Frame::new(w, h, PixelFormat::Grey, other.into_luma8().into_raw())
        }
        other => Frame::new(w, h, PixelFormat::Rgb, other.into_rgb8().into_raw()),
    };
    frame.origin = path.display().to_string();
    Ok(frame)
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
