//! Expression classification of a face crop.
//!
//! The crop is taken in one pass straight from the frame: a square around
//! the detector's box, enlarged by a margin, rotated so that the eyes are
//! level, supersampled down to the model's input and normalised as the
//! manifest says: one grey plane for a `grey` model, three colour planes in
//! the model's order for an `rgb` or `bgr` one, so a retrained colour model
//! is a file swap with a manifest that says so. The same sampler serves
//! `ferd eval`, which feeds whole dataset images, so evaluation measures
//! the preprocessing the device runs.

use std::path::Path;

use super::detector::Face;
use super::model::{ColorOrder, InputSpec, LoadedModel, ModelError, OutputKind, Task};
use super::worker::ModelWorker;
use crate::config::ClassifierConfig;
use crate::expression::Probs;
use crate::frame::{Frame, Sampler};

/// Largest supersampling factor per axis when shrinking a big face.
const MAX_SUPERSAMPLE: usize = 4;

/// A square region of a frame, possibly rotated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    /// Centre x in frame pixels.
    pub cx: f32,
    /// Centre y in frame pixels.
    pub cy: f32,
    /// Side length in frame pixels.
    pub side: f32,
    /// Rotation in radians (the crop's x axis relative to the frame's).
    pub angle: f32,
}

impl Crop {
    /// The crop for a detected face: its box enlarged by `margin`, turned
    /// by the eye line when `align` is set.
    pub fn for_face(face: &Face, margin: f32, align: bool) -> Crop {
        let (cx, cy) = face.bbox.center();
        let side = face.bbox.w.max(face.bbox.h) * (1.0 + margin);
        let angle = if align {
            let [r, l] = [face.landmarks[0], face.landmarks[1]];
            let a = (l[1] - r[1]).atan2(l[0] - r[0]);
            // Landmarks of a poor detection can be wild; never turn a face
            // upside down because of one.
            if a.abs() <= std::f32::consts::FRAC_PI_4 {
                a
            } else {
                0.0
            }
        } else {
            0.0
        };
        Crop {
            cx,
            cy,
            side,
            angle,
        }
    }

    /// The whole frame, as a centred square (for pre-cropped face images).
    pub fn whole(frame: &Frame) -> Crop {
        Crop {
            cx: frame.width as f32 / 2.0,
            cy: frame.height as f32 / 2.0,
            side: frame.width.max(frame.height) as f32,
            angle: 0.0,
        }
    }
}

/// The expression classifier.
pub struct Classifier {
    model: LoadedModel,
    margin: f32,
    align: bool,
    /// A second thread classifying every other face of a frame
    /// ([`Classifier::with_thread`]); `None`: all on the calling thread.
    second: Option<ModelWorker>,
}

impl Classifier {
    /// Loads the classifier named by `manifest`.
    pub fn load(manifest: &Path, cfg: &ClassifierConfig) -> Result<Classifier, ModelError> {
        // The manifest check requires a fixed input shape for expression
        // models, so no size is given.
        let model = LoadedModel::load(manifest, Task::Expression, None)?;
        Ok(Classifier {
            model,
            margin: cfg.margin.0,
            align: cfg.align,
            second: None,
        })
    }

    /// Classifies every other face of a frame on a thread of its own from
    /// now on ([`Classifier::classify_faces`]), while the calling thread
    /// classifies the rest. The results are the same as without (the same
    /// plan on the same input).
    pub fn with_thread(mut self) -> Result<Classifier, ModelError> {
        let twin = self.model.twin()?;
        self.second = Some(ModelWorker::start(
            vec![twin],
            "ferd-classify",
            copy_first_output,
        )?);
        Ok(self)
    }

    /// Whether faces are classified on two threads.
    pub fn has_thread(&self) -> bool {
        self.second.is_some()
    }

    /// Classifies every face of `faces` into `out` (cleared first, its
    /// allocation kept), in order: two at a time when the classifier has
    /// its second thread.
    pub fn classify_faces(
        &self,
        frame: &Frame,
        faces: &[Face],
        out: &mut Vec<Probs>,
    ) -> Result<(), ModelError> {
        out.clear();
        let Some(worker) = &self.second else {
            for face in faces {
                out.push(self.classify_face(frame, face)?);
            }
            return Ok(());
        };
        for pair in faces.chunks(2) {
            let [a, b] = pair else {
                out.push(self.classify_face(frame, &pair[0])?);
                continue;
            };
            let crop = Crop::for_face(b, self.margin, self.align);
            worker.post(0, |input| self.fill(frame, &crop, input))?;
            let first = self.classify_face(frame, a);
            // Waited for even when the first failed: the next pair posts
            // again.
            let second = worker.wait(|scores| self.probs(scores));
            out.push(first?);
            out.push(second??);
        }
        Ok(())
    }

