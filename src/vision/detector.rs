//! Face detection with a RetinaFace-style network.
//!
//! The frame is letterboxed (scaled to fit, padded right and bottom) into a
//! fixed network input so that tract can optimise the graph once for a
//! concrete shape; anchors are generated once for that shape. Per frame the
//! work is: sample the input tensor, run, decode the anchors above the score
//! threshold, non-maximum suppression.

use std::path::Path;

use tract_onnx::prelude::*;

use super::model::{ColorOrder, DetectorSpec, InputSpec, LoadedModel, ModelError, Task};
use crate::config::DetectorConfig;
use crate::frame::Frame;

/// An axis-aligned box in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BBox {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
}

impl BBox {
    /// Intersection over union of two boxes (0 when either is empty).
    pub fn iou(&self, other: &BBox) -> f32 {
        let x0 = self.x.max(other.x);
        let y0 = self.y.max(other.y);
        let x1 = (self.x + self.w).min(other.x + other.w);
        let y1 = (self.y + self.h).min(other.y + other.h);
        let inter = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
        let union = self.w * self.h + other.w * other.h - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }

    /// Centre point.
    pub fn center(&self) -> (f32, f32) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }

    /// The box clipped to a `width` × `height` frame.
    pub fn clip(&self, width: u32, height: u32) -> BBox {
        let x0 = self.x.clamp(0.0, width as f32);
        let y0 = self.y.clamp(0.0, height as f32);
        let x1 = (self.x + self.w).clamp(0.0, width as f32);
        let y1 = (self.y + self.h).clamp(0.0, height as f32);
        BBox {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }
}

/// One detected face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    /// Bounding box in frame pixels.
    pub bbox: BBox,
    /// Detector confidence in `[0, 1]`.
    pub score: f32,
    /// Five landmarks in frame pixels: the subject's right eye (image
    /// left), left eye, nose tip, right and left mouth corners.
    pub landmarks: [[f32; 2]; 5],
}

/// Most anchors a detector may have: 2,097,152 (32 MiB of anchors; the
/// outputs to match are 64 bytes per anchor). The shipped detector has
/// 3,160 at 320×240 and 688,128 at the largest input, 4096×4096; more
/// comes only from a manifest with tiny strides or very many sizes, which
/// would exhaust a Pi's memory instead of finding faces.
pub const MAX_ANCHORS: usize = 1 << 21;

/// The face detector: model, anchors and thresholds.
pub struct Detector {
    model: LoadedModel,
    post: PostProcess,
}

impl Detector {
    /// Loads the detector named by `manifest` with the thresholds of `cfg`.
    ///
    /// The network input is the manifest's height and width where it fixes
    /// them, `cfg.input_size` where it leaves them free (0).
    pub fn load(manifest: &Path, cfg: &DetectorConfig) -> Result<Detector, ModelError> {
        let [w, h] = cfg.input_size.map(|s| s.0 as usize);
        let model = LoadedModel::load(manifest, Task::FaceDetector, Some([h, w]))?;
        // Four dimensions, each side in 1..=MAX_INPUT_SIDE: the manifest
        // check and `LoadedModel::load`.
        let (input_h, input_w) = (model.input_shape[2], model.input_shape[3]);
        if (input_w, input_h) != (w, h) {
            log::info!(
                "{}: the model's input is fixed at {input_w}×{input_h}; [detector] input_size {w}×{h} is not used",
                manifest.display()
            );
        }
        let spec = model
            .manifest
            .detector
            .clone()
            .ok_or_else(|| ModelError::Manifest {
                path: manifest.to_path_buf(),
                message: "missing [detector] section".into(),
            })?;
        let post = PostProcess::new(&spec, input_w, input_h, cfg).map_err(|message| {
            ModelError::Manifest {
                path: manifest.to_path_buf(),
                message,
            }
        })?;
        Ok(Detector { model, post })
    }

