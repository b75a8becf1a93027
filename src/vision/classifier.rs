//! Expression classification of a face crop.
//!
//! The crop is taken in one pass straight from the frame: a square around
//! the detector's box, enlarged by a margin, rotated so that the eyes are
//! level, supersampled down to the model's input and normalised as the
//! manifest says. The same sampler serves `ferd eval`, which feeds whole
//! dataset images, so evaluation measures the preprocessing the device runs.

use std::path::Path;

use tract_onnx::prelude::*;

use super::detector::Face;
use super::model::{LoadedModel, ModelError, OutputKind, Task};
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
        let model = LoadedModel::load(manifest, Task::Expression, &[])?;
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
        let input = self.input_tensor(frame, crop);
        let outputs = self.model.run(input)?;
        let bad = |message: String| ModelError::Shape {
            path: self.model.path.clone(),
            message,
        };
        let out = outputs
            .first()
            .ok_or_else(|| bad("model has no output".into()))?;
        let view = out
            .to_plain_array_view::<f32>()
            .map_err(|e| bad(format!("output is not f32: {e}")))?;
        let values: Vec<f32> = view.iter().copied().collect();
        let raw: [f32; 7] = values
            .as_slice()
            .try_into()
            .map_err(|_| bad(format!("output has {} values, expected 7", values.len())))?;
        Ok(match self.model.manifest.output.kind {
            OutputKind::Probabilities => Probs(raw),
            _ => Probs::from_logits(&raw),
        })
    }

    /// Samples the crop into the model's normalised `[1, 1, H, W]` input.
    pub fn input_tensor(&self, frame: &Frame, crop: &Crop) -> Tensor {
        let spec = &self.model.manifest.input;
        let shape = &self.model.input_shape;
        let (h, w) = (shape[2], shape[3]);
        let data = sample_grey(frame, crop, w, h, |v| {
            (v * spec.scale - spec.mean[0]) / spec.std[0]
        });
        tract_ndarray::Array4::from_shape_vec((1, 1, h, w), data)
            .expect("buffer length matches the shape")
            .into()
    }
}

/// Samples a rotated square of the frame into a `w` × `h` grey image,
/// averaging `k`×`k` bilinear samples per output pixel when shrinking so
/// that a large face is not aliased. `map` turns 0..255 into model units.
pub fn sample_grey(
    frame: &Frame,
    crop: &Crop,
    w: usize,
    h: usize,
    map: impl Fn(f32) -> f32,
) -> Vec<f32> {
    let step_x = crop.side / w as f32;
    let step_y = crop.side / h as f32;
    let k = (step_x.max(step_y).ceil() as usize).clamp(1, MAX_SUPERSAMPLE);
    let (sin, cos) = crop.angle.sin_cos();
    let mut out = Vec::with_capacity(w * h);
    let inv_k2 = 1.0 / (k * k) as f32;
    for v in 0..h {
        for u in 0..w {
            let mut acc = 0.0;
            for sv in 0..k {
                for su in 0..k {
                    // Offset from the crop centre in crop pixels.
                    let dx = (u as f32 + (su as f32 + 0.5) / k as f32) * step_x - crop.side / 2.0;
                    let dy = (v as f32 + (sv as f32 + 0.5) / k as f32) * step_y - crop.side / 2.0;
                    let x = crop.cx + dx * cos - dy * sin - 0.5;
                    let y = crop.cy + dx * sin + dy * cos - 0.5;
                    acc += frame.luma_bilinear(x, y);
                }
            }
            out.push(map(acc * inv_k2));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;

    #[test]
    fn whole_crop_of_same_size_is_identity() {
        let data: Vec<u8> = (0..48 * 48).map(|i| (i % 251) as u8).collect();
        let f = Frame::new(48, 48, PixelFormat::Grey, data.clone());
        let out = sample_grey(&f, &Crop::whole(&f), 48, 48, |v| v);
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
        let out = sample_grey(&f, &Crop::whole(&f), 16, 16, |v| v);
        for v in out {
            assert!((v - 100.0).abs() < 1.0, "{v}");
        }
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
