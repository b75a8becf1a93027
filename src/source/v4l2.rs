//! V4L2 cameras through the `v4l` crate: format negotiation, mmap
//! streaming, driver timestamps, and conversion of YUYV, GREY and MJPEG
//! buffers into frames.
//!
//! The pixel conversions are plain functions over byte slices so that they
//! are tested without a device; the device code only negotiates and
//! streams.

use std::path::{Path, PathBuf};
use std::time::Duration;

use v4l::buffer::Type;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::reconnect::{Connect, Reconnecting, Stream};
use super::SourceError;
use crate::config::{CameraConfig, CameraFormat};
use crate::frame::{Frame, PixelFormat};

/// Buffers in the driver's queue. Few, so that a frame is never old.
const BUFFERS: u32 = 3;

/// The formats ferd reads, in the order `auto` prefers them: YUYV needs no
/// decoding, GREY is what the models use, MJPEG is what cheap UVC cameras
/// offer at high resolutions.
const PREFERENCE: [CameraFormat; 3] = [CameraFormat::Yuyv, CameraFormat::Grey, CameraFormat::Mjpeg];

fn fourcc(f: CameraFormat) -> Option<FourCC> {
    match f {
        CameraFormat::Auto => None,
        CameraFormat::Yuyv => Some(FourCC::new(b"YUYV")),
        CameraFormat::Grey => Some(FourCC::new(b"GREY")),
        CameraFormat::Mjpeg => Some(FourCC::new(b"MJPG")),
    }
}

/// A V4L2 capture device. When the device fails (unplugged, driver
/// unloaded) the source reports `camera_lost` once, then tries to reopen
/// it with a growing delay (0.5 s doubling to 5 s) and reports
/// `camera_restored` when it streams again (see [`Reconnecting`]).
pub type V4l2Source = Reconnecting<V4l2Camera>;

/// Opens a V4L2 device with the configured format.
pub struct V4l2Camera(CameraConfig);

impl V4l2Source {
    /// Opens the camera; the first open must succeed (a wrong device or
    /// format is a start-up error, not something to retry).
    pub fn open_camera(cfg: &CameraConfig) -> Result<V4l2Source, SourceError> {
        Reconnecting::open(V4l2Camera(cfg.clone()))
    }
}

impl Connect for V4l2Camera {
    type Stream = Streaming;

    fn connect(&mut self) -> Result<Streaming, SourceError> {
        Streaming::open(&self.0)
    }

    fn device(&self) -> String {
        self.0.device.display().to_string()
    }
}

impl Stream for Streaming {
    fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
        Streaming::next_frame(self)
    }

    fn interval(&self) -> Option<Duration> {
        self.interval
    }

    fn describe(&self) -> String {
        format!(
            "camera {} ({}×{} {:?})",
            self.path.display(),
            self.width,
            self.height,
            self.format
        )
    }
}

/// An open, streaming device.
pub struct Streaming {
    path: PathBuf,
    stream: MmapStream<'static>,
    format: CameraFormat,
    width: u32,
    height: u32,
    stride: u32,
    interval: Option<Duration>,
    first: Option<Duration>,
    /// Least driver time between frames handed on, when the driver runs
    /// faster than the configured rate (see [`decimation`]).
    min_gap: Option<Duration>,
    last_kept: Option<Duration>,
    next_sequence: u64,
    _device: Device,
}

