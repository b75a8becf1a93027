//! A display backend that writes the status screen to a PNG file, scaled
//! up for legibility. It is what `--display png:PATH` selects, what the
//! tests compare against a reference image, and what the docs show.

use std::path::{Path, PathBuf};

use super::display::{Canvas, Display, DisplayError, StatusScreen, SCREEN_SIZE};

/// Each screen pixel becomes a `SCALE` × `SCALE` block in the file.
pub const SCALE: u32 = 4;

/// Writes the screen to a PNG file whenever the picture changes.
pub struct PngDisplay {
    path: PathBuf,
    canvas: Canvas,
    written: Option<Canvas>,
}

impl PngDisplay {
    /// A display writing to `path` (the file is written on the first `show`).
    pub fn new(path: PathBuf) -> PngDisplay {
        PngDisplay {
            path,
            canvas: Canvas::default(),
            written: None,
        }
    }

    fn err(&self, message: String) -> DisplayError {
        DisplayError {
            target: self.path.display().to_string(),
            message,
        }
    }
}

/// The canvas as an 8-bit grey image, `SCALE` times larger, lit = white.
pub fn render(canvas: &Canvas) -> image::GrayImage {
    image::GrayImage::from_fn(
        SCREEN_SIZE.width * SCALE,
        SCREEN_SIZE.height * SCALE,
        |x, y| {
            image::Luma([if canvas.get(x / SCALE, y / SCALE) {
                255
            } else {
                0
            }])
        },
    )
}

/// Writes `img` atomically: a reader never sees a half-written file.
fn write_atomic(img: &image::GrayImage, path: &Path) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

impl Display for PngDisplay {
    fn show(&mut self, screen: &StatusScreen) -> Result<(), DisplayError> {
        let Ok(()) = screen.draw(&mut self.canvas);
        if self.written.as_ref() == Some(&self.canvas) {
            return Ok(());
        }
        write_atomic(&render(&self.canvas), &self.path).map_err(|m| self.err(m))?;
        self.written = Some(self.canvas.clone());
        Ok(())
    }

    /// The file keeps the last picture: it is a record, not a panel.
    fn shutdown(&mut self) -> Result<(), DisplayError> {
        Ok(())
    }
}
