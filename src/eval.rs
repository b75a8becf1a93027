//! Accuracy of the expression classifier on a labelled dataset, measured
//! through the same runtime and preprocessing the device uses.
//!
//! The dataset is the Kaggle folder layout of FER2013 (`DIR/<label>/*.jpg`).
//! Its images are already face crops, so each one is classified whole
//! ([`Crop::whole`]) through the same sampler and normalisation that crops
//! detected faces in `ferd run`.
//!
//! With scenes ([`evaluate_scenes`]) each image is also pasted, enlarged,
//! into a larger noisy frame, found there by the detector and classified
//! from the detector's crop and, optionally, from the face mesh's crop, as
//! `ferd run` does without and with the landmark stage.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::expression::Expression;
use crate::frame::{Frame, PixelFormat};
use crate::source::{decode_image, SourceError};
use crate::vision::classifier::Crop;
use crate::vision::follow::continuation;
use crate::vision::landmarks::{self, Landmarker};
use crate::vision::{face_from_mesh, BBox, Classifier, Detector, ModelError};

/// Why a dataset could not be evaluated. Causes are part of the message,
/// never also `source()`, so that anyhow's `{:#}` prints each once.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The folder or one of its class folders could not be listed.
    #[error("{path}: {error}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The I/O error; shown in the message, not chained.
        error: std::io::Error,
    },
    /// No class folder with images was found.
    #[error("{0}: no images in class folders named after the expressions (angry/, disgust/, ..., neutral/)")]
    Empty(PathBuf),
    /// The model failed on an image.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A model failed on this image (scenes).
    #[error("{path}: {error}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The model's error; shown in the message, not chained.
        error: ModelError,
    },
}

/// A labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Its label (from the folder name).
    pub label: Expression,
}

/// Lists `DIR/<label>/*.{jpg,jpeg,png}`, sorted; folders that are not an
/// expression name are logged and ignored. Files are chosen by name: one
/// that is not a regular image file is skipped with its reason by
/// [`evaluate`], without being opened.
pub fn list_dataset(dir: &Path) -> Result<Vec<Sample>, EvalError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| EvalError::Io { path, error }
    };
    let mut samples = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort();
    for class_dir in entries.into_iter().filter(|p| p.is_dir()) {
        let name = class_dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Ok(label) = name.parse::<Expression>() else {
            log::warn!("{}: not an expression name, ignored", class_dir.display());
            continue;
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .map_err(io(&class_dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(&class_dir))?;
        files.retain(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["jpg", "jpeg", "png"]
                    .iter()
                    .any(|x| e.eq_ignore_ascii_case(x))
            })
        });
        files.sort();
        samples.extend(files.into_iter().map(|path| Sample { path, label }));
    }
    if samples.is_empty() {
        return Err(EvalError::Empty(dir.to_path_buf()));
    }
    Ok(samples)
}

/// A confusion matrix over the seven classes: `counts[truth][predicted]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// The counts.
    pub counts: [[u64; 7]; 7],
}

impl Confusion {
    /// Records one prediction.
    pub fn add(&mut self, truth: Expression, predicted: Expression) {
        self.counts[truth.index()][predicted.index()] += 1;
    }