    /// The manifest of the loaded model.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// Classifies a detected face.
    pub fn classify_face(&self, frame: &Frame, face: &Face) -> Result<Probs, ModelError> {
        self.classify(frame, &Crop::for_face(face, self.margin, self.align))
    }

    /// Classifies a region of a frame.
    pub fn classify(&self, frame: &Frame, crop: &Crop) -> Result<Probs, ModelError> {
        self.model.run_with(
            |input| self.fill(frame, crop, input),
            |outputs| self.probs(first_output(&self.model.path, outputs)?),
        )
    }

    /// The model's input for `crop` of `frame`.
    fn fill(&self, frame: &Frame, crop: &Crop, input: &mut [f32]) {
        let shape = &self.model.input_shape;
        // Four dimensions (the manifest check), height and width fixed.
        crop_into(
            &self.model.manifest.input,
            shape[3],
            shape[2],
            frame,
            crop,
            input,
        )
    }

    /// The probabilities from the model's output values: exactly seven,
    /// all finite.
    fn probs(&self, scores: &[f32]) -> Result<Probs, ModelError> {
        let bad = |message: String| ModelError::Shape {
            path: self.model.path.clone(),
            message,
        };
        let Ok(raw) = <[f32; 7]>::try_from(scores) else {
            return Err(bad(format!(
                "output has {} values, expected 7",
                scores.len()
            )));
        };
        // NaN or infinite scores would pass through softmax as NaN and
        // silently never match a rule; a broken model is an error instead.
        if raw.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!("output is not finite: {raw:?}")));
        }
        Ok(match self.model.manifest.output.kind {
            OutputKind::Probabilities => Probs(raw),
            _ => Probs::from_logits(&raw),
        })
    }
}

/// The model's first output, as f32 values (also the second thread's
/// [`super::worker::PickOutput`]).
fn first_output<'a>(
    path: &Path,
    outputs: &'a [tract_onnx::prelude::TValue],
) -> Result<&'a [f32], ModelError> {
    let out = outputs.first().ok_or_else(|| ModelError::Shape {
        path: path.to_path_buf(),
        message: "model has no output".into(),
    })?;
    super::model::output_floats(path, out)
}

/// [`first_output`]'s values, copied: the classifier thread's
/// [`super::worker::PickOutput`].
fn copy_first_output(
    path: &Path,
    outputs: &[tract_onnx::prelude::TValue],
    out: &mut Vec<f32>,
) -> Result<(), ModelError> {
    out.extend_from_slice(first_output(path, outputs)?);
    Ok(())
}

/// Samples the crop into a normalised `[1, C, h, w]` input (`out`, C × h ×
/// w values): one plane of luma for a `grey` model, else three planes in
/// the model's channel order.
pub fn crop_into(
    spec: &InputSpec,
    w: usize,
    h: usize,
    frame: &Frame,
    crop: &Crop,
    out: &mut [f32],
) {
    // `mean` and `std` have one entry per channel: the manifest check.
    let norm = |c: usize| move |v: f32| (v * spec.scale - spec.mean[c]) / spec.std[c];
    match spec.color {
        ColorOrder::Grey => sample_grey(frame, crop, w, h, norm(0), out),
        ColorOrder::Rgb | ColorOrder::Bgr => {
            let order = if spec.color == ColorOrder::Bgr {
                [2, 1, 0]
            } else {
                [0, 1, 2]
            };
            let (first, rest) = out.split_at_mut(w * h);
            let (second, third) = rest.split_at_mut(w * h);
            let mut planes = [first, second, third];
            let sampler = Sampler::new(frame);
            let mut i = 0;
            supersample(
                crop,
                w,
                h,
                |x, y| sampler.rgb(x, y),
                |rgb| {
                    for (c, plane) in planes.iter_mut().enumerate() {
                        plane[i] = norm(c)(rgb[order[c]]);
                    }
                    i += 1;
                },
            );
        }
    }
}

