//! The landmark stage: MediaPipe's face mesh on a rotated square around a
//! face, then its iris model on each eye, turned into the measurements the
//! driver-state signals need ([`FaceMeasure`]): eye openness per eye,
//! mouth opening, head yaw and pitch.
//!
//! Geometry follows MediaPipe's own graphs (the recipes are in the
//! manifests, `models/face-landmark.toml` and `models/iris-landmark.toml`):
//! - the face crop is a square of 1.5 × the face's size, centred on it and
//!   rotated so the eyes are level; from a detection the eyes are the
//!   detector's eye landmarks, from a previous mesh points 33 and 263;
//! - an eye crop is a square of 2.3 × the eye's width between its corners
//!   (33→133 for the subject's right eye, 362→263 for the left), rotated
//!   along them; the left eye is mirrored so the model always sees the
//!   outer corner on the left.
//!
//! Eye openness is measured on the iris model's refined eye contour, not
//! on the 468-point mesh: on real footage the mesh's lids barely move
//! (`../shared/notes/driver-state.md`), the refined contour does. An eye
//! the camera cannot see (sunglasses, a hand) is unknown, not measured:
//! the models draw an eye there all the same ([`MIN_EYE_CONTRAST`]).

use std::path::{Path, PathBuf};

use tract_onnx::prelude::*;

use crate::driver::FaceMeasure;
use crate::frame::{Frame, Sampler};
use crate::vision::classifier::{supersample, Crop};
use crate::vision::detector::Face;
use crate::vision::model::{output_floats, LoadedModel, ModelError, Task};
use crate::vision::worker::ModelWorker;

/// Points of the face mesh.
pub const MESH_POINTS: usize = 468;

/// Scale of the face crop over the face's size (MediaPipe's ROI).
const FACE_ROI_SCALE: f32 = 1.5;
/// Scale of an eye crop over the eye's width (MediaPipe's iris ROI).
const EYE_ROI_SCALE: f32 = 2.3;

/// Mesh points of the eye corners: (outer, inner) of the subject's right
/// eye (image left) and left eye.
const EYE_CORNERS: [(usize, usize); 2] = [(33, 133), (263, 362)];
/// Mesh points of the mouth: inner upper and lower lip, corners.
const MOUTH: [usize; 4] = [13, 14, 61, 291];
/// Mesh points that fix the face's rotation (the eye line) for the next
/// frame's crop.
const EYE_LINE: (usize, usize) = (33, 263);

/// Below this face-presence probability the mesh is not a face (a hand,
/// the seat): MediaPipe's own threshold.
pub const MIN_PRESENCE: f32 = 0.5;

/// Beyond this |yaw| one eye is foreshortened and partly hidden by the
/// nose: its contour is guessed, not seen, so it is not judged.
const MAX_EYE_YAW_DEG: f32 = 40.0;

/// An eye whose box shows less luma spread than this, relative to the
/// face, is not seen (sunglasses, a hand, a dark shadow over it) and is
/// judged unknown: the models still draw an eye there, an open-looking
/// one (over an opaque lens 0.55–1.1 of the open level; shut eyes behind
/// a tinted lens up to 0.7, a hand over open eyes 0.2–0.6, which the eye
/// state takes for a closure). The spread is [`eye_contrast`]: the 70th
/// minus the 10th percentile of the luma over the eye's box, over the
/// face's median luma. A real eye, open or shut, has dark lashes, iris or
/// lid crease against lighter skin or sclera. Measured (`tests/driver.rs`
/// paints the same covers):
/// - real eyes, both eyes of the 472 frames of the development clip, of
///   its mirrored, half-size, darker copy and of the 72 frames of the
///   other clip: 0.46–0.93 (1% under 0.53);
/// - painted over the development clip's frames, at most 0.33: sunglasses
///   letting 15% (0.02–0.19) or 30% (0.05–0.33) of the light through, or
///   opaque (0.04–0.09), all with a soft reflection; an opaque graded lens
///   (0.13–0.31); a skin-coloured hand with shaded fingers (0.16–0.28).
///
/// A mirror lens whose bright reflection covers a third of the eye reaches
/// the real range (a fifth of such frames did); this gate does not catch
/// it.
pub const MIN_EYE_CONTRAST: f32 = 0.4;