impl Streaming {
    /// Opens the device, negotiates size, rate and format, starts streaming.
    fn open(cfg: &CameraConfig) -> Result<Streaming, SourceError> {
        let path = cfg.device.clone();
        let io = |what: &str, e: std::io::Error| SourceError::Io {
            path: path.clone(),
            error: std::io::Error::new(e.kind(), format!("{what}: {e}")),
        };
        let fmt_err = |message: String| SourceError::Format {
            path: path.clone(),
            message,
        };
        let device = Device::with_path(&path).map_err(|e| io("cannot open camera", e))?;
        let offered: Vec<FourCC> = device
            .enum_formats()
            .map_err(|e| io("cannot list formats", e))?
            .into_iter()
            .map(|d| d.fourcc)
            .collect();
        let list = || {
            offered
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let wanted = match cfg.format {
            CameraFormat::Auto => PREFERENCE
                .into_iter()
                .find(|f| fourcc(*f).is_some_and(|c| offered.contains(&c)))
                .ok_or_else(|| {
                    fmt_err(format!(
                        "offers none of YUYV, GREY, MJPG; it offers: {}",
                        list()
                    ))
                })?,
            f => f,
        };
        let Some(code) = fourcc(wanted) else {
            // Unreachable: `Auto` was resolved to an entry of PREFERENCE
            // above, and every other format has a FourCC.
            return Err(fmt_err("no capture format chosen".into()));
        };
        if !offered.contains(&code) {
            return Err(fmt_err(format!(
                "cannot capture {code}; it offers: {}",
                list()
            )));
        }
        let mut fmt = device.format().map_err(|e| io("cannot read format", e))?;
        fmt.width = cfg.width.0;
        fmt.height = cfg.height.0;
        fmt.fourcc = code;
        let got = device
            .set_format(&fmt)
            .map_err(|e| io("cannot set format", e))?;
        if got.fourcc != code {
            return Err(fmt_err(format!(
                "asked for {code}, driver gave {}; it offers: {}",
                got.fourcc,
                list()
            )));
        }
        // The driver's answer is what the buffers will be converted by:
        // refuse a size no frame could have, once, rather than every frame.
        if got.width == 0
            || got.height == 0
            || got.width > super::MAX_IMAGE_SIDE
            || got.height > super::MAX_IMAGE_SIDE
        {
            return Err(fmt_err(format!(
                "driver gave a frame size of {}×{}, outside 1..={}",
                got.width,
                got.height,
                super::MAX_IMAGE_SIDE
            )));
        }
        if (got.width, got.height) != (cfg.width.0, cfg.height.0) {
            log::warn!(
                "{}: asked for {}×{}, driver gave {}×{}",
                path.display(),
                cfg.width.0,
                cfg.height.0,
                got.width,
                got.height
            );
        }
        let interval =
            match device.set_params(&v4l::video::capture::Parameters::with_fps(cfg.fps.0)) {
                Ok(p) if p.interval.numerator > 0 && p.interval.denominator > 0 => {
                    Some(Duration::from_secs_f64(
                        p.interval.numerator as f64 / p.interval.denominator as f64,
                    ))
                }
                Ok(_) => None,
                Err(e) => {
                    log::warn!("{}: cannot set {} fps: {e}", path.display(), cfg.fps.0);
                    None
                }
            };
        log::info!(
            "{}: {}×{} {} (stride {}), {}",
            path.display(),
            got.width,
            got.height,
            got.fourcc,
            got.stride,
            interval.map_or("driver frame rate".to_string(), |i| format!(
                "{:.1} fps",
                1.0 / i.as_secs_f64()
            ))
        );
        // fps ≥ 1 (the config's PositiveU32), so this is at most a second.
        let wanted_interval = Duration::from_secs_f64(1.0 / f64::from(cfg.fps.0));
        let min_gap = decimation(interval, wanted_interval);
        if min_gap.is_some() {
            log::info!(
                "{}: the driver runs faster than {} fps; frames in between are skipped before conversion",
                path.display(),
                cfg.fps.0
            );
        }
        let stream = MmapStream::with_buffers(&device, Type::VideoCapture, BUFFERS)
            .map_err(|e| io("cannot start streaming", e))?;
        Ok(Streaming {
            path,
            stream,
            format: wanted,
            width: got.width,
            height: got.height,
            stride: got.stride,
            interval: min_gap.map_or(interval, |_| Some(wanted_interval)),
            first: None,
            min_gap,
            last_kept: None,
            next_sequence: 0,
            _device: device,
        })
    }
}

impl Streaming {
    fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
        let (data, meta, ts) = loop {
            let (buf, meta) = match self.stream.next() {
                Ok(b) => b,
                Err(source) => {
                    return Some(Err(SourceError::Io {
                        path: self.path.clone(),
                        error: source,
                    }))
                }
            };
            // Both parts clamped to ≥ 0; even at i64::MAX each, the sum
            // (9.2e18 s + 9.2e12 s) is inside Duration's u64 seconds.
            let ts = Duration::from_secs(meta.timestamp.sec.max(0) as u64)
                + Duration::from_micros(meta.timestamp.usec.max(0) as u64);
            if let (Some(gap), Some(last)) = (self.min_gap, self.last_kept) {
                if ts < last + gap && ts >= last {
                    continue;
                }
            }
            self.last_kept = Some(ts);
            // `bytesused` is the driver's word; never trust it past the
            // mapped buffer.
            let used = usize::try_from(meta.bytesused)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            break (&buf[..used], meta, ts);
        };
        if self.first.is_none() {
            // The stream's clock origin, once: frame times (events' `t`)
            // count from this stamp, so with a monotonic driver clock any
            // program on the machine can line events up with its own
            // CLOCK_MONOTONIC readings (the rig's latency scenario does).
            let clock = match meta.flags & v4l::buffer::Flags::TIMESTAMP_MASK {
                f if f == v4l::buffer::Flags::TIMESTAMP_MONOTONIC => "CLOCK_MONOTONIC",
                f if f == v4l::buffer::Flags::TIMESTAMP_COPY => "a clock copied from its source",
                _ => "an unknown clock",
            };
            log::info!(
                "{}: first frame (driver frame {}) stamped {:.6} s on {clock}; frame times count from it",
                self.path.display(),
                meta.sequence,
                ts.as_secs_f64()
            );
            self.first = Some(ts);
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let converted = match self.format {
            CameraFormat::Yuyv => yuyv_to_frame(data, self.width, self.height, self.stride),
            CameraFormat::Grey => grey_to_frame(data, self.width, self.height, self.stride),
            CameraFormat::Mjpeg | CameraFormat::Auto => mjpeg_to_frame(data),
        };
        Some(
            converted
                .map(|mut f| {
                    f.timestamp = ts.saturating_sub(self.first.unwrap_or(ts));
                    f.sequence = sequence;
                    f.origin = format!("{}#{}", self.path.display(), meta.sequence);
                    f
                })
                .map_err(|message| frame_error(&self.path, meta.sequence, message)),
        )
    }
}

/// The error for a driver buffer that does not convert into a frame: the
/// device and the driver's frame number, so the log says which one was bad.
fn frame_error(device: &Path, sequence: u32, message: String) -> SourceError {
    SourceError::Format {
        path: device.to_path_buf(),
        message: format!("frame {sequence}: {message}"),
    }
}

/// When the driver's frame interval is well below the wanted one (a
/// driver that ignores the requested rate, like HDMI capture), the least
/// driver time between frames to hand on: the wanted interval less half a
/// driver interval, so that a 60 fps driver gives exactly every 12th frame
/// for 5 fps. Skipped frames are requeued unconverted.
pub fn decimation(driver: Option<Duration>, wanted: Duration) -> Option<Duration> {
    let driver = driver?;
    (driver.as_secs_f64() < wanted.as_secs_f64() * 0.9).then(|| wanted - driver / 2)
}

/// Lists the capture devices under `/dev` with their formats and sizes.
pub fn list_cameras() -> Vec<String> {
    let mut out = Vec::new();
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("video"))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    for node in nodes {
        out.push(describe_device(&node));
    }
    out
}