/// Samples a rotated square of the frame into a `w` × `h` grey image
/// (`out`, at least `w` × `h` values),
/// averaging `k`×`k` bilinear samples per output pixel when shrinking so
/// that a large face is not aliased. `map` turns 0..255 into model units.
pub fn sample_grey(
    frame: &Frame,
    crop: &Crop,
    w: usize,
    h: usize,
    map: impl Fn(f32) -> f32,
    out: &mut [f32],
) {
    let sampler = Sampler::new(frame);
    let mut i = 0;
    let mut emit = |v: f32| {
        out[i] = map(v);
        i += 1;
    };
    #[cfg(target_arch = "x86_64")]
    if sampler.gathers_luma() && std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2 and the frame suits the gathers, both
        // checked just above.
        unsafe { supersample_luma_avx2(&sampler, crop, w, h, emit) };
        return;
    }
    supersample(crop, w, h, |x, y| [sampler.luma(x, y)], |[v]| emit(v));
}

/// Where [`supersample`]'s samples fall: the steps of the output grid in
/// crop pixels, the samples per axis `k` and where they sit across an
/// output pixel, and the crop's turn.
struct Grid {
    step_x: f32,
    step_y: f32,
    k: usize,
    /// Where the k samples sit across an output pixel, in pixels: worked
    /// out once, not a division per sample.
    within: [f32; MAX_SUPERSAMPLE],
    sin: f32,
    cos: f32,
    half: f32,
    inv_k2: f32,
}

impl Grid {
    fn new(crop: &Crop, w: usize, h: usize) -> Grid {
        let step_x = crop.side / w as f32;
        let step_y = crop.side / h as f32;
        let k = (step_x.max(step_y).ceil() as usize).clamp(1, MAX_SUPERSAMPLE);
        let (sin, cos) = crop.angle.sin_cos();
        let mut within = [0.0f32; MAX_SUPERSAMPLE];
        for (s, at) in within.iter_mut().enumerate() {
            *at = (s as f32 + 0.5) / k as f32;
        }
        Grid {
            step_x,
            step_y,
            k,
            within,
            sin,
            cos,
            half: crop.side / 2.0,
            inv_k2: 1.0 / (k * k) as f32,
        }
    }

    fn within(&self) -> &[f32] {
        &self.within[..self.k]
    }

    /// A sample row's offset from the crop centre, turned: `dy` × sin and
    /// `dy` × cos for sample `sv` of output row `v`.
    #[inline]
    fn row(&self, v: usize, sv: f32) -> (f32, f32) {
        // Offset from the crop centre in crop pixels.
        let dy = (v as f32 + sv) * self.step_y - self.half;
        (dy * self.sin, dy * self.cos)
    }
}

/// The sampling grid shared by the grey and colour crops: for each output
/// pixel in row order, the mean of `k`×`k` values of `sample` (N channels)
/// over the rotated square, handed to `emit`.
pub(crate) fn supersample<const N: usize>(
    crop: &Crop,
    w: usize,
    h: usize,
    sample: impl Fn(f32, f32) -> [f32; N],
    mut emit: impl FnMut([f32; N]),
) {
    let g = Grid::new(crop, w, h);
    for v in 0..h {
        for u in 0..w {
            let mut acc = [0.0; N];
            for &sv in g.within() {
                let (dy_sin, dy_cos) = g.row(v, sv);
                for &su in g.within() {
                    let dx = (u as f32 + su) * g.step_x - g.half;
                    let x = crop.cx + dx * g.cos - dy_sin - 0.5;
                    let y = crop.cy + dx * g.sin + dy_cos - 0.5;
                    for (a, s) in acc.iter_mut().zip(sample(x, y)) {
                        *a += s;
                    }
                }
            }
            emit(acc.map(|a| a * g.inv_k2));
        }
    }
}