/// The eye's box for [`eye_contrast`], in eye widths (corner to corner):
/// from 0.1 to 0.9 of the way between the corners, 0.3 either side of
/// the line through the contour's centre.
const EYE_BOX: (f32, f32) = (0.4, 0.3);
/// Samples along and across the eye's box.
const EYE_BOX_SAMPLES: (usize, usize) = (24, 12);

/// The 468 points of one face, in frame pixels, with the model's
/// confidence that it is a face.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    /// (x, y, z): x and y in frame pixels; z relative depth at the same
    /// scale (smaller is nearer the camera).
    pub points: [[f32; 3]; MESH_POINTS],
    /// Face-presence probability, 0–1.
    pub presence: f32,
}

/// Which eye, as the subject has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eye {
    /// The subject's right eye (the image's left for a frontal face).
    Right,
    /// The subject's left eye.
    Left,
}

/// The 3-D points of MediaPipe's canonical face for head pose, read from
/// `models/face-geometry.toml`.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// (mesh index, [x, y, z] in cm; x to the subject's left, y up, z
    /// towards the camera).
    pub pose: Vec<(usize, [f32; 3])>,
}

/// The face mesh, the iris model and the canonical face.
pub struct Landmarker {
    mesh: LoadedModel,
    iris: LoadedModel,
    geometry: Geometry,
    /// A second thread for the left eye's iris run, so that both eyes run
    /// at once ([`Landmarker::with_eye_thread`]); `None`: one after the
    /// other on the calling thread.
    left_eye: Option<ModelWorker>,
}

impl Geometry {
    /// Reads the `[pose]` point list and its `[points]` from a
    /// face-geometry file.
    pub fn load(path: &Path) -> Result<Geometry, ModelError> {
        let bad = |message: String| ModelError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let bytes = crate::source::read_regular_file(path, super::model::MAX_MANIFEST_BYTES)
            .map_err(|error| ModelError::Read {
                path: path.to_path_buf(),
                error,
            })?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| bad(e.message().trim().to_string()))?;
        let indices = table
            .get("pose")
            .and_then(|p| p.get("pnp"))
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("key `pose.pnp`: missing or not a list".into()))?;
        let points = table
            .get("points")
            .and_then(|v| v.as_table())
            .ok_or_else(|| bad("missing [points]".into()))?;
        let mut pose = Vec::with_capacity(indices.len());
        for v in indices {
            let i = v
                .as_integer()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < MESH_POINTS)
                .ok_or_else(|| bad(format!("key `pose.pnp`: {v} is not a mesh index")))?;
            let xyz = points
                .get(&i.to_string())
                .and_then(|p| p.as_array())
                .filter(|a| a.len() == 3)
                .and_then(|a| {
                    let f: Vec<f32> = a
                        .iter()
                        .filter_map(|c| c.as_float().map(|f| f as f32))
                        .filter(|f| f.is_finite())
                        .collect();
                    (f.len() == 3).then(|| [f[0], f[1], f[2]])
                })
                .ok_or_else(|| bad(format!("key `points.{i}`: not three finite numbers")))?;
            pose.push((i, xyz));
        }
        if pose.len() < 4 {
            return Err(bad("key `pose.pnp`: at least 4 points are needed".into()));
        }
        Ok(Geometry { pose })
    }
}

