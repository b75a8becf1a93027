//! The fuzz targets' bodies, one public fn per target, each taking the raw
//! fuzz input. Shared by the targets (fuzz_targets/*.rs, one line each) and
//! by the normal test suite (tests/fuzz_regressions.rs), which feeds every
//! file of tests/data/fuzz-regressions/<target>/ to the same function, so a
//! crash found here stays fixed. Each fn returns normally for any input: a
//! parser's `Err` is fine, a panic (or a failed check of what the parser
//! returned) is the bug.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::Path;

use ferd::config::{DetectorConfig, Probability};
use ferd::sink::spool::decode_segment;
use ferd::source::v4l2::{grey_to_frame, mjpeg_to_frame, yuyv_to_frame};
use ferd::source::{FrameSource, Y4mSource};
use ferd::vision::detector::PostProcess;
use ferd::vision::model::DetectorSpec;

/// The target names, as in fuzz/Cargo.toml and the folders of seeds and
/// regressions.
pub const TARGETS: [&str; 8] = [
    "y4m",
    "frame_convert",
    "image",
    "config",
    "config_mqtt",
    "manifest",
    "detector_post",
    "spool",
];

/// Runs target `name` on `data`; panics on an unknown name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "y4m" => y4m(data),
        "frame_convert" => frame_convert(data),
        "image" => image(data),
        "config" => config(data),
        "config_mqtt" => config_mqtt(data),
        "manifest" => manifest(data),
        "detector_post" => detector_post(data),
        "spool" => spool(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// The `.y4m` reader: header line, FRAME markers and frame payloads, from
/// arbitrary bytes through the same reader `ferd` uses on files and pipes.
pub fn y4m(data: &[u8]) {
    let reader = Cursor::new(data.to_vec());
    let mut clip = match Y4mSource::from_reader(reader, Path::new("fuzz.y4m")) {
        Ok(clip) => clip,
        Err(e) => {
            // Every error names the input.
            assert!(e.to_string().starts_with("fuzz.y4m: "), "{e}");
            return;
        }
    };
    let _ = clip.frame_interval();
    let _ = clip.describe();
    // A broken stream ends after its error; a good one ends with the input
    // (each frame needs at least one byte), so this loop terminates.
    while let Some(item) = clip.next_frame() {
        match item {
            Ok(frame) => {
                let h = clip.header();
                assert_eq!((frame.width, frame.height), (h.width, h.height));
            }
            Err(e) => assert!(e.to_string().starts_with("fuzz.y4m: "), "{e}"),
        }
    }
}

/// The V4L2 frame converters (YUYV, GREY, MJPEG) fed arbitrary driver
/// buffers and sizes. Input: a selector byte, then width, height and
/// stride as little-endian u16 (YUYV and GREY only), then the buffer.
pub fn frame_convert(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let frame = match which % 3 {
        0 | 1 => {
            if rest.len() < 6 {
                return;
            }
            let u16_at = |i: usize| u32::from(u16::from_le_bytes([rest[i], rest[i + 1]]));
            let (width, height, stride) = (u16_at(0), u16_at(2), u16_at(4));
            let buffer = &rest[6..];
            if which % 3 == 0 {
                yuyv_to_frame(buffer, width, height, stride)
            } else {
                grey_to_frame(buffer, width, height, stride)
            }
        }
        _ => mjpeg_to_frame(rest),
    };
    if let Ok(f) = frame {
        // A frame that converts is a well-formed one.
        assert_eq!(Some(f.data.len()), f.format.buffer_len(f.width, f.height));
    }
}

/// The still-image reader (PNG, JPEG) on arbitrary file contents.
pub fn image(data: &[u8]) {
    if let Ok(f) = ferd::source::decode_image_bytes(data) {
        assert!(
            f.width <= ferd::source::MAX_IMAGE_SIDE && f.height <= ferd::source::MAX_IMAGE_SIDE
        );
        assert_eq!(Some(f.data.len()), f.format.buffer_len(f.width, f.height));
    }
}

/// The config file parser (`ferd.toml`), whole files.
pub fn config(data: &[u8]) {
    // Config::load refuses non-UTF-8 before parsing; the parser sees text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = ferd::config::Config::parse(text, Path::new("fuzz.toml"), Path::new("/fuzz")) {
        // Every error names the file.
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
}

/// The config parser's `[mqtt]` table: the input is the table's body
/// (url, client id, topics, TLS files, credentials, intervals), so that
/// libFuzzer spends its time in the MQTT keys and their checks.
pub fn config_mqtt(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let text = format!("[mqtt]\n{body}");
    if let Err(e) = ferd::config::Config::parse(&text, Path::new("fuzz.toml"), Path::new("/fuzz")) {
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
}

/// The model manifest parser and its checks (`models/*.toml`).
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = ferd::vision::Manifest::parse(text, Path::new("fuzz-model.toml")) {
        assert!(e.to_string().contains("fuzz-model.toml"), "{e}");
    }
}

/// The face detector's post-processing (box decoding, thresholds, NMS,
/// clipping) fed arbitrary output tensors: wrong shapes, short buffers,
/// NaN, infinities, huge values.
///
/// Input: input width and height (1..=64 px) and frame width and height
/// (1..=4096 px) from the first bytes, a score threshold byte, an output
/// count; per output a shape byte (its low two bits pick the last
/// dimension 2, 4 or 10 with [1, A, k], or a free shape of three bytes
/// that follow), then f32 values (little endian) from the rest of the
/// input, repeated to fill each shape unless the shape byte's high bit
/// asks for the bytes as they are (a short output).
pub fn detector_post(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (head, rest) = data.split_at(8);
    let input_w = 1 + (head[0] % 64) as usize;
    let input_h = 1 + (head[1] % 64) as usize;
    let frame_w = 1 + u32::from(u16::from_le_bytes([head[2], head[3]]) % 4096);
    let frame_h = 1 + u32::from(u16::from_le_bytes([head[4], head[5]]) % 4096);
    let cfg = DetectorConfig {
        min_score: Probability(f32::from(head[6]) / 255.0),
        ..DetectorConfig::default()
    };
    // The shipped detector's anchors (models/retinaface-mnet025.toml).
    let spec = DetectorSpec {
        strides: vec![8, 16, 32],
        anchor_sizes: vec![vec![16.0, 32.0], vec![64.0, 128.0], vec![256.0, 512.0]],
        variance: [0.1, 0.2],
    };
    let post = PostProcess::new(&spec, input_w, input_h, &cfg).expect("the shipped anchors");
    let a = post.anchor_count();
    let count = (head[7] % 5) as usize;

    // Shapes first, then the values that fill them.
    let mut pos = 0;
    let mut shapes = Vec::new();
    for _ in 0..count {
        let Some(&s) = rest.get(pos) else { break };
        pos += 1;
        let shape = match s & 3 {
            0 => vec![1, a, 2],
            1 => vec![1, a, 4],
            2 => vec![1, a, 10],
            _ => {
                let Some(dims) = rest.get(pos..pos + 3) else {
                    break;
                };
                pos += 3;
                dims.iter().map(|&d| d as usize).collect()
            }
        };
        shapes.push((shape, s & 0x80 != 0));
    }
    let floats: Vec<f32> = rest[pos..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let values: Vec<Vec<f32>> = shapes
        .iter()
        .map(|(shape, short)| {
            // At most 64 Ki values: a free shape of 255³ would spend the run
            // filling 64 MB; the post-processing refuses it by shape alone.
            let n = shape.iter().product::<usize>().min(1 << 16);
            if *short || floats.is_empty() {
                floats.iter().copied().take(n).collect()
            } else {
                floats.iter().copied().cycle().take(n).collect()
            }
        })
        .collect();
    let outputs: Vec<(&[usize], &[f32])> = shapes
        .iter()
        .zip(&values)
        .map(|((s, _), v)| (s.as_slice(), v.as_slice()))
        .collect();

    let mut faces = Vec::new();
    if post.run(&outputs, frame_w, frame_h, &mut faces).is_ok() {
        assert!(faces.len() <= cfg.max_faces.0 as usize);
        for f in &faces {
            // Finite, clipped to the frame, above the threshold.
            let b = f.bbox;
            let values = [b.x, b.y, b.w, b.h, f.score];
            assert!(values.iter().all(|v| v.is_finite()), "{f:?}");
            assert!(
                b.x >= 0.0 && b.y >= 0.0 && b.w >= 0.0 && b.h >= 0.0,
                "{f:?}"
            );
            assert!(b.x + b.w <= frame_w as f32 * 1.0001, "{f:?}");
            assert!(b.y + b.h <= frame_h as f32 * 1.0001, "{f:?}");
            assert!(f.score >= cfg.min_score.0, "{f:?}");
            assert!(f.landmarks.iter().flatten().all(|v| v.is_finite()), "{f:?}");
        }
    }
}

/// The MQTT spool's segment decoder on arbitrary segment files (torn
/// writes, bit rot, foreign files in the spool folder).
pub fn spool(data: &[u8]) {
    let d = decode_segment(data);
    // The valid prefix is made of the records, back to back, ids rising.
    assert!(d.valid_len <= data.len());
    let mut end = 0;
    let mut last_id = 0;
    for r in &d.records {
        assert_eq!(r.offset, end);
        assert!(r.id > last_id);
        end = r.offset + r.len;
        last_id = r.id;
    }
    assert_eq!(end, d.valid_len);
}
