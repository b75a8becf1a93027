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
use super::worker::ModelWorker;
use crate::config::DetectorConfig;
use crate::frame::{Frame, Sampler};

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

/// The network input's sides when looking around a followed face
/// ([`Detector::window_around`]): one optimised plan each. A face is looked
/// for at the scale the whole-frame search sees it at where it can be (the
/// detector's recall depends on a face's size in its input: FER2013 faces
/// at 60 px in the input were found again only half as often as at the
/// whole search's 140 px, at 96 px 88% of the time, `ferd eval
/// --scenes`), in the smallest of these squares that holds
/// [`AROUND_SCALE`] × the face at that scale; a face too large for the
/// largest is shrunk into it (to 96 px). A 96×96 run costs about a sixth
/// of a 320×240 one (2.4 against 14–16 ms on the dev VM), a 192×192 one
/// about half. Each side is a plan in memory: with four sides (and 128,
/// 160) `ferd run` on the demo peaked at 57.9 MB, with these three 53.2.
pub const AROUND_SIDES: [usize; 3] = [96, 144, 192];

/// The least square searched around a followed face, in sides of its
/// box's longer side: room for the face to move half its size either way
/// from one frame to the next (farther, and it is looked for in the whole
/// frame), and the context the detector needs: a face it scored 0.98 in
/// the whole frame was not found at all in a window 1.6 times its size,
/// nor in one 1.87 times (`vision::follow`'s tests).
pub const AROUND_SCALE: f32 = 2.0;

/// Where a network input lies in the frame: input pixel (x, y) is centred
/// on frame point (x0 + (x + 0.5) / scale, y0 + (y + 0.5) / scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// The frame x of the input's left edge.
    pub x0: f32,
    /// The frame y of the input's top edge.
    pub y0: f32,
    /// Input pixels per frame pixel.
    pub scale: f32,
}

impl Placement {
    /// A `side` × `side` input at `scale`, about centred on `bbox`: its
    /// origin is moved by under one input pixel onto the grid of a
    /// letterboxed whole frame at that scale, so the input is a window of
    /// the whole search's input, the same samples of the same pixels, and
    /// what the detector finds differs from a whole search only by what
    /// lies outside the window.
    pub fn around(bbox: &BBox, side: usize, scale: f32) -> Placement {
        let (cx, cy) = bbox.center();
        let half = side as f32 / 2.0;
        let snap = |c: f32| (c * scale - half).round() / scale;
        Placement {
            x0: snap(cx),
            y0: snap(cy),
            scale,
        }
    }
}

/// How much larger than the largest anchor of a detector's finest level a
/// face's box must be (in area, at the window's scale) for a window to be
/// searched without that level ([`LoadedModel::load_without_levels`]).
/// RetinaFace's common training (Pytorch_Retinaface, whose anchors and
/// variances the shipped model has) makes an anchor positive for a face
/// when their overlap (IoU) is at least 0.35; a centred anchor of a third
/// of the box's area overlaps it by a third, so the finest level's anchors
/// (16 and 32 px: faces from 55 px on) are not meant to find such a face.
/// Measured: `ferd eval --scenes` on FER2013 val gives the same followed
/// crops, correct count and faces not found again with and without it.
pub const COARSE_AREA: f32 = 3.0;

/// A square part of the frame to look for a face in: one of the window
/// networks and where its input lies ([`Detector::window_around`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Index into the detector's window networks.
    net: usize,
    /// The side in input pixels, one of [`AROUND_SIDES`].
    side: usize,
    /// Where the input lies in the frame.
    pub place: Placement,
}

impl Window {
    /// The window's side in input pixels.
    pub fn side(&self) -> usize {
        self.side
    }

    /// Whether the window is searched without the detector's finest
    /// pyramid level (a face large enough: [`COARSE_AREA`]).
    pub fn is_coarse(&self) -> bool {
        self.net >= AROUND_SIDES.len()
    }