impl Landmarker {
    /// Loads the face mesh, the iris model and the canonical face from
    /// their manifests.
    pub fn load(mesh: &Path, iris: &Path, geometry: &Path) -> Result<Landmarker, ModelError> {
        Ok(Landmarker {
            mesh: LoadedModel::load(mesh, Task::FaceLandmarks, None)?,
            iris: LoadedModel::load(iris, Task::IrisLandmarks, None)?,
            geometry: Geometry::load(geometry)?,
            left_eye: None,
        })
    }

    /// Runs the left eye's iris model on a thread of its own from now on,
    /// while the calling thread runs the right eye's: the two runs are a
    /// face's two costliest after the mesh, and independent. The results
    /// are the same as without (the same plan on the same input).
    pub fn with_eye_thread(mut self) -> Result<Landmarker, ModelError> {
        let twin = self.iris.twin()?;
        self.left_eye = Some(ModelWorker::start(
            vec![twin],
            "ferd-left-eye",
            copy_contour,
        )?);
        Ok(self)
    }

    /// Whether the left eye runs on its own thread.
    pub fn has_eye_thread(&self) -> bool {
        self.left_eye.is_some()
    }

    /// The face mesh in `roi`, mapped back to frame pixels.
    pub fn mesh(&self, frame: &Frame, roi: &Crop) -> Result<Mesh, ModelError> {
        let (h, w) = hw(&self.mesh);
        let path = &self.mesh.path;
        self.mesh.run_with(
            |input| nhwc_rgb(&self.mesh, frame, roi, w, h, false, input),
            |outputs| {
                let mut raw = None;
                let mut presence = None;
                for o in outputs {
                    let v = output_floats(path, o)?;
                    match v.len() {
                        n if n == MESH_POINTS * 3 => raw = Some(v),
                        1 => presence = Some(sigmoid(v[0])),
                        _ => {}
                    }
                }
                let (Some(raw), Some(presence)) = (raw, presence) else {
                    return Err(shape_error(
                        path,
                        "no [1404] landmark output and [1] presence output",
                    ));
                };
                let mut points = [[0.0; 3]; MESH_POINTS];
                for (p, r) in points.iter_mut().zip(raw.chunks_exact(3)) {
                    let [x, y] = to_frame(roi, w, h, r[0], r[1], false);
                    // z is in crop pixels too: the same scale as x.
                    *p = [x, y, r[2] * roi.side / w as f32];
                }
                Ok(Mesh { points, presence })
            },
        )
    }

    /// The refined contour of one eye: 16 points in frame pixels: 0 outer
    /// corner, 1–7 lower lid from outer to inner, 8 inner corner, 9–15
    /// upper lid from outer to inner.
    pub fn eye_contour(
        &self,
        frame: &Frame,
        mesh: &Mesh,
        eye: Eye,
    ) -> Result<[[f32; 2]; 16], ModelError> {
        let roi = eye_roi(mesh, eye);
        let mirror = eye == Eye::Left;
        let (h, w) = hw(&self.iris);
        self.iris.run_with(
            |input| nhwc_rgb(&self.iris, frame, &roi, w, h, mirror, input),
            |outputs| {
                let contour = contour_output(&self.iris.path, outputs)?;
                Ok(contour_points(contour, &roi, w, h, mirror))
            },
        )
    }

    /// Both eyes' contours, `[right, left]`: at once when the left eye has
    /// its thread, else one after the other.
    fn eye_contours(&self, frame: &Frame, mesh: &Mesh) -> Result<[[[f32; 2]; 16]; 2], ModelError> {
        let Some(worker) = &self.left_eye else {
            return Ok([
                self.eye_contour(frame, mesh, Eye::Right)?,
                self.eye_contour(frame, mesh, Eye::Left)?,
            ]);
        };
        let roi = eye_roi(mesh, Eye::Left);
        let (h, w) = hw(&self.iris);
        worker.post(0, |input| {
            nhwc_rgb(&self.iris, frame, &roi, w, h, true, input)
        })?;
        let right = self.eye_contour(frame, mesh, Eye::Right);
        // Waited for even when the right eye failed: the next face posts
        // again.
        let left = worker.wait(|contour| contour_points(contour, &roi, w, h, true));
        Ok([right?, left?])
    }