fn describe_device(path: &Path) -> String {
    let dev = match Device::with_path(path) {
        Ok(d) => d,
        Err(e) => return format!("{}: cannot open: {e}", path.display()),
    };
    let name = dev.query_caps().map(|c| c.card).unwrap_or_default();
    let mut s = format!("{}: {name}", path.display());
    match dev.enum_formats() {
        Ok(formats) if formats.is_empty() => s.push_str("\n  (no capture formats)"),
        Ok(formats) => {
            for f in formats {
                let sizes: Vec<String> = dev
                    .enum_framesizes(f.fourcc)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|fs| match fs.size {
                        // A range is printed as one: expanding it (HDMI
                        // capture offers 16×16 to 4096×2160) lists
                        // millions of sizes.
                        FrameSizeEnum::Stepwise(r) => format!(
                            "{}×{} to {}×{} (step {}×{})",
                            r.min_width,
                            r.min_height,
                            r.max_width,
                            r.max_height,
                            r.step_width,
                            r.step_height
                        ),
                        FrameSizeEnum::Discrete(d) => format!("{}×{}", d.width, d.height),
                    })
                    .collect();
                s.push_str(&format!(
                    "\n  {} ({}): {}",
                    f.fourcc,
                    f.description,
                    sizes.join(" ")
                ));
            }
        }
        Err(e) => s.push_str(&format!("\n  cannot list formats: {e}")),
    }
    s
}

