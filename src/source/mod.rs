//! Frame sources: where pictures come from.
//!
//! Every source implements [`FrameSource`]. A source yields frames one at a
//! time; an error for one item (a corrupt image in a folder, a truncated
//! last video frame) is returned in place of that item and the source goes
//! on, so the caller can log it, name the file, and keep processing the rest.

mod files;
pub mod reconnect;
#[cfg(feature = "v4l2")]
pub mod v4l2;
mod y4m;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use files::{
    check_regular_file, decode_image, decode_image_bytes, jpeg_is_complete, read_regular_file,
    ImageSource, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE,
};
pub use y4m::{header_line, parse_header, Y4mHeader, Y4mSource};

use crate::frame::Frame;

/// Why a source or one of its items failed; always names the file.
///
/// The cause is part of the message (sources, the pipeline and `ferd
/// detect --json` print it with `{e}`) and is therefore not also exposed as
/// [`std::error::Error::source`]: a chain printer such as anyhow's `{:#}`
/// would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path could not be opened or read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error; shown in the message, not chained.
        error: std::io::Error,
    },
    /// The content is not what the format requires.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A change in a live source's device, reported between frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// The device stopped delivering frames (unplugged, driver unloaded);
    /// the source keeps trying to reopen it.
    Lost {
        /// The device path.
        device: String,
        /// What failed.
        error: String,
    },
    /// The device is open and streaming again.
    Restored {
        /// The device path.
        device: String,
        /// How long it was gone.
        offline: Duration,
    },
}

/// A stream of frames.
pub trait FrameSource {
    /// The next frame: `None` at the end of the input, `Some(Err)` when one
    /// item failed (the source can still continue).
    fn next_frame(&mut self) -> Option<Result<Frame, SourceError>>;

    /// The nominal time between frames, for pacing a replay in real time;
    /// `None` where the source has no rate of its own.
    fn frame_interval(&self) -> Option<Duration>;

    /// A short description for logs.
    fn describe(&self) -> String;

    /// The next device change not yet taken, oldest first (checked after
    /// every `next_frame`); file sources have none.
    fn take_event(&mut self) -> Option<SourceEvent> {
        None
    }
}

/// Opens a file-based source by looking at the path: a directory of images,
/// a `.y4m` clip, or a single image.
///
/// A single image must be a regular file of at most
/// [`MAX_IMAGE_FILE_BYTES`]; a FIFO, a device or a socket is refused here,
/// before it is opened (opening a FIFO blocks until a writer comes, and
/// `/dev/zero` never ends). A `.y4m` clip may be a pipe or a device (an
/// encoder writing into a FIFO is a normal way to feed one): it is read one
/// header line of at most 1 KiB and one frame of the header's size at a
/// time, so whatever the other end writes, memory stays bounded.
pub fn open(path: &Path) -> Result<Box<dyn FrameSource + Send>, SourceError> {
    let meta = std::fs::metadata(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    if meta.is_dir() {
        return Ok(Box::new(ImageSource::from_dir(path)?));
    }
    let is_y4m = path
        .extension()
        .map(|e| e.eq_ignore_ascii_case("y4m"))
        .unwrap_or(false);
    if is_y4m {
        Ok(Box::new(Y4mSource::open(path)?))
    } else {
        check_regular_file(&meta, MAX_IMAGE_FILE_BYTES).map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        Ok(Box::new(ImageSource::from_paths(vec![path.to_path_buf()])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_source_error_prints_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let err = match open(&missing) {
            Err(e) => e,
            Ok(_) => panic!("opened a missing file"),
        };
        let io = std::fs::metadata(&missing).unwrap_err().to_string();
        let chain = format!(
            "{:#}",
            anyhow::Error::new(err).context("opening the source")
        );
        assert_eq!(chain.matches(&io).count(), 1, "{chain}");
        assert!(chain.contains("missing.png"), "{chain}");
    }

    #[test]
    fn a_fifo_or_device_is_refused_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.png");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other inputs.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening the FIFO for reading would block forever (no writer): the
        // test finishing at all shows it is refused before `open(2)`.
        for path in [fifo.as_path(), Path::new("/dev/zero")] {
            let err = match open(path) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{} accepted", path.display()),
            };
            assert!(
                err.contains(&path.display().to_string()) && err.contains("not a regular file"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_oversized_still_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.jpg");
        // Sparse: no disk space, no reading, just a size.
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_IMAGE_FILE_BYTES + 1)
            .unwrap();
        let err = match open(&big) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(err.contains("big.jpg") && err.contains("limit"), "{err}");
    }
}