    /// Number of samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Fraction predicted correctly (0 when empty).
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..7).map(|i| self.counts[i][i]).sum();
        ratio(correct, self.total())
    }

    /// Of the samples predicted as `c`, the fraction that are `c`.
    pub fn precision(&self, c: Expression) -> f64 {
        let i = c.index();
        ratio(self.counts[i][i], (0..7).map(|t| self.counts[t][i]).sum())
    }

    /// Of the samples that are `c`, the fraction predicted as `c`.
    pub fn recall(&self, c: Expression) -> f64 {
        let i = c.index();
        ratio(self.counts[i][i], self.counts[i].iter().sum())
    }

    /// Mean recall over the classes present in the data.
    pub fn macro_recall(&self) -> f64 {
        let present: Vec<Expression> = Expression::ALL
            .into_iter()
            .filter(|c| self.counts[c.index()].iter().sum::<u64>() > 0)
            .collect();
        if present.is_empty() {
            return 0.0;
        }
        present.iter().map(|&c| self.recall(c)).sum::<f64>() / present.len() as f64
    }

    /// A text report: per-class precision/recall, the matrix, and a last
    /// line `accuracy: 0.XXXX`.
    pub fn report(&self) -> String {
        let mut s = String::new();
        s.push_str("class       precision  recall  support\n");
        for c in Expression::ALL {
            s.push_str(&format!(
                "{:<10}  {:>9.4}  {:>6.4}  {:>7}\n",
                c.name(),
                self.precision(c),
                self.recall(c),
                self.counts[c.index()].iter().sum::<u64>()
            ));
        }
        s.push_str(&format!(
            "macro recall: {:.4}\n\nconfusion (rows: truth, columns: predicted)\n",
            self.macro_recall()
        ));
        s.push_str("          ");
        for c in Expression::ALL {
            s.push_str(&format!("{:>6}", &c.name()[..3]));
        }
        s.push('\n');
        for t in Expression::ALL {
            s.push_str(&format!("{:<10}", t.name()));
            for p in Expression::ALL {
                s.push_str(&format!("{:>6}", self.counts[t.index()][p.index()]));
            }
            s.push('\n');
        }
        s.push_str(&format!("accuracy: {:.4}\n", self.accuracy()));
        s
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Predictions against labels.
    pub confusion: Confusion,
    /// Images that could not be read, with the reason.
    pub skipped: Vec<String>,
}

/// JSON summary of an evaluation.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// The model's name from its manifest.
    pub model: &'a str,
    /// The dataset folder.
    pub data: &'a Path,
    /// Images evaluated.
    pub images: u64,
    /// Images that could not be read.
    pub skipped: usize,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Mean per-class recall.
    pub macro_recall: f64,
    /// Per-class precision, FER2013 order.
    pub precision: [f64; 7],
    /// Per-class recall, FER2013 order.
    pub recall: [f64; 7],
    /// Class labels, FER2013 order.
    pub labels: [&'static str; 7],
    /// `confusion[truth][predicted]`.
    pub confusion: [[u64; 7]; 7],
    /// The same images inside scenes (only with `--scenes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenes: Option<SceneSummary>,
}

impl Evaluation {
    /// The JSON summary.
    pub fn summary<'a>(&self, model: &'a str, data: &'a Path) -> Summary<'a> {
        let c = &self.confusion;
        Summary {
            model,
            data,
            images: c.total(),
            skipped: self.skipped.len(),
            accuracy: c.accuracy(),
            macro_recall: c.macro_recall(),
            precision: Expression::ALL.map(|e| c.precision(e)),
            recall: Expression::ALL.map(|e| c.recall(e)),
            labels: Expression::ALL.map(|e| e.name()),
            confusion: c.counts,
            scenes: None,
        }
    }
}

/// Classifies every sample; `progress` is called after each image.
pub fn evaluate(
    classifier: &Classifier,
    samples: &[Sample],
    mut progress: impl FnMut(),
) -> Result<Evaluation, EvalError> {
    let mut out = Evaluation::default();
    for s in samples {
        match decode_image(&s.path) {
            Ok(frame) => {
                let probs = classifier.classify(&frame, &Crop::whole(&frame))?;
                out.confusion.add(s.label, probs.top().0);
            }
            Err(e @ (SourceError::Io { .. } | SourceError::Format { .. })) => {
                log::warn!("skipped: {e}");
                out.skipped.push(e.to_string());
            }
        }
        progress();
    }
    Ok(out)
}

/// Width of a scene.
pub const SCENE_WIDTH: u32 = 320;
/// Height of a scene.
pub const SCENE_HEIGHT: u32 = 240;
/// Side of the face pasted into a scene (48 × 3).
pub const SCENE_FACE: u32 = 144;