    /// Finds the faces in a frame, highest score first.
    pub fn detect(&self, frame: &Frame) -> Result<Vec<Face>, ModelError> {
        let mut faces = Vec::new();
        self.detect_into(frame, &mut faces)?;
        Ok(faces)
    }

    /// [`Detector::detect`] into `faces` (cleared first, its allocation
    /// reused frame after frame).
    pub fn detect_into(&self, frame: &Frame, faces: &mut Vec<Face>) -> Result<(), ModelError> {
        let scale = self.post.scale(frame.width, frame.height);
        let spec = &self.model.manifest.input;
        let (w, h) = (self.post.input_w as usize, self.post.input_h as usize);
        let bad = |message: String| ModelError::Shape {
            path: self.model.path.clone(),
            message,
        };
        self.model.run_with(
            |input| letterbox(spec, w, h, frame, scale, input),
            |outputs| {
                // Views of tract's three tensors, on the stack (the steady
                // pipeline allocates nothing, tests/alloc.rs); their shapes
                // and values are checked by `PostProcess::run`, which also
                // serves the fuzz target with arbitrary ones.
                let [a, b, c] = outputs else {
                    return Err(bad(format!(
                        "expected 3 outputs (loc, conf, landmarks), the model has {}",
                        outputs.len()
                    )));
                };
                let not_f32 = |e: TractError| bad(format!("output is not f32: {e}"));
                let views = [
                    a.to_plain_array_view::<f32>().map_err(not_f32)?,
                    b.to_plain_array_view::<f32>().map_err(not_f32)?,
                    c.to_plain_array_view::<f32>().map_err(not_f32)?,
                ];
                let contiguous = || bad("output is not contiguous".into());
                let pairs = [
                    (
                        views[0].shape(),
                        views[0].to_slice().ok_or_else(contiguous)?,
                    ),
                    (
                        views[1].shape(),
                        views[1].to_slice().ok_or_else(contiguous)?,
                    ),
                    (
                        views[2].shape(),
                        views[2].to_slice().ok_or_else(contiguous)?,
                    ),
                ];
                self.post
                    .run(&pairs, frame.width, frame.height, faces)
                    .map_err(bad)
            },
        )
    }
}

/// The detector's post-processing, apart from the network: anchors for one
/// input size, box decoding, score and size thresholds, non-maximum
/// suppression and clipping to the frame. Public so that it can be fed
/// arbitrary output tensors (the fuzz target `detector_post`); a
/// [`Detector`] holds one.
#[derive(Debug, Clone)]
pub struct PostProcess {
    /// Anchors as (cx, cy, w, h), normalised to the network input.
    anchors: Vec<[f32; 4]>,
    input_w: u32,
    input_h: u32,
    variance: [f32; 2],
    min_score: f32,
    nms_iou: f32,
    min_face_size: f32,
    max_faces: usize,
}

