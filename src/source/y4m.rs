//! Raw video in the YUV4MPEG2 (`.y4m`) format: 4:2:0 (any chroma siting)
//! and mono. Recorded clips replay frame-exactly, so the whole pipeline can
//! be tested deterministically without a camera.
//!
//! The input may be a regular file or a pipe: it is read one line of at
//! most 1 KiB and one frame of the header's size (at most
//! [`MAX_IMAGE_SIDE`] squared, 1.5 bytes a pixel) at a time, so memory is
//! bounded whatever the file holds or however long it goes on.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{FrameSource, SourceError, MAX_IMAGE_SIDE};
use crate::frame::{Frame, PixelFormat};

/// Longest header or frame line accepted; real headers are < 100 bytes.
const MAX_LINE: usize = 1024;

/// Latest frame time accepted, in seconds (about 136 years). Far beyond
/// any recording, and small enough that the pipeline's arithmetic on
/// timestamps (adding rule holds and intervals of up to a day) cannot
/// overflow; a header rate like `F1:4294967295` reaches it at its second
/// frame.
const MAX_FRAME_TIME_S: f64 = u32::MAX as f64;

/// The parsed stream header.
#[derive(Debug, Clone, PartialEq)]
pub struct Y4mHeader {
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frame rate as numerator / denominator.
    pub rate: (u32, u32),
    /// Pixel layout the frames carry.
    pub format: PixelFormat,
}

/// A `.y4m` file read frame by frame.
pub struct Y4mSource {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    header: Y4mHeader,
    /// Bytes of one frame, from the header.
    frame_len: usize,
    next: u64,
    done: bool,
}

impl Y4mSource {
    /// Opens a clip and parses its header.
    pub fn open(path: &Path) -> Result<Y4mSource, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        Y4mSource::from_reader(BufReader::new(file), path)
    }

    /// Parses a clip's header from any buffered reader (a pipe, bytes in
    /// memory); `path` only names the input in errors and frame origins.
    /// Memory stays bounded as for [`Y4mSource::open`]: one line of at most
    /// 1 KiB and one frame of the header's size at a time.
    pub fn from_reader(
        reader: impl BufRead + Send + 'static,
        path: &Path,
    ) -> Result<Y4mSource, SourceError> {
        let mut reader: Box<dyn BufRead + Send> = Box::new(reader);
        let line = read_line(&mut reader, path)?.ok_or_else(|| SourceError::Format {
            path: path.to_path_buf(),
            message: "empty file, expected a YUV4MPEG2 header".into(),
        })?;
        let header = parse_header(&line).map_err(|message| SourceError::Format {
            path: path.to_path_buf(),
            message,
        })?;
        // `parse_header` bounds the sides, so this fits even a 32-bit
        // `usize`; checked all the same, as the sides come from the file.
        let frame_len = header
            .format
            .buffer_len(header.width, header.height)
            .ok_or_else(|| SourceError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "frame size {}×{} is too large to address",
                    header.width, header.height
                ),
            })?;
        Ok(Y4mSource {
            path: path.to_path_buf(),
            reader,
            header,
            frame_len,
            next: 0,
            done: false,
        })
    }

    /// The stream header.
    pub fn header(&self) -> &Y4mHeader {
        &self.header
    }

    fn read_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let Some(line) = read_line(&mut self.reader, &self.path)? else {
            return Ok(None);
        };
        if !(line == "FRAME" || line.starts_with("FRAME ")) {
            return Err(self.format_err(format!(
                "expected FRAME marker, found {:?}",
                truncate(&line)
            )));
        }
        let (num, den) = self.header.rate;
        let secs = self.next as f64 * den as f64 / num as f64;
        if secs > MAX_FRAME_TIME_S {
            return Err(self.format_err(format!(
                "frame {} would be at {secs:.0} s (frame rate {num}:{den}), beyond the {MAX_FRAME_TIME_S:.0} s ferd accepts",
                self.next
            )));
        }
        let len = self.frame_len;
        let mut data = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self.reader.read(&mut data[filled..]) {
                Ok(0) => {
                    return Err(self.format_err(format!(
                        "frame {} is truncated: {filled} of {len} bytes",
                        self.next
                    )))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SourceError::Io {
                        path: self.path.clone(),
                        error: source,
                    })
                }
            }
        }
        let h = &self.header;
        let mut frame = Frame::try_new(h.width, h.height, h.format, data)
            .map_err(|message| self.format_err(message))?;
        frame.sequence = self.next;
        // Finite, ≥ 0 and below `MAX_FRAME_TIME_S` (checked above), so
        // `from_secs_f64` cannot panic.
        frame.timestamp = Duration::from_secs_f64(secs);
        frame.origin = format!("{}#{}", self.path.display(), self.next);
        Ok(Some(frame))
    }

    fn format_err(&self, message: String) -> SourceError {
        SourceError::Format {
            path: self.path.clone(),
            message,
        }
    }
}