/// The scene for image number `index`: `image` enlarged (bilinear) to
/// [`SCENE_FACE`]² and pasted at a position drawn from a small LCG seeded
/// by `index`, on a mid-grey background with a fixed noise texture (blobs
/// plus grain) so the detector has something to reject. Returns the scene
/// and where the face is. Deterministic: the same index gives the same
/// scene.
pub fn make_scene(image: &Frame, index: u64) -> (Frame, BBox) {
    let (w, h, side) = (SCENE_WIDTH, SCENE_HEIGHT, SCENE_FACE);
    let mut data = vec![0u8; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            // Coarse blobs (bilinear over a 16-px lattice) plus fine grain.
            let (gx, gy) = (x / 16, y / 16);
            let (fx, fy) = ((x % 16) as f32 / 16.0, (y % 16) as f32 / 16.0);
            let n = |i: u32, j: u32| hash(i as u64, j as u64) as f32 / u32::MAX as f32 - 0.5;
            let blob = (n(gx, gy) * (1.0 - fx) + n(gx + 1, gy) * fx) * (1.0 - fy)
                + (n(gx, gy + 1) * (1.0 - fx) + n(gx + 1, gy + 1) * fx) * fy;
            let grain = hash(x as u64 + 1_000, y as u64 + 7_000) as f32 / u32::MAX as f32 - 0.5;
            let v = 128.0 + 70.0 * blob + 24.0 * grain;
            data[(y * w + x) as usize] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    let mut lcg = Lcg(index);
    let ox = lcg.below(w - side + 1);
    let oy = lcg.below(h - side + 1);
    let (sx, sy) = (
        image.width as f32 / side as f32,
        image.height as f32 / side as f32,
    );
    for y in 0..side {
        for x in 0..side {
            let v = image.luma_bilinear((x as f32 + 0.5) * sx - 0.5, (y as f32 + 0.5) * sy - 0.5);
            data[((oy + y) * w + ox + x) as usize] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    let mut scene = Frame::new(w, h, PixelFormat::Grey, data);
    scene.origin = image.origin.clone();
    let bbox = BBox {
        x: ox as f32,
        y: oy as f32,
        w: side as f32,
        h: side as f32,
    };
    (scene, bbox)
}

/// A 32-bit mix of two coordinates (for the background texture).
fn hash(a: u64, b: u64) -> u32 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    z ^= z >> 29;
    z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 32;
    z as u32
}

/// Knuth's MMIX linear congruential generator.
struct Lcg(u64);

impl Lcg {
    /// A number in `0..n` (`n` ≥ 1), from the high bits.
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n.max(1) as u64) as u32
    }
}

/// Accuracy of one way of cropping faces found in scenes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CropResult {
    /// Correct predictions over all scene images (a miss counts wrong).
    pub accuracy: f64,
    /// Images predicted correctly.
    pub correct: u64,
    /// Predictions against labels, for the images that got a prediction.
    pub confusion: [[u64; 7]; 7],
}

/// JSON summary of the scene evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct SceneSummary {
    /// Scene size `[width, height]`.
    pub scene: [u32; 2],
    /// Side of the pasted face.
    pub face_side: u32,
    /// Images put into scenes (read ones).
    pub images: u64,
    /// Scenes where the detector found a face.
    pub detected: u64,
    /// Scenes where it found none (counted wrong for both crops).
    pub misses: u64,
    /// Scenes whose best detection's centre lies outside the pasted face.
    pub off_target: u64,
    /// Crops from the detector's box ([`Classifier::classify_face`]).
    pub detector: CropResult,
    /// Crops from the box found by looking around the detection again, as
    /// `run` follows a face between whole-frame searches
    /// ([`Detector::detect_around_into`]; absent when the detector's input
    /// size is fixed).
    pub followed: Option<CropResult>,
    /// Faces not found again around their detection (no followed crop,
    /// counted wrong; `run` then searches the whole frame again).
    pub followed_lost: Option<u64>,
    /// Crops from the face mesh (with `--landmarks`).
    pub mesh: Option<CropResult>,
    /// Detections whose mesh fell below the presence threshold (no mesh
    /// crop, counted wrong; the pipeline drops such faces too).
    pub mesh_lost: Option<u64>,
}

/// The outcome of [`evaluate_scenes`].
#[derive(Debug, Clone, Default)]
pub struct SceneEvaluation {
    /// The images classified whole, as [`evaluate`] does.
    pub bare: Evaluation,
    /// Detector crops of the detected faces.
    pub detector: Confusion,
    /// Followed crops (`None` when the detector cannot look around a face).
    pub followed: Option<Confusion>,
    /// Detections not found again around themselves.
    pub followed_lost: u64,
    /// Mesh crops (`None` without a landmarker).
    pub mesh: Option<Confusion>,
    /// Scenes without a detection.
    pub misses: u64,
    /// Best detections off the pasted face.
    pub off_target: u64,
    /// Detections whose mesh was not present.
    pub mesh_lost: u64,
}

impl SceneEvaluation {
    /// Scenes evaluated (images that could be read).
    pub fn images(&self) -> u64 {
        self.bare.confusion.total()
    }

