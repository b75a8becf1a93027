//! Per-stage benches: pixel conversion, detector, classifier, landmarks,
//! tracker + rules, each a criterion group of its own.
//!
//! Run with `cargo bench --bench stages` (release profile); one group with
//! `cargo bench --bench stages -- detector`. The models are those of the
//! packaged config (systemd/ferd.toml, detector input 320×240) plus an
//! `eyes_closed_for` rule, which brings in the landmark stage; the face is
//! tests/data/faces/one_face.png (320×240 grey). Times are one call on one
//! face; tract runs on the calling thread.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use ferd::config::Config;
use ferd::frame::{Frame, PixelFormat, Sampler};
use ferd::rules::Rules;
use ferd::track::Tracker;
use ferd::vision::classifier::{crop_into, Crop};
use ferd::vision::landmarks::{roi_for_face, Landmarker};
use ferd::vision::{BBox, Classifier, Detector, Face, Manifest, Observation};

/// The packaged config with one landmark rule added.
const EXTRA_RULE: &str = "\n[[rule]]\nname = \"asleep\"\neyes_closed_for = 2.0\n";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config() -> Config {
    let path = root().join("systemd/ferd.toml");
    let text = std::fs::read_to_string(&path).expect("reading systemd/ferd.toml");
    let config = Config::parse(&(text + EXTRA_RULE), &path, &root().join("systemd"))
        .expect("parsing systemd/ferd.toml with the extra rule");
    assert!(config.needs_landmarks(), "the extra rule needs landmarks");
    config
}

/// The test face: 320×240 grey, one face.
fn one_face() -> Frame {
    ferd::source::decode_image(&root().join("tests/data/faces/one_face.png"))
        .expect("decoding tests/data/faces/one_face.png")
}

/// `grey` scaled ×2 (nearest) and packed as YUYV with neutral chroma (a
/// VGA camera's buffer), with its line stride.
fn yuyv_2x(grey: &Frame) -> (Vec<u8>, u32, u32, u32) {
    assert_eq!(grey.format, PixelFormat::Grey);
    let (w, h) = (grey.width * 2, grey.height * 2);
    let mut data = Vec::with_capacity((w * h * 2) as usize);
    for y in 0..h {
        for x in 0..w {
            let g = grey.data[((y / 2) * grey.width + x / 2) as usize];
            // Full-range grey to limited-range luma, U or V alternating.
            let luma = 16 + (g as u32 * 219 / 255) as u8;
            data.extend_from_slice(&[luma, 128]);
        }
    }
    (data, w, h, w * 2)
}

/// `yuyv_2x` as an I420 frame (what the V4L2 source makes of it).
fn i420_2x(grey: &Frame) -> Frame {
    let (w, h) = (grey.width as usize * 2, grey.height as usize * 2);
    let mut data = vec![128u8; PixelFormat::I420.buffer_len(w as u32, h as u32).unwrap()];
    for y in 0..h {
        for x in 0..w {
            let g = grey.data[(y / 2) * grey.width as usize + x / 2];
            data[y * w + x] = 16 + (g as u32 * 219 / 255) as u8;
        }
    }
    Frame::new(w as u32, h as u32, PixelFormat::I420, data)
}

fn load_detector(config: &Config) -> Detector {
    let path = config.detector_model().expect("detector manifest");
    Detector::load(&path, &config.detector).expect("loading the detector")
}

/// The one face of `frame`, by the detector.
fn detect_one(detector: &Detector, frame: &Frame) -> Face {
    let mut faces = Vec::new();
    detector
        .detect_into(frame, &mut faces)
        .expect("detector run");
    assert!(!faces.is_empty(), "no face found in {}", frame.origin);
    faces[0]
}

fn load_landmarker(config: &Config) -> Landmarker {
    // The repository's models/ (not an installed package's).
    let models = [root().join("models")];
    let l = &config.landmarks;
    let find = |key: &str, p: &Path| config.find_model_in(key, p, &models).expect(key);
    Landmarker::load(
        &find("landmarks.mesh_model", &l.mesh_model),
        &find("landmarks.iris_model", &l.iris_model),
        &find("landmarks.geometry", &l.geometry),
    )
    .expect("loading the landmark models")
}

