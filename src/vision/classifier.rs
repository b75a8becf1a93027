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
use crate::config::ClassifierConfig;
use crate::expression::Probs;
use crate::frame::Frame;

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
        })
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
        let shape = &self.model.input_shape;
        let spec = &self.model.manifest.input;
        let bad = |message: String| ModelError::Shape {
            path: self.model.path.clone(),
            message,
        };
        // Four dimensions (the manifest check), height and width fixed.
        let raw = self.model.run_with(
            |input| crop_into(spec, shape[3], shape[2], frame, crop, input),
            |outputs| {
                let out = outputs
                    .first()
                    .ok_or_else(|| bad("model has no output".into()))?;
                let view = out
                    .to_plain_array_view::<f32>()
                    .map_err(|e| bad(format!("output is not f32: {e}")))?;
                if view.len() != 7 {
                    return Err(bad(format!("output has {} values, expected 7", view.len())));
                }
                let mut raw = [0f32; 7];
                for (r, v) in raw.iter_mut().zip(view.iter()) {
                    *r = *v;
                }
                Ok(raw)
            },
        )?;
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
            let mut i = 0;
            supersample(
                crop,
                w,
                h,
                |x, y| frame.rgb_bilinear(x, y),
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
    let mut i = 0;
    supersample(
        crop,
        w,
        h,
        |x, y| [frame.luma_bilinear(x, y)],
        |[v]| {
            out[i] = map(v);
            i += 1;
        },
    );
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
    let step_x = crop.side / w as f32;
    let step_y = crop.side / h as f32;
    let k = (step_x.max(step_y).ceil() as usize).clamp(1, MAX_SUPERSAMPLE);
    let (sin, cos) = crop.angle.sin_cos();
    let inv_k2 = 1.0 / (k * k) as f32;
    for v in 0..h {
        for u in 0..w {
            let mut acc = [0.0; N];
            for sv in 0..k {
                for su in 0..k {
                    // Offset from the crop centre in crop pixels.
                    let dx = (u as f32 + (su as f32 + 0.5) / k as f32) * step_x - crop.side / 2.0;
                    let dy = (v as f32 + (sv as f32 + 0.5) / k as f32) * step_y - crop.side / 2.0;
                    let x = crop.cx + dx * cos - dy * sin - 0.5;
                    let y = crop.cy + dx * sin + dy * cos - 0.5;
                    for (a, s) in acc.iter_mut().zip(sample(x, y)) {
                        *a += s;
                    }
                }
            }
            emit(acc.map(|a| a * inv_k2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;

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