impl FrameSource for Y4mSource {
    fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
        if self.done {
            return None;
        }
        let r = self.read_frame();
        // A broken stream cannot be resynchronised: stop after reporting.
        match r {
            Ok(Some(f)) => {
                self.next += 1;
                Some(Ok(f))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn frame_interval(&self) -> Option<Duration> {
        let (num, den) = self.header.rate;
        // At most u32::MAX seconds (num ≥ 1, checked by `parse_header`),
        // well inside what `from_secs_f64` takes.
        Some(Duration::from_secs_f64(den as f64 / num as f64))
    }

    fn describe(&self) -> String {
        let h = &self.header;
        format!(
            "{} ({}×{} {:?} at {}/{} fps)",
            self.path.display(),
            h.width,
            h.height,
            h.format,
            h.rate.0,
            h.rate.1
        )
    }
}

/// Reads one `\n`-terminated line; `None` at a clean end of file.
fn read_line(r: &mut impl BufRead, path: &Path) -> Result<Option<String>, SourceError> {
    let mut buf = Vec::new();
    let n = r
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
    if n == 0 {
        return Ok(None);
    }
    let err = |message: String| SourceError::Format {
        path: path.to_path_buf(),
        message,
    };
    if buf.last() != Some(&b'\n') {
        return Err(err(if n > MAX_LINE {
            format!("header line longer than {MAX_LINE} bytes")
        } else {
            "file ends inside a header line".to_string()
        }));
    }
    buf.pop();
    // The format is ASCII; refusing anything else here also keeps the
    // byte-offset slicing of the parsers on character boundaries.
    if let Some(at) = buf.iter().position(|b| !b.is_ascii()) {
        return Err(err(format!(
            "header line is not ASCII (byte {:#04x} at column {})",
            buf[at],
            at + 1
        )));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| err("header line is not ASCII".into()))
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses the `YUV4MPEG2 W.. H.. F.. C..` stream header.
pub fn parse_header(line: &str) -> Result<Y4mHeader, String> {
    if !line.is_ascii() {
        return Err(format!("header is not ASCII: {:?}", truncate(line)));
    }
    let mut parts = line.split(' ');
    if parts.next() != Some("YUV4MPEG2") {
        return Err(format!(
            "not a YUV4MPEG2 file: header starts {:?}",
            truncate(line)
        ));
    }
    let (mut width, mut height, mut rate) = (None, None, None);
    // The format's default colour space is 4:2:0.
    let mut format = PixelFormat::I420;
    for p in parts.filter(|p| !p.is_empty()) {
        // `p` is ASCII and not empty (both checked above): index 1 is a
        // character boundary inside it.
        let (tag, value) = p.split_at(1);
        match tag {
            "W" => {
                width = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| format!("bad width {value:?}"))?,
                )
            }
            "H" => {
                height = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| format!("bad height {value:?}"))?,
                )
            }
            "F" => {
                let (n, d) = value
                    .split_once(':')
                    .ok_or_else(|| format!("bad frame rate {value:?}"))?;
                let n: u32 = n.parse().map_err(|_| format!("bad frame rate {value:?}"))?;
                let d: u32 = d.parse().map_err(|_| format!("bad frame rate {value:?}"))?;
                if n == 0 || d == 0 {
                    return Err(format!("bad frame rate {value:?}"));
                }
                rate = Some((n, d));
            }
            "C" => {
                format = match value {
                    "420" | "420jpeg" | "420paldv" | "420mpeg2" => PixelFormat::I420,
                    "mono" => PixelFormat::Grey,
                    other => {
                        return Err(format!(
                            "unsupported colour space C{other} (ferd reads 4:2:0 and mono)"
                        ))
                    }
                }
            }
            // Interlacing, aspect ratio and extensions do not change how
            // the bytes are laid out.
            "I" | "A" | "X" => {}
            _ => return Err(format!("unknown header field {p:?}")),
        }
    }
    let width = width.ok_or("header has no width (W)")?;
    let height = height.ok_or("header has no height (H)")?;
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(format!(
            "frame size {width}×{height} outside 1..={MAX_IMAGE_SIDE}"
        ));
    }
    let rate = rate.ok_or("header has no frame rate (F)")?;
    Ok(Y4mHeader {
        width,
        height,
        rate,
        format,
    })
}