fn pixel_conversion(c: &mut Criterion) {
    let grey = one_face();
    let i420 = i420_2x(&grey);
    let mut g = c.benchmark_group("pixel_conversion");

    #[cfg(feature = "v4l2")]
    {
        use ferd::source::v4l2::{grey_to_frame, yuyv_to_frame};
        let (yuyv, w, h, stride) = yuyv_2x(&grey);
        g.throughput(Throughput::Elements(u64::from(w * h)));
        g.bench_function("yuyv_to_i420/640x480", |b| {
            b.iter(|| yuyv_to_frame(black_box(&yuyv), w, h, stride).unwrap())
        });
        let grey_buf: Vec<u8> = yuyv.iter().step_by(2).copied().collect();
        g.bench_function("grey_to_frame/640x480", |b| {
            b.iter(|| grey_to_frame(black_box(&grey_buf), w, h, w).unwrap())
        });
    }
    #[cfg(not(feature = "v4l2"))]
    let _ = yuyv_2x;

    // The sampling the detector's letterbox does (private: its cost is
    // also inside detector/detect_into): 640×480 I420 to a 320×240 grid,
    // bilinear RGB, BGR planes, mean subtracted.
    let (iw, ih) = (320usize, 240usize);
    g.throughput(Throughput::Elements((iw * ih) as u64));
    let mut planes = vec![0f32; 3 * iw * ih];
    let inv = i420.width as f32 / iw as f32;
    let mean = [104.0f32, 117.0, 127.0];
    g.bench_function("rgb_bilinear_grid/640x480_i420_to_320x240", |b| {
        b.iter(|| {
            let f = Sampler::new(black_box(&i420));
            f.rgb_grid(
                0..iw,
                0..ih,
                |x| (x as f32 + 0.5) * inv - 0.5,
                |y| (y as f32 + 0.5) * inv - 0.5,
                |x, y, rgb| {
                    for c in 0..3 {
                        planes[c * iw * ih + y * iw + x] = rgb[2 - c] - mean[c];
                    }
                },
            );
            black_box(&planes);
        })
    });
    // The same grid through the halving fast path the whole-frame search
    // takes at this size (`Sampler::rgb_half_row`).
    g.bench_function("rgb_half_rows/640x480_i420_to_320x240", |b| {
        b.iter(|| {
            let f = Sampler::new(black_box(&i420));
            let (first, rest) = planes.split_at_mut(iw * ih);
            let (second, third) = rest.split_at_mut(iw * ih);
            for y in 0..ih {
                let [b, g, r] =
                    [&mut *first, &mut *second, &mut *third].map(|p| &mut p[y * iw..][..iw]);
                assert!(f.rgb_half_row(y, 0, [r, g, b]));
            }
            for (c, p) in planes.chunks_mut(iw * ih).enumerate() {
                for v in p {
                    *v -= mean[c];
                }
            }
            black_box(&planes);
        })
    });
    // The same grid sampled point by point (`Sampler::rgb`), as the crops do.
    g.bench_function("rgb_bilinear_points/640x480_i420_to_320x240", |b| {
        b.iter(|| {
            let f = Sampler::new(black_box(&i420));
            for y in 0..ih {
                let sy = (y as f32 + 0.5) * inv - 0.5;
                for x in 0..iw {
                    let sx = (x as f32 + 0.5) * inv - 0.5;
                    let rgb = f.rgb(sx, sy);
                    for c in 0..3 {
                        planes[c * iw * ih + y * iw + x] = rgb[2 - c] - mean[c];
                    }
                }
            }
            black_box(&planes);
        })
    });
    let mut luma = vec![0f32; iw * ih];
    g.bench_function("luma_bilinear_grid/640x480_i420_to_320x240", |b| {
        b.iter(|| {
            let f = Sampler::new(black_box(&i420));
            for y in 0..ih {
                let sy = (y as f32 + 0.5) * inv - 0.5;
                for x in 0..iw {
                    let sx = (x as f32 + 0.5) * inv - 0.5;
                    luma[y * iw + x] = f.luma(sx, sy);
                }
            }
            black_box(&luma);
        })
    });

    // The classifier's input: the aligned face crop, 48×48 grey,
    // supersampled (public as `classifier::crop_into`).
    let config = config();
    let face = detect_one(&load_detector(&config), &grey);
    let manifest = Manifest::load(&config.classifier_model().expect("classifier manifest"))
        .expect("classifier manifest");
    let spec = &manifest.input;
    let [ah, aw] = spec.spatial_axes();
    let (cw, ch) = (spec.shape[aw], spec.shape[ah]);
    let crop = Crop::for_face(&face, config.classifier.margin.0, config.classifier.align);
    let mut input = vec![0f32; spec.color.channels() * cw * ch];
    g.throughput(Throughput::Elements((cw * ch) as u64));
    g.bench_function(format!("classifier_crop/{cw}x{ch}"), |b| {
        b.iter(|| crop_into(spec, cw, ch, black_box(&grey), &crop, &mut input))
    });
    g.finish();
}