    /// Everything measured on one face: mesh, eyes, mouth, pose. `roi` is
    /// where to look (from the detection or the previous frame's mesh).
    pub fn measure(&self, frame: &Frame, roi: &Crop) -> Result<(Mesh, FaceMeasure), ModelError> {
        let mesh = self.mesh(frame, roi)?;
        if mesh.presence < MIN_PRESENCE {
            let unknown = FaceMeasure {
                eyes: [None, None],
                mouth: None,
                pose: None,
            };
            return Ok((mesh, unknown));
        }
        let pose = head_pose(&mesh, &self.geometry);
        let face = face_level(frame, &mesh);
        let mut eyes = [None, None];
        // Eyes turned away from the camera are not judged.
        let hidden = pose.is_some_and(|(yaw, _)| yaw.abs() > MAX_EYE_YAW_DEG);
        if !hidden {
            let contours = self.eye_contours(frame, &mesh)?;
            for (slot, contour) in eyes.iter_mut().zip(&contours) {
                // Nor is one the camera cannot see (sunglasses, a hand).
                let seen =
                    eye_contrast(frame, contour, face).is_some_and(|c| c >= MIN_EYE_CONTRAST);
                if seen {
                    *slot = eye_openness(contour);
                }
            }
        }
        let measure = FaceMeasure {
            eyes,
            mouth: mouth_opening(&mesh),
            pose,
        };
        Ok((mesh, measure))
    }
}

/// The iris model's eye-contour output: 71 points × (x, y, z) in crop
/// pixels.
fn contour_output<'a>(path: &Path, outputs: &'a [TValue]) -> Result<&'a [f32], ModelError> {
    outputs
        .iter()
        .find_map(|o| output_floats(path, o).ok().filter(|v| v.len() == 71 * 3))
        .ok_or_else(|| shape_error(path, "no [213] eye-contour output"))
}

/// [`contour_output`]'s values, copied: the eye thread's
/// [`crate::vision::worker::PickOutput`].
fn copy_contour(path: &Path, outputs: &[TValue], out: &mut Vec<f32>) -> Result<(), ModelError> {
    out.extend_from_slice(contour_output(path, outputs)?);
    Ok(())
}

/// The first 16 contour points (the lids and corners) of an eye crop's
/// model output, in frame pixels.
fn contour_points(contour: &[f32], roi: &Crop, w: usize, h: usize, mirror: bool) -> [[f32; 2]; 16] {
    let mut out = [[0.0; 2]; 16];
    for (k, p) in out.iter_mut().enumerate() {
        *p = to_frame(roi, w, h, contour[3 * k], contour[3 * k + 1], mirror);
    }
    out
}

/// The face crop for a detection: 1.5 × its box's longer side, rotated
/// by the detector's eye landmarks.
pub fn roi_for_face(face: &Face) -> Crop {
    let [r, l] = [face.landmarks[0], face.landmarks[1]];
    let (cx, cy) = face.bbox.center();
    Crop {
        cx,
        cy,
        side: face.bbox.w.max(face.bbox.h) * FACE_ROI_SCALE,
        angle: (l[1] - r[1]).atan2(l[0] - r[0]),
    }
}