impl PostProcess {
    /// Anchors of `spec` at an `input_w` × `input_h` network input, with the
    /// thresholds of `cfg`. `spec` must have passed the manifest check
    /// (strides non-zero, one list of sizes per stride); the sides must be
    /// in `1..=MAX_INPUT_SIDE`. Errs, naming the keys, when the anchors
    /// would be more than [`MAX_ANCHORS`].
    pub fn new(
        spec: &DetectorSpec,
        input_w: usize,
        input_h: usize,
        cfg: &DetectorConfig,
    ) -> Result<PostProcess, String> {
        let too_many = || {
            format!(
                "keys `detector.strides` and `detector.anchor_sizes`: more than {MAX_ANCHORS} anchors at input {input_w}×{input_h}"
            )
        };
        let count = anchor_count(&spec.strides, &spec.anchor_sizes, input_w, input_h)
            .filter(|&n| n <= MAX_ANCHORS)
            .ok_or_else(too_many)?;
        let input_w = u32::try_from(input_w).map_err(|_| too_many())?;
        let input_h = u32::try_from(input_h).map_err(|_| too_many())?;
        if input_w == 0 || input_h == 0 || spec.strides.contains(&0) {
            return Err(format!(
                "input {input_w}×{input_h} and strides {:?} must be non-zero",
                spec.strides
            ));
        }
        let mut anchors = Vec::with_capacity(count);
        for (&stride, sizes) in spec.strides.iter().zip(&spec.anchor_sizes) {
            let nx = input_w.div_ceil(stride);
            let ny = input_h.div_ceil(stride);
            for y in 0..ny {
                for x in 0..nx {
                    for &s in sizes {
                        anchors.push([
                            (x as f32 + 0.5) * stride as f32 / input_w as f32,
                            (y as f32 + 0.5) * stride as f32 / input_h as f32,
                            s / input_w as f32,
                            s / input_h as f32,
                        ]);
                    }
                }
            }
        }
        Ok(PostProcess {
            anchors,
            input_w,
            input_h,
            variance: spec.variance,
            min_score: cfg.min_score.0,
            nms_iou: cfg.nms_iou.0,
            min_face_size: cfg.min_face_size.0 as f32,
            max_faces: cfg.max_faces.0 as usize,
        })
    }

    /// How many anchors, i.e. the `A` of the outputs' shapes.
    pub fn anchor_count(&self) -> usize {
        self.anchors.len()
    }

    /// The letterbox scale of a `width` × `height` frame into the input.
    fn scale(&self, width: u32, height: u32) -> f32 {
        (self.input_w as f32 / width as f32).min(self.input_h as f32 / height as f32)
    }

    /// Turns the network's raw outputs, each a (shape, values) pair, into
    /// the faces of a `frame_w` × `frame_h` frame in `faces` (cleared
    /// first), highest score first, clipped to the frame.
    ///
    /// The outputs are told apart by their shapes, `[1, A, 4]` boxes,
    /// `[1, A, 2]` scores and `[1, A, 10]` landmarks (names and order differ
    /// between exports); any other shape, a missing one, or values that do
    /// not fill their shape is an error saying which.
    pub fn run(
        &self,
        outputs: &[(&[usize], &[f32])],
        frame_w: u32,
        frame_h: u32,
        faces: &mut Vec<Face>,
    ) -> Result<(), String> {
        faces.clear();
        if frame_w == 0 || frame_h == 0 {
            return Err(format!("frame with a zero side ({frame_w}×{frame_h})"));
        }
        let scale = self.scale(frame_w, frame_h);
        self.decode(outputs, scale, faces)?;
        faces.retain(|f| f.bbox.w.min(f.bbox.h) >= self.min_face_size);
        nms(faces, self.nms_iou);
        faces.truncate(self.max_faces);
        for f in faces.iter_mut() {
            f.bbox = f.bbox.clip(frame_w, frame_h);
        }
        Ok(())
    }