fn detector(c: &mut Criterion) {
    let config = config();
    let mut detector = load_detector(&config);
    let grey = one_face();
    let i420 = i420_2x(&grey);
    let mut faces = Vec::new();
    let mut g = c.benchmark_group("detector");
    g.sampling_mode(SamplingMode::Flat);
    for (name, frame) in [
        ("detect_into/320x240_grey", &grey),
        ("detect_into/640x480_i420", &i420),
    ] {
        detect_one(&detector, frame);
        g.bench_function(name, |b| {
            b.iter(|| detector.detect_into(black_box(frame), &mut faces).unwrap())
        });
    }
    // The searches around a followed face (`[detector] full_frame_every`):
    // each window network once, placed on the 640×480 face's box scaled
    // so that `window_around` picks it (boxes of 30 to 200 frame pixels,
    // which reach every side and level the follower picks). The window
    // networks are loaded beside the whole-frame one, which they leave
    // as it is.
    let manifest = config.detector_model().expect("detector manifest");
    assert!(
        detector
            .load_around(&manifest, &config.detector)
            .expect("loading the window networks"),
        "the packaged detector follows faces"
    );
    let face = detect_one(&detector, &i420);
    let mut seen = Vec::new();
    for side in [30.0f32, 45.0, 60.0, 80.0, 100.0, 140.0, 200.0] {
        let k = side / face.bbox.w.max(face.bbox.h);
        let (cx, cy) = face.bbox.center();
        let (w, h) = (face.bbox.w * k, face.bbox.h * k);
        let bbox = BBox {
            x: cx - w / 2.0,
            y: cy - h / 2.0,
            w,
            h,
        };
        let window = detector.window_around(&i420, &bbox).expect("a window");
        let kind = (window.side(), window.is_coarse());
        if seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        let levels = if window.is_coarse() {
            "coarse"
        } else {
            "all_levels"
        };
        g.bench_function(
            format!("detect_in_window/{}_{levels}", window.side()),
            |b| {
                b.iter(|| {
                    detector
                        .detect_in_window(black_box(&i420), &window, &mut faces)
                        .unwrap()
                })
            },
        );
    }
    g.finish();
}

fn load_classifier(config: &Config) -> Classifier {
    let path = config.classifier_model().expect("classifier manifest");
    Classifier::load(&path, &config.classifier).expect("loading the classifier")
}

fn classifier(c: &mut Criterion) {
    let config = config();
    let frame = one_face();
    let face = detect_one(&load_detector(&config), &frame);
    let classifier = load_classifier(&config);
    let mut g = c.benchmark_group("classifier");
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("classify_face/one_face", |b| {
        b.iter(|| classifier.classify_face(black_box(&frame), &face).unwrap())
    });
    g.finish();
}

fn landmarks(c: &mut Criterion) {
    let config = config();
    let frame = one_face();
    let face = detect_one(&load_detector(&config), &frame);
    let landmarker = load_landmarker(&config);
    let roi = roi_for_face(&face);
    let (mesh, measure) = landmarker.measure(&frame, &roi).expect("landmark run");
    println!(
        "landmarks: presence {:.2}, eyes {:?} (a presence under 0.5 skips the two iris runs)",
        mesh.presence, measure.eyes
    );
    let mut g = c.benchmark_group("landmarks");
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("mesh/one_face", |b| {
        b.iter(|| landmarker.mesh(black_box(&frame), &roi).unwrap())
    });
    g.bench_function("measure/one_face", |b| {
        b.iter(|| landmarker.measure(black_box(&frame), &roi).unwrap())
    });
    g.finish();
}

fn tracker_rules(c: &mut Criterion) {
    let config = config();
    let frame = one_face();
    let face = detect_one(&load_detector(&config), &frame);
    let classifier = load_classifier(&config);
    let probs = classifier
        .classify_face(&frame, &face)
        .expect("classifier run");
    let (_, measure) = load_landmarker(&config)
        .measure(&frame, &roi_for_face(&face))
        .expect("landmark run");
    // Three faces side by side (no overlap): the real one and two copies.
    let observations: Vec<Observation> = (0..3)
        .map(|k| {
            let dx = k as f32 * (face.bbox.w + 10.0);
            let mut face = face;
            face.bbox.x += dx;
            for p in &mut face.landmarks {
                p[0] += dx;
            }
            Observation {
                face,
                probs,
                measure: Some(measure),
            }
        })
        .collect();
    let mut g = c.benchmark_group("tracker_rules");
    g.throughput(Throughput::Elements(observations.len() as u64));
    g.bench_function("update/3_faces", |b| {
        let mut tracker = Tracker::new(&config.tracker);
        let mut rules = Rules::new(&config.rules);
        let (mut track_changes, mut alert_changes) = (Vec::new(), Vec::new());
        // 5 frames a second, time going on from one iteration to the next.
        let mut t = Duration::ZERO;
        b.iter(|| {
            t += Duration::from_millis(200);
            track_changes.clear();
            alert_changes.clear();
            tracker.update(t, black_box(&observations), &mut track_changes);
            rules.update(t, tracker.tracks(), &mut alert_changes);
        })
    });
    g.finish();
}

criterion_group! {
    name = stages;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = pixel_conversion, detector, classifier, landmarks, tracker_rules
}
criterion_main!(stages);