/// [`supersample`] of luma with eight output pixels of a row at a time
/// ([`Sampler::luma8_avx2`]): the same positions, sums and values bit for
/// bit, each lane the scalar walk's operations in its order. A row's last
/// lanes past `w` sample points beside the crop (clamped to the frame like
/// any) and are dropped.
///
/// # Safety
/// The CPU must support AVX2 and `sampler.gathers_luma()` must hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn supersample_luma_avx2(
    sampler: &Sampler,
    crop: &Crop,
    w: usize,
    h: usize,
    mut emit: impl FnMut(f32),
) {
    use std::arch::x86_64::*;
    let g = Grid::new(crop, w, h);
    let set = _mm256_set1_ps;
    let lanes = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
    let mut means = [0.0f32; 8];
    for v in 0..h {
        for u0 in (0..w).step_by(8) {
            // `u as f32` lane by lane: integers, exact in f32.
            let u = _mm256_add_ps(set(u0 as f32), lanes);
            let mut acc = _mm256_setzero_ps();
            for &sv in g.within() {
                let (dy_sin, dy_cos) = g.row(v, sv);
                for &su in g.within() {
                    let dx = _mm256_sub_ps(
                        _mm256_mul_ps(_mm256_add_ps(u, set(su)), set(g.step_x)),
                        set(g.half),
                    );
                    let x = _mm256_add_ps(set(crop.cx), _mm256_mul_ps(dx, set(g.cos)));
                    let x = _mm256_sub_ps(_mm256_sub_ps(x, set(dy_sin)), set(0.5));
                    let y = _mm256_add_ps(set(crop.cy), _mm256_mul_ps(dx, set(g.sin)));
                    let y = _mm256_sub_ps(_mm256_add_ps(y, set(dy_cos)), set(0.5));
                    acc = _mm256_add_ps(acc, sampler.luma8_avx2(x, y));
                }
            }
            _mm256_storeu_ps(means.as_mut_ptr(), _mm256_mul_ps(acc, set(g.inv_k2)));
            for &m in &means[..(w - u0).min(8)] {
                emit(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;

    /// The second thread changes where faces are classified, not what
    /// comes out: with it and without, the same probabilities in the same
    /// order, for one face, a pair, and an odd count (the last face on the
    /// calling thread), frame after frame.
    #[test]
    fn two_threads_classify_exactly_what_one_does() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = crate::config::Config::load(&root.join("systemd/ferd.toml")).unwrap();
        let detector =
            super::super::Detector::load(&config.detector_model().unwrap(), &config.detector)
                .unwrap();
        let manifest = config.classifier_model().unwrap();
        let one = Classifier::load(&manifest, &config.classifier).unwrap();
        let two = Classifier::load(&manifest, &config.classifier)
            .unwrap()
            .with_thread()
            .unwrap();
        assert!(two.has_thread() && !one.has_thread());
        let frame = crate::source::open(&root.join("tests/data/faces/two_faces.png"))
            .unwrap()
            .next_frame()
            .unwrap()
            .unwrap();
        let found = detector.detect(&frame).unwrap();
        assert_eq!(found.len(), 2);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for faces in [&found[..1], &found[..], &[found[0], found[1], found[0]][..]] {
            for _ in 0..2 {
                one.classify_faces(&frame, faces, &mut a).unwrap();
                two.classify_faces(&frame, faces, &mut b).unwrap();
                assert_eq!(a.len(), faces.len());
                assert_eq!(a, b, "{} faces", faces.len());
            }
        }
        // The two faces differ, so a swap of results would show.
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn whole_crop_of_same_size_is_identity() {
        let data: Vec<u8> = (0..48 * 48).map(|i| (i % 251) as u8).collect();
        let f = Frame::new(48, 48, PixelFormat::Grey, data.clone());
        let mut out = vec![0.0; 48 * 48];
        sample_grey(&f, &Crop::whole(&f), 48, 48, |v| v, &mut out);
        for (a, b) in out.iter().zip(&data) {
            assert!((a - *b as f32).abs() < 1e-3);
        }
    }

    /// The grey crops' fast walk (eight lanes with gathers, where the CPU
    /// has AVX2) gives the scalar walk's values bit for bit: grey and I420
    /// frames of odd and even sides, crops turned, shrunk by every
    /// supersampling factor, enlarged, hanging over every edge and corner
    /// (the clamped taps, and a grey frame's last pixels, read one by
    /// one), output widths that are not a multiple of eight, and crops
    /// whose positions are NaN.
    #[test]
    fn grey_crops_are_the_scalar_walks_values_bit_for_bit() {
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let frames = [
            (PixelFormat::Grey, 61, 47),
            (PixelFormat::Grey, 640, 480),
            (PixelFormat::I420, 64, 48),
            (PixelFormat::I420, 67, 45),
        ]
        .map(|(format, w, h)| {
            let len = format.buffer_len(w, h).unwrap();
            Frame::new(w, h, format, (0..len).map(|_| next() as u8).collect())
        });
        let mut crops = Vec::new();
        for f in &frames {
            let (w, h) = (f.width as f32, f.height as f32);
            for side in [5.0, 30.0, 48.0, 100.0, 150.0, 190.0, 900.0] {
                for (cx, cy) in [
                    (w / 2.0, h / 2.0),
                    (0.0, 0.0),
                    (w, h),
                    (w - 1.3, 2.7),
                    (-40.0, h + 9.0),
                ] {
                    let angle = (next() % 1000) as f32 / 1000.0 - 0.5;
                    crops.push((
                        f,
                        Crop {
                            cx,
                            cy,
                            side,
                            angle,
                        },
                    ));
                }
            }
            crops.push((
                f,
                Crop {
                    cx: f32::NAN,
                    cy: 3.0,
                    side: 40.0,
                    angle: 0.1,
                },
            ));
            crops.push((
                f,
                Crop {
                    cx: 3.0,
                    cy: 3.0,
                    side: f32::NAN,
                    angle: 0.0,
                },
            ));
        }
        for (f, crop) in crops {
            for (w, h) in [(48, 48), (13, 7), (64, 64)] {
                let mut fast = vec![0.0; w * h];
                sample_grey(f, &crop, w, h, |v| v * 0.5 - 1.0, &mut fast);
                let mut reference = Vec::with_capacity(w * h);
                supersample(
                    &crop,
                    w,
                    h,
                    |x, y| [f.luma_bilinear(x, y)],
                    |[v]| reference.push(v * 0.5 - 1.0),
                );
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&fast),
                    bits(&reference),
                    "{:?} {w}×{h} {crop:?}",
                    f.format
                );
            }
        }
    }

    #[test]
    fn shrinking_averages_instead_of_aliasing() {
        // A 1-pixel checkerboard shrunk 4x must come out mid grey.
        let data: Vec<u8> = (0..64 * 64)
            .map(|i| if (i % 64 + i / 64) % 2 == 0 { 0 } else { 200 })
            .collect();
        let f = Frame::new(64, 64, PixelFormat::Grey, data);
        let mut out = vec![0.0; 16 * 16];
        sample_grey(&f, &Crop::whole(&f), 16, 16, |v| v, &mut out);
        for v in out {
            assert!((v - 100.0).abs() < 1.0, "{v}");
        }
    }

    fn spec(color: ColorOrder) -> InputSpec {
        let n = color.channels();
        InputSpec {
            shape: vec![1, n, 4, 4],
            layout: "NCHW".into(),
            color,
            scale: 1.0 / 255.0,
            mean: vec![0.0; n],
            std: vec![1.0; n],
        }
    }

    #[test]
    fn colour_models_get_three_planes_in_their_order() {
        // Pure red: R plane 1, G and B planes 0.
        let red: Vec<u8> = [255u8, 0, 0].repeat(8 * 8);
        let f = Frame::new(8, 8, PixelFormat::Rgb, red);
        let planes = |color: ColorOrder| {
            let mut v = vec![f32::NAN; color.channels() * 16];
            crop_into(&spec(color), 4, 4, &f, &Crop::whole(&f), &mut v);
            assert!(v.iter().all(|x| x.is_finite()), "every value written");
            (0..color.channels())
                .map(|c| v[c * 16 + 2 * 4 + 1])
                .collect::<Vec<f32>>()
        };
        let near = |a: Vec<f32>, b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(near(planes(ColorOrder::Rgb), &[1.0, 0.0, 0.0]));
        assert!(near(planes(ColorOrder::Bgr), &[0.0, 0.0, 1.0]));
        assert!(near(planes(ColorOrder::Grey), &[0.299]));
    }

    #[test]
    fn rotated_crop_follows_the_eye_line() {
        use crate::vision::detector::BBox;
        let face = Face {
            bbox: BBox {
                x: 0.0,
                y: 0.0,
                w: 10.0,
                h: 10.0,
            },
            score: 1.0,
            landmarks: [[2.0, 2.0], [8.0, 8.0], [5.0, 5.0], [3.0, 7.0], [7.0, 7.0]],
        };
        let c = Crop::for_face(&face, 0.0, true);
        assert!((c.angle - std::f32::consts::FRAC_PI_4).abs() < 1e-6);
        assert_eq!(Crop::for_face(&face, 0.5, false).side, 15.0);
    }
}