    /// The same window searched with every level: its side's full
    /// network, which comes first among the window networks.
    pub fn with_every_level(&self) -> Window {
        let full = AROUND_SIDES.iter().position(|&s| s == self.side);
        Window {
            net: full.unwrap_or(self.net),
            ..*self
        }
    }

    /// Whether this window, placed for an earlier frame, may be searched
    /// again instead of `fresh` (the one placed on the face's latest
    /// box): the same network, scales within 5% (a face shrunk into the
    /// largest window has a scale of its own) and origins within a
    /// twentieth of the side. Keeping a window still while the face stays
    /// near its centre keeps the detector's input, and so the box it finds
    /// on a still face, the same from frame to frame.
    pub fn still_serves(&self, fresh: &Window) -> bool {
        let tolerance = self.side() as f32 / 20.0 / self.place.scale;
        self.net == fresh.net
            && (self.place.scale / fresh.place.scale - 1.0).abs() <= 0.05
            && (self.place.x0 - fresh.place.x0).abs() <= tolerance
            && (self.place.y0 - fresh.place.y0).abs() <= tolerance
    }
}

/// The least square, in frame pixels, searched around `bbox`.
pub fn around_side(bbox: &BBox) -> f32 {
    bbox.w.max(bbox.h) * AROUND_SCALE
}