    /// The scene part of the JSON summary.
    pub fn scene_summary(&self) -> SceneSummary {
        let images = self.images();
        let result = |c: &Confusion| {
            let correct = (0..7).map(|i| c.counts[i][i]).sum();
            CropResult {
                accuracy: ratio(correct, images),
                correct,
                confusion: c.counts,
            }
        };
        SceneSummary {
            scene: [SCENE_WIDTH, SCENE_HEIGHT],
            face_side: SCENE_FACE,
            images,
            detected: images - self.misses,
            misses: self.misses,
            off_target: self.off_target,
            detector: result(&self.detector),
            followed: self.followed.as_ref().map(result),
            followed_lost: self.followed.as_ref().map(|_| self.followed_lost),
            mesh: self.mesh.as_ref().map(result),
            mesh_lost: self.mesh.as_ref().map(|_| self.mesh_lost),
        }
    }

    /// The whole JSON summary: the bare one with `scenes` added.
    pub fn summary<'a>(&self, model: &'a str, data: &'a Path) -> Summary<'a> {
        Summary {
            scenes: Some(self.scene_summary()),
            ..self.bare.summary(model, data)
        }
    }

    /// Text lines for the scene results (the bare report follows them).
    pub fn report(&self) -> String {
        let s = self.scene_summary();
        let mut out = format!(
            "scenes: {} images, each enlarged to {}×{} in a {}×{} noisy scene\n",
            s.images, SCENE_FACE, SCENE_FACE, SCENE_WIDTH, SCENE_HEIGHT
        );
        out.push_str(&format!(
            "  detector crop accuracy: {:.4} ({} correct)\n",
            s.detector.accuracy, s.detector.correct
        ));
        if let (Some(f), Some(lost)) = (&s.followed, s.followed_lost) {
            out.push_str(&format!(
                "  followed crop accuracy: {:.4} ({} correct, {} not found again)\n",
                f.accuracy, f.correct, lost
            ));
        }
        if let (Some(m), Some(lost)) = (&s.mesh, s.mesh_lost) {
            out.push_str(&format!(
                "  mesh crop accuracy:     {:.4} ({} correct, {} meshes lost)\n",
                m.accuracy, m.correct, lost
            ));
        }
        out.push_str(&format!(
            "  detection misses: {} (counted wrong), best detection off the face: {}\n\nbare crops (each image whole):\n",
            s.misses, s.off_target
        ));
        out
    }
}