/// The byte layout of a driver buffer: where line `y` starts and how many
/// bytes of it hold pixels. The driver's `stride` (bytes per line) is used
/// when it is at least a line's pixels, which it must be; a smaller one
/// (0 means "packed" to some drivers) is taken as packed. Every size comes
/// from the driver, so the arithmetic is checked and the buffer must hold
/// the last line's pixels, not a whole last stride (drivers may cut it).
fn line_layout(
    what: &str,
    data: &[u8],
    width: u32,
    height: u32,
    stride: u32,
    line_bytes: Option<usize>,
) -> Result<(usize, usize), String> {
    let short = || {
        format!(
            "short {what} buffer: {} bytes for {width}×{height} (stride {stride})",
            data.len()
        )
    };
    if width == 0 || height == 0 {
        return Err(format!("{what} frame with a zero side ({width}×{height})"));
    }
    if width > super::MAX_IMAGE_SIDE || height > super::MAX_IMAGE_SIDE {
        return Err(format!(
            "{what} frame of {width}×{height} is larger than {0}×{0}",
            super::MAX_IMAGE_SIDE
        ));
    }
    let line = line_bytes.ok_or_else(short)?;
    let stride = usize::try_from(stride).map_err(|_| short())?.max(line);
    let needed = stride
        .checked_mul(height as usize - 1)
        .and_then(|n| n.checked_add(line))
        .ok_or_else(short)?;
    if data.len() < needed {
        return Err(short());
    }
    Ok((stride, line))
}

/// Packed YUYV (Y0 U Y1 V) to a planar I420 frame: luma kept, chroma
/// taken from every other line.
///
/// A line holds `width × 2` bytes (V4L2's minimum bytes per line for
/// YUYV). With an odd width, 1 included, the line ends after the last
/// pixel's Y and U, so that pixel's chroma pair is incomplete: it takes its
/// left neighbour's chroma, or neutral grey in a 1-pixel-wide frame.
pub fn yuyv_to_frame(data: &[u8], width: u32, height: u32, stride: u32) -> Result<Frame, String> {
    let (w, h) = (width as usize, height as usize);
    let (stride, line) = line_layout("YUYV", data, width, height, stride, w.checked_mul(2))?;
    // Sides are ≤ MAX_IMAGE_SIDE once `line_layout` accepts them, so the
    // products below cannot overflow.
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut out = vec![0u8; w * h + 2 * cw * ch];
    let (y_plane, chroma) = out.split_at_mut(w * h);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    for y in 0..h {
        // In bounds: `line_layout` checked stride * (h - 1) + line ≤ len.
        let row = &data[y * stride..y * stride + line];
        for x in 0..w {
            y_plane[y * w + x] = row[x * 2];
        }
        if y % 2 == 0 {
            let base = (y / 2) * cw;
            for cx in 0..cw {
                let (u, v) = match row.get(cx * 4..cx * 4 + 4) {
                    Some(group) => (group[1], group[3]),
                    None if cx > 0 => (u_plane[base + cx - 1], v_plane[base + cx - 1]),
                    None => (128, 128),
                };
                u_plane[base + cx] = u;
                v_plane[base + cx] = v;
            }
        }
    }
    Frame::try_new(width, height, PixelFormat::I420, out)
}

/// 8-bit grey with a line stride to a grey frame.
pub fn grey_to_frame(data: &[u8], width: u32, height: u32, stride: u32) -> Result<Frame, String> {
    let (w, h) = (width as usize, height as usize);
    let (stride, line) = line_layout("GREY", data, width, height, stride, Some(w))?;
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        // In bounds: `line_layout` checked stride * (h - 1) + line ≤ len.
        out.extend_from_slice(&data[y * stride..y * stride + line]);
    }
    Frame::try_new(width, height, PixelFormat::Grey, out)
}