/// Writes a `.y4m` header for frames of the given format; the inverse of
/// [`parse_header`], used by tools and tests that record clips.
pub fn header_line(
    width: u32,
    height: u32,
    rate: (u32, u32),
    format: PixelFormat,
) -> Result<String, String> {
    let c = match format {
        PixelFormat::I420 => "420jpeg",
        PixelFormat::Grey => "mono",
        PixelFormat::Rgb => return Err("YUV4MPEG2 cannot carry packed RGB".into()),
    };
    Ok(format!(
        "YUV4MPEG2 W{width} H{height} F{}:{} Ip A1:1 C{c}\n",
        rate.0, rate.1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn clip(header: &str, frames: &[&[u8]]) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".y4m").tempfile().unwrap();
        f.write_all(header.as_bytes()).unwrap();
        for fr in frames {
            f.write_all(b"FRAME\n").unwrap();
            f.write_all(fr).unwrap();
        }
        f.flush().unwrap();
        f
    }

    #[test]
    fn header_round_trips() {
        let line = header_line(320, 240, (10, 1), PixelFormat::Grey).unwrap();
        let h = parse_header(line.trim_end()).unwrap();
        assert_eq!(
            (h.width, h.height, h.rate, h.format),
            (320, 240, (10, 1), PixelFormat::Grey)
        );
        assert_eq!(
            parse_header("YUV4MPEG2 W4 H2 F25:1").unwrap().format,
            PixelFormat::I420
        );
    }

    #[test]
    fn bad_headers_are_explained() {
        assert!(parse_header("RIFF")
            .unwrap_err()
            .contains("not a YUV4MPEG2"));
        assert!(parse_header("YUV4MPEG2 W4 F25:1")
            .unwrap_err()
            .contains("height"));
        assert!(parse_header("YUV4MPEG2 W4 H4 F0:1")
            .unwrap_err()
            .contains("frame rate"));
        assert!(parse_header("YUV4MPEG2 W4 H4 F25:1 C444")
            .unwrap_err()
            .contains("C444"));
        assert!(parse_header("YUV4MPEG2 W20000 H4 F25:1")
            .unwrap_err()
            .contains("outside"));
    }

    #[test]
    fn non_ascii_headers_are_errors_naming_the_file() {
        // "W" followed by "é" used to split inside the character and panic.
        for header in ["YUV4MPEG2 W4 H4 F25:1 é\n", "YUV4MPEG2 é4 H4 F25:1\n"] {
            let f = clip(header, &[]);
            let err = match Y4mSource::open(f.path()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{header:?} accepted"),
            };
            let name = f.path().file_name().unwrap().to_str().unwrap();
            assert!(err.contains(name) && err.contains("not ASCII"), "{err}");
            assert!(parse_header(header.trim_end())
                .unwrap_err()
                .contains("not ASCII"));
        }
        // Not UTF-8 at all.
        let mut g = tempfile::Builder::new().suffix(".y4m").tempfile().unwrap();
        g.write_all(b"YUV4MPEG2 W4 H4 F25:1 X\xff\n").unwrap();
        let err = Y4mSource::open(g.path()).err().unwrap().to_string();
        assert!(err.contains("0xff"), "{err}");
    }

    #[test]
    fn endless_or_lineless_input_stops_at_the_line_limit() {
        // /dev/zero: no newline within MAX_LINE bytes.
        let err = Y4mSource::open(Path::new("/dev/zero"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("longer than 1024 bytes"), "{err}");
    }

    #[test]
    fn frame_times_beyond_the_clock_are_an_error() {
        let f = clip("YUV4MPEG2 W1 H1 F1:4294967295 Cmono\n", &[&[1], &[2], &[3]]);
        let mut s = Y4mSource::open(f.path()).unwrap();
        assert_eq!(s.next_frame().unwrap().unwrap().timestamp, Duration::ZERO);
        let last = s.next_frame().unwrap().unwrap().timestamp;
        assert_eq!(last, Duration::from_secs(u32::MAX.into()));
        let err = s.next_frame().unwrap().unwrap_err().to_string();
        assert!(err.contains("frame 2 would be at"), "{err}");
        assert!(s.next_frame().is_none());
    }

    #[test]
    fn frames_have_timestamps_and_truncated_last_frame_is_reported() {
        let f = clip(
            "YUV4MPEG2 W2 H2 F4:1 Cmono\n",
            &[&[1, 2, 3, 4], &[5, 6, 7, 8], &[9, 9]],
        );
        let mut s = Y4mSource::open(f.path()).unwrap();
        let a = s.next_frame().unwrap().unwrap();
        let b = s.next_frame().unwrap().unwrap();
        assert_eq!(a.data, vec![1, 2, 3, 4]);
        assert_eq!(b.timestamp, Duration::from_millis(250));
        let err = s.next_frame().unwrap().unwrap_err().to_string();
        assert!(err.contains("frame 2 is truncated: 2 of 4 bytes"), "{err}");
        assert!(s.next_frame().is_none());
    }

    #[test]
    fn i420_frames_have_chroma() {
        // 2x2 I420 = 4 luma + 1 U + 1 V.
        let f = clip(
            "YUV4MPEG2 W2 H2 F1:1 C420jpeg\n",
            &[&[16, 16, 235, 235, 128, 128]],
        );
        let mut s = Y4mSource::open(f.path()).unwrap();
        let fr = s.next_frame().unwrap().unwrap();
        assert_eq!(fr.format, PixelFormat::I420);
        assert_eq!(fr.luma(0, 0), 0.0);
        assert_eq!(fr.luma(0, 1), 255.0);
        assert!(s.next_frame().is_none());
    }
}
