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

pub use files::{decode_image, jpeg_is_complete, ImageSource, MAX_IMAGE_SIDE};
pub use y4m::{header_line, parse_header, Y4mHeader, Y4mSource};

use crate::frame::Frame;

/// Why a source or one of its items failed; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content is not what the format requires.
    #[error("{path}: {message}")]
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
pub fn open(path: &Path) -> Result<Box<dyn FrameSource + Send>, SourceError> {
    let meta = std::fs::metadata(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
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
        Ok(Box::new(ImageSource::from_paths(vec![path.to_path_buf()])))
    }
}