/// Decodes one MJPEG frame. UVC cameras send truncated or corrupt frames
/// now and then; those are errors (the caller counts and skips them), never
/// half-grey pictures. The JPEG header's size is checked against
/// [`MAX_IMAGE_SIDE`](super::MAX_IMAGE_SIDE) before any pixel buffer is
/// allocated, as for a still image.
pub fn mjpeg_to_frame(data: &[u8]) -> Result<Frame, String> {
    if data.len() < 4 || data[..2] != [0xFF, 0xD8] {
        return Err("corrupt MJPEG frame: no JPEG start marker".into());
    }
    if !super::jpeg_is_complete(data) {
        return Err("truncated MJPEG frame: no end-of-image marker".into());
    }
    super::files::decode_bytes(data, Some(image::ImageFormat::Jpeg))
        .map_err(|e| format!("corrupt MJPEG frame: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FrameSource;

    #[test]
    fn yuyv_keeps_luma_and_subsamples_chroma() {
        // 4×2, stride 10 (2 bytes padding per line).
        let data = [
            10, 100, 20, 200, 30, 101, 40, 201, 0, 0, //
            50, 1, 60, 2, 70, 3, 80, 4, 0, 0,
        ];
        let f = yuyv_to_frame(&data, 4, 2, 10).unwrap();
        assert_eq!(&f.data[..8], &[10, 20, 30, 40, 50, 60, 70, 80]);
        assert_eq!(&f.data[8..10], &[100, 101]); // U from line 0
        assert_eq!(&f.data[10..12], &[200, 201]); // V from line 0
        assert!(yuyv_to_frame(&data[..15], 4, 2, 10).is_err());
    }

    #[test]
    fn odd_and_one_pixel_wide_yuyv_converts() {
        // 1×3, two bytes a line (Y U): luma kept, neutral chroma. This
        // indexed out of bounds (a line shorter than one Y U Y V group).
        let data = [10, 100, 20, 101, 30, 102];
        let f = yuyv_to_frame(&data, 1, 3, 2).unwrap();
        assert_eq!(f.data, vec![10, 20, 30, 128, 128, 128, 128]);
        // Stride 0 ("packed") is taken as packed.
        assert_eq!(yuyv_to_frame(&data, 1, 3, 0).unwrap().data, f.data);
        // 3×1 in 6 bytes: the last pixel reuses its neighbour's chroma.
        let f = yuyv_to_frame(&[1, 50, 2, 60, 3, 51], 3, 1, 6).unwrap();
        assert_eq!(f.data, vec![1, 2, 3, 50, 50, 60, 60]);
        assert!(yuyv_to_frame(&data[..5], 1, 3, 2).is_err());
    }

    #[test]
    fn driver_sizes_never_index_out_of_bounds() {
        let data = [0u8; 64];
        for (w, h, stride) in [
            (0, 4, 8),
            (4, 0, 8),
            (u32::MAX, 2, 8),
            (4, u32::MAX, 8),
            (4, 4, u32::MAX),
            (4, 20, 8),
            (40, 2, 0),
        ] {
            assert!(
                yuyv_to_frame(&data, w, h, stride).is_err(),
                "{w}×{h} {stride}"
            );
            assert!(
                grey_to_frame(&data, w, h, stride).is_err(),
                "{w}×{h} {stride}"
            );
        }
        // The last line needs only its pixels, not a whole stride.
        assert!(grey_to_frame(&data[..8 * 7 + 4], 4, 8, 8).is_ok());
    }

    #[test]
    fn mjpeg_header_claiming_a_huge_frame_is_refused() {
        let mut jpeg = Vec::new();
        image::GrayImage::from_pixel(16, 8, image::Luma([9]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        // The baseline frame header (FF C0): length, precision, then the
        // height and width, big-endian.
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
        let err = mjpeg_to_frame(&jpeg).unwrap_err();
        assert!(err.contains("60000×60000"), "{err}");
    }

    #[test]
    fn decimation_keeps_the_wanted_rate() {
        let wanted = Duration::from_millis(200);
        assert_eq!(decimation(None, wanted), None);
        assert_eq!(decimation(Some(Duration::from_millis(190)), wanted), None);
        let driver = Duration::from_secs_f64(1001.0 / 60000.0);
        let gap = decimation(Some(driver), wanted).unwrap();
        // Frames at 59.94 fps: every 12th is at least `gap` after the last kept.
        let kept: Vec<u32> = (0..60)
            .scan(None::<Duration>, |last, i| {
                let ts = driver * i;
                let keep = last.is_none_or(|l| ts >= l + gap);
                if keep {
                    *last = Some(ts);
                }
                Some(keep.then_some(i))
            })
            .flatten()
            .collect();
        assert_eq!(kept, vec![0, 12, 24, 36, 48]);
    }

    #[test]
    fn grey_respects_stride() {
        let data = [1, 2, 3, 9, 4, 5, 6];
        let f = grey_to_frame(&data, 3, 2, 4).unwrap();
        assert_eq!(f.data, vec![1, 2, 3, 4, 5, 6]);
        assert!(grey_to_frame(&data[..5], 3, 2, 4).is_err());
    }

    /// A camera whose driver hands out the given MJPEG buffers, decoded
    /// the way `Streaming` decodes them.
    struct MjpegCamera(Vec<Vec<u8>>);
    struct MjpegStream(std::vec::IntoIter<Vec<u8>>, u32);

    impl Connect for MjpegCamera {
        type Stream = MjpegStream;
        fn connect(&mut self) -> Result<MjpegStream, SourceError> {
            Ok(MjpegStream(std::mem::take(&mut self.0).into_iter(), 0))
        }
        fn device(&self) -> String {
            "/dev/video7".into()
        }
    }

    impl Stream for MjpegStream {
        fn next_frame(&mut self) -> Option<Result<Frame, SourceError>> {
            let buf = self.0.next()?;
            self.1 += 1;
            Some(
                mjpeg_to_frame(&buf)
                    .map_err(|message| frame_error(Path::new("/dev/video7"), self.1, message)),
            )
        }
        fn interval(&self) -> Option<Duration> {
            None
        }
        fn describe(&self) -> String {
            "mjpeg".into()
        }
    }

    #[test]
    fn corrupt_mjpeg_frames_are_skipped_and_the_stream_goes_on() {
        let mut jpeg = Vec::new();
        image::GrayImage::from_fn(64, 48, |x, y| image::Luma([(x * 4 + y) as u8]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let truncated = jpeg[..jpeg.len() * 2 / 3].to_vec();
        let mut corrupt = jpeg.clone();
        corrupt[2..60].fill(0xFF);
        let buffers = vec![
            jpeg.clone(),
            truncated,
            corrupt,
            b"\xFF\xD8garbage".to_vec(),
            jpeg.clone(),
        ];
        let mut src = Reconnecting::open(MjpegCamera(buffers)).unwrap();
        let (mut frames, mut errors) = (Vec::new(), Vec::new());
        while let Some(item) = src.next_frame() {
            match item {
                Ok(f) => frames.push((f.sequence, f.width, f.height)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        assert_eq!(frames, vec![(0, 64, 48), (1, 64, 48)]);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("truncated MJPEG"), "{errors:?}");
        assert!(errors.iter().all(|e| e.starts_with("/dev/video7: frame ")));
        // Bad frames are not a lost camera.
        assert!(src.take_event().is_none());
        assert!(src.is_connected());
    }

    #[test]
    fn mjpeg_good_truncated_and_garbage() {
        let mut jpeg = Vec::new();
        image::RgbImage::from_fn(32, 16, |x, y| image::Rgb([x as u8 * 8, y as u8 * 16, 128]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let f = mjpeg_to_frame(&jpeg).unwrap();
        assert_eq!((f.width, f.height, f.format), (32, 16, PixelFormat::Rgb));
        let cut = mjpeg_to_frame(&jpeg[..jpeg.len() / 2]).unwrap_err();
        assert!(cut.contains("truncated"), "{cut}");
        // Start and end markers intact, scan data corrupted.
        let mut broken = jpeg.clone();
        for b in &mut broken[2..40] {
            *b = 0x00;
        }
        assert!(mjpeg_to_frame(&broken).is_err());
        assert!(mjpeg_to_frame(b"not a jpeg")
            .unwrap_err()
            .contains("start marker"));
    }
}