/// The face detector: model, anchors and thresholds.
pub struct Detector {
    model: LoadedModel,
    post: PostProcess,
    /// The same network optimised for each of [`AROUND_SIDES`], smallest
    /// first, for looking around followed faces, then for some of them
    /// without its finest level, for large faces (`coarse`)
    /// ([`Detector::load_around`]); empty until then.
    around: Vec<(LoadedModel, PostProcess)>,
    /// For each of [`AROUND_SIDES`], the index in `around` of its network
    /// without the finest level, where one was loaded.
    coarse: [Option<usize>; AROUND_SIDES.len()],
    /// The least area of a face's box in a window's input for its coarse
    /// network to serve: [`COARSE_AREA`] × the finest level's largest
    /// anchor squared.
    coarse_area: f32,
    /// A second thread searching one window while the calling thread
    /// searches another ([`Detector::with_window_thread`]).
    second: Option<ModelWorker>,
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
        let spec = detector_spec(&model, manifest)?;
        let post = PostProcess::new(&spec, input_w, input_h, cfg).map_err(|message| {
            ModelError::Manifest {
                path: manifest.to_path_buf(),
                message,
            }
        })?;
        Ok(Detector {
            model,
            post,
            around: Vec::new(),
            coarse: [None; AROUND_SIDES.len()],
            coarse_area: f32::INFINITY,
            second: None,
        })
    }

    /// Loads the network again for each of [`AROUND_SIDES`], so that
    /// [`Detector::detect_around_into`] can look around a followed face at
    /// a fraction of a whole frame's cost; and for each side that can hold
    /// a face large enough ([`COARSE_AREA`]), once more without the finest
    /// pyramid level, where the graph has the form that allows it
    /// ([`LoadedModel::load_without_levels`]). A model whose manifest fixes
    /// the input size is kept as it is (`false`): it cannot run at other
    /// sizes.
    pub fn load_around(
        &mut self,
        manifest: &Path,
        cfg: &DetectorConfig,
    ) -> Result<bool, ModelError> {
        if self.model.manifest.input.shape[2..] != [0, 0] {
            log::info!(
                "{}: the model's input size is fixed, so faces are not followed: the detector searches every whole frame",
                manifest.display()
            );
            return Ok(false);
        }
        // The manifest passed the first load's checks (a [detector]
        // section, one list of sizes per stride); each load reads the same
        // file again and verifies its checksum again.
        let spec = detector_spec(&self.model, manifest)?;
        let post = |spec: &DetectorSpec, side: usize| {
            PostProcess::new(spec, side, side, cfg).map_err(|message| ModelError::Manifest {
                path: manifest.to_path_buf(),
                message,
            })
        };
        self.around.clear();
        self.coarse = [None; AROUND_SIDES.len()];
        for side in AROUND_SIDES {
            let model = LoadedModel::load(manifest, Task::FaceDetector, Some([side, side]))?;
            self.around.push((model, post(&spec, side)?));
        }
        // Without the finest level: its largest anchor decides which faces
        // can do without it.
        let finest = spec.anchor_sizes.first().into_iter().flatten();
        let largest = finest.fold(0.0f32, |a, &b| a.max(b));
        self.coarse_area = COARSE_AREA * largest * largest;
        if spec.strides.len() < 2 {
            return Ok(true);
        }
        let coarser = DetectorSpec {
            strides: spec.strides[1..].to_vec(),
            anchor_sizes: spec.anchor_sizes[1..].to_vec(),
            variance: spec.variance,
        };
        for (i, side) in AROUND_SIDES.into_iter().enumerate() {
            // The largest face a window of this side holds at the whole
            // search's scale, square, or shrunk into the largest side.
            let face = side as f32 / AROUND_SCALE;
            if face * face < self.coarse_area {
                continue;
            }
            let Some(model) = LoadedModel::load_without_levels(manifest, [side, side], 1)? else {
                log::info!(
                    "{}: the outputs do not concatenate the pyramid levels as expected, so windows keep the finest level",
                    manifest.display()
                );
                break;
            };
            self.coarse[i] = Some(self.around.len());
            self.around.push((model, post(&coarser, side)?));
        }
        Ok(true)
    }

    /// From now on [`Detector::detect_in_windows`] searches its second
    /// window on a thread of its own (the window networks' twins: the same
    /// plans, their own states) while the calling thread searches the
    /// first. Call after [`Detector::load_around`]; without windows,
    /// nothing to do.
    pub fn with_window_thread(mut self) -> Result<Detector, ModelError> {
        if self.around.is_empty() {
            return Ok(self);
        }
        let twins = self
            .around
            .iter()
            .map(|(model, _)| model.twin())
            .collect::<Result<Vec<_>, _>>()?;
        self.second = Some(ModelWorker::start(twins, "ferd-detect", copy_outputs)?);
        Ok(self)
    }

    /// Whether windows are searched two at a time on two threads.
    pub fn has_window_thread(&self) -> bool {
        self.second.is_some()
    }

    /// Whether [`Detector::load_around`] loaded the networks it needs.
    pub fn can_look_around(&self) -> bool {
        !self.around.is_empty()
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
        let place = Placement {
            x0: 0.0,
            y0: 0.0,
            scale: self.post.scale(frame.width, frame.height),
        };
        run_placed(&self.model, &self.post, frame, place, faces)
    }

    /// The window to look for the face boxed by `bbox` in: the smallest of
    /// [`AROUND_SIDES`] that holds [`AROUND_SCALE`] × the box at the scale
    /// a whole-frame search would see it at, else the largest with the box
    /// shrunk into it, about centred on the box ([`Placement::around`]);
    /// parts of it outside the frame are padding. `None` when
    /// [`Detector::load_around`] loaded none (or the box is degenerate):
    /// the whole frame is the place to look then.
    pub fn window_around(&self, frame: &Frame, bbox: &BBox) -> Option<Window> {
        let whole = self.post.scale(frame.width, frame.height);
        let needed = around_side(bbox) * whole;
        // The first `AROUND_SIDES.len()` networks are the full ones, one
        // per side.
        let full = self.around.get(..AROUND_SIDES.len())?;
        let (size, scale) = match full
            .iter()
            .position(|(_, post)| post.input_w as f32 >= needed)
        {
            Some(size) => (size, whole),
            None => {
                // Larger than the largest window at the whole search's
                // scale: shrunk into it, which leaves the face at least
                // 192 / 2 = 96 px in the input.
                let size = full.len() - 1;
                let side = full[size].1.input_w as f32;
                (size, side / around_side(bbox))
            }
        };
        if !(scale.is_finite() && scale > 0.0) {
            return None;
        }
        let area = bbox.w * scale * bbox.h * scale;
        let net = match self.coarse[size] {
            Some(coarse) if area >= self.coarse_area => coarse,
            _ => size,
        };
        let side = AROUND_SIDES[size];
        Some(Window {
            net,
            side,
            place: Placement::around(bbox, side, scale),
        })
    }

    /// The faces in `window` into `faces` (cleared first), in frame
    /// coordinates, highest score first.
    pub fn detect_in_window(
        &self,
        frame: &Frame,
        window: &Window,
        faces: &mut Vec<Face>,
    ) -> Result<(), ModelError> {
        faces.clear();
        let Some((model, post)) = self.around.get(window.net) else {
            // Windows come from `window_around`, so only a window of
            // another detector lands here.
            return Err(ModelError::Shape {
                path: self.model.path.clone(),
                message: format!(
                    "a {}-px window, and this detector has no window network of that size",
                    window.side()
                ),
            });
        };
        run_placed(model, post, frame, window.place, faces)
    }

    /// [`Detector::detect_in_window`] for two windows, `a`'s faces into
    /// `found_a` and `b`'s into `found_b`: at the same time, with `b` on
    /// the second thread, when the detector has one. The same faces
    /// either way (the same plans on the same inputs).
    pub fn detect_in_windows(
        &self,
        frame: &Frame,
        [a, b]: [&Window; 2],
        found_a: &mut Vec<Face>,
        found_b: &mut Vec<Face>,
    ) -> Result<(), ModelError> {
        let (Some(worker), Some((model, post))) = (&self.second, self.around.get(b.net)) else {
            self.detect_in_window(frame, a, found_a)?;
            return self.detect_in_window(frame, b, found_b);
        };
        let side = b.side();
        let spec = &model.manifest.input;
        worker.post(b.net, |input| {
            sample_input(spec, side, side, frame, b.place, input)
        })?;
        let first = self.detect_in_window(frame, a, found_a);
        // Waited for even when the first failed: the next pair posts
        // again.
        let second = worker.wait(|values| {
            found_b.clear();
            let n = post.anchor_count();
            if values.len() != n * 16 {
                return Err(format!(
                    "outputs of {} values, not {} for {n} anchors",
                    values.len(),
                    n * 16
                ));
            }
            let (loc, rest) = values.split_at(n * 4);
            let (conf, landmarks) = rest.split_at(n * 2);
            let shapes = [[1, n, 4], [1, n, 2], [1, n, 10]];
            let outputs = [
                (&shapes[0][..], loc),
                (&shapes[1][..], conf),
                (&shapes[2][..], landmarks),
            ];
            post.run_placed(&outputs, b.place, frame.width, frame.height, found_b)
        })?;
        first?;
        second.map_err(|message| ModelError::Shape {
            path: model.path.clone(),
            message,
        })
    }

    /// [`Detector::window_around`] and [`Detector::detect_in_window`]:
    /// `false`, with nothing run, when there is no window.
    pub fn detect_around_into(
        &self,
        frame: &Frame,
        bbox: &BBox,
        faces: &mut Vec<Face>,
    ) -> Result<bool, ModelError> {
        faces.clear();
        match self.window_around(frame, bbox) {
            Some(window) => self.detect_in_window(frame, &window, faces).map(|()| true),
            None => Ok(false),
        }
    }
}