/// The face crop for the next frame from this frame's mesh (MediaPipe
/// follows a face this way between detections): the box around the
/// points, in the eye line's frame, 1.5 ×.
pub fn roi_from_mesh(mesh: &Mesh) -> Crop {
    let a = mesh.points[EYE_LINE.0];
    let b = mesh.points[EYE_LINE.1];
    let angle = (b[1] - a[1]).atan2(b[0] - a[0]);
    let (sin, cos) = angle.sin_cos();
    // Extent in the rotated frame.
    let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for p in &mesh.points {
        let u = p[0] * cos + p[1] * sin;
        let v = -p[0] * sin + p[1] * cos;
        lo = [lo[0].min(u), lo[1].min(v)];
        hi = [hi[0].max(u), hi[1].max(v)];
    }
    let (mu, mv) = ((lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0);
    Crop {
        cx: mu * cos - mv * sin,
        cy: mu * sin + mv * cos,
        side: (hi[0] - lo[0]).max(hi[1] - lo[1]) * FACE_ROI_SCALE,
        angle,
    }
}

/// The eye crop from the mesh's corners of `eye`.
fn eye_roi(mesh: &Mesh, eye: Eye) -> Crop {
    let (a, b) = match eye {
        Eye::Right => EYE_CORNERS[0],
        Eye::Left => (EYE_CORNERS[1].1, EYE_CORNERS[1].0),
    };
    let (p0, p1) = (mesh.points[a], mesh.points[b]);
    let (dx, dy) = (p1[0] - p0[0], p1[1] - p0[1]);
    Crop {
        cx: (p0[0] + p1[0]) / 2.0,
        cy: (p0[1] + p1[1]) / 2.0,
        side: EYE_ROI_SCALE * dx.abs().max(dy.abs()),
        angle: dy.atan2(dx),
    }
}

/// Eye openness of a refined contour: the mean gap between the upper and
/// lower lid over the middle of the eye, over the corner-to-corner width.
/// `None` for a degenerate contour (corners on top of each other).
pub fn eye_openness(c: &[[f32; 2]; 16]) -> Option<f32> {
    let width = dist(c[0], c[8]);
    // Also refuses NaN from a garbage output.
    if width.is_nan() || width <= 1.0 {
        return None;
    }
    // Lower lid 1..=7 and upper lid 9..=15 run outer → inner in step, so
    // k and k + 8 face each other; the middle three pairs carry the
    // opening (the ends converge on the corners whatever the state).
    let gap: f32 = (3..=5).map(|k| dist(c[k], c[k + 8])).sum::<f32>() / 3.0;
    Some(gap / width)
}

/// The face's median luma over the mesh's points: the level
/// [`eye_contrast`] is measured against (most points lie on skin; an
/// occluder over the eyes covers too few of them to move the median far).
pub fn face_level(frame: &Frame, mesh: &Mesh) -> f32 {
    let mut v = [0f32; MESH_POINTS];
    for (l, p) in v.iter_mut().zip(&mesh.points) {
        *l = frame.luma_bilinear(p[0], p[1]);
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// How visible an eye is: over a box around its contour (see
/// [`EYE_BOX`]), the 70th minus the 10th percentile of the luma, over
/// `face` (the face's level, [`face_level`]). `None` when it cannot be
/// measured (a degenerate contour, a black face).
pub fn eye_contrast(frame: &Frame, c: &[[f32; 2]; 16], face: f32) -> Option<f32> {
    let (dx, dy) = (c[8][0] - c[0][0], c[8][1] - c[0][1]);
    let width = (dx * dx + dy * dy).sqrt();
    if width.is_nan() || width <= 1.0 || face.is_nan() || face < 1.0 {
        return None;
    }
    // Along the corner line and across it, in pixels per eye width.
    let (ax, ay) = (dx, dy);
    let (nx, ny) = (-dy, dx);
    let n = c.len() as f32;
    let cx = c.iter().map(|p| p[0]).sum::<f32>() / n;
    let cy = c.iter().map(|p| p[1]).sum::<f32>() / n;
    let (nu, nv) = EYE_BOX_SAMPLES;
    let mut v = [0f32; EYE_BOX_SAMPLES.0 * EYE_BOX_SAMPLES.1];
    for (k, l) in v.iter_mut().enumerate() {
        let (i, j) = (k / nv, k % nv);
        let u = EYE_BOX.0 * (2.0 * (i as f32 + 0.5) / nu as f32 - 1.0);
        let w = EYE_BOX.1 * (2.0 * (j as f32 + 0.5) / nv as f32 - 1.0);
        *l = frame.luma_bilinear(cx + u * ax + w * nx, cy + u * ay + w * ny);
    }
    v.sort_unstable_by(f32::total_cmp);
    let q = |p: f32| v[((v.len() - 1) as f32 * p) as usize];
    Some((q(0.7) - q(0.1)) / face)
}

/// Inner-lip gap over mouth width.
fn mouth_opening(mesh: &Mesh) -> Option<f32> {
    let p = |i: usize| [mesh.points[i][0], mesh.points[i][1]];
    let width = dist(p(MOUTH[2]), p(MOUTH[3]));
    (width > 1.0).then(|| dist(p(MOUTH[0]), p(MOUTH[1])) / width)
}

/// Head yaw and pitch in degrees from the mesh and the canonical face: a
/// scaled-orthographic fit (the face is small against its distance from
/// the camera), least squares over the pose points. Yaw is positive when
/// the face turns to the image's right, pitch positive when it tilts up.
pub fn head_pose(mesh: &Mesh, geometry: &Geometry) -> Option<(f32, f32)> {
    let n = geometry.pose.len() as f64;
    // Centre both point sets; image y points down, the model's up.
    let (mut c2, mut c3) = ([0.0f64; 2], [0.0f64; 3]);
    for &(i, m) in &geometry.pose {
        let p = mesh.points[i];
        c2[0] += p[0] as f64 / n;
        c2[1] += -p[1] as f64 / n;
        for k in 0..3 {
            c3[k] += m[k] as f64 / n;
        }
    }
    // Solve p = M · P for the 2×3 matrix M by normal equations:
    // M = (Σ p Pᵀ)(Σ P Pᵀ)⁻¹.
    let mut a = [[0.0f64; 3]; 3];
    let mut b = [[0.0f64; 3]; 2];
    for &(i, m) in &geometry.pose {
        let p = mesh.points[i];
        let q = [p[0] as f64 - c2[0], -p[1] as f64 - c2[1]];
        let r = [
            m[0] as f64 - c3[0],
            m[1] as f64 - c3[1],
            m[2] as f64 - c3[2],
        ];
        for (row, qv) in b.iter_mut().zip(q) {
            for k in 0..3 {
                row[k] += qv * r[k];
            }
        }
        for (j, aj) in a.iter_mut().enumerate() {
            for k in 0..3 {
                aj[k] += r[j] * r[k];
            }
        }
    }
    let inv = invert3(&a)?;
    let mut m = [[0.0f64; 3]; 2];
    for (mr, br) in m.iter_mut().zip(&b) {
        for k in 0..3 {
            mr[k] = (0..3).map(|j| br[j] * inv[j][k]).sum();
        }
    }
    // Rows of M are scaled rows of the rotation: normalise, make the
    // second orthogonal to the first, and complete with their cross
    // product.
    let norm = |v: [f64; 3]| {
        let l = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        (l > 1e-9).then(|| [v[0] / l, v[1] / l, v[2] / l])
    };
    let r1 = norm(m[0])?;
    let d = r1[0] * m[1][0] + r1[1] * m[1][1] + r1[2] * m[1][2];
    let r2 = norm([
        m[1][0] - d * r1[0],
        m[1][1] - d * r1[1],
        m[1][2] - d * r1[2],
    ])?;
    let r3 = [
        r1[1] * r2[2] - r1[2] * r2[1],
        r1[2] * r2[0] - r1[0] * r2[2],
        r1[0] * r2[1] - r1[1] * r2[0],
    ];
    // The face's normal (the model's +z) in camera axes is the third
    // column of the rotation: (r1.z, r2.z, r3.z).
    let yaw = r1[2].atan2(r3[2]).to_degrees() as f32;
    let pitch = r2[2].atan2(r3[2]).to_degrees() as f32;
    (yaw.is_finite() && pitch.is_finite()).then_some((yaw, pitch))
}

fn invert3(a: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            // The cofactor of (c, r), cyclic indices giving the sign.
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            *v = (a[r1][c1] * a[r2][c2] - a[r1][c2] * a[r2][c1]) / det;
        }
    }
    Some(inv)
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Height and width of an NHWC model's input (fixed: the manifest check).
fn hw(model: &LoadedModel) -> (usize, usize) {
    let [a, b] = model.manifest.input.spatial_axes();
    (model.input_shape[a], model.input_shape[b])
}

/// A crop point (crop pixels, continuous) back in the frame.
fn to_frame(roi: &Crop, w: usize, h: usize, x: f32, y: f32, mirror: bool) -> [f32; 2] {
    let x = if mirror { w as f32 - x } else { x };
    let dx = (x / w as f32 - 0.5) * roi.side;
    let dy = (y / h as f32 - 0.5) * roi.side;
    let (sin, cos) = roi.angle.sin_cos();
    [roi.cx + dx * cos - dy * sin, roi.cy + dx * sin + dy * cos]
}

/// The crop as a `[1, h, w, 3]` RGB input (`data`, h × w × 3 values,
/// overwritten) scaled as the manifest says, mirrored left–right if asked.
fn nhwc_rgb(
    model: &LoadedModel,
    frame: &Frame,
    roi: &Crop,
    w: usize,
    h: usize,
    mirror: bool,
    data: &mut [f32],
) {
    let spec = &model.manifest.input;
    let sampler = Sampler::new(frame);
    let mut i = 0;
    supersample(
        roi,
        w,
        h,
        |x, y| sampler.rgb(x, y),
        |rgb| {
            let (row, col) = (i / w, i % w);
            let col = if mirror { w - 1 - col } else { col };
            let at = (row * w + col) * 3;
            for c in 0..3 {
                data[at + c] = (rgb[c] * spec.scale - spec.mean[c]) / spec.std[c];
            }
            i += 1;
        },
    );
}

/// An output's values, borrowed (tract's outputs are contiguous).
fn shape_error(path: &Path, message: &str) -> ModelError {
    ModelError::Shape {
        path: PathBuf::from(path),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face-geometry.toml"))
            .unwrap()
    }

    /// A mesh whose pose points are the canonical face turned by `yaw`
    /// and `pitch` and projected, 10 px per cm, centred at (320, 240).
    fn posed(g: &Geometry, yaw: f32, pitch: f32) -> Mesh {
        let (sy, cy) = yaw.to_radians().sin_cos();
        let (sp, cp) = pitch.to_radians().sin_cos();
        let mut points = [[0.0; 3]; MESH_POINTS];
        for &(i, [x, y, z]) in &g.pose {
            // Yaw about the vertical axis, then pitch about the horizontal.
            let (x1, z1) = (x * cy + z * sy, -x * sy + z * cy);
            let (y2, z2) = (y * cp + z1 * sp, -y * sp + z1 * cp);
            points[i] = [320.0 + 10.0 * x1, 240.0 - 10.0 * y2, 10.0 * z2];
        }
        Mesh {
            points,
            presence: 1.0,
        }
    }

    #[test]
    fn head_pose_recovers_known_turns() {
        let g = geometry();
        for (yaw, pitch) in [(0.0, 0.0), (30.0, 0.0), (-25.0, 10.0), (10.0, -20.0)] {
            let (y, p) = head_pose(&posed(&g, yaw, pitch), &g).unwrap();
            assert!(
                (y - yaw).abs() < 1.5 && (p - pitch).abs() < 1.5,
                "({yaw}, {pitch}) came back as ({y}, {p})"
            );
        }
    }

    #[test]
    fn crop_points_map_back_through_rotation_and_mirror() {
        let roi = Crop {
            cx: 100.0,
            cy: 50.0,
            side: 64.0,
            angle: std::f32::consts::FRAC_PI_2,
        };
        // The crop's centre is the ROI's centre, mirrored or not.
        assert_eq!(to_frame(&roi, 64, 64, 32.0, 32.0, false), [100.0, 50.0]);
        assert_eq!(to_frame(&roi, 64, 64, 32.0, 32.0, true), [100.0, 50.0]);
        // The crop's +x runs along the frame's +y at 90°.
        let [x, y] = to_frame(&roi, 64, 64, 64.0, 32.0, false);
        assert!(
            (x - 100.0).abs() < 1e-4 && (y - 82.0).abs() < 1e-4,
            "{x} {y}"
        );
        let [x, y] = to_frame(&roi, 64, 64, 64.0, 32.0, true);
        assert!(
            (x - 100.0).abs() < 1e-4 && (y - 18.0).abs() < 1e-4,
            "{x} {y}"
        );
    }

    #[test]
    fn openness_is_the_lid_gap_over_the_width() {
        let mut c = [[0.0f32; 2]; 16];
        c[0] = [0.0, 0.0];
        c[8] = [40.0, 0.0];
        for k in 1..8 {
            c[k] = [5.0 * k as f32, 5.0];
            c[k + 8] = [5.0 * k as f32, -5.0];
        }
        assert!((eye_openness(&c).unwrap() - 0.25).abs() < 1e-6);
        c[8] = c[0];
        assert_eq!(eye_openness(&c), None);
    }

    #[test]
    fn shipped_geometry_loads() {
        assert!(geometry().pose.len() >= 6);
    }

    #[test]
    fn an_eye_without_dark_features_or_without_skin_around_is_not_seen() {
        use crate::frame::PixelFormat;
        // A 40 px wide eye at (50, 30) on skin of luma 150.
        let mut c = [[0.0f32; 2]; 16];
        c[0] = [30.0, 30.0];
        c[8] = [70.0, 30.0];
        for k in 1..8 {
            c[k] = [30.0 + 5.0 * k as f32, 33.0];
            c[k + 8] = [30.0 + 5.0 * k as f32, 27.0];
        }
        let picture = |f: &dyn Fn(f32, f32) -> u8| {
            let data = (0..60 * 100)
                .map(|i| f((i % 100) as f32, (i / 100) as f32))
                .collect();
            Frame::new(100, 60, PixelFormat::Grey, data)
        };
        // Lashes and an iris: a dark ellipse over a third of the box.
        let eye = picture(&|x, y| {
            if ((x - 50.0) / 14.0).powi(2) + ((y - 30.0) / 5.0).powi(2) <= 1.0 {
                25
            } else {
                150
            }
        });
        let seen = eye_contrast(&eye, &c, 150.0).unwrap();
        assert!((seen - 125.0 / 150.0).abs() < 0.01, "{seen}");
        assert!(seen >= MIN_EYE_CONTRAST);
        // Skin all over (a hand), or dark all over (a lens).
        for level in [150, 20] {
            let flat = picture(&|_, _| level);
            assert_eq!(eye_contrast(&flat, &c, 150.0), Some(0.0));
        }
        // The face's level is the median over the mesh's points.
        let mut points = [[50.0, 30.0, 0.0]; MESH_POINTS];
        for p in &mut points[MESH_POINTS / 2 - 1..] {
            *p = [5.0, 5.0, 0.0];
        }
        let mesh = Mesh {
            points,
            presence: 1.0,
        };
        assert_eq!(face_level(&eye, &mesh), 150.0);
        // Nothing to measure against: a black face, a degenerate eye.
        assert_eq!(eye_contrast(&eye, &c, 0.0), None);
        let mut flat = c;
        flat[8] = flat[0];
        assert_eq!(eye_contrast(&eye, &flat, 150.0), None);
    }
}