    /// Turns the raw outputs into faces in frame coordinates, added to
    /// `faces`.
    fn decode(
        &self,
        outputs: &[(&[usize], &[f32])],
        scale: f32,
        faces: &mut Vec<Face>,
    ) -> Result<(), String> {
        // Identify outputs by their last dimension rather than by position
        // or name, which differ between exports of the same network.
        let mut loc = None;
        let mut conf = None;
        let mut landmarks = None;
        let a = self.anchors.len();
        for &(shape, slice) in outputs {
            let slot = match shape {
                [1, n, 4] if *n == a => &mut loc,
                [1, n, 2] if *n == a => &mut conf,
                [1, n, 10] if *n == a => &mut landmarks,
                other => return Err(format!("unexpected output shape {other:?} for {a} anchors")),
            };
            // The shape's last dimension is 2, 4 or 10 and `a` is at most
            // MAX_ANCHORS: no overflow.
            if slice.len() != a * shape[2] {
                return Err(format!(
                    "output of shape {shape:?} has {} values, not {}",
                    slice.len(),
                    a * shape[2]
                ));
            }
            *slot = Some(slice);
        }
        let (Some(loc), Some(conf), Some(lm)) = (loc, conf, landmarks) else {
            return Err("expected loc [1,A,4], conf [1,A,2] and landmarks [1,A,10] outputs".into());
        };
        let (iw, ih) = (self.input_w as f32, self.input_h as f32);
        let [vc, vs] = self.variance;
        // Indexing is in bounds: each output was checked above to hold k
        // values per anchor.
        for (i, a) in self.anchors.iter().enumerate() {
            let score = conf[i * 2 + 1];
            // A NaN or infinite score (a broken model) is no face either.
            if !score.is_finite() || score < self.min_score {
                continue;
            }
            let l = &loc[i * 4..i * 4 + 4];
            let cx = a[0] + l[0] * vc * a[2];
            let cy = a[1] + l[1] * vc * a[3];
            let bw = a[2] * (l[2] * vs).exp();
            let bh = a[3] * (l[3] * vs).exp();
            let bbox = BBox {
                x: (cx - bw / 2.0) * iw / scale,
                y: (cy - bh / 2.0) * ih / scale,
                w: bw * iw / scale,
                h: bh * ih / scale,
            };
            let mut landmarks = [[0f32; 2]; 5];
            for (k, p) in landmarks.iter_mut().enumerate() {
                p[0] = (a[0] + lm[i * 10 + 2 * k] * vc * a[2]) * iw / scale;
                p[1] = (a[1] + lm[i * 10 + 2 * k + 1] * vc * a[3]) * ih / scale;
            }
            // A NaN or infinite value (a broken or hostile model, an
            // overflowing exp) would reach the tracker and the rules as
            // a face nowhere: not a face.
            let finite = [bbox.x, bbox.y, bbox.w, bbox.h]
                .into_iter()
                .chain(landmarks.iter().flatten().copied())
                .all(f32::is_finite);
            if !finite {
                continue;
            }
            faces.push(Face {
                bbox,
                score,
                landmarks,
            });
        }
        Ok(())
    }
}

/// Anchors for `strides` and `sizes` at a `width` × `height` input; `None`
/// if the count overflows. Strides must be non-zero.
fn anchor_count(strides: &[u32], sizes: &[Vec<f32>], width: usize, height: usize) -> Option<usize> {
    strides
        .iter()
        .zip(sizes)
        .try_fold(0usize, |total, (&stride, sizes)| {
            let stride = usize::try_from(stride).ok()?;
            let cells = width
                .div_ceil(stride)
                .checked_mul(height.div_ceil(stride))?;
            total.checked_add(cells.checked_mul(sizes.len())?)
        })
}

/// The frame scaled by `scale` into the top-left of a `w` × `h` input,
/// normalised as `spec` says: one plane of luma for a `grey` model, three
/// planes in the model's channel order otherwise. The rest is padding at
/// the mean, i.e. 0 after normalisation. `data` holds channels × h × w
/// values, overwritten.
fn letterbox(spec: &InputSpec, w: usize, h: usize, frame: &Frame, scale: f32, data: &mut [f32]) {
    let plane = w * h;
    let channels = spec.color.channels();
    // The buffer is reused: the padding must be cleared each time.
    data.fill(0.0);
    let used_w = ((frame.width as f32 * scale).round() as usize).clamp(1, w);
    let used_h = ((frame.height as f32 * scale).round() as usize).clamp(1, h);
    let order: [usize; 3] = match spec.color {
        ColorOrder::Bgr => [2, 1, 0],
        ColorOrder::Rgb | ColorOrder::Grey => [0, 1, 2],
    };
    // `mean` and `std` have `channels` entries: the manifest check.
    let norm = |c: usize, v: f32| (v * spec.scale - spec.mean[c]) / spec.std[c];
    let inv = 1.0 / scale;
    for y in 0..used_h {
        let sy = (y as f32 + 0.5) * inv - 0.5;
        for x in 0..used_w {
            let sx = (x as f32 + 0.5) * inv - 0.5;
            if channels == 1 {
                data[y * w + x] = norm(0, frame.luma_bilinear(sx, sy));
            } else {
                let rgb = frame.rgb_bilinear(sx, sy);
                for c in 0..3 {
                    data[c * plane + y * w + x] = norm(c, rgb[order[c]]);
                }
            }
        }
    }
}