/// The `[detector]` section of `model`'s manifest (read from `manifest`).
fn detector_spec(model: &LoadedModel, manifest: &Path) -> Result<DetectorSpec, ModelError> {
    model
        .manifest
        .detector
        .clone()
        .ok_or_else(|| ModelError::Manifest {
            path: manifest.to_path_buf(),
            message: "missing [detector] section".into(),
        })
}

/// The detector's outputs in the order loc `[1, A, 4]`, conf `[1, A, 2]`,
/// landmarks `[1, A, 10]` (told apart by their last dimension, as
/// [`PostProcess::run`] does): the window thread's
/// [`super::worker::PickOutput`].
fn copy_outputs(path: &Path, outputs: &[TValue], out: &mut Vec<f32>) -> Result<(), ModelError> {
    for last in [4, 2, 10] {
        let values = outputs
            .iter()
            .find(|o| o.rank() == 3 && o.shape()[2] == last)
            .ok_or_else(|| ModelError::Shape {
                path: path.to_path_buf(),
                message: format!("no [1, A, {last}] output"),
            })?;
        out.extend_from_slice(super::model::output_floats(path, values)?);
    }
    Ok(())
}

/// Runs `model` on the part of `frame` that `place` puts in its input and
/// decodes its faces with `post`.
fn run_placed(
    model: &LoadedModel,
    post: &PostProcess,
    frame: &Frame,
    place: Placement,
    faces: &mut Vec<Face>,
) -> Result<(), ModelError> {
    let spec = &model.manifest.input;
    let (w, h) = (post.input_w as usize, post.input_h as usize);
    let bad = |message: String| ModelError::Shape {
        path: model.path.clone(),
        message,
    };
    model.run_with(
        |input| sample_input(spec, w, h, frame, place, input),
        |outputs| {
            // Views of tract's three tensors, on the stack (the steady
            // pipeline allocates nothing, tests/alloc.rs); their shapes
            // and values are checked by `PostProcess::run_placed`, which
            // also serves the fuzz target with arbitrary ones.
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
            post.run_placed(&pairs, place, frame.width, frame.height, faces)
                .map_err(bad)
        },
    )
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
    /// first), highest score first, clipped to the frame; the input held
    /// the whole frame, letterboxed.
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
        if frame_w == 0 || frame_h == 0 {
            faces.clear();
            return Err(format!("frame with a zero side ({frame_w}×{frame_h})"));
        }
        let place = Placement {
            x0: 0.0,
            y0: 0.0,
            scale: self.scale(frame_w, frame_h),
        };
        self.run_placed(outputs, place, frame_w, frame_h, faces)
    }

    /// [`PostProcess::run`] for an input that held the part of the frame
    /// `place` says (a letterboxed whole frame, or a square around a face).
    pub fn run_placed(
        &self,
        outputs: &[(&[usize], &[f32])],
        place: Placement,
        frame_w: u32,
        frame_h: u32,
        faces: &mut Vec<Face>,
    ) -> Result<(), String> {
        faces.clear();
        if frame_w == 0 || frame_h == 0 {
            return Err(format!("frame with a zero side ({frame_w}×{frame_h})"));
        }
        if !(place.scale.is_finite()
            && place.scale > 0.0
            && place.x0.is_finite()
            && place.y0.is_finite())
        {
            return Err(format!(
                "placement {place:?} is not a finite positive scale and origin"
            ));
        }
        self.decode(outputs, place, faces)?;
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
        place: Placement,
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
        // Normalised anchor units to input pixels to frame pixels.
        let (sx, sy) = (
            self.input_w as f32 / place.scale,
            self.input_h as f32 / place.scale,
        );
        let (x0, y0) = (place.x0, place.y0);
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
                x: x0 + (cx - bw / 2.0) * sx,
                y: y0 + (cy - bh / 2.0) * sy,
                w: bw * sx,
                h: bh * sy,
            };
            let mut landmarks = [[0f32; 2]; 5];
            for (k, p) in landmarks.iter_mut().enumerate() {
                p[0] = x0 + (a[0] + lm[i * 10 + 2 * k] * vc * a[2]) * sx;
                p[1] = y0 + (a[1] + lm[i * 10 + 2 * k + 1] * vc * a[3]) * sy;
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

/// The part of the frame that `place` puts in a `w` × `h` input, sampled
/// bilinearly and normalised as `spec` says: one plane of luma for a
/// `grey` model, three planes in the model's channel order otherwise.
/// Input pixels whose centre falls outside the frame are padding at the
/// mean, i.e. 0 after normalisation (for a letterboxed whole frame: the
/// right and bottom). `data` holds channels × h × w values, overwritten.
fn sample_input(
    spec: &InputSpec,
    w: usize,
    h: usize,
    frame: &Frame,
    place: Placement,
    data: &mut [f32],
) {
    let plane = w * h;
    let channels = spec.color.channels();
    let inv = 1.0 / place.scale;
    // The input pixels whose centre lies in the frame, per axis: pixel x
    // is centred on frame point x0 + (x + 0.5) / scale.
    let covered = |origin: f32, extent: u32, n: usize| {
        let first = ((-origin) * place.scale - 0.5).ceil().clamp(0.0, n as f32) as usize;
        let end = ((extent as f32 - origin) * place.scale - 0.5)
            .ceil()
            .clamp(first as f32, n as f32) as usize;
        first..end
    };
    let (xs, ys) = (
        covered(place.x0, frame.width, w),
        covered(place.y0, frame.height, h),
    );
    // The buffer is reused: the padding (only that: the covered pixels are
    // all written below) is cleared each time.
    for plane in data.chunks_mut(plane) {
        plane[..ys.start * w].fill(0.0);
        plane[ys.end * w..].fill(0.0);
        for row in plane[ys.start * w..ys.end * w].chunks_mut(w) {
            row[..xs.start].fill(0.0);
            row[xs.end..].fill(0.0);
        }
    }
    let order: [usize; 3] = match spec.color {
        ColorOrder::Bgr => [2, 1, 0],
        ColorOrder::Rgb | ColorOrder::Grey => [0, 1, 2],
    };
    // `mean` and `std` have `channels` entries: the manifest check.
    // `(v * scale - mean) / std` as one multiply and one add per value, the
    // quotients worked out once (three divisions a pixel were a third of
    // the letterbox). The same values where `std` is 1, as for RetinaFace;
    // within an ulp otherwise.
    let gain: [f32; 3] = std::array::from_fn(|c| spec.scale / spec.std[c.min(channels - 1)]);
    let offset: [f32; 3] = std::array::from_fn(|c| {
        let c = c.min(channels - 1);
        -spec.mean[c] / spec.std[c]
    });
    let norm = |c: usize, v: f32| v * gain[c] + offset[c];
    let sampler = Sampler::new(frame);
    // The bilinear samplers take pixel-centre coordinates (pixel k at k).
    let sx = |x: usize| place.x0 + (x as f32 + 0.5) * inv - 0.5;
    let sy = |y: usize| place.y0 + (y as f32 + 0.5) * inv - 0.5;
    if channels == 1 {
        for y in ys {
            for x in xs.clone() {
                data[y * w + x] = norm(0, sampler.luma(sx(x), sy(y)));
            }
        }
    } else if !halving(frame, place)
        .is_some_and(|(px, py)| halve_into(&sampler, [px, py], w, [&xs, &ys], order, norm, data))
    {
        sampler.rgb_grid(xs, ys, sx, sy, |x, y, rgb| {
            for c in 0..3 {
                data[c * plane + y * w + x] = norm(c, rgb[order[c]]);
            }
        });
    }
}

/// Where `place` puts the frame halved onto the input's grid, as the frame
/// pixel pair of input pixel (0, 0) (which may lie outside the frame):
/// `Some` when the scale is one half and the origin is on even frame
/// pixels, as for the whole frame of a 640×480 camera in the default
/// 320×240 input and for the windows around followed faces at that scale
/// ([`Placement::around`] puts them on the whole search's grid).
fn halving(frame: &Frame, place: Placement) -> Option<(isize, isize)> {
    let pair = |origin: f32| {
        let half = origin / 2.0;
        (half == half.trunc() && half.abs() <= (1 << 24) as f32).then_some(half as isize)
    };
    if place.scale != 0.5 || frame.format != crate::frame::PixelFormat::I420 {
        return None;
    }
    Some((pair(place.x0)?, pair(place.y0)?))
}

/// [`sample_input`]'s three planes where the frame is [`halving`] onto the
/// input (input pixel (x, y) on frame pixel pair (`origin` + (x, y))), for
/// the covered input pixels, row by row through
/// [`Sampler::rgb_half_row`], each row then normalised; `false` (with
/// `data` partly written) where the fast path does not apply.
fn halve_into(
    sampler: &Sampler,
    origin: [isize; 2],
    w: usize,
    [xs, ys]: [&std::ops::Range<usize>; 2],
    order: [usize; 3],
    norm: impl Fn(usize, f32) -> f32,
    data: &mut [f32],
) -> bool {
    let plane = data.len() / 3;
    let (first, rest) = data.split_at_mut(plane);
    let (second, third) = rest.split_at_mut(plane);
    // The covered pixels' centres lie in the frame: their pairs are in it.
    let (Ok(i0), Ok(j0)) = (
        usize::try_from(origin[0] + xs.start as isize),
        usize::try_from(origin[1] + ys.start as isize),
    ) else {
        return false;
    };
    for (j, y) in (j0..).zip(ys.clone()) {
        let row = y * w + xs.start..y * w + xs.end;
        let mut rows = [&mut *first, &mut *second, &mut *third].map(|p| &mut p[row.clone()]);
        let [p0, p1, p2] = &mut rows;
        // `order` is [2, 1, 0] or [0, 1, 2]: the plane of R, G and B.
        let rgb = if order[0] == 2 {
            [&mut **p2, &mut **p1, &mut **p0]
        } else {
            [&mut **p0, &mut **p1, &mut **p2]
        };
        if !sampler.rgb_half_row(j, i0, rgb) {
            return false;
        }
        for (c, p) in rows.into_iter().enumerate() {
            for v in p {
                *v = norm(c, *v);
            }
        }
    }
    true
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

    /// A grey model's input spec with a free size.
    fn grey_spec(mean: f32, std: f32) -> InputSpec {
        InputSpec {
            shape: vec![1, 1, 0, 0],
            layout: "NCHW".into(),
            color: ColorOrder::Grey,
            scale: 1.0,
            mean: vec![mean],
            std: vec![std],
        }
    }

    #[test]
    fn letterbox_feeds_a_grey_model_one_plane() {
        // A grey manifest has one mean and one std; three planes used to
        // index a second mean (a panic at the first frame).
        let spec = grey_spec(100.0, 2.0);
        let f = Frame::new(4, 2, crate::frame::PixelFormat::Grey, vec![120; 8]);
        // A reused buffer: whatever was there is overwritten.
        let mut v = vec![f32::NAN; 64];
        let place = Placement {
            x0: 0.0,
            y0: 0.0,
            scale: 2.0,
        };
        sample_input(&spec, 8, 8, &f, place, &mut v);
        assert_eq!(v[0], 10.0);
        // Padding below the letterboxed frame is the mean: 0.
        assert_eq!(v[7 * 8], 0.0);
    }

    /// The halving fast path (the whole frame, and windows at the whole
    /// search's scale of one half, which lie on even frame pixels) fills
    /// the input with exactly what sampling each pixel on its own gives:
    /// the frame's bilinear RGB at the pixel's centre, normalised, in the
    /// model's channel order, and 0 outside the frame. Placements the fast
    /// path does not take (odd or fractional origins, another scale) give
    /// the same by the general path.
    #[test]
    fn halved_inputs_are_the_per_pixel_samples_bit_for_bit() {
        let (fw, fh) = (64u32, 48u32);
        let len = crate::frame::PixelFormat::I420.buffer_len(fw, fh).unwrap();
        let data = (0..len).map(|i| (i * 131 % 251) as u8).collect();
        let f = Frame::new(fw, fh, crate::frame::PixelFormat::I420, data);
        let sampler = Sampler::new(&f);
        for color in [ColorOrder::Bgr, ColorOrder::Rgb] {
            let spec = InputSpec {
                shape: vec![1, 3, 0, 0],
                layout: "NCHW".into(),
                color,
                scale: 1.0,
                mean: vec![104.0, 117.0, 127.0],
                std: vec![1.0, 1.0, 1.0],
            };
            let order = if color == ColorOrder::Bgr {
                [2, 1, 0]
            } else {
                [0, 1, 2]
            };
            // (x0, y0, scale, side): the whole frame; windows reaching past
            // each border; one off the even grid; another scale.
            let cases = [
                (0.0, 0.0, 0.5, [32, 24]),
                (-10.0, 6.0, 0.5, [24, 24]),
                (40.0, -4.0, 0.5, [24, 24]),
                (2.0, 30.0, 0.5, [16, 16]),
                (3.0, 2.0, 0.5, [16, 16]),
                (1.5, 2.0, 0.5, [16, 16]),
                (0.0, 0.0, 0.25, [16, 12]),
            ];
            for (x0, y0, scale, [w, h]) in cases {
                let place = Placement { x0, y0, scale };
                let mut got = vec![f32::NAN; 3 * w * h];
                sample_input(&spec, w, h, &f, place, &mut got);
                for (k, &v) in got.iter().enumerate() {
                    let (c, y, x) = (k / (w * h), k / w % h, k % w);
                    let sx = x0 + (x as f32 + 0.5) / scale - 0.5;
                    let sy = y0 + (y as f32 + 0.5) / scale - 0.5;
                    let inside = (-0.5..fw as f32 - 0.5).contains(&sx)
                        && (-0.5..fh as f32 - 0.5).contains(&sy);
                    let want = if inside {
                        sampler.rgb(sx, sy)[order[c]] - spec.mean[c]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "{color:?} at ({x0}, {y0}) x{scale}: plane {c}, ({x}, {y})"
                    );
                }
            }
        }
    }

    /// A square around a box: centred on it at the given scale, with the
    /// part outside the frame left at the mean (0).
    #[test]
    fn a_square_around_a_face_samples_that_part_of_the_frame() {
        let spec = grey_spec(0.0, 1.0);
        // Luma = x + 10 y on a 20×10 frame.
        let data = (0..10u8)
            .flat_map(|y| (0..20u8).map(move |x| x + 10 * y))
            .collect();
        let f = Frame::new(20, 10, crate::frame::PixelFormat::Grey, data);
        // A 4×4 box at (1, 1): an 8-px input at scale 1 covers frame
        // x, y in -1..7.
        let bbox = BBox {
            x: 1.0,
            y: 1.0,
            w: 4.0,
            h: 4.0,
        };
        let place = Placement::around(&bbox, 8, 1.0);
        assert_eq!((place.x0, place.y0), (-1.0, -1.0));
        let mut v = vec![f32::NAN; 64];
        sample_input(&spec, 8, 8, &f, place, &mut v);
        // Row and column 0 lie outside the frame: padding.
        assert!(v[..8].iter().all(|&p| p == 0.0));
        assert!((0..8).all(|y| v[y * 8] == 0.0));
        // Input (1, 1) is frame pixel (0, 0); (3, 2) is (2, 1).
        assert_eq!(v[8 + 1], 0.0 + 0.0);
        assert_eq!(v[2 * 8 + 3], 2.0 + 10.0);
        assert_eq!(v[7 * 8 + 7], 6.0 + 60.0);
        // Decoding maps input pixels back through the same placement: an
        // anchor-sized box at the input's centre lands on the box.
        let spec = DetectorSpec {
            strides: vec![8],
            anchor_sizes: vec![vec![4.0]],
            variance: [0.1, 0.2],
        };
        let cfg = DetectorConfig {
            min_face_size: crate::config::PositiveU32(1),
            ..DetectorConfig::default()
        };
        let post = PostProcess::new(&spec, 8, 8, &cfg).unwrap();
        let (loc, conf, lm) = ([0.0f32; 4], [0.0f32, 1.0], [0.0f32; 10]);
        let outputs: [(&[usize], &[f32]); 3] =
            [(&[1, 1, 4], &loc), (&[1, 1, 2], &conf), (&[1, 1, 10], &lm)];
        let mut faces = Vec::new();
        post.run_placed(&outputs, place, 20, 10, &mut faces)
            .unwrap();
        assert_eq!(faces.len(), 1);
        assert_eq!(faces[0].bbox, bbox);
        assert_eq!(faces[0].landmarks[0], [3.0, 3.0]);
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