/// Everything [`evaluate`] does, and each image also in a scene
/// ([`make_scene`]): the detector's highest-scoring face classified from
/// its box; when the detector can look around a face
/// ([`Detector::load_around`]), also from the box found by looking again
/// around that one (as `ferd run` follows faces between whole-frame
/// searches); and with `landmarker` also from the box of its mesh
/// ([`face_from_mesh`], as `ferd run` does when it follows faces by
/// mesh). A model error names the image.
pub fn evaluate_scenes(
    classifier: &Classifier,
    detector: &Detector,
    landmarker: Option<&Landmarker>,
    samples: &[Sample],
    mut progress: impl FnMut(),
) -> Result<SceneEvaluation, EvalError> {
    let mut found = Vec::new();
    let mut out = SceneEvaluation {
        followed: detector.can_look_around().then(Confusion::default),
        mesh: landmarker.map(|_| Confusion::default()),
        ..SceneEvaluation::default()
    };
    for (index, s) in samples.iter().enumerate() {
        let frame = match decode_image(&s.path) {
            Ok(frame) => frame,
            Err(e @ (SourceError::Io { .. } | SourceError::Format { .. })) => {
                log::warn!("skipped: {e}");
                out.bare.skipped.push(e.to_string());
                progress();
                continue;
            }
        };
        let named = |error| EvalError::Image {
            path: s.path.clone(),
            error,
        };
        let probs = classifier
            .classify(&frame, &Crop::whole(&frame))
            .map_err(named)?;
        out.bare.confusion.add(s.label, probs.top().0);

        let (scene, truth) = make_scene(&frame, index as u64);
        let best = detector
            .detect(&scene)
            .map_err(named)?
            .into_iter()
            .max_by(|a, b| a.score.total_cmp(&b.score));
        let Some(face) = best else {
            out.misses += 1;
            progress();
            continue;
        };
        let (cx, cy) = face.bbox.center();
        if !(truth.x..truth.x + truth.w).contains(&cx)
            || !(truth.y..truth.y + truth.h).contains(&cy)
        {
            out.off_target += 1;
        }
        let probs = classifier.classify_face(&scene, &face).map_err(named)?;
        out.detector.add(s.label, probs.top().0);

        if let Some(followed) = out.followed.as_mut() {
            let looked = detector
                .detect_around_into(&scene, &face.bbox, &mut found)
                .map_err(named)?;
            // `looked` is false only for a window that could not be
            // placed (a degenerate box): not found again either.
            if let Some(again) = continuation(&found, &face.bbox).filter(|_| looked) {
                let probs = classifier.classify_face(&scene, &again).map_err(named)?;
                followed.add(s.label, probs.top().0);
            } else {
                out.followed_lost += 1;
            }
        }

        if let (Some(l), Some(mesh_confusion)) = (landmarker, out.mesh.as_mut()) {
            // The mesh alone: `measure` computes it first and then only
            // adds eye, mouth and pose measurements, which this ignores.
            let mesh = l
                .mesh(&scene, &landmarks::roi_for_face(&face))
                .map_err(named)?;
            if mesh.presence < landmarks::MIN_PRESENCE {
                out.mesh_lost += 1;
            } else {
                let probs = classifier
                    .classify_face(&scene, &face_from_mesh(&mesh))
                    .map_err(named)?;
                mesh_confusion.add(s.label, probs.top().0);
            }
        }
        progress();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_a_small_matrix() {
        let mut c = Confusion::default();
        c.add(Expression::Happy, Expression::Happy);
        c.add(Expression::Happy, Expression::Happy);
        c.add(Expression::Happy, Expression::Sad);
        c.add(Expression::Sad, Expression::Sad);
        assert_eq!(c.total(), 4);
        assert_eq!(c.accuracy(), 0.75);
        assert_eq!(c.recall(Expression::Happy), 2.0 / 3.0);
        assert_eq!(c.precision(Expression::Sad), 0.5);
        assert_eq!(c.macro_recall(), (2.0 / 3.0 + 1.0) / 2.0);
        assert!(c.report().ends_with("accuracy: 0.7500\n"));
    }

    #[test]
    fn a_wrapped_listing_error_prints_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let io = std::fs::read_dir(&missing).unwrap_err().to_string();
        let err = list_dataset(&missing).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::new(err).context("evaluating"));
        assert_eq!(chain.matches(&io).count(), 1, "{chain}");
        assert!(chain.contains("nowhere"), "{chain}");
    }

    #[test]
    fn scenes_are_deterministic_and_hold_the_face() {
        let face = Frame::new(
            48,
            48,
            PixelFormat::Grey,
            (0..48 * 48).map(|i| (i % 251) as u8).collect(),
        );
        let (a, box_a) = make_scene(&face, 5);
        let (b, box_b) = make_scene(&face, 5);
        let (_, box_c) = make_scene(&face, 6);
        assert_eq!(a.data, b.data);
        assert_eq!(box_a, box_b);
        assert_ne!(box_a, box_c);
        assert_eq!((a.width, a.height), (SCENE_WIDTH, SCENE_HEIGHT));
        assert!(
            box_a.x + box_a.w <= SCENE_WIDTH as f32 && box_a.y + box_a.h <= SCENE_HEIGHT as f32
        );
        // Enlarged 3×: the face's top-left pixel is its first pixel.
        assert_eq!(
            a.data[(box_a.y as u32 * SCENE_WIDTH + box_a.x as u32) as usize],
            0
        );
        // The background is textured, not flat.
        let row = &a.data[..SCENE_WIDTH as usize];
        assert!(row.iter().max().unwrap() - row.iter().min().unwrap() > 20);
    }

    #[test]
    fn dataset_listing_uses_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        for (class, file) in [
            ("happy", "b.png"),
            ("happy", "a.png"),
            ("sad", "c.jpg"),
            ("other", "d.png"),
        ] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join(file), b"x").unwrap();
        }
        let s = list_dataset(dir.path()).unwrap();
        let names: Vec<_> = s
            .iter()
            .map(|s| s.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.png", "b.png", "c.jpg"]);
        assert_eq!(s[2].label, Expression::Sad);
        assert!(matches!(
            list_dataset(&dir.path().join("other")),
            Err(EvalError::Empty(_))
        ));
    }
}