/// Greedy non-maximum suppression, in place: keeps the best-scoring face
/// of every group overlapping by more than `iou`, by falling score.
pub fn nms(faces: &mut Vec<Face>, iou: f32) {
    // Unstable: the stable sort allocates a scratch buffer per call. It is
    // still deterministic, and faces of equal score are either order.
    faces.sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = 0;
    for i in 0..faces.len() {
        let f = faces[i];
        if faces[..kept].iter().all(|k| k.bbox.iou(&f.bbox) <= iou) {
            faces[kept] = f;
            kept += 1;
        }
    }
    faces.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, score: f32) -> Face {
        Face {
            bbox: BBox {
                x,
                y: 0.0,
                w: 10.0,
                h: 10.0,
            },
            score,
            landmarks: [[0.0; 2]; 5],
        }
    }

    #[test]
    fn iou_of_identical_and_disjoint_boxes() {
        let a = face(0.0, 1.0).bbox;
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&face(20.0, 1.0).bbox), 0.0);
        assert!((a.iou(&face(5.0, 1.0).bbox) - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn nms_keeps_best_of_overlapping() {
        let mut kept = vec![face(0.0, 0.8), face(1.0, 0.9), face(30.0, 0.7)];
        nms(&mut kept, 0.4);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].bbox.x, 30.0);
    }

    #[test]
    fn letterbox_feeds_a_grey_model_one_plane() {
        // A grey manifest has one mean and one std; three planes used to
        // index a second mean (a panic at the first frame).
        let spec = InputSpec {
            shape: vec![1, 1, 0, 0],
            layout: "NCHW".into(),
            color: ColorOrder::Grey,
            scale: 1.0,
            mean: vec![100.0],
            std: vec![2.0],
        };
        let f = Frame::new(4, 2, crate::frame::PixelFormat::Grey, vec![120; 8]);
        // A reused buffer: whatever was there is overwritten.
        let mut v = vec![f32::NAN; 64];
        letterbox(&spec, 8, 8, &f, 2.0, &mut v);
        assert_eq!(v[0], 10.0);
        // Padding below the letterboxed frame is the mean: 0.
        assert_eq!(v[7 * 8], 0.0);
    }

    #[test]
    fn anchor_counts_are_checked() {
        let sizes = vec![vec![16.0, 32.0], vec![64.0, 128.0], vec![256.0, 512.0]];
        assert_eq!(anchor_count(&[8, 16, 32], &sizes, 320, 240), Some(3160));
        assert_eq!(
            anchor_count(&[8, 16, 32], &sizes, 4096, 4096),
            Some(688_128)
        );
        // 2^44 anchors: over the limit on 64-bit targets, an overflow (None)
        // on 32-bit ones (armv7); the loader refuses both.
        let many = vec![vec![1.0; 1 << 20]];
        assert!(anchor_count(&[1], &many, 4096, 4096).is_none_or(|n| n > MAX_ANCHORS));
    }

    #[test]
    fn clip_keeps_box_inside() {
        let b = BBox {
            x: -5.0,
            y: 2.0,
            w: 20.0,
            h: 100.0,
        }
        .clip(10, 50);
        assert_eq!((b.x, b.y, b.w, b.h), (0.0, 2.0, 10.0, 48.0));
    }
}
